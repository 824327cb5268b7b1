"""Two runs' measured levels side by side: the change B/A − 1 at each concurrency, and whether it is real.

A change is *real* when it exceeds the two runs' own spread. The rule (SPREAD_RULE, printed under every
table): the 90 % bootstrap interval of B/A − 1 excludes 0. Each run's per-request values at that level
are resampled with replacement (RESAMPLES times, numpy's default generator seeded with SEED, the
concurrency and the metric, so a level's verdict never depends on which other levels are compared),
the ratio of the resampled means B*/A* is formed each time, and its 5th and 95th percentiles bound the
change. The per-request values are those of the level summary (aiperf definitions, see
automation/bench/metrics.py): TTFT, TPOT (= ITL), tokens/s/user (= 1000 / ITL). tokens/s/gpu is one
number per level (output tokens over the level's duration), so its spread is borrowed from the
per-request throughput output tokens / request latency, applied as a factor to the measured ratio.
Without per-request values (a level known only by its summary) the interval is the normal
approximation from the summaries' std and count: B/A · exp(±1.645 · √(σ_A² + σ_B²)) − 1, σ being the
relative standard error of each mean (TTFT, ITL; ITL's for tokens/s/user, request latency's for
tokens/s/gpu). Fewer than MIN_REQUESTS requests on either side: no verdict.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automation.bench.metrics import REPORTED_METRICS
from automation.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from automation.state import RunState

    Array = npt.NDArray[np.float64]

RESAMPLES = 1000
SEED = 0
CONFIDENCE = 0.90
MIN_REQUESTS = 3
Z90 = 1.6448536269514722  # the normal quantile of 0.95 (two-sided 90 %)

# (key in report rows, key in a level summary, label, unit, format): the metrics the summary reports.
METRICS = REPORTED_METRICS

SPREAD_RULE = (
    f"Δ = B/A − 1 of the level means; * = a real change: the {CONFIDENCE:.0%} bootstrap interval of "
    f"B/A − 1 (per-request values of both runs resampled {RESAMPLES} times, seed {SEED}) excludes 0 "
    "(tokens/s/gpu borrows its spread from the per-request output tokens / latency); unmarked: within "
    f"the runs' own spread; ? = under {MIN_REQUESTS} requests on a side, no verdict"
)

_LEVEL_FILE = re.compile(r"^c(\d+)\.json$")


# ------------------------------------------------------------------------------------------ the runs


@dataclass(frozen=True)
class Level:
    """One measured level: its summary and, when the level file holds them, the per-request values."""

    concurrency: int
    summary: Mapping[str, Any]
    # Per-request values by short metric key (the values whose mean carries the metric's spread).
    samples: Mapping[str, Sequence[float]] | None = None
    isl: int | None = None
    osl: int | None = None


@dataclass(frozen=True)
class Run:
    """A run directory's measured levels (bench/c<N>.json), by concurrency."""

    path: Path
    name: str
    state: RunState
    levels: Mapping[int, Level]
    skipped: list[str] = field(default_factory=list)  # levels left out, one line each (a failed level)


def load_run(run_dir: Path) -> Run:
    """The measured levels of a run directory.

    Raises:
        InputError: the path is not a run directory (no state.json), a level file is unreadable, or no
            level has been measured yet.
    """
    from automation.state import load_run_directory

    state = load_run_directory(run_dir)
    levels: dict[int, Level] = {}
    skipped: list[str] = []
    bench = run_dir / "bench"
    files = sorted(bench.iterdir()) if bench.is_dir() else []
    for path in files:
        match = _LEVEL_FILE.match(path.name)
        if not match:
            continue
        try:
            document = json.loads(path.read_text())
            summary = document["summary"]
            level = level_from_document(document)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(
                f"{path}: not a readable level file ({type(exc).__name__}: {exc})",
                hint=f"move it away, or measure the level again: autodeploy run {state.pipeline_file} "
                "--from benchmark",
            ) from None
        if document.get("passed") is False:
            skipped.append(
                f"{run_dir.name}: c={match.group(1)} left out: it failed "
                f"({summary.get('errors')} of {summary.get('requests')} requests)"
            )
            continue
        levels[level.concurrency] = level
    if not levels:
        raise InputError(
            f"{run_dir}: no measured levels ("
            + (f"every level failed: {'; '.join(skipped)}" if skipped else "no bench/c<N>.json")
            + ")",
            hint=f"run the benchmark first: autodeploy run {state.pipeline_file} --to benchmark",
        )
    return Run(
        path=run_dir,
        name=run_dir.resolve().name,
        state=state,
        levels=dict(sorted(levels.items())),
        skipped=skipped,
    )


def level_from_document(document: Mapping[str, Any]) -> Level:
    """A Level from a level file's content, or from a bare summary (then without per-request values)."""
    summary = document.get("summary", document)
    requests = document.get("requests") if "summary" in document else None
    return Level(
        concurrency=int(summary["concurrency"]),
        summary=summary,
        samples=request_samples(requests) if isinstance(requests, list) else None,
        isl=document.get("isl"),
        osl=document.get("osl"),
    )


def request_samples(requests: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Per-request values of the measured (non-warm-up) requests that finished, as the summary defines them."""
    from automation.bench.metrics import RequestRecord

    ttft: list[float] = []
    itl: list[float] = []
    rate: list[float] = []
    for raw in requests:
        record = RequestRecord(**raw)
        if record.warmup or record.error is not None or record.end is None:
            continue
        if record.ttft_ms is not None:
            ttft.append(record.ttft_ms)
        if record.itl_ms:
            itl.append(record.itl_ms)
        if record.latency_ms:
            rate.append(record.output_tokens / record.latency_ms * 1000.0)
    return {
        "ttft_ms": ttft,
        "tpot_ms": itl,
        "tokens_per_s_per_user": [1000.0 / v for v in itl],
        "tokens_per_s_per_gpu": rate,  # a proxy: the spread only, never the value
    }


# ---------------------------------------------------------------------------------------- the rule


def measured(summary: Mapping[str, Any], key: str) -> float | None:
    """A level summary's value of a metric (the mean over requests; tokens/s/gpu is one number)."""
    long_key = next(m[1] for m in METRICS if m[0] == key)
    value = summary.get(long_key)
    if isinstance(value, Mapping):
        value = value.get("avg")
    return float(value) if isinstance(value, int | float) else None


def _relative_se(summary: Mapping[str, Any], key: str) -> float | None:
    """The relative standard error of a level's mean from its summary's std and count (the fallback)."""
    source = {
        "ttft_ms": "time_to_first_token_ms",
        "tpot_ms": "inter_token_latency_ms",
        "tokens_per_s_per_user": "inter_token_latency_ms",  # 1/x: the same relative error (delta method)
        "tokens_per_s_per_gpu": "request_latency_ms",  # c / latency at a fixed concurrency
    }[key]
    stats = summary.get(source)
    if not isinstance(stats, Mapping):
        return None
    count, std, avg = stats.get("count", 0), stats.get("std"), stats.get("avg")
    if count < MIN_REQUESTS or std is None or not avg:
        return None
    return float(std) / math.sqrt(count - 1) / abs(float(avg))  # std is the population std


def noise_interval(a: Level, b: Level, key: str, index: int) -> tuple[float, float] | None:
    """The 90 % interval of the noise factor (B*/A*)/(B/A) of a metric at a level; None: no verdict."""
    import numpy as np

    if a.samples is not None and b.samples is not None:
        va = np.asarray(a.samples[key], dtype=np.float64)
        vb = np.asarray(b.samples[key], dtype=np.float64)
        if va.size < MIN_REQUESTS or vb.size < MIN_REQUESTS or not va.mean() or not vb.mean():
            return None
        rng = np.random.default_rng([SEED, a.concurrency, index])
        ratio = _resampled_means(vb, rng) / _resampled_means(va, rng)
        low, high = np.percentile(
            ratio / (vb.mean() / va.mean()), [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)]
        )
        return float(low), float(high)
    ra, rb = _relative_se(a.summary, key), _relative_se(b.summary, key)
    if ra is None or rb is None:
        return None
    width = Z90 * math.hypot(ra, rb)
    return math.exp(-width), math.exp(width)


def _resampled_means(values: Array, rng: np.random.Generator) -> Array:
    """Means of RESAMPLES resamples with replacement, in chunks that keep memory small."""
    import numpy as np

    chunk = max(1, min(RESAMPLES, 2_000_000 // values.size))
    means = [
        values[rng.integers(0, values.size, size=(min(chunk, RESAMPLES - start), values.size))].mean(axis=1)
        for start in range(0, RESAMPLES, chunk)
    ]
    return np.concatenate(means)


@dataclass(frozen=True)
class Change:
    """One metric at one level in both runs."""

    a: float | None
    b: float | None
    change: float | None  # B/A − 1
    interval: tuple[float, float] | None  # the 90 % interval of B/A − 1
    real: bool | None  # the interval excludes 0 (None: too few requests to tell)

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "change": self.change,
            "interval": list(self.interval) if self.interval else None,
            "real": self.real,
        }


def compare_level(a: Level, b: Level, key: str) -> Change:
    """A metric of one level in two runs: the change and whether it exceeds their spread."""
    index = next(i for i, m in enumerate(METRICS) if m[0] == key)
    va, vb = measured(a.summary, key), measured(b.summary, key)
    if va is None or vb is None or not va:
        return Change(va, vb, None, None, None)
    ratio = vb / va
    noise = noise_interval(a, b, key, index)
    if noise is None:
        return Change(va, vb, ratio - 1.0, None, None)
    interval = (ratio * noise[0] - 1.0, ratio * noise[1] - 1.0)
    return Change(va, vb, ratio - 1.0, interval, not interval[0] <= 0.0 <= interval[1])


# ---------------------------------------------------------------------------------------- compare


@dataclass(frozen=True)
class LevelComparison:
    concurrency: int
    present: str  # "both", "only in A", "only in B"
    metrics: Mapping[str, Change]

    def to_dict(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "present": self.present,
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
        }


@dataclass(frozen=True)
class Comparison:
    a: Run
    b: Run
    levels: list[LevelComparison]

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": {"name": self.a.name, "path": str(self.a.path), "run_uid": self.a.state.run_uid},
            "b": {"name": self.b.name, "path": str(self.b.path), "run_uid": self.b.state.run_uid},
            "rule": SPREAD_RULE,
            "confidence": CONFIDENCE,
            "resamples": RESAMPLES,
            "seed": SEED,
            "skipped": [*self.a.skipped, *self.b.skipped],
            "levels": [level.to_dict() for level in self.levels],
        }


def compare_runs(run_a: Path, run_b: Path) -> Comparison:
    """Every level either run measured, in concurrency order; a level one run lacks is kept and marked."""
    a, b = load_run(run_a), load_run(run_b)
    rows = []
    for c in sorted(set(a.levels) | set(b.levels)):
        la, lb = a.levels.get(c), b.levels.get(c)
        if la is not None and lb is not None:
            rows.append(LevelComparison(c, "both", {m[0]: compare_level(la, lb, m[0]) for m in METRICS}))
        else:
            only = la or lb
            assert only is not None
            values = {m[0]: measured(only.summary, m[0]) for m in METRICS}
            rows.append(
                LevelComparison(
                    c,
                    "only in A" if la is not None else "only in B",
                    {
                        k: Change(v if la else None, v if lb else None, None, None, None)
                        for k, v in values.items()
                    },
                )
            )
    return Comparison(a, b, rows)


def _percent(change: Change) -> str:
    if change.change is None:
        return "–"
    mark = {True: "*", False: "", None: "?"}[change.real]
    return f"{change.change * 100:+.1f}%{mark}"


def table(comparison: Comparison) -> tuple[str, list[str], list[list[Any]]]:
    """The console table (title, columns, rows): one row per level and metric, so it fits 80 columns."""
    rows: list[list[Any]] = []
    for level in comparison.levels:
        for key, _, label, unit, fmt in METRICS:
            change = level.metrics[key]
            interval = (
                f"{change.interval[0] * 100:+.1f}% … {change.interval[1] * 100:+.1f}%"
                if change.interval
                else ""
            )
            rows.append(
                [
                    level.concurrency if key == METRICS[0][0] else "",
                    f"{label} ({unit})" if unit else label,
                    fmt.format(change.a) if change.a is not None else "–",
                    fmt.format(change.b) if change.b is not None else "–",
                    _percent(change) if level.present == "both" else level.present,
                    interval,
                ]
            )
    title = f"A: {comparison.a.name} ({comparison.a.path})  vs  B: {comparison.b.name} ({comparison.b.path})"
    return title, ["c", "metric", "A", "B", "Δ", f"{CONFIDENCE:.0%} interval of Δ"], rows


def default_plot_path(comparison: Comparison) -> Path:
    """RUN_B/report/compare_<A's directory name>.png"""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", comparison.a.name)
    return comparison.b.path / "report" / f"compare_{safe}.png"


def plot(comparison: Comparison, path: Path) -> Path:
    """Both runs' curves: TTFT, TPOT and tokens/s/gpu against concurrency, and tokens/s/gpu against
    tokens/s/user (the throughput trade-off); real changes are ringed on B's points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    levels = [level.concurrency for level in comparison.levels]
    runs = (("a", comparison.a.name, "tab:blue", "o"), ("b", comparison.b.name, "tab:red", "s"))
    panels = (
        (axes[0][0], "ttft_ms", "TTFT (ms)"),
        (axes[0][1], "tpot_ms", "TPOT (ms)"),
        (axes[1][0], "tokens_per_s_per_gpu", "tokens/s/gpu"),
    )
    for ax, key, label in panels:
        for side, name, color, marker in runs:
            points = [
                (level.concurrency, getattr(level.metrics[key], side), level.metrics[key].real)
                for level in comparison.levels
                if getattr(level.metrics[key], side) is not None
            ]
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                f"-{marker}",
                color=color,
                label=f"{side.upper()}: {name}",
            )
            if side == "b":
                real = [p for p in points if p[2]]
                ax.plot([p[0] for p in real], [p[1] for p in real], "o", ms=13, mfc="none", color="black")
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("concurrency")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[1][1]
    for side, name, color, marker in runs:
        points = [
            (
                level.concurrency,
                getattr(level.metrics["tokens_per_s_per_user"], side),
                getattr(level.metrics["tokens_per_s_per_gpu"], side),
            )
            for level in comparison.levels
        ]
        points = [p for p in points if p[1] is not None and p[2] is not None]
        ax.plot(
            [p[1] for p in points],
            [p[2] for p in points],
            f"-{marker}",
            color=color,
            label=f"{side.upper()}: {name}",
        )
        for c, x, y in points:
            ax.annotate(f"c{c}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("tokens/s/user")
    ax.set_ylabel("tokens/s/gpu")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(
        f"B: {comparison.b.name} against A: {comparison.a.name} (ringed: a real change, {CONFIDENCE:.0%})"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------- the summarize stage


def baseline_columns(baseline_dir: Path, levels: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per level of the current run, the baseline run's measured values and the change, for the report.

    levels: the current run's level summaries (bench/c<N>.json["summary"]), or the whole level files:
    with the per-request records the verdict is the bootstrap one, the same as `autodeploy compare`
    gives; with summaries only, the normal approximation (see the module's docstring).
    Each row: concurrency, baseline (the run's name), in_baseline (False: the baseline lacks the level,
    every other field None), and per metric key (ttft_ms, tpot_ms, tokens_per_s_per_gpu,
    tokens_per_s_per_user): <key>_baseline, <key>_change (current/baseline − 1), <key>_interval (its
    90 % interval) and <key>_real (True: beyond the runs' spread; None: too few requests to tell).

    Raises:
        InputError: baseline_dir is not a run directory with measured levels.
    """
    baseline = load_run(baseline_dir)
    rows = []
    for document in levels:
        current = level_from_document(document)
        if current.samples is None:
            reference = baseline.levels.get(current.concurrency)
            # Compare like with like: summaries on both sides when the current run has no records.
            base = None if reference is None else Level(reference.concurrency, reference.summary)
        else:
            base = baseline.levels.get(current.concurrency)
        row: dict[str, Any] = {
            "concurrency": current.concurrency,
            "baseline": baseline.name,
            "in_baseline": base is not None,
        }
        for key, *_ in METRICS:
            change = compare_level(base, current, key) if base is not None else None
            row[f"{key}_baseline"] = change.a if change else None
            row[f"{key}_change"] = change.change if change else None
            row[f"{key}_interval"] = list(change.interval) if change and change.interval else None
            row[f"{key}_real"] = change.real if change else None
        rows.append(row)
    return rows
