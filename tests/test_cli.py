"""The command line: exit codes, status, plan, and the real stage list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from automation.cli import main
from automation.pipeline import STAGES
from tests.conftest import REPO, run_harness


def test_the_pipeline_has_the_eight_stages_in_order() -> None:
    assert [s.name for s in STAGES] == [
        "configure",
        "generate",
        "build",
        "checkpoint",
        "infra",
        "launch",
        "benchmark",
        "summarize",
    ]


def test_every_stage_declares_only_earlier_needs() -> None:
    names = [s.name for s in STAGES]
    for index, stage in enumerate(STAGES):
        assert set(stage.needs) <= set(names[:index]), stage.name
        assert stage.summary and stage.__doc__


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: autodeploy" in capsys.readouterr().out


def test_usage_error_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: autodeploy run: the following arguments are required: pipeline")


def test_missing_pipeline_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["plan", str(tmp_path / "nope.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_status_and_plan_after_a_run(pipeline_file: Path, calls_file: Path) -> None:
    run_dir = str(pipeline_file.parent / "run")
    assert run_harness("run", str(pipeline_file), "--run-dir", run_dir).returncode == 0
    status = run_harness("status", run_dir)
    assert status.returncode == 0
    for name in ("alpha", "beta", "gamma", "delta"):
        assert name in status.stdout
    assert status.stdout.count("done") >= 4
    as_json = json.loads(run_harness("status", run_dir, "--json").stdout)
    assert as_json["stages"]["delta"]["status"] == "done"
    plan = run_harness("plan", str(pipeline_file), "--run-dir", run_dir, "--from", "gamma")
    assert plan.returncode == 0
    assert "↷ alpha" not in plan.stdout and "· alpha" in plan.stdout
    assert "→ gamma       will run: re-run from gamma" in plan.stdout


def test_status_lists_runs_in_the_working_directory(pipeline_file: Path, calls_file: Path) -> None:
    cwd = pipeline_file.parent
    assert run_harness("run", str(pipeline_file), cwd=cwd).returncode == 0
    listing = run_harness("status", cwd=cwd)
    assert "unit" in listing.stdout and "4/4 done" in listing.stdout
    empty = cwd / "empty"
    empty.mkdir()
    none = run_harness("status", cwd=empty)
    assert none.returncode == 0 and "no runs under autodeploy-runs/" in none.stdout


def test_a_stage_run_alone_without_its_inputs_fails_and_is_never_done(tmp_path: Path, capsys) -> None:
    """--only summarize on a fresh run: the results it reads do not exist, so it fails and says how to get them."""
    example = REPO / "examples" / "rehearsal.yaml"
    code = main(["run", str(example), "--run-dir", str(tmp_path / "run"), "--only", "summarize"])
    out = capsys.readouterr().out
    assert code == 1
    assert "✗ summarize" in out and "summarize needs the results of configure" in out
    assert "--from configure" in out
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["stages"]["summarize"]["status"] == "failed"
