"""The infra stage against real etcd and nats-server: native processes, containers, namespaces."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from automation.config import load_pipeline
from automation.console import Console
from automation.pipeline import Runner, Selection
from automation.stages.infra import Infra, healthy, services
from automation.state import load_state
from tests.conftest import REPO
from tests.services import (
    NamespaceCluster,
    SSHKeys,
    free_port,
    http_ok,
)


def _pipeline(
    tmp_path: Path,
    *,
    runtime: str = "native",
    nodes: list[dict] | None = None,
    ssh: dict | None = None,
    name: str = "infra-test",
) -> Path:
    ports = {
        "etcd_port": free_port(),
        "etcd_peer_port": free_port(),
        "nats_port": free_port(),
        "nats_monitor_port": free_port(),
    }
    data = {
        "name": name,
        "model": {"hf_id": "Qwen/Qwen3-8B"},
        "system": "h200_sxm",
        "workload": {"isl": 100, "osl": 10},
        "sla": {"ttft_ms": 500, "tpot_ms": 20},
        "cluster": {
            "nodes": nodes or [{"host": "127.0.0.1", "gpus": 8}],
            "work_dir": str(tmp_path / "nodes"),
            **({"ssh": ssh} if ssh else {}),
        },
        "infra": {"runtime": runtime, "ready_timeout_s": 20, **ports},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _runner(path: Path) -> tuple[Runner, io.StringIO]:
    out = io.StringIO()
    runner = Runner(
        load_pipeline(path),
        path,
        run_dir=path.parent / "run",
        console=Console(out, plain=True),
        stages=[Infra],
    )
    return runner, out


def _processes(pattern: str) -> list[str]:
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()


@pytest.fixture
def native_pipeline(tmp_path: Path) -> Iterator[Path]:
    path = _pipeline(tmp_path)
    yield path
    _runner(path)[0].down()


def test_native_infra_starts_healthy_skips_then_stops(native_pipeline: Path) -> None:
    runner, out = _runner(native_pipeline)
    assert runner.run(Selection()) == 0, out.getvalue()
    config = runner.config
    for service in services(config):
        assert healthy(service)
    assert http_ok(f"http://127.0.0.1:{config.infra.nats_monitor_port}/jsz")  # JetStream is on
    outputs = load_state(runner.state_path).stages["infra"].outputs  # type: ignore[union-attr]
    assert outputs["etcd_endpoint"] == f"http://127.0.0.1:{config.infra.etcd_port}"
    assert outputs["nats_server"] == f"nats://127.0.0.1:{config.infra.nats_port}"

    runner, out = _runner(native_pipeline)
    assert runner.run(Selection()) == 0
    assert "↷ infra       skipped: etcd and NATS healthy" in out.getvalue()

    runner, out = _runner(native_pipeline)
    assert runner.down() == 0
    assert "stopped: nats and etcd on node0" in out.getvalue()
    assert not any(healthy(s) for s in services(config))
    assert _processes(f"--listen-client-urls=http://127.0.0.1:{config.infra.etcd_port}") == []
    runner, out = _runner(native_pipeline)
    assert runner.down() == 0 and "nothing of this run is running" in out.getvalue()


def test_a_lost_record_finds_and_reuses_this_runs_processes(native_pipeline: Path) -> None:
    runner, _ = _runner(native_pipeline)
    assert runner.run(Selection()) == 0
    first = load_state(runner.state_path).stages["infra"].outputs["handles"]  # type: ignore[union-attr]
    runner.state_path.unlink()  # as if the runner died after starting them, before recording
    runner, out = _runner(native_pipeline)
    assert runner.run(Selection()) == 0
    assert "(reused etcd, nats)" in out.getvalue()
    again = load_state(runner.state_path).stages["infra"].outputs["handles"]  # type: ignore[union-attr]
    assert again == first


def test_a_dead_etcd_is_noticed_and_restarted_fresh(native_pipeline: Path) -> None:
    runner, _ = _runner(native_pipeline)
    runner.run(Selection())
    pid = load_state(runner.state_path).stages["infra"].outputs["handles"]["etcd"]["pid"]  # type: ignore[union-attr]
    subprocess.run(["kill", "-9", str(pid)], check=True)
    runner, out = _runner(native_pipeline)
    assert runner.run(Selection()) == 0
    assert "✓ infra" in out.getvalue()
    assert all(healthy(s) for s in services(runner.config))


def test_port_taken_by_another_process_is_named_and_nothing_is_left(tmp_path: Path) -> None:
    path = _pipeline(tmp_path)
    config = load_pipeline(path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", config.infra.nats_port))
        squatter.listen()
        runner, out = _runner(path)
        assert runner.run(Selection()) == 1
    text = out.getvalue()
    assert re.search(
        rf"port {config.infra.nats_port} on node0 is already taken by \S+ \(pid {os.getpid()}\)", text
    )
    assert "infra.nats_port" in text
    assert not healthy(services(config)[0])  # etcd, started first, was stopped again
    assert _processes(f"--listen-client-urls=http://127.0.0.1:{config.infra.etcd_port}") == []


def test_a_binary_that_fails_reports_its_output(tmp_path: Path) -> None:
    path = _pipeline(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["infra"]["etcd_binary"] = "/bin/false"
    data["infra"]["ready_timeout_s"] = 2
    path.write_text(yaml.safe_dump(data))
    runner, out = _runner(path)
    assert runner.run(Selection()) == 1
    assert "etcd did not become healthy" in out.getvalue()


# ------------------------------------------------------------------------------- separate hosts


def test_infra_on_a_remote_head_over_ssh(netns: NamespaceCluster, ssh_keys: SSHKeys, tmp_path: Path) -> None:
    """autodeploy in the controller namespace; etcd and NATS start on node 0 (another namespace) over SSH."""
    nodes = [{"host": a, "gpus": 8} for a in netns.addresses]
    ssh = {
        "user": "root",
        "key_file": str(ssh_keys.client_key),
        "host_keys": "accept_new",
        "known_hosts": str(tmp_path / "known_hosts"),
    }
    path = _pipeline(tmp_path, nodes=nodes, ssh=ssh)
    data = yaml.safe_load(path.read_text())
    data["infra"].update(etcd_port=2379, etcd_peer_port=2380, nats_port=4222, nats_monitor_port=8222)
    path.write_text(yaml.safe_dump(data))
    command = [*netns.exec_prefix(), sys.executable, "-m", "automation"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*command, *args], cwd=REPO, capture_output=True, text=True, timeout=120)

    started = cli("run", str(path), "--only", "infra", "--run-dir", str(tmp_path / "run"))
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        probe = [*netns.exec_prefix(), "curl", "-sf", "http://10.200.0.1:2379/health"]
        assert '"health":"true"' in subprocess.run(probe, capture_output=True, text=True).stdout
        inside_n0 = subprocess.run(
            ["ip", "netns", "pids", netns.nodes[0]], capture_output=True, text=True
        ).stdout
        assert len(inside_n0.split()) >= 3  # sshd, etcd, nats-server live in node 0's namespace
    finally:
        stopped = cli("down", str(path), "--run-dir", str(tmp_path / "run"))
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    probe = [*netns.exec_prefix(), "curl", "-s", "-m", "2", "http://10.200.0.1:2379/health"]
    assert subprocess.run(probe, capture_output=True).returncode != 0


def test_unreachable_head_is_a_clear_error(
    netns: NamespaceCluster, ssh_keys: SSHKeys, tmp_path: Path
) -> None:
    nodes = [{"host": "10.200.0.1", "gpus": 8, "ssh_port": 2222}]  # nothing listens there
    ssh = {
        "user": "root",
        "key_file": str(ssh_keys.client_key),
        "host_keys": "accept_new",
        "known_hosts": str(tmp_path / "kh"),
        "connect_timeout_s": 3,
    }
    path = _pipeline(tmp_path, nodes=nodes, ssh=ssh)
    done = subprocess.run(
        [
            *netns.exec_prefix(),
            sys.executable,
            "-m",
            "automation",
            "run",
            str(path),
            "--only",
            "infra",
            "--run-dir",
            str(tmp_path / "run"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "cannot reach node0 over SSH (root@10.200.0.1:2222): Connection refused" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


# ----------------------------------------------------------------------------------- containers


def test_docker_infra_runs_named_containers(dockerd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine, (etcd_image, nats_image) = dockerd
    monkeypatch.setenv("DOCKER_HOST", engine.url)
    path = _pipeline(tmp_path, runtime="docker", name="dockerinfra")
    data = yaml.safe_load(path.read_text())
    data["infra"].update(etcd_image=etcd_image, nats_image=nats_image)
    path.write_text(yaml.safe_dump(data))
    runner, out = _runner(path)
    try:
        assert runner.run(Selection()) == 0, out.getvalue()
        names = engine.docker("ps", "--format", "{{.Names}}").split()
        assert sorted(names) == ["autodeploy-dockerinfra-etcd", "autodeploy-dockerinfra-nats"]
        assert all(healthy(s) for s in services(runner.config))
        runner, out = _runner(path)
        assert runner.run(Selection()) == 0 and "↷ infra" in out.getvalue()
    finally:
        runner, out = _runner(path)
        runner.down()
    assert engine.docker("ps", "-aq") == ""
    assert not any(healthy(s) for s in services(runner.config))


def test_docker_infra_with_a_missing_image_says_which_field(dockerd, tmp_path: Path, monkeypatch) -> None:
    engine, _ = dockerd
    monkeypatch.setenv("DOCKER_HOST", engine.url)
    path = _pipeline(tmp_path, runtime="docker", name="noimage")
    data = yaml.safe_load(path.read_text())
    data["infra"].update(etcd_image="nowhere.invalid/etcd:0")
    path.write_text(yaml.safe_dump(data))
    runner, out = _runner(path)
    assert runner.run(Selection()) == 1
    assert "image nowhere.invalid/etcd:0 is not on node0 and could not be pulled" in out.getvalue()
    assert "infra.etcd_image" in out.getvalue()
