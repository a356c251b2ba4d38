"""The scheduler on money: priced problems, what a plan does with modes, the cost meter (pure),
and the Scheduler with and without prices (a recorder and a manual clock)."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

import pytest

from services.scheduler.pricing import (
    Meter,
    meter_sample,
    modes_of,
    priced_problem,
    prices_usable,
)
from services.scheduler.scheduler import Scheduler, SchedulerOptions
from shared.clock import ManualClock
from shared.config import DevicesConfig, PriceSettings, Settings
from shared.messages import (
    BatteryCommand,
    BatteryState,
    CostSummary,
    DeviceMeasurement,
    PlanMessage,
    Prices,
    dump_message,
)
from shared.planning.problem import BatteryMode, Plan, PlanningProblem
from shared.planning.reference import plan_reference
from shared.planning.simulate import simulate
from shared.service import Counters
from shared.topics import Topics
from tests.test_scheduler import (
    AMS,
    DAY0,
    DEVICES,
    T0,
    TOKEN,
    Recorder,
    make_forecast,
    make_surplus,
)

P1_TOKEN = "fedcba9876543210" * 2


def devices_with_p1_token() -> DevicesConfig:
    data = DEVICES.model_dump(mode="json", by_alias=True)
    data["devices"][0]["user_info"] = {"name": "local/hwsched", "token": P1_TOKEN}
    data["devices"][3]["user_info"] = {"name": "local/hwsched", "token": TOKEN}
    return DevicesConfig.model_validate(data)


def day_prices(start: datetime = DAY0, n: int = 96, *, made_at: datetime | None = None) -> Prices:
    """Cheap night, negative noon, dear evening: per 15 min from `start`."""
    imports, exports = [], []
    for k in range(n):
        hour = (start + timedelta(minutes=15 * k)).astimezone(AMS).hour
        da = 0.09
        if 11 <= hour < 15:
            da = -0.05
        elif 17 <= hour < 21:
            da = 0.25
        elif hour < 6:
            da = 0.06
        imports.append(round((da + 0.02 + 0.0916) * 1.21, 6))
        exports.append(round(da - 0.02, 6))
    at = made_at or start
    return Prices(
        timestamp=at,
        start=start,
        step_s=900,
        import_eur_kwh=imports,
        export_eur_kwh=exports,
        source="entsoe",
        made_at=at,
        area="NL",
    )


def problem(n: int = 4, step_s: int = 900, **extra: Any) -> PlanningProblem:
    return PlanningProblem.model_validate(
        {
            "start": T0,
            "step_s": step_s,
            "available_power_w": [1000.0, 1000.0, -500.0, -500.0][:n],
            "batteries": [
                {
                    "name": "B",
                    "max_power_usage": 800,
                    "energy_capacity": 2000,
                    "energy_stored": 1000,
                }
            ],
            **extra,
        }
    )


# --- pure ---------------------------------------------------------------------------------------


def test_priced_problem_and_the_battery_inputs() -> None:
    base = problem()
    prices = day_prices(T0 - timedelta(minutes=15), 8)
    priced, steps = priced_problem(
        base,
        prices,
        optional_grid_price_max=0.0,
        battery_modes=True,
        initial_battery_mode="standby",
    )
    assert steps is not None
    assert priced.priced
    assert priced.import_prices() == prices.import_eur_kwh[1:5]
    assert priced.optional_grid_price_max == 0.0
    assert (priced.battery_modes, priced.initial_battery_mode) == (True, "standby")
    unpriced, none = priced_problem(
        base, None, optional_grid_price_max=0.0, battery_modes=False, initial_battery_mode="zero"
    )
    assert none is None
    assert not unpriced.priced
    assert (unpriced.battery_modes, unpriced.initial_battery_mode) == (False, None)
    assert unpriced.optional_grid_price_max is None
    assert prices_usable(None, T0) == "no prices"
    assert prices_usable(prices, T0) is None
    assert "ended" in str(prices_usable(prices, T0 + timedelta(hours=3)))
    assert prices_usable(day_prices(T0 + timedelta(hours=3), 4), T0) == "prices start later"


@pytest.mark.parametrize(
    ("mode", "power"),
    [
        # (surplus 1000 W in steps 0-1, deficit 500 W in steps 2-3)
        ("zero", [800, 800, -500, -500]),
        ("charge_only", [800, 800, 0, 0]),
        ("discharge_only", [0, 0, -500, -500]),
        ("standby", [0, 0, 0, 0]),
        ("to_full", [800, 800, 800, 800]),
    ],
)
def test_the_plans_figures_follow_each_mode(mode: BatteryMode, power: list[float]) -> None:
    """What the plan message reports comes from the shared simulator under the modes."""
    p = problem(import_price=[0.1, 0.1, 0.4, 0.4], export_price=[0.0, 0.0, 0.1, 0.1])
    e = simulate(p, {}, [mode] * 4)
    got = [round(b) for b in e.battery_power_w]
    # capacity 2000 Wh, 1000 stored: charging 800 W for 15 min is 200 Wh a step
    assert got == power
    grid = [b - a for a, b in zip(p.available_power_w, e.battery_power_w, strict=True)]
    assert e.grid_import_wh == pytest.approx(sum(max(0, g) for g in grid) * 0.25)
    assert e.export_wh == pytest.approx(sum(max(0, -g) for g in grid) * 0.25)
    prices_i, prices_e = [0.1, 0.1, 0.4, 0.4], [0.0, 0.0, 0.1, 0.1]
    cost = sum(
        (max(0, g) * pi - max(0, -g) * pe) * 0.25 / 1000
        for g, pi, pe in zip(grid, prices_i, prices_e, strict=True)
    )
    assert e.cost_eur == pytest.approx(cost)
    assert e.switches == 0


def test_the_plans_modes_where_there_are_none_or_they_are_not_allowed() -> None:
    plan = Plan(sockets={}, battery_power_w=[], planner="x", solve_s=0, battery_mode=["to_full"])
    assert modes_of(plan, 3) == ["to_full", "zero", "zero"]
    assert modes_of(plan, 3, allowed=False) == ["zero"] * 3


def test_the_meter_counts_and_prices_stretch_by_stretch() -> None:
    prices = day_prices(DAY0)
    meter = Meter(day_start=DAY0)
    at = DAY0 + timedelta(hours=12, minutes=10)  # 12:10 local, noon price
    meter = meter_sample(meter, at, 1000.0, 500.0, prices, DAY0).meter
    assert (meter.import_kwh, meter.cost_eur) == (0.0, None)  # the first reading: a baseline
    # 20 min later, across a price step: 1 kWh imported, 0.5 exported, split in time
    later = at + timedelta(minutes=20)
    meter = meter_sample(meter, later, 1001.0, 500.5, prices, DAY0).meter
    assert (meter.import_kwh, meter.export_kwh) == (pytest.approx(1.0), pytest.approx(0.5))
    k = (at - DAY0) // timedelta(minutes=15)
    want = sum(
        share * (prices.import_eur_kwh[k + i] - 0.5 * prices.export_eur_kwh[k + i])
        for i, share in ((0, 5 / 20), (1, 15 / 20))
    )
    assert meter.cost_eur == pytest.approx(want)
    # an older reading (or one of a day gone) changes nothing; a counter going back starts over
    assert meter_sample(meter, at, 0.0, 0.0, prices, DAY0).meter == meter
    yesterday = DAY0 - timedelta(days=1)
    assert (
        meter_sample(meter, later + timedelta(hours=1), 0.0, 0.0, prices, yesterday).meter == meter
    )
    back = meter_sample(meter, later + timedelta(minutes=1), 10.0, 500.5, prices, DAY0)
    assert back.reset == "counter went back"
    assert back.meter.import_kwh == pytest.approx(1.0)
    jump = meter_sample(meter, later + timedelta(seconds=30), 1100.0, 500.5, prices, DAY0)
    assert jump.reset == "implausible jump"
    # without prices: counted, waiting for a price; priced when prices come
    five = later + timedelta(minutes=5)
    free = meter_sample(meter, five, 1002.0, 500.5, None, DAY0).meter
    assert free.import_kwh == pytest.approx(2.0)
    assert free.unpriced_kwh == pytest.approx(1.0)
    assert free.cost_eur == meter.cost_eur
    priced = meter_sample(free, five + timedelta(seconds=30), 1002.0, 500.5, prices, DAY0).meter
    assert priced.unpriced_kwh == 0
    k = (later - DAY0) // timedelta(minutes=15)  # 12:30..12:35: one quarter-hour
    assert priced.cost_eur == pytest.approx(meter.cost_eur + prices.import_eur_kwh[k])  # type: ignore[operator]


def test_the_meter_starts_a_new_day_at_the_boundary() -> None:
    prices = day_prices(DAY0 - timedelta(days=1), 192)
    meter = Meter(day_start=DAY0 - timedelta(days=1))
    before = DAY0 - timedelta(minutes=10)
    meter = meter_sample(
        meter, before - timedelta(minutes=10), 99.0, 0.0, prices, meter.day_start
    ).meter
    meter = meter_sample(meter, before, 100.0, 0.0, prices, meter.day_start).meter
    assert meter.import_kwh == pytest.approx(1.0)
    # 10 min before and 30 min after the boundary: 4 kWh, a quarter of it yesterday's
    meter = meter_sample(meter, DAY0 + timedelta(minutes=30), 104.0, 0.0, prices, DAY0).meter
    assert meter.day_start == DAY0
    assert meter.import_kwh == pytest.approx(3.0)


# --- the Scheduler ------------------------------------------------------------------------------


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.upper().startswith("HWSCHED_"):
            monkeypatch.delenv(name)
    return Settings(
        base_topic="t",
        poll_interval_s=30.0,
        planner_time_limit_s=0.2,
        prices=PriceSettings(optional_grid_price_max_eur_kwh=0.0),
    )


def make(
    settings: Settings, devices: DevicesConfig, planner: Any = plan_reference
) -> tuple[Scheduler, Recorder, Counters, ManualClock]:
    clock = ManualClock(T0)
    rec = Recorder()
    counters = Counters()
    s = Scheduler(
        devices,
        settings,
        rec,
        topics=Topics("t"),
        counters=counters,
        clock=clock,
        options=SchedulerOptions(restore_wait_s=1.0),
        planner=planner,
    )
    s._finish_restore(None)
    return s, rec, counters, clock


def p1_reading(at: datetime, imp: float, exp: float) -> bytes:
    return dump_message(
        DeviceMeasurement(
            timestamp=at,
            device="P1 meter",
            device_type="HWE-P1",
            power_w=-1500.0,
            energy_import_kwh=imp,
            energy_export_kwh=exp,
            api="v1",
        )
    )


async def plan(s: Scheduler, rec: Recorder, clock: ManualClock) -> PlanMessage:
    await s.on_forecast("t/forecast", dump_message(make_forecast(T0 - timedelta(minutes=1))))
    await s.on_surplus("t/surplus", dump_message(make_surplus(clock.now())))
    assert await s.plan_once() is not None
    message = rec.on("t/plan")[-1]
    assert isinstance(message, PlanMessage)
    return message


async def test_without_prices_the_plan_is_as_before(settings: Settings) -> None:
    s, rec, _, clock = make(settings, DEVICES)
    message = await plan(s, rec, clock)
    assert message.import_price_eur_kwh is None
    assert message.expected_cost_eur is None
    assert message.battery_mode is None
    assert message.expected_import_wh is not None
    assert message.reference_import_wh == message.expected_import_wh  # the reference planned
    assert rec.on("t/batteries/set") == []  # no P1 token: the batteries are left alone
    cost = rec.on("t/cost")[-1]
    assert isinstance(cost, CostSummary)
    assert (cost.import_now_eur_kwh, cost.plan_cost_eur, cost.day_start) == (None, None, DAY0)


async def test_with_prices_the_plan_carries_money_and_the_battery_command(
    settings: Settings,
) -> None:
    s, rec, counters, clock = make(settings, devices_with_p1_token())
    await s.money.on_prices("t/prices", dump_message(day_prices()))
    state = BatteryState(timestamp=T0, mode="standby", controlled_by="plan")
    await s.money.on_battery_state("t/batteries", dump_message(state))
    await s.on_measurement(
        "t/p1_meter/measurement", p1_reading(T0 - timedelta(minutes=5), 10.0, 2.0)
    )
    await s.on_measurement("t/p1_meter/measurement", p1_reading(T0, 10.5, 3.0))
    captured: list[PlanningProblem] = []

    def planner(p: PlanningProblem) -> Plan:
        captured.append(p)
        plan = plan_reference(p)
        modes: list[BatteryMode] = ["charge_only"] * p.n_steps
        return plan.model_copy(update={"battery_mode": modes})

    s._quick_planner = lambda p, _start: planner(p)
    message = await plan(s, rec, clock)
    problem = captured[-1]
    assert problem.priced
    assert (problem.battery_modes, problem.initial_battery_mode) == (True, "standby")
    assert problem.optional_grid_price_max == 0.0
    n = message.n_steps
    assert message.import_price_eur_kwh is not None
    assert len(message.import_price_eur_kwh) == n
    assert message.battery_mode == ["charge_only"] * n
    assert message.expected_cost_eur is not None
    assert message.reference_cost_eur is not None
    # the trajectory follows the modes: never discharging
    assert min(message.battery_power_w) >= 0
    command = rec.on("t/batteries/set")[-1]
    assert isinstance(command, BatteryCommand)
    assert (command.mode, command.valid_until) == ("charge_only", T0 + timedelta(seconds=90))
    cost = rec.on("t/cost")[-1]
    assert cost.import_now_eur_kwh == day_prices().import_eur_kwh[24]  # 12:00 local
    assert cost.import_today_kwh == pytest.approx(0.5)
    assert cost.export_today_kwh == pytest.approx(1.0)
    assert cost.cost_today_eur is not None
    assert cost.plan_cost_eur == message.expected_cost_eur
    assert cost.savings_eur is not None
    assert counters["battery_commands_sent"] == 1


async def test_a_person_holding_the_batteries_plans_zero_and_commands_zero(
    settings: Settings,
) -> None:
    s, rec, _, clock = make(settings, devices_with_p1_token())
    await s.money.on_prices("t/prices", dump_message(day_prices()))
    held = BatteryState(timestamp=T0, mode="to_full", device_mode="to_full", controlled_by="app")
    await s.money.on_battery_state("t/batteries", dump_message(held))
    seen: list[PlanningProblem] = []

    def planner(p: PlanningProblem) -> Plan:
        seen.append(p)
        return plan_reference(p).model_copy(update={"battery_mode": ["standby"] * p.n_steps})

    s._quick_planner = lambda p, _start: planner(p)
    message = await plan(s, rec, clock)
    assert seen[-1].battery_modes is False
    assert message.battery_mode is None  # modes not allowed: zero throughout
    assert rec.on("t/batteries/set")[-1].mode == "zero"


async def test_the_cost_summary_survives_a_restart(settings: Settings) -> None:
    s, _, _, _ = make(settings, DEVICES)
    await s.money.on_prices("t/prices", dump_message(day_prices()))
    hour = T0 - timedelta(hours=1)
    await s.on_measurement("t/p1_meter/measurement", p1_reading(hour, 5.0, 1.0))
    await s.on_measurement("t/p1_meter/measurement", p1_reading(T0, 6.0, 1.0))
    before = s.money.publish_cost(T0)
    assert before.import_today_kwh == pytest.approx(1.0)
    # a new scheduler: a reading first, then its retained summary: counted on, no gap
    s2, _, counters, clock2 = make(settings, DEVICES)
    clock2.set(T0 + timedelta(minutes=10))
    await s2.money.on_prices("t/prices", dump_message(day_prices()))
    await s2.on_measurement("t/p1_meter/measurement", p1_reading(clock2.now(), 6.5, 1.0))
    await s2.money.on_cost("t/cost", dump_message(before))
    assert counters["cost_restored"] == 1
    after = s2.money.summary(T0 + timedelta(minutes=10))
    assert after.import_today_kwh == pytest.approx(1.5)
    assert after.cost_today_eur == pytest.approx(
        before.cost_today_eur + 0.5 * day_prices().import_eur_kwh[24],
        rel=1e-3,  # type: ignore[operator]
    )
    # yesterday's summary is not today's
    s3, _, counters3, _ = make(settings, DEVICES)
    old = before.model_copy(update={"day_start": DAY0 - timedelta(days=1)})
    await s3.money.on_cost("t/cost", dump_message(old))
    assert counters3["cost_restored"] == 0
    # garbage and the future are counted drops
    handler = s3.money.guard("cost", s3.money.on_cost)
    await handler("t/cost", b"{")
    future = before.model_copy(update={"timestamp": T0 + timedelta(days=1)})
    await handler("t/cost", dump_message(future))
    assert counters3["messages_dropped_cost"] == 2


async def test_prices_newer_win_and_a_fallback_gives_way(settings: Settings) -> None:
    s, _, counters, _ = make(settings, DEVICES)
    real = day_prices(made_at=T0 - timedelta(hours=2))
    await s.money.on_prices("t/prices", dump_message(real))
    older = day_prices(made_at=T0 - timedelta(hours=3))
    await s.money.on_prices("t/prices", dump_message(older))
    assert s.money.prices == real
    assert counters["prices_older_ignored"] == 1
    handler = s.money.guard("prices", s.money.on_prices)
    await handler("t/prices", dump_message(day_prices(made_at=T0 + timedelta(hours=1))))
    assert counters["messages_dropped_prices"] == 1
    assert s.money.prices == real


async def test_edge_of_the_calendar_is_a_counted_drop(settings: Settings) -> None:
    s, _, counters, _ = make(settings, DEVICES)
    year_one = datetime(1, 1, 1, tzinfo=T0.tzinfo)
    await s.on_measurement("t/p1_meter/measurement", p1_reading(year_one, 1.0, 1.0))
    assert counters["messages_dropped_measurement"] == 1
    assert s.money.meter.read_at is None
    end = datetime(9999, 12, 31, 23, 30, tzinfo=T0.tzinfo)
    late = day_prices(made_at=T0).model_copy(update={"start": end})
    await s.money.guard("prices", s.money.on_prices)("t/prices", dump_message(late))
    assert counters["messages_dropped_prices"] == 1
    assert s.money.prices is None


def test_energy_without_prices_waits_per_quarter_hour_for_them() -> None:
    prices = day_prices(DAY0)
    a = DAY0 + timedelta(hours=6, minutes=10)
    meter = meter_sample(Meter(day_start=DAY0), a, 10.0, 0.0, None, DAY0).meter
    meter = meter_sample(meter, a + timedelta(minutes=30), 13.0, 0.0, None, DAY0).meter
    assert [round(i, 6) for _, i, _ in meter.pending] == [0.5, 1.5, 1.0]  # 5, 15, 10 min
    meter = meter_sample(meter, a + timedelta(minutes=31), 13.0, 0.0, prices, DAY0).meter
    k = 24  # 12:00 local: the 24th quarter-hour from 06:00
    want = 0.5 * prices.import_eur_kwh[k] + 1.5 * prices.import_eur_kwh[k + 1]
    want += 1.0 * prices.import_eur_kwh[k + 2]
    assert meter.cost_eur == pytest.approx(want)
    assert meter.pending == ()
