"""One benchmark level from end to end: its load, its client(s), the server's window, GPU telemetry, the
level document; and the levels of a sweep and when a sweep must stop."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automation.bench import server_metrics
from automation.bench.client import LevelRun, LoadPlan, run_level
from automation.bench.metrics import RequestRecord, summarize
from automation.bench.telemetry import GpuTelemetry

# Tokens/s one built-in client process parses with its ITL within 2 % of the server's (~36,000 on one core
# here), halved for shared hosts and run-to-run spread; and users per process, beyond which a burst's
# first-token stamps grow late (0.4-0.9 ms per user). tests/perf/bench_client_capacity.py,
# docs/client-capacity.md.
CLIENT_TOKENS_PER_S_PER_PROCESS = 18_000.0
CLIENT_USERS_PER_PROCESS = 256
# request_rates: auto, as shares of the request rate predicted at the design concurrency.
AUTO_RATE_SHARES = (0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class LevelSpec:
    """One level: its key (file bench/<name>.json), its load, and how many requests it sends."""

    name: str  # c4, or r2.5 (requests per second)
    concurrency: int  # users (closed loop), or the expected requests in flight (request rate)
    rate_per_s: float | None
    warmup: int
    measured: int
    seed: int
    expected_tokens_per_s: float

    @property
    def label(self) -> str:
        return f"c={self.concurrency}" if self.rate_per_s is None else f"rate={self.rate_per_s:g}/s"


def concurrency_levels(setting: Any, predicted: float) -> list[int]:
    """auto: 1, 2, 4, ... below the predicted cluster concurrency, then that concurrency itself."""
    if setting != "auto":
        return list(setting)
    target = max(1, round(predicted))
    levels: list[int] = []
    level = 1
    while level < target:
        levels.append(level)
        level *= 2
    return [*levels, target]


def plan_levels(bench: Any, plan: Any, design: Any, osl: int) -> list[LevelSpec]:
    """The sweep's levels from benchmark settings, the deployed plan and its design-point prediction.

    Closed loop: c users, warm-up × c and requests × c requests. Request rate λ: the expected requests
    in flight are λ × (TTFT + OSL × TPOT) at the design point (Little's law), which sizes the counts the
    same way; auto rates are shares of the design point's request rate c / (TTFT + OSL × TPOT).
    """
    from automation.perfmodel import predict_at_concurrency

    gpus = plan.total_gpus
    latency_s = (design.ttft_ms + osl * design.tpot_ms) / 1000.0
    levels = []
    if bench.mode == "concurrency":
        for c in concurrency_levels(bench.concurrency, design.concurrency):
            tokens = predict_at_concurrency(plan, c).tokens_per_s_per_gpu * gpus
            levels.append(
                LevelSpec(
                    name=f"c{c}",
                    concurrency=c,
                    rate_per_s=None,
                    warmup=bench.warmup_per_concurrency * c,
                    measured=bench.requests_per_concurrency * c,
                    seed=bench.seed * 7919 + c,
                    expected_tokens_per_s=tokens,
                )
            )
        return levels
    peak = design.concurrency / latency_s if latency_s > 0 else 1.0
    rates = bench.request_rates
    if rates == "auto":
        rates = [round(share * peak, 3) for share in AUTO_RATE_SHARES]
    for i, rate in enumerate(rates):
        in_flight = max(1, round(rate * latency_s))
        levels.append(
            LevelSpec(
                name=f"r{rate:g}",
                concurrency=in_flight,
                rate_per_s=float(rate),
                warmup=bench.warmup_per_concurrency * in_flight,
                measured=bench.requests_per_concurrency * in_flight,
                seed=bench.seed * 7919 + 100_000 + i,
                expected_tokens_per_s=rate * osl,
            )
        )
    return levels


def poisson_arrivals(rate_per_s: float, count: int, seed: int) -> tuple[float, ...]:
    """Send times (s from the level's start) of `count` requests: exponential gaps of mean 1/rate."""
    rng = random.Random(seed)
    t, times = 0.0, []
    for _ in range(count):
        times.append(t)
        t += rng.expovariate(rate_per_s)
    return tuple(times)


def client_processes(setting: Any, spec: LevelSpec) -> int:
    """auto: enough processes for the level's predicted token rate, within the CPUs and the users."""
    if setting != "auto":
        return int(setting)
    wanted = max(
        math.ceil(spec.expected_tokens_per_s / CLIENT_TOKENS_PER_S_PER_PROCESS),
        math.ceil(spec.concurrency / CLIENT_USERS_PER_PROCESS),
    )
    users = spec.concurrency if spec.rate_per_s is None else wanted
    return max(1, min(wanted, os.cpu_count() or 1, users))


@dataclass
class Window:
    """The server's counters at the start of the measured window, and the gauges sampled during it."""

    url: str
    model: str
    before: server_metrics.Snapshot | None = None
    error: str | None = None
    opened: float = 0.0
    sampler: server_metrics.GaugeSampler | None = None

    def open(self) -> None:
        self.opened = time.perf_counter()
        try:
            self.before = server_metrics.snapshot(server_metrics.fetch(self.url), self.model)
        except (OSError, ValueError) as exc:
            self.error = f"could not read {self.url}/metrics: {exc}"
        if self.before is None and self.error is None:
            self.error = f"{self.url}/metrics has no Dynamo frontend metrics"
        self.sampler = server_metrics.GaugeSampler(self.url, self.model)
        self.sampler.start()

    def abandon(self) -> None:
        """Stop sampling without reading the window (a level measured again)."""
        if self.sampler is not None:
            self.sampler.stop()

    def close(self, client: dict[str, Any], measured: int, exact: bool) -> dict[str, Any]:
        """The server's measurement of the window beside `client` (a level summary)."""
        gauges = self.sampler.stop() if self.sampler is not None else (None, None)
        if self.before is None:
            return {"error": self.error or "the measured window never opened"}
        try:
            after = server_metrics.snapshot(server_metrics.fetch(self.url), self.model)
        except (OSError, ValueError) as exc:
            return {"error": f"could not read {self.url}/metrics: {exc}"}
        if after is None:
            return {"error": f"{self.url}/metrics has no Dynamo frontend metrics"}
        elapsed = time.perf_counter() - self.opened
        return server_metrics.window(self.before, after, elapsed, client, measured, gauges, exact)


@dataclass
class LevelContext:
    """What every level of a sweep shares."""

    url: str
    model: str
    isl: int
    osl: int
    gpus: int
    sla: tuple[float, float]
    bench: Any
    tokenizer_json: str
    tokenizer_dir: Path
    directory: Path  # bench/ of the run
    telemetry: GpuTelemetry | None
    on_progress: Callable[[str, int], Callable[[RequestRecord], None]]


def _builtin(
    ctx: LevelContext, spec: LevelSpec
) -> tuple[dict[str, Any], list[RequestRecord], dict[str, Any]]:
    """The built-in client on one level: (level summary with the server's window, records, client)."""
    from automation.bench.prompts import PromptMaker

    started = time.perf_counter()  # the client's cost includes making its prompts, as aiperf's does
    maker = PromptMaker(ctx.tokenizer_json, ctx.isl, seed=spec.seed)
    total = spec.warmup + spec.measured
    arrivals = None
    if spec.rate_per_s is not None:
        arrivals = poisson_arrivals(spec.rate_per_s, total, spec.seed)
    processes = client_processes(ctx.bench.client_processes, spec)
    warm = maker.make_many(list(range(spec.warmup)))
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="prompts") as pool:
        # The measured prompts (most of a level's ~16 ms-per-prompt tokenizer work) are made while the
        # warm-up runs; a burst level needs them only once every warm-up request has ended.
        rest = pool.submit(maker.make_many, list(range(spec.warmup, total)))
        while True:
            overlap = processes == 1 and arrivals is None and ctx.bench.warmup == "burst" and spec.warmup > 0
            plan = LoadPlan(
                url=ctx.url,
                model=ctx.model,
                osl=ctx.osl,
                concurrency=spec.concurrency,
                warmup=spec.warmup,
                timeout_s=ctx.bench.request_timeout_s,
                endpoint=ctx.bench.endpoint,
                warmup_method=ctx.bench.warmup,
                arrivals=arrivals,
                processes=processes,
            )
            window = Window(ctx.url, ctx.model)
            run: LevelRun = run_level(
                plan,
                warm if overlap else warm + rest.result(),
                on_done=ctx.on_progress("requests", total),
                on_window=window.open,
                later=(spec.measured, rest) if overlap else None,
            )
            more = min(
                processes * 2, os.cpu_count() or 1, spec.concurrency if arrivals is None else processes * 2
            )
            if not run.health.saturated or ctx.bench.client_processes != "auto" or more <= processes:
                break
            # auto: a saturated client measures the level again with more processes (its window is void).
            window.abandon()
            processes = more
    wall = time.perf_counter() - started
    summary = summarize(run.records, spec.concurrency, ctx.gpus, sla=ctx.sla)
    exact = spec.warmup == 0 or (ctx.bench.warmup == "burst" and spec.rate_per_s is None)
    summary["server"] = window.close(summary, spec.measured, exact)
    client = {
        "name": "builtin",
        "version": _autodeploy_version(),
        "processes": run.health.processes,
        "saturation": run.health.to_dict(),
        # The client's own cost of a level: its wall time beyond the span its requests took.
        "wall_s": wall,
        "span_s": _span(run.records),
    }
    return summary, run.records, client


def _aiperf(ctx: LevelContext, spec: LevelSpec) -> tuple[dict[str, Any], list[RequestRecord], dict[str, Any]]:
    """aiperf on one level, its artifacts under bench/aiperf/<level>/, read into the same summary."""
    from automation.bench import aiperf

    binary = aiperf.find_aiperf(ctx.bench.aiperf_bin)
    artifacts = ctx.directory / "aiperf" / spec.name
    window = Window(ctx.url, ctx.model)
    window.open()  # aiperf runs its warm-up inside the window: the server's counts include it
    level = aiperf.run_aiperf_level(
        aiperf_bin=binary,
        url=ctx.url,
        model=ctx.model,
        tokenizer=str(ctx.tokenizer_dir),
        isl=ctx.isl,
        osl=ctx.osl,
        # Request rate: no cap below the schedule (the built-in client has none either).
        concurrency=spec.concurrency if spec.rate_per_s is None else spec.measured + spec.warmup,
        requests=spec.measured,
        warmup=spec.warmup,
        seed=spec.seed,
        endpoint=ctx.bench.endpoint,
        artifacts=artifacts,
        request_rate=spec.rate_per_s,
        timeout_s=ctx.bench.request_timeout_s * max(1, spec.measured + spec.warmup),
        log=artifacts / "aiperf.log",
    )
    summary = summarize(level.records, spec.concurrency, ctx.gpus, sla=ctx.sla)
    # The server's window holds aiperf's warm-up as well (one process runs both phases), so the server
    # is compared with aiperf over the same requests: warm-up and measured together.
    every = [dataclasses.replace(r, warmup=False) for r in aiperf.read_export(level.artifacts)]
    summary["server"] = window.close(summarize(every, spec.concurrency, ctx.gpus), len(every), exact=True)
    summary["server"]["compared_over"] = "warm-up and measured requests (aiperf runs both in one window)"
    client = {
        "name": "aiperf",
        "version": level.version,
        "processes": None,
        "saturation": None,
        "artifacts": str(artifacts.relative_to(ctx.directory.parent)),
        "wall_s": level.wall_s,
        "span_s": _span(every),
    }
    return summary, level.records, client


def _span(records: Sequence[RequestRecord]) -> float:
    """First request start to last response, warm-up included (s)."""
    ends = [r.end for r in records if r.end is not None]
    return max(ends) - min(r.start for r in records) if ends else 0.0


def _autodeploy_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"autodeploy {version('autodeploy')}"
    except PackageNotFoundError:
        return "autodeploy (source)"


def _difference(primary: dict[str, Any], other: dict[str, Any]) -> dict[str, float | None]:
    """other / primary − 1 on the means both report."""

    def mean(summary: dict[str, Any], key: str) -> float | None:
        value = summary.get(key)
        return value.get("avg") if isinstance(value, dict) else value

    out: dict[str, float | None] = {}
    for key, name in (
        ("time_to_first_token_ms", "ttft_ms"),
        ("inter_token_latency_ms", "tpot_ms"),
        ("output_token_throughput", "output_token_throughput"),
    ):
        a, b = mean(primary, key), mean(other, key)
        out[name] = b / a - 1.0 if a and b is not None else None
    return out


def measure_level(ctx: LevelContext, spec: LevelSpec, deployment: str) -> dict[str, Any]:
    """Measure one level with the configured client(s); the level document (bench/<name>.json)."""
    bench = ctx.bench
    telemetry = ctx.telemetry
    if telemetry is not None and telemetry.present:
        telemetry.start()
    try:
        runs = []
        if bench.client in ("builtin", "both"):
            runs.append(_builtin(ctx, spec))
        if bench.client in ("aiperf", "both"):
            runs.append(_aiperf(ctx, spec))
    finally:
        if telemetry is not None and telemetry.present:
            telemetry.stop()
    summary, records, client = runs[0]
    cached = summary["cached_tokens"]
    server = summary.pop("server")
    cached["server"] = server.get("cached_tokens")
    cached["reused"] = bool(cached.get("client") or cached.get("server"))
    chat_tokens = None
    if bench.endpoint == "chat" and summary.get("input_sequence_length"):
        chat_tokens = round(summary["input_sequence_length"]["p50"]) - ctx.isl
    document: dict[str, Any] = {
        "summary": summary,
        "passed": summary["errors"] <= bench.max_error_share * summary["requests"],
        "deployment": deployment,
        "isl": ctx.isl,
        "osl": ctx.osl,
        "level": spec.name,
        "client": client,
        "method": {
            "warmup": bench.warmup,
            "mode": bench.mode,
            "rate_per_s": spec.rate_per_s,
            "endpoint": bench.endpoint,
            "seed": spec.seed,
            "chat_template_tokens": chat_tokens,
        },
        "server": server,
    }
    if spec.rate_per_s is not None:
        summary["rate_per_s"] = spec.rate_per_s
        summary["schedule_lag_ms"] = _schedule_lag(records)
    if len(runs) > 1:
        other_summary, _, other_client = runs[1]
        other_server = other_summary.pop("server")
        document["clients"] = {
            other_client["name"]: {
                "summary": other_summary,
                "client": other_client,
                "server": other_server,
                "artifacts": other_client.get("artifacts"),
                "difference": _difference(summary, other_summary),
            }
        }
    if telemetry is not None:
        if telemetry.present:
            file = f"bench/{spec.name}.gpu.csv"
            (ctx.directory / f"{spec.name}.gpu.csv").write_text(telemetry.to_csv())
            document["telemetry"] = telemetry.summary(file)
        else:
            document["telemetry"] = {"absent": telemetry.absent_reason() or "no nodes"}
    document["requests"] = [r.to_dict() for r in sorted(records, key=lambda r: r.index)]
    return document


def _schedule_lag(records: Sequence[RequestRecord]) -> dict[str, float] | None:
    """How late requests left against the Poisson schedule (start − scheduled), mean and max, in ms."""
    lags = [(r.start - r.scheduled) * 1000.0 for r in records if r.scheduled is not None]
    if not lags:
        return None
    return {"mean": sum(lags) / len(lags), "max": max(lags)}


def stop_reason(document: dict[str, Any], sla_ttft_ms: float, bench: Any) -> str | None:
    """Why the sweep must end after this level, or None: too many errors, TTFT far beyond the SLA, or a
    saturated client (higher levels would only be measured worse)."""
    summary = document["summary"]
    label = document.get("level", "this level")
    if not document["passed"]:
        return (
            f"{label}: {summary['errors']} of {summary['requests']} requests failed "
            f"(more than {bench.max_error_share:.0%})"
        )
    ttft = (summary.get("time_to_first_token_ms") or {}).get("avg")
    if ttft is not None and ttft > bench.stop_ttft_factor * sla_ttft_ms:
        return (
            f"{label}: mean TTFT {ttft:.0f} ms is over {bench.stop_ttft_factor:g} × the SLA's "
            f"{sla_ttft_ms:g} ms: the deployment is past saturation"
        )
    saturation = (document.get("client") or {}).get("saturation") or {}
    if saturation.get("saturated"):
        return f"{label}: the built-in client saturated ({saturation.get('reason')}); raise benchmark.client_processes"
    return None
