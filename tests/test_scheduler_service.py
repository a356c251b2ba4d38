"""The scheduler service against a throwaway mosquitto (never the shared broker)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial
from zoneinfo import ZoneInfo

import aiomqtt
import pytest

from services.scheduler.logic import books_message, horizon
from services.scheduler.scheduler import Scheduler, SchedulerOptions
from shared import bookkeeping
from shared.config import BrokerSettings, Settings
from shared.daytime import day_start
from shared.messages import (
    DeviceMeasurement,
    EnergyBooks,
    Forecast,
    HouseSurplus,
    Message,
    PlanMessage,
    SocketCommand,
    dump_message,
    parse_message,
)
from shared.service import Service, ServiceOptions
from shared.topics import Topics
from tests.conftest import MqttBroker
from tests.mqtt_helpers import retained_until
from tests.test_scheduler import DEVICES

AMS = ZoneInfo("Europe/Amsterdam")
FAST = ServiceOptions(
    status_interval_s=1.0,
    status_min_interval_s=0.1,
    reconnect_min_s=0.05,
    reconnect_max_s=0.4,
    publish_timeout_s=2.0,
    keepalive_s=5,
)


@pytest.fixture
def settings(mqtt_broker: MqttBroker, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.upper().startswith("HWSCHED_"):
            monkeypatch.delenv(name)
    tag = uuid.uuid4().hex[:10]
    # the day boundary 12 h from now, so the test runs mid-day whatever the time
    boundary = (datetime.now(AMS) + timedelta(hours=12)).time().replace(second=0, microsecond=0)
    return Settings(
        broker=BrokerSettings(
            host=mqtt_broker.host, port=mqtt_broker.port, client_id_prefix=f"test-{tag}"
        ),
        base_topic=f"test{tag}",
        timezone="Europe/Amsterdam",
        daily_boundary=boundary,
        poll_interval_s=2.0,
        planner="optimal",
        planner_time_limit_s=0.2,
    )


def start(settings: Settings) -> tuple[Service, Scheduler, asyncio.Task[int]]:
    service = Service("scheduler", settings, options=FAST, version="test")
    scheduler = Scheduler(
        DEVICES,
        settings,
        service,
        topics=service.topics,
        counters=service.counters,
        clock=service.clock,
        options=SchedulerOptions(restore_wait_s=0.3),
        log=service.log,
    )
    scheduler.subscribe(service)
    task = asyncio.create_task(service.run(lambda: scheduler.run(service.wait_connected)))
    return service, scheduler, task


async def stop(service: Service, task: asyncio.Task[int]) -> None:
    service.request_stop()
    assert await asyncio.wait_for(task, 10) == 0


async def publish(broker: MqttBroker, *messages: tuple[str, Message | bytes, bool]) -> None:
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"pub-{uuid.uuid4()}") as c:
        for topic, payload, retain in messages:
            data = payload if isinstance(payload, bytes) else dump_message(payload)
            await c.publish(topic, data, qos=1, retain=retain)


retained = partial(retained_until, within_s=60, settle_s=0.2)  # bounds on a failure


async def until_counter(
    service: Service, name: str, at_least: int = 1, within_s: float = 60
) -> None:
    deadline = time.monotonic() + within_s
    while service.counters[name] < at_least:
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} = {service.counters[name]}, wanted {at_least}")
        await asyncio.sleep(0.02)


def forecast(settings: Settings, now: datetime) -> Forecast:
    start = day_start(now, settings.tz, settings.daily_boundary)
    return Forecast(
        timestamp=now,
        start=start,
        step_s=900,
        power_w=[2500.0] * 100,
        made_at=now - timedelta(seconds=5),
        source="test",
    )


def surplus(now: datetime, watts: float = 2500.0) -> HouseSurplus:
    return HouseSurplus(
        timestamp=now,
        surplus_w=watts,
        p1_power_w=-watts,
        sockets_w={"Boiler": 0.0, "E-bike": 0.0},
        based_on=["P1 meter", "Boiler", "E-bike"],
    )


def socket_sample(at: datetime, name: str, power: float) -> DeviceMeasurement:
    return DeviceMeasurement(
        timestamp=at,
        device=name,
        device_type="HWE-SKT",
        power_w=power,
        power_on=power > 0,
        switch_lock=False,
        api="v1",
    )


async def test_plan_and_commands_from_forecast_measurements_and_surplus(
    mqtt_broker: MqttBroker, settings: Settings
) -> None:
    t = Topics(settings.base_topic)
    service, scheduler, task = start(settings)
    commands: list[SocketCommand] = []
    plans: dict[datetime, PlanMessage] = {}  # by made_at: the plan each command came from
    async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as listener:
        await listener.subscribe(t.all_socket_sets(), qos=1)
        await listener.subscribe(t.plan(), qos=1)
        await asyncio.wait_for(service.wait_connected(), 60)
        await asyncio.wait_for(scheduler.restored.wait(), 60)  # a bound on a failure only
        now = datetime.now(UTC).replace(microsecond=0)  # payload times are whole seconds
        battery = DeviceMeasurement(
            timestamp=now,
            device="Battery",
            device_type="HWE-BAT",
            power_w=0.0,
            state_of_charge_pct=40.0,
            api="v2",
        )
        await publish(
            mqtt_broker,
            (t.forecast(), forecast(settings, now), True),
            (t.measurement("battery"), battery, True),
            (t.measurement("boiler"), socket_sample(now, "Boiler", 0.0), True),
            (t.surplus(), surplus(now), True),
        )

        async def two_commands() -> None:
            async for message in listener.messages:
                assert isinstance(message.payload, bytes)
                if message.topic.matches(t.plan()):
                    seen = parse_message(PlanMessage, message.payload)
                    plans[seen.made_at] = seen
                else:
                    assert not message.retain
                    commands.append(parse_message(SocketCommand, message.payload))
                # a command for each socket from one plan seen (the publisher sends only
                # the latest retained plan; topics may arrive in any order)
                if any(
                    len({c.socket for c in commands if c.plan_made_at == m}) == 2 for m in plans
                ):
                    return

        await asyncio.wait_for(two_commands(), 60)  # a bound on a failure only
    got = await retained(mqtt_broker, settings.base_topic, lambda g: t.plan() in g)
    plan = parse_message(PlanMessage, got[t.plan()])
    assert plan.planner == "optimal"
    assert plan.status in ("optimal", "time-limited", "heuristic", "fallback")
    assert plan.tier in ("quick", "full")
    begin = day_start(now, settings.tz, settings.daily_boundary)
    assert (plan.start - begin).total_seconds() % plan.step_s == 0  # on the day's step grid
    assert plan.start <= now < plan.start + timedelta(seconds=plan.step_s)
    assert plan.forecast_made_at == now - timedelta(seconds=5)
    assert plan.fallback_reason is None
    assert plan.measured_surplus_w == 2500.0
    assert plan.n_steps == horizon(plan.start, settings.tz, settings.daily_boundary, 900)
    assert set(plan.sockets) == {"Boiler", "E-bike"}
    assert plan.battery_energy_wh[0] == pytest.approx(1080.0, abs=250.0)  # 40 % of 2700 Wh
    assert {c.socket for c in commands} == {"Boiler", "E-bike"}
    for c in commands:
        assert c.reason == "plan"
        assert c.plan_made_at is not None
        assert c.plan_made_at <= plan.made_at
    for c in [c for c in commands if c.plan_made_at in plans]:
        source = plans[c.plan_made_at]
        assert c.valid_until == source.made_at + timedelta(seconds=3 * settings.poll_interval_s)
        assert c.state == ("on" if source.sockets[c.socket].states[0] else "off")
    books = parse_message(EnergyBooks, got[t.books()])
    assert books.batteries["Battery"].energy_wh == pytest.approx(1080.0)
    await stop(service, task)


async def test_restart_mid_day_restores_the_books(
    mqtt_broker: MqttBroker, settings: Settings
) -> None:
    t = Topics(settings.base_topic)
    service, scheduler, task = start(settings)
    await asyncio.wait_for(scheduler.restored.wait(), 60)  # a bound on a failure only
    now = datetime.now(UTC).replace(microsecond=0)  # payload times are whole seconds
    await publish(
        mqtt_broker,
        (
            t.measurement("boiler"),
            socket_sample(now - timedelta(minutes=10), "Boiler", 2000.0),
            False,
        ),
        (t.measurement("boiler"), socket_sample(now, "Boiler", 2000.0), True),
        (t.surplus(), surplus(now), True),
    )

    def booked(got: dict[str, bytes]) -> bool:
        if t.books() not in got:
            return False
        books = parse_message(EnergyBooks, got[t.books()])
        return "Boiler" in books.sockets and books.sockets["Boiler"].energy_wh > 300

    got = await retained(mqtt_broker, settings.base_topic, booked)
    energy = parse_message(EnergyBooks, got[t.books()]).sockets["Boiler"].energy_wh
    assert energy == pytest.approx(2000.0 / 6, rel=1e-6)
    await stop(service, task)

    service, scheduler, task = start(settings)  # a restart, later the same day
    await asyncio.wait_for(scheduler.restored.wait(), 60)  # a bound on a failure only
    assert service.counters["books_restored"] == 1
    assert scheduler.books.sockets["Boiler"].energy_wh == pytest.approx(energy)
    assert scheduler.books.sockets["Boiler"].last_sample_at == now
    await stop(service, task)


async def test_yesterdays_books_are_not_restored(
    mqtt_broker: MqttBroker, settings: Settings
) -> None:
    t = Topics(settings.base_topic)
    now = datetime.now(UTC)
    yesterday = day_start(now - timedelta(days=1), settings.tz, settings.daily_boundary)
    old = bookkeeping.empty_books(yesterday).with_book(
        bookkeeping.SocketBook(name="Boiler", day_start=yesterday, energy_wh=1999.0, full=True)
    )
    await publish(mqtt_broker, (t.books(), books_message(old, {}, now - timedelta(days=1)), True))
    service, scheduler, task = start(settings)
    await asyncio.wait_for(scheduler.restored.wait(), 60)  # a bound on a failure only
    assert service.counters["books_not_restored_other_day"] == 1
    assert scheduler.books.sockets == {}
    assert scheduler.books.day_start == day_start(now, settings.tz, settings.daily_boundary)

    def today(got: dict[str, bytes]) -> bool:
        return (
            t.books() in got
            and parse_message(EnergyBooks, got[t.books()]).day_start == scheduler.books.day_start
        )

    await retained(mqtt_broker, settings.base_topic, today)  # yesterday's is replaced
    await stop(service, task)


async def test_garbage_on_every_topic_is_counted_and_the_service_lives_on(
    mqtt_broker: MqttBroker, settings: Settings
) -> None:
    t = Topics(settings.base_topic)
    service, scheduler, task = start(settings)
    await asyncio.wait_for(scheduler.restored.wait(), 60)  # a bound on a failure only
    now = datetime.now(UTC)
    await publish(mqtt_broker, (t.forecast(), forecast(settings, now), False))
    await until_counter(service, "forecasts_received")
    before = (scheduler.books, scheduler.forecast, scheduler.surplus, dict(scheduler.overrides))
    topics = {
        "books": t.books(),
        "forecast": t.forecast(),
        "override": t.override("boiler"),
        "measurement": t.measurement("boiler"),
        "surplus": t.surplus(),
    }
    garbage = [b"\xff\xfe", b"{}", b'{"schema_version": 1, "timestamp": "yesterday"}']
    await publish(mqtt_broker, *[(topic, g, False) for topic in topics.values() for g in garbage])
    for kind in topics:
        await until_counter(service, f"messages_dropped_{kind}", len(garbage))
    assert service.counters["handler_errors"] == 0
    after = (scheduler.books, scheduler.forecast, scheduler.surplus, dict(scheduler.overrides))
    assert after == before
    assert not task.done()
    await publish(mqtt_broker, (t.surplus(), surplus(datetime.now(UTC)), False))
    await until_counter(service, "plans_published")
    await stop(service, task)
