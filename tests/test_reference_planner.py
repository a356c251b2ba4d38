"""The reference planner, rule by rule, and the properties every plan it makes must have.

Unless a test says otherwise: 15-minute steps, so a 1000 W socket stores 250 Wh a step and
needs ceil((capacity - 25 Wh - stored) / 250 Wh) steps (the original's 10 % margin).
"""

from __future__ import annotations

import copy
import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.planning import reference
from shared.planning.problem import Plan, PlanningProblem, SocketSpec
from shared.planning.reference import fallback_states, plan_reference, planning_order
from shared.planning.simulate import simulate
from tests.planning_builders import batt, problem, sock

TOL_W = 1e-6
TOL_WH = 1e-4


def fractions(p: PlanningProblem, plan: Plan) -> list[float]:
    return [w / p.battery_power_w for w in plan.battery_power_w]


# --- ordering ------------------------------------------------------------------------------


def test_lower_priority_number_plans_first() -> None:
    # Both need one step; only step 0 covers 1000 W. Config order lists the priority-2 first.
    p = problem([1000, 500], [sock("late", capacity=250, priority=2), sock("early", capacity=250)])
    plan = plan_reference(p)
    assert plan.sockets["early"] == [1, 0]
    assert plan.sockets["late"] == [0, 1]  # rule 3: the step with the most surplus left


def test_equal_priority_higher_power_plans_first() -> None:
    # The big socket takes step 0 first; the small one then still fits in step 1.
    p = problem([1000, 500], [sock("small", 500, 125), sock("big", 1000, 250)])
    plan = plan_reference(p)
    assert plan.sockets == {"small": [0, 1], "big": [1, 0]}


def test_equal_priority_and_power_keep_config_order() -> None:
    p = problem([1000, 500], [sock("listed_1st", capacity=250), sock("listed_2nd", capacity=250)])
    plan = plan_reference(p)
    assert plan.sockets == {"listed_1st": [1, 0], "listed_2nd": [0, 1]}


def test_planning_order_is_the_problem_order() -> None:
    sockets = [
        sock("a", 500, priority=2),
        sock("b", 800),
        sock("c", 800),
        sock("d", 2000, priority=3),
        sock("e", 900, priority=2),
    ]
    expected = [s.name for s in problem([0.0], sockets).ordered_sockets()]
    assert [s.name for s in planning_order(sockets)] == expected == ["b", "c", "e", "a", "d"]


# --- how many steps ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capacity", "stored", "steps"),
    [
        (500, 0, 2),  # (500 - 25) / 250 = 1.9 -> 2
        (270, 0, 1),  # 245 / 250 -> 1: the last 10 % of a step counts as full
        (280, 0, 2),  # 255 / 250 -> 2
        (1000, 500, 2),  # what is stored already is not planned again
        (1000, 980, 0),  # within the margin: full
        (1000, 1200, 0),  # over full: never negative
    ],
)
def test_needed_socket_gets_the_steps_its_store_is_missing(
    capacity: float, stored: float, steps: int
) -> None:
    p = problem([2000.0] * 6, [sock("s", capacity=capacity, energy_stored=stored)])
    row = plan_reference(p).sockets["s"]
    assert sum(row) == steps == p.steps_needed(p.sockets[0])
    assert row == [1] * steps + [0] * (6 - steps)  # and the earliest ones


# --- rule 1 --------------------------------------------------------------------------------


def test_rule1_takes_the_earliest_steps_that_cover_full_power() -> None:
    p = problem([999, 1000, 1500, 1000, 1000], [sock("s")])
    assert plan_reference(p).sockets["s"] == [0, 1, 1, 0, 0]


def test_each_step_taken_lowers_the_remaining_surplus() -> None:
    # 2500 W covers two 1000 W sockets in step 0 but not a third: it moves to step 1.
    sockets = [sock(name, capacity=250) for name in ("a", "b", "c")]
    plan = plan_reference(problem([2500, 1000], sockets))
    assert plan.sockets == {"a": [1, 0], "b": [1, 0], "c": [0, 1]}


# --- rule 2 --------------------------------------------------------------------------------


def test_rule2_banks_surplus_then_uses_the_most_compact_window() -> None:
    # 2000 W socket, 1000 W surplus: each step needs 250 Wh from the battery. Starting at 0
    # it could run in steps 1 and 3; banking two steps first gives steps 2 and 3.
    p = problem([1000.0] * 6, [sock("s", 2000, 1000)], [batt(1000, 4000)])
    plan = plan_reference(p)
    assert plan.sockets["s"] == [0, 0, 1, 1, 0, 0]
    assert fractions(p, plan)[:4] == pytest.approx([1, 1, -1, -1])


def test_rule2_more_steps_beat_a_more_compact_window() -> None:
    # The 250 Wh battery carries one 2000 W step per charge. Starting at 0 gives steps 1 and
    # 3; later starts give one step only. Rule 3 then adds the third step.
    p = problem([1000.0] * 4, [sock("s", 2000, 1500)], [batt(1000, 250)])
    plan = plan_reference(p)
    assert plan.sockets["s"] == [1, 1, 0, 1]
    assert fractions(p, plan) == pytest.approx([1, -1, 1, -1])


def test_rule2_never_plans_more_steps_than_needed() -> None:
    # A full 4000 Wh battery could carry all six steps; the socket needs two.
    p = problem([1000.0] * 6, [sock("s", 2000, 1000)], [batt(1000, 4000, 4000)])
    plan = plan_reference(p)
    assert plan.sockets["s"] == [1, 1, 0, 0, 0, 0]
    assert sum(plan.sockets["s"]) == p.steps_needed(p.sockets[0])


def test_rule2_uses_the_energy_the_battery_holds_from_the_first_step() -> None:
    p = problem([1000.0] * 4, [sock("s", 2000, 1000)], [batt(1000, 1000, 500)])
    plan = plan_reference(p)
    assert plan.sockets["s"] == [1, 1, 0, 0]
    assert fractions(p, plan)[:2] == pytest.approx([-1, -1])


def test_rule2_never_asks_more_than_the_battery_power() -> None:
    # The shortfall (2000 W) is twice the battery's power: rule 3 from the grid instead.
    p = problem([1000.0] * 4, [sock("s", 3000, 750)], [batt(1000, 4000, 4000)])
    plan = plan_reference(p)
    assert plan.sockets["s"] == [1, 0, 0, 0]
    assert max(abs(w) for w in plan.battery_power_w) <= p.battery_power_w + TOL_W


def test_rule2_keeps_energy_banked_for_an_earlier_socket() -> None:
    # "big" banks steps 0-1 and runs in 2-3 on the battery; "small" comes later and may not
    # take that surplus or that energy: it is left with the grid (rule 3, earliest ties).
    p = problem(
        [1000.0] * 4,
        [sock("big", 2000, 1000), sock("small", 1000, 500, priority=2)],
        [batt(1000, 4000)],
    )
    plan = plan_reference(p)
    assert plan.sockets["big"] == [0, 0, 1, 1]
    assert plan.sockets["small"] == [1, 1, 0, 0]
    assert fractions(p, plan) == pytest.approx([1, 1, -1, -1])


# --- rule 3 --------------------------------------------------------------------------------


def test_rule3_takes_the_largest_remaining_surplus_it_does_not_have() -> None:
    # Needs 3; rule 1 gives step 0 (200 W left there); rule 3 adds the two 900 W steps.
    p = problem([1200, 300, 900, 900, 100], [sock("s", capacity=750)])
    assert plan_reference(p).sockets["s"] == [1, 0, 1, 1, 0]


def test_rule3_breaks_ties_by_the_earliest_step() -> None:
    p = problem([1200, 300, 900, 900, 100], [sock("s", capacity=500)])
    assert plan_reference(p).sockets["s"] == [1, 0, 1, 0, 0]


def test_rule3_only_for_needed_sockets() -> None:
    p = problem([500.0] * 4, [sock("opt", daily_need=False)], [batt(1000, 4000, 4000)])
    assert plan_reference(p).sockets["opt"] == [0, 0, 0, 0]


# --- optional sockets and the battery threshold --------------------------------------------


def test_optional_socket_only_where_the_remaining_surplus_covers_it() -> None:
    p = problem([900, 1000, 999, 1500], [sock("opt", capacity=1000, daily_need=False)])
    assert plan_reference(p).sockets["opt"] == [0, 1, 0, 1]


def test_optional_socket_waits_for_the_battery_ratio() -> None:
    # The battery takes 1000 W of the 2000 W until it holds 500 Wh (after step 1); 1000 W
    # would cover the 500 W socket in steps 0-1 too, but it is held off until then.
    opt = sock("opt", 500, 1000, daily_need=False, min_battery_charge=0.5)
    p = problem([2000.0] * 4, [opt], [batt(1000, 1000)])
    plan = plan_reference(p)
    assert plan.sockets["opt"] == [0, 0, 1, 1]
    assert fractions(p, plan)[:2] == pytest.approx([1, 1])


def test_optional_socket_never_on_if_the_battery_never_reaches_its_ratio() -> None:
    # 250 Wh a step into a 4000 Wh battery never reaches 2000 Wh in four steps.
    held = sock("opt", 500, 1000, daily_need=False, min_battery_charge=0.5)
    free = held.model_copy(update={"min_battery_charge": 0.0})
    assert plan_reference(problem([2000.0] * 4, [held], [batt(1000, 4000)])).sockets["opt"] == [
        0,
        0,
        0,
        0,
    ]
    assert plan_reference(problem([2000.0] * 4, [free], [batt(1000, 4000)])).sockets["opt"] == [
        1,
        1,
        1,
        1,
    ]


def test_battery_ratio_already_held_means_no_wait() -> None:
    opt = sock("opt", capacity=500, daily_need=False, min_battery_charge=0.5)
    p = problem([1000.0] * 4, [opt], [batt(1000, 1000, 600)])
    assert plan_reference(p).sockets["opt"] == [1, 1, 0, 0]


def test_battery_ratio_without_batteries_is_ignored() -> None:
    opt = sock("opt", capacity=500, daily_need=False, min_battery_charge=0.9)
    assert plan_reference(problem([1000.0] * 3, [opt])).sockets["opt"] == [1, 1, 0]


# --- overcharge ----------------------------------------------------------------------------


def test_overcharge_puts_full_sockets_on_wherever_surplus_covers() -> None:
    full = sock("full", capacity=500, energy_stored=500)
    on = plan_reference(problem([1000, 999, 1000], [full], overcharge=True))
    off = plan_reference(problem([1000, 999, 1000], [full], overcharge=False))
    assert on.sockets["full"] == [1, 0, 1]
    assert off.sockets["full"] == [0, 0, 0]


def test_overcharge_goes_in_planning_order_on_what_is_left() -> None:
    p = problem(
        [1500.0],
        [sock("b", priority=2, energy_stored=500), sock("a", energy_stored=500)],
        [batt(1000, 1000)],
        overcharge=True,
    )
    plan = plan_reference(p)
    assert plan.sockets == {"b": [0], "a": [1]}
    assert plan.battery_power_w == pytest.approx([500.0])  # the battery takes what is left


def test_overcharge_respects_the_battery_ratio_hold() -> None:
    opt = sock("opt", 500, 100, daily_need=False, min_battery_charge=0.5)
    p = problem([2000.0] * 4, [opt], [batt(1000, 1000)], overcharge=True)
    assert plan_reference(p).sockets["opt"] == [0, 0, 1, 1]


# --- the battery ---------------------------------------------------------------------------


def test_battery_charges_within_its_power() -> None:
    p = problem([5000.0] * 2, batteries=[batt(400, 10_000), batt(600, 10_000)])
    assert plan_reference(p).battery_power_w == pytest.approx([1000.0, 1000.0])


def test_battery_energy_carries_from_its_current_charge_to_capacity() -> None:
    # 300 Wh held, 250 Wh a step: 550, 800, then only 200 Wh fit (0.8 of a step), then none.
    p = problem([1000.0] * 4, batteries=[batt(1000, 1000, 300)])
    assert fractions(p, plan_reference(p)) == pytest.approx([1, 1, 0.8, 0])


def test_battery_discharge_limited_by_what_it_holds() -> None:
    # 100 Wh held covers 400 W for one 15-minute step; then it is empty.
    p = problem([-1000.0, -1000.0], batteries=[batt(1000, 1000, 100)])
    assert plan_reference(p).battery_power_w == pytest.approx([-400.0, 0.0])


def test_no_battery_means_no_battery_power() -> None:
    plan = plan_reference(problem([1000.0, -500.0]))
    assert plan.battery_power_w == [0.0, 0.0]


# --- fallback ------------------------------------------------------------------------------


def test_fallback_on_while_the_measured_surplus_covers_in_order() -> None:
    sockets = [
        sock("d", 600, priority=3),
        sock("c", 500, priority=2),
        sock("b", 800),
        sock("a", 1000),
    ]
    # Order a(1000), b(800), c(500), d(600): a on (600 left), b off, c on (100 left), d off.
    assert fallback_states(sockets, 1600) == {"a": True, "b": False, "c": True, "d": False}


def test_fallback_exact_cover_is_on_and_deficit_is_all_off() -> None:
    sockets = [sock("a", 1000), sock("b", 1000, priority=2)]
    assert fallback_states(sockets, 1000) == {"a": True, "b": False}
    assert fallback_states(sockets, -200) == {"a": False, "b": False}
    assert fallback_states([], 5000) == {}


def test_fallback_ties_keep_config_order() -> None:
    sockets = [sock("x", 700), sock("y", 700)]
    assert fallback_states(sockets, 1000) == {"x": True, "y": False}


# --- plan metadata and speed ---------------------------------------------------------------


def _sunny_day(n: int = 288, seed: int = 7) -> PlanningProblem:
    rnd = random.Random(seed)
    step_s = 86_400 // n
    surplus = []
    for t in range(n):
        hour = t * step_s / 3600
        sun = max(0.0, math.sin(math.pi * (hour - 6) / 14)) * 4500 if 6 < hour < 20 else 0.0
        surplus.append(round(sun * rnd.uniform(0.5, 1.0) - rnd.uniform(200, 500), 1))
    powers = [2000, 3000, 1500, 800, 2200, 500, 1200, 3500]
    capacities = [6000, 12_000, 3000, 2000, 9000, 1000, 4000, 20_000]
    sockets = [
        sock(f"s{i}", w, c, priority=1 + i % 3, daily_need=i % 2 == 0)
        for i, (w, c) in enumerate(zip(powers, capacities, strict=True))
    ]
    return problem(
        surplus,
        sockets,
        [batt(800, 2700, 500), batt(800, 2700, 900)],
        step_s=step_s,
        overcharge=True,
    )


def test_plan_metadata_and_a_full_day_is_fast() -> None:
    p = _sunny_day()
    plan = plan_reference(p)
    assert plan.planner == "reference"
    assert plan.status == "heuristic"
    assert 0 < plan.solve_s < 0.25  # typically ~1 ms; generous for loaded CI machines


# --- properties ----------------------------------------------------------------------------


@st.composite
def problems(draw: st.DrawFn) -> PlanningProblem:
    n = draw(st.integers(1, 16))
    surplus = draw(
        st.lists(
            st.sampled_from([0.0, 500.0, 1000.0, 2000.0, -500.0]) | st.floats(-3000, 5000),
            min_size=n,
            max_size=n,
        )
    )
    sockets = []
    for i in range(draw(st.integers(0, 4))):
        capacity = draw(st.floats(10, 8000))
        sockets.append(
            SocketSpec(
                name=f"s{i}",
                max_power_usage=draw(
                    st.sampled_from([300.0, 1000.0, 2000.0]) | st.floats(50, 4000)
                ),
                energy_capacity=capacity,
                energy_stored=draw(st.floats(0, 1.2)) * capacity,
                priority=draw(st.integers(1, 3)),
                daily_need=draw(st.booleans()),
                min_battery_charge=draw(st.sampled_from([0.0, 0.0, 0.3, 0.8])),
            )
        )
    batteries = []
    for _ in range(draw(st.integers(0, 2))):
        capacity = draw(st.floats(100, 5000))
        batteries.append(
            batt(draw(st.floats(100, 2000)), capacity, draw(st.floats(0, 1)) * capacity)
        )
    step_s = draw(st.sampled_from([300, 900, 3600]))
    return problem(surplus, sockets, batteries, step_s=step_s, overcharge=draw(st.booleans()))


SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(problems())
def test_plan_shape(p: PlanningProblem) -> None:
    """One 0/1 value per step for every socket, one battery power per step."""
    plan = plan_reference(p)
    assert set(plan.sockets) == {s.name for s in p.sockets}
    for row in plan.sockets.values():
        assert len(row) == p.n_steps
        assert set(row) <= {0, 1}
    assert len(plan.battery_power_w) == p.n_steps


@SETTINGS
@given(problems())
def test_optional_sockets_only_on_covered_surplus(p: PlanningProblem) -> None:
    """Where an optional socket is on, the surplus covers every planned load and the
    battery's charging: no grid, no battery discharge for it."""
    plan = plan_reference(p)
    loads = {s.name: s.max_power_usage for s in p.sockets}
    optional = [s.name for s in p.sockets if not s.daily_need]
    for t in range(p.n_steps):
        if any(plan.sockets[name][t] for name in optional):
            load = sum(loads[name] * row[t] for name, row in plan.sockets.items())
            left = p.available_power_w[t] - load - plan.battery_power_w[t]
            assert left >= -TOL_W * max(1, len(p.sockets))
    assert simulate(p, plan.sockets).optional_violations == 0


@SETTINGS
@given(problems())
def test_battery_within_energy_and_power(p: PlanningProblem) -> None:
    """Energy carried from the current charge stays within [0, capacity]; |power| <= max."""
    plan = plan_reference(p)
    energy = p.battery_stored_wh
    for w in plan.battery_power_w:
        assert abs(w) <= p.battery_power_w + TOL_W
        energy += w * p.dt_h
        assert -TOL_WH <= energy <= p.battery_capacity_wh + TOL_WH


@SETTINGS
@given(problems())
def test_deterministic(p: PlanningProblem) -> None:
    first, second = plan_reference(p), plan_reference(p)
    assert first.sockets == second.sockets
    assert first.battery_power_w == second.battery_power_w


@SETTINGS
@given(problems())
def test_needed_sockets_get_their_steps_and_no_socket_more_than_it_stores(
    p: PlanningProblem,
) -> None:
    """Without overcharge: a needed socket gets exactly its steps (capped by the horizon),
    an optional one at most its steps, and every planned step still draws energy."""
    p = p.model_copy(update={"overcharge": False})
    plan = plan_reference(p)
    for s in p.sockets:
        taken = sum(plan.sockets[s.name])
        wanted = min(p.steps_needed(s), p.n_steps)
        assert taken == wanted if s.daily_need else taken <= wanted
    day = simulate(p, plan.sockets)
    for s in p.sockets:
        for on, drawn in zip(plan.sockets[s.name], day.socket_power_w[s.name], strict=True):
            assert not on or drawn > 0


@SETTINGS
@given(problems())
def test_overcharge_only_adds_steps(p: PlanningProblem) -> None:
    """Overcharge runs after every other socket rule: it never takes a step away."""
    without = plan_reference(p.model_copy(update={"overcharge": False}))
    with_ = plan_reference(p.model_copy(update={"overcharge": True}))
    for name, row in without.sockets.items():
        assert all(a <= b for a, b in zip(row, with_.sockets[name], strict=True))


# --- the rule-2 search against an obvious version of it ------------------------------------


def _obvious_rule2(day: reference._Day, socket: SocketSpec, want: int) -> list[int]:
    """Rule 2 spelt out: every start time, step by step, no shortcuts."""
    a = reference._assist_setup(day, socket, want)
    need = dict(zip(a.cands, a.need, strict=True))
    best: tuple[int, int] | None = None
    best_added: list[int] = []
    for start in range(day.n):
        extra = 0.0
        added: list[int] = []
        for t in range(day.n):
            covers = t in need and extra - need[t] >= a.floor[t] - reference.ENERGY_EPS_WH
            if t >= start and len(added) < want and covers:
                extra = max(extra - need[t], a.floor[t])
                added.append(t)
            else:
                extra = reference._apply(a.steps[t], extra)
        if added:
            key = (len(added), -reference._span(a, added))
            if best is None or key > best:
                best, best_added = key, added
    return best_added


@settings(max_examples=150, deadline=None)
@given(
    surplus=st.lists(
        st.sampled_from([-800.0, 0.0, 400.0, 1000.0, 1700.0]) | st.floats(-1500, 3000),
        min_size=2,
        max_size=30,
    ),
    power=st.sampled_from([1000.0, 2000.0, 3000.0]),
    battery=st.tuples(
        st.sampled_from([300.0, 800.0, 1600.0]),
        st.sampled_from([250.0, 1000.0, 3000.0]),
        st.floats(0, 1),
    ),
    want=st.integers(1, 20),
    earlier_want=st.integers(0, 6),
)
def test_rule2_shortcuts_change_no_result(
    surplus: list[float],
    power: float,
    battery: tuple[float, float, float],
    want: int,
    earlier_want: int,
) -> None:
    """Skipping equivalent starts, following a run met in the same state and abandoning
    hopeless runs pick the same steps as trying every start step by step. An earlier
    socket's battery plan is in place first, so its limits are exercised too."""
    pmax, cap, ratio = battery
    n = len(surplus)
    day = reference._Day(
        dt_h=0.25,
        surplus_w=list(surplus),
        rows={"earlier": [0] * n, "s": [0] * n},
        battery_w=[0.0] * n,
        battery_cap_wh=cap,
        battery_max_w=pmax,
        battery_start_wh=ratio * cap,
    )
    earlier = sock("earlier", 2500, 10_000)
    reference._take_covered_steps(day, earlier, earlier_want)
    reference._battery_assisted(day, earlier, earlier_want)
    target = sock("s", power, 10_000)
    reference._take_covered_steps(day, target, 1)
    before = copy.deepcopy(day)
    added = reference._battery_assisted(day, target, want)
    new_steps = [t for t in range(n) if day.rows["s"][t] and not before.rows["s"][t]]
    assert added == len(new_steps)
    assert new_steps == _obvious_rule2(before, target, want)
