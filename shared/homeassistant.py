"""Home Assistant MQTT discovery for hwsched, and the "next planned on-time" read from a plan.

Pure functions (no I/O); the bridge service (`services.bridge`) publishes what they build.

Device-based discovery: one retained config per Home Assistant *device* on
`<discovery prefix>/device/<device id>/config`, its entities in a `components` map:

* the hub, id `<node>` (the base topic's slug, `hwsched` by default), named "hwsched":
  house surplus (W), one connectivity binary sensor per service, and money (from the
  scheduler's `<base>/cost`): the import and export price now (EUR/kWh; the summary as
  attributes: source, fallback), today's grid import and export (kWh) and cost so far (EUR),
  the plan's expected cost, the original's (reference) plan's cost and the savings, to the
  next boundary; with batteries (from the actuator's `<base>/batteries`): their planned mode,
  the mode they are in, who controls them, and a "Batteries back to plan" button;
* each Energy Socket, id `<node>_<socket slug>`, named as in the devices file, linked to the
  hub (`via_device`): a switch (state: the relay as the actuator reports it; on/off publish
  an override), a "Back to plan" button (override `auto`), power (W), energy stored today
  (Wh, from the books), the next planned on-time (timestamp, from the bridge's
  `<base>/<socket>/next_on`), the override in force and who controls the socket;
* each Plug-In Battery, id `<node>_<battery slug>`: state of charge (%) and power (W).

One device per HomeWizard device, not one for everything: each socket's controls and readings
group on its own device page, and a socket removed from the devices file is removed from Home
Assistant by one empty retained payload on its own config topic (Home Assistant drops every
component of that device), without rewriting the others.

Every entity has a `unique_id` `<device id>_<key>` ([a-z0-9_]), an `availability` list with
`availability_mode: all` naming the services (and devices) its data comes from, the shared
`device` and `origin` blocks. Templates only read fields of the real message models, and render
`None` (Home Assistant's "unknown") where a value is absent.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.config import BatteryConfig, DevicesConfig, Settings, SocketConfig
from shared.messages import AVAILABILITY_OFFLINE, AVAILABILITY_ONLINE, PlanMessage, SocketNextOn
from shared.naming import slugify
from shared.planning.problem import BATTERY_MODES
from shared.topics import Topics

__all__ = [
    "BRIDGE_SERVICE",
    "ORIGIN_NAME",
    "SERVICES",
    "DiscoveryConfig",
    "config_topic",
    "device_id_from_topic",
    "discovery_configs",
    "is_stale_config",
    "next_boundary",
    "next_on",
    "node_id",
]

ORIGIN_NAME = "hwsched"
BRIDGE_SERVICE = "bridge"
#: The services whose availability Home Assistant shows (each publishes its own, with a Will).
SERVICES: tuple[str, ...] = (
    "poller",
    "forecaster",
    "prices",
    "scheduler",
    "actuator",
    BRIDGE_SERVICE,
)

_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
_FALLBACK_NODE = "hwsched"


@dataclass(frozen=True)
class DiscoveryConfig:
    """One device's discovery config: where it goes and what it says."""

    device_id: str
    topic: str
    payload: dict[str, Any]

    def data(self) -> bytes:
        """The payload as compact UTF-8 JSON, keys in a stable order."""
        return json.dumps(self.payload, separators=(",", ":"), sort_keys=True).encode()

    def unique_ids(self) -> list[str]:
        return [str(c["unique_id"]) for c in self.payload["components"].values()]


def node_id(settings: Settings) -> str:
    """The id prefix of this installation: the base topic's slug (`home/hwsched` → home_hwsched).

    Two installations with different base topics on one Home Assistant never share an id.
    """
    try:
        return slugify(settings.base_topic)
    except ValueError:  # a base topic with no letters or digits at all
        return _FALLBACK_NODE


def config_topic(settings: Settings, device_id: str) -> str:
    """`<discovery prefix>/device/<device id>/config`."""
    if not _ID.match(device_id):
        raise ValueError(f"{device_id!r} is not a discovery id ([a-zA-Z0-9_-])")
    return f"{settings.ha_discovery_prefix}/device/{device_id}/config"


def device_id_from_topic(settings: Settings, topic: str) -> str | None:
    """The device id of a device-based config topic under this prefix, else None."""
    prefix = f"{settings.ha_discovery_prefix}/device/"
    if not topic.startswith(prefix) or not topic.endswith("/config"):
        return None
    middle = topic[len(prefix) : -len("/config")]
    return middle if _ID.match(middle) else None


# --- building blocks ------------------------------------------------------------------------


def _availability(*topics: str) -> dict[str, Any]:
    """Available only while every topic says `online`."""
    return {
        "availability": [
            {
                "topic": t,
                "payload_available": AVAILABILITY_ONLINE,
                "payload_not_available": AVAILABILITY_OFFLINE,
            }
            for t in topics
        ],
        "availability_mode": "all",
    }


def _jinja_str(text: str) -> str:
    """`text` as a Jinja string literal: JSON's double-quoted, escaped form is one; braces are
    escaped too (`\\u007b`), so no name can look like template syntax."""
    return json.dumps(text).replace("{", "\\u007b").replace("}", "\\u007d")


def _command(state: str) -> str:
    """The override command Home Assistant publishes: `{"state":"on"}` (an OverrideRequest)."""
    return json.dumps({"state": state}, separators=(",", ":"))


def _or_none(expr: str) -> str:
    """A template rendering `expr`, or `None` (unknown) when it is null."""
    return f"{{{{ 'None' if {expr} is none else {expr} }}}}"


def _origin(version: str, support_url: str | None) -> dict[str, str]:
    origin = {"name": ORIGIN_NAME, "sw_version": version}
    if support_url:
        origin["support_url"] = support_url
    return origin


def _component(platform: str, unique_id: str, name: str | None, **options: Any) -> dict[str, Any]:
    return {"platform": platform, "unique_id": unique_id, "name": name, "qos": 1, **options}


@dataclass(frozen=True)
class _Context:
    settings: Settings
    topics: Topics
    node: str
    version: str
    support_url: str | None

    def config(
        self, device_id: str, device: dict[str, Any], components: dict[str, dict[str, Any]]
    ) -> DiscoveryConfig:
        origin = _origin(self.version, self.support_url)
        payload = {"device": device, "origin": origin, "components": components}
        return DiscoveryConfig(device_id, config_topic(self.settings, device_id), payload)


# --- the devices ----------------------------------------------------------------------------


def _hub(ctx: _Context, devices: DevicesConfig) -> DiscoveryConfig:
    topics, node, base = ctx.topics, ctx.node, ctx.settings.base_topic
    name = "hwsched" if base == "hwsched" else f"hwsched ({base})"
    device = {
        "identifiers": [node],
        "name": name,
        "manufacturer": "hwsched",
        "model": "Solar-surplus scheduler",
        "sw_version": ctx.version,
    }
    components: dict[str, dict[str, Any]] = {
        "surplus": _component(
            "sensor",
            f"{node}_surplus",
            "Solar surplus",
            state_topic=topics.surplus(),
            value_template="{{ value_json.surplus_w }}",
            json_attributes_topic=topics.surplus(),
            device_class="power",
            unit_of_measurement="W",
            state_class="measurement",
            icon="mdi:solar-power",
            **_availability(
                topics.availability("poller"), topics.device_availability(devices.p1.slug)
            ),
        )
    }
    components |= _money(ctx, devices)
    for service in SERVICES:
        topic = topics.availability(service)
        components[f"service_{service}"] = _component(
            "binary_sensor",
            f"{node}_service_{service}",
            f"Service {service}",
            state_topic=topic,
            payload_on=AVAILABILITY_ONLINE,
            payload_off=AVAILABILITY_OFFLINE,
            device_class="connectivity",
            entity_category="diagnostic",
            # available once the service has said anything valid: offline shows as "off"
            availability=[
                {
                    "topic": topic,
                    "value_template": (
                        "{{ 'online' if value in ('online', 'offline') else 'offline' }}"
                    ),
                    "payload_available": AVAILABILITY_ONLINE,
                    "payload_not_available": AVAILABILITY_OFFLINE,
                }
            ],
            availability_mode="all",
        )
    return ctx.config(node, device, components)


def _money(ctx: _Context, devices: DevicesConfig) -> dict[str, dict[str, Any]]:
    """The hub's money entities (from `<base>/cost`) and, with batteries, their mode."""
    topics, node = ctx.topics, ctx.node
    cost = topics.cost()
    scheduler = _availability(topics.availability("scheduler"))

    def money(key: str, name: str, field: str, unit: str, **options: Any) -> dict[str, Any]:
        return _component(
            "sensor",
            f"{node}_{key}",
            name,
            state_topic=cost,
            value_template=_or_none(f"value_json.{field}"),
            unit_of_measurement=unit,
            **options,
            **scheduler,
        )

    price = {"state_class": "measurement", "icon": "mdi:cash", "suggested_display_precision": 3}
    eur = {"device_class": "monetary", "suggested_display_precision": 2}
    out = {
        "import_price": money(
            "import_price", "Import price now", "import_now_eur_kwh", "EUR/kWh",
            json_attributes_topic=cost, **price,
        ),
        "export_price": money(
            "export_price", "Export price now", "export_now_eur_kwh", "EUR/kWh", **price
        ),
        "import_today": money(
            "import_today", "Grid import today", "import_today_kwh", "kWh",
            device_class="energy", state_class="total_increasing",
        ),
        "export_today": money(
            "export_today", "Grid export today", "export_today_kwh", "kWh",
            device_class="energy", state_class="total_increasing",
        ),
        "cost_today": money(
            "cost_today", "Cost today", "cost_today_eur", "EUR",
            state_class="total", last_reset_value_template="{{ value_json.day_start }}", **eur,
        ),
        "plan_cost": money(
            "plan_cost", "Plan's expected cost to the boundary", "plan_cost_eur", "EUR", **eur
        ),
        "reference_cost": money(
            "reference_cost", "Original plan's cost to the boundary", "reference_cost_eur", "EUR",
            entity_category="diagnostic", **eur,
        ),
        "savings": money(
            "savings", "Savings to the boundary", "savings_eur", "EUR", icon="mdi:piggy-bank", **eur
        ),
    }  # fmt: skip
    if not devices.batteries:
        return out
    state = topics.batteries()
    actuator = _availability(topics.availability("actuator"))
    modes = list(BATTERY_MODES)
    for key, name, field, options in (
        ("battery_mode_planned", "Battery mode planned", "desired", modes),
        ("battery_mode", "Battery mode", "mode", modes),
        (
            "battery_control",
            "Battery control",
            "controlled_by",
            ["plan", "app", "fallback", "none"],
        ),
    ):
        out[key] = _component(
            "sensor",
            f"{node}_{key}",
            name,
            state_topic=state,
            value_template=_or_none(f"value_json.{field}"),
            device_class="enum",
            options=options,
            icon="mdi:home-battery",
            **({"json_attributes_topic": state} if key == "battery_mode" else {}),
            **({"entity_category": "diagnostic"} if key == "battery_control" else {}),
            **actuator,
        )
    out["battery_auto"] = _component(
        "button",
        f"{node}_battery_auto",
        "Batteries back to plan",
        command_topic=topics.batteries_override_set(),
        payload_press=_command("auto"),
        retain=False,
        icon="mdi:autorenew",
        **actuator,
    )
    return out


def _socket(ctx: _Context, socket: SocketConfig) -> DiscoveryConfig:
    topics, slug = ctx.topics, socket.slug
    dev_id = f"{ctx.node}_{slug}"
    device = {
        "identifiers": [dev_id],
        "name": socket.device_name,
        "manufacturer": "HomeWizard",
        "model": "Energy Socket (HWE-SKT)",
        "via_device": ctx.node,
    }
    state = topics.socket_state(slug)
    override_set = topics.override_set(slug)
    actuator = _availability(topics.availability("actuator"))
    name = _jinja_str(socket.device_name)
    components: dict[str, dict[str, Any]] = {
        "switch": _component(
            "switch",
            f"{dev_id}_switch",
            None,  # the device's name
            state_topic=state,
            value_template=(
                "{{ 'None' if value_json.power_on is none "
                "else ('ON' if value_json.power_on else 'OFF') }}"
            ),
            state_on="ON",
            state_off="OFF",
            command_topic=override_set,
            payload_on=_command("on"),
            payload_off=_command("off"),
            retain=False,
            json_attributes_topic=state,
            **actuator,
        ),
        "auto": _component(
            "button",
            f"{dev_id}_auto",
            "Back to plan",
            command_topic=override_set,
            payload_press=_command("auto"),
            retain=False,
            icon="mdi:autorenew",
            **actuator,
        ),
        "override": _component(
            "sensor",
            f"{dev_id}_override",
            "Override",
            state_topic=topics.override(slug),
            value_template="{{ value_json.state }}",
            json_attributes_topic=topics.override(slug),
            device_class="enum",
            options=["on", "off", "auto"],
            icon="mdi:hand-back-right",
            **actuator,
        ),
        "controlled_by": _component(
            "sensor",
            f"{dev_id}_controlled_by",
            "Controlled by",
            state_topic=state,
            value_template="{{ value_json.controlled_by }}",
            device_class="enum",
            options=["plan", "override", "manual", "fallback"],
            entity_category="diagnostic",
            **actuator,
        ),
        "power": _component(
            "sensor",
            f"{dev_id}_power",
            "Power",
            state_topic=topics.measurement(slug),
            value_template="{{ value_json.power_w }}",
            device_class="power",
            unit_of_measurement="W",
            state_class="measurement",
            **_availability(topics.availability("poller"), topics.device_availability(slug)),
        ),
        "energy_stored": _component(
            "sensor",
            f"{dev_id}_energy_stored",
            "Energy stored today",
            state_topic=topics.books(),
            value_template=(
                f"{{{{ value_json.sockets[{name}].energy_wh "
                f"if {name} in value_json.sockets else 'None' }}}}"
            ),
            device_class="energy_storage",
            unit_of_measurement="Wh",
            state_class="measurement",
            **_availability(topics.availability("scheduler")),
        ),
        "next_on": _component(
            "sensor",
            f"{dev_id}_next_on",
            "Next planned on",
            state_topic=topics.next_on(slug),
            value_template=_or_none("value_json.next_on"),
            json_attributes_topic=topics.next_on(slug),
            device_class="timestamp",
            icon="mdi:calendar-clock",
            **_availability(topics.availability(BRIDGE_SERVICE), topics.availability("scheduler")),
        ),
    }
    return ctx.config(dev_id, device, components)


def _battery(ctx: _Context, battery: BatteryConfig) -> DiscoveryConfig:
    topics, slug = ctx.topics, battery.slug
    dev_id = f"{ctx.node}_{slug}"
    device = {
        "identifiers": [dev_id],
        "name": battery.device_name,
        "manufacturer": "HomeWizard",
        "model": "Plug-In Battery (HWE-BAT)",
        "via_device": ctx.node,
    }
    measured = _availability(topics.availability("poller"), topics.device_availability(slug))
    components: dict[str, dict[str, Any]] = {
        "state_of_charge": _component(
            "sensor",
            f"{dev_id}_state_of_charge",
            "State of charge",
            state_topic=topics.measurement(slug),
            value_template=_or_none("value_json.state_of_charge_pct"),
            device_class="battery",
            unit_of_measurement="%",
            state_class="measurement",
            **measured,
        ),
        "power": _component(
            "sensor",
            f"{dev_id}_power",
            "Power (charging +)",
            state_topic=topics.measurement(slug),
            value_template="{{ value_json.power_w }}",
            device_class="power",
            unit_of_measurement="W",
            state_class="measurement",
            **measured,
        ),
    }
    return ctx.config(dev_id, device, components)


def discovery_configs(
    settings: Settings, devices: DevicesConfig, *, version: str, support_url: str | None = None
) -> list[DiscoveryConfig]:
    """Every device's discovery config: the hub, then the sockets, then the batteries.

    `version` and `support_url` (omitted when None) go into the `origin` block.
    """
    ctx = _Context(settings, Topics(settings.base_topic), node_id(settings), version, support_url)
    return [
        _hub(ctx, devices),
        *(_socket(ctx, s) for s in devices.sockets),
        *(_battery(ctx, b) for b in devices.batteries),
    ]


def is_stale_config(
    settings: Settings, topic: str, payload: bytes, current: set[str] | frozenset[str]
) -> bool:
    """Whether a retained config seen on the broker is this installation's and no longer wanted.

    It is when it sits on `<prefix>/device/<id>/config` with an id of this installation
    (`<node>_...`) not in `current`, is a JSON object from origin hwsched, and one of its
    components' availability topics lies under this base topic (so another installation's
    configs are never touched). An empty payload (already removed) is not stale.
    """
    device_id = device_id_from_topic(settings, topic)
    if device_id is None or device_id in current or not payload:
        return False
    node = node_id(settings)
    if device_id != node and not device_id.startswith(node + "_"):
        return False
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return False
    if not isinstance(document, dict):
        return False
    origin = document.get("origin", document.get("o"))
    if not isinstance(origin, dict) or origin.get("name") != ORIGIN_NAME:
        return False
    components = document.get("components", document.get("cmps"))
    if not isinstance(components, dict):
        return False
    base = settings.base_topic + "/"
    for component in components.values():
        if not isinstance(component, dict):
            continue
        entries = component.get("availability", component.get("avty"))
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and str(entry.get("topic", "")).startswith(base):
                return True
    return False


# --- next planned on-time -------------------------------------------------------------------


def _current_step(plan: PlanMessage, now: datetime) -> int:
    """Index of the step holding `now`; 0 before the plan; `n_steps` after it."""
    offset = (now - plan.start).total_seconds()
    if offset < 0:
        return 0
    return min(plan.n_steps, math.floor(offset / plan.step_s))


def next_on(plan: PlanMessage, socket: str, now: datetime) -> SocketNextOn:
    """When `plan` next has `socket` (its device name, the plan's key) on, seen at `now`.

    `next_on`/`next_off` bound the on-block running now (its start may be past) or else the
    next one; none when no on step is left. `planned_energy_wh` sums the current and later
    steps. A socket without a row (left out of the plan) is `in_plan: false`.
    """
    common = {"timestamp": now, "socket": socket, "plan_made_at": plan.made_at}
    row = plan.sockets.get(socket)
    if row is None:
        return SocketNextOn(in_plan=False, **common)
    first = _current_step(plan, now)
    states = row.states
    n = len(states)
    step = timedelta(seconds=plan.step_s)
    energy = float(sum(row.energy_wh[first:]))
    begin = next((i for i in range(first, n) if states[i] == 1), None)
    if begin is None:
        return SocketNextOn(in_plan=True, planned_energy_wh=energy, **common)
    on_now = begin == first and plan.start <= now
    if on_now:
        while begin > 0 and states[begin - 1] == 1:
            begin -= 1
    end = begin
    while end < n and states[end] == 1:
        end += 1
    return SocketNextOn(
        in_plan=True,
        next_on=plan.start + begin * step,
        next_off=plan.start + end * step,
        on_now=on_now,
        planned_energy_wh=energy,
        **common,
    )


def next_boundary(plan: PlanMessage, now: datetime) -> datetime | None:
    """The next step boundary of `plan` after `now` (when `next_on` may change), or None."""
    if now < plan.start:
        return plan.start
    index = _current_step(plan, now)
    if index >= plan.n_steps:
        return None
    return plan.start + timedelta(seconds=plan.step_s * (index + 1))
