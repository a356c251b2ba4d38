"""The optimal planner, in two tiers; both deterministic and never worse than the reference.

- `plan_optimal(problem, options)` — the **full tier**: local search (exact physics) from the
  reference plan and a window heuristic, then the MILP (`milp.py`, HiGHS) warm-started from
  the best of them, then local search again from the MILP's plan. Seconds at most.
- `plan_quick(problem, incumbent, options)` — the **quick tier**: local search continuing
  from `incumbent` (e.g. the last plan moved onto this problem's steps), about 20 ms for a
  96-step day with 5 sockets. For re-plans inside the poll.
- `plan_in_worker(problem, options)` — the full tier in a child process
  (`python -m shared.planning.worker`), so HiGHS and numpy never stay in a service's memory.

What a plan is judged by is `search.Score` (needs, then minimum on / off times, then import
or net cost with switch costs, then optional energy, then switches), on the exact day
physics (`simulate`, which agrees with the shared yardstick).

**Deterministic.** Every budget counts work: local-search evaluations, HiGHS nodes, leaves,
LP iterations, one thread and a fixed seed. The same problem and options give the same plan
on any machine under any load. The wall-clock `time_limit_s` is only a safety net: when it
fires, the answer is the reference plan with `status: fallback`, never a partial plan.

**Never worse than the reference.** The reference plan (the original's greedy), made
admissible on the real physics where its own bookkeeping is wrong (`DayState.repair`), is
scored the same way; a plan that scores worse is replaced by it (`status: fallback`). That
holds on every path: full, quick, the worker failing or timing out, highspy missing (then
the local search alone plans).

**Calm.** `switch_cost_wh` prices every switch; `min_on_s` / `min_off_s` (with `initial_on` and
`initial_since_s` for the run in progress) are kept unless a needed socket's deadline or the
first rule (optional sockets only on surplus) demands otherwise; with `previous`, the result
keeps the previous plan unless the new one gains more than `hold_gain_wh` (`keeps_previous`).

`status`: `optimal` (the MILP proved its optimum within its gap, and the result is at least
as good; with a switch cost, the model with it proved it: `Options.energy_first`),
`time-limited` (a work budget of the MILP ran out first: its best plan, improved),
`heuristic` (local search only: quick tier, no solver, MILP off), `fallback` (the reference
plan: it scored better, the safety net fired, or the worker failed).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from itertools import combinations
from typing import Any

from shared.planning import milp
from shared.planning.modes import best_modes
from shared.planning.problem import BatteryMode, Plan, PlanningProblem, PlanStatus
from shared.planning.reference import plan_reference
from shared.planning.search import (
    INADMISSIBLE,
    Budget,
    Context,
    DayState,
    Score,
    consolidate,
    improve,
    on_runs,
)
from shared.planning.simulate import UNMET_TOLERANCE_WH, simulate

PLANNER_NAME = "optimal"

#: Without prices, what a Wh into an optional store is worth against a Wh of import when
#: comparing with the previous plan (the shared yardstick's ratio: score = 10 x import -
#: optional).
OPTIONAL_WH_RATE = 0.1


class CeilingReachedError(Exception):
    """The wall-clock safety net fired."""


@dataclass(frozen=True, slots=True)
class Options:
    """How the planner works. Every budget counts work, not time (see the module docstring)."""

    #: Wall-clock safety net, s (None: `default_ceiling(problem)` / `QUICK_CEILING_S`): past
    #: it the plan is the reference plan (status `fallback`). Never shapes a normal plan.
    time_limit_s: float | None = None
    #: Whether the full tier runs the MILP: 0 turns it off (local search only); any other
    #: value runs it with the work budgets below. (Once a share of a time budget.)
    milp_share: float = 1.0
    #: Local-search evaluations of the full tier (before and after the MILP together).
    max_evals: int = 6000
    #: A plan to start from as well (e.g. the previous plan moved onto this problem's steps).
    warm_start: Mapping[str, Sequence[int]] | None = None
    #: Run the full tier in a worker process (`python -m shared.planning.worker`).
    milp_worker: bool = False
    #: Local-search evaluations of the quick tier.
    quick_evals: int = 300
    #: The MILP's work budgets.
    mip_rel_gap: float = 1e-3
    mip_abs_gap: float = 0.1
    mip_max_nodes: int = 500
    mip_max_leaves: int = 500
    mip_max_lp_iterations: int = 400_000
    #: The MILP's work budget: HiGHS's checkpoints (`milp.Budget.max_checkpoints`) of the
    #: first run, and of each further run (from the best plan so far, with the next seed), up
    #: to `mip_restarts` runs in all, until one proves its optimum. A further run only follows
    #: a run that got past the root node into branching (there a node is cheap and a new seed
    #: often proves the optimum; a run that ended inside the root would spend a second budget
    #: on the same root's cut rounds).
    mip_max_checkpoints: int = 120
    mip_restart_checkpoints: int = 60
    mip_restarts: int = 2
    #: No further run after one whose own bound leaves it within this relative gap (HiGHS's
    #: `mip_gap`: |best - bound| / |best|): a second run could gain that little at most, and
    #: one that found the same plan again cost as much as the first (measured on a 252-step
    #: priced day: 3.7 s CPU for nothing, at a gap of 0.15 %).
    mip_restart_min_gap: float = 2e-3
    #: The main MILP's checkpoints are for a model of at most this many integer columns;
    #: a larger model gets proportionally fewer (`_main_checkpoints`): a checkpoint of HiGHS's
    #: root (a cut round, an LP re-solve) costs about in proportion to the model's size, so
    #: the work stays about the same. 0: no scaling.
    mip_size_ref: int = 3000
    #: The second stage's work budget: the fewest switches among plans as good as the best
    #: (`_fewer_switches`); 0 skips it.
    switch_checkpoints: int = 30
    #: Neighbourhood search after a main MILP that did not prove its optimum
    #: (`_neighbourhoods`): the MILP again with all sockets but two fixed to the best plan,
    #: every pair in turn, up to `neighbourhood_solve_checkpoints` per solve, until a whole
    #: round finds nothing better or its work reaches `neighbourhood_work` (0 skips it).
    #: Work: per solve, (HiGHS's checkpoints + `NEIGHBOURHOOD_SOLVE_COST`) x the model's
    #: integer columns / 1000 — a checkpoint and setting up a solve both cost about in
    #: proportion to the model's size.
    neighbourhood_work: int = 800
    #: The same for the fewest-switches neighbourhoods (after a second stage that ran out of
    #: budget); 0 skips them.
    switch_neighbourhood_work: int = 300
    neighbourhood_solve_checkpoints: int = 30
    #: The fewest-switches neighbourhoods re-plan pairs of sockets, then — where the pairs
    #: found nothing — groups of up to this many sockets (every size within the same
    #: `switch_neighbourhood_work`): a plan with fewer switches may need three sockets moved
    #: together (measured: 14 -> 8 switches on a 96-step day with 5 sockets, where the long
    #: MILP has 8). Only where one round of a group size is at most `switch_group_solves_max`
    #: solves (10: up to 5 sockets for triples; with 8 sockets a round is 56 solves and cost
    #: up to 5.6 s CPU).
    switch_neighbourhood_sockets: int = 3
    switch_group_solves_max: int = 10
    #: Groups of three also after pairs that found fewer switches, and beyond
    #: `switch_group_solves_max`, where every pair solve proved its optimum (each a few
    #: HiGHS checkpoints): half the checkpoints per solve, a third of
    #: `switch_neighbourhood_work`, ended by the first solve that proves nothing. Measured on
    #: an 82-step day with 8 sockets: 37 -> 35 switches (the long MILP's 35), its first triple;
    #: days whose pair solves run out of budget (1.2 s each on a 96-step day with 8 sockets)
    #: are left out.
    switch_groups_when_proved: bool = True
    #: Evaluations of the fewer-switches local search (`search.consolidate`: each socket's
    #: energy in one run), before the MILP's second stage; 0 skips it.
    switch_evals: int = 8000
    mip_max_improving_sols: int = 1_000_000
    #: HiGHS's share of work in primal heuristics (`milp.Budget.heuristic_effort`).
    mip_heuristic_effort: float = 0.05
    #: A day with steps shorter than this, s, whose main MILP spent its budget inside its root
    #: node, is planned again at this step (`coarse_problem`: the surplus and prices averaged
    #: over each group of steps), and that plan, each step repeated, is one more start. On a
    #: 222-step day of 5-minute steps the fine model's root took 95 checkpoints (9 s CPU) for
    #: a plan 4 % below the coarse one, whose model a third the size branches
    #: (docs/bench-planners.md, "A coarse plan"). Only after the fine run's whole budget:
    #: capped at 40 checkpoints, the fine run saved 7 s there but lost a 480-step day's
    #: proof (found at checkpoint 48: -7206 -> -2836). 0: never.
    coarse_step_s: int = 900
    #: The coarse plan's work: one main MILP run of this many checkpoints (no restarts,
    #: neighbourhoods or fewest-switches stages) and this many local-search evaluations.
    coarse_checkpoints: int = 120
    coarse_evals: int = 1000
    #: With a switch cost (`switch_cost_wh` > 0): the MILP stages (main runs, neighbourhoods,
    #: the fewest switches) on the model without it (`milp.Weights.price_switches` off),
    #: the local search pricing every switch as always (and, where
    #: `priced_switch_checkpoints` > 0, the model with it once more from the best plan). The
    #: switch cost wrecks the model's relaxation: on the benchmark's 96-step days with 5
    #: sockets and the scheduler's calm settings the whole tier took a median 22.6 s of CPU
    #: with it in every stage, 0.48 s energy first (docs/bench-planners.md, "The calm
    #: settings").
    energy_first: bool = True
    #: The energy-first pipeline's last MILP run (with the switch cost), checkpoints; 0 skips
    #: it. Its proof is the only one that makes such a plan `optimal`. Off by default:
    #: measured on the 12 calm days of 96 steps x 5 sockets, 10 checkpoints cost 0.6-1.5 s of
    #: CPU a day (median 0.46 -> 2.5 s), proved none and improved one plan (spring-c50, by
    #: 18 Wh); on small days it proves the optimum (tests/test_planner_energy_first.py).
    #: Without it a plan with a switch cost is `time-limited`: only its energy was proved.
    priced_switch_checkpoints: int = 0
    random_seed: int = 1
    weights: milp.Weights = field(default_factory=milp.Weights)

    def to_json(self) -> dict[str, Any]:
        """The options as JSON-able data (the worker's `options`)."""
        out = asdict(self)
        if self.warm_start is not None:
            out["warm_start"] = {k: [int(v) for v in row] for k, row in self.warm_start.items()}
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Options:
        """Options from JSON data; unknown keys are an error (ValueError)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"options: unknown {', '.join(unknown)}")
        kw = dict(data)
        if "weights" in kw:
            kw["weights"] = milp.Weights(**kw["weights"])
        if kw.get("warm_start") is not None:
            kw["warm_start"] = {
                str(k): [int(v) for v in row] for k, row in kw["warm_start"].items()
            }
        return cls(**kw)


#: The quick tier's safety net, s.
QUICK_CEILING_S = 2.0


def default_ceiling(problem: PlanningProblem) -> float:
    """The full tier's safety net: 120 s for a 96-step day with 5 sockets, growing with
    steps x sockets (at most 600 s). Far above what a plan takes (seconds; a Raspberry Pi is
    ~4x slower than the development machine, and a busy machine slower still), so it fires
    only on a machine that is stuck."""
    size = problem.n_steps * max(1, len(problem.sockets))
    return float(min(600.0, max(120.0, 120.0 * size / 480)))


class _Clock:
    """The safety net: raises `CeilingReachedError` past the deadline (checked between phases and
    every few dozen evaluations; it never changes a plan that finishes in time)."""

    def __init__(self, ceiling_s: float) -> None:
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + ceiling_s

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def check(self) -> None:
        if time.perf_counter() > self.deadline:
            raise CeilingReachedError


class _Evals(Budget):
    """A budget of evaluations that also watches the safety net."""

    def __init__(self, evals: int, clock: _Clock) -> None:
        super().__init__(evals)
        self.clock = clock
        self.used = 0

    def spend(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        self.used += 1
        if self.used % 32 == 0:
            self.clock.check()
        return True


# --- starts ------------------------------------------------------------------------------


def _fill_steps(problem: PlanningProblem, power: float, room: float) -> int:
    """Steps at full power that fill a store (to the yardstick's 1 Wh), at most the horizon."""
    room -= UNMET_TOLERANCE_WH
    if room <= 0:
        return 0
    return min(problem.n_steps, math.ceil(room / (power * problem.dt_h) - 1e-9))


def window_plan(problem: PlanningProblem) -> dict[str, list[int]]:
    """A quick start: each socket in priority order gets the contiguous window that catches
    the most of the remaining surplus (optional sockets only steps the surplus covers)."""
    n = problem.n_steps
    free = list(problem.available_power_w)
    plan: dict[str, list[int]] = {}
    for s in problem.optimal_order():
        k = _fill_steps(problem, s.max_power_usage, s.room_wh())
        row = [0] * n
        if k > 0 and s.daily_need:
            gain = [min(s.max_power_usage, max(0.0, f)) for f in free]
            best, best_at = -1.0, 0
            acc = sum(gain[:k])
            for lo in range(n - k + 1):
                if lo:
                    acc += gain[lo + k - 1] - gain[lo - 1]
                if acc > best + 1e-9:
                    best, best_at = acc, lo
            for t in range(best_at, best_at + k):
                row[t] = 1
        elif k > 0:
            ok = [t for t in range(n) if free[t] >= s.max_power_usage]
            for t in sorted(ok, key=lambda t: (-free[t], t))[:k]:
                row[t] = 1
        for t in range(n):
            if row[t]:
                free[t] -= s.max_power_usage
        plan[s.name] = row
    return plan


def coarse_factor(problem: PlanningProblem, coarse_step_s: int) -> int:
    """How many of the problem's steps make one step of `coarse_step_s` (1: no coarse plan:
    steps that long already, a step that does not divide it, or fewer than two coarse
    steps)."""
    if coarse_step_s <= 0 or problem.step_s >= coarse_step_s:
        return 1
    k = coarse_step_s // problem.step_s
    if k < 2 or problem.n_steps < 2 * k:
        return 1
    return k


def coarse_problem(problem: PlanningProblem, k: int) -> PlanningProblem:
    """The problem at `k` times its step: the surplus and per-step prices averaged over each
    group of `k` steps (the last group may be shorter); no previous plan (the start it gives
    is judged on the real problem, where the hysteresis applies)."""
    n = problem.n_steps

    def mean(xs: Sequence[float]) -> list[float]:
        return [sum(xs[i : i + k]) / len(xs[i : i + k]) for i in range(0, n, k)]

    update: dict[str, Any] = {
        "step_s": problem.step_s * k,
        "available_power_w": mean(problem.available_power_w),
        "previous": {},
        "previous_battery_mode": [],
    }
    if isinstance(problem.import_price, list):
        update["import_price"] = mean(problem.import_price)
    if isinstance(problem.export_price, list):
        update["export_price"] = mean(problem.export_price)
    return problem.model_copy(update=update)


def _coarse_start(
    problem: PlanningProblem, opts: Options, clock: _Clock, info: dict[str, float | int | str]
) -> dict[str, list[int]] | None:
    """The coarse plan (`Options.coarse_step_s`) with each step repeated onto the problem's
    steps, or None where the problem's steps are long enough."""
    k = coarse_factor(problem, opts.coarse_step_s)
    if k == 1:
        return None
    cheap = replace(
        opts,
        warm_start=None,
        max_evals=opts.coarse_evals,
        mip_max_checkpoints=opts.coarse_checkpoints,
        mip_restarts=1,
        neighbourhood_work=0,
        switch_checkpoints=0,
        switch_neighbourhood_work=0,
        switch_evals=0,
        coarse_step_s=0,
    )
    coarse = coarse_problem(problem, k)
    plan = _plan_full(coarse, cheap, clock, {})
    info["coarse_steps"] = coarse.n_steps
    info["coarse_status"] = plan.status
    return {
        name: [v for v in row for _ in range(k)][: problem.n_steps]
        for name, row in plan.sockets.items()
    }


def _from_coarse(
    ctx: Context,
    best: DayState,
    opts: Options,
    clock: _Clock,
    info: dict[str, float | int | str],
    modes: Sequence[BatteryMode] | None,
    use_modes: bool,
) -> tuple[DayState, int, bool]:
    """The coarse plan (`_coarse_start`), polished with a third of the full tier's
    evaluations (its repeated steps may import a little where the surplus dips inside a
    coarse step), where it is better than `best`; and whether it was taken."""
    coarse = _coarse_start(ctx.problem, opts, clock, info)
    if coarse is None:
        return best, 0, False
    cand = _state(ctx, coarse, modes)
    if cand.score == INADMISSIBLE:
        info["coarse_start"] = "inadmissible"
        return best, 0, False
    own = _Evals(opts.max_evals // 3, clock)
    cand, moves = _polish(cand, own, use_modes)
    info["coarse_evals"] = own.used
    taken = cand.score < best.score
    info["coarse_start"] = "taken" if taken else "not better"
    return (cand if taken else best), moves, taken


def _moved(rows: Mapping[str, Sequence[int]], n: int) -> dict[str, list[int]]:
    return {
        str(k): [1 if v else 0 for v in list(row)[:n]] + [0] * (n - len(row))
        for k, row in rows.items()
    }


#: The full tier's first model: without rule 3's stricter half as rows.
RELAXED = milp.Formulation(kept_short=False)


class _Models:
    """The full tier's MILP models: the relaxation without rule 3's stricter half (`RELAXED`),
    and the model with its rows, built when first asked for (the same model where the rule
    applies at no step). With `relax` off (battery modes: the MILP is already a relaxation
    there, and measured, this one found no better costs for more CPU) both are the model
    with the rows."""

    def __init__(self, problem: PlanningProblem, weights: milp.Weights, relax: bool) -> None:
        self.problem = problem
        self.weights = weights
        self.relaxed = milp.Solver(problem, weights, RELAXED if relax else milp.Formulation())
        exact = not relax or self.relaxed.model.short_steps == 0
        self._exact = self.relaxed if exact else None

    @property
    def exact(self) -> milp.Solver:
        if self._exact is None:
            self._exact = milp.Solver(self.problem, self.weights)
        return self._exact


def _repaired(
    ctx: Context, rows: Mapping[str, Sequence[int]], modes: Sequence[BatteryMode] | None = None
) -> tuple[DayState, bool]:
    """The plan made admissible (`DayState.repair`), and whether, as it was, it kept a full
    socket on where the surplus does not cover its power (rule 3's stricter half,
    `search.risky_row`'s KEPT_SHORT): what a relaxation without that rule's rows may do."""
    st = DayState(ctx, rows, modes)
    kept_short = any(st.short_on)
    st.repair()
    return st, kept_short


def _state(
    ctx: Context, rows: Mapping[str, Sequence[int]], modes: Sequence[BatteryMode] | None = None
) -> DayState:
    return _repaired(ctx, rows, modes)[0]


def baseline(ctx: Context) -> tuple[DayState, Plan]:
    """The reference plan made admissible on the real physics (batteries in `zero`
    throughout), and the reference plan."""
    ref = plan_reference(ctx.problem)
    return _state(ctx, ref.sockets, _zero_modes(ctx)), ref


# --- comparisons -------------------------------------------------------------------------


def _value(ctx: Context, score: Score) -> float:
    """One number for the cost part of a score, Wh of import: cost with switch costs, less
    optional energy at `OPTIONAL_WH_RATE` (without prices; with prices it is in the cost)."""
    return score[3] + OPTIONAL_WH_RATE * score[4]


def keeps_previous(ctx: Context, previous: DayState, new: DayState) -> bool:
    """Whether the previous plan (continued, made admissible) stays instead of `new`.

    It stays unless the new plan leaves less unmet need (by more than 1 Wh), breaks fewer
    minimum on / off times, or — with both equal — its cost part (`_value`: import or net cost
    with switch costs, less optional energy at 0.1 Wh per Wh without prices) is lower by more
    than `hold_gain_wh`. A previous plan that cannot be made admissible never stays.
    """
    p, q = previous.score, new.score
    if p[0] == math.inf:
        return False
    if q[0] < p[0] - UNMET_TOLERANCE_WH:
        return False
    if p[0] < q[0] - UNMET_TOLERANCE_WH:
        return True
    if q[2] != p[2]:
        return p[2] < q[2]
    gain = _value(ctx, p) - _value(ctx, q)
    return gain <= ctx.problem.hold_gain_wh


def _better(a: DayState, b: DayState) -> bool:
    return a.score < b.score


def _twin_key(problem: PlanningProblem, name: str) -> tuple[object, ...]:
    """What makes two sockets interchangeable: every field but the name, and their state."""
    spec = next(s for s in problem.sockets if s.name == name)
    return (
        *spec.model_dump(exclude={"name"}).items(),
        problem.initial_on.get(name),
        problem.initial_since_s.get(name),
    )


def tie_break_twins(ctx: Context, state: DayState) -> DayState:
    """Equal sockets (twins: the same spec and state, another name) could take each other's
    rows with the same score, and which one a search ends with depends on where it started.
    The tie goes to the name: among twins, the rows are dealt in name order, the row that
    goes on first to the first name. Kept only when it scores no worse."""
    problem = ctx.problem
    groups: dict[tuple[object, ...], list[str]] = {}
    for s in problem.sockets:
        groups.setdefault(_twin_key(problem, s.name), []).append(s.name)
    rows = state.plan()
    dealt = dict(rows)
    for names in groups.values():
        if len(names) < 2:
            continue
        ordered = sorted(names)
        for name, row in zip(
            ordered, sorted((rows[n] for n in ordered), reverse=True), strict=True
        ):
            dealt[name] = row
    if dealt == rows:
        return state
    cand = DayState(ctx, dealt, state.modes)
    return cand if cand.score <= state.score else state


# --- the plan ------------------------------------------------------------------------------


def _plan_of(
    ctx: Context,
    state: DayState,
    status: PlanStatus,
    started: float,
    info: dict[str, float | int | str],
    base: DayState | None = None,
) -> Plan:
    """The plan of a state, with the day's figures in `info`: grid import and export (Wh)
    and, with prices, the cost, the value put into optional stores and the net cost (EUR),
    and the same net cost for the reference plan (`base`)."""
    out = simulate(ctx.problem, state.plan(), state.modes)
    info["import_wh"] = round(out.grid_import_wh, 1)
    info["export_wh"] = round(out.export_wh, 1)
    if out.cost_eur is not None and out.net_cost_eur is not None:
        info["cost_eur"] = round(out.cost_eur, 4)
        info["optional_value_eur"] = round(out.optional_value_eur or 0.0, 4)
        info["net_cost_eur"] = round(out.net_cost_eur, 4)
        if base is not None:
            ref = simulate(ctx.problem, base.plan(), base.modes)
            info["reference_import_wh"] = round(ref.grid_import_wh, 1)
            info["reference_net_cost_eur"] = round(ref.net_cost_eur or 0.0, 4)
    return Plan(
        sockets=state.plan(),
        battery_power_w=[round(v, 3) + 0.0 for v in out.battery_power_w],
        planner=PLANNER_NAME,
        solve_s=time.perf_counter() - started,
        status=status,
        info=info,
        battery_mode=list(state.modes) if state.modes is not None else None,
    )


def _fallback_plan(
    problem: PlanningProblem, started: float, reason: str, info: dict[str, float | int | str]
) -> Plan:
    """The reference plan made admissible (status `fallback`): the safety net's answer."""
    ctx = Context(problem)
    base, _ = baseline(ctx)
    return _plan_of(ctx, base, "fallback", started, info | {"fallback_reason": reason}, base)


def _previous_state(ctx: Context, with_modes: bool) -> DayState | None:
    """The previous plan continued on this problem's steps (None: there is none)."""
    problem = ctx.problem
    if not problem.previous:
        return None
    modes: list[BatteryMode] | None = None
    if with_modes:
        modes = list(problem.previous_battery_mode) or ["zero"] * ctx.n
    state = _state(ctx, _moved(problem.previous, ctx.n), modes)
    return _without_idle_runs(ctx, state)


def _without_idle_runs(ctx: Context, state: DayState) -> DayState:
    """`state` without the on-runs in which a socket draws nothing (its store is full before
    the run starts: the run only switches it), but for the run it is in now (its minimum on
    time). A previous plan made while a store was filling may hold such a run for later
    steps, and the hysteresis would keep it where its switches cost less than
    `hold_gain_wh`: a boiler off since it read full then re-heats from the grid for the
    minutes until the next plan. A run that starts inside the minimum on time of a socket on
    now stays too (dropping it would break that hold at more steps). Dropping a run that
    draws nothing changes no energy, and leaves fewer switches, no new minimum on / off time
    broken and the plan admissible, so the rows change in place (no repair)."""
    for i, sock in enumerate(ctx.socks):
        row, draw = list(state.rows[i]), state.draws[i]
        held_on = max(sock.held, 1) if sock.init else 0  # steps the state now holds 'on'
        for first, last in on_runs(row):
            if first >= held_on and all(d <= 0 for d in draw[first : last + 1]):
                row[first : last + 1] = [0] * (last + 1 - first)
        if row != state.rows[i]:
            state.apply_row(i, row)
    return state


def passes_guard(ctx: Context, state: DayState) -> bool:
    """Whether a plan may be published for `ctx`'s problem: admissible, and no worse than
    the reference — or the previous plan continued, kept within `hold_gain_wh` (the
    hysteresis: `_finish` keeps it against a new plan that is no worse than the reference)."""
    if state.score == INADMISSIBLE:
        return False
    base, _ = baseline(ctx)
    if not _better(base, state):
        return True
    previous = _previous_state(ctx, state.modes is not None)
    return (
        previous is not None
        and previous.plan() == state.plan()
        and previous.modes == state.modes
        and keeps_previous(ctx, previous, base)
    )


def _finish(
    ctx: Context,
    best: DayState,
    base: DayState,
    status: PlanStatus,
    started: float,
    info: dict[str, float | int | str],
) -> Plan:
    """The guard against the reference, then hysteresis against `previous`.

    Equal sockets tie-break by name (`tie_break_twins`), then by the previous plan (kept
    when the new plan gains nothing over it). With `previous`, any plan other than the
    previous one carries `hold_gain_wh` as a cost
    (the reference plan too), so a previous plan kept within that margin of the new plan is
    also within it of the reference: 'never worse than the reference' under that cost.
    """
    if _better(base, best):
        info["fallback_reason"] = "the reference plan scores better"
        best, status = base, "fallback"
    best = tie_break_twins(ctx, best)
    previous = _previous_state(ctx, best.modes is not None)
    if previous is not None:
        same = previous.plan() == best.plan() and previous.modes == best.modes
        if not same and keeps_previous(ctx, previous, best):
            info["kept_previous"] = 1
            return _plan_of(ctx, previous, status, started, info, base)
        info["kept_previous"] = 0
    return _plan_of(ctx, best, status, started, info, base)


def plan_optimal(problem: PlanningProblem, options: Options | None = None) -> Plan:
    """The full tier (see the module docstring); with `milp_worker`, in a worker process."""
    opts = options or Options()
    if opts.milp_worker:
        return plan_in_worker(problem, replace(opts, milp_worker=False))
    started = time.perf_counter()
    clock = _Clock(opts.time_limit_s if opts.time_limit_s is not None else default_ceiling(problem))
    info: dict[str, float | int | str] = {}
    try:
        return _plan_full(problem, opts, clock, info)
    except CeilingReachedError:
        return _fallback_plan(problem, started, "safety ceiling reached", info)


def _budget(opts: Options, clock: _Clock, checkpoints: int) -> milp.Budget:
    return milp.Budget(
        mip_rel_gap=opts.mip_rel_gap,
        mip_abs_gap=opts.mip_abs_gap,
        max_nodes=opts.mip_max_nodes,
        max_leaves=opts.mip_max_leaves,
        max_lp_iterations=opts.mip_max_lp_iterations,
        max_checkpoints=checkpoints,
        max_improving_sols=opts.mip_max_improving_sols,
        random_seed=opts.random_seed,
        heuristic_effort=opts.mip_heuristic_effort,
        ceiling_s=max(0.01, clock.left()),
    )


def _main_checkpoints(opts: Options, integers: int, checkpoints: int) -> int:
    """A main MILP run's checkpoints for a model of `integers` integer columns: `checkpoints`
    up to `mip_size_ref` of them, proportionally fewer beyond (at least 1)."""
    if opts.mip_size_ref <= 0 or integers <= opts.mip_size_ref:
        return checkpoints
    return max(1, math.ceil(checkpoints * opts.mip_size_ref / integers))


def _close_enough(result: milp.MilpResult, opts: Options) -> bool:
    """Whether a MILP run's own bound leaves it within `mip_restart_min_gap` (relative), so a
    further run is not worth its work. A run without a finite gap is never close enough."""
    gap = float(result.info.get("gap", -1.0))
    return result.rows is not None and 0.0 <= gap <= opts.mip_restart_min_gap


def _switch_stage_applies(best: DayState) -> bool:
    """The fewest-switches stage is for plans that meet every need and keep every hold."""
    return best.score[0] <= 0 and best.score[2] <= 0


def _switch_cap(ctx: Context, weights: milp.Weights, best: DayState) -> float:
    """The fewest-switches stage's cap: the MILP objective (`weights`) of the best plan (plus
    a hair). The score's cost part holds the switch costs, and without prices but with a
    switch cost the optional energy at `OPTIONAL_WORTH`, as the MILP weighs them; without
    either, the MILP weighs optional energy at `weights.optional_wh`."""
    value = best.score[3]
    # The model has no columns for battery mode changes: their costs come off, and with
    # `price_switches` off the relays' too.
    relays = sum(s[2] for s in best.stats)
    unpriced = best.score[5] - (relays if weights.price_switches else 0)
    value -= ctx.problem.switch_cost_wh * unpriced
    if not ctx.priced and ctx.problem.switch_cost_wh <= 0:
        value += weights.optional_wh * best.score[4]
    return value + 1e-6


def _fewer_switches(
    ctx: Context,
    models: _Models,
    best: DayState,
    opts: Options,
    clock: _Clock,
    info: dict[str, float | int | str],
    evals: _Evals,
) -> tuple[DayState, int]:
    """The second, lexicographic stage: among plans whose objective is no worse than the
    best plan's, the one with the fewest switches (the MILP with its objective capped and
    switches as the objective, from the best plan). Only for plans that meet every need
    and keep every minimum on / off time. On the relaxation first (`_Models`), and where
    its plan breaks rule 3's stricter half and, repaired, is no better than the best plan,
    once more on the model with the rule's rows (measured: on the days where the repaired
    plan is taken, the second solve found nothing more)."""
    if not _switch_stage_applies(best):
        return best, 0
    # A socket with at most two switches is one run already: it stays as it is (a much
    # smaller problem); with none left to change the stage is skipped.
    counts = [s[2] for s in best.stats]
    fixed = {sock.name: best.rows[i] for i, sock in enumerate(ctx.socks) if counts[i] <= 2}
    if len(fixed) == len(ctx.socks):
        return best, 0
    before = best.score[5]
    moves = 0
    for solver in (models.relaxed, models.exact):
        budget = replace(_budget(opts, clock, opts.switch_checkpoints), mip_abs_gap=0.5)
        result = solver.solve(
            best.plan(),
            budget,
            fewest_switches_within=_switch_cap(ctx, models.weights, best),
            fixed=fixed,
        )
        info["switch_stage"] = result.status
        if result.status == "ceiling":
            raise CeilingReachedError
        if result.rows is None:
            return best, moves
        cand, kept_short = _repaired(ctx, result.rows, best.modes)
        cand, m = _polish(cand, evals, plans_modes(ctx), rounds=1)
        moves += m
        if cand.score <= best.score:
            info["switch_stage_switches"] = f"{before} -> {cand.score[5]}"
            best = cand
        elif kept_short and solver is not models.exact:
            # The relaxation's plan broke the rule and, repaired, lost: the model with it.
            info["switch_stage_rule3_rows"] = "added"
            continue
        break
    return best, moves


#: `_neighbourhoods`: what setting up one MILP solve costs, in HiGHS checkpoints (measured:
#: a solve that presolve settles takes about as long as 8 checkpoints of the same model).
NEIGHBOURHOOD_SOLVE_COST = 8


def _neighbourhoods(
    ctx: Context,
    solver: milp.Solver,
    best: DayState,
    opts: Options,
    clock: _Clock,
    info: dict[str, float | int | str],
    evals: _Evals,
    fewest: bool = False,
) -> tuple[DayState, int]:
    """Fix-and-optimise: the MILP with every socket but two fixed to the best plan's rows (a
    small model HiGHS often solves at its root), each pair in priority order, each result
    polished by local search and taken when it scores better; rounds until one finds nothing
    or the work budget (`neighbourhood_work`) is spent. Where the main MILP's budget ran out
    on a day with many sockets competing for the surplus, a pair re-planned together finds
    what the whole model's search did not reach. With `fewest`, each solve is the second
    stage's (`_fewer_switches`: the fewest switches with the objective capped at the best
    plan's) on the pair: where that stage's whole model ran out of budget, or after a main
    MILP that branched without a proof; where no pair found fewer switches, groups of three
    follow (`switch_neighbourhood_sockets`, `switch_group_solves_max`)."""
    if fewest and not _switch_stage_applies(best):
        return best, 0
    k = len(ctx.socks)
    left = float(opts.switch_neighbourhood_work if fewest else opts.neighbourhood_work)
    size = solver.integers / 1000
    if k < 3 or left <= 0 or opts.neighbourhood_solve_checkpoints <= 0:
        return best, 0
    names = [s.name for s in ctx.socks]
    unpriced = ctx.problem.switch_cost_wh > 0 and not solver.model.weights.price_switches
    moves = solves = better = proved = 0
    largest = max(2, opts.switch_neighbourhood_sockets) if fewest else 2
    cps = opts.neighbourhood_solve_checkpoints
    easy = False  # a round of larger groups after pairs that all proved their optimum
    for group_size in range(2, min(largest, k - 1) + 1):
        groups = list(combinations(range(k), group_size))
        # Larger groups only where the smaller ones found nothing, and where one round of
        # them is a few solves (their number grows as k^3: 10 for 5 sockets, 56 for 8), with
        # what the pairs left of `switch_neighbourhood_work` (one budget for every size:
        # measured on a 288-step day of 5-minute steps, 3 pair solves of 2.9 s CPU each found
        # nothing, and a fresh budget for triples spent 8.7 s more on 3 more).
        if group_size > 2 and (better > 0 or len(groups) > opts.switch_group_solves_max):
            # Or, with `switch_groups_when_proved`, where every smaller group's solve
            # proved its optimum (small models HiGHS settles in a few checkpoints): then
            # half the checkpoints per solve, a third of the work, and the round ends at
            # the first solve that does not prove its optimum (the groups got harder).
            if not (opts.switch_groups_when_proved and solves > 0 and proved == solves):
                break
            easy = True
            cps = max(1, opts.neighbourhood_solve_checkpoints // 2)
            left = float(opts.switch_neighbourhood_work) / 3
        while left > 0:
            improved = False
            for group in groups:
                if left <= 0:
                    break
                if fewest and all(best.stats[i][2] <= 2 for i in group):
                    continue  # sockets in one run each: no switches to spare
                fixed = {names[m]: best.rows[m] for m in range(k) if m not in group}
                budget = _budget(opts, clock, cps)
                if fewest:
                    result = solver.solve(
                        best.plan(),
                        replace(budget, mip_abs_gap=0.5),
                        fewest_switches_within=_switch_cap(ctx, solver.model.weights, best),
                        fixed=fixed,
                    )
                else:
                    result = solver.solve(best.plan(), budget, fixed=fixed)
                solves += 1
                proved += result.status == "optimal"
                used = int(result.info.get("checkpoints", cps)) + NEIGHBOURHOOD_SOLVE_COST
                left -= used * size
                if result.status == "ceiling":
                    raise CeilingReachedError
                if easy and result.status != "optimal":
                    left = 0.0  # this round ends here (its plan, if any, is still weighed)
                if result.rows is None or result.rows == best.plan():
                    continue
                cand = _state(ctx, result.rows, best.modes)
                if cand.score == INADMISSIBLE:
                    continue
                merge = _Evals(opts.switch_evals, clock) if unpriced else None
                cand, m = _settled(cand, evals, False, merge, rounds=1)
                moves += m
                if cand.score < best.score:
                    best = cand
                    better += 1
                    improved = True
            if not improved:
                break
    what = "switch_neighbourhood" if fewest else "neighbourhood"
    info[f"{what}_solves"] = solves
    info[f"{what}_better"] = better
    return best, moves


def _consolidated(
    best: DayState,
    opts: Options,
    clock: _Clock,
    info: dict[str, float | int | str],
    use_modes: bool,
) -> tuple[DayState, int]:
    """Fewer switches at no loss, in pure Python: each socket's energy moved into one run
    (`search.consolidate`, `switch_evals` evaluations), then local search."""
    if opts.switch_evals <= 0:
        return best, 0
    budget = _Evals(opts.switch_evals, clock)
    before = best.score[5]
    moves, _ = consolidate(best, budget)
    if moves:
        best, m = _polish(best, budget, use_modes, rounds=1)
        moves += m
    info["consolidated_switches"] = f"{before} -> {best.score[5]}"
    info["consolidation_evals"] = budget.used
    return best, moves


def plans_modes(ctx: Context) -> bool:
    """Whether plans for this problem choose the batteries' modes (prices, batteries, and the
    P1 meter's token: `battery_modes`)."""
    return ctx.priced and ctx.has_batt and ctx.problem.battery_modes


def _zero_modes(ctx: Context) -> list[BatteryMode] | None:
    """The modes a plan starts from: `zero` throughout where the plan states its modes
    (with prices), None (zero mode, implied) without prices."""
    return ["zero"] * ctx.n if ctx.priced and ctx.has_batt else None


def _with_best_modes(state: DayState) -> DayState:
    """The state with the cheapest admissible mode sequence for its sockets (`modes.py`)."""
    memo = state.ctx.best_modes_memo
    key = tuple(tuple(row) for row in state.rows)
    if key not in memo:
        memo[key] = best_modes(state)
    kept = memo[key]
    found = list(kept) if kept is not None else None  # a copy: a search may change its modes
    if found is not None and found != state.modes:
        cand = DayState(state.ctx, state.plan(), found)
        if cand.score < state.score:
            return cand
    return state


def _polish(
    state: DayState, evals: _Evals, use_modes: bool, rounds: int = 2
) -> tuple[DayState, int]:
    """Local search on the sockets, alternating with the best modes for them."""
    moves, _ = improve(state, evals)
    for _ in range(rounds if use_modes else 0):
        before = state.score
        state = _with_best_modes(state)
        m, _ = improve(state, evals)
        moves += m
        if state.score >= before:
            break
    return state, moves


def _settled(
    cand: DayState,
    evals: _Evals,
    use_modes: bool,
    merge: _Evals | None,
    rounds: int = 2,
) -> tuple[DayState, int]:
    """A MILP's plan polished by local search (`_polish`). With `merge` (the plan is from a
    model without switch costs), each socket's energy moved into one run first
    (`search.consolidate`) and a first polish, both on `merge`'s own evaluations, then the
    usual polish: such a model may split a socket's energy into runs that the search,
    pricing every switch, would rather drop than move (measured on autumn-c10-s5-b2-15m
    with the calm settings: 900 Wh into optional stores kept instead of none), and its plan
    takes more moves to settle than one from the model with the switch cost (measured on
    summer-c30-s6-b2-5m-paid-gridmax0, 288 steps with battery modes: on the shared budget
    alone, 4300 Wh-eq worse than with the switch cost in the model; with its own, 2 Wh-eq)."""
    moves = 0
    if merge is not None:
        moves, _ = consolidate(cand, merge)
        cand, m = _polish(cand, merge, use_modes, rounds)
        moves += m
    cand, m = _polish(cand, evals, use_modes, rounds)
    return cand, moves + m


def _priced_switches(
    ctx: Context,
    best: DayState,
    opts: Options,
    clock: _Clock,
    info: dict[str, float | int | str],
    evals: _Evals,
    use_modes: bool,
) -> tuple[DayState, int, bool]:
    """The energy-first pipeline's last stage (`Options.energy_first`): the MILP with the
    switch cost (and rule 3's stricter half as rows), `priced_switch_checkpoints` of work
    from the best plan; its plan, polished, is taken where it scores better. Returns the
    best plan, the search's moves, and whether the run proved the day's optimum."""
    if opts.priced_switch_checkpoints <= 0:
        return best, 0, False
    solver = milp.Solver(ctx.problem, opts.weights)
    checkpoints = _main_checkpoints(opts, solver.integers, opts.priced_switch_checkpoints)
    result = solver.solve(best.plan(), _budget(opts, clock, checkpoints))
    info["priced_switch_stage"] = result.status
    info["priced_switch_gap"] = result.info.get("gap", -1.0)
    if result.status == "ceiling":
        raise CeilingReachedError
    proved = result.status == "optimal" and not use_modes
    moves = 0
    if result.rows is None:
        return best, moves, False
    cand = _state(ctx, result.rows, best.modes)
    if cand.score == INADMISSIBLE and not use_modes:
        return best, moves, False
    cand, moves = _polish(cand, evals, use_modes)
    if cand.score <= best.score:
        return cand, moves, proved
    return best, moves, False


def _plan_full(
    problem: PlanningProblem, opts: Options, clock: _Clock, info: dict[str, float | int | str]
) -> Plan:
    started = clock.t0
    ctx = Context(problem)
    use_modes = plans_modes(ctx)
    zero = _zero_modes(ctx)
    base, _ = baseline(ctx)
    starts = [base.copy(), _state(ctx, window_plan(problem), zero)]
    for extra in (opts.warm_start, problem.previous or None):
        if extra is not None:
            starts.append(_state(ctx, _moved(extra, ctx.n), zero))
    starts = [s for s in starts if s.score != INADMISSIBLE]
    starts.sort(key=lambda s: s.score)
    evals = _Evals(opts.max_evals, clock)
    first = _Evals(opts.max_evals // 3, clock)
    best, moves = _polish(starts[0], first, use_modes)
    evals.left -= first.used
    clock.check()
    status: PlanStatus = "heuristic"
    if opts.milp_share > 0:
        try:
            # First the relaxation without rule 3's stricter half (`Formulation.kept_short`):
            # HiGHS finds much better plans in it on large days, the search repairs them, and
            # where its optimum keeps the rule it is the day's optimum. Only an optimum that
            # breaks the rule brings in the model with those rows (measured in
            # docs/history/bench-planners.md, "The relaxation first").
            energy_first = opts.energy_first and problem.switch_cost_wh > 0
            weights = replace(opts.weights, price_switches=False) if energy_first else opts.weights
            models = _Models(problem, weights, relax=not use_modes)
            solver = models.relaxed
        except ImportError:
            info["milp_status"] = "highspy not installed"
        else:
            proved = False
            branched = False  # the first run got through the root node
            runs = max(1, opts.mip_restarts)
            run = 0
            fresh = True  # the next run is on a model not run yet: the first run's checkpoints
            while run < runs:
                # Each run starts from the best plan so far, with its own seed: HiGHS's
                # heuristics find very different plans from one seed to the next.
                checkpoints = _main_checkpoints(
                    opts,
                    solver.integers,
                    opts.mip_max_checkpoints if fresh else opts.mip_restart_checkpoints,
                )
                budget = _budget(opts, clock, checkpoints)
                budget = replace(budget, random_seed=opts.random_seed + run)
                result = solver.solve(best.plan(), budget)
                if run == 0:
                    info.update({f"milp_{k}": v for k, v in result.info.items()})
                    branched = int(result.info.get("nodes", 0)) > 0
                run += 1
                fresh = False
                info["milp_status"] = result.status
                info["milp_runs"] = run
                if result.status == "ceiling":
                    raise CeilingReachedError
                proved = result.status == "optimal" and not use_modes
                if result.rows is not None:
                    cand, kept_short = _repaired(ctx, result.rows, zero)
                    if kept_short and not solver.formulation.kept_short:
                        proved = False  # the relaxation's plan broke the rule
                        if result.status == "optimal" and not use_modes:
                            # Its optimum did: one more run, on the model with the rule's
                            # rows, from the repaired plan.
                            solver = models.exact
                            info["milp_rule3_rows"] = "added"
                            runs = max(runs, run + 1)
                            fresh = True
                    if cand.score != INADMISSIBLE or use_modes:
                        merge = _Evals(opts.switch_evals, clock) if energy_first else None
                        cand, m = _settled(cand, evals, use_modes, merge)
                        moves += m
                        if cand.score <= best.score:
                            best = cand
                        else:
                            proved = False  # the model's optimum is not the day's best
                clock.check()
                if fresh:
                    continue
                if result.status == "optimal" or int(result.info.get("nodes", 0)) == 0:
                    break
                if _close_enough(result, opts):
                    info["milp_restart_skipped"] = "gap"
                    break
            # A main MILP that ended inside its root node without a proof, on a day of short
            # steps: the day at a coarser step (a model a fraction of the size, whose root
            # HiGHS gets through), its plan one more start.
            coarse_taken = False
            if not proved and not branched:
                best, m, coarse_taken = _from_coarse(ctx, best, opts, clock, info, zero, use_modes)
                moves += m
            # Re-planning pairs of sockets: where the main MILP got through its root (a model
            # whose root HiGHS gets through in budget: its smaller solves are cheap too).
            if not proved and branched and not use_modes:
                best, m = _neighbourhoods(ctx, models.exact, best, opts, clock, info, evals)
                moves += m
            # Fewer switches: the pure-Python stage first, so the MILP's second stage has
            # less left to do (a smaller model). With modes the MILP is a relaxation (a freely
            # controllable battery) and its second stage, polished with the best modes, also
            # lowers the cost: it goes first there, from the MILP's own best, as before.
            if not use_modes:
                best, m = _consolidated(best, opts, clock, info, use_modes)
                moves += m
            # The fewest switches: on the whole model, then (where that ran out of budget) on
            # pairs of sockets. Where the main MILP branched without a proof (the pairs above
            # ran), the whole model's capped stage is skipped: a harder objective on the model
            # whose root and branching did not settle the easier one, it ran out of budget
            # there without a switch fewer (measured: 62 -> 62, 14 -> 14, 10 -> 10 switches,
            # 1.4 s CPU on a 96-step day with 8 sockets); the pairs find what there is.
            pairs_only = (
                not proved and branched and not use_modes and opts.switch_neighbourhood_work > 0
            )
            # Where the coarse plan was taken, the fine model's root did not get through in
            # its budget, and its capped stage (a harder objective on the same model) is
            # skipped too: on the 222-step day it ran 30 checkpoints, 4.7 s CPU, for no switch
            # fewer (23 -> 23; re-planning pairs of sockets instead: 23 -> 23, 2.6 s); the
            # consolidation above took that plan from 28 to 23.
            if coarse_taken and opts.switch_checkpoints > 0:
                info["switch_stage"] = "skipped after the coarse plan"
            if opts.switch_checkpoints > 0 and not pairs_only and not coarse_taken:
                best, m = _fewer_switches(ctx, models, best, opts, clock, info, evals)
                moves += m
            if opts.switch_checkpoints > 0 and pairs_only:
                info["switch_stage"] = "pairs only"
            if (
                opts.switch_checkpoints > 0
                and branched
                and not use_modes
                and (pairs_only or info.get("switch_stage") == "limited")
            ):
                best, m = _neighbourhoods(ctx, models.exact, best, opts, clock, info, evals, True)
                moves += m
            if energy_first:
                # The stages above proved (at most) the best energy without switch costs;
                # the model with them, once, from the best plan, is what may prove the day.
                info["milp_energy_proved"] = int(proved)
                best, m, proved = _priced_switches(ctx, best, opts, clock, info, evals, use_modes)
                moves += m
            status = "optimal" if proved else "time-limited"
    if status == "heuristic" or use_modes:
        best, m = _consolidated(best, opts, clock, info, use_modes)
        moves += m
    best, m = _polish(best, evals, use_modes, rounds=1)
    if use_modes:
        m2, _ = improve(best, evals, modes=True)
        m += m2
    moves += m
    info["evals"] = opts.max_evals - evals.left
    info["moves"] = moves
    return _finish(ctx, best, base, status, started, info)


def plan_quick(
    problem: PlanningProblem,
    incumbent: Mapping[str, Sequence[int]] | None,
    options: Options | None = None,
) -> Plan:
    """The quick tier: local search from `incumbent` (moved onto this problem's steps; None:
    from the reference plan) and, with modes, from `problem.previous_battery_mode`;
    `options.quick_evals` evaluations; never worse than the reference plan, deterministic."""
    opts = options or Options()
    started = time.perf_counter()
    clock = _Clock(opts.time_limit_s if opts.time_limit_s is not None else QUICK_CEILING_S)
    info: dict[str, float | int | str] = {"tier": "quick"}
    try:
        ctx = Context(problem)
        use_modes = plans_modes(ctx)
        base, _ = baseline(ctx)
        start = base.copy()
        if incumbent is not None:
            modes = _zero_modes(ctx)
            if use_modes and problem.previous_battery_mode:
                modes = list(problem.previous_battery_mode)
            mine = _state(ctx, _moved(incumbent, ctx.n), modes)
            if mine.score != INADMISSIBLE:
                start = mine
        evals = _Evals(opts.quick_evals, clock)
        moves, _ = improve(start, evals, modes=use_modes)
        info["evals"] = evals.used
        info["moves"] = moves
        return _finish(ctx, start, base, "heuristic", started, info)
    except CeilingReachedError:
        return _fallback_plan(problem, started, "safety ceiling reached", info)


# --- the worker ----------------------------------------------------------------------------

#: Time a worker process may take beyond the safety ceiling: starting Python, importing
#: pydantic, numpy and HiGHS, s.
WORKER_START_S = 10.0


def worker_request(problem: PlanningProblem, options: Options | None = None) -> str:
    """The worker's input: one JSON document `{"problem": ..., "options": ...}`."""
    opts = options or Options()
    return json.dumps(
        {"problem": problem.model_dump(mode="json", exclude_none=True), "options": opts.to_json()}
    )


def plan_in_worker(
    problem: PlanningProblem, options: Options | None = None, timeout_s: float | None = None
) -> Plan:
    """The full tier in a child process (`python -m shared.planning.worker`).

    A worker that fails (exit status, no answer, an answer that is no plan) or outlives
    `timeout_s` (default: the safety ceiling + `WORKER_START_S`) gives the reference plan
    made admissible, `status: fallback`, with the reason in `info.fallback_reason`.
    """
    opts = replace(options or Options(), milp_worker=False)
    started = time.perf_counter()
    ceiling = opts.time_limit_s if opts.time_limit_s is not None else default_ceiling(problem)
    limit = timeout_s if timeout_s is not None else ceiling + WORKER_START_S
    try:
        done = subprocess.run(
            [sys.executable, "-m", "shared.planning.worker"],
            input=worker_request(problem, opts),
            capture_output=True,
            text=True,
            timeout=limit,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return _fallback_plan(problem, started, f"worker timed out after {limit:g} s", {})
    except OSError as err:
        return _fallback_plan(problem, started, f"worker failed to start: {err.strerror}", {})
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no message"])[-1][:300]
        return _fallback_plan(problem, started, f"worker failed ({done.returncode}): {why}", {})
    try:
        plan = Plan.model_validate_json(done.stdout)
    except ValueError:
        return _fallback_plan(problem, started, "worker answered no plan", {})
    if set(plan.sockets) != {s.name for s in problem.sockets} or any(
        len(r) != problem.n_steps for r in plan.sockets.values()
    ):
        return _fallback_plan(problem, started, "worker's plan does not fit the problem", {})
    # The guard once more, here: a worker's plan is never taken on trust.
    ctx = Context(problem)
    if not passes_guard(ctx, DayState(ctx, plan.sockets, plan.battery_mode)):
        return _fallback_plan(problem, started, "worker's plan scores worse than the reference", {})
    return plan.model_copy(update={"solve_s": time.perf_counter() - started})


# --- a bound for the benchmark -------------------------------------------------------------


def priced_bound(problem: PlanningProblem, seconds: float) -> tuple[float, str]:
    """A lower bound on the net cost (EUR) of any plan of a priced problem that meets every
    need: the MILP with a freely controllable battery (charging from surplus or grid at any
    power, discharging into the house, never into the grid: every mode sequence is one of its
    choices), solved without work limits for up to `seconds` (wall); its dual bound.
    Returns (bound EUR, solver status)."""
    if not problem.priced:
        raise ValueError("priced_bound needs a problem with prices")
    free = problem.model_copy(update={"battery_modes": True})
    ctx = Context(free)
    result = milp.Solver(free, milp.Weights(optional_priority=0.0)).solve(
        None,
        milp.Budget(
            mip_rel_gap=1e-6,
            mip_abs_gap=1e-6,
            max_nodes=10**9,
            max_leaves=10**9,
            max_checkpoints=10**9,
            ceiling_s=seconds,
            keep_at_ceiling=True,
        ),
    )
    bound = float(result.info["bound"])
    return bound / ctx.wh_per_eur, result.status
