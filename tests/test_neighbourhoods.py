"""The full tier's fix-and-optimise neighbourhoods (`optimal._neighbourhoods`): the MILP on
two sockets at a time, the others fixed to the best plan — for a better score, or (`fewest`)
for fewer switches at no loss."""

from __future__ import annotations

import random
from itertools import combinations

import pytest

from shared.planning import milp
from shared.planning.optimal import Options, _Clock, _Evals, _neighbourhoods, plan_optimal
from shared.planning.search import Context, DayState
from shared.planning.simulate import simulate
from tests.milp_stubs import SolveCall, stub_solve
from tests.planning_builders import batt, problem, sock

SOCKS = [
    sock("a", power=1000, capacity=1000),
    sock("b", power=500, capacity=750, daily_need=False),
    sock("c", power=2000, capacity=1500),
    sock("d", power=800, capacity=800, daily_need=False),
]


def _random_state(rng: random.Random, n: int = 24) -> tuple[Context, DayState]:
    surplus = [float(rng.choice([-300, 0, 400, 900, 1500, 2500, 3200])) for _ in range(n)]
    p = problem(surplus, SOCKS, [batt(1000, 2000, 500)])
    ctx = Context(p)
    state = DayState(ctx, {s.name: [rng.randint(0, 1) for _ in range(n)] for s in SOCKS})
    state.repair()
    return ctx, state


def _run(
    ctx: Context, state: DayState, opts: Options, fewest: bool = False
) -> tuple[DayState, dict[str, float | int | str]]:
    info: dict[str, float | int | str] = {}
    clock = _Clock(60.0)
    out, _ = _neighbourhoods(
        ctx, milp.Solver(ctx.problem), state, opts, clock, info, _Evals(2000, clock), fewest
    )
    return out, info


def test_it_never_worsens_a_plan_and_finds_better_ones_from_poor_starts() -> None:
    rng = random.Random(11)
    better = 0
    for _ in range(6):
        ctx, state = _random_state(rng)
        out, info = _run(ctx, state, Options())
        assert out.score <= state.score
        # Its figures are the plan's, evaluated afresh.
        assert DayState(ctx, out.plan()).score == out.score
        assert int(info["neighbourhood_solves"]) >= 1
        better += out.score < state.score
    assert better >= 3  # random plans are poor: re-planning pairs improves most of them


def test_fewest_switches_keeps_the_score_but_the_switches() -> None:
    rng = random.Random(5)
    fewer = 0
    for _ in range(6):
        ctx, state = _random_state(rng)
        if state.score[0] > 0 or state.score[2] > 0:
            continue  # the stage is for plans that meet every need and keep every hold
        out, _ = _run(ctx, state, Options(), fewest=True)
        assert out.score <= state.score
        assert out.score[:5] <= state.score[:5]
        fewer += out.score[5] < state.score[5]
    assert fewer >= 1


def test_no_work_no_solve_and_the_same_input_gives_the_same_plan() -> None:
    ctx, state = _random_state(random.Random(3))
    out, info = _run(ctx, state, Options(neighbourhood_work=0))
    assert out is state
    assert "neighbourhood_solves" not in info
    a, info_a = _run(ctx, DayState(ctx, state.plan()), Options(neighbourhood_work=200))
    b, info_b = _run(ctx, DayState(ctx, state.plan()), Options(neighbourhood_work=200))
    assert a.plan() == b.plan()
    assert info_a == info_b
    # The budget bounds the solves: each costs at least its set-up, times the model's size.
    size = milp.Solver(ctx.problem).integers / 1000
    assert int(info_a["neighbourhood_solves"]) <= 200 / (8 * size) + 1


def test_the_full_tier_runs_them_only_after_a_main_milp_that_branched_without_a_proof() -> None:
    """A main MILP that proves its optimum needs no neighbourhoods; one cut short inside its
    root (a tiny checkpoint budget) gets none either (its model is slow at the root, so would
    its solves be); the rule holds both ways."""
    p = problem(
        [-200, 300, 900, 1600, 2400, 3000, 3100, 2900, 2500, 1800, 1000, 400, -100, -300],
        SOCKS,
        [batt(800, 1500, 300)],
    )
    for opts in (Options(), Options(mip_max_checkpoints=3, mip_restarts=1)):
        plan = plan_optimal(p, opts)
        branched = int(plan.info.get("milp_nodes", 0)) > 0
        expect = plan.status != "optimal" and branched
        assert ("neighbourhood_solves" in plan.info) == expect, plan.info
    assert plan_optimal(p, Options()).status == "optimal"
    short = plan_optimal(p, Options(mip_max_checkpoints=3, mip_restarts=1))
    assert short.status == "time-limited"
    assert int(short.info["milp_nodes"]) == 0
    assert simulate(p, short.sockets).unmet_need_wh <= 1.0


def _free_counts(
    monkeypatch: pytest.MonkeyPatch, ctx: Context, state: DayState, opts: Options
) -> list[int]:
    """How many sockets each fewest-switches neighbourhood solve left free, with a solver
    that never finds anything."""
    free: list[int] = []

    def answer(call: SolveCall) -> milp.MilpResult:
        assert call.fewest_switches_within is not None
        free.append(len(ctx.socks) - len(call.fixed or {}))
        return milp.MilpResult(None, "limited", {"checkpoints": 30})

    stub_solve(monkeypatch, answer)
    out, _ = _run(ctx, state, opts, fewest=True)
    assert out is state
    return free


def _groups_to_solve() -> tuple[Context, DayState, int, int]:
    """A random plan that meets every need and keeps every hold (the fewest-switches stage's
    input), and how many pairs and triples of its sockets have a socket with switches to
    spare (more than one run)."""
    rng = random.Random(5)
    while True:
        ctx, state = _random_state(rng)
        if state.score[0] <= 0 and state.score[2] <= 0:
            break
    k = len(ctx.socks)
    pairs = sum(
        1 for i, j in combinations(range(k), 2) if max(state.stats[i][2], state.stats[j][2]) > 2
    )
    triples = sum(1 for g in combinations(range(k), 3) if max(state.stats[i][2] for i in g) > 2)
    return ctx, state, pairs, triples


def test_where_pairs_find_nothing_triples_follow_if_a_round_of_them_is_small(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctx, state, pairs, triples = _groups_to_solve()  # 4 sockets: 6 pairs, 4 triples
    assert pairs > 0
    assert triples > 0
    free = _free_counts(monkeypatch, ctx, state, Options())
    assert free == [2] * pairs + [3] * triples
    # A round of triples larger than allowed, or groups of at most two: pairs only.
    assert _free_counts(monkeypatch, ctx, state, Options(switch_group_solves_max=3)) == [2] * pairs
    assert (
        _free_counts(monkeypatch, ctx, state, Options(switch_neighbourhood_sockets=2))
        == [2] * pairs
    )


def test_pairs_and_triples_share_one_work_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Triples get what the pairs left of `switch_neighbourhood_work`, not a budget of their
    own (on a 288-step day a fresh one cost 8.7 s CPU for nothing)."""
    ctx, state, pairs, triples = _groups_to_solve()
    assert triples >= 2
    per_solve = (30 + 8) * milp.Solver(ctx.problem).integers / 1000  # `_free_counts`' solves
    # The pairs spend it all: no triple.
    spent = Options(switch_neighbourhood_work=int(pairs * per_solve))
    assert _free_counts(monkeypatch, ctx, state, spent) == [2] * pairs
    # One and a half solves left after the pairs: two triples (a solve starts while any is left).
    rest = Options(switch_neighbourhood_work=int((pairs + 1.5) * per_solve))
    assert _free_counts(monkeypatch, ctx, state, rest) == [2] * pairs + [3] * 2


def test_where_every_pair_solve_proved_its_optimum_a_short_round_of_triples_follows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past `switch_group_solves_max` (or after pairs that found fewer switches), triples
    still follow where every pair solve proved its optimum: half the checkpoints each, and
    the round ends at the first triple that proves nothing."""
    ctx, state, pairs, triples = _groups_to_solve()
    k = len(ctx.socks)
    assert pairs > 0
    assert triples >= 2
    calls: list[tuple[int, int]] = []  # (sockets left free, checkpoints allowed)

    def run(opts: Options, triple_status: list[str]) -> list[tuple[int, int]]:
        calls.clear()
        statuses = list(triple_status)

        def answer(call: SolveCall) -> milp.MilpResult:
            free = k - len(call.fixed or {})
            calls.append((free, call.budget.max_checkpoints))
            status = "optimal" if free == 2 else statuses.pop(0)
            return milp.MilpResult(None, status, {"checkpoints": 2})

        stub_solve(monkeypatch, answer)
        out, _ = _run(ctx, state, opts, fewest=True)
        assert out is state
        return list(calls)

    cps = Options().neighbourhood_solve_checkpoints
    small = Options(switch_group_solves_max=3)  # 4 triples: more than allowed
    # Every triple proves its optimum: the whole round, at half the checkpoints.
    assert run(small, ["optimal"] * triples) == [(2, cps)] * pairs + [(3, cps // 2)] * triples
    # The second triple proves nothing: the round ends there.
    assert (
        run(small, ["optimal", "limited", "optimal", "optimal"][:triples])
        == [(2, cps)] * pairs + [(3, cps // 2)] * 2
    )
    # Without the option: pairs only (so too where a pair solve proved nothing: the test above).
    off = Options(switch_group_solves_max=3, switch_groups_when_proved=False)
    assert run(off, []) == [(2, cps)] * pairs
