"""`hwsched run` / `make run`: the whole product on this machine, without Docker.

Starts, as separate processes running their real code:
- a broker on a free port of 127.0.0.1 (never the shared 1883): the local `mosquitto` when
  it is installed, else an embedded Python broker (amqtt, `python -m services.stack
  --port N`); `$HWSCHED_RUN_BROKER` (or `main(broker=...)`) = auto | mosquitto | embedded;
- the simulated house (its devices, its CA, its weather) for the devices file;
- the poller, the prices service (day-ahead prices from the house's own market, EnergyZero-
  shaped unless `HWSCHED_PRICES__SOURCE` says otherwise), the forecaster (quartz's model in
  its own environment, `.venv-forecaster`), the scheduler,
  the actuator, the Home Assistant bridge and the dashboard (on 127.0.0.1:8080, or a free
  port, unless the settings say otherwise; a random password for this run in
  `<run-dir>/dashboard-password` unless one is set), pointed at that broker and that house;
then prints what to watch and how to publish an override, restarts a service that dies (with
back-off), and stops everything cleanly on Ctrl-C (SIGTERM to each, SIGKILL to what is left of
its process group after a grace period).

`<run-dir>/stack.json` says, machine-readably, where everything is: the stack's pid, its
state (starting, running, stopped), the broker (kind, host, port), the base topic, the
simulator's URLs and each child's pid.

Options (`StackOptions`, `hwsched run --speed/--start/--secure/--sim-config`):
- simulated time: the house and every service share one accelerated clock
  (`HWSCHED_SIM_CLOCK__*`, the simulator's `--origin`), so a day runs in minutes and a
  restarted service picks up the same simulated time;
- `secure`: mosquitto with the shipped `mosquitto/mosquitto.conf` (no anonymous clients,
  the ACL rendered from the topic registry, persistence), a random password per service
  user (and `ha`, for watching) kept in `<run-dir>/broker/passwords.env` (mode 0600);
- `HWSCHED_*` variables of the environment reach the services (the stack's own broker,
  devices and clock settings win).

The embedded broker speaks MQTT 3.1.1 (what the services use) with retained messages, QoS
0-2 and wills, without persistence or authentication, like the stack's mosquitto.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, Literal

from shared.messages import MessageError, PlanMessage, parse_message

ROOT = Path(__file__).resolve().parents[1]
FORECASTER_PYTHON = ROOT / ".venv-forecaster" / "bin" / "python"
BROKER_HOST = "127.0.0.1"
#: Which broker `hwsched run` starts: auto (mosquitto if installed, else embedded).
BROKER_ENV = "HWSCHED_RUN_BROKER"
BROKER_CHOICES = ("auto", "mosquitto", "embedded")
STACK_FILE = "stack.json"
#: The services the stack runs, each `python -m services.<name>`, in start order (the
#: forecaster only when its environment, `.venv-forecaster`, is there).
SERVICES = ("poller", "forecaster", "prices", "scheduler", "actuator", "bridge", "dashboard")
BrokerKind = Literal["mosquitto", "embedded"]


class StackError(Exception):
    """Something the stack cannot start without (one line)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def mosquitto_path() -> str | None:
    """The local mosquitto binary, if one is installed."""
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def find_mosquitto() -> str:
    found = mosquitto_path()
    if found is None:
        raise StackError(
            "no mosquitto broker found: install it (Debian/Ubuntu: sudo apt-get install mosquitto)"
        )
    return found


def embedded_broker_available() -> bool:
    return importlib.util.find_spec("amqtt") is not None


@dataclass(frozen=True)
class BrokerPlan:
    """The broker the stack runs: what, how, and the line that says so."""

    kind: BrokerKind
    argv: list[str]
    description: str


def choose_broker(want: str, port: int, run_dir: Path) -> BrokerPlan:
    """The broker for `want` (auto, mosquitto, embedded) on 127.0.0.1:`port`."""
    if want not in BROKER_CHOICES:
        raise StackError(f"broker {want!r}: choose one of {', '.join(BROKER_CHOICES)}")
    mosquitto = mosquitto_path() if want in ("auto", "mosquitto") else None
    if want == "mosquitto" and mosquitto is None:
        find_mosquitto()  # raises, saying how to install it
    if mosquitto is not None:
        conf = run_dir / "mosquitto.conf"
        conf.write_text(
            f"listener {port} {BROKER_HOST}\nallow_anonymous true\npersistence false\n"
            "set_tcp_nodelay true\n"
            "log_dest stdout\nlog_type error\nlog_type warning\n"
        )
        return BrokerPlan("mosquitto", [mosquitto, "-c", str(conf)], f"mosquitto ({mosquitto})")
    if not embedded_broker_available():
        raise StackError(
            "no MQTT broker: install mosquitto (Debian/Ubuntu: sudo apt-get install mosquitto) "
            "or the embedded one (pip install -r requirements/runtime.lock)"
        )
    from importlib.metadata import version

    why = "" if want == "embedded" else ", no mosquitto installed"
    return BrokerPlan(
        "embedded",
        [sys.executable, "-m", "services.stack", "--host", BROKER_HOST, "--port", str(port)],
        f"embedded Python broker (amqtt {version('amqtt')}{why})",
    )


#: The shipped broker configuration (compose's), used as it is by `--secure`.
SHIPPED_BROKER_CONF = ROOT / "mosquitto" / "mosquitto.conf"
#: Users of a secure stack: the services (each its own) and `ha` (read-only, to watch).
SECURE_USERS = (
    "poller",
    "forecaster",
    "scheduler",
    "actuator",
    "bridge",
    "prices",
    "dashboard",
    "ha",
)


def shipped_broker_conf(port: int, auth_dir: Path, data_dir: Path) -> str:
    """The shipped mosquitto.conf on 127.0.0.1:`port`, with these auth and data folders."""
    conf = SHIPPED_BROKER_CONF.read_text()
    if "\nlistener 1883\n" not in conf:
        raise StackError(f"{SHIPPED_BROKER_CONF}: no `listener 1883` line to move")
    conf = conf.replace("\nlistener 1883\n", f"\nlistener {port} {BROKER_HOST}\n")
    return conf.replace("/mosquitto/auth/", f"{auth_dir}/").replace(
        "/mosquitto/data/", f"{data_dir}/"
    )


def _broker_owner() -> tuple[int, int] | None:
    """Who mosquitto runs as once started by root (its own user, else nobody); None: not root."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam("mosquitto")
    except KeyError:
        entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


def secure_broker(
    port: int, run_dir: Path, devices_file: Path
) -> tuple[BrokerPlan, dict[str, str]]:
    """Mosquitto as compose runs it (passwords, ACL, persistence) and each user's password.

    The passwords are new random ones for each run, written (mode 0600) to
    `<run-dir>/broker/passwords.env` as `MQTT_<USER>_PASSWORD=...`.
    """
    import secrets

    sys.path.insert(0, str(ROOT / "mosquitto"))
    from broker_setup import render_acl, render_passwd  # type: ignore[import-not-found]

    from shared.config import ConfigError, load_devices, load_settings

    mosquitto = find_mosquitto()  # the embedded broker has no ACL: refuse rather than pretend
    try:
        settings = load_settings()
        devices = load_devices(devices_file)
    except ConfigError as err:
        raise StackError(str(err)) from None
    users = {user: secrets.token_urlsafe(18) for user in SECURE_USERS}
    auth = run_dir / "broker"
    data = auth / "data"
    shutil.rmtree(data, ignore_errors=True)  # a new run: a new house, no old retained state
    data.mkdir(parents=True, exist_ok=True)
    acl = render_acl(settings.base_topic, settings.ha_discovery_prefix, devices, ha=True)
    for name, text in (
        ("passwd", render_passwd(users)),
        ("acl", acl),
        ("passwords.env", "".join(f"MQTT_{u.upper()}_PASSWORD={pw}\n" for u, pw in users.items())),
    ):
        path = auth / name
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    owner = _broker_owner()
    if owner is not None:  # mosquitto started as root drops to its own user: let it read
        auth.chmod(0o711)
        for path in (auth / "passwd", auth / "acl", data):
            os.chown(path, *owner)
    conf = run_dir / "mosquitto.conf"
    conf.write_text(shipped_broker_conf(port, auth, data))
    plan = BrokerPlan(
        "mosquitto",
        [mosquitto, "-c", str(conf)],
        f"mosquitto ({mosquitto}) with the shipped config: passwords, ACL, persistence",
    )
    return plan, users


def base_topic() -> str:
    """The base topic the services use: config/settings.toml's, else the default (the
    services run in the repository with no HWSCHED_* variable but the stack's own)."""
    path = ROOT / "config" / "settings.toml"
    with contextlib.suppress(OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        value = tomllib.loads(path.read_text()).get("base_topic")
        if isinstance(value, str) and value:
            return value
    return "hwsched"


#: The dashboard's port when neither the environment nor the settings name one.
DASHBOARD_PORT = 8080
DASHBOARD_PASSWORD_FILE = "dashboard-password"


@dataclass(frozen=True)
class DashboardPlan:
    """Where `hwsched run` serves the dashboard, and the variables that say so."""

    url: str
    env: dict[str, str]
    #: The generated password's file (None: the password comes from the settings).
    password_file: Path | None
    note: str = ""


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def plan_dashboard(run_dir: Path, environ: dict[str, str]) -> DashboardPlan:
    """The dashboard of `hwsched run`: host and port from the environment or the settings
    file (default 127.0.0.1:8080; another free port when that one is taken), its history
    in `<run-dir>/dashboard/`, and, when no password is set, a random one for this run in
    `<run-dir>/dashboard-password` (mode 0600)."""
    import secrets

    table: dict[str, Any] = {}
    path = ROOT / "config" / "settings.toml"
    with contextlib.suppress(OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        found = tomllib.loads(path.read_text()).get("dashboard")
        table = found if isinstance(found, dict) else {}
    host = environ.get("HWSCHED_DASHBOARD__HOST") or str(table.get("host", BROKER_HOST))
    env: dict[str, str] = {
        "HWSCHED_DASHBOARD__HOST": host,
        "HWSCHED_DASHBOARD__HISTORY_FILE": str(run_dir / "dashboard" / "history.json"),
    }
    note = ""
    raw_port = environ.get("HWSCHED_DASHBOARD__PORT")
    if raw_port is None:
        port = table.get("port", DASHBOARD_PORT)
        port = port if isinstance(port, int) else DASHBOARD_PORT
        if not _port_free(host, port):
            note = f" (port {port} is taken: another free one)"
            port = free_port()
        env["HWSCHED_DASHBOARD__PORT"] = str(port)
        raw_port = str(port)
    password_file: Path | None = None
    if not environ.get("HWSCHED_DASHBOARD__PASSWORD") and not table.get("password"):
        password = secrets.token_urlsafe(12)
        password_file = run_dir / DASHBOARD_PASSWORD_FILE
        password_file.unlink(missing_ok=True)
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        env["HWSCHED_DASHBOARD__PASSWORD"] = password
    shown = BROKER_HOST if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return DashboardPlan(f"http://{shown}:{raw_port}/", env, password_file, note)


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
    #: Restarts since the stack started (`restarts` is the back-off's count).
    total_restarts: int = 0
    started_at: float = 0.0

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

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def stop(self, grace_s: float = 8.0) -> None:
        """SIGTERM, then SIGKILL after `grace_s`; then SIGKILL to whatever is left of its
        process group (its own children: it was started as a session leader)."""
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
        # Right after the leader's end: while a member lives the group keeps its id (no new
        # process gets that pid), and an empty group is ESRCH.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


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


#: A child that ran this long before it exited is restarted after the shortest delay again
#: (Docker's rule for `restart:` policies: the back-off resets after 10 s of running).
STABLE_AFTER_S = 10.0
#: The back-off: 1 s doubling per quick exit in a row, at most this.
MAX_RESTART_DELAY_S = 60.0


def restart_delay(child: Child, now: float) -> float:
    """How long to wait before restarting `child`, which exited at `now` (monotonic).

    A child that ran `STABLE_AFTER_S` has its back-off count (`child.restarts`) reset here."""
    if now - child.started_at >= STABLE_AFTER_S:
        child.restarts = 0
    return min(MAX_RESTART_DELAY_S, 2.0 ** min(child.restarts, 6))


async def supervise(
    children: list[Child], stop: asyncio.Event, changed: Callable[[], None] = lambda: None
) -> None:
    """Restart a child that exits, with back-off (1 s doubling to 60 s; back to 1 s after it
    ran 10 s). Each child waits out its own back-off: one in a long one holds no other back."""
    due: dict[str, float] = {}  # child name -> when (monotonic) to restart it
    while not stop.is_set():
        now = time.monotonic()
        for c in children:
            if not c.restart:
                continue
            if c.proc is not None and c.proc.returncode is not None:
                delay = restart_delay(c, now)
                print(
                    f"[stack] {c.name} exited ({c.proc.returncode}); restarting in {delay:.0f} s"
                    f" (log: {c.log})",
                    flush=True,
                )
                c.restarts += 1
                c.total_restarts += 1
                c.proc = None  # no pid while it waits
                due[c.name] = now + delay
                changed()
            elif c.name in due and now >= due[c.name]:
                del due[c.name]
                await c.start()
                changed()
        waits = [at - time.monotonic() for at in due.values()]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.01, min([0.5, *waits])))


def _prices_source_chosen() -> bool:
    """Whether the settings file names a price source (else the stack shows dynamic prices)."""
    from shared.config import ConfigError, load_settings

    try:
        return "source" in load_settings().prices.model_fields_set
    except ConfigError:
        return False  # the services will say what is wrong


def _status_command(run_dir: Path) -> str:
    """How to type `hwsched status` for this run: `make status` in the repository (no venv
    to activate), else the venv's own `hwsched`."""
    if run_dir == Path("run") and Path.cwd() == ROOT:
        return "make status   (make watch: live; or hwsched status --run-dir run in a venv)"
    return f"{_hwsched()} status --run-dir {run_dir}   (--watch: live)"


def _hwsched() -> str:
    """The venv's own `hwsched` (typeable without activating the venv)."""
    hwsched = Path(sys.executable).parent / "hwsched"
    return str(hwsched) if hwsched.exists() else "hwsched"


def _print_guide(
    base: str, port: int, sim: dict[str, Any], run_dir: Path, dashboard: DashboardPlan | None
) -> None:
    devices = sim.get("devices")
    sockets = [
        slug
        for slug, d in (devices.items() if isinstance(devices, dict) else [])
        if isinstance(d, dict) and d.get("product_type") == "HWE-SKT"
    ]
    example = sockets[0] if sockets else "kitchen_boiler"
    sub = f"mosquitto_sub -h 127.0.0.1 -p {port} -v"
    if run_dir == Path("run") and Path.cwd() == ROOT:
        override_on = f"make override SOCKET={example} STATE=on FOR=30m"
        override_auto = f"make override SOCKET={example} STATE=auto"
    else:
        override_on = f"{_hwsched()} override {example} on --for 30m --run-dir {run_dir}"
        override_auto = f"{_hwsched()} override {example} auto --run-dir {run_dir}"
    page = ""
    if dashboard is not None:
        login = (
            f"password in {dashboard.password_file}"
            if dashboard.password_file is not None
            else "the password of your settings"
        )
        page = (
            f"The dashboard:        {dashboard.url}   (buttons: {login}){dashboard.note}\n"
            f"The state, in short:  {_status_command(run_dir)}\n"
        )
    print(
        f"""
hwsched is running on the simulated house.  Logs: {run_dir}/*.log   Stop: Ctrl-C
Where everything is (JSON): {run_dir / STACK_FILE}

{page}
Watch everything:      {sub} -t '{base}/#'
The plan:              {sub} -t '{base}/plan'
The house surplus:     {sub} -t '{base}/surplus'
Prices, money today:   {sub} -t '{base}/prices' -t '{base}/cost'
Socket states:         {sub} -t '{base}/+' -t '{base}/+/override'
Override a socket:     {override_on}
                       (= mosquitto_pub -h 127.0.0.1 -p {port} -t '{base}/{example}/override/set' \\
                          -m '{{"state": "on", "duration_s": 1800}}')
Give it back:          {override_auto}
The simulated house:   curl -s {sim.get("control_url", "")}/state
""",
        flush=True,
    )
    if shutil.which("mosquitto_sub") is None:
        amqtt = Path(sys.executable).parent / "amqtt_sub"
        print(
            "(no mosquitto_sub here: apt-get install mosquitto-clients"
            + (f", or: {amqtt} --url mqtt://127.0.0.1:{port} -t TOPIC" if amqtt.exists() else "")
            + ")\n",
            flush=True,
        )


# --- a line per new plan on the console ----------------------------------------------------

#: A window of a socket's plan: (socket, first on-step's start, end), aware times.
Window = tuple[str, datetime, datetime]


def plan_windows(plan: PlanMessage) -> list[Window]:
    """The plan's on-windows per socket, in the plan's order of sockets, then time."""
    step = timedelta(seconds=plan.step_s)
    out: list[Window] = []
    for name, row in plan.sockets.items():
        began: int | None = None
        for t, on in enumerate([*row.states, 0]):
            if on and began is None:
                began = t
            elif not on and began is not None:
                out.append((name, plan.start + began * step, plan.start + t * step))
                began = None
    return out


def _from(windows: Sequence[Window], start: datetime) -> list[Window]:
    """The windows as they stand from `start` on (an earlier one clipped, a past one gone)."""
    return sorted((n, max(a, start), b) for n, a, b in windows if b > start)


def _same_windows(old: Sequence[Window], new: Sequence[Window], within: timedelta) -> bool:
    """The same on-times, each bound within `within` (a plan whose steps start at the
    moment of planning slides by that moment at every re-plan)."""
    return len(old) == len(new) and all(
        n1 == n2 and abs(a1 - a2) < within and abs(b1 - b2) < within
        for (n1, a1, b1), (n2, a2, b2) in zip(old, new, strict=True)
    )


def plan_changed(old: PlanMessage | None, new: PlanMessage) -> bool:
    """Whether `new` plans other on-times than `old` from `new`'s start on, or leaves other
    sockets out (a re-plan that keeps who runs when is not news, whichever planner made it:
    the expected figures move a little at every one)."""
    if old is None:
        return True
    half_step = timedelta(seconds=min(old.step_s, new.step_s) / 2)
    old_w, new_w = _from(plan_windows(old), new.start), _from(plan_windows(new), new.start)
    return (
        not _same_windows(old_w, new_w, half_step)
        or set(old.sockets) != set(new.sockets)
        or old.excluded != new.excluded
    )


def plan_summary(plan: PlanMessage, tz: tzinfo) -> str:
    """One line for people: who runs when (local times), the expected import and cost."""

    def hm(when: datetime) -> str:
        return when.astimezone(tz).strftime("%H:%M")

    windows = plan_windows(plan)
    parts = []
    for name in plan.sockets:
        mine = [(a, b) for n, a, b in windows if n == name]
        if not mine:
            parts.append(f"{name} off")
            continue
        shown = ", ".join(f"{'now' if a <= plan.start else hm(a)}–{hm(b)}" for a, b in mine[:3])
        more = f" +{len(mine) - 3} more" if len(mine) > 3 else ""
        parts.append(f"{name} {shown}{more}")
    parts += [f"{name} left out (override/manual)" for name in plan.excluded]
    figures = []
    if plan.expected_import_wh is not None:
        figures.append(f"expected import {plan.expected_import_wh / 1000:.2f} kWh")
    if plan.expected_cost_eur is not None:
        figures.append(f"cost {plan.expected_cost_eur:.2f} EUR")
    why = f" [{plan.fallback_reason}]" if plan.fallback_reason else ""
    line = f"[plan] {hm(plan.made_at)} {plan.planner}{why}: " + ("; ".join(parts) or "no sockets")
    return line + (f"; {', '.join(figures)}" if figures else "")


async def watch_plans(
    connect: Callable[[], Any],
    topic: str,
    tz: tzinfo,
    out: Callable[[str], None],
    retry_s: float = 2.0,
) -> None:
    """Print `plan_summary` of each plan on `topic` that `plan_changed`, until cancelled;
    reconnects (the broker may restart). `connect()` gives an aiomqtt client."""
    import aiomqtt

    last: PlanMessage | None = None
    while True:
        try:
            async with connect() as client:
                await client.subscribe(topic, qos=1)
                async for message in client.messages:
                    if not isinstance(message.payload, bytes | bytearray):
                        continue
                    try:
                        plan = parse_message(PlanMessage, bytes(message.payload))
                    except MessageError:
                        continue  # the scheduler counts and logs its own; not the console's
                    if last is not None and plan.made_at <= last.made_at:
                        continue
                    if plan_changed(last, plan):
                        out(plan_summary(plan, tz))
                    last = plan
        except aiomqtt.MqttError:
            await asyncio.sleep(retry_s)


def _watcher(port: int, password: str | None) -> Callable[[], Any]:
    """The stack's own client of its broker (as `ha`, read-only, on a secure stack)."""

    def connect() -> Any:
        import aiomqtt

        return aiomqtt.Client(
            BROKER_HOST,
            port,
            username="ha" if password is not None else None,
            password=password,
            identifier=f"hwsched-stack-{os.getpid()}",
        )

    return connect


def _local_tz() -> tzinfo:
    """The settings' time zone (where the house is), else the host's."""
    from shared.config import ConfigError, load_settings

    try:
        return load_settings().tz
    except ConfigError:
        return datetime.now().astimezone().tzinfo or UTC


def prepare(devices_file: Path, run_dir: Path) -> int:
    """Check what the stack needs, clear old logs and state: the broker's port."""
    if not devices_file.exists():
        raise StackError(f"{devices_file}: no such file")
    run_dir.mkdir(parents=True, exist_ok=True)
    stale = [*run_dir.glob("*.log"), run_dir / "sim" / "simulator.json", run_dir / STACK_FILE]
    for old in stale:
        old.unlink(missing_ok=True)
    return free_port()


@dataclass(frozen=True)
class StackOptions:
    """How `hwsched run` runs (defaults: real time, an open local broker)."""

    #: Simulated seconds per real second (None: real time, unless `start` is given).
    speed: float | None = None
    #: Simulated start (aware), None: now.
    start: datetime | None = None
    #: Mosquitto as compose runs it: passwords, the ACL, persistence.
    secure: bool = False
    #: The simulator's own settings file (seed, clouds, stores, draws, faults).
    sim_config: Path | None = None

    @property
    def simulated(self) -> bool:
        return self.speed is not None or self.start is not None


@dataclass
class StackState:
    """`<run-dir>/stack.json`: rewritten (atomically) whenever something changes."""

    path: Path
    broker: BrokerPlan
    port: int
    base: str
    children: list[Child] = field(default_factory=list)
    sim: dict[str, Any] = field(default_factory=dict)
    state: str = "starting"
    #: The shared simulated clock (speed, start, origin), None: real time.
    clock: dict[str, Any] | None = None
    #: The dashboard's URL and its password file (None before it is planned).
    dashboard: dict[str, str | None] | None = None

    def save(self) -> None:
        data = {
            "pid": os.getpid(),
            "state": self.state,
            "broker": {"kind": self.broker.kind, "host": BROKER_HOST, "port": self.port},
            "base_topic": self.base,
            "simulator": {
                key: self.sim.get(key) for key in ("control_url", "weather_url", "devices_file")
            },
            "children": {c.name: c.pid for c in self.children if c.pid is not None},
            "restarts": {c.name: c.total_restarts for c in self.children},
            "clock": self.clock,
            "logs": str(self.path.parent),
            "dashboard": self.dashboard,
        }
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.path)


async def run_stack(
    devices_file: Path,
    run_dir: Path,
    broker_choice: str = "auto",
    options: StackOptions | None = None,
) -> int:
    opts = options if options is not None else StackOptions()
    port = prepare(devices_file, run_dir)
    users: dict[str, str] = {}
    if opts.secure:
        if broker_choice == "embedded":
            raise StackError("--secure needs mosquitto: the embedded broker has no ACL")
        plan, users = secure_broker(port, run_dir, devices_file)
    else:
        plan = choose_broker(broker_choice, port, run_dir)
    # The stack's own settings; other HWSCHED_* variables of the environment reach the services.
    own = (BROKER_ENV, "HWSCHED_BROKER__", "HWSCHED_DEVICES_FILE", "HWSCHED_DEVICE_CA_FILE")
    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(own) and not k.startswith("HWSCHED_SIM_CLOCK__")
    }
    clock_env: dict[str, str] = {}
    sim_clock_args: list[str] = []
    clock: dict[str, Any] | None = None
    if opts.simulated:
        speed = opts.speed if opts.speed is not None else 1.0
        start = opts.start if opts.start is not None else datetime.now(UTC)
        origin = time.time()
        clock = {"speed": speed, "start": start.isoformat(), "origin": origin}
        clock_env = {
            "HWSCHED_SIM_CLOCK__SPEED": repr(speed),
            "HWSCHED_SIM_CLOCK__START": start.isoformat(),
            "HWSCHED_SIM_CLOCK__ORIGIN": repr(origin),
        }
        sim_clock_args = ["--speed", repr(speed), "--start", start.isoformat()]
        sim_clock_args += ["--origin", repr(origin)]
    broker = Child("broker", plan.argv, base_env, run_dir / "broker.log")
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
        *sim_clock_args,
        *(["--sim-config", str(opts.sim_config)] if opts.sim_config is not None else []),
    ]
    simulator = Child("simulator", sim_argv, base_env, run_dir / "simulator.log", restart=False)
    children = [broker, simulator]
    state = StackState(run_dir / STACK_FILE, plan, port, base_topic(), children, clock=clock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        print(f"[stack] broker: {plan.description} on {BROKER_HOST}:{port}", flush=True)
        await broker.start()
        await wait_for_port(port, broker, 20)
        await simulator.start()
        state.save()
        await wait_for_file(info_file, simulator, 30)
        sim = json.loads(info_file.read_text())
        state.sim = sim
        env = dict(
            base_env,
            HWSCHED_BROKER__HOST=BROKER_HOST,
            HWSCHED_BROKER__PORT=str(port),
            HWSCHED_DEVICES_FILE=str(sim_dir / "devices.sim.json"),
            HWSCHED_DEVICE_CA_FILE=str(sim_dir / "ca.pem"),
            PYTHONUNBUFFERED="1",
            **clock_env,
        )
        weather = sim.get("weather_url")
        if isinstance(weather, str):
            env["HWSCHED_FORECAST__WEATHER_URL"] = weather.rstrip("/")
        # day-ahead prices from the house's own market (its days, offline): EnergyZero-shaped
        # unless the environment names another source (entsoe: the house serves that too)
        for key, var in (("energyzero_url", "ENERGYZERO_URL"), ("entsoe_url", "ENTSOE_URL")):
            if isinstance(sim.get(key), str):
                env[f"HWSCHED_PRICES__{var}"] = sim[key]
        if "HWSCHED_PRICES__SOURCE" not in env and not _prices_source_chosen():
            env["HWSCHED_PRICES__SOURCE"] = "energyzero"
        services = [
            (name, [sys.executable, "-m", f"services.{name}"])
            for name in SERVICES
            if name != "forecaster"
        ]
        dashboard = plan_dashboard(run_dir, base_env)
        state.dashboard = {
            "url": dashboard.url,
            "password_file": str(dashboard.password_file) if dashboard.password_file else None,
        }
        if FORECASTER_PYTHON.exists():
            # The service runs here; quartz's model runs in its island, as a worker process.
            env["HWSCHED_FORECAST__WORKER_PYTHON"] = str(FORECASTER_PYTHON)
            at = SERVICES.index("forecaster")
            services.insert(at, ("forecaster", [sys.executable, "-m", "services.forecaster"]))
        else:
            print(
                "[stack] no forecaster environment (.venv-forecaster): run `make venv-forecaster`"
                " — the scheduler plans on its no-forecast fallback meanwhile",
                flush=True,
            )
        for name, argv in services:
            child_env = dict(env, **dashboard.env) if name == "dashboard" else env
            if users:  # each service as its own broker user
                child_env = dict(
                    child_env, HWSCHED_BROKER__USERNAME=name, HWSCHED_BROKER__PASSWORD=users[name]
                )
            child = Child(name, argv, child_env, run_dir / f"{name}.log")
            await child.start()
            children.append(child)
            print(f"[stack] started {name} (pid {child.pid or '?'})", flush=True)
        state.state = "running"
        state.save()
        _print_guide(state.base, port, sim, run_dir, dashboard)
        supervisor = asyncio.create_task(supervise(children[2:], stop, state.save))
        plans = asyncio.create_task(
            watch_plans(
                _watcher(port, users.get("ha")),
                f"{state.base}/plan",
                _local_tz(),
                lambda line: print(line, flush=True),
            )
        )
        while not stop.is_set():
            if simulator.proc is not None and simulator.proc.returncode is not None:
                raise StackError(f"the simulated house stopped (see {simulator.log})")
            if broker.proc is not None and broker.proc.returncode is not None:
                print("[stack] the broker stopped; restarting it", flush=True)
                broker.total_restarts += 1
                await broker.start()
                state.save()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        for task in (supervisor, plans):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return 0
    finally:
        print("\n[stack] stopping…", flush=True)
        # the services first (their wills and last states reach the broker), the broker last
        for child in reversed(children):
            await child.stop()
        state.state = "stopped"
        with contextlib.suppress(OSError):
            state.save()
        print("[stack] stopped", flush=True)


def main(
    devices_file: Path,
    run_dir: Path,
    broker: str | None = None,
    options: StackOptions | None = None,
) -> int:
    """Run the stack; `broker` (else $HWSCHED_RUN_BROKER, else auto): which broker."""
    choice = broker or os.environ.get(BROKER_ENV) or "auto"
    try:
        return asyncio.run(run_stack(devices_file, run_dir, choice, options))
    except StackError as err:
        print(f"hwsched run: {err}", file=sys.stderr)
        return 2


# --- the embedded broker: `python -m services.stack --port N` ---------------------------------


def embedded_broker_config(host: str, port: int) -> dict[str, Any]:
    """amqtt's configuration: one TCP listener, anonymous clients, no $SYS, no persistence."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        },
    }


def _embedded_broker_class() -> Any:
    """amqtt's Broker, corrected: retained messages go only to a session's own filters.

    amqtt 0.11-0.12 replays, on every CONNECT, the retained messages matching *any* filter
    any client has subscribed (it iterates the broker's whole subscription table), so a new
    client gets retained messages on topics it never subscribed to (MQTT-3.3.1-6 says: to
    new subscriptions that match). The services ignore such messages, but a test or a
    `mosquitto_sub` would see them. Checked by tests/test_stack.py.
    """
    from amqtt.broker import Broker  # type: ignore[import-untyped]

    class CorrectedBroker(Broker):  # type: ignore[misc]
        async def _publish_retained_messages_for_subscription(
            self, subscription: tuple[str, int], session: Any
        ) -> None:
            subscribers = self._subscriptions.get(subscription[0], ())
            if any(s is session for s, _ in subscribers):
                await super()._publish_retained_messages_for_subscription(subscription, session)

    return CorrectedBroker


async def serve_embedded_broker(host: str, port: int, stop: asyncio.Event) -> None:
    """Run the embedded broker on host:port until `stop` is set."""
    broker = _embedded_broker_class()(embedded_broker_config(host, port))
    await broker.start()
    print(f"embedded MQTT broker listening on {host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(broker.shutdown(), 5)
        print("embedded MQTT broker stopped", flush=True)


def embedded_broker_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.stack",
        description="The embedded MQTT broker of `hwsched run` (amqtt): until SIGINT/SIGTERM.",
    )
    parser.add_argument("--host", default=BROKER_HOST, help="listen address (127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="listen port")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve_embedded_broker(args.host, args.port, stop)

    try:
        asyncio.run(run())
    except Exception as err:  # amqtt's BrokerError (port taken...) or an OSError: one line
        print(f"embedded MQTT broker on {args.host}:{args.port}: {err}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(embedded_broker_main())
