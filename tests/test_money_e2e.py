"""End to end on money: the simulated house and its market, the prices service, the poller,
the scheduler and the actuator in one process on one accelerated clock (the rig of
`tests/test_e2e_day.py`), through a throwaway mosquitto and the devices' real APIs.

The planner is the project's, with battery modes added by a stand-in rule (until the
price-aware planner lands: `to_full` in the night's cheapest hours, `zero` else), so what is
tested here is the path of money and modes, not the planner's choices: prices fetched from
the house's market and published; the plan priced, carrying the modes, the expected and
reference cost; the actuator setting each mode on the simulated P1 meter within the switch
interval (the battery charges from the grid in the dark under `to_full`); today's cost from
the P1 meter's counters, checked against the readings and prices on MQTT; the batteries back
in `zero` when the actuator stops.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from services.prices.service import PriceKeeper, make_source
from services.scheduler.scheduler import Scheduler
from shared.config import PriceSettings
from shared.messages import (
    BatteryCommand,
    BatteryState,
    CostSummary,
    DeviceMeasurement,
    PlanMessage,
    Prices,
)
from shared.planning.problem import BatteryMode, Plan, PlanningProblem
from shared.prices import price_at
from tests.conftest import MqttBroker
from tests.test_e2e_day import SWITCH_INTERVAL_S, Stack, clean_env, hm, local

DAY = (2024, 6, 22)


def with_modes(planner: object) -> object:
    """The scheduler's planner, plus `to_full` in the cheapest quarter of the night's steps."""

    def plan(problem: PlanningProblem) -> Plan:
        base: Plan = planner(problem)  # type: ignore[operator]
        prices = problem.import_prices()
        if prices is None or not problem.battery_modes:
            return base
        cheap = sorted(prices)[len(prices) // 4]
        modes: list[BatteryMode] = []
        for k, price in enumerate(prices):
            hour = (
                (problem.start + timedelta(seconds=k * problem.step_s))
                .astimezone(local(DAY, 0, 0).tzinfo)
                .hour
            )
            modes.append("to_full" if price <= cheap and hour < 5 else "zero")
        return base.model_copy(update={"battery_mode": modes})

    return plan


class MoneyStack(Stack):
    """The e2e stack with the prices service and a planner that gives modes."""

    #: What is tested here is the path of money and modes: the reference planner, plus the
    #: stand-in rule's modes (`with_modes`).
    planner = "reference"
    prices_task: asyncio.Task[int] | None = None
    http: httpx.AsyncClient | None = None

    def start_scheduler(self) -> Scheduler:
        scheduler = super().start_scheduler()
        # the reference planner, plus battery modes
        scheduler._reference_planner = with_modes(scheduler._reference_planner)  # type: ignore[assignment]
        return scheduler

    async def __aenter__(self) -> MoneyStack:
        await super().__aenter__()
        assert self.settings is not None
        settings = self.settings.model_copy(
            update={
                "prices": PriceSettings(source="energyzero", energyzero_url=self.sim.energyzero_url)
            }
        )
        service = self._service("prices")
        self.http = httpx.AsyncClient(timeout=5)
        keeper = PriceKeeper(service, settings, make_source(settings, self.http))
        keeper.subscribe()
        self.tasks["prices"] = asyncio.create_task(
            service.run(lambda: keeper.run(service.wait_connected))
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await super().__aexit__(*exc)
        finally:
            if self.http is not None:
                await self.http.aclose()


__all__ = ["clean_env"]  # the e2e rig's fixture: no HWSCHED_* from the environment


@pytest.mark.usefixtures("clean_env")
async def test_money_and_modes_reach_the_house(mqtt_broker: MqttBroker, tmp_path: Path) -> None:
    start = local(DAY, 1, 30)
    async with MoneyStack(mqtt_broker, tmp_path / "sim", start, {}) as stack:
        house = stack.sim.house
        battery = next(iter(house.batteries.values()))
        before = battery.import_wh
        priced = await stack.wait_for(
            "a priced plan",
            lambda: any(p.import_price_eur_kwh for _, p in stack.mqtt.of(PlanMessage, "plan")),
            3600,
        )
        charging = await stack.wait_for(
            "to_full in the house", lambda: house.control.mode == "to_full", 3 * 3600
        )
        await stack.until(charging + timedelta(minutes=20))
        charged_wh = battery.import_wh - before
        solar = house.solar_w
        await stack.until(local(DAY, 4, 30))
        await stack.stop_service("actuator")  # shutting down: back to zero
        after_stop = (house.control.mode, sorted(house.control.permissions))

    story = f"priced plan at {hm(priced)}, to_full at {hm(charging)}"
    # the prices service published the house's day, all in
    prices = [p for _, p in stack.mqtt.of(Prices, "prices")]
    assert prices, story
    assert prices[-1].source == "energyzero"
    assert not prices[-1].fallback
    assert prices[-1].start <= start
    # the plan: priced, the modes, the expected and the reference cost
    plans = [p for _, p in stack.mqtt.of(PlanMessage, "plan") if p.import_price_eur_kwh]
    assert any(p.battery_mode and "to_full" in p.battery_mode for p in plans), story
    assert all(p.expected_cost_eur is not None for p in plans)
    assert all(p.reference_cost_eur is not None for p in plans)
    # the actuator followed the commands: to_full within the switch interval of the first
    commands = stack.mqtt.of(BatteryCommand, "batteries_set")
    first_full = next(at for at, c in commands if c.mode == "to_full")
    assert (charging - first_full).total_seconds() <= SWITCH_INTERVAL_S + 300, story
    # ... and the battery charged from the grid in the dark, at (nearly) full power
    assert solar == 0
    assert charged_wh > 0.8 * 800 * 20 / 60, (charged_wh, story)
    states = [s for _, s in stack.mqtt.of(BatteryState, "batteries")]
    assert any(s.mode == "to_full" and s.controlled_by == "plan" for s in states)
    # on the actuator's shutdown the batteries went back to zero
    assert after_stop == ("zero", ["charge_allowed", "discharge_allowed"])
    # today's cost: the P1 readings on MQTT priced at the published prices, stretch by stretch
    summaries = [s for _, s in stack.mqtt.of(CostSummary, "cost")]
    last = summaries[-1]
    assert last.import_today_kwh is not None
    assert last.cost_today_eur is not None
    readings = [m for _, m in stack.mqtt.of(DeviceMeasurement, "measurement", "p1_meter")]
    readings = [m for m in readings if m.timestamp <= (last.meter_read_at or start)]
    assert len(readings) >= 10
    imported = cost = 0.0
    for a, b in itertools.pairwise(readings):
        assert a.energy_import_kwh is not None
        assert b.energy_import_kwh is not None
        assert a.energy_export_kwh is not None
        assert b.energy_export_kwh is not None
        mid = a.timestamp + (b.timestamp - a.timestamp) / 2
        at_mid = price_at(prices[-1], mid)
        assert at_mid is not None
        d_imp = b.energy_import_kwh - a.energy_import_kwh
        d_exp = b.energy_export_kwh - a.energy_export_kwh
        imported += d_imp
        cost += d_imp * at_mid[0] - d_exp * at_mid[1]
    assert last.import_today_kwh == pytest.approx(imported, rel=0.02, abs=0.01)
    assert last.cost_today_eur == pytest.approx(cost, rel=0.05, abs=0.01)
    assert last.plan_cost_eur is not None
    assert last.reference_cost_eur is not None
    assert last.savings_eur is not None


def test_the_stand_in_rule_gives_modes_only_with_prices() -> None:
    problem = PlanningProblem.model_validate(
        {
            "start": datetime(2024, 6, 22, 1, 0, tzinfo=local(DAY, 0, 0).tzinfo),
            "step_s": 900,
            "available_power_w": [-300.0] * 8,
            "batteries": [{"name": "b", "max_power_usage": 800, "energy_capacity": 2700}],
            "import_price": [0.3, 0.2, 0.1, 0.1, 0.3, 0.3, 0.3, 0.3],
            "export_price": 0.0,
        }
    )

    def base(p: PlanningProblem) -> Plan:
        return Plan(sockets={}, battery_power_w=[0.0] * p.n_steps, planner="t", solve_s=0)

    plan = with_modes(base)(problem)  # type: ignore[operator]
    # the cheapest quarter of the prices: 0.2 and below, before 05:00
    assert plan.battery_mode == ["zero", "to_full", "to_full", "to_full", *["zero"] * 4]
    unpriced = problem.model_copy(update={"import_price": None, "export_price": None})
    assert with_modes(base)(unpriced).battery_mode is None  # type: ignore[operator]
