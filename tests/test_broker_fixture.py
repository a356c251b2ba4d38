"""The tests' throwaway broker (tests/conftest.py), both kinds.

* the local `mosquitto` process: in every run;
* the mosquitto image in a container through testcontainers: marked `compose`, run by `make
  test-compose` (tests/test_compose.py's run), where a Docker engine runs and the image is
  there (MOSQUITTO_IMAGE: the stand-in it builds); left out of a plain pytest, which has no
  engine.

Each: it answers MQTT on 127.0.0.1 at its port, keeps retained messages while it runs, loses
them on `restart()` (no persistence) on the same port, where clients connect again; `stop()`
stops it. And the choice between them (TEST_BROKER, and what `auto` looks at).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import (
    DockerMosquitto,
    LocalMosquitto,
    MqttBroker,
    broker_kind,
    make_broker,
)
from tests.docker_helpers import Engine


def _retained(broker: MqttBroker, topic: str, timeout_s: float = 3.0) -> bytes | None:
    """The retained payload on `topic` as a new subscriber gets it (None: nothing)."""
    got: list[bytes] = []
    subscribed = threading.Event()
    arrived = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fx-{uuid.uuid4().hex[:8]}")
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *_: subscribed.set()

    def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        got.append(bytes(message.payload))
        arrived.set()

    client.on_message = on_message
    client.connect(broker.host, broker.port, keepalive=10)
    client.loop_start()
    try:
        assert subscribed.wait(timeout_s), "no SUBACK"
        arrived.wait(0.5)  # a retained message comes right after the SUBACK, if there is one
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0] if got else None


def _publish_retained(broker: MqttBroker, topic: str, payload: bytes) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fx-{uuid.uuid4().hex[:8]}")
    client.connect(broker.host, broker.port, keepalive=10)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def _refuses(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0) as s:
            s.settimeout(1.0)
            return s.recv(1) == b""  # a published port with nothing behind it closes at once
    except OSError:
        return True


@contextlib.contextmanager
def running(broker: MqttBroker) -> Iterator[MqttBroker]:
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        if isinstance(broker, DockerMosquitto):
            broker.remove()


def exercise(broker: MqttBroker) -> None:
    """What the service tests rely on, checked on a broker of either kind."""
    assert broker.host == "127.0.0.1"
    topic = f"fixture/{uuid.uuid4().hex[:8]}/state"
    _publish_retained(broker, topic, b"before")
    assert _retained(broker, topic) == b"before"
    port = broker.port
    broker.restart()
    assert broker.port == port  # clients reconnect where they were
    assert _retained(broker, topic) is None  # no persistence: a restart forgets
    _publish_retained(broker, topic, b"after")
    assert _retained(broker, topic) == b"after"
    broker.stop()
    assert _refuses(broker.host, port)


def test_the_local_mosquitto_broker(tmp_path: Path) -> None:
    broker = make_broker("local", tmp_path)
    assert isinstance(broker, LocalMosquitto)
    with running(broker):
        exercise(broker)


@pytest.mark.compose
def test_the_container_broker(
    tmp_path: Path, docker_engine: Engine, base_images: dict[str, str]
) -> None:
    """The mosquitto image through testcontainers (under make test-compose: the stand-in)."""
    image = os.environ.get("MOSQUITTO_IMAGE") or base_images["MOSQUITTO_IMAGE"]
    broker = make_broker("docker", tmp_path, image)
    assert isinstance(broker, DockerMosquitto)
    assert broker.image == image
    with running(broker):
        exercise(broker)
        logs = broker.logs()
    assert "mosquitto version" in logs, logs  # it was that image's broker that answered


def test_test_broker_chooses_the_kind() -> None:
    yes, no = (lambda: True), (lambda: False)
    everything = {"testcontainers": yes, "docker": yes, "image": yes}
    assert broker_kind("auto", **everything) == "docker"
    assert broker_kind("auto", **{**everything, "image": no}) == "local"  # no pull is tried
    assert broker_kind("auto", **{**everything, "docker": no}) == "local"
    assert broker_kind("auto", **{**everything, "testcontainers": no}) == "local"
    assert broker_kind("local", **everything) == "local"
    assert broker_kind("docker", testcontainers=no, docker=no, image=no) == "docker"
    with pytest.raises(pytest.UsageError, match="TEST_BROKER"):
        broker_kind("podman", **everything)
