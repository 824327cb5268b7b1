"""aiperf (NVIDIA's benchmark client, release 0.13) as a benchmark client: its command line, run and export."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from automation.bench.metrics import RequestRecord
from automation.errors import StageError

INSTALL_HINT = "pip install 'autodeploy[aiperf]', or set benchmark.aiperf_bin to the aiperf executable"
# aiperf's file names with no --profile-export-prefix: per-request records and the aggregate summary of
# the profiling phase (its warm-up phase is summarized separately, under phases/warmup/).
RECORDS_FILE = "profile_export.jsonl"
SUMMARY_FILE = "profile_export_aiperf.json"
TAIL_LINES = 20

_TO_SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "sec": 1.0, "s": 1.0}


def find_aiperf(configured: str | None) -> str:
    """The aiperf executable: `configured` (benchmark.aiperf_bin) when set, else `aiperf` on PATH, else
    the one next to this Python (the same virtual environment, `pip install 'autodeploy[aiperf]'`).

    Raises:
        StageError: the configured one is not an executable, or none was found.
    """
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise StageError(
                f"benchmark.aiperf_bin {configured!r} is not an executable file",
                hint="point benchmark.aiperf_bin at the aiperf executable, or pip install 'autodeploy[aiperf]'",
            )
        return found
    found = shutil.which("aiperf")
    if found is not None:
        return found
    # A virtual environment's bin/ is not on PATH unless it was activated.
    beside = Path(sys.executable).parent / "aiperf"
    if os.access(beside, os.X_OK) and beside.is_file():
        return str(beside)
    raise StageError(
        f"benchmark.client is aiperf but benchmark.aiperf_bin is unset and there is no aiperf on PATH "
        f"or in {beside.parent}",
        hint=INSTALL_HINT,
    )


@functools.lru_cache(maxsize=8)
def aiperf_version(aiperf_bin: str) -> str:
    """`aiperf --version` (e.g. "0.13.0").

    Raises:
        StageError: it does not run or prints no version.
    """
    try:
        done = subprocess.run(
            [aiperf_bin, "--version"], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StageError(f"{aiperf_bin} --version failed: {exc}", hint=INSTALL_HINT) from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise StageError(
            f"{aiperf_bin} --version failed (exit {done.returncode})",
            hint=INSTALL_HINT,
            tail=_tail(done.stdout + done.stderr),
        )
    return lines[-1].strip()


def aiperf_command(
    *,
    aiperf_bin: str,
    url: str,
    model: str,
    tokenizer: str,
    isl: int,
    osl: int,
    concurrency: int,
    requests: int,
    warmup: int,
    seed: int,
    endpoint: Literal["completions", "chat"],
    artifacts: Path,
    request_rate: float | None = None,
) -> list[str]:
    """`aiperf profile` for one level: `requests` measured requests after `warmup` warm-up requests.

    `concurrency` requests in flight (closed loop: a burst of `concurrency` at the start of each phase),
    or, with `request_rate`, Poisson arrivals at that rate with `concurrency` as the cap. Prompts of
    exactly `isl` tokens under `tokenizer` (a local directory holding tokenizer.json), each one different
    (no prefix prompts, no entry used twice); exactly `osl` output tokens; streaming; token counts from
    the server's usage; artifacts written to `artifacts`.

    Give every level its own `seed`: prompts are a function of the seed alone, so two levels with one
    seed send the same prompts and the second one hits the prefix cache the first one filled.
    """
    command = [
        aiperf_bin,
        "profile",
        "--model",
        model,
        "--url",
        url,
        "--endpoint-type",
        endpoint,
        "--streaming",
        "--tokenizer",
        tokenizer,
        # Random vocabulary windows, decoded and re-encoded until the text is exactly `isl` tokens
        # (vLLM's random dataset): exact under any tokenizer whose plain tokens decode to themselves,
        # unlike the Shakespeare corpus, which is mostly [UNK] under the rehearsal's word tokenizer.
        "--prompt-corpus",
        "random",
        "--isl",
        str(isl),
        "--isl-stddev",
        "0",
        "--osl",
        str(osl),
        "--osl-stddev",
        "0",
        # --osl only sets max_tokens (max_completion_tokens for chat): without these the model may stop
        # early at its end-of-sequence token.
        "--extra-inputs",
        json.dumps({"ignore_eos": True, "min_tokens": osl}),
        # One dataset entry per request, taken in order: by default aiperf makes as many entries as
        # measured requests and the measured phase reuses the warm-up's prompts (prefix cache hits).
        "--num-dataset-entries",
        str(requests + warmup),
        "--dataset-sampling-strategy",
        "sequential",
        "--concurrency",
        str(concurrency),
        "--request-count",
        str(requests),
        "--random-seed",
        str(seed),
        # Token counts as the server counts them (usage): no client-side re-tokenization of every response
        # (CPU the client needs for timing), and the same numbers the built-in client records.
        "--use-server-token-count",
        # A fresh connection per request, as the built-in client does: on a reused keep-alive connection
        # the first chunk waits for a delayed ACK (measured on the rehearsal at c=1: TTFT 66 ms pooled
        # against 35 ms fresh, and an ITL 20 % low as the held-back tokens arrive together).
        "--connection-reuse-strategy",
        "never",
        "--artifact-dir",
        str(artifacts),
        "--export-level",
        "records",
        "--ui",
        "none",
        # The deployment's metrics and GPUs are collected elsewhere; scraping them here costs client CPU.
        "--no-server-metrics",
        "--no-gpu-telemetry",
    ]
    if warmup > 0:
        command += ["--warmup-request-count", str(warmup)]
    if request_rate is not None:
        command += ["--request-rate", f"{request_rate:g}", "--arrival-pattern", "poisson"]
    # Chat: `isl` tokens of user message, the server's chat template on top, as the built-in client sends
    # (no --apply-chat-template, which would shorten the message by the template's tokens): both clients
    # send the same prompt shape, and the report says how many tokens the template added.
    return command


@dataclass
class AiperfLevel:
    """One level measured by aiperf."""

    records: list[RequestRecord]  # the measured requests (warmup=False), in order of start
    artifacts: Path
    command: list[str]
    version: str
    wall_s: float


def run_aiperf_level(
    *,
    aiperf_bin: str,
    url: str,
    model: str,
    tokenizer: str,
    isl: int,
    osl: int,
    concurrency: int,
    requests: int,
    warmup: int,
    seed: int,
    endpoint: Literal["completions", "chat"],
    artifacts: Path,
    request_rate: float | None = None,
    timeout_s: float,
    log: Path | None = None,
) -> AiperfLevel:
    """Run aiperf for one level (no shell; its output to `log`) and read its per-request export.

    Raises:
        StageError: aiperf failed, ran past `timeout_s`, or exported other than `requests` measured
            requests; `tail` holds the last lines of its output.
    """
    version = aiperf_version(aiperf_bin)
    command = aiperf_command(
        aiperf_bin=aiperf_bin,
        url=url,
        model=model,
        tokenizer=tokenizer,
        isl=isl,
        osl=osl,
        concurrency=concurrency,
        requests=requests,
        warmup=warmup,
        seed=seed,
        endpoint=endpoint,
        artifacts=artifacts,
        request_rate=request_rate,
    )
    artifacts.mkdir(parents=True, exist_ok=True)
    for stale in (RECORDS_FILE, SUMMARY_FILE):  # a rerun's export must not be read as this run's
        (artifacts / stale).unlink(missing_ok=True)
    level = f"c={concurrency}" + (f" at {request_rate:g} req/s" if request_rate is not None else "")
    where = f"see {log}" if log is not None else f"see {artifacts / 'logs' / 'aiperf.log'}"
    started = time.monotonic()
    with _output(log) as out:
        try:
            returncode = _run(command, out, timeout_s)
        except subprocess.TimeoutExpired:
            raise StageError(
                f"aiperf at {level} ran past {timeout_s:g} s and was stopped",
                hint=f"raise the benchmark timeout or lower the request count; {where}",
                tail=_read_tail(out),
            ) from None
        wall_s = time.monotonic() - started
        if returncode != 0:
            raise StageError(
                f"aiperf at {level} failed (exit {returncode})",
                hint=where,
                tail=_read_tail(out),
            )
        try:
            records = [r for r in read_export(artifacts) if not r.warmup]
        except StageError as exc:
            raise StageError(f"aiperf at {level}: {exc.message}", hint=where, tail=_read_tail(out)) from None
        if len(records) != requests:
            raise StageError(
                f"aiperf at {level} exported {len(records)} measured requests, not {requests}",
                hint=where,
                tail=_read_tail(out),
            )
    return AiperfLevel(records=records, artifacts=artifacts, command=command, version=version, wall_s=wall_s)


@contextlib.contextmanager
def _output(log: Path | None) -> Iterator[IO[bytes]]:
    """Where aiperf's stdout and stderr go: `log`, or a scratch file read back for the error tail."""
    if log is None:
        with tempfile.TemporaryFile() as scratch:
            yield scratch
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w+b") as file:
        yield file


def _run(command: list[str], out: IO[bytes], timeout_s: float) -> int:
    """aiperf's exit status; it and the services it forks are stopped together on a timeout or an
    interrupt (its own process group, so that none is left sending load)."""
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        return process.wait(timeout=timeout_s)
    finally:
        if process.poll() is None:
            _stop_group(process)
        else:
            # A service it forked may outlive it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    # aiperf stops its services on SIGTERM; what is left after that is killed.
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _tail(text: str) -> str:
    return "\n".join(text.rstrip().splitlines()[-TAIL_LINES:])


def _read_tail(out: IO[bytes]) -> str:
    out.flush()
    out.seek(0, os.SEEK_END)
    size = out.tell()
    # The last lines are well inside the last 64 KiB (aiperf's widest lines are its tables, ~130 chars).
    out.seek(max(0, size - 65536))
    lines: deque[str] = deque(out.read().decode(errors="replace").splitlines(), maxlen=TAIL_LINES)
    return "\n".join(lines)


def _seconds(metric: Any, name: str) -> float | None:
    """A record's or the summary's time metric ({"value" or "avg": x, "unit": "ms"}) in seconds."""
    if not isinstance(metric, dict):
        return None
    value = metric.get("value", metric.get("avg"))
    if value is None:
        return None
    unit = metric.get("unit")
    if unit not in _TO_SECONDS:
        raise StageError(f"aiperf's {name} is in {unit!r}, not a time unit this reader knows")
    return float(value) * _TO_SECONDS[str(unit)]


def _count(metrics: dict[str, Any], *names: str) -> int | None:
    """The first of `names` present among a record's metrics, as an integer."""
    for name in names:
        metric = metrics.get(name)
        if isinstance(metric, dict) and metric.get("value") is not None:
            return int(metric["value"])
    return None


def _error(error: Any) -> str | None:
    """aiperf's ErrorDetails ({code, type, message}) as one short line."""
    if not error:
        return None
    if not isinstance(error, dict):
        return str(error)[:200]
    code, kind = error.get("code"), error.get("type") or "error"
    message = " ".join(str(error.get("message") or "").split())
    head = f"HTTP {code} {kind}" if code else str(kind)
    return f"{head}: {message}"[:200] if message else head


def _record(line: dict[str, Any]) -> RequestRecord:
    metadata, metrics = line["metadata"], line.get("metrics") or {}
    # request_start_ns is time.time_ns() taken together with the perf_counter stamp that aiperf's
    # latencies start from (just before the connection is opened), so start + latency is one clock.
    start = int(metadata["request_start_ns"]) / 1e9
    ttft = _seconds(metrics.get("time_to_first_token"), "time_to_first_token")
    latency = _seconds(metrics.get("request_latency"), "request_latency")
    error = _error(line.get("error"))
    if error is None and metadata.get("was_cancelled"):
        error = "cancelled by aiperf"
    if error is None and ttft is None:
        error = "the stream ended without a token"  # as the built-in client reports it
    return RequestRecord(
        index=0,
        warmup=metadata.get("benchmark_phase") == "warmup",
        start=start,
        first_token=None if ttft is None else start + ttft,
        # request_latency ends at the last chunk with content (not the usage chunk or [DONE]).
        end=None if latency is None else start + latency,
        output_tokens=_count(metrics, "output_sequence_length", "usage_completion_tokens") or 0,
        input_tokens=_count(metrics, "input_sequence_length", "usage_prompt_tokens") or 0,
        error=error,
        # usage.prompt_tokens_details.cached_tokens; absent when the server does not report it.
        cached_tokens=_count(metrics, "usage_prompt_cache_read_tokens"),
    )


def read_export(artifacts: Path) -> list[RequestRecord]:
    """aiperf's per-request export (profile_export.jsonl): warm-up and measured requests, as records
    on one clock (seconds since the epoch), indexed in order of start.

    Raises:
        StageError: the export is missing or not aiperf 0.13's format.
    """
    path = artifacts / RECORDS_FILE
    try:
        lines = path.read_text().splitlines()
    except OSError:
        raise StageError(f"aiperf wrote no {RECORDS_FILE} in {artifacts}") from None
    records: list[RequestRecord] = []
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            records.append(_record(json.loads(text)))
        except (ValueError, KeyError, TypeError) as exc:
            raise StageError(f"{path}:{number}: not an aiperf 0.13 record ({exc!r})") from None
    # The file is in order of completion (records arrive from several processes); the built-in client
    # indexes requests in order of start.
    records.sort(key=lambda r: r.start)
    for index, record in enumerate(records):
        record.index = index
    return records


def aiperf_summary(artifacts: Path) -> dict[str, Any]:
    """aiperf's own aggregates for the measured phase (profile_export_aiperf.json): mean TTFT and ITL in
    ms, output token throughput (tokens/s), request count and benchmark duration (s); None where it
    computed none.

    Raises:
        StageError: the summary is missing or unreadable.
    """
    path = artifacts / SUMMARY_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StageError(f"aiperf's summary {path} is missing or unreadable ({exc})") from None

    def avg(name: str) -> float | None:
        value = (data.get(name) or {}).get("avg")
        return None if value is None else float(value)

    def ms(name: str) -> float | None:
        seconds = _seconds(data.get(name), name)
        return None if seconds is None else seconds * 1000.0

    count = avg("request_count")
    return {
        "time_to_first_token_ms": ms("time_to_first_token"),
        "inter_token_latency_ms": ms("inter_token_latency"),
        "output_token_throughput": avg("output_token_throughput"),
        "request_count": None if count is None else int(count),
        "benchmark_duration_s": _seconds(data.get("benchmark_duration"), "benchmark_duration"),
    }
