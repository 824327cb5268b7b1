"""Cold start of a two-node disaggregated rehearsal: how long infra + launch take until every worker serves.

Usage (root; needs the packages of scripts/system-packages.txt and .venv-dynamo):
    .venv/bin/python tests/perf/bench_two_node_launch.py [repeats]
Builds two network-namespace nodes with their own sshd, runs configure..checkpoint once, then for each
repeat times `autodeploy run --from infra --to launch` (etcd + NATS on node 0, prefill on node 0, decode
on node 1, over SSH, until the frontend answers a request) from the controller namespace, prints the
wall time, and tears it down with `autodeploy down`. The bar is under 30 s.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.services import SSHKeys, namespace_cluster  # noqa: E402


def main(repeats: int = 3) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        keys = SSHKeys.create(tmp / "ssh")
        model = tmp / "tiny-qwen3"
        subprocess.run([sys.executable, str(REPO / "scripts" / "make-tiny-model.py"), str(model)], check=True)
        with namespace_cluster(keys, node_count=2) as cluster:
            pipeline = tmp / "two-node.yaml"
            pipeline.write_text(
                yaml.safe_dump(
                    {
                        "name": "bench-two-node",
                        "model": {"hf_id": "Qwen/Qwen3-32B-FP8", "path": str(model)},
                        "system": "h200_sxm",
                        "workload": {"isl": 4000, "osl": 512},
                        "sla": {"ttft_ms": 1000, "tpot_ms": 50},
                        "search": {"total_gpus": 8, "modes": ["disagg"]},
                        "dynamo": {"version": "1.6.1"},
                        "backend": {"version": "1.3.0rc23"},
                        "cluster": {
                            "ssh": {
                                "user": "root",
                                "key_file": str(keys.client_key),
                                "host_keys": "accept_new",
                                "known_hosts": str(tmp / "known_hosts"),
                            },
                            "nodes": [{"host": a, "gpus": 4} for a in cluster.addresses],
                            "work_dir": str(tmp / "nodes"),
                        },
                        "checkpoint": {"source": "present"},
                        "infra": {"runtime": "native"},
                        "launch": {
                            "runtime": "host",
                            "engine": "mocker",
                            "python": str(REPO / ".venv-dynamo" / "bin" / "python"),
                            "ready_timeout_s": 120,
                        },
                    }
                )
            )
            cli = [*cluster.exec_prefix(), sys.executable, "-m", "automation"]
            run_dir = ["--run-dir", str(tmp / "run")]
            subprocess.run(
                [*cli, "run", str(pipeline), "--to", "checkpoint", *run_dir],
                cwd=REPO,
                check=True,
                capture_output=True,
            )
            placement_note = ""
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                done = subprocess.run(
                    [*cli, "run", str(pipeline), "--from", "infra", "--to", "launch", *run_dir],
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                )
                elapsed = time.perf_counter() - started
                if done.returncode != 0:
                    print(done.stdout, done.stderr)
                    raise SystemExit("launch failed")
                times.append(elapsed)
                placement = yaml.safe_load((tmp / "run" / "generated" / "placement.json").read_text())
                placement_note = ", ".join(f"{w['id']}@{w['node_name']}" for w in placement["workers"])
                subprocess.run(
                    [*cli, "down", str(pipeline), *run_dir], cwd=REPO, check=True, capture_output=True
                )
    print(f"two-node disagg rehearsal ({placement_note}), cold infra + launch until a request is answered:")
    print(
        f"  runs {', '.join(f'{t:.1f}s' for t in times)}; median {statistics.median(times):.1f} s (bar < 30 s)"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
