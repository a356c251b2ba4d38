"""The full tier's work budgets (`optimal._plan_full`): a second main MILP run only where the
first one's own bound leaves something to gain, fewer checkpoints for larger models, and the
fewest-switches stage on pairs only after a main MILP that branched without a proof, the
batteries' best modes computed once per socket rows."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from shared.planning import milp, modes, optimal
from shared.planning.optimal import Options, _close_enough, _main_checkpoints, plan_optimal
from shared.planning.problem import BatteryMode, PlanningProblem
from shared.planning.search import Context, DayState
from tests.milp_stubs import SolveCall, stub_solve
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


def _stub_main_runs(monkeypatch: pytest.MonkeyPatch, gap: float) -> list[int]:
    """Every main MILP run (no cap, nothing fixed) reports a branched run without a proof."""
    calls: list[int] = []

    def answer(call: SolveCall) -> milp.MilpResult:
        out = call.real()
        if call.fewest_switches_within is not None or call.fixed:
            return out
        calls.append(call.budget.max_checkpoints)
        return replace(out, status="limited", info=out.info | {"nodes": 3, "gap": gap})

    stub_solve(monkeypatch, answer)
    return calls


@pytest.mark.parametrize(("gap", "runs"), [(0.0015, 1), (0.01, 2)])
def test_a_second_run_follows_only_a_first_run_with_a_gap_worth_closing(
    monkeypatch: pytest.MonkeyPatch, gap: float, runs: int
) -> None:
    """A first run that branched without a proof: within `mip_restart_min_gap` of its bound
    the second run is skipped (and said so in `info`); farther from it, the second run comes."""
    calls = _stub_main_runs(monkeypatch, gap)
    p = _day()
    plan = plan_optimal(p, Options(neighbourhood_work=0, switch_neighbourhood_work=0))
    opts = Options()
    assert calls == [opts.mip_max_checkpoints, opts.mip_restart_checkpoints][:runs]
    assert plan.info["milp_runs"] == runs
    assert ("milp_restart_skipped" in plan.info) == (runs == 1)


def test_a_larger_model_gets_proportionally_fewer_main_checkpoints() -> None:
    opts = Options(mip_size_ref=3000)
    assert _main_checkpoints(opts, 1771, 120) == 120  # a 96-step day with 8 sockets
    assert _main_checkpoints(opts, 3000, 120) == 120
    assert _main_checkpoints(opts, 3858, 120) == 94  # the 222-step day: 120 x 3000 / 3858
    assert _main_checkpoints(opts, 3858, 60) == 47
    assert _main_checkpoints(opts, 10**9, 120) == 1
    assert _main_checkpoints(Options(mip_size_ref=0), 10**6, 120) == 120


@pytest.mark.parametrize("proved", [False, True])
def test_after_an_unproved_branched_main_milp_the_switch_stage_runs_on_pairs_only(
    monkeypatch: pytest.MonkeyPatch, proved: bool
) -> None:
    """Where the main MILP branched without a proof (the score neighbourhoods ran), the
    whole model's fewest-switches stage is skipped and the pair neighbourhoods do it; where
    it proved its optimum, the whole model's stage runs as before."""
    if not proved:
        _stub_main_runs(monkeypatch, gap=0.05)
    stages: list[str] = []
    real_fewer = optimal._fewer_switches
    real_pairs = optimal._neighbourhoods

    def fewer(*args: Any, **kw: Any) -> Any:
        stages.append("whole")
        return real_fewer(*args, **kw)

    def pairs(*args: Any, **kw: Any) -> Any:
        stages.append("pairs (fewest)" if (args[7:] or kw.get("fewest")) else "pairs")
        return real_pairs(*args, **kw)

    monkeypatch.setattr(optimal, "_fewer_switches", fewer)
    monkeypatch.setattr(optimal, "_neighbourhoods", pairs)
    p = problem(
        [-300, 200, 1800, 2500, 2600, 1900, 400, -500, 900, 1500],
        [
            sock("boiler", 2000, 1000),
            sock("bike", 300, 150, daily_need=False),
            sock("dish", 1000, 500),
            sock("spa", 800, 600, daily_need=False),
        ],
        [batt(800, 1000, stored=200)],
    )
    plan = plan_optimal(p)
    if proved:
        assert plan.info["milp_status"] == "optimal"
        assert stages[0] == "whole"
        assert "pairs" not in stages
    else:
        assert stages == ["pairs", "pairs (fewest)"]
        assert plan.info["switch_stage"] == "pairs only"
    # Never worse than the reference either way.
    assert plan.status in ("optimal", "time-limited")


def test_the_best_modes_of_rows_already_seen_are_not_computed_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`_with_best_modes` keeps the dynamic programme's answer per socket rows (on the
    problem's Context): the same rows give the same modes, computed once; other rows are
    computed afresh; a caller changing the modes it got does not change what is kept."""
    surplus = [-1000.0, -1000, -1000, -1000, -1000, -1000]
    imp = [0.10, 0.10, 0.50, 0.50, 0.50, 0.50]
    p = problem(surplus, [sock("boiler", 1000, 500)], [batt(1000, 1000, 1000)])
    p = p.model_copy(update={"import_price": imp, "export_price": 0.0})
    ctx = Context(p)
    calls: list[list[list[int]]] = []
    real = modes.best_modes

    def counted(state: DayState) -> list[BatteryMode] | None:
        calls.append([list(r) for r in state.rows])
        return real(state)

    monkeypatch.setattr(optimal, "best_modes", counted)
    rows = {"boiler": [1, 1, 0, 0, 0, 0]}
    first = optimal._with_best_modes(DayState(ctx, rows, ["zero"] * 6))
    assert first.modes is not None
    assert first.modes[:2] != ["zero", "zero"]  # the battery is kept for the peak
    first.modes[0] = "to_full"  # a search changing its state's modes
    again = optimal._with_best_modes(DayState(ctx, rows, ["zero"] * 6))
    assert again.modes is not None
    assert again.modes[0] != "to_full"
    assert again.plan() == first.plan()
    assert len(calls) == 1
    optimal._with_best_modes(DayState(ctx, {"boiler": [0, 0, 1, 1, 0, 0]}, ["zero"] * 6))
    assert len(calls) == 2


# --- the capped fewest-switches stage on the relaxation first ------------------------------


def _switch_day() -> PlanningProblem:
    # An optional bike that follows a surplus in and out (5 switches), and an optional
    # boiler that fills at step 0 and is full after it: the relaxation may keep it on, full,
    # where there is no surplus at all (rule 3's stricter half), the model with the rows not.
    return problem(
        [1500, 0, 500, 0, 500, 500],
        [sock("boiler", 1000, 250, daily_need=False), sock("bike", 500, 5000, daily_need=False)],
    )


BEST = {"boiler": [1, 0, 0, 0, 0, 0], "bike": [1, 0, 1, 0, 1, 1]}


def _capped_stage(
    monkeypatch: pytest.MonkeyPatch, relaxed_rows: dict[str, list[int]]
) -> tuple[list[bool], DayState, DayState, dict[str, float | int | str], optimal._Models]:
    """`_fewer_switches` from BEST, the relaxation's answer stubbed as `relaxed_rows` and
    the model with the rows solved for real; which model each call solved (rows or not).
    (With evaluations left, the local search after each solve takes a lost plan back to
    BEST on a day this small.)"""
    p = _switch_day()
    ctx, opts = Context(p), Options()
    models = optimal._Models(p, opts.weights, relax=True)
    assert models.relaxed.model.short_steps > 0  # the rule applies: two models
    kept_short_calls: list[bool] = []

    def answer(call: SolveCall) -> milp.MilpResult:
        assert call.fewest_switches_within is not None  # the capped stage's solves only
        kept_short_calls.append(call.solver.formulation.kept_short)
        if not call.solver.formulation.kept_short:
            return milp.MilpResult(relaxed_rows, "optimal", {})
        assert call.solver is models.exact
        return call.real()

    stub_solve(monkeypatch, answer)
    best = optimal._state(ctx, BEST)
    clock = optimal._Clock(120.0)
    info: dict[str, float | int | str] = {}
    # no evaluations left for the local search: each MILP plan is taken as repaired
    after, _ = optimal._fewer_switches(
        ctx, models, best, opts, clock, info, optimal._Evals(0, clock)
    )
    return kept_short_calls, best, after, info, models


def test_a_relaxed_fewest_switches_plan_that_breaks_rule_3_and_loses_brings_in_the_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The relaxation's answer keeps the full boiler on where there is no surplus, and leaves
    # the bike off: repaired (the boiler off where it was short), it stores less than BEST.
    broke = {"boiler": [1, 1, 1, 1, 1, 1], "bike": [0] * 6}
    ctx = Context(_switch_day())
    assert any(DayState(ctx, broke).short_on)
    calls, best, after, info, _ = _capped_stage(monkeypatch, broke)
    assert calls == [False, True]  # the relaxation, then the model with the rule's rows
    assert info["switch_stage_rule3_rows"] == "added"
    assert info["switch_stage"] == "optimal"
    assert after.score <= best.score
    assert not any(after.short_on)
    assert after.score[4] == best.score[4]  # as much into the optional stores


def test_a_relaxed_fewest_switches_plan_that_keeps_rule_3_and_loses_ends_the_stage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Worse, but within the rule: the model with the rows would not do better from there
    # than the relaxation did (it only forbids plans), so there is no second solve.
    kept = {"boiler": [1, 0, 0, 0, 0, 0], "bike": [0] * 6}
    assert not any(DayState(Context(_switch_day()), kept).short_on)
    calls, best, after, info, _ = _capped_stage(monkeypatch, kept)
    assert calls == [False]
    assert "switch_stage_rule3_rows" not in info
    assert after.rows == best.rows
