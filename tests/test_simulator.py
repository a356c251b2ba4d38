"""The simulated house: physics (pure), and its servers over real HTTP/HTTPS on 127.0.0.1.

The servers are exercised with httpx directly (not shared/homewizard), trusting the
simulator's CA and checking the device's certificate name through SNI.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import struct
import sys
import time as systime
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from services.simulator import flatbuf, weather
from services.simulator.house import (
    CloudySky,
    DeviceOverride,
    DrawEvent,
    House,
    HouseOptions,
    SwitchLockedError,
    share_power,
)
from services.simulator.server import Simulator, serial_for
from services.simulator.settings import DeviceSettings, FaultSettings, SimulatorSettings
from services.simulator.tls import client_context
from shared.clock import ManualClock
from shared.config import DevicesConfig

ROOT = Path(__file__).resolve().parents[1]
BAT1_TOKEN = "AB" * 16
BAT2_TOKEN = "cd" * 16
NOON = datetime(2024, 6, 21, 10, 0, tzinfo=UTC)  # 12:00 in Amsterdam
NIGHT = datetime(2024, 6, 21, 22, 0, tzinfo=UTC)  # midnight in Amsterdam
QUARTZ_VARIABLES = [
    "temperature_2m",
    "relative_humidity_2m",
    "dew_point_2m",
    "precipitation",
    "surface_pressure",
    "cloud_cover",
    "cloud_cover_low",
    "cloud_cover_mid",
    "cloud_cover_high",
    "wind_speed_10m",
    "wind_direction_10m",
    "is_day",
    "shortwave_radiation",
    "direct_radiation",
    "diffuse_radiation",
    "direct_normal_irradiance",
    "terrestrial_radiation",
]


def devices(*, batteries: int = 1, sockets: int = 2) -> DevicesConfig:
    items: list[dict[str, Any]] = [
        {"device_name": "P1 meter", "device_type": "HWE-P1", "ip_address": "192.0.2.10"}
    ]
    for i in range(sockets):
        items.append(
            {
                "device_name": f"Boiler {i + 1}",
                "device_type": "HWE-SKT",
                "ip_address": "192.0.2.11",
                "max_power_usage": 2000,
                "energy_capacity": 2000 * (i + 1),
            }
        )
    for i, token in enumerate([BAT1_TOKEN, BAT2_TOKEN][:batteries]):
        items.append(
            {
                "device_name": f"Battery {i + 1}",
                "device_type": "HWE-BAT",
                "ip_address": "192.0.2.14",
                "max_power_usage": 800 * (i + 1),
                "energy_capacity": 2700,
                "user_info": {"name": "local/hwsched", "token": token},
            }
        )
    panel = {"latitude": 52.09, "longitude": 5.12, "capacity_kwp": 10.0, "tilt": 35}
    return DevicesConfig.model_validate(
        {
            "devices": items,
            "solar panels": [{"name": "Roof", "quartz_parameters": panel | {"orientation": 180}}],
        }
    )


def house(
    cfg: DevicesConfig | None = None,
    start: datetime = NOON,
    overrides: dict[str, DeviceOverride] | None = None,
    **options: Any,
) -> House:
    opts: dict[str, Any] = {"cloudiness": 0.0, "draws": ()} | options
    return House(cfg or devices(), start, HouseOptions(**opts), overrides)


# --- physics -------------------------------------------------------------------------


def test_socket_fills_then_drops_below_ten_percent() -> None:
    h = house(
        devices(batteries=0, sockets=1),
        start=NIGHT,
        overrides={"Boiler 1": DeviceOverride(initial_fraction=0.9)},
        store_loss_per_h=0.0,
    )
    s = h.sockets["Boiler 1"]
    h.advance_to(NIGHT + timedelta(minutes=1))
    assert s.power_w == 2000  # heating
    h.advance_to(NIGHT + timedelta(minutes=6))  # 200 Wh needed at 2 kW: 6 min
    assert s.full
    assert s.stored_wh == pytest.approx(2000)
    assert 0 < s.power_w < 0.1 * 2000  # thermostat: a few % standby
    assert 0.02 * 2000 <= s.power_w <= 0.05 * 2000
    assert s.import_wh == pytest.approx(200, abs=1)  # its counter: the 200 Wh it drew
    (full,) = h.events_since(0)  # the moment it became full: 6 min in, within a step
    assert (full["socket"], full["event"]) == ("Boiler 1", "full")
    at = datetime.fromisoformat(full["time"])
    assert abs((at - (NIGHT + timedelta(minutes=6))).total_seconds()) <= 60


def test_stores_lose_energy_over_the_day() -> None:
    showers = (DrawEvent(time(7, 0), 30, 0.35), DrawEvent(time(19, 0), 60, 0.30))
    start = datetime(2024, 6, 20, 22, 0, tzinfo=UTC)  # local midnight
    h = house(
        devices(batteries=0, sockets=1),
        start=start,
        overrides={"Boiler 1": DeviceOverride(initial_fraction=1.0, power_on=False)},
        draws=showers,
        store_loss_per_h=0.005,
    )
    s = h.sockets["Boiler 1"]
    h.advance_to(start + timedelta(hours=6))  # before the showers: heat loss only
    assert 0.96 * 2000 < s.stored_wh < 2000
    h.advance_to(start + timedelta(hours=24))
    # 35 % + 30 % used by showers, plus about 0.5 %/h of heat loss
    assert 0.2 * 2000 < s.stored_wh < 0.35 * 2000
    assert s.power_w == 0
    assert s.import_wh == 0


def test_thermostat_reheats_after_hot_water_use() -> None:
    start = datetime(2024, 6, 21, 4, 50, tzinfo=UTC)  # 06:50 local
    h = house(
        devices(batteries=0, sockets=1),
        start=start,
        overrides={"Boiler 1": DeviceOverride(initial_fraction=1.0)},
        draws=(DrawEvent(time(7, 0), 30, 0.35),),
    )
    s = h.sockets["Boiler 1"]
    h.advance_to(start + timedelta(minutes=5))
    assert s.power_w < 200  # full: standby
    seen = []
    for minute in range(10, 41):  # the shower: the thermostat cuts in and out
        h.advance_to(start + timedelta(minutes=minute))
        seen.append(s.power_w)
        assert s.stored_wh > 0.9 * 2000
    assert 2000 in seen
    assert min(seen) < 200
    h.advance_to(start + timedelta(hours=2))
    assert s.full
    assert s.power_w < 200


def test_battery_zero_mode_keeps_the_grid_at_zero() -> None:
    h = house(devices(batteries=1, sockets=0), overrides={"Battery 1": DeviceOverride(0.5)})
    b = h.batteries["Battery 1"]
    h.advance_to(NOON + timedelta(minutes=10))  # clear noon: 10 kWp >> 800 W + base load
    assert b.power_w == pytest.approx(800)  # charges at most its power
    assert h.meter.power_w < 0  # the rest is exported
    night = house(devices(batteries=1, sockets=0), start=NIGHT)
    nb = night.batteries["Battery 1"]
    night.advance_to(NIGHT + timedelta(minutes=10))
    assert nb.power_w < 0  # discharges into the base load
    assert night.meter.power_w == pytest.approx(0, abs=1e-6)


def test_battery_standby_to_full_and_permissions() -> None:
    h = house(devices(batteries=1, sockets=0), start=NIGHT)
    b = h.batteries["Battery 1"]
    h.set_battery_control(mode="standby")
    h.advance_to(NIGHT + timedelta(minutes=5))
    assert b.power_w == 0
    assert h.meter.power_w > 0
    assert h.battery_group()["permissions"] == []
    # to_full: full power from the grid at night, then back to zero once full
    h.set_battery_control(mode="to_full")
    h.advance_to(NIGHT + timedelta(minutes=10))
    assert b.power_w == pytest.approx(800)
    assert h.meter.power_w > 800
    when = NIGHT + timedelta(minutes=10)
    while h.control.mode == "to_full" and when < NIGHT + timedelta(hours=4):
        when += timedelta(seconds=10)
        h.advance_to(when)
    assert b.full  # the step it got full in, back to zero with both permissions (docs/v2)
    assert h.control.mode == "zero"
    assert h.battery_group()["permissions"] == ["charge_allowed", "discharge_allowed"]
    h.advance_to(NIGHT + timedelta(hours=4))
    # charge only: no discharge into the night's deficit
    h.set_battery_control(permissions=["charge_allowed"])
    h.advance_to(NIGHT + timedelta(hours=4, minutes=5))
    assert h.control.mode == "zero"
    assert b.power_w == 0
    # discharge only: no charging from a clear noon's surplus
    day = house(devices(batteries=1, sockets=0))
    day.set_battery_control(permissions=["discharge_allowed"])
    day.advance_to(NOON + timedelta(minutes=5))
    assert day.batteries["Battery 1"].power_w == 0
    assert day.meter.power_w < 0
    with pytest.raises(ValueError, match="unknown permission"):
        day.set_battery_control(permissions=["fly"])


def test_batteries_share_fairly_and_spill_over() -> None:
    assert share_power(900, [800, 1600], [800, 1600]) == pytest.approx([300, 600])
    assert share_power(2000, [100, 1600], [800, 1600]) == pytest.approx([100, 1600])
    assert share_power(5000, [800, 1600], [800, 1600]) == pytest.approx([800, 1600])
    h = house(
        devices(batteries=2, sockets=0),
        start=NIGHT,
        overrides={"Battery 2": DeviceOverride(initial_fraction=0.0)},
    )
    h.advance_to(NIGHT + timedelta(minutes=5))  # only battery 1 has anything to give
    assert h.batteries["Battery 2"].power_w == 0
    assert h.batteries["Battery 1"].power_w < 0
    assert h.meter.power_w == pytest.approx(0, abs=1e-6)


def test_p1_sign_follows_the_sun() -> None:
    day = house(devices(batteries=0, sockets=1), overrides={"Boiler 1": DeviceOverride(1.0)})
    day.set_socket("Boiler 1", power_on=False)
    day.advance_to(NOON + timedelta(minutes=5))
    assert day.solar_w > 2500
    assert day.meter.power_w < 0
    night = house(devices(batteries=0, sockets=1), start=NIGHT)
    night.advance_to(NIGHT + timedelta(minutes=5))
    assert night.solar_w == 0
    assert night.meter.power_w > 0
    clear, cloudy = house(cloudiness=0.0), house(cloudiness=1.0)
    assert cloudy.solar_power_w(NOON) < 0.5 * clear.solar_power_w(NOON)


def test_clouds_are_seeded_and_seasonal() -> None:
    a, b, c = CloudySky(1), CloudySky(1), CloudySky(2)
    when = NOON + timedelta(minutes=37)
    assert a.factor(when) == b.factor(when)
    day = [when + timedelta(minutes=m) for m in range(0, 600, 7)]
    assert [a.factor(t) for t in day] != [c.factor(t) for t in day]
    assert CloudySky(1, 0.3).cloudiness_on(date(2024, 1, 5)) == 0.3
    winter = sum(CloudySky(s).cloudiness_on(date(2024, 1, 10)) for s in range(20))
    summer = sum(CloudySky(s).cloudiness_on(date(2024, 7, 10)) for s in range(20))
    assert winter > summer


def test_counters_add_up_and_energy_is_conserved_over_a_day() -> None:
    start = datetime(2024, 6, 20, 22, 0, tzinfo=UTC)
    h = house(devices(batteries=2, sockets=2), start=start, cloudiness=None, seed=4)
    h.set_battery_control(mode="zero")
    for hour in range(24):  # the scheduler's kind of moves, during the day
        if hour == 9:
            h.set_socket("Boiler 2", power_on=False)
        if hour == 12:
            h.set_battery_control(permissions=["charge_allowed"])
        if hour == 18:
            h.set_battery_control(mode="zero")
        h.advance_to(start + timedelta(hours=hour + 1))
    t = h.totals
    sources = t.solar_wh + t.import_wh
    sinks = t.base_load_wh + t.sockets_wh + t.battery_charge_wh - t.battery_discharge_wh
    sinks += t.export_wh
    assert t.solar_wh > 1000
    assert t.import_wh > 1000
    assert t.export_wh > 0
    assert abs(sources - sinks) <= 1e-3 * sources  # to 0.1 % (it is exact by construction)
    assert abs(sources - sinks) < 1e-6
    m = h.meter
    assert m.import_wh == pytest.approx(t.import_wh)
    assert m.export_wh == pytest.approx(t.export_wh)
    assert m.import_t1_wh > 0
    assert m.import_t2_wh > 0
    assert sum(s.import_wh for s in h.sockets.values()) == pytest.approx(t.sockets_wh)
    assert sum(b.import_wh for b in h.batteries.values()) == pytest.approx(t.battery_charge_wh)
    assert sum(b.export_wh for b in h.batteries.values()) == pytest.approx(t.battery_discharge_wh)
    assert (m.import_wh - m.export_wh) == pytest.approx(
        t.base_load_wh
        + sum(s.import_wh for s in h.sockets.values())
        + sum(b.import_wh - b.export_wh for b in h.batteries.values())
        - t.solar_wh
    )
    # the battery's stored energy moved by its counters less the conversion losses
    b = h.batteries["Battery 1"]
    assert b.stored_wh <= 0.5 * 2700 + 0.95 * b.import_wh - b.export_wh + 1e-6


def test_switch_lock_keeps_the_socket_on() -> None:
    h = house(devices(batteries=0, sockets=1))
    h.set_socket("Boiler 1", power_on=False)
    assert h.set_socket("Boiler 1", switch_lock=True) == {"switch_lock": True}
    assert h.sockets["Boiler 1"].power_on  # locking turns it on
    with pytest.raises(SwitchLockedError, match="cannot be turned off"):
        h.set_socket("Boiler 1", power_on=False)
    with pytest.raises(SwitchLockedError):
        h.manual_switch("Boiler 1")
    with pytest.raises(SwitchLockedError):
        h.set_socket("Boiler 1", power_on=False, switch_lock=True)
    # unlocking and switching off in one request works, in any order
    assert h.set_socket("Boiler 1", power_on=False, switch_lock=False) == {
        "switch_lock": False,
        "power_on": False,
    }
    assert h.manual_switch("Boiler 1") is True
    assert h.sockets["Boiler 1"].switched_by == "manual"


# --- weather (pure) ------------------------------------------------------------------


def _fb(buf: bytes) -> Any:
    """A tiny independent FlatBuffers reader: fields of a table at `pos`."""

    class T:
        def __init__(self, pos: int) -> None:
            self.pos = pos

        def at(self, slot: int) -> int | None:
            vtable = self.pos - struct.unpack_from("<i", buf, self.pos)[0]
            vt_len = struct.unpack_from("<H", buf, vtable)[0]
            if 4 + 2 * slot >= vt_len:
                return None
            off = int(struct.unpack_from("<H", buf, vtable + 4 + 2 * slot)[0])
            return self.pos + off if off else None

        def scalar(self, slot: int, fmt: str) -> Any:
            at = self.at(slot)
            return None if at is None else struct.unpack_from("<" + fmt, buf, at)[0]

        def ref(self, slot: int) -> int:
            at = self.at(slot)
            assert at is not None
            return at + int(struct.unpack_from("<I", buf, at)[0])

        def table(self, slot: int) -> T:
            return T(self.ref(slot))

        def string(self, slot: int) -> str:
            at = self.ref(slot)
            n = struct.unpack_from("<I", buf, at)[0]
            return buf[at + 4 : at + 4 + n].decode()

        def vector(self, slot: int, fmt: str) -> list[Any]:
            at = self.ref(slot)
            n = struct.unpack_from("<I", buf, at)[0]
            return list(struct.unpack_from(f"<{n}{fmt}", buf, at + 4))

        def tables(self, slot: int) -> list[T]:
            at = self.ref(slot)
            n = struct.unpack_from("<I", buf, at)[0]
            out = []
            for i in range(n):
                p = at + 4 + 4 * i
                out.append(T(p + struct.unpack_from("<I", buf, p)[0]))
            return out

    return T


def _fb_messages(data: bytes) -> list[tuple[bytes, Any]]:
    """Size-prefixed messages, as openmeteo_requests splits them: (buffer, root table)."""
    out, pos = [], 0
    while pos < len(data):
        size = struct.unpack_from("<I", data, pos)[0]
        buf = data[pos + 4 : pos + 4 + size]
        out.append((buf, _fb(buf)(struct.unpack_from("<I", buf, 0)[0])))
        pos += 4 + size
    return out


def test_flatbuffers_writer_round_trips() -> None:
    root = flatbuf.Table(
        [
            (0, flatbuf.Scalar("f", 1.5)),
            (2, flatbuf.Scalar("q", -7)),
            (3, flatbuf.String("GMT")),
            (4, flatbuf.Vector("q", [1, 2, 3])),
            (5, flatbuf.TableVector([flatbuf.Table([(1, flatbuf.Scalar("B", 9))])])),
        ]
    )
    ((_buf, t),) = _fb_messages(flatbuf.encode(root, size_prefixed=True))
    assert t.scalar(0, "f") == 1.5
    assert t.at(1) is None
    assert t.scalar(2, "q") == -7
    assert t.string(3) == "GMT"
    assert t.vector(4, "q") == [1, 2, 3]
    assert [x.scalar(1, "B") for x in t.tables(5)] == [9]


def test_weather_requests_and_values() -> None:
    tz = ZoneInfo("Europe/Amsterdam")
    sky = CloudySky(3, 0.0)
    query = {
        "latitude": ["52.09"],
        "longitude": ["5.12"],
        "hourly": [",".join(QUARTZ_VARIABLES)],
        "start_date": ["2024-06-21"],
        "end_date": ["2024-06-22"],
        "timezone": ["GMT"],
    }
    req = weather.parse_request(query, date(2024, 6, 21), tz)
    assert req.hours == 48
    assert req.start == datetime(2024, 6, 21, tzinfo=UTC)
    body = weather.answer_json(req, sky)
    hourly = body["hourly"]
    assert hourly["time"][:2] == ["2024-06-21T00:00", "2024-06-21T01:00"]
    assert set(hourly) == {"time", *QUARTZ_VARIABLES}
    assert all(len(v) == 48 for v in hourly.values())
    assert body["hourly_units"]["shortwave_radiation"] == "W/m²"
    ghi = hourly["shortwave_radiation"]
    assert ghi[2] == 0
    assert max(ghi[:24]) > 700
    assert hourly["is_day"][12] == 1
    assert hourly["is_day"][0] == 0
    for k in range(48):
        assert hourly["direct_radiation"][k] + hourly["diffuse_radiation"][k] == pytest.approx(
            ghi[k], abs=0.02
        )
        assert hourly["dew_point_2m"][k] <= hourly["temperature_2m"][k] + 0.01
        assert 0 <= hourly["cloud_cover"][k] <= 100
    # an overcast sky lets less through, and shows clouds
    grey = weather.answer_json(req, CloudySky(3, 1.0))["hourly"]
    assert max(grey["shortwave_radiation"]) < 0.5 * max(ghi)
    assert min(grey["cloud_cover"][8:16]) > max(hourly["cloud_cover"][8:16])
    with pytest.raises(weather.WeatherRequestError, match="invalid String value bogus"):
        weather.parse_request(query | {"hourly": ["bogus"]}, date(2024, 6, 21), tz)
    with pytest.raises(weather.WeatherRequestError, match="Latitude"):
        weather.parse_request(query | {"latitude": ["95"]}, date(2024, 6, 21), tz)
    # default: 7 days from the simulated today, in the asked time zone
    week = weather.parse_request(
        {"latitude": ["52"], "longitude": ["5"], "timezone": ["Europe/Amsterdam"]},
        date(2024, 6, 21),
        tz,
    )
    assert week.hours == 7 * 24
    assert week.start == datetime(2024, 6, 20, 22, tzinfo=UTC)


def test_power_cut_stops_everything_and_restores_the_relays() -> None:
    h = house(overrides={"Boiler 2": DeviceOverride(initial_fraction=0.2, power_on=False)})
    h.advance_to(NOON + timedelta(minutes=1))
    assert h.solar_w > 0
    b1 = h.sockets["Boiler 1"]
    stored = h.sockets["Boiler 2"].stored_wh
    h.power_cut(NOON + timedelta(minutes=11))
    h.advance_to(NOON + timedelta(minutes=6))
    assert not h.powered
    assert (h.solar_w, h.base_w, h.meter.power_w, b1.power_w) == (0, 0, 0, 0)
    assert b1.power_on  # the relay as it was; it just has no power
    assert h.snapshot()["power_cut_until"] is not None
    h.advance_to(NOON + timedelta(minutes=12))
    assert h.powered
    assert (b1.power_on, h.sockets["Boiler 2"].power_on) == (True, False)  # previous
    assert h.sockets["Boiler 2"].stored_wh <= stored  # nothing came in
    events = [(e["socket"], e["event"], e["by"]) for e in h.events_since(0)]
    assert ("Boiler 2", "power-cut", "grid") in events
    assert ("Boiler 2", "power-back", "grid") in events
    assert not [e for e in events if e[1] in ("on", "off")]
    # sockets that come back on (the simulator restarted, or a socket so made)
    h.power_cut(NOON + timedelta(minutes=13), relays="on")
    h.advance_to(NOON + timedelta(minutes=14))
    assert h.sockets["Boiler 2"].power_on
    assert h.sockets["Boiler 2"].switched_by == "power-back"
    assert ("Boiler 2", "on", "power-back") in [
        (e["socket"], e["event"], e["by"]) for e in h.events_since(0)
    ]
    with pytest.raises(ValueError, match="end after now"):
        h.power_cut(NOON, relays="on")


# --- the servers ---------------------------------------------------------------------


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    settings = SimulatorSettings(
        seed=5,
        cloudiness=0.0,
        pairing_window_s=30,
        initial_store_fraction=1.0,
        devices={"Boiler 2": DeviceSettings(initial_fraction=0.2)},
    )
    clock = ManualClock(NOON)
    async with Simulator(
        devices(batteries=2, sockets=2), clock=clock, settings=settings, state_dir=tmp_path
    ) as simulator:
        yield simulator


def v1(sim: Simulator, name: str) -> str:
    url = sim.device(name).v1_url
    assert url is not None
    return url


class V2:
    """An httpx client for one v2 device: the simulator's CA, the device's name via SNI."""

    def __init__(self, sim: Simulator, name: str, token: str | None = BAT1_TOKEN) -> None:
        dev = sim.device(name)
        assert dev.v2_url is not None
        assert sim.ca_path is not None
        self.url, self.server_name = dev.v2_url, dev.server_name
        self.context = client_context(sim.ca_path)
        self.token = token

    async def request(
        self,
        method: str,
        path: str,
        *,
        server_name: str | None = None,
        version: str = "2",
        **kw: Any,
    ) -> httpx.Response:
        headers = {"X-Api-Version": version}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        async with httpx.AsyncClient(verify=self.context, timeout=5) as client:
            return await client.request(
                method,
                self.url + path,
                headers=headers,
                extensions={"sni_hostname": server_name or self.server_name},
                **kw,
            )


async def control(sim: Simulator, path: str, body: Any = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        if body is None:
            return await client.post(f"{sim.control_url}{path}")
        return await client.post(f"{sim.control_url}{path}", json=body)


async def test_v1_endpoints_answer_in_homewizard_shapes(sim: Simulator) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        api = (await client.get(v1(sim, "P1 meter") + "/api")).json()
        assert api == {
            "product_type": "HWE-P1",
            "product_name": "P1 Meter",
            "serial": serial_for("P1 meter"),
            "firmware_version": "6.0200",
            "api_version": "v1",
        }
        assert len(api["serial"]) == 12
        assert int(api["serial"], 16) >= 0
        sim.clock.advance(120)  # type: ignore[attr-defined]
        p1 = (await client.get(v1(sim, "P1 meter") + "/api/v1/data")).json()
        assert p1["active_power_w"] < 0  # clear noon: export
        assert p1["total_power_import_kwh"] == pytest.approx(
            p1["total_power_import_t1_kwh"] + p1["total_power_import_t2_kwh"], abs=1e-3
        )
        for key in ("smr_version", "meter_model", "active_tariff", "total_power_export_kwh"):
            assert key in p1
        skt = (await client.get(v1(sim, "boiler_2") + "/api/v1/data")).json()
        assert skt["active_power_w"] == 2000
        assert skt["total_power_import_kwh"] > 0
        assert {"active_voltage_v", "active_current_a", "wifi_strength"} <= set(skt)
        state = (await client.get(v1(sim, "Boiler 2") + "/api/v1/state")).json()
        assert state == {"power_on": True, "switch_lock": False, "brightness": 255}
        missing = await client.get(v1(sim, "P1 meter") + "/api/v1/state")
        assert missing.status_code == 404


async def test_put_state_switches_the_socket_in_the_physics(sim: Simulator) -> None:
    url = v1(sim, "Boiler 2") + "/api/v1/state"
    async with httpx.AsyncClient(timeout=5) as client:
        reply = await client.put(url, json={"power_on": False})
        assert reply.status_code == 200
        assert reply.json() == {"power_on": False}
        assert sim.house.sockets["Boiler 2"].power_on is False
        sim.clock.advance(60)  # type: ignore[attr-defined]
        data = (await client.get(v1(sim, "Boiler 2") + "/api/v1/data")).json()
        assert data["active_power_w"] == 0
        await client.put(url, json={"power_on": True, "brightness": 10})
        sim.clock.advance(60)  # type: ignore[attr-defined]
        assert (await client.get(v1(sim, "Boiler 2") + "/api/v1/data")).json()[
            "active_power_w"
        ] == 2000
        bad = await client.put(url, content=b"{power_on: nope}")
        assert bad.status_code == 400
        assert bad.json()["error"]["id"] == 2
        bad = await client.put(url, json={"brightness": 300})
        assert bad.json() == {
            "error": {"id": 7, "description": "brightness value limited to 0-255"}
        }
        assert (await client.put(url, json={"switch_lock": True})).json() == {"switch_lock": True}
        locked = await client.put(url, json={"power_on": False})
        assert locked.status_code == 400
        assert locked.json()["error"]["id"] == 8
        assert sim.house.sockets["Boiler 2"].power_on is True


async def test_v2_endpoints_tls_name_and_token(sim: Simulator) -> None:
    bat = V2(sim, "Battery 1")
    api = await bat.request("GET", "/api")
    assert api.json() == {
        "product_name": "Plug-In Battery",
        "product_type": "HWE-BAT",
        "serial": serial_for("Battery 1"),
        "firmware_version": "2.0.1",
        "api_version": "2.0.0",
    }
    assert bat.server_name == f"appliance/battery/{serial_for('Battery 1')}"
    sim.clock.advance(60)  # type: ignore[attr-defined]
    m = (await bat.request("GET", "/api/measurement")).json()
    assert set(m) == {
        "energy_import_kwh",
        "energy_export_kwh",
        "power_w",
        "voltage_l1_v",
        "current_a",
        "frequency_hz",
        "state_of_charge_pct",
        "cycles",
    }
    assert m["power_w"] > 0
    assert m["state_of_charge_pct"] == 50
    # the certificate is for the device's name, nothing else
    with pytest.raises(httpx.ConnectError, match=r"CERTIFICATE_VERIFY_FAILED|Hostname mismatch"):
        await bat.request("GET", "/api", server_name="appliance/battery/000000000000")
    # tokens: Battery 2's token is not Battery 1's; none at all is refused too
    for token in (BAT2_TOKEN, None, "00" * 16):
        refused = await V2(sim, "Battery 1", token).request("GET", "/api/measurement")
        assert refused.status_code == 401
        assert refused.json() == {"error": "user:unauthorized"}
    # the P1 (API v2) takes the batteries' tokens, and has the batteries' control
    p1 = V2(sim, "P1 meter", BAT2_TOKEN.upper())
    assert p1.server_name.startswith("appliance/p1dongle/")
    pm = (await p1.request("GET", "/api/measurement")).json()
    assert pm["power_w"] < 0
    assert "energy_import_t1_kwh" in pm
    assert "tariff" in pm
    group = (await p1.request("GET", "/api/batteries")).json()
    assert group == {
        "mode": "zero",
        "permissions": ["charge_allowed", "discharge_allowed"],
        "charge_to_full": False,
        "battery_count": 2,
        "power_w": group["power_w"],
        "target_power_w": group["target_power_w"],
        "max_consumption_w": 2400,
        "max_production_w": 2400,
    }
    assert group["power_w"] == 2400  # both charging at full power
    bad_version = await V2(sim, "P1 meter").request("GET", "/api", version="1")
    assert bad_version.status_code == 400


async def test_put_batteries_steers_the_physics(sim: Simulator) -> None:
    p1 = V2(sim, "P1 meter")
    reply = await p1.request("PUT", "/api/batteries", json={"mode": "standby"})
    assert reply.status_code == 200
    assert reply.json()["mode"] == "standby"
    assert reply.json()["permissions"] == []
    sim.clock.advance(30)  # type: ignore[attr-defined]
    assert (await p1.request("GET", "/api/batteries")).json()["power_w"] == 0
    assert sim.house.batteries["Battery 1"].power_w == 0
    reply = await p1.request("PUT", "/api/batteries", json={"permissions": ["charge_allowed"]})
    assert reply.json()["mode"] == "zero"
    assert reply.json()["max_production_w"] == 0
    clash = await p1.request(
        "PUT", "/api/batteries", json={"mode": "to_full", "permissions": ["charge_allowed"]}
    )
    assert clash.status_code == 400
    assert clash.json() == {"error": "json:parameter-not-exclusive"}
    for body, code in (
        ({"mode": 3}, "json:parameter-invalid-type:mode"),
        ({"nothing": 1}, "json:no-parameters-recognized"),
    ):
        refused = await p1.request("PUT", "/api/batteries", json=body)
        assert refused.status_code == 400
        assert refused.json() == {"error": code}
    junk = await p1.request("PUT", "/api/batteries", content=b"{")
    assert junk.json() == {"error": "request:invalid-json"}
    full = await p1.request("PUT", "/api/batteries", json={"mode": "to_full"})
    assert full.json()["charge_to_full"] is True
    assert sim.house.control.mode == "to_full"


async def test_pairing_needs_the_button(sim: Simulator) -> None:
    anon = V2(sim, "Battery 2", token=None)
    body = {"name": "local/tester"}
    early = await anon.request("POST", "/api/user", json=body)
    assert early.status_code == 403
    assert early.json() == {"error": "user:creation-not-enabled"}
    pressed = await control(sim, "/button/battery_2")
    assert pressed.json() == {"device": "Battery 2", "window_s": 30}
    first = await anon.request("POST", "/api/user", json=body)
    assert first.status_code == 200
    assert first.json()["name"] == "local/tester"
    token = first.json()["token"]
    assert len(token) == 32
    assert token == token.upper()
    assert int(token, 16) >= 0
    assert (await V2(sim, "Battery 2", token).request("GET", "/api")).status_code == 200
    again = (await anon.request("POST", "/api/user", json=body)).json()["token"]
    assert (await V2(sim, "Battery 2", token).request("GET", "/api")).status_code == 401
    assert (await V2(sim, "Battery 2", again).request("GET", "/api")).status_code == 200
    bad = await anon.request("POST", "/api/user", json={"name": "tester"})
    assert bad.json() == {"error": "user:invalid-prefix"}
    assert (await control(sim, "/button/boiler_1")).status_code == 400  # no API v2
    assert (await control(sim, "/button/nobody")).status_code == 404


async def faults(sim: Simulator, device: str, **changes: Any) -> dict[str, Any]:
    reply = await control(sim, "/faults", {"device": device, **changes})
    assert reply.status_code == 200, reply.text
    result: dict[str, Any] = reply.json()
    return result


async def test_injected_faults_are_observable(sim: Simulator) -> None:
    data = v1(sim, "Boiler 1") + "/api/v1/data"
    async with httpx.AsyncClient(timeout=5) as client:
        await faults(sim, "Boiler 1", delay_s=0.3)
        began = systime.monotonic()
        assert (await client.get(data)).status_code == 200
        assert systime.monotonic() - began >= 0.3
        await faults(sim, "Boiler 1", clear=True, timeout=True)
        with pytest.raises(httpx.ReadTimeout):
            await client.get(data, timeout=0.3)
        await faults(sim, "Boiler 1", clear=True, http_500=True)
        reply = await client.get(data)
        assert reply.status_code == 500
        assert reply.json()["error"]["id"] == 901
        await faults(sim, "Boiler 1", clear=True, garbage=True)
        reply = await client.get(data)
        with pytest.raises((json.JSONDecodeError, UnicodeDecodeError)):
            json.loads(reply.content)
        await faults(sim, "Boiler 1", clear=True, truncated=True)
        reply = await client.get(data)
        with pytest.raises(json.JSONDecodeError):
            json.loads(reply.content)
        assert reply.content.startswith(b'{"wifi_ssid"')
        await faults(sim, "Boiler 1", clear=True, missing_fields=True)
        reply = (await client.get(data)).json()
        assert "active_power_w" not in reply
        assert "wifi_strength" in reply
        await faults(sim, "Boiler 1", clear=True, missing_fields=["wifi_strength"])
        assert "wifi_strength" not in (await client.get(data)).json()
        await faults(sim, "Boiler 1", clear=True, api_disabled=True)
        reply = await client.get(data)
        assert reply.status_code == 403
        assert reply.json() == {"error": {"id": 202, "description": "API not enabled"}}
        assert (await client.get(v1(sim, "Boiler 1") + "/api")).status_code == 200
        # a fault for a number of answers only
        await faults(sim, "Boiler 1", clear=True, http_500=True, times=2)
        codes = [(await client.get(data)).status_code for _ in range(3)]
        assert codes == [500, 500, 200]
        assert sim.device("Boiler 1").faults == FaultSettings()
    # v2: a 500 and a device that refuses its configured token
    bat = V2(sim, "Battery 1")
    await faults(sim, "Battery 1", http_500=True)
    reply = await bat.request("GET", "/api/measurement")
    assert reply.status_code == 500
    assert reply.json() == {"error": "request:internal-server-error"}
    await faults(sim, "Battery 1", clear=True, wrong_token=True)
    assert (await bat.request("GET", "/api/measurement")).status_code == 401
    await faults(sim, "Battery 1", clear=True)
    assert (await bat.request("GET", "/api/measurement")).status_code == 200
    refused = await control(sim, "/faults", {"device": "Battery 1", "delay_s": -1})
    assert refused.status_code == 400
    assert "delay_s" in refused.json()["error"]


async def test_device_gone_and_back(sim: Simulator) -> None:
    url = v1(sim, "P1 meter") + "/api"
    async with httpx.AsyncClient(timeout=2) as client:
        assert (await client.get(url)).status_code == 200
        await faults(sim, "P1 meter", gone=True)
        with pytest.raises(httpx.ConnectError):
            await client.get(url)
        with pytest.raises(httpx.ConnectError):
            await V2(sim, "P1 meter").request("GET", "/api")
        state = (await client.get(sim.control_url + "/state")).json()
        assert state["devices"]["p1_meter"]["listening"] is False
        await faults(sim, "P1 meter", gone=False)
        assert (await client.get(url)).status_code == 200  # same port as before
        assert (await V2(sim, "P1 meter").request("GET", "/api")).status_code == 200


async def _listening(sim: Simulator, name: str, want: bool) -> None:
    for _ in range(500):  # the power-back task binds the ports again: a few loop turns
        if sim.device(name).listening == want:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name} listening is not {want}")


async def test_power_cut_on_the_control_endpoint(sim: Simulator) -> None:
    """Every device off the network during the cut; then booted again (v2 `uptime_s` from
    0), the sockets' relays as before."""
    clock = sim.clock
    assert isinstance(clock, ManualClock)
    clock.advance(600)
    p1 = V2(sim, "P1 meter", token=None)
    p1.token = sim.p1_token
    system = (await p1.request("GET", "/api/system")).json()
    assert system["uptime_s"] == 600
    sim.house.set_socket("Boiler 1", power_on=False)
    bad = await control(sim, "/power_cut", {"duration_s": 0})
    assert bad.status_code == 400
    cut = await control(sim, "/power_cut", {"duration_s": 120})
    assert cut.status_code == 200, cut.text
    async with httpx.AsyncClient(timeout=2) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(v1(sim, "Boiler 1") + "/api/v1/state")
        state = (await client.get(sim.control_url + "/state")).json()
        assert state["house"]["power_cut_until"] is not None
        clock.advance(120)
        await _listening(sim, "Boiler 1", True)
        await _listening(sim, "P1 meter", True)
        relay = (await client.get(v1(sim, "Boiler 1") + "/api/v1/state")).json()
        assert relay["power_on"] is False  # as before the cut
        assert (await client.get(v1(sim, "Boiler 2") + "/api/v1/state")).json()["power_on"]
    system = (await p1.request("GET", "/api/system")).json()
    assert system["uptime_s"] == 0
    clock.advance(30)
    assert (await p1.request("GET", "/api/system")).json()["uptime_s"] == 30


async def test_a_restarted_house_brings_its_relays_back_as_they_were(tmp_path: Path) -> None:
    """A restart of the simulator is a power cut: the sockets come back in their previous
    state (not the settings' initial one), and the devices' uptime starts again."""
    settings = SimulatorSettings(seed=5, cloudiness=0.0)
    clock = ManualClock(NOON)
    cfg = devices(batteries=0, sockets=2)
    async with Simulator(cfg, clock=clock, settings=settings, state_dir=tmp_path) as first:
        assert first.house.socket("Boiler 1").power_on  # the settings' default: on
        async with httpx.AsyncClient(timeout=5) as client:
            url = v1(first, "Boiler 1") + "/api/v1/state"
            put = await client.put(url, json={"power_on": False})
        assert put.status_code == 200
        clock.advance(600)
    clock.advance(60)
    async with Simulator(cfg, clock=clock, settings=settings, state_dir=tmp_path) as second:
        assert second.house.socket("Boiler 1").power_on is False
        assert second.house.socket("Boiler 2").power_on is True
        assert second.uptime_s(second.device("P1 meter")) == 0
    # without a kept state directory, every run starts from the settings
    async with Simulator(cfg, clock=clock, settings=settings) as fresh:
        assert fresh.house.socket("Boiler 1").power_on is True


async def test_control_state_and_manual_switch(sim: Simulator) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        state = (await client.get(sim.control_url + "/state")).json()
    house_state = state["house"]
    assert set(house_state["sockets"]) == {"Boiler 1", "Boiler 2"}
    assert house_state["sockets"]["Boiler 2"]["energy_stored_wh"] == pytest.approx(800)
    assert house_state["battery_group"]["battery_count"] == 2
    assert state["devices"]["battery_1"]["server_name"].startswith("appliance/battery/")
    flipped = await control(sim, "/socket/boiler_1/manual")
    assert flipped.json() == {"device": "Boiler 1", "power_on": False}
    assert sim.house.sockets["Boiler 1"].switched_by == "manual"
    on = await control(sim, "/socket/Boiler 1/manual", {"power_on": True})
    assert on.json()["power_on"] is True
    sim.house.set_socket("Boiler 1", switch_lock=True)
    assert (await control(sim, "/socket/boiler_1/manual")).status_code == 409
    assert (await control(sim, "/socket/p1_meter/manual")).status_code == 400
    async with httpx.AsyncClient(timeout=5) as client:
        log = (await client.get(sim.control_url + "/events")).json()
        later = (await client.get(sim.control_url + "/events", params={"since": 1})).json()
        refused = await client.get(sim.control_url + "/events", params={"since": "-1"})
    # the relay's truth: off then on by hand (the lock turned it on already: no event)
    assert [(e["socket"], e["event"], e["by"]) for e in log["events"]] == [
        ("Boiler 1", "off", "manual"),
        ("Boiler 1", "on", "manual"),
    ]
    assert log["next"] == 2
    assert [e["n"] for e in later["events"]] == [1]
    assert refused.status_code == 400
    written = json.loads((sim.state_dir / "devices.sim.json").read_text())  # type: ignore[operator]
    p1 = written["devices"][0]
    assert p1["ip_address"] == "127.0.0.1"
    assert p1["port"] == sim.device("P1 meter").v1_port
    assert p1["v2_port"] == sim.device("P1 meter").v2_port
    assert DevicesConfig.model_validate(written).batteries[0].user_info.token.get_secret_value()


async def test_weather_endpoint_json_and_flatbuffers(sim: Simulator) -> None:
    params: dict[str, str | float] = {
        "latitude": 52.09,
        "longitude": 5.12,
        "hourly": ",".join(QUARTZ_VARIABLES),
        "start_date": "2024-06-21",
        "end_date": "2024-06-28",
        "timezone": "GMT",
    }
    base = sim.weather_url.removesuffix("/forecast")
    async with httpx.AsyncClient(timeout=10) as client:
        body = (await client.get(base + "/forecast", params=params)).json()
        assert body["timezone"] == "GMT"
        assert body["utc_offset_seconds"] == 0
        assert len(body["hourly"]["time"]) == 8 * 24
        assert set(body["hourly_units"]) == {"time", *QUARTZ_VARIABLES}
        # what quartz's data.py asks (dwd-icon, repeated `hourly`) as openmeteo_requests does
        icon: list[tuple[str, str | int | float | bool | None]] = [
            ("latitude", "52.09"),
            ("longitude", "5.12"),
            ("start_date", "2024-06-21"),
            ("end_date", "2024-06-28"),
            ("hourly", "temperature_2m"),
            ("hourly", "shortwave_radiation"),
            ("format", "flatbuffers"),
        ]
        reply = await client.get(base + "/dwd-icon", params=icon)
        assert reply.status_code == 200
        ((_, root),) = _fb_messages(reply.content)
        assert root.scalar(0, "f") == pytest.approx(52.09)
        assert root.string(7) == "GMT"
        hourly = root.table(11)
        start = int(datetime(2024, 6, 21, tzinfo=UTC).timestamp())
        assert hourly.scalar(0, "q") == start
        assert hourly.scalar(2, "i") == 3600
        assert hourly.scalar(1, "q") == start + 8 * 24 * 3600
        temp, ghi = hourly.tables(3)
        assert temp.scalar(0, "B") == 47
        assert temp.scalar(5, "h") == 2
        assert ghi.scalar(0, "B") == 32
        assert ghi.scalar(1, "B") == 39
        values = ghi.vector(3, "f")
        assert len(values) == 192
        assert values == pytest.approx(body["hourly"]["shortwave_radiation"], abs=0.01)
        bad = await client.get(base + "/forecast", params=params | {"hourly": "snow_fog"})
        assert bad.status_code == 400
        assert bad.json()["error"] is True


async def test_simulate_command_runs_and_stops_cleanly(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.simulator",
        "--config",
        "config/config_devices.example.json",
        "--speed",
        "60",
        "--start",
        "2024-06-21T12:00",
        "--state-dir",
        str(tmp_path),
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )
    assert proc.stderr is not None
    try:
        lines: list[str] = []
        while True:
            line = (await asyncio.wait_for(proc.stderr.readline(), 15)).decode()
            lines.append(line)
            if "devices file for the services" in line or not line:
                break
        text = "".join(lines)
        assert "P1 meter (HWE-P1" in text
        assert "appliance/p1dongle/" in text
        assert "Battery (HWE-BAT" in text
        assert "CA certificate:" in text
        info = json.loads((tmp_path / "simulator.json").read_text())
        async with httpx.AsyncClient(timeout=5) as client:
            state = (await client.get(info["control_url"] + "/state")).json()
        assert state["time"].startswith("2024-06-21T10:")
        assert (tmp_path / "ca.pem").is_file()
        assert (tmp_path / "ca-key.pem").stat().st_mode & 0o077 == 0
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stderr.read(), 10)
        code = await asyncio.wait_for(proc.wait(), 10)
    assert code == 0
    assert b"stopping" in rest


def test_simulate_command_refuses_bad_input_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from services.cli import main

    assert main(["simulate", "--config", "no/such/file.json"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0
    assert "file not found" in err
    assert (
        main(["simulate", "--config", "config/config_devices.example.json", "--speed", "-1"]) == 2
    )
    assert "speed" in capsys.readouterr().err


def test_certificate_names_the_device(tmp_path: Path) -> None:
    from cryptography import x509

    from services.simulator.tls import CertificateAuthority

    now = datetime.now(UTC)
    ca = CertificateAuthority.create(now)
    cert_pem, _ = ca.issue("appliance/p1dongle/5c2fafaabbcc", now)
    cert = x509.load_pem_x509_certificate(cert_pem)
    cn = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert cn == "appliance/p1dongle/5c2fafaabbcc"
    assert san.get_values_for_type(x509.DNSName) == ["appliance/p1dongle/5c2fafaabbcc"]
    # a CA kept in a state directory is reused on the next start
    again, path = CertificateAuthority.load_or_create(tmp_path, now, keep_key=True)
    same, _ = CertificateAuthority.load_or_create(tmp_path, now, keep_key=True)
    assert same.cert == again.cert
    assert path.read_bytes() == again.cert_pem()
    assert isinstance(client_context(path), ssl.SSLContext)


# --- where it listens and what it advertises (compose: --bind 0.0.0.0 --advertise-host) -------


def _port(url: str) -> int:
    port = httpx.URL(url).port
    assert port is not None, url
    return port


async def test_advertised_host_is_in_the_files_while_it_listens_on_the_bind_address(
    tmp_path: Path,
) -> None:
    from shared.config import load_devices

    clock = ManualClock(NOON)
    async with Simulator(
        devices(batteries=1, sockets=1),
        clock=clock,
        settings=SimulatorSettings(seed=1),
        state_dir=tmp_path,
        bind="127.0.0.1",
        advertise_host="house.sim.test",
    ) as sim:
        info = json.loads((tmp_path / "simulator.json").read_text())
        assert info["weather_url"] == f"http://house.sim.test:{sim.weather_port}/v1/forecast"
        assert info["control_url"] == f"http://house.sim.test:{sim.control_port}/control"
        urls = [u for d in info["devices"].values() for u in (d["v1_url"], d["v2_url"]) if u]
        assert len(urls) == 4  # P1 v1 + v2, socket v1, battery v2
        assert all(httpx.URL(u).host == "house.sim.test" for u in urls)
        # the devices file the services read names the advertised host, and loads
        written = json.loads((tmp_path / "devices.sim.json").read_text())
        assert {d["ip_address"] for d in written["devices"]} == {"house.sim.test"}
        loaded = load_devices(tmp_path / "devices.sim.json")
        assert {d.ip_address for d in loaded.devices} == {"house.sim.test"}
        p1 = next(d for d in loaded.devices if d.device_type == "HWE-P1")
        assert p1.port == _port(sim.device("P1 meter").v1_url or "")
        # ...while the servers listen on 127.0.0.1 at the advertised ports
        async with httpx.AsyncClient(timeout=5) as client:
            state = await client.get(f"http://127.0.0.1:{_port(info['control_url'])}/control/state")
            assert state.status_code == 200
            assert state.json()["weather_url"] == info["weather_url"]
            socket_url = info["devices"]["boiler_1"]["v1_url"]
            api = await client.get(f"http://127.0.0.1:{_port(socket_url)}/api")
            assert api.json()["product_type"] == "HWE-SKT"
        # the certificate names the device, not the host: TLS checks out whatever it is called
        dev = sim.device("Battery 1")
        assert sim.ca_path is not None
        async with httpx.AsyncClient(verify=client_context(sim.ca_path), timeout=5) as client:
            measured = await client.get(
                f"https://127.0.0.1:{_port(dev.v2_url or '')}/api",
                headers={"Authorization": f"Bearer {BAT1_TOKEN}"},
                extensions={"sni_hostname": dev.server_name},
            )
        assert measured.json()["serial"] == serial_for("Battery 1")
        assert dev.server_name == f"appliance/battery/{serial_for('Battery 1')}"


async def test_bound_to_every_interface_it_is_reachable_on_loopback(tmp_path: Path) -> None:
    import socket

    async with Simulator(
        devices(batteries=0, sockets=1),
        clock=ManualClock(NOON),
        settings=SimulatorSettings(seed=1),
        state_dir=tmp_path,
        bind="0.0.0.0",
    ) as sim:
        # 0.0.0.0 is no address to give a client: the machine's name is advertised instead
        assert sim.host == socket.gethostname()
        assert sim.control_url == f"http://{socket.gethostname()}:{sim.control_port}/control"
        async with httpx.AsyncClient(timeout=5) as client:
            state = await client.get(f"http://127.0.0.1:{sim.control_port}/control/state")
            assert state.status_code == 200
            data = await client.get(f"http://127.0.0.1:{sim.device('Boiler 1').v1_port}/api")
            assert data.json()["product_type"] == "HWE-SKT"


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


async def test_weather_and_control_ports_are_kept_with_or_without_a_base_port(
    tmp_path: Path,
) -> None:
    weather_port, control_port = _free_ports(2)
    settings = SimulatorSettings(seed=1, weather_port=weather_port, control_port=control_port)
    async with Simulator(
        devices(batteries=0, sockets=1), clock=ManualClock(NOON), settings=settings
    ) as sim:
        assert (sim.weather_port, sim.control_port) == (weather_port, control_port)
        assert sim.device("Boiler 1").v1_port not in (weather_port, control_port)
    # with a base port the devices take consecutive ports, stepping over the kept ones
    plan = Simulator(
        devices(batteries=0, sockets=2),
        clock=ManualClock(NOON),
        settings=SimulatorSettings(weather_port=18001, control_port=18090),
        base_port=18000,
    )
    plan._plan_ports()
    ports = [
        plan.device("P1 meter").v1_port,
        plan.device("P1 meter").v2_port,
        plan.device("Boiler 1").v1_port,
        plan.device("Boiler 2").v1_port,
    ]
    assert ports == [18000, 18002, 18003, 18004]
    assert (plan.weather_port, plan.control_port) == (18001, 18090)


async def test_simulate_command_as_compose_runs_it(tmp_path: Path) -> None:
    """The compose command line: every interface, a service name, fixed weather/control."""
    weather_port, control_port = _free_ports(2)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.simulator",
        "--config",
        "config/config_devices.example.json",
        "--bind",
        "0.0.0.0",
        "--advertise-host",
        "simulator",
        "--weather-port",
        str(weather_port),
        "--control-port",
        str(control_port),
        "--state-dir",
        str(tmp_path),
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )
    assert proc.stderr is not None
    try:
        while True:
            line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
            if "devices file for the services" in line or not line:
                break
        info = json.loads((tmp_path / "simulator.json").read_text())
        assert info["control_url"] == f"http://simulator:{control_port}/control"
        assert info["weather_url"] == f"http://simulator:{weather_port}/v1/forecast"
        written = json.loads((tmp_path / "devices.sim.json").read_text())
        assert {d["ip_address"] for d in written["devices"]} == {"simulator"}
        async with httpx.AsyncClient(timeout=5) as client:
            state = await client.get(f"http://127.0.0.1:{control_port}/control/state")
        assert state.status_code == 200
        assert state.json()["weather_url"] == info["weather_url"]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.stderr.read(), 10)
        code = await asyncio.wait_for(proc.wait(), 10)
    assert code == 0


def test_simulate_command_refuses_a_bad_bind_or_advertised_host(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from services.cli import main

    base = ["simulate", "--config", "config/config_devices.example.json"]
    assert main([*base, "--bind", "localhost"]) == 2
    assert "--bind: not an IP address" in capsys.readouterr().err
    assert main([*base, "--advertise-host", "http://simulator"]) == 2
    err = capsys.readouterr().err
    assert "--advertise-host" in err
    assert err.strip().count("\n") == 0


async def test_a_battery_with_the_placeholder_token_is_paired_as_it_were(tmp_path: Path) -> None:
    """The example devices file's battery has the all-zero placeholder token: the simulated
    house gives it a token of its own in `devices.sim.json` (so `make run` is a healthy run:
    no placeholder warning), which the battery and the P1 meter accept."""
    from shared.config import load_devices

    example = load_devices(Path("config/config_devices.example.json"))
    assert any(b.user_info.token_is_placeholder for b in example.batteries)
    async with Simulator(
        example, clock=ManualClock(NOON), settings=SimulatorSettings(seed=3), state_dir=tmp_path
    ) as sim:
        loaded = load_devices(tmp_path / "devices.sim.json")
        assert loaded.batteries
        for battery in loaded.batteries:
            token = battery.user_info.token.get_secret_value()
            assert not battery.user_info.token_is_placeholder
            assert len(token) == 32
            ok = await V2(sim, battery.device_name, token=token).request("GET", "/api/measurement")
            assert ok.status_code == 200, ok.text
            p1 = await V2(sim, loaded.p1.device_name, token=token).request("GET", "/api/system")
            assert p1.status_code == 200, p1.text
            wrong = await V2(sim, battery.device_name, token="F" * 32).request(
                "GET", "/api/measurement"
            )
            assert wrong.status_code == 401
