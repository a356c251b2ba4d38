"""The prices service: energy prices per step for today and tomorrow, on `<base>/prices`.

One retained `Prices` message: all-in import and export per step (EUR/kWh) from today's local
midnight to the end of what is known: today, and tomorrow once it is out (~13:00).

* `source = "fixed"`: the fixed tariff, today and tomorrow, published again each midnight.
* `energyzero` / `entsoe`: the day-ahead prices of each local day (`services.prices.sources`),
  made all-in by the contract (`shared.prices.Tariff`); today's at start and each midnight,
  tomorrow's from `tomorrow_from` (13:00) every `tomorrow_poll_s` until they come.
* A failed fetch is tried again after `retry_min_s`, doubling up to `retry_max_s`. Meanwhile the
  last known prices are kept as long as they cover now (at start, the retained message of this
  service counts as known). Once they do not, the fixed tariff stands in, published with
  `source: fixed` and `fallback: true` (and logged), until the source answers again.

The message is published only when its content changes (and at each midnight, when the day
it starts on moves). Counters: `fetches_ok`, `fetches_failed`, `fetches_failed_<kind>`,
`not_published_yet`, `fallbacks`, `prices_published`, `messages_dropped_prices`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta
from typing import Protocol

import httpx

from services.prices.sources import (
    EnergyZeroSource,
    EntsoeSource,
    PriceSource,
    SourceError,
    local_day,
)
from shared.clock import Clock
from shared.config import DevicesConfig, Settings
from shared.messages import Message, MessageError, Prices, parse_message
from shared.prices import (
    MAX_ABS_EUR_KWH,
    NotPublishedError,
    PriceSeries,
    Tariff,
    combine,
    dynamic_prices,
    fixed_prices,
)
from shared.service import Counters, Handler, RateLimitedLog, Service, run_service, with_timeout
from shared.topics import Topics

__all__ = ["SERVICE_NAME", "PriceKeeper", "app", "main", "make_source"]

SERVICE_NAME = "prices"
#: A retained message stamped this far ahead of the clock is refused (clock skew), s.
MAX_FUTURE_S = 120.0
#: After connecting, wait this long for the retained prices (the last known), s.
RESTORE_WAIT_S = 1.0
#: Most bytes of a retained prices message read back.
MAX_RETAINED_BYTES = 2 * 1024 * 1024


class Runtime(Protocol):
    """What the keeper needs of the service runtime (a `Service`, or a test's stand-in)."""

    @property
    def clock(self) -> Clock: ...

    @property
    def counters(self) -> Counters: ...

    @property
    def topics(self) -> Topics: ...

    @property
    def log(self) -> logging.Logger: ...

    def publish(self, topic: str, payload: Message) -> None: ...

    def subscribe(self, topic_filter: str, handler: Handler) -> None: ...


class PriceKeeper:
    """Fetches, keeps and publishes the prices; see the module docstring."""

    def __init__(self, runtime: Runtime, settings: Settings, source: PriceSource | None) -> None:
        self._rt = runtime
        self._clock = runtime.clock
        self._log = runtime.log
        self._counters = runtime.counters
        self._tz = settings.tz
        self._ps = settings.prices
        self._tariff = Tariff.from_settings(settings.prices)
        self._source = source
        self._rate_log = RateLimitedLog(self._log, self._clock)
        #: The day-ahead prices known (bare, EUR/kWh), from today's midnight on.
        self.series: PriceSeries | None = None
        #: When the newest part of `series` was fetched.
        self.made_at: datetime | None = None
        self.published: Prices | None = None
        self.failures = 0
        self.retry_at: datetime | None = None
        self.in_fallback = False
        self._restored = asyncio.Event()

    # --- the loop -------------------------------------------------------------------------------

    def subscribe(self) -> None:
        """Read our own retained prices back (the last known), before the service connects."""
        self._rt.subscribe(self._rt.topics.prices(), self.on_retained)

    async def run(self, wait_connected: Callable[[], Awaitable[None]] | None = None) -> None:
        """Read back the last prices, then keep them current until cancelled."""
        if wait_connected is not None:
            with contextlib.suppress(TimeoutError):
                await with_timeout(self._clock, 30.0, wait_connected(), work=True)
        if self._source is not None:
            with contextlib.suppress(TimeoutError):
                await with_timeout(self._clock, RESTORE_WAIT_S, self._restored.wait(), work=True)
        self._restored.set()
        what = "the fixed tariff" if self._source is None else self._source.name
        self._log.info(
            "prices from %s (area %s), import = (day-ahead + %.4f + %.4f) x %.2f, "
            "export = day-ahead - %.4f; fixed %.4f / %.4f EUR/kWh",
            what,
            self._ps.area,
            self._tariff.supplier_markup,
            self._tariff.energy_tax,
            1 + self._tariff.vat_pct / 100,
            self._tariff.feed_in_fee,
            self._tariff.fixed_import,
            self._tariff.fixed_export_price,
        )
        while True:
            try:
                await self.update()
            except Exception as err:  # a bug: counted and logged, tried again later
                self._counters.inc("price_errors")
                self._log.error("updating the prices failed unexpectedly", exc_info=err)
                self._failed("error", str(err) or type(err).__name__)
            await self._clock.sleep_until(self.next_wake(self._clock.now()))

    def _day(self, now: datetime) -> date:
        return now.astimezone(self._tz).date()

    def _wanted(self, now: datetime) -> list[date]:
        today = self._day(now)
        days = [today]
        if now.astimezone(self._tz).time() >= self._ps.tomorrow_from:
            days.append(today + timedelta(days=1))
        return days

    def covers(self, day: date) -> bool:
        """Whether the known prices cover the whole local `day`."""
        if self.series is None:
            return False
        start, end = local_day(day, self._tz)
        return self.series.start <= start and self.series.end >= end

    async def update(self) -> Prices:
        """Fetch what is missing (today, tomorrow once due), then publish; the message."""
        now = self._clock.now()
        if self._source is not None:
            ok = True
            for day in self._wanted(now):
                if not self.covers(day):
                    ok = await self._fetch(day, now) and ok
            if ok:
                self.failures = 0
                self.retry_at = None
        return self.publish(self._clock.now())

    async def _fetch(self, day: date, now: datetime) -> bool:
        """Fetch one day; False when it failed (a day not out yet is no failure)."""
        assert self._source is not None
        today = self._day(now)
        try:
            part = await self._source.fetch(day)
        except NotPublishedError as err:
            if day > today:
                self._counters.inc("not_published_yet")
                self._log.info("%s: not out yet; asking again later", err)
                return True
            self._failed("not_published", str(err))
            return False
        except SourceError as err:
            self._failed(err.kind, str(err))
            return False
        except Exception as err:  # a library surprise: a failure like any other
            self._failed("error", f"{type(err).__name__}: {err}")
            return False
        self._counters.inc("fetches_ok")
        self._rate_log.reset("fetch")
        start, _ = local_day(today, self._tz)
        merged = combine([p for p in (self.series, part) if p is not None])
        self.series = merged.window(start, merged.end) if merged is not None else None
        self.made_at = self._clock.now()
        self._log.info(
            "%s prices for %s: %d steps of %d s, %.3f..%.3f EUR/kWh day-ahead",
            self._source.name,
            day.isoformat(),
            len(part.values),
            part.step_s,
            min(part.values),
            max(part.values),
        )
        return True

    def _failed(self, kind: str, message: str) -> None:
        self.failures += 1
        self._counters.inc("fetches_failed")
        self._counters.inc(f"fetches_failed_{kind}")
        delay = min(self._ps.retry_min_s * 2.0 ** min(self.failures - 1, 30), self._ps.retry_max_s)
        self.retry_at = self._clock.now() + timedelta(seconds=delay)
        self._rate_log.log(
            "fetch",
            logging.WARNING,
            "fetching prices failed (%s): %s; again in %.0f s",
            kind,
            message,
            delay,
        )

    def next_wake(self, now: datetime) -> datetime:
        """When to look again: a retry, tomorrow's prices, or the next midnight."""
        today = self._day(now)
        _, midnight = local_day(today, self._tz)
        times = [midnight + timedelta(seconds=1)]
        if self._source is not None:
            if self.retry_at is not None:
                times.append(self.retry_at)
            tomorrow = today + timedelta(days=1)
            if self.retry_at is None and not self.covers(tomorrow):
                local = now.astimezone(self._tz)
                due = datetime.combine(today, self._ps.tomorrow_from, self._tz)
                if local < due:
                    times.append(due)
                else:
                    times.append(now + timedelta(seconds=self._ps.tomorrow_poll_s))
        return max(now, min(times))

    # --- publishing -------------------------------------------------------------------------

    def current(self, now: datetime) -> Prices:
        """The message for `now`: the known prices while they cover now, else the fixed
        tariff (flagged as a fallback when a dynamic source is configured)."""
        today_start, _ = local_day(self._day(now), self._tz)
        series = self.series
        if self._source is not None and series is not None and series.at(now) is not None:
            part = series.window(today_start, series.end)
            if part is not None:
                return dynamic_prices(
                    part,
                    self._tariff,
                    source="energyzero" if self._source.name == "energyzero" else "entsoe",
                    area=self._ps.area,
                    made_at=self.made_at or now,
                    now=now,
                )
        _, tomorrow_end = local_day(self._day(now) + timedelta(days=1), self._tz)
        return fixed_prices(
            today_start,
            tomorrow_end,
            self._tariff,
            now=now,
            fallback=self._source is not None,
        )

    def publish(self, now: datetime) -> Prices:
        """Publish the current prices if they differ from the last published; the message."""
        message = self.current(now)
        fallback = message.fallback
        if fallback and not self.in_fallback:
            self._counters.inc("fallbacks")
            self._log.warning(
                "no %s prices cover now: the fixed tariff stands in (flagged fallback)",
                self._source.name if self._source else "dynamic",
            )
        elif self.in_fallback and not fallback:
            self._log.info("%s prices are back", message.source)
        self.in_fallback = fallback
        last = self.published
        if last is not None and _same(last, message):
            return last
        self.published = message
        self._rt.publish(self._rt.topics.prices(), message)
        self._counters.inc("prices_published")
        return message

    # --- the retained message (the last known prices) ---------------------------------------

    async def on_retained(self, topic: str, payload: bytes) -> None:
        """Our own retained prices: read back once at start as the last known.

        An unusable payload is a `MessageError`: a counted, logged drop (by the runtime).
        """
        if len(payload) > MAX_RETAINED_BYTES:
            raise MessageError(f"(payload): larger than {MAX_RETAINED_BYTES} bytes")
        message = parse_message(Prices, payload)
        ahead = (message.made_at - self._clock.now()).total_seconds()
        if ahead > MAX_FUTURE_S:
            raise MessageError(f"made_at: {ahead:.0f} s in the future", "made_at")
        values = message.day_ahead_eur_kwh or []
        if any(abs(v) > MAX_ABS_EUR_KWH for v in values):
            raise MessageError("day_ahead_eur_kwh: a price out of range", "day_ahead_eur_kwh")
        try:
            _ = message.end
        except OverflowError:  # a time at the edge of the calendar (year 1 or 9999)
            raise MessageError("start: the prices run out of the calendar", "start") from None
        if self._restored.is_set():
            return  # our own message coming back
        source = self._source
        if (
            source is not None
            and message.source == source.name
            and not message.fallback
            and message.day_ahead_eur_kwh is not None
        ):
            self.series = PriceSeries(
                message.start, message.step_s, tuple(message.day_ahead_eur_kwh)
            )
            self.made_at = message.made_at
            self._counters.inc("prices_restored")
            self._log.info(
                "last known %s prices read back (%s to %s)",
                message.source,
                message.start.isoformat(),
                message.end.isoformat(),
            )
        self._restored.set()


def _same(a: Prices, b: Prices) -> bool:
    keys = ("start", "step_s", "import_eur_kwh", "export_eur_kwh", "source", "fallback", "area")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


# --- the service -------------------------------------------------------------------------------


def make_source(settings: Settings, http: httpx.AsyncClient) -> PriceSource | None:
    """The configured day-ahead source (None: the fixed tariff)."""
    ps = settings.prices
    if ps.source == "energyzero":
        return EnergyZeroSource(http, ps.energyzero_url, settings.tz)
    if ps.source == "entsoe":
        assert ps.entsoe_token is not None  # the settings refuse entsoe without one
        return EntsoeSource(
            http, ps.entsoe_url, ps.entsoe_token.get_secret_value(), ps.eic, settings.tz
        )
    return None


async def app(service: Service, devices: DevicesConfig) -> None:
    """The prices service's work inside the service runtime."""
    del devices  # prices are the same whatever the house holds
    settings = service.settings
    timeout = httpx.Timeout(settings.prices.http_timeout_s)
    headers = {"User-Agent": f"hwsched/{service.version}"}
    async with httpx.AsyncClient(timeout=timeout, headers=headers) as http:
        keeper = PriceKeeper(service, settings, make_source(settings, http))
        keeper.subscribe()
        await keeper.run(service.wait_connected)


def main() -> int:
    """`python -m services.prices`: settings from config/settings.toml and HWSCHED_*."""
    return run_service(SERVICE_NAME, app)
