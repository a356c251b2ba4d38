"""The scheduler: its pure logic directly, and the Scheduler with a recorder and a ManualClock."""

from __future__ import annotations

import asyncio
import json
import math
import os
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.scheduler.logic import (
    FALLBACK_PLANNER,
    REASON_FALLBACK,
    REASON_PLAN,
    Baseline,
    BatteryEnergy,
    PlanContext,
    ShiftOptions,
    books_message,
    commands,
    excluded_sockets,
    fallback_plan,
    forecast_at,
    forecast_problem,
    horizon,
    measured_available_w,
    override_active,
    plan_message,
    prepare,
    resample,
    restore_books,
    shift_profile,
    socket_spec,
    stored_for_plan,
    update_baseline,
)
from services.scheduler.scheduler import Scheduler, SchedulerOptions
from shared import bookkeeping
from shared.clock import ManualClock
from shared.config import DevicesConfig, Settings
from shared.daytime import day_start
from shared.messages import (
    DeviceMeasurement,
    EnergyBooks,
    Forecast,
    HouseSurplus,
    Message,
    OverrideState,
    PlanMessage,
    SocketCommand,
    dump_message,
    parse_message,
)
from shared.planning.fallback import is_due
from shared.planning.problem import PlanningProblem
from shared.planning.reference import plan_reference
from shared.service import Counters
from shared.topics import Topics

AMS = ZoneInfo("Europe/Amsterdam")
SIX = time(6, 0)
T0 = datetime(2024, 6, 21, 12, 0, tzinfo=AMS).astimezone(UTC)  # 10:00 UTC
DAY0 = datetime(2024, 6, 21, 6, 0, tzinfo=AMS).astimezone(UTC)
TOKEN = "0123456789abcdef" * 2
DEVICES = DevicesConfig.model_validate(
    {
        "devices": [
            {"device_name": "P1 meter", "device_type": "HWE-P1", "ip_address": "10.0.0.1"},
            {
                "device_name": "Boiler",
                "device_type": "HWE-SKT",
                "ip_address": "10.0.0.2",
                "max_power_usage": 2000,
                "energy_capacity": 2000,
                "priority": 1,
                "daily_need": True,
            },
            {
                "device_name": "E-bike",
                "device_type": "HWE-SKT",
                "ip_address": "10.0.0.3",
                "max_power_usage": 300,
                "energy_capacity": 500,
                "priority": 2,
            },
            {
                "device_name": "Battery",
                "device_type": "HWE-BAT",
                "ip_address": "10.0.0.4",
                "max_power_usage": 800,
                "energy_capacity": 2700,
                "user_info": {"name": "local/hwsched", "token": TOKEN},
            },
        ]
    }
)
CTX = PlanContext(tz=AMS, boundary=SIX, step_s=900, switch_interval_s=300)


def bell(n: int = 96, peak: float = 3000.0) -> list[float]:
    """A sunny day's PV per 15-min step from 06:00 local (peak at 13:30)."""
    return [round(max(0.0, peak * math.sin(math.pi * (k - 2) / 60)), 1) for k in range(n)]


def make_forecast(made_at: datetime = DAY0, power: list[float] | None = None) -> Forecast:
    return Forecast(
        timestamp=made_at,
        start=DAY0,
        step_s=900,
        power_w=power if power is not None else bell(),
        made_at=made_at,
        source="test",
    )


def make_surplus(
    at: datetime = T0, surplus_w: float = 1500.0, sockets_w: dict[str, float] | None = None
) -> HouseSurplus:
    sockets = sockets_w if sockets_w is not None else {}
    batteries = {"Battery": 0.0}
    p1 = -(surplus_w - sum(sockets.values()) - sum(batteries.values()))
    return HouseSurplus(
        timestamp=at,
        surplus_w=surplus_w,
        p1_power_w=p1,
        sockets_w=sockets,
        batteries_w=batteries,
        based_on=["P1 meter", *sockets, *batteries],
    )


def override(socket: str, state: str, until: datetime | None, at: datetime = T0) -> OverrideState:
    return OverrideState.model_validate(
        {
            "timestamp": at,
            "socket": socket,
            "state": state,
            "until": until,
            "source": "manual-switch",
            "set_at": at,
        }
    )


BOUNDARY = datetime(2024, 6, 22, 6, 0, tzinfo=AMS).astimezone(UTC)


def night_problem(
    now: datetime, books: bookkeeping.Books | None = None, power_on: dict[str, bool] | None = None
) -> PlanningProblem:
    """The fallback rule's problem at `now`: no forecast, 500 W imported (no surplus)."""
    return prepare(
        now=now,
        ctx=CTX,
        devices=DEVICES,
        books=books if books is not None else bookkeeping.empty_books(DAY0),
        batteries={},
        overrides={},
        power_on=power_on or {},
        surplus=make_surplus(surplus_w=-500.0, at=now),
        forecast=None,
    ).problem


def roundtrip(message: Message) -> Message:
    return parse_message(type(message), dump_message(message))


# --- forecast: resampling, value at an instant, usability --------------------------------------


def test_resample_is_the_overlap_weighted_mean() -> None:
    hourly = Forecast(
        timestamp=DAY0,
        start=DAY0,
        step_s=3600,
        power_w=[0.0, 1000.0, 2000.0],
        made_at=DAY0,
        source="t",
    )
    # aligned: four quarters of each hour
    assert resample(hourly, DAY0, 900, 12) == [0.0] * 4 + [1000.0] * 4 + [2000.0] * 4
    # straddling an hour: half of 0 W and half of 1000 W
    got = resample(hourly, DAY0 + timedelta(seconds=3150), 900, 3)
    assert got == pytest.approx([500.0, 1000.0, 1000.0])
    # longer steps than the forecast's, and beyond its end (3 h) counts 0 W
    assert resample(hourly, DAY0, 7200, 2) == pytest.approx([500.0, 1000.0])
    # before its start counts 0 W as well
    assert resample(hourly, DAY0 - timedelta(hours=1), 3600, 2) == [0.0, 0.0]


def test_forecast_at_interpolates_between_step_middles() -> None:
    f = Forecast(
        timestamp=DAY0, start=DAY0, step_s=900, power_w=[100.0, 300.0], made_at=DAY0, source="t"
    )
    assert forecast_at(f, DAY0) == 100.0  # before the first middle: flat
    assert forecast_at(f, DAY0 + timedelta(seconds=450)) == 100.0
    assert forecast_at(f, DAY0 + timedelta(seconds=900)) == pytest.approx(200.0)
    assert forecast_at(f, DAY0 + timedelta(seconds=1799)) == 300.0
    assert forecast_at(f, DAY0 + timedelta(seconds=1800)) == 0.0  # past the end
    assert forecast_at(f, DAY0 - timedelta(seconds=1)) == 0.0


def test_forecast_problem_no_stale_or_not_covering() -> None:
    assert forecast_problem(None, T0, 3600) == "no forecast"
    assert forecast_problem(make_forecast(T0 - timedelta(minutes=5)), T0, 3600) is None
    stale = forecast_problem(make_forecast(DAY0), T0, 3600)
    assert stale is not None
    assert stale.startswith("stale forecast (made 6.0 h ago)")
    short = make_forecast(T0 - timedelta(hours=1), power=[500.0] * 8)  # 06:00-08:00 only
    assert forecast_problem(short, T0, 3600) == "forecast ended (the next one not in yet)"
    later = make_forecast(T0 - timedelta(minutes=5))
    later = later.model_copy(update={"start": T0 + timedelta(minutes=15)})
    assert forecast_problem(later, T0, 3600) == "forecast starts later"
    assert forecast_problem(later, T0 + timedelta(minutes=15), 3600) is None


# --- the shift --------------------------------------------------------------------------------


def test_constant_shift_is_the_original() -> None:
    assert shift_profile(-800.0, 5, 900, ShiftOptions(mode="constant"), -300.0) == [-800.0] * 5


def test_fading_shift_tends_to_the_baseline_with_the_half_life() -> None:
    opts = ShiftOptions(mode="fading", half_life_s=3600)
    got = shift_profile(-2300.0, 96, 900, opts, -300.0)
    # each step holds the mean of baseline + delta * 2^(-t/h) over the step
    for k in (0, 3, 20):
        ts = [k * 900 + (i + 0.5) * 9 for i in range(100)]
        mean = sum(-300.0 - 2000.0 * 2 ** (-t / 3600) for t in ts) / 100
        assert got[k] == pytest.approx(mean, abs=0.5)
    # after one half-life (4 steps of 15 min) the difference from the baseline has halved
    assert (got[4] + 300.0) / (got[0] + 300.0) == pytest.approx(0.5, rel=1e-9)
    assert got[-1] == pytest.approx(-300.0, abs=1e-3)
    # no baseline yet: constant
    assert shift_profile(-2300.0, 3, 900, opts, None) == [-2300.0] * 3


def test_baseline_is_an_exponential_mean_over_time() -> None:
    b = update_baseline(None, T0, -500.0, 3600)
    assert b == Baseline(-500.0, T0)
    b2 = update_baseline(b, T0 + timedelta(hours=1), 500.0, 3600)
    assert b2.value_w == pytest.approx(-500.0 + 1000.0 * (1 - math.exp(-1)))
    assert update_baseline(b2, T0, 9999.0, 3600) == b2  # older: ignored
    assert update_baseline(b2, T0 + timedelta(hours=2), math.nan, 3600) == b2


# --- the planning problem ---------------------------------------------------------------------


def test_horizon_whole_steps_to_the_boundary_dst_days() -> None:
    assert horizon(DAY0, AMS, SIX, 900) == 96
    assert horizon(T0, AMS, SIX, 900) == 72  # 12:00 -> 06:00
    assert horizon(T0 + timedelta(minutes=7), AMS, SIX, 900) == 71  # the tail is left out
    spring = datetime(2024, 3, 30, 6, 0, tzinfo=AMS)  # clocks go forward that night: 23 h
    assert horizon(spring.astimezone(UTC), AMS, SIX, 900) == 92
    autumn = datetime(2024, 10, 26, 6, 0, tzinfo=AMS)  # clocks go back: 25 h
    assert horizon(autumn.astimezone(UTC), AMS, SIX, 900) == 100
    late = datetime(2024, 6, 22, 5, 55, tzinfo=AMS).astimezone(UTC)
    assert horizon(late, AMS, SIX, 900) == 1


def test_overrides_active_only_while_on_or_off_and_unexpired() -> None:
    later = T0 + timedelta(hours=1)
    assert override_active(override("Boiler", "on", later), T0)
    assert override_active(override("Boiler", "off", later), T0)
    assert not override_active(override("Boiler", "on", later), later)  # expired
    assert not override_active(override("Boiler", "auto", None), T0)
    assert not override_active(None, T0)


def test_problem_from_forecast_books_batteries_and_shift() -> None:
    books = bookkeeping.empty_books(DAY0)
    books = books.with_book(bookkeeping.SocketBook(name="Boiler", day_start=DAY0, energy_wh=500.0))
    books = books.with_book(bookkeeping.SocketBook(name="E-bike", day_start=DAY0, full=True))
    forecast = make_forecast(T0 - timedelta(minutes=10))
    p = prepare(
        now=T0,
        ctx=CTX,
        devices=DEVICES,
        books=books,
        batteries={"Battery": BatteryEnergy(1350.0)},
        overrides={},
        power_on={"Boiler": True},
        surplus=make_surplus(surplus_w=1500.0),
        forecast=forecast,
        baseline=None,
    )
    assert p.fallback_reason is None
    assert p.excluded == []
    assert p.controlled == ["Boiler", "E-bike"]
    problem = p.problem
    assert problem.start == T0
    assert problem.n_steps == 72
    assert problem.step_s == 900
    assert {s.name: s.energy_stored for s in problem.sockets} == {"Boiler": 500.0, "E-bike": 500.0}
    assert [b.energy_stored for b in problem.batteries] == [1350.0]
    assert problem.initial_on == {"Boiler": True}
    assert p.forecast_power_w == resample(forecast, T0, 900, 72)
    # the original's constant shift: available(now) = measured, everywhere forecast + shift0
    assert p.shift0_w == pytest.approx(1500.0 - forecast_at(forecast, T0))
    assert p.forecast_power_w is not None
    assert p.shift0_w is not None
    for a, f in zip(problem.available_power_w, p.forecast_power_w, strict=True):
        assert a == pytest.approx(f + p.shift0_w)  # no baseline yet: constant
    # with a baseline the fading shift tends to it
    faded = prepare(
        now=T0,
        ctx=CTX,
        devices=DEVICES,
        books=books,
        batteries={},
        overrides={},
        power_on={},
        surplus=make_surplus(surplus_w=1500.0),
        forecast=forecast,
        baseline=Baseline(-250.0, T0),
    )
    tail = faded.problem.available_power_w[-1] - (faded.forecast_power_w or [])[-1]
    assert tail == pytest.approx(-250.0, abs=1.0)
    assert [b.energy_stored for b in faded.problem.batteries] == [0.0]  # unknown: empty


def test_sockets_under_override_are_left_out_and_their_draw_is_house_load() -> None:
    overrides = {"Boiler": override("Boiler", "on", T0 + timedelta(hours=2))}
    surplus = make_surplus(surplus_w=2500.0, sockets_w={"Boiler": 2000.0, "E-bike": 0.0})
    assert excluded_sockets(DEVICES.sockets, overrides, T0) == ["Boiler"]
    assert measured_available_w(surplus, ["Boiler"]) == 500.0
    p = prepare(
        now=T0,
        ctx=CTX,
        devices=DEVICES,
        books=bookkeeping.empty_books(DAY0),
        batteries={},
        overrides=overrides,
        power_on={"Boiler": True, "E-bike": False},
        surplus=surplus,
        forecast=make_forecast(T0),
    )
    assert p.excluded == ["Boiler"]
    assert p.controlled == ["E-bike"]
    assert [s.name for s in p.problem.sockets] == ["E-bike"]
    assert p.problem.initial_on == {"E-bike": False}
    assert p.measured_w == 500.0
    assert p.problem.available_power_w[0] == pytest.approx(500.0, abs=60)  # ≈ measured now
    plan = plan_reference(p.problem)
    cmds = commands(p, plan, T0, 90.0)
    assert [slug for slug, _ in cmds] == ["e_bike"]  # none for the overridden socket
    msg = plan_message(p, plan, T0)
    assert msg.excluded == ["Boiler"]
    assert set(msg.sockets) == {"E-bike"}
    # the override ends (auto, or its lease runs out): the socket is back in the plan
    for back in (override("Boiler", "auto", None), override("Boiler", "on", T0)):
        again = prepare(
            now=T0,
            ctx=CTX,
            devices=DEVICES,
            books=bookkeeping.empty_books(DAY0),
            batteries={},
            overrides={"Boiler": back},
            power_on={},
            surplus=surplus,
            forecast=make_forecast(T0),
        )
        assert again.excluded == []
        assert again.measured_w == 2500.0


def test_stored_energy_for_the_planner() -> None:
    boiler = DEVICES.sockets[0]
    book = bookkeeping.SocketBook(name="Boiler", energy_wh=800.0)
    assert stored_for_plan(book, boiler, 900) == 800.0
    assert stored_for_plan(book.model_copy(update={"full": True}), boiler, 900) == 2000.0
    # at capacity but not full (reheating): half a step below capacity, so it gets a step
    reheating = book.model_copy(update={"energy_wh": 2000.0})
    assert stored_for_plan(reheating, boiler, 900) == 1750.0


def test_a_needed_store_filled_today_is_topped_up_on_surplus_only() -> None:
    """A needed boiler that read full today and then lost some to a draw met its daily need:
    it is planned as an optional store until the boundary (seen in the loop: 250 Wh from
    the grid at 05:45 to 'fill' a boiler full since noon after the evening shower)."""
    boiler = DEVICES.sockets[0]
    drawn = bookkeeping.SocketBook(name="Boiler", day_start=DAY0, energy_wh=2000.0, filled=True)
    spec = socket_spec(boiler, drawn, 900)
    assert spec.daily_need is False
    assert spec.energy_stored == 1750.0  # it still accepts energy (on surplus)
    # not filled yet, or full now: as configured
    assert socket_spec(boiler, drawn.model_copy(update={"filled": False}), 900).daily_need
    full = drawn.model_copy(update={"full": True})
    assert socket_spec(boiler, full, 900).daily_need
    # planned: no surplus in the night, nothing from the grid; with surplus, topped up
    books = bookkeeping.empty_books(DAY0).with_book(drawn)
    night = prepare(
        now=T0,
        ctx=CTX,
        devices=DEVICES,
        books=books,
        batteries={},
        overrides={},
        power_on={},
        surplus=make_surplus(surplus_w=-300.0),
        forecast=make_forecast(T0 - timedelta(minutes=5), power=[0.0] * 96),
    )
    needed = {s.name: s.daily_need for s in night.problem.sockets}
    assert needed == {"Boiler": False, "E-bike": False}
    plan = plan_reference(night.problem)
    assert sum(plan.sockets["Boiler"]) == 0


# --- fallback rule ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("forecast", "reason"),
    [
        (None, "no forecast"),
        (make_forecast(T0 - timedelta(hours=27)), "stale forecast (made 27.0 h ago)"),
    ],
)
def test_fallback_rule_without_a_usable_forecast(forecast: Forecast | None, reason: str) -> None:
    p = prepare(
        now=T0,
        ctx=CTX,
        devices=DEVICES,
        books=bookkeeping.empty_books(DAY0),
        batteries={},
        overrides={},
        power_on={},
        surplus=make_surplus(surplus_w=2100.0),
        forecast=forecast,
    )
    assert p.fallback_reason == reason
    assert p.problem.n_steps == 1
    assert p.problem.available_power_w == [2100.0]
    plan = fallback_plan(p.problem)
    # planning order: Boiler (2000 W) fits, then 100 W left: the e-bike (300 W) does not
    assert plan.sockets == {"Boiler": [1], "E-bike": [0]}
    assert plan.planner == FALLBACK_PLANNER
    assert plan.status == "fallback"
    msg = roundtrip(plan_message(p, plan, T0))
    assert isinstance(msg, PlanMessage)
    assert msg.fallback_reason == reason
    assert msg.forecast_made_at is None
    assert msg.sockets["Boiler"].energy_wh == [500.0]  # 2000 W for 15 min
    cmds = commands(p, plan, T0, 90.0)
    assert [(s, c.state, c.reason) for s, c in cmds] == [
        ("boiler", "on", REASON_FALLBACK),
        ("e_bike", "off", REASON_FALLBACK),
    ]
    assert all(c.valid_until == T0 + timedelta(seconds=90) for _, c in cmds)


def test_fallback_rule_skips_full_stores() -> None:
    books = bookkeeping.empty_books(DAY0).with_book(
        bookkeeping.SocketBook(name="Boiler", day_start=DAY0, full=True, energy_wh=2000.0)
    )
    p = prepare(
        now=T0,
        ctx=CTX,
        devices=DEVICES,
        books=books,
        batteries={},
        overrides={},
        power_on={},
        surplus=make_surplus(surplus_w=400.0),
        forecast=None,
    )
    assert fallback_plan(p.problem).sockets == {"Boiler": [0], "E-bike": [1]}


@pytest.mark.parametrize(
    ("hour", "boiler_on"),
    [(12, False), (4, False), (5, True)],  # empty 2000 Wh at 2 kW: from 04:30 (1 h + 0.5 h)
)
def test_fallback_rule_fills_a_needed_socket_by_the_boundary(hour: int, boiler_on: bool) -> None:
    """Without a forecast and without surplus, a needed socket is still on from its latest
    start (04:30 here: 1 h to fill + 0.5 h margin before 06:00); the optional one never is."""
    day = datetime(2024, 6, 21, tzinfo=AMS).date() + timedelta(days=1 if hour < 6 else 0)
    problem = night_problem(datetime.combine(day, time(hour), AMS).astimezone(UTC))
    plan = fallback_plan(problem, BOUNDARY, 1800.0)
    assert plan.sockets == {"Boiler": [int(boiler_on)], "E-bike": [0]}
    assert fallback_plan(problem).sockets["Boiler"] == [0]  # the original rule alone


def test_a_due_needed_socket_stays_on_until_it_reads_full() -> None:
    """Near the capacity by the books (they do not count the store's losses) but not read
    full: a due needed socket stays on; read full (the thermostat): off."""
    now = datetime(2024, 6, 22, 5, 30, tzinfo=AMS).astimezone(UTC)
    for full, on in ((False, 1), (True, 0)):
        books = bookkeeping.empty_books(DAY0).with_book(
            bookkeeping.SocketBook(name="Boiler", day_start=DAY0, full=full, energy_wh=1990.0)
        )
        problem = night_problem(now, books)
        assert fallback_plan(problem, BOUNDARY, 1800.0).sockets["Boiler"] == [on], full


@pytest.mark.parametrize(
    ("hour", "minute", "was_on", "on"),
    [(4, 50, False, 0), (4, 50, True, 1), (3, 0, True, 1), (2, 59, True, 0), (5, 0, False, 1)],
)
def test_a_needed_socket_on_already_stays_due_before_its_latest_start(
    hour: int, minute: int, was_on: bool, on: int
) -> None:
    """1000 Wh of room at 2 kW + 0.5 h margin: latest start 05:00. One already on (it draws
    more than configured: its books fill faster and the latest start moves later) stays on
    from `HOLD_S` (2 h) before it, not off a moment after each switch interval."""
    now = datetime(2024, 6, 22, hour, minute, tzinfo=AMS).astimezone(UTC)
    books = bookkeeping.empty_books(DAY0).with_book(
        bookkeeping.SocketBook(name="Boiler", day_start=DAY0, energy_wh=1000.0)
    )
    problem = night_problem(now, books, {"Boiler": was_on})
    assert fallback_plan(problem, BOUNDARY, 1800.0).sockets["Boiler"] == [on]
    due, start = is_due(1000.0, 2000.0, BOUNDARY, 1800.0, now, on=was_on)
    assert (due, start) == (bool(on), BOUNDARY - timedelta(hours=1))
    assert is_due(0.0, 2000.0, BOUNDARY, 1800.0, now, on=True) == (False, None)


def test_forecast_plan_message_and_commands_are_valid() -> None:
    p = prepare(
        now=T0,
        ctx=CTX,
        devices=DEVICES,
        books=bookkeeping.empty_books(DAY0),
        batteries={"Battery": BatteryEnergy(1000.0)},
        overrides={},
        power_on={},
        surplus=make_surplus(surplus_w=2600.0),
        forecast=make_forecast(T0 - timedelta(minutes=3)),
    )
    plan = plan_reference(p.problem)
    msg = roundtrip(plan_message(p, plan, T0, note="optimal planner timed out"))
    assert isinstance(msg, PlanMessage)
    assert msg.n_steps == 72
    assert msg.planner == "reference"
    assert msg.forecast_made_at == T0 - timedelta(minutes=3)
    assert msg.fallback_reason == "optimal planner timed out"
    assert msg.measured_surplus_w == 2600.0
    assert sum(msg.sockets["Boiler"].energy_wh) == pytest.approx(2000.0, abs=1.0)  # daily need
    assert len(msg.battery_energy_wh) == 72
    for slug, cmd in commands(p, plan, T0, 90.0):
        back = roundtrip(cmd)
        assert isinstance(back, SocketCommand)
        assert back.reason == REASON_PLAN
        assert back.plan_made_at == T0
        assert back.state == ("on" if plan.sockets[back.socket][0] else "off")
        assert slug in ("boiler", "e_bike")


# --- books: restore, boundary ----------------------------------------------------------------


def test_books_round_trip_and_never_across_the_boundary() -> None:
    books = bookkeeping.empty_books(DAY0)
    for seconds, power in ((0, 2000.0), (900, 2000.0)):
        books = bookkeeping.record_sample(
            books,
            "Boiler",
            capacity_wh=2000.0,
            max_power_w=2000.0,
            sample_at=T0 + timedelta(seconds=seconds),
            power_w=power,
            power_on=True,
            day_start=DAY0,
        )
    books = books.with_book(bookkeeping.SocketBook(name="Gone", day_start=DAY0, energy_wh=9.0))
    batteries = {"Battery": BatteryEnergy(1234.0, 45.7, T0), "Old": BatteryEnergy(1.0)}
    msg = roundtrip(
        books_message(books, batteries, T0, manual=["E-bike"], baseline=Baseline(-321.5, T0))
    )
    assert isinstance(msg, EnergyBooks)
    later = T0 + timedelta(hours=6)
    got = restore_books(msg, later, AMS, SIX, DEVICES)
    assert got is not None
    assert got.books.sockets["Boiler"].energy_wh == pytest.approx(500.0)
    assert "Gone" not in got.books.sockets  # no longer configured
    assert got.batteries == {"Battery": BatteryEnergy(1234.0, 45.7, T0)}
    assert got.baseline == Baseline(-321.5, T0)
    # just before the next boundary: still today; at it: another day, nothing restored
    assert restore_books(msg, datetime(2024, 6, 22, 5, 59, tzinfo=AMS), AMS, SIX, DEVICES)
    assert restore_books(msg, datetime(2024, 6, 22, 6, 0, tzinfo=AMS), AMS, SIX, DEVICES) is None


def test_restore_on_dst_days() -> None:
    # the spring-forward day runs 23 h: 2024-03-31 06:00 CEST .. 2024-04-01 06:00 CEST
    spring_start = day_start(datetime(2024, 3, 31, 12, 0, tzinfo=AMS), AMS, SIX)
    msg = books_message(bookkeeping.empty_books(spring_start), {}, spring_start)
    assert restore_books(msg, datetime(2024, 4, 1, 5, 59, tzinfo=AMS), AMS, SIX, DEVICES)
    assert restore_books(msg, datetime(2024, 4, 1, 6, 0, tzinfo=AMS), AMS, SIX, DEVICES) is None
    # fall back: the day of 2024-10-27 02:00-03:00 twice is 25 h long
    autumn_start = day_start(datetime(2024, 10, 26, 12, 0, tzinfo=AMS), AMS, SIX)
    msg = books_message(bookkeeping.empty_books(autumn_start), {}, autumn_start)
    end = datetime(2024, 10, 27, 6, 0, tzinfo=AMS)
    assert (end.astimezone(UTC) - autumn_start).total_seconds() == 25 * 3600
    assert restore_books(msg, end - timedelta(seconds=1), AMS, SIX, DEVICES)
    assert restore_books(msg, end, AMS, SIX, DEVICES) is None


# --- the Scheduler with a recorder and a ManualClock ----------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def publish(self, topic: str, payload: Any) -> None:
        self.sent.append((topic, payload))

    def on(self, topic: str) -> list[Any]:
        return [p for t, p in self.sent if t == topic]


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.upper().startswith("HWSCHED_"):
            monkeypatch.delenv(name)
    return Settings(base_topic="t", poll_interval_s=30.0, planner_time_limit_s=0.2)


def reference(settings: Settings) -> Settings:
    """The settings with the reference planner (every plan inline)."""
    return settings.model_copy(update={"planner": "reference"})


def make_scheduler(
    settings: Settings,
    clock: ManualClock,
    planner: Any = None,
    options: SchedulerOptions | None = None,
) -> tuple[Scheduler, Recorder, Counters]:
    rec = Recorder()
    counters = Counters()
    s = Scheduler(
        DEVICES,
        settings,
        rec,
        topics=Topics("t"),
        counters=counters,
        clock=clock,
        options=options if options is not None else SchedulerOptions(restore_wait_s=1.0),
        planner=planner,
    )
    return s, rec, counters


def socket_reading(at: datetime, power: float, on: bool = True) -> bytes:
    return dump_message(
        DeviceMeasurement(
            timestamp=at,
            device="Boiler",
            device_type="HWE-SKT",
            power_w=power,
            power_on=on,
            switch_lock=False,
            api="v1",
        )
    )


def battery_reading(at: datetime, soc: float) -> bytes:
    return dump_message(
        DeviceMeasurement(
            timestamp=at,
            device="Battery",
            device_type="HWE-BAT",
            power_w=0.0,
            state_of_charge_pct=soc,
            api="v2",
        )
    )


async def test_samples_wait_for_the_books_then_count_on_top(settings: Settings) -> None:
    clock = ManualClock(T0)
    s, rec, counters = make_scheduler(settings, clock)
    before = bookkeeping.empty_books(DAY0).with_book(
        bookkeeping.SocketBook(
            name="Boiler",
            day_start=DAY0,
            energy_wh=600.0,
            last_sample_at=T0 - timedelta(minutes=15),
            last_power_w=2000.0,
        )
    )
    await s.on_measurement("t/boiler/measurement", socket_reading(T0, 2000.0))
    await s.on_measurement("t/battery/measurement", battery_reading(T0, 50.0))
    assert s.books.sockets == {}
    assert counters["socket_samples"] == 0
    await s.on_books("t/books", dump_message(books_message(before, {}, T0)))
    assert counters["books_restored"] == 1
    assert s.restored.is_set()
    assert s.books.sockets["Boiler"].energy_wh == pytest.approx(1100.0)  # 600 + 15 min at 2 kW
    assert s.batteries["Battery"].energy_wh == pytest.approx(1350.0)
    assert rec.on("t/books")  # published at once
    # a later copy (our own echo) changes nothing
    await s.on_books("t/books", dump_message(books_message(bookkeeping.empty_books(DAY0), {}, T0)))
    assert s.books.sockets["Boiler"].energy_wh == pytest.approx(1100.0)


async def test_no_books_starts_empty_after_the_wait(settings: Settings) -> None:
    clock = ManualClock(T0)
    s, rec, counters = make_scheduler(reference(settings), clock)
    task = asyncio.create_task(s.run())
    await clock.run_for(0.5)
    assert not s.restored.is_set()
    await clock.run_for(1.0)
    assert s.restored.is_set()
    assert counters["books_not_restored_none"] == 1
    assert s.books.day_start == DAY0
    assert rec.on("t/books")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_boundary_resets_the_books_and_plans_a_new_day(settings: Settings) -> None:
    clock = ManualClock(datetime(2024, 6, 22, 5, 50, tzinfo=AMS))
    s, rec, counters = make_scheduler(reference(settings), clock)
    s._finish_restore(None)
    for minutes, power in ((-5, 2000.0), (0, 2000.0)):
        at = clock.now() + timedelta(minutes=minutes)
        await s.on_measurement("t/boiler/measurement", socket_reading(at, power))
    assert s.books.sockets["Boiler"].energy_wh == pytest.approx(2000.0 * 5 / 60)
    two_days = make_forecast(clock.now() - timedelta(minutes=1), bell(96) * 2)
    await s.on_forecast("t/forecast", dump_message(two_days))
    task = asyncio.create_task(s.run())
    await clock.run_for(590)
    await s.on_surplus("t/surplus", dump_message(make_surplus(clock.now(), 500.0)))
    await clock.run_for(20)  # past 06:00
    assert counters["boundary_resets"] == 1
    plans = rec.on("t/plan")
    assert [p.n_steps for p in plans] == [1, 96]  # 10 s left of the day, then a new day's
    assert plans[-1].start == datetime(2024, 6, 22, 6, 0, 0, tzinfo=AMS)
    assert s.books.day_start == datetime(2024, 6, 22, 6, 0, tzinfo=AMS)
    assert s.books.sockets["Boiler"].energy_wh == 0.0
    published = rec.on("t/books")[-1]
    assert published.day_start == s.books.day_start
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_stale_surplus_is_not_planned_on(settings: Settings) -> None:
    clock = ManualClock(T0)
    s, rec, counters = make_scheduler(reference(settings), clock)
    s._finish_restore(None)
    await s.on_surplus("t/surplus", dump_message(make_surplus(T0 - timedelta(minutes=5))))
    assert await s.plan_once() is None
    assert counters["surplus_stale"] == 1
    assert not rec.on("t/plan")


GARBAGE = [b"", b"not json", b"[]", b'{"schema_version": 99}', b'{"schema_version": 1}']


async def test_garbage_on_every_topic_is_counted_and_changes_nothing(settings: Settings) -> None:
    clock = ManualClock(T0)
    s, rec, counters = make_scheduler(reference(settings), clock)
    s._finish_restore(None)
    await s.on_forecast("t/forecast", dump_message(make_forecast(T0)))
    await s.on_surplus("t/surplus", dump_message(make_surplus(T0, 900.0)))
    await s.on_measurement("t/boiler/measurement", socket_reading(T0, 2000.0))
    over = override("E-bike", "off", T0 + timedelta(hours=1))
    await s.on_override("t/e_bike/override", dump_message(over))
    state = (s.books, s.forecast, s.surplus, dict(s.overrides), dict(s.batteries))
    handlers = {
        "books": (s.on_books, "t/books"),
        "forecast": (s.on_forecast, "t/forecast"),
        "surplus": (s.on_surplus, "t/surplus"),
        "measurement": (s.on_measurement, "t/boiler/measurement"),
        "override": (s.on_override, "t/e_bike/override"),
    }
    for kind, (handler, topic) in handlers.items():
        for payload in GARBAGE:
            await handler(topic, payload)
        assert counters[f"messages_dropped_{kind}"] == len(GARBAGE), kind
    # valid payloads in the wrong place, from the future, or of unknown devices
    await s.on_measurement("t/e_bike/measurement", socket_reading(T0, 1.0))  # Boiler's
    await s.on_measurement("t/p2/measurement", socket_reading(T0, 1.0))
    await s.on_override("t/boiler/override", dump_message(over))  # E-bike's
    await s.on_override("t/battery/override", dump_message(over))
    future = make_surplus(T0 + timedelta(hours=1))
    await s.on_surplus("t/surplus", dump_message(future))
    await s.on_measurement("t/battery/measurement", socket_reading(T0, 1.0))
    assert counters["messages_dropped_measurement"] == len(GARBAGE) + 3
    assert counters["messages_dropped_override"] == len(GARBAGE) + 2
    assert counters["messages_dropped_surplus"] == len(GARBAGE) + 1
    assert (s.books, s.forecast, s.surplus, dict(s.overrides), dict(s.batteries)) == state
    # and it still plans
    assert await s.plan_once() is not None
    plan = rec.on("t/plan")[-1]
    assert plan.excluded == ["E-bike"]
    assert list(plan.sockets) == ["Boiler"]
    assert json.loads(dump_message(plan))["planner"] == "reference"
