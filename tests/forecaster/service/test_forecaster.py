"""The forecaster service on a ManualClock with a fake worker: horizon, days, fallback, requests."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from services.forecaster.forecaster import (
    CLEAR_SKY_MODEL,
    Forecaster,
    WorkerProcess,
    horizon_at,
)
from services.forecaster.protocol import (
    Site,
    SiteForecast,
    WorkerFailure,
    WorkerRequest,
    WorkerResult,
)
from services.forecaster.settings import ForecastSettings, load_forecast_settings
from shared.clock import ManualClock
from shared.config import ConfigError, DevicesConfig, Settings, SolarPanelConfig
from shared.daytime import day_start, next_boundary
from shared.messages import (
    Forecast,
    ForecastResponse,
    Message,
    MessageError,
    parse_message,
)
from shared.service import Counters, Handler
from shared.sky import PanelArray, clear_sky_series_w
from shared.topics import Topics

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
SIX = time(6, 0)
WEATHER = "http://127.0.0.1:8099"
PV_MODEL = "quartz-solar-forecast 1.2.12 gb (model-0.4.0)"
PANELS = DevicesConfig.model_validate(
    {
        "devices": [{"device_name": "P1", "device_type": "HWE-P1", "ip_address": "192.0.2.1"}],
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
                "name": "Garage",
                "quartz_parameters": {
                    "latitude": 52.09,
                    "longitude": 5.12,
                    "capacity_kwp": 1.6,
                    "tilt": 20,
                    "orientation": 270,
                },
            },
        ],
    }
).solar_panels


def day_at(day: str, hh: int = 6, mm: int = 0) -> datetime:
    """A local Amsterdam wall time, as an aware UTC instant."""
    local = datetime.fromisoformat(day).replace(hour=hh, minute=mm, tzinfo=AMSTERDAM)
    return local.astimezone(UTC)


@dataclass
class Recorder:
    """Stands in for `shared.service.Service`: records what is published."""

    clock: ManualClock
    counters: Counters = field(default_factory=Counters)
    topics: Topics = field(default_factory=lambda: Topics("t"))
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("hwsched.forecaster"))
    published: list[tuple[str, Message]] = field(default_factory=list)
    handlers: list[tuple[str, Handler]] = field(default_factory=list)

    def publish(self, topic: str, payload: Message) -> None:
        self.published.append((topic, payload))

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        self.handlers.append((topic_filter, handler))

    def forecasts(self) -> list[Forecast]:
        return [p for t, p in self.published if isinstance(p, Forecast)]

    def responses(self) -> list[ForecastResponse]:
        return [p for t, p in self.published if isinstance(p, ForecastResponse)]


def quartz_like(request: WorkerRequest, factor: float = 0.8) -> WorkerResult:
    """What the worker answers: 48 h per site (here: clear sky × `factor`, kW)."""
    sites = []
    for s in request.sites:
        panel = PanelArray(s.latitude, s.longitude, s.capacity_kwp, s.tilt, s.orientation)
        watts = clear_sky_series_w(request.ts, 900, 192, [panel])
        sites.append(SiteForecast(name=s.name, power_kw=[factor * w / 1000 for w in watts]))
    return WorkerResult(
        start=request.ts,
        sites=sites,
        pv_model=PV_MODEL,
        weather_model="dwd-icon",
        import_s=3.0,
        elapsed_s=5.0,
        peak_rss_mb=250.0,
    )


@dataclass
class FakeWorker:
    """A worker answering from `quartz_like`, or failing while `fail` is set."""

    clock: ManualClock
    fail: str | None = None
    raises: Exception | None = None
    takes_s: float = 0.0
    calls: list[tuple[datetime, WorkerRequest]] = field(default_factory=list)

    async def __call__(self, request: WorkerRequest) -> WorkerResult | WorkerFailure:
        self.calls.append((self.clock.now(), request))
        if self.takes_s:
            self.clock.advance(self.takes_s)
        await asyncio.sleep(0)
        if self.raises is not None:
            raise self.raises
        if self.fail is not None:
            return WorkerFailure(kind="weather", error=self.fail)
        return quartz_like(request)


@dataclass
class Rig:
    clock: ManualClock
    runtime: Recorder
    worker: FakeWorker
    forecaster: Forecaster
    task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.forecaster.run())
        await self.clock.settle()

    async def run_until(self, when: datetime) -> None:
        await self.clock.run_until(when)

    async def request(self, payload: dict[str, object]) -> None:
        await self.forecaster.on_request("t/request/forecast", json.dumps(payload).encode())
        await self.clock.settle()


@pytest.fixture
async def make_rig() -> AsyncIterator[Callable[..., Rig]]:
    """Makes forecasters on a ManualClock with a fake worker; stops them after the test."""
    rigs: list[Rig] = []

    def make(
        start: datetime,
        *,
        timezone: str = "Europe/Amsterdam",
        boundary: time = SIX,
        arrays: list[SolarPanelConfig] | None = None,
        **forecast: float,
    ) -> Rig:
        clock = ManualClock(start)
        runtime = Recorder(clock)
        worker = FakeWorker(clock)
        settings = Settings(timezone=timezone, daily_boundary=boundary)
        fs = ForecastSettings(weather_url=WEATHER, **forecast)  # type: ignore[arg-type]
        forecaster = Forecaster(runtime, settings, fs, PANELS if arrays is None else arrays, worker)
        rig = Rig(clock, runtime, worker, forecaster)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        if rig.task is not None and not rig.task.done():
            rig.task.cancel()
            await asyncio.gather(rig.task, return_exceptions=True)


def assert_of_its_day(message: Forecast, forecaster: Forecaster) -> None:
    """Every published forecast starts in the current step and ends with the planning day."""
    tz, boundary = forecaster._tz, forecaster._boundary
    now = message.timestamp
    assert day_start(now, tz, boundary) - timedelta(minutes=15) < message.start <= now
    end = next_boundary(now, tz, boundary)
    assert end <= message.end < end + timedelta(minutes=15)


async def stop(rig: Rig) -> None:
    assert rig.task is not None
    assert not rig.task.done(), rig.task  # never crashed
    rig.task.cancel()
    await asyncio.gather(rig.task, return_exceptions=True)
    for forecast in rig.runtime.forecasts():
        assert_of_its_day(forecast, rig.forecaster)


# --- horizon and time zone --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timezone", "boundary", "now", "start", "end", "steps"),
    [
        # 10:07 in Amsterdam (CEST): from 10:00 to 06:00 the next day
        ("Europe/Amsterdam", SIX, "2026-06-21T08:07:00+00:00", "08:00", "2026-06-22T04:00", 80),
        # exactly on the boundary: a whole day
        ("Europe/Amsterdam", SIX, "2026-06-21T04:00:00+00:00", "04:00", "2026-06-22T04:00", 96),
        # just before it: the one step left of the old day
        ("Europe/Amsterdam", SIX, "2026-06-21T03:59:59+00:00", "03:45", "2026-06-21T04:00", 1),
        # New York, boundary 07:30 EST (UTC-5)
        (
            "America/New_York",
            time(7, 30),
            "2026-11-25T02:22:00+00:00",
            "02:15",
            "2026-11-25T12:30",
            41,
        ),
        # Kathmandu is UTC+05:45: 06:00 local is 00:15 UTC, still on the 15-minute grid
        ("Asia/Kathmandu", SIX, "2026-01-10T12:00:00+00:00", "12:00", "2026-01-11T00:15", 49),
        # a boundary off the grid (06:07): the last step holds it
        (
            "Europe/Amsterdam",
            time(6, 7),
            "2026-06-21T10:00:00+00:00",
            "10:00",
            "2026-06-22T04:07",
            73,
        ),
    ],
)
def test_horizon(timezone: str, boundary: time, now: str, start: str, end: str, steps: int) -> None:
    instant = datetime.fromisoformat(now)
    h = horizon_at(instant, ZoneInfo(timezone), boundary)
    assert h.start.strftime("%H:%M") == start
    assert h.start.tzinfo == UTC
    assert h.boundary == datetime.fromisoformat(end).replace(tzinfo=UTC)
    assert h.n_steps == steps
    assert h.boundary <= h.end < h.boundary + timedelta(minutes=15)


async def test_start_up_forecast_combines_the_arrays(make_rig: Callable[..., Rig]) -> None:
    now = day_at("2026-06-21", 10, 7)
    rig = make_rig(now)
    await rig.start()
    (forecast,) = rig.runtime.forecasts()
    assert rig.runtime.published[0][0] == "t/forecast"
    ((_, request),) = rig.worker.calls
    assert request.ts == day_at("2026-06-21", 10, 0)
    assert request.weather_url == WEATHER
    assert request.nwp_source == "icon"
    assert [s.name for s in request.sites] == ["South roof", "Garage"]
    assert request.sites[1].orientation == 270
    assert forecast.start == day_at("2026-06-21", 10, 0)
    assert forecast.end == day_at("2026-06-22", 6, 0)
    assert forecast.step_s == 900
    assert len(forecast.power_w) == 80
    assert forecast.made_at == now
    assert forecast.source == "open-meteo-compatible 127.0.0.1:8099"
    assert forecast.model == "dwd-icon"
    assert forecast.pv_model == PV_MODEL
    assert forecast.fallback is False
    # the house forecast is the sum of the arrays, in W
    answer = quartz_like(request)
    for i, p in enumerate(forecast.power_w):
        expected = 1000 * sum(s.power_kw[i] for s in answer.sites)
        assert p == pytest.approx(expected, abs=0.06)
    south = sum(answer.sites[0].power_kw[:80])
    garage = sum(answer.sites[1].power_kw[:80])
    assert forecast.arrays["South roof"] == pytest.approx(south / (south + garage), abs=1e-4)
    assert sum(forecast.arrays.values()) == pytest.approx(1.0, abs=1e-3)
    assert rig.runtime.counters["forecasts_made"] == 1
    await stop(rig)


async def test_a_night_only_horizon_has_capacity_shares(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(day_at("2026-12-21", 23, 30))
    await rig.start()
    (forecast,) = rig.runtime.forecasts()
    assert max(forecast.power_w) == 0  # 23:30 until 06:00 in December: no sun
    assert forecast.arrays == pytest.approx({"South roof": 2 / 3, "Garage": 1 / 3}, abs=1e-4)
    await stop(rig)


@pytest.mark.parametrize(
    ("first_day", "lengths", "carried"),
    [
        # 23 h: 06:00 CET to 06:00 CEST; each day's 48 h cover the next day
        ("2026-03-28", [92, 96, 96], [True, True]),
        # 25 h: 06:00 CEST to 06:00 CET; the first 48 h end at 05:00 CET the day after next,
        # an hour short of the second day
        ("2026-10-24", [100, 96, 96], [False, True]),
    ],
    ids=["spring-forward", "fall-back"],
)
async def test_a_new_forecast_every_day_at_the_local_boundary_across_dst(
    make_rig: Callable[..., Rig], first_day: str, lengths: list[int], carried: list[bool]
) -> None:
    start = day_at(first_day)
    rig = make_rig(start)
    await rig.start()
    day = datetime.fromisoformat(first_day)
    boundaries = [day_at((day + timedelta(days=k)).date().isoformat()) for k in range(1, 3)]
    await rig.run_until(boundaries[-1] + timedelta(hours=1))
    everything = rig.runtime.forecasts()
    forecasts = [f for f in everything if f.made_at == f.start]  # made for their own day
    assert [f.start for f in forecasts] == [start, *boundaries]
    assert [len(f.power_w) for f in forecasts] == lengths
    # before each new day's run, the day before's forecast where its 48 h cover the new day
    old = [f for f in everything if f.made_at < f.start]
    assert [f.start for f in old] == [b for b, c in zip(boundaries, carried, strict=True) if c]
    assert rig.runtime.counters.get("forecasts_carried_over") == sum(carried)
    assert [when for when, _ in rig.worker.calls] == [start, *boundaries]
    for f in forecasts:  # every one starts at 06:00 local, whatever the offset that day
        assert f.start.astimezone(AMSTERDAM).time() == SIX
        assert f.end.astimezone(AMSTERDAM).time() == SIX
    await stop(rig)


async def test_the_new_day_starts_with_the_last_forecast_while_its_own_is_made(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    """At the boundary the worker takes a while (seconds; longer on a Pi): meanwhile the day
    before's 48-h forecast, cut to the new day, is the day's forecast, not nothing (the
    scheduler's fallback rule); the day's own replaces it when made."""
    day1, day2 = day_at("2026-06-21"), day_at("2026-06-22")
    rig = make_rig(day1)
    await rig.start()
    first = rig.runtime.forecasts()[-1]
    rig.worker.takes_s = 90
    with caplog.at_level(logging.INFO, "hwsched.forecaster"):
        await rig.run_until(day2 + timedelta(minutes=5))
    carried, made = rig.runtime.forecasts()[-2:]
    assert carried.timestamp == day2  # published at the boundary, before the run
    assert (carried.start, carried.end) == (day2, day_at("2026-06-23"))
    assert carried.made_at == first.made_at == day1
    assert carried.fallback is False
    assert made.timestamp == day2 + timedelta(seconds=90)
    assert made.made_at == day2 + timedelta(seconds=90)
    assert made.start == day2
    assert "carried over until the day's own is made" in caplog.text
    assert rig.runtime.counters["forecasts_carried_over"] == 1
    await stop(rig)


async def test_a_forecast_is_never_published_for_the_day_that_just_ended(
    make_rig: Callable[..., Rig],
) -> None:
    """The run starts a minute before the boundary and ends after it: the message is cut from
    the 48-h forecast for the new day, not for the old one."""
    rig = make_rig(day_at("2026-06-21", 5, 59))
    rig.worker.takes_s = 120
    await rig.start()
    (forecast,) = rig.runtime.forecasts()
    assert forecast.timestamp == day_at("2026-06-21", 6, 1)
    assert forecast.start == day_at("2026-06-21", 6, 0)
    assert forecast.end == day_at("2026-06-22", 6, 0)
    await stop(rig)


async def test_the_worker_run_is_logged_in_real_seconds_not_the_clocks(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    """At --speed 600 a 17 s run of the model took 10200 simulated seconds: the log says
    what the machine spent (real seconds), whatever the clock's speed."""
    start = day_at("2026-06-21", 6, 0)
    rig = make_rig(start)
    rig.worker.takes_s = 10_229.4  # the simulated clock moves on while the worker runs
    real = iter([100.0, 117.3])
    rig.forecaster._real_seconds = lambda: next(real)
    with caplog.at_level(logging.INFO, "hwsched.forecaster"):
        await rig.start()
    (made,) = [r.getMessage() for r in caplog.records if "made in" in r.getMessage()]
    assert "made in 17.3 s of real time" in made
    assert "10229" not in made
    await stop(rig)


# --- failures ---------------------------------------------------------------------------------


async def test_without_any_forecast_a_failure_publishes_clear_sky_and_retries(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    start = day_at("2026-06-21", 6, 0)
    rig = make_rig(start, retry_min_s=60, retry_max_s=300)
    rig.worker.fail = "ConnectionError: no route to host"
    with caplog.at_level(logging.WARNING, "hwsched.forecaster"):
        await rig.start()
    (fallback,) = rig.runtime.forecasts()
    assert fallback.fallback is True
    assert fallback.source == "clear-sky"
    assert fallback.pv_model == CLEAR_SKY_MODEL
    assert fallback.model == ""
    assert len(fallback.power_w) == 96
    assert max(fallback.power_w) > 2000  # clear sky on 4.8 kWp at midsummer noon
    assert fallback.power_w[0] < max(fallback.power_w) / 4
    assert sum(fallback.arrays.values()) == pytest.approx(1.0, abs=1e-3)
    assert "CLEAR-SKY ESTIMATE" in caplog.text
    assert "no route to host" in caplog.text
    assert rig.runtime.counters["fallback_clear_sky"] == 1
    assert rig.runtime.counters["forecast_failures_weather"] == 1
    # back-off: 60, 120, 240, then the 300 s ceiling
    await rig.run_until(start + timedelta(seconds=60 + 120 + 240 + 300 + 1))
    tries = [(when - start).total_seconds() for when, _ in rig.worker.calls]
    assert tries == [0, 60, 180, 420, 720]
    rig.worker.fail = None
    await rig.run_until(start + timedelta(seconds=720 + 300))
    latest = rig.runtime.forecasts()[-1]
    assert latest.fallback is False
    assert latest.source.startswith("open-meteo")
    assert rig.forecaster.failures == 0
    assert rig.forecaster.retry_at is None
    calls = len(rig.worker.calls)
    await rig.run_until(start + timedelta(hours=12))
    assert len(rig.worker.calls) == calls  # no more retries once it worked
    await stop(rig)


async def test_the_last_forecast_is_kept_while_it_covers_the_day(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    day1 = day_at("2026-06-21")
    rig = make_rig(day1, retry_min_s=3600, retry_max_s=3600 * 20)
    await rig.start()
    first = rig.runtime.forecasts()[-1]
    rig.worker.fail = "HTTPError: 502"
    with caplog.at_level(logging.WARNING, "hwsched.forecaster"):
        await rig.run_until(day_at("2026-06-22") + timedelta(minutes=1))
    kept = rig.runtime.forecasts()[-1]
    # yesterday's 48-h quartz forecast covers today: cut to today, made_at unchanged
    assert kept.start == day_at("2026-06-22")
    assert kept.made_at == first.made_at == day1
    assert kept.fallback is False
    assert kept.source == first.source
    made = quartz_like(rig.worker.calls[0][1])
    south, garage = (s.power_kw for s in made.sites)
    expected = [1000 * (a + b) for a, b in zip(south, garage, strict=True)]
    assert kept.power_w == pytest.approx(expected[96:192], abs=0.06)
    assert "keeping the forecast made at 2026-06-21T06:00+02:00" in caplog.text
    assert rig.runtime.counters["fallback_last_forecast"] >= 1
    # the day after it no longer covers the day: clear sky
    await rig.run_until(day_at("2026-06-23") + timedelta(minutes=1))
    last = rig.runtime.forecasts()[-1]
    assert last.start == day_at("2026-06-23")
    assert last.fallback is True
    assert last.source == "clear-sky"
    await stop(rig)


async def test_a_crashing_worker_never_stops_the_service(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(day_at("2026-06-21", 9, 0))
    rig.worker.raises = RuntimeError("segfault in xgboost")
    await rig.start()
    assert rig.runtime.forecasts()[-1].source == "clear-sky"
    assert rig.runtime.counters["forecast_failures_model"] == 1
    rig.worker.raises = None
    await rig.run_until(day_at("2026-06-21", 9, 2))
    assert rig.runtime.forecasts()[-1].fallback is False
    await stop(rig)


async def test_the_retained_forecast_is_the_fallback_after_a_restart(
    make_rig: Callable[..., Rig],
) -> None:
    """Restarted at 14:00 with no weather: this morning's retained forecast is kept."""
    morning = day_at("2026-06-21", 6, 0)
    earlier = make_rig(morning)
    await earlier.start()
    retained = earlier.runtime.forecasts()[-1]
    await stop(earlier)

    rig = make_rig(day_at("2026-06-21", 14, 0))
    rig.worker.fail = "ConnectionError"
    await rig.forecaster.on_retained("t/forecast", retained.model_dump_json().encode())
    await rig.start()
    kept = rig.runtime.forecasts()[-1]
    assert kept.fallback is False
    assert kept.made_at == morning
    assert kept.start == day_at("2026-06-21", 14, 0)
    assert kept.power_w == retained.power_w[32:]  # from 14:00 on
    assert kept.arrays == pytest.approx(retained.arrays, abs=2e-4)
    # a retained clear-sky estimate is never taken for a forecast
    other = make_rig(day_at("2026-06-21", 14, 0))
    other.worker.fail = "ConnectionError"
    await other.forecaster.on_retained(
        "t/forecast", kept.model_copy(update={"fallback": True}).model_dump_json().encode()
    )
    await other.start()
    assert other.runtime.forecasts()[-1].source == "clear-sky"
    await stop(rig)
    await stop(other)


async def test_no_solar_panels_means_a_zero_forecast(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(day_at("2026-06-21", 12, 0), arrays=[])
    await rig.start()
    (forecast,) = rig.runtime.forecasts()
    assert set(forecast.power_w) == {0.0}
    assert forecast.source == "no solar panels configured"
    assert rig.worker.calls == []
    await stop(rig)


# --- requests ---------------------------------------------------------------------------------


async def test_a_request_re_forecasts_and_answers_with_its_transaction(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(day_at("2026-06-21", 8, 0), request_min_interval_s=30)
    await rig.start()
    await rig.run_until(day_at("2026-06-21", 9, 0))
    await rig.request({"transaction": "abc-1"})
    (response,) = rig.runtime.responses()
    assert response.status == "ok"
    assert response.transaction == "abc-1"
    assert response.data is not None
    assert response.data.made_at == day_at("2026-06-21", 9, 0)
    assert response.data.steps == 84
    assert response.data.fallback is False
    assert rig.runtime.forecasts()[-1].made_at == day_at("2026-06-21", 9, 0)
    assert len(rig.worker.calls) == 2
    # three more at once, within the minimum interval: one run, after it, answers all three
    for transaction in (1, 2, "three"):
        await rig.request({"schema_version": 1, "transaction": transaction})
    assert len(rig.worker.calls) == 2
    await rig.run_until(day_at("2026-06-21", 9, 0) + timedelta(seconds=30))
    assert len(rig.worker.calls) == 3
    assert [r.transaction for r in rig.runtime.responses()] == ["abc-1", 1, 2, "three"]
    assert rig.runtime.counters["forecast_requests"] == 4
    await stop(rig)


async def test_a_failed_request_is_answered_with_an_error(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(day_at("2026-06-21", 8, 0))
    await rig.start()
    rig.worker.fail = "OpenMeteoRequestsError: simulated refusal"
    await rig.request({"transaction": 7})
    (response,) = rig.runtime.responses()
    assert response.status == "error"
    assert response.transaction == 7
    assert response.error is not None
    assert "simulated refusal" in response.error
    assert "publishing the forecast made at 2026-06-21T06:00:00+00:00" in response.error
    await stop(rig)


async def test_a_malformed_request_is_a_counted_drop(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(day_at("2026-06-21", 8, 0))
    await rig.start()
    with pytest.raises(MessageError):  # the Service counts and logs it
        await rig.forecaster.on_request("t/request/forecast", b'{"transaction": [1]}')
    with pytest.raises(MessageError):
        await rig.forecaster.on_request("t/request/forecast", b'{"schema_version": 9}')
    assert rig.runtime.responses() == []
    await stop(rig)


# --- the worker process and the settings ------------------------------------------------------


def fake_python(tmp_path: Path, script: str) -> Path:
    path = tmp_path / "python"
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


REQUEST = WorkerRequest(
    ts=datetime(2026, 6, 21, 4, 0, tzinfo=UTC),
    weather_url=WEATHER,
    sites=[Site(name="a", latitude=52, longitude=5, capacity_kwp=1)],
)


@pytest.mark.parametrize(
    ("script", "error"),
    [
        ("cat > /dev/null; echo 'oops' >&2; exit 3", "worker exited with status 3: oops"),
        ("cat > /dev/null; echo 'not json'", "unreadable worker answer"),
        ("cat > /dev/null; sleep 30", "no answer within 0.5 s"),
        (
            "cat > /dev/null; echo '"
            + json.dumps({"ok": False, "kind": "weather", "error": "x"})
            + "'",
            "x",
        ),
    ],
)
async def test_worker_process_failures(tmp_path: Path, script: str, error: str) -> None:
    runner = WorkerProcess(fake_python(tmp_path, script), 0.5, logging.getLogger("test"))
    answer = await runner(REQUEST)
    assert isinstance(answer, WorkerFailure)
    assert error in answer.error


async def test_worker_process_without_the_island(tmp_path: Path) -> None:
    runner = WorkerProcess(tmp_path / "nowhere" / "python", 5, logging.getLogger("test"))
    answer = await runner(REQUEST)
    assert isinstance(answer, WorkerFailure)
    assert "make venv-forecaster" in answer.error


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("HWSCHED_FORECAST__"):
            monkeypatch.delenv(name)
    assert load_forecast_settings().weather_url == "https://api.open-meteo.com"
    assert load_forecast_settings().weather_source == "open-meteo"
    monkeypatch.setenv("HWSCHED_FORECAST__WEATHER_URL", "http://127.0.0.1:8099/")
    monkeypatch.setenv("HWSCHED_FORECAST__NWP_SOURCE", "gfs")
    fs = load_forecast_settings()
    assert fs.weather_url == "http://127.0.0.1:8099"
    assert fs.nwp_source == "gfs"
    assert fs.weather_source == "open-meteo-compatible 127.0.0.1:8099"
    # the simulated house's info file names its endpoint: cut back to the base
    monkeypatch.setenv("HWSCHED_FORECAST__WEATHER_URL", "http://127.0.0.1:8099/v1/forecast")
    assert load_forecast_settings().weather_url == "http://127.0.0.1:8099"
    monkeypatch.setenv("HWSCHED_FORECAST__WEATHER_URL", "http://proxy.lan/om/v1/")
    assert load_forecast_settings().weather_url == "http://proxy.lan/om"
    monkeypatch.setenv("HWSCHED_FORECAST__WEATHER_URL", "api.open-meteo.com")
    with pytest.raises(ConfigError, match=r"HWSCHED_FORECAST__WEATHER_URL: .*http"):
        load_forecast_settings()
    monkeypatch.setenv("HWSCHED_FORECAST__WEATHER_URL", "http://h/?x=1")
    with pytest.raises(ConfigError, match="without query"):
        load_forecast_settings()
    monkeypatch.delenv("HWSCHED_FORECAST__WEATHER_URL")
    monkeypatch.setenv("HWSCHED_FORECAST__RETRY_MAX_S", "10")
    with pytest.raises(ConfigError, match="retry_max_s"):
        load_forecast_settings()


def test_clear_sky_values_are_the_shared_sky() -> None:
    from services.forecaster.forecaster import clear_sky_prediction

    now = day_at("2026-06-21", 6, 0)
    h = horizon_at(now, AMSTERDAM, SIX)
    p = clear_sky_prediction(PANELS, h, now)
    south = PANELS[0].quartz_parameters
    panel = PanelArray(
        south.latitude, south.longitude, south.capacity_kwp, south.tilt, south.orientation
    )
    assert list(p.arrays["South roof"]) == clear_sky_series_w(h.start, 900, 96, [panel])
    message = p.message(h, now)
    assert message.fallback is True
    assert all(math.isfinite(x) and x >= 0 for x in message.power_w)
    assert parse_message(Forecast, message.model_dump_json()) == message


async def test_an_unexpected_error_is_logged_answered_and_retried(
    make_rig: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.forecaster import forecaster as module

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug")

    rig = make_rig(day_at("2026-06-21", 8, 0), retry_min_s=60)
    await rig.start()
    monkeypatch.setattr(module, "prediction_from_result", broken)
    await rig.request({"transaction": "t1"})
    (response,) = rig.runtime.responses()
    assert response.status == "error"
    assert response.transaction == "t1"
    assert response.error == "no new forecast: internal error: RuntimeError"
    assert rig.runtime.counters["forecast_errors"] == 1
    assert rig.forecaster.retry_at == day_at("2026-06-21", 8, 1)
    monkeypatch.undo()
    await rig.run_until(day_at("2026-06-21", 8, 1))
    assert rig.runtime.forecasts()[-1].made_at == day_at("2026-06-21", 8, 1)
    await stop(rig)
