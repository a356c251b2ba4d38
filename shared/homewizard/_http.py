"""The HTTP transport under both clients: timeouts, retries, and errors as HomeWizardError.

Retry policy (the reason it differs by method):

- An idempotent request (GET) is retried, with a short doubling back-off, on a timeout, a
  lost or refused connection, a broken HTTP answer and an HTTP 5xx: asking twice is harmless.
- A request that changes something (PUT, POST) is retried ONLY when the connection could
  not be made (refused, unreachable, connect timeout, TLS handshake failure): then nothing
  reached the device. It is never retried after it may have been sent (read timeout, lost
  connection, 5xx): the device may already have acted, and sending it again blindly can
  land after a later command (ours, the app's, a schedule's) and undo it. The caller gets
  DeviceTimeoutError/DeviceUnreachableError and must read the state to learn the outcome.
- A certificate failure is never retried: it will not change.

`timeout_s` bounds each phase of one attempt (connect, TLS handshake, each read/write), so
an idempotent request that keeps timing out gives up after about
`(retries + 1) * timeout_s` plus the back-off.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import httpx

from shared.homewizard.errors import (
    CertificateError,
    DeviceTimeoutError,
    DeviceUnreachableError,
    HomeWizardError,
    InvalidResponseError,
)

log = logging.getLogger("shared.homewizard")

_MAX_BACKOFF_S = 2.0


class NameMismatch(ssl.SSLCertVerificationError):
    """Raised inside the TLS handshake when the certificate does not name the device."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, body, and how many attempts it took."""

    status: int
    body: bytes
    attempts: int

    def json(self, host: str, what: str) -> object:
        """The body as JSON; garbage, truncation, NaN → InvalidResponseError."""
        if not self.body.strip():
            raise InvalidResponseError(host, f"{what}: empty answer (HTTP {self.status})")
        try:
            return json.loads(self.body, parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError) as err:
            reason = err.msg if isinstance(err, json.JSONDecodeError) else short(str(err))
        # outside the handler: the decode error (holding the whole body) is not kept as context
        raise InvalidResponseError(
            host, f"{what}: not valid JSON ({reason}; {len(self.body)} bytes)"
        )


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def short(text: str, limit: int = 120) -> str:
    """One line, at most `limit` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def base_url(scheme: str, host: str, port: int | None) -> str:
    """`scheme://host[:port]`, with an IPv6 literal in brackets."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{scheme}://{shown}" if port is None else f"{scheme}://{shown}:{port}"


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of `kind` in `exc`'s cause/context chain (exc included)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class Transport:
    """One device's HTTP connection pool, with the retry policy above.

    `client`: a caller's httpx.AsyncClient (used as is, not closed here);
    otherwise one is made with `verify` (an ssl context) and `transport` (tests).
    `secret`: a string (the token) scrubbed out of every error message.
    """

    def __init__(
        self,
        *,
        host: str,
        base: str,
        timeout_s: float,
        retries: int,
        backoff_s: float,
        headers: Mapping[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
        verify: ssl.SSLContext | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        secret: str | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.host = host
        self.base = base
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = max(0.0, backoff_s)
        self._headers = dict(headers or {})
        self._timeout = httpx.Timeout(timeout_s)
        self._secret = secret
        #: Attempts that failed and were retried (a request that fails for good raises).
        self.failed_attempts = 0
        self._owned = client is None
        self._client = client or httpx.AsyncClient(
            verify=verify if verify is not None else True,
            transport=transport,
            timeout=self._timeout,
            trust_env=False,  # never send a LAN device's traffic (or token) to a proxy
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()

    def scrub(self, text: str) -> str:
        """`text` without the secret, in any case (should a device or library echo it)."""
        if self._secret:
            text = re.sub(re.escape(self._secret), "***", text, flags=re.IGNORECASE)
        return text

    def scrub_error(self, err: HomeWizardError) -> HomeWizardError:
        """`err` with the secret taken out of its message (in place; returned)."""
        if self._secret and self.scrub(str(err)) != str(err):
            err.message = self.scrub(err.message)
            err.args = tuple(self.scrub(a) if isinstance(a, str) else a for a in err.args)
            if isinstance(err, InvalidResponseError) and err.code is not None:
                err.code = self.scrub(err.code)
        return err

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: object = None,
        idempotent: bool,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """Send `method path` with the retry policy; any answer with a status is returned.

        5xx answers are retried (idempotent requests only) and then returned: the caller
        maps status and body to its API's errors. Failures without an answer raise
        HomeWizardError subclasses.
        """
        url = self.base + path
        sent_headers = {**self._headers, **(headers or {})}
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            failure: tuple[HomeWizardError, bool] | None = None
            try:
                response = await self._client.request(
                    method,
                    url,
                    json=json_body,
                    headers=sent_headers,
                    timeout=self._timeout,
                )
            except (httpx.HTTPError, httpx.InvalidURL, OSError, ssl.SSLError) as exc:
                failure = self._failure(exc, method, path, idempotent, attempt)
            if failure is not None:
                # raised here, outside the handler: the library's exception (its request
                # holds the Authorization header) is not kept as the error's __context__
                error, retriable = failure
                if not retriable or attempt == attempts:
                    raise error
                log.debug("%s %s %s: %s; retrying", self.host, method, path, error.message)
                self.failed_attempts += 1
                await self._pause(attempt)
                continue
            if response.status_code >= 500 and idempotent and attempt < attempts:
                log.debug(
                    "%s %s %s: HTTP %d; retrying", self.host, method, path, response.status_code
                )
                self.failed_attempts += 1
                await self._pause(attempt)
                continue
            return Reply(response.status_code, response.content, attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _pause(self, attempt: int) -> None:
        if self.backoff_s > 0:
            await asyncio.sleep(min(_MAX_BACKOFF_S, self.backoff_s * 2 ** (attempt - 1)))

    def _failure(
        self, exc: BaseException, method: str, path: str, idempotent: bool, attempt: int
    ) -> tuple[HomeWizardError, bool]:
        """The error to raise for `exc`, and whether another attempt is allowed."""
        what = f"{method} {path}"
        tries = f" ({attempt} attempts)" if attempt > 1 else ""
        reason = short(self.scrub(str(exc))) or type(exc).__name__

        mismatch = _find(exc, NameMismatch)
        if isinstance(mismatch, NameMismatch):
            return CertificateError(self.host, self.scrub(mismatch.detail)), False
        untrusted = _find(exc, ssl.SSLCertVerificationError)
        if isinstance(untrusted, ssl.SSLCertVerificationError):
            why = untrusted.verify_message or short(str(untrusted))
            return (
                CertificateError(
                    self.host,
                    f"certificate not trusted: {why} (not a HomeWizard device, or the wrong CA)",
                ),
                False,
            )
        if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
            return (
                DeviceTimeoutError(
                    self.host, f"{what}: no connection within {self.timeout_s:g} s{tries}"
                ),
                True,
            )
        if isinstance(exc, httpx.TimeoutException):
            note = "" if idempotent else " (not retried: the device may have acted on it)"
            return (
                DeviceTimeoutError(
                    self.host, f"{what}: no answer within {self.timeout_s:g} s{tries}{note}"
                ),
                idempotent,
            )
        tls = _find(exc, ssl.SSLError)
        if isinstance(exc, httpx.ConnectError) and tls is not None:
            return (
                DeviceUnreachableError(
                    self.host, f"{what}: TLS handshake failed: {short(self.scrub(str(tls)))}"
                ),
                True,
            )
        if isinstance(exc, httpx.ConnectError):
            return DeviceUnreachableError(self.host, f"{what}: cannot connect: {reason}"), True
        if isinstance(exc, httpx.RemoteProtocolError):
            return (
                InvalidResponseError(self.host, f"{what}: broken HTTP answer: {reason}{tries}"),
                idempotent,
            )
        if isinstance(exc, httpx.NetworkError):
            note = "" if idempotent else " (not retried: the device may have acted on it)"
            return (
                DeviceUnreachableError(
                    self.host, f"{what}: connection lost: {reason}{tries}{note}"
                ),
                idempotent,
            )
        if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
            return DeviceUnreachableError(self.host, f"invalid address: {reason}"), False
        if isinstance(exc, httpx.HTTPError):
            return InvalidResponseError(self.host, f"{what}: {reason}{tries}"), idempotent
        return DeviceUnreachableError(self.host, f"{what}: {reason}{tries}"), idempotent


class ClientBase:
    """What both API clients share: an async context manager closing their transport."""

    _http: Transport

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def failed_attempts(self) -> int:
        """Requests to the device that failed and were retried, since the client was made."""
        return self._http.failed_attempts
