"""The local search's incremental day (`search.DayState`): after any sequence of tried and
applied moves it is the day a fresh state of the same plan computes, and a tried move leaves
the state exactly as it was."""

from __future__ import annotations

import random

import pytest

from shared.planning.search import DayState
from tests.planning_builders import batt, problem, sock


def _day(seed: int) -> DayState:
    rng = random.Random(seed)
    n = 48
    surplus = [max(0.0, 2500 * (1 - abs(t - 24) / 14)) + rng.uniform(-300, 300) for t in range(n)]
    socks = [
        sock("boiler", 2000, 3000),
        sock("ebike", 500, 800),
        sock("pool", 1200, 4000, daily_need=False),
        sock("spa", 900, 1500, daily_need=False, min_battery_charge=0.4),
    ]
    p = problem(surplus, socks, [batt(1500, 4000, 1000)])
    rows = {s.name: [rng.choice([0, 0, 1]) for _ in range(n)] for s in socks}
    return DayState(p, rows)


def _figures(st: DayState) -> tuple[object, ...]:
    return (
        st.score,
        [list(r) for r in st.rows],
        list(st.load),
        list(st.opt_on),
        [list(r) for r in st.risky_rows],
        list(st.stats),
    )


@pytest.mark.parametrize("seed", range(8))
def test_tried_and_applied_moves_keep_the_state_exact(seed: int) -> None:
    st = _day(seed)
    rng = random.Random(1000 + seed)
    k, n = len(st.rows), st.n
    for _ in range(60):
        i = rng.randrange(k)
        row = list(st.rows[i])
        lo = rng.randrange(n)
        for t in range(lo, min(n, lo + rng.randint(1, 6))):
            row[t] = 1 - row[t]
        before = _figures(st)
        tried = st.try_row(i, row)
        assert _figures(st) == before  # a tried move leaves no trace
        if rng.random() < 0.4:
            st.apply_row(i, row)
            fresh = DayState(st.ctx, {s.name: st.rows[m] for m, s in enumerate(st.ctx.socks)})
            assert st.score == pytest.approx(fresh.score, abs=2e-3)
            assert tried == pytest.approx(fresh.score, abs=2e-3)
            assert st.stats == fresh.stats
            assert st.opt_on == fresh.opt_on
            assert st.risky_rows == fresh.risky_rows
            assert st.load == pytest.approx(fresh.load, abs=1e-6)
