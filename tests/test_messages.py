"""The message contract: round-trips, strict parsing, one-line errors, model rules."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from shared.messages import (
    MAX_DEVICES,
    MAX_OVERRIDE_S,
    MAX_PAYLOAD_BYTES,
    MESSAGE_MODELS,
    BatteryCommand,
    BatteryOverrideRequest,
    BatteryState,
    CostSummary,
    DeviceMeasurement,
    EnergyBooks,
    Forecast,
    ForecastRequest,
    ForecastResponse,
    ForecastResult,
    HouseSurplus,
    Message,
    MessageError,
    OverrideRequest,
    OverrideState,
    PlanMessage,
    Prices,
    ServiceStatus,
    SocketBook,
    SocketCommand,
    SocketNextOn,
    SocketPlan,
    SocketState,
    SwitchEvent,
    UnsupportedVersionError,
    dump_availability,
    dump_message,
    parse_availability,
    parse_message,
    schema_version_of,
)

AMS = ZoneInfo("Europe/Amsterdam")
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=AMS)


def samples() -> dict[type[Message], Message]:
    """One valid, fully populated instance of every top-level message model."""
    plan_row = SocketPlan(states=[1, 1, 0], energy_wh=[100.0, 100.0, 0.0])
    return {
        DeviceMeasurement: DeviceMeasurement(
            timestamp=T0,
            device="Boiler",
            device_type="HWE-SKT",
            power_w=1200.5,
            energy_import_kwh=123.456,
            energy_export_kwh=0.0,
            power_on=True,
            switch_lock=False,
            api="v1",
        ),
        HouseSurplus: HouseSurplus(
            timestamp=T0,
            surplus_w=2000.0,
            p1_power_w=-500.0,
            sockets_w={"Boiler": 1200.0},
            batteries_w={"Battery": 300.0},
            based_on=["P1", "Boiler", "Battery"],
            missing=["Car"],
        ),
        Forecast: Forecast(
            timestamp=T0,
            start=T0,
            step_s=900,
            power_w=[0.0, 150.5, 2300.0],
            made_at=T0 - timedelta(minutes=5),
            source="open-meteo",
            model="best_match",
            arrays={"south": 0.75, "west": 0.25},
            fallback=False,
        ),
        ForecastRequest: ForecastRequest(timestamp=T0, transaction="abc-1"),
        ForecastResponse: ForecastResponse(
            timestamp=T0,
            status="ok",
            data=ForecastResult(made_at=T0, source="clear-sky", fallback=True, steps=96),
            transaction=42,
        ),
        PlanMessage: PlanMessage(
            timestamp=T0,
            made_at=T0,
            start=T0,
            step_s=900,
            sockets={"Boiler": plan_row},
            battery_power_w=[0.0, -200.0, 300.0],
            battery_energy_wh=[1000.0, 950.0, 1025.0],
            planner="optimal",
            status="optimal",
            solve_s=0.25,
            forecast_made_at=T0 - timedelta(minutes=5),
            available_power_w=[500.0, 800.0, -100.0],
            battery_mode=["zero", "charge_only", "zero"],
            import_price_eur_kwh=[0.25, 0.05, 0.31],
            export_price_eur_kwh=[0.05, -0.02, 0.09],
            expected_import_wh=25.0,
            expected_export_wh=400.0,
            expected_cost_eur=-0.01,
            reference_import_wh=80.0,
            reference_cost_eur=0.02,
            tier="full",
        ),
        SocketCommand: SocketCommand(
            timestamp=T0,
            socket="Boiler",
            state="on",
            reason="plan step 0",
            plan_made_at=T0,
            valid_until=T0 + timedelta(minutes=15),
        ),
        OverrideRequest: OverrideRequest(timestamp=T0, state="on", duration_s=3600),
        OverrideState: OverrideState(
            timestamp=T0,
            socket="Boiler",
            state="off",
            until=T0 + timedelta(hours=2),
            source="mqtt",
            set_at=T0,
        ),
        SocketState: SocketState(
            timestamp=T0,
            socket="Boiler",
            power_on=True,
            switch_lock=False,
            controlled_by="plan",
            last_switch_at=T0 - timedelta(minutes=3),
            last_switch_reason="plan step 0",
        ),
        SwitchEvent: SwitchEvent(
            timestamp=T0, socket="Boiler", from_state="off", to_state="on", reason="plan", at=T0
        ),
        SocketNextOn: SocketNextOn(
            timestamp=T0,
            socket="Boiler",
            next_on=T0,
            next_off=T0 + timedelta(minutes=30),
            on_now=True,
            in_plan=True,
            planned_energy_wh=200.0,
            plan_made_at=T0,
        ),
        ServiceStatus: ServiceStatus(
            timestamp=T0,
            service="poller",
            state="online",
            version="0.1.0",
            started_at=T0 - timedelta(hours=1),
            counters={"polls": 120, "poll_errors": 2, "dropped": 0},
        ),
        EnergyBooks: EnergyBooks(
            timestamp=T0,
            day_start=datetime(2024, 5, 1, tzinfo=AMS),
            sockets={
                "Boiler": SocketBook(
                    name="Boiler",
                    day_start=datetime(2024, 5, 1, tzinfo=AMS),
                    energy_wh=2500.0,
                    full=True,
                    last_sample_at=T0 - timedelta(seconds=10),
                    last_power_w=12.5,
                    on_since=T0 - timedelta(seconds=40),
                ),
                "Car": SocketBook(name="Car", manual=True),
            },
        ),
        Prices: Prices(
            timestamp=T0,
            start=T0,
            step_s=900,
            import_eur_kwh=[0.25, 0.05, 0.31],
            export_eur_kwh=[0.05, -0.02, 0.09],
            day_ahead_eur_kwh=[0.06, -0.02, 0.1],
            source="energyzero",
            made_at=T0 - timedelta(minutes=1),
            area="NL",
        ),
        BatteryCommand: BatteryCommand(
            timestamp=T0,
            mode="charge_only",
            reason="plan step 3: keep for the evening",
            plan_made_at=T0,
            valid_until=T0 + timedelta(minutes=15),
        ),
        BatteryOverrideRequest: BatteryOverrideRequest(timestamp=T0, state="auto"),
        BatteryState: BatteryState(
            timestamp=T0,
            mode="charge_only",
            device_mode="zero",
            permissions=["charge_allowed"],
            controlled_by="plan",
            desired="charge_only",
            last_change_at=T0 - timedelta(minutes=10),
            last_change_reason="plan",
        ),
        CostSummary: CostSummary(
            timestamp=T0,
            day_start=datetime(2024, 5, 1, 6, tzinfo=AMS),
            import_now_eur_kwh=0.25,
            export_now_eur_kwh=0.05,
            prices_source="energyzero",
            import_today_kwh=3.2,
            export_today_kwh=7.5,
            cost_today_eur=0.42,
            plan_cost_eur=0.8,
            reference_cost_eur=1.1,
            savings_eur=0.3,
            meter_import_kwh=1234.5,
            meter_export_kwh=987.6,
            meter_read_at=T0,
        ),
    }


def as_doc(message: Message) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(dump_message(message))
    return doc


def parse_doc(model: type[Message], doc: dict[str, Any]) -> Message:
    return parse_message(model, json.dumps(doc).encode())


def one_line_error(model: type[Message], payload: bytes | str) -> MessageError:
    with pytest.raises(MessageError) as info:
        parse_message(model, payload)
    text = str(info.value)
    assert "\n" not in text
    assert text
    return info.value


ALL = list(samples().items())
IDS = [m.__name__ for m, _ in ALL]


def test_every_model_has_a_sample() -> None:
    assert set(samples()) == set(MESSAGE_MODELS)
    assert all(schema_version_of(m) == 1 for m in MESSAGE_MODELS)


@pytest.mark.parametrize(("model", "message"), ALL, ids=IDS)
def test_round_trip(model: type[Message], message: Message) -> None:
    payload = dump_message(message)
    assert isinstance(payload, bytes)
    back = parse_message(model, payload)
    assert back == message
    assert type(back) is model
    # compact JSON, and dumping again gives the same bytes
    assert payload == json.dumps(json.loads(payload), separators=(",", ":")).encode()
    assert dump_message(back) == payload


@pytest.mark.parametrize(("model", "message"), ALL, ids=IDS)
def test_version_and_offset_timestamp_on_the_wire(model: type[Message], message: Message) -> None:
    doc = as_doc(message)
    assert doc["schema_version"] == 1
    assert doc["timestamp"] == "2024-05-01T10:00:00Z"  # 12:00+02:00: UTC, to the second


def _times(doc: object) -> list[str]:
    """Every string of a payload that reads as a date-time."""
    if isinstance(doc, dict):
        return [t for v in doc.values() for t in _times(v)]
    if isinstance(doc, list):
        return [t for v in doc for t in _times(v)]
    if isinstance(doc, str) and re.match(r"\d{4}-\d\d-\d\dT", doc):
        return [doc]
    return []


@pytest.mark.parametrize(("model", "message"), ALL, ids=IDS)
def test_every_time_of_every_payload_is_utc_to_the_second(
    model: type[Message], message: Message
) -> None:
    """One form on the wire: microseconds and local offsets of the values are not sent."""
    fields = {
        name: value.replace(microsecond=310355)
        for name, value in message
        if isinstance(value, datetime)
    }
    doc = as_doc(message.model_copy(update=fields))
    times = _times(doc)
    assert times, model
    for text in times:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", text), text
    for name, value in fields.items():  # cut, not rounded: never later than the time it is
        assert datetime.fromisoformat(doc[name]) == value.replace(microsecond=0)


def test_other_offsets_become_z() -> None:
    msg = SwitchEvent(
        timestamp=datetime(2024, 1, 1, tzinfo=UTC),
        socket="a",
        from_state="on",
        to_state="off",
        reason="override",
        at=datetime(2024, 1, 1, 0, 0, 0, 999_999, tzinfo=timezone(timedelta(hours=-5))),
    )
    doc = as_doc(msg)
    assert doc["timestamp"] == "2024-01-01T00:00:00Z"
    assert doc["at"] == "2024-01-01T05:00:00Z"


def test_older_payloads_with_microseconds_and_offsets_still_parse() -> None:
    """Retained messages of an older build carry `...310355Z` or `+02:00`: still read."""
    doc = as_doc(samples()[SwitchEvent])
    doc["timestamp"] = "2024-05-01T11:31:52.310355Z"
    doc["at"] = "2024-05-01T13:31:52.310355+02:00"
    back = parse_message(SwitchEvent, json.dumps(doc))
    assert back.timestamp == back.at == datetime(2024, 5, 1, 11, 31, 52, 310355, tzinfo=UTC)
    assert as_doc(back)["at"] == "2024-05-01T11:31:52Z"


def test_a_time_beyond_the_utc_calendar_is_still_sent_to_the_second() -> None:
    late = datetime(9999, 12, 31, 23, 59, 59, 5, tzinfo=timezone(timedelta(hours=-2)))
    doc = as_doc(samples()[SwitchEvent].model_copy(update={"at": late}))
    assert doc["at"] == "9999-12-31T23:59:59-02:00"


@pytest.mark.parametrize(("model", "message"), ALL, ids=IDS)
def test_naive_timestamp_refused(model: type[Message], message: Message) -> None:
    doc = as_doc(message)
    doc["timestamp"] = "2024-05-01T12:00:00"
    err = one_line_error(model, json.dumps(doc))
    assert err.field == "timestamp"
    assert str(err).startswith("timestamp: ")


def test_naive_nested_and_other_datetimes_refused() -> None:
    doc = as_doc(samples()[EnergyBooks])
    doc["sockets"]["Boiler"]["last_sample_at"] = "2024-05-01T11:59:50"
    err = one_line_error(EnergyBooks, json.dumps(doc))
    assert err.field == "sockets.Boiler.last_sample_at"
    doc = as_doc(samples()[Forecast])
    doc["made_at"] = "2024-05-01T11:55:00"
    assert one_line_error(Forecast, json.dumps(doc)).field == "made_at"


def test_books_on_since_must_be_a_sample() -> None:
    doc = as_doc(samples()[EnergyBooks])
    doc["sockets"]["Boiler"]["on_since"] = (T0 + timedelta(seconds=5)).isoformat()
    err = one_line_error(EnergyBooks, json.dumps(doc))
    assert err.field == "sockets.Boiler"
    assert "on_since must be a sample" in str(err)


def test_naive_datetime_refused_in_python_too() -> None:
    with pytest.raises(ValueError, match="timezone"):
        SwitchEvent(
            timestamp=datetime(2024, 1, 1),
            socket="a",
            from_state="on",
            to_state="off",
            reason="plan",
            at=T0,
        )


@pytest.mark.parametrize(("model", "message"), ALL, ids=IDS)
def test_unknown_extra_fields_ignored(model: type[Message], message: Message) -> None:
    doc = as_doc(message)
    doc["added_in_a_later_version"] = {"nested": [1, 2, 3]}
    doc["another_w"] = 12.5
    assert parse_doc(model, doc) == message


def test_unknown_nested_extra_fields_ignored() -> None:
    doc = as_doc(samples()[PlanMessage])
    doc["sockets"]["Boiler"]["cost_eur"] = [0.1, 0.2, 0.3]
    assert parse_doc(PlanMessage, doc) == samples()[PlanMessage]


@pytest.mark.parametrize(
    ("model", "path", "token"),
    [
        (DeviceMeasurement, ["power_w"], "NaN"),
        (DeviceMeasurement, ["energy_import_kwh"], "Infinity"),
        (HouseSurplus, ["sockets_w", "Boiler"], "-Infinity"),
        (Forecast, ["power_w", 1], "NaN"),
        (PlanMessage, ["sockets", "Boiler", "energy_wh", 2], "Infinity"),
        (PlanMessage, ["solve_s"], "1e999"),
        (OverrideRequest, ["duration_s"], "NaN"),
    ],
)
def test_nan_and_inf_refused(model: type[Message], path: list[str | int], token: str) -> None:
    doc = as_doc(samples()[model])
    marker = "__MARKER__"
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = marker
    payload = json.dumps(doc).replace(f'"{marker}"', token)
    err = one_line_error(model, payload)
    expected = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
    assert err.field == expected.lstrip(".")
    assert "finite" in str(err)


def test_nan_refused_when_constructing() -> None:
    with pytest.raises(ValueError, match="finite"):
        Forecast(
            timestamp=T0,
            start=T0,
            step_s=60,
            power_w=[float("nan")],
            made_at=T0,
            source="simulated",
        )


@pytest.mark.parametrize(
    ("model", "field", "value"),
    [
        (DeviceMeasurement, "power_w", "1200"),
        (DeviceMeasurement, "power_on", 1),
        (DeviceMeasurement, "device_type", "HWE-KWH1"),
        (DeviceMeasurement, "api", "v3"),
        (Forecast, "step_s", 900.5),
        (Forecast, "step_s", "900"),
        (Forecast, "power_w", 100.0),
        (Forecast, "fallback", "false"),
        (PlanMessage, "status", "great"),
        (ServiceStatus, "counters", {"polls": -1}),
        (ServiceStatus, "service", "Poller Service"),
        (SocketState, "controlled_by", "user"),
        (SwitchEvent, "at", 1714557600),
        (SocketCommand, "socket", ""),
        (SocketCommand, "state", True),
    ],
)
def test_wrong_type_refused_naming_the_field(
    model: type[Message], field: str, value: object
) -> None:
    doc = as_doc(samples()[model])
    doc[field] = value
    err = one_line_error(model, json.dumps(doc))
    assert err.field == field or err.field.startswith(field + ".")
    assert str(err).startswith(err.field + ": ")


@pytest.mark.parametrize(("model", "message"), ALL, ids=IDS)
def test_missing_required_field_named(model: type[Message], message: Message) -> None:
    required = [n for n, f in model.model_fields.items() if f.is_required()]
    doc = as_doc(message)
    if not required:
        assert model in (ForecastRequest,)
        return
    del doc[required[-1]]
    err = one_line_error(model, json.dumps(doc))
    assert err.field == required[-1]
    assert "required" in str(err).lower()


@pytest.mark.parametrize(("model", "message"), ALL, ids=IDS)
def test_unknown_schema_version_is_a_distinct_drop(model: type[Message], message: Message) -> None:
    for version in (2, 0, "1", True, None):
        doc = as_doc(message)
        doc["schema_version"] = version
        with pytest.raises(UnsupportedVersionError) as info:
            parse_doc(model, doc)
        assert info.value.field == "schema_version"
        assert isinstance(info.value, MessageError)
        assert "knows 1" in str(info.value)


def test_schema_version_required_on_the_wire_except_hand_typed_commands() -> None:
    doc = as_doc(samples()[DeviceMeasurement])
    del doc["schema_version"]
    err = one_line_error(DeviceMeasurement, json.dumps(doc))
    assert str(err) == "schema_version: missing"
    assert not isinstance(err, UnsupportedVersionError)
    # what a Home Assistant user types
    request = parse_message(OverrideRequest, b'{"state": "on", "duration_s": 1800}')
    assert request.schema_version == 1
    assert request.timestamp is None
    assert request.duration_s == 1800
    assert parse_message(ForecastRequest, b"{}").transaction is None
    assert parse_message(ForecastRequest, b'{"transaction": 7}').transaction == 7


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"", "empty (a retained message cleared?)"),
        (b"on", "not JSON"),
        (b"{", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"on"', "JSON object"),
        (b"null", "JSON object"),
    ],
)
def test_unusable_payloads(payload: bytes, needle: str) -> None:
    err = one_line_error(OverrideRequest, payload)
    assert needle in str(err)
    assert err.field == "(payload)"


def test_oversized_payload_refused_before_parsing() -> None:
    payload = b'{"state": "on", "pad": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}'
    assert "larger than" in str(one_line_error(OverrideRequest, payload))


def test_string_and_list_bounds() -> None:
    doc = as_doc(samples()[SocketCommand])
    doc["socket"] = "x" * 201
    assert one_line_error(SocketCommand, json.dumps(doc)).field == "socket"
    doc = as_doc(samples()[HouseSurplus])
    doc["missing"] = [f"dev{i}" for i in range(MAX_DEVICES + 1)]
    assert one_line_error(HouseSurplus, json.dumps(doc)).field == "missing"
    doc = as_doc(samples()[SocketCommand])
    doc["reason"] = "r" * 501
    assert one_line_error(SocketCommand, json.dumps(doc)).field == "reason"


# --- model rules -----------------------------------------------------------------------------


def test_measurement_fields_must_fit_the_device() -> None:
    base = {"timestamp": T0, "device": "x", "power_w": 10.0}
    DeviceMeasurement(**base, device_type="HWE-BAT", api="v2", state_of_charge_pct=55.5)
    DeviceMeasurement(**base, device_type="HWE-P1", api="v2")
    with pytest.raises(ValueError, match="state_of_charge_pct only exists on HWE-BAT"):
        DeviceMeasurement(**base, device_type="HWE-SKT", api="v1", state_of_charge_pct=50)
    with pytest.raises(ValueError, match="only exist on HWE-SKT"):
        DeviceMeasurement(**base, device_type="HWE-P1", api="v1", power_on=True)
    with pytest.raises(ValueError, match="only speaks the v2 API"):
        DeviceMeasurement(**base, device_type="HWE-BAT", api="v1")
    with pytest.raises(ValueError, match="less than or equal to 100"):
        DeviceMeasurement(**base, device_type="HWE-BAT", api="v2", state_of_charge_pct=100.5)


def test_surplus_is_the_sum_of_its_parts() -> None:
    good = samples()[HouseSurplus]
    assert isinstance(good, HouseSurplus)
    # -(-500) + 1200 + 300
    assert good.surplus_w == 2000.0
    doc = as_doc(good)
    doc["surplus_w"] = 1500.0
    err = one_line_error(HouseSurplus, json.dumps(doc))
    assert "surplus_w 1500.0 W is not" in str(err)
    assert "2000.0 W" in str(err)
    # a discharging battery lowers the surplus
    HouseSurplus(
        timestamp=T0, surplus_w=-300.0, p1_power_w=0.0, batteries_w={"B": -300.0}, based_on=["B"]
    )


def test_surplus_names_are_consistent() -> None:
    with pytest.raises(ValueError, match="'Boiler', which is not in based_on"):
        HouseSurplus(
            timestamp=T0, surplus_w=100.0, p1_power_w=0, sockets_w={"Boiler": 100}, based_on=["P1"]
        )
    with pytest.raises(ValueError, match="both in based_on and missing"):
        HouseSurplus(timestamp=T0, surplus_w=0.0, p1_power_w=0, based_on=["P1"], missing=["P1"])


def test_forecast_rules() -> None:
    fc = samples()[Forecast]
    assert isinstance(fc, Forecast)
    assert fc.end == T0 + timedelta(minutes=45)
    doc = as_doc(fc)
    doc["arrays"] = {"south": 0.5, "west": 0.25}
    assert "sum to 0.7500" in str(one_line_error(Forecast, json.dumps(doc)))
    doc = as_doc(fc)
    doc["power_w"] = [100.0, -1.0]
    assert one_line_error(Forecast, json.dumps(doc)).field == "power_w[1]"
    doc["power_w"] = []
    assert one_line_error(Forecast, json.dumps(doc)).field == "power_w"
    doc = as_doc(fc)
    doc["step_s"] = 0
    assert one_line_error(Forecast, json.dumps(doc)).field == "step_s"


def test_plan_lists_must_line_up() -> None:
    doc = as_doc(samples()[PlanMessage])
    doc["battery_energy_wh"] = [1.0, 2.0]
    err = one_line_error(PlanMessage, json.dumps(doc))
    assert "battery_energy_wh has 2 steps, available_power_w has 3" in str(err)
    doc = as_doc(samples()[PlanMessage])
    doc["sockets"]["Boiler"] = {"states": [1, 0], "energy_wh": [1.0, 0.0]}
    assert "sockets.Boiler.states has 2 steps" in str(one_line_error(PlanMessage, json.dumps(doc)))
    doc["sockets"]["Boiler"] = {"states": [1, 0, 1], "energy_wh": [1.0, 0.0]}
    assert "energy_wh has 2" in str(one_line_error(PlanMessage, json.dumps(doc)))
    doc["sockets"]["Boiler"] = {"states": [1, 2, 0], "energy_wh": [1.0, 0.0, 0.0]}
    assert one_line_error(PlanMessage, json.dumps(doc)).field == "sockets.Boiler.states[1]"


def test_plan_step_at() -> None:
    plan = samples()[PlanMessage]
    assert isinstance(plan, PlanMessage)
    assert plan.n_steps == 3
    assert plan.step_at(T0 - timedelta(seconds=1)) is None
    assert plan.step_at(T0) == 0
    assert plan.step_at(T0 + timedelta(seconds=899)) == 0
    assert plan.step_at(T0 + timedelta(seconds=900)) == 1
    assert plan.step_at(T0.astimezone(UTC) + timedelta(minutes=44)) == 2
    assert plan.step_at(T0 + timedelta(minutes=45)) is None


def test_forecast_response_status_rules() -> None:
    ok = ForecastResponse(
        timestamp=T0, status="error", error="open-meteo: timeout", transaction="t"
    )
    assert parse_message(ForecastResponse, dump_message(ok)) == ok
    with pytest.raises(ValueError, match="status ok needs data"):
        ForecastResponse(timestamp=T0, status="ok")
    with pytest.raises(ValueError, match="status error needs error"):
        ForecastResponse(timestamp=T0, status="error")


def test_switch_event_must_be_a_change() -> None:
    with pytest.raises(ValueError, match="both on"):
        SwitchEvent(timestamp=T0, socket="a", from_state="on", to_state="on", reason="plan", at=T0)


# --- manual override --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ('{"state": "on", "until": "2024-05-01T14:00:00+02:00", "duration_s": 60}', "not both"),
        ('{"state": "auto", "duration_s": 60}', "auto ends the override"),
        ('{"state": "auto", "until": "2024-05-01T14:00:00+02:00"}', "auto ends the override"),
        ('{"state": "on", "duration_s": 0}', "duration_s: Input should be greater than 0"),
        ('{"state": "on", "duration_s": -5}', "duration_s: Input should be greater than 0"),
        (
            f'{{"state": "on", "duration_s": {MAX_OVERRIDE_S + 1}}}',
            "duration_s: Input should be less than or equal to 604800",
        ),
        ('{"state": "on", "duration_s": "60"}', "duration_s: Input should be a valid number"),
        ('{"state": "on", "until": "2024-05-01T14:00:00"}', "until: "),
        ('{"state": "on", "until": "tomorrow"}', "until: "),
        ('{"state": "ON"}', "state: Input should be 'on', 'off' or 'auto'"),
        ('{"state": true}', "state: "),
        ("{}", "state: Field required"),
    ],
)
def test_override_request_validation(payload: str, needle: str) -> None:
    assert needle in str(one_line_error(OverrideRequest, payload))


def test_override_request_accepted_forms() -> None:
    assert parse_message(OverrideRequest, '{"state": "auto"}').state == "auto"
    r = parse_message(OverrideRequest, '{"state":"off","until":"2024-05-01T14:00:00+02:00"}')
    assert r.until == T0 + timedelta(hours=2)
    r = parse_message(OverrideRequest, f'{{"state": "on", "duration_s": {MAX_OVERRIDE_S}}}')
    assert r.duration_s == MAX_OVERRIDE_S


def test_override_expiry() -> None:
    now = T0
    assert OverrideRequest(state="auto").expires_at(now, 3600) is None
    assert OverrideRequest(state="on").expires_at(now, 3600) == now + timedelta(hours=1)
    assert OverrideRequest(state="on", duration_s=90).expires_at(now, 3600) == now + timedelta(
        seconds=90
    )
    until = now + timedelta(days=2)
    assert OverrideRequest(state="off", until=until).expires_at(now, 3600) == until
    with pytest.raises(MessageError, match="not in the future") as info:
        OverrideRequest(state="on", until=now).expires_at(now, 3600)
    assert info.value.field == "until"
    with pytest.raises(MessageError, match="more than 7 days"):
        OverrideRequest(state="on", until=now + timedelta(days=7, seconds=1)).expires_at(now, 60)
    with pytest.raises(MessageError, match="duration_s"):
        OverrideRequest(state="on").expires_at(now, 0)


def test_override_state_always_expires() -> None:
    with pytest.raises(ValueError, match="needs until"):
        OverrideState(timestamp=T0, socket="a", state="on", source="mqtt", set_at=T0)
    with pytest.raises(ValueError, match="auto has no until"):
        OverrideState(timestamp=T0, socket="a", state="auto", until=T0, source="expiry", set_at=T0)
    cleared = OverrideState(timestamp=T0, socket="a", state="auto", source="expiry", set_at=T0)
    assert parse_message(OverrideState, dump_message(cleared)) == cleared


# --- availability -----------------------------------------------------------------------------


def test_availability_plain_strings() -> None:
    assert dump_availability("online") == b"online"
    assert dump_availability("offline") == b"offline"
    assert parse_availability(b"online") == "online"
    assert parse_availability("offline") == "offline"
    for bad in (b"Online", b'"online"', b"", b"offline\n", b"\xff"):
        with pytest.raises(MessageError, match="online or offline"):
            parse_availability(bad)
    with pytest.raises(ValueError, match="online or offline"):
        dump_availability("up")  # type: ignore[arg-type]


# --- energy books -----------------------------------------------------------------------------


def test_books_are_filed_under_their_names() -> None:
    doc = as_doc(samples()[EnergyBooks])
    doc["sockets"]["Car"]["name"] = "Boiler"
    assert "book 'Boiler' filed under 'Car'" in str(one_line_error(EnergyBooks, json.dumps(doc)))
    doc = as_doc(samples()[EnergyBooks])
    doc["sockets"]["Car"]["day_start"] = "2024-05-02T00:00:00+02:00"
    assert "later day" in str(one_line_error(EnergyBooks, json.dumps(doc)))


def test_books_message_carries_the_bookkeeping_books_both_ways() -> None:
    from shared import bookkeeping

    day = datetime(2024, 5, 1, tzinfo=AMS)
    books = bookkeeping.empty_books(day)
    for seconds, power in ((0, 2000.0), (1800, 2000.0), (3600, 100.0)):
        books = bookkeeping.record_sample(
            books,
            "Boiler",
            sample_at=T0 + timedelta(seconds=seconds),
            power_w=power,
            power_on=True,
            capacity_wh=5000.0,
            max_power_w=2000.0,
            day_start=day,
        )
    books = bookkeeping.record_manual(books, "Car", day)
    message = EnergyBooks.model_validate({**bookkeeping.books_to_dict(books), "timestamp": T0})
    assert message.sockets["Boiler"].energy_wh == books.sockets["Boiler"].energy_wh > 0
    assert message.sockets["Car"].manual
    wire = parse_message(EnergyBooks, dump_message(message))
    back = bookkeeping.restore(
        json.loads(dump_message(wire)), T0 + timedelta(hours=2), AMS, time(0, 0)
    )
    assert back == books
