"""Copying a checkpoint to two nodes: peak memory and MB/s of the stage's copy against a raw tar | ssh pipe.

Usage (root; needs the packages of scripts/system-packages.txt):
    .venv/bin/python tests/perf/bench_checkpoint_copy.py [GiB] [repeats]
Makes a checkpoint of four random .safetensors files (GiB in all, default 2), starts two network-namespace
nodes with their own sshd, then, from the controller namespace, copies it to both nodes at once:
  ours: checkpoint.copy_to_nodes (the stage's code path: SSHHost.put, a thread per node; the OpenSSH
        client pinned to the verified host key, or paramiko's channel with BENCH_TRANSPORT=channel) in a child
        process whose peak RSS (VmHWM) it reports; once with one file only, to show that memory does not
        grow with the size copied;
  raw:  `tar -c | ssh node tar -x`, one pipe per node, both at once.
Prints MB/s (MB = 1e6 bytes delivered to all nodes, per second) for each, and ours/raw. The bars: peak
RSS under 200 MB whatever the size, and ours at least 80 % of raw.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.services import NamespaceCluster, SSHKeys, namespace_cluster  # noqa: E402

# The child: the stage's copy, timed from the first connection to the last byte written on the nodes.
_OURS = """
import json, resource, sys, time
from pathlib import Path
from automation.console import StageDisplay
from automation.remote import SSHHost
from automation.stages.checkpoint import NodeCopy, copy_to_nodes

args = json.loads(sys.argv[1])
hosts = [
    SSHHost(f"node{i}", a, user="root", key_file=Path(args["key"]), host_keys="accept_new",
            known_hosts=Path(args["known_hosts"]))
    for i, a in enumerate(args["addresses"])
]
if args["transport"] == "channel":
    for host in hosts:
        host.openssh = None
start = time.perf_counter()
sent = copy_to_nodes(
    Path(args["source"]),
    [NodeCopy(h, t, tuple(args["files"])) for h, t in zip(hosts, args["targets"])],
    StageDisplay(None, "checkpoint", None),
)
seconds = time.perf_counter() - start
transport = hosts[0]._connect().client.get_transport()
cipher = (
    "OpenSSH client, pinned host key"
    if hosts[0].openssh
    else f"paramiko channel, {transport.local_cipher} {transport.local_mac}"
)
for host in hosts:
    host.close()
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "bytes": sum(sent.values()), "hwm_kb": hwm, "cipher": cipher}))
"""


def make_checkpoint(directory: Path, gib: float, files: int = 4) -> list[str]:
    directory.mkdir(parents=True)
    names, size, chunk = [], int(gib * (1 << 30) / files), 16 << 20
    for index in range(files):
        name = f"model-{index + 1:05d}-of-{files:05d}.safetensors"
        with (directory / name).open("wb") as out:
            left = size
            while left:
                out.write(os.urandom(min(chunk, left)))
                left -= min(chunk, left)
        names.append(name)
    (directory / "config.json").write_text('{"architectures": ["Bench"]}\n')
    return [*names, "config.json"]


def ours(
    cluster: NamespaceCluster, keys: SSHKeys, tmp: Path, source: Path, files: list[str]
) -> dict[str, Any]:
    targets = [tmp / f"ours-{i}" for i in range(len(cluster.addresses))]
    args = {
        "source": str(source),
        "files": files,
        "addresses": cluster.addresses,
        "targets": [str(t) for t in targets],
        "key": str(keys.client_key),
        "known_hosts": str(tmp / "known_hosts_ours"),
        # BENCH_TRANSPORT=channel measures the fallback without an OpenSSH client (paramiko's channel).
        "transport": os.environ.get("BENCH_TRANSPORT", "openssh"),
    }
    done = subprocess.run(
        [*cluster.exec_prefix(), sys.executable, "-c", textwrap.dedent(_OURS), json.dumps(args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the copy failed:\n{done.stderr}")
    for target in targets:
        shutil.rmtree(target)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def raw(cluster: NamespaceCluster, keys: SSHKeys, tmp: Path, source: Path) -> dict[str, Any]:
    """One `tar -c | ssh tar -x` per node, all at once, timed inside the controller namespace."""
    ssh = (
        f"ssh -v -i {shlex.quote(str(keys.client_key))} -o IdentitiesOnly=yes -o BatchMode=yes "
        f"-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={shlex.quote(str(tmp / 'known_hosts_raw'))}"
    )
    pipes = []
    for index, address in enumerate(cluster.addresses):
        target = shlex.quote(str(tmp / f"raw-{index}"))
        pipes.append(
            f"tar -C {shlex.quote(str(source))} -cf - . | "
            f"{ssh} root@{address} 'mkdir -p {target} && tar -xf - -C {target} --no-same-owner' "
            f"2>{shlex.quote(str(tmp / f'ssh-{index}.log'))} &"
        )
    script = f"start=$(date +%s.%N); {' '.join(pipes)} wait; end=$(date +%s.%N); echo $start $end"
    done = subprocess.run(
        [*cluster.exec_prefix(), "bash", "-c", script], capture_output=True, text=True, check=True
    )
    start, end = (float(x) for x in done.stdout.split())
    delivered = sum(f.stat().st_size for f in (tmp / "raw-0").rglob("*") if f.is_file())
    log = (tmp / "ssh-0.log").read_text()
    cipher = next(
        (line.split("cipher:")[1].strip() for line in log.splitlines() if "client->server cipher" in line),
        "?",
    )
    for index in range(len(cluster.addresses)):
        shutil.rmtree(tmp / f"raw-{index}")
    return {"seconds": end - start, "bytes": delivered * len(cluster.addresses), "cipher": cipher}


def main(gib: float = 2.0, repeats: int = 2) -> None:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp_name:
        tmp = Path(tmp_name)
        keys = SSHKeys.create(tmp / "ssh")
        source = tmp / "checkpoint"
        files = make_checkpoint(source, gib)
        print(
            f"checkpoint: {len(files)} files, {sum((source / f).stat().st_size for f in files) / 1e9:.2f} GB"
        )
        with namespace_cluster(keys, node_count=2) as cluster:
            ours_rates: list[float] = []
            raw_rates: list[float] = []
            hwms: list[float] = []
            for _ in range(repeats):
                mine = ours(cluster, keys, tmp, source, files)
                theirs = raw(cluster, keys, tmp, source)
                runs: list[tuple[str, dict[str, Any], list[float]]] = [
                    ("ours", mine, ours_rates),
                    ("raw", theirs, raw_rates),
                ]
                for name, result, rates in runs:
                    rate = result["bytes"] / result["seconds"] / 1e6
                    rates.append(rate)
                    extra = f"  peak RSS {result['hwm_kb'] / 1024:.0f} MB" if "hwm_kb" in result else ""
                    print(
                        f"{name:>4}: {result['seconds']:.1f} s, {rate:.0f} MB/s ({result['cipher']}){extra}"
                    )
                hwms.append(mine["hwm_kb"] / 1024)
            small = ours(cluster, keys, tmp, source, files[:1])
            print(
                f"ours, one file ({small['bytes'] / 1e9:.2f} GB to the nodes): peak RSS {small['hwm_kb'] / 1024:.0f} MB"
            )
        ours_best, raw_best = max(ours_rates), max(raw_rates)
        ours_median, raw_median = statistics.median(ours_rates), statistics.median(raw_rates)
        print(
            f"summary: peak RSS {max(hwms):.0f} MB (one file: {small['hwm_kb'] / 1024:.0f} MB); "
            f"ours {ours_median:.0f} MB/s median (best {ours_best:.0f}), "
            f"raw {raw_median:.0f} MB/s median (best {raw_best:.0f}), "
            f"ours/raw {ours_median / raw_median:.0%} of medians ({ours_best / raw_best:.0%} of bests)"
        )


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 2.0, int(sys.argv[2]) if len(sys.argv) > 2 else 2)
