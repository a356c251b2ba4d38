"""The actuator's decisions (services.actuator.core), directly, on a ManualClock."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.actuator.actuator import TokenBucket
from services.actuator.core import (
    ActuatorCore,
    ActuatorOptions,
    FallbackInput,
    deadline,
    fallback_targets,
)
from shared.clock import ManualClock
from shared.config import DevicesConfig, SocketConfig
from shared.daytime import next_boundary
from shared.messages import (
    DeviceMeasurement,
    EnergyBooks,
    HouseSurplus,
    Message,
    MessageError,
    OverrideRequest,
    OverrideState,
    PlanMessage,
    SocketBook,
    SocketCommand,
    SocketPlan,
    SocketState,
    SwitchEvent,
    parse_message,
)
from shared.service import Counters
from shared.topics import Topics

TZ = ZoneInfo("Europe/Amsterdam")
BOUNDARY = time(6, 0)
T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)  # 12:00 local
NEXT_BOUNDARY = datetime(2024, 5, 2, 4, 0, tzinfo=UTC)  # 06:00 local
DAY_START = NEXT_BOUNDARY - timedelta(days=1)
DEVICES = DevicesConfig.model_validate(
    {
        "devices": [
            {"device_name": "P1 meter", "device_type": "HWE-P1", "ip_address": "10.0.0.1"},
            {
                "device_name": "Boiler",
                "device_type": "HWE-SKT",
                "ip_address": "10.0.0.2",
                "max_power_usage": 2000,
                "energy_capacity": 6000,
                "daily_need": True,
            },
            {
                "device_name": "E-bike",
                "device_type": "HWE-SKT",
                "ip_address": "10.0.0.3",
                "max_power_usage": 300,
                "energy_capacity": 500,
                "priority": 2,
            },
        ]
    }
)
BOILER, BIKE = DEVICES.sockets
TOPICS = Topics("t")


@dataclass
class Recorder:
    sent: list[tuple[str, Any]] = field(default_factory=list)

    def publish(self, topic: str, payload: Message | str) -> None:
        self.sent.append((topic, payload))

    def of(self, kind: type[Message]) -> list[Any]:
        return [p for _, p in self.sent if isinstance(p, kind)]

    def clear(self) -> None:
        self.sent.clear()


@dataclass
class Rig:
    clock: ManualClock
    core: ActuatorCore
    out: Recorder
    counters: Counters

    @property
    def now(self) -> datetime:
        return self.clock.now()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.core.tick(self.now)

    def command(self, slug: str, state: str, valid_s: float = 900, **kw: Any) -> bool:
        name = self.core.socket(slug).name
        cmd = SocketCommand(
            timestamp=self.now,
            socket=name,
            state=state,
            reason=kw.pop("reason", "plan step"),
            valid_until=self.now + timedelta(seconds=valid_s),
            **kw,
        )
        return self.core.on_command(slug, cmd, self.now)

    def override(self, slug: str, **request: Any) -> None:
        self.core.on_override_request(slug, OverrideRequest(**request), self.now)

    def read(self, slug: str, on: bool, lock: bool = False) -> None:
        self.core.observe(slug, on, lock, self.now)

    def run(self, slug: str) -> bool | None:
        """One cycle as the shell does it (the relay is read as it was left); the switch made."""
        self.core.tick(self.now)
        decision = self.core.step(slug, self.now)
        if decision.switch_to is not None:
            self.core.switched(slug, decision, self.now, decision.switch_to, False)
        self.core.publish_state(slug, self.now)
        return decision.switch_to

    def measure(self, slug: str, power_w: float, on: bool = True) -> None:
        c = self.core.socket(slug)
        m = DeviceMeasurement(
            timestamp=self.now,
            device=c.name,
            device_type="HWE-SKT",
            power_w=power_w,
            power_on=on,
            switch_lock=False,
            api="v1",
        )
        self.core.on_measurement(slug, m, self.now)

    def last_override(self, slug: str) -> OverrideState:
        return [p for t, p in self.out.sent if t == TOPICS.override(slug)][-1]  # type: ignore[no-any-return]

    def last_state(self, slug: str) -> SocketState:
        return [p for t, p in self.out.sent if t == TOPICS.socket_state(slug)][-1]  # type: ignore[no-any-return]


def make_rig(start: datetime = T0, restore: bool = True, speed: float = 1.0, **options: Any) -> Rig:
    clock = ManualClock(start)
    out = Recorder()
    counters = Counters()
    core = ActuatorCore(
        DEVICES.sockets,
        out,
        topics=TOPICS,
        counters=counters,
        tz=TZ,
        boundary=BOUNDARY,
        started_at=start,
        options=ActuatorOptions(**options),
        speed=speed,
    )
    if restore:
        core.finish_restore(start)
    return Rig(clock, core, out, counters)


# --- switching ------------------------------------------------------------------------------


def test_no_switch_when_the_state_already_matches() -> None:
    rig = make_rig()
    rig.read("boiler", True)
    assert rig.command("boiler", "on")
    assert rig.run("boiler") is None
    assert rig.out.of(SwitchEvent) == []
    state = rig.last_state("boiler")
    assert (state.power_on, state.desired, state.controlled_by) == (True, "on", "plan")


def test_nothing_asked_nothing_done() -> None:
    rig = make_rig()
    rig.read("boiler", False)
    assert rig.run("boiler") is None
    assert rig.last_state("boiler").desired is None


def test_switch_interval_counted_from_the_last_real_change() -> None:
    rig = make_rig()
    rig.read("boiler", False)
    rig.command("boiler", "on")
    assert rig.run("boiler") is True
    (event,) = rig.out.of(SwitchEvent)
    assert (event.from_state, event.to_state, event.reason, event.at) == ("off", "on", "plan", T0)
    assert rig.last_state("boiler").last_switch_reason == "plan: plan step"

    rig.advance(60)
    rig.read("boiler", True)
    rig.command("boiler", "off")
    assert rig.run("boiler") is None  # held back
    decision = rig.core.decide("boiler", rig.now)
    assert decision.blocked == "interval"
    assert decision.held_until == T0 + timedelta(seconds=300)
    assert rig.last_state("boiler").held_until == T0 + timedelta(seconds=300)
    rig.advance(239)
    assert rig.run("boiler") is None
    rig.advance(1)
    assert rig.run("boiler") is False
    assert rig.counters["switches_plan"] == 2
    assert rig.counters["switch_blocked_interval"] == 1  # one episode, counted once

    # a hand switch is a real change too: the interval counts from it
    rig.advance(400)
    rig.command("boiler", "on")
    rig.core.socket("boiler").last_switch_at = rig.now - timedelta(seconds=10)  # pretend held
    assert rig.run("boiler") is None
    rig.advance(5)
    rig.read("boiler", True)  # a person does what the plan wants: adopted, no override
    assert rig.core.socket("boiler").hold is None
    assert rig.core.socket("boiler").last_switch_at == rig.now
    rig.advance(60)
    rig.command("boiler", "off")
    assert rig.core.decide("boiler", rig.now).held_until == rig.now + timedelta(seconds=240)


def test_switch_lock_is_reported_not_fought() -> None:
    rig = make_rig()
    rig.read("boiler", True, lock=True)
    rig.command("boiler", "off")
    for _ in range(3):
        assert rig.run("boiler") is None
        rig.advance(10)
        rig.read("boiler", True, lock=True)
    assert rig.counters["switch_blocked_locked"] == 1
    state = rig.last_state("boiler")
    assert (state.power_on, state.switch_lock, state.desired) == (True, True, "off")
    # the lock goes: the switch is made
    rig.read("boiler", True, lock=False)
    assert rig.run("boiler") is False
    # a refused switch (the device says locked) changes nothing and is counted
    rig.core.switch_locked("e_bike", rig.now)
    assert rig.counters["switch_refused_locked"] == 1


def test_unknown_state_and_failed_switch_then_confirmed_by_a_read() -> None:
    rig = make_rig()
    rig.command("boiler", "on")
    assert rig.core.decide("boiler", rig.now).blocked == "unknown"  # never read yet
    rig.read("boiler", False)
    decision = rig.core.step("boiler", rig.now)
    assert decision.switch_to is True
    retry_at = rig.core.switch_failed("boiler", decision, rig.now)
    assert retry_at == T0 + timedelta(seconds=10)
    assert rig.core.decide("boiler", rig.now).blocked == "unknown"
    rig.advance(2)
    rig.read("boiler", True)  # it did switch (the answer was lost): ours, not a hand switch
    assert rig.core.socket("boiler").hold is None
    assert rig.counters["hand_switches"] == 0
    (event,) = rig.out.of(SwitchEvent)
    assert event.to_state == "on"
    assert rig.core.socket("boiler").last_switch_at == rig.now


def test_failed_switches_back_off() -> None:
    rig = make_rig(retry_min_s=10, retry_max_s=40)
    rig.read("boiler", False)
    rig.command("boiler", "on")
    delays = []
    for _ in range(4):
        rig.read("boiler", False)
        decision = rig.core.step("boiler", rig.now)
        assert decision.switch_to is True
        retry_at = rig.core.switch_failed("boiler", decision, rig.now)
        delays.append((retry_at - rig.now).total_seconds())
        rig.read("boiler", False)
        assert rig.core.decide("boiler", rig.now).blocked == "retry"
        rig.clock.set(retry_at)
    assert delays == [10, 20, 40, 40]


# --- overrides by MQTT ----------------------------------------------------------------------


def test_override_on_for_a_duration_then_expiry() -> None:
    rig = make_rig()
    rig.read("e_bike", False)
    rig.command("e_bike", "off")
    rig.override("e_bike", state="on", duration_s=600)
    published = rig.last_override("e_bike")
    assert (published.state, published.until, published.source) == (
        "on",
        T0 + timedelta(seconds=600),
        "mqtt",
    )
    assert rig.run("e_bike") is True
    assert rig.out.of(SwitchEvent)[-1].reason == "override"
    assert rig.last_state("e_bike").controlled_by == "override"
    rig.advance(599)
    rig.read("e_bike", True)
    rig.command("e_bike", "off")
    assert rig.run("e_bike") is None
    rig.advance(1)  # expired: back to the plan
    expired = rig.last_override("e_bike")
    assert (expired.state, expired.until, expired.source) == ("auto", None, "expiry")
    assert rig.run("e_bike") is False
    assert rig.counters["overrides_expired"] == 1


def test_override_until_and_default_is_the_next_boundary() -> None:
    rig = make_rig()
    rig.override("boiler", state="off", until=T0 + timedelta(hours=2))
    assert rig.core.socket("boiler").hold is not None
    assert rig.last_override("boiler").until == T0 + timedelta(hours=2)
    rig.override("boiler", state="off")
    assert rig.last_override("boiler").until == NEXT_BOUNDARY
    rig.clock.set(NEXT_BOUNDARY - timedelta(seconds=1))
    rig.core.tick(rig.now)
    assert rig.core.socket("boiler").hold is not None
    rig.clock.set(NEXT_BOUNDARY)
    rig.core.tick(rig.now)
    assert rig.core.socket("boiler").hold is None
    assert rig.last_override("boiler").source == "expiry"


def test_override_auto_ends_it_and_bad_leases_are_drops() -> None:
    rig = make_rig()
    rig.read("boiler", False)
    rig.command("boiler", "off")
    rig.override("boiler", state="on", duration_s=3600)
    assert rig.core.desired("boiler", rig.now).on is True
    rig.override("boiler", state="auto")
    assert rig.core.socket("boiler").hold is None
    assert rig.last_override("boiler").state == "auto"
    assert rig.last_override("boiler").source == "mqtt"
    assert rig.core.desired("boiler", rig.now).on is False
    with pytest.raises(MessageError, match="until"):
        rig.override("boiler", state="on", until=T0 - timedelta(minutes=1))
    assert rig.core.socket("boiler").hold is None


# --- hand switches --------------------------------------------------------------------------


def test_hand_switch_on_against_the_plan_is_manual_until_full() -> None:
    rig = make_rig()
    rig.read("boiler", False)
    rig.command("boiler", "off")
    rig.run("boiler")
    rig.advance(30)
    rig.read("boiler", True)  # a person presses the button
    hold = rig.last_override("boiler")
    assert (hold.state, hold.until, hold.source) == ("on", NEXT_BOUNDARY, "manual-switch")
    rig.command("boiler", "off")
    assert rig.run("boiler") is None  # not fought
    assert rig.last_state("boiler").controlled_by == "manual"
    assert rig.last_state("boiler").last_switch_reason == "manual-switch: switched on by hand"
    # drawing little right after the switch does not count (the element may not be on yet)
    rig.advance(10)
    rig.measure("boiler", 50)
    assert rig.core.socket("boiler").hold is not None
    rig.advance(600)
    rig.measure("boiler", 1990)
    assert rig.core.socket("boiler").hold is not None
    rig.advance(3600)
    rig.measure("boiler", 150)  # < 10 % of 2000 W: full
    assert rig.core.socket("boiler").hold is None
    assert (rig.last_override("boiler").state, rig.last_override("boiler").source) == (
        "auto",
        "expiry",
    )
    assert rig.counters["manual_full"] == 1
    assert rig.run("boiler") is False  # back to the plan


def test_hand_switch_on_never_full_ends_at_the_boundary() -> None:
    rig = make_rig()
    rig.read("boiler", False)
    rig.command("boiler", "off")
    rig.read("boiler", True)
    assert rig.core.socket("boiler").hold is not None
    rig.clock.set(NEXT_BOUNDARY)
    rig.core.tick(rig.now)
    assert rig.core.socket("boiler").hold is None
    assert rig.last_override("boiler").source == "expiry"


def test_hand_switch_off_against_the_plan_is_an_override_cleared_by_auto() -> None:
    rig = make_rig()
    rig.read("boiler", True)
    rig.command("boiler", "on")
    rig.run("boiler")
    rig.advance(100)
    rig.read("boiler", False)
    hold = rig.last_override("boiler")
    assert (hold.state, hold.until, hold.source) == ("off", NEXT_BOUNDARY, "manual-switch")
    rig.command("boiler", "on")
    assert rig.run("boiler") is None
    assert rig.last_state("boiler").controlled_by == "manual"
    rig.advance(60)
    rig.override("boiler", state="auto")  # a person gives it back
    assert rig.last_override("boiler").state == "auto"
    decision = rig.core.decide("boiler", rig.now)
    assert decision.desired.on is True
    assert decision.blocked == "interval"  # the hand switch was a real change
    assert decision.held_until == T0 + timedelta(seconds=400)
    rig.clock.set(T0 + timedelta(seconds=400))
    rig.command("boiler", "on")
    assert rig.run("boiler") is True


def test_hand_switch_without_any_plan_is_held_too() -> None:
    rig = make_rig()
    rig.read("e_bike", True)
    rig.read("e_bike", False)
    assert rig.last_override("e_bike").state == "off"
    assert rig.counters["hand_switches"] == 1


# --- power cuts -----------------------------------------------------------------------------


def test_a_relay_changed_while_unreachable_is_a_restore_not_a_person() -> None:
    """Issue 15.8: the socket could not be read (a power cut), then reads on: the plan
    decides it at once; no hand-switch hold, no override published."""
    rig = make_rig()
    rig.read("e_bike", False)
    rig.core.on_plan(plan_at(T0, [1]), T0)  # the boiler is planned; the e-bike off by command
    rig.command("e_bike", "off")
    assert rig.run("e_bike") is None
    rig.advance(10)
    rig.core.read_failed("e_bike")
    rig.advance(60)
    rig.read("e_bike", True)  # back, on
    assert rig.counters["relay_restores"] == 1
    assert rig.counters["hand_switches"] == 0
    assert rig.core.socket("e_bike").hold is None
    assert not [p for t, p in rig.out.sent if t == TOPICS.override("e_bike")]
    assert rig.run("e_bike") is False  # re-applied at once
    assert rig.last_state("e_bike").controlled_by == "plan"


def test_after_a_restore_without_a_plan_an_optional_socket_runs_only_on_surplus() -> None:
    rig = make_rig()
    rig.read("e_bike", False)
    rig.read("boiler", False)
    rig.advance(10)
    rig.core.read_failed("e_bike")
    rig.core.read_failed("boiler")
    rig.advance(60)
    rig.read("e_bike", True)
    rig.read("boiler", True)
    # no plan, no command: the fallback rule decides what came back changed
    assert rig.core.desired("e_bike", rig.now).controlled_by == "fallback"
    assert rig.run("e_bike") is False
    assert rig.out.of(SwitchEvent)[-1].reason == "fallback"
    assert "power cut" in str(rig.core.socket("e_bike").last_switch_reason)
    assert rig.run("boiler") is False  # needed, but not due at noon and no surplus
    # with surplus enough, it would have stayed on
    rig2 = make_rig()
    rig2.read("e_bike", False)
    rig2.core.read_failed("e_bike")
    rig2.core.on_surplus(
        HouseSurplus(timestamp=T0, surplus_w=500.0, p1_power_w=-500.0, based_on=["P1 meter"])
    )
    rig2.read("e_bike", True)
    assert rig2.run("e_bike") is None
    assert rig2.core.desired("e_bike", rig2.now).on is True


def test_a_hand_switch_with_the_socket_reachable_is_still_a_person() -> None:
    rig = make_rig()
    rig.read("e_bike", False)
    rig.core.read_failed("e_bike")
    rig.read("e_bike", False)  # back as it was: nothing
    rig.advance(10)
    rig.read("e_bike", True)  # then a person
    assert rig.counters["hand_switches"] == 1
    assert rig.core.socket("e_bike").hold is not None


# --- restart --------------------------------------------------------------------------------


def test_restore_last_switch_and_overrides_then_ignore_echoes() -> None:
    rig = make_rig(restore=False)
    switched_at = T0 - timedelta(seconds=100)
    rig.core.restore_state(
        "boiler",
        SocketState(
            timestamp=T0,
            socket="Boiler",
            power_on=True,
            switch_lock=False,
            controlled_by="plan",
            last_switch_at=switched_at,
            last_switch_reason="plan: x",
        ),
    )
    rig.core.restore_override(
        "e_bike",
        OverrideState(
            timestamp=T0,
            socket="E-bike",
            state="off",
            until=T0 + timedelta(hours=1),
            source="mqtt",
            set_at=T0 - timedelta(minutes=5),
        ),
    )
    with pytest.raises(MessageError, match="not the socket"):
        rig.core.restore_override(
            "boiler",
            OverrideState(timestamp=T0, socket="E-bike", state="auto", source="mqtt", set_at=T0),
        )
    rig.core.finish_restore(T0)
    assert rig.out.sent == []  # nothing published while restoring
    rig.read("boiler", True)  # as before the restart: no hand switch
    assert rig.counters["hand_switches"] == 0
    rig.command("boiler", "off")
    decision = rig.core.decide("boiler", rig.now)
    assert (decision.blocked, decision.held_until) == ("interval", switched_at + timedelta(0, 300))
    rig.read("e_bike", False)
    rig.command("e_bike", "on")
    assert rig.run("e_bike") is None
    assert rig.last_state("e_bike").controlled_by == "override"
    # our own retained messages coming back later change nothing
    echo = OverrideState(timestamp=T0, socket="E-bike", state="auto", source="mqtt", set_at=T0)
    assert not rig.core.restore_override("e_bike", echo)
    assert rig.core.socket("e_bike").hold is not None


def test_restored_state_differing_from_the_relay_is_a_hand_switch() -> None:
    rig = make_rig(restore=False)
    rig.core.restore_state(
        "boiler", SocketState(timestamp=T0, socket="Boiler", power_on=False, controlled_by="plan")
    )
    rig.core.finish_restore(T0)
    rig.read("boiler", True)
    assert rig.last_override("boiler").source == "manual-switch"


def test_restored_override_already_expired_is_cleared() -> None:
    rig = make_rig(restore=False)
    rig.core.restore_override(
        "boiler",
        OverrideState(
            timestamp=T0,
            socket="Boiler",
            state="on",
            until=T0 - timedelta(minutes=1),
            source="manual-switch",
            set_at=T0 - timedelta(hours=3),
        ),
    )
    rig.core.finish_restore(T0)
    rig.core.tick(T0)
    assert rig.core.socket("boiler").hold is None
    assert rig.last_override("boiler").source == "expiry"


# --- start-up -------------------------------------------------------------------------------


def test_start_up_without_a_forecast_plan_leaves_sockets_as_they_are() -> None:
    """Issue 14.5: the scheduler's no-forecast fallback-rule output switches nothing at start
    (no switch interval begins), and an override right after is obeyed at once."""
    rig = make_rig()
    rig.read("boiler", True)
    rig.read("e_bike", True)
    fallback_plan = plan_at(T0, [0]).model_copy(update={"planner": "fallback-rule"})
    assert rig.core.on_plan(fallback_plan, rig.now)
    assert rig.core.desired("boiler", rig.now).on is None  # the plan alone: the same
    assert rig.command("boiler", "off", reason="fallback-rule")
    assert rig.command("e_bike", "off", reason="fallback-rule")
    rig.advance(6)
    assert rig.run("boiler") is None
    assert rig.run("e_bike") is None
    assert rig.out.of(SwitchEvent) == []
    state = rig.last_state("e_bike")
    assert (state.power_on, state.desired, state.last_switch_at) == (True, None, None)
    rig.advance(4)
    rig.override("e_bike", state="off")
    assert rig.run("e_bike") is False  # at once: no start-up switch began an interval
    assert rig.last_state("e_bike").controlled_by == "override"
    assert rig.run("boiler") is None  # still left as it is


def test_start_up_ends_at_the_first_forecast_plan() -> None:
    rig = make_rig()
    rig.read("e_bike", True)
    assert rig.command("e_bike", "off", reason="fallback-rule")
    assert rig.run("e_bike") is None
    rig.advance(6)
    assert rig.command("e_bike", "off", reason="plan")
    assert rig.core.quiet_until is None
    assert rig.run("e_bike") is False
    # once over, the scheduler's fallback rule is obeyed like any plan
    rig.advance(600)
    rig.read("e_bike", False)
    assert rig.command("e_bike", "on", reason="fallback-rule")
    assert rig.run("e_bike") is True


def test_start_up_ends_after_the_fallback_delay() -> None:
    rig = make_rig(fallback_after_s=900)
    rig.read("e_bike", True)
    rig.command("e_bike", "off", reason="fallback-rule")
    assert rig.run("e_bike") is None
    assert rig.core.next_wake("e_bike", rig.now) == T0 + timedelta(seconds=900)
    rig.advance(899)
    rig.command("e_bike", "off", reason="fallback-rule")
    assert rig.run("e_bike") is None
    rig.advance(1)
    rig.command("e_bike", "off", reason="fallback-rule")
    assert rig.run("e_bike") is False


def test_start_up_switches_a_needed_socket_on_at_its_latest_start() -> None:
    """The fallback rule's deadline: an empty boiler (3 h to fill, 30 min margin) at 03:00."""
    start = NEXT_BOUNDARY - timedelta(hours=3)
    rig = make_rig(start)
    rig.read("boiler", False)
    rig.read("e_bike", True)
    rig.command("boiler", "on", reason="fallback-rule")
    rig.command("e_bike", "off", reason="fallback-rule")
    assert rig.run("boiler") is True
    assert rig.last_state("boiler").controlled_by == "fallback"
    assert rig.run("e_bike") is None


def test_a_socket_the_start_up_rule_switched_on_is_not_left_on_after_its_day() -> None:
    """Started at 05:50 without books, still starting at the boundary (the first plan on a
    forecast not in yet): the needed boiler switched on for the day ending at 06:00 is not
    left on for the new day, whose deadline is far off; a socket it never switched is."""
    rig = make_rig(NEXT_BOUNDARY - timedelta(minutes=10))
    rig.read("boiler", False)
    rig.read("e_bike", True)
    rig.command("boiler", "on", reason="fallback-rule")
    rig.command("e_bike", "off", reason="fallback-rule")
    assert rig.run("boiler") is True
    assert "needed by" in (rig.last_state("boiler").last_switch_reason or "")
    rig.read("boiler", True)
    rig.advance(11 * 60)  # the new day, still starting up
    assert rig.core.quiet_until is not None
    assert rig.now < rig.core.quiet_until
    rig.read("boiler", True)
    rig.read("e_bike", True)
    rig.command("boiler", "off", reason="fallback-rule")
    rig.command("e_bike", "off", reason="fallback-rule")
    assert rig.run("boiler") is False
    state = rig.last_state("boiler")
    assert state.power_on is False
    assert "start-up deadline over" in (state.last_switch_reason or "")
    assert [e.reason for e in rig.out.of(SwitchEvent)] == ["fallback", "fallback"]
    assert rig.run("e_bike") is None  # never switched by the rule: left as it is


# --- commands and plans ---------------------------------------------------------------------


def test_stale_wrong_and_out_of_order_commands() -> None:
    rig = make_rig()
    stale = SocketCommand(
        timestamp=T0 - timedelta(hours=1), socket="Boiler", state="on", reason="old"
    )
    assert not rig.core.on_command("boiler", stale, T0)
    expired = SocketCommand(
        timestamp=T0, socket="Boiler", state="on", reason="x", valid_until=T0 - timedelta(1)
    )
    assert not rig.core.on_command("boiler", expired, T0)
    assert rig.counters["commands_stale"] == 2
    with pytest.raises(MessageError, match="not the socket"):
        rig.core.on_command(
            "boiler", SocketCommand(timestamp=T0, socket="E-bike", state="on", reason="x"), T0
        )
    rig.advance(10)
    assert rig.command("boiler", "on")
    late = SocketCommand(
        timestamp=T0 + timedelta(seconds=5), socket="boiler", state="off", reason="late"
    )
    assert not rig.core.on_command("boiler", late, rig.now)
    assert rig.core.desired("boiler", rig.now).on is True


def plan_at(made_at: datetime, boiler: list[int]) -> PlanMessage:
    n = len(boiler)
    return PlanMessage(
        timestamp=made_at,
        made_at=made_at,
        start=made_at,
        step_s=900,
        sockets={"Boiler": SocketPlan(states=boiler, energy_wh=[0.0] * n)},
        battery_power_w=[0.0] * n,
        battery_energy_wh=[0.0] * n,
        planner="reference",
        status="heuristic",
        solve_s=0.0,
        available_power_w=[0.0] * n,
    )


def test_the_plan_applies_between_commands_while_fresh() -> None:
    rig = make_rig(fallback_after_s=1800)
    rig.read("boiler", False)
    assert rig.core.on_plan(plan_at(T0, [0, 1, 1, 0]), T0)
    rig.command("boiler", "off", valid_s=900)
    assert rig.core.desired("boiler", rig.now).on is False
    rig.advance(900)  # the command ran out; the plan's step 1 says on
    desired = rig.core.desired("boiler", rig.now)
    assert (desired.on, desired.detail) == (True, "plan step 1")
    assert not rig.core.on_plan(plan_at(T0 - timedelta(hours=1), [0]), rig.now)
    rig.advance(900)  # the plan is no longer fresh: the fallback decides
    assert rig.core.desired("boiler", rig.now).controlled_by == "fallback"


# --- fallback -------------------------------------------------------------------------------


def test_latest_start_and_fallback_rule() -> None:
    end = NEXT_BOUNDARY
    assert deadline(FallbackInput(BOILER, 0), end, 1800, end)[1] == end - timedelta(hours=3.5)
    assert deadline(FallbackInput(BOILER, 4000), end, 0, end)[1] == end - timedelta(hours=1)
    assert deadline(FallbackInput(BOILER, 6000), end, 0, end) == (False, None)
    early = end - timedelta(hours=4)
    items = [FallbackInput(BOILER), FallbackInput(BIKE)]
    assert {k: v[0] for k, v in fallback_targets(items, None, early, end, 1800).items()} == {
        "Boiler": False,
        "E-bike": False,
    }
    # surplus covers the boiler first (priority 1), the bike with what is left
    got = fallback_targets(items, 2400, early, end, 1800)
    assert (got["Boiler"][0], got["E-bike"][0]) == (True, True)
    got = fallback_targets(items, 2200, early, end, 1800)
    assert (got["Boiler"][0], got["E-bike"][0]) == (True, False)
    # late: the boiler is on by its deadline (no surplus), the optional bike never
    late = end - timedelta(hours=3.5)
    got = fallback_targets(items, 0, late, end, 1800)
    assert (got["Boiler"][0], got["E-bike"][0]) == (True, False)
    # full sockets stay off; a held-on socket takes its draw from the surplus first
    full = [FallbackInput(BOILER, 6000, True), FallbackInput(BIKE)]
    assert fallback_targets(full, 2400, late, end, 1800)["Boiler"] == (False, "full")
    held = [FallbackInput(BOILER, held=True, drawing_w=2000), FallbackInput(BIKE)]
    got = fallback_targets(held, 2200, early, end, 1800)
    assert "Boiler" not in got
    assert got["E-bike"][0] is False


def through_the_night(
    rig: Rig, energy_wh: float, *, draw_w: float, step_s: int
) -> tuple[float, datetime | None]:
    """Step to a minute before the boundary, the poller measuring the 6 kWh boiler: `draw_w`
    while on and not full, 10 W once full. Its energy then, and when it was first switched on."""
    boiler = rig.core.socket("boiler")
    on_at = None
    while rig.now < NEXT_BOUNDARY - timedelta(minutes=1):
        rig.advance(step_s)
        if boiler.power_on:
            energy_wh = min(6000.0, energy_wh + draw_w * step_s / 3600)
        on = bool(boiler.power_on)
        drawing = (draw_w if energy_wh < 6000 else 10.0) if on else 0.0
        rig.measure("boiler", drawing, on=on)
        if rig.run("boiler") and on_at is None:
            on_at = rig.now
        rig.read("boiler", bool(boiler.power_on))
    return energy_wh, on_at


def test_fallback_fills_the_needed_socket_before_the_boundary_then_hands_back() -> None:
    rig = make_rig(fallback_after_s=900, fallback_margin_s=1800, switch_interval_s=300)
    boiler = rig.core.socket("boiler")
    rig.read("boiler", False)
    rig.read("e_bike", False)
    rig.command("boiler", "off")
    # the scheduler said 2 kWh is in (its books), then died
    rig.core.on_books(
        EnergyBooks(
            timestamp=T0,
            day_start=DAY_START,
            sockets={"Boiler": SocketBook(name="Boiler", day_start=DAY_START, energy_wh=2000)},
        ),
        T0,
    )
    rig.advance(899)
    assert not rig.core.fallback_active
    rig.advance(1)
    assert rig.core.fallback_active
    assert rig.counters["fallback_activations"] == 1
    assert rig.run("boiler") is None  # 4 kWh at 2 kW + 30 min: from 01:30 UTC
    assert rig.last_state("boiler").controlled_by == "fallback"
    # a surplus that covers the bike (not the boiler) switches the bike on
    rig.core.on_surplus(
        HouseSurplus(timestamp=rig.now, surplus_w=500, p1_power_w=-500, based_on=["P1 meter"])
    )
    assert rig.run("e_bike") is True
    assert rig.out.of(SwitchEvent)[-1].reason == "fallback"
    # through the night, minute by minute, with the poller's measurements
    energy, on_at = through_the_night(rig, 2000.0, draw_w=2000.0, step_s=60)
    assert on_at == datetime(2024, 5, 2, 1, 30, tzinfo=UTC)
    assert energy == pytest.approx(6000.0)
    assert rig.core.books.book("Boiler").full
    assert boiler.power_on is False  # switched off once it read full
    assert boiler.last_switch_reason == "fallback: full"
    # the scheduler returns: control goes back
    rig.command("boiler", "on", reason="top up")
    rig.core.tick(rig.now)
    assert not rig.core.fallback_active
    assert rig.counters["fallback_handbacks"] == 1
    assert rig.core.desired("boiler", rig.now).controlled_by == "plan"
    assert rig.run("boiler") is True
    assert rig.last_state("boiler").last_switch_reason == "plan: top up"


def test_fallback_keeps_a_socket_drawing_more_than_configured_on_until_full() -> None:
    """A boiler configured at 2000 W that draws 2300 W: its books fill faster than the latest
    start assumes, so the latest start moves later while it is on. It must stay on until it
    reads full, not go off after each switch interval and fall behind its deadline."""
    rig = make_rig(fallback_after_s=900, fallback_margin_s=1800, switch_interval_s=300)
    boiler = rig.core.socket("boiler")
    rig.read("boiler", False)
    rig.read("e_bike", False)
    rig.command("boiler", "off")
    rig.advance(900)
    assert rig.core.fallback_active
    energy, _ = through_the_night(rig, 0.0, draw_w=2300.0, step_s=30)
    switches = [(e.to_state, e.at) for e in rig.out.of(SwitchEvent) if e.socket == "Boiler"]
    assert [state for state, _ in switches] == ["on", "off"], switches
    assert switches[0][1] == NEXT_BOUNDARY - timedelta(hours=3, minutes=30)
    assert energy == pytest.approx(6000.0)
    assert boiler.last_switch_reason == "fallback: full"


def test_fallback_without_books_assumes_empty_and_ignores_stale_surplus() -> None:
    rig = make_rig(fallback_after_s=900)
    rig.clock.set(NEXT_BOUNDARY - timedelta(hours=3, minutes=29))
    rig.core.on_surplus(
        HouseSurplus(
            timestamp=rig.now - timedelta(hours=1),
            surplus_w=5000,
            p1_power_w=-5000,
            based_on=["P1 meter"],
        )
    )
    rig.core.tick(rig.now)
    assert rig.core.desired("boiler", rig.now).on is True  # 6 kWh / 2 kW + 30 min
    assert rig.core.desired("e_bike", rig.now).on is False  # the surplus is an hour old


def test_books_merge_keeps_the_later_sample_and_refuses_another_day() -> None:
    rig = make_rig()
    rig.measure("boiler", 2000)
    rig.advance(1800)
    rig.measure("boiler", 2000)
    assert rig.core.books.book("Boiler").energy_wh == pytest.approx(1000)
    older = EnergyBooks(
        timestamp=T0,
        day_start=DAY_START,
        sockets={
            "Boiler": SocketBook(
                name="Boiler", day_start=DAY_START, energy_wh=100, last_sample_at=T0
            )
        },
    )
    rig.core.on_books(older, rig.now)
    assert rig.core.books.book("Boiler").energy_wh == pytest.approx(1000)
    with pytest.raises(MessageError, match="later day"):
        rig.core.on_books(
            EnergyBooks(timestamp=T0, day_start=NEXT_BOUNDARY + timedelta(days=1)), rig.now
        )


def test_messages_published_are_valid_and_state_only_on_change() -> None:
    rig = make_rig()
    rig.read("boiler", False)
    rig.command("boiler", "on")
    rig.run("boiler")
    before = len(rig.out.sent)
    rig.read("boiler", True)
    assert not rig.core.publish_state("boiler", rig.now)
    assert len(rig.out.sent) == before
    for topic, message in rig.out.sent:
        spec_match = TOPICS.match(topic)
        assert spec_match is not None
        assert spec_match[0].model is type(message)
        assert parse_message(type(message), message.model_dump_json()) == message


def test_token_bucket() -> None:
    bucket = TokenBucket(3, 1.0, 0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(0.5)
    assert bucket.take(1.0)
    assert not bucket.take(1.0)


def test_options_from_settings() -> None:
    from shared.config import Settings

    settings = Settings(switch_interval_s=120, fallback_after_s=600, fallback_margin_s=0)
    options = ActuatorOptions.from_settings(settings)
    assert (options.switch_interval_s, options.fallback_after_s, options.fallback_margin_s) == (
        120,
        600,
        0,
    )
    assert next_boundary(T0, TZ, BOUNDARY) == NEXT_BOUNDARY
    assert isinstance(BOILER, SocketConfig)


# --- silence on an accelerated clock (issue 15.5) -------------------------------------------


def _speed_rig(speed: float) -> Rig:
    """At `speed`, without the allowance for work (these tests are about the limit itself
    and what is said of it; the allowance: the tests after them)."""
    rig = make_rig(speed=speed, work_allowance_s=0.0)
    rig.read("boiler", False)
    return rig


def test_plans_that_keep_up_never_hand_over_to_the_fallback() -> None:
    """A scheduler whose plans come 200 s (simulated) after they are made, every 300 s:
    no fallback over a day's morning, whatever the speed."""
    rig = _speed_rig(600)
    for i in range(24):
        made = rig.now
        rig.advance(200)
        assert rig.core.on_plan(plan_at(made, [0] * 4), rig.now)
        rig.advance(100)
        assert rig.run("boiler") is None
        assert not rig.core.fallback_active, i
    assert rig.counters["fallback_activations"] == 0


def test_plans_too_slow_for_the_speed_keep_the_fallback_without_flipping(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Plans that come 1000 s after they are made (at 600x: 1.7 s of real planning) are too
    old to use: the fallback rule stays in control, said once, with what it means."""
    rig = _speed_rig(600)
    caplog.set_level("INFO", logger="hwsched.actuator")
    rig.advance(900)
    assert rig.core.fallback_active
    for _ in range(10):
        made = rig.now
        rig.advance(1000)
        rig.core.on_plan(plan_at(made, [0] * 4), rig.now)
        rig.run("boiler")
        assert rig.core.fallback_active
    assert rig.counters["fallback_activations"] == 1
    assert rig.counters["fallback_handbacks"] == 0
    assert rig.counters["plans_stale_on_arrival"] == 10
    text = [r.getMessage() for r in caplog.records]
    (activation,) = [t for t in text if "fallback rule in control" in t]
    assert "for 15 min" in activation
    assert "at 600x that is 1.5 s of real time" in activation
    (stale,) = [t for t in text if "too old to use" in t]
    assert "came 17 min after it was made" in stale
    assert "1.7 s of real time: the scheduler does not keep up at this speed" in stale
    # a plan in time again: handed back, and said how long the fallback ran
    rig.core.on_plan(plan_at(rig.now, [0] * 4), rig.now)
    rig.run("boiler")
    assert not rig.core.fallback_active
    (back,) = [r.getMessage() for r in caplog.records if "handed back" in r.getMessage()]
    assert "after 167 min on the fallback rule" in back


def test_real_speed_messages_do_not_talk_of_speed(caplog: pytest.LogCaptureFixture) -> None:
    rig = _speed_rig(1.0)
    caplog.set_level("INFO", logger="hwsched.actuator")
    rig.advance(900)
    (activation,) = [r.getMessage() for r in caplog.records if "in control" in r.getMessage()]
    assert "real time" not in activation
    assert "none since the start at" in activation  # nothing came: no "last made at"


def test_a_plan_that_came_late_says_so_when_it_hands_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = _speed_rig(600)
    caplog.set_level("INFO", logger="hwsched.actuator")
    rig.advance(900)
    made = rig.now
    rig.advance(800)  # planned for 800 s (1.3 s of real time at 600x)
    rig.core.on_plan(plan_at(made, [0] * 4), rig.now)
    rig.run("boiler")
    (back,) = [r.getMessage() for r in caplog.records if "handed back" in r.getMessage()]
    assert "13 min before it came" in back


def plan_of(made_at: datetime, rows: dict[str, list[int]]) -> PlanMessage:
    """A plan made at `made_at` from then on, in 15-min steps."""
    n = max(len(r) for r in rows.values())
    return plan_at(made_at, [0] * n).model_copy(
        update={
            "sockets": {k: SocketPlan(states=r, energy_wh=[0.0] * len(r)) for k, r in rows.items()}
        }
    )


def _stalling_scheduler(rig: Rig, stalls: int) -> int:
    """An hour per stall of a scheduler at 300x that plans every 30 s (0.1 real s), the
    e-bike off, on a sunny surplus (1000 W: the fallback rule would switch the e-bike on),
    and each hour falls silent for 1500 s (5 real s: a busy machine); the e-bike's switches."""
    switches = 0
    for _ in range(stalls):
        for k in range(120):  # 3600 s in 30-s polls; silent from the 60th for 1500 s
            if not 60 <= k < 110:
                rig.core.on_plan(plan_of(rig.now, {"Boiler": [0] * 4, "E-bike": [0] * 4}), rig.now)
            rig.core.on_surplus(
                HouseSurplus(
                    timestamp=rig.now, surplus_w=1000.0, p1_power_w=-1000.0, based_on=["P1 meter"]
                ),
                rig.now,
            )
            rig.read("e_bike", bool(rig.core.socket("e_bike").power_on))
            if rig.run("e_bike") is not None:
                switches += 1
            rig.advance(30)
    return switches


def test_at_300x_a_busy_scheduler_keeps_control_with_the_allowance_for_work() -> None:
    """The fallback's limit of silence grows by the allowance for work at an accelerated
    speed (issue 14, bench-loop: the e-bike switched 7 times in an hour at 300x when the
    scheduler was a few real seconds late): the same silences without the allowance hand
    the e-bike to the fallback rule and back, every hour."""
    calm = make_rig(speed=300.0)  # the default allowance: 10 real s
    assert calm.core.silence_s == pytest.approx(900 + 10 * 299)
    calm.read("e_bike", False)
    assert _stalling_scheduler(calm, 3) == 0
    assert calm.counters["fallback_activations"] == 0
    restless = make_rig(speed=300.0, work_allowance_s=0.0)
    assert restless.core.silence_s == 900
    restless.read("e_bike", False)
    assert _stalling_scheduler(restless, 3) == 6  # on under the fallback, off under the plan
    assert restless.counters["fallback_activations"] == 3


def test_the_allowance_for_work_is_nothing_at_real_speed() -> None:
    """At real speed (and on any clock without a speed) the fallback takes over after exactly
    `fallback_after_s`; at 300x after it plus 10 real s of work (2990 simulated s)."""
    for speed, silence in ((1.0, 900.0), (0.5, 900.0), (300.0, 3890.0)):
        rig = make_rig(speed=speed)
        assert rig.core.silence_s == pytest.approx(silence)
        assert rig.core.next_wake("boiler", rig.now) == T0 + timedelta(seconds=silence)
        rig.core.on_plan(plan_of(rig.now, {"Boiler": [0] * 8}), rig.now)
        rig.advance(silence - 1)
        assert not rig.core.fallback_active
        assert rig.core.desired("boiler", rig.now).controlled_by == "plan"
        rig.advance(1)
        assert rig.core.fallback_active, speed
        assert rig.core.desired("boiler", rig.now).controlled_by == "fallback"


THREE = DevicesConfig.model_validate(
    {
        "devices": [
            *DEVICES.model_dump(mode="json", exclude_none=True)["devices"],
            {
                "device_name": "Kitchen",
                "device_type": "HWE-SKT",
                "ip_address": "10.0.0.4",
                "max_power_usage": 1000,
                "energy_capacity": 2000,
                "daily_need": True,
            },
        ]
    }
)


def _three_rig() -> Rig:
    rig = make_rig()
    rig.core = ActuatorCore(
        THREE.sockets,
        rig.out,
        topics=TOPICS,
        counters=rig.counters,
        tz=TZ,
        boundary=BOUNDARY,
        started_at=T0,
        options=ActuatorOptions(together_s=30),
    )
    rig.core.finish_restore(T0)
    return rig


def test_every_socket_changed_at_once_is_a_restore_even_without_a_failed_read() -> None:
    """A cut shorter than a read interval: no read failed, but the sockets all came on within
    seconds of each other. The first was taken for a person; the others show it was not."""
    rig = _three_rig()
    for slug in ("boiler", "e_bike", "kitchen"):
        rig.read(slug, False)
    rig.advance(600)
    rig.read("boiler", True)  # one, then two while the third is off: people, for now
    assert rig.core.socket("boiler").hold is not None
    assert rig.last_override("boiler").source == "manual-switch"
    rig.advance(4)
    rig.read("e_bike", True)
    rig.advance(3)
    rig.read("kitchen", True)  # every socket now on: a restore, all three
    for slug in ("boiler", "e_bike", "kitchen"):
        c = rig.core.socket(slug)
        assert (c.hold, c.came_back, c.last_switch_at) == (None, True, None), slug
    assert rig.last_override("boiler").state == "auto"
    assert rig.counters["hand_switches"] == 2  # the boiler's and the e-bike's, withdrawn
    assert rig.counters["hand_switches_undone"] == 2
    assert rig.counters["relay_restores"] == 3
    assert rig.run("e_bike") is False  # the optional socket: no plan, no surplus: off


def test_two_people_or_a_partial_change_stay_hand_switches() -> None:
    rig = _three_rig()
    for slug in ("boiler", "e_bike", "kitchen"):
        rig.read(slug, False)
    rig.advance(600)
    rig.read("boiler", True)
    rig.advance(5)
    rig.read("e_bike", True)  # the kitchen is still off: people
    assert rig.counters["hand_switches"] == 2
    assert rig.core.socket("e_bike").hold is not None
    rig.advance(60)
    rig.read("kitchen", True)  # long after: a person too
    assert rig.counters["hand_switches"] == 3
    assert rig.counters["relay_restores"] == 0


def meter(at: datetime, booted_at: datetime | None) -> DeviceMeasurement:
    return DeviceMeasurement(
        timestamp=at,
        device="P1 meter",
        device_type="HWE-P1",
        power_w=-500.0,
        api="v1",
        booted_at=booted_at,
    )


def test_a_relay_changed_around_the_meters_new_boot_is_a_restore() -> None:
    """A cut too short for a failed read that changed one socket only: the P1 meter's new
    boot time (its API v2 uptime from 0) tells it from a person, in either order."""
    rig = _three_rig()
    for slug in ("boiler", "e_bike", "kitchen"):
        rig.read(slug, slug != "e_bike")  # the e-bike off, the others on
    rig.core.on_meter(meter(rig.now, T0 - timedelta(days=3)), rig.now)  # its boot: known
    rig.advance(600)
    # the house's power back: the meter booted, then the e-bike found on (all on now, but
    # the others did not change: not "all at once")
    rig.core.on_meter(meter(rig.now, rig.now - timedelta(seconds=5)), rig.now)
    assert rig.counters["meter_restarts"] == 1
    rig.advance(10)
    rig.read("e_bike", True)
    c = rig.core.socket("e_bike")
    assert (c.hold, c.came_back) == (None, True)
    assert rig.counters["hand_switches"] == 0
    assert rig.counters["relay_restores"] == 1
    assert rig.run("e_bike") is False  # optional, no plan, no surplus: off again
    # long after the restart, a change is a person again
    rig.advance(3600)
    rig.read("e_bike", True)
    assert rig.counters["hand_switches"] == 1
    assert rig.core.socket("e_bike").hold is not None


def test_a_hand_switch_withdrawn_when_the_meters_new_boot_comes_after_it() -> None:
    rig = _three_rig()
    for slug in ("boiler", "e_bike", "kitchen"):
        rig.read(slug, slug != "e_bike")
    rig.core.on_meter(meter(rig.now, T0 - timedelta(days=3)), rig.now)
    rig.advance(600)
    cut_over = rig.now
    rig.read("e_bike", True)  # seen first: taken for a person
    assert rig.core.socket("e_bike").hold is not None
    assert rig.last_override("e_bike").source == "manual-switch"
    rig.advance(30)  # the poller's next P1 reading: booted when the power came back
    rig.core.on_meter(meter(rig.now, cut_over - timedelta(seconds=3)), rig.now)
    c = rig.core.socket("e_bike")
    assert (c.hold, c.came_back) == (None, True)
    assert rig.last_override("e_bike").state == "auto"
    assert rig.counters["hand_switches_undone"] == 1
    # the same boot read again changes nothing; no boot time (API v1 only) neither
    rig.core.on_meter(meter(rig.now, cut_over - timedelta(seconds=3)), rig.now)
    rig.core.on_meter(meter(rig.now, None), rig.now)
    assert rig.counters["meter_restarts"] == 1


def test_a_meter_reading_from_another_device_or_the_future_is_refused() -> None:
    rig = _three_rig()
    with pytest.raises(MessageError):
        rig.core.on_meter(meter(rig.now + timedelta(hours=1), None), rig.now)
    with pytest.raises(MessageError):
        rig.core.on_meter(meter(rig.now, rig.now + timedelta(hours=1)), rig.now)
    socket = DeviceMeasurement(
        timestamp=rig.now, device="Boiler", device_type="HWE-SKT", power_w=0.0, api="v1"
    )
    with pytest.raises(MessageError):
        rig.core.on_meter(socket, rig.now)
    assert rig.core.meter_booted_at is None
