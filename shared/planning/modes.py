"""The batteries' best mode per step for fixed socket rows: dynamic programming over the
state of charge (pure, no I/O, deterministic).

With prices, what the batteries do is worth money: keep the charge for the evening peak
instead of emptying it into a boiler at a cheap hour, charge from the grid when it is paid
to take power, stay out of the grid when exporting loses money. The physics of each mode
are deterministic (`simulate.battery_step`): given the house's net power in a step, the
charge at its start and the mode, the battery's flow, the grid's and the step's cost follow.
So for fixed sockets the best mode sequence is a shortest path over (step, charge, mode).

The charge is continuous; states whose charge falls in the same bucket (`bucket_wh`) are
merged, keeping the cheapest (ties: the lower charge, then the mode order). Each kept state
carries its exact charge, so the sequence found is simulated exactly; merging can only miss
a sequence that differs by less than a bucket of charge somewhere.

A step is *inadmissible* for a state when a socket that must not be fed by battery or grid
is fed there (an optional socket drawing, a full socket kept on: `search.risky_row`; except
where the import price allows optional sockets to draw), or an optional socket draws before
the battery holds its `min_battery_charge`. A mode change costs `switch_cost_wh` (Wh of
import at the mean price) and may not come sooner than the switch interval after the last.

Cost order is the planner's: money (Wh-eq, with switch costs), then the number of mode
changes.
"""

from __future__ import annotations

from shared.planning.problem import BATTERY_MODES, BatteryMode
from shared.planning.search import DayState

_EPS = 1e-6


def default_bucket_wh(capacity_wh: float, power_w: float, dt_h: float) -> float:
    """Charge bucket: 1/400 of the capacity, at most a tenth of one step's full flow
    (measured on the benchmark's priced days: coarser buckets cost up to 0.4 % more)."""
    return max(1e-3, min(capacity_wh / 400.0, power_w * dt_h / 10.0))


def best_modes(
    state: DayState,
    bucket_wh: float | None = None,
    allowed_modes: tuple[BatteryMode, ...] = BATTERY_MODES,
) -> list[BatteryMode] | None:
    """The cheapest admissible mode sequence for `state`'s socket rows (its modes ignored);
    None when no sequence is admissible (the rows need changing first). Needs numpy (raises
    ImportError without it)."""
    import numpy as np

    ctx = state.ctx
    n = ctx.n
    if not ctx.has_batt or n == 0 or any(state.short_on):
        return None  # no battery; or a full socket kept on short of surplus: no mode helps
    dt, cap, pmax = ctx.dt, ctx.cap, ctx.pmax
    bucket = bucket_wh if bucket_wh is not None else default_bucket_wh(cap, pmax, dt)
    scale = ctx.wh_per_eur / 1000.0 * dt
    gap = ctx.min_gap
    n_modes = len(allowed_modes)
    codes = np.array([BATTERY_MODES.index(m) for m in allowed_modes])
    # The highest battery threshold of an optional socket drawing in each step.
    need = [0.0] * n
    for i, thr in ctx.thresholds:
        draw = state.draws[i]
        for t in range(n):
            if draw[t] > 0 and thr > need[t]:
                need[t] = thr
    init = ctx.initial_mode
    start_mode = allowed_modes.index(init) if init in allowed_modes else -1
    # The states of one step: charge, cost, mode changes, mode (index, -1: unknown), steps
    # since the last change.
    soc = np.array([ctx.soc0])
    cost = np.zeros(1)
    changes = np.zeros(1, dtype=np.int64)
    mode = np.array([start_mode], dtype=np.int64)
    age = np.array([gap], dtype=np.int64)
    back: list[tuple[np.ndarray, np.ndarray]] = []  # per step: (parent index, mode index)
    for t in range(n):
        net = ctx.a[t] - state.load[t]
        must_not_feed = state.opt_on[t] > 0 and not ctx.allowed[t]
        alive = soc >= need[t] - _EPS
        k = len(soc)
        # Every state x every mode: (k * n_modes) candidates.
        s_soc = np.repeat(soc, n_modes)
        s_cost = np.repeat(cost, n_modes)
        s_chg = np.repeat(changes, n_modes)
        s_mode = np.repeat(mode, n_modes)
        s_age = np.repeat(age, n_modes)
        s_alive = np.repeat(alive, n_modes)
        parent = np.repeat(np.arange(k), n_modes)
        choice = np.tile(np.arange(n_modes), k)
        code = codes[choice]
        room = np.maximum(0.0, (cap - s_soc) / dt)
        have = np.maximum(0.0, s_soc / dt)
        charge = min(max(net, 0.0), pmax)
        discharge = min(max(-net, 0.0), pmax)
        can_charge = (code == 0) | (code == 1)  # zero, charge_only
        can_discharge = (code == 0) | (code == 2)  # zero, discharge_only
        flow = np.zeros(len(s_soc))
        if net > 0:
            flow = np.where(can_charge, np.minimum(charge, room), 0.0)
        elif net < 0:
            flow = np.where(can_discharge, -np.minimum(discharge, have), 0.0)
        flow = np.where(code == 4, np.minimum(pmax, room), flow)  # to_full
        grid = flow - net  # + import
        ok = s_alive.copy()
        if must_not_feed:
            ok &= ~((grid * dt > 1e-9) | (flow < -1e-9))
        change = (s_mode >= 0) & (choice != s_mode)
        ok &= ~(change & (s_age < gap))
        if ctx.priced:
            step = np.where(grid > 0, grid * ctx.p_imp[t], grid * ctx.p_exp[t]) * scale
        else:
            step = np.maximum(grid, 0.0) * dt
        new_cost = s_cost + step + np.where(change, ctx.switch_cost, 0.0)
        new_chg = s_chg + change
        new_soc = s_soc + flow * dt
        new_age = np.where(change, 1, np.minimum(gap, s_age + 1))
        new_age = np.where(s_mode < 0, gap, new_age)
        idx = np.nonzero(ok)[0]
        if len(idx) == 0:
            return None
        key = (np.rint(new_soc[idx] / bucket).astype(np.int64) * n_modes + choice[idx]) * (
            gap + 1
        ) + new_age[idx]
        # Per key the cheapest (then fewer changes, then lower charge, then first found).
        order = np.lexsort((idx, new_soc[idx], new_chg[idx], np.round(new_cost[idx], 6), key))
        first = np.ones(len(order), dtype=bool)
        ks = key[order]
        first[1:] = ks[1:] != ks[:-1]
        pick = idx[order[first]]
        soc, cost, changes = new_soc[pick], new_cost[pick], new_chg[pick]
        mode, age = choice[pick], new_age[pick]
        back.append((parent[pick], choice[pick]))
    best = int(np.lexsort((soc, changes, np.round(cost, 6)))[0])
    out: list[BatteryMode] = []
    for t in range(n - 1, -1, -1):
        parents, choices = back[t]
        out.append(allowed_modes[int(choices[best])])
        best = int(parents[best])
    out.reverse()
    return out
