"""One injectable clock, so that all time in the services comes from one place.

Services take a `Clock` and never call `datetime.now`, `time.monotonic` or `asyncio.sleep`
themselves. Three implementations:

* `SystemClock`: real time.
* `ManualClock`: tests. Time only moves when `advance` / `set` (or the async `run_for` /
  `run_until`, which step from deadline to deadline) is called; sleepers wake in deadline
  order, deterministically.
* `ScaledClock`: simulations. Time runs `speed` times faster than real time from `start`.

`now()` is always aware and in UTC.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

#: Longest single real sleep of `SystemClock.sleep_until`, s: it re-reads the wall clock
#: after each, so a wall-clock step (NTP, suspend) delays a wake-up by at most this.
MAX_WALL_SLEEP_S = 60.0


@runtime_checkable
class Clock(Protocol):
    """Where services get the time from."""

    def now(self) -> datetime:
        """The current time, aware, in UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (only differences mean anything)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds` of this clock's time (<= 0: just yield to the event loop)."""
        ...

    async def sleep_until(self, when: datetime) -> None:
        """Sleep until `now() >= when` (`when` aware); return at once if it has passed."""
        ...


def as_utc(when: datetime) -> datetime:
    """`when` in UTC; a naive datetime is refused because its meaning is a guess."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"naive datetime {when.isoformat()}: an aware datetime is needed")
    return when.astimezone(UTC)


class SystemClock:
    """Real time: the wall clock for `now`, the OS monotonic clock for the rest."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def sleep_until(self, when: datetime) -> None:
        target = as_utc(when)
        await asyncio.sleep(0)
        while True:  # re-read the wall clock: it may have been stepped meanwhile
            left = (target - self.now()).total_seconds()
            if left <= 0:
                return
            await asyncio.sleep(min(left, MAX_WALL_SLEEP_S))


class ManualClock:
    """A clock for tests: time stands still until the test moves it.

    `advance` / `set` jump to the target at once and wake every sleeper whose deadline
    has passed, in deadline order (ties: in the order they went to sleep); the woken tasks
    run at the event loop's next turns and see `now()` at the target.

    `run_for` / `run_until` instead step from deadline to deadline: at each, `now()` is
    that deadline, its sleepers are woken and the loop is given `settle_rounds` turns, so
    a task that sleeps again in a loop runs once per period, as in real time. That is how
    a whole simulated day runs in well under a second.
    """

    def __init__(self, start: datetime, *, settle_rounds: int = 20) -> None:
        if settle_rounds < 1:
            raise ValueError(f"settle_rounds must be >= 1, got {settle_rounds}")
        self._now = as_utc(start)
        self._monotonic = 0.0
        self._settle_rounds = settle_rounds
        self._sleepers: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    async def sleep(self, seconds: float) -> None:
        if math.isnan(seconds):
            raise ValueError("cannot sleep NaN seconds")
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        await self.sleep_until(self._now + timedelta(seconds=seconds))

    async def sleep_until(self, when: datetime) -> None:
        deadline = as_utc(when)
        if deadline <= self._now:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._order), future))
        await future

    def next_deadline(self) -> datetime | None:
        """The earliest deadline of a task still sleeping, or None."""
        self._drop_cancelled()
        return self._sleepers[0][0] if self._sleepers else None

    @property
    def sleeping(self) -> int:
        """How many tasks are sleeping on this clock."""
        return sum(1 for _, _, future in self._sleepers if not future.done())

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds` (>= 0) and wake the sleepers now due."""
        if not seconds >= 0:
            raise ValueError(f"time only moves forward: cannot advance {seconds} s")
        self.set(self._now + timedelta(seconds=seconds))

    def set(self, when: datetime) -> None:
        """Move time forward to `when` (not before now) and wake the sleepers now due."""
        target = as_utc(when)
        if target < self._now:
            raise ValueError(
                f"time only moves forward: {target.isoformat()} is before {self._now.isoformat()}"
            )
        self._monotonic += (target - self._now).total_seconds()
        self._now = target
        self._wake_due()

    async def run_for(self, seconds: float) -> None:
        """Let `seconds` pass deadline by deadline, letting woken tasks run at each."""
        if not seconds >= 0:
            raise ValueError(f"time only moves forward: cannot run for {seconds} s")
        await self.run_until(self._now + timedelta(seconds=seconds))

    async def run_until(self, when: datetime) -> None:
        """Let time pass until `when` deadline by deadline, letting woken tasks run at each."""
        target = as_utc(when)
        if target < self._now:
            raise ValueError(f"time only moves forward: {target.isoformat()} has passed")
        await self.settle()
        while (deadline := self.next_deadline()) is not None and deadline <= target:
            self.set(deadline)
            await self.settle()
        self.set(target)
        await self.settle()

    async def settle(self) -> None:
        """Give the event loop `settle_rounds` turns, so woken tasks run to their next wait."""
        for _ in range(self._settle_rounds):
            await asyncio.sleep(0)

    def _wake_due(self) -> None:
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    def _drop_cancelled(self) -> None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)


class ScaledClock:
    """Simulated time running `speed` times faster than real time, from `start`.

    `sleep(s)` sleeps until `now()` has moved `s` on (`s / speed` real seconds while real
    time runs); `monotonic()` counts simulated seconds. `real_monotonic` is where real time
    is read for `now()`, `monotonic()` and the sleeps (tests may inject one): the event
    loop's timers only pace the waiting, and a sleeper re-reads the clock when one fires, so
    a sleep never ends before the clock says it should, also when the source stands still
    for a while (a test freezing simulated time while a plan is made) or is stepped back.

    `real_start` is the reading of `real_monotonic` at which the clock shows `start`
    (default: the reading when it is made). Processes that share one simulated time (the
    stack on an accelerated clock, a service restarted mid-run) read the wall clock
    (`real_monotonic=time.time`) from one agreed `real_start`, so they all, restarted or
    not, show the same simulated time: see `shared_scaled_clock`.
    """

    def __init__(
        self,
        speed: float,
        start: datetime,
        *,
        real_monotonic: Callable[[], float] = time.monotonic,
        real_start: float | None = None,
    ) -> None:
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be a finite number > 0, got {speed}")
        if real_start is not None and not math.isfinite(real_start):
            raise ValueError(f"real_start must be a finite number, got {real_start}")
        self._speed = speed
        self._start = as_utc(start)
        self._real_monotonic = real_monotonic
        self._real_start = real_monotonic() if real_start is None else real_start

    @property
    def speed(self) -> float:
        return self._speed

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self.monotonic())

    def monotonic(self) -> float:
        return (self._real_monotonic() - self._real_start) * self._speed

    async def sleep(self, seconds: float) -> None:
        if not seconds > 0:  # also NaN: just yield
            await asyncio.sleep(0)
            return
        if math.isinf(seconds):  # for ever (no datetime holds it)
            await asyncio.get_running_loop().create_future()
        # measured on this clock, not on the event loop's: see the class docstring
        await self.sleep_until(self.now() + timedelta(seconds=seconds))

    async def sleep_until(self, when: datetime) -> None:
        target = as_utc(when)
        await asyncio.sleep(0)
        while True:  # a timer may fire early, or the time source have stood still: re-check
            left = (target - self.now()).total_seconds()
            if left <= 0:
                return
            await asyncio.sleep(left / self._speed)


def shared_scaled_clock(speed: float, start: datetime, origin: float) -> ScaledClock:
    """A simulated clock every process agrees on: it shows `start` at Unix time `origin`
    (seconds) and runs `speed` times faster than the wall clock from there (before
    `origin` it shows times before `start`). A process restarted mid-run picks up where
    the others are."""
    return ScaledClock(speed, start, real_monotonic=time.time, real_start=origin)


#: Real seconds of work (a poll of the devices, a plan, a broker round trip) that the
#: services' staleness limits allow for on an accelerated clock: see `clock_seconds_of_work`.
WORK_ALLOWANCE_S = 10.0


def seconds_of_work(speed: float, real_s: float) -> float:
    """What `real_s` seconds of work take longer in the seconds of a clock running `speed`
    times faster than real time: `real_s x (speed - 1)` when `speed > 1`, else 0 (in real
    time a limit already holds the work)."""
    return real_s * (speed - 1.0) if speed > 1.0 else 0.0


def clock_seconds_of_work(clock: Clock, real_s: float) -> float:
    """`seconds_of_work` on `clock`: on an accelerated `ScaledClock` a limit in clock seconds
    that stands for "late" (a surplus's or a plan's age) grows by this, so an accelerated
    healthy run on a busy machine is not taken for a broken one; on the other clocks 0."""
    speed = clock.speed if isinstance(clock, ScaledClock) else 1.0
    return seconds_of_work(speed, real_s)


async def sleep_for_work(clock: Clock, seconds: float) -> None:
    """Sleep `seconds` that bound *work*: a device's answer, a broker's acknowledgement, a
    planner's CPU time. Simulated time does not make devices, networks or CPUs faster, so on
    a `ScaledClock` these are real seconds; on the other clocks, the clock's own (on a
    `ManualClock` a test still decides when a time-out happens)."""
    if isinstance(clock, ScaledClock):
        await asyncio.sleep(max(0.0, seconds))
    else:
        await clock.sleep(seconds)
