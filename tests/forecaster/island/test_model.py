"""quartz's real model on generated weather, through the worker's seam (island environment)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from services.forecaster import worker
from services.forecaster.protocol import Site, WorkerFailure, WorkerRequest, WorkerResult
from shared.daytime import boundary_on
from shared.sky import sun_position
from tests.forecaster.fake_weather import OVERCAST, SUNNY, FakeOpenMeteo, Sky

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
LAT, LON = 52.09, 5.12
SOUTH = Site(name="South roof", latitude=LAT, longitude=LON, capacity_kwp=3.2)
WEST = Site(
    name="West roof", latitude=LAT, longitude=LON, capacity_kwp=2.0, tilt=20, orientation=270
)
MIDSUMMER = datetime(2026, 6, 21, 4, 0, tzinfo=UTC)  # 06:00 in Amsterdam


def run(
    weather: FakeOpenMeteo, ts: datetime, sites: list[Site], quartz: worker.Quartz
) -> WorkerResult:
    answer = worker.run(WorkerRequest(ts=ts, weather_url=weather.url, sites=sites), quartz)
    assert isinstance(answer, WorkerResult), answer
    return answer


def kwh(power_kw: list[float], steps: int = 96) -> float:
    return sum(power_kw[:steps]) / 4


def test_sunny_beats_overcast_and_night_is_dark(
    quartz: worker.Quartz, weather: FakeOpenMeteo
) -> None:
    sunny = run(weather, MIDSUMMER, [SOUTH], quartz).sites[0].power_kw
    weather.sky = OVERCAST
    overcast = run(weather, MIDSUMMER, [SOUTH], quartz).sites[0].power_kw
    assert len(sunny) == len(overcast) == 192  # quartz: 48 h of 15-minute steps
    assert kwh(sunny) > 12  # a clear midsummer day on 3.2 kWp
    assert kwh(overcast) < 0.6 * kwh(sunny)
    assert max(sunny) <= SOUTH.capacity_kwp
    for i, (p_sun, p_cloud) in enumerate(zip(sunny, overcast, strict=True)):
        mid = MIDSUMMER + timedelta(minutes=15 * i + 7.5)
        if sun_position(mid, LAT, LON)[0] < -3:  # night: the sun well below the horizon
            assert p_sun < 0.02, (mid, p_sun)
            assert p_cloud < 0.02, (mid, p_cloud)


def test_a_forecast_started_at_night_is_dark_until_dawn(
    quartz: worker.Quartz, weather: FakeOpenMeteo
) -> None:
    ts = datetime(2026, 6, 21, 21, 0, tzinfo=UTC)  # 23:00 in Amsterdam
    power = run(weather, ts, [SOUTH], quartz).sites[0].power_kw
    assert max(power[: 4 * 5]) < 0.02  # 21:00-02:00 UTC
    assert max(power[4 * 10 : 4 * 16]) > 1.0  # 07:00-13:00 UTC the next day


def test_combined_arrays_keep_their_names_order_and_own_geometry(
    quartz: worker.Quartz, weather: FakeOpenMeteo
) -> None:
    answer = run(weather, MIDSUMMER, [SOUTH, WEST], quartz)
    assert [s.name for s in answer.sites] == ["South roof", "West roof"]
    assert answer.start == MIDSUMMER
    south, west = (pd.Series(s.power_kw) for s in answer.sites)
    assert len(south) == len(west)
    # the west-facing array peaks later in the day than the south-facing one
    assert west[:96].idxmax() > south[:96].idxmax()
    alone = run(weather, MIDSUMMER, [SOUTH], quartz).sites[0].power_kw
    assert alone == answer.sites[0].power_kw  # each array is forecast on its own


@pytest.mark.parametrize(
    "day",
    [date(2026, 3, 28), date(2026, 3, 29), date(2026, 10, 24), date(2026, 10, 25)],
    ids=["before-spring", "spring-forward", "before-fall", "fall-back"],
)
def test_quartz_answers_in_utc_across_dst(
    quartz: worker.Quartz, weather: FakeOpenMeteo, day: date
) -> None:
    """quartz works in naive UTC: the worker labels its steps UTC, so on the DST days the
    day's production is centred on solar noon in UTC (≈ 11:30 here), whatever the local clock
    says; a step mislabelled by the DST offset would move it by an hour or two."""
    ts = boundary_on(day, AMSTERDAM, time(6, 0))
    answer = run(weather, ts, [SOUTH], quartz)
    assert answer.start == ts
    assert answer.start.utcoffset() == timedelta(0)
    day_end = boundary_on(day + timedelta(days=1), AMSTERDAM, time(6, 0))
    steps = int((day_end - ts) / timedelta(minutes=15))
    assert steps == {28: 92, 29: 96, 24: 100, 25: 96}[day.day]  # 23 h / 25 h local days
    power = answer.sites[0].power_kw[:steps]
    assert len(power) == steps
    centre_h = sum((i + 0.5) / 4 * p for i, p in enumerate(power)) / sum(power)
    centre = ts + timedelta(hours=centre_h)
    assert time(10, 50) <= centre.time() <= time(12, 10), centre


def test_a_site_over_4_kwp_is_scaled_and_nothing_of_the_callers_changes(
    quartz: worker.Quartz, weather: FakeOpenMeteo
) -> None:
    big = Site(name="Big", latitude=LAT, longitude=LON, capacity_kwp=6.0)
    four = Site(name="Four", latitude=LAT, longitude=LON, capacity_kwp=4.0)
    live = pd.DataFrame(
        {
            "timestamp": pd.date_range(
                pd.Timestamp(MIDSUMMER).tz_convert("Europe/Amsterdam") - pd.Timedelta(hours=1),
                periods=5,
                freq="15min",
            ),
            "power_kw": [0.1, 0.2, 0.3, 0.4, 0.5],
        }
    )
    before = live.copy(deep=True)
    with worker.weather_from(quartz, weather.url, 10):
        first = worker.forecast_site(quartz, big, MIDSUMMER)
        again = worker.forecast_site(quartz, big, MIDSUMMER)
        at_four = worker.forecast_site(quartz, four, MIDSUMMER)
        with_live = worker.forecast_site(quartz, big, MIDSUMMER, live_generation=live)
    pd.testing.assert_frame_equal(live, before)  # quartz rescales power_kw in place: a copy
    assert big.capacity_kwp == 6.0
    pd.testing.assert_series_equal(first, again)  # no state carried from one run to the next
    # quartz runs its model at 4 kWp and scales by 6/4
    pd.testing.assert_series_equal(first, at_four * 1.5, check_names=False)
    assert str(first.index.tz) == "UTC"
    assert first.index[0] == pd.Timestamp(MIDSUMMER)
    # the live generation (aware, in local time) reached the model: low readings at dawn
    assert with_live.sum() < 0.8 * first.sum()


def test_quartz_itself_changes_the_site_in_place(
    quartz: worker.Quartz, weather: FakeOpenMeteo
) -> None:
    """Why `forecast_site` makes a fresh PVSite for every run."""
    site = quartz.pydantic_models.PVSite(latitude=LAT, longitude=LON, capacity_kwp=6.0)
    with worker.weather_from(quartz, weather.url, 10):
        quartz.forecast.run_forecast(site=site, ts=pd.Timestamp("2026-06-21 04:00"))
    assert site.capacity_kwp == 4


def test_recent_dates_ask_icon_and_gfs_at_the_base_url_only(
    quartz: worker.Quartz,
    weather: FakeOpenMeteo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    today = datetime.now(UTC).replace(hour=4, minute=0, second=0, microsecond=0)
    answer = run(weather, today, [SOUTH], quartz)
    assert weather.paths() == ["/v1/dwd-icon", "/v1/gfs"]  # quartz's ICON, then GFS visibility
    query = weather.requests[0][1]
    assert query["start_date"] == [today.date().isoformat()]
    assert query["format"] == ["flatbuffers"]
    assert "shortwave_radiation" in query["hourly"]
    assert all(url.startswith(weather.url + "/v1/") for url in answer.weather_requests)
    assert answer.weather_model == "dwd-icon"
    assert answer.pv_model == "quartz-solar-forecast 1.2.12 gb (model-0.4.0)"
    assert list(tmp_path.iterdir()) == []  # quartz's never-expiring .cache.sqlite is not made
    # a second run fetches the weather again (no cache)
    run(weather, today, [SOUTH], quartz)
    assert len(weather.requests) == 4


def test_old_dates_use_quartz_archive_endpoint_at_the_base_url(
    quartz: worker.Quartz, weather: FakeOpenMeteo
) -> None:
    run(weather, MIDSUMMER, [SOUTH], quartz)
    assert weather.paths() == ["/v1/archive"]


def test_rewrite_url() -> None:
    icon = "https://api.open-meteo.com/v1/dwd-icon?latitude=52.09"
    archive = "https://archive-api.open-meteo.com/v1/archive?x=1"
    assert worker.rewrite_url(icon, "https://api.open-meteo.com") == icon
    assert worker.rewrite_url(archive, "https://api.open-meteo.com/") == archive
    assert (
        worker.rewrite_url(icon, "http://127.0.0.1:8099")
        == "http://127.0.0.1:8099/v1/dwd-icon?latitude=52.09"
    )
    assert (
        worker.rewrite_url(archive, "http://proxy.lan/om/") == "http://proxy.lan/om/v1/archive?x=1"
    )
    with pytest.raises(worker.WeatherError, match="not Open-Meteo"):
        worker.rewrite_url("https://example.org/v1/forecast", "http://127.0.0.1:1")


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        ("status_400", "simulated refusal"),
        ("garbage", ""),
        ("wrong_days", "covers 0 of the 26 hours"),
        ("nan", "missing values"),
    ],
)
def test_a_bad_weather_answer_is_a_weather_failure(
    quartz: worker.Quartz, weather: FakeOpenMeteo, failure: str, message: str
) -> None:
    weather.failure = failure  # type: ignore[assignment]
    answer = worker.run(WorkerRequest(ts=MIDSUMMER, weather_url=weather.url, sites=[SOUTH]), quartz)
    assert isinstance(answer, WorkerFailure)
    assert answer.kind == "weather"
    assert message in answer.error


@pytest.mark.slow
def test_no_weather_service_is_a_weather_failure(quartz: worker.Quartz) -> None:
    # quartz retries 5 times with back-off (~6 s) before giving up
    answer = worker.run(
        WorkerRequest(
            ts=MIDSUMMER, weather_url="http://127.0.0.1:9", http_timeout_s=2, sites=[SOUTH]
        ),
        quartz,
    )
    assert isinstance(answer, WorkerFailure)
    assert answer.kind == "weather"
    assert "ConnectionError" in answer.error or "Max retries" in answer.error


@pytest.mark.slow
def test_a_server_error_is_a_weather_failure_after_quartz_retries(
    quartz: worker.Quartz, weather: FakeOpenMeteo
) -> None:
    weather.failure = "status_500"
    answer = worker.run(WorkerRequest(ts=MIDSUMMER, weather_url=weather.url, sites=[SOUTH]), quartz)
    assert isinstance(answer, WorkerFailure)
    assert answer.kind == "weather"
    assert len(weather.requests) == 6  # quartz's own retries: 1 + 5


def test_a_bad_request_is_answered_not_raised() -> None:
    bad_json = worker.handle(b"not json")
    assert isinstance(bad_json, WorkerFailure)
    assert bad_json.kind == "request"
    off_grid = worker.handle(
        WorkerRequest(ts=MIDSUMMER, weather_url="http://x", sites=[SOUTH])
        .model_dump_json()
        .replace("04:00:00", "04:07:00")
        .encode()
    )
    assert isinstance(off_grid, WorkerFailure)
    assert off_grid.kind == "request"
    assert "15-minute grid" in off_grid.error


def test_sky_scenarios_differ_in_what_the_model_is_fed() -> None:
    """The generated weather itself: overcast cuts radiation, night has none."""
    from tests.forecaster.fake_weather import hourly_values

    noon = datetime(2026, 6, 21, 12, 0, tzinfo=UTC)
    sunny = hourly_values(["shortwave_radiation"], LAT, LON, noon, 1, SUNNY)
    cloudy = hourly_values(["shortwave_radiation"], LAT, LON, noon, 1, OVERCAST)
    night = hourly_values(
        ["shortwave_radiation"], LAT, LON, noon.replace(hour=1), 1, Sky("x", lambda _w: 1.0)
    )
    assert sunny["shortwave_radiation"][0] > 600
    assert cloudy["shortwave_radiation"][0] < 0.2 * sunny["shortwave_radiation"][0]
    assert night["shortwave_radiation"][0] == 0
