"""The optimal planner: hand-solved small days, properties on random days, time limit and fallback.

Unless a test says otherwise: 15-minute steps, so a 1000 W socket stores 250 Wh a step, and a
500 Wh store needs two steps. Every figure is checked by running the plan through the day
simulator (`simulate`), the same physics the yardstick uses.
"""

from __future__ import annotations

import random
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.planning import milp
from shared.planning.optimal import Options, plan_optimal, plan_quick
from shared.planning.problem import Plan, PlanningProblem, SocketSpec
from shared.planning.reference import plan_reference
from shared.planning.search import INADMISSIBLE, Context, DayState
from shared.planning.simulate import DayOutcome, simulate
from tests.planning_builders import START, batt, problem, sock

TOL_W = 1e-6
TOL_WH = 1e-6
#: Tolerance (Wh) when comparing the day's figures with the reference's.
KEY_TOL_WH = 0.1
#: The default options: budgets count work, and the wall-clock safety net (120 s) never
#: fires on these days however busy the machine (a 1-s net fired under load, issue 14).
HAND = Options()


def solve(p: PlanningProblem, options: Options = HAND) -> tuple[Plan, DayOutcome]:
    plan = plan_optimal(p, options)
    return plan, simulate(p, plan.sockets)


def reference_day(p: PlanningProblem) -> DayOutcome:
    return simulate(p, plan_reference(p).sockets)


def figures(out: DayOutcome) -> tuple[float, float, float, int]:
    """(unmet Wh, import Wh, optional Wh, switches), rounded to 0.1 Wh."""
    return (
        round(out.unmet_need_wh, 1),
        round(out.grid_import_wh, 1),
        round(out.optional_wh, 1),
        out.switches,
    )


def not_worse(mine: DayOutcome, ref: DayOutcome, tol: float = KEY_TOL_WH) -> bool:
    """(unmet need, then import, then optional energy, more is better) within `tol` Wh."""
    pairs = [
        (mine.unmet_need_wh, ref.unmet_need_wh),
        (mine.grid_import_wh, ref.grid_import_wh),
        (-mine.optional_wh, -ref.optional_wh),
    ]
    for a, b in pairs:
        if a < b - tol:
            return True
        if a > b + tol:
            return False
    return True


def battery_at_start(p: PlanningProblem, out: DayOutcome, t: int) -> float:
    return out.battery_energy_wh[t - 1] if t > 0 else p.battery_stored_wh


# --- hand-solved days ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "start",
    [START, datetime(2025, 9, 14, 13, 37, tzinfo=timezone(timedelta(hours=2)))],
    ids=["morning", "mid-day"],
)
def test_needed_socket_waits_for_the_sunniest_steps(start: datetime) -> None:
    # Surplus 1000, 1000, 2000, 2000 W, then four steps of 1000 W deficit (1000 Wh).
    # Battery: 1000 W, 1000 Wh, empty. A needed 1000 W socket needs two steps.
    # Greedy takes the earliest covered steps (0, 1): the battery only charges in steps 2-3,
    # power-limited to 1000 W -> 500 Wh, so 500 Wh of the deficit is imported.
    # Optimum: the socket waits for the sunny steps 2-3, the battery charges 1000 W in all
    # four steps -> 1000 Wh, covering the whole deficit: import 0. Unique: the socket in
    # step 0 or 1 takes all that step's surplus from the battery (250 Wh imported later).
    p = problem(
        [1000, 1000, 2000, 2000, -1000, -1000, -1000, -1000],
        [sock("boiler")],
        [batt(1000, 1000)],
        start=start,
    )
    plan, out = solve(p)
    ref = reference_day(p)
    assert plan.sockets["boiler"] == [0, 0, 1, 1, 0, 0, 0, 0]
    assert figures(out) == (0.0, 0.0, 0.0, 2)
    assert out.socket_energy_wh["boiler"][-1] == pytest.approx(500)
    assert figures(ref)[:2] == (0.0, 500.0)
    assert out.grid_import_wh < ref.grid_import_wh
    assert plan.status == "optimal"


def test_needed_socket_leaves_the_early_sun_to_a_bigger_one() -> None:
    # No battery. Surplus 2000, 2000, 1000, 1000 W. "a" (priority 1, 1000 W) and "b"
    # (priority 2, 2000 W, 1000 Wh) each need two steps. Greedy: "a" takes the earliest
    # covered steps 0-1, "b" is then covered nowhere and takes 0-1 from the grid (500 Wh).
    # Optimum: "b" in 0-1, "a" in 2-3: every step exactly covered, import 0. ("b", full,
    # may stay on in 2-3, where the house draws nothing from the grid: one switch fewer.)
    p = problem(
        [2000, 2000, 1000, 1000],
        [sock("a", 1000, 500, priority=1), sock("b", 2000, 1000, priority=2)],
    )
    plan, out = solve(p)
    assert plan.sockets["a"] == [0, 0, 1, 1]
    assert plan.sockets["b"][:2] == [1, 1]
    assert out.socket_power_w["b"][2:] == [0.0, 0.0]
    assert figures(out)[:2] == (0.0, 0.0)
    assert figures(reference_day(p))[:2] == (0.0, 500.0)


def test_optional_socket_leaves_surplus_the_battery_needs_for_a_later_deficit() -> None:
    # Surplus 1000, 1000 W then 1000 W deficit twice (500 Wh). Battery 1000 W, 500 Wh, empty.
    # An optional 1000 W socket on in steps 0-1 would store 500 Wh but leave the battery
    # empty: 500 Wh import (what the greedy does). Optimum: the socket stays off, the battery
    # stores the 500 Wh and covers the deficit: import 0, optional energy 0.
    p = problem([1000, 1000, -1000, -1000], [sock("pool", daily_need=False)], [batt(1000, 500)])
    plan, out = solve(p)
    ref = reference_day(p)
    assert plan.sockets["pool"] == [0, 0, 0, 0]
    assert figures(out) == (0.0, 0.0, 0.0, 0)
    assert figures(ref)[:3] == (0.0, 500.0, 500.0)
    assert out.battery_energy_wh == pytest.approx([250, 500, 250, 0])


def test_two_on_runs_are_merged_when_it_costs_nothing() -> None:
    # Surplus 0, 1000, 500, 1000, 1000, -100 W; a needed 1000 W socket needs two steps.
    # Greedy takes the earliest covered steps 1 and 3: two runs, 4 switches, no import from
    # the socket. Optimum: steps 3-4, one run, 2 switches. Unique: no other pair of adjacent
    # steps is covered, and staying on (full) into step 5 is not allowed in a deficit.
    # The last step's 100 W deficit (25 Wh) is imported whatever the plan.
    p = problem([0, 1000, 500, 1000, 1000, -100], [sock("boiler")])
    plan, out = solve(p)
    ref = reference_day(p)
    assert plan.sockets["boiler"] == [0, 0, 0, 1, 1, 0]
    assert figures(out) == (0.0, 25.0, 0.0, 2)
    assert figures(ref) == (0.0, 25.0, 0.0, 4)


@pytest.mark.parametrize("config_order", [("hi", "lo"), ("lo", "hi")])
def test_with_sun_for_one_needed_socket_the_higher_priority_gets_it(
    config_order: tuple[str, str],
) -> None:
    # Surplus only in steps 2-3 (1000 W), enough for one of two 1000 W needed sockets.
    # Both get filled (500 Wh import either way); the tie goes to priority: "hi"
    # (priority 1) runs on the sun, "lo" (priority 2) from the grid. ("hi", full, goes off
    # where the surplus no longer covers its power: a draw would re-heat it from the grid.)
    prio = {"hi": 1, "lo": 2}
    p = problem([0, 0, 1000, 1000, 0, 0], [sock(n, priority=prio[n]) for n in config_order])
    plan, out = solve(p)
    assert plan.sockets["hi"][:4] == [0, 0, 1, 1]
    assert out.socket_energy_wh["hi"][3] == pytest.approx(500)
    assert out.socket_energy_wh["lo"][-1] == pytest.approx(500)
    drawing = [[w > 0 for w in out.socket_power_w[n]] for n in ("hi", "lo")]
    assert not any(a and b for a, b in zip(*drawing, strict=True))
    assert figures(out)[:2] == (0.0, 500.0)


@pytest.mark.parametrize("config_order", [("hi", "lo"), ("lo", "hi")])
def test_with_sun_for_one_optional_socket_the_higher_priority_gets_it(
    config_order: tuple[str, str],
) -> None:
    # Surplus 1000 W in steps 1-2 only: room for one of two optional 1000 W / 500 Wh stores.
    # Optional energy is 500 Wh either way; "hi" gets it. Full, it goes off in step 3: no
    # surplus there would cover a re-heat (a draw from its store) at its 1000 W.
    prio = {"hi": 1, "lo": 2}
    p = problem(
        [0, 1000, 1000, 0],
        [sock(n, priority=prio[n], daily_need=False) for n in config_order],
    )
    plan, out = solve(p)
    assert plan.sockets["lo"] == [0, 0, 0, 0]
    assert plan.sockets["hi"] == [0, 1, 1, 0]
    assert figures(out) == (0.0, 0.0, 500.0, 2)
    # Where the sun covers its power up to the horizon's end, it runs to the end (full
    # there or not) and saves the switch off.
    p = problem([0, 1000, 1000, 1000], [sock("hi", daily_need=False)])
    plan, out = solve(p)
    assert plan.sockets["hi"][3] == 1
    assert figures(out) == (0.0, 0.0, 500.0, 1)


def test_min_battery_charge_holds_an_optional_socket_back() -> None:
    # Surplus 1000 W for four steps. Battery 1000 W, 500 Wh, empty; an optional 1000 W /
    # 500 Wh socket with min_battery_charge 1.0 may only run once the battery is full, i.e.
    # from step 2 (250 Wh charged in each of steps 0-1). Optimum: steps 2-3, 500 Wh stored.
    # Without the threshold, steps 0-1 would do as well (the battery then charges in 2-3).
    held = sock("heater", daily_need=False, min_battery_charge=1.0)
    p = problem([1000, 1000, 1000, 1000], [held], [batt(1000, 500)])
    plan, out = solve(p)
    assert plan.sockets["heater"] == [0, 0, 1, 1]
    assert figures(out) == (0.0, 0.0, 500.0, 1)
    assert battery_at_start(p, out, 2) == pytest.approx(500)
    # A half-full battery at the start lets it run one step earlier (250 Wh charged in
    # step 0 fills it); the socket then needs steps 1-2, so the battery still charges in 3.
    p = problem([1000, 1000, 1000, 1000], [held], [batt(1000, 500, stored=250)])
    plan, out = solve(p)
    assert plan.sockets["heater"][0] == 0
    assert out.optional_wh == pytest.approx(500)
    for t, on in enumerate(plan.sockets["heater"]):
        if on:
            assert battery_at_start(p, out, t) >= 500 - TOL_WH


def test_a_full_store_is_never_switched_on_in_a_deficit() -> None:
    # Both stores already full (energy_stored == capacity); deficits in steps 0, 2, 3.
    # Switching them on changes no figure but would put a relay on a house fed by the grid
    # (and cost switches): the optimum leaves both off everywhere, import 125+125+125 Wh.
    p = problem(
        [-500, 2000, -500, -500],
        [sock("n", energy_stored=500), sock("o", daily_need=False, energy_stored=500)],
        overcharge=True,
    )
    plan, out = solve(p)
    assert plan.sockets == {"n": [0, 0, 0, 0], "o": [0, 0, 0, 0]}
    assert figures(out) == (0.0, 375.0, 0.0, 0)


def test_300_second_steps_and_a_part_full_store() -> None:
    # 5-minute steps: a 1200 W socket stores 100 Wh a step; 100 of 300 Wh stored, so it
    # needs two steps. Surplus 1300 W in steps 0, 2 and 3 only. Greedy: steps 0 and 2
    # (3 switches). Optimum: steps 2-3, the only covered adjacent pair; full, it then goes
    # off, where no surplus would cover a re-heat (two switches, not three).
    surplus = [1300.0, 0, 1300, 1300] + [0.0] * 8
    p = problem(surplus, [sock("boiler", 1200, 300, energy_stored=100)], step_s=300)
    plan, out = solve(p)
    assert plan.sockets["boiler"] == [0, 0, 1, 1] + [0] * 8
    assert figures(out) == (0.0, 0.0, 0.0, 2)
    assert out.socket_energy_wh["boiler"][-1] == pytest.approx(300)
    assert figures(reference_day(p)) == (0.0, 0.0, 0.0, 3)


def test_start_time_does_not_change_the_plan() -> None:
    surplus = [-200.0, 300, 1500, 2500, 2500, 1800, 900, -100, -600, -800]
    socks = [
        sock("boiler", 2000, 900, energy_stored=100),
        sock("car", 1500, 2000, daily_need=False, priority=2),
        sock("heater", 700, 600, daily_need=False, min_battery_charge=0.5),
    ]
    batts = [batt(800, 1200, 200)]
    plans = [
        solve(problem(surplus, socks, batts, start=start))[0].sockets
        for start in (
            START,
            datetime(2025, 12, 31, 23, 55, tzinfo=timezone(timedelta(hours=-5))),
            datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=1))),
        )
    ]
    assert plans[0] == plans[1] == plans[2]


# --- properties ----------------------------------------------------------------------------


def check_plan(p: PlanningProblem, plan: Plan) -> DayOutcome:
    """Everything a plan must satisfy, whatever planned it; returns the simulated day."""
    assert set(plan.sockets) == {s.name for s in p.sockets}
    for row in plan.sockets.values():
        assert len(row) == p.n_steps
        assert set(row) <= {0, 1}
    assert len(plan.battery_power_w) == p.n_steps
    out = simulate(p, plan.sockets)
    assert out.optional_violations == 0
    optional = [s for s in p.sockets if not s.daily_need]
    for t in range(p.n_steps):
        drawn = sum(out.socket_power_w[s.name][t] for s in p.sockets)
        if any(plan.sockets[s.name][t] for s in optional):
            # Nothing from grid or battery in a step where an optional socket is on.
            assert p.available_power_w[t] - drawn >= -TOL_W
            assert out.grid_power_w[t] <= TOL_W
            assert out.battery_power_w[t] >= -TOL_W
    # min_battery_charge: an optional socket is held off until the battery holds the ratio.
    assert keeps_battery_thresholds(p, plan.sockets, out)
    # Battery: energy within [0, capacity], power within the total max power.
    for e, w in zip(out.battery_energy_wh, out.battery_power_w, strict=True):
        assert -TOL_WH <= e <= p.battery_capacity_wh + TOL_WH
        assert abs(w) <= p.battery_power_w + TOL_W
    assert plan.battery_power_w == pytest.approx(out.battery_power_w, abs=1e-2)
    # A socket's store never overfills (one already over capacity never grows).
    for s in p.sockets:
        limit = max(s.energy_capacity, s.energy_stored)
        assert max(out.socket_energy_wh[s.name], default=0.0) <= limit + TOL_WH
    return out


def keeps_battery_thresholds(
    p: PlanningProblem, rows: dict[str, list[int]], out: DayOutcome
) -> bool:
    """Every optional socket with a min_battery_charge waits until the battery holds it."""
    if not p.batteries:
        return True
    for s in p.sockets:
        if s.daily_need or s.min_battery_charge <= 0 or not any(rows[s.name]):
            continue
        first_on = rows[s.name].index(1)
        held = max(battery_at_start(p, out, t) for t in range(first_on + 1))
        if held < s.min_battery_charge * p.battery_capacity_wh - TOL_WH:
            return False
    return True


@st.composite
def problems(draw: st.DrawFn) -> PlanningProblem:
    n = draw(st.integers(4, 24))
    surplus = draw(
        st.lists(
            st.sampled_from([0.0, 500.0, 1000.0, 2000.0, -500.0]) | st.floats(-2000, 4000),
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
                energy_stored=draw(st.sampled_from([0.0, 1.0]) | st.floats(0, 1.2)) * capacity,
                priority=draw(st.integers(1, 3)),
                daily_need=draw(st.booleans()),
                min_battery_charge=draw(st.sampled_from([0.0, 0.0, 0.3, 0.8]) | st.floats(0, 1)),
            )
        )
    batteries = []
    for _ in range(draw(st.integers(0, 2))):
        capacity = draw(st.floats(100, 5000))
        batteries.append(
            batt(draw(st.floats(100, 2000)), capacity, draw(st.floats(0, 1)) * capacity)
        )
    start = START + timedelta(minutes=draw(st.integers(0, 24 * 60 - 1)))
    return problem(
        surplus,
        sockets,
        batteries,
        step_s=draw(st.sampled_from([300, 900])),
        start=start.astimezone(timezone(timedelta(hours=draw(st.integers(-12, 14))))),
        overcharge=draw(st.booleans()),
    )


#: Derandomized: the same 60 days on every run (reproducible CI); widen by hand with a larger
#: max_examples when hunting.
RANDOM_DAYS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


@RANDOM_DAYS
@given(problems())
def test_random_days_keep_every_constraint_and_never_lose_to_the_reference(
    p: PlanningProblem,
) -> None:
    # The default options: budgets of work only, so a busy machine cannot cut the search
    # short (the wall-clock safety net, far above what these days take, never fires).
    plan = plan_optimal(p, Options())
    assert plan.planner == "optimal"
    assert plan.status in {"optimal", "time-limited", "fallback"}
    out = check_plan(p, plan)
    ref_rows = plan_reference(p).sockets
    ref = simulate(p, ref_rows)
    # The reference's own battery ledger can run an optional socket before the battery
    # really holds its threshold (or feed one from the battery); such a plan breaks the
    # rules, so "never worse" is measured only against a reference plan that keeps them.
    if ref.optional_violations == 0 and keeps_battery_thresholds(p, ref_rows, ref):
        assert not_worse(out, ref)


@RANDOM_DAYS
@given(problems())
def test_random_days_are_planned_deterministically(p: PlanningProblem) -> None:
    # The default options: the budgets count work, the safety net is far off.
    options = Options()
    first, second = plan_optimal(p, options), plan_optimal(p, options)
    assert first.sockets == second.sockets
    assert first.battery_power_w == second.battery_power_w
    assert first.status == second.status


def test_fallback_never_runs_an_optional_socket_before_the_battery_holds_its_ratio() -> None:
    # Battery 100 W / 100 Wh holding 25 Wh; the heater waits for 30 Wh (ratio 0.3).
    # Zero mode: step 0's 100 W deficit empties it (0 Wh), step 1 charges 100 W (25 Wh),
    # so it holds 25, 0, 25 Wh at the starts of steps 0-2: never 30 Wh, the heater must stay
    # off. The reference's ledger (its rule 6 discharge not yet planned) sees 25 + 5 Wh
    # charged in step 1 = 30 Wh and puts the heater on in step 2. The optimal planner checks
    # the threshold on the real physics, also for the reference plan it falls back to.
    p = problem(
        [-100, 1000, 1000],
        [sock("heater", 1000, 250, daily_need=False, min_battery_charge=0.3)],
        [batt(100, 100, stored=25)],
    )
    plan, out = solve(p)
    assert [battery_at_start(p, out, t) for t in range(3)] == pytest.approx([25, 0, 25])
    assert plan.sockets["heater"] == [0, 0, 0]


def test_switch_interval_an_optional_socket_may_stay_on_full_instead_of_switching_off() -> None:
    # 5-minute steps, switches at least 900 s (3 steps) apart. Surplus 300 W in steps 2-3;
    # an optional 300 W / 10 Wh store fills in step 2 (25 Wh > 10 Wh). Switching it off in
    # step 3 breaks the interval, but staying on costs nothing: full, it draws nothing and
    # the sun there covers a re-heat. Optimum [0, 0, 1, 1]: 10 Wh stored, one switch.
    p = problem([0, 0, 300, 300], [sock("pool", 300, 10, daily_need=False)], step_s=300)
    p = p.model_copy(update={"switch_interval_s": 900})
    plan, out = solve(p)
    assert plan.sockets["pool"] == [0, 0, 1, 1]
    assert figures(out) == (0.0, 0.0, 10.0, 1)
    # Without sun in step 3 it may neither stay on (a re-heat would come from the grid) nor
    # go off (the interval): it stays off, and the 10 Wh wait for another day.
    p = p.model_copy(update={"available_power_w": [0.0, 0.0, 300.0, 0.0]})
    plan, out = solve(p)
    assert plan.sockets["pool"] == [0, 0, 0, 0]
    assert figures(out) == (0.0, 0.0, 0.0, 0)


@pytest.mark.parametrize("seed", range(4))
def test_many_sockets_and_batteries(seed: int) -> None:
    """1-10 sockets, 0-3 batteries, a full day of 96 or 288 steps, default budget."""
    rng = random.Random(seed)
    n = rng.choice([96, 288])
    surplus = [rng.uniform(-2000, 4000) for _ in range(n)]
    socks = []
    for i in range(rng.randint(1, 10)):
        capacity = rng.uniform(100, 10000)
        socks.append(
            sock(
                f"s{i}",
                rng.choice([300, 1000, 2000, rng.uniform(50, 4000)]),
                capacity,
                energy_stored=rng.uniform(0, 1) * capacity,
                priority=rng.randint(1, 3),
                daily_need=rng.random() < 0.5,
                min_battery_charge=rng.choice([0.0, 0.3, 0.8]),
            )
        )
    batts = []
    for _ in range(rng.randint(0, 3)):
        capacity = rng.uniform(500, 5000)
        batts.append(batt(rng.uniform(300, 2000), capacity, rng.uniform(0, capacity)))
    p = problem(surplus, socks, batts, step_s=86_400 // n, overcharge=True)
    plan = plan_optimal(p)
    out = check_plan(p, plan)
    assert not_worse(out, reference_day(p))


# --- time limit and fallback ---------------------------------------------------------------


def _full_day(n: int = 96, seed: int = 3) -> PlanningProblem:
    """A sunny day: night deficit, a bell of surplus, five sockets and a battery."""
    rng = random.Random(seed)
    surplus = []
    for t in range(n):
        x = (t - n / 2) / (n / 6)
        surplus.append(round(4000 * 2.718 ** (-x * x) - 400 + rng.uniform(-300, 300), 1))
    socks = [
        sock("boiler", 2000, 3000, energy_stored=500),
        sock("car", 3500, 8000, daily_need=False, priority=2),
        sock("heater", 1000, 1500, daily_need=False, min_battery_charge=0.5),
        sock("freezer", 300, 400, energy_stored=100, priority=2),
        sock("pool", 1500, 4000, daily_need=False, priority=3),
    ]
    return problem(surplus, socks, [batt(1200, 2700, 300)], step_s=86_400 // n, overcharge=True)


def test_tiny_time_limit_still_gives_a_valid_plan_never_worse_than_the_reference() -> None:
    p = _full_day()
    plan = plan_optimal(p, Options(time_limit_s=0.001))
    assert plan.status in {"time-limited", "fallback"}
    out = check_plan(p, plan)
    assert not_worse(out, reference_day(p))
    assert out.key() <= reference_day(p).key()


def test_without_highspy_the_planner_still_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "highspy", None)  # `import highspy` raises ImportError
    with pytest.raises(ImportError):
        import highspy  # noqa: F401
    p = _full_day()
    plan = plan_optimal(p, Options(time_limit_s=0.3))
    assert plan.planner == "optimal"
    assert plan.solve_s > 0
    assert plan.status != "optimal"  # nothing proved it
    assert any("highspy" in str(v) for v in plan.info.values()), plan.info
    out = check_plan(p, plan)
    assert not_worse(out, reference_day(p))


def test_plan_metadata() -> None:
    plan = plan_optimal(problem([1000, 1000, 0, 0], [sock("boiler")]), HAND)
    assert plan.planner == "optimal"
    assert plan.solve_s > 0
    assert plan.status == "optimal"
    assert "moves" in plan.info


def test_a_full_day_with_the_default_budget_stays_inside_its_work_budget() -> None:
    """Budgets count work (no timing here: timings are the benchmark's job)."""
    p = _full_day()
    options = Options()
    started = time.perf_counter()
    plan = plan_optimal(p, options)
    elapsed = time.perf_counter() - started
    assert plan.solve_s <= elapsed
    assert int(plan.info["evals"]) <= options.max_evals
    assert int(plan.info["milp_checkpoints"]) <= options.mip_max_checkpoints + 1
    assert int(plan.info["milp_runs"]) <= options.mip_restarts
    check_plan(p, plan)


def test_the_milp_worker_process_gives_the_same_plan_as_in_process() -> None:
    """The scheduler runs the full tier in a child process (HiGHS and numpy never stay in
    its memory): same problem, same plan, and the MILP's proof comes back with it."""
    p = problem(
        [-300, 200, 1800, 2500, 2600, 1900, 400, -500],
        [sock("boiler", 2000, 1000), sock("bike", 300, 150, daily_need=False)],
        [batt(800, 1000, stored=200)],
    )
    here = plan_optimal(p, Options(time_limit_s=5.0))
    there = plan_optimal(p, Options(time_limit_s=5.0, milp_worker=True))
    assert there.info["milp_status"] == here.info["milp_status"] == "optimal"
    assert there.sockets == here.sockets
    assert there.status == here.status


def test_a_failing_worker_gives_the_reference_plan_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shared.planning import optimal

    monkeypatch.setattr(optimal.sys, "executable", "/nonexistent/python")
    p = problem([1000, 1000, -200, -200], [sock("boiler", 1000, 500)])
    plan = plan_optimal(p, Options(time_limit_s=1.0, milp_worker=True))
    assert plan.status == "fallback"
    assert "worker failed" in str(plan.info.get("fallback_reason", ""))
    assert plan.sockets == plan_reference(p).sockets
    check_plan(p, plan)


# --- rule 3: a full socket stays on only where the sun would cover a re-heat -------------


def test_a_full_socket_is_not_kept_on_where_the_surplus_does_not_cover_its_power() -> None:
    # A needed 1000 W / 500 Wh boiler fills in steps 0-1 on the sun. In steps 2-3 the house
    # still exports 600 W, so nothing feeds it there; but a draw from the boiler (a shower)
    # would re-heat it at 1000 W, 400 W of it from the grid. It goes off at step 2.
    p = problem([1000, 1000, 600, 600], [sock("boiler")])
    kept_on = {"boiler": [1, 1, 1, 1]}
    # The simulator counts it, the search scores it inadmissible, the repair switches it off.
    assert simulate(p, kept_on).idle_violations == 2
    state = DayState(Context(p), kept_on)
    assert state.score == INADMISSIBLE
    state.repair()
    assert state.plan()["boiler"] == [1, 1, 0, 0]
    assert state.score != INADMISSIBLE
    # Both tiers plan it so; so does the MILP alone.
    plan, out = solve(p)
    assert plan.sockets["boiler"] == [1, 1, 0, 0]
    assert (out.idle_violations, out.unmet_need_wh, out.grid_import_wh) == (0, 0.0, 0.0)
    assert plan_quick(p, kept_on, HAND).sockets["boiler"] == [1, 1, 0, 0]
    # With a cost on every switch, the MILP too would keep it on but for its rule.
    result = milp.solve(p.model_copy(update={"switch_cost_wh": 10.0}), kept_on)
    assert result.status == "optimal"
    assert result.rows is not None
    assert result.rows["boiler"] == [1, 1, 0, 0]


def test_inside_a_minimum_on_time_a_full_socket_may_stay_on_without_the_surplus() -> None:
    # The same boiler, off now, with a 1-hour minimum on time: a run it starts stays on for
    # 4 steps, so kept on full in steps 2-3 is allowed (and saves the switch off).
    p = problem([1000, 1000, 600, 600], [sock("boiler")]).model_copy(
        update={"min_on_s": 3600, "initial_on": {"boiler": False}}
    )
    kept_on = {"boiler": [1, 1, 1, 1]}
    assert simulate(p, kept_on).idle_violations == 0
    assert DayState(Context(p), kept_on).score != INADMISSIBLE
    plan, out = solve(p)
    assert plan.sockets["boiler"] == [1, 1, 1, 1]
    assert (out.idle_violations, out.switches) == (0, 1)


def test_where_the_price_allows_the_grid_a_full_socket_may_stay_on() -> None:
    # Import at 0.05 EUR/kWh, at or below what the optional socket may draw from the grid
    # at: kept on full there breaks no rule (a re-heat would cost what its energy is worth).
    p = problem([1000, 1000, 600, 600], [sock("pool", daily_need=False)]).model_copy(
        update={
            "import_price": [0.05] * 4,
            "export_price": [0.0] * 4,
            "optional_grid_price_max": 0.05,
        }
    )
    assert simulate(p, {"pool": [1, 1, 1, 1]}).idle_violations == 0
    assert DayState(Context(p), {"pool": [1, 1, 1, 1]}).score != INADMISSIBLE


# --- a switch cost against optional energy (no prices) -----------------------------------


@pytest.mark.parametrize("capacity", [1500.0, 100.0])
def test_a_switch_cost_is_weighed_against_the_optional_energy_a_run_stores(
    capacity: float,
) -> None:
    # An e-bike charger (optional, 300 W), off now; 600 W of sun for 6 hours, then the house
    # draws. With calm plans a switch costs 20 Wh of import, and a Wh into an optional store
    # is worth 0.1 Wh of import (the yardstick's rate): a run that stores 1500 Wh pays for
    # its two switches (on, and off before the sun goes), one that stores 100 Wh does not.
    # (Without that worth, any switch outweighed any optional energy: the charger never ran.)
    p = problem([600.0] * 24 + [-300.0] * 8, [sock("e-bike", 300, capacity, daily_need=False)])
    p = p.model_copy(
        update={
            "switch_cost_wh": 20.0,
            "initial_on": {"e-bike": False},
            "initial_since_s": {"e-bike": 7200.0},
        }
    )
    plan, out = solve(p)
    if capacity > 200:
        assert (out.optional_wh, out.grid_import_wh, out.switches) == (capacity, 600.0, 2)
    else:
        assert plan.sockets["e-bike"] == [0] * 32
    assert plan_quick(p, plan.sockets, HAND).sockets == plan.sockets


# --- the relaxation first: the main MILP without rule 3's stricter half ----------------


def test_a_relaxed_optimum_that_breaks_rule_3_brings_in_the_model_with_its_rows() -> None:
    # The boiler of the rule-3 test above, with a cost on every switch: the relaxation's
    # optimum keeps it on, full, where the surplus (600 W) falls short of its 1000 W (one
    # switch fewer). That breaks the rule, so the full tier solves the model with the rule's
    # rows from the repaired plan, and proves that plan optimal. (With the switch cost in
    # every MILP stage: `energy_first` off.)
    p = problem([1000, 1000, 600, 600], [sock("boiler")]).model_copy(
        update={"switch_cost_wh": 10.0, "initial_on": {"boiler": False}}
    )
    relaxed = milp.Solver(p, formulation=milp.Formulation(kept_short=False))
    result = relaxed.solve({"boiler": [0, 0, 0, 0]}, milp.Budget())
    assert result.status == "optimal"
    assert result.rows == {"boiler": [1, 1, 1, 1]}
    assert any(DayState(Context(p), result.rows).short_on)
    plan, out = solve(p, Options(energy_first=False))
    assert plan.info["milp_rule3_rows"] == "added"
    assert plan.status == "optimal"
    assert plan.sockets["boiler"] == [1, 1, 0, 0]
    assert (out.idle_violations, out.unmet_need_wh, out.grid_import_wh) == (0, 0.0, 0.0)
    # Energy first (the default): the model without the switch cost has no reason to keep
    # it on; the last stage (on here), the model with the switch cost and the rule's rows,
    # proves the same plan optimal.
    plan, out = solve(p, Options(priced_switch_checkpoints=10))
    assert "milp_rule3_rows" not in plan.info
    assert plan.info["milp_energy_proved"] == 1
    assert plan.info["priced_switch_stage"] == "optimal"
    assert plan.status == "optimal"
    assert plan.sockets["boiler"] == [1, 1, 0, 0]


def test_a_relaxed_optimum_that_keeps_rule_3_is_the_days_optimum() -> None:
    # Short steps exist (steps 0-1: 600 W for a 1000 W boiler), but the relaxation's optimum
    # fills on the sun of steps 2-3 and is off where the surplus falls short: it keeps the
    # rule, so it is proved optimal without the rule's rows. (With the switch cost in every
    # MILP stage: `energy_first` off; with it on, only the last stage's proof would count.)
    p = problem([0, 600, 1000, 1000], [sock("boiler")]).model_copy(
        update={"switch_cost_wh": 10.0, "initial_on": {"boiler": False}}
    )
    plan, out = solve(p, Options(energy_first=False))
    assert "milp_rule3_rows" not in plan.info
    assert plan.info["milp_status"] == "optimal"
    assert plan.status == "optimal"
    assert plan.sockets["boiler"] == [0, 0, 1, 1]
    assert figures(out) == (0.0, 0.0, 0.0, 1)
