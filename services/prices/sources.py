"""The day-ahead sources over HTTP: EnergyZero and ENTSO-E, thin httpx clients.

Each `fetch(day)` asks for one local day's prices and gives a `PriceSeries` (the bare
day-ahead price, EUR/kWh), or raises `NotPublishedError` (that day is not out yet) or
`SourceError` (with a short `kind`: timeout, unreachable, unauthorized, rate_limited,
server_error, refused, invalid_response). Reading the answer is `shared.prices`'s; the URL is
a setting, so the same code runs against the simulated house's market.

Why not the `energyzero` package: its host is fixed (`public.api.energyzero.nl`, so it
cannot be pointed at the simulated house), it brings aiohttp and yarl next to the httpx every
other client here uses, and it cuts an answer to a day in the machine's local time zone (UTC
in a container), where the house's time zone is a setting. What it does for this service is
one GET and a list of `{start, end, price}`: `shared.prices.parse_energyzero`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

import httpx

from shared.prices import (
    NotPublishedError,
    PriceError,
    PriceSeries,
    parse_energyzero,
    parse_entsoe,
)

__all__ = [
    "EnergyZeroSource",
    "EntsoeSource",
    "PriceSource",
    "SourceError",
    "local_day",
]

#: Largest answer read (a day is ~50 kB from EnergyZero, ~15 kB from ENTSO-E).
MAX_BYTES = 4 * 1024 * 1024


class SourceError(Exception):
    """A fetch that failed: `kind` for the counters, the message for the log (no token)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class PriceSource(Protocol):
    """What the service needs of a source."""

    name: str

    async def fetch(self, day: date) -> PriceSeries: ...


def local_day(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The UTC start and end of a local day (23, 24 or 25 hours)."""
    start = datetime.combine(day, time(0), tz).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), tz).astimezone(UTC)
    return start, end


def _status_error(status: int, what: str) -> SourceError:
    if status in (401, 403):
        return SourceError("unauthorized", f"{what}: refused (HTTP {status}): check the token")
    if status == 429:
        return SourceError("rate_limited", f"{what}: too many requests (HTTP 429)")
    if status >= 500:
        return SourceError("server_error", f"{what}: server error (HTTP {status})")
    return SourceError("refused", f"{what}: refused (HTTP {status})")


async def _get(
    http: httpx.AsyncClient, url: str, params: dict[str, str], what: str
) -> httpx.Response:
    try:
        response = await http.get(url, params=params)
    except httpx.TimeoutException:
        raise SourceError("timeout", f"{what}: no answer in time") from None
    except httpx.HTTPError as err:
        raise SourceError("unreachable", f"{what}: {type(err).__name__}") from None
    if len(response.content) > MAX_BYTES:
        raise SourceError("invalid_response", f"{what}: answer larger than {MAX_BYTES} bytes")
    return response


class EnergyZeroSource:
    """EnergyZero's public REST API: `GET <url>/public/v1/prices`, per local (Dutch) day."""

    name = "energyzero"

    def __init__(self, http: httpx.AsyncClient, base_url: str, tz: ZoneInfo) -> None:
        self._http = http
        self._url = base_url.rstrip("/") + "/public/v1/prices"
        self._tz = tz

    async def fetch(self, day: date) -> PriceSeries:
        what = f"EnergyZero {day.isoformat()}"
        params = {
            "energyType": "ENERGY_TYPE_ELECTRICITY",
            "date": day.strftime("%d-%m-%Y"),
            "interval": "INTERVAL_QUARTER",
        }
        response = await _get(self._http, self._url, params, what)
        if response.status_code == 404:
            raise NotPublishedError(f"{what}: no prices (yet)")
        if response.status_code != 200:
            raise _status_error(response.status_code, what)
        series = _read(lambda: parse_energyzero(response.content), what)
        start, end = local_day(day, self._tz)
        return _day_of(series, start, end, what)


class EntsoeSource:
    """ENTSO-E's transparency platform: `GET <url>?documentType=A44&...` for one zone."""

    name = "entsoe"

    def __init__(
        self, http: httpx.AsyncClient, url: str, token: str, eic: str, tz: ZoneInfo
    ) -> None:
        self._http = http
        self._url = url
        self._token = token
        self._eic = eic
        self._tz = tz

    async def fetch(self, day: date) -> PriceSeries:
        what = f"ENTSO-E {day.isoformat()}"
        start, end = local_day(day, self._tz)
        params = {
            "securityToken": self._token,
            "documentType": "A44",
            "in_Domain": self._eic,
            "out_Domain": self._eic,
            "periodStart": start.strftime("%Y%m%d%H%M"),
            "periodEnd": end.strftime("%Y%m%d%H%M"),
        }
        response = await _get(self._http, self._url, params, what)
        if response.status_code not in (200, 400):
            raise _status_error(response.status_code, what)
        series = _read(lambda: parse_entsoe(response.content), what)
        if response.status_code == 400:  # an acknowledgement that is not "no data" raised
            raise SourceError("refused", f"{what}: refused (HTTP 400)")
        return _day_of(series, start, end, what)


def _read(parse: Callable[[], PriceSeries], what: str) -> PriceSeries:
    try:
        return parse()
    except NotPublishedError:
        raise
    except PriceError as err:
        raise SourceError("invalid_response", f"{what}: {err}") from None


def _day_of(series: PriceSeries, start: datetime, end: datetime, what: str) -> PriceSeries:
    """The part of an answer within the day (an answer may start a day early)."""
    part = series.window(start, end)
    if part is None:
        raise NotPublishedError(f"{what}: the answer has no prices for that day")
    return part
