"""The house as the broker tells it, and the day's history (pure: no I/O, no clock of its own).

`LiveState` takes every message under the base topic (`ingest(topic, payload, now)`): the
latest of each retained state (plan, forecast, surplus, books, prices, cost, batteries, each
socket's state and override, each device's measurement, each service's availability and
status), and what happened since the daily boundary, bounded:

* the measured surplus and the batteries' state of charge, averaged per `history_step_s`
  (at most one day's worth of buckets);
* each socket's actual on-times, with why it was on (`plan`, `override`, `manual` = by
  hand, `fallback`: who controlled it then, as the actuator says);
* each socket's planned on-times for the part of the day a newer plan has replaced (the
  current plan covers the rest);
* the P1 meter's import/export counters at the first reading of the day.

A payload that is not what its topic carries is a `MessageError` (the service counts and
logs it as a drop) and changes nothing. `snapshot()` / `restore()` carry the history across
a restart (`HistoryFile`, a versioned JSON document); a history of another day is dropped.

The dashboard page (`services.dashboard.render`, `.timeline`) and `hwsched status`
(`services.dashboard.terminal`) read the same state through `socket_rows`,
`service_rows`, `forecast_left_wh` and friends.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.config import DevicesConfig
from shared.daytime import day_bounds
from shared.messages import (
    MAX_DEVICES,
    Availability,
    BatteryState,
    CostSummary,
    DeviceMeasurement,
    EnergyBooks,
    Forecast,
    HouseSurplus,
    Message,
    MessageError,
    OverrideState,
    PlanMessage,
    Prices,
    ServiceStatus,
    SocketNextOn,
    SocketState,
    SwitchEvent,
    parse_availability,
    parse_message,
)
from shared.naming import slugify
from shared.topics import Topics

__all__ = [
    "CAUSES",
    "MAX_FUTURE_S",
    "Cause",
    "HistoryFile",
    "LiveState",
    "Series",
    "ServiceRow",
    "SocketLive",
    "SocketRow",
    "Span",
    "clock_time",
    "forecast_left_wh",
    "service_rows",
    "socket_rows",
]

#: A message stamped further ahead of the clock than this is refused (clock skew): kept, it
#: would hold the history until then.
MAX_FUTURE_S = 120.0
#: Most spans (on-times, planned blocks) kept per socket per day.
MAX_SPANS = 500
#: A service whose status is older than this is shown as silent, s (it publishes every 60 s).
STATUS_STALE_S = 200.0

Cause = Literal["plan", "override", "manual", "fallback", "unknown"]
#: What each cause is called on the page and in the terminal.
CAUSES: dict[str, str] = {
    "plan": "plan",
    "override": "override",
    "manual": "by hand",
    "fallback": "fallback",
    "unknown": "unknown",
}


#: The JSON topics the dashboard reads, and their models.
_MODELS: dict[str, type[Message]] = {
    "status": ServiceStatus,
    "plan": PlanMessage,
    "forecast": Forecast,
    "surplus": HouseSurplus,
    "books": EnergyBooks,
    "prices": Prices,
    "cost": CostSummary,
    "batteries": BatteryState,
    "measurement": DeviceMeasurement,
    "socket_state": SocketState,
    "override": OverrideState,
    "next_on": SocketNextOn,
    "switched": SwitchEvent,
}


@dataclass
class Span:
    """A time span of one socket: on (actual) or planned on; `end` None = still running."""

    start: datetime
    end: datetime | None
    cause: Cause = "plan"


@dataclass
class Series:
    """Values averaged per bucket of `step_s` from `origin` (at most `max_buckets`)."""

    origin: datetime
    step_s: int
    max_buckets: int = 1600
    buckets: dict[int, tuple[float, int]] = field(default_factory=dict)

    def add(self, at: datetime, value: float) -> None:
        index = math.floor((at - self.origin).total_seconds() / self.step_s)
        if index < 0 or index >= self.max_buckets or not math.isfinite(value):
            return
        total, count = self.buckets.get(index, (0.0, 0))
        self.buckets[index] = (total + value, count + 1)

    def points(self) -> list[tuple[datetime, float]]:
        """(bucket middle, mean) in time order."""
        return [(self.origin + timedelta(seconds=s), v) for s, v in self.offsets()]

    def offsets(self, group: int = 1) -> list[tuple[float, float]]:
        """(seconds from `origin` to the middle, mean) in time order; `group` > 1 merges
        that many buckets into one point (for drawing: no more points than pixels)."""
        if group <= 1:
            half = self.step_s / 2
            return [
                (i * self.step_s + half, total / count)
                for i, (total, count) in sorted(self.buckets.items())
            ]
        merged: dict[int, tuple[float, int]] = {}
        for i, (total, count) in self.buckets.items():
            g = i // group
            t, c = merged.get(g, (0.0, 0))
            merged[g] = (t + total, c + count)
        width = self.step_s * group
        return [(g * width + width / 2, t / c) for g, (t, c) in sorted(merged.items())]

    def latest(self) -> float | None:
        if not self.buckets:
            return None
        total, count = self.buckets[max(self.buckets)]
        return total / count


@dataclass
class SocketLive:
    """Everything known about one socket (keyed by its slug)."""

    slug: str
    name: str
    capacity_wh: float | None = None
    max_power_w: float | None = None
    daily_need: bool | None = None
    state: SocketState | None = None
    override: OverrideState | None = None
    measurement: DeviceMeasurement | None = None
    next_on: SocketNextOn | None = None
    last_switch: SwitchEvent | None = None
    #: Actual on-times today, with why.
    actual: list[Span] = field(default_factory=list)
    #: Planned on-times today that a newer plan has replaced.
    planned_past: list[Span] = field(default_factory=list)
    #: Time of the last on/off observation (older ones are ignored).
    seen_at: datetime | None = None

    @property
    def power_on(self) -> bool | None:
        """The relay as last seen: the newer of the actuator's state and the poller's reading."""
        candidates = [
            (m.timestamp, m.power_on)
            for m in (self.state, self.measurement)
            if m is not None and m.power_on is not None
        ]
        if not candidates:
            return None
        return max(candidates, key=lambda c: c[0])[1]

    @property
    def controlled_by(self) -> Cause:
        return self.state.controlled_by if self.state is not None else "unknown"


@dataclass
class ServiceLive:
    availability: Availability | None = None
    status: ServiceStatus | None = None


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


class _SpanFile(_FileModel):
    start: AwareDatetime
    end: AwareDatetime | None = None
    cause: Cause = "plan"


class _SocketFile(_FileModel):
    actual: Annotated[list[_SpanFile], Field(max_length=MAX_SPANS)] = []
    planned_past: Annotated[list[_SpanFile], Field(max_length=MAX_SPANS)] = []
    seen_at: AwareDatetime | None = None


Bucket = tuple[Annotated[int, Field(ge=0, le=100_000)], float, Annotated[int, Field(ge=1)]]


class HistoryFile(_FileModel):
    """What `LiveState.snapshot` keeps of the day (the dashboard's history file), v1."""

    schema_version: Literal[1] = 1
    day_start: AwareDatetime
    step_s: Annotated[int, Field(gt=0)]
    surplus: Annotated[list[Bucket], Field(max_length=100_000)] = []
    battery_soc: Annotated[list[Bucket], Field(max_length=100_000)] = []
    sockets: Annotated[dict[str, _SocketFile], Field(max_length=MAX_DEVICES)] = {}
    p1_start_import_kwh: float | None = None
    p1_start_export_kwh: float | None = None
    p1_start_at: AwareDatetime | None = None


class LiveState:
    """The latest of everything under the base topic, and today's history (see module doc)."""

    def __init__(
        self,
        topics: Topics,
        tz: ZoneInfo,
        boundary: time,
        now: datetime,
        *,
        devices: DevicesConfig | None = None,
        history_step_s: int = 60,
    ) -> None:
        self.topics = topics
        self.tz = tz
        self.boundary = boundary
        self.history_step_s = history_step_s
        self.day_start, self.day_end = day_bounds(now, tz, boundary)
        self.sockets: dict[str, SocketLive] = {}
        self.battery_capacity_wh: dict[str, float] = {}
        self.p1_name: str | None = None
        if devices is not None:
            self.p1_name = devices.p1.device_name
            for s in devices.sockets:
                self.sockets[s.slug] = SocketLive(
                    s.slug,
                    s.device_name,
                    capacity_wh=s.energy_capacity,
                    max_power_w=s.max_power_usage,
                    daily_need=s.daily_need,
                )
            for b in devices.batteries:
                self.battery_capacity_wh[b.device_name] = b.energy_capacity
        self.plan: PlanMessage | None = None
        self.forecast: Forecast | None = None
        self.surplus: HouseSurplus | None = None
        self.books: EnergyBooks | None = None
        self.prices: Prices | None = None
        self.cost: CostSummary | None = None
        self.batteries: BatteryState | None = None
        self.measurements: dict[str, DeviceMeasurement] = {}
        self.device_availability: dict[str, Availability] = {}
        self.services: dict[str, ServiceLive] = {}
        self.surplus_history = self._series()
        self.soc_history = self._series()
        self.p1_start: tuple[datetime, float | None, float | None] | None = None
        #: Bumped on every change (the page re-renders when it moves).
        self.version = 0

    def _series(self) -> Series:
        day_s = (self.day_end - self.day_start).total_seconds()
        return Series(self.day_start, self.history_step_s, math.ceil(day_s / self.history_step_s))

    # --- the day --------------------------------------------------------------------------

    def roll(self, now: datetime) -> bool:
        """At the daily boundary: the history starts over. True when a new day began."""
        if now < self.day_end:
            return False
        self.day_start, self.day_end = day_bounds(now, self.tz, self.boundary)
        self.surplus_history = self._series()
        self.soc_history = self._series()
        self.p1_start = None
        for s in self.sockets.values():
            running = [sp for sp in s.actual if sp.end is None]
            s.actual = [Span(self.day_start, None, sp.cause) for sp in running]
            s.planned_past = []
        self.version += 1
        return True

    # --- messages -------------------------------------------------------------------------

    def ingest(self, topic: str, payload: bytes, now: datetime) -> bool:
        """Take one message; True when it changed what is shown.

        MessageError for a payload that is not what its topic carries (or is stamped in the
        future, or names another socket than its topic): nothing is changed then, not even
        the day rolled over."""
        found = self.topics.match(topic)
        if found is None:
            return False
        spec, params = found
        name = spec.name
        message: Message | Availability
        if name in ("availability", "device_availability"):
            message = parse_availability(payload)
        elif name in _MODELS:
            message = parse_message(_MODELS[name], payload)
        else:  # commands and requests (…/set, request/…, response/…): not state
            return False
        self._check(name, params, message, now)
        self.roll(now)
        held = self.plan
        if isinstance(message, PlanMessage) and held is not None and message.made_at < held.made_at:
            return False  # an older plan (a retained copy replayed late)
        self._apply(name, params, message, now)
        self.version += 1
        return True

    def _check(
        self, name: str, params: dict[str, str], message: Message | Availability, now: datetime
    ) -> None:
        """What makes a well-formed message unusable here (MessageError), before any change."""
        if isinstance(message, str):
            if name == "availability" and params["service"] not in self.services:
                self._room(len(self.services), "services")
            return
        for stamp in ("made_at",) if isinstance(message, PlanMessage) else ("timestamp",):
            if name in ("plan", "surplus", "socket_state", "measurement"):
                _not_ahead(getattr(message, stamp), now, stamp)
        if name == "status" and params["service"] not in self.services:
            self._room(len(self.services), "services")
        names: list[str] = []
        if isinstance(message, PlanMessage):
            names = list(message.sockets)
        elif isinstance(message, DeviceMeasurement) and message.device_type == "HWE-SKT":
            names = [message.device]
        new = {_slug(n) for n in names} - set(self.sockets)
        if len(self.sockets) + len(new) > MAX_DEVICES:
            raise MessageError(f"(payload): more than {MAX_DEVICES} sockets")
        if isinstance(message, SocketState | OverrideState | SocketNextOn | SwitchEvent):
            slug = params["socket"]
            if _slug(message.socket) != slug:
                raise MessageError(
                    f"socket: {message.socket[:60]!r} is not the socket of this topic", "socket"
                )
            if slug not in self.sockets:
                self._room(len(self.sockets), "sockets")

    @staticmethod
    def _room(count: int, what: str) -> None:
        if count >= MAX_DEVICES:
            raise MessageError(f"(topic): more than {MAX_DEVICES} {what}")

    def _apply(
        self, name: str, params: dict[str, str], message: Message | Availability, now: datetime
    ) -> None:
        if isinstance(message, str):
            if name == "availability":
                self.services.setdefault(params["service"], ServiceLive()).availability = message
            else:
                self.device_availability[params["device"]] = message
        elif isinstance(message, ServiceStatus):
            self.services.setdefault(params["service"], ServiceLive()).status = message
        elif isinstance(message, PlanMessage):
            self._take_plan(message, now)
        elif isinstance(message, Forecast):
            self.forecast = message
        elif isinstance(message, HouseSurplus):
            if self.surplus is None or message.timestamp >= self.surplus.timestamp:
                self.surplus = message
            self.surplus_history.add(min(message.timestamp, now), message.surplus_w)
        elif isinstance(message, EnergyBooks):
            self.books = message
        elif isinstance(message, Prices):
            self.prices = message
        elif isinstance(message, CostSummary):
            self.cost = message
        elif isinstance(message, BatteryState):
            self.batteries = message
        elif isinstance(message, DeviceMeasurement):
            self._take_measurement(message, now)
        elif isinstance(message, SocketState):
            sock = self._socket(params["socket"], message.socket)
            sock.state = message
            self._observe(sock, message.timestamp, message.power_on, now)
        elif isinstance(message, OverrideState):
            self._socket(params["socket"], message.socket).override = message
        elif isinstance(message, SocketNextOn):
            self._socket(params["socket"], message.socket).next_on = message
        elif isinstance(message, SwitchEvent):
            self._socket(params["socket"], message.socket).last_switch = message

    def _socket(self, slug: str, name: str | None = None) -> SocketLive:
        """The socket of `slug`, made on first sight (`_check` has made sure it may be)."""
        sock = self.sockets.get(slug)
        if sock is None:
            sock = SocketLive(slug, name or slug)
            self.sockets[slug] = sock
        return sock

    def socket_by_name(self, name: str) -> SocketLive | None:
        try:
            slug = slugify(name)
        except ValueError:
            return None
        return self.sockets.get(slug)

    def _take_plan(self, plan: PlanMessage, now: datetime) -> None:
        old = self.plan
        if old is not None:
            self._keep_planned_past(old, until=min(plan.start, now))
        for name in plan.sockets:
            self._socket(_slug(name), name)
        self.plan = plan

    def _keep_planned_past(self, old: PlanMessage, until: datetime) -> None:
        """The old plan's on-blocks before `until` (the part the new plan no longer covers)."""
        for name, row in old.sockets.items():
            sock = self.socket_by_name(name)
            if sock is None:
                continue
            for a, b in on_blocks(old.start, old.step_s, row.states):
                start, end = max(a, self.day_start), min(b, until)
                if start < end:
                    _add_span(sock.planned_past, Span(start, end, "plan"))

    def _take_measurement(self, m: DeviceMeasurement, now: datetime) -> None:
        self.measurements[m.device] = m
        at = min(m.timestamp, now)
        if m.device_type == "HWE-SKT":
            sock = self._socket(_slug(m.device), m.device)
            sock.measurement = m
            self._observe(sock, m.timestamp, m.power_on, now)
        elif m.device_type == "HWE-BAT":
            soc = self.battery_soc_pct()
            if soc is not None:
                self.soc_history.add(at, soc)
        elif (
            m.device_type == "HWE-P1"
            and at >= self.day_start
            and self.p1_start is None
            and (self.p1_name is None or m.device == self.p1_name)
        ):
            self.p1_start = (at, m.energy_import_kwh, m.energy_export_kwh)

    def _observe(self, sock: SocketLive, at: datetime, on: bool | None, now: datetime) -> None:
        """A reading of the relay at `at`: open, close or re-label today's on-span."""
        if on is None:
            return
        at = min(at, now)
        if sock.seen_at is not None and at < sock.seen_at:
            return  # older than what is known
        sock.seen_at = at
        cause = sock.controlled_by
        spans = sock.actual
        running = spans[-1] if spans and spans[-1].end is None else None
        if on:
            if running is not None and running.cause == cause:
                return
            start = max(at, self.day_start)
            if running is not None:
                running.end = start
            elif not spans:
                start = max(self._on_since(sock, at), self.day_start)
            _add_span(spans, Span(start, None, cause))
        elif running is not None:
            running.end = max(at, running.start)

    def _on_since(self, sock: SocketLive, at: datetime) -> datetime:
        """When a socket first seen on (after a start without history) went on, if known."""
        hints = []
        if self.books is not None:
            book = self.books.sockets.get(sock.name)
            if book is not None and book.on_since is not None:
                hints.append(book.on_since)
        state = sock.state
        if state is not None and state.power_on and state.last_switch_at is not None:
            hints.append(state.last_switch_at)
        earlier = [h for h in hints if h <= at]
        return min(earlier) if earlier else at

    def battery_soc_pct(self) -> float | None:
        """The batteries' state of charge together (capacity-weighted when capacities are
        known), %."""
        readings = [
            (self.battery_capacity_wh.get(m.device, 1.0), m.state_of_charge_pct)
            for m in self.measurements.values()
            if m.device_type == "HWE-BAT" and m.state_of_charge_pct is not None
        ]
        total = sum(c for c, _ in readings)
        if not readings or total <= 0:
            return None
        return sum(c * soc for c, soc in readings) / total

    # --- figures --------------------------------------------------------------------------

    def grid_today_kwh(self) -> tuple[float | None, float | None, datetime | None]:
        """Import and export since the first P1 reading of the day (kWh), and since when.

        The scheduler's cost summary wins when it has the day's figures."""
        cost = self.cost
        if (
            cost is not None
            and cost.day_start == self.day_start
            and (cost.import_today_kwh is not None or cost.export_today_kwh is not None)
        ):
            return cost.import_today_kwh, cost.export_today_kwh, self.day_start
        if self.p1_start is None:
            return None, None, None
        at, imp0, exp0 = self.p1_start
        latest = self.measurements.get(self.p1_name) if self.p1_name else None
        if latest is None:
            latest = next(
                (m for m in self.measurements.values() if m.device_type == "HWE-P1"), None
            )
        if latest is None:
            return None, None, at
        imp = _delta(latest.energy_import_kwh, imp0)
        exp = _delta(latest.energy_export_kwh, exp0)
        return imp, exp, at

    # --- persistence ----------------------------------------------------------------------

    def snapshot(self) -> HistoryFile:
        """Today's history, to be kept across a restart."""

        def buckets(series: Series) -> list[tuple[int, float, int]]:
            return [(i, total, n) for i, (total, n) in sorted(series.buckets.items())]

        def spans(items: Iterable[Span]) -> list[_SpanFile]:
            return [_SpanFile(start=s.start, end=s.end, cause=s.cause) for s in items]

        p1 = self.p1_start
        return HistoryFile(
            day_start=self.day_start,
            step_s=self.history_step_s,
            surplus=buckets(self.surplus_history),
            battery_soc=buckets(self.soc_history),
            sockets={
                slug: _SocketFile(
                    actual=spans(s.actual), planned_past=spans(s.planned_past), seen_at=s.seen_at
                )
                for slug, s in self.sockets.items()
                if s.actual or s.planned_past
            },
            p1_start_at=p1[0] if p1 else None,
            p1_start_import_kwh=p1[1] if p1 else None,
            p1_start_export_kwh=p1[2] if p1 else None,
        )

    def restore(self, history: HistoryFile, now: datetime) -> bool:
        """Take a kept history if it is today's (same day, same step); True when taken."""
        self.roll(now)
        if history.day_start != self.day_start or history.step_s != self.history_step_s:
            return False
        for series, rows in (
            (self.surplus_history, history.surplus),
            (self.soc_history, history.battery_soc),
        ):
            for index, total, count in rows:
                if index < series.max_buckets:
                    series.buckets[index] = (total, count)
        for slug, kept in history.sockets.items():
            try:
                sock = self._socket(slug)
            except MessageError:
                continue
            sock.actual = [Span(s.start, s.end, s.cause) for s in kept.actual if s.start <= now]
            sock.planned_past = [Span(s.start, s.end, s.cause) for s in kept.planned_past]
            sock.seen_at = kept.seen_at
        if history.p1_start_at is not None:
            self.p1_start = (
                history.p1_start_at,
                history.p1_start_import_kwh,
                history.p1_start_export_kwh,
            )
        self.version += 1
        return True


def _slug(name: str) -> str:
    """The topic slug of a name in a payload; MessageError when it has none."""
    try:
        return slugify(name)
    except ValueError as err:
        raise MessageError(f"socket: {err}", "socket") from None


def _not_ahead(when: datetime, now: datetime, what: str) -> None:
    ahead = (when - now).total_seconds()
    if ahead > MAX_FUTURE_S:
        raise MessageError(f"{what}: {ahead:.0f} s in the future (clock skew?)", what)


def _delta(now: float | None, start: float | None) -> float | None:
    if now is None or start is None:
        return None
    return max(0.0, now - start)


def _add_span(spans: list[Span], span: Span) -> None:
    """Append, merging with the last span when they touch and agree; bounded."""
    if spans:
        last = spans[-1]
        if last.end is not None and last.cause == span.cause and span.start <= last.end:
            if span.end is None or span.end > last.end:
                last.end = span.end
            return
    spans.append(span)
    if len(spans) > MAX_SPANS:
        del spans[: len(spans) - MAX_SPANS]


def on_blocks(
    start: datetime, step_s: int, states: list[Literal[0, 1]]
) -> list[tuple[datetime, datetime]]:
    """The runs of 1 in `states` as (start, end) times."""
    out: list[tuple[datetime, datetime]] = []
    begin: int | None = None
    for i, s in enumerate([*states, 0]):
        if s == 1 and begin is None:
            begin = i
        elif s != 1 and begin is not None:
            out.append(
                (start + timedelta(seconds=begin * step_s), start + timedelta(seconds=i * step_s))
            )
            begin = None
    return out


# --- what the page and the terminal show ------------------------------------------------


@dataclass(frozen=True)
class SocketRow:
    """One socket as people read it."""

    slug: str
    name: str
    #: Who controls it: plan, override, manual (by hand), fallback; unknown before the
    #: actuator said.
    controlled_by: Cause
    power_on: bool | None
    power_w: float | None
    stored_wh: float | None
    capacity_wh: float | None
    full: bool
    daily_need: bool | None
    in_plan: bool
    #: The next planned change: ("on" | "off", when); None: none left in the plan.
    next_switch: tuple[Literal["on", "off"], datetime] | None
    #: A switch the actuator holds back: (to state, until).
    held: tuple[Literal["on", "off"], datetime] | None
    #: The override in force: (state, until, source).
    override: tuple[Literal["on", "off"], datetime, str] | None
    last_switch_at: datetime | None
    last_switch_reason: str | None

    @property
    def fill(self) -> float | None:
        """Stored / capacity, 0..1."""
        if self.stored_wh is None or not self.capacity_wh:
            return None
        return min(1.0, max(0.0, self.stored_wh / self.capacity_wh))


def next_switch(
    plan: PlanMessage, name: str, now: datetime
) -> tuple[Literal["on", "off"], datetime] | None:
    """The plan's next change of `name`'s state after `now`: ('on'|'off', when)."""
    row = plan.sockets.get(name)
    if row is None:
        return None
    offset = (now - plan.start).total_seconds()
    if offset < 0:
        current: int | None = None  # the plan has not begun: its first state is a change
        first = 0
    else:
        first = math.floor(offset / plan.step_s)
        if first >= len(row.states):
            return None
        current = row.states[first]
        first += 1
    for i in range(first, len(row.states)):
        if row.states[i] != current:
            to: Literal["on", "off"] = "on" if row.states[i] == 1 else "off"
            return to, plan.start + timedelta(seconds=i * plan.step_s)
    return None


def socket_rows(state: LiveState, now: datetime) -> list[SocketRow]:
    """Every known socket, in the devices file's order (then by name)."""
    rows = []
    for sock in state.sockets.values():
        book = state.books.sockets.get(sock.name) if state.books is not None else None
        if book is not None and state.books is not None and state.books.day_start < state.day_start:
            book = None  # yesterday's books (the scheduler has not rolled them yet)
        plan = state.plan
        in_plan = plan is not None and sock.name in plan.sockets
        st = sock.state
        held = None
        if (
            st is not None
            and st.desired is not None
            and st.held_until is not None
            and st.held_until > now
            and (sock.power_on is None or (st.desired == "on") != sock.power_on)
        ):
            held = (st.desired, st.held_until)
        ov = sock.override
        override = None
        if ov is not None and ov.state != "auto" and ov.until is not None and ov.until > now:
            override = (ov.state, ov.until, ov.source)
        m = sock.measurement
        rows.append(
            SocketRow(
                slug=sock.slug,
                name=sock.name,
                controlled_by=sock.controlled_by,
                power_on=sock.power_on,
                power_w=m.power_w if m is not None else None,
                stored_wh=book.energy_wh if book is not None else None,
                capacity_wh=sock.capacity_wh,
                full=book.full if book is not None else False,
                daily_need=sock.daily_need,
                in_plan=in_plan,
                next_switch=next_switch(plan, sock.name, now) if plan is not None else None,
                held=held,
                override=override,
                last_switch_at=st.last_switch_at if st is not None else None,
                last_switch_reason=st.last_switch_reason if st is not None else None,
            )
        )
    return rows


@dataclass(frozen=True)
class ServiceRow:
    name: str
    #: online, offline, silent (online, but no status for a while), unknown.
    health: Literal["online", "offline", "silent", "unknown"]
    version: str | None
    started_at: datetime | None
    status_at: datetime | None
    #: Counters worth a look: drops, errors, failures (name → count, non-zero only).
    problems: dict[str, int]


_PROBLEM_WORDS = ("dropped", "error", "failed", "lost", "refused")


def service_rows(state: LiveState, now: datetime) -> list[ServiceRow]:
    """Every service heard of, by name."""
    out = []
    for name in sorted(state.services):
        s = state.services[name]
        status = s.status
        health: Literal["online", "offline", "silent", "unknown"]
        if s.availability == "offline":
            health = "offline"
        elif s.availability == "online":
            stale = status is None or (now - status.timestamp).total_seconds() > STATUS_STALE_S
            health = "silent" if stale else "online"
        else:
            health = "unknown"
        problems = {}
        if status is not None:
            problems = {
                k: v
                for k, v in status.counters.items()
                if v and any(word in k for word in _PROBLEM_WORDS)
            }
        out.append(
            ServiceRow(
                name=name,
                health=health,
                version=status.version if status is not None else None,
                started_at=status.started_at if status is not None else None,
                status_at=status.timestamp if status is not None else None,
                problems=problems,
            )
        )
    return out


def forecast_left_wh(forecast: Forecast | None, now: datetime, end: datetime) -> float | None:
    """The forecast's solar energy from `now` until `end` (the next boundary), Wh."""
    if forecast is None:
        return None
    total = 0.0
    step = timedelta(seconds=forecast.step_s)
    for i, power in enumerate(forecast.power_w):
        a = forecast.start + i * step
        b = a + step
        lo, hi = max(a, now), min(b, end)
        if hi > lo:
            total += power * (hi - lo).total_seconds() / 3600.0
    return total


def clock_time(
    when: datetime | None, tz: ZoneInfo, now: datetime | None = None, none: str = "—"
) -> str:
    """Local time HH:MM, with the weekday when it is not `now`'s date; `none` for no time or
    one the local calendar cannot hold (a time stamped in year 9999 by a broken publisher)."""
    if when is None:
        return none
    try:
        local = when.astimezone(tz)
        today = now.astimezone(tz).date() if now is not None else local.date()
    except (OverflowError, ValueError):
        return none
    return local.strftime("%a %H:%M" if local.date() != today else "%H:%M")
