"""The day simulator: what a plan really does to the house (pure, no I/O).

Physics, step by step (the same as the shared yardstick, `../shared/planning/evaluate_plan.py`):
- an 'on' socket draws its max power until its store is full (then nothing: thermostat);
- the batteries, aggregated, follow the plan's mode per step (`battery_step`); without modes
  HomeWizard's zero mode: charge on surplus, discharge into deficit, within their total
  power and capacity;
- what is left goes to (export) or comes from (import) the grid.

It scores a plan: unmet need (Wh short on needed sockets), grid import, export, energy
into optional stores, relay switches (and battery mode changes), minimum on / off times not
kept, energy optional sockets drew from grid or battery where that was not allowed, and
with prices the day's cost. Planners use it to check themselves, the benchmark to compare
them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from shared.planning.problem import BatteryMode, Plan, PlanningProblem

#: Slack (Wh) under which a needed store counts as full (rounding of the physics).
UNMET_TOLERANCE_WH = 1.0


@dataclass(frozen=True, slots=True)
class DayOutcome:
    """What a day under a plan comes to."""

    unmet_need_wh: float
    grid_import_wh: float
    export_wh: float
    optional_wh: float
    needed_wh: float
    #: Relay switches plus battery mode changes (with `initial_on` / `initial_battery_mode`,
    #: a change at the first step counts).
    switches: int
    #: Steps where an optional socket drew power while grid or battery supplied the house
    #: (and the import price did not allow it).
    optional_violations: int
    #: Energy optional sockets took from grid or battery where that was not allowed, Wh
    #: (the yardstick's `optional_not_from_surplus_wh`).
    optional_not_from_surplus_wh: float = 0.0
    #: Steps of minimum on / off times not kept (`hold_violations`).
    hold_violations: int = 0
    #: Steps where a full socket was kept on, outside a minimum on time, while grid or
    #: battery supplied the house (a thermostat would reheat it from them), or where the
    #: surplus did not cover its power (a draw from its store would re-heat it from them);
    #: both except where the import price allows the grid.
    idle_violations: int = 0
    #: With prices: import cost - export earnings, EUR.
    cost_eur: float | None = None
    #: With prices: the value of the energy put into optional stores, EUR.
    optional_value_eur: float | None = None
    #: Per socket: energy stored at the end of each step (Wh).
    socket_energy_wh: dict[str, list[float]] = field(default_factory=dict)
    #: Per socket: power drawn in each step (W).
    socket_power_w: dict[str, list[float]] = field(default_factory=dict)
    #: Aggregated battery power per step (W, + charging).
    battery_power_w: list[float] = field(default_factory=list)
    #: Aggregated battery energy at the end of each step (Wh).
    battery_energy_wh: list[float] = field(default_factory=list)
    #: Grid power per step (W, + import).
    grid_power_w: list[float] = field(default_factory=list)

    @property
    def net_cost_eur(self) -> float | None:
        """With prices: cost minus the value put into optional stores, EUR."""
        if self.cost_eur is None or self.optional_value_eur is None:
            return None
        return self.cost_eur - self.optional_value_eur

    def key(self) -> tuple[float, float, float, int]:
        """Lexicographic quality, smaller is better: need, import, -optional, switches."""
        return (
            round(self.unmet_need_wh, 1),
            round(self.grid_import_wh, 1),
            -round(self.optional_wh, 1),
            self.switches,
        )

    def yardstick_score(self) -> float:
        """The shared yardstick's one number (lower is better): needs first, then net cost
        with prices, grid import then optional energy without."""
        net = self.net_cost_eur
        if net is not None:
            return 100.0 * self.unmet_need_wh + 1000.0 * net
        return 100.0 * self.unmet_need_wh + 10.0 * self.grid_import_wh - self.optional_wh


def zero_mode_step(net_w: float, soc_wh: float, cap_wh: float, pmax_w: float, dt_h: float) -> float:
    """Battery power (W, + charging) in zero mode for one step, given the net house power.

    net_w > 0 is surplus (charge), < 0 deficit (discharge).
    """
    return battery_step("zero", net_w, soc_wh, cap_wh, pmax_w, dt_h)


def battery_step(
    mode: BatteryMode, net_w: float, soc_wh: float, cap_wh: float, pmax_w: float, dt_h: float
) -> float:
    """Battery power (W, + charging) for one step in `mode`, given the net house power.

    zero: charge on surplus, discharge into deficit; charge_only / discharge_only: zero mode
    with one permission; standby: neither; to_full: charge at full power (from the grid
    where the sun is short) until full, never discharge.
    """
    if cap_wh <= 0 or pmax_w <= 0:
        return 0.0
    room_w = max(0.0, (cap_wh - soc_wh) / dt_h)
    if mode == "to_full":
        return min(pmax_w, room_w)
    if net_w > 0 and mode in ("zero", "charge_only"):
        return min(net_w, pmax_w, room_w)
    if net_w < 0 and mode in ("zero", "discharge_only"):
        return -min(-net_w, pmax_w, max(0.0, soc_wh / dt_h))
    return 0.0


def count_switches(row: Sequence[int], initial_on: bool | None = None) -> int:
    """Relay changes along a 0/1 row; with `initial_on`, a change at the first step counts."""
    n = sum(1 for a, b in pairwise(row) if bool(a) != bool(b))
    if initial_on is not None and row and bool(row[0]) != initial_on:
        n += 1
    return n


def count_mode_changes(modes: Sequence[str], initial: str | None = None) -> int:
    """Battery mode changes along the plan; with `initial`, a change at the first step counts."""
    n = sum(1 for a, b in pairwise(modes) if a != b)
    if initial is not None and modes and modes[0] != initial:
        n += 1
    return n


def hold_steps(seconds: float, step_s: int) -> int:
    """Steps a minimum on / off time spans: ceil(seconds / step), at least 1."""
    return max(1, math.ceil(seconds / step_s - 1e-9))


def hold_spans(problem: PlanningProblem) -> tuple[int, int]:
    """(steps of `min_on_s`, steps of `min_off_s`); 1 holds nothing."""
    return hold_steps(problem.min_on_s, problem.step_s), hold_steps(
        problem.min_off_s, problem.step_s
    )


def initial_hold(problem: PlanningProblem, name: str) -> tuple[bool | None, int]:
    """(state now, steps from now it should keep that state) for one socket's current run.

    A socket in `initial_on` whose `initial_since_s` is shorter than `min_on_s` (on) or
    `min_off_s` (off) holds its state for the rest of that time, rounded up to whole steps.
    """
    state = problem.initial_on.get(name)
    if state is None:
        return None, 0
    since = problem.initial_since_s.get(name)
    need = problem.min_on_s if state else problem.min_off_s
    if since is None or since >= need:
        return state, 0
    return state, math.ceil((need - since) / problem.step_s - 1e-9)


def hold_violations(
    row: Sequence[int],
    initial_on: bool | None,
    initial_steps: int,
    up: int,
    down: int,
) -> int:
    """Steps of a row that break a minimum on / off time.

    After a switch on (a step that is on where the step before, or `initial_on` before the
    first, was off) the socket should stay on for `up` steps: each step off within them is
    one violation; after a switch off likewise for `down` steps. The state the socket is in
    now should hold for `initial_steps` more steps. Windows end at the horizon's end (the
    next plan continues them). `up` / `down` of 1 hold nothing.
    """
    n = len(row)
    bad = 0
    if initial_on is not None:
        want = 1 if initial_on else 0
        for t in range(min(initial_steps, n)):
            if row[t] != want:
                bad += 1
    prev = None if initial_on is None else (1 if initial_on else 0)
    for t in range(n):
        cur = 1 if row[t] else 0
        if prev is not None and cur != prev:
            span = up if cur else down
            for u in range(t + 1, min(n, t + span)):
                if (1 if row[u] else 0) != cur:
                    bad += 1
        prev = cur
    return bad


def on_hold_steps(problem: PlanningProblem, name: str, row: Sequence[int], up: int) -> list[bool]:
    """Steps where a socket is inside a minimum on time: the state held now (`initial_on`
    with `initial_since_s`), or the first `up` steps of a run the plan starts."""
    n = len(row)
    init, held = initial_hold(problem, name)
    out = [False] * n
    if init and held:
        for t in range(min(held, n)):
            if not row[t]:
                break
            out[t] = True
    if up > 1:
        start = -1
        for t in range(n):
            if row[t] and (t == 0 or not row[t - 1]):
                start = t if (t > 0 or init is False) else -1
            if row[t] and start >= 0 and t < start + up:
                out[t] = True
    return out


def price_allows_optional(problem: PlanningProblem) -> list[bool]:
    """Per step: may optional sockets draw from grid or battery (import price at or below
    `optional_grid_price_max`)?"""
    limit = problem.optional_grid_price_max
    prices = problem.import_prices()
    if limit is None or prices is None:
        return [False] * problem.n_steps
    return [p <= limit for p in prices]


def optional_value_eur_kwh(problem: PlanningProblem) -> dict[str, float]:
    """With prices: what a kWh in each optional store is worth (its `value_eur_kwh`, else the
    horizon's mean import price)."""
    prices = problem.import_prices()
    if prices is None:
        return {}
    mean = sum(prices) / len(prices)
    return {
        s.name: (s.value_eur_kwh if s.value_eur_kwh is not None else mean)
        for s in problem.sockets
        if not s.daily_need
    }


def simulate(
    problem: PlanningProblem,
    states: Mapping[str, Sequence[int]],
    modes: Sequence[BatteryMode] | None = None,
) -> DayOutcome:
    """Simulate the horizon under socket states (missing sockets/steps are off) and the
    batteries' modes (missing steps, or no modes: `zero`)."""
    n = problem.n_steps
    dt = problem.dt_h
    cap = problem.battery_capacity_wh
    pmax = problem.battery_power_w
    soc = min(problem.battery_stored_wh, cap)
    energy = {s.name: s.energy_stored for s in problem.sockets}
    rows = {
        s.name: [int(bool(v)) for v in list(states.get(s.name, []))[:n]] for s in problem.sockets
    }
    for row in rows.values():
        row.extend([0] * (n - len(row)))
    mode_row: list[BatteryMode] = list(modes or [])[:n]
    mode_row.extend(["zero"] * (n - len(mode_row)))
    p_imp = problem.import_prices()
    p_exp = problem.export_prices()
    allowed = price_allows_optional(problem)

    socket_energy: dict[str, list[float]] = {s.name: [] for s in problem.sockets}
    socket_power: dict[str, list[float]] = {s.name: [] for s in problem.sockets}
    batt_p: list[float] = []
    batt_e: list[float] = []
    grid: list[float] = []
    imp = exp = needed = cost = 0.0
    opt_wh = {s.name: 0.0 for s in problem.sockets if not s.daily_need}
    violations = 0
    idle_bad = 0
    unsurplus = 0.0
    up, down = hold_spans(problem)
    exempt = {s.name: on_hold_steps(problem, s.name, rows[s.name], up) for s in problem.sockets}
    for t in range(n):
        load = 0.0
        opt_load = 0.0
        idle = short = False
        for s in problem.sockets:
            draw = 0.0
            if rows[s.name][t]:
                room = max(0.0, s.energy_capacity - energy[s.name])
                draw = min(s.max_power_usage, room / dt) if room > 1e-6 else 0.0
                energy[s.name] += draw * dt
                if s.daily_need:
                    needed += draw * dt
                else:
                    opt_wh[s.name] += draw * dt
                    opt_load += draw
                if draw <= 0 and not exempt[s.name][t]:
                    idle = True
                    short = short or problem.available_power_w[t] < s.max_power_usage - 1e-6
            load += draw
            socket_energy[s.name].append(energy[s.name])
            socket_power[s.name].append(draw)
        net = problem.available_power_w[t] - load
        b = battery_step(mode_row[t], net, soc, cap, pmax, dt)
        soc += b * dt
        g = -(net - b)  # + import
        if g > 0:
            imp += g * dt
        else:
            exp += -g * dt
        if p_imp is not None and p_exp is not None:
            cost += (max(0.0, g) * p_imp[t] - max(0.0, -g) * p_exp[t]) * dt / 1000.0
        fed = g * dt > 1e-9 or b < -1e-9  # the yardstick's test
        if opt_load > 0 and fed and not allowed[t]:
            violations += 1
            unsurplus += min(opt_load, max(0.0, g) + max(0.0, -b)) * dt
        if idle and (fed or short) and not allowed[t]:
            idle_bad += 1
        batt_p.append(b)
        batt_e.append(soc)
        grid.append(g)

    unmet = 0.0
    for s in problem.sockets:
        if s.daily_need:
            unmet += max(0.0, s.energy_capacity - energy[s.name] - UNMET_TOLERANCE_WH)
    switches = sum(
        count_switches(rows[s.name], problem.initial_on.get(s.name)) for s in problem.sockets
    )
    if modes is not None:
        switches += count_mode_changes(mode_row, problem.initial_battery_mode)
    holds = 0
    for s in problem.sockets:
        init, held = initial_hold(problem, s.name)
        holds += hold_violations(rows[s.name], init, held, up, down)
    value: float | None = None
    if p_imp is not None:
        worth = optional_value_eur_kwh(problem)
        value = sum(opt_wh[k] / 1000.0 * worth[k] for k in opt_wh)
    return DayOutcome(
        unmet_need_wh=unmet,
        grid_import_wh=imp,
        export_wh=exp,
        optional_wh=sum(opt_wh.values()),
        needed_wh=needed,
        switches=switches,
        optional_violations=violations,
        optional_not_from_surplus_wh=unsurplus,
        hold_violations=holds,
        idle_violations=idle_bad,
        cost_eur=cost if p_imp is not None else None,
        optional_value_eur=value,
        socket_energy_wh=socket_energy,
        socket_power_w=socket_power,
        battery_power_w=batt_p,
        battery_energy_wh=batt_e,
        grid_power_w=grid,
    )


def simulate_plan(problem: PlanningProblem, plan: Plan) -> DayOutcome:
    """Simulate a plan: its socket rows and, if it has them, its battery modes."""
    return simulate(problem, plan.sockets, plan.battery_mode)
