"""The full tier's work budgets that depend on what a stage found (`optimal._plan_full`): a
second main MILP run only where the first one's own bound leaves something to gain."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shared.planning import milp
from shared.planning.optimal import Options, _close_enough, plan_optimal
from shared.planning.problem import PlanningProblem
from tests.planning_builders import batt, problem, sock


def _result(gap: float, rows: dict[str, list[int]] | None = None) -> milp.MilpResult:
    return milp.MilpResult(rows if rows is not None else {}, "limited", {"gap": gap, "nodes": 7})


def test_close_enough_is_the_relative_gap_against_the_option() -> None:
    opts = Options(mip_restart_min_gap=2e-3)
    assert _close_enough(_result(0.0), opts)
    assert _close_enough(_result(0.0015), opts)
    assert not _close_enough(_result(0.0038), opts)
    assert not _close_enough(_result(-1.0), opts)  # HiGHS had no finite gap
    assert not _close_enough(milp.MilpResult(None, "limited", {"gap": 0.0}), opts)
    assert not _close_enough(_result(0.0015), Options(mip_restart_min_gap=0.0))


def _day() -> PlanningProblem:
    return problem(
        [-300, 200, 1800, 2500, 2600, 1900, 400, -500],
        [sock("boiler", 2000, 1000), sock("bike", 300, 150, daily_need=False)],
        [batt(800, 1000, stored=200)],
    )


@pytest.mark.parametrize(("gap", "runs"), [(0.0015, 1), (0.01, 2)])
def test_a_second_run_follows_only_a_first_run_with_a_gap_worth_closing(
    monkeypatch: pytest.MonkeyPatch, gap: float, runs: int
) -> None:
    """A first run that branched without a proof: within `mip_restart_min_gap` of its bound
    the second run is skipped (and said so in `info`); farther from it, the second run comes."""
    calls: list[int] = []
    real = milp.Solver.solve

    def solve(
        self: milp.Solver,
        start: dict[str, list[int]] | None,
        budget: milp.Budget,
        fewest_switches_within: float | None = None,
        fixed: dict[str, list[int]] | None = None,
    ) -> milp.MilpResult:
        if fewest_switches_within is not None or fixed:
            return real(self, start, budget, fewest_switches_within, fixed)
        calls.append(budget.max_checkpoints)
        out = real(self, start, budget)
        return replace(out, status="limited", info=out.info | {"nodes": 3, "gap": gap})

    monkeypatch.setattr(milp.Solver, "solve", solve)
    p = _day()
    plan = plan_optimal(p, Options(neighbourhood_work=0, switch_neighbourhood_work=0))
    opts = Options()
    assert calls == [opts.mip_max_checkpoints, opts.mip_restart_checkpoints][:runs]
    assert plan.info["milp_runs"] == runs
    assert ("milp_restart_skipped" in plan.info) == (runs == 1)
