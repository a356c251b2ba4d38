"""Home Assistant discovery payloads, the next planned on-time, and the bridge on a real broker."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import pytest

from services.bridge.bridge import Bridge, BridgeOptions
from shared.clock import ManualClock
from shared.config import BrokerSettings, DevicesConfig, Settings
from shared.homeassistant import (
    ORIGIN_NAME,
    SERVICES,
    DiscoveryConfig,
    config_topic,
    device_id_from_topic,
    discovery_configs,
    is_stale_config,
    next_boundary,
    next_on,
    node_id,
)
from shared.messages import (
    BatteryOverrideRequest,
    BatteryState,
    CostSummary,
    DeviceMeasurement,
    EnergyBooks,
    HouseSurplus,
    Message,
    OverrideRequest,
    OverrideState,
    PlanMessage,
    SocketBook,
    SocketNextOn,
    SocketPlan,
    SocketState,
    dump_message,
    parse_message,
)
from shared.service import Service, ServiceOptions
from shared.topics import Topics
from tests.conftest import MqttBroker
from tests.mqtt_helpers import retained_once

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
P1 = {"device_name": "P1 meter", "device_type": "HWE-P1", "ip_address": "192.0.2.10"}
BOILER = {
    "device_name": "Kitchen boiler",
    "device_type": "HWE-SKT",
    "ip_address": "192.0.2.11",
    "max_power_usage": 2000,
    "energy_capacity": 6000,
    "daily_need": True,
}
#: A name with a quote, an accent and a brace pair: it must survive the Jinja templates.
CAFE = {
    "device_name": 'Café "Zuid" {{x}}',
    "device_type": "HWE-SKT",
    "ip_address": "192.0.2.12",
    "max_power_usage": 300,
    "energy_capacity": 500,
}
BATTERY = {
    "device_name": "Battery",
    "device_type": "HWE-BAT",
    "ip_address": "192.0.2.13",
    "max_power_usage": 800,
    "energy_capacity": 2700,
    "user_info": {"name": "local/hwsched", "token": "0" * 32},
}
HOUSE = DevicesConfig.model_validate({"devices": [P1, BOILER, CAFE, BATTERY]})
SETTINGS = Settings()
QUICK = BridgeOptions(announce_delay_min_s=0.05, announce_delay_max_s=0.15)
ID = re.compile(r"^[a-zA-Z0-9_-]+$")


def configs(settings: Settings = SETTINGS, devices: DevicesConfig = HOUSE) -> list[DiscoveryConfig]:
    return discovery_configs(settings, devices, version="1.2.3", support_url="https://x.example")


def components() -> list[tuple[DiscoveryConfig, str, dict[str, Any]]]:
    return [(c, key, comp) for c in configs() for key, comp in c.payload["components"].items()]


# --- the payloads -----------------------------------------------------------------------------


def test_one_device_per_homewizard_device_plus_the_hub() -> None:
    got = {c.device_id: c.topic for c in configs()}
    assert got == {
        "hwsched": "homeassistant/device/hwsched/config",
        "hwsched_kitchen_boiler": "homeassistant/device/hwsched_kitchen_boiler/config",
        "hwsched_cafe_zuid_x": "homeassistant/device/hwsched_cafe_zuid_x/config",
        "hwsched_battery": "homeassistant/device/hwsched_battery/config",
    }
    for c in configs():
        assert json.loads(c.data()) == c.payload
        assert device_id_from_topic(SETTINGS, c.topic) == c.device_id


def test_device_and_origin_blocks() -> None:
    hub, boiler, cafe, battery = configs()
    for c in (hub, boiler, cafe, battery):
        assert c.payload["origin"] == {
            "name": ORIGIN_NAME,
            "sw_version": "1.2.3",
            "support_url": "https://x.example",
        }
        assert c.payload["device"]["identifiers"] == [c.device_id]
        assert c.payload["device"]["name"]
    assert hub.payload["device"]["name"] == "hwsched"
    assert boiler.payload["device"]["name"] == "Kitchen boiler"
    assert cafe.payload["device"]["name"] == 'Café "Zuid" {{x}}'
    for c in (boiler, cafe, battery):
        assert c.payload["device"]["via_device"] == "hwsched"
    plain = discovery_configs(SETTINGS, HOUSE, version="1.2.3")
    assert plain[0].payload["origin"] == {"name": ORIGIN_NAME, "sw_version": "1.2.3"}


def test_the_entities_asked_for() -> None:
    hub, boiler, _, battery = configs()
    platforms = {k: v["platform"] for k, v in boiler.payload["components"].items()}
    assert platforms == {
        "switch": "switch",
        "auto": "button",
        "override": "sensor",
        "controlled_by": "sensor",
        "power": "sensor",
        "energy_stored": "sensor",
        "next_on": "sensor",
    }
    hub_keys = set(hub.payload["components"])
    money = {
        "import_price",
        "export_price",
        "import_today",
        "export_today",
        "cost_today",
        "plan_cost",
        "reference_cost",
        "savings",
    }
    batteries = {"battery_mode_planned", "battery_mode", "battery_control", "battery_auto"}
    assert hub_keys == {"surplus", *(f"service_{s}" for s in SERVICES), *money, *batteries}
    without = discovery_configs(
        SETTINGS, DevicesConfig.model_validate({"devices": [P1, BOILER]}), version="1"
    )
    assert set(without[0].payload["components"]) == hub_keys - batteries
    assert set(battery.payload["components"]) == {"state_of_charge", "power"}
    units = {
        (c.device_id, k): (v.get("device_class"), v.get("unit_of_measurement"))
        for c in (hub, boiler, battery)
        for k, v in c.payload["components"].items()
    }
    assert units["hwsched", "surplus"] == ("power", "W")
    assert units["hwsched_kitchen_boiler", "power"] == ("power", "W")
    assert units["hwsched_kitchen_boiler", "energy_stored"] == ("energy_storage", "Wh")
    assert units["hwsched_kitchen_boiler", "next_on"] == ("timestamp", None)
    assert units["hwsched_battery", "state_of_charge"] == ("battery", "%")
    assert units["hwsched", "service_scheduler"] == ("connectivity", None)


def test_every_entity_has_an_id_availability_and_a_platform() -> None:
    ids = [comp["unique_id"] for _, _, comp in components()]
    assert len(ids) == len(set(ids))
    for config, key, comp in components():
        assert ID.match(key)
        assert ID.match(comp["unique_id"])
        assert comp["unique_id"] == f"{config.device_id}_{key}"
        assert comp["platform"] in {"switch", "button", "sensor", "binary_sensor"}
        assert comp["qos"] == 1
        assert comp["availability_mode"] == "all"
        assert comp["availability"], comp
        for entry in comp["availability"]:
            assert entry["payload_available"] == "online"
            assert entry["payload_not_available"] == "offline"


def test_every_topic_is_a_topic_of_the_layout() -> None:
    topics = Topics(SETTINGS.base_topic)
    for _, _, comp in components():
        for key in ("state_topic", "command_topic", "json_attributes_topic"):
            if key in comp:
                assert topics.match(comp[key]) is not None, (key, comp[key])
        for entry in comp["availability"]:
            found = topics.match(entry["topic"])
            assert found is not None, entry
            assert found[0].name in {"availability", "device_availability"}
        if "command_topic" in comp:
            found = topics.match(comp["command_topic"])
            assert found is not None
            assert found[0].name in {"override_set", "batteries_override_set"}
            assert comp["retain"] is False  # commands are never retained
    services = {
        topics.match(e["topic"])[1].get("service")
        for _, _, comp in components()
        for e in comp["availability"]
        if topics.match(e["topic"])[0].name == "availability"
    }
    assert services == set(SERVICES)


def test_commands_are_real_override_requests() -> None:
    boiler = configs()[1].payload["components"]
    switch, auto = boiler["switch"], boiler["auto"]
    assert switch["payload_on"] == '{"state":"on"}'
    assert switch["payload_off"] == '{"state":"off"}'
    assert auto["payload_press"] == '{"state":"auto"}'
    for payload, state in (
        (switch["payload_on"], "on"),
        (switch["payload_off"], "off"),
        (auto["payload_press"], "auto"),
    ):
        assert parse_message(OverrideRequest, payload).state == state
    # the switch shows the relay as the actuator reports it, not the command
    assert switch["state_topic"] == "hwsched/kitchen_boiler"
    back = configs()[0].payload["components"]["battery_auto"]
    assert back["command_topic"] == "hwsched/batteries/override/set"
    assert parse_message(BatteryOverrideRequest, back["payload_press"]).state == "auto"
    assert (switch["state_on"], switch["state_off"]) == ("ON", "OFF")


def test_other_base_topic_and_prefix() -> None:
    settings = Settings(base_topic="home/energy", ha_discovery_prefix="ha")
    got = configs(settings)
    assert node_id(settings) == "home_energy"
    assert [c.topic for c in got][:2] == [
        "ha/device/home_energy/config",
        "ha/device/home_energy_kitchen_boiler/config",
    ]
    assert got[0].payload["device"]["name"] == "hwsched (home/energy)"
    surplus = got[0].payload["components"]["surplus"]
    assert surplus["unique_id"] == "home_energy_surplus"
    assert surplus["state_topic"] == "home/energy/surplus"
    with pytest.raises(ValueError, match="discovery id"):
        config_topic(settings, "a/b")
    assert device_id_from_topic(settings, "homeassistant/device/x/config") is None
    assert device_id_from_topic(settings, "ha/device/a+b/config") is None


# --- the templates against real payloads ------------------------------------------------------

COST = CostSummary(
    timestamp=T0,
    day_start=T0 - timedelta(hours=4),
    import_now_eur_kwh=0.2735,
    export_now_eur_kwh=-0.021,
    prices_source="entsoe",
    import_today_kwh=3.25,
    export_today_kwh=7.5,
    cost_today_eur=0.42,
    plan_cost_eur=0.8,
    reference_cost_eur=1.1,
    savings_eur=0.3,
)
EMPTY_COST = CostSummary(timestamp=T0, day_start=T0 - timedelta(hours=4))
#: Each money entity and what the summary above renders to.
MONEY_FIELDS = {
    "import_price": "0.2735",
    "export_price": "-0.021",
    "import_today": "3.25",
    "export_today": "7.5",
    "cost_today": "0.42",
    "plan_cost": "0.8",
    "reference_cost": "1.1",
    "savings": "0.3",
}
BATTERIES = BatteryState(
    timestamp=T0,
    mode="standby",
    device_mode="standby",
    permissions=[],
    controlled_by="plan",
    desired="charge_only",
)
NO_BATTERIES = BatteryState(timestamp=T0, controlled_by="none")


def state_of(key: str, socket: str = "Kitchen boiler") -> dict[str, Message]:
    """Real example payloads for a component's state topic, by case name."""
    measurement = DeviceMeasurement(
        timestamp=T0,
        device=socket,
        device_type="HWE-SKT",
        power_w=1200.5,
        power_on=True,
        api="v1",
    )
    state = SocketState(timestamp=T0, socket=socket, power_on=True, controlled_by="plan")
    book = SocketBook(name=socket, day_start=T0, energy_wh=2500.0)
    cases: dict[str, dict[str, Message]] = {
        "switch": {
            "on": state,
            "off": state.model_copy(update={"power_on": False}),
            "unknown": state.model_copy(update={"power_on": None}),
        },
        "controlled_by": {"plan": state},
        "power": {"reading": measurement},
        "energy_stored": {
            "booked": EnergyBooks(timestamp=T0, day_start=T0, sockets={socket: book}),
            "no book": EnergyBooks(timestamp=T0, day_start=T0),
        },
        "override": {
            "on": OverrideState(
                timestamp=T0,
                socket=socket,
                state="on",
                until=T0 + timedelta(hours=1),
                source="mqtt",
                set_at=T0,
            )
        },
        "next_on": {
            "planned": SocketNextOn(
                timestamp=T0,
                socket=socket,
                next_on=T0 + timedelta(hours=1),
                next_off=T0 + timedelta(hours=2),
                in_plan=True,
                plan_made_at=T0,
            ),
            "nothing": SocketNextOn(timestamp=T0, socket=socket, in_plan=False, plan_made_at=T0),
        },
        "surplus": {
            "reading": HouseSurplus(
                timestamp=T0,
                surplus_w=2000.0,
                p1_power_w=-800.0,
                sockets_w={socket: 1200.0},
                based_on=["P1 meter", socket],
            )
        },
        **{key: {"summary": COST, "empty": EMPTY_COST} for key in MONEY_FIELDS},
        **{
            key: {"plan": BATTERIES, "unknown": NO_BATTERIES}
            for key in ("battery_mode_planned", "battery_mode", "battery_control")
        },
        "state_of_charge": {
            "reading": DeviceMeasurement(
                timestamp=T0,
                device="Battery",
                device_type="HWE-BAT",
                power_w=-300.0,
                state_of_charge_pct=81.5,
                api="v2",
            ),
            "unknown": DeviceMeasurement(
                timestamp=T0, device="Battery", device_type="HWE-BAT", power_w=0.0, api="v2"
            ),
        },
    }
    return cases[key]


EXPECTED: dict[tuple[str, str], str] = {
    ("switch", "on"): "ON",
    ("switch", "off"): "OFF",
    ("switch", "unknown"): "None",
    ("controlled_by", "plan"): "plan",
    ("power", "reading"): "1200.5",
    ("energy_stored", "booked"): "2500.0",
    ("energy_stored", "no book"): "None",
    ("override", "on"): "on",
    ("next_on", "planned"): "2024-05-01T11:00:00Z",
    ("next_on", "nothing"): "None",
    ("surplus", "reading"): "2000.0",
    ("state_of_charge", "reading"): "81.5",
    ("state_of_charge", "unknown"): "None",
    **{(key, "summary"): value for key, value in MONEY_FIELDS.items()},
    **{(key, "empty"): "None" for key in MONEY_FIELDS},
    ("battery_mode_planned", "plan"): "charge_only",
    ("battery_mode_planned", "unknown"): "None",
    ("battery_mode", "plan"): "standby",
    ("battery_mode", "unknown"): "None",
    ("battery_control", "plan"): "plan",
    ("battery_control", "unknown"): "none",
}


def templated() -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """(component key, case, template, payload document) for every templated entity."""
    by_key: dict[str, tuple[dict[str, Any], str]] = {}
    for config, key, comp in components():
        if "value_template" in comp and config.device_id in ("hwsched", "hwsched_kitchen_boiler"):
            by_key[key] = (comp, "Kitchen boiler")
        if "value_template" in comp and config.device_id == "hwsched_cafe_zuid_x":
            by_key[f"cafe:{key}"] = (comp, 'Café "Zuid" {{x}}')
        if "value_template" in comp and config.device_id == "hwsched_battery":
            by_key.setdefault(key, (comp, "Battery"))
    for key, (comp, socket) in sorted(by_key.items()):
        plain = key.removeprefix("cafe:")
        for case, message in state_of(plain, socket).items():
            yield plain, case, comp["value_template"], json.loads(dump_message(message))


VALUE_JSON = re.compile(r"value_json((?:\.[a-z_]+|\[\"(?:[^\"\\]|\\.)*\"\])+)")
STEP = re.compile(r"\.([a-z_]+)|\[(\"(?:[^\"\\]|\\.)*\")\]")


def test_templates_read_real_fields_structurally() -> None:
    """Without jinja2: every `value_json...` path resolves in a real payload of the topic."""
    seen = set()
    for key, case, template, doc in templated():
        seen.add((key, case))
        assert template.count("{{") == template.count("}}") == 1, template
        assert "{%" not in template
        paths = VALUE_JSON.findall(template)
        assert paths, template
        for path in paths:
            node: Any = doc
            for attr, literal in STEP.findall(path):
                name = attr or json.loads(literal)
                if not isinstance(node, dict) or name not in node:
                    # only a guarded lookup (`... if X in value_json.sockets`) may miss
                    assert f" in value_json.{path.split('[')[0].lstrip('.')}" in template
                    break
                node = node[name]
        if EXPECTED[key, case] == "None":
            assert "'None'" in template, template
    assert seen == set(EXPECTED)


def test_templates_render_with_jinja2() -> None:
    """With jinja2 (as Home Assistant renders them): the exact state each case gives."""
    jinja2 = pytest.importorskip("jinja2")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
    for key, case, template, doc in templated():
        got = env.from_string(template).render(value=json.dumps(doc), value_json=doc)
        assert got == EXPECTED[key, case], (key, case, template)
    hub = configs()[0].payload["components"]["service_poller"]
    avail = env.from_string(hub["availability"][0]["value_template"])
    assert [avail.render(value=v) for v in ("online", "offline", "junk")] == [
        "online",
        "online",
        "offline",
    ]


# --- stale configs ----------------------------------------------------------------------------


def test_stale_config_is_ours_and_gone() -> None:
    old = configs()
    current = {
        c.device_id
        for c in configs(devices=DevicesConfig.model_validate({"devices": [P1, BOILER]}))
    }
    cafe = old[2]
    assert is_stale_config(SETTINGS, cafe.topic, cafe.data(), current)
    assert not is_stale_config(SETTINGS, old[1].topic, old[1].data(), current)  # still there
    assert not is_stale_config(SETTINGS, cafe.topic, b"", current)  # already removed
    assert not is_stale_config(SETTINGS, cafe.topic, b"not json", current)
    assert not is_stale_config(SETTINGS, cafe.topic, b"[1]", current)
    foreign_origin = {**cafe.payload, "origin": {"name": "zigbee2mqtt"}}
    assert not is_stale_config(SETTINGS, cafe.topic, json.dumps(foreign_origin).encode(), current)
    # another installation (other base topic) with a similar id is never touched
    other = Settings(base_topic="hwsched2")
    theirs = configs(other)[2]
    assert theirs.device_id == "hwsched2_cafe_zuid_x"
    assert not is_stale_config(SETTINGS, theirs.topic, theirs.data(), current)
    same_prefix_id = json.dumps(theirs.payload).encode()
    assert not is_stale_config(
        SETTINGS, "homeassistant/device/hwsched_cafe_zuid_x/config", same_prefix_id, current
    )
    assert not is_stale_config(SETTINGS, "homeassistant/sensor/x/config", cafe.data(), current)


# --- the next planned on-time -----------------------------------------------------------------


def plan(states: list[int], *, start: datetime = T0, socket: str = "Kitchen boiler") -> PlanMessage:
    n = len(states)
    return PlanMessage(
        timestamp=start,
        made_at=start,
        start=start,
        step_s=900,
        sockets={socket: SocketPlan(states=states, energy_wh=[100.0 * s for s in states])},
        battery_power_w=[0.0] * n,
        battery_energy_wh=[0.0] * n,
        planner="optimal",
        status="optimal",
        solve_s=0.1,
        available_power_w=[0.0] * n,
    )


def at(step: float) -> datetime:
    return T0 + timedelta(seconds=900 * step)


def test_next_on_later_block() -> None:
    got = next_on(plan([0, 0, 1, 1, 0, 1]), "Kitchen boiler", at(0.5))
    assert (got.next_on, got.next_off, got.on_now, got.in_plan) == (at(2), at(4), False, True)
    assert got.planned_energy_wh == 300.0
    assert got.timestamp == at(0.5)
    assert got.plan_made_at == T0


def test_next_on_block_running_now_keeps_its_start() -> None:
    got = next_on(plan([1, 1, 1, 0, 1]), "Kitchen boiler", at(1.2))
    assert (got.next_on, got.next_off, got.on_now) == (at(0), at(3), True)
    assert got.planned_energy_wh == 300.0  # steps 1, 2 and 4
    last = next_on(plan([1, 1, 1, 0, 1]), "Kitchen boiler", at(3.5))
    assert (last.next_on, last.next_off, last.on_now) == (at(4), at(5), False)


def test_next_on_before_after_and_outside_the_plan() -> None:
    early = next_on(plan([1, 0]), "Kitchen boiler", at(-1))
    assert (early.next_on, early.on_now) == (at(0), False)
    late = next_on(plan([1, 0]), "Kitchen boiler", at(2))
    assert (late.next_on, late.next_off, late.on_now, late.in_plan) == (None, None, False, True)
    assert late.planned_energy_wh == 0.0
    done = next_on(plan([1, 0, 0]), "Kitchen boiler", at(1))
    assert done.next_on is None
    missing = next_on(plan([1]), "E-bike", at(0))
    assert (missing.in_plan, missing.next_on) == (False, None)
    # what the bridge publishes is a valid message of the topic
    assert parse_message(SocketNextOn, dump_message(missing)) == missing


def test_next_boundary() -> None:
    p = plan([0, 1, 0])
    assert next_boundary(p, at(-2)) == at(0)
    assert next_boundary(p, at(0)) == at(1)
    assert next_boundary(p, at(1.99)) == at(2)
    assert next_boundary(p, at(2.5)) == at(3)
    assert next_boundary(p, at(3)) is None


# --- the runtime's publish for topics outside the layout --------------------------------------


def test_publish_external_refuses_layout_and_wildcard_topics() -> None:
    service = Service("bridge", SETTINGS)
    service.publish_external("homeassistant/device/hwsched/config", b"{}")
    for bad in ("hwsched/plan", "hwsched", "homeassistant/+/x", "a//b", "", "/a", "a/#"):
        with pytest.raises(ValueError, match="topic"):
            service.publish_external(bad, b"")


# --- the bridge's timing, on a manual clock ---------------------------------------------------


class Recorder(Service):
    """A Service that is never connected: records what the bridge publishes."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__("bridge", SETTINGS, clock=clock)
        self.sent: list[tuple[str, Any]] = []

    def publish(self, topic: str, payload: Any) -> None:
        super().publish(topic, payload)
        self.sent.append((topic, payload))

    def publish_external(self, topic: str, data: bytes) -> None:
        super().publish_external(topic, data)
        self.sent.append((topic, data))


async def test_next_on_follows_the_step_boundaries_and_announce_waits() -> None:
    clock = ManualClock(at(0.5))
    service = Recorder(clock)
    bridge = Bridge(HOUSE, service, options=QUICK, rng=random.Random(1))
    loop = asyncio.create_task(bridge._next_on_loop())
    announcer = asyncio.create_task(bridge._announcer())
    try:
        await clock.settle()
        assert service.sent == []  # no plan yet: nothing to say
        await bridge._on_plan("hwsched/plan", dump_message(plan([0, 1, 1, 0])))
        await clock.settle()
        first = [m for t, m in service.sent if t == "hwsched/kitchen_boiler/next_on"]
        assert [(m.next_on, m.on_now) for m in first] == [(at(1), False)]
        assert len(service.sent) == 2  # and the café, not in the plan
        await clock.run_until(at(1))  # the block starts: on_now
        await clock.run_until(at(2))  # same block, less energy to go
        await clock.run_until(at(3))  # the block is over: none left
        await clock.run_until(at(4))  # the plan is over: nothing changes
        boiler = [m for t, m in service.sent if t == "hwsched/kitchen_boiler/next_on"]
        assert [(m.next_on, m.on_now, m.planned_energy_wh) for m in boiler] == [
            (at(1), False, 200.0),
            (at(1), True, 200.0),
            (at(1), True, 100.0),
            (None, False, 0.0),
        ]
        assert [m.timestamp for m in boiler] == [at(0.5), at(1), at(2), at(3)]
        assert clock.next_deadline() is None or clock.next_deadline() > at(4)
        # an older plan is ignored
        older = plan([1, 1, 1, 1], start=T0 - timedelta(hours=1))
        await bridge._on_plan("hwsched/plan", dump_message(older))
        assert service.counters["plans_older_ignored"] == 1

        # Home Assistant online: discovery again after the random delay, not before
        service.sent.clear()
        await bridge._on_ha_status("homeassistant/status", b"online")
        await clock.run_for(0.04)
        assert service.sent == []
        await clock.run_for(0.2)
        assert sorted(t for t, _ in service.sent) == sorted(c.topic for c in bridge.configs)
    finally:
        for task in (loop, announcer):
            task.cancel()
        await asyncio.gather(loop, announcer, return_exceptions=True)


# --- the bridge on a throwaway broker ---------------------------------------------------------

FAST = ServiceOptions(
    status_interval_s=1.0,
    status_min_interval_s=0.2,
    reconnect_min_s=0.05,
    reconnect_max_s=0.4,
    publish_timeout_s=2.0,
    keepalive_s=5,
)


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
        base_topic=f"br{tag}",
        ha_discovery_prefix=f"ha{tag}",
    )


@asynccontextmanager
async def running_bridge(settings: Settings, devices: DevicesConfig) -> AsyncIterator[Service]:
    service = Service("bridge", settings, options=FAST)
    bridge = Bridge(devices, service, options=QUICK, rng=random.Random(1))
    task = asyncio.create_task(service.run(bridge.run))
    try:
        await asyncio.wait_for(service.wait_connected(), 10)
        yield service
    finally:
        service.request_stop()
        assert await asyncio.wait_for(task, 10) == 0


retained = retained_once


async def wait_for(check: Any, timeout_s: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


async def test_bridge_publishes_discovery_retained_and_again_when_ha_comes_online(
    mqtt_broker: MqttBroker, settings: Settings
) -> None:
    prefix = settings.ha_discovery_prefix
    expected = {c.topic: c for c in discovery_configs(settings, HOUSE, version="x")}
    async with running_bridge(settings, HOUSE) as service:

        async def all_there() -> dict[str, bytes]:
            got = await retained(mqtt_broker, f"{prefix}/device/+/config")
            return got if set(got) == set(expected) else {}

        got = await wait_for(all_there)
        for topic, data in got.items():
            payload = json.loads(data)
            assert payload["components"] == expected[topic].payload["components"]
            assert payload["origin"]["sw_version"] == service.version
        assert service.counters["discovery_published"] == 1

        # Home Assistant's birth message: discovery again, once, after the short delay
        seen: list[str] = []
        async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as client:
            await client.subscribe(f"{prefix}/device/+/config", qos=1)
            await asyncio.sleep(0.3)
            await client.publish(f"{prefix}/status", b"online", qos=1)
            await client.publish(f"{prefix}/status", b"online", qos=1)  # a burst: one answer
            try:
                async with asyncio.timeout(2.0):
                    async for m in client.messages:
                        if not m.retain:
                            seen.append(m.topic.value)
            except TimeoutError:
                pass
        assert sorted(seen) == sorted(expected)
        assert service.counters["discovery_published"] == 2
        # HA going offline asks for nothing
        async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as client:
            await client.publish(f"{prefix}/status", b"offline", qos=1)
        await asyncio.sleep(0.4)
        assert service.counters["discovery_published"] == 2


async def test_bridge_removes_a_deleted_socket_and_leaves_others_alone(
    mqtt_broker: MqttBroker, settings: Settings
) -> None:
    prefix = settings.ha_discovery_prefix
    cafe_topic = f"{prefix}/device/{node_id(settings)}_cafe_zuid_x/config"
    # another installation's config under the same prefix: never touched
    other = Settings(base_topic=settings.base_topic + "x", ha_discovery_prefix=prefix)
    foreign = discovery_configs(other, HOUSE, version="x")[2]
    async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as client:
        await client.publish(foreign.topic, foreign.data(), qos=1, retain=True)

    async with running_bridge(settings, HOUSE):

        async def cafe_there() -> bool:
            return cafe_topic in await retained(mqtt_broker, f"{prefix}/device/+/config")

        await wait_for(cafe_there)

    smaller = DevicesConfig.model_validate({"devices": [P1, BOILER, BATTERY]})
    async with running_bridge(settings, smaller) as service:

        async def cafe_gone() -> dict[str, bytes]:
            got = await retained(mqtt_broker, f"{prefix}/device/+/config")
            return got if cafe_topic not in got else {}

        got = await wait_for(cafe_gone)
        assert set(got) == {c.topic for c in discovery_configs(settings, smaller, version="x")} | {
            foreign.topic
        }
        assert service.counters["discovery_removed"] == 1


async def test_bridge_publishes_the_next_on_time_from_the_plan(
    mqtt_broker: MqttBroker, settings: Settings
) -> None:
    topics = Topics(settings.base_topic)
    now = datetime.now(UTC).replace(microsecond=0)  # payload times are whole seconds
    start = now - timedelta(minutes=10)
    the_plan = plan([1, 0, 0, 1, 1], start=start)
    async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as client:
        await client.publish(topics.plan(), dump_message(the_plan), qos=1, retain=True)
    try:
        async with running_bridge(settings, HOUSE) as service:

            async def both() -> dict[str, bytes]:
                got = await retained(mqtt_broker, f"{settings.base_topic}/+/next_on", 0.3)
                return got if len(got) == 2 else {}

            got = await wait_for(both)
            boiler = parse_message(SocketNextOn, got[topics.next_on("kitchen_boiler")])
            assert boiler.in_plan
            assert boiler.on_now
            assert (boiler.next_on, boiler.next_off) == (start, start + timedelta(minutes=15))
            assert boiler.plan_made_at == start
            cafe = parse_message(SocketNextOn, got[topics.next_on("cafe_zuid_x")])
            assert (cafe.in_plan, cafe.next_on) == (False, None)
            assert service.counters["next_on_published"] == 2
            # a bad plan is a counted drop, the last good reading stays
            async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as client:
                await client.publish(topics.plan(), b'{"schema_version": 1}', qos=1)

            async def dropped() -> bool:
                return service.counters["messages_dropped"] == 1

            await wait_for(dropped)
    finally:
        async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as client:
            await client.publish(topics.plan(), b"", qos=1, retain=True)
