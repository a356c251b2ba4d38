"""Shared fixtures: a throwaway MQTT broker for the service tests (never the shared :1883).

`mqtt_broker` (session): a Mosquitto of its own on a free 127.0.0.1 port, from testcontainers
when it is installed and a Docker engine answers, else the local `mosquitto` binary (CI
installs it; without either the fixture FAILS, it does not skip). `mqtt_broker.restart()`
stops and starts it on the same port (retained messages are lost: no persistence), for
reconnect tests.
Tests share the broker: give each its own base topic and client-id prefix.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

MOSQUITTO_IMAGE = "eclipse-mosquitto:2"
_START_TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


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
            if _accepts(self.host, self.port):
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
    """The eclipse-mosquitto image via testcontainers, published on a fixed free port."""

    def start(self) -> None:
        if self._container is not None:  # a restart keeps the container and its port
            self._container.get_wrapped_container().start()
        else:
            from testcontainers.core.container import DockerContainer

            # inside the container the broker listens on 1883; the host sees self.port
            self._config.write_text("listener 1883\nallow_anonymous true\npersistence false\n")
            container = (
                DockerContainer(MOSQUITTO_IMAGE)
                .with_bind_ports(1883, self.port)
                .with_volume_mapping(str(self._workdir), "/mosquitto/config", "ro")
            )
            container.start()
            self._container = container
        self._wait_ready(lambda: True)

    def stop(self) -> None:
        if self._container is not None:
            self._container.get_wrapped_container().stop(timeout=1)

    def remove(self) -> None:
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.stop()
            self._container = None


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MqttBroker]:
    """A throwaway broker for the whole session (see the module docstring)."""
    workdir = tmp_path_factory.mktemp("mosquitto")
    broker: MqttBroker
    if importlib.util.find_spec("testcontainers") is not None and _docker_works():
        broker = DockerMosquitto(workdir)
    else:
        binary = shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()),
            None,
        )
        if binary is None:
            pytest.fail(
                "no MQTT broker for the tests: install mosquitto (apt-get install mosquitto) "
                "or make a Docker engine reachable"
            )
        broker = LocalMosquitto(workdir, binary)
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
