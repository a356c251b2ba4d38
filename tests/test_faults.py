"""The fault soak's short version (CI): two simulated days of the whole stack with every
fault kind once, and everything that must hold (see `bench.soak`).

Marked `soak`, left out of a plain `pytest` (about 5 minutes, and the forecaster's island is
needed: `.venv-forecaster`); `make test-faults` (in `make test`) runs it. The long version,
a week of random faults with a printed seed: `make soak`.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from datetime import date, timedelta
from pathlib import Path

import pytest

from bench import soak
from services.stack import FORECASTER_PYTHON, mosquitto_path

pytestmark = pytest.mark.soak

DAY = date(2026, 5, 12)  # spring: sun and clouds, so plans change through the day


def test_two_days_of_faults_lose_nothing() -> None:
    assert FORECASTER_PYTHON.exists(), "the forecaster's island is needed: make venv-forecaster"
    assert mosquitto_path() is not None, "mosquitto is needed (apt-get install mosquitto)"
    # Not under pytest's 0700 temporary root: mosquitto started as root drops to its own user.
    run_dir = Path(tempfile.mkdtemp(prefix="hwsched-soak-"))
    run_dir.chmod(0o711)
    faults = soak.scripted_faults(DAY)
    options = soak.SoakOptions(
        start=soak.local(DAY, 5, 0),
        end=soak.local(DAY + timedelta(days=2), 6, 30),
        speed=600.0,
        seed=1,
        run_dir=run_dir,
        faults=faults,
    )
    run, findings, took = asyncio.run(soak.soak_run(options))
    text = soak.report(run, findings, took)
    print(text)
    assert not findings, f"{text}\n(logs: {run_dir})"
    # the run did what it says: every fault injected, the house switched and filled
    assert len(run.seen.injected) == len(faults), text
    assert sum(run.seen.kills.values()) == 8, text  # 7 kill faults + 1 inside the override
    assert run.seen.broker_restarts == 3, text
    assert len(run.seen.retained_after_restart) == 3, text
    assert run.seen.switch_kills, "the actuator was never killed right after a switch"
    assert [e for e in run.seen.events if e["event"] == "full"]
    assert len(run.seen.messages) > 10_000
    shutil.rmtree(run_dir, ignore_errors=True)  # kept when something failed: the logs
