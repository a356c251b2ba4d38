"""Generated planning days for the benchmarks: seasons, clouds, batteries, 1-8 sockets.

Deterministic: the same seed gives the same day.
"""

from __future__ import annotations

import random
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from shared.planning.problem import BatterySpec, PlanningProblem, SocketSpec
from shared.sky import PanelArray, base_load_w, clear_sky_series_w, cloud_factors

TZ = ZoneInfo("Europe/Amsterdam")
SEASONS = {"winter": (1, 15), "spring": (4, 15), "summer": (6, 21), "autumn": (10, 15)}

#: (name, W, Wh, needed) — the kinds of loads people put behind an Energy Socket.
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
) -> PlanningProblem:
    """One day from `start_hour` local time until the next 06:00 boundary."""
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
    sockets = []
    for i, (name, p, cap, need) in enumerate(sorted(pool[:n_sockets], key=lambda x: -x[3])):
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
    return PlanningProblem(
        name=name,
        start=start,
        step_s=step_s,
        available_power_w=avail,
        sockets=sockets,
        batteries=batteries,
    )


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
    return days
