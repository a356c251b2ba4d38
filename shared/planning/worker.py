"""The full tier in a child process: `python -m shared.planning.worker`.

Reads one JSON document on stdin, `{"problem": {...}, "options": {...}}` (the planning
problem as in the planning README; `options` as `optimal.Options.to_json`, optional, every
field optional), writes one JSON `Plan` on stdout and exits 0. Any failure (bad JSON, an
invalid problem, unknown options, a crash) exits non-zero with one line on stderr.

A long-running service (the scheduler) plans the full tier this way, so that HiGHS and
numpy live only as long as one plan (`optimal.plan_in_worker` runs it and falls back to the
reference plan when it fails or times out).
"""

from __future__ import annotations

import json
import sys

from shared.planning.optimal import Options, plan_optimal
from shared.planning.problem import ProblemError, parse_problem

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def main() -> int:
    try:
        request = json.loads(sys.stdin.read())
        if not isinstance(request, dict) or "problem" not in request:
            raise ValueError('expected {"problem": {...}, "options": {...}}')
        problem = parse_problem(json.dumps(request["problem"]))
        raw = request.get("options") or {}
        if not isinstance(raw, dict):
            raise ValueError("options: expected an object")
        options = Options.from_json(raw)
    except (ValueError, TypeError, ProblemError) as err:
        sys.stderr.write(f"bad request: {err}\n".replace("\n", " ").strip() + "\n")
        return EXIT_BAD_INPUT
    try:
        plan = plan_optimal(problem, options)
    except Exception as err:
        sys.stderr.write(f"planning failed: {type(err).__name__}: {err}".replace("\n", " ") + "\n")
        return EXIT_FAILED
    sys.stdout.write(plan.model_dump_json() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
