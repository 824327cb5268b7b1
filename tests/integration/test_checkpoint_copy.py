"""The checkpoint copy to nodes: every node at once, each sent only the files it lacks, over real sshd."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import REPO
from tests.services import NamespaceCluster, SSHKeys

# Runs in the controller namespace (the nodes' addresses are reachable only from there). The display
# holds node0's first progress update until node1 has reported bytes too: a copy that served the nodes
# one after another would find node1 silent and record no overlap.
_SCRIPT = """
import json, re, sys, threading
from pathlib import Path
from automation.remote import SSHHost
from automation.stages.checkpoint import NodeCopy, copy_to_nodes

args = json.loads(sys.argv[1])
started = {"node0": threading.Event(), "node1": threading.Event()}
seen = {"overlap": None, "completed": {}, "totals": {}, "statuses": []}

class Task:
    def __init__(self, node, total):
        self.node = node
        seen["totals"][node] = total
    def update(self, completed=None, description=None):
        if completed:
            started[self.node].set()
            if self.node == "node0" and seen["overlap"] is None:
                seen["overlap"] = started["node1"].wait(60)
            seen["completed"][self.node] = completed

class Display:
    def progress(self, description, total=None):
        return Task(re.search(r"node\\d", description).group(0), total)
    def status(self, text):
        seen["statuses"].append(text)

hosts = [
    SSHHost(f"node{i}", address, user="root", key_file=Path(args["key"]), host_keys="accept_new",
            known_hosts=Path(args["known_hosts"]))
    for i, address in enumerate(args["addresses"])
]
copies = [NodeCopy(host, target, tuple(files)) for host, target, files in
          zip(hosts, args["targets"], args["files"])]
try:
    copy_to_nodes(Path(args["source"]), copies, Display())
finally:
    for host in hosts:
        host.close()
print(json.dumps(seen))
"""


def test_every_node_is_sent_its_own_files_at_once(
    netns: NamespaceCluster, ssh_keys: SSHKeys, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    contents = {
        "a.safetensors": os.urandom(4 << 20),
        "b.safetensors": os.urandom(4 << 20),
        "sub/c.json": b"{}",
        "d.json": b"[]",
    }
    for name, data in contents.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    wanted = [["a.safetensors", "sub/c.json"], ["b.safetensors"]]
    targets = [tmp_path / "node0", tmp_path / "node1"]
    args = {
        "source": str(source),
        "addresses": netns.addresses,
        "targets": [str(t) for t in targets],
        "files": wanted,
        "key": str(ssh_keys.client_key),
        "known_hosts": str(tmp_path / "known_hosts"),
    }
    done = subprocess.run(
        [*netns.exec_prefix(), sys.executable, "-c", textwrap.dedent(_SCRIPT), json.dumps(args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["overlap"] is True  # node1 was receiving while node0's copy was still under way
    for target, names in zip(targets, wanted, strict=True):
        assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == sorted(names)
        for name in names:
            assert (target / name).read_bytes() == contents[name]
    # Progress in MB per node, ending at the node's total.
    assert seen["completed"] == seen["totals"] == {"node0": 4.2, "node1": 4.2}
