"""The HomeWizard clients (shared/homewizard) and `hwsched pair`.

Device answers are the JSON examples of HomeWizard's API documentation
(homewizard/api-documentation, docs/v1 and docs/v2) and python-homewizard-energy's test
fixtures. HTTP goes through httpx.MockTransport; TLS through a real local HTTPS server
with throwaway CAs and device certificates made here.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.cli import main
from shared.config import BatteryConfig, P1Config, SocketConfig
from shared.homewizard import (
    ApiDisabledError,
    CertificateError,
    DeviceTimeoutError,
    DeviceUnreachableError,
    HomeWizardError,
    InvalidResponseError,
    Measurement,
    PairingTimeoutError,
    SwitchLockedError,
    UnauthorizedError,
    UnsupportedError,
    V1Client,
    V2Client,
    certificate_name,
    client_for,
    create_user,
)
from shared.homewizard.tls import bundled_ca

TOKEN = "0123456789ABCDEF0123456789ABCDEF"
NEW_TOKEN = "A1B2C3D4E5F60718293A4B5C6D7E8F90"

# --- device answers from HomeWizard's documentation -----------------------------------

P1_V1_API = {
    "product_type": "HWE-P1",
    "product_name": "P1 Meter",
    "serial": "3c39e7aabbcc",
    "firmware_version": "5.18",
    "api_version": "v1",
}
# docs/v1/measurement.mdx, "HWE-P1 (3-phase, with gas and water meter)"
P1_V1_DATA = {
    "wifi_ssid": "My Wi-Fi",
    "wifi_strength": 100,
    "smr_version": 50,
    "meter_model": "ISKRA  2M550T-101",
    "unique_id": "00112233445566778899AABBCCDDEEFF",
    "active_tariff": 2,
    "total_power_import_kwh": 13779.338,
    "total_power_import_t1_kwh": 10830.511,
    "total_power_import_t2_kwh": 2948.827,
    "total_power_export_kwh": 0,
    "total_power_export_t1_kwh": 0,
    "total_power_export_t2_kwh": 0,
    "active_power_w": -543,
    "active_power_l1_w": -676,
    "active_power_l2_w": 133,
    "active_power_l3_w": 0,
    "active_current_l1_a": -4,
    "active_current_l2_a": 2,
    "active_current_l3_a": 0,
    "voltage_sag_l1_count": 1,
    "voltage_sag_l2_count": 1,
    "voltage_sag_l3_count": 0,
    "voltage_swell_l1_count": 0,
    "voltage_swell_l2_count": 0,
    "voltage_swell_l3_count": 0,
    "any_power_fail_count": 4,
    "long_power_fail_count": 5,
    "total_gas_m3": 2569.646,
    "gas_timestamp": 210606140010,
    "gas_unique_id": "FFEEDDCCBBAA99887766554433221100",
    "active_power_average_w": 123.000,
    "montly_power_peak_w": 1111.000,
    "montly_power_peak_timestamp": 230101080010,
    "external": [
        {
            "unique_id": "FFEEDDCCBBAA99887766554433221100",
            "type": "gas_meter",
            "timestamp": 210606140010,
            "value": 2569.646,
            "unit": "m3",
        },
        {
            "unique_id": "ABCDEF0123456789ABCDEF0123456789",
            "type": "water_meter",
            "timestamp": 210606140015,
            "value": 123.456,
            "unit": "m3",
        },
    ],
}
# docs/v1/measurement.mdx, "HWE-P1 (1-phase, no gas)": tariff registers only
P1_V1_DATA_1PHASE = {
    "smr_version": 50,
    "meter_model": "ISKRA  2M550T-101",
    "wifi_ssid": "My Wi-Fi",
    "wifi_strength": 100,
    "total_power_import_t1_kwh": 10830.511,
    "total_power_import_t2_kwh": 2948.827,
    "total_power_export_t1_kwh": 1285.951,
    "total_power_export_t2_kwh": 2876.51,
    "active_power_w": -678,
    "active_power_l1_w": -676,
}
# docs/v1/measurement.mdx, "HWE-SKT-11"
SKT_V1_DATA = {
    "wifi_ssid": "My Wi-Fi",
    "wifi_strength": 100,
    "total_power_import_kwh": 30.511,
    "total_power_import_t1_kwh": 30.511,
    "total_power_export_kwh": 85.951,
    "total_power_export_t1_kwh": 85.951,
    "active_power_w": 543.312,
    "active_power_l1_w": 543.312,
    "active_voltage_v": 231.539,
    "active_current_a": 2.346,
    "active_frequency_hz": 50.005,
}
SKT_V1_API = {
    "product_type": "HWE-SKT",
    "product_name": "Energy Socket",
    "serial": "3c39e7aabbdd",
    "firmware_version": "3.03",
    "api_version": "v1",
}
SKT_STATE = {"power_on": True, "switch_lock": False, "brightness": 255}
V1_API_DISABLED = {"error": {"id": 202, "description": "API not enabled"}}
V1_SWITCH_LOCKED = {
    "error": {"id": 8, "description": "power_on cannot be turned off when switch_lock is on"}
}
V1_INVALID_VALUE = {"error": {"id": 7, "description": "brightness value limited to 0-255"}}

BAT_V2_API = {
    "product_name": "Plug-in Battery",
    "product_type": "HWE-BAT",
    "serial": "5c2fafaabbcc",
    "firmware_version": "6.00",
    "api_version": "2.0.0",
}
P1_V2_API = {
    "product_name": "P1 Meter",
    "product_type": "HWE-P1",
    "serial": "5c2fafaabbcc",
    "firmware_version": "6.00",
    "api_version": "2.0.0",
}
# docs/v2/measurement.mdx, "HWE-BAT"
BAT_V2_MEASUREMENT = {
    "energy_import_kwh": 123.456,
    "energy_export_kwh": 123.456,
    "power_w": 123,
    "voltage_l1_v": 230,
    "current_a": 1.5,
    "frequency_hz": 50,
    "state_of_charge_pct": 50,
    "cycles": 123,
}
# docs/v2/measurement.mdx, "HWE-P1 (3-phase, with gas and water meter)" (abridged: the
# counters and the external meters are left as they are)
P1_V2_MEASUREMENT = {
    "protocol_version": 50,
    "meter_model": "ISKRA  2M550T-101",
    "unique_id": "4E6576657220476F6E6E61204C657420596F7520446F776E",
    "timestamp": "2024-06-28T14:12:34",
    "tariff": 2,
    "energy_import_kwh": 13779.338,
    "energy_import_t1_kwh": 10830.511,
    "energy_import_t2_kwh": 2948.827,
    "energy_export_kwh": 0,
    "energy_export_t1_kwh": 0,
    "energy_export_t2_kwh": 0,
    "power_w": -543,
    "power_l1_w": -676,
    "power_l2_w": 133,
    "power_l3_w": 0,
    "current_a": 6,
    "current_l1_a": -4,
    "current_l2_a": 2,
    "current_l3_a": 0,
    "monthly_power_peak_timestamp": "2024-06-04T10:11:22",
    "external": [
        {
            "unique_id": "4E6576657220676F6E6E612072756E2061726F756E64",
            "type": "gas_meter",
            "timestamp": "2024-06-28T14:00:00",
            "value": 2569.646,
            "unit": "m3",
        }
    ],
}
# python-homewizard-energy tests/v2/fixtures/HWE-P1/batteries_2_3_0.json
BATTERIES_2_3 = {
    "mode": "predictive",
    "permissions": ["charge_allowed", "discharge_allowed"],
    "charge_to_full": False,
    "battery_count": 2,
    "power_w": -404,
    "target_power_w": -400,
    "max_consumption_w": 1600,
    "max_production_w": 800,
}
# docs/v2/batteries.mdx (API 2.1: no permissions yet)
BATTERIES_2_1 = {
    "mode": "zero",
    "power_w": -404,
    "target_power_w": -400,
    "max_consumption_w": 1600,
    "max_production_w": 800,
}
V2_UNAUTHORIZED = {"error": "user:unauthorized"}


# --- a scripted device behind httpx.MockTransport -------------------------------------

Answer = tuple[int, object] | type[Exception]


class Scripted:
    """Answers per (method, path) from a script; the last answer repeats. Records requests."""

    def __init__(self, script: dict[tuple[str, str], list[Answer]]) -> None:
        self.script = {key: list(answers) for key, answers in script.items()}
        self.requests: list[httpx.Request] = []

    def calls(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path == path]

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answers = self.script.get((request.method, request.url.path))
        if not answers:
            return httpx.Response(404, content=b"")
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, type):
            raise answer("scripted failure", request=request)  # type: ignore[call-arg]
        status, body = answer
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.Response(status, content=content)


@pytest.fixture
async def http_client() -> AsyncIterator[Callable[[Scripted], httpx.AsyncClient]]:
    made: list[httpx.AsyncClient] = []

    def make(device: Scripted) -> httpx.AsyncClient:
        client = httpx.AsyncClient(transport=httpx.MockTransport(device.handler))
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


def v1(device: Scripted, make: Callable[[Scripted], httpx.AsyncClient]) -> V1Client:
    return V1Client("192.0.2.10", client=make(device), backoff_s=0)


def v2(device: Scripted, **kwargs: Any) -> V2Client:
    kwargs.setdefault("product_type", "HWE-BAT")
    return V2Client(
        "192.0.2.20", TOKEN, transport=httpx.MockTransport(device.handler), backoff_s=0, **kwargs
    )


# --- API v1 ---------------------------------------------------------------------------


async def test_v1_device_info(http_client: Callable[[Scripted], httpx.AsyncClient]) -> None:
    device = Scripted({("GET", "/api"): [(200, P1_V1_API)]})
    async with v1(device, http_client) as client:
        info = await client.device_info()
    assert (info.product_type, info.serial, info.api_version) == ("HWE-P1", "3c39e7aabbcc", "v1")
    assert info.product_name == "P1 Meter"
    assert str(device.requests[0].url) == "http://192.0.2.10/api"


async def test_v1_p1_measurement(http_client: Callable[[Scripted], httpx.AsyncClient]) -> None:
    device = Scripted({("GET", "/api/v1/data"): [(200, P1_V1_DATA)]})
    async with v1(device, http_client) as client:
        m = await client.measurement()
    assert m.power_w == -543  # negative: exporting
    assert m.energy_import_kwh == 13779.338
    assert m.energy_export_kwh == 0
    assert m.current_a == 6  # |-4| + |2| + |0|, API v2's definition
    assert m.wifi_strength_pct == 100
    assert (m.voltage_v, m.state_of_charge_pct, m.cycles) == (None, None, None)


async def test_v1_p1_tariff_registers_only_are_summed(
    http_client: Callable[[Scripted], httpx.AsyncClient],
) -> None:
    device = Scripted({("GET", "/api/v1/data"): [(200, P1_V1_DATA_1PHASE)]})
    async with v1(device, http_client) as client:
        m = await client.measurement()
    assert m.power_w == -678
    assert m.energy_import_kwh == pytest.approx(10830.511 + 2948.827)
    assert m.energy_export_kwh == pytest.approx(1285.951 + 2876.51)


async def test_v1_socket_measurement_and_state(
    http_client: Callable[[Scripted], httpx.AsyncClient],
) -> None:
    device = Scripted(
        {
            ("GET", "/api/v1/data"): [(200, SKT_V1_DATA)],
            ("GET", "/api/v1/state"): [(200, SKT_STATE)],
        }
    )
    async with v1(device, http_client) as client:
        m = await client.measurement()
        state = await client.socket_state()
    assert m == Measurement(
        power_w=543.312,
        energy_import_kwh=30.511,
        energy_export_kwh=85.951,
        voltage_v=231.539,
        current_a=2.346,
        wifi_strength_pct=100,
    )
    assert (state.power_on, state.switch_lock, state.brightness) == (True, False, 255)


async def test_v1_switch_sends_only_what_changes_then_reads_state(
    http_client: Callable[[Scripted], httpx.AsyncClient],
) -> None:
    device = Scripted(
        {
            ("PUT", "/api/v1/state"): [(200, {"power_on": False})],
            ("GET", "/api/v1/state"): [
                (200, {"power_on": False, "switch_lock": False, "brightness": 255})
            ],
        }
    )
    async with v1(device, http_client) as client:
        state = await client.set_socket_state(power_on=False)
    (put,) = device.calls("PUT", "/api/v1/state")
    assert json.loads(put.content) == {"power_on": False}
    assert state.power_on is False
    assert state.brightness == 255


async def test_v1_switch_off_while_locked(
    http_client: Callable[[Scripted], httpx.AsyncClient],
) -> None:
    device = Scripted({("PUT", "/api/v1/state"): [(400, V1_SWITCH_LOCKED)]})
    async with v1(device, http_client) as client:
        with pytest.raises(SwitchLockedError) as caught:
            await client.set_socket_state(power_on=False)
    assert caught.value.code == "8"
    assert "switch_lock" in str(caught.value)
    assert isinstance(caught.value, InvalidResponseError)
    assert len(device.requests) == 1  # neither retried nor followed by a GET


async def test_v1_invalid_value_error_keeps_its_id(
    http_client: Callable[[Scripted], httpx.AsyncClient],
) -> None:
    device = Scripted({("PUT", "/api/v1/state"): [(400, V1_INVALID_VALUE)]})
    async with v1(device, http_client) as client:
        with pytest.raises(InvalidResponseError) as caught:
            await client.set_socket_state(switch_lock=True)
    assert not isinstance(caught.value, SwitchLockedError)
    assert caught.value.code == "7"
    assert "brightness value limited" in caught.value.message


async def test_v1_set_nothing_is_refused(
    http_client: Callable[[Scripted], httpx.AsyncClient],
) -> None:
    device = Scripted({})
    async with v1(device, http_client) as client:
        with pytest.raises(ValueError, match="power_on"):
            await client.set_socket_state()
    assert device.requests == []


async def test_v1_api_disabled(http_client: Callable[[Scripted], httpx.AsyncClient]) -> None:
    device = Scripted({("GET", "/api/v1/data"): [(403, V1_API_DISABLED)]})
    async with v1(device, http_client) as client:
        with pytest.raises(ApiDisabledError) as caught:
            await client.measurement()
    assert caught.value.host == "192.0.2.10"
    assert "Local API" in caught.value.message
    assert len(device.requests) == 1  # a refusal is not retried


async def test_v1_missing_endpoint_is_unsupported(
    http_client: Callable[[Scripted], httpx.AsyncClient],
) -> None:
    device = Scripted({("GET", "/api/v1/state"): [(404, b"Not Found")]})
    async with v1(device, http_client) as client:
        with pytest.raises(UnsupportedError):
            await client.socket_state()


async def test_v1_timeouts_are_retried_then_raised(
    http_client: Callable[[Scripted], httpx.AsyncClient],
) -> None:
    device = Scripted({("GET", "/api/v1/data"): [httpx.ReadTimeout]})
    async with v1(device, http_client) as client:
        with pytest.raises(DeviceTimeoutError) as caught:
            await client.measurement()
    assert len(device.requests) == 3  # retries=2
    assert "3 attempts" in caught.value.message


async def test_v1_server_error_then_success(
    http_client: Callable[[Scripted], httpx.AsyncClient],
) -> None:
    device = Scripted({("GET", "/api/v1/data"): [(500, b"oops"), (200, SKT_V1_DATA)]})
    async with v1(device, http_client) as client:
        m = await client.measurement()
    assert m.power_w == 543.312
    assert len(device.requests) == 2


async def test_v1_server_errors_exhaust_the_retries(
    http_client: Callable[[Scripted], httpx.AsyncClient],
) -> None:
    internal = {"error": {"id": 901, "description": "internal error"}}
    device = Scripted({("GET", "/api/v1/data"): [(500, internal)]})
    async with v1(device, http_client) as client:
        with pytest.raises(InvalidResponseError) as caught:
            await client.measurement()
    assert len(device.requests) == 3
    assert caught.value.code == "901"
    assert "after 3 attempts" in caught.value.message


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<html><body>404</body></html>", id="garbage"),
        pytest.param(json.dumps(SKT_V1_DATA).encode()[:60], id="truncated"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"active_power_w": NaN}', id="nan"),
    ],
)
async def test_v1_unreadable_answers(
    http_client: Callable[[Scripted], httpx.AsyncClient], body: bytes
) -> None:
    device = Scripted({("GET", "/api/v1/data"): [(200, body)]})
    async with v1(device, http_client) as client:
        with pytest.raises(InvalidResponseError, match="GET /api/v1/data"):
            await client.measurement()


@pytest.mark.parametrize(
    ("path", "answer", "field"),
    [
        ("/api/v1/data", {**SKT_V1_DATA, "active_power_w": "543"}, "active_power_w"),
        ("/api/v1/data", {**SKT_V1_DATA, "total_power_import_kwh": True}, "total_power_import"),
        ("/api/v1/state", {**SKT_STATE, "power_on": 1}, "power_on"),
        ("/api/v1/state", {"brightness": 255}, "power_on"),
        ("/api", {**P1_V1_API, "serial": 12}, "serial"),
    ],
)
async def test_v1_wrong_types_name_the_field(
    http_client: Callable[[Scripted], httpx.AsyncClient],
    path: str,
    answer: dict[str, object],
    field: str,
) -> None:
    device = Scripted({("GET", path): [(200, answer)]})
    async with v1(device, http_client) as client:
        call = {
            "/api/v1/data": client.measurement,
            "/api/v1/state": client.socket_state,
            "/api": client.device_info,
        }[path]
        with pytest.raises(InvalidResponseError, match=field):
            await call()


async def test_v1_extra_fields_ignored_missing_fields_none(
    http_client: Callable[[Scripted], httpx.AsyncClient],
) -> None:
    answer = {"active_power_w": 12.5, "a_field_from_2030": {"nested": [1, 2]}, "wifi_ssid": "x"}
    device = Scripted(
        {
            ("GET", "/api/v1/data"): [(200, answer)],
            ("GET", "/api"): [(200, {**SKT_V1_API, "new_info": 1, "firmware_version": None})],
        }
    )
    async with v1(device, http_client) as client:
        m = await client.measurement()
        info = await client.device_info()
    assert m == Measurement(power_w=12.5)
    assert info.firmware_version is None


async def test_v1_put_is_not_retried_after_a_read_timeout(
    http_client: Callable[[Scripted], httpx.AsyncClient],
) -> None:
    device = Scripted(
        {("PUT", "/api/v1/state"): [httpx.ReadTimeout], ("GET", "/api/v1/state"): [(200, {})]}
    )
    async with v1(device, http_client) as client:
        with pytest.raises(DeviceTimeoutError, match="may have acted"):
            await client.set_socket_state(power_on=True)
    assert [r.method for r in device.requests] == ["PUT"]


async def test_v1_put_is_retried_when_the_connection_failed(
    http_client: Callable[[Scripted], httpx.AsyncClient],
) -> None:
    device = Scripted(
        {
            ("PUT", "/api/v1/state"): [httpx.ConnectError, (200, {"power_on": True})],
            ("GET", "/api/v1/state"): [(200, SKT_STATE)],
        }
    )
    async with v1(device, http_client) as client:
        state = await client.set_socket_state(power_on=True)
    assert state.power_on is True
    assert [r.method for r in device.requests] == ["PUT", "PUT", "GET"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_v1_connection_refused_is_unreachable() -> None:
    async with V1Client("127.0.0.1", _closed_port(), retries=1, backoff_s=0) as client:
        with pytest.raises(DeviceUnreachableError, match="cannot connect"):
            await client.device_info()


# --- API v2 ---------------------------------------------------------------------------


async def test_v2_headers_and_trust_on_first_use() -> None:
    device = Scripted(
        {
            ("GET", "/api"): [(200, BAT_V2_API)],
            ("GET", "/api/measurement"): [(200, BAT_V2_MEASUREMENT)],
        }
    )
    async with v2(device) as client:
        assert client.serial is None
        await client.measurement()
        await client.measurement()
        assert client.serial == "5c2fafaabbcc"
    # the serial unknown, the first request was GET /api, and only once
    paths = [r.url.path for r in device.requests]
    assert paths == ["/api", "/api/measurement", "/api/measurement"]
    for request in device.requests:
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        assert request.headers["x-api-version"] == "2"
        assert request.url.scheme == "https"


async def test_v2_battery_measurement() -> None:
    device = Scripted(
        {
            ("GET", "/api"): [(200, BAT_V2_API)],
            ("GET", "/api/measurement"): [(200, BAT_V2_MEASUREMENT)],
        }
    )
    async with v2(device, serial="5c2fafaabbcc") as client:
        m = await client.measurement()
    assert m == Measurement(
        power_w=123,  # > 0: charging
        energy_import_kwh=123.456,
        energy_export_kwh=123.456,
        state_of_charge_pct=50,
        voltage_v=230,  # from voltage_l1_v
        current_a=1.5,
        cycles=123,
    )
    assert [r.url.path for r in device.requests] == ["/api/measurement"]  # serial known


async def test_v2_p1_measurement() -> None:
    device = Scripted(
        {
            ("GET", "/api"): [(200, P1_V2_API)],
            ("GET", "/api/measurement"): [(200, P1_V2_MEASUREMENT)],
        }
    )
    async with v2(device, product_type="HWE-P1") as client:
        m = await client.measurement()
    assert (m.power_w, m.energy_import_kwh, m.energy_export_kwh, m.current_a) == (
        -543,
        13779.338,
        0,
        6,
    )
    assert m.state_of_charge_pct is None


async def test_v2_batteries_current_and_older_firmware() -> None:
    device = Scripted(
        {
            ("GET", "/api"): [(200, P1_V2_API)],
            ("GET", "/api/batteries"): [(200, BATTERIES_2_3), (200, BATTERIES_2_1)],
        }
    )
    async with v2(device, product_type="HWE-P1") as client:
        now = await client.batteries()
        old = await client.batteries()
    assert now.mode == "predictive"
    assert now.known_mode == "predictive"
    assert now.permissions == ["charge_allowed", "discharge_allowed"]
    assert (now.charge_to_full, now.battery_count) == (False, 2)
    assert (now.power_w, now.target_power_w) == (-404, -400)
    assert (now.max_consumption_w, now.max_production_w) == (1600, 800)
    assert old.mode == "zero"
    assert (old.permissions, old.charge_to_full, old.battery_count) == (None, None, None)


async def test_v2_unknown_battery_mode_is_kept() -> None:
    device = Scripted(
        {
            ("GET", "/api"): [(200, P1_V2_API)],
            ("GET", "/api/batteries"): [(200, {**BATTERIES_2_3, "mode": "solar_first"})],
        }
    )
    async with v2(device, product_type="HWE-P1") as client:
        state = await client.batteries()
    assert state.mode == "solar_first"
    assert state.known_mode is None


async def test_v2_set_batteries() -> None:
    answer = {**BATTERIES_2_3, "mode": "zero", "permissions": ["charge_allowed"]}
    device = Scripted(
        {("GET", "/api"): [(200, P1_V2_API)], ("PUT", "/api/batteries"): [(200, answer)]}
    )
    async with v2(device, product_type="HWE-P1") as client:
        state = await client.set_batteries(mode="zero", permissions=["charge_allowed"])
    (put,) = device.calls("PUT", "/api/batteries")
    assert json.loads(put.content) == {"mode": "zero", "permissions": ["charge_allowed"]}
    assert (state.mode, state.permissions) == ("zero", ["charge_allowed"])


async def test_v2_to_full_with_permissions_is_refused_before_sending() -> None:
    device = Scripted({})
    async with v2(device, product_type="HWE-P1") as client:
        with pytest.raises(ValueError, match="to_full"):
            await client.set_batteries(mode="to_full", permissions=["charge_allowed"])
        with pytest.raises(ValueError, match="mode and/or permissions"):
            await client.set_batteries()
    assert device.requests == []


async def test_v2_put_is_not_retried_after_a_read_timeout() -> None:
    device = Scripted(
        {("GET", "/api"): [(200, P1_V2_API)], ("PUT", "/api/batteries"): [httpx.ReadTimeout]}
    )
    async with v2(device, product_type="HWE-P1") as client:
        with pytest.raises(DeviceTimeoutError):
            await client.set_batteries(mode="standby")
    assert len(device.calls("PUT", "/api/batteries")) == 1


async def test_v2_unauthorized() -> None:
    device = Scripted({("GET", "/api"): [(401, V2_UNAUTHORIZED)]})
    async with v2(device) as client:
        with pytest.raises(UnauthorizedError, match="hwsched pair"):
            await client.device_info()
    assert len(device.requests) == 1


async def test_v2_unknown_error_code_is_kept() -> None:
    code = "json:parameter-invalid-type:mode"
    device = Scripted(
        {("GET", "/api"): [(200, P1_V2_API)], ("PUT", "/api/batteries"): [(400, {"error": code})]}
    )
    async with v2(device, product_type="HWE-P1") as client:
        with pytest.raises(InvalidResponseError) as caught:
            await client.set_batteries(mode="zero")
    assert caught.value.code == code
    assert code in str(caught.value)


async def test_v2_missing_endpoint_is_unsupported() -> None:
    device = Scripted(
        {
            ("GET", "/api"): [(200, BAT_V2_API)],
            ("GET", "/api/batteries"): [(404, {"error": "request:not-found"})],
        }
    )
    async with v2(device) as client:
        with pytest.raises(UnsupportedError):
            await client.batteries()


async def test_v2_wrong_device_type_is_refused() -> None:
    device = Scripted({("GET", "/api"): [(200, P1_V2_API)]})
    async with v2(device, product_type="HWE-BAT") as client:
        with pytest.raises(InvalidResponseError, match="not the expected HWE-BAT"):
            await client.device_info()
    assert client.serial is None  # nothing pinned


async def test_v2_wrong_types_name_the_field() -> None:
    device = Scripted(
        {
            ("GET", "/api"): [(200, BAT_V2_API)],
            ("GET", "/api/measurement"): [(200, {**BAT_V2_MEASUREMENT, "cycles": "123"})],
        }
    )
    async with v2(device) as client:
        with pytest.raises(InvalidResponseError, match="cycles: must be a whole number"):
            await client.measurement()


async def test_tokens_never_in_errors_or_reprs() -> None:
    device = Scripted(
        {
            ("GET", "/api"): [(200, P1_V2_API)],
            ("GET", "/api/measurement"): [(401, V2_UNAUTHORIZED)],
            ("GET", "/api/batteries"): [(400, {"error": f"user:{TOKEN}"})],  # echoed back
            ("PUT", "/api/batteries"): [httpx.ReadTimeout],
        }
    )
    seen: list[HomeWizardError] = []
    async with v2(device, product_type="HWE-P1") as client:
        for call in (
            client.measurement,
            client.batteries,
            lambda: client.set_batteries(mode="zero"),
        ):
            with pytest.raises(HomeWizardError) as caught:
                await call()
            seen.append(caught.value)
        texts = [repr(client), str(client)]
    for err in seen:
        texts += [str(err), repr(err), err.message, str(getattr(err, "code", ""))]
    assert [type(e) for e in seen] == [UnauthorizedError, InvalidResponseError, DeviceTimeoutError]
    assert all(TOKEN not in text for text in texts)
    assert "user:***" in str(seen[1])


def _ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={})


def test_v2_refuses_a_token_that_would_break_the_header() -> None:
    with pytest.raises(ValueError, match="token") as caught:
        V2Client("192.0.2.20", "abc\r\nX-Evil: 1", transport=httpx.MockTransport(_ok))
    assert "Evil" not in str(caught.value)


def test_bundled_ca_and_certificate_names() -> None:
    context = ssl.create_default_context(cadata=bundled_ca())
    (ca,) = context.get_ca_certs()
    assert (("commonName", "Appliance Access CA"),) in ca["subject"]
    assert certificate_name("HWE-P1", "5C2FAFAABBCC") == "appliance/p1dongle/5c2fafaabbcc"
    assert certificate_name("HWE-BAT", "abc123") == "appliance/battery/abc123"
    assert certificate_name("SDM630-wifi", "abc123") == "appliance/energymeter/abc123"


async def test_client_for_each_device_type() -> None:
    p1 = P1Config(device_name="P1", ip_address="192.0.2.1", device_type="HWE-P1")
    sock = SocketConfig(
        device_name="Boiler",
        ip_address="192.0.2.2",
        port=8080,
        device_type="HWE-SKT",
        max_power_usage=2000,
        energy_capacity=5000,
    )
    bat = BatteryConfig.model_validate(
        {
            "device_name": "Battery",
            "ip_address": "192.0.2.3",
            "device_type": "HWE-BAT",
            "max_power_usage": 800,
            "energy_capacity": 2688,
            "user_info": {"name": "local/hwsched", "token": TOKEN},
        }
    )
    async with client_for(p1) as a, client_for(sock) as b, client_for(bat) as c:
        assert isinstance(a, V1Client)
        assert isinstance(b, V1Client)
        assert repr(b) == "V1Client('http://192.0.2.2:8080')"
        assert isinstance(c, V2Client)
        assert TOKEN not in repr(c)


# --- TLS: a real HTTPS device with throwaway certificates ------------------------------


@dataclass
class Pki:
    ca: Path  # the CA the client trusts
    leaves: dict[str, tuple[Path, Path]]  # name → (certificate, key)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool,
    dns: str | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if dns:  # like real devices: a DNS name besides the appliance/... commonName
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    out = tmp_path_factory.mktemp("pki")
    ca_key, other_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = _certificate("Test Appliance Access CA", ca_key, None, ca=True)
    other = _certificate("Some Other CA", other_key, None, ca=True)
    (out / "ca.pem").write_bytes(_pem(ca))
    leaves: dict[str, tuple[Path, Path]] = {}
    for label, cn, issuer in [
        ("battery", "appliance/battery/abc123", (ca.subject, ca_key)),
        ("other-ca", "appliance/battery/abc123", (other.subject, other_key)),
        ("other-serial", "appliance/battery/def456", (ca.subject, ca_key)),
        ("p1", "appliance/p1dongle/abc123", (ca.subject, ca_key)),
    ]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(cn, key, issuer, ca=False, dns=cn.rsplit("/", 1)[1] + ".local")
        (out / f"{label}.pem").write_bytes(_pem(cert))
        (out / f"{label}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        leaves[label] = (out / f"{label}.pem", out / f"{label}.key")
    return Pki(ca=out / "ca.pem", leaves=leaves)


@dataclass
class HttpsDevice:
    """A tiny HTTPS server in a thread; answers from a script like `Scripted`."""

    port: int
    script: dict[tuple[str, str], list[tuple[int, object]]]
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
def https_device(pki: Pki) -> Iterator[Callable[..., HttpsDevice]]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(leaf: str, script: dict[tuple[str, str], list[tuple[int, object]]]) -> HttpsDevice:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*pki.leaves[leaf])
        device = HttpsDevice(0, {k: list(v) for k, v in script.items()})

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                device.requests.append((self.command, self.path, dict(self.headers), body))
                answers = device.script.get((self.command, self.path)) or [(404, {})]
                status, payload = answers.pop(0) if len(answers) > 1 else answers[0]
                content = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(content)

            def do_GET(self) -> None:
                self._answer()

            def do_PUT(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # refused handshakes are the point of some tests

        server = Server(("127.0.0.1", 0), Handler)
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
        device.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return device

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


BATTERY_TLS_SCRIPT: dict[tuple[str, str], list[tuple[int, object]]] = {
    ("GET", "/api"): [(200, {**BAT_V2_API, "serial": "abc123"})],
    ("GET", "/api/measurement"): [(200, BAT_V2_MEASUREMENT)],
}


def tls_client(port: int, ca: Path, **kwargs: Any) -> V2Client:
    return V2Client("127.0.0.1", TOKEN, port, ca_file=ca, retries=0, **kwargs)


async def test_tls_right_ca_and_serial(pki: Pki, https_device: Callable[..., HttpsDevice]) -> None:
    device = https_device("battery", BATTERY_TLS_SCRIPT)
    async with tls_client(device.port, pki.ca, product_type="HWE-BAT", serial="ABC123") as c:
        m = await c.measurement()
    assert m.state_of_charge_pct == 50
    ((method, path, headers, _),) = device.requests
    assert (method, path) == ("GET", "/api/measurement")
    assert headers["Authorization"] == f"Bearer {TOKEN}"


async def test_tls_trust_on_first_use_pins_the_serial(
    pki: Pki, https_device: Callable[..., HttpsDevice]
) -> None:
    device = https_device("battery", BATTERY_TLS_SCRIPT)
    async with tls_client(device.port, pki.ca, product_type="HWE-BAT") as client:
        info = await client.device_info()
        await client.measurement()
    assert info.serial == "abc123"
    assert client.serial == "abc123"
    assert [r[1] for r in device.requests] == ["/api", "/api/measurement"]


async def test_tls_other_ca_is_refused_before_anything_is_sent(
    pki: Pki, https_device: Callable[..., HttpsDevice]
) -> None:
    device = https_device("other-ca", BATTERY_TLS_SCRIPT)
    async with tls_client(device.port, pki.ca, product_type="HWE-BAT") as client:
        with pytest.raises(CertificateError, match="not trusted"):
            await client.device_info()
    assert device.requests == []


async def test_tls_other_serial_is_refused_before_anything_is_sent(
    pki: Pki, https_device: Callable[..., HttpsDevice]
) -> None:
    device = https_device("other-serial", BATTERY_TLS_SCRIPT)
    async with tls_client(device.port, pki.ca, product_type="HWE-BAT", serial="abc123") as c:
        with pytest.raises(CertificateError, match="appliance/battery/abc123") as caught:
            await c.measurement()
    assert "appliance/battery/def456" in caught.value.message
    assert device.requests == []  # the token never left


async def test_tls_other_device_type_is_refused(
    pki: Pki, https_device: Callable[..., HttpsDevice]
) -> None:
    device = https_device("p1", BATTERY_TLS_SCRIPT)
    async with tls_client(device.port, pki.ca, product_type="HWE-BAT") as client:
        with pytest.raises(CertificateError, match="p1dongle"):
            await client.device_info()
    assert device.requests == []


async def test_tls_serial_must_match_the_certificate(
    pki: Pki, https_device: Callable[..., HttpsDevice]
) -> None:
    device = https_device("battery", {("GET", "/api"): [(200, BAT_V2_API)]})  # 5c2f...
    async with tls_client(device.port, pki.ca, product_type="HWE-BAT") as client:
        with pytest.raises(InvalidResponseError, match="certificate names abc123"):
            await client.device_info()
    assert client.serial is None


async def test_tls_bundled_ca_refuses_a_test_certificate(
    https_device: Callable[..., HttpsDevice],
) -> None:
    device = https_device("battery", BATTERY_TLS_SCRIPT)
    async with V2Client("127.0.0.1", TOKEN, device.port, retries=0) as client:
        with pytest.raises(CertificateError):
            await client.device_info()
    assert device.requests == []


PAIRING_SCRIPT: dict[tuple[str, str], list[tuple[int, object]]] = {
    ("POST", "/api/user"): [
        (403, {"error": "user:creation-not-enabled"}),
        (403, {"error": "user:creation-not-enabled"}),
        (200, {"token": NEW_TOKEN, "name": "local/hwsched"}),
    ],
    ("GET", "/api"): [(200, {**BAT_V2_API, "serial": "abc123"})],
}


async def test_pairing_waits_for_the_button(
    pki: Pki, https_device: Callable[..., HttpsDevice]
) -> None:
    device = https_device("battery", PAIRING_SCRIPT)
    prompts: list[str] = []
    token = await create_user(
        "127.0.0.1",
        "hwsched",
        port=device.port,
        ca_file=pki.ca,
        timeout_s=5,
        poll_interval_s=0.01,
        on_waiting=lambda: prompts.append("press"),
    )
    assert token == NEW_TOKEN
    assert prompts == ["press"]
    assert len(device.requests) == 3
    for method, path, headers, body in device.requests:
        assert (method, path) == ("POST", "/api/user")
        assert json.loads(body) == {"name": "local/hwsched"}
        assert headers["X-Api-Version"] == "2"
        assert "Authorization" not in headers


async def test_pairing_times_out_without_the_button(
    pki: Pki, https_device: Callable[..., HttpsDevice]
) -> None:
    script = {("POST", "/api/user"): [(403, {"error": "user:creation-not-enabled"})]}
    device = https_device("battery", script)
    with pytest.raises(PairingTimeoutError, match="button"):
        await create_user(
            "127.0.0.1",
            "local/hwsched",
            port=device.port,
            ca_file=pki.ca,
            timeout_s=0.3,
            poll_interval_s=0.05,
        )
    assert len(device.requests) >= 2


async def test_pairing_refuses_a_bad_name_before_asking() -> None:
    with pytest.raises(ValueError, match="invalid user name"):
        await create_user("192.0.2.1", "no such chars!", transport=httpx.MockTransport(_ok))


def test_cli_pair_prints_the_token_once_and_where_it_goes(
    pki: Pki, https_device: Callable[..., HttpsDevice], capsys: pytest.CaptureFixture[str]
) -> None:
    script = {**PAIRING_SCRIPT, ("POST", "/api/user"): PAIRING_SCRIPT["POST", "/api/user"][1:]}
    device = https_device("battery", script)  # one 403: the CLI polls every 2 s
    argv = ["pair", "127.0.0.1", "--port", str(device.port), "--ca-file", str(pki.ca)]
    assert main([*argv, "--timeout", "5"]) == 0
    out, err = capsys.readouterr()
    assert "Press the button" in err
    assert NEW_TOKEN not in err
    assert out.count(NEW_TOKEN) == 2  # the token line and the user_info snippet
    assert "devices[].user_info.token" in out
    assert '"user_info": {"name": "local/hwsched", "token": "' + NEW_TOKEN in out
    assert "HWE-BAT" in out  # the new token was tried: GET /api
    assert device.requests[-1][2]["Authorization"] == f"Bearer {NEW_TOKEN}"


def test_cli_pair_unreachable_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["pair", "127.0.0.1", "--port", str(_closed_port()), "--timeout", "2"])
    assert code == 2
    _, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("hwsched pair:")]
    assert len(lines) == 1
    assert "cannot connect" in lines[0]
