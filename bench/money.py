"""Priced days on the simulated house's market, planned, bounded and judged by the yardstick.

    python -m bench.money [--shared ../shared/planning] [--bound-s 10] [--yardstick-rules]

The shared example days (`example-*.json`), each moved to a date and priced per 15 minutes
with the simulated market's day-ahead prices (`services.simulator.market`) made all-in by the
default contract (`shared.prices.Tariff`), or with the fixed tariff; `example-dynamic-
prices.json` as it is. The paid-to-consume day is the summer day with the market's negative
noon made three times as deep (every negative day-ahead price x3: down to about -0.26
EUR/kWh, as NL saw on sunny Sundays of 2023-2024), so the all-in import is at or below 0 for
about three hours, with `optional_grid_price_max: 0`. Every day also at 5-minute steps (each
step's surplus and prices held for three 5-minute steps).

Per day: the reference planner's and the default (optimal) planner's plans, each judged by
`evaluate_plan.py` (run, not copied): net cost (import cost - export earnings - the value of
the optional stores' energy); and a lower bound on the net cost of any plan of socket rows and
battery modes that keeps the default planner's rules (`bench.bound`: needs met, optional
sockets only from surplus or where the price allows, and `min_battery_charge` unless
`--yardstick-rules`): the larger of two MILPs' dual bounds, one with a freely controllable
battery, one restricted to what the five modes do, each started from the default plan and
given `--bound-s` seconds. The MILPs' own best plans are judged by the yardstick too: the
modes MILP's must come to its own figure (a check of the bound's physics), the free one's
with each step's nearest mode shows what a free battery's plan loses to the modes. Without
the yardstick's folder the project's own simulator judges (the same physics; the output says
which).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time as clock
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bench.bound import solve_bound
from services.simulator.house import CloudySky
from services.simulator.market import day_prices
from shared.planning.optimal import plan_optimal
from shared.planning.problem import Plan, PlanningProblem
from shared.planning.reference import plan_reference
from shared.planning.simulate import simulate_plan
from shared.prices import Tariff
from shared.sky import PanelArray

TZ = ZoneInfo("Europe/Amsterdam")
ARRAYS = [PanelArray(52.09, 5.12, 4.8)]


@dataclass(frozen=True, slots=True)
class Day:
    """One priced day of the benchmark."""

    name: str
    example: str
    day: date
    cloud: float
    fixed: bool = False
    grid_max: float | None = None
    #: Every negative day-ahead price times this (the paid-to-consume day).
    negative_x: float = 1.0


DAYS: tuple[Day, ...] = (
    Day("summer-dynamic", "example-summer.json", date(2026, 6, 21), 0.1),
    Day("autumn-dynamic", "example-autumn.json", date(2026, 10, 14), 0.6),
    Day("winter-dynamic", "example-winter-nobattery.json", date(2026, 1, 14), 0.9),
    Day("summer-fixed", "example-summer.json", date(2026, 6, 21), 0.1, fixed=True),
    Day("summer-paid-max0", "example-summer.json", date(2026, 6, 21), 0.1, False, 0.0, 3.0),
)


def priced_day(
    doc: dict[str, Any],
    day: date,
    cloud: float,
    fixed: bool,
    grid_max: float | None,
    negative_x: float = 1.0,
) -> dict[str, Any]:
    """`doc` from 06:00 on `day`, with the market's prices (or the fixed tariff)."""
    tariff = Tariff()
    start = datetime.combine(day, time(6), TZ)
    sky = CloudySky(7, cloud)
    quarters = dict(day_prices(day, TZ, sky, ARRAYS))
    quarters |= dict(day_prices(day + timedelta(days=1), TZ, sky, ARRAYS))
    imports, exports = [], []
    for k in range(len(doc["available_power_w"])):
        da = quarters[(start + timedelta(minutes=15 * k)).astimezone(UTC)] / 1000
        if da < 0:
            da *= negative_x
        imports.append(round(tariff.fixed_import if fixed else tariff.import_price(da), 6))
        exports.append(round(tariff.fixed_export_price if fixed else tariff.export_price(da), 6))
    out = dict(doc, start=start.isoformat(), import_price=imports, export_price=exports)
    if grid_max is not None:
        out["optional_grid_price_max"] = grid_max
    return out


def finer(doc: dict[str, Any], parts: int = 3) -> dict[str, Any]:
    """`doc` at steps `parts` times shorter: each step's surplus and prices held for `parts`
    steps (15-minute prices stay 15-minute prices)."""
    out = dict(doc, step_s=doc["step_s"] // parts)
    for key in ("available_power_w", "import_price", "export_price"):
        value = doc.get(key)
        if isinstance(value, list):
            out[key] = [v for v in value for _ in range(parts)]
    return out


def judge(yardstick: Path | None, problem: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """The yardstick's figures for `plan` (or the project's simulator's, the same physics)."""
    if yardstick is None:
        outcome = simulate_plan(PlanningProblem.model_validate(problem), plan)
        return {
            "net_cost_eur": outcome.net_cost_eur,
            "cost_eur": outcome.cost_eur,
            "unmet_need_wh": outcome.unmet_need_wh,
            "grid_import_wh": outcome.grid_import_wh,
            "switches": outcome.switches,
            "optional_not_from_surplus_wh": outcome.optional_not_from_surplus_wh,
        }
    with tempfile.TemporaryDirectory() as tmp:
        p, q = Path(tmp, "problem.json"), Path(tmp, "plan.json")
        p.write_text(json.dumps(problem))
        q.write_text(json.dumps({"sockets": plan.sockets, "battery_mode": plan.battery_mode}))
        done = subprocess.run(
            [sys.executable, str(yardstick), str(p), str(q)],
            capture_output=True,
            text=True,
            check=True,
        )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@dataclass(frozen=True, slots=True)
class Row:
    """One day at one step length: the plans' net costs, the bound and its check."""

    day: str
    step_min: int
    reference: float
    default: float
    bound: float
    #: The modes MILP's best plan judged by the yardstick (nan without a battery model).
    modes_plan: float
    #: The modes MILP's own figure for that plan.
    modes_best: float
    #: The free MILP's best plan: its own figure, and judged by the yardstick with each
    #: step's nearest mode (`bound.nearest_mode`).
    free_best: float
    free_plan: float
    #: Which MILP gave the bound, and whether it was solved to the end.
    bound_from: str
    solved: bool
    bound_s: float
    #: Energy the plans' optional sockets drew from grid or battery where not allowed (Wh).
    not_from_surplus_wh: float

    @property
    def gap_eur(self) -> float:
        return self.default - self.bound


def bench_day(
    name: str,
    doc: dict[str, Any],
    judge_with: Path | None,
    bound_s: float,
    waits: bool = False,
) -> tuple[Row, list[str]]:
    """Plan, bound and judge one day; the row and the plans' detail lines."""
    problem = PlanningProblem.model_validate(doc)
    lines: list[str] = []
    nets: dict[str, float] = {}
    nfs = 0.0
    default: Plan | None = None
    for planner in ("reference", "optimal"):
        started = clock.perf_counter()
        plan = plan_reference(problem) if planner == "reference" else plan_optimal(problem)
        took = clock.perf_counter() - started
        if planner == "optimal":
            default = plan
        r = judge(judge_with, doc, plan)
        nets[planner] = float(r["net_cost_eur"])
        nfs += float(r.get("optional_not_from_surplus_wh", 0.0))
        lines.append(
            f"  {planner:10} net {r['net_cost_eur']:7.3f} cost {r['cost_eur']:7.3f} "
            f"unmet {r['unmet_need_wh']:4.0f} import {r['grid_import_wh']:6.0f} "
            f"sw {r['switches']:3d} not-from-surplus {r.get('optional_not_from_surplus_wh', 0):.0f}"
            f" modes {plan.battery_mode is not None} ({took:.1f} s)"
        )
    started = clock.perf_counter()
    free = solve_bound(problem, "free", bound_s, waits, start=default)
    bound, source, solved = free.bound_eur, "free", free.status == "Optimal"
    modes_plan = modes_best = free_plan = math.nan
    if free.sockets:
        fplan = Plan(
            sockets=free.sockets,
            battery_power_w=free.battery_power_w,
            planner="bound",
            solve_s=free.solve_s,
            battery_mode=free.battery_mode or None,
        )
        free_plan = float(judge(judge_with, doc, fplan)["net_cost_eur"])
    if problem.battery_capacity_wh > 0 and problem.battery_power_w > 0:
        modes = solve_bound(problem, "modes", bound_s, waits, start=default)
        if modes.bound_eur > bound:
            bound, source, solved = modes.bound_eur, "modes", modes.status == "Optimal"
        if modes.sockets:
            modes_best = modes.best_eur
            mplan = Plan(
                sockets=modes.sockets,
                battery_power_w=modes.battery_power_w,
                planner="bound",
                solve_s=modes.solve_s,
                battery_mode=modes.battery_mode,
            )
            modes_plan = float(judge(judge_with, doc, mplan)["net_cost_eur"])
    row = Row(
        day=name,
        step_min=int(doc["step_s"]) // 60,
        reference=nets["reference"],
        default=nets["optimal"],
        bound=bound,
        modes_plan=modes_plan,
        modes_best=modes_best,
        free_best=free.best_eur,
        free_plan=free_plan,
        bound_from=source,
        solved=solved,
        bound_s=clock.perf_counter() - started,
        not_from_surplus_wh=nfs,
    )
    return row, lines


def summary(rows: list[Row]) -> list[str]:
    """The totals and the targets, as lines."""
    ref = sum(r.reference for r in rows)
    dflt = sum(r.default for r in rows)
    bnd = sum(r.bound for r in rows)
    stake = sum(abs(r.bound) for r in rows)
    costlier = [f"{r.day}@{r.step_min}" for r in rows if r.default > r.reference + 5e-4]
    gap_pct = 100 * (dflt - bnd) / stake if stake else 0.0
    reach = 100 * (ref - dflt) / (ref - bnd) if ref - bnd > 1e-9 else 100.0
    of_net = 100 * (dflt - bnd) / abs(bnd) if abs(bnd) > 1e-9 else 0.0
    return [
        f"total net cost: reference {ref:.3f} EUR, default {dflt:.3f} EUR, bound {bnd:.3f} EUR",
        f"default's gap to the bound: {dflt - bnd:.3f} EUR = {of_net:.2f} % of the bound's "
        f"total net cost; {gap_pct:.2f} % of the days' money at stake (sum of |bound| per "
        f"day, {stake:.3f} EUR: summer days' negative net costs do not cancel winter's); the "
        f"default reaches {reach:.1f} % of the saving from the reference down to the bound",
        f"target never costlier than the reference: "
        f"{'met' if not costlier else 'MISSED on ' + ', '.join(costlier)}",
        f"target total within 2 % of the bound: of its net cost "
        f"{'met' if of_net <= 2.0 else 'missed'}, of the money at stake "
        f"{'met' if gap_pct <= 2.0 else 'missed'}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared/planning"))
    parser.add_argument(
        "--bound-s", type=float, default=10.0, help="time limit of each bound MILP (wall, s)"
    )
    parser.add_argument(
        "--yardstick-rules",
        action="store_true",
        help="the bound drops min_battery_charge (the yardstick does not judge it): then it "
        "is below every plan the yardstick accepts, the reference's too",
    )
    parser.add_argument("--only", default=None, help="only the days whose name contains this")
    args = parser.parse_args(argv)
    shared: Path = args.shared
    if not (shared / "example-summer.json").is_file():
        print(f"no shared examples in {shared}: give --shared", file=sys.stderr)
        return 2
    yardstick = shared / "evaluate_plan.py"
    judge_with = yardstick if yardstick.is_file() else None
    days = [
        (
            d.name,
            priced_day(
                json.loads((shared / d.example).read_text()),
                d.day,
                d.cloud,
                d.fixed,
                d.grid_max,
                d.negative_x,
            ),
        )
        for d in DAYS
    ]
    days.append(
        ("shared-dynamic", json.loads((shared / "example-dynamic-prices.json").read_text()))
    )
    if args.only:
        days = [(n, doc) for n, doc in days if args.only in n]
    print(f"judged by {'evaluate_plan.py' if judge_with else 'shared.planning.simulate'}; "
          f"bound MILPs {args.bound_s:g} s each")  # fmt: skip
    rows: list[Row] = []
    for name, doc in days:
        for variant in (doc, finer(doc)):
            waits = not args.yardstick_rules
            row, lines = bench_day(name, variant, judge_with, args.bound_s, waits)
            rows.append(row)
            print(f"{name} at {row.step_min} min")
            for line in lines:
                print(line)
            print(
                f"  bound      net {row.bound:7.3f} ({row.bound_from}, "
                f"{'solved' if row.solved else 'time limit'}, {row.bound_s:.0f} s); modes MILP's "
                f"plan {row.modes_best:.4f} by the MILP, {row.modes_plan:.4f} by the yardstick; "
                f"free MILP's plan {row.free_best:.4f}, {row.free_plan:.4f} with nearest modes"
            )
            sys.stdout.flush()
    print()
    print(f"{'day':18} {'step':>4} {'reference':>9} {'default':>8} {'bound':>8} "
          f"{'gap EUR':>7} {'gap %':>6}")  # fmt: skip
    for r in rows:
        pct = 100 * r.gap_eur / abs(r.bound) if abs(r.bound) > 1e-9 else 0.0
        print(f"{r.day:18} {r.step_min:4d} {r.reference:9.3f} {r.default:8.3f} {r.bound:8.3f} "
              f"{r.gap_eur:7.3f} {pct:6.2f}")  # fmt: skip
    for line in summary(rows):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
