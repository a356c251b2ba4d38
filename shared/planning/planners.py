"""The planners by name: one place that maps `--planner NAME` to code."""

from __future__ import annotations

from collections.abc import Callable

from shared.planning.problem import Plan, PlanningProblem

Planner = Callable[[PlanningProblem], Plan]

#: The planner used when none is named.
DEFAULT_PLANNER = "optimal"

PLANNER_NAMES = ("reference", "optimal")


def get_planner(name: str) -> Planner:
    """The planner called `name`; ValueError for an unknown name."""
    if name == "reference":
        from shared.planning.reference import plan_reference

        return plan_reference
    if name == "optimal":
        from shared.planning.optimal import plan_optimal

        return plan_optimal
    raise ValueError(f"unknown planner {name!r} (known: {', '.join(PLANNER_NAMES)})")
