"""The poller against the simulated house over real HTTP and HTTPS, and a throwaway broker.

The simulator runs in-process on free ports with its house frozen in time (a ManualClock
moved once), so what the poller publishes can be checked against `/control/state`. Faults
are injected through the control endpoint, one at a time, into one device while the others
keep being polled. Device network time (delays, timeouts) is real time.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

from services.poller.poller import Poller, PollerOptions, default_client_factory, make_poller
from services.simulator.server import DEVICES_FILE, Simulator
from services.simulator.settings import SimulatorSettings
from services.simulator.tls import CertificateAuthority
from shared.clock import ManualClock, SystemClock
from shared.config import (
    BatteryConfig,
    BrokerSettings,
    DevicesConfig,
    Settings,
    load_devices,
)
from shared.homewizard import (
    CertificateError,
    UnauthorizedError,
    V2Client,
    client_for,
)
from shared.messages import (
    Availability,
    DeviceMeasurement,
    HouseSurplus,
    Message,
    ServiceStatus,
    parse_availability,
    parse_message,
)
from shared.service import Counters, Service, ServiceOptions
from shared.topics import Topics
from tests.conftest import MqttBroker

NOON = datetime(2024, 6, 21, 10, 0, tzinfo=UTC)  # 12:00 in Amsterdam, clear sky
TOKEN = "AB" * 16
WRONG_TOKEN = "EF" * 16
INTERVAL_S = 0.4
#: Poll timeout 3 s, so 1.5 s per HTTP attempt: a client's retries of an HTTP 500 (with
#: their back-off) fit easily, and a hanging device is cut off by the poller's timeout.
OPTIONS = PollerOptions(interval_s=INTERVAL_S, timeout_s=3.0)
WAIT_S = 20.0
FAST = ServiceOptions(
    status_interval_s=1.0,
    status_min_interval_s=0.1,
    reconnect_min_s=0.05,
    reconnect_max_s=0.4,
    publish_timeout_s=2.0,
    keepalive_s=5,
)
HOUSE = DevicesConfig.model_validate(
    {
        "devices": [
            {"device_name": "P1 meter", "device_type": "HWE-P1", "ip_address": "192.0.2.10"},
            {
                "device_name": "Boiler",
                "device_type": "HWE-SKT",
                "ip_address": "192.0.2.11",
                "max_power_usage": 2000,
                "energy_capacity": 4000,
            },
            {
                "device_name": "E-bike",
                "device_type": "HWE-SKT",
                "ip_address": "192.0.2.12",
                "max_power_usage": 300,
                "energy_capacity": 500,
            },
            {
                "device_name": "Battery",
                "device_type": "HWE-BAT",
                "ip_address": "192.0.2.13",
                "max_power_usage": 800,
                "energy_capacity": 2700,
                "user_info": {"name": "local/hwsched", "token": TOKEN},
            },
        ],
        "solar panels": [
            {
                "name": "Roof",
                "quartz_parameters": {
                    "latitude": 52.09,
                    "longitude": 5.12,
                    "capacity_kwp": 5.0,
                    "tilt": 35,
                    "orientation": 180,
                },
            }
        ],
    }
)
SLUGS = ("p1_meter", "boiler", "e_bike", "battery")


async def wait_until(condition: Callable[[], bool], what: str, within_s: float = WAIT_S) -> None:
    """Poll `condition` every 0.1 s until it holds; fail naming `what` after `within_s`."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within_s:g} s: {what}")
        await asyncio.sleep(0.1)


# --- the simulated house --------------------------------------------------------------------


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    """The house at a clear noon, frozen one minute in (every device has power then)."""
    clock = ManualClock(NOON)
    settings = SimulatorSettings(seed=3, cloudiness=0.0)
    async with Simulator(
        HOUSE, clock=clock, settings=settings, state_dir=tmp_path / "sim"
    ) as simulator:
        clock.advance(60)
        yield simulator


def sim_devices(sim: Simulator) -> DevicesConfig:
    """The devices file the simulator wrote for the services (devices on 127.0.0.1)."""
    assert sim.state_dir is not None
    return load_devices(sim.state_dir / DEVICES_FILE)


async def control(sim: Simulator, method: str, path: str, body: Any = None) -> Any:
    async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
        reply = await client.request(method, f"{sim.control_url}{path}", json=body)
    assert reply.status_code == 200, reply.text
    return reply.json()


async def fault(sim: Simulator, device: str, **changes: Any) -> None:
    await control(sim, "POST", "/faults", {"device": device, **changes})


# --- the poller service and what it publishes -----------------------------------------------


@dataclass
class Seen:
    """Every message under the base topic, in arrival order."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)

    def count(self) -> int:
        return len(self.messages)

    def on(self, topic: str, since: int = 0) -> list[bytes]:
        return [p for t, p in self.messages[since:] if t == topic]

    def latest(self, topic: str) -> bytes | None:
        found = self.on(topic)
        return found[-1] if found else None


async def subscribe(broker: MqttBroker, base: str, seen: Seen, ready: asyncio.Event) -> None:
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"sub-{uuid.uuid4()}") as c:
        await c.subscribe(f"{base}/#", qos=1)
        ready.set()
        async for message in c.messages:
            if isinstance(message.payload, bytes):
                seen.messages.append((message.topic.value, message.payload))


@dataclass
class Rig:
    sim: Simulator
    devices: DevicesConfig
    service: Service
    poller: Poller
    topics: Topics
    seen: Seen
    task: asyncio.Task[int]

    def counter(self, name: str) -> int:
        return self.service.counters[name]

    def failures(self) -> dict[str, int]:
        """The failure counters now (`polls_failed*`, `device_failures_*`)."""
        return {
            k: v
            for k, v in self.service.counters.snapshot().items()
            if k.startswith(("polls_failed", "device_failures_"))
        }

    def grew(self, counter: str, before: int) -> bool:
        return self.failures().get(counter, 0) > before

    def measurements(self, slug: str, since: int = 0) -> list[DeviceMeasurement]:
        return [
            parse_message(DeviceMeasurement, p)
            for p in self.seen.on(self.topics.measurement(slug), since)
        ]

    def availability(self, slug: str, since: int = 0) -> list[str]:
        return [
            parse_availability(p)
            for p in self.seen.on(self.topics.device_availability(slug), since)
        ]

    def surpluses(self, since: int = 0) -> list[HouseSurplus]:
        return [parse_message(HouseSurplus, p) for p in self.seen.on(self.topics.surplus(), since)]

    # predicates for `wait_until`

    def measured(self, slug: str, since: int, n: int) -> bool:
        return len(self.measurements(slug, since)) >= n

    def availability_is(self, slug: str, since: int, wanted: list[str]) -> bool:
        return self.availability(slug, since) == wanted

    def surplus_missing(self, since: int, missing: list[str]) -> bool:
        return any(s.missing == missing for s in self.surpluses(since))

    async def others_keep_coming(self, busy: str, since: int) -> None:
        """Every device but `busy` publishes two more measurements after message `since`."""
        for slug in SLUGS:
            if slug != busy:
                await wait_until(
                    partial(self.measured, slug, since, 2),
                    f"{slug} measurements while {busy} fails",
                )
        assert not self.task.done(), "the poller service stopped"


@pytest.fixture
async def rig(
    sim: Simulator, mqtt_broker: MqttBroker, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    for name in list(os.environ):
        if name.upper().startswith("HWSCHED_"):
            monkeypatch.delenv(name)
    tag = uuid.uuid4().hex[:10]
    settings = Settings(
        broker=BrokerSettings(
            host=mqtt_broker.host, port=mqtt_broker.port, client_id_prefix=f"test-{tag}"
        ),
        base_topic=f"test{tag}",
        poll_interval_s=INTERVAL_S,
        device_ca_file=sim.ca_path,
    )
    seen = Seen()
    ready = asyncio.Event()
    subscriber = asyncio.create_task(subscribe(mqtt_broker, settings.base_topic, seen, ready))
    await asyncio.wait_for(ready.wait(), 10)
    devices = sim_devices(sim)
    service = Service("poller", settings, options=FAST, version="test")
    poller = make_poller(service, devices, OPTIONS)
    task = asyncio.create_task(service.run(poller.run))
    try:
        yield Rig(sim, devices, service, poller, Topics(settings.base_topic), seen, task)
        assert not task.done(), "the poller service stopped on its own"
        service.request_stop()
        # A graceful stop is the runtime's business (tests/test_poller.py); here it only
        # has to end. (Python 3.11's asyncio.wait_for, inside aiomqtt's publish, can swallow
        # the cancellation of the runtime's sender, which then keeps the stop waiting.)
        done, _ = await asyncio.wait({task}, timeout=5)
        if done:
            assert task.result() == 0
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        subscriber.cancel()
        await asyncio.gather(subscriber, return_exceptions=True)


# --- the tests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval_s", "poll_timeout_s", "attempt_s"),
    [(30.0, 10.0, 5.0), (10.0, 10.0, 5.0), (5.0, 5.0, 2.5), (1.0, 1.0, 0.5), (0.4, 1.0, 0.5)],
)
def test_timeouts_fit_real_devices_and_the_interval(
    interval_s: float, poll_timeout_s: float, attempt_s: float
) -> None:
    """A 30-s poll gives each HTTP attempt 5 s; from 1 s on, a poll ends before the next."""
    options = PollerOptions(interval_s=interval_s)
    assert options.poll_timeout_s == poll_timeout_s
    assert options.request_timeout_s == attempt_s
    assert 2 * options.request_timeout_s <= max(options.poll_timeout_s, 1.0)
    if interval_s >= 1:
        assert options.poll_timeout_s <= interval_s
    assert PollerOptions(interval_s=30, attempt_timeout_s=3).request_timeout_s == 3


def test_the_simulators_devices_file_names_its_ports(sim: Simulator) -> None:
    devices = sim_devices(sim)
    p1 = sim.device("P1 meter")
    assert (devices.p1.ip_address, devices.p1.port) == ("127.0.0.1", p1.v1_port)
    assert devices.p1.v2_port == p1.v2_port  # the P1's API v2 port (not 443) is kept
    battery = devices.batteries[0]
    assert battery.port == sim.device("Battery").v2_port
    assert battery.user_info.token.get_secret_value() == TOKEN


async def test_poller_publishes_the_simulated_house(rig: Rig) -> None:
    """Every device's measurement, availability and the surplus, as the house has them."""

    def complete() -> bool:
        return all(rig.measurements(s) for s in SLUGS) and bool(rig.surpluses())

    await wait_until(complete, "a measurement of every device and a surplus")
    await wait_until(partial(rig.surplus_missing, 0, []), "a surplus based on every device")
    house = (await control(rig.sim, "GET", "/state"))["house"]

    p1 = rig.measurements("p1_meter")[-1]
    assert (p1.device, p1.device_type, p1.api) == ("P1 meter", "HWE-P1", "v1")
    assert p1.power_w == pytest.approx(house["p1"]["power_w"], abs=0.6)
    assert p1.power_w < -100  # a clear noon: exporting
    assert p1.energy_export_kwh == pytest.approx(house["p1"]["export_kwh"], abs=0.001)
    for slug, name in (("boiler", "Boiler"), ("e_bike", "E-bike")):
        m = rig.measurements(slug)[-1]
        want = house["sockets"][name]
        assert (m.device, m.device_type, m.api) == (name, "HWE-SKT", "v1")
        assert m.power_w == pytest.approx(want["power_w"], abs=0.06)
        assert m.power_w > 0
        assert (m.power_on, m.switch_lock) == (want["power_on"], want["switch_lock"])
        assert m.energy_import_kwh == pytest.approx(want["import_kwh"], abs=0.001)
    bat = rig.measurements("battery")[-1]
    want_bat = house["batteries"]["Battery"]
    assert (bat.device, bat.device_type, bat.api) == ("Battery", "HWE-BAT", "v2")
    assert bat.power_w == pytest.approx(want_bat["power_w"], abs=0.6)
    assert bat.state_of_charge_pct == round(want_bat["state_of_charge_pct"])
    assert bat.power_on is None
    # the boot times over API v2 (the paired P1 meter's and the battery's `/api/system`;
    # the simulated house's clock is frozen at NOON + 60 s, the poller's is real time)
    for m in (p1, bat):
        assert m.booted_at is not None
        assert m.booted_at <= m.timestamp
        assert (m.timestamp - m.booted_at).total_seconds() < 70
    assert all(m.booted_at is None for m in rig.measurements("boiler"))  # API v1 only

    surplus = next(s for s in reversed(rig.surpluses()) if s.missing == [])
    assert sorted(surplus.based_on) == sorted(d.device_name for d in HOUSE.devices)
    assert surplus.p1_power_w == pytest.approx(house["p1"]["power_w"], abs=0.6)
    assert set(surplus.sockets_w) == {"Boiler", "E-bike"}
    for name, power in surplus.sockets_w.items():
        assert power == pytest.approx(house["sockets"][name]["power_w"], abs=0.06)
    assert surplus.batteries_w == {"Battery": pytest.approx(want_bat["power_w"], abs=0.6)}
    # surplus = export at the meter + what the sockets draw + what the battery charges
    expected = (
        -house["p1"]["power_w"]
        + sum(s["power_w"] for s in house["sockets"].values())
        + sum(b["power_w"] for b in house["batteries"].values())
    )
    assert surplus.surplus_w == pytest.approx(expected, abs=1.5)
    assert surplus.surplus_w == pytest.approx(
        -surplus.p1_power_w + sum(surplus.sockets_w.values()) + sum(surplus.batteries_w.values())
    )
    assert surplus.surplus_w > 3000

    for slug in SLUGS:
        assert rig.availability(slug) == ["online"]
    assert rig.failures() == {}

    def status_counts_polls() -> bool:
        status = rig.seen.latest(rig.topics.status("poller"))
        if status is None:
            return False
        counters = parse_message(ServiceStatus, status).counters
        return counters.get("polls_ok", 0) >= 4 and counters.get("surplus_published", 0) >= 1

    await wait_until(status_counts_polls, "a status counting the good polls and surpluses")


@dataclass(frozen=True)
class Fault:
    device: str  # name in the house
    slug: str
    changes: dict[str, Any]
    kind: str  # the polls_failed_<kind> counter
    #: The kind the one poll under way when the fault is set may fail with instead: a
    #: socket's poll reads `/api/v1/data`, then `/api/v1/state`; `missing_fields` set between
    #: the two leaves `power_on` out of the state only (an invalid response), while a poll
    #: begun after it finds no power in the data first (an invalid reading).
    straddle: str | None = None


FAULTS = [
    Fault("Boiler", "boiler", {"timeout": True}, "timeout"),
    Fault("Boiler", "boiler", {"http_500": True}, "invalid_response"),
    Fault("E-bike", "e_bike", {"garbage": True}, "invalid_response"),
    Fault("P1 meter", "p1_meter", {"truncated": True}, "invalid_response"),
    Fault("Boiler", "boiler", {"missing_fields": True}, "invalid_reading", "invalid_response"),
    Fault("E-bike", "e_bike", {"api_disabled": True}, "api_disabled"),
    Fault("Battery", "battery", {"wrong_token": True}, "unauthorized"),
    Fault("Battery", "battery", {"http_500": True}, "invalid_response"),
    Fault("Battery", "battery", {"gone": True}, "unreachable"),
]


async def test_each_fault_is_counted_marked_offline_and_recovers(rig: Rig) -> None:
    await wait_until(
        lambda: all(rig.availability(s) == ["online"] for s in SLUGS), "every device online"
    )

    # a slow answer within the timeout (0.3 s of 1.5 s per request) is a good poll
    before = rig.failures()
    await fault(rig.sim, "Boiler", delay_s=0.3)
    mark = rig.seen.count()  # polls measured after this one began after the fault was set
    await rig.others_keep_coming("boiler", mark)
    await wait_until(partial(rig.measured, "boiler", mark, 12), "slow boiler measurements")
    # two requests of 0.3 s each per poll: the boiler's polls now come >= 0.6 s apart (0.4 s
    # without the delay). Payload times are whole seconds (truncated: a difference is off by
    # less than 1 s), so the spacing is judged over ten polls: >= 10 x 0.55 s, less 1 s.
    stamps = [m.timestamp for m in rig.measurements("boiler", mark)]
    assert (stamps[11] - stamps[1]).total_seconds() >= 10 * 0.55 - 1.0
    assert rig.failures() == before
    assert rig.availability("boiler", mark) == []
    await fault(rig.sim, "Boiler", clear=True)

    for f in FAULTS:
        mark, before = rig.seen.count(), rig.failures()
        await fault(rig.sim, f.device, **f.changes)
        await wait_until(
            partial(rig.availability_is, f.slug, mark, ["offline"]),
            f"{f.device} offline after {f.changes}",
        )
        await rig.others_keep_coming(f.slug, mark)
        if f.device != "P1 meter":  # the surplus goes on without the failing device
            await wait_until(
                partial(rig.surplus_missing, mark, [f.device]), f"a surplus missing {f.device}"
            )
        # a poll begun after the fault was set failed with its kind (the next poll begins
        # after a failure, so at the latest the second failure is one)
        kind_key = f"polls_failed_{f.kind}"
        await wait_until(
            partial(rig.grew, kind_key, before.get(kind_key, 0)),
            f"a {f.kind} failure after {f.changes}",
        )
        # only the failing device's counters grew, and every failure is of the right kind
        after = rig.failures()
        grown = {k for k in after if after[k] > before.get(k, 0)}
        expected = {"polls_failed", f"polls_failed_{f.kind}", f"device_failures_{f.slug}"}
        straddled = f"polls_failed_{f.straddle}" if f.straddle is not None else None
        assert grown - {straddled} == expected, f.changes
        if straddled is not None:  # at most the one poll under way when the fault was set
            assert after.get(straddled, 0) - before.get(straddled, 0) <= 1, f.changes
        cleared = rig.seen.count()
        await fault(rig.sim, f.device, clear=True, gone=False)
        await wait_until(
            partial(rig.availability_is, f.slug, cleared, ["online"]),
            f"{f.device} online again after {f.changes} was cleared",
        )
        await wait_until(
            partial(rig.surplus_missing, cleared, []),
            f"a surplus of every device again after {f.changes}",
        )

    totals = rig.failures()
    assert totals["polls_failed_invalid_response"] >= 4
    assert "polls_failed_unexpected" not in totals
    assert all(rig.poller.states[d.device_name].failures == 0 for d in rig.devices.devices)


class Recorder:
    """A publisher that keeps what it is given."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Message | Availability]] = []

    def publish(self, topic: str, payload: Message | Availability) -> None:
        self.sent.append((topic, payload))


async def test_a_wrong_ca_is_counted_as_a_certificate_failure(sim: Simulator) -> None:
    """The poller with the bundled HomeWizard CA refuses the simulator's battery."""
    counters = Counters()
    poller = Poller(
        sim_devices(sim),
        Recorder(),
        topics=Topics("wrongca"),
        counters=counters,
        clock=SystemClock(),
        client_factory=default_client_factory(OPTIONS, ca_file=None),
        options=OPTIONS,
    )
    v1_devices = ("P1 meter", "Boiler", "E-bike")

    def v1_online() -> bool:
        return all(poller.states[n].availability == "online" for n in v1_devices)

    task = asyncio.create_task(poller.run())
    try:
        await wait_until(lambda: counters["polls_failed_certificate"] >= 1, "a certificate failure")
        await wait_until(v1_online, "the API v1 devices online")
        assert poller.states["Battery"].availability == "offline"
        assert counters["device_failures_battery"] == counters["polls_failed"]
        assert counters["polls_failed"] == counters["polls_failed_certificate"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_clients_refuse_a_wrong_ca_and_get_a_wrong_token_refused(
    sim: Simulator, tmp_path: Path
) -> None:
    dev = sim.device("Battery")
    assert dev.v2_port is not None
    assert sim.ca_path is not None
    other = CertificateAuthority.create(datetime.now(UTC))
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(other.cert_pem())

    for ca in (None, other_ca):  # the bundled HomeWizard CA, another CA
        async with V2Client(
            "127.0.0.1", TOKEN, dev.v2_port, product_type="HWE-BAT", ca_file=ca, retries=0
        ) as client:
            with pytest.raises(CertificateError, match="not trusted") as refused:
                await client.measurement()
        assert TOKEN not in str(refused.value)

    async with V2Client(
        "127.0.0.1", WRONG_TOKEN, dev.v2_port, product_type="HWE-BAT", ca_file=sim.ca_path
    ) as client:
        with pytest.raises(UnauthorizedError) as unauthorized:
            await client.measurement()
    assert WRONG_TOKEN not in str(unauthorized.value)

    # the simulator's CA and the configured token: a reading, on `v2_port` over `port`
    moved = BatteryConfig.model_validate(
        {
            "device_name": "Battery",
            "device_type": "HWE-BAT",
            "ip_address": "127.0.0.1",
            "port": sim.device("P1 meter").v1_port,  # not its API v2: `v2_port` wins
            "v2_port": dev.v2_port,
            "max_power_usage": 800,
            "energy_capacity": 2700,
            "user_info": {"name": "local/hwsched", "token": TOKEN},
        }
    )
    async with client_for(moved, ca_file=sim.ca_path) as good:
        reading = await good.measurement()
    assert reading.power_w is not None
    assert reading.power_w > 0
    assert good.serial == dev.serial


async def test_a_request_retried_with_success_is_counted(rig: Rig) -> None:
    """One HTTP 500 answered, then the retry succeeds: the poll is good (no failure, the
    device stays online), and the failed request is counted as `requests_retried`."""
    await wait_until(
        lambda: all(rig.availability(s) == ["online"] for s in SLUGS), "every device online"
    )
    before, retried = rig.failures(), rig.service.counters.get("requests_retried")
    mark = rig.seen.count()
    await fault(rig.sim, "Boiler", http_500=True, times=1)
    await wait_until(
        lambda: rig.service.counters.get("requests_retried") == retried + 1, "a retried request"
    )
    await wait_until(partial(rig.measured, "boiler", mark, 2), "boiler measurements go on")
    assert rig.failures() == before
    assert rig.availability("boiler", mark) == []
