"""Local search on socket plans against the exact day physics (pure Python, no I/O).

`DayState` holds a plan together with its simulated day and re-simulates incrementally
when one socket's row changes: the socket's draw profile is recomputed, the house load
updated, and the battery (zero mode) re-run from the first changed step. A move costs
O(steps), which lets the search try thousands of moves in a fraction of a second.

Quality is lexicographic (`Score`): total unmet need, then unmet need weighted by
priority, then grid import, then energy into optional stores (more is better), then
switches. A plan is *admissible* when no optional socket is on, and no full socket is
kept on, in a step the battery or grid feeds, and no optional socket runs before the
battery holds its `min_battery_charge`; the search never accepts an inadmissible plan.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

from shared.planning.problem import PlanningProblem
from shared.planning.simulate import UNMET_TOLERANCE_WH

_EPS = 1e-6

Score = tuple[float, float, float, float, int]
#: A move: new rows for one or more sockets (by index).
Move = tuple[tuple[int, list[int]], ...]


@dataclass(frozen=True, slots=True)
class _Sock:
    name: str
    power: float
    room: float
    needed: bool
    #: Battery energy (Wh) an optional socket waits for; 0 = none.
    threshold: float
    rank: int


class DayState:
    """A plan (one 0/1 row per socket, in priority order) and its simulated day."""

    def __init__(self, problem: PlanningProblem, rows: Mapping[str, Sequence[int]]) -> None:
        self.n = problem.n_steps
        self.dt = problem.dt_h
        self.a = list(problem.available_power_w)
        self.cap = problem.battery_capacity_wh
        self.pmax = problem.battery_power_w
        self.soc0 = min(problem.battery_stored_wh, self.cap)
        self.has_batt = self.cap > 0 and self.pmax > 0
        self.initial = problem.initial_on
        #: Steps that must lie between two switches of one socket (the switch interval).
        self.min_gap = max(1, math.ceil(problem.switch_interval_s / problem.step_s - 1e-9))
        socks = problem.ordered_sockets()
        self.socks = [
            _Sock(
                name=s.name,
                power=s.max_power_usage,
                room=s.room_wh(),
                needed=s.daily_need,
                threshold=(s.min_battery_charge * self.cap if self.has_batt else 0.0),
                rank=i,
            )
            for i, s in enumerate(socks)
        ]
        n = self.n
        self.rows: list[list[int]] = []
        for s in self.socks:
            row = [1 if v else 0 for v in list(rows.get(s.name, []))[:n]]
            row.extend([0] * (n - len(row)))
            self.rows.append(row)
        self.draws = [self._draw(i, self.rows[i]) for i in range(len(self.socks))]
        self.load = [0.0] * n
        #: Per step: sockets that must not be on in a deficit (optional, or full and idle).
        self.risky = [0] * n
        for i, d in enumerate(self.draws):
            for t in range(n):
                self.load[t] += d[t]
                self.risky[t] += self._risky(i, self.rows[i][t], d[t])
        self.thresholds = [(i, s.threshold) for i, s in enumerate(self.socks) if s.threshold > 0]
        self.stats = [self._stats(i, self.rows[i], self.draws[i]) for i in range(len(self.socks))]
        # The battery's path: energy, import so far and admissibility at the start of each
        # step (index n: the end), so a move re-simulates only from its first changed step.
        self.soc_pre = [0.0] * (n + 1)
        self.imp_pre = [0.0] * (n + 1)
        self.ok_pre = [True] * (n + 1)
        self.soc_pre[0] = self.soc0
        self.score = self._simulate()

    # -- physics -----------------------------------------------------------------------

    def _draw(self, i: int, row: Sequence[int]) -> list[float]:
        """Power the socket draws per step: full power while on, until its store is full."""
        s = self.socks[i]
        left = s.room
        out = [0.0] * self.n
        dt = self.dt
        for t in range(self.n):
            if row[t] and left > _EPS:
                d = s.power if left >= s.power * dt else left / dt
                out[t] = d
                left -= d * dt
        return out

    def _stats(
        self, i: int, row: Sequence[int], draw: Sequence[float]
    ) -> tuple[float, float, int, bool]:
        """(unmet need Wh, optional energy Wh, switches, switch spacing kept) of socket i."""
        s = self.socks[i]
        got = sum(draw) * self.dt
        unmet = max(0.0, s.room - got - UNMET_TOLERANCE_WH) if s.needed else 0.0
        opt = 0.0 if s.needed else got
        at = [t for t in range(1, self.n) if row[t] != row[t - 1]]
        init = self.initial.get(s.name)
        if init is not None and self.n and bool(row[0]) != init:
            at.insert(0, 0)
        spaced = all(b - a >= self.min_gap for a, b in pairwise(at))
        return unmet, opt, len(at), spaced

    def _risky(self, i: int, on: int, draw: float) -> int:
        """1 if socket i, on with this draw, must not be fed by battery or grid."""
        return 1 if on and (not self.socks[i].needed or draw <= 0) else 0

    def _run(self, start: int, record: bool) -> tuple[float, bool]:
        """Battery in zero mode from step `start` on: (grid import Wh, admissible).

        Starts from the recorded state at `start`; with `record`, records every step.
        """
        soc = self.soc_pre[start]
        imp = self.imp_pre[start]
        ok = self.ok_pre[start]
        dt, cap, pmax, has_batt = self.dt, self.cap, self.pmax, self.has_batt
        a, load, risky, rows, thresholds = self.a, self.load, self.risky, self.rows, self.thresholds
        for t in range(start, self.n):
            if record:
                self.soc_pre[t] = soc
                self.imp_pre[t] = imp
                self.ok_pre[t] = ok
            net = a[t] - load[t]
            if net < -_EPS and risky[t]:
                ok = False
            for i, thr in thresholds:
                if rows[i][t] and soc < thr - _EPS:
                    ok = False
            if has_batt:
                if net > 0:
                    b = min(net, pmax, (cap - soc) / dt)
                    soc += b * dt
                    net -= b
                elif net < 0:
                    b = min(-net, pmax, soc / dt)
                    soc -= b * dt
                    net += b
            if net < 0:
                imp -= net * dt
        if record:
            self.soc_pre[self.n] = soc
            self.imp_pre[self.n] = imp
            self.ok_pre[self.n] = ok
        return imp, ok

    def _score(self, imp: float, ok: bool) -> Score:
        if not ok:
            return (float("inf"), 0.0, 0.0, 0.0, 0)
        unmet = weighted = opt = 0.0
        switches = 0
        for i, (u, o, sw, spaced) in enumerate(self.stats):
            if not spaced:
                return (float("inf"), 0.0, 0.0, 0.0, 0)
            unmet += u
            weighted += u * (len(self.socks) - self.socks[i].rank)
            opt += o
            switches += sw
        return (round(unmet, 3), round(weighted, 3), round(imp, 3), -round(opt, 3), switches)

    def _simulate(self) -> Score:
        """Full evaluation of the current rows, recording the battery's path."""
        imp, ok = self._run(0, record=True)
        return self._score(imp, ok)

    # -- moves -------------------------------------------------------------------------

    def _swap_in(self, i: int, row: list[int], draw: list[float]) -> int:
        """Replace socket i's row and draw, keeping load and risk counts in step.

        Returns the first step that changed (n if none).
        """
        old_row, old_draw = self.rows[i], self.draws[i]
        load, risky = self.load, self.risky
        first = self.n
        for t in range(self.n):
            if draw[t] != old_draw[t] or row[t] != old_row[t]:
                if first == self.n:
                    first = t
                load[t] += draw[t] - old_draw[t]
                risky[t] += self._risky(i, row[t], draw[t]) - self._risky(
                    i, old_row[t], old_draw[t]
                )
        self.rows[i] = row
        self.draws[i] = draw
        return first

    def try_move(self, move: Move) -> Score:
        """Score the plan with the rows of a move replaced (the state is left unchanged)."""
        saved = [(i, self.rows[i], self.draws[i], self.stats[i]) for i, _ in move]
        first = self.n
        for i, row in move:
            draw = self._draw(i, row)
            first = min(first, self._swap_in(i, row, draw))
            self.stats[i] = self._stats(i, row, draw)
        imp, ok = self._run(first, record=False)
        score = self._score(imp, ok)
        for i, row, draw, stats in reversed(saved):
            self._swap_in(i, row, draw)
            self.stats[i] = stats
        return score

    def try_row(self, i: int, row: list[int]) -> Score:
        """Score the plan with socket i's row replaced (the state is left unchanged)."""
        return self.try_move(((i, row),))

    def apply_move(self, move: Move) -> None:
        for i, row in move:
            draw = self._draw(i, row)
            self._swap_in(i, row, draw)
            self.stats[i] = self._stats(i, row, draw)
        self.score = self._simulate()

    def apply_row(self, i: int, row: list[int]) -> None:
        self.apply_move(((i, row),))

    def spaced_row(self, row: list[int]) -> list[int]:
        """The row with switches at least the switch interval apart: on-runs too short to
        allow it are dropped, then off-gaps too short are bridged."""
        k = self.min_gap
        if k <= 1:
            return row
        out = list(row)
        runs = _runs(out)
        for lo, hi in runs:
            if hi - lo + 1 < k and lo > 0 and hi < self.n - 1:
                for t in range(lo, hi + 1):
                    out[t] = 0
        for (_, hi1), (lo2, _) in pairwise(_runs(out)):
            if lo2 - hi1 - 1 < k:
                for t in range(hi1 + 1, lo2):
                    out[t] = 1
        return out

    def _first_bad_step(self) -> int | None:
        """The first step where the plan is inadmissible (after `_simulate`), if any."""
        for t in range(self.n):
            if not self.ok_pre[t + 1]:
                return t
        return None

    def repair(self) -> None:
        """Make the plan admissible: switches spaced by the switch interval; then, at the
        first step the battery or grid would feed an optional or full socket, or an optional
        socket runs before the battery holds its threshold, that socket (the lowest priority
        one) is switched off there — its whole run where the switch interval needs it."""
        for i in range(len(self.socks)):
            spaced = self.spaced_row(self.rows[i])
            if spaced != self.rows[i]:
                self.apply_row(i, spaced)
        for _ in range(sum(sum(r) for r in self.rows) + 1):
            if self.score[0] != float("inf"):
                return
            t = self._first_bad_step()
            if t is None:
                return  # inadmissible only through spacing, which spaced_row settled
            soc = self.soc_pre[t]
            deficit = self.a[t] - self.load[t] < -_EPS
            offenders = [
                i
                for i, s in enumerate(self.socks)
                if self.rows[i][t]
                and (
                    (deficit and self._risky(i, 1, self.draws[i][t]))
                    or (not s.needed and s.threshold > 0 and soc < s.threshold - _EPS)
                )
            ]
            if not offenders:
                return
            i = max(offenders, key=lambda i: self.socks[i].rank)
            row = list(self.rows[i])
            lo = hi = t
            if self.min_gap > 1:
                while lo > 0 and row[lo - 1]:
                    lo -= 1
                while hi < self.n - 1 and row[hi + 1]:
                    hi += 1
            for u in range(lo, hi + 1):
                row[u] = 0
            self.apply_row(i, self.spaced_row(row))

    def plan(self) -> dict[str, list[int]]:
        return {s.name: list(self.rows[i]) for i, s in enumerate(self.socks)}


def _runs(row: Sequence[int]) -> list[tuple[int, int]]:
    """(first, last) step of each on-run."""
    out: list[tuple[int, int]] = []
    start = -1
    for t, v in enumerate(row):
        if v and start < 0:
            start = t
        elif not v and start >= 0:
            out.append((start, t - 1))
            start = -1
    if start >= 0:
        out.append((start, len(row) - 1))
    return out


def _candidates(state: DayState, i: int) -> Iterator[list[int]]:
    """Rows to try for socket i, the likeliest gains first.

    Additions (when the store still wants energy), then run moves (shift, grow, merge: fewer
    switches), then relocations of single steps, then removals.
    """
    row = state.rows[i]
    s = state.socks[i]
    n = state.n
    on = [t for t in range(n) if row[t]]
    off = [t for t in range(n) if not row[t]]
    # Remaining surplus per step without this socket: where it hurts least to draw.
    free = [state.a[t] - state.load[t] + state.draws[i][t] for t in range(n)]
    if not s.needed:
        off = [t for t in off if free[t] > _EPS]
    best_off = sorted(off, key=lambda t: (-free[t], t))[:10]
    worst_on = sorted(on, key=lambda t: (free[t], t))[:10]
    wants = sum(state.draws[i]) * state.dt < s.room - UNMET_TOLERANCE_WH
    if wants:
        k = state.min_gap
        for t2 in best_off:
            r = list(row)
            r[t2] = 1
            yield r
            if k > 1:  # a block the switch interval allows, after or before t2
                for lo in (t2, t2 - k + 1):
                    r = list(row)
                    for t in range(max(0, lo), min(n, lo + k)):
                        r[t] = 1
                    yield r
    runs = _runs(row)
    for lo, hi in runs:
        if lo > 0:  # shift left by one, grow left
            r = list(row)
            r[hi], r[lo - 1] = 0, 1
            yield r
            r = list(row)
            r[lo - 1] = 1
            yield r
        if hi < n - 1:  # shift right by one, grow right
            r = list(row)
            r[lo], r[hi + 1] = 0, 1
            yield r
            r = list(row)
            r[hi + 1] = 1
            yield r
    for (lo1, hi1), (lo2, hi2) in pairwise(runs):
        # Merge: move the second run against the first, or the first against the second,
        # or fill the gap (a full socket may stay on where the surplus covers it).
        length2 = hi2 - lo2 + 1
        r = list(row)
        for t in range(lo2, hi2 + 1):
            r[t] = 0
        for t in range(hi1 + 1, hi1 + 1 + length2):
            r[t] = 1
        yield r
        length1 = hi1 - lo1 + 1
        r = list(row)
        for t in range(lo1, hi1 + 1):
            r[t] = 0
        for t in range(lo2 - length1, lo2):
            r[t] = 1
        yield r
        r = list(row)
        for t in range(hi1 + 1, lo2):
            r[t] = 1
        yield r
    for t1 in worst_on:
        for t2 in best_off:
            r = list(row)
            r[t1], r[t2] = 0, 1
            yield r
    for t1 in worst_on[:6]:
        r = list(row)
        r[t1] = 0
        yield r


def _pair_candidates(state: DayState) -> list[Move]:
    """Moves of two sockets at once, which single-socket moves cannot reach:

    - exchange: two sockets of equal power trade an on-step at the edge of a run (load
      unchanged, runs merged: fewer switches);
    - ejection: an optional socket takes a step a needed socket occupied, and the needed
      socket moves to one of its best free steps (more surplus into optional stores).
    """
    n = state.n
    out: list[Move] = []
    socks = state.socks
    for i, si in enumerate(socks):
        runs_i = _runs(state.rows[i])
        if not runs_i:
            continue
        edges = {t for lo, hi in runs_i for t in (lo, hi)}
        beside = {t for lo, hi in runs_i for t in (lo - 1, hi + 1) if 0 <= t < n}
        for j, sj in enumerate(socks):
            if j == i or abs(si.power - sj.power) > 1e-6:
                continue
            ri, rj = state.rows[i], state.rows[j]
            for t2 in sorted(beside):
                if not rj[t2] or ri[t2]:
                    continue
                for t1 in sorted(edges):
                    if rj[t1] or not ri[t1]:
                        continue
                    a, b = list(ri), list(rj)
                    a[t1], a[t2] = 0, 1
                    b[t2], b[t1] = 0, 1
                    out.append(((i, a), (j, b)))
    for o, so in enumerate(socks):
        if so.needed or so.room <= 0:
            continue
        ro = state.rows[o]
        got = sum(state.draws[o]) * state.dt
        if got >= so.room - UNMET_TOLERANCE_WH:
            continue
        free_o = [state.a[t] - state.load[t] + state.draws[o][t] for t in range(n)]
        tried = 0
        for t in sorted(range(n), key=lambda t: (-state.a[t], t)):
            if ro[t] or state.a[t] < so.power or free_o[t] >= so.power or tried >= 8:
                continue
            for k, sk in enumerate(socks):
                if k == o or not state.rows[k][t] or not sk.needed:
                    continue
                if free_o[t] + state.draws[k][t] < so.power - 1e-9:
                    continue
                rk = state.rows[k]
                free_k = [state.a[u] - state.load[u] + state.draws[k][u] for u in range(n)]
                dest = sorted(
                    (u for u in range(n) if not rk[u] and u != t), key=lambda u: (-free_k[u], u)
                )
                for u in dest[:4]:
                    nk, no = list(rk), list(ro)
                    nk[t], nk[u] = 0, 1
                    no[t] = 1
                    out.append(((k, nk), (o, no)))
                tried += 1
                break
    return out


class Budget:
    """How many more moves the search may evaluate (shared by several searches)."""

    def __init__(self, evals: int) -> None:
        self.left = evals

    def spend(self) -> bool:
        """Take one evaluation; False when none is left."""
        if self.left <= 0:
            return False
        self.left -= 1
        return True


def improve(
    state: DayState,
    deadline: float,
    budget: Budget | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[int, bool]:
    """First-improvement local search until no move helps or the deadline passes.

    Socket by socket, single-socket moves are applied while one helps; when a whole sweep
    changes nothing, two-socket moves are tried; it stops when neither helps.
    Stops early when the budget of evaluations is spent or the deadline passes.
    Returns (moves applied, converged).
    """
    moves = 0
    budget = budget or Budget(10**9)
    while True:
        improved = False
        for i in range(len(state.socks)):
            again = True
            while again:
                again = False
                for row in _candidates(state, i):
                    if not budget.spend() or clock() > deadline:
                        return moves, False
                    score = state.try_row(i, row)
                    if score < state.score:
                        state.apply_row(i, row)
                        moves += 1
                        improved = again = True
                        break
        if improved:
            continue
        for move in _pair_candidates(state):
            if not budget.spend() or clock() > deadline:
                return moves, False
            score = state.try_move(move)
            if score < state.score:
                state.apply_move(move)
                moves += 1
                improved = True
                break
        if not improved:
            return moves, True
