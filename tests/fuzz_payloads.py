"""Hypothesis strategies for hostile MQTT payloads, and valid messages of the contract.

A drawn `Payload` is either raw bytes or a JSON *document* (plain JSON values with `Raw`
bytes spliced in as they are, and `At` / `DayStart` timestamps relative to the clock),
rendered with the clock's `now` when it is sent: valid messages stay current however far a
test moves its clock, and a failing example prints as something readable.

`payloads(model, ctx, target)` mixes (per 100 examples, roughly):

* 12 *valid*: a sane message a service should take (`kind == "valid"`, only when `target`
  names the topic's own device or socket), or a schema-valid one with wild values
  (`valid-wild`: extreme but finite numbers, far-off or odd-offset timestamps, foreign names);
* 43 *mutated*: a valid document with fields removed, extra fields, wrong types, huge ints
  (10**400), NaN / Infinity literals, huge strings (up to 1 MB, rarely), deep nesting,
  lone surrogates, naive or out-of-range timestamps, a wrong `schema_version`;
* 12 *byte-level*: a valid payload truncated, with invalid UTF-8 inside, a BOM, UTF-16,
  trailing garbage, a duplicated key;
* 13 *special*: empty, whitespace, `null`, 100 000 levels of `[` or `{"a":`, a 1 MB string,
  more than `MAX_PAYLOAD_BYTES`, `online`, ...;
* 10 random JSON values, 10 random bytes.

Cost: each example is one seed drawn by hypothesis (which mix, which fields, which edits,
from a `random.Random` seeded with it) plus hypothesis' own draws where they add something
(text, integers, floats, binary, extra keys). Every draw costs ~25 us in hypothesis'
engine, and its recursive strategies ~1.5 ms: with dozens of draws per payload 10 000
examples per topic took twice the time budget.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta, timezone
from typing import Any, TypeAlias
from zoneinfo import ZoneInfo

from hypothesis import strategies as st

from shared.daytime import day_start
from shared.messages import (
    MAX_PAYLOAD_BYTES,
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
    SocketCommand,
    SocketState,
)
from shared.planning.problem import BATTERY_MODES

__all__ = [
    "At",
    "Context",
    "DayStart",
    "Doc",
    "Payload",
    "Raw",
    "availability_payloads",
    "discovery_payloads",
    "encode",
    "payloads",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --- documents ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """Bytes spliced into the JSON text as they are (NaN, 10**400, deep nesting, ...)."""

    data: bytes

    def __repr__(self) -> str:
        head = self.data[:24]
        more = f"...({len(self.data)} B)" if len(self.data) > len(head) else ""
        return f"Raw({head!r}{more})"


@dataclass(frozen=True)
class At:
    """A timestamp `offset_s` from the clock's now (floored to `align_s`), at UTC+`tz_min`."""

    offset_s: float
    tz_min: int = 0
    align_s: int = 0

    def at(self, now: datetime) -> datetime:
        when = now + timedelta(seconds=self.offset_s)
        if self.align_s:
            seconds = (when - _EPOCH).total_seconds()
            when = _EPOCH + timedelta(seconds=math.floor(seconds / self.align_s) * self.align_s)
        return when.astimezone(timezone(timedelta(minutes=self.tz_min)))


@dataclass(frozen=True)
class DayStart:
    """The start of the planning day holding now, `days` days on (the books' `day_start`)."""

    days: int = 0


Doc: TypeAlias = (
    bool | int | float | str | Raw | At | DayStart | list["Doc"] | dict[str, "Doc"] | None
)


@dataclass(frozen=True)
class Context:
    """What the service under test is configured with (names its messages may carry)."""

    sockets: tuple[str, ...]
    batteries: tuple[str, ...] = ()
    meter: str | None = None
    arrays: tuple[str, ...] = ()
    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("Europe/Amsterdam"))
    boundary: time = time(6, 0)

    @property
    def devices(self) -> tuple[str, ...]:
        meter = (self.meter,) if self.meter is not None else ()
        return (*meter, *self.sockets, *self.batteries)

    def device_type(self, name: str) -> str | None:
        if name == self.meter:
            return "HWE-P1"
        if name in self.sockets:
            return "HWE-SKT"
        if name in self.batteries:
            return "HWE-BAT"
        return None


#: Types a list is written with `json.dumps` in one go (ints: those drawn stay far below
#: Python's 4300-digit limit; the huge ones are `Raw`).
_PLAIN = frozenset({float, int, bool, type(None)})


def _string(text: str) -> bytes:
    # lone surrogates are written as their (invalid) UTF-8 bytes: hostile on purpose
    return json.dumps(text, ensure_ascii=False).encode("utf-8", "surrogatepass")


def encode(doc: Doc, now: datetime, ctx: Context) -> bytes:
    """The document as JSON text (non-finite floats as the NaN / Infinity literals)."""
    out: list[bytes] = []

    def put(value: Doc) -> None:
        if isinstance(value, Raw):
            out.append(value.data)
        elif isinstance(value, At):
            out.append(_string(value.at(now).isoformat()))
        elif isinstance(value, DayStart):
            start = day_start(now, ctx.tz, ctx.boundary) + timedelta(days=value.days)
            out.append(_string(start.isoformat()))
        elif value is None or isinstance(value, bool):
            out.append(json.dumps(value).encode())
        elif isinstance(value, int):
            out.append(str(value).encode())
        elif isinstance(value, float):
            out.append(json.dumps(value).encode())  # NaN, Infinity, -Infinity as literals
        elif isinstance(value, str):
            out.append(_string(value))
        elif isinstance(value, list) and all(type(v) in _PLAIN for v in value):
            out.append(json.dumps(value).encode())  # a long series: in one go
        elif isinstance(value, list):
            out.append(b"[")
            for i, item in enumerate(value):
                if i:
                    out.append(b",")
                put(item)
            out.append(b"]")
        else:
            out.append(b"{")
            for i, (key, item) in enumerate(value.items()):
                if i:
                    out.append(b",")
                out.append(_string(key))
                out.append(b":")
                put(item)
            out.append(b"}")

    put(doc)
    return b"".join(out)


@dataclass(frozen=True)
class Payload:
    """One drawn payload: a document (rendered at send time) or raw bytes, and what it is."""

    kind: str
    doc: Doc = None
    raw: bytes | None = None
    #: Byte-level edits after rendering: ("truncate", fraction), ("insert", fraction, bytes),
    #: ("prefix", bytes), ("suffix", bytes), ("dupkey", bytes): the closing brace replaced,
    #: ("utf16",).
    edits: tuple[tuple[Any, ...], ...] = ()

    def render(self, now: datetime, ctx: Context) -> bytes:
        data = self.raw if self.raw is not None else encode(self.doc, now, ctx)
        for edit in self.edits:
            op = edit[0]
            if op == "truncate":
                data = data[: int(len(data) * edit[1])]
            elif op == "insert":
                at = int(len(data) * edit[1])
                data = data[:at] + edit[2] + data[at:]
            elif op == "prefix":
                data = edit[1] + data
            elif op == "suffix":
                data = data + edit[1]
            elif op == "dupkey" and data.endswith(b"}"):
                data = data[:-1] + edit[1]
            elif op == "utf16":
                data = data.decode("utf-8", "surrogatepass").encode("utf-16", "surrogatepass")
        return data

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # hypothesis prints a failing example short, like this

    def __repr__(self) -> str:
        if self.raw is not None:
            return f"Payload({self.kind!r}, raw={Raw(self.raw)!r}, edits={self.edits!r})"
        text = repr(self.doc)
        text = text if len(text) <= 600 else text[:600] + f"...({len(text)} chars)"
        return f"Payload({self.kind!r}, doc={text}, edits={self.edits!r})"


# --- building blocks ------------------------------------------------------------------------

#: Timestamps pydantic takes but that sit at the edges of what datetime can do.
EDGE_TIMESTAMPS = (
    "0001-01-01T00:00:00+23:59",
    "0001-01-01T00:00:00+00:00",
    "0001-01-01T00:00:00-23:59",
    "9999-12-31T23:59:59-23:59",
    "9999-12-31T23:59:59+00:00",
    "9999-12-31T23:59:59.999999+23:59",
    "1970-01-01T00:00:00Z",
    "2038-01-19T03:14:08Z",
)
#: Timestamps that must be refused.
BAD_TIMESTAMPS = (
    "2024-06-21T12:00:00",  # naive
    "yesterday",
    "",
    "2024-02-30T00:00:00Z",
    "2024-06-30T23:59:60Z",
    "2024-06-21T12:00:00+24:00",
    "10000-01-01T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "2024-06-21 12:00:00+00:00:00.5",
)
_HUGE_INT = Raw(b"1" + b"0" * 400)  # 10**400
_TOO_MANY_DIGITS = Raw(b"9" * 5000)  # over Python's int-from-text limit
_SPECIAL_VALUES: tuple[Doc, ...] = (
    None,
    True,
    False,
    0,
    -1,
    1,
    2**63,
    -(2**63) - 1,
    2**64,
    1e308,
    -1e308,
    5e-324,
    -0.0,
    "",
    "1",
    "0",
    "true",
    "on",
    "NaN",
    "\x00",
    "\ud800",
    "\udfff",
    "☀" * 3,
    Raw(b"NaN"),
    Raw(b"Infinity"),
    Raw(b"-Infinity"),
    Raw(b"1e400"),
    Raw(b"-1e400"),
    Raw(b"1e-400"),
    _HUGE_INT,
    Raw(b"-" + _HUGE_INT.data),
    _TOO_MANY_DIGITS,
    Raw(b"-0"),
    Raw(b"01"),
    Raw(b"0x10"),
    Raw(b"+1"),
    Raw(b".5"),
    Raw(b'"\\ud800"'),
    Raw(b'"\\u0000"'),
    Raw(b'"\xff\xfe"'),
    Raw(b'"\xed\xa0\x80"'),
    Raw(b"undefined"),
    Raw(b"True"),
    [],
    {},
    [1, 2, 3],
    {"a": 1},
    [None],
    *EDGE_TIMESTAMPS,
    *BAD_TIMESTAMPS,
)
_DEPTHS = (50, 199, 201, 999, 1001, 5000, 100_000)
_BIG_SIZES = (1_000, 5_000, 70_000, 300_000, 1_000_000)


def _nested(depth: int, kind: int) -> Raw:
    if kind == 0:
        return Raw(b"[" * depth + b"]" * depth)
    if kind == 1:
        return Raw(b'{"a":' * depth + b"0" + b"}" * depth)
    return Raw(b"[" * depth)  # unbalanced


#: Characters of wild names and texts: ASCII, accents, CJK, emoji, controls (no surrogates).
_ALPHABET = 'abcXYZ019 _-/#+."\\\x00\x7f\u00e9\u00df\u2603\u4e2d\U0001f600\u200b\ufeff'
_JSON_LEAVES: tuple[Doc, ...] = (None, True, False, 0, -1, 2**70, 1.5, -0.0, "", "x", "é☀")


def random_json(rnd: random.Random, depth: int = 0) -> Doc:
    """A small random JSON value (lists, objects, NaN, big ints, odd text): made with
    `random`, as hypothesis' recursive strategies cost ~1.5 ms a draw."""
    roll = rnd.randrange(10)
    if depth < 3 and roll < 2:
        return [random_json(rnd, depth + 1) for _ in range(rnd.randrange(5))]
    if depth < 3 and roll < 4:
        size = rnd.randrange(5)
        return {_random_text(rnd, 8): random_json(rnd, depth + 1) for _ in range(size)}
    if roll < 6:
        return rnd.choice(_JSON_LEAVES)
    if roll < 7:
        return rnd.randint(-(2**70), 2**70)
    if roll < 8:
        return rnd.choice((math.nan, math.inf, -math.inf, rnd.uniform(-1e9, 1e9)))
    return _random_text(rnd, 12)


def _random_text(rnd: random.Random, most: int) -> str:
    return "".join(rnd.choice(_ALPHABET) for _ in range(rnd.randrange(most + 1)))


# Strategies are made once: making them inside every draw costs more than the drawing.
_TEXT = st.text(max_size=30)
_INTS = st.integers()
_FLOATS = st.floats()
_BINARY = st.binary(max_size=300)
#: One per example: the structure (which mix, which edits, which special) comes from a
#: `random.Random` seeded with it; a hypothesis draw costs ~25 us, and 10 000 examples per
#: topic must stay within the time budget.
_SEEDS = st.integers(min_value=0, max_value=2**64 - 1)


def _hostile(draw: st.DrawFn, rnd: random.Random) -> Doc:
    """One value to put where a field's value should be."""
    roll = rnd.randrange(100)
    if roll < 45:
        return _copy(rnd.choice(_SPECIAL_VALUES))  # never share a mutable one
    if roll < 55:
        return draw(_TEXT)
    if roll < 63:
        return draw(_INTS)
    if roll < 71:
        return draw(_FLOATS)  # NaN and the infinities included
    if roll < 80:
        return random_json(rnd)
    if roll < 86:  # a huge string: rarely the largest
        return rnd.choice("xé☀\x00") * rnd.choice(_BIG_SIZES)
    if roll < 92:
        return _nested(rnd.choice(_DEPTHS), rnd.randrange(3))
    if roll < 96:  # a long list
        return Raw(b"[" + b",".join([b"0"] * rnd.choice((100, 20_001))) + b"]")
    return At(rnd.uniform(-3.2e8, 3.2e8), rnd.randint(-1439, 1439))


@st.composite
def json_values(draw: st.DrawFn) -> Doc:
    """Any JSON value, small."""
    return random_json(random.Random(draw(_SEEDS)))


@st.composite
def hostile_values(draw: st.DrawFn) -> Doc:
    """One value to put where a field's value should be."""
    return _hostile(draw, random.Random(draw(_SEEDS)))


# --- valid messages -------------------------------------------------------------------------
#
# A valid document's many values come from one drawn seed (`random.Random`): one hypothesis
# draw instead of dozens, which keeps 10 000 examples per topic within the time budget. The
# structure around it (what is mutated, how, with which hostile value) is drawn by hypothesis.

_WILD_FLOATS = (0.0, -0.0, 1e308, -1e308, 5e-324, -5e-324, 1.7976931348623157e308, 1e-300)
_WILD_NAMES = ("x" * 200, "Bölier ☀", "boiler", "BOILER", " Boiler", "a/b#+", "\x00", "é" * 200)


@dataclass
class _Gen:
    """The values of one valid message: sane ones, or wild ones that still validate."""

    rnd: random.Random
    ctx: Context
    sane: bool

    def roll(self) -> int:
        return self.rnd.randrange(100)

    def pick(self, options: Sequence[Any]) -> Any:
        return options[self.rnd.randrange(len(options))]

    def ts(self, lo: float = -120.0, hi: float = 0.0) -> Doc:
        """A timestamp around now (sane: exactly now, or `lo` when now is not in range)."""
        if self.sane:
            return At(0.0) if lo <= 0 <= hi else At(lo)
        roll = self.roll()
        if roll < 55:
            return At(self.rnd.uniform(lo, hi), self.pick((0, 60, 120, -300)))
        if roll < 75:
            return At(self.rnd.uniform(-3 * 86_400, 3 * 86_400))
        if roll < 90:
            return At(self.rnd.uniform(-3.2e8, 3.2e8), self.rnd.randint(-1439, 1439))
        return str(self.pick(EDGE_TIMESTAMPS))

    def power(self, lo: float = -6000.0, hi: float = 6000.0) -> float:
        if self.sane or self.roll() < 70:
            return round(self.rnd.uniform(lo, hi), 1)
        if self.roll() < 50:
            return float(self.pick(_WILD_FLOATS))
        return self.rnd.choice((1.0, -1.0)) * 10 ** self.rnd.uniform(-300, 308)

    def nonneg(self, hi: float = 10_000.0) -> float:
        return abs(self.power(0.0, hi))

    def name(self, pool: Sequence[str], target: str | None = None) -> str:
        if target is not None and (self.sane or self.roll() < 70):
            return target
        if pool and (self.sane or self.roll() < 70):
            return str(self.pick(pool))
        if self.roll() < 40:
            return str(self.pick(_WILD_NAMES))
        return self.text()

    def text(self, sane: str = "plan step 3") -> str:
        if self.sane:
            return sane
        return "".join(self.pick(_ALPHABET) for _ in range(self.rnd.randint(1, 40)))

    def steps(self, lo: int = 1, hi: int = 100) -> int:
        if self.sane or self.roll() < 95:
            return self.rnd.randint(lo, hi)
        return int(self.pick((1, 2_000, 20_000)))

    def series(self, n: int, lo: float, hi: float) -> list[Doc]:
        """`n` values in [lo, hi]: a ramp, or a few values repeated."""
        if self.sane or self.roll() < 80:
            # from `value` towards 0 (lo <= 0 <= hi: always in range)
            value, ramp = self.rnd.uniform(lo, hi), self.rnd.random() / n
            return [round(value * (1 - ramp * i), 2) for i in range(n)]
        wild = [self.rnd.uniform(lo, hi) for _ in range(self.rnd.randint(1, 8))]
        return [wild[i % len(wild)] for i in range(n)]


def measurement_doc(g: _Gen, target: str | None) -> dict[str, Doc]:
    name = g.name(g.ctx.devices, target)
    kind = g.ctx.device_type(name)
    if kind is None or (not g.sane and g.roll() < 5):
        kind = g.pick(("HWE-P1", "HWE-SKT", "HWE-BAT"))
    doc: dict[str, Doc] = {
        "schema_version": 1,
        "timestamp": g.ts(),
        "device": name,
        "device_type": kind,
        "power_w": g.power(0.0, 2000.0) if kind == "HWE-SKT" and g.sane else g.power(),
        "api": "v2" if kind == "HWE-BAT" else g.pick(("v1", "v2")),
    }
    if g.roll() < 50:
        doc["energy_import_kwh"] = g.nonneg(1e5)
        doc["energy_export_kwh"] = g.nonneg(1e5)
    if kind == "HWE-SKT":
        doc["power_on"] = g.pick((True, False))
        doc["switch_lock"] = False if g.sane else g.pick((True, False))
    if kind == "HWE-BAT":
        doc["state_of_charge_pct"] = round(g.rnd.uniform(0, 100), 1)
    return doc


def surplus_doc(g: _Gen, target: str | None) -> dict[str, Doc]:
    ctx = g.ctx
    sockets = {s: g.power(0.0, 2000.0) for s in ctx.sockets if g.roll() < 50}
    batteries = {b: g.power(-800.0, 800.0) for b in ctx.batteries if g.roll() < 50}
    p1 = g.power()
    surplus = -p1 + sum(sockets.values()) + sum(batteries.values())
    named = [*sockets, *batteries]
    return {
        "schema_version": 1,
        "timestamp": g.ts(),
        "surplus_w": surplus if math.isfinite(surplus) else 0.0,
        "p1_power_w": p1,
        "sockets_w": dict(sockets),
        "batteries_w": dict(batteries),
        "based_on": [ctx.meter or "P1 meter", *named],
        "missing": [n for n in (*ctx.sockets, *ctx.batteries) if n not in named],
    }


def forecast_doc(g: _Gen, target: str | None) -> dict[str, Doc]:
    n = g.steps(80, 100) if g.sane else g.steps()
    step = 900 if g.sane or g.roll() < 85 else g.rnd.randint(1, 86_400)
    start: Doc = At(-g.rnd.randint(0, 8) * step, 0, step)
    if not g.sane and g.roll() < 10:
        start = g.ts()
    arrays = g.ctx.arrays or ("house",)
    split: dict[str, Doc] = {a: round(1.0 / len(arrays), 6) for a in arrays}
    split[arrays[-1]] = round(1.0 - len(arrays[:-1]) * round(1.0 / len(arrays), 6), 6)
    doc: dict[str, Doc] = {
        "schema_version": 1,
        "timestamp": g.ts(),
        "start": start,
        "step_s": step,
        "power_w": g.series(n, 0.0, 5000.0),
        "made_at": g.ts(-600.0, 0.0),
        "source": "open-meteo" if g.sane else g.name(("open-meteo", "clear-sky", "simulated")),
        "model": "icon",
        "arrays": split if g.roll() < 80 else {},
        "fallback": False if g.sane else g.pick((True, False)),
        "pv_model": "quartz-solar-forecast 1.2.12",
    }
    if not g.sane and g.roll() < 10:
        doc["power_w"] = [g.nonneg(1e308)] * n
    return doc


def forecast_request_doc(g: _Gen, target: str | None) -> dict[str, Doc]:
    doc: dict[str, Doc] = {}
    roll = g.roll()
    if roll < 50:
        doc["schema_version"] = 1
    if roll % 3 == 0:
        doc["timestamp"] = g.ts()
    if roll % 2 == 0:
        doc["transaction"] = g.rnd.randint(-(2**63), 2**63) if roll < 60 else g.text()[:100]
    return doc


def plan_doc(g: _Gen, target: str | None) -> dict[str, Doc]:
    ctx = g.ctx
    n = g.steps(40, 80) if g.sane else g.steps()
    step = 900 if g.sane or g.roll() < 85 else g.rnd.randint(1, 86_400)
    names = [s for s in ctx.sockets if g.sane or g.roll() < 50]
    if not g.sane and g.roll() < 15:
        names.append(g.name(()))
    sockets: dict[str, Doc] = {}
    for name in names:
        pattern = [g.rnd.randint(0, 1) for _ in range(g.rnd.randint(1, 8))]
        row: list[Doc] = [pattern[i % len(pattern)] for i in range(n)]
        energy: list[Doc] = [500.0 * pattern[i % len(pattern)] for i in range(n)]
        sockets[name] = {"states": row, "energy_wh": energy}
    doc: dict[str, Doc] = {
        "schema_version": 1,
        "timestamp": g.ts(),
        "made_at": g.ts(-60.0, 0.0),
        "start": At(0.0 if g.sane else g.rnd.uniform(-7200, 7200), 0, step),
        "step_s": step,
        "sockets": sockets,
        "battery_power_w": g.series(n, -800.0, 800.0),
        "battery_energy_wh": g.series(n, 0.0, 5000.0),
        "planner": "optimal" if g.sane else g.name(("optimal", "reference", "fallback-rule")),
        "status": g.pick(("optimal", "time-limited", "fallback", "heuristic")),
        "solve_s": g.nonneg(60.0),
        "available_power_w": g.series(n, -5000.0, 5000.0),
    }
    if g.roll() < 50:
        doc["forecast_made_at"] = g.ts(-3600.0, 0.0)
        doc["forecast_power_w"] = g.series(n, 0.0, 5000.0)
        doc["measured_surplus_w"] = g.power()
    if not g.sane and g.roll() < 20:
        doc["excluded"] = [g.name(ctx.sockets)]
        doc["fallback_reason"] = g.text()
    return doc


def command_doc(g: _Gen, target: str | None) -> dict[str, Doc]:
    doc: dict[str, Doc] = {
        "schema_version": 1,
        "timestamp": g.ts(-30.0, 0.0),
        "socket": g.name(g.ctx.sockets, target),
        "state": g.pick(("on", "off")),
        "reason": g.text(),
        "valid_until": At(900.0) if g.sane else g.ts(-600.0, 3600.0),
    }
    if g.roll() < 50:
        doc["plan_made_at"] = g.ts(-600.0, 0.0)
    return doc


def override_request_doc(g: _Gen, target: str | None) -> dict[str, Doc]:
    state = g.pick(("on", "off", "auto"))
    doc: dict[str, Doc] = {"state": state}
    if g.roll() < 40:
        doc["schema_version"] = 1
        doc["timestamp"] = g.ts()
    if state != "auto":
        roll = g.roll()
        if roll < 35:
            wild = g.pick((5e-324, 1e-9, 7 * 86_400.0, g.rnd.uniform(0.001, 7 * 86_400)))
            doc["duration_s"] = round(g.rnd.uniform(1, 86_400), 1) if g.sane else wild
        elif roll < 70:
            doc["until"] = At(3600.0) if g.sane else g.ts(60.0, 6 * 86_400.0)
    return doc


def override_state_doc(g: _Gen, target: str | None) -> dict[str, Doc]:
    state = g.pick(("on", "off", "auto"))
    until = At(3600.0) if g.sane else g.ts(-3600.0, 86_400.0)
    return {
        "schema_version": 1,
        "timestamp": g.ts(),
        "socket": g.name(g.ctx.sockets, target),
        "state": state,
        "until": None if state == "auto" else until,
        "source": g.pick(("mqtt", "manual-switch", "expiry")),
        "set_at": g.ts(-3600.0, 0.0),
    }


def socket_state_doc(g: _Gen, target: str | None) -> dict[str, Doc]:
    doc: dict[str, Doc] = {
        "schema_version": 1,
        "timestamp": g.ts(),
        "socket": g.name(g.ctx.sockets, target),
        "controlled_by": g.pick(("plan", "override", "manual", "fallback")),
        "power_on": g.pick((True, False, None)),
        "switch_lock": g.pick((True, False, None)),
    }
    if g.roll() < 60:
        doc["last_switch_at"] = g.ts(-3600.0, 0.0)
        doc["last_switch_reason"] = g.text()
        doc["desired"] = g.pick(("on", "off", None))
        doc["held_until"] = g.ts(0.0, 600.0)
    return doc


def books_doc(g: _Gen, target: str | None) -> dict[str, Doc]:
    ctx = g.ctx
    day = 0 if g.sane or g.roll() < 85 else g.rnd.randint(-3, 3)
    sockets: dict[str, Doc] = {}
    for name in ctx.sockets:
        if g.sane or g.roll() < 50:
            sockets[name] = {
                "name": name,
                "day_start": DayStart(day if g.sane or g.roll() < 80 else day - 1),
                "energy_wh": g.nonneg(3000.0),
                "full": g.pick((True, False)),
                "manual": False if g.sane else g.pick((True, False)),
                "last_sample_at": g.ts(-600.0, 0.0),
                "last_power_w": g.nonneg(2000.0),
            }
    if not g.sane and g.roll() < 15:
        other = g.name(())
        sockets[other] = {"name": other, "energy_wh": g.nonneg()}
    batteries: dict[str, Doc] = {}
    for name in ctx.batteries:
        if g.sane or g.roll() < 50:
            batteries[name] = {
                "name": name,
                "energy_wh": g.nonneg(5000.0),
                "state_of_charge_pct": round(g.rnd.uniform(0, 100), 1),
                "measured_at": g.ts(-600.0, 0.0),
            }
    doc: dict[str, Doc] = {
        "schema_version": 1,
        "timestamp": g.ts(),
        "day_start": DayStart(day),
        "sockets": sockets,
        "batteries": batteries,
    }
    if g.roll() < 50:
        doc["shift_baseline_w"] = g.power()
        doc["shift_baseline_at"] = g.ts(-3600.0, 0.0)
    if g.roll() < 50:
        doc["shift_fit"] = {
            "weight_s": g.nonneg(40_000.0) + 1.0,
            "forecast_w": g.nonneg(),
            "measured_w": g.power(),
            "forecast_var": g.nonneg(1e6),
            "covariance": g.power() * 500.0,
            "at": g.ts(-3600.0, 0.0),
        }
    return doc


def prices_doc(g: _Gen, target: str | None) -> dict[str, Doc]:
    n = 96 if g.sane else g.steps(1, 300)
    doc: dict[str, Doc] = {
        "schema_version": 1,
        "timestamp": g.ts(),
        "start": At(-3 * 3600.0, align_s=900) if g.sane else g.ts(-2 * 86_400.0, 86_400.0),
        "step_s": 900 if g.sane else g.pick((900, 3600, 300, 1, 86_400)),
        "import_eur_kwh": g.series(n, -0.6, 1.2),
        "export_eur_kwh": g.series(n, -0.6, 1.0),
        "source": "entsoe" if g.sane else g.pick(("fixed", "energyzero", "entsoe")),
        "fallback": False if g.sane else g.pick((True, False)),
        "made_at": g.ts(-60.0, 0.0),
    }
    if g.sane or g.roll() < 70:
        doc["day_ahead_eur_kwh"] = g.series(n, -0.5, 1.0)
        doc["area"] = "NL" if g.sane else g.text("NL")
    return doc


def battery_command_doc(g: _Gen, target: str | None) -> dict[str, Doc]:
    doc: dict[str, Doc] = {
        "schema_version": 1,
        "timestamp": g.ts(-30.0, 0.0),
        "mode": g.pick(BATTERY_MODES),
        "reason": g.text(),
        "valid_until": At(900.0) if g.sane else g.ts(-600.0, 3600.0),
    }
    if g.roll() < 50:
        doc["plan_made_at"] = g.ts(-600.0, 0.0)
    return doc


def battery_override_doc(g: _Gen, target: str | None) -> dict[str, Doc]:
    doc: dict[str, Doc] = {"state": "auto"}
    if g.roll() < 40:
        doc["schema_version"] = 1
        doc["timestamp"] = g.ts()
    return doc


def battery_state_doc(g: _Gen, target: str | None) -> dict[str, Doc]:
    doc: dict[str, Doc] = {
        "schema_version": 1,
        "timestamp": g.ts(),
        "controlled_by": g.pick(("plan", "app", "fallback", "none")),
        "mode": g.pick((*BATTERY_MODES, None)),
        "desired": g.pick((*BATTERY_MODES, None)),
    }
    if g.roll() < 60:
        doc["device_mode"] = g.pick(("zero", "to_full", "standby", "predictive"))
        doc["permissions"] = g.pick(
            ([], ["charge_allowed"], ["charge_allowed", "discharge_allowed"])
        )
        doc["last_change_at"] = g.ts(-3600.0, 0.0)
        doc["last_change_reason"] = g.text()
        doc["held_until"] = g.ts(0.0, 86_400.0)
    return doc


def cost_doc(g: _Gen, target: str | None) -> dict[str, Doc]:
    day = 0 if g.sane or g.roll() < 85 else g.rnd.randint(-3, 3)
    doc: dict[str, Doc] = {
        "schema_version": 1,
        "timestamp": g.ts(),
        "day_start": DayStart(day),
        "prices_fallback": g.pick((True, False)),
    }
    if g.sane or g.roll() < 70:
        doc |= {
            "import_now_eur_kwh": round(g.rnd.uniform(-0.5, 1.0), 4),
            "export_now_eur_kwh": round(g.rnd.uniform(-0.5, 1.0), 4),
            "prices_source": "entsoe",
            "import_today_kwh": g.nonneg(50.0),
            "export_today_kwh": g.nonneg(50.0),
            "cost_today_eur": round(g.rnd.uniform(-5, 20), 4) if g.sane else g.power(-20, 20),
            "meter_import_kwh": g.nonneg(100_000.0),
            "meter_export_kwh": g.nonneg(100_000.0),
            "meter_read_at": g.ts(-600.0, 0.0),
        }
    return doc


VALID_DOCS: dict[type[Message], Callable[[_Gen, str | None], dict[str, Doc]]] = {
    DeviceMeasurement: measurement_doc,
    HouseSurplus: surplus_doc,
    Forecast: forecast_doc,
    ForecastRequest: forecast_request_doc,
    PlanMessage: plan_doc,
    SocketCommand: command_doc,
    OverrideRequest: override_request_doc,
    OverrideState: override_state_doc,
    SocketState: socket_state_doc,
    EnergyBooks: books_doc,
    Prices: prices_doc,
    BatteryCommand: battery_command_doc,
    BatteryOverrideRequest: battery_override_doc,
    BatteryState: battery_state_doc,
    CostSummary: cost_doc,
}


def valid_doc(
    model: type[Message], ctx: Context, target: str | None, sane: bool, seed: int
) -> dict[str, Doc]:
    """A document of `model` from `seed` (sane: one the topic's service should take as is)."""
    return VALID_DOCS[model](_Gen(random.Random(seed), ctx, sane), target)


@st.composite
def valid_docs(
    draw: st.DrawFn, model: type[Message], ctx: Context, target: str | None, sane: bool
) -> dict[str, Doc]:
    return valid_doc(model, ctx, target, sane, draw(_SEEDS))


# --- mutations ------------------------------------------------------------------------------


def _paths(
    doc: Doc, prefix: tuple[Any, ...] = (), out: list[tuple[Any, ...]] | None = None
) -> list[tuple[Any, ...]]:
    """Every path to a value inside dicts and lists (lists: their first three items)."""
    out = [] if out is None else out
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.append((*prefix, key))
            _paths(value, (*prefix, key), out)
    elif isinstance(doc, list):
        for i, value in enumerate(doc[:3]):
            out.append((*prefix, i))
            _paths(value, (*prefix, i), out)
    return out


def _copy(doc: Doc) -> Doc:
    if isinstance(doc, dict):
        return {k: _copy(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_copy(v) if isinstance(v, dict | list) else v for v in doc]
    return doc


def _parent(doc: Doc, path: tuple[Any, ...]) -> Any:
    node: Any = doc
    for step in path[:-1]:
        node = node[step]
    return node


_KEYS = st.one_of(
    st.sampled_from(("extra", "schema_version", "__proto__", "", "x" * 300)), st.text(max_size=10)
)
_VERSIONS: tuple[Doc, ...] = (0, 2, 99, -1, "1", True, 1.0, None, [1], Raw(b"1e400"), _HUGE_INT)


def _mutate(draw: st.DrawFn, rnd: random.Random, doc: dict[str, Doc]) -> tuple[str, Doc]:
    """`doc` (edited in place: pass a copy of a shared one) with one to three edits: a field
    removed, replaced, added; a wrong version."""
    names = []
    for _ in range(rnd.randint(1, 3)):
        paths = _paths(doc)
        op = rnd.randrange(10)
        if op <= 2 and paths:  # remove
            path = rnd.choice(paths)
            parent = _parent(doc, path)
            if isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent.pop(path[-1])
            names.append("remove")
        elif op <= 6 and paths:  # replace with a hostile value
            path = rnd.choice(paths)
            _parent(doc, path)[path[-1]] = _hostile(draw, rnd)
            names.append("replace")
        elif op <= 8:  # an extra field, somewhere
            dicts = [p for p in [(), *paths] if isinstance(_get(doc, p), dict)]
            where = _get(doc, rnd.choice(dicts))
            where[draw(_KEYS)] = _hostile(draw, rnd)
            names.append("extra")
        else:
            doc["schema_version"] = _copy(rnd.choice(_VERSIONS))
            names.append("version")
    return "mutated:" + "+".join(names), doc


@st.composite
def mutated(draw: st.DrawFn, doc: dict[str, Doc]) -> tuple[str, Doc]:
    """`doc` with one to three edits: a field removed, replaced, added; a wrong version."""
    return _mutate(draw, random.Random(draw(_SEEDS)), _copy(doc))  # type: ignore[arg-type]


def _get(doc: Doc, path: tuple[Any, ...]) -> Any:
    node: Any = doc
    for step in path:
        node = node[step]
    return node


_BYTE_EDITS: tuple[tuple[Any, ...], ...] = (
    ("insert", b"\xff"),
    ("insert", b"\xc3\x28"),
    ("insert", b"\xed\xa0\x80"),
    ("insert", b"\xf4\x90\x80\x80"),
    ("insert", b"\x00"),
    ("insert", b"\xc0\xaf"),
    ("insert", b"\x80"),
)


_TAILS = (b" x", b"}", b",", b"\x00", b"{}", b"\n\n")
_DUP_KEYS = (b',"schema_version":2}', b',"schema_version":1}')


def _byte_edits(rnd: random.Random) -> tuple[str, tuple[tuple[Any, ...], ...]]:
    """Edits of the rendered bytes: truncation, invalid UTF-8, BOM, UTF-16, ..."""
    roll = rnd.randrange(9)
    if roll == 0:
        return "bytes:truncate", (("truncate", rnd.random()),)
    if roll <= 3:
        op, data = rnd.choice(_BYTE_EDITS)
        return "bytes:invalid-utf8", ((op, rnd.random(), data),)
    if roll == 4:
        return "bytes:bom", (("prefix", b"\xef\xbb\xbf"),)
    if roll == 5:
        return "bytes:utf16", (("utf16",),)
    if roll == 6:
        return "bytes:trailing", (("suffix", rnd.choice(_TAILS)),)
    if roll == 7:  # a second schema_version, after the first (json and pydantic may disagree)
        return "bytes:duplicate-key", (("dupkey", rnd.choice(_DUP_KEYS)),)
    return "bytes:whitespace", (("prefix", b" \n\t"), ("suffix", b"\r\n "))


#: Whole payloads: name -> bytes (the large ones made once).
SPECIAL_PAYLOADS: dict[str, bytes] = {
    "empty": b"",
    "space": b" ",
    "null": b"null",
    "true": b"true",
    "zero": b"0",
    "string": b'"hello"',
    "empty-list": b"[]",
    "empty-object": b"{}",
    "online": b"online",
    "offline": b"offline",
    "nul": b"\x00",
    "nan": b"NaN",
    "huge-int": _HUGE_INT.data,
    "deep-list": b"[" * 100_000,
    "deep-list-closed": b"[" * 100_000 + b"]" * 100_000,
    "deep-object": b'{"a":' * 100_000,
    "deep-object-closed": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "deep-in-field": b'{"schema_version":1,"x":' + b"[" * 5_000 + b"]" * 5_000 + b"}",
    "string-1mb": b'{"schema_version":1,"x":"' + b"a" * 1_000_000 + b'"}',
    "version-1mb": b'{"schema_version":"' + b"a" * 1_000_000 + b'"}',
    "over-max": b'{"x":"' + b"a" * MAX_PAYLOAD_BYTES + b'"}',
    "keys-10k": b"{" + b",".join(b'"k%d":0' % i for i in range(10_000)) + b"}",
    "list-100k": b"[" + b",".join([b"0"] * 100_000) + b"]",
    "binary-64k": bytes(range(256)) * 256,
    "utf8-bom-only": b"\xef\xbb\xbf",
    "version-only": b'{"schema_version":1}',
}
_LARGE = frozenset({"string-1mb", "version-1mb", "over-max", "keys-10k", "list-100k", "binary-64k"})


_ALL_SPECIAL = sorted(SPECIAL_PAYLOADS)
_SMALL_SPECIAL = sorted(set(SPECIAL_PAYLOADS) - _LARGE)


def _special(rnd: random.Random) -> Payload:
    # the large ones a few times in ten thousand examples
    name = rnd.choice(_ALL_SPECIAL if rnd.randrange(50) == 0 else _SMALL_SPECIAL)
    return Payload(f"special:{name}", raw=SPECIAL_PAYLOADS[name])


# --- the mix --------------------------------------------------------------------------------


@st.composite
def payloads(
    draw: st.DrawFn, model: type[Message], ctx: Context, target: str | None = None
) -> Payload:
    """A payload for a topic of `model`: valid, mutated, byte-edited, special or random.

    `target`: the device or socket the topic is about (None: a topic of no configured one),
    so that `kind == "valid"` is a message its service should take.
    """
    rnd = random.Random(draw(_SEEDS))
    roll = rnd.randrange(100)
    if roll < 12:
        sane = roll < 6 and (target is not None or model in _NO_TARGET)
        doc = valid_doc(model, ctx, target, sane, rnd.getrandbits(32))
        return Payload("valid" if sane else "valid-wild", doc)
    if roll < 55:
        doc = valid_doc(model, ctx, target, rnd.random() < 0.5, rnd.getrandbits(32))
        kind, bad = _mutate(draw, rnd, doc)
        return Payload(kind, bad)
    if roll < 67:
        doc = valid_doc(model, ctx, target, True, rnd.getrandbits(32))
        kind, edits = _byte_edits(rnd)
        return Payload(kind, doc, edits=edits)
    if roll < 80:
        return _special(rnd)
    if roll < 90:
        return Payload("json", random_json(rnd))
    return Payload("binary", raw=draw(_BINARY))


#: Topics about no device or socket (their sane messages need no target).
_NO_TARGET = frozenset(
    {
        HouseSurplus,
        Forecast,
        ForecastRequest,
        PlanMessage,
        EnergyBooks,
        Prices,
        BatteryCommand,
        BatteryOverrideRequest,
        BatteryState,
        CostSummary,
    }
)


# --- topics without a message model ---------------------------------------------------------


_WORDS = (b"online", b"offline")
_PADS = (b" ", b"\n", b"\r\n", b"\t")
_NEAR_WORDS = (b"Online", b"ONLINE", b"on", b"1", b'"online"', b"online\x00", b"onlinee", b"")


@st.composite
def availability_payloads(draw: st.DrawFn) -> Payload:
    """Home Assistant's birth / last-will payloads, and anything else."""
    rnd = random.Random(draw(_SEEDS))
    roll = rnd.randrange(100)
    if roll < 15:
        return Payload("valid", raw=rnd.choice(_WORDS))
    if roll < 25:
        word, pad = rnd.choice(_WORDS), rnd.choice(_PADS)
        return Payload("valid-padded", raw=pad + word + pad)
    if roll < 45:
        return Payload("near", raw=rnd.choice(_NEAR_WORDS))
    if roll < 60:
        return _special(rnd)
    if roll < 80:
        return Payload("binary", raw=draw(_BINARY))
    return Payload("text", raw=draw(_TEXT).encode("utf-8", "surrogatepass"))


@st.composite
def discovery_payloads(draw: st.DrawFn, config: dict[str, Any], base: str) -> Payload:
    """Discovery configs: this installation's (valid JSON, maybe mangled), foreign, garbage."""
    rnd = random.Random(draw(_SEEDS))
    roll = rnd.randrange(100)
    if roll < 20:
        return Payload("valid", _copy(config))
    if roll < 30:  # another installation's: must never be removed
        other = _copy(config)
        assert isinstance(other, dict)
        if rnd.random() < 0.5:
            other["origin"] = {"name": "zigbee2mqtt"}
        else:
            other["components"] = {"x": {"availability": [{"topic": "elsewhere/x"}]}}
        return Payload("foreign", other)
    if roll < 65:
        kind, bad = _mutate(draw, rnd, _copy(config))  # type: ignore[arg-type]
        return Payload(kind, bad)
    if roll < 75:
        kind, edits = _byte_edits(rnd)
        return Payload(kind, _copy(config), edits=edits)
    if roll < 88:
        return _special(rnd)
    if roll < 94:
        return Payload("json", random_json(rnd))
    return Payload("binary", raw=draw(_BINARY))
