"""Shared fixtures: a throwaway MQTT broker for the service tests (never the shared :1883).

`mqtt_broker` (session): a Mosquitto of its own, reached on a free 127.0.0.1 port, one of

* **docker**: the mosquitto image (`MOSQUITTO_IMAGE`, default compose's eclipse-mosquitto) in
  a container through testcontainers, where testcontainers is installed, a Docker engine
  answers and the image is on the engine (no pull is tried: `docker pull` it once; `make
  test-compose` uses the stand-in it builds);
* **local**: the `mosquitto` binary as a child process (CI installs it) otherwise.

`TEST_BROKER=docker` or `TEST_BROKER=local` chooses instead (`auto`, the default, as above);
a broker that cannot be had FAILS the tests, it does not skip them. Both kinds are tested
(tests/test_broker_fixture.py: the local one in every run, the container under `make
test-compose`, where an engine runs). Either is ready once it answers an MQTT CONNECT (a
container's published port accepts TCP before the broker inside listens).
`mqtt_broker.restart()` stops and starts it on the same port (retained messages are lost: no
persistence), for reconnect tests.
Tests share the broker: give each its own base topic and client-id prefix.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.docker_helpers import Engine, engine_down, engine_up
from tests.docker_helpers import base_images as base_images_for_tests

#: The image of the container broker: the one compose runs (.env.example), unless
#: MOSQUITTO_IMAGE says otherwise (make test-compose: its stand-in).
DEFAULT_MOSQUITTO_IMAGE = "eclipse-mosquitto:2.0.22"
#: TEST_BROKER: auto (default), docker or local.
BROKER_KINDS = ("auto", "docker", "local")
_START_TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: MQTT 3.1.1 CONNECT, clean session, keep-alive 10 s, client id "ready-probe".
_CONNECT = bytes([0x10, 23, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 10, 0, 11]) + b"ready-probe"


def _answers_mqtt(host: str, port: int) -> bool:
    """Whether an MQTT broker answers a CONNECT on host:port with a CONNACK."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0) as s:
        s.settimeout(1.0)
        s.sendall(_CONNECT)
        answer = s.recv(4)
        return len(answer) >= 2 and answer[0] == 0x20
    return False


def mosquitto_image() -> str:
    return os.environ.get("MOSQUITTO_IMAGE") or DEFAULT_MOSQUITTO_IMAGE


def _image_present(image: str) -> bool:
    done = subprocess.run(
        ["docker", "image", "inspect", image], capture_output=True, timeout=30, check=False
    )
    return done.returncode == 0


def _docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


class MqttBroker:
    """A running throwaway broker: `host`, `port`, `restart()`, `stop()`."""

    def __init__(self, workdir: Path) -> None:
        self.host = "127.0.0.1"
        self.port = _free_port()
        self._workdir = workdir
        self._config = workdir / "mosquitto.conf"
        self._config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        self._log = workdir / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._container: Any = None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        """Stop the broker (clients see the connection drop), start it on the same port."""
        self.stop()
        self.start()

    def _wait_ready(self, alive: Callable[[], bool]) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if _answers_mqtt(self.host, self.port):
                return
            if not alive():
                break
            time.sleep(0.05)
        log = self._log.read_text(errors="replace") if self._log.exists() else ""
        self.stop()
        pytest.fail(f"the test MQTT broker did not accept connections on port {self.port}:\n{log}")


class LocalMosquitto(MqttBroker):
    """`mosquitto -c <conf>` as a child process."""

    def __init__(self, workdir: Path, binary: str) -> None:
        super().__init__(workdir)
        self._binary = binary

    def start(self) -> None:
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                [self._binary, "-c", str(self._config)], stdout=log, stderr=subprocess.STDOUT
            )
        process = self._process
        self._wait_ready(lambda: process.poll() is None)

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.kill()
        self._process.wait(timeout=10)
        self._process = None


class DockerMosquitto(MqttBroker):
    """The mosquitto image via testcontainers, published on a fixed free 127.0.0.1 port."""

    def __init__(self, workdir: Path, image: str) -> None:
        super().__init__(workdir)
        self.image = image

    def start(self) -> None:
        if self._container is not None:  # a restart keeps the container and its port
            self._container.get_wrapped_container().start()
        else:
            # testcontainers' reaper (Ryuk) is an image of its own from Docker Hub; the
            # fixture removes its container itself (remove()).
            os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
            from testcontainers.core.container import DockerContainer

            # inside the container the broker listens on 1883; the host sees self.port
            self._config.write_text("listener 1883\nallow_anonymous true\npersistence false\n")
            self._workdir.chmod(0o755)  # the broker drops to its own user after reading it
            self._config.chmod(0o644)
            container = DockerContainer(self.image).with_volume_mapping(
                str(self._workdir), "/mosquitto/config", "ro"
            )
            # on 127.0.0.1 only (with_bind_ports takes no address; docker's API does)
            container.ports["1883/tcp"] = (self.host, self.port)  # type: ignore[assignment]
            container.start()
            self._container = container
        self._wait_ready(self._running)

    def _running(self) -> bool:
        container = self._container.get_wrapped_container()
        container.reload()
        return bool(container.status == "running")

    def logs(self) -> str:
        if self._container is None:
            return ""
        return bytes(self._container.get_wrapped_container().logs()).decode(errors="replace")

    def stop(self) -> None:
        if self._container is not None:
            self._container.get_wrapped_container().stop(timeout=1)

    def remove(self) -> None:
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.stop()
            self._container = None


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()),
        None,
    )


def broker_kind(
    wanted: str,
    *,
    testcontainers: Callable[[], bool] = lambda: (
        importlib.util.find_spec("testcontainers") is not None
    ),
    docker: Callable[[], bool] = _docker_works,
    image: Callable[[], bool] = lambda: _image_present(mosquitto_image()),
) -> str:
    """`docker` or `local` for TEST_BROKER=`wanted` (see the module docstring)."""
    if wanted not in BROKER_KINDS:
        raise pytest.UsageError(f"TEST_BROKER={wanted!r}: one of {', '.join(BROKER_KINDS)}")
    if wanted != "auto":
        return wanted
    return "docker" if testcontainers() and docker() and image() else "local"


def make_broker(kind: str, workdir: Path, image: str | None = None) -> MqttBroker:
    """A broker of that kind (not started); fails the test when it cannot be had."""
    if kind == "docker":
        if importlib.util.find_spec("testcontainers") is None:
            pytest.fail("TEST_BROKER=docker: testcontainers is not installed (dev.lock)")
        if not _docker_works():
            pytest.fail("TEST_BROKER=docker: no Docker engine answers `docker info`")
        return DockerMosquitto(workdir, image or mosquitto_image())
    binary = mosquitto_binary()
    if binary is None:
        pytest.fail(
            "no MQTT broker for the tests: install mosquitto (apt-get install mosquitto) "
            "or make a Docker engine reachable"
        )
    return LocalMosquitto(workdir, binary)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Engine]:
    """A Docker engine for the session: the running one, or one started (and stopped) here."""
    engine = engine_up()
    try:
        yield engine
    finally:
        engine_down(engine)


@pytest.fixture(scope="session")
def base_images(docker_engine: Engine) -> dict[str, str]:
    """PYTHON_IMAGE and MOSQUITTO_IMAGE to build and run on (stand-ins unless told otherwise:
    tests/docker_helpers.py)."""
    return base_images_for_tests()


@pytest.fixture(scope="session")
def mqtt_broker(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[MqttBroker]:
    """A throwaway broker for the whole session (see the module docstring)."""
    workdir = tmp_path_factory.mktemp("mosquitto")
    kind = broker_kind(os.environ.get("TEST_BROKER", "auto"))
    image = None
    if kind == "docker" and os.environ.get("TEST_BROKER") == "docker":
        # chosen, not found: the session's engine (started if need be) and its base images
        request.getfixturevalue("docker_engine")
        image = (
            os.environ.get("MOSQUITTO_IMAGE")
            or request.getfixturevalue("base_images")["MOSQUITTO_IMAGE"]
        )
    broker = make_broker(kind, workdir, image)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        if isinstance(broker, DockerMosquitto):
            broker.remove()


@pytest.fixture
def restart_mqtt_broker(mqtt_broker: MqttBroker) -> Callable[[], None]:
    """Restart the session broker on the same port (retained messages are lost)."""
    return mqtt_broker.restart
