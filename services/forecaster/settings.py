"""The forecaster's own settings: `HWSCHED_FORECAST__*` environment variables.

    HWSCHED_FORECAST__WEATHER_URL=http://127.0.0.1:8099   # the simulated house's weather
    HWSCHED_FORECAST__WORKER_PYTHON=/opt/forecaster/bin/python

The common settings (broker, time zone, daily boundary, devices file) are `shared.config`'s.
A bad value is a `ConfigError`: one line naming the variable.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from services.forecaster.protocol import NwpSource
from shared.config import ConfigError, _FieldError, _shown, describe_error

ENV_PREFIX = "HWSCHED_FORECAST__"
#: Open-Meteo itself.
DEFAULT_WEATHER_URL = "https://api.open-meteo.com"
_V1_ENDPOINT = re.compile(r"/v1(/[^/]*)?$")
#: The island's interpreter when this repository is the working tree (`make venv-forecaster`).
REPO_WORKER_PYTHON = Path(__file__).resolve().parents[2] / ".venv-forecaster" / "bin" / "python"


def _without_credentials(value: str) -> str:
    """`value` as it may be shown: a `user:password@` part replaced by `***@`."""
    scheme, sep, rest = value.partition("://")
    if not sep:
        return _shown(value)
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    return _shown(f"{scheme}{sep}{netloc}{slash}{path}")


def _check_base_url(value: str) -> str:
    """`http(s)://host[:port][/prefix]`: no query, no fragment, no trailing slash kept.

    An endpoint URL pasted instead (`.../v1/forecast`, `.../v1/dwd-icon`) is cut back to its
    base: quartz adds `/v1/<endpoint>` itself. A refused URL is shown without credentials.
    """
    shown = _without_credentials(value)
    try:
        parts = urlsplit(value)
    except ValueError:
        raise ValueError(f"must be an http(s) base URL (got {shown})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s) base URL like {DEFAULT_WEATHER_URL} (got {shown})")
    if parts.username or parts.password:
        raise ValueError(f"must not contain credentials (got {shown})")
    if parts.query or parts.fragment:
        raise ValueError(f"must be a base URL without query or fragment (got {shown})")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"has an invalid port (got {shown})") from None
    return _V1_ENDPOINT.sub("", value.rstrip("/"))


Seconds = Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)]


class ForecastSettings(BaseSettings):
    """Where the weather comes from, the worker, timeouts and the retry back-off."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, hide_input_in_errors=True
    )

    #: Open-Meteo-compatible base URL: quartz's `https://api.open-meteo.com/v1/...` go here.
    weather_url: Annotated[str, AfterValidator(_check_base_url)] = DEFAULT_WEATHER_URL
    #: quartz's `nwp_source`: icon (DWD ICON, as the original), gfs, ukmo or ecmwf.
    nwp_source: NwpSource = "icon"
    #: The island's python (with quartz-solar-forecast 1.2.12); default: this tree's.
    worker_python: Path = REPO_WORKER_PYTHON
    #: Longest run of the worker (import, weather and model for every array), s.
    worker_timeout_s: Seconds = 600.0
    #: Timeout of one weather HTTP request inside the worker, s.
    http_timeout_s: Annotated[float, Field(gt=0, le=600, allow_inf_nan=False)] = 30.0
    #: After a failed forecast, the next try: first this, doubling up to the maximum, s.
    retry_min_s: Seconds = 60.0
    retry_max_s: Seconds = 1800.0
    #: A re-forecast asked on the request topic runs at most this often, s (0: every time).
    request_min_interval_s: Annotated[float, Field(ge=0, le=3600, allow_inf_nan=False)] = 30.0

    @model_validator(mode="after")
    def _back_off(self) -> ForecastSettings:
        if self.retry_max_s < self.retry_min_s:
            raise _FieldError(
                ("retry_max_s",),
                f"must be >= retry_min_s ({self.retry_min_s:g}) (got {self.retry_max_s:g})",
            )
        return self

    @property
    def weather_source(self) -> str:
        """The `source` of a forecast from this weather: `open-meteo`, or where it came from."""
        if self.weather_url == DEFAULT_WEATHER_URL:
            return "open-meteo"
        return f"open-meteo-compatible {urlsplit(self.weather_url).netloc}"


def load_forecast_settings() -> ForecastSettings:
    """The settings from the environment; raises ConfigError (one line).

    A `HWSCHED_FORECAST__*` variable that is no setting is refused (a typo never passes
    silently).
    """
    fields = {name.upper() for name in ForecastSettings.model_fields}
    for var in sorted(os.environ):
        upper = var.upper()
        if upper.startswith(ENV_PREFIX) and upper[len(ENV_PREFIX) :] not in fields:
            raise ConfigError(f"environment variable {var}: unknown setting")
    try:
        return ForecastSettings()
    except SettingsError as err:
        message = f"environment: {err}"
    except ValidationError as err:
        first = err.errors()[0]
        cause = first.get("ctx", {}).get("error")
        loc = cause.loc if isinstance(cause, _FieldError) else tuple(first["loc"])
        field = str(loc[0]) if loc else ""
        name = f"{ENV_PREFIX}{field.upper()}" if field else "HWSCHED_FORECAST__*"
        message = f"environment variable {name}: {describe_error(err)}"
    # raised outside the handler: the ValidationError (with the URL as given) is not its context
    raise ConfigError(message)
