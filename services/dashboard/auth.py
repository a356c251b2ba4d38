"""Who may press the buttons: the password, sessions, CSRF tokens, the login rate limit.

Pure logic on an injected monotonic clock (real seconds, also when the house runs on
simulated time: a login's lifetime and a lock-out are about people, not the house).

* **Password**: compared in constant time (HMAC digests of both sides), never stored
  elsewhere, never logged.
* **Sessions**: a random 256-bit id in a cookie (HttpOnly, SameSite=Strict, Path=/,
  Secure when configured), kept on the server only (a restart logs everybody out), at most
  `MAX_SESSIONS` (the oldest goes), each with its own CSRF token and an expiry.
* **CSRF**: a state-changing request needs the session's token in the `X-CSRF-Token`
  header (a header a page on another origin cannot set without the server's CORS
  consent, which it never gives) and an `Origin` (or `Referer`) of this very host;
  `Sec-Fetch-Site`, when the browser sends it, must be `same-origin`.
* **Rate limit**: at most `per_client` failed logins per client address and `overall`
  failed logins from everyone within `window_s`; beyond, logins are refused (429, with
  Retry-After) until the window has room again, even with the right password.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = [
    "COOKIE_NAME",
    "CSRF_HEADER",
    "MAX_SESSIONS",
    "LoginLimiter",
    "PasswordCheck",
    "Session",
    "Sessions",
    "same_origin",
]

COOKIE_NAME = "hwsched_session"
CSRF_HEADER = "X-CSRF-Token"
#: Most sessions kept (the oldest is dropped beyond).
MAX_SESSIONS = 64
#: Most client addresses the limiter remembers (the least recent is forgotten beyond).
MAX_CLIENTS = 1024


class PasswordCheck:
    """Constant-time comparison with the configured password (None: no logins at all)."""

    def __init__(self, password: str | None) -> None:
        self._key = secrets.token_bytes(32)
        self._digest = self._mac(password) if password else None

    @property
    def enabled(self) -> bool:
        return self._digest is not None

    def _mac(self, text: str) -> bytes:
        return hmac.new(self._key, text.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def matches(self, attempt: str) -> bool:
        if self._digest is None:
            return False
        return hmac.compare_digest(self._mac(attempt), self._digest)


@dataclass
class Session:
    sid: str
    csrf: str
    expires: float


@dataclass
class Sessions:
    """Server-side sessions: id → CSRF token and expiry."""

    ttl_s: float
    monotonic: Callable[[], float] = time.monotonic
    max_sessions: int = MAX_SESSIONS
    _items: OrderedDict[str, Session] = field(default_factory=OrderedDict)

    def create(self) -> Session:
        session = Session(
            sid=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(32),
            expires=self.monotonic() + self.ttl_s,
        )
        self._items[session.sid] = session
        while len(self._items) > self.max_sessions:
            self._items.popitem(last=False)
        return session

    def get(self, sid: str | None) -> Session | None:
        """The live session with this id (constant-time id check), else None."""
        if not sid:
            return None
        now = self.monotonic()
        for key in [k for k, s in self._items.items() if s.expires <= now]:
            del self._items[key]
        found = None
        for key, session in self._items.items():
            if hmac.compare_digest(key.encode(), sid.encode("utf-8", "surrogatepass")):
                found = session
        return found

    def drop(self, sid: str | None) -> None:
        if sid:
            self._items.pop(sid, None)

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class LoginLimiter:
    """Failed logins per client and overall in a sliding window (see module doc)."""

    per_client: int = 5
    overall: int = 30
    window_s: float = 300.0
    monotonic: Callable[[], float] = time.monotonic
    _clients: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict)
    _all: deque[float] = field(default_factory=deque)

    def _trim(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window_s:
            times.popleft()

    def retry_after(self, client: str) -> float:
        """0 when `client` may try to log in now, else the seconds until it may."""
        now = self.monotonic()
        self._trim(self._all, now)
        waits = []
        if len(self._all) >= self.overall:
            waits.append(self._all[0] + self.window_s - now)
        mine = self._clients.get(client)
        if mine is not None:
            self._trim(mine, now)
            if len(mine) >= self.per_client:
                waits.append(mine[0] + self.window_s - now)
        return max([0.0, *waits])

    def failed(self, client: str) -> None:
        now = self.monotonic()
        self._all.append(now)
        mine = self._clients.pop(client, None) or deque()
        mine.append(now)
        self._clients[client] = mine
        while len(self._clients) > MAX_CLIENTS:
            self._clients.popitem(last=False)
        while len(self._all) > self.overall * 4:
            self._all.popleft()
        while len(mine) > self.per_client * 4:
            mine.popleft()

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)


def same_origin(headers: Mapping[str, str], host: str, scheme: str) -> tuple[bool, str]:
    """Whether a state-changing request comes from this page: (ok, why not).

    `Origin` (else `Referer`) must name `scheme://host`; `Sec-Fetch-Site`, if sent, must
    be `same-origin`.
    """
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site != "same-origin":
        return False, f"Sec-Fetch-Site is {site[:40]!r}, not same-origin"
    origin = headers.get("Origin")
    source = "Origin"
    if origin is None or origin == "null":
        origin = headers.get("Referer")
        source = "Referer"
    if not origin:
        return False, "no Origin or Referer header"
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False, f"{source} is not a URL"
    if parts.scheme != scheme or parts.netloc.lower() != host.lower():
        return False, f"{source} is another site"
    return True, ""
