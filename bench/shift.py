"""Constant vs fading vs scaled forecast shift on simulated days: `python -m bench.shift`.

`make bench-shift` runs it.

The scheduler plans on `available(t) = forecast(t) + shift(t)`, with
`shift(0) = measured surplus now − forecast(now)`. The original keeps that shift all day;
the fading shift lets what differs from the recent typical offset fade with a half-life
(`services.scheduler.logic.shift_profile`). Which predicts the surplus better?

Days come from the simulated house (`services.simulator.house.House`: its seeded clouds,
sun on the example file's arrays, base load); seasons x cloudiness x seeds. The house's
surplus as the poller measures it (`−P1 + sockets + batteries`) is `solar − base load`
whatever the sockets and batteries do, so it is read straight from the house's sun and base
load, minute by minute. Two forecasts, both made at the boundary (06:00) in 15-min steps:

* `hourly`: the clear sky x the house's own cloud factor averaged per hour (what the simulated
  weather service gives: the clouds without their short noise);
* `mean`: the clear sky x the day's expected transmission from its cloudiness alone.

Every 30 min from 07:00 to 20:00 the shifted forecast (from the scheduler's own `resample`,
`forecast_at` and `shift_profile`) is compared with the actual mean surplus per 15-min step:
MAE over the next hour and the next 4 h (W), and the energy error over the rest of the day
to the boundary (|Σ error| in kWh). The fading baseline is the scheduler's `update_baseline`
fed a measurement each minute from midnight. `kettle`: the same, with a 2 kW kettle on at
the instant of measuring (MAE over 4 h, hourly forecast).

`scaled` fits `measured ≈ k · forecast + c` (the scheduler's `update_fit` fed each minute
from midnight, `fit_line`) and fades towards that line. Each forecast is also multiplied by a
bias (`--bias`, default 0.75, 1 and 1.25: a forecast a quarter low, right, a quarter high), as
a real site's forecast (its shading, its panels' age, quartz against its sky) can be.

The best method is the one with the least 4-h MAE, averaged over both forecasts and every bias
(clouds only).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from services.scheduler.logic import (
    Baseline,
    ForecastFit,
    ShiftOptions,
    fit_line,
    forecast_at,
    horizon,
    resample,
    shift_profile,
    update_baseline,
    update_fit,
)
from services.simulator.house import House, HouseOptions
from shared.config import load_devices
from shared.messages import Forecast

TZ = ZoneInfo("Europe/Amsterdam")
BOUNDARY = time(6, 0)
STEP_S = 900
DEVICES_FILE = Path(__file__).resolve().parents[1] / "config" / "config_devices.example.json"
SEASONS = {"winter": (1, 15), "spring": (4, 15), "summer": (6, 21), "autumn": (10, 15)}
CLOUDINESS = (0.2, 0.5, 0.8)
KETTLE_W = 2000.0
HALF_LIVES_H = (0.25, 0.5, 1.0, 2.0, 4.0)
BASELINES_H = (1.0, 3.0, 6.0, 12.0)
FITS_H = (3.0, 6.0, 12.0)
BIASES = (0.75, 1.0, 1.25)
#: Minutes of history before the boundary that feed the baseline.
WARMUP_MIN = 6 * 60


@dataclass(frozen=True)
class Method:
    label: str
    options: ShiftOptions
    #: Time constant of the baseline, s (None: constant shift, no baseline).
    baseline_s: float | None
    #: No shift at all (the bare PV forecast), for reference.
    bare: bool = False
    #: `scaled`: time constant of the fit, s.
    fit_s: float | None = None


def methods() -> list[Method]:
    out = [
        Method("none (bare forecast)", ShiftOptions(mode="constant"), None, bare=True),
        Method("constant (original)", ShiftOptions(mode="constant"), None),
    ]
    for tau_h in BASELINES_H:
        for h in HALF_LIVES_H:
            opts = ShiftOptions(mode="fading", half_life_s=h * 3600, baseline_s=tau_h * 3600)
            out.append(Method(f"fading h={h:g}h base={tau_h:g}h", opts, tau_h * 3600))
    default = ShiftOptions()
    for fit_h in FITS_H:
        for h in (0.5, 1.0, 2.0):
            opts = ShiftOptions(
                mode="scaled",
                half_life_s=h * 3600,
                fit_s=fit_h * 3600,
                baseline_s=default.baseline_s,
            )
            label = f"scaled h={h:g}h fit={fit_h:g}h"
            out.append(Method(label, opts, default.baseline_s, fit_s=fit_h * 3600))
    return out


@dataclass
class Day:
    """One simulated day: the actual surplus per minute from the warm-up start, and forecasts."""

    start: datetime  # the boundary (06:00 local), UTC
    surplus_w: list[float]  # per minute from start − WARMUP_MIN
    forecasts: dict[str, Forecast]

    def minute(self, when: datetime) -> int:
        return int((when - self.start).total_seconds() // 60) + WARMUP_MIN

    def actual_w(self, when: datetime) -> float:
        return self.surplus_w[self.minute(when)]

    def step_mean_w(self, begin: datetime, step_s: int) -> float:
        i = self.minute(begin)
        n = step_s // 60
        return sum(self.surplus_w[i : i + n]) / n


def make_day(season: str, cloudiness: float, seed: int, bias: float = 1.0) -> Day:
    devices = load_devices(DEVICES_FILE)
    month, dom = SEASONS[season]
    start = datetime.combine(datetime(2026, month, dom).date(), BOUNDARY, TZ).astimezone(UTC)
    house = House(devices, start, HouseOptions(seed=seed, cloudiness=cloudiness))
    first = start - timedelta(minutes=WARMUP_MIN)
    minutes = WARMUP_MIN + 25 * 60
    surplus = []
    clear = []
    factor = []
    for m in range(minutes):
        mid = first + timedelta(seconds=60 * m + 30)
        c = house.clear_sky_w(mid)
        f = house.sky.factor(mid)
        clear.append(c)
        factor.append(f)
        surplus.append(c * f - house.base_load_power_w(mid))
    # forecasts from the boundary, 15-min steps, for 24 h
    n = 24 * 3600 // STEP_S
    per = STEP_S // 60
    hourly: list[float] = []
    mean: list[float] = []
    for k in range(n):
        i = WARMUP_MIN + k * per
        clear_mean = sum(clear[i : i + per]) / per
        # the hour (UTC) holding this step: its mean cloud factor
        step_start = start + timedelta(seconds=k * STEP_S)
        hour_start = step_start.replace(minute=0, second=0, microsecond=0)
        h0 = int((hour_start - first).total_seconds() // 60)
        hour_factor = sum(factor[h0 : h0 + 60]) / 60
        hourly.append(clear_mean * hour_factor)
        c = house.sky.cloudiness_on(step_start.date())
        expected = (1 - 0.75 * c) * (1 - 0.65 * c)
        mean.append(clear_mean * expected)
    forecasts = {
        name: Forecast(
            timestamp=start,
            start=start,
            step_s=STEP_S,
            power_w=[round(v * bias, 3) for v in values],
            made_at=start,
            source="bench",
        )
        for name, values in (("hourly", hourly), ("mean", mean))
    }
    return Day(start=start, surplus_w=surplus, forecasts=forecasts)


@dataclass
class Scores:
    mae_1h: list[float]
    mae_4h: list[float]
    energy_kwh: list[float]

    @classmethod
    def empty(cls) -> Scores:
        return cls([], [], [])


def _history(day: Day, forecast: Forecast) -> Iterator[tuple[int, datetime, float, float]]:
    """(minute, time, forecast PV, measured surplus) every minute from midnight, as the
    scheduler is fed them (before the forecast starts its PV counts 0 W: night)."""
    first = day.start - timedelta(minutes=WARMUP_MIN)
    for m in range(len(day.surplus_w) - 60):
        at = first + timedelta(minutes=m)
        pv = forecast_at(forecast, at) if at >= forecast.start else 0.0
        yield m, at, pv, day.surplus_w[m]


def baselines(day: Day, forecast: Forecast, tau_s: float) -> dict[int, Baseline]:
    """The baseline as of each minute from the boundary (fed every minute from midnight)."""
    out: dict[int, Baseline] = {}
    b: Baseline | None = None
    for m, at, pv, measured in _history(day, forecast):
        b = out[m] = update_baseline(b, at, measured - pv, tau_s)
    return out


def fits(day: Day, forecast: Forecast, tau_s: float) -> dict[int, ForecastFit | None]:
    """The fit as of each minute from the boundary (fed every minute from midnight)."""
    out: dict[int, ForecastFit | None] = {}
    f: ForecastFit | None = None
    for m, at, pv, measured in _history(day, forecast):
        f = out[m] = update_fit(f, at, pv, measured, tau_s)
    return out


def evaluate(
    day: Day,
    forecast: Forecast,
    method: Method,
    base: dict[int, Baseline] | None,
    kettle: bool,
    fit: dict[int, ForecastFit | None] | None = None,
) -> Scores:
    scores = Scores.empty()
    for half_hours in range(2, 29):  # 07:00 .. 20:00
        now = day.start + timedelta(minutes=30 * half_hours)
        n = horizon(now, TZ, BOUNDARY, STEP_S)
        predicted = resample(forecast, now, STEP_S, n)
        measured = day.actual_w(now) - (KETTLE_W if kettle else 0.0)
        if not method.bare:
            b = base[day.minute(now)].value_w if base is not None else None
            line = fit_line(fit[day.minute(now)]) if fit is not None else None
            scale = 1.0
            if line is not None:
                scale, b = line
            shift0 = measured - scale * forecast_at(forecast, now)
            shift = shift_profile(shift0, n, STEP_S, method.options, b)
            predicted = [scale * p + s for p, s in zip(predicted, shift, strict=True)]
        actual = [day.step_mean_w(now + timedelta(seconds=k * STEP_S), STEP_S) for k in range(n)]
        errors = [p - a for p, a in zip(predicted, actual, strict=True)]
        scores.mae_1h.append(statistics.fmean(abs(e) for e in errors[:4]))
        scores.mae_4h.append(statistics.fmean(abs(e) for e in errors[:16]))
        scores.energy_kwh.append(abs(sum(errors)) * STEP_S / 3600 / 1000)
    return scores


def run(seeds: Sequence[int], out: list[str], biases: Sequence[float] = BIASES) -> str:
    """Compute the tables into `out` (lines); return the best method's label."""
    ms = methods()
    table: dict[tuple[float, str, str], Scores] = {}
    n_days = 0
    for season in SEASONS:
        for cloudiness in CLOUDINESS:
            for seed in seeds:
                n_days += 1
                for bias in biases:
                    day = make_day(season, cloudiness, seed, bias)
                    for fname, forecast in day.forecasts.items():
                        _score_day(day, fname, forecast, ms, bias, table)

    def mean(values: list[float]) -> float:
        return statistics.fmean(values)

    out.append(
        f"{n_days} simulated days ({', '.join(SEASONS)} x cloudiness "
        f"{', '.join(f'{c:g}' for c in CLOUDINESS)} x {len(seeds)} seeds), "
        "27 times a day (07:00-20:00)"
    )
    out.append("errors of the shifted forecast vs the actual mean surplus per 15-min step")
    ranking: dict[str, list[tuple[float, float]]] = {}
    for bias in biases:
        out.append("")
        out.append(f"forecast x {bias:g}")
        header = (
            f"{'method':<26} | {'hourly forecast':^26} | {'mean-cloud forecast':^26} | kettle\n"
            f"{'':<26} | {'MAE1h W':>8} {'MAE4h W':>8} {'E kWh':>8} | "
            f"{'MAE1h W':>8} {'MAE4h W':>8} {'E kWh':>8} | MAE4h W"
        )
        out.append(header)
        out.append("-" * len(header.splitlines()[1]))
        for m in ms:
            h = table[(bias, m.label, "hourly")]
            c = table[(bias, m.label, "mean")]
            k = table[(bias, m.label, "hourly kettle")]
            out.append(
                f"{m.label:<26} | {mean(h.mae_1h):8.0f} {mean(h.mae_4h):8.0f} "
                f"{mean(h.energy_kwh):8.2f} | {mean(c.mae_1h):8.0f} {mean(c.mae_4h):8.0f} "
                f"{mean(c.energy_kwh):8.2f} | {mean(k.mae_4h):7.0f}"
            )
            if not m.bare:
                score = (mean(h.mae_4h) + mean(c.mae_4h)) / 2
                energy = (mean(h.energy_kwh) + mean(c.energy_kwh)) / 2
                ranking.setdefault(m.label, []).append((score, energy))
    overall = sorted(
        (statistics.fmean(r[0] for r in rs), statistics.fmean(r[1] for r in rs), label)
        for label, rs in ranking.items()
    )
    best = overall[0][2]
    constant = next(r for r in overall if r[2].startswith("constant"))
    fading = next(r for r in overall if r[2] == "fading h=1h base=12h")
    out.append("")
    out.append(
        f"best by 4-h MAE (mean of both forecasts and {len(biases)} biases): {best} "
        f"({overall[0][0]:.0f} W, rest-of-day {overall[0][1]:.2f} kWh; "
        f"fading h=1h base=12h {fading[0]:.0f} W, {fading[1]:.2f} kWh; "
        f"constant {constant[0]:.0f} W, {constant[1]:.2f} kWh)"
    )
    return best


def _score_day(
    day: Day,
    fname: str,
    forecast: Forecast,
    ms: Sequence[Method],
    bias: float,
    table: dict[tuple[float, str, str], Scores],
) -> None:
    """Every method on one day and forecast, into `table`."""
    base_cache: dict[float, dict[int, Baseline]] = {}
    fit_cache: dict[float, dict[int, ForecastFit | None]] = {}
    for m in ms:
        base = None
        if m.baseline_s is not None:
            base = base_cache.get(m.baseline_s)
            if base is None:
                base = base_cache[m.baseline_s] = baselines(day, forecast, m.baseline_s)
        fit = None
        if m.fit_s is not None:
            fit = fit_cache.get(m.fit_s)
            if fit is None:
                fit = fit_cache[m.fit_s] = fits(day, forecast, m.fit_s)
        for kettle in (False, True) if fname == "hourly" else (False,):
            key = (bias, m.label, fname + (" kettle" if kettle else ""))
            got = evaluate(day, forecast, m, base, kettle, fit)
            acc = table.setdefault(key, Scores.empty())
            acc.mae_1h += got.mae_1h
            acc.mae_4h += got.mae_4h
            acc.energy_kwh += got.energy_kwh


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.shift", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seeds", type=int, default=4, help="seeds per season and cloudiness (4)")
    parser.add_argument(
        "--bias",
        type=float,
        nargs="+",
        default=list(BIASES),
        help="factors the forecasts are multiplied by (0.75 1 1.25)",
    )
    args = parser.parse_args(argv)
    lines: list[str] = []
    run(range(args.seeds), lines, args.bias)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
