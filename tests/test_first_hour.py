"""A newcomer's first hour (issue 15): what the README's set-up leaves typeable, what
`check-config` says, and `make run`'s line per new plan."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import logging
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import aiomqtt
import pytest

from services.cli import main, package_version
from services.stack import SERVICES, plan_changed, plan_summary, plan_windows, watch_plans
from shared.clock import ManualClock
from shared.messages import OverrideState, PlanMessage, SocketPlan, dump_message
from shared.service import setup_logging
from tests.conftest import MqttBroker

ROOT = Path(__file__).resolve().parents[1]
AMS = ZoneInfo("Europe/Amsterdam")
#: 12:00 in Amsterdam (CEST).
NOON = datetime(2026, 6, 21, 10, 0, tzinfo=UTC)

# --- point 1: what a person can type --------------------------------------------------------


def test_version_answers_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out == f"hwsched {package_version()}"
    assert re.fullmatch(r"hwsched \d+\.\d+\.\d+\S*", out)


def test_run_help_names_every_service_the_stack_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in SERVICES:
        assert name in text, name
        assert importlib.util.find_spec(f"services.{name}.__main__") is not None, name
    assert {"prices", "dashboard"} <= set(SERVICES)


def test_make_has_the_readmes_common_commands() -> None:
    """What the README shows is typeable after its set-up: `make <target>`, or `hwsched`
    once the venv is activated (the README says how)."""
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.MULTILINE))
    assert {"run", "test", "check-config", "plan", "status", "watch", "version", "override"} <= (
        targets
    )
    assert re.search(r"^check-config:.*\n\t\$\(BIN\)/hwsched check-config", makefile, re.M)
    readme = (ROOT / "README.md").read_text()
    assert ". .venv/bin/activate" in readme
    for target in ("make check-config", "make plan", "make status", "make override SOCKET="):
        assert target in readme, target


# --- points 2 and 3: check-config -----------------------------------------------------------


def test_check_config_prints_each_arrays_kwp_and_the_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = json.loads((ROOT / "config" / "config_devices.example.json").read_text())
    data["devices"][1]["energy_capacity"] = 2  # kWh written where Wh is meant
    devices = tmp_path / "devices.json"
    devices.write_text(json.dumps(data))
    assert main(["check-config", "--devices", str(devices)]) == 0
    out = capsys.readouterr().out
    assert "solar array 'South roof': 3.2 kWp" in out
    assert "solar array 'West roof': 1.6 kWp" in out
    assert "solar total: 4.8 kWp" in out
    assert f"warning: {devices}: devices[1].energy_capacity: 2 Wh is full after" in out


def test_check_config_without_a_devices_file_says_the_next_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "config_devices.json"
    assert main(["check-config", "--devices", str(missing)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"hwsched check-config: {missing}: file not found: ")
    assert f"cp config/config_devices.example.json {missing}" in line
    for field in ("ip_address", "daily_need", "capacity_kwp", "hwsched pair"):
        assert field in line, field


# --- point 4: log lines in local time with the offset ---------------------------------------


@pytest.fixture
def root_logging() -> Iterator[None]:
    """`setup_logging` replaces the root logger's handlers: put pytest's back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.mark.usefixtures("root_logging")
def test_log_lines_carry_local_time_with_its_offset() -> None:
    """A container's host time is UTC without an offset; the house's is not: the settings'
    time zone, with its offset, to the millisecond."""
    out = io.StringIO()
    setup_logging("INFO", stream=out, tz=AMS)
    logging.getLogger("hwsched.test").info("hello")
    (line,) = out.getvalue().splitlines()
    stamp, rest = line.split(" ", 1)
    assert rest == "INFO hwsched.test: hello"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0[12]:00", stamp), stamp
    assert abs(datetime.fromisoformat(stamp) - datetime.now(UTC)) < timedelta(minutes=5)


@pytest.mark.usefixtures("root_logging")
def test_on_a_simulated_clock_a_log_line_says_the_simulated_time_too() -> None:
    out = io.StringIO()
    clock = ManualClock(datetime(2026, 6, 21, 4, 12, 30, 400_000, tzinfo=UTC))
    setup_logging("INFO", stream=out, tz=AMS, sim_clock=clock)
    logging.getLogger("hwsched.test").warning("the latest surplus is 264 s old")
    line = out.getvalue().strip()
    assert " [simulated 2026-06-21T06:12:30+02:00] WARNING hwsched.test: the latest" in line


# --- point 6: a line per new plan -----------------------------------------------------------


def plan(made: datetime, rows: dict[str, list[int]], **more: object) -> PlanMessage:
    n = len(next(iter(rows.values())))
    return PlanMessage(
        timestamp=made,
        made_at=made,
        start=made.replace(minute=made.minute - made.minute % 15, second=0),
        step_s=900,
        sockets={
            k: SocketPlan(states=v, energy_wh=[500.0 * s for s in v])  # type: ignore[arg-type]
            for k, v in rows.items()
        },
        battery_power_w=[0.0] * n,
        battery_energy_wh=[0.0] * n,
        planner="optimal",
        status="optimal",
        solve_s=0.1,
        available_power_w=[1000.0] * n,
        **more,  # type: ignore[arg-type]
    )


def test_the_summary_says_who_runs_when_in_local_time_and_the_expected_import() -> None:
    p = plan(
        NOON,
        {"Kitchen boiler": [0, 1, 1, 0, 0, 1], "E-bike": [0] * 6},
        expected_import_wh=350.0,
        expected_cost_eur=0.08,
        excluded=["Shower boiler"],
    )
    assert plan_windows(p) == [
        ("Kitchen boiler", NOON + timedelta(minutes=15), NOON + timedelta(minutes=45)),
        ("Kitchen boiler", NOON + timedelta(minutes=75), NOON + timedelta(minutes=90)),
    ]
    assert plan_summary(p, AMS) == (
        "[plan] 12:00 optimal: Kitchen boiler 12:15–12:45, 13:15–13:30; E-bike off; "
        "Shower boiler left out (override/manual); expected import 0.35 kWh, cost 0.08 EUR"
    )


def test_a_replan_that_keeps_who_runs_when_is_not_news() -> None:
    first = plan(NOON, {"boiler": [1, 1, 1, 1, 0, 0, 0, 0]}, expected_import_wh=100.0)
    # 15 min on: the boiler's run is under way, same end; the figures moved a little
    later = plan(NOON + timedelta(minutes=15), {"boiler": [1, 1, 1, 0, 0, 0, 0]})
    assert plan_changed(None, first)
    assert not plan_changed(first, later)
    assert plan_summary(later, AMS).startswith("[plan] 12:15 optimal: boiler now–13:00")
    moved = plan(NOON + timedelta(minutes=15), {"boiler": [0, 1, 1, 1, 0, 0, 0]})
    assert plan_changed(first, moved)
    gone = plan(NOON + timedelta(minutes=15), {"boiler": [1, 1, 1, 0, 0, 0, 0]}, excluded=["x"])
    assert plan_changed(first, gone)
    # planned at 12:16 on steps from 12:16: the same run, a minute later: not news
    slid = plan(NOON + timedelta(minutes=16), {"boiler": [1, 1, 1, 0, 0, 0, 0]})
    slid = slid.model_copy(update={"start": NOON + timedelta(minutes=16)})
    assert not plan_changed(first, slid)
    # the reference planner standing in with the same on-times: not news either
    stand_in = later.model_copy(update={"planner": "reference", "fallback_reason": "timed out"})
    assert not plan_changed(later, stand_in)


async def test_the_stack_prints_one_line_per_plan_that_changed(mqtt_broker: MqttBroker) -> None:
    base = f"fh-{uuid.uuid4().hex[:8]}"
    lines: list[str] = []
    got = asyncio.Event()

    def out(line: str) -> None:
        lines.append(line)
        got.set()

    def connect() -> aiomqtt.Client:
        return aiomqtt.Client(mqtt_broker.host, mqtt_broker.port, identifier=f"w-{uuid.uuid4()}")

    plans = [
        plan(NOON, {"boiler": [1, 1, 0, 0]}),
        plan(NOON + timedelta(minutes=5), {"boiler": [1, 1, 0, 0]}),  # the same: quiet
        plan(NOON + timedelta(minutes=6), {"boiler": [0, 0, 1, 1]}),  # moved: a line
    ]
    watcher = asyncio.create_task(watch_plans(connect, f"{base}/plan", AMS, out))
    try:
        async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as pub:
            await pub.publish(f"{base}/plan", b"not json", qos=1, retain=True)  # ignored
            for p in plans:
                got.clear()
                await pub.publish(f"{base}/plan", dump_message(p), qos=1, retain=True)
                if p is not plans[1]:
                    await asyncio.wait_for(got.wait(), 10)
            # the quiet one was before the last, which did print: it was taken and not shown
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as pub:
            await pub.publish(f"{base}/plan", b"", qos=1, retain=True)
    assert lines == [
        "[plan] 12:00 optimal: boiler now–12:30",
        "[plan] 12:06 optimal: boiler 12:30–13:00",
    ]


# --- an override without mosquitto_pub --------------------------------------------------------


async def test_override_publishes_the_command_and_says_what_the_actuator_made_of_it(
    mqtt_broker: MqttBroker, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    base = f"fh-{uuid.uuid4().hex[:8]}"
    for key, value in {
        "HWSCHED_BROKER__HOST": mqtt_broker.host,
        "HWSCHED_BROKER__PORT": str(mqtt_broker.port),
        "HWSCHED_BASE_TOPIC": base,
        "HWSCHED_DEVICES_FILE": str(ROOT / "config" / "config_devices.example.json"),
        "HWSCHED_SETTINGS_FILE": str(ROOT / "config" / "settings.example.toml"),
    }.items():
        monkeypatch.setenv(key, value)
    commands: list[dict[str, object]] = []
    ready = asyncio.Event()

    async def actuator() -> None:
        """Answers as the actuator does: the override in force, retained."""
        async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as client:
            await client.subscribe(f"{base}/+/override/set", qos=1)
            ready.set()
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                command = json.loads(message.payload)
                commands.append(command)
                now = datetime.now(UTC)
                until = now + timedelta(seconds=command.get("duration_s", 0))
                state = OverrideState(
                    timestamp=now,
                    socket="Kitchen boiler",
                    state=command["state"],
                    until=until if command["state"] != "auto" else None,
                    source="mqtt",
                    set_at=now,
                )
                topic = str(message.topic).removesuffix("/set")
                await client.publish(topic, dump_message(state), qos=1, retain=True)

    task = asyncio.create_task(actuator())
    try:
        await asyncio.wait_for(ready.wait(), 10)
        args = ["override", "Kitchen boiler", "on", "--for", "30m", "--timeout", "20"]
        assert await asyncio.to_thread(main, args) == 0
        out = capsys.readouterr().out
        assert commands == [{"state": "on", "duration_s": 1800}]
        assert out.startswith(
            f'sent {{"state": "on", "duration_s": 1800}} to {base}/kitchen_boiler/override/set;'
            " the actuator: override on until "
        )
        # the retained "on" is what was in force before: the answer to "auto" is awaited
        assert await asyncio.to_thread(main, ["override", "kitchen_boiler", "auto"]) == 0
        assert "the actuator: no override, back to the plan" in capsys.readouterr().out
        assert commands[-1] == {"state": "auto"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as pub:
            await pub.publish(f"{base}/kitchen_boiler/override", b"", qos=1, retain=True)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["boiler", "on"], "no socket 'boiler' in config/config_devices.example.json: one of"),
        (["kitchen_boiler", "on", "--for", "3 weeks"], "--for: a duration like 30m"),
        (["kitchen_boiler", "auto", "--for", "1h"], "auto ends the override"),
        (["kitchen_boiler", "on", "--for", "200h"], "--for: at most 7 days (got 200 h)"),
    ],
)
def test_a_wrong_override_is_one_line_and_nothing_sent(
    args: list[str],
    problem: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HWSCHED_DEVICES_FILE", "config/config_devices.example.json")
    monkeypatch.setenv("HWSCHED_BROKER__PORT", "1")  # nothing listens: nothing may be sent
    monkeypatch.chdir(ROOT)
    assert main(["override", *args]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("hwsched override: ")
    assert problem in line
