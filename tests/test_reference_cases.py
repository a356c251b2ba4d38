"""The reference planner reproduces every case the original project's greedy planner gave.

The cases live in /work/shared/planning/reference-cases.json (outside this repository; CI
always has it). Each one pins one rule of the greedy; `PINS` says which, in our words.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.planning.problem import PlanningProblem
from shared.planning.reference import plan_reference

CASES_FILE = Path(__file__).parents[2] / "shared/planning/reference-cases.json"

#: What each case pins down, in our words (a new case must say what it is for).
PINS: dict[str, str] = {
    "needed_socket_fills_whole_horizon": (
        "rule 1: a needed socket takes every step whose surplus covers it, up to its count"
    ),
    "optional_socket_fills_whole_horizon": (
        "optional rule 1: an optional socket takes covered steps up to its count"
    ),
    "battery_soaks_up_surplus_every_step": (
        "rule 6: with no sockets, the battery charges at full power on every surplus step"
    ),
    "needed_socket_off_once_charged": (
        "step count: a socket runs only ceil(missing / step energy) steps, the earliest ones"
    ),
    "battery_idle_after_full": "rule 6: a full battery stops charging and does not discharge",
    "needed_socket_starves_optional": (
        "rule 3 before optional: the needed socket's grid steps leave no covered step for "
        "the optional one"
    ),
    "needed_waits_for_strong_steps_optional_uses_weak": (
        "rule 1 picks only covering steps, so the optional socket gets the weaker ones"
    ),
    "two_needed_sockets_run_one_after_other": (
        "priority order: the first needed socket takes the earliest covered steps, the "
        "second what still covers it"
    ),
    "battery_banks_surplus_then_feeds_big_needed_socket": (
        "rule 2: the battery banks early surplus and the socket runs in the most compact "
        "window the battery can carry"
    ),
    "lower_priority_needed_socket_gets_leftover_steps": (
        "rule 3: a short needed socket takes the steps with the most remaining surplus"
    ),
    "battery_partial_step_at_capacity": (
        "battery capacity: the step that fills it charges only what fits (a fraction)"
    ),
    "socket_steps_rounded_up": "step count: a partial last step is rounded up to a whole step",
    "socket_below_surplus_stops_when_full": (
        "step count: a socket below the surplus still runs only the steps it needs"
    ),
    "optional_socket_only_where_surplus_suffices": (
        "optional sockets never import: only covered steps, even if left partly charged"
    ),
    "greedy_priority_order_not_grid_optimal": (
        "rule 3 tie-break: equal remaining surplus goes to the earliest step"
    ),
    "needed_socket_uses_every_step_when_short": (
        "rule 3: a needed socket needing more than the horizon is on in every step"
    ),
    "coarse_forecast_interpolated_to_quarter_hours": (
        "step count at 15-minute steps over a longer horizon: the first three steps only"
    ),
    "battery_charges_then_covers_deficit": (
        "rule 6 zero mode: charge on surplus, discharge into deficit, energy carried over"
    ),
    "battery_cycles_and_socket_takes_only_big_surplus": (
        "rule 2 under the battery's power limit: the socket only where the shortfall is "
        "within the battery's power and energy"
    ),
    "overcharge_keeps_full_socket_on": (
        "rule 5: with overcharge, a full socket stays on wherever the surplus covers it"
    ),
    "optional_socket_waits_for_battery_threshold": (
        "rule 4: an optional socket waits until the battery holds its minimum ratio"
    ),
    "battery_threshold_then_optional_by_priority": (
        "rule 4: the battery threshold takes the early surplus; optional sockets follow "
        "in priority order"
    ),
}


def _load_cases() -> list[Any]:
    """One pytest param per case, or one that fails when the case file is missing."""
    if not CASES_FILE.is_file():
        return [pytest.param(None, id="reference-cases-file-missing")]
    cases = json.loads(CASES_FILE.read_text(encoding="utf-8"))
    return [pytest.param(case, id=case["case"]) for case in cases]


CASES = _load_cases()


def _require(case: dict[str, Any] | None) -> dict[str, Any]:
    if case is None:
        pytest.fail(
            f"{CASES_FILE} is missing: the reference cases come from the shared planning "
            "directory next to the repository (/work/shared/planning); CI always has it."
        )
    return case


@pytest.mark.parametrize("case", CASES)
def test_case_is_described(case: dict[str, Any] | None) -> None:
    """Every case says, in our words, which rule of the greedy it pins down."""
    name = _require(case)["case"]
    assert name in PINS, f"case {name!r} has no entry in PINS: say what it pins down"


@pytest.mark.parametrize("case", CASES)
def test_reference_reproduces_original(case: dict[str, Any] | None) -> None:
    """The reference plan equals the original's: sockets exactly, battery as a fraction."""
    case = _require(case)
    pins = PINS.get(case["case"], case["why"])
    problem = PlanningProblem.model_validate(case["scenario"])
    plan = plan_reference(problem)
    expected = case["expected"]

    assert plan.sockets == expected["sockets"], pins
    if "battery_fraction" in expected:
        fraction = [p / problem.battery_power_w for p in plan.battery_power_w]
        assert fraction == pytest.approx(expected["battery_fraction"], abs=1e-9), pins
    else:
        assert not problem.batteries
        assert plan.battery_power_w == [0.0] * problem.n_steps, pins
    assert plan.planner == "reference"
    assert plan.status == "heuristic"


def test_case_names_are_unique() -> None:
    """Case names are the test ids: two cases with one name would hide one of them."""
    if not CASES_FILE.is_file():
        pytest.fail(f"{CASES_FILE} is missing (see test_reference_reproduces_original)")
    names = [c["case"] for c in json.loads(CASES_FILE.read_text(encoding="utf-8"))]
    assert names
    assert len(names) == len(set(names))
