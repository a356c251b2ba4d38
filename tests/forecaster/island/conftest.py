"""Fixtures of the island's tests: quartz imported once, a generated-weather server per test."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from services.forecaster import worker
from tests.forecaster.fake_weather import FakeOpenMeteo, serve


def pytest_configure(config: pytest.Config) -> None:
    try:
        import quartz_solar_forecast  # noqa: F401
    except ImportError:
        raise pytest.UsageError(
            f"tests/forecaster/island run in the forecaster's environment, not {sys.prefix}: "
            "make venv-forecaster && .venv-forecaster/bin/pytest tests/forecaster/island"
        ) from None


@pytest.fixture(scope="session")
def quartz() -> worker.Quartz:
    return worker.import_quartz()


@pytest.fixture
def weather() -> Iterator[FakeOpenMeteo]:
    """Generated sunny weather on a free 127.0.0.1 port (tests change `sky` / `failure`)."""
    yield from serve(FakeOpenMeteo())
