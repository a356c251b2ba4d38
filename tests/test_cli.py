"""`hwsched plan`: pure JSON on stdout, the optimal planner by default, one-line errors.

stdout is captured at the file-descriptor level (capfd): the HiGHS library writes to
descriptor 1 directly, which `capsys` would not see.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.cli import main

REPO = Path(__file__).resolve().parents[1]


def problem_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "cli-day",
        "start": "2025-06-01T09:00:00+02:00",
        "step_s": 900,
        "available_power_w": [-200, 1000, 2200, 2400, 1500, 300, -400, -800],
        "sockets": [
            {
                "name": "boiler",
                "max_power_usage": 2000,
                "energy_capacity": 1000,
                "energy_stored": 200,
                "daily_need": True,
            },
            {
                "name": "car",
                "max_power_usage": 1000,
                "energy_capacity": 3000,
                "priority": 2,
                "min_battery_charge": 0.2,
            },
        ],
        "batteries": [
            {"name": "b", "max_power_usage": 800, "energy_capacity": 1000, "energy_stored": 100}
        ],
    }
    doc.update(changes)
    return doc


def write(tmp_path: Path, doc: dict[str, Any] | str) -> Path:
    path = tmp_path / "problem.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def check_plan_json(out: str, planner: str) -> dict[str, Any]:
    plan: dict[str, Any] = json.loads(out)  # nothing but the JSON document on stdout
    assert plan["planner"] == planner
    assert set(plan["sockets"]) == {"boiler", "car"}
    for row in plan["sockets"].values():
        assert len(row) == 8
        assert set(row) <= {0, 1}
    assert len(plan["battery_power_w"]) == 8
    assert plan["solve_s"] > 0
    return plan


def test_plan_defaults_to_the_optimal_planner_and_prints_pure_json(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    code = main(["plan", str(write(tmp_path, problem_doc()))])
    out, err = capfd.readouterr()
    assert code == 0
    assert err == ""
    plan = check_plan_json(out, "optimal")
    assert plan["status"] in {"optimal", "time-limited", "fallback"}


def test_plan_with_the_reference_planner(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code = main(["plan", str(write(tmp_path, problem_doc())), "--planner", "reference"])
    out, err = capfd.readouterr()
    assert code == 0
    assert err == ""
    assert check_plan_json(out, "reference")["status"] == "heuristic"


def test_plan_without_highspy_still_prints_a_plan(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "highspy", None)  # `import highspy` raises ImportError
    code = main(["plan", str(write(tmp_path, problem_doc()))])
    out, err = capfd.readouterr()
    assert code == 0
    assert err == ""
    plan = check_plan_json(out, "optimal")
    assert any("highspy" in str(v) for v in plan["info"].values())


def test_show_prints_a_table_for_people(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code = main(["plan", str(write(tmp_path, problem_doc())), "--show"])
    out, err = capfd.readouterr()
    assert code == 0
    assert err == ""
    assert "cli-day" in out
    assert "unmet need" in out


def test_a_fresh_process_prints_nothing_but_the_json() -> None:
    """The first HiGHS instance of a process prints a banner to descriptor 1: not here."""
    doc = json.dumps(problem_doc())
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "plan", "-"],
        input=doc,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    check_plan_json(done.stdout, "optimal")


BAD_INPUTS = {
    "invalid-json": ('{"start": "2025-06-01T09:00:00+02:00", "step_s": 900,', "JSON"),
    "missing-field": (json.dumps({"step_s": 900, "available_power_w": [1]}), "start"),
    "mistyped-field": (json.dumps(problem_doc(step_s="900")), "step_s"),
    "step-zero": (json.dumps(problem_doc(step_s=0)), "step_s"),
    "negative-capacity": (
        json.dumps(
            problem_doc(
                sockets=[{"name": "boiler", "max_power_usage": 2000, "energy_capacity": -1}]
            )
        ),
        "sockets[0].energy_capacity",
    ),
    "no-timezone": (json.dumps(problem_doc(start="2025-06-01T09:00:00")), "start"),
    "not-an-object": ("[]", "(document)"),
}


@pytest.mark.parametrize(("text", "names"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
@pytest.mark.parametrize("planner", ["optimal", "reference"])
def test_bad_input_is_one_line_on_stderr_and_status_2(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], text: str, names: str, planner: str
) -> None:
    code = main(["plan", str(write(tmp_path, text)), "--planner", planner])
    out, err = capfd.readouterr()
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert err.startswith("hwsched plan: ")
    assert names in err
    assert "Traceback" not in err


def test_a_missing_file_is_one_line_on_stderr_and_status_2(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-problem.json"
    code = main(["plan", str(missing)])
    out, err = capfd.readouterr()
    assert code == 2
    assert out == ""
    assert err.splitlines() == [f"hwsched plan: {missing}: no such file"]


def test_an_unknown_planner_is_a_usage_error(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["plan", str(write(tmp_path, problem_doc())), "--planner", "magic"])
    out, err = capfd.readouterr()
    assert exc.value.code == 2
    assert out == ""
    assert "magic" in err
    assert "Traceback" not in err
