"""The calibration loop on a rehearsal "cluster" whose mockers run slower than the model: errors before and after.

The cluster: Dynamo's mocker with `launch.mocker_speed` (prefill and decode steps take known factors × the
shipped model's time). The loop:
  1. model A (examples/rehearsal.yaml, Qwen3-32B-FP8 disaggregated on 8 × H200) planned with the shipped
     model, benchmarked: the error at the design concurrency is about the factors;
  2. `autodeploy calibrate` on that run;
  3. model A planned again under the calibration (perfmodel.calibration) and benchmarked on the same cluster;
  4. model B (Qwen3-8B, another workload, 2 GPUs, disaggregated) benchmarked without and with the calibration: a
     calibration is per system, so it must carry over to a model it never saw.
Prints per run the errors at every level and at the design concurrency (measured / predicted − 1), and the
fitted factors against the true ones. Numbers only; nothing is asserted.

Usage:
  .venv/bin/python tests/perf/calibration_loop.py [--prefill 1.5] [--decode 1.3] [--requests 10] [--keep]
Wall time: four rehearsals, about 3–5 minutes each on 2 cores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rehearsal_runs import AUTODEPLOY, DISAGG, PERF_ROOT, level_rows, print_table, run_rehearsal

# Disaggregated like model A, so that both compare the same kind of steps; 2 GPUs keep its levels short.
MODEL_B = {
    "model": {"hf_id": "Qwen/Qwen3-8B"},
    "workload": {"isl": 2000, "osl": 256},
    "search": {"total_gpus": 2, "modes": ["disagg"]},
}
# Loose enough that a plan exists on the slowed cluster before and after calibration (the loop is about
# predicting what is deployed), tight enough that the design concurrency stays a few tens of users (a
# 2-core machine serves the mockers and the client): model A plans c = 30 shipped, 16 calibrated.
SLA = {"sla": {"ttft_ms": 400, "tpot_ms": 12}}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prefill", type=float, default=1.5, help="the cluster's prefill factor (true value)")
    p.add_argument("--decode", type=float, default=1.3, help="the cluster's decode factor (true value)")
    p.add_argument("--requests", type=int, default=10, help="benchmark.requests_per_concurrency")
    p.add_argument("--keep", action="store_true", help="keep the rehearsals' work directories")
    return p.parse_args()


def design_errors(summary: dict[str, Any]) -> dict[str, float | None]:
    """Errors (%) at the design concurrency (or the highest level measured)."""
    rows = level_rows(summary)
    at = next((r for r in rows if r["design"]), rows[-1])
    return {
        "c": at["concurrency"],
        **{k: at[f"{k}_error_pct"] for k in ("ttft_ms", "tpot_ms", "tokens_per_s_per_gpu")},
    }


def main() -> int:
    args = parse_args()
    cluster = {
        "launch": {"mocker_speed": {"prefill": args.prefill, "decode": args.decode}},
        "benchmark": {"requests_per_concurrency": args.requests},
        **SLA,
    }
    stamp = time.strftime("%m%d-%H%M%S")
    calibration = PERF_ROOT / f"calibration-loop-{stamp}.yaml"
    calibrated = {"perfmodel": {"calibration": str(calibration)}}
    results: list[tuple[str, dict[str, Any]]] = []

    def rehearse(label: str, overrides: dict[str, Any], keep: bool = False) -> dict[str, Any]:
        print(f"[{label}] rehearsing ...", flush=True)
        summary = run_rehearsal(DISAGG, f"calloop-{label}", overrides, keep=keep or args.keep)
        info = summary["rehearsal"]
        print(f"[{label}] done in {info['wall_s']:.0f} s: {summary['run']['plan']}", flush=True)
        print_table(level_rows(summary, run=label), ["run"])
        results.append((label, summary))
        return summary

    first = rehearse("A-shipped", cluster, keep=True)  # calibrate reads its run directory
    run_dir = Path(first["rehearsal"]["run_dir"])
    fitted = subprocess.run(
        [str(AUTODEPLOY), "calibrate", str(run_dir), "--out", str(calibration)],
        capture_output=True,
        text=True,
    )
    print(fitted.stdout + fitted.stderr, flush=True)
    if fitted.returncode:
        return 1
    factors = yaml.safe_load(calibration.read_text())["systems"]["h200_sxm"]
    rehearse("A-calibrated", {**cluster, **calibrated})
    rehearse("B-shipped", {**cluster, **MODEL_B})
    rehearse("B-calibrated", {**cluster, **MODEL_B, **calibrated})

    print(
        f"\nfitted: prefill ×{factors['prefill_scale']:.3f} (true {args.prefill}), decode "
        f"×{factors['decode_scale']:.3f} (true {args.decode}), fixed cost {factors['extra_request_ms']:+.1f} ms"
    )
    print("errors at the design concurrency, measured / predicted − 1 (%):")
    print(f"{'run':<14} {'c':>4} {'TTFT':>8} {'TPOT':>8} {'tok/s/gpu':>10}  plan")
    for label, summary in results:
        e = design_errors(summary)

        def cell(key: str, e: dict[str, float | None] = e) -> str:
            value = e[key]
            return "–" if value is None else f"{value:+.1f}"

        plan = summary["run"]["plan"]
        print(
            f"{label:<14} {e['c']:>4} {cell('ttft_ms'):>8} {cell('tpot_ms'):>8} {cell('tokens_per_s_per_gpu'):>10}  {plan}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
