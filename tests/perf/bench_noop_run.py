"""How long `autodeploy run` takes when every stage is done (the bar: well under a second). Prints numbers.

Usage: .venv/bin/python tests/perf/bench_noop_run.py [repeats]
Runs the real CLI in a child process over the stand-in stages of tests/harness, once to finish every
stage, then `repeats` more times, when everything is skipped; prints min / median / max wall time.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.conftest import MINIMAL_PIPELINE  # noqa: E402


def main(repeats: int = 10) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = Path(tmp) / "pipeline.yaml"
        pipeline.write_text(MINIMAL_PIPELINE)
        command = [sys.executable, "-m", "tests.harness.run", "run", str(pipeline), "--run-dir", f"{tmp}/run"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            result = subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, text=True)
            times.append(time.perf_counter() - started)
            assert result.stdout.count("↷") == 4, result.stdout
        python = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare = time.perf_counter() - python
    print(f"autodeploy run, every stage done ({repeats} runs, whole process):")
    print(f"  min {min(times):.3f} s   median {statistics.median(times):.3f} s   max {max(times):.3f} s")
    print(f"  (a bare python start-up here takes {bare:.3f} s)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
