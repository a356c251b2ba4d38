"""`hwsched`: the project's command line.

    hwsched plan [FILE] [--planner reference|optimal] [--show]
    hwsched check-config [--settings FILE] [--devices FILE]
    hwsched simulate [--config FILE] [--speed X] [--start ISO] [--seed N] [--base-port N] ...
    hwsched pair HOST [--name local/NAME] [--port N] [--timeout S] [--ca-file FILE]
    hwsched status [--watch [S]] [--run-dir DIR] [--settings FILE] [--timeout S]
    hwsched override SOCKET on|off|auto [--for 30m] [--run-dir DIR] [--settings FILE]
    hwsched run [--speed X] [--start ISO] [--devices FILE] [--run-dir DIR] ...
    hwsched --version

Bad input is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from services.simulator.main import add_arguments as add_simulate_arguments
from services.stack import SERVICES
from shared.config import ConfigError, load_devices, load_settings
from shared.homewizard import HomeWizardError, V2Client, create_user
from shared.messages import (
    MAX_OVERRIDE_S,
    MessageError,
    OverrideRequest,
    OverrideState,
    parse_message,
)
from shared.planning.planners import DEFAULT_PLANNER, PLANNER_NAMES, get_planner
from shared.planning.problem import Plan, PlanningProblem, ProblemError, parse_problem
from shared.planning.simulate import simulate

EXIT_USAGE = 2


def package_version() -> str:
    """hwsched's version from the installed package's metadata (pyproject.toml's)."""
    try:
        return importlib.metadata.version("hwsched")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _read_input(file: str | None) -> bytes:
    if file is None or file == "-":
        return sys.stdin.buffer.read()
    path = Path(file)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CliError(f"{file}: no such file") from None
    except IsADirectoryError:
        raise CliError(f"{file}: is a directory") from None
    except OSError as err:
        raise CliError(f"{file}: cannot read ({err.strerror})") from None


def plan_to_json(plan: Plan) -> str:
    return json.dumps(plan.model_dump(mode="json"), indent=1)


def render_plan(problem: PlanningProblem, plan: Plan, out: TextIO) -> None:
    """Print a plan for people: one row per step, the day's figures at the end (with
    prices, the prices per step, the batteries' mode and what the day costs)."""
    outcome = simulate(problem, plan.sockets, plan.battery_mode)
    names = [s.name for s in problem.ordered_sockets()]
    width = max([8, *(len(n) for n in names)])
    title = problem.name or "plan"
    imp, exp = problem.import_prices(), problem.export_prices()
    out.write(
        f"{title}: {problem.n_steps} steps of {problem.step_s // 60} min from "
        f"{problem.start.isoformat()}  (planner {plan.planner}, {plan.status}, "
        f"{plan.solve_s * 1000:.1f} ms)\n\n"
    )
    header = f"{'time':>5}  {'surplus W':>9}  "
    if imp is not None:
        header += f"{'import':>7} {'export':>7}  "
    header += "  ".join(f"{n[:width]:^{width}}" for n in names)
    if problem.batteries:
        header += f"  {'battery W':>9}  {'stored Wh':>9}"
        if plan.battery_mode is not None:
            header += f"  {'mode':<14}"
    header += f"  {'grid W':>7}"
    out.write(header + "\n")
    for t in range(problem.n_steps):
        when = (problem.start + timedelta(seconds=t * problem.step_s)).strftime("%H:%M")
        cells = []
        for n in names:
            on = plan.sockets.get(n, [0] * problem.n_steps)[t]
            drawn = outcome.socket_power_w[n][t]
            cell = f"ON {drawn:4.0f}W" if on and drawn > 0 else ("on (full)" if on else ".")
            cells.append(f"{cell:^{width}}")
        line = f"{when:>5}  {problem.available_power_w[t]:9.0f}  "
        if imp is not None and exp is not None:
            line += f"{imp[t]:7.3f} {exp[t]:7.3f}  "
        line += "  ".join(cells)
        if problem.batteries:
            line += (
                f"  {outcome.battery_power_w[t] + 0.0:9.0f}  {outcome.battery_energy_wh[t]:9.0f}"
            )
            if plan.battery_mode is not None:
                line += f"  {plan.battery_mode[t]:<14}"
        line += f"  {outcome.grid_power_w[t] + 0.0:7.0f}"
        out.write(line + "\n")
    out.write("\n")
    for s in problem.ordered_sockets():
        end = outcome.socket_energy_wh[s.name][-1]
        kind = "needed" if s.daily_need else "optional"
        out.write(
            f"  {s.name}: {kind}, {s.energy_stored:.0f} -> {end:.0f} of "
            f"{s.energy_capacity:.0f} Wh\n"
        )
    out.write(
        f"\n  unmet need {outcome.unmet_need_wh:.0f} Wh, grid import "
        f"{outcome.grid_import_wh:.0f} Wh, export {outcome.export_wh:.0f} Wh, into optional "
        f"stores {outcome.optional_wh:.0f} Wh, {outcome.switches} switches\n"
    )
    if outcome.cost_eur is not None and outcome.net_cost_eur is not None:
        out.write(
            f"  cost {outcome.cost_eur:.2f} EUR (import - export), value put into optional "
            f"stores {outcome.optional_value_eur or 0.0:.2f} EUR, net cost "
            f"{outcome.net_cost_eur:.2f} EUR\n"
        )
        ref = plan.info.get("reference_net_cost_eur")
        if isinstance(ref, float):
            out.write(
                f"  the reference plan (batteries in zero mode): net cost {ref:.2f} EUR; "
                f"this plan saves {ref - outcome.net_cost_eur:.2f} EUR\n"
            )
    if plan.battery_mode is not None:
        used = sorted(set(plan.battery_mode))
        out.write(f"  battery modes: {', '.join(used)}\n")


def cmd_plan(args: argparse.Namespace) -> int:
    problem = parse_problem(_read_input(args.file))
    plan = get_planner(args.planner)(problem)
    if args.show:
        render_plan(problem, plan, sys.stdout)
    else:
        sys.stdout.write(plan_to_json(plan) + "\n")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """Load the settings, the devices file and the forecaster's settings as the services
    would; summarise or refuse."""
    from services.forecaster.settings import load_forecast_settings

    settings = load_settings(Path(args.settings) if args.settings else None)
    devices_path = Path(args.devices) if args.devices else settings.devices_file
    devices = load_devices(devices_path)
    forecast = load_forecast_settings()
    print(
        f"settings: broker {settings.broker.host}:{settings.broker.port}, base topic "
        f"{settings.base_topic!r}, timezone {settings.timezone}, day starts "
        f"{settings.daily_boundary.strftime('%H:%M')}, poll every {settings.poll_interval_s:g} s, "
        f"planner {settings.planner}"
    )
    print(f"forecaster: weather {forecast.weather_url} ({forecast.nwp_source})")
    print(
        f"{devices_path}: P1 meter {devices.p1.device_name!r}, "
        f"{len(devices.sockets)} socket(s), {len(devices.batteries)} battery(ies), "
        f"{len(devices.solar_panels)} solar array(s)"
    )
    for s in devices.sockets:
        kind = "needed" if s.daily_need else "optional"
        print(
            f"  socket {s.device_name!r}: {kind}, {s.max_power_usage:g} W, "
            f"{s.energy_capacity:g} Wh, priority {s.priority}"
        )
    for b in devices.batteries:
        note = (
            "  (PLACEHOLDER token: pair the battery first)"
            if b.user_info.token_is_placeholder
            else ""
        )
        print(
            f"  battery {b.device_name!r}: {b.max_power_usage:g} W, {b.energy_capacity:g} Wh{note}"
        )
    for p in devices.solar_panels:
        q = p.quartz_parameters
        print(
            f"  solar array {p.name!r}: {q.capacity_kwp:g} kWp, tilt {q.tilt:g}°, facing "
            f"{q.orientation:g}° (180 = south), at {q.latitude:g}, {q.longitude:g}"
        )
    if devices.solar_panels:
        total = sum(p.quartz_parameters.capacity_kwp for p in devices.solar_panels)
        print(f"  solar total: {total:g} kWp")
    for warning in devices.warnings():
        print(f"warning: {devices_path}: {warning}")
    return 0


def _devices_entry(host: str) -> str:
    """Where a device's token goes: `devices[i] ("name")` when the devices file has HOST."""
    try:
        settings = load_settings()
        devices = load_devices(settings.devices_file)
    except ConfigError:
        return f"the device's entry for {host} in config/config_devices.json"
    for i, device in enumerate(devices.devices):
        if device.ip_address == host:
            return f"devices[{i}] ({device.device_name!r}) in {settings.devices_file}"
    return f"the device's entry for {host} in {settings.devices_file}"


async def _pair(args: argparse.Namespace) -> tuple[str, str | None]:
    """The token, and a line about the paired device (None if it could not be read)."""

    def press_button() -> None:
        print(
            f"Press the button on the device at {args.host} now (waiting up to "
            f"{args.timeout:g} s)...",
            file=sys.stderr,
            flush=True,
        )

    token = await create_user(
        args.host,
        args.name,
        port=args.port,
        ca_file=args.ca_file,
        timeout_s=args.timeout,
        on_waiting=press_button,
    )
    try:
        async with V2Client(args.host, token, args.port, ca_file=args.ca_file) as device:
            info = await device.device_info()
    except HomeWizardError as err:
        print(f"hwsched pair: warning: the new token could not be tried: {err}", file=sys.stderr)
        return token, None
    return token, f"{info.product_type} ({info.product_name or 'HomeWizard'}), serial {info.serial}"


def cmd_pair(args: argparse.Namespace) -> int:
    """Pair with a device (API v2): wait for its button, print the token and where it goes."""
    name = args.name if args.name.startswith("local/") else f"local/{args.name}"
    args.name = name
    if args.timeout <= 0:
        raise CliError("--timeout must be > 0")
    print(f"Asking {args.host} for a token for user {name}...", file=sys.stderr, flush=True)
    try:
        token, paired = asyncio.run(_pair(args))
    except ValueError as err:
        raise CliError(str(err)) from None
    except HomeWizardError as err:
        raise CliError(str(err)) from None
    if paired:
        print(f"Paired with {paired}.")
    user_info = json.dumps({"name": name, "token": token})
    print(f"Token: {token}")
    print(
        f"Put it in {_devices_entry(args.host)}, as devices[].user_info.token:\n"
        f'  "user_info": {user_info}\n'
        "Keep it secret: it gives full access to the device. Pairing again with the same "
        "name replaces it."
    )
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run the simulated house (services/simulator) until SIGINT or SIGTERM."""
    try:
        from services.simulator.main import SimulatorUsageError, run
        from services.simulator.server import SimulatorError
    except ImportError as err:
        raise CliError(
            f"the simulator needs the 'simulator' extra (aiohttp, cryptography): {err}"
        ) from None
    try:
        return run(args)
    except (SimulatorError, SimulatorUsageError) as err:
        raise CliError(str(err)) from None


def _stack_broker(run_dir: Path) -> dict[str, object]:
    """Where `hwsched run --run-dir DIR` put its broker, clock and devices (its stack.json)."""
    path = run_dir / "stack.json"
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise CliError(
            f"{path}: no such file (is `hwsched run --run-dir {run_dir}` running?)"
        ) from None
    except (OSError, ValueError) as err:
        raise CliError(f"{path}: cannot read: {err}") from None
    broker = info.get("broker") if isinstance(info, dict) else None
    if not isinstance(broker, dict) or not isinstance(broker.get("port"), int):
        raise CliError(f"{path}: no broker port in it")
    if info.get("state") != "running":
        raise CliError(f"{path}: the stack is {info.get('state')!r}, not running")
    return dict(info)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|min|h)?")
_UNIT_S = {None: 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration_s(text: str) -> float:
    """`90`, `90s`, `30m`, `1.5h` in seconds; CliError otherwise."""
    found = _DURATION.fullmatch(text.strip().lower())
    if found is None or float(found.group(1)) <= 0:
        raise CliError(f"--for: a duration like 30m, 1h or 900s (got {text!r})")
    return float(found.group(1)) * _UNIT_S[found.group(2)]


async def _override(
    connect: Callable[[], Any], set_topic: str, state_topic: str, payload: bytes, wait_s: float
) -> OverrideState | None:
    """Publish the command and wait (up to `wait_s`) for the actuator's new override state."""
    async with connect() as client:
        await client.subscribe(state_topic, qos=1)
        await client.publish(set_topic, payload, qos=1)
        try:
            async with asyncio.timeout(wait_s):
                async for message in client.messages:
                    if message.retain or not isinstance(message.payload, bytes):
                        continue  # what was in force before the command
                    try:
                        return parse_message(OverrideState, message.payload)
                    except MessageError:
                        continue
        except TimeoutError:
            return None
    return None


def cmd_override(args: argparse.Namespace) -> int:
    """Publish an override for one socket (as `mosquitto_pub` would) and say what the
    actuator made of it."""
    import aiomqtt

    from shared.naming import slugify
    from shared.topics import Topics

    settings = load_settings(Path(args.settings) if args.settings else None)
    broker = settings.broker
    host, port, base = broker.host, broker.port, settings.base_topic
    username = broker.username
    password = broker.password.get_secret_value() if broker.password is not None else None
    devices_file: Path | None = settings.devices_file
    if args.run_dir:
        info = _stack_broker(Path(args.run_dir))
        stack_broker = info["broker"]
        assert isinstance(stack_broker, dict)
        host, port = str(stack_broker.get("host", "127.0.0.1")), int(stack_broker["port"])
        base = str(info.get("base_topic") or base)
        simulator = info.get("simulator")
        found = simulator.get("devices_file") if isinstance(simulator, dict) else None
        devices_file = Path(found) if isinstance(found, str) else None
        secrets_file = Path(args.run_dir) / "broker" / "passwords.env"
        if secrets_file.exists():  # a --secure stack: as the `ha` user, who may override
            for line in secrets_file.read_text().splitlines():
                if line.startswith("MQTT_HA_PASSWORD="):
                    username, password = "ha", line.partition("=")[2]
    try:
        slug = slugify(args.socket)
    except ValueError as err:
        raise CliError(f"{args.socket!r}: {err}") from None
    if devices_file is not None:
        try:
            devices = load_devices(devices_file)
        except ConfigError:
            devices = None  # the broker's actuator still says what it made of it
        if devices is not None and slug not in {s.slug for s in devices.sockets}:
            known = ", ".join(f"{s.slug} ({s.device_name})" for s in devices.sockets)
            raise CliError(f"no socket {args.socket!r} in {devices_file}: one of {known}")
    request: dict[str, object] = {"state": args.state}
    if args.duration is not None:
        if args.state == "auto":
            raise CliError("--for: auto ends the override, it has no duration")
        duration_s = parse_duration_s(args.duration)
        if duration_s > MAX_OVERRIDE_S:
            raise CliError(f"--for: at most 7 days (got {duration_s / 3600:g} h)")
        request["duration_s"] = int(duration_s) if duration_s.is_integer() else duration_s
    payload = json.dumps(request).encode()
    try:
        parse_message(OverrideRequest, payload)  # what the actuator will check
    except MessageError as err:
        raise CliError(str(err)) from None
    topics = Topics(base)

    def connect() -> aiomqtt.Client:
        return aiomqtt.Client(
            host,
            port,
            username=username,
            password=password,
            identifier=f"{broker.client_id_prefix}-override-{os.getpid()}",
            timeout=args.timeout,
            tls_params=aiomqtt.TLSParameters() if broker.tls else None,
        )

    try:
        state = asyncio.run(
            _override(
                connect, topics.override_set(slug), topics.override(slug), payload, args.timeout
            )
        )
    except aiomqtt.MqttError as err:
        raise CliError(f"cannot reach the broker {host}:{port}: {err}") from None
    sent = f"sent {payload.decode()} to {topics.override_set(slug)}"
    if state is None:
        print(f"{sent}; no answer from the actuator within {args.timeout:g} s (is it running?)")
        return 1
    until = state.until.astimezone(settings.tz).strftime("%H:%M") if state.until else None
    now = f"override {state.state} until {until}" if until else "no override, back to the plan"
    print(f"{sent}; the actuator: {now}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """The live state from the broker as tables: once, or every S seconds (--watch)."""
    import aiomqtt

    from services.dashboard.state import LiveState
    from services.dashboard.terminal import client_id, gather
    from shared.clock import shared_scaled_clock
    from shared.service import clock_for
    from shared.topics import Topics

    if args.watch is not None and not 0.1 <= args.watch <= 3600:
        raise CliError("--watch: between 0.1 and 3600 seconds")
    if not 0 < args.timeout <= 300:
        raise CliError("--timeout: between 0 and 300 seconds")
    settings = load_settings(Path(args.settings) if args.settings else None)
    broker = settings.broker
    host, port, base = broker.host, broker.port, settings.base_topic
    username = broker.username
    password = broker.password.get_secret_value() if broker.password is not None else None
    clock = clock_for(settings)
    devices_file: Path | None = settings.devices_file
    if args.run_dir:
        info = _stack_broker(Path(args.run_dir))
        stack_broker = info["broker"]
        assert isinstance(stack_broker, dict)
        host, port = str(stack_broker.get("host", "127.0.0.1")), int(stack_broker["port"])
        base = str(info.get("base_topic") or base)
        sim = info.get("clock")
        if isinstance(sim, dict):  # the stack's simulated time
            clock = shared_scaled_clock(
                float(sim["speed"]), datetime.fromisoformat(str(sim["start"])), float(sim["origin"])
            )
        simulator = info.get("simulator")
        found = simulator.get("devices_file") if isinstance(simulator, dict) else None
        devices_file = Path(found) if isinstance(found, str) else None
        secrets_file = Path(args.run_dir) / "broker" / "passwords.env"
        if secrets_file.exists():  # a --secure stack: watch as the read-only user
            for line in secrets_file.read_text().splitlines():
                if line.startswith("MQTT_HA_PASSWORD="):
                    username, password = "ha", line.partition("=")[2]
    devices = None
    if devices_file is not None:
        try:
            devices = load_devices(devices_file)
        except ConfigError:
            devices = None  # the broker's own messages still say what there is
    state = LiveState(
        Topics(base), settings.tz, settings.daily_boundary, clock.now(), devices=devices
    )

    def connect() -> aiomqtt.Client:
        return aiomqtt.Client(
            host,
            port,
            username=username,
            password=password,
            identifier=client_id(broker.client_id_prefix),
            timeout=args.timeout,
            tls_params=aiomqtt.TLSParameters() if broker.tls else None,
        )

    try:
        asyncio.run(gather(connect, state, clock.now, sys.stdout, watch_s=args.watch))
    except aiomqtt.MqttError as err:
        raise CliError(f"cannot read the broker {host}:{port}: {err}") from None
    except KeyboardInterrupt:
        return 0
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hwsched", description="Solar-surplus energy scheduler for HomeWizard devices."
    )
    parser.add_argument("--version", action="version", version=f"hwsched {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "plan",
        help="plan a day: read a planning problem (JSON), print the plan (JSON)",
        description="Read a planning problem (FILE, or stdin) and print the plan as JSON.",
    )
    p.add_argument("file", nargs="?", metavar="FILE", help="problem JSON (default: stdin)")
    p.add_argument(
        "--planner",
        choices=PLANNER_NAMES,
        default=DEFAULT_PLANNER,
        help=f"which planner (default: {DEFAULT_PLANNER})",
    )
    p.add_argument("--show", action="store_true", help="print the plan for people, not JSON")
    p.set_defaults(func=cmd_plan)
    c = sub.add_parser(
        "check-config",
        help="check the settings and the devices file; print what they say",
        description="Load the settings (file + HWSCHED_* environment) and the devices file "
        "exactly as the services do. Exit status 2 and one line on a mistake.",
    )
    c.add_argument("--settings", metavar="FILE", help="settings TOML (default: as services)")
    c.add_argument("--devices", metavar="FILE", help="devices JSON (default: from settings)")
    c.set_defaults(func=cmd_check_config)
    pr = sub.add_parser(
        "pair",
        help="pair with a device (API v2): press its button, get a token",
        description="Ask the device at HOST (HTTPS, API v2) for a token: press its button "
        "when told, then put the printed token in the devices file. The token goes to "
        "stdout only, nowhere else.",
    )
    pr.add_argument("host", metavar="HOST", help="the device's IP address or host name")
    pr.add_argument(
        "--name", default="local/hwsched", help="user name on the device (default: local/hwsched)"
    )
    pr.add_argument("--port", type=int, default=None, help="HTTPS port (default: 443)")
    pr.add_argument(
        "--timeout", type=float, default=60.0, metavar="S", help="wait for the button (60 s)"
    )
    pr.add_argument(
        "--ca-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="CA certificate to trust instead of HomeWizard's (e.g. the simulator's)",
    )
    pr.set_defaults(func=cmd_pair)
    st = sub.add_parser(
        "status",
        help="the live state from the broker: sockets, surplus, forecast, services",
        description="Read what the broker holds (settings: broker host, port, credentials, "
        "as the services) and print each socket (who controls it, on/off, stored Wh of its "
        "capacity, the next planned switch), the surplus, the forecast's energy left today and "
        "each service's health.",
    )
    st.add_argument(
        "--watch",
        nargs="?",
        const=5.0,
        type=float,
        metavar="S",
        help="print it again every S seconds (default 5) until Ctrl-C",
    )
    st.add_argument(
        "--run-dir",
        metavar="DIR",
        help="the broker, clock and devices of `hwsched run --run-dir DIR` (e.g. run)",
    )
    st.add_argument("--settings", metavar="FILE", help="settings TOML (default: as services)")
    st.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="broker time-out (10 s)"
    )
    st.set_defaults(func=cmd_status)
    ov = sub.add_parser(
        "override",
        help="switch a socket on or off for a while, or give it back to the plan (auto)",
        description="Publish an override command for SOCKET (its name or topic name, e.g. "
        "kitchen_boiler) on <base>/<socket>/override/set, as Home Assistant or mosquitto_pub "
        "would, and print what the actuator made of it.",
    )
    ov.add_argument("socket", metavar="SOCKET", help="the socket's name or topic name")
    ov.add_argument("state", choices=("on", "off", "auto"), help="auto: back to the plan")
    ov.add_argument(
        "--for",
        dest="duration",
        metavar="DURATION",
        help="how long, e.g. 30m, 1h, 900s (default: the actuator's lease, until the boundary)",
    )
    ov.add_argument(
        "--run-dir",
        metavar="DIR",
        help="the broker and devices of `hwsched run --run-dir DIR` (e.g. run)",
    )
    ov.add_argument("--settings", metavar="FILE", help="settings TOML (default: as services)")
    ov.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="wait for the actuator (10 s)"
    )
    ov.set_defaults(func=cmd_override)
    sim = sub.add_parser(
        "simulate",
        help="run the simulated house: devices, solar panels and weather on 127.0.0.1",
        description="Serve simulated HomeWizard devices (each on its own port), an "
        "Open-Meteo-compatible weather service and a control endpoint, until Ctrl-C.",
    )
    add_simulate_arguments(sim)
    sim.set_defaults(func=cmd_simulate)
    run = sub.add_parser(
        "run",
        help="the whole product on this machine: broker, simulated house, all the services",
        description="Start a broker on a free port of 127.0.0.1 (the local mosquitto, else an "
        "embedded Python broker), the simulated house for the devices file, and the "
        f"{', '.join(SERVICES[:-1])} and {SERVICES[-1]} services as processes; "
        "print what to watch and a line per new plan; stop everything on Ctrl-C.",
    )
    run.add_argument(
        "--devices",
        metavar="FILE",
        default="config/config_devices.example.json",
        help="devices file of the house to simulate (default: the example house)",
    )
    run.add_argument("--run-dir", metavar="DIR", default="run", help="logs and state (run/)")
    run.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "embedded"),
        help="which broker (default: $HWSCHED_RUN_BROKER, else auto: mosquitto when installed)",
    )
    run.add_argument(
        "--speed",
        type=float,
        metavar="X",
        help="simulated time, X times faster than real time, shared by the house and every "
        "service (e.g. 600: a day in 2.4 min); default: real time",
    )
    run.add_argument(
        "--start",
        metavar="ISO",
        help="simulated start time, e.g. 2026-06-21T04:00 (naive = the settings' time zone)",
    )
    run.add_argument(
        "--secure",
        action="store_true",
        help="mosquitto as compose runs it: no anonymous clients, the ACL, persistence; "
        "random passwords in <run-dir>/broker/passwords.env",
    )
    run.add_argument(
        "--sim-config",
        metavar="FILE",
        help="the simulator's settings (seed, clouds, stores, draws, faults)",
    )
    run.set_defaults(func=cmd_run)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from services.stack import StackOptions
    from services.stack import main as run_stack

    start: datetime | None = None
    if args.start:
        try:
            start = datetime.fromisoformat(args.start)
        except ValueError:
            print(f"hwsched run: --start: not an ISO date-time: {args.start!r}", file=sys.stderr)
            return EXIT_USAGE
        if start.tzinfo is None:
            try:
                tz = load_settings().tz
            except ConfigError as err:
                print(f"hwsched run: {err}", file=sys.stderr)
                return EXIT_USAGE
            start = start.replace(tzinfo=tz)
    if args.speed is not None and not (0 < args.speed <= 100_000):
        print("hwsched run: --speed: between 0 and 100000", file=sys.stderr)
        return EXIT_USAGE
    options = StackOptions(
        speed=args.speed,
        start=start,
        secure=args.secure,
        sim_config=Path(args.sim_config) if args.sim_config else None,
    )
    return run_stack(Path(args.devices), Path(args.run_dir), args.broker, options)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except (ProblemError, CliError, ConfigError) as err:
        print(f"hwsched {args.command}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
