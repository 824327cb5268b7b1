"""The benchmark's load and verdicts: levels, Poisson schedules, goodput, the server's window, client
health, early stops and GPU telemetry, on hand-made data and a real frontend's /metrics text."""

from __future__ import annotations

import itertools
import os
import stat
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest

from automation.bench import server_metrics
from automation.bench.client import SATURATED_CPU_SHARE, _health, request_body
from automation.bench.metrics import RequestRecord, goodput, summarize
from automation.bench.sweep import (
    LevelSpec,
    client_processes,
    plan_levels,
    poisson_arrivals,
    stop_reason,
)
from automation.bench.telemetry import GpuTelemetry
from automation.config.schema import Benchmark
from automation.remote import LocalHost
from tests.conftest import REPO

METRICS = (REPO / "tests" / "data" / "metrics" / "dynamo-1.6.1-frontend.txt").read_text()
MODEL = "Qwen/Qwen3-32B-FP8"


def _record(index: int, ttft: float, itl: float, tokens: int = 11, warmup: bool = False) -> RequestRecord:
    start = float(index)
    first = start + ttft / 1000
    return RequestRecord(index, warmup, start, first, first + itl * (tokens - 1) / 1000, tokens)


def test_goodput_counts_requests_meeting_both_limits() -> None:
    records = [_record(0, 100, 5), _record(1, 400, 5), _record(2, 100, 15), _record(3, 250, 9.9)]
    result = goodput(records, measured=5, duration_s=2.0, ttft_limit_ms=300, tpot_limit_ms=10)
    assert result["requests"] == 2  # the first and the last; a fifth request failed
    assert result["share"] == pytest.approx(2 / 5)
    assert result["rate_per_s"] == pytest.approx(1.0)


def test_level_summary_carries_goodput_and_the_cached_token_proof() -> None:
    records = [_record(0, 100, 5), _record(1, 400, 5)]
    records[0].cached_tokens, records[1].cached_tokens = 0, 16
    summary = summarize(records, concurrency=1, gpus=1, sla=(300, 10))
    assert summary["goodput"]["requests"] == 1
    assert summary["cached_tokens"] == {"client": 16}
    assert summarize([_record(0, 100, 5)], 1, 1)["cached_tokens"] == {"client": None}  # never said


def test_chat_requests_carry_messages_and_completions_a_prompt() -> None:
    chat = request_body("m", "hello", 8, "chat")
    assert chat["messages"] == [{"role": "user", "content": "hello"}] and "prompt" not in chat
    plain = request_body("m", "hello", 8)
    assert plain["prompt"] == "hello" and plain["min_tokens"] == plain["max_tokens"] == 8


def test_poisson_arrivals_follow_their_rate_and_seed() -> None:
    times = poisson_arrivals(4.0, 4000, seed=3)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[0] == 0.0 and all(g >= 0 for g in gaps)
    assert statistics.mean(gaps) == pytest.approx(0.25, rel=0.05)
    assert statistics.stdev(gaps) == pytest.approx(0.25, rel=0.08)  # exponential: sd = mean
    assert poisson_arrivals(4.0, 10, seed=3) == times[:10]
    assert poisson_arrivals(4.0, 10, seed=4) != times[:10]


def _design(concurrency: float = 32.0) -> SimpleNamespace:
    return SimpleNamespace(ttft_ms=200.0, tpot_ms=7.0, concurrency=concurrency)


def test_rate_levels_size_their_counts_by_littles_law() -> None:
    bench = Benchmark(mode="request_rate", request_rates="auto", requests_per_concurrency=10)
    levels = plan_levels(bench, SimpleNamespace(total_gpus=8), _design(32.0), osl=500)
    peak = 32.0 / (0.2 + 500 * 0.007)  # the design point's requests per second
    assert [spec.rate_per_s for spec in levels] == [round(s * peak, 3) for s in (0.25, 0.5, 0.75, 1.0)]
    last = levels[-1]
    assert last.name == f"r{last.rate_per_s:g}" and last.concurrency == 32  # λ × latency
    assert last.measured == 320 and last.warmup == 32
    assert len({spec.seed for spec in levels}) == 4  # no level repeats another's prompts


def test_client_processes_follow_the_predicted_token_rate() -> None:
    spec = LevelSpec("c64", 64, None, 64, 640, 1, expected_tokens_per_s=1e9)
    assert client_processes("auto", spec) == min(64, os.cpu_count() or 1)
    assert client_processes("auto", LevelSpec("c2", 2, None, 2, 20, 1, 100.0)) == 1
    assert client_processes(3, spec) == 3


def test_a_busy_or_late_client_is_saturated_and_says_why() -> None:
    records = [_record(0, 100, 5)]
    calm = _health(1, [(0.2, 8.0, 9.0)], records)  # over 5 % of TTFT, under the floor
    assert not calm.saturated and calm.reason is None
    busy = _health(2, [(0.3, 1.0, 2.0), (SATURATED_CPU_SHARE + 0.01, 1.0, 2.0)], records)
    assert busy.saturated and "busy" in (busy.reason or "")
    late = _health(1, [(0.2, 12.0, 20.0)], records)  # 12 ms late on a 100 ms TTFT: over 5 % and the floor
    assert late.saturated and "late" in (late.reason or "")


def _document(errors: int = 0, ttft: float = 100.0, saturated: bool = False) -> dict[str, object]:
    return {
        "level": "c8",
        "passed": errors <= 0.05 * 80,
        "summary": {"errors": errors, "requests": 80, "time_to_first_token_ms": {"avg": ttft}},
        "client": {"saturation": {"saturated": saturated, "reason": "busy 90%"}},
    }


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (_document(), None),
        (_document(errors=5), "c8: 5 of 80 requests failed (more than 5%)"),
        (_document(ttft=3001), "c8: mean TTFT 3001 ms is over 10 × the SLA's 300 ms"),
        (_document(saturated=True), "c8: the built-in client saturated (busy 90%)"),
    ],
)
def test_the_sweep_stops_with_its_reason(document: dict[str, object], expected: str | None) -> None:
    reason = stop_reason(document, 300.0, Benchmark())
    assert (reason is None) if expected is None else (reason or "").startswith(expected)


def test_the_frontends_metrics_are_read_as_the_frontend_wrote_them() -> None:
    taken = server_metrics.snapshot(METRICS, MODEL)
    assert taken is not None and taken.prefix == "dynamo_frontend"
    assert taken.values["ttft_count"] == 943 and taken.values["itl_count"] == 423762
    assert taken.succeeded == 943 and taken.failed == 0
    assert server_metrics.snapshot(METRICS, "another/model").values["ttft_count"] == 0  # type: ignore[union-attr]
    assert server_metrics.snapshot("# nothing here\nup 1\n", MODEL) is None
    renamed = METRICS.replace("dynamo_frontend_", "nv_llm_http_service_")  # DYN_METRICS_PREFIX
    assert server_metrics.snapshot(renamed, MODEL).prefix == "nv_llm_http_service"  # type: ignore[union-attr]


def test_the_servers_window_is_the_difference_of_two_scrapes_and_gaps_are_flagged() -> None:
    before = server_metrics.snapshot(METRICS, MODEL)
    assert before is not None
    after = server_metrics.Snapshot(before.prefix, dict(before.values), before.succeeded + 10, 0.0)
    after.values["ttft_sum"] += 10 * 0.150  # ten requests of 150 ms
    after.values["ttft_count"] += 10
    after.values["itl_sum"] += 100 * 0.006
    after.values["itl_count"] += 100
    client = {"time_to_first_token_ms": {"avg": 151.0}, "inter_token_latency_ms": {"avg": 7.0}}
    window = server_metrics.window(before, after, 12.0, client, measured_requests=10, gauges=(3, 8))
    assert window["ttft_ms"] == pytest.approx(150.0) and window["itl_ms"] == pytest.approx(6.0)
    assert window["requests"] == 10 and window["queued_max"] == 3 and window["inflight_max"] == 8
    assert window["gaps"]["ttft"] == pytest.approx(151 / 150 - 1)
    assert len(window["flags"]) == 1 and window["flags"][0].startswith("ITL: client 7.00 ms vs server 6.00")
    fewer = server_metrics.window(before, after, 12.0, client, measured_requests=8, exact=False)
    assert "warm-up requests overlapped" in fewer["flags"][0]


FAKE_NVIDIA_SMI = """#!/bin/sh
# A stand-in for nvidia-smi (no GPU here): -L lists two GPUs; the query loop prints one line per GPU.
if [ "$1" = "-L" ]; then echo "GPU 0: NVIDIA H200 (UUID: GPU-0)"; echo "GPU 1: NVIDIA H200 (UUID: GPU-1)"; exit 0; fi
while true; do echo "0, 87, 70000, 650.5"; echo "1, [N/A], 71000, 640"; sleep 0.1; done
"""


def test_telemetry_samples_nodes_with_gpus_and_names_nodes_without(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text(FAKE_NVIDIA_SMI)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    none = GpuTelemetry({"node0": LocalHost("node0", "127.0.0.1")})
    monkeypatch.setenv("PATH", f"/nonexistent:{os.environ['PATH']}")
    none.probe()
    if none.present:
        pytest.skip("this machine has a real nvidia-smi")
    assert none.absent_reason() == "no nvidia-smi GPUs on node0"
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    telemetry = GpuTelemetry({"node0": LocalHost("node0", "127.0.0.1")})
    telemetry.probe()
    assert telemetry.present == ["node0"]
    telemetry.start()
    import time

    time.sleep(1.5)  # nvidia-smi's -lms loop is not ours to speed up: the stand-in prints every 0.1 s
    telemetry.stop()
    assert {row.gpu for row in telemetry.rows} == {0, 1}
    summary = telemetry.summary("bench/c1.gpu.csv")
    assert summary["gpus"] == 2 and summary["util_mean"] == pytest.approx(87.0)
    assert summary["mem_max_mb"] == 71000 and summary["power_mean_w"] == pytest.approx(645.25, abs=5.3)
    lines = telemetry.to_csv().splitlines()
    assert lines[0] == "t_s,node,gpu,util_pct,mem_used_mb,power_w" and len(lines) == len(telemetry.rows) + 1


def test_the_gauge_sampler_reads_only_the_queue_and_in_flight_lines() -> None:
    text = METRICS.replace(
        'dynamo_frontend_queued_requests{model="Qwen/Qwen3-32B-FP8"} 0',
        'dynamo_frontend_queued_requests{model="Qwen/Qwen3-32B-FP8"} 3',
    )
    assert server_metrics.gauges(text, MODEL) == (3.0, 0.0)
    taken = server_metrics.snapshot(text, MODEL)
    assert taken is not None and (taken.values["queued"], taken.values["inflight"]) == (3.0, 0.0)
    assert server_metrics.gauges(text, "another/model") is None
    assert server_metrics.gauges("up 1\n", None) is None
