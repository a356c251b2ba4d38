"""The scheduler on money: prices into the plan, battery commands and the day's cost out.

The pure parts are `services.scheduler.pricing`; this is the state and the messages around
them, called from the plan loop at two points (`price` after the problem is made, `publish`
after the plan message is made) and from three subscriptions:

* `<base>/prices` (retained): the latest `Prices` (a newer `made_at` wins; a fallback gives
  way to real prices made at the same time or later);
* `<base>/batteries` (retained): the actuator's `BatteryState`: the mode in force (the plan's
  `initial_battery_mode`) and whether a person holds the batteries in the app;
* `<base>/cost` (retained, its own): read back once at start, so today's figures and the
  meter's counters survive a restart;
* the P1 meter's measurements (the scheduler's own subscription hands them over):
  today's import and export and their cost, stretch by stretch (`pricing.meter_sample`).

With prices, each plan: the problem gets `import_price` / `export_price` per step,
`optional_grid_price_max` (setting), `battery_modes` (the P1 meter has a token and no
person holds the batteries) and the batteries' mode now; the plan message gets the battery
modes, the prices, the expected import/export/cost of the plan and of the reference
planner's plan on the same problem (`shared.planning.reference`), and the battery
trajectory under the modes. Without prices: the problem and the plan as before (the
expected and reference import are still given). Each plan also sends one `BatteryCommand`
(the mode of its first step, `zero` without modes) when the batteries can take it, and
publishes the `CostSummary`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol

from shared.clock import Clock
from shared.config import DevicesConfig, Settings
from shared.daytime import day_start
from shared.messages import (
    BatteryCommand,
    BatteryState,
    CostSummary,
    DeviceMeasurement,
    MessageError,
    PlanMessage,
    Prices,
    parse_message,
)
from shared.planning.problem import BatteryMode, Plan
from shared.planning.reference import plan_reference
from shared.planning.simulate import DayOutcome, simulate
from shared.prices import MAX_ABS_EUR_KWH, price_at
from shared.service import Counters, Handler, Publisher, RateLimitedLog
from shared.topics import Topics

from .logic import Prepared
from .pricing import Meter, meter_sample, modes_of, priced_problem, prices_usable

__all__ = ["Money", "PlanMoney"]


class Subscriber(Protocol):
    def subscribe(self, topic_filter: str, handler: Handler) -> None: ...


#: A message time this far ahead of the clock is refused (clock skew), s.
MAX_FUTURE_S = 120.0
#: Larger than any house's day: a kWh or EUR figure beyond this read back is refused.
MAX_DAY_FIGURE = 1e6


@dataclass(frozen=True)
class PlanMoney:
    """What the last plan comes to, and its reference's."""

    made_at: datetime
    plan: DayOutcome
    reference: DayOutcome
    priced: bool
    estimated_steps: int = 0


def _r(value: float | None, digits: int = 4) -> float | None:
    """Rounded, or None when absent or not finite (a figure never breaks a message)."""
    return None if value is None or not math.isfinite(value) else round(value, digits)


class Money:
    """The scheduler's prices, battery inputs, cost meter and money messages."""

    def __init__(
        self,
        devices: DevicesConfig,
        settings: Settings,
        publisher: Publisher,
        *,
        topics: Topics,
        counters: Counters,
        clock: Clock,
        log: logging.Logger,
    ) -> None:
        self.devices = devices
        self.settings = settings
        self._publisher = publisher
        self._topics = topics
        self._counters = counters
        self._clock = clock
        self._log = log
        self._rate_log = RateLimitedLog(log, clock)
        self.has_batteries = bool(devices.batteries)
        self.has_token = devices.p1.battery_token is not None
        self.prices: Prices | None = None
        self.battery_state: BatteryState | None = None
        self.meter = Meter(day_start=self._today())
        self.last: PlanMoney | None = None
        self._restored = False
        self._why_unpriced: str | None = "no prices"
        self._estimated = 0

    def _today(self, when: datetime | None = None) -> datetime:
        at = when if when is not None else self._clock.now()
        return day_start(at, self.settings.tz, self.settings.daily_boundary)

    # --- subscriptions --------------------------------------------------------------------------

    def subscribe(self, service: Subscriber) -> None:
        """Register the handlers (the cost first: its retained copy before the readings)."""
        service.subscribe(self._topics.cost(), self.guard("cost", self.on_cost))
        service.subscribe(self._topics.prices(), self.guard("prices", self.on_prices))
        service.subscribe(self._topics.batteries(), self.guard("batteries", self.on_battery_state))

    def guard(self, kind: str, handle: Handler) -> Handler:
        async def handler(topic: str, payload: bytes) -> None:
            try:
                await handle(topic, payload)
            except MessageError as err:
                self._counters.inc("messages_dropped")
                self._counters.inc(f"messages_dropped_{kind}")
                self._rate_log.log(
                    f"drop:{kind}",
                    logging.WARNING,
                    "dropped a message on %s: %s",
                    topic,
                    err,
                )

        return handler

    def _not_future(self, when: datetime, field: str) -> None:
        ahead = (when - self._clock.now()).total_seconds()
        if ahead > MAX_FUTURE_S:
            raise MessageError(f"{field}: {when.isoformat()} is {ahead:.0f} s in the future", field)

    async def on_prices(self, topic: str, payload: bytes) -> None:
        prices = parse_message(Prices, payload)
        self._not_future(prices.made_at, "made_at")
        try:
            _ = prices.end
        except OverflowError:  # a time at the edge of the calendar (year 1 or 9999)
            raise MessageError("start: the prices run out of the calendar", "start") from None
        for field in ("import_eur_kwh", "export_eur_kwh"):
            if any(abs(v) > MAX_ABS_EUR_KWH for v in getattr(prices, field)):
                raise MessageError(f"{field}: a price beyond {MAX_ABS_EUR_KWH:g} EUR/kWh", field)
        old = self.prices
        if old is not None and prices.made_at < old.made_at and not old.fallback:
            self._counters.inc("prices_older_ignored")
            return
        self.prices = prices
        self._counters.inc("prices_received")

    async def on_battery_state(self, topic: str, payload: bytes) -> None:
        state = parse_message(BatteryState, payload)
        self._not_future(state.timestamp, "timestamp")
        old = self.battery_state
        if old is not None and state.timestamp < old.timestamp:
            return
        self.battery_state = state

    async def on_cost(self, topic: str, payload: bytes) -> None:
        """Our own retained summary: today's figures and the meter's counters, once."""
        summary = parse_message(CostSummary, payload)
        self._not_future(summary.timestamp, "timestamp")
        if summary.meter_read_at is not None:
            self._not_future(summary.meter_read_at, "meter_read_at")
        for field in ("import_today_kwh", "export_today_kwh", "cost_today_eur"):
            value = getattr(summary, field)
            if value is not None and abs(value) > MAX_DAY_FIGURE:
                raise MessageError(f"{field}: {value:g} is not a day's figure", field)
        if self._restored:
            return  # our own copy coming back
        self._restored = True
        today = self._today()
        if summary.day_start != today:
            return
        restored = Meter(
            day_start=summary.day_start,
            import_kwh=summary.import_today_kwh or 0.0,
            export_kwh=summary.export_today_kwh or 0.0,
            cost_eur=summary.cost_today_eur,
            read_at=summary.meter_read_at,
            meter_import_kwh=summary.meter_import_kwh,
            meter_export_kwh=summary.meter_export_kwh,
        )
        now = self.meter
        if (
            now.read_at is not None
            and now.meter_import_kwh is not None
            and now.meter_export_kwh is not None
        ):
            if restored.read_at is None or restored.read_at >= now.read_at:
                return
            # readings came first: count on from the summary's reading to the latest
            restored = meter_sample(
                restored,
                now.read_at,
                now.meter_import_kwh,
                now.meter_export_kwh,
                self.prices,
                today,
            ).meter
        self.meter = restored
        self._counters.inc("cost_restored")

    def on_meter(self, m: DeviceMeasurement) -> None:
        """A P1 meter reading (validated by the scheduler): today's energy and cost."""
        if m.energy_import_kwh is None or m.energy_export_kwh is None:
            return
        try:
            result = meter_sample(
                self.meter,
                m.timestamp,
                m.energy_import_kwh,
                m.energy_export_kwh,
                self.prices,
                self._today(m.timestamp),
            )
        except OverflowError:  # a reading stamped at the edge of the calendar (year 1)
            self._counters.inc("messages_dropped")
            self._counters.inc("messages_dropped_measurement")
            self._rate_log.log(
                "drop:measurement",
                logging.WARNING,
                "dropped a P1 meter reading: timestamp %s out of range",
                m.timestamp.isoformat(),
            )
            return
        if result.reset is not None:
            self._counters.inc("meter_resets")
            self._log.warning("P1 meter counters: %s: counting on from this reading", result.reset)
        self.meter = result.meter

    # --- planning -----------------------------------------------------------------------------

    @property
    def battery_modes(self) -> bool:
        """Whether the plan may use battery modes: the P1's token, no person holding them."""
        state = self.battery_state
        held = state is not None and state.controlled_by == "app"
        return self.has_batteries and self.has_token and not held

    def initial_mode(self) -> BatteryMode | None:
        state = self.battery_state
        return state.mode if state is not None and state.controlled_by != "none" else None

    def price(self, prepared: Prepared, now: datetime) -> Prepared:
        """The prepared problem with prices (when usable) and the battery inputs."""
        if prepared.fallback_reason is not None:
            return prepared
        why = prices_usable(self.prices, now)
        if why != self._why_unpriced:
            if why is None:
                assert self.prices is not None
                self._log.info(
                    "planning on prices (%s%s)",
                    self.prices.source,
                    ", the fixed tariff standing in" if self.prices.fallback else "",
                )
            else:
                self._log.info("planning without prices: %s", why)
            self._why_unpriced = why
        problem, steps = priced_problem(
            prepared.problem,
            self.prices if why is None else None,
            optional_grid_price_max=self.settings.prices.optional_grid_price_max_eur_kwh,
            battery_modes=self.battery_modes,
            initial_battery_mode=self.initial_mode(),
        )
        if steps is not None and steps.estimated:
            self._counters.inc("plans_prices_estimated")
        self._estimated = steps.estimated if steps is not None else 0
        return replace(prepared, problem=problem)

    def publish(
        self,
        prepared: Prepared,
        plan: Plan,
        message: PlanMessage,
        now: datetime,
        valid_s: float,
    ) -> PlanMessage:
        """The plan message with the money figures; sends the battery command and the cost
        summary. The message to publish."""
        problem = prepared.problem
        modes = modes_of(plan, problem.n_steps, allowed=problem.battery_modes)
        if prepared.fallback_reason is None:
            ours = simulate(problem, plan.sockets, modes)
            reference = simulate(problem, plan_reference(problem).sockets)
            self.last = PlanMoney(now, ours, reference, problem.priced, self._estimated)
            message = self._with_figures(message, problem.priced, ours, reference, modes, prepared)
        self._command(modes[0] if prepared.fallback_reason is None else "zero", plan, now, valid_s)
        self.publish_cost(now)
        return message

    def _with_figures(
        self,
        message: PlanMessage,
        priced: bool,
        ours: DayOutcome,
        reference: DayOutcome,
        modes: Sequence[BatteryMode],
        prepared: Prepared,
    ) -> PlanMessage:
        problem = prepared.problem
        extra: dict[str, object] = {
            "expected_import_wh": _r(ours.grid_import_wh, 1),
            "expected_export_wh": _r(ours.export_wh, 1),
            "reference_import_wh": _r(reference.grid_import_wh, 1),
        }
        if priced:
            extra |= {
                "import_price_eur_kwh": problem.import_prices(),
                "export_price_eur_kwh": problem.export_prices(),
                "expected_cost_eur": _r(ours.cost_eur),
                "reference_cost_eur": _r(reference.cost_eur),
            }
        trajectory = [*ours.battery_power_w, *ours.battery_energy_wh]
        if any(m != "zero" for m in modes) and all(math.isfinite(v) for v in trajectory):
            dt_h = problem.dt_h
            extra["battery_mode"] = list(modes)
            extra["battery_power_w"] = [round(p, 3) for p in ours.battery_power_w]
            extra["battery_energy_wh"] = [max(0.0, round(e, 3)) for e in ours.battery_energy_wh]
            sockets = {
                name: {
                    "states": row.states,
                    "energy_wh": [max(0.0, round(p * dt_h, 3)) for p in ours.socket_power_w[name]],
                }
                for name, row in message.sockets.items()
                if name in ours.socket_power_w
            }
            extra["sockets"] = sockets | {
                n: r.model_dump() for n, r in message.sockets.items() if n not in sockets
            }
        return PlanMessage.model_validate({**message.model_dump(), **extra})

    def _command(self, mode: BatteryMode, plan: Plan, now: datetime, valid_s: float) -> None:
        if not (self.has_batteries and self.has_token):
            return
        if not self.battery_modes:
            mode = "zero"  # a person holds them: the actuator leaves them; zero is the default
        reason = f"plan step 0: {mode}" if plan.battery_mode else "plan: zero (no modes)"
        self._publisher.publish(
            self._topics.batteries_set(),
            BatteryCommand(
                timestamp=now,
                mode=mode,
                reason=reason,
                plan_made_at=now,
                valid_until=now + timedelta(seconds=valid_s),
            ),
        )
        self._counters.inc("battery_commands_sent")

    # --- the summary ------------------------------------------------------------------------

    def summary(self, now: datetime) -> CostSummary:
        today = self._today(now)
        meter = self.meter
        if meter.day_start != today:  # no reading yet today
            meter = Meter(day_start=today)
            self.meter = meter
        prices = self.prices
        now_prices = price_at(prices, now) if prices is not None else None
        last = self.last
        plan_cost = ref_cost = savings = None
        if last is not None and last.priced and self._today(last.made_at) == today:
            plan_cost, ref_cost = last.plan.cost_eur, last.reference.cost_eur
            ours, theirs = last.plan.net_cost_eur, last.reference.net_cost_eur
            if ours is not None and theirs is not None:
                savings = theirs - ours
        return CostSummary(
            timestamp=now,
            day_start=today,
            import_now_eur_kwh=now_prices[0] if now_prices is not None else None,
            export_now_eur_kwh=now_prices[1] if now_prices is not None else None,
            prices_source=prices.source if prices is not None else None,
            prices_fallback=prices.fallback if prices is not None else False,
            import_today_kwh=_r(meter.import_kwh) if meter.read_at is not None else None,
            export_today_kwh=_r(meter.export_kwh) if meter.read_at is not None else None,
            cost_today_eur=_r(meter.cost_eur),
            plan_cost_eur=_r(plan_cost),
            reference_cost_eur=_r(ref_cost),
            savings_eur=_r(savings),
            meter_import_kwh=meter.meter_import_kwh,
            meter_export_kwh=meter.meter_export_kwh,
            meter_read_at=meter.read_at,
        )

    def publish_cost(self, now: datetime) -> CostSummary:
        self._restored = True  # from now on a retained summary is our own echo
        summary = self.summary(now)
        self._publisher.publish(self._topics.cost(), summary)
        self._counters.inc("cost_published")
        return summary
