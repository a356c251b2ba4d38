"""The optimal planner: a small MILP solved by HiGHS, guarded by the day simulator.

What it optimises, in this order (weights far apart, see `Weights`):
1. needed sockets full by the end of the horizon (higher priority weighs more);
2. least grid import;
3. most energy into optional sockets;
4. fewest relay switches.

The model (per step t, socket s):
- x[s,t] in {0,1}: socket on. An on socket is counted at its full power (conservative: the
  real socket stops drawing once full, so reality is never worse than the model for import);
- the batteries, aggregated, as a free lossless store (charge c, discharge u, energy e):
  for fixed loads, HomeWizard zero mode (charge on surplus, discharge into deficit) reaches the
  same least import as any other lossless schedule without grid charging, so the model's
  import is what zero mode achieves;
- an optional socket may be on only where the step has no deficit (load <= surplus: nothing from
  grid or battery), only where the surplus covers its power, and only once the battery holds
  its `min_battery_charge`;
- switches w[s,t] >= |x[s,t] - x[s,t-1]|, at most one per switch interval.

Every solution is then run through the true day simulator (`simulate`), repaired where the
physics disagree with the model (an optional socket on in a step the battery or grid fed), and
compared with the reference plan: the better one by (unmet need, import, optional energy,
switches) is returned, so the result is never worse than the reference. A solver time limit
bounds the time; the status says what happened: `optimal`, `time-limited` (best found when
time ran out), `fallback` (the reference plan, e.g. no solver or the solver found nothing better).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from shared.planning.problem import Plan, PlanningProblem, PlanStatus, SocketSpec
from shared.planning.reference import plan_reference
from shared.planning.search import Budget, DayState, improve
from shared.planning.simulate import UNMET_TOLERANCE_WH, DayOutcome, simulate

PLANNER_NAME = "optimal"


@dataclass(frozen=True, slots=True)
class Weights:
    """Objective weights (per Wh, per switch): far apart to act lexicographically."""

    unmet_wh: float = 1000.0
    import_wh: float = 1.0
    optional_wh: float = 0.01
    switch: float = 0.002


@dataclass(frozen=True, slots=True)
class Options:
    """Solver options. `time_limit_s=None` scales with the problem size."""

    time_limit_s: float | None = None
    #: Share of the time budget the MILP may use. Its plan is used only when it proves its
    #: optimum in that time, so the result does not depend on how fast the machine is.
    milp_share: float = 0.4
    #: Moves the local search may evaluate (all starts together): a count, not a time, so
    #: the same input always gives the same plan. The time budget stays a safety net.
    max_evals: int = 1500
    #: A plan to start from as well (e.g. the previous plan, moved on to this problem's
    #: first step). With `milp_share=0` and a small `max_evals` this is a quick re-plan.
    warm_start: Mapping[str, Sequence[int]] | None = None
    #: Run the MILP in a short-lived worker process (`python -m shared.planning.milp_worker`),
    #: so the solver and numpy never stay in a long-running service's memory.
    milp_worker: bool = False
    mip_rel_gap: float = 1e-4
    weights: Weights = Weights()


def default_time_limit(problem: PlanningProblem) -> float:
    """Time budget: 0.15 s for a 96-step day with 5 sockets, growing with steps x sockets,
    between 0.05 s and 0.9 s (the scheduler replans every poll; a Pi is ~4x slower)."""
    size = problem.n_steps * max(1, len(problem.sockets))
    return float(min(0.9, max(0.05, 0.15 * size / 480)))


class _Rows:
    """Sparse rows in compressed form for HiGHS."""

    def __init__(self) -> None:
        self.lower: list[float] = []
        self.upper: list[float] = []
        self.starts: list[int] = []
        self.index: list[int] = []
        self.value: list[float] = []

    def add(self, cols: list[int], vals: list[float], lo: float, hi: float) -> None:
        self.starts.append(len(self.index))
        self.index.extend(cols)
        self.value.extend(vals)
        self.lower.append(lo)
        self.upper.append(hi)


class _Model:
    """The MILP for one problem: variables, rows and the mapping back to a plan."""

    def __init__(self, problem: PlanningProblem, weights: Weights) -> None:
        self.p = problem
        n, dt = problem.n_steps, problem.dt_h
        a = problem.available_power_w
        socks = problem.ordered_sockets()
        self.socks = socks
        self.cost: list[float] = []
        self.lo: list[float] = []
        self.hi: list[float] = []
        self.integer: list[int] = []
        self.rows = _Rows()
        inf = math.inf

        def var(cost: float, lo: float, hi: float) -> int:
            self.cost.append(cost)
            self.lo.append(lo)
            self.hi.append(hi)
            return len(self.cost) - 1

        cap = problem.battery_capacity_wh
        pb = problem.battery_power_w
        soc0 = min(problem.battery_stored_wh, cap)
        has_batt = cap > 0 and pb > 0
        n_needed = sum(1 for s in socks if s.daily_need)

        # Socket on/off.
        self.x: dict[str, list[int]] = {}
        for s in socks:
            row = []
            for t in range(n):
                allowed = True
                if not s.daily_need:
                    allowed = a[t] >= s.max_power_usage - 1e-9 and s.room_wh() > 0
                    if s.min_battery_charge > 0 and has_batt and t == 0:
                        allowed = allowed and soc0 >= s.min_battery_charge * cap - 1e-9
                elif s.room_wh() <= 0:
                    allowed = False
                j = var(0.0, 0.0, 1.0 if allowed else 0.0)
                self.integer.append(j)
                row.append(j)
            self.x[s.name] = row

        # Grid.
        imp = [var(weights.import_wh * dt, 0.0, inf) for _ in range(n)]
        exp = [var(0.0, 0.0, inf) for _ in range(n)]
        # Battery.
        if has_batt:
            c = [var(0.0, 0.0, pb) for _ in range(n)]
            u = [var(0.0, 0.0, pb) for _ in range(n)]
            e = [var(0.0, 0.0, cap) for _ in range(n)]
            # Zero mode never charges from the grid: charge <= max(surplus, 0).
            for t in range(n):
                self.hi[c[t]] = min(pb, max(0.0, a[t]))
        # Power balance: load + charge - discharge - import + export = surplus.
        for t in range(n):
            cols = [self.x[s.name][t] for s in socks] + [imp[t], exp[t]]
            vals = [s.max_power_usage for s in socks] + [-1.0, 1.0]
            if has_batt:
                cols += [c[t], u[t]]
                vals += [1.0, -1.0]
            self.rows.add(cols, vals, a[t], a[t])
        if has_batt:
            for t in range(n):
                cols = [e[t], c[t], u[t]]
                vals = [1.0, -dt, dt]
                rhs = 0.0
                if t > 0:
                    cols.append(e[t - 1])
                    vals.append(-1.0)
                else:
                    rhs = soc0
                self.rows.add(cols, vals, rhs, rhs)

        rank = 0
        for s in socks:
            xs = self.x[s.name]
            step_wh = s.max_power_usage * dt
            if s.daily_need:
                # Needed: energy planned + unmet >= room. Priority weighs the unmet Wh.
                w_unmet = weights.unmet_wh * (1.0 + (n_needed - rank) / max(1, n_needed))
                rank += 1
                short = var(w_unmet, 0.0, s.room_wh())
                self.rows.add([*xs, short], [step_wh] * n + [1.0], s.room_wh(), inf)
            else:
                # Optional: credited energy g <= planned energy, g <= room.
                g = var(-weights.optional_wh, 0.0, s.room_wh())
                self.rows.add([g, *xs], [1.0] + [-step_wh] * n, -inf, 0.0)
                others = [o for o in socks if o.name != s.name]
                big_m = sum(o.max_power_usage for o in others)
                for t in range(n):
                    if self.hi[xs[t]] == 0.0:
                        continue
                    # On only without deficit: total load <= surplus.
                    cols = [self.x[o.name][t] for o in others] + [xs[t]]
                    vals = [o.max_power_usage for o in others] + [s.max_power_usage + big_m]
                    self.rows.add(cols, vals, -inf, a[t] + big_m)
                    if has_batt and s.min_battery_charge > 0 and t > 0:
                        # Battery holds its threshold at the start of the step.
                        need_wh = s.min_battery_charge * cap
                        self.rows.add([e[t - 1], xs[t]], [1.0, -need_wh], 0.0, inf)
            # Switches, and at most one per switch interval.
            w: list[int] = []
            initial = problem.initial_on.get(s.name)
            for t in range(n):
                if t == 0 and initial is None:
                    continue
                wt = var(weights.switch, 0.0, 1.0)
                w.append(wt)
                if t == 0:
                    init = 1.0 if initial else 0.0
                    self.rows.add([wt, xs[0]], [1.0, -1.0], -init, inf)
                    self.rows.add([wt, xs[0]], [1.0, 1.0], init, inf)
                else:
                    self.rows.add([wt, xs[t], xs[t - 1]], [1.0, -1.0, 1.0], 0.0, inf)
                    self.rows.add([wt, xs[t], xs[t - 1]], [1.0, 1.0, -1.0], 0.0, inf)
            k = math.ceil(problem.switch_interval_s / problem.step_s - 1e-9)
            if k > 1:
                for i in range(len(w) - 1):
                    window = w[i : i + k]
                    if len(window) > 1:
                        self.rows.add(window, [1.0] * len(window), -inf, 1.0)

    def solution_from_states(self, states: dict[str, list[int]]) -> Any:
        """A (partial) starting point: socket columns from a plan, the rest left to HiGHS."""
        import numpy as np

        values = np.zeros(len(self.cost))
        for name, cols in self.x.items():
            row = states.get(name, [])
            for t, j in enumerate(cols):
                values[j] = float(row[t]) if t < len(row) and self.hi[j] > 0 else 0.0
        return values

    def states(self, col_value: list[float]) -> dict[str, list[int]]:
        return {
            name: [1 if col_value[j] > 0.5 else 0 for j in cols] for name, cols in self.x.items()
        }


_BANNER_LOCK = threading.Lock()
_banner_shown = False


def _new_highs() -> Any:
    """A silent HiGHS instance.

    HiGHS writes a banner straight to file descriptor 1 when the first instance of a
    process is made, which would corrupt `hwsched plan`'s JSON; that one construction runs
    with descriptor 1 pointed at /dev/null.
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


def _solve(
    problem: PlanningProblem, options: Options, start: dict[str, list[int]], budget_s: float
) -> tuple[dict[str, list[int]] | None, str, dict[str, float | int | str]]:
    """Solve the MILP; (states or None, status, info)."""
    import highspy
    import numpy as np

    model = _Model(problem, options.weights)
    h = _new_highs()
    h.setOptionValue("threads", 1)
    h.setOptionValue("random_seed", 0)
    h.setOptionValue("time_limit", max(0.01, budget_s))
    h.setOptionValue("mip_rel_gap", options.mip_rel_gap)
    ncol = len(model.cost)
    h.addVars(ncol, np.array(model.lo), np.array(model.hi))
    h.changeColsCost(ncol, np.arange(ncol, dtype=np.int32), np.array(model.cost))
    r = model.rows
    h.addRows(
        len(r.lower),
        np.array(r.lower),
        np.array(r.upper),
        len(r.index),
        np.array(r.starts, dtype=np.int32),
        np.array(r.index, dtype=np.int32),
        np.array(r.value),
    )
    ints = np.array(model.integer, dtype=np.int32)
    h.changeColsIntegrality(len(ints), ints, np.array([highspy.HighsVarType.kInteger] * len(ints)))
    # Warm start: the reference plan's socket states (HiGHS completes the rest).
    warm = model.solution_from_states(start)
    idx = np.array(ints, dtype=np.int32)
    h.setSolution(len(idx), idx, warm[idx])
    h.run()
    status = h.getModelStatus()
    info_obj = h.getInfo()
    info: dict[str, float | int | str] = {
        "mip_gap": float(info_obj.mip_gap) if math.isfinite(info_obj.mip_gap) else -1.0,
        "objective": float(info_obj.objective_function_value),
        "nodes": int(info_obj.mip_node_count),
        "columns": ncol,
        "rows": len(r.lower),
        "lp_iterations": int(info_obj.simplex_iteration_count),
    }
    if status == highspy.HighsModelStatus.kOptimal:
        label = "optimal"
    elif status in (
        highspy.HighsModelStatus.kTimeLimit,
        highspy.HighsModelStatus.kInterrupt,
        highspy.HighsModelStatus.kIterationLimit,
        highspy.HighsModelStatus.kSolutionLimit,
    ):
        label = "time-limited"
    else:
        return None, "fallback", info | {"solver_status": h.modelStatusToString(status)}
    if int(info_obj.primal_solution_status) != 2:  # 2 = feasible
        return None, "fallback", info | {"solver_status": "no solution"}
    return model.states(list(h.getSolution().col_value)), label, info


def _solve_in_worker(
    problem: PlanningProblem, options: Options, start: dict[str, list[int]], budget_s: float
) -> tuple[dict[str, list[int]] | None, str, dict[str, float | int | str]]:
    """`_solve` in a child process (JSON in, JSON out); a failed worker is no MILP plan."""
    request = json.dumps(
        {
            "problem": problem.model_dump(mode="json"),
            "weights": asdict(options.weights),
            "mip_rel_gap": options.mip_rel_gap,
            "start": start,
            "budget_s": budget_s,
        }
    )
    try:
        done = subprocess.run(
            [sys.executable, "-m", "shared.planning.milp_worker"],
            input=request,
            capture_output=True,
            text=True,
            timeout=budget_s + 10.0,
            check=True,
        )
        answer = json.loads(done.stdout)
        states = answer["states"]
        return (
            {str(k): [int(v) for v in row] for k, row in states.items()} if states else None,
            str(answer["label"]),
            dict(answer["info"]),
        )
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError) as err:
        return None, "fallback", {"solver_status": f"worker failed: {type(err).__name__}"}


def _repair(
    problem: PlanningProblem, states: dict[str, list[int]]
) -> tuple[dict[str, list[int]], DayOutcome]:
    """Switch off optional steps the physics say were fed by grid or battery, or held back.

    The model counts an on socket at full power; the real one stops when full, so the day can
    differ slightly (a battery fuller or emptier). Repeat until the simulated day is clean.
    """
    optional = [s for s in problem.sockets if not s.daily_need]
    cap = problem.battery_capacity_wh
    for _ in range(problem.n_steps + 1):
        out = simulate(problem, states)
        bad: list[tuple[SocketSpec, int]] = []
        for t in range(problem.n_steps):
            soc_before = out.battery_energy_wh[t - 1] if t > 0 else problem.battery_stored_wh
            deficit = out.grid_power_w[t] > 1e-6 or out.battery_power_w[t] < -1e-6
            for s in optional:
                if not states[s.name][t]:
                    continue
                held = (
                    s.min_battery_charge > 0
                    and cap > 0
                    and soc_before < s.min_battery_charge * cap - 1e-6
                )
                if (deficit and out.socket_power_w[s.name][t] > 0) or held:
                    bad.append((s, t))
        if not bad:
            return states, out
        # Drop the lowest-priority offender of the first bad step, then re-check.
        t0 = min(t for _, t in bad)
        victims = [s for s, t in bad if t == t0]
        victim = max(victims, key=lambda s: (s.priority, s.max_power_usage, s.name))
        states = {k: list(v) for k, v in states.items()}
        states[victim.name][t0] = 0
    return states, simulate(problem, states)


def _quality(out: DayOutcome) -> tuple[float, float, float, int]:
    return out.key()


def _fill_steps(problem: PlanningProblem, s: SocketSpec) -> int:
    """Steps at full power that fill the store (to the yardstick's 1 Wh), at most the horizon."""
    room = s.room_wh() - UNMET_TOLERANCE_WH
    if room <= 0:
        return 0
    return min(problem.n_steps, math.ceil(room / (s.max_power_usage * problem.dt_h) - 1e-9))


def _window_plan(problem: PlanningProblem) -> dict[str, list[int]]:
    """A quick start: each socket in priority order gets the contiguous window that catches
    the most of the remaining surplus (optional sockets only steps the surplus covers)."""
    n, dt = problem.n_steps, problem.dt_h
    free = list(problem.available_power_w)
    plan: dict[str, list[int]] = {}
    for s in problem.ordered_sockets():
        k = _fill_steps(problem, s)
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
        _ = dt
    return plan


def plan_optimal(problem: PlanningProblem, options: Options | None = None) -> Plan:
    """Plan by local search from several starts; never worse than the reference plan."""
    opts = options or Options()
    t0 = time.perf_counter()
    budget = opts.time_limit_s if opts.time_limit_s is not None else default_time_limit(problem)
    deadline = t0 + budget
    ref = plan_reference(problem)
    # Starts: the reference plan and a window plan; then the MILP (without the switch term,
    # which makes it slow) warm-started from the better of them, on part of the budget.
    starts: list[Mapping[str, Sequence[int]]] = [ref.sockets, _window_plan(problem)]
    if opts.warm_start is not None:
        starts.append(opts.warm_start)
    states = [DayState(problem, start) for start in starts]
    for state in states:
        state.repair()
    states = [s for s in states if s.score[0] != float("inf")]
    states.sort(key=lambda s: s.score)
    info: dict[str, float | int | str] = {}
    proved = False
    milp_budget = opts.milp_share * (deadline - time.perf_counter())
    if milp_budget > 0.01:
        try:
            warm = states[0].plan() if states else ref.sockets
            milp_opts = Options(
                mip_rel_gap=opts.mip_rel_gap, weights=replace(opts.weights, switch=0.0)
            )
            solve = _solve_in_worker if opts.milp_worker else _solve
            solved, label, info = solve(problem, milp_opts, warm, milp_budget)
            info = {f"milp_{k}": v for k, v in info.items()}
            info["milp_status"] = label
            if solved is not None and label == "optimal":
                state = DayState(problem, solved)
                state.repair()
                if state.score[0] != float("inf"):
                    states.append(state)
                    proved = True
        except ImportError:
            info["milp_status"] = "highspy not installed"
    # Local search (exact physics) on each start, the most promising first, sharing one
    # budget of evaluations; the time limit only stops it on a pathologically slow machine.
    states.sort(key=lambda s: s.score)
    best: DayState | None = None
    converged = True
    moves = 0
    evals = Budget(opts.max_evals)
    safety = t0 + 3 * budget
    for state in states:
        m, conv = improve(state, safety, evals)
        moves += m
        converged = converged and conv
        if best is None or state.score < best.score:
            best = state
    info["evals"] = opts.max_evals - evals.left
    info["moves"] = moves
    status: PlanStatus = "optimal" if proved and converged else "time-limited"
    # The baseline: the reference plan, made admissible where the physics disagree with
    # the greedy's own bookkeeping (e.g. an optional socket it runs before the battery
    # really holds its threshold) or where steps are shorter than the switch interval.
    baseline = DayState(problem, ref.sockets)
    baseline.repair()
    chosen = baseline.plan()
    out = ref_out = simulate(problem, chosen)
    if best is not None:
        mine = best.plan()
        mine_out = simulate(problem, mine)
        if _quality(mine_out) <= _quality(ref_out):
            chosen, out = mine, mine_out
        else:
            status = "fallback"
            info["fallback_reason"] = "reference plan simulates better"
    else:
        status = "fallback"
    return Plan(
        sockets=chosen,
        battery_power_w=[round(v, 3) + 0.0 for v in out.battery_power_w],
        planner=PLANNER_NAME,
        solve_s=time.perf_counter() - t0,
        status=status,
        info=info,
    )
