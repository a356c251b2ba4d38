"""The simulated house's day-ahead market: prices for its own days, in the sources' formats.

Pure (no I/O, no clock). `day_prices` gives the day-ahead price per 15 minutes of one local
day of the house, shaped like a Dutch day and tied to the house's own sky: cheap nights, a
morning and an evening peak, and at noon a dip as deep as the day's sun is strong (negative
on a clear summer day, hardly any in winter), plus a seeded wobble. A DST day has 92 or 100
quarter-hours, as the real market's.

Like the real market, the next day's prices are known from 13:00 local time
(`published`); a day later than that is never known. Two answers, in the sources' own
formats, so the prices service's clients run against the simulator unchanged:

* `energyzero_answer`: EnergyZero's `GET /public/v1/prices?energyType=ENERGY_TYPE_ELECTRICITY
  &date=DD-MM-YYYY&interval=INTERVAL_QUARTER|INTERVAL_HOUR` (streams `base`,
  `base_with_vat`, `all_in`, `all_in_with_vat`; empty streams for a day not published yet);
* `entsoe_answer`: ENTSO-E's A44 `Publication_MarketDocument` (one TimeSeries per day, PT15M,
  curve A03: a point repeating the one before left out), or an `Acknowledgement_MarketDocument`
  with reason 999 when none of the period is published.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from services.simulator.house import CloudySky
from shared.sky import PanelArray, clear_sky_power_w

__all__ = [
    "PUBLISH_AT",
    "QUARTER_S",
    "MarketRequestError",
    "acknowledgement",
    "day_prices",
    "energyzero_answer",
    "entsoe_answer",
    "published",
]

QUARTER_S = 900
#: The next day's prices are out from this local time on.
PUBLISH_AT = time(13, 0)
#: EnergyZero's own all-in parts in its answer (markup, energy tax, EUR/kWh excl. VAT).
_EZ_MARKUP = 0.0182
_EZ_TAX = 0.0916
_ENTSOE_NS = "urn:iec62325.351:tc57wg16:451-3:publicationdocument:7:3"
_ACK_NS = "urn:iec62325.351:tc57wg16:451-1:acknowledgementdocument:7:0"
#: Where the market's sun is taken when the house has no arrays (the middle of NL).
_DEFAULT_ARRAY = PanelArray(latitude=52.1, longitude=5.2, capacity_kwp=1.0)


class MarketRequestError(ValueError):
    """A request the market cannot answer (one line)."""


def _local_day(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), tz).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), tz).astimezone(UTC)
    return start, end


def published(day: date, now: datetime, tz: ZoneInfo) -> bool:
    """Whether the prices of local `day` are known at `now` (today's and earlier always;
    tomorrow's from 13:00 local time)."""
    local = now.astimezone(tz)
    today = local.date()
    if day <= today:
        return True
    return day == today + timedelta(days=1) and local.time() >= PUBLISH_AT


def _solar_share(when: datetime, arrays: Sequence[PanelArray]) -> float:
    """The sun at `when` as a share (0..1) of a clear summer noon."""
    array = arrays[0] if arrays else _DEFAULT_ARRAY
    flat = PanelArray(array.latitude, array.longitude, 1.0, tilt=35.0, orientation=180.0)
    return min(1.0, clear_sky_power_w(when, flat) / 900.0)


def day_prices(
    day: date, tz: ZoneInfo, sky: CloudySky, arrays: Sequence[PanelArray], seed: int = 0
) -> list[tuple[datetime, float]]:
    """(UTC start, EUR/MWh) per quarter-hour of local `day` (92, 96 or 100 of them)."""
    start, end = _local_day(day, tz)
    rnd = random.Random((seed * 7_368_787 + day.toordinal() * 104_729) & 0x7FFF_FFFF)
    season = math.cos((day.timetuple().tm_yday - 172) / 365 * 2 * math.pi)  # 1 June, -1 Dec
    clear = 1.0 - 0.85 * sky.cloudiness_on(day)
    base = 86.0 - 6.0 * season + rnd.gauss(0, 6)
    evening_at = 19.5 + 1.0 * season
    out: list[tuple[datetime, float]] = []
    t = start
    while t < end:
        local = t.astimezone(tz)
        hour = local.hour + local.minute / 60 + 0.125
        night = -14.0 * math.exp(-(((hour - 3.5) / 2.2) ** 2))
        morning = (40.0 - 12.0 * season) * math.exp(-(((hour - 8.0) / 1.1) ** 2))
        evening = (85.0 - 20.0 * season) * math.exp(-(((hour - evening_at) / 1.5) ** 2))
        solar = (150.0 + 40.0 * season) * clear * _solar_share(t + timedelta(minutes=7.5), arrays)
        ramp = (local.minute // 15 - 1.5) * 1.8 * (1 if 6 <= local.hour < 12 else -1)
        price = base + night + morning + evening - solar + ramp + rnd.gauss(0, 2.5)
        out.append((t, round(price, 2)))
        t += timedelta(seconds=QUARTER_S)
    return out


# --- EnergyZero -----------------------------------------------------------------------------


def _z(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _decimal(value: float) -> str:
    text = f"{value:.7f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def energyzero_answer(
    query: dict[str, str],
    now: datetime,
    tz: ZoneInfo,
    sky: CloudySky,
    arrays: Sequence[PanelArray],
    seed: int = 0,
) -> dict[str, Any]:
    """EnergyZero's answer to `GET /public/v1/prices` (MarketRequestError for a bad query)."""
    if query.get("energyType") != "ENERGY_TYPE_ELECTRICITY":
        raise MarketRequestError("energyType: only ENERGY_TYPE_ELECTRICITY is simulated")
    interval = query.get("interval", "INTERVAL_QUARTER")
    if interval not in ("INTERVAL_QUARTER", "INTERVAL_HOUR"):
        raise MarketRequestError("interval: INTERVAL_QUARTER or INTERVAL_HOUR")
    try:
        day = datetime.strptime(query.get("date", ""), "%d-%m-%Y").date()
    except ValueError:
        raise MarketRequestError("date: DD-MM-YYYY") from None
    start, end = _local_day(day, tz)
    quarters = day_prices(day, tz, sky, arrays, seed) if published(day, now, tz) else []
    step = QUARTER_S
    if interval == "INTERVAL_HOUR" and quarters:
        step = 3600
        quarters = [
            (quarters[i][0], round(sum(p for _, p in quarters[i : i + 4]) / 4, 2))
            for i in range(0, len(quarters), 4)
        ]
    streams: dict[str, list[dict[str, Any]]] = {
        "base": [],
        "base_with_vat": [],
        "all_in": [],
        "all_in_with_vat": [],
    }
    for t, mwh in quarters:
        kwh = mwh / 1000
        span = {"start": _z(t), "end": _z(t + timedelta(seconds=step))}
        for name, value in (
            ("base", kwh),
            ("base_with_vat", kwh * 1.21),
            ("all_in", kwh + _EZ_MARKUP + _EZ_TAX),
            ("all_in_with_vat", (kwh + _EZ_MARKUP + _EZ_TAX) * 1.21),
        ):
            streams[name].append({**span, "price": {"value": _decimal(value)}})
    return {
        "interval": 1 if step == QUARTER_S else 2,
        "range": {"start": _z(start), "end": _z(end)},
        **streams,
    }


# --- ENTSO-E ----------------------------------------------------------------------------------


def _entsoe_time(text: str, name: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y%m%d%H%M").replace(tzinfo=UTC)
    except ValueError:
        raise MarketRequestError(f"{name}: yyyyMMddHHmm (UTC)") from None


def _zz(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def acknowledgement(text: str, now: datetime) -> str:
    """The platform's 'nothing found' (reason 999) document."""
    safe = text.replace("&", "&amp;").replace("<", "&lt;")
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<Acknowledgement_MarketDocument xmlns="{_ACK_NS}">\n'
        f"\t<mRID>sim-{now.strftime('%Y%m%d%H%M%S')}</mRID>\n"
        f"\t<createdDateTime>{_z(now)}</createdDateTime>\n"
        "\t<Reason>\n\t\t<code>999</code>\n"
        f"\t\t<text>{safe}</text>\n\t</Reason>\n"
        "</Acknowledgement_MarketDocument>\n"
    )


def entsoe_answer(
    query: dict[str, str],
    now: datetime,
    tz: ZoneInfo,
    sky: CloudySky,
    arrays: Sequence[PanelArray],
    seed: int = 0,
) -> str:
    """ENTSO-E's answer to an A44 request (MarketRequestError for a bad query)."""
    if query.get("documentType") != "A44":
        raise MarketRequestError("documentType: only A44 (day-ahead prices) is simulated")
    area = query.get("in_Domain", "")
    if not area or query.get("out_Domain") != area:
        raise MarketRequestError("in_Domain and out_Domain: the same bidding zone")
    begin = _entsoe_time(query.get("periodStart", ""), "periodStart")
    finish = _entsoe_time(query.get("periodEnd", ""), "periodEnd")
    if finish <= begin or finish - begin > timedelta(days=370):
        raise MarketRequestError("periodEnd must be after periodStart, within a year")
    series: list[str] = []
    day = begin.astimezone(tz).date()
    while True:
        start, end = _local_day(day, tz)
        if start >= finish:
            break
        if end > begin and published(day, now, tz):
            prices = [p for _, p in day_prices(day, tz, sky, arrays, seed)]
            series.append(_timeseries(len(series) + 1, area, start, end, prices))
        day += timedelta(days=1)
    if not series:
        return acknowledgement(
            f"No matching data found for Data item Energy Prices [12.1.D] ({area}, {area}) "
            f"and interval {_zz(begin)}/{_zz(finish)}.",
            now,
        )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<Publication_MarketDocument xmlns="{_ENTSOE_NS}">\n'
        f"\t<mRID>sim-{begin.strftime('%Y%m%d%H%M')}</mRID>\n"
        "\t<revisionNumber>1</revisionNumber>\n\t<type>A44</type>\n"
        '\t<sender_MarketParticipant.mRID codingScheme="A01">10X1001A1001A450'
        "</sender_MarketParticipant.mRID>\n"
        f"\t<createdDateTime>{_z(now)}</createdDateTime>\n"
        f"\t<period.timeInterval>\n\t\t<start>{_zz(begin)}</start>\n"
        f"\t\t<end>{_zz(finish)}</end>\n\t</period.timeInterval>\n"
        + "".join(series)
        + "</Publication_MarketDocument>\n"
    )


def _timeseries(
    mrid: int, area: str, start: datetime, end: datetime, prices: Sequence[float]
) -> str:
    points: list[str] = []
    previous: float | None = None
    for position, price in enumerate(prices, 1):
        if price == previous:  # curve A03: a repeat is left out
            continue
        previous = price
        points.append(
            f"\t\t\t<Point>\n\t\t\t\t<position>{position}</position>\n"
            f"\t\t\t\t<price.amount>{price:g}</price.amount>\n\t\t\t</Point>\n"
        )
    return (
        f"\t<TimeSeries>\n\t\t<mRID>{mrid}</mRID>\n\t\t<auction.type>A01</auction.type>\n"
        "\t\t<businessType>A62</businessType>\n"
        f'\t\t<in_Domain.mRID codingScheme="A01">{area}</in_Domain.mRID>\n'
        f'\t\t<out_Domain.mRID codingScheme="A01">{area}</out_Domain.mRID>\n'
        "\t\t<currency_Unit.name>EUR</currency_Unit.name>\n"
        "\t\t<price_Measure_Unit.name>MWH</price_Measure_Unit.name>\n"
        "\t\t<curveType>A03</curveType>\n\t\t<Period>\n"
        f"\t\t\t<timeInterval>\n\t\t\t\t<start>{_zz(start)}</start>\n"
        f"\t\t\t\t<end>{_zz(end)}</end>\n\t\t\t</timeInterval>\n"
        "\t\t\t<resolution>PT15M</resolution>\n" + "".join(points) + "\t\t</Period>\n"
        "\t</TimeSeries>\n"
    )
