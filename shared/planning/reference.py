"""The reference planner: the original project's greedy algorithm (its rules, not its bugs).

Rules, in the order they run (sockets in `PlanningProblem.ordered_sockets()` order):

1. Each needed socket takes the earliest steps whose remaining surplus covers its full power.
2. If that is not enough and there are batteries, a battery-assisted search: see
   `_battery_assisted`. It adds steps where surplus plus battery covers the socket.
3. If still not enough, the socket takes the steps with the largest remaining surplus
   (steps it does not have yet, earliest first on ties), from the grid if need be.
4. Each optional socket then takes rule 1 only. One with `min_battery_charge` > 0 first lets
   the batteries charge on the surplus until they hold that ratio of their capacity, and is
   held off until they do.
5. Unless `overcharge` is false, every socket is also put on wherever the remaining surplus
   still covers its power (the original's live behaviour).
6. The batteries take what is left: charge on surplus, discharge into deficit (zero mode).

Every step a socket takes lowers the remaining surplus by its power. The batteries are one
aggregate store: the power planned for them (W, + charging) is kept per step, and every new
battery flow is bounded so that the stored energy stays within [0, capacity] at every later
step, given the flows already planned, and the power within ± the total max power.

Pure Python, no I/O, deterministic.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from shared.planning.problem import Plan, PlanningProblem, SocketSpec

#: Power slack (W) under which a surplus still counts as covering a socket (float noise).
POWER_EPS_W = 1e-6
#: Energy slack (Wh) for battery energy checks (float noise).
ENERGY_EPS_WH = 1e-6


def planning_order(sockets: Sequence[SocketSpec]) -> list[SocketSpec]:
    """Priority ascending, then max power descending, then the given order.

    The same rule as `PlanningProblem.ordered_sockets()`, for a bare list of sockets.
    """
    indexed = sorted(enumerate(sockets), key=lambda p: (p[1].priority, -p[1].max_power_usage, p[0]))
    return [s for _, s in indexed]


def fallback_states(sockets: Sequence[SocketSpec], surplus_w: float) -> dict[str, bool]:
    """The original's no-forecast rule, on the surplus measured now.

    In planning order, a socket is on if the surplus still left covers its power; its power
    is then taken from that surplus.
    """
    left = surplus_w
    states: dict[str, bool] = {}
    for socket in planning_order(sockets):
        on = left >= socket.max_power_usage - POWER_EPS_W
        states[socket.name] = on
        if on:
            left -= socket.max_power_usage
    return states


@dataclass
class _Day:
    """The mutable planning state: remaining surplus, socket rows, planned battery power."""

    dt_h: float
    surplus_w: list[float]  # remaining: forecast - planned sockets - planned battery
    rows: dict[str, list[int]]
    battery_w: list[float]  # planned aggregate battery power, + charging
    battery_cap_wh: float
    battery_max_w: float
    battery_start_wh: float

    @property
    def n(self) -> int:
        return len(self.surplus_w)

    @property
    def has_battery(self) -> bool:
        return self.battery_cap_wh > 0 and self.battery_max_w > 0

    def switch_on(self, socket: SocketSpec, t: int) -> None:
        """Put a socket on in step t; the remaining surplus drops by its power."""
        self.rows[socket.name][t] = 1
        self.surplus_w[t] -= socket.max_power_usage

    def add_battery_flow(self, t: int, power_w: float) -> None:
        """Plan extra battery power in step t (+ charging); it comes out of the surplus."""
        self.battery_w[t] += power_w
        self.surplus_w[t] -= power_w

    def battery_energy_wh(self) -> list[float]:
        """Battery energy at the end of each step under the planned battery power."""
        energy = self.battery_start_wh
        out: list[float] = []
        for p in self.battery_w:
            energy += p * self.dt_h
            out.append(energy)
        return out


@dataclass(frozen=True)
class _BatteryRoom:
    """How much extra battery flow each step allows, given the flows already planned.

    `low[t]`/`high[t]` are the least/most energy the plan holds at the end of any step from t
    on: an extra d Wh added in step t shifts all of them, so it must keep
    `low[t] + d >= 0` and `high[t] + d <= capacity`.
    """

    dt_h: float
    cap_wh: float
    start_wh: float
    charge_w: list[float]  # power headroom for more charging
    discharge_w: list[float]  # power headroom for more discharging
    low: list[float]
    high: list[float]
    end_wh: list[float]  # planned energy at the end of each step

    @classmethod
    def of(cls, day: _Day) -> _BatteryRoom:
        end = day.battery_energy_wh()
        low = end[:]
        high = end[:]
        for t in range(day.n - 2, -1, -1):
            low[t] = min(low[t], low[t + 1])
            high[t] = max(high[t], high[t + 1])
        return cls(
            dt_h=day.dt_h,
            cap_wh=day.battery_cap_wh,
            start_wh=day.battery_start_wh,
            charge_w=[day.battery_max_w - p for p in day.battery_w],
            discharge_w=[day.battery_max_w + p for p in day.battery_w],
            low=low,
            high=high,
            end_wh=end,
        )

    def max_charge_w(self, t: int, extra_wh: float) -> float:
        """Most extra charging power in step t, after `extra_wh` already added before t."""
        by_energy = (self.cap_wh - self.high[t] - extra_wh) / self.dt_h
        return max(0.0, min(self.charge_w[t], by_energy))

    def max_discharge_w(self, t: int, extra_wh: float) -> float:
        """Most extra discharging power in step t, after `extra_wh` already added before t."""
        by_energy = (self.low[t] + extra_wh) / self.dt_h
        return max(0.0, min(self.discharge_w[t], by_energy))

    def zero_mode_w(self, t: int, surplus_w: float, extra_wh: float) -> float:
        """Zero mode on the remaining surplus: charge on surplus, discharge into deficit."""
        if surplus_w > 0:
            return min(surplus_w, self.max_charge_w(t, extra_wh))
        if surplus_w < 0:
            return -min(-surplus_w, self.max_discharge_w(t, extra_wh))
        return 0.0

    def start_of_step_wh(self, t: int, extra_wh: float) -> float:
        """Battery energy at the start of step t under the plan, plus `extra_wh`."""
        base = self.start_wh if t == 0 else self.end_wh[t - 1]
        return base + extra_wh


# --- rule 1 and the optional/overcharge passes -------------------------------------------


def _take_covered_steps(day: _Day, socket: SocketSpec, limit: int, first: int = 0) -> int:
    """Rule 1: the earliest steps (from `first`) whose remaining surplus covers the socket.

    Takes at most `limit` steps the socket does not have yet; returns how many it took.
    """
    row = day.rows[socket.name]
    taken = 0
    for t in range(first, day.n):
        if taken >= limit:
            break
        if not row[t] and day.surplus_w[t] >= socket.max_power_usage - POWER_EPS_W:
            day.switch_on(socket, t)
            taken += 1
    return taken


# --- rule 2: battery-assisted --------------------------------------------------------------
#
# The search tracks `extra`: the battery energy (Wh) it adds on top of the plan so far. It
# stays within [floor[t], ceiling[t]], which keeps the stored energy within [0, capacity] at
# every later step too (floor never rises and ceiling never falls from step to step). One
# zero-mode step maps extra to clamp(extra + d, low, high); so does a run of such steps, so
# the search jumps from one candidate step (where the battery might cover the socket) to the
# next with one precomputed map.

#: A map extra -> min(max(extra + d, low), high), as (d, low, high).
_Map = tuple[float, float, float]
_IDENTITY: _Map = (0.0, -math.inf, math.inf)


def _then(first: _Map, second: _Map) -> _Map:
    """The map `second` after `first` (clamp-add maps compose into one)."""
    d1, lo1, hi1 = first
    d2, lo2, hi2 = second
    return (d1 + d2, min(max(lo1 + d2, lo2), hi2), min(max(hi1 + d2, lo2), hi2))


def _apply(m: _Map, extra: float) -> float:
    """The map applied to one `extra`."""
    return min(max(extra + m[0], m[1]), m[2])


@dataclass(frozen=True)
class _Assist:
    """What the battery-assisted search for one socket works from (energies in Wh)."""

    want: int  # steps still to add
    had: int  # steps the socket already has
    had_first: int  # first of them (n when none)
    had_last: int  # last of them (-1 when none)
    steps: list[_Map]  # zero mode in each step
    floor: list[float]
    cands: list[int]  # candidate steps: off, short of surplus, within battery power
    # Per candidate:
    need: list[float]  # the shortfall x step the battery must supply
    cover_at: list[float]  # the least extra at which it can (floor + need, less the slack)
    floor_at: list[float]  # the floor in its step
    at_cand: list[_Map]  # zero mode in its step (when the socket stays off)
    lead: list[_Map]  # zero mode from just after the previous candidate to it


def _step_map(
    surplus_wh: float, charge_wh: float, discharge_wh: float, lo: float, hi: float
) -> _Map:
    """Zero mode in one step: charge on surplus, discharge into deficit, within the room."""
    if surplus_wh > 0:
        return (min(surplus_wh, charge_wh), -math.inf, hi)
    if surplus_wh < 0:
        return (-min(-surplus_wh, discharge_wh), lo, math.inf)
    return _IDENTITY


def _assist_setup(day: _Day, socket: SocketSpec, want: int) -> _Assist:
    """The per-step maps, the candidate steps and what each needs, for one socket.

    A candidate is a step the socket does not have whose shortfall (power - remaining
    surplus) is positive and within the battery's discharge headroom in that step.
    """
    room = _BatteryRoom.of(day)
    dt = day.dt_h
    row = day.rows[socket.name]
    floor = [-x for x in room.low]
    steps = [
        _step_map(
            day.surplus_w[t] * dt,
            max(0.0, room.charge_w[t] * dt),
            max(0.0, room.discharge_w[t] * dt),
            floor[t],
            room.cap_wh - room.high[t],
        )
        for t in range(day.n)
    ]
    cands: list[int] = []
    need: list[float] = []
    lead: list[_Map] = []
    run = _IDENTITY
    for t in range(day.n):
        shortfall = socket.max_power_usage - day.surplus_w[t]
        if not row[t] and POWER_EPS_W < shortfall <= room.discharge_w[t] + POWER_EPS_W:
            cands.append(t)
            need.append(shortfall * dt)
            lead.append(run)
            run = _IDENTITY
        else:
            run = _then(run, steps[t])
    on_steps = [t for t in range(day.n) if row[t]]
    return _Assist(
        want=want,
        had=len(on_steps),
        had_first=on_steps[0] if on_steps else day.n,
        had_last=on_steps[-1] if on_steps else -1,
        steps=steps,
        floor=floor,
        cands=cands,
        need=need,
        cover_at=[floor[t] + e - ENERGY_EPS_WH for t, e in zip(cands, need, strict=True)],
        floor_at=[floor[t] for t in cands],
        at_cand=[steps[t] for t in cands],
        lead=lead,
    )


@dataclass(frozen=True)
class _Run:
    """One start time of the battery-assisted search.

    A run simulated to its end keeps its trace (`extra` and steps added, at each candidate
    from `first` on), so that a later start that meets it in the same state follows it.
    """

    start: int
    first: int  # index of the first candidate at or after `start`
    added: list[int]
    complete: bool = True  # False: abandoned, it could not beat the best run
    extra_at: list[float] | None = None
    added_at: list[int] | None = None


def _prefix_extra(a: _Assist) -> list[float]:
    """`extra` at the start of each step under zero mode alone (no new socket step)."""
    out = [0.0]
    for m in a.steps:
        out.append(_apply(m, out[-1]))
    return out


def _merge(a: _Assist, run: list[int], ref: _Run, i: int) -> bool:
    """Extend `run` with `ref`'s steps from its i-th traced candidate on, where `run` now
    stands in the same state (the same `extra`).

    The same state means the same decisions from there on, as long as `ref` did not stop
    (socket full) before the steps `run` still needs.
    """
    if ref.added_at is None:
        return False
    got, ref_got = len(run), ref.added_at[i]
    if got < ref_got and len(ref.added) >= a.want:
        return False
    run.extend(ref.added[ref_got : ref_got + a.want - got])
    return True


def _run_from(a: _Assist, start: int, extra: float, best: _Run | None, ref: _Run | None) -> _Run:
    """Simulate one start time from its `extra`: zero mode, with the socket on at each
    candidate from `start` on where the battery can supply its shortfall, until it has its
    steps. Abandoned as soon as it cannot beat `best`: too few steps left to reach its
    count, or, when `best` gave the socket all its steps, no window narrower than its span.

    The planner's hot loop: the maps are applied inline, on local names.
    """
    first = bisect.bisect_left(a.cands, start)
    added: list[int] = []
    extra_at: list[float] = []
    added_at: list[int] = []
    cands, lead, cover_at, need, floor_at, at_cand = (
        a.cands,
        a.lead,
        a.cover_at,
        a.need,
        a.floor_at,
        a.at_cand,
    )
    want, m = a.want, len(cands)
    beat = len(best.added) if best is not None else 0
    full_best = best is not None and beat >= want
    span = _span(a, best.added) if best is not None and full_best else 0
    had_first, had_last = a.had_first, a.had_last
    ref_from, ref_to, ref_at = 0, 0, []
    if ref is not None and ref.extra_at is not None:
        ref_from, ref_to, ref_at = ref.first, ref.first + len(ref.extra_at), ref.extra_at
    got = 0
    for j in range(first, m):
        if got >= want:
            break
        d, lo, hi = lead[j]
        x = extra + d
        extra = hi if x > hi else lo if x < lo else x
        if (
            ref_from <= j < ref_to
            and ref_at[j - ref_from] == extra
            and ref is not None
            and _merge(a, added, ref, j - ref_from)
        ):
            return _Run(start, first, added)
        if got + m - j < beat or (
            full_best
            and added
            and j + want - got <= m
            and max(had_last, cands[j + want - got - 1]) - min(had_first, added[0]) >= span
        ):
            return _Run(start, first, added, complete=False)
        extra_at.append(extra)
        added_at.append(got)
        if extra >= cover_at[j]:  # the battery covers the shortfall
            x = extra - need[j]
            bottom = floor_at[j]
            extra = x if x > bottom else bottom
            added.append(cands[j])
            got += 1
        else:
            d, lo, hi = at_cand[j]
            x = extra + d
            extra = hi if x > hi else lo if x < lo else x
    return _Run(start, first, added, True, extra_at, added_at)


def _flows_w(a: _Assist, prefix: list[float], run: _Run, dt: float) -> list[float]:
    """Battery power (W) per step of a run, up to its last added step."""
    added = set(run.added)
    need = {t: a.need[j] for j, t in enumerate(a.cands) if t in added}
    flows = [(prefix[t + 1] - prefix[t]) / dt for t in range(run.start)]
    extra = prefix[run.start]
    for t in range(run.start, run.added[-1] + 1):
        nxt = max(extra - need[t], a.floor[t]) if t in need else _apply(a.steps[t], extra)
        flows.append((nxt - extra) / dt)
        extra = nxt
    return flows


def _span(a: _Assist, added: list[int]) -> int:
    """Last on-step minus first on-step of the socket with `added` (non-empty) taken."""
    return max(a.had_last, added[-1]) - min(a.had_first, added[0])


def _better(a: _Assist, new: _Run, best: _Run | None) -> bool:
    """More steps wins; on equal steps the more compact window (else the earlier start)."""
    if best is None:
        return True
    if len(new.added) != len(best.added):
        return len(new.added) > len(best.added)
    return _span(a, new.added) < _span(a, best.added)


def _battery_assisted(day: _Day, socket: SocketSpec, want: int) -> int:
    """Rule 2: add socket steps where surplus plus battery covers it; returns steps added.

    For each start time s, the batteries run in zero mode on the remaining surplus (charge on
    surplus, discharge into deficit); from s on, each step the socket does not have yet and
    whose shortfall (power - remaining surplus) the batteries can supply, within their power
    headroom and the energy they hold, becomes a socket step with the batteries discharging
    that shortfall, until the socket has the steps it needs. The start with the most socket
    steps wins, then the one whose on-steps span the fewest steps, then the earliest. Its
    battery flows up to its last socket step are planned and its steps taken.

    Shortcuts that change no result: starts that run exactly like an earlier one (no socket
    step between them) are skipped, a run that meets an earlier one in the same state
    follows it, and a run is abandoned once it cannot beat the best one.
    """
    if want <= 0:
        return 0
    a = _assist_setup(day, socket, want)
    prefix = _prefix_extra(a)
    best: _Run | None = None
    ref: _Run | None = None
    start = 0
    while a.cands and start <= a.cands[-1]:
        run = _run_from(a, start, prefix[start], best, ref)
        if not run.added:
            break  # zero mode from here on: no later start adds a step either
        if run.complete and _better(a, run, best):
            best = run
        if run.extra_at is not None:
            ref = run
        start = run.added[0] + 1  # starts up to the first added step run identically
    if best is None:
        return 0
    for t, p in enumerate(_flows_w(a, prefix, best, day.dt_h)):
        if p:
            day.add_battery_flow(t, p)
    for t in best.added:
        day.switch_on(socket, t)
    return len(best.added)


# --- rule 3 --------------------------------------------------------------------------------


def _take_largest_surplus(day: _Day, socket: SocketSpec, want: int) -> None:
    """Rule 3: the `want` steps the socket lacks with the largest remaining surplus.

    Earliest first on equal surplus; the grid supplies whatever the surplus does not.
    """
    if want <= 0:
        return
    row = day.rows[socket.name]
    free = [t for t in range(day.n) if not row[t]]
    free.sort(key=lambda t: (-day.surplus_w[t], t))
    for t in free[:want]:
        day.switch_on(socket, t)


def _plan_needed(day: _Day, socket: SocketSpec, steps: int) -> None:
    """Rules 1, 2 and 3 for one needed socket, each only if the previous left it short."""
    have = _take_covered_steps(day, socket, steps)
    if have < steps and day.has_battery:
        have += _battery_assisted(day, socket, steps - have)
    if have < steps:
        _take_largest_surplus(day, socket, steps - have)


# --- rule 4: optional sockets and the battery threshold ------------------------------------


def _charge_battery_to(day: _Day, target_wh: float) -> int:
    """Let the batteries take the surplus, from step 0, until they hold `target_wh`.

    Returns the first step at whose start they hold it (n if they never do).
    """
    room = _BatteryRoom.of(day)
    extra = 0.0
    for t in range(day.n):
        held = room.start_of_step_wh(t, extra)
        if held >= target_wh - ENERGY_EPS_WH:
            return t
        surplus = day.surplus_w[t]
        if surplus <= 0:
            continue
        p = min(surplus, room.max_charge_w(t, extra), (target_wh - held) / room.dt_h)
        if p > 0:
            day.add_battery_flow(t, p)
            extra += p * room.dt_h
    return day.n


def _optional_first_step(day: _Day, socket: SocketSpec) -> int:
    """First step an optional socket may use: after the battery threshold, if it has one."""
    if socket.min_battery_charge <= 0 or not day.has_battery:
        return 0
    return _charge_battery_to(day, socket.min_battery_charge * day.battery_cap_wh)


# --- rule 6 --------------------------------------------------------------------------------


def _battery_takes_rest(day: _Day) -> None:
    """Rule 6: zero mode on what is left, within the power and energy the plan leaves."""
    if not day.has_battery:
        return
    room = _BatteryRoom.of(day)
    extra = 0.0
    for t in range(day.n):
        p = room.zero_mode_w(t, day.surplus_w[t], extra)
        if p:
            day.add_battery_flow(t, p)
            extra += p * room.dt_h


# --- the planner ---------------------------------------------------------------------------


def _new_day(problem: PlanningProblem) -> _Day:
    n = problem.n_steps
    return _Day(
        dt_h=problem.dt_h,
        surplus_w=list(problem.available_power_w),
        rows={s.name: [0] * n for s in problem.sockets},
        battery_w=[0.0] * n,
        battery_cap_wh=problem.battery_capacity_wh,
        battery_max_w=problem.battery_power_w,
        battery_start_wh=min(problem.battery_stored_wh, problem.battery_capacity_wh),
    )


def plan_reference(problem: PlanningProblem) -> Plan:
    """Plan a day with the original's greedy rules (see the module docstring)."""
    started = time.perf_counter()
    day = _new_day(problem)
    order = problem.ordered_sockets()
    for socket in order:
        if socket.daily_need:
            _plan_needed(day, socket, problem.steps_needed(socket))
    first_step: dict[str, int] = {}
    for socket in order:
        if not socket.daily_need:
            first = _optional_first_step(day, socket)
            first_step[socket.name] = first
            _take_covered_steps(day, socket, problem.steps_needed(socket), first)
    if problem.overcharge:
        for socket in order:
            _take_covered_steps(day, socket, day.n, first_step.get(socket.name, 0))
    _battery_takes_rest(day)
    return Plan(
        sockets={s.name: day.rows[s.name] for s in problem.sockets},
        battery_power_w=day.battery_w,
        planner="reference",
        solve_s=time.perf_counter() - started,
        status="heuristic",
    )
