"""`hwsched run` / `make run`: the whole product on this machine, without Docker.

Starts, as separate processes running their real code:
- a broker: the local `mosquitto` on a free port of 127.0.0.1 (never the shared 1883);
- the simulated house (its devices, its CA, its weather) for the devices file;
- the poller, the forecaster (quartz's model in its own environment, `.venv-forecaster`),
  the scheduler,
  the actuator and the Home Assistant bridge, pointed at that broker and that house;
then prints what to watch and how to publish an override, restarts a service that dies (with
back-off), and stops everything cleanly on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORECASTER_PYTHON = ROOT / ".venv-forecaster" / "bin" / "python"


class StackError(Exception):
    """Something the stack cannot start without (one line)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def find_mosquitto() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    raise StackError(
        "no mosquitto broker found: install it (Debian/Ubuntu: sudo apt-get install mosquitto)"
    )


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    restart: bool = True
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    history: list[float] = field(default_factory=list)

    async def start(self) -> None:
        out = self.log.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            cwd=ROOT,
            env=self.env,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        self.started_at = time.monotonic()

    async def stop(self, grace_s: float = 8.0) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def wait_for_file(path: Path, child: Child, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(path.exists):
        if child.proc is not None and child.proc.returncode is not None:
            raise StackError(f"{child.name} stopped at start (see {child.log})")
        if time.monotonic() > deadline:
            raise StackError(f"{child.name} not ready after {timeout_s:.0f} s (see {child.log})")
        await asyncio.sleep(0.1)


async def wait_for_port(port: int, child: Child, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if child.proc is not None and child.proc.returncode is not None:
                raise StackError(f"{child.name} stopped at start (see {child.log})") from None
            if time.monotonic() > deadline:
                raise StackError(
                    f"{child.name} not listening on {port} (see {child.log})"
                ) from None
            await asyncio.sleep(0.1)


async def supervise(children: list[Child], stop: asyncio.Event) -> None:
    """Restart a child that exits, with back-off (1 s doubling to 60 s)."""
    while not stop.is_set():
        for c in children:
            if c.proc is None or c.proc.returncode is None or not c.restart:
                continue
            code = c.proc.returncode
            delay = min(60.0, 2.0 ** min(c.restarts, 6))
            if time.monotonic() - c.started_at > 120:
                c.restarts = 0
                delay = 1.0
            print(f"[stack] {c.name} exited ({code}); restarting in {delay:.0f} s (log: {c.log})")
            c.restarts += 1
            c.proc = None
            await asyncio.sleep(delay)
            if not stop.is_set():
                await c.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


def _print_guide(base: str, port: int, sim: dict[str, object], run_dir: Path) -> None:
    devices = sim.get("devices")
    sockets = [
        slug
        for slug, d in (devices.items() if isinstance(devices, dict) else [])
        if isinstance(d, dict) and d.get("product_type") == "HWE-SKT"
    ]
    example = sockets[0] if sockets else "kitchen_boiler"
    sub = f"mosquitto_sub -h 127.0.0.1 -p {port} -v"
    print(
        f"""
hwsched is running on the simulated house.  Logs: {run_dir}/*.log   Stop: Ctrl-C

Watch everything:      {sub} -t '{base}/#'
The plan:              {sub} -t '{base}/plan'
The house surplus:     {sub} -t '{base}/surplus'
Socket states:         {sub} -t '{base}/+' -t '{base}/+/override'
Override a socket:     mosquitto_pub -h 127.0.0.1 -p {port} -t '{base}/{example}/override/set' \\
                         -m '{{"state": "on", "duration_s": 1800}}'
Give it back:          mosquitto_pub -h 127.0.0.1 -p {port} -t '{base}/{example}/override/set' \\
                         -m '{{"state": "auto"}}'
The simulated house:   curl -s {sim.get("control_url", "")}/state
""",
        flush=True,
    )


def prepare(devices_file: Path, run_dir: Path) -> tuple[int, Path]:
    """Check what the stack needs, clear old logs, write the broker's config: (port, conf)."""
    if not devices_file.exists():
        raise StackError(f"{devices_file}: no such file")
    run_dir.mkdir(parents=True, exist_ok=True)
    for old in [*run_dir.glob("*.log"), run_dir / "sim" / "simulator.json"]:
        old.unlink(missing_ok=True)
    port = free_port()
    conf = run_dir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "log_dest stdout\nlog_type error\nlog_type warning\n"
    )
    return port, conf


async def run_stack(devices_file: Path, run_dir: Path) -> int:
    mosquitto = find_mosquitto()
    port, conf = prepare(devices_file, run_dir)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("HWSCHED_")}
    broker = Child("broker", [mosquitto, "-c", str(conf)], base_env, run_dir / "broker.log")
    sim_dir = run_dir / "sim"
    info_file = sim_dir / "simulator.json"
    sim_argv = [
        sys.executable,
        "-m",
        "services.simulator",
        "--config",
        str(devices_file),
        "--state-dir",
        str(sim_dir),
    ]
    simulator = Child("simulator", sim_argv, base_env, run_dir / "simulator.log", restart=False)
    children = [broker, simulator]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await broker.start()
        await wait_for_port(port, broker, 10)
        await simulator.start()
        await wait_for_file(info_file, simulator, 30)
        sim = json.loads(info_file.read_text())
        env = dict(
            base_env,
            HWSCHED_BROKER__HOST="127.0.0.1",
            HWSCHED_BROKER__PORT=str(port),
            HWSCHED_DEVICES_FILE=str(sim_dir / "devices.sim.json"),
            HWSCHED_DEVICE_CA_FILE=str(sim_dir / "ca.pem"),
            PYTHONUNBUFFERED="1",
        )
        weather = sim.get("weather_url")
        if isinstance(weather, str):
            env["HWSCHED_FORECAST__WEATHER_URL"] = weather.rstrip("/")
        services = [
            ("poller", [sys.executable, "-m", "services.poller"]),
            ("scheduler", [sys.executable, "-m", "services.scheduler"]),
            ("actuator", [sys.executable, "-m", "services.actuator"]),
            ("bridge", [sys.executable, "-m", "services.bridge"]),
        ]
        if FORECASTER_PYTHON.exists():
            # The service runs here; quartz's model runs in its island, as a worker process.
            env["HWSCHED_FORECAST__WORKER_PYTHON"] = str(FORECASTER_PYTHON)
            services.insert(1, ("forecaster", [sys.executable, "-m", "services.forecaster"]))
        else:
            print(
                "[stack] no forecaster environment (.venv-forecaster): run `make venv-forecaster`"
                " — the scheduler plans on its no-forecast fallback meanwhile",
                flush=True,
            )
        for name, argv in services:
            child = Child(name, argv, env, run_dir / f"{name}.log")
            await child.start()
            children.append(child)
            print(f"[stack] started {name} (pid {child.proc.pid if child.proc else '?'})")
        _print_guide("hwsched", port, sim, run_dir)
        supervisor = asyncio.create_task(supervise(children[2:], stop))
        while not stop.is_set():
            if simulator.proc is not None and simulator.proc.returncode is not None:
                raise StackError(f"the simulated house stopped (see {simulator.log})")
            if broker.proc is not None and broker.proc.returncode is not None:
                print("[stack] the broker stopped; restarting it", flush=True)
                await broker.start()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
        return 0
    finally:
        print("\n[stack] stopping…", flush=True)
        for child in reversed(children):
            await child.stop()
        print("[stack] stopped", flush=True)


def main(devices_file: Path, run_dir: Path) -> int:
    try:
        return asyncio.run(run_stack(devices_file, run_dir))
    except StackError as err:
        print(f"hwsched run: {err}", file=sys.stderr)
        return 2
