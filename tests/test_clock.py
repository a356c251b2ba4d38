"""The injectable clock: system, manual (tests) and scaled (simulations)."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared.clock import (
    Clock,
    ManualClock,
    ScaledClock,
    SystemClock,
    clock_seconds_of_work,
    seconds_of_work,
    shared_scaled_clock,
    sleep_for_work,
)

START = datetime(2026, 6, 1, 6, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "clock", [SystemClock(), ManualClock(START), ScaledClock(10.0, START)], ids=type
)
def test_every_clock_is_a_clock_and_gives_aware_utc(clock: Clock) -> None:
    assert isinstance(clock, Clock)
    now = clock.now()
    assert now.utcoffset() == timedelta(0)
    assert now.tzinfo is UTC


@pytest.mark.parametrize("make", [ManualClock, lambda start: ScaledClock(2.0, start)])
def test_naive_start_is_refused(make: type[ManualClock]) -> None:
    with pytest.raises(ValueError, match="naive"):
        make(datetime(2026, 6, 1, 6, 0))


# --- SystemClock ---------------------------------------------------------------------------


async def test_system_clock_follows_real_time() -> None:
    clock = SystemClock()
    before = datetime.now(UTC)
    start = clock.monotonic()
    await clock.sleep(0.02)
    assert clock.monotonic() - start >= 0.015
    assert before <= clock.now() <= datetime.now(UTC)


async def test_system_clock_sleep_until() -> None:
    clock = SystemClock()
    target = clock.now() + timedelta(seconds=0.03)
    await clock.sleep_until(target)
    assert clock.now() >= target
    started = time.monotonic()
    await clock.sleep_until(target - timedelta(hours=1))  # passed: at once
    await clock.sleep(-5)
    assert time.monotonic() - started < 0.5


async def test_system_clock_refuses_naive_deadline() -> None:
    with pytest.raises(ValueError, match="naive"):
        await SystemClock().sleep_until(datetime(2026, 1, 1))


# --- ManualClock ---------------------------------------------------------------------------


def test_manual_clock_stands_still_until_moved() -> None:
    clock = ManualClock(START.astimezone(timezone(timedelta(hours=2))))
    assert clock.now() == START
    assert clock.now().tzinfo is UTC
    assert clock.monotonic() == 0.0
    time.sleep(0.01)
    assert clock.now() == START
    clock.advance(90.5)
    assert clock.now() == START + timedelta(seconds=90.5)
    assert clock.monotonic() == 90.5
    clock.set(START + timedelta(hours=1))
    assert clock.now() == START + timedelta(hours=1)
    assert clock.monotonic() == 3600.0


def test_manual_clock_never_goes_back() -> None:
    clock = ManualClock(START)
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="forward"):
        clock.set(START - timedelta(microseconds=1))
    with pytest.raises(ValueError, match="forward"):
        clock.advance(float("nan"))
    assert clock.now() == START


async def test_sleepers_wake_in_deadline_order() -> None:
    clock = ManualClock(START)
    woken: list[tuple[str, datetime]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woken.append((name, clock.now()))

    tasks = [
        asyncio.create_task(sleeper(name, seconds))
        for name, seconds in [("c", 30), ("a", 10), ("d", 30), ("b", 20), ("late", 100)]
    ]
    await clock.settle()
    assert clock.sleeping == 5
    assert clock.next_deadline() == START + timedelta(seconds=10)

    clock.advance(30)
    await clock.settle()
    # Ordered by deadline, ties in the order they went to sleep; all see the new time.
    assert [name for name, _ in woken] == ["a", "b", "c", "d"]
    assert {at for _, at in woken} == {START + timedelta(seconds=30)}
    assert clock.sleeping == 1
    assert not tasks[-1].done()

    clock.advance(69.999)
    await clock.settle()
    assert not tasks[-1].done()
    clock.advance(0.001)  # exactly at the deadline
    await clock.settle()
    assert tasks[-1].done()
    assert clock.next_deadline() is None


async def test_sleep_until_uses_the_deadline_and_past_deadlines_return_at_once() -> None:
    clock = ManualClock(START)
    deadline = START + timedelta(minutes=5)
    task = asyncio.create_task(
        clock.sleep_until(deadline.astimezone(timezone(timedelta(hours=-5))))
    )
    await clock.settle()
    clock.set(deadline - timedelta(seconds=1))
    await clock.settle()
    assert not task.done()
    clock.set(deadline)
    await clock.settle()
    assert task.done()

    # Passed, now, zero and negative sleeps do not wait for the clock to move.
    await asyncio.wait_for(clock.sleep_until(START), timeout=1)
    await asyncio.wait_for(clock.sleep_until(clock.now()), timeout=1)
    await asyncio.wait_for(clock.sleep(0), timeout=1)
    await asyncio.wait_for(clock.sleep(-3), timeout=1)
    with pytest.raises(ValueError, match="NaN"):
        await clock.sleep(float("nan"))


async def test_a_cancelled_sleeper_is_forgotten() -> None:
    clock = ManualClock(START)
    cancelled = asyncio.create_task(clock.sleep(10))
    kept = asyncio.create_task(clock.sleep(20))
    await clock.settle()
    cancelled.cancel()
    await clock.settle()
    assert clock.sleeping == 1
    assert clock.next_deadline() == START + timedelta(seconds=20)
    clock.advance(20)
    await clock.settle()
    assert kept.done()
    assert cancelled.cancelled()


async def test_run_for_runs_a_periodic_task_once_per_period_over_a_whole_day() -> None:
    clock = ManualClock(START)
    ticks: list[datetime] = []

    async def every_30_s() -> None:
        while True:
            await clock.sleep(30)
            ticks.append(clock.now())

    task = asyncio.create_task(every_30_s())
    started = time.monotonic()
    await clock.run_for(86_400)
    task.cancel()

    assert time.monotonic() - started < 10  # a simulated day, in (well under) seconds
    assert len(ticks) == 2880
    assert ticks == [START + timedelta(seconds=30 * (i + 1)) for i in range(2880)]
    assert clock.now() == START + timedelta(days=1)
    assert clock.monotonic() == 86_400.0


async def test_run_until_interleaves_tasks_in_time_order() -> None:
    clock = ManualClock(START)
    log: list[tuple[str, float]] = []

    async def every(name: str, period: float) -> None:
        while True:
            await clock.sleep(period)
            log.append((name, clock.monotonic()))

    tasks = [asyncio.create_task(every("fast", 20)), asyncio.create_task(every("slow", 50))]
    await clock.run_until(START + timedelta(seconds=100))
    for task in tasks:
        task.cancel()
    assert log == [
        ("fast", 20),
        ("fast", 40),
        ("slow", 50),
        ("fast", 60),
        ("fast", 80),
        ("slow", 100),  # a tie: slow went to sleep first (at 50, fast at 80)
        ("fast", 100),
    ]
    with pytest.raises(ValueError, match="forward"):
        await clock.run_until(START)


def test_manual_clock_needs_at_least_one_settle_round() -> None:
    with pytest.raises(ValueError, match="settle_rounds"):
        ManualClock(START, settle_rounds=0)


# --- ScaledClock ---------------------------------------------------------------------------


class FakeRealTime:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_scaled_clock_runs_speed_times_faster_from_start() -> None:
    real = FakeRealTime()
    clock = ScaledClock(60.0, START, real_monotonic=real)
    assert clock.speed == 60.0
    assert clock.now() == START
    assert clock.monotonic() == 0.0
    real.t += 1.5
    assert clock.now() == START + timedelta(seconds=90)
    assert clock.monotonic() == 90.0


@pytest.mark.parametrize("speed", [0.0, -1.0, float("inf"), float("nan")])
def test_scaled_clock_refuses_a_bad_speed(speed: float) -> None:
    with pytest.raises(ValueError, match="speed"):
        ScaledClock(speed, START)


async def test_scaled_clock_sleeps_seconds_over_speed() -> None:
    clock = ScaledClock(1000.0, START)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await clock.sleep(50)  # 50 simulated seconds: 0.05 real
    real = loop.time() - started
    assert 0.04 <= real < 1.0
    assert clock.monotonic() >= 49.0


async def test_a_scaled_clock_sleep_lasts_while_its_time_source_stands_still() -> None:
    """A sleep is measured on the clock's own time source, not on the event loop's timers:
    while the source stands still (the e2e harness freezes simulated time while a plan is
    made) no sleeper wakes, however much real time passes. Before, `sleep(50)` at 1000x
    ended after 0.05 real s even with the clock standing still, and the poller's fixed-rate
    loop, trusting it, ran a round per 0.2 real s at one frozen instant, moving its schedule
    an interval on each time: after a few seconds' frozen full plan no surplus came for half
    a simulated hour (the e2e day's silences with the two-tier planner)."""
    real = FakeRealTime()
    clock = ScaledClock(1000.0, START, real_monotonic=real)
    sleeper = asyncio.ensure_future(clock.sleep(50))
    try:
        await asyncio.sleep(0.3)  # six times the sleep's 0.05 real s: the source stood still
        assert not sleeper.done()
        assert clock.monotonic() == 0.0
        real.t += 0.049  # 49 simulated s: not yet
        await asyncio.sleep(0.1)
        assert not sleeper.done()
        real.t += 0.001
        await asyncio.wait_for(sleeper, timeout=10)  # a bound on a failure only
        assert clock.now() >= START + timedelta(seconds=50)
    finally:
        sleeper.cancel()


async def test_scaled_clock_sleep_until_reaches_the_deadline() -> None:
    clock = ScaledClock(3600.0, START)
    target = START + timedelta(minutes=2)  # 1/30 s real
    await asyncio.wait_for(clock.sleep_until(target), timeout=2)
    assert clock.now() >= target
    await asyncio.wait_for(clock.sleep_until(START), timeout=1)  # passed: at once


def test_shared_scaled_clocks_agree_whenever_they_are_made() -> None:
    """Two processes (or a restarted one) given one speed, start and origin show one time."""
    start = datetime(2026, 6, 21, 4, 0, tzinfo=UTC)
    origin = time.time() - 10.0  # the run began 10 real s ago: 6000 simulated s at 600x
    first = shared_scaled_clock(600.0, start, origin)
    time.sleep(0.02)
    second = shared_scaled_clock(600.0, start, origin)  # "restarted" later
    a, b = first.now(), second.now()
    assert abs((a - b).total_seconds()) < 600.0 * 0.01  # read within 10 ms of each other
    assert timedelta(seconds=5900) < a - start < timedelta(seconds=6200)
    assert first.speed == 600.0


def test_scaled_clock_refuses_a_non_finite_real_start() -> None:
    with pytest.raises(ValueError, match="real_start"):
        ScaledClock(2.0, datetime(2026, 1, 1, tzinfo=UTC), real_start=float("nan"))


def test_settings_choose_real_or_shared_simulated_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.config import Settings
    from shared.service import clock_for

    for name in list(os.environ):
        if name.startswith("HWSCHED_"):
            monkeypatch.delenv(name)
    assert isinstance(clock_for(Settings()), SystemClock)
    monkeypatch.setenv("HWSCHED_SIM_CLOCK__SPEED", "100")
    monkeypatch.setenv("HWSCHED_SIM_CLOCK__START", "2026-06-21T06:00:00+02:00")
    monkeypatch.setenv("HWSCHED_SIM_CLOCK__ORIGIN", str(time.time()))
    clock = clock_for(Settings())
    assert isinstance(clock, ScaledClock)
    assert clock.speed == 100.0
    assert abs((clock.now() - datetime(2026, 6, 21, 4, 0, tzinfo=UTC)).total_seconds()) < 60
    monkeypatch.setenv("HWSCHED_SIM_CLOCK__START", "2026-06-21T06:00:00")  # naive: refused
    with pytest.raises(ValueError, match="timezone"):
        Settings()


async def test_work_time_outs_are_real_seconds_on_a_scaled_clock() -> None:
    """Accelerated time does not make devices or CPUs faster: work sleeps real seconds there,
    and the clock's own seconds elsewhere (a ManualClock still decides when they end)."""
    scaled = ScaledClock(1000.0, datetime(2026, 6, 21, tzinfo=UTC))
    began = time.monotonic()
    await sleep_for_work(scaled, 0.05)
    assert time.monotonic() - began >= 0.049  # 0.05 real s, not 50 us

    manual = ManualClock(datetime(2026, 6, 21, tzinfo=UTC))
    sleeper = asyncio.ensure_future(sleep_for_work(manual, 5.0))
    await asyncio.sleep(0.01)
    assert not sleeper.done()
    await manual.run_for(5.0)
    assert sleeper.done()


def test_work_at_accelerated_speed_counts_in_simulated_seconds() -> None:
    assert clock_seconds_of_work(ManualClock(START), 2.0) == 0.0
    assert clock_seconds_of_work(SystemClock(), 2.0) == 0.0
    assert clock_seconds_of_work(ScaledClock(1.0, START), 2.0) == 0.0
    assert clock_seconds_of_work(ScaledClock(0.5, START), 2.0) == 0.0  # slowed: no allowance
    assert clock_seconds_of_work(ScaledClock(600.0, START), 2.0) == pytest.approx(1198.0)
    assert seconds_of_work(300.0, 10.0) == pytest.approx(2990.0)
    assert seconds_of_work(1.0, 10.0) == 0.0
