"""RDMA on a node: launch finds /dev/infiniband and a real Docker engine accepts the options it passes."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from automation.node_runtime import container_options, probe
from automation.remote import LocalHost
from tests.generate.cases import pipeline

INFINIBAND = Path("/dev/infiniband")
CAP_IPC_LOCK = 14  # linux/capability.h


@pytest.fixture
def stand_in_infiniband() -> Iterator[Path]:
    """/dev/infiniband/uverbs0 as a character device (/dev/null's numbers): what a node with an InfiniBand or
    RoCE adapter shows. Only made where the machine has none; removed afterwards."""
    if INFINIBAND.exists():
        pytest.skip("this machine has a real /dev/infiniband: not replacing it")
    INFINIBAND.mkdir()
    try:
        os.mknod(INFINIBAND / "uverbs0", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        yield INFINIBAND / "uverbs0"
    finally:
        shutil.rmtree(INFINIBAND)


def test_a_node_with_infiniband_gets_its_devices_ipc_lock_and_memlock_in_the_container(
    stand_in_infiniband: Path, dockerd
) -> None:
    engine, (busybox_image, _) = dockerd
    config = pipeline([8])
    facts = probe(config, LocalHost("node0", "127.0.0.1"), None)
    assert facts.rdma and facts.devices == ["uverbs0"]
    words = container_options(config, facts, "/tmp", "")
    rdma = words[words.index("--device") : words.index("--ulimit") + 2]
    assert rdma[-2:] == ["--ulimit", "memlock=-1:-1"]
    command = ["sh", "-c", "ls /dev/infiniband; ulimit -l; cat /proc/self/status"]
    full = subprocess.run(
        ["docker", "-H", engine.url, "run", "--rm", *rdma, busybox_image, *command],
        capture_output=True,
        text=True,
    )
    if full.returncode == 0:
        assert full.stdout.split("\n")[1] == "unlimited"  # memlock: UCX pins its buffers
    else:
        # Docker took the option and runc applied it: this sandbox's dockerd may not raise RLIMIT_MEMLOCK (type
        # 8) above its own hard limit (no CAP_SYS_RESOURCE), which a cluster node's dockerd can.
        assert "error setting rlimit type 8" in full.stderr, full.stderr
    shown = engine.docker("run", "--rm", *rdma[:-2], busybox_image, *command).split("\n")
    assert shown[0] == "uverbs0"  # the directory's devices are in the container
    capabilities = int(next(line for line in shown if line.startswith("CapEff:")).split()[1], 16)
    assert capabilities & (1 << CAP_IPC_LOCK)
    plain = engine.docker("run", "--rm", busybox_image, "sh", "-c", "cat /proc/self/status")
    default = int(next(line for line in plain.split("\n") if line.startswith("CapEff:")).split()[1], 16)
    assert not default & (1 << CAP_IPC_LOCK)  # Docker's default set lacks it: the option is what adds it
