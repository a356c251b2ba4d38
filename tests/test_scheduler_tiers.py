"""The scheduler's two tiers and calm plans (issue 14), on a ManualClock.

* the full plan runs in the background while quick re-plans serve the incumbent; it is
  adopted when it arrives for the current state, discarded when it is stale;
* the calm settings, the time since each socket's last switch and the incumbent (`previous`)
  go into every problem;
* a surplus wobbling +-300 W around a socket's power does not toggle it across re-plans.

No test depends on timing: the full planner is released by events, and waits are bounded by
counters with generous time-outs.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.scheduler.logic import grid_start, moved_modes, moved_rows
from services.scheduler.scheduler import Scheduler, SchedulerOptions
from shared.clock import ManualClock, ScaledClock
from shared.config import DevicesConfig, Settings
from shared.messages import (
    DeviceMeasurement,
    Forecast,
    HouseSurplus,
    PlanMessage,
    SocketCommand,
    SocketState,
    dump_message,
)
from shared.planning.problem import Plan, PlanningProblem
from shared.planning.reference import plan_reference
from shared.service import Counters
from shared.topics import Topics

AMS = ZoneInfo("Europe/Amsterdam")
T0 = datetime(2024, 6, 21, 12, 0, tzinfo=AMS).astimezone(UTC)
DAY0 = datetime(2024, 6, 21, 6, 0, tzinfo=AMS).astimezone(UTC)
DEVICES = DevicesConfig.model_validate(
    {
        "devices": [
            {"device_name": "P1 meter", "device_type": "HWE-P1", "ip_address": "10.0.0.1"},
            {
                "device_name": "Boiler",
                "device_type": "HWE-SKT",
                "ip_address": "10.0.0.2",
                "max_power_usage": 2000,
                "energy_capacity": 8000,
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
        ]
    }
)


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, object]] = []

    def publish(self, topic: str, payload: object) -> None:
        self.sent.append((topic, payload))

    def plans(self) -> list[PlanMessage]:
        return [p for t, p in self.sent if t == "t/plan" and isinstance(p, PlanMessage)]

    def commands(self, slug: str) -> list[SocketCommand]:
        return [p for t, p in self.sent if t == f"t/{slug}/set" and isinstance(p, SocketCommand)]


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.upper().startswith("HWSCHED_"):
            monkeypatch.delenv(name)
    return Settings(base_topic="t", poll_interval_s=30.0)


def forecast(made_at: datetime, watts: float = 2000.0) -> Forecast:
    return Forecast(
        timestamp=made_at,
        start=DAY0,
        step_s=900,
        power_w=[watts] * 96,
        made_at=made_at,
        source="test",
    )


def surplus(at: datetime, watts: float) -> bytes:
    return dump_message(
        HouseSurplus(
            timestamp=at,
            surplus_w=watts,
            p1_power_w=-watts,
            sockets_w={},
            batteries_w={},
            based_on=["P1 meter"],
        )
    )


class Blocked:
    """A full planner that waits for `release` (in the scheduler's thread) and records."""

    def __init__(self, plan: Plan | None = None) -> None:
        self.release = threading.Event()
        self.problems: list[PlanningProblem] = []
        self.plan = plan

    def __call__(self, problem: PlanningProblem) -> Plan:
        self.problems.append(problem)
        assert self.release.wait(30)
        if self.plan is not None:
            return self.plan
        rows = {s.name: [1] * problem.n_steps for s in problem.sockets}
        return Plan(
            sockets=rows, battery_power_w=[0.0] * problem.n_steps, planner="full", solve_s=0
        )


class Quick:
    """A quick planner that records what it starts from and keeps it (or the reference)."""

    def __init__(self) -> None:
        self.calls: list[tuple[PlanningProblem, dict[str, list[int]] | None]] = []

    def __call__(self, problem: PlanningProblem, start: Mapping[str, Sequence[int]] | None) -> Plan:
        rows = {k: list(v) for k, v in start.items()} if start is not None else None
        self.calls.append((problem, rows))
        if rows is None:
            return plan_reference(problem)
        return Plan(
            sockets=rows, battery_power_w=[0.0] * problem.n_steps, planner="optimal", solve_s=0
        )


def make(
    settings: Settings,
    clock: ManualClock,
    full: object,
    quick: object | None = None,
    timeout_s: float = 60.0,
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
        options=SchedulerOptions(restore_wait_s=1.0, full_timeout_s=timeout_s, first_full_wait_s=0),
        planner=full,  # type: ignore[arg-type]
        quick_planner=quick,  # type: ignore[arg-type]
    )
    s._finish_restore(None)
    return s, rec, counters


async def plan_at(s: Scheduler, clock: ManualClock, at: datetime, watts: float) -> PlanMessage:
    clock.set(at)
    await s.on_surplus("t/surplus", surplus(at, watts))
    assert await s.plan_once() is not None
    plan = s._publisher.plans()[-1]  # type: ignore[attr-defined]
    assert isinstance(plan, PlanMessage)
    return plan


async def full_done(s: Scheduler) -> None:
    job = s.full_job
    assert job is not None
    await asyncio.wait_for(asyncio.shield(job.task), 30)


# --- the hand-over of a full plan -------------------------------------------------------------


async def test_the_incumbent_is_served_while_the_full_plan_runs_then_the_full_plan_is_adopted(
    settings: Settings,
) -> None:
    clock = ManualClock(T0)
    full, quick = Blocked(), Quick()
    s, rec, counters = make(settings, clock, full, quick)
    await s.on_forecast("t/forecast", dump_message(forecast(T0 - timedelta(minutes=1))))
    first = await plan_at(s, clock, T0, 2000.0)
    assert first.tier == "quick"  # no incumbent: the quick tier from the reference plan
    assert quick.calls[0][1] is None
    assert counters["full_plans_started"] == 1
    # while the full plan runs: quick re-plans from the incumbent, no second full plan
    for k in range(1, 4):
        again = await plan_at(s, clock, T0 + timedelta(seconds=30 * k), 2000.0)
        assert again.tier == "quick"
        assert quick.calls[-1][1] == {n: r.states for n, r in first.sockets.items()}
    assert counters["full_plans_started"] == 1
    assert len(rec.plans()) == 4
    # the full plan arrives, for the same forecast and sockets: the next plan starts from it
    full.release.set()
    await full_done(s)
    adopted = await plan_at(s, clock, T0 + timedelta(seconds=150), 2000.0)
    assert adopted.tier == "full"
    start = quick.calls[-1][1]
    assert start is not None
    assert all(all(v == 1 for v in row) for row in start.values())
    assert counters["plans_full"] == 1
    # and it is the incumbent from now on
    later = await plan_at(s, clock, T0 + timedelta(seconds=180), 2000.0)
    assert later.tier == "quick"
    assert quick.calls[-1][0].previous == {n: r.states for n, r in adopted.sockets.items()}


async def test_a_full_plan_for_another_forecast_is_discarded_and_a_new_one_starts(
    settings: Settings,
) -> None:
    clock = ManualClock(T0)
    full, quick = Blocked(), Quick()
    s, _rec, counters = make(settings, clock, full, quick)
    await s.on_forecast("t/forecast", dump_message(forecast(T0 - timedelta(minutes=1))))
    await plan_at(s, clock, T0, 2000.0)
    await s.on_forecast("t/forecast", dump_message(forecast(T0 + timedelta(seconds=10), 2500.0)))
    full.release.set()
    await full_done(s)
    got = await plan_at(s, clock, T0 + timedelta(seconds=30), 2000.0)
    assert got.tier == "quick"
    assert counters["full_plans_discarded"] == 1
    assert counters["full_plans_started"] == 2  # for the new forecast
    await full_done(s)
    assert (await plan_at(s, clock, T0 + timedelta(seconds=60), 2000.0)).tier == "full"


async def test_a_full_plan_that_started_too_long_ago_is_discarded(settings: Settings) -> None:
    clock = ManualClock(T0)
    full, quick = Blocked(), Quick()
    s, _rec, counters = make(settings, clock, full, quick)
    await s.on_forecast("t/forecast", dump_message(forecast(T0 - timedelta(minutes=1))))
    await plan_at(s, clock, T0, 2000.0)
    full.release.set()
    await full_done(s)
    late = T0 + timedelta(seconds=s.options.full_plan_max_age_s + 900)
    got = await plan_at(s, clock, late, 2000.0)
    assert got.tier == "quick"
    assert counters["full_plans_discarded"] == 1
    assert counters["plans_full"] == 0


async def test_a_hung_full_plan_is_abandoned_and_never_overlaps(settings: Settings) -> None:
    clock = ManualClock(T0)
    full, quick = Blocked(), Quick()
    s, _rec, counters = make(settings, clock, full, quick)
    await s.on_forecast("t/forecast", dump_message(forecast(T0 - timedelta(minutes=1))))
    await plan_at(s, clock, T0, 2000.0)
    await clock.run_for(61.0)  # past full_timeout_s (work time: the ManualClock's own here)
    await full_done(s)
    assert counters["planner_timeouts"] == 1
    # a new forecast would start a full plan, but the hung thread still runs: none starts
    await s.on_forecast("t/forecast", dump_message(forecast(clock.now(), 2500.0)))
    got = await plan_at(s, clock, clock.now() + timedelta(seconds=1), 2000.0)
    assert got.tier == "quick"
    assert counters["full_plans_started"] == 1
    assert len(full.problems) == 1
    full.release.set()
    assert s._solver is not None
    await asyncio.wait_for(asyncio.shield(s._solver), 30)
    await plan_at(s, clock, clock.now() + timedelta(seconds=30), 2000.0)
    assert counters["full_plans_started"] == 2
    assert counters["plans_full"] == 0


async def test_a_slow_full_plan_spaces_the_next_periodic_one(settings: Settings) -> None:
    """A full plan that took 5000 s of clock time (a busy machine at an accelerated speed):
    the next periodic one waits 4 x 5000 s, not `full_plan_every_s` (3 h)."""
    clock = ManualClock(T0)
    full, quick = Blocked(), Quick()
    s, _, counters = make(settings, clock, full, quick, timeout_s=1e6)
    await s.on_forecast("t/forecast", dump_message(forecast(T0 - timedelta(minutes=1))))
    await plan_at(s, clock, T0, 2000.0)
    await clock.run_for(5000.0)
    full.release.set()
    await full_done(s)
    await plan_at(s, clock, clock.now(), 2000.0)  # takes it (stale: discarded)
    assert counters["full_plans_started"] == 1
    await plan_at(s, clock, T0 + timedelta(seconds=s.options.full_plan_every_s + 60), 2000.0)
    assert counters["full_plans_started"] == 1
    await plan_at(s, clock, T0 + timedelta(seconds=4 * 5000 + 60), 2000.0)
    assert counters["full_plans_started"] == 2


# --- what goes into the problem ---------------------------------------------------------------


async def test_calm_settings_since_times_and_the_previous_plan_go_into_the_problem(
    settings: Settings,
) -> None:
    calm = settings.model_copy(
        update={"switch_cost_wh": 30.0, "min_on_s": 1500, "min_off_s": 600, "hold_gain_wh": 70.0}
    )
    clock = ManualClock(T0 + timedelta(minutes=7, seconds=12, microseconds=345))
    full, quick = Blocked(), Quick()
    s, _rec, counters = make(calm, clock, full, quick)
    await s.on_forecast("t/forecast", dump_message(forecast(T0 - timedelta(minutes=1))))
    await s.on_measurement(
        "t/boiler/measurement",
        dump_message(
            DeviceMeasurement(
                timestamp=clock.now(),
                device="Boiler",
                device_type="HWE-SKT",
                power_w=2000.0,
                power_on=True,
                switch_lock=False,
                api="v1",
            )
        ),
    )
    state = SocketState(
        timestamp=clock.now(),
        socket="Boiler",
        power_on=True,
        controlled_by="plan",
        last_switch_at=clock.now() - timedelta(seconds=400),
    )
    await s.on_socket_state("t/boiler", dump_message(state))
    await s.on_socket_state("t/plan", b"not a socket state")  # another topic under <base>/+
    assert counters["messages_dropped"] == 0
    first = await plan_at(s, clock, clock.now(), 2000.0)
    problem = quick.calls[-1][0]
    assert (problem.switch_cost_wh, problem.min_on_s, problem.min_off_s) == (30.0, 1500, 600)
    assert problem.hold_gain_wh == 70.0
    assert problem.initial_on == {"Boiler": True}
    assert problem.initial_since_s == {"Boiler": pytest.approx(400.0)}
    assert problem.previous == {}  # nothing before
    # planned times on the step grid, payload times to the second
    assert first.start == T0
    assert first.made_at.microsecond == 0
    # a plan one step later: the first plan moved on by one step
    await plan_at(s, clock, T0 + timedelta(minutes=16), 2000.0)
    problem = quick.calls[-1][0]
    assert problem.start == T0 + timedelta(minutes=15)
    assert problem.previous == {
        n: ([*r.states[1:], 0])[: problem.n_steps] for n, r in first.sockets.items()
    }
    # a socket state on a socket's topic naming another socket is a counted drop
    wrong = state.model_copy(update={"socket": "E-bike"})
    await s.on_socket_state("t/boiler", dump_message(wrong))
    assert counters["messages_dropped_socket_state"] == 1


def test_rows_and_modes_move_onto_the_new_steps() -> None:
    rows = {"A": [1, 1, 0, 1], "B": [0, 1]}
    assert moved_rows(rows, 1, ["A", "B", "C"], 4) == {
        "A": [1, 0, 1, 0],
        "B": [1, 0, 0, 0],
        "C": [0, 0, 0, 0],
    }
    assert moved_modes(["zero", "standby", "to_full"], 2, 3) == ["to_full", "zero", "zero"]
    now = datetime(2024, 3, 31, 12, 7, 52, 310355, tzinfo=AMS)  # a DST day
    assert grid_start(now, AMS, datetime(2024, 1, 1, 6).time(), 900) == datetime(
        2024, 3, 31, 12, 0, tzinfo=AMS
    )


async def test_a_surplus_a_poll_cycle_old_is_not_stale_at_speed_600(settings: Settings) -> None:
    """At --speed 600 a poll cycle of 0.4 real s is 240 simulated s: planned on, no warning."""
    real = [0.0]
    clock = ScaledClock(600.0, T0, real_monotonic=lambda: real[0], real_start=0.0)
    rec, counters = Recorder(), Counters()
    s = Scheduler(
        DEVICES,
        settings.model_copy(update={"planner": "reference"}),
        rec,
        topics=Topics("t"),
        counters=counters,
        clock=clock,
    )
    s._finish_restore(None)
    await s.on_forecast("t/forecast", dump_message(forecast(T0 - timedelta(minutes=1))))
    await s.on_surplus("t/surplus", surplus(T0, 2000.0))
    real[0] = 0.4
    assert await s.plan_once() is not None
    assert counters["surplus_stale"] == 0
    command = rec.commands("boiler")[-1]
    assert command.valid_until is not None
    assert (command.valid_until - clock.now()).total_seconds() > 240  # outlives a poll cycle
    real[0] = 30.0  # 18000 simulated s: the poller has really stopped
    assert await s.plan_once() is None
    assert counters["surplus_stale"] == 1


# --- calm in the loop ------------------------------------------------------------------------


async def test_a_surplus_wobbling_around_a_sockets_power_does_not_toggle_it(
    settings: Settings,
) -> None:
    """The real quick tier, re-planning every 30 s on a surplus of 2000 W +- 300 W (the
    Boiler's power) for an hour; the actuator's part played here: a command's state is
    applied (and its switch time published) at most every switch interval."""
    clock = ManualClock(T0)
    s, rec, counters = make(settings, clock, plan_reference)
    await s.on_forecast("t/forecast", dump_message(forecast(T0 - timedelta(minutes=1))))
    relay: bool | None = None
    switched_at: datetime | None = None
    switches: list[datetime] = []
    for k in range(120):
        at = T0 + timedelta(seconds=30 * k)
        clock.set(at)
        await s.on_measurement(
            "t/boiler/measurement",
            dump_message(
                DeviceMeasurement(
                    timestamp=at,
                    device="Boiler",
                    device_type="HWE-SKT",
                    power_w=2000.0 if relay else 0.0,
                    power_on=bool(relay),
                    switch_lock=False,
                    api="v1",
                )
            ),
        )
        if switched_at is not None:
            state = SocketState(
                timestamp=at,
                socket="Boiler",
                power_on=bool(relay),
                controlled_by="plan",
                last_switch_at=switched_at,
            )
            await s.on_socket_state("t/boiler", dump_message(state))
        await s.on_surplus("t/surplus", surplus(at, 2000.0 + (300.0 if k % 2 else -300.0)))
        assert await s.plan_once() is not None
        if s.full_job is not None:  # a full plan (here the reference's): in by the next plan
            await full_done(s)
        want = rec.commands("boiler")[-1].state == "on"
        free = switched_at is None or (at - switched_at).total_seconds() >= 300
        if want != relay and free:
            if relay is not None:
                switches.append(at)
            relay, switched_at = want, at
    assert counters["plans_published"] == 120
    assert len(switches) <= 1, [t.astimezone(AMS).strftime("%H:%M:%S") for t in switches]


# --- the first plan on a forecast ---------------------------------------------------------------


def make_waiting(
    settings: Settings, clock: ManualClock, full: object, quick: object
) -> tuple[Scheduler, Recorder, Counters]:
    """A scheduler whose first plan on a forecast waits (the default) for the full tier."""
    s, rec, counters = make(settings, clock, full, quick)
    s.options = SchedulerOptions(restore_wait_s=1.0, full_timeout_s=60.0)
    assert s.options.first_full_wait_s is None or s.options.first_full_wait_s > 0
    return s, rec, counters


async def first_plan_started(
    s: Scheduler, clock: ManualClock, full: Blocked
) -> asyncio.Future[object]:
    """The first plan on a forecast under way, waiting for the (blocked) full plan."""
    await s.on_forecast("t/forecast", dump_message(forecast(T0 - timedelta(minutes=1))))
    clock.set(T0)
    await s.on_surplus("t/surplus", surplus(T0, 2000.0))
    planning: asyncio.Future[object] = asyncio.ensure_future(s.plan_once())
    for _ in range(500):  # a bound on a failure only
        await asyncio.sleep(0.01)
        if full.problems:
            break
    return planning


async def test_the_first_plan_on_a_forecast_is_the_full_plan(settings: Settings) -> None:
    """At start-up (no incumbent) the scheduler waits for the full plan instead of
    publishing a quick plan that the full plan would reverse seconds later."""
    clock = ManualClock(T0)
    full, quick = Blocked(), Quick()
    s, rec, counters = make_waiting(settings, clock, full, quick)
    planning = await first_plan_started(s, clock, full)
    assert len(full.problems) == 1
    assert not planning.done()
    assert rec.plans() == []
    full.release.set()
    assert await asyncio.wait_for(planning, 30) is not None
    first = rec.plans()[-1]
    assert first.tier == "full"
    assert len(rec.plans()) == 1
    assert counters["full_plans_started"] == 1
    assert counters["plans_quick"] == 0
    # the next plans are quick re-plans from it: no second full plan at once
    later = await plan_at(s, clock, T0 + timedelta(seconds=30), 2000.0)
    assert later.tier == "quick"
    assert counters["full_plans_started"] == 1


async def test_the_first_plan_waits_as_long_as_the_full_plan_takes(settings: Settings) -> None:
    """By default the wait is the full plan's own time-out, not a fixed few seconds: on a
    slow or busy machine (a Raspberry Pi is ~4x slower) the first plan is still the full
    plan, the same as on a fast one."""
    clock = ManualClock(T0)
    full, quick = Blocked(), Quick()
    s, rec, counters = make_waiting(settings, clock, full, quick)
    assert s.options.first_full_wait_s is None
    planning = await first_plan_started(s, clock, full)
    clock.advance(50.0)  # 50 real s of work: the old fixed 30-s wait had given up
    for _ in range(20):
        await asyncio.sleep(0)
    assert not planning.done()
    assert rec.plans() == []
    full.release.set()
    assert await asyncio.wait_for(planning, 30) is not None
    assert [p.tier for p in rec.plans()] == ["full"]
    assert counters["first_full_waits_exceeded"] == 0
    assert counters["plans_quick"] == 0


async def test_a_slow_first_full_plan_lets_the_quick_plan_go_first(settings: Settings) -> None:
    """With a limit set, the quick plan goes first past it (and at the full plan's time-out
    by default)."""
    clock = ManualClock(T0)
    full, quick = Blocked(), Quick()
    s, rec, counters = make_waiting(settings, clock, full, quick)
    s.options = replace(s.options, first_full_wait_s=30.0)
    planning = await first_plan_started(s, clock, full)
    clock.advance(s.options.first_full_wait_s)  # the wait's time-out (a ManualClock's own)
    assert await asyncio.wait_for(planning, 30) is not None
    assert rec.plans()[-1].tier == "quick"
    assert counters["first_full_waits_exceeded"] == 1
    full.release.set()  # it arrives later and is adopted on a re-plan, as any full plan
    await full_done(s)
    assert (await plan_at(s, clock, T0 + timedelta(seconds=30), 2000.0)).tier == "full"


async def test_waiting_for_a_forecast_is_info_and_a_warning_only_when_it_lasts(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A healthy start logs no warning: the fallback rule until the first forecast is
    expected; still no forecast after the grace is a warning (once)."""
    clock = ManualClock(T0)
    s, _rec, _counters = make(settings, clock, Blocked(), Quick())
    caplog.set_level("INFO", logger="hwsched.scheduler")
    await plan_at(s, clock, T0, 2000.0)
    waiting = [r for r in caplog.records if "no forecast" in r.getMessage()]
    assert [r.levelname for r in waiting] == ["INFO"]
    grace = s.options.forecast_grace_s + s._work_s(s.options.forecast_work_allowance_s)
    await plan_at(s, clock, T0 + timedelta(seconds=grace - 60), 2000.0)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    await plan_at(s, clock, T0 + timedelta(seconds=grace + 60), 2000.0)
    await plan_at(s, clock, T0 + timedelta(seconds=grace + 90), 2000.0)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1
    assert "still no forecast after" in warned[0]
    assert "forecaster" in warned[0]


async def test_a_stale_forecast_is_a_warning_at_once(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock(T0)
    s, _rec, _counters = make(settings, clock, Blocked(), Quick())
    caplog.set_level("INFO", logger="hwsched.scheduler")
    await s.on_forecast("t/forecast", dump_message(forecast(T0 - timedelta(days=2))))
    await plan_at(s, clock, T0, 2000.0)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("stale forecast" in m for m in warned), warned


class Flipping(Quick):
    """A quick planner whose plan changes the incumbent's decisions (every state flipped)."""

    def __call__(self, problem: PlanningProblem, start: Mapping[str, Sequence[int]] | None) -> Plan:
        self.calls.append((problem, None))
        rows = {s.name: [1] * problem.n_steps for s in problem.sockets}
        if start is not None:
            rows = {k: [1 - v for v in row] for k, row in start.items()}
        return Plan(
            sockets=rows, battery_power_w=[0.0] * problem.n_steps, planner="optimal", solve_s=0
        )


async def test_a_quick_plan_that_changes_the_incumbent_starts_a_full_plan_sooner(
    settings: Settings,
) -> None:
    """The quick tier only repairs the incumbent (after an override ends, a surprise); when
    it changes the decisions, the full tier plans the day again after
    `full_plan_on_change_s`, not only every `full_plan_every_s`."""
    clock = ManualClock(T0)
    full, quick = Blocked(), Quick()
    full.release.set()
    s, _rec, counters = make(settings, clock, full, quick)
    on_change = s.options.full_plan_on_change_s
    assert on_change < s.options.full_plan_every_s
    await s.on_forecast("t/forecast", dump_message(forecast(T0 - timedelta(minutes=1))))
    await plan_at(s, clock, T0, 2000.0)
    await full_done(s)
    assert (await plan_at(s, clock, T0 + timedelta(seconds=30), 2000.0)).tier == "full"
    assert counters["full_plans_started"] == 1
    # a changed quick plan soon after the last full plan: no new one yet
    s._quick_planner = Flipping()
    await plan_at(s, clock, T0 + timedelta(seconds=60), 2000.0)
    assert counters["full_plans_started"] == 1
    # quick plans that keep the incumbent: none either, however long
    s._quick_planner = quick
    await plan_at(s, clock, T0 + timedelta(seconds=on_change + 60), 2000.0)
    assert counters["full_plans_started"] == 1
    # a changed one after full_plan_on_change_s: a full plan starts
    s._quick_planner = Flipping()
    await plan_at(s, clock, T0 + timedelta(seconds=on_change + 90), 2000.0)
    assert counters["full_plans_started"] == 2
