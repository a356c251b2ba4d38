"""The full tier with a switch cost: energy first (`Options.energy_first`).

The MILP stages run on the model without the switch cost (`milp.Weights.price_switches`
off) and the local search prices every switch; where `priced_switch_checkpoints` > 0 (off by
default) the model with the switch cost runs once at the end, and only its proof makes such
a plan `optimal`.
15-minute steps, as in `test_optimal_planner`.
"""

from __future__ import annotations

from shared.planning import milp
from shared.planning.optimal import Options, _switch_cap, plan_optimal
from shared.planning.problem import PlanningProblem
from shared.planning.search import OPTIONAL_WORTH, Context, DayState
from shared.planning.simulate import simulate
from tests.planning_builders import problem, sock

#: The last stage on (off by default: on larger days it cost a second for nothing, measured).
PRICED_LAST = Options(priced_switch_checkpoints=10)


def _calm_day() -> PlanningProblem:
    """A needed boiler and an optional e-bike charger on a sunny middle, a switch cost of
    20 Wh and minimum on / off times of 30 minutes (two steps)."""
    surplus = [0, 0, 500, 1500, 2500, 2500, 2500, 2000, 1500, 500, 0, 0]
    return problem(
        surplus,
        [sock("boiler", 1000, 1000), sock("e-bike", 500, 1000, daily_need=False)],
    ).model_copy(
        update={
            "switch_cost_wh": 20.0,
            "min_on_s": 1800,
            "min_off_s": 1800,
            "initial_on": {"boiler": False, "e-bike": False},
        }
    )


def test_without_price_switches_the_model_weighs_energy_alone() -> None:
    p = _calm_day()
    priced = milp.Model(p)
    energy = milp.Model(p, milp.Weights(price_switches=False))
    assert priced.switch_cols == energy.switch_cols
    assert {priced.b.cost[j] for j in priced.switch_cols} == {20.0}
    assert {energy.b.cost[j] for j in energy.switch_cols} == {0.0}
    # Everything else is the same model: the same columns, rows and other costs.
    others = [j for j in range(len(priced.b.cost)) if j not in set(priced.switch_cols)]
    assert [priced.b.cost[j] for j in others] == [energy.b.cost[j] for j in others]
    assert (priced.b.row_lo, priced.b.index) == (energy.b.row_lo, energy.b.index)
    # With a switch cost, an optional Wh is worth the search's rate in both.
    # (The e-bike's full-power step stores 125 Wh.)
    assert {-energy.b.cost[j] for j in energy._energy["e-bike"][0]} == {OPTIONAL_WORTH * 125}


def test_the_fewest_switches_cap_admits_the_best_plan_itself() -> None:
    # The cap is the best plan's objective in the model the stage runs on; with every socket
    # fixed to the best plan, that plan is the one feasible answer. (With a switch cost the
    # cap once subtracted a further 0.01 Wh per optional Wh: the best plan did not fit, and
    # the stage could only fail.)
    p = _calm_day()
    plan = plan_optimal(p, PRICED_LAST)
    best = DayState(Context(p), plan.sockets)
    assert -best.score[4] > 0  # optional energy: what the old cap got wrong
    for weights in (milp.Weights(), milp.Weights(price_switches=False)):
        solver = milp.Solver(p, weights)
        result = solver.solve(
            plan.sockets,
            milp.Budget(),
            fewest_switches_within=_switch_cap(Context(p), weights, best),
            fixed=plan.sockets,
        )
        assert result.status == "optimal", (weights, result.info)
        assert result.rows == plan.sockets


def test_energy_first_runs_the_priced_model_last_and_only_its_proof_makes_optimal() -> None:
    p = _calm_day()
    plan = plan_optimal(p, PRICED_LAST)
    assert plan.info["milp_energy_proved"] == 1
    assert plan.info["priced_switch_stage"] == "optimal"
    assert plan.status == "optimal"
    out = simulate(p, plan.sockets)
    assert out.unmet_need_wh == 0
    # The same plan as the MILP with the switch cost in every stage, on a day this small.
    before = plan_optimal(p, Options(energy_first=False))
    assert "milp_energy_proved" not in before.info
    assert before.status == "optimal"
    assert DayState(Context(p), plan.sockets).score == DayState(Context(p), before.sockets).score
    # Without the last stage (the default) nothing proved the day with its switch costs.
    unproved = plan_optimal(p)
    assert unproved.status == "time-limited"
    assert "priced_switch_stage" not in unproved.info
    assert unproved.info["milp_energy_proved"] == 1


def test_without_a_switch_cost_energy_first_changes_nothing() -> None:
    p = _calm_day().model_copy(update={"switch_cost_wh": 0.0})
    plan = plan_optimal(p)
    assert "milp_energy_proved" not in plan.info
    assert "priced_switch_stage" not in plan.info
    assert plan.sockets == plan_optimal(p, Options(energy_first=False)).sockets


def test_energy_first_options_round_trip_for_the_worker() -> None:
    opts = Options(energy_first=False, priced_switch_checkpoints=7)
    assert Options.from_json(opts.to_json()) == opts
