"""requirements/forecaster.lock holds exactly what a forecast imports (the island and the image).

A forecast run by the worker in a fresh interpreter, against generated weather: the
distributions of every module it then has imported are the lock's runtime part (above its
`# Test tools` line), and each is installed at the lock's version. The image installs that
part and nothing else (docker/Dockerfile, stage `island`), so a module the forecast needs and
the lock lacks fails here, and so does a pin nothing imports.

`python -m tests.forecaster.island.test_lock` prints what a forecast imports (to regenerate
the lock in a venv with quartz's full resolution: see the lock's header).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
LOCK = ROOT / "requirements" / "forecaster.lock"
#: Imported by a forecast but not the island's own: hwsched (installed from the repository)
#: and setuptools' start-up hook where a venv has setuptools (its .pth, not the forecast).
NOT_PINNED = frozenset({"hwsched", "setuptools"})


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_runtime_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in LOCK.read_text().splitlines():
        if raw.strip().lower().startswith("# test tools"):
            break
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[normalize(name)] = version.strip()
    return pins


def forecast_imports() -> dict[str, str]:
    """Run a forecast here against generated weather; the distributions imported, with
    their installed versions (normalized name -> version)."""
    from services.forecaster import worker
    from services.forecaster.protocol import WorkerRequest
    from tests.forecaster.fake_weather import FakeOpenMeteo, serve

    with contextlib.contextmanager(serve)(FakeOpenMeteo()) as weather:
        request = WorkerRequest.model_validate(
            {
                "ts": datetime(2026, 6, 21, 4, tzinfo=UTC).isoformat(),
                "weather_url": weather.url,
                "sites": [
                    {
                        "name": "south",
                        "latitude": 52.09,
                        "longitude": 5.12,
                        "capacity_kwp": 3.2,
                        "tilt": 35,
                        "orientation": 180,
                    }
                ],
            }
        )
        answer = worker.run(request)
        assert answer.ok, answer
    by_module = importlib.metadata.packages_distributions()
    found: dict[str, str] = {}
    for module in list(sys.modules):
        for dist in by_module.get(module.split(".")[0], []):
            name = normalize(dist)
            if name not in NOT_PINNED:
                found[name] = importlib.metadata.version(dist)
    return found


def test_the_lock_is_exactly_what_a_forecast_imports() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.forecaster.island.test_lock"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    imported: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    pins = lock_runtime_pins()
    assert sorted(set(imported) - set(pins)) == [], "imported by a forecast, not in the lock"
    assert sorted(set(pins) - set(imported)) == [], "in the lock, imported by no forecast"
    wrong = {n: (imported[n], pins[n]) for n in pins if imported[n] != pins[n]}
    assert wrong == {}, "installed version differs from the lock (make venv-forecaster)"


def main() -> None:
    # A fresh interpreter: only the forecast's imports (quartz's print()s go to stderr).
    channel = sys.stdout
    sys.stdout = sys.stderr
    found = forecast_imports()
    channel.write(json.dumps(dict(sorted(found.items()))) + "\n")
    channel.flush()


if __name__ == "__main__":
    main()
