"""The bridge: Home Assistant MQTT discovery, and each socket's next planned on-time.

* **Discovery.** At start it publishes one retained device-based discovery config per device
  (`shared.homeassistant`: the hwsched hub, each socket, each battery) on
  `<discovery prefix>/device/<id>/config`. The runtime keeps them as retained state, so they
  are sent again after a reconnect (a broker that lost them gets them back). When Home
  Assistant announces itself (its birth message `online` on `<discovery prefix>/status`, and on
  `homeassistant/status`, HA's default birth topic, when the prefix differs) they
  are sent again after a random 1–5 s, so a restarted Home Assistant finds them and many
  publishers do not answer at once.
* **Removal.** It subscribes to `<discovery prefix>/device/+/config`: a retained config of
  this installation (same origin, an id `<node>_…`, availability under this base topic) whose
  device is no longer in the devices file (a socket removed) gets an empty retained payload;
  Home Assistant then removes that device and its entities. The broker is the memory: nothing
  is stored besides what is already retained there.
* **Next on-time.** It reads the plan (`<base>/plan`) and publishes, retained, on
  `<base>/<socket>/next_on` when each configured socket is next planned on
  (`shared.homeassistant.next_on`), again at every step boundary of the plan; a socket's
  message is only re-sent when something but its timestamp changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.config import DevicesConfig
from shared.homeassistant import (
    BRIDGE_SERVICE,
    DiscoveryConfig,
    discovery_configs,
    is_stale_config,
    next_boundary,
    next_on,
)
from shared.messages import MessageError, PlanMessage, parse_message
from shared.service import Service, run_service

__all__ = ["SERVICE_NAME", "Bridge", "BridgeOptions", "app", "main", "project_url"]

SERVICE_NAME = BRIDGE_SERVICE
#: Home Assistant's default birth-message topic (its own setting, apart from the prefix).
HA_DEFAULT_STATUS = "homeassistant/status"


@dataclass(frozen=True)
class BridgeOptions:
    """Timings of the bridge."""

    #: After Home Assistant's `online`, discovery is re-sent after a random delay in this range, s.
    announce_delay_min_s: float = 1.0
    announce_delay_max_s: float = 5.0
    #: A plan made more than this far in the future (clock skew) is refused, s.
    max_future_s: float = 120.0

    def __post_init__(self) -> None:
        if not 0 <= self.announce_delay_min_s <= self.announce_delay_max_s:
            raise ValueError("announce delays: need 0 <= min <= max")


def project_url() -> str | None:
    """hwsched's home page from its package metadata (`[project.urls]`), if it declares one."""
    try:
        meta = importlib.metadata.metadata("hwsched")
    except importlib.metadata.PackageNotFoundError:
        return None
    entries: list[str] = list(meta.get_all("Project-URL") or [])
    urls = [entry.partition(",")[2].strip() for entry in entries]
    home = meta.get_all("Home-page") or []
    return next((u for u in [*urls, *map(str, home)] if u.startswith("https://")), None)


class Bridge:
    """Publishes discovery, removes stale configs, keeps the next-on topics current."""

    def __init__(
        self,
        devices: DevicesConfig,
        service: Service,
        *,
        options: BridgeOptions | None = None,
        rng: random.Random | None = None,
        support_url: str | None = None,
    ) -> None:
        self.devices = devices
        self.service = service
        self.settings = service.settings
        self.topics = service.topics
        self.clock = service.clock
        self.options = options if options is not None else BridgeOptions()
        self.log = service.log
        self._rng = rng if rng is not None else random.Random()
        self.configs: list[DiscoveryConfig] = discovery_configs(
            self.settings, devices, version=service.version, support_url=support_url
        )
        self.device_ids = frozenset(c.device_id for c in self.configs)
        prefix = self.settings.ha_discovery_prefix
        #: Home Assistant's birth topics: under the prefix, and HA's default one.
        self.ha_status_topics = tuple(dict.fromkeys((f"{prefix}/status", HA_DEFAULT_STATUS)))
        self.configs_filter = f"{prefix}/device/+/config"
        self.plan: PlanMessage | None = None
        self._plan_changed = asyncio.Event()
        self._announce = asyncio.Event()
        self._published: dict[str, dict[str, Any]] = {}

    # --- discovery ----------------------------------------------------------------------------

    def publish_discovery(self) -> None:
        """Every device's config, retained (sent again even when unchanged)."""
        for config in self.configs:
            self.service.publish_external(config.topic, config.data())
        self.service.counters.inc("discovery_published")

    async def _on_ha_status(self, topic: str, payload: bytes) -> None:
        """Home Assistant's birth (`online`) or last will (`offline`); anything else is a
        `MessageError` (a counted, logged drop)."""
        word = payload.strip()
        if word == b"online":
            self.log.info("Home Assistant is online: discovery follows shortly")
            self._announce.set()
        elif word != b"offline":
            raise MessageError(
                f"(payload): Home Assistant's status is online or offline, not {word[:40]!r}"
            )

    async def _on_config(self, topic: str, payload: bytes) -> None:
        """Any retained config under the prefix: most are other integrations' (not drops)."""
        try:
            stale = is_stale_config(self.settings, topic, payload, self.device_ids)
        except RecursionError:  # JSON nested a thousand deep: never one of ours
            return
        if stale:
            self.log.info(
                "removing the discovery config of a device no longer configured: %s", topic
            )
            self.service.publish_external(topic, b"")
            self.service.counters.inc("discovery_removed")

    async def _announcer(self) -> None:
        opts = self.options
        while True:
            await self._announce.wait()
            delay = self._rng.uniform(opts.announce_delay_min_s, opts.announce_delay_max_s)
            await self.clock.sleep(delay)
            self._announce.clear()  # announcements during the delay are answered by this one
            self.publish_discovery()

    # --- next planned on-time -----------------------------------------------------------------

    async def _on_plan(self, topic: str, payload: bytes) -> None:
        plan = parse_message(PlanMessage, payload)
        ahead = (plan.made_at - self.clock.now()).total_seconds()
        if ahead > self.options.max_future_s:  # it would be newer than every real plan
            raise MessageError(f"made_at: {ahead:.0f} s in the future", "made_at")
        if self.plan is not None and plan.made_at < self.plan.made_at:
            self.service.counters.inc("plans_older_ignored")
            return
        self.plan = plan
        self._plan_changed.set()

    def refresh_next_on(self, now: datetime) -> int:
        """Publish each socket's next-on reading that changed; how many were published."""
        if self.plan is None:
            return 0
        sent = 0
        for socket in self.devices.sockets:
            message = next_on(self.plan, socket.device_name, now)
            content = message.model_dump(exclude={"timestamp"})
            if self._published.get(socket.slug) == content:
                continue
            self.service.publish(self.topics.next_on(socket.slug), message)
            self._published[socket.slug] = content
            sent += 1
        if sent:
            self.service.counters.inc("next_on_published", sent)
        return sent

    async def _next_on_loop(self) -> None:
        while True:
            self._plan_changed.clear()
            now = self.clock.now()
            self.refresh_next_on(now)
            wake = next_boundary(self.plan, now) if self.plan is not None else None
            waiters: list[asyncio.Task[Any]] = [asyncio.create_task(self._plan_changed.wait())]
            if wake is not None:
                waiters.append(asyncio.create_task(self.clock.sleep_until(wake)))
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waiters:
                    task.cancel()
                for task in waiters:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    # --- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Subscribe, publish the discovery, then serve until cancelled."""
        for status_topic in self.ha_status_topics:
            self.service.subscribe(status_topic, self._on_ha_status)
        self.service.subscribe(self.configs_filter, self._on_config)
        self.service.subscribe(self.topics.plan(), self._on_plan)
        self.publish_discovery()
        self.log.info(
            "discovery for %d devices on %s/device/…; next on-time for %d sockets",
            len(self.configs),
            self.settings.ha_discovery_prefix,
            len(self.devices.sockets),
        )
        async with asyncio.TaskGroup() as group:
            group.create_task(self._announcer(), name="bridge-announce")
            group.create_task(self._next_on_loop(), name="bridge-next-on")


async def app(service: Service, devices: DevicesConfig) -> None:
    """The bridge's work inside the service runtime."""
    await Bridge(devices, service, support_url=project_url()).run()


def main() -> int:
    """`python -m services.bridge`: settings from config/settings.toml and HWSCHED_* variables."""
    return run_service(SERVICE_NAME, app)
