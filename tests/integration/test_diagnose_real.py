"""The failure signatures against what the real components print now: Dynamo 1.6.1's frontend and mocker,
etcd, nats-server, dockerd, huggingface_hub, pip, CPython. Each case provokes the failure, keeps the output
and checks that diagnose() names exactly that signature (tests/data/logs/ holds excerpts of the same runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from automation.diagnose import Finding, diagnose
from tests.hubserver import HubServer
from tests.integration.conftest import DYNAMO_PYTHON
from tests.services import free_port, http_ok, require, require_root, start_dockerd, wait_for

LOOPBACK = {
    "DYN_TCP_RPC_HOST": "127.0.0.1",
    "DYN_TCP_RESPONSE_STREAM_HOST": "127.0.0.1",
    "DYN_EVENT_PLANE_HOST": "127.0.0.1",
}


def _signatures(findings: list[Finding]) -> list[str]:
    return [f.signature for f in findings]


def _require_dynamo() -> None:
    require(DYNAMO_PYTHON.exists(), f"{DYNAMO_PYTHON} is missing: run scripts/install-dynamo.sh")


@contextlib.contextmanager
def _process(argv: list[str], log: Path, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """A child with stdout and stderr in `log`, killed (its process group) when the block ends."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("NATS_SERVER", "ETCD_ENDPOINTS")}
    environment = {**inherited, **LOOPBACK, **env}
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=environment, start_new_session=True
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        process.wait(timeout=10)


def _until_found(process: subprocess.Popen[bytes], log: Path, signature: str, timeout: float = 20) -> str:
    """The log once diagnose() finds `signature` in it (or the process exited, or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exited = process.poll() is not None
        text = log.read_text(errors="replace")
        if signature in _signatures(diagnose({"log": text})) or exited:
            return text
        time.sleep(0.1)
    return log.read_text(errors="replace")


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """etcd (the Debian package's binary) on free loopback ports with a fresh data directory."""
    require(shutil.which("etcd") is not None, "etcd is not installed (apt: etcd-server)")
    root = tmp_path_factory.mktemp("etcd")
    client, peer = free_port(), free_port()
    endpoint = f"http://127.0.0.1:{client}"
    argv = [
        "etcd",
        "--data-dir",
        str(root / "data"),
        "--listen-client-urls",
        endpoint,
        "--advertise-client-urls",
        endpoint,
        "--listen-peer-urls",
        f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls",
        f"http://127.0.0.1:{peer}",
        "--initial-cluster",
        f"default=http://127.0.0.1:{peer}",
    ]
    with _process(argv, root / "etcd.log"):
        wait_for(lambda: http_ok(f"{endpoint}/health", '"health":"true"'), what="etcd")
        yield endpoint


def test_frontend_with_etcd_unreachable(tmp_path: Path) -> None:
    _require_dynamo()
    log = tmp_path / "frontend.log"
    argv = [str(DYNAMO_PYTHON), "-m", "dynamo.frontend", "--http-port", str(free_port())]
    with _process(argv, log, ETCD_ENDPOINTS=f"http://127.0.0.1:{free_port()}") as process:
        text = _until_found(process, log, "etcd_unreachable")
    findings = diagnose({"log": text})
    assert _signatures(findings) == ["etcd_unreachable"], text
    assert "etcd not reachable yet" in findings[0].evidence


def test_frontend_with_nats_unreachable(tmp_path: Path, etcd: str) -> None:
    _require_dynamo()
    log = tmp_path / "frontend.log"
    argv = [
        str(DYNAMO_PYTHON),
        "-m",
        "dynamo.frontend",
        "--http-port",
        str(free_port()),
        "--request-plane",
        "nats",
    ]
    env = {"ETCD_ENDPOINTS": etcd, "NATS_SERVER": f"nats://127.0.0.1:{free_port()}"}
    with _process(argv, log, **env) as process:
        text = _until_found(process, log, "nats_unreachable")
    assert _signatures(diagnose({"log": text})) == ["nats_unreachable"], text


def test_frontend_on_a_port_in_use(tmp_path: Path, etcd: str) -> None:
    _require_dynamo()
    log = tmp_path / "frontend.log"
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", free_port()))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [str(DYNAMO_PYTHON), "-m", "dynamo.frontend", "--http-port", str(port)]
        with _process(argv, log, ETCD_ENDPOINTS=etcd) as process:
            process.wait(timeout=30)
    text = log.read_text()
    assert process.returncode == 1 and f"port {port} already in use" in text
    findings = diagnose({"log": text})
    assert _signatures(findings) == ["port_in_use"], text
    assert "Address already in use" in findings[0].evidence


def test_mocker_with_a_missing_model_directory(tmp_path: Path, etcd: str) -> None:
    _require_dynamo()
    log = tmp_path / "mocker.log"
    missing = tmp_path / "models" / "Qwen3-8B"
    argv = [str(DYNAMO_PYTHON), "-m", "dynamo.mocker", "--model-path", str(missing), "--model-name", "m"]
    with _process(argv, log, ETCD_ENDPOINTS=etcd) as process:
        process.wait(timeout=60)
    text = log.read_text()
    findings = diagnose({"log": text})
    assert process.returncode != 0 and _signatures(findings) == ["model_dir_missing"], text
    assert str(missing) in findings[0].evidence


def _post(url: str, body: dict[str, object]) -> tuple[int, str]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_nats_without_jetstream_serves_and_nvext_is_rejected(
    tmp_path: Path, etcd: str, tiny_model: Path
) -> None:
    """Dynamo 1.6.1 needs no JetStream (even on NATS planes): nothing to diagnose until a request sends
    nvext, which the frontend rejects with HTTP 400; that body is what the nvext signature matches."""
    require(shutil.which("nats-server") is not None, "nats-server is not installed (apt: nats-server)")
    nats_port, monitor_port, http_port = free_port(), free_port(), free_port()
    frontend = f"http://127.0.0.1:{http_port}"
    planes = ["--request-plane", "nats", "--event-plane", "nats"]
    env = {"ETCD_ENDPOINTS": etcd, "NATS_SERVER": f"nats://127.0.0.1:{nats_port}"}
    python = str(DYNAMO_PYTHON)
    nats = ["nats-server", "-a", "127.0.0.1", "-p", str(nats_port), "-m", str(monitor_port)]  # no -js
    frontend_argv = [python, "-m", "dynamo.frontend", "--http-port", str(http_port), *planes]
    mocker = [python, "-m", "dynamo.mocker", "--model-path", str(tiny_model), "--model-name", "tiny", *planes]
    body = {"model": "tiny", "prompt": "w5 w6", "max_tokens": 3}
    with contextlib.ExitStack() as stack:
        stack.enter_context(_process(nats, tmp_path / "nats.log"))
        wait_for(lambda: http_ok(f"http://127.0.0.1:{monitor_port}/healthz"), what="nats-server")
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/varz", timeout=5) as response:
            assert not json.loads(response.read()).get("jetstream", {}).get("config")  # JetStream is off
        stack.enter_context(_process(frontend_argv, tmp_path / "fe.log", **env))
        stack.enter_context(_process(mocker, tmp_path / "mocker.log", **env))
        wait_for(lambda: http_ok(f"{frontend}/v1/models", '"tiny"'), timeout=60, what="model listed")
        ok = _post(f"{frontend}/v1/completions", body)
        rejected = _post(f"{frontend}/v1/completions", {**body, "nvext": {"ignore_eos": True}})
    logs = {name: (tmp_path / name).read_text(errors="replace") for name in ("fe.log", "mocker.log")}
    assert ok[0] == 200, ok
    assert diagnose(logs) == [], logs
    assert rejected[0] == 400
    findings = diagnose({"bench/c1.json:error_examples[0]": f"HTTP 400: {rejected[1]}"})
    assert _signatures(findings) == ["nvext_rejected"], rejected


def test_docker_pull_of_an_unreachable_image(tmp_path_factory: pytest.TempPathFactory) -> None:
    require_root()
    require(shutil.which("dockerd") is not None, "dockerd is not installed (apt: docker.io)")
    engine = start_dockerd(tmp_path_factory.mktemp("dkr"))  # a short path: containerd's sockets live under it
    try:
        done = subprocess.run(
            ["docker", "-H", engine.url, "pull", "--quiet", "nowhere.invalid/x:1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        engine.stop()
    assert done.returncode != 0
    assert _signatures(diagnose({"stderr": done.stderr})) == ["image_pull_failed"], done.stderr


def test_hub_refuses_a_gated_model_without_token(tmp_path: Path) -> None:
    from huggingface_hub import snapshot_download

    (tmp_path / "hub" / "acme" / "gated-model").mkdir(parents=True)
    (tmp_path / "hub" / "acme" / "gated-model" / "config.json").write_text("{}")
    hub = HubServer(tmp_path / "hub", token="t", gated=("acme/gated-model",))
    with hub, pytest.raises(Exception) as caught:
        snapshot_download(
            "acme/gated-model", cache_dir=str(tmp_path / "cache"), token=False, endpoint=hub.url
        )
    text = "".join(traceback.format_exception(caught.value))
    assert _signatures(diagnose({"log": text})) == ["hf_access_denied"], text


def test_pip_check_reports_a_triton_that_torch_does_not_pin(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    (site,) = (tmp_path / "venv" / "lib").glob("python3*/site-packages")
    for name, version, requires in (
        ("torch", "2.7.1", 'Requires-Dist: triton==3.3.1; platform_system == "Linux"\n'),
        ("triton", "3.4.0", ""),
    ):
        info = site / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{requires}")
    python = str(tmp_path / "venv" / "bin" / "python")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "check"], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert _signatures(diagnose({"stdout": done.stdout})) == ["triton_version_mismatch"], done.stdout


def test_a_full_disk() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "f = open('/dev/full', 'w'); f.write('x'); f.flush()"],
        capture_output=True,
        text=True,
    )
    assert _signatures(diagnose({"stderr": done.stderr})) == ["disk_full"], done.stderr
