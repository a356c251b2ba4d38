"""The day simulator: the physics every planner is judged by.

It must agree with the shared yardstick (`../shared/planning/evaluate_plan.py`, run as a
separate program) on the figures both compute, and keep its own bookkeeping straight.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.planning.problem import BatterySpec, PlanningProblem, SocketSpec, parse_problem
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
