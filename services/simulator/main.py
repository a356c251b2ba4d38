"""Run the simulated house: `python -m services.simulator` and `hwsched simulate`.

    python -m services.simulator --config config/config_devices.example.json \\
        [--speed 60] [--start 2024-06-21T06:00] [--seed N] [--cloudiness 0.4] \\
        [--state-dir DIR] [--base-port 18000] [--sim-config FILE] [--timezone TZ] \\
        [--bind 0.0.0.0] [--advertise-host NAME] [--weather-port N] [--control-port N]

It logs one line per device with its URL(s), then the CA certificate, the weather and
control URLs and a devices file pointing at the simulated devices; runs the physics on the
clock (real time, or a `ScaledClock` from `--start` at `--speed`); stops cleanly on SIGINT
or SIGTERM. Mistakes are one line on stderr and exit status 2.

Every server listens on `--bind` (127.0.0.1); the URLs it logs and writes (`simulator.json`,
`devices.sim.json`) name `--advertise-host` (default: the bind address, or this machine's
host name when bound to 0.0.0.0 or ::). The certificates name `appliance/<type>/<serial>`,
never the host, so they hold whatever the host is called. In Compose:
`--bind 0.0.0.0 --advertise-host simulator --weather-port 8090 --control-port 8091`.

This module imports aiohttp and cryptography only when the simulator runs, so the
`hwsched` command works without them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ValidationError

from shared.clock import Clock, ScaledClock, SystemClock, as_utc, shared_scaled_clock
from shared.config import (
    DEFAULT_DEVICES_FILE,
    ConfigError,
    DevicesConfig,
    P1Config,
    describe_error,
    load_devices,
)
from shared.naming import slugify

from .settings import SimulatorSettings, load_settings, parse_settings

EXIT_USAGE = 2
log = logging.getLogger("hwsched.simulator")


class SimulatorUsageError(Exception):
    """A bad command-line value (one line)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's options (shared by `python -m services.simulator` and `hwsched`)."""
    parser.add_argument(
        "--config",
        "--devices",
        dest="config",
        metavar="FILE",
        default=str(DEFAULT_DEVICES_FILE),
        help=f"devices file to simulate (default: {DEFAULT_DEVICES_FILE})",
    )
    parser.add_argument(
        "--sim-config",
        metavar="FILE",
        help="simulator settings, TOML or JSON (default: the devices file's 'simulator' key)",
    )
    parser.add_argument("--speed", type=float, help="simulated seconds per real second (1)")
    parser.add_argument(
        "--start", metavar="ISO", help="simulated start time (default: now; naive = local)"
    )
    parser.add_argument(
        "--origin",
        type=float,
        metavar="UNIX_TIME",
        help="wall-clock Unix time at which the simulated clock shows --start (default: "
        "when the simulator starts); processes given the same --start, --speed and "
        "--origin share one simulated time (the services: HWSCHED_SIM_CLOCK__*)",
    )
    parser.add_argument("--seed", type=int, help="seed of clouds and noise (0)")
    parser.add_argument(
        "--cloudiness", type=float, help="0 clear .. 1 overcast (default: by season)"
    )
    parser.add_argument("--timezone", metavar="TZ", help="the house's time zone")
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the CA (kept across runs), certificates and devices file go "
        "(default: a temporary directory, removed at exit)",
    )
    parser.add_argument(
        "--base-port", type=int, metavar="N", help="consecutive ports from N (default: config/free)"
    )
    parser.add_argument(
        "--weather-port", type=int, metavar="N", help="the weather service's port (default: free)"
    )
    parser.add_argument(
        "--control-port", type=int, metavar="N", help="the control endpoint's port (default: free)"
    )
    parser.add_argument(
        "--bind",
        metavar="ADDRESS",
        default="127.0.0.1",
        help="address every server listens on (127.0.0.1; 0.0.0.0 = every interface)",
    )
    parser.add_argument(
        "--advertise-host",
        metavar="NAME",
        help="host written into the URLs and the devices file (default: the bind address, "
        "or this machine's host name when bound to 0.0.0.0 or ::)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log level (INFO)",
    )


def settings_from_args(args: argparse.Namespace) -> tuple[DevicesConfig, SimulatorSettings]:
    """The devices and the simulator settings, command-line flags over the file."""
    devices_path = Path(args.config)
    devices = load_devices(devices_path)
    sim_path = Path(args.sim_config) if args.sim_config else None
    settings = load_settings(sim_path, devices_path)
    updates: dict[str, Any] = {}
    for flag, key in (
        ("speed", "speed"),
        ("origin", "origin"),
        ("seed", "seed"),
        ("cloudiness", "cloudiness"),
        ("timezone", "timezone"),
        ("base_port", "base_port"),
        ("weather_port", "weather_port"),
        ("control_port", "control_port"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            updates[key] = value
    if updates:
        settings = parse_settings(settings.model_dump() | updates, "command line")
    try:
        tz = ZoneInfo(settings.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"timezone: unknown time zone {settings.timezone!r}") from None
    if args.start:
        try:
            start = datetime.fromisoformat(args.start)
        except ValueError:
            raise SimulatorUsageError(
                f"--start: not an ISO date-time like 2024-06-21T06:00 (got {args.start!r})"
            ) from None
        if start.tzinfo is None:
            start = start.replace(tzinfo=tz)
        settings = settings.model_copy(update={"start": as_utc(start)})
    for key in settings.devices:
        try:
            slugify(key)
        except ValueError:
            raise ConfigError(f"simulator settings: devices: bad device name {key!r}") from None
    return devices, settings


def check_network(args: argparse.Namespace) -> tuple[str, str | None]:
    """(bind address, advertised host or None) from the flags; SimulatorUsageError if bad."""
    bind = getattr(args, "bind", None) or "127.0.0.1"
    try:
        ipaddress.ip_address(bind)
    except ValueError:
        raise SimulatorUsageError(
            f"--bind: not an IP address like 127.0.0.1 or 0.0.0.0 (got {bind!r})"
        ) from None
    host = getattr(args, "advertise_host", None)
    if host is not None:
        # the services read it from devices.sim.json: the devices file's own rule applies
        try:
            P1Config.model_validate(
                {"device_name": "check", "device_type": "HWE-P1", "ip_address": host}
            )
        except ValidationError as err:
            raise SimulatorUsageError(f"--advertise-host: {describe_error(err)}") from None
    return bind, host


def make_clock(settings: SimulatorSettings) -> Clock:
    """Real time, or simulated time from `start` at `speed`."""
    if settings.speed == 1 and settings.start is None:
        return SystemClock()
    start = settings.start or SystemClock().now()
    if settings.origin is not None:
        return shared_scaled_clock(settings.speed, start, settings.origin)
    return ScaledClock(settings.speed, start)


async def serve(
    devices: DevicesConfig,
    settings: SimulatorSettings,
    *,
    state_dir: Path | None = None,
    stop: asyncio.Event | None = None,
    bind: str = "127.0.0.1",
    advertise_host: str | None = None,
) -> None:
    """Run the simulator until `stop` is set (or SIGINT/SIGTERM)."""
    from services.simulator.server import Simulator

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
    clock = make_clock(settings)
    sim = Simulator(
        devices,
        clock=clock,
        settings=settings,
        state_dir=state_dir,
        bind=bind,
        advertise_host=advertise_host,
    )
    await sim.start()
    try:
        clouds = "by season" if settings.cloudiness is None else f"{settings.cloudiness:g}"
        log.info(
            "simulated house from %s at %gx, seed %d, cloudiness %s",
            clock.now().isoformat(timespec="seconds"),
            settings.speed,
            settings.seed,
            clouds,
        )
        for line in sim.lines():
            log.info("%s", line)
        await stop.wait()
        log.info("stopping")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        await sim.stop()


def run(args: argparse.Namespace) -> int:
    """Load, start, serve until a signal; exceptions for bad input (see `main`)."""
    devices, settings = settings_from_args(args)
    bind, advertise_host = check_network(args)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=getattr(args, "log_level", "INFO"),
            format="%(asctime)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    state_dir = Path(args.state_dir) if args.state_dir else None
    asyncio.run(
        serve(devices, settings, state_dir=state_dir, bind=bind, advertise_host=advertise_host)
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.simulator",
        description="Simulate a house with HomeWizard devices, solar panels and weather.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    from services.simulator.server import SimulatorError

    try:
        return run(args)
    except (ConfigError, SimulatorError, SimulatorUsageError) as err:
        print(f"simulator: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
