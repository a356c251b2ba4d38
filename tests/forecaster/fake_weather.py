"""Generated Open-Meteo weather for the forecaster's tests, served on 127.0.0.1.

`FakeOpenMeteo` answers what quartz-solar-forecast 1.2.12 asks (`/v1/dwd-icon`, `/v1/gfs`,
... with `latitude`, `longitude`, `start_date`, `end_date`, `hourly`, `format=flatbuffers`)
with a size-prefixed FlatBuffers `WeatherApiResponse`, as Open-Meteo does. The values come
from a `Sky`: the clear-sky radiation of `shared.sky` times a transmission per hour (1 = sunny,
0.1 = heavy overcast), so a test knows what the model was fed.

It records every request, and can be told to fail: an HTTP status, bytes that are not
FlatBuffers, or weather for the wrong days. Pure standard library plus the simulator's
FlatBuffers writer and `shared.sky`, so it runs in both environments.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from services.simulator import flatbuf
from shared.sky import PERFORMANCE_RATIO, PanelArray, clear_sky_power_w

#: Open-Meteo SDK codes: variable name -> (Variable enum, altitude m, Unit enum).
_SDK: dict[str, tuple[int, int, int]] = {
    "temperature_2m": (47, 2, 1),
    "precipitation": (24, 0, 32),
    "cloud_cover_low": (5, 0, 35),
    "cloud_cover_mid": (6, 0, 35),
    "cloud_cover_high": (4, 0, 35),
    "wind_speed_10m": (59, 10, 24),
    "shortwave_radiation": (32, 0, 39),
    "direct_radiation": (13, 0, 39),
    "visibility": (55, 0, 29),
}

Failure = Literal["none", "status_500", "status_400", "garbage", "wrong_days", "nan"]


@dataclass(frozen=True)
class Sky:
    """Transmission of the sun per instant: `factor(when)` in 0..1."""

    name: str
    factor: Callable[[datetime], float]


SUNNY = Sky("sunny", lambda _when: 1.0)
OVERCAST = Sky("overcast", lambda _when: 0.12)


def _ghi(when: datetime, lat: float, lon: float) -> float:
    flat = PanelArray(latitude=lat, longitude=lon, capacity_kwp=1.0, tilt=0.0)
    return clear_sky_power_w(when, flat) / PERFORMANCE_RATIO  # 1 kWp flat: W = W/m²


def hourly_values(
    variables: list[str], lat: float, lon: float, start: datetime, hours: int, sky: Sky
) -> dict[str, list[float]]:
    """Hourly series from `start` (UTC). Radiation at T is the mean of the hour before T."""
    out: dict[str, list[float]] = {v: [] for v in variables}
    for k in range(hours):
        at = start + timedelta(hours=k)
        samples = [at - timedelta(minutes=5 + 10 * i) for i in range(6)]
        ghi = sum(_ghi(s, lat, lon) * sky.factor(s) for s in samples) / 6
        clear = sum(_ghi(s, lat, lon) for s in samples) / 6
        f = sky.factor(at)
        beam = min(1.0, max(0.0, (f - 0.3) / 0.7))
        cover = 100 * min(1.0, max(0.0, (1 - f) / 0.8))
        values = {
            "temperature_2m": 14 + 5 * math.sin(2 * math.pi * (at.hour - 9) / 24) - 3 * cover / 100,
            "precipitation": 0.6 if cover > 90 else 0.0,
            "cloud_cover_low": 0.8 * cover,
            "cloud_cover_mid": 0.6 * cover,
            "cloud_cover_high": min(100.0, 10 + 0.4 * cover),
            "wind_speed_10m": 8 + 10 * cover / 100,
            "shortwave_radiation": ghi,
            "direct_radiation": min(ghi, 0.8 * clear * beam),
            "visibility": 24_000 - 150 * cover,
        }
        for v in variables:
            out[v].append(round(values[v], 2))
    return out


def encode_answer(
    variables: list[str], lat: float, lon: float, start: datetime, hours: int, sky: Sky
) -> bytes:
    """One size-prefixed FlatBuffers `WeatherApiResponse` (Open-Meteo SDK schema)."""
    series = hourly_values(variables, lat, lon, start, hours, sky)
    tables = []
    for name in variables:
        var_id, altitude, unit = _SDK[name]
        vfields: list[tuple[int, flatbuf.Field]] = [
            (0, flatbuf.Scalar("B", var_id)),
            (1, flatbuf.Scalar("B", unit)),
            (3, flatbuf.Vector("f", series[name])),
        ]
        if altitude:
            vfields.append((5, flatbuf.Scalar("h", altitude)))
        tables.append(flatbuf.Table(vfields))
    start_s = int(start.timestamp())
    hourly = flatbuf.Table(
        [
            (0, flatbuf.Scalar("q", start_s)),
            (1, flatbuf.Scalar("q", start_s + 3600 * hours)),
            (2, flatbuf.Scalar("i", 3600)),
            (3, flatbuf.TableVector(tables)),
        ]
    )
    root = flatbuf.Table(
        [
            (0, flatbuf.Scalar("f", lat)),
            (1, flatbuf.Scalar("f", lon)),
            (2, flatbuf.Scalar("f", 5.0)),
            (3, flatbuf.Scalar("f", 0.1)),
            (6, flatbuf.Scalar("i", 0)),
            (7, flatbuf.String("GMT")),
            (8, flatbuf.String("GMT")),
            (11, hourly),
        ]
    )
    return flatbuf.encode(root, size_prefixed=True)


@dataclass
class FakeOpenMeteo:
    """The server's state: the sky, a failure mode, and the requests seen."""

    sky: Sky = SUNNY
    failure: Failure = "none"
    requests: list[tuple[str, dict[str, list[str]]]] = field(default_factory=list)
    url: str = ""

    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        self.requests.append((path, query))
        if self.failure == "status_500":
            return 500, "text/plain", b"internal error"
        if self.failure == "status_400":
            return 400, "application/json", b'{"error": true, "reason": "simulated refusal"}'
        if self.failure == "garbage":
            return 200, "application/octet-stream", b"\x07\x00\x00\x00not a flatbuffer"
        variables = [v for text in query.get("hourly", []) for v in text.split(",") if v]
        unknown = [v for v in variables if v not in _SDK]
        if unknown or not path.startswith("/v1/"):
            reason = f"cannot answer {path} {unknown}"
            return 400, "application/json", f'{{"error": true, "reason": "{reason}"}}'.encode()
        first = date.fromisoformat(query["start_date"][0])
        last = date.fromisoformat(query["end_date"][0])
        if self.failure == "wrong_days":
            first, last = first - timedelta(days=30), last - timedelta(days=30)
        start = datetime.combine(first, time(0), UTC)
        hours = 24 * ((last - first).days + 1)
        lat, lon = float(query["latitude"][0]), float(query["longitude"][0])
        body = encode_answer(variables, lat, lon, start, hours, self.sky)
        if self.failure == "nan":
            nan_sky = Sky("nan", lambda _when: math.nan)
            body = encode_answer(variables, lat, lon, start, hours, nan_sky)
        return 200, "application/octet-stream", body

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]


def _handler(state: FakeOpenMeteo) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            status, kind, body = state.answer(parts.path, parse_qs(parts.query))
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


def serve(state: FakeOpenMeteo) -> Iterator[FakeOpenMeteo]:
    """Serve `state` on a free 127.0.0.1 port while the generator is suspended."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
