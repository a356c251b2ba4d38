"""The actuator's decisions, pure: no I/O, no clock of its own (every call is given `now`).

`ActuatorCore` holds what the actuator knows of each socket and decides, per socket, the
state it should be in and whether to switch now; the service shell (`actuator.py`) reads the
sockets, switches them and feeds the results back. Messages go out through a `Publisher`.

What a socket should be in now, first that applies:

1. an override in force (`until` in the future): from MQTT (`controlled_by` "override") or
   from a person switching the socket by hand ("manual");
2. the scheduler's latest command, while it is valid (`valid_until`) and fresh;
3. the retained plan's step at now, while the plan is fresh;
4. the fallback rule, when nothing came from the scheduler for `fallback_after_s`;
5. nothing: the socket is left as it is.

Start-up does not lock people out: until the first plan made on a forecast (a command or plan
not by the scheduler's `fallback-rule`), or until `fallback_after_s` after the restore, the
scheduler's fallback-rule commands and plans (it has no forecast yet either) switch nothing
except a needed socket whose latest start has come (the fallback rule's deadline): every
socket is left as it is. So a restart never starts the switch interval by itself, and an
override published right after it is obeyed at once.

"Fresh" = the command's timestamp / the plan's `made_at` is less than `fallback_after_s` old.
On an accelerated clock (`speed` > 1) every such limit of silence (fresh, the fallback rule's
take-over, the end of start-up) grows by the allowance for work the scheduler's limits have
(`work_allowance_s` real seconds x (speed - 1): `shared.clock.seconds_of_work`): a poll, a
plan and a broker round trip take real seconds however fast simulated time runs, and a busy
machine at 300x is not a scheduler gone silent. Nothing changes at real speed.

A switch is made only when the socket's read state differs from the desired one, and:
not while `switch_lock` is on and the target is off (reported, not fought); not within
`switch_interval_s` of the socket's last real change (by the actuator or by hand, remembered
across restarts through the retained `SocketState`); not before the retry time after a
failed switch.

A hand switch is a change of the relay the actuator did not make. When it goes against what
the socket should be in, it becomes an override with source `manual-switch` until the next
daily boundary (published retained, so the scheduler leaves the socket out of its plan; a
person clears it with `auto`); a hand switch *on* also ends when the socket reads full (on
and drawing < 10 % of its max power), as in the original project.

A power cut is not a person: a relay found changed on the first good read after reads failed
(the socket was off the network: without power, or restarting) is a restore, not a hand
switch; so are changes of two or more sockets to the same state within `together_s` that
leave every socket in that state (a cut too short for a failed read; holds already made for
them are withdrawn), and so is a change found around the P1 meter's new boot (the poller's
`booted_at`: its API v2 uptime from 0, the house's power back; `restart_window_s`, a hold
made a moment before withdrawn). A restore is unknown: the plan decides the socket at once
(no switch interval begins), and without one the fallback rule does, so an optional socket
a restore turned on stays on only on surplus.

The fallback rule (`fallback_targets`): in the planning order, a needed socket that is not
full is on from its latest start (next boundary − remaining Wh / power − margin); any socket
not full is on while the measured surplus left covers its power (the original's
`fallback_states`). Energy comes from the scheduler's retained books, carried on with the
poller's measurements (`shared.bookkeeping`); without books a socket counts as empty.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from shared.bookkeeping import (
    FULL_POWER_RATIO,
    Books,
    SocketBook,
    books_from_dict,
    empty_books,
    record_sample,
    roll_books,
)
from shared.clock import WORK_ALLOWANCE_S, seconds_of_work
from shared.config import Settings, SocketConfig
from shared.daytime import day_start, next_boundary
from shared.messages import (
    MAX_OVERRIDE_S,
    DeviceMeasurement,
    EnergyBooks,
    HouseSurplus,
    MessageError,
    OverrideRequest,
    OverrideState,
    PlanMessage,
    SocketCommand,
    SocketState,
    SwitchEvent,
)
from shared.naming import slugify
from shared.planning.fallback import is_due
from shared.planning.reference import POWER_EPS_W, planning_order
from shared.service import Counters, Publisher
from shared.topics import Topics

__all__ = [
    "FALLBACK_RULE",
    "MANUAL_SOURCE",
    "ActuatorCore",
    "ActuatorOptions",
    "ControlledBy",
    "Decision",
    "Desired",
    "FallbackInput",
    "Hold",
    "Publisher",
    "SocketControl",
    "SwitchReason",
    "deadline",
    "fallback_targets",
]

OnOff = Literal["on", "off"]
ControlledBy = Literal["plan", "override", "manual", "fallback"]
SwitchReason = Literal["plan", "override", "fallback"]
HoldSource = Literal["mqtt", "manual-switch"]
StateSource = Literal["mqtt", "manual-switch", "expiry"]
Blocked = Literal["unknown", "locked", "interval", "retry"]

#: The override source of a hand switch (and the `last_switch_reason` prefix).
MANUAL_SOURCE: HoldSource = "manual-switch"
#: The scheduler's plans and commands made without a forecast: its `planner` / `reason`.
FALLBACK_RULE = "fallback-rule"
_MAX_TEXT = 500


@dataclass(frozen=True)
class ActuatorOptions:
    """The decision rules' parameters (the first three are settings)."""

    #: A socket switches at most once per this many seconds (from its last real change).
    switch_interval_s: float = 300.0
    #: No fresh command or plan for this long: the fallback rule takes over, s.
    fallback_after_s: float = 900.0
    #: Work that simulated time does not speed up, real s: on an accelerated clock added (in
    #: clock seconds, `seconds_of_work`) to `fallback_after_s` (nothing at real speed).
    work_allowance_s: float = WORK_ALLOWANCE_S
    #: Fallback: a needed socket starts this much earlier than filling takes, s.
    fallback_margin_s: float = 1800.0
    #: A manual-on socket is judged full only on a measurement this long after the switch, s.
    full_settle_s: float = 60.0
    #: An older surplus reading counts as none (fallback: no surplus-driven switching), s.
    surplus_max_age_s: float = 300.0
    #: After a failed switch: retry after this, doubling up to the maximum, s.
    retry_min_s: float = 10.0
    retry_max_s: float = 300.0
    #: A retained state or override read back with a time this far ahead of now is refused
    #: (clock skew), s.
    max_future_s: float = 120.0
    #: Every socket found changed to the same state within this long is a power cut's
    #: restore, not people (a few relay read intervals), s.
    together_s: float = 30.0
    #: A relay found changed this long around the P1 meter's new boot (its API v2 uptime
    #: from 0: the house's power came back) is a restore, not a person, s.
    restart_window_s: float = 120.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ActuatorOptions:
        return cls(
            switch_interval_s=float(settings.switch_interval_s),
            fallback_after_s=float(settings.fallback_after_s),
            fallback_margin_s=float(settings.fallback_margin_s),
            retry_min_s=max(1.0, settings.actuator_read_interval_s),
            together_s=max(30.0, 3 * settings.actuator_read_interval_s),
        )


@dataclass
class Hold:
    """An override in force on one socket."""

    state: OnOff
    until: datetime
    source: HoldSource
    set_at: datetime

    @property
    def ends_when_full(self) -> bool:
        """A socket switched on by hand is out of control until it is full (or `until`)."""
        return self.source == MANUAL_SOURCE and self.state == "on"

    @property
    def controlled_by(self) -> ControlledBy:
        return "manual" if self.source == MANUAL_SOURCE else "override"


@dataclass
class SocketControl:
    """What the actuator knows of one socket."""

    config: SocketConfig
    slug: str
    #: The relay as last read (None: unknown, or the last read failed).
    power_on: bool | None = None
    switch_lock: bool | None = None
    read_at: datetime | None = None
    #: The relay state as the actuator last knew it (its own switches and hand switches seen).
    expected_on: bool | None = None
    last_switch_at: datetime | None = None
    last_switch_reason: str | None = None
    hold: Hold | None = None
    command: SocketCommand | None = None
    #: A switch whose outcome is unknown (the request failed): target, reason, detail.
    uncertain: tuple[bool, SwitchReason, str] | None = None
    failures: int = 0
    retry_at: datetime | None = None
    #: The current blocked episode (counted once when it begins).
    blocked: Blocked | None = None
    measurement: DeviceMeasurement | None = None
    #: The override was set live in this run (a late retained one must not replace it).
    touched: bool = False
    #: What was last published as SocketState (without the timestamp).
    published: tuple[object, ...] | None = None
    #: A read failed since the last good one (the socket off the network, or without power).
    unreachable: bool = False
    #: When a change of its relay was last taken for a hand switch, and its last switch
    #: before that (put back if the change turns out to be a restore).
    hand_at: datetime | None = None
    before_hand: tuple[datetime | None, str | None] = (None, None)
    #: It came back from being unreachable with its relay changed (a power cut's restore):
    #: until a plan says otherwise, the fallback rule decides it (never left on off-surplus).
    came_back: bool = False
    #: Switched on by the start-up rule (a needed socket's latest start): once the rule no
    #: longer asks for it (its day over, or the store full) it is not "left as it is".
    on_by_start_up: bool = False

    @property
    def name(self) -> str:
        return self.config.device_name


@dataclass(frozen=True)
class Desired:
    """What a socket should be in now and why."""

    on: bool | None
    controlled_by: ControlledBy
    reason: SwitchReason | None
    detail: str


@dataclass(frozen=True)
class Decision:
    """The desired state and what to do about it now."""

    desired: Desired
    #: Switch to this now (None: nothing to do, or blocked).
    switch_to: bool | None = None
    blocked: Blocked | None = None
    #: A blocked switch may happen from then on (interval, retry).
    held_until: datetime | None = None


# --- the fallback rule (pure functions) -----------------------------------------------------


@dataclass(frozen=True)
class FallbackInput:
    """One socket as the fallback rule sees it."""

    config: SocketConfig
    energy_wh: float = 0.0
    full: bool = False
    #: The state of an override in force on it (it is left out of the rule), else None.
    held: bool | None = None
    #: Power it draws now, W (for a held-on socket: taken from the surplus), if measured.
    drawing_w: float | None = None
    #: Its relay is on now (a needed socket on stays due a while: `shared.planning.fallback`).
    on: bool = False


def deadline(
    item: FallbackInput, boundary_at: datetime, margin_s: float, now: datetime
) -> tuple[bool, datetime | None]:
    """Whether a needed socket is due now (`shared.planning.fallback.is_due`), and when it
    must be on to be full by `boundary_at` (None: full)."""
    room_wh = max(0.0, item.config.energy_capacity - item.energy_wh)
    power = item.config.max_power_usage
    return is_due(room_wh, power, boundary_at, margin_s, now, on=item.on)


def fallback_targets(
    sockets: Sequence[FallbackInput],
    surplus_w: float | None,
    now: datetime,
    boundary_at: datetime,
    margin_s: float,
    tz: ZoneInfo | None = None,
) -> dict[str, tuple[bool, str]]:
    """The fallback state of each socket not under an override: name → (on, why).

    In the planning order (priority, then max power, then the given order): a full socket is
    off; a needed socket is on from its latest start (`deadline`; one on already: a while
    before it); any socket is on while the surplus left covers its power. A socket that is on
    takes its power from the surplus left. Sockets held on by an override take what they draw
    first. `surplus_w` None: no surplus known.
    """
    left = surplus_w if surplus_w is not None else 0.0
    for item in sockets:
        if item.held:
            left -= item.drawing_w if item.drawing_w is not None else item.config.max_power_usage
    free = [s for s in sockets if s.held is None]
    specs = planning_order([s.config.spec(s.energy_wh) for s in free])
    by_name = {s.config.device_name: s for s in free}
    out: dict[str, tuple[bool, str]] = {}
    for spec in specs:
        item = by_name[spec.name]
        power = item.config.max_power_usage
        if item.full:
            out[spec.name] = (False, "full")
            continue
        by_deadline, start = (
            deadline(item, boundary_at, margin_s, now) if item.config.daily_need else (False, None)
        )
        by_surplus = surplus_w is not None and left >= power - POWER_EPS_W
        on = by_deadline or by_surplus
        if on:
            left -= power
        if by_deadline and start is not None:
            why = f"needed by {_local(boundary_at, tz)}: on from {_local(start, tz)}"
        elif by_surplus:
            why = f"surplus covers {power:.0f} W"
        elif start is not None:
            why = f"needed: on from {_local(start, tz)} unless there is surplus"
        else:
            why = "no surplus"
        out[spec.name] = (on, why)
    return out


def _duration(seconds: float) -> str:
    """`seconds` for a log line: "900 s", "50 min", "2.5 h"."""
    if seconds < 600:
        return f"{seconds:.0f} s"
    if seconds < 3 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _local(when: datetime, tz: ZoneInfo | None) -> str:
    return (when.astimezone(tz) if tz is not None else when).strftime("%H:%M")


def _slug_of(name: str) -> str | None:
    try:
        return slugify(name)
    except ValueError:
        return None


def _on_off(on: bool) -> OnOff:
    return "on" if on else "off"


# --- the core -------------------------------------------------------------------------------


class ActuatorCore:
    """Every socket's state and decisions; see the module docstring."""

    def __init__(
        self,
        sockets: Sequence[SocketConfig],
        publisher: Publisher,
        *,
        topics: Topics,
        counters: Counters,
        tz: ZoneInfo,
        boundary: time,
        started_at: datetime,
        options: ActuatorOptions | None = None,
        log: logging.Logger | None = None,
        speed: float = 1.0,
    ) -> None:
        self.options = options if options is not None else ActuatorOptions()
        #: Simulated seconds per real second (an accelerated run).
        self.speed = speed
        self.sockets: dict[str, SocketControl] = {s.slug: SocketControl(s, s.slug) for s in sockets}
        self.tz = tz
        self.boundary = boundary
        self.restoring = True
        #: The latest moment the scheduler was heard from (a command's or plan's time).
        self.last_contact = started_at
        #: A plan or command came since the start (else `last_contact` is the start).
        self.heard = False
        #: How long the newest plan or command took to come (its age on arrival), s.
        self.contact_lag_s = 0.0
        self.fallback_active = False
        #: When the current fallback episode began (None: not in one).
        self.fallback_since: datetime | None = None
        #: A stale plan or command was reported in this fallback episode.
        self._stale_told = False
        #: The P1 meter's boot time (from the poller), and the latest new boot seen: a
        #: power cut of the house (or the meter restarting).
        self.meter_booted_at: datetime | None = None
        self.house_restart_at: datetime | None = None
        #: Start-up (see the module docstring) ends at the first forecast plan or at this time.
        self.quiet_until: datetime | None = started_at + timedelta(seconds=self.silence_s)
        self.plan: PlanMessage | None = None
        self.surplus: HouseSurplus | None = None
        self.books: Books = empty_books(day_start(started_at, tz, boundary))
        self._publisher = publisher
        self._topics = topics
        self._counters = counters
        self._log = log if log is not None else logging.getLogger("hwsched.actuator")

    # --- helpers ------------------------------------------------------------------------

    def socket(self, slug: str) -> SocketControl:
        return self.sockets[slug]

    def _check_name(self, c: SocketControl, name: str, field: str) -> None:
        if name != c.name and _slug_of(name) != c.slug:
            raise MessageError(f"{field}: {name[:60]!r} is not the socket {c.name!r}", field)

    @property
    def silence_s(self) -> float:
        """No fresh plan or command for this long (clock s): `fallback_after_s` plus the
        allowance for work at `speed`."""
        return self.options.fallback_after_s + seconds_of_work(
            self.speed, self.options.work_allowance_s
        )

    def _fresh(self, when: datetime | None, now: datetime) -> bool:
        return when is not None and (now - when).total_seconds() < self.silence_s

    def _fallback_due(self, now: datetime) -> bool:
        return (now - self.last_contact).total_seconds() >= self.silence_s

    def _contact(self, when: datetime, now: datetime) -> None:
        if when >= self.last_contact:
            self.contact_lag_s = max(0.0, (now - when).total_seconds())
            self.heard = True
        self.last_contact = max(self.last_contact, min(when, now))

    def _publish_override(self, c: SocketControl, now: datetime, source: StateSource) -> None:
        hold = c.hold
        message = OverrideState(
            timestamp=now,
            socket=c.name,
            state=hold.state if hold is not None else "auto",
            until=hold.until if hold is not None else None,
            source=hold.source if hold is not None else source,
            set_at=hold.set_at if hold is not None else now,
        )
        self._publisher.publish(self._topics.override(c.slug), message)

    # --- restoring from the retained messages -------------------------------------------

    def restore_state(self, slug: str, message: SocketState, now: datetime | None = None) -> bool:
        """The socket's own retained state from before a restart: last switch, relay.

        Only while restoring; True when it was used. With `now`: a last switch in the future
        is a MessageError (it would hold every switch off until then).
        """
        c = self.sockets[slug]
        self._check_name(c, message.socket, "socket")
        if not self.restoring:
            return False
        at = message.last_switch_at
        if now is not None and at is not None:
            self._not_future(at, now, "last_switch_at")
        if at is not None and (c.last_switch_at is None or at > c.last_switch_at):
            c.last_switch_at = at
            c.last_switch_reason = message.last_switch_reason
        if c.expected_on is None and message.power_on is not None:
            c.expected_on = message.power_on
        self._counters.inc("restored_states")
        return True

    def restore_override(
        self, slug: str, message: OverrideState, now: datetime | None = None
    ) -> bool:
        """The socket's own retained override from before a restart (only while restoring).

        With `now`: one set in the future, or whose lease ends more than 7 days ahead (as no
        override request can), is a MessageError.
        """
        c = self.sockets[slug]
        self._check_name(c, message.socket, "socket")
        if not self.restoring or c.touched:
            return False
        if now is not None:
            self._not_future(message.set_at, now, "set_at")
            if message.until is not None and message.until - now > timedelta(
                seconds=MAX_OVERRIDE_S
            ):
                raise MessageError("until: more than 7 days ahead", "until")
        if message.state == "auto" or message.until is None:
            c.hold = None
        else:
            source: HoldSource = MANUAL_SOURCE if message.source == MANUAL_SOURCE else "mqtt"
            c.hold = Hold(message.state, message.until, source, message.set_at)
        self._counters.inc("restored_overrides")
        return True

    def _not_future(self, when: datetime, now: datetime, field: str) -> None:
        if (when - now).total_seconds() > self.options.max_future_s:
            raise MessageError(f"{field}: {when.isoformat()} is in the future", field)

    def finish_restore(self, now: datetime) -> None:
        """Restoring is over: from now on the scheduler has `fallback_after_s` to show up."""
        self.restoring = False
        self.last_contact = max(self.last_contact, now)
        if self.quiet_until is not None:
            self.quiet_until = max(self.quiet_until, now + timedelta(seconds=self.silence_s))
        held = [f"{c.name} {c.hold.state}" for c in self.sockets.values() if c.hold is not None]
        if held:
            self._log.info("restored overrides: %s", ", ".join(held))

    # --- inputs from the scheduler, the poller and people --------------------------------

    def on_command(self, slug: str, command: SocketCommand, now: datetime) -> bool:
        """A command from the scheduler; True when it was taken (not stale, not older).

        One from the future is a MessageError: it would be newer than every real one.
        """
        c = self.sockets[slug]
        self._check_name(c, command.socket, "socket")
        self._not_future(command.timestamp, now, "timestamp")
        if (command.valid_until is not None and command.valid_until <= now) or not self._fresh(
            command.timestamp, now
        ):
            self._counters.inc("commands_stale")
            if not self._fresh(command.timestamp, now) and not self.restoring:
                self._tell_stale("command", command.timestamp, now)
            return False
        if c.command is not None and command.timestamp < c.command.timestamp:
            self._counters.inc("commands_out_of_order")
            return False
        c.command = command
        self._contact(command.timestamp, now)
        self._counters.inc("commands")
        if command.reason != FALLBACK_RULE:
            self._end_quiet("a command of a plan")
        return True

    def on_plan(self, plan: PlanMessage, now: datetime) -> bool:
        """The scheduler's retained plan; True when taken (not older than the one held).

        One made in the future is a MessageError: it would be newer than every real one.
        """
        self._not_future(plan.made_at, now, "made_at")
        if self.plan is not None and plan.made_at < self.plan.made_at:
            self._counters.inc("plans_out_of_order")
            return False
        self.plan = plan
        self._contact(plan.made_at, now)
        self._counters.inc("plans")
        if not self._fresh(plan.made_at, now) and not self.restoring:
            self._tell_stale("plan", plan.made_at, now)
        if plan.planner != FALLBACK_RULE and self._fresh(plan.made_at, now):
            self._end_quiet(f"a plan by the {plan.planner} planner")
        return True

    def _end_quiet(self, why: str) -> None:
        if self.quiet_until is not None:
            self.quiet_until = None
            self._log.info("start-up over: %s came", why)

    def _quiet(self, now: datetime) -> bool:
        """Still starting up: the scheduler's fallback-rule output switches (almost) nothing."""
        return self.quiet_until is not None and now < self.quiet_until

    def on_surplus(self, surplus: HouseSurplus, now: datetime | None = None) -> None:
        """The house surplus (the fallback's); with `now`, one from the future is refused."""
        if now is not None:
            self._not_future(surplus.timestamp, now, "timestamp")
        if self.surplus is None or surplus.timestamp >= self.surplus.timestamp:
            self.surplus = surplus

    def on_books(self, message: EnergyBooks, now: datetime) -> None:
        """The scheduler's books: taken per socket unless ours has a later sample.

        A sample time in the future is a MessageError (later samples would be ignored).
        """
        for name, sent in message.sockets.items():
            if sent.last_sample_at is not None:
                self._not_future(sent.last_sample_at, now, f"sockets.{name[:60]}.last_sample_at")
        try:
            incoming = books_from_dict(message.model_dump(mode="json"))
        except ValidationError as err:  # pragma: no cover - EnergyBooks validates the same
            raise MessageError(f"(payload): books unusable: {err.error_count()} errors") from None
        today = day_start(now, self.tz, self.boundary)
        if incoming.day_start > today:
            raise MessageError("day_start: books for a later day than today", "day_start")
        incoming = roll_books(incoming, today)
        ours = roll_books(self.books, today)
        merged = dict(ours.sockets)
        for name, book in incoming.sockets.items():
            mine = merged.get(name)
            if (
                mine is None
                or mine.last_sample_at is None
                or (book.last_sample_at is not None and book.last_sample_at >= mine.last_sample_at)
            ):
                merged[name] = book
        self.books = Books(day_start=today, sockets=merged)
        self._counters.inc("books")

    def on_measurement(self, slug: str, m: DeviceMeasurement, now: datetime) -> None:
        """The poller's reading of the socket: energy for the fallback, 'full' for manual-on."""
        c = self.sockets[slug]
        self._check_name(c, m.device, "device")
        if m.device_type != "HWE-SKT":
            raise MessageError(f"device_type: {m.device_type} is not a socket", "device_type")
        self._not_future(m.timestamp, now, "timestamp")  # later samples would be ignored
        on = m.power_on if m.power_on is not None else c.power_on
        if on is not None:
            try:
                self.books = record_sample(
                    self.books,
                    c.name,
                    capacity_wh=c.config.energy_capacity,
                    max_power_w=c.config.max_power_usage,
                    sample_at=m.timestamp,
                    power_w=m.power_w,
                    power_on=on,
                    day_start=day_start(m.timestamp, self.tz, self.boundary),
                )
            except ValueError as err:
                raise MessageError(f"power_w: not a usable sample: {err}", "power_w") from None
            except OverflowError:  # a timestamp at the edge of the calendar (year 1, 9999)
                raise MessageError("timestamp: out of range", "timestamp") from None
        c.measurement = m  # only once taken: a drop changes nothing
        hold = c.hold
        if (
            hold is not None
            and hold.ends_when_full
            and on
            and m.power_w < FULL_POWER_RATIO * c.config.max_power_usage
            and m.timestamp >= hold.set_at + timedelta(seconds=self.options.full_settle_s)
        ):
            c.hold = None
            self._counters.inc("manual_full")
            self._log.info(
                "%s: full (%.0f W): back under the scheduler's control", c.name, m.power_w
            )
            self._publish_override(c, now, "expiry")

    def on_meter(self, m: DeviceMeasurement, now: datetime) -> None:
        """The P1 meter's reading: its boot time. A new one (the meter powered up again: a
        power cut of the house) makes relay changes around it restores, not people; one
        already taken for a hand switch is withdrawn."""
        if m.device_type != "HWE-P1":
            raise MessageError(f"device_type: {m.device_type} is not a P1 meter", "device_type")
        self._not_future(m.timestamp, now, "timestamp")
        booted = m.booted_at
        if booted is None:
            return
        self._not_future(booted, now, "booted_at")
        before, self.meter_booted_at = self.meter_booted_at, booted
        if before is None or booted <= before:
            return
        self.house_restart_at = booted
        self._counters.inc("meter_restarts")
        self._log.info(
            "the P1 meter restarted at %s: relay changes around it are a power cut's "
            "restore, not people",
            self._clock_time(booted),
        )
        for c in self.sockets.values():
            if c.hand_at is not None and self._near_restart(c.hand_at):
                self._undo_hand(c, now)

    def _near_restart(self, when: datetime) -> bool:
        """`when` is around the house's latest restart (the P1 meter's new boot)."""
        at = self.house_restart_at
        if at is None:
            return False
        before = timedelta(seconds=self.options.together_s)
        return at - before <= when <= at + timedelta(seconds=self.options.restart_window_s)

    def on_override_request(self, slug: str, request: OverrideRequest, now: datetime) -> None:
        """`<socket>/override/set`: on/off for a lease (default: to the next boundary), or auto.

        Raises MessageError for a lease out of range (a counted drop).
        """
        c = self.sockets[slug]
        if request.state == "auto":
            if c.hold is not None:
                self._counters.inc("overrides_cleared")
                self._log.info("%s: override %s cleared (auto)", c.name, c.hold.state)
            c.hold = None
            c.touched = True
            self._publish_override(c, now, "mqtt")
            return
        default_s = (next_boundary(now, self.tz, self.boundary) - now).total_seconds()
        until = request.expires_at(now, default_s)
        if until is None:  # pragma: no cover - only `auto` has no end
            raise MessageError("state: an override without an end", "state")
        c.hold = Hold(request.state, until, "mqtt", now)
        c.touched = True
        self._counters.inc("overrides_set")
        self._log.info(
            "%s: override %s until %s", c.name, request.state, until.astimezone(self.tz).isoformat()
        )
        self._publish_override(c, now, "mqtt")

    # --- time passing ---------------------------------------------------------------------

    def tick(self, now: datetime) -> None:
        """Expire overrides; enter or leave the fallback."""
        for c in self.sockets.values():
            if c.hold is not None and c.hold.until <= now:
                self._log.info("%s: override %s expired", c.name, c.hold.state)
                c.hold = None
                self._counters.inc("overrides_expired")
                self._publish_override(c, now, "expiry")
        due = self._fallback_due(now)
        if due and not self.fallback_active:
            self._counters.inc("fallback_activations")
            self.fallback_since = now
            self._stale_told = False
            self._log.warning(
                "no usable plan or command from the scheduler for %s (%s %s): "
                "fallback rule in control%s",
                _duration(self.silence_s),
                "the last made at" if self.heard else "none since the start at",
                self._clock_time(self.last_contact),
                self._at_speed(
                    self.silence_s,
                    "a scheduler that takes longer per plan cannot keep up",
                ),
            )
        elif self.fallback_active and not due:
            self._counters.inc("fallback_handbacks")
            since = self.fallback_since if self.fallback_since is not None else now
            lag = (
                f", {_duration(self.contact_lag_s)} before it came"
                if self.contact_lag_s >= 0.5 * self.silence_s
                else ""
            )
            self._log.info(
                "a plan from the scheduler again (made at %s%s) after %s on the fallback rule: "
                "control handed back",
                self._clock_time(self.last_contact),
                lag,
                _duration((now - since).total_seconds()),
            )
            self.fallback_since = None
        self.fallback_active = due

    def _clock_time(self, when: datetime) -> str:
        return when.astimezone(self.tz).isoformat(timespec="seconds")

    def _at_speed(self, seconds: float, meaning: str) -> str:
        """On an accelerated clock: what `seconds` of simulated time are in real time."""
        if self.speed <= 1.0:
            return ""
        return f"; at {self.speed:g}x that is {seconds / self.speed:.1f} s of real time: {meaning}"

    def _tell_stale(self, what: str, made_at: datetime, now: datetime) -> None:
        """A plan or command that came too old to use: said once per fallback episode."""
        self._counters.inc(f"{what}s_stale_on_arrival")
        if self._stale_told:
            return
        self._stale_told = True
        age = (now - made_at).total_seconds()
        self._log.warning(
            "a %s from the scheduler came %s after it was made (at %s): too old to use "
            "(more than %s)%s",
            what,
            _duration(age),
            self._clock_time(made_at),
            _duration(self.silence_s),
            self._at_speed(age, "the scheduler does not keep up at this speed"),
        )

    # --- reading the socket -------------------------------------------------------------

    def observe(self, slug: str, power_on: bool, switch_lock: bool, now: datetime) -> None:
        """A read of the relay: confirms a switch whose outcome was unknown, or a hand switch."""
        c = self.sockets[slug]
        c.power_on, c.switch_lock, c.read_at = power_on, switch_lock, now
        if c.uncertain is not None:
            target, reason, detail = c.uncertain
            c.uncertain = None
            if power_on == target and c.expected_on is not None and power_on != c.expected_on:
                self._record_switch(c, target, reason, detail + " (confirmed by a read)", now)
                return
        unreachable, c.unreachable = c.unreachable, False
        if c.expected_on is None:
            c.expected_on = power_on
            return
        if power_on != c.expected_on:
            if unreachable:
                self._came_back(c, power_on)
            else:
                self._hand_switch(c, power_on, now)

    def read_failed(self, slug: str) -> None:
        c = self.sockets[slug]
        c.power_on = c.switch_lock = None
        c.unreachable = True

    def _came_back(self, c: SocketControl, power_on: bool) -> None:
        """The relay changed while the socket could not be read: a power cut's restore (or
        the socket restarted), not a person. Unknown: the plan decides, else the fallback
        rule (an optional socket stays on only on surplus)."""
        c.expected_on = power_on
        c.came_back = True
        self._counters.inc("relay_restores")
        self._log.info(
            "%s: back %s after it could not be read (a power cut or a restart): not taken "
            "for a person; %s decides",
            c.name,
            _on_off(power_on),
            "the plan" if self.plan is not None else "the scheduler's plan or the fallback rule",
        )

    def _all_at_once(self, c: SocketControl, power_on: bool, now: datetime) -> list[SocketControl]:
        """The other sockets found changed to `power_on` by hand within `together_s`, when
        with `c` every socket is now in that state (a power cut's restore); else []."""
        window = timedelta(seconds=self.options.together_s)
        others = [
            d
            for d in self.sockets.values()
            if d is not c
            and d.hand_at is not None
            and now - d.hand_at <= window
            and d.expected_on == power_on
        ]
        if not others:
            return []
        if any(d.power_on is not None and d.power_on != power_on for d in self.sockets.values()):
            return []
        return others

    def _undo_hand(self, d: SocketControl, now: datetime) -> None:
        """A change taken for a person a moment ago was a restore after all."""
        d.hand_at = None
        d.last_switch_at, d.last_switch_reason = d.before_hand
        self._counters.inc("hand_switches_undone")
        if d.hold is not None and d.hold.source == MANUAL_SOURCE:
            d.hold = None
            self._publish_override(d, now, MANUAL_SOURCE)
        if d.expected_on is not None:
            self._came_back(d, d.expected_on)

    def _hand_switch(self, c: SocketControl, power_on: bool, now: datetime) -> None:
        if self._near_restart(now):  # the house's power came back: not a person
            self._came_back(c, power_on)
            return
        together = self._all_at_once(c, power_on, now)
        if together:
            self._came_back(c, power_on)
            for d in together:
                self._undo_hand(d, now)
            return
        c.hand_at = now
        c.before_hand = (c.last_switch_at, c.last_switch_reason)
        c.came_back = False
        c.on_by_start_up = False
        wanted = self.desired(c.slug, now)
        c.expected_on = power_on
        c.last_switch_at = now
        c.last_switch_reason = f"{MANUAL_SOURCE}: switched {_on_off(power_on)} by hand"
        self._counters.inc("hand_switches")
        if wanted.on is not None and wanted.on == power_on:
            self._log.info("%s: switched %s by hand, as wanted", c.name, _on_off(power_on))
            return
        until = next_boundary(now, self.tz, self.boundary)
        c.hold = Hold(_on_off(power_on), until, MANUAL_SOURCE, now)
        c.touched = True
        c.uncertain = None
        self._log.info(
            "%s: switched %s by hand: held %suntil %s",
            c.name,
            _on_off(power_on),
            "until full or " if power_on else "",
            until.astimezone(self.tz).isoformat(timespec="minutes"),
        )
        self._publish_override(c, now, MANUAL_SOURCE)

    # --- deciding -----------------------------------------------------------------------

    def desired(self, slug: str, now: datetime) -> Desired:
        """What the socket should be in now (see the module docstring for the order)."""
        c = self.sockets[slug]
        if c.hold is not None and c.hold.until > now:
            until = _local(c.hold.until, self.tz)
            by = c.hold.controlled_by
            return Desired(c.hold.state == "on", by, "override", f"{by} {c.hold.state} to {until}")
        cmd = c.command
        if (
            cmd is not None
            and (cmd.valid_until is None or cmd.valid_until > now)
            and self._fresh(cmd.timestamp, now)
        ):
            if cmd.reason == FALLBACK_RULE and self._quiet(now):
                return self._unplanned(c, now, self._start_up(c, now))
            return Desired(cmd.state == "on", "plan", "plan", cmd.reason)
        planned = self._plan_state(c, now)
        if planned is not None:
            if self.plan is not None and self.plan.planner == FALLBACK_RULE and self._quiet(now):
                return self._unplanned(c, now, self._start_up(c, now))
            return Desired(planned[0], "plan", "plan", f"plan step {planned[1]}")
        if self._fallback_due(now):
            on, why = self.fallback(now).get(c.name, (False, "left out"))
            return Desired(on, "fallback", "fallback", why)
        return self._unplanned(c, now, Desired(None, "plan", None, "waiting for the scheduler"))

    def _unplanned(self, c: SocketControl, now: datetime, left: Desired) -> Desired:
        """Nothing says what the socket should be: left as it is (`left`), unless it came
        back from a power cut changed: then the fallback rule decides it."""
        if left.on is not None or not c.came_back:
            return left
        on, why = self.fallback(now).get(c.name, (False, "left out"))
        return Desired(on, "fallback", "fallback", f"back after a power cut: {why}")

    def _start_up(self, c: SocketControl, now: datetime) -> Desired:
        """Starting up, the scheduler without a forecast: only a needed socket whose latest
        start has come is switched (on); every other socket is left as it is."""
        if c.config.daily_need:
            item = self._fallback_input(c, now, roll_books(self.books, self._today(now)))
            if not item.full:
                end = next_boundary(now, self.tz, self.boundary)
                due, start = deadline(item, end, self.options.fallback_margin_s, now)
                if due and start is not None:
                    why = f"needed by {_local(end, self.tz)}: on from {_local(start, self.tz)}"
                    return Desired(True, "fallback", "fallback", why)
        if c.on_by_start_up:
            # on by this rule, which no longer asks for it: the fallback rule decides, as
            # after a power cut (never left on for a deadline that has passed)
            on, why = self.fallback(now).get(c.name, (False, "left out"))
            return Desired(on, "fallback", "fallback", f"start-up deadline over: {why}")
        return Desired(None, "plan", None, "starting: left as it is until the first plan")

    def _today(self, now: datetime) -> datetime:
        return day_start(now, self.tz, self.boundary)

    def _fallback_input(self, c: SocketControl, now: datetime, books: Books) -> FallbackInput:
        book: SocketBook = books.book(c.name)
        held = None
        if c.hold is not None and c.hold.until > now:
            held = c.hold.state == "on"
        drawing = c.measurement.power_w if c.measurement is not None else None
        return FallbackInput(c.config, book.energy_wh, book.full, held, drawing, bool(c.power_on))

    def _plan_state(self, c: SocketControl, now: datetime) -> tuple[bool, int] | None:
        plan = self.plan
        if plan is None or not self._fresh(plan.made_at, now):
            return None
        row = plan.sockets.get(c.name)
        if row is None:
            row = next((r for n, r in plan.sockets.items() if _slug_of(n) == c.slug), None)
        step = plan.step_at(now)
        if row is None or step is None:
            return None
        return row.states[step] == 1, step

    def fallback(self, now: datetime) -> dict[str, tuple[bool, str]]:
        """The fallback rule's state for every socket not under an override."""
        books = roll_books(self.books, self._today(now))
        items = [self._fallback_input(c, now, books) for c in self.sockets.values()]
        surplus = self.surplus
        surplus_w = None
        if surplus is not None:
            age = (now - surplus.timestamp).total_seconds()
            if age <= self.options.surplus_max_age_s:
                surplus_w = surplus.surplus_w
        end = next_boundary(now, self.tz, self.boundary)
        return fallback_targets(items, surplus_w, now, end, self.options.fallback_margin_s, self.tz)

    def decide(self, slug: str, now: datetime) -> Decision:
        """Whether to switch the socket now (pure: changes nothing)."""
        c = self.sockets[slug]
        d = self.desired(slug, now)
        if d.on is None or c.power_on == d.on:
            return Decision(d)
        if c.power_on is None:
            return Decision(d, blocked="unknown")
        if c.switch_lock and not d.on:
            return Decision(d, blocked="locked")
        if c.retry_at is not None and now < c.retry_at:
            return Decision(d, blocked="retry", held_until=c.retry_at)
        if c.last_switch_at is not None:
            free_at = c.last_switch_at + timedelta(seconds=self.options.switch_interval_s)
            if now < free_at:
                return Decision(d, blocked="interval", held_until=free_at)
        return Decision(d, switch_to=d.on)

    def step(self, slug: str, now: datetime) -> Decision:
        """`decide`, counting each blocked episode once (and logging a switch_lock)."""
        c = self.sockets[slug]
        decision = self.decide(slug, now)
        if decision.blocked != c.blocked and decision.blocked is not None:
            self._counters.inc(f"switch_blocked_{decision.blocked}")
            if decision.blocked == "locked":
                self._log.warning(
                    "%s: switch_lock is on: not switched off (reported, not fought)", c.name
                )
        c.blocked = decision.blocked
        return decision

    def next_wake(self, slug: str, now: datetime) -> datetime | None:
        """The next moment something changes on its own for this socket (expiry, hold end)."""
        c = self.sockets[slug]
        times = [t for t in (c.retry_at, c.hold.until if c.hold else None) if t is not None]
        if c.last_switch_at is not None:
            times.append(c.last_switch_at + timedelta(seconds=self.options.switch_interval_s))
        times.append(self.last_contact + timedelta(seconds=self.silence_s))
        if self.quiet_until is not None:
            times.append(self.quiet_until)
        future = [t for t in times if t > now]
        return min(future) if future else None

    # --- switching results ---------------------------------------------------------------

    def switched(
        self,
        slug: str,
        decision: Decision,
        now: datetime,
        power_on: bool | None = None,
        switch_lock: bool | None = None,
    ) -> None:
        """The switch of `decision` was made; `power_on`/`switch_lock`: the state read back."""
        c = self.sockets[slug]
        target = decision.switch_to
        if target is None:
            raise ValueError("switched: the decision switches nothing")
        c.failures = 0
        c.retry_at = None
        c.uncertain = None
        if power_on is not None:
            c.power_on, c.switch_lock, c.read_at = power_on, switch_lock, now
        else:
            c.power_on = target
        self._record_switch(
            c, target, decision.desired.reason or "plan", decision.desired.detail, now
        )

    def switch_locked(self, slug: str, now: datetime) -> None:
        """The socket refused: switch_lock is on (nothing changed)."""
        c = self.sockets[slug]
        c.switch_lock = True
        c.power_on = True  # the lock only exists while the socket is on
        c.read_at = now
        self._counters.inc("switch_refused_locked")

    def switch_failed(self, slug: str, decision: Decision, now: datetime) -> datetime:
        """The switch request failed (its outcome unknown); returns the retry time."""
        c = self.sockets[slug]
        target = decision.switch_to
        if target is None:
            raise ValueError("switch_failed: the decision switches nothing")
        c.uncertain = (target, decision.desired.reason or "plan", decision.desired.detail)
        c.failures += 1
        delay = min(
            self.options.retry_min_s * 2.0 ** min(c.failures - 1, 20), self.options.retry_max_s
        )
        c.retry_at = now + timedelta(seconds=delay)
        c.power_on = None  # read it again before anything else
        self._counters.inc("switch_failed")
        return c.retry_at

    def _record_switch(
        self, c: SocketControl, target: bool, reason: SwitchReason, detail: str, now: datetime
    ) -> None:
        before = c.expected_on if c.expected_on is not None else not target
        c.expected_on = target
        c.came_back = False
        c.on_by_start_up = target and reason == "fallback" and self._quiet(now)
        c.last_switch_at = now
        c.last_switch_reason = f"{reason}: {detail}"[:_MAX_TEXT]
        self._counters.inc("switches")
        self._counters.inc(f"switches_{reason}")
        self._log.info("%s: switched %s (%s: %s)", c.name, _on_off(target), reason, detail)
        if before != target:
            self._publisher.publish(
                self._topics.switched(c.slug),
                SwitchEvent(
                    timestamp=now,
                    socket=c.name,
                    from_state=_on_off(before),
                    to_state=_on_off(target),
                    reason=reason,
                    at=now,
                ),
            )

    # --- reporting ------------------------------------------------------------------------

    def publish_state(self, slug: str, now: datetime, decision: Decision | None = None) -> bool:
        """Publish the socket's `SocketState` if anything in it changed; True if published."""
        c = self.sockets[slug]
        d = decision if decision is not None else self.decide(slug, now)
        desired = _on_off(d.desired.on) if d.desired.on is not None else None
        key = (
            c.power_on,
            c.switch_lock,
            d.desired.controlled_by,
            c.last_switch_at,
            c.last_switch_reason,
            desired,
            d.held_until,
        )
        if key == c.published:
            return False
        c.published = key
        self._publisher.publish(
            self._topics.socket_state(slug),
            SocketState(
                timestamp=now,
                socket=c.name,
                power_on=c.power_on,
                switch_lock=c.switch_lock,
                controlled_by=d.desired.controlled_by,
                last_switch_at=c.last_switch_at,
                last_switch_reason=(c.last_switch_reason or None),
                desired=desired,
                held_until=d.held_until,
            ),
        )
        return True
