"""scripts/rehearsal-nodes.sh: the two namespace nodes a person uses for examples/two-node-rehearsal.yaml."""

from __future__ import annotations

import subprocess

from automation.config import load_pipeline
from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "rehearsal-nodes.sh"


def test_up_gives_two_ssh_nodes_the_example_reaches_and_down_removes_them() -> None:
    config = load_pipeline(REPO / "examples" / "two-node-rehearsal.yaml")
    try:
        subprocess.run([str(SCRIPT), "up"], check=True, capture_output=True, timeout=60)
        ssh = config.cluster.ssh
        for node in config.cluster.nodes:
            done = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    "adr-ctl",
                    "ssh",
                    "-i",
                    str(ssh.key_file),
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    f"UserKnownHostsFile={ssh.known_hosts}",
                    "-o",
                    "StrictHostKeyChecking=yes",
                    f"root@{node.host}",
                    "ip -4 -o addr show dev eth0",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert done.returncode == 0, done.stderr
            assert f"inet {node.host}/24" in done.stdout  # a separate host, checked against known_hosts
    finally:
        subprocess.run([str(SCRIPT), "down"], check=True, capture_output=True, timeout=60)
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "adr-" not in listing
