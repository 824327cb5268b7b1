"""Per-request records and their statistics, with aiperf's metric definitions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

PERCENTILES = (50, 90, 99)


class ReportedMetric(NamedTuple):
    """One metric the reports set measured against predicted (summarize) or run against run (compare)."""

    key: str  # the name in predictions and report rows
    measured_key: str  # the name in a level summary (bench/c<N>.json)
    label: str
    unit: str
    fmt: str


REPORTED_METRICS = (
    ReportedMetric("ttft_ms", "time_to_first_token_ms", "TTFT", "ms", "{:.1f}"),
    ReportedMetric("tpot_ms", "inter_token_latency_ms", "TPOT", "ms", "{:.2f}"),
    ReportedMetric("tokens_per_s_per_gpu", "tokens_per_s_per_gpu", "tokens/s/gpu", "", "{:.1f}"),
    ReportedMetric(
        "tokens_per_s_per_user", "output_token_throughput_per_user", "tokens/s/user", "", "{:.1f}"
    ),
)


@dataclass
class RequestRecord:
    """One request as the client saw it (times in seconds on the monotonic clock)."""

    index: int
    warmup: bool
    start: float
    first_token: float | None = None
    end: float | None = None
    output_tokens: int = 0
    input_tokens: int = 0
    error: str | None = None
    # Prompt tokens the server says it served from its prefix cache (usage.prompt_tokens_details);
    # None when the server did not say.
    cached_tokens: int | None = None
    # Request rate mode: when the schedule wanted the request sent (the start is when it was sent).
    scheduled: float | None = None

    @property
    def ttft_ms(self) -> float | None:
        """time_to_first_token: first content chunk − request start (network, queueing and prefill)."""
        return None if self.first_token is None else (self.first_token - self.start) * 1000.0

    @property
    def latency_ms(self) -> float | None:
        """request_latency: last chunk − request start."""
        return None if self.end is None else (self.end - self.start) * 1000.0

    @property
    def itl_ms(self) -> float | None:
        """inter_token_latency (= TPOT): (request_latency − TTFT) / (output tokens − 1)."""
        if self.ttft_ms is None or self.latency_ms is None or self.output_tokens < 2:
            return None
        return (self.latency_ms - self.ttft_ms) / (self.output_tokens - 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stats(values: Sequence[float]) -> dict[str, float]:
    """avg, min, max, std and percentiles (linear interpolation) of a sample; {} when it is empty."""
    if not values:
        return {}
    ordered = sorted(values)
    mean = sum(ordered) / len(ordered)
    out = {
        "avg": mean,
        "min": ordered[0],
        "max": ordered[-1],
        "std": math.sqrt(sum((v - mean) ** 2 for v in ordered) / len(ordered)),
        "count": float(len(ordered)),
    }
    for p in PERCENTILES:
        rank = (len(ordered) - 1) * p / 100
        low, high = math.floor(rank), math.ceil(rank)
        out[f"p{p}"] = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
    return out


def goodput(
    good: Sequence[RequestRecord],
    measured: int,
    duration_s: float,
    ttft_limit_ms: float,
    tpot_limit_ms: float,
) -> dict[str, Any]:
    """Requests that met both SLA limits (TTFT ≤ limit and TPOT ≤ limit; a failed request never does).

    share = meeting / measured requests; rate_per_s = meeting / benchmark duration (aiperf's goodput
    is the same rate, with the limits given as --goodput constraints).
    """
    meeting = sum(
        1
        for r in good
        if r.ttft_ms is not None
        and r.ttft_ms <= ttft_limit_ms
        and (r.itl_ms if r.itl_ms is not None else 0.0) <= tpot_limit_ms
    )
    return {
        "requests": meeting,
        "share": meeting / measured if measured else 0.0,
        "rate_per_s": meeting / duration_s if duration_s > 0 else 0.0,
        "ttft_limit_ms": ttft_limit_ms,
        "tpot_limit_ms": tpot_limit_ms,
    }


def summarize(
    records: Sequence[RequestRecord],
    concurrency: int,
    gpus: int,
    sla: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """The level's metrics over the measured (non-warm-up) requests.

    benchmark_duration = last response − first request start (warm-up excluded);
    output_token_throughput = total output tokens / duration;
    output_token_throughput_per_user = mean over requests of 1 / ITL;
    tokens_per_s_per_gpu = output_token_throughput / GPUs serving;
    goodput (with `sla` = (TTFT limit, TPOT limit) in ms): see goodput();
    cached_tokens.client: prompt tokens the server reported as served from cache (None: never said).
    """
    measured = [r for r in records if not r.warmup]
    ends = {r.index: r.end for r in measured if r.error is None and r.end is not None}
    good = [r for r in measured if r.index in ends]
    errors = [r for r in measured if r.error is not None]
    duration = (max(ends.values()) - min(r.start for r in good)) if good else 0.0
    total_output = sum(r.output_tokens for r in good)
    itls = [r.itl_ms for r in good if r.itl_ms]
    throughput = total_output / duration if duration > 0 else 0.0
    reported = [r.cached_tokens for r in measured if r.cached_tokens is not None]
    out: dict[str, Any] = {
        "concurrency": concurrency,
        "requests": len(measured),
        "errors": len(errors),
        "error_examples": sorted({r.error for r in errors if r.error})[:3],
        "duration_s": duration,
        "gpus": gpus,
        "time_to_first_token_ms": stats([r.ttft_ms for r in good if r.ttft_ms is not None]),
        "inter_token_latency_ms": stats(itls),
        "request_latency_ms": stats([r.latency_ms for r in good if r.latency_ms is not None]),
        "output_sequence_length": stats([float(r.output_tokens) for r in good]),
        "output_token_throughput": throughput,
        "output_token_throughput_per_user": stats([1000.0 / v for v in itls]).get("avg", 0.0),
        "request_throughput": len(good) / duration if duration > 0 else 0.0,
        "tokens_per_s_per_gpu": throughput / gpus if gpus else 0.0,
        "input_sequence_length": stats([float(r.input_tokens) for r in good if r.input_tokens]),
        "cached_tokens": {"client": sum(reported) if reported else None},
    }
    if sla is not None:
        out["goodput"] = goodput(good, len(measured), duration, *sla)
    return out
