"""The scheduler: energy books, the plan and the desired socket states.

It reads (all retained, so a (re)start sees the latest at once):

* `<base>/books`: its own books, read back once at start (today's only: never across the
  daily boundary); later copies (its own echoes) are only checked;
* `<base>/forecast`: the latest solar forecast (an older `made_at` than the one held is
  ignored);
* `<base>/<socket>/override`: the actuator's override state per socket;
* `<base>/<socket>`: the actuator's socket state: its last switch time (how long each socket
  has been on / off, for the minimum on / off times);
* `<base>/<device>/measurement`: socket samples go into the books (`shared.bookkeeping`:
  trapezoid integration, full detection, daily reset); battery readings give the batteries'
  energy (capacity x state of charge);
* `<base>/surplus`: each new one (re)plans;
* `<base>/prices`, `<base>/batteries`, its own `<base>/cost`, and the P1 meter's readings:
  money (`services.scheduler.money`): prices per plan step, the batteries' modes, the
  battery command and the day's cost.

Until the books are restored (the retained books arrive, or `restore_wait_s` after
connecting without any) socket samples are held back and nothing is planned.

A plan (on the latest surplus only: plans never overlap, a burst of surpluses gives one plan)
runs from the step holding now to the next boundary in `planning_step_s` steps on the day's
grid (`logic.prepare`): sockets under an active override are left out and their draw counted
as house load; the forecast is resampled, scaled and shifted (`forecast_shift`); the calm settings
(`switch_cost_wh`, `min_on_s`, `min_off_s`, `hold_gain_wh`), each socket's time since its
last switch and the incumbent (the last published plan, moved onto the new steps:
`previous`, `previous_battery_mode`) go into the problem, so the planner keeps the
incumbent's decisions unless a change gains more than `hold_gain_wh`.

Two tiers (the optimal planner):

* **quick**, in the poll: every plan is `plan_quick` (local search, a count of evaluations)
  from the incumbent, or from the reference plan when there is none;
* **full**, in the background: on the first plan, a new forecast, a changed set of controlled
  sockets, a new step, `full_plan_on_change_s` after the last when a quick plan changed the
  incumbent's decisions, or `full_plan_every_s` after the last (and at least
  `full_plan_duty` times as long as the last one took: a busy machine at an accelerated
  speed is not kept solving full plans that come too late), `plan_optimal` runs in a worker
  process (`python -m shared.planning.worker`, in a thread here) while the quick tier goes
  on serving. When it is done and still **current** — planned on the same forecast, the same
  controlled sockets and step, and started at most `full_plan_max_age_s` of clock time ago
  (plus the work allowance, see below) — the next plan starts from it (moved onto the new
  steps), through the same hysteresis against the incumbent; otherwise it is discarded
  (`full_plans_discarded`). A worker that fails or hangs gives the reference plan (its
  own time-out); one that outlives `full_timeout_s` here is abandoned (`planner_timeouts`)
  and no other starts while it runs. The published plan says which tier made it (`tier`;
  counters `plans_full` / `plans_quick`).

With `planner = "reference"` every plan is the reference planner's, inline. Without a usable
forecast (none, stale, not covering now), the original's fallback rule on the measured
surplus (flagged: `planner` "fallback-rule", `fallback_reason`). Each plan publishes: the plan
(retained), one `SocketCommand` per planned socket (not retained, `valid_until` = a few poll
intervals on) and the books (retained).

Time: staleness is judged on the injectable clock (simulated time in an accelerated run),
with an allowance for work that simulated time does not speed up (`work_allowance_s` real
seconds: a poll of the devices, a broker round trip; `sleep_for_work`): at `--speed 600`
a surplus a poll cycle old is not stale.

At the daily boundary the books start empty (and manual flags end) and a new day's plan is
made. Every unusable message is a counted drop (`messages_dropped_<topic>`) with a
rate-limited log line; state is never changed by one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeVar

from pydantic import ValidationError

from shared.bookkeeping import (
    Books,
    battery_energy_wh,
    empty_books,
    record_sample,
    roll_books,
)
from shared.clock import (
    WORK_ALLOWANCE_S,
    Clock,
    ScaledClock,
    clock_seconds_of_work,
    sleep_for_work,
)
from shared.config import BatteryConfig, DevicesConfig, P1Config, Settings, SocketConfig
from shared.daytime import day_start, next_boundary
from shared.messages import (
    DeviceMeasurement,
    EnergyBooks,
    Forecast,
    HouseSurplus,
    Message,
    MessageError,
    OverrideState,
    SocketState,
    parse_message,
)
from shared.planning.optimal import (
    QUICK_CEILING_S,
    WORKER_START_S,
    Options,
    default_ceiling,
    plan_optimal,
    plan_quick,
)
from shared.planning.problem import BatteryMode, Plan, PlanningProblem
from shared.planning.reference import plan_reference
from shared.service import (
    Counters,
    Publisher,
    RateLimitedLog,
    Service,
    run_service,
    with_timeout,
)
from shared.topics import Topics

from .logic import (
    Baseline,
    BatteryEnergy,
    ForecastFit,
    PlanContext,
    Prepared,
    ShiftOptions,
    books_message,
    commands,
    excluded_sockets,
    fallback_plan,
    forecast_at,
    forecast_problem,
    measured_available_w,
    moved_modes,
    moved_rows,
    plan_message,
    prepare,
    restore_books,
    update_baseline,
    update_fit,
)
from .money import Money

__all__ = ["SERVICE_NAME", "Publisher", "Scheduler", "SchedulerOptions", "app", "main"]

SERVICE_NAME = "scheduler"

Planner = Callable[[PlanningProblem], Plan]
QuickPlanner = Callable[[PlanningProblem, Mapping[str, Sequence[int]] | None], Plan]
Tier = Literal["full", "quick"]
M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class SchedulerOptions:
    """Timings of the scheduler that are not settings."""

    #: A command holds for this many poll intervals (`valid_until`).
    command_valid_intervals: float = 3.0
    #: A surplus older than this many poll intervals is not planned on.
    surplus_max_age_intervals: float = 3.0
    #: After connecting, wait this long for the retained books before starting empty, s.
    restore_wait_s: float = 2.0
    #: A message time this far ahead of the clock is refused (clock skew), s.
    max_future_s: float = 120.0
    #: Socket samples held back while the books are restored.
    max_held_samples: int = 1000
    #: A full plan (the background tier) starts on the first plan, a new forecast, a changed
    #: set of controlled sockets or step, or this long (clock time, s) after the last one.
    full_plan_every_s: float = 3 * 3600.0
    #: ... or this long after the last one when a quick plan changed the incumbent's
    #: decisions (a person's override ended, the sun or a socket surprised: the quick
    #: tier's local search only repairs, the full tier plans the rest of the day again).
    full_plan_on_change_s: float = 900.0
    #: ... and at least this many times as long as the last full plan took (clock time).
    full_plan_duty: float = 4.0
    #: A finished full plan is still current if it started at most this long ago (clock
    #: time, s; plus the work allowance) and was planned on the same forecast, sockets, step.
    full_plan_max_age_s: float = 1800.0
    #: A full plan still running after this many real seconds is abandoned (None: the
    #: worker's own limit, `default_ceiling` + `WORKER_START_S`, plus 5 s).
    full_timeout_s: float | None = None
    #: The first plan on a forecast (no incumbent: at start-up, or the forecast back after
    #: a gap) waits for the full tier, so the house is not switched on a quick plan that
    #: the full plan reverses seconds later (meanwhile the actuator leaves the sockets as
    #: they are, or keeps to the last commands). None (the default): as long as the full
    #: plan takes, up to its time-out — so the first plan is the same on a fast machine and
    #: on a slow or busy one; a number: at most that many real s; 0: no wait.
    first_full_wait_s: float | None = None
    #: Evaluations of each quick re-plan (~20 ms for a 96-step day with 5 sockets).
    warm_evals: int = 250
    #: Work that simulated time does not speed up (a poll cycle, a broker round trip), real
    #: s: added (in clock seconds) to the surplus's and a full plan's allowed age and to
    #: the commands' validity, so an accelerated healthy run is not taken for a broken one.
    work_allowance_s: float = WORK_ALLOWANCE_S
    #: Planning without a forecast is expected for a while (at start-up, until the
    #: forecaster's first forecast; at the boundary, until the day's): logged as info, and
    #: as a warning only when it lasts longer than this (clock s), plus
    #: `forecast_work_allowance_s` real s of the forecaster's work.
    forecast_grace_s: float = 1800.0
    forecast_work_allowance_s: float = 120.0
    log_every_s: float = 60.0


#: Reasons to plan without a forecast that a healthy run meets (see `forecast_problem`).
EXPECTED_WAITS = ("no forecast", "forecast ended", "forecast starts later")


@dataclass(frozen=True)
class PlanKey:
    """What a plan was made for, beyond the state it started from."""

    step_s: int
    forecast_made_at: datetime | None
    controlled: tuple[str, ...]


@dataclass(frozen=True)
class Incumbent:
    """The last published forecast plan: what the next plan keeps unless a change pays."""

    start: datetime
    key: PlanKey
    rows: dict[str, list[int]]
    modes: list[BatteryMode] | None


@dataclass
class FullJob:
    """A full plan running (or done) in the background."""

    key: PlanKey
    start: datetime
    task: asyncio.Task[Plan | None]
    abandoned: bool = False


class _DropError(Exception):
    """A message that cannot be used (why, in one line)."""


class Scheduler:
    """The scheduler's state and work; see the module docstring."""

    def __init__(
        self,
        devices: DevicesConfig,
        settings: Settings,
        publisher: Publisher,
        *,
        topics: Topics,
        counters: Counters,
        clock: Clock,
        options: SchedulerOptions | None = None,
        planner: Planner | None = None,
        quick_planner: QuickPlanner | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self.devices = devices
        self._by_name = {d.device_name: d for d in devices.devices}
        self.settings = settings
        self.options = options if options is not None else SchedulerOptions()
        self.ctx = PlanContext(
            tz=settings.tz,
            boundary=settings.daily_boundary,
            step_s=settings.planning_step_s,
            switch_interval_s=settings.switch_interval_s,
            forecast_max_age_s=settings.forecast_max_age_s,
            fallback_margin_s=float(settings.fallback_margin_s),
            shift=ShiftOptions(
                mode=settings.forecast_shift,
                half_life_s=settings.forecast_shift_half_life_s,
                baseline_s=settings.forecast_shift_baseline_s,
                fit_s=settings.forecast_shift_fit_s,
            ),
            switch_cost_wh=settings.switch_cost_wh,
            min_on_s=settings.min_on_s,
            min_off_s=settings.min_off_s,
            hold_gain_wh=settings.hold_gain_wh,
            forecast_risk_per_h=settings.forecast_risk_per_h,
        )
        self._publisher = publisher
        self._topics = topics
        self._counters = counters
        self._clock = clock
        self._log = log if log is not None else logging.getLogger(f"hwsched.{SERVICE_NAME}")
        self._rate_limited = RateLimitedLog(self._log, clock, self.options.log_every_s)
        self._planner_name = settings.planner
        #: The full tier (in a thread: by default the worker process) and the quick tier.
        self._full_planner: Planner = planner if planner is not None else self._plan_full
        self._quick_planner: QuickPlanner = (
            quick_planner if quick_planner is not None else self._plan_quick
        )
        #: The original's planner (`planner = "reference"`, and the stand-in on a failure).
        self._reference_planner: Planner = plan_reference
        # state
        self.books: Books = empty_books(self._today())
        self.batteries: dict[str, BatteryEnergy] = {}
        self.overrides: dict[str, OverrideState] = {}
        self.power_on: dict[str, bool] = {}
        #: The actuator's last switch of each socket (device name).
        self.last_switch_at: dict[str, datetime] = {}
        self._state_seen: dict[str, datetime] = {}
        self.forecast: Forecast | None = None
        self.surplus: HouseSurplus | None = None
        self.baseline: Baseline | None = None
        self.fit: ForecastFit | None = None
        self.last_plan: Prepared | None = None
        #: The last published forecast plan (None after a fallback-rule plan).
        self.incumbent: Incumbent | None = None
        #: The full plan running or done, and what the last one was started for (and when).
        self.full_job: FullJob | None = None
        self._full_started: tuple[PlanKey, datetime] | None = None
        #: How long the last full plan took, clock s.
        self._full_took_s = 0.0
        #: The thread of the last full plan (never two at once, even an abandoned one).
        self._solver: asyncio.Future[Plan] | None = None
        self.restored = asyncio.Event()
        self._held: list[DeviceMeasurement] = []
        self._wake = asyncio.Event()
        self._mode: str | None = None
        #: Since when the scheduler plans in `_mode`, and whether that has been warned of.
        self._mode_since: datetime | None = None
        self._mode_warned = False
        #: Prices, battery modes and the day's cost (services/scheduler/money.py).
        self.money = Money(
            devices,
            settings,
            publisher,
            topics=topics,
            counters=counters,
            clock=clock,
            log=self._log,
        )

    # --- settings-derived ---------------------------------------------------------------

    def _today(self) -> datetime:
        return day_start(self._clock.now(), self.ctx.tz, self.ctx.boundary)

    @property
    def poll_interval_s(self) -> float:
        return self.settings.poll_interval_s

    @property
    def time_limit_s(self) -> float:
        return self.settings.planner_time_limit_s

    def _work_s(self, real_s: float) -> float:
        """The allowance for `real_s` seconds of work, clock seconds."""
        return clock_seconds_of_work(self._clock, real_s)

    def _plan_full(self, problem: PlanningProblem) -> Plan:
        """The full tier in a short-lived worker: HiGHS and numpy never stay in memory here."""
        return plan_optimal(problem, Options(milp_worker=True))

    def _plan_quick(
        self, problem: PlanningProblem, start: Mapping[str, Sequence[int]] | None
    ) -> Plan:
        """The quick tier: local search from `start` (a count of evaluations)."""
        limit = max(QUICK_CEILING_S, self.time_limit_s)
        return plan_quick(
            problem, start, Options(quick_evals=self.options.warm_evals, time_limit_s=limit)
        )

    def _full_timeout_s(self, problem: PlanningProblem) -> float:
        if self.options.full_timeout_s is not None:
            return self.options.full_timeout_s
        return default_ceiling(problem) + WORKER_START_S + 5.0

    # --- subscriptions ------------------------------------------------------------------

    def subscribe(self, service: Service) -> None:
        """Register the handlers (books first, so its retained copy comes before samples)."""
        t = self._topics
        service.subscribe(t.books(), self.on_books)
        self.money.subscribe(service)
        service.subscribe(t.forecast(), self.on_forecast)
        service.subscribe(t.all_overrides(), self.on_override)
        service.subscribe(t.all_socket_states(), self.on_socket_state)
        service.subscribe(t.all_measurements(), self.on_measurement)
        service.subscribe(t.surplus(), self.on_surplus)

    def _drop(self, kind: str, topic: str, why: str) -> None:
        self._counters.inc("messages_dropped")
        self._counters.inc(f"messages_dropped_{kind}")
        self._rate_limited.log(
            f"drop:{kind}", logging.WARNING, "dropped a message on %s: %s", topic, why
        )

    def _parse(self, model: type[M], payload: bytes) -> M:
        try:
            return parse_message(model, payload)
        except MessageError as err:
            raise _DropError(str(err)) from None

    def _not_future(self, when: datetime) -> None:
        ahead = (when - self._clock.now()).total_seconds()
        if ahead > self.options.max_future_s:
            raise _DropError(f"timestamp {when.isoformat()} is {ahead:.0f} s in the future")

    def _slug(self, topic: str) -> str:
        found = self._topics.match(topic)
        if found is None:
            raise _DropError("not a topic of the layout")
        _, params = found
        slug = params.get("device") or params.get("socket")
        if slug is None:
            raise _DropError("no device in the topic")
        return slug

    # --- handlers -----------------------------------------------------------------------

    async def on_books(self, topic: str, payload: bytes) -> None:
        try:
            message = self._parse(EnergyBooks, payload)
            # a sample time in the future would make every later sample look older
            for when in (
                message.timestamp,
                message.shift_baseline_at,
                message.shift_fit.at if message.shift_fit is not None else None,
                *(b.last_sample_at for b in message.sockets.values()),
                *(b.measured_at for b in message.batteries.values()),
            ):
                if when is not None:
                    self._not_future(when)
        except _DropError as err:
            self._drop("books", topic, str(err))
            return
        if self.restored.is_set():
            return  # our own copy coming back: the books in memory are newer
        now = self._clock.now()
        got = restore_books(message, now, self.ctx.tz, self.ctx.boundary, self.devices)
        if got is None:
            self._counters.inc("books_not_restored_other_day")
            self._log.info(
                "retained books are for the day from %s, not today: starting empty",
                message.day_start.isoformat(),
            )
            self._finish_restore(None)
            return
        self._counters.inc("books_restored")
        self._log.info(
            "books restored: %s",
            ", ".join(f"{n} {b.energy_wh:.0f} Wh" for n, b in got.books.sockets.items()) or "-",
        )
        self.books = got.books
        self.batteries = got.batteries
        self.baseline = got.baseline
        self.fit = got.fit
        self._finish_restore(got.books)

    def _finish_restore(self, books: Books | None) -> None:
        if self.restored.is_set():
            return
        if books is None:
            self.books = empty_books(self._today())
        held, self._held = self._held, []
        self.restored.set()
        for m in held:
            self._apply_measurement(m)
        self._publish_books()
        self._wake.set()

    async def on_forecast(self, topic: str, payload: bytes) -> None:
        try:
            forecast = self._parse(Forecast, payload)
            self._not_future(forecast.made_at)
        except _DropError as err:
            self._drop("forecast", topic, str(err))
            return
        if self.forecast is not None and forecast.made_at < self.forecast.made_at:
            self._counters.inc("forecasts_older_ignored")
            return
        self._counters.inc("forecasts_received")
        if self.forecast is not None and _maker(forecast) != _maker(self.forecast):
            # another source, model or a fallback: the fitted scale was the old one's bias
            if self.fit is not None:
                self._counters.inc("forecast_fit_resets")
                self._log.info(
                    "forecast from %s now (was %s): the forecast's fitted scale starts over",
                    "/".join(_maker(forecast)[:3]) or "-",
                    "/".join(_maker(self.forecast)[:3]) or "-",
                )
            self.fit = None
        self.forecast = forecast
        self._wake.set()

    async def on_override(self, topic: str, payload: bytes) -> None:
        try:
            slug = self._slug(topic)
            device = self.devices.device_by_slug(slug)
            if not isinstance(device, SocketConfig):
                raise _DropError(f"{slug!r} is not a configured socket")
            state = self._parse(OverrideState, payload)
            if state.socket != device.device_name:
                raise _DropError(f"socket {state.socket!r} on the topic of {device.device_name!r}")
            self._not_future(state.timestamp)
        except _DropError as err:
            self._drop("override", topic, str(err))
            return
        name = device.device_name
        old = self.overrides.get(name)
        if old is not None and state.timestamp < old.timestamp:
            self._counters.inc("overrides_older_ignored")
            return
        self.overrides[name] = state
        self._counters.inc("overrides_received")
        self._wake.set()

    async def on_socket_state(self, topic: str, payload: bytes) -> None:
        """The actuator's state of a socket: its last switch time (`<base>/+` also matches
        the plan, books, ...: those are left to their own handlers)."""
        found = self._topics.match(topic)
        if found is None or found[0].name != "socket_state":
            return
        try:
            slug = found[1]["socket"]
            device = self.devices.device_by_slug(slug)
            if not isinstance(device, SocketConfig):
                raise _DropError(f"{slug!r} is not a configured socket")
            state = self._parse(SocketState, payload)
            if state.socket != device.device_name:
                raise _DropError(f"socket {state.socket!r} on the topic of {device.device_name!r}")
            self._not_future(state.timestamp)
            if state.last_switch_at is not None:
                self._not_future(state.last_switch_at)
        except _DropError as err:
            self._drop("socket_state", topic, str(err))
            return
        name = device.device_name
        seen = self._state_seen.get(name)
        if seen is not None and state.timestamp < seen:
            return
        self._state_seen[name] = state.timestamp
        if state.last_switch_at is not None:
            self.last_switch_at[name] = state.last_switch_at
        self._counters.inc("socket_states_received")

    async def on_measurement(self, topic: str, payload: bytes) -> None:
        try:
            slug = self._slug(topic)
            device = self.devices.device_by_slug(slug)
            if device is None:
                raise _DropError(f"{slug!r} is not a configured device")
            m = self._parse(DeviceMeasurement, payload)
            if m.device != device.device_name or m.device_type != device.device_type:
                raise _DropError(
                    f"{m.device_type} {m.device!r} on the topic of "
                    f"{device.device_type} {device.device_name!r}"
                )
            self._not_future(m.timestamp)
            if isinstance(device, BatteryConfig) and m.state_of_charge_pct is None:
                raise _DropError("a battery reading without state_of_charge_pct")
        except _DropError as err:
            self._drop("measurement", topic, str(err))
            return
        if isinstance(device, P1Config):
            self.money.on_meter(m)
        elif isinstance(device, SocketConfig | BatteryConfig):
            if not self.restored.is_set():
                if len(self._held) < self.options.max_held_samples:
                    self._held.append(m)
                else:
                    self._counters.inc("samples_dropped_restoring")
                return
            self._apply_measurement(m)

    def _apply_measurement(self, m: DeviceMeasurement) -> None:
        device = self._by_name.get(m.device)
        if isinstance(device, SocketConfig):
            try:
                self.books = record_sample(
                    self.books,
                    device.device_name,
                    capacity_wh=device.energy_capacity,
                    max_power_w=device.max_power_usage,
                    sample_at=m.timestamp,
                    power_w=m.power_w,
                    power_on=bool(m.power_on),
                    day_start=day_start(m.timestamp, self.ctx.tz, self.ctx.boundary),
                )
            except (ValueError, ValidationError, OverflowError) as err:  # Overflow: year 1
                self._drop("measurement", self._topics.measurement(device.slug), str(err))
                return
            if m.power_on is not None:  # only for a sample taken: a drop changes nothing
                self.power_on[device.device_name] = m.power_on
            self._counters.inc("socket_samples")
        elif isinstance(device, BatteryConfig) and m.state_of_charge_pct is not None:
            old = self.batteries.get(device.device_name)
            if old is not None and old.measured_at is not None and m.timestamp <= old.measured_at:
                return
            self.batteries[device.device_name] = BatteryEnergy(
                energy_wh=battery_energy_wh(device.energy_capacity, m.state_of_charge_pct),
                state_of_charge_pct=m.state_of_charge_pct,
                measured_at=m.timestamp,
            )
            self._counters.inc("battery_samples")

    async def on_surplus(self, topic: str, payload: bytes) -> None:
        try:
            surplus = self._parse(HouseSurplus, payload)
            self._not_future(surplus.timestamp)
        except _DropError as err:
            self._drop("surplus", topic, str(err))
            return
        if self.surplus is not None and surplus.timestamp <= self.surplus.timestamp:
            self._counters.inc("surpluses_older_ignored")
            return
        self.surplus = surplus
        self._counters.inc("surpluses_received")
        self._update_baseline(surplus)
        self._wake.set()

    def _update_baseline(self, surplus: HouseSurplus) -> None:
        """Feed the fading shift's baseline (measured − forecast at the surplus's time) and the
        scaled shift's fit (the pair forecast, measured)."""
        at = surplus.timestamp
        if forecast_problem(self.forecast, at, self.ctx.forecast_max_age_s) is not None:
            return
        assert self.forecast is not None
        excluded = excluded_sockets(self.devices.sockets, self.overrides, at)
        measured = measured_available_w(surplus, excluded)
        pv = forecast_at(self.forecast, at)
        self.baseline = update_baseline(self.baseline, at, measured - pv, self.ctx.shift.baseline_s)
        self.fit = update_fit(self.fit, at, pv, measured, self.ctx.shift.fit_s)

    # --- running ------------------------------------------------------------------------

    async def run(self, wait_connected: Callable[[], Awaitable[None]] | None = None) -> None:
        """Restore the books, then plan on every new surplus and reset at each boundary."""
        if wait_connected is not None:
            await wait_connected()
        if not self.restored.is_set():
            waiter = asyncio.ensure_future(self.restored.wait())
            # the broker's retained books: work time (see sleep_for_work)
            timer = asyncio.ensure_future(sleep_for_work(self._clock, self.options.restore_wait_s))
            try:
                await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                timer.cancel()
            if not self.restored.is_set():
                self._counters.inc("books_not_restored_none")
                self._log.info("no retained books: starting the day's books empty")
                self._finish_restore(None)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._plan_loop(), name="scheduler-plan")
            group.create_task(self._boundary_loop(), name="scheduler-boundary")

    async def _plan_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._log.debug("plan loop woken")
            try:
                await self.plan_once()
            except Exception as err:  # a bug: counted and logged, the next surplus retries
                self._counters.inc("plan_errors")
                self._rate_limited.log("plan_error", logging.ERROR, "planning failed: %r", err)
                self._log.debug("planning failed", exc_info=err)

    async def _boundary_loop(self) -> None:
        while True:
            end = next_boundary(self._clock.now(), self.ctx.tz, self.ctx.boundary)
            await self._clock.sleep_until(end)
            self.new_day()

    def new_day(self) -> None:
        """The daily boundary: the stores reset (and manual flags end), a new day's plan."""
        today = self._today()
        if today <= self.books.day_start:
            return
        self.books = roll_books(self.books, today)
        self._counters.inc("boundary_resets")
        self._log.info("new day from %s: books reset", today.isoformat())
        self._publish_books()
        self._wake.set()

    async def plan_once(self) -> Prepared | None:
        """Plan on the latest surplus and publish plan, commands and books (None: not now)."""
        now = self._clock.now().replace(microsecond=0)  # payload times to the second
        surplus = self.surplus
        if surplus is None or not self.restored.is_set():
            return None
        age = (now - surplus.timestamp).total_seconds()
        allowed = self.options.surplus_max_age_intervals * self.poll_interval_s
        allowed += self._work_s(self.options.work_allowance_s)
        if age > allowed:
            self._counters.inc("surplus_stale")
            if isinstance(self._clock, ScaledClock) and self._clock.speed > 1:
                self._rate_limited.log(
                    "surplus_stale",
                    logging.WARNING,
                    "the latest surplus is %.0f simulated s old (%.1f real s at %gx): not "
                    "planning until a fresh one (is the poller running, or the machine too "
                    "busy for this speed?)",
                    age,
                    age / self._clock.speed,
                    self._clock.speed,
                )
            else:
                self._rate_limited.log(
                    "surplus_stale",
                    logging.WARNING,
                    "the latest surplus is %.0f s old: not planning (is the poller running?)",
                    age,
                )
            return None
        self.books = roll_books(self.books, self._today())
        prepared = prepare(
            now=now,
            ctx=self.ctx,
            devices=self.devices,
            books=self.books,
            batteries=self.batteries,
            overrides=self.overrides,
            power_on=self.power_on,
            surplus=surplus,
            forecast=self.forecast,
            baseline=self.baseline,
            last_switch_at=self.last_switch_at,
            fit=self.fit,
        )
        prepared = self.money.price(prepared, now)
        tier: Tier | None = None
        if prepared.fallback_reason is not None:
            boundary_at = next_boundary(now, self.ctx.tz, self.ctx.boundary)
            plan = fallback_plan(prepared.problem, boundary_at, self.ctx.fallback_margin_s)
            self._counters.inc("plans_fallback_rule")
            self.incumbent = None
        else:
            prepared = replace_problem(prepared, self._with_previous(prepared.problem))
            if self.incumbent is None:
                await self._await_first_full(prepared, now)
            plan, tier = self._solve(prepared, now)
            self.incumbent = Incumbent(
                start=prepared.problem.start,
                key=self._key(prepared),
                rows={k: list(v) for k, v in plan.sockets.items()},
                modes=list(plan.battery_mode) if plan.battery_mode is not None else None,
            )
        self._report_mode(prepared, plan, now)
        valid_s = self.options.command_valid_intervals * self.poll_interval_s
        valid_s += self._work_s(self.options.work_allowance_s)
        message = plan_message(prepared, plan, now)
        if tier is not None:
            message = message.model_copy(update={"tier": tier})
        message = self.money.publish(prepared, plan, message, now, valid_s)
        self._publisher.publish(self._topics.plan(), message)
        for slug, command in commands(prepared, plan, now, valid_s):
            self._publisher.publish(self._topics.socket_set(slug), command)
            self._counters.inc("commands_sent")
        self._counters.inc("plans_published")
        self._log.debug(
            "plan published: %s planner, tier %s, status %s", plan.planner, tier, plan.status
        )
        self._publish_books(now, prepared.excluded)
        self.last_plan = prepared
        return prepared

    def _key(self, prepared: Prepared) -> PlanKey:
        made_at = prepared.forecast.made_at if prepared.forecast is not None else None
        return PlanKey(prepared.problem.step_s, made_at, tuple(prepared.controlled))

    def _shift(self, start: datetime, step_s: int, problem: PlanningProblem) -> int | None:
        """Steps from a plan starting at `start` to `problem`'s start; None if they do not
        line up (another step, a later start) or the plan has ended."""
        if step_s != problem.step_s:
            return None
        offset = (problem.start - start).total_seconds()
        shift = round(offset / step_s)
        if shift < 0 or abs(offset - shift * step_s) > 1e-6:
            return None
        return shift

    def _with_previous(self, problem: PlanningProblem) -> PlanningProblem:
        """The problem with the incumbent moved onto its steps (`previous`, and
        `previous_battery_mode` where the incumbent had modes), if it still has steps left."""
        inc = self.incumbent
        if inc is None:
            return problem
        shift = self._shift(inc.start, inc.key.step_s, problem)
        length = max((len(r) for r in inc.rows.values()), default=0)
        if shift is None or shift >= length:
            return problem
        names = [s.name for s in problem.sockets]
        update: dict[str, object] = {
            "previous": moved_rows(inc.rows, shift, names, problem.n_steps)
        }
        if inc.modes is not None and problem.priced and problem.batteries:
            update["previous_battery_mode"] = moved_modes(inc.modes, shift, problem.n_steps)
        return problem.model_copy(update=update)

    def _solve(self, prepared: Prepared, now: datetime) -> tuple[Plan, Tier | None]:
        """The plan for `prepared` and the tier that made it (None: the reference planner)."""
        problem = prepared.problem
        if self._planner_name == "reference":
            return self._reference_planner(problem), None
        key = self._key(prepared)
        start: Mapping[str, Sequence[int]] | None = problem.previous or None
        tier: Tier = "quick"
        full = self._take_full(key, problem, now)
        full_status = None
        if full is not None:
            (start, full_status), tier = full, "full"
        try:
            plan = self._quick_planner(problem, start)
        except Exception as err:  # a bug in the planner: the reference plan, never nothing
            self._counters.inc("planner_errors")
            self._rate_limited.log(
                "planner_error",
                logging.ERROR,
                "the quick planner failed (%r): the reference plan is used",
                err,
            )
            return self._reference_planner(problem), "quick"
        if tier == "full" and plan.info.get("kept_previous") == 1:
            self._counters.inc("full_plans_held_back")
            self._log.info(
                "full plan: no better than the current plan by %g Wh: kept the current",
                problem.hold_gain_wh,
            )
            tier = "quick"
        elif tier == "full":
            self._log.info("full plan (%s) adopted", full_status)
        self._counters.inc("plans_full" if tier == "full" else "plans_quick")
        changed = (
            tier == "quick"
            and bool(problem.previous)
            and any(plan.sockets.get(name) != list(row) for name, row in problem.previous.items())
        )
        self._maybe_start_full(key, problem, now, changed=changed)
        return plan, tier

    async def _await_first_full(self, prepared: Prepared, now: datetime) -> None:
        """Start the full plan for the first plan on a forecast and wait for it: as long as
        it takes (up to its time-out), or `first_full_wait_s` real s (then the quick plan
        goes first, as on every re-plan)."""
        wait_s = self.options.first_full_wait_s
        if wait_s is None:
            wait_s = self._full_timeout_s(prepared.problem)
        if self._planner_name == "reference" or wait_s <= 0:
            return
        self._maybe_start_full(self._key(prepared), prepared.problem, now)
        job = self.full_job
        if job is None or job.task.done():
            return
        try:
            await with_timeout(self._clock, wait_s, asyncio.shield(job.task), work=True)
        except TimeoutError:
            self._counters.inc("first_full_waits_exceeded")
            self._log.info(
                "the first plan on this forecast: the full plan takes over %g s, the quick "
                "plan goes first",
                wait_s,
            )
        except Exception:  # logged and counted by _run_full
            return

    def _take_full(
        self, key: PlanKey, problem: PlanningProblem, now: datetime
    ) -> tuple[dict[str, list[int]], str] | None:
        """A finished full plan's rows moved onto `problem`'s steps and its status, if it is
        current."""
        job = self.full_job
        if job is None or not job.task.done():
            return None
        self.full_job = None
        if job.abandoned or job.task.cancelled():
            return None
        try:
            plan = job.task.result()
        except Exception:  # logged and counted by _run_full
            return None
        if plan is None:
            return None
        age = (now - job.start).total_seconds()
        allowed = self.options.full_plan_max_age_s + self._work_s(self.options.work_allowance_s)
        shift = self._shift(job.start, job.key.step_s, problem)
        why = None
        if job.key != key:
            why = "planned on another forecast or other sockets"
        elif shift is None or age > allowed:
            why = f"started {age:.0f} s ago"
        if why is not None:
            self._counters.inc("full_plans_discarded")
            self._log.info("full plan discarded: %s", why)
            return None
        names = [s.name for s in problem.sockets]
        return moved_rows(plan.sockets, shift or 0, names, problem.n_steps), plan.status

    def _maybe_start_full(
        self, key: PlanKey, problem: PlanningProblem, now: datetime, *, changed: bool = False
    ) -> None:
        """Start a full plan in the background when one is due and none runs (`changed`:
        the quick plan just made changed the incumbent's decisions)."""
        if self.full_job is not None or (self._solver is not None and not self._solver.done()):
            return
        last = self._full_started
        opts = self.options
        every = opts.full_plan_on_change_s if changed else opts.full_plan_every_s
        due = (
            last is None
            or last[0] != key
            or (now - last[1]).total_seconds()
            >= max(every, opts.full_plan_duty * self._full_took_s)
        )
        if not due:
            return
        self._full_started = (key, now)
        task = asyncio.ensure_future(self._run_full(problem))
        self.full_job = FullJob(key=key, start=problem.start, task=task)
        self._counters.inc("full_plans_started")

    async def _run_full(self, problem: PlanningProblem) -> Plan | None:
        """The full tier in a thread; the plan, or None (failed or abandoned: logged)."""
        began = self._clock.monotonic()
        solver = asyncio.ensure_future(asyncio.to_thread(self._full_planner, problem))
        solver.add_done_callback(_retrieve)
        self._solver = solver
        limit = self._full_timeout_s(problem)
        try:
            plan = await with_timeout(self._clock, limit, asyncio.shield(solver), work=True)
        except TimeoutError:
            self._counters.inc("planner_timeouts")
            self._rate_limited.log(
                "planner_timeout",
                logging.WARNING,
                "the full plan took over %g s: abandoned, the quick plans go on",
                limit,
            )
            return None
        except Exception as err:
            self._counters.inc("planner_errors")
            self._rate_limited.log(
                "planner_error",
                logging.ERROR,
                "the full planner failed (%r): the quick plans go on",
                err,
            )
            return None
        finally:
            self._full_took_s = self._clock.monotonic() - began
            self._wake.set()
        reason = plan.info.get("fallback_reason")
        if plan.status == "fallback" and isinstance(reason, str) and reason.startswith("worker"):
            self._counters.inc("full_plan_worker_failures")
            self._rate_limited.log(
                "worker_failed",
                logging.WARNING,
                "full plan: %s: the reference plan stands in",
                reason,
            )
        return plan

    def _report_mode(self, prepared: Prepared, plan: Plan, now: datetime) -> None:
        """Log a change between planning on a forecast and the fallback rule. Waiting for a
        forecast (at start-up, at the boundary) is expected: info, and a warning only when
        it outlasts the grace; any other reason (a stale forecast) is a warning at once."""
        reason = prepared.fallback_reason
        kind = "fallback" if reason else "forecast"
        if kind != self._mode:
            expected = reason is None or reason.startswith(EXPECTED_WAITS)
            level = logging.INFO if expected else logging.WARNING
            until = "" if reason is None else ": the fallback rule until a forecast comes"
            self._log.log(
                level, "planning: %s (%s planner)%s", reason or "forecast", plan.planner, until
            )
            self._mode, self._mode_since, self._mode_warned = kind, now, not expected
            return
        if kind == "forecast" or self._mode_warned or self._mode_since is None:
            return
        waited = (now - self._mode_since).total_seconds()
        grace = self.options.forecast_grace_s
        grace += self._work_s(self.options.forecast_work_allowance_s)
        if waited > grace:
            self._log.warning(
                "planning: still %s after %.0f min: the fallback rule plans (is the "
                "forecaster running? see its log)",
                reason,
                waited / 60,
            )
            self._mode_warned = True

    def _publish_books(
        self, now: datetime | None = None, excluded: list[str] | None = None
    ) -> None:
        now = now if now is not None else self._clock.now()
        if excluded is None:
            excluded = excluded_sockets(self.devices.sockets, self.overrides, now)
        message = books_message(
            self.books,
            self.batteries,
            now,
            manual=excluded,
            baseline=self.baseline,
            fit=self.fit,
        )
        self._publisher.publish(self._topics.books(), message)
        self._counters.inc("books_published")


def _maker(forecast: Forecast) -> tuple[str, str, str, str]:
    """What made a forecast: its source, weather model, PV model and whether a fallback."""
    kind = "fallback" if forecast.fallback else ""
    return forecast.source, forecast.model, forecast.pv_model, kind


def replace_problem(prepared: Prepared, problem: PlanningProblem) -> Prepared:
    """`prepared` with another problem."""
    return dataclasses.replace(prepared, problem=problem)


def _retrieve(future: asyncio.Future[Plan]) -> None:
    """Fetch a finished solve's outcome, so an abandoned one never logs 'never retrieved'."""
    if not future.cancelled():
        future.exception()


# --- the service ----------------------------------------------------------------------------


async def app(service: Service, devices: DevicesConfig) -> None:
    """The scheduler's work inside the service runtime."""
    scheduler = Scheduler(
        devices,
        service.settings,
        service,
        topics=service.topics,
        counters=service.counters,
        clock=service.clock,
        log=service.log,
    )
    scheduler.subscribe(service)
    service.log.info(
        "planning %d sockets in %d-s steps with the %s planner, forecast shift %s",
        len(devices.sockets),
        service.settings.planning_step_s,
        service.settings.planner,
        service.settings.forecast_shift,
    )
    await scheduler.run(service.wait_connected)


def main() -> int:
    """`python -m services.scheduler`: settings from config/settings.toml and HWSCHED_*."""
    return run_service(SERVICE_NAME, app)
