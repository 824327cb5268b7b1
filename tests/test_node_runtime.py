"""What launch finds on a node (RDMA, who the workers run as) and how the container is started from it."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from automation.errors import StageError
from automation.node_runtime import (
    CONTAINER_MODEL_DIR,
    CONTAINER_RUN_DIR,
    NodeRuntime,
    container_options,
    describe,
    probe,
)
from automation.remote import LocalHost
from tests.generate.cases import pipeline


def _facts(rdma: bool) -> NodeRuntime:
    return NodeRuntime(node="node0", runtime="container", user="dynamo", rdma=rdma, devices=[])


def test_this_machine_has_no_infiniband_so_rdma_is_off_and_on_is_refused() -> None:
    assert not Path("/dev/infiniband").exists()  # the premise: a CPU machine
    config = pipeline([8], runtime="host")
    host = LocalHost("node0", "127.0.0.1")
    facts = probe(config, host, None)
    assert (facts.rdma, facts.devices) == (False, [])
    assert facts.user == pwd.getpwuid(os.getuid()).pw_name
    config.launch.rdma = "on"
    with pytest.raises(StageError, match=r"launch.rdma is on but node0 has no InfiniBand/RoCE device"):
        probe(config, host, None)


def test_containers_get_the_rdma_devices_ipc_lock_and_memlock_only_with_rdma() -> None:
    config = pipeline([8])
    with_rdma = container_options(config, _facts(True), "/root/autodeploy/run-1/generated", "/models/m")
    assert "--device /dev/infiniband --cap-add IPC_LOCK --ulimit memlock=-1:-1" in " ".join(with_rdma)
    without = container_options(config, _facts(False), "/root/autodeploy/run-1/generated", "/models/m")
    assert "/dev/infiniband" not in " ".join(without) and "IPC_LOCK" not in " ".join(without)


def test_files_are_mounted_at_paths_the_images_user_can_enter() -> None:
    """Before: mounted at their node paths (/root/..., 0700 in the image), unreadable to uid 1000."""
    config = pipeline([8])
    words = container_options(config, _facts(False), "/root/autodeploy/run-1/generated", "/root/models/m")
    mounts = [words[i + 1] for i, w in enumerate(words) if w == "-v"]
    assert mounts == [
        f"/root/autodeploy/run-1/generated:{CONTAINER_RUN_DIR}",
        f"/root/models/m:{CONTAINER_MODEL_DIR}:ro",
    ]
    assert f"AUTODEPLOY_MODEL_PATH={CONTAINER_MODEL_DIR}" in words
    assert not any(m.split(":")[1].startswith("/root") for m in mounts)


def test_plan_says_per_node_versions_user_and_rdma() -> None:
    config = pipeline([8, 8], dynamo="1.6.1")
    lines = describe(config)
    assert len(lines) == 2
    assert lines[0].startswith("node0 (10.0.0.1): Dynamo 1.6.1, TensorRT-LLM ")
    assert "runs as dynamo (uid 1000) (checked at launch)" in lines[0]
    assert "RDMA: if /dev/infiniband is there (checked at launch)" in lines[0]
    seen = {
        "node1": NodeRuntime(node="node1", runtime="container", user="1000", rdma=True, devices=["uverbs0"])
    }
    assert describe(config, seen)[1].endswith("runs as 1000; RDMA: yes")
