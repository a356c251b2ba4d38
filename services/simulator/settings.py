"""The simulator's own settings: a small TOML or JSON file (or a `simulator` section).

Where they are read from, first found wins: the file given with `--sim-config` (its top
level, or its `[simulator]` table), else a `"simulator"` object inside the devices file
(the devices loader ignores unknown keys). Command-line flags override what a file says.

Example (TOML)::

    seed = 7
    cloudiness = 0.4            # 0 clear .. 1 overcast; leave out for the season's
    base_load_w = 300
    timezone = "Europe/Amsterdam"

    [devices."Kitchen boiler"]
    initial_fraction = 0.2      # of the store
    power_on = true
    draws = [{start = "07:00", duration_min = 30, fraction = 0.35}]
    faults = {delay_s = 1.5}

    [devices."P1 meter"]
    tokens = ["0123456789ABCDEF0123456789ABCDEF"]   # accepted on its API v2
    v2_port = 8443

A mistake is refused as a `ConfigError` of one line naming the file and the field.
"""

from __future__ import annotations

import json
import tomllib
from datetime import datetime, time
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.config import ConfigError, describe_error, read_config_bytes
from shared.naming import slugify

Ratio = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DrawSettings(_Model):
    start: time
    duration_min: Annotated[float, Field(gt=0, le=1440)]
    fraction: Ratio


class FaultSettings(_Model):
    """Faults a device starts with (the same fields as `POST /control/faults`)."""

    delay_s: Annotated[float, Field(ge=0, le=3600)] = 0.0
    timeout: bool = False
    http_500: bool = False
    garbage: bool = False
    truncated: bool = False
    missing_fields: bool | list[str] = False
    api_disabled: bool = False
    wrong_token: bool = False
    gone: bool = False
    times: Annotated[int, Field(ge=1)] | None = None


class DeviceSettings(_Model):
    initial_fraction: Ratio | None = None
    power_on: bool | None = None
    switch_lock: bool | None = None
    draws: list[DrawSettings] | None = None
    faults: FaultSettings | None = None
    #: Extra API v2 tokens the device accepts (32 hex).
    tokens: list[str] = []
    v1_port: Port | None = None
    v2_port: Port | None = None

    @field_validator("tokens")
    @classmethod
    def _hex_tokens(cls, tokens: list[str]) -> list[str]:
        for token in tokens:
            if len(token) != 32 or any(c not in "0123456789abcdefABCDEF" for c in token):
                raise ValueError("tokens must be 32 hexadecimal characters")
        return tokens


class SimulatorSettings(_Model):
    seed: int = 0
    cloudiness: Ratio | None = None
    base_load_w: Annotated[float, Field(ge=0, le=20_000)] = 300.0
    timezone: str = "Europe/Amsterdam"
    speed: Annotated[float, Field(gt=0, le=100_000)] = 1.0
    start: datetime | None = None
    #: Wall-clock Unix time at which the simulated clock shows `start` (shared time).
    origin: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    battery_efficiency: Annotated[float, Field(gt=0, le=1)] = 0.9
    standby_fraction: Annotated[float, Field(gt=0, lt=0.1)] = 0.03
    store_loss_per_h: Annotated[float, Field(ge=0, le=0.5)] = 0.005
    initial_store_fraction: Ratio = 0.5
    initial_soc: Ratio = 0.5
    #: Seconds (real time) that a pressed pairing button lets `POST /api/user` through.
    pairing_window_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    base_port: Port | None = None
    weather_port: Port | None = None
    control_port: Port | None = None
    #: Per device, by device name (or its slug).
    devices: dict[str, DeviceSettings] = {}

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("devices")
    @classmethod
    def _device_names(cls, value: dict[str, DeviceSettings]) -> dict[str, DeviceSettings]:
        for key in value:
            try:
                slugify(key)
            except ValueError:
                raise ValueError(f"bad device name {key[:60]!r}") from None
        return value


def _read(path: Path) -> Any:
    raw = read_config_bytes(path)  # missing, unreadable, too large: one line
    kind = path.suffix.lstrip(".").upper() or "JSON"
    # the ConfigError is raised after the except blocks: the error it replaces is not kept
    try:
        if path.suffix.lower() == ".toml":
            return tomllib.loads(raw.decode())
        return json.loads(raw)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        problem = f"invalid {kind}: {err}"
    except UnicodeDecodeError:
        problem = "not UTF-8 text"
    except RecursionError:
        problem = f"invalid {kind}: nested too deeply"
    raise ConfigError(f"{path}: {problem}")


def parse_settings(data: object, where: str) -> SimulatorSettings:
    """Settings from a parsed document (`where` names it in messages)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be an object")
    try:
        return SimulatorSettings.model_validate(data)
    except ValidationError as err:
        problem = describe_error(err)
    raise ConfigError(f"{where}: {problem}")


def load_settings(path: Path | None, devices_path: Path | None = None) -> SimulatorSettings:
    """The simulator settings from `path`, else from the devices file, else defaults."""
    if path is not None:
        data = _read(path)
        if isinstance(data, dict) and isinstance(data.get("simulator"), dict):
            data = data["simulator"]
        return parse_settings(data, str(path))
    if devices_path is not None:
        data = _read(devices_path)
        if isinstance(data, dict) and "simulator" in data:
            return parse_settings(data["simulator"], f"{devices_path}: simulator")
    return SimulatorSettings()
