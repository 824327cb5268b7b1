"""aiperf as benchmark client: its export read into records (real 0.13.0 exports), the command line, the run."""

from __future__ import annotations

import json
import stat
import sys
import time
from pathlib import Path

import pytest

from automation.bench import aiperf
from automation.bench.aiperf import aiperf_command, aiperf_summary, find_aiperf, read_export, run_aiperf_level
from automation.bench.metrics import summarize
from automation.errors import StageError
from tests.conftest import REPO

DATA = REPO / "tests" / "data" / "aiperf"


def _raw(artifacts: Path) -> list[dict]:
    return [json.loads(line) for line in (artifacts / "profile_export.jsonl").read_text().splitlines()]


def _phase_window_s(artifacts: Path) -> float:
    phases = json.loads((artifacts / "phase_manifest.json").read_text())["phases"]
    profiling = next(p for p in phases if p["phase_kind"] == "profiling")
    return (profiling["end_ns"] - profiling["start_ns"]) / 1e9


def test_records_carry_aiperfs_own_times_and_token_counts() -> None:
    records = read_export(DATA / "ok")
    assert [r.index for r in records] == list(range(6))
    assert [r.warmup for r in records] == [True, True, False, False, False, False]
    assert [r.start for r in records] == sorted(r.start for r in records)
    raw = {line["metadata"]["request_start_ns"]: line["metrics"] for line in _raw(DATA / "ok")}
    for record in records:
        assert record.error is None
        assert (record.input_tokens, record.output_tokens, record.cached_tokens) == (64, 8, 0)
        assert record.first_token is not None and record.end is not None
        assert record.start < record.first_token < record.end
    # Each record's TTFT and latency are aiperf's (to float precision of seconds since the epoch).
    by_start = sorted(raw.items())
    for record, (_, metrics) in zip(records, by_start, strict=True):
        assert record.ttft_ms == pytest.approx(metrics["time_to_first_token"]["value"], abs=1e-3)
        assert record.latency_ms == pytest.approx(metrics["request_latency"]["value"], abs=1e-3)
        assert record.itl_ms == pytest.approx(metrics["inter_token_latency"]["value"], abs=1e-3)
    # The measured phase started only after the last warm-up request had ended.
    warm_end = max(r.end for r in records if r.warmup and r.end is not None)
    assert min(r.start for r in records if not r.warmup) > warm_end


def test_the_recomputation_from_records_matches_aiperfs_own_aggregates() -> None:
    records = read_export(DATA / "ok")
    ours = summarize(records, 2, 1)
    theirs = aiperf_summary(DATA / "ok")
    assert theirs["request_count"] == ours["requests"] == 4 and ours["errors"] == 0
    assert ours["time_to_first_token_ms"]["avg"] == pytest.approx(theirs["time_to_first_token_ms"], abs=1e-3)
    assert ours["inter_token_latency_ms"]["avg"] == pytest.approx(theirs["inter_token_latency_ms"], abs=1e-3)
    assert ours["duration_s"] == pytest.approx(theirs["benchmark_duration_s"], abs=1e-6)
    # aiperf divides its output tokens by the profiling phase's window (phase start, before the first
    # request is sent, to the phase's end), not by its own benchmark duration: a few ms longer.
    assert theirs["output_token_throughput"] == pytest.approx(32 / _phase_window_s(DATA / "ok"), rel=1e-9)
    assert ours["output_token_throughput"] == pytest.approx(32 / theirs["benchmark_duration_s"], rel=1e-6)
    assert theirs["output_token_throughput"] < ours["output_token_throughput"]


def test_failed_requests_become_errors_and_leave_the_aggregates_of_the_others() -> None:
    records = read_export(DATA / "errors")
    measured = [r for r in records if not r.warmup]
    failed = [r for r in measured if r.error is not None]
    assert len(measured) == 6 and len(failed) == 3
    for record in failed:
        assert record.error == "HTTP 499 RequestCancellationError: Request cancelled 0.050s after being sent"
        assert record.first_token is None and record.end is None and record.cached_tokens is None
    ours = summarize(records, 2, 1)
    theirs = aiperf_summary(DATA / "errors")
    assert ours["errors"] == 3 and theirs["request_count"] == 3  # aiperf counts the successful ones
    assert ours["time_to_first_token_ms"]["avg"] == pytest.approx(theirs["time_to_first_token_ms"], abs=1e-3)
    assert ours["inter_token_latency_ms"]["avg"] == pytest.approx(theirs["inter_token_latency_ms"], abs=1e-3)
    assert ours["duration_s"] == pytest.approx(theirs["benchmark_duration_s"], abs=1e-6)


def test_a_missing_or_foreign_export_is_a_stage_error(tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"no profile_export\.jsonl"):
        read_export(tmp_path)
    with pytest.raises(StageError, match="summary"):
        aiperf_summary(tmp_path)
    (tmp_path / "profile_export.jsonl").write_text(
        (DATA / "ok" / "profile_export.jsonl").read_text() + '{"records": []}\n'
    )
    with pytest.raises(StageError, match=r"profile_export\.jsonl:7: not an aiperf 0\.13 record"):
        read_export(tmp_path)


def _flags(command: list[str]) -> dict[str, str | None]:
    """--flag value pairs (None for a switch)."""
    flags: dict[str, str | None] = {}
    for i, word in enumerate(command):
        if word.startswith("--"):
            following = command[i + 1] if i + 1 < len(command) else "--"
            flags[word] = None if following.startswith("--") else following
    return flags


ARGS = {
    "aiperf_bin": "/opt/aiperf/bin/aiperf",
    "url": "http://10.0.0.1:8000",
    "model": "Qwen/Qwen3-32B-FP8",
    "tokenizer": "/models/qwen3",
    "isl": 4000,
    "osl": 512,
    "concurrency": 16,
    "requests": 160,
    "warmup": 16,
    "seed": 7,
    "endpoint": "completions",
    "artifacts": Path("/run/bench/aiperf/c16"),
}


def test_the_command_asks_for_exact_unique_prompts_and_exact_outputs() -> None:
    command = aiperf_command(**ARGS)  # type: ignore[arg-type]
    assert command[:2] == ["/opt/aiperf/bin/aiperf", "profile"]
    flags = _flags(command)
    expected = {
        "--model": "Qwen/Qwen3-32B-FP8",
        "--url": "http://10.0.0.1:8000",
        "--endpoint-type": "completions",
        "--tokenizer": "/models/qwen3",
        "--isl": "4000",
        "--isl-stddev": "0",
        "--osl": "512",
        "--osl-stddev": "0",
        "--prompt-corpus": "random",
        "--concurrency": "16",
        "--request-count": "160",
        "--warmup-request-count": "16",
        "--num-dataset-entries": "176",  # one distinct prompt per request, warm-up included
        "--dataset-sampling-strategy": "sequential",
        "--random-seed": "7",
        "--connection-reuse-strategy": "never",
        "--artifact-dir": "/run/bench/aiperf/c16",
        "--export-level": "records",
    }
    assert {flag: flags.get(flag) for flag in expected} == expected
    for switch in ("--streaming", "--use-server-token-count", "--no-server-metrics", "--no-gpu-telemetry"):
        assert switch in flags and flags[switch] is None
    assert json.loads(str(flags["--extra-inputs"])) == {"ignore_eos": True, "min_tokens": 512}
    prefixes = ("--num-prefix-prompts", "--prefix-prompt-length", "--shared-system-prompt-length")
    assert not any(flag in flags for flag in (*prefixes, "--user-context-prompt-length", "--system-prompt"))
    assert "--request-rate" not in flags and "--apply-chat-template" not in flags


def test_the_command_for_a_rate_for_chat_and_without_warmup() -> None:
    flags = _flags(aiperf_command(**{**ARGS, "request_rate": 2.5, "warmup": 0}))  # type: ignore[arg-type]
    assert flags["--request-rate"] == "2.5" and flags["--arrival-pattern"] == "poisson"
    assert flags["--concurrency"] == "16"  # the cap on requests in flight
    assert "--warmup-request-count" not in flags and flags["--num-dataset-entries"] == "160"
    chat = _flags(aiperf_command(**{**ARGS, "endpoint": "chat"}))  # type: ignore[arg-type]
    # the same user message as the built-in client's, the chat template's tokens on top
    assert chat["--endpoint-type"] == "chat" and "--apply-chat-template" not in chat


def _executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_find_aiperf_takes_the_configured_then_path_then_beside_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(StageError, match=r"benchmark\.aiperf_bin '/nowhere/aiperf' is not an executable"):
        find_aiperf("/nowhere/aiperf")
    configured = _executable(tmp_path / "mine" / "aiperf", "#!/bin/sh\n")
    assert find_aiperf(str(configured)) == str(configured)

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python"))
    with pytest.raises(StageError) as missing:
        find_aiperf(None)
    assert "benchmark.aiperf_bin" in missing.value.message and "autodeploy[aiperf]" in missing.value.hint
    beside = _executable(tmp_path / "venv" / "bin" / "aiperf", "#!/bin/sh\n")
    assert find_aiperf(None) == str(beside)
    on_path = _executable(tmp_path / "path" / "aiperf", "#!/bin/sh\n")
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert find_aiperf(None) == str(on_path)


# A stand-in for the aiperf executable (the real one is exercised in tests/integration): it answers
# --version, and `profile` behaves as FAKE_AIPERF says.
FAKE = f"""#!{sys.executable}
import os, shutil, subprocess, sys, time
args = sys.argv[1:]
if args == ["--version"]:
    print("0.13.0")
    sys.exit(0)
mode = os.environ["FAKE_AIPERF"]
artifacts = args[args.index("--artifact-dir") + 1]
if mode == "ok":
    shutil.copytree({str(DATA / "ok")!r}, artifacts, dirs_exist_ok=True)
    print("done")
elif mode == "fail":
    for i in range(1, 31):
        print(f"output line {{i}}", flush=True)
    sys.exit(3)
elif mode == "hang":
    child = subprocess.Popen(["sleep", "60"])
    open(os.path.join(artifacts, "child.pid"), "w").write(str(child.pid))
    time.sleep(60)
"""


def _level(fake: Path, artifacts: Path, **overrides: object) -> aiperf.AiperfLevel:
    args = {**ARGS, "aiperf_bin": str(fake), "artifacts": artifacts, "concurrency": 2, "requests": 4}
    return run_aiperf_level(**{**args, "timeout_s": 60.0, **overrides})  # type: ignore[arg-type]


def test_a_level_runs_aiperf_and_returns_its_measured_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _executable(tmp_path / "bin" / "aiperf", FAKE)
    monkeypatch.setenv("FAKE_AIPERF", "ok")
    log = tmp_path / "logs" / "aiperf-c2.log"
    level = _level(fake, tmp_path / "c2", log=log)
    assert level.version == "0.13.0" and level.command[0] == str(fake)
    assert len(level.records) == 4 and not any(r.warmup for r in level.records)
    assert level.wall_s > 0 and log.read_text() == "done\n"

    # The level asked for more measured requests than aiperf exported.
    with pytest.raises(StageError, match="c=2 exported 4 measured requests, not 5"):
        _level(fake, tmp_path / "c2-again", requests=5)


def test_a_failed_level_names_the_level_and_keeps_the_tail_of_aiperfs_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _executable(tmp_path / "bin" / "aiperf", FAKE)
    monkeypatch.setenv("FAKE_AIPERF", "fail")
    with pytest.raises(StageError) as failed:
        _level(fake, tmp_path / "c2", request_rate=1.5)
    assert failed.value.message == "aiperf at c=2 at 1.5 req/s failed (exit 3)"
    tail = str(failed.value.details["tail"]).splitlines()
    assert tail == [f"output line {i}" for i in range(11, 31)]


def test_a_level_past_its_timeout_is_stopped_with_everything_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _executable(tmp_path / "bin" / "aiperf", FAKE)
    monkeypatch.setenv("FAKE_AIPERF", "hang")
    started = time.monotonic()
    with pytest.raises(StageError, match=r"aiperf at c=2 ran past 2 s and was stopped"):
        _level(fake, tmp_path / "c2", timeout_s=2.0)
    assert time.monotonic() - started < 15
    child = int((tmp_path / "c2" / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(autouse=True)
def _fresh_version_cache() -> None:
    aiperf.aiperf_version.cache_clear()  # each test's stand-in lives at its own path, but be sure
