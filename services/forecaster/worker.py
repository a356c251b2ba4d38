"""The forecaster's model worker: quartz-solar-forecast 1.2.12's own code, in `.venv-forecaster`.

`python -m services.forecaster.worker` reads one `WorkerRequest` (JSON) on stdin, runs quartz's
`run_forecast(model="gb")` (its default model, `model-0.4.0.pkl`, ships inside the package) for
every site, and writes one `WorkerResult` or `WorkerFailure` (JSON) on stdout. Whatever quartz
prints goes to stderr, so the protocol channel stays clean.

The seam (quartz 1.2.12, `quartz_solar_forecast/data.py`): `get_nwp` builds its URLs from the
constant `https://api.open-meteo.com/v1/<endpoint>` (and `archive-api.` for old dates) and gets
them through `requests_cache.CachedSession(".cache", expire_after=-1)` wrapped by
`retry_requests.retry` and `openmeteo_requests.Client`. The narrowest place to redirect them is
that session: inside `data`, the name `requests_cache` is replaced, for the duration of a run,
by an object whose `CachedSession(...)` is a plain `requests.Session` that

* sends the Open-Meteo URLs to the configured base URL (and nowhere else: an unexpected URL is
  refused), keeping path and query, so quartz's own variables, dates and endpoints are asked;
* has a timeout (quartz sets none: a dead network would hang the run);
* caches nothing: quartz's cache is an SQLite file in the working directory that never expires,
  which would answer a re-forecast later the same day with the first run's weather.

Everything else is quartz's: `get_nwp`'s request and decoding, `format_nwp_data`,
`make_pv_data`, the psp model and its features. `forecast.get_nwp` is wrapped only to tell a
weather failure from a model failure and to refuse weather that does not cover the forecast.

quartz works in naive UTC: the worker hands it naive UTC and labels its answer UTC again.
It also changes in place the site it is given (capacity capped at 4 kWp) and the live-generation
frame (rescaled): every run gets a fresh `PVSite` and a copy of the frame.

Importing quartz switches off HTTPS certificate checks for the whole process (`data.py` sets
`ssl._create_default_https_context = ssl._create_unverified_context`); `import_quartz` puts the
checking context back at once.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import logging
import math
import os
import resource
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from services.forecaster.protocol import (
    NWP_ENDPOINTS,
    STEP_S,
    Site,
    SiteForecast,
    WorkerFailure,
    WorkerRequest,
    WorkerResult,
)

log = logging.getLogger("hwsched.forecaster.worker")

#: The quartz release whose `data.py` the seam is made for.
QUARTZ_VERSION = "1.2.12"
QUARTZ_MODEL = "gb"
#: The model file quartz's `gb` model loads (in the package).
QUARTZ_MODEL_FILE = "model-0.4.0"
#: Where quartz sends its weather requests.
OPEN_METEO_ORIGINS = ("https://api.open-meteo.com", "https://archive-api.open-meteo.com")
DEFAULT_WEATHER_URL = OPEN_METEO_ORIGINS[0]
#: Weather variables quartz's model reads (as `get_nwp` renames them) that must be finite.
_NWP_VARIABLES = ("t", "prate", "lcc", "mcc", "hcc", "si10", "dswrf", "dlwrf", "vis")


class WeatherError(Exception):
    """The weather could not be had: no network, an error status, or an unusable answer."""


class ModelError(Exception):
    """quartz ran but its answer cannot be used (or quartz itself failed)."""


@dataclass(frozen=True)
class Quartz:
    """The imported quartz modules the worker uses."""

    data: Any
    forecast: Any
    pydantic_models: Any
    version: str

    @property
    def pv_model(self) -> str:
        return f"quartz-solar-forecast {self.version} {QUARTZ_MODEL} ({QUARTZ_MODEL_FILE})"


def import_quartz() -> Quartz:
    """Import quartz, then put back the process's HTTPS certificate checking at once.

    Raises ModelError if the installed quartz is not the release the seam was made for.
    """
    saved = ssl._create_default_https_context
    try:
        data = importlib.import_module("quartz_solar_forecast.data")
        forecast = importlib.import_module("quartz_solar_forecast.forecast")
        models = importlib.import_module("quartz_solar_forecast.pydantic_models")
    finally:
        ssl._create_default_https_context = saved
    version = importlib.metadata.version("quartz-solar-forecast")
    if version != QUARTZ_VERSION:
        raise ModelError(
            f"quartz-solar-forecast {version} is installed; the forecaster's weather seam is "
            f"made for {QUARTZ_VERSION} (rebuild the island: make venv-forecaster)"
        )
    return Quartz(data=data, forecast=forecast, pydantic_models=models, version=version)


# --- the weather seam -------------------------------------------------------------------------


def _import(module: str) -> Any:
    """A module of the island's stack (not installed where the service is type-checked)."""
    return importlib.import_module(module)


def rewrite_url(url: str, base_url: str) -> str:
    """An Open-Meteo URL of quartz's, sent to `base_url` instead (same path and query).

    With the default base URL nothing changes. Raises WeatherError for any other URL.
    """
    base = base_url.rstrip("/")
    for origin in OPEN_METEO_ORIGINS:
        if url.startswith(origin + "/"):
            return url if base == DEFAULT_WEATHER_URL else base + url[len(origin) :]
    raise WeatherError(f"quartz asked for {url.split('?', maxsplit=1)[0]}, which is not Open-Meteo")


def make_weather_session(base_url: str, timeout_s: float, asked: list[str]) -> Any:
    """A `requests.Session` for quartz's weather requests (see the module docstring)."""
    requests = _import("requests")

    class WeatherSession(requests.Session):  # type: ignore[misc, name-defined]
        def request(self, method: str, url: Any, *args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", timeout_s)
            response = super().request(method, rewrite_url(str(url), base_url), *args, **kwargs)
            asked.append(str(response.url))
            return response

    return WeatherSession()


class _SessionMaker:
    """Stands in for the `requests_cache` module inside quartz's `data` module."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make

    def CachedSession(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802 (its name)
        """What quartz calls: `CachedSession(".cache", expire_after=-1)`; no cache is made."""
        return self._make()


def _check_nwp(nwp: Any, source: str, ts: datetime, hours: int) -> None:
    """Refuse weather that does not cover `ts` .. `ts + hours` with finite values."""
    try:
        frame = nwp[source].to_pandas()
        first = nwp["time"].values[0]
        pd = _import("pandas")
        times = pd.Timestamp(first) + pd.to_timedelta(frame.index)
        wanted = (times >= pd.Timestamp(ts) - pd.Timedelta(hours=1)) & (
            times <= pd.Timestamp(ts) + pd.Timedelta(hours=hours)
        )
        window = frame.loc[wanted, [v for v in _NWP_VARIABLES if v in frame.columns]]
    except Exception as err:  # a malformed answer that still decoded
        raise WeatherError(f"unusable weather answer: {type(err).__name__}: {err}") from err
    if window.empty or len(window) < hours:
        raise WeatherError(
            f"the weather answer covers {len(window)} of the {hours} hours from "
            f"{ts:%Y-%m-%d %H:%M} UTC"
        )
    if not math.isfinite(float(window.to_numpy(dtype=float).sum())):
        bad = [c for c in window.columns if not window[c].notna().all()]
        raise WeatherError(f"the weather answer has missing values ({', '.join(bad)})")


@contextlib.contextmanager
def weather_from(
    quartz: Quartz, base_url: str, timeout_s: float, *, check_hours: int = 26
) -> Iterator[list[str]]:
    """Within the block, quartz fetches its weather from `base_url`; yields the URLs asked."""
    asked: list[str] = []
    data, forecast = quartz.data, quartz.forecast
    original_cache, original_get_nwp = data.requests_cache, forecast.get_nwp

    def get_nwp(site: Any, ts: datetime, nwp_source: str = "icon") -> Any:
        try:
            nwp = original_get_nwp(site=site, ts=ts, nwp_source=nwp_source)
        except WeatherError:
            raise
        except Exception as err:  # requests', openmeteo's and decoding errors
            raise WeatherError(f"{type(err).__name__}: {err}") from err
        _check_nwp(nwp, nwp_source, ts, check_hours)
        return nwp

    data.requests_cache = _SessionMaker(lambda: make_weather_session(base_url, timeout_s, asked))
    forecast.get_nwp = get_nwp
    try:
        yield asked
    finally:
        data.requests_cache = original_cache
        forecast.get_nwp = original_get_nwp


# --- running the model ------------------------------------------------------------------------


def forecast_site(
    quartz: Quartz,
    site: Site,
    ts: datetime,
    *,
    nwp_source: str = "icon",
    live_generation: Any = None,
) -> Any:
    """quartz's forecast of one site from `ts` (aware): a pandas Series of kW, UTC index.

    `live_generation` (optional): a DataFrame with `timestamp` and `power_kw`, as quartz takes
    it; aware timestamps are converted to the naive UTC quartz compares with. Neither it nor
    anything else of the caller's is changed.
    """
    pd = _import("pandas")
    start = pd.Timestamp(ts.astimezone(UTC).replace(tzinfo=None))  # quartz: naive UTC
    pv_site = quartz.pydantic_models.PVSite(
        latitude=site.latitude,
        longitude=site.longitude,
        capacity_kwp=site.capacity_kwp,
        tilt=site.tilt,
        orientation=site.orientation,
    )  # a fresh one: quartz caps capacity_kwp at 4 on it, in place
    live = None
    if live_generation is not None:
        live = live_generation.copy(deep=True)  # quartz rescales power_kw in place
        stamps = pd.to_datetime(live["timestamp"])
        if stamps.dt.tz is not None:
            stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
        live["timestamp"] = stamps
    frame = quartz.forecast.run_forecast(
        site=pv_site, model=QUARTZ_MODEL, ts=start, nwp_source=nwp_source, live_generation=live
    )
    if "power_kw" not in frame or len(frame) == 0:
        raise ModelError(f"quartz answered without power_kw for {site.name!r}")
    series = frame["power_kw"].astype(float)
    index = pd.DatetimeIndex(series.index)
    if index.tz is not None or index[0] != start:
        raise ModelError(
            f"quartz's forecast for {site.name!r} starts at {index[0]}, not at {start} (naive UTC)"
        )
    if len(index) > 1 and (index[1:] - index[:-1] != pd.Timedelta(seconds=STEP_S)).any():
        raise ModelError(f"quartz's forecast for {site.name!r} is not on a 15-minute grid")
    if not series.notna().all():
        raise ModelError(f"quartz's forecast for {site.name!r} has missing values")
    series.index = index.tz_localize("UTC")
    return series.clip(lower=0.0)


def run(request: WorkerRequest, quartz: Quartz | None = None) -> WorkerResult | WorkerFailure:
    """Forecast every site of `request` (imports quartz unless given)."""
    began = time.monotonic()
    import_s = 0.0
    try:
        if quartz is None:
            quartz = import_quartz()
            import_s = time.monotonic() - began
    except Exception as err:
        return WorkerFailure(kind="model", error=f"cannot import quartz: {_one_line(err)}")
    ts = request.ts.astimezone(UTC)
    sites: list[SiteForecast] = []
    try:
        with weather_from(quartz, request.weather_url, request.http_timeout_s) as asked:
            for site in request.sites:
                series = forecast_site(quartz, site, ts, nwp_source=request.nwp_source)
                sites.append(SiteForecast(name=site.name, power_kw=[float(v) for v in series]))
    except WeatherError as err:
        return WorkerFailure(kind="weather", error=_one_line(err))
    except Exception as err:
        return WorkerFailure(kind="model", error=_one_line(err))
    n = min(len(s.power_kw) for s in sites)
    return WorkerResult(
        start=ts,
        sites=[SiteForecast(name=s.name, power_kw=s.power_kw[:n]) for s in sites],
        pv_model=quartz.pv_model,
        weather_model=NWP_ENDPOINTS[request.nwp_source],
        weather_requests=asked,
        elapsed_s=round(time.monotonic() - began, 3),
        import_s=round(import_s, 3),
        peak_rss_mb=round(peak_rss_mb(), 1),
    )


def handle(raw: bytes) -> WorkerResult | WorkerFailure:
    """One request's bytes to its answer (never raises)."""
    try:
        request = WorkerRequest.model_validate_json(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(request)"
        return WorkerFailure(kind="request", error=f"{where}: {first['msg']}")
    return run(request)


def peak_rss_mb() -> float:
    """This process's peak resident memory, MB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _one_line(err: BaseException) -> str:
    ours = isinstance(err, WeatherError | ModelError)
    text = str(err) if ours else f"{type(err).__name__}: {err}"
    text = " | ".join(line.strip() for line in text.splitlines() if line.strip())
    return text[:1900]


def main() -> int:
    """Read the request on stdin, answer on stdout; quartz's own output goes to stderr."""
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # quartz print()s: keep them off the protocol channel
    sys.stdout = sys.stderr
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    answer = handle(sys.stdin.buffer.read())
    channel.write(answer.model_dump_json())
    channel.write("\n")
    channel.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
