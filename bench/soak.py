"""Faults on the running stack: simulated days with faults injected, and what must hold.

    python -m bench.soak --days 7 [--seed N] [--speed 600] [--run-dir run/soak]
    make soak                     # a simulated week with random faults (seed printed)

`tests/test_faults.py` runs the short version in CI: two simulated days with every fault
kind at a fixed moment (`scripted_faults`).

What runs: `hwsched run --secure --speed S --start T` as a process — mosquitto with the
shipped config (passwords, ACL, persistence), the simulated house, and the poller,
forecaster, scheduler, actuator and bridge as separate processes on one shared accelerated
clock, supervised (a service that dies is restarted, the broker too). This harness watches
it from outside, as Home Assistant would (the read-only `ha` user), polls the house's event
log (every relay change with who made it, every store becoming full: the truth, whatever
the services say), and injects faults:

* `kill:<service>`: SIGKILL of a service at a random moment (the actuator's, half the time,
  right after one of its switches: its last switch times must survive);
* `broker-restart` (SIGTERM: mosquitto saves its persistence) and `broker-kill` (SIGKILL:
  what is retained since the last save is gone; the services publish theirs again);
* `device:<fault>:<device>` for a while: no answer (`timeout`), `garbage`, a lost token
  (`wrong_token`, API v2: the battery), `gone` (unreachable for an hour);
* `forecast-missing`: the forecaster hangs (SIGSTOP) and the retained forecast is cleared,
  for a whole planning day; then it continues (SIGCONT);
* `override`: an MQTT override (on, 2 h) of the optional socket, with a `kill:actuator`
  and a broker restart inside it;
* `garbage-burst`: 300 hostile payloads on override topics.

What must hold (`check`), each a `Finding` when it does not:

* no crash loop: each service restarted exactly as often as it was killed; all online at
  the end; no traceback in any log;
* no socket switched twice by the actuator within the switch interval (the house's log);
* every needed socket full at least once in every whole planning day (the thermostat: it
  became full in the day, or was still full at its start);
* no lost state: the energy books never go back within a day (a restarted scheduler
  continues them; the broker's retained copies replayed after a crash are left out: they are
  from its last save, and the services publish theirs again at once); an override holds
  across an actuator kill and a broker restart; after a broker restart the retained state
  (plan, books, forecast, socket states and availability) is there again; a plan is made
  without a forecast only while the forecast is missing;
* every failed request and dropped message counted (the services' status counters);
* no secret (the devices' tokens, the broker passwords) in any log, MQTT payload, plan or
  the stack's output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import secrets
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiomqtt
import httpx

from shared.clock import ScaledClock, shared_scaled_clock
from shared.daytime import next_boundary
from shared.naming import slugify
from shared.topics import Topics

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_DEVICES = ROOT / "config" / "config_devices.example.json"
TZ = ZoneInfo("Europe/Amsterdam")
BOUNDARY = dtime(6, 0)
SERVICES = ("poller", "forecaster", "scheduler", "actuator", "bridge")
NEEDED = ("Kitchen boiler", "Shower boiler")
OPTIONAL = "E-bike charger"
BATTERY = "Battery"
P1 = "P1 meter"
SWITCH_INTERVAL_S = 300
#: The services' settings on the accelerated clock (the environment of `hwsched run`).
SERVICE_ENV = {
    "HWSCHED_POLL_INTERVAL_S": "60",
    "HWSCHED_ACTUATOR_READ_INTERVAL_S": "60",
    "HWSCHED_SWITCH_INTERVAL_S": str(SWITCH_INTERVAL_S),
    "HWSCHED_TIMEZONE": "Europe/Amsterdam",
    "HWSCHED_LOG_LEVEL": "INFO",
    "HWSCHED_BASE_TOPIC": "hwsched",
}
BASE = "hwsched"
#: The house: hot-water use twice a day, the e-bike once (the simulator's settings).
HOUSE_TOML = """\
seed = {seed}
base_load_w = 300
timezone = "Europe/Amsterdam"

[devices."Kitchen boiler"]
initial_fraction = 0.4
draws = [{{start = "07:30", duration_min = 20, fraction = 0.3}},
         {{start = "18:30", duration_min = 30, fraction = 0.4}}]

[devices."Shower boiler"]
initial_fraction = 0.5
draws = [{{start = "07:00", duration_min = 30, fraction = 0.4}},
         {{start = "21:00", duration_min = 20, fraction = 0.3}}]

[devices."E-bike charger"]
initial_fraction = 0.0
draws = [{{start = "08:00", duration_min = 60, fraction = 0.6}}]
"""
#: Hostile payloads for the garbage burst (the fuzz tests try 10 000 per topic in-process).
JUNK: tuple[bytes, ...] = (
    b"",
    b"\xff\xfe\x00garbage",
    b"[" * 5000,
    b'{"schema_version": 1, "state": "on", "duration_s": 1e400}',
    b'{"schema_version": 99, "state": "on"}',
    b'{"state": "sideways"}',
    b"null",
    b'{"schema_version": 1, "state": "on", "duration_s": NaN}',
    b"x" * 70_000,
)


# --- faults ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One fault: its kind, when (simulated) and for how long (simulated s, if it lasts)."""

    at: datetime
    kind: str
    duration_s: float = 0.0

    def describe(self) -> str:
        local = self.at.astimezone(TZ).strftime("%a %H:%M")
        lasting = f" for {self.duration_s / 3600:g} h" if self.duration_s else ""
        return f"{local} {self.kind}{lasting}"


def local(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, dtime(hour, minute), TZ).astimezone(UTC)


def scripted_faults(day: date) -> list[Fault]:
    """Every fault kind once, at fixed moments of two planning days from 06:00 of `day`."""
    d2 = day + timedelta(days=1)
    return [
        Fault(local(day, 5, 20), "kill:actuator-after-switch"),
        Fault(local(day, 7, 10), "kill:scheduler"),
        Fault(local(day, 8, 0), "device:timeout:Kitchen boiler", 3600),
        Fault(local(day, 9, 0), "override", 2 * 3600),
        Fault(local(day, 10, 0), "device:garbage:P1 meter", 1800),
        Fault(local(day, 11, 0), "kill:poller"),
        Fault(local(day, 12, 0), "kill:forecaster"),
        Fault(local(day, 13, 0), "device:wrong_token:Battery", 2 * 3600),
        Fault(local(day, 14, 0), "kill:bridge"),
        Fault(local(day, 15, 0), "device:gone:Shower boiler", 3600),
        Fault(local(day, 16, 0), "garbage-burst"),
        Fault(local(day, 20, 0), "broker-kill"),
        Fault(local(day, 22, 30), "kill:scheduler"),
        Fault(local(d2, 5, 40), "forecast-missing", 24.5 * 3600),
        Fault(local(d2, 12, 0), "kill:scheduler"),
        Fault(local(d2, 16, 0), "broker-restart"),
    ]


def random_faults(rng: random.Random, start: datetime, end: datetime) -> list[Fault]:
    """About a dozen faults a day at random moments, and one forecast-missing day a week."""
    kinds = [
        *(f"kill:{s}" for s in SERVICES),
        "kill:actuator-after-switch",
        "broker-restart",
        "broker-kill",
        "device:timeout:Kitchen boiler",
        "device:timeout:P1 meter",
        "device:garbage:P1 meter",
        "device:garbage:Shower boiler",
        "device:wrong_token:Battery",
        "device:gone:Shower boiler",
        "device:gone:E-bike charger",
        "override",
        "garbage-burst",
    ]
    faults: list[Fault] = []
    t = start + timedelta(hours=1)
    while t < end - timedelta(hours=2):
        kind = rng.choice(kinds)
        duration = 0.0
        if kind.startswith("device:"):
            duration = 3600.0 if ":gone:" in kind else rng.choice((900.0, 1800.0, 7200.0))
        elif kind == "override":
            duration = 2 * 3600.0
        faults.append(Fault(t, kind, duration))
        t += timedelta(seconds=rng.uniform(1800, 3 * 3600))
    days = (end - start).days
    if days >= 3:  # a whole planning day without a forecast
        missing_day = start.astimezone(TZ).date() + timedelta(days=rng.randint(1, days - 2))
        at = local(missing_day, 5, 40)
        faults.append(Fault(at, "forecast-missing", 24.5 * 3600))
        window_end = at + timedelta(hours=24.5)
        faults = [
            f for f in faults if not (f.kind == "kill:forecaster" and at <= f.at <= window_end)
        ]
    return sorted(faults, key=lambda f: f.at)


# --- what was seen ---------------------------------------------------------------------------


@dataclass
class Finding:
    """Something that must hold and did not."""

    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.detail}"


@dataclass
class Seen:
    """What the harness saw: MQTT messages, the house's events, what it injected."""

    #: (simulated time, topic, payload, retained)
    messages: list[tuple[datetime, str, bytes, bool]] = field(default_factory=list)
    #: the house's socket events (relay changes, stores full), in order
    events: list[dict[str, Any]] = field(default_factory=list)
    injected: list[tuple[datetime, Fault, str]] = field(default_factory=list)
    #: retained topics a fresh subscriber saw, after each broker restart: (fault time, topics)
    retained_after_restart: list[tuple[datetime, str, set[str]]] = field(default_factory=list)
    #: kills: service -> count
    kills: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    broker_restarts: int = 0
    #: (socket, override start, until) of the overrides published
    overrides: list[tuple[str, datetime, datetime]] = field(default_factory=list)
    #: (start, end) of the forecast-missing windows
    forecast_missing: list[tuple[datetime, datetime]] = field(default_factory=list)
    #: (time, payloads) of garbage bursts
    bursts: list[tuple[datetime, int]] = field(default_factory=list)
    #: (fault, start, end) of device faults
    device_faults: list[tuple[str, str, datetime, datetime]] = field(default_factory=list)
    #: kills of the actuator right after a switch: (socket, switch time, kill time)
    switch_kills: list[tuple[str, datetime, datetime]] = field(default_factory=list)
    #: how many messages came before the stack was stopped
    until_stop: int = 0

    def payloads(
        self, topic: str, *, fresh: bool = False
    ) -> Iterable[tuple[datetime, dict[str, Any]]]:
        """The JSON objects published on `topic`; `fresh`: not the broker's retained copies
        (replayed on (re)subscribing: after a broker crash, from its last save)."""
        for at, t, payload, retained in self.messages:
            if fresh and retained:
                continue
            if t == topic and payload:
                with contextlib.suppress(ValueError):
                    data = json.loads(payload)
                    if isinstance(data, dict):
                        yield at, data


# --- the run ----------------------------------------------------------------------------------


@dataclass
class SoakOptions:
    start: datetime
    end: datetime
    speed: float = 600.0
    seed: int = 0
    run_dir: Path = ROOT / "run" / "soak"
    faults: list[Fault] = field(default_factory=list)
    log: bool = True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Soak:
    """The stack as a process, watched and hurt; `check()` afterwards."""

    def __init__(self, options: SoakOptions) -> None:
        self.o = options
        self.seen = Seen()
        self.topics = Topics(BASE)
        self.run_dir = options.run_dir
        self.stack: asyncio.subprocess.Process | None = None
        self.info: dict[str, Any] = {}
        self.passwords: dict[str, str] = {}
        self.tokens: dict[str, str] = {}
        self.clock: ScaledClock | None = None
        self._event_next = 0
        self._stop = asyncio.Event()

    def say(self, text: str) -> None:
        if self.o.log:
            now = self.clock.now().astimezone(TZ).strftime("%a %H:%M") if self.clock else "--"
            print(f"[soak {now}] {text}", flush=True)

    # --- setting up -----------------------------------------------------------------------

    def _write_inputs(self) -> tuple[Path, Path]:
        """The devices file (with real-looking tokens) and the house's settings."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        devices = json.loads(EXAMPLE_DEVICES.read_text())
        for dev in devices["devices"]:
            if dev["device_type"] == "HWE-BAT":
                token = secrets.token_hex(16).upper()
                dev["user_info"] = {"name": "local/hwsched", "token": token}
                self.tokens[dev["device_name"]] = token
        devices_file = self.run_dir / "devices.json"
        devices_file.write_text(json.dumps(devices, indent=1))
        house = self.run_dir / "house.toml"
        house.write_text(HOUSE_TOML.format(seed=self.o.seed))
        return devices_file, house

    def _stack_env(self) -> dict[str, str]:
        """Settings of this run beyond the soak's (environment variables)."""
        return {}

    async def _start_stack(self) -> None:
        devices_file, house = self._write_inputs()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HWSCHED_")}
        env |= SERVICE_ENV | {"PYTHONUNBUFFERED": "1"} | self._stack_env()
        out = (self.run_dir / "stack.out").open("wb")
        self.stack = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.cli",
            "run",
            "--secure",
            "--devices",
            str(devices_file),
            "--run-dir",
            str(self.run_dir),
            "--speed",
            repr(self.o.speed),
            "--start",
            self.o.start.isoformat(),
            "--sim-config",
            str(house),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        stack_file = self.run_dir / "stack.json"
        deadline = time.monotonic() + 60
        while True:
            if self.stack.returncode is not None:
                raise RuntimeError(f"the stack stopped at start: see {self.run_dir}/stack.out")
            with contextlib.suppress(OSError, ValueError):
                info = json.loads(stack_file.read_text())
                if info.get("state") == "running":
                    self.info = info
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the stack did not start: see {self.run_dir}/stack.out")
            await asyncio.sleep(0.2)
        clock = self.info["clock"]
        self.clock = shared_scaled_clock(
            float(clock["speed"]), datetime.fromisoformat(clock["start"]), float(clock["origin"])
        )
        for line in (self.run_dir / "broker" / "passwords.env").read_text().splitlines():
            name, _, value = line.partition("=")
            self.passwords[name] = value
        self.say(f"stack running: broker on {self.info['broker']['port']}")

    def _stack_info(self) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            self.info = json.loads((self.run_dir / "stack.json").read_text())
        return self.info

    async def _pid(self, name: str) -> int:
        """The process id of `name`; waits while it is being restarted (its back-off)."""
        deadline = time.monotonic() + 90
        while True:
            pid = self._stack_info()["children"].get(name)
            if isinstance(pid, int) and _alive(pid):
                return pid
            if time.monotonic() > deadline:
                raise RuntimeError(f"no pid for {name}")
            await asyncio.sleep(0.1)

    def _mqtt(self, user: str = "ha", ident: str = "soak") -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1",
            int(self.info["broker"]["port"]),
            username=user,
            password=self.passwords[f"MQTT_{user.upper()}_PASSWORD"],
            identifier=f"{ident}-{secrets.token_hex(3)}",
            keepalive=10,
        )

    # --- watching ---------------------------------------------------------------------------

    async def _record(self) -> None:
        """Every message under the base topic, as `ha` sees it; reconnects after a restart."""
        assert self.clock is not None
        while not self._stop.is_set():
            try:
                async with self._mqtt(ident="soak-recorder") as client:
                    await client.subscribe(f"{BASE}/#", qos=1)
                    async for message in client.messages:
                        payload = message.payload
                        data = bytes(payload) if isinstance(payload, bytes | bytearray) else b""
                        self.seen.messages.append(
                            (self.clock.now(), message.topic.value, data, bool(message.retain))
                        )
            except aiomqtt.MqttError:
                await asyncio.sleep(0.3)

    @property
    def _control_url(self) -> str:
        """The simulated house's control endpoint (`/control`), without a trailing slash."""
        return str(self.info["simulator"]["control_url"]).rstrip("/")

    async def _house_events(self) -> None:
        control = self._control_url
        async with httpx.AsyncClient(timeout=10) as http:
            while not self._stop.is_set():
                await self._fetch_events(http, control)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.5)
            await self._fetch_events(http, control)

    async def _fetch_events(self, http: httpx.AsyncClient, control: str) -> None:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            got = (await http.get(f"{control}/events", params={"since": self._event_next})).json()
            self.seen.events.extend(got["events"])
            self._event_next = int(got["next"])

    async def _retained_now(self) -> set[str]:
        """The retained topics a new subscriber gets now."""
        topics: set[str] = set()
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with self._mqtt(ident="soak-retained") as client:
                await client.subscribe(f"{BASE}/#", qos=1)
                async with asyncio.timeout(1.5):
                    async for message in client.messages:
                        if message.retain and message.payload:
                            topics.add(message.topic.value)
        return topics

    # --- hurting ------------------------------------------------------------------------------

    async def _control(self, path: str, body: Any) -> None:
        control = self._control_url
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(f"{control}{path}", json=body)
            response.raise_for_status()

    async def _inject(self, fault: Fault) -> None:
        assert self.clock is not None
        clock = self.clock
        await clock.sleep_until(fault.at)
        kind = fault.kind
        note = ""
        if kind == "kill:actuator-after-switch":
            note = await self._kill_after_switch()
        elif kind.startswith("kill:"):
            name = kind.removeprefix("kill:")
            os.kill(await self._pid(name), signal.SIGKILL)
            self.seen.kills[name] += 1
        elif kind in ("broker-restart", "broker-kill"):
            os.kill(
                await self._pid("broker"),
                signal.SIGTERM if kind == "broker-restart" else signal.SIGKILL,
            )
            self.seen.broker_restarts += 1
            asyncio.get_running_loop().create_task(self._after_broker_restart(fault))
        elif kind.startswith("device:"):
            _, what, device = kind.split(":", 2)
            await self._control("/faults", {"device": device, what: True})
            self.seen.device_faults.append(
                (what, device, clock.now(), fault.at + timedelta(seconds=fault.duration_s))
            )
            await clock.sleep(fault.duration_s)
            await self._control("/faults", {"device": device, what: False})
        elif kind == "forecast-missing":
            await self._forecast_missing(fault)
        elif kind == "override":
            await self._override(fault)
        elif kind == "garbage-burst":
            await self._garbage_burst()
        else:
            raise ValueError(f"unknown fault {kind!r}")
        self.seen.injected.append((clock.now(), fault, note))
        self.say(f"injected {fault.describe()} {note}".rstrip())

    async def _kill_after_switch(self) -> str:
        """SIGKILL the actuator right after its next switch (within 12 simulated h)."""
        assert self.clock is not None
        begin = len(self.seen.events)
        deadline = self.clock.now() + timedelta(hours=12)
        while self.clock.now() < deadline:
            for event in self.seen.events[begin:]:
                if event["by"] == "api" and event["event"] in ("on", "off"):
                    os.kill(await self._pid("actuator"), signal.SIGKILL)
                    self.seen.kills["actuator"] += 1
                    at = datetime.fromisoformat(event["time"])
                    self.seen.switch_kills.append((event["socket"], at, self.clock.now()))
                    return f"(after switching {event['socket']} {event['event']})"
            await asyncio.sleep(0.02)
        os.kill(await self._pid("actuator"), signal.SIGKILL)
        self.seen.kills["actuator"] += 1
        return "(no switch within 12 h: killed anyway)"

    async def _after_broker_restart(self, fault: Fault) -> None:
        """What a fresh subscriber finds retained, once the broker is back and the services
        have reconnected (their back-off starts at 1 real s)."""
        await asyncio.sleep(6.0)
        topics = await self._retained_now()
        self.seen.retained_after_restart.append((fault.at, fault.kind, topics))

    async def _forecast_missing(self, fault: Fault) -> None:
        assert self.clock is not None
        pid = await self._pid("forecaster")
        os.kill(pid, signal.SIGSTOP)
        begin = self.clock.now()
        try:
            async with self._mqtt("forecaster", "soak-clear") as client:
                await client.publish(self.topics.forecast(), b"", qos=1, retain=True)
            await self.clock.sleep(fault.duration_s)
        finally:
            os.kill(pid, signal.SIGCONT)
        self.seen.forecast_missing.append((begin, self.clock.now()))

    async def _override(self, fault: Fault) -> None:
        """Override the optional socket on; kill the actuator and restart the broker inside."""
        assert self.clock is not None
        slug = slugify(OPTIONAL)
        begin = self.clock.now()
        until = begin + timedelta(seconds=fault.duration_s)
        body = json.dumps({"state": "on", "duration_s": int(fault.duration_s)}).encode()
        async with self._mqtt(ident="soak-override") as client:
            await client.publish(self.topics.override_set(slug), body, qos=1)
        self.seen.overrides.append((OPTIONAL, begin, until))
        await self.clock.sleep(fault.duration_s * 0.2)
        os.kill(await self._pid("actuator"), signal.SIGKILL)
        self.seen.kills["actuator"] += 1
        self.say("  override: actuator killed inside it")
        await self.clock.sleep(fault.duration_s * 0.3)
        os.kill(await self._pid("broker"), signal.SIGTERM)
        self.seen.broker_restarts += 1
        self.say("  override: broker restarted inside it")
        asyncio.get_running_loop().create_task(
            self._after_broker_restart(Fault(self.clock.now(), "broker-restart"))
        )

    async def _garbage_burst(self) -> None:
        assert self.clock is not None
        n = 0
        async with self._mqtt(ident="soak-garbage") as client:
            for i in range(300):
                slug = slugify((*NEEDED, OPTIONAL)[i % 3])
                await client.publish(self.topics.override_set(slug), JUNK[i % len(JUNK)], qos=0)
                n += 1
        self.seen.bursts.append((self.clock.now(), n))

    # --- the whole run ------------------------------------------------------------------------

    async def run(self) -> list[Finding]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for old in self.run_dir.glob("*.log"):
            old.unlink()
        await self._start_stack()
        assert self.clock is not None
        watchers = [
            asyncio.create_task(self._record()),
            asyncio.create_task(self._house_events()),
        ]
        try:
            injectors = [asyncio.create_task(self._inject(f)) for f in self.o.faults]
            await self.clock.sleep_until(self.o.end)
            for task in injectors:
                if not task.done():
                    task.cancel()
            results = await asyncio.gather(*injectors, return_exceptions=True)
            errors = [
                r
                for r in results
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
            ]
            if errors:
                raise RuntimeError(f"injecting a fault failed: {errors[0]!r}") from errors[0]
            await self._settle()
            await asyncio.sleep(1.0)  # the last statuses
            self._stack_info()
            final_retained = await self._retained_now()
            self.seen.until_stop = len(self.seen.messages)
        finally:
            self._stop.set()
            await self._stop_stack()
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        self._dump()
        return check(self, final_retained)

    async def _settle(self, timeout_s: float = 75.0) -> None:
        """Before the last checks: a service killed near the end gets its restart (the
        stack's back-off: real seconds, 60 at most) and reconnects. A bounded wait, so a
        crash loop still shows (restarts > kills, or not online at the end)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = self._stack_info()
            restarts, children = info.get("restarts", {}), info.get("children", {})
            back = all(
                restarts.get(name, 0) >= self.seen.kills.get(name, 0)
                and isinstance(children.get(name), int)
                and _alive(children[name])
                for name in SERVICES
            )
            online = all(self._last_availability(name) == b"online" for name in SERVICES)
            if back and online:
                return
            await asyncio.sleep(0.2)

    def _last_availability(self, name: str) -> bytes | None:
        topic = self.topics.availability(name)
        return next((p for _, t, p, _ in reversed(self.seen.messages) if t == topic), None)

    async def _stop_stack(self) -> None:
        proc = self.stack
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    def _dump(self) -> None:
        """Everything seen, for a look afterwards (and for the secrets grep)."""
        with (self.run_dir / "mqtt.jsonl").open("w") as out:
            for at, topic, payload, retained in self.seen.messages:
                out.write(
                    json.dumps(
                        {
                            "at": at.isoformat(),
                            "topic": topic,
                            "retained": retained,
                            "payload": payload.decode("utf-8", "replace"),
                        }
                    )
                    + "\n"
                )
        (self.run_dir / "house-events.json").write_text(json.dumps(self.seen.events, indent=0))


# --- what must hold ---------------------------------------------------------------------------


def planning_days(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """The whole planning days (boundary to boundary) between `start` and `end`."""
    days: list[tuple[datetime, datetime]] = []
    begin = next_boundary(start, TZ, BOUNDARY)
    while True:
        finish = next_boundary(begin + timedelta(seconds=1), TZ, BOUNDARY)
        if finish > end:
            return days
        days.append((begin, finish))
        begin = finish


def check(soak: Soak, final_retained: set[str]) -> list[Finding]:
    seen = soak.seen
    findings: list[Finding] = []
    info = soak.info
    speed = float(info["clock"]["speed"])
    # A switch's simulated time is stamped when the request reaches the house: allow the
    # real delay between the actuator's decision and that (50 ms) in simulated seconds.
    slack_s = 0.05 * speed

    # --- no crash loop ---
    restarts = info.get("restarts", {})
    for name in SERVICES:
        if restarts.get(name, 0) != seen.kills.get(name, 0):
            findings.append(
                Finding(
                    "crash loop",
                    f"{name} restarted {restarts.get(name, 0)} times, "
                    f"killed {seen.kills.get(name, 0)}",
                )
            )
    if restarts.get("broker", 0) != seen.broker_restarts:
        findings.append(
            Finding(
                "crash loop",
                f"broker restarted {restarts.get('broker')} times, {seen.broker_restarts} injected",
            )
        )
    for log in sorted(soak.run_dir.glob("*.log")):
        text = log.read_text(errors="replace")
        if "Traceback" in text:
            findings.append(Finding("traceback", f"{log.name} has a traceback"))
    for name in SERVICES:
        topic = soak.topics.availability(name)
        last = [p for _, t, p, _ in seen.messages[: seen.until_stop] if t == topic]
        if not last or last[-1] != b"online":
            findings.append(Finding("not online", f"{name} is not online at the end"))

    # --- no double switch ---
    by_socket: dict[str, list[datetime]] = defaultdict(list)
    for event in seen.events:
        if event["by"] == "api" and event["event"] in ("on", "off"):
            by_socket[event["socket"]].append(datetime.fromisoformat(event["time"]))
    shortest: dict[str, float] = {}
    for socket, times in by_socket.items():
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        if gaps:
            shortest[socket] = min(gaps)
        for a, b in itertools.pairwise(times):
            if (b - a).total_seconds() < SWITCH_INTERVAL_S - slack_s:
                findings.append(
                    Finding(
                        "double switch",
                        f"{socket} switched at {a.astimezone(TZ):%a %H:%M:%S} and "
                        f"{b.astimezone(TZ):%H:%M:%S} ({(b - a).total_seconds():.0f} s apart)",
                    )
                )

    # --- needed sockets full every whole day ---
    days = planning_days(soak.o.start, soak.o.end)
    for begin, finish in days:
        for name in NEEDED:
            marks = [
                (datetime.fromisoformat(e["time"]), e["event"])
                for e in seen.events
                if e["socket"] == name and e["event"] in ("full", "not-full")
            ]
            before = [what for at, what in marks if at < begin]
            full_at_start = bool(before) and before[-1] == "full"  # still full at the boundary
            became_full = any(what == "full" and begin <= at < finish for at, what in marks)
            if not (full_at_start or became_full):
                findings.append(
                    Finding(
                        "not full",
                        f"{name} never full in the day from {begin.astimezone(TZ):%a %d %b %H:%M}",
                    )
                )

    # --- books never go back within a day ---
    booked: dict[tuple[str, str], float] = {}
    for at, data in seen.payloads(soak.topics.books(), fresh=True):
        day = str(data.get("day_start"))
        books = data.get("sockets")
        for name, book in books.items() if isinstance(books, dict) else []:
            key = (day, str(name))
            energy = float(book.get("energy_wh", 0.0))
            if energy + 1.0 < booked.get(key, 0.0):
                findings.append(
                    Finding(
                        "books lost",
                        f"{key[1]}: {booked[key]:.0f} Wh then {energy:.0f} Wh at "
                        f"{at.astimezone(TZ):%a %H:%M} (same day)",
                    )
                )
            booked[key] = max(energy, booked.get(key, 0.0))
    if not booked:
        findings.append(Finding("books lost", "no energy books were published at all"))

    # --- overrides hold ---
    for name, begin, until in seen.overrides:
        events = [
            (datetime.fromisoformat(e["time"]), e)
            for e in seen.events
            if e["socket"] == name and e["event"] in ("on", "off")
        ]
        on_at = next((t for t, e in events if t >= begin and e["event"] == "on"), None)
        state_before = [e for t, e in events if t < begin]
        already_on = bool(state_before) and state_before[-1]["event"] == "on"
        if on_at is None and not already_on:
            findings.append(Finding("override", f"{name} never switched on for its override"))
            continue
        held_from = on_at if on_at is not None else begin
        offs = [
            t
            for t, e in events
            if e["event"] == "off" and held_from < t < until - timedelta(seconds=slack_s)
        ]
        if offs:
            findings.append(
                Finding(
                    "override",
                    f"{name} switched off at {offs[0].astimezone(TZ):%H:%M} inside its override",
                )
            )

    # --- retained state after broker restarts ---
    must = {
        soak.topics.plan(),
        soak.topics.books(),
        *(soak.topics.socket_state(slugify(s)) for s in (*NEEDED, OPTIONAL)),
        *(soak.topics.availability(s) for s in SERVICES),
    }
    for at, kind, topics in seen.retained_after_restart:
        missing_forecast = any(a <= at <= b for a, b in seen.forecast_missing)
        want = must | (set() if missing_forecast else {soak.topics.forecast()})
        lost = sorted(want - topics)
        if lost:
            findings.append(
                Finding(
                    "retained lost",
                    f"after the {kind} at {at.astimezone(TZ):%a %H:%M}: {', '.join(lost)}",
                )
            )
    lost_final = sorted(must - final_retained)
    if lost_final:
        findings.append(Finding("retained lost", f"at the end: {', '.join(lost_final)}"))

    # --- the forecast never lost: no plan without one while one that covers it was held ---
    # A plan without a forecast is right where no forecast covers its time: at the start,
    # after a restart while the retained forecast was cleared, and from each daily boundary
    # until that day's forecast arrives (the forecaster runs at 06:00 and takes a few real
    # seconds: at 600x, about half a simulated hour).
    windows = [(a, b + timedelta(hours=1)) for a, b in seen.forecast_missing]
    covering: list[tuple[datetime, datetime, datetime]] = []  # (received, start, end)
    for at, data in seen.payloads(soak.topics.forecast()):
        with contextlib.suppress(KeyError, TypeError, ValueError):
            begin = datetime.fromisoformat(data["start"])
            steps = len(data["power_w"])
            finish = begin + timedelta(seconds=float(data["step_s"]) * steps)
            covering.append((at, begin, finish))
    for at, data in seen.payloads(soak.topics.plan()):
        if data.get("forecast_made_at") is not None:
            continue
        if any(a <= at <= b for a, b in windows):
            continue  # cleared, and the scheduler may have been restarted meanwhile
        # received 2 s (20 simulated min) before the plan: the scheduler had it by then
        held = [
            c for c in covering if c[0] < at - timedelta(seconds=2 * speed) and c[1] <= at < c[2]
        ]
        if held:
            findings.append(
                Finding(
                    "forecast lost",
                    f"a plan without a forecast at {at.astimezone(TZ):%a %H:%M}, though the "
                    f"forecast received at {held[-1][0].astimezone(TZ):%a %H:%M} covered it",
                )
            )
            break

    # --- drops and failed requests counted ---
    statuses: dict[str, list[tuple[datetime, dict[str, Any]]]] = defaultdict(list)
    for name in SERVICES:
        statuses[name] = list(seen.payloads(soak.topics.status(name)))

    def counted(name: str, since: datetime, until: datetime, words: tuple[str, ...]) -> int:
        """How much the counters of `name` whose names contain one of `words` grew over
        [since, until], summed over its process lives (a restart starts counting again)."""

        def total(d: dict[str, Any]) -> int:
            counters = d.get("counters", {})
            return sum(v for k, v in counters.items() if any(w in k for w in words))

        first: dict[str, int] = {}
        last_: dict[str, int] = {}
        for at, d in statuses[name]:
            if not since <= at <= until:
                continue
            life = str(d.get("started_at"))
            first.setdefault(life, total(d))
            last_[life] = total(d)
        return sum(last_[life] - first[life] for life in first)

    for what, device, begin, finish in seen.device_faults:
        grew = counted(
            "poller",
            begin,
            finish + timedelta(hours=2),
            ("failed", "retried"),
        )
        if grew == 0:
            findings.append(
                Finding(
                    "not counted",
                    f"{what} of {device} from {begin.astimezone(TZ):%a %H:%M}: "
                    "no poller failure counted",
                )
            )
    for at, n in seen.bursts:
        grew = counted(
            "actuator",
            at - timedelta(minutes=30),
            at + timedelta(hours=1),
            ("dropped", "rate_limited", "too_large"),
        )
        if grew < n:
            findings.append(
                Finding(
                    "not counted",
                    f"garbage burst of {n} at {at.astimezone(TZ):%H:%M}: {grew} drops counted",
                )
            )

    # --- secrets ---
    findings.extend(grep_secrets(soak))
    soak.shortest_gaps = shortest  # type: ignore[attr-defined]
    return findings


def grep_secrets(soak: Soak) -> list[Finding]:
    """No token or password in anything the run produced (but the files that hold them)."""
    secrets_ = {f"{k} token": v for k, v in soak.tokens.items()}
    secrets_ |= dict(soak.passwords.items())
    holders = {"devices.json", "passwords.env", "passwd", "devices.sim.json"}
    findings = []
    produced = [p for p in soak.run_dir.rglob("*") if p.is_file() and p.name not in holders]
    for path in produced:
        data = path.read_bytes()
        for name, value in secrets_.items():
            for form in {value, value.lower(), value.upper()}:
                if form.encode() in data:
                    findings.append(
                        Finding("secret leaked", f"{name} in {path.relative_to(soak.run_dir)}")
                    )
    for _, topic, payload, _ in soak.seen.messages:
        for name, value in secrets_.items():
            if value.lower().encode() in payload.lower():
                findings.append(Finding("secret leaked", f"{name} in an MQTT payload on {topic}"))
    return findings


# --- the report ---------------------------------------------------------------------------------


def report(soak: Soak, findings: list[Finding], took_s: float) -> str:
    seen = soak.seen
    api = sum(1 for e in seen.events if e["by"] == "api" and e["event"] in ("on", "off"))
    fulls = sum(1 for e in seen.events if e["event"] == "full")
    kinds: dict[str, int] = defaultdict(int)
    for _, fault, _ in seen.injected:
        kinds[fault.kind.split(":")[0] if not fault.kind.startswith("kill") else fault.kind] += 1
    shortest = getattr(soak, "shortest_gaps", {})
    lines = [
        f"simulated {soak.o.start.astimezone(TZ):%Y-%m-%d %H:%M} .. "
        f"{soak.o.end.astimezone(TZ):%Y-%m-%d %H:%M}"
        f" at {soak.o.speed:g}x in {took_s:.0f} s real; seed {soak.o.seed}",
        f"faults injected: {len(seen.injected)} ("
        + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
        + ")",
        f"MQTT messages seen: {len(seen.messages)}; house events: {len(seen.events)} "
        f"({api} switches by the actuator, {fulls} stores full)",
        "shortest gap between two switches of a socket: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in sorted(shortest.items())),
        f"restarts: {soak.info.get('restarts')}",
    ]
    if findings:
        lines.append(f"FAILED: {len(findings)} finding(s)")
        lines += [f"  - {f}" for f in findings]
    else:
        lines.append("held: everything checked (see bench/soak.py's docstring)")
    return "\n".join(lines)


async def soak_run(options: SoakOptions) -> tuple[Soak, list[Finding], float]:
    soak = Soak(options)
    began = time.monotonic()
    findings = await soak.run()
    return soak, findings, time.monotonic() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--days", type=float, default=7.0, help="simulated days (7)")
    parser.add_argument(
        "--seed", type=int, help="fault and weather seed (default: random, printed)"
    )
    parser.add_argument("--speed", type=float, default=600.0, help="simulated s per real s (600)")
    parser.add_argument("--start", help="simulated start date (default: from the seed)")
    parser.add_argument("--scripted", action="store_true", help="the CI schedule (2 days)")
    parser.add_argument("--run-dir", default=str(ROOT / "run" / "soak"), help="logs (run/soak)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    rng = random.Random(seed)
    day = date(2026, 1, 1) + timedelta(days=rng.randrange(365))  # drawn always: the same
    if args.start:  # faults follow from the seed with --start or without
        day = date.fromisoformat(args.start)
    start = local(day, 5, 0)
    if args.scripted:
        end = local(day + timedelta(days=2), 6, 30)
        faults = scripted_faults(day)
    else:
        end = start + timedelta(days=args.days, hours=1.5)
        faults = random_faults(rng, start, end)
    again = f"--seed {seed} --start {day} " + (
        "--scripted" if args.scripted else f"--days {args.days:g}"
    )
    print(f"soak: seed {seed} (again: python -m bench.soak {again})", flush=True)
    options = SoakOptions(
        start=start, end=end, speed=args.speed, seed=seed, run_dir=Path(args.run_dir), faults=faults
    )
    soak, findings, took = asyncio.run(soak_run(options))
    print(report(soak, findings, took), flush=True)
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
