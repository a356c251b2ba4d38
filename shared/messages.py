"""The MQTT message contract: one pydantic model per topic (see `shared.topics`).

Every payload is one compact JSON object with:

* `schema_version`: a small integer, fixed per model (a `Literal`);
* `timestamp`: when the message was made, ISO 8601 *with* an offset (naive times are refused);
* units in the field names (`power_w`, `energy_wh`, `energy_import_kwh`, `state_of_charge_pct`,
  `step_s`), finite numbers only (no NaN / Infinity), bounded strings and lists.

Versioning policy
-----------------
* Adding an *optional* field (with a default) keeps the version: older consumers ignore unknown
  extra fields (`extra="ignore"`), newer ones see the default when it is absent.
* Anything else (a new required field, a removed or renamed field, a changed type, unit or meaning,
  a tightened range) bumps that model's `schema_version`.
* Consumers refuse a version they do not know: `parse_message` raises `UnsupportedVersionError`
  (a `MessageError`), which the service counts and logs as a dropped message.
* On the wire `schema_version` is required, except in the two payloads people type by hand
  (`OverrideRequest`, `ForecastRequest`), where it defaults to 1 and `timestamp` is optional.

Parsing is strict (no "5" for 5, no 1 for true): `parse_message(Model, payload)` gives the model or
raises one `MessageError` whose text is one line naming the field.
"""

from __future__ import annotations

import json
import math
import typing
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationError,
    model_validator,
)

from shared.bookkeeping import check_on_since
from shared.planning.problem import BatteryMode, PlanStatus, describe_validation_error

__all__ = [
    "AVAILABILITY_OFFLINE",
    "AVAILABILITY_ONLINE",
    "MAX_DEVICES",
    "MAX_OVERRIDE_S",
    "MAX_PAYLOAD_BYTES",
    "MAX_STEPS",
    "MESSAGE_MODELS",
    "Availability",
    "BatteryBook",
    "BatteryCommand",
    "BatteryOverrideRequest",
    "BatteryState",
    "CostSummary",
    "DeviceMeasurement",
    "EnergyBooks",
    "Forecast",
    "ForecastFitBook",
    "ForecastRequest",
    "ForecastResponse",
    "ForecastResult",
    "HouseSurplus",
    "Message",
    "MessageError",
    "OverrideRequest",
    "OverrideState",
    "PlanMessage",
    "Prices",
    "ServiceStatus",
    "SocketBook",
    "SocketCommand",
    "SocketNextOn",
    "SocketPlan",
    "SocketState",
    "SwitchEvent",
    "UnsupportedVersionError",
    "dump_availability",
    "dump_message",
    "parse_availability",
    "parse_message",
    "schema_version_of",
]

#: Most steps in a forecast or plan (same bound as the planning problem).
MAX_STEPS = 20_000
#: Most devices (sockets, batteries, meters) named in one message.
MAX_DEVICES = 64
#: Longest manual override lease: 7 days.
MAX_OVERRIDE_S = 7 * 86_400
#: Largest payload `parse_message` reads.
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
#: Tolerance of the surplus sum check, W.
_SURPLUS_TOLERANCE_W = 1.0


def wire_time(value: datetime) -> str:
    """A time as every payload carries it: UTC, to the second, `Z`: `2026-06-21T10:15:00Z`.

    One form for every message (parsing still takes any offset and fractions of a second,
    e.g. older retained messages' `...T10:15:07.310355Z` or `+02:00`). The fraction is cut,
    not rounded: a time is never sent later than it was."""
    try:
        utc = value.astimezone(UTC)
    except OverflowError:  # beyond year 9999 in UTC: its own offset, still to the second
        return value.replace(microsecond=0).isoformat()
    return utc.replace(microsecond=0).isoformat().removesuffix("+00:00") + "Z"


#: An aware time in a message: parsed with any offset and precision, sent by `wire_time`.
WireTime = Annotated[AwareDatetime, PlainSerializer(wire_time, return_type=str, when_used="json")]

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
#: A device, socket or array name as configured (its slug is the topic segment).
Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
#: A short free text (a reason, an error).
Text = Annotated[str, StringConstraints(min_length=1, max_length=500)]
#: A counter / service name: lowercase slug.
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]+(_[a-z0-9]+)*$", max_length=200)]
Transaction = Annotated[str, StringConstraints(max_length=100)] | int
Steps = Annotated[list[FiniteFloat], Field(min_length=1, max_length=MAX_STEPS)]
NonNegativeSteps = Annotated[list[NonNegativeFloat], Field(min_length=1, max_length=MAX_STEPS)]
StepS = Annotated[int, Field(gt=0, le=86_400)]
Names = Annotated[list[Name], Field(max_length=MAX_DEVICES)]
OnOff = Literal["on", "off"]

DeviceType = Literal["HWE-P1", "HWE-SKT", "HWE-BAT"]
Availability = Literal["online", "offline"]
AVAILABILITY_ONLINE: Availability = "online"
AVAILABILITY_OFFLINE: Availability = "offline"


#: The unit of a variance or covariance of powers (no suffix spells it).
_W2: dict[str, Any] = {"unit": "W²"}


def _key(name: str) -> dict[str, Any]:
    """Field metadata: the placeholder naming a dict's keys in the README table."""
    return {"key": name}


class MessageError(ValueError):
    """A payload that cannot be used: one line naming the field and the problem.

    `field` is the dotted field path (`"power_w"`, `"sockets.boiler.states[3]"`), or
    `"(payload)"` when the payload as a whole is unusable.
    """

    def __init__(self, message: str, field: str = "(payload)") -> None:
        super().__init__(message)
        self.field = field


class UnsupportedVersionError(MessageError):
    """A `schema_version` this build does not know (a counted drop, like any MessageError)."""


class Message(BaseModel):
    """Base of every message: unknown extra fields ignored, finite floats, immutable."""

    model_config = ConfigDict(
        extra="ignore", allow_inf_nan=False, frozen=True, str_max_length=1_000
    )

    #: Whether `schema_version` must be present on the wire (False: hand-typed commands).
    wire_version_required: ClassVar[bool] = True


# --- measurements -------------------------------------------------------------------------


class DeviceMeasurement(Message):
    """One device's latest reading (P1 meter, Energy Socket or Plug-In Battery).

    Sign of `power_w` as HomeWizard gives it: P1 negative = export to the grid, socket positive
    = drawn by the load, battery positive = charging.
    """

    schema_version: Literal[1] = 1
    timestamp: WireTime
    device: Name
    device_type: DeviceType
    power_w: FiniteFloat
    energy_import_kwh: NonNegativeFloat | None = None
    energy_export_kwh: NonNegativeFloat | None = None
    #: Energy Socket relay state and lock, when known (HWE-SKT only).
    power_on: bool | None = None
    switch_lock: bool | None = None
    #: Battery state of charge (HWE-BAT only).
    state_of_charge_pct: Percent | None = None
    #: Local API version the reading came from.
    api: Literal["v1", "v2"]
    #: When the device last booted (now − its API v2 `uptime_s`), when known: a later one
    #: than before means it restarted (a power cut, say).
    booted_at: WireTime | None = None

    @model_validator(mode="after")
    def _fields_fit_device(self) -> DeviceMeasurement:
        if self.device_type != "HWE-SKT" and (
            self.power_on is not None or self.switch_lock is not None
        ):
            raise ValueError(f"power_on/switch_lock only exist on HWE-SKT, not {self.device_type}")
        if self.device_type != "HWE-BAT" and self.state_of_charge_pct is not None:
            raise ValueError(f"state_of_charge_pct only exists on HWE-BAT, not {self.device_type}")
        if self.device_type == "HWE-BAT" and self.api != "v2":
            raise ValueError("HWE-BAT only speaks the v2 API")
        return self


class HouseSurplus(Message):
    """The house's solar surplus: what could go to the controlled loads without import.

    `surplus_w = -p1_power_w + sum(sockets_w) + sum(batteries_w)`: export at the P1 meter, plus
    what the controlled sockets draw, plus what the batteries charge (a discharging battery counts
    negative). Checked to within 1 W.
    """

    schema_version: Literal[1] = 1
    timestamp: WireTime
    surplus_w: FiniteFloat
    #: P1 meter power, negative = export.
    p1_power_w: FiniteFloat
    #: Power each controlled socket draws, W.
    sockets_w: Annotated[
        dict[Name, FiniteFloat], Field(max_length=MAX_DEVICES, json_schema_extra=_key("socket"))
    ] = {}
    #: Power each battery charges (negative = discharging), W.
    batteries_w: Annotated[
        dict[Name, FiniteFloat], Field(max_length=MAX_DEVICES, json_schema_extra=_key("battery"))
    ] = {}
    #: Devices whose fresh readings the figure is made of (the P1 meter included).
    based_on: Names
    #: Configured devices with no fresh reading (their share is left out).
    missing: Names = []

    @model_validator(mode="after")
    def _consistent(self) -> HouseSurplus:
        expected = -self.p1_power_w + sum(self.sockets_w.values()) + sum(self.batteries_w.values())
        if abs(expected - self.surplus_w) > _SURPLUS_TOLERANCE_W:
            raise ValueError(
                f"surplus_w {self.surplus_w} W is not -p1_power_w + sockets_w + batteries_w "
                f"= {expected:.1f} W"
            )
        based = set(self.based_on)
        outside = [n for n in [*self.sockets_w, *self.batteries_w] if n not in based]
        if outside:
            raise ValueError(f"breakdown names {outside[0]!r}, which is not in based_on")
        both = based & set(self.missing)
        if both:
            raise ValueError(f"{sorted(both)[0]!r} is both in based_on and missing")
        return self


# --- forecast -----------------------------------------------------------------------------


class Forecast(Message):
    """Solar production forecast: one mean power per step from `start`."""

    schema_version: Literal[1] = 1
    timestamp: WireTime
    start: WireTime
    step_s: StepS
    #: Mean solar power per step, W (never negative).
    power_w: NonNegativeSteps
    made_at: WireTime
    #: Where it came from: "open-meteo", "simulated", "clear-sky", ...
    source: Name
    #: Weather model name (e.g. "best_match", "icon_d2"); "" when not applicable.
    model: Annotated[str, StringConstraints(max_length=100)] = ""
    #: Share of the production per configured array (sums to 1 when given).
    arrays: Annotated[
        dict[Name, Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]],
        Field(max_length=MAX_DEVICES, json_schema_extra={"key": "array", "unit": "share 0–1"}),
    ] = {}
    #: True when this is a fallback (the preferred source failed).
    fallback: bool = False
    #: The PV model ("quartz-solar-forecast 1.2.12 gb (model-0.4.0)", "clear-sky"); "" if unknown.
    pv_model: Annotated[str, StringConstraints(max_length=100)] = ""

    @model_validator(mode="after")
    def _shares_sum_to_one(self) -> Forecast:
        if self.arrays and abs(sum(self.arrays.values()) - 1.0) > 1e-3:
            raise ValueError(f"arrays shares sum to {sum(self.arrays.values()):.4f}, not 1")
        return self

    @property
    def end(self) -> datetime:
        """End of the last step."""
        return self.start + timedelta(seconds=self.step_s * len(self.power_w))


class ForecastRequest(Message):
    """Ask the forecaster for a fresh forecast now (answered on the response topic)."""

    wire_version_required: ClassVar[bool] = False

    schema_version: Literal[1] = 1
    timestamp: WireTime | None = None
    #: Echoed in the response so the requester can pair them.
    transaction: Transaction | None = None


class ForecastResult(Message):
    """What a successful re-forecast produced (the forecast itself is on the forecast topic)."""

    made_at: WireTime
    source: Name
    fallback: bool
    #: Number of steps in the new forecast.
    steps: Annotated[int, Field(ge=0, le=MAX_STEPS, json_schema_extra={"unit": "count"})]


class ForecastResponse(Message):
    """The forecaster's answer: status ok with `data`, or error with `error`."""

    schema_version: Literal[1] = 1
    timestamp: WireTime
    status: Literal["ok", "error"]
    data: ForecastResult | None = None
    error: Text | None = None
    transaction: Transaction | None = None

    @model_validator(mode="after")
    def _status_matches(self) -> ForecastResponse:
        if self.status == "ok" and (self.data is None or self.error is not None):
            raise ValueError("status ok needs data and no error")
        if self.status == "error" and (self.error is None or self.data is not None):
            raise ValueError("status error needs error and no data")
        return self


# --- plan ---------------------------------------------------------------------------------


class SocketPlan(Message):
    """One socket's row of the plan."""

    #: Planned relay state per step (1 = on).
    states: Annotated[list[Literal[0, 1]], Field(min_length=1, max_length=MAX_STEPS)]
    #: Energy the socket is expected to take per step, Wh.
    energy_wh: NonNegativeSteps

    @model_validator(mode="after")
    def _same_length(self) -> SocketPlan:
        if len(self.states) != len(self.energy_wh):
            raise ValueError(
                f"states has {len(self.states)} steps but energy_wh has {len(self.energy_wh)}"
            )
        return self


class PlanMessage(Message):
    """The scheduler's current plan (all per-step lists have the same length)."""

    schema_version: Literal[1] = 1
    timestamp: WireTime
    made_at: WireTime
    start: WireTime
    step_s: StepS
    sockets: Annotated[
        dict[Name, SocketPlan], Field(max_length=MAX_DEVICES, json_schema_extra=_key("socket"))
    ] = {}
    #: Planned battery power per step, W (positive = charging).
    battery_power_w: Steps
    #: Planned energy stored in the batteries at the end of each step, Wh.
    battery_energy_wh: NonNegativeSteps
    planner: Name
    status: PlanStatus
    solve_s: NonNegativeFloat
    #: `made_at` of the forecast planned on (absent when planned without one).
    forecast_made_at: WireTime | None = None
    #: The surplus per step the plan was made for, W.
    available_power_w: Steps
    #: The forecast solar power per step, resampled to the plan's steps, before the shift
    #: by the measured surplus (absent when planned without a forecast).
    forecast_power_w: Steps | None = None
    #: The surplus measured when planning, W (sockets left out of the plan subtracted).
    measured_surplus_w: FiniteFloat | None = None
    #: The factor the forecast was scaled by to fit the day's measurements
    #: (`forecast_shift = "scaled"`; absent when not scaled).
    forecast_scale: Annotated[
        float | None, Field(gt=0, allow_inf_nan=False, json_schema_extra={"unit": "factor"})
    ] = None
    #: Sockets left out of the plan (under an override or manual control).
    excluded: Names = []
    #: Why this is not a forecast plan ("no forecast", "stale forecast", ...); absent if it is.
    fallback_reason: Text | None = None
    #: The batteries' planned mode per step (absent: `zero` throughout, or no batteries).
    battery_mode: Annotated[list[BatteryMode], Field(min_length=1, max_length=MAX_STEPS)] | None = (
        None
    )
    #: The prices planned on, per step, EUR/kWh (absent: planned without prices).
    import_price_eur_kwh: Steps | None = None
    export_price_eur_kwh: Steps | None = None
    #: What the plan expects from its start to the horizon's end: grid import and export, Wh,
    #: and (with prices) the cost, EUR (import cost − export earnings).
    expected_import_wh: NonNegativeFloat | None = None
    expected_export_wh: NonNegativeFloat | None = None
    expected_cost_eur: FiniteFloat | None = None
    #: The same for the original project's (reference) plan on the same problem.
    reference_import_wh: NonNegativeFloat | None = None
    reference_cost_eur: FiniteFloat | None = None
    #: Which tier made it: `full` (the background worker) or `quick` (a re-plan in the poll).
    tier: Literal["full", "quick"] | None = None

    @model_validator(mode="after")
    def _same_length(self) -> PlanMessage:
        n = len(self.available_power_w)
        rows: list[tuple[str, int]] = [
            ("battery_power_w", len(self.battery_power_w)),
            ("battery_energy_wh", len(self.battery_energy_wh)),
        ]
        for what, values in (
            ("forecast_power_w", self.forecast_power_w),
            ("battery_mode", self.battery_mode),
            ("import_price_eur_kwh", self.import_price_eur_kwh),
            ("export_price_eur_kwh", self.export_price_eur_kwh),
        ):
            if values is not None:
                rows.append((what, len(values)))
        rows += [(f"sockets.{name}.states", len(p.states)) for name, p in self.sockets.items()]
        for what, length in rows:
            if length != n:
                raise ValueError(f"{what} has {length} steps, available_power_w has {n}")
        return self

    @property
    def n_steps(self) -> int:
        return len(self.available_power_w)

    def step_at(self, when: datetime) -> int | None:
        """Index of the step holding `when`, or None outside the plan."""
        offset = (when - self.start).total_seconds()
        if offset < 0:
            return None
        index = math.floor(offset / self.step_s)
        return index if index < self.n_steps else None


# --- sockets: commands, overrides, state, events ------------------------------------------


class SocketCommand(Message):
    """The scheduler's desired state for one socket (not retained: never replayed stale)."""

    schema_version: Literal[1] = 1
    timestamp: WireTime
    socket: Name
    state: OnOff
    #: Why, in a few words ("plan step 12", "needed before 07:00", "fallback: no plan").
    reason: Text
    #: `made_at` of the plan this comes from (absent for a fallback without a plan).
    plan_made_at: WireTime | None = None
    #: Until when the command holds (end of the plan step); the actuator's fallback applies after.
    valid_until: WireTime | None = None


class OverrideRequest(Message):
    """A manual override command: `{"state": "on"|"off"|"auto", "until"?, "duration_s"?}`.

    `auto` ends an override (back to the plan). `on`/`off` hold until `until`, or for
    `duration_s`, or (neither given) for the actuator's configured default lease: an override
    always expires. `until` and `duration_s` are exclusive; `duration_s` is in (0, 7 days].
    """

    wire_version_required: ClassVar[bool] = False

    schema_version: Literal[1] = 1
    timestamp: WireTime | None = None
    state: Literal["on", "off", "auto"]
    until: WireTime | None = None
    duration_s: Annotated[float, Field(gt=0, le=MAX_OVERRIDE_S, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _lease(self) -> OverrideRequest:
        if self.until is not None and self.duration_s is not None:
            raise ValueError("give until or duration_s, not both")
        if self.state == "auto" and (self.until is not None or self.duration_s is not None):
            raise ValueError("state auto ends the override: until/duration_s make no sense")
        return self

    def expires_at(self, now: datetime, default_duration_s: float) -> datetime | None:
        """When the override ends (None for `auto`); raises MessageError if out of range.

        `until` must lie in (now, now + 7 days]; `default_duration_s` applies when neither
        `until` nor `duration_s` is given.
        """
        if self.state == "auto":
            return None
        if self.until is not None:
            if self.until <= now:
                raise MessageError(f"until: {self.until.isoformat()} is not in the future", "until")
            if self.until - now > timedelta(seconds=MAX_OVERRIDE_S):
                raise MessageError("until: more than 7 days ahead", "until")
            return self.until
        seconds = self.duration_s if self.duration_s is not None else default_duration_s
        if not 0 < seconds <= MAX_OVERRIDE_S:
            raise MessageError(
                f"duration_s: {seconds} is not in (0, {MAX_OVERRIDE_S}]", "duration_s"
            )
        return now + timedelta(seconds=seconds)


class OverrideState(Message):
    """The override in force on one socket (retained); state `auto` = none, the plan rules."""

    schema_version: Literal[1] = 1
    timestamp: WireTime
    socket: Name
    state: Literal["on", "off", "auto"]
    #: End of the lease (required for on/off: an override always expires; absent for auto).
    until: WireTime | None = None
    #: Who set it: an MQTT `/set` command, the socket's own button/app, or the lease running out.
    source: Literal["mqtt", "manual-switch", "expiry"]
    set_at: WireTime

    @model_validator(mode="after")
    def _lease(self) -> OverrideState:
        if self.state == "auto" and self.until is not None:
            raise ValueError("state auto has no until")
        if self.state != "auto" and self.until is None:
            raise ValueError(f"state {self.state} needs until (an override always expires)")
        return self


class SocketState(Message):
    """What the socket actually does, as the actuator last saw it (retained)."""

    schema_version: Literal[1] = 1
    timestamp: WireTime
    socket: Name
    #: Relay state; absent when the socket could not be read.
    power_on: bool | None = None
    switch_lock: bool | None = None
    controlled_by: Literal["plan", "override", "manual", "fallback"]
    last_switch_at: WireTime | None = None
    last_switch_reason: Text | None = None
    #: The state the socket should be in now (absent: nothing asks for one yet).
    desired: OnOff | None = None
    #: A switch to `desired` waits until then (the switch interval, or a retry after a failure).
    held_until: WireTime | None = None


class SwitchEvent(Message):
    """One relay switch the actuator made (not retained)."""

    schema_version: Literal[1] = 1
    timestamp: WireTime
    socket: Name
    from_state: OnOff
    to_state: OnOff
    reason: Literal["plan", "override", "fallback"]
    at: WireTime

    @model_validator(mode="after")
    def _a_change(self) -> SwitchEvent:
        if self.from_state == self.to_state:
            raise ValueError(f"from_state and to_state are both {self.to_state}")
        return self


class SocketNextOn(Message):
    """When the plan next has one socket on (the bridge's reading of the plan, retained).

    Re-published at each plan step boundary, so it stays right between plans.
    """

    schema_version: Literal[1] = 1
    timestamp: WireTime
    socket: Name
    #: Start of the planned on-block running now or next to come (absent: none left).
    next_on: WireTime | None = None
    #: End of that block (absent with `next_on`).
    next_off: WireTime | None = None
    #: The plan has the socket on in the current step.
    on_now: bool = False
    #: The socket has a row in the plan (false: left out, e.g. under an override).
    in_plan: bool
    #: Energy the plan still gives the socket, from the current step on, Wh.
    planned_energy_wh: NonNegativeFloat = 0.0
    #: `made_at` of the plan read.
    plan_made_at: WireTime

    @model_validator(mode="after")
    def _block(self) -> SocketNextOn:
        if (self.next_on is None) != (self.next_off is None):
            raise ValueError("next_on and next_off come together")
        if self.next_on is not None and self.next_off is not None and self.next_off <= self.next_on:
            raise ValueError("next_off must be after next_on")
        if self.on_now and self.next_on is None:
            raise ValueError("on_now needs next_on (the block running now)")
        return self


# --- services -----------------------------------------------------------------------------


class ServiceStatus(Message):
    """A service's status and counters (retained; liveness itself is the plain availability)."""

    schema_version: Literal[1] = 1
    timestamp: WireTime
    service: Slug
    state: Availability
    version: Name
    started_at: WireTime
    #: Running counters (messages received, dropped, polls failed, ...).
    counters: Annotated[
        dict[Slug, Annotated[int, Field(ge=0)]],
        Field(max_length=256, json_schema_extra={"key": "counter", "unit": "count"}),
    ] = {}


# --- prices, batteries, cost ----------------------------------------------------------------


class Prices(Message):
    """Energy prices per step (retained): all-in import and export, EUR/kWh.

    Import is what a kWh drawn from the grid costs, all in ((day-ahead + supplier markup +
    energy tax) x VAT on a dynamic contract); export what a kWh sent to the grid earns
    (negative: it costs). Covers today and, once known (~13:00), tomorrow.
    """

    schema_version: Literal[1] = 1
    timestamp: WireTime
    start: WireTime
    step_s: StepS
    import_eur_kwh: Steps
    export_eur_kwh: Steps
    #: The bare day-ahead price per step, EUR/kWh (absent for a fixed tariff).
    day_ahead_eur_kwh: Steps | None = None
    #: Where the prices come from: the configured source, or `fixed` when it stands in.
    source: Literal["fixed", "energyzero", "entsoe"]
    #: True when the configured source failed and the fixed tariff stands in.
    fallback: bool = False
    #: When the prices were fetched (or the tariff applied).
    made_at: WireTime
    #: Bidding zone of the day-ahead prices (e.g. `NL`); absent for a fixed tariff.
    area: Text | None = None

    @model_validator(mode="after")
    def _same_length(self) -> Prices:
        n = len(self.import_eur_kwh)
        rows = [("export_eur_kwh", len(self.export_eur_kwh))]
        if self.day_ahead_eur_kwh is not None:
            rows.append(("day_ahead_eur_kwh", len(self.day_ahead_eur_kwh)))
        for what, length in rows:
            if length != n:
                raise ValueError(f"{what} has {length} steps, import_eur_kwh has {n}")
        return self

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.step_s * len(self.import_eur_kwh))


class BatteryCommand(Message):
    """The scheduler's desired mode for the batteries (not retained: never replayed stale).

    One mode for all batteries together: the P1 meter's `PUT /api/batteries` sets them all.
    """

    schema_version: Literal[1] = 1
    timestamp: WireTime
    mode: BatteryMode
    #: Why, in a few words ("plan step 12", "keep for the evening peak").
    reason: Text
    plan_made_at: WireTime | None = None
    #: Until when the command holds; after it the actuator puts the batteries back in `zero`.
    valid_until: WireTime | None = None


class BatteryOverrideRequest(Message):
    """`{"state": "auto"}`: hand the batteries back to the plan after a mode someone set in the
    HomeWizard app (which the actuator respects until the next daily boundary)."""

    wire_version_required: ClassVar[bool] = False

    schema_version: Literal[1] = 1
    timestamp: WireTime | None = None
    state: Literal["auto"]


class BatteryState(Message):
    """The batteries' mode as the actuator last saw it on the P1 meter, and who controls it."""

    schema_version: Literal[1] = 1
    timestamp: WireTime
    #: The mode in force, in the plan's terms (absent: unknown, e.g. the P1 meter unreadable).
    mode: BatteryMode | None = None
    #: What the P1 meter reports: its `mode` and `permissions` as they are.
    device_mode: Text | None = None
    permissions: Annotated[list[Text], Field(max_length=8)] | None = None
    #: `plan`: the scheduler's modes; `app`: someone set a mode in the HomeWizard app (held,
    #: like a hand switch); `fallback`: back in `zero` (the scheduler silent, shutting down);
    #: `none`: no P1 token, the batteries are left in their own mode.
    controlled_by: Literal["plan", "app", "fallback", "none"]
    #: The mode the batteries should be in now (absent: nothing asks for one).
    desired: BatteryMode | None = None
    last_change_at: WireTime | None = None
    last_change_reason: Text | None = None
    #: A change to `desired` waits until then (the switch interval, or a retry).
    held_until: WireTime | None = None


class CostSummary(Message):
    """Money today (retained): prices now, the day's cost so far, what the plan saves."""

    schema_version: Literal[1] = 1
    timestamp: WireTime
    #: The day (from the daily boundary) the figures are for.
    day_start: WireTime
    #: The prices in force now, EUR/kWh.
    import_now_eur_kwh: FiniteFloat | None = None
    export_now_eur_kwh: FiniteFloat | None = None
    #: Where the prices come from (`Prices.source`) and whether the fixed tariff stands in.
    prices_source: Text | None = None
    prices_fallback: bool = False
    #: Grid energy today so far, from the P1 meter's counters, kWh.
    import_today_kwh: NonNegativeFloat | None = None
    export_today_kwh: NonNegativeFloat | None = None
    #: Today's cost so far: import x price − export x price, step by step, EUR.
    cost_today_eur: FiniteFloat | None = None
    #: The current plan's expected cost from now to the boundary, EUR.
    plan_cost_eur: FiniteFloat | None = None
    #: The same for the original's (reference) plan on the same problem, EUR.
    reference_cost_eur: FiniteFloat | None = None
    #: What the plan saves on the rest of the day against the reference plan, EUR: the
    #: difference of their net costs (cost − the value of the energy put into optional
    #: stores, as the planner counts it); without optional sockets that is
    #: reference_cost_eur − plan_cost_eur.
    savings_eur: FiniteFloat | None = None
    #: The P1 meter's counters at its last reading taken into today's figures (total import
    #: and export, kWh), so a restarted scheduler counts on from there without a gap.
    meter_import_kwh: NonNegativeFloat | None = None
    meter_export_kwh: NonNegativeFloat | None = None
    meter_read_at: WireTime | None = None


# --- energy books -------------------------------------------------------------------------


class SocketBook(Message):
    """One socket's energy account for the day (the fields of `shared.bookkeeping.SocketBook`)."""

    name: Name
    #: The day this book counts for (absent: not started yet).
    day_start: WireTime | None = None
    #: Energy delivered to the load since `day_start`, Wh.
    energy_wh: NonNegativeFloat = 0.0
    #: The store reads full.
    full: bool = False
    #: The store read full at some time since `day_start`: the daily need was met (a draw
    #: after that is the next day's). Optional (absent in books of older versions: False).
    filled: bool = False
    #: Switched on by hand: out of the scheduler's control until full or the day boundary.
    manual: bool = False
    #: Last power sample integrated, so a restart continues the integration.
    last_sample_at: WireTime | None = None
    last_power_w: NonNegativeFloat = 0.0
    #: First sample of the current run of 'on' samples (absent: off), so a low power
    #: read just after a switch-on is not taken for a full store.
    on_since: WireTime | None = None

    @model_validator(mode="after")
    def _on_since_sampled(self) -> SocketBook:
        check_on_since(self.on_since, self.last_sample_at)
        return self


class BatteryBook(Message):
    """One battery's energy, from its last reading (capacity x state of charge)."""

    name: Name
    energy_wh: NonNegativeFloat
    state_of_charge_pct: Percent | None = None
    #: When the reading was made.
    measured_at: WireTime | None = None


class ForecastFitBook(Message):
    """The scheduler's fit of the measured surplus on the forecast (`forecast_shift = "scaled"`):
    exponentially weighted statistics of (forecast PV, measured surplus) pairs."""

    #: The measuring time they hold (weighted), s.
    weight_s: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    #: Their means, W.
    forecast_w: FiniteFloat
    measured_w: FiniteFloat
    #: The forecast's variance and the covariance of forecast and measurement, W².
    forecast_var: Annotated[float, Field(ge=0, allow_inf_nan=False, json_schema_extra=_W2)]
    covariance: Annotated[float, Field(allow_inf_nan=False, json_schema_extra=_W2)]
    #: When the last pair was added.
    at: WireTime


class EnergyBooks(Message):
    """The scheduler's energy books (retained, read back on start so a restart loses nothing).

    Field-compatible with `shared.bookkeeping.Books` both ways:
    `EnergyBooks.model_validate({**books_to_dict(books), "timestamp": now})` and
    `restore(message.model_dump(mode="json"), ...)` (extra fields are ignored on each side).
    """

    schema_version: Literal[1] = 1
    timestamp: WireTime
    day_start: WireTime
    sockets: Annotated[
        dict[Name, SocketBook], Field(max_length=MAX_DEVICES, json_schema_extra=_key("socket"))
    ] = {}
    #: Energy in each battery (the scheduler's; `shared.bookkeeping.Books` ignores it).
    batteries: Annotated[
        dict[Name, BatteryBook],
        Field(max_length=MAX_DEVICES, json_schema_extra=_key("battery")),
    ] = {}
    #: The scheduler's mean offset (measured surplus − forecast) its fading shift tends to,
    #: W, and when it was last updated (kept so a restart does not start it over).
    shift_baseline_w: FiniteFloat | None = None
    shift_baseline_at: WireTime | None = None
    #: The scheduler's fit of the measured surplus on the forecast (kept for the same reason;
    #: absent before its first measurement, and in books of older versions).
    shift_fit: ForecastFitBook | None = None

    @model_validator(mode="after")
    def _consistent(self) -> EnergyBooks:
        for key, book in self.sockets.items():
            if key != book.name:
                raise ValueError(f"book {book.name!r} filed under {key!r}")
            if book.day_start is not None and book.day_start > self.day_start:
                raise ValueError(f"book {key!r} is for a later day than the books")
        for key, battery in self.batteries.items():
            if key != battery.name:
                raise ValueError(f"book {battery.name!r} filed under {key!r}")
        return self


#: Every top-level message model (one per JSON topic).
MESSAGE_MODELS: tuple[type[Message], ...] = (
    DeviceMeasurement,
    HouseSurplus,
    Forecast,
    ForecastRequest,
    ForecastResponse,
    PlanMessage,
    SocketCommand,
    OverrideRequest,
    OverrideState,
    SocketState,
    SwitchEvent,
    SocketNextOn,
    ServiceStatus,
    EnergyBooks,
    Prices,
    BatteryCommand,
    BatteryOverrideRequest,
    BatteryState,
    CostSummary,
)

M = TypeVar("M", bound=Message)


def schema_version_of(model: type[Message]) -> int:
    """The `schema_version` a model speaks (from its Literal)."""
    field = model.model_fields.get("schema_version")
    if field is None:
        raise TypeError(f"{model.__name__} has no schema_version")
    (version,) = typing.get_args(field.annotation)
    if not isinstance(version, int):
        raise TypeError(f"{model.__name__}.schema_version is not a Literal int")
    return version


def parse_message(model: type[M], payload: bytes | str) -> M:
    """Validate one payload strictly as `model`; raises MessageError (one line naming the field).

    Refuses: a non-object, invalid or too deeply nested JSON, a missing or unknown `schema_version`
    (`UnsupportedVersionError`), naive timestamps, NaN/Infinity, wrong types (no coercion).
    Unknown extra fields are ignored. The error's text is short whatever the payload holds.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MessageError(f"(payload): larger than {MAX_PAYLOAD_BYTES} bytes")
    if not payload:  # how MQTT clears a retained message: say so, not "not JSON"
        raise MessageError("(payload): empty (a retained message cleared?)")
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise MessageError(f"(payload): not JSON: {first}") from None
    except RecursionError:  # `[[[[...` a thousand deep: json's C decoder recurses
        raise MessageError("(payload): not JSON: nested too deeply") from None
    if not isinstance(document, dict):
        raise MessageError(f"(payload): a JSON object is expected, not {type(document).__name__}")
    known = schema_version_of(model)
    if "schema_version" not in document:
        if model.wire_version_required:
            raise MessageError("schema_version: missing", "schema_version")
    elif document["schema_version"] != known or isinstance(document["schema_version"], bool):
        raise UnsupportedVersionError(
            f"schema_version: {_clip(repr(document['schema_version']), 60)} is not supported "
            f"by {model.__name__} (this build knows {known})",
            "schema_version",
        )
    try:
        return model.model_validate_json(payload, strict=True)
    except ValidationError as err:
        field, _, problem = describe_validation_error(err).partition(":")
        field = _clip(field, _MAX_FIELD_CHARS)
        text = _clip(" ".join(f"{field}: {problem}".split()), _MAX_ERROR_CHARS)
        raise MessageError(text, field) from None


#: Longest `MessageError` text and field path: what a payload holds (a 1 MB dict key or
#: version string) never makes a 1 MB log line.
_MAX_ERROR_CHARS = 300
_MAX_FIELD_CHARS = 120


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def dump_message(message: Message) -> bytes:
    """The message as compact UTF-8 JSON (absent optional fields as null)."""
    return message.model_dump_json().encode()


def parse_availability(payload: bytes | str) -> Availability:
    """The plain retained availability payload: exactly `online` or `offline`."""
    text = payload.decode(errors="replace") if isinstance(payload, bytes) else payload
    if text == AVAILABILITY_ONLINE:
        return AVAILABILITY_ONLINE
    if text == AVAILABILITY_OFFLINE:
        return AVAILABILITY_OFFLINE
    raise MessageError(f"(payload): availability must be online or offline, not {text[:40]!r}")


def dump_availability(state: Availability) -> bytes:
    """`online` / `offline` as the bytes to publish (the Will is `offline`)."""
    if state not in (AVAILABILITY_ONLINE, AVAILABILITY_OFFLINE):
        raise ValueError(f"availability must be online or offline, not {state!r}")
    return state.encode()
