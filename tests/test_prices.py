"""Prices, pure: the sources' answers (recorded formats, DST days), the contract, resampling."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from shared.config import PriceSettings
from shared.messages import Prices, dump_message, parse_message
from shared.prices import (
    NotPublishedError,
    PriceFormatError,
    PriceSeries,
    Tariff,
    combine,
    dynamic_prices,
    fixed_prices,
    parse_energyzero,
    parse_entsoe,
    price_at,
    price_steps,
)

FIXTURES = Path(__file__).parent / "fixtures" / "prices"
AMS = ZoneInfo("Europe/Amsterdam")


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def local_midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), AMS).astimezone(UTC)


# --- EnergyZero ------------------------------------------------------------------------------


def test_energyzero_quarter_hours_the_bare_day_ahead_price() -> None:
    raw = json.loads(fixture("energyzero_2026-05-10_quarter.json"))
    series = parse_energyzero(fixture("energyzero_2026-05-10_quarter.json"))
    assert series.step_s == 900
    # the answer starts a day early, as EnergyZero's does; it is contiguous
    assert series.start == local_midnight(date(2026, 5, 9))
    assert series.end == local_midnight(date(2026, 5, 11))
    assert len(series.values) == 192
    assert series.values[0] == float(raw["base"][0]["price"]["value"])
    assert series.values[-1] == float(raw["base"][-1]["price"]["value"])
    # a sunny Sunday: negative at noon, the evening the dearest
    day = series.window(local_midnight(date(2026, 5, 10)), local_midnight(date(2026, 5, 11)))
    assert day is not None
    assert len(day.values) == 96
    noon = day.values[12 * 4 : 15 * 4]
    evening = day.values[19 * 4 : 21 * 4]
    assert min(noon) < 0
    assert max(evening) == max(day.values)


def test_energyzero_other_streams_and_hourly_answers() -> None:
    body = fixture("energyzero_2026-05-10_quarter.json")
    bare = parse_energyzero(body)
    with_vat = parse_energyzero(body, "base_with_vat")
    assert with_vat.values[5] == pytest.approx(bare.values[5] * 1.21, abs=1e-6)
    hourly = parse_energyzero(fixture("energyzero_2026-01-14_hour.json"))
    assert (hourly.step_s, len(hourly.values)) == (3600, 24)
    assert hourly.start == local_midnight(date(2026, 1, 14))


@pytest.mark.parametrize(
    ("name", "day", "quarters"),
    [
        ("energyzero_2026-03-29_dst_92.json", date(2026, 3, 29), 92),
        ("energyzero_2026-10-25_dst_100.json", date(2026, 10, 25), 100),
        ("entsoe_NL_2026-03-29_dst_92.xml", date(2026, 3, 29), 92),
        ("entsoe_NL_2026-10-25_dst_100.xml", date(2026, 10, 25), 100),
    ],
)
def test_dst_days_have_their_own_number_of_quarter_hours(
    name: str, day: date, quarters: int
) -> None:
    body = fixture(name)
    series = parse_energyzero(body) if name.endswith(".json") else parse_entsoe(body)
    assert series.step_s == 900
    assert len(series.values) == quarters
    assert series.start == local_midnight(day)
    assert series.end == local_midnight(day + timedelta(days=1))
    # the published message covers them on the same grid
    prices = dynamic_prices(
        series, Tariff(), source="entsoe", area="NL", made_at=series.start, now=series.start
    )
    assert parse_message(Prices, dump_message(prices)).end == series.end


def test_energyzero_without_prices_yet_is_not_published() -> None:
    with pytest.raises(NotPublishedError):
        parse_energyzero(fixture("energyzero_not_yet.json"))


def _broken_energyzero(change: str) -> bytes:
    data = json.loads(fixture("energyzero_2026-03-29_dst_92.json"))
    base = data["base"]
    if change == "gap":
        del base[10]
    elif change == "lengths":
        base[3]["end"] = "2026-03-29T01:00:00Z"  # a 15-min step made 30 min
    elif change == "text":
        base[2]["price"]["value"] = "n/a"
    elif change == "huge":
        base[2]["price"]["value"] = "12345.6"
    elif change == "bool":
        base[2]["price"]["value"] = True
    elif change == "naive":
        base[2]["start"] = "2026-03-28T23:30:00"
    elif change == "backwards":
        base[2]["end"] = base[2]["start"]
    elif change == "no-stream":
        del data["base"]
    elif change == "not-list":
        data["base"] = {"a": 1}
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    "change",
    ["gap", "lengths", "text", "huge", "bool", "naive", "backwards", "no-stream", "not-list"],
)
def test_energyzero_answers_that_are_not_usable(change: str) -> None:
    with pytest.raises(PriceFormatError):
        parse_energyzero(_broken_energyzero(change))


@pytest.mark.parametrize("body", [b"", b"<html>502</html>", b"[1, 2]", b"[" * 5000, b"null"])
def test_energyzero_garbage_is_a_format_error(body: bytes) -> None:
    with pytest.raises(PriceFormatError):
        parse_energyzero(body)


# --- ENTSO-E ---------------------------------------------------------------------------------


def test_entsoe_two_days_in_one_answer_with_a03_points_left_out() -> None:
    body = fixture("entsoe_NL_2026-06-20_two_days.xml")
    series = parse_entsoe(body)
    assert series.step_s == 900
    assert series.start == local_midnight(date(2026, 6, 20))
    assert len(series.values) == 192
    text = body.decode()
    # the first day's TimeSeries leaves out positions (A03): they repeat the one before
    first = text.split("<TimeSeries>")[1]
    positions = [int(p.split("</position>")[0]) for p in first.split("<position>")[1:]]
    assert len(positions) < 96
    missing = sorted(set(range(1, 97)) - set(positions))
    assert missing
    for position in missing:
        assert series.values[position - 1] == series.values[position - 2]
    # EUR/MWh → EUR/kWh
    amount = float(first.split("<price.amount>")[1].split("<")[0])
    assert series.values[0] == pytest.approx(amount / 1000)
    assert min(series.values) < 0  # a sunny noon


def test_entsoe_takes_the_quarter_hours_when_an_hourly_series_comes_too() -> None:
    series = parse_entsoe(fixture("entsoe_DE-LU_2026-02-11_60_and_15.xml"))
    assert (series.step_s, len(series.values)) == (900, 96)


def test_entsoe_no_data_yet_and_refusals() -> None:
    with pytest.raises(NotPublishedError, match="No matching data"):
        parse_entsoe(fixture("entsoe_no_data.xml"))
    with pytest.raises(PriceFormatError, match="not a Publication_MarketDocument"):
        parse_entsoe(fixture("entsoe_unauthorized.html"))
    refused = fixture("entsoe_no_data.xml").replace(b"<code>999</code>", b"<code>401</code>")
    with pytest.raises(PriceFormatError, match="reason 401"):
        parse_entsoe(refused)
    # 999 is the platform's code for most refusals: only "No matching data" is "not yet"
    other = fixture("entsoe_no_data.xml").replace(b"No matching data found", b"Invalid query")
    with pytest.raises(PriceFormatError, match="reason 999"):
        parse_entsoe(other)


def test_entsoe_refuses_entity_expansion_and_broken_xml() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><Publication_MarketDocument>&lol2;'
        b"</Publication_MarketDocument>"
    )
    with pytest.raises(PriceFormatError, match="DOCTYPE"):
        parse_entsoe(bomb)
    with pytest.raises(PriceFormatError, match="not XML"):
        parse_entsoe(b"<Publication_MarketDocument><TimeSeries>")


def _entsoe_variant(old: bytes, new: bytes) -> bytes:
    body = fixture("entsoe_NL_2026-06-20_two_days.xml")
    assert old in body
    return body.replace(old, new, 1)


@pytest.mark.parametrize(
    ("old", "new", "why"),
    [
        (b"<curveType>A03</curveType>", b"<curveType>A01</curveType>", "no price at position"),
        (b"<currency_Unit.name>EUR", b"<currency_Unit.name>PLN", "not EUR/MWH"),
        (b"<resolution>PT15M</resolution>", b"<resolution>PT7X</resolution>", "resolution"),
        (b"<resolution>PT15M</resolution>", b"<resolution>PT7M</resolution>", "whole number"),
        (b"<position>1</position>", b"<position>0</position>", "outside"),
        (b"<price.amount>", b"<price.amount>x", "not a number"),
    ],
)
def test_entsoe_documents_that_are_not_usable(old: bytes, new: bytes, why: str) -> None:
    with pytest.raises(PriceFormatError, match=why):
        parse_entsoe(_entsoe_variant(old, new))


# --- combining, the contract -----------------------------------------------------------------


def test_combine_today_hourly_and_tomorrow_quarter_hourly() -> None:
    t0 = datetime(2026, 6, 19, 22, tzinfo=UTC)
    today = PriceSeries(t0, 3600, tuple(float(i) for i in range(24)))
    tomorrow = PriceSeries(t0 + timedelta(days=1), 900, tuple(100.0 + i for i in range(96)))
    both = combine([tomorrow, today])
    assert both is not None
    assert both.step_s == 900
    assert len(both.values) == 96 + 96
    assert both.values[:5] == (0.0, 0.0, 0.0, 0.0, 1.0)
    assert both.values[96] == 100.0
    # an overlap: the later part wins; a gap ends the series
    fix = PriceSeries(t0 + timedelta(hours=2), 900, (-1.0,))
    assert combine([today, fix]).values[8] == -1.0  # type: ignore[union-attr]
    far = PriceSeries(t0 + timedelta(days=3), 900, (5.0,))
    assert combine([today, far]).end == today.end  # type: ignore[union-attr]
    assert combine([]) is None


def test_tariff_from_settings_and_the_formulas() -> None:
    tariff = Tariff.from_settings(PriceSettings())
    # (day-ahead + markup + energy tax) x VAT; export day-ahead − feed-in fee
    assert tariff.import_price(0.10) == pytest.approx((0.10 + 0.02 + 0.0916) * 1.21)
    assert tariff.import_price(-0.40) < 0  # paid to consume at a very negative price
    assert tariff.export_price(-0.03) == pytest.approx(-0.05)
    assert tariff.fixed_export_price == pytest.approx(0.05)


def test_dynamic_and_fixed_prices_messages() -> None:
    series = parse_entsoe(fixture("entsoe_NL_2026-06-20_two_days.xml"))
    now = series.start + timedelta(hours=14)
    tariff = Tariff()
    msg = dynamic_prices(series, tariff, source="entsoe", area="NL", made_at=now, now=now)
    assert msg.day_ahead_eur_kwh is not None
    assert msg.import_eur_kwh[40] == pytest.approx(tariff.import_price(series.values[40]), 1e-5)
    assert msg.export_eur_kwh[40] == pytest.approx(series.values[40] - 0.02, abs=1e-6)
    assert (msg.source, msg.fallback, msg.area) == ("entsoe", False, "NL")
    flat = fixed_prices(series.start, series.end, tariff, now=now, fallback=True)
    assert (flat.source, flat.fallback, flat.step_s, len(flat.import_eur_kwh)) == (
        "fixed",
        True,
        900,
        192,
    )
    assert set(flat.import_eur_kwh) == {0.27}
    assert set(flat.export_eur_kwh) == {0.05}
    assert flat.day_ahead_eur_kwh is None


# --- resampling ------------------------------------------------------------------------------


def _prices(values: list[float], start: datetime, step_s: int = 900) -> Prices:
    return Prices(
        timestamp=start,
        start=start,
        step_s=step_s,
        import_eur_kwh=values,
        export_eur_kwh=[v / 2 for v in values],
        source="entsoe",
        made_at=start,
    )


T0 = datetime(2026, 6, 20, 22, tzinfo=UTC)


def test_price_steps_on_the_same_grid_and_finer_and_coarser() -> None:
    prices = _prices([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], T0)
    same = price_steps(prices, T0, 900, 8)
    assert same.import_eur_kwh == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert same.export_eur_kwh[1] == 0.1
    assert same.estimated == 0
    five = price_steps(prices, T0, 300, 6)
    assert five.import_eur_kwh == [0.1, 0.1, 0.1, 0.2, 0.2, 0.2]
    hour = price_steps(prices, T0, 3600, 2)
    assert hour.import_eur_kwh == pytest.approx([0.25, 0.65])
    # a plan starting mid-step (now is 22:05): overlap-weighted means
    mid = price_steps(prices, T0 + timedelta(minutes=5), 900, 2)
    want = [(0.1 * 10 + 0.2 * 5) / 15, (0.2 * 10 + 0.3 * 5) / 15]
    assert mid.import_eur_kwh == pytest.approx(want, abs=1e-6)


def test_price_steps_beyond_the_prices_take_the_day_before() -> None:
    # one day of prices; the plan runs 2 h past it: those steps copy the day before
    values = [round(0.01 * (k % 96), 4) for k in range(96)]
    prices = _prices(values, T0)
    start = T0 + timedelta(hours=23)
    got = price_steps(prices, start, 900, 12)
    assert got.import_eur_kwh[:4] == values[92:96]
    assert got.import_eur_kwh[4:] == values[0:8]
    assert got.estimated == 8
    # a plan before the prices take the day after; far away: the nearest price
    before = price_steps(prices, T0 - timedelta(hours=1), 900, 4)
    assert before.import_eur_kwh == values[92:96]
    assert before.estimated == 4
    far = price_steps(prices, T0 + timedelta(days=30), 900, 1)
    assert far.import_eur_kwh == [values[-1]]


def test_price_at() -> None:
    prices = _prices([0.1, 0.2], T0)
    assert price_at(prices, T0 + timedelta(minutes=20)) == (0.2, 0.1)
    assert price_at(prices, T0 - timedelta(seconds=1)) is None
    assert price_at(prices, T0 + timedelta(minutes=30)) is None
