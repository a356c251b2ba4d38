"""Lower bounds on a priced day's net cost: a MILP of the day, solved long (HiGHS).

Independent of the planner's own MILP (`shared.planning.milp`): written from the physics of
the shared yardstick (`evaluate_plan.py`) and `shared.planning.simulate`, so that it checks the
planner rather than repeating it. Per step t (length dt h) and socket s:

- an 'on' socket draws its max power until its store is full, then nothing: with room R and
  one step's energy E = P dt, a store fills after k full-power steps and one partial step of
  `rem` Wh (`fill_steps`). Binaries y[s,t] (a full-power step) and z[s,t] (the partial step,
  only after all k full ones): the draw is P y + rem/dt z, exactly the draws the physics can
  give (an on socket that is already full draws nothing: the same as off);
- needed sockets (`daily_need`) end within 1 Wh of full (the yardstick's tolerance); optional
  ones are credited at their `value_eur_kwh` (default: the horizon's mean import price);
- an optional socket draws only where neither grid nor battery feeds the house (import 0 and
  discharge 0), except where the import price is at or below `optional_grid_price_max` (the
  yardstick's `optional_not_from_surplus_wh` = 0, which every planner keeps; the benchmark
  shows it). `min_battery_charge` (an optional socket waits for the battery) only with
  `keep_min_battery_charge`: the yardstick does not judge it and the reference planner reads
  it otherwise than the default planner (the battery's charge when planning, not at each
  step's start), so by default the bound is below every plan the yardstick accepts;
- the batteries, aggregated and lossless like the physics: charge c, discharge u (each at
  most the total power), charge e in [0, capacity]; they never discharge into the grid (no
  mode does: the P1 steers them to zero at the meter);
- the grid: import minus export balances the house; where importing would be as cheap as
  exporting, one binary keeps them apart (one meter, one flow).

Two battery models:

- `free`: c and u any power in a step (charging from surplus or grid) — a relaxation of every
  mode sequence, so its optimum bounds what the five modes can reach from below;
- `modes`: the battery does only what the five modes do (the yardstick's `_battery`): idle
  (standby), absorb the surplus (zero / charge_only: charge min(surplus, power, room)), cover
  the deficit (zero / discharge_only: discharge min(deficit, power, charge)) or charge at full
  power until full (to_full). Each min() is exact with binaries (e.g. absorbing: export is 0,
  or the charge is the full power, or the battery is full at the step's end). Its optimum is
  the best net cost any plan of socket rows and modes reaches (switch intervals aside: at the
  benchmark's steps of 5 and 15 minutes the 300 s interval binds nothing); its dual bound,
  reported when time runs out first, is still a lower bound.

Costs are in EUR: import x price - export x price - optional energy x value, the yardstick's
`net_cost_eur`. The solver's dual bound (`bound_eur`) is a valid lower bound whether or not it
finished; `best_eur` is the best plan it found, whose rows and modes (`plan`) the benchmark
judges with the yardstick as a check of this model's physics.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.planning.milp import new_highs
from shared.planning.problem import BatteryMode, Plan, PlanningProblem
from shared.planning.simulate import (
    UNMET_TOLERANCE_WH,
    optional_value_eur_kwh,
    price_allows_optional,
    simulate_plan,
)

BatteryModel = Literal["free", "modes"]
#: Objective scale: the MILP counts milli-EUR (HiGHS's gaps and tolerances suit O(1..1000)).
_SCALE = 1000.0


def fill_steps(room_wh: float, step_wh: float, n: int) -> tuple[int, float]:
    """(full-power steps, Wh of the partial step after them) that fill a store, as the
    physics count them (a store within 1e-6 Wh of full is full)."""
    left = room_wh
    k = 0
    while left > 1e-6 and left >= step_wh and k <= n:
        left -= step_wh
        k += 1
    return k, (left if left > 1e-6 else 0.0)


@dataclass
class BoundResult:
    """What the bound's MILP came to."""

    model: BatteryModel
    #: The solver's dual bound, EUR: no admissible plan's net cost is lower.
    bound_eur: float
    #: The best plan's net cost in the model, EUR (nan: none found).
    best_eur: float
    #: optimal, time limit, infeasible, ...
    status: str
    solve_s: float
    #: The best plan: 0/1 per socket per step, and per step the mode nearest to its battery.
    sockets: dict[str, list[int]] = field(default_factory=dict)
    battery_mode: list[BatteryMode] = field(default_factory=list)
    battery_power_w: list[float] = field(default_factory=list)
    columns: int = 0
    integers: int = 0

    @property
    def gap_eur(self) -> float:
        """Best found minus bound, EUR (0 when solved to optimality)."""
        return self.best_eur - self.bound_eur


class _Lp:
    """Columns and sparse rows for HiGHS."""

    def __init__(self) -> None:
        self.cost: list[float] = []
        self.lo: list[float] = []
        self.hi: list[float] = []
        self.ints: list[int] = []
        self.row_lo: list[float] = []
        self.row_hi: list[float] = []
        self.starts: list[int] = []
        self.index: list[int] = []
        self.value: list[float] = []

    def var(self, lo: float, hi: float, cost: float = 0.0, integer: bool = False) -> int:
        self.cost.append(cost)
        self.lo.append(lo)
        self.hi.append(hi)
        j = len(self.cost) - 1
        if integer:
            self.ints.append(j)
        return j

    def binary(self, hi: float = 1.0) -> int:
        return self.var(0.0, hi, 0.0, True)

    def row(self, terms: list[tuple[int, float]], lo: float, hi: float) -> None:
        self.starts.append(len(self.index))
        for j, v in terms:
            self.index.append(j)
            self.value.append(v)
        self.row_lo.append(lo)
        self.row_hi.append(hi)


def solve_bound(
    problem: PlanningProblem,
    model: BatteryModel = "free",
    seconds: float = 60.0,
    keep_min_battery_charge: bool = False,
    start: Plan | None = None,
) -> BoundResult:
    """The day's MILP with the `model` battery, solved for up to `seconds` (one thread, a
    fixed seed), from `start` (a plan it then never does worse than, when that plan keeps
    the model's rules). Needs prices; raises ImportError without highspy."""
    import highspy
    import numpy as np

    p_imp = problem.import_prices()
    p_exp = problem.export_prices()
    if p_imp is None or p_exp is None:
        raise ValueError("a bound on net cost needs a problem with prices")
    inf = math.inf
    n, dt = problem.n_steps, problem.dt_h
    a = list(problem.available_power_w)
    cap = problem.battery_capacity_wh
    pb = problem.battery_power_w
    soc0 = min(problem.battery_stored_wh, cap)
    has_batt = cap > 0 and pb > 0
    allowed = price_allows_optional(problem)
    worth = optional_value_eur_kwh(problem)
    eur = dt / 1000.0 * _SCALE  # per W in one step, at 1 EUR/kWh, in the objective's unit
    lp = _Lp()
    # The start plan's day, for its column values (`guess`).
    day = simulate_plan(problem, start) if start is not None else None
    guess: dict[int, float] = {}
    mode_row: list[BatteryMode] = list((start.battery_mode if start else None) or ["zero"] * n)

    # -- sockets: exact draws ----------------------------------------------------------------
    load: list[list[tuple[int, float]]] = [[] for _ in range(n)]  # (column, W) per step
    opt_draw: list[list[int]] = [[] for _ in range(n)]  # optional sockets' draw binaries
    on_cols: dict[str, list[list[int]]] = {}
    for s in problem.sockets:
        step_wh = s.max_power_usage * dt
        k, rem = fill_steps(s.room_wh(), step_wh, n)
        value = 0.0 if s.daily_need else worth[s.name] * eur
        waits = has_batt and not s.daily_need and keep_min_battery_charge
        thr = s.min_battery_charge * cap if waits else 0.0
        ys: list[int] = []
        zs: list[int] = []
        for t in range(n):
            # An optional socket drawing where the rule holds needs that much surplus.
            ok_y = k > 0 and (s.daily_need or allowed[t] or a[t] >= s.max_power_usage - 1e-9)
            ok_z = rem > 0 and (s.daily_need or allowed[t] or a[t] >= rem / dt - 1e-9)
            if t == 0 and thr > soc0 + 1e-9:
                ok_y = ok_z = False
            ys.append(lp.var(0.0, 1.0 if ok_y else 0.0, -value * s.max_power_usage, True))
            if rem > 0:
                zs.append(lp.var(0.0, 1.0 if ok_z else 0.0, -value * rem / dt, True))
        on_cols[s.name] = [[ys[t]] + ([zs[t]] if zs else []) for t in range(n)]
        if day is not None:
            for t, drawn in enumerate(day.socket_power_w[s.name]):
                guess[ys[t]] = float(drawn >= s.max_power_usage - 1e-9)
                if zs:
                    guess[zs[t]] = float(1e-9 < drawn < s.max_power_usage - 1e-9)
        if k < n:
            lp.row([(j, 1.0) for j in ys], -inf, float(k))
        if zs:
            lp.row([(j, 1.0) for j in zs], -inf, 1.0)
            # The partial step only after all k full-power ones: k z[t] <= sum y[<t].
            if k > 0:
                for t in range(n):
                    lp.row([(zs[t], float(k))] + [(ys[u], -1.0) for u in range(t)], -inf, 0.0)
        for t in range(n):
            load[t].append((ys[t], s.max_power_usage))
            if zs:
                load[t].append((zs[t], rem / dt))
            if not s.daily_need:
                opt_draw[t].extend(on_cols[s.name][t])
        if s.daily_need:
            room = s.room_wh() - UNMET_TOLERANCE_WH
            if room > 0:
                terms = [(j, step_wh) for j in ys] + [(j, rem) for j in zs]
                lp.row(terms, room, inf)

    # -- grid and battery --------------------------------------------------------------------
    top_load = [sum(w for _, w in load[t]) for t in range(n)]
    most_imp = [max(0.0, top_load[t] + (pb if has_batt else 0.0) - a[t]) for t in range(n)]
    most_exp = [max(0.0, a[t]) for t in range(n)]
    imp = [lp.var(0.0, most_imp[t], p_imp[t] * eur) for t in range(n)]
    exp = [lp.var(0.0, most_exp[t], -p_exp[t] * eur) for t in range(n)]
    c = [lp.var(0.0, pb) for _ in range(n)] if has_batt else []
    u = [lp.var(0.0, pb) for _ in range(n)] if has_batt else []
    e = [lp.var(0.0, cap) for _ in range(n)] if has_batt else []
    #: The start's grid (+ import) and battery (+ charging) power and charge per step.
    g0 = day.grid_power_w if day is not None else [0.0] * n
    b0 = day.battery_power_w if (day is not None and has_batt) else [0.0] * n
    e0 = day.battery_energy_wh if (day is not None and has_batt) else [0.0] * n
    if day is not None:
        for t in range(n):
            guess[imp[t]] = max(0.0, g0[t])
            guess[exp[t]] = max(0.0, -g0[t])
            if has_batt:
                guess[c[t]] = max(0.0, b0[t])
                guess[u[t]] = max(0.0, -b0[t])
                guess[e[t]] = e0[t]
    for t in range(n):
        # a - load - c + u = export - import
        terms = [(j, w) for j, w in load[t]] + [(exp[t], 1.0), (imp[t], -1.0)]
        if has_batt:
            terms += [(c[t], 1.0), (u[t], -1.0)]
        lp.row(terms, a[t], a[t])
        if has_batt:
            prev = [(e[t - 1], -1.0)] if t > 0 else []
            rhs = soc0 if t == 0 else 0.0
            lp.row([(e[t], 1.0), (c[t], -dt), (u[t], dt), *prev], rhs, rhs)
        if p_imp[t] <= p_exp[t] + 1e-12 and most_imp[t] > 0 and most_exp[t] > 0:
            sig = lp.binary()  # 1: importing, 0: exporting
            guess[sig] = float(g0[t] > 1e-9)
            lp.row([(imp[t], 1.0), (sig, -most_imp[t])], -inf, 0.0)
            lp.row([(exp[t], 1.0), (sig, most_exp[t])], -inf, most_exp[t])
        # Optional sockets only from surplus (unless the price allows).
        if not allowed[t]:
            for j in opt_draw[t]:
                if lp.hi[j] <= 0:
                    continue
                lp.row([(imp[t], 1.0), (j, most_imp[t])], -inf, most_imp[t])
                if has_batt:
                    lp.row([(u[t], 1.0), (j, pb)], -inf, pb)
    if has_batt and keep_min_battery_charge:
        for s in problem.sockets:
            thr = s.min_battery_charge * cap
            if s.daily_need or thr <= 0:
                continue
            for t in range(1, n):
                for j in on_cols[s.name][t]:
                    if lp.hi[j] > 0:
                        lp.row([(e[t - 1], 1.0), (j, -thr)], 0.0, inf)

    # -- what the battery may do -------------------------------------------------------------
    # Per step: absorb (zero / charge_only on a surplus), cover (zero / discharge_only on a
    # deficit), full (to_full), or idle; `free` lets charge and discharge take any power but
    # never discharge into the grid.
    kinds: list[tuple[int, int, int]] = []
    if has_batt:
        for t in range(n):
            if model == "free":
                if most_exp[t] > 0:
                    beta = lp.binary()  # 1: discharging, so nothing exported
                    guess[beta] = float(b0[t] < -1e-9)
                    lp.row([(u[t], 1.0), (beta, -pb)], -inf, 0.0)
                    lp.row([(exp[t], 1.0), (beta, most_exp[t])], -inf, most_exp[t])
                continue
            absorb, cover, full = lp.binary(), lp.binary(), lp.binary()
            to_full = mode_row[t] == "to_full"
            guess[full] = float(to_full)
            guess[absorb] = float(b0[t] > 1e-9 and not to_full)
            guess[cover] = float(b0[t] < -1e-9)
            kinds.append((absorb, cover, full))
            lp.row([(absorb, 1.0), (cover, 1.0), (full, 1.0)], -inf, 1.0)
            lp.row([(c[t], 1.0), (absorb, -pb), (full, -pb)], -inf, 0.0)  # charge: absorb/full
            lp.row([(u[t], 1.0), (cover, -pb)], -inf, 0.0)  # discharge: cover only
            # Absorbing takes surplus only (no import); covering sends nothing out.
            lp.row([(imp[t], 1.0), (absorb, most_imp[t])], -inf, most_imp[t])
            lp.row([(exp[t], 1.0), (cover, most_exp[t])], -inf, most_exp[t])
            # The min()s: charge at full power, or full at the step's end, or (absorbing)
            # nothing left to export; discharge at full power, or empty, or (covering)
            # nothing left to import.
            c_full, b_full = lp.binary(), lp.binary()
            guess[c_full] = float(b0[t] >= pb - 1e-9)
            guess[b_full] = float(e0[t] >= cap - 1e-6)
            lp.row([(c[t], 1.0), (c_full, -pb)], 0.0, inf)
            lp.row([(e[t], 1.0), (b_full, -cap)], 0.0, inf)
            lp.row([(full, 1.0), (c_full, -1.0), (b_full, -1.0)], -inf, 0.0)
            if most_exp[t] > 0:
                no_exp = lp.binary()
                guess[no_exp] = float(g0[t] >= -1e-9)
                lp.row([(exp[t], 1.0), (no_exp, most_exp[t])], -inf, most_exp[t])
                lp.row([(absorb, 1.0), (c_full, -1.0), (b_full, -1.0), (no_exp, -1.0)], -inf, 0.0)
            else:
                lp.row([(absorb, 1.0), (c_full, -1.0), (b_full, -1.0)], -inf, 1.0)
            u_full, b_empty = lp.binary(), lp.binary()
            guess[u_full] = float(-b0[t] >= pb - 1e-9)
            guess[b_empty] = float(e0[t] <= 1e-6)
            lp.row([(u[t], 1.0), (u_full, -pb)], 0.0, inf)
            lp.row([(e[t], 1.0), (b_empty, cap)], -inf, cap)
            if most_imp[t] > 0:
                no_imp = lp.binary()
                guess[no_imp] = float(g0[t] <= 1e-9)
                lp.row([(imp[t], 1.0), (no_imp, most_imp[t])], -inf, most_imp[t])
                lp.row([(cover, 1.0), (u_full, -1.0), (b_empty, -1.0), (no_imp, -1.0)], -inf, 0.0)
            else:
                lp.row([(cover, 1.0), (u_full, -1.0), (b_empty, -1.0)], -inf, 1.0)

    # -- solve ---------------------------------------------------------------------------------
    started = time.perf_counter()
    h = new_highs()
    option: tuple[str, Any]
    for option in (
        ("threads", 1),
        ("parallel", "off"),
        ("random_seed", 1),
        ("time_limit", float(seconds)),
        ("mip_rel_gap", 1e-6),
        ("mip_abs_gap", 1e-3),  # milli-EUR: a thousandth of a cent
    ):
        h.setOptionValue(*option)
    ncol = len(lp.cost)
    h.addVars(ncol, np.array(lp.lo), np.array(lp.hi))
    h.changeColsCost(ncol, np.arange(ncol, dtype=np.int32), np.array(lp.cost))
    h.addRows(
        len(lp.row_lo),
        np.array(lp.row_lo),
        np.array(lp.row_hi),
        len(lp.index),
        np.array(lp.starts, dtype=np.int32),
        np.array(lp.index, dtype=np.int32),
        np.array(lp.value),
    )
    ints = np.array(lp.ints, dtype=np.int32)
    h.changeColsIntegrality(len(ints), ints, np.array([highspy.HighsVarType.kInteger] * len(ints)))
    if guess:
        cols = sorted(guess)
        h.setSolution(len(cols), np.array(cols, dtype=np.int32), np.array([guess[j] for j in cols]))
    h.run()
    status = h.getModelStatus()
    info: Any = h.getInfo()
    label = h.modelStatusToString(status)
    result = BoundResult(
        model=model,
        bound_eur=float(info.mip_dual_bound) / _SCALE,
        best_eur=math.nan,
        status=label,
        solve_s=time.perf_counter() - started,
        columns=ncol,
        integers=len(ints),
    )
    if int(info.primal_solution_status) != 2:  # 2 = feasible
        return result
    x = list(h.getSolution().col_value)
    result.best_eur = float(info.objective_function_value) / _SCALE
    if status == highspy.HighsModelStatus.kOptimal:
        # Solved: the dual bound is the optimum within the gaps (HiGHS may report the
        # bound of the last node; never above the optimum).
        result.bound_eur = min(result.bound_eur, result.best_eur)
    result.sockets = {
        name: [int(any(x[j] > 0.5 for j in cols[t])) for t in range(n)]
        for name, cols in on_cols.items()
    }
    if has_batt:
        flow = [x[c[t]] - x[u[t]] for t in range(n)]
        result.battery_power_w = flow
        if kinds:
            modes: list[BatteryMode] = []
            for absorb, cover, full in kinds:
                if x[full] > 0.5:
                    modes.append("to_full")
                elif x[absorb] > 0.5:
                    modes.append("charge_only")
                elif x[cover] > 0.5:
                    modes.append("discharge_only")
                else:
                    modes.append("standby")
            result.battery_mode = modes
        else:
            result.battery_mode = [
                nearest_mode(flow[t], x[imp[t]], x[exp[t]], pb) for t in range(n)
            ]
    return result


def nearest_mode(flow_w: float, import_w: float, export_w: float, power_w: float) -> BatteryMode:
    """The mode nearest to a free battery's flow in one step: discharging covers the deficit
    (discharge_only), charging while importing is to_full, charging from surplus charge_only
    (it takes all the surplus it can: nearest when nothing is exported or the charge is the
    full power), else standby."""
    eps = 1e-6
    if flow_w < -eps:
        return "discharge_only"
    if flow_w > eps:
        if import_w > eps:
            return "to_full"
        if export_w > eps and flow_w < power_w - eps:
            # Part of the surplus left for the grid: zero mode would take it all.
            return "charge_only" if flow_w >= export_w else "standby"
        return "charge_only"
    return "standby"
