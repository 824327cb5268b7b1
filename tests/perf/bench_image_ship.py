"""Shipping an image between two nodes' Docker engines: MB/s of the build stage's stream and registry paths
against the raw `docker save | docker load` pipe on one host, and the cost of re-checking a completed build.

Usage (root; needs the packages of scripts/system-packages.txt, docker-registry among them):
    .venv/bin/python tests/perf/bench_image_ship.py [MiB]      # image size, default 1024
Starts two network-namespace nodes, each with its own sshd and dockerd, and a registry on node 0 (the
tests' docker_namespace_cluster). Imports a busybox image with a MiB-sized file of random bytes on node 0,
then, from the controller namespace, times:
  raw:      `docker save | docker load` from node 0's engine into a second engine on the same host (no SSH,
            no registry): the physical limit of this machine for moving the image once;
  stream:   `autodeploy run --only build` with image_source load (node 0 loads the archive), then the
            stage ships it to node 1 by its SSH stream (docker save on node 0 into docker load on node 1,
            through the controller's autodeploy process); the stage records ship_s and MB/s;
  raw ssh:  `ssh node0 docker save | ssh node1 docker load` from the controller: the same hops as stream;
  registry: the same with dynamo.registry: node 0 pushes, node 1 pulls;
  verify:   `autodeploy run --to build` on the completed run: configure and generate are skipped, build is
            skipped after its verify (one image inspect per node over SSH); the whole command's wall time.
MB = 1e6 bytes of `docker save` output; MB/s = that over the wall time of the transfer.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.services import (  # noqa: E402
    DockerCluster,
    SSHKeys,
    docker_namespace_cluster,
    import_busybox_image,
    start_dockerd,
)

IMAGE = "autodeploy-bench/dynamo:big"
LABELS = ["LABEL autodeploy.dynamo.version=1.6.1", "LABEL autodeploy.trtllm.version=1.3.0rc29"]


def _pipeline(scratch: Path, cluster: DockerCluster, name: str, **dynamo: object) -> Path:
    return cluster.pipeline(scratch, name, image=IMAGE, **dynamo)


def _autodeploy(cluster: DockerCluster, path: Path, *args: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [
            *cluster.cluster.exec_prefix(),
            *(
                sys.executable,
                "-m",
                "automation",
                "run",
                str(path),
                *args,
                "--run-dir",
                str(path.with_suffix("")),
            ),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"autodeploy failed:\n{done.stdout}\n{done.stderr}")
    return seconds


def main() -> None:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    scratch = Path(tempfile.mkdtemp(prefix="bench-ship-"))
    try:
        _measure(scratch, mib)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # several GB of engine data


def _measure(scratch: Path, mib: int) -> None:
    keys = SSHKeys.create(scratch / "ssh")
    with docker_namespace_cluster(keys, scratch / "cluster") as cluster:
        node0, node1 = cluster.engines
        print(f"importing a {mib} MiB image on node 0 ...", flush=True)
        import_busybox_image(node0, scratch / "rootfs", IMAGE, changes=LABELS, filler_bytes=mib << 20)
        tar = scratch / "image.tar"
        subprocess.run(["bash", "-c", f"docker -H {node0.url} save {IMAGE} > {tar}"], check=True)
        mb = tar.stat().st_size / 1e6
        print(f"image: {mb:.0f} MB as docker save writes it")
        other = start_dockerd(scratch / "raw-engine")
        try:
            started = time.perf_counter()
            subprocess.run(
                [
                    "bash",
                    "-c",
                    f"set -o pipefail; docker -H {node0.url} save {IMAGE} | docker -H {other.url} load",
                ],
                check=True,
                capture_output=True,
            )
            raw = mb / (time.perf_counter() - started)
        finally:
            other.stop()
        print(f"raw       docker save | docker load, one host, no SSH: {raw:6.0f} MB/s")
        subprocess.run(["docker", "-H", node1.url, "image", "rm", "-f", IMAGE], capture_output=True)
        save = shlex.join(cluster.ssh_argv(0, "docker", "save", IMAGE))
        load = shlex.join(cluster.ssh_argv(1, "docker", "load"))
        started = time.perf_counter()
        subprocess.run(["bash", "-c", f"set -o pipefail; {save} | {load}"], check=True, capture_output=True)
        raw_ssh = mb / (time.perf_counter() - started)
        print(f"raw ssh   ssh node0 docker save | ssh node1 docker load:  {raw_ssh:6.0f} MB/s")
        path = scratch / "none.yaml"
        for how, extra in (("stream", {}), ("registry", {"registry": cluster.registry.endpoint})):
            subprocess.run(["docker", "-H", node1.url, "image", "rm", "-f", IMAGE], capture_output=True)
            path = _pipeline(scratch, cluster, how, image_source="load", image_tar=str(tar), **extra)
            _autodeploy(cluster, path, "--only", "build")
            state = json.loads((path.with_suffix("") / "state.json").read_text())
            outputs = state["stages"]["build"]["outputs"]
            assert outputs["arrivals"] == {
                "node0": "loaded",
                "node1": "received" if how == "stream" else "pulled",
            }
            rate = float(outputs["shipped_mb_per_s"])
            print(
                f"{how:<9} node 0 -> node 1 ({outputs['ship_s']:.1f} s): {rate:6.0f} MB/s "
                f"({rate / raw:.0%} of raw, {rate / raw_ssh:.0%} of raw ssh)"
            )
        _autodeploy(cluster, path, "--to", "build")  # configure and generate, once; build is done already
        verify = min(_autodeploy(cluster, path, "--to", "build") for _ in range(3))
        print(
            f"verify    re-running build on the completed two-node run: {verify:.2f} s (whole command, best of 3)"
        )


if __name__ == "__main__":
    main()
