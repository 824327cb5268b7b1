"""How the run directories here were made (run once; the source run is not kept in the repository).

rehearsal-a: autodeploy-runs/container-rehearsal as the CPU rehearsal left it (state.json,
pipeline.resolved.yaml, bench/c1.json, c4.json, c16.json; every request kept: the files are small).
rehearsal-b: the same deployment "measured again" at c = 1, 4, 8: every request of c1 and c4 with its
timeline stretched by 8 % (every start and end moved away from the level's first start by 8 %, each
first token kept at its request's original TTFT: TPOT about +8 %, TTFT unchanged, tokens/s about -7 %),
and c8 made of the first 8 warm-up and 40 measured requests of c16, stretched likewise; summaries
recomputed with the benchmark's own `summarize`.
rehearsal-c: rehearsal-a with every optional fact a newer benchmark stage records (made from
rehearsal-a here, so it needs no source run): goodput and cached tokens in each summary, the client
(c16 saturated), the method (c16 warmed up in a burst), the server's view (c4 flagged, c16's scrape
failed), a second client (aiperf) at c1 and c4, GPU telemetry (bench/c1.gpu.csv, c4.gpu.csv; c16 has
none), the sweep stopped at c16, prompt tokens reused at c4; the model read at a hub commit;
configure/search.json with both modes' frontiers; rehearsal-a as its baseline.

    .venv/bin/python tests/data/runs/make_runs.py autodeploy-runs/container-rehearsal
    .venv/bin/python tests/data/runs/make_runs.py --extended
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

from automation.bench.metrics import RequestRecord, summarize

HERE = Path(__file__).resolve().parent
TPOT_SHIFT = 1.08


def stretched(records: list[dict], shift: float) -> list[RequestRecord]:
    origin = min(r["start"] for r in records)
    out = []
    for i, r in enumerate(records):
        rec = RequestRecord(**{**r, "index": i})
        ttft = None if rec.first_token is None else rec.first_token - rec.start
        rec.start = origin + (rec.start - origin) * shift
        if ttft is not None:
            rec.first_token = rec.start + ttft
        if rec.end is not None:
            rec.end = origin + (rec.end - origin) * shift
        out.append(rec)
    return out


def level(document: dict, records: list[RequestRecord], concurrency: int, gpus: int) -> dict:
    return {
        **document,
        "summary": summarize(records, concurrency, gpus),
        "requests": [r.to_dict() for r in records],
    }


def main(source: Path) -> None:
    a, b = HERE / "rehearsal-a", HERE / "rehearsal-b"
    for target in (a, b):
        shutil.rmtree(target, ignore_errors=True)
        (target / "bench").mkdir(parents=True)
    for name in ("state.json", "pipeline.resolved.yaml", "bench/c1.json", "bench/c4.json", "bench/c16.json"):
        shutil.copy(source / name, a / name)

    state = json.loads((source / "state.json").read_text())
    gpus = state["stages"]["benchmark"]["outputs"]["gpus"]
    for c in (1, 4):
        doc = json.loads((source / f"bench/c{c}.json").read_text())
        records = stretched(doc["requests"], TPOT_SHIFT)
        (b / f"bench/c{c}.json").write_text(json.dumps(level(doc, records, c, gpus), indent=1))
    doc16 = json.loads((source / "bench/c16.json").read_text())
    warm = [r for r in doc16["requests"] if r["warmup"]][:8]
    measured = [r for r in doc16["requests"] if not r["warmup"]][:40]
    records = stretched(warm + measured, TPOT_SHIFT)
    (b / "bench/c8.json").write_text(json.dumps(level(doc16, records, 8, gpus), indent=1))

    state["run_uid"] = "container-rehearsal-b"
    state["stages"]["benchmark"]["outputs"].update(
        levels=[1, 4, 8], files={str(c): f"bench/c{c}.json" for c in (1, 4, 8)}
    )
    (b / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    resolved = (source / "pipeline.resolved.yaml").read_text()
    (b / "pipeline.resolved.yaml").write_text(
        resolved.replace("  concurrency:\n  - 1\n  - 4\n  - 16\n", "  concurrency:\n  - 1\n  - 4\n  - 8\n")
    )


# rehearsal-c's facts per level: (client CPU share, the server's TTFT and ITL relative to the client's,
# cached prompt tokens, aiperf's TTFT/TPOT/throughput relative to the builtin client's or None).
EXTENDED = {
    1: (0.12, (0.97, 0.99), 0, (1.02, 1.01, 0.99)),
    4: (0.35, (0.85, 0.98), 4000, (1.03, 1.02, 0.98)),
    16: (0.97, None, 0, None),
}
STOPPED = "TTFT p90 above 3 × the SLA limit: a higher level would only queue"


def extended(a: Path, c: Path) -> None:
    """rehearsal-c from rehearsal-a (see the module docstring)."""
    from automation.config import load_pipeline
    from automation.perfmodel import search

    shutil.rmtree(c, ignore_errors=True)
    (c / "bench").mkdir(parents=True)
    (c / "configure").mkdir()
    resolved = (a / "pipeline.resolved.yaml").read_text()
    (c / "pipeline.resolved.yaml").write_text(
        resolved.replace("  seed: 0\n", "  seed: 0\n  baseline: ../rehearsal-a\n")
    )
    config = load_pipeline(c / "pipeline.resolved.yaml")
    sla = (config.sla.ttft_ms, config.sla.tpot_ms)
    result = search(
        config.model.hf_id,
        config.system,
        config.search.total_gpus,
        config.workload.isl,
        config.workload.osl,
        *sla,
        modes=("agg", "disagg"),
        top_n=3,
        gpus_per_node=4,
    )
    (c / "configure/search.json").write_text(json.dumps(result.to_json(), indent=2))

    state = json.loads((a / "state.json").read_text())
    state["run_uid"] = "container-rehearsal-c"
    state["stages"]["checkpoint"]["outputs"].update(
        source="hub", repo=config.model.hf_id, commit="4c4d5a3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d"
    )
    (c / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    gpus = state["stages"]["benchmark"]["outputs"]["gpus"]
    for concurrency, facts in EXTENDED.items():
        document = json.loads((a / f"bench/c{concurrency}.json").read_text())
        records = [RequestRecord(**r) for r in document["requests"]]
        summary = summarize(records, concurrency, gpus, sla)
        document.update(_extended_level(concurrency, summary, facts, gpus))
        (c / f"bench/c{concurrency}.json").write_text(json.dumps(document, indent=1))
        if concurrency != 16:
            (c / f"bench/c{concurrency}.gpu.csv").write_text(_gpu_csv(summary["duration_s"], concurrency))


def _extended_level(
    concurrency: int, summary: dict[str, Any], facts: tuple[Any, ...], gpus: int
) -> dict[str, Any]:
    cpu_share, server_scale, cached, aiperf_scale = facts
    saturated = cpu_share > 0.85
    summary["cached_tokens"] = {"client": cached, "server": float(cached), "reused": cached > 0}
    ttft, itl = summary["time_to_first_token_ms"]["avg"], summary["inter_token_latency_ms"]["avg"]
    level: dict[str, Any] = {
        "summary": summary,
        "level": f"c{concurrency}",
        "client": {
            "name": "builtin",
            "version": "0.1.0",
            "processes": 1,
            "saturation": {
                "cpu_share": cpu_share,
                "loop_lag_p99_ms": 41.0 if saturated else 0.8,
                "saturated": saturated,
                "reason": "the client's event loop was busy 97 % of the time (limit 85 %)"
                if saturated
                else None,
            },
        },
        "method": {
            "warmup": "burst" if concurrency == 16 else "steady",
            "mode": "concurrency",
            "rate_per_s": None,
            "endpoint": "completions",
            "seed": concurrency,  # each level derives its own: benchmark.seed (0) × 7919 + c
            "chat_template_tokens": None,
        },
    }
    if server_scale is None:
        level["server"] = {"error": "GET http://10.201.0.1:8000/metrics: timed out"}
        level["telemetry"] = {"absent": "no nvidia-smi on node0"}
        level["stopped"] = STOPPED
    else:
        server_ttft, server_itl = ttft * server_scale[0], itl * server_scale[1]
        gaps = {"ttft": ttft / server_ttft - 1.0, "itl": itl / server_itl - 1.0}
        flags = (
            [
                f"TTFT: client {ttft:.1f} ms vs server {server_ttft:.1f} ms ({gaps['ttft']:+.0%}): the client's clock "
                "starts before the request reaches the frontend (connect, send)"
            ]
            if gaps["ttft"] > 0.10
            else []
        )
        level["server"] = {
            "window_s": summary["duration_s"],
            "requests": summary["requests"],
            "ttft_ms": server_ttft,
            "itl_ms": server_itl,
            "queued_max": 0.0,
            "inflight_max": float(concurrency),
            "cached_tokens": float(cached),
            "gaps": gaps,
            "flags": flags,
        }
        level["telemetry"] = {
            "file": f"bench/c{concurrency}.gpu.csv",
            "gpus": gpus,
            "samples": gpus * (math.ceil(summary["duration_s"]) + 1),
            "util_mean": 20.0 + 4.0 * concurrency,
            "mem_max_mb": 120000.0,
            "power_mean_w": 250.0 + 10.0 * concurrency,
        }
        if concurrency == 4:  # one node answered, the other had no nvidia-smi at that moment
            level["telemetry"]["absent"] = "no nvidia-smi GPUs on node1"
    if aiperf_scale is not None:
        other = json.loads(json.dumps(summary))
        other["time_to_first_token_ms"]["avg"] = ttft * aiperf_scale[0]
        other["inter_token_latency_ms"]["avg"] = itl * aiperf_scale[1]
        other["output_token_throughput"] = summary["output_token_throughput"] * aiperf_scale[2]
        level["clients"] = {
            "aiperf": {
                "summary": other,
                "client": {"name": "aiperf", "version": "0.3.0", "processes": None, "saturation": None},
                "artifacts": f"bench/aiperf/c{concurrency}",
                "difference": {
                    "ttft_ms": aiperf_scale[0] - 1.0,
                    "tpot_ms": aiperf_scale[1] - 1.0,
                    "output_token_throughput": aiperf_scale[2] - 1.0,
                },
            }
        }
    return level


def _gpu_csv(duration_s: float, concurrency: int) -> str:
    """One sample a second of 8 GPUs on two nodes; node1/3 could not report its power at t = 2 s."""
    lines = ["t_s,node,gpu,util_pct,mem_used_mb,power_w"]
    for second in range(math.ceil(duration_s) + 1):
        for node in ("node0", "node1"):
            for gpu in range(4):
                util = min(100.0, 4.0 * concurrency + 10.0 * (1 + math.sin(second / 3 + gpu)))
                power = "[N/A]" if (node, gpu, second) == ("node1", 3, 2) else f"{200 + 2.5 * util:.1f}"
                lines.append(
                    f"{second:.1f},{node},{gpu},{util:.1f},{100000 + 1000 * gpu + 50 * second},{power}"
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1] == "--extended":
        extended(HERE / "rehearsal-a", HERE / "rehearsal-c")
    else:
        main(Path(sys.argv[1]))
