"""The MILP of the optimal planner in a child process: `python -m shared.planning.milp_worker`.

Reads one JSON request on stdin (`problem`, `weights`, `mip_rel_gap`, `start`, `budget_s`),
writes one JSON answer on stdout (`states` or null, `label`, `info`). A long-running service
(the scheduler) uses it so that HiGHS and numpy live only as long as one solve.
"""

from __future__ import annotations

import json
import sys

from shared.planning.optimal import Options, Weights, _solve
from shared.planning.problem import PlanningProblem


def main() -> int:
    request = json.loads(sys.stdin.read())
    problem = PlanningProblem.model_validate(request["problem"])
    options = Options(
        weights=Weights(**request["weights"]), mip_rel_gap=float(request["mip_rel_gap"])
    )
    states, label, info = _solve(problem, options, request["start"], float(request["budget_s"]))
    sys.stdout.write(json.dumps({"states": states, "label": label, "info": info}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
