"""The actuator service for real: the simulated house's sockets over HTTP, a throwaway broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

from services.actuator.actuator import Actuator, ShellOptions
from services.simulator.server import DEVICES_FILE, Simulator
from services.simulator.settings import DeviceSettings, SimulatorSettings
from shared.clock import ManualClock
from shared.config import BrokerSettings, DevicesConfig, Settings, load_devices
from shared.messages import (
    MessageError,
    OverrideState,
    SocketCommand,
    SocketState,
    SwitchEvent,
    dump_message,
    parse_message,
)
from shared.service import Service, ServiceOptions
from shared.topics import Topics
from tests.conftest import MqttBroker

NOON = datetime(2024, 6, 21, 10, 0, tzinfo=UTC)
HOUSE = DevicesConfig.model_validate(
    {
        "devices": [
            {"device_name": "P1 meter", "device_type": "HWE-P1", "ip_address": "192.0.2.10"},
            {
                "device_name": "Boiler",
                "device_type": "HWE-SKT",
                "ip_address": "192.0.2.11",
                "max_power_usage": 2000,
                "energy_capacity": 6000,
                "daily_need": True,
            },
            {
                "device_name": "E-bike",
                "device_type": "HWE-SKT",
                "ip_address": "192.0.2.12",
                "max_power_usage": 300,
                "energy_capacity": 500,
            },
        ]
    }
)
FAST = ServiceOptions(
    status_interval_s=1.0,
    status_min_interval_s=0.1,
    reconnect_min_s=0.05,
    reconnect_max_s=0.4,
    publish_timeout_s=2.0,
    keepalive_s=5,
)
SHELL = ShellOptions(
    read_interval_s=0.1,
    read_timeout_s=2.0,
    switch_timeout_s=2.0,
    restore_timeout_s=5.0,
    restore_wait_s=0.4,
)


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    settings = SimulatorSettings(
        seed=3,
        cloudiness=0.0,
        devices={
            "Boiler": DeviceSettings(power_on=False, initial_fraction=0.2),
            "E-bike": DeviceSettings(power_on=False, initial_fraction=0.2),
        },
    )
    async with Simulator(
        HOUSE, clock=ManualClock(NOON), settings=settings, state_dir=tmp_path / "sim"
    ) as simulator:
        yield simulator


@pytest.fixture
def settings(mqtt_broker: MqttBroker, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.upper().startswith("HWSCHED_"):
            monkeypatch.delenv(name)
    tag = uuid.uuid4().hex[:10]
    return Settings(
        broker=BrokerSettings(
            host=mqtt_broker.host, port=mqtt_broker.port, client_id_prefix=f"test-{tag}"
        ),
        base_topic=f"act{tag}",
        actuator_read_interval_s=0.1,
    )


class Listener:
    """Every message under the base topic, as a subscriber sees it (retained ones first)."""

    def __init__(self, broker: MqttBroker, base: str) -> None:
        self.broker = broker
        self.base = base
        self.messages: list[tuple[str, bytes, bool]] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> Listener:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 5)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        ident = f"listen-{uuid.uuid4().hex[:8]}"
        async with aiomqtt.Client(self.broker.host, self.broker.port, identifier=ident) as c:
            await c.subscribe(f"{self.base}/#", qos=1)
            self._ready.set()
            async for m in c.messages:
                payload = m.payload if isinstance(m.payload, bytes) else b""
                self.messages.append((m.topic.value, payload, m.retain))

    def on(self, topic: str) -> list[bytes]:
        return [p for t, p, _ in self.messages if t == topic]

    async def wait(self, what: Callable[[], Any], within_s: float = 10.0) -> Any:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            got = what()
            if got:
                return got
            await asyncio.sleep(0.02)
        raise AssertionError(f"not seen within {within_s} s: {what}")

    def state(self, topic: str) -> SocketState | None:
        """The latest SocketState on `topic` (garbage published there by a test skipped)."""
        for payload in reversed(self.on(topic)):
            with contextlib.suppress(MessageError):
                return parse_message(SocketState, payload)
        return None


async def publish(broker: MqttBroker, topic: str, payload: bytes, *, retain: bool = False) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish(topic, payload, qos=1, retain=retain)


async def publish_many(broker: MqttBroker, items: list[tuple[str, bytes]]) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        for topic, payload in items:
            await client.publish(topic, payload, qos=1)


def command(name: str, state: str, reason: str = "plan step 3") -> bytes:
    now = datetime.now(UTC)
    return dump_message(
        SocketCommand(
            timestamp=now,
            socket=name,
            state=state,
            reason=reason,
            valid_until=now + timedelta(minutes=15),
        )
    )


class Running:
    """One actuator service on the simulated house."""

    def __init__(self, settings: Settings, sim: Simulator) -> None:
        assert sim.state_dir is not None
        self.devices = load_devices(sim.state_dir / DEVICES_FILE)
        self.service = Service("actuator", settings, options=FAST, version="test")
        self.actuator = Actuator(self.devices, self.service, shell=SHELL)
        self.task: asyncio.Task[int] | None = None

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.service.run(self.actuator.run))
        await asyncio.wait_for(self.service.wait_connected(), 5)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.service.request_stop()
            assert await asyncio.wait_for(self.task, 10) == 0

    @property
    def counters(self) -> dict[str, int]:
        return self.service.counters.snapshot()


def relay(sim: Simulator, name: str) -> bool:
    return sim.house.socket(name).power_on


async def hand_flip(sim: Simulator, slug: str, power_on: bool) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        reply = await client.post(
            f"{sim.control_url}/socket/{slug}/manual", json={"power_on": power_on}
        )
    assert reply.status_code == 200, reply.text


# --- tests ----------------------------------------------------------------------------------


async def test_commands_switch_for_real_and_the_interval_holds_the_next(
    mqtt_broker: MqttBroker, settings: Settings, sim: Simulator
) -> None:
    t = Topics(settings.base_topic)
    async with Listener(mqtt_broker, settings.base_topic) as seen, Running(settings, sim) as act:
        first = await seen.wait(lambda: seen.state(t.socket_state("boiler")))
        assert (first.power_on, first.controlled_by, first.desired) == (False, "plan", None)

        await publish(mqtt_broker, t.socket_set("boiler"), command("Boiler", "on"))
        await seen.wait(lambda: relay(sim, "Boiler"))
        event = parse_message(
            SwitchEvent, (await seen.wait(lambda: seen.on(t.switched("boiler"))))[0]
        )
        assert (event.from_state, event.to_state, event.reason) == ("off", "on", "plan")
        state = await seen.wait(
            lambda: (s := seen.state(t.socket_state("boiler"))) and s.power_on and s
        )
        assert state.last_switch_reason == "plan: plan step 3"
        assert state.last_switch_at is not None

        # a second command within the switch interval is held back, and says so
        await publish(mqtt_broker, t.socket_set("boiler"), command("Boiler", "off"))
        held = await seen.wait(
            lambda: (s := seen.state(t.socket_state("boiler"))) and s.desired == "off" and s
        )
        assert held.held_until == state.last_switch_at + timedelta(seconds=300)
        await asyncio.sleep(0.5)
        assert relay(sim, "Boiler") is True
        assert act.counters["switches"] == 1
        assert act.counters["switch_blocked_interval"] == 1
        assert sim.house.socket("Boiler").switched_by == "api"


async def test_override_switches_is_retained_and_a_hand_flip_becomes_an_override(
    mqtt_broker: MqttBroker, settings: Settings, sim: Simulator
) -> None:
    t = Topics(settings.base_topic)
    async with Listener(mqtt_broker, settings.base_topic) as seen, Running(settings, sim) as act:
        await seen.wait(lambda: seen.state(t.socket_state("e_bike")))
        await publish(mqtt_broker, t.override_set("e_bike"), b'{"state": "on", "duration_s": 600}')
        await seen.wait(lambda: relay(sim, "E-bike"))
        state = await seen.wait(
            lambda: (s := seen.state(t.socket_state("e_bike"))) and s.power_on and s
        )
        assert state.controlled_by == "override"
        event = parse_message(SwitchEvent, seen.on(t.switched("e_bike"))[-1])
        assert event.reason == "override"

        # the plan wants the boiler on; a person switches it off by hand: respected
        await publish(mqtt_broker, t.socket_set("boiler"), command("Boiler", "on"))
        await seen.wait(lambda: relay(sim, "Boiler"))
        await hand_flip(sim, "boiler", False)
        raw = await seen.wait(lambda: seen.on(t.override("boiler")))
        manual = parse_message(OverrideState, raw[-1])
        assert (manual.state, manual.source) == ("off", "manual-switch")
        await seen.wait(
            lambda: (s := seen.state(t.socket_state("boiler"))) and s.controlled_by == "manual"
        )
        await asyncio.sleep(0.4)
        assert relay(sim, "Boiler") is False  # not fought
        assert act.counters["hand_switches"] == 1

    # both overrides are retained: a late subscriber (HA, Node-RED) sees them
    async with Listener(mqtt_broker, settings.base_topic) as late:
        await late.wait(lambda: late.on(t.override("boiler")) and late.on(t.override("e_bike")))
        retained = {t: p for t, p, r in late.messages if r}
        assert parse_message(OverrideState, retained[t.override("e_bike")]).source == "mqtt"
        assert parse_message(OverrideState, retained[t.override("boiler")]).state == "off"


async def test_restart_keeps_last_switch_times_and_overrides(
    mqtt_broker: MqttBroker, settings: Settings, sim: Simulator
) -> None:
    t = Topics(settings.base_topic)
    async with Listener(mqtt_broker, settings.base_topic) as seen:
        async with Running(settings, sim):
            await seen.wait(lambda: seen.state(t.socket_state("boiler")))
            await publish(mqtt_broker, t.socket_set("boiler"), command("Boiler", "on"))
            await publish(mqtt_broker, t.override_set("e_bike"), b'{"state": "off"}')
            switched = await seen.wait(
                lambda: (s := seen.state(t.socket_state("boiler"))) and s.power_on and s
            )
            await seen.wait(lambda: seen.on(t.override("e_bike")))
        assert switched.last_switch_at is not None
        n_states = len(seen.on(t.socket_state("boiler")))

        async with Running(settings, sim) as again:
            await seen.wait(lambda: again.actuator.core.restoring is False)
            assert again.counters["restored_overrides"] >= 1
            assert again.counters["restored_states"] >= 2
            await publish(mqtt_broker, t.socket_set("boiler"), command("Boiler", "off"))
            await publish(mqtt_broker, t.socket_set("e_bike"), command("E-bike", "on"))
            held = await seen.wait(
                lambda: (s := seen.state(t.socket_state("boiler"))) and s.desired == "off" and s
            )
            assert held.last_switch_at == switched.last_switch_at
            assert held.held_until == switched.last_switch_at + timedelta(seconds=300)
            bike = await seen.wait(
                lambda: (s := seen.state(t.socket_state("e_bike"))) and s.desired == "off" and s
            )
            assert bike.controlled_by == "override"
            await asyncio.sleep(0.4)
            assert relay(sim, "Boiler") is True
            assert relay(sim, "E-bike") is False
            assert again.counters.get("hand_switches", 0) == 0
            assert again.counters.get("switches", 0) == 0
        assert len(seen.on(t.socket_state("boiler"))) > n_states


async def test_garbage_and_floods_are_counted_and_change_nothing(
    mqtt_broker: MqttBroker, settings: Settings, sim: Simulator
) -> None:
    t = Topics(settings.base_topic)
    async with Listener(mqtt_broker, settings.base_topic) as seen, Running(settings, sim) as act:
        await seen.wait(lambda: seen.state(t.socket_state("boiler")))
        await seen.wait(lambda: seen.state(t.socket_state("e_bike")))
        topics = [t.plan(), t.books(), t.surplus()]
        for slug in ("boiler", "e_bike"):
            topics += [
                t.socket_set(slug),
                t.override_set(slug),
                t.socket_state(slug),
                t.override(slug),
                t.measurement(slug),
            ]
        garbage = [
            b"",
            b"not json",
            b"\xff\xfe\x00",
            b"[1, 2]",
            b"{}",
            b'{"schema_version": 99}',
            json.dumps({"state": "on", "until": "yesterday"}).encode(),
            json.dumps({"state": "on", "duration_s": -5}).encode(),
            b'{"x": "' + b"a" * 20_000 + b'"}',
        ]
        await publish_many(mqtt_broker, [(topic, g) for topic in topics for g in garbage])
        expected = len(topics) * len(garbage)
        await seen.wait(
            lambda: (
                act.counters.get("messages_dropped", 0)
                + act.counters.get("messages_rate_limited", 0)
                >= expected
            )
        )
        # a flood of valid override requests: bounded in rate, the rest dropped and counted
        flood = [(t.override_set("e_bike"), b'{"state": "auto"}')] * 200
        await publish_many(mqtt_broker, flood)
        await seen.wait(lambda: act.counters.get("messages_rate_limited", 0) >= 150)
        assert act.task is not None
        assert not act.task.done()
        assert relay(sim, "Boiler") is False
        assert relay(sim, "E-bike") is False
        assert act.counters.get("switches", 0) == 0
        assert act.counters.get("handler_errors", 0) == 0
        assert all(c.hold is None for c in act.actuator.core.sockets.values())
        state = seen.state(t.socket_state("boiler"))
        assert state is not None
        assert (state.power_on, state.desired) == (False, None)
        # still alive and in control: a good command works at once
        await publish(mqtt_broker, t.socket_set("boiler"), command("Boiler", "on"))
        await seen.wait(lambda: relay(sim, "Boiler"))


async def test_start_up_leaves_sockets_alone_and_obeys_an_override_at_once(
    mqtt_broker: MqttBroker, settings: Settings, sim: Simulator
) -> None:
    """Issue 14.5: at start, the scheduler's no-forecast fallback-rule command switches
    nothing; an override published right after is obeyed at once (no switch interval)."""
    t = Topics(settings.base_topic)
    sim.house.set_socket("E-bike", power_on=True, by="start")
    async with Listener(mqtt_broker, settings.base_topic) as seen, Running(settings, sim) as act:
        await seen.wait(lambda: seen.state(t.socket_state("e_bike")))
        await publish(
            mqtt_broker, t.socket_set("e_bike"), command("E-bike", "off", reason="fallback-rule")
        )
        await seen.wait(lambda: act.counters.get("commands", 0) >= 1)
        state = await seen.wait(lambda: seen.state(t.socket_state("e_bike")))
        assert (state.power_on, state.desired, state.last_switch_at) == (True, None, None)
        assert relay(sim, "E-bike") is True

        await publish(mqtt_broker, t.override_set("e_bike"), b'{"state": "off"}')
        await seen.wait(lambda: not relay(sim, "E-bike"))
        event = parse_message(
            SwitchEvent, (await seen.wait(lambda: seen.on(t.switched("e_bike"))))[-1]
        )
        assert (event.to_state, event.reason) == ("off", "override")
        assert act.counters.get("switch_blocked_interval", 0) == 0
        assert act.counters["switches"] == 1


async def test_a_power_cut_is_not_taken_for_a_person(
    mqtt_broker: MqttBroker, settings: Settings, sim: Simulator
) -> None:
    """Issue 15.8, through the simulated house: the power goes, the sockets come back on
    (as after the simulator's restart); the actuator sees a restore, not a hand switch, and
    without a plan its fallback rule switches the optional socket (no surplus) off again."""
    t = Topics(settings.base_topic)
    clock = sim.clock
    assert isinstance(clock, ManualClock)
    async with Listener(mqtt_broker, settings.base_topic) as seen, Running(settings, sim) as act:
        await seen.wait(lambda: seen.state(t.socket_state("e_bike")))
        failed = act.counters.get("reads_failed", 0)
        async with httpx.AsyncClient(timeout=5) as client:
            reply = await client.post(
                f"{sim.control_url}/power_cut", json={"duration_s": 60, "relays": "on"}
            )
        assert reply.status_code == 200, reply.text
        # both sockets found unreachable by the actuator before the power comes back
        await seen.wait(lambda: act.counters.get("reads_failed", 0) >= failed + 2, 20)
        clock.advance(60)
        await seen.wait(lambda: act.counters.get("relay_restores", 0) >= 2, 20)
        await seen.wait(lambda: not relay(sim, "E-bike"), 20)
        raw = await seen.wait(lambda: seen.on(t.switched("e_bike")))
        event = parse_message(SwitchEvent, raw[-1])
        assert (event.from_state, event.to_state, event.reason) == ("on", "off", "fallback")
        assert sim.house.socket("E-bike").switched_by == "api"
        assert act.counters.get("hand_switches", 0) == 0
        manual = [
            o
            for p in seen.on(t.override("e_bike")) + seen.on(t.override("boiler"))
            if (o := parse_message(OverrideState, p)).source == "manual-switch"
        ]
        assert manual == []
