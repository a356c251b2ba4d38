"""The dashboard service: one web page of the house, live, with three buttons per socket.

`python -m services.dashboard` subscribes to everything under the base topic (the latest
retained state and what happens since: `services.dashboard.state`), serves one page on
`dashboard.host:dashboard.port` (aiohttp) and pushes the page's sections that changed to
every open page over server-sent events, at most every `push_interval_s`. The browser never
talks to the broker: no MQTT credential ever reaches it.

Reading is open; the buttons ("on for 1 h", "off", "back to plan") need a login with
`dashboard.password` (`services.dashboard.auth`: a server-side session in an HttpOnly,
SameSite=Strict cookie, a CSRF token in a header, same-origin checks, a login rate limit).
A button publishes the same `OverrideRequest` on `<base>/<socket>/override/set` that any
MQTT client can; the page then shows what the actuator did.

Bad input from a browser (not JSON, too large, an unknown action or socket, a missing
token) gets a 4xx answer with one line saying why (`{"error": ...}`), is counted
(`http_refused`, `http_refused_<why>`) and logged at most once a minute per kind.

The day's history (measured surplus, on-times, battery) is kept in `history_file` when set,
written every 30 s and on stop, read back at start when it is still the same day.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.dashboard.auth import (
    COOKIE_NAME,
    CSRF_HEADER,
    LoginLimiter,
    PasswordCheck,
    Session,
    Sessions,
    same_origin,
)
from services.dashboard.render import render_sections
from services.dashboard.state import HistoryFile, LiveState
from shared.clock import sleep_for_work
from shared.config import DevicesConfig
from shared.messages import OverrideRequest
from shared.service import Service, run_service

__all__ = ["SERVICE_NAME", "Dashboard", "DashboardOptions", "app", "main"]

SERVICE_NAME = "dashboard"
#: Largest request body read (a login or a button: a few bytes).
MAX_BODY_BYTES = 4096
#: Page assets served from the package (no CDN: the Pi may be offline).
STATIC_FILES = {
    "app.js": "text/javascript",
    "style.css": "text/css",
    "icon.svg": "image/svg+xml",
}
#: What a refused request was, for its counter: `http_refused_<why>`.
RefusedWhy = Literal[
    "bad_json",
    "bad_body",
    "too_large",
    "unknown_socket",
    "no_login",
    "csrf",
    "origin",
    "login_failed",
    "rate_limited",
    "read_only",
    "no_broker",
    "too_many_clients",
]
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
#: The buttons: what each publishes.
ACTIONS: dict[str, dict[str, Any]] = {
    "on_1h": {"state": "on", "duration_s": 3600.0},
    "off": {"state": "off"},
    "auto": {"state": "auto"},
}


@dataclass(frozen=True)
class DashboardOptions:
    """Timings and bounds of the service (tests shorten them)."""

    #: Most open pages (server-sent event streams) at once.
    max_clients: int = 32
    #: A comment line keeps idle streams (and proxies) awake this often, s.
    heartbeat_s: float = 15.0
    #: A page that takes longer than this to take one update is dropped, s.
    write_timeout_s: float = 10.0
    #: The history file is written this often, s (work time: real seconds on a sim clock).
    save_every_s: float = 30.0
    #: The page is rendered again at least this often (the line at now moves), clock s.
    refresh_s: float = 60.0
    #: Failed logins allowed per client and overall in the window.
    login_per_client: int = 5
    login_overall: int = 30
    login_window_s: float = 300.0


class _Login(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    password: str = Field(min_length=1, max_length=1000)


class _Button(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    action: Literal["on_1h", "off", "auto"]


@dataclass(eq=False)
class _Page:
    """One open page's stream: the sections waiting for it (latest only)."""

    pending: dict[str, str] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, sections: dict[str, str]) -> None:
        self.pending.update(sections)
        self.wake.set()


class RefusedError(Exception):
    """A request refused: HTTP status, the one line the browser is told, and why (counter)."""

    def __init__(self, status: int, message: str, why: RefusedWhy, **headers: str) -> None:
        super().__init__(message)
        self.status = status
        self.why = why
        self.headers = headers


class Dashboard:
    """The state, the page, the streams and the buttons."""

    def __init__(
        self,
        service: Service,
        devices: DevicesConfig | None,
        *,
        options: DashboardOptions | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.settings = service.settings.dashboard
        self.clock = service.clock
        self.log = service.log
        self.options = options if options is not None else DashboardOptions()
        opts = self.options
        self.state = LiveState(
            service.topics,
            service.settings.tz,
            service.settings.daily_boundary,
            self.clock.now(),
            devices=devices,
            history_step_s=self.settings.history_step_s,
        )
        password = self.settings.password
        self.password = PasswordCheck(password.get_secret_value() if password else None)
        self.sessions = Sessions(float(self.settings.session_ttl_s), monotonic)
        self.limiter = LoginLimiter(
            opts.login_per_client, opts.login_overall, opts.login_window_s, monotonic
        )
        self.pages: set[_Page] = set()
        self.sections: dict[str, str] = {}
        self._changed = asyncio.Event()
        self._rendered_version = -1
        self._rendered_connected: bool | None = None
        self._saved_version = -1
        self.url: str | None = None
        self.runner: web.AppRunner | None = None
        #: How long the last render of every section took, ms.
        self.last_render_ms = 0.0

    # --- MQTT -------------------------------------------------------------------------------

    async def on_message(self, topic: str, payload: bytes) -> None:
        """Everything under the base topic (a bad payload: MessageError, a counted drop)."""
        if self.state.ingest(topic, payload, self.clock.now()):
            self._changed.set()

    # --- rendering and pushing --------------------------------------------------------------

    def render(self) -> dict[str, str]:
        """Render every section; the ones that changed since the last render."""
        started = time.perf_counter()
        now = self.clock.now()
        self.state.roll(now)
        fresh = render_sections(self.state, now, connected=self.service.connected)
        changed = {k: v for k, v in fresh.items() if self.sections.get(k) != v}
        self.sections = fresh
        self._rendered_version = self.state.version
        self._rendered_connected = self.service.connected
        self.last_render_ms = (time.perf_counter() - started) * 1000
        return changed

    async def _pusher(self) -> None:
        """Render after a change (at most every push_interval_s, real seconds) or every
        refresh_s, and offer what changed to every open page."""
        interval = self.settings.push_interval_s
        while True:
            ticker = asyncio.ensure_future(self.clock.sleep(self.options.refresh_s))
            changed = asyncio.ensure_future(self._changed.wait())
            try:
                await asyncio.wait({ticker, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (ticker, changed):
                    task.cancel()
            self._changed.clear()
            update = self.render()
            if update:
                for page in list(self.pages):
                    page.offer(update)
            await sleep_for_work(self.clock, interval)  # real seconds on a simulated clock

    async def _connection_watch(self) -> None:
        """Re-render when the broker connection comes or goes (the page says so)."""
        while True:
            await sleep_for_work(self.clock, 1.0)
            if self.service.connected != self._rendered_connected:
                self._changed.set()

    # --- history ------------------------------------------------------------------------------

    def load_history(self) -> None:
        path = self.settings.history_file
        if path is None or not path.exists():
            return
        try:
            kept = HistoryFile.model_validate_json(path.read_bytes())
        except (OSError, ValidationError, ValueError) as err:
            self.service.counters.inc("history_unreadable")
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            self.log.warning("history file %s not read (starting without it): %s", path, first)
            return
        if self.state.restore(kept, self.clock.now()):
            self.log.info("history of today read back from %s", path)
        else:
            self.log.info("history file %s is of another day: starting today's", path)

    def save_history(self) -> None:
        path = self.settings.history_file
        if path is None or self._saved_version == self.state.version:
            return
        data = self.state.snapshot().model_dump_json().encode()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as err:
            self.service.counters.inc("history_write_failed")
            self.service.rate_limited.log(
                "history", logging.WARNING, "cannot write the history file %s: %s", path, err
            )
            return
        self._saved_version = self.state.version

    async def _saver(self) -> None:
        while True:
            await sleep_for_work(self.clock, self.options.save_every_s)
            self.save_history()

    # --- HTTP ---------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(
            client_max_size=MAX_BODY_BYTES, middlewares=[self._headers_middleware]
        )
        app.router.add_get("/", self.index)
        app.router.add_get("/static/{name}", self.static)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/api/state", self.api_state)
        app.router.add_get("/api/events", self.events)
        app.router.add_get("/api/session", self.api_session)
        app.router.add_post("/api/login", self.login)
        app.router.add_post("/api/logout", self.logout)
        app.router.add_post("/api/sockets/{slug}/override", self.override)
        return app

    @web.middleware
    async def _headers_middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except RefusedError as err:
            response = self._refuse(request, err)
        except web.HTTPRequestEntityTooLarge:
            response = self._refuse(
                request,
                RefusedError(413, f"request body larger than {MAX_BODY_BYTES} bytes", "too_large"),
            )
        except web.HTTPException as err:  # 404, 405: a plain answer, with the headers below
            response = web.json_response({"error": err.reason}, status=err.status)
        if not response.prepared:
            for key, value in SECURITY_HEADERS.items():
                response.headers.setdefault(key, value)
            if request.path.startswith("/api/"):
                response.headers.setdefault("Cache-Control", "no-store")
        return response

    def _refuse(self, request: web.Request, err: RefusedError) -> web.Response:
        counters = self.service.counters
        counters.inc("http_refused")
        counters.inc(f"http_refused_{err.why}")
        self.service.rate_limited.log(
            f"http:{err.why}",
            logging.WARNING,
            "refused %s %s from %s: %s",
            request.method,
            request.path[:100],
            request.remote,
            err,
        )
        return web.json_response({"error": str(err)}, status=err.status, headers=err.headers)

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(
            body=_asset("index.html"),
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        kind = STATIC_FILES.get(name)
        if kind is None:
            raise web.HTTPNotFound(reason="no such file")
        return web.Response(
            body=_asset(name), content_type=kind, headers={"Cache-Control": "no-cache"}
        )

    async def healthz(self, request: web.Request) -> web.Response:
        broker = "connected" if self.service.connected else "not connected"
        return web.Response(text=f"ok: broker {broker}\n")

    async def api_state(self, request: web.Request) -> web.Response:
        if self._rendered_version != self.state.version or not self.sections:
            self.render()
        return web.json_response({"sections": self.sections})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """The page's live stream: every section now, then what changes (server-sent events)."""
        if len(self.pages) >= self.options.max_clients:
            raise RefusedError(503, "too many open pages: close one and reload", "too_many_clients")
        if not self.sections or self._rendered_version != self.state.version:
            self.render()
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
                **SECURITY_HEADERS,
            }
        )
        await response.prepare(request)
        page = _Page()
        page.offer(dict(self.sections))
        self.pages.add(page)
        self.service.counters.inc("pages_opened")
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(page.wake.wait(), self.options.heartbeat_s)
                if page.wake.is_set():
                    page.wake.clear()
                    data = json.dumps({"sections": page.pending}, separators=(",", ":"))
                    page.pending = {}
                    chunk = f"event: sections\ndata: {data}\n\n".encode()
                else:
                    chunk = b": still here\n\n"
                await asyncio.wait_for(response.write(chunk), self.options.write_timeout_s)
        except (ConnectionResetError, TimeoutError):
            pass  # the page went away, or stopped reading
        finally:
            self.pages.discard(page)
        return response

    def _session(self, request: web.Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE_NAME))

    async def api_session(self, request: web.Request) -> web.Response:
        session = self._session(request)
        return web.json_response(
            {
                "login_enabled": self.password.enabled,
                "logged_in": session is not None,
                "csrf": session.csrf if session is not None else None,
            }
        )

    def _check_origin(self, request: web.Request) -> None:
        ok, why = same_origin(request.headers, request.host, request.scheme)
        if not ok:
            raise RefusedError(403, f"refused: not from this page ({why})", "origin")

    async def _json_body(self, request: web.Request, model: type[BaseModel]) -> Any:
        if request.content_type != "application/json":
            raise RefusedError(415, "send JSON (Content-Type: application/json)", "bad_body")
        raw = await request.read()
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise RefusedError(400, "the body is not JSON", "bad_json") from None
        try:
            return model.model_validate(data)
        except ValidationError as err:
            first = err.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "(body)"
            raise RefusedError(400, f"{where}: {first['msg']}", "bad_body") from None

    async def login(self, request: web.Request) -> web.Response:
        self._check_origin(request)
        if not self.password.enabled:
            raise RefusedError(
                403,
                "no password is set: the dashboard is read-only (set HWSCHED_DASHBOARD__PASSWORD)",
                "read_only",
            )
        client = request.remote or "unknown"
        wait = self.limiter.retry_after(client)
        if wait > 0:
            raise RefusedError(
                429,
                f"too many failed logins: try again in {wait:.0f} s",
                "rate_limited",
                **{"Retry-After": str(max(1, round(wait)))},
            )
        body: _Login = await self._json_body(request, _Login)
        if not self.password.matches(body.password):
            self.limiter.failed(client)
            raise RefusedError(401, "wrong password", "login_failed")
        self.limiter.succeeded(client)
        self.sessions.drop(request.cookies.get(COOKIE_NAME))  # a new id at every login
        session = self.sessions.create()
        self.service.counters.inc("logins")
        self.log.info("login from %s", client)
        response = web.json_response({"logged_in": True, "csrf": session.csrf})
        response.set_cookie(
            COOKIE_NAME,
            session.sid,
            max_age=self.settings.session_ttl_s,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self.settings.secure_cookie or request.secure,
        )
        return response

    def _require_session(self, request: web.Request) -> Session:
        self._check_origin(request)
        session = self._session(request)
        if session is None:
            raise RefusedError(401, "log in first", "no_login")
        token = request.headers.get(CSRF_HEADER, "")
        if not token or not _equal(token, session.csrf):
            raise RefusedError(
                403, "refused: missing or wrong CSRF token (reload the page)", "csrf"
            )
        return session

    async def logout(self, request: web.Request) -> web.Response:
        self._require_session(request)
        self.sessions.drop(request.cookies.get(COOKIE_NAME))
        response = web.json_response({"logged_in": False})
        response.del_cookie(COOKIE_NAME, path="/")
        return response

    async def override(self, request: web.Request) -> web.Response:
        """A button: publish the override on `<base>/<socket>/override/set`."""
        self._require_session(request)
        slug = request.match_info["slug"]
        if slug not in self.state.sockets:
            raise RefusedError(404, f"no socket {slug[:60]!r}", "unknown_socket")
        body: _Button = await self._json_body(request, _Button)
        if not self.service.connected:
            raise RefusedError(
                503, "not connected to the broker: try again in a moment", "no_broker"
            )
        message = OverrideRequest(timestamp=self.clock.now(), **ACTIONS[body.action])
        topic = self.service.topics.override_set(slug)
        self.service.publish(topic, message)
        self.service.counters.inc("overrides_published")
        self.log.info(
            "button %s for %s (from %s): published on %s", body.action, slug, request.remote, topic
        )
        return web.json_response({"published": topic, "action": body.action}, status=202)

    # --- running ------------------------------------------------------------------------------

    async def start_http(self) -> None:
        """Listen where the settings say; RuntimeError (one line) when that is not possible."""
        self.runner = web.AppRunner(
            self.make_app(), access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self.runner.setup()
        host, port = self.settings.host, self.settings.port
        site = web.TCPSite(self.runner, host, port)
        try:
            await site.start()
        except OSError as err:
            await self.runner.cleanup()
            raise RuntimeError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}/"
        login = (
            "buttons need the password" if self.password.enabled else "read-only (no password set)"
        )
        self.log.info("serving the dashboard on %s (%s)", self.url, login)

    async def run(self) -> None:
        """Subscribe, read the history back, serve until cancelled; save the history on stop."""
        self.service.subscribe(self.service.topics.everything(), self.on_message)
        self.load_history()
        await self.start_http()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pusher(), name="dashboard-push")
                group.create_task(self._connection_watch(), name="dashboard-connection")
                if self.settings.history_file is not None:
                    group.create_task(self._saver(), name="dashboard-save")
        finally:
            self.save_history()
            if self.runner is not None:
                await self.runner.cleanup()


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode())


def _asset(name: str) -> bytes:
    return resources.files("services.dashboard").joinpath("static", name).read_bytes()


async def app(service: Service, devices: DevicesConfig) -> None:
    """The dashboard's work inside the service runtime."""
    await Dashboard(service, devices).run()


def main() -> int:
    """`python -m services.dashboard`: settings from config/settings.toml and HWSCHED_*."""
    return run_service(SERVICE_NAME, app)
