"""Every kind of configuration mistake is refused at start: status 2, ONE line, nothing started.

tests/test_config.py checks the validators one by one; this is the process-level proof. A table
of mistakes — in the devices file, in settings.toml, in `HWSCHED_*` variables, in the
forecaster's `HWSCHED_FORECAST__*` and in the simulator's own settings — goes through every
entry point that reads them, in-process (`services.<name>.<module>.main()`, `hwsched
check-config`, the simulator's `main`): each must return 2, print exactly one line on stderr
(naming the file or variable and the field), nothing on stdout, no traceback, and start
nothing (no `Service`, no logging set-up, no MQTT client, no simulated house). A representative
subset runs as real processes (`python -m services.poller`, `hwsched check-config`, ...) with
the broker on a closed port: each exits with status 2 and one line, fast; a control run with a
good configuration shows the same command does keep running (and trying the broker).
"""

from __future__ import annotations

import copy
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from dataclasses import field as default
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

import services.simulator.main as simulator_main
import shared.service
from services.actuator.actuator import main as actuator_main
from services.bridge.bridge import main as bridge_main
from services.cli import main as cli_main
from services.forecaster.forecaster import main as forecaster_main
from services.poller.poller import main as poller_main
from services.scheduler.scheduler import main as scheduler_main

ROOT = Path(__file__).resolve().parent.parent
CA_PEM = ROOT / "shared" / "homewizard" / "homewizard-ca.pem"
#: Distinctive secrets: no refusal may echo them.
TOKEN = "5ec7e7c0ffee5ec7e7c0ffee5ec7e7aa"
PASSWORD = "Pa55-w0rd-never-shown-7f3a"

GOOD_DEVICES: dict[str, Any] = {
    "devices": [
        {"device_name": "P1 meter", "device_type": "HWE-P1", "ip_address": "192.0.2.10"},
        {
            "device_name": "Boiler",
            "device_type": "HWE-SKT",
            "ip_address": "192.0.2.11",
            "max_power_usage": 2000,
            "energy_capacity": 6000,
            "priority": 1,
            "daily_need": True,
            "min_battery_charge": 0.0,
        },
        {
            "device_name": "Battery",
            "device_type": "HWE-BAT",
            "ip_address": "192.0.2.14",
            "max_power_usage": 800,
            "energy_capacity": 2700,
            "user_info": {"name": "local/hwsched", "token": TOKEN},
        },
    ],
    "solar panels": [
        {
            "name": "South roof",
            "quartz_parameters": {
                "latitude": 52.09,
                "longitude": 5.12,
                "capacity_kwp": 3.2,
                "tilt": 35,
                "orientation": 180,
            },
        }
    ],
}

#: Entry point → what its one line starts with.
SERVICES = ("poller", "scheduler", "actuator", "bridge", "forecaster")
MAINS: dict[str, Callable[[], int]] = {
    "poller": poller_main,
    "scheduler": scheduler_main,
    "actuator": actuator_main,
    "bridge": bridge_main,
    "forecaster": forecaster_main,
}
ALL = (*SERVICES, "check-config")
WITH_SIMULATOR = (*ALL, "simulator")


# --- the table ----------------------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], object]


@dataclass(frozen=True)
class Mistake:
    """One mistake and what its refusal must name.

    `where`: "devices" / "settings" (the file's path), or a variable's name, or a path under
    the test's directory as "{tmp}/...". `field`: words of the line naming the field (or the
    problem, for a file that cannot be read at all).
    """

    id: str
    where: str
    field: str
    devices: Mutation | bytes | None = None
    settings: str = ""
    broker: dict[str, str] = default(default_factory=dict)
    tables: str = ""
    raw_settings: bytes | None = None
    env: dict[str, str] = default(default_factory=dict)
    sim_args: tuple[str, ...] = ()
    sim_file: tuple[str, str] | None = None  # (suffix, text)
    entries: tuple[str, ...] = ALL


def dev(i: int, key: str, value: object) -> Mutation:
    return lambda d: d["devices"][i].__setitem__(key, value)


def drop(i: int, key: str) -> Mutation:
    return lambda d: d["devices"][i].pop(key)


def panel(key: str, value: object) -> Mutation:
    return lambda d: d["solar panels"][0]["quartz_parameters"].__setitem__(key, value)


def token(i: int, value: object) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        d["devices"][i]["user_info"] = {"name": "local/hwsched", "token": value}

    return mutate


def many_sockets(d: dict[str, Any]) -> None:
    socket = d["devices"][1]
    d["devices"] += [{**socket, "device_name": f"Socket {n}"} for n in range(63)]


def second_p1(d: dict[str, Any]) -> None:
    d["devices"].append({**d["devices"][0], "device_name": "Other P1"})


def same_panels(d: dict[str, Any]) -> None:
    d["solar panels"].append(copy.deepcopy(d["solar panels"][0]))


def D(id: str, mutation: Mutation | bytes, field: str) -> Mistake:
    return Mistake(id, "devices", field, devices=mutation, entries=WITH_SIMULATOR)


BAD_HEX = TOKEN[:-2] + "zz"
DEVICE_MISTAKES = [
    D("not-json", b'{"devices": [', "invalid JSON at line 1"),
    D("not-utf8", '{"devices": [], "x": "caf\u00e9"}'.encode("latin-1"), "not UTF-8"),
    D("empty-file", b"", "invalid JSON"),
    D("empty-object", b"{}", "devices: is required"),
    D("top-level-list", b"[]", "must be a JSON object"),
    D("top-level-string", b'"devices"', "must be a JSON object"),
    D("devices-not-a-list", lambda d: d.__setitem__("devices", {}), "devices: must be a list"),
    D("device-not-an-object", lambda d: d["devices"].append("Boiler"), "devices[3]: must be an"),
    D("no-p1", lambda d: d["devices"].pop(0), "devices: exactly one HWE-P1"),
    D("two-p1", second_p1, "devices: exactly one HWE-P1 (P1 meter) is required, found 2"),
    D("duplicate-name", dev(2, "device_name", "Boiler"), "devices[2].device_name: duplicate"),
    D("slug-collision", dev(2, "device_name", "boiler!"), "devices[2].device_name: "),
    D("reserved-name", dev(1, "device_name", "Plan"), "devices[1].device_name: "),
    D("name-with-newline", dev(1, "device_name", "Kitchen\nboiler"), "control characters"),
    D("empty-name", dev(1, "device_name", " "), "devices[1].device_name: must not be empty"),
    D("name-not-a-string", dev(1, "device_name", 5), "devices[1].device_name: must be a string"),
    D("name-without-letters", dev(1, "device_name", "!!!"), "devices[1].device_name: "),
    D("bad-ip", dev(1, "ip_address", "999.1.1.1"), "devices[1].ip_address: not a valid IP"),
    D("ip-with-scheme", dev(1, "ip_address", "http://192.0.2.11"), "devices[1].ip_address"),
    D("ip-with-port", dev(1, "ip_address", "192.0.2.11:80"), "devices[1].ip_address"),
    D("ip-with-space", dev(1, "ip_address", "192.0.2 .11"), "devices[1].ip_address"),
    D("ip-missing", drop(1, "ip_address"), "devices[1].ip_address: is required"),
    D("negative-power", dev(1, "max_power_usage", -5), "max_power_usage: must be > 0 (got -5)"),
    D("zero-power", dev(1, "max_power_usage", 0), "devices[1].max_power_usage: must be > 0"),
    D("power-as-text", dev(1, "max_power_usage", "2000"), "max_power_usage: must be a number"),
    D(
        "power-nan",
        b'{"devices": [{"device_name": "p", "device_type": "HWE-P1", '
        b'"ip_address": "192.0.2.1"}, {"device_name": "b", "device_type": "HWE-SKT", '
        b'"ip_address": "192.0.2.2", "max_power_usage": NaN, "energy_capacity": 1}]}',
        "devices[1].max_power_usage: must be a finite number",
    ),
    D("zero-capacity", dev(2, "energy_capacity", 0), "devices[2].energy_capacity: must be > 0"),
    D(
        "typo-in-a-key",
        lambda d: d["devices"][1].__setitem__(
            "max_power_usge", d["devices"][1].pop("max_power_usage")
        ),
        'devices[1].max_power_usge: unknown key (did you mean "max_power_usage"?)',
    ),
    D(
        "typo-daily-needs",
        lambda d: d["devices"][1].__setitem__("daily_needs", d["devices"][1].pop("daily_need")),
        'devices[1].daily_needs: unknown key (did you mean "daily_need"?)',
    ),
    D(
        "kwp-given-in-w",
        lambda d: d["solar panels"][0]["quartz_parameters"].__setitem__("capacity_kwp", 3200),
        "solar panels[0].quartz_parameters.capacity_kwp: must be the array's peak power in kWp",
    ),
    D("unknown-device-type", dev(1, "device_type", "HWE-KWH"), "devices[1].device_type: unknown"),
    D("device-type-missing", drop(1, "device_type"), "devices[1].device_type: is required"),
    D("battery-without-user-info", drop(2, "user_info"), "devices[2].user_info: is required"),
    D("battery-user-info-a-token", dev(2, "user_info", TOKEN), "devices[2].user_info: must be"),
    D("token-too-short", token(2, TOKEN[:-1]), "devices[2].user_info.token: must be"),
    D("token-not-hex", token(2, BAD_HEX), "devices[2].user_info.token: "),
    D("token-a-number", token(2, 12345678901234567890), "devices[2].user_info.token: must be"),
    D("token-missing", lambda d: d["devices"][2]["user_info"].pop("token"), "token: is required"),
    D("p1-token-bad", token(0, TOKEN + "0"), "devices[0].user_info.token: "),
    D("ratio-above-1", dev(1, "min_battery_charge", 1.5), "min_battery_charge: must be <= 1"),
    D("ratio-negative", dev(1, "min_battery_charge", -0.1), "min_battery_charge: must be >= 0"),
    D("priority-fraction", dev(1, "priority", 1.5), "devices[1].priority: must be a whole"),
    D("daily-need-text", dev(1, "daily_need", "yes"), "devices[1].daily_need: must be true"),
    D("port-zero", dev(1, "port", 0), "devices[1].port: must be >= 1"),
    D("v2-port-too-big", dev(2, "v2_port", 70000), "devices[2].v2_port: must be <= 65535"),
    D("latitude", panel("latitude", 91), "solar panels[0].quartz_parameters.latitude"),
    D("tilt", panel("tilt", 100), "solar panels[0].quartz_parameters.tilt: must be <= 90"),
    D("orientation", panel("orientation", -1), "quartz_parameters.orientation: must be >= 0"),
    D("capacity-zero", panel("capacity_kwp", 0), "quartz_parameters.capacity_kwp: must be > 0"),
    D(
        "panel-without-parameters",
        lambda d: d["solar panels"][0].pop("quartz_parameters"),
        "solar panels[0].quartz_parameters: is required",
    ),
    D("panels-same-name", same_panels, "solar panels[1].name: duplicate"),
    D("panels-not-a-list", lambda d: d.__setitem__("solar panels", {}), "solar panels: must be"),
    D("too-many-devices", many_sockets, "devices: at most 64 entries (got 66)"),
    D("huge-file", b'{"devices": [], "padding": "' + b"x" * 2_000_000 + b'"}', "too large"),
    D("nested-too-deeply", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
]


def S(id: str, field: str, settings: str = "", **kw: Any) -> Mistake:
    return Mistake(id, kw.pop("where", "settings"), field, settings=settings, **kw)


NAIVE = '[sim_clock]\nspeed = 60\nstart = "2026-06-21T06:00:00"\norigin = 0\n'
SETTINGS_MISTAKES = [
    S("invalid-toml", "invalid TOML", raw_settings=b"base_topic = \n"),
    S("toml-not-utf8", "not UTF-8", raw_settings=b'base_topic = "caf\xe9"\n'),
    S("toml-too-large", "too large", raw_settings=b"# " + b"x" * 2_000_000 + b"\n"),
    S(
        "toml-nested-too-deeply",
        "nested too deeply",
        raw_settings=b"a = " + b"[" * 100_000 + b"]" * 100_000,
    ),
    S("unknown-key", "poll_intervall_s: unknown setting", "poll_intervall_s = 5"),
    S("unknown-broker-key", "broker.hostt: unknown setting", broker={"hostt": '"x"'}),
    S("private-key", "_env_file: unknown setting", '_env_file = ".env"'),
    S("topic-wrong-type", "base_topic: must be a string", "base_topic = 5"),
    S("topic-wildcard", "base_topic: must not contain the MQTT wildcards", 'base_topic = "a/#"'),
    S("topic-control-char", "base_topic: must not contain control", 'base_topic = "a\\u0001b"'),
    S(
        "discovery-under-base",
        "ha_discovery_prefix: must not be base_topic",
        'base_topic = "house"\nha_discovery_prefix = "house/ha"',
    ),
    S("timezone", "timezone: unknown time zone", 'timezone = "Europe/Amsterdm"'),
    S("timezone-offset", "timezone: unknown time zone", 'timezone = "+01:00"'),
    S("boundary", "daily_boundary: must be a time like 06:00", 'daily_boundary = "25:00"'),
    S(
        "boundary-a-number",
        "daily_boundary: must be a time like 06:00 (got 6)",
        "daily_boundary = 6",
    ),
    S(
        "boundary-with-offset",
        "daily_boundary: must be a local time",
        'daily_boundary = "06:00+02:00"',
    ),
    S("poll-zero", "poll_interval_s: must be > 0", "poll_interval_s = 0"),
    S("poll-infinite", "poll_interval_s: must be a finite number", "poll_interval_s = inf"),
    S("switch-interval", "switch_interval_s: must be <= 86400", "switch_interval_s = 100000"),
    S("fallback-after", "fallback_after_s: must be >= 60", "fallback_after_s = 10"),
    S("planning-step", "planning_step_s: must be >= 60", "planning_step_s = 30"),
    S("planner-limit", "planner_time_limit_s: must be > 0", "planner_time_limit_s = 0"),
    S(
        "read-interval",
        "actuator_read_interval_s: must be >= 0.05",
        "actuator_read_interval_s = 0.001",
    ),
    S("planner", "planner: must be one of", 'planner = "best"'),
    S("log-level", "log_level: must be one of", 'log_level = "LOUD"'),
    S(
        "devices-file-missing",
        "file not found",
        'devices_file = "{tmp}/nope.json"',
        where="{tmp}/nope.json",
    ),
    S("devices-file-empty", "devices_file: must name a file", 'devices_file = ""'),
    S("devices-file-unreadable", "cannot read", 'devices_file = "{tmp}"', where="{tmp}"),
    S("devices-file-wrong-type", "devices_file: must be a path", "devices_file = 5"),
    S("ca-file-missing", "device_ca_file: file not found", 'device_ca_file = "{tmp}/ca.pem"'),
    S("ca-file-garbage", "device_ca_file: ", 'device_ca_file = "{tmp}/garbage.pem"'),
    S("broker-port-zero", "broker.port: must be >= 1", broker={"port": "0"}),
    S("broker-port-too-big", "broker.port: must be <= 65535", broker={"port": "70000"}),
    S("broker-port-text", "broker.port: must be a whole number", broker={"port": '"x"'}),
    S("broker-host-url", "broker.host: must be a bare IP", broker={"host": '"mqtt://x"'}),
    S(
        "broker-password-type",
        "broker.password: must be a string",
        broker={"password": f'["{PASSWORD}"]'},
    ),
    S("broker-tls-text", "broker.tls: must be true or false", broker={"tls": '"maybe"'}),
    S(
        "broker-client-id-empty",
        "broker.client_id_prefix: must not be empty",
        broker={"client_id_prefix": '""'},
    ),
    S("broker-not-a-table", "broker: must be an object", 'broker = "mqtt.local"', broker={"-": ""}),
    S("sim-clock-naive-start", "sim_clock.start: must have a UTC offset", tables=NAIVE),
    S(
        "sim-clock-negative-speed",
        "sim_clock.speed: must be > 0",
        tables="[sim_clock]\nspeed = -60\nstart = 2026-06-21T06:00:00Z\norigin = 0\n",
    ),
    S(
        "sim-clock-incomplete",
        "sim_clock.origin: is required",
        tables="[sim_clock]\nspeed = 60\nstart = 2026-06-21T06:00:00Z\n",
    ),
    S(
        "sim-clock-unknown-key",
        "sim_clock.sped: unknown setting",
        tables="[sim_clock]\nsped = 60\nspeed = 1\nstart = 2026-06-21T06:00:00Z\norigin = 0\n",
    ),
    S(
        "settings-file-missing",
        "file not found",
        where="{tmp}/none.toml",
        env={"HWSCHED_SETTINGS_FILE": "{tmp}/none.toml"},
    ),
    S(
        "settings-file-unreadable",
        "cannot read",
        where="{tmp}",
        env={"HWSCHED_SETTINGS_FILE": "{tmp}"},
    ),
]


def E(var: str, value: str, field: str, **env: str) -> Mistake:
    return Mistake(f"{var}={value!r}"[:60], var, field, env={var: value, **env})


SIM_START = {"HWSCHED_SIM_CLOCK__START": "2026-06-21T06:00:00+02:00"}
ENV_MISTAKES = [
    E("HWSCHED_BROKER__PORT", "lots", "broker.port: must be a whole number"),
    E("HWSCHED_BROKER__PORT", "0", "broker.port: must be >= 1"),
    E("HWSCHED_BROKER__HOSTT", "mqtt.local", "broker.hostt: unknown setting"),
    E("HWSCHED_BROKER__HOST__NAME", "mqtt.local", "broker.host: must be a string"),
    E("HWSCHED_POLL_INTERVALL_S", "5", "unknown setting"),
    E("HWSCHED_BROKER", "{not json", "broker: must be valid JSON"),
    E("HWSCHED_BROKER", '{"password": 5}', "broker.password: must be a string"),
    E("HWSCHED_TIMEZONE", "Nowhere/City", "timezone: unknown time zone"),
    E("HWSCHED_DAILY_BOUNDARY", "25:00", "daily_boundary: must be a time"),
    E("HWSCHED_POLL_INTERVAL_S", "0", "poll_interval_s: must be > 0"),
    E("HWSCHED_POLL_INTERVAL_S", "", "poll_interval_s: must be a number"),
    E("HWSCHED_SWITCH_INTERVAL_S", "1.5", "switch_interval_s: must be a whole number"),
    E("HWSCHED_PLANNER", "magic", "planner: must be one of"),
    E("HWSCHED_LOG_LEVEL", "chatty", "log_level: must be one of"),
    E("HWSCHED_BASE_TOPIC", "a/+/b", "base_topic: must not contain the MQTT wildcards"),
    E("HWSCHED_DEVICES_FILE", "", "devices_file: must name a file"),
    E("HWSCHED_DEVICE_CA_FILE", "/nonexistent/ca.pem", "device_ca_file: file not found"),
    E(
        "HWSCHED_SIM_CLOCK__SPEED",
        "-5",
        "sim_clock.speed: must be > 0",
        HWSCHED_SIM_CLOCK__ORIGIN="0",
        **SIM_START,
    ),
    E(
        "HWSCHED_SIM_CLOCK__START",
        "2026-06-21T06:00:00",
        "sim_clock.start: must have a UTC",
        HWSCHED_SIM_CLOCK__SPEED="60",
        HWSCHED_SIM_CLOCK__ORIGIN="0",
    ),
    E("HWSCHED_SIM_CLOCK__SPEED", "60", "sim_clock.start: is required"),
    E("hwsched_broker__port", "x", "broker.port: must be a whole number"),
]

FORECAST = ("forecaster", "check-config")


def F(var: str, value: str, field: str, **env: str) -> Mistake:
    name = "HWSCHED_FORECAST__" + var
    extra = {"HWSCHED_FORECAST__" + k: v for k, v in env.items()}
    return Mistake(
        f"{name}={value!r}"[:60], name, field, env={name: value, **extra}, entries=FORECAST
    )


FORECAST_MISTAKES = [
    F("WEATHER_URL", "ftp://weather.local", "weather_url: must be an http(s) base URL"),
    F("WEATHER_URL", f"https://me:{PASSWORD}@weather.local", "weather_url: must not contain"),
    F("WEATHER_URL", "http://weather.local:99999", "weather_url: has an invalid port"),
    F("NWP_SOURCE", "bbc", "nwp_source: must be one of"),
    F("WORKER_TIMEOUT_S", "0", "worker_timeout_s: must be > 0"),
    F("HTTP_TIMEOUT_S", "soon", "http_timeout_s: must be a number"),
    F("RETRY_MAX_S", "10", "retry_max_s: must be >= retry_min_s (100)", RETRY_MIN_S="100"),
    F("REQUEST_MIN_INTERVAL_S", "-1", "request_min_interval_s: must be >= 0"),
    F("WEATHER", "https://weather.local", "unknown setting"),
]

SIMULATOR = ("simulator", "simulate")


def M(
    id: str,
    field: str,
    *args: str,
    file: tuple[str, str] | None = None,
    where: str = "",
) -> Mistake:
    return Mistake(
        id,
        where or ("{sim}" if file else ""),
        field,
        sim_args=args,
        sim_file=file,
        entries=SIMULATOR,
    )


SIMULATOR_MISTAKES = [
    M("sim-invalid-toml", "invalid TOML", file=(".toml", "seed = \n")),
    M("sim-unknown-key", "sed: unknown setting", file=(".toml", "sed = 1\n")),
    M("sim-cloudiness", "cloudiness: must be <= 1", file=(".toml", "cloudiness = 2\n")),
    M(
        "sim-token",
        "devices.Battery.tokens: ",
        file=(".toml", f'[devices.Battery]\ntokens = ["{TOKEN[:-1]}"]\n'),
    ),
    M(
        "sim-draw-time",
        "draws[0].start: must be a time",
        file=(
            ".toml",
            '[devices.Boiler]\ndraws = [{start = "25:00", duration_min = 1, fraction = 0.1}]\n',
        ),
    ),
    M("sim-not-an-object", "must be an object", file=(".json", "[1]")),
    M(
        "sim-file-missing",
        "file not found",
        "--sim-config",
        "{tmp}/none.toml",
        where="{tmp}/none.toml",
    ),
    M("sim-speed", "speed: must be > 0", "--speed", "-1", where="command line"),
    M("sim-origin", "origin: must be >= 0", "--origin", "-5", where="command line"),
    M("sim-start", "not an ISO date-time", "--start", "yesterday", where="--start"),
    M("sim-bind", "not an IP address", "--bind", "localhost", where="--bind"),
    M(
        "sim-advertise-host",
        "ip_address: must not contain spaces",
        "--advertise-host",
        "bad host",
        where="--advertise-host",
    ),
    M("sim-base-port", "base_port: must be <= 65535", "--base-port", "70000", where="command line"),
]
#: Were refused, but not cleanly (a traceback, a line without the file); now cleanly.
SIMULATOR_KNOWN = [
    M(
        "sim-nested-too-deeply",
        "nested too deeply",
        file=(".toml", "a = " + "[" * 100_000 + "]" * 100_000),
    ),
    M("sim-timezone", "timezone: unknown time zone", file=(".toml", 'timezone = "Mars/X"\n')),
    M("sim-device-name", "devices: ", file=(".toml", '[devices."!!!"]\npower_on = true\n')),
]

TABLE = [
    *DEVICE_MISTAKES,
    *SETTINGS_MISTAKES,
    *ENV_MISTAKES,
    *FORECAST_MISTAKES,
    *SIMULATOR_MISTAKES,
    *SIMULATOR_KNOWN,
]


def test_the_table_covers_every_kind_of_file() -> None:
    kinds = {
        "devices": len(DEVICE_MISTAKES),
        "settings": len(SETTINGS_MISTAKES),
        "environment": len(ENV_MISTAKES),
        "forecaster environment": len(FORECAST_MISTAKES),
        "simulator": len(SIMULATOR_MISTAKES) + len(SIMULATOR_KNOWN),
    }
    assert min(kinds.values()) >= 8, kinds
    assert len({m.id for m in TABLE}) == len(TABLE)


# --- setting a mistake up -----------------------------------------------------------------------


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Setup:
    tmp: Path
    devices: Path
    settings: Path
    env: dict[str, str]
    sim_file: Path | None

    def expand(self, text: str) -> str:
        return text.replace("{tmp}", str(self.tmp)).replace("{sim}", str(self.sim_file))

    @property
    def settings_path(self) -> Path:
        return Path(self.env.get("HWSCHED_SETTINGS_FILE", self.settings))


def prepare(mistake: Mistake, tmp: Path, port: int) -> Setup:
    """The files and environment of `mistake`: everything else good, the broker closed."""
    tmp.mkdir(parents=True, exist_ok=True)
    devices = tmp / "config_devices.json"
    if isinstance(mistake.devices, bytes):
        devices.write_bytes(mistake.devices)
    else:
        data = copy.deepcopy(GOOD_DEVICES)
        if mistake.devices is not None:
            mistake.devices(data)
        devices.write_text(json.dumps(data), encoding="utf-8")
    (tmp / "garbage.pem").write_text("not a certificate\n", encoding="ascii")
    settings = tmp / "settings.toml"
    setup = Setup(tmp, devices, settings, {}, None)
    if mistake.raw_settings is not None:
        settings.write_bytes(mistake.raw_settings)
    else:
        top = setup.expand(mistake.settings)
        text = "" if "devices_file" in top else f'devices_file = "{devices}"\n'
        text += top + "\n"
        if "-" not in mistake.broker:  # "-": no [broker] table at all
            broker = {"host": '"127.0.0.1"', "port": str(port), **mistake.broker}
            text += "[broker]\n" + "".join(f"{k} = {v}\n" for k, v in broker.items())
        settings.write_text(text + mistake.tables, encoding="utf-8")
    if mistake.sim_file is not None:
        suffix, text = mistake.sim_file
        setup.sim_file = tmp / f"simulator{suffix}"
        setup.sim_file.write_text(text, encoding="utf-8")
    setup.env = {
        "HWSCHED_SETTINGS_FILE": str(settings),
        **{k: setup.expand(v) for k, v in mistake.env.items()},
    }
    return setup


def sim_argv(mistake: Mistake, setup: Setup) -> list[str]:
    argv = ["--config", str(setup.devices)]
    if setup.sim_file is not None:
        argv += ["--sim-config", str(setup.sim_file)]
    return argv + [setup.expand(a) for a in mistake.sim_args]


def expected_where(mistake: Mistake, setup: Setup) -> str:
    if mistake.where == "devices":
        return str(setup.devices)
    if mistake.where == "settings":
        return str(setup.settings)
    return setup.expand(mistake.where)


def check_line(err: str, prefix: str, mistake: Mistake, setup: Setup) -> str:
    """The one line of a refusal, checked: prefix, the file or variable, the field."""
    assert err.endswith("\n"), f"not one line:\n{err}"
    assert err.count("\n") == 1, f"not one line:\n{err}"
    line = err.rstrip("\n")
    assert "Traceback" not in line
    assert line.startswith(prefix), line
    assert expected_where(mistake, setup) in line, line
    assert mistake.field in line, line
    for secret in (TOKEN, TOKEN[:-1], BAD_HEX, PASSWORD):
        assert secret not in line, line
    return line


# --- in-process: every entry point -----------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No HWSCHED_* variables, a working directory without config/settings.toml."""
    for name in list(os.environ):
        if name.upper().startswith("HWSCHED_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


@pytest.fixture
def nothing_starts(clean_env: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Whatever would start a service (or the simulated house) fails the test instead."""
    started: list[str] = []

    def refuse(what: str) -> Callable[..., Any]:
        def call(*args: object, **kwargs: object) -> Any:
            started.append(what)
            raise AssertionError(f"{what} was started despite the mistake")

        return call

    clean_env.setattr(shared.service, "Service", refuse("Service"))
    clean_env.setattr(shared.service, "setup_logging", refuse("logging"))
    clean_env.setattr(aiomqtt, "Client", refuse("an MQTT client"))
    clean_env.setattr(simulator_main, "serve", refuse("the simulated house"))
    yield started
    assert started == []


def run_entry(entry: str, mistake: Mistake, setup: Setup) -> int:
    if entry in MAINS:
        return MAINS[entry]()
    if entry == "check-config":
        return cli_main(["check-config"])
    if entry == "simulator":
        return simulator_main.main(sim_argv(mistake, setup))
    assert entry == "simulate"
    return cli_main(["simulate", *sim_argv(mistake, setup)])


PREFIX = {
    **{name: f"hwsched {name}: " for name in SERVICES},
    "check-config": "hwsched check-config: ",
    "simulator": "simulator: ",
    "simulate": "hwsched simulate: ",
}


def refuse_everywhere(
    mistake: Mistake,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup = prepare(mistake, tmp_path / "case", closed_port())
    for name, value in setup.env.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    for entry in mistake.entries:
        code = run_entry(entry, mistake, setup)
        out, err = capsys.readouterr()
        assert (entry, code) == (entry, 2), err
        assert out == "", (entry, out)
        check_line(err, PREFIX[entry], mistake, setup)


@pytest.mark.parametrize("mistake", TABLE, ids=lambda m: m.id)
def test_refused_at_start_by_every_entry_point(
    mistake: Mistake,
    tmp_path: Path,
    nothing_starts: list[str],
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    refuse_everywhere(mistake, tmp_path, clean_env, capsys)


def test_the_good_configuration_passes_every_check(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The baseline the mistakes are made in is itself right (else the table proves nothing)."""
    good = Mistake("good", "settings", "")
    setup = prepare(good, tmp_path, closed_port())
    for name, value in setup.env.items():
        clean_env.setenv(name, value)
    assert cli_main(["check-config"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "1 socket(s), 1 battery(ies), 1 solar array(s)" in out
    assert TOKEN not in out


# --- as real processes ------------------------------------------------------------------------

#: (mistake id, command): each entry point once, every kind of file.
SUBPROCESS_SUBSET = [
    ("negative-power", "poller"),
    ("token-not-hex", "check-config"),
    ("invalid-toml", "scheduler"),
    ("sim-clock-naive-start", "actuator"),
    ("reserved-name", "bridge"),
    ("HWSCHED_BROKER__PORT='lots'", "bridge"),
    ("HWSCHED_FORECAST__WEATHER_URL='ftp://weather.local'", "forecaster"),
    ("nested-too-deeply", "forecaster"),
    ("not-json", "simulator"),
    ("sim-cloudiness", "simulate"),
]
COMMANDS = {
    **{name: [sys.executable, "-m", f"services.{name}"] for name in SERVICES},
    "check-config": [str(Path(sys.executable).parent / "hwsched"), "check-config"],
    "simulator": [sys.executable, "-m", "services.simulator"],
    "simulate": [str(Path(sys.executable).parent / "hwsched"), "simulate"],
}
#: A refusal's CPU time (~0.5 s each when the machine is idle): counted in CPU seconds, not
#: wall-clock ones, so that a busy machine does not make a quick refusal look slow.
FAST_CPU_S = 3.0
#: How long to wait for a process that should exit: a started service never does (it keeps
#: retrying the closed broker), so this only bounds a failure, however busy the machine.
WAIT_S = 180.0


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("HWSCHED_")}


def test_refused_by_real_processes_fast_with_one_line(tmp_path: Path) -> None:
    by_id = {m.id: m for m in TABLE}
    port = closed_port()
    runs = []
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for i, (mistake_id, command) in enumerate(SUBPROCESS_SUBSET):
        mistake = by_id[mistake_id]
        setup = prepare(mistake, tmp_path / f"case{i}", port)
        argv = list(COMMANDS[command])
        if command in SIMULATOR:
            argv += sim_argv(mistake, setup)
        process = subprocess.Popen(
            argv,
            cwd=tmp_path,
            env={**base_env(), **setup.env, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        runs.append((mistake, command, setup, process))
    for mistake, command, setup, process in runs:
        try:
            out, err = process.communicate(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"{command} did not exit on {mistake.id}: it started\n{err}")
        assert process.returncode == 2, (command, mistake.id, err)
        assert out == "", (command, out)
        check_line(err, PREFIX[command], mistake, setup)
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    assert cpu < FAST_CPU_S * len(runs), f"{cpu:.1f} CPU s for {len(runs)} refusals"


def test_control_a_good_configuration_does_start_and_try_the_broker(tmp_path: Path) -> None:
    """The same command with the good files keeps running and tries the (closed) broker: so
    an exit with status 2 above is a refusal, not a crash or a missing broker."""
    port = closed_port()
    setup = prepare(Mistake("good", "settings", ""), tmp_path, port)
    log = tmp_path / "poller.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            COMMANDS["poller"],
            cwd=tmp_path,
            env={**base_env(), **setup.env, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + WAIT_S
        while f"cannot connect to 127.0.0.1:{port}" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert process.poll() is None  # still running: retrying the broker
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
    assert TOKEN not in log.read_text()
