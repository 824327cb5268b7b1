"""How the two run directories here were made (run once; the source run is not kept in the repository).

rehearsal-a: autodeploy-runs/container-rehearsal as the CPU rehearsal left it (state.json,
pipeline.resolved.yaml, bench/c1.json, c4.json, c16.json; every request kept: the files are small).
rehearsal-b: the same deployment "measured again" at c = 1, 4, 8: every request of c1 and c4 with its
timeline stretched by 8 % (every start and end moved away from the level's first start by 8 %, each
first token kept at its request's original TTFT: TPOT about +8 %, TTFT unchanged, tokens/s about -7 %),
and c8 made of the first 8 warm-up and 40 measured requests of c16, stretched likewise; summaries
recomputed with the benchmark's own `summarize`.

    .venv/bin/python tests/data/runs/make_runs.py autodeploy-runs/container-rehearsal
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

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


if __name__ == "__main__":
    main(Path(sys.argv[1]))
