"""Bad input (issue 9): every topic a service subscribes to, flooded with generated payloads.

Each service is built as its `app()` builds it, inside a real `shared.service.Service` on a
`ManualClock` (not connected: the bulk needs no broker), with its own work running in the
background (fakes only for the sockets' HTTP and the forecaster's model worker), and every
subscription handler is driven the way the MQTT reader drives it (`Service._handle` for each
matching filter; wildcard filters on concrete topics, configured devices and unknown ones):
`FUZZ_EXAMPLES` (default 10 000) hypothesis examples per subscription
(`tests/fuzz_payloads.py`: wrong types, missing and extra fields, huge numbers, NaN, huge
strings, invalid UTF-8, deep nesting, binary, and valid messages among them). The clock
moves 2 s before each example, so the actuator's and forecaster's rate limits never hide a
payload from the parser. Per example:

* no exception escapes, `handler_errors` stays 0, the service's own tasks keep running and
  their error counters (`plan_errors`, `actuator_errors`, `forecast_errors`) stay 0;
* a payload that does not parse (or is over a size limit) is one counted drop
  (`messages_dropped`, or `messages_rate_limited`): exactly one, never two;
* a dropped payload changes nothing: the service's state, its other counters, what it
  publishes;
* a sane valid message (`kind == "valid"`) is taken: no drop;
* a payload taken is put to use at once (a plan on it, a socket cycle, a forecast run), and
  a sane message stamped two minutes later on the same topic is still taken: nothing a
  service accepts may break its work or lock out the messages after it.

Drops are logged at most once per rate-limit window and topic (here and in
`test_drops_are_logged_once_per_window`), and the same services connected to a throwaway
mosquitto survive 300 hostile payloads per subscription and still work
(`test_services_survive_hostile_payloads_over_mqtt`). The poller subscribes to nothing
(`test_the_poller_subscribes_to_nothing`).

    FUZZ_EXAMPLES=10000 .venv/bin/pytest -p no:cacheprovider -s tests/test_fuzz_inputs.py
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import aiomqtt
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from services.actuator.actuator import Actuator, ShellOptions
from services.bridge.bridge import Bridge, BridgeOptions
from services.dashboard.dashboard import Dashboard
from services.forecaster.forecaster import REQUEST_LIMIT, RETAINED_LIMIT, Forecaster
from services.forecaster.protocol import WorkerFailure, WorkerRequest, WorkerResult
from services.forecaster.settings import ForecastSettings
from services.poller.poller import make_poller
from services.prices.service import MAX_RETAINED_BYTES, PriceKeeper
from services.scheduler.scheduler import Scheduler, SchedulerOptions
from shared.clock import Clock, ManualClock, SystemClock
from shared.config import BrokerSettings, DevicesConfig, Settings
from shared.homeassistant import discovery_configs, is_stale_config, node_id
from shared.homewizard import BatteriesState, DeviceUnreachableError
from shared.homewizard import SocketState as RelayState
from shared.messages import (
    BatteryCommand,
    BatteryOverrideRequest,
    BatteryState,
    CostSummary,
    DeviceMeasurement,
    EnergyBooks,
    Forecast,
    ForecastRequest,
    HouseSurplus,
    Message,
    OverrideRequest,
    OverrideState,
    PlanMessage,
    Prices,
    ServiceStatus,
    SocketCommand,
    SocketState,
    parse_message,
)
from shared.naming import slugify
from shared.prices import NotPublishedError
from shared.service import Service, ServiceOptions
from shared.topics import Topics
from tests.conftest import MqttBroker
from tests.fuzz_payloads import (
    SPECIAL_PAYLOADS,
    Context,
    Payload,
    availability_payloads,
    discovery_payloads,
    encode,
    payloads,
    valid_doc,
)

#: Hypothesis examples per topic (`FUZZ_EXAMPLES`).
N_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10000"))
#: Hostile payloads per topic over the real broker.
N_OVER_MQTT = 300
#: The clock moves on this much before each example: the actuator's slowest token bucket
#: (0.5 per s) is full again, so every payload reaches the parser, not the rate limit.
STEP_S = 2.0
#: 07:00 in Amsterdam (the follow-ups move the clock on by two minutes each: the fuzz of one
#: topic spans days, daily boundaries included).
T0 = datetime(2024, 6, 21, 5, 0, tzinfo=UTC)
BASE = "fuzz"
#: Counters a drop may move (the per-kind breakdowns included).
DROP_COUNTERS = ("messages_dropped", "messages_too_large", "messages_rate_limited")
#: A taken payload is followed by a sane message this much later (more than the clock skew a
#: service allows a message's time to be ahead: 120 s), s.
FOLLOW_UP_AFTER_S = 121.0
#: Counters of messages ignored as older than (or made stale by) the one held.
LOCKOUT_COUNTERS = frozenset(
    {
        "commands_stale",
        "commands_out_of_order",
        "plans_out_of_order",
        "plans_older_ignored",
        "forecasts_older_ignored",
        "overrides_older_ignored",
        "surpluses_older_ignored",
    }
)
#: Models whose sane message names the topic's own device or socket.
NEEDS_TARGET = frozenset({DeviceMeasurement, SocketCommand, OverrideState, SocketState})
#: Errors of a service's own work, which a payload it took must not cause later either.
BACKGROUND_ERRORS = (
    "plan_errors",
    "planner_errors",
    "actuator_errors",
    "forecast_errors",
    "battery_errors",
    "price_errors",
)
#: Longest log line a payload may cause, characters.
MAX_LOG_LINE = 2_000

DEVICES = DevicesConfig.model_validate(
    {
        "devices": [
            {
                "device_name": "P1 meter",
                "device_type": "HWE-P1",
                "ip_address": "192.0.2.10",
                "user_info": {"name": "local/hwsched", "token": "fedcba9876543210" * 2},
            },
            {
                "device_name": "Boiler",
                "device_type": "HWE-SKT",
                "ip_address": "192.0.2.11",
                "max_power_usage": 2000,
                "energy_capacity": 6000,
                "priority": 1,
                "daily_need": True,
            },
            {
                "device_name": "E-bike",
                "device_type": "HWE-SKT",
                "ip_address": "192.0.2.12",
                "max_power_usage": 300,
                "energy_capacity": 500,
                "priority": 2,
            },
            {
                "device_name": "Battery",
                "device_type": "HWE-BAT",
                "ip_address": "192.0.2.13",
                "max_power_usage": 800,
                "energy_capacity": 2700,
                "user_info": {"name": "local/hwsched", "token": "0123456789abcdef" * 2},
            },
        ],
        "solar panels": [
            {
                "name": "South roof",
                "quartz_parameters": {
                    "latitude": 52.09,
                    "longitude": 5.12,
                    "capacity_kwp": 3.2,
                    "tilt": 35,
                    "orientation": 180,
                },
            },
            {
                "name": "West roof",
                "quartz_parameters": {
                    "latitude": 52.09,
                    "longitude": 5.12,
                    "capacity_kwp": 1.6,
                    "tilt": 35,
                    "orientation": 270,
                },
            },
        ],
    }
)
CTX = Context(
    sockets=("Boiler", "E-bike"),
    batteries=("Battery",),
    meter="P1 meter",
    arrays=("South roof", "West roof"),
)
#: (topic slug, the device name a message on it should carry, or None: no such device).
SOCKET_SLUGS = (("boiler", "Boiler"), ("e_bike", "E-bike"))
DEVICE_SLUGS = (
    *SOCKET_SLUGS,
    ("p1_meter", "P1 meter"),
    ("battery", "Battery"),
    ("garage", None),
)
OVERRIDE_SLUGS = (*SOCKET_SLUGS, ("battery", None), ("garage", None))


def make_settings(base: str = BASE, broker: MqttBroker | None = None) -> Settings:
    """The settings of the fuzzed services (the environment's HWSCHED_* are cleared)."""
    if broker is not None:
        brokers = BrokerSettings(
            host=broker.host, port=broker.port, client_id_prefix=f"fuzz-{uuid.uuid4().hex[:8]}"
        )
    else:  # never connected: no broker at all (and never the shared one on 1883)
        brokers = BrokerSettings(host="127.0.0.1", port=9, client_id_prefix="fuzz")
    return Settings(
        broker=brokers,
        base_topic=base,
        timezone="Europe/Amsterdam",
        planner="reference",  # the MILP worker process per plan is not what is fuzzed here
        planner_time_limit_s=0.5,
    )


@pytest.fixture(autouse=True)
def _no_hwsched_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("HWSCHED_") and name != "FUZZ_EXAMPLES":
            monkeypatch.delenv(name)


# --- fakes ------------------------------------------------------------------------------------


class FakeRelay:
    """An Energy Socket's relay for the actuator (no HTTP)."""

    def __init__(self) -> None:
        self.power_on = False
        self.switches = 0

    async def socket_state(self) -> RelayState:
        return RelayState(power_on=self.power_on, switch_lock=False, brightness=255)

    async def set_socket_state(
        self, *, power_on: bool | None = None, switch_lock: bool | None = None
    ) -> RelayState:
        if power_on is not None and power_on != self.power_on:
            self.power_on = power_on
            self.switches += 1
        return await self.socket_state()


def relay_factory(relays: dict[str, FakeRelay]) -> Callable[[Any], Any]:
    @contextlib.asynccontextmanager
    async def make(socket: Any) -> AsyncIterator[FakeRelay]:
        yield relays.setdefault(socket.slug, FakeRelay())

    return make


class FakeBatteries:
    """The P1 meter's `/api/batteries` for the actuator's battery control (no HTTP)."""

    def __init__(self) -> None:
        self.state = BatteriesState(
            mode="zero", permissions=["charge_allowed", "discharge_allowed"]
        )

    async def batteries(self) -> BatteriesState:
        return self.state

    async def set_batteries(
        self, *, mode: str | None = None, permissions: Sequence[str] | None = None
    ) -> BatteriesState:
        perms = list(permissions) if permissions is not None else self.state.permissions
        if mode in {"standby", "to_full"}:
            perms = []
        elif mode == "zero" and permissions is None:
            perms = ["charge_allowed", "discharge_allowed"]
        self.state = BatteriesState(mode=mode or self.state.mode, permissions=perms)
        return self.state


def battery_factory(fake: FakeBatteries) -> Callable[[], Any]:
    @contextlib.asynccontextmanager
    async def make() -> AsyncIterator[FakeBatteries]:
        yield fake

    return make


class NoPrices:
    """A day-ahead source that has nothing (the prices service then stands in the tariff)."""

    name = "entsoe"

    async def fetch(self, day: Any) -> Any:
        await asyncio.sleep(0)
        raise NotPublishedError("fuzz: no prices")


async def no_weather(request: WorkerRequest) -> WorkerResult | WorkerFailure:
    """The forecaster's worker, offline: its fallbacks (the retained forecast, clear sky)."""
    await asyncio.sleep(0)
    return WorkerFailure(kind="weather", error="fuzz: no weather")


# --- the rigs: one service each ---------------------------------------------------------------


@dataclass
class Rig:
    """One service, its state and its background work, on a clock the test moves."""

    service: Service
    state: Callable[[], object]
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    #: After a payload was taken: make the service use it (plan, run a cycle, forecast),
    #: so that a value it accepted but cannot work with shows up as an error here.
    after_taken: Callable[[], Awaitable[None]] | None = None
    #: Called before each example: a fresh service once the last one has used up its
    #: restore phase (books read back, the actuator's retained state).
    renew: Callable[[], None] | None = None
    #: How many times it was renewed (each fresh service logs its first drop at once).
    renewals: int = 0
    #: Whether a message of `model` about `target` stamped `at` is what the service now
    #: holds (for those it takes silently); None: not known here.
    took: Callable[[type[Message], str | None, datetime], bool | None] | None = None

    @property
    def counters(self) -> dict[str, int]:
        return self.service.counters.snapshot()

    def published(self) -> tuple[int, int]:
        """How much the service has published so far (retained sequence, queue)."""
        return self.service._seq, len(self.service._queue)

    def alive(self) -> list[str]:
        """Problems with the background tasks (none: all still running)."""
        out = []
        for task in self.tasks:
            if task.done():
                error = None if task.cancelled() else task.exception()
                out.append(f"{task.get_name()} ended: {error!r}")
        return out


async def deliver(service: Service, topic: str, data: bytes) -> None:
    """As the MQTT reader does: every handler whose filter matches, through `_handle`."""
    matched = aiomqtt.Topic(topic)
    for topic_filter, handler in list(service._handlers):
        if matched.matches(topic_filter):
            await service._handle(handler, topic, data)


async def quiesce(max_turns: int = 200) -> None:
    """Give the loop turns until no task is ready: all wait for the clock or a message.

    (`ManualClock.settle` always gives 20 turns: most examples wake nothing, and 20 empty
    turns per example were a tenth of the fuzz's time.)
    """
    loop = asyncio.get_running_loop()
    for _ in range(max_turns):
        await asyncio.sleep(0)
        if not loop._ready:  # type: ignore[attr-defined]  # asyncio has no public "idle"
            return


def new_service(name: str, settings: Settings, clock: Clock, options: ServiceOptions) -> Service:
    return Service(name, settings, clock=clock, options=options, version="fuzz")


def sane(model: type[Message], clock: Clock, seed: int = 0, target: str | None = None) -> bytes:
    """A sane message of `model` as of now."""
    return encode(valid_doc(model, CTX, target, True, seed), clock.now(), CTX)


def scheduler_rig(
    *, restoring: bool = False, plan_after: bool = False
) -> Callable[[Settings, ManualClock], Coroutine[Any, Any, Rig]]:
    """The scheduler as `app()` makes it. `restoring`: before its books are read back (a
    fresh one once the last one restored, which then plans once on them); else running
    (restored, planning on each surplus). `plan_after`: a sane surplus after each payload
    taken, so it plans with it."""

    async def make(settings: Settings, clock: ManualClock) -> Rig:
        holder: dict[str, Any] = {}

        def build() -> None:
            service = new_service("scheduler", settings, clock, ServiceOptions())
            scheduler = Scheduler(
                DEVICES,
                service.settings,
                service,
                topics=service.topics,
                counters=service.counters,
                clock=service.clock,
                log=service.log,
            )
            scheduler.subscribe(service)
            holder.update(service=service, scheduler=scheduler)

        def state() -> object:
            s: Scheduler = holder["scheduler"]
            return (
                s.books,
                dict(s.batteries),
                dict(s.overrides),
                dict(s.power_on),
                s.forecast,
                s.surplus,
                s.baseline,
                tuple(s._held),
                s.restored.is_set(),
                s.last_plan,
                s.incumbent,
                dict(s.last_switch_at),
                s._wake.is_set() if restoring else None,
                s.money.prices,
                s.money.battery_state,
                s.money.meter,
                s.money._restored,
            )

        def took(model: type[Message], target: str | None, at: datetime) -> bool | None:
            s: Scheduler = holder["scheduler"]
            held: Any = None
            if model is DeviceMeasurement and target in CTX.sockets:
                held = s.books.book(target).last_sample_at
            elif model is DeviceMeasurement and target in CTX.batteries:
                held = s.batteries[target].measured_at if target in s.batteries else None
            elif model is DeviceMeasurement:
                return None  # the P1 meter's: not kept
            elif model is Forecast:
                held = s.forecast and s.forecast.made_at
            elif model is HouseSurplus:
                held = s.surplus and s.surplus.timestamp
            elif model is OverrideState and target is not None:
                held = s.overrides[target].timestamp if target in s.overrides else None
            elif model is Prices:
                held = s.money.prices and s.money.prices.made_at
            elif model is BatteryState:
                held = s.money.battery_state and s.money.battery_state.timestamp
            elif model is SocketState and target is not None:
                held = s._state_seen.get(target)
            else:
                return None
            return bool(held == at)

        build()
        rig = Rig(holder["service"], state, took=took)
        if restoring:

            def renew() -> None:
                if holder["scheduler"].restored.is_set() or holder["scheduler"].money._restored:
                    build()
                    rig.service = holder["service"]
                    rig.renewals += 1

            async def plan_on_restored() -> None:
                scheduler: Scheduler = holder["scheduler"]
                if scheduler.restored.is_set():
                    await scheduler.on_surplus(f"{BASE}/surplus", sane(HouseSurplus, clock))
                    await scheduler.plan_once()  # raises: a bug the restored books caused

            rig.renew, rig.after_taken = renew, plan_on_restored
        else:
            rig.tasks.append(asyncio.create_task(holder["scheduler"].run(), name="scheduler"))
            await clock.run_for(SchedulerOptions().restore_wait_s + 0.1)
            assert holder["scheduler"].restored.is_set()
            if plan_after:

                async def plan() -> None:
                    await deliver(rig.service, f"{BASE}/surplus", sane(HouseSurplus, clock))
                    await quiesce()

                rig.after_taken = plan
        return rig

    return make


def actuator_rig(
    *, restoring: bool = False, relays: dict[str, FakeRelay] | None = None
) -> Callable[[Settings, ManualClock], Coroutine[Any, Any, Rig]]:
    """The actuator as `app()` makes it (fake relays). `restoring`: still reading back its
    retained state (a fresh one once the last one took a message, after it finished
    restoring with it and ran a cycle of each socket); else running (a task per socket,
    all woken after each payload taken)."""

    async def make(settings: Settings, clock: ManualClock) -> Rig:
        shell = ShellOptions(
            read_interval_s=settings.actuator_read_interval_s,
            read_timeout_s=min(5.0, max(1.0, settings.actuator_read_interval_s)),
        )
        fakes: dict[str, FakeRelay] = relays if relays is not None else {}
        batteries = FakeBatteries()
        holder: dict[str, Any] = {}

        def build() -> None:
            service = new_service("actuator", settings, clock, ServiceOptions())
            actuator = Actuator(
                DEVICES,
                service,
                shell=shell,
                client_factory=relay_factory(fakes),
                battery_factory=battery_factory(batteries),
            )
            holder.update(service=service, actuator=actuator, used=False)

        def state() -> object:
            actuator: Actuator = holder["actuator"]
            core = actuator.core
            sockets = []
            for c in core.sockets.values():
                hold = c.hold
                sockets.append(
                    (
                        c.power_on,
                        c.switch_lock,
                        c.read_at,
                        c.expected_on,
                        c.last_switch_at,
                        c.last_switch_reason,
                        None
                        if hold is None
                        else (hold.state, hold.until, hold.source, hold.set_at),
                        c.command,
                        c.uncertain,
                        c.failures,
                        c.retry_at,
                        c.blocked,
                        c.measurement,
                        c.touched,
                        c.published,
                    )
                )
            assert actuator.battery is not None
            b = actuator.battery.core
            battery = (
                b.command,
                b.device,
                b.expected,
                None if b.hold is None else (b.hold.until, b.hold.seen, b.hold.set_at),
                b.last_change_at,
                b.last_change_reason,
                b.failures,
                b.retry_at,
                b.to_full_done,
                b.restoring,
                actuator.battery.wake.is_set(),
            )
            return (
                tuple(sockets),
                core.restoring,
                core.last_contact,
                core.fallback_active,
                core.plan,
                core.surplus,
                core.books,
                frozenset(actuator._restore_seen),
                tuple(e.is_set() for e in actuator._wake.values()),
                battery,
            )

        def took(model: type[Message], target: str | None, at: datetime) -> bool | None:
            core = holder["actuator"].core
            held: Any = None
            if model is DeviceMeasurement and target is not None:
                held = core.books.book(target).last_sample_at
            elif model is EnergyBooks:  # read through model_dump(mode="json"): to the second
                held = core.books.book(CTX.sockets[0]).last_sample_at
                at = at.replace(microsecond=0)
            elif model is HouseSurplus:
                held = core.surplus and core.surplus.timestamp
            elif model is PlanMessage:
                held = core.plan and core.plan.made_at
            elif model is SocketCommand and target is not None:
                command = core.sockets[slugify(target)].command
                held = command and command.timestamp
            elif model is BatteryCommand:
                command = holder["actuator"].battery.core.command
                held = command and command.timestamp
            else:
                return None
            return bool(held == at)

        build()
        rig = Rig(holder["service"], state, took=took)
        if restoring:

            def renew() -> None:
                if holder["used"]:
                    build()
                    rig.service = holder["service"]
                    rig.renewals += 1

            async def restore_and_cycle() -> None:
                actuator: Actuator = holder["actuator"]
                holder["used"] = True
                actuator.core.finish_restore(clock.now())  # as `_restore` does
                actuator.battery.core.finish_restore()
                for slug in actuator.core.sockets:  # raises: a bug the restored state caused
                    await actuator._cycle(slug, fakes.setdefault(slug, FakeRelay()))
                    actuator.core.next_wake(slug, clock.now())
                await actuator.battery._cycle(batteries)
                actuator.battery.core.next_wake(clock.now())

            rig.renew, rig.after_taken = renew, restore_and_cycle
        else:
            actuator = holder["actuator"]
            rig.tasks.append(asyncio.create_task(actuator.run(), name="actuator"))
            await clock.run_for(shell.restore_timeout_s + 0.1)  # no broker: it starts without
            assert not actuator.core.restoring

            async def cycle() -> None:
                for event in actuator._wake.values():
                    event.set()
                actuator.battery.wake.set()
                await quiesce()

            rig.after_taken = cycle
        return rig

    return make


async def prices_rig(settings: Settings, clock: ManualClock) -> Rig:
    """The prices service (a day-ahead source with nothing: it stands in the tariff), reading
    its retained prices back (a fresh one once the last one finished restoring, which then
    publishes from what it read)."""
    holder: dict[str, Any] = {}

    def build() -> None:
        service = new_service("prices", settings, clock, ServiceOptions())
        keeper = PriceKeeper(service, settings, NoPrices())
        keeper.subscribe()
        holder.update(service=service, keeper=keeper)

    def state() -> object:
        k: PriceKeeper = holder["keeper"]
        return (k.series, k.made_at, k.published, k._restored.is_set())

    build()
    rig = Rig(holder["service"], state)

    def renew() -> None:
        if holder["keeper"]._restored.is_set():
            build()
            rig.service = holder["service"]
            rig.renewals += 1

    async def publish() -> None:
        keeper: PriceKeeper = holder["keeper"]
        keeper._restored.set()
        try:
            await keeper.update()  # raises: a bug the read-back prices caused
        except Exception:
            holder["service"].counters.inc("price_errors")
            raise

    rig.renew, rig.after_taken = renew, publish
    return rig


async def forecaster_rig(settings: Settings, clock: ManualClock) -> Rig:
    """The forecaster as `app()` makes it, with its worker offline (it falls back); a sane
    request after each payload taken makes it publish again soon (from what it holds)."""
    service = new_service("forecaster", settings, clock, ServiceOptions())
    forecaster = Forecaster(service, settings, ForecastSettings(), DEVICES.solar_panels, no_weather)

    def state() -> object:
        f = forecaster
        return (
            f.prediction,
            f.published,
            f.failures,
            f.retry_at,
            f._day_end,
            tuple(f._waiting),
            tuple(f._inflight),
            f._last_request_run,
            f._wake.is_set(),
        )

    async def request() -> None:
        await deliver(service, f"{BASE}/request/forecast", sane(ForecastRequest, clock))
        await quiesce()

    def took(model: type[Message], target: str | None, at: datetime) -> bool | None:
        if model is not Forecast:
            return None
        return forecaster.prediction is not None and forecaster.prediction.made_at == at

    rig = Rig(service, state, after_taken=request, took=took)
    rig.tasks.append(asyncio.create_task(forecaster.run(), name="forecaster"))
    await clock.settle()
    assert len(service._handlers) == 2
    return rig


async def bridge_rig(
    settings: Settings, clock: ManualClock, *, bridge_options: BridgeOptions | None = None
) -> Rig:
    """The bridge as `app()` makes it (its next-on loop reads each new plan at once)."""
    service = new_service("bridge", settings, clock, ServiceOptions())
    bridge = Bridge(DEVICES, service, options=bridge_options)

    def state() -> object:
        return (bridge.plan, dict(bridge._published), bridge._announce.is_set())

    def took(model: type[Message], target: str | None, at: datetime) -> bool | None:
        return bridge.plan is not None and bridge.plan.made_at == at

    rig = Rig(service, state, after_taken=quiesce, took=took)
    rig.tasks.append(asyncio.create_task(bridge.run(), name="bridge"))
    await clock.settle()
    return rig


async def dashboard_rig(settings: Settings, clock: ManualClock) -> Rig:
    """The dashboard's state as `app()` feeds it (everything under the base topic); every
    payload it takes is rendered at once (a value it took must not break the page). Its
    web server is not started: the fuzz is about what comes from the broker."""
    service = new_service("dashboard", settings, clock, ServiceOptions())
    dashboard = Dashboard(service, DEVICES)
    service.subscribe(service.topics.everything(), dashboard.on_message)

    def state() -> object:
        return dashboard.state.version, dashboard.state.snapshot()

    async def render() -> None:
        dashboard.render()

    def took(model: type[Message], target: str | None, at: datetime) -> bool | None:
        live = dashboard.state
        if model is PlanMessage:
            return live.plan is not None and live.plan.made_at == at
        if model is HouseSurplus:
            return live.surplus is not None and live.surplus.timestamp == at
        return None

    return Rig(service, state, after_taken=render, took=took)


# --- what each topic should do with a payload -------------------------------------------------


Expect = Callable[[str, bytes, Payload], str | None]


def parses(model: type[Message], data: bytes) -> bool:
    try:
        parse_message(model, data)
    except Exception:  # MessageError, or a bug in parse_message itself: not a message
        return False
    return True


def by_model(model: type[Message], max_bytes: int | None = None) -> Expect:
    """`drop` when the payload is not a `model` (or too large), `accept` for a sane valid one,
    None when the service decides (schema-valid, but maybe stale, foreign, out of range)."""

    def expect(topic: str, data: bytes, payload: Payload) -> str | None:
        if (max_bytes is not None and len(data) > max_bytes) or not parses(model, data):
            return "drop"
        return "accept" if payload.kind == "valid" else None

    return expect


def ha_status(topic: str, data: bytes, payload: Payload) -> str | None:
    return "accept" if data.strip() in (b"online", b"offline") else "drop"


@dataclass(frozen=True)
class Case:
    """One subscription of one service: its filter, concrete topics, payloads and rules."""

    service: str
    name: str
    topic_filter: str
    topics: tuple[On, ...]
    expect: Expect
    make: Callable[[Settings, ManualClock], Coroutine[Any, Any, Rig]]
    #: Never a drop: payloads the service may ignore (Home Assistant's discovery configs).
    never_drops: bool = False
    #: After a payload was taken, a sane message of this model (stamped a second later) on
    #: the same topic must be taken too: a taken payload must not lock out the ones after
    #: it (a plan "made" in year 9999 is newer than every real one). None: not checked (the
    #: restore topics, read once).
    follow_up: type[Message] | None = None
    #: ... on this topic about this target instead of the payload's (topic, target).
    follow_up_on: tuple[str, str] | None = None

    @property
    def id(self) -> str:
        return f"{self.service}-{self.name}"


class On(NamedTuple):
    """A concrete topic, its payloads, and the device or socket it is about (if configured)."""

    topic: str
    payloads: st.SearchStrategy[Payload]
    target: str | None = None


def _topics(pattern: str, model: type[Message], slugs: Any) -> tuple[On, ...]:
    return tuple(
        On(f"{BASE}/{pattern.format(slug)}", payloads(model, CTX, target), target)
        for slug, target in slugs
    )


def _one(topic: str, model: type[Message]) -> tuple[On, ...]:
    return (On(f"{BASE}/{topic}", payloads(model, CTX, None)),)


def _limit(kind: str) -> int:
    return ShellOptions().limits[kind].max_bytes


@functools.cache
def fuzz_settings() -> Settings:
    """The bulk's settings (made in a test: after the environment is cleared)."""
    settings = make_settings()
    assert settings.ha_discovery_prefix == "homeassistant"
    return settings


_CONFIG_PREFIX = "homeassistant/device"
_NODE = slugify(BASE)


@functools.cache
def discovery() -> tuple[frozenset[str], dict[str, Any]]:
    """This installation's device ids, and a socket's discovery config."""
    configs = discovery_configs(fuzz_settings(), DEVICES, version="fuzz")
    assert node_id(fuzz_settings()) == _NODE
    socket_config = next(c for c in configs if c.device_id != _NODE)
    return frozenset(c.device_id for c in configs), socket_config.payload


def _discovery_topics() -> tuple[On, ...]:
    ids = (_NODE, f"{_NODE}_boiler", f"{_NODE}_gone", "other_thing")
    return tuple(
        On(
            f"{_CONFIG_PREFIX}/{i}/config",
            st.deferred(lambda: discovery_payloads(discovery()[1], BASE)),
        )
        for i in ids
    )


CASES: tuple[Case, ...] = (
    # the scheduler: its books (while it restores), forecast, overrides, measurements, surplus
    Case(
        "scheduler", "books", f"{BASE}/books", _one("books", EnergyBooks),
        by_model(EnergyBooks), scheduler_rig(restoring=True),
        # books read back must not hold off the samples after them
        follow_up=DeviceMeasurement, follow_up_on=(f"{BASE}/boiler/measurement", "Boiler"),
    ),
    Case(
        "scheduler", "forecast", f"{BASE}/forecast", _one("forecast", Forecast),
        by_model(Forecast), scheduler_rig(plan_after=True), follow_up=Forecast,
    ),
    Case(
        "scheduler", "override", f"{BASE}/+/override",
        _topics("{}/override", OverrideState, OVERRIDE_SLUGS),
        by_model(OverrideState), scheduler_rig(plan_after=True), follow_up=OverrideState,
    ),
    Case(
        "scheduler", "measurement", f"{BASE}/+/measurement",
        _topics("{}/measurement", DeviceMeasurement, DEVICE_SLUGS),
        by_model(DeviceMeasurement), scheduler_rig(plan_after=True),
        follow_up=DeviceMeasurement,
    ),
    Case(
        "scheduler", "surplus", f"{BASE}/surplus", _one("surplus", HouseSurplus),
        by_model(HouseSurplus), scheduler_rig(), follow_up=HouseSurplus,
    ),
    Case(
        "scheduler", "socket_state", f"{BASE}/+", _topics("{}", SocketState, SOCKET_SLUGS),
        by_model(SocketState), scheduler_rig(plan_after=True), follow_up=SocketState,
    ),
    # the actuator: per socket its commands, overrides, own state (read back while it
    # restores), measurement; and the plan, books and surplus
    Case(
        "actuator", "command", f"{BASE}/<socket>/set",
        _topics("{}/set", SocketCommand, SOCKET_SLUGS),
        by_model(SocketCommand, _limit("command")), actuator_rig(), follow_up=SocketCommand,
    ),
    Case(
        "actuator", "override_request", f"{BASE}/<socket>/override/set",
        _topics("{}/override/set", OverrideRequest, SOCKET_SLUGS),
        by_model(OverrideRequest, _limit("override_request")), actuator_rig(),
        follow_up=OverrideRequest,
    ),
    Case(
        "actuator", "own_state", f"{BASE}/<socket>",
        _topics("{}", SocketState, SOCKET_SLUGS),
        by_model(SocketState, _limit("own_state")), actuator_rig(restoring=True),
    ),
    Case(
        "actuator", "own_override", f"{BASE}/<socket>/override",
        _topics("{}/override", OverrideState, SOCKET_SLUGS),
        by_model(OverrideState, _limit("own_override")), actuator_rig(restoring=True),
    ),
    Case(
        "actuator", "measurement", f"{BASE}/<socket>/measurement",
        _topics("{}/measurement", DeviceMeasurement, SOCKET_SLUGS),
        by_model(DeviceMeasurement, _limit("measurement")), actuator_rig(),
        follow_up=DeviceMeasurement,
    ),
    Case(
        "actuator", "plan", f"{BASE}/plan", _one("plan", PlanMessage),
        by_model(PlanMessage, _limit("plan")), actuator_rig(), follow_up=PlanMessage,
    ),
    Case(
        "actuator", "books", f"{BASE}/books", _one("books", EnergyBooks),
        by_model(EnergyBooks, _limit("books")), actuator_rig(), follow_up=EnergyBooks,
    ),
    Case(
        "actuator", "surplus", f"{BASE}/surplus", _one("surplus", HouseSurplus),
        by_model(HouseSurplus, _limit("surplus")), actuator_rig(), follow_up=HouseSurplus,
    ),
    # money: the scheduler's prices, the batteries' state, its own cost summary (read back)
    Case(
        "scheduler", "prices", f"{BASE}/prices", _one("prices", Prices),
        by_model(Prices), scheduler_rig(plan_after=True), follow_up=Prices,
    ),
    Case(
        "scheduler", "batteries", f"{BASE}/batteries", _one("batteries", BatteryState),
        by_model(BatteryState), scheduler_rig(plan_after=True), follow_up=BatteryState,
    ),
    Case(
        "scheduler", "cost", f"{BASE}/cost", _one("cost", CostSummary),
        by_model(CostSummary), scheduler_rig(restoring=True),
    ),
    # the actuator's batteries: commands, a person's auto, its own state (read back)
    Case(
        "actuator", "battery_command", f"{BASE}/batteries/set",
        _one("batteries/set", BatteryCommand),
        by_model(BatteryCommand, _limit("battery_command")), actuator_rig(),
        follow_up=BatteryCommand,
    ),
    Case(
        "actuator", "battery_override", f"{BASE}/batteries/override/set",
        _one("batteries/override/set", BatteryOverrideRequest),
        by_model(BatteryOverrideRequest, _limit("battery_override")), actuator_rig(),
        follow_up=BatteryOverrideRequest,
    ),
    Case(
        "actuator", "own_battery", f"{BASE}/batteries", _one("batteries", BatteryState),
        by_model(BatteryState, _limit("own_battery")), actuator_rig(restoring=True),
    ),
    # the prices service: its own retained prices (read back at start)
    Case(
        "prices", "prices", f"{BASE}/prices", _one("prices", Prices),
        by_model(Prices, MAX_RETAINED_BYTES), prices_rig,
    ),
    # the forecaster: requests, and its own retained forecast (read back at start)
    Case(
        "forecaster", "request", f"{BASE}/request/forecast",
        _one("request/forecast", ForecastRequest),
        by_model(ForecastRequest, REQUEST_LIMIT.max_bytes), forecaster_rig,
        follow_up=ForecastRequest,
    ),
    Case(
        "forecaster", "forecast", f"{BASE}/forecast", _one("forecast", Forecast),
        by_model(Forecast, RETAINED_LIMIT.max_bytes), forecaster_rig, follow_up=Forecast,

    ),
    # the bridge: Home Assistant's birth message, the discovery configs, the plan
    Case(
        "bridge", "ha_status", "homeassistant/status",
        (On("homeassistant/status", availability_payloads()),), ha_status, bridge_rig,
    ),
    Case(
        "bridge", "discovery_config", f"{_CONFIG_PREFIX}/+/config", _discovery_topics(),
        lambda topic, data, payload: None, bridge_rig, never_drops=True,
    ),
    Case(
        "bridge", "plan", f"{BASE}/plan", _one("plan", PlanMessage),
        by_model(PlanMessage), bridge_rig, follow_up=PlanMessage,
    ),
    # the dashboard: everything under the base topic; these carry most of its page (the
    # forecast, books and the rest are parsed the same way, and fuzzed in
    # tests/test_dashboard_state.py)
    Case(
        "dashboard", "plan", f"{BASE}/#", _one("plan", PlanMessage),
        by_model(PlanMessage), dashboard_rig, follow_up=PlanMessage,
    ),
    Case(
        "dashboard", "surplus", f"{BASE}/#", _one("surplus", HouseSurplus),
        by_model(HouseSurplus), dashboard_rig, follow_up=HouseSurplus,
    ),
    Case(
        "dashboard", "measurement", f"{BASE}/#",
        _topics("{}/measurement", DeviceMeasurement, DEVICE_SLUGS),
        by_model(DeviceMeasurement), dashboard_rig, follow_up=DeviceMeasurement,
    ),
    Case(
        "dashboard", "socket_state", f"{BASE}/#", _topics("{}", SocketState, SOCKET_SLUGS),
        by_model(SocketState), dashboard_rig, follow_up=SocketState,
    ),
    Case(
        "dashboard", "override", f"{BASE}/#",
        _topics("{}/override", OverrideState, OVERRIDE_SLUGS),
        by_model(OverrideState), dashboard_rig, follow_up=OverrideState,
    ),
)  # fmt: skip


# --- running a rig ----------------------------------------------------------------------------


@contextlib.contextmanager
def event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        pending = asyncio.all_tasks(loop)
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=5))
        loop.close()


def registered(rig: Rig) -> set[str]:
    return {f for f, _ in rig.service._handlers}


def _filter_of(case: Case) -> Iterator[str]:
    """The filters the case's concrete topics are delivered to (per-socket: each socket)."""
    if "<socket>" in case.topic_filter:
        for slug, _ in SOCKET_SLUGS:
            yield case.topic_filter.replace("<socket>", slug)
    else:
        yield case.topic_filter


@dataclass
class Tally:
    """What the fuzz did on one topic (printed, and checked at the end)."""

    examples: int = 0
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    dropped: int = 0
    rate_limited: int = 0
    too_large: int = 0
    valid_taken: int = 0
    expected_drops: int = 0
    published: int = 0
    used: int = 0
    followed: int = 0
    #: How far the clock went, s.
    clock_span_s: float = 0.0

    def line(self) -> str:
        top = ", ".join(f"{k} {n}" for k, n in self.kinds.most_common(8))
        return (
            f"{self.examples} examples: {self.dropped} dropped ({self.too_large} too large, "
            f"{self.rate_limited} rate-limited), {self.expected_drops} invalid, "
            f"{self.valid_taken} sane valid taken, {self.published} led to a publish, "
            f"{self.used} taken and used, {self.followed} followed; {top}"
        )


@dataclass(frozen=True)
class Where:
    """What failed, made into text only when an assertion fails."""

    case: str
    topic: str
    payload: Payload
    data: bytes

    def __str__(self) -> str:
        data = f"{self.data[:300]!r} ({len(self.data)} B)"
        return f"{self.case} on {self.topic}: {self.payload!r}\nrendered {data}"


def follow_up(
    case: Case,
    rig: Rig,
    clock: ManualClock,
    loop: asyncio.AbstractEventLoop,
    topic: str,
    where: Where,
    tally: Tally,
) -> None:
    """After a payload was taken: a sane message on the same topic, stamped later than any
    clock skew a service allows, is taken too (not dropped, not ignored as older)."""
    model = case.follow_up
    assert model is not None
    target: str | None
    if case.follow_up_on is not None:
        topic, target = case.follow_up_on
    else:
        target = next(on.target for on in case.topics if on.topic == topic)
    if target is None and model in NEEDS_TARGET:
        return  # a topic of no configured device: nothing there is ever taken
    clock.advance(FOLLOW_UP_AFTER_S)
    loop.run_until_complete(quiesce())
    at = clock.now()
    message = sane(model, clock, tally.examples, target)
    before = rig.counters
    loop.run_until_complete(deliver(rig.service, topic, message))
    loop.run_until_complete(quiesce())
    after = rig.counters
    delta = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    refused = [k for k in delta if k.startswith(DROP_COUNTERS) or k in LOCKOUT_COUNTERS]
    assert not refused, f"after this payload a sane {model.__name__} was refused: {delta}\n{where}"
    taken = rig.took(model, target, at) if rig.took is not None else None
    assert taken is not False, f"after this payload a sane {model.__name__} was ignored\n{where}"
    tally.followed += 1


def check_one(
    case: Case,
    rig: Rig,
    clock: ManualClock,
    loop: asyncio.AbstractEventLoop,
    topic: str,
    payload: Payload,
    tally: Tally,
    errors: list[logging.LogRecord],
) -> None:
    """One example: move the clock on, deliver, and check the rules (module docstring)."""
    if rig.renew is not None:
        rig.renew()
    clock.advance(STEP_S)
    n_errors = len(errors)

    async def exchange() -> tuple[bytes, str | None, dict[str, int], object, tuple[int, int]]:
        await quiesce()  # what the clock woke has run: only the payload acts below
        data = payload.render(clock.now(), CTX)
        expect = case.expect(topic, data, payload)
        counters, state, published = rig.counters, rig.state(), rig.published()
        await deliver(rig.service, topic, data)
        return data, expect, counters, state, published

    before_all = rig.counters
    data, expect, counters, state, published = loop.run_until_complete(exchange())
    after = rig.counters
    delta = {k: v - counters.get(k, 0) for k, v in after.items() if v != counters.get(k, 0)}
    where = Where(case.id, topic, payload, data)
    if delta.get("handler_errors"):
        why = [r.getMessage() for r in errors[n_errors:]] or ["(not logged: rate limit)"]
        raise AssertionError(f"handler error: {why[-1]}\n{where}")
    problems = rig.alive()
    assert not problems, f"{problems}\n{where}"
    drops = delta.get("messages_dropped", 0) + delta.get("messages_rate_limited", 0)
    assert drops <= 1, f"one payload counted as {drops} drops: {delta}\n{where}"
    if case.never_drops:
        assert drops == 0, f"counted as a drop: {delta}\n{where}"
    if expect == "drop":
        assert drops == 1, f"an invalid payload was not a counted drop: {delta}\n{where}"
    elif expect == "accept":
        assert drops == 0, f"a valid message was dropped: {delta}\n{where}"
    tally.examples += 1
    tally.kinds[payload.kind.split(":")[0]] += 1
    tally.expected_drops += expect == "drop"
    tally.valid_taken += expect == "accept"
    if drops:
        tally.dropped += 1
        tally.rate_limited += delta.get("messages_rate_limited", 0)
        tally.too_large += delta.get("messages_too_large", 0)
        if delta.get("messages_too_large"):
            assert delta.get("messages_dropped") == 1, f"{delta}\n{where}"
        others = {k for k in delta if not k.startswith(DROP_COUNTERS)}
        assert not others, f"a drop moved other counters: {delta}\n{where}"
        assert rig.state() == state, f"a dropped payload changed the state\n{where}"
        assert rig.published() == published, f"a dropped payload published\n{where}"
    elif rig.published() != published:
        tally.published += 1
    if not drops and rig.after_taken is not None:  # taken: let the service work with it
        loop.run_until_complete(rig.after_taken())
        tally.used += 1
    if not drops and case.follow_up is not None:
        follow_up(case, rig, clock, loop, topic, where, tally)
    final = rig.counters
    for name in BACKGROUND_ERRORS:  # its own work (planning, switching, forecasting) too
        if final.get(name, 0) != before_all.get(name, 0):
            why = [r.getMessage() for r in errors[n_errors:]]
            raise AssertionError(f"{name} after this (or an earlier taken) payload: {why}\n{where}")
    if case.never_drops:  # a discovery config: removed only when it is a stale one of ours
        try:
            stale = is_stale_config(fuzz_settings(), topic, data, discovery()[0])
        except Exception:  # a bug of is_stale_config: the handler must have failed too
            stale = False
        assert stale == (rig.published() != published), f"stale {stale}\n{where}"
        assert not stale or topic.startswith(f"{_CONFIG_PREFIX}/{_NODE}_gone/"), where
        assert rig.state() == state, f"{where}"


def _on(topic: str, payload: Payload) -> tuple[str, Payload]:
    return topic, payload


def run_fuzz(case: Case, loop: asyncio.AbstractEventLoop, tally: Tally, errors: list[Any]) -> Rig:
    clock = ManualClock(T0)
    rig = loop.run_until_complete(case.make(fuzz_settings(), clock))
    assert set(_filter_of(case)) <= registered(rig), (registered(rig), case.topic_filter)
    # (a composite drawing the topic, then its payload, cost twice as much per example)
    examples = st.one_of([on.payloads.map(functools.partial(_on, on.topic)) for on in case.topics])

    @settings(
        max_examples=N_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(examples)
    def fuzz(example: tuple[str, Payload]) -> None:
        topic, payload = example
        check_one(case, rig, clock, loop, topic, payload, tally, errors)

    fuzz()
    tally.clock_span_s = (clock.now() - T0).total_seconds()
    return rig


# --- the tests --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_topic_survives_generated_payloads(
    case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    records = caplog.records  # (the list of this phase, filled as records are made)
    tally = Tally()
    began, cpu = time.perf_counter(), time.process_time()
    with event_loop() as loop:
        rig = run_fuzz(case, loop, tally, records)
        counters = rig.counters
        renewals = rig.renewals
    took, cpu = time.perf_counter() - began, time.process_time() - cpu
    print(f"\n{case.id}: {tally.line()}; {took:.1f} s ({cpu:.1f} s CPU)")
    assert tally.examples >= min(N_EXAMPLES, 100)
    assert counters.get("handler_errors", 0) == 0
    for name in ("plan_errors", "actuator_errors", "forecast_errors"):
        assert counters.get(name, 0) == 0, (name, counters)
    if not case.never_drops:
        # the fuzz reaches both sides: drops, and valid messages taken
        assert tally.dropped >= tally.examples // 3, tally.line()
        assert tally.valid_taken >= tally.examples // 50, tally.line()
        # the parser is what refuses them, not the actuator's rate limit
        assert tally.rate_limited <= tally.dropped // 100, tally.line()
    # every line a payload caused is short, and drops are logged with a rate limit:
    # at most one line per topic and kind per window
    for record in records:
        assert len(record.getMessage()) <= MAX_LOG_LINE, record.getMessage()[:300]
    windows = math.ceil(tally.clock_span_s / ServiceOptions().log_every_s) + 1 + renewals
    per_topic = collections.Counter(
        r.getMessage().split(":")[0] for r in records if "dropped a message" in r.getMessage()
    )
    for line, n in per_topic.items():
        assert n <= windows, (line, n, windows)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_drops_are_logged_once_per_window(case: Case, caplog: pytest.LogCaptureFixture) -> None:
    """Many invalid payloads on one topic within one window: at most one line per topic and
    kind of drop; the next window's line counts the ones left out."""
    garbage = [SPECIAL_PAYLOADS[k] for k in ("empty", "null", "deep-list", "nul", "huge-int")]
    garbage += [b'{"schema_version": 1, "x": %d' % i for i in range(300)]
    caplog.set_level(logging.WARNING)
    records = caplog.records
    with event_loop() as loop:
        clock = ManualClock(T0)
        rig = loop.run_until_complete(case.make(fuzz_settings(), clock))
        topics = [on.topic for on in case.topics]
        for topic in topics:
            for data in garbage:
                loop.run_until_complete(deliver(rig.service, topic, data))
        assert rig.counters.get("handler_errors", 0) == 0
        lines = [r.getMessage() for r in records]
        for topic in topics:
            for what in ("dropped a message on", "too many messages on"):
                on_topic = [m for m in lines if m.startswith(f"{what} {topic}:")]
                assert len(on_topic) <= 1, on_topic[:3]
        drops = rig.counters.get("messages_dropped", 0) + rig.counters.get(
            "messages_rate_limited", 0
        )
        if case.never_drops:
            assert drops == 0
            return
        assert drops == len(garbage) * len(topics)
        # the next window: one line again, saying how many were left out
        before = len(records)
        clock.advance(ServiceOptions().log_every_s + 1)
        loop.run_until_complete(clock.settle())
        loop.run_until_complete(deliver(rig.service, topics[0], b"garbage"))
        new = [r.getMessage() for r in records[before:] if "dropped" in r.getMessage()]
        assert len(new) == 1, new
        assert "more since the last such line" in new[0], new[0]


def test_the_poller_subscribes_to_nothing() -> None:
    """The poller only publishes: built as its `app()` builds it, it registers no
    subscription, not even while it runs (its devices unreachable here)."""

    @contextlib.asynccontextmanager
    async def unreachable(device: Any) -> AsyncIterator[Any]:
        raise DeviceUnreachableError(device.ip_address, "fuzz: unreachable")
        yield  # pragma: no cover

    async def run() -> Service:
        clock = ManualClock(T0)
        service = new_service("poller", fuzz_settings(), clock, ServiceOptions())
        poller = make_poller(service, DEVICES)
        assert service._handlers == []
        poller._factory = unreachable
        task = asyncio.create_task(poller.run())
        await clock.run_for(120)
        assert not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return service

    with event_loop() as loop:
        service = loop.run_until_complete(run())
    assert service._handlers == []
    assert service.counters.get("polls_failed") > 0  # it did run


# --- over a real broker -----------------------------------------------------------------------

FAST = ServiceOptions(
    status_interval_s=1.0,
    status_min_interval_s=0.1,
    reconnect_min_s=0.05,
    reconnect_max_s=0.4,
    publish_timeout_s=2.0,
    keepalive_s=5,
)


def collect(strategy: st.SearchStrategy[Payload], n: int) -> list[Payload]:
    """`n` payloads drawn from `strategy` (deterministically)."""
    out: list[Payload] = []

    @settings(
        max_examples=n,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def grab(payload: Payload) -> None:
        out.append(payload)

    grab()
    return out[:n]


async def wait_for(what: Callable[[], Any], within_s: float = 20.0) -> Any:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        await asyncio.sleep(0.02)
    raise AssertionError(f"not seen within {within_s} s")


async def retained_status(broker: MqttBroker, base: str, name: str) -> ServiceStatus | None:
    topic = Topics(base).status(name)
    async with aiomqtt.Client(
        broker.host, broker.port, identifier=f"s-{uuid.uuid4().hex[:8]}"
    ) as c:
        await c.subscribe(topic, qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                async for m in c.messages:
                    if isinstance(m.payload, bytes):
                        return parse_message(ServiceStatus, m.payload)
    return None


@pytest.mark.slow
@pytest.mark.parametrize("name", ["scheduler", "actuator", "forecaster", "bridge", "prices"])
async def test_services_survive_hostile_payloads_over_mqtt(
    name: str, mqtt_broker: MqttBroker
) -> None:
    """Each service connected to a throwaway mosquitto: ~300 hostile payloads on every topic
    it subscribes to, from another client; it stays connected, counts the drops in its
    status, and still does its work on one valid message afterwards."""
    base = f"fz{uuid.uuid4().hex[:8]}"
    settings = make_settings(base, mqtt_broker)
    clock = SystemClock()
    cases = [c for c in CASES if c.service == name]
    relays: dict[str, FakeRelay] = {}
    service = Service(name, settings, clock=clock, options=FAST, version="fuzz")
    app: Callable[[], Coroutine[Any, Any, None]]
    if name == "scheduler":
        scheduler = Scheduler(
            DEVICES, settings, service, topics=service.topics, counters=service.counters,
            clock=clock, log=service.log, options=SchedulerOptions(restore_wait_s=0.3),
        )  # fmt: skip
        scheduler.subscribe(service)
        app = lambda: scheduler.run(service.wait_connected)  # noqa: E731
    elif name == "actuator":
        shell = ShellOptions(read_interval_s=0.2, restore_timeout_s=5.0, restore_wait_s=0.3)
        batteries = FakeBatteries()
        actuator = Actuator(
            DEVICES,
            service,
            shell=shell,
            client_factory=relay_factory(relays),
            battery_factory=battery_factory(batteries),
        )
        app = actuator.run
    elif name == "forecaster":
        forecaster = Forecaster(
            service, settings, ForecastSettings(), DEVICES.solar_panels, no_weather
        )
        app = forecaster.run
    elif name == "prices":
        keeper = PriceKeeper(service, settings, NoPrices())
        keeper.subscribe()
        app = lambda: keeper.run(service.wait_connected)  # noqa: E731
    else:
        bridge = Bridge(DEVICES, service, options=BridgeOptions(0.0, 0.1))
        app = bridge.run
    # The hostile payloads are drawn before the service starts: drawing them takes seconds
    # of CPU in this event loop, which (on a busy machine) kept the service from answering
    # the broker's keepalive: the broker dropped it, and what was published meanwhile.
    sent: list[tuple[str, bytes]] = []  # each one a counted drop
    ignored: list[tuple[str, bytes]] = []  # foreign discovery configs: never a drop
    for case in cases:  # N_OVER_MQTT hostile payloads per subscription, over its topics
        hostile: list[tuple[str, bytes]] = []
        per_topic = 2 * N_OVER_MQTT // len(case.topics) + 1
        drawn = [(on.topic, collect(on.payloads, per_topic)) for on in case.topics]
        for i in range(per_topic):
            for topic, payloads_drawn in drawn:
                if i >= len(payloads_drawn):
                    continue
                real = topic.replace(f"{BASE}/", f"{base}/", 1)
                data = payloads_drawn[i].render(clock.now(), CTX)
                expect = case.expect(real, data, payloads_drawn[i])
                if expect == "drop" or (case.never_drops and data):
                    hostile.append((real, data))
        assert len(hostile) >= N_OVER_MQTT, (case.id, len(hostile))
        (ignored if case.never_drops else sent).extend(hostile[:N_OVER_MQTT])
    task = asyncio.create_task(service.run(app))
    try:
        await asyncio.wait_for(service.wait_connected(), 10)
        await asyncio.sleep(0.5)  # subscribed, restored
        t = Topics(base)
        print(f"\n{name}: {len(sent) + len(ignored)} hostile payloads over MQTT")
        async with aiomqtt.Client(
            mqtt_broker.host, mqtt_broker.port, identifier=f"flood-{uuid.uuid4().hex[:8]}"
        ) as client:
            for topic, data in [*sent, *ignored]:
                await client.publish(topic, data, qos=1)

        def dropped() -> int:
            c = service.counters
            return c.get("messages_dropped") + c.get("messages_rate_limited")

        await wait_for(lambda: dropped() >= len(sent))
        assert dropped() == len(sent)
        assert service.connected
        assert not task.done()
        assert service.counters.get("handler_errors") == 0

        # the retained status shows the drops
        async def status_shows() -> ServiceStatus:
            deadline = time.monotonic() + 10
            while True:
                got = await retained_status(mqtt_broker, base, name)
                counts = got.counters if got is not None else {}
                if counts.get("messages_dropped", 0) + counts.get(
                    "messages_rate_limited", 0
                ) >= len(sent):
                    assert got is not None
                    return got
                assert time.monotonic() < deadline, counts
                await asyncio.sleep(0.2)

        await status_shows()
        # ... and it still works: one valid message
        await asyncio.sleep(1.1)  # the actuator's token buckets fill again
        now = clock.now()
        async with aiomqtt.Client(
            mqtt_broker.host, mqtt_broker.port, identifier=f"ok-{uuid.uuid4().hex[:8]}"
        ) as client:
            if name == "scheduler":
                doc = valid_doc(HouseSurplus, CTX, None, True, 1)
                before = service.counters.get("plans_published")
                await client.publish(t.surplus(), encode(doc, now, CTX), qos=1)
                await wait_for(lambda: service.counters.get("plans_published") > before)
            elif name == "actuator":
                doc = valid_doc(SocketCommand, CTX, "Boiler", True, 1)
                doc["state"] = "on"
                await client.publish(t.socket_set("boiler"), encode(doc, now, CTX), qos=1)
                await wait_for(lambda: relays["boiler"].power_on)
            elif name == "forecaster":
                before = service.counters.get("forecast_responses")
                await client.publish(t.forecast_request(), b'{"transaction": 7}', qos=1)
                await wait_for(lambda: service.counters.get("forecast_responses") > before)
            elif name == "prices":
                # its own work goes on: the tariff stands in for the source that has nothing
                await wait_for(lambda: service.counters.get("prices_published") >= 1)
                await wait_for(lambda: service.counters.get("fetches_failed") >= 1)
            else:
                doc = valid_doc(PlanMessage, CTX, None, True, 1)
                before = service.counters.get("next_on_published")
                await client.publish(t.plan(), encode(doc, now, CTX), qos=1)
                await wait_for(lambda: service.counters.get("next_on_published") > before)
        assert service.connected
        assert service.counters.get("handler_errors") == 0
    finally:
        service.request_stop()
        assert await asyncio.wait_for(task, 15) == 0
