"""`python -m services.forecaster.worker` as the service runs it: JSON in, JSON out."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from services.forecaster.protocol import (
    Site,
    WorkerFailure,
    WorkerRequest,
    WorkerResult,
    parse_answer,
)
from tests.forecaster.fake_weather import FakeOpenMeteo

ROOT = Path(__file__).resolve().parents[3]
TS = datetime(2026, 6, 21, 4, 0, tzinfo=UTC)


def _run_worker(stdin: bytes, tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "services.forecaster.worker"],
        input=stdin,
        capture_output=True,
        timeout=300,
        cwd=tmp_path,
        check=False,
    )


def test_the_worker_answers_one_json_document_on_stdout(
    weather: FakeOpenMeteo, tmp_path: Path
) -> None:
    sites = [
        Site(name="South roof", latitude=52.09, longitude=5.12, capacity_kwp=3.2),
        Site(name="Garage", latitude=52.09, longitude=5.12, capacity_kwp=5.0, orientation=90),
    ]
    request = WorkerRequest(ts=TS, weather_url=weather.url, sites=sites)
    done = _run_worker(request.model_dump_json().encode(), tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    # quartz print()s (the Victron notice, the >4 kWp warning) went to stderr, not the channel
    assert b"greater than 4kWp" in done.stderr
    assert len(done.stdout.splitlines()) == 1
    answer = parse_answer(done.stdout)
    assert isinstance(answer, WorkerResult)
    assert answer.start == TS
    assert [s.name for s in answer.sites] == ["South roof", "Garage"]
    assert all(len(s.power_kw) == 192 for s in answer.sites)
    # the figures the service logs: a whole run with imports, and the worker's peak memory
    assert 0 < answer.import_s < answer.elapsed_s < 120
    assert 100 < answer.peak_rss_mb < 1024  # fits the smallest Pi (1 GB)
    assert list(tmp_path.iterdir()) == []  # nothing written to the working directory


def test_a_bad_request_is_a_failure_answer_not_a_crash(tmp_path: Path) -> None:
    done = _run_worker(b'{"protocol": 1, "sites": []}', tmp_path)
    assert done.returncode == 0
    answer = parse_answer(done.stdout)
    assert isinstance(answer, WorkerFailure)
    assert answer.kind == "request"
    assert json.loads(done.stdout)["ok"] is False
