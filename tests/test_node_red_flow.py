"""examples/node-red-flow.json: importable, core nodes only, the real topics and payloads."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.messages import (
    HouseSurplus,
    OverrideRequest,
    OverrideState,
    PlanMessage,
    SocketPlan,
    dump_message,
    parse_message,
)
from shared.topics import Topics

FLOW = Path(__file__).resolve().parents[1] / "examples" / "node-red-flow.json"
#: Node-RED's own nodes: the flow must import without an extra palette.
CORE_TYPES = {
    "tab",
    "comment",
    "mqtt in",
    "mqtt out",
    "mqtt-broker",
    "function",
    "inject",
    "debug",
    "change",
    "json",
}
TOPICS = Topics("hwsched")


def flow() -> list[dict[str, Any]]:
    nodes = json.loads(FLOW.read_text(encoding="utf-8"))
    assert isinstance(nodes, list)
    assert all(isinstance(n, dict) for n in nodes)
    return nodes


def of_type(kind: str) -> list[dict[str, Any]]:
    return [n for n in flow() if n["type"] == kind]


def test_parses_with_unique_ids_and_core_nodes_only() -> None:
    nodes = flow()
    ids = [n["id"] for n in nodes]
    assert len(ids) == len(set(ids))
    assert {n["type"] for n in nodes} <= CORE_TYPES
    tabs = {n["id"] for n in of_type("tab")}
    assert len(tabs) == 1
    for n in nodes:
        if n["type"] not in ("tab", "mqtt-broker"):
            assert n["z"] in tabs, n["id"]


def test_wires_point_at_existing_nodes() -> None:
    ids = {n["id"] for n in flow()}
    for n in flow():
        for output in n.get("wires", []):
            assert isinstance(output, list)
            for target in output:
                assert target in ids, (n["id"], target)
    functions = of_type("function")
    assert functions
    for f in functions:
        assert len(f["wires"]) == f["outputs"]


def test_mqtt_nodes_use_the_broker_node_and_real_topics() -> None:
    brokers = of_type("mqtt-broker")
    assert len(brokers) == 1
    broker = brokers[0]
    assert broker["broker"]
    assert broker["port"] == "1883"
    mqtt = of_type("mqtt in") + of_type("mqtt out")
    for n in mqtt:
        assert n["broker"] == broker["id"]
    inputs = {n["topic"]: n for n in of_type("mqtt in")}
    assert {"hwsched/plan", "hwsched/surplus"} <= set(inputs)
    for topic, n in inputs.items():
        found = TOPICS.match(topic)
        assert found is not None, topic
        assert found[0].model is not None
        assert n["datatype"] == "json"
        assert n["qos"] == "1"
    (out,) = of_type("mqtt out")
    assert out["retain"] == "false"  # commands are never retained
    assert out["qos"] == "1"
    assert out["topic"] == ""  # each inject names its topic


def test_every_topic_in_the_flow_is_a_registry_topic() -> None:
    for n in flow():
        topic = n.get("topic")
        if topic:
            assert TOPICS.match(topic) is not None, (n["id"], topic)


def test_injects_publish_real_override_requests() -> None:
    (out,) = of_type("mqtt out")
    injects = of_type("inject")
    payloads = []
    for n in injects:
        assert n["wires"] == [[out["id"]]]
        found = TOPICS.match(n["topic"])
        assert found is not None
        assert found[0].name == "override_set"
        assert n["payloadType"] == "json"
        assert {"p": "topic", "vt": "str"} in n["props"]
        request = parse_message(OverrideRequest, n["payload"])
        payloads.append(json.loads(n["payload"]))
        assert request.state in ("on", "off", "auto")
    assert {"state": "on", "duration_s": 3600} in payloads
    assert {"state": "auto"} in payloads


def test_formatter_reads_the_flow_inputs() -> None:
    (fn,) = of_type("function")
    feeding = {n["topic"] for n in of_type("mqtt in") if [fn["id"]] in n["wires"]}
    assert {"hwsched/plan", "hwsched/surplus"} <= feeding
    body = fn["func"]
    assert body.count("{") == body.count("}")
    assert body.count("(") == body.count(")")
    for field in ("sockets", "states", "energy_wh", "step_s", "start", "surplus_w"):
        assert field in body
        # the fields it reads are fields of the real messages
        assert (
            field in PlanMessage.model_fields
            or field in HouseSurplus.model_fields
            or (field in SocketPlan.model_fields)
        )


NODE = shutil.which("node")
HARNESS = """
const fs = require("fs");
const body = fs.readFileSync(process.argv[2], "utf8");
const input = fs.readFileSync(process.argv[3], "utf8");
const warnings = [];
const stub = { warn: (m) => warnings.push(String(m)), error: (m) => warnings.push(String(m)),
               status: () => {}, log: () => {} };
const fn = new Function("msg", "node", "context", "flow", "global", "env", "RED", body);
const result = fn(JSON.parse(input), stub, {}, {}, {}, {}, {});
process.stdout.write(JSON.stringify({ result: result === undefined ? null : result, warnings }));
"""


def run_function(tmp_path: Path, msg: dict[str, Any]) -> dict[str, Any]:
    assert NODE is not None
    (fn,) = of_type("function")
    (tmp_path / "body.js").write_text(fn["func"], encoding="utf-8")
    (tmp_path / "msg.json").write_text(json.dumps(msg), encoding="utf-8")
    (tmp_path / "harness.js").write_text(HARNESS, encoding="utf-8")
    done = subprocess.run(
        [NODE, str(tmp_path / "harness.js"), str(tmp_path / "body.js"), str(tmp_path / "msg.json")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    return out


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_function_bodies_pass_node_check(tmp_path: Path) -> None:
    for i, fn in enumerate(of_type("function")):
        wrapped = tmp_path / f"fn{i}.js"
        wrapped.write_text(
            "async function f(msg, node, context, flow, global, env, RED) {\n"
            + fn["func"]
            + "\n}\n",
            encoding="utf-8",
        )
        assert NODE is not None
        done = subprocess.run(
            [NODE, "--check", str(wrapped)], capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 0, done.stderr


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_function_formats_real_messages(tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(minutes=20)
    plan = PlanMessage(
        timestamp=now,
        made_at=now,
        start=start,
        step_s=900,
        sockets={
            "Kitchen boiler": SocketPlan(states=[0, 1, 1, 0], energy_wh=[0, 500, 500, 0]),
            "E-bike": SocketPlan(states=[0, 0, 0, 1], energy_wh=[0, 0, 0, 75]),
        },
        battery_power_w=[0.0] * 4,
        battery_energy_wh=[0.0] * 4,
        planner="optimal",
        status="optimal",
        solve_s=0.1,
        available_power_w=[0.0] * 4,
        excluded=["Shower boiler"],
    )
    got = run_function(
        tmp_path, {"topic": "hwsched/plan", "payload": json.loads(dump_message(plan))}
    )
    shown, second = got["result"]
    assert second is None
    assert shown["payload"]["status"] == "optimal"
    sockets = shown["payload"]["sockets"]
    assert sockets["Kitchen boiler"] == "on now, 1000 Wh to go"
    assert sockets["E-bike"].startswith("on at ")
    assert sockets["E-bike"].endswith(", 75 Wh to go")
    assert "left out" in sockets["Shower boiler"]
    assert got["warnings"] == []

    surplus = HouseSurplus(
        timestamp=now,
        surplus_w=2000.4,
        p1_power_w=-800.0,
        sockets_w={"Kitchen boiler": 1200.4},
        based_on=["P1 meter", "Kitchen boiler"],
    )
    got = run_function(
        tmp_path, {"topic": "hwsched/surplus", "payload": json.loads(dump_message(surplus))}
    )
    assert got["result"] == [
        None,
        {"topic": "hwsched/surplus", "payload": "surplus 2000 W (P1 -800 W)"},
    ]

    override = OverrideState(
        timestamp=now,
        socket="Kitchen boiler",
        state="on",
        until=now + timedelta(hours=1),
        source="mqtt",
        set_at=now,
    )
    got = run_function(
        tmp_path,
        {"topic": "hwsched/kitchen_boiler/override", "payload": json.loads(dump_message(override))},
    )
    assert got["result"][1]["payload"].startswith("Kitchen boiler: override on until ")

    got = run_function(tmp_path, {"topic": "hwsched/plan", "payload": "junk"})
    assert got["result"] is None
    assert got["warnings"]
