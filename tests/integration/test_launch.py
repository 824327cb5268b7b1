"""Launch against the real Dynamo frontend and mocker, etcd, NATS and sshd: loopback and two namespace nodes."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from automation.config import load_pipeline
from automation.console import Console
from automation.pipeline import Runner, Selection
from automation.stages.launch import probe_frontend
from automation.state import load_state
from tests.conftest import REPO
from tests.harness.runner import quiet_runner
from tests.integration.conftest import DYNAMO_PYTHON
from tests.services import NamespaceCluster, SSHKeys, free_port


def _pipeline(
    tmp_path: Path,
    model: Path,
    *,
    nodes: list[dict] | None = None,
    modes: list[str] | None = None,
    total_gpus: int = 1,
    ssh: dict | None = None,
    name: str = "launch-test",
    **extra: object,
) -> Path:
    data = {
        "name": name,
        "model": {"hf_id": "Qwen/Qwen3-8B", "path": str(model)},
        "system": "h200_sxm",
        "workload": {"isl": 200, "osl": 20},
        "sla": {"ttft_ms": 2000, "tpot_ms": 50},
        "search": {"total_gpus": total_gpus, "modes": modes or ["agg"]},
        "dynamo": {"version": "1.6.1", "frontend_port": free_port()},
        "backend": {"version": "1.3.0rc23"},
        "cluster": {
            "nodes": nodes or [{"host": "127.0.0.1", "gpus": total_gpus}],
            "work_dir": str(tmp_path / "nodes"),
            **({"ssh": ssh} if ssh else {}),
        },
        "checkpoint": {"source": "present"},
        "infra": {
            "runtime": "native",
            "etcd_port": free_port(),
            "etcd_peer_port": free_port(),
            "nats_port": free_port(),
            "nats_monitor_port": free_port(),
        },
        "launch": {
            "runtime": "host",
            "engine": "mocker",
            "python": str(DYNAMO_PYTHON),
            "ready_timeout_s": 90,
            "system_port_base": free_port(),  # below 32768: Dynamo reads it as int16,
        },
        **extra,
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _runner(path: Path) -> tuple[Runner, io.StringIO]:
    return quiet_runner(path)


def _run_processes(path: Path) -> list[str]:
    """Processes whose command line mentions this run's node directory (workers, frontend, scripts)."""
    marker = str(path.parent / "nodes")
    listing = subprocess.run(
        ["ps", "-ww", "-eo", "stat=,args="], capture_output=True, text=True
    ).stdout.splitlines()
    return [line for line in listing if marker in line and not line.lstrip().startswith("Z")]


def _node_file(tmp_path: Path, name: str, relative: str) -> Path:
    """A file of the run's directory on the (local) nodes: <work_dir>/<run id>/..., the run id being
    <name>-<6 hex digits>; the run directory must be the only one of that name here."""
    found = sorted((tmp_path / "nodes").glob(f"{name}-??????/{relative}"))
    return found[0] if found else tmp_path / "nodes" / f"{name}-(not started)" / relative


def _chat(url: str, model: str) -> dict:
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "w5 w6 w7"}], "max_tokens": 4}
    ).encode()
    request = urllib.request.Request(
        f"{url}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _etcd_keys(endpoint: str) -> int:
    import base64

    body = json.dumps(
        {
            "key": base64.b64encode(b"\0").decode(),
            "range_end": base64.b64encode(b"\0").decode(),
            "count_only": True,
        }
    ).encode()
    request = urllib.request.Request(f"{endpoint}/v3/kv/range", data=body)
    with urllib.request.urlopen(request, timeout=5) as response:
        return int(json.loads(response.read()).get("count", 0))


def test_single_node_agg_serves_skips_and_comes_down(tmp_path: Path, tiny_model: Path) -> None:
    path = _pipeline(tmp_path, tiny_model)
    runner, out = _runner(path)
    try:
        assert runner.run(Selection(to_stage="launch")) == 0, out.getvalue()
        outputs = load_state(runner.state_path).stages["launch"].outputs  # type: ignore[union-attr]
        frontend = outputs["frontend"]
        readiness = probe_frontend(frontend, "Qwen/Qwen3-8B")
        assert readiness.count("backend") == 1 and readiness.model_listed
        assert _chat(frontend, "Qwen/Qwen3-8B")["usage"]["completion_tokens"] == 4
        assert (tmp_path / "run" / "logs" / "launch.node0.log").read_text().count("[agg 0]") > 0

        runner, out = _runner(path)
        assert runner.run(Selection(to_stage="launch")) == 0
        assert "↷ launch      skipped: 1 workers serving at" in out.getvalue()
    finally:
        runner, out = _runner(path)
        runner.down()
    assert "stopped: workers on node0" in out.getvalue()
    assert _run_processes(path) == []
    assert probe_frontend(frontend, "Qwen/Qwen3-8B").model_listed is False


def test_a_worker_that_crashes_at_start_is_named_and_everything_stops(
    tmp_path: Path, tiny_model: Path
) -> None:
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    (broken / "config.json").write_text("{ this is not json")  # every Dynamo process reading it fails
    path = _pipeline(tmp_path, broken)
    runner, out = _runner(path)
    try:
        assert runner.run(Selection(to_stage="launch")) == 1
        text = out.getvalue()
        assert "✗ launch" in text and "exited before every worker registered" in text
        assert "Failed to parse JSON from file" in text  # the worker's own error, from its log tail
        assert "logs/launch.node0.log" in text
        error = load_state(runner.state_path).stages["launch"].error  # type: ignore[union-attr]
        assert error is not None and error["host"] == "node0" and error["tail"]
        assert [p for p in _run_processes(path) if "/infra/" not in p] == []  # etcd and NATS stay up
        assert (tmp_path / "run" / "logs" / "launch.node0.log").read_text()
    finally:
        _runner(path)[0].down()
    assert _run_processes(path) == []


def test_resume_after_the_runner_is_killed_during_launch_starts_no_duplicates(
    tmp_path: Path, tiny_model: Path
) -> None:
    path = _pipeline(tmp_path, tiny_model)
    run_dir = str(tmp_path / "run")
    command = [sys.executable, "-m", "automation", "run", str(path), "--to", "launch", "--run-dir", run_dir]
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pid_file = _node_file(tmp_path, "launch-test", "generated/node_0.pid")
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
            pid_file = _node_file(tmp_path, "launch-test", "generated/node_0.pid")
        assert pid_file.exists(), child.stdout.read() if child.stdout else ""
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        assert load_state(tmp_path / "run" / "state.json").stages["launch"].status.value == "running"  # type: ignore[union-attr]
        first = pid_file.read_text()

        resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "reused on nodes [0]" in resumed.stdout
        assert pid_file.read_text() == first
        mockers = [line for line in _run_processes(path) if "dynamo.mocker" in line and "bash" not in line]
        assert len(mockers) == 1, mockers
    finally:
        stop = subprocess.run(
            [sys.executable, "-m", "automation", "down", str(path), "--run-dir", run_dir],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert _run_processes(path) == []


# ------------------------------------------------------------------------------ two hosts over SSH


def _namespace_pipeline(
    tmp_path: Path, model: Path, netns: NamespaceCluster, keys: SSHKeys, **extra: object
) -> Path:
    nodes = [{"host": address, "gpus": 1} for address in netns.addresses]
    ssh = {
        "user": "root",
        "key_file": str(keys.client_key),
        "host_keys": "accept_new",
        "known_hosts": str(tmp_path / "known_hosts"),
        "connect_timeout_s": 5,
    }
    path = _pipeline(
        tmp_path, model, nodes=nodes, modes=["disagg"], total_gpus=2, ssh=ssh, name="twonode", **extra
    )
    data = yaml.safe_load(path.read_text())
    data["dynamo"]["frontend_port"] = 8000
    data["infra"].update(etcd_port=2379, etcd_peer_port=2380, nats_port=4222, nats_monitor_port=8222)
    data["launch"]["system_port_base"] = 9100
    path.write_text(yaml.safe_dump(data))
    return path


def _in_controller(
    netns: NamespaceCluster, *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*netns.exec_prefix(), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def _namespace_processes(netns: NamespaceCluster, index: int) -> list[str]:
    pids = subprocess.run(
        ["ip", "netns", "pids", netns.nodes[index]], capture_output=True, text=True
    ).stdout.split()
    names = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(") ", 1)[1].split()[0] != "Z":
            names.append(Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip())
    return [name for name in names if "sshd" not in name]


def test_two_node_disagg_prefill_on_node0_decode_on_node1(
    netns: NamespaceCluster, ssh_keys: SSHKeys, tmp_path: Path, tiny_model: Path
) -> None:
    path = _namespace_pipeline(tmp_path, tiny_model, netns, ssh_keys)
    run_dir = str(tmp_path / "run")
    started = time.monotonic()
    done = _in_controller(
        netns, sys.executable, "-m", "automation", "run", str(path), "--to", "launch", "--run-dir", run_dir
    )
    elapsed = time.monotonic() - started
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        placement = json.loads((tmp_path / "run" / "generated" / "placement.json").read_text())
        roles = {w["role"]: w["node"] for w in placement["workers"]}
        assert roles == {"prefill": 0, "decode": 1}
        health = _in_controller(netns, "curl", "-sf", "http://10.200.0.1:8000/health")
        instances = {(i["component"], i["endpoint"]) for i in json.loads(health.stdout)["instances"]}
        assert {("prefill", "generate"), ("backend", "generate")} <= instances
        body = json.dumps(
            {"model": "Qwen/Qwen3-8B", "messages": [{"role": "user", "content": "w9 w8"}], "max_tokens": 3}
        )
        chat = _in_controller(
            netns,
            "curl",
            "-sf",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            "http://10.200.0.1:8000/v1/chat/completions",
        )
        assert json.loads(chat.stdout)["usage"]["completion_tokens"] == 3
        assert any("dynamo.mocker" in p for p in _namespace_processes(netns, 1))  # decode lives in node 1
        print(f"two-node disagg: configure..launch ready in {elapsed:.1f}s")

        # down while node 1 cannot be reached: every other teardown still runs, and it says what is left.
        data = yaml.safe_load(path.read_text())
        data["cluster"]["nodes"][1]["ssh_port"] = 2222
        path.write_text(yaml.safe_dump(data))
        broken = _in_controller(
            netns, sys.executable, "-m", "automation", "down", str(path), "--run-dir", run_dir
        )
        assert broken.returncode == 1, broken.stdout + broken.stderr
        assert "could not stop the workers on node1 (cannot reach node1 over SSH" in broken.stdout
        assert "stopped: nats and etcd on node0" in broken.stdout  # infra's teardown still ran
        assert not any("dynamo" in p for p in _namespace_processes(netns, 0))
        assert any("dynamo.mocker" in p for p in _namespace_processes(netns, 1))  # what is left, as said
        data["cluster"]["nodes"][1].pop("ssh_port")
        path.write_text(yaml.safe_dump(data))
    finally:
        down = _in_controller(
            netns, sys.executable, "-m", "automation", "down", str(path), "--run-dir", run_dir
        )
    assert down.returncode == 0, down.stdout + down.stderr
    assert _namespace_processes(netns, 0) == [] and _namespace_processes(netns, 1) == []


def test_a_node_whose_sshd_is_down_fails_clearly_and_leaves_nothing(
    netns: NamespaceCluster, ssh_keys: SSHKeys, tmp_path: Path, tiny_model: Path
) -> None:
    path = _namespace_pipeline(tmp_path, tiny_model, netns, ssh_keys)
    run_dir = str(tmp_path / "run")
    assert (
        _in_controller(
            netns, sys.executable, "-m", "automation", "run", str(path), "--to", "infra", "--run-dir", run_dir
        ).returncode
        == 0
    )
    data = yaml.safe_load(path.read_text())
    data["cluster"]["nodes"][1]["ssh_port"] = 2222  # node 1 stops answering SSH
    path.write_text(yaml.safe_dump(data))
    try:
        failed = _in_controller(
            netns,
            sys.executable,
            "-m",
            "automation",
            "run",
            str(path),
            "--only",
            "launch",
            "--run-dir",
            run_dir,
        )
        assert failed.returncode == 1
        assert "cannot reach node1 over SSH (root@10.200.0.2:2222): Connection refused" in failed.stdout
        assert not any("dynamo" in p for p in _namespace_processes(netns, 0))  # node 0's script was stopped
    finally:
        data["cluster"]["nodes"][1].pop("ssh_port")
        path.write_text(yaml.safe_dump(data))
        _in_controller(netns, sys.executable, "-m", "automation", "down", str(path), "--run-dir", run_dir)
    assert _namespace_processes(netns, 0) == [] and _namespace_processes(netns, 1) == []


def test_down_revokes_what_a_killed_worker_left_in_etcd(tmp_path: Path, tiny_model: Path) -> None:
    """A SIGKILLed worker cannot deregister; down revokes its lease so etcd keeps no key of the run."""
    from automation.stages.launch import Launch

    path = _pipeline(tmp_path, tiny_model)
    runner, out = _runner(path)
    assert runner.run(Selection(to_stage="launch")) == 0, out.getvalue()
    endpoint = f"http://127.0.0.1:{runner.config.infra.etcd_port}"
    try:
        assert _etcd_keys(endpoint) > 0
        mocker = next(line for line in _run_processes(path) if "dynamo.mocker" in line)
        pids = subprocess.run(["pgrep", "-f", mocker.split(None, 1)[1][:200]], capture_output=True, text=True)
        assert pids.stdout.split(), mocker
        for pid in pids.stdout.split():
            os.kill(int(pid), signal.SIGKILL)
        launch_only = Runner(
            load_pipeline(path),
            path,
            run_dir=tmp_path / "run",
            console=Console(io.StringIO(), plain=True),
            stages=[Launch],
        )
        assert launch_only.down() == 0
        assert _etcd_keys(endpoint) == 0  # etcd itself still runs: the keys are gone, not the store
        assert [p for p in _run_processes(path) if "/infra/" not in p] == []
    finally:
        _runner(path)[0].down()
    assert _run_processes(path) == []


def test_container_runtime_runs_each_node_script_in_the_image(
    tmp_path: Path, tiny_model: Path, dockerd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """runtime container: the node script runs inside `docker run --net=host --ipc=host` as the image's own
    user (uid 1000, as Dynamo's images from 0.7), with the run directory and the model mounted. The image
    here is a near-empty rootfs in which the run's and the model's parent folder is root's and 0700 (as
    /root is in the real image): mounted at their node paths, as before, neither could be read. The host's
    Python and Dynamo venv are mounted read-only into it (the real image carries its own)."""
    engine, _ = dockerd
    monkeypatch.setenv("DOCKER_HOST", engine.url)
    rootfs = tmp_path / "rootfs"
    (rootfs / "tmp").mkdir(parents=True)
    (rootfs / "tmp").chmod(0o1777)
    private = rootfs / str(tmp_path.parents[1]).lstrip("/")  # e.g. /tmp/pytest-of-root, 0700 in the image
    private.mkdir(parents=True)
    private.chmod(0o700)
    tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True).stdout
    image = "autodeploy-test/dynamo:local"
    # The host's Python is mounted only when the node script runs, so the build stage's python3 probe finds
    # none: the labels say what the image holds.
    labels = [
        "--change",
        "LABEL autodeploy.dynamo.version=1.6.1",
        "--change",
        "LABEL autodeploy.trtllm.version=1.3.0rc23",
    ]
    engine.docker(
        "import", "--change", "USER 1000", "--change", "ENV HOME=/tmp", *labels, "-", image, input_bytes=tar
    )
    python_home = str(Path(os.path.realpath(sys.executable)).parents[1])
    mounts = {d: f"{d}:ro" for d in ("/usr", "/lib", "/lib64", "/bin", "/etc", python_home)}
    mounts[str(DYNAMO_PYTHON.parents[1])] = f"{DYNAMO_PYTHON.parents[1]}:ro"
    path = _pipeline(tmp_path, tiny_model, name="containers")
    data = yaml.safe_load(path.read_text())
    data["dynamo"].update(image=image, image_source="present")
    data["launch"].update(runtime="container", container_gpus="none", container_mounts=mounts)
    path.write_text(yaml.safe_dump(data))
    config_json = tiny_model / "config.json"
    config_json.chmod(0o600)  # a checkpoint file only its owner (root) may read
    try:
        runner, out = _runner(path)
        assert runner.run(Selection(to_stage="launch")) == 1
        assert f"the container's user (1000) cannot read {config_json}" in out.getvalue(), out.getvalue()
        assert f"chmod -R a+rX {tiny_model}" in out.getvalue()
    finally:
        config_json.chmod(0o644)
    runner, out = _runner(path)
    try:
        assert runner.run(Selection(to_stage="launch")) == 0, out.getvalue()
        run_uid = load_state(runner.state_path).run_uid  # type: ignore[union-attr]
        assert run_uid.startswith("containers-")
        assert engine.docker("ps", "--format", "{{.Names}}").split() == [f"autodeploy-{run_uid}-node0"]
        container = f"autodeploy-{run_uid}-node0"
        assert engine.docker("exec", container, "id", "-u").strip() == "1000"
        launched = load_state(runner.state_path).stages["launch"].outputs  # type: ignore[union-attr]
        assert launched["node_runtime"]["0"]["user"] == "1000"
        assert _chat(launched["frontend"], "Qwen/Qwen3-8B")["usage"]["completion_tokens"] == 4
        shown = subprocess.run(
            [sys.executable, "-m", "automation", "plan", str(path), "--run-dir", str(tmp_path / "run")],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert "runs as 1000; RDMA: no (TCP)" in shown.stdout, shown.stdout
    finally:
        runner, out = _runner(path)
        runner.down()
    assert engine.docker("ps", "-aq") == ""
    assert _run_processes(path) == []


def test_down_after_a_sigkilled_runner_and_down_twice(tmp_path: Path, tiny_model: Path) -> None:
    """The runner dies mid-launch, nobody resumes: down still finds and stops everything, and again is a no-op."""
    path = _pipeline(tmp_path, tiny_model, name="killed")
    run_dir = str(tmp_path / "run")
    command = [sys.executable, "-m", "automation", "run", str(path), "--to", "launch", "--run-dir", run_dir]
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid_file = _node_file(tmp_path, "killed", "generated/node_0.pid")
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
        pid_file = _node_file(tmp_path, "killed", "generated/node_0.pid")
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    time.sleep(1)  # let the node script start its processes
    assert _run_processes(path), "the killed runner left nothing to tear down"
    down = [sys.executable, "-m", "automation", "down", str(path), "--run-dir", run_dir]
    first = subprocess.run(down, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "stopped: workers on node0" in first.stdout and "stopped: nats and etcd on node0" in first.stdout
    assert _run_processes(path) == []
    second = subprocess.run(down, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0 and "nothing of this run is running" in second.stdout


def test_a_token_a_worker_prints_never_reaches_the_run_directory(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node logs collected after a failed launch pass the same redaction as every other file of the run."""
    token = "hf_WorkerPrintedThisSecret42"
    monkeypatch.setenv("HF_TOKEN", token)
    leaky = tmp_path / "leaky-python"
    leaky.write_text(
        '#!/bin/bash\necho "worker starting with HF_TOKEN=$HF_TOKEN"\necho "$HF_TOKEN" >&2\nexit 1\n'
    )
    leaky.chmod(0o755)
    path = _pipeline(tmp_path, tiny_model, name="leaky")
    data = yaml.safe_load(path.read_text())
    data["launch"]["python"] = str(leaky)
    path.write_text(yaml.safe_dump(data))
    runner, out = _runner(path)
    try:
        assert runner.run(Selection(to_stage="launch")) == 1
        node_log = tmp_path / "run" / "logs" / "launch.node0.log"
        assert "worker starting with HF_TOKEN=***" in node_log.read_text()  # collected, masked
        for file in (tmp_path / "run").rglob("*"):
            if file.is_file():
                assert token.encode() not in file.read_bytes(), file
        assert token not in out.getvalue()
    finally:
        _runner(path)[0].down()
    assert _run_processes(path) == []


def test_two_run_directories_of_one_pipeline_do_not_touch_each_other(
    tmp_path: Path, tiny_model: Path
) -> None:
    """Each run directory has its own run id: its own remote directory, and a clear refusal on shared ports."""
    path = _pipeline(tmp_path, tiny_model, name="twins")
    first = Runner(
        load_pipeline(path), path, run_dir=tmp_path / "first", console=Console(io.StringIO(), plain=True)
    )
    out = io.StringIO()
    second = Runner(load_pipeline(path), path, run_dir=tmp_path / "second", console=Console(out, plain=True))
    try:
        assert first.run(Selection(to_stage="launch")) == 0
        first_state = load_state(first.state_path)
        assert first_state is not None
        frontend = first_state.stages["launch"].outputs["frontend"]
        # The second run's etcd/NATS/frontend ports are the same ones: it must refuse, not take them over.
        assert second.run(Selection(to_stage="launch")) != 0
        text = out.getvalue()
        assert "already taken by" in text or "is held by" in text, text
        second_state = load_state(second.state_path)
        assert second_state is not None and second_state.run_uid != first_state.run_uid
        assert probe_frontend(frontend, "Qwen/Qwen3-8B").count("backend") == 1  # the first still serves
        second.down()
        assert probe_frontend(frontend, "Qwen/Qwen3-8B").count("backend") == 1  # and its down left it alone
    finally:
        Runner(
            load_pipeline(path), path, run_dir=tmp_path / "first", console=Console(io.StringIO(), plain=True)
        ).down()
    assert _run_processes(path) == []
