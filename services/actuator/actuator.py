"""The actuator service: applies the scheduler's commands, overrides and its fallback to sockets.

The decisions are `services.actuator.core` (pure); this module is the I/O around them.

* Each Energy Socket has its own task with its own `V1Client`. Every
  `actuator_read_interval_s` (and at once when a command or override arrives) it reads the
  relay (`GET /api/v1/state`), feeds the read to the core (a change the actuator did not make
  is a hand switch), asks the core what to do and, only when the desired state differs from
  the one just read, switches (`PUT /api/v1/state`). It reads the relay itself rather than
  taking the poller's `power_on`: a hand switch can only be told from its own switch by
  comparing a fresh read with what the actuator itself last set, and the poller's readings
  are up to a poll interval old (a switch the actuator just made would look like a hand
  switch back). The poller's measurements are used for power (energy, 'full').
* It subscribes to each socket's `set`, `override/set`, its own retained `<socket>` and
  `<socket>/override` (read back at start: last switch times and overrides survive a
  restart), the socket's `measurement`, the P1 meter's (its `booted_at`: a power cut),
  and `plan`, `books`, `surplus`.
* With batteries configured, one more task applies the plan's battery mode on the P1
  meter's `/api/batteries` (`services.actuator.battery`): `batteries/set`,
  `batteries/override/set` and its own retained `batteries` are its subscriptions.
* At start it waits for the broker (at most `restore_timeout_s`) and then `restore_wait_s`
  for the retained messages, before it reads or switches anything.
* Every incoming message is bounded in size and rate (a token bucket per topic kind and
  socket): beyond either it is a counted, rate-limited logged drop; an unusable payload is a
  `MessageError` (counted by the runtime). Each message yields to the event loop, so a flood
  cannot starve the socket tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from services.actuator.battery import (
    BatteryClientFactory,
    BatteryCore,
    BatteryOptions,
    BatteryShell,
    p1_client_factory,
)
from services.actuator.core import ActuatorCore, ActuatorOptions, Decision
from services.poller.poller import error_kind
from shared.clock import Clock, ScaledClock, sleep_for_work
from shared.config import DevicesConfig, SocketConfig
from shared.homewizard import SocketState as RelayState
from shared.homewizard import SwitchLockedError, client_for
from shared.messages import (
    BatteryCommand,
    BatteryOverrideRequest,
    BatteryState,
    DeviceMeasurement,
    EnergyBooks,
    HouseSurplus,
    Message,
    MessageError,
    OverrideRequest,
    OverrideState,
    PlanMessage,
    SocketCommand,
    SocketState,
    parse_message,
)
from shared.service import Handler, Service, run_service, with_timeout

__all__ = [
    "SERVICE_NAME",
    "Actuator",
    "ClientFactory",
    "RelayClient",
    "ShellOptions",
    "TokenBucket",
    "app",
    "default_client_factory",
    "main",
]

SERVICE_NAME = "actuator"

M = TypeVar("M", bound=Message)


class RelayClient(Protocol):
    """What the actuator needs of a socket's client (`V1Client`, or a test fake)."""

    async def socket_state(self) -> RelayState: ...

    async def set_socket_state(
        self, *, power_on: bool | None = None, switch_lock: bool | None = None
    ) -> RelayState: ...


#: Makes the client of one socket; used as `async with factory(socket) as client`.
ClientFactory = Callable[[SocketConfig], AbstractAsyncContextManager[RelayClient]]


class TokenBucket:
    """At most `burst` at once, refilled at `per_s` per second (monotonic clock seconds)."""

    def __init__(self, burst: float, per_s: float, now: float) -> None:
        self.burst = burst
        self.per_s = per_s
        self._tokens = burst
        self._at = now

    def take(self, now: float) -> bool:
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.per_s)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


@dataclass(frozen=True)
class Limit:
    """Size and rate bound of one kind of incoming message (per socket where per socket)."""

    max_bytes: int
    burst: float
    per_s: float


def _default_limits() -> dict[str, Limit]:
    return {
        "command": Limit(4_096, 20, 2.0),
        "override_request": Limit(4_096, 10, 1.0),
        "own_state": Limit(8_192, 10, 1.0),
        "own_override": Limit(8_192, 10, 1.0),
        "measurement": Limit(16_384, 20, 2.0),
        "meter": Limit(16_384, 20, 2.0),
        "surplus": Limit(65_536, 20, 2.0),
        "plan": Limit(8 * 1024 * 1024, 5, 0.5),
        "books": Limit(1024 * 1024, 5, 0.5),
        "battery_command": Limit(4_096, 20, 2.0),
        "battery_override": Limit(4_096, 10, 1.0),
        "own_battery": Limit(8_192, 10, 1.0),
    }


@dataclass(frozen=True)
class ShellOptions:
    """Timings and bounds of the service shell (tests shorten them)."""

    #: Seconds between two reads of a socket's relay (the `actuator_read_interval_s` setting).
    read_interval_s: float = 10.0
    #: Longest one read / one switch may take, s.
    read_timeout_s: float = 5.0
    switch_timeout_s: float = 8.0
    #: At start: wait at most this long for the broker before acting without restored state.
    restore_timeout_s: float = 30.0
    #: ... then this long for the retained messages (less when all have come).
    restore_wait_s: float = 2.0
    #: After an unexpected error in a socket's task, wait this long, s.
    error_pause_s: float = 5.0
    limits: dict[str, Limit] = field(default_factory=_default_limits)


def default_client_factory(options: ShellOptions) -> ClientFactory:
    """The real `V1Client` (a quarter of the read timeout per attempt: it retries reads)."""
    timeout_s = max(0.3, options.read_timeout_s / 4)

    def make(socket: SocketConfig) -> AbstractAsyncContextManager[RelayClient]:
        return client_for(socket, timeout_s=timeout_s)

    return make


class Actuator:
    """The actuator inside a `Service`: subscriptions, restore, one task per socket."""

    def __init__(
        self,
        devices: DevicesConfig,
        service: Service,
        *,
        options: ActuatorOptions | None = None,
        shell: ShellOptions | None = None,
        client_factory: ClientFactory | None = None,
        battery_factory: BatteryClientFactory | None = None,
        battery_options: BatteryOptions | None = None,
    ) -> None:
        self.service = service
        self.clock: Clock = service.clock
        self.shell = shell if shell is not None else ShellOptions()
        self.log = service.log
        settings = service.settings
        self.core = ActuatorCore(
            devices.sockets,
            service,
            topics=service.topics,
            counters=service.counters,
            tz=settings.tz,
            boundary=settings.daily_boundary,
            started_at=self.clock.now(),
            options=options if options is not None else ActuatorOptions.from_settings(settings),
            log=self.log,
            speed=self.clock.speed if isinstance(self.clock, ScaledClock) else 1.0,
        )
        self._p1_slug = devices.p1.slug
        self._factory = client_factory or default_client_factory(self.shell)
        # the batteries (services/actuator/battery.py): with the P1 meter's own token
        self.battery: BatteryShell | None = None
        if devices.batteries:
            token = devices.p1.battery_token
            if battery_factory is None and token is not None:
                battery_factory = p1_client_factory(
                    devices.p1, token, settings, timeout_s=max(0.5, self.shell.switch_timeout_s / 4)
                )
            core = BatteryCore(
                service,
                topics=service.topics,
                counters=service.counters,
                tz=settings.tz,
                boundary=settings.daily_boundary,
                started_at=self.clock.now(),
                has_token=token is not None,
                options=battery_options or BatteryOptions.from_settings(settings),
                log=self.log,
                speed=self.core.speed,
            )
            self.battery = BatteryShell(
                core,
                service,
                battery_factory,
                read_interval_s=self.shell.read_interval_s,
                timeout_s=self.shell.switch_timeout_s,
                error_pause_s=self.shell.error_pause_s,
            )
        self._wake: dict[str, asyncio.Event] = {slug: asyncio.Event() for slug in self.core.sockets}
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._restore_seen: set[tuple[str, str]] = set()
        self._subscribe()

    # --- subscriptions ----------------------------------------------------------------------

    def _subscribe(self) -> None:
        t = self.service.topics
        sub = self.service.subscribe
        for slug in self.core.sockets:
            sub(t.socket_set(slug), self._guard("command", slug, self._on_command))
            sub(t.override_set(slug), self._guard("override_request", slug, self._on_override))
            sub(t.socket_state(slug), self._guard("own_state", slug, self._on_own_state))
            sub(t.override(slug), self._guard("own_override", slug, self._on_own_override))
            sub(t.measurement(slug), self._guard("measurement", slug, self._on_measurement))
        sub(t.measurement(self._p1_slug), self._guard("meter", "", self._on_meter))
        sub(t.plan(), self._guard("plan", "", self._on_plan))
        sub(t.books(), self._guard("books", "", self._on_books))
        sub(t.surplus(), self._guard("surplus", "", self._on_surplus))
        if self.battery is not None:
            sub(t.batteries_set(), self._guard("battery_command", "", self._on_battery_command))
            sub(
                t.batteries_override_set(),
                self._guard("battery_override", "", self._on_battery_override),
            )
            sub(t.batteries(), self._guard("own_battery", "", self._on_own_battery))

    def _guard(self, kind: str, slug: str, handle: Callable[[str, bytes], None]) -> Handler:
        """A handler bounded in rate and size; yields to the loop on every message."""
        limit = self.shell.limits[kind]
        counters = self.service.counters

        async def handler(topic: str, payload: bytes) -> None:
            await asyncio.sleep(0)  # a flood of messages never starves the socket tasks
            key = (kind, slug)
            bucket = self._buckets.get(key)
            now_m = self.clock.monotonic()
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(limit.burst, limit.per_s, now_m)
            # too large first: an oversized payload does not use up a legitimate one's token
            if len(payload) > limit.max_bytes:
                counters.inc("messages_too_large")
                raise MessageError(f"(payload): {len(payload)} bytes, at most {limit.max_bytes}")
            if not bucket.take(now_m):
                counters.inc("messages_rate_limited")
                self.service.rate_limited.log(
                    f"rate:{kind}:{slug}",
                    logging.WARNING,
                    "too many messages on %s: dropped (at most %g per s)",
                    topic,
                    limit.per_s,
                )
                return
            handle(slug, payload)

        return handler

    def _wake_socket(self, slug: str) -> None:
        self._wake[slug].set()

    def _wake_all(self) -> None:
        for event in self._wake.values():
            event.set()

    def _on_command(self, slug: str, payload: bytes) -> None:
        command = parse_message(SocketCommand, payload)
        if self.core.on_command(slug, command, self.clock.now()):
            self._wake_all() if self.core.fallback_active else self._wake_socket(slug)

    def _on_override(self, slug: str, payload: bytes) -> None:
        request = parse_message(OverrideRequest, payload)
        self.core.on_override_request(slug, request, self.clock.now())
        self._wake_socket(slug)

    def _on_own_state(self, slug: str, payload: bytes) -> None:
        if self.core.restore_state(slug, parse_message(SocketState, payload), self.clock.now()):
            self._restore_seen.add(("state", slug))

    def _on_own_override(self, slug: str, payload: bytes) -> None:
        message = parse_message(OverrideState, payload)
        if self.core.restore_override(slug, message, self.clock.now()):
            self._restore_seen.add(("override", slug))

    def _on_measurement(self, slug: str, payload: bytes) -> None:
        measurement = parse_message(DeviceMeasurement, payload)
        self.core.on_measurement(slug, measurement, self.clock.now())

    def _on_meter(self, _slug: str, payload: bytes) -> None:
        self.core.on_meter(parse_message(DeviceMeasurement, payload), self.clock.now())

    def _on_plan(self, _slug: str, payload: bytes) -> None:
        plan = parse_message(PlanMessage, payload)
        if self.core.on_plan(plan, self.clock.now()):
            self._wake_all()

    def _on_books(self, _slug: str, payload: bytes) -> None:
        self.core.on_books(parse_message(EnergyBooks, payload), self.clock.now())

    def _on_surplus(self, _slug: str, payload: bytes) -> None:
        self.core.on_surplus(parse_message(HouseSurplus, payload), self.clock.now())

    def _on_battery_command(self, _slug: str, payload: bytes) -> None:
        assert self.battery is not None
        if self.battery.core.on_command(parse_message(BatteryCommand, payload), self.clock.now()):
            self.battery.wake.set()

    def _on_battery_override(self, _slug: str, payload: bytes) -> None:
        assert self.battery is not None
        request = parse_message(BatteryOverrideRequest, payload)
        self.battery.core.on_override(request, self.clock.now())
        self.battery.wake.set()

    def _on_own_battery(self, _slug: str, payload: bytes) -> None:
        assert self.battery is not None
        message = parse_message(BatteryState, payload)
        if self.battery.core.restore_state(message, self.clock.now()):
            self._restore_seen.add(("battery", ""))

    # --- running ------------------------------------------------------------------------

    async def run(self) -> None:
        """Restore, then control every socket until cancelled."""
        if not self.core.sockets:
            self.log.warning("no Energy Sockets in the devices file: nothing to control")
        await self._restore()
        self.log.info(
            "controlling %d sockets (read every %g s, switch interval %g s, fallback after %g s)",
            len(self.core.sockets),
            self.shell.read_interval_s,
            self.core.options.switch_interval_s,
            self.core.silence_s,
        )
        async with asyncio.TaskGroup() as group:
            for slug in self.core.sockets:
                group.create_task(self._socket_task(slug), name=f"actuate-{slug}")
            if self.battery is not None:
                group.create_task(self.battery.run(), name="actuate-batteries")

    async def _restore(self) -> None:
        """Wait for the broker and the retained state (bounded), then start deciding."""
        try:
            await with_timeout(
                self.clock, self.shell.restore_timeout_s, self.service.wait_connected(), work=True
            )
        except TimeoutError:
            self.log.warning(
                "no broker after %g s: starting without the retained state (last switch "
                "times and overrides from before are not known)",
                self.shell.restore_timeout_s,
            )
        else:
            wanted = {(k, s) for s in self.core.sockets for k in ("state", "override")}
            if self.battery is not None:
                wanted.add(("battery", ""))
            # waiting for the broker's retained messages: work time (see sleep_for_work)
            step = min(0.05, self.shell.restore_wait_s)
            for _ in range(max(1, math.ceil(self.shell.restore_wait_s / step))):
                if wanted <= self._restore_seen:
                    break
                await sleep_for_work(self.clock, step)
        self.core.finish_restore(self.clock.now())
        if self.battery is not None:
            self.battery.core.finish_restore()

    async def _socket_task(self, slug: str) -> None:
        """Keep a client for the socket and run its cycle; never ends on an error."""
        config = self.core.sockets[slug].config
        while True:
            try:
                async with self._factory(config) as client:
                    while True:
                        await self._cycle(slug, client)
                        await self._pause(slug)
            except Exception as err:  # a bug or a library surprise: counted, logged, retried
                self.service.counters.inc("actuator_errors")
                self.service.rate_limited.log(
                    f"error:{slug}",
                    logging.ERROR,
                    "%s: actuator error: %r",
                    config.device_name,
                    err,
                )
                await self.clock.sleep(self.shell.error_pause_s)

    async def _pause(self, slug: str) -> None:
        """Until the next read: the read interval, an earlier due time, or a wake-up."""
        now = self.clock.now()
        delay = self.shell.read_interval_s
        due = self.core.next_wake(slug, now)
        if due is not None:
            delay = min(delay, max(0.0, (due - now).total_seconds()) + 0.01)
        wake = self._wake[slug]
        if not wake.is_set():
            with contextlib.suppress(TimeoutError):
                await with_timeout(self.clock, delay, wake.wait())
        wake.clear()

    async def _cycle(self, slug: str, client: RelayClient) -> None:
        core = self.core
        config = core.sockets[slug].config
        core.tick(self.clock.now())
        try:
            relay = await with_timeout(
                self.clock, self.shell.read_timeout_s, client.socket_state(), work=True
            )
        except Exception as err:
            kind = error_kind(err)
            core.read_failed(slug)
            self.service.counters.inc("reads_failed")
            self.service.counters.inc(f"reads_failed_{kind}")
            self.service.rate_limited.log(
                f"read:{slug}",
                logging.WARNING,
                "%s: cannot read the relay (%s): %s",
                config.device_name,
                kind,
                str(err) or type(err).__name__,
            )
        else:
            self.service.rate_limited.reset(f"read:{slug}")
            core.observe(slug, relay.power_on, relay.switch_lock, self.clock.now())
        now = self.clock.now()
        decision = core.step(slug, now)
        if decision.switch_to is not None:
            await self._switch(slug, client, decision)
            now = self.clock.now()
            decision = core.decide(slug, now)
        core.publish_state(slug, now, decision)

    async def _switch(self, slug: str, client: RelayClient, decision: Decision) -> None:
        core = self.core
        name = core.sockets[slug].config.device_name
        target = decision.switch_to
        assert target is not None
        try:
            after = await with_timeout(
                self.clock,
                self.shell.switch_timeout_s,
                client.set_socket_state(power_on=target),
                work=True,
            )
        except SwitchLockedError:
            core.switch_locked(slug, self.clock.now())
            self.log.warning("%s: refused to switch off: switch_lock is on", name)
        except Exception as err:
            retry_at = core.switch_failed(slug, decision, self.clock.now())
            kind = error_kind(err)
            self.service.counters.inc(f"switch_failed_{kind}")
            self.service.rate_limited.log(
                f"switch:{slug}",
                logging.WARNING,
                "%s: switching %s failed (%s): %s; read again, retry from %s",
                name,
                "on" if target else "off",
                kind,
                str(err) or type(err).__name__,
                retry_at.isoformat(timespec="seconds"),
            )
        else:
            self.service.rate_limited.reset(f"switch:{slug}")
            core.switched(slug, decision, self.clock.now(), after.power_on, after.switch_lock)


# --- the service ----------------------------------------------------------------------------


async def app(service: Service, devices: DevicesConfig) -> None:
    """The actuator's work inside the service runtime."""
    settings = service.settings
    shell = ShellOptions(
        read_interval_s=settings.actuator_read_interval_s,
        read_timeout_s=min(5.0, max(1.0, settings.actuator_read_interval_s)),
    )
    await Actuator(devices, service, shell=shell).run()


def main() -> int:
    """`python -m services.actuator`: settings from config/settings.toml and HWSCHED_* variables."""
    return run_service(SERVICE_NAME, app)
