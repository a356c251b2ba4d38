"""Priced days on the simulated house's market, planned and judged by the shared yardstick.

    python -m bench.money [--shared ../shared/planning]

The shared example days (`example-*.json`), each moved to a date and priced per 15 minutes
with the simulated market's day-ahead prices (`services.simulator.market`) made all-in by the
default contract (`shared.prices.Tariff`), or with the fixed tariff; `example-dynamic-
prices.json` as it is. The market's all-in import never reaches 0, so the optional sockets'
grid limit is tried at 0.12 EUR/kWh (its cheapest noon hours). Each day is planned by the
reference planner and the default (optimal) planner, and each plan judged by
`evaluate_plan.py` (run, not copied): its net cost (import cost − export earnings − the value
of the optional stores' energy), cost, unmet need, grid import, switches, and whether the plan
gave battery modes. Without the yardstick's folder
the project's own simulator judges (the same physics; the table says which).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

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
#: (name, example file, date, cloudiness, fixed tariff, optional_grid_price_max)
DAYS: tuple[tuple[str, str, date, float, bool, float | None], ...] = (
    ("summer-dynamic", "example-summer.json", date(2026, 6, 21), 0.1, False, None),
    ("autumn-dynamic", "example-autumn.json", date(2026, 10, 14), 0.6, False, None),
    ("winter-dynamic", "example-winter-nobattery.json", date(2026, 1, 14), 0.9, False, None),
    ("summer-fixed", "example-summer.json", date(2026, 6, 21), 0.1, True, None),
    ("summer-grid-max-0.12", "example-summer.json", date(2026, 6, 21), 0.1, False, 0.12),
)


def priced_day(
    doc: dict[str, Any], day: date, cloud: float, fixed: bool, grid_max: float | None
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
        imports.append(round(tariff.fixed_import if fixed else tariff.import_price(da), 6))
        exports.append(round(tariff.fixed_export_price if fixed else tariff.export_price(da), 6))
    out = dict(doc, start=start.isoformat(), import_price=imports, export_price=exports)
    if grid_max is not None:
        out["optional_grid_price_max"] = grid_max
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared/planning"))
    args = parser.parse_args(argv)
    shared: Path = args.shared
    if not (shared / "example-summer.json").is_file():
        print(f"no shared examples in {shared}: give --shared", file=sys.stderr)
        return 2
    yardstick = shared / "evaluate_plan.py"
    judge_with = yardstick if yardstick.is_file() else None
    days = [
        (name, priced_day(json.loads((shared / f).read_text()), d, c, fixed, gmax))
        for name, f, d, c, fixed, gmax in DAYS
    ]
    days.append(
        ("shared-dynamic", json.loads((shared / "example-dynamic-prices.json").read_text()))
    )
    print(f"judged by {'evaluate_plan.py' if judge_with else 'shared.planning.simulate'}")
    print(f"{'day':20} {'planner':10} {'net EUR':>8} {'cost':>8} {'unmet':>6} {'import':>7} "
          f"{'sw':>3} modes")  # fmt: skip
    totals = {"reference": 0.0, "optimal": 0.0}
    for name, doc in days:
        problem = PlanningProblem.model_validate(doc)
        for planner in ("reference", "optimal"):
            plan = plan_reference(problem) if planner == "reference" else plan_optimal(problem)
            r = judge(judge_with, doc, plan)
            totals[planner] += float(r["net_cost_eur"])
            print(
                f"{name:20} {planner:10} {r['net_cost_eur']:8.3f} {r['cost_eur']:8.3f} "
                f"{r['unmet_need_wh']:6.0f} {r['grid_import_wh']:7.0f} {r['switches']:3d} "
                f"{plan.battery_mode is not None}"
            )
    print(f"total net cost: reference {totals['reference']:.3f} EUR, "
          f"optimal {totals['optimal']:.3f} EUR")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
