"""The configure stage: the sweep's pick is recorded as the plan generate renders, with its prediction."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from automation.perfmodel import Plan, estimate
from automation.pipeline import Runner, Selection
from automation.stages.configure import Configure
from automation.state import load_state
from tests.conftest import MINIMAL_PIPELINE
from tests.harness.runner import quiet_runner


def _run(tmp_path: Path, **changes: object) -> tuple[int, str, Runner]:
    data = yaml.safe_load(MINIMAL_PIPELINE)
    data.update(changes)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    runner, out = quiet_runner(path, [Configure], tmp_path / "run")
    return runner.run(Selection()), out.getvalue(), runner


def test_pick_is_recorded_with_report_files(tmp_path: Path) -> None:
    code, out, runner = _run(tmp_path)
    assert code == 0, out
    outputs = load_state(runner.state_path).stages["configure"].outputs  # type: ignore[union-attr]
    plan = Plan.from_dict(outputs["plan"])
    assert plan.total_gpus <= 8 and plan.mode == outputs["winner"]
    assert outputs["prediction"]["ttft_ms"] <= 500 and outputs["prediction"]["tpot_ms"] <= 20
    assert estimate(plan).to_dict() == outputs["prediction"]  # the record is the model's answer for this plan
    report = tmp_path / "run" / "configure"
    assert json.loads((report / "search.json").read_text())["winner"] == outputs["winner"]
    assert (report / "pareto_frontier.png").stat().st_size > 1000
    assert (report / plan.mode / "best_config_topn.csv").exists()
    assert "predicted" in out and "tok/s/gpu" in out


def test_engine_settings_from_the_pipeline_are_in_the_plan(tmp_path: Path) -> None:
    code, out, runner = _run(
        tmp_path,
        search={"modes": ["disagg"]},
        engine={"free_gpu_memory_fraction": 0.85, "decode": {"free_gpu_memory_fraction": 0.7}},
    )
    assert code == 0, out
    plan = Plan.from_dict(load_state(runner.state_path).stages["configure"].outputs["plan"])  # type: ignore[union-attr]
    assert plan.role("prefill").free_gpu_memory_fraction == 0.85
    assert plan.role("decode").free_gpu_memory_fraction == 0.7


def test_an_sla_nothing_meets_fails_with_the_closest(tmp_path: Path) -> None:
    code, out, runner = _run(tmp_path, sla={"ttft_ms": 1, "tpot_ms": 0.1})
    assert code == 1
    assert "no configuration meets the SLA (TTFT ≤ 1 ms, TPOT ≤ 0.1 ms)" in out
    assert "the closest reaches" in out and "relax sla.ttft_ms" in out
    assert load_state(runner.state_path).stages["configure"].status.value == "failed"  # type: ignore[union-attr]


def test_unknown_model_is_bad_input(tmp_path: Path) -> None:
    code, out, _ = _run(tmp_path, model={"hf_id": "Qwen/Qwen3-33B"})
    assert code == 2
    assert "unknown model 'Qwen/Qwen3-33B'" in out


def _recorded(runner: Runner) -> tuple[Plan, dict[str, Any]]:
    outputs = load_state(runner.state_path).stages["configure"].outputs
    assert outputs is not None
    return Plan.from_dict(outputs["plan"]), outputs


def test_max_batch_size_bounds_the_sweep_and_the_record_is_the_deployed_plan(tmp_path: Path) -> None:
    """engine.max_batch_size is an upper bound on the batch the sweep picks, not a later replacement:
    the recorded plan meets the SLA and its recorded numbers are the model's for exactly that plan."""
    code, out, runner = _run(tmp_path, engine={"max_batch_size": 8})
    assert code == 0, out
    plan, outputs = _recorded(runner)
    assert all(role.max_batch_size <= 8 for role in plan.roles)
    prediction = estimate(plan)
    assert prediction.to_dict() == outputs["prediction"]
    assert prediction.ttft_ms <= 500 and prediction.tpot_ms <= 20 and prediction.fits
    assert outputs["tokens_per_s_per_gpu_cluster"] == prediction.tokens_per_s_per_gpu * plan.total_gpus / 8


def test_per_role_max_batch_size_bounds_only_that_role(tmp_path: Path) -> None:
    code, out, runner = _run(
        tmp_path, search={"modes": ["disagg"]}, engine={"decode": {"max_batch_size": 12}}
    )
    assert code == 0, out
    plan, outputs = _recorded(runner)
    assert plan.role("decode").max_batch_size <= 12
    assert outputs["prediction"]["tpot_ms"] <= 20 and outputs["prediction"]["ttft_ms"] <= 500


def test_free_gpu_memory_fraction_enters_the_fit_of_the_sweep(tmp_path: Path) -> None:
    """With half the free memory for the KV cache the sweep picks a config for half, instead of one
    whose batch only the 0.9 cache holds (at 0.5 the engine would cap it and queue the rest)."""
    case = {
        "model": {"hf_id": "Qwen/Qwen3-32B-FP8"},
        "system": "h100_sxm",
        "workload": {"isl": 16000, "osl": 2000},
        "sla": {"ttft_ms": 5000, "tpot_ms": 40},
        "search": {"modes": ["disagg"]},
    }
    code, out, runner = _run(tmp_path / "a", **case)
    assert code == 0, out
    loose, _ = _recorded(runner)
    code, out, runner = _run(tmp_path / "b", **case, engine={"free_gpu_memory_fraction": 0.5})
    assert code == 0, out
    tight, outputs = _recorded(runner)
    assert {r.free_gpu_memory_fraction for r in tight.roles} == {0.5}
    assert outputs["prediction"]["fits"] and estimate(tight).fits
    at_half = dataclasses.replace(
        loose, roles=tuple(dataclasses.replace(r, free_gpu_memory_fraction=0.5) for r in loose.roles)
    )
    # What the sweep picks at 0.9, run at 0.5: its KV cache caps the batch and the rest of the requests
    # wait (or not even one fits), so the sweep, which saw the smaller cache, chose otherwise.
    halved = estimate(at_half)
    assert not halved.fits or halved.ttft_ms > 2 * estimate(loose).ttft_ms
    assert tight.layout() != loose.layout()
