"""The simulated weather service: an Open-Meteo-compatible hourly forecast (pure, no I/O).

It answers what quartz-solar-forecast asks Open-Meteo for (`/v1/forecast`, `/v1/dwd-icon`,
`/v1/gfs`, `/v1/archive`, ... with `latitude`, `longitude`, `hourly`, `start_date`,
`end_date`, `timezone`, `models`), as JSON by default or as size-prefixed FlatBuffers
(`format=flatbuffers`, the `WeatherApiResponse` of Open-Meteo's SDK schema, which the
`openmeteo_requests` client always asks for).

The values follow the house's own sky: radiation is `shared.sky`'s clear sky on a flat
surface times the same seeded cloud profile (`CloudySky`) that drives the house's PV, so a
forecast made from this weather matches what the panels then get. Temperature, humidity,
wind and pressure are plausible functions of season, hour and cloud cover.

As Open-Meteo: a radiation value at hour T is the mean over the hour before T; other
values are instantaneous at T.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.simulator import flatbuf
from services.simulator.house import CloudySky
from shared.sky import PERFORMANCE_RATIO, PanelArray, clear_sky_power_w, sun_position

#: Hourly variables answered: name -> (SDK Variable, altitude m, SDK Unit, JSON unit).
VARIABLES: dict[str, tuple[int, int, int, str]] = {
    "temperature_2m": (47, 2, 1, "°C"),
    "apparent_temperature": (1, 0, 1, "°C"),
    "relative_humidity_2m": (29, 2, 35, "%"),
    "dew_point_2m": (8, 2, 1, "°C"),
    "precipitation": (24, 0, 32, "mm"),
    "rain": (28, 0, 32, "mm"),
    "surface_pressure": (45, 0, 16, "hPa"),
    "pressure_msl": (27, 0, 16, "hPa"),
    "cloud_cover": (3, 0, 35, "%"),
    "cloud_cover_low": (5, 0, 35, "%"),
    "cloud_cover_mid": (6, 0, 35, "%"),
    "cloud_cover_high": (4, 0, 35, "%"),
    "visibility": (55, 0, 29, "m"),
    "weather_code": (56, 0, 40, "wmo code"),
    "wind_speed_10m": (59, 10, 24, "km/h"),
    "wind_gusts_10m": (58, 10, 24, "km/h"),
    "wind_direction_10m": (57, 10, 5, "°"),
    "is_day": (19, 0, 6, ""),
    "sunshine_duration": (103, 0, 36, "s"),
    "shortwave_radiation": (32, 0, 39, "W/m²"),
    "direct_radiation": (13, 0, 39, "W/m²"),
    "diffuse_radiation": (9, 0, 39, "W/m²"),
    "direct_normal_irradiance": (11, 0, 39, "W/m²"),
    "terrestrial_radiation": (48, 0, 39, "W/m²"),
    "shortwave_radiation_instant": (33, 0, 39, "W/m²"),
    "direct_radiation_instant": (14, 0, 39, "W/m²"),
    "diffuse_radiation_instant": (10, 0, 39, "W/m²"),
    "direct_normal_irradiance_instant": (12, 0, 39, "W/m²"),
    "terrestrial_radiation_instant": (49, 0, 39, "W/m²"),
}
#: SDK Unit of metres per second (wind_speed_unit=ms).
_UNIT_MS = 28
#: SDK Model reported: best_match.
_MODEL_BEST_MATCH = 1
#: Elevation reported for every location, m.
ELEVATION_M = 5.0
MAX_DAYS = 31
_SAMPLES_PER_HOUR = 6
_SOLAR_CONSTANT = 1361.0


class WeatherRequestError(ValueError):
    """A request Open-Meteo would refuse: 400 `{"error": true, "reason": ...}`."""


@dataclass(frozen=True, slots=True)
class WeatherRequest:
    locations: list[tuple[float, float]]
    variables: list[str]
    start: datetime  # UTC, first hour
    hours: int
    tz: ZoneInfo | None  # None = GMT
    tz_name: str
    flatbuffers: bool
    wind_ms: bool


def _one(query: Mapping[str, Sequence[str]], key: str) -> str | None:
    values = query.get(key) or []
    return values[-1] if values else None


def _floats(text: str, key: str) -> list[float]:
    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise WeatherRequestError(f"Parameter '{key}' must be a number (got {text!r})") from None
    if not out or not all(math.isfinite(x) for x in out):
        raise WeatherRequestError(f"Parameter '{key}' must be a number (got {text!r})")
    return out


def _date(text: str, key: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise WeatherRequestError(
            f"Invalid date format for '{key}': {text!r} (use yyyy-mm-dd)"
        ) from None


def parse_request(
    query: Mapping[str, Sequence[str]], today: date, house_tz: ZoneInfo
) -> WeatherRequest:
    """The request in a query string (each key with all its values); `today` = the
    simulated date, for `forecast_days`/`past_days`."""
    lat_text, lon_text = _one(query, "latitude"), _one(query, "longitude")
    if lat_text is None or lon_text is None:
        raise WeatherRequestError("Parameter 'latitude' and 'longitude' are required")
    lats, lons = _floats(lat_text, "latitude"), _floats(lon_text, "longitude")
    if len(lats) != len(lons):
        raise WeatherRequestError("Parameter 'latitude' and 'longitude' must have the same length")
    for lat, lon in zip(lats, lons, strict=True):
        if not -90 <= lat <= 90:
            raise WeatherRequestError(f"Latitude must be in range of -90 to 90°. Given: {lat}.")
        if not -180 <= lon <= 180:
            raise WeatherRequestError(f"Longitude must be in range of -180 to 180°. Given: {lon}.")
    variables = [v.strip() for text in query.get("hourly") or [] for v in text.split(",")]
    variables = [v for v in variables if v]
    for v in variables:
        if v not in VARIABLES:
            raise WeatherRequestError(
                f"Cannot initialize WeatherVariable from invalid String value {v} for key hourly"
            )
    for unsupported in ("daily", "current", "minutely_15"):
        if _one(query, unsupported):
            raise WeatherRequestError(f"Parameter '{unsupported}' is not simulated")
    tz_text = _one(query, "timezone") or "GMT"
    tz: ZoneInfo | None
    if tz_text.upper() in ("GMT", "UTC"):
        tz = None
    elif tz_text == "auto":
        tz, tz_text = house_tz, house_tz.key
    else:
        try:
            tz = ZoneInfo(tz_text)
        except (ZoneInfoNotFoundError, ValueError):
            raise WeatherRequestError(f"Invalid timezone {tz_text!r}") from None
    start_text, end_text = _one(query, "start_date"), _one(query, "end_date")
    if (start_text is None) != (end_text is None):
        raise WeatherRequestError("Parameter 'start_date' and 'end_date' must be set together")
    if start_text is not None and end_text is not None:
        first, last = _date(start_text, "start_date"), _date(end_text, "end_date")
    else:
        try:
            days = int(_one(query, "forecast_days") or 7)
            past = int(_one(query, "past_days") or 0)
        except ValueError:
            raise WeatherRequestError(
                "Parameter 'forecast_days' and 'past_days' are whole numbers"
            ) from None
        if not 0 <= days <= 16 or not 0 <= past <= 92:
            raise WeatherRequestError("Parameter 'forecast_days' must be 0..16, 'past_days' 0..92")
        first = today - timedelta(days=past)
        last = today + timedelta(days=max(days, 1) - 1)
    if last < first:
        raise WeatherRequestError("Parameter 'end_date' must not be before 'start_date'")
    if (last - first).days + 1 > MAX_DAYS:
        raise WeatherRequestError(f"At most {MAX_DAYS} days can be simulated in one request")
    zone = tz or UTC
    start = datetime.combine(first, time(0), zone).astimezone(UTC)
    end = datetime.combine(last + timedelta(days=1), time(0), zone).astimezone(UTC)
    fmt = (_one(query, "format") or "json").lower()
    if fmt not in ("json", "flatbuffers"):
        raise WeatherRequestError(f"Format {fmt!r} is not simulated (json or flatbuffers)")
    wind = (_one(query, "wind_speed_unit") or _one(query, "windspeed_unit") or "kmh").lower()
    if wind not in ("kmh", "ms"):
        raise WeatherRequestError(f"wind_speed_unit {wind!r} is not simulated (kmh or ms)")
    return WeatherRequest(
        locations=list(zip(lats, lons, strict=True)),
        variables=variables,
        start=start,
        hours=int((end - start).total_seconds() // 3600),
        tz=tz,
        tz_name="GMT" if tz is None else tz_text,
        flatbuffers=fmt == "flatbuffers",
        wind_ms=wind == "ms",
    )


# --- the values ----------------------------------------------------------------------


def _noise(*keys: int) -> float:
    """A deterministic pseudo-random number in [0, 1) from integers."""
    h = 0x9E3779B1
    for k in keys:
        h = ((h ^ (k & 0xFFFFFFFF)) * 0x85EBCA6B) & 0xFFFFFFFF
        h ^= h >> 13
    return (h % 100_003) / 100_003


@dataclass(frozen=True, slots=True)
class _Radiation:
    ghi: float
    direct: float
    diffuse: float
    dni: float
    terrestrial: float
    elevation: float


def _radiation(when: datetime, lat: float, lon: float, sky: CloudySky) -> _Radiation:
    """Instantaneous radiation on a flat surface under the simulated clouds (W/m²)."""
    elevation, _ = sun_position(when, lat, lon)
    if elevation <= 0:
        return _Radiation(0.0, 0.0, 0.0, 0.0, 0.0, elevation)
    flat = PanelArray(latitude=lat, longitude=lon, capacity_kwp=1.0, tilt=0.0)
    ghi_clear = clear_sky_power_w(when, flat) / PERFORMANCE_RATIO  # 1 kWp: W = W/m²
    sin_e = math.sin(math.radians(elevation))
    dni_clear = ghi_clear / (sin_e + 0.1)  # shared.sky: diffuse = 0.1 × DNI
    f = sky.factor(when)
    beam = min(1.0, max(0.0, (f - 0.3) / 0.7))  # clouds take the direct beam first
    ghi = ghi_clear * f
    direct = dni_clear * sin_e * beam
    doy = when.timetuple().tm_yday
    toa = _SOLAR_CONSTANT * (1 + 0.033 * math.cos(2 * math.pi * doy / 365)) * sin_e
    return _Radiation(ghi, direct, max(0.0, ghi - direct), dni_clear * beam, toa, elevation)


def hourly_values(
    req_vars: Sequence[str],
    lat: float,
    lon: float,
    start: datetime,
    hours: int,
    sky: CloudySky,
    *,
    wind_ms: bool = False,
) -> dict[str, list[float]]:
    """The hourly series of `req_vars` for one location, from `start` (UTC)."""
    out: dict[str, list[float]] = {v: [] for v in req_vars}
    for k in range(hours):
        at = start + timedelta(hours=k)
        samples = [
            _radiation(at - timedelta(minutes=60 * (i + 0.5) / _SAMPLES_PER_HOUR), lat, lon, sky)
            for i in range(_SAMPLES_PER_HOUR)
        ]
        now = _radiation(at, lat, lon, sky)
        mean_f = sum(sky.factor(at - timedelta(minutes=10 * i)) for i in range(6)) / 6
        cover = 100 * min(1.0, max(0.0, (1 - mean_f) / 0.8))
        doy = at.timetuple().tm_yday
        hour_key = int(at.timestamp()) // 3600
        season_t = 10.5 - 6.5 * math.cos(2 * math.pi * (doy - 20) / 365) + (52 - abs(lat)) * 0.6
        solar_hour = (at.hour + at.minute / 60 + lon / 15) % 24
        daily = math.cos(2 * math.pi * (solar_hour - 15) / 24)
        amplitude = 4.5 * (1 - 0.6 * cover / 100)
        temp = season_t + amplitude * daily
        rh = min(100.0, max(35.0, 78 + 12 * (cover / 100 - 0.5) - 15 * daily))
        gamma = math.log(rh / 100) + 17.62 * temp / (243.12 + temp)
        dew = 243.12 * gamma / (17.62 - gamma)
        rain_chance = _noise(sky.seed, hour_key, 1)
        precip = (cover - 85) / 15 * 1.5 * rain_chance if cover > 85 else 0.0
        pressure = 1016 - 14 * cover / 100 + 4 * math.sin(2 * math.pi * hour_key / 120)
        wind = 9 + 14 * cover / 100 + 5 * max(0.0, math.sin(math.radians(now.elevation)))
        wind += 3 * (_noise(sky.seed, hour_key, 2) - 0.5)
        values: dict[str, float] = {
            "temperature_2m": temp,
            "apparent_temperature": temp - 0.08 * wind,
            "relative_humidity_2m": rh,
            "dew_point_2m": dew,
            "precipitation": precip,
            "rain": precip if temp > 1 else 0.0,
            "surface_pressure": pressure - ELEVATION_M / 8.3,
            "pressure_msl": pressure,
            "cloud_cover": cover,
            "cloud_cover_low": 0.75 * cover,
            "cloud_cover_mid": 0.5 * cover,
            "cloud_cover_high": min(100.0, 10 + 0.35 * cover),
            "visibility": max(1000.0, 24_000 - 60 * cover - (8000 if precip > 0 else 0)),
            "weather_code": float(
                61
                if precip > 0
                else 0
                if cover < 20
                else 1
                if cover < 40
                else 2
                if cover < 70
                else 3
            ),
            "wind_speed_10m": wind / 3.6 if wind_ms else wind,
            "wind_gusts_10m": 1.8 * wind / 3.6 if wind_ms else 1.8 * wind,
            "wind_direction_10m": (225 + 70 * math.sin(2 * math.pi * hour_key / 72)) % 360,
            "is_day": 1.0 if now.elevation > 0 else 0.0,
            "sunshine_duration": 3600 * sum(s.dni > 120 for s in samples) / len(samples),
            "shortwave_radiation": sum(s.ghi for s in samples) / len(samples),
            "direct_radiation": sum(s.direct for s in samples) / len(samples),
            "diffuse_radiation": sum(s.diffuse for s in samples) / len(samples),
            "direct_normal_irradiance": sum(s.dni for s in samples) / len(samples),
            "terrestrial_radiation": sum(s.terrestrial for s in samples) / len(samples),
            "shortwave_radiation_instant": now.ghi,
            "direct_radiation_instant": now.direct,
            "diffuse_radiation_instant": now.diffuse,
            "direct_normal_irradiance_instant": now.dni,
            "terrestrial_radiation_instant": now.terrestrial,
        }
        for v in req_vars:
            out[v].append(round(values[v], 2))
    return out


# --- the answer ----------------------------------------------------------------------


def _offset_s(req: WeatherRequest) -> int:
    if req.tz is None:
        return 0
    offset = req.start.astimezone(req.tz).utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


def _abbreviation(req: WeatherRequest) -> str:
    if req.tz is None:
        return "GMT"
    return req.start.astimezone(req.tz).tzname() or req.tz_name


def _unit(req: WeatherRequest, name: str) -> tuple[int, str]:
    _, _, unit, text = VARIABLES[name]
    if req.wind_ms and name in ("wind_speed_10m", "wind_gusts_10m"):
        return _UNIT_MS, "m/s"
    return unit, text


def answer_json(req: WeatherRequest, sky: CloudySky) -> Any:
    """The JSON answer: one object, or a list for several locations."""
    zone = req.tz or UTC
    times = [
        (req.start + timedelta(hours=k)).astimezone(zone).strftime("%Y-%m-%dT%H:%M")
        for k in range(req.hours)
    ]
    out = []
    for lat, lon in req.locations:
        series = hourly_values(
            req.variables, lat, lon, req.start, req.hours, sky, wind_ms=req.wind_ms
        )
        item: dict[str, Any] = {
            "latitude": lat,
            "longitude": lon,
            "generationtime_ms": 0.1,
            "utc_offset_seconds": _offset_s(req),
            "timezone": req.tz_name,
            "timezone_abbreviation": _abbreviation(req),
            "elevation": ELEVATION_M,
        }
        if req.variables:
            item["hourly_units"] = {"time": "iso8601"} | {
                v: _unit(req, v)[1] for v in req.variables
            }
            item["hourly"] = {"time": times} | series
        out.append(item)
    return out[0] if len(out) == 1 else out


def answer_flatbuffers(req: WeatherRequest, sky: CloudySky) -> bytes:
    """The FlatBuffers answer: one size-prefixed `WeatherApiResponse` per location."""
    parts = []
    start_s = int(req.start.timestamp())
    for index, (lat, lon) in enumerate(req.locations):
        series = hourly_values(
            req.variables, lat, lon, req.start, req.hours, sky, wind_ms=req.wind_ms
        )
        fields: list[tuple[int, flatbuf.Field]] = [
            (0, flatbuf.Scalar("f", lat)),
            (1, flatbuf.Scalar("f", lon)),
            (2, flatbuf.Scalar("f", ELEVATION_M)),
            (3, flatbuf.Scalar("f", 0.1)),
            (4, flatbuf.Scalar("q", index)),
            (5, flatbuf.Scalar("B", _MODEL_BEST_MATCH)),
            (6, flatbuf.Scalar("i", _offset_s(req))),
            (7, flatbuf.String(req.tz_name)),
            (8, flatbuf.String(_abbreviation(req))),
        ]
        if req.variables:
            variables = []
            for name in req.variables:
                var_id, altitude, _, _ = VARIABLES[name]
                vfields: list[tuple[int, flatbuf.Field]] = [
                    (0, flatbuf.Scalar("B", var_id)),
                    (1, flatbuf.Scalar("B", _unit(req, name)[0])),
                    (3, flatbuf.Vector("f", series[name])),
                ]
                if altitude:
                    vfields.append((5, flatbuf.Scalar("h", altitude)))
                variables.append(flatbuf.Table(vfields))
            hourly = flatbuf.Table(
                [
                    (0, flatbuf.Scalar("q", start_s)),
                    (1, flatbuf.Scalar("q", start_s + 3600 * req.hours)),
                    (2, flatbuf.Scalar("i", 3600)),
                    (3, flatbuf.TableVector(variables)),
                ]
            )
            fields.append((11, hourly))
        parts.append(flatbuf.encode(flatbuf.Table(fields), size_prefixed=True))
    return b"".join(parts)
