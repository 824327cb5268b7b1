"""Calibration closes the loop: mockers slower than the model believes, measured, calibrated, re-planned, re-run."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from automation.cli import main
from automation.perfmodel.calibration import read
from automation.pipeline import Selection
from tests.harness.runner import quiet_runner
from tests.integration.test_launch import _pipeline, _run_processes

# The "cluster" the mockers play: prefill 1.8× and decode 1.4× slower than the shipped model.
PREFILL_FACTOR, DECODE_FACTOR = 1.8, 1.4


def _levels(run_dir: Path) -> dict[int, dict[str, float]]:
    rows = json.loads((run_dir / "report" / "summary.json").read_text())["rows"]
    return {r["concurrency"]: {k: r[f"{k}_error"] for k in ("ttft_ms", "tpot_ms")} for r in rows}


def test_a_slow_cluster_is_calibrated_and_the_rerun_agrees(tmp_path: Path, tiny_model: Path) -> None:
    # Disaggregated: each mocker runs only prefill or only decode steps, so each factor shows on its own.
    path = _pipeline(tmp_path, tiny_model, name="calloop", modes=["disagg"], total_gpus=2)
    data = yaml.safe_load(path.read_text())
    # Steps of tens of milliseconds (a 32B model, 1,500-token prompts): far above this machine's noise.
    data["model"]["hf_id"] = "Qwen/Qwen3-32B-FP8"
    data["workload"] = {"isl": 1500, "osl": 48}
    data["sla"] = {"ttft_ms": 5000, "tpot_ms": 100}
    data["launch"]["mocker_speed"] = {"prefill": PREFILL_FACTOR, "decode": DECODE_FACTOR}
    data["benchmark"] = {"concurrency": [1, 4, 8], "requests_per_concurrency": 4, "warmup_per_concurrency": 1}
    path.write_text(yaml.safe_dump(data))
    first, calibrated = tmp_path / "run", tmp_path / "run-calibrated"
    calibration = tmp_path / "calibration.yaml"
    try:
        runner, out = quiet_runner(path, run_dir=first)
        assert runner.run(Selection()) == 0, out.getvalue()
        before = _levels(first)
        runner.down()
        # The uncalibrated model is about the factors too fast.
        for concurrency, errors in before.items():
            assert errors["tpot_ms"] > 0.25, (concurrency, before)
            assert errors["ttft_ms"] > 0.25, (concurrency, before)

        assert main(["calibrate", str(first), "--out", str(calibration)]) == 0
        fitted = read(calibration).systems["h200_sxm"]
        assert abs(fitted.decode_scale / DECODE_FACTOR - 1) < 0.1, fitted
        assert abs(fitted.prefill_scale / PREFILL_FACTOR - 1) < 0.25, fitted
        assert fitted.after.tpot_median_abs < fitted.before.tpot_median_abs

        data["perfmodel"] = {"calibration": str(calibration)}
        path.write_text(yaml.safe_dump(data))
        runner, out = quiet_runner(path, run_dir=calibrated)
        assert runner.run(Selection()) == 0, out.getvalue()
        after = _levels(calibrated)
        print("errors before calibration:", before, "after:", after)
        for concurrency, errors in after.items():
            assert abs(errors["tpot_ms"]) < 0.05, (concurrency, after)
            assert abs(errors["ttft_ms"]) < 0.15, (concurrency, after)
        facts = json.loads((calibrated / "report" / "summary.json").read_text())["run"]
        assert str(calibration) in facts["calibration"] and "decode ×" in facts["calibration"]
        assert "calibration in force" in (calibrated / "report" / "summary.md").read_text()
    finally:
        quiet_runner(path, run_dir=calibrated)[0].down()
    assert _run_processes(path) == []
