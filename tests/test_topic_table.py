"""Topic layout, topic parsing, and the README topic table kept in step with the models."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import AwareDatetime, BaseModel, create_model

from shared.messages import (
    MESSAGE_MODELS,
    DeviceMeasurement,
    Message,
    SocketBook,
    schema_version_of,
)
from shared.topics import (
    README_END,
    README_START,
    RESERVED_NAMES,
    TOPICS,
    Topics,
    TopicSpec,
    check_name,
    field_rows,
    render_topic_table,
    replace_table,
    spec,
)

README = Path(__file__).resolve().parents[1] / "README.md"

# --- building ---------------------------------------------------------------------------------


def test_topic_strings_default_base() -> None:
    t = Topics()
    assert t.base == "hwsched"
    assert t.measurement("p1") == "hwsched/p1/measurement"
    assert t.device_availability("p1") == "hwsched/p1/availability"
    assert t.surplus() == "hwsched/surplus"
    assert t.forecast() == "hwsched/forecast"
    assert t.plan() == "hwsched/plan"
    assert t.books() == "hwsched/books"
    assert t.socket_state("kitchen_boiler") == "hwsched/kitchen_boiler"
    assert t.socket_set("kitchen_boiler") == "hwsched/kitchen_boiler/set"
    assert t.override_set("kitchen_boiler") == "hwsched/kitchen_boiler/override/set"
    assert t.override("kitchen_boiler") == "hwsched/kitchen_boiler/override"
    assert t.switched("kitchen_boiler") == "hwsched/kitchen_boiler/switched"
    assert t.availability("poller") == "hwsched/service/poller/availability"
    assert t.status("poller") == "hwsched/service/poller/status"
    assert t.forecast_request() == "hwsched/request/forecast"
    assert t.forecast_response() == "hwsched/response/forecast"


def test_wildcards() -> None:
    t = Topics("home/energy")
    assert t.all_measurements() == "home/energy/+/measurement"
    assert t.all_device_availability() == "home/energy/+/availability"
    assert t.all_socket_sets() == "home/energy/+/set"
    assert t.all_override_sets() == "home/energy/+/override/set"
    assert t.all_overrides() == "home/energy/+/override"
    assert t.all_socket_states() == "home/energy/+"
    assert t.all_switched() == "home/energy/+/switched"
    assert t.all_availability() == "home/energy/service/+/availability"
    assert t.all_status() == "home/energy/service/+/status"
    assert t.everything() == "home/energy/#"


@pytest.mark.parametrize("base", ["", "/hwsched", "hwsched/", "a//b", "hw+", "hw/#", "$SYS", "h w"])
def test_bad_base_refused(base: str) -> None:
    with pytest.raises(ValueError, match="base topic"):
        Topics(base)


@pytest.mark.parametrize(
    "name", ["Boiler", "kitchen boiler", "a/b", "+", "#", "", "_x", "x_", "a__b", "é", "x" * 201]
)
def test_non_slug_names_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not a topic slug"):
        Topics().measurement(name)
    with pytest.raises(ValueError, match="not a topic slug"):
        Topics().availability(name)


@pytest.mark.parametrize("name", sorted(RESERVED_NAMES))
def test_reserved_names_refused_at_first_level_only(name: str) -> None:
    with pytest.raises(ValueError, match="reserved"):
        Topics().socket_state(name)
    with pytest.raises(ValueError, match="reserved"):
        check_name(name)
    # under service/ there is no clash
    assert Topics().status(name) == f"hwsched/service/{name}/status"


def test_build_checks_parameters() -> None:
    with pytest.raises(ValueError, match="takes"):
        spec("measurement").build("hwsched")
    with pytest.raises(ValueError, match="takes"):
        spec("surplus").build("hwsched", device="p1")
    assert spec("measurement").build("x", device="p1") == "x/p1/measurement"


# --- registry -------------------------------------------------------------------------------


def test_registry_shape() -> None:
    names = [t.name for t in TOPICS]
    patterns = [t.pattern for t in TOPICS]
    assert len(set(names)) == len(names)
    assert len(set(patterns)) == len(patterns)
    assert all(t.qos == 1 for t in TOPICS)
    # every message model has exactly one topic; two plain-string topics (availability)
    models = [t.model for t in TOPICS]
    assert sorted(m.__name__ for m in models if m is not None) == sorted(
        m.__name__ for m in MESSAGE_MODELS
    )
    assert [t.name for t in TOPICS if t.model is None] == ["device_availability", "availability"]


def test_commands_events_and_requests_are_not_retained_state_is() -> None:
    not_retained = {t.name for t in TOPICS if not t.retained}
    assert not_retained == {
        "socket_set",
        "override_set",
        "switched",
        "forecast_request",
        "forecast_response",
        "batteries_set",
        "batteries_override_set",
    }
    for t in TOPICS:
        if t.pattern.endswith("/set") or t.pattern.startswith(("request/", "response/")):
            assert not t.retained, t.pattern


def test_first_level_literals_are_reserved() -> None:
    firsts = {t.segments[0] for t in TOPICS if not t.segments[0].startswith("{")}
    assert firsts <= RESERVED_NAMES


# --- matching -------------------------------------------------------------------------------


def sample_params(t: TopicSpec) -> dict[str, str]:
    values = {"device": "p1_meter", "socket": "kitchen_boiler", "service": "scheduler"}
    return {p: values[p] for p in t.params}


@pytest.mark.parametrize("base", ["hwsched", "home/hwsched"])
@pytest.mark.parametrize("t", TOPICS, ids=[t.name for t in TOPICS])
def test_match_round_trip(base: str, t: TopicSpec) -> None:
    topics = Topics(base)
    params = sample_params(t)
    topic = t.build(base, **params)
    assert topics.match(topic) == (t, params)


def test_match_reads_the_names() -> None:
    t = Topics()
    got = t.match("hwsched/e_bike_2/override/set")
    assert got is not None
    assert got[0].name == "override_set"
    assert got[1] == {"socket": "e_bike_2"}
    got = t.match("hwsched/plan")
    assert got is not None
    assert got[0].name == "plan"
    assert got[1] == {}


@pytest.mark.parametrize(
    "topic",
    [
        "hwsched",
        "hwsched/",
        "other/boiler",
        "hwschedx/boiler",
        "HWSCHED/boiler",
        "hwsched/Boiler",
        "hwsched/boiler/",
        "hwsched//measurement",
        "hwsched/boiler/unknown",
        "hwsched/boiler/set/extra",
        "hwsched/boiler/override/get",
        "hwsched/+/measurement",
        "hwsched/#",
        "hwsched/kitchen boiler",
        "hwsched/plan/measurement",
        "hwsched/service/set",
        "hwsched/service/poller",
        "hwsched/service/Poller/status",
        "hwsched/service/poller/state",
        "hwsched/request/plan",
        "hwsched/response",
        "hwsched/a/b/c/d/e",
        "hwsched/" + "x" * 201,
    ],
)
def test_malformed_or_unknown_topics_refused(topic: str) -> None:
    assert Topics().match(topic) is None


def test_each_topic_matches_exactly_one_pattern() -> None:
    # brute force: no concrete topic fits two patterns (reserved names make it unambiguous)
    for t in TOPICS:
        topic = t.build("hwsched", **sample_params(t))
        fits = [
            other
            for other in TOPICS
            if re.fullmatch(
                "hwsched/"
                + "/".join("[^/]+" if s.startswith("{") else re.escape(s) for s in other.segments),
                topic,
            )
            and not (other.segments[0].startswith("{") and topic.split("/")[1] in RESERVED_NAMES)
        ]
        assert fits == [t]


# --- README table ---------------------------------------------------------------------------

UNIT_BY_SUFFIX = [
    ("_eur_kwh", "EUR/kWh"),
    ("_eur", "EUR"),
    ("_kwh", "kWh"),
    ("_wh", "Wh"),
    ("_pct", "%"),
    ("_w", "W"),
    ("_s", "s"),
]


def expected_unit(name: str, leaf: Any) -> str | None:
    """The unit a field must show, by this test's own rule (None: not checked)."""
    for suffix, unit in UNIT_BY_SUFFIX:
        if name.endswith(suffix):
            return unit
    if leaf in (datetime, AwareDatetime):
        return "ISO 8601"
    if leaf is bool:
        return "bool"
    return None


def _unwrap(annotation: Any) -> list[Any]:
    """Leaf types under Optional / Annotated / list / dict."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [x for a in typing.get_args(annotation) if a is not type(None) for x in _unwrap(a)]
    if origin is list:
        return _unwrap(typing.get_args(annotation)[0])
    if origin is dict:
        return _unwrap(typing.get_args(annotation)[1])
    return [annotation]


def expected_fields(model: type[BaseModel], prefix: str = "") -> dict[str, str | None]:
    """Every leaf field as a dotted path (without `<key>`/`[]`) → expected unit."""
    out: dict[str, str | None] = {}
    for name, info in model.model_fields.items():
        leaves = _unwrap(info.annotation)
        sub = [x for x in leaves if isinstance(x, type) and issubclass(x, BaseModel)]
        if sub:
            out |= expected_fields(sub[0], f"{prefix}{name}.")
        else:
            out[prefix + name] = expected_unit(name, leaves[0] if len(leaves) == 1 else None)
    return out


ENTRY = re.compile(r"`([^`]+)` \(([^)]+)\)")


def parse_table(text: str) -> dict[str, dict[str, str]]:
    """The README table as {topic pattern: {column: cell}}."""
    start, end = text.index(README_START), text.index(README_END)
    lines = [ln for ln in text[start:end].splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows: dict[str, dict[str, str]] = {}
    for line in lines[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        assert len(cells) == len(header), line
        row = dict(zip(header, cells, strict=True))
        rows[row["topic"].strip("`")] = row
    return rows


def check_table(text: str, topics: list[TopicSpec]) -> list[str]:
    """Problems between a README text and a registry (empty when in step)."""
    problems: list[str] = []
    rows = parse_table(text)
    wanted = {f"hwsched/{t.pattern}": t for t in topics}
    problems += [f"not in the table: {p}" for p in sorted(set(wanted) - set(rows))]
    problems += [f"not in the registry: {p}" for p in sorted(set(rows) - set(wanted))]
    for pattern, t in wanted.items():
        row = rows.get(pattern)
        if row is None:
            continue
        if row["retained"] != ("yes" if t.retained else "no"):
            problems.append(f"{pattern}: retained")
        if row["QoS"] != str(t.qos):
            problems.append(f"{pattern}: QoS")
        if t.model is None:
            if "online" not in row["payload"]:
                problems.append(f"{pattern}: plain payload")
            continue
        if f"`{t.model.__name__}` v{schema_version_of(t.model)}" != row["payload"]:
            problems.append(f"{pattern}: payload {row['payload']}")
        shown: dict[str, str] = {}
        for path, unit in ENTRY.findall(row["fields (unit)"]):
            plain = re.sub(r"\.<[a-z_]+>|\[\]", "", path)
            shown[plain] = unit.split(",")[0].strip()
        for field, unit in expected_fields(t.model).items():
            if field not in shown:
                problems.append(f"{pattern}: field {field} missing")
            elif unit is not None and shown[field] != unit:
                problems.append(f"{pattern}: field {field} shows {shown[field]}, not {unit}")
        extra = set(shown) - set(expected_fields(t.model))
        problems += [f"{pattern}: field {f} not in the model" for f in sorted(extra)]
    return problems


def test_readme_block_is_the_rendered_table() -> None:
    text = README.read_text(encoding="utf-8")
    assert text.count(README_START) == 1
    assert text.count(README_END) == 1
    block = text[text.index(README_START) + len(README_START) : text.index(README_END)]
    assert block == "\n" + render_topic_table(), "run: python -m shared.topics README.md"
    assert replace_table(text) == text


def test_readme_table_matches_registry_and_models() -> None:
    text = README.read_text(encoding="utf-8")
    assert check_table(text, TOPICS) == []
    # spot checks of what a reader sees
    rows = parse_table(text)
    m = rows["hwsched/{device}/measurement"]["fields (unit)"]
    assert "`power_w` (W)" in m
    assert "`state_of_charge_pct` (%, optional)" in m
    assert "`energy_import_kwh` (kWh, optional)" in m
    p = rows["hwsched/plan"]["fields (unit)"]
    assert "`sockets.<socket>.energy_wh[]` (Wh)" in p
    assert "`step_s` (s)" in p
    assert rows["hwsched/{socket}/set"]["retained"] == "no"
    assert rows["hwsched/service/{service}/availability"]["retained"] == "yes"
    intro = text[text.index(README_START) : text.index("| topic |")]
    assert "Will" in intro
    assert "not retained" in intro
    assert "bumps" in intro


#: DeviceMeasurement after someone added a field without touching the README.
GrownMeasurement = create_model(
    "DeviceMeasurement", __base__=DeviceMeasurement, heater_power_w=(float, 0.0)
)


class GrownBook(SocketBook):
    target_energy_wh: float = 0.0


def test_table_check_fails_when_a_model_grows() -> None:
    text = README.read_text(encoding="utf-8")
    grown = [
        dataclasses.replace(t, model=GrownMeasurement) if t.name == "measurement" else t
        for t in TOPICS
    ]
    problems = check_table(text, grown)
    assert problems == ["hwsched/{device}/measurement: field heater_power_w missing"]
    # and the rendered table moves with the model, so the README equality test fails too
    rendered = render_topic_table(grown)
    assert rendered != render_topic_table()
    assert "`heater_power_w` (W)" in rendered
    assert check_table(replace_table(text, rendered), grown) == []


def test_table_check_sees_nested_fields() -> None:
    class GrownBooks(Message):
        sockets: dict[str, GrownBook]

    rows = dict(field_rows(GrownBooks))
    assert rows["sockets.<key>.last_sample_at"] == "ISO 8601, optional"
    assert rows["sockets.<key>.target_energy_wh"] == "Wh"
    assert "sockets.target_energy_wh" in expected_fields(GrownBooks)


def test_table_check_fails_on_wrong_unit_or_stale_topic() -> None:
    text = README.read_text(encoding="utf-8")
    wrong_unit = text.replace("`surplus_w` (W)", "`surplus_w` (kW)")
    assert check_table(wrong_unit, TOPICS) == ["hwsched/surplus: field surplus_w shows kW, not W"]
    fewer = [t for t in TOPICS if t.name != "switched"]
    assert check_table(text, fewer) == ["not in the registry: hwsched/{socket}/switched"]


def test_numbers_without_a_unit_cannot_be_rendered() -> None:
    class Unitless(Message):
        power: float

    with pytest.raises(TypeError, match=r"'power'.*no unit"):
        field_rows(Unitless)

    class UnitlessCount(Message):
        cycles: int

    with pytest.raises(TypeError, match=r"'cycles'.*no unit"):
        field_rows(UnitlessCount)
