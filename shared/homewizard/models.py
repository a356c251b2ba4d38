"""What the HomeWizard devices answer, as typed, normalised models.

Every model ignores fields it does not know (devices add data points with new firmware) and
reads a missing optional field as None (devices leave out what they do not measure). Values
are checked strictly: a number sent as a string, a flag sent as a number, a NaN are refused
as `InvalidResponseError` naming the device's field, e.g. `active_power_w: must be a number
(got "12")`. Each model has a `from_*` constructor that takes the decoded JSON as it came
from the device (any object) and raises only `InvalidResponseError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Literal, TypeVar, cast, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from shared.homewizard.errors import InvalidResponseError

#: The battery group's control modes (`GET/PUT /api/batteries` on the P1 meter).
#: `zero`: keep the grid at 0 W; `to_full`: charge to 100 %, then back to `zero`;
#: `standby`: neither charge nor discharge; `predictive`: HomeWizard's cloud plans.
#: Firmware may add modes: `BatteriesState.mode` keeps whatever string the device sent.
BatteryMode = Literal["zero", "to_full", "standby", "predictive"]
BATTERY_MODES: tuple[str, ...] = get_args(BatteryMode)

#: The permissions `PUT /api/batteries` accepts (a subset; `[]` is the same as standby).
BATTERY_PERMISSIONS: tuple[str, ...] = ("charge_allowed", "discharge_allowed")

Number = Annotated[float, Field(allow_inf_nan=False)]

_M = TypeVar("_M", bound=BaseModel)


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


# --- turning a device answer into a model -------------------------------------------

_PROBLEMS = {
    "float_type": "must be a number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "finite_number": "must be a finite number",
    "missing": "is missing",
}


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(err: ValidationError) -> str:
    """The first problem as `field: problem (got value)`."""
    first: ErrorDetails = err.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "(answer)"
    problem = _PROBLEMS.get(first["type"], first["msg"])
    if first["type"] != "missing":
        problem += f" (got {_shown(first.get('input'))})"
    return f"{where}: {problem}"


def _parse(model: type[_M], data: object, host: str, what: str) -> _M:
    if not isinstance(data, dict):
        raise InvalidResponseError(
            host, f"{what}: expected a JSON object, got {type(data).__name__}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as err:
        problem = _describe(err)
    # raised outside the handler: the ValidationError (every value the device sent) is not
    # kept as the error's __context__
    raise InvalidResponseError(host, f"{what}: {problem}")


def _total(total: float | None, parts: Iterable[float | None]) -> float | None:
    """The all-tariffs total, or the sum of the tariff registers when only those are sent."""
    if total is not None:
        return total
    present = [p for p in parts if p is not None]
    return sum(present) if present else None


def _sum_abs(total: float | None, parts: Iterable[float | None]) -> float | None:
    """A total current, or the sum of the phases' absolute currents (as API v2 defines it)."""
    if total is not None:
        return total
    present = [abs(p) for p in parts if p is not None]
    return sum(present) if present else None


# --- device information -------------------------------------------------------------


class DeviceInfo(_Model):
    """`GET /api`: what the device is (both API versions)."""

    product_type: str  # "HWE-P1", "HWE-SKT", "HWE-BAT", ...
    product_name: str | None = None  # "P1 Meter"
    serial: str  # 12 hexadecimal digits, also the MAC address
    firmware_version: str | None = None
    api_version: str  # "v1", or "2.0.0" ...

    @classmethod
    def from_api(cls, data: object, *, host: str = "device") -> DeviceInfo:
        return _parse(cls, data, host, "GET /api")


class SystemInfo(_Model):
    """`GET /api/system` (API v2): the device's system state; only what hwsched reads.

    `uptime_s` restarts from 0 when the device boots: after a power cut, say."""

    uptime_s: int | None = Field(default=None, ge=0)
    wifi_rssi_db: Number | None = None
    cloud_enabled: bool | None = None

    @classmethod
    def from_api(cls, data: object, *, host: str = "device") -> SystemInfo:
        return _parse(cls, data, host, "GET /api/system")


# --- measurements -------------------------------------------------------------------


class _V1Data(_Model):
    """`GET /api/v1/data` (P1 meter, Energy Socket, kWh meter): the fields used here."""

    active_power_w: Number | None = None
    total_power_import_kwh: Number | None = None
    total_power_import_t1_kwh: Number | None = None
    total_power_import_t2_kwh: Number | None = None
    total_power_import_t3_kwh: Number | None = None
    total_power_import_t4_kwh: Number | None = None
    total_power_export_kwh: Number | None = None
    total_power_export_t1_kwh: Number | None = None
    total_power_export_t2_kwh: Number | None = None
    total_power_export_t3_kwh: Number | None = None
    total_power_export_t4_kwh: Number | None = None
    active_voltage_v: Number | None = None
    active_voltage_l1_v: Number | None = None
    active_current_a: Number | None = None
    active_current_l1_a: Number | None = None
    active_current_l2_a: Number | None = None
    active_current_l3_a: Number | None = None
    wifi_strength: Number | None = None


class _V2Measurement(_Model):
    """`GET /api/measurement` (P1 meter, kWh meter, Plug-In Battery): the fields used here."""

    power_w: Number | None = None
    energy_import_kwh: Number | None = None
    energy_import_t1_kwh: Number | None = None
    energy_import_t2_kwh: Number | None = None
    energy_import_t3_kwh: Number | None = None
    energy_import_t4_kwh: Number | None = None
    energy_export_kwh: Number | None = None
    energy_export_t1_kwh: Number | None = None
    energy_export_t2_kwh: Number | None = None
    energy_export_t3_kwh: Number | None = None
    energy_export_t4_kwh: Number | None = None
    voltage_v: Number | None = None
    voltage_l1_v: Number | None = None
    current_a: Number | None = None
    current_l1_a: Number | None = None
    current_l2_a: Number | None = None
    current_l3_a: Number | None = None
    state_of_charge_pct: Number | None = None
    cycles: int | None = None


class Measurement(_Model):
    """One measurement, the same for both API versions; None = the device did not send it.

    Signs as the devices give them: on a P1 meter `power_w` < 0 is export to the grid; on a
    Plug-In Battery `power_w` > 0 is charging; on a socket it is what the load draws.
    When a meter sends only per-tariff registers (t1..t4), the energy totals are their sum;
    when it sends only phase values, `voltage_v` is phase 1's and `current_a` the sum of
    the phases' absolute currents (API v2's definition).
    """

    power_w: float | None = None
    energy_import_kwh: float | None = None
    energy_export_kwh: float | None = None
    state_of_charge_pct: float | None = None
    voltage_v: float | None = None
    current_a: float | None = None
    cycles: int | None = None
    wifi_strength_pct: float | None = None

    @classmethod
    def from_v1(cls, data: object, *, host: str = "device") -> Measurement:
        """From API v1 `GET /api/v1/data` (P1 meter, Energy Socket, kWh meter)."""
        raw = _parse(_V1Data, data, host, "GET /api/v1/data")
        return cls(
            power_w=raw.active_power_w,
            energy_import_kwh=_total(
                raw.total_power_import_kwh,
                (
                    raw.total_power_import_t1_kwh,
                    raw.total_power_import_t2_kwh,
                    raw.total_power_import_t3_kwh,
                    raw.total_power_import_t4_kwh,
                ),
            ),
            energy_export_kwh=_total(
                raw.total_power_export_kwh,
                (
                    raw.total_power_export_t1_kwh,
                    raw.total_power_export_t2_kwh,
                    raw.total_power_export_t3_kwh,
                    raw.total_power_export_t4_kwh,
                ),
            ),
            voltage_v=(
                raw.active_voltage_v
                if raw.active_voltage_v is not None
                else raw.active_voltage_l1_v
            ),
            current_a=_sum_abs(
                raw.active_current_a,
                (raw.active_current_l1_a, raw.active_current_l2_a, raw.active_current_l3_a),
            ),
            wifi_strength_pct=raw.wifi_strength,
        )

    @classmethod
    def from_v2(cls, data: object, *, host: str = "device") -> Measurement:
        """From API v2 `GET /api/measurement` (P1 meter, kWh meter, Plug-In Battery)."""
        raw = _parse(_V2Measurement, data, host, "GET /api/measurement")
        return cls(
            power_w=raw.power_w,
            energy_import_kwh=_total(
                raw.energy_import_kwh,
                (
                    raw.energy_import_t1_kwh,
                    raw.energy_import_t2_kwh,
                    raw.energy_import_t3_kwh,
                    raw.energy_import_t4_kwh,
                ),
            ),
            energy_export_kwh=_total(
                raw.energy_export_kwh,
                (
                    raw.energy_export_t1_kwh,
                    raw.energy_export_t2_kwh,
                    raw.energy_export_t3_kwh,
                    raw.energy_export_t4_kwh,
                ),
            ),
            state_of_charge_pct=raw.state_of_charge_pct,
            voltage_v=raw.voltage_v if raw.voltage_v is not None else raw.voltage_l1_v,
            current_a=_sum_abs(
                raw.current_a, (raw.current_l1_a, raw.current_l2_a, raw.current_l3_a)
            ),
            cycles=raw.cycles,
        )


# --- socket state -------------------------------------------------------------------


class SocketState(_Model):
    """`GET /api/v1/state` of an Energy Socket.

    `switch_lock` true: the socket is on and cannot be switched off (until unlocked).
    `brightness`: the LED ring, 0..255.
    """

    power_on: bool
    switch_lock: bool
    brightness: int | None = None

    @classmethod
    def from_api(cls, data: object, *, host: str = "device") -> SocketState:
        return _parse(cls, data, host, "GET /api/v1/state")


# --- battery group (on the P1 meter) ------------------------------------------------


class BatteriesState(_Model):
    """`GET /api/batteries` on the P1 meter (or kWh meter): the Plug-In Battery group.

    `mode` is kept as the device sent it, also a mode this code does not know yet
    (see `known_mode`). `permissions` (API 2.2+) is a subset of BATTERY_PERMISSIONS;
    `charge_to_full` appeared with API 2.3. Powers in W, > 0 = the batteries consume.
    """

    mode: str
    permissions: list[str] | None = None
    charge_to_full: bool | None = None
    battery_count: int | None = None
    power_w: Number | None = None
    target_power_w: Number | None = None
    max_consumption_w: Number | None = None
    max_production_w: Number | None = None

    @property
    def known_mode(self) -> BatteryMode | None:
        """The mode if it is one of BatteryMode, else None (a newer firmware's mode)."""
        return cast(BatteryMode, self.mode) if self.mode in BATTERY_MODES else None

    @classmethod
    def from_api(cls, data: object, *, host: str = "device") -> BatteriesState:
        return _parse(cls, data, host, "GET /api/batteries")


__all__ = [
    "BATTERY_MODES",
    "BATTERY_PERMISSIONS",
    "BatteriesState",
    "BatteryMode",
    "DeviceInfo",
    "Measurement",
    "SocketState",
]
