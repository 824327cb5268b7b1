"""The runner's rules: skip what is done and still true, re-run what changed and what depends on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from automation.errors import InputError, StateError
from automation.pipeline import Selection
from automation.state import Status, load_state
from tests.conftest import read_calls


def _edit(pipeline_file: Path, old: str, new: str) -> None:
    pipeline_file.write_text(pipeline_file.read_text().replace(old, new))


def _statuses(runner) -> dict[str, str]:
    state = load_state(runner.state_path)
    assert state is not None
    return {name: record.status.value for name, record in state.stages.items()}


def test_first_run_runs_every_stage_in_order(make_runner, calls_file: Path) -> None:
    runner, out = make_runner()
    assert runner.run(Selection()) == 0
    assert read_calls(calls_file) == ["alpha", "beta", "gamma", "delta"]
    state = load_state(runner.state_path)
    assert state is not None
    assert state.stages["beta"].outputs["upstream"] == {"alpha": "alpha:1000"}
    assert all(record.status is Status.DONE for record in state.stages.values())
    assert (runner.run_dir / "pipeline.resolved.yaml").exists()
    assert "✓ alpha" in out.getvalue()


def test_second_run_skips_everything_with_the_reason(make_runner, calls_file: Path) -> None:
    runner, _ = make_runner()
    runner.run(Selection())
    runner, out = make_runner()
    assert runner.run(Selection()) == 0
    assert read_calls(calls_file) == ["alpha", "beta", "gamma", "delta"]
    assert out.getvalue().count("↷") == 4
    assert "↷ gamma       skipped: still fine" in out.getvalue()


def test_changed_settings_rerun_the_stage_and_its_dependents(make_runner, pipeline_file, calls_file) -> None:
    make_runner()[0].run(Selection())
    _edit(pipeline_file, "isl: 1000", "isl: 2000")
    runner, out = make_runner()
    assert runner.run(Selection()) == 0
    assert read_calls(calls_file)[4:] == ["alpha", "beta", "gamma", "delta"]
    assert "beta" in out.getvalue()


def test_a_rerun_with_unchanged_outputs_does_not_cascade(make_runner, pipeline_file, calls_file) -> None:
    make_runner()[0].run(Selection())
    _edit(pipeline_file, "osl: 100", "osl: 200")  # only beta reads osl; its output does not depend on it
    runner, out = make_runner()
    assert runner.run(Selection()) == 0
    assert read_calls(calls_file)[4:] == ["beta"]
    assert "↷ gamma" in out.getvalue() and "↷ delta" in out.getvalue()


def test_a_stage_whose_result_no_longer_holds_runs_again(make_runner, calls_file, monkeypatch) -> None:
    make_runner()[0].run(Selection())
    monkeypatch.setenv("AUTODEPLOY_TEST_STALE", "gamma")
    runner, out = make_runner()
    runner.run(Selection())
    assert read_calls(calls_file)[4:] == ["gamma"]
    assert "✓ gamma" in out.getvalue()


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        (Selection(from_stage="beta"), ["beta", "gamma", "delta"]),
        (Selection(only=("gamma",)), ["gamma"]),
        (Selection(only=("alpha", "delta")), ["alpha", "delta"]),
        (Selection(force=True), ["alpha", "beta", "gamma", "delta"]),
        (Selection(to_stage="beta"), []),
        (Selection(from_stage="beta", to_stage="gamma"), ["beta", "gamma"]),
    ],
)
def test_selection_on_a_finished_run(make_runner, calls_file, selection, expected) -> None:
    make_runner()[0].run(Selection())
    runner, _ = make_runner()
    assert runner.run(selection) == 0
    assert read_calls(calls_file)[4:] == expected


def test_to_stops_after_the_stage_and_the_rest_resumes_later(make_runner, calls_file) -> None:
    runner, _ = make_runner()
    assert runner.run(Selection(to_stage="beta")) == 0
    assert read_calls(calls_file) == ["alpha", "beta"]
    assert _statuses(runner)["gamma"] == "pending"
    make_runner()[0].run(Selection())
    assert read_calls(calls_file) == ["alpha", "beta", "gamma", "delta"]


def test_only_a_stage_whose_inputs_never_ran_fails_clearly(make_runner, calls_file) -> None:
    runner, out = make_runner()
    assert runner.run(Selection(only=("gamma",))) == 1
    assert "gamma needs the results of beta" in out.getvalue()
    assert "--from beta" in out.getvalue()
    assert _statuses(runner)["gamma"] == "failed"


def test_failure_is_recorded_and_the_next_run_resumes_there(make_runner, calls_file, monkeypatch) -> None:
    monkeypatch.setenv("AUTODEPLOY_TEST_FAIL", "beta")
    runner, out = make_runner()
    assert runner.run(Selection()) == 1
    text = out.getvalue()
    assert "✗ beta" in text and "beta was told to fail" in text
    assert "fix: unset AUTODEPLOY_TEST_FAIL" in text and "logs/beta.log" in text
    state = load_state(runner.state_path)
    assert state is not None
    error = state.stages["beta"].error
    assert error is not None
    assert error["type"] == "StageError" and error["host"] == "node9" and error["log"] == "logs/beta.log"
    assert state.stages["gamma"].status is Status.PENDING
    monkeypatch.delenv("AUTODEPLOY_TEST_FAIL")
    runner, out = make_runner()
    assert runner.run(Selection()) == 0
    assert read_calls(calls_file) == ["alpha", "beta", "beta", "gamma", "delta"]
    assert "↷ alpha" in out.getvalue()
    assert load_state(runner.state_path).stages["beta"].attempts == 2  # type: ignore[union-attr]


def test_unexpected_exception_goes_to_the_crash_log(make_runner, calls_file, monkeypatch) -> None:
    monkeypatch.setenv("AUTODEPLOY_TEST_CRASH", "alpha")
    runner, out = make_runner()
    assert runner.run(Selection()) == 1
    crash = (runner.run_dir / "logs" / "crash.log").read_text()
    assert "ZeroDivisionError: told to crash" in crash and "Traceback" in crash
    assert "Traceback" not in out.getvalue()
    assert "unexpected ZeroDivisionError" in out.getvalue()
    assert _statuses(runner)["alpha"] == "failed"


def test_plan_runs_nothing_and_explains(make_runner, pipeline_file, calls_file) -> None:
    runner, _ = make_runner()
    decisions = runner.plan(Selection())
    assert [d.action for d in decisions] == ["run"] * 4
    assert not runner.run_dir.exists()
    runner.run(Selection())
    _edit(pipeline_file, "osl: 100", "osl: 200")
    runner, _ = make_runner()
    decisions = {d.stage: d for d in runner.plan(Selection())}
    assert decisions["alpha"].action == "skip"
    assert (decisions["beta"].action, decisions["beta"].reason) == ("run", "its settings changed")
    assert (decisions["gamma"].action, decisions["gamma"].reason) == ("run", "beta runs first")
    assert decisions["delta"].action == "skip"
    assert read_calls(calls_file) == ["alpha", "beta", "gamma", "delta"]


def test_secrets_never_reach_state_or_logs(make_runner, calls_file, monkeypatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_topsecretvalue42")
    runner, _ = make_runner()
    assert runner.run(Selection()) == 0
    files = [runner.state_path, *runner.run_dir.rglob("*.log"), runner.run_dir / "pipeline.resolved.yaml"]
    for path in files:
        assert "hf_topsecretvalue42" not in path.read_text(), path
    assert "***" in (runner.run_dir / "logs" / "alpha.log").read_text()


def test_unknown_stage_names_are_bad_input(make_runner) -> None:
    runner, _ = make_runner()
    with pytest.raises(InputError, match="did you mean 'gamma'"):
        runner.run(Selection(from_stage="gamm"))
    with pytest.raises(InputError, match="cannot be combined"):
        runner.run(Selection(only=("alpha",), to_stage="beta"))


def test_two_runners_cannot_share_a_run_directory(make_runner) -> None:
    first, _ = make_runner()
    second, _ = make_runner()
    with first.lock(), pytest.raises(InputError, match="another autodeploy"):
        second.run(Selection())


def test_a_run_directory_belongs_to_one_run(make_runner, pipeline_file) -> None:
    make_runner()[0].run(Selection())
    _edit(pipeline_file, "name: unit", "name: other")
    with pytest.raises(StateError, match="holds run 'unit'"):
        make_runner()[0].run(Selection())


def test_down_tears_down_and_the_next_run_restarts_what_it_stopped(make_runner, calls_file) -> None:
    make_runner()[0].run(Selection())
    runner, out = make_runner()
    assert runner.down() == 0
    assert "stopped: gamma's processes" in out.getvalue()
    assert _statuses(runner)["gamma"] == "stopped"
    runner, out = make_runner()
    assert runner.down() == 0
    assert "stopped: gamma's processes" in out.getvalue()  # safe to run twice
    runner, out = make_runner()
    assert runner.run(Selection()) == 0
    assert read_calls(calls_file)[4:] == ["gamma"]


def test_outputs_are_json_in_the_state_file(make_runner, calls_file) -> None:
    runner, _ = make_runner()
    runner.run(Selection())
    data = json.loads(runner.state_path.read_text())
    assert data["schema_version"] == 2
    assert data["stages"]["alpha"]["outputs"]["value"] == "alpha:1000"
    assert data["stages"]["alpha"]["input_digests"].keys() == {"settings"}
    assert data["stages"]["beta"]["input_digests"].keys() == {"settings", "alpha"}


def test_report_fields_do_not_rerun_the_stages_after(make_runner, calls_file) -> None:
    """A re-run that changes only what a stage reports (here: when it ran) leaves its dependents done."""
    make_runner()[0].run(Selection())
    runner, _ = make_runner()
    assert runner.run(Selection(only=("alpha",))) == 0  # alpha's ran_at (a report field) changes
    calls_file.write_text("")
    runner, out = make_runner()
    assert runner.run(Selection()) == 0
    assert read_calls(calls_file) == []
    assert out.getvalue().count("skipped") == 4


def test_identity_leaves_out_what_stages_only_report() -> None:
    from automation.contracts import CheckpointOutputs, InfraOutputs, LaunchOutputs

    infra = InfraOutputs(
        runtime="native",
        node="n0",
        etcd_endpoint="e",
        nats_server="n",
        handles={"etcd": {"pid": 1}},
        reused=["etcd"],
    )
    assert "reused" not in infra.identity() and infra.identity()["handles"] == {"etcd": {"pid": 1}}
    launch = LaunchOutputs(
        frontend="f", remote_dir="d", processes={}, expected_instances={}, reused_nodes=[0]
    )
    assert "reused_nodes" not in launch.identity()
    checkpoint = CheckpointOutputs(path="/m", source="hub", downloaded_to=["n1"])
    assert "downloaded_to" not in checkpoint.identity()
    assert checkpoint.record()["downloaded_to"] == ["n1"]  # still recorded, for status


def test_down_tries_every_teardown_and_reports_each_failure(make_runner, calls_file, monkeypatch) -> None:
    from tests.harness.stages import STAGES_WITH_EPSILON

    make_runner(stages=STAGES_WITH_EPSILON)[0].run(Selection())
    monkeypatch.setenv("AUTODEPLOY_TEST_TEARDOWN_FAIL", "epsilon")
    runner, out = make_runner(stages=STAGES_WITH_EPSILON)
    assert runner.down() == 1
    text = out.getvalue()
    assert "could not stop: node7 cannot be reached (bring node7 back)" in text
    assert "stopped: gamma's processes" in text  # torn down although epsilon's teardown (first) failed
    assert "run autodeploy down again" in text
    statuses = _statuses(runner)
    assert statuses["gamma"] == "stopped" and statuses["epsilon"] == "done"  # what failed stays to retry
    monkeypatch.delenv("AUTODEPLOY_TEST_TEARDOWN_FAIL")
    runner, out = make_runner(stages=STAGES_WITH_EPSILON)
    assert runner.down() == 0 and "stopped: epsilon's processes" in out.getvalue()


def test_a_record_of_an_older_autodeploy_reads_as_nothing_recorded() -> None:
    """An old plan shape (or prediction) in state.json makes the stage run again, never a crash."""
    from automation.contracts import ConfigureOutputs, recorded

    old_plan = {"mode": "agg", "plan": {"mode": "agg", "roles": [{"role": "agg", "tp": 1}]}, "prediction": {}}
    assert recorded(ConfigureOutputs, old_plan) is None
    assert recorded(ConfigureOutputs, {"mode": "agg", "unknown": 1}) is None
    assert recorded(ConfigureOutputs, {}) is None
