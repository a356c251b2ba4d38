"""Today's timeline as SVG, rendered on the server (pure: state and time in, markup out).

From the daily boundary to the next, on one time axis (local time):

* **surplus**: the solar forecast, the surplus the plan was made for, and the measured
  surplus (the dashboard's own history, averaged per `history_step_s`);
* **prices** (only when there are any): import and export per step, ct/kWh;
* **one row per socket**: planned on-times (the current plan; before it, the plans it
  replaced) above, actual on-times below, coloured by why (plan, override, by hand,
  fallback); the store's fill under its name;
* **battery** (when there is one): measured and planned state of charge, planned mode;
* a line at now.

Why SVG on the server and no chart library: nothing to vendor or keep up to date, no
JavaScript to run on a phone (the browser only swaps the markup in), the Pi renders a day in
a few milliseconds, and the picture is tested here like any other pure function. Every
text is escaped. Colours come from the page's stylesheet (classes, no inline styles: the
page's Content-Security-Policy allows none).

The current plan's blocks carry `data-socket`, `data-start` and `data-end`, the `<svg>` its
`data-plan-made-at`, so a test (or a curious person) can compare the page with the broker.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape
from zoneinfo import ZoneInfo

from services.dashboard.state import CAUSES, LiveState, Series, Span, on_blocks, socket_rows

__all__ = ["WIDTH", "render_timeline"]

WIDTH = 1000
LEFT = 132
RIGHT = 12
INNER = WIDTH - LEFT - RIGHT
TOP = 22
SURPLUS_H = 130
PRICES_H = 56
ROW_H = 30
BATTERY_H = 64
GAP = 14
LEGEND_H = 22


#: The measured history is drawn with at most this many points (about one per 2 px).
MAX_POINTS = 480


class _Axis:
    def __init__(self, start: datetime, end: datetime) -> None:
        self.start = start
        self.end = end
        self.seconds = max(1.0, (end - start).total_seconds())
        self._t0 = start.timestamp()

    def x(self, when: datetime) -> float:
        return self.x_at(when.timestamp() - self._t0)

    def x_at(self, offset_s: float) -> float:
        """x of a time given in seconds from the day's start."""
        frac = offset_s / self.seconds
        return LEFT + (0.0 if frac < 0 else 1.0 if frac > 1 else frac) * INNER

    def clip(self, a: datetime, b: datetime) -> tuple[datetime, datetime] | None:
        """(a, b) within the day, or None when it lies outside."""
        if b <= self.start or a >= self.end:
            return None
        return max(a, self.start), min(b, self.end)


@dataclass(frozen=True)
class _Scale:
    """Value → y within a panel of `height` from `top`."""

    top: float
    height: float
    lo: float
    hi: float

    def __call__(self, value: float) -> float:
        span = (self.hi - self.lo) or 1.0
        frac = min(1.0, max(0.0, (value - self.lo) / span))
        return self.top + self.height * (1 - frac)


def _f(value: float) -> str:
    """A coordinate, short."""
    return f"{value:.1f}"


def _t(when: datetime, tz: ZoneInfo) -> str:
    return when.astimezone(tz).strftime("%H:%M")


def _power(watts: float) -> str:
    if abs(watts) >= 1000:
        return f"{watts / 1000:.1f} kW"
    return f"{watts:.0f} W"


def _nice_ceiling(value: float) -> float:
    """A round number at or above `value` (1, 2, 2.5, 5 × 10^n)."""
    if value <= 0:
        return 1.0
    exp = 10.0 ** math.floor(math.log10(value))
    return next((m * exp for m in (1.0, 2.0, 2.5, 5.0) if m * exp >= value), 10.0 * exp)


def _text(x: float, y: float, text: str, cls: str = "tick", anchor: str = "") -> str:
    align = f' text-anchor="{anchor}"' if anchor else ""
    return f'<text class="{cls}" x="{_f(x)}" y="{_f(y)}"{align}>{escape(text)}</text>'


def _path(cls: str, d: str, title: str = "") -> str:
    if not d:
        return ""
    inner = f"<title>{escape(title)}</title>" if title else ""
    return f'<path class="{cls}" d="{d}">{inner}</path>'


def _rect(
    cls: str, x: float, y: float, w: float, h: float, title: str = "", extra: str = ""
) -> str:
    inner = f"<title>{escape(title)}</title>" if title else ""
    return (
        f'<rect class="{cls}"{extra} x="{_f(x)}" y="{_f(y)}" width="{_f(max(1.0, w))}" '
        f'height="{_f(h)}">{inner}</rect>'
    )


def _frame(y: float, h: float) -> str:
    return f'<rect class="frame" x="{LEFT}" y="{_f(y)}" width="{INNER}" height="{_f(h)}"/>'


def _step_path(
    axis: _Axis, start: datetime, step_s: int, values: Sequence[float], y: _Scale
) -> str:
    """A step line (one level per step), clipped to the day; "" when nothing is inside."""
    parts: list[str] = []
    step = timedelta(seconds=step_s)
    for i, v in enumerate(values):
        inside = axis.clip(start + i * step, start + (i + 1) * step)
        if inside is None:
            continue
        a, b = inside
        parts.append(f"{'L' if parts else 'M'}{_f(axis.x(a))} {_f(y(v))}H{_f(axis.x(b))}")
    return "".join(parts)


def _points_path(
    axis: _Axis, points: Sequence[tuple[float, float]], y: _Scale, gap_s: float
) -> str:
    """A polyline through `points` ((seconds from the day's start, value)), broken where two
    are more than `gap_s` apart."""
    parts: list[str] = []
    last: float | None = None
    for offset, value in points:
        if offset < 0 or offset > axis.seconds:
            continue
        move = last is None or offset - last > gap_s
        parts.append(f"{'M' if move else 'L'}{axis.x_at(offset):.1f} {y(value):.1f}")
        last = offset
    return "".join(parts)


def _history(series: Series) -> tuple[list[tuple[float, float]], float]:
    """A measured series as drawn (at most MAX_POINTS), and the gap that breaks its line."""
    group = max(1, -(-series.max_buckets // MAX_POINTS))
    return series.offsets(group), series.step_s * group * 3


def _surplus_panel(state: LiveState, axis: _Axis, y0: float) -> list[str]:
    plan, forecast = state.plan, state.forecast
    measured, gap = _history(state.surplus_history)
    values = [v for _, v in measured]
    if forecast is not None:
        values += forecast.power_w
    if plan is not None:
        values += plan.available_power_w
    hi = _nice_ceiling(max([100.0, *values]))
    lo = -_nice_ceiling(-min(values)) if values and min(values) < 0 else 0.0
    y = _Scale(y0, SURPLUS_H, lo, hi)
    out = [
        '<g class="panel surplus">',
        _text(4, y0 + 10, "Surplus", "panel-title"),
        _text(LEFT - 4, y(hi) + 4, _power(hi), anchor="end"),
        _text(LEFT - 4, y(0) + 4, "0", anchor="end"),
        _text(LEFT - 4, y(lo), _power(lo), anchor="end") if lo < 0 else "",
        _frame(y0, SURPLUS_H),
        f'<path class="zero" d="M{LEFT} {_f(y(0))}H{WIDTH - RIGHT}"/>',
    ]
    if forecast is not None:
        d = _step_path(axis, forecast.start, forecast.step_s, forecast.power_w, y)
        out.append(_path("line forecast", d, f"solar forecast ({forecast.source})"))
    if plan is not None:
        d = _step_path(axis, plan.start, plan.step_s, plan.available_power_w, y)
        out.append(_path("line planned-surplus", d, "surplus planned on"))
    d = _points_path(axis, measured, y, gap)
    out += [_path("line measured", d, "measured surplus"), "</g>"]
    return out


def _prices(state: LiveState) -> tuple[datetime, int, list[float], list[float]] | None:
    """Import and export prices per step: the prices message, else the plan's."""
    p = state.prices
    if p is not None and p.start < state.day_end and p.end > state.day_start:
        return p.start, p.step_s, list(p.import_eur_kwh), list(p.export_eur_kwh)
    plan = state.plan
    if plan is not None and plan.import_price_eur_kwh is not None:
        export = plan.export_price_eur_kwh or [0.0] * plan.n_steps
        return plan.start, plan.step_s, list(plan.import_price_eur_kwh), list(export)
    return None


def _prices_panel(
    prices: tuple[datetime, int, list[float], list[float]], axis: _Axis, y0: float
) -> list[str]:
    start, step_s, imp, exp = prices
    every = [*imp, *exp]
    hi = max(every)
    lo = min(0.0, *every)
    y = _Scale(y0, PRICES_H, lo, hi if hi > lo else lo + 0.1)
    out = [
        '<g class="panel prices">',
        _text(4, y0 + 10, "Price", "panel-title"),
        _text(LEFT - 4, y(hi) + 4, f"{hi * 100:.0f} ct", anchor="end"),
        _text(LEFT - 4, y(lo), f"{lo * 100:.0f} ct", anchor="end"),
        _frame(y0, PRICES_H),
    ]
    if lo < 0:
        out.append(f'<path class="zero" d="M{LEFT} {_f(y(0))}H{WIDTH - RIGHT}"/>')
    out.append(_path("line price-import", _step_path(axis, start, step_s, imp, y), "import price"))
    out.append(_path("line price-export", _step_path(axis, start, step_s, exp, y), "export price"))
    out.append("</g>")
    return out


def _span_rect(
    axis: _Axis, span: Span, y: float, cls: str, tz: ZoneInfo, name: str, now: datetime
) -> str:
    inside = axis.clip(span.start, span.end if span.end is not None else now)
    if inside is None:
        return ""
    a, b = inside
    what = "planned on" if "planned" in cls else f"on ({CAUSES.get(span.cause, span.cause)})"
    until = "now" if span.end is None else _t(b, tz)
    title = f"{name}: {what} {_t(a, tz)}–{until}"
    return _rect(cls, axis.x(a), y, axis.x(b) - axis.x(a), 10, title)


def _socket_rows(state: LiveState, axis: _Axis, y0: float, now: datetime) -> list[str]:
    tz, plan = state.tz, state.plan
    rows = {r.slug: r for r in socket_rows(state, now)}
    out: list[str] = []
    for sock in state.sockets.values():
        row = rows.get(sock.slug)
        label = sock.name if len(sock.name) <= 18 else sock.name[:17] + "…"
        fill = ""
        if row is not None and row.fill is not None:
            fill = "full" if row.full else f"{row.fill * 100:.0f} % full"
        slug = escape(sock.slug)
        out += [
            f'<g class="socket-row" data-socket="{slug}">',
            _text(4, y0 + 13, label, "row-label"),
            _text(4, y0 + 25, fill, "row-sub"),
            f'<rect class="lane" x="{LEFT}" y="{_f(y0)}" width="{INNER}" height="{ROW_H - 4}"/>',
        ]
        for span in sock.planned_past:
            out.append(_span_rect(axis, span, y0 + 2, "planned past", tz, sock.name, now))
        if plan is not None and sock.name in plan.sockets:
            for block in on_blocks(plan.start, plan.step_s, plan.sockets[sock.name].states):
                inside = axis.clip(*block)
                if inside is None:
                    continue
                a, b = inside
                data = (
                    f' data-socket="{slug}" data-start="{a.isoformat()}" data-end="{b.isoformat()}"'
                )
                title = f"{sock.name}: planned on {_t(a, tz)}–{_t(b, tz)}"
                out.append(
                    _rect(
                        "planned current", axis.x(a), y0 + 2, axis.x(b) - axis.x(a), 10, title, data
                    )
                )
        for span in sock.actual:
            out.append(_span_rect(axis, span, y0 + 14, f"on on-{span.cause}", tz, sock.name, now))
        out.append("</g>")
        y0 += ROW_H
    return out


def _battery_panel(state: LiveState, axis: _Axis, y0: float) -> list[str]:
    tz, plan = state.tz, state.plan
    capacity = sum(state.battery_capacity_wh.values())
    height = BATTERY_H - 12
    y = _Scale(y0, height, 0.0, 100.0)
    out = [
        '<g class="panel battery">',
        _text(4, y0 + 10, "Battery", "panel-title"),
        _text(LEFT - 4, y(100) + 4, "100 %", anchor="end"),
        _text(LEFT - 4, y(0), "0 %", anchor="end"),
        _frame(y0, height),
    ]
    if plan is not None and capacity > 0:
        first = (plan.start - state.day_start).total_seconds()
        planned = [
            (first + (i + 1) * plan.step_s, min(100.0, e / capacity * 100))
            for i, e in enumerate(plan.battery_energy_wh)
        ]
        d = _points_path(axis, planned, y, plan.step_s * 1.5)
        out.append(_path("line soc-planned", d, "planned state of charge"))
    measured, gap = _history(state.soc_history)
    out.append(_path("line soc", _points_path(axis, measured, y, gap), "state of charge"))
    if plan is not None and plan.battery_mode:
        step = timedelta(seconds=plan.step_s)
        modes = plan.battery_mode
        i = 0
        while i < len(modes):
            j = i
            while j + 1 < len(modes) and modes[j + 1] == modes[i]:
                j += 1
            inside = axis.clip(plan.start + i * step, plan.start + (j + 1) * step)
            if inside is not None:
                a, b = inside
                title = f"battery {modes[i].replace('_', ' ')} {_t(a, tz)}–{_t(b, tz)}"
                cls = f"mode mode-{modes[i]}"
                out.append(_rect(cls, axis.x(a), y0 + height + 2, axis.x(b) - axis.x(a), 8, title))
            i = j + 1
    out.append("</g>")
    return out


def _hours(state: LiveState, axis: _Axis, bottom: float) -> list[str]:
    """A grid line every hour, a label every two (local time; DST days have 23 or 25)."""
    tz = state.tz
    out: list[str] = []
    # whole hours counted in UTC (adding to a local time adds wall-clock time: wrong on the
    # days the clocks change), labelled in local time
    start = state.day_start.astimezone(UTC)
    when = start.replace(minute=0, second=0, microsecond=0)
    if when < start:
        when += timedelta(hours=1)
    while when <= state.day_end:
        x = axis.x(when)
        local = when.astimezone(tz)
        out.append(f'<path class="grid" d="M{_f(x)} {TOP}V{_f(bottom)}"/>')
        if local.minute == 0 and local.hour % 2 == 0:
            out.append(_text(x, TOP - 6, f"{local.hour:02d}", anchor="middle"))
        when += timedelta(hours=1)
    return out


def _legend(y: float, prices: bool, battery: bool) -> str:
    lines = [("line forecast", "forecast"), ("line planned-surplus", "planned on")]
    lines.append(("line measured", "measured"))
    if prices:
        lines += [("line price-import", "import"), ("line price-export", "export")]
    if battery:
        lines += [("line soc", "charge"), ("line soc-planned", "planned charge")]
    boxes = [("planned current", "planned")]
    boxes += [(f"on on-{cause}", CAUSES[cause]) for cause in ("plan", "override", "manual")]
    boxes.append(("on on-fallback", "fallback"))
    parts = ['<g class="legend">']
    x = 4.0
    for cls, text in lines:
        parts.append(f'<path class="{cls}" d="M{_f(x)} {_f(y - 4)}h16"/>')
        parts.append(_text(x + 20, y, text, "legend-text"))
        x += 26 + 6.2 * len(text)
    for cls, text in boxes:
        parts.append(_rect(cls, x, y - 9, 14, 9))
        parts.append(_text(x + 18, y, text, "legend-text"))
        x += 24 + 6.2 * len(text)
    parts.append("</g>")
    return "".join(parts)


def render_timeline(state: LiveState, now: datetime) -> str:
    """The day's timeline for `state` at `now`, as one `<svg>` element."""
    tz = state.tz
    axis = _Axis(state.day_start, state.day_end)
    plan = state.plan
    out = _surplus_panel(state, axis, TOP)
    y0 = TOP + SURPLUS_H + GAP
    prices = _prices(state)
    if prices is not None:
        out += _prices_panel(prices, axis, y0)
        y0 += PRICES_H + GAP
    out += _socket_rows(state, axis, y0, now)
    y0 += ROW_H * len(state.sockets)
    battery = bool(
        state.battery_capacity_wh or state.soc_history.buckets or (plan and plan.battery_mode)
    )
    if battery:
        y0 += GAP - 4
        out += _battery_panel(state, axis, y0)
        y0 += BATTERY_H
    grid = _hours(state, axis, y0)
    if axis.start <= now <= axis.end:
        x = _f(axis.x(now))
        grid.append(_path("now", f"M{x} {TOP - 2}V{_f(y0)}", f"now {_t(now, tz)}"))
    height = y0 + LEGEND_H + 6
    made = f' data-plan-made-at="{plan.made_at.isoformat()}"' if plan is not None else ""
    made += f' data-now-x="{_f(axis.x(now))}"'
    title = f"Today {_t(state.day_start, tz)}–{_t(state.day_end, tz)}"
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" class="timeline" '
        f'viewBox="0 0 {WIDTH} {_f(height)}" role="img" aria-label="{escape(title)}" '
        f'data-day-start="{state.day_start.isoformat()}"{made}>'
        + "".join(grid)
        + "".join(out)
        + _legend(y0 + 16, prices is not None, battery)
        + "</svg>"
    )
