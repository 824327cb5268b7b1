"""A node's Docker engine reached through its SSH settings (port, key, known_hosts), never around them."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from automation.docker_engine import DockerEngine
from automation.pipeline import Runner, Selection
from automation.remote import SSHHost
from automation.stages.infra import Infra
from automation.state import load_state
from tests.harness.runner import quiet_runner
from tests.services import Dockerd, Sshd, SSHKeys, free_port, require_root, wait_for


@pytest.fixture(scope="module")
def docker_node(ssh_keys: SSHKeys, dockerd: tuple[Dockerd, tuple[str, str]]) -> Iterator[Sshd]:
    """sshd on a random port whose sessions reach the tests' dockerd (as a node's own engine would be):
    nothing in ~/.ssh/config or the default keys knows this node."""
    require_root()
    engine, _ = dockerd
    address, port = "127.0.0.1", free_port()
    config = ssh_keys.directory / f"sshd_docker_{port}.conf"
    config.write_text(
        f"ListenAddress {address}\nPort {port}\nHostKey {ssh_keys.host_key}\nPidFile none\n"
        "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
        f"KbdInteractiveAuthentication no\nAuthorizedKeysFile {ssh_keys.authorized_keys}\n"
        f"StrictModes no\nUsePAM no\nMaxStartups 50\nMaxSessions 50\nSetEnv DOCKER_HOST={engine.url}\n"
    )
    log = ssh_keys.directory / f"sshd_docker_{port}.log"
    process = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    sshd = Sshd(address, port, process, log)

    def listening() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"sshd exited: {log.read_text()}")
        check = ["bash", "-c", f"exec 3<>/dev/tcp/{address}/{port}"]
        return subprocess.run(check, capture_output=True).returncode == 0

    wait_for(listening, what=f"sshd on {address}:{port}")
    yield sshd
    sshd.stop()


@pytest.fixture
def node_known_hosts(ssh_keys: SSHKeys, docker_node: Sshd, tmp_path: Path) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text(ssh_keys.known_hosts_line(docker_node.address, docker_node.port))
    return path


def test_docker_engine_over_ssh_uses_the_port_and_key_of_the_node(
    docker_node: Sshd,
    ssh_keys: SSHKeys,
    node_known_hosts: Path,
    dockerd: tuple[Dockerd, tuple[str, str]],
) -> None:
    engine, (etcd_image, _) = dockerd
    host = SSHHost(
        "node1",
        docker_node.address,
        port=docker_node.port,
        user="root",
        key_file=ssh_keys.client_key,
        known_hosts=node_known_hosts,
    )
    docker = DockerEngine(host)
    try:
        assert docker.image_present(etcd_image)
        assert not docker.image_present("nowhere.invalid/absent:0")
        assert (
            docker.image_id(etcd_image)
            == engine.docker("image", "inspect", "--format", "{{.Id}}", etcd_image).strip()
        )
        started = docker.run(
            "autodeploy-remote-probe",
            etcd_image,
            ["-c", "echo ready; exec sleep 300"],
            entrypoint=["sh"],
            environment={"PROBE": "yes"},
            labels={"autodeploy.run": "probe-000000"},
        )
        assert started.running and started.labels["autodeploy.run"] == "probe-000000"
        assert engine.docker("ps", "--format", "{{.Names}}").split() == ["autodeploy-remote-probe"]
        found = docker.find("autodeploy-remote-probe")
        assert found is not None and found.id == started.id and found.pid > 0
        wait_for(lambda: "ready" in docker.logs("autodeploy-remote-probe"), what="the probe's output")
        assert docker.remove("autodeploy-remote-probe", grace_s=1)
        assert docker.find("autodeploy-remote-probe") is None
        assert not docker.remove("autodeploy-remote-probe")
    finally:
        host.close()
        subprocess.run(
            ["docker", "-H", engine.url, "rm", "-f", "autodeploy-remote-probe"], capture_output=True
        )


def test_docker_infra_on_an_ssh_node_with_its_own_port_and_key(
    docker_node: Sshd,
    ssh_keys: SSHKeys,
    node_known_hosts: Path,
    dockerd: tuple[Dockerd, tuple[str, str]],
    tmp_path: Path,
) -> None:
    engine, (etcd_image, nats_image) = dockerd
    ports = {k: free_port() for k in ("etcd_port", "etcd_peer_port", "nats_port", "nats_monitor_port")}
    data = {
        "name": "sshdocker",
        "model": {"hf_id": "Qwen/Qwen3-8B"},
        "system": "h200_sxm",
        "workload": {"isl": 100, "osl": 10},
        "sla": {"ttft_ms": 500, "tpot_ms": 20},
        "cluster": {
            "nodes": [{"host": "127.0.0.1", "gpus": 8, "connect": "ssh", "ssh_port": docker_node.port}],
            "work_dir": str(tmp_path / "nodes"),
            "ssh": {
                "user": "root",
                "key_file": str(ssh_keys.client_key),
                "known_hosts": str(node_known_hosts),
            },
        },
        "infra": {
            "runtime": "docker",
            "ready_timeout_s": 20,
            "etcd_image": etcd_image,
            "nats_image": nats_image,
            **ports,
        },
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))

    def runner() -> tuple[Runner, io.StringIO]:
        return quiet_runner(path, [Infra], tmp_path / "run")

    first, out = runner()
    try:
        assert first.run(Selection()) == 0, out.getvalue()
        uid = first.run_uid
        names = engine.docker("ps", "--format", "{{.Names}}").split()
        assert sorted(names) == [f"autodeploy-{uid}-etcd", f"autodeploy-{uid}-nats"]
        handles = load_state(first.state_path).stages["infra"].outputs["handles"]  # type: ignore[union-attr]
        assert handles["etcd"]["container"] == f"autodeploy-{uid}-etcd"
        again, out = runner()
        assert again.run(Selection()) == 0 and "↷ infra" in out.getvalue()
    finally:
        down, out = runner()
        assert down.down() == 0, out.getvalue()
    assert engine.docker("ps", "-aq") == ""
