"""The scheduler's money, pure: no I/O, no clock (every time is an argument).

* **Priced problem** (`priced_problem`): the published prices resampled onto the plan's steps
  (`shared.prices.price_steps`: a step the prices do not reach takes the price a day earlier)
  fill `import_price` / `export_price`, with `optional_grid_price_max`; `battery_modes` says
  whether the batteries can take the plan's modes (the P1 meter's token), and
  `initial_battery_mode` what they are in now.
* **What a plan does** (`evaluate`): the day simulated under the plan's socket rows *and* its
  battery modes (`zero` where it has none), with its grid import, export, cost and the value
  of the energy put into optional stores (a socket's `value_eur_kwh`, else the horizon's
  mean import price), as the planning README counts them.
* **The meter** (`Meter`, `meter_sample`): today's import and export from the P1 meter's
  counters, sample by sample, and their cost at the price in force over each stretch
  (a stretch across price steps is split in time; one no known price covers waits per
  quarter-hour and is priced once prices covering it come, e.g. when the prices service
  starts after the scheduler); the daily boundary starts a new day (a stretch across it is
  split too); a counter that goes back or jumps implausibly starts over from the new reading
  (counted by the caller through `MeterResult.reset`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

from shared.messages import Prices
from shared.planning.problem import BatteryMode, Plan, PlanningProblem
from shared.planning.simulate import UNMET_TOLERANCE_WH, count_switches, zero_mode_step
from shared.prices import StepPrices, price_steps

__all__ = [
    "MAX_METER_POWER_W",
    "Evaluation",
    "Meter",
    "MeterResult",
    "evaluate",
    "meter_sample",
    "priced_problem",
    "prices_usable",
]

#: A meter reading implying more than this mean power is a jump, not energy, W.
MAX_METER_POWER_W = 100_000.0


def prices_usable(prices: Prices | None, now: datetime) -> str | None:
    """Why `prices` cannot be planned on at `now` (one short line), or None if they can."""
    if prices is None:
        return "no prices"
    if prices.end <= now:
        return f"prices ended at {prices.end.isoformat()}"
    if prices.start > now + timedelta(hours=1):
        return "prices start later"
    return None


def priced_problem(
    problem: PlanningProblem,
    prices: Prices | None,
    *,
    optional_grid_price_max: float | None,
    battery_modes: bool,
    initial_battery_mode: BatteryMode | None,
) -> tuple[PlanningProblem, StepPrices | None]:
    """The problem with prices per step (when `prices` are given) and the battery inputs."""
    data = problem.model_dump()
    data["battery_modes"] = battery_modes and bool(problem.batteries)
    data["initial_battery_mode"] = initial_battery_mode if data["battery_modes"] else None
    steps = None
    if prices is not None:
        steps = price_steps(prices, problem.start, problem.step_s, problem.n_steps)
        data["import_price"] = steps.import_eur_kwh
        data["export_price"] = steps.export_eur_kwh
        data["optional_grid_price_max"] = optional_grid_price_max
    return PlanningProblem.model_validate(data), steps


# --- what a plan does --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A plan's day: energies, money, and the trajectories a plan message shows."""

    import_wh: float
    export_wh: float
    unmet_need_wh: float
    switches: int
    #: With prices: import cost − export earnings, and the value of the optional stores' energy.
    cost_eur: float | None = None
    optional_value_eur: float | None = None
    socket_power_w: dict[str, list[float]] = field(default_factory=dict)
    battery_power_w: list[float] = field(default_factory=list)
    battery_energy_wh: list[float] = field(default_factory=list)
    modes: list[BatteryMode] = field(default_factory=list)

    @property
    def net_cost_eur(self) -> float | None:
        if self.cost_eur is None or self.optional_value_eur is None:
            return None
        return self.cost_eur - self.optional_value_eur


def _battery_step(
    net_w: float, mode: BatteryMode, soc: float, cap: float, pmax: float, dt_h: float
) -> float:
    """The batteries' power in one step under `mode` (W, + charging)."""
    if cap <= 0 or pmax <= 0:
        return 0.0
    if mode == "to_full":
        return min(pmax, max(0.0, (cap - soc) / dt_h))
    power = zero_mode_step(net_w, soc, cap, pmax, dt_h)
    if mode == "standby" or (mode == "charge_only" and power < 0):
        return 0.0
    if mode == "discharge_only" and power > 0:
        return 0.0
    return power


def modes_of(plan: Plan, n_steps: int, allowed: bool = True) -> list[BatteryMode]:
    """The plan's battery mode per step (`zero` where it gives none, or where not `allowed`)."""
    modes: list[BatteryMode] = list(plan.battery_mode or []) if allowed else []
    modes = modes[:n_steps]
    return modes + ["zero"] * (n_steps - len(modes))


def evaluate(
    problem: PlanningProblem, states: Mapping[str, Sequence[int]], modes: Sequence[BatteryMode]
) -> Evaluation:
    """Simulate the horizon under socket `states` and battery `modes` (the planning README's
    physics: an 'on' socket draws its power until its store is full; the batteries, together,
    follow the mode; the rest is grid)."""
    n = problem.n_steps
    dt = problem.dt_h
    cap, pmax, soc = problem.battery_capacity_wh, problem.battery_power_w, problem.battery_stored_wh
    energy = {s.name: s.energy_stored for s in problem.sockets}
    rows = {
        s.name: ([int(bool(v)) for v in list(states.get(s.name, []))[:n]] + [0] * n)[:n]
        for s in problem.sockets
    }
    imports = problem.import_prices()
    exports = problem.export_prices()
    socket_power: dict[str, list[float]] = {s.name: [] for s in problem.sockets}
    optional_wh: dict[str, float] = {s.name: 0.0 for s in problem.sockets if not s.daily_need}
    batt_p: list[float] = []
    batt_e: list[float] = []
    imp = exp = cost = 0.0
    for t in range(n):
        load = 0.0
        for s in problem.sockets:
            draw = 0.0
            if rows[s.name][t]:
                draw = min(s.max_power_usage, max(0.0, s.energy_capacity - energy[s.name]) / dt)
                energy[s.name] += draw * dt
                if not s.daily_need:
                    optional_wh[s.name] += draw * dt
            load += draw
            socket_power[s.name].append(draw)
        net = problem.available_power_w[t] - load
        b = _battery_step(net, modes[t], soc, cap, pmax, dt)
        soc = min(cap, max(0.0, soc + b * dt))
        grid = b - net  # + import
        step_imp, step_exp = max(0.0, grid) * dt, max(0.0, -grid) * dt
        imp += step_imp
        exp += step_exp
        if imports is not None and exports is not None:
            cost += (step_imp * imports[t] - step_exp * exports[t]) / 1000.0
        batt_p.append(b)
        batt_e.append(soc)
    unmet = sum(
        max(0.0, s.energy_capacity - energy[s.name] - UNMET_TOLERANCE_WH)
        for s in problem.sockets
        if s.daily_need
    )
    switches = sum(
        count_switches(rows[s.name], problem.initial_on.get(s.name)) for s in problem.sockets
    )
    switches += sum(1 for a, b in itertools.pairwise(modes) if a != b)
    cost_eur = value = None
    if imports is not None:
        mean = sum(imports) / len(imports)
        value = sum(
            optional_wh[s.name]
            / 1000.0
            * (s.value_eur_kwh if s.value_eur_kwh is not None else mean)
            for s in problem.sockets
            if not s.daily_need
        )
        cost_eur = cost
    return Evaluation(
        import_wh=imp,
        export_wh=exp,
        unmet_need_wh=unmet,
        switches=switches,
        cost_eur=cost_eur,
        optional_value_eur=value,
        socket_power_w=socket_power,
        battery_power_w=batt_p,
        battery_energy_wh=batt_e,
        modes=list(modes),
    )


# --- the meter ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Meter:
    """Today's grid energy and its cost, from the P1 meter's counters."""

    day_start: datetime
    import_kwh: float = 0.0
    export_kwh: float = 0.0
    #: Import cost − export earnings of the energy counted while prices were known, EUR
    #: (None: no stretch of today had prices yet).
    cost_eur: float | None = None
    #: Energy counted while no prices covered it, per quarter-hour (its start, import kWh,
    #: export kWh): priced as soon as prices that cover it are known.
    pending: tuple[tuple[datetime, float, float], ...] = ()
    #: The last reading: its time and the counters (kWh).
    read_at: datetime | None = None
    meter_import_kwh: float | None = None
    meter_export_kwh: float | None = None

    @property
    def unpriced_kwh(self) -> float:
        """Energy counted today that no known price covers yet, kWh."""
        return sum(i + e for _, i, e in self.pending)


#: The slots energy waiting for a price is kept in, s (prices come per 15 min or hour).
PENDING_SLOT_S = 900
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _slot(when: datetime) -> datetime:
    seconds = (when - _EPOCH).total_seconds()
    return _EPOCH + timedelta(seconds=math.floor(seconds / PENDING_SLOT_S) * PENDING_SLOT_S)


def _spread(
    pending: tuple[tuple[datetime, float, float], ...],
    a: datetime,
    b: datetime,
    imp: float,
    exp: float,
) -> tuple[tuple[datetime, float, float], ...]:
    """`pending` with `imp`/`exp` spread evenly over `[a, b]` into quarter-hour slots."""
    slots = {start: (i, e) for start, i, e in pending}
    span = (b - a).total_seconds()
    t = a
    while True:
        start = _slot(t)
        end = min(b, start + timedelta(seconds=PENDING_SLOT_S))
        share = (end - t).total_seconds() / span if span > 0 else 1.0
        i, e = slots.get(start, (0.0, 0.0))
        slots[start] = (i + share * imp, e + share * exp)
        if end >= b:
            break
        t = end
    return tuple((start, i, e) for start, (i, e) in sorted(slots.items()))


def _price_pending(meter: Meter, prices: Prices | None) -> Meter:
    """`meter` with the waiting slots that `prices` cover priced (the price at the slot's
    middle)."""
    if prices is None or not meter.pending:
        return meter
    left: list[tuple[datetime, float, float]] = []
    cost = meter.cost_eur
    for start, imp, exp in meter.pending:
        mid = start + timedelta(seconds=PENDING_SLOT_S / 2)
        got = _cost(prices, mid, mid, imp, exp)
        if got is None:
            left.append((start, imp, exp))
        else:
            cost = (cost or 0.0) + got
    return replace(meter, cost_eur=cost, pending=tuple(left))


@dataclass(frozen=True, slots=True)
class MeterResult:
    meter: Meter
    #: Why the counting started over from this reading, if it did.
    reset: Literal["counter went back", "implausible jump"] | None = None


def _cost(prices: Prices | None, a: datetime, b: datetime, imp: float, exp: float) -> float | None:
    """Cost of `imp`/`exp` kWh spread evenly over `[a, b]` at the prices in force (None when
    the prices do not cover the whole stretch)."""
    if prices is None or a < prices.start or b > prices.end:
        return None
    span = (b - a).total_seconds()
    if span <= 0:
        k = math.floor((a - prices.start).total_seconds() / prices.step_s)
        k = min(k, len(prices.import_eur_kwh) - 1)
        return imp * prices.import_eur_kwh[k] - exp * prices.export_eur_kwh[k]
    total = 0.0
    t = a
    while t < b:
        k = math.floor((t - prices.start).total_seconds() / prices.step_s)
        k = min(k, len(prices.import_eur_kwh) - 1)
        step_end = prices.start + timedelta(seconds=(k + 1) * prices.step_s)
        piece_end = min(b, step_end) if step_end > t else b
        share = (piece_end - t).total_seconds() / span
        total += share * (imp * prices.import_eur_kwh[k] - exp * prices.export_eur_kwh[k])
        t = piece_end
    return total


def meter_sample(
    meter: Meter,
    at: datetime,
    import_total_kwh: float,
    export_total_kwh: float,
    prices: Prices | None,
    day_start: datetime,
) -> MeterResult:
    """`meter` after one more P1 reading at `at` (its counters), today starting at `day_start`.

    A reading not after the last one, or of an earlier day, changes nothing.
    """
    if (meter.read_at is not None and at <= meter.read_at) or day_start < meter.day_start:
        return MeterResult(meter)  # older than what is counted, or of a day gone
    if day_start > meter.day_start:
        fresh = Meter(day_start=day_start)
        if meter.read_at is None or meter.meter_import_kwh is None:
            return MeterResult(
                replace(
                    fresh,
                    read_at=at,
                    meter_import_kwh=import_total_kwh,
                    meter_export_kwh=export_total_kwh,
                )
            )
        # the stretch across the boundary: only its part after the boundary is today's
        span = (at - meter.read_at).total_seconds()
        share = (at - day_start).total_seconds() / span if span > 0 else 1.0
        base_imp = import_total_kwh - share * (import_total_kwh - meter.meter_import_kwh)
        base_exp = export_total_kwh - share * (export_total_kwh - (meter.meter_export_kwh or 0))
        meter = replace(
            fresh, read_at=day_start, meter_import_kwh=base_imp, meter_export_kwh=base_exp
        )
    if meter.read_at is None or meter.meter_import_kwh is None or meter.meter_export_kwh is None:
        return MeterResult(
            replace(
                meter,
                read_at=at,
                meter_import_kwh=import_total_kwh,
                meter_export_kwh=export_total_kwh,
            )
        )
    d_imp = import_total_kwh - meter.meter_import_kwh
    d_exp = export_total_kwh - meter.meter_export_kwh
    hours = (at - meter.read_at).total_seconds() / 3600
    restarted = replace(
        meter, read_at=at, meter_import_kwh=import_total_kwh, meter_export_kwh=export_total_kwh
    )
    if d_imp < -1e-9 or d_exp < -1e-9:
        return MeterResult(restarted, "counter went back")
    if hours > 0 and (d_imp + d_exp) * 1000 / hours > MAX_METER_POWER_W:
        return MeterResult(restarted, "implausible jump")
    d_imp, d_exp = max(0.0, d_imp), max(0.0, d_exp)
    cost = _cost(prices, meter.read_at, at, d_imp, d_exp)
    pending = meter.pending
    if cost is None:  # no price known for it yet: kept per quarter-hour until there is
        total = meter.cost_eur
        pending = _spread(pending, meter.read_at, at, d_imp, d_exp)
    else:
        total = (meter.cost_eur or 0.0) + cost
    counted = replace(
        restarted,
        import_kwh=meter.import_kwh + d_imp,
        export_kwh=meter.export_kwh + d_exp,
        cost_eur=total,
        pending=pending,
    )
    return MeterResult(_price_pending(counted, prices))
