"""The day simulator: the physics every planner is judged by.

It must agree with the shared yardstick (`../shared/planning/evaluate_plan.py`, run as a
separate program) on the figures both compute, and keep its own bookkeeping straight.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from shared.planning.problem import (
    BATTERY_MODES,
    BatterySpec,
    PlanningProblem,
    SocketSpec,
    parse_problem,
)
from shared.planning.reference import plan_reference
from shared.planning.simulate import count_switches, simulate, zero_mode_step

SHARED = Path(__file__).resolve().parents[2] / "shared" / "planning"
EXAMPLES = sorted(SHARED.glob("example-*.json"))


def _problem(
    avail: list[float], sockets: list[SocketSpec], batteries: list[BatterySpec]
) -> PlanningProblem:
    return PlanningProblem(
        start="2026-06-21T06:00:00+02:00",  # type: ignore[arg-type]
        step_s=900,
        available_power_w=avail,
        sockets=sockets,
        batteries=batteries,
    )


def test_examples_are_there() -> None:
    assert EXAMPLES, f"no example-*.json in {SHARED}: the shared planning folder is missing"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_agrees_with_the_shared_yardstick(example: Path, tmp_path: Path) -> None:
    """Same day, same plan: the yardstick and our simulator give the same figures."""
    problem = parse_problem(example.read_bytes())
    plan = plan_reference(problem)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"sockets": plan.sockets}))
    out = subprocess.run(
        [sys.executable, str(SHARED / "evaluate_plan.py"), str(example), str(plan_file)],
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = json.loads(out.stdout)
    ours = simulate(problem, plan.sockets)
    assert ours.unmet_need_wh == pytest.approx(theirs["unmet_need_wh"], abs=0.1)
    assert ours.grid_import_wh == pytest.approx(theirs["grid_import_wh"], abs=0.1)
    assert ours.export_wh == pytest.approx(theirs["export_wh"], abs=0.1)
    assert ours.optional_wh == pytest.approx(theirs["optional_wh"], abs=0.1)
    assert ours.switches == theirs["switches"]


def test_socket_draws_full_power_until_full_then_nothing() -> None:
    """1000 W into a 600 Wh store over 15-min steps: 250, 250, 100 Wh, then 0."""
    s = SocketSpec(name="b", max_power_usage=1000, energy_capacity=600, daily_need=True)
    p = _problem([2000.0] * 4, [s], [])
    out = simulate(p, {"b": [1, 1, 1, 1]})
    assert out.socket_power_w["b"] == pytest.approx([1000, 1000, 400, 0])
    assert out.socket_energy_wh["b"] == pytest.approx([250, 500, 600, 600])
    assert out.unmet_need_wh == 0
    assert out.needed_wh == pytest.approx(600)


def test_battery_in_zero_mode_charges_on_surplus_and_covers_deficit() -> None:
    b = BatterySpec(name="bat", max_power_usage=800, energy_capacity=400, energy_stored=0)
    p = _problem([1000.0, 1000.0, -500.0, -1000.0], [], [b])
    out = simulate(p, {})
    # 800 W (power limit), then 800 W until 400 Wh (capacity: 200 Wh room = 800 W),
    # then -500 W covering the deficit, then -800 W (limit) with 200 W from the grid.
    assert out.battery_power_w == pytest.approx([800, 800, -500, -800])
    assert out.battery_energy_wh == pytest.approx([200, 400, 275, 75])
    assert out.grid_power_w == pytest.approx([-200, -200, 0, 200])
    assert out.grid_import_wh == pytest.approx(50)
    assert out.export_wh == pytest.approx(100)


def test_zero_mode_step_limits() -> None:
    assert zero_mode_step(500, 0, 1000, 800, 0.25) == 500
    assert zero_mode_step(5000, 0, 1000, 800, 0.25) == 800
    assert zero_mode_step(5000, 900, 1000, 800, 0.25) == pytest.approx(400)
    assert zero_mode_step(-5000, 100, 1000, 800, 0.25) == pytest.approx(-400)
    assert zero_mode_step(-100, 0, 1000, 800, 0.25) == 0
    assert zero_mode_step(100, 0, 0, 0, 0.25) == 0


def test_optional_socket_fed_by_battery_counts_as_a_violation() -> None:
    """An optional socket on where the surplus does not cover it draws from the battery."""
    s = SocketSpec(name="ebike", max_power_usage=300, energy_capacity=500)
    b = BatterySpec(name="bat", max_power_usage=800, energy_capacity=1000, energy_stored=500)
    p = _problem([100.0, 400.0], [s], [b])
    out = simulate(p, {"ebike": [1, 1]})
    assert out.optional_violations == 1
    assert out.battery_power_w[0] == pytest.approx(-200)


def test_switches_and_energy_balance() -> None:
    assert count_switches([0, 1, 1, 0, 1]) == 3
    assert count_switches([1, 1], initial_on=False) == 1
    assert count_switches([1, 1], initial_on=True) == 0
    s = SocketSpec(name="b", max_power_usage=2000, energy_capacity=3000, daily_need=True)
    b = BatterySpec(name="bat", max_power_usage=800, energy_capacity=2700, energy_stored=1000)
    avail = [-300.0, 500.0, 1500.0, 2500.0, 1200.0, -400.0]
    p = _problem(avail, [s], [b])
    out = simulate(p, {"b": [0, 1, 1, 1, 0, 1]})
    dt = p.dt_h
    # Energy balance per step: surplus + import = load + battery charge + export.
    for t, a in enumerate(avail):
        load = out.socket_power_w["b"][t]
        assert a + out.grid_power_w[t] == pytest.approx(load + out.battery_power_w[t])
    total_load = sum(out.socket_power_w["b"]) * dt
    delta_batt = out.battery_energy_wh[-1] - 1000
    assert sum(avail) * dt + out.grid_import_wh - out.export_wh == pytest.approx(
        total_load + delta_batt
    )


# --- modes and prices: the yardstick again, on random plans -----------------------------------


def _random_priced_day(rng: random.Random, n: int) -> PlanningProblem:
    socks = [
        SocketSpec(
            name=f"s{i}",
            max_power_usage=rng.choice([300.0, 1000.0, 2000.0]),
            energy_capacity=rng.uniform(100, 3000),
            energy_stored=rng.uniform(0, 200),
            daily_need=rng.random() < 0.5,
            value_eur_kwh=rng.choice([None, 0.15]),
        )
        for i in range(rng.randint(1, 4))
    ]
    batteries = [
        BatterySpec(
            name=f"b{i}",
            max_power_usage=800,
            energy_capacity=2700,
            energy_stored=rng.uniform(0, 2700),
        )
        for i in range(rng.randint(0, 2))
    ]
    return PlanningProblem(
        start="2026-06-21T06:00:00+02:00",  # type: ignore[arg-type]
        step_s=rng.choice([300, 900]),
        available_power_w=[rng.uniform(-1500, 3500) for _ in range(n)],
        sockets=socks,
        batteries=batteries,
        import_price=[round(rng.uniform(-0.1, 0.45), 4) for _ in range(n)],
        export_price=[round(rng.uniform(-0.15, 0.25), 4) for _ in range(n)],
        optional_grid_price_max=rng.choice([None, 0.0, 0.1]),
    )


@pytest.mark.parametrize("seed", range(12))
def test_modes_and_prices_agree_with_the_shared_yardstick(seed: int, tmp_path: Path) -> None:
    """Random days with prices, random socket rows and random battery modes: every figure
    both compute, the cost figures included, agrees with evaluate_plan.py."""
    rng = random.Random(seed)
    problem = _random_priced_day(rng, rng.randint(8, 40))
    rows = {s.name: [rng.randint(0, 1) for _ in range(problem.n_steps)] for s in problem.sockets}
    modes = [rng.choice(BATTERY_MODES) for _ in range(problem.n_steps)]
    problem_file = tmp_path / "problem.json"
    problem_file.write_text(problem.model_dump_json(exclude_none=True))
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"sockets": rows, "battery_mode": modes}))
    out = subprocess.run(
        [sys.executable, str(SHARED / "evaluate_plan.py"), str(problem_file), str(plan_file)],
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = json.loads(out.stdout)
    ours = simulate(problem, rows, modes)
    assert ours.unmet_need_wh == pytest.approx(theirs["unmet_need_wh"], abs=0.1)
    assert ours.grid_import_wh == pytest.approx(theirs["grid_import_wh"], abs=0.1)
    assert ours.export_wh == pytest.approx(theirs["export_wh"], abs=0.1)
    assert ours.optional_wh == pytest.approx(theirs["optional_wh"], abs=0.1)
    assert ours.optional_not_from_surplus_wh == pytest.approx(
        theirs["optional_not_from_surplus_wh"], abs=0.1
    )
    assert ours.switches == theirs["switches"]
    assert ours.cost_eur == pytest.approx(theirs["cost_eur"], abs=1e-4)
    assert ours.optional_value_eur == pytest.approx(theirs["optional_value_eur"], abs=1e-4)
    assert ours.net_cost_eur == pytest.approx(theirs["net_cost_eur"], abs=1e-4)
    # The yardstick scores its rounded figures (unmet to 0.1 Wh: up to 5 points).
    assert ours.yardstick_score() == pytest.approx(theirs["score"], abs=5.1)


@pytest.mark.parametrize("mode", BATTERY_MODES)
def test_each_battery_mode(mode: str) -> None:
    """Surplus 1000 W then a 1000 W deficit; battery 800 W, 1000 Wh holding 500 Wh."""
    b = BatterySpec(name="bat", max_power_usage=800, energy_capacity=1000, energy_stored=500)
    p = _problem([1000.0, -1000.0], [], [b])
    out = simulate(p, {}, [mode, mode])  # type: ignore[list-item]
    expected = {
        "zero": [800, -800],
        "charge_only": [800, 0],
        "discharge_only": [0, -800],
        "standby": [0, 0],
        "to_full": [800, 800],  # 200 Wh, then the last 200 Wh from the grid
    }[mode]
    assert out.battery_power_w == pytest.approx(expected)
