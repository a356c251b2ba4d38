"""The forecaster service: one house solar forecast per planning day, from quartz-solar-forecast.

For every `solar panels` entry of the devices file the worker (`worker.py`, in the forecaster's
own environment) runs quartz's model on Open-Meteo weather (ICON by default); the arrays are
added up into one house forecast in W per 15-minute step and published, retained, on
`<base>/forecast` as a `Forecast`: from now (the current step) until the next daily boundary,
with the weather source and model, the PV model, when it was made and each array's share.

When: at start-up, at every daily boundary (`daily_boundary` in `timezone`, DST-correct via
`shared.daytime`; first the last forecast cut to the new day, as long as it covers it, so the
day never starts without one while the worker runs), and on a `ForecastRequest` on
`<base>/request/forecast`, answered on `<base>/response/forecast` with the request's
`transaction` (a flood of requests is coalesced: at most one re-forecast per
`request_min_interval_s`).

Every incoming message is bounded in size and rate (a token bucket per topic: requests
`REQUEST_LIMIT`, the retained forecast read back `RETAINED_LIMIT`): an oversized one is a
counted drop (`messages_too_large`) that takes nothing from the bucket, one over the rate is
dropped unanswered and counted (`messages_rate_limited`), each logged at most once a minute
per topic; every message yields to the event loop first, so a flood cannot starve the rest.

When a forecast cannot be made (no network, a bad weather answer, the worker failing or timing
out), the service never crashes:

* it tries again after `retry_min_s`, doubling up to `retry_max_s`, until a forecast is made;
* meanwhile it publishes the last forecast it has (quartz forecasts 48 h, so yesterday's still
  covers today) cut to the current horizon, as long as it covers it; its `made_at` says how old
  it is. At start-up the retained forecast on the broker counts as the last one;
* with none that covers the horizon, a clear-sky estimate of the configured arrays
  (`shared.sky`), published with `source: clear-sky`, `fallback: true` and logged as such.

A forecast is never published for the wrong day: its steps run from the current step to the
first step ending at or after the next boundary, as the clock reads when it is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from time import perf_counter
from typing import Protocol
from zoneinfo import ZoneInfo

from services.forecaster.protocol import (
    STEP_S,
    Site,
    WorkerFailure,
    WorkerRequest,
    WorkerResult,
    parse_answer,
)
from services.forecaster.settings import ForecastSettings, load_forecast_settings
from shared.clock import Clock
from shared.config import ConfigError, DevicesConfig, Settings, SolarPanelConfig
from shared.daytime import day_start, next_boundary
from shared.messages import (
    Forecast,
    ForecastRequest,
    ForecastResponse,
    ForecastResult,
    Message,
    MessageError,
    Transaction,
    parse_message,
)
from shared.service import EXIT_CONFIG, Counters, Handler, RateLimitedLog, Service, run_service
from shared.sky import PanelArray, clear_sky_series_w
from shared.topics import Topics

__all__ = [
    "CLEAR_SKY_MODEL",
    "REQUEST_LIMIT",
    "RETAINED_LIMIT",
    "SERVICE_NAME",
    "Forecaster",
    "Horizon",
    "Limit",
    "Prediction",
    "Runtime",
    "WorkerCall",
    "WorkerProcess",
    "app",
    "clear_sky_prediction",
    "floor_step",
    "horizon_at",
    "main",
]

SERVICE_NAME = "forecaster"
STEP = timedelta(seconds=STEP_S)
CLEAR_SKY_SOURCE = "clear-sky"
CLEAR_SKY_MODEL = "clear-sky (shared.sky)"
NO_PANELS_SOURCE = "no solar panels configured"
#: Most forecast requests waiting for the next run; more are answered with an error at once.
MAX_WAITING_REQUESTS = 64
#: A retained forecast made more than this far in the future (clock skew) is refused, s.
RETAINED_MAX_FUTURE_S = 120.0
WORKER_MODULE = "services.forecaster.worker"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ERROR_CHARS = 480

#: Runs the worker: a request in, its answer out (`WorkerProcess`, or a test's fake).
WorkerCall = Callable[[WorkerRequest], Awaitable[WorkerResult | WorkerFailure]]


@dataclass(frozen=True)
class Limit:
    """Size and rate bound of one incoming topic: at most `max_bytes`, `burst` at once and
    `per_s` per second after that."""

    max_bytes: int
    burst: float
    per_s: float


#: `{"transaction": ...}`: a few dozen bytes; requests are coalesced into one run anyway.
REQUEST_LIMIT = Limit(max_bytes=4_096, burst=10, per_s=1.0)
#: The retained forecast read back (a day of 15-minute steps is ~10 kB; a long one fits).
RETAINED_LIMIT = Limit(max_bytes=1024 * 1024, burst=5, per_s=0.5)


class _TokenBucket:
    """At most `burst` at once, refilled at `per_s` per second (monotonic seconds)."""

    def __init__(self, limit: Limit, now: float) -> None:
        self._limit = limit
        self._tokens = limit.burst
        self._at = now

    def take(self, now: float) -> bool:
        self._tokens = min(
            self._limit.burst, self._tokens + max(0.0, now - self._at) * self._limit.per_s
        )
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Runtime(Protocol):
    """What the forecaster needs of `shared.service.Service` (tests may pass a recorder)."""

    @property
    def clock(self) -> Clock: ...

    @property
    def counters(self) -> Counters: ...

    @property
    def topics(self) -> Topics: ...

    @property
    def log(self) -> logging.Logger: ...

    def publish(self, topic: str, payload: Message) -> None: ...

    def subscribe(self, topic_filter: str, handler: Handler) -> None: ...


# --- the horizon and the forecasts ------------------------------------------------------------


def floor_step(when: datetime) -> datetime:
    """The start of the 15-minute step holding `when` (aware), in UTC."""
    seconds = (when - _EPOCH).total_seconds()
    return _EPOCH + timedelta(seconds=math.floor(seconds / STEP_S) * STEP_S)


@dataclass(frozen=True)
class Horizon:
    """What a forecast published now covers: from the current step to the next boundary."""

    start: datetime
    #: The next daily boundary (the end of the planning day).
    boundary: datetime
    n_steps: int

    @property
    def end(self) -> datetime:
        return self.start + self.n_steps * STEP


def horizon_at(now: datetime, tz: ZoneInfo, boundary: time) -> Horizon:
    """The horizon at `now`: steps from the current one until the first ending at or after the
    next boundary (the boundary is on the 15-minute grid unless configured off it)."""
    start = floor_step(now)
    end = next_boundary(now, tz, boundary)
    return Horizon(start, end, math.ceil((end - start) / STEP))


@dataclass(frozen=True)
class Prediction:
    """A forecast as made once, per array, from which any horizon inside it can be cut."""

    made_at: datetime
    start: datetime
    #: Mean power per 15-minute step from `start`, per array name, W.
    arrays: dict[str, tuple[float, ...]]
    #: Rated power per array, kWp (the shares when the horizon has no sun at all).
    capacity_kwp: dict[str, float]
    source: str
    model: str
    pv_model: str
    fallback: bool = False

    @property
    def n_steps(self) -> int:
        return min((len(v) for v in self.arrays.values()), default=0)

    @property
    def end(self) -> datetime:
        return self.start + self.n_steps * STEP

    def covers(self, horizon: Horizon) -> bool:
        return (
            self.start <= horizon.start
            and horizon.end <= self.end
            and (horizon.start - self.start) % STEP == timedelta(0)
        )

    def message(self, horizon: Horizon, now: datetime) -> Forecast:
        """The `Forecast` of `horizon` (which it must cover): the arrays added up, W."""
        if not self.covers(horizon):
            raise ValueError(
                f"the forecast made at {self.made_at.isoformat()} does not cover "
                f"{horizon.start.isoformat()} .. {horizon.end.isoformat()}"
            )
        first = (horizon.start - self.start) // STEP
        cut = {name: v[first : first + horizon.n_steps] for name, v in self.arrays.items()}
        total = [
            round(max(0.0, sum(series[i] for series in cut.values())), 1)
            for i in range(horizon.n_steps)
        ]
        return Forecast(
            timestamp=now,
            start=horizon.start,
            step_s=STEP_S,
            power_w=total or [0.0],
            made_at=self.made_at,
            source=self.source,
            model=self.model,
            pv_model=self.pv_model,
            arrays=shares({n: sum(v) for n, v in cut.items()}, self.capacity_kwp),
            fallback=self.fallback,
        )


def shares(energy: dict[str, float], capacity_kwp: dict[str, float]) -> dict[str, float]:
    """Each array's share of the energy, or of the capacity when there is no energy at all."""
    weights = energy if sum(energy.values()) > 0 else capacity_kwp
    total = sum(weights.values())
    if total <= 0:
        return {}
    return {name: round(max(0.0, w) / total, 4) for name, w in weights.items()}


def _capacities(arrays: Sequence[SolarPanelConfig]) -> dict[str, float]:
    return {a.name: a.quartz_parameters.capacity_kwp for a in arrays}


def prediction_from_result(
    result: WorkerResult,
    arrays: Sequence[SolarPanelConfig],
    made_at: datetime,
    source: str,
) -> Prediction:
    """The worker's answer as a Prediction (kW → W); ValueError if it does not fit the arrays."""
    by_name = {s.name: s.power_kw for s in result.sites}
    missing = [a.name for a in arrays if a.name not in by_name]
    if missing:
        raise ValueError(f"the worker's answer has no forecast for {missing[0]!r}")
    if result.start != floor_step(result.start):
        raise ValueError(f"the worker's forecast starts off the 15-minute grid: {result.start}")
    return Prediction(
        made_at=made_at,
        start=result.start.astimezone(UTC),
        arrays={a.name: tuple(1000.0 * max(0.0, kw) for kw in by_name[a.name]) for a in arrays},
        capacity_kwp=_capacities(arrays),
        source=source,
        model=result.weather_model,
        pv_model=result.pv_model,
    )


def clear_sky_prediction(
    arrays: Sequence[SolarPanelConfig], horizon: Horizon, now: datetime
) -> Prediction:
    """The fallback: clear-sky power of every array over `horizon` (flagged as a fallback)."""
    series = {}
    for a in arrays:
        p = a.quartz_parameters
        panel = PanelArray(p.latitude, p.longitude, p.capacity_kwp, p.tilt, p.orientation)
        series[a.name] = tuple(clear_sky_series_w(horizon.start, STEP_S, horizon.n_steps, [panel]))
    return Prediction(
        made_at=now,
        start=horizon.start,
        arrays=series,
        capacity_kwp=_capacities(arrays),
        source=CLEAR_SKY_SOURCE,
        model="",
        pv_model=CLEAR_SKY_MODEL,
        fallback=True,
    )


def prediction_from_message(message: Forecast) -> Prediction | None:
    """A retained forecast read back at start-up, as a Prediction (None for a fallback)."""
    if message.fallback or message.step_s != STEP_S or message.start != floor_step(message.start):
        return None
    split = message.arrays or {"house": 1.0}
    return Prediction(
        made_at=message.made_at,
        start=message.start.astimezone(UTC),
        arrays={name: tuple(p * share for p in message.power_w) for name, share in split.items()},
        capacity_kwp=dict(split),
        source=message.source,
        model=message.model,
        pv_model=message.pv_model,
    )


# --- the worker process -----------------------------------------------------------------------


class WorkerProcess:
    """Runs the worker in the island's python: one process per forecast, killed on timeout.

    A new process each time: a day's forecast takes seconds, and quartz's stack (pandas,
    xarray, xgboost, ~250 MB) is given back to the Pi between runs. Its timeout is real time.
    The island must have hwsched installed (`make venv-forecaster`, or the image's wheel).
    """

    def __init__(self, python: Path, timeout_s: float, log: logging.Logger) -> None:
        self.python = python
        self.timeout_s = timeout_s
        self.log = log

    async def __call__(self, request: WorkerRequest) -> WorkerResult | WorkerFailure:
        if not self.python.exists():
            return WorkerFailure(
                kind="model",
                error=f"no forecaster environment at {self.python} (make venv-forecaster, "
                "or set HWSCHED_FORECAST__WORKER_PYTHON)",
            )
        process = await asyncio.create_subprocess_exec(
            str(self.python),
            "-I",  # isolated: no PYTHONPATH of the service's environment leaks into the island
            "-m",
            WORKER_MODULE,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: a timeout kills all of it
        )
        try:
            out, err = await asyncio.wait_for(
                process.communicate(request.model_dump_json().encode()), self.timeout_s
            )
        except TimeoutError:
            return WorkerFailure(kind="model", error=f"no answer within {self.timeout_s:g} s")
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
        for line in lines[-50:]:
            self.log.debug("worker: %s", line)
        if process.returncode != 0 or not out.strip():
            last = lines[-1] if lines else "no output"
            return WorkerFailure(
                kind="model", error=f"worker exited with status {process.returncode}: {last}"
            )
        try:
            return parse_answer(out)
        except ValueError as error:
            return WorkerFailure(kind="model", error=f"unreadable worker answer: {error}")


# --- the service ------------------------------------------------------------------------------


class Forecaster:
    """Makes, keeps and publishes the house forecast; answers forecast requests."""

    def __init__(
        self,
        runtime: Runtime,
        settings: Settings,
        forecast_settings: ForecastSettings,
        arrays: Sequence[SolarPanelConfig],
        worker: WorkerCall,
        *,
        real_seconds: Callable[[], float] = perf_counter,
    ) -> None:
        self._rt = runtime
        self._clock = runtime.clock
        #: Durations of real work (the worker's run) are real seconds, not the clock's: on a
        #: simulated clock at --speed 600 a 17 s run would read as 10200 s.
        self._real_seconds = real_seconds
        self._log = runtime.log
        self._counters = runtime.counters
        self._topics = runtime.topics
        self._tz = settings.tz
        self._boundary = settings.daily_boundary
        self._fs = forecast_settings
        self._arrays = list(arrays)
        self._worker = worker
        #: The last forecast made (or read back): what a failed run falls back on.
        self.prediction: Prediction | None = None
        #: The last message published.
        self.published: Forecast | None = None
        self.failures = 0
        self.retry_at: datetime | None = None
        self._day_end: datetime | None = None
        self._waiting: list[Transaction | None] = []
        self._inflight: list[Transaction | None] = []
        self._last_request_run: datetime | None = None
        self._wake = asyncio.Event()
        self._rate_log = RateLimitedLog(self._log, self._clock)

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Forecast now, then at every boundary, retry and request; until cancelled."""
        self._rt.subscribe(
            self._topics.forecast_request(), self.bounded(REQUEST_LIMIT, self.on_request)
        )
        self._rt.subscribe(self._topics.forecast(), self.bounded(RETAINED_LIMIT, self.on_retained))
        names = ", ".join(a.name for a in self._arrays) or "none"
        self._log.info(
            "forecasting %d solar array(s) (%s) with quartz-solar-forecast, weather %s (%s); "
            "new forecast every day at %s %s",
            len(self._arrays),
            names,
            self._fs.weather_url,
            self._fs.nwp_source,
            self._boundary.strftime("%H:%M"),
            self._tz.key,
        )
        reason = "start-up"
        while True:
            try:
                await self.forecast_now(reason)
            except Exception as err:  # a bug: log it, answer, try again later; never crash
                self._counters.inc("forecast_errors")
                self._log.error("the forecast run (%s) failed unexpectedly", reason, exc_info=err)
                self._schedule_retry()
                for transaction in self._inflight:
                    self._respond(transaction, None, f"internal error: {type(err).__name__}")
            self._inflight = []
            reason = await self._next()

    async def _next(self) -> str:
        """Wait for the next reason to forecast: the boundary, a retry or a request."""
        while True:
            self._wake.clear()
            now = self._clock.now()
            deadlines: list[tuple[datetime, str]] = []
            if self._day_end is not None:
                deadlines.append((self._day_end, "daily boundary"))
            if self.retry_at is not None:
                deadlines.append((self.retry_at, "retry"))
            if self._waiting:
                earliest = now
                if self._last_request_run is not None:
                    gap = timedelta(seconds=self._fs.request_min_interval_s)
                    earliest = max(now, self._last_request_run + gap)
                deadlines.append((earliest, "request"))
            if not deadlines:  # only if a run never got to publish: the day's end from now
                deadlines.append((next_boundary(now, self._tz, self._boundary), "daily boundary"))
            when, why = min(deadlines, key=lambda d: d[0])
            if when <= now:
                return why
            await self._sleep_or_wake(when)

    async def _sleep_or_wake(self, when: datetime) -> None:
        tasks = [
            asyncio.ensure_future(self._wake.wait()),
            asyncio.ensure_future(self._clock.sleep_until(when)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)

    # --- one run ----------------------------------------------------------------------------

    async def forecast_now(self, reason: str) -> Forecast:
        """Make a forecast (or fall back), publish it and answer the waiting requests."""
        waiting, self._waiting = self._waiting, []
        self._inflight = waiting
        now = self._clock.now()
        if waiting:
            self._last_request_run = now
        horizon = horizon_at(now, self._tz, self._boundary)
        if not self._arrays:
            prediction = Prediction(now, horizon.start, {}, {}, NO_PANELS_SOURCE, "", "")
            self._log.warning("no solar panels in the devices file: the forecast is zero")
            message = self._publish(prediction)
            self._answer(waiting, message, None)
            return message
        if reason == "daily boundary":
            self._carry_over(horizon)
        began = self._real_seconds()
        answer = await self._ask_worker(horizon)
        took = self._real_seconds() - began
        if isinstance(answer, WorkerResult):
            try:
                made = prediction_from_result(
                    answer, self._arrays, self._clock.now(), self._fs.weather_source
                )
                if not made.covers(horizon_at(self._clock.now(), self._tz, self._boundary)):
                    raise ValueError(f"quartz's forecast ends at {made.end.isoformat()}")
            except ValueError as err:
                answer = WorkerFailure(kind="model", error=str(err))
            else:
                self.prediction = made
                self.failures = 0
                self.retry_at = None
                self._counters.inc("forecasts_made")
                message = self._publish(made)
                self._log_made(message, reason, took, answer)
                self._answer(waiting, message, None)
                return message
        self._counters.inc("forecast_failures")
        self._counters.inc(f"forecast_failures_{answer.kind}")
        retry_local = self._schedule_retry().astimezone(self._tz).strftime("%H:%M:%S")
        error = f"{answer.kind}: {answer.error}"
        current = horizon_at(self._clock.now(), self._tz, self._boundary)
        if self.prediction is not None and self.prediction.covers(current):
            self._counters.inc("fallback_last_forecast")
            self._log.warning(
                "forecast (%s) failed (%s); keeping the forecast made at %s; next try at %s",
                reason,
                error,
                self.prediction.made_at.astimezone(self._tz).isoformat(timespec="minutes"),
                retry_local,
            )
            message = self._publish(self.prediction)
        else:
            self._counters.inc("fallback_clear_sky")
            self._log.warning(
                "forecast (%s) failed (%s); no forecast covers the day: publishing a CLEAR-SKY "
                "ESTIMATE (fallback: no weather, no model) until a forecast is made; "
                "next try at %s",
                reason,
                error,
                retry_local,
            )
            message = self._publish(clear_sky_prediction(self._arrays, current, self._clock.now()))
        self._answer(waiting, message, error)
        return message

    def _carry_over(self, horizon: Horizon) -> None:
        """At the boundary, before the day's run: the last forecast cut to the new day, if it
        covers it (quartz forecasts 48 h), so the scheduler plans the day's first minutes on
        it rather than on its fallback rule while the worker runs (seconds; longer on a Pi)."""
        last = self.prediction
        if last is None or not last.covers(horizon):
            return
        if self.published is not None and self.published.start >= horizon.start:
            return  # the new day has its forecast already
        self._counters.inc("forecasts_carried_over")
        self._log.info(
            "new day: the forecast made at %s carried over until the day's own is made",
            last.made_at.astimezone(self._tz).isoformat(timespec="minutes"),
        )
        self._publish(last)

    def _schedule_retry(self) -> datetime:
        """One more failure: the next try after the back-off (returned)."""
        self.failures += 1
        # (the exponent capped: 2 ** 1024 is no float, and after ~1000 failed runs, e.g. a
        # request every 30 s through a weather outage, this raised in the run loop's own
        # error path and the forecaster stopped)
        doublings = min(self.failures - 1, 30)
        delay = min(self._fs.retry_max_s, self._fs.retry_min_s * 2.0**doublings)
        self.retry_at = self._clock.now() + timedelta(seconds=delay)
        return self.retry_at

    async def _ask_worker(self, horizon: Horizon) -> WorkerResult | WorkerFailure:
        arrays = self._arrays
        request = WorkerRequest(
            ts=horizon.start,
            weather_url=self._fs.weather_url,
            nwp_source=self._fs.nwp_source,
            http_timeout_s=self._fs.http_timeout_s,
            sites=[
                Site(
                    name=a.name,
                    latitude=a.quartz_parameters.latitude,
                    longitude=a.quartz_parameters.longitude,
                    capacity_kwp=a.quartz_parameters.capacity_kwp,
                    tilt=a.quartz_parameters.tilt,
                    orientation=a.quartz_parameters.orientation,
                )
                for a in arrays
            ],
        )
        try:
            return await self._worker(request)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the worker runner itself failed: never crash
            self._log.error("running the forecast worker failed", exc_info=err)
            return WorkerFailure(kind="model", error=f"{type(err).__name__}: {err}"[:1900])

    def _publish(self, prediction: Prediction) -> Forecast:
        """Publish `prediction` over the horizon as the clock reads now (never another day's)."""
        now = self._clock.now()
        horizon = horizon_at(now, self._tz, self._boundary)
        if prediction.arrays:
            message = prediction.message(horizon, now)
        else:
            message = _zero(prediction, horizon, now)
        self._day_end = horizon.boundary
        if not _of_the_day(message, now, self._tz, self._boundary):  # by construction never
            self._counters.inc("forecast_wrong_day_refused")
            self._log.error("refused to publish a forecast for another day: %s", message.start)
            return message
        self._rt.publish(self._topics.forecast(), message)
        self.published = message
        return message

    def _log_made(
        self, message: Forecast, reason: str, took_s: float, result: WorkerResult
    ) -> None:
        peak = max(message.power_w)
        at = message.start + message.power_w.index(peak) * STEP
        energy_kwh = sum(message.power_w) * STEP_S / 3600 / 1000
        self._log.info(
            "forecast (%s) for the day until %s made in %.1f s of real time (worker: quartz "
            "import %.1f s, peak memory %.0f MB): %.1f kWh, peak %.2f kW at %s; shares %s",
            reason,
            message.end.astimezone(self._tz).isoformat(timespec="minutes"),
            took_s,
            result.import_s,
            result.peak_rss_mb,
            energy_kwh,
            peak / 1000,
            at.astimezone(self._tz).strftime("%H:%M"),
            ", ".join(f"{k} {v:.0%}" for k, v in message.arrays.items()),
        )

    # --- requests and the retained forecast ---------------------------------------------------

    def bounded(self, limit: Limit, handle: Handler) -> Handler:
        """`handle`, bounded in size and rate (one bucket per handler, i.e. per topic)."""
        bucket: _TokenBucket | None = None

        async def handler(topic: str, payload: bytes) -> None:
            nonlocal bucket
            await asyncio.sleep(0)  # a flood never starves the forecast loop or the runtime
            if len(payload) > limit.max_bytes:  # before the bucket: it takes no token
                self._counters.inc("messages_too_large")
                raise MessageError(f"(payload): {len(payload)} bytes, at most {limit.max_bytes}")
            now = self._clock.monotonic()
            if bucket is None:
                bucket = _TokenBucket(limit, now)
            if not bucket.take(now):
                self._counters.inc("messages_rate_limited")
                self._rate_log.log(
                    f"rate:{topic}",
                    logging.WARNING,
                    "too many messages on %s: dropped (at most %g per s)",
                    topic,
                    limit.per_s,
                )
                return
            await handle(topic, payload)

        return handler

    async def on_request(self, topic: str, payload: bytes) -> None:
        """A `ForecastRequest`: re-forecast soon, answer with its transaction."""
        request = parse_message(ForecastRequest, payload)
        self._counters.inc("forecast_requests")
        if len(self._waiting) >= MAX_WAITING_REQUESTS:
            self._counters.inc("forecast_requests_refused")
            self._respond(request.transaction, None, "too many forecast requests waiting")
            return
        self._waiting.append(request.transaction)
        self._wake.set()

    async def on_retained(self, topic: str, payload: bytes) -> None:
        """The retained forecast (ours from before a restart): the fallback until a new one.

        An unusable payload is a `MessageError`: a counted, logged drop (by the runtime).
        """
        message = parse_message(Forecast, payload)
        try:
            made_at = message.made_at.astimezone(UTC)
            read = prediction_from_message(message)
        except OverflowError:  # a time at the edge of the calendar (year 1 or 9999)
            raise MessageError("(payload): start or made_at out of range") from None
        ahead = (made_at - self._clock.now()).total_seconds()
        if ahead > RETAINED_MAX_FUTURE_S:  # it would stay "newer" than every real forecast
            raise MessageError(f"made_at: {ahead:.0f} s in the future", "made_at")
        if read is None or (
            self.prediction is not None and read.made_at <= self.prediction.made_at
        ):
            return  # a fallback, or no newer than ours (our own forecast coming back)
        self.prediction = read
        self._log.info(
            "read back the forecast made at %s (%s) as the fallback",
            message.made_at.isoformat(timespec="minutes"),
            message.source,
        )

    def _answer(
        self, waiting: list[Transaction | None], message: Forecast, error: str | None
    ) -> None:
        for transaction in waiting:
            self._respond(transaction, message, error)

    def _respond(
        self, transaction: Transaction | None, message: Forecast | None, error: str | None
    ) -> None:
        now = self._clock.now()
        if error is not None or message is None:
            text = f"no new forecast: {error}"
            if message is not None:
                kept = "a clear-sky estimate" if message.fallback else "the forecast made at"
                when = "" if message.fallback else f" {message.made_at.isoformat()}"
                text = f"{text[: _ERROR_CHARS - 80]}; publishing {kept}{when}"
            response = ForecastResponse(
                timestamp=now, status="error", error=text[:500], transaction=transaction
            )
        else:
            response = ForecastResponse(
                timestamp=now,
                status="ok",
                data=ForecastResult(
                    made_at=message.made_at,
                    source=message.source,
                    fallback=message.fallback,
                    steps=len(message.power_w),
                ),
                transaction=transaction,
            )
        self._counters.inc("forecast_responses")
        self._rt.publish(self._topics.forecast_response(), response)


def _of_the_day(message: Forecast, now: datetime, tz: ZoneInfo, boundary: time) -> bool:
    """The message starts in the current step of today's planning day and ends with its
    last step (the one holding the next boundary, or ending on it)."""
    end = next_boundary(now, tz, boundary)
    return (
        day_start(now, tz, boundary) - STEP < message.start <= now
        and end <= message.end < end + STEP
    )


def _zero(prediction: Prediction, horizon: Horizon, now: datetime) -> Forecast:
    return Forecast(
        timestamp=now,
        start=horizon.start,
        step_s=STEP_S,
        power_w=[0.0] * horizon.n_steps,
        made_at=prediction.made_at,
        source=prediction.source,
    )


# --- entry point ------------------------------------------------------------------------------


async def app(
    service: Service, devices: DevicesConfig, forecast_settings: ForecastSettings
) -> None:
    """The forecaster's work inside the common service runtime."""
    worker = WorkerProcess(
        forecast_settings.worker_python, forecast_settings.worker_timeout_s, service.log
    )
    forecaster = Forecaster(
        service, service.settings, forecast_settings, devices.solar_panels, worker
    )
    await forecaster.run()


def main() -> int:
    """`python -m services.forecaster`: run until SIGINT/SIGTERM."""
    try:
        forecast_settings = load_forecast_settings()
    except ConfigError as err:
        print(f"hwsched {SERVICE_NAME}: {err}", file=sys.stderr)
        return EXIT_CONFIG
    return run_service(
        SERVICE_NAME, lambda service, devices: app(service, devices, forecast_settings)
    )
