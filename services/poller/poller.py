"""The poller: reads every HomeWizard device, publishes measurements, surplus and availability.

Each device has its own task, its own timeout and its own exponential back-off, so a slow or
failing device never delays the others. A device's polls run one after the other (never
overlapping); each HTTP attempt within a poll gets half the poll timeout (0.5..5 s). The API
v2 devices' certificates are checked against `device_ca_file` (default: the HomeWizard CA).

Every `poll_interval_s` (fixed rate, on one schedule shared by all devices, so the devices of
a round are read together) a device is read (an Energy Socket: measurement, then relay
state) and its `DeviceMeasurement` published, retained, on `<base>/<device>/measurement`.
A failed poll is counted (`polls_failed`, `polls_failed_<kind>`, `device_failures_<device>`),
logged with the device's name (repeats rate-limited), and the next try comes
interval × 2^(failures−1) after the failure, at most `max_backoff_s` (a timed-out poll counts
from its timeout), rounded up to the shared schedule.

Each device's availability (`<base>/<device>/availability`, retained) is `online` after a good
poll and `offline` after a failed one; it is published when it changes.

After every good P1 reading, once the polls of the other devices under way at it have ended
(so that a socket switched since the last round counts with its new power), the house
surplus is published (retained, `<base>/surplus`):

    surplus_w = −p1_power_w + Σ socket power + Σ battery power (charging +)

from the devices with a fresh reading (`based_on`); a device whose last poll failed or whose
reading is older than 2 poll intervals is `missing` and left out. No fresh P1: no surplus.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol, runtime_checkable

from pydantic import ValidationError

from shared.clock import Clock
from shared.config import BatteryConfig, DevicesConfig, P1Config, SocketConfig
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
    V1Client,
    V2Client,
    client_for,
    p1_v2_client,
)
from shared.messages import (
    AVAILABILITY_OFFLINE,
    AVAILABILITY_ONLINE,
    Availability,
    DeviceMeasurement,
    HouseSurplus,
)
from shared.planning.problem import describe_validation_error
from shared.service import (
    Counters,
    Publisher,
    RateLimitedLog,
    Service,
    run_service,
    with_timeout,
)
from shared.topics import Topics

__all__ = [
    "AnyDevice",
    "ClientFactory",
    "MeasurementReader",
    "Poller",
    "PollerOptions",
    "Publisher",
    "SocketReader",
    "app",
    "default_client_factory",
    "error_kind",
    "main",
    "make_poller",
]

SERVICE_NAME = "poller"

AnyDevice = P1Config | SocketConfig | BatteryConfig


class MeasurementReader(Protocol):
    """What the poller needs of a device client (`V1Client`, `V2Client`, or a test fake)."""

    async def measurement(self) -> Measurement: ...


@runtime_checkable
class SocketReader(MeasurementReader, Protocol):
    """An Energy Socket's client also reads the relay state."""

    async def socket_state(self) -> SocketState: ...


@runtime_checkable
class SystemReader(MeasurementReader, Protocol):
    """A client that also reads the device's `GET /api/system` (API v2: its uptime)."""

    async def system(self) -> SystemInfo: ...


class P1WithSystem:
    """A P1 meter read over API v1, with its API v2 `/api/system` beside it (when its own
    token is configured): the meter's uptime tells a power cut of the house."""

    def __init__(self, reader: V1Client, system: V2Client) -> None:
        self._reader, self._system = reader, system

    @property
    def failed_attempts(self) -> int:
        return _failed_attempts(self._reader) + _failed_attempts(self._system)

    async def measurement(self) -> Measurement:
        return await self._reader.measurement()

    async def system(self) -> SystemInfo:
        return await self._system.system()


#: Makes the client of one device; used as `async with factory(device) as client`.
ClientFactory = Callable[[AnyDevice], AbstractAsyncContextManager[MeasurementReader]]


class ReadingError(Exception):
    """The device answered, but not with a usable reading (no power, out-of-range value)."""


#: Error kinds, most specific first: the `<kind>` of the `polls_failed_<kind>` counters.
_KINDS: tuple[tuple[type[BaseException], str], ...] = (
    (CertificateError, "certificate"),
    (DeviceUnreachableError, "unreachable"),
    (DeviceTimeoutError, "timeout"),
    (TimeoutError, "timeout"),
    (UnauthorizedError, "unauthorized"),
    (ApiDisabledError, "api_disabled"),
    (InvalidResponseError, "invalid_response"),
    (UnsupportedError, "unsupported"),
    (HomeWizardError, "device_error"),
    (ReadingError, "invalid_reading"),
)


def error_kind(err: BaseException) -> str:
    """The counter suffix of a failure: `timeout`, `unreachable`, ..., or `unexpected`."""
    return next((kind for cls, kind in _KINDS if isinstance(err, cls)), "unexpected")


def _failed_attempts(client: object) -> int:
    """The client's count of failed, retried requests (0 for a client without one)."""
    value = getattr(client, "failed_attempts", 0)
    return value if isinstance(value, int) else 0


@dataclass(frozen=True)
class PollerOptions:
    """Timings of the poller; only `interval_s` is a setting (`poll_interval_s`)."""

    interval_s: float = 30.0
    #: Longest a poll of one device may take, s (default: the interval, within 1..10 s).
    timeout_s: float | None = None
    #: Longest one HTTP attempt (connect, TLS handshake, each read) may take, s
    #: (default: half the poll timeout, within 0.5..5 s; see `request_timeout_s`).
    attempt_timeout_s: float | None = None
    #: Longest wait after failures, s (default: 8 intervals, within interval..300 s).
    max_backoff_s: float | None = None
    #: A reading older than this many intervals is stale (the device counts as missing).
    stale_after_intervals: float = 2.0
    #: Repeated failure lines of one device: at most once per this many s.
    log_every_s: float = 60.0
    #: An API v2 device's uptime (`GET /api/system`) is read at most this often (clock s),
    #: and on the first good poll after failed ones; its boot time goes out as `booted_at`.
    system_every_s: float = 60.0
    #: A boot time later than the one before by more than this (clock s) is a restart;
    #: less is the jitter of reading `uptime_s` (whole seconds, the request's time).
    restart_min_s: float = 120.0

    @property
    def poll_timeout_s(self) -> float:
        if self.timeout_s is not None:
            return self.timeout_s
        return min(10.0, max(1.0, self.interval_s))

    @property
    def request_timeout_s(self) -> float:
        """The clients' per-attempt timeout: half the poll timeout, within 0.5..5 s.

        Half, so that a lost first attempt leaves room for a retry within the poll; at most
        5 s (a real device answers within a second, its TLS handshake within a few); at
        least 0.5 s. A 30-s poll: 10-s poll timeout, 5-s attempts. A 1-s poll: 1-s poll
        timeout, 0.5-s attempts. The poll timeout bounds the whole poll either way, and a
        device's polls run one after the other, so they never overlap.
        """
        if self.attempt_timeout_s is not None:
            return self.attempt_timeout_s
        return min(5.0, max(0.5, self.poll_timeout_s / 2))

    @property
    def backoff_cap_s(self) -> float:
        if self.max_backoff_s is not None:
            return self.max_backoff_s
        return max(self.interval_s, min(300.0, 8 * self.interval_s))

    def backoff_s(self, failures: int) -> float:
        """Wait before the next try after `failures` failures in a row."""
        if failures <= 0:
            return self.interval_s
        return min(self.interval_s * 2.0 ** min(failures - 1, 30), self.backoff_cap_s)


@dataclass
class DeviceState:
    """What the poller knows of one device."""

    device: AnyDevice
    reading: DeviceMeasurement | None = None
    #: Clock monotonic time of `reading`.
    read_at: float | None = None
    #: The last poll failed.
    failed: bool = False
    #: Failures in a row.
    failures: int = 0
    availability: Availability | None = None
    #: When the device last booted (its API v2 uptime), and when that was read (monotonic).
    booted_at: datetime | None = None
    system_at: float | None = None


class Poller:
    """Polls every configured device concurrently; see the module docstring."""

    def __init__(
        self,
        devices: DevicesConfig,
        publisher: Publisher,
        *,
        topics: Topics,
        counters: Counters,
        clock: Clock,
        client_factory: ClientFactory,
        options: PollerOptions | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self.devices = devices
        self.options = options if options is not None else PollerOptions()
        self.states: dict[str, DeviceState] = {
            d.device_name: DeviceState(d) for d in devices.devices
        }
        self._publisher = publisher
        self._topics = topics
        self._counters = counters
        self._clock = clock
        self._factory = client_factory
        self._log = log if log is not None else logging.getLogger(f"hwsched.{SERVICE_NAME}")
        self._rate_limited = RateLimitedLog(self._log, clock, self.options.log_every_s)
        #: Polls follow one shared schedule from here (all devices of a round together).
        self._epoch = clock.monotonic()
        #: Devices whose poll is under way, and when it began (clock monotonic).
        self._polling: dict[str, float] = {}
        #: The latest P1 reading's surplus, waiting for these polls of its round to end.
        self._surplus_waits: set[str] | None = None

    async def run(self) -> None:
        """Poll until cancelled (one task per device)."""
        for battery in self.devices.batteries:
            if battery.user_info.token_is_placeholder:
                self._log.warning(
                    "%s: the token is the example's placeholder (all zeros): pair the battery "
                    "and put its token in the devices file",
                    battery.device_name,
                )
        self._log.info(
            "polling %d devices every %g s (timeout %g s, %g s per attempt)",
            len(self.states),
            self.options.interval_s,
            self.options.poll_timeout_s,
            self.options.request_timeout_s,
        )
        self._epoch = self._clock.monotonic()
        async with asyncio.TaskGroup() as group:
            for state in self.states.values():
                group.create_task(self._device_task(state), name=f"poll-{state.device.slug}")

    # --- one device ---------------------------------------------------------------------

    async def _device_task(self, state: DeviceState) -> None:
        """Keep a client for the device and poll with it; a client that fails is remade."""
        while True:
            try:
                async with self._factory(state.device) as client:
                    await self._poll_loop(state, client)
            except Exception as err:  # making or closing the client failed: a failed poll
                self._failed(state, err)
                await self._clock.sleep(self.options.backoff_s(state.failures))

    async def _poll_loop(self, state: DeviceState, client: MeasurementReader) -> None:
        opts = self.options
        next_due = self._clock.monotonic()
        retried = _failed_attempts(client)
        while True:
            wait = next_due - self._clock.monotonic()
            if wait > 0:
                await self._clock.sleep(wait)
            self._polling[state.device.device_name] = self._clock.monotonic()
            try:
                reading = await with_timeout(
                    self._clock, opts.poll_timeout_s, self._read(state, client), work=True
                )
            except Exception as err:  # every failure is counted and logged, never fatal
                self._failed(state, err)
                next_due = self._slot(self._clock.monotonic() + opts.backoff_s(state.failures))
            else:
                self._succeeded(state, reading)
                now = self._clock.monotonic()
                next_due = max(self._slot(next_due, later=True), self._slot(now))
            # a request that failed and succeeded on its retry is a failed request too
            now_retried = _failed_attempts(client)
            if now_retried > retried:
                self._counters.inc("requests_retried", now_retried - retried)
            retried = now_retried

    def _slot(self, when: float, *, later: bool = False) -> float:
        """The first time of the shared schedule (epoch + k intervals) at or (`later`: only)
        after `when`."""
        steps = (when - self._epoch) / self.options.interval_s
        k = math.floor(steps + 1e-9) + 1 if later else math.ceil(steps - 1e-9)
        return self._epoch + max(0, k) * self.options.interval_s

    async def _read(self, state: DeviceState, client: MeasurementReader) -> DeviceMeasurement:
        device = state.device
        measured = await client.measurement()
        if measured.power_w is None:  # before asking a socket for its relay state
            raise ReadingError("the device sent no power")
        power_on: bool | None = None
        switch_lock: bool | None = None
        if isinstance(device, SocketConfig):
            if not isinstance(client, SocketReader):
                raise ReadingError("its client cannot read a socket's relay state")
            relay = await client.socket_state()
            power_on, switch_lock = relay.power_on, relay.switch_lock
        booted_at = await self._booted_at(state, client)
        try:
            return DeviceMeasurement(
                timestamp=self._clock.now(),
                device=device.device_name,
                device_type=device.device_type,
                power_w=measured.power_w,
                energy_import_kwh=measured.energy_import_kwh,
                energy_export_kwh=measured.energy_export_kwh,
                power_on=power_on,
                switch_lock=switch_lock,
                state_of_charge_pct=(
                    measured.state_of_charge_pct if isinstance(device, BatteryConfig) else None
                ),
                api="v2" if isinstance(device, BatteryConfig) else "v1",
                booted_at=booted_at,
            )
        except ValidationError as err:
            raise ReadingError(describe_validation_error(err)) from None

    async def _booted_at(self, state: DeviceState, client: MeasurementReader) -> datetime | None:
        """When the device booted (now − its API v2 `uptime_s`), read every `system_every_s`
        and after failed polls; None for a device without API v2. A failed read of it is
        not a failed poll (counted `system_reads_failed`, the last boot time kept)."""
        if not isinstance(client, SystemReader):
            return None
        opts, now_m = self.options, self._clock.monotonic()
        if (
            state.system_at is not None
            and not state.failures
            and now_m - state.system_at < opts.system_every_s
        ):
            return state.booted_at
        state.system_at = now_m
        name = state.device.device_name
        try:
            info = await client.system()
        except HomeWizardError as err:
            self._counters.inc("system_reads_failed")
            self._rate_limited.log(
                f"system:{state.device.slug}",
                logging.INFO,
                "%s: GET /api/system failed (%s): its uptime is not known",
                name,
                err,
            )
            return state.booted_at
        if info.uptime_s is None:
            return state.booted_at
        booted = (self._clock.now() - timedelta(seconds=info.uptime_s)).replace(microsecond=0)
        before = state.booted_at
        if before is not None and booted - before <= timedelta(seconds=opts.restart_min_s):
            return before  # the same boot, read again (uptime in whole s, the request's time)
        if before is not None:
            self._counters.inc("device_restarts")
            self._log.info(
                "%s: restarted (up %d s since %s): a power cut or a restart",
                name,
                info.uptime_s,
                booted.isoformat(),
            )
        state.booted_at = booted
        return booted

    def _succeeded(self, state: DeviceState, reading: DeviceMeasurement) -> None:
        device = state.device
        started = self._polling.pop(device.device_name, None)
        if state.failures:
            self._log.info(
                "%s: read again after %d failed polls", device.device_name, state.failures
            )
            self._rate_limited.reset(f"device:{device.slug}")
        state.reading = reading
        state.read_at = self._clock.monotonic()
        state.failed = False
        state.failures = 0
        self._counters.inc("polls_ok")
        self._publisher.publish(self._topics.measurement(device.slug), reading)
        self._set_availability(state, AVAILABILITY_ONLINE)
        if isinstance(device, P1Config):  # its surplus waits for the round's other polls
            since = (started if started is not None else 0.0) - self.options.interval_s / 2
            self._surplus_waits = {n for n, t in self._polling.items() if t >= since}
        self._surplus_round()

    def _failed(self, state: DeviceState, err: Exception) -> None:
        device = state.device
        self._polling.pop(device.device_name, None)
        kind = error_kind(err)
        state.failed = True
        state.failures += 1
        self._counters.inc("polls_failed")
        self._counters.inc(f"polls_failed_{kind}")
        self._counters.inc(f"device_failures_{device.slug}")
        port = f":{device.port}" if device.port is not None else ""
        self._rate_limited.log(
            f"device:{device.slug}",
            logging.ERROR if kind == "unexpected" else logging.WARNING,
            "%s (%s%s): poll failed (%s): %s; %d in a row, next try in %g s",
            device.device_name,
            device.ip_address,
            port,
            kind,
            str(err) or type(err).__name__,
            state.failures,
            self.options.backoff_s(state.failures),
        )
        if kind == "unexpected":
            self._log.debug("%s: unexpected failure", device.device_name, exc_info=err)
        self._set_availability(state, AVAILABILITY_OFFLINE)
        self._surplus_round()

    def _set_availability(self, state: DeviceState, availability: Availability) -> None:
        if state.availability == availability:
            return
        name = state.device.device_name
        if availability == AVAILABILITY_ONLINE:
            self._log.info("%s: online", name)
        elif state.availability is not None:
            self._log.warning("%s: offline", name)
        state.availability = availability
        self._publisher.publish(self._topics.device_availability(state.device.slug), availability)

    # --- the house surplus -----------------------------------------------------------------

    def is_fresh(self, state: DeviceState) -> bool:
        """The last poll succeeded and its reading is at most `stale_after_intervals` old."""
        if state.failed or state.reading is None or state.read_at is None:
            return False
        age = self._clock.monotonic() - state.read_at
        return age <= self.options.stale_after_intervals * self.options.interval_s

    def surplus(self) -> HouseSurplus | None:
        """The house surplus from the fresh readings now; None without a fresh P1 reading."""
        p1 = self.states[self.devices.p1.device_name]
        if not self.is_fresh(p1) or p1.reading is None:
            return None
        sockets_w: dict[str, float] = {}
        batteries_w: dict[str, float] = {}
        based_on = [p1.device.device_name]
        missing: list[str] = []
        for name, state in self.states.items():
            if state is p1:
                continue
            if not self.is_fresh(state) or state.reading is None:
                missing.append(name)
                continue
            based_on.append(name)
            if isinstance(state.device, SocketConfig):
                sockets_w[name] = state.reading.power_w
            elif isinstance(state.device, BatteryConfig):
                batteries_w[name] = state.reading.power_w
        p1_power = p1.reading.power_w
        return HouseSurplus(
            timestamp=self._clock.now(),
            surplus_w=-p1_power + sum(sockets_w.values()) + sum(batteries_w.values()),
            p1_power_w=p1_power,
            sockets_w=sockets_w,
            batteries_w=batteries_w,
            based_on=based_on,
            missing=missing,
        )

    def _surplus_round(self) -> None:
        """Publish the latest P1 reading's surplus once the polls of its round have ended.

        The round: polls that began at most half an interval before the P1's (all devices
        share one schedule); a poll hanging from an earlier round is not waited for, and a
        hanging poll of this round at most for the poll timeout. Without this wait the P1
        is read first and every socket switched since the last round counted with its old
        power against the P1's new one: one surplus off by the socket's power per switch
        (a boiler switched off: 2 kW of surplus that is not there).
        """
        waits = self._surplus_waits
        if waits is None:
            return
        waits &= self._polling.keys()
        if not waits:
            self._surplus_waits = None
            self._publish_surplus()

    def _publish_surplus(self) -> None:
        try:
            surplus = self.surplus()
        except ValidationError as err:
            self._counters.inc("surplus_invalid")
            self._rate_limited.log(
                "surplus",
                logging.WARNING,
                "surplus not published: %s",
                describe_validation_error(err),
            )
            return
        if surplus is None:
            return
        self._counters.inc("surplus_published")
        self._publisher.publish(self._topics.surplus(), surplus)


# --- the service ----------------------------------------------------------------------------


def default_client_factory(options: PollerOptions, ca_file: Path | None = None) -> ClientFactory:
    """The real HomeWizard clients (`shared.homewizard.client_for`), within the poll timeout.

    Each HTTP attempt gets `options.request_timeout_s`; the clients retry a failed read
    themselves, and the poller's own timeout still bounds the whole poll. `ca_file`: the
    CA the API v2 devices' certificates must chain to (None: the bundled HomeWizard CA).
    """
    timeout_s = options.request_timeout_s

    def make(device: AnyDevice) -> AbstractAsyncContextManager[MeasurementReader]:
        if isinstance(device, P1Config) and device.battery_token is not None:
            return _p1_with_system(device, timeout_s, ca_file)
        return client_for(device, timeout_s=timeout_s, ca_file=ca_file)

    return make


def make_poller(
    service: Service, devices: DevicesConfig, options: PollerOptions | None = None
) -> Poller:
    """The poller on the service's runtime, with the real clients and the settings' CA.

    `options` default to the settings' `poll_interval_s` with the derived timeouts.
    """
    if options is None:
        options = PollerOptions(interval_s=service.settings.poll_interval_s)
    return Poller(
        devices,
        service,
        topics=service.topics,
        counters=service.counters,
        clock=service.clock,
        client_factory=default_client_factory(options, service.settings.device_ca_file),
        options=options,
        log=service.log,
    )


async def app(service: Service, devices: DevicesConfig) -> None:
    """The poller's work inside the service runtime."""
    await make_poller(service, devices).run()


def main() -> int:
    """`python -m services.poller`: settings from config/settings.toml and HWSCHED_* variables."""
    return run_service(SERVICE_NAME, app)


@asynccontextmanager
async def _p1_with_system(
    device: P1Config, timeout_s: float, ca_file: Path | None
) -> AsyncIterator[MeasurementReader]:
    """A paired P1 meter: read over API v1, its uptime over API v2 (its own token)."""
    token = device.battery_token
    assert token is not None
    system = p1_v2_client(device, token, timeout_s=timeout_s, ca_file=ca_file)
    async with client_for(device, timeout_s=timeout_s, ca_file=ca_file) as reader, system:
        yield P1WithSystem(reader, system)
