"""aiperf 0.13.0 as the benchmark client against the real Dynamo frontend and mocker (agg and disagg)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from automation.bench.aiperf import aiperf_summary, find_aiperf, read_export, run_aiperf_level
from automation.bench.metrics import summarize
from automation.pipeline import Selection
from automation.state import load_state
from tests.conftest import REPO
from tests.integration.test_launch import _pipeline, _run_processes, _runner
from tests.services import require

AIPERF = Path(os.environ.get("AUTODEPLOY_AIPERF", REPO / ".venv-aiperf" / "bin" / "aiperf"))
ISL, OSL, CONCURRENCY, REQUESTS, WARMUP = 64, 8, 2, 6, 2


@pytest.mark.parametrize(("mode", "endpoint"), [("agg", "completions"), ("disagg", "chat")])
def test_aiperf_measures_a_deployment_as_the_builtin_client_would(
    tmp_path: Path, tiny_model: Path, mode: str, endpoint: str
) -> None:
    require(AIPERF.exists(), f"{AIPERF} is missing: run scripts/install-aiperf.sh (make test does)")
    gpus = 1 if mode == "agg" else 2
    path = _pipeline(tmp_path, tiny_model, modes=[mode], total_gpus=gpus, name=f"aiperf-{mode}")
    runner, out = _runner(path)
    artifacts = tmp_path / "aiperf" / f"c{CONCURRENCY}"
    try:
        assert runner.run(Selection(to_stage="launch")) == 0, out.getvalue()
        stages = load_state(runner.state_path).stages  # type: ignore[union-attr]
        assert stages["configure"].outputs["mode"] == mode  # type: ignore[index]
        instances = stages["launch"].outputs["expected_instances"]  # type: ignore[index]
        frontend = stages["launch"].outputs["frontend"]  # type: ignore[index]
        level = run_aiperf_level(
            aiperf_bin=find_aiperf(str(AIPERF)),
            url=frontend,
            model="Qwen/Qwen3-8B",
            tokenizer=str(tiny_model),
            isl=ISL,
            osl=OSL,
            concurrency=CONCURRENCY,
            requests=REQUESTS,
            warmup=WARMUP,
            seed=3,
            endpoint=endpoint,  # type: ignore[arg-type]
            artifacts=artifacts,
            timeout_s=120,
            log=tmp_path / "aiperf.log",
        )
    finally:
        _runner(path)[0].down()
    assert _run_processes(path) == []

    print(f"{mode}: instances {instances}, aiperf {level.wall_s:.1f} s")
    assert level.version == "0.13.0" and len(level.records) == REQUESTS
    for record in level.records:
        assert record.error is None and not record.warmup
        # Exactly ISL as the server counts it (chat: ISL of user message plus the template's tokens,
        # which the tiny model's template makes 5, as the built-in client sends), exactly OSL.
        assert (record.input_tokens, record.output_tokens) == (ISL + (5 if endpoint == "chat" else 0), OSL)
        assert record.cached_tokens is not None  # usage.prompt_tokens_details.cached_tokens
        assert record.ttft_ms is not None and record.ttft_ms > 0

    # Every request, warm-up included, got its own prompt.
    payloads = [
        session["payloads"][0] for session in json.loads((artifacts / "inputs.json").read_text())["data"]
    ]
    prompts = [p.get("prompt") or p["messages"][0]["content"] for p in payloads]
    assert len(prompts) == len(set(prompts)) == REQUESTS + WARMUP
    sessions = [
        json.loads(line)["metadata"]["conversation_id"]
        for line in (artifacts / "profile_export.jsonl").open()
    ]
    assert len(sessions) == len(set(sessions)) == REQUESTS + WARMUP

    # The measured phase starts after the last warm-up request has ended, and holds CONCURRENCY in flight.
    everything = read_export(artifacts)
    warm_end = max(r.end for r in everything if r.warmup and r.end is not None)
    assert min(r.start for r in level.records) > warm_end
    events = sorted([(r.start, 1) for r in level.records] + [(r.end or 0.0, -1) for r in level.records])
    in_flight = peak = 0
    for _, step in events:
        in_flight += step
        peak = max(peak, in_flight)
    assert peak == CONCURRENCY

    # Our statistics from its records are its own aggregates.
    ours, theirs = summarize(level.records, CONCURRENCY, gpus), aiperf_summary(artifacts)
    assert theirs["request_count"] == ours["requests"] == REQUESTS
    assert ours["time_to_first_token_ms"]["avg"] == pytest.approx(theirs["time_to_first_token_ms"], abs=1e-3)
    assert ours["inter_token_latency_ms"]["avg"] == pytest.approx(theirs["inter_token_latency_ms"], abs=1e-3)
    assert ours["duration_s"] == pytest.approx(theirs["benchmark_duration_s"], abs=1e-6)
    # aiperf's throughput divides by its phase window, which starts a little before the first request.
    assert (
        0.8 * ours["output_token_throughput"]
        < theirs["output_token_throughput"]
        <= ours["output_token_throughput"]
    )
