"""The planner benchmark's day selection (`bench.planners`): `--only` and `--calm`."""

from __future__ import annotations

import argparse

from bench.days import benchmark_days
from bench.planners import CALM_SETTINGS, calm, chosen
from shared.config import Settings


def test_calm_gives_a_day_the_schedulers_default_calm_settings_and_nothing_else() -> None:
    day = benchmark_days()[5]
    assert (day.switch_cost_wh, day.min_on_s, day.min_off_s, day.hold_gain_wh) == (0, 0, 0, 0)
    calmed = calm(day)
    # the defaults themselves, not `Settings()`: that reads HWSCHED_* from the environment
    for name in CALM_SETTINGS:
        assert getattr(calmed, name) == Settings.model_fields[name].default
    assert (calmed.switch_cost_wh, calmed.min_on_s, calmed.min_off_s) == (20.0, 1200, 3600)
    rest = set(type(day).model_fields) - set(CALM_SETTINGS)
    assert {k: getattr(calmed, k) for k in rest} == {k: getattr(day, k) for k in rest}


def test_chosen_keeps_the_only_days_and_calms_them_on_request() -> None:
    days = benchmark_days()
    only = argparse.Namespace(only="winter-c90", calm=False)
    kept = chosen(only, days)
    assert len(kept) == 4  # the four winter-c90 days: 1, 3, 5 and 8 sockets
    assert all("winter-c90" in str(d.name) for d in kept)
    assert all(d.switch_cost_wh == 0 for d in kept)
    calmed = chosen(argparse.Namespace(only="winter-c90", calm=True), days)
    assert [d.name for d in calmed] == [d.name for d in kept]
    assert all(d.switch_cost_wh == 20.0 and d.min_off_s == 3600 for d in calmed)
    assert len(chosen(argparse.Namespace(only="", calm=False), days)) == len(days)
