"""The simulated house's day-ahead market: its days' shape, and its answers read by the same
parsers that read EnergyZero and ENTSO-E (pure, then over HTTP from a running simulator)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from services.simulator.house import CloudySky
from services.simulator.market import (
    MarketRequestError,
    day_prices,
    energyzero_answer,
    entsoe_answer,
    published,
)
from services.simulator.server import Simulator
from services.simulator.settings import SimulatorSettings
from shared.clock import ManualClock
from shared.prices import NotPublishedError, PriceFormatError, parse_energyzero, parse_entsoe
from shared.sky import PanelArray
from tests.test_simulator import devices

AMS = ZoneInfo("Europe/Amsterdam")
ARRAYS = [PanelArray(52.1, 5.2, 4.0)]
CLEAR = CloudySky(seed=1, cloudiness=0.1)
GREY = CloudySky(seed=1, cloudiness=0.95)


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), AMS).astimezone(UTC)


def by_hour(day: date, sky: CloudySky) -> dict[int, float]:
    """Mean EUR/MWh per local hour."""
    sums: dict[int, list[float]] = {}
    for t, p in day_prices(day, AMS, sky, ARRAYS):
        sums.setdefault(t.astimezone(AMS).hour, []).append(p)
    return {h: sum(v) / len(v) for h, v in sums.items()}


def test_a_clear_summer_day_negative_noon_evening_peak_cheap_night() -> None:
    hours = by_hour(date(2026, 6, 21), CLEAR)
    assert min(hours[12], hours[13], hours[14]) < 0
    assert hours[20] == max(hours.values())
    assert hours[3] < hours[20]
    assert hours[7] > hours[12] + 50
    # grey summer day: the noon dip stays shallow
    assert by_hour(date(2026, 6, 21), GREY)[13] > 30


def test_a_winter_day_has_no_negative_noon_and_a_dear_evening() -> None:
    hours = by_hour(date(2026, 1, 14), CLEAR)
    assert min(hours.values()) > 0
    assert hours[18] > 1.5 * hours[3]


def test_dst_days_and_determinism() -> None:
    assert len(day_prices(date(2026, 3, 29), AMS, CLEAR, ARRAYS)) == 92
    assert len(day_prices(date(2026, 10, 25), AMS, CLEAR, ARRAYS)) == 100
    assert len(day_prices(date(2026, 7, 1), AMS, CLEAR, ARRAYS)) == 96
    a = day_prices(date(2026, 7, 1), AMS, CLEAR, ARRAYS, seed=3)
    assert a == day_prices(date(2026, 7, 1), AMS, CLEAR, ARRAYS, seed=3)
    assert a != day_prices(date(2026, 7, 1), AMS, CLEAR, ARRAYS, seed=4)
    assert day_prices(date(2026, 7, 1), AMS, CLEAR, [])  # no arrays: the middle of NL's sun


def test_tomorrow_is_published_at_13_local() -> None:
    day = date(2026, 6, 21)
    before = datetime(2026, 6, 20, 12, 59, tzinfo=AMS)
    after = datetime(2026, 6, 20, 13, 0, tzinfo=AMS)
    assert published(date(2026, 6, 20), before, AMS)
    assert published(date(2026, 6, 1), before, AMS)
    assert not published(day, before, AMS)
    assert published(day, after, AMS)
    assert not published(day + timedelta(days=1), after, AMS)


def test_energyzero_answer_reads_as_energyzero() -> None:
    day = date(2026, 6, 21)
    now = datetime(2026, 6, 21, 9, tzinfo=AMS)
    query = {
        "energyType": "ENERGY_TYPE_ELECTRICITY",
        "date": "21-06-2026",
        "interval": "INTERVAL_QUARTER",
    }
    series = parse_energyzero(json.dumps(energyzero_answer(query, now, AMS, CLEAR, ARRAYS)))
    want = day_prices(day, AMS, CLEAR, ARRAYS)
    assert series.start == midnight(day)
    assert series.values == pytest.approx([p / 1000 for _, p in want], abs=1e-7)
    hourly = energyzero_answer({**query, "interval": "INTERVAL_HOUR"}, now, AMS, CLEAR, ARRAYS)
    assert len(hourly["base"]) == 24
    assert hourly["interval"] == 2
    later = energyzero_answer({**query, "date": "22-06-2026"}, now, AMS, CLEAR, ARRAYS)
    with pytest.raises(NotPublishedError):
        parse_energyzero(json.dumps(later))
    for bad in ({**query, "date": "2026-06-21"}, {**query, "energyType": "GAS"}, {}):
        with pytest.raises(MarketRequestError):
            energyzero_answer(bad, now, AMS, CLEAR, ARRAYS)


def test_entsoe_answer_reads_as_entsoe() -> None:
    now = datetime(2026, 6, 20, 14, tzinfo=AMS)  # tomorrow is out
    query = {
        "documentType": "A44",
        "in_Domain": "10YNL----------L",
        "out_Domain": "10YNL----------L",
        "periodStart": midnight(date(2026, 6, 20)).strftime("%Y%m%d%H%M"),
        "periodEnd": midnight(date(2026, 6, 22)).strftime("%Y%m%d%H%M"),
    }
    series = parse_entsoe(entsoe_answer(query, now, AMS, CLEAR, ARRAYS))
    assert (series.start, len(series.values)) == (midnight(date(2026, 6, 20)), 192)
    want = [p / 1000 for d in (20, 21) for _, p in day_prices(date(2026, 6, d), AMS, CLEAR, ARRAYS)]
    assert series.values == pytest.approx(want, abs=1e-9)
    early = datetime(2026, 6, 20, 12, tzinfo=AMS)
    assert len(parse_entsoe(entsoe_answer(query, early, AMS, CLEAR, ARRAYS)).values) == 96
    ahead = {
        **query,
        "periodStart": midnight(date(2026, 6, 23)).strftime("%Y%m%d%H%M"),
        "periodEnd": midnight(date(2026, 6, 24)).strftime("%Y%m%d%H%M"),
    }
    with pytest.raises(NotPublishedError):
        parse_entsoe(entsoe_answer(ahead, now, AMS, CLEAR, ARRAYS))
    for bad in (
        {**query, "documentType": "A65"},
        {**query, "out_Domain": "x"},
        {**query, "periodEnd": "2026"},
    ):
        with pytest.raises(MarketRequestError):
            entsoe_answer(bad, now, AMS, CLEAR, ARRAYS)


# --- over HTTP --------------------------------------------------------------------------------

NOON = datetime(2026, 6, 21, 10, 0, tzinfo=UTC)  # 12:00 in Amsterdam


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    settings = SimulatorSettings(seed=5, cloudiness=0.1)
    async with Simulator(
        devices(batteries=1, sockets=1),
        clock=ManualClock(NOON),
        settings=settings,
        state_dir=tmp_path,
    ) as simulator:
        yield simulator


async def test_the_simulator_serves_both_sources(sim: Simulator) -> None:
    info = sim.info()
    assert info["energyzero_url"] == sim.energyzero_url
    async with httpx.AsyncClient(timeout=5) as http:
        ez = await http.get(
            f"{sim.energyzero_url}/public/v1/prices",
            params={
                "energyType": "ENERGY_TYPE_ELECTRICITY",
                "date": "21-06-2026",
                "interval": "INTERVAL_QUARTER",
            },
        )
        assert ez.status_code == 200
        series = parse_energyzero(ez.content)
        assert series.start == midnight(date(2026, 6, 21))
        assert min(series.values) < 0
        period = {
            "documentType": "A44",
            "in_Domain": "10YNL----------L",
            "out_Domain": "10YNL----------L",
            "periodStart": "202606202200",
            "periodEnd": "202606222200",
        }
        es = await http.get(sim.entsoe_url, params={**period, "securityToken": "t"})
        assert es.status_code == 200
        assert len(parse_entsoe(es.content).values) == 96  # 12:00: tomorrow not out yet
        assert (await http.get(sim.entsoe_url, params=period)).status_code == 401
        bad = await http.get(
            sim.entsoe_url, params={**period, "documentType": "A1", "securityToken": "t"}
        )
        assert bad.status_code == 400
        with pytest.raises(PriceFormatError):
            parse_entsoe(bad.content)
        # the market goes down and comes back
        down = await http.post(f"{sim.control_url}/market", json={"down": True})
        assert down.json() == {"market_down": True}
        assert (
            await http.get(sim.entsoe_url, params={**period, "securityToken": "t"})
        ).status_code == 503
        assert (await http.post(f"{sim.control_url}/market", json={"down": "x"})).status_code == 400
        await http.post(f"{sim.control_url}/market", json={"down": False})
        ok = await http.get(
            f"{sim.energyzero_url}/public/v1/prices",
            params={"energyType": "ENERGY_TYPE_ELECTRICITY", "date": "21-06-2026"},
        )
        assert ok.status_code == 200
