"""Forecast risk (`PlanningProblem.forecast_risk_per_h`): with prices, forecast surplus
further ahead counts as less sure than surplus soon.

The planner values a Wh sent to the grid at step k at
`export + min(1, r · h_k) · (import − export)`; what a plan costs stays at the prices
themselves. 15-minute steps.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace

import pytest
from pydantic import ValidationError

from services.scheduler.logic import prepare
from shared import bookkeeping
from shared.clock import ManualClock
from shared.config import Settings
from shared.planning.optimal import plan_optimal, plan_quick
from shared.planning.problem import Plan, PlanningProblem
from shared.planning.reference import plan_reference
from shared.planning.search import Context
from shared.planning.simulate import simulate
from tests.planning_builders import problem, sock

#: Two equal sunny spells of 2 h, 5 h apart, with the house's own draw between them.
_SPELL = [2500.0] * 8
_TWO_SPELLS = [-200.0] * 2 + _SPELL + [-200.0] * 20 + _SPELL + [-200.0] * 4
_MORNING = range(2, 10)
_AFTERNOON = range(30, 38)


def _day(
    risk: float, *, priced: bool = True, surplus: list[float] | None = None
) -> PlanningProblem:
    """A needed 2 kW boiler of 4 kWh (one spell fills it) on a flat tariff."""
    p = problem(surplus or _TWO_SPELLS, [sock("boiler", 2000, 4000)])
    update: dict[str, object] = {"forecast_risk_per_h": risk}
    if priced:
        update |= {"import_price": 0.27, "export_price": 0.05}
    return p.model_copy(update=update)


def _on_steps(plan: Plan) -> set[int]:
    return {t for t, on in enumerate(plan.sockets["boiler"]) if on}


def test_planning_export_prices_rise_linearly_with_the_hours_ahead_up_to_the_import_price() -> None:
    p = _day(0.02)
    got = p.planning_export_prices()
    assert got is not None
    assert len(got) == p.n_steps
    for k, value in enumerate(got):
        hours = (k + 0.5) * 0.25
        assert value == pytest.approx(0.05 + 0.02 * hours * 0.22)
    # the weight stops at 1: never above the import price
    steep = _day(1.0).planning_export_prices()
    assert steep is not None
    assert max(steep) == pytest.approx(0.27)
    assert steep[0] == pytest.approx(0.05 + 0.125 * 0.22)
    # off, or without prices: the export prices as they are
    assert _day(0.0).planning_export_prices() == _day(0.0).export_prices()
    assert _day(0.02, priced=False).planning_export_prices() is None
    # where export earns more than import costs, nothing is added
    odd = _day(0.5).model_copy(update={"import_price": 0.05, "export_price": 0.10})
    assert odd.planning_export_prices() == [0.10] * odd.n_steps


def test_the_search_context_plans_on_the_raised_export_prices() -> None:
    p = _day(0.02)
    assert Context(p).p_exp == p.planning_export_prices()
    assert Context(_day(0.0)).p_exp == [0.05] * p.n_steps


@pytest.mark.parametrize("tier", ["full", "quick"])
def test_with_forecast_risk_the_boiler_takes_the_first_of_two_equal_spells(tier: str) -> None:
    # the quick tier starts from a plan that heats in the afternoon
    afternoon = {"boiler": [1 if t in _AFTERNOON else 0 for t in range(len(_TWO_SPELLS))]}

    def plan(p: PlanningProblem) -> Plan:
        return plan_optimal(p) if tier == "full" else plan_quick(p, afternoon)

    risky = _day(0.02)
    chosen = plan(risky)
    assert _on_steps(chosen) == set(_MORNING)
    # Without the risk both spells cost the same: whichever the plan takes, its money is the
    # risky plan's, so the risk bought the earlier spell for nothing.
    flat = _day(0.0)
    other = plan(flat)
    assert _on_steps(other) in (set(_MORNING), set(_AFTERNOON))
    if tier == "quick":  # nothing to gain without the risk: the search keeps the afternoon
        assert _on_steps(other) == set(_AFTERNOON)
    cost_risky = simulate(flat, chosen.sockets).cost_eur
    cost_flat = simulate(flat, other.sockets).cost_eur
    assert cost_risky is not None
    assert cost_flat is not None
    assert cost_risky == pytest.approx(cost_flat, abs=1e-9)


def test_the_risk_never_buys_import_for_a_surer_hour() -> None:
    """A morning spell too weak for the boiler and a full one later: importing now to avoid
    the later forecast would cost the whole import price, more than any weight below 1."""
    weak = [-200.0] * 2 + [900.0] * 8 + [-200.0] * 20 + _SPELL + [-200.0] * 4
    plan = plan_optimal(_day(0.02, surplus=weak))
    flat = _day(0.0, surplus=weak)
    risky_out = simulate(flat, plan.sockets)
    best_out = simulate(flat, plan_optimal(flat).sockets)
    assert risky_out.grid_import_wh == pytest.approx(best_out.grid_import_wh, abs=1.0)
    assert _on_steps(plan) >= set(_AFTERNOON[:4])


def test_money_is_counted_at_the_prices_themselves() -> None:
    plan = plan_optimal(_day(0.02))
    with_risk = simulate(_day(0.02), plan.sockets)
    without = simulate(_day(0.0), plan.sockets)
    assert with_risk.cost_eur == without.cost_eur


def test_without_prices_the_risk_changes_nothing() -> None:
    a = plan_optimal(_day(0.0, priced=False))
    b = plan_optimal(_day(0.5, priced=False))
    assert a.sockets == b.sockets
    assert a.status == b.status


@pytest.mark.parametrize("bad", [-0.01, 1.5, math.nan, math.inf])
def test_a_risk_outside_0_to_1_is_refused(bad: float) -> None:
    with pytest.raises(ValidationError, match="forecast_risk_per_h"):
        _day(0.0).model_validate(_day(0.0).model_dump() | {"forecast_risk_per_h": bad})
    with pytest.raises(ValidationError, match="forecast_risk_per_h"):
        Settings.model_validate({"forecast_risk_per_h": bad})


def test_the_setting_reaches_the_scheduler_s_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_scheduler import CTX, DAY0, DEVICES, T0, make_forecast, make_surplus
    from tests.test_scheduler_tiers import make

    default = Settings.model_fields["forecast_risk_per_h"].default
    assert 0 < default < 0.1
    for name in list(os.environ):
        if name.upper().startswith("HWSCHED_"):
            monkeypatch.delenv(name)
    scheduler, _, _ = make(Settings(forecast_risk_per_h=0.03), ManualClock(T0), plan_reference)
    assert scheduler.ctx.forecast_risk_per_h == 0.03
    prepared = prepare(
        now=T0,
        ctx=replace(CTX, forecast_risk_per_h=0.03),
        devices=DEVICES,
        books=bookkeeping.empty_books(DAY0),
        batteries={},
        overrides={},
        power_on={},
        surplus=make_surplus(),
        forecast=make_forecast(),
    )
    assert prepared.fallback_reason is None
    assert prepared.problem.forecast_risk_per_h == 0.03
