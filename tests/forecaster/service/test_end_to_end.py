"""The whole forecaster offline: the simulated house's weather, quartz's real model in the island,
the service publishing to a throwaway mosquitto and answering a request over MQTT."""

from __future__ import annotations

import asyncio
import json
import os
import time as systime
import uuid
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import aiomqtt
import pytest

from services.forecaster.forecaster import Forecaster, WorkerProcess
from services.forecaster.settings import REPO_WORKER_PYTHON, ForecastSettings
from services.simulator.server import Simulator
from services.simulator.settings import SimulatorSettings
from shared.clock import ManualClock
from shared.config import BrokerSettings, DevicesConfig, Settings
from shared.messages import Forecast, ForecastResponse, parse_message
from shared.service import Service, ServiceOptions
from shared.sky import PanelArray, clear_sky_series_w
from shared.topics import Topics
from tests.conftest import MqttBroker

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
DEVICES = DevicesConfig.model_validate(
    {
        "devices": [
            {"device_name": "P1 meter", "device_type": "HWE-P1", "ip_address": "192.0.2.1"}
        ],
        "solar panels": [
            {
                "name": "South roof",
                "quartz_parameters": {
                    "latitude": 52.09,
                    "longitude": 5.12,
                    "capacity_kwp": 3.2,
                    "tilt": 35,
                    "orientation": 180,
                },
            },
            {
                "name": "Barn",
                "quartz_parameters": {
                    "latitude": 52.09,
                    "longitude": 5.12,
                    "capacity_kwp": 6.0,
                    "tilt": 15,
                    "orientation": 135,
                },
            },
        ],
    }
)
OPTIONS = ServiceOptions(
    status_interval_s=60,
    status_min_interval_s=5,
    reconnect_min_s=0.05,
    reconnect_max_s=0.4,
    publish_timeout_s=5.0,
    keepalive_s=10,
)


def island_python() -> Path:
    python = Path(os.environ.get("HWSCHED_FORECAST__WORKER_PYTHON") or REPO_WORKER_PYTHON)
    if not python.exists():
        pytest.fail(f"no forecaster environment at {python}: run `make venv-forecaster` first")
    return python


async def next_message(client: aiomqtt.Client, topic: str, within_s: float) -> bytes:
    async with asyncio.timeout(within_s):
        async for message in client.messages:
            if message.topic.value == topic and isinstance(message.payload, bytes):
                return message.payload
    raise AssertionError(f"nothing on {topic}")


async def test_the_forecaster_publishes_a_quartz_forecast_of_the_simulated_sky(
    mqtt_broker: MqttBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.upper().startswith("HWSCHED_"):
            monkeypatch.delenv(name)
    python = island_python()
    # today's 06:00 in Amsterdam: a recent date, so quartz asks for ICON (and GFS visibility)
    today = datetime.now(AMSTERDAM).date()
    start = datetime(today.year, today.month, today.day, 6, 0, tzinfo=AMSTERDAM).astimezone(UTC)
    tag = uuid.uuid4().hex[:10]
    settings = Settings(
        broker=BrokerSettings(
            host=mqtt_broker.host, port=mqtt_broker.port, client_id_prefix=f"test-{tag}"
        ),
        base_topic=f"test{tag}",
    )
    topics = Topics(settings.base_topic)
    sim_settings = SimulatorSettings(seed=3, cloudiness=0.0)
    async with Simulator(
        DEVICES, clock=ManualClock(start), settings=sim_settings, state_dir=tmp_path
    ) as sim:
        fs = ForecastSettings(
            weather_url=f"http://127.0.0.1:{sim.weather_port}",
            worker_python=python,
            retry_min_s=3600,
            retry_max_s=3600,
            request_min_interval_s=0,
        )
        service = Service("forecaster", settings, clock=ManualClock(start), options=OPTIONS)
        worker = WorkerProcess(python, 300, service.log)
        forecaster = Forecaster(service, settings, fs, DEVICES.solar_panels, worker)
        async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as client:
            await client.subscribe(f"{settings.base_topic}/#", qos=1)
            began = systime.monotonic()
            task = asyncio.create_task(service.run(forecaster.run))
            try:
                payload = await next_message(client, topics.forecast(), 300)
                took_s = systime.monotonic() - began
                forecast = parse_message(Forecast, payload)

                assert forecast.fallback is False, forecast
                assert forecast.source == f"open-meteo-compatible 127.0.0.1:{sim.weather_port}"
                assert forecast.model == "dwd-icon"
                assert forecast.pv_model == "quartz-solar-forecast 1.2.12 gb (model-0.4.0)"
                assert forecast.start == start
                # until 06:00 tomorrow (23 to 25 h: DST days included)
                assert forecast.end.astimezone(AMSTERDAM).time() == time(6, 0)
                assert timedelta(hours=23) <= forecast.end - start <= timedelta(hours=25)
                assert set(forecast.arrays) == {"South roof", "Barn"}
                assert sum(forecast.arrays.values()) == pytest.approx(1, abs=1e-3)
                power = forecast.power_w
                assert power[0] < 50  # 06:00: before sunrise all year at 52° N
                assert power[-1] < 50  # 05:45 the next morning
                assert max(power) > 1000  # a cloudless simulated sky on 9.2 kWp
                # the model's day is of the order of the sky's own clear-sky production
                panels = [
                    PanelArray(**a.quartz_parameters.model_dump()) for a in DEVICES.solar_panels
                ]
                sky_wh = sum(clear_sky_series_w(start, 900, len(power), panels)) / 4
                assert 0.3 < (sum(power) / 4) / sky_wh < 1.5
                assert took_s < 240

                # request / response over MQTT, with the transaction echoed
                request = json.dumps({"transaction": "e2e-1"}).encode()
                await client.publish(topics.forecast_request(), request, qos=1)
                answer = parse_message(
                    ForecastResponse, await next_message(client, topics.forecast_response(), 300)
                )
                assert answer.status == "ok", answer
                assert answer.transaction == "e2e-1"
                assert answer.data is not None
                assert answer.data.steps == len(power)
                assert answer.data.source == forecast.source
                assert service.counters["forecasts_made"] == 2
            finally:
                service.request_stop()
                status = await asyncio.wait_for(task, 30)
    assert status == 0
