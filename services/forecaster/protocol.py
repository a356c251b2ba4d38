"""The forecaster's worker protocol: one JSON request on stdin, one JSON answer on stdout.

Imported by both sides: the service (main environment, pydantic 2.14) and the worker
(`.venv-forecaster`, quartz's pydantic 2.6.2). So: plain pydantic v2 features only, and no
import from `shared` (whose settings need a newer pydantic-settings than the island has).

Times on the wire are ISO 8601 in UTC with an offset; quartz's own naive-UTC times are
converted by the worker, never passed on.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

PROTOCOL_VERSION: Final = 1
#: quartz-solar-forecast's resolution.
STEP_S: Final = 900
#: The Open-Meteo weather sources quartz 1.2.12 knows (`nwp_source`).
NwpSource = Literal["icon", "gfs", "ukmo", "ecmwf"]
#: Open-Meteo endpoint (the weather model) quartz asks for each source.
NWP_ENDPOINTS: dict[str, str] = {
    "icon": "dwd-icon",
    "gfs": "gfs",
    "ukmo": "ukmo_seamless",
    "ecmwf": "ecmwf",
}

Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() != timedelta(0):
        raise ValueError("must be an ISO 8601 time in UTC with its offset (+00:00 or Z)")
    return value


class Site(_Wire):
    """One PV array, as quartz's `PVSite` takes it, with its configured name."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    latitude: Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False)]
    longitude: Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False)]
    capacity_kwp: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    tilt: Annotated[float, Field(ge=0, le=90, allow_inf_nan=False)] = 35.0
    orientation: Annotated[float, Field(ge=0, le=360, allow_inf_nan=False)] = 180.0


class WorkerRequest(_Wire):
    """Forecast every site from `ts` (UTC, on quartz's 15-minute grid)."""

    protocol: Literal[1] = PROTOCOL_VERSION
    ts: datetime
    #: Open-Meteo-compatible base URL (scheme and host, maybe a port), no path.
    weather_url: Annotated[str, Field(min_length=1, max_length=500)]
    nwp_source: NwpSource = "icon"
    #: Timeout of one weather HTTP request, s.
    http_timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    sites: Annotated[list[Site], Field(min_length=1, max_length=64)]

    @field_validator("ts")
    @classmethod
    def _on_grid(cls, value: datetime) -> datetime:
        _utc(value)
        if value.second or value.microsecond or value.minute % 15:
            raise ValueError("must be on the 15-minute grid")
        return value


class SiteForecast(_Wire):
    """One site's forecast: mean power per 15-minute step from the answer's `start`, kW."""

    name: str
    power_kw: Annotated[list[Finite], Field(min_length=1)]


class WorkerResult(_Wire):
    """A forecast for every site of the request, in the request's order."""

    protocol: Literal[1] = PROTOCOL_VERSION
    ok: Literal[True] = True
    start: datetime
    step_s: Literal[900] = STEP_S
    sites: list[SiteForecast]
    #: The PV model, e.g. `quartz-solar-forecast 1.2.12 gb (model-0.4.0)`.
    pv_model: str
    #: The Open-Meteo endpoint asked (the weather model), e.g. `dwd-icon`.
    weather_model: str
    #: Every weather URL asked (base URL, path and query), for the log and the tests.
    weather_requests: list[str] = []
    #: Wall time of the model runs (imports and weather included), s.
    elapsed_s: float = 0.0
    #: Time to import quartz and its stack, s.
    import_s: float = 0.0
    #: The worker's peak resident memory, MB.
    peak_rss_mb: float = 0.0

    @field_validator("start")
    @classmethod
    def _start_utc(cls, value: datetime) -> datetime:
        return _utc(value)


class WorkerFailure(_Wire):
    """The forecast could not be made: the weather (network, bad answer), the model or the
    request itself."""

    protocol: Literal[1] = PROTOCOL_VERSION
    ok: Literal[False] = False
    kind: Literal["request", "weather", "model"]
    error: Annotated[str, Field(max_length=2000)]


def parse_answer(text: str | bytes) -> WorkerResult | WorkerFailure:
    """The worker's answer; raises ValueError (pydantic's ValidationError is one) when unusable."""
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("ok"), bool):
        raise ValueError("the worker's answer is not an object with a boolean `ok`")
    if data["ok"]:
        return WorkerResult.model_validate(data)
    return WorkerFailure.model_validate(data)
