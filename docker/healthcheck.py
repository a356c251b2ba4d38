"""A service image's HEALTHCHECK: is the service up, connected and still working?

    python /app/healthcheck.py [SERVICE] [--max-age-s 180] [--timeout-s 8]

SERVICE defaults to the image's (the environment variable SERVICE, set by docker/Dockerfile).
Reads the settings exactly as the service does (`config/settings.toml` and `HWSCHED_*`,
broker credentials included), connects to the broker and reads the service's retained
`<base>/service/<name>/availability` and `.../status`. Healthy (exit 0) when availability is
`online` and the status is younger than `--max-age-s`: a service republishes its status at
least every 60 s (`ServiceOptions.status_interval_s`), so a hung event loop, a lost broker
connection (the Will says `offline`) or a crash all turn it unhealthy. Exit 1 otherwise, with
one line saying why (Docker shows it in `docker inspect`).

The simulated house (`simulator`, no MQTT): healthy while its control API answers (its URL
in `<state dir>/simulator.json`, written once its servers listen; state dir /sim).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import urllib.request
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: The image's service (docker/Dockerfile sets it).
SERVICE_ENV = "SERVICE"
#: The simulator's state directory in compose (its --state-dir) and its info file there.
SIM_INFO = Path("/sim/simulator.json")


def check_simulator(*, timeout_s: float, info: Path = SIM_INFO) -> str | None:
    """None while the simulated house's control API answers, else why not (one line)."""
    try:
        control_url = json.loads(info.read_text())["control_url"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"no control URL in {info} yet: {err}"
    try:
        with urllib.request.urlopen(f"{control_url}/state", timeout=timeout_s) as answer:
            json.load(answer)
    except (OSError, ValueError) as err:
        return f"the simulator's control API ({control_url}) does not answer: {err}"
    return None


def check(service: str, *, max_age_s: float, timeout_s: float) -> str | None:
    """None when healthy, else why not (one line)."""
    # Here, not at the top: the simulator's image has no MQTT client (and needs none).
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from shared.config import ConfigError, load_settings
    from shared.topics import Topics

    try:
        settings = load_settings()
    except ConfigError as err:
        return f"configuration: {err}"
    topics = Topics(settings.base_topic)
    wanted = {topics.availability(service): "availability", topics.status(service): "status"}
    got: dict[str, bytes] = {}
    refused: list[str] = []
    done = threading.Event()

    def on_connect(c: mqtt.Client, _u: object, _f: object, rc: Any, _p: object) -> None:
        if rc.is_failure:
            refused.append(str(rc))
            done.set()
            return
        for topic in wanted:
            c.subscribe(topic, qos=1)

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        got[wanted[message.topic]] = bytes(message.payload)
        if len(got) == len(wanted):
            done.set()

    broker = settings.broker
    client_id = f"{broker.client_id_prefix}-health-{service}-{uuid.uuid4().hex[:8]}"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    if broker.username is not None:
        password = broker.password.get_secret_value() if broker.password is not None else None
        client.username_pw_set(broker.username, password)
    if broker.tls:
        client.tls_set()
    client.on_connect = on_connect
    client.on_message = on_message
    try:
        client.connect(broker.host, broker.port, keepalive=30)
    except OSError as err:
        return f"cannot reach the broker {broker.host}:{broker.port}: {err}"
    client.loop_start()
    try:
        done.wait(timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    if refused:
        return f"the broker refused the connection: {refused[0]}"
    if "availability" not in got:
        return f"no availability of {service} on the broker within {timeout_s:g} s"
    if got["availability"] != b"online":
        return f"{service} is {got['availability'].decode(errors='replace')!r}"
    if "status" not in got:
        return f"no status of {service} on the broker within {timeout_s:g} s"
    try:
        stamp = datetime.fromisoformat(json.loads(got["status"])["timestamp"])
    except (ValueError, KeyError, TypeError) as err:
        return f"unreadable status of {service}: {err}"
    age = (datetime.now(UTC) - stamp).total_seconds()
    if age > max_age_s:
        return f"{service}'s last status is {age:.0f} s old (> {max_age_s:g} s)"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="healthcheck.py", description=__doc__.split("\n")[0])
    parser.add_argument("service", nargs="?", default=os.environ.get(SERVICE_ENV))
    parser.add_argument("--max-age-s", type=float, default=180.0)
    parser.add_argument("--timeout-s", type=float, default=8.0)
    args = parser.parse_args(argv)
    if not args.service:
        parser.error(f"name the service (or set {SERVICE_ENV})")
    if args.service == "simulator":
        problem = check_simulator(timeout_s=args.timeout_s)
    else:
        problem = check(args.service, max_age_s=args.max_age_s, timeout_s=args.timeout_s)
    if problem is not None:
        print(f"unhealthy: {problem}")
        return 1
    print(f"healthy: {args.service} online")
    return 0


if __name__ == "__main__":
    sys.exit(main())
