"""One stub of `milp.Solver.solve` for planner tests: each test gives only what a call returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from shared.planning import milp

_REAL_SOLVE = milp.Solver.solve


@dataclass(frozen=True)
class SolveCall:
    """One call of `milp.Solver.solve`, with the real solver at hand."""

    solver: milp.Solver
    start: dict[str, list[int]] | None
    budget: milp.Budget
    fewest_switches_within: float | None
    fixed: dict[str, list[int]] | None

    def real(self) -> milp.MilpResult:
        """What the real solver returns for this call."""
        return _REAL_SOLVE(
            self.solver, self.start, self.budget, self.fewest_switches_within, self.fixed
        )


def stub_solve(
    monkeypatch: pytest.MonkeyPatch, answer: Callable[[SolveCall], milp.MilpResult]
) -> None:
    """Replace `milp.Solver.solve` for the test: every call is answered by `answer`."""

    def solve(
        self: milp.Solver,
        start: dict[str, list[int]] | None,
        budget: milp.Budget,
        fewest_switches_within: float | None = None,
        fixed: dict[str, list[int]] | None = None,
    ) -> milp.MilpResult:
        return answer(SolveCall(self, start, budget, fewest_switches_within, fixed))

    monkeypatch.setattr(milp.Solver, "solve", solve)
