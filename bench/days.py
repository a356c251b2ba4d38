"""Generated planning days for the benchmarks: seasons, clouds, batteries, 1-8 sockets.

Deterministic: the same seed gives the same day.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from shared.planning.problem import BatterySpec, PlanningProblem, SocketSpec
from shared.sky import PanelArray, base_load_w, clear_sky_series_w, cloud_factors

TZ = ZoneInfo("Europe/Amsterdam")
SEASONS = {"winter": (1, 15), "spring": (4, 15), "summer": (6, 21), "autumn": (10, 15)}

#: (name, W, Wh, needed) — the kinds of loads people put behind an Energy Socket.
#: More optional loads, for days with many of them (`optional_heavy`).
OPTIONAL_POOL = [
    ("e-bike", 300, 500, False),
    ("pool pump", 800, 3200, False),
    ("car trickle", 2300, 9000, False),
    ("dishwasher preheat", 1200, 900, False),
    ("freezer pre-cool", 150, 300, False),
    ("garden heater", 1800, 2700, False),
    ("second e-bike", 250, 400, False),
    ("hot tub", 2000, 6000, False),
]
SOCKET_POOL = [
    ("kitchen boiler", 2000, 2000, True),
    ("shower boiler", 2000, 6000, True),
    ("e-bike", 300, 500, False),
    ("heat-pump buffer", 1500, 4500, True),
    ("dishwasher preheat", 1200, 900, False),
    ("pool pump", 800, 3200, False),
    ("car trickle", 2300, 9000, False),
    ("garage boiler", 1000, 3000, True),
]


def make_day(
    season: str,
    cloudiness: float,
    n_sockets: int,
    n_batteries: int,
    step_s: int = 900,
    start_hour: float = 6.0,
    seed: int = 0,
    kwp: float = 5.0,
    optional_heavy: bool = False,
) -> PlanningProblem:
    """One day from `start_hour` local time until the next 06:00 boundary.

    `optional_heavy`: one needed boiler and the rest optional loads (`OPTIONAL_POOL`).
    """
    rng = random.Random(seed)
    month, day = SEASONS[season]
    local_day = datetime(2026, month, day, tzinfo=TZ)
    boundary = datetime.combine(local_day.date(), time(6, 0), tzinfo=TZ)
    start = boundary + timedelta(hours=start_hour - 6.0)
    start = start.replace(minute=(start.minute // (step_s // 60)) * (step_s // 60), second=0)
    end = boundary + timedelta(days=1)
    n = int((end - start).total_seconds() // step_s)
    arrays = [
        PanelArray(52.09, 5.12, kwp * 0.65, 35, 180),
        PanelArray(52.09, 5.12, kwp * 0.35, 25, 250),
    ]
    solar = clear_sky_series_w(start, step_s, n, arrays)
    clouds = cloud_factors(n, step_s, cloudiness, seed)
    level = rng.uniform(220, 420)
    avail = []
    for t in range(n):
        when = (start + timedelta(seconds=(t + 0.5) * step_s)).astimezone(TZ)
        noise = rng.gauss(0, 25)
        avail.append(round(solar[t] * clouds[t] - base_load_w(when, level) + noise, 1))
    pool = list(SOCKET_POOL)
    rng.shuffle(pool)
    chosen = pool[:n_sockets]
    if optional_heavy:
        extra = list(OPTIONAL_POOL)
        rng.shuffle(extra)
        chosen = [SOCKET_POOL[0], *extra[: n_sockets - 1]]
    sockets = []
    for i, (name, p, cap, need) in enumerate(sorted(chosen, key=lambda x: -x[3])):
        stored = 0.0 if rng.random() < 0.6 else round(rng.uniform(0, 0.5) * cap, 0)
        sockets.append(
            SocketSpec(
                name=name,
                max_power_usage=p,
                energy_capacity=cap,
                energy_stored=stored,
                priority=i + 1,
                daily_need=need,
                min_battery_charge=0.5 if (not need and rng.random() < 0.3) else 0.0,
            )
        )
    batteries = [
        BatterySpec(
            name=f"battery {i + 1}",
            max_power_usage=800,
            energy_capacity=2700,
            energy_stored=round(rng.uniform(0.1, 0.6) * 2700),
        )
        for i in range(n_batteries)
    ]
    name = f"{season}-c{int(cloudiness * 100)}-s{n_sockets}-b{n_batteries}-{step_s // 60}m"
    if start_hour != 6.0:
        name += f"-from{int(start_hour):02d}h"
    if optional_heavy:
        name += "-opt"
    return PlanningProblem(
        name=name,
        start=start,
        step_s=step_s,
        available_power_w=avail,
        sockets=sockets,
        batteries=batteries,
    )


#: All-in import = (day-ahead + supplier markup + energy tax) x VAT; export = day-ahead -
#: feed-in fee (NL-like figures, EUR/kWh: 2026 energy tax ~0.10 ex VAT, 21 % VAT).
MARKUP, ENERGY_TAX, VAT, FEED_IN_FEE = 0.02, 0.10, 1.21, 0.01


def day_ahead(profile: str, hour: float, rng: random.Random) -> float:
    """A day-ahead price, EUR/kWh, by local hour: `summer` (negative around noon, evening
    peak), `winter` (cheap nights, morning and evening peaks), `paid` (strongly negative
    noon: paid to consume, even all-in)."""
    evening = math.exp(-((hour - 19.5) ** 2) / 3)
    morning = math.exp(-((hour - 8.0) ** 2) / 2)
    noon = math.exp(-((hour - 13.5) ** 2) / 6)
    if profile == "summer":
        price = 0.09 + 0.16 * evening + 0.05 * morning - 0.16 * noon
    elif profile == "winter":
        night = 1.0 if hour < 5 or hour >= 23 else 0.0
        price = 0.16 + 0.14 * evening + 0.08 * morning - 0.10 * night
    elif profile == "paid":
        price = 0.08 + 0.14 * evening - 0.35 * noon
    else:
        raise ValueError(f"unknown price profile {profile!r}")
    return round(price + rng.gauss(0, 0.01), 4)


def priced_day(
    base: PlanningProblem,
    profile: str,
    seed: int,
    fixed: tuple[float, float] | None = None,
    optional_grid_price_max: float | None = None,
) -> PlanningProblem:
    """`base` with import and export prices per step: a dynamic contract (`profile`) or a
    fixed tariff (`fixed` = (import, export))."""
    rng = random.Random(seed)
    imp: list[float] = []
    exp: list[float] = []
    for t in range(base.n_steps):
        when = (base.start + timedelta(seconds=(t + 0.5) * base.step_s)).astimezone(TZ)
        if fixed is not None:
            imp.append(fixed[0])
            exp.append(fixed[1])
            continue
        da = day_ahead(profile, when.hour + when.minute / 60, rng)
        imp.append(round((da + MARKUP + ENERGY_TAX) * VAT, 4))
        exp.append(round(da - FEED_IN_FEE, 4))
    kind = f"fixed{fixed[0]:g}-{fixed[1]:g}" if fixed is not None else profile
    name = f"{base.name}-{kind}"
    if optional_grid_price_max is not None:
        name += f"-gridmax{optional_grid_price_max:g}"
    return base.model_copy(
        update={
            "name": name,
            "import_price": imp,
            "export_price": exp,
            "optional_grid_price_max": optional_grid_price_max,
        }
    )


def priced_days() -> list[PlanningProblem]:
    """The benchmark's priced days (fixed list, fixed seeds): a dynamic summer day with a
    negative noon, a winter day with cheap nights, a fixed tariff after net metering
    (import 0.30, export 0.05 EUR/kWh), a paid-to-consume day where optional sockets may
    draw from the grid at or below 0 EUR/kWh; 15- and 5-minute steps."""
    seed = 500
    out = []
    for season, cloud, n_s, n_b, step, hour, profile, fixed, grid_max in (
        ("summer", 0.2, 5, 2, 900, 6.0, "summer", None, None),
        ("summer", 0.5, 4, 1, 300, 10.0, "summer", None, None),
        ("winter", 0.6, 4, 2, 900, 6.0, "winter", None, None),
        ("winter", 0.9, 3, 1, 300, 6.0, "winter", None, None),
        ("summer", 0.3, 5, 1, 900, 6.0, "fixed", (0.30, 0.05), None),
        ("autumn", 0.4, 4, 2, 300, 9.0, "fixed", (0.30, 0.05), None),
        ("spring", 0.2, 5, 2, 900, 6.0, "paid", None, 0.0),
        ("summer", 0.3, 6, 2, 300, 6.0, "paid", None, 0.0),
    ):
        base = make_day(season, cloud, n_s, n_b, step, hour, seed)
        out.append(priced_day(base, profile, seed, fixed, grid_max))
        seed += 1
    return out


def benchmark_days() -> list[PlanningProblem]:
    """The benchmark's generated days (fixed list, fixed seeds)."""
    days = []
    seed = 1
    for season in SEASONS:
        for cloud in (0.1, 0.5, 0.9):
            for n_s, n_b in ((1, 0), (3, 1), (5, 2), (8, 1)):
                days.append(make_day(season, cloud, n_s, n_b, 900, 6.0, seed))
                seed += 1
    for season in ("summer", "autumn"):
        days.append(make_day(season, 0.4, 5, 2, 300, 6.0, seed))
        seed += 1
        days.append(make_day(season, 0.4, 4, 1, 900, 13.0, seed))
        seed += 1
        days.append(make_day(season, 0.4, 6, 2, 300, 11.5, seed))
        seed += 1
    # Many optional sockets (one needed boiler), with 0-2 batteries, 15- and 5-minute steps,
    # some from mid-day.
    for season, cloud, n_s, n_b, step, hour in (
        ("summer", 0.2, 6, 0, 900, 6.0),
        ("summer", 0.5, 7, 2, 900, 6.0),
        ("spring", 0.3, 8, 1, 900, 9.5),
        ("spring", 0.6, 5, 2, 300, 6.0),
        ("autumn", 0.2, 6, 1, 300, 12.0),
        ("summer", 0.3, 5, 1, 300, 15.0),
    ):
        days.append(make_day(season, cloud, n_s, n_b, step, hour, seed, optional_heavy=True))
        seed += 1
    return days
