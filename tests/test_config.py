"""Configuration: the original devices file as it is, hwsched's settings, one-line refusals."""

from __future__ import annotations

import copy
import json
from datetime import datetime, time
from pathlib import Path
from typing import Any

import pytest

from shared.config import (
    BatteryConfig,
    ConfigError,
    P1Config,
    SocketConfig,
    load_config,
    load_devices,
    load_settings,
)
from shared.naming import slugify
from shared.planning.problem import BatterySpec, SocketSpec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_DEVICES = ROOT / "config" / "config_devices.example.json"
EXAMPLE_SETTINGS = ROOT / "config" / "settings.example.toml"
TOKEN = "0123456789abcdef0123456789ABCDEF"

BASE: dict[str, Any] = {
    "devices": [
        {"device_name": "p1", "device_type": "HWE-P1", "ip_address": "192.168.1.10"},
        {
            "device_name": "kitchen boiler",
            "device_type": "HWE-SKT",
            "ip_address": "192.168.1.11",
            "max_power_usage": 2000,
            "energy_capacity": 2000,
            "priority": 1,
            "daily_need": True,
            "min_battery_charge": 0.0,
        },
        {
            "device_name": "battery",
            "device_type": "HWE-BAT",
            "ip_address": "192.168.1.12",
            "max_power_usage": 800,
            "energy_capacity": 2700,
            "user_info": {"name": "local/hwsched", "token": TOKEN},
        },
    ],
    "solar panels": [
        {
            "name": "south roof",
            "quartz_parameters": {
                "latitude": 52.1,
                "longitude": 5.1,
                "capacity_kwp": 3.2,
                "tilt": 35,
                "orientation": 180,
            },
        }
    ],
}


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "config_devices.json"
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


def _base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def _refusal(path: Path) -> str:
    """The ConfigError message loading `path` gives (the test fails if it loads)."""
    with pytest.raises(ConfigError) as info:
        load_devices(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


# --- loading what is right ----------------------------------------------------------


def test_original_format_loads_with_every_part(tmp_path: Path) -> None:
    config = load_devices(_write(tmp_path, BASE))
    assert isinstance(config.p1, P1Config)
    assert config.p1.ip_address == "192.168.1.10"
    assert [s.device_name for s in config.sockets] == ["kitchen boiler"]
    assert [b.device_name for b in config.batteries] == ["battery"]
    assert config.batteries[0].user_info.token.get_secret_value() == TOKEN
    assert config.solar_panels[0].quartz_parameters.capacity_kwp == 3.2
    assert config.sockets[0].port is None


def test_comment_keys_and_quartz_inverter_type_are_accepted(tmp_path: Path) -> None:
    data = _base()
    data["_comment"] = "my house"
    data["devices"][1]["_note"] = "the one in the cellar"
    data["devices"][2]["user_info"]["_comment"] = "made 2024"
    data["solar panels"][0]["quartz_parameters"]["inverter_type"] = "enphase"
    config = load_devices(_write(tmp_path, data))
    assert config.sockets[0].max_power_usage == 2000.0
    assert not hasattr(config.sockets[0], "_note")


def test_the_originals_own_file_loads_as_it_is(tmp_path: Path) -> None:
    """The original project's file: sockets without min_battery_charge, the P1 last, the
    older flat solar panel with "total peak power"."""
    original = {
        "devices": [
            {
                "device_name": "E-bike shed",
                "device_type": "HWE-SKT",
                "ip_address": "192.168.1.45",
                "max_power_usage": 80,
                "energy_capacity": 400,
                "priority": 1,
                "daily_need": True,
            },
            {"device_name": "P1 meter", "device_type": "HWE-P1", "ip_address": "192.168.1.122"},
        ],
        "solar panels": [
            {
                "name": "Roof",
                "latitude": 51.94,
                "longitude": 4.25,
                "total peak power": 4.1,
                "tilt": 31,
                "orientation": 240,
            }
        ],
    }
    config = load_devices(_write(tmp_path, original))
    assert config.sockets[0].daily_need
    assert config.solar_panels[0].quartz_parameters.capacity_kwp == 4.1
    assert config.warnings() == []


DEV1, USER2 = ("devices", 1), ("devices", 2, "user_info")
QUARTZ0 = ("solar panels", 0, "quartz_parameters")


@pytest.mark.parametrize(
    ("where", "key", "field", "problem"),
    [
        (DEV1, "daily_needs", "devices[1]", 'unknown key (did you mean "daily_need"?)'),
        (DEV1, "Daily_Need", "devices[1]", 'unknown key (did you mean "daily_need"?)'),
        (DEV1, "max_power", "devices[1]", 'unknown key (did you mean "max_power_usage"?)'),
        (
            DEV1,
            "user_info",
            "devices[1]",
            "unknown key here: a key of a P1 meter (HWE-P1) or battery (HWE-BAT)",
        ),
        (("devices", 0), "icon", "devices[0]", "unknown key (known here: device_name, "),
        ((), "solar_panel", "", 'unknown key (did you mean "solar panels"?)'),
        (USER2, "tokn", "devices[2].user_info", 'unknown key (did you mean "token"?)'),
        (
            QUARTZ0,
            "capacity_kw",
            "solar panels[0].quartz_parameters",
            'unknown key (did you mean "capacity_kwp"?)',
        ),
    ],
)
def test_an_unknown_key_is_refused_with_the_closest_known_one(
    tmp_path: Path, where: tuple[str | int, ...], key: str, field: str, problem: str
) -> None:
    """A typo must not silently change a socket: `daily_needs` would make a needed boiler
    optional (no hot water on a cloudy day)."""
    data = _base()
    target: Any = data
    for part in where:
        target = target[part]
    target[key] = True
    message = _refusal(_write(tmp_path, data))
    where_text = f"{field}.{key}" if field else key
    assert message.startswith(f"{tmp_path / 'config_devices.json'}: {where_text}: {problem}")


@pytest.mark.parametrize(
    ("where", "key", "value", "expected"),
    [
        (("solar panels", 0, "quartz_parameters"), "capacity_kwp", 3200,
         "solar panels[0].quartz_parameters.capacity_kwp: must be the array's peak power in kWp, "
         "at most 100 (got 3200: if that is W, write 3.2)"),
        (("devices", 1), "max_power_usage", 20000,
         "devices[1].max_power_usage: must be the load's power in W, at most 3680"),
        (("devices", 2), "max_power_usage", 800000,
         "devices[2].max_power_usage: must be the battery's charge/discharge power in W"),
    ],
)  # fmt: skip
def test_an_implausible_value_is_refused_saying_the_unit(
    tmp_path: Path, where: tuple[str | int, ...], key: str, value: float, expected: str
) -> None:
    data = _base()
    target: Any = data
    for part in where:
        target = target[part]
    target[key] = value
    assert expected in _refusal(_write(tmp_path, data))


def test_doubtful_values_load_with_a_warning(tmp_path: Path) -> None:
    data = _base()
    data["devices"][1]["energy_capacity"] = 2  # kWh written where Wh is meant
    data["solar panels"][0]["quartz_parameters"].update(latitude=0.0, longitude=0.0)
    data["solar panels"].append(
        {"name": "balcony", "quartz_parameters": {**data["solar panels"][0]["quartz_parameters"],
                                                  "latitude": 52.1, "capacity_kwp": 0.01}}
    )  # fmt: skip
    warnings = load_devices(_write(tmp_path, data)).warnings()
    assert warnings == [
        "devices[1].energy_capacity: 2 Wh is full after 0.1 min at 2000 W: the unit is Wh "
        "(2 kWh = 2000)",
        "solar panels[0].quartz_parameters: latitude 0, longitude 0 (the original's example "
        "placeholder): set where the panels are",
        "solar panels[1].quartz_parameters.capacity_kwp: 0.01 kWp is less than one panel: the "
        "unit is kWp (a 300 Wp panel = 0.3)",
    ]
    assert load_devices(EXAMPLE_DEVICES).warnings() == []


def test_example_file_loads_as_a_realistic_house() -> None:
    config = load_devices(EXAMPLE_DEVICES)
    sockets = {s.device_name: s for s in config.sockets}
    assert set(sockets) == {"Kitchen boiler", "Shower boiler", "E-bike charger"}
    assert sockets["Kitchen boiler"].daily_need
    assert sockets["Shower boiler"].energy_capacity == 6000
    assert not sockets["E-bike charger"].daily_need
    assert sockets["E-bike charger"].min_battery_charge == 0.5
    assert len(config.batteries) == 1
    assert config.batteries[0].user_info.token_is_placeholder
    assert [p.quartz_parameters.orientation for p in config.solar_panels] == [180, 270]
    assert all(d.ip_address.startswith("192.0.2.") for d in config.devices)


def test_ints_are_accepted_for_float_fields_and_ports_optional(tmp_path: Path) -> None:
    data = _base()
    data["devices"][0]["port"] = 8081
    data["devices"][0]["ip_address"] = "p1meter.local"
    config = load_devices(_write(tmp_path, data))
    assert config.p1.port == 8081
    assert config.p1.ip_address == "p1meter.local"
    assert isinstance(config.sockets[0].energy_capacity, float)


def test_older_flat_solar_panel_form_is_read(tmp_path: Path) -> None:
    data = _base()
    data["solar panels"] = [
        {
            "name": "Solar edge",
            "latitude": 51.9,
            "longitude": 4.25,
            "total peak power": 4.1,
            "tilt": 31,
            "orientation": 240,
        }
    ]
    panel = load_devices(_write(tmp_path, data)).solar_panels[0]
    assert panel.quartz_parameters.capacity_kwp == 4.1
    assert panel.quartz_parameters.orientation == 240


def test_specs_for_the_planner(tmp_path: Path) -> None:
    config = load_devices(_write(tmp_path, _base()))
    sockets = config.socket_specs({"kitchen boiler": 500.0})
    assert sockets == [
        SocketSpec(
            name="kitchen boiler",
            max_power_usage=2000,
            energy_capacity=2000,
            energy_stored=500,
            priority=1,
            daily_need=True,
            min_battery_charge=0.0,
        )
    ]
    assert config.battery_specs() == [
        BatterySpec(name="battery", max_power_usage=800, energy_capacity=2700, energy_stored=0)
    ]
    # A measured charge a bit over capacity (or below 0) is clamped, not refused.
    assert config.battery_specs({"battery": 2750.0})[0].energy_stored == 2700
    assert config.socket_specs({"kitchen boiler": -3.0})[0].energy_stored == 0


def test_device_by_slug(tmp_path: Path) -> None:
    config = load_devices(_write(tmp_path, _base()))
    found = config.device_by_slug("kitchen_boiler")
    assert isinstance(found, SocketConfig)
    assert found.device_name == "kitchen boiler"
    assert isinstance(config.device_by_slug("battery"), BatteryConfig)
    assert config.device_by_slug("nope") is None


# --- refusals: one line naming file, field and problem ------------------------------


def test_missing_file(tmp_path: Path) -> None:
    message = _refusal(tmp_path / "config_devices.json")
    assert "file not found" in message


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "config_devices.json"
    path.write_text('{\n  "devices": [\n    {"device_name": "p1",}\n  ]\n}\n', encoding="utf-8")
    message = _refusal(path)
    assert "invalid JSON at line 3 column" in message


def test_top_level_must_be_an_object(tmp_path: Path) -> None:
    assert '"devices" list' in _refusal(_write(tmp_path, [1, 2]))


def test_missing_devices_list(tmp_path: Path) -> None:
    assert _refusal(_write(tmp_path, {"solar panels": []})).endswith("devices: is required")


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("max_power_usage", -5, "devices[1].max_power_usage: must be > 0 (got -5)"),
        ("max_power_usage", 0, "devices[1].max_power_usage: must be > 0 (got 0)"),
        ("energy_capacity", 0.0, "devices[1].energy_capacity: must be > 0 (got 0.0)"),
        ("energy_capacity", -1, "devices[1].energy_capacity: must be > 0 (got -1)"),
        ("min_battery_charge", 1.5, "devices[1].min_battery_charge: must be <= 1 (got 1.5)"),
        ("min_battery_charge", -0.1, "devices[1].min_battery_charge: must be >= 0 (got -0.1)"),
        ("max_power_usage", "2000", 'devices[1].max_power_usage: must be a number (got "2000")'),
        ("max_power_usage", True, "devices[1].max_power_usage: must be a number (got true)"),
        ("daily_need", "yes", 'devices[1].daily_need: must be true or false (got "yes")'),
        ("daily_need", 1, "devices[1].daily_need: must be true or false (got 1)"),
        ("priority", 1.5, "devices[1].priority: must be a whole number (got 1.5)"),
        ("port", 70000, "devices[1].port: must be <= 65535 (got 70000)"),
    ],
)
def test_bad_socket_values(tmp_path: Path, field: str, value: object, problem: str) -> None:
    data = _base()
    data["devices"][1][field] = value
    message = _refusal(_write(tmp_path, data))
    assert message == f"{tmp_path / 'config_devices.json'}: {problem}"


def test_bad_battery_power(tmp_path: Path) -> None:
    data = _base()
    data["devices"][2]["max_power_usage"] = -800
    assert _refusal(_write(tmp_path, data)).endswith(
        "devices[2].max_power_usage: must be > 0 (got -800)"
    )


def test_missing_required_socket_field(tmp_path: Path) -> None:
    data = _base()
    del data["devices"][1]["energy_capacity"]
    assert _refusal(_write(tmp_path, data)).endswith("devices[1].energy_capacity: is required")


def test_unknown_device_type_lists_the_allowed_ones(tmp_path: Path) -> None:
    data = _base()
    data["devices"][1]["device_type"] = "HWE-KWH1"
    message = _refusal(_write(tmp_path, data))
    assert message.endswith(
        'devices[1].device_type: unknown device type "HWE-KWH1" (allowed: HWE-P1, HWE-SKT, HWE-BAT)'
    )


def test_missing_device_type(tmp_path: Path) -> None:
    data = _base()
    del data["devices"][1]["device_type"]
    assert "devices[1].device_type: is required (one of HWE-P1" in _refusal(_write(tmp_path, data))


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("http://192.168.1.11", "no scheme"),
        ("192.0.2.1 (replace with actual IP)", "must not contain spaces"),
        ("", "must not be empty"),
        ("192.168.1.11:80", "port (if any) in `port`"),
    ],
)
def test_bad_ip_address(tmp_path: Path, value: str, problem: str) -> None:
    data = _base()
    data["devices"][1]["ip_address"] = value
    message = _refusal(_write(tmp_path, data))
    assert "devices[1].ip_address: " in message
    assert problem in message


def test_duplicate_device_names(tmp_path: Path) -> None:
    data = _base()
    extra = copy.deepcopy(data["devices"][1])
    data["devices"].append(extra)
    message = _refusal(_write(tmp_path, data))
    assert message.endswith(
        'devices[3].device_name: duplicate name "kitchen boiler" (also devices[1])'
    )


def test_socket_and_battery_with_the_same_name(tmp_path: Path) -> None:
    data = _base()
    data["devices"][2]["device_name"] = "kitchen boiler"
    message = _refusal(_write(tmp_path, data))
    assert message.endswith(
        'devices[2].device_name: duplicate name "kitchen boiler" (also devices[1])'
    )


def test_names_with_the_same_topic_slug(tmp_path: Path) -> None:
    data = _base()
    data["devices"][2]["device_name"] = "Kitchen-Boiler!"
    message = _refusal(_write(tmp_path, data))
    assert "devices[2].device_name: " in message
    assert '"kitchen_boiler"' in message
    assert "same topic name" in message


def test_name_without_any_letter_or_digit(tmp_path: Path) -> None:
    data = _base()
    data["devices"][1]["device_name"] = "!!!"
    message = _refusal(_write(tmp_path, data))
    assert "devices[1].device_name: " in message
    assert "no letters or digits" in message


def test_solar_panels_with_the_same_slug(tmp_path: Path) -> None:
    data = _base()
    data["solar panels"].append(copy.deepcopy(data["solar panels"][0]))
    data["solar panels"][1]["name"] = "South Roof"
    assert 'solar panels[1].name: "South Roof"' in _refusal(_write(tmp_path, data))


def test_bad_solar_panel_tilt(tmp_path: Path) -> None:
    data = _base()
    data["solar panels"][0]["quartz_parameters"]["tilt"] = 120
    assert _refusal(_write(tmp_path, data)).endswith(
        "solar panels[0].quartz_parameters.tilt: must be <= 90 (got 120)"
    )


@pytest.mark.parametrize("count", [0, 2])
def test_exactly_one_p1_meter(tmp_path: Path, count: int) -> None:
    data = _base()
    data["devices"] = data["devices"][1:]
    for i in range(count):
        data["devices"].append(
            {"device_name": f"p1 {i}", "device_type": "HWE-P1", "ip_address": "192.0.2.1"}
        )
    message = _refusal(_write(tmp_path, data))
    assert message.endswith(f"devices: exactly one HWE-P1 (P1 meter) is required, found {count}")


def test_battery_without_user_info(tmp_path: Path) -> None:
    data = _base()
    del data["devices"][2]["user_info"]
    assert _refusal(_write(tmp_path, data)).endswith("devices[2].user_info: is required")


def test_battery_without_token(tmp_path: Path) -> None:
    data = _base()
    del data["devices"][2]["user_info"]["token"]
    assert _refusal(_write(tmp_path, data)).endswith("devices[2].user_info.token: is required")


@pytest.mark.parametrize(
    ("token", "what"),
    [
        ("", "(0 characters)"),
        (TOKEN[:31], "(31 characters)"),
        ("g" * 32, "(not all hexadecimal)"),
    ],
)
def test_bad_token_is_refused_without_showing_it(tmp_path: Path, token: str, what: str) -> None:
    data = _base()
    data["devices"][2]["user_info"]["token"] = token
    message = _refusal(_write(tmp_path, data))
    assert "devices[2].user_info.token: must be a HomeWizard API v2 token" in message
    assert message.endswith(what)
    if token:
        assert token not in message


def test_token_of_the_wrong_type_is_not_shown(tmp_path: Path) -> None:
    data = _base()
    data["devices"][2]["user_info"]["token"] = 1234567890123
    message = _refusal(_write(tmp_path, data))
    assert message.endswith("devices[2].user_info.token: must be a string")
    assert "1234567890123" not in message


def test_user_info_given_as_a_bare_token_is_not_shown(tmp_path: Path) -> None:
    data = _base()
    data["devices"][2]["user_info"] = TOKEN
    message = _refusal(_write(tmp_path, data))
    assert "devices[2].user_info: must be an object" in message
    assert TOKEN not in message


def test_token_never_in_repr_or_str(tmp_path: Path) -> None:
    config = load_devices(_write(tmp_path, _base()))
    for text in (repr(config), str(config), repr(config.batteries[0]), config.model_dump_json()):
        assert TOKEN not in text
        assert TOKEN.lower() not in text.lower()


def test_v2_ports_and_the_p1_users_token_are_optional_additions(tmp_path: Path) -> None:
    config = load_devices(_write(tmp_path, BASE))  # the original format: none of them
    assert config.p1.v2_port is None
    assert config.p1.user_info is None
    assert config.batteries[0].v2_port is None
    data = _base()
    data["devices"][0]["v2_port"] = 8443
    data["devices"][0]["user_info"] = {"name": "local/hwsched", "token": TOKEN.lower()}
    data["devices"][2]["v2_port"] = 9443
    config = load_devices(_write(tmp_path, data))
    assert config.p1.v2_port == 8443
    assert config.p1.port is None
    assert config.p1.user_info is not None
    assert config.p1.user_info.name == "local/hwsched"
    assert config.p1.user_info.token.get_secret_value() == TOKEN.lower()
    assert not config.p1.user_info.token_is_placeholder
    assert config.batteries[0].v2_port == 9443
    for text in (repr(config.p1), str(config.p1), config.model_dump_json()):
        assert TOKEN.lower() not in text.lower()


@pytest.mark.parametrize(
    ("device", "value", "problem"),
    [
        (0, 0, "devices[0].v2_port: must be >= 1 (got 0)"),
        (0, 70000, "devices[0].v2_port: must be <= 65535 (got 70000)"),
        (0, "8443", 'devices[0].v2_port: must be a whole number (got "8443")'),
        (2, -1, "devices[2].v2_port: must be >= 1 (got -1)"),
    ],
)
def test_bad_v2_port(tmp_path: Path, device: int, value: object, problem: str) -> None:
    data = _base()
    data["devices"][device]["v2_port"] = value
    assert _refusal(_write(tmp_path, data)).endswith(problem)


@pytest.mark.parametrize(
    ("user_info", "problem"),
    [
        ({"name": "local/hwsched", "token": TOKEN[:31]}, "token: must be a HomeWizard API v2"),
        ({"name": "local/hwsched", "token": "g" * 32}, "token: must be a HomeWizard API v2"),
        ({"name": "local/hwsched"}, "token: is required"),
        ({"token": TOKEN}, "name: is required"),
        (TOKEN, "user_info: must be an object"),
    ],
)
def test_the_p1_users_token_is_checked_like_a_batterys_and_never_shown(
    tmp_path: Path, user_info: object, problem: str
) -> None:
    data = _base()
    data["devices"][0]["user_info"] = user_info
    message = _refusal(_write(tmp_path, data))
    assert "devices[0].user_info" in message
    assert problem in message
    assert TOKEN[:31] not in message
    assert "g" * 32 not in message


def test_the_simulators_devices_file_loads(tmp_path: Path) -> None:
    """What `hwsched simulate` writes: devices on 127.0.0.1 with ports, the P1's v2 port."""
    data = _base()
    for i, device in enumerate(data["devices"]):
        device["ip_address"] = "127.0.0.1"
        device["port"] = 40000 + i
    data["devices"][0]["v2_port"] = 40010
    data["simulator"] = {"seed": 7}
    config = load_devices(_write(tmp_path, data))
    assert (config.p1.port, config.p1.v2_port) == (40000, 40010)
    assert config.batteries[0].port == 40002
    assert config.batteries[0].v2_port is None


def test_message_counts_the_other_errors(tmp_path: Path) -> None:
    data = _base()
    data["devices"][1]["max_power_usage"] = -1
    data["devices"][1]["energy_capacity"] = -1
    message = _refusal(_write(tmp_path, data))
    assert message.endswith("devices[1].max_power_usage: must be > 0 (got -1) (and 1 more)")


# --- slugs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Kitchen Boiler", "kitchen_boiler"),
        ("E-bike (shed)", "e_bike_shed"),
        ("  __Boiler__  ", "boiler"),
        ("Café 2", "cafe_2"),
        ("kitchen_boiler", "kitchen_boiler"),
    ],
)
def test_slugify(name: str, slug: str) -> None:
    assert slugify(name) == slug


@pytest.mark.parametrize("name", ["", "!!!", "   ", "ßß"])
def test_slugify_refuses_names_without_letters_or_digits(name: str) -> None:
    with pytest.raises(ValueError, match="no letters or digits"):
        slugify(name)


# --- settings -----------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No HWSCHED_* variables, and a working directory without config/settings.toml."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("HWSCHED_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def _settings_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file_or_environment(clean_env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.broker.host == "localhost"
    assert settings.broker.port == 1883
    assert settings.broker.password is None
    assert settings.base_topic == "hwsched"
    assert settings.ha_discovery_prefix == "homeassistant"
    assert settings.poll_interval_s == 30
    assert settings.daily_boundary == time(6, 0)
    assert settings.switch_interval_s == 300
    assert settings.devices_file == Path("config/config_devices.json")
    assert settings.planner == "optimal"
    assert settings.log_level == "INFO"
    assert settings.device_ca_file is None  # the bundled HomeWizard CA


def test_example_settings_file_holds_the_defaults(clean_env: pytest.MonkeyPatch) -> None:
    assert load_settings(EXAMPLE_SETTINGS) == load_settings()


def test_file_beats_defaults_and_environment_beats_file(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = _settings_file(
        tmp_path,
        'base_topic = "house/energy"\npoll_interval_s = 10\n'
        '[broker]\nhost = "mqtt.file"\nport = 1884\n',
    )
    from_file = load_settings(path)
    assert from_file.base_topic == "house/energy"
    assert from_file.poll_interval_s == 10
    assert (from_file.broker.host, from_file.broker.port) == ("mqtt.file", 1884)

    clean_env.setenv("HWSCHED_BROKER__HOST", "mqtt.env")
    clean_env.setenv("HWSCHED_POLL_INTERVAL_S", "1")
    merged = load_settings(path)
    assert merged.broker.host == "mqtt.env"
    assert merged.broker.port == 1884  # the file's, not overridden
    assert merged.poll_interval_s == 1
    assert merged.base_topic == "house/energy"


def test_settings_file_from_environment_then_default_location(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "config").mkdir()
    _settings_file(tmp_path / "config", 'planner = "reference"\n')
    assert load_settings().planner == "reference"  # ./config/settings.toml

    other = _settings_file(tmp_path, 'log_level = "debug"\n')
    clean_env.setenv("HWSCHED_SETTINGS_FILE", str(other))
    settings = load_settings()
    assert settings.log_level == "DEBUG"
    assert settings.planner == "optimal"


def test_named_settings_file_must_exist(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("HWSCHED_SETTINGS_FILE", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match=r"nope\.toml: file not found$"):
        load_settings()


def test_invalid_toml_is_one_line(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _settings_file(tmp_path, "base_topic = \n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 1" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('base_topic = "hw/#"', "base_topic: must not contain the MQTT wildcards # or +"),
        ('base_topic = "/hw"', "base_topic: must not start or end with /"),
        ('base_topic = ""', "base_topic: must not be empty"),
        ('ha_discovery_prefix = "ha/+/x"', "ha_discovery_prefix: must not contain"),
        ("poll_interval_s = 0", "poll_interval_s: must be > 0 (got 0)"),
        ('daily_boundary = "25:00"', 'daily_boundary: must be a time like 06:00 (got "25:00")'),
        ('planner = "best"', "planner: must be one of 'optimal' or 'reference'"),
        ("poll_intervall_s = 5", "poll_intervall_s: unknown setting"),
        ("[broker]\nport = 0", "broker.port: must be >= 1 (got 0)"),
        ('[broker]\nhost = "mqtt://x"', "broker.host: must be a bare IP address or host name"),
    ],
)
def test_bad_settings_in_file(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, text: str, problem: str
) -> None:
    path = _settings_file(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {problem}")
    assert "\n" not in message


def test_bad_setting_from_environment_names_the_variable(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = _settings_file(tmp_path, "[broker]\nport = 1884\n")
    clean_env.setenv("HWSCHED_BROKER__PORT", "lots")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value) == (
        "environment variable HWSCHED_BROKER__PORT: "
        'broker.port: must be a whole number (got "lots")'
    )


def test_timezone_is_an_iana_zone_with_daylight_saving(clean_env: pytest.MonkeyPatch) -> None:
    tz = load_settings().tz
    winter = datetime(2025, 1, 15, 12, tzinfo=tz).utcoffset()
    summer = datetime(2025, 7, 15, 12, tzinfo=tz).utcoffset()
    assert winter is not None
    assert summer is not None
    assert (summer - winter).total_seconds() == 3600


@pytest.mark.parametrize("zone", ["Europe/Amsterdm", "+01:00", "UTC+1", "Europe", "../etc/passwd"])
def test_bad_timezone_is_refused(clean_env: pytest.MonkeyPatch, zone: str) -> None:
    clean_env.setenv("HWSCHED_TIMEZONE", zone)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith("environment variable HWSCHED_TIMEZONE: timezone: unknown")


def test_daily_boundary_accepts_toml_time(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _settings_file(tmp_path, "daily_boundary = 05:30:00\n")
    assert load_settings(path).daily_boundary == time(5, 30)


def test_broker_password_never_shown(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = "s3cret-pa55word"
    clean_env.setenv("HWSCHED_BROKER__PASSWORD", secret)
    settings = load_settings()
    assert settings.broker.password is not None
    assert settings.broker.password.get_secret_value() == secret
    assert secret not in repr(settings)
    assert secret not in str(settings)
    # An error elsewhere in the broker section does not echo the password either.
    clean_env.setenv("HWSCHED_BROKER__PORT", "99999")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert secret not in str(info.value)


def test_load_config_reads_the_devices_file_of_the_settings(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    devices = _write(tmp_path, _base())
    clean_env.setenv("HWSCHED_DEVICES_FILE", str(devices))
    config = load_config(load_settings())
    assert config.p1.device_name == "p1"


def test_unparsable_nested_environment_value(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("HWSCHED_BROKER", "{not json")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value) == "environment variable HWSCHED_BROKER: broker: must be valid JSON"


def test_device_ca_file_from_file_or_environment(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pem = (ROOT / "shared" / "homewizard" / "homewizard-ca.pem").read_text(encoding="ascii")
    ca = tmp_path / "ca.pem"
    ca.write_text(pem, encoding="ascii")
    path = _settings_file(tmp_path, f'device_ca_file = "{ca}"\n')
    assert load_settings(path).device_ca_file == ca
    other = tmp_path / "sim-ca.pem"
    other.write_text(pem, encoding="ascii")
    clean_env.setenv("HWSCHED_DEVICE_CA_FILE", str(other))
    assert load_settings(path).device_ca_file == other


def test_device_ca_file_must_exist(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "state" / "ca.pem"
    path = _settings_file(tmp_path, f'device_ca_file = "{missing}"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value) == f"{path}: device_ca_file: file not found: {missing}"
    clean_env.setenv("HWSCHED_DEVICE_CA_FILE", str(tmp_path))  # a directory
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value) == (
        f"environment variable HWSCHED_DEVICE_CA_FILE: device_ca_file: file not found: {tmp_path}"
    )
