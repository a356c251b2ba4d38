"""The dashboard service on a throwaway broker, over HTTP as a browser (or an intruder) would
use it: the page and its headers, the live stream, the login (cookie flags, rate limit), the
CSRF and same-origin checks, the buttons publishing overrides, bad input answered and
counted, the history across a restart; and `hwsched status` against the same broker.
The auth building blocks (password, sessions, limiter, origin) are tested on their own first.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
from pydantic import SecretStr

from services.dashboard.auth import LoginLimiter, PasswordCheck, Sessions, same_origin
from services.dashboard.dashboard import Dashboard, DashboardOptions
from services.dashboard.state import LiveState
from services.dashboard.terminal import gather
from shared.config import BrokerSettings, DashboardSettings, Settings
from shared.messages import (
    OverrideRequest,
    SocketState,
    dump_message,
    parse_message,
)
from shared.service import Service, ServiceOptions
from shared.topics import Topics
from tests.conftest import MqttBroker
from tests.test_dashboard_state import DEVICES, plan

PASSWORD = "correct horse battery"
FAST = ServiceOptions(
    status_interval_s=1.0,
    status_min_interval_s=0.2,
    reconnect_min_s=0.05,
    reconnect_max_s=0.4,
    publish_timeout_s=2.0,
    keepalive_s=5,
)
QUICK = DashboardOptions(save_every_s=0.2, heartbeat_s=0.5, login_per_client=3)


# --- the building blocks ----------------------------------------------------------------------


class Tick:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_password_check() -> None:
    check = PasswordCheck("s3cret-enough!")
    assert check.enabled
    assert check.matches("s3cret-enough!")
    assert not check.matches("s3cret-enough")
    assert not check.matches("")
    assert not check.matches("\udcff")  # a lone surrogate from a browser never breaks it
    off = PasswordCheck(None)
    assert not off.enabled
    assert not off.matches("")


def test_sessions_expire_and_are_bounded() -> None:
    tick = Tick()
    sessions = Sessions(ttl_s=60, monotonic=tick, max_sessions=3)
    first = sessions.create()
    assert sessions.get(first.sid) is first
    assert sessions.get(first.sid + "x") is None
    assert sessions.get("") is None
    assert sessions.get(None) is None
    tick.now += 61
    assert sessions.get(first.sid) is None
    made = [sessions.create() for _ in range(5)]
    assert len(sessions) == 3
    assert sessions.get(made[0].sid) is None  # the oldest went
    assert sessions.get(made[-1].sid) is made[-1]
    sessions.drop(made[-1].sid)
    assert sessions.get(made[-1].sid) is None
    assert len({s.sid for s in made} | {s.csrf for s in made}) == 10


def test_the_login_limiter() -> None:
    tick = Tick()
    limiter = LoginLimiter(per_client=3, overall=5, window_s=100, monotonic=tick)
    for _ in range(3):
        assert limiter.retry_after("a") == 0
        limiter.failed("a")
    assert limiter.retry_after("a") == pytest.approx(100)
    assert limiter.retry_after("b") == 0
    limiter.failed("b")
    limiter.failed("c")
    assert limiter.retry_after("d") == pytest.approx(100)  # five failures from everyone
    tick.now += 50
    assert limiter.retry_after("d") == pytest.approx(50)
    tick.now += 51
    assert limiter.retry_after("a") == 0
    assert limiter.retry_after("d") == 0
    limiter.failed("e")
    limiter.succeeded("e")
    assert limiter.retry_after("e") == 0


def test_same_origin() -> None:
    host = "pi.local:8080"
    ok = {"Origin": "http://pi.local:8080"}
    assert same_origin(ok, host, "http") == (True, "")
    assert same_origin({"Referer": "http://pi.local:8080/x"}, host, "http")[0]
    assert same_origin({"Origin": "null", "Referer": "http://pi.local:8080/"}, host, "http")[0]
    for bad in (
        {},
        {"Origin": "http://evil.example"},
        {"Origin": "https://pi.local:8080"},
        {"Origin": "http://pi.local:8081"},
        {"Referer": "http://pi.local:8080.evil.example/"},
        {**ok, "Sec-Fetch-Site": "cross-site"},
        {"Origin": "http://[::1"},
    ):
        assert not same_origin(bad, host, "http")[0], bad
    assert same_origin({**ok, "Sec-Fetch-Site": "same-origin"}, host, "http")[0]


# --- the service on a broker --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_settings(
    broker: MqttBroker,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    *,
    password: str | None = PASSWORD,
) -> Settings:
    for name in list(os.environ):
        if name.startswith("HWSCHED_"):
            monkeypatch.delenv(name)
    tag = uuid.uuid4().hex[:10]
    return Settings(
        broker=BrokerSettings(host=broker.host, port=broker.port, client_id_prefix=f"t-{tag}"),
        base_topic=f"db{tag}",
        dashboard=DashboardSettings(
            port=_free_port(),
            password=SecretStr(password) if password else None,
            history_file=tmp_path / "history.json",
            push_interval_s=0.1,
        ),
    )


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[Dashboard, httpx.AsyncClient]]:
    service = Service("dashboard", settings, options=FAST)
    dashboard = Dashboard(service, DEVICES, options=QUICK)
    task = asyncio.create_task(service.run(dashboard.run))
    url = f"http://127.0.0.1:{settings.dashboard.port}"
    async with httpx.AsyncClient(base_url=url, headers={"Origin": url}, timeout=10) as client:
        for _ in range(200):
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/healthz")).text == "ok: broker connected\n":
                    break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the dashboard did not come up")
        try:
            yield dashboard, client
        finally:
            service.request_stop()
            assert await asyncio.wait_for(task, 15) == 0


async def publish(broker: MqttBroker, topic: str, payload: bytes, retain: bool = True) -> None:
    async with aiomqtt.Client(
        broker.host, broker.port, identifier=f"p-{uuid.uuid4().hex[:8]}"
    ) as c:
        await c.publish(topic, payload, qos=1, retain=retain)


async def until(check: Any, within_s: float = 10.0) -> Any:
    for _ in range(int(within_s / 0.05)):
        result = check()
        if result:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError("not within the time")


async def login(client: httpx.AsyncClient, password: str = PASSWORD) -> httpx.Response:
    return await client.post("/api/login", json={"password": password})


async def test_the_page_is_served_with_safe_headers_and_no_secret(
    mqtt_broker: MqttBroker, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = make_settings(mqtt_broker, monkeypatch, tmp_path)
    async with running(settings) as (_, client):
        page = await client.get("/")
        assert page.status_code == 200
        csp = page.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        assert page.headers["X-Frame-Options"] == "DENY"
        bodies = [page.text]
        for name in ("app.js", "style.css", "icon.svg"):
            asset = await client.get(f"/static/{name}")
            assert asset.status_code == 200, name
            bodies.append(asset.text)
        assert (await client.get("/static/../dashboard.py")).status_code == 404
        assert (await client.get("/static/nothing.js")).status_code == 404
        state = await client.get("/api/state")
        assert state.headers["Cache-Control"] == "no-store"
        bodies.append(state.text)
        session = (await client.get("/api/session")).json()
        assert session == {"login_enabled": True, "logged_in": False, "csrf": None}
        for body in bodies:
            assert PASSWORD not in body
            assert (
                "password" not in body.lower()
                or 'type="password"' in body
                or body is not state.text
            )


async def test_the_stream_sends_every_section_then_what_changes(
    mqtt_broker: MqttBroker, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = make_settings(mqtt_broker, monkeypatch, tmp_path)
    base = settings.base_topic
    async with running(settings) as (dashboard, client):
        events: list[dict[str, str]] = []

        async def read() -> None:
            async with client.stream("GET", "/api/events") as stream:
                assert stream.headers["Content-Type"].startswith("text/event-stream")
                kind = None
                async for line in stream.aiter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind == "sections":
                        events.append(json.loads(line[6:])["sections"])

        reader = asyncio.create_task(read())
        try:
            await until(lambda: events)
            assert set(events[0]) == {
                "summary", "timeline", "sockets", "battery", "money", "services"
            }  # fmt: skip
            now = datetime.now(UTC).replace(microsecond=0)  # payload times: whole seconds
            the_plan = plan(start=now, made_at=now)
            await publish(mqtt_broker, f"{base}/plan", dump_message(the_plan))
            made = f'data-plan-made-at="{the_plan.made_at.isoformat()}"'
            await until(lambda: any(made in e.get("timeline", "") for e in events))
            assert dashboard.pages
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        await until(lambda: not dashboard.pages)  # a page that went away is let go


async def test_login_cookie_csrf_and_the_buttons(
    mqtt_broker: MqttBroker, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = make_settings(mqtt_broker, monkeypatch, tmp_path)
    base = settings.base_topic
    async with running(settings) as (dashboard, client):
        counters = dashboard.service.counters
        button = "/api/sockets/kitchen_boiler/override"
        # no login: refused, counted
        no_login = await client.post(button, json={"action": "on_1h"})
        assert no_login.status_code == 401
        assert no_login.json() == {"error": "log in first"}
        assert counters["http_refused_no_login"] == 1
        # a wrong password: refused; the right one: a session cookie done properly
        assert (await login(client, "wrong one")).status_code == 401
        ok = await login(client)
        assert ok.status_code == 200
        csrf = ok.json()["csrf"]
        cookie = ok.headers["Set-Cookie"]
        assert cookie.startswith("hwsched_session=")
        for flag in ("HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"):
            assert flag in cookie, flag
        assert "Secure" not in cookie  # plain HTTP on the LAN (secure_cookie for HTTPS)
        assert (await client.get("/api/session")).json()["csrf"] == csrf
        # logged in, but without the CSRF token, or from another site: refused
        assert (await client.post(button, json={"action": "on_1h"})).status_code == 403
        assert counters["http_refused_csrf"] == 1
        evil = await client.post(
            button,
            json={"action": "on_1h"},
            headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"},
        )
        assert evil.status_code == 403
        assert "not from this page" in evil.json()["error"]
        # with both: published as any MQTT client would
        got: list[OverrideRequest] = []
        async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as watcher:
            await watcher.subscribe(f"{base}/+/override/set", qos=1)

            async def watch() -> None:
                async for m in watcher.messages:
                    got.append(parse_message(OverrideRequest, bytes(m.payload)))  # type: ignore[arg-type]

            task = asyncio.create_task(watch())
            headers = {"X-CSRF-Token": csrf}
            for action in ("on_1h", "off", "auto"):
                sent = await client.post(button, json={"action": action}, headers=headers)
                assert sent.status_code == 202, sent.text
                assert sent.json()["published"] == f"{base}/kitchen_boiler/override/set"
            await until(lambda: len(got) == 3)
            task.cancel()
        assert [(g.state, g.duration_s) for g in got] == [
            ("on", 3600),
            ("off", None),
            ("auto", None),
        ]
        assert counters["overrides_published"] == 3
        # bad input: a clear answer and a counted drop
        as_json = {"Content-Type": "application/json"}
        cases = [
            ("/api/sockets/nothing/override", {"json": {"action": "on_1h"}}, 404, "unknown_socket"),
            (button, {"json": {"action": "explode"}}, 400, "bad_body"),
            (button, {"json": {"action": "on_1h", "more": 1}}, 400, "bad_body"),
            (button, {"content": b"{nope", "headers": as_json}, 400, "bad_json"),
            (button, {"content": b"action=on", "headers": {"Content-Type": "text/plain"}}, 415,
             "bad_body"),
            (button, {"content": b"[" * 5000, "headers": as_json}, 413, "too_large"),
        ]  # fmt: skip
        for path, kwargs, status, why in cases:
            before = counters[f"http_refused_{why}"]
            extra = kwargs.pop("headers", {})
            answer = await client.post(path, headers={"X-CSRF-Token": csrf, **extra}, **kwargs)
            assert answer.status_code == status, (path, kwargs, answer.text)
            assert answer.json()["error"], answer.text
            assert counters[f"http_refused_{why}"] == before + 1, why
        # logout ends the session
        assert (await client.post("/api/logout", headers={"X-CSRF-Token": csrf})).status_code == 200
        again = await client.post(button, json={"action": "off"}, headers={"X-CSRF-Token": csrf})
        assert again.status_code == 401


async def test_logins_are_rate_limited(
    mqtt_broker: MqttBroker, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = make_settings(mqtt_broker, monkeypatch, tmp_path)
    async with running(settings) as (dashboard, client):
        for _ in range(QUICK.login_per_client):
            assert (await login(client, "guess")).status_code == 401
        limited = await login(client)  # the right password, too late
        assert limited.status_code == 429
        assert int(limited.headers["Retry-After"]) > 0
        assert "too many failed logins" in limited.json()["error"]
        assert dashboard.service.counters["http_refused_rate_limited"] == 1
        assert dashboard.service.counters["http_refused_login_failed"] == QUICK.login_per_client
        # a login form posted from another site is refused before the password is looked at
        other = await client.post(
            "/api/login", json={"password": PASSWORD}, headers={"Origin": "http://evil.example"}
        )
        assert other.status_code == 403


async def test_without_a_password_the_dashboard_is_read_only(
    mqtt_broker: MqttBroker, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = make_settings(mqtt_broker, monkeypatch, tmp_path, password=None)
    async with running(settings) as (_, client):
        assert (await client.get("/api/session")).json()["login_enabled"] is False
        refused = await login(client, "anything at all")
        assert refused.status_code == 403
        assert "read-only" in refused.json()["error"]


async def test_bad_messages_are_counted_drops_and_the_history_survives_a_restart(
    mqtt_broker: MqttBroker, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = make_settings(mqtt_broker, monkeypatch, tmp_path)
    base = settings.base_topic
    history = settings.dashboard.history_file
    assert history is not None
    now = datetime.now(UTC).replace(microsecond=0)  # payload times are whole seconds
    on = SocketState(
        timestamp=now - timedelta(seconds=5),
        socket="Kitchen boiler",
        power_on=True,
        controlled_by="override",
    )
    async with running(settings) as (dashboard, _):
        await publish(mqtt_broker, f"{base}/plan", b"{garbage", retain=False)
        await publish(mqtt_broker, f"{base}/kitchen_boiler", dump_message(on))
        await until(lambda: dashboard.service.counters["messages_dropped"] == 1)
        await until(lambda: dashboard.state.sockets["kitchen_boiler"].actual)
        await until(history.exists)
    kept = json.loads(history.read_text())
    assert kept["sockets"]["kitchen_boiler"]["actual"][0]["cause"] == "override"
    async with running(settings) as (dashboard, _):
        spans = dashboard.state.sockets["kitchen_boiler"].actual
        assert spans[0].cause == "override"
        assert spans[0].start == on.timestamp
    history.write_text("{not the history")
    async with running(settings) as (dashboard, _):
        assert dashboard.service.counters["history_unreadable"] == 1


# --- hwsched status on the broker ----------------------------------------------------------------


async def test_status_reads_the_broker(
    mqtt_broker: MqttBroker, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = make_settings(mqtt_broker, monkeypatch, tmp_path)
    base = settings.base_topic
    now = datetime.now(UTC)
    await publish(mqtt_broker, f"{base}/plan", dump_message(plan(start=now, made_at=now)))
    state_msg = SocketState(
        timestamp=now, socket="Kitchen boiler", power_on=True, controlled_by="manual"
    )
    await publish(mqtt_broker, f"{base}/kitchen_boiler", dump_message(state_msg))
    await publish(mqtt_broker, f"{base}/service/poller/availability", b"online")
    await publish(mqtt_broker, f"{base}/surplus", b"not json")

    def connect() -> aiomqtt.Client:
        return aiomqtt.Client(mqtt_broker.host, mqtt_broker.port)

    state = LiveState(Topics(base), settings.tz, settings.daily_boundary, now, devices=DEVICES)
    out = io.StringIO()
    await gather(connect, state, lambda: datetime.now(UTC), out)
    text = out.getvalue()
    kitchen = next(line for line in text.splitlines() if line.startswith("Kitchen boiler"))
    assert "by hand" in kitchen
    assert "ON" in kitchen
    assert "poller" in text
    assert "(1 message(s) on the broker not understood)" in text
    # --watch prints again and again until stopped
    watched = io.StringIO()
    task = asyncio.create_task(
        gather(connect, state, lambda: datetime.now(UTC), watched, watch_s=0.1)
    )
    await until(lambda: watched.getvalue().count("hwsched at") >= 3)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def test_status_command_says_so_when_the_broker_is_not_there(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.cli import main

    for name in list(os.environ):
        if name.startswith("HWSCHED_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HWSCHED_BROKER__HOST", "127.0.0.1")
    monkeypatch.setenv("HWSCHED_BROKER__PORT", str(_free_port()))
    assert main(["status", "--timeout", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hwsched status: cannot read the broker 127.0.0.1:")
    assert len(err.strip().splitlines()) == 1
    assert main(["status", "--watch", "0"]) == 2
    assert main(["status", "--run-dir", "/nonexistent"]) == 2
    assert "no such file" in capsys.readouterr().err
