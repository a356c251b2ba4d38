"""Local search on plans against the exact day physics (pure Python, no I/O, no clock).

`DayState` holds a plan (socket rows, and the batteries' modes when the plan has them)
together with its simulated day, and re-simulates incrementally when rows change: the
socket's draw profile is recomputed, the house load updated, and the battery re-run from
the first changed step. A move costs O(steps), so the search tries thousands of moves in a
fraction of a second. The physics are those of `simulate` (a test keeps them equal).

Quality (`Score`, smaller is better, compared in this order):
1. unmet need, Wh (total; then weighted by priority: the first socket's Wh weigh most);
2. steps of minimum on / off times not kept (`simulate.hold_violations`);
3. the cost: without prices grid import (Wh) + `switch_cost_wh` per switch; with prices the
   net cost (import cost - export earnings - value put into optional stores) in Wh of import
   at the horizon's mean import price, + `switch_cost_wh` per switch;
4. without prices: energy into optional stores (more is better);
5. switches (relay switches and battery mode changes);
6. energy into optional stores weighted by priority (the first socket's Wh weigh most).

A plan is *admissible* when no optional socket draws power in a step that grid or battery
feeds (except where the import price allows it: `optional_grid_price_max`), no optional socket
draws before the battery holds its `min_battery_charge`, and every socket's (and the mode's)
switches lie at least the switch interval apart. The search never accepts an inadmissible
plan; `repair` makes one admissible.

Budgets are counts of evaluated moves (`Budget`), never time: the same input always gives
the same plan.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

from shared.planning.problem import BATTERY_MODES, BatteryMode, PlanningProblem
from shared.planning.simulate import (
    UNMET_TOLERANCE_WH,
    hold_spans,
    hold_violations,
    initial_hold,
    optional_value_eur_kwh,
    price_allows_optional,
)

_EPS = 1e-6
_INF = float("inf")

#: (unmet Wh, priority-weighted unmet, hold violations, cost Wh-eq, -optional Wh, switches,
#: -priority-weighted optional Wh)
Score = tuple[float, float, int, float, float, int, float]
INADMISSIBLE: Score = (_INF, _INF, 0, 0.0, 0.0, 0, 0.0)
#: A move: new rows for one or more sockets (by index).
Move = tuple[tuple[int, list[int]], ...]
#: `risky_row`'s values: the socket must not be fed by battery or grid in the step; the
#: socket must not be on in the step at all (full, kept on where the forecast surplus does
#: not cover its power: a draw from its store would re-heat it from battery or grid).
FED_RISK = 1
KEPT_SHORT = 2
#: Without prices but with a switch cost: Wh of grid import that a Wh into an optional store
#: is worth in the cost, the yardstick's own rate (its score: 10 x import - optional). So a
#: switch costing `switch_cost_wh` pays for itself once a run stores ten times that in
#: optional energy; without it, any switch outweighed any optional energy, and an optional
#: socket that needed one (switched on, or off before the sun goes) was never planned at
#: all. Without a switch cost the order stays strict: import, then optional energy.
OPTIONAL_WORTH = 0.1


@dataclass(frozen=True, slots=True)
class _Sock:
    name: str
    power: float
    room: float
    needed: bool
    #: Battery energy (Wh) an optional socket waits for; 0 = none.
    threshold: float
    rank: int
    #: State now (None: unknown) and steps it should hold it.
    init: bool | None
    held: int
    #: With prices: Wh-eq of value per Wh into this (optional) store.
    worth: float


class Context:
    """What every plan of one problem shares: the day, the sockets, prices, rules."""

    def __init__(self, problem: PlanningProblem) -> None:
        self.problem = problem
        self.n = problem.n_steps
        self.dt = problem.dt_h
        self.a = list(problem.available_power_w)
        self.cap = problem.battery_capacity_wh
        self.pmax = problem.battery_power_w
        self.soc0 = min(problem.battery_stored_wh, self.cap)
        self.has_batt = self.cap > 0 and self.pmax > 0
        #: Steps that must lie between two switches of one socket (the switch interval).
        self.min_gap = max(1, math.ceil(problem.switch_interval_s / problem.step_s - 1e-9))
        self.up, self.down = hold_spans(problem)
        imp = problem.import_prices()
        exp = problem.planning_export_prices()  # with the forecast risk
        self.priced = imp is not None and exp is not None
        self.p_imp = imp or [0.0] * self.n
        self.p_exp = exp or [0.0] * self.n
        mean = sum(self.p_imp) / self.n if self.priced else 0.0
        #: Wh of import-equivalent per EUR (with prices): 1 kWh at the mean import price.
        self.wh_per_eur = 1000.0 / mean if mean > 1e-6 else 1000.0 / 0.01
        self.mean_price = mean
        self.allowed = price_allows_optional(problem)
        #: The batteries' best modes by socket rows (`optimal._with_best_modes`): the same
        #: rows always give the same modes, so a search that comes back to rows it has seen
        #: does not run the dynamic programme again.
        self.best_modes_memo: dict[tuple[tuple[int, ...], ...], list[BatteryMode] | None] = {}
        worth = optional_value_eur_kwh(problem)
        socks = problem.optimal_order()
        self.socks: list[_Sock] = []
        for i, s in enumerate(socks):
            init, held = initial_hold(problem, s.name)
            self.socks.append(
                _Sock(
                    name=s.name,
                    power=s.max_power_usage,
                    room=s.room_wh(),
                    needed=s.daily_need,
                    threshold=(
                        s.min_battery_charge * self.cap
                        if self.has_batt and not s.daily_need
                        else 0.0
                    ),
                    rank=i,
                    init=init,
                    held=held,
                    # EUR/kWh -> Wh-eq per Wh: value / 1000 EUR per Wh x wh_per_eur.
                    worth=worth.get(s.name, 0.0) / 1000.0 * self.wh_per_eur,
                )
            )
        self.switch_cost = problem.switch_cost_wh
        self.initial_mode: BatteryMode | None = problem.initial_battery_mode
        self.thresholds = [(i, s.threshold) for i, s in enumerate(self.socks) if s.threshold > 0]

    def index(self, name: str) -> int:
        for i, s in enumerate(self.socks):
            if s.name == name:
                return i
        raise KeyError(name)


def _battery(
    mode: str, net: float, soc: float, cap: float, pmax: float, dt: float, has_batt: bool
) -> float:
    """Battery power (W, + charging) in one step: `simulate.battery_step`, inlined for speed."""
    if not has_batt:
        return 0.0
    if mode == "to_full":
        return min(pmax, max(0.0, (cap - soc) / dt))
    if net > 0:
        if mode in ("zero", "charge_only"):
            return min(net, pmax, max(0.0, (cap - soc) / dt))
        return 0.0
    if net < 0 and mode in ("zero", "discharge_only"):
        return -min(-net, pmax, max(0.0, soc / dt))
    return 0.0


class DayState:
    """A plan (one 0/1 row per socket, in priority order; modes or None) and its day."""

    def __init__(
        self,
        ctx: Context | PlanningProblem,
        rows: Mapping[str, Sequence[int]],
        modes: Sequence[BatteryMode] | None = None,
    ) -> None:
        if isinstance(ctx, PlanningProblem):
            ctx = Context(ctx)
        self.ctx = ctx
        n = self.n = ctx.n
        self.rows: list[list[int]] = []
        for s in ctx.socks:
            row = [1 if v else 0 for v in list(rows.get(s.name, []))[:n]]
            row.extend([0] * (n - len(row)))
            self.rows.append(row)
        self.modes: list[BatteryMode] | None = None
        if modes is not None:
            m: list[BatteryMode] = list(modes)[:n]
            m.extend(["zero"] * (n - len(m)))
            self.modes = m
        self.draws = [self._draw(i, self.rows[i]) for i in range(len(ctx.socks))]
        self.load = [0.0] * n
        #: Per socket and step: `FED_RISK` where the socket must not be fed by battery or
        #: grid (an optional socket drawing; a full socket kept on outside its minimum on
        #: time), `KEPT_SHORT` where it must not be on at all (`risky_row`).
        self.risky_rows = [
            risky_row(ctx, i, self.rows[i], self.draws[i]) for i in range(len(ctx.socks))
        ]
        #: Per step: how many sockets must not be fed by battery or grid, and how many are
        #: full and kept on where the surplus does not cover them (the step is inadmissible).
        self.opt_on = [0] * n
        self.short_on = [0] * n
        for i, d in enumerate(self.draws):
            rr = self.risky_rows[i]
            for t in range(n):
                self.load[t] += d[t]
                if rr[t]:
                    self.opt_on[t] += 1
                    if rr[t] == KEPT_SHORT:
                        self.short_on[t] += 1
        self.stats = [self._stats(i, self.rows[i], self.draws[i]) for i in range(len(ctx.socks))]
        self.mode_stats = self._mode_stats(self.modes)
        # The battery's path: energy, cost so far and admissibility at the start of each
        # step (index n: the end), so a move re-simulates only from its first changed step.
        self.soc_pre = [0.0] * (n + 1)
        self.cost_pre = [0.0] * (n + 1)
        self.ok_pre = [True] * (n + 1)
        #: Per step: inadmissible in the recorded day; the first such step from each step on.
        self.bad_at = [False] * (n + 1)
        self.next_bad = [n] * (n + 1)
        self.soc_pre[0] = ctx.soc0
        self.score = self._simulate()

    # -- physics -----------------------------------------------------------------------

    def _draw(self, i: int, row: Sequence[int]) -> list[float]:
        """Power the socket draws per step: full power while on, until its store is full."""
        s = self.ctx.socks[i]
        left = s.room
        out = [0.0] * self.n
        dt = self.ctx.dt
        for t in range(self.n):
            if row[t] and left > _EPS:
                d = s.power if left >= s.power * dt else left / dt
                out[t] = d
                left -= d * dt
        return out

    def _stats(
        self, i: int, row: Sequence[int], draw: Sequence[float]
    ) -> tuple[float, float, int, bool, int]:
        """(unmet need Wh, optional energy Wh, switches, switch spacing kept, hold violations)."""
        ctx = self.ctx
        s = ctx.socks[i]
        got = sum(draw) * ctx.dt
        unmet = max(0.0, s.room - got - UNMET_TOLERANCE_WH) if s.needed else 0.0
        opt = 0.0 if s.needed else got
        at = [t for t in range(1, self.n) if row[t] != row[t - 1]]
        if s.init is not None and self.n and bool(row[0]) != s.init:
            at.insert(0, 0)
        spaced = all(b - a >= ctx.min_gap for a, b in pairwise(at))
        holds = 0
        if ctx.up > 1 or ctx.down > 1 or s.held:
            holds = hold_violations(row, s.init, s.held, ctx.up, ctx.down)
        return unmet, opt, len(at), spaced, holds

    def _mode_stats(self, modes: Sequence[str] | None) -> tuple[int, bool]:
        """(mode changes, spacing kept) of the battery's mode row."""
        if modes is None:
            return 0, True
        at = [t for t in range(1, self.n) if modes[t] != modes[t - 1]]
        init = self.ctx.initial_mode
        if init is not None and self.n and modes[0] != init:
            at.insert(0, 0)
        spaced = all(b - a >= self.ctx.min_gap for a, b in pairwise(at))
        return len(at), spaced

    def _run(self, start: int, record: bool, last: int = -1) -> tuple[float, bool]:
        """The battery from step `start` on: (cost at the end, admissible).

        Cost: Wh of grid import; with prices, import cost - export earnings in Wh-eq.
        Starts from the recorded state at `start`; with `record`, records every step.
        Without, once past `last` (the last step whose load or mode changed) with the
        battery back on its recorded path, the rest is the recorded day.
        """
        ctx = self.ctx
        soc = self.soc_pre[start]
        cost = self.cost_pre[start]
        ok = self.ok_pre[start]
        dt, cap, pmax, has_batt = ctx.dt, ctx.cap, ctx.pmax, ctx.has_batt
        a, load, opt_on, thresholds = ctx.a, self.load, self.opt_on, ctx.thresholds
        short_on = self.short_on
        draws = self.draws
        priced, p_imp, p_exp, allowed = ctx.priced, ctx.p_imp, ctx.p_exp, ctx.allowed
        scale = ctx.wh_per_eur / 1000.0 * dt  # W x EUR/kWh -> Wh-eq in one step
        modes = self.modes
        soc_pre, cost_pre, ok_pre = self.soc_pre, self.cost_pre, self.ok_pre
        bad_at = self.bad_at
        n = self.n
        for t in range(start, n):
            if record:
                soc_pre[t] = soc
                cost_pre[t] = cost
                ok_pre[t] = ok
            elif t > last and -1e-9 < soc - soc_pre[t] < 1e-9:
                # Back on the recorded path: the rest of the day is as recorded.
                rest_ok = self.next_bad[t] >= n
                return cost + cost_pre[n] - cost_pre[t], ok and rest_ok
            net = a[t] - load[t]
            step_ok = True
            if has_batt:
                mode = modes[t] if modes is not None else "zero"
                if mode == "zero":  # the common case, inlined
                    if net > 0:
                        room = (cap - soc) / dt
                        b = net if net < pmax else pmax
                        if room < b:
                            b = room if room > 0 else 0.0
                    elif net < 0:
                        have = soc / dt
                        b = -net if -net < pmax else pmax
                        if have < b:
                            b = have if have > 0 else 0.0
                        b = -b
                    else:
                        b = 0.0
                else:
                    b = _battery(mode, net, soc, cap, pmax, dt, True)
                if thresholds:
                    for i, thr in thresholds:
                        if draws[i][t] > 0 and soc < thr - _EPS:
                            step_ok = False
                soc += b * dt
            else:
                b = 0.0
            g = b - net  # + import
            if opt_on[t] and (short_on[t] or ((g * dt > 1e-9 or b < -1e-9) and not allowed[t])):
                step_ok = False
            if priced:
                cost += (g * p_imp[t] if g > 0 else g * p_exp[t]) * scale
            elif g > 0:
                cost += g * dt
            if not step_ok:
                ok = False
            if record:
                bad_at[t] = not step_ok
        if record:
            soc_pre[n] = soc
            cost_pre[n] = cost
            ok_pre[n] = ok
            nxt = n
            for t in range(n - 1, -1, -1):
                if bad_at[t]:
                    nxt = t
                self.next_bad[t] = nxt
        return cost, ok

    def first_bad_from(self, t: int) -> int:
        """The first recorded inadmissible step at or after t (n if none)."""
        return self.next_bad[t] if t < self.n else self.n

    def _score(self, cost: float, ok: bool) -> Score:
        if not ok:
            return INADMISSIBLE
        ctx = self.ctx
        unmet = weighted = opt = opt_weighted = 0.0
        switches = holds = 0
        value = 0.0
        k = len(ctx.socks)
        for i, (u, o, sw, spaced, h) in enumerate(self.stats):
            if not spaced:
                return INADMISSIBLE
            unmet += u
            weighted += u * (k - ctx.socks[i].rank)
            opt += o
            opt_weighted += o * (k - ctx.socks[i].rank)
            value += o * ctx.socks[i].worth
            switches += sw
            holds += h
        msw, mspaced = self.mode_stats
        if not mspaced:
            return INADMISSIBLE
        switches += msw
        money = cost + ctx.switch_cost * switches
        if ctx.priced:
            money -= value
            opt = 0.0
        elif ctx.switch_cost > 0:
            money -= OPTIONAL_WORTH * opt
        return (
            round(unmet, 3),
            round(weighted, 3),
            holds,
            round(money, 3),
            -round(opt, 3),
            switches,
            -round(opt_weighted, 3),
        )

    def _simulate(self) -> Score:
        """Full evaluation of the current plan, recording the battery's path."""
        cost, ok = self._run(0, record=True)
        return self._score(cost, ok)

    # -- moves -------------------------------------------------------------------------

    def _swap_in(
        self, i: int, row: list[int], draw: list[float], risky: list[int] | None = None
    ) -> tuple[int, int]:
        """Replace socket i's row and draw, keeping load and counts in step.

        Returns the first and the last step that changed (n, -1 if none).
        """
        old_row, old_draw, old_risky = self.rows[i], self.draws[i], self.risky_rows[i]
        if risky is None:
            risky = risky_row(self.ctx, i, row, draw)
        load, opt_on, short_on = self.load, self.opt_on, self.short_on
        first, last = self.n, -1
        for t in range(self.n):
            if draw[t] != old_draw[t] or row[t] != old_row[t] or risky[t] != old_risky[t]:
                if first == self.n:
                    first = t
                last = t
                load[t] += draw[t] - old_draw[t]
                if risky[t] != old_risky[t]:
                    opt_on[t] += (risky[t] > 0) - (old_risky[t] > 0)
                    short_on[t] += (risky[t] == KEPT_SHORT) - (old_risky[t] == KEPT_SHORT)
        self.rows[i] = row
        self.draws[i] = draw
        self.risky_rows[i] = risky
        return first, last

    def try_move(self, move: Move, modes: list[BatteryMode] | None = None) -> Score:
        """Score the plan with the rows of a move (and modes) replaced; the state is kept."""
        saved = [
            (i, self.rows[i], self.draws[i], self.stats[i], self.risky_rows[i]) for i, _ in move
        ]
        saved_modes, saved_mstats = self.modes, self.mode_stats
        first, last = self.n, -1
        for i, row in move:
            draw = self._draw(i, row)
            lo, hi = self._swap_in(i, row, draw)
            first, last = min(first, lo), max(last, hi)
            self.stats[i] = self._stats(i, row, draw)
        if modes is not None:
            lo, hi = _diff_range(modes, self.modes, self.n)
            first, last = min(first, lo), max(last, hi)
            self.modes = modes
            self.mode_stats = self._mode_stats(modes)
        cost, ok = self._run(first, record=False, last=last)
        score = self._score(cost, ok)
        for i, row, draw, stats, risky in reversed(saved):
            self._swap_in(i, row, draw, risky)
            self.stats[i] = stats
        self.modes, self.mode_stats = saved_modes, saved_mstats
        return score

    def try_row(self, i: int, row: list[int]) -> Score:
        """Score the plan with socket i's row replaced (the state is left unchanged)."""
        return self.try_move(((i, row),))

    def try_modes(self, modes: list[BatteryMode]) -> Score:
        return self.try_move((), modes)

    def apply_move(self, move: Move, modes: list[BatteryMode] | None = None) -> None:
        for i, row in move:
            draw = self._draw(i, row)
            self._swap_in(i, row, draw)
            self.stats[i] = self._stats(i, row, draw)
        if modes is not None:
            self.modes = modes
            self.mode_stats = self._mode_stats(modes)
        self.score = self._simulate()

    def apply_row(self, i: int, row: list[int]) -> None:
        self.apply_move(((i, row),))

    def spaced_row(self, row: list[int], i: int | None = None) -> list[int]:
        """The row with switches at least the switch interval apart: on-runs too short to
        allow it are dropped, then off-gaps too short are bridged."""
        k = self.ctx.min_gap
        if k <= 1:
            return row
        out = list(row)
        for lo, hi in on_runs(out):
            if hi - lo + 1 < k and lo > 0 and hi < self.n - 1:
                for t in range(lo, hi + 1):
                    out[t] = 0
        for (_, hi1), (lo2, _) in pairwise(on_runs(out)):
            if lo2 - hi1 - 1 < k:
                for t in range(hi1 + 1, lo2):
                    out[t] = 1
        if i is not None:
            init = self.ctx.socks[i].init
            at = [t for t in range(1, self.n) if out[t] != out[t - 1]]
            if init is not None and self.n and bool(out[0]) != init and at and at[0] < k:
                # A switch at step 0 (against the state now) too close to the next one:
                # keep the state now until then.
                for t in range(at[0]):
                    out[t] = 1 if init else 0
        return out

    def spaced_modes(self, modes: list[BatteryMode]) -> list[BatteryMode]:
        """Modes with changes at least the switch interval apart: a mode held for too short a
        time takes the mode before it."""
        k = self.ctx.min_gap
        out = list(modes)
        if k <= 1:
            return out
        if not out:
            return out
        init = self.ctx.initial_mode
        prev: BatteryMode = out[0] if init is None else init
        last = -(10**9) if init is None else 0
        for t in range(self.n):
            if out[t] != prev:
                if t - last < k and not (t == 0 and init is None):
                    out[t] = prev
                    continue
                last = t
                prev = out[t]
        return out

    def _first_bad_step(self) -> int | None:
        """The first step where the plan is inadmissible (after `_simulate`), if any."""
        for t in range(self.n):
            if not self.ok_pre[t + 1]:
                return t
        return None

    def repair(self) -> None:
        """Make the plan admissible: switches spaced by the switch interval; then, at the
        first step the battery or grid would feed an optional socket that is drawing, or an
        optional socket draws before the battery holds its threshold, that socket (the lowest
        priority one) is switched off there — its whole run where the switch interval needs
        it."""
        ctx = self.ctx
        for i in range(len(ctx.socks)):
            spaced = self.spaced_row(self.rows[i], i)
            if spaced != self.rows[i]:
                self.apply_row(i, spaced)
        if self.modes is not None:
            sm = self.spaced_modes(self.modes)
            if sm != self.modes:
                self.apply_move((), sm)
        for _ in range(sum(sum(r) for r in self.rows) + 1):
            if self.score[0] != _INF:
                return
            t = self._first_bad_step()
            if t is None:
                return  # inadmissible only through spacing, which the above settled
            soc = self.soc_pre[t]
            net = ctx.a[t] - self.load[t]
            mode = self.modes[t] if self.modes is not None else "zero"
            b = _battery(mode, net, soc, ctx.cap, ctx.pmax, ctx.dt, ctx.has_batt)
            fed = (b - net) * ctx.dt > 1e-9 or b < -1e-9
            offenders = [
                i
                for i, s in enumerate(ctx.socks)
                if self.risky_rows[i][t] == KEPT_SHORT
                or (fed and not ctx.allowed[t] and self.risky_rows[i][t])
                or (s.threshold > 0 and self.draws[i][t] > 0 and soc < s.threshold - _EPS)
            ]
            if not offenders:
                return
            # A full socket kept on goes off first (it loses nothing), then the lowest priority.
            i = max(offenders, key=lambda i: (self.draws[i][t] <= 0, ctx.socks[i].rank))
            row = list(self.rows[i])
            lo = hi = t
            if self.draws[i][t] <= 0:
                # Full: off from here to the end of its run (it draws nothing there).
                while hi < self.n - 1 and row[hi + 1]:
                    hi += 1
            elif ctx.min_gap > 1:
                while lo > 0 and row[lo - 1]:
                    lo -= 1
                while hi < self.n - 1 and row[hi + 1]:
                    hi += 1
            for u in range(lo, hi + 1):
                row[u] = 0
            self.apply_row(i, self.spaced_row(row, i))

    def plan(self) -> dict[str, list[int]]:
        return {s.name: list(self.rows[i]) for i, s in enumerate(self.ctx.socks)}

    def copy(self) -> DayState:
        return DayState(self.ctx, self.plan(), self.modes)


def hold_exempt(ctx: Context, i: int, row: Sequence[int]) -> list[bool]:
    """Steps where socket i is inside a minimum on time: the state held now (`initial_on`
    with `initial_since_s`), or the first `min_on_s` of a run the plan starts."""
    s = ctx.socks[i]
    n = ctx.n
    out = [False] * n
    if s.init and s.held:
        for t in range(min(s.held, n)):
            if not row[t]:
                break
            out[t] = True
    if ctx.up > 1:
        for lo, hi in on_runs(row):
            if lo == 0 and s.init is not False:
                continue  # no switch on at step 0 (on already, or state unknown)
            for t in range(lo, min(hi + 1, lo + ctx.up)):
                out[t] = True
    return out


def risky_row(ctx: Context, i: int, row: Sequence[int], draw: Sequence[float]) -> list[int]:
    """Per step, `FED_RISK` where socket i must not be fed by battery or grid: an optional
    socket drawing power (the first rule), or a full socket kept on outside a minimum on
    time (it would heat from the grid on its standing losses); `KEPT_SHORT` where such a
    full socket is kept on where the forecast surplus does not cover its power (and the
    price does not allow the grid): a draw from its store (a shower, a tap) would re-heat
    it at full power from battery or grid, so it must not be on there at all."""
    s = ctx.socks[i]
    n = ctx.n
    out = [0] * n
    exempt: list[bool] | None = None
    for t in range(n):
        if not row[t]:
            continue
        if draw[t] > 0:
            if not s.needed:
                out[t] = FED_RISK
        else:
            if exempt is None:
                exempt = hold_exempt(ctx, i, row)
            if not exempt[t]:
                short = ctx.a[t] < s.power - _EPS and not ctx.allowed[t]
                out[t] = KEPT_SHORT if short else FED_RISK
    return out


def _diff_range(a: Sequence[str], b: Sequence[str] | None, n: int) -> tuple[int, int]:
    """First and last step where two mode rows differ (n, -1 if none)."""
    if b is None:
        return 0, n - 1
    diff = [t for t in range(n) if a[t] != b[t]]
    return (diff[0], diff[-1]) if diff else (n, -1)


def on_runs(row: Sequence[int]) -> list[tuple[int, int]]:
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


def _gaps(row: Sequence[int]) -> list[tuple[int, int]]:
    """(first, last) step of each off-gap between two on-runs."""
    return [(hi1 + 1, lo2 - 1) for (_, hi1), (lo2, _) in pairwise(on_runs(row))]


def _candidates(state: DayState, i: int) -> Iterator[list[int]]:
    """Rows to try for socket i, the likeliest gains first.

    Additions (when the store still wants energy), then run moves (shift, grow, merge: fewer
    switches), then relocations of single steps, then removals; with minimum on / off times,
    runs and gaps made long enough.
    """
    ctx = state.ctx
    row = state.rows[i]
    s = ctx.socks[i]
    n = state.n
    on = [t for t in range(n) if row[t]]
    off = [t for t in range(n) if not row[t]]
    # Remaining surplus per step without this socket: where it hurts least to draw.
    free = [ctx.a[t] - state.load[t] + state.draws[i][t] for t in range(n)]
    if ctx.priced:
        # With prices, the cheapest steps to draw in: price-weighted shortfall.
        def cost_at(t: int) -> float:
            short = max(0.0, s.power - max(0.0, free[t]))
            return short * ctx.p_imp[t] - min(s.power, max(0.0, free[t])) * ctx.p_exp[t]

        rank_off = sorted(off, key=lambda t: (cost_at(t), t))
        rank_on = sorted(on, key=lambda t: (-cost_at(t), t))
    else:
        rank_off = sorted(off, key=lambda t: (-free[t], t))
        rank_on = sorted(on, key=lambda t: (free[t], t))
    if not s.needed:
        rank_off = [t for t in rank_off if free[t] > _EPS or ctx.allowed[t]]
    best_off = rank_off[:10]
    worst_on = rank_on[:10]
    wants = sum(state.draws[i]) * ctx.dt < s.room - UNMET_TOLERANCE_WH
    k = max(ctx.min_gap, ctx.up)
    if wants:
        for t2 in best_off:
            r = list(row)
            r[t2] = 1
            yield r
            if k > 1:  # a block the switch interval / minimum on time allows
                for lo in (t2, t2 - k + 1):
                    r = list(row)
                    for t in range(max(0, lo), min(n, lo + k)):
                        r[t] = 1
                    yield r
    runs = on_runs(row)
    for lo, hi in runs:
        length = hi - lo + 1
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
        if ctx.up > 1 and length < ctx.up and hi < n - 1:
            # Too short for the minimum on time: long enough (right, then left), or gone.
            r = list(row)
            for t in range(hi + 1, min(n, lo + ctx.up)):
                r[t] = 1
            yield r
            r = list(row)
            for t in range(max(0, hi - ctx.up + 1), lo):
                r[t] = 1
            yield r
            r = list(row)
            for t in range(lo, hi + 1):
                r[t] = 0
            yield r
    if runs:
        # Stay on to the horizon's end, or from its start (one switch fewer, where a full
        # socket may stay on).
        lo, hi = runs[-1]
        if hi < n - 1:
            r = list(row)
            for t in range(hi + 1, n):
                r[t] = 1
            yield r
        lo, hi = runs[0]
        if lo > 0 and s.init is not False:
            r = list(row)
            for t in range(lo):
                r[t] = 1
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
    if ctx.switch_cost > 0 and not s.needed:
        # A whole run off: with a switch cost a short optional run may store less than its
        # two switches cost, and removing it step by step passes through plans no better.
        for lo, hi in runs:
            r = list(row)
            for t in range(lo, hi + 1):
                r[t] = 0
            yield r
    if s.init is not None and s.held and n:
        # Keep the state now for as long as it should be held.
        r = list(row)
        for t in range(min(s.held, n)):
            r[t] = 1 if s.init else 0
        yield r


def _pair_candidates(state: DayState) -> list[Move]:
    """Moves of two sockets at once, which single-socket moves cannot reach:

    - exchange: two sockets of equal power trade an on-step at the edge of a run (load
      unchanged, runs merged: fewer switches);
    - ejection: an optional socket takes a step a needed socket occupied, and the needed
      socket moves to one of its best free steps (more surplus into optional stores).
    """
    ctx = state.ctx
    n = state.n
    out: list[Move] = []
    socks = ctx.socks
    for i, si in enumerate(socks):
        runs_i = on_runs(state.rows[i])
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
        got = sum(state.draws[o]) * ctx.dt
        if got >= so.room - UNMET_TOLERANCE_WH:
            continue
        free_o = [ctx.a[t] - state.load[t] + state.draws[o][t] for t in range(n)]
        tried = 0
        for t in sorted(range(n), key=lambda t: (-ctx.a[t], t)):
            if ro[t] or ctx.a[t] < so.power or free_o[t] >= so.power or tried >= 8:
                continue
            for k, sk in enumerate(socks):
                if k == o or not state.rows[k][t] or not sk.needed:
                    continue
                if free_o[t] + state.draws[k][t] < so.power - 1e-9:
                    continue
                rk = state.rows[k]
                free_k = [ctx.a[u] - state.load[u] + state.draws[k][u] for u in range(n)]
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


def _mode_candidates(state: DayState) -> Iterator[list[BatteryMode]]:
    """Mode rows to try: each step's mode changed to another, stretched over the switch
    interval (and merged with its neighbours' modes)."""
    modes = state.modes
    if modes is None:
        return
    n = state.n
    k = state.ctx.min_gap
    for t in range(n):
        for m in BATTERY_MODES:
            if m == modes[t]:
                continue
            r = list(modes)
            for u in range(t, min(n, t + k)):
                r[u] = m
            yield r


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


def improve(state: DayState, budget: Budget, modes: bool = False) -> tuple[int, bool]:
    """First-improvement local search until no move helps or the budget is spent.

    Socket by socket, single-socket moves are applied while one helps; when a whole sweep
    changes nothing, two-socket moves are tried, then (with `modes`) single-step mode
    changes; it stops when none helps. Returns (moves applied, converged).
    """
    moves = 0
    while True:
        improved = False
        for i in range(len(state.ctx.socks)):
            again = True
            while again:
                again = False
                for row in _candidates(state, i):
                    if not budget.spend():
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
            if not budget.spend():
                return moves, False
            score = state.try_move(move)
            if score < state.score:
                state.apply_move(move)
                moves += 1
                improved = True
                break
        if improved:
            continue
        if modes and state.modes is not None:
            for m in _mode_candidates(state):
                if not budget.spend():
                    return moves, False
                score = state.try_modes(m)
                if score < state.score:
                    state.apply_move((), m)
                    moves += 1
                    improved = True
                    break
        if not improved:
            return moves, True


def _block(n: int, lo: int, length: int) -> list[int]:
    """A row on for `length` steps from `lo` (clipped to the horizon), off elsewhere."""
    r = [0] * n
    for t in range(max(0, lo), min(n, lo + length)):
        r[t] = 1
    return r


def _block_lengths(state: DayState, i: int) -> list[int]:
    """Run lengths that hold socket i's energy in one run: the steps it draws in, and the
    steps it is on (a full socket kept on), the shorter first."""
    drawing = sum(1 for d in state.draws[i] if d > 0)
    on = sum(state.rows[i])
    return sorted({v for v in (drawing, on) if v > 0})


def _block_starts(
    state: DayState,
    i: int,
    length: int,
    edges: bool = False,
    span: tuple[int, int] | None = None,
) -> list[int]:
    """Where a run of socket i of `length` steps may start: every position (with `span`,
    from its first to its last step only), nearest to the socket's present first on-step
    first (ties: earlier); for an optional socket not where a full-power step would lack
    the surplus (the first rule would forbid it outright). With `edges`, only at the
    horizon's start or end (a run that touches one saves a switch)."""
    ctx = state.ctx
    s = ctx.socks[i]
    n = state.n
    row = state.rows[i]
    on = [t for t in range(n) if row[t]]
    if not on or length > n:
        return []
    full = sum(1 for d in state.draws[i] if d >= s.power - _EPS)
    blocked = [0] * (n + 1)  # prefix count of steps where full power lacks the surplus
    for t in range(n):
        bad = not s.needed and not ctx.allowed[t] and ctx.a[t] < s.power - _EPS
        blocked[t + 1] = blocked[t] + (1 if bad else 0)
    lo_min, lo_max = (0, n - length) if span is None else span
    first = on[0] if span is None else lo_min
    out = []
    for lo in range(max(0, lo_min), min(n - length, lo_max) + 1):
        if edges and 0 < lo < n - length:
            continue
        if not s.needed and blocked[lo + min(full, length)] - blocked[lo] > 0:
            continue
        out.append(lo)
    out.sort(key=lambda lo: (abs(lo - first), lo))
    return out


def _fewer_runs(state: DayState, i: int) -> Iterator[list[int]]:
    """Rows of socket i with one run fewer or one switch fewer, the rest of the row kept:
    two neighbouring runs as one run of their length (the steps they draw in, or the steps
    they are on) anywhere across their span; the first run moved to the horizon's start,
    the last to its end."""
    n = state.n
    row = state.rows[i]
    draws = state.draws[i]
    runs = on_runs(row)
    for (lo1, hi1), (lo2, hi2) in pairwise(runs):
        on_len = (hi1 - lo1 + 1) + (hi2 - lo2 + 1)
        drawing = sum(1 for t in (*range(lo1, hi1 + 1), *range(lo2, hi2 + 1)) if draws[t] > 0)
        base = list(row)
        for t in (*range(lo1, hi1 + 1), *range(lo2, hi2 + 1)):
            base[t] = 0
        for length in sorted({v for v in (drawing, on_len) if v > 0}):
            for lo in _block_starts(state, i, length, span=(lo1, hi2 - length + 1)):
                r = list(base)
                for t in range(lo, lo + length):
                    r[t] = 1
                if r != row:
                    yield r
    if len(runs) > 1:
        lo, hi = runs[0]
        if lo > 0 and state.ctx.socks[i].init is not False:
            r = list(row)
            for t in range(lo, hi + 1):
                r[t] = 0
            for t in range(hi - lo + 1):
                r[t] = 1
            yield r
        lo, hi = runs[-1]
        if hi < n - 1:
            r = list(row)
            for t in range(lo, hi + 1):
                r[t] = 0
            for t in range(n - (hi - lo + 1), n):
                r[t] = 1
            yield r


def _consolidation_moves(state: DayState, i: int, edges: bool = False) -> Iterator[Move]:
    """Moves that put socket i's energy into one run: its single run at every start (one
    socket), then that run with each socket it would overlap moved, as one run too, against
    its start or its end (two sockets: one run may have to make room for another); then
    one run fewer (`_fewer_runs`). With `edges`, only runs that touch the horizon's start
    or end."""
    n = state.n
    ctx = state.ctx
    for length in _block_lengths(state, i):
        starts = _block_starts(state, i, length, edges)
        for lo in starts:
            r = _block(n, lo, length)
            if r != state.rows[i]:
                yield ((i, r),)
        for lo in starts:
            r = _block(n, lo, length)
            for j in range(len(ctx.socks)):
                if j == i or not any(state.rows[j][t] for t in range(lo, lo + length)):
                    continue
                for other in _block_lengths(state, j)[:1]:
                    for at in (lo - other, lo + length):
                        if at >= 0 and at + other <= n:
                            yield ((i, r), (j, _block(n, at, other)))
    if not edges:
        for r in _fewer_runs(state, i):
            yield ((i, r),)


def consolidate(state: DayState, budget: Budget) -> tuple[int, bool]:
    """Fewer switches at no loss: first-improvement search over `_consolidation_moves` for
    every socket switched more than twice (more than one run; one run in the middle of the
    horizon: only to its start or end), most switches first, until none helps or the budget
    is spent. The score decides (a move must not worsen needs,
    holds, cost or optional energy; with them equal, fewer switches win). Returns (moves
    applied, converged)."""
    moves = 0
    while True:
        improved = False
        order = sorted(range(len(state.ctx.socks)), key=lambda i: (-state.stats[i][2], i))
        for i in order:
            if state.stats[i][2] < 2:
                continue
            for move in _consolidation_moves(state, i, edges=state.stats[i][2] == 2):
                if not budget.spend():
                    return moves, False
                if state.try_move(move) < state.score:
                    state.apply_move(move)
                    moves += 1
                    improved = True
                    break
            if improved:
                break
        if not improved:
            return moves, True
