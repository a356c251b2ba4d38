"""HomeWizard local API v2 (HTTPS, port 443, bearer token): P1 meter, kWh meter, Battery.

    async with V2Client("192.168.1.30", token, product_type="HWE-BAT") as battery:
        now = await battery.measurement()                  # GET /api/measurement
    async with V2Client("192.168.1.20", p1_token, product_type="HWE-P1") as p1:
        group = await p1.batteries()                       # GET /api/batteries
        await p1.set_batteries(mode="zero", permissions=["charge_allowed"])

Every request sends `Authorization: Bearer <token>` and `X-Api-Version: 2`. TLS is always
verified against the HomeWizard CA (or `ca_file`) and the device's certificate name
`appliance/<type>/<serial>` is checked before the request is sent (see
`shared.homewizard.tls`). With `serial` unknown the client's first request is `GET /api`,
made with the CA and type checks only; its serial must be the one the certificate names,
and is then pinned for every later connection (trust on first use within the CA).

Error bodies are `{"error": "<scope>:<code>"}`: 401 / `user:unauthorized` →
UnauthorizedError; 404 / `request:api-version-not-supported` → UnsupportedError; any other
code → InvalidResponseError with `code` set. Retries: see `shared.homewizard._http`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx

from shared.homewizard._http import ClientBase, Reply, Transport, base_url
from shared.homewizard.errors import (
    HomeWizardError,
    InvalidResponseError,
    PairingTimeoutError,
    UnauthorizedError,
    UnsupportedError,
)
from shared.homewizard.models import BatteriesState, DeviceInfo, Measurement, SystemInfo
from shared.homewizard.tls import DeviceIdentity, certificate_type, device_ssl_context

API_VERSION_HEADER = {"X-Api-Version": "2"}
USER_NAME = re.compile(r"local/[a-zA-Z0-9\-_/\\# ]{1,40}")
_TOKEN = re.compile(r"[0-9A-Fa-f]{32}")
_CODE = re.compile(r"[a-z0-9_-]+:[A-Za-z0-9_:.\-]+")


def _error_code(body: bytes) -> str | None:
    """The `<scope>:<code>` of a v2 error body, or None."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    code = data.get("error") if isinstance(data, dict) else None
    if isinstance(code, str) and _CODE.fullmatch(code) and len(code) <= 100:
        return code
    return None


def _error(transport: Transport, reply: Reply, what: str) -> HomeWizardError:
    host = transport.host
    code = _error_code(reply.body)
    code = transport.scrub(code) if code is not None else None
    shown = f", {code}" if code else ""
    if reply.status == 401 or code == "user:unauthorized":
        return UnauthorizedError(
            host, f"{what}: token refused (HTTP {reply.status}{shown}); pair again: hwsched pair"
        )
    if reply.status == 404:
        return UnsupportedError(host, f"{what}: not available on this device (404)")
    if code == "request:api-version-not-supported":
        return UnsupportedError(host, f"{what}: the device does not support API v2 ({code})")
    if reply.status >= 500:
        tries = f" after {reply.attempts} attempts" if reply.attempts > 1 else ""
        return InvalidResponseError(
            host, f"{what}: device error (HTTP {reply.status}{shown}){tries}", code=code
        )
    return InvalidResponseError(host, f"{what}: refused (HTTP {reply.status}{shown})", code=code)


class V2Client(ClientBase):
    """One device's API v2. An async context manager; or call `aclose()`.

    `product_type` ("HWE-BAT", "HWE-P1", ... or the certificate's "battery", "p1dongle")
    and `serial` narrow the certificate check; see the module doc for an unknown serial.
    `ca_file`: the CA to trust instead of the bundled HomeWizard CA (a simulator's).
    `transport`: an httpx transport to use instead of the network (tests: no TLS then).
    """

    def __init__(
        self,
        host: str,
        token: str,
        port: int | None = None,
        *,
        product_type: str | None = None,
        serial: str | None = None,
        ca_file: Path | None = None,
        timeout_s: float = 5.0,
        retries: int = 2,
        backoff_s: float = 0.25,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not token or any(c.isspace() or not c.isprintable() for c in token):
            raise ValueError("token must be a non-empty string without spaces")
        self._product_type = product_type
        self._identity = DeviceIdentity(
            cert_type=certificate_type(product_type) if product_type else None, serial=serial
        )
        self._pin_lock = asyncio.Lock()
        self._http = Transport(
            host=host,
            base=base_url("https", host, port),
            timeout_s=timeout_s,
            retries=retries,
            backoff_s=backoff_s,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                **API_VERSION_HEADER,
            },
            verify=None if transport else device_ssl_context(self._identity, ca_file, host),
            transport=transport,
            secret=token,
        )

    @property
    def host(self) -> str:
        return self._http.host

    @property
    def serial(self) -> str | None:
        """The device's serial once known (given, or pinned by the first `GET /api`)."""
        return self._identity.serial

    def __repr__(self) -> str:  # never the token (not even one a device gave as its serial)
        return self._http.scrub(f"V2Client({self._http.base!r}, serial={self.serial!r})")

    # --- endpoints ----------------------------------------------------------------------

    async def device_info(self) -> DeviceInfo:
        """`GET /api`: product type, serial, firmware, API version. Pins the serial."""
        with self._no_secret():
            return await self._pinned_device_info()

    async def measurement(self) -> Measurement:
        """`GET /api/measurement`: the latest measurement, normalised (see Measurement)."""
        with self._no_secret():
            await self._ensure_pinned()
            data = await self._get("/api/measurement")
            return Measurement.from_v2(data, host=self.host)

    async def system(self) -> SystemInfo:
        """`GET /api/system`: the device's system state (its `uptime_s`: since it booted)."""
        with self._no_secret():
            await self._ensure_pinned()
            data = await self._get("/api/system")
            return SystemInfo.from_api(data, host=self.host)

    async def batteries(self) -> BatteriesState:
        """`GET /api/batteries` (on the P1 or kWh meter): the battery group's control."""
        with self._no_secret():
            await self._ensure_pinned()
            data = await self._get("/api/batteries")
            return BatteriesState.from_api(data, host=self.host)

    async def set_batteries(
        self, *, mode: str | None = None, permissions: Sequence[str] | None = None
    ) -> BatteriesState:
        """`PUT /api/batteries`: set the mode and/or the permissions; the new state.

        `to_full` cannot be sent together with permissions (the device refuses it; this
        raises ValueError first). A read timeout is not retried (see `_http`).
        """
        with self._no_secret():
            return await self._set_batteries(mode, permissions)

    # --- plumbing -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _no_secret(self) -> Iterator[None]:
        """Errors leave without the token, whatever the device echoed into them."""
        try:
            yield
        except HomeWizardError as err:
            self._http.scrub_error(err)
            raise

    async def _pinned_device_info(self) -> DeviceInfo:
        if self._identity.serial is not None:
            info = await self._device_info()
            self._check_info(info)
            return info
        async with self._pin_lock:
            if self._identity.serial is not None:
                info = await self._device_info()
                self._check_info(info)
                return info
            self._identity.seen_serial = None
            info = await self._device_info()
            self._check_info(info)
            seen = self._identity.seen_serial
            if seen is not None and seen != info.serial.lower():
                raise InvalidResponseError(
                    self.host,
                    f"GET /api reports serial {info.serial}, its certificate names {seen}",
                )
            self._identity.pin(info.serial)
            return info

    async def _set_batteries(
        self, mode: str | None, permissions: Sequence[str] | None
    ) -> BatteriesState:
        body: dict[str, object] = {}
        if mode is not None:
            if not mode:
                raise ValueError("set_batteries: mode must not be empty")
            body["mode"] = mode
        if permissions is not None:
            if isinstance(permissions, str):
                raise ValueError("set_batteries: permissions is a list of strings")
            body["permissions"] = list(permissions)
        if not body:
            raise ValueError("set_batteries: give mode and/or permissions")
        if mode == "to_full" and permissions is not None:
            raise ValueError("set_batteries: mode 'to_full' cannot be combined with permissions")
        await self._ensure_pinned()
        what = "PUT /api/batteries"
        reply = await self._http.request("PUT", "/api/batteries", json_body=body, idempotent=False)
        if reply.status == 204:
            return await self.batteries()
        if reply.status != 200:
            raise _error(self._http, reply, what)
        return BatteriesState.from_api(reply.json(self.host, what), host=self.host)

    async def _ensure_pinned(self) -> None:
        if self._identity.serial is None:
            await self._pinned_device_info()

    async def _device_info(self) -> DeviceInfo:
        return DeviceInfo.from_api(await self._get("/api"), host=self.host)

    def _check_info(self, info: DeviceInfo) -> None:
        wanted = self._identity.cert_type
        if wanted is not None and certificate_type(info.product_type) not in (wanted, None):
            raise InvalidResponseError(
                self.host,
                f"is a {info.product_type}, not the expected {self._product_type}: "
                "check the device's ip_address",
            )
        if self._identity.serial is not None and info.serial.lower() != self._identity.serial:
            raise InvalidResponseError(
                self.host,
                f"GET /api reports serial {info.serial}, expected {self._identity.serial}",
            )

    async def _get(self, path: str) -> object:
        what = f"GET {path}"
        reply = await self._http.request("GET", path, idempotent=True)
        if reply.status != 200:
            raise _error(self._http, reply, what)
        return reply.json(self.host, what)


async def create_user(
    host: str,
    name: str,
    *,
    port: int | None = None,
    ca_file: Path | None = None,
    timeout_s: float = 60,
    poll_interval_s: float = 2,
    on_waiting: Callable[[], None] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> str:
    """Pair with a device: `POST /api/user`, until its button is pressed; the new token.

    `name` is "local/<name>" or just "<name>" (1-40 of a-z A-Z 0-9 - _ \\ / # space);
    pairing again with the same name replaces (invalidates) that user's old token.
    The device answers 403 `user:creation-not-enabled` until its button is pressed; this
    polls every `poll_interval_s` and calls `on_waiting()` once, at the first such answer
    (the moment to tell the user to press the button). After `timeout_s` without a press:
    PairingTimeoutError. TLS: verified against the CA, no name check (serial unknown).
    """
    full = name if name.startswith("local/") else f"local/{name}"
    if not USER_NAME.fullmatch(full):
        raise ValueError(
            f"invalid user name {full!r}: local/ then 1-40 of a-z A-Z 0-9 - _ \\ / # space"
        )
    if timeout_s <= 0 or poll_interval_s < 0:
        raise ValueError("timeout_s must be > 0 and poll_interval_s >= 0")
    http = Transport(
        host=host,
        base=base_url("https", host, port),
        timeout_s=min(10.0, timeout_s),
        retries=1,
        backoff_s=0.5,
        headers={"Accept": "application/json", **API_VERSION_HEADER},
        verify=None if transport else device_ssl_context(DeviceIdentity(), ca_file, host),
        transport=transport,
    )
    deadline = time.monotonic() + timeout_s
    told = False
    what = "POST /api/user"
    try:
        while True:
            reply = await http.request(
                "POST", "/api/user", json_body={"name": full}, idempotent=False
            )
            if reply.status == 200:
                return _token_from(reply, host)
            if reply.status != 403 or _error_code(reply.body) != "user:creation-not-enabled":
                raise _error(http, reply, what)
            if not told:
                told = True
                if on_waiting is not None:
                    on_waiting()
            if time.monotonic() + poll_interval_s > deadline:
                raise PairingTimeoutError(
                    host, f"the button was not pressed within {timeout_s:g} s; try again"
                )
            await asyncio.sleep(poll_interval_s)
    finally:
        await http.aclose()


def _token_from(reply: Reply, host: str) -> str:
    data = reply.json(host, "POST /api/user")
    token = data.get("token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise InvalidResponseError(host, "POST /api/user: no valid token in the answer")
    return token
