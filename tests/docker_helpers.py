"""A Docker engine and the base images for the tests that need them (`compose` marker).

* `engine_up()`: the engine that answers `docker info`, or, where none does and this is root
  with Debian's docker.io installed, `dockerd --ip-forward=false` started in the background
  (containers reach only this machine; its log in a temporary file) and stopped again by
  `engine_down()`. An engine the tests did not start is left running.
* `base_images()`: the base images the images are built on. Docker Hub cannot be reached
  from CI's machines, so by default these are STAND-INS built from Debian's packages by
  docker/images.py (`standins`): Debian bookworm with Debian's python3 3.11 in place of
  python:3.11.14-slim-bookworm, and Debian's mosquitto 2.0.11 laid out like
  eclipse-mosquitto:2.0.22. COMPOSE_TEST_BASES=official builds on the official images
  instead (a machine that can pull them).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: How long a starting engine may take to answer.
ENGINE_START_S = 90.0


def load_images() -> ModuleType:
    """docker/images.py (a script, not a package)."""
    name = "hwsched_docker_images"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "docker" / "images.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


@dataclass
class Engine:
    """The engine the tests use; `process` is set when they started it."""

    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def started_here(self) -> bool:
        return self.process is not None


def engine_up() -> Engine:
    if docker_answers():
        print("[engine] reusing the Docker engine that is running", flush=True)
        return Engine()
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        pytest.fail(
            "no Docker engine answers `docker info`, and none can be started here "
            "(dockerd as root: apt-get install docker.io)"
        )
    log = Path(tempfile.mkdtemp(prefix="hwsched-dockerd-")) / "dockerd.log"
    began = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [dockerd, "--ip-forward=false"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    engine = Engine(process, log)
    while time.monotonic() - began < ENGINE_START_S:
        if process.poll() is not None:
            break
        if docker_answers():
            print(
                f"[engine] started dockerd (pid {process.pid}) in "
                f"{time.monotonic() - began:.1f} s; log {log}",
                flush=True,
            )
            return engine
        time.sleep(0.5)
    engine_down(engine)
    pytest.fail(f"dockerd did not come up:\n{log.read_text(errors='replace')[-3000:]}")


def engine_down(engine: Engine) -> None:
    """Stop the engine if the tests started it (its containers stop with it)."""
    process = engine.process
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    print(f"[engine] stopped dockerd (pid {process.pid})", flush=True)
    if engine.log is not None:
        with contextlib.suppress(OSError):
            shutil.rmtree(engine.log.parent)


def base_images() -> dict[str, str]:
    """PYTHON_IMAGE and MOSQUITTO_IMAGE: stand-ins unless COMPOSE_TEST_BASES=official."""
    images = load_images()
    if os.environ.get("COMPOSE_TEST_BASES", "standin") == "official":
        return {"PYTHON_IMAGE": images.PYTHON_IMAGE, "MOSQUITTO_IMAGE": images.MOSQUITTO_IMAGE}
    try:
        return dict(images.ensure_standins(network="host"))
    except images.ImagesError as err:
        pytest.fail(f"the stand-in base images could not be built: {err}")
