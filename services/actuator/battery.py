"""The actuator's battery control: the plan's battery mode on the P1 meter's `/api/batteries`.

The batteries have no power setpoint: HomeWizard's P1 meter steers them all together by a
`mode` (`zero`, `to_full`, `standby`) and, in `zero`, `permissions` (`charge_allowed`,
`discharge_allowed`). The planner's five modes map onto them (`DEVICE_MODES`):

| plan mode        | device mode | permissions                            |
|------------------|-------------|----------------------------------------|
| `zero`           | `zero`      | `charge_allowed`, `discharge_allowed`  |
| `charge_only`    | `zero`      | `charge_allowed`                       |
| `discharge_only` | `zero`      | `discharge_allowed`                    |
| `standby`        | `standby`   | none (`zero` with none reads `standby`)|
| `to_full`        | `to_full`   | none (read-only there)                 |

and back (`plan_mode`); `predictive` (HomeWizard's cloud mode) or a newer mode is no plan
mode. A change is sent one field per request (`next_request`): `{"mode": ...}` first when the
device is not in the right mode, then `{"permissions": [...]}`; that works on every firmware
(permissions came with API 2.2) and never combines `to_full` with permissions, which the
device refuses. A device without permissions (API 2.1) cannot do `charge_only` /
`discharge_only`: `zero` stands in (counted, logged).

What the batteries should be in now (`BatteryCore.desired`), first that applies:

1. no P1 token (`user_info` of the P1 meter): nothing; the batteries are left alone
   (`controlled_by: none`), and the scheduler plans `zero` throughout;
2. a mode set in the HomeWizard app (a change the actuator did not make): respected like a
   hand switch, until the next daily boundary or a person's `{"state": "auto"}` on
   `<base>/batteries/override/set` (`controlled_by: app`);
3. the scheduler's latest `BatteryCommand` while valid (`valid_until`) and fresh (less than
   `fallback_after_s` old, plus the allowance for work on an accelerated clock, as the
   sockets');
4. right after start, before any command: nothing yet (`start_grace_s`);
5. else `zero` (`controlled_by: fallback`): the scheduler has fallen silent.

A change is made only when the device's mode differs, at most once per `switch_interval_s`
from the last change (the actuator's or the app's, remembered across restarts through the
retained `BatteryState`), and not before the retry time after a failed request. `to_full`
returns to `zero` by itself once the batteries are full: that is no person's doing, and the
actuator does not start it again while the same command holds. On shutdown the batteries
go back to `zero` (unless a person holds them in another mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

from services.poller.poller import error_kind
from shared.clock import WORK_ALLOWANCE_S, Clock, seconds_of_work
from shared.config import P1Config, Settings
from shared.daytime import next_boundary
from shared.homewizard import BatteriesState, p1_v2_client
from shared.messages import BatteryCommand, BatteryOverrideRequest, BatteryState, MessageError
from shared.planning.problem import BatteryMode
from shared.service import Counters, Publisher, RateLimitedLog, with_timeout
from shared.topics import Topics

__all__ = [
    "DEVICE_MODES",
    "BatteryClient",
    "BatteryClientFactory",
    "BatteryCore",
    "BatteryDecision",
    "BatteryDesire",
    "BatteryOptions",
    "BatteryShell",
    "next_request",
    "plan_mode",
]

CHARGE = "charge_allowed"
DISCHARGE = "discharge_allowed"
BOTH = (CHARGE, DISCHARGE)
#: The plan's modes on the device: (mode, permissions).
DEVICE_MODES: dict[BatteryMode, tuple[str, tuple[str, ...]]] = {
    "zero": ("zero", BOTH),
    "charge_only": ("zero", (CHARGE,)),
    "discharge_only": ("zero", (DISCHARGE,)),
    "standby": ("standby", ()),
    "to_full": ("to_full", ()),
}
ControlledBy = Literal["plan", "app", "fallback", "none"]
Blocked = Literal["unknown", "interval", "retry"]
_MAX_TEXT = 500


def plan_mode(device: BatteriesState) -> BatteryMode | None:
    """The plan's mode the device is in (None: `predictive` or a mode hwsched does not know)."""
    if device.mode in ("to_full", "standby"):
        return "to_full" if device.mode == "to_full" else "standby"
    if device.mode != "zero":
        return None
    if device.permissions is None:  # API 2.1: no permissions, zero is zero
        return "zero"
    charge, discharge = CHARGE in device.permissions, DISCHARGE in device.permissions
    if charge and discharge:
        return "zero"
    if charge:
        return "charge_only"
    return "discharge_only" if discharge else "standby"


def supported(target: BatteryMode, device: BatteriesState) -> BatteryMode:
    """`target`, or `zero` where the device has no permissions to make it with."""
    if device.permissions is None and target in ("charge_only", "discharge_only"):
        return "zero"
    return target


def next_request(target: BatteryMode, device: BatteriesState) -> dict[str, object]:
    """The next `PUT /api/batteries` body (one field) towards `target` from `device`."""
    mode, permissions = DEVICE_MODES[target]
    if mode != "zero":
        return {"mode": mode}
    if device.mode != "zero" or device.permissions is None:
        return {"mode": "zero"}
    return {"permissions": list(permissions)}


@dataclass(frozen=True)
class BatteryOptions:
    """The battery control's parameters (the switch interval is a setting)."""

    switch_interval_s: float = 300.0
    #: A command older than this is no longer fresh (the socket fallback's `fallback_after_s`).
    fallback_after_s: float = 900.0
    #: ... plus, on an accelerated clock, this many real s of work (`seconds_of_work`), as
    #: the sockets' (`ActuatorOptions.work_allowance_s`); nothing at real speed.
    work_allowance_s: float = WORK_ALLOWANCE_S
    #: After start, before any command: leave the batteries as they are this long, s.
    start_grace_s: float = 120.0
    retry_min_s: float = 10.0
    retry_max_s: float = 300.0
    max_future_s: float = 120.0

    @classmethod
    def from_settings(cls, settings: Settings) -> BatteryOptions:
        return cls(
            switch_interval_s=float(settings.switch_interval_s),
            fallback_after_s=float(settings.fallback_after_s),
            retry_min_s=max(1.0, settings.actuator_read_interval_s),
        )


@dataclass(frozen=True)
class BatteryDesire:
    """The mode the batteries should be in now (None: leave them), who says so and why."""

    mode: BatteryMode | None
    controlled_by: ControlledBy
    reason: str


@dataclass(frozen=True)
class BatteryDecision:
    desire: BatteryDesire
    #: Change to this now (None: nothing to do, or blocked).
    switch_to: BatteryMode | None = None
    blocked: Blocked | None = None
    held_until: datetime | None = None


@dataclass
class _Hold:
    until: datetime
    seen: str
    set_at: datetime


def _describe(device: BatteriesState) -> str:
    perms = "" if device.permissions is None else f" [{', '.join(device.permissions)}]"
    return f"{device.mode}{perms}"


class BatteryCore:
    """What the actuator knows of the batteries, and its decisions (pure: `now` is given)."""

    def __init__(
        self,
        publisher: Publisher,
        *,
        topics: Topics,
        counters: Counters,
        tz: ZoneInfo,
        boundary: time,
        started_at: datetime,
        has_token: bool,
        options: BatteryOptions | None = None,
        log: logging.Logger | None = None,
        speed: float = 1.0,
    ) -> None:
        self.options = options if options is not None else BatteryOptions()
        #: Simulated seconds per real second (an accelerated run).
        self.speed = speed
        self.has_token = has_token
        self.tz = tz
        self.boundary = boundary
        self.started_at = started_at
        self.restoring = True
        self.command: BatteryCommand | None = None
        #: The device as last read (None: unknown, or the last read failed).
        self.device: BatteriesState | None = None
        #: The plan mode the batteries are in as far as the actuator knows (its own changes
        #: and the ones it saw).
        self.expected: BatteryMode | None = None
        self.expected_known = False
        self.hold: _Hold | None = None
        self.last_change_at: datetime | None = None
        self.last_change_reason: str | None = None
        self.failures = 0
        self.retry_at: datetime | None = None
        #: `to_full` ran until full and the device went back to `zero` by itself.
        self.to_full_done = False
        self.unsupported_logged = False
        self._published: tuple[object, ...] | None = None
        self._publisher = publisher
        self._topics = topics
        self._counters = counters
        self._log = log if log is not None else logging.getLogger("hwsched.actuator")

    # --- incoming -------------------------------------------------------------------------

    def _not_future(self, when: datetime, now: datetime, field: str) -> None:
        if (when - now).total_seconds() > self.options.max_future_s:
            raise MessageError(f"{field}: {when.isoformat()} is in the future", field)

    def on_command(self, command: BatteryCommand, now: datetime) -> bool:
        """The scheduler's command; True when it is taken (MessageError: a counted drop)."""
        self._not_future(command.timestamp, now, "timestamp")
        old = self.command
        if old is not None and command.timestamp < old.timestamp:
            self._counters.inc("battery_commands_older_ignored")
            return False
        if old is None or old.mode != command.mode:
            self.to_full_done = False
        self.command = command
        self._counters.inc("battery_commands")
        return True

    def on_override(self, request: BatteryOverrideRequest, now: datetime) -> None:
        """`<base>/batteries/override/set`: `auto` hands the batteries back to the plan."""
        if self.hold is not None:
            self._counters.inc("battery_holds_cleared")
            self._log.info("batteries: back to the plan (auto), were %s", self.hold.seen)
        self.hold = None
        del now

    def restore_state(self, message: BatteryState, now: datetime) -> bool:
        """The retained `BatteryState` from before a restart (only while restoring)."""
        if not self.restoring:
            return False
        if message.last_change_at is not None:
            self._not_future(message.last_change_at, now, "last_change_at")
        if message.held_until is not None and message.held_until - now > timedelta(days=2):
            raise MessageError("held_until: more than 2 days ahead", "held_until")
        if message.last_change_at is not None and (
            self.last_change_at is None or message.last_change_at > self.last_change_at
        ):
            self.last_change_at = message.last_change_at
            self.last_change_reason = message.last_change_reason
        if (
            message.controlled_by == "app"
            and message.held_until is not None
            and message.held_until > now
        ):
            seen = message.device_mode or "another mode"
            self.hold = _Hold(message.held_until, seen, message.last_change_at or now)
        if not self.expected_known and message.mode is not None:
            self.expected, self.expected_known = message.mode, True
        self._counters.inc("battery_state_restored")
        return True

    def finish_restore(self) -> None:
        self.restoring = False

    # --- reading the device -----------------------------------------------------------------

    def observe(self, device: BatteriesState, now: datetime) -> None:
        """A read of `/api/batteries`: a change the actuator did not make is a person's."""
        self.device = device
        seen = plan_mode(device)
        if not self.expected_known:
            self.expected, self.expected_known = seen, True
            return
        if seen == self.expected:
            return
        if self.expected == "to_full" and seen == "zero":
            self.expected = "zero"
            self.to_full_done = True
            self._counters.inc("battery_to_full_done")
            self._log.info("batteries: full, back in zero by themselves")
            return
        self.expected = seen
        self.last_change_at = now
        self.last_change_reason = f"app: set to {_describe(device)}"[:_MAX_TEXT]
        self._counters.inc("battery_app_changes")
        wanted = self.desired(now)
        if wanted.mode is not None and wanted.mode == seen:
            self._log.info("batteries: set to %s in the app, as wanted", _describe(device))
            return
        until = next_boundary(now, self.tz, self.boundary)
        self.hold = _Hold(until, _describe(device), now)
        self._log.info(
            "batteries: set to %s in the HomeWizard app: held until %s (or auto)",
            _describe(device),
            until.astimezone(self.tz).isoformat(timespec="minutes"),
        )

    def read_failed(self) -> None:
        self.device = None

    # --- deciding -------------------------------------------------------------------------------

    def _fresh(self, command: BatteryCommand, now: datetime) -> bool:
        age = (now - command.timestamp).total_seconds()
        valid = command.valid_until is None or command.valid_until > now
        limit = self.options.fallback_after_s
        limit += seconds_of_work(self.speed, self.options.work_allowance_s)
        return valid and age < limit

    def desired(self, now: datetime) -> BatteryDesire:
        """What the batteries should be in now (see the module docstring for the order)."""
        if not self.has_token:
            return BatteryDesire(None, "none", "no P1 token: the batteries are left alone")
        hold = self.hold
        if hold is not None and hold.until > now:
            until = hold.until.astimezone(self.tz).strftime("%H:%M")
            return BatteryDesire(None, "app", f"set to {hold.seen} in the app: held to {until}")
        command = self.command
        if command is not None and self._fresh(command, now):
            return BatteryDesire(command.mode, "plan", command.reason)
        grace = timedelta(seconds=self.options.start_grace_s)
        if command is None and now < self.started_at + grace:
            return BatteryDesire(None, "plan", "waiting for the scheduler")
        return BatteryDesire("zero", "fallback", "no valid command from the scheduler")

    def decide(self, now: datetime) -> BatteryDecision:
        """Whether to change the mode now (pure: changes nothing)."""
        desire = self.desired(now)
        target = desire.mode
        if target is None:
            return BatteryDecision(desire)
        device = self.device
        if device is None:
            return BatteryDecision(desire, blocked="unknown")
        target = supported(target, device)
        current = plan_mode(device)
        if current == target or (target == "to_full" and self.to_full_done and current == "zero"):
            return BatteryDecision(desire)
        if self.retry_at is not None and now < self.retry_at:
            return BatteryDecision(desire, blocked="retry", held_until=self.retry_at)
        if self.last_change_at is not None:
            free_at = self.last_change_at + timedelta(seconds=self.options.switch_interval_s)
            if now < free_at:
                return BatteryDecision(desire, blocked="interval", held_until=free_at)
        return BatteryDecision(desire, switch_to=target)

    def next_wake(self, now: datetime) -> datetime | None:
        times = [t for t in (self.retry_at, self.hold.until if self.hold else None) if t]
        if self.last_change_at is not None:
            times.append(self.last_change_at + timedelta(seconds=self.options.switch_interval_s))
        if self.command is not None and self.command.valid_until is not None:
            times.append(self.command.valid_until)
        times.append(self.started_at + timedelta(seconds=self.options.start_grace_s))
        future = [t for t in times if t > now]
        return min(future) if future else None

    def shutdown_target(self) -> BatteryMode | None:
        """`zero` when the batteries should go back to it on shutdown, else None."""
        if not self.has_token or self.device is None or self.hold is not None:
            return None
        return "zero" if plan_mode(self.device) != "zero" else None

    # --- results ----------------------------------------------------------------------------

    def switched(
        self, target: BatteryMode, desire: BatteryDesire, device: BatteriesState, now: datetime
    ) -> None:
        """The requests towards `target` were made; `device` is what it answered."""
        before = self.expected
        self.device = device
        self.expected, self.expected_known = plan_mode(device), True
        self.failures = 0
        self.retry_at = None
        self.last_change_at = now
        why = f"{desire.controlled_by}: {target} ({desire.reason})"
        self.last_change_reason = why[:_MAX_TEXT]
        if target != "to_full":
            self.to_full_done = False
        self._counters.inc("battery_switches")
        self._counters.inc(f"battery_switches_{desire.controlled_by}")
        self._log.info(
            "batteries: %s -> %s (%s: %s)", before, target, desire.controlled_by, desire.reason
        )
        if self.expected != target:
            self._counters.inc("battery_switch_mismatch")
            self._log.warning(
                "batteries: asked for %s, the P1 meter reports %s", target, _describe(device)
            )

    def switch_failed(self, now: datetime) -> datetime:
        """A request failed (its outcome unknown): read again; the retry time."""
        self.failures += 1
        delay = min(
            self.options.retry_min_s * 2.0 ** min(self.failures - 1, 20), self.options.retry_max_s
        )
        self.retry_at = now + timedelta(seconds=delay)
        self.device = None
        self._counters.inc("battery_switch_failed")
        return self.retry_at

    def unsupported(self, target: BatteryMode) -> None:
        self._counters.inc("battery_mode_unsupported")
        if not self.unsupported_logged:
            self.unsupported_logged = True
            self._log.warning(
                "batteries: the P1 meter has no permissions (API < 2.2): %s runs as zero", target
            )

    # --- reporting ------------------------------------------------------------------------

    def state(self, now: datetime, decision: BatteryDecision | None = None) -> BatteryState:
        d = decision if decision is not None else self.decide(now)
        device = self.device
        held = d.held_until
        if d.desire.controlled_by == "app" and self.hold is not None:
            held = self.hold.until
        return BatteryState(
            timestamp=now,
            mode=plan_mode(device) if device is not None else None,
            device_mode=device.mode[:200] if device is not None and device.mode else None,
            permissions=[p[:200] for p in device.permissions[:8] if p]
            if device is not None and device.permissions is not None
            else None,
            controlled_by=d.desire.controlled_by,
            desired=d.desire.mode,
            last_change_at=self.last_change_at,
            last_change_reason=self.last_change_reason,
            held_until=held,
        )

    def publish_state(self, now: datetime, decision: BatteryDecision | None = None) -> bool:
        """Publish the `BatteryState` when anything but its time changed; True if published."""
        message = self.state(now, decision)
        key = tuple(message.model_dump(exclude={"timestamp"}).values())
        if key == self._published:
            return False
        self._published = key
        self._publisher.publish(self._topics.batteries(), message)
        return True


# --- the shell: the P1 meter over the API v2 --------------------------------------------------


class BatteryClient(Protocol):
    """What the battery control needs of the P1 meter's client (`V2Client`, or a fake)."""

    async def batteries(self) -> BatteriesState: ...

    async def set_batteries(
        self, *, mode: str | None = None, permissions: Sequence[str] | None = None
    ) -> BatteriesState: ...


BatteryClientFactory = Callable[[], AbstractAsyncContextManager[BatteryClient]]


def p1_client_factory(
    p1: P1Config, token: str, settings: Settings, timeout_s: float
) -> BatteryClientFactory:
    """The real `V2Client` of the P1 meter (its own token, its `v2_port`)."""

    def make() -> AbstractAsyncContextManager[BatteryClient]:
        return p1_v2_client(p1, token, timeout_s=timeout_s, ca_file=settings.device_ca_file)

    return make


class Runtime(Protocol):
    @property
    def clock(self) -> Clock: ...

    @property
    def counters(self) -> Counters: ...

    @property
    def rate_limited(self) -> RateLimitedLog: ...

    @property
    def log(self) -> logging.Logger: ...


class BatteryShell:
    """Reads the P1 meter's `/api/batteries`, applies the core's decisions, and puts the
    batteries back in `zero` on shutdown."""

    def __init__(
        self,
        core: BatteryCore,
        runtime: Runtime,
        factory: BatteryClientFactory | None,
        *,
        read_interval_s: float = 10.0,
        timeout_s: float = 8.0,
        error_pause_s: float = 5.0,
    ) -> None:
        self.core = core
        self._rt = runtime
        self._clock = runtime.clock
        self._factory = factory
        self._read_interval_s = read_interval_s
        self._timeout_s = timeout_s
        self._error_pause_s = error_pause_s
        #: A switch under way towards this mode (its outcome unknown until it answers).
        self._switching: BatteryMode | None = None
        self.wake = asyncio.Event()

    async def run(self) -> None:
        """Control the batteries until cancelled (without a token: say so, then idle)."""
        core = self.core
        if self._factory is None or not core.has_token:
            core.publish_state(self._clock.now())
            self._rt.log.info(
                "batteries: no token of the P1 meter (user_info): left in their own mode; "
                "pair it (hwsched pair <P1 address>) to let the plan use them"
            )
            return
        while True:
            try:
                async with self._factory() as client:
                    try:
                        while True:
                            await self._cycle(client)
                            await self._pause()
                    except asyncio.CancelledError:
                        await self._shutdown(client)
                        raise
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a bug or a library surprise: counted, logged, retried
                self._rt.counters.inc("battery_errors")
                self._rt.rate_limited.log(
                    "battery:error", logging.ERROR, "batteries: control error: %r", err
                )
                await self._clock.sleep(self._error_pause_s)

    async def _pause(self) -> None:
        now = self._clock.now()
        delay = self._read_interval_s
        due = self.core.next_wake(now)
        if due is not None:
            delay = min(delay, max(0.0, (due - now).total_seconds()) + 0.01)
        if not self.wake.is_set():
            with contextlib.suppress(TimeoutError):
                await with_timeout(self._clock, delay, self.wake.wait())
        self.wake.clear()

    async def _cycle(self, client: BatteryClient) -> None:
        core = self.core
        try:
            device = await with_timeout(self._clock, self._timeout_s, client.batteries(), work=True)
        except Exception as err:
            core.read_failed()
            kind = error_kind(err)
            self._rt.counters.inc("battery_reads_failed")
            self._rt.counters.inc(f"battery_reads_failed_{kind}")
            self._rt.rate_limited.log(
                "battery:read",
                logging.WARNING,
                "batteries: cannot read /api/batteries on the P1 meter (%s): %s",
                kind,
                str(err) or type(err).__name__,
            )
        else:
            self._rt.rate_limited.reset("battery:read")
            core.observe(device, self._clock.now())
        decision = core.decide(self._clock.now())
        if decision.switch_to is not None:
            self._switching = decision.switch_to
            await self._switch(client, decision.switch_to, decision.desire)
            self._switching = None
            decision = core.decide(self._clock.now())
        core.publish_state(self._clock.now(), decision)

    async def _switch(
        self, client: BatteryClient, target: BatteryMode, desire: BatteryDesire
    ) -> None:
        core = self.core
        device = core.device
        assert device is not None
        wanted = desire.mode
        if wanted is not None and supported(wanted, device) != wanted:
            core.unsupported(wanted)  # decide() made it zero
        try:
            for _ in range(3):  # mode, then permissions; at most one more
                if plan_mode(device) == target:
                    break
                body = next_request(target, device)
                mode = body.get("mode")
                permissions = body.get("permissions")
                device = await with_timeout(
                    self._clock,
                    self._timeout_s,
                    client.set_batteries(
                        mode=mode if isinstance(mode, str) else None,
                        permissions=list(permissions) if isinstance(permissions, list) else None,
                    ),
                    work=True,
                )
        except Exception as err:
            retry_at = core.switch_failed(self._clock.now())
            kind = error_kind(err)
            self._rt.counters.inc(f"battery_switch_failed_{kind}")
            self._rt.rate_limited.log(
                "battery:switch",
                logging.WARNING,
                "batteries: setting %s failed (%s): %s; read again, retry from %s",
                target,
                kind,
                str(err) or type(err).__name__,
                retry_at.isoformat(timespec="seconds"),
            )
            return
        self._rt.rate_limited.reset("battery:switch")
        core.switched(target, desire, device, self._clock.now())

    async def _shutdown(self, client: BatteryClient) -> None:
        """On the way out: back to `zero` (bounded; a failure is logged, not raised)."""
        core = self.core
        switching, self._switching = self._switching, None
        if switching not in (None, "zero") and core.hold is None and core.has_token:
            # stopped in the middle of a switch: what the batteries are in now is unknown
            with contextlib.suppress(Exception):
                core.device = await asyncio.wait_for(client.batteries(), self._timeout_s)
        if core.shutdown_target() is None:
            return
        desire = BatteryDesire("zero", "fallback", "the actuator is stopping")
        try:
            await asyncio.wait_for(self._switch(client, "zero", desire), self._timeout_s + 2)
        except (TimeoutError, asyncio.CancelledError):
            self._rt.log.warning("batteries: could not set zero while stopping")
            return
        core.publish_state(self._clock.now(), BatteryDecision(desire))
