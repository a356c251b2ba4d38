"""The poller and the service runtime: fake devices on a ManualClock, then a real broker."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from services.poller.poller import (
    AnyDevice,
    MeasurementReader,
    Poller,
    PollerOptions,
    ReadingError,
    error_kind,
)
from shared.clock import Clock, ManualClock, SystemClock
from shared.config import BrokerSettings, DevicesConfig, Settings
from shared.homewizard import (
    ApiDisabledError,
    CertificateError,
    DeviceTimeoutError,
    DeviceUnreachableError,
    HomeWizardError,
    InvalidResponseError,
    Measurement,
    SocketState,
    SystemInfo,
    UnauthorizedError,
    UnsupportedError,
)
from shared.messages import (
    DeviceMeasurement,
    HouseSurplus,
    Message,
    OverrideRequest,
    ServiceStatus,
    SocketCommand,
    parse_availability,
    parse_message,
)
from shared.service import (
    Counters,
    RateLimitedLog,
    Service,
    ServiceOptions,
    run_service,
    with_timeout,
)
from shared.topics import Topics
from tests.conftest import MqttBroker
from tests.mqtt_helpers import retained_until

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
TOKEN = "0123456789abcdef" * 2
DEVICES = DevicesConfig.model_validate(
    {
        "devices": [
            {"device_name": "P1 meter", "device_type": "HWE-P1", "ip_address": "10.0.0.1"},
            {
                "device_name": "Boiler",
                "device_type": "HWE-SKT",
                "ip_address": "10.0.0.2",
                "max_power_usage": 2000,
                "energy_capacity": 2000,
            },
            {
                "device_name": "E-bike",
                "device_type": "HWE-SKT",
                "ip_address": "10.0.0.3",
                "max_power_usage": 300,
                "energy_capacity": 500,
            },
            {
                "device_name": "Battery",
                "device_type": "HWE-BAT",
                "ip_address": "10.0.0.4",
                "max_power_usage": 800,
                "energy_capacity": 2700,
                "user_info": {"name": "local/hwsched", "token": TOKEN},
            },
        ]
    }
)
POWER = {"P1 meter": -2000.0, "Boiler": 1200.0, "E-bike": 0.0, "Battery": 300.0}


# --- fakes ----------------------------------------------------------------------------------


class FakeDevice:
    """A device client: answers `power`, or raises `error`, or hangs `hang_s` first."""

    def __init__(self, clock: Clock, name: str, power: float) -> None:
        self.clock = clock
        self.name = name
        self.power: float | None = power
        self.soc: float | None = 55.0 if name == "Battery" else None
        self.error: Exception | None = None
        self.hang_s = 0.0
        self.calls: list[float] = []

    async def __aenter__(self) -> FakeDevice:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def measurement(self) -> Measurement:
        self.calls.append(self.clock.monotonic())
        if self.hang_s:
            await self.clock.sleep(self.hang_s)
        if self.error is not None:
            raise self.error
        return Measurement(
            power_w=self.power,
            energy_import_kwh=12.5,
            energy_export_kwh=3.25,
            state_of_charge_pct=self.soc,
        )

    async def socket_state(self) -> SocketState:
        return SocketState(power_on=bool(self.power), switch_lock=False, brightness=255)


@dataclass
class Recorder:
    """A Publisher that keeps (clock time, topic, payload)."""

    clock: Clock
    sent: list[tuple[float, str, Message | str]] = field(default_factory=list)

    def publish(self, topic: str, payload: Message | str) -> None:
        self.sent.append((self.clock.monotonic(), topic, payload))

    def on(self, topic: str) -> list[tuple[float, Message | str]]:
        return [(t, p) for t, tp, p in self.sent if tp == topic]

    def payloads(self, topic: str) -> list[Any]:
        return [p for _, p in self.on(topic)]


TOPICS = Topics("hw")


@dataclass
class Rig:
    clock: Any  # ManualClock, or SystemClock for the real-time test
    fakes: dict[str, FakeDevice]
    recorder: Recorder
    counters: Counters
    poller: Poller

    def times(self, device_slug: str) -> list[float]:
        return [t for t, _ in self.recorder.on(TOPICS.measurement(device_slug))]

    def availability(self, device_slug: str) -> list[Any]:
        return self.recorder.payloads(TOPICS.device_availability(device_slug))

    def surpluses(self) -> list[HouseSurplus]:
        return self.recorder.payloads(TOPICS.surplus())


def make_rig(clock: Clock | None = None, **options: Any) -> Rig:
    clock = clock if clock is not None else ManualClock(T0, settle_rounds=50)
    fakes = {name: FakeDevice(clock, name, power) for name, power in POWER.items()}
    recorder = Recorder(clock)
    counters = Counters()

    def factory(device: AnyDevice) -> AbstractAsyncContextManager[MeasurementReader]:
        return fakes[device.device_name]

    poller = Poller(
        DEVICES,
        recorder,
        topics=TOPICS,
        counters=counters,
        clock=clock,
        client_factory=factory,
        options=PollerOptions(**{"interval_s": 1.0, **options}),
    )
    return Rig(clock, fakes, recorder, counters, poller)


async def run_poller(rig: Rig, seconds: float) -> None:
    task = asyncio.create_task(rig.poller.run())
    await rig.clock.run_for(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


# --- concurrency, back-off ------------------------------------------------------------------


async def test_a_hanging_device_does_not_delay_the_others() -> None:
    rig = make_rig()
    rig.fakes["Boiler"].hang_s = 10.0
    await run_poller(rig, 5.0)
    for slug in ("p1_meter", "e_bike", "battery"):
        assert rig.times(slug) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], slug
    assert rig.times("boiler") == []
    # its own timeout (1 s = the interval), then back-off: tries at 0, 2 (1+1), 5 (2+1+2)
    assert rig.fakes["Boiler"].calls == [0.0, 2.0, 5.0]
    assert rig.counters["polls_failed_timeout"] == 2
    assert rig.counters["device_failures_boiler"] == 2
    assert rig.availability("boiler") == ["offline"]
    last = rig.surpluses()[-1]
    assert last.missing == ["Boiler"]
    assert "Boiler" not in last.sockets_w


async def test_a_hanging_device_in_real_time() -> None:
    clock = SystemClock()
    rig = make_rig(clock, interval_s=0.1, timeout_s=0.5)

    async def hang() -> Measurement:
        await asyncio.sleep(10)
        raise AssertionError("not reached")

    rig.fakes["Boiler"].measurement = hang  # type: ignore[method-assign]
    task = asyncio.create_task(rig.poller.run())
    await asyncio.sleep(0.8)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    for slug in ("p1_meter", "e_bike", "battery"):
        times = rig.times(slug)
        assert len(times) >= 5, (slug, times)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert max(gaps) < 0.35, (slug, gaps)  # waiting for the hanging one: >= 0.5
    assert rig.counters["polls_failed_timeout"] >= 1
    assert rig.times("boiler") == []


async def test_failing_device_backs_off_exponentially_then_recovers() -> None:
    rig = make_rig(max_backoff_s=8.0)
    bike = rig.fakes["E-bike"]
    bike.error = DeviceUnreachableError("10.0.0.3", "connection refused")
    await run_poller_steps(rig, [(40.0, None)])
    assert bike.calls == [0.0, 1.0, 3.0, 7.0, 15.0, 23.0, 31.0, 39.0]
    assert rig.counters["polls_failed_unreachable"] == 8
    assert rig.counters["device_failures_e_bike"] == 8
    # the others went on at the interval meanwhile
    assert len(rig.times("p1_meter")) == 41


async def run_poller_steps(rig: Rig, steps: list[tuple[float, Callable[[], None] | None]]) -> None:
    """Run the poller for each (seconds, then-do) step."""
    task = asyncio.create_task(rig.poller.run())
    try:
        for seconds, then in steps:
            await rig.clock.run_for(seconds)
            if then is not None:
                then()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_device_vanishes_and_returns() -> None:
    rig = make_rig(max_backoff_s=4.0)
    boiler = rig.fakes["Boiler"]

    def vanish() -> None:
        boiler.error = DeviceUnreachableError("10.0.0.2", "no route to host")

    def come_back() -> None:
        boiler.error = None

    await run_poller_steps(rig, [(2.5, vanish), (10.0, come_back), (6.0, None)])
    assert rig.availability("boiler") == ["online", "offline", "online"]
    # back at the interval once read again
    times = rig.times("boiler")
    assert times[:3] == [0.0, 1.0, 2.0]
    after = [t for t in times if t > 3.0]
    assert len(after) >= 4
    assert [b - a for a, b in itertools.pairwise(after)] == [1.0] * (len(after) - 1)
    assert rig.counters["polls_ok"] > 0
    assert rig.counters["polls_failed"] == rig.counters["device_failures_boiler"]
    # every other device stayed online, published once
    assert rig.availability("p1_meter") == ["online"]
    assert rig.availability("battery") == ["online"]


# --- surplus --------------------------------------------------------------------------------


async def test_surplus_arithmetic_and_breakdown() -> None:
    rig = make_rig()
    await run_poller(rig, 1.5)
    last = rig.surpluses()[-1]
    # export 2000 + boiler 1200 + bike 0 + battery charging 300
    assert last.surplus_w == pytest.approx(3500.0)
    assert last.p1_power_w == -2000.0
    assert last.sockets_w == {"Boiler": 1200.0, "E-bike": 0.0}
    assert last.batteries_w == {"Battery": 300.0}
    assert sorted(last.based_on) == sorted(POWER)
    assert last.missing == []
    assert rig.counters["surplus_published"] == len(rig.surpluses()) == 2


async def test_surplus_counts_a_discharging_battery_negative_and_import() -> None:
    rig = make_rig()
    rig.fakes["P1 meter"].power = 500.0  # importing
    rig.fakes["Battery"].power = -400.0  # discharging
    await run_poller(rig, 1.0)
    assert rig.surpluses()[-1].surplus_w == pytest.approx(-500 + 1200 + 0 - 400)


async def test_failed_and_stale_devices_are_missing() -> None:
    # a timeout longer than 2 intervals lets a hanging device's reading go stale unfailed
    rig = make_rig(timeout_s=10.0)
    battery, bike = rig.fakes["Battery"], rig.fakes["E-bike"]
    seen: list[HouseSurplus] = []

    def trouble() -> None:  # at 1.5: the bike fails from t=2, the battery hangs from t=2
        battery.hang_s = 20.0
        bike.error = InvalidResponseError("10.0.0.3", "truncated JSON")

    def look() -> None:
        seen.append(rig.surpluses()[-1])

    await run_poller_steps(rig, [(1.5, trouble), (2.0, look), (1.0, look)])
    at_3, at_4 = seen
    # at 3: the bike failed (at 2); the battery's reading of t=1 is 2 intervals old: fresh
    assert at_3.missing == ["E-bike"]
    assert at_3.batteries_w == {"Battery": 300.0}
    # at 4: the battery's reading is 3 intervals old: stale, though no poll failed
    assert sorted(at_4.missing) == ["Battery", "E-bike"]
    assert at_4.batteries_w == {}
    assert at_4.sockets_w == {"Boiler": 1200.0}
    assert at_4.surplus_w == pytest.approx(2000 + 1200)
    assert rig.counters["polls_failed_invalid_response"] >= 1
    assert rig.availability("battery") == ["online"]  # not failed (yet)


async def test_no_surplus_without_a_fresh_p1_reading() -> None:
    rig = make_rig()
    p1 = rig.fakes["P1 meter"]

    def break_p1() -> None:
        p1.error = DeviceTimeoutError("10.0.0.1", "no answer")

    await run_poller_steps(rig, [(1.5, break_p1), (10.0, None)])
    assert len(rig.surpluses()) == 2  # t=0 and t=1 only
    assert rig.poller.surplus() is None
    assert rig.counters["polls_failed_timeout"] >= 3
    assert len(rig.times("boiler")) == 12  # the others went on


# --- counters, kinds, bad readings ----------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (DeviceUnreachableError("h", "m"), "unreachable"),
        (DeviceTimeoutError("h", "m"), "timeout"),
        (TimeoutError(), "timeout"),
        (UnauthorizedError("h", "m"), "unauthorized"),
        (ApiDisabledError("h", "m"), "api_disabled"),
        (InvalidResponseError("h", "m"), "invalid_response"),
        (UnsupportedError("h", "m"), "unsupported"),
        (CertificateError("h", "m"), "certificate"),
        (HomeWizardError("h", "m"), "device_error"),
        (ReadingError("m"), "invalid_reading"),
        (RuntimeError("bug"), "unexpected"),
    ],
)
def test_error_kinds(error: Exception, kind: str) -> None:
    assert error_kind(error) == kind


async def test_bad_readings_are_counted_never_fatal(caplog: pytest.LogCaptureFixture) -> None:
    rig = make_rig()
    rig.fakes["Battery"].soc = 150.0  # out of range
    rig.fakes["E-bike"].power = None  # no power sent
    rig.fakes["Boiler"].error = RuntimeError("a bug in a client")
    with caplog.at_level(logging.WARNING):
        await run_poller(rig, 3.0)
    c = rig.counters.snapshot()
    assert c["polls_failed_invalid_reading"] >= 4
    assert c["polls_failed_unexpected"] >= 2
    assert c["polls_ok"] == 4  # the P1 meter, at 0..3
    assert c["polls_failed"] == c["polls_failed_invalid_reading"] + c["polls_failed_unexpected"]
    text = caplog.text
    assert "Battery (10.0.0.4): poll failed (invalid_reading): state_of_charge_pct" in text
    assert "E-bike (10.0.0.3): poll failed (invalid_reading): the device sent no power" in text
    assert "Boiler (10.0.0.2): poll failed (unexpected): a bug in a client" in text
    # repeats are rate-limited: one line per device so far
    assert text.count("Boiler (10.0.0.2): poll failed") == 1


async def test_measurements_are_valid_messages() -> None:
    rig = make_rig()
    await run_poller(rig, 0.5)
    sock = rig.recorder.payloads(TOPICS.measurement("boiler"))[-1]
    assert isinstance(sock, DeviceMeasurement)
    assert (sock.device, sock.device_type, sock.api) == ("Boiler", "HWE-SKT", "v1")
    assert (sock.power_on, sock.switch_lock) == (True, False)
    bat = rig.recorder.payloads(TOPICS.measurement("battery"))[-1]
    assert (bat.api, bat.state_of_charge_pct, bat.power_on) == ("v2", 55.0, None)
    p1 = rig.recorder.payloads(TOPICS.measurement("p1_meter"))[-1]
    assert (p1.power_w, p1.energy_import_kwh, p1.energy_export_kwh) == (-2000.0, 12.5, 3.25)
    assert p1.timestamp == T0
    for payload in (sock, bat, p1):
        assert parse_message(DeviceMeasurement, payload.model_dump_json()) == payload


# --- runtime pieces -------------------------------------------------------------------------


def test_counters() -> None:
    changes: list[int] = []
    c = Counters(on_change=lambda: changes.append(1))
    c.inc("polls_ok")
    c.inc("polls_ok", 2)
    assert c["polls_ok"] == 3
    assert c["never"] == 0
    assert len(changes) == 2
    with pytest.raises(ValueError, match="slug"):
        c.inc("Polls OK")
    for i in range(300):
        c.inc(f"c_{i}")
    snap = c.snapshot()
    assert len(snap) == 256
    assert snap["counters_overflow"] > 0
    ServiceStatus(
        timestamp=T0, service="poller", state="online", version="1", started_at=T0, counters=snap
    )


def test_rate_limited_log(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock(T0)
    log = RateLimitedLog(logging.getLogger("test.rl"), clock, every_s=60)
    with caplog.at_level(logging.INFO, "test.rl"):
        assert log.log("k", logging.WARNING, "device %s failed", "x")
        for _ in range(5):
            clock.advance(10)
            assert not log.log("k", logging.WARNING, "device %s failed", "x")
        assert log.log("other", logging.WARNING, "another key")
        clock.advance(10)
        assert log.log("k", logging.WARNING, "device %s failed", "x")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "device x failed",
        "another key",
        "device x failed (5 more since the last such line)",
    ]


async def test_with_timeout_uses_the_clock() -> None:
    clock = ManualClock(T0)
    job = asyncio.create_task(with_timeout(clock, 5, clock.sleep(60)))
    await clock.run_for(4.9)
    assert not job.done()
    await clock.run_for(0.2)
    with pytest.raises(TimeoutError):
        await job
    assert await with_timeout(clock, 5, asyncio.sleep(0, result=7)) == 7


def test_config_error_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "settings.toml"
    bad.write_text("poll_interval_s = -1\n")
    clean_environment(monkeypatch)
    monkeypatch.setenv("HWSCHED_SETTINGS_FILE", str(bad))

    async def never(service: Service, devices: DevicesConfig) -> None:
        raise AssertionError("not started")

    assert run_service("poller", never) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "poll_interval_s: must be > 0" in err


# --- against a real broker ------------------------------------------------------------------


def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No HWSCHED_* variable from the caller's shell (it could point at the shared broker)."""
    for name in list(os.environ):
        if name.upper().startswith("HWSCHED_"):
            monkeypatch.delenv(name)


@pytest.fixture
def settings(mqtt_broker: MqttBroker, monkeypatch: pytest.MonkeyPatch) -> Settings:
    clean_environment(monkeypatch)
    tag = uuid.uuid4().hex[:10]
    return Settings(
        broker=BrokerSettings(
            host=mqtt_broker.host, port=mqtt_broker.port, client_id_prefix=f"test-{tag}"
        ),
        base_topic=f"test{tag}",
        poll_interval_s=0.2,
    )


FAST = ServiceOptions(
    status_interval_s=1.0,
    status_min_interval_s=0.1,
    reconnect_min_s=0.05,
    reconnect_max_s=0.4,
    publish_timeout_s=2.0,
    keepalive_s=5,
)


retained = retained_until


def fake_factory(clock: Clock) -> Callable[[AnyDevice], AbstractAsyncContextManager[Any]]:
    fakes = {name: FakeDevice(clock, name, power) for name, power in POWER.items()}
    return lambda device: fakes[device.device_name]


def start_poller_service(settings: Settings) -> tuple[Service, asyncio.Task[int]]:
    service = Service("poller", settings, options=FAST, version="test")
    poller = Poller(
        DEVICES,
        service,
        topics=service.topics,
        counters=service.counters,
        clock=service.clock,
        client_factory=fake_factory(service.clock),
        options=PollerOptions(interval_s=settings.poll_interval_s),
        log=service.log,
    )
    return service, asyncio.create_task(service.run(poller.run))


async def test_retained_messages_reach_a_subscriber(
    mqtt_broker: MqttBroker, settings: Settings
) -> None:
    t = Topics(settings.base_topic)
    service, task = start_poller_service(settings)
    await asyncio.wait_for(service.wait_connected(), 5)
    wanted = [
        t.availability("poller"),
        t.status("poller"),
        t.surplus(),
        *(t.measurement(d.slug) for d in DEVICES.devices),
        *(t.device_availability(d.slug) for d in DEVICES.devices),
    ]

    def complete(got: dict[str, bytes]) -> bool:
        if not all(w in got for w in wanted):
            return False
        status = parse_message(ServiceStatus, got[t.status("poller")])
        # The first surplus can come before every device's first reading: wait for a
        # surplus that is based on all of them.
        surplus = parse_message(HouseSurplus, got[t.surplus()])
        return status.counters.get("polls_ok", 0) > 0 and not surplus.missing

    got = await retained(mqtt_broker, settings.base_topic, complete)
    assert parse_availability(got[t.availability("poller")]) == "online"
    status = parse_message(ServiceStatus, got[t.status("poller")])
    assert (status.service, status.state, status.version) == ("poller", "online", "test")
    surplus = parse_message(HouseSurplus, got[t.surplus()])
    assert surplus.surplus_w == pytest.approx(3500.0)
    for d in DEVICES.devices:
        m = parse_message(DeviceMeasurement, got[t.measurement(d.slug)])
        assert m.device == d.device_name
        assert parse_availability(got[t.device_availability(d.slug)]) == "online"

    service.request_stop()
    assert await asyncio.wait_for(task, 10) == 0
    got = await retained(
        mqtt_broker,
        settings.base_topic,
        lambda g: g.get(t.availability("poller")) == b"offline",
    )
    final = parse_message(ServiceStatus, got[t.status("poller")])
    assert final.state == "offline"


async def test_reconnects_after_a_broker_restart(
    mqtt_broker: MqttBroker, settings: Settings, restart_mqtt_broker: Callable[[], None]
) -> None:
    t = Topics(settings.base_topic)
    service, task = start_poller_service(settings)
    await asyncio.wait_for(service.wait_connected(), 5)
    await retained(mqtt_broker, settings.base_topic, lambda g: t.surplus() in g)
    await asyncio.to_thread(restart_mqtt_broker)  # no persistence: the retained are gone
    restarted = datetime.now(UTC)

    def republished(got: dict[str, bytes]) -> bool:
        if got.get(t.availability("poller")) != b"online" or t.measurement("boiler") not in got:
            return False
        m = parse_message(DeviceMeasurement, got[t.measurement("boiler")])
        status = got.get(t.status("poller"))
        return (
            m.timestamp > restarted
            and status is not None
            and parse_message(ServiceStatus, status).counters.get("mqtt_connects", 0) >= 2
        )

    got = await retained(mqtt_broker, settings.base_topic, republished, within_s=8.0)
    counters = parse_message(ServiceStatus, got[t.status("poller")]).counters
    assert counters["mqtt_connection_lost"] >= 1
    service.request_stop()
    assert await asyncio.wait_for(task, 10) == 0


async def test_subscriptions_and_dropped_messages(
    mqtt_broker: MqttBroker, settings: Settings
) -> None:
    t = Topics(settings.base_topic)
    service = Service("actuator", settings, options=FAST, version="test")
    # not connected yet: a command cannot be sent, so it is dropped (never replayed stale)
    service.publish(
        t.socket_set("boiler"),
        SocketCommand(timestamp=T0, socket="Boiler", state="on", reason="test"),
    )
    assert service.counters["mqtt_dropped_offline"] == 1
    with pytest.raises(ValueError, match="not a topic"):
        service.publish(f"{settings.base_topic}/nowhere/at/all", "online")
    with pytest.raises(ValueError, match="takes online/offline"):
        service.publish(t.device_availability("boiler"), ServiceStatus.model_construct())
    received: list[OverrideRequest] = []

    async def on_override(topic: str, payload: bytes) -> None:
        if payload == b"crash":
            raise RuntimeError("handler bug")
        received.append(parse_message(OverrideRequest, payload))

    service.subscribe(t.all_override_sets(), on_override)
    task = asyncio.create_task(service.run(asyncio.Event().wait))
    await asyncio.wait_for(service.wait_connected(), 5)
    async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as client:
        for payload in (b'{"state": "on", "duration_s": 60}', b"not json", b"crash"):
            await client.publish(t.override_set("boiler"), payload, qos=1)
    for _ in range(100):
        if service.counters["handler_errors"]:
            break
        await asyncio.sleep(0.02)
    assert [r.state for r in received] == ["on"]
    assert service.counters["messages_dropped"] == 1
    assert service.counters["handler_errors"] == 1
    service.request_stop()
    assert await asyncio.wait_for(task, 10) == 0


# --- the real process: Will and graceful stop -----------------------------------------------


@pytest.fixture
def poller_process(
    mqtt_broker: MqttBroker, tmp_path: Path, settings: Settings
) -> Iterator[tuple[subprocess.Popen[bytes], Settings]]:
    """`python -m services.poller` against the test broker, devices on closed local ports."""
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    devices = tmp_path / "devices.json"
    devices.write_text(
        json.dumps(
            {
                "devices": [
                    {
                        "device_name": "P1 meter",
                        "device_type": "HWE-P1",
                        "ip_address": "127.0.0.1",
                        "port": closed_port,
                    }
                ]
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("HWSCHED_")}
    env |= {
        "HWSCHED_BROKER__HOST": settings.broker.host,
        "HWSCHED_BROKER__PORT": str(settings.broker.port),
        "HWSCHED_BROKER__CLIENT_ID_PREFIX": settings.broker.client_id_prefix,
        "HWSCHED_BASE_TOPIC": settings.base_topic,
        "HWSCHED_DEVICES_FILE": str(devices),
        "HWSCHED_POLL_INTERVAL_S": "0.2",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.poller"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        yield process, settings
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()


async def test_will_says_offline_when_the_poller_dies(
    mqtt_broker: MqttBroker, poller_process: tuple[subprocess.Popen[bytes], Settings]
) -> None:
    process, settings = poller_process
    t = Topics(settings.base_topic)
    got = await retained(
        mqtt_broker,
        settings.base_topic,
        lambda g: (
            g.get(t.availability("poller")) == b"online"
            and g.get(t.device_availability("p1_meter")) == b"offline"
        ),
        within_s=10.0,
    )
    assert parse_message(ServiceStatus, got[t.status("poller")]).state == "online"
    process.kill()  # no DISCONNECT: the broker sends the Will
    await retained(
        mqtt_broker, settings.base_topic, lambda g: g.get(t.availability("poller")) == b"offline"
    )


async def test_sigterm_stops_gracefully(
    mqtt_broker: MqttBroker, poller_process: tuple[subprocess.Popen[bytes], Settings]
) -> None:
    process, settings = poller_process
    t = Topics(settings.base_topic)
    await retained(
        mqtt_broker,
        settings.base_topic,
        lambda g: (
            g.get(t.availability("poller")) == b"online"
            and g.get(t.device_availability("p1_meter")) == b"offline"
        ),
        within_s=10.0,
    )
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 10) == 0
    got = await retained(
        mqtt_broker, settings.base_topic, lambda g: g.get(t.availability("poller")) == b"offline"
    )
    status = parse_message(ServiceStatus, got[t.status("poller")])
    assert status.state == "offline"
    assert status.counters["polls_failed_unreachable"] >= 1
    assert process.stderr is not None
    log = process.stderr.read().decode()
    assert "P1 meter (127.0.0.1:" in log
    assert all(line.count(" ") > 2 for line in log.splitlines())  # one line per event


async def test_a_flood_beyond_the_incoming_queue_is_dropped_counted_and_logged_once(
    settings: Settings, mqtt_broker: MqttBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """The service runtime's incoming queue is bounded per topic: while a handler is busy,
    what a flood sends beyond `max_incoming_per_topic` is dropped, counted and logged once,
    never queued without bound; the rest is handled, and other topics still get in."""
    options = dataclasses.replace(FAST, max_incoming_per_topic=20)
    service = Service("poller", settings, options=options, version="test")
    release = asyncio.Event()
    handled: list[bytes] = []
    topic = f"{settings.base_topic}/flood"

    async def slow(_: str, data: bytes) -> None:
        await release.wait()
        handled.append(data)

    other: list[bytes] = []

    async def fast(_: str, data: bytes) -> None:
        other.append(data)

    service.subscribe(topic, slow)
    service.subscribe(f"{settings.base_topic}/other", fast)
    task = asyncio.create_task(service.run(asyncio.Event().wait))
    await asyncio.wait_for(service.wait_connected(), 10)
    sent = 300
    async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as publisher:
        for i in range(sent):
            await publisher.publish(topic, str(i).encode(), qos=1)
        await publisher.publish(f"{settings.base_topic}/other", b"still here", qos=1)
    deadline = time.monotonic() + 10
    while service.counters.get("mqtt_incoming_dropped") < sent - 20 - 1:
        assert time.monotonic() < deadline, service.counters.snapshot()
        await asyncio.sleep(0.05)
    release.set()
    dropped = service.counters.get("mqtt_incoming_dropped")
    while len(handled) + dropped < sent:
        assert time.monotonic() < deadline, (len(handled), dropped)
        await asyncio.sleep(0.05)
    assert len(handled) + dropped == sent
    assert 1 <= len(handled) <= 20 + 1  # the queue's worth, and the one being handled
    warnings = [r for r in caplog.records if "received messages on" in r.getMessage()]
    assert len(warnings) == 1
    while not other:  # behind the flood's queued share, not dropped with it
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert other == [b"still here"]
    service.request_stop()
    assert await asyncio.wait_for(task, 10) == 0


# --- the devices' uptime (API v2 `GET /api/system`) -------------------------------------------


class FakeV2Device(FakeDevice):
    """A device with API v2's `/api/system`: booted `booted` clock-monotonic s."""

    def __init__(self, clock: Clock, name: str, power: float) -> None:
        super().__init__(clock, name, power)
        self.booted = -3600.0  # up an hour before the test starts
        self.system_error: Exception | None = None
        self.system_calls: list[float] = []

    async def system(self) -> SystemInfo:
        self.system_calls.append(self.clock.monotonic())
        if self.system_error is not None:
            raise self.system_error
        return SystemInfo(uptime_s=int(self.clock.monotonic() - self.booted))


def make_v2_rig(**options: Any) -> Rig:
    rig = make_rig(**options)
    for name in ("P1 meter", "Battery"):
        rig.fakes[name] = FakeV2Device(rig.clock, name, POWER[name])
    return rig


def booted(rig: Rig, slug: str) -> list[datetime | None]:
    return [m.booted_at for m in rig.recorder.payloads(TOPICS.measurement(slug))]


async def test_the_boot_time_of_an_api_v2_device_goes_out_and_a_restart_is_seen() -> None:
    rig = make_v2_rig(system_every_s=5.0)
    p1 = rig.fakes["P1 meter"]
    assert isinstance(p1, FakeV2Device)
    await run_poller(rig, 12.0)
    up = T0 - timedelta(hours=1)
    assert set(booted(rig, "p1_meter")) == {up}
    assert set(booted(rig, "battery")) == {up}
    assert booted(rig, "boiler") == [None] * len(booted(rig, "boiler"))  # API v1: unknown
    assert p1.system_calls == [0.0, 5.0, 10.0]  # every system_every_s, not every poll
    # the meter restarts (a power cut too short for a failed poll): the next read shows it
    p1.booted = rig.clock.monotonic()
    restart = rig.clock.now().replace(microsecond=0)
    await run_poller(rig, 6.0)
    assert booted(rig, "p1_meter")[-1] == restart
    assert rig.counters["device_restarts"] == 1
    assert set(booted(rig, "battery")) == {up}


async def test_uptime_jitter_is_not_a_restart_and_a_failed_read_is_not_a_failed_poll() -> None:
    rig = make_v2_rig(system_every_s=2.0)
    p1 = rig.fakes["P1 meter"]
    assert isinstance(p1, FakeV2Device)
    await run_poller(rig, 3.0)
    first = booted(rig, "p1_meter")[-1]
    assert first is not None
    p1.booted += 30.0  # read 30 s "later" (a slow answer, whole seconds): the same boot
    p1.system_error = InvalidResponseError("10.0.0.1", "GET /api/system: no JSON")
    await run_poller(rig, 4.0)
    assert set(booted(rig, "p1_meter")) == {first}
    assert rig.counters["system_reads_failed"] >= 1
    assert rig.counters["polls_failed"] == 0
    p1.system_error = None
    await run_poller(rig, 3.0)
    assert set(booted(rig, "p1_meter")) == {first}
    assert rig.counters["device_restarts"] == 0


async def test_after_failed_polls_the_uptime_is_read_at_once() -> None:
    """A device back after it could not be read may have lost its power: its uptime is
    read on the first good poll, whatever `system_every_s`."""
    rig = make_v2_rig(system_every_s=3600.0)
    p1 = rig.fakes["P1 meter"]
    assert isinstance(p1, FakeV2Device)
    await run_poller(rig, 2.0)
    assert len(p1.system_calls) == 1
    p1.error = DeviceUnreachableError("10.0.0.1", "no route")
    await run_poller(rig, 3.0)
    p1.error = None
    p1.booted = rig.clock.monotonic()
    back = rig.clock.now().replace(microsecond=0)
    await run_poller(rig, 5.0)
    assert len(p1.system_calls) == 2
    assert booted(rig, "p1_meter")[-1] == back
    assert rig.counters["device_restarts"] == 1
