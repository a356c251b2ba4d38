"""The day simulator: what a plan really does to the house (pure, no I/O).

Physics, step by step:
- an 'on' socket draws its max power until its store is full (then nothing: thermostat);
- the batteries, aggregated, run in HomeWizard zero mode: they charge on surplus and
  discharge into deficit, within their total power and capacity;
- what is left goes to (export) or comes from (import) the grid.

It scores a plan: unmet need (Wh short on needed sockets), grid import, export, energy
into optional stores, relay switches. Planners use it to check themselves, the benchmark
to compare them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from shared.planning.problem import PlanningProblem

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
    switches: int
    #: Steps where an optional socket was on while grid or battery supplied the house.
    optional_violations: int
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

    def key(self) -> tuple[float, float, float, int]:
        """Lexicographic quality, smaller is better: need, import, -optional, switches."""
        return (
            round(self.unmet_need_wh, 1),
            round(self.grid_import_wh, 1),
            -round(self.optional_wh, 1),
            self.switches,
        )


def zero_mode_step(net_w: float, soc_wh: float, cap_wh: float, pmax_w: float, dt_h: float) -> float:
    """Battery power (W, + charging) in zero mode for one step, given the net house power.

    net_w > 0 is surplus (charge), < 0 deficit (discharge).
    """
    if cap_wh <= 0 or pmax_w <= 0:
        return 0.0
    if net_w > 0:
        return min(net_w, pmax_w, max(0.0, (cap_wh - soc_wh) / dt_h))
    if net_w < 0:
        return -min(-net_w, pmax_w, max(0.0, soc_wh / dt_h))
    return 0.0


def count_switches(row: Sequence[int], initial_on: bool | None = None) -> int:
    """Relay changes along a 0/1 row; with `initial_on`, a change at the first step counts."""
    n = sum(1 for a, b in pairwise(row) if bool(a) != bool(b))
    if initial_on is not None and row and bool(row[0]) != initial_on:
        n += 1
    return n


def simulate(problem: PlanningProblem, states: Mapping[str, Sequence[int]]) -> DayOutcome:
    """Simulate the horizon under socket states (missing sockets/steps are off)."""
    n = problem.n_steps
    dt = problem.dt_h
    cap = problem.battery_capacity_wh
    pmax = problem.battery_power_w
    soc = problem.battery_stored_wh
    energy = {s.name: s.energy_stored for s in problem.sockets}
    rows = {
        s.name: [int(bool(v)) for v in list(states.get(s.name, []))[:n]] for s in problem.sockets
    }
    for row in rows.values():
        row.extend([0] * (n - len(row)))

    socket_energy: dict[str, list[float]] = {s.name: [] for s in problem.sockets}
    socket_power: dict[str, list[float]] = {s.name: [] for s in problem.sockets}
    batt_p: list[float] = []
    batt_e: list[float] = []
    grid: list[float] = []
    imp = exp = opt = needed = 0.0
    violations = 0
    for t in range(n):
        load = 0.0
        optional_on = False
        for s in problem.sockets:
            draw = 0.0
            if rows[s.name][t]:
                room = max(0.0, s.energy_capacity - energy[s.name])
                draw = min(s.max_power_usage, room / dt)
                energy[s.name] += draw * dt
                if s.daily_need:
                    needed += draw * dt
                else:
                    opt += draw * dt
                    optional_on = optional_on or draw > 0
            load += draw
            socket_energy[s.name].append(energy[s.name])
            socket_power[s.name].append(draw)
        net = problem.available_power_w[t] - load
        b = zero_mode_step(net, soc, cap, pmax, dt)
        soc += b * dt
        g = -(net - b)  # + import
        if g > 0:
            imp += g * dt
        else:
            exp += -g * dt
        if optional_on and net < -1e-6:
            violations += 1
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
    return DayOutcome(
        unmet_need_wh=unmet,
        grid_import_wh=imp,
        export_wh=exp,
        optional_wh=opt,
        needed_wh=needed,
        switches=switches,
        optional_violations=violations,
        socket_energy_wh=socket_energy,
        socket_power_w=socket_power,
        battery_power_w=batt_p,
        battery_energy_wh=batt_e,
        grid_power_w=grid,
    )
