"""The runtime every hwsched service shares: configuration, logging, counters and MQTT.

A service is a name (`poller`), an *app* coroutine (its own work) and this runtime::

    def main() -> int:
        return run_service("poller", app)          # app(service, devices) -> Awaitable[None]

`run_service` loads the settings and the devices file (a `ConfigError` is one line on stderr
and exit status 2), sets up logging (one line per event), and runs a `Service`:

* the MQTT connection (aiomqtt) as client `<client_id_prefix>-<service>`, with credentials
  from the settings (never logged) and the Will = retained `offline` on the service's
  availability topic. On connect it publishes retained `online`, then its status, then the
  latest retained message of every topic it published before (the broker may have lost them).
  When the broker goes away or restarts it reconnects with back-off (`async with Client(...)`
  inside a loop catching `aiomqtt.MqttError`, as aiomqtt documents);
* `publish(topic, payload)`: never blocks, never raises for a broker problem. QoS and retain
  come from the topic registry (`shared.topics.TOPICS`). Retained state is kept (latest per
  topic) and sent when connected; a non-retained message (command, event) that cannot be sent
  because the connection is down is dropped and counted, never replayed stale;
* `subscribe(filter, handler)`: (re)subscribed on every connect; a handler's `MessageError` is
  a counted drop, any other exception a counted, logged handler error, never a crash;
* `counters` (named ints) published in the `ServiceStatus`, periodically and soon after a change;
* SIGINT/SIGTERM: stop the app, publish the status and `offline`, disconnect, exit 0.

All time comes from the injected clock (`shared.clock`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import re
import signal
import socket
import sys
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiomqtt

from shared.clock import Clock, SystemClock, shared_scaled_clock, sleep_for_work
from shared.config import ConfigError, DevicesConfig, Settings, load_config, load_settings
from shared.messages import (
    AVAILABILITY_OFFLINE,
    AVAILABILITY_ONLINE,
    Availability,
    Message,
    MessageError,
    ServiceStatus,
    dump_availability,
    dump_message,
)
from shared.topics import Topics

__all__ = [
    "EXIT_CONFIG",
    "MAX_COUNTERS",
    "AppFactory",
    "Counters",
    "Handler",
    "RateLimitedLog",
    "Service",
    "ServiceOptions",
    "clock_for",
    "load_configuration",
    "package_version",
    "run_service",
    "setup_logging",
    "with_timeout",
]

T = TypeVar("T")

#: Exit status for unusable configuration (as `hwsched check-config`).
EXIT_CONFIG = 2
#: Most counters a status carries (`ServiceStatus.counters` holds at most 256).
MAX_COUNTERS = 256
_OVERFLOW_COUNTER = "counters_overflow"
_COUNTER_NAME = re.compile(r"^[a-z0-9]+(_[a-z0-9]+)*$")

#: A subscription handler: topic and raw payload.
Handler = Callable[[str, bytes], Awaitable[None]]
#: What `run_service` runs: the service's own work, given the runtime and the devices.
AppFactory = Callable[["Service", DevicesConfig], Coroutine[Any, Any, None]]


# --- configuration and logging ------------------------------------------------------------


def load_configuration(settings_file: Path | None = None) -> tuple[Settings, DevicesConfig]:
    """The settings and the devices file they name; raises ConfigError (one line)."""
    settings = load_settings(settings_file)
    return settings, load_config(settings)


class _OneLineFormatter(logging.Formatter):
    """One line per event: an exception as `Type: message (at file:line)`, newlines folded."""

    def formatException(self, ei: Any) -> str:  # noqa: N802 (logging's name)
        exc_type, exc, tb = ei
        where = traceback.extract_tb(tb)[-1] if tb is not None else None
        at = f" (at {where.filename}:{where.lineno})" if where is not None else ""
        name = exc_type.__name__ if exc_type is not None else "Exception"
        return f"{name}: {exc}{at}"

    def __init__(self, fmt: str, tz: tzinfo | None = None, sim_clock: Clock | None = None) -> None:
        super().__init__(fmt)
        self.tz = tz
        self.sim_clock = sim_clock

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        """Local time with its UTC offset, to the millisecond: `2026-06-21T14:03:07.123+02:00`
        (the settings' time zone: a container's own is UTC, the house's is not); on a
        simulated clock, the simulated time after it (`[simulated 2026-06-21T06:12:30+02:00]`):
        the times and durations in such a run's messages are simulated ones."""
        when = datetime.fromtimestamp(record.created, self.tz or UTC)
        if self.tz is None:
            when = when.astimezone()  # the host's local time zone
        text = when.isoformat(timespec="milliseconds")
        if self.sim_clock is not None:
            sim = self.sim_clock.now().astimezone(when.tzinfo)
            text += f" [simulated {sim.isoformat(timespec='seconds')}]"
        return text

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


def setup_logging(
    level: str = "INFO",
    *,
    stream: Any = None,
    tz: tzinfo | None = None,
    sim_clock: Clock | None = None,
) -> None:
    """Log one line per event to stderr: `time level logger: message`, the time local (in
    `tz`, default the host's) with its UTC offset (and `sim_clock`'s time, on one).

    The libraries' own loggers (aiomqtt/paho's `mqtt`, httpx's one line per request) are
    kept at WARNING unless `level` is DEBUG.
    """
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(
        _OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", tz, sim_clock)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("mqtt", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(level if level == "DEBUG" else "WARNING")


@dataclass
class _Suppressed:
    last: float
    count: int = 0


class RateLimitedLog:
    """Log a repeated event at most once per `every_s` seconds, with the count left out.

    `log(key, level, msg, *args)`: the first event of a `key` is logged at once; repeats
    within `every_s` are only counted; the next line logged for that key ends with
    `(N more since the last such line)`. Keys must come from a bounded set (device names,
    error kinds, topics of the layout), not from payloads.
    """

    def __init__(self, logger: logging.Logger, clock: Clock, every_s: float = 60.0) -> None:
        self.logger = logger
        self.every_s = every_s
        self._clock = clock
        self._seen: dict[str, _Suppressed] = {}

    def log(self, key: str, level: int, msg: str, *args: object) -> bool:
        """Log now, or count it for later; True when a line was written."""
        now = self._clock.monotonic()
        seen = self._seen.get(key)
        if seen is not None and now - seen.last < self.every_s:
            seen.count += 1
            return False
        text = msg % args if args else msg
        if seen is not None and seen.count:
            text += f" ({seen.count} more since the last such line)"
        self._seen[key] = _Suppressed(last=now)
        self.logger.log(level, "%s", text)
        return True

    def reset(self, key: str) -> None:
        """Forget `key`, so its next event is logged at once (e.g. after a recovery)."""
        self._seen.pop(key, None)


class Publisher(Protocol):
    """Where a service's messages go: the `Service` below, or a test's recorder."""

    def publish(self, topic: str, payload: Message | Availability) -> None: ...


# --- counters -------------------------------------------------------------------------------


class Counters:
    """Named non-negative int counters (names are lowercase slugs: `polls_failed_timeout`).

    At most MAX_COUNTERS names; increments of further new names go to `counters_overflow`.
    `on_change` (if set) is called after every increment.
    """

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self._values: dict[str, int] = {}
        self.on_change = on_change

    def inc(self, name: str, n: int = 1) -> None:
        if n < 0:
            raise ValueError(f"counter {name!r}: cannot decrease by {n}")
        if name not in self._values:
            if not _COUNTER_NAME.match(name) or len(name) > 200:
                raise ValueError(f"counter name {name!r} is not a lowercase slug")
            if len(self._values) >= MAX_COUNTERS - 1 and name != _OVERFLOW_COUNTER:
                name = _OVERFLOW_COUNTER
        self._values[name] = self._values.get(name, 0) + n
        if self.on_change is not None:
            self.on_change()

    def get(self, name: str) -> int:
        return self._values.get(name, 0)

    def __getitem__(self, name: str) -> int:
        return self.get(name)

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter, sorted by name."""
        return dict(sorted(self._values.items()))


# --- time helpers ---------------------------------------------------------------------------


async def with_timeout(
    clock: Clock, seconds: float, awaitable: Awaitable[T], *, work: bool = False
) -> T:
    """`await awaitable`, or cancel it and raise TimeoutError after `seconds` of `clock` time.

    `work=True`: the time-out bounds work (I/O with a device or the broker, a planner's
    CPU), which accelerated simulated time does not speed up: see `sleep_for_work`.
    """
    task = asyncio.ensure_future(awaitable)
    timer = asyncio.ensure_future(sleep_for_work(clock, seconds) if work else clock.sleep(seconds))
    try:
        await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
    if task.cancelled():
        raise TimeoutError(f"no answer within {seconds:g} s")
    return task.result()


async def _first_of(*awaitables: Awaitable[Any]) -> None:
    """Wait until the first of `awaitables` is done; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await _cancel_all(tasks)


async def _cancel_all(tasks: Sequence[asyncio.Future[Any]]) -> None:
    """Cancel tasks and wait until every one is done.

    Cancelled again while any is pending: on Python 3.11 a `wait_for` inside a library
    (aiomqtt's publish) can swallow one cancellation, and a single cancel-then-wait would
    then hang the stop forever.
    """
    pending = {t for t in tasks if not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)


def package_version() -> str:
    """hwsched's installed version, or `unknown`."""
    try:
        return importlib.metadata.version("hwsched")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# --- the service ----------------------------------------------------------------------------


def clock_for(settings: Settings) -> Clock:
    """The clock the settings ask for: real time, or the stack's shared simulated time."""
    sim = settings.sim_clock
    if sim is None:
        return SystemClock()
    return shared_scaled_clock(sim.speed, sim.start, sim.origin)


@dataclass(frozen=True)
class ServiceOptions:
    """Timings of the runtime (defaults for production; tests shorten them)."""

    #: Status at least this often, s.
    status_interval_s: float = 60.0
    #: ... and at most this often when counters change, s.
    status_min_interval_s: float = 5.0
    #: Reconnect back-off: first delay, doubling up to the maximum, s.
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    #: A connection that lasted this long resets the back-off, s.
    stable_after_s: float = 60.0
    #: Longest wait for one publish acknowledgement (QoS 1), s.
    publish_timeout_s: float = 5.0
    #: MQTT keepalive, s (a dead broker connection is noticed within ~1.5x this).
    keepalive_s: int = 30
    #: Most non-retained messages waiting to be sent.
    max_queued: int = 1000
    #: Most received messages waiting for their handler on one topic, and most bytes of all
    #: that wait: a flood beyond is dropped (counted as `mqtt_incoming_dropped`, logged once
    #: per `log_every_s` per topic), so memory stays bounded whatever a publisher sends, and
    #: a flood on one topic does not crowd out the others.
    max_incoming_per_topic: int = 200
    max_incoming_bytes: int = 32 * 1024 * 1024
    #: Repeated log lines: at most once per this many s per key.
    log_every_s: float = 60.0


class Service:
    """One service's runtime: MQTT connection, publishing, subscriptions, status, stop."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        *,
        clock: Clock | None = None,
        options: ServiceOptions | None = None,
        version: str | None = None,
        handle_signals: bool = False,
    ) -> None:
        self.name = name
        self.settings = settings
        self.clock: Clock = clock if clock is not None else clock_for(settings)
        self.options = options if options is not None else ServiceOptions()
        self.version = version if version is not None else package_version()
        self.topics = Topics(settings.base_topic)
        self.availability_topic = self.topics.availability(name)
        self.status_topic = self.topics.status(name)
        self.client_id = f"{settings.broker.client_id_prefix}-{name}"
        self.log = logging.getLogger(f"hwsched.{name}")
        self.rate_limited = RateLimitedLog(self.log, self.clock, self.options.log_every_s)
        self.counters = Counters(on_change=self._counters_changed)
        self.started_at = self.clock.now()
        self._handle_signals = handle_signals
        self._handlers: list[tuple[str, Handler]] = []
        # outgoing: retained state, latest per topic (payload, qos, sequence number), and a queue
        self._retained: dict[str, tuple[bytes, int, int]] = {}
        self._sent: dict[str, int] = {}
        self._seq = 0
        self._queue: deque[tuple[str, bytes, int]] = deque()
        self._wake_sender = asyncio.Event()
        self._status_due = asyncio.Event()
        self._stop = asyncio.Event()
        self._connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None

    # --- what services call ---------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def wait_connected(self) -> None:
        """Until the service is connected (and has said `online`)."""
        await self._connected.wait()

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        """Deliver messages on `topic_filter` to `handler` (subscribed on every connect)."""
        self._handlers.append((topic_filter, handler))

    def publish(self, topic: str, payload: Message | Availability) -> None:
        """Send `payload` on `topic` with the registry's QoS and retain; never blocks.

        ValueError if `topic` is not in the layout or the payload is not the topic's kind.
        """
        found = self.topics.match(topic)
        if found is None:
            raise ValueError(f"{topic!r} is not a topic of the layout")
        spec, _ = found
        if spec.model is None:
            if not isinstance(payload, str):
                raise ValueError(f"{topic!r} takes online/offline, not {type(payload).__name__}")
            data = dump_availability(payload)
        else:
            if not isinstance(payload, spec.model):
                raise ValueError(f"{topic!r} takes {spec.model.__name__}, not {payload!r:.60}")
            data = dump_message(payload)
        if spec.retained:
            self._seq += 1
            self._retained[topic] = (data, spec.qos, self._seq)
        elif self._client is None:
            self.counters.inc("mqtt_dropped_offline")
            self.rate_limited.log(
                f"offline:{spec.name}",
                logging.WARNING,
                "not connected to the broker: dropped a %s message on %s",
                spec.name,
                topic,
            )
            return
        elif len(self._queue) >= self.options.max_queued:
            self.counters.inc("mqtt_dropped_overflow")
            self.rate_limited.log(
                "overflow", logging.WARNING, "outgoing queue full: dropped a message on %s", topic
            )
            return
        else:
            self._queue.append((topic, data, spec.qos))
        self._wake_sender.set()

    def publish_external(self, topic: str, data: bytes) -> None:
        """Send `data` retained, QoS 1, on a topic outside the layout; never blocks.

        For Home Assistant's discovery configs (`<discovery prefix>/device/<id>/config`),
        which live outside the base topic and so outside the registry; `b""` removes one.
        Kept like retained state: sent again after a reconnect, and every call sends it
        again even when unchanged (a re-announcement). ValueError for a topic of the
        layout (use `publish`) or one with wildcards or empty levels.
        """
        base = self.topics.base
        bad = not topic or topic.startswith("/") or "//" in topic or topic.endswith("/")
        if bad or any(c in "+#\0" for c in topic):
            raise ValueError(f"{topic!r} is not a topic to publish on")
        if topic == base or topic.startswith(base + "/"):
            raise ValueError(f"{topic!r} is under the base topic: use publish")
        self._seq += 1
        self._retained[topic] = (data, 1, self._seq)
        self._wake_sender.set()

    def status(self, state: Availability = AVAILABILITY_ONLINE) -> ServiceStatus:
        """The status message as it would be published now."""
        return ServiceStatus(
            timestamp=self.clock.now(),
            service=self.name,
            state=state,
            version=self.version,
            started_at=self.started_at,
            counters=self.counters.snapshot(),
        )

    def request_stop(self) -> None:
        """Stop gracefully: the app is cancelled, `offline` published, the client disconnects."""
        if not self._stop.is_set():
            self.log.info("stopping")
        self._stop.set()

    async def run(self, app: Callable[[], Awaitable[None]]) -> int:
        """Run `app` and the MQTT connection until the app ends or a stop is requested.

        Returns the exit status: 0, or 1 when the app failed with an exception (logged).
        """
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM) if self._handle_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, self.request_stop)
        connection = asyncio.create_task(self._connection_loop(), name=f"{self.name}-mqtt")
        app_task = asyncio.create_task(_call(app), name=f"{self.name}-app")
        status = 0
        try:
            await _first_of(asyncio.shield(app_task), self._stop.wait(), asyncio.shield(connection))
            if app_task.done() and not app_task.cancelled():
                error = app_task.exception()
                if error is not None:
                    self.log.error("stopped by an error", exc_info=error)
                    status = 1
            else:
                app_task.cancel()
                await asyncio.wait({app_task})
            self._stop.set()
            await asyncio.wait({connection})
            if not connection.cancelled() and connection.exception() is not None:
                self.log.error("MQTT runtime failed", exc_info=connection.exception())
                status = 1
        finally:
            for task in (app_task, connection):
                task.cancel()
            await asyncio.wait({app_task, connection})
            for sig in signals:
                loop.remove_signal_handler(sig)
        self.log.info("stopped")
        return status

    # --- the connection ---------------------------------------------------------------------

    def _make_client(self) -> aiomqtt.Client:
        broker = self.settings.broker
        password = broker.password.get_secret_value() if broker.password is not None else None
        return aiomqtt.Client(
            broker.host,
            broker.port,
            username=broker.username,
            password=password,
            identifier=self.client_id,
            will=aiomqtt.Will(
                self.availability_topic, dump_availability(AVAILABILITY_OFFLINE), qos=1, retain=True
            ),
            keepalive=self.options.keepalive_s,
            timeout=self.options.publish_timeout_s,
            tls_params=aiomqtt.TLSParameters() if broker.tls else None,
            # without Nagle's algorithm: a command sent right after the PUBACK for the surplus
            # that caused it was held back until the broker's delayed ACK (~40 ms)
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
            logger=logging.getLogger("mqtt"),
            queue_type=self._incoming_queue_type(),
        )

    def _incoming_queue_type(self) -> type[asyncio.Queue[aiomqtt.Message]]:
        """aiomqtt's incoming queue, bounded per topic and in bytes: a flood on one topic
        (`max_incoming_per_topic` waiting) is dropped there, counted and logged with the rate
        limit, while the other topics' messages (a command, another override) still get in;
        `max_incoming_bytes` bounds the memory of all that waits."""
        service = self
        per_topic = self.options.max_incoming_per_topic
        max_bytes = self.options.max_incoming_bytes

        class Incoming(asyncio.Queue[aiomqtt.Message]):
            def __init__(self, maxsize: int = 0) -> None:
                super().__init__(maxsize)
                self.waiting: dict[str, int] = {}  # messages waiting per topic
                self.size = 0  # their payloads' bytes

            def put_nowait(self, item: aiomqtt.Message) -> None:
                waiting = self.waiting
                topic = item.topic.value
                n = len(item.payload) if isinstance(item.payload, bytes | bytearray) else 0
                if waiting.get(topic, 0) >= per_topic or self.size + n > max_bytes:
                    service.counters.inc("mqtt_incoming_dropped")
                    service.rate_limited.log(
                        f"mqtt:incoming-full:{topic}",
                        logging.WARNING,
                        "too many received messages on %s waiting: dropping (a flood?)",
                        topic,
                    )
                    return
                waiting[topic] = waiting.get(topic, 0) + 1
                self.size += n
                super().put_nowait(item)

            def _get(self) -> aiomqtt.Message:
                item: aiomqtt.Message = super()._get()
                topic = item.topic.value
                left = self.waiting.get(topic, 1) - 1
                if left > 0:
                    self.waiting[topic] = left
                else:
                    self.waiting.pop(topic, None)
                if isinstance(item.payload, bytes | bytearray):
                    self.size -= len(item.payload)
                return item

        return Incoming

    async def _connection_loop(self) -> None:
        """Connect, serve, and on a lost connection reconnect with back-off, until stopped."""
        broker = f"{self.settings.broker.host}:{self.settings.broker.port}"
        delay = self.options.reconnect_min_s
        while not self._stop.is_set():
            began: float | None = None
            error: Exception
            try:
                async with self._make_client() as client:
                    began = self.clock.monotonic()
                    self.counters.inc("mqtt_connects")
                    self.rate_limited.reset("mqtt")
                    self.log.info("connected to the broker %s as %s", broker, self.client_id)
                    await self._serve(client)
                return  # stopped and said goodbye
            except aiomqtt.MqttError as err:
                error = err
                what = "lost the broker connection" if began is not None else "cannot connect to"
                self.counters.inc(
                    "mqtt_connection_lost" if began is not None else "mqtt_connect_failed"
                )
            except Exception as err:  # a bug or an unexpected library error: log, retry
                error = err
                what = "MQTT connection failed unexpectedly at"
                self.counters.inc("mqtt_errors")
                self.log.error("MQTT runtime error", exc_info=err)
            finally:
                self._client = None
                self._connected.clear()
                self._drop_queued()
            if self._stop.is_set():
                return
            if began is not None and self.clock.monotonic() - began >= self.options.stable_after_s:
                delay = self.options.reconnect_min_s
            self.rate_limited.log(
                "mqtt", logging.WARNING, "%s %s: %s; retrying in %g s", what, broker, error, delay
            )
            await _first_of(self.clock.sleep(delay), self._stop.wait())
            delay = min(delay * 2, self.options.reconnect_max_s)

    def _drop_queued(self) -> None:
        """Disconnected: queued commands and events are dropped (never sent stale later)."""
        if self._queue:
            self.counters.inc("mqtt_dropped_offline", len(self._queue))
            self._queue.clear()

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Connected: say online, subscribe, then send, read and report until stopped or lost."""
        qos = 1
        await client.publish(
            self.availability_topic, dump_availability(AVAILABILITY_ONLINE), qos=qos, retain=True
        )
        for topic_filter, _ in self._handlers:
            await client.subscribe(topic_filter, qos=qos)
        self._sent.clear()  # everything retained is sent again: the broker may have lost it
        self._client = client
        self._connected.set()
        self._status_due.set()
        self._wake_sender.set()
        tasks = [
            asyncio.create_task(self._sender(client)),
            asyncio.create_task(self._reader(client)),
            asyncio.create_task(self._status_loop()),
            asyncio.create_task(self._stop.wait()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _cancel_all(list(tasks))
        for t in done:
            error = None if t.cancelled() else t.exception()
            if error is not None:
                raise error  # MqttError: the connection is lost, reconnect
        await self._goodbye(client)

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        """Stopping: send what is waiting, the final status and `offline` (bounded in time)."""
        self._client = None
        timeout = self.options.publish_timeout_s
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            await with_timeout(self.clock, timeout, self._send_pending(client), work=True)
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(
                self.status_topic,
                dump_message(self.status(AVAILABILITY_OFFLINE)),
                qos=1,
                retain=True,
                timeout=timeout,
            )
            await client.publish(
                self.availability_topic,
                dump_availability(AVAILABILITY_OFFLINE),
                qos=1,
                retain=True,
                timeout=timeout,
            )

    async def _sender(self, client: aiomqtt.Client) -> None:
        while True:
            await self._wake_sender.wait()
            self._wake_sender.clear()
            await self._send_pending(client)

    async def _send_pending(self, client: aiomqtt.Client) -> None:
        """Send queued messages, then retained state not yet sent (one at a time, in order)."""
        while True:
            if self._queue:
                topic, data, qos = self._queue[0]
                await self._publish_now(client, topic, data, qos, retain=False)
                self._queue.popleft()
                continue
            dirty = next((t for t, e in self._retained.items() if self._sent.get(t) != e[2]), None)
            if dirty is None:
                return
            data, qos, seq = self._retained[dirty]
            await self._publish_now(client, dirty, data, qos, retain=True)
            self._sent[dirty] = seq

    async def _publish_now(
        self, client: aiomqtt.Client, topic: str, data: bytes, qos: int, *, retain: bool
    ) -> None:
        try:
            await client.publish(
                topic, data, qos=qos, retain=retain, timeout=self.options.publish_timeout_s
            )
        except aiomqtt.MqttError:
            self.counters.inc("mqtt_publish_failed")
            raise

    async def _reader(self, client: aiomqtt.Client) -> None:
        """Dispatch incoming messages; raises MqttError when the connection drops."""
        async for message in client.messages:
            payload = message.payload
            data = bytes(payload) if isinstance(payload, bytes | bytearray) else b""
            topic = message.topic.value
            for topic_filter, handler in self._handlers:
                if message.topic.matches(topic_filter):
                    await self._handle(handler, topic, data)

    async def _handle(self, handler: Handler, topic: str, data: bytes) -> None:
        try:
            await handler(topic, data)
        except MessageError as err:
            self.counters.inc("messages_dropped")
            self.rate_limited.log(
                f"drop:{topic}", logging.WARNING, "dropped a message on %s: %s", topic, err
            )
        except Exception as err:
            self.counters.inc("handler_errors")
            if self.rate_limited.log(
                f"handler:{topic}", logging.ERROR, "handling a message on %s failed: %r", topic, err
            ):
                self.log.debug("handler failure on %s", topic, exc_info=err)

    def _counters_changed(self) -> None:
        self._status_due.set()

    async def _status_loop(self) -> None:
        """The status now, then after every change (at most once per min interval) or period."""
        opts = self.options
        while True:
            self._status_due.clear()
            self.publish(self.status_topic, self.status())
            await self.clock.sleep(opts.status_min_interval_s)
            rest = max(0.0, opts.status_interval_s - opts.status_min_interval_s)
            await _first_of(self._status_due.wait(), self.clock.sleep(rest))


async def _call(app: Callable[[], Awaitable[None]]) -> None:
    await app()


# --- entry point ----------------------------------------------------------------------------


def run_service(
    name: str,
    app: AppFactory,
    *,
    settings_file: Path | None = None,
    options: ServiceOptions | None = None,
) -> int:
    """Load configuration, set up logging and run service `name` until stopped; exit status.

    A ConfigError is one line on stderr and status 2 (nothing is started).
    """
    try:
        settings, devices = load_configuration(settings_file)
    except ConfigError as err:
        print(f"hwsched {name}: {err}", file=sys.stderr)
        return EXIT_CONFIG
    sim_clock = clock_for(settings) if settings.sim_clock is not None else None
    setup_logging(settings.log_level, tz=settings.tz, sim_clock=sim_clock)

    async def main() -> int:
        service = Service(name, settings, options=options, handle_signals=True)
        service.log.info(
            "starting %s %s (broker %s:%s, base topic %s)",
            name,
            service.version,
            settings.broker.host,
            settings.broker.port,
            settings.base_topic,
        )
        return await service.run(lambda: app(service, devices))

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:  # before the signal handlers were in place
        return 130
