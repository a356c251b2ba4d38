"""The prices service: what it fetches when, its back-off, last-known prices and the flagged
fixed fallback (a scripted source on a manual clock); then the real clients against the
simulated house's market, over a throwaway mosquitto."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from services.prices.service import PriceKeeper, make_source
from services.prices.sources import EnergyZeroSource, EntsoeSource, SourceError, local_day
from services.simulator.server import Simulator
from services.simulator.settings import SimulatorSettings
from shared.clock import ManualClock
from shared.config import BrokerSettings, PriceSettings, Settings
from shared.messages import Message, MessageError, Prices, dump_message, parse_message
from shared.prices import NotPublishedError, PriceSeries, Tariff, dynamic_prices
from shared.service import Counters, Handler, Service, ServiceOptions
from shared.topics import Topics
from tests.conftest import MqttBroker
from tests.mqtt_helpers import retained_until
from tests.test_simulator import devices

AMS = ZoneInfo("Europe/Amsterdam")
FAST = ServiceOptions(
    status_interval_s=1.0,
    status_min_interval_s=0.1,
    reconnect_min_s=0.05,
    reconnect_max_s=0.4,
    publish_timeout_s=2.0,
    keepalive_s=5,
)


class FakeRuntime:
    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.counters = Counters()
        self.topics = Topics("t")
        self.log = logging.getLogger("test.prices")
        self.published: list[tuple[str, Message]] = []
        self.handlers: list[tuple[str, Handler]] = []

    def publish(self, topic: str, payload: Message) -> None:
        self.published.append((topic, payload))

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        self.handlers.append((topic_filter, handler))

    def last(self) -> Prices:
        message = self.published[-1][1]
        assert isinstance(message, Prices)
        return message


def day_series(day: date, base: float = 0.1) -> PriceSeries:
    start, end = local_day(day, AMS)
    n = round((end - start).total_seconds() / 900)
    return PriceSeries(start, 900, tuple(round(base + 0.001 * k, 6) for k in range(n)))


class ScriptedSource:
    """Answers per day: a series, or an exception to raise; unknown days: not published."""

    name = "entsoe"

    def __init__(self) -> None:
        self.answers: dict[date, PriceSeries | Exception] = {}
        self.asked: list[date] = []

    async def fetch(self, day: date) -> PriceSeries:
        self.asked.append(day)
        answer = self.answers.get(day, NotPublishedError(f"{day}: not out"))
        if isinstance(answer, Exception):
            raise answer
        return answer


def settings(**prices: Any) -> Settings:
    return Settings(timezone="Europe/Amsterdam", prices=PriceSettings(**prices))


DAY = date(2026, 6, 20)


def at(hour: int, minute: int = 0, day: date = DAY) -> datetime:
    return datetime.combine(day, time(hour, minute), AMS).astimezone(UTC)


def keeper_at(
    when: datetime, source: ScriptedSource | None, **prices: Any
) -> tuple[PriceKeeper, FakeRuntime]:
    rt = FakeRuntime(ManualClock(when))
    return PriceKeeper(rt, settings(**prices), source), rt


async def test_the_fixed_tariff_today_and_tomorrow_and_again_at_midnight() -> None:
    keeper, rt = keeper_at(at(9), None)
    msg = await keeper.update()
    assert (msg.source, msg.fallback) == ("fixed", False)
    assert msg.start == local_day(DAY, AMS)[0]
    assert msg.end == local_day(DAY + timedelta(days=1), AMS)[1]
    assert set(msg.import_eur_kwh) == {0.27}
    assert set(msg.export_eur_kwh) == {0.05}
    assert keeper.next_wake(rt.clock.now()) == local_day(DAY, AMS)[1] + timedelta(seconds=1)
    await keeper.update()
    assert len(rt.published) == 1  # unchanged: not published again
    rt.clock.set(local_day(DAY, AMS)[1] + timedelta(seconds=1))
    await keeper.update()
    assert rt.last().start == local_day(DAY + timedelta(days=1), AMS)[0]


async def test_today_at_once_tomorrow_from_13_until_it_comes() -> None:
    source = ScriptedSource()
    source.answers[DAY] = day_series(DAY)
    keeper, rt = keeper_at(at(9), source)
    msg = await keeper.update()
    assert source.asked == [DAY]
    assert (msg.source, msg.fallback, msg.area) == ("entsoe", False, "NL")
    assert len(msg.import_eur_kwh) == 96
    assert msg.day_ahead_eur_kwh == list(day_series(DAY).values)
    # all in: (0.1 + 0.02 + 0.0916) x 1.21; export 0.1 - 0.02
    assert msg.import_eur_kwh[0] == pytest.approx((0.1 + 0.02 + 0.0916) * 1.21)
    assert msg.export_eur_kwh[0] == pytest.approx(0.08)
    assert keeper.next_wake(rt.clock.now()) == at(13)
    rt.clock.set(at(13))
    await keeper.update()
    assert source.asked[-1] == DAY + timedelta(days=1)
    assert rt.counters["not_published_yet"] == 1
    assert keeper.next_wake(rt.clock.now()) == at(13, 15)
    source.answers[DAY + timedelta(days=1)] = day_series(DAY + timedelta(days=1), 0.2)
    rt.clock.set(at(13, 15))
    msg = await keeper.update()
    assert len(msg.import_eur_kwh) == 192
    assert msg.made_at == at(13, 15)
    # both known: wake at midnight, where the day rolls on (yesterday dropped)
    assert keeper.next_wake(rt.clock.now()) == local_day(DAY, AMS)[1] + timedelta(seconds=1)
    rt.clock.set(local_day(DAY, AMS)[1] + timedelta(seconds=1))
    asked = len(source.asked)
    msg = await keeper.update()
    assert len(source.asked) == asked  # tomorrow (now today) was known already
    assert (msg.start, len(msg.import_eur_kwh)) == (local_day(DAY, AMS)[1], 96)


async def test_a_failing_source_backs_off_keeps_the_last_prices_then_the_flagged_tariff() -> None:
    source = ScriptedSource()
    source.answers[DAY] = day_series(DAY)
    keeper, rt = keeper_at(at(20), source, tomorrow_from=time(21, 0))
    await keeper.update()
    source.answers[DAY + timedelta(days=1)] = SourceError("timeout", "no answer in time")
    rt.clock.set(at(21))
    msg = await keeper.update()
    assert msg.fallback is False  # today's still cover now
    waits = []
    for _ in range(7):
        wake = keeper.next_wake(rt.clock.now())
        waits.append((wake - rt.clock.now()).total_seconds())
        rt.clock.set(wake)
        msg = await keeper.update()
    assert waits[:6] == [60, 120, 240, 480, 960, 1800]
    assert rt.counters["fetches_failed_timeout"] == 8
    # past midnight nothing covers now: the fixed tariff, flagged
    rt.clock.set(local_day(DAY, AMS)[1] + timedelta(minutes=1))
    msg = await keeper.update()
    assert (msg.source, msg.fallback) == ("fixed", True)
    assert rt.counters["fallbacks"] == 1
    # the source answers again: its prices, unflagged
    source.answers[DAY + timedelta(days=1)] = day_series(DAY + timedelta(days=1))
    rt.clock.set(keeper.next_wake(rt.clock.now()))
    msg = await keeper.update()
    assert (msg.source, msg.fallback) == ("entsoe", False)
    assert keeper.failures == 0
    assert keeper.retry_at is None


async def test_today_not_published_is_a_failure_and_a_bug_is_survived() -> None:
    source = ScriptedSource()
    keeper, rt = keeper_at(at(9), source)
    msg = await keeper.update()
    assert msg.fallback is True
    assert rt.counters["fetches_failed_not_published"] == 1
    source.answers[DAY] = ZeroDivisionError("bug")
    rt.clock.set(keeper.next_wake(rt.clock.now()))
    await keeper.update()
    assert rt.counters["fetches_failed_error"] == 1


async def test_dst_days_are_covered_whole() -> None:
    day = date(2026, 10, 25)
    source = ScriptedSource()
    source.answers[day] = day_series(day)
    keeper, _ = keeper_at(at(9, day=day), source)
    msg = await keeper.update()
    assert len(msg.import_eur_kwh) == 100
    assert keeper.covers(day)


async def test_the_retained_prices_are_the_last_known_at_start() -> None:
    source = ScriptedSource()
    known = day_series(DAY)
    keeper, rt = keeper_at(at(9), source)
    old = dynamic_prices(known, Tariff(), source="entsoe", area="NL", made_at=at(8), now=at(8))
    await keeper.on_retained("t/prices", dump_message(old))
    assert rt.counters["prices_restored"] == 1
    msg = await keeper.update()
    assert source.asked == []  # today is known
    assert (msg.fallback, msg.made_at) == (False, at(8))
    # a restart finds garbage, or a fallback, or the future: not taken
    fresh, _ = keeper_at(at(9), source)
    await fresh.on_retained("t/prices", dump_message(old.model_copy(update={"fallback": True})))
    assert fresh.series is None
    for payload in (
        b"{}",
        dump_message(old.model_copy(update={"made_at": at(9) + timedelta(days=2)})),
        dump_message(old.model_copy(update={"day_ahead_eur_kwh": [1e9] * 96})),
    ):
        fresh, _ = keeper_at(at(9), source)
        with pytest.raises(MessageError):
            await fresh.on_retained("t/prices", payload)
        assert fresh.series is None


# --- the real clients against the simulated house, over MQTT -------------------------------


@pytest.fixture
async def sim(tmp_path: Path) -> Any:
    # the house's clock at 14:00 of the real local day: today's and tomorrow's prices out
    today = datetime.now(AMS).date()
    settings_ = SimulatorSettings(seed=3, cloudiness=0.1)
    clock = ManualClock(datetime.combine(today, time(14), AMS).astimezone(UTC))
    async with Simulator(
        devices(batteries=1, sockets=1), clock=clock, settings=settings_, state_dir=tmp_path
    ) as simulator:
        yield simulator


def service_settings(
    broker: MqttBroker, monkeypatch: pytest.MonkeyPatch, **prices: Any
) -> Settings:
    for name in list(os.environ):
        if name.upper().startswith("HWSCHED_"):
            monkeypatch.delenv(name)
    tag = uuid.uuid4().hex[:10]
    return Settings(
        broker=BrokerSettings(host=broker.host, port=broker.port, client_id_prefix=f"t-{tag}"),
        base_topic=f"test{tag}",
        timezone="Europe/Amsterdam",
        prices=PriceSettings(tomorrow_from=time(0, 0), retry_min_s=0.2, retry_max_s=0.4, **prices),
    )


async def run_keeper(s: Settings) -> tuple[Service, asyncio.Task[int]]:
    service = Service("prices", s, options=FAST, version="test")
    http = httpx.AsyncClient(timeout=5)
    keeper = PriceKeeper(service, s, make_source(s, http))
    keeper.subscribe()

    async def work() -> None:
        try:
            await keeper.run(service.wait_connected)
        finally:
            await http.aclose()

    return service, asyncio.create_task(service.run(work))


async def published_prices(broker: MqttBroker, s: Settings, fallback: bool) -> Prices:
    topic = Topics(s.base_topic).prices()

    def ready(got: dict[str, bytes]) -> bool:
        return topic in got and parse_message(Prices, got[topic]).fallback is fallback

    got = await retained_until(broker, s.base_topic, ready, within_s=20)
    return parse_message(Prices, got[topic])


@pytest.mark.parametrize("source", ["energyzero", "entsoe"])
async def test_the_service_publishes_the_simulated_market(
    source: str, sim: Simulator, mqtt_broker: MqttBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra: dict[str, Any] = {"energyzero_url": sim.energyzero_url, "entsoe_url": sim.entsoe_url}
    if source == "entsoe":
        extra["entsoe_token"] = "11111111-2222-3333-4444-555555555555"
    s = service_settings(mqtt_broker, monkeypatch, source=source, **extra)
    service, task = await run_keeper(s)
    try:
        msg = await published_prices(mqtt_broker, s, fallback=False)
        today = datetime.now(AMS).date()
        assert msg.source == source
        assert msg.start == local_day(today, AMS)[0]
        assert msg.end == local_day(today + timedelta(days=1), AMS)[1]  # tomorrow too
        assert msg.day_ahead_eur_kwh is not None
        assert service.counters["fetches_ok"] == 2
    finally:
        service.request_stop()
        assert await asyncio.wait_for(task, 10) == 0


async def test_the_market_down_gives_the_flagged_tariff_then_prices_again(
    sim: Simulator, mqtt_broker: MqttBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim.market_down = True
    s = service_settings(
        mqtt_broker, monkeypatch, source="energyzero", energyzero_url=sim.energyzero_url
    )
    service, task = await run_keeper(s)
    try:
        msg = await published_prices(mqtt_broker, s, fallback=True)
        assert msg.source == "fixed"
        assert service.counters["fetches_failed_server_error"] >= 1
        sim.market_down = False
        msg = await published_prices(mqtt_broker, s, fallback=False)
        assert msg.source == "energyzero"
    finally:
        service.request_stop()
        assert await asyncio.wait_for(task, 10) == 0


async def test_the_clients_say_what_went_wrong(sim: Simulator) -> None:
    today = datetime.now(AMS).date()
    async with httpx.AsyncClient(timeout=2) as http:
        no_token = EntsoeSource(http, sim.entsoe_url, "", "10YNL----------L", AMS)
        with pytest.raises(SourceError) as err:
            await no_token.fetch(today)
        assert err.value.kind == "unauthorized"
        later = EnergyZeroSource(http, sim.energyzero_url, AMS)
        with pytest.raises(NotPublishedError):
            await later.fetch(today + timedelta(days=5))
        nowhere = EnergyZeroSource(http, "http://127.0.0.1:9", AMS)
        with pytest.raises(SourceError) as err:
            await nowhere.fetch(today)
        assert err.value.kind == "unreachable"
        wrong = EntsoeSource(http, f"{sim.energyzero_url}/public/v1/prices", "t", "x", AMS)
        with pytest.raises(SourceError) as err:
            await wrong.fetch(today)
        assert err.value.kind == "invalid_response"
