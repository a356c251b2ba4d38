"""The dashboard's page sections and its SVG timeline (pure rendering), and `hwsched status`'s
text: what they show for a known state, that every value is escaped, that nothing secret is
in them."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from services.dashboard.render import SECTIONS, render_sections
from services.dashboard.state import LiveState
from services.dashboard.terminal import format_status, format_table
from services.dashboard.timeline import render_timeline
from shared.config import DevicesConfig
from shared.messages import (
    BatteryState,
    CostSummary,
    DeviceMeasurement,
    EnergyBooks,
    Forecast,
    OverrideState,
    Prices,
    ServiceStatus,
    SocketBook,
)
from tests.test_dashboard_state import (
    BOUNDARY,
    DAY_START,
    DEVICES,
    T0,
    TOPICS,
    TZ,
    feed,
    new_state,
    plan,
    socket_state,
    surplus,
)

SVG = "{http://www.w3.org/2000/svg}"


def busy_state(now: datetime = T0) -> LiveState:
    """A state with a bit of everything: plan, forecast, prices, history, battery, services."""
    state = new_state(now)
    feed(state, "plan", plan(battery_mode=["zero", "charge_only", "charge_only", "zero"]), now)
    forecast = Forecast(
        timestamp=DAY_START,
        start=DAY_START,
        step_s=900,
        power_w=[float(i * 30) for i in range(96)],
        made_at=DAY_START,
        source="simulated",
    )
    feed(state, "forecast", forecast, now)
    prices = Prices(
        timestamp=DAY_START,
        start=DAY_START,
        step_s=3600,
        import_eur_kwh=[0.25] * 24,
        export_eur_kwh=[-0.02] * 24,
        source="energyzero",
        made_at=DAY_START,
    )
    feed(state, "prices", prices, now)
    for minutes in range(0, 120, 5):
        at = now - timedelta(minutes=minutes)
        feed(state, "surplus", surplus(at, 400.0 + minutes), now)
    feed(state, "kitchen_boiler", socket_state(now - timedelta(minutes=30), True), now)
    battery = DeviceMeasurement(
        timestamp=now,
        device="Battery",
        device_type="HWE-BAT",
        power_w=300.0,
        state_of_charge_pct=55.0,
        api="v2",
    )
    feed(state, "battery/measurement", battery, now)
    feed(state, "batteries", BatteryState(timestamp=now, mode="zero", controlled_by="plan"), now)
    feed(
        state,
        "books",
        EnergyBooks(
            timestamp=now,
            day_start=DAY_START,
            sockets={
                "Kitchen boiler": SocketBook(name="Kitchen boiler", energy_wh=2000.0, full=True)
            },
        ),
        now,
    )
    feed(
        state,
        "cost",
        CostSummary(
            timestamp=now,
            day_start=DAY_START,
            import_now_eur_kwh=0.25,
            export_now_eur_kwh=-0.02,
            prices_source="energyzero",
            cost_today_eur=1.234,
            plan_cost_eur=0.5,
            reference_cost_eur=0.8,
            savings_eur=0.3,
            import_today_kwh=2.0,
            export_today_kwh=7.5,
        ),
        now,
    )
    feed(state, "service/poller/availability", b"online", now)
    feed(
        state,
        "service/poller/status",
        ServiceStatus(
            timestamp=now, service="poller", state="online", version="0.1.0", started_at=T0
        ),
        now,
    )
    return state


def test_the_timeline_is_valid_svg_with_the_plan_on_it() -> None:
    state = busy_state()
    svg = render_timeline(state, T0)
    root = ET.fromstring(svg)  # well-formed XML
    assert root.tag == f"{SVG}svg"
    assert root.get("data-plan-made-at") == T0.isoformat()
    assert root.get("data-day-start") == DAY_START.isoformat()
    blocks = [
        (r.get("data-socket"), r.get("data-start"), r.get("data-end"))
        for r in root.iter(f"{SVG}rect")
        if r.get("data-socket")
    ]
    # the plan: the kitchen boiler on 08:15-08:45 UTC, nothing else
    assert blocks == [
        (
            "kitchen_boiler",
            (T0 + timedelta(minutes=15)).isoformat(),
            (T0 + timedelta(minutes=45)).isoformat(),
        )
    ]
    classes = {el.get("class") for el in root.iter()}
    for needed in (
        "line forecast",
        "line planned-surplus",
        "line measured",
        "line price-import",
        "line price-export",
        "on on-plan",
        "line soc",
        "mode mode-charge_only",
        "now",
    ):
        assert needed in classes, needed
    # 24 hour lines, labels every two hours: 06 08 ... 04 06
    labels = [t.text for t in root.iter(f"{SVG}text") if t.get("text-anchor") == "middle"]
    assert labels == [f"{h % 24:02d}" for h in range(6, 31, 2)]


def test_no_prices_no_price_panel_no_battery_no_battery_panel() -> None:
    devices = DevicesConfig.model_validate(
        {
            "devices": [
                d.model_dump(by_alias=True) for d in DEVICES.devices if d.device_type != "HWE-BAT"
            ]
        }
    )
    state = new_state(devices=devices)
    feed(state, "plan", plan())
    svg = render_timeline(state, T0)
    assert 'price-import"' not in svg
    assert "Price" not in svg
    assert "Battery" not in svg


def test_a_day_of_23_hours_has_23_hour_lines() -> None:
    spring = datetime(2026, 3, 29, 4, 0, tzinfo=UTC)  # 06:00 CEST, the day after the change
    state = LiveState(TOPICS, ZoneInfo("Europe/Amsterdam"), BOUNDARY, spring - timedelta(hours=2))
    assert (state.day_end - state.day_start) == timedelta(hours=23)
    root = ET.fromstring(render_timeline(state, spring - timedelta(hours=2)))
    grid = [p for p in root.iter(f"{SVG}path") if p.get("class") == "grid"]
    assert len(grid) == 24  # both ends included


def test_every_value_is_escaped() -> None:
    nasty = '<img src=x onerror="alert(1)">&amp;'
    state = new_state(devices=None)
    msg = socket_state(T0, True).model_copy(update={"socket": nasty})
    # the topic slug of that name
    feed(state, "img_src_x_onerror_alert_1_amp", msg)
    override = OverrideState(
        timestamp=T0,
        socket=nasty,
        state="on",
        until=T0 + timedelta(hours=1),
        source="mqtt",
        set_at=T0,
    )
    feed(state, "img_src_x_onerror_alert_1_amp/override", override)
    feed(state, "plan", plan(rows={nasty: [1, 0, 0, 0]}, fallback_reason=nasty))
    sections = render_sections(state, T0, connected=True)
    for name, html in sections.items():
        assert "<img" not in html, name
        assert 'onerror="' not in html, name
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;amp;" in sections["sockets"]
    ET.fromstring(sections["timeline"])


def test_the_sections_say_what_people_look_for() -> None:
    state = busy_state()
    sections = render_sections(state, T0, connected=True)
    assert list(sections) == list(SECTIONS)
    text = {k: re.sub(r"<[^>]+>", " ", v) for k, v in sections.items()}
    assert "live" in text["summary"]
    assert "Kitchen boiler" in text["sockets"]
    assert "full" in text["sockets"]
    assert 'data-controlled-by="plan"' in sections["sockets"]
    for action in ("on_1h", "off", "auto"):
        assert (
            f'data-action="{action}" data-socket="kitchen_boiler" disabled' in sections["sockets"]
        )
    assert "55 %" in text["battery"]
    assert "charge only" in text["battery"] or "zero" in text["battery"]
    assert "€ 1.23" in text["money"]
    assert "€ 0.30" in text["money"]
    assert "2.00 kWh" in text["money"]
    assert "poller" in text["services"]
    offline = render_sections(state, T0, connected=False)
    assert "no broker connection" in offline["summary"]


def test_status_text() -> None:
    state = busy_state()
    now = T0 + timedelta(minutes=1)
    feed(
        state,
        "kitchen_boiler",
        socket_state(now, False, desired="on", held_until=now + timedelta(minutes=4)),
        now,
    )
    text = format_status(state, now, dropped=2)
    lines = text.splitlines()
    assert lines[0].startswith("hwsched at 10:01, day 06:00 - Mon 06:00; plan by optimal")
    assert "surplus 400 W" in lines[1]
    assert "forecast left today" in lines[1]
    assert "battery 55 % (zero)" in lines[1]
    header = next(line for line in lines if line.startswith("socket"))
    assert header.split() == ["socket", "controller", "state", "stored", "next", "switch"]
    kitchen = next(line for line in lines if line.startswith("Kitchen boiler"))
    assert "plan" in kitchen
    assert " off " in kitchen
    assert "2000 / 2000 Wh (full)" in kitchen
    assert "on at 10:15" in kitchen
    assert "on held until 10:05" in kitchen
    ebike = next(line for line in lines if line.startswith("E-bike charger"))
    assert "- / 500 Wh" in ebike  # no books for it yet
    assert "none planned" in ebike
    assert any(line.startswith("poller") and "online" in line for line in lines)
    assert "(2 message(s) on the broker not understood)" in text
    assert text.endswith("\n")


def test_status_text_of_an_empty_broker() -> None:
    text = format_status(new_state(devices=None), T0)
    assert "no plan yet" in text
    assert "no sockets heard of yet" in text
    assert "no service heard of yet" in text


def test_format_table() -> None:
    assert format_table(["a", "bb"], [["ccc", "d"], ["e", ""]]) == [
        "a    bb",
        "ccc  d",
        "e",
    ]


def test_tz_is_the_settings_tz() -> None:
    assert TZ.key == "Europe/Amsterdam"
