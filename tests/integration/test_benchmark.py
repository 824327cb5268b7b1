"""The benchmark and summarize stages against the real frontend and mocker (the whole pipeline, on loopback)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from automation.pipeline import Selection
from automation.state import load_state
from tests.integration.test_launch import _pipeline, _run_processes, _runner


def test_the_whole_pipeline_measures_and_compares(tmp_path: Path, tiny_model: Path) -> None:
    path = _pipeline(tmp_path, tiny_model, name="fullrun")
    data = yaml.safe_load(path.read_text())
    data["workload"] = {"isl": 200, "osl": 16}
    data["benchmark"] = {"concurrency": [1, 3], "requests_per_concurrency": 2, "warmup_per_concurrency": 1}
    path.write_text(yaml.safe_dump(data))
    runner, out = _runner(path)
    try:
        assert runner.run(Selection()) == 0, out.getvalue()
        text = out.getvalue()
        assert "✓ benchmark" in text and "✓ summarize" in text and "report/summary.md" in text
        level = json.loads((tmp_path / "run" / "bench" / "c3.json").read_text())
        assert len(level["requests"]) == 9  # (2 measured + 1 warm-up) × 3
        assert sum(r["warmup"] for r in level["requests"]) == 3
        for request in level["requests"]:
            assert request["error"] is None
            assert request["input_tokens"] == 200  # exactly ISL, as the server's tokenizer counts
            assert request["output_tokens"] == 16  # exactly OSL (ignore_eos, min_tokens)
        assert level["summary"]["requests"] == 6 and level["summary"]["errors"] == 0
        # The server's own count over the measured window (burst: nothing else in flight): exactly
        # the measured requests, and its mean TTFT and ITL beside the client's.
        server = level["server"]
        assert server["requests"] == 6 and server["exact_window"] is True, server
        assert server["ttft_ms"] > 0 and server["itl_ms"] > 0
        assert abs(server["gaps"]["itl"]) < 0.10, server
        assert server["inflight_max"] is None or server["inflight_max"] <= 3
        # No prompt token came from a cache, by the client's usage and by the server's counter.
        assert level["summary"]["cached_tokens"] == {"client": 0, "server": 0, "reused": False}
        assert level["method"]["warmup"] == "burst" and level["client"]["name"] == "builtin"
        assert level["telemetry"] == {"absent": "no nvidia-smi GPUs on node0"}
        assert level["summary"]["goodput"]["share"] == 1.0  # the test's SLA is loose
        report = tmp_path / "run" / "report"
        rows = json.loads((report / "summary.json").read_text())["rows"]
        assert [r["concurrency"] for r in rows] == [1, 3]
        for row in rows:
            for key in ("ttft_ms", "tpot_ms", "tokens_per_s_per_gpu", "tokens_per_s_per_user"):
                assert row[f"{key}_measured"] > 0 and row[f"{key}_predicted"] > 0
        assert "| 3 |" in (report / "summary.md").read_text()
        assert (report / "measured_vs_predicted.png").stat().st_size > 10_000
        outputs = load_state(runner.state_path).stages["summarize"].outputs  # type: ignore[union-attr]
        assert outputs["files"] == [
            "report/summary.md",
            "report/summary.json",
            "report/measured_vs_predicted.png",
        ]

        runner, out = _runner(path)  # everything done: nothing runs again
        assert runner.run(Selection()) == 0
        assert out.getvalue().count("↷") == 8
    finally:
        _runner(path)[0].down()
    assert _run_processes(path) == []


def test_an_interrupted_sweep_keeps_the_levels_it_finished(tmp_path: Path, tiny_model: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    path = _pipeline(tmp_path, tiny_model, name="resumesweep")
    data = yaml.safe_load(path.read_text())
    data["workload"] = {"isl": 100, "osl": 64}
    data["benchmark"] = {"concurrency": [1, 2], "requests_per_concurrency": 3, "warmup_per_concurrency": 0}
    path.write_text(yaml.safe_dump(data))
    run_dir = str(tmp_path / "run")
    command = [sys.executable, "-m", "automation", "run", str(path), "--run-dir", run_dir]
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_level = tmp_path / "run" / "bench" / "c1.json"
    try:
        deadline = time.monotonic() + 90
        while not first_level.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first_level.exists()
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=30) == 130
        measured_first = first_level.read_text()
        state = load_state(tmp_path / "run" / "state.json")
        assert state is not None and state.stages["benchmark"].status.value == "interrupted"

        resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert first_level.read_text() == measured_first  # c=1 was not measured again
        assert (
            "c=1: already measured against this deployment"
            in (tmp_path / "run" / "logs" / "benchmark.log").read_text()
        )
        assert (tmp_path / "run" / "bench" / "c2.json").exists()
    finally:
        subprocess.run(
            [sys.executable, "-m", "automation", "down", str(path), "--run-dir", run_dir],
            cwd=REPO,
            capture_output=True,
            timeout=120,
        )
    assert _run_processes(path) == []


def test_a_failed_level_is_measured_again_on_resume(tmp_path: Path, tiny_model: Path) -> None:
    """A level whose requests failed is recorded as not passed, and the resumed sweep measures it again."""
    path = _pipeline(tmp_path, tiny_model, name="failedlevel")
    data = yaml.safe_load(path.read_text())
    data["workload"] = {"isl": 100, "osl": 32}
    # Far below one request's latency: every request of the level times out.
    data["benchmark"] = {
        "concurrency": [1],
        "requests_per_concurrency": 2,
        "warmup_per_concurrency": 0,
        "request_timeout_s": 0.001,
    }
    path.write_text(yaml.safe_dump(data))
    level_file = tmp_path / "run" / "bench" / "c1.json"
    try:
        runner, out = _runner(path)
        assert runner.run(Selection()) == 1
        assert "see bench/c1.json" in out.getvalue()  # the hint names the real level, not c{level}
        failed = json.loads(level_file.read_text())
        assert failed["passed"] is False and failed["summary"]["errors"] == 2

        data["benchmark"]["request_timeout_s"] = 60
        path.write_text(yaml.safe_dump(data))
        runner, out = _runner(path)
        assert runner.run(Selection()) == 0, out.getvalue()
        measured = json.loads(level_file.read_text())
        assert measured["passed"] is True and measured["summary"]["errors"] == 0
        log = (tmp_path / "run" / "logs" / "benchmark.log").read_text()
        assert "c=1: already measured" not in log
    finally:
        _runner(path)[0].down()
    assert _run_processes(path) == []


# What the rehearsal achieves (docs/decisions.md): the mockers follow the model's step times, so the
# measured TPOT and tokens/s/gpu must agree with the prediction. Measured on this 2-core machine with
# the counts below (3 requests per level): see docs/decisions.md for the numbers behind these bounds.
REHEARSAL_TPOT_TOLERANCE = 0.05
REHEARSAL_TOKENS_PER_GPU_TOLERANCE = 0.10


def test_the_rehearsal_agrees_with_its_prediction(tmp_path: Path, tiny_model: Path) -> None:
    """examples/rehearsal.yaml (Qwen3-32B-FP8 disagg on 8 × H200, mocked): a test that fails when the
    mocker profiles and the performance model drift apart."""
    from tests.conftest import REPO
    from tests.integration.conftest import DYNAMO_PYTHON
    from tests.services import free_port

    data = yaml.safe_load((REPO / "examples" / "rehearsal.yaml").read_text())
    data["model"]["path"] = str(tiny_model)
    data["cluster"]["work_dir"] = str(tmp_path / "nodes")
    data["dynamo"]["frontend_port"] = free_port()
    data["infra"] = {
        "runtime": "native",
        "etcd_port": free_port(),
        "etcd_peer_port": free_port(),
        "nats_port": free_port(),
        "nats_monitor_port": free_port(),
    }
    data["launch"].update(python=str(DYNAMO_PYTHON), system_port_base=free_port())
    data["benchmark"] = {"concurrency": [1, 8], "requests_per_concurrency": 3, "warmup_per_concurrency": 1}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    runner, out = _runner(path)
    try:
        assert runner.run(Selection()) == 0, out.getvalue()
        rows = json.loads((tmp_path / "run" / "report" / "summary.json").read_text())["rows"]
        errors = {r["concurrency"]: (r["tpot_ms_error"], r["tokens_per_s_per_gpu_error"]) for r in rows}
        print("rehearsal errors (TPOT, tokens/s/gpu) by concurrency:", errors)
        for concurrency, (tpot, per_gpu) in errors.items():
            assert abs(tpot) <= REHEARSAL_TPOT_TOLERANCE, (concurrency, errors)
            assert abs(per_gpu) <= REHEARSAL_TOKENS_PER_GPU_TOLERANCE, (concurrency, errors)
    finally:
        _runner(path)[0].down()
    assert _run_processes(path) == []


def test_a_rehearsal_planned_by_aiconfigurator_reports_three_columns(
    tmp_path: Path, tiny_model: Path
) -> None:
    """examples/aiconfigurator-rehearsal.yaml: aiconfigurator's committed pick (disagg 1P tp4 + 1D tp4 bs64)
    is deployed whole (both workers placed and serving) and the report sets measured, autodeploy's
    prediction and aiconfigurator's side by side; then a second run with another concurrency list uses
    the first as its baseline."""
    from tests.conftest import REPO
    from tests.integration.conftest import DYNAMO_PYTHON
    from tests.services import free_port

    data = yaml.safe_load((REPO / "examples" / "aiconfigurator-rehearsal.yaml").read_text())
    data["configure"]["aiconfigurator_dir"] = str(
        REPO / "tests" / "data" / "aiconfigurator" / "qwen3-32b-fp8-h200-8gpu" / "save_dir"
    )
    data["model"]["path"] = str(tiny_model)
    data["cluster"]["work_dir"] = str(tmp_path / "nodes")
    data["dynamo"]["frontend_port"] = free_port()
    data["infra"] = {
        "runtime": "native",
        "etcd_port": free_port(),
        "etcd_peer_port": free_port(),
        "nats_port": free_port(),
        "nats_monitor_port": free_port(),
    }
    data["launch"].update(python=str(DYNAMO_PYTHON), system_port_base=free_port())
    data["benchmark"] = {"concurrency": [1, 64], "requests_per_concurrency": 1, "warmup_per_concurrency": 0}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    runner, out = _runner(path)
    try:
        assert runner.run(Selection()) == 0, out.getvalue()
        run = tmp_path / "run"
        state = json.loads((run / "state.json").read_text())
        configure = state["stages"]["configure"]["outputs"]
        assert configure["source"] == "aiconfigurator" and configure["aiconfigurator"]["rank"] == 1
        assert configure["plan"]["mode"] == "disagg" and configure["plan"]["replicas"] == 1
        placement = json.loads((run / "generated" / "placement.json").read_text())
        roles = sorted(worker.split("-")[0] for node in placement["nodes"] for worker in node["workers"])
        assert roles == ["decode", "prefill"], placement  # every worker of the pick's replica
        summary = json.loads((run / "report" / "summary.json").read_text())
        for level in summary["levels"]:
            theirs = level["aiconfigurator"]
            assert (
                theirs["tpot_ms"] > 0
                and level["predicted"]["tpot_ms"] > 0
                and level["measured"]["tpot_ms"] > 0
            )
        at = {level["concurrency"]: level["aiconfigurator"]["at"] for level in summary["levels"]}
        assert at[64] == "level"  # its own design point: concurrency 64 over one replica
        assert "## aiconfigurator's prediction" in (run / "report" / "summary.md").read_text()

        # The same deployment measured again at other levels, against the first measurement as baseline.
        shutil.copytree(run, tmp_path / "baseline")
        data["benchmark"] = {
            "concurrency": [1, 8],
            "requests_per_concurrency": 1,
            "warmup_per_concurrency": 0,
            "baseline": str(tmp_path / "baseline"),
        }
        second = tmp_path / "second.yaml"
        second.write_text(yaml.safe_dump(data))
        again, out = _runner(second)
        assert again.run(Selection(only=("benchmark", "summarize"))) == 0, out.getvalue()
        text = (tmp_path / "run" / "report" / "summary.md").read_text()
        assert "## Against the baseline" in text and "not in baseline" in text  # c=8 only in this run
    finally:
        _runner(path)[0].down()
    assert _run_processes(path) == []


def test_a_sweep_past_its_limit_stops_and_keeps_what_it_measured(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep's real stop rule, judged against a TTFT limit of 0.01 ms instead of the deployed SLA's
    (configure needs a feasible SLA): the first level ends the sweep, and summarize reports it."""
    from automation.bench import sweep

    judged = sweep.stop_reason
    monkeypatch.setattr(sweep, "stop_reason", lambda document, ttft, bench: judged(document, 0.01, bench))
    path = _pipeline(tmp_path, tiny_model, name="earlystop")
    data = yaml.safe_load(path.read_text())
    data["workload"] = {"isl": 100, "osl": 8}
    data["benchmark"] = {"concurrency": [1, 2, 4], "requests_per_concurrency": 2}
    path.write_text(yaml.safe_dump(data))
    runner, out = _runner(path)
    try:
        assert runner.run(Selection()) == 0, out.getvalue()
        outputs = load_state(runner.state_path).stages["benchmark"].outputs  # type: ignore[union-attr]
        assert outputs["names"] == ["c1"] and outputs["levels"] == [1]  # type: ignore[index]
        assert "mean TTFT" in outputs["stopped"] and "over 10 ×" in outputs["stopped"]  # type: ignore[index]
        assert not (tmp_path / "run" / "bench" / "c2.json").exists()
        assert "stopped" in json.loads((tmp_path / "run" / "bench" / "c1.json").read_text())
        summary = json.loads((tmp_path / "run" / "report" / "summary.json").read_text())
        assert [level["concurrency"] for level in summary["levels"]] == [1]
        assert summary["stopped"]["reason"] == outputs["stopped"]  # type: ignore[index]
    finally:
        _runner(path)[0].down()
    assert _run_processes(path) == []


def test_poisson_arrivals_on_the_chat_endpoint_from_two_processes(tmp_path: Path, tiny_model: Path) -> None:
    """benchmark.mode: request_rate against the real frontend: every request leaves when the schedule
    says (from two client processes), and the chat template's extra prompt tokens are counted."""
    from automation.bench.sweep import poisson_arrivals

    path = _pipeline(tmp_path, tiny_model, name="rate")
    data = yaml.safe_load(path.read_text())
    data["workload"] = {"isl": 100, "osl": 8}
    data["benchmark"] = {
        "mode": "request_rate",
        "request_rates": [5.0],
        "endpoint": "chat",
        "client_processes": 2,
        "requests_per_concurrency": 20,
    }
    path.write_text(yaml.safe_dump(data))
    runner, out = _runner(path)
    try:
        assert runner.run(Selection()) == 0, out.getvalue()
        outputs = load_state(runner.state_path).stages["benchmark"].outputs  # type: ignore[union-attr]
        assert outputs["names"] == ["r5"] and outputs["files"] == {"r5": "bench/r5.json"}  # type: ignore[index]
        level = json.loads((tmp_path / "run" / "bench" / "r5.json").read_text())
    finally:
        _runner(path)[0].down()
    assert _run_processes(path) == []
    requests = sorted(level["requests"], key=lambda r: r["index"])
    assert level["client"]["processes"] == 2 and all(r["error"] is None for r in requests)
    schedule = poisson_arrivals(5.0, len(requests), level["method"]["seed"])
    base = requests[0]["scheduled"] - schedule[0]
    for request, due in zip(requests, schedule, strict=True):
        assert request["scheduled"] == pytest.approx(base + due, abs=1e-6)  # the seeded schedule
        assert 0 <= request["start"] - request["scheduled"] < 0.05  # sent on time, to 50 ms
    assert level["summary"]["schedule_lag_ms"]["max"] < 50
    assert level["method"]["endpoint"] == "chat" and level["method"]["chat_template_tokens"] > 0
    assert all(r["input_tokens"] == 100 + level["method"]["chat_template_tokens"] for r in requests)


def test_both_clients_measure_each_level_and_the_report_shows_their_difference(
    tmp_path: Path, tiny_model: Path
) -> None:
    from tests.integration.test_aiperf_client import AIPERF
    from tests.services import require

    require(AIPERF.exists(), f"{AIPERF} is missing: run scripts/install-aiperf.sh (make test does)")
    path = _pipeline(tmp_path, tiny_model, name="bothclients")
    data = yaml.safe_load(path.read_text())
    data["workload"] = {"isl": 64, "osl": 8}
    data["benchmark"] = {
        "concurrency": [2],
        "requests_per_concurrency": 3,
        "client": "both",
        "aiperf_bin": str(AIPERF),
    }
    path.write_text(yaml.safe_dump(data))
    runner, out = _runner(path)
    try:
        assert runner.run(Selection()) == 0, out.getvalue()
        level = json.loads((tmp_path / "run" / "bench" / "c2.json").read_text())
    finally:
        _runner(path)[0].down()
    assert _run_processes(path) == []
    theirs = level["clients"]["aiperf"]
    assert theirs["client"]["version"] == "0.13.0" and theirs["summary"]["requests"] == 6
    assert (tmp_path / "run" / theirs["artifacts"]).is_dir()
    assert set(theirs["difference"]) == {"ttft_ms", "tpot_ms", "output_token_throughput"}
    assert theirs["server"]["requests"] == 8  # aiperf's window: its 2 warm-up and 6 measured requests
    assert level["server"]["requests"] == 6  # the built-in client's: the measured ones
    assert "aiperf" in (tmp_path / "run" / "report" / "summary.md").read_text()
