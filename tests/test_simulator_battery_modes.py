"""Each of the plan's battery modes in the simulated house, as the actuator sets them on the
P1 meter's `/api/batteries` (mode + permissions, HomeWizard's docs/v2/batteries rules)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from services.actuator.battery import DEVICE_MODES, next_request, plan_mode
from services.simulator.house import House
from services.simulator.server import Simulator
from services.simulator.settings import SimulatorSettings
from shared.clock import ManualClock
from shared.config import DevicesConfig
from shared.homewizard import BatteriesState
from shared.planning.problem import BATTERY_MODES, BatteryMode
from tests.test_simulator import NIGHT, NOON, V2, devices, house


def set_mode(h: House, mode: BatteryMode) -> None:
    """What the actuator sends, one field per request, on the house."""
    for _ in range(3):
        group = BatteriesState.from_api(h.battery_group())
        if plan_mode(group) == mode:
            return
        body = next_request(mode, group)
        h.set_battery_control(
            mode=body.get("mode"),  # type: ignore[arg-type]
            permissions=body.get("permissions"),  # type: ignore[arg-type]
        )
    raise AssertionError(f"{mode} not reached: {h.battery_group()}")


def battery_power(mode: BatteryMode, start: object, initial_soc: float = 0.5) -> float:
    h = house(devices(batteries=1, sockets=0), start=start, initial_soc=initial_soc)
    set_mode(h, mode)
    h.advance_to(start + timedelta(minutes=5))  # type: ignore[operator]
    return h.batteries["Battery 1"].power_w


# (mode, at a clear noon's surplus, at night's deficit): + charging, − discharging, 0 idle
EXPECTED: dict[BatteryMode, tuple[str, str]] = {
    "zero": ("+", "-"),
    "charge_only": ("+", "0"),
    "discharge_only": ("0", "-"),
    "standby": ("0", "0"),
    "to_full": ("full", "full"),
}


@pytest.mark.parametrize("mode", BATTERY_MODES)
def test_each_mode_in_the_house(mode: BatteryMode) -> None:
    for start, want in zip((NOON, NIGHT), EXPECTED[mode], strict=True):
        power = battery_power(mode, start)
        if want == "+":
            assert power > 100, (mode, start, power)
        elif want == "-":
            assert power < -100, (mode, start, power)
        elif want == "0":
            assert power == 0, (mode, start, power)
        else:  # to_full: full power, from the grid at night
            assert power == pytest.approx(800), (mode, start, power)


def test_the_devices_modes_and_permissions() -> None:
    h = house(devices(batteries=1, sockets=0))
    for mode in BATTERY_MODES:
        set_mode(h, mode)
        group = h.battery_group()
        device_mode, permissions = DEVICE_MODES[mode]
        assert (group["mode"], tuple(group["permissions"])) == (device_mode, permissions)
        assert plan_mode(BatteriesState.from_api(group)) == mode


def test_the_documented_rules() -> None:
    h = house(devices(batteries=1, sockets=0))
    # zero with no permission left is standby; a permission in standby is zero again
    h.set_battery_control(permissions=[])
    assert h.control.mode == "standby"
    h.set_battery_control(permissions=["discharge_allowed"])
    assert h.control.mode == "zero"
    # mode and permissions in one request (not to_full)
    h.set_battery_control(mode="zero", permissions=["charge_allowed"])
    assert (h.control.mode, h.battery_group()["permissions"]) == ("zero", ["charge_allowed"])
    # to_full: permissions read-only (and shown empty); full: back to zero with both
    h.set_battery_control(mode="to_full")
    assert h.battery_group()["permissions"] == []
    with pytest.raises(ValueError, match="read-only"):
        h.set_battery_control(permissions=["charge_allowed"])
    with pytest.raises(ValueError, match="read-only"):
        h.set_battery_control(mode="to_full", permissions=[])
    h.set_battery_control(mode="standby")
    assert h.battery_group()["permissions"] == []


def test_to_full_ends_in_zero_by_itself() -> None:
    h = house(devices(batteries=1, sockets=0), start=NIGHT, initial_soc=0.9)
    set_mode(h, "to_full")
    when = NIGHT
    while h.control.mode == "to_full" and when < NIGHT + timedelta(hours=1):
        when += timedelta(seconds=10)
        h.advance_to(when)
    assert h.batteries["Battery 1"].full
    assert when < NIGHT + timedelta(minutes=30)  # 270 Wh at 800 W
    assert h.control.mode == "zero"
    assert plan_mode(BatteriesState.from_api(h.battery_group())) == "zero"


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    async with Simulator(
        devices(batteries=1, sockets=0),
        clock=ManualClock(NOON),
        settings=SimulatorSettings(seed=2, cloudiness=0.0),
        state_dir=tmp_path,
    ) as simulator:
        yield simulator


async def test_put_batteries_follows_the_documented_rules(sim: Simulator) -> None:
    p1 = V2(sim, "P1 meter")
    both = await p1.request(
        "PUT", "/api/batteries", json={"mode": "zero", "permissions": ["discharge_allowed"]}
    )
    assert both.status_code == 200
    assert (both.json()["mode"], both.json()["permissions"]) == ("zero", ["discharge_allowed"])
    none = await p1.request("PUT", "/api/batteries", json={"permissions": []})
    assert none.json()["mode"] == "standby"
    full = await p1.request("PUT", "/api/batteries", json={"mode": "to_full"})
    assert full.json()["permissions"] == []
    read_only = await p1.request("PUT", "/api/batteries", json={"permissions": ["charge_allowed"]})
    assert read_only.status_code == 400
    assert read_only.json() == {"error": "json:parameter-read-only:permissions"}
    leave = await p1.request(
        "PUT", "/api/batteries", json={"mode": "zero", "permissions": ["charge_allowed"]}
    )
    assert leave.json()["mode"] == "zero"


async def test_the_simulated_p1_is_paired(sim: Simulator) -> None:
    assert sim.state_dir is not None
    data = json.loads((sim.state_dir / "devices.sim.json").read_text())
    token = next(d for d in data["devices"] if d["device_type"] == "HWE-P1")["user_info"]["token"]
    assert DevicesConfig.model_validate(data).p1.battery_token == token
    assert (await V2(sim, "P1 meter", token).request("GET", "/api/batteries")).status_code == 200
    wrong = await V2(sim, "P1 meter", "AB12" * 8).request("GET", "/api/batteries")
    assert wrong.status_code == 401
