"""Fit the fixed per-request TTFT cost (evaluate.REQUEST_MS) to measured TRT-LLM rows; hold-out and LOMO.

Rows: aiconfigurator's measured silicon table (shared/reference/measured/trtllm_measured_calibration.csv),
read by automation/perfmodel/rows.py (rows the KV cache cannot hold in full are included: the engine runs
what it holds and queues the rest, which predict_at_concurrency models). Each row's TTFT is simulated as
the benchmark measures it (evaluate.simulate: the closed loop with its burst, the TRT-LLM stack's loop
turnaround and admission lag) with request_ms = 0; request_ms adds to every TTFT and changes nothing
else, so a system's value is the one number that minimises the median |log(pred/measured)| over its
low-concurrency rows (c ≤ 8; the brief: the cost shows where queueing is smallest).

Each row is simulated with the method it was measured with (rows.method_of, RowPlan.method): the
InferenceX records (931 of the table's rows: trtllm-serve or Dynamo over HTTP, vLLM's
benchmark_serving.py with --random-range-ratio 0.8, 10·c prompts, burst from an idle server) with their
lengths spread over [0.8, 1]·ISL/OSL, which keeps the users from moving in synchronised rounds; the
others with the default (fixed lengths). Every row is served over HTTP (the Llama-3.1-70B rows too:
InferenceX's benchmarks/70b_fp8_h200_trt_slurm.sh runs trtllm-serve and benchmarks it over HTTP), so
none is left out; their over-prediction was the synchronised rounds of fixed lengths, not a missing
frontend.

Records are deduplicated (the same measurement under several ids) before the seeded 70/30 split (the
seed of tests/perf/fit_measured.py), so a hold-out never holds a copy of a training row. A system with
fewer than MIN_ROWS low-concurrency training rows gets the all-systems value (REQUEST_MS_DEFAULT).

Usage:
  AUTODEPLOY_MODEL_CONFIGS=/work/shared/reference/model_configs:/work/shared/reference/model_configs_more \\
    .venv/bin/python tests/perf/fit_request_ms.py [--all-rows] [--dump FILE] [--write]

--write puts each system's value (fitted on all its deduplicated c ≤ 8 rows, or the all-systems value
below MIN_ROWS) into automation/configs/systems/<system>.fit.yaml as params.request_ms, which
evaluate.request_ms reads; systems without rows keep evaluate.REQUEST_MS_DEFAULT.
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from automation.perfmodel import evaluate, queueing  # noqa: E402
from automation.perfmodel.rows import predictor, read_rows  # noqa: E402

REF = Path("/work/shared/reference")
ROWS = REF / "measured" / "trtllm_measured_calibration.csv"
MODEL_DIRS = [REF / "model_configs", REF / "model_configs_more"]
SEED = 20260501  # the 70/30 split of tests/perf/fit_measured.py
HOLDOUT = 0.3
LOW_C = 8  # "low concurrency": where the fixed cost dominates TTFT
MIN_ROWS = 20  # fewer fitted rows than this: the system gets the all-systems value (a handful of rows
# from one harness cannot separate a system's cost from its harness's: h200 has 9, gb200 6)
# Candidate values (ms), the bounds of the fit: 0 (no cost beyond the loop) to 400 ms (an order of
# magnitude above what a tokenizer, scheduler and first sampling step take for one request).
GRID = np.arange(0.0, 400.5, 0.5)


@dataclass
class Rec:
    id: str
    system: str
    model: str
    mode: str
    isl: int
    osl: int
    conc: int
    layout: str
    meas: float  # measured mean TTFT (ms)
    engine: float  # simulated TTFT with request_ms = 0 (ms)
    key: tuple[Any, ...]
    source: str  # silicon_data_source (the harness that measured it)
    method: str = ""  # how it was measured: "spread r" (lengths over [r, 1]·ISL/OSL) or "fixed"


def load() -> list[Rec]:
    out: list[Rec] = []
    seen: set[tuple[Any, ...]] = set()
    with predictor(MODEL_DIRS) as p:
        for row in read_rows(ROWS):
            res = p.predict(row)
            if res.row_plan is None or (res.error and res.kind != "kv cache full"):
                continue
            plan, conc = res.row_plan.plan, res.row_plan.concurrency
            key = (
                row["system"],
                row["model_path"],
                row["gemm_quant_mode"],
                plan.mode,
                plan.isl,
                plan.osl,
                conc,
                plan.layout(),
                round(float(row["silicon_tpot_ms"]), 6),
            )
            if key in seen:
                continue
            seen.add(key)
            stack = queueing.Stack(
                loop_ms=evaluate.LOOP_MS, request_ms=0.0, admit_lag=evaluate.TRTLLM_ADMIT_LAG
            )
            engine = evaluate.simulate(plan, conc, res.row_plan.method, stack=stack).ttft_ms
            out.append(
                Rec(
                    row["id"],
                    plan.system,
                    res.row_plan.checkpoint or row["model_path"],
                    plan.mode,
                    plan.isl,
                    plan.osl,
                    conc,
                    plan.layout(),
                    float(row["silicon_ttft_ms"]),
                    engine,
                    key,
                    row.get("silicon_data_source", ""),
                    method_label(res.row_plan.method),
                )
            )
    return out


def method_label(method: queueing.Method) -> str:
    return f"spread {method.range_ratio:g}" if method.spread else "fixed"


def split(recs: list[Rec]) -> tuple[list[Rec], list[Rec]]:
    mask = np.random.default_rng(SEED).random(len(recs)) < HOLDOUT
    return [r for r, m in zip(recs, mask, strict=True) if not m], [
        r for r, m in zip(recs, mask, strict=True) if m
    ]


def best(recs: list[Rec]) -> float:
    """The request_ms minimising the median |log((engine + a)/measured)|."""
    eng = np.array([r.engine for r in recs])[:, None]
    meas = np.array([r.meas for r in recs])[:, None]
    loss = np.median(np.abs(np.log((eng + GRID[None, :]) / meas)), axis=0)
    return float(GRID[int(np.argmin(loss))])


def fit(recs: list[Rec], use: Callable[[Rec], bool], systems: list[str]) -> tuple[dict[str, float], float]:
    rows = [r for r in recs if use(r)]
    default = best(rows)
    per: dict[str, float] = {}
    for s in systems:
        mine = [r for r in rows if r.system == s]
        per[s] = best(mine) if len(mine) >= MIN_ROWS else default
    return per, default


def bucket(c: int) -> str:
    return "c≤8" if c <= 8 else ("c9–64" if c <= 64 else "c>64")


def stats(errs: list[float]) -> str:
    if not errs:
        return f"{'–':>4} {'–':>5} {'–':>5} {'–':>6}"
    a = sorted(abs(e) for e in errs)
    p90 = a[min(len(a) - 1, round(0.9 * (len(a) - 1)))]
    return f"{len(errs):4} {100 * statistics.median(a):4.0f}% {100 * p90:4.0f}% {100 * statistics.median(errs):+5.0f}%"


def table(title: str, recs: list[Rec], pred: Callable[[Rec], float], key: Callable[[Rec], str]) -> None:
    groups: dict[str, list[float]] = defaultdict(list)
    for r in recs:
        e = pred(r) / r.meas - 1.0
        groups["all"].append(e)
        groups[key(r)].append(e)
    print(f"\n{title}\n{'':40} {'n':>4} {'med':>5} {'p90':>5} {'bias':>6}")
    for g in ["all", *sorted(k for k in groups if k != "all")]:
        print(f"{g[:40]:40} {stats(groups[g])}")


def write_request_ms(system: str, value: float, n_rows: int, default: float) -> Path:
    """Set params.request_ms in the system's fit file, keeping every other line (fit_measured.py owns them)."""
    path = ROOT / "automation" / "configs" / "systems" / f"{system}.fit.yaml"
    how = (
        f"fitted on {n_rows} rows"
        if n_rows >= MIN_ROWS
        else f"all-systems value ({n_rows} rows < {MIN_ROWS})"
    )
    line = f"  request_ms: {value:.6g}  # fit_request_ms.py: {how}"
    lines = [x for x in path.read_text().splitlines() if not x.startswith("  request_ms:")]
    at = lines.index("params:") + 1
    while at < len(lines) and lines[at].startswith("  "):
        at += 1
    lines.insert(at, line)
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--all-rows", action="store_true", help="fit on every row, not only c ≤ 8")
    ap.add_argument("--dump", type=Path, help="per-row CSV: id, measured, engine, predicted")
    ap.add_argument("--exclude-source", help="drop rows whose silicon_data_source matches this regex")
    ap.add_argument("--write", action="store_true", help="write request_ms into the systems' fit files")
    args = ap.parse_args()
    t0 = time.perf_counter()
    recs = load()
    if args.exclude_source:
        n = len(recs)
        recs = [r for r in recs if not re.search(args.exclude_source, r.source)]
        print(f"--exclude-source {args.exclude_source!r}: {n - len(recs)} rows dropped")
    systems = sorted({r.system for r in recs})
    print(
        f"{len(recs)} deduplicated rows simulated in {time.perf_counter() - t0:.1f} s "
        f"(stack: loop {evaluate.LOOP_MS} ms, admission lag {evaluate.TRTLLM_ADMIT_LAG})"
    )

    def use(r: Rec) -> bool:
        return args.all_rows or r.conc <= LOW_C

    def harness(r: Rec) -> str:
        return r.method

    train, test = split(recs)
    per, default = fit(train, use, systems)
    n_fit = sum(1 for r in train if use(r))
    print(
        f"\nrequest_ms fitted on {n_fit} of {len(train)} training rows "
        f"({'all c' if args.all_rows else f'c ≤ {LOW_C}'}):"
    )
    for s, v in per.items():
        n = sum(1 for r in train if r.system == s and use(r))
        print(f"  {s:10} {v:6.1f} ms  ({n} rows{'' if n >= MIN_ROWS else ': all-systems value'})")
    print(f"  {'default':10} {default:6.1f} ms")

    def pred(r: Rec) -> float:
        return r.engine + per[r.system]

    def full(r: Rec) -> str:
        return f"{r.system} {r.mode} {bucket(r.conc)}"

    table("Hold-out (30 %): per system × mode × concurrency", test, pred, full)
    table("Hold-out: per model", test, pred, lambda r: r.model)
    table("Hold-out: per method (how the row was measured)", test, pred, harness)
    table("Training rows", train, pred, full)
    # Leave one model out: refit without the model, predict the model.
    lomo: dict[str, float] = {}
    for m in sorted({r.model for r in recs}):
        p, _ = fit([r for r in recs if r.model != m], use, systems)
        for r in recs:
            if r.model == m:
                lomo[r.id] = r.engine + p[r.system]
    table("Leave one model out: per model", recs, lambda r: lomo[r.id], lambda r: r.model)
    table("Leave one model out: per system × mode × concurrency", recs, lambda r: lomo[r.id], full)
    table("Leave one model out: per method", recs, lambda r: lomo[r.id], harness)
    if args.write:
        final, final_default = fit(recs, use, systems)
        for s in systems:
            n = sum(1 for r in recs if r.system == s and use(r))
            print(f"  wrote {write_request_ms(s, final[s], n, final_default)}")
        print(f"  all-systems value (evaluate.REQUEST_MS_DEFAULT): {final_default:.1f} ms")
    if args.dump:
        with args.dump.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(
                ["id", "system", "model", "mode", "isl", "osl", "conc", "layout", "meas", "engine", "pred"]
            )
            for r in recs:
                w.writerow(
                    [
                        r.id,
                        r.system,
                        r.model,
                        r.mode,
                        r.isl,
                        r.osl,
                        r.conc,
                        r.layout,
                        r.meas,
                        f"{r.engine:.3f}",
                        f"{pred(r):.3f}",
                    ]
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
