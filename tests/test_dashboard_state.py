"""The dashboard's state (services/dashboard/state.py): what it takes from the broker, the
day's history, and what the page and `hwsched status` read from it. Pure: no broker here."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.dashboard.state import (
    MAX_SPANS,
    HistoryFile,
    LiveState,
    Span,
    forecast_left_wh,
    next_switch,
    on_blocks,
    service_rows,
    socket_rows,
)
from shared.config import DevicesConfig
from shared.messages import (
    CostSummary,
    DeviceMeasurement,
    EnergyBooks,
    Forecast,
    HouseSurplus,
    Message,
    MessageError,
    OverrideState,
    PlanMessage,
    ServiceStatus,
    SocketBook,
    SocketPlan,
    SocketState,
    dump_message,
)
from shared.topics import Topics

TZ = ZoneInfo("Europe/Amsterdam")
BOUNDARY = time(6, 0)
#: 10:00 local on a summer day; the day runs 06:00 (04:00 UTC) to 06:00 the next day.
T0 = datetime(2026, 6, 21, 8, 0, tzinfo=UTC)
DAY_START = datetime(2026, 6, 21, 4, 0, tzinfo=UTC)
BASE = "hwsched"
TOPICS = Topics(BASE)
DEVICES = DevicesConfig.model_validate(
    {
        "devices": [
            {"device_name": "P1 meter", "device_type": "HWE-P1", "ip_address": "192.0.2.10"},
            {
                "device_name": "Kitchen boiler",
                "device_type": "HWE-SKT",
                "ip_address": "192.0.2.11",
                "max_power_usage": 2000,
                "energy_capacity": 2000,
                "daily_need": True,
            },
            {
                "device_name": "E-bike charger",
                "device_type": "HWE-SKT",
                "ip_address": "192.0.2.12",
                "max_power_usage": 300,
                "energy_capacity": 500,
            },
            {
                "device_name": "Battery",
                "device_type": "HWE-BAT",
                "ip_address": "192.0.2.13",
                "max_power_usage": 800,
                "energy_capacity": 2700,
                "user_info": {"name": "local/hwsched", "token": "0" * 32},
            },
        ]
    }
)


def new_state(now: datetime = T0, devices: DevicesConfig | None = DEVICES) -> LiveState:
    return LiveState(TOPICS, TZ, BOUNDARY, now, devices=devices, history_step_s=60)


def feed(state: LiveState, topic: str, message: Message | bytes, now: datetime = T0) -> bool:
    data = message if isinstance(message, bytes) else dump_message(message)
    return state.ingest(f"{BASE}/{topic}", data, now)


def plan(
    start: datetime = T0,
    made_at: datetime = T0,
    rows: dict[str, list[int]] | None = None,
    step_s: int = 900,
    **extra: Any,
) -> PlanMessage:
    rows = rows if rows is not None else {"Kitchen boiler": [0, 1, 1, 0], "E-bike charger": [0] * 4}
    n = len(next(iter(rows.values())))
    return PlanMessage(
        timestamp=made_at,
        made_at=made_at,
        start=start,
        step_s=step_s,
        sockets={
            k: SocketPlan(states=v, energy_wh=[500.0 * s for s in v])  # type: ignore[arg-type]
            for k, v in rows.items()
        },
        battery_power_w=[0.0] * n,
        battery_energy_wh=[1350.0] * n,
        planner="optimal",
        status="optimal",
        solve_s=0.01,
        available_power_w=[800.0] * n,
        **extra,
    )


def socket_state(at: datetime, on: bool, by: str = "plan", **extra: Any) -> SocketState:
    return SocketState(
        timestamp=at, socket="Kitchen boiler", power_on=on, controlled_by=by, **extra
    )


def surplus(at: datetime, watts: float) -> HouseSurplus:
    return HouseSurplus(
        timestamp=at, surplus_w=watts, p1_power_w=-watts, based_on=["P1 meter"], missing=[]
    )


def p1(at: datetime, imp: float, exp: float) -> DeviceMeasurement:
    return DeviceMeasurement(
        timestamp=at,
        device="P1 meter",
        device_type="HWE-P1",
        power_w=0.0,
        energy_import_kwh=imp,
        energy_export_kwh=exp,
        api="v1",
    )


# --- taking messages ------------------------------------------------------------------------


def test_the_latest_state_is_read_as_people_need_it() -> None:
    state = new_state()
    now = T0 + timedelta(minutes=5)
    feed(state, "plan", plan())
    feed(
        state,
        "kitchen_boiler",
        socket_state(now, False, desired="on", held_until=now + timedelta(minutes=3)),
        now,
    )
    books = EnergyBooks(
        timestamp=now,
        day_start=DAY_START,
        sockets={"Kitchen boiler": SocketBook(name="Kitchen boiler", energy_wh=500.0)},
    )
    feed(state, "books", books, now)
    override = OverrideState(
        timestamp=now,
        socket="E-bike charger",
        state="off",
        until=now + timedelta(hours=2),
        source="manual-switch",
        set_at=now,
    )
    feed(state, "e_bike_charger/override", override, now)
    rows = {r.slug: r for r in socket_rows(state, now)}
    kitchen = rows["kitchen_boiler"]
    assert kitchen.controlled_by == "plan"
    assert kitchen.power_on is False
    assert (kitchen.stored_wh, kitchen.capacity_wh, kitchen.fill) == (500.0, 2000.0, 0.25)
    assert kitchen.next_switch == ("on", T0 + timedelta(minutes=15))
    assert kitchen.held == ("on", now + timedelta(minutes=3))
    ebike = rows["e_bike_charger"]
    assert ebike.override == ("off", now + timedelta(hours=2), "manual-switch")
    assert ebike.next_switch is None  # off all along
    assert ebike.in_plan


def test_a_bad_payload_is_a_message_error_and_changes_nothing() -> None:
    state = new_state()
    feed(state, "plan", plan())
    before = (state.version, state.plan, state.snapshot())
    for topic, data in (
        ("plan", b"{not json"),
        ("plan", b'{"schema_version": 2}'),
        ("surplus", dump_message(surplus(T0 + timedelta(hours=1), 10.0))),  # an hour ahead
        ("kitchen_boiler", dump_message(socket_state(T0, True)).replace(b"Kitchen", b"Other")),
        ("service/poller/availability", b"maybe"),
        ("kitchen_boiler/measurement", b""),
    ):
        with pytest.raises(MessageError):
            feed(state, topic, data)
    assert (state.version, state.plan, state.snapshot()) == before


def test_commands_and_foreign_topics_are_not_state() -> None:
    state = new_state()
    assert not state.ingest("other/plan", dump_message(plan()), T0)
    assert not feed(state, "kitchen_boiler/set", b"anything")
    assert not feed(state, "request/forecast", b"{}")
    assert state.version == 0


def test_an_older_plan_is_ignored_and_a_newer_keeps_what_the_old_one_planned() -> None:
    state = new_state()
    first = plan(start=T0, made_at=T0)  # kitchen on 08:15-08:45 UTC
    feed(state, "plan", first)
    later = T0 + timedelta(minutes=30)
    # the new plan starts at 08:30: the old plan's 08:15-08:30 is the past now
    second = plan(start=later, made_at=later, rows={"Kitchen boiler": [0, 0, 0, 0]})
    feed(state, "plan", second, later)
    assert not feed(state, "plan", first, later)  # a late retained copy of the old one
    assert state.plan == second
    past = state.sockets["kitchen_boiler"].planned_past
    assert [(s.start, s.end) for s in past] == [
        (T0 + timedelta(minutes=15), T0 + timedelta(minutes=30))
    ]


def test_a_plan_from_the_future_is_refused() -> None:
    state = new_state()
    ahead = T0 + timedelta(days=2)
    with pytest.raises(MessageError, match="future"):
        feed(state, "plan", plan(start=ahead, made_at=ahead))
    assert state.plan is None


def test_actual_on_times_carry_why_and_split_when_control_changes() -> None:
    state = new_state()
    t = T0
    feed(state, "kitchen_boiler", socket_state(t, True, "plan"), t)
    t1 = t + timedelta(minutes=10)
    feed(state, "kitchen_boiler", socket_state(t1, True, "override"), t1)
    t2 = t + timedelta(minutes=20)
    feed(state, "kitchen_boiler", socket_state(t2, False, "override"), t2)
    t3 = t + timedelta(minutes=30)
    feed(state, "kitchen_boiler", socket_state(t3, True, "manual"), t3)
    # an older reading (a measurement read before the last state) is ignored
    old = DeviceMeasurement(
        timestamp=t2,
        device="Kitchen boiler",
        device_type="HWE-SKT",
        power_w=0.0,
        power_on=False,
        api="v1",
    )
    feed(state, "kitchen_boiler/measurement", old, t3)
    spans = state.sockets["kitchen_boiler"].actual
    assert [(s.start, s.end, s.cause) for s in spans] == [
        (t, t1, "plan"),
        (t1, t2, "override"),
        (t3, None, "manual"),
    ]


def test_a_socket_found_on_after_a_restart_starts_when_it_went_on() -> None:
    state = new_state()
    went_on = T0 - timedelta(minutes=40)
    books = EnergyBooks(
        timestamp=T0,
        day_start=DAY_START,
        sockets={
            "Kitchen boiler": SocketBook(
                name="Kitchen boiler",
                energy_wh=100.0,
                last_sample_at=T0,
                on_since=went_on,
                last_power_w=2000.0,
            )
        },
    )
    feed(state, "books", books)
    feed(state, "kitchen_boiler", socket_state(T0, True))
    assert state.sockets["kitchen_boiler"].actual[0].start == went_on


def test_spans_are_bounded() -> None:
    state = new_state()
    t = DAY_START
    for i in range(MAX_SPANS + 50):
        t = DAY_START + timedelta(seconds=20 * i)
        feed(state, "kitchen_boiler", socket_state(t, i % 2 == 0), t)
    assert len(state.sockets["kitchen_boiler"].actual) <= MAX_SPANS


def test_the_boundary_starts_a_new_history_and_keeps_what_is_on() -> None:
    state = new_state()
    feed(state, "surplus", surplus(T0, 500.0))
    feed(state, "kitchen_boiler", socket_state(T0, True))
    feed(state, "P1_meter/measurement".lower(), p1(T0, 10.0, 5.0))
    next_day = DAY_START + timedelta(days=1, minutes=1)
    assert state.roll(next_day)
    assert state.day_start == DAY_START + timedelta(days=1)
    assert state.surplus_history.points() == []
    assert state.p1_start is None
    assert [(s.start, s.end) for s in state.sockets["kitchen_boiler"].actual] == [
        (state.day_start, None)
    ]
    assert not state.roll(next_day)


def test_the_measured_surplus_is_averaged_per_step() -> None:
    state = new_state()
    for s, watts in ((0, 100.0), (20, 200.0), (40, 300.0), (70, 1000.0)):
        at = T0 + timedelta(seconds=s)
        feed(state, "surplus", surplus(at, watts), at)
    points = state.surplus_history.points()
    assert points == [(T0 + timedelta(seconds=30), 200.0), (T0 + timedelta(seconds=90), 1000.0)]


def test_grid_today_from_the_p1_counters_or_the_cost_summary() -> None:
    state = new_state()
    assert state.grid_today_kwh() == (None, None, None)
    feed(state, "p1_meter/measurement", p1(T0, 100.0, 50.0))
    later = T0 + timedelta(hours=1)
    feed(state, "p1_meter/measurement", p1(later, 100.4, 52.5), later)
    imp, exp, since = state.grid_today_kwh()
    assert imp == pytest.approx(0.4)
    assert exp == pytest.approx(2.5)
    assert since == T0
    cost = CostSummary(
        timestamp=later, day_start=DAY_START, import_today_kwh=3.0, export_today_kwh=4.0
    )
    feed(state, "cost", cost, later)
    assert state.grid_today_kwh() == (3.0, 4.0, DAY_START)


def test_services_health() -> None:
    state = new_state()
    now = T0 + timedelta(minutes=10)

    def status(name: str, at: datetime, **counters: int) -> ServiceStatus:
        return ServiceStatus(
            timestamp=at,
            service=name,
            state="online",
            version="1.2.3",
            started_at=T0,
            counters=counters,
        )

    feed(state, "service/poller/availability", b"online", now)
    feed(state, "service/poller/status", status("poller", now, polls_failed=2, polls_ok=9), now)
    feed(state, "service/scheduler/availability", b"online", now)
    feed(state, "service/scheduler/status", status("scheduler", now - timedelta(hours=1)), now)
    feed(state, "service/actuator/availability", b"offline", now)
    rows = {r.name: r for r in service_rows(state, now)}
    assert rows["poller"].health == "online"
    assert rows["poller"].problems == {"polls_failed": 2}
    assert rows["scheduler"].health == "silent"
    assert rows["actuator"].health == "offline"


def test_next_switch() -> None:
    p = plan(rows={"Kitchen boiler": [1, 1, 0, 1]})
    assert next_switch(p, "Kitchen boiler", T0 - timedelta(minutes=5)) == ("on", T0)
    assert next_switch(p, "Kitchen boiler", T0) == ("off", T0 + timedelta(minutes=30))
    assert next_switch(p, "Kitchen boiler", T0 + timedelta(minutes=40)) == (
        "on",
        T0 + timedelta(minutes=45),
    )
    assert next_switch(p, "Kitchen boiler", T0 + timedelta(minutes=50)) is None
    assert next_switch(p, "Kitchen boiler", T0 + timedelta(hours=5)) is None
    assert next_switch(p, "Nobody", T0) is None


def test_on_blocks() -> None:
    assert on_blocks(T0, 60, [1, 1, 0, 1]) == [
        (T0, T0 + timedelta(minutes=2)),
        (T0 + timedelta(minutes=3), T0 + timedelta(minutes=4)),
    ]
    assert on_blocks(T0, 60, [0, 0]) == []


def test_forecast_energy_left_counts_the_rest_of_the_day_only() -> None:
    forecast = Forecast(
        timestamp=T0,
        start=T0,
        step_s=3600,
        power_w=[1000.0, 2000.0, 3000.0],
        made_at=T0,
        source="test",
    )
    end = T0 + timedelta(hours=2, minutes=30)
    now = T0 + timedelta(minutes=30)
    # half of the first hour, the second, half of the third
    assert forecast_left_wh(forecast, now, end) == pytest.approx(500 + 2000 + 1500)
    assert forecast_left_wh(None, now, end) is None


# --- the history across a restart ----------------------------------------------------------


def test_the_history_survives_a_restart_the_same_day_only() -> None:
    state = new_state()
    feed(state, "surplus", surplus(T0, 700.0))
    feed(state, "kitchen_boiler", socket_state(T0, True))
    feed(state, "p1_meter/measurement", p1(T0, 1.0, 2.0))
    feed(state, "plan", plan())
    feed(
        state,
        "plan",
        plan(start=T0 + timedelta(minutes=30), made_at=T0 + timedelta(minutes=30)),
        T0 + timedelta(minutes=30),
    )
    kept = HistoryFile.model_validate_json(state.snapshot().model_dump_json())
    later = T0 + timedelta(hours=1)
    again = new_state(later)
    assert again.restore(kept, later)
    assert again.surplus_history.points() == state.surplus_history.points()
    assert again.sockets["kitchen_boiler"].actual == state.sockets["kitchen_boiler"].actual
    assert again.sockets["kitchen_boiler"].planned_past == [
        Span(T0 + timedelta(minutes=15), T0 + timedelta(minutes=30), "plan")
    ]
    assert again.p1_start == (T0, 1.0, 2.0)
    tomorrow = T0 + timedelta(days=1)
    assert not new_state(tomorrow).restore(kept, tomorrow)


@settings(max_examples=300, deadline=None)
@given(
    topic=st.sampled_from(
        [
            "plan",
            "surplus",
            "forecast",
            "books",
            "prices",
            "cost",
            "batteries",
            "kitchen_boiler",
            "kitchen_boiler/override",
            "kitchen_boiler/measurement",
            "kitchen_boiler/next_on",
            "kitchen_boiler/switched",
            "service/poller/status",
            "service/poller/availability",
            "battery/measurement",
        ]
    ),
    data=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=12), inner, max_size=4)
            ),
            max_leaves=12,
        ).map(lambda v: __import__("json").dumps(v).encode()),
    ),
)
def test_any_payload_is_taken_or_a_message_error_that_changes_nothing(
    topic: str, data: bytes
) -> None:
    state = new_state()
    feed(state, "plan", plan())
    before = (state.version, state.snapshot(), state.plan)
    try:
        feed(state, topic, data)
    except MessageError:
        assert (state.version, state.snapshot(), state.plan) == before
