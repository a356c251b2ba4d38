"""Benchmark: the planner's tiers against the reference and a long MILP.

    python -m bench.planners [--quick] [--long SECONDS] [--long-all] [--out FILE]
                             [--only TEXT] [--no-busy] [--no-unpriced] [--no-priced] [--calm]

`make bench` runs it with no flags (all days, long MILP 20 s). `--quick`: the examples, the
timing targets' days (96 steps x 5 sockets x 2 batteries, 288 steps) and the days with many
optional sockets, long MILP 10 s.

Days: the shared examples (`../shared/planning/example-*.json`) and the generated ones
(`bench.days`: seasons, clouds, 1-8 sockets, 0-2 batteries, 15- and 5-minute steps, mid-day
starts, many optional sockets; priced days for the money part). Every plan is scored by the
shared yardstick itself (`../shared/planning/evaluate_plan.py`, loaded and run, not copied):
its `score` (needs, then import, then optional energy; with prices needs, then net cost).

Per day (without prices):
- reference: the original's greedy plan;
- quick: the quick tier (`plan_quick`) continuing from the reference plan — what a re-plan
  inside the poll reaches from a naive incumbent;
- full: the full tier (`plan_optimal`, default options), its CPU and wall time and status;
- long MILP: the same MILP, also preferring fewer switches (`milp.Weights.with_ties`), with
  no work limits and a wall-clock ceiling of `--long` s, warm-started from the full tier's
  plan (so it is the best known plan), then made admissible on the physics. Where the full
  tier proved its plan optimal (the same MILP, gap <= 0.1 %) it is skipped ("proved by
  full") unless `--long-all`;
- gap: (full score - long score) / max(|long score|, 1000) — 1000 score points are 100 Wh
  of import or 1 kWh into optional stores;
- busy: the day planned again (both tiers) while two processes spin on the CPU
  (`python -c 'while 1: pass'` x2): `same` when the plans are identical (the unpriced and
  the priced days).

Per priced day: net cost (EUR) of the reference plan (battery in `zero` throughout), of the
full tier's plan with its battery modes, and a bound: the MILP with a freely controllable
battery (`milp.Solver(..., free_battery=True)`), which no mode sequence can beat.

`--calm` gives every day the scheduler's default calm settings (`switch_cost_wh`,
`min_on_s`, `min_off_s`, `hold_gain_wh` of `shared.config.Settings`): every problem the
scheduler makes has them, the generated days have none. The yardstick does not know them (it
counts import, not switches), so there a plan may score a little worse for fewer switches.

Prints markdown (per-day tables, then the checks) and writes it to `--out`.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.days import benchmark_days
from shared.config import Settings
from shared.planning import milp, optimal
from shared.planning.problem import Plan, PlanningProblem, parse_problem
from shared.planning.reference import plan_reference
from shared.planning.search import Context, DayState

SHARED = Path(__file__).resolve().parents[2] / "shared" / "planning"
#: Score points under which a relative gap is measured against this floor instead.
GAP_FLOOR = 1000.0


@cache
def _yardstick() -> ModuleType:
    """The shared yardstick, loaded on first use (importing this module for its day
    selection or its tables needs no `../shared`)."""
    spec = importlib.util.spec_from_file_location("evaluate_plan", SHARED / "evaluate_plan.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {SHARED / 'evaluate_plan.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def judge(problem: PlanningProblem, plan: Plan) -> dict[str, Any]:
    """The yardstick's figures and score for a plan."""
    sc = problem.model_dump(mode="json", exclude_none=True)
    yardstick = _yardstick()
    figures: dict[str, Any] = yardstick.evaluate(sc, plan.sockets, plan.battery_mode)
    figures["score"] = float(yardstick.score(figures))
    return figures


def examples(priced: bool) -> list[PlanningProblem]:
    out = []
    for path in sorted(SHARED.glob("example-*.json")):
        p = parse_problem(path.read_bytes())
        if p.priced == priced:
            out.append(p.model_copy(update={"name": p.name or path.stem}))
    return out


@contextmanager
def busy(n: int = 2) -> Iterator[None]:
    procs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def timed(fn: Callable[[], Plan]) -> tuple[Plan, float, float]:
    """(plan, CPU s, wall s) of one call."""
    c, w = time.process_time(), time.perf_counter()
    plan = fn()
    return plan, time.process_time() - c, time.perf_counter() - w


def fingerprint(plan: Plan) -> bytes:
    """The plan as bytes, every field but the solve time."""
    return plan.model_dump_json(exclude={"solve_s"}).encode()


#: What re-planning a day under load found (`replanned`), as the tables say it.
SAME, DIFFERENT, SAFETY_NET = "same", "DIFFERENT", "safety net fired"


def replanned(day: PlanningProblem, full_plan: Plan, quick_plan: Plan) -> str:
    """The day planned again by both tiers (under `busy()`) against the plans made before:
    `SAME` when both are byte-identical (but the solve time); `SAFETY_NET` when the
    wall-clock safety net fired instead (never a partial plan: on an overloaded machine
    that is not a plan that depends on load); else `DIFFERENT`."""
    again = optimal.plan_optimal(day)
    quick = optimal.plan_quick(day, plan_reference(day).sockets)
    if fingerprint(again) == fingerprint(full_plan) and fingerprint(quick) == fingerprint(
        quick_plan
    ):
        return SAME
    why = " ".join(str(p.info.get("fallback_reason", "")) for p in (again, quick))
    return SAFETY_NET if "ceiling" in why else DIFFERENT


def busy_line(verdicts: list[str]) -> str:
    """The summary line of the re-plans under load."""
    return (
        f"- re-planned under two busy processes: {verdicts.count(SAME)} of {len(verdicts)} "
        f"days identical (both tiers, every field but the solve time); different: "
        f"{verdicts.count(DIFFERENT)}; the wall-clock safety net fired (the reference plan, "
        f"status fallback — the machine too slow for the ceiling): {verdicts.count(SAFETY_NET)}"
    )


def is_quick_day(day: PlanningProblem) -> bool:
    """`--quick`'s days: the shared examples, the timing targets' days (96 steps, 5 sockets,
    2 batteries; 288 steps) and the days with many optional sockets."""
    name = str(day.name)
    return (
        name.startswith("example-")
        or name.endswith("-opt")
        or day.n_steps == 288
        or (day.n_steps == 96 and len(day.sockets) == 5 and len(day.batteries) == 2)
    )


def p90(values: list[float]) -> float:
    """The 90th percentile (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(0.9 * len(ordered)) - 1))]


def long_milp(problem: PlanningProblem, start: Plan, seconds: float) -> tuple[Plan, str, float]:
    """The MILP without work limits for `seconds` (wall), from `start`; made admissible."""
    c = time.process_time()
    result = milp.Solver(problem, milp.Weights.with_ties()).solve(
        start.sockets,
        milp.Budget(
            mip_rel_gap=1e-5,
            mip_abs_gap=1e-3,
            max_nodes=10**9,
            max_leaves=10**9,
            max_checkpoints=10**9,
            ceiling_s=seconds,
            keep_at_ceiling=True,
        ),
    )
    cpu = time.process_time() - c
    rows = result.rows if result.rows is not None else start.sockets
    state = DayState(Context(problem), rows)
    state.repair()
    plan = Plan(
        sockets=state.plan(),
        battery_power_w=[],
        planner="long-milp",
        solve_s=cpu,
        status="optimal" if result.status == "optimal" else "time-limited",
    )
    return plan, result.status, cpu


@dataclass
class Row:
    day: PlanningProblem
    ref: dict[str, Any]
    #: The reference plan made to keep the rules on the real physics (see `run_unpriced`).
    base: dict[str, Any]
    breaks: bool
    ref_ms: float
    quick: dict[str, Any]
    quick_ms: float
    full: dict[str, Any]
    full_cpu: float
    full_wall: float
    status: str
    full_plan: Plan
    quick_plan: Plan
    long: dict[str, Any] | None = None
    long_status: str = ""
    long_cpu: float = 0.0
    #: Re-planned under load (`replanned`); "-": not run.
    busy: str = "-"

    @property
    def gap(self) -> float | None:
        if self.long is None:
            return None
        diff = float(self.full["score"]) - float(self.long["score"])
        return diff / max(abs(float(self.long["score"])), GAP_FLOOR)


def _f(m: dict[str, Any]) -> str:
    return (
        f"{m['score']:.0f} | {m['unmet_need_wh']:.0f} | {m['grid_import_wh']:.0f} "
        f"| {m['optional_wh']:.0f} | {m['switches']}"
    )


def _cols(what: str) -> str:
    return " | ".join(f"{what} {c}" for c in ("score", "unmet", "import", "optional", "sw"))


#: The per-day table's header: each plan's figures in five columns.
HEADER = (
    f"| day | steps | sockets | batt | {_cols('ref')} | ref ms | {_cols('quick')} | quick ms "
    f"| {_cols('full')} | full CPU s | full wall s | full status | {_cols('long')} "
    "| long status | gap | busy |"
)


#: The scheduler's calm settings (`--calm`): the fields of a problem it always sets.
CALM_SETTINGS = ("switch_cost_wh", "min_on_s", "min_off_s", "hold_gain_wh")


def calm(problem: PlanningProblem) -> PlanningProblem:
    """`problem` with the scheduler's default calm settings (`Settings`' defaults)."""
    defaults = {name: Settings.model_fields[name].default for name in CALM_SETTINGS}
    return PlanningProblem.model_validate(problem.model_dump() | defaults)


def chosen(args: argparse.Namespace, days: list[PlanningProblem]) -> list[PlanningProblem]:
    """The days `--only` keeps, with the calm settings where `--calm`."""
    if args.only:
        days = [d for d in days if args.only in str(d.name)]
    return [calm(d) for d in days] if args.calm else days


def run_unpriced(args: argparse.Namespace, lines: list[str]) -> dict[str, Any]:
    days = [*examples(priced=False), *benchmark_days()]
    if args.quick:
        days = [d for d in days if is_quick_day(d)]
    days = chosen(args, days)
    rows: list[Row] = []
    for day in days:
        ref_plan, _, ref_wall = timed(partial(plan_reference, day))
        quick_plan, _, quick_wall = timed(partial(optimal.plan_quick, day, ref_plan.sockets))
        full_plan, full_cpu, full_wall = timed(partial(optimal.plan_optimal, day))
        # The reference plan can break a rule on the real physics (its own battery ledger
        # runs an optional socket before the battery holds its min_battery_charge, which the
        # yardstick does not check): tiers are compared with it made to keep the rules.
        base, _ = optimal.baseline(Context(day))
        kept = Plan(
            sockets=base.plan(),
            battery_power_w=[],
            planner="reference",
            solve_s=0.0,
            battery_mode=base.modes,
        )
        row = Row(
            day=day,
            ref=judge(day, ref_plan),
            base=judge(day, kept),
            breaks=base.plan() != ref_plan.sockets,
            ref_ms=ref_wall * 1000,
            quick=judge(day, quick_plan),
            quick_ms=quick_wall * 1000,
            full=judge(day, full_plan),
            full_cpu=full_cpu,
            full_wall=full_wall,
            status=full_plan.status,
            full_plan=full_plan,
            quick_plan=quick_plan,
        )
        if args.long > 0 and (args.long_all or full_plan.status != "optimal"):
            lp, row.long_status, row.long_cpu = long_milp(day, full_plan, args.long)
            row.long = judge(day, lp)
        elif args.long > 0:
            # The full tier proved this plan optimal for the same MILP (gap <= 0.1 %): the
            # long MILP would find nothing better (runs with --long-all show it).
            row.long, row.long_status = row.full, "proved by full"
        rows.append(row)
        gap = f"{row.gap * 100:+.2f} %" if row.gap is not None else "-"
        print(
            f"{day.name}: full {row.full['score']:.0f} ({full_cpu:.2f} s CPU, {row.status}), "
            f"long {row.long['score'] if row.long else '-'} ({row.long_status}), gap {gap}",
            file=sys.stderr,
            flush=True,
        )
    if not args.no_busy:
        with busy():
            for row in rows:
                row.busy = replanned(row.day, row.full_plan, row.quick_plan)
    lines += [
        "## Without prices",
        "",
        "Figures per plan: yardstick score | unmet need Wh | grid import Wh | into optional "
        "stores Wh | switches. Times: reference and quick wall ms; full CPU s and wall s.",
        "",
        HEADER,
        "|---|" + "---:|" * 29 + "---|---|",
    ]
    for r in rows:
        d = r.day
        gap = f"{r.gap * 100:+.2f} %" if r.gap is not None else "-"
        lines.append(
            f"| {d.name}{' †' if r.breaks else ''} | {d.n_steps} | {len(d.sockets)} "
            f"| {len(d.batteries)} | {_f(r.ref)} "
            f"| {r.ref_ms:.1f} | {_f(r.quick)} | {r.quick_ms:.0f} | {_f(r.full)} "
            f"| {r.full_cpu:.2f} | {r.full_wall:.2f} | {r.status} "
            f"| {_f(r.long) if r.long else '-'} | {r.long_status or '-'} | {gap} | {r.busy} |"
        )

    def total(key: str, what: str) -> float:
        return float(sum(getattr(r, key)[what] for r in rows if getattr(r, key) is not None))

    lines.append(
        f"| **total** | | | | {total('ref', 'score'):.0f} | | {total('quick', 'score'):.0f} | "
        f"| {total('full', 'score'):.0f} | {sum(r.full_cpu for r in rows):.1f} "
        f"| {sum(r.full_wall for r in rows):.1f} | | "
        f"{total('long', 'score') if args.long else 0.0:.0f} | | | |"
    )
    lines.append("")
    worse_ref = [r for r in rows if r.full["score"] > r.base["score"] + 0.5]
    worse_quick = [r for r in rows if r.quick["score"] > r.base["score"] + 0.5]
    over_gap = [r for r in rows if r.gap is not None and r.gap > 0.005]
    more_sw = [
        r
        for r in rows
        if r.long is not None
        and r.full["switches"] > r.long["switches"]
        and r.gap is not None
        and r.gap >= -1e-9
    ]
    t96 = [
        r.full_cpu
        for r in rows
        if r.day.n_steps == 96 and len(r.day.sockets) == 5 and len(r.day.batteries) == 2
    ]
    t288 = [r.full_cpu for r in rows if r.day.n_steps == 288]
    tall = [r.full_cpu for r in rows]
    tq = [r.quick_ms for r in rows if r.day.n_steps == 96 and len(r.day.sockets) == 5]
    summary = {
        "days": len(rows),
        "worse_than_reference_full": len(worse_ref),
        "worse_than_reference_quick": len(worse_quick),
        "over_half_percent_gap": len(over_gap),
        "more_switches_than_long": len(more_sw),
        "median_96x5x2_cpu_s": statistics.median(t96) if t96 else float("nan"),
        "p90_96x5x2_cpu_s": p90(t96),
        "max_288_cpu_s": max(t288) if t288 else float("nan"),
        "median_288_cpu_s": statistics.median(t288) if t288 else float("nan"),
        "p90_288_cpu_s": p90(t288),
        "median_all_cpu_s": statistics.median(tall) if tall else float("nan"),
        "p90_all_cpu_s": p90(tall),
        "median_quick_96x5_ms": statistics.median(tq) if tq else float("nan"),
        "p90_quick_96x5_ms": p90(tq),
        "busy_different": sum(r.busy == DIFFERENT for r in rows),
        "busy_safety_net": sum(r.busy == SAFETY_NET for r in rows),
    }
    lines += [
        f"- days: {len(rows)}",
        f"- days where a tier scores worse than the reference: full {len(worse_ref)}, quick "
        f"{len(worse_quick)} (target 0; † = the reference plan breaks a rule on the real "
        f"physics — an optional socket before the battery holds its min_battery_charge, which "
        f"the yardstick does not check — and is compared as made to keep it: "
        f"{sum(r.breaks for r in rows)} days)",
    ]
    if args.long:
        lines += [
            f"- days where the full tier is more than 0.5 % behind the long MILP ({args.long:g} s "
            f"wall, no work limits, warm-started from the full plan): {len(over_gap)} (target 0)"
            + (
                ": " + ", ".join(f"{r.day.name} {(r.gap or 0.0) * 100:.2f} %" for r in over_gap)
                if over_gap
                else ""
            ),
            f"- days where the full tier, not behind the long MILP, switches more: "
            f"{len(more_sw)} (target 0)"
            + (
                ": "
                + ", ".join(
                    f"{r.day.name} {r.full['switches']} vs {r.long['switches']}"
                    for r in more_sw
                    if r.long
                )
                if more_sw
                else ""
            ),
            f"- total score: reference {total('ref', 'score'):.0f}, full "
            f"{total('full', 'score'):.0f}, long MILP {total('long', 'score'):.0f}",
        ]
    lines += [
        f"- full tier CPU time, 96 steps x 5 sockets x 2 batteries ({len(t96)} days): median "
        f"{summary['median_96x5x2_cpu_s']:.2f} s, p90 {summary['p90_96x5x2_cpu_s']:.2f} s "
        f"(target: median <= 2 s); 288 steps ({len(t288)} days): median "
        f"{summary['median_288_cpu_s']:.2f} s, p90 {summary['p90_288_cpu_s']:.2f} s, max "
        f"{summary['max_288_cpu_s']:.2f} s (target <= 10 s); all {len(tall)} days: median "
        f"{summary['median_all_cpu_s']:.2f} s, p90 {summary['p90_all_cpu_s']:.2f} s",
        f"- quick tier, 96 steps x 5 sockets: median {summary['median_quick_96x5_ms']:.0f} ms, "
        f"p90 {summary['p90_quick_96x5_ms']:.0f} ms wall (target ~20 ms)",
    ]
    if not args.no_busy:
        lines.append(busy_line([r.busy for r in rows]))
    lines.append("")
    return summary


def run_priced(args: argparse.Namespace, lines: list[str]) -> dict[str, Any]:
    from bench.days import priced_days

    days = chosen(args, [*examples(priced=True), *priced_days()])
    lines += [
        "## With prices",
        "",
        "Net cost (EUR: import cost - export earnings - value put into optional stores) per "
        "plan; the bound is the MILP with a freely controllable battery (any charge or "
        "discharge within its power, no export from it), which no mode sequence can beat.",
        "",
        "| day | steps | reference (zero) | full (modes) | modes used | switches | CPU s "
        "| bound | bound status | full - bound | busy |",
        "|---|---:|---:|---:|---|---:|---:|---:|---|---:|---|",
    ]
    tot_ref = tot_full = tot_bound = 0.0
    worse = 0
    made: list[tuple[PlanningProblem, Plan, Plan, str]] = []
    for day in days:
        ref_plan = plan_reference(day)
        ref = judge(day, ref_plan)
        full_plan, cpu, _ = timed(partial(optimal.plan_optimal, day))
        quick_plan = optimal.plan_quick(day, ref_plan.sockets)
        full = judge(day, full_plan)
        bound, bstatus = optimal.priced_bound(day, args.long or 30.0)
        modes = sorted(set(full_plan.battery_mode or ["zero"]))
        tot_ref += ref["net_cost_eur"]
        tot_full += full["net_cost_eur"]
        tot_bound += bound
        worse += full["score"] > ref["score"] + 0.5
        made.append(
            (
                day,
                full_plan,
                quick_plan,
                f"| {day.name} | {day.n_steps} | {ref['net_cost_eur']:.3f} "
                f"| {full['net_cost_eur']:.3f} | {', '.join(modes)} | {full['switches']} "
                f"| {cpu:.2f} | {bound:.3f} | {bstatus} | {full['net_cost_eur'] - bound:.3f} ",
            )
        )
        print(
            f"{day.name}: ref {ref['net_cost_eur']:.3f} full {full['net_cost_eur']:.3f} "
            f"bound {bound:.3f}",
            file=sys.stderr,
            flush=True,
        )
    # Each priced day planned again (both tiers) under two busy processes, as the unpriced.
    verdicts = ["-"] * len(made)
    if not args.no_busy:
        with busy():
            verdicts = [replanned(day, fp, qp) for day, fp, qp, _ in made]
    lines += [
        row + f"| {verdict} |" for (_, _, _, row), verdict in zip(made, verdicts, strict=True)
    ]
    lines.append(
        f"| **total** | | {tot_ref:.3f} | {tot_full:.3f} | | | | {tot_bound:.3f} | "
        f"| {tot_full - tot_bound:.3f} | |"
    )
    lines += [
        "",
        f"- days where the full tier costs more than the reference: {worse} (target 0)",
        f"- total net cost: reference {tot_ref:.2f} EUR, full {tot_full:.2f} EUR, bound "
        f"{tot_bound:.2f} EUR",
    ]
    if not args.no_busy:
        lines.append(busy_line(verdicts))
    lines.append("")
    return {
        "priced_worse": worse,
        "ref": tot_ref,
        "full": tot_full,
        "bound": tot_bound,
        "priced_busy_different": verdicts.count(DIFFERENT),
    }


def main(argv: list[str] | None = None) -> int:
    doc = __doc__ or ""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument(
        "--long", type=float, default=None, help="long MILP wall s per day (0: skip; default 20)"
    )
    ap.add_argument(
        "--long-all",
        action="store_true",
        help="run the long MILP also where the full tier proved its plan optimal",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="fewer days (examples, 96x5x2, 288 steps, many optional sockets), long MILP 10 s",
    )
    ap.add_argument("--out", type=Path, help="also write the tables to this file")
    ap.add_argument("--only", default="", help="only days whose name contains this")
    ap.add_argument("--no-busy", action="store_true", help="skip the busy re-plan")
    ap.add_argument("--no-unpriced", action="store_true")
    ap.add_argument("--no-priced", action="store_true")
    ap.add_argument(
        "--calm",
        action="store_true",
        help="every day with the scheduler's default calm settings (switch cost, minimum "
        "on / off times, hysteresis)",
    )
    args = ap.parse_args(argv)
    if args.long is None:
        args.long = 10.0 if args.quick else 20.0
    load = os.getloadavg()
    started = time.perf_counter()
    lines = [
        "# Planner benchmark",
        "",
        f"`python -m bench.planners {' '.join(sys.argv[1:] if argv is None else argv)}`: "
        f"{platform.machine()}, "
        f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, "
        f"load average at the start {load[0]:.1f} (other work shares this machine: wall times "
        "include it, CPU times do not).",
        "",
    ]
    if not args.no_unpriced:
        print(run_unpriced(args, lines), file=sys.stderr)
    if not args.no_priced:
        print(run_priced(args, lines), file=sys.stderr)
    lines.append(
        f"Run time {time.perf_counter() - started:.0f} s wall; load average at the end "
        f"{os.getloadavg()[0]:.1f}."
    )
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
