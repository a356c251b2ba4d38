"""Tokens and the broker password never show: not in reprs, errors, exception chains or logs.

The secrets: a battery's API v2 token and the P1 meter's own (`user_info.token`, 32 hex) and
the broker password (`broker.password`). Each test gives them distinctive values and greps
everything a person or a log could see for them (case-insensitively, and for any 12
characters of them, so a cut-off echo counts too): str() and repr() of the settings and
device objects, every `ConfigError` (its whole exception chain, `__cause__` and `__context__`
included, suppressed or not, and the traceback as `traceback.format_exception` prints it),
the HomeWizard v2 client's errors and log records when a device answers 401/403/500/garbage
or echoes the token back, times out or is gone (a scripted transport, and the simulated house
over real HTTPS through the poller), and the output of `hwsched check-config` and
`hwsched pair`.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.cli import main as cli_main
from services.forecaster.settings import load_forecast_settings
from services.poller.poller import Poller, PollerOptions, default_client_factory
from services.simulator.server import DEVICES_FILE, Simulator
from services.simulator.settings import SimulatorSettings
from shared.clock import ManualClock, SystemClock
from shared.config import ConfigError, DevicesConfig, load_devices, load_settings
from shared.homewizard import HomeWizardError, V2Client
from shared.messages import Availability, Message, dump_availability, dump_message
from shared.service import Counters
from shared.topics import Topics

TOKEN = "5ec7e7c0ffee5ec7e7c0ffee5ec7e7aa"  # the battery's
P1_TOKEN = "0badc0de1ce0badc0de1ce0badc0de1c"  # the P1 meter's own
PASSWORD = "Pa55-w0rd-never-shown-7f3a"
SECRETS = (TOKEN, P1_TOKEN, PASSWORD)
WINDOW = 12

DEVICES: dict[str, Any] = {
    "devices": [
        {
            "device_name": "P1 meter",
            "device_type": "HWE-P1",
            "ip_address": "192.0.2.10",
            "user_info": {"name": "local/hwsched", "token": P1_TOKEN},
        },
        {
            "device_name": "Boiler",
            "device_type": "HWE-SKT",
            "ip_address": "192.0.2.11",
            "max_power_usage": 2000,
            "energy_capacity": 6000,
            "daily_need": True,
        },
        {
            "device_name": "Battery",
            "device_type": "HWE-BAT",
            "ip_address": "192.0.2.14",
            "max_power_usage": 800,
            "energy_capacity": 2700,
            "user_info": {"name": "local/hwsched", "token": TOKEN},
        },
    ]
}


# --- looking for the secrets --------------------------------------------------------------------


def _pieces(secret: str) -> set[str]:
    return {secret[i : i + WINDOW].lower() for i in range(len(secret) - WINDOW + 1)}


PIECES = {piece: secret for secret in SECRETS for piece in _pieces(secret)}


def leaks(text: str) -> list[str]:
    """The secrets (or any 12 characters of one) in `text`, in any case."""
    lower = text.lower()
    return sorted({PIECES[p] for p in PIECES if p in lower})


def assert_hidden(*texts: str) -> None:
    for text in texts:
        found = leaks(text)
        assert not found, f"secret {found} in: {text[:300]!r}"


def chain(err: BaseException) -> list[BaseException]:
    """`err` and every exception behind it (`__cause__`, `__context__`, suppressed too)."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]
    return seen


def exception_texts(err: BaseException) -> list[str]:
    """All an exception can show: each in its chain (str, repr, args, attributes) and the
    printed traceback, chained as Python prints it."""
    texts = ["".join(traceback.format_exception(err))]
    for e in chain(err):
        texts += [str(e), repr(e), repr(e.args), repr(getattr(e, "__dict__", {}))]
        texts.append("".join(traceback.format_exception_only(type(e), e)))
    return texts


def assert_error_hidden(err: BaseException) -> None:
    assert_hidden(*exception_texts(err))


def log_texts(records: list[logging.LogRecord]) -> list[str]:
    """What the records print (formatted, with exceptions), the simulator's own left out."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return [
        formatter.format(r) + repr(r.args)
        for r in records
        if not r.name.startswith(("hwsched.simulator", "aiohttp"))
    ]


# --- settings and devices objects ---------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.upper().startswith("HWSCHED_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def write_devices(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "config_devices.json"
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_settings(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_reprs_and_dumps_of_settings_and_devices(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    devices = load_devices(write_devices(tmp_path, DEVICES))
    from_file = load_settings(
        write_settings(tmp_path, f'[broker]\nusername = "me"\npassword = "{PASSWORD}"\n')
    )
    clean_env.setenv("HWSCHED_BROKER__PASSWORD", PASSWORD)
    from_env = load_settings()
    assert devices.batteries[0].user_info.token.get_secret_value() == TOKEN
    assert devices.p1.user_info is not None
    assert devices.p1.user_info.token.get_secret_value() == P1_TOKEN
    for settings in (from_file, from_env):
        assert settings.broker.password is not None
        assert settings.broker.password.get_secret_value() == PASSWORD
    objects: list[Any] = [
        devices,
        *devices.devices,
        devices.p1.user_info,
        devices.batteries[0].user_info,
        devices.batteries[0].user_info.token,
        from_file,
        from_file.broker,
        from_file.broker.password,
        from_env,
    ]
    texts = []
    for obj in objects:
        texts += [str(obj), repr(obj), f"{obj}", f"{obj!r}"]
        if hasattr(obj, "model_dump"):
            texts += [
                str(obj.model_dump()),
                json.dumps(obj.model_dump(mode="json")),
                obj.model_dump_json(),
            ]
    assert_hidden(*texts)


# --- configuration errors -----------------------------------------------------------------------


def device_case(mutate: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    data = copy.deepcopy(DEVICES)
    mutate(data)
    return data


def user_info(i: int, value: object) -> Callable[[dict[str, Any]], object]:
    return lambda d: d["devices"][i].__setitem__("user_info", value)


def bad_token(i: int, value: object) -> Callable[[dict[str, Any]], object]:
    return user_info(i, {"name": "local/hwsched", "token": value})


DEVICE_ERRORS: dict[str, object] = {
    "token-one-short": device_case(bad_token(2, TOKEN[:-1])),
    "token-one-long": device_case(bad_token(2, TOKEN + "a")),
    "token-not-hex": device_case(bad_token(2, TOKEN[:-1] + "g")),
    "token-with-spaces": device_case(bad_token(2, f" {TOKEN} ")),
    "token-in-a-list": device_case(bad_token(2, [TOKEN])),
    "token-in-an-object": device_case(bad_token(2, {"value": TOKEN})),
    "user-info-the-bare-token": device_case(user_info(2, TOKEN)),
    "user-info-a-list": device_case(user_info(2, [TOKEN, "local/hwsched"])),
    "p1-token-bad": device_case(bad_token(0, P1_TOKEN + "0")),
    "p1-user-info-the-bare-token": device_case(user_info(0, P1_TOKEN)),
    "user-name-bad-next-to-the-token": device_case(
        lambda d: d["devices"][2]["user_info"].__setitem__("name", "")
    ),
    "other-field-of-the-battery": device_case(
        lambda d: d["devices"][2].__setitem__("max_power_usage", -1)
    ),
    "unknown-type-of-the-battery": device_case(
        lambda d: d["devices"][2].__setitem__("device_type", "HWE-BATT")
    ),
    "invalid-json-after-the-tokens": json.dumps(DEVICES).encode()[:-3],
    "not-utf8-with-the-tokens": json.dumps(DEVICES).encode() + b"\xff",
    "not-an-object": json.dumps([DEVICES]).encode(),
}


@pytest.mark.parametrize("data", DEVICE_ERRORS.values(), ids=DEVICE_ERRORS.keys())
def test_devices_file_errors_never_show_a_token(
    data: object, clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        load_devices(write_devices(tmp_path, data))
    assert_error_hidden(info.value)


SETTINGS_ERRORS: dict[str, tuple[str, dict[str, str]]] = {
    "password-a-number-next-to-it": ("[broker]\npassword = 1234\n", {}),
    "password-in-a-list": (f'[broker]\npassword = ["{PASSWORD}"]\n', {}),
    "password-in-a-table": (f'[broker]\npassword = {{ value = "{PASSWORD}" }}\n', {}),
    "password-and-a-bad-port": (f'[broker]\npassword = "{PASSWORD}"\nport = 0\n', {}),
    "password-and-an-unknown-key": (f'[broker]\npassword = "{PASSWORD}"\nhostt = "x"\n', {}),
    "password-outside-the-broker-table": (f'password = "{PASSWORD}"\n', {}),
    "password-as-the-broker-table": (f'broker = "{PASSWORD}"\n', {}),
    "password-and-invalid-toml": (f'[broker]\npassword = "{PASSWORD}\n', {}),
    "password-env-and-a-bad-port": (
        "",
        {"HWSCHED_BROKER__PASSWORD": PASSWORD, "HWSCHED_BROKER__PORT": "99999"},
    ),
    "password-env-json-and-a-bad-port": (
        "",
        {"HWSCHED_BROKER": json.dumps({"password": PASSWORD, "port": "x"})},
    ),
    "password-env-json-list": ("", {"HWSCHED_BROKER": json.dumps({"password": [PASSWORD]})}),
    "password-env-invalid-json": ("", {"HWSCHED_BROKER": '{"password": "' + PASSWORD + '", '}),
    "password-env-below-the-field": ("", {"HWSCHED_BROKER__PASSWORD__X": PASSWORD}),
    "password-env-misspelt": ("", {"HWSCHED_BROKER__PASWORD": PASSWORD}),
    "password-env-top-level": ("", {"HWSCHED_PASSWORD": PASSWORD}),
}


@pytest.mark.parametrize(("text", "env"), SETTINGS_ERRORS.values(), ids=SETTINGS_ERRORS.keys())
def test_settings_errors_never_show_the_password(
    text: str, env: dict[str, str], clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings(write_settings(tmp_path, text))
    assert_error_hidden(info.value)


@pytest.mark.parametrize(
    "url",
    [
        f"https://me:{PASSWORD}@weather.local",
        f"https://{PASSWORD}@weather.local/v1",
        f"ftp://me:{PASSWORD}@weather.local",
        f"https://me:{PASSWORD}@weather.local:99999",
    ],
)
def test_the_forecasters_weather_url_credentials_never_shown(
    url: str, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("HWSCHED_FORECAST__WEATHER_URL", url)
    with pytest.raises(ConfigError) as info:
        load_forecast_settings()
    assert str(info.value).startswith("environment variable HWSCHED_FORECAST__WEATHER_URL: ")
    assert_error_hidden(info.value)


# --- the HomeWizard v2 client, scripted ---------------------------------------------------------

API = {
    "product_name": "Plug-In Battery",
    "product_type": "HWE-BAT",
    "serial": "5c2fafabcdef",
    "firmware_version": "1.00",
    "api_version": "2.0.0",
}
Reply = Callable[[httpx.Request, str], httpx.Response]


def status(code: int, body: object) -> Reply:
    def reply(request: httpx.Request, token: str) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.Response(code, content=content.replace(b"{token}", token.encode()))

    return reply


def after_api(then: Reply) -> Reply:
    """`GET /api` answers well; every other request as `then`."""

    def reply(request: httpx.Request, token: str) -> httpx.Response:
        if request.url.path == "/api":
            return httpx.Response(200, json=API)
        return then(request, token)

    return reply


def raises(kind: type[httpx.RequestError], echo: bool = False) -> Reply:
    def reply(request: httpx.Request, token: str) -> httpx.Response:
        text = f"failed for {request.headers['Authorization']}" if echo else "failed"
        raise kind(text, request=request)

    return reply


SCRIPTS: dict[str, Reply] = {
    "401": status(401, {"error": "user:unauthorized"}),
    "401-echo": status(401, {"error": "user:unauthorized", "token": "{token}"}),
    "403-echo-code": status(403, {"error": "user:{token}"}),
    "403-html": status(403, b"<html>forbidden {token}</html>"),
    "500": status(500, {"error": "server:internal"}),
    "500-echo-body": status(500, b"internal error for Bearer {token}"),
    "500-echo-code": status(500, {"error": "server:{token}"}),
    "garbage": status(200, b"\xff\xfe{token}\x00"),
    "truncated": status(200, b'{"power_w": "{token}", "x'),
    "echo-in-api-field": status(200, {**API, "api_version": ["{token}"]}),
    "echo-in-api-type": status(200, {**API, "product_type": "{token}"}),
    "echo-in-serial": status(200, {**API, "serial": "{token}"}),
    "echo-in-measurement": after_api(status(200, {"power_w": "{token}"})),
    "echo-upper-case": after_api(status(200, {"power_w": "{TOKEN}"})),
    "echo-in-batteries": after_api(status(200, {"mode": "zero", "permissions": "{token}"})),
    "read-timeout": raises(httpx.ReadTimeout),
    "connect-timeout": raises(httpx.ConnectTimeout),
    "connect-error-echo": raises(httpx.ConnectError, echo=True),
    "protocol-error-echo": raises(httpx.RemoteProtocolError, echo=True),
    "read-error-echo": raises(httpx.ReadError, echo=True),
}


@pytest.mark.parametrize("token", [TOKEN, P1_TOKEN], ids=["battery", "p1"])
@pytest.mark.parametrize("script", SCRIPTS.values(), ids=SCRIPTS.keys())
async def test_v2_client_errors_and_logs_never_show_the_token(
    script: Reply, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == f"Bearer {token}"  # it is sent
        reply = script(request, token)
        body = reply.content.replace(b"{TOKEN}", token.upper().encode())
        return httpx.Response(reply.status_code, content=body)

    errors: list[HomeWizardError] = []
    client = V2Client(
        "192.0.2.14",
        token,
        transport=httpx.MockTransport(handler),
        retries=1,
        backoff_s=0,
        timeout_s=0.5,
    )
    calls: list[Callable[[], Awaitable[object]]] = [
        client.device_info,
        client.measurement,
        client.batteries,
        lambda: client.set_batteries(mode="zero"),
    ]
    async with client:
        for call in calls:
            try:
                await call()
            except HomeWizardError as err:
                errors.append(err)
        texts = [repr(client), str(client)]
    assert errors, "the script made no call fail"
    for error in errors:
        assert_error_hidden(error)
    assert_hidden(*texts, *log_texts(caplog.records))


# --- the simulated house over HTTPS: the poller's logs and messages -----------------------------

NOON = datetime(2024, 6, 21, 10, 0, tzinfo=UTC)


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    clock = ManualClock(NOON)
    house = DevicesConfig.model_validate(DEVICES)
    settings = SimulatorSettings(seed=3, cloudiness=0.0, pairing_window_s=30)
    async with Simulator(
        house, clock=clock, settings=settings, state_dir=tmp_path / "sim"
    ) as simulator:
        clock.advance(60)
        yield simulator


def sim_devices(sim: Simulator) -> DevicesConfig:
    assert sim.state_dir is not None
    return load_devices(sim.state_dir / DEVICES_FILE)


async def control(sim: Simulator, path: str, body: object = None) -> Any:
    async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
        reply = await client.post(f"{sim.control_url}{path}", json=body)
    assert reply.status_code == 200, reply.text
    return reply.json()


@dataclass
class Recorder:
    """Stands in for the MQTT runtime: what the poller would publish."""

    published: list[tuple[str, bytes]] = field(default_factory=list)

    def publish(self, topic: str, payload: Message | Availability) -> None:
        data = dump_availability(payload) if isinstance(payload, str) else dump_message(payload)
        self.published.append((topic, data))


async def wait_until(condition: Callable[[], bool], what: str, within_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"not seen: {what}"
        await asyncio.sleep(0.02)


#: Fault → the failure kind the poller counts for it.
FAULTS = [
    ({"wrong_token": True}, "unauthorized"),
    ({"http_500": True}, "invalid_response"),
    ({"garbage": True}, "invalid_response"),
    ({"truncated": True}, "invalid_response"),
    ({"missing_fields": True}, "invalid_reading"),
    ({"timeout": True}, "timeout"),
    ({"gone": True}, "unreachable"),
]


def polled_ok(counters: Counters, at_least: int) -> bool:
    return counters["polls_ok"] >= at_least


def failed_more(counters: Counters, kind: str, before: int) -> bool:
    return counters[f"polls_failed_{kind}"] > before


async def test_the_poller_through_every_battery_fault_never_logs_the_token(
    sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    devices = sim_devices(sim)
    assert devices.batteries[0].user_info.token.get_secret_value() == TOKEN
    options = PollerOptions(interval_s=0.2, timeout_s=1.0, max_backoff_s=0.4, log_every_s=0.0)
    counters = Counters()
    recorder = Recorder()
    poller = Poller(
        devices,
        recorder,
        topics=Topics("secrets"),
        counters=counters,
        clock=SystemClock(),
        client_factory=default_client_factory(options, ca_file=sim.ca_path),
        options=options,
        log=logging.getLogger("hwsched.poller"),
    )
    task = asyncio.create_task(poller.run())
    try:
        await wait_until(partial(polled_ok, counters, 3), "good polls")
        for fault, kind in FAULTS:
            before = counters[f"polls_failed_{kind}"]
            await control(sim, "/faults", {"device": "Battery", **fault})
            await wait_until(partial(failed_more, counters, kind, before), kind)
            await control(sim, "/faults", {"device": "Battery", "clear": True})
            await wait_until(partial(polled_ok, counters, counters["polls_ok"] + 2), "good polls")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    failures = [
        r for r in caplog.records if r.name == "hwsched.poller" and "Battery" in r.getMessage()
    ]
    assert len(failures) >= len(FAULTS)  # the failures were logged ...
    assert_hidden(*log_texts(caplog.records))  # ... without the token
    assert_hidden(*(data.decode("utf-8", "replace") for _, data in recorder.published))
    assert_hidden(json.dumps(counters.snapshot()))


# --- the command line -----------------------------------------------------------------------


def test_check_config_never_prints_a_secret(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    devices = write_devices(tmp_path, DEVICES)
    settings = write_settings(
        tmp_path,
        f'devices_file = "{devices}"\n[broker]\nusername = "me"\npassword = "{PASSWORD}"\n',
    )
    assert cli_main(["check-config", "--settings", str(settings)]) == 0
    clean_env.setenv("HWSCHED_BROKER__PASSWORD", PASSWORD)
    clean_env.setenv("HWSCHED_DEVICES_FILE", str(devices))
    assert cli_main(["check-config"]) == 0
    out, err = capsys.readouterr()
    assert "battery 'Battery'" in out
    assert_hidden(out, err)
    # refused: one line, still without them
    for data in DEVICE_ERRORS.values():
        write_devices(tmp_path, data)
        assert cli_main(["check-config"]) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err.count("\n") == 1
        assert_hidden(err)


@pytest.fixture
def sim_env(clean_env: pytest.MonkeyPatch, sim: Simulator) -> Path:
    """The services' settings point at the simulator's devices file (holding the tokens)."""
    assert sim.state_dir is not None
    clean_env.setenv("HWSCHED_DEVICES_FILE", str(sim.state_dir / DEVICES_FILE))
    clean_env.setenv("HWSCHED_BROKER__PASSWORD", PASSWORD)
    return sim.state_dir / DEVICES_FILE


async def test_pair_prints_only_the_new_token_and_only_on_stdout(
    sim: Simulator,
    sim_env: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    battery = sim_devices(sim).batteries[0]
    port = battery.v2_port or battery.port
    argv = ["pair", "127.0.0.1", "--port", str(port), "--ca-file", str(sim.ca_path)]

    # `hwsched ...` runs its own event loop: in a thread, the simulator serving on ours
    # paired: the new token on stdout (twice: the line and the snippet), nowhere else
    await control(sim, "/button/battery")
    code = await asyncio.to_thread(cli_main, [*argv, "--timeout", "5"])
    out, err = capsys.readouterr()
    assert code == 0, err
    new = next(w for w in out.split() if len(w) == 32 and w.isalnum())
    assert new.lower() not in (TOKEN, P1_TOKEN)
    assert out.count(new) == 2
    assert new not in err
    assert "Press the button" not in out
    assert_hidden(out, err, *log_texts(caplog.records))
    assert all(new not in t for t in log_texts(caplog.records))

    # paired, but the new token is then refused: a warning on stderr, without it
    await control(sim, "/faults", {"device": "Battery", "wrong_token": True})
    await control(sim, "/button/battery")
    code = await asyncio.to_thread(cli_main, [*argv, "--timeout", "5"])
    out, err = capsys.readouterr()
    assert code == 0, err
    second = next(w for w in out.split() if len(w) == 32 and w.isalnum())
    assert "could not be tried" in err
    assert second not in err
    assert_hidden(out, err)
    await control(sim, "/faults", {"device": "Battery", "clear": True})

    # pairing fails: one line, no token of any kind
    await control(sim, "/faults", {"device": "Battery", "http_500": True})
    await control(sim, "/button/battery")
    code = await asyncio.to_thread(cli_main, [*argv, "--timeout", "2"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert [line for line in err.splitlines() if line.startswith("hwsched pair:")]
    assert_hidden(out, err, *log_texts(caplog.records))
