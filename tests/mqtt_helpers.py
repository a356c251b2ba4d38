"""What a fresh subscriber sees retained on the test broker (shared by the service tests)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import aiomqtt

from tests.conftest import MqttBroker


async def retained_once(
    broker: MqttBroker, topic_filter: str, settle_s: float = 0.5
) -> dict[str, bytes]:
    """What a new subscriber gets as retained on `topic_filter` (topic → payload)."""
    got: dict[str, bytes] = {}
    async with aiomqtt.Client(
        broker.host, broker.port, identifier=f"r-{uuid.uuid4().hex[:8]}"
    ) as c:
        await c.subscribe(topic_filter, qos=1)
        try:
            async with asyncio.timeout(settle_s):
                async for m in c.messages:
                    if m.retain and isinstance(m.payload, bytes):
                        got[m.topic.value] = m.payload
        except TimeoutError:
            pass
    return got


async def retained_until(
    broker: MqttBroker,
    base: str,
    until: Callable[[dict[str, bytes]], bool],
    within_s: float = 20.0,
    settle_s: float = 0.3,
) -> dict[str, bytes]:
    """Retained messages under `base`, as a fresh subscriber sees them, once `until` holds.

    Subscribes again until `until(messages)` holds (the latest retained payload per topic).
    """
    deadline = time.monotonic() + within_s
    got: dict[str, bytes] = {}
    while time.monotonic() < deadline:
        got = await retained_once(broker, f"{base}/#", settle_s)
        if until(got):
            return got
    raise AssertionError(f"not seen in {within_s} s; retained: {sorted(got)}")
