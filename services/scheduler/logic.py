"""The scheduler's pure logic: no I/O, no clock (every time is an argument).

* **Horizon**: from now to the next daily boundary in whole planning steps (`horizon`).
* **Forecast**: `resample` gives the mean forecast power over each planning step (overlap
  weighted; what the forecast does not cover counts 0 W); `forecast_at` the forecast power at
  an instant (linear between step middles); `forecast_problem` says why a forecast cannot be
  used (none, stale, not covering now).
* **Shift** (`shift_profile`): the forecast is PV only, so the planning surplus is
  `available(t) = forecast(t) + shift(t)` with `shift(0) = measured surplus now − forecast(now)`,
  which takes in the house's own consumption (as the original does). `constant` keeps that
  shift all day (the original: a passing cloud or a kettle now is spread over the whole day);
  `fading` lets the part of it that differs from the recent typical offset (`Baseline`, an
  exponentially weighted mean of the past offsets) fade with a half-life:
  `shift(t) = baseline + (shift(0) − baseline) · 2^(−t / half-life)`, per step its mean.
  `scaled` also corrects the forecast's scale: `ForecastFit` keeps exponentially weighted
  statistics of (forecast PV, measured surplus) pairs, `fit_line` fits
  `measured ≈ k · forecast + c` to them (k pulled towards 1, kept within 0.5–2), and the
  plan's surplus is `k · forecast(t) + c + (measured now − k · forecast(now) − c) ·
  2^(−t / half-life)`: the fading shift on the scaled forecast with `c` as its baseline
  (`fading` until the fit has enough measurements).
* **Problem** (`prepare`): sockets under an active override are left out (their measured draw
  is then house load: subtracted from the measured surplus); the others with their stored
  energy from the books (`socket_spec`: a needed store that read full today and lost some
  since has met its daily need: optional until the boundary, topped up on surplus only);
  the batteries with theirs; or, without a usable forecast, a one-step
  problem on the measured surplus for the original's fallback rule (`fallback_plan`).
  Steps lie on the day's grid (`grid_start`: from the daily boundary in whole steps; the
  first step is the one holding now), so planned times are step boundaries. The calm
  settings go into every problem (`PlanContext`: switch cost, minimum on / off times, the
  hysteresis threshold) with each socket's relay state and the time since its last switch;
  `moved_rows` / `moved_modes` carry a previous plan onto a new problem's steps.
* **Output**: `plan_message` (the retained plan, with the simulated energies) and `commands`
  (one `SocketCommand` per planned socket, for now).
* **Books**: `restore_books` reads the retained books back for today only; `books_message`
  publishes them with the batteries' energy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from shared.bookkeeping import Books, SocketBook, restore
from shared.config import DevicesConfig, SocketConfig
from shared.daytime import day_start, next_boundary
from shared.messages import (
    BatteryBook,
    EnergyBooks,
    Forecast,
    ForecastFitBook,
    HouseSurplus,
    OverrideState,
    PlanMessage,
    SocketCommand,
    SocketPlan,
)
from shared.planning.fallback import is_due
from shared.planning.problem import BatteryMode, Plan, PlanningProblem, SocketSpec
from shared.planning.reference import fallback_states
from shared.planning.simulate import simulate

__all__ = [
    "FALLBACK_PLANNER",
    "REASON_FALLBACK",
    "REASON_PLAN",
    "Baseline",
    "BatteryEnergy",
    "ForecastFit",
    "PlanContext",
    "Prepared",
    "Restored",
    "ShiftMode",
    "ShiftOptions",
    "books_message",
    "commands",
    "excluded_sockets",
    "fallback_plan",
    "fit_line",
    "forecast_at",
    "forecast_problem",
    "grid_start",
    "horizon",
    "measured_available_w",
    "moved_modes",
    "moved_rows",
    "override_active",
    "plan_message",
    "prepare",
    "resample",
    "restore_books",
    "shift_profile",
    "socket_spec",
    "stored_for_plan",
    "update_baseline",
    "update_fit",
]

ShiftMode = Literal["constant", "fading", "scaled"]
#: `SocketCommand.reason` of a command from a forecast plan / from the fallback rule.
REASON_PLAN = "plan"
REASON_FALLBACK = "fallback-rule"
#: `PlanMessage.planner` of a fallback-rule plan.
FALLBACK_PLANNER = "fallback-rule"
#: A store at its capacity that is not full (reheating) is planned as this share of one
#: step's energy below its capacity (more than the 10 % `FULL_MARGIN`: it gets a step).
REHEAT_STEP_SHARE = 0.5
_LN2 = math.log(2.0)


# --- horizon and forecast ----------------------------------------------------------------


def horizon(now: datetime, tz: ZoneInfo, boundary: time, step_s: int) -> int:
    """Whole planning steps from `now` to the next daily boundary (at least 1).

    The last part shorter than a step is left out, so needs are met before the boundary.
    """
    left_s = (next_boundary(now, tz, boundary) - now).total_seconds()
    return max(1, math.floor(left_s / step_s + 1e-9))


def grid_start(now: datetime, tz: ZoneInfo, boundary: time, step_s: int) -> datetime:
    """The start of the step holding `now` on the day's grid: the daily boundary plus whole
    steps (UTC, whole seconds)."""
    begin = day_start(now, tz, boundary).astimezone(UTC)
    k = math.floor((now - begin).total_seconds() / step_s + 1e-9)
    return begin + timedelta(seconds=k * step_s)


def moved_rows(
    rows: Mapping[str, Sequence[int]], shift: int, names: Sequence[str], n: int
) -> dict[str, list[int]]:
    """A plan's rows moved `shift` steps on (its step `shift` is step 0), for the sockets
    `names`, `n` steps long: a socket it has no row for, and steps past its end, are off."""
    out: dict[str, list[int]] = {}
    for name in names:
        row = [1 if v else 0 for v in list(rows.get(name, ()))[max(0, shift) :]]
        out[name] = (row + [0] * n)[:n]
    return out


def moved_modes(modes: Sequence[BatteryMode], shift: int, n: int) -> list[BatteryMode]:
    """A plan's battery modes moved `shift` steps on, `n` long (`zero` past their end)."""
    out: list[BatteryMode] = list(modes[max(0, shift) :])
    return (out + ["zero"] * n)[:n]


def resample(forecast: Forecast, start: datetime, step_s: int, n_steps: int) -> list[float]:
    """Mean forecast power over each step `[start + k·step_s, start + (k+1)·step_s)`, W.

    The forecast's own steps are mean powers (piecewise constant): each planning step gets the
    overlap-weighted mean; time the forecast does not cover counts 0 W.
    """
    fstep = float(forecast.step_s)
    values = forecast.power_w
    offset = (start - forecast.start).total_seconds()
    out: list[float] = []
    for k in range(n_steps):
        a = offset + k * step_s
        b = a + step_s
        total = 0.0
        for i in range(max(0, math.floor(a / fstep)), min(len(values), math.ceil(b / fstep))):
            overlap = min(b, (i + 1) * fstep) - max(a, i * fstep)
            if overlap > 0:
                total += values[i] * overlap
        out.append(total / step_s)
    return out


def forecast_at(forecast: Forecast, when: datetime) -> float:
    """Forecast power at an instant, W: linear between step middles, flat beyond the ends.

    Outside the forecast (before its start, at or after its end) it is 0 W.
    """
    values = forecast.power_w
    offset = (when - forecast.start).total_seconds()
    if offset < 0 or offset >= forecast.step_s * len(values):
        return 0.0
    x = offset / forecast.step_s - 0.5  # in steps, from the first step's middle
    if x <= 0:
        return values[0]
    if x >= len(values) - 1:
        return values[-1]
    i = math.floor(x)
    return values[i] + (values[i + 1] - values[i]) * (x - i)


def forecast_problem(forecast: Forecast | None, now: datetime, max_age_s: float) -> str | None:
    """Why `forecast` cannot be planned on at `now` (one short line), or None if it can."""
    if forecast is None:
        return "no forecast"
    age_s = (now - forecast.made_at).total_seconds()
    if age_s > max_age_s:
        return f"stale forecast (made {age_s / 3600:.1f} h ago)"
    if now < forecast.start:
        return "forecast starts later"
    if now >= forecast.end:  # daily, at the boundary: until the day's forecast is in
        return "forecast ended (the next one not in yet)"
    return None


# --- the shift -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShiftOptions:
    """How the measured-now correction carries over the day."""

    mode: ShiftMode = "scaled"
    #: Half-life of the fading part, s.
    half_life_s: float = 3600.0
    #: Time constant of the baseline (the mean offset the fading shift tends to), s.
    baseline_s: float = 43_200.0
    #: `scaled`: time constant of the fit of the measured surplus on the forecast, s.
    fit_s: float = 43_200.0


@dataclass(frozen=True, slots=True)
class Baseline:
    """Exponentially weighted mean of the offsets `measured − forecast`, W, as of `at`."""

    value_w: float
    at: datetime


def update_baseline(
    baseline: Baseline | None, at: datetime, offset_w: float, time_constant_s: float
) -> Baseline:
    """The baseline after one more offset (the first one starts it; an older one is ignored)."""
    if not math.isfinite(offset_w):
        return baseline if baseline is not None else Baseline(0.0, at)
    if baseline is None:
        return Baseline(offset_w, at)
    dt = (at - baseline.at).total_seconds()
    if dt <= 0:
        return baseline
    alpha = 1.0 - math.exp(-dt / time_constant_s)
    value = baseline.value_w + alpha * (offset_w - baseline.value_w)
    return Baseline(value, at) if math.isfinite(value) else baseline  # +-1e308 offsets


#: A measurement counts for the time since the previous one, at most this long, s (so a gap,
#: e.g. a restart, does not weigh more than a few polls).
FIT_SAMPLE_MAX_S = 300.0
#: The fit is used once it holds this much measuring time (weighted), s.
FIT_MIN_WEIGHT_S = 1_800.0
#: Ridge towards k = 1: as if the forecast had varied this much more, W, with the
#: measurements following it one to one (a forecast that barely varied, e.g. at night or on an
#: overcast morning, gives k near 1).
FIT_PRIOR_W = 200.0
#: The scale is kept within this range.
FIT_SCALE_MIN = 0.5
FIT_SCALE_MAX = 2.0


@dataclass(frozen=True, slots=True)
class ForecastFit:
    """Exponentially weighted statistics of (forecast PV, measured surplus) pairs, as of `at`.

    `weight_s`: the measuring time they hold (weighted, s); `forecast_w` / `measured_w`:
    their means, W; `var_w2`: the forecast's variance, `cov_w2`: the covariance, W².
    """

    weight_s: float
    forecast_w: float
    measured_w: float
    var_w2: float
    cov_w2: float
    at: datetime


def update_fit(
    fit: ForecastFit | None,
    at: datetime,
    forecast_w: float,
    measured_w: float,
    time_constant_s: float,
) -> ForecastFit | None:
    """The fit's statistics after one more pair (the first one starts them; an older pair or a
    non-finite one is ignored). West's weighted update, the old weight decayed by
    `exp(−dt / time_constant)`, the new pair weighted by `dt` (at most `FIT_SAMPLE_MAX_S`)."""
    if not (math.isfinite(forecast_w) and math.isfinite(measured_w)):
        return fit
    if fit is None:
        return ForecastFit(1.0, forecast_w, measured_w, 0.0, 0.0, at)
    dt = (at - fit.at).total_seconds()
    if dt <= 0:
        return fit
    old = fit.weight_s * math.exp(-dt / time_constant_s)
    w = min(dt, FIT_SAMPLE_MAX_S)
    total = old + w
    dx = forecast_w - fit.forecast_w
    dy = measured_w - fit.measured_w
    mx = fit.forecast_w + w / total * dx
    my = fit.measured_w + w / total * dy
    var = (old * fit.var_w2 + w * dx * (forecast_w - mx)) / total
    cov = (old * fit.cov_w2 + w * dx * (measured_w - my)) / total
    new = ForecastFit(total, mx, my, max(0.0, var), cov, at)
    finite = all(math.isfinite(v) for v in (total, mx, my, var, cov))
    return new if finite else fit  # +-1e308 pairs


def fit_line(fit: ForecastFit | None) -> tuple[float, float] | None:
    """`(k, c)` of `measured ≈ k · forecast + c` (W), or None before `FIT_MIN_WEIGHT_S`.

    Weighted least squares with a ridge towards k = 1 (`FIT_PRIOR_W`); k is kept within
    `FIT_SCALE_MIN`–`FIT_SCALE_MAX` and `c` is the best offset for that k.
    """
    if fit is None or fit.weight_s < FIT_MIN_WEIGHT_S:
        return None
    prior = FIT_PRIOR_W**2
    k = (fit.cov_w2 + prior) / (fit.var_w2 + prior)
    k = min(FIT_SCALE_MAX, max(FIT_SCALE_MIN, k))
    return k, fit.measured_w - k * fit.forecast_w


def shift_profile(
    shift0_w: float,
    n_steps: int,
    step_s: int,
    options: ShiftOptions,
    baseline_w: float | None = None,
) -> list[float]:
    """The shift per planning step, W (step k covers `[k·step_s, (k+1)·step_s)` from now).

    `constant`: `shift0_w` everywhere (the original). `fading`: the step mean of
    `baseline + (shift0 − baseline) · 2^(−t / half-life)`; without a baseline yet the shift
    is constant.
    """
    if options.mode == "constant" or baseline_w is None:
        return [shift0_w] * n_steps  # `scaled` is `fading` here (see `prepare`)
    h = options.half_life_s
    delta = shift0_w - baseline_w
    scale = h / (step_s * _LN2)
    out = []
    for k in range(n_steps):
        mean = scale * (2.0 ** (-k * step_s / h) - 2.0 ** (-(k + 1) * step_s / h))
        out.append(baseline_w + delta * mean)
    return out


# --- the planning problem ------------------------------------------------------------------


def override_active(state: OverrideState | None, now: datetime) -> bool:
    """The socket is under an override (on or off) whose lease has not ended."""
    return (
        state is not None
        and state.state != "auto"
        and state.until is not None
        and state.until > now
    )


def excluded_sockets(
    sockets: Sequence[SocketConfig], overrides: Mapping[str, OverrideState], now: datetime
) -> list[str]:
    """Names of the sockets under an active override (keyed by device name), config order."""
    return [s.device_name for s in sockets if override_active(overrides.get(s.device_name), now)]


def measured_available_w(surplus: HouseSurplus, excluded: Sequence[str]) -> float:
    """The surplus the plan can use: measured, minus what the excluded sockets draw."""
    return surplus.surplus_w - sum(surplus.sockets_w.get(name, 0.0) for name in excluded)


def stored_for_plan(book: SocketBook, socket: SocketConfig, step_s: int) -> float:
    """Energy the planner takes as stored in the socket's store, Wh.

    Full: the capacity. At the capacity but not full (a thermostat reheats: it lost an unknown
    amount): half a step's energy below it, so the planner gives it a step.
    """
    capacity = socket.energy_capacity
    if book.full:
        return capacity
    if book.energy_wh < capacity - 1e-9:
        return max(0.0, book.energy_wh)
    step_wh = socket.max_power_usage * step_s / 3600.0
    return max(0.0, capacity - REHEAT_STEP_SHARE * step_wh)


def socket_spec(socket: SocketConfig, book: SocketBook, step_s: int) -> SocketSpec:
    """The planner's view of a socket with its book. A needed store that was full once
    today and then lost some (a draw; the thermostat re-heats) has met its daily need: it
    is planned as an optional store until the boundary (topped up on surplus only, never
    from the grid for a need that was met — a needed store is filled once a day)."""
    spec = socket.spec(stored_for_plan(book, socket, step_s))
    if socket.daily_need and book.filled and not book.full:
        spec = spec.model_copy(update={"daily_need": False})
    return spec


@dataclass(frozen=True, slots=True)
class BatteryEnergy:
    """What the scheduler knows of one battery: energy (Wh) and its reading."""

    energy_wh: float
    state_of_charge_pct: float | None = None
    measured_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PlanContext:
    """The settings the planning problem is built with."""

    tz: ZoneInfo
    boundary: time
    step_s: int = 900
    switch_interval_s: int = 300
    forecast_max_age_s: float = 26 * 3600.0
    shift: ShiftOptions = ShiftOptions()
    #: Without a forecast, a needed socket is on from this long before the time it takes to
    #: fill (before the boundary), as the actuator's own fallback does, s.
    fallback_margin_s: float = 1800.0
    #: Calm plans (the settings of the same names; see `PlanningProblem`).
    switch_cost_wh: float = 0.0
    min_on_s: int = 0
    min_off_s: int = 0
    hold_gain_wh: float = 0.0
    #: Forecast risk per hour ahead (the setting; see `PlanningProblem`).
    forecast_risk_per_h: float = 0.0


@dataclass(frozen=True)
class Prepared:
    """A planning problem and how it was made."""

    problem: PlanningProblem
    #: Sockets in the plan (device names, config order) and those left out.
    controlled: list[str]
    excluded: list[str]
    #: The surplus measured now minus the excluded sockets' draw, W.
    measured_w: float
    #: Why the fallback rule applies (no usable forecast); None: plan on the forecast.
    fallback_reason: str | None = None
    #: The resampled forecast (before the shift) and the shift at now.
    forecast_power_w: list[float] | None = None
    shift0_w: float | None = None
    #: `scaled`: the scale `k` the forecast was planned with (None: not scaled).
    forecast_scale: float | None = None
    forecast: Forecast | None = None
    slugs: dict[str, str] = field(default_factory=dict)


def prepare(
    *,
    now: datetime,
    ctx: PlanContext,
    devices: DevicesConfig,
    books: Books,
    batteries: Mapping[str, BatteryEnergy],
    overrides: Mapping[str, OverrideState],
    power_on: Mapping[str, bool],
    surplus: HouseSurplus,
    forecast: Forecast | None,
    baseline: Baseline | None = None,
    last_switch_at: Mapping[str, datetime] | None = None,
    fit: ForecastFit | None = None,
) -> Prepared:
    """The planning problem from the step holding now to the next boundary (or one step for
    the fallback rule).

    `overrides`, `power_on`, `batteries` and `last_switch_at` (the actuator's last switch of
    each socket) are keyed by device name.
    """
    excluded = excluded_sockets(devices.sockets, overrides, now)
    controlled = [s for s in devices.sockets if s.device_name not in excluded]
    measured = measured_available_w(surplus, excluded)
    sockets = [socket_spec(s, books.book(s.device_name), ctx.step_s) for s in controlled]
    battery_specs = [
        b.spec(batteries[b.device_name].energy_wh if b.device_name in batteries else 0.0)
        for b in devices.batteries
    ]
    initial_on = {
        s.device_name: power_on[s.device_name] for s in controlled if s.device_name in power_on
    }
    switched = last_switch_at or {}
    since = {
        name: max(0.0, (now - switched[name]).total_seconds())
        for name in initial_on
        if name in switched
    }
    start = grid_start(now, ctx.tz, ctx.boundary, ctx.step_s)
    reason = forecast_problem(forecast, now, ctx.forecast_max_age_s)
    forecast_w: list[float] | None = None
    shift0: float | None = None
    scale: float | None = None
    if reason is None and forecast is not None:
        n = horizon(start, ctx.tz, ctx.boundary, ctx.step_s)
        forecast_w = resample(forecast, start, ctx.step_s, n)
        base = baseline.value_w if baseline is not None else None
        line = fit_line(fit) if ctx.shift.mode == "scaled" else None
        if line is not None:
            scale, base = line
        k = 1.0 if scale is None else scale
        shift0 = measured - k * forecast_at(forecast, now)
        shift = shift_profile(shift0, n, ctx.step_s, ctx.shift, base)
        available = [k * f + s for f, s in zip(forecast_w, shift, strict=True)]
        if not all(math.isfinite(v) for v in (shift0, *forecast_w, *available)):
            # e.g. 1e307 W per step: the resampling or the shift overflows
            reason, forecast_w, shift0, scale = "forecast out of range", None, None, None
            available = [measured]
    else:
        available = [measured]
    problem = PlanningProblem(
        start=start,
        step_s=ctx.step_s,
        available_power_w=available,
        sockets=sockets,
        batteries=battery_specs,
        switch_interval_s=ctx.switch_interval_s,
        initial_on=initial_on,
        initial_since_s=since,
        switch_cost_wh=ctx.switch_cost_wh,
        min_on_s=ctx.min_on_s,
        min_off_s=ctx.min_off_s,
        hold_gain_wh=ctx.hold_gain_wh,
        forecast_risk_per_h=ctx.forecast_risk_per_h,
    )
    return Prepared(
        problem=problem,
        controlled=[s.device_name for s in controlled],
        excluded=excluded,
        measured_w=measured,
        fallback_reason=reason,
        forecast_power_w=forecast_w,
        shift0_w=shift0,
        forecast_scale=scale,
        forecast=forecast if reason is None else None,
        slugs={s.device_name: s.slug for s in devices.sockets},
    )


def fallback_plan(
    problem: PlanningProblem, boundary_at: datetime | None = None, margin_s: float = 0.0
) -> Plan:
    """The original's no-forecast rule on the measured surplus (step 0), as a one-step plan,
    with the deadline of the needed sockets.

    A needed socket is on from its latest start (`shared.planning.fallback.latest_start`:
    the time it takes to fill plus `margin_s` before `boundary_at`; one on already from
    `HOLD_S` before it: `is_due`), surplus or not; its
    power comes first out of the surplus. Then, in planning order, a socket is on when the
    surplus still left covers its power (the original's rule; without `boundary_at`, only
    that). Sockets whose store is already full stay off and take nothing from the surplus.
    """
    open_ = [s for s in problem.sockets if s.room_wh() > 0 and problem.steps_needed(s) > 0]
    due: set[str] = set()
    if boundary_at is not None:
        # Once due, on until the store reads full (room 0: the books' thermostat rule), not
        # until the books' count nears the capacity: they do not count the store's losses;
        # one on already stays due a while before its latest start (`is_due`).
        for s in problem.sockets:
            on = problem.initial_on.get(s.name, False)
            room, power = s.room_wh(), s.max_power_usage
            if s.daily_need and is_due(room, power, boundary_at, margin_s, problem.start, on=on)[0]:
                due.add(s.name)
    left = problem.available_power_w[0] - sum(
        s.max_power_usage for s in problem.sockets if s.name in due
    )
    states = fallback_states([s for s in open_ if s.name not in due], left)
    states |= dict.fromkeys(due, True)
    rows = {s.name: [int(states.get(s.name, False))] * problem.n_steps for s in problem.sockets}
    return Plan(
        sockets=rows,
        battery_power_w=[0.0] * problem.n_steps,
        planner=FALLBACK_PLANNER,
        solve_s=0.0,
        status="fallback",
    )


# --- output ----------------------------------------------------------------------------------


def _clean(values: Sequence[float], *, floor: float | None = None) -> list[float]:
    out = [round(v, 3) for v in values]
    return [max(floor, v) for v in out] if floor is not None else out


def plan_message(
    prepared: Prepared, plan: Plan, made_at: datetime, note: str | None = None
) -> PlanMessage:
    """The retained plan: states and expected energies per socket, the batteries, the inputs.

    Energies and the battery trajectory come from the day simulator (what the plan does);
    `note` (e.g. "optimal planner timed out") joins the fallback reason.
    """
    problem = prepared.problem
    outcome = simulate(problem, plan.sockets)
    dt_h = problem.dt_h
    sockets = {
        s.name: SocketPlan(
            states=[1 if v else 0 for v in plan.sockets.get(s.name, [0] * problem.n_steps)],
            energy_wh=_clean([p * dt_h for p in outcome.socket_power_w[s.name]], floor=0.0),
        )
        for s in problem.sockets
    }
    reasons = [r for r in (prepared.fallback_reason, note) if r]
    return PlanMessage(
        timestamp=made_at,
        made_at=made_at,
        start=problem.start,
        step_s=problem.step_s,
        sockets=sockets,
        battery_power_w=_clean(outcome.battery_power_w),
        battery_energy_wh=_clean(outcome.battery_energy_wh, floor=0.0),
        planner=plan.planner,
        status=plan.status,
        solve_s=max(0.0, round(plan.solve_s, 4)),
        forecast_made_at=prepared.forecast.made_at if prepared.forecast is not None else None,
        available_power_w=_clean(problem.available_power_w),
        forecast_power_w=_clean(prepared.forecast_power_w, floor=0.0)
        if prepared.forecast_power_w is not None
        else None,
        measured_surplus_w=round(prepared.measured_w, 3),
        forecast_scale=round(prepared.forecast_scale, 4)
        if prepared.forecast_scale is not None
        else None,
        excluded=list(prepared.excluded),
        fallback_reason="; ".join(reasons) if reasons else None,
    )


def commands(
    prepared: Prepared, plan: Plan, made_at: datetime, valid_s: float
) -> list[tuple[str, SocketCommand]]:
    """(socket slug, command) for every planned socket: its state in step 0, valid
    `valid_s` from `made_at` (the plan's). Sockets under an override get none."""
    reason = REASON_FALLBACK if plan.planner == FALLBACK_PLANNER else REASON_PLAN
    until = made_at + timedelta(seconds=valid_s)
    out = []
    for name in prepared.controlled:
        row = plan.sockets.get(name) or [0]
        out.append(
            (
                prepared.slugs[name],
                SocketCommand(
                    timestamp=made_at,
                    socket=name,
                    state="on" if row[0] else "off",
                    reason=reason,
                    plan_made_at=made_at,
                    valid_until=until,
                ),
            )
        )
    return out


# --- books -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Restored:
    """Books read back from the retained message."""

    books: Books
    batteries: dict[str, BatteryEnergy]
    baseline: Baseline | None
    fit: ForecastFit | None = None


def books_message(
    books: Books,
    batteries: Mapping[str, BatteryEnergy],
    now: datetime,
    *,
    manual: Sequence[str] = (),
    baseline: Baseline | None = None,
    fit: ForecastFit | None = None,
) -> EnergyBooks:
    """The retained books: the sockets' (`manual` = under an override now), the batteries',
    the shift's baseline and its fit."""
    sockets = {
        name: book.model_dump(mode="json") | {"manual": name in manual}
        for name, book in books.sockets.items()
    }
    return EnergyBooks.model_validate(
        {
            "timestamp": now,
            "day_start": books.day_start,
            "sockets": sockets,
            "batteries": {
                name: BatteryBook(
                    name=name,
                    energy_wh=max(0.0, b.energy_wh),
                    state_of_charge_pct=b.state_of_charge_pct,
                    measured_at=b.measured_at,
                )
                for name, b in batteries.items()
            },
            "shift_baseline_w": round(baseline.value_w, 3) if baseline is not None else None,
            "shift_baseline_at": baseline.at if baseline is not None else None,
            "shift_fit": ForecastFitBook(
                weight_s=fit.weight_s,
                forecast_w=fit.forecast_w,
                measured_w=fit.measured_w,
                forecast_var=fit.var_w2,
                covariance=fit.cov_w2,
                at=fit.at,
            )
            if fit is not None
            else None,
        }
    )


def restore_books(
    message: EnergyBooks, now: datetime, tz: ZoneInfo, boundary: time, devices: DevicesConfig
) -> Restored | None:
    """Today's books, battery energies and baseline read back; None if for another day.

    Never across the boundary: books whose `day_start` is not today's give None. Books of
    sockets or batteries no longer configured are left out.
    """
    today = day_start(now, tz, boundary)
    if message.day_start != today:
        return None
    books = restore(message.model_dump(mode="json"), now, tz, boundary)
    names = {s.device_name for s in devices.sockets}
    books = books.model_copy(
        update={"sockets": {k: v for k, v in books.sockets.items() if k in names}}
    )
    capacities = {b.device_name: b.energy_capacity for b in devices.batteries}
    batteries = {
        name: BatteryEnergy(
            energy_wh=min(b.energy_wh, capacities[name]),
            state_of_charge_pct=b.state_of_charge_pct,
            measured_at=b.measured_at,
        )
        for name, b in message.batteries.items()
        if name in capacities
    }
    baseline = None
    if message.shift_baseline_w is not None and message.shift_baseline_at is not None:
        baseline = Baseline(message.shift_baseline_w, message.shift_baseline_at)
    got = message.shift_fit
    fit = None
    if got is not None:
        fit = ForecastFit(
            got.weight_s, got.forecast_w, got.measured_w, got.forecast_var, got.covariance, got.at
        )
    return Restored(books=books, batteries=batteries, baseline=baseline, fit=fit)
