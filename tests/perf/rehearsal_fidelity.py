"""How closely fresh CPU rehearsals measure what the performance model predicts, per level, mode and run.

Usage: .venv/bin/python tests/perf/rehearsal_fidelity.py [--runs 3] [--modes agg,disagg] [--keep]
                                                          [--json OUT]

Runs `--runs` fresh, isolated rehearsals per mode (agg: examples/rehearsal-agg.yaml, disagg:
examples/rehearsal.yaml; see rehearsal_runs.py), one after the other (a few minutes each), and prints per
mode and run the measured, predicted and error (measured / predicted − 1, as summarize.compare defines it)
of TTFT, TPOT and tokens/s/gpu at every concurrency level; then per mode the worst |error| of each metric
over all levels and runs, beside the goal (TTFT within 10 %, TPOT and tokens/s/gpu within 5 %, at every
level). It prints numbers and never asserts them; the exit status is 1 only when a rehearsal failed.
Work directories (/tmp/autodeploy-perf/<name>) are removed after a successful run unless --keep; a failed
run's is kept. `make demo` must have run once (it creates the tokenizer-only model directory).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rehearsal_runs import (
    EXAMPLES,
    METRICS,
    RehearsalError,
    level_rows,
    print_table,
    require_model,
    run_rehearsal,
)

# The fidelity goal: the largest |error| in % allowed at any level, per metric.
GOAL_PCT = {"ttft_ms": 10.0, "tpot_ms": 5.0, "tokens_per_s_per_gpu": 5.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh rehearsals per mode (default 3)")
    parser.add_argument("--modes", default="agg,disagg", help="comma-separated: agg, disagg (default both)")
    parser.add_argument("--keep", action="store_true", help="keep every run's work directory")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write all rows and the summary here")
    args = parser.parse_args(argv)
    args.modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    unknown = [mode for mode in args.modes if mode not in EXAMPLES]
    if unknown or not args.modes:
        parser.error(f"--modes takes {', '.join(EXAMPLES)}; got {args.modes}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def worst(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per metric: the worst |error| % over the rows (the signed value, its run and level), how many levels
    reported it, and whether every reported level meets GOAL_PCT."""
    result: dict[str, Any] = {}
    for key, _, _ in METRICS:
        reported = [row for row in rows if row[f"{key}_error_pct"] is not None]
        top = max(reported, key=lambda row: abs(row[f"{key}_error_pct"]), default=None)
        result[key] = {
            "worst_pct": None if top is None else top[f"{key}_error_pct"],
            "run": None if top is None else top["run"],
            "concurrency": None if top is None else top["concurrency"],
            "levels": len(reported),
            "unreported": len(rows) - len(reported),
            "goal_pct": GOAL_PCT[key],
            "meets": top is not None and abs(top[f"{key}_error_pct"]) <= GOAL_PCT[key],
        }
    return result


def print_summary(mode: str, runs: int, failed: int, verdict: dict[str, Any]) -> None:
    """One line per metric: worst |error| over every level and run, where, and the goal's verdict."""
    print(f"{mode}: {runs - failed}/{runs} finished; worst |measured / predicted − 1| per metric")
    for key, label, _ in METRICS:
        entry = verdict[key]
        if entry["worst_pct"] is None:
            print(f"  {label:<10} no level reported it  (goal ±{entry['goal_pct']:g} %)  -> no verdict")
            continue
        unreported = ""
        if entry["unreported"]:
            unreported = f", {entry['unreported']} level(s) not reported: saturated client"
        print(
            f"  {label:<10} {entry['worst_pct']:+7.2f} %  (run {entry['run']}, c={entry['concurrency']}; "
            f"{entry['levels']} levels{unreported})  goal ±{entry['goal_pct']:g} %  -> "
            f"{'meets' if entry['meets'] else 'MISSES'}"
        )
    print(flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for mode in args.modes:
        require_model(EXAMPLES[mode])
    stamp = time.strftime("%m%d-%H%M%S")
    all_rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {"modes": {}}
    any_failed = False
    for mode in args.modes:
        rows: list[dict[str, Any]] = []
        runs: list[dict[str, Any]] = []
        for run in range(1, args.runs + 1):
            name = f"fidelity-{mode}-{stamp}-r{run}"
            print(f"[{mode} run {run}/{args.runs}] starting rehearsal {name} ...", flush=True)
            started = time.monotonic()
            try:
                summary = run_rehearsal(EXAMPLES[mode], name, {}, keep=args.keep)
            except RehearsalError as exc:
                wall = time.monotonic() - started
                print(f"[{mode} run {run}/{args.runs}] FAILED after {wall:.0f} s: {exc}", flush=True)
                runs.append({"run": run, "wall_s": wall, "failed": str(exc)})
                any_failed = True
                continue
            info = summary["rehearsal"]
            plan = summary.get("plan", {})
            print(
                f"[{mode} run {run}/{args.runs}] done in {info['wall_s']:.0f} s: {info['name']}, plan "
                f"{plan.get('mode')} × {plan.get('replicas')} replica(s), design concurrency "
                f"{summary.get('design_concurrency')}" + (f"; kept {info['work_dir']}" if args.keep else ""),
                flush=True,
            )
            run_rows = level_rows(summary, mode=mode, run=run)
            print_table(run_rows, labels=("mode", "run"))
            print(flush=True)
            rows += run_rows
            runs.append({"run": run, "wall_s": info["wall_s"], "name": info["name"], "dir": info["work_dir"]})
        verdict = worst(rows)
        failed = sum(1 for entry in runs if "failed" in entry)
        report["modes"][mode] = {"runs": runs, "worst": verdict}
        all_rows += rows
        print_summary(mode, args.runs, failed, verdict)
    if args.json:
        report["rows"] = all_rows
        report["goal_pct"] = GOAL_PCT
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 1 if any_failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        # run_rehearsal has run `autodeploy down` by now: nothing is left running.
        sys.stderr.write("interrupted (the rehearsal was stopped with `autodeploy down`)\n")
        sys.exit(130)
