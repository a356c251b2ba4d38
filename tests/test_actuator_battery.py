"""The actuator's battery control: the mode mapping, its decisions (pure), and the shell
against the simulated house's P1 meter (its real API v2 over TLS)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.actuator.battery import (
    DEVICE_MODES,
    BatteryCore,
    BatteryOptions,
    BatteryShell,
    next_request,
    plan_mode,
)
from services.simulator.server import Simulator
from services.simulator.settings import SimulatorSettings
from shared.clock import ManualClock
from shared.homewizard import BatteriesState, V2Client
from shared.messages import (
    BatteryCommand,
    BatteryOverrideRequest,
    BatteryState,
    Message,
    MessageError,
    parse_message,
)
from shared.planning.problem import BATTERY_MODES, BatteryMode
from shared.service import Counters, RateLimitedLog
from shared.topics import Topics
from tests.test_simulator import BAT1_TOKEN, NIGHT, devices

AMS = ZoneInfo("Europe/Amsterdam")
T0 = NIGHT  # midnight in Amsterdam


class Publisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Message]] = []

    def publish(self, topic: str, payload: Message) -> None:
        self.sent.append((topic, payload))

    def states(self) -> list[BatteryState]:
        return [m for _, m in self.sent if isinstance(m, BatteryState)]


def core_at(
    now: datetime, *, token: bool = True, speed: float = 1.0, **options: Any
) -> tuple[BatteryCore, Publisher]:
    pub = Publisher()
    core = BatteryCore(
        pub,
        topics=Topics("t"),
        counters=Counters(),
        tz=AMS,
        boundary=datetime.strptime("06:00", "%H:%M").time(),
        started_at=now,
        has_token=token,
        options=BatteryOptions(**options),
        speed=speed,
    )
    core.finish_restore()
    return core, pub


def device(mode: str, permissions: list[str] | None = None) -> BatteriesState:
    return BatteriesState(mode=mode, permissions=permissions)


def command(mode: BatteryMode, at: datetime, valid_s: float = 90) -> BatteryCommand:
    return BatteryCommand(
        timestamp=at, mode=mode, reason="plan step 0", valid_until=at + timedelta(seconds=valid_s)
    )


# --- the mapping --------------------------------------------------------------------------------


def test_plan_modes_to_the_device_and_back() -> None:
    for mode in BATTERY_MODES:
        device_mode, permissions = DEVICE_MODES[mode]
        assert plan_mode(device(device_mode, list(permissions))) == mode
    assert plan_mode(device("zero", [])) == "standby"
    assert plan_mode(device("zero")) == "zero"  # API 2.1: no permissions
    assert plan_mode(device("predictive", ["charge_allowed"])) is None
    assert plan_mode(device("something_new")) is None


def test_one_field_per_request() -> None:
    # from standby to charge_only: the mode first, then the permissions
    assert next_request("charge_only", device("standby", [])) == {"mode": "zero"}
    both = device("zero", ["charge_allowed", "discharge_allowed"])
    assert next_request("charge_only", both) == {"permissions": ["charge_allowed"]}
    assert next_request("to_full", both) == {"mode": "to_full"}
    assert next_request("standby", both) == {"mode": "standby"}
    assert next_request("zero", device("to_full", [])) == {"mode": "zero"}
    assert next_request("zero", device("zero", ["charge_allowed"])) == {
        "permissions": ["charge_allowed", "discharge_allowed"]
    }


# --- deciding -------------------------------------------------------------------------------------


def test_no_token_leaves_the_batteries_alone() -> None:
    core, pub = core_at(T0, token=False)
    core.observe(device("standby", []), T0)
    decision = core.decide(T0 + timedelta(hours=1))
    assert decision.switch_to is None
    assert decision.desire.controlled_by == "none"
    assert core.shutdown_target() is None
    core.publish_state(T0)
    assert pub.states()[-1].controlled_by == "none"


def test_the_command_then_silence_then_zero() -> None:
    core, _ = core_at(T0)
    core.observe(device("zero", ["charge_allowed", "discharge_allowed"]), T0)
    # right after start, before any command: nothing yet
    assert core.decide(T0 + timedelta(seconds=30)).desire.reason == "waiting for the scheduler"
    assert core.on_command(command("charge_only", T0 + timedelta(seconds=40)), T0)
    d = core.decide(T0 + timedelta(seconds=40))
    assert (d.switch_to, d.desire.controlled_by) == ("charge_only", "plan")
    core.switched("charge_only", d.desire, device("zero", ["charge_allowed"]), T0)
    # the command expires: zero, once the switch interval allows
    later = T0 + timedelta(seconds=200)
    d = core.decide(later)
    assert (d.desire.mode, d.desire.controlled_by, d.blocked) == ("zero", "fallback", "interval")
    assert d.held_until == T0 + timedelta(seconds=300)
    d = core.decide(T0 + timedelta(seconds=300))
    assert d.switch_to == "zero"
    # an older command is ignored; a command from the future is a drop
    assert not core.on_command(command("to_full", T0), T0 + timedelta(seconds=301))
    with pytest.raises(MessageError):
        core.on_command(command("to_full", T0 + timedelta(hours=1)), T0 + timedelta(seconds=301))


def test_a_mode_set_in_the_app_is_held_until_the_boundary_or_auto() -> None:
    core, _ = core_at(T0)
    core.observe(device("zero", ["charge_allowed", "discharge_allowed"]), T0)
    core.on_command(command("zero", T0), T0)
    at = T0 + timedelta(minutes=10)
    core.on_command(command("zero", at, valid_s=3600), at)
    core.observe(device("to_full", []), at)  # someone pressed "charge to full" in the app
    d = core.decide(at)
    assert (d.desire.mode, d.desire.controlled_by) == (None, "app")
    assert core.hold is not None
    assert core.hold.until == datetime(2024, 6, 22, 6, 0, tzinfo=AMS)
    assert core.shutdown_target() is None  # a person's mode is left on shutdown too
    state = core.state(at, d)
    assert (state.controlled_by, state.device_mode, state.held_until) == (
        "app",
        "to_full",
        core.hold.until,
    )
    with pytest.raises(MessageError, match="state"):
        parse_message(BatteryOverrideRequest, b'{"state": "on"}')
    core.on_override(parse_message(BatteryOverrideRequest, b'{"state": "auto"}'), at)
    d = core.decide(at + timedelta(minutes=5))
    assert (d.desire.controlled_by, d.switch_to) == ("plan", "zero")


def test_to_full_ending_by_itself_is_nobodys_doing_and_not_restarted() -> None:
    core, _ = core_at(T0)
    core.observe(device("zero", ["charge_allowed", "discharge_allowed"]), T0)
    core.on_command(command("to_full", T0, valid_s=3600), T0)
    d = core.decide(T0)
    core.switched("to_full", d.desire, device("to_full", []), T0)
    core.observe(
        device("zero", ["charge_allowed", "discharge_allowed"]), T0 + timedelta(minutes=20)
    )
    assert core.hold is None
    assert core.to_full_done
    assert core.decide(T0 + timedelta(minutes=30)).switch_to is None
    # a new mode asked, then to_full again: it runs again
    core.on_command(
        command("zero", T0 + timedelta(minutes=31), valid_s=3600), T0 + timedelta(minutes=31)
    )
    core.on_command(
        command("to_full", T0 + timedelta(minutes=32), valid_s=3600), T0 + timedelta(minutes=32)
    )
    assert core.decide(T0 + timedelta(minutes=32)).switch_to == "to_full"


def test_failures_back_off_and_restore_keeps_the_interval_and_the_hold() -> None:
    core, _ = core_at(T0)
    core.observe(device("standby", []), T0)
    core.on_command(command("zero", T0), T0)
    assert core.switch_failed(T0) == T0 + timedelta(seconds=10)
    assert core.device is None
    core.observe(device("standby", []), T0 + timedelta(seconds=1))
    assert core.decide(T0 + timedelta(seconds=5)).blocked == "retry"
    assert core.switch_failed(T0 + timedelta(seconds=10)) == T0 + timedelta(seconds=30)
    # a restart: the retained state gives the last change and a person's hold back
    fresh = BatteryCore(
        Publisher(),
        topics=Topics("t"),
        counters=Counters(),
        tz=AMS,
        boundary=datetime.strptime("06:00", "%H:%M").time(),
        started_at=T0,
        has_token=True,
    )
    held = BatteryState(
        timestamp=T0,
        mode="to_full",
        device_mode="to_full",
        controlled_by="app",
        last_change_at=T0 - timedelta(minutes=1),
        held_until=T0 + timedelta(hours=6),
    )
    assert fresh.restore_state(held, T0)
    assert fresh.hold is not None
    assert fresh.last_change_at == T0 - timedelta(minutes=1)
    with pytest.raises(MessageError):
        fresh.restore_state(held.model_copy(update={"held_until": T0 + timedelta(days=9)}), T0)
    fresh.finish_restore()
    assert not fresh.restore_state(held, T0)


# --- the shell against the simulated P1 meter ------------------------------------------------


class Runtime:
    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.counters = Counters()
        self.log = logging.getLogger("test.battery")
        self.rate_limited = RateLimitedLog(self.log, clock)


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    async with Simulator(
        devices(batteries=1, sockets=0),
        clock=ManualClock(NIGHT),
        settings=SimulatorSettings(seed=2, cloudiness=0.0, initial_soc=0.5),
        state_dir=tmp_path,
    ) as simulator:
        yield simulator


def shell_for(sim: Simulator, clock: ManualClock) -> tuple[BatteryShell, Publisher, Runtime]:
    pub = Publisher()
    rt = Runtime(clock)
    core = BatteryCore(
        pub,
        topics=Topics("t"),
        counters=rt.counters,
        tz=AMS,
        boundary=datetime.strptime("06:00", "%H:%M").time(),
        started_at=clock.now(),
        has_token=True,
        options=BatteryOptions(switch_interval_s=300),
    )
    core.finish_restore()
    p1 = sim.device("P1 meter")

    def factory() -> Any:
        return V2Client(
            sim.host, BAT1_TOKEN, p1.v2_port, product_type="HWE-P1", ca_file=sim.ca_path
        )

    return BatteryShell(core, rt, factory, read_interval_s=1.0), pub, rt


@pytest.mark.parametrize("mode", BATTERY_MODES)
async def test_each_commanded_mode_reaches_the_house(sim: Simulator, mode: BatteryMode) -> None:
    clock = ManualClock(NIGHT)
    shell, pub, rt = shell_for(sim, clock)
    shell.core.on_command(command(mode, clock.now()), clock.now())
    factory = shell._factory
    assert factory is not None
    async with factory() as client:
        await shell._cycle(client)
    group = sim.house.battery_group()
    assert (group["mode"], tuple(group["permissions"])) == DEVICE_MODES[mode]
    state = pub.states()[-1]
    assert (state.mode, state.desired, state.controlled_by) == (mode, mode, "plan")
    expected_switches = 0 if mode == "zero" else 1
    assert rt.counters.get("battery_switches") == expected_switches


async def test_app_change_is_held_and_shutdown_puts_zero_back(sim: Simulator) -> None:
    clock = ManualClock(NIGHT)
    shell, pub, _ = shell_for(sim, clock)
    core = shell.core
    core.on_command(command("discharge_only", clock.now(), valid_s=3600), clock.now())
    factory = shell._factory
    assert factory is not None
    async with factory() as client:
        await shell._cycle(client)
        assert sim.house.control.permissions == frozenset({"discharge_allowed"})
        # a person sets standby in the app
        sim.house.set_battery_control(mode="standby")
        clock.advance(400)
        await shell._cycle(client)
        assert pub.states()[-1].controlled_by == "app"
        assert sim.house.control.mode == "standby"  # respected
        core.on_override(BatteryOverrideRequest(state="auto"), clock.now())
        clock.advance(400)
        await shell._cycle(client)
        assert sim.house.control.permissions == frozenset({"discharge_allowed"})
        # stopping: back to zero
        await shell._shutdown(client)
    assert sim.house.control.mode == "zero"
    assert sim.house.control.permissions == frozenset({"charge_allowed", "discharge_allowed"})
    assert pub.states()[-1].controlled_by == "fallback"


async def test_the_running_shell_stops_with_zero(sim: Simulator) -> None:
    clock = ManualClock(NIGHT)
    shell, _, _ = shell_for(sim, clock)
    shell.core.on_command(command("standby", clock.now(), valid_s=3600), clock.now())
    task = asyncio.create_task(shell.run())
    for _ in range(200):
        await asyncio.sleep(0.02)
        if sim.house.control.mode == "standby":
            break
    assert sim.house.control.mode == "standby"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sim.house.control.mode == "zero"


class StuckAnswer:
    """A P1 client whose first `set_batteries` is applied but never answers (the actuator
    is stopped while it waits): the race of the test above made certain."""

    def __init__(self, inner: V2Client) -> None:
        self.inner = inner
        self.applied = asyncio.Event()
        self.calls = 0

    async def __aenter__(self) -> StuckAnswer:
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.inner.__aexit__(*exc)

    async def batteries(self) -> BatteriesState:
        return await self.inner.batteries()

    async def set_batteries(self, **kw: Any) -> BatteriesState:
        self.calls += 1
        answer = await self.inner.set_batteries(**kw)
        if self.calls == 1:
            self.applied.set()
            await asyncio.Event().wait()  # the answer never comes
        return answer


async def test_stopped_in_the_middle_of_a_switch_it_still_ends_in_zero(sim: Simulator) -> None:
    clock = ManualClock(NIGHT)
    shell, _, _ = shell_for(sim, clock)
    p1 = sim.device("P1 meter")
    stuck = StuckAnswer(
        V2Client(sim.host, BAT1_TOKEN, p1.v2_port, product_type="HWE-P1", ca_file=sim.ca_path)
    )
    shell._factory = lambda: stuck  # type: ignore[assignment]
    shell.core.on_command(command("standby", clock.now(), valid_s=3600), clock.now())
    task = asyncio.create_task(shell.run())
    await asyncio.wait_for(stuck.applied.wait(), 30)
    assert sim.house.control.mode == "standby"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sim.house.control.mode == "zero"


async def test_an_unreachable_p1_is_counted_and_nothing_breaks(sim: Simulator) -> None:
    clock = ManualClock(NIGHT)
    shell, pub, rt = shell_for(sim, clock)
    shell.core.on_command(command("standby", clock.now()), clock.now())
    await sim.set_gone(sim.device("P1 meter"), True)
    factory = shell._factory
    assert factory is not None
    async with factory() as client:
        await shell._cycle(client)
    assert rt.counters.get("battery_reads_failed") == 1
    assert pub.states()[-1].mode is None


def test_a_p1_without_permissions_runs_charge_only_as_zero() -> None:
    core, _ = core_at(T0)
    core.observe(device("standby"), T0)  # API 2.1: no permissions field
    core.on_command(command("charge_only", T0), T0)
    assert core.decide(T0).switch_to == "zero"
    core.observe(device("zero"), T0)
    assert core.decide(T0).switch_to is None  # zero stands in: nothing more to do


class OldP1:
    """A P1 meter of API 2.1: modes, no permissions."""

    def __init__(self) -> None:
        self.state = BatteriesState(mode="standby")
        self.bodies: list[dict[str, Any]] = []

    async def batteries(self) -> BatteriesState:
        return self.state

    async def set_batteries(
        self, *, mode: str | None = None, permissions: Any = None
    ) -> BatteriesState:
        self.bodies.append({"mode": mode, "permissions": permissions})
        self.state = BatteriesState(mode=mode or self.state.mode)
        return self.state


async def test_the_shell_on_an_old_p1_counts_the_unsupported_mode() -> None:
    clock = ManualClock(T0)
    rt = Runtime(clock)
    core = BatteryCore(
        Publisher(),
        topics=Topics("t"),
        counters=rt.counters,
        tz=AMS,
        boundary=datetime.strptime("06:00", "%H:%M").time(),
        started_at=T0,
        has_token=True,
    )
    core.finish_restore()
    old = OldP1()
    shell = BatteryShell(core, rt, None)
    core.on_command(command("discharge_only", T0), T0)
    await shell._cycle(old)
    assert old.bodies == [{"mode": "zero", "permissions": None}]
    assert rt.counters.get("battery_mode_unsupported") == 1


def test_a_command_stays_fresh_for_the_allowance_for_work_at_an_accelerated_speed() -> None:
    """As the sockets' fallback: at 300x a command 1500 simulated s old (5 real s of a busy
    machine) is still the plan's; at real speed it is stale after `fallback_after_s`."""
    late = command("to_full", T0, valid_s=6 * 3600)
    for speed, after_s, by in ((1.0, 1500, "fallback"), (300.0, 1500, "plan")):
        core, _ = core_at(T0, speed=speed)
        assert core.on_command(late, T0)
        assert core.desired(T0 + timedelta(seconds=899)).controlled_by == "plan"
        assert core.desired(T0 + timedelta(seconds=after_s)).controlled_by == by, speed
    core, _ = core_at(T0, speed=300.0)  # 900 + 10 real s x 299
    core.on_command(late, T0)
    assert core.desired(T0 + timedelta(seconds=3889)).controlled_by == "plan"
    assert core.desired(T0 + timedelta(seconds=3890)).controlled_by == "fallback"
