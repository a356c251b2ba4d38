"""The money benchmark's bound (`bench.bound`): below every plan, and exact for the modes.

Tiny priced days, solved to optimality in well under a second each (no time limit reached:
the results do not depend on the machine's load).
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench.bound import fill_steps, nearest_mode, solve_bound
from bench.money import finer, judge
from shared.planning.optimal import plan_optimal
from shared.planning.problem import BATTERY_MODES, Plan, PlanningProblem
from shared.planning.reference import plan_reference
from shared.planning.simulate import UNMET_TOLERANCE_WH, simulate

SHARED = Path(__file__).resolve().parents[2] / "shared" / "planning"
YARDSTICK = SHARED / "evaluate_plan.py"


def _doc(**over: Any) -> dict[str, Any]:
    """A tiny priced day: a needed boiler that fills in one full and one partial step, an
    optional store waiting for half a battery, a battery, prices with a negative noon."""
    doc: dict[str, Any] = {
        "start": "2026-06-21T10:00:00+02:00",
        "step_s": 900,
        "available_power_w": [900.0, -300.0, 1600.0, 2200.0, 400.0, -600.0, -500.0, -200.0],
        "sockets": [
            {"name": "boiler", "max_power_usage": 1000, "energy_capacity": 400, "daily_need": True},
            {
                "name": "bike",
                "max_power_usage": 500,
                "energy_capacity": 300,
                "min_battery_charge": 0.5,
                "value_eur_kwh": 0.2,
            },
        ],
        "batteries": [
            {"name": "b", "max_power_usage": 800, "energy_capacity": 600, "energy_stored": 100}
        ],
        "import_price": [0.30, 0.35, 0.05, -0.02, 0.10, 0.40, 0.45, 0.30],
        "export_price": [0.05, 0.10, -0.10, -0.15, 0.00, 0.15, 0.20, 0.05],
    }
    doc.update(over)
    return doc


def _admissible_net(
    problem: PlanningProblem,
    rows: dict[str, list[int]],
    modes: list[Any],
    waits: bool = False,
) -> float:
    """The net cost of a plan that keeps the yardstick's rules (needs met, optional sockets
    only from surplus) and with `waits` `min_battery_charge` at each step's start; else inf."""
    out = simulate(problem, rows, modes)
    if out.unmet_need_wh > 0 or out.optional_not_from_surplus_wh > 1e-9:
        return math.inf
    cap = problem.battery_capacity_wh
    for s in problem.sockets:
        thr = s.min_battery_charge * cap
        if s.daily_need or thr <= 0 or not waits:
            continue
        before = [problem.battery_stored_wh, *out.battery_energy_wh[:-1]]
        for t, p in enumerate(out.socket_power_w[s.name]):
            if p > 0 and before[t] < thr - 1e-9:
                return math.inf
    assert out.net_cost_eur is not None
    return out.net_cost_eur


def test_fill_steps_counts_like_the_physics() -> None:
    assert fill_steps(400.0, 250.0, 8) == (1, 150.0)
    assert fill_steps(500.0, 250.0, 8) == (2, 0.0)
    assert fill_steps(0.0, 250.0, 8) == (0, 0.0)


@pytest.mark.parametrize("waits", [False, True])
def test_modes_bound_is_the_best_plan_of_rows_and_modes(waits: bool) -> None:
    """Three steps: every socket row and every mode sequence tried; the modes MILP's optimum
    is the cheapest admissible plan, and the free battery's is at most that (with and without
    the optional socket waiting for the battery)."""
    doc = _doc(
        available_power_w=[1300.0, -300.0, 1600.0],
        import_price=[0.30, 0.35, 0.05],
        export_price=[0.05, 0.10, -0.10],
    )
    problem = PlanningProblem.model_validate(doc)
    n = problem.n_steps
    best = math.inf
    for boiler, bike in itertools.product(itertools.product((0, 1), repeat=n), repeat=2):
        rows = {"boiler": list(boiler), "bike": list(bike)}
        for modes in itertools.product(BATTERY_MODES, repeat=n):
            best = min(best, _admissible_net(problem, rows, list(modes), waits))
    assert math.isfinite(best)
    exact = solve_bound(problem, "modes", seconds=60, keep_min_battery_charge=waits)
    free = solve_bound(problem, "free", seconds=60, keep_min_battery_charge=waits)
    assert exact.status == free.status == "Optimal"
    assert exact.bound_eur == pytest.approx(best, abs=1e-6)
    assert exact.best_eur == pytest.approx(best, abs=1e-6)
    assert free.bound_eur <= best + 1e-9
    # Its own plan, simulated, is what the MILP says.
    assert _admissible_net(problem, exact.sockets, exact.battery_mode, waits) == pytest.approx(
        exact.best_eur, abs=1e-6
    )


@pytest.mark.parametrize("grid_max", [None, 0.0])
@pytest.mark.parametrize("parts", [1, 3])
def test_bound_is_below_every_plan_by_the_yardstick(grid_max: float | None, parts: int) -> None:
    """The tiny day at 15 and 5 minutes, with and without a grid limit for optional sockets:
    both bounds are at most the reference's and the default planner's net cost as the shared
    yardstick judges them, and the modes MILP's own plan comes to its figure there too."""
    problem = PlanningProblem.model_validate(
        finer(_doc() if grid_max is None else _doc(optional_grid_price_max=grid_max), parts)
    )
    doc = json.loads(problem.model_dump_json(exclude_none=True))  # every field the yardstick reads
    yardstick = YARDSTICK if YARDSTICK.is_file() else None
    plans = [plan_reference(problem), plan_optimal(problem)]
    nets = [float(judge(yardstick, doc, plan)["net_cost_eur"]) for plan in plans]
    for model in ("free", "modes"):
        bound = solve_bound(problem, model, seconds=60)
        assert bound.status == "Optimal"
        assert all(bound.bound_eur <= net + 1e-6 for net in nets), (model, bound, nets)
    exact = solve_bound(problem, "modes", seconds=60)
    own = Plan(
        sockets=exact.sockets,
        battery_power_w=exact.battery_power_w,
        planner="bound",
        solve_s=0.0,
        battery_mode=exact.battery_mode,
    )
    judged = judge(yardstick, doc, own)
    assert judged["unmet_need_wh"] <= UNMET_TOLERANCE_WH
    assert float(judged["net_cost_eur"]) == pytest.approx(exact.best_eur, abs=1e-4)


def test_nearest_mode() -> None:
    assert nearest_mode(-300.0, 0.0, 0.0, 800.0) == "discharge_only"
    assert nearest_mode(800.0, 500.0, 0.0, 800.0) == "to_full"
    assert nearest_mode(400.0, 0.0, 0.0, 800.0) == "charge_only"
    assert nearest_mode(100.0, 0.0, 900.0, 800.0) == "standby"
    assert nearest_mode(0.0, 0.0, 0.0, 800.0) == "standby"


def test_unpriced_day_is_refused() -> None:
    doc = _doc()
    del doc["import_price"], doc["export_price"]
    with pytest.raises(ValueError, match="prices"):
        solve_bound(PlanningProblem.model_validate(doc), "free")
