"""`hwsched run` (services/stack.py): the whole product as processes, on either broker.

Each test starts `hwsched run` as a subprocess on a free port (never the shared 1883), with
the broker forced ($HWSCHED_RUN_BROKER = embedded | mosquitto), reads the broker's port from
`<run-dir>/stack.json`, waits with aiomqtt until the poller's retained availability says
`online` and a house surplus arrives, then sends SIGINT and checks that the stack and every
process it started (children and their children, found by a marker variable they all
inherit) are gone within a bound. The forecaster's island may be absent: nothing here waits
for it.

The embedded broker (amqtt) is also checked on its own for what the services rely on:
retained messages (and clearing them), QoS 1, a will on an abrupt disconnect; and that a
client gets retained messages only for its own subscriptions (amqtt 0.12.1 needs the
correction in `services.stack` for that).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from services.stack import (
    BROKER_ENV,
    STABLE_AFTER_S,
    STACK_FILE,
    Child,
    StackError,
    choose_broker,
    embedded_broker_available,
    mosquitto_path,
    restart_delay,
    serve_embedded_broker,
    supervise,
)
from shared.messages import HouseSurplus, parse_message

ROOT = Path(__file__).resolve().parents[1]
#: The marker every process of a test's stack inherits (the stack strips HWSCHED_* only).
MARKER_VAR = "STACK_TEST_MARK"
#: From start until the poller is online and a surplus has arrived (a loaded 2-core machine).
READY_S = 45.0
#: From SIGINT until the stack has exited with every process it started.
STOP_S = 20.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _marked(mark: str) -> list[int]:
    """Pids of live processes whose environment carries `MARKER_VAR=mark`."""
    needle = f"{MARKER_VAR}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile, or not ours
            continue
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":  # a zombie is no process left running
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def _stack_env(broker: str, mark: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HWSCHED_")}
    return env | {BROKER_ENV: broker, MARKER_VAR: mark, "PYTHONUNBUFFERED": "1"}


def _output(out: Path) -> str:
    return out.read_text(errors="replace")


async def _read_stack_file(path: Path, proc: asyncio.subprocess.Process, out: Path) -> Any:
    deadline = time.monotonic() + READY_S
    while True:
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(await asyncio.to_thread(path.read_text))
            if data.get("broker", {}).get("port"):
                return data
        if proc.returncode is not None:
            pytest.fail(f"hwsched run exited ({proc.returncode}):\n{_output(out)}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {STACK_FILE} after {READY_S:.0f} s:\n{_output(out)}")
        await asyncio.sleep(0.1)


async def _stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGINT)
    try:
        return await asyncio.wait_for(proc.wait(), STOP_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise


async def _run_and_stop(broker: str, tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    run_dir = tmp_path / "run"
    out = tmp_path / "stack.out"
    with out.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.cli",
            "run",
            "--run-dir",
            str(run_dir),
            cwd=ROOT,
            env=_stack_env(broker, mark),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        info = await _read_stack_file(run_dir / STACK_FILE, proc, out)
        assert info["broker"]["kind"] == broker
        assert info["broker"]["host"] == "127.0.0.1"
        port = int(info["broker"]["port"])
        assert port != 1883
        base = info["base_topic"]
        availability = f"{base}/service/poller/availability"
        filters = [availability, f"{base}/surplus"]
        online = False
        surplus: HouseSurplus | None = None
        others: list[str] = []
        started = time.monotonic()
        async with (
            aiomqtt.Client("127.0.0.1", port, identifier=f"test-stack-{mark[:8]}") as client,
            asyncio.timeout(READY_S),
        ):
            for topic in filters:
                await client.subscribe(topic, qos=1)
            async for message in client.messages:
                topic = message.topic.value
                if not any(message.topic.matches(f) for f in filters):
                    others.append(topic)
                elif topic == availability:
                    online = bytes(message.payload) == b"online"  # type: ignore[arg-type]
                else:
                    surplus = parse_message(HouseSurplus, bytes(message.payload))  # type: ignore[arg-type]
                if online and surplus is not None:
                    break
        ready_s = time.monotonic() - started
        assert others == [], "messages on topics the client never subscribed to"
        assert surplus is not None
        assert surplus.sockets_w  # the simulated house's sockets are in it
        info = json.loads((run_dir / STACK_FILE).read_text())
        assert info["state"] == "running"
        children = info["children"]
        assert {
            "broker",
            "simulator",
            "poller",
            "prices",
            "scheduler",
            "actuator",
            "bridge",
        } <= set(children)
        assert set(children.values()) <= set(_marked(mark))  # the marker reaches them
        sigint_at = time.monotonic()
    finally:
        code = await _stop(proc)
    stop_s = time.monotonic() - sigint_at
    text = out.read_text()
    assert code == 0, text
    assert "[stack] stopped" in text
    what = "embedded Python broker (amqtt" if broker == "embedded" else "mosquitto ("
    assert f"[stack] broker: {what}" in text
    assert json.loads((run_dir / STACK_FILE).read_text())["state"] == "stopped"
    assert _marked(mark) == [], "processes of the stack still running after it exited"
    print(f"{broker}: ready {ready_s:.1f} s after the broker, stopped {stop_s:.1f} s after SIGINT")


async def test_hwsched_run_on_the_embedded_broker(tmp_path: Path) -> None:
    assert embedded_broker_available(), "amqtt is not installed: requirements/runtime.lock"
    await _run_and_stop("embedded", tmp_path)


async def test_hwsched_run_on_the_local_mosquitto(tmp_path: Path) -> None:
    if mosquitto_path() is None:
        pytest.fail("no mosquitto binary: apt-get install mosquitto (.ci/run does)")
    await _run_and_stop("mosquitto", tmp_path)


def test_the_broker_is_chosen_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = choose_broker("embedded", 12345, tmp_path)
    assert plan.kind == "embedded"
    assert plan.argv[1:3] == ["-m", "services.stack"]
    assert "12345" in plan.argv
    monkeypatch.setattr("services.stack.mosquitto_path", lambda: None)
    auto = choose_broker("auto", 12345, tmp_path)
    assert auto.kind == "embedded"
    assert "no mosquitto installed" in auto.description
    with pytest.raises(StackError, match="apt-get install mosquitto"):
        choose_broker("mosquitto", 12345, tmp_path)
    with pytest.raises(StackError, match="choose one of"):
        choose_broker("rabbitmq", 12345, tmp_path)
    monkeypatch.setattr("services.stack.mosquitto_path", lambda: "/usr/sbin/mosquitto")
    local = choose_broker("auto", 12345, tmp_path)
    assert local.kind == "mosquitto"
    assert "listener 12345 127.0.0.1" in (tmp_path / "mosquitto.conf").read_text()


# --- the embedded broker on its own ----------------------------------------------------------


@pytest.fixture
async def embedded() -> AsyncIterator[int]:
    port = _free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(serve_embedded_broker("127.0.0.1", port, stop))
    deadline = time.monotonic() + 10
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            break
        except OSError:
            if task.done() or time.monotonic() > deadline:
                await task  # its error, if any
                pytest.fail("the embedded broker did not listen")
            await asyncio.sleep(0.05)
    try:
        yield port
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _collect(client: aiomqtt.Client, seconds: float) -> list[tuple[str, bytes, bool, int]]:
    got: list[tuple[str, bytes, bool, int]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for m in client.messages:
                got.append((m.topic.value, bytes(m.payload), m.retain, m.qos))  # type: ignore[arg-type]
    return got


#: A client with a will that says it is online, then waits to be killed.
DYING_CLIENT = """
import sys, threading, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dying")
c.will_set("t/state/avail", b"offline", qos=1, retain=True)
c.connect("127.0.0.1", int(sys.argv[1]), keepalive=60)
c.loop_start()
c.publish("t/state/avail", b"online", qos=1, retain=True).wait_for_publish(10)
print("online", flush=True)
time.sleep(60)
"""


async def test_embedded_broker_retains_acks_and_sends_wills(embedded: int) -> None:
    port = embedded
    async with aiomqtt.Client("127.0.0.1", port, identifier="pub") as pub:
        await pub.publish("t/state/a", b"A", qos=1, retain=True)
        await pub.publish("t/other", b"O", qos=1, retain=True)
    async with aiomqtt.Client("127.0.0.1", port, identifier="watch") as watch:
        await watch.subscribe("t/state/#", qos=1)
        assert await _collect(watch, 0.5) == [("t/state/a", b"A", True, 1)]
        # a will: published (retained) when its client dies without DISCONNECT (SIGKILL)
        dying = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            DYING_CLIENT,
            str(port),
            stdout=asyncio.subprocess.PIPE,
        )
        assert dying.stdout is not None
        assert await asyncio.wait_for(dying.stdout.readline(), 15) == b"online\n"
        dying.kill()
        await dying.wait()
        live = await _collect(watch, 2.0)
        assert ("t/state/avail", b"online", False, 1) in live
        assert ("t/state/avail", b"offline", False, 1) in live
    # a newcomer gets the retained will and its own topics' retained messages, nothing else
    # (the watcher's filter t/state/# is still known to the broker, t/other is not its own)
    async with aiomqtt.Client("127.0.0.1", port, identifier="late") as late:
        await late.subscribe("t/state/avail", qos=1)
        assert await _collect(late, 0.5) == [("t/state/avail", b"offline", True, 1)]
        # an empty retained message clears the topic
        await late.publish("t/state/avail", b"", qos=1, retain=True)
    async with aiomqtt.Client("127.0.0.1", port, identifier="after") as after:
        await after.subscribe("t/state/#", qos=1)
        assert await _collect(after, 0.5) == [("t/state/a", b"A", True, 1)]


async def test_embedded_broker_sends_no_retained_message_a_client_did_not_ask_for(
    embedded: int,
) -> None:
    port = embedded
    async with aiomqtt.Client("127.0.0.1", port, identifier="pub") as pub:
        await pub.publish("x/plan", b"P", qos=1, retain=True)
        await pub.publish("x/surplus", b"S", qos=1, retain=True)
    async with aiomqtt.Client("127.0.0.1", port, identifier="service") as service:
        await service.subscribe("x/#", qos=1)  # another client's filter matching both
        assert len(await _collect(service, 0.5)) == 2
        async with aiomqtt.Client("127.0.0.1", port, identifier="narrow") as narrow:
            await narrow.subscribe("x/surplus", qos=1)
            assert await _collect(narrow, 0.7) == [("x/surplus", b"S", True, 1)]
        async with aiomqtt.Client("127.0.0.1", port, identifier="silent") as silent:
            assert await _collect(silent, 0.7) == []  # subscribed to nothing: gets nothing


# --- the supervisor -----------------------------------------------------------------------


def test_the_back_off_doubles_on_quick_exits_and_resets_after_a_stable_run(
    tmp_path: Path,
) -> None:
    child = Child("x", ["true"], {}, tmp_path / "x.log")
    child.started_at = 1000.0
    delays = []
    for _ in range(8):  # each one exits 1 s after its start: a crash loop
        delays.append(restart_delay(child, child.started_at + 1.0))
        child.restarts += 1
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    # one that ran STABLE_AFTER_S (Docker's rule) is restarted after the shortest delay again
    assert restart_delay(child, child.started_at + STABLE_AFTER_S) == 1.0
    assert child.restarts == 0


async def test_one_childs_back_off_holds_no_other_back(tmp_path: Path) -> None:
    """A child in a long back-off (a crash loop) must not delay the restart of another one
    (the soak found the supervisor sleeping through one child's back-off for all of them)."""
    env = {"PATH": os.environ.get("PATH", "")}
    looping = Child("looping", [sys.executable, "-c", "raise SystemExit(3)"], env, tmp_path / "l")
    steady = Child("steady", ["sleep", "60"], env, tmp_path / "s")
    looping.restarts = 5  # its next delay: 32 s
    stop = asyncio.Event()
    changes: list[None] = []
    await looping.start()
    await steady.start()
    supervisor = asyncio.create_task(
        supervise([looping, steady], stop, lambda: changes.append(None))
    )
    try:
        deadline = time.monotonic() + 10
        while looping.proc is not None:  # it exits at once; the supervisor sees it
            assert time.monotonic() < deadline, "the supervisor never saw the exit"
            await asyncio.sleep(0.05)
        assert looping.total_restarts == 1
        first_pid = steady.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        while steady.pid in (None, first_pid):
            assert time.monotonic() - killed_at < 5, "steady was held back by looping's back-off"
            await asyncio.sleep(0.05)
        restarted_after = time.monotonic() - killed_at
        assert restarted_after < 2.5, restarted_after  # its own delay: 1 s
        assert steady.proc is not None
        assert steady.proc.returncode is None
        assert steady.total_restarts == 1
        assert looping.proc is None, "looping restarted before its 32-s back-off"
        assert changes, "stack.json was never told"
    finally:
        stop.set()
        await asyncio.wait_for(supervisor, 5)
        await steady.stop(grace_s=2)
        await looping.stop(grace_s=2)
