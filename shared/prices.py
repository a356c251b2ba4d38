"""Energy prices, pure: reading day-ahead answers, the contract's all-in prices, resampling.

No I/O, no clock (every time is an argument). The prices service (`services.prices`) fetches
and publishes; the scheduler resamples the published prices onto its plan's steps.

* **Day-ahead answers** become a `PriceSeries` (EUR/kWh per step from `start`, contiguous):
  `parse_energyzero` reads EnergyZero's public REST answer (`/public/v1/prices`: streams
  `base`, `base_with_vat`, `all_in`, `all_in_with_vat`, each a list of `{start, end, price:
  {value}}`; `base` is the bare day-ahead price), `parse_entsoe` ENTSO-E's A44 price document
  (`Publication_MarketDocument`: `TimeSeries` → `Period` → `Point`s of `price.amount` in
  EUR/MWh; curve type A03 leaves out a point that repeats the one before; an
  `Acknowledgement_MarketDocument` with reason 999 "No matching data found" means "not
  published yet", any other reason is a refusal).
  `NotPublishedError` (a day not out yet) and `PriceFormatError` (anything unusable) are the
  two ways they fail, each with one line saying why.
* **The contract** (`Tariff`): a dynamic contract's all-in import per step is
  `(day-ahead + markup + energy tax) x (1 + VAT)`, export `day-ahead − feed-in fee`; a fixed
  tariff is the same two numbers all day. `dynamic_prices` / `fixed_prices` make the `Prices`
  message.
* **Resampling** (`price_steps`): the overlap-weighted mean price over each plan step; where
  the prices do not reach (tomorrow before ~13:00) the price at the same time a day earlier
  stands in (a persistence forecast), counted as `estimated`.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from shared.config import PriceSettings
from shared.messages import Prices

__all__ = [
    "MAX_ABS_EUR_KWH",
    "NotPublishedError",
    "PriceError",
    "PriceFormatError",
    "PriceSeries",
    "StepPrices",
    "Tariff",
    "combine",
    "dynamic_prices",
    "fixed_prices",
    "parse_energyzero",
    "parse_entsoe",
    "price_at",
    "price_steps",
]

#: The largest price taken as real, EUR/kWh (the day-ahead market's limits are +4 and −0.5).
MAX_ABS_EUR_KWH = 10.0
#: The largest answer read (a day-ahead answer is a few hundred kB at most).
MAX_ANSWER_BYTES = 4 * 1024 * 1024
_DAY_S = 86_400
#: Days back the resampling looks for a stand-in price.
_BACK_DAYS = 7


class PriceError(ValueError):
    """A price answer that cannot be used (one line)."""


class NotPublishedError(PriceError):
    """The source has no prices for that period (yet): not a failure of the source."""


class PriceFormatError(PriceError):
    """An answer that is not what the source's format promises."""


# --- the series ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PriceSeries:
    """Prices per step from `start` (aware), EUR/kWh: `values[k]` holds over
    `[start + k·step_s, start + (k+1)·step_s)`."""

    start: datetime
    step_s: int
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValueError("PriceSeries.start must be aware")
        if self.step_s <= 0 or not self.values:
            raise ValueError("PriceSeries needs a step > 0 and at least one value")

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.step_s * len(self.values))

    def at(self, when: datetime) -> float | None:
        """The price in force at `when`, or None outside the series."""
        offset = (when - self.start).total_seconds()
        if offset < 0:
            return None
        k = math.floor(offset / self.step_s)
        return self.values[k] if k < len(self.values) else None

    def window(self, start: datetime, end: datetime) -> PriceSeries | None:
        """The whole steps overlapping `[start, end)`, or None when none do."""
        first = max(0, math.floor((start - self.start).total_seconds() / self.step_s))
        last = min(len(self.values), math.ceil((end - self.start).total_seconds() / self.step_s))
        if last <= first:
            return None
        return PriceSeries(
            self.start + timedelta(seconds=first * self.step_s),
            self.step_s,
            self.values[first:last],
        )


def _check_price(value: float, where: str) -> float:
    if not math.isfinite(value) or abs(value) > MAX_ABS_EUR_KWH:
        raise PriceFormatError(f"{where}: price {value!r} EUR/kWh is out of range")
    return value


def _series_from_slots(slots: dict[datetime, float], step_s: int, what: str) -> PriceSeries:
    """Contiguous steps of `step_s` from the earliest slot; a gap is a PriceFormatError."""
    if not slots:
        raise NotPublishedError(f"{what}: no prices in the answer")
    times = sorted(slots)
    for a, b in itertools.pairwise(times):
        if (b - a).total_seconds() != step_s:
            raise PriceFormatError(
                f"{what}: prices missing between {a.isoformat()} and {b.isoformat()}"
            )
    return PriceSeries(times[0], step_s, tuple(slots[t] for t in times))


def combine(parts: Iterable[PriceSeries]) -> PriceSeries | None:
    """One contiguous series from several (e.g. today and tomorrow), on the finest step.

    Where they overlap, a later part wins. A gap between parts ends the series at the gap
    (what follows it is left out). None without parts.
    """
    items = sorted(parts, key=lambda p: p.start)
    if not items:
        return None
    step = math.gcd(*(p.step_s for p in items))
    slots: dict[datetime, float] = {}
    for part in items:
        repeat = part.step_s // step
        for k, value in enumerate(part.values):
            first = part.start + timedelta(seconds=k * part.step_s)
            for j in range(repeat):
                slots[first + timedelta(seconds=j * step)] = value
    times = sorted(slots)
    out = [times[0]]
    for t in times[1:]:
        if (t - out[-1]).total_seconds() != step:
            break
        out.append(t)
    return PriceSeries(out[0], step, tuple(slots[t] for t in out))


# --- EnergyZero --------------------------------------------------------------------------------


def _utc(text: object, where: str) -> datetime:
    if not isinstance(text, str) or len(text) > 40:
        raise PriceFormatError(f"{where}: not a time")
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise PriceFormatError(f"{where}: not an ISO 8601 time: {text[:40]!r}") from None
    if when.tzinfo is None:
        raise PriceFormatError(f"{where}: a time without offset: {text[:40]!r}")
    return when.astimezone(UTC)


def _number(value: object, where: str) -> float:
    if isinstance(value, bool):
        raise PriceFormatError(f"{where}: not a number")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and len(value) <= 40:
        try:
            return float(value)
        except ValueError:
            pass
    raise PriceFormatError(f"{where}: not a number: {str(value)[:40]!r}")


def parse_energyzero(body: bytes | str, stream: str = "base") -> PriceSeries:
    """EnergyZero's `GET /public/v1/prices?energyType=ENERGY_TYPE_ELECTRICITY&date=DD-MM-YYYY
    &interval=INTERVAL_QUARTER` answer: the `stream` (`base`: the bare day-ahead price,
    EUR/kWh excl. VAT) as one series. The step comes from the entries' start and end
    (15 min, or an hour for an hourly answer)."""
    if len(body) > MAX_ANSWER_BYTES:
        raise PriceFormatError(f"EnergyZero: answer larger than {MAX_ANSWER_BYTES} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise PriceFormatError("EnergyZero: the answer is not JSON") from None
    if not isinstance(data, dict):
        raise PriceFormatError("EnergyZero: the answer is not a JSON object")
    entries = data.get(stream)
    if entries is None:
        raise PriceFormatError(f"EnergyZero: no {stream!r} prices in the answer")
    if not isinstance(entries, list):
        raise PriceFormatError(f"EnergyZero: {stream!r} is not a list")
    if not entries:
        raise NotPublishedError("EnergyZero: no prices for that day (yet)")
    slots: dict[datetime, float] = {}
    steps: set[int] = set()
    for i, item in enumerate(entries):
        where = f"EnergyZero {stream}[{i}]"
        if not isinstance(item, dict):
            raise PriceFormatError(f"{where}: not an object")
        start = _utc(item.get("start"), f"{where}.start")
        end = _utc(item.get("end"), f"{where}.end")
        step = round((end - start).total_seconds())
        if step <= 0 or step > _DAY_S:
            raise PriceFormatError(f"{where}: end is not after start")
        price = item.get("price")
        value = price.get("value") if isinstance(price, dict) else None
        slots[start] = _check_price(_number(value, f"{where}.price.value"), where)
        steps.add(step)
    if len(steps) != 1:
        raise PriceFormatError(f"EnergyZero: entries of different lengths {sorted(steps)} s")
    return _series_from_slots(slots, steps.pop(), "EnergyZero")


# --- ENTSO-E -----------------------------------------------------------------------------------

_RESOLUTION = re.compile(r"PT(\d+)M|PT(\d+)H|P1D")
_SEQUENCE = "classificationSequence_AttributeInstanceComponent.position"
_NO_DATA_CODE = "999"


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _child(element: ET.Element, name: str) -> ET.Element | None:
    for child in element:
        if _local(child.tag) == name:
            return child
    return None


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if _local(child.tag) == name]


def _text(element: ET.Element, path: Sequence[str], where: str) -> str:
    node: ET.Element | None = element
    for name in path:
        node = _child(node, name) if node is not None else None
    if node is None or node.text is None or not node.text.strip():
        raise PriceFormatError(f"{where}: no {'/'.join(path)}")
    return node.text.strip()


def _optional_text(element: ET.Element, path: Sequence[str]) -> str | None:
    try:
        return _text(element, path, "")
    except PriceFormatError:
        return None


def _resolution_s(text: str, where: str) -> int:
    found = _RESOLUTION.fullmatch(text)
    if found is None:
        raise PriceFormatError(f"{where}: unknown resolution {text[:20]!r}")
    if text == "P1D":
        return _DAY_S
    minutes, hours = found.groups()
    return int(minutes) * 60 if minutes is not None else int(hours) * 3600


@dataclass(frozen=True, slots=True)
class _Candidate:
    step_s: int
    sequence: int
    slots: dict[datetime, float]


def _period_slots(period: ET.Element, curve: str, where: str) -> tuple[int, dict[datetime, float]]:
    start = _utc(_text(period, ("timeInterval", "start"), where), f"{where}.timeInterval.start")
    end = _utc(_text(period, ("timeInterval", "end"), where), f"{where}.timeInterval.end")
    step = _resolution_s(_text(period, ("resolution",), where), f"{where}.resolution")
    span = (end - start).total_seconds()
    if span <= 0 or span % step:
        raise PriceFormatError(f"{where}: the interval is not a whole number of steps")
    n = round(span / step)
    given: dict[int, float] = {}
    for point in _children(period, "Point"):
        raw = _text(point, ("position",), f"{where}.Point")
        if not raw.isdigit() or not 1 <= int(raw) <= n:
            raise PriceFormatError(f"{where}: position {raw[:10]!r} outside 1..{n}")
        amount = _number(_text(point, ("price.amount",), f"{where}.Point"), f"{where}.Point")
        given[int(raw)] = _check_price(round(amount / 1000.0, 9), f"{where} position {raw}")
    if 1 not in given:
        raise PriceFormatError(f"{where}: no price at position 1")
    slots: dict[datetime, float] = {}
    last = given[1]
    for position in range(1, n + 1):
        if position in given:
            last = given[position]
        elif curve != "A03":  # A01: every position is given
            raise PriceFormatError(f"{where}: no price at position {position}")
        slots[start + timedelta(seconds=(position - 1) * step)] = last
    return step, slots


def _parse_xml(body: bytes | str, what: str) -> ET.Element:
    if len(body) > MAX_ANSWER_BYTES:
        raise PriceFormatError(f"{what}: answer larger than {MAX_ANSWER_BYTES} bytes")
    head = body[:4096].lower() if isinstance(body, bytes) else body[:4096].lower().encode()
    if b"<!doctype" in head or b"<!entity" in head:  # no entity expansion, ever
        raise PriceFormatError(f"{what}: an XML answer with a DOCTYPE is refused")
    try:
        return ET.fromstring(body)
    except ET.ParseError as err:
        raise PriceFormatError(f"{what}: not XML ({err})") from None


def parse_entsoe(body: bytes | str) -> PriceSeries:
    """An ENTSO-E transparency platform A44 answer (day-ahead prices) as one series.

    Several TimeSeries may come (the periods of one series, several days, and since the
    15-minute market also an hourly series next to the quarter-hourly one): the finest
    resolution is taken, then the lowest `classificationSequence` position; its periods
    join into one series (EUR/MWh → EUR/kWh).
    """
    root = _parse_xml(body, "ENTSO-E")
    kind = _local(root.tag)
    if kind == "Acknowledgement_MarketDocument":
        code = _optional_text(root, ("Reason", "code"))
        reason = (_optional_text(root, ("Reason", "text")) or "no reason given")[:200]
        if code == _NO_DATA_CODE and reason.lower().startswith("no matching data"):
            raise NotPublishedError(f"ENTSO-E: no prices for that period (yet): {reason}")
        raise PriceFormatError(f"ENTSO-E refused the request (reason {code}): {reason}")
    if kind != "Publication_MarketDocument":
        raise PriceFormatError(f"ENTSO-E: a {kind[:60]}, not a Publication_MarketDocument")
    candidates: list[_Candidate] = []
    for i, series in enumerate(_children(root, "TimeSeries")):
        where = f"ENTSO-E TimeSeries[{i}]"
        currency = _optional_text(series, ("currency_Unit.name",))
        unit = _optional_text(series, ("price_Measure_Unit.name",))
        if currency not in (None, "EUR") or unit not in (None, "MWH"):
            raise PriceFormatError(f"{where}: prices in {currency}/{unit}, not EUR/MWH")
        curve = _optional_text(series, ("curveType",)) or "A01"
        raw_seq = _optional_text(series, (_SEQUENCE,))
        sequence = int(raw_seq) if raw_seq is not None and raw_seq.isdigit() else 1
        by_step: dict[int, dict[datetime, float]] = {}
        for j, period in enumerate(_children(series, "Period")):
            step, got = _period_slots(period, curve, f"{where}.Period[{j}]")
            by_step.setdefault(step, {}).update(got)
        for step, got in by_step.items():
            candidates.append(_Candidate(step, sequence, got))
    if not candidates:
        raise NotPublishedError("ENTSO-E: no prices in the answer")
    best_step = min(c.step_s for c in candidates)
    best_seq = min(c.sequence for c in candidates if c.step_s == best_step)
    slots: dict[datetime, float] = {}
    for c in candidates:
        if c.step_s == best_step and c.sequence == best_seq:
            slots.update(c.slots)
    return _series_from_slots(slots, best_step, "ENTSO-E")


# --- the contract ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tariff:
    """The parts of a contract's prices, EUR/kWh (excl. VAT where it applies)."""

    supplier_markup: float = 0.02
    energy_tax: float = 0.0916
    vat_pct: float = 21.0
    feed_in_fee: float = 0.02
    fixed_import: float = 0.27
    fixed_export: float = 0.07

    @classmethod
    def from_settings(cls, settings: PriceSettings) -> Tariff:
        return cls(
            supplier_markup=settings.supplier_markup_eur_kwh,
            energy_tax=settings.energy_tax_eur_kwh,
            vat_pct=settings.vat_pct,
            feed_in_fee=settings.feed_in_fee_eur_kwh,
            fixed_import=settings.fixed_import_eur_kwh,
            fixed_export=settings.fixed_export_eur_kwh,
        )

    def import_price(self, day_ahead: float) -> float:
        """All-in import: (day-ahead + markup + energy tax) x (1 + VAT)."""
        return (day_ahead + self.supplier_markup + self.energy_tax) * (1 + self.vat_pct / 100)

    def export_price(self, day_ahead: float) -> float:
        """What a kWh exported earns: day-ahead − feed-in fee (negative: it costs)."""
        return day_ahead - self.feed_in_fee

    @property
    def fixed_export_price(self) -> float:
        return self.fixed_export - self.feed_in_fee


def _r(value: float) -> float:
    return round(value, 6)


def dynamic_prices(
    series: PriceSeries,
    tariff: Tariff,
    *,
    source: Literal["energyzero", "entsoe"],
    area: str,
    made_at: datetime,
    now: datetime,
) -> Prices:
    """The `Prices` message of day-ahead prices under a dynamic contract."""
    return Prices(
        timestamp=now,
        start=series.start,
        step_s=series.step_s,
        import_eur_kwh=[_r(tariff.import_price(v)) for v in series.values],
        export_eur_kwh=[_r(tariff.export_price(v)) for v in series.values],
        day_ahead_eur_kwh=[_r(v) for v in series.values],
        source=source,
        fallback=False,
        made_at=made_at,
        area=area,
    )


def fixed_prices(
    start: datetime,
    end: datetime,
    tariff: Tariff,
    *,
    now: datetime,
    step_s: int = 900,
    fallback: bool = False,
) -> Prices:
    """The fixed tariff over `[start, end)` in steps of `step_s` (`fallback`: standing in
    for a dynamic source that failed)."""
    n = max(1, math.ceil((end - start).total_seconds() / step_s))
    return Prices(
        timestamp=now,
        start=start,
        step_s=step_s,
        import_eur_kwh=[_r(tariff.fixed_import)] * n,
        export_eur_kwh=[_r(tariff.fixed_export_price)] * n,
        source="fixed",
        fallback=fallback,
        made_at=now,
    )


# --- resampling onto plan steps --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepPrices:
    """Prices per plan step, EUR/kWh, and how many steps were (partly) estimated."""

    import_eur_kwh: list[float]
    export_eur_kwh: list[float]
    estimated: int = 0


def _series_of(prices: Prices) -> tuple[PriceSeries, PriceSeries]:
    return (
        PriceSeries(prices.start, prices.step_s, tuple(prices.import_eur_kwh)),
        PriceSeries(prices.start, prices.step_s, tuple(prices.export_eur_kwh)),
    )


def price_at(prices: Prices, when: datetime) -> tuple[float, float] | None:
    """(import, export) in force at `when`, EUR/kWh, or None outside the prices."""
    imp, exp = _series_of(prices)
    a, b = imp.at(when), exp.at(when)
    return None if a is None or b is None else (a, b)


def _value(series: PriceSeries, offset_s: float) -> tuple[float, bool, float]:
    """(price, estimated, seconds it holds from `offset_s`) at `offset_s` after the start.

    Outside the series: the same time whole days earlier (or later) that it covers, else the
    nearest end's price.
    """
    step, n = series.step_s, len(series.values)
    length = step * n
    if 0 <= offset_s < length:
        k = math.floor(offset_s / step)
        return series.values[k], False, (k + 1) * step - offset_s
    for days in range(1, _BACK_DAYS + 1):
        shift = days * _DAY_S * (1 if offset_s >= length else -1)
        shifted = offset_s - shift
        if 0 <= shifted < length:
            k = math.floor(shifted / step)
            return series.values[k], True, (k + 1) * step - shifted
    value = series.values[-1] if offset_s >= length else series.values[0]
    until = math.inf if offset_s >= length else -offset_s
    return value, True, until


def _mean(series: PriceSeries, a: float, b: float) -> tuple[float, bool]:
    total = 0.0
    estimated = False
    t = a
    while t < b - 1e-9:
        value, guess, left = _value(series, t)
        piece = min(b - t, max(left, 1e-6))
        total += value * piece
        estimated = estimated or guess
        t += piece
    return total / (b - a), estimated


def price_steps(prices: Prices, start: datetime, step_s: int, n_steps: int) -> StepPrices:
    """The mean import and export price over each plan step from `start`.

    Steps the prices do not (fully) cover use the price a whole day earlier (or later) where
    known, else the nearest known price: each such step counts in `estimated`.
    """
    imp, exp = _series_of(prices)
    offset = (start - prices.start).total_seconds()
    out_i: list[float] = []
    out_e: list[float] = []
    estimated = 0
    for k in range(n_steps):
        a = offset + k * step_s
        b = a + step_s
        vi, gi = _mean(imp, a, b)
        ve, _ = _mean(exp, a, b)
        out_i.append(_r(vi))
        out_e.append(_r(ve))
        estimated += int(gi)
    return StepPrices(out_i, out_e, estimated)
