"""The coarse plan (`optimal.coarse_problem`, `Options.coarse_step_s`): a day of short steps
whose fine main MILP ends inside its root node is planned again at a 15-minute step, and
that plan, each step repeated, is one more start."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shared.planning import milp, optimal
from shared.planning.optimal import Options, coarse_factor, coarse_problem, plan_optimal
from shared.planning.problem import PlanningProblem
from shared.planning.search import Context, DayState
from tests.milp_stubs import SolveCall, stub_solve
from tests.planning_builders import batt, problem, sock


def test_the_coarse_factor_groups_short_steps_into_the_coarse_step() -> None:
    five = problem([0.0] * 12, step_s=300)
    assert coarse_factor(five, 900) == 3
    assert coarse_factor(problem([0.0] * 60, step_s=60), 900) == 15
    assert coarse_factor(problem([0.0] * 12, step_s=900), 900) == 1  # long enough already
    assert coarse_factor(problem([0.0] * 12, step_s=600), 900) == 1  # 1.5 steps: no group
    assert coarse_factor(problem([0.0] * 5, step_s=300), 900) == 1  # fewer than 2 coarse steps
    assert coarse_factor(five, 0) == 1  # off


def test_the_coarse_problem_averages_surplus_and_prices_and_drops_the_previous_plan() -> None:
    fine = problem(
        [0.0, 300.0, 600.0, 900.0, 900.0, 900.0, 100.0],
        [sock("boiler", 2000, 1000)],
        step_s=300,
    ).model_copy(
        update={
            "import_price": [0.30, 0.30, 0.60, 0.10, 0.10, 0.10, 0.20],
            "export_price": 0.05,
            "previous": {"boiler": [1, 1, 0, 0, 0, 0, 0]},
            "hold_gain_wh": 20.0,
        }
    )
    coarse = coarse_problem(fine, 3)
    assert coarse.step_s == 900
    assert coarse.available_power_w == pytest.approx([300.0, 900.0, 100.0])
    assert coarse.import_price == pytest.approx([0.40, 0.10, 0.20])
    assert coarse.export_price == 0.05  # one number stays one number
    assert coarse.previous == {}
    assert coarse.sockets == fine.sockets
    assert coarse.start == fine.start
    assert coarse.n_steps == 3


def _fine_day() -> PlanningProblem:
    return problem(
        [-200.0, 100, 900, 1500, 2200, 2600, 2700, 2500, 2400, 1800, 2300, 900, 1400, 600, 200]
        + [-300.0] * 3,
        [
            sock("boiler", 2000, 1500),
            sock("pool", 800, 1200, daily_need=False),
            sock("bike", 400, 300, daily_need=False),
        ],
        [batt(800, 1000, stored=200)],
        step_s=300,
    )


def _stub_fine_root_stall(
    monkeypatch: pytest.MonkeyPatch, nodes: int
) -> tuple[list[int], list[int]]:
    """Every main MILP run on the fine model ends without a proof, after `nodes` nodes, with
    no plan; the coarse model's solves are real. Returns the fine main runs' checkpoint
    budgets and the step lengths of every solve."""
    fine_budgets: list[int] = []
    steps: list[int] = []

    def answer(call: SolveCall) -> milp.MilpResult:
        steps.append(call.solver.model.p.step_s)
        out = call.real()
        if call.solver.model.p.step_s != 300:
            return out
        if call.fewest_switches_within is None and not call.fixed:
            fine_budgets.append(call.budget.max_checkpoints)
            return milp.MilpResult(None, "limited", out.info | {"nodes": nodes, "gap": 0.5})
        return out

    stub_solve(monkeypatch, answer)
    return fine_budgets, steps


def test_a_fine_main_milp_stuck_in_its_root_brings_in_the_coarse_plan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    day = _fine_day()
    fine_budgets, steps = _stub_fine_root_stall(monkeypatch, nodes=0)
    opts = Options(mip_max_checkpoints=7, mip_restarts=1)
    plan = plan_optimal(day, opts)
    # The coarse model (15-minute steps) was solved after the fine main run.
    assert fine_budgets
    assert fine_budgets[0] == 7
    assert 900 in steps
    assert steps.index(900) > steps.index(300)  # after the fine main run, not before
    assert plan.info["coarse_steps"] == 6
    assert plan.info["coarse_start"] in ("taken", "not better")
    # The capped fewest-switches stage on the fine model is skipped exactly where the
    # coarse plan was taken.
    taken = plan.info["coarse_start"] == "taken"
    assert (plan.info.get("switch_stage") == "skipped after the coarse plan") == taken
    # Never worse than the same day without the coarse plan (same stub).
    without = plan_optimal(day, replace(opts, coarse_step_s=0))
    assert "coarse_start" not in without.info
    ctx = Context(day)
    assert DayState(ctx, plan.sockets).score <= DayState(ctx, without.sockets).score
    # Deterministic: the same plan again.
    again = plan_optimal(day, opts)
    assert again.sockets == plan.sockets


def test_a_coarse_plan_better_than_the_start_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four sockets on 24 five-minute steps; with the fine MILP finding nothing (stubbed), the
    local search's plan loses to the coarse one, which is taken, and the capped stage on the
    fine model is skipped."""
    surplus = [200.0, 300, 100, -200, -200, -200, 2400, 2300, 2500, 300, 100, 200]
    surplus += [1300.0, 1300, 1200, 2500, 2500, 2400, 1700, 1900, 1800, 2300, 2300, 2300]
    day = problem(
        surplus,
        [
            sock("boiler", 1500, 1000),
            sock("pool", 800, 400, daily_need=False),
            sock("bike", 500, 250, daily_need=False),
            sock("spa", 1200, 600, daily_need=False),
        ],
        step_s=300,
    )
    _stub_fine_root_stall(monkeypatch, nodes=0)
    opts = Options(mip_max_checkpoints=7, mip_restarts=1)
    plan = plan_optimal(day, opts)
    assert plan.info["coarse_start"] == "taken"
    assert plan.info["switch_stage"] == "skipped after the coarse plan"
    without = plan_optimal(day, replace(opts, coarse_step_s=0))
    ctx = Context(day)
    assert DayState(ctx, plan.sockets).score < DayState(ctx, without.sockets).score
    assert plan.status == "time-limited"


def test_a_fine_main_milp_that_branches_gets_no_coarse_plan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fine_budgets, steps = _stub_fine_root_stall(monkeypatch, nodes=3)
    plan = plan_optimal(_fine_day(), Options(mip_max_checkpoints=7, mip_restarts=1))
    assert fine_budgets[0] == 7
    assert 900 not in steps
    assert "coarse_start" not in plan.info


def test_a_day_of_15_minute_steps_is_planned_at_its_own_step_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    budgets: list[int] = []
    steps: list[int] = []

    def answer(call: SolveCall) -> milp.MilpResult:
        steps.append(call.solver.model.p.step_s)
        if call.fewest_switches_within is None and not call.fixed:
            budgets.append(call.budget.max_checkpoints)
        out = call.real()
        return replace(out, status="limited", info=out.info | {"nodes": 0})

    stub_solve(monkeypatch, answer)
    day = problem(
        [-200, 900, 2200, 2700, 2400, 1800, 900, -300],
        [sock("boiler", 2000, 1500), sock("pool", 800, 1200, daily_need=False)],
    )
    opts = Options()
    plan = plan_optimal(day, opts)
    assert set(steps) == {900}
    assert budgets[0] == opts.mip_max_checkpoints
    assert not any(k.startswith("coarse") for k in plan.info)
    assert optimal.coarse_factor(day, opts.coarse_step_s) == 1
