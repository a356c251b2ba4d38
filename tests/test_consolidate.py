"""Fewer switches at no loss (`search.consolidate`): a socket's energy moved into one run.

15-minute steps: a 1000 W socket stores 250 Wh a step, a 500 Wh store needs two steps.
"""

from __future__ import annotations

import random

from shared.planning.optimal import Options, plan_optimal
from shared.planning.search import Budget, Context, DayState, _fewer_runs, consolidate, on_runs
from shared.planning.simulate import simulate
from tests.planning_builders import batt, problem, sock


def test_a_split_socket_is_put_into_one_run_where_it_costs_nothing() -> None:
    # Surplus covers every step; the needed 750 Wh socket drawn in three runs: 5 switches
    # (the state now unknown: a run from step 0 starts without a switch). One run of three
    # steps from its first step draws the same from the same surplus: 1 switch.
    p = problem([1000] * 8, [sock("boiler", capacity=750)])
    state = DayState(Context(p), {"boiler": [1, 0, 1, 0, 1, 0, 0, 0]})
    before = state.score
    assert before[5] == 5
    moves, converged = consolidate(state, Budget(1000))
    assert (moves, converged) == (1, True)
    assert state.rows[0] == [1, 1, 1, 0, 0, 0, 0, 0]
    assert state.score[:5] == before[:5]
    assert state.score[5] == 1


def test_one_socket_makes_room_for_another_to_run_in_one_piece() -> None:
    # Surplus 1000 W in steps 0-3, nothing after. A (steps 1-2) splits B (steps 0 and 3):
    # B in one run overlaps A, and A alone has nowhere else to go without import; only the
    # two moved together — B in steps 0-1, A against it in 2-3 — keep the import at zero
    # with 3 switches instead of 5.
    p = problem([1000, 1000, 1000, 1000, 0, 0], [sock("a"), sock("b")])
    ctx = Context(p)
    state = DayState(ctx, {"a": [0, 1, 1, 0, 0, 0], "b": [1, 0, 0, 1, 0, 0]})
    assert state.score[3] == 0.0
    assert state.score[5] == 5
    consolidate(state, Budget(1000))
    plan = state.plan()
    assert sorted([plan["a"], plan["b"]]) == [[0, 0, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]]
    assert state.score[3] == 0.0
    assert state.score[5] == 3
    assert simulate(p, plan).grid_import_wh == 0.0


def test_a_run_is_moved_to_the_horizon_edge_to_save_a_switch() -> None:
    # A flat surplus: a 2-step run in the middle costs 2 switches, one from step 0 costs 1
    # (the state now unknown) — the same energy from the same surplus.
    p = problem([1000] * 6, [sock("boiler")])
    state = DayState(Context(p), {"boiler": [0, 0, 1, 1, 0, 0]})
    consolidate(state, Budget(1000))
    assert state.score[5] == 1
    assert state.rows[0] in ([1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1])


def test_it_never_worsens_a_plan_and_keeps_to_its_budget() -> None:
    rng = random.Random(7)
    for _ in range(20):
        n = 24
        surplus = [float(rng.choice([-300, 0, 400, 900, 1500, 2500])) for _ in range(n)]
        socks = [
            sock("a", power=1000, capacity=1000),
            sock("b", power=500, capacity=750, daily_need=False),
            sock("c", power=2000, capacity=1500),
        ]
        p = problem(surplus, socks, [batt(1000, 2000, 500)])
        rows = {s.name: [rng.randint(0, 1) for _ in range(n)] for s in socks}
        state = DayState(Context(p), rows)
        state.repair()
        before = state.score
        budget = Budget(150)
        consolidate(state, budget)
        assert state.score <= before
        assert budget.left >= 0
        # The state's incremental figures agree with a fresh evaluation of its plan.
        assert DayState(Context(p), state.plan()).score == state.score


def test_the_full_tier_plans_the_two_sockets_in_one_run_each() -> None:
    # The day above: at best one socket runs from step 0 (no switch on), the other from
    # step 2; both are off from step 4, where no sun would cover a re-heat at their power
    # (a full socket kept on there would heat from the grid on a draw): 3 switches, one
    # run each, no import.
    p = problem([1000, 1000, 1000, 1000, 0, 0], [sock("a"), sock("b")])
    plan = plan_optimal(p, Options())
    out = simulate(p, plan.sockets)
    assert out.unmet_need_wh == 0.0
    assert out.grid_import_wh == 0.0
    assert out.idle_violations == 0
    assert out.switches == 3
    rows = sorted(plan.sockets.values())
    assert rows[0][2:] == [1, 1, 0, 0]
    assert rows[1][:2] == [1, 1]
    assert rows[1][4:] == [0, 0]


def test_two_runs_become_one_where_the_whole_energy_cannot() -> None:
    # Surplus in steps 0-1 and 4-6 only; the needed 1000 Wh socket takes four steps, so no
    # single run of four avoids import. Drawn in three runs (5 switches); the last two
    # merged into one run across their span (steps 4-5 or 5-6): 3 switches, no import.
    p = problem([1000, 1000, 0, 0, 1000, 1000, 1000, 0], [sock("boiler", capacity=1000)])
    state = DayState(Context(p), {"boiler": [1, 1, 0, 0, 1, 0, 1, 0]})
    assert state.score[5] == 5
    consolidate(state, Budget(1000))
    assert state.rows[0] in ([1, 1, 0, 0, 1, 1, 0, 0], [1, 1, 0, 0, 0, 1, 1, 0])
    assert state.score[3] == 0.0
    assert state.score[5] == 3


def test_rows_with_one_run_fewer_keep_the_energy_and_the_other_runs() -> None:
    p = problem([1000] * 10, [sock("boiler", capacity=1000)])
    state = DayState(Context(p), {"boiler": [0, 1, 0, 0, 1, 0, 0, 0, 1, 1]})
    rows = list(_fewer_runs(state, 0))
    # The first two runs as one across their span, the third kept.
    assert [0, 1, 1, 0, 0, 0, 0, 0, 1, 1] in rows
    assert [0, 0, 0, 1, 1, 0, 0, 0, 1, 1] in rows
    # The first run moved to the horizon's start (the state now unknown: no switch there).
    assert [1, 0, 0, 0, 1, 0, 0, 0, 1, 1] in rows
    for r in rows:
        assert sum(r) == 4
        assert len(on_runs(r)) < 3 or r[0] == 1
