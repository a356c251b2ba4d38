"""MQTT topic layout (zigbee2mqtt style) and its registry; renders the README topic table.

Layout under one configurable base topic (default `hwsched`):

* state, retained, QoS 1: `<base>/<thing>` or `<base>/<thing>/<aspect>`
  (`hwsched/boiler`, `hwsched/boiler/measurement`, `hwsched/surplus`, `hwsched/plan`);
* commands, *not* retained, QoS 1: `<base>/<socket>/set`, `<base>/<socket>/override/set`;
* devices: `<base>/<device>/measurement` (JSON) and `<base>/<device>/availability` (plain
  `online`/`offline`, retained: whether the poller can read the device);
* services: `<base>/service/<name>/availability` (plain `online`/`offline`, retained, the MQTT
  Will is `offline`) and `<base>/service/<name>/status` (JSON, retained);
* request/response: `<base>/request/forecast` answered on `<base>/response/forecast`.

Device, socket and service segments are slugs (`shared.naming.slugify`: lowercase `[a-z0-9]`
words joined by single `_`). The first-level names the layout uses itself (`RESERVED_NAMES`)
cannot be device names, so every topic parses one way only.

`python -m shared.topics README.md` rewrites the table between the README's markers.
"""

from __future__ import annotations

import re
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel
from pydantic.fields import FieldInfo

from shared.messages import (
    BatteryCommand,
    BatteryOverrideRequest,
    BatteryState,
    CostSummary,
    DeviceMeasurement,
    EnergyBooks,
    Forecast,
    ForecastRequest,
    ForecastResponse,
    HouseSurplus,
    Message,
    OverrideRequest,
    OverrideState,
    PlanMessage,
    Prices,
    ServiceStatus,
    SocketCommand,
    SocketNextOn,
    SocketState,
    SwitchEvent,
    schema_version_of,
)

__all__ = [
    "DEFAULT_BASE",
    "README_END",
    "README_START",
    "RESERVED_NAMES",
    "TOPICS",
    "TopicSpec",
    "Topics",
    "check_name",
    "field_rows",
    "is_slug",
    "render_topic_table",
    "replace_table",
    "spec",
    "unit_of",
]

DEFAULT_BASE = "hwsched"
README_START = "<!-- topics:start -->"
README_END = "<!-- topics:end -->"

_SLUG = re.compile(r"^[a-z0-9]+(_[a-z0-9]+)*$")
_MAX_NAME = 200
_PLACEHOLDER = re.compile(r"^\{(device|socket|service)\}$")

#: First-level names the layout uses; no device or socket may be called so.
RESERVED_NAMES: frozenset[str] = frozenset(
    {
        "surplus",
        "forecast",
        "plan",
        "books",
        "service",
        "request",
        "response",
        "bridge",
        "prices",
        "cost",
        "batteries",
    }
)


def is_slug(name: str) -> bool:
    """Whether `name` is a valid topic segment (what `slugify` produces, ≤ 200 chars)."""
    return len(name) <= _MAX_NAME and _SLUG.match(name) is not None


def check_name(name: str, *, first_level: bool = True) -> str:
    """`name` if it can be a device/socket segment, else ValueError saying why.

    `first_level`: the name sits right under the base (devices, sockets), where the reserved
    names are refused.
    """
    if not is_slug(name):
        raise ValueError(
            f"{name!r} is not a topic slug (lowercase a-z, 0-9, single '_', ≤ {_MAX_NAME} chars)"
        )
    if first_level and name in RESERVED_NAMES:
        raise ValueError(f"{name!r} is reserved by the topic layout: {sorted(RESERVED_NAMES)}")
    return name


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the layout.

    `pattern` is relative to the base, with `{device}`/`{socket}`/`{service}` placeholders;
    `model` is the JSON payload model, or None for the plain `online`/`offline` string.
    """

    name: str
    pattern: str
    model: type[Message] | None
    direction: str
    retained: bool
    qos: int
    description: str

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.pattern.split("/"))

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(s[1:-1] for s in self.segments if _PLACEHOLDER.match(s))

    @property
    def payload(self) -> str:
        """`Model vN`, or the plain string's values."""
        if self.model is None:
            return "plain `online` / `offline`"
        return f"`{self.model.__name__}` v{schema_version_of(self.model)}"

    def build(self, base: str, **params: str) -> str:
        """The concrete topic; ValueError on a missing, extra or invalid parameter."""
        if set(params) != set(self.params):
            raise ValueError(f"topic {self.name} takes {sorted(self.params)}, got {sorted(params)}")
        out = [base]
        for i, seg in enumerate(self.segments):
            if _PLACEHOLDER.match(seg):
                out.append(check_name(params[seg[1:-1]], first_level=i == 0))
            else:
                out.append(seg)
        return "/".join(out)

    def wildcard(self, base: str) -> str:
        """The subscription for every instance: each placeholder as `+`."""
        parts = ["+" if _PLACEHOLDER.match(s) else s for s in self.segments]
        return "/".join([base, *parts])


TOPICS: list[TopicSpec] = [
    TopicSpec(
        "measurement",
        "{device}/measurement",
        DeviceMeasurement,
        "poller → scheduler, actuator, HA",
        True,
        1,
        "Latest reading of one HomeWizard device (P1 meter, Energy Socket, Plug-In Battery).",
    ),
    TopicSpec(
        "device_availability",
        "{device}/availability",
        None,
        "poller → HA, scheduler",
        True,
        1,
        "Whether the poller can read the device: online after a good poll, offline on a failure.",
    ),
    TopicSpec(
        "surplus",
        "surplus",
        HouseSurplus,
        "poller → scheduler, HA",
        True,
        1,
        "House surplus: P1 export + controlled sockets' draw + batteries' charge.",
    ),
    TopicSpec(
        "forecast",
        "forecast",
        Forecast,
        "forecaster → scheduler, HA",
        True,
        1,
        "Solar production forecast per step.",
    ),
    TopicSpec(
        "plan",
        "plan",
        PlanMessage,
        "scheduler → HA, Node-RED",
        True,
        1,
        "Current plan: on/off and expected energy per socket per step, battery power.",
    ),
    TopicSpec(
        "books",
        "books",
        EnergyBooks,
        "scheduler → scheduler (on restart), HA",
        True,
        1,
        "Energy delivered per socket today; read back on start so a restart loses nothing.",
    ),
    TopicSpec(
        "socket_state",
        "{socket}",
        SocketState,
        "actuator → scheduler, HA",
        True,
        1,
        "What the socket actually does and who controls it.",
    ),
    TopicSpec(
        "socket_set",
        "{socket}/set",
        SocketCommand,
        "scheduler → actuator",
        False,
        1,
        "Desired socket state from the plan (not retained: never replayed stale).",
    ),
    TopicSpec(
        "override_set",
        "{socket}/override/set",
        OverrideRequest,
        "HA, Node-RED, user, dashboard → actuator",
        False,
        1,
        "Manual override command: on/off for a lease (until or duration_s), or auto to end it.",
    ),
    TopicSpec(
        "override",
        "{socket}/override",
        OverrideState,
        "actuator → scheduler, HA",
        True,
        1,
        "The override in force on the socket (state auto = none).",
    ),
    TopicSpec(
        "switched",
        "{socket}/switched",
        SwitchEvent,
        "actuator → HA, Node-RED",
        False,
        1,
        "One relay switch made by the actuator (event).",
    ),
    TopicSpec(
        "next_on",
        "{socket}/next_on",
        SocketNextOn,
        "bridge → HA, Node-RED",
        True,
        1,
        "When the plan next has the socket on (re-read from the plan at each step boundary).",
    ),
    TopicSpec(
        "availability",
        "service/{service}/availability",
        None,
        "each service → HA, all services",
        True,
        1,
        "Service liveness; the MQTT Will publishes offline on a crash.",
    ),
    TopicSpec(
        "status",
        "service/{service}/status",
        ServiceStatus,
        "each service → HA",
        True,
        1,
        "Service version, start time and counters.",
    ),
    TopicSpec(
        "forecast_request",
        "request/forecast",
        ForecastRequest,
        "scheduler, HA, Node-RED → forecaster",
        False,
        1,
        "Ask for a fresh forecast now; transaction is echoed in the response.",
    ),
    TopicSpec(
        "forecast_response",
        "response/forecast",
        ForecastResponse,
        "forecaster → requester",
        False,
        1,
        "Answer to a forecast request: status ok (data) or error, with the transaction.",
    ),
    TopicSpec(
        "prices",
        "prices",
        Prices,
        "prices → scheduler, HA, dashboard",
        True,
        1,
        "Import and export price per step (EUR/kWh) for today and, once known, tomorrow.",
    ),
    TopicSpec(
        "batteries_set",
        "batteries/set",
        BatteryCommand,
        "scheduler → actuator",
        False,
        1,
        "Desired mode of the batteries from the plan (not retained: never replayed stale).",
    ),
    TopicSpec(
        "batteries_override_set",
        "batteries/override/set",
        BatteryOverrideRequest,
        "HA, Node-RED, user, dashboard → actuator",
        False,
        1,
        'After a mode set in the HomeWizard app: {"state": "auto"} hands the batteries back '
        "to the plan.",
    ),
    TopicSpec(
        "batteries",
        "batteries",
        BatteryState,
        "actuator → scheduler, HA, dashboard",
        True,
        1,
        "The batteries' mode on the P1 meter and who controls it.",
    ),
    TopicSpec(
        "cost",
        "cost",
        CostSummary,
        "scheduler → HA, dashboard",
        True,
        1,
        "Prices now, today's cost so far, the plan's expected cost and the reference's.",
    ),
]

_BY_NAME: dict[str, TopicSpec] = {t.name: t for t in TOPICS}


def spec(name: str) -> TopicSpec:
    """The registry entry called `name` (KeyError if none)."""
    return _BY_NAME[name]


class Topics:
    """Every topic string under one base topic, the subscription wildcards and a parser."""

    def __init__(self, base: str = DEFAULT_BASE) -> None:
        bad = (
            not base
            or base.startswith(("$", "/"))
            or base.endswith("/")
            or "//" in base
            or any(c in "+#\0" or c.isspace() for c in base)
        )
        if bad:
            raise ValueError(
                f"base topic {base!r}: no wildcards (+ #), no empty level, no leading '$' or '/', "
                "no trailing '/', no spaces"
            )
        self.base = base

    def __repr__(self) -> str:
        return f"Topics({self.base!r})"

    def _build(self, name: str, **params: str) -> str:
        return _BY_NAME[name].build(self.base, **params)

    # state (retained)
    def measurement(self, device: str) -> str:
        return self._build("measurement", device=device)

    def device_availability(self, device: str) -> str:
        return self._build("device_availability", device=device)

    def surplus(self) -> str:
        return self._build("surplus")

    def forecast(self) -> str:
        return self._build("forecast")

    def plan(self) -> str:
        return self._build("plan")

    def books(self) -> str:
        return self._build("books")

    def socket_state(self, socket: str) -> str:
        return self._build("socket_state", socket=socket)

    def override(self, socket: str) -> str:
        return self._build("override", socket=socket)

    def next_on(self, socket: str) -> str:
        return self._build("next_on", socket=socket)

    def availability(self, service: str) -> str:
        return self._build("availability", service=service)

    def status(self, service: str) -> str:
        return self._build("status", service=service)

    # commands and events (not retained)
    def socket_set(self, socket: str) -> str:
        return self._build("socket_set", socket=socket)

    def override_set(self, socket: str) -> str:
        return self._build("override_set", socket=socket)

    def switched(self, socket: str) -> str:
        return self._build("switched", socket=socket)

    def forecast_request(self) -> str:
        return self._build("forecast_request")

    def forecast_response(self) -> str:
        return self._build("forecast_response")

    def prices(self) -> str:
        return self._build("prices")

    def batteries(self) -> str:
        return self._build("batteries")

    def batteries_set(self) -> str:
        return self._build("batteries_set")

    def batteries_override_set(self) -> str:
        return self._build("batteries_override_set")

    def cost(self) -> str:
        return self._build("cost")

    # subscription wildcards
    def all_measurements(self) -> str:
        return _BY_NAME["measurement"].wildcard(self.base)

    def all_device_availability(self) -> str:
        return _BY_NAME["device_availability"].wildcard(self.base)

    def all_socket_sets(self) -> str:
        return _BY_NAME["socket_set"].wildcard(self.base)

    def all_override_sets(self) -> str:
        return _BY_NAME["override_set"].wildcard(self.base)

    def all_overrides(self) -> str:
        return _BY_NAME["override"].wildcard(self.base)

    def all_socket_states(self) -> str:
        """`<base>/+`: also matches surplus/forecast/plan/books, so filter with `match`."""
        return _BY_NAME["socket_state"].wildcard(self.base)

    def all_switched(self) -> str:
        return _BY_NAME["switched"].wildcard(self.base)

    def all_availability(self) -> str:
        return _BY_NAME["availability"].wildcard(self.base)

    def all_status(self) -> str:
        return _BY_NAME["status"].wildcard(self.base)

    def everything(self) -> str:
        return f"{self.base}/#"

    def match(self, topic: str) -> tuple[TopicSpec, dict[str, str]] | None:
        """The spec and placeholder values of a concrete topic, or None.

        None for anything outside the layout: another base, unknown levels, wildcards,
        empty levels, non-slug or reserved device names.
        """
        prefix = self.base + "/"
        if not topic.startswith(prefix):
            return None
        parts = topic[len(prefix) :].split("/")
        for candidate in TOPICS:
            segments = candidate.segments
            if len(segments) != len(parts):
                continue
            params: dict[str, str] = {}
            for i, (seg, part) in enumerate(zip(segments, parts, strict=True)):
                if _PLACEHOLDER.match(seg):
                    if not is_slug(part) or (i == 0 and part in RESERVED_NAMES):
                        break
                    params[seg[1:-1]] = part
                elif seg != part:
                    break
            else:
                return candidate, params
        return None


# --- README table ---------------------------------------------------------------------------

_SUFFIX_UNITS: tuple[tuple[str, str], ...] = (
    ("_eur_kwh", "EUR/kWh"),
    ("_eur", "EUR"),
    ("_kwh", "kWh"),
    ("_wh", "Wh"),
    ("_pct", "%"),
    ("_w", "W"),
    ("_s", "s"),
)


def unit_of(name: str) -> str | None:
    """The unit a field name's suffix declares (`power_w` → W), or None."""
    for suffix, unit in _SUFFIX_UNITS:
        if name.endswith(suffix):
            return unit
    return None


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        if len(args) == 1:
            return args[0], optional
        return typing.Union[tuple(args)], optional  # noqa: UP007
    return annotation, False


def _base_type(annotation: Any) -> Any:
    """The type under `Annotated[...]`."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _leaf_unit(name: str, annotation: Any, extra: dict[str, Any]) -> str:
    """Unit / kind shown for a scalar field; numbers must declare a unit."""
    annotation = _base_type(annotation)
    if "unit" in extra:
        return str(extra["unit"])
    if typing.get_origin(annotation) is Literal:
        return " / ".join(str(v) for v in typing.get_args(annotation))
    if annotation is bool:
        return "bool"
    if annotation in (datetime, AwareDatetime):
        return "ISO 8601"
    suffix_unit = unit_of(name)
    if suffix_unit is not None:
        return suffix_unit
    if annotation is str:
        return "text"
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        # an identifier that may be text or a number (a request's `transaction`)
        members = [_base_type(a) for a in typing.get_args(annotation)]
        if str in members:
            return " or ".join("text" if a is str else a.__name__ for a in members)
        return " or ".join(dict.fromkeys(_leaf_unit(name, a, {}) for a in members))
    raise TypeError(f"field {name!r} ({annotation!r}) has no unit: add a unit suffix")


def _rows(path: str, name: str, annotation: Any, extra: dict[str, Any]) -> list[tuple[str, str]]:
    """(dotted path, unit) for one field, recursing into models, lists and dicts."""
    annotation, optional = _strip_optional(_base_type(annotation))
    annotation = _base_type(annotation)
    origin = typing.get_origin(annotation)
    if _is_model(annotation):
        rows: list[tuple[str, str]] = []
        for sub_name, sub in annotation.model_fields.items():
            rows += _rows(f"{path}.{sub_name}", sub_name, sub.annotation, _extra(sub))
    elif origin is list:
        (item,) = typing.get_args(annotation)
        rows = _rows(f"{path}[]", name, item, extra)
    elif origin is dict:
        _, value = typing.get_args(annotation)
        key = str(extra.get("key", "key"))
        rows = _rows(f"{path}.<{key}>", name, value, {k: v for k, v in extra.items() if k != "key"})
    else:
        rows = [(path, _leaf_unit(name, annotation, extra))]
    if optional:
        rows = [(p, u if u.endswith(", optional") else f"{u}, optional") for p, u in rows]
    return rows


def _extra(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


def field_rows(model: type[BaseModel]) -> list[tuple[str, str]]:
    """Every field of a model, nested ones dotted, with its unit: `[("power_w", "W"), ...]`.

    Dict keys appear as `<socket>`, list items as `[]`. Raises TypeError for a numeric field
    without a unit suffix (or an explicit `unit`), so units in names are enforced.
    """
    out: list[tuple[str, str]] = []
    for name, info in model.model_fields.items():
        out += _rows(name, name, info.annotation, _extra(info))
    return out


_INTRO = f"""\
All topics sit under one base topic (default `{DEFAULT_BASE}`, shown below); device, socket and
service levels are slugs of the configured names (`Kitchen Boiler` → `kitchen_boiler`); the names
{", ".join(f"`{n}`" for n in sorted(RESERVED_NAMES))} are reserved.

- **State** is JSON, **retained**, QoS 1: `{DEFAULT_BASE}/<thing>` or
  `{DEFAULT_BASE}/<thing>/<aspect>`.
- **Commands** (`…/set`) and events are **not retained** (QoS 1), so a stale command is never
  replayed after a restart.
- **Liveness**: each service publishes retained `online` on
  `{DEFAULT_BASE}/service/<name>/availability` and sets its MQTT **Will** to `offline` there, so a
  crash shows at once; `…/status` carries its version and counters. The poller publishes each
  device's own retained `online`/`offline` on `{DEFAULT_BASE}/<device>/availability` (it is only
  current while the poller is `online`: Home Assistant should require both).
- **Request/response**: `{DEFAULT_BASE}/request/forecast` is answered on
  `{DEFAULT_BASE}/response/forecast`, echoing `transaction`.
- **Every JSON payload** has `schema_version` and `timestamp`, units in field names, finite
  numbers only; unknown extra fields are ignored. Times are sent in UTC to the second
  (`2026-06-21T10:15:00Z`); any ISO 8601 time with an offset is read (naive times are refused).
- **Schema versioning**: adding an optional field keeps a model's version; anything else (new
  required field, removed/renamed field, changed type, unit or meaning) bumps it. Consumers drop
  (and count) messages with a version they do not know. Hand-typed commands (`override/set`,
  `request/forecast`) may leave out `schema_version` (= 1) and `timestamp`.
- Override command: `{{"state": "on"|"off"|"auto", "until": "<ISO time>"}}` or
  `{{"state": "on", "duration_s": 3600}}` (not both; at most 7 days; neither = default lease;
  `auto` ends the override).

In *fields*, `a.b` is a nested field, `a.<socket>` a map keyed by socket name, `a[]` a list
(per step for plans and forecasts)."""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_topic_table(topics: Sequence[TopicSpec] | None = None) -> str:
    """The README block between the markers: conventions, then one table row per topic."""
    lines = [
        _INTRO,
        "",
        "| topic | meaning | direction | retained | QoS | payload | fields (unit) |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in TOPICS if topics is None else topics:
        if t.model is None:
            fields = "—"
        else:
            fields = ", ".join(f"`{p}` ({u})" for p, u in field_rows(t.model))
        topic = f"`{DEFAULT_BASE}/{t.pattern}`"
        lines.append(
            "| "
            + " | ".join(
                _cell(c)
                for c in (
                    topic,
                    t.description,
                    t.direction,
                    "yes" if t.retained else "no",
                    str(t.qos),
                    t.payload,
                    fields,
                )
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def replace_table(readme: str, block: str | None = None) -> str:
    """`readme` with everything between the topic markers replaced by `block` (default: render)."""
    start = readme.find(README_START)
    end = readme.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {README_START} … {README_END} markers")
    block = render_topic_table() if block is None else block
    return readme[: start + len(README_START)] + "\n" + block + readme[end:]


def main(argv: list[str] | None = None) -> int:
    """`python -m shared.topics [README.md]`: rewrite the topic table in place."""
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else "README.md")
    text = path.read_text(encoding="utf-8")
    new = replace_table(text)
    if new != text:
        path.write_text(new, encoding="utf-8")
        print(f"{path}: topic table updated")
    else:
        print(f"{path}: topic table up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
