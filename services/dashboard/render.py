"""The page's sections as HTML fragments (pure: state and time in, escaped markup out).

The page (static/index.html) has one element per section (`id="sec-<name>"`); the server
renders each section here and sends the ones that changed over server-sent events; the
browser only swaps them in. Every value from a message or the configuration is escaped;
nothing secret is ever part of a section (no password, token or broker credential is in
the state they are made from).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from html import escape
from zoneinfo import ZoneInfo

from services.dashboard.state import (
    CAUSES,
    LiveState,
    ServiceRow,
    SocketRow,
    clock_time,
    forecast_left_wh,
    service_rows,
    socket_rows,
)
from services.dashboard.timeline import render_timeline

__all__ = ["SECTIONS", "render_sections"]

#: Each socket's buttons: the action sent, the label.
BUTTONS = (("on_1h", "On for 1 h"), ("off", "Off"), ("auto", "Back to plan"))
#: The sections, in page order.
SECTIONS = ("summary", "timeline", "sockets", "battery", "money", "services")


def _t(when: datetime | None, tz: ZoneInfo, now: datetime | None = None) -> str:
    """Local time HH:MM, with the day when it is not today's date."""
    return clock_time(when, tz, now)


def _w(watts: float | None) -> str:
    if watts is None:
        return "—"
    if abs(watts) >= 1000:
        return f"{watts / 1000:.2f} kW"
    return f"{watts:.0f} W"


def _wh(wh: float | None) -> str:
    if wh is None:
        return "—"
    if abs(wh) >= 1000:
        return f"{wh / 1000:.2f} kWh"
    return f"{wh:.0f} Wh"


def _eur(value: float | None) -> str:
    if value is None:
        return "—"
    sign = "−" if value < 0 else ""
    return f"{sign}€ {abs(value):.2f}"


def _ct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} ct/kWh"


def _dl(items: list[tuple[str, str]]) -> str:
    return "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in items)


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def summary(state: LiveState, now: datetime, connected: bool) -> str:
    tz = state.tz
    surplus = state.surplus
    left = forecast_left_wh(state.forecast, now, state.day_end)
    plan = state.plan
    items = [
        ("Now", _t(now, tz)),
        ("Day", f"{_t(state.day_start, tz)} – {_t(state.day_end, tz, now)}"),
        ("Surplus", _w(surplus.surplus_w) if surplus is not None else "—"),
        ("Forecast left today", _wh(left)),
    ]
    if surplus is not None and surplus.missing:
        items.append(("Not read", ", ".join(surplus.missing)))
    if plan is not None:
        what = f"{plan.planner}, {plan.status}"
        if plan.tier is not None:
            what += f", {plan.tier} tier"
        items.append(("Plan", f"{what}, made {_t(plan.made_at, tz, now)}"))
        if plan.fallback_reason:
            items.append(("Why no forecast plan", plan.fallback_reason))
    else:
        items.append(("Plan", "none yet"))
    f = state.forecast
    if f is not None and f.fallback:
        items.append(("Forecast", f"fallback ({f.source})"))
    broker = (
        '<span class="badge ok">live</span>'
        if connected
        else '<span class="badge bad">no broker connection</span>'
    )
    facts = "".join(
        f'<div class="fact"><dt>{escape(k)}</dt><dd>{escape(v)}</dd></div>' for k, v in items
    )
    return f'<dl class="summary-facts"><div class="fact">{broker}</div>{facts}</dl>'


def _switch_text(row: SocketRow, tz: ZoneInfo, now: datetime) -> str:
    if not row.in_plan:
        return "not in the plan (" + CAUSES.get(row.controlled_by, row.controlled_by) + ")"
    if row.next_switch is None:
        return "no change planned"
    to, when = row.next_switch
    return f"{to} at {_t(when, tz, now)}"


def _socket_card(row: SocketRow, tz: ZoneInfo, now: datetime) -> str:
    if row.power_on is None:
        state = '<span class="badge unknown">?</span>'
    elif row.power_on:
        state = '<span class="badge on">on</span>'
    else:
        state = '<span class="badge off">off</span>'
    who = CAUSES.get(row.controlled_by, row.controlled_by)
    items = [
        ("Controlled by", who),
        ("Power", _w(row.power_w)),
        ("Next planned switch", _switch_text(row, tz, now)),
    ]
    if row.held is not None:
        to, until = row.held
        items.append(
            ("Held back", f"switch {to} waits until {_t(until, tz, now)} (switch interval)")
        )
    if row.override is not None:
        st, until, source = row.override
        by = "by hand" if source == "manual-switch" else "override"
        items.append(("Override", f"{st} until {_t(until, tz, now)} ({by})"))
    if row.last_switch_at is not None:
        why = f" ({row.last_switch_reason})" if row.last_switch_reason else ""
        items.append(("Last switch", f"{_t(row.last_switch_at, tz, now)}{why}"))
    fill = ""
    if row.capacity_wh:
        stored = row.stored_wh or 0.0
        label = "full" if row.full else f"{_wh(row.stored_wh)} of {_wh(row.capacity_wh)}"
        fill = (
            f'<div class="fill"><meter min="0" max="{row.capacity_wh:g}" '
            f'value="{min(stored, row.capacity_wh):g}"></meter> <span>{escape(label)}</span></div>'
        )
    elif row.stored_wh is not None:
        fill = f'<div class="fill"><span>{escape(_wh(row.stored_wh))} stored</span></div>'
    need = ""
    if row.daily_need is not None:
        need = (
            '<span class="tag">needed</span>'
            if row.daily_need
            else '<span class="tag">optional</span>'
        )
    slug = escape(row.slug)
    name = escape(row.name)
    buttons = "".join(
        f'<button type="button" data-action="{action}" data-socket="{slug}" disabled>'
        f"{label}</button>"
        for action, label in BUTTONS
    )
    buttons = f'<div class="controls" data-socket="{slug}">{buttons}</div>'
    return (
        f'<article class="socket" id="socket-{slug}" data-socket="{slug}" '
        f'data-controlled-by="{escape(row.controlled_by)}" '
        f'data-power-on="{"" if row.power_on is None else str(row.power_on).lower()}">'
        f"<h3>{name} {state} {need}</h3>{fill}"
        f'<dl class="facts">{_dl(items)}</dl>{buttons}</article>'
    )


def sockets(state: LiveState, now: datetime) -> str:
    rows = socket_rows(state, now)
    if not rows:
        return '<p class="empty">No sockets heard of yet.</p>'
    return "".join(_socket_card(r, state.tz, now) for r in rows)


def battery(state: LiveState, now: datetime) -> str:
    tz = state.tz
    soc = state.battery_soc_pct()
    b = state.batteries
    plan = state.plan
    mode_now = None
    if plan is not None and plan.battery_mode:
        step = plan.step_at(now)
        if step is not None:
            mode_now = plan.battery_mode[step]
    if soc is None and b is None and mode_now is None and not state.battery_capacity_wh:
        return '<p class="empty">No battery.</p>'
    items = [("State of charge", "—" if soc is None else f"{soc:.0f} %")]
    power = [m.power_w for m in state.measurements.values() if m.device_type == "HWE-BAT"]
    if power:
        total = sum(power)
        items.append(("Power", ("charging " if total >= 0 else "discharging ") + _w(abs(total))))
    items.append(("Planned mode now", (mode_now or "zero").replace("_", " ")))
    if b is not None:
        items.append(("Mode in force", (b.mode or "unknown").replace("_", " ")))
        items.append(("Controlled by", b.controlled_by))
        if b.held_until is not None and b.held_until > now and b.desired is not None:
            items.append(
                (
                    "Held back",
                    f"{b.desired.replace('_', ' ')} waits until {_t(b.held_until, tz, now)}",
                )
            )
    return f'<dl class="facts">{_dl(items)}</dl>'


def money(state: LiveState, now: datetime) -> str:
    tz = state.tz
    imp, exp, since = state.grid_today_kwh()
    items = []
    # from the boundary's first reading (a poll interval late) is the whole day
    whole_day = since is None or since - state.day_start <= timedelta(minutes=5)
    label = "today" if whole_day else f"since {_t(since, tz)}"
    items.append((f"Import {label}", "—" if imp is None else f"{imp:.2f} kWh"))
    items.append((f"Export {label}", "—" if exp is None else f"{exp:.2f} kWh"))
    c = state.cost
    if c is not None and c.day_start == state.day_start:
        items.append(
            ("Price now", f"import {_ct(c.import_now_eur_kwh)}, export {_ct(c.export_now_eur_kwh)}")
        )
        if c.prices_source:
            src = c.prices_source + (" (fallback)" if c.prices_fallback else "")
            items.append(("Prices from", src))
        items.append(("Cost today", _eur(c.cost_today_eur)))
        items.append(("Plan, rest of the day", _eur(c.plan_cost_eur)))
        items.append(("Original's plan", _eur(c.reference_cost_eur)))
        items.append(("Savings", _eur(c.savings_eur)))
    elif state.plan is not None and state.plan.expected_import_wh is not None:
        plan = state.plan
        items.append(("Plan: import to come", _wh(plan.expected_import_wh)))
        if plan.reference_import_wh is not None:
            items.append(("Original's plan", _wh(plan.reference_import_wh)))
    return f'<dl class="facts">{_dl(items)}</dl>'


def _service_row(row: ServiceRow, tz: ZoneInfo, now: datetime) -> str:
    up = ""
    if row.started_at is not None and row.health == "online":
        up = _t(row.started_at, tz, now)
    elif row.status_at is not None:
        up = f"last status {_ago((now - row.status_at).total_seconds())}"
    problems = ", ".join(f"{k} {v}" for k, v in sorted(row.problems.items())[:4])
    return (
        f'<tr data-service="{escape(row.name)}"><td>{escape(row.name)}</td>'
        f'<td><span class="badge {escape(row.health)}">{escape(row.health)}</span></td>'
        f"<td>{escape(row.version or '—')}</td><td>{escape(up)}</td>"
        f"<td>{escape(problems)}</td></tr>"
    )


def services(state: LiveState, now: datetime) -> str:
    rows = service_rows(state, now)
    if not rows:
        return '<p class="empty">No service heard of yet.</p>'
    body = "".join(_service_row(r, state.tz, now) for r in rows)
    return (
        '<table class="services"><thead><tr><th>service</th><th>health</th><th>version</th>'
        f"<th>since</th><th>problems</th></tr></thead><tbody>{body}</tbody></table>"
    )


def render_sections(state: LiveState, now: datetime, *, connected: bool) -> dict[str, str]:
    """Every section's markup."""
    makers: dict[str, Callable[[], str]] = {
        "summary": lambda: summary(state, now, connected),
        "timeline": lambda: render_timeline(state, now),
        "sockets": lambda: sockets(state, now),
        "battery": lambda: battery(state, now),
        "money": lambda: money(state, now),
        "services": lambda: services(state, now),
    }
    return {name: makers[name]() for name in SECTIONS}
