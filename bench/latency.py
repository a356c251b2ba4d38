"""Measurement-to-command latency and the services' peak memory: `python -m bench.latency`.

`make bench-latency` runs it. Everything runs as it does in production, as separate
processes on this machine (env as in `services.stack`): a throwaway mosquitto on a free port
(never 1883), the simulated house (real time), and `python -m services.poller`,
`services.scheduler` and `services.actuator`. The bench publishes a clear-sky forecast for
the devices file's arrays (retained, as the forecaster would) and sets the daily boundary
a minute before now, so every plan has a full day ahead: 95 steps of 15 min.

One cycle: the bench publishes a `HouseSurplus` (retained, QoS 1, as the poller does; a
per-cycle marker in its last decimals) and waits for the scheduler's first `SocketCommand`
of a plan made after it (`plan_made_at`), then for that plan (`<base>/plan`) to read its
`solve_s` and check the marker (`measured_surplus_w`). What is measured, on the bench's
clock: from just before its publish (so: bench → broker → scheduler) until the command
arrives (scheduler → broker → bench): the MQTT hops on this machine, the scheduler's
parsing, the problem, the planner's solve (`solve_s`: for the optimal planner most of it),
the plan's simulation and the messages. "excl. solve" subtracts the plan's own `solve_s`.
Cycles run one after the other; the poller's own surpluses (every 30 s) still trigger plans
meanwhile, as in production: a cycle whose plan was made on the poller's surplus instead is
counted ("other surplus"), its time kept.

Then the scheduler is restarted with `HWSCHED_PLANNER=reference` and the cycles repeat.
Peak memory: each process's `VmHWM` (peak resident set) from `/proc/<pid>/status` at the
end of its run.

Targets: p99 <= 50 ms (the optimal planner, a full day) and <= 60 MB per service.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import aiomqtt

from services.simulator.house import arrays_of
from services.stack import ROOT, Child, find_mosquitto, free_port, wait_for_file, wait_for_port
from shared.config import load_devices
from shared.messages import (
    Forecast,
    HouseSurplus,
    PlanMessage,
    SocketCommand,
    dump_message,
    parse_message,
)
from shared.sky import clear_sky_series_w
from shared.topics import Topics

DEVICES_FILE = ROOT / "config" / "config_devices.example.json"
TZ = "Europe/Amsterdam"
LATENCY_TARGET_MS = 50.0
MEMORY_TARGET_MB = 60.0
SERVICES = ("poller", "scheduler", "actuator")


@dataclass
class Cycle:
    total_s: float
    solve_s: float
    planner: str
    steps: int
    marker_ok: bool
    status: str


@dataclass
class Listener:
    """The commands and plans the scheduler publishes, as they arrive (bench clock)."""

    commands: list[tuple[float, datetime]] = field(default_factory=list)
    plans: dict[datetime, PlanMessage] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, client: aiomqtt.Client, topics: Topics) -> None:
        async for m in client.messages:
            arrived = time.perf_counter()
            if not isinstance(m.payload, bytes):
                continue
            found = topics.match(m.topic.value)
            if found is None:
                continue
            if found[0].name == "socket_set":
                command = parse_message(SocketCommand, m.payload)
                if command.plan_made_at is not None:
                    self.commands.append((arrived, command.plan_made_at))
            elif found[0].name == "plan":
                plan = parse_message(PlanMessage, m.payload)
                self.plans[plan.made_at] = plan
            else:
                continue
            self.changed.set()

    async def wait(self, what: str, timeout_s: float, test: object) -> None:
        deadline = time.perf_counter() + timeout_s
        while not test():  # type: ignore[operator]
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError(f"no {what} within {timeout_s:g} s")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)


def forecast_now(devices_file: Path) -> Forecast:
    """A clear-sky forecast (x 0.8) from the current hour for 30 h, in 15-min steps."""
    now = datetime.now(UTC)
    start = now.replace(minute=0, second=0, microsecond=0)
    power = clear_sky_series_w(start, 900, 120, arrays_of(load_devices(devices_file)))
    return Forecast(
        timestamp=now,
        start=start,
        step_s=900,
        power_w=[round(0.8 * p, 1) for p in power],
        made_at=now,
        source="clear-sky",
        pv_model="clear-sky",
    )


def surplus_message(i: int, p1_name: str) -> HouseSurplus:
    """Cycle `i`'s surplus: a value that moves over the cycles, marker i % 997 in mW."""
    value = round(1500.0 + 1800.0 * math.sin(i * 0.37)) + (i % 997) * 0.001
    return HouseSurplus(
        timestamp=datetime.now(UTC),
        surplus_w=value,
        p1_power_w=-value,
        based_on=[p1_name],
    )


async def run_cycles(
    client: aiomqtt.Client,
    listener: Listener,
    topics: Topics,
    p1_name: str,
    cycles: int,
    first: int,
) -> list[Cycle]:
    out = []
    for i in range(first, first + cycles):
        message = surplus_message(i, p1_name)
        sent_at = message.timestamp
        n_before = len(listener.commands)
        t0 = time.perf_counter()
        await client.publish(topics.surplus(), dump_message(message), qos=1, retain=True)

        def mine(since: int = n_before, sent: datetime = sent_at) -> bool:
            return any(made >= sent for _, made in listener.commands[since:])

        await listener.wait(f"command for cycle {i}", 30.0, mine)
        arrived, made_at = next((a, m) for a, m in listener.commands[n_before:] if m >= sent_at)
        await listener.wait(f"plan for cycle {i}", 10.0, lambda m=made_at: m in listener.plans)
        plan = listener.plans.pop(made_at)
        marker_ok = (
            plan.measured_surplus_w is not None
            and abs(plan.measured_surplus_w - message.surplus_w) < 5e-4
        )
        out.append(
            Cycle(
                total_s=arrived - t0,
                solve_s=plan.solve_s,
                planner=plan.planner,
                steps=len(plan.available_power_w),
                marker_ok=marker_ok,
                status=plan.status,
            )
        )
    return out


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set (VmHWM), MB; None if it cannot be read."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return None


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank), q in 0..100."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Phase:
    name: str
    cycles: list[Cycle]
    scheduler_mb: float | None


def _statuses(cycles: list[Cycle]) -> str:
    counts: dict[str, int] = {}
    for c in cycles:
        counts[c.status] = counts.get(c.status, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _ms(v: float) -> str:
    return f"{1000 * v:.1f}"


def report(
    phases: list[Phase], memory: dict[str, float | None], cycles: int, nodelay: bool
) -> tuple[str, bool]:
    broker = "set_tcp_nodelay true" if nodelay else "mosquitto defaults (Nagle on)"
    lines = [
        f"hwsched latency: measurement (surplus) to command via the broker, {cycles} cycles",
        f"({platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"broker: {broker})",
        "",
        "| scheduler planner | steps | p50 ms | p99 ms | p50 excl. solve | "
        "p99 excl. solve | solve p50 | solve p99 | max ms | plan status | other surplus |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    ok = True
    for phase in phases:
        c = phase.cycles
        total = [x.total_s for x in c]
        solve = [x.solve_s for x in c]
        rest = [max(0.0, x.total_s - x.solve_s) for x in c]
        steps = statistics.median(x.steps for x in c)
        used = sorted({x.planner for x in c})
        lines.append(
            f"| {phase.name} ({'/'.join(used)}) | {steps:.0f} | {_ms(percentile(total, 50))} | "
            f"{_ms(percentile(total, 99))} | {_ms(percentile(rest, 50))} | "
            f"{_ms(percentile(rest, 99))} | {_ms(percentile(solve, 50))} | "
            f"{_ms(percentile(solve, 99))} | {_ms(max(total))} | {_statuses(c)} | "
            f"{sum(not x.marker_ok for x in c)} |"
        )
        if phase.name == "optimal":
            ok &= percentile(total, 99) * 1000 <= LATENCY_TARGET_MS
    lines += ["", "| service | peak RSS (VmHWM) MB |", "| --- | --- |"]
    for name, mb in memory.items():
        shown = f"{mb:.1f}" if mb is not None else "?"
        lines.append(f"| {name} | {shown} |")
        if mb is None or mb > MEMORY_TARGET_MB:
            ok = False
    opt = next((p for p in phases if p.name == "optimal"), None)
    if opt is not None:
        p99 = percentile([x.total_s for x in opt.cycles], 99) * 1000
        verdict = "met" if p99 <= LATENCY_TARGET_MS else "NOT met"
        lines += [
            "",
            f"target p99 <= {LATENCY_TARGET_MS:g} ms with the optimal planner: {verdict} "
            f"({p99:.1f} ms; the solve alone is most of it)",
        ]
    worst = max((mb for mb in memory.values() if mb is not None), default=0.0)
    verdict = (
        "met"
        if all(m is not None and m <= MEMORY_TARGET_MB for m in memory.values())
        else ("NOT met")
    )
    lines.append(f"target <= {MEMORY_TARGET_MB:g} MB per service: {verdict} (max {worst:.1f} MB)")
    return "\n".join(lines), ok


def _boundary_env() -> str:
    """A daily boundary one minute ago (local), so the horizon is a full day."""
    local = datetime.now(ZoneInfo(TZ)) - timedelta(minutes=1)
    return local.strftime("%H:%M")


async def bench(args: argparse.Namespace) -> int:
    devices_file = Path(args.devices)
    devices = load_devices(devices_file)
    run_dir = Path(tempfile.mkdtemp(prefix="hwsched-bench-latency-"))
    port = free_port()
    conf = run_dir / "mosquitto.conf"
    nodelay = "set_tcp_nodelay true\n" if args.tcp_nodelay else ""
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{nodelay}"
    )
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("HWSCHED_")}
    broker = Child("broker", [find_mosquitto(), "-c", str(conf)], base_env, run_dir / "broker.log")
    sim_dir = run_dir / "sim"
    simulator = Child(
        "simulator",
        [
            sys.executable,
            "-m",
            "services.simulator",
            "--config",
            str(devices_file),
            "--state-dir",
            str(sim_dir),
            "--log-level",
            "WARNING",
        ],
        base_env,
        run_dir / "simulator.log",
    )
    base = f"bench{uuid.uuid4().hex[:8]}"
    topics = Topics(base)
    env = dict(
        base_env,
        HWSCHED_BROKER__HOST="127.0.0.1",
        HWSCHED_BROKER__PORT=str(port),
        HWSCHED_BASE_TOPIC=base,
        HWSCHED_DEVICES_FILE=str(sim_dir / "devices.sim.json"),
        HWSCHED_DEVICE_CA_FILE=str(sim_dir / "ca.pem"),
        HWSCHED_TIMEZONE=TZ,
        HWSCHED_DAILY_BOUNDARY=_boundary_env(),
        HWSCHED_LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    children: dict[str, Child] = {}
    memory: dict[str, float | None] = {}
    phases: list[Phase] = []
    listener = Listener()
    try:
        await broker.start()
        await wait_for_port(port, broker, 10)
        await simulator.start()
        await wait_for_file(sim_dir / "simulator.json", simulator, 60)
        # the bench's own socket without Nagle's algorithm: its publish is not held back
        # behind the PUBACK it just sent for the previous plan
        nodelay_opt = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier=f"{base}-bench", socket_options=nodelay_opt
        ) as client:
            await client.subscribe(topics.plan(), qos=1)
            await client.subscribe(f"{base}/+/set", qos=1)
            reader = asyncio.create_task(listener.run(client, topics))
            forecast = forecast_now(devices_file)
            await client.publish(topics.forecast(), dump_message(forecast), qos=1, retain=True)
            for name in ("poller", "actuator"):
                child = Child(
                    name, [sys.executable, "-m", f"services.{name}"], env, run_dir / f"{name}.log"
                )
                await child.start()
                children[name] = child
            first = 0
            for planner in args.planners:
                sched_env = dict(env, HWSCHED_PLANNER=planner)
                child = Child(
                    f"scheduler-{planner}",
                    [sys.executable, "-m", "services.scheduler"],
                    sched_env,
                    run_dir / f"scheduler-{planner}.log",
                )
                await child.start()
                children["scheduler"] = child
                # warm up: the books restored, the first plans made (imports, the solver)
                await asyncio.sleep(3.0)
                await run_cycles(client, listener, topics, devices.p1.device_name, 20, first)
                first += 20
                print(f"[bench] {planner}: {args.cycles} cycles ...", file=sys.stderr, flush=True)
                cycles = await run_cycles(
                    client, listener, topics, devices.p1.device_name, args.cycles, first
                )
                first += args.cycles
                assert child.proc is not None
                mb = peak_rss_mb(child.proc.pid)
                phases.append(Phase(planner, cycles, mb))
                memory[f"scheduler ({planner})"] = mb
                await child.stop()
            for name in ("poller", "actuator"):
                proc = children[name].proc
                memory[name] = peak_rss_mb(proc.pid) if proc is not None else None
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    finally:
        for child in [*children.values(), simulator, broker]:
            await child.stop()
        if args.keep:
            print(f"[bench] logs kept in {run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    text, ok = report(phases, memory, args.cycles, args.tcp_nodelay)
    print(text)
    if args.json:
        data = json.dumps(
            {
                "cycles": args.cycles,
                "phases": {
                    p.name: [
                        {"total_s": c.total_s, "solve_s": c.solve_s, "marker_ok": c.marker_ok}
                        for c in p.cycles
                    ]
                    for p in phases
                },
                "peak_rss_mb": memory,
            },
            indent=1,
        )
        await asyncio.to_thread(Path(args.json).write_text, data)
    return 0 if ok or not args.check else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    parser.add_argument("--cycles", type=int, default=1000, help="cycles per planner (1000)")
    parser.add_argument(
        "--planners",
        nargs="+",
        default=["optimal", "reference"],
        choices=["optimal", "reference"],
        help="scheduler planners to measure, in order (optimal reference)",
    )
    parser.add_argument("--devices", default=str(DEVICES_FILE), help="devices file to simulate")
    parser.add_argument("--json", metavar="FILE", help="also write every cycle's figures here")
    parser.add_argument("--keep", action="store_true", help="keep the services' logs")
    parser.add_argument(
        "--tcp-nodelay",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the broker with `set_tcp_nodelay true`, as the shipped mosquitto.conf and "
        "`hwsched run` (default); --no-tcp-nodelay for mosquitto's own default (Nagle on)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is not met")
    args = parser.parse_args(argv)
    if args.cycles < 1:
        parser.error("--cycles must be >= 1")
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
