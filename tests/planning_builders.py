"""Small builders for planning problems in tests (a needed socket, a battery, a day)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shared.planning.problem import BatterySpec, PlanningProblem, SocketSpec

START = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)


def sock(name: str, power: float = 1000, capacity: float = 500, **kw: Any) -> SocketSpec:
    """A needed socket unless `daily_need=False` is given."""
    kw.setdefault("daily_need", True)
    return SocketSpec(name=name, max_power_usage=power, energy_capacity=capacity, **kw)


def batt(power: float = 1000, capacity: float = 1000, stored: float = 0.0) -> BatterySpec:
    return BatterySpec(
        name=f"b{power}-{capacity}-{stored}",
        max_power_usage=power,
        energy_capacity=capacity,
        energy_stored=stored,
    )


def problem(
    surplus: list[float],
    sockets: list[SocketSpec] | None = None,
    batteries: list[BatterySpec] | None = None,
    *,
    step_s: int = 900,
    start: datetime = START,
    overcharge: bool = False,
) -> PlanningProblem:
    return PlanningProblem(
        start=start,
        step_s=step_s,
        available_power_w=surplus,
        sockets=sockets or [],
        batteries=batteries or [],
        overcharge=overcharge,
    )
