"""`docker compose up` for real: the images built, the stack on the simulated house, checked
from outside as a user does.

Marked `compose` (a Docker engine and a few minutes): left out of a plain pytest; `make
test-compose` runs it, CI too. What it does, in a temporary copy of the project with its own
.env (random passwords) and compose project name, so nothing of a user's own stack is touched:

1. the engine: the running one, or `dockerd --ip-forward=false` started for the run and stopped
   after it (tests/docker_helpers.py);
2. the base images: STAND-INS built from Debian's packages, because Docker Hub cannot be
   reached from CI's machines: Debian bookworm's python3 3.11 in place of
   python:3.11.14-slim-bookworm, Debian's mosquitto 2.0.11 laid out like eclipse-mosquitto
   (docker/images.py standins; built once per machine, reused while their recipe holds).
   COMPOSE_TEST_BASES=official uses the official images instead;
3. every image compose defines, built one at a time by docker/images.py (timed; sizes
   printed), with this machine's extra CAs (/usr/local/share/ca-certificates) through the
   build-time CA hook, on the host's network (containers here cannot route out);
4. `docker compose -f compose.yaml -f compose.sim.yaml --profile sim up -d`, plus an overlay
   that publishes the broker and the simulator's control API on 127.0.0.1 only (free ports);
5. the checks below, as user `ha` on the broker and through the simulator's control API;
6. `down -v`: containers, networks and volumes gone (and no anonymous volume was ever made).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from shared.config import load_devices
from shared.naming import slugify
from shared.sky import sun_position
from tests.docker_helpers import Engine, load_images

pytestmark = pytest.mark.compose

ROOT = Path(__file__).resolve().parents[1]
BASE = "hwsched"
HA_PREFIX = "homeassistant"
#: What the project copy holds: what compose and the builds read.
PROJECT_FILES = (
    "compose.yaml",
    "compose.sim.yaml",
    ".dockerignore",
    "pyproject.toml",
    "README.md",
    "shared",
    "services",
    "requirements",
    "docker",
    "mosquitto",
)
USERS = ("poller", "forecaster", "scheduler", "actuator", "bridge", "prices", "dashboard", "ha")
#: Long-running services (broker-setup runs once and exits).
SERVICES = (
    "mosquitto",
    "simulator",
    "poller",
    "forecaster",
    "scheduler",
    "actuator",
    "bridge",
    "prices",
    "dashboard",
)
#: How long `up` may take until every container is healthy (a busy 2-core machine; the
#: services' first health probe comes 30 s after their start on Docker Engine 20.10).
HEALTHY_WITHIN_S = 300.0
#: Loggers' bounds in compose.yaml.
LOG_MAX_SIZE, LOG_MAX_FILE = "10m", "3"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the MQTT side, as a user ---------------------------------------------------------------


class Watcher:
    """A paho client as `user` (None: anonymous), collecting what it is sent."""

    def __init__(self, port: int, user: str | None, password: str | None) -> None:
        self.connected = threading.Event()
        self.reason: Any = None
        self.messages: list[tuple[str, bytes, bool]] = []
        self.arrived = threading.Condition()
        self.subacks = threading.Semaphore(0)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"compose-test-{uuid.uuid4().hex[:8]}"
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self.subacks.release()
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(10), "no CONNACK from the broker"

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.reason = reason
        self.connected.set()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self.arrived:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))
            self.arrived.notify_all()

    @property
    def accepted(self) -> bool:
        return self.reason is not None and not self.reason.is_failure

    def subscribe(self, *filters: str) -> None:
        for topic in filters:
            self.client.subscribe(topic, qos=1)
            assert self.subacks.acquire(timeout=10), f"no SUBACK for {topic}"

    def wait_for(
        self, found: Callable[[list[tuple[str, bytes, bool]]], bool], within: float
    ) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: found(self.messages), within)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --- the stack ------------------------------------------------------------------------------


@dataclass
class Stack:
    """The compose project under test: its directory, name, ports and passwords."""

    directory: Path
    project: str
    compose: list[str]
    env: dict[str, str]
    mqtt_port: int
    control_port: int
    dashboard_port: int
    passwords: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> str:
        argv = [*self.compose, "--project-directory", str(self.directory), "-p", self.project]
        for name in ("compose.yaml", "compose.sim.yaml", "compose.test.yaml"):
            argv += ["-f", str(self.directory / name)]
        argv += ["--profile", "sim", *args]
        done = subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout + done.stderr

    def containers(self) -> list[dict[str, Any]]:
        """`docker inspect` of every container of the project (running or not)."""
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if not ids:
            return []
        out = subprocess.run(
            ["docker", "inspect", *ids], capture_output=True, text=True, check=True
        ).stdout
        return list(json.loads(out))

    def states(self) -> dict[str, str]:
        """service -> healthy / starting / unhealthy / running / exited(N) / ..."""
        out = {}
        for c in self.containers():
            service = c["Config"]["Labels"]["com.docker.compose.service"]
            state = c["State"]
            if state["Status"] == "exited":
                out[service] = f"exited({state['ExitCode']})"
            elif "Health" in state:
                out[service] = state["Health"]["Status"]
            else:
                out[service] = state["Status"]
        return out

    def wait_healthy(self, what: str, within: float = HEALTHY_WITHIN_S) -> float:
        """Until every service is healthy (broker-setup: exited 0); the seconds it took."""
        began = time.monotonic()
        states: dict[str, str] = {}
        while time.monotonic() - began < within:
            states = self.states()
            if (
                states.get("broker-setup", "").startswith("exited(")
                and states["broker-setup"] != "exited(0)"
            ):
                break
            if all(states.get(s) == "healthy" for s in SERVICES):
                took = time.monotonic() - began
                self.timings[what] = took
                print(f"[compose] {what}: every container healthy in {took:.1f} s", flush=True)
                return took
            time.sleep(1)
        logs = self.run("logs", "--no-color", "--tail", "40", check=False)
        raise AssertionError(f"{what}: not all healthy within {within:.0f} s: {states}\n{logs}")

    def up(self, what: str) -> float:
        began = time.monotonic()
        self.run("up", "-d", "--no-build", "--quiet-pull")
        self.wait_healthy(what)
        return time.monotonic() - began

    def watcher(self, user: str | None = "ha") -> Watcher:
        password = self.passwords.get(user) if user else None
        return Watcher(self.mqtt_port, user, password)

    @contextlib.contextmanager
    def as_user(self, user: str | None = "ha") -> Iterator[Watcher]:
        w = self.watcher(user)
        try:
            yield w
        finally:
            w.close()

    def retained(self, settle_s: float = 2.0) -> dict[str, bytes]:
        """Everything retained under the base topic and the discovery prefix, as `ha` sees it."""
        with self.as_user() as ha:
            assert ha.accepted, ha.reason
            ha.subscribe(f"{BASE}/#", f"{HA_PREFIX}/#")
            time.sleep(settle_s)  # retained messages follow the SUBACK at once
            with ha.arrived:
                return {t: p for t, p, retain in ha.messages if retain}

    def retained_until(
        self, found: Callable[[dict[str, bytes]], bool], within: float, what: str
    ) -> dict[str, bytes]:
        deadline = time.monotonic() + within
        got: dict[str, bytes] = {}
        while time.monotonic() < deadline:
            got = self.retained(settle_s=1.0)
            if found(got):
                return got
            time.sleep(2)
        raise AssertionError(f"{what}: not retained within {within:.0f} s; topics: {sorted(got)}")

    def simulator(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.control_port}/control/state"
        with urllib.request.urlopen(url, timeout=10) as answer:
            return dict(json.load(answer))

    def logs(self, service: str) -> str:
        return self.run("logs", "--no-color", service, check=False)


def _copy_project(directory: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, directory / name, ignore=ignore)
        else:
            shutil.copy2(source, directory / name)
    (directory / "config").mkdir()
    shutil.copy2(
        ROOT / "config" / "config_devices.example.json",
        directory / "config" / "config_devices.json",
    )
    for path in [directory, *directory.rglob("*")]:  # the containers' users read it
        path.chmod(0o755 if path.is_dir() else 0o644)


def _ca_files() -> list[str]:
    """This machine's own CAs (where a proxy that re-signs TLS puts its CA): the build hook."""
    return [str(p) for p in sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt"))]


@pytest.fixture(scope="module")
def stack(docker_engine: Engine, base_images: dict[str, str]) -> Iterator[Stack]:
    images = load_images()
    compose = images.compose_command()
    began = time.monotonic()
    directory = Path(tempfile.mkdtemp(prefix="hwsched-compose-"))
    project = f"hwsched-test-{uuid.uuid4().hex[:6]}"
    passwords = {u: secrets.token_hex(24) for u in USERS}
    mqtt_port, control_port, dashboard_port = _free_port(), _free_port(), _free_port()
    try:
        _copy_project(directory)
        env_lines = [f"MQTT_{u.upper()}_PASSWORD={pw}" for u, pw in passwords.items()]
        env_lines += [f"{k}={v}" for k, v in base_images.items()]
        env_lines += ["IMAGE_TAG=compose-test", f"MQTT_PORT={mqtt_port}", "HWSCHED_LOG_LEVEL=INFO"]
        env_lines += [f"DASHBOARD_PASSWORD={secrets.token_hex(12)}"]
        (directory / ".env").write_text("\n".join(env_lines) + "\n")
        (directory / ".env").chmod(0o600)
        (directory / "compose.test.yaml").write_text(
            "# make test-compose: the broker and the simulator's control API on 127.0.0.1 only\n"
            "services:\n"
            "  mosquitto:\n"
            f"    ports: !override ['127.0.0.1:{mqtt_port}:1883']\n"
            "  simulator:\n"
            f"    ports: ['127.0.0.1:{control_port}:18081']\n"
            "  dashboard:\n"
            f"    ports: !override ['127.0.0.1:{dashboard_port}:8080']\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HWSCHED_", "MQTT_"))}
        env["DOCKER_BUILDKIT"] = env.get("DOCKER_BUILDKIT", "0")
        st = Stack(
            directory, project, compose, env, mqtt_port, control_port, dashboard_port, passwords
        )
        argv = ["build", "--network", "host", "--project-directory", str(directory)]
        for ca in _ca_files():
            argv += ["--ca-file", ca]
        build_began = time.monotonic()
        with _environ(env):
            assert images.main([*argv, "--quiet"]) == 0, "the images did not build"
        st.timings["build"] = time.monotonic() - build_began
        dangling_before = _dangling_volumes()
        st.up("up")
        yield st
        st.run("down", "--remove-orphans")
        assert _anonymous(_dangling_volumes() - dangling_before, project) == set()
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(
                [*compose, "-p", project, "down", "-v", "--remove-orphans"],
                capture_output=True,
                timeout=300,
                check=False,
            )
        left = subprocess.run(
            [
                "docker",
                "volume",
                "ls",
                "-q",
                "--filter",
                f"label=com.docker.compose.project={project}",
            ],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        shutil.rmtree(directory, ignore_errors=True)
        print(f"[compose] whole run {time.monotonic() - began:.1f} s", flush=True)
    assert left == [], f"volumes left behind: {left}"


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _dangling_volumes() -> set[str]:
    out = subprocess.run(
        ["docker", "volume", "ls", "-q", "--filter", "dangling=true"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def _anonymous(volumes: set[str], project: str) -> set[str]:
    """Those not named by compose for the project: anonymous volumes a `down` left behind."""
    return {v for v in volumes if not v.startswith(f"{project}_")}


def _devices() -> Any:
    return load_devices(ROOT / "config" / "config_devices.example.json")


def _json(raw: bytes) -> dict[str, Any]:
    return dict(json.loads(raw))


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text)


# --- the checks, in the order a user meets them ---------------------------------------------


def test_every_container_is_healthy_none_runs_as_root_and_logs_are_bounded(stack: Stack) -> None:
    containers = stack.containers()
    services = {c["Config"]["Labels"]["com.docker.compose.service"] for c in containers}
    assert services == {*SERVICES, "broker-setup"}
    assert all(stack.states()[s] == "healthy" for s in SERVICES)
    for c in containers:
        name = c["Config"]["Labels"]["com.docker.compose.service"]
        user = c["Config"]["User"]
        assert user, f"{name}: no user: it would run as root"
        assert user.split(":")[0] not in ("0", "root"), f"{name} runs as {user}"
        log = c["HostConfig"]["LogConfig"]
        assert log["Type"] == "json-file", name
        assert log["Config"] == {"max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILE}, name
        if c["State"]["Running"]:
            top = subprocess.run(
                ["docker", "top", c["Id"], "-o", "pid,uid,args"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.splitlines()[1:]
            assert top, name
            assert all(line.split()[1] != "0" for line in top), f"{name}: a root process: {top}"
        # the build-time CA and index (docker/Dockerfile's hook) stayed in the build stages
        image_env = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{json .Config.Env}}", c["Image"]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "PIP_CONFIG_FILE" not in image_env, name
        # no anonymous volume: every mount is a named volume, a bind or a tmpfs
        for mount in c["Mounts"]:
            assert mount["Type"] != "volume" or mount["Name"].startswith(stack.project + "_"), (
                f"{name}: an anonymous volume at {mount['Destination']}"
            )


def test_a_user_sees_the_house_on_the_broker(stack: Stack) -> None:
    devices = _devices()
    sockets = [s.slug for s in devices.sockets]
    device_slugs = [d.slug for d in devices.devices]

    def complete(got: dict[str, bytes]) -> bool:
        wanted = [f"{BASE}/surplus", f"{BASE}/forecast", f"{BASE}/plan", f"{BASE}/books"]
        wanted += [f"{BASE}/prices", f"{BASE}/cost", f"{BASE}/batteries"]
        wanted += [f"{BASE}/{d}/measurement" for d in device_slugs]
        wanted += [f"{BASE}/{s}" for s in sockets]
        configs = [t for t in got if t.startswith(f"{HA_PREFIX}/device/")]
        if not all(t in got for t in wanted) or len(configs) < len(sockets):
            return False
        # a plan made before the forecast arrived (the start-up's) is replaced by one made on
        # it as soon as the scheduler has it: wait for that one, however busy the machine is
        made_at = _json(got[f"{BASE}/forecast"]).get("made_at")
        return bool(_json(got[f"{BASE}/plan"]).get("forecast_made_at") == made_at)

    got = stack.retained_until(complete, 240, "the house on the broker (a plan on the forecast)")
    surplus = _json(got[f"{BASE}/surplus"])
    assert not surplus["missing"], surplus
    for d in devices.devices:
        assert _json(got[f"{BASE}/{d.slug}/measurement"])["device"] == d.device_name
        assert got[f"{BASE}/{d.slug}/availability"] == b"online"
    # the forecast: quartz's model on the simulator's weather, not the clear-sky fallback
    forecast = _json(got[f"{BASE}/forecast"])
    assert forecast["fallback"] is False, forecast
    assert forecast["pv_model"].startswith("quartz-solar-forecast 1.2.12 gb"), forecast
    assert forecast["source"] == "open-meteo-compatible simulator:18080", forecast
    # power where the sun is up over the panels in the forecast's window; none at night (a
    # run after a winter sunset forecasts only darkness until the 06:00 boundary)
    start, step_s = datetime.fromisoformat(forecast["start"]), forecast["step_s"]
    daylight = [
        any(
            sun_position(
                start + timedelta(seconds=step_s * (k + 0.5)),
                p.quartz_parameters.latitude,
                p.quartz_parameters.longitude,
            )[0]
            > 10.0
            for p in devices.solar_panels
        )
        for k in range(len(forecast["power_w"]))
    ]
    assert all(w >= 0 for w in forecast["power_w"]), forecast["power_w"]
    if any(daylight):
        assert sum(w for w, day in zip(forecast["power_w"], daylight, strict=True) if day) > 0
    plan = _json(got[f"{BASE}/plan"])
    assert set(plan["sockets"]) == {s.device_name for s in devices.sockets}, plan["sockets"]
    assert plan["forecast_made_at"] == forecast["made_at"]
    for s in devices.sockets:
        state = _json(got[f"{BASE}/{s.slug}"])
        assert state["socket"] == s.device_name
        assert state["power_on"] in (True, False)
    configs = {t: _json(p) for t, p in got.items() if t.startswith(f"{HA_PREFIX}/device/")}
    assert len(configs) >= len(sockets)
    assert all("cmps" in c or "components" in c for c in configs.values()), configs
    for service in USERS[:-1]:
        assert got[f"{BASE}/service/{service}/availability"] == b"online"
    # the prices: the simulated house's day-ahead market through the EnergyZero client
    prices = _json(got[f"{BASE}/prices"])
    assert (prices["source"], prices["fallback"]) == ("energyzero", False), prices
    assert len(prices["import_eur_kwh"]) >= 92
    # commands: the scheduler's, not retained, as they go by
    with stack.as_user() as ha:
        ha.subscribe(f"{BASE}/+/set")
        # the sockets' commands (`<base>/batteries/set` matches the pattern too)
        socket_sets = {f"{BASE}/{slug}/set" for slug in sockets}
        seen = ha.wait_for(lambda ms: any(t in socket_sets for t, _, _ in ms), 120)
        assert seen, "no socket command within 120 s"
        topic, payload, retain = next(m for m in ha.messages if m[0] in socket_sets)
    assert not retain
    command = _json(payload)
    assert topic == f"{BASE}/{slugify(command['socket'])}/set"
    assert command["state"] in ("on", "off")


def test_the_dashboard_shows_the_house_read_only(stack: Stack) -> None:
    """The page on its published port: served, live state with every socket, no buttons
    without a login (a control call is refused)."""
    base = f"http://127.0.0.1:{stack.dashboard_port}"
    with urllib.request.urlopen(f"{base}/", timeout=10) as answer:
        assert answer.status == 200
        assert "hwsched" in answer.read().decode()
    deadline = time.monotonic() + 120
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{base}/api/state", timeout=10) as answer:
            state = dict(json.load(answer))
        text = json.dumps(state)
        if all(s.device_name in text for s in _devices().sockets):
            break
        time.sleep(2)
    else:
        raise AssertionError(f"the dashboard never showed every socket: {state}")
    slug = _devices().sockets[0].slug
    request = urllib.request.Request(
        f"{base}/api/sockets/{slug}/override", data=b'{"state": "on"}', method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code in (401, 403)


#: What mosquitto logs for a client it refuses (its id is `<unknown>` then).
REFUSED = "disconnected, not authorised"


def test_an_anonymous_client_is_refused_and_the_broker_log_says_so_at_once(stack: Stack) -> None:
    refused_before = stack.logs("mosquitto").count(REFUSED)
    client_id = f"anonymous-{uuid.uuid4().hex[:8]}"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    answered = threading.Event()
    reasons: list[Any] = []

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        reasons.append(reason)
        answered.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", stack.mqtt_port, keepalive=10)
    client.loop_start()
    try:
        assert answered.wait(10), "no CONNACK"
    finally:
        client.disconnect()
        client.loop_stop()
    assert reasons[0].is_failure, reasons
    # the broker's log reaches Docker at once (stderr, unbuffered), not minutes later
    deadline = time.monotonic() + 10
    while stack.logs("mosquitto").count(REFUSED) <= refused_before:
        assert time.monotonic() < deadline, "the refusal is not in `docker logs` within 10 s"
        time.sleep(0.5)


#: The actuator's switch interval (settings' default): at most one switch per socket per 5 min.
SWITCH_INTERVAL = timedelta(seconds=300)


def _override_target(stack: Stack) -> tuple[str, bool, datetime]:
    """The socket to override (slug), the state to ask for (the other one than now), and when
    the actuator may switch it: the socket it may switch soonest (the switch interval counts
    from its last switch)."""
    retained = stack.retained()
    best: tuple[datetime, str, bool] | None = None
    for s in _devices().sockets:
        slug = s.slug
        state = _json(retained[f"{BASE}/{slug}"])
        free_at = datetime.now(UTC)
        if state.get("last_switch_at"):
            free_at = max(free_at, _when(state["last_switch_at"]) + SWITCH_INTERVAL)
        if best is None or free_at < best[0]:
            best = (free_at, slug, not bool(state["power_on"]))
    assert best is not None
    return best[1], best[2], best[0]


def _simulated_power_on(stack: Stack, slug: str) -> bool:
    """The simulated relay (the simulator's control API, names as configured)."""
    sockets = stack.simulator()["house"]["sockets"]
    for name, socket_state in sockets.items():
        if slugify(name) == slug:
            return bool(socket_state["power_on"])
    raise AssertionError(f"{slug} is not a socket of the simulated house: {sorted(sockets)}")


def test_an_override_is_obeyed_by_the_simulated_socket(stack: Stack) -> None:
    slug, want_on, free_at = _override_target(stack)
    state = "on" if want_on else "off"
    with stack.as_user() as ha:
        ha.publish(
            f"{BASE}/{slug}/override/set",
            json.dumps({"state": state, "duration_s": 6 * 3600}).encode(),
        )
    # the actuator switches the simulated relay: at once, or when the switch interval lets it
    wait_s = max(0.0, (free_at - datetime.now(UTC)).total_seconds()) + 90
    deadline = time.monotonic() + wait_s
    while _simulated_power_on(stack, slug) != want_on:
        assert time.monotonic() < deadline, f"the simulated {slug} did not turn {state}"
        time.sleep(2)
    got = stack.retained_until(
        lambda g: (
            f"{BASE}/{slug}/override" in g
            and _json(g[f"{BASE}/{slug}/override"])["state"] == state
            and _json(g[f"{BASE}/{slug}"]).get("controlled_by") == "override"
        ),
        60,
        "the override and the socket's state",
    )
    assert _json(got[f"{BASE}/{slug}/override"])["source"] == "mqtt"
    assert _json(got[f"{BASE}/{slug}"])["power_on"] is want_on
    # the scheduler leaves an overridden socket out of its plan (`excluded`: device names)
    name = next(s.device_name for s in _devices().sockets if s.slug == slug)
    stack.retained_until(
        lambda g: name in _json(g[f"{BASE}/plan"]).get("excluded", []), 120, "the plan without it"
    )


def _lost(before: dict[str, bytes], after: dict[str, bytes]) -> list[str]:
    return sorted(set(before) - set(after))


def test_restarting_the_scheduler_loses_nothing_retained(stack: Stack) -> None:
    before = stack.retained()
    stack.run("restart", "scheduler")
    stack.wait_healthy("restart scheduler")
    after = stack.retained()
    assert _lost(before, after) == []
    books_before, books_after = _json(before[f"{BASE}/books"]), _json(after[f"{BASE}/books"])
    for slug, book in books_before["sockets"].items():  # read back, not started again at zero
        assert books_after["sockets"][slug]["energy_wh"] >= book["energy_wh"] - 1e-6, slug


def test_restarting_the_broker_loses_nothing_retained(stack: Stack) -> None:
    before = stack.retained()
    stack.run("restart", "mosquitto")
    stack.wait_healthy("restart mosquitto")
    after = stack.retained()
    assert _lost(before, after) == []
    forecast_before, forecast_after = (
        _json(before[f"{BASE}/forecast"]),
        _json(after[f"{BASE}/forecast"]),
    )
    assert forecast_after["made_at"] == forecast_before["made_at"]  # kept, not made again


def test_down_and_up_keeps_plan_books_forecast_and_overrides(stack: Stack) -> None:
    before = stack.retained()
    overrides = {
        t: _json(p)
        for t, p in before.items()
        if t.endswith("/override") and _json(p)["state"] != "auto"
    }
    assert overrides, "no override in force (the override test runs before this one)"
    dangling = _dangling_volumes()
    stack.run("down")
    assert stack.containers() == []
    assert _anonymous(_dangling_volumes() - dangling, stack.project) == set()
    stack.up("down + up")
    after = stack.retained()
    assert _lost(before, after) == []
    # the forecast was kept: the new forecaster read it back as its fallback (it makes a new
    # one at start too)
    made_at = _when(_json(before[f"{BASE}/forecast"])["made_at"]).replace(second=0, microsecond=0)
    logs = stack.logs("forecaster")
    read_back = re.findall(r"read back the forecast made at (\S+)", logs)
    assert [_when(t) for t in read_back] == [made_at], logs[-3000:]
    for topic, override in overrides.items():
        kept = _json(after[topic])
        assert (kept["state"], kept.get("until"), kept["set_at"]) == (
            override["state"],
            override.get("until"),
            override["set_at"],
        ), topic
    books_before, books_after = _json(before[f"{BASE}/books"]), _json(after[f"{BASE}/books"])
    assert books_after["day_start"] == books_before["day_start"]
    for slug, book in books_before["sockets"].items():
        assert books_after["sockets"][slug]["energy_wh"] >= book["energy_wh"] - 1e-6, slug
    assert f"{BASE}/plan" in after
    print(f"[compose] timings: {json.dumps({k: round(v, 1) for k, v in stack.timings.items()})}")
