"""`hwsched status`: the live state as text for a terminal (the formatting is pure).

`format_status(state, now)` turns a `LiveState` (what the broker holds) into a few lines and
two tables: each socket (who controls it, on/off, stored Wh of its capacity, the next
planned switch, a switch held back, an override), the surplus, the forecast's energy left
today, the battery, and each service's health. `gather` (I/O) fills the state from the
broker and prints it once, or again every few seconds with `--watch`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TextIO
from zoneinfo import ZoneInfo

from services.dashboard.state import (
    CAUSES,
    LiveState,
    SocketRow,
    clock_time,
    forecast_left_wh,
    service_rows,
    socket_rows,
)
from shared.messages import MessageError

__all__ = ["CLEAR", "client_id", "format_status", "format_table", "gather"]

#: Clears a terminal and puts the cursor home (for --watch on a terminal).
CLEAR = "\x1b[H\x1b[2J"


def _t(when: datetime | None, tz: ZoneInfo, now: datetime) -> str:
    return clock_time(when, tz, now, none="-")


def _w(watts: float | None) -> str:
    if watts is None:
        return "-"
    return f"{watts / 1000:.2f} kW" if abs(watts) >= 1000 else f"{watts:.0f} W"


def _wh(wh: float | None) -> str:
    if wh is None:
        return "-"
    return f"{wh / 1000:.2f} kWh" if abs(wh) >= 1000 else f"{wh:.0f} Wh"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = []
    for row in [header, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return lines


def _stored(row: SocketRow) -> str:
    stored = row.stored_wh
    if row.capacity_wh is None:
        return "-" if stored is None else f"{stored:.0f} Wh"
    if stored is None:
        return f"- / {row.capacity_wh:.0f} Wh"
    text = f"{stored:.0f} / {row.capacity_wh:.0f} Wh"
    if row.full:
        return text + " (full)"
    if row.fill is not None:
        return text + f" ({row.fill * 100:.0f} %)"
    return text


def _next(row: SocketRow, tz: ZoneInfo, now: datetime) -> str:
    parts = []
    if not row.in_plan:
        parts.append("not in the plan")
    elif row.next_switch is None:
        parts.append("none planned")
    else:
        to, when = row.next_switch
        parts.append(f"{to} at {_t(when, tz, now)}")
    if row.held is not None:
        parts.append(f"{row.held[0]} held until {_t(row.held[1], tz, now)}")
    if row.override is not None:
        state, until, source = row.override
        by = " by hand" if source == "manual-switch" else ""
        parts.append(f"override {state}{by} until {_t(until, tz, now)}")
    return "; ".join(parts)


def format_status(state: LiveState, now: datetime, *, dropped: int = 0) -> str:
    """The status screen (ends with a newline)."""
    tz = state.tz
    lines = []
    plan = state.plan
    head = f"hwsched at {_t(now, tz, now)}, day {_t(state.day_start, tz, now)}"
    head += f" - {_t(state.day_end, tz, now)}"
    if plan is not None:
        head += f"; plan by {plan.planner} ({plan.status}), made {_t(plan.made_at, tz, now)}"
        if plan.fallback_reason:
            head += f": {plan.fallback_reason}"
    else:
        head += "; no plan yet"
    lines.append(head)
    surplus = state.surplus
    left = forecast_left_wh(state.forecast, now, state.day_end)
    facts = [
        f"surplus {_w(surplus.surplus_w) if surplus is not None else '-'}",
        f"forecast left today {'-' if left is None else _wh(left)}",
    ]
    if state.forecast is not None and state.forecast.fallback:
        facts[-1] += f" ({state.forecast.source}, fallback)"
    soc = state.battery_soc_pct()
    if soc is not None:
        mode = state.batteries.mode if state.batteries is not None else None
        facts.append(f"battery {soc:.0f} %" + (f" ({mode})" if mode else ""))
    imp, exp, since = state.grid_today_kwh()
    # the day's figures only: a baseline this command took itself just now says nothing
    if since == state.day_start and (imp is not None or exp is not None):
        facts.append(f"grid today: import {imp or 0:.2f} kWh, export {exp or 0:.2f} kWh")
    cost = state.cost
    if cost is not None and cost.day_start == state.day_start and cost.cost_today_eur is not None:
        money = f"cost today EUR {cost.cost_today_eur:.2f}"
        if cost.savings_eur is not None:
            money += f", plan saves EUR {cost.savings_eur:.2f}"
        facts.append(money)
    lines.append("   ".join(facts))
    if surplus is not None and surplus.missing:
        lines.append(f"not read: {', '.join(surplus.missing)}")
    lines.append("")
    rows = socket_rows(state, now)
    if rows:
        table = [
            [
                r.name,
                CAUSES.get(r.controlled_by, r.controlled_by),
                "?" if r.power_on is None else ("ON" if r.power_on else "off"),
                _stored(r),
                _next(r, tz, now),
            ]
            for r in rows
        ]
        lines += format_table(["socket", "controller", "state", "stored", "next switch"], table)
    else:
        lines.append("no sockets heard of yet")
    lines.append("")
    services = service_rows(state, now)
    if services:
        table = []
        for s in services:
            problems = ", ".join(f"{k} {v}" for k, v in sorted(s.problems.items())[:3])
            up = _t(s.started_at, tz, now) if s.health == "online" else _t(s.status_at, tz, now)
            table.append([s.name, s.health, s.version or "-", up, problems])
        lines += format_table(["service", "health", "version", "since", "problems"], table)
    else:
        lines.append("no service heard of yet")
    if dropped:
        lines.append("")
        lines.append(f"({dropped} message(s) on the broker not understood)")
    return "\n".join(lines) + "\n"


async def gather(
    client_factory: Callable[[], contextlib.AbstractAsyncContextManager[object]],
    state: LiveState,
    now: Callable[[], datetime],
    out: TextIO,
    *,
    watch_s: float | None = None,
    quiet_s: float = 0.5,
    settle_max_s: float = 3.0,
) -> None:
    """Subscribe to everything, let the retained state arrive (until `quiet_s` without a new
    message, at most `settle_max_s`), print; with `watch_s`, print again that often until
    cancelled. `client_factory()` gives a connected aiomqtt client (an async context)."""
    import aiomqtt

    dropped = 0
    last_message = asyncio.get_running_loop().time()

    async def read(client: aiomqtt.Client) -> None:
        nonlocal dropped, last_message
        async for message in client.messages:
            payload = message.payload
            data = bytes(payload) if isinstance(payload, bytes | bytearray) else b""
            try:
                state.ingest(message.topic.value, data, now())
            except MessageError:
                dropped += 1
            last_message = asyncio.get_running_loop().time()

    async with client_factory() as connected:
        client = connected
        assert isinstance(client, aiomqtt.Client)
        await client.subscribe(f"{state.topics.base}/#", qos=1)
        last_message = asyncio.get_running_loop().time()
        reader = asyncio.create_task(read(client))
        try:
            loop = asyncio.get_running_loop()
            began = loop.time()
            while loop.time() - began < settle_max_s and loop.time() - last_message < quiet_s:
                await asyncio.sleep(0.05)
                if reader.done():
                    reader.result()
            while True:
                screen = format_status(state, now(), dropped=dropped)
                if watch_s is None:
                    out.write(screen)
                    out.flush()
                    return
                out.write((CLEAR if out.isatty() else "\n") + screen)
                out.flush()
                await asyncio.sleep(watch_s)
                if reader.done():
                    reader.result()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await reader


def client_id(prefix: str) -> str:
    """A client id of its own (two `hwsched status` never push each other off the broker)."""
    return f"{prefix}-status-{secrets.token_hex(4)}"
