"""The two-node Docker test bed itself (tests/services.docker_namespace_cluster): each node's sshd reaches
that node's own engine, and an image pushed to the registry on node 0 arrives unchanged on node 1. And
scripts/rehearsal-nodes.sh's `up --docker`, the same for a person."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import REPO
from tests.services import DockerCluster, import_busybox_image, require, require_root


def test_each_node_reaches_its_own_engine_over_ssh(docker_cluster: DockerCluster) -> None:
    require_root()
    ids = [docker_cluster.ssh(i, "docker", "info", "--format", "{{.ID}}").strip() for i in range(2)]
    direct = [engine.docker("info", "--format", "{{.ID}}").strip() for engine in docker_cluster.engines]
    assert ids == direct and len(set(ids)) == 2
    for i, address in enumerate(docker_cluster.addresses):  # a separate host: its engine shares its network
        engine = docker_cluster.engines[i]
        assert engine.namespace == docker_cluster.nodes[i]
        assert f"inet {address}/24" in docker_cluster.ssh(i, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
        registries = engine.docker("info", "--format", "{{json .RegistryConfig.IndexConfigs}}")
        assert docker_cluster.registry.endpoint in registries  # insecure (plain HTTP) for every engine


def test_an_image_pushed_from_node_0_is_pulled_on_node_1_with_the_same_id(
    docker_cluster: DockerCluster, tmp_path: Path
) -> None:
    require_root()
    source, target = docker_cluster.engines
    local = import_busybox_image(
        source, tmp_path, "autodeploy-test/cluster-probe:1", changes=["LABEL probe=yes"], filler_bytes=3 << 20
    )
    assert list(tmp_path.iterdir()) == []  # the rootfs is gone once imported
    reference = f"{docker_cluster.registry.endpoint}/autodeploy-test/cluster-probe:1"
    try:
        docker_cluster.ssh(0, "docker", "tag", "autodeploy-test/cluster-probe:1", reference)
        docker_cluster.ssh(0, "docker", "push", reference)
        absent = subprocess.run(
            docker_cluster.ssh_argv(1, "docker", "image", "inspect", reference), capture_output=True
        )
        assert absent.returncode != 0  # node 1's engine is not node 0's
        docker_cluster.ssh(1, "docker", "pull", reference)
        ids = [
            docker_cluster.ssh(i, "docker", "image", "inspect", "--format", "{{.Id}}", reference).strip()
            for i in range(2)
        ]
        assert ids == [local, local]
        labels = target.docker("image", "inspect", "--format", "{{.Config.Labels.probe}}", reference)
        assert labels.strip() == "yes"
        ran = docker_cluster.ssh(
            1, "docker", "run", "--rm", "--network", "none", reference, "sh", "-c", "echo up; ls -ln /filler"
        )
        assert ran.split()[0] == "up" and str(3 << 20) in ran.split()
    finally:
        for engine in (source, target):
            subprocess.run(
                ["docker", "-H", engine.url, "rmi", "-f", reference, "autodeploy-test/cluster-probe:1"],
                capture_output=True,
            )


SCRIPT = REPO / "scripts" / "rehearsal-nodes.sh"
REHEARSAL = Path("/tmp/autodeploy-rehearsal")


def test_rehearsal_nodes_with_docker_give_each_node_an_engine_and_share_a_registry() -> None:
    require_root()
    require(
        Path("/usr/bin/docker-registry").exists(), "docker-registry is not installed (apt: docker-registry)"
    )

    def ssh(address: str, command: str) -> str:
        done = subprocess.run(
            [
                *("ip", "netns", "exec", "adr-ctl", "ssh", "-i", str(REHEARSAL / "ssh" / "id_ed25519")),
                *("-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={REHEARSAL / 'ssh' / 'known_hosts'}"),
                f"root@{address}",
                command,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    try:
        up = subprocess.run([str(SCRIPT), "up", "--docker"], capture_output=True, text=True, timeout=120)
        assert up.returncode == 0, up.stderr
        assert "registry: 10.201.0.1:5000" in up.stdout
        ids = {
            ssh(address, "docker info --format {{.ID}}").strip() for address in ("10.201.0.1", "10.201.0.2")
        }
        assert len(ids) == 2
        probe = "docker info --format '{{json .RegistryConfig.IndexConfigs}}'; curl -sf http://10.201.0.1:5000/v2/"
        assert "10.201.0.1:5000" in ssh("10.201.0.2", probe)
    finally:
        down = subprocess.run([str(SCRIPT), "down"], capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr
    assert "adr-" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert str(REHEARSAL / "docker") not in Path("/proc/self/mountinfo").read_text()
    left = subprocess.run(["pgrep", "-f", f"{REHEARSAL}/(docker|registry)/"], capture_output=True, text=True)
    assert left.stdout == ""
