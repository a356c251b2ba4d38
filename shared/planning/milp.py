"""The full tier's MILP (HiGHS): the day as a mixed-integer programme, solved deterministically.

Pure: builds arrays and calls HiGHS in this process (no I/O, no clock decides anything but
the safety ceiling). `highspy` and `numpy` are imported only when a model is solved.

The model (per step t, socket s), weights in Wh of grid import (see `Weights`):

- x[s,t] in {0,1}: socket on, counted at its full power (an on socket draws its power until
  its store is full; the model never credits the thermostat's cut-off, so the real day is
  never worse than the model's for import);
- the batteries, aggregated, as a lossless store (charge c, discharge u, energy e) that never
  charges from the grid: for fixed loads HomeWizard's zero mode reaches the least import any
  such store reaches, so the model's import is what zero mode achieves;
- needed sockets: planned energy + unmet >= room; optional sockets: credited energy <= planned
  energy and <= room;
- the first rule (optional sockets draw only solar surplus) as one binary per step, d[t]: an
  optional socket may be on only where d[t] = 1, and d[t] = 1 caps the step's load at its
  surplus (big-M only as large as the needed sockets that step can add);
- start / stop variables per socket (x[t] - x[t-1] = v[t] - w[t]), at most one switch per
  switch interval; minimum on / off times as the unit-commitment rows
  sum(v over the last U steps) <= x[t], sum(w over the last D steps) <= 1 - x[t], each with
  a slack that costs `Weights.hold` per step (so a needed socket breaks a hold only where its
  deadline demands it, and an optional one only where the surplus ends inside it);
- an optional socket with `min_battery_charge` only where the battery held it at the step's
  start.

Budgets are in work (node, leaf, LP-iteration and improving-solution limits, one thread, a
fixed random seed): the same problem always gives the same answer, on any machine, under any
load. The wall-clock `ceiling_s` is a safety net only: when it fires the answer is
`status="ceiling"` and no solution (the caller falls back to the reference plan).
"""

from __future__ import annotations

import math
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from shared.planning.problem import PlanningProblem, SocketSpec
from shared.planning.search import OPTIONAL_WORTH, Context
from shared.planning.simulate import UNMET_TOLERANCE_WH, hold_spans, initial_hold


@dataclass(frozen=True, slots=True)
class Weights:
    """Objective weights, per Wh of grid import (1.0), far enough apart to act in order."""

    #: Per Wh a needed store ends short (times 1..2 by priority: the first socket weighs most).
    unmet_wh: float = 1000.0
    #: Per step of a minimum on / off time not kept.
    hold: float = 1000.0
    import_wh: float = 1.0
    #: Per Wh into an optional store (subtracted; without prices). With a switch cost the
    #: search's rate (`search.OPTIONAL_WORTH`) instead, so switches are weighed as there.
    optional_wh: float = 0.01
    #: Per switch on top of the problem's `switch_cost_wh`: a tie-break (fewer switches).
    #: Off by default: tiny tie-break terms make HiGHS's heuristics far less effective
    #: (measured: the same work found markedly worse plans on days with many optional
    #: sockets); the local search after the MILP removes switches that gain nothing.
    switch: float = 0.0
    #: Per step a full socket is kept on (drawing nothing): a tie-break, off by default for
    #: the same reason. (Kept on where the surplus does not cover its power, outside a
    #: minimum on time, is not allowed: a row of the model; kept on where grid or battery
    #: feed the house: the search and the simulator enforce that, see `search.risky_row`.)
    idle: float = 0.0
    #: Priority among optional sockets: the first one's Wh weigh this much more (relative).
    #: Off by default (a tie-break term; the local search settles priority last).
    optional_priority: float = 0.0
    #: Whether the switch columns carry the problem's `switch_cost_wh` (False: only the
    #: `switch` tie-break). Without it the model weighs energy alone: HiGHS proves its
    #: optimum in a fraction of the work, where with it the relaxation (a fractional relay
    #: pays a fraction of a switch) leaves a gap of a few switches that branching hardly
    #: closes (`optimal`'s energy-first pipeline; docs/bench-planners.md).
    price_switches: bool = True

    @classmethod
    def with_ties(cls) -> Weights:
        """Weights that also prefer fewer switches and no relay left on for nothing (the
        benchmark's long MILP)."""
        return cls(switch=0.002, idle=0.003, optional_priority=0.001)


@dataclass(frozen=True, slots=True)
class Budget:
    """HiGHS limits, all counted in work except the safety ceiling."""

    mip_rel_gap: float = 1e-4
    mip_abs_gap: float = 1e-6
    #: Branch-and-bound nodes and leaves.
    max_nodes: int = 20_000
    max_leaves: int = 20_000
    #: Simplex iterations of any one LP solve (HiGHS counts them per LP inside a MIP).
    max_lp_iterations: int = 2_000_000
    #: Checkpoints: the MIP solver reports at fixed points of its work (each node, each
    #: round of cuts at the root, each heuristic); past this many it stops with its best
    #: plan. The one deterministic measure of the root node's work HiGHS offers.
    max_checkpoints: int = 1_000_000
    #: Improving solutions found before stopping.
    max_improving_sols: int = 1_000_000
    random_seed: int = 1
    #: HiGHS's `mip_heuristic_effort` (its share of work spent in primal heuristics).
    heuristic_effort: float = 0.05
    #: Wall-clock safety net, s: when it fires there is no answer (status `ceiling`) unless
    #: `keep_at_ceiling` (a long benchmark run keeps its best plan).
    ceiling_s: float = 60.0
    keep_at_ceiling: bool = False


@dataclass(frozen=True, slots=True)
class Formulation:
    """Model variants (for measuring them against each other; the defaults are the planner's)."""

    #: One 'surplus only' binary per step (True) or one big-M row per optional socket and step.
    surplus_binary: bool = True
    #: Pairwise conflict rows: an optional socket and another whose powers together exceed
    #: the step's surplus are never on together.
    conflicts: bool = True
    #: Let the solver look for symmetry between identical sockets.
    detect_symmetry: bool = True
    #: Exact draws (full power, the one partial step that fills a store, then nothing) or
    #: full power in every on-step (the conservative model).
    exact_draw: bool = True
    #: Rule 3's stricter half as rows (`search.risky_row`'s KEPT_SHORT: a full socket is not
    #: kept on where the surplus does not cover its power). Without them the model is a
    #: relaxation whose plans the search repairs (`DayState.repair`); the full tier solves it
    #: first (`optimal._plan_full`).
    kept_short: bool = True


@dataclass
class MilpResult:
    """A solved (or not) MILP: socket rows by name, a status and figures for `Plan.info`."""

    rows: dict[str, list[int]] | None
    #: optimal (within the gap), limited (a work budget ran out; best found), infeasible,
    #: ceiling (the wall-clock safety net fired), error (no answer for another reason).
    status: str
    info: dict[str, float | int | str] = field(default_factory=dict)


class _Builder:
    """Columns and sparse rows for HiGHS."""

    def __init__(self) -> None:
        self.cost: list[float] = []
        self.lo: list[float] = []
        self.hi: list[float] = []
        self.integer: list[int] = []
        self.row_lo: list[float] = []
        self.row_hi: list[float] = []
        self.starts: list[int] = []
        self.index: list[int] = []
        self.value: list[float] = []

    def var(self, cost: float, lo: float, hi: float, integer: bool = False) -> int:
        self.cost.append(cost)
        self.lo.append(lo)
        self.hi.append(hi)
        j = len(self.cost) - 1
        if integer:
            self.integer.append(j)
        return j

    def row(self, cols: list[int], vals: list[float], lo: float, hi: float) -> None:
        self.starts.append(len(self.index))
        self.index.extend(cols)
        self.value.extend(vals)
        self.row_lo.append(lo)
        self.row_hi.append(hi)


def _fill(room_wh: float, step_wh: float, n: int) -> tuple[int, float]:
    """(full-power steps, Wh of the partial step after them) that fill a store, as the
    physics count them (a store within 1e-6 Wh of full is full)."""
    left = room_wh
    k = 0
    while left > 1e-6 and left >= step_wh and k <= n:
        left -= step_wh
        k += 1
    return k, (left if left > 1e-6 else 0.0)


class Model:
    """The MILP for one problem; `rows_of` maps a solution back to socket rows."""

    def __init__(
        self,
        problem: PlanningProblem,
        weights: Weights = Weights(),
        formulation: Formulation = Formulation(),
    ) -> None:
        self.p = problem
        self.weights = weights
        b = self.b = _Builder()
        self._energy: dict[str, tuple[list[int], list[float]]] = {}
        n, dt = problem.n_steps, problem.dt_h
        a = list(problem.available_power_w)
        socks = problem.optimal_order()
        self.socks = socks
        inf = math.inf
        cap = problem.battery_capacity_wh
        pb = problem.battery_power_w
        soc0 = min(problem.battery_stored_wh, cap)
        has_batt = cap > 0 and pb > 0
        needed = [s for s in socks if s.daily_need]
        optional = [s for s in socks if not s.daily_need]
        ctx = Context(problem)
        priced = ctx.priced
        #: With prices and modes the battery may charge from the grid (`to_full`).
        grid_charge = priced and problem.battery_modes and has_batt
        #: Steps where the import price lets optional sockets draw from grid or battery.
        free_step = ctx.allowed
        worth = {s.name: s.worth for s in ctx.socks}

        # -- socket columns ------------------------------------------------------------------
        # x[s,t] on; the draw is exact: y[s,t] full power (the first k on-steps), z[s,t] the
        # partial step that fills the store (at most one, after every y), then on-but-full
        # steps (x - y - z) that draw nothing. With `exact_draw` off, an on socket counts at
        # full power in every on-step (the older, conservative model).
        self.x: dict[str, list[int]] = {}
        self.draw: dict[str, list[tuple[list[int], list[float]]]] = {}
        drawing: dict[str, list[list[int]]] = {}  # columns whose sum is 1 when drawing
        full_ok: dict[str, list[bool]] = {}
        #: Per socket, per step: the columns whose sum is 1 when it is on without drawing
        #: (x - y - z, as coefficients), where the surplus does not cover its power.
        short_idle: dict[str, list[tuple[int, list[int], list[float]]]] = {}
        for s in socks:
            p_w = s.max_power_usage
            step_wh = p_w * dt
            k, rem = _fill(s.room_wh(), step_wh, n)
            thr_ok0 = not (
                not s.daily_need
                and s.min_battery_charge > 0
                and has_batt
                and soc0 < s.min_battery_charge * cap - 1e-9
            )
            # Full power may be drawn: needed anywhere; optional where the surplus covers it.
            full_ok[s.name] = [
                k > 0
                and (s.daily_need or free_step[t] or a[t] >= p_w - 1e-9)
                and (t > 0 or thr_ok0)
                for t in range(n)
            ]
            part_ok = [
                rem > 0
                and (s.daily_need or free_step[t] or a[t] >= rem / dt - 1e-9)
                and (t > 0 or thr_ok0)
                for t in range(n)
            ]
            if not formulation.exact_draw:
                on_ok = [full_ok[s.name][t] or part_ok[t] for t in range(n)]
                xs = [b.var(0.0, 0.0, 1.0 if on_ok[t] else 0.0, True) for t in range(n)]
                self.x[s.name] = xs
                self.draw[s.name] = [([xs[t]], [p_w]) for t in range(n)]
                drawing[s.name] = [[xs[t]] for t in range(n)]
                self._energy_cols(s, xs, [step_wh] * n)
                continue
            xs = [b.var(0.0, 0.0, 1.0, True) for t in range(n)]
            self.x[s.name] = xs
            if k >= n:  # never full within the horizon: on is full power
                for t in range(n):
                    if not full_ok[s.name][t]:
                        b.hi[xs[t]] = 0.0
                self.draw[s.name] = [([xs[t]], [p_w]) for t in range(n)]
                drawing[s.name] = [[xs[t]] for t in range(n)]
                self._energy_cols(s, xs, [step_wh] * n)
                continue
            ys = [b.var(0.0, 0.0, 1.0 if full_ok[s.name][t] else 0.0, True) for t in range(n)]
            zs = (
                [b.var(0.0, 0.0, 1.0 if part_ok[t] else 0.0, True) for t in range(n)]
                if rem > 0
                else []
            )
            big_y = [b.var(0.0, 0.0, float(k)) for _ in range(n)] if k > 0 else []
            big_z = [b.var(0.0, 0.0, 1.0) for _ in range(n)] if zs else []
            for t in range(n):
                cols, vals = [ys[t], xs[t]], [1.0, -1.0]
                if zs:
                    cols.append(zs[t])
                    vals.append(1.0)
                b.row(cols, vals, -inf, 0.0)  # y + z <= x
                if big_y:
                    prev = [big_y[t - 1]] if t > 0 else []
                    b.row([big_y[t], ys[t], *prev], [1.0, -1.0] + [-1.0] * len(prev), 0.0, 0.0)
                if big_z:
                    prev = [big_z[t - 1]] if t > 0 else []
                    b.row([big_z[t], zs[t], *prev], [1.0, -1.0] + [-1.0] * len(prev), 0.0, 0.0)
                # The partial step only after all k full-power steps.
                if zs and k > 0:
                    if t == 0:
                        b.hi[zs[0]] = 0.0
                    else:
                        b.row([zs[t], big_y[t - 1]], [float(k), -1.0], -inf, 0.0)
                # On without drawing only once full.
                cols, vals = [xs[t], ys[t]], [1.0, -1.0]
                if zs:
                    cols.append(zs[t])
                    vals.append(-1.0)
                    if t > 0:
                        cols.append(big_z[t - 1])
                        vals.append(-1.0)
                    b.row(cols, vals, -inf, 0.0)
                elif k > 0:
                    vals = [v * k for v in vals]
                    if t > 0:
                        cols.append(big_y[t - 1])
                        vals.append(-1.0)
                    b.row(cols, vals, -inf, 0.0)
            if k > 0:
                b.row(ys, [1.0] * n, -inf, float(k))
            if zs:
                b.row(zs, [1.0] * n, -inf, 1.0)
            if weights.idle:
                for t in range(n):  # on without drawing: x - y - z
                    b.cost[xs[t]] += weights.idle
                    b.cost[ys[t]] -= weights.idle
                    if zs:
                        b.cost[zs[t]] -= weights.idle
            draw_t: list[tuple[list[int], list[float]]] = []
            on_t: list[list[int]] = []
            for t in range(n):
                cols, vals = [ys[t]], [p_w]
                if zs:
                    cols.append(zs[t])
                    vals.append(rem / dt)
                draw_t.append((cols, vals))
                on_t.append(cols)
            self.draw[s.name] = draw_t
            drawing[s.name] = on_t
            short_idle[s.name] = [
                (t, [xs[t], ys[t], *([zs[t]] if zs else [])], [1.0, -1.0, *([-1.0] if zs else [])])
                for t in range(n)
                if a[t] < p_w - 1e-6 and not free_step[t]
            ]
            e_cols = ys + zs
            e_vals = [step_wh] * n + [rem] * len(zs)
            self._energy_cols(s, e_cols, e_vals)

        # -- grid and battery ----------------------------------------------------------------
        # Cost per W in a step, Wh of import-equivalent (with prices: at the mean price).
        scale = dt * ctx.wh_per_eur / 1000.0
        if priced:
            imp_cost = [ctx.p_imp[t] * scale for t in range(n)]
            exp_cost = [-ctx.p_exp[t] * scale for t in range(n)]
        else:
            imp_cost = [weights.import_wh * dt] * n
            exp_cost = [0.0] * n
        imp = [b.var(imp_cost[t], 0.0, inf) for t in range(n)]
        exp = [b.var(exp_cost[t], 0.0, max(0.0, a[t])) for t in range(n)]
        self.imp = imp
        c = u = e = [-1] * n
        if has_batt:
            c = [b.var(0.0, 0.0, pb if grid_charge else min(pb, max(0.0, a[t]))) for t in range(n)]
            u = [b.var(0.0, 0.0, pb) for _ in range(n)]
            e = [b.var(0.0, 0.0, cap) for _ in range(n)]
        top_load = [0.0] * n  # the most the sockets can draw in a step
        for t in range(n):
            cols, vals = [imp[t], exp[t]], [-1.0, 1.0]
            for s in socks:
                dc, dv = self.draw[s.name][t]
                cols += dc
                vals += dv
                top_load[t] += max([v for j, v in zip(dc, dv, strict=True) if b.hi[j] > 0] or [0])
            if has_batt:
                cols += [c[t], u[t]]
                vals += [1.0, -1.0]
            b.row(cols, vals, a[t], a[t])
        most_import = [
            max(0.0, top_load[t] + (pb if grid_charge else 0.0) - a[t]) for t in range(n)
        ]
        if has_batt:
            for t in range(n):
                cols, vals = [e[t], c[t], u[t]], [1.0, -dt, dt]
                rhs = soc0 if t == 0 else 0.0
                if t > 0:
                    cols.append(e[t - 1])
                    vals.append(-1.0)
                b.row(cols, vals, rhs, rhs)
        if priced:
            for t in range(n):
                if has_batt and a[t] > 0:
                    # The battery never feeds the grid (no mode does): discharging only
                    # where nothing is exported.
                    beta = b.var(0.0, 0.0, 1.0, True)
                    b.row([u[t], beta], [1.0, -pb], -inf, 0.0)
                    b.row([exp[t], beta], [1.0, a[t]], -inf, a[t])
                if ctx.p_imp[t] <= ctx.p_exp[t] + 1e-12 and a[t] > 0 and most_import[t] > 0:
                    # Import as cheap as export: never both at once (one meter, one flow).
                    sig = b.var(0.0, 0.0, 1.0, True)
                    b.row([imp[t], sig], [1.0, -most_import[t]], -inf, 0.0)
                    b.row([exp[t], sig], [1.0, a[t]], -inf, a[t])

        # -- energy: needed full, optional credited -----------------------------------------
        n_needed = len(needed)
        for rank, s in enumerate(needed):
            cols, vals = self._energy[s.name]
            room = s.room_wh() - UNMET_TOLERANCE_WH
            if room <= 0:
                continue
            w_unmet = weights.unmet_wh * (1.0 + (n_needed - rank) / max(1, n_needed))
            short = b.var(w_unmet, 0.0, room)
            b.row([*cols, short], [*vals, 1.0], room, inf)
        for rank, s in enumerate(optional):
            cols, vals = self._energy[s.name]
            # Priority breaks ties: the first optional socket's Wh weigh a little more.
            share = (len(optional) - rank) / len(optional)
            base_w = (
                worth[s.name]
                if priced
                else OPTIONAL_WORTH
                if problem.switch_cost_wh > 0
                else weights.optional_wh
            )
            w_opt = base_w * (1.0 + weights.optional_priority * share)
            for j, v in zip(cols, vals, strict=True):
                b.cost[j] -= w_opt * v

        # -- the first rule: optional sockets draw only surplus ------------------------------
        for t in range(n):
            if free_step[t]:
                continue  # the import price lets them draw from grid or battery here
            opt_on = [s for s in optional if any(b.hi[j] > 0 for j in drawing[s.name][t])]
            if not opt_on:
                continue
            live = [s for s in socks if any(b.hi[j] > 0 for j in drawing[s.name][t])]
            cols, vals = [], []
            for s in live:
                dc, dv = self.draw[s.name][t]
                cols += dc
                vals += dv
            if formulation.conflicts:
                for o in opt_on:
                    jo = drawing[o.name][t][0]
                    for s in live:
                        if s is o or (not s.daily_need and s.name < o.name):
                            continue
                        js = drawing[s.name][t][0]
                        if (
                            b.hi[jo] > 0
                            and b.hi[js] > 0
                            and (o.max_power_usage + s.max_power_usage > a[t] + 1e-9)
                        ):
                            b.row([jo, js], [1.0, 1.0], -inf, 1.0)
            if priced:
                # Exact with a battery that may charge from the grid: a step with an optional
                # socket drawing has neither import nor discharge.
                if most_import[t] <= 1e-9 and not has_batt:
                    continue
                d = b.var(0.0, 0.0, 1.0, True)
                for o in opt_on:
                    oc = drawing[o.name][t]
                    b.row([*oc, d], [1.0] * len(oc) + [-1.0], -inf, 0.0)
                if most_import[t] > 1e-9:
                    b.row([imp[t], d], [1.0, most_import[t]], -inf, most_import[t])
                if has_batt:
                    b.row([u[t], d], [1.0, pb], -inf, pb)
                continue
            if sum(vals) <= a[t] + 1e-9:
                continue  # everything together fits the surplus: nothing to forbid
            if formulation.surplus_binary:
                need_w = sum(v for s in live if s.daily_need for v in self.draw[s.name][t][1])
                big_m = max(0.0, need_w - a[t])
                if big_m <= 1e-9:
                    b.row(cols, vals, -inf, a[t])
                    continue
                d = b.var(0.0, 0.0, 1.0, True)
                for o in opt_on:
                    oc = drawing[o.name][t]
                    b.row([*oc, d], [1.0] * len(oc) + [-1.0], -inf, 0.0)
                b.row([*cols, d], [*vals, big_m], -inf, a[t] + big_m)
            else:
                for o in opt_on:
                    oc = drawing[o.name][t]
                    big_m = max(0.0, sum(vals) - a[t])
                    b.row([*cols, *oc], [*vals] + [big_m] * len(oc), -inf, a[t] + big_m)

        # -- min_battery_charge --------------------------------------------------------------
        if has_batt:
            for s in optional:
                thr = s.min_battery_charge * cap
                if thr <= 0:
                    continue
                for t in range(1, n):
                    oc = [j for j in drawing[s.name][t] if b.hi[j] > 0]
                    if oc:
                        b.row([e[t - 1], *oc], [1.0] + [-thr] * len(oc), 0.0, inf)

        # -- switches, the switch interval, minimum on / off times ---------------------------
        k_gap = math.ceil(problem.switch_interval_s / problem.step_s - 1e-9)
        up, down = hold_spans(problem)
        w_switch = weights.switch + (
            problem.switch_cost_wh * weights.import_wh if weights.price_switches else 0.0
        )
        self.hold_cols: list[int] = []
        #: Start and stop columns of every socket (for the switch-count objective).
        self.switch_cols: list[int] = []
        for s in socks:
            xs = self.x[s.name]
            init, held = initial_hold(problem, s.name)
            starts: list[int] = []
            stops: list[int] = []
            for t in range(n):
                if t == 0 and init is None:
                    starts.append(-1)
                    stops.append(-1)
                    continue
                v = b.var(w_switch, 0.0, 1.0)
                w = b.var(w_switch, 0.0, 1.0)
                self.switch_cols += [v, w]
                starts.append(v)
                stops.append(w)
                if t == 0:
                    b.row([xs[0], v, w], [1.0, -1.0, 1.0], float(bool(init)), float(bool(init)))
                else:
                    b.row([xs[t], xs[t - 1], v, w], [1.0, -1.0, -1.0, 1.0], 0.0, 0.0)
            both = [(vv, ww) for vv, ww in zip(starts, stops, strict=True)]
            if k_gap > 1:
                for t in range(n):
                    window = [j for vv, ww in both[t : t + k_gap] for j in (vv, ww) if j >= 0]
                    if len(window) > 2:
                        b.row(window, [1.0] * len(window), -inf, 1.0)
            # Initial hold: keep the current state for `held` steps (slack at `hold` each).
            for t in range(min(held, n)):
                slack = b.var(weights.hold, 0.0, 1.0)
                self.hold_cols.append(slack)
                if init:
                    b.row([xs[t], slack], [1.0, 1.0], 1.0, inf)
                else:
                    b.row([xs[t], slack], [1.0, -1.0], -inf, 0.0)
            if up > 1:
                for t in range(n):
                    recent = [starts[k] for k in range(max(0, t - up + 1), t + 1) if starts[k] >= 0]
                    if not recent or (len(recent) == 1 and recent[0] == starts[t]):
                        continue  # v[t] <= x[t] holds by the switch row itself
                    slack = b.var(weights.hold, 0.0, 1.0)
                    self.hold_cols.append(slack)
                    b.row(
                        [*recent, xs[t], slack],
                        [1.0] * len(recent) + [-1.0, -1.0],
                        -inf,
                        0.0,
                    )
            # Rule 3's stricter half (`search.risky_row`, KEPT_SHORT): full and on where the
            # surplus does not cover the socket's power only inside a minimum on time (the
            # first `up` steps of a run the plan starts, or the initial hold).
            for t, cols, vals in short_idle.get(s.name, []) if formulation.kept_short else []:
                recent = (
                    [starts[k] for k in range(max(0, t - up + 1), t + 1) if starts[k] >= 0]
                    if up > 1
                    else []
                )
                held_now = 1.0 if init and t < held else 0.0
                b.row([*cols, *recent], [*vals, *([-1.0] * len(recent))], -inf, held_now)
            if down > 1:
                for t in range(n):
                    recent = [stops[k] for k in range(max(0, t - down + 1), t + 1) if stops[k] >= 0]
                    if not recent or (len(recent) == 1 and recent[0] == stops[t]):
                        continue
                    slack = b.var(weights.hold, 0.0, 1.0)
                    self.hold_cols.append(slack)
                    b.row(
                        [*recent, xs[t], slack],
                        [1.0] * len(recent) + [1.0, -1.0],
                        -inf,
                        1.0,
                    )
        self.formulation = formulation
        #: Socket-steps where rule 3's stricter half applies (a row with `kept_short`): where
        #: there are none, the model with the rows and the one without are the same.
        self.short_steps = sum(len(v) for v in short_idle.values())

    def _energy_cols(self, s: SocketSpec, cols: list[int], vals: list[float]) -> None:
        self._energy[s.name] = (cols, vals)

    def start_values(self, rows: dict[str, list[int]]) -> tuple[list[int], list[float]]:
        """Values of the integer columns for a plan (x, and where the draws are exact y and z
        as the physics draw them); HiGHS completes the rest."""
        n, dt = self.p.n_steps, self.p.dt_h
        idx: list[int] = []
        val: list[float] = []
        for s in self.socks:
            row = list(rows.get(s.name, []))[:n]
            row += [0] * (n - len(row))
            xs = self.x[s.name]
            left = s.room_wh()
            for t in range(n):
                on = 1.0 if row[t] else 0.0
                idx.append(xs[t])
                val.append(on if self.b.hi[xs[t]] > 0 else 0.0)
                cols = self.draw[s.name][t][0]
                if cols == [xs[t]]:
                    continue
                full = part = 0.0
                if on and left > 1e-6:
                    if left >= s.max_power_usage * dt:
                        full = 1.0
                        left -= s.max_power_usage * dt
                    else:
                        part = 1.0
                        left = 0.0
                idx.append(cols[0])
                val.append(full)
                if len(cols) > 1:
                    idx.append(cols[1])
                    val.append(part)
        return idx, val

    def rows_of(self, col_value: list[float]) -> dict[str, list[int]]:
        return {
            name: [1 if col_value[j] > 0.5 else 0 for j in cols] for name, cols in self.x.items()
        }


_BANNER_LOCK = threading.Lock()
_banner_shown = False


def new_highs() -> Any:
    """A silent HiGHS instance.

    HiGHS writes a banner straight to file descriptor 1 when the first instance of a
    process is made, which would corrupt `hwsched plan`'s JSON (and the worker's answer);
    that one construction runs with descriptor 1 pointed at /dev/null.
    """
    global _banner_shown  # noqa: PLW0603 - once per process
    import highspy

    with _BANNER_LOCK:
        if not _banner_shown:
            sys.stdout.flush()
            saved = os.dup(1)
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, 1)
                h = highspy.Highs()  # type: ignore[no-untyped-call]
            finally:
                os.dup2(saved, 1)
                os.close(saved)
                os.close(devnull)
            _banner_shown = True
        else:
            h = highspy.Highs()  # type: ignore[no-untyped-call]
    h.setOptionValue("output_flag", False)
    return h


class Solver:
    """One problem's MILP, built once and solvable more than once (each solve runs in a
    fresh HiGHS instance: nothing carries over, so each is deterministic on its own).
    Raises ImportError without highspy."""

    def __init__(
        self,
        problem: PlanningProblem,
        weights: Weights = Weights(),
        formulation: Formulation = Formulation(),
    ) -> None:
        import highspy  # noqa: F401 - fail here, before any work, when it is missing
        import numpy as np

        self.model = model = Model(problem, weights, formulation)
        self.formulation = formulation
        b = model.b
        self._lo = np.array(b.lo)
        self._hi = np.array(b.hi)
        self._cost = np.array(b.cost)
        self._row_lo = np.array(b.row_lo)
        self._row_hi = np.array(b.row_hi)
        self._starts = np.array(b.starts, dtype=np.int32)
        self._index = np.array(b.index, dtype=np.int32)
        self._value = np.array(b.value)
        self._ints = np.array(b.integer, dtype=np.int32)

    @property
    def integers(self) -> int:
        """The model's integer columns (a measure of its size)."""
        return len(self._ints)

    def solve(
        self,
        start: dict[str, list[int]] | None,
        budget: Budget,
        fewest_switches_within: float | None = None,
        fixed: dict[str, list[int]] | None = None,
    ) -> MilpResult:
        """Solve from `start` (a plan whose socket rows HiGHS completes to a first solution).

        With `fewest_switches_within` = c: the plan with the fewest switches among those whose
        objective is at most c (a second, lexicographic stage: c is the best objective found
        plus a tolerance). `fixed`: sockets whose on/off rows stay as given."""
        import highspy
        import numpy as np

        model, b = self.model, self.model.b
        lo, hi = self._lo, self._hi
        if fixed:
            lo, hi = lo.copy(), hi.copy()
            for name, row in fixed.items():
                for t, j in enumerate(model.x[name]):
                    v = min(float(row[t]) if t < len(row) else 0.0, float(self._hi[j]))
                    lo[j] = hi[j] = v
        h = new_highs()
        for name, value in (
            ("threads", 1),
            ("parallel", "off"),
            ("mip_detect_symmetry", self.formulation.detect_symmetry),
            ("random_seed", budget.random_seed),
            ("mip_heuristic_effort", budget.heuristic_effort),
            ("time_limit", float(budget.ceiling_s)),
            ("mip_rel_gap", budget.mip_rel_gap),
            ("mip_abs_gap", budget.mip_abs_gap),
            ("mip_max_nodes", budget.max_nodes),
            ("mip_max_leaves", budget.max_leaves),
            ("simplex_iteration_limit", budget.max_lp_iterations),
            ("mip_max_improving_sols", budget.max_improving_sols),
        ):
            h.setOptionValue(name, value)
        ncol = len(b.cost)
        h.addVars(ncol, lo, hi)
        if fewest_switches_within is None:
            h.changeColsCost(ncol, np.arange(ncol, dtype=np.int32), self._cost)
        else:
            nz = np.nonzero(self._cost)[0].astype(np.int32)
            h.addRow(-math.inf, fewest_switches_within, len(nz), nz, self._cost[nz])
            cost = np.zeros(ncol)
            cost[np.array(model.switch_cols, dtype=np.int64)] = 1.0
            h.changeColsCost(ncol, np.arange(ncol, dtype=np.int32), cost)
        h.addRows(
            len(self._row_lo),
            self._row_lo,
            self._row_hi,
            len(self._index),
            self._starts,
            self._index,
            self._value,
        )
        ints = self._ints
        h.changeColsIntegrality(
            len(ints), ints, np.array([highspy.HighsVarType.kInteger] * len(ints))
        )
        if start is not None:
            sidx, sval = model.start_values(start)
            h.setSolution(len(sidx), np.array(sidx, dtype=np.int32), np.array(sval))
        checkpoints = [0]

        def _checkpoint(event: Any) -> None:
            checkpoints[0] += 1
            if checkpoints[0] > budget.max_checkpoints:
                event.interrupt()

        h.cbMipInterrupt.subscribe(_checkpoint)
        h.run()
        status = h.getModelStatus()
        inf_obj = h.getInfo()
        info: dict[str, float | int | str] = {
            "columns": ncol,
            "rows": len(b.row_lo),
            "integers": len(ints),
            "nodes": int(inf_obj.mip_node_count),
            "lp_iterations": int(inf_obj.simplex_iteration_count),
            "objective": float(inf_obj.objective_function_value),
            "bound": float(inf_obj.mip_dual_bound),
            "gap": float(inf_obj.mip_gap) if math.isfinite(inf_obj.mip_gap) else -1.0,
            "checkpoints": checkpoints[0],
        }
        st = highspy.HighsModelStatus
        if status == st.kOptimal:
            label = "optimal"
        elif status == st.kTimeLimit:
            if not budget.keep_at_ceiling:
                return MilpResult(None, "ceiling", info)
            label = "ceiling"
        elif status in (st.kIterationLimit, st.kSolutionLimit, st.kInterrupt):
            label = "limited"
        elif status == st.kInfeasible:
            return MilpResult(None, "infeasible", info)
        else:
            info["solver_status"] = h.modelStatusToString(status)
            return MilpResult(None, "error", info)
        if int(inf_obj.primal_solution_status) != 2:  # 2 = feasible
            return MilpResult(None, label if label != "optimal" else "error", info)
        return MilpResult(model.rows_of(list(h.getSolution().col_value)), label, info)


def solve(
    problem: PlanningProblem,
    start: dict[str, list[int]] | None = None,
    budget: Budget = Budget(),
    weights: Weights = Weights(),
    formulation: Formulation = Formulation(),
) -> MilpResult:
    """Build and solve the MILP once; raises ImportError without highspy."""
    return Solver(problem, weights, formulation).solve(start, budget)
