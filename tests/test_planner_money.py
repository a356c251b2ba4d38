"""Plans on money and the batteries' mode per step (issue 17, points 2 and 3).

Hand-made days with prices; every figure is checked on the day simulator (which agrees with
the shared yardstick, `test_simulate.py`). 15-minute steps unless a test says otherwise: a
1000 W socket stores 250 Wh a step, a 1000 W battery moves 250 Wh a step.
"""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime

import pytest

from shared.planning.modes import best_modes
from shared.planning.optimal import Options, plan_optimal, plan_quick, priced_bound
from shared.planning.problem import BATTERY_MODES, BatterySpec, PlanningProblem, SocketSpec
from shared.planning.reference import plan_reference
from shared.planning.search import Context, DayState
from shared.planning.simulate import simulate
from tests.planning_builders import batt, problem, sock


def priced(p: PlanningProblem, imp: list[float] | float, exp: list[float] | float, **kw: object):  # type: ignore[no-untyped-def]
    return p.model_copy(update={"import_price": imp, "export_price": exp, **kw})


def net_cost(p: PlanningProblem, rows: dict[str, list[int]], modes: list[str] | None) -> float:
    out = simulate(p, rows, modes)  # type: ignore[arg-type]
    assert out.net_cost_eur is not None
    return out.net_cost_eur


def reference_cost(p: PlanningProblem) -> float:
    return net_cost(p, plan_reference(p).sockets, ["zero"] * p.n_steps)


def test_without_prices_the_plan_has_no_modes_and_is_todays_plan() -> None:
    p = problem([-300.0, 1500, 1500, -300], [sock("boiler", 1000, 500)], [batt(800, 1000, 300)])
    plan = plan_optimal(p)
    assert plan.battery_mode is None
    assert "cost_eur" not in plan.info


def test_without_the_p1_token_the_plan_says_zero_throughout() -> None:
    p = priced(
        problem([-300.0, 1500, 1500, -300], [sock("boiler", 1000, 500)], [batt(800, 1000, 300)]),
        [0.1, 0.3, 0.3, 0.5],
        0.05,
        battery_modes=False,
    )
    plan = plan_optimal(p)
    assert plan.battery_mode == ["zero"] * 4


def test_a_needed_socket_the_sun_cannot_fill_goes_to_the_cheapest_steps() -> None:
    # No sun at all; a 1000 W boiler needs 2 steps. Prices per step: the two cheapest are
    # steps 1 and 4 (not adjacent: one switch more is free here).
    prices = [0.30, 0.10, 0.35, 0.40, 0.12, 0.33]
    p = priced(problem([-100.0] * 6, [sock("boiler", 1000, 500)]), prices, 0.0)
    plan = plan_optimal(p)
    assert plan.sockets["boiler"] == [0, 1, 0, 0, 1, 0]
    # With switches costing 100 Wh at the mean price, the cheapest adjacent pair (steps 0-1)
    # wins: 0.40 EUR/kWh for two steps against two more switches.
    calm = p.model_copy(update={"switch_cost_wh": 100.0})
    assert plan_optimal(calm).sockets["boiler"] == [1, 1, 0, 0, 0, 0]


def test_optional_sockets_only_on_surplus_even_when_the_grid_is_cheap() -> None:
    # A negative import price at steps 1-2 and no sun: the original's rule holds (no
    # `optional_grid_price_max`), the optional heater stays off.
    heater = sock("heater", 1000, 1000, daily_need=False)
    p = priced(problem([-100.0] * 4, [heater]), [0.3, -0.05, -0.02, 0.3], [0.0, -0.1, -0.1, 0.0])
    plan = plan_optimal(p)
    assert plan.sockets["heater"] == [0, 0, 0, 0]
    assert simulate(p, plan.sockets).optional_not_from_surplus_wh == 0


def test_paid_to_consume_optional_sockets_draw_from_the_grid() -> None:
    # `optional_grid_price_max: 0`: at import prices at or below 0 the heater may draw from
    # the grid (it is paid to), elsewhere not.
    heater = sock("heater", 1000, 1000, daily_need=False)
    p = priced(
        problem([-100.0] * 4, [heater]),
        [0.3, -0.05, 0.0, 0.3],
        [0.0, -0.1, -0.1, 0.0],
        optional_grid_price_max=0.0,
    )
    plan = plan_optimal(p)
    assert plan.sockets["heater"] == [0, 1, 1, 0]
    assert net_cost(p, plan.sockets, plan.battery_mode) < reference_cost(p)


def test_the_battery_is_kept_for_the_evening_peak_not_emptied_into_a_cheap_boiler() -> None:
    # A full battery (1000 W, 1000 Wh). A needed 1000 W boiler must run 2 steps; no sun.
    # Prices: cheap now (0.10), the evening peak later (0.50), when the house needs the whole
    # battery. In zero mode the battery spends 500 Wh under the boiler at 0.10 and the
    # evening draws 500 Wh from the grid at 0.50. The plan holds the battery (standby /
    # charge_only) under the boiler and spends it at the peak: 0.5 kWh x 0.40 EUR saved.
    surplus = [-1000.0, -1000, -1000, -1000, -1000, -1000]
    imp = [0.10, 0.10, 0.50, 0.50, 0.50, 0.50]
    p = priced(problem(surplus, [sock("boiler", 1000, 500)], [batt(1000, 1000, 1000)]), imp, 0.0)
    plan = plan_optimal(p)
    assert plan.sockets["boiler"][:2] == [1, 1]
    assert plan.battery_mode is not None
    assert plan.battery_mode[0] in {"standby", "charge_only"}
    assert plan.battery_mode[1] in {"standby", "charge_only"}
    out = simulate(p, plan.sockets, plan.battery_mode)
    assert out.battery_energy_wh[1] == pytest.approx(1000)  # kept
    assert out.battery_energy_wh[-1] == pytest.approx(0)  # spent at the peak
    zero = net_cost(p, plan.sockets, ["zero"] * 6)
    assert out.net_cost_eur == pytest.approx(zero - 0.5 * (0.50 - 0.10))


def test_the_battery_charges_from_the_grid_at_a_negative_price() -> None:
    # Empty battery, no sun; the import price is negative in step 1, high later: to_full
    # there, and the charge covers the later deficit.
    surplus = [-200.0, -200, -800, -800]
    imp = [0.25, -0.05, 0.40, 0.40]
    p = priced(problem(surplus, [], [batt(1000, 500, 0)]), imp, -0.1)
    plan = plan_optimal(p)
    assert plan.battery_mode is not None
    assert plan.battery_mode[1] == "to_full"
    assert plan.battery_mode[0] != "to_full"
    out = simulate(p, plan.sockets, plan.battery_mode)
    assert out.net_cost_eur is not None
    assert out.net_cost_eur < reference_cost(p)


def test_the_battery_keeps_room_for_a_noon_that_would_export_at_a_loss() -> None:
    # A full battery, a morning deficit at a low price, a noon surplus that can only be
    # exported at a negative price, an evening deficit at a high price. Holding the charge
    # through the morning (cheaper than the evening) would push more of noon's surplus into
    # the grid at a loss: the plan spends the morning (200 Wh) and soaks up noon, exporting
    # only what the full battery cannot take (400 Wh).
    surplus = [-400.0, -400, 1200, 1200, -800, -800]
    imp = [0.20, 0.20, 0.10, 0.10, 0.45, 0.45]
    exp = [0.05, 0.05, -0.08, -0.08, 0.15, 0.15]
    p = priced(problem(surplus, [], [batt(1000, 1000, 1000)]), imp, exp)
    plan = plan_optimal(p)
    out = simulate(p, plan.sockets, plan.battery_mode)
    assert out.battery_energy_wh[1] == pytest.approx(800)
    assert out.export_wh == pytest.approx(400)
    assert out.net_cost_eur is not None
    assert out.net_cost_eur <= reference_cost(p) + 1e-9


def test_a_mode_change_counts_as_a_switch_and_costs_like_one() -> None:
    surplus = [-200.0, -200, -800, -800, -200, -200, -800, -800]
    imp = [0.25, -0.05, 0.40, 0.40, 0.25, -0.01, 0.40, 0.40]
    p = priced(problem(surplus, [], [batt(1000, 500, 0)]), imp, -0.1)
    cheap = plan_optimal(p)
    costly = plan_optimal(p.model_copy(update={"switch_cost_wh": 2000.0}))
    changes = [
        sum(1 for a, b in itertools.pairwise(plan.battery_mode or []) if a != b)
        for plan in (cheap, costly)
    ]
    assert changes[1] < changes[0]
    assert simulate(p, {}, cheap.battery_mode).switches == changes[0]


def test_initial_battery_mode_a_change_at_the_first_step_counts() -> None:
    p = priced(problem([-500.0] * 2, [], [batt(1000, 500, 500)]), 0.3, 0.05)
    stay = simulate(p.model_copy(update={"initial_battery_mode": "zero"}), {}, ["zero", "zero"])
    change = simulate(
        p.model_copy(update={"initial_battery_mode": "standby"}), {}, ["zero", "zero"]
    )
    assert stay.switches == 0
    assert change.switches == 1


def test_mode_changes_keep_the_switch_interval() -> None:
    surplus = [-200.0, -200, -800, -800, -200, -200, -800, -800]
    imp = [0.25, -0.05, 0.40, 0.40, 0.25, -0.01, 0.40, 0.40]
    p = priced(
        problem(surplus, [], [batt(1000, 500, 0)], step_s=300),
        imp,
        -0.1,
        switch_interval_s=900,
    )
    plan = plan_optimal(p)
    assert plan.battery_mode is not None
    at = [t for t in range(1, 8) if plan.battery_mode[t] != plan.battery_mode[t - 1]]
    assert all(b - a >= 3 for a, b in itertools.pairwise(at))


@pytest.mark.parametrize("seed", range(25))
def test_the_dynamic_programme_finds_the_cheapest_mode_sequence(seed: int) -> None:
    """Against every one of the 5^n sequences on small days (exact charge buckets)."""
    rng = random.Random(seed)
    n = rng.randint(2, 5)
    socks = [
        SocketSpec(
            name=f"s{i}",
            max_power_usage=rng.choice([300.0, 1000.0]),
            energy_capacity=rng.uniform(50, 800),
            daily_need=rng.random() < 0.5,
            min_battery_charge=rng.choice([0.0, 0.3]),
        )
        for i in range(rng.randint(0, 2))
    ]
    p = PlanningProblem(
        start=datetime(2026, 1, 1, tzinfo=UTC),
        step_s=900,
        available_power_w=[rng.uniform(-1500, 2000) for _ in range(n)],
        sockets=socks,
        batteries=[
            BatterySpec(
                name="b",
                max_power_usage=800,
                energy_capacity=1000,
                energy_stored=rng.uniform(0, 1000),
            )
        ],
        import_price=[rng.uniform(-0.1, 0.4) for _ in range(n)],
        export_price=[rng.uniform(-0.2, 0.2) for _ in range(n)],
        switch_cost_wh=rng.choice([0.0, 30.0]),
        initial_battery_mode=rng.choice([None, "zero"]),
        switch_interval_s=rng.choice([0, 1800]),
        optional_grid_price_max=rng.choice([None, 0.0]),
    )
    ctx = Context(p)
    rows = {s.name: [rng.randint(0, 1) for _ in range(n)] for s in socks}
    state = DayState(ctx, rows, ["zero"] * n)
    best = min(state.try_modes(list(seq)) for seq in itertools.product(BATTERY_MODES, repeat=n))
    found = best_modes(state, bucket_wh=1e-6)
    if best[0] == float("inf"):
        return  # no sequence helps these rows (a socket rule, not the battery)
    assert found is not None
    mine = state.try_modes(found)
    assert mine[3] == pytest.approx(best[3], abs=1e-6)
    assert mine[:5] <= best[:5] or mine[3] == pytest.approx(best[3], abs=1e-6)


def test_the_example_priced_day_beats_the_reference_and_nears_the_bound() -> None:
    from pathlib import Path

    from shared.planning.problem import parse_problem

    path = Path(__file__).resolve().parents[2] / "shared" / "planning"
    p = parse_problem((path / "example-dynamic-prices.json").read_bytes())
    plan = plan_optimal(p)
    mine = net_cost(p, plan.sockets, plan.battery_mode)
    assert mine < reference_cost(p)
    assert plan.info["reference_net_cost_eur"] >= mine
    bound, _ = priced_bound(p, 30.0)
    assert bound <= mine + 1e-6  # a bound: no plan beats it
    assert mine - bound <= 0.02 * abs(bound)


def test_quick_tier_with_modes_keeps_the_previous_modes_as_its_start() -> None:
    surplus = [-200.0, -200, -800, -800]
    imp = [0.25, -0.05, 0.40, 0.40]
    p = priced(problem(surplus, [], [batt(1000, 500, 0)]), imp, -0.1)
    full = plan_optimal(p)
    assert full.battery_mode is not None
    again = plan_quick(
        p.model_copy(update={"previous_battery_mode": full.battery_mode}), full.sockets
    )
    assert again.battery_mode == full.battery_mode
    assert net_cost(p, again.sockets, again.battery_mode) <= reference_cost(p) + 1e-9


def test_priced_plans_are_deterministic_and_never_cost_more_than_the_reference() -> None:
    from bench.days import priced_days

    def score(rows: dict[str, list[int]], modes: list[str] | None) -> float:
        return simulate(p, rows, modes).yardstick_score()  # type: ignore[arg-type]

    for p in priced_days()[:3]:
        first, second = plan_optimal(p), plan_optimal(p)
        assert first.sockets == second.sockets
        assert first.battery_mode == second.battery_mode
        # Needs first (the reference leaves 14 Wh unmet on the first day), then money.
        ref = score(plan_reference(p).sockets, ["zero"] * p.n_steps)
        assert score(first.sockets, first.battery_mode) <= ref + 1e-6
        quick = plan_quick(p, plan_reference(p).sockets, Options())
        assert score(quick.sockets, quick.battery_mode) <= ref + 1e-6
