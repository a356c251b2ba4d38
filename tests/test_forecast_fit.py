"""The scaled forecast shift: the fit of the measured surplus on the forecast (pure logic), the
planning problem made on it, the books that keep it over a restart, and the scheduler feeding it."""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timedelta

import pytest

from services.scheduler.logic import (
    FIT_MIN_WEIGHT_S,
    FIT_SAMPLE_MAX_S,
    FIT_SCALE_MAX,
    FIT_SCALE_MIN,
    Baseline,
    ForecastFit,
    PlanContext,
    Prepared,
    ShiftOptions,
    books_message,
    fit_line,
    forecast_at,
    plan_message,
    prepare,
    resample,
    restore_books,
    shift_profile,
    update_fit,
)
from shared import bookkeeping
from shared.clock import ManualClock
from shared.config import Settings
from shared.messages import (
    EnergyBooks,
    MessageError,
    PlanMessage,
    dump_message,
    parse_message,
)
from shared.planning.reference import plan_reference
from tests.test_scheduler import (
    AMS,
    DAY0,
    DEVICES,
    SIX,
    T0,
    make_forecast,
    make_scheduler,
    make_surplus,
)

SCALED = PlanContext(
    tz=AMS, boundary=SIX, step_s=900, switch_interval_s=300, shift=ShiftOptions(mode="scaled")
)
FADING = PlanContext(
    tz=AMS, boundary=SIX, step_s=900, switch_interval_s=300, shift=ShiftOptions(mode="fading")
)


def fed(scale: float, offset: float, until: datetime = T0, every_s: int = 60) -> ForecastFit:
    """The fit fed every `every_s` from the boundary to `until` with measurements exactly
    `scale · forecast + offset`."""
    forecast = make_forecast()
    fit: ForecastFit | None = None
    at = DAY0
    while at <= until:
        pv = forecast_at(forecast, at)
        fit = update_fit(fit, at, pv, scale * pv + offset, 43_200.0)
        at += timedelta(seconds=every_s)
    assert fit is not None
    return fit


# --- the fit ---------------------------------------------------------------------------------


def test_the_fit_finds_a_forecast_that_runs_low() -> None:
    fit = fed(1.3, -250.0)
    got = fit_line(fit)
    assert got is not None
    k, c = got
    # the ridge pulls k a little towards 1: the forecast varied by ~1 kW, the prior 200 W
    assert 1.25 < k < 1.3
    assert c == pytest.approx(fit.measured_w - k * fit.forecast_w)
    # where the forecast is, the fitted line is close to what was measured
    pv = forecast_at(make_forecast(), T0)
    assert k * pv + c == pytest.approx(1.3 * pv - 250.0, rel=0.03)


def test_the_fit_of_a_right_forecast_is_one_and_the_house_load() -> None:
    k, c = fit_line(fed(1.0, -300.0)) or (0.0, 0.0)
    assert k == pytest.approx(1.0)
    assert c == pytest.approx(-300.0)


def test_a_flat_forecast_gives_no_scale_only_the_offset() -> None:
    # a night: no PV forecast, the house's load measured
    fit: ForecastFit | None = None
    for minute in range(120):
        fit = update_fit(fit, DAY0 + timedelta(minutes=minute), 0.0, -200.0 - minute, 43_200.0)
    got = fit_line(fit)
    assert got is not None
    assert got[0] == pytest.approx(1.0)
    assert got[1] == pytest.approx(fit.measured_w if fit else 0.0)
    assert -320.0 < got[1] < -200.0


def test_the_scale_is_kept_within_its_range() -> None:
    high = fed(5.0, 0.0)
    assert fit_line(high) == (FIT_SCALE_MAX, high.measured_w - FIT_SCALE_MAX * high.forecast_w)
    low = fit_line(fed(0.1, 0.0))
    assert low is not None
    assert low[0] == FIT_SCALE_MIN


def test_no_fit_before_enough_measurements() -> None:
    assert fit_line(None) is None
    short = fed(1.3, 0.0, until=DAY0 + timedelta(seconds=FIT_MIN_WEIGHT_S - 120))
    assert short.weight_s < FIT_MIN_WEIGHT_S
    assert fit_line(short) is None
    assert fit_line(fed(1.3, 0.0, until=DAY0 + timedelta(seconds=FIT_MIN_WEIGHT_S + 120)))


def test_old_or_impossible_pairs_are_ignored() -> None:
    fit = fed(1.2, 0.0)
    assert update_fit(fit, fit.at, 500.0, 9_999.0, 43_200.0) is fit  # the same time
    assert update_fit(fit, fit.at - timedelta(minutes=1), 500.0, 9_999.0, 43_200.0) is fit
    later = fit.at + timedelta(minutes=1)
    assert update_fit(fit, later, math.nan, 0.0, 43_200.0) is fit
    assert update_fit(fit, later, 0.0, math.inf, 43_200.0) is fit
    assert update_fit(fit, later, 1e308, -1e308, 43_200.0) is fit  # its squares overflow
    assert update_fit(None, later, math.nan, 0.0, 43_200.0) is None


def test_a_gap_counts_no_more_than_a_few_polls() -> None:
    fit = fed(1.0, -300.0)
    # a restart six hours later: the old measurements fade, the new one weighs at most 5 min
    after = update_fit(fit, fit.at + timedelta(hours=6), 3000.0, 0.0, 43_200.0)
    assert after is not None
    assert after.weight_s == pytest.approx(fit.weight_s * math.exp(-0.5) + FIT_SAMPLE_MAX_S)
    share = FIT_SAMPLE_MAX_S / after.weight_s
    assert after.measured_w == pytest.approx(fit.measured_w + share * (0.0 - fit.measured_w))


def test_the_fit_does_not_depend_on_how_often_the_surplus_comes() -> None:
    every_10s = fit_line(fed(1.3, -250.0, every_s=10))
    every_60s = fit_line(fed(1.3, -250.0, every_s=60))
    assert every_10s is not None
    assert every_60s is not None
    assert every_10s[0] == pytest.approx(every_60s[0], abs=0.01)
    assert every_10s[1] == pytest.approx(every_60s[1], abs=15.0)


# --- the planning problem ----------------------------------------------------------------------


def prepared_at(
    ctx: PlanContext, measured: float, fit: ForecastFit | None, baseline: Baseline | None = None
) -> Prepared:
    return prepare(
        now=T0,
        ctx=ctx,
        devices=DEVICES,
        books=bookkeeping.empty_books(DAY0),
        batteries={},
        overrides={},
        power_on={},
        surplus=make_surplus(T0, measured),
        forecast=make_forecast(),
        baseline=baseline,
        fit=fit,
    )


def problem_at(ctx: PlanContext, measured: float, fit: ForecastFit | None) -> list[float]:
    return prepared_at(ctx, measured, fit, Baseline(-300.0, T0)).problem.available_power_w


def test_scaled_plans_fade_towards_the_fitted_line() -> None:
    fit = fed(1.3, -250.0)
    k, c = fit_line(fit) or (1.0, 0.0)
    forecast = make_forecast()
    measured = 1.3 * forecast_at(forecast, T0) - 250.0 - 400.0  # a kettle on now
    got = problem_at(SCALED, measured, fit)
    f = resample(forecast, T0, 900, len(got))
    shift = shift_profile(measured - k * forecast_at(forecast, T0), len(got), 900, SCALED.shift, c)
    assert got == pytest.approx([k * a + b for a, b in zip(f, shift, strict=True)])
    # at noon now: the measurement; hours later: the line
    assert got[0] == pytest.approx(measured, abs=120.0)
    assert got[24] == pytest.approx(k * f[24] + c, abs=10.0)  # 400 W after 6 half-lives
    # the fading shift on the same input keeps the forecast's scale: lower where the sun is
    faded = problem_at(FADING, measured, fit)
    assert faded[24] < got[24] - 100.0


def test_the_scaled_shift_is_the_fading_one_until_the_fit_holds_enough() -> None:
    short = fed(1.3, 0.0, until=DAY0 + timedelta(minutes=10))
    assert problem_at(SCALED, 1000.0, short) == problem_at(FADING, 1000.0, short)
    assert problem_at(SCALED, 1000.0, None) == problem_at(FADING, 1000.0, None)
    # and the fading shift never uses a fit
    assert problem_at(FADING, 1000.0, fed(1.3, 0.0)) == problem_at(FADING, 1000.0, None)


def test_the_plan_says_the_scale_it_was_made_with() -> None:
    fit = fed(1.3, -250.0)
    k, _ = fit_line(fit) or (1.0, 0.0)
    for ctx, scale in ((SCALED, k), (FADING, None)):
        prepared = prepared_at(ctx, 1000.0, fit)
        assert prepared.forecast_scale == scale
        plan = plan_reference(prepared.problem)
        msg = plan_message(prepared, plan, T0)
        wire = parse_message(PlanMessage, dump_message(msg))
        assert wire.forecast_scale == (round(k, 4) if scale is not None else None)
        assert wire.forecast_power_w == pytest.approx(prepared.forecast_power_w, abs=1e-3)


# --- the books ---------------------------------------------------------------------------------


def test_the_fit_survives_a_restart_in_the_books() -> None:
    fit = fed(1.3, -250.0)
    books = bookkeeping.empty_books(DAY0)
    msg = parse_message(EnergyBooks, dump_message(books_message(books, {}, T0, fit=fit)))
    assert msg.shift_fit is not None
    got = restore_books(msg, T0 + timedelta(hours=1), AMS, SIX, DEVICES)
    assert got is not None
    assert got.fit is not None
    assert got.fit.at == fit.at.replace(microsecond=0)
    for name in ("weight_s", "forecast_w", "measured_w", "var_w2", "cov_w2"):
        assert getattr(got.fit, name) == pytest.approx(getattr(fit, name), rel=1e-9)
    # books without a fit (older ones, or before the first measurement) restore none
    bare = parse_message(EnergyBooks, dump_message(books_message(books, {}, T0)))
    assert bare.shift_fit is None
    restored = restore_books(bare, T0, AMS, SIX, DEVICES)
    assert restored is not None
    assert restored.fit is None


@pytest.mark.parametrize(
    "bad",
    [
        {"weight_s": 0.0},
        {"weight_s": -1.0},
        {"forecast_var": -5.0},
        {"measured_w": "12"},
        {"at": "2024-06-21T10:00:00"},
    ],
)
def test_a_bad_fit_in_the_books_is_refused(bad: dict[str, object]) -> None:
    fit = fed(1.3, -250.0)
    data = books_message(bookkeeping.empty_books(DAY0), {}, T0, fit=fit).model_dump(mode="json")
    data["shift_fit"] |= bad
    with pytest.raises(MessageError, match="shift_fit"):
        parse_message(EnergyBooks, json.dumps(data).encode())


# --- the scheduler feeds it ---------------------------------------------------------------------


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.upper().startswith("HWSCHED_"):
            monkeypatch.delenv(name)
    return Settings(
        base_topic="t", poll_interval_s=30.0, planner="reference", forecast_shift="scaled"
    )


async def test_the_scheduler_fits_what_it_measures_and_plans_on_it(settings: Settings) -> None:
    start = DAY0 + timedelta(hours=1)
    clock = ManualClock(start)
    s, rec, _ = make_scheduler(settings, clock)
    s._finish_restore(None)
    assert s.ctx.shift == ShiftOptions(
        mode="scaled",
        half_life_s=settings.forecast_shift_half_life_s,
        baseline_s=settings.forecast_shift_baseline_s,
        fit_s=settings.forecast_shift_fit_s,
    )
    forecast = make_forecast(start - timedelta(minutes=1))
    await s.on_forecast("t/forecast", dump_message(forecast))
    for minute in range(0, 4 * 60, 1):
        at = start + timedelta(minutes=minute)
        clock.set(at)
        measured = 1.4 * forecast_at(forecast, at) - 300.0
        await s.on_surplus("t/surplus", dump_message(make_surplus(at, measured)))
    assert s.fit is not None
    k, _ = fit_line(s.fit) or (1.0, 0.0)
    assert 1.3 < k < 1.4
    prepared = await s.plan_once()
    assert prepared is not None
    assert prepared.forecast_scale == pytest.approx(k)
    plans = rec.on("t/plan")
    assert isinstance(plans[-1], PlanMessage)
    assert plans[-1].forecast_scale == pytest.approx(k, abs=1e-4)
    # the books carry it, and a restarted scheduler reads it back
    s._publish_books()
    books = rec.on("t/books")[-1]
    assert isinstance(books, EnergyBooks)
    assert books.shift_fit is not None
    again, _, _ = make_scheduler(settings, clock)
    await again.on_books("t/books", dump_message(books))
    assert again.fit is not None
    assert fit_line(again.fit) == pytest.approx(fit_line(s.fit), rel=1e-6)


async def test_a_forecast_from_another_maker_starts_the_fit_over(settings: Settings) -> None:
    s, _, counters = make_scheduler(settings, ManualClock(T0))
    s._finish_restore(None)
    first = make_forecast(T0 - timedelta(hours=2))
    await s.on_forecast("t/forecast", dump_message(first))
    s.fit = fed(1.3, -250.0)
    # the next day's forecast from the same maker keeps it
    same = first.model_copy(update={"made_at": T0 - timedelta(hours=1)})
    await s.on_forecast("t/forecast", dump_message(same))
    assert s.fit is not None
    # the clear-sky fallback (or another weather or PV model) has another bias: over
    for change in ({"fallback": True, "source": "clear-sky"}, {"pv_model": "other 2.0"}):
        s.fit = fed(1.3, -250.0)
        assert s.forecast is not None
        other = same.model_copy(update={"made_at": s.forecast.made_at + timedelta(minutes=1)})
        await s.on_forecast("t/forecast", dump_message(other.model_copy(update=change)))
        assert s.fit is None
    assert counters["forecast_fit_resets"] == 2
