"""A simple sky: sun position, clear-sky PV power and seeded clouds (pure, no I/O).

Good enough to make realistic days for the simulated house, the benchmarks and the
forecaster's clear-sky fallback — not a forecast. Angles in degrees; orientation 180 =
south (as quartz-solar-forecast's `orientation`), tilt 0 = flat.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

#: Performance ratio of a PV system (inverter, wiring, temperature, soiling).
PERFORMANCE_RATIO = 0.85


@dataclass(frozen=True, slots=True)
class PanelArray:
    """A solar array as the config describes it."""

    latitude: float
    longitude: float
    capacity_kwp: float
    tilt: float = 35.0
    orientation: float = 180.0


def sun_position(when: datetime, latitude: float, longitude: float) -> tuple[float, float]:
    """(elevation, azimuth) of the sun in degrees; azimuth from north, clockwise."""
    utc = when.astimezone(UTC)
    day = utc.timetuple().tm_yday
    hours = utc.hour + utc.minute / 60 + utc.second / 3600
    gamma = 2 * math.pi / 365 * (day - 1 + (hours - 12) / 24)
    decl = (
        0.006918
        - 0.399912 * math.cos(gamma)
        + 0.070257 * math.sin(gamma)
        - 0.006758 * math.cos(2 * gamma)
        + 0.000907 * math.sin(2 * gamma)
    )
    eqtime = 229.18 * (
        0.000075
        + 0.001868 * math.cos(gamma)
        - 0.032077 * math.sin(gamma)
        - 0.014615 * math.cos(2 * gamma)
        - 0.040849 * math.sin(2 * gamma)
    )
    solar_minutes = hours * 60 + eqtime + 4 * longitude
    hour_angle = math.radians(solar_minutes / 4 - 180)
    lat = math.radians(latitude)
    cos_zen = math.sin(lat) * math.sin(decl) + math.cos(lat) * math.cos(decl) * math.cos(hour_angle)
    cos_zen = max(-1.0, min(1.0, cos_zen))
    zen = math.acos(cos_zen)
    elevation = 90 - math.degrees(zen)
    sin_zen = math.sin(zen)
    if sin_zen < 1e-9:
        return elevation, 180.0
    cos_az = (math.sin(decl) - math.sin(lat) * cos_zen) / (math.cos(lat) * sin_zen)
    az = math.degrees(math.acos(max(-1.0, min(1.0, cos_az))))
    if hour_angle > 0:
        az = 360 - az
    return elevation, az


def clear_sky_power_w(when: datetime, array: PanelArray) -> float:
    """Clear-sky AC power of an array (W) at an instant."""
    elevation, azimuth = sun_position(when, array.latitude, array.longitude)
    if elevation <= 0:
        return 0.0
    zen = math.radians(90 - elevation)
    air_mass = 1 / (math.cos(zen) + 0.50572 * (96.07995 - math.degrees(zen)) ** -1.6364)
    dni = 1353 * 0.7 ** (air_mass**0.678)
    dhi = 0.1 * dni
    tilt = math.radians(array.tilt)
    cos_inc = math.cos(zen) * math.cos(tilt) + math.sin(zen) * math.sin(tilt) * math.cos(
        math.radians(azimuth - array.orientation)
    )
    poa = max(0.0, dni * cos_inc) + dhi * (1 + math.cos(tilt)) / 2
    return float(array.capacity_kwp * poa * PERFORMANCE_RATIO)


def clear_sky_series_w(
    start: datetime, step_s: int, n_steps: int, arrays: list[PanelArray]
) -> list[float]:
    """Mean clear-sky power (W) of all arrays per step, sampled at each step's middle."""
    out = []
    for t in range(n_steps):
        mid = start + timedelta(seconds=(t + 0.5) * step_s)
        out.append(sum(clear_sky_power_w(mid, a) for a in arrays))
    return out


def cloud_factors(n_steps: int, step_s: int, cloudiness: float, seed: int) -> list[float]:
    """Fraction of clear-sky power getting through, per step (seeded, reproducible).

    cloudiness 0 = clear, 1 = overcast; passing clouds come and go on a ~20 min scale.
    """
    rng = random.Random(seed)
    keep = math.exp(-step_s / 1200)
    level = rng.random()
    out = []
    for _ in range(n_steps):
        level = keep * level + (1 - keep) * rng.random()
        covered = level < cloudiness
        base = 1 - 0.75 * cloudiness
        out.append(max(0.05, min(1.0, base * (0.35 if covered else 1.0) + rng.gauss(0, 0.03))))
    return out


def base_load_w(when: datetime, level_w: float = 300.0) -> float:
    """Household load of unregistered devices (W) by local hour: night low, evening peak."""
    h = when.hour + when.minute / 60
    shape = 0.7 + 0.5 * math.exp(-((h - 8) ** 2) / 2) + 1.0 * math.exp(-((h - 19) ** 2) / 3)
    return level_w * shape
