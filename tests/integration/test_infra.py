"""The infra stage against real etcd and nats-server: native processes, containers, namespaces."""

from __future__ import annotations

import base64
import io
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from automation.config import PipelineConfig, load_pipeline
from automation.pipeline import Runner, Selection
from automation.stages.infra import Infra, Service, healthy, services
from automation.state import Status, load_state, save_state
from tests.conftest import REPO
from tests.harness.runner import quiet_runner
from tests.services import (
    NamespaceCluster,
    Sshd,
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
    work_dir: str | None = None,
    images: tuple[str, str] | None = None,
) -> Path:
    """A pipeline of infra's settings; `images`: the etcd and NATS images of runtime docker."""
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
            "work_dir": work_dir or str(tmp_path / "nodes"),
            **({"ssh": ssh} if ssh else {}),
        },
        "infra": {"runtime": runtime, "ready_timeout_s": 20, **ports},
    }
    if images:
        data["infra"].update(etcd_image=images[0], nats_image=images[1])
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _runner(path: Path, run_dir: str = "run") -> tuple[Runner, io.StringIO]:
    return quiet_runner(path, [Infra], path.parent / run_dir)


def _services(config: PipelineConfig) -> list[Service]:
    """For their health URLs, which depend on neither the run id nor the directory."""
    return services(config, "unused", "/unused")


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
    for service in _services(config):
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
    assert not any(healthy(s) for s in _services(config))
    assert _processes(f"--listen-client-urls=http://127.0.0.1:{config.infra.etcd_port}") == []
    runner, out = _runner(native_pipeline)
    assert runner.down() == 0 and "nothing of this run is running" in out.getvalue()


def test_a_lost_record_finds_and_reuses_this_runs_processes(native_pipeline: Path) -> None:
    runner, _ = _runner(native_pipeline)
    assert runner.run(Selection()) == 0
    state = load_state(runner.state_path)
    assert state is not None
    first = state.stages["infra"].outputs["handles"]
    # As if the runner died after starting them, before recording them.
    state.stages["infra"].status, state.stages["infra"].outputs = Status.RUNNING, {}
    save_state(runner.state_path, state)
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
    assert all(healthy(s) for s in _services(runner.config))


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
    assert not healthy(_services(config)[0])  # etcd, started first, was stopped again
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
    engine, images = dockerd
    monkeypatch.setenv("DOCKER_HOST", engine.url)
    path = _pipeline(tmp_path, runtime="docker", name="dockerinfra", images=images)
    runner, out = _runner(path)
    try:
        assert runner.run(Selection()) == 0, out.getvalue()
        names = engine.docker("ps", "--format", "{{.Names}}").split()
        uid = runner.run_uid
        assert sorted(names) == [f"autodeploy-{uid}-etcd", f"autodeploy-{uid}-nats"]
        labels = engine.docker("ps", "--format", '{{.Label "autodeploy.run"}}').split()
        assert labels == [uid, uid]
        assert all(healthy(s) for s in _services(runner.config))
        runner, out = _runner(path)
        assert runner.run(Selection()) == 0 and "↷ infra" in out.getvalue()
    finally:
        runner, out = _runner(path)
        runner.down()
    assert engine.docker("ps", "-aq") == ""
    assert not any(healthy(s) for s in _services(runner.config))


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


# ------------------------------------------------------------------ remote state, one run at a time


def _etcd(port: int, call: str, key: str, value: str | None = None) -> dict:
    """etcd's v3 JSON gateway: put or range one key."""
    body = {"key": base64.b64encode(key.encode()).decode()}
    if value is not None:
        body["value"] = base64.b64encode(value.encode()).decode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v3/kv/{call}", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read().decode())


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def _handles(runner: Runner) -> dict:
    return load_state(runner.state_path).stages["infra"].outputs["handles"]  # type: ignore[union-attr]


def test_a_tilde_work_dir_is_the_node_users_home_everywhere(
    loopback_sshd: Sshd, ssh_keys: SSHKeys, known_hosts: Path, tmp_path: Path
) -> None:
    """etcd's data dir, its fresh-start wipe and teardown all name one directory under the real home."""
    home = Path(pwd.getpwnam("root").pw_dir)  # the sshd logs in as root
    top = f"autodeploy-it-{uuid.uuid4().hex[:8]}"
    node = {"host": "127.0.0.1", "gpus": 8, "connect": "ssh", "ssh_port": loopback_sshd.port}
    ssh = {"user": "root", "key_file": str(ssh_keys.client_key), "known_hosts": str(known_hosts)}
    path = _pipeline(tmp_path, nodes=[node], ssh=ssh, work_dir=f"~/{top}/work")
    port = load_pipeline(path).infra.etcd_port
    runner, out = _runner(path)
    try:
        assert runner.run(Selection()) == 0, out.getvalue()
        data = home / top / "work" / runner.run_uid / "infra" / "etcd-data"
        pid = _handles(runner)["etcd"]["pid"]
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        assert f"--data-dir={data}" in argv
        assert data.is_dir()
        assert [str(p) for p in (home / top).rglob("~")] == []

        _etcd(port, "put", "autodeploy-test/old-lease", "worker-1")
        assert _etcd(port, "range", "autodeploy-test/old-lease").get("kvs")
        runner, out = _runner(path)
        assert runner.run(Selection(force=True)) == 0, out.getvalue()
        assert _handles(runner)["etcd"]["pid"] != pid  # a forced re-run starts afresh
        assert not _etcd(port, "range", "autodeploy-test/old-lease").get("kvs")

        runner, out = _runner(path)
        assert runner.down() == 0, out.getvalue()
        assert not data.exists()
        assert [str(p) for p in (home / top).rglob("~")] == []
    finally:
        _runner(path)[0].down()
        shutil.rmtree(home / top, ignore_errors=True)


def test_a_second_run_directory_refuses_the_ports_of_a_live_run(tmp_path: Path) -> None:
    """Two run directories of one pipeline: the second names the first's etcd and leaves it alone."""
    path = _pipeline(tmp_path)
    config = load_pipeline(path)
    first, out = _runner(path, "run-a")
    second, second_out = _runner(path, "run-b")
    try:
        assert first.run(Selection()) == 0, out.getvalue()
        before = _handles(first)
        assert second.run(Selection()) == 1
        text = second_out.getvalue()
        assert (
            f"port {config.infra.etcd_port} on node0 is held by etcd of autodeploy run "
            f"'{first.run_uid}' (pid {before['etcd']['pid']})"
        ) in text, text
        assert "autodeploy down" in text and "infra.etcd_port" in text
        first_dir = tmp_path / "nodes" / first.run_uid / "infra"
        assert (first_dir / "etcd-data").is_dir() and (first_dir / "nats-data").is_dir()
        assert not (tmp_path / "nodes" / second.run_uid / "infra" / "etcd.pid").exists()
        first, out = _runner(path, "run-a")
        assert first.run(Selection()) == 0
        assert "↷ infra       skipped: etcd and NATS healthy" in out.getvalue()
        assert _handles(first) == before
    finally:
        second.down()
        first.down()


def test_teardown_stops_every_service_when_one_of_them_fails(native_pipeline: Path) -> None:
    """NATS's data directory cannot be removed (a mount point): etcd is still stopped and cleaned."""
    config = load_pipeline(native_pipeline)
    runner, out = _runner(native_pipeline)
    assert runner.run(Selection()) == 0, out.getvalue()
    infra = native_pipeline.parent / "nodes" / runner.run_uid / "infra"
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(infra / "nats-data")], check=True)
    try:
        runner, out = _runner(native_pipeline)
        assert runner.down() == 1
        text = out.getvalue()
        assert "could not stop: nats on node0: its data directory could not be removed" in text, text
        assert "etcd" not in text.split("could not stop:", 1)[1].splitlines()[0]
        assert not _answers(f"http://127.0.0.1:{config.infra.etcd_port}/health")
        assert not _answers(f"http://127.0.0.1:{config.infra.nats_monitor_port}/healthz")
        assert not (infra / "etcd-data").exists()
    finally:
        subprocess.run(["umount", str(infra / "nats-data")], check=True)
    runner, out = _runner(native_pipeline)
    assert runner.down() == 0, out.getvalue()
    assert not (infra / "nats-data").exists()


def test_docker_second_run_directory_refuses_and_keeps_the_first_runs_containers(
    dockerd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, images = dockerd
    monkeypatch.setenv("DOCKER_HOST", engine.url)
    path = _pipeline(tmp_path, runtime="docker", name="twodirs", images=images)
    config = load_pipeline(path)
    first, out = _runner(path, "run-a")
    second, second_out = _runner(path, "run-b")
    try:
        assert first.run(Selection()) == 0, out.getvalue()
        ids = engine.docker("ps", "-q", "--no-trunc").split()
        assert second.run(Selection()) == 1
        text = second_out.getvalue()
        assert (
            f"port {config.infra.etcd_port} on node0 is held by etcd of autodeploy run '{first.run_uid}'"
            in text
        ), text
        assert sorted(engine.docker("ps", "-q", "--no-trunc").split()) == sorted(ids)
        labels = engine.docker("ps", "--format", '{{.Label "autodeploy.run"}}').split()
        assert labels == [first.run_uid, first.run_uid]
        assert _answers(f"http://127.0.0.1:{config.infra.etcd_port}/health")
    finally:
        second.down()
        first.down()
    assert engine.docker("ps", "-aq") == ""


def test_docker_teardown_tries_both_services_and_names_each_failure(
    dockerd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, images = dockerd
    monkeypatch.setenv("DOCKER_HOST", engine.url)
    path = _pipeline(tmp_path, runtime="docker", name="downfails", images=images)
    runner, out = _runner(path)
    try:
        assert runner.run(Selection()) == 0, out.getvalue()
        monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
        runner, out = _runner(path)
        assert runner.down() == 1
        text = out.getvalue()
        assert "could not stop: nats and etcd on node0: nats: cannot talk to the Docker engine" in text, text
        assert "; etcd: cannot talk to the Docker engine on node0" in text
    finally:
        monkeypatch.setenv("DOCKER_HOST", engine.url)
        runner, out = _runner(path)
        assert runner.down() == 0, out.getvalue()
    assert engine.docker("ps", "-aq") == ""


def test_docker_infra_without_an_engine_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    runner, out = _runner(_pipeline(tmp_path, runtime="docker", name="noengine"))
    assert runner.run(Selection()) == 1
    text = out.getvalue()
    assert "cannot talk to the Docker engine on node0: Cannot connect to the Docker daemon" in text, text
    assert "infra.runtime: native" in text
