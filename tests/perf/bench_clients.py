"""The built-in client against aiperf and against the server, on the rehearsal, agg and disagg.

Usage (needs .venv-dynamo and .venv-aiperf, which `make test` installs):
    .venv/bin/python tests/perf/bench_clients.py [--levels 1 4 16 32] [--modes agg disagg] [--warmup burst]

For each mode, deploys examples/rehearsal-agg.yaml or examples/rehearsal.yaml on free ports in a
scratch directory and runs the benchmark with `client: both`: the built-in client and aiperf 0.13
measure every level one after the other, in the same warm-up method (burst; aiperf has no other), each
with the frontend's /metrics read at both ends of its window. It then prints per level:
- the two clients' mean TTFT, ITL and output throughput, and their difference (goal: ITL and
  throughput within 5 %, TTFT within 10 %);
- each client against the server over its own window (goal: within 10 %);
- each client's wall overhead per level: wall time beyond the span of its requests.
Last, memory: one c = 4 level by each client as a standalone process tree, peak RSS summed over the
tree (polled from /proc every 50 ms). The goal is a built-in client ≥ 5× lighter in memory and wall
overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.services import free_port  # noqa: E402

AIPERF = REPO / ".venv-aiperf" / "bin" / "aiperf"
MODEL = Path("/tmp/autodeploy-rehearsal/models/tiny-qwen3")
EXAMPLES = {"agg": "rehearsal-agg.yaml", "disagg": "rehearsal.yaml"}


def _pipeline(tmp: Path, mode: str, levels: list[int], warmup: str) -> Path:
    data = yaml.safe_load((REPO / "examples" / EXAMPLES[mode]).read_text())
    data["name"] = f"clients-{mode}"
    data["cluster"]["work_dir"] = str(tmp / "nodes")
    data["dynamo"]["frontend_port"] = free_port()
    data["infra"] = {
        "runtime": "native",
        "etcd_port": free_port(),
        "etcd_peer_port": free_port(),
        "nats_port": free_port(),
        "nats_monitor_port": free_port(),
    }
    data["launch"].update(python=str(REPO / ".venv-dynamo" / "bin" / "python"), system_port_base=free_port())
    data["benchmark"] = {
        "concurrency": levels,
        "requests_per_concurrency": 10,
        "warmup_per_concurrency": 1,
        "warmup": warmup,
        "client": "both",
        "aiperf_bin": str(AIPERF),
        # a level past 10× the SLA would end the sweep; this benchmark wants every level
        "stop_ttft_factor": 1000,
    }
    path = tmp / f"{mode}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _autodeploy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / ".venv" / "bin" / "autodeploy"), *args], capture_output=True, text=True, check=False
    )


def _mean(summary: dict[str, Any], key: str) -> float:
    value = summary[key]
    return float(value["avg"] if isinstance(value, dict) else value)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:+.1f}%"


def sweep(mode: str, levels: list[int], warmup: str, keep: Path | None = None) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = keep / mode if keep else Path(tmp_name)
        tmp.mkdir(parents=True, exist_ok=True)
        path = _pipeline(tmp, mode, levels, warmup)
        run_dir = tmp / "run"
        started = time.monotonic()
        result = _autodeploy("run", str(path), "--run-dir", str(run_dir), "--to", "benchmark")
        try:
            if result.returncode != 0:
                raise SystemExit(
                    f"{mode}: autodeploy run failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
                )
            for level in levels:
                document = json.loads((run_dir / "bench" / f"c{level}.json").read_text())
                theirs = document["clients"]["aiperf"]
                ours, aiperf = document["summary"], theirs["summary"]
                rows.append(
                    {
                        "c": level,
                        "ours": ours,
                        "aiperf": aiperf,
                        "difference": theirs["difference"],
                        "server_ours": document["server"],
                        "server_aiperf": theirs["server"],
                        "overhead_ours": document["client"]["wall_s"] - document["client"]["span_s"],
                        "overhead_aiperf": theirs["client"]["wall_s"] - theirs["client"]["span_s"],
                        "saturated": document["client"]["saturation"]["saturated"],
                    }
                )
        finally:
            _autodeploy("down", str(path), "--run-dir", str(run_dir))
        print(f"[{mode}: {time.monotonic() - started:.0f} s]", flush=True)
    return rows


def print_table(mode: str, rows: list[dict[str, Any]], warmup: str) -> None:
    print(f"\n{mode}, warm-up {warmup}: built-in client (B) against aiperf (A) and the frontend (S)")
    print(
        "| c | TTFT B | TTFT A | A/B−1 | ITL B | ITL A | A/B−1 | tok/s B | tok/s A | A/B−1 "
        "| TTFT B/S−1 | ITL B/S−1 | TTFT A/S−1 | ITL A/S−1 | overhead B | overhead A |"
    )
    print("|" + "---|" * 17)
    for row in rows:
        ours, aiperf, diff = row["ours"], row["aiperf"], row["difference"]
        so, sa = row["server_ours"], row["server_aiperf"]
        print(
            f"| {row['c']}{' (sat)' if row['saturated'] else ''} "
            f"| {_mean(ours, 'time_to_first_token_ms'):.1f} | {_mean(aiperf, 'time_to_first_token_ms'):.1f} "
            f"| {_pct(diff['ttft_ms'])} "
            f"| {_mean(ours, 'inter_token_latency_ms'):.3f} | {_mean(aiperf, 'inter_token_latency_ms'):.3f} "
            f"| {_pct(diff['tpot_ms'])} "
            f"| {_mean(ours, 'output_token_throughput'):.0f} | {_mean(aiperf, 'output_token_throughput'):.0f} "
            f"| {_pct(diff['output_token_throughput'])} "
            f"| {_pct(so.get('gaps', {}).get('ttft'))} | {_pct(so.get('gaps', {}).get('itl'))} "
            f"| {_pct(sa.get('gaps', {}).get('ttft'))} | {_pct(sa.get('gaps', {}).get('itl'))} "
            f"| {row['overhead_ours']:.1f} s | {row['overhead_aiperf']:.1f} s |"
        )


def _tree_rss_mb(root: int) -> float:
    """Resident memory of a process and all its descendants (MB), from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            status = (entry / "status").read_text()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss[int(entry.name)] = int(line.split()[1]) / 1024
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0.0)
        stack.extend(children.get(pid, []))
    return total


def _peak(command: list[str]) -> tuple[float, float, float]:
    """(peak tree RSS in MB, wall s, CPU s of the whole tree) of a command."""
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0.0
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss_mb(process.pid))
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    # wait4's usage covers the process and every descendant it waited for (aiperf's services included)
    _, _, usage = os.wait4(process.pid, 0)
    process.returncode = 0
    done.set()
    poller.join()
    return peak, time.monotonic() - started, usage.ru_utime + usage.ru_stime


BUILTIN_LEVEL = """
import sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from automation.bench.client import LoadPlan, run_level
from automation.bench.prompts import PromptMaker, read_tokenizer

if __name__ == "__main__":
    maker = PromptMaker(read_tokenizer(Path({model!r})), 4000, seed=91)
    prompts = [maker.make(i) for i in range(44)]
    run_level(LoadPlan(url={url!r}, model="Qwen/Qwen3-32B-FP8", osl=512, concurrency=4, warmup=4,
                       timeout_s=600), prompts)
"""


def memory(mode: str) -> None:
    from automation.bench.aiperf import aiperf_command

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        path = _pipeline(tmp, mode, [1], "burst")
        run_dir = tmp / "run"
        result = _autodeploy("run", str(path), "--run-dir", str(run_dir), "--to", "launch")
        try:
            if result.returncode != 0:
                raise SystemExit(f"launch failed:\n{result.stdout[-3000:]}")
            state = json.loads((run_dir / "state.json").read_text())
            url = state["stages"]["launch"]["outputs"]["frontend"]
            script = BUILTIN_LEVEL.format(repo=str(REPO), model=str(MODEL), url=url)
            ours = _peak([str(REPO / ".venv" / "bin" / "python"), "-c", script])
            command = aiperf_command(
                aiperf_bin=str(AIPERF),
                url=url,
                model="Qwen/Qwen3-32B-FP8",
                tokenizer=str(MODEL),
                isl=4000,
                osl=512,
                concurrency=4,
                requests=40,
                warmup=4,
                seed=91,
                endpoint="completions",
                artifacts=tmp / "aiperf",
            )
            theirs = _peak(command)
        finally:
            _autodeploy("down", str(path), "--run-dir", str(run_dir))
    print(f"\none c = 4 level (44 requests, ISL 4000 / OSL 512) as a standalone process tree ({mode}):")
    print("| client | peak RSS (MB) | wall (s) | CPU (s) |\n|---|---|---|---|")
    print(f"| built-in | {ours[0]:.0f} | {ours[1]:.1f} | {ours[2]:.1f} |")
    print(f"| aiperf 0.13.0 | {theirs[0]:.0f} | {theirs[1]:.1f} | {theirs[2]:.1f} |")
    print(f"aiperf / built-in: memory {theirs[0] / ours[0]:.1f}×, CPU {theirs[2] / ours[2]:.1f}×")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--modes", nargs="+", default=["agg", "disagg"], choices=sorted(EXAMPLES))
    parser.add_argument("--warmup", default="burst", choices=["burst"])
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument(
        "--keep", type=Path, help="keep the run directories here (default: a scratch directory)"
    )
    args = parser.parse_args()
    if not AIPERF.exists():
        raise SystemExit(f"{AIPERF} is missing: run scripts/install-aiperf.sh")
    subprocess.run([sys.executable, str(REPO / "scripts" / "make-tiny-model.py"), str(MODEL)], check=True)
    if args.memory_only:
        memory(args.modes[0])
        return
    results = {mode: sweep(mode, args.levels, args.warmup, args.keep) for mode in args.modes}
    for mode, rows in results.items():
        print_table(mode, rows, args.warmup)
    if not args.no_memory:
        memory(args.modes[0])


if __name__ == "__main__":
    main()
