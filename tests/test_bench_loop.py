"""The loop benchmark's bookkeeping (`bench.loop`): what the day kept in the house's stores."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bench.loop import (
    DayResult,
    LoopRun,
    _kept_kwh,
    combined,
    day_bounds,
    max_in_window,
    measure,
    run_name,
    targets,
    window,
    with_totals,
)
from bench.soak import SoakOptions

BEGIN = datetime(2026, 12, 15, 5, 0, tzinfo=UTC)
END = BEGIN + timedelta(days=1)


def _write(run_dir: Path, rows: list[tuple[datetime, dict[str, float]]]) -> None:
    with (run_dir / "house-stores.jsonl").open("w") as out:
        for at, wh in rows:
            out.write(json.dumps({"time": at.isoformat(), "wh": wh}) + "\n")


def test_kept_is_the_stores_at_the_end_less_at_the_start_inside_the_day(tmp_path: Path) -> None:
    _write(
        tmp_path,
        [
            (BEGIN - timedelta(minutes=5), {"Boiler": 0.0, "Battery": 0.0}),  # before: ignored
            (BEGIN + timedelta(minutes=2), {"Boiler": 1000.0, "Battery": 500.0}),
            (BEGIN + timedelta(hours=12), {"Boiler": 4000.0, "Battery": 2700.0}),
            (END - timedelta(minutes=1), {"Boiler": 3500.0, "Battery": 300.0}),
            (END + timedelta(minutes=2), {"Boiler": 9000.0, "Battery": 0.0}),  # after: ignored
        ],
    )
    kept = _kept_kwh(tmp_path, BEGIN, END)
    assert kept is not None
    assert abs(kept - 2.3) < 1e-9
    result = DayResult(day="winter", planner="optimal", seed=1, import_kwh=10.0, kept_kwh=kept)
    assert result.net_import_kwh is not None
    assert abs(result.net_import_kwh - 7.7) < 1e-9


def test_no_readings_no_figure(tmp_path: Path) -> None:
    assert _kept_kwh(tmp_path, BEGIN, END) is None
    _write(tmp_path, [(BEGIN + timedelta(hours=1), {"Boiler": 1.0})])
    assert _kept_kwh(tmp_path, BEGIN, END) is None
    assert DayResult(day="winter", planner="optimal", seed=1, import_kwh=1.0).net_import_kwh is None


def test_most_switches_within_any_hour() -> None:
    times = [BEGIN + timedelta(minutes=m) for m in (0, 18, 45, 59, 120)]
    assert max_in_window(times) == 4
    assert max_in_window(times[3:]) == 1


def test_lead_days_start_the_run_at_an_earlier_boundary_and_measure_the_same_day() -> None:
    start, begin, end = window("winter", 1)
    # 2026-12-15 06:00 Europe/Amsterdam is 05:00 UTC (winter time)
    assert begin == datetime(2026, 12, 15, 5, 0, tzinfo=UTC)
    assert end == begin + timedelta(days=1)
    assert start == begin - timedelta(days=1)
    assert window("winter", 0) == (begin, begin, end)
    # summer time: the boundary is 04:00 UTC on both days
    start, begin, _ = window("summer", 2)
    assert (begin.hour, start.hour) == (4, 4)
    assert begin - start == timedelta(days=2)
    with pytest.raises(ValueError, match="lead_days"):
        window("summer", -1)


def test_measure_counts_the_measured_day_only(tmp_path: Path) -> None:
    """A run with a lead day: the meter, the cost summary, the books and the relay changes
    of the day before are not the measured day's."""
    _, begin, end = window("winter", 1)
    lead = begin - timedelta(days=1)

    def p1(at: datetime, imp: float, exp: float) -> dict[str, object]:
        payload = {
            "timestamp": at.isoformat(),
            "device_type": "HWE-P1",
            "energy_import_kwh": imp,
            "energy_export_kwh": exp,
        }
        return {"topic": "hwsched/p1_meter/measurement", "retained": False, "payload": payload}

    def cost(at: datetime, day: datetime, eur: float) -> dict[str, object]:
        payload = {"timestamp": at.isoformat(), "day_start": day.isoformat(), "cost_today_eur": eur}
        return {"topic": "hwsched/cost", "retained": False, "payload": payload}

    messages = [
        p1(lead + timedelta(hours=1), 1.0, 0.0),
        cost(begin - timedelta(minutes=1), lead, 9.99),  # the lead day's
        p1(begin + timedelta(minutes=1), 5.0, 0.5),
        cost(begin + timedelta(hours=12), begin, 1.00),
        p1(begin + timedelta(hours=12), 9.0, 1.5),
        cost(end - timedelta(minutes=1), begin, 2.25),
        p1(end - timedelta(minutes=1), 12.5, 2.0),
        cost(end + timedelta(minutes=1), end, 0.01),  # the next day's
        p1(end + timedelta(minutes=2), 13.0, 2.0),
    ]
    with (tmp_path / "mqtt.jsonl").open("w") as out:
        for m in messages:
            out.write(json.dumps({**m, "payload": json.dumps(m["payload"])}) + "\n")
    events = [
        {
            "time": (lead + timedelta(hours=5)).isoformat(),
            "socket": "Shower boiler",
            "event": "on",
            "by": "api",
        },
        {
            "time": (begin + timedelta(hours=5)).isoformat(),
            "socket": "Shower boiler",
            "event": "on",
            "by": "api",
        },
        {
            "time": (begin + timedelta(hours=5, minutes=30)).isoformat(),
            "socket": "Shower boiler",
            "event": "off",
            "by": "api",
        },
        {
            "time": (begin + timedelta(hours=6)).isoformat(),
            "socket": "Shower boiler",
            "event": "on",
            "by": "person",
        },
    ]
    (tmp_path / "house-events.json").write_text(json.dumps(events))
    result = measure(tmp_path, "winter", "optimal", 1)
    assert result.import_kwh == pytest.approx(7.5)
    assert result.export_kwh == pytest.approx(1.5)
    assert result.cost_eur == pytest.approx(2.25)
    assert result.switches["Shower boiler"] == 2  # the actuator's, in the day
    assert result.max_per_hour["Shower boiler"] == 2


def test_several_measured_days_follow_the_lead_days() -> None:
    start, begin, end = window("winter", 1, 3)
    assert begin == datetime(2026, 12, 15, 5, 0, tzinfo=UTC)
    assert start == begin - timedelta(days=1)
    assert end == begin + timedelta(days=3)
    assert day_bounds("winter", 2) == (begin + timedelta(days=2), end)
    with pytest.raises(ValueError, match="days"):
        window("winter", 1, 0)


def test_measure_counts_one_measured_day_of_several(tmp_path: Path) -> None:
    """Day 2 of a run with several measured days: the meter and the cost of that day only."""
    begin, end = day_bounds("winter", 1)

    def p1(at: datetime, imp: float) -> dict[str, object]:
        payload = {
            "timestamp": at.isoformat(),
            "device_type": "HWE-P1",
            "energy_import_kwh": imp,
            "energy_export_kwh": 0.0,
        }
        return {"topic": "hwsched/p1_meter/measurement", "retained": False, "payload": payload}

    def cost(at: datetime, day: datetime, eur: float) -> dict[str, object]:
        payload = {"timestamp": at.isoformat(), "day_start": day.isoformat(), "cost_today_eur": eur}
        return {"topic": "hwsched/cost", "retained": False, "payload": payload}

    messages = [
        p1(begin - timedelta(minutes=1), 10.0),  # the first measured day's
        cost(begin - timedelta(minutes=1), begin - timedelta(days=1), 3.0),
        p1(begin + timedelta(minutes=1), 10.5),
        cost(end - timedelta(minutes=1), begin, 2.5),
        p1(end - timedelta(minutes=1), 20.0),
        p1(end + timedelta(minutes=1), 20.5),  # the third's
    ]
    with (tmp_path / "mqtt.jsonl").open("w") as out:
        for m in messages:
            out.write(json.dumps({**m, "payload": json.dumps(m["payload"])}) + "\n")
    (tmp_path / "house-events.json").write_text("[]")
    result = measure(tmp_path, "winter", "optimal", 1, index=1)
    assert result.index == 1
    assert result.label == "overcast winter day, day 2"
    assert result.import_kwh == pytest.approx(9.5)
    assert result.cost_eur == pytest.approx(2.5)


def _day(
    planner: str,
    index: int,
    imp: float,
    kept: float,
    switches: int,
    prices: str = "fixed",
    cost: float | None = None,
) -> DayResult:
    return DayResult(
        day="winter",
        planner=planner,
        seed=1,
        index=index,
        prices=prices,
        import_kwh=imp,
        export_kwh=0.0,
        kept_kwh=kept,
        cost_eur=imp * 0.25 if cost is None else cost,
        optional_wh=0.0,
        full_in_day={"Shower boiler": index != 2 or planner == "reference"},
        switches={"Shower boiler": switches},
        max_per_hour={"Shower boiler": switches // 2},
        tiers={"full": 1},
    )


def test_measured_days_are_totalled_and_judged_on_their_total() -> None:
    """A fill moved across a boundary makes one day import more and the next less: over the
    run the energies add up, and the import target is judged on the totals."""
    ours = [
        _day("optimal", 0, 13.0, 2.0, 2),
        _day("optimal", 1, 9.0, -2.0, 4),
        _day("optimal", 2, 11.0, 0.0, 2),
    ]
    ref = [_day("reference", i, 11.0, 0.0, 12) for i in range(3)]
    total = combined(ours)
    label = "overcast winter day (fixed tariff), 3 days"
    assert (total.days, total.index, total.label) == (3, 0, label)
    assert total.import_kwh == pytest.approx(33.0)
    assert total.kept_kwh == pytest.approx(0.0)
    assert total.cost_eur == pytest.approx(8.25)
    assert total.switches == {"Shower boiler": 8}
    assert total.max_per_hour == {"Shower boiler": 2}  # the worst day's
    assert total.full_in_day == {"Shower boiler": False}  # not full on the third day
    assert total.tiers == {"full": 3}
    rows = with_totals([*ours, *ref])
    assert [(r.planner, r.days) for r in rows] == [
        *[("optimal", 1)] * 3,
        ("optimal", 3),
        *[("reference", 1)] * 3,
        ("reference", 3),
    ]
    lines = targets([*ours, *ref])
    assert f"{label}: import 33.00 kWh vs reference 33.00: met" in lines
    assert f"{label}: switches 8 vs reference 36: met" in lines
    assert any("needed socket in a day 4 (≤ 6): met" in line for line in lines)
    # the first day alone would have missed: 13 kWh against 11
    assert "import 13.00 kWh vs reference 11.00: MISSED" in "\n".join(targets([ours[0], ref[0]]))
    with pytest.raises(ValueError, match="one day, planner"):
        combined([ours[0], ref[0]])
    with pytest.raises(ValueError, match="prices"):
        combined([ours[0], _day("optimal", 1, 9.0, -2.0, 4, prices="dynamic")])


def test_on_day_ahead_prices_the_cost_is_judged_and_the_import_reported() -> None:
    """A plan that fills a boiler in the night's low prices may import more than the
    reference for less money: on day-ahead prices the cost is the target, on the fixed
    tariff the import (and there the cost follows it)."""
    dynamic = [
        _day("optimal", 0, 11.7, 0.0, 4, prices="dynamic", cost=2.80),
        _day("reference", 0, 11.5, 0.0, 36, prices="dynamic", cost=2.90),
    ]
    fixed = [_day("optimal", 0, 11.7, 0.0, 4), _day("reference", 0, 11.5, 0.0, 36)]
    lines = targets([*dynamic, *fixed])
    assert (
        "overcast winter day: cost 2.80 EUR vs reference 2.90 (what the plans minimise): met"
        in lines
    )
    imports = [line for line in lines if line.startswith("overcast winter day: import")]
    assert imports == [
        "overcast winter day: import 11.70 kWh vs reference 11.50 (reported, not judged: on "
        "day-ahead prices the plans minimise the cost)"
    ]
    tariff = "overcast winter day (fixed tariff)"
    assert f"{tariff}: import 11.70 kWh vs reference 11.50: MISSED" in lines
    assert f"{tariff}: cost 2.92 EUR vs reference 2.88 (what the plans minimise): MISSED" in lines
    # the two runs are not mixed: each compares with the reference on its own prices
    assert sum("switches 4 vs reference 36: met" in line for line in lines) == 2


def test_a_run_on_the_fixed_tariff_has_its_own_folder_and_environment(tmp_path: Path) -> None:
    assert run_name("winter", "optimal") == "winter-optimal"
    assert run_name("winter", "optimal", "fixed") == "winter-optimal-fixed"
    options = SoakOptions(start=BEGIN, end=END, run_dir=tmp_path)
    assert LoopRun(options, "optimal", 0.8)._stack_env() == {"HWSCHED_PLANNER": "optimal"}
    assert LoopRun(options, "reference", 0.8, "fixed")._stack_env() == {
        "HWSCHED_PLANNER": "reference",
        "HWSCHED_PRICES__SOURCE": "fixed",
    }
    with pytest.raises(ValueError, match="prices must be one of dynamic, fixed"):
        LoopRun(options, "optimal", 0.8, "hourly")


def test_runs_of_different_lengths_are_not_compared() -> None:
    ours = [_day("optimal", 0, 13.0, 2.0, 2), _day("optimal", 1, 9.0, -2.0, 4)]
    lines = targets([*ours, _day("reference", 0, 11.0, 0.0, 12)])
    assert (
        "overcast winter day (fixed tariff), 2 days: the reference ran 1 measured day(s): "
        "not compared"
    ) in lines
    assert not any("import" in line for line in lines)


def test_the_cost_is_judged_net_of_what_the_stores_kept() -> None:
    """A run that ends with its boilers 3 kWh emptier than it found them bought 3 kWh less
    than the reference, and leaves the next day to buy them: judged on the cost less what
    the stores kept (at the day's mean import price), it costs more."""
    ours = _day("optimal", 0, 31.66, -3.05, 14)
    ours.cost_eur, ours.kept_value_eur = 8.55, -3.05 * 0.27
    ref = _day("reference", 0, 34.59, 0.0, 112)
    ref.cost_eur, ref.kept_value_eur = 9.34, 0.0
    assert ours.net_cost_eur == pytest.approx(9.3735)
    lines = targets([ours, ref])
    tariff = "overcast winter day (fixed tariff)"
    assert (
        f"{tariff}: cost 8.55 EUR vs reference 9.34; less what the stores kept 9.37 EUR vs "
        "reference 9.34 (what the plans minimise): MISSED"
    ) in lines
    assert f"{tariff}: import 31.66 kWh vs reference 34.59: met" in lines
    assert (
        f"{tariff}: net import (less what the stores kept) 34.71 kWh vs reference 34.59: MISSED"
        in lines
    )
    total = combined([ours, _day("optimal", 1, 11.0, 1.0, 4)])
    assert total.kept_value_eur is None  # a day without it: no total
    day2 = _day("optimal", 1, 11.0, 1.0, 4)
    day2.kept_value_eur = 0.25
    assert combined([ours, day2]).kept_value_eur == pytest.approx(-3.05 * 0.27 + 0.25)


def test_measure_values_what_the_stores_kept_at_the_first_plans_mean_price(
    tmp_path: Path,
) -> None:
    begin, end = day_bounds("winter", 0)
    plan = {
        "made_at": (begin + timedelta(minutes=1)).isoformat(),
        "tier": "full",
        "import_price_eur_kwh": [0.2, 0.4],
    }
    later = {**plan, "made_at": (begin + timedelta(hours=2)).isoformat()}
    later["import_price_eur_kwh"] = [1.0]
    with (tmp_path / "mqtt.jsonl").open("w") as out:
        for p in (plan, later):
            out.write(
                json.dumps({"topic": "hwsched/plan", "retained": False, "payload": json.dumps(p)})
                + "\n"
            )
    (tmp_path / "house-events.json").write_text("[]")
    _write(tmp_path, [(begin, {"Shower boiler": 1000.0}), (end, {"Shower boiler": 3000.0})])
    result = measure(tmp_path, "winter", "optimal", 1, prices="fixed")
    assert result.kept_kwh == pytest.approx(2.0)
    assert result.kept_value_eur == pytest.approx(2.0 * 0.3)
    assert result.tiers == {"full": 2}
