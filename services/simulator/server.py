"""The simulated house's device APIs, weather service and control endpoint (aiohttp).

Every device listens on its own port, on 127.0.0.1 by default (`bind`: 0.0.0.0 in a
container), as the real ones each have their own address; the URLs and the devices file
name the `advertise_host` (default: the bind address, or this machine's name when bound to
every interface), e.g. `simulator` on a Compose network:

* P1 meter (HWE-P1): API v1 over HTTP (`GET /api`, `GET /api/v1/data`) and API v2 over
  HTTPS (`GET /api`, `GET /api/measurement`, `GET/PUT /api/batteries`, `POST /api/user`);
* Energy Socket (HWE-SKT): API v1 over HTTP (`GET /api`, `GET /api/v1/data`,
  `GET/PUT /api/v1/state`);
* Plug-In Battery (HWE-BAT): API v2 over HTTPS (`GET /api`, `GET /api/measurement`,
  `POST /api/user`).

API v2 answers only with `Authorization: Bearer <token>` (else 401 `user:unauthorized`):
a device accepts the tokens of its pairings (`POST /api/user` after a simulated button
press), the `user_info.token` of a battery in the devices file (the P1 accepts every
battery's too), and `tokens` from the simulator settings. The P1 meter is paired as it
were: its own `user_info` from the devices file, or else a token of its own that
`devices.sim.json` carries (user `local/hwsched-sim`), so the services control the
batteries on the simulated house as on a paired one. So is a battery whose devices file has
the example's all-zero placeholder token: it gets a token of its own in `devices.sim.json`
(the placeholder is still accepted, for files written for the simulator).
Its TLS certificate is issued by the simulator's own CA for `appliance/<type>/<serial>`
(see `tls.py`).

The weather service answers Open-Meteo's `/v1/<api>` (see `weather.py`) and, on the same
port, the day-ahead market of the house's days (see `market.py`): EnergyZero's
`/energyzero/public/v1/prices` and ENTSO-E's `/entsoe/api` (A44; any non-empty
`securityToken`). The control endpoint (`/control/...`) injects faults (`POST
/control/market {"down": true}` makes the market answer 503), presses pairing buttons, flips
sockets by hand, cuts the house's power (`POST /control/power_cut {"duration_s": 60,
"relays": "previous"}`: every device off the network meanwhile, then booted again, its v2
`GET /api/system` `uptime_s` from 0) and shows the house. Payload field names are HomeWizard's
(api-documentation docs/v1, docs/v2).

Time: the house runs on `clock` (simulated); network behaviour — injected delays, the
pairing window and certificate validity — on `net_clock` (real time by default), because
it is the client's real timeouts and wall clock that meet them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import random
import re
import secrets
import shutil
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from pydantic import ValidationError

from services.simulator import market, weather
from services.simulator.house import (
    BATTERY_MODES,
    PERMISSIONS,
    RELAYS_AFTER_CUT,
    DeviceOverride,
    DrawEvent,
    House,
    HouseOptions,
    RelaysAfterCut,
    SwitchLockedError,
)
from services.simulator.settings import DeviceSettings, FaultSettings, SimulatorSettings
from services.simulator.tls import CertificateAuthority
from shared.clock import Clock, SystemClock
from shared.config import BatteryConfig, DevicesConfig, P1Config, SocketConfig, describe_error
from shared.naming import slugify

log = logging.getLogger("hwsched.simulator")

#: The default listen address (and advertised host).
HOST = "127.0.0.1"
#: Addresses that mean "every interface": not a host a client can be given.
ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})
WIFI_SSID = "hwsched-sim"
METER_MODEL = "ISKRA  2M550T-101"
VOLTAGE_V = 230.0
FREQUENCY_HZ = 50.0
#: What `missing_fields: true` leaves out of an answer.
DEFAULT_MISSING = (
    "active_power_w",
    "power_w",
    "total_power_import_kwh",
    "energy_import_kwh",
    "state_of_charge_pct",
    "power_on",
)
DEVICES_FILE = "devices.sim.json"
#: The sockets' relays, kept for a restart (`Simulator.save_relays`).
RELAYS_FILE = "relays.json"
INFO_FILE = "simulator.json"
_USER_NAME = re.compile(r"[a-zA-Z0-9\-_/\\# ]+")
_SHUTDOWN_S = 0.25

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DeviceConfig = P1Config | SocketConfig | BatteryConfig


class SimulatorError(Exception):
    """The simulator cannot start or do what was asked (one line)."""


@dataclass(frozen=True, slots=True)
class Product:
    product_type: str
    product_name: str
    firmware_version: str
    #: The type in the certificate name `appliance/<cert_type>/<serial>`.
    cert_type: str
    v1: bool
    v2: bool


PRODUCTS = {
    "HWE-P1": Product("HWE-P1", "P1 Meter", "6.0200", "p1dongle", v1=True, v2=True),
    "HWE-SKT": Product("HWE-SKT", "Energy Socket", "4.07", "energysocket", v1=True, v2=False),
    "HWE-BAT": Product("HWE-BAT", "Plug-In Battery", "2.0.1", "battery", v1=False, v2=True),
}


#: The API v2 user the simulated P1 meter is paired with when the devices file names none.
P1_USER = "local/hwsched-sim"
#: ... and a battery with the example's placeholder token (the same simulated pairing).
BATTERY_USER = P1_USER


def _p1_token(serial: str, seed: int) -> str:
    """The simulated P1's own token: the same for the same house (32 hex)."""
    return hashlib.sha256(f"p1-token:{serial}:{seed}".encode()).hexdigest()[:32].upper()


def _battery_token(serial: str, seed: int) -> str:
    """A simulated battery's own token when the devices file has the placeholder: the same
    for the same house (32 hex)."""
    return hashlib.sha256(f"battery-token:{serial}:{seed}".encode()).hexdigest()[:32].upper()


def serial_for(name: str) -> str:
    """A stable 12-hex serial (a MAC address, as the real ones) derived from the name."""
    return "5c2faf" + hashlib.sha256(name.encode()).hexdigest()[:6]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data), content_type="application/json")


def _v1_error(status: int, error_id: int, description: str) -> web.Response:
    return _json({"error": {"id": error_id, "description": description}}, status)


def _v2_error(status: int, code: str) -> web.Response:
    return _json({"error": code}, status)


async def _body(request: web.Request) -> tuple[bool, Any]:
    """(True, parsed JSON body) or (False, None) when it is not JSON."""
    try:
        return True, json.loads(await request.read() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False, None


def _kwh(wh: float) -> float:
    return round(wh / 1000, 3)


def advertised_host(bind: str, advertise_host: str | None = None) -> str:
    """The host clients are told: `advertise_host`, else `bind` unless it means every
    interface, else this machine's host name."""
    if advertise_host:
        return advertise_host
    return socket.gethostname() if bind in ANY_ADDRESS else bind


def url_host(host: str) -> str:
    """A host as it stands in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


@dataclass
class SimDevice:
    """A simulated device: identity, ports, faults, accepted tokens, listeners."""

    config: DeviceConfig
    product: Product
    serial: str
    settings: DeviceSettings
    faults: FaultSettings = field(default_factory=FaultSettings)
    #: Accepted API v2 tokens (upper case) -> user name.
    tokens: dict[str, str] = field(default_factory=dict)
    v1_port: int | None = None
    v2_port: int | None = None
    tls: ssl.SSLContext | None = None
    #: `net_clock.monotonic()` until which `POST /api/user` creates users.
    button_until: float | None = None
    runners: list[web.AppRunner] = field(default_factory=list)
    #: The host its URLs name (the simulator's advertised host).
    host: str = HOST
    #: When it last powered up (simulated time): its `uptime_s` counts from here.
    booted_at: datetime | None = None

    @property
    def name(self) -> str:
        return self.config.device_name

    @property
    def slug(self) -> str:
        return self.config.slug

    @property
    def server_name(self) -> str:
        """The name its certificate is for (API v2)."""
        return f"appliance/{self.product.cert_type}/{self.serial}"

    @property
    def listening(self) -> bool:
        return bool(self.runners)

    @property
    def v1_url(self) -> str | None:
        return f"http://{url_host(self.host)}:{self.v1_port}" if self.product.v1 else None

    @property
    def v2_url(self) -> str | None:
        return f"https://{url_host(self.host)}:{self.v2_port}" if self.product.v2 else None

    @property
    def primary_port(self) -> int | None:
        """The port a devices file names: v1 where the device has it, else v2."""
        return self.v1_port if self.product.v1 else self.v2_port


def house_from_settings(
    devices: DevicesConfig, settings: SimulatorSettings, start: datetime
) -> House:
    """A house as the simulator settings describe it, starting at `start`."""
    options = HouseOptions(
        seed=settings.seed,
        cloudiness=settings.cloudiness,
        base_load_w=settings.base_load_w,
        timezone=settings.timezone,
        standby_fraction=settings.standby_fraction,
        store_loss_per_h=settings.store_loss_per_h,
        initial_store_fraction=settings.initial_store_fraction,
        initial_soc=settings.initial_soc,
        battery_efficiency=settings.battery_efficiency,
    )
    overrides: dict[str, DeviceOverride] = {}
    for dev in devices.devices:
        s = device_settings(settings, dev)
        draws = (
            None
            if s.draws is None
            else tuple(DrawEvent(d.start, d.duration_min, d.fraction) for d in s.draws)
        )
        overrides[dev.device_name] = DeviceOverride(
            initial_fraction=s.initial_fraction,
            power_on=s.power_on,
            switch_lock=s.switch_lock,
            draws=draws,
        )
    return House(devices, start, options, overrides)


def device_settings(settings: SimulatorSettings, dev: DeviceConfig) -> DeviceSettings:
    """The settings of one device, found by its name or its slug."""
    for key, value in settings.devices.items():
        if key == dev.device_name or slugify(key) == dev.slug:
            return value
    return DeviceSettings()


def unknown_device_settings(settings: SimulatorSettings, devices: DevicesConfig) -> list[str]:
    """Names in the settings' `devices` that match no configured device."""
    slugs = {d.slug for d in devices.devices}
    names = {d.device_name for d in devices.devices}
    out = []
    for key in settings.devices:
        try:
            slug = slugify(key)
        except ValueError:
            slug = ""
        if key not in names and slug not in slugs:
            out.append(key)
    return out


class Simulator:
    """The simulated house on the network: device APIs, weather, control, physics loop."""

    def __init__(
        self,
        devices: DevicesConfig,
        *,
        clock: Clock,
        settings: SimulatorSettings | None = None,
        house: House | None = None,
        state_dir: Path | None = None,
        base_port: int | None = None,
        net_clock: Clock | None = None,
        tick_s: float = 5.0,
        bind: str = HOST,
        advertise_host: str | None = None,
    ) -> None:
        self.devices_config = devices
        #: The address every server listens on, and the host the URLs and files name.
        self.bind = bind
        self.host = advertised_host(bind, advertise_host)
        self.clock = clock
        self.net_clock = net_clock or SystemClock()
        self.settings = settings or SimulatorSettings()
        unknown = unknown_device_settings(self.settings, devices)
        if unknown:
            raise SimulatorError(f"simulator settings: devices: no device named {unknown[0]!r}")
        self.house = house or house_from_settings(devices, self.settings, clock.now())
        self.base_port = base_port if base_port is not None else self.settings.base_port
        self.tick_s = tick_s
        self._state_dir_given = state_dir is not None
        self.state_dir = state_dir
        self.ca_path: Path | None = None
        self._ca: CertificateAuthority | None = None
        self.devices: dict[str, SimDevice] = {}
        #: The simulated P1 meter's token when the devices file gives it none (or a placeholder).
        self.p1_token: str | None = None
        #: A simulated battery's own token (slug -> token) where the devices file has the
        #: example's placeholder: paired as it were, `devices.sim.json` carries it.
        self.battery_tokens: dict[str, str] = {
            b.slug: _battery_token(serial_for(b.device_name), self.settings.seed)
            for b in devices.batteries
            if b.user_info.token_is_placeholder
        }
        battery_tokens = {
            b.user_info.token.get_secret_value().upper(): b.user_info.name
            for b in devices.batteries
        }
        battery_tokens.update(dict.fromkeys(self.battery_tokens.values(), BATTERY_USER))
        for dev in devices.devices:
            s = device_settings(self.settings, dev)
            sim = SimDevice(
                config=dev,
                product=PRODUCTS[dev.device_type],
                serial=serial_for(dev.device_name),
                settings=s,
                faults=s.faults or FaultSettings(),
                host=self.host,
            )
            if isinstance(dev, BatteryConfig):
                token = dev.user_info.token.get_secret_value().upper()
                sim.tokens[token] = dev.user_info.name
                if dev.slug in self.battery_tokens:
                    sim.tokens[self.battery_tokens[dev.slug]] = BATTERY_USER
            elif isinstance(dev, P1Config):
                sim.tokens.update(battery_tokens)
                if dev.user_info is not None and not dev.user_info.token_is_placeholder:
                    sim.tokens[dev.user_info.token.get_secret_value().upper()] = dev.user_info.name
                else:  # paired, as it were: devices.sim.json gets this token (battery control)
                    self.p1_token = _p1_token(sim.serial, self.settings.seed)
                    sim.tokens[self.p1_token] = P1_USER
            sim.tokens.update({t.upper(): "local/configured" for t in s.tokens})
            self.devices[dev.slug] = sim
        self.weather_port: int | None = None
        self.control_port: int | None = None
        self._weather_runner: web.AppRunner | None = None
        self._control_runner: web.AppRunner | None = None
        self._physics: asyncio.Task[None] | None = None
        self._power_task: asyncio.Task[None] | None = None
        self._saved_relays: dict[str, dict[str, bool]] | None = None
        self._stopping = asyncio.Event()
        self._garbage = random.Random(self.settings.seed)
        #: The simulated market answers 503 while this is set (`POST /control/market`).
        self.market_down = False

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Create the CA and certificates, listen on every port, run the physics."""
        if self.state_dir is None:
            self.state_dir = Path(tempfile.mkdtemp(prefix="hwsched-sim-"))
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            (self.state_dir / "certs").mkdir(exist_ok=True)
        except OSError as err:
            raise SimulatorError(f"{self.state_dir}: cannot create: {err.strerror}") from None
        self._restore_relays()
        now = self.net_clock.now()
        self._ca, self.ca_path = CertificateAuthority.load_or_create(
            self.state_dir, now, keep_key=self._state_dir_given
        )
        for dev in self.devices.values():
            if dev.product.v2:
                dev.tls = self._ca.server_context(dev.server_name, now, self.state_dir / "certs")
        self._plan_ports()
        try:
            for dev in self.devices.values():
                if not dev.faults.gone:
                    await self._listen(dev)
            self._weather_runner, self.weather_port = await self._serve(
                self._weather_app(), self.weather_port
            )
            self._control_runner, self.control_port = await self._serve(
                self._control_app(), self.control_port
            )
        except BaseException:
            await self.stop()
            raise
        for dev in self.devices.values():
            dev.booted_at = self.clock.now()
        self._physics = asyncio.create_task(self._run_physics(), name="simulator-physics")
        self._write_files()

    async def stop(self) -> None:
        """Stop everything; remove the state directory if it was a temporary one."""
        self._stopping.set()
        if self._power_task is not None:
            self._power_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._power_task
            self._power_task = None
        if self._physics is not None:
            self._physics.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._physics
            self._physics = None
        for dev in self.devices.values():
            await self._unlisten(dev)
        for runner in (self._weather_runner, self._control_runner):
            if runner is not None:
                await runner.cleanup()
        self._weather_runner = self._control_runner = None
        if not self._state_dir_given and self.state_dir is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def _run_physics(self) -> None:
        while True:
            self.house.advance_to(self.clock.now())
            self.save_relays()
            await self.clock.sleep(self.tick_s)

    def _relays(self) -> dict[str, dict[str, bool]]:
        return {
            s.name: {"power_on": s.power_on, "switch_lock": s.switch_lock}
            for s in self.house.sockets.values()
        }

    def save_relays(self) -> None:
        """Keep the sockets' relays in the state directory (when it is kept), so that a
        restarted simulator brings them back as they were: a restart of the house is a power
        cut, and real Energy Sockets come back in their previous state."""
        if not self._state_dir_given or self.state_dir is None:
            return
        relays = self._relays()
        if relays == self._saved_relays:
            return
        path = self.state_dir / RELAYS_FILE
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(relays) + "\n")
            tmp.replace(path)
        except OSError as err:
            log.warning("%s: cannot keep the relays: %s", path, err.strerror)
            return
        self._saved_relays = relays

    def _restore_relays(self) -> None:
        """After a restart (the relays kept by the last run): every socket as it was."""
        if not self._state_dir_given or self.state_dir is None:
            return
        path = self.state_dir / RELAYS_FILE
        try:
            saved = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            log.warning("%s: not used: %s", path, err)
            return
        if not isinstance(saved, dict):
            log.warning("%s: not used: not an object", path)
            return
        restored = []
        for name, socket_state in self.house.sockets.items():
            relay = saved.get(name)
            if not isinstance(relay, dict):
                continue
            on, lock = relay.get("power_on"), relay.get("switch_lock")
            if isinstance(lock, bool):
                socket_state.switch_lock = lock
            if isinstance(on, bool):
                socket_state.power_on = on or socket_state.switch_lock
                restored.append(f"{name} {'on' if socket_state.power_on else 'off'}")
        if restored:
            log.info("the house restarted (a power cut): relays as before: %s", ", ".join(restored))

    def advance(self) -> None:
        """Bring the house up to the clock's time."""
        self.house.advance_to(self.clock.now())

    def _plan_ports(self) -> None:
        """Consecutive ports from `base_port` (else each device's own or a free one); the
        weather and control ports given in the settings are kept either way."""
        next_port = self.base_port
        fixed = {p for p in (self.settings.weather_port, self.settings.control_port) if p}

        def take(explicit: int | None) -> int:
            nonlocal next_port
            if next_port is not None:
                while next_port in fixed:
                    next_port += 1
                port, next_port = next_port, next_port + 1
                if port > 65535:
                    raise SimulatorError(f"--base-port {self.base_port}: ports run past 65535")
                return port
            return explicit or 0

        for dev in self.devices.values():
            s = dev.settings
            if dev.product.v1:
                dev.v1_port = take(s.v1_port or dev.config.port)
            if dev.product.v2:
                primary = None if dev.product.v1 else dev.config.port
                dev.v2_port = take(s.v2_port or primary)
        self.weather_port = self.settings.weather_port or take(None)
        self.control_port = self.settings.control_port or take(None)

    async def _serve(
        self, app: web.Application, port: int | None, tls: ssl.SSLContext | None = None
    ) -> tuple[web.AppRunner, int]:
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=_SHUTDOWN_S
        )
        await runner.setup()
        site = web.TCPSite(runner, self.bind, port or 0, ssl_context=tls)
        try:
            await site.start()
        except OSError as err:
            await runner.cleanup()
            where = f"{url_host(self.bind)}:{port or 0}"
            raise SimulatorError(f"cannot listen on {where}: {err.strerror}") from None
        return runner, int(runner.addresses[0][1])

    async def _listen(self, dev: SimDevice) -> None:
        if dev.listening:
            return
        if dev.product.v1:
            runner, dev.v1_port = await self._serve(self._v1_app(dev), dev.v1_port)
            dev.runners.append(runner)
        if dev.product.v2:
            runner, dev.v2_port = await self._serve(self._v2_app(dev), dev.v2_port, dev.tls)
            dev.runners.append(runner)

    async def _unlisten(self, dev: SimDevice) -> None:
        runners, dev.runners = dev.runners, []
        for runner in runners:
            await runner.cleanup()

    async def set_gone(self, dev: SimDevice, gone: bool) -> None:
        """Take a device off the network (connections refused) or bring it back (not during
        a power cut: then it comes back with the power)."""
        if gone:
            await self._unlisten(dev)
        elif self.house.powered:
            await self._listen(dev)

    def uptime_s(self, dev: SimDevice) -> int:
        """Seconds since the device last powered up (simulated)."""
        booted = dev.booted_at if dev.booted_at is not None else self.clock.now()
        return max(0, int((self.clock.now() - booted).total_seconds()))

    async def power_cut(self, duration_s: float, relays: RelaysAfterCut = "previous") -> datetime:
        """The house's grid fails for `duration_s` simulated seconds: every device is off the
        network, nothing draws or produces (`House.power_cut`); when the power is back each
        device boots again (its `uptime_s` from 0) and each socket's relay is as `relays`
        says (`previous`: as before the cut, as real Energy Sockets do). Returns the end."""
        if not (math.isfinite(duration_s) and duration_s > 0):
            raise SimulatorError("duration_s: a number of seconds > 0")
        self.advance()
        until = self.clock.now() + timedelta(seconds=duration_s)
        try:
            self.house.power_cut(until, relays)
        except ValueError as err:
            raise SimulatorError(str(err)) from None
        for dev in self.devices.values():
            await self._unlisten(dev)
        if self._power_task is None or self._power_task.done():
            self._power_task = asyncio.create_task(self._power_back(), name="simulator-power")
        log.info("power cut until %s (relays after it: %s)", until.isoformat(), relays)
        return until

    async def _power_back(self) -> None:
        while (until := self.house.cut_until) is not None:
            await self.clock.sleep_until(until)
            self.advance()
        now = self.clock.now()
        self.save_relays()
        for dev in self.devices.values():
            dev.booted_at = now
            if not dev.faults.gone:
                await self._listen(dev)
        log.info("power back: every device booted again")

    def device(self, key: str) -> SimDevice:
        """A device by name or slug; KeyError if none."""
        if key in self.devices:
            return self.devices[key]
        for dev in self.devices.values():
            if key == dev.name:
                return dev
        try:
            return self.devices[slugify(key)]
        except (KeyError, ValueError):
            raise KeyError(f"no device named {key!r}") from None

    def press_button(self, dev: SimDevice) -> float:
        """Press a v2 device's button: `POST /api/user` works for the pairing window."""
        if not dev.product.v2:
            raise SimulatorError(f"{dev.name} has no API v2 to pair with")
        window = self.settings.pairing_window_s
        dev.button_until = self.net_clock.monotonic() + window
        return window

    # --- what the simulator tells ---------------------------------------------------

    @property
    def weather_url(self) -> str:
        return f"http://{url_host(self.host)}:{self.weather_port}/v1/forecast"

    @property
    def energyzero_url(self) -> str:
        """EnergyZero's base URL (`HWSCHED_PRICES__ENERGYZERO_URL`): the market's days."""
        return f"http://{url_host(self.host)}:{self.weather_port}/energyzero"

    @property
    def entsoe_url(self) -> str:
        """ENTSO-E's API URL (`HWSCHED_PRICES__ENTSOE_URL`): the market's days."""
        return f"http://{url_host(self.host)}:{self.weather_port}/entsoe/api"

    @property
    def control_url(self) -> str:
        return f"http://{url_host(self.host)}:{self.control_port}/control"

    def info(self) -> dict[str, Any]:
        """Machine-readable: where everything is (also written to `simulator.json`)."""
        return {
            "ca_cert": str(self.ca_path),
            "weather_url": self.weather_url,
            "energyzero_url": self.energyzero_url,
            "entsoe_url": self.entsoe_url,
            "control_url": self.control_url,
            "devices_file": str(self.state_dir / DEVICES_FILE) if self.state_dir else None,
            "devices": {
                dev.slug: {
                    "name": dev.name,
                    "product_type": dev.product.product_type,
                    "serial": dev.serial,
                    "v1_url": dev.v1_url,
                    "v2_url": dev.v2_url,
                    "server_name": dev.server_name if dev.product.v2 else None,
                    "listening": dev.listening,
                    "faults": dev.faults.model_dump(),
                }
                for dev in self.devices.values()
            },
        }

    def lines(self) -> list[str]:
        """What the simulator logs at start: one line per device, then the services."""
        out = []
        for dev in self.devices.values():
            parts = [f"{dev.name} ({dev.product.product_type}, serial {dev.serial}):"]
            if dev.v1_url:
                parts.append(f"v1 {dev.v1_url}")
            if dev.v2_url:
                parts.append(f"v2 {dev.v2_url} (TLS name {dev.server_name})")
            if not dev.listening:
                parts.append("[gone]")
            out.append(" ".join(parts))
        out.append(f"CA certificate: {self.ca_path}")
        out.append(f"weather: {self.weather_url}")
        out.append(f"day-ahead prices: {self.energyzero_url} (EnergyZero), {self.entsoe_url}")
        out.append(f"control: {self.control_url}/state")
        if self.state_dir is not None:
            out.append(f"devices file for the services: {self.state_dir / DEVICES_FILE}")
        return out

    def _write_files(self) -> None:
        assert self.state_dir is not None
        devices: list[dict[str, Any]] = []
        for dev in self.devices.values():
            item = dev.config.model_dump(mode="json", exclude_none=True)
            item["ip_address"] = self.host
            item["port"] = dev.primary_port
            user_info = getattr(dev.config, "user_info", None)
            if isinstance(dev.config, P1Config) and self.p1_token is not None:
                item["user_info"] = {"name": P1_USER, "token": self.p1_token}
            elif dev.config.slug in self.battery_tokens:
                item["user_info"] = {
                    "name": BATTERY_USER,
                    "token": self.battery_tokens[dev.config.slug],
                }
            elif user_info is not None:  # the dump masks secrets: write the real token
                item["user_info"] = {
                    "name": user_info.name,
                    "token": user_info.token.get_secret_value(),
                }
            if dev.product.v1 and dev.product.v2:
                item["v2_port"] = dev.v2_port
            devices.append(item)
        panels = [p.model_dump(mode="json") for p in self.devices_config.solar_panels]
        text = json.dumps({"devices": devices, "solar panels": panels}, indent=2)
        path = self.state_dir / DEVICES_FILE
        path.write_text(text + "\n")
        path.chmod(0o600)
        (self.state_dir / INFO_FILE).write_text(json.dumps(self.info(), indent=2) + "\n")

    # --- faults ----------------------------------------------------------------------

    def _fault_middleware(self, dev: SimDevice, api: Literal["v1", "v2"]) -> Any:
        @web.middleware
        async def faults(request: web.Request, handler: Handler) -> web.StreamResponse:
            f = dev.faults
            faulty = f != FaultSettings(gone=f.gone)
            if f.delay_s > 0:
                await self.net_clock.sleep(f.delay_s)
            if f.timeout:
                self._count(dev)
                await self._stopping.wait()  # never answers (until the simulator stops)
                raise web.HTTPServiceUnavailable()
            if f.http_500:
                self._count(dev)
                if api == "v1":
                    return _v1_error(500, 901, "Internal error")
                return _v2_error(500, "request:internal-server-error")
            if api == "v1" and f.api_disabled and request.path != "/api":
                self._count(dev)
                return _v1_error(403, 202, "API not enabled")
            self.advance()
            response = await handler(request)
            if faulty:
                self._count(dev)
            if not isinstance(response, web.Response) or response.body is None:
                return response
            if f.garbage:
                junk = b"\xff\xfe\x00" + self._garbage.randbytes(61)
                return web.Response(
                    status=response.status, body=junk, content_type="application/json"
                )
            body = response.body
            if isinstance(body, bytes) and f.missing_fields:
                missing = DEFAULT_MISSING if f.missing_fields is True else f.missing_fields
                with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):
                    data = json.loads(body)
                    if isinstance(data, dict):
                        kept = {k: v for k, v in data.items() if k not in missing}
                        body = json.dumps(kept).encode()
            if isinstance(body, bytes) and f.truncated:
                body = body[: max(1, len(body) // 2)]
            if body is not response.body:
                return web.Response(
                    status=response.status, body=body, content_type="application/json"
                )
            return response

        return faults

    def _count(self, dev: SimDevice) -> None:
        """One more faulty answer: clear the faults when their `times` are used up."""
        times = dev.faults.times
        if times is None:
            return
        if times <= 1:
            dev.faults = FaultSettings(gone=dev.faults.gone)
        else:
            dev.faults = dev.faults.model_copy(update={"times": times - 1})

    async def apply_faults(self, dev: SimDevice, changes: Mapping[str, Any]) -> FaultSettings:
        """Merge `changes` into a device's faults (`clear: true` resets them first)."""
        changes = dict(changes)
        base = FaultSettings() if changes.pop("clear", False) else dev.faults
        try:
            faults = FaultSettings.model_validate(base.model_dump() | changes)
        except ValidationError as err:
            raise SimulatorError(f"faults: {describe_error(err)}") from None
        dev.faults = faults
        await self.set_gone(dev, faults.gone)
        return faults

    # --- API v1 ----------------------------------------------------------------------

    def _v1_app(self, dev: SimDevice) -> web.Application:
        app = web.Application(middlewares=[self._fault_middleware(dev, "v1")])

        async def api(_: web.Request) -> web.Response:
            return _json(
                {
                    "product_type": dev.product.product_type,
                    "product_name": dev.product.product_name,
                    "serial": dev.serial,
                    "firmware_version": dev.product.firmware_version,
                    "api_version": "v1",
                }
            )

        async def data(_: web.Request) -> web.Response:
            if isinstance(dev.config, SocketConfig):
                return _json(self._socket_data(dev.name))
            return _json(self._p1_data_v1(dev))

        app.router.add_get("/api", api)
        app.router.add_get("/api/v1/data", data)
        if isinstance(dev.config, SocketConfig):
            name = dev.name

            async def get_state(_: web.Request) -> web.Response:
                s = self.house.socket(name)
                return _json(
                    {
                        "power_on": s.power_on,
                        "switch_lock": s.switch_lock,
                        "brightness": s.brightness,
                    }
                )

            async def put_state(request: web.Request) -> web.Response:
                ok, body = await _body(request)
                if not ok or not isinstance(body, dict):
                    return _v1_error(400, 2, "Body contains invalid json")
                for key in ("power_on", "switch_lock"):
                    if key in body and not isinstance(body[key], bool):
                        return _v1_error(400, 7, f"{key} value must be true or false")
                brightness = body.get("brightness")
                if "brightness" in body and (
                    not isinstance(brightness, int)
                    or isinstance(brightness, bool)
                    or not 0 <= brightness <= 255
                ):
                    return _v1_error(400, 7, "brightness value limited to 0-255")
                try:
                    changed = self.house.set_socket(
                        name,
                        power_on=body.get("power_on"),
                        switch_lock=body.get("switch_lock"),
                        brightness=brightness,
                    )
                except SwitchLockedError as err:
                    return _v1_error(400, 8, str(err))
                self.save_relays()
                return _json(changed)

            app.router.add_get("/api/v1/state", get_state)
            app.router.add_put("/api/v1/state", put_state)
        return app

    def _socket_data(self, name: str) -> dict[str, Any]:
        s = self.house.socket(name)
        power = round(s.power_w, 3)
        kwh = _kwh(s.import_wh)
        return {
            "wifi_ssid": WIFI_SSID,
            "wifi_strength": 100,
            "total_power_import_kwh": kwh,
            "total_power_import_t1_kwh": kwh,
            "total_power_export_kwh": 0,
            "total_power_export_t1_kwh": 0,
            "active_power_w": power,
            "active_power_l1_w": power,
            "active_voltage_v": VOLTAGE_V,
            "active_current_a": round(power / VOLTAGE_V, 3),
            "active_frequency_hz": FREQUENCY_HZ,
        }

    def _meter_counters(self) -> tuple[float, float, float, float]:
        m = self.house.meter
        return (
            _kwh(m.import_t1_wh),
            _kwh(m.import_t2_wh),
            _kwh(m.export_t1_wh),
            _kwh(m.export_t2_wh),
        )

    def _unique_id(self, dev: SimDevice) -> str:
        return ("hwsched-sim-" + dev.serial).encode().hex().upper()

    def _p1_data_v1(self, dev: SimDevice) -> dict[str, Any]:
        m = self.house.meter
        i1, i2, e1, e2 = self._meter_counters()
        power = round(m.power_w)
        return {
            "wifi_ssid": WIFI_SSID,
            "wifi_strength": 100,
            "smr_version": 50,
            "meter_model": METER_MODEL,
            "unique_id": self._unique_id(dev),
            "active_tariff": m.tariff,
            "total_power_import_kwh": round(i1 + i2, 3),
            "total_power_import_t1_kwh": i1,
            "total_power_import_t2_kwh": i2,
            "total_power_export_kwh": round(e1 + e2, 3),
            "total_power_export_t1_kwh": e1,
            "total_power_export_t2_kwh": e2,
            "active_power_w": power,
            "active_power_l1_w": power,
            "active_voltage_l1_v": VOLTAGE_V,
            "active_current_l1_a": round(power / VOLTAGE_V, 3),
            "active_frequency_hz": FREQUENCY_HZ,
            "voltage_sag_l1_count": 0,
            "voltage_swell_l1_count": 0,
            "any_power_fail_count": 0,
            "long_power_fail_count": 0,
        }

    # --- API v2 ----------------------------------------------------------------------

    def _auth_middleware(self, dev: SimDevice) -> Any:
        @web.middleware
        async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
            version = request.headers.get("X-Api-Version")
            if version is not None and version.strip() != "2":
                return _v2_error(400, "request:api-version-not-supported")
            if request.path == "/api/user" and request.method == "POST":
                return await handler(request)
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if (
                scheme.lower() != "bearer"
                or token.strip().upper() not in dev.tokens
                or dev.faults.wrong_token
            ):
                return _v2_error(401, "user:unauthorized")
            return await handler(request)

        return auth

    def _v2_app(self, dev: SimDevice) -> web.Application:
        app = web.Application(
            middlewares=[self._fault_middleware(dev, "v2"), self._auth_middleware(dev)]
        )

        async def api(_: web.Request) -> web.Response:
            return _json(
                {
                    "product_name": dev.product.product_name,
                    "product_type": dev.product.product_type,
                    "serial": dev.serial,
                    "firmware_version": dev.product.firmware_version,
                    "api_version": "2.0.0",
                }
            )

        async def measurement(_: web.Request) -> web.Response:
            if isinstance(dev.config, BatteryConfig):
                return _json(self._battery_measurement(dev.name))
            return _json(self._p1_measurement(dev))

        async def user(request: web.Request) -> web.Response:
            return self._create_user(dev, *(await _body(request)))

        async def system(_: web.Request) -> web.Response:
            return _json(
                {
                    "wifi_ssid": "hwsched-sim",
                    "wifi_rssi_db": -60,
                    "cloud_enabled": False,
                    "uptime_s": self.uptime_s(dev),
                    "status_led_brightness_pct": 100,
                    "api_v1_enabled": dev.product.v1,
                }
            )

        app.router.add_get("/api", api)
        app.router.add_get("/api/measurement", measurement)
        app.router.add_get("/api/system", system)
        app.router.add_post("/api/user", user)
        if isinstance(dev.config, P1Config):

            async def get_batteries(_: web.Request) -> web.Response:
                return _json(self._batteries())

            async def put_batteries(request: web.Request) -> web.Response:
                return self._put_batteries(*(await _body(request)))

            app.router.add_get("/api/batteries", get_batteries)
            app.router.add_put("/api/batteries", put_batteries)
        return app

    def _create_user(self, dev: SimDevice, ok: bool, body: Any) -> web.Response:
        if not ok or not isinstance(body, dict):
            return _v2_error(400, "request:invalid-json")
        if "name" not in body:
            return _v2_error(400, "json:parameter-missing:name")
        name = body["name"]
        if not isinstance(name, str):
            return _v2_error(400, "json:parameter-invalid-type:name")
        if not name.startswith("local/"):
            return _v2_error(400, "user:invalid-prefix")
        rest = name.removeprefix("local/")
        if not rest:
            return _v2_error(400, "user:name-empty")
        if len(rest) > 40:
            return _v2_error(400, "user:name-too-long")
        if not _USER_NAME.fullmatch(rest):
            return _v2_error(400, "user:name-invalid")
        if dev.button_until is None or self.net_clock.monotonic() > dev.button_until:
            return _v2_error(403, "user:creation-not-enabled")
        for token, owner in list(dev.tokens.items()):
            if owner == name:  # the same name again: a new token, the old one invalid
                del dev.tokens[token]
        token = secrets.token_hex(16).upper()
        dev.tokens[token] = name
        return _json({"token": token, "name": name})

    def _p1_measurement(self, dev: SimDevice) -> dict[str, Any]:
        m = self.house.meter
        i1, i2, e1, e2 = self._meter_counters()
        power = round(m.power_w)
        local = self.house.now.astimezone(self.house.tz)
        return {
            "protocol_version": 50,
            "meter_model": METER_MODEL,
            "unique_id": self._unique_id(dev),
            "timestamp": local.strftime("%Y-%m-%dT%H:%M:%S"),
            "tariff": m.tariff,
            "energy_import_kwh": round(i1 + i2, 3),
            "energy_import_t1_kwh": i1,
            "energy_import_t2_kwh": i2,
            "energy_export_kwh": round(e1 + e2, 3),
            "energy_export_t1_kwh": e1,
            "energy_export_t2_kwh": e2,
            "power_w": power,
            "power_l1_w": power,
            "voltage_l1_v": VOLTAGE_V,
            "current_a": round(abs(power) / VOLTAGE_V, 3),
            "current_l1_a": round(power / VOLTAGE_V, 3),
            "frequency_hz": FREQUENCY_HZ,
            "voltage_sag_l1_count": 0,
            "voltage_swell_l1_count": 0,
            "any_power_fail_count": 0,
            "long_power_fail_count": 0,
        }

    def _battery_measurement(self, name: str) -> dict[str, Any]:
        b = self.house.batteries[name]
        power = round(b.power_w)
        return {
            "energy_import_kwh": _kwh(b.import_wh),
            "energy_export_kwh": _kwh(b.export_wh),
            "power_w": power,
            "voltage_l1_v": VOLTAGE_V,
            "current_a": round(abs(power) / VOLTAGE_V, 3),
            "frequency_hz": FREQUENCY_HZ,
            "state_of_charge_pct": round(b.soc_pct),
            "cycles": int(b.cycles),
        }

    def _batteries(self) -> dict[str, Any]:
        group = self.house.battery_group()
        for key in ("power_w", "target_power_w", "max_consumption_w", "max_production_w"):
            group[key] = round(group[key])
        return group

    def _put_batteries(self, ok: bool, body: Any) -> web.Response:
        if not ok:
            return _v2_error(400, "request:invalid-json")
        if not isinstance(body, dict) or not {"mode", "permissions", "charge_to_full"} & set(body):
            return _v2_error(400, "json:no-parameters-recognized")
        mode = body.get("mode")
        if "mode" in body:
            if not isinstance(mode, str):
                return _v2_error(400, "json:parameter-invalid-type:mode")
            if mode not in BATTERY_MODES:
                return _v2_error(400, "json:parameter-invalid-value:mode")
        permissions = body.get("permissions")
        if "permissions" in body:
            if not isinstance(permissions, list) or not all(
                isinstance(p, str) for p in permissions
            ):
                return _v2_error(400, "json:parameter-invalid-type:permissions")
            if not set(permissions) <= set(PERMISSIONS):
                return _v2_error(400, "json:parameter-invalid-value:permissions")
        to_full = body.get("charge_to_full")
        if "charge_to_full" in body and not isinstance(to_full, bool):
            return _v2_error(400, "json:parameter-invalid-type:charge_to_full")
        if (mode == "to_full" or to_full is True) and "permissions" in body:
            return _v2_error(400, "json:parameter-not-exclusive")
        if "permissions" in body and mode is None and self.house.control.mode == "to_full":
            return _v2_error(400, "json:parameter-read-only:permissions")
        if to_full is True and mode not in (None, "to_full"):
            return _v2_error(400, "json:parameter-not-exclusive")
        if to_full is True:
            mode = "to_full"
        elif to_full is False and mode is None and self.house.control.mode == "to_full":
            mode = "zero"
        self.house.set_battery_control(mode=mode, permissions=permissions)
        return _json(self._batteries())

    # --- weather ---------------------------------------------------------------------

    def _weather_app(self) -> web.Application:
        app = web.Application()

        async def forecast(request: web.Request) -> web.Response:
            query: dict[str, list[str]] = {}
            for key in request.query:
                query[key] = request.query.getall(key)
            if request.method == "POST":
                form = await request.post()
                for key in form:
                    query.setdefault(key, []).extend(str(v) for v in form.getall(key))
            today = self.clock.now().astimezone(self.house.tz).date()
            try:
                req = weather.parse_request(query, today, self.house.tz)
            except weather.WeatherRequestError as err:
                return _json({"error": True, "reason": str(err)}, 400)
            if req.flatbuffers:
                return web.Response(
                    body=weather.answer_flatbuffers(req, self.house.sky),
                    content_type="application/octet-stream",
                )
            return _json(weather.answer_json(req, self.house.sky))

        app.router.add_route("GET", "/v1/{api}", forecast)
        app.router.add_route("POST", "/v1/{api}", forecast)

        def market_args() -> tuple[datetime, Any, Any, Any, int]:
            self.advance()
            house = self.house
            return self.clock.now(), house.tz, house.sky, house.arrays, self.settings.seed

        async def energyzero(request: web.Request) -> web.Response:
            if self.market_down:
                return _json({"error": "service unavailable"}, 503)
            try:
                answer = market.energyzero_answer(dict(request.query), *market_args())
            except market.MarketRequestError as err:
                return _json({"error": str(err)}, 400)
            return _json(answer)

        async def entsoe(request: web.Request) -> web.Response:
            if self.market_down:
                return web.Response(status=503, text="Service Unavailable")
            if not request.query.get("securityToken"):
                return web.Response(
                    status=401,
                    text="<html><body><h1>Unauthorized</h1></body></html>",
                    content_type="text/html",
                )
            try:
                answer = market.entsoe_answer(dict(request.query), *market_args())
            except market.MarketRequestError as err:
                now = self.clock.now()
                return web.Response(
                    status=400,
                    text=market.acknowledgement(str(err), now),
                    content_type="application/xml",
                )
            return web.Response(text=answer, content_type="application/xml")

        app.router.add_get("/energyzero/public/v1/prices", energyzero)
        app.router.add_get("/entsoe/api", entsoe)
        return app

    # --- control ---------------------------------------------------------------------

    def _control_app(self) -> web.Application:
        app = web.Application()

        def find(key: str) -> SimDevice:
            try:
                return self.device(key)
            except KeyError as err:
                raise web.HTTPNotFound(
                    text=json.dumps({"error": str(err.args[0])}), content_type="application/json"
                ) from None

        def bad(message: str, status: int = 400) -> web.Response:
            return _json({"error": message}, status)

        async def state(_: web.Request) -> web.Response:
            self.advance()
            return _json(
                {
                    "time": self.clock.now().isoformat(),
                    "house": self.house.snapshot(),
                    "devices": self.info()["devices"],
                    "ca_cert": str(self.ca_path),
                    "weather_url": self.weather_url,
                }
            )

        async def events(request: web.Request) -> web.Response:
            self.advance()
            raw = request.query.get("since", "0")
            if not raw.isdigit():
                return bad("since: expected a whole number >= 0")
            return _json(
                {
                    "next": self.house.events_total,
                    "events": self.house.events_since(int(raw)),
                }
            )

        async def faults(request: web.Request) -> web.Response:
            ok, body = await _body(request)
            items = body if isinstance(body, list) else [body]
            if not ok or not all(isinstance(i, dict) and "device" in i for i in items):
                return bad('expected {"device": NAME, <fault>: <value>, ...} (or a list of them)')
            out = {}
            for item in items:
                changes = {k: v for k, v in item.items() if k != "device"}
                key = str(item["device"])
                targets = list(self.devices.values()) if key == "*" else [find(key)]
                for dev in targets:
                    try:
                        out[dev.name] = (await self.apply_faults(dev, changes)).model_dump()
                    except SimulatorError as err:
                        return bad(str(err))
            return _json(out)

        async def button(request: web.Request) -> web.Response:
            dev = find(request.match_info["device"])
            try:
                window = self.press_button(dev)
            except SimulatorError as err:
                return bad(str(err))
            return _json({"device": dev.name, "window_s": window})

        async def manual(request: web.Request) -> web.Response:
            dev = find(request.match_info["device"])
            if not isinstance(dev.config, SocketConfig):
                return bad(f"{dev.name} is not a socket")
            ok, body = await _body(request)
            want = body.get("power_on") if isinstance(body, dict) else None
            if not ok or (want is not None and not isinstance(want, bool)):
                return bad('expected no body, or {"power_on": true|false}')
            self.advance()
            try:
                power_on = self.house.manual_switch(dev.name, want)
            except SwitchLockedError as err:
                return bad(str(err), 409)
            self.save_relays()
            return _json({"device": dev.name, "power_on": power_on})

        async def market_fault(request: web.Request) -> web.Response:
            ok, body = await _body(request)
            down = body.get("down") if isinstance(body, dict) else None
            if not ok or not isinstance(down, bool):
                return bad('expected {"down": true|false}')
            self.market_down = down
            return _json({"market_down": down})

        async def power_cut(request: web.Request) -> web.Response:
            ok, body = await _body(request)
            duration = body.get("duration_s") if isinstance(body, dict) else None
            relays = body.get("relays", "previous") if isinstance(body, dict) else None
            if (
                not ok
                or isinstance(duration, bool)
                or not isinstance(duration, int | float)
                or relays not in RELAYS_AFTER_CUT
            ):
                return bad('expected {"duration_s": S, "relays"?: "previous"|"on"|"off"}')
            try:
                until = await self.power_cut(float(duration), relays)
            except SimulatorError as err:
                return bad(str(err))
            return _json({"power_cut_until": until.isoformat(), "relays": relays})

        app.router.add_get("/control/state", state)
        app.router.add_post("/control/power_cut", power_cut)
        app.router.add_post("/control/market", market_fault)
        app.router.add_get("/control/events", events)
        app.router.add_post("/control/faults", faults)
        app.router.add_post("/control/button/{device}", button)
        app.router.add_post("/control/socket/{device}/manual", manual)
        return app
