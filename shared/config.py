"""Configuration: the devices file (the original project's format) and hwsched's settings.

Two files, two owners:

- the devices file, `config/config_devices.json`, is the ORIGINAL project's
  (IanVliet/control-homewizard-devices) `config_devices.json`, read as it is: a user
  moving over keeps it. Its keys, hwsched's documented additions and comment keys
  (starting with `_`, e.g. `_comment`) are read; any other key is refused with the
  closest known one (`daily_needs`: did you mean "daily_need"?), since a typo would
  silently change what a socket is. Values are validated strictly (a power given as the
  string "2000" is refused, an integer is fine) and for plausibility (a PV array's
  `capacity_kwp` above 100 is taken for W; a socket above 3680 W is more than it switches).
  hwsched reads two optional additions: `v2_port` (P1 meter, battery: the API v2 port
  when not 443, as in the simulated house's file) and the P1 meter's own `user_info`
  (its API v2 token, for battery control), validated as a battery's.
- the settings, `config/settings.toml` plus `HWSCHED_*` environment variables (the
  environment wins), are hwsched's own: broker, topics, time zone, intervals, the devices' CA.

Anything wrong is refused at load as a `ConfigError` whose message is ONE line naming
the file (or environment variable), the field and the problem, e.g.
`config/config_devices.json: devices[2].max_power_usage: must be > 0 (got -5)`.
API v2 tokens and the broker password are `SecretStr`: never in a repr or a message.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import ssl
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from datetime import time
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from shared.messages import MAX_DEVICES
from shared.naming import slugify
from shared.planning.problem import BatterySpec, SocketSpec
from shared.topics import RESERVED_NAMES

DEVICE_TYPES = ("HWE-P1", "HWE-SKT", "HWE-BAT")
DEFAULT_SETTINGS_FILE = Path("config/settings.toml")
DEFAULT_DEVICES_FILE = Path("config/config_devices.json")
EXAMPLE_DEVICES_FILE = Path("config/config_devices.example.json")
SETTINGS_FILE_ENV = "HWSCHED_SETTINGS_FILE"
ENV_PREFIX = "HWSCHED_"
ENV_NESTED_DELIMITER = "__"
#: `HWSCHED_*` variables that are not `Settings` fields but are read elsewhere: the settings
#: file, `hwsched run`'s broker choice, and the forecaster's own `HWSCHED_FORECAST__*`.
OTHER_ENV_VARS = frozenset({SETTINGS_FILE_ENV, "HWSCHED_RUN_BROKER"})
OTHER_ENV_PREFIXES = ("HWSCHED_FORECAST__",)
#: The largest devices or settings file read (the original's file is a few kB).
MAX_FILE_BYTES = 1024 * 1024

#: Field names whose values are never shown in a message.
_SECRET_FIELDS = frozenset({"token", "password", "user_info", "entsoe_token"})
#: Tables holding a password: a value given in place of the whole table is not shown either.
_SECRET_TABLES = frozenset({("broker",), ("dashboard",)})
_TOKEN = re.compile(r"[0-9a-fA-F]{32}")
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")


class ConfigError(ValueError):
    """Configuration that cannot be used: one line naming file, field and problem."""


class _FieldError(ValueError):
    """A refusal raised by a validator about a sub-field (`loc` relative to the field)."""

    def __init__(self, loc: tuple[int | str, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


# --- field checks -------------------------------------------------------------------


def _shown(value: object) -> str:
    """A value as it would read in the file, on one line and short."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _no_control(value: str) -> str:
    """Refuse control characters (a newline in a name would split log lines and messages)."""
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ValueError(f"must not contain control characters (got {_shown(value)})")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return _no_control(value)


def _check_host(value: str) -> str:
    """An IP address or host name: no scheme, no port, no path, no spaces."""
    if not value.strip():
        raise ValueError("must not be empty")
    if "://" in value:
        raise ValueError(f"must be a bare IP address or host name, no scheme (got {_shown(value)})")
    if any(c.isspace() for c in value):
        raise ValueError(f"must not contain spaces (got {_shown(value)})")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOST_NAME.fullmatch(value):
            raise ValueError(
                f"must be an IP address or host name, with the port (if any) in `port` "
                f"(got {_shown(value)})"
            ) from None
        if value.rstrip(".").rsplit(".", 1)[-1].isdigit():  # 192.168.1.300, 10.0.1: no name
            raise ValueError(f"not a valid IP address (got {_shown(value)})") from None
    return value


def _check_token(token: SecretStr) -> SecretStr:
    """A HomeWizard API v2 token: 32 hexadecimal characters (never echoed)."""
    value = token.get_secret_value()
    if not _TOKEN.fullmatch(value):
        what = "not all hexadecimal" if len(value) == 32 else f"{len(value)} characters"
        raise ValueError(f"must be a HomeWizard API v2 token of 32 hexadecimal characters ({what})")
    return token


def _check_topic(value: str) -> str:
    """An MQTT topic prefix: no wildcards, no empty levels, no leading/trailing `/`."""
    if not value:
        raise ValueError("must not be empty")
    if "#" in value or "+" in value:
        raise ValueError(f"must not contain the MQTT wildcards # or + (got {_shown(value)})")
    if value.startswith("/") or value.endswith("/"):
        raise ValueError(f"must not start or end with / (got {_shown(value)})")
    if "//" in value or "\0" in value or any(c.isspace() for c in value):
        raise ValueError(f"must not contain empty levels, spaces or NUL (got {_shown(value)})")
    return _no_control(value)


def _check_timezone(key: str) -> str:
    """An IANA time zone name (with its daylight-saving rules), e.g. Europe/Amsterdam."""
    try:
        ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown time zone {_shown(key)}: use an IANA name like Europe/Amsterdam"
        ) from None
    return key


def _check_local_time(value: time) -> time:
    if value.tzinfo is not None:
        raise ValueError("must be a local time like 06:00, without offset (see `timezone`)")
    return value


def _check_ca_file(value: Path | None) -> Path | None:
    """A CA bundle that exists and holds at least one PEM certificate."""
    if value is None:
        return None
    if not value.is_file():
        raise ValueError(f"file not found: {value}")
    try:
        ssl.create_default_context(cafile=str(value))
    except ssl.SSLError as err:
        reason = err.reason or "unreadable"
        raise ValueError(
            f"{value}: not a PEM CA certificate ({reason.lower().replace('_', ' ')})"
        ) from None
    except OSError as err:
        raise ValueError(f"{value}: cannot read: {err.strerror}") from None
    return value


def _check_file_path(value: Path) -> Path:
    if str(value) in ("", "."):
        raise ValueError("must name a file")
    return value


def _time_not_number(value: object) -> object:
    """A number or a bool is not a time of day (pydantic would read 6 as 00:00:06 UTC)."""
    if isinstance(value, int | float):
        raise ValueError(f"must be a time like 06:00 (got {_shown(value)})")
    return value


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


#: The largest PV array a house's devices file may name, kWp (a large home roof is ~30).
MAX_ARRAY_KWP = 100.0
#: The most an Energy Socket switches, W (16 A at 230 V).
MAX_SOCKET_W = 3680.0
#: The most a battery's charge or discharge power may be, W (a Plug-In Battery: 800 W).
MAX_BATTERY_W = 20_000.0


def _check_kwp(value: float) -> float:
    """A PV array's peak power in kWp: more than `MAX_ARRAY_KWP` is taken for watts."""
    if value > MAX_ARRAY_KWP:
        raise ValueError(
            f"must be the array's peak power in kWp, at most {MAX_ARRAY_KWP:g} (got "
            f"{_bound(value)}: if that is W, write {_bound(value / 1000)})"
        )
    return value


def _check_socket_w(value: float) -> float:
    if value > MAX_SOCKET_W:
        raise ValueError(
            f"must be the load's power in W, at most {MAX_SOCKET_W:g} (an Energy Socket "
            f"switches at most 16 A at 230 V; got {_bound(value)})"
        )
    return value


def _check_battery_w(value: float) -> float:
    if value > MAX_BATTERY_W:
        raise ValueError(
            f"must be the battery's charge/discharge power in W, at most {MAX_BATTERY_W:g} "
            f"(got {_bound(value)})"
        )
    return value


NonBlank = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_not_blank)]
Host = Annotated[str, AfterValidator(_check_host)]
Port = Annotated[int, Field(ge=1, le=65535)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Ratio = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Token = Annotated[SecretStr, AfterValidator(_check_token)]
TopicPrefix = Annotated[str, Field(max_length=250), AfterValidator(_check_topic)]


# --- the devices file ---------------------------------------------------------------


#: Keys of the devices file read elsewhere or not used, per model class name: the simulated
#: house's own `"simulator"` settings (services/simulator/settings.py), quartz's
#: `PVSite.inverter_type` (hwsched forecasts from the weather, not from an inverter).
_UNUSED_KEYS: dict[str, frozenset[str]] = {
    "DevicesConfig": frozenset({"simulator"}),
    "QuartzParameters": frozenset({"inverter_type"}),
}


def _is_comment_key(key: str) -> bool:
    """`_comment`, `_note`, ...: a key starting with `_` is a comment, accepted anywhere."""
    return key.startswith("_")


def _known_elsewhere(key: str) -> str:
    """` (a key of a battery (HWE-BAT) ...)` when `key` belongs to another device type."""
    kinds = [
        f"{label} ({tag})"
        for tag, label, model in (
            ("HWE-P1", "P1 meter", P1Config),
            ("HWE-SKT", "socket", SocketConfig),
            ("HWE-BAT", "battery", BatteryConfig),
        )
        if key in model.model_fields
    ]
    return f": a key of a {' or '.join(kinds)}" if kinds else ""


def unknown_key_message(
    key: str, known: Iterable[str], model: str = "", shown: Sequence[str] = ()
) -> str:
    """`unknown key (did you mean "daily_need"?)` for a key the devices file does not have;
    `shown`: the keys to list when none is close (default: all `known`)."""
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6) or difflib.get_close_matches(
        key.lower().replace(" ", "_").replace("-", "_"),
        [k.lower().replace(" ", "_") for k in known],
        n=1,
        cutoff=0.75,
    )
    if close:
        match = next(k for k in known if k.lower().replace(" ", "_") == close[0] or k == close[0])
        return f"unknown key (did you mean {_shown(match)}?)"
    devices = ("P1Config", "SocketConfig", "BatteryConfig")
    elsewhere = _known_elsewhere(key) if model in devices else ""
    if elsewhere:
        return f"unknown key here{elsewhere}"
    return f"unknown key (known here: {', '.join(shown or known)}; comments start with _)"


class _Strict(BaseModel):
    """A part of the devices file: its own keys, hwsched's documented additions and
    comment keys (`_comment`, ...) are read; any other key is refused, naming the closest
    known one (a typo such as `daily_needs` would otherwise silently change a socket)."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        """An older form of this part rewritten to the current one (default: as it is)."""
        return data

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_keys(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        data = cls._prepare(data)
        if not isinstance(data, dict):
            return data
        shown = [f.alias or name for name, f in cls.model_fields.items()]
        known = set(cls.model_fields) | set(shown) | _UNUSED_KEYS.get(cls.__name__, frozenset())
        for key in data:
            if isinstance(key, str) and key not in known and not _is_comment_key(key):
                message = unknown_key_message(key, known, cls.__name__, shown)
                raise _FieldError((key,), message)
        return data


class _Device(_Strict):
    device_name: NonBlank
    ip_address: Host
    #: TCP port of the device's API; None = the API's standard port.
    port: Port | None = None

    @property
    def slug(self) -> str:
        """The topic-safe name (MQTT topic level, Home Assistant id)."""
        return slugify(self.device_name)


class UserInfo(_Strict):
    """A HomeWizard API v2 user of one device (battery or P1 meter): name and token (secret).

    A token is valid only on the device that gave it (`hwsched pair HOST`).
    """

    model_config = ConfigDict(hide_input_in_errors=True)

    name: NonBlank
    token: Token

    @property
    def token_is_placeholder(self) -> bool:
        """True for the example file's all-zero token (a service should say so)."""
        return set(self.token.get_secret_value()) == {"0"}


class P1Config(_Device):
    """The P1 meter (HWE-P1): where the grid power is measured.

    hwsched reads it through the API v1 (`port`). Its API v2 (HTTPS), which controls the
    batteries (`/api/batteries`), needs the P1's own token in `user_info` (not a battery's:
    a token is only valid on the device that gave it) and listens on `v2_port` (None = 443).
    """

    device_type: Literal["HWE-P1"]
    #: TCP port of the API v2 (HTTPS) when not 443 (e.g. the simulated house's).
    v2_port: Port | None = None
    #: The P1 meter's own API v2 user (optional: only battery control needs it).
    user_info: UserInfo | None = None

    @property
    def battery_token(self) -> str | None:
        """The token that controls the batteries (`/api/batteries`), or None when there is
        none to use (absent, or the example file's all-zero placeholder)."""
        info = self.user_info
        if info is None or info.token_is_placeholder:
            return None
        return info.token.get_secret_value()


class SocketConfig(_Device):
    """An Energy Socket (HWE-SKT) with an energy-storing load behind it."""

    device_type: Literal["HWE-SKT"]
    max_power_usage: Annotated[PositiveFloat, AfterValidator(_check_socket_w)]  # W while on
    energy_capacity: PositiveFloat  # Wh the store holds
    priority: int = 1  # lower first
    daily_need: bool = False  # needed: filled every day, from the grid if need be
    min_battery_charge: Ratio = 0.0  # optional: waits until the battery holds this ratio
    #: hwsched's addition, optional sockets with prices: what a kWh in this store is worth
    #: to its owner, EUR (e.g. the gas a boiler saves); absent: the day's mean import price.
    #: Ignored on a socket with `daily_need` (a need is met whatever it costs).
    value_eur_kwh: Annotated[float, Field(ge=-10, le=10, allow_inf_nan=False)] | None = None

    def spec(self, energy_stored: float = 0.0) -> SocketSpec:
        """The planner's view of this socket (stored energy below 0 counts as 0)."""
        return SocketSpec(
            name=self.device_name,
            max_power_usage=self.max_power_usage,
            energy_capacity=self.energy_capacity,
            energy_stored=max(0.0, energy_stored),
            priority=self.priority,
            daily_need=self.daily_need,
            min_battery_charge=self.min_battery_charge,
            value_eur_kwh=None if self.daily_need else self.value_eur_kwh,
        )


class BatteryConfig(_Device):
    """A Plug-In Battery (HWE-BAT), reached through the API v2 with a token.

    Its only API is v2 (HTTPS): `v2_port` if given, else `port`, else 443.
    """

    device_type: Literal["HWE-BAT"]
    max_power_usage: Annotated[PositiveFloat, AfterValidator(_check_battery_w)]  # W, both ways
    energy_capacity: PositiveFloat  # Wh
    user_info: UserInfo
    #: TCP port of the API v2 (HTTPS) when not 443; wins over `port`.
    v2_port: Port | None = None

    def spec(self, energy_stored: float = 0.0) -> BatterySpec:
        """The planner's view of this battery (stored energy clamped to 0..capacity)."""
        return BatterySpec(
            name=self.device_name,
            max_power_usage=self.max_power_usage,
            energy_capacity=self.energy_capacity,
            energy_stored=min(max(0.0, energy_stored), self.energy_capacity),
        )


DeviceConfig = Annotated[
    P1Config | SocketConfig | BatteryConfig, Field(discriminator="device_type")
]


class QuartzParameters(_Strict):
    """One PV array as quartz-solar-forecast's PVSite takes it."""

    latitude: Annotated[float, Field(ge=-90, le=90)]
    longitude: Annotated[float, Field(ge=-180, le=180)]
    capacity_kwp: Annotated[PositiveFloat, AfterValidator(_check_kwp)]
    tilt: Annotated[float, Field(ge=0, le=90)]  # degrees from horizontal
    orientation: Annotated[float, Field(ge=0, le=360)]  # degrees, 180 = south


class SolarPanelConfig(_Strict):
    """A named PV array. Also reads the original's older flat form (see `_from_flat`)."""

    name: NonBlank
    quartz_parameters: QuartzParameters

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Older original files put the parameters flat, with "total peak power" (kWp)."""
        if "quartz_parameters" in data or "latitude" not in data:
            return data
        flat = {k: v for k, v in data.items() if k != "name"}
        if "total peak power" in flat:
            flat["capacity_kwp"] = flat.pop("total peak power")
        return {"name": data.get("name"), "quartz_parameters": flat}

    @property
    def slug(self) -> str:
        return slugify(self.name)


def _unique_slugs(names: Sequence[str], where: str, field: str) -> None:
    """Refuse names that are equal or give the same topic slug (or none at all).

    `where` is the list's key in the file (for messages), `field` the name's key.
    """
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        try:
            slug = slugify(name)
        except ValueError as err:
            raise _FieldError((i, field), str(err)) from None
        if where == "devices" and slug in RESERVED_NAMES:
            raise _FieldError(
                (i, field),
                f"{_shown(name)} gives the topic name {_shown(slug)}, reserved for "
                "hwsched's own topics: rename it",
            )
        if slug in seen:
            j = seen[slug]
            if names[j] == name:
                raise _FieldError((i, field), f"duplicate name {_shown(name)} (also {where}[{j}])")
            raise _FieldError(
                (i, field),
                f"{_shown(name)} and {where}[{j}] {_shown(names[j])} map to the same "
                f"topic name {_shown(slug)}: rename one",
            )
        seen[slug] = i


class DevicesConfig(_Strict):
    """The devices file: exactly one P1 meter, sockets, batteries and PV arrays."""

    model_config = ConfigDict(
        validate_by_name=True, validate_by_alias=True, hide_input_in_errors=True
    )

    devices: Annotated[list[DeviceConfig], Field(max_length=MAX_DEVICES)]
    solar_panels: Annotated[list[SolarPanelConfig], Field(max_length=MAX_DEVICES)] = Field(
        default=[], alias="solar panels"
    )

    @field_validator("devices")
    @classmethod
    def _check_devices(cls, devices: list[DeviceConfig]) -> list[DeviceConfig]:
        _unique_slugs([d.device_name for d in devices], "devices", "device_name")
        n_p1 = sum(isinstance(d, P1Config) for d in devices)
        if n_p1 != 1:
            raise ValueError(f"exactly one HWE-P1 (P1 meter) is required, found {n_p1}")
        return devices

    @field_validator("solar_panels")
    @classmethod
    def _check_panels(cls, panels: list[SolarPanelConfig]) -> list[SolarPanelConfig]:
        _unique_slugs([p.name for p in panels], "solar panels", "name")
        return panels

    @property
    def p1(self) -> P1Config:
        return next(d for d in self.devices if isinstance(d, P1Config))

    @property
    def sockets(self) -> list[SocketConfig]:
        return [d for d in self.devices if isinstance(d, SocketConfig)]

    @property
    def batteries(self) -> list[BatteryConfig]:
        return [d for d in self.devices if isinstance(d, BatteryConfig)]

    def warnings(self) -> list[str]:
        """Values that load but are probably a mistake (a unit or a placeholder), one line
        each as `field: problem`; `hwsched check-config` prints them."""
        out: list[str] = []
        for i, d in enumerate(self.devices):
            if isinstance(d, SocketConfig | BatteryConfig):
                minutes = d.energy_capacity / d.max_power_usage * 60
                if minutes < 5:
                    out.append(
                        f"devices[{i}].energy_capacity: {_bound(d.energy_capacity)} Wh is full "
                        f"after {minutes:.1f} min at {_bound(d.max_power_usage)} W: the unit "
                        f"is Wh (2 kWh = 2000)"
                    )
        for i, p in enumerate(self.solar_panels):
            q = p.quartz_parameters
            if q.latitude == 0 and q.longitude == 0:
                out.append(
                    f"solar panels[{i}].quartz_parameters: latitude 0, longitude 0 (the "
                    "original's example placeholder): set where the panels are"
                )
            if q.capacity_kwp < 0.05:
                out.append(
                    f"solar panels[{i}].quartz_parameters.capacity_kwp: "
                    f"{_bound(q.capacity_kwp)} kWp is less than one panel: the unit is kWp "
                    "(a 300 Wp panel = 0.3)"
                )
        return out

    def device_by_slug(self, slug: str) -> P1Config | SocketConfig | BatteryConfig | None:
        """The device whose topic name is `slug`, if any."""
        return next((d for d in self.devices if d.slug == slug), None)

    def socket_specs(self, stored: Mapping[str, float] | None = None) -> list[SocketSpec]:
        """The sockets as the planner sees them; `stored` = Wh per device name (default 0)."""
        stored = stored or {}
        return [s.spec(stored.get(s.device_name, 0.0)) for s in self.sockets]

    def battery_specs(self, stored: Mapping[str, float] | None = None) -> list[BatterySpec]:
        """The batteries as the planner sees them; `stored` = Wh per device name (default 0)."""
        stored = stored or {}
        return [b.spec(stored.get(b.device_name, 0.0)) for b in self.batteries]


# --- one-line messages from pydantic errors -----------------------------------------

_NO_INPUT_TYPES = frozenset(
    {"missing", "value_error", "union_tag_invalid", "union_tag_not_found", "extra_forbidden"}
)


def _loc_text(loc: Iterable[int | str]) -> str:
    """`devices[2].max_power_usage` from a pydantic location (union tags left out)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in DEVICE_TYPES:
            out += ("." if out else "") + part
    return out or "(document)"


def _bound(value: object) -> str:
    """A limit as written: 0 rather than the 0.0 pydantic makes of it."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _problem(err: ErrorDetails) -> str:
    """The problem in words, for the error types a config file meets."""
    kind, ctx = err["type"], err.get("ctx", {})
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    words = {
        "missing": "is required",
        "extra_forbidden": "unknown setting",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "finite_number": "must be a finite number",
        "int_type": "must be a whole number",
        "int_parsing": "must be a whole number",
        "int_from_float": "must be a whole number",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "string_type": "must be a string",
        "list_type": "must be a list",
        "model_type": "must be an object",
        "model_attributes_type": "must be an object",
        "dict_type": "must be an object",
        "time_type": "must be a time like 06:00",
        "time_parsing": "must be a time like 06:00",
        "greater_than": f"must be > {_bound(ctx.get('gt'))}",
        "greater_than_equal": f"must be >= {_bound(ctx.get('ge'))}",
        "less_than": f"must be < {_bound(ctx.get('lt'))}",
        "less_than_equal": f"must be <= {_bound(ctx.get('le'))}",
        "literal_error": f"must be one of {ctx.get('expected')}",
        "string_too_short": "must not be empty",
        "string_too_long": f"must be at most {ctx.get('max_length')} characters",
        "too_long": (f"at most {ctx.get('max_length')} entries (got {ctx.get('actual_length')})"),
        "path_type": "must be a path (a string)",
        "timezone_aware": "must have a UTC offset, like 2024-06-21T06:00:00+02:00",
        "datetime_type": "must be a date and time like 2024-06-21T06:00:00+02:00",
        "datetime_parsing": "must be a date and time like 2024-06-21T06:00:00+02:00",
        "datetime_from_date_parsing": "must be a date and time like 2024-06-21T06:00:00+02:00",
        "union_tag_invalid": (
            f"unknown device type {_shown(ctx.get('tag'))} (allowed: {', '.join(DEVICE_TYPES)})"
        ),
        "union_tag_not_found": f"is required (one of {', '.join(DEVICE_TYPES)})",
    }
    return words.get(kind, err["msg"])


def _where(err: ErrorDetails) -> tuple[int | str, ...]:
    """The full location: pydantic's, plus what a `_FieldError` or a union tag adds."""
    loc = tuple(err["loc"])
    cause = err.get("ctx", {}).get("error")
    if isinstance(cause, _FieldError):
        return loc + cause.loc
    if err["type"] in ("union_tag_invalid", "union_tag_not_found") and isinstance(
        err.get("input"), dict
    ):
        return (*loc, "device_type")
    return loc


def describe_error(err: ValidationError) -> str:
    """The first error as `field: problem (got value)`, one line; secrets never shown."""
    errors = err.errors(include_url=False)
    first = errors[0]
    where = _where(first)
    problem = _problem(first)
    if first["type"] in ("union_tag_invalid", "union_tag_not_found") and not isinstance(
        first.get("input"), dict
    ):
        problem = "must be an object"
    value = first.get("input")
    # the broker table itself: a password given in place of the table is not shown either
    secret = any(part in _SECRET_FIELDS for part in where) or tuple(where) in _SECRET_TABLES
    scalar = value is None or isinstance(value, str | int | float | bool | time)
    if first["type"] not in _NO_INPUT_TYPES and scalar and not secret:
        problem += f" (got {_shown(value)})"
    more = len(errors) - 1
    suffix = f" (and {more} more)" if more > 0 else ""
    return f"{_loc_text(where)}: {problem}{suffix}"


# --- loading the devices file -------------------------------------------------------


def read_config_bytes(path: Path) -> bytes:
    """A configuration file's bytes; ConfigError if missing, unreadable or too large."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: too large (more than {MAX_FILE_BYTES // 1024} kB)")
    return raw


# A ConfigError is raised after the `except` block, never inside it: the error it replaces
# (a decode error holding the whole file, a ValidationError holding every value, tokens
# and passwords included) is then not kept as its __context__.


def _read_json(path: Path) -> object:
    raw = read_config_bytes(path)
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        problem = f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}"
    except UnicodeDecodeError:
        problem = "not UTF-8 text"
    except RecursionError:
        problem = "invalid JSON: nested too deeply"
    raise ConfigError(f"{path}: {problem}")


def load_devices(path: Path | str = DEFAULT_DEVICES_FILE) -> DevicesConfig:
    """Read and validate a devices file (the original project's `config_devices.json`).

    Raises ConfigError (one line: file, field, problem) on anything wrong.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise ConfigError(
            f"{path}: file not found: start from the example (cp {EXAMPLE_DEVICES_FILE} "
            f"{path}), then set each device's ip_address (and a battery's user_info token: "
            "hwsched pair ADDRESS), your sockets' max_power_usage, energy_capacity and "
            "daily_need, and your panels' latitude, longitude and capacity_kwp"
        )
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ConfigError(f'{path}: must be a JSON object with a "devices" list')
    try:
        return DevicesConfig.model_validate(data)
    except ValidationError as err:
        problem = describe_error(err)
    raise ConfigError(f"{path}: {problem}")


# --- settings -----------------------------------------------------------------------


class BrokerSettings(BaseModel):
    """The MQTT broker hwsched's services connect to."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    host: Host = "localhost"
    port: Port = 1883
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False
    #: Prefix of the services' MQTT client ids (each service adds its own name).
    client_id_prefix: NonBlank = "hwsched"


#: Passwords refused for the dashboard: the placeholders of `.env.example`.
_PLACEHOLDER_PASSWORDS = ("change-me", "changeme")
#: Shortest dashboard password.
DASHBOARD_PASSWORD_MIN = 12


def _check_dashboard_password(value: SecretStr | None) -> SecretStr | None:
    """At least 12 characters and not a placeholder; an empty one means no password."""
    if value is None:
        return None
    text = value.get_secret_value()
    if not text:
        return None
    if text.lower().startswith(_PLACEHOLDER_PASSWORDS):
        raise ValueError("must not be a placeholder (change-me…): set one of your own, or none")
    if len(text) < DASHBOARD_PASSWORD_MIN:
        raise ValueError(f"must be at least {DASHBOARD_PASSWORD_MIN} characters")
    return value


class DashboardSettings(BaseModel):
    """The dashboard's web page (`services/dashboard`): where it listens, its password."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    #: Address the page is served on: 127.0.0.1 (this machine only) by default; 0.0.0.0 in a
    #: container or to reach it from the house's network.
    host: Host = "127.0.0.1"
    port: Port = 8080
    #: The password of the control buttons (on for 1 h, off, back to plan); none: read-only.
    #: From the environment (`HWSCHED_DASHBOARD__PASSWORD`, compose: `.env`), never logged.
    password: Annotated[SecretStr | None, AfterValidator(_check_dashboard_password)] = None
    #: Mark the session cookie `Secure` (only sent over HTTPS): set behind a TLS proxy.
    secure_cookie: bool = False
    #: A login lasts this long, s.
    session_ttl_s: Annotated[int, Field(ge=60, le=30 * 86_400)] = 43_200
    #: Where the day's measured history (surplus, on-times, battery) is kept across a
    #: restart; none: in memory only.
    history_file: Path | None = None
    #: Resolution of the measured history, s.
    history_step_s: Annotated[int, Field(ge=10, le=900)] = 60
    #: Live updates reach the browsers at most this often, s.
    push_interval_s: Annotated[float, Field(ge=0.1, le=60, allow_inf_nan=False)] = 1.0


class SimClockSettings(BaseModel):
    """Simulated time for the stack on a simulated house (demos, fault tests, soak runs).

    Every process given the same three values shows the same simulated time: `start` at
    the Unix time `origin`, running `speed` times faster than the wall clock. Absent (the
    default), the services run on real time.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    speed: Annotated[float, Field(gt=0, le=100_000, allow_inf_nan=False)]
    start: AwareDatetime
    #: Unix time (s) at which the simulated clock shows `start`.
    origin: Annotated[float, Field(ge=0, allow_inf_nan=False)]


# --- prices -------------------------------------------------------------------------

PriceSource = Literal["fixed", "energyzero", "entsoe"]
#: Bidding zones by their short name → ENTSO-E EIC code (any other zone: give its EIC code).
BIDDING_ZONES: dict[str, str] = {
    "NL": "10YNL----------L",
    "BE": "10YBE----------2",
    "DE-LU": "10Y1001A1001A82H",
    "FR": "10YFR-RTE------C",
    "AT": "10YAT-APG------L",
    "CH": "10YCH-SWISSGRIDZ",
    "DK1": "10YDK-1--------W",
    "DK2": "10YDK-2--------M",
    "PL": "10YPL-AREA-----S",
    "CZ": "10YCZ-CEPS-----N",
    "ES": "10YES-REE------0",
    "PT": "10YPT-REN------W",
    "FI": "10YFI-1--------U",
    "SE3": "10Y1001A1001A46L",
    "SE4": "10Y1001A1001A47J",
    "NO1": "10YNO-1--------2",
    "NO2": "10YNO-2--------T",
    "EE": "10Y1001A1001A39I",
    "IT-NORTH": "10Y1001A1001A73I",
}
_EIC = re.compile(r"[0-9]{2}Y[A-Z0-9-]{13}")
EurKwh = Annotated[float, Field(ge=-10, le=10, allow_inf_nan=False)]


def _check_area(value: str) -> str:
    """A bidding zone: a short name of `BIDDING_ZONES` (any case) or an EIC area code."""
    upper = value.strip().upper()
    if upper in BIDDING_ZONES or _EIC.fullmatch(upper):
        return upper
    names = ", ".join(BIDDING_ZONES)
    raise ValueError(f"unknown bidding zone {_shown(value)}: one of {names}, or an EIC code")


def _check_url(value: str) -> str:
    """An http(s) URL without credentials, query or fragment (shown without credentials)."""
    scheme, sep, rest = value.partition("://")
    netloc = rest.partition("/")[0]
    if scheme not in ("http", "https") or not sep or not netloc or "@" in netloc:
        raise ValueError("must be an http(s) URL like https://host/path, without credentials")
    if "?" in rest or "#" in rest or any(c.isspace() for c in value):
        raise ValueError(f"must be a URL without query, fragment or spaces (got {_shown(value)})")
    return value.rstrip("/")


def _check_api_token(token: SecretStr | None) -> SecretStr | None:
    if token is None:
        return None
    value = token.get_secret_value()
    if not value or len(value) > 200 or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("must be the security token of your ENTSO-E account (no spaces)")
    return token


Url = Annotated[str, Field(max_length=500), AfterValidator(_check_url)]


class PriceSettings(BaseModel):
    """Energy prices (`[prices]`, `HWSCHED_PRICES__*`): where they come from, the contract.

    A dynamic contract's all-in import price per step is
    `(day-ahead + supplier_markup + energy_tax) x (1 + vat_pct / 100)`; export earns
    `day-ahead − feed_in_fee`. A fixed tariff: `fixed_import` all in, export
    `fixed_export − feed_in_fee`. Defaults and their sources: docs/prices.md.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    #: `fixed` (the default), `energyzero` (NL, no key) or `entsoe` (any EU zone, token).
    source: PriceSource = "fixed"
    #: Bidding zone of the day-ahead prices (ENTSO-E; EnergyZero is NL only).
    area: Annotated[str, Field(max_length=40), AfterValidator(_check_area)] = "NL"
    energyzero_url: Url = "https://public.api.energyzero.nl"
    entsoe_url: Url = "https://web-api.tp.entsoe.eu/api"
    #: The security token of your ENTSO-E transparency account (secret, never shown).
    entsoe_token: Annotated[SecretStr | None, AfterValidator(_check_api_token)] = None
    #: Dynamic contract: the supplier's markup on the day-ahead price, EUR/kWh excl. VAT.
    supplier_markup_eur_kwh: EurKwh = 0.02
    #: Energy tax (energiebelasting) on electricity, EUR/kWh excl. VAT.
    energy_tax_eur_kwh: EurKwh = 0.0916
    vat_pct: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = 21.0
    #: What a kWh sent to the grid costs besides: export = day-ahead (or fixed_export) − this.
    feed_in_fee_eur_kwh: EurKwh = 0.02
    #: Fixed tariff (and the flagged fallback): all-in import and the export compensation.
    fixed_import_eur_kwh: EurKwh = 0.27
    fixed_export_eur_kwh: EurKwh = 0.07
    #: Scheduler: optional sockets may also draw from grid or battery in steps whose import
    #: price is at or below this, EUR/kWh (e.g. 0: when you are paid to consume). None: never.
    optional_grid_price_max_eur_kwh: EurKwh | None = None
    #: Prices service: tomorrow's day-ahead prices are asked for from this local time on
    #: (they are published ~12:45-13:00 CET), until they come.
    tomorrow_from: Annotated[
        time, BeforeValidator(_time_not_number), AfterValidator(_check_local_time)
    ] = time(13, 0)
    #: Prices service: after a failed fetch, again after this, doubling up to the maximum, s.
    retry_min_s: Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)] = 60.0
    retry_max_s: Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)] = 1800.0
    #: Prices service: while tomorrow's prices are not out yet, ask again this often, s.
    tomorrow_poll_s: Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)] = 900.0
    http_timeout_s: Annotated[float, Field(gt=0, le=300, allow_inf_nan=False)] = 20.0

    @model_validator(mode="after")
    def _consistent(self) -> PriceSettings:
        if self.source == "entsoe" and self.entsoe_token is None:
            raise _FieldError(
                ("entsoe_token",),
                'is required with source = "entsoe" (your ENTSO-E transparency token; '
                "or HWSCHED_PRICES__ENTSOE_TOKEN)",
            )
        if self.source == "energyzero" and self.area != "NL":
            raise _FieldError(
                ("area",), f"EnergyZero has NL prices only (got {_shown(self.area)}): use entsoe"
            )
        if self.retry_max_s < self.retry_min_s:
            raise _FieldError(
                ("retry_max_s",),
                f"must be >= retry_min_s ({self.retry_min_s:g}) (got {self.retry_max_s:g})",
            )
        return self

    @property
    def eic(self) -> str:
        """The bidding zone's ENTSO-E EIC code."""
        return BIDDING_ZONES.get(self.area, self.area)


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class Settings(BaseSettings):
    """hwsched's own settings: a TOML file, overridden by `HWSCHED_*` environment variables.

    Nested fields use `__`: `HWSCHED_BROKER__HOST=mqtt.local`. The environment wins over
    everything else, including values passed to the constructor (the file's values).
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
    )

    broker: BrokerSettings = BrokerSettings()
    base_topic: TopicPrefix = "hwsched"
    ha_discovery_prefix: TopicPrefix = "homeassistant"
    timezone: Annotated[str, AfterValidator(_check_timezone)] = "Europe/Amsterdam"
    poll_interval_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 30.0
    #: Local time at which the planning day starts (the original's 06:00).
    daily_boundary: Annotated[
        time, BeforeValidator(_time_not_number), AfterValidator(_check_local_time)
    ] = time(6, 0)
    switch_interval_s: Annotated[int, Field(ge=0, le=86_400)] = 300
    #: Actuator: seconds between two reads of each socket's relay (how soon a hand switch
    #: is seen).
    actuator_read_interval_s: Annotated[float, Field(ge=0.05, le=3_600, allow_inf_nan=False)] = 10.0
    #: Actuator: without a fresh command or plan for this long, its local fallback rule
    #: keeps the needed sockets filling (control goes back when the scheduler returns).
    fallback_after_s: Annotated[int, Field(ge=60, le=86_400)] = 900
    #: Actuator fallback: a needed socket starts this long before the time it takes to fill.
    fallback_margin_s: Annotated[int, Field(ge=0, le=43_200)] = 1800
    devices_file: Annotated[Path, AfterValidator(_check_file_path)] = DEFAULT_DEVICES_FILE
    #: CA bundle (PEM) the API v2 devices' certificates must chain to; None = the bundled
    #: HomeWizard CA. The simulated house writes its own to `<state-dir>/ca.pem`.
    device_ca_file: Annotated[Path | None, AfterValidator(_check_ca_file)] = None
    planner: Literal["optimal", "reference"] = "optimal"
    #: Scheduler: planning step, s (the plan runs from now to the next boundary in steps).
    planning_step_s: Annotated[int, Field(ge=60, le=3_600)] = 900
    #: Scheduler: time budget of the optimal planner per plan, s (the reference on time-out).
    planner_time_limit_s: Annotated[float, Field(gt=0, le=60, allow_inf_nan=False)] = 1.0
    #: Scheduler: a forecast made longer ago than this is stale (fallback rule), s.
    #: (26 h: the daily forecast at the boundary, plus slack for its retries; a day without
    #: one is caught anyway, since that forecast ends at the boundary.)
    forecast_max_age_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 93_600.0
    #: Scheduler: how the measured-now correction of the forecast carries over the day:
    #: "fading" (towards the recent mean offset, with a half-life), "scaled" (the same on the
    #: forecast scaled to fit the day's measurements: for a forecast that runs high or low)
    #: or "constant" (the original).
    forecast_shift: Literal["fading", "scaled", "constant"] = "scaled"
    forecast_shift_half_life_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 3_600.0
    #: Time constant of the mean offset (measured − forecast) the fading shift tends to, s.
    forecast_shift_baseline_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 43_200.0
    #: "scaled": time constant of the fit of the measured surplus on the forecast, s.
    forecast_shift_fit_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 43_200.0
    #: Scheduler, calm plans (issue 14): what one relay switch (or battery mode change)
    #: costs in the plan, Wh of grid import; a socket just switched stays so for at least
    #: `min_on_s` / `min_off_s` unless a needed socket's deadline demands otherwise; a new
    #: plan replaces the previous one only when it gains more than `hold_gain_wh`.
    switch_cost_wh: Annotated[float, Field(ge=0, le=100_000, allow_inf_nan=False)] = 20.0
    min_on_s: Annotated[int, Field(ge=0, le=86_400)] = 1200
    min_off_s: Annotated[int, Field(ge=0, le=86_400)] = 3600
    hold_gain_wh: Annotated[float, Field(ge=0, le=100_000, allow_inf_nan=False)] = 50.0
    #: Scheduler, forecast risk (with prices): per hour ahead, the share of the gap between
    #: import and export price by which the plan values forecast surplus used later below
    #: the same surplus used sooner (`PlanningProblem.forecast_risk_per_h`; docs/planner.md).
    forecast_risk_per_h: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.02
    log_level: Annotated[LogLevel, BeforeValidator(_upper)] = "INFO"
    #: Energy prices: the source and the contract (`[prices]`, see docs/prices.md).
    prices: PriceSettings = PriceSettings()
    #: Simulated time (`HWSCHED_SIM_CLOCK__SPEED`, `__START`, `__ORIGIN`); None = real time.
    sim_clock: SimClockSettings | None = None
    #: The dashboard (`HWSCHED_DASHBOARD__HOST`, `__PORT`, `__PASSWORD`, ...).
    dashboard: DashboardSettings = DashboardSettings()

    @model_validator(mode="after")
    def _discovery_apart(self) -> Settings:
        """Home Assistant's discovery topics must lie outside hwsched's own."""
        prefix, base = self.ha_discovery_prefix, self.base_topic
        if prefix == base or prefix.startswith(base + "/"):
            raise _FieldError(
                ("ha_discovery_prefix",),
                f"must not be base_topic {_shown(base)} or under it (got {_shown(prefix)})",
            )
        return self

    @property
    def tz(self) -> ZoneInfo:
        """The time zone, daylight saving included."""
        return ZoneInfo(self.timezone)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment first, then the file's values (passed as init values)."""
        return (env_settings, init_settings)


def _settings_path(path: Path | None) -> Path | None:
    """The settings file to read: given, else $HWSCHED_SETTINGS_FILE, else the default."""
    if path is not None:
        return path
    from_env = os.environ.get(SETTINGS_FILE_ENV)
    if from_env:
        return Path(from_env)
    return DEFAULT_SETTINGS_FILE if DEFAULT_SETTINGS_FILE.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    raw = read_config_bytes(path)
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except tomllib.TOMLDecodeError as err:
        problem = f"invalid TOML: {err}"
    except UnicodeDecodeError:
        problem = "not UTF-8 text"
    except RecursionError:
        problem = "invalid TOML: nested too deeply"
    raise ConfigError(f"{path}: {problem}")


def _env_var_for(loc: Sequence[int | str]) -> str | None:
    """The set environment variable that gave the value at `loc`, if one did.

    The variable of the field itself or of an enclosing table (`HWSCHED_BROKER` holding
    JSON), else one of the fields below it (`HWSCHED_BROKER__HOST__X` for `broker.host`,
    `HWSCHED_SIM_CLOCK__SPEED` for a missing `sim_clock.start`).
    """
    present = {name.upper(): name for name in os.environ}
    parts = [str(p).upper() for p in loc if isinstance(p, str)]
    for n in range(len(parts), 0, -1):
        name = ENV_PREFIX + ENV_NESTED_DELIMITER.join(parts[:n])
        if name in present:
            return present[name]
    for n in range(len(parts), 0, -1):
        below = ENV_PREFIX + ENV_NESTED_DELIMITER.join(parts[:n]) + ENV_NESTED_DELIMITER
        found = sorted(name for name in present if name.startswith(below))
        if found:
            return present[found[0]]
    return None


def _unknown_env_var() -> str | None:
    """A set `HWSCHED_*` variable that is no setting (a typo would pass silently)."""
    fields = {name.upper() for name in Settings.model_fields}
    for name in sorted(os.environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in OTHER_ENV_VARS:
            continue
        if upper.startswith(OTHER_ENV_PREFIXES):
            continue
        field = upper[len(ENV_PREFIX) :].split(ENV_NESTED_DELIMITER)[0]
        if field not in fields:
            return name
    return None


def _env_parse_error(err: SettingsError) -> str:
    """pydantic-settings' "error parsing value for field ..." as one line naming the variable."""
    found = re.search(r'field "([^"]+)"', str(err))
    field = found.group(1) if found else None
    var = _env_var_for([field]) if field else None
    if field is None or var is None:
        return f"environment: {err}"
    return f"environment variable {var}: {field}: must be valid JSON"


def load_settings(path: Path | None = None) -> Settings:
    """The settings: defaults, then the TOML file, then `HWSCHED_*` variables (env wins).

    The file is `path`, else $HWSCHED_SETTINGS_FILE, else `config/settings.toml` if it
    exists, else none (defaults and environment only). A named file must exist.
    Raises ConfigError (one line: file or variable, field, problem).
    """
    unknown = _unknown_env_var()
    if unknown is not None:
        raise ConfigError(
            f"environment variable {unknown}: unknown setting (see config/settings.example.toml)"
        )
    file = _settings_path(path)
    data = _read_toml(file) if file is not None else {}
    private = next((key for key in data if key.startswith("_")), None)
    if private is not None:  # would reach BaseSettings' own `_env_file`-style arguments
        raise ConfigError(f"{file}: {private}: unknown setting")
    try:
        return Settings(**data)
    except SettingsError as err:
        message = _env_parse_error(err)
    except ValidationError as err:
        var = _env_var_for(err.errors()[0]["loc"])
        source = f"environment variable {var}" if var else str(file or "settings")
        message = f"{source}: {describe_error(err)}"
    raise ConfigError(message)


def load_config(settings: Settings) -> DevicesConfig:
    """The devices file named by the settings."""
    return load_devices(settings.devices_file)
