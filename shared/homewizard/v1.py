"""HomeWizard local API v1 (plain HTTP, port 80): P1 meter, Energy Socket, kWh meter.

    async with V1Client("192.168.1.20") as socket:
        info = await socket.device_info()          # GET /api
        now = await socket.measurement()           # GET /api/v1/data
        state = await socket.set_socket_state(power_on=True)   # PUT /api/v1/state

Reads are retried (timeouts, lost connections, 5xx); a PUT is retried only when the
connection could not be made: see `shared.homewizard._http` for why. Errors are
`shared.homewizard.errors`; the v1 error body `{"error": {"id": N, "description": ...}}`
maps as: 403 / id 202 → ApiDisabledError, 404 → UnsupportedError, id 8 →
SwitchLockedError, anything else → InvalidResponseError (with `code` = the id).
"""

from __future__ import annotations

import json

import httpx

from shared.homewizard._http import ClientBase, Reply, Transport, base_url, short
from shared.homewizard.errors import (
    ApiDisabledError,
    HomeWizardError,
    InvalidResponseError,
    SwitchLockedError,
    UnsupportedError,
)
from shared.homewizard.models import DeviceInfo, Measurement, SocketState

ERROR_API_DISABLED = 202
ERROR_NOT_MODIFIABLE = 8


def _error_body(body: bytes) -> tuple[int | None, str | None]:
    """`(id, description)` from a v1 error body, or (None, None)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None, None
    err_id = error.get("id")
    desc = error.get("description")
    return (
        err_id if isinstance(err_id, int) and not isinstance(err_id, bool) else None,
        short(desc, 100) if isinstance(desc, str) else None,
    )


class V1Client(ClientBase):
    """One device's API v1. An async context manager; or call `aclose()`.

    `client`: an httpx.AsyncClient to use (not closed by this client), e.g. with a
    MockTransport in tests. `backoff_s`: the first pause between retries (doubling).
    """

    def __init__(
        self,
        host: str,
        port: int | None = None,
        *,
        timeout_s: float = 5.0,
        retries: int = 2,
        client: httpx.AsyncClient | None = None,
        backoff_s: float = 0.25,
    ) -> None:
        self._http = Transport(
            host=host,
            base=base_url("http", host, port),
            timeout_s=timeout_s,
            retries=retries,
            backoff_s=backoff_s,
            headers={"Accept": "application/json"},
            client=client,
        )

    @property
    def host(self) -> str:
        return self._http.host

    def __repr__(self) -> str:
        return f"V1Client({self._http.base!r})"

    # --- endpoints ----------------------------------------------------------------------

    async def device_info(self) -> DeviceInfo:
        """`GET /api`: product type, serial, firmware, API version."""
        data = await self._get("/api")
        return DeviceInfo.from_api(data, host=self.host)

    async def measurement(self) -> Measurement:
        """`GET /api/v1/data`: the latest measurement, normalised (see Measurement)."""
        data = await self._get("/api/v1/data")
        return Measurement.from_v1(data, host=self.host)

    async def socket_state(self) -> SocketState:
        """`GET /api/v1/state` (Energy Socket only; else UnsupportedError)."""
        data = await self._get("/api/v1/state")
        return SocketState.from_api(data, host=self.host)

    async def set_socket_state(
        self, *, power_on: bool | None = None, switch_lock: bool | None = None
    ) -> SocketState:
        """`PUT /api/v1/state` with the given fields, then the socket's whole state.

        The device answers a PUT with only the fields it changed, so the full state is
        read back with a GET. Switching off while `switch_lock` is on raises
        SwitchLockedError (nothing changed). A read timeout on the PUT raises
        DeviceTimeoutError WITHOUT a retry: the switch may or may not have happened, and
        the caller must read `socket_state()` rather than switch again blindly.
        """
        body: dict[str, bool] = {}
        if power_on is not None:
            body["power_on"] = power_on
        if switch_lock is not None:
            body["switch_lock"] = switch_lock
        if not body:
            raise ValueError("set_socket_state: give power_on and/or switch_lock")
        what = "PUT /api/v1/state"
        reply = await self._http.request("PUT", "/api/v1/state", json_body=body, idempotent=False)
        if reply.status != 200:
            raise self._error(reply, what)
        answer = reply.json(self.host, what)
        if not isinstance(answer, dict):
            raise InvalidResponseError(self.host, f"{what}: expected a JSON object")
        for key, wanted in body.items():
            if key in answer and answer[key] is not wanted:
                raise InvalidResponseError(
                    self.host, f"{what}: asked {key}={wanted}, device answered {answer[key]!r}"
                )
        return await self.socket_state()

    # --- plumbing -----------------------------------------------------------------------

    async def _get(self, path: str) -> object:
        what = f"GET {path}"
        reply = await self._http.request("GET", path, idempotent=True)
        if reply.status != 200:
            raise self._error(reply, what)
        return reply.json(self.host, what)

    def _error(self, reply: Reply, what: str) -> HomeWizardError:
        err_id, desc = _error_body(reply.body)
        extra = self._http.scrub(f", error {err_id}: {desc}") if err_id is not None else ""
        code = str(err_id) if err_id is not None else None
        if reply.status == 403 or err_id == ERROR_API_DISABLED:
            return ApiDisabledError(
                self.host,
                f"{what}: the local API is disabled; switch on 'Local API' for this device "
                "in the HomeWizard Energy app",
            )
        if reply.status == 404:
            return UnsupportedError(self.host, f"{what}: not available on this device (404)")
        if err_id == ERROR_NOT_MODIFIABLE:
            return SwitchLockedError(
                self.host, f"{what}: not modifiable (HTTP {reply.status}{extra})", code=code
            )
        if reply.status >= 500:
            tries = f" after {reply.attempts} attempts" if reply.attempts > 1 else ""
            return InvalidResponseError(
                self.host, f"{what}: device error (HTTP {reply.status}{extra}){tries}", code=code
            )
        return InvalidResponseError(
            self.host, f"{what}: refused (HTTP {reply.status}{extra})", code=code
        )
