"""The checkpoint stage with the real huggingface_hub client against a local hub-compatible server."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from automation.pipeline import Runner, Selection
from automation.stages.checkpoint import Checkpoint
from automation.state import load_state
from tests.conftest import REPO
from tests.harness.runner import quiet_runner
from tests.hubserver import HubServer
from tests.services import NamespaceCluster, SSHKeys

TOKEN = "hf_localHubSecret0042"


def _make_repo(root: Path, repo: str) -> None:
    directory = root / repo
    subprocess.run([sys.executable, str(REPO / "scripts" / "make-tiny-model.py"), str(directory)], check=True)
    (directory / "model.safetensors").write_bytes(os.urandom(200_000))
    (directory / "sub").mkdir()
    (directory / "sub" / "notes.txt").write_text("small file, not LFS\n")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    root = tmp_path_factory.mktemp("hub")
    _make_repo(root, "acme/tiny")
    _make_repo(root, "acme/gated")
    with HubServer(root, token=TOKEN, gated=("acme/gated",)) as server:
        yield server


def _pipeline(tmp_path: Path, hub: HubServer, repo: str = "acme/tiny", **checkpoint: object) -> Path:
    data = {
        "name": "hubtest",
        "model": {"hf_id": repo, "path": str(tmp_path / "model")},
        "system": "h200_sxm",
        "workload": {"isl": 100, "osl": 10},
        "sla": {"ttft_ms": 500, "tpot_ms": 20},
        "cluster": {"nodes": [{"host": "127.0.0.1", "gpus": 8}], "work_dir": str(tmp_path / "nodes")},
        "checkpoint": {"source": "hub", "endpoint": hub.url, **checkpoint},
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(path: Path, selection: Selection | None = None) -> tuple[int, str, Runner]:
    runner, out = quiet_runner(path, [Checkpoint])
    return runner.run(selection or Selection()), out.getvalue(), runner


def test_download_verify_skip_and_resume(tmp_path: Path, hub: HubServer) -> None:
    path = _pipeline(tmp_path, hub)
    code, out, runner = _run(path)
    assert code == 0, out
    source = hub.root / "acme" / "tiny"
    for name in ("config.json", "tokenizer.json", "model.safetensors", "sub/notes.txt"):
        assert (tmp_path / "model" / name).read_bytes() == (source / name).read_bytes()
    outputs = load_state(runner.state_path).stages["checkpoint"].outputs  # type: ignore[union-attr]
    assert outputs["commit"] == hub.commit("acme/tiny") and outputs["downloaded_to"] == ["node0"]
    assert outputs["nodes"]["node0"]["files"] == 6  # the hub's bookkeeping under .cache/ is not counted
    assert f"acme/tiny@{hub.commit('acme/tiny')[:8]}" in out

    code, out, _ = _run(path)
    assert "↷ checkpoint  skipped: checkpoint present at" in out

    before = len([r for r in hub.requests if r.startswith("GET /acme/tiny/resolve")])
    code, out, runner = _run(path, Selection(force=True))  # forced: the files are already right
    assert code == 0
    assert len([r for r in hub.requests if r.startswith("GET /acme/tiny/resolve")]) == before
    assert load_state(runner.state_path).stages["checkpoint"].outputs["downloaded_to"] == []  # type: ignore[union-attr]

    (tmp_path / "model" / "model.safetensors").write_bytes(b"corrupted")  # a damaged copy is fetched again
    code, out, _ = _run(path)
    assert code == 0, out
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == (
        source / "model.safetensors"
    ).read_bytes()


def test_gated_repo_needs_the_token_and_never_records_it(
    tmp_path: Path, hub: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _pipeline(tmp_path, hub, repo="acme/gated")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    code, out, _ = _run(path)
    assert code == 2
    assert f"model.hf_id: acme/gated is gated on {hub.url}" in out and "export HF_TOKEN" in out
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    code, out, _ = _run(path)
    assert code == 0, out
    for file in (tmp_path / "run").rglob("*"):
        if file.is_file():
            assert TOKEN not in file.read_text(errors="replace"), file


def test_token_file_instead_of_the_environment(tmp_path: Path, hub: HubServer, monkeypatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    (tmp_path / "token").write_text(TOKEN + "\n")
    code, out, _ = _run(_pipeline(tmp_path, hub, repo="acme/gated", token_file=str(tmp_path / "token")))
    assert code == 0, out


def test_unknown_repo_revision_and_unreachable_hub(tmp_path: Path, hub: HubServer) -> None:
    code, out, _ = _run(_pipeline(tmp_path / "a", hub, repo="acme/nothere"))
    assert code == 2 and "has no repository acme/nothere" in out
    path = _pipeline(tmp_path / "b", hub)
    data = yaml.safe_load(path.read_text())
    data["model"]["revision"] = "v9"
    path.write_text(yaml.safe_dump(data))
    code, out, _ = _run(path)
    assert code == 2 and "model.revision: acme/tiny has no revision 'v9'" in out
    code, out, _ = _run(_pipeline(tmp_path / "c", hub, endpoint="http://127.0.0.1:9"))
    assert code == 1 and "cannot read acme/tiny from the hub at http://127.0.0.1:9" in out


def test_allow_patterns_limit_the_download(tmp_path: Path, hub: HubServer) -> None:
    code, out, _ = _run(_pipeline(tmp_path, hub, allow_patterns=["*.json"]))
    assert code == 0, out
    assert (tmp_path / "model" / "config.json").exists()
    assert not (tmp_path / "model" / "model.safetensors").exists()


@pytest.fixture
def controller_hub(netns: NamespaceCluster, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A hub serving acme/tiny inside the controller namespace (where the nodes are reachable from)."""
    root = tmp_path / "hubroot"
    _make_repo(root, "acme/tiny")
    server = subprocess.Popen(
        [*netns.exec_prefix(), sys.executable, "-m", "tests.hubserver", str(root)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield (server.stdout.readline().strip() if server.stdout else ""), root / "acme" / "tiny"
    finally:
        server.kill()
        server.wait(timeout=10)


def _run_on_controller(
    netns: NamespaceCluster, ssh_keys: SSHKeys, tmp_path: Path, url: str, nodes: list[str], model_path: str
) -> subprocess.CompletedProcess[str]:
    """`autodeploy run --only checkpoint` in the controller namespace, for nodes reached over SSH."""
    data = {
        "name": "hubremote",
        "model": {"hf_id": "acme/tiny", "path": model_path},
        "system": "h200_sxm",
        "workload": {"isl": 100, "osl": 10},
        "sla": {"ttft_ms": 500, "tpot_ms": 20},
        "cluster": {
            "nodes": [{"host": a, "gpus": 8} for a in nodes],
            "ssh": {
                "user": "root",
                "key_file": str(ssh_keys.client_key),
                "host_keys": "accept_new",
                "known_hosts": str(tmp_path / "kh"),
            },
        },
        "checkpoint": {"source": "hub", "endpoint": url},
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {**os.environ, "AUTODEPLOY_STAGING": str(tmp_path / "staging")}
    command = ["run", str(path), "--only", "checkpoint", "--run-dir", str(tmp_path / "run")]
    return subprocess.run(
        [*netns.exec_prefix(), sys.executable, "-m", "automation", *command],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_remote_nodes_get_the_files_over_ssh(
    netns: NamespaceCluster, ssh_keys: SSHKeys, tmp_path: Path, controller_hub: tuple[str, Path]
) -> None:
    """The controller (its own namespace) downloads from a hub it reaches and copies to both nodes over SSH."""
    url, repo = controller_hub
    done = _run_on_controller(netns, ssh_keys, tmp_path, url, netns.addresses, str(tmp_path / "model"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "node0: 6 files, node1: 6 files" in done.stdout
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == (
        repo / "model.safetensors"
    ).read_bytes()
    assert any((tmp_path / "staging").iterdir())  # downloaded once on the controller, then copied


def test_a_rerun_sends_a_node_only_its_damaged_file(
    netns: NamespaceCluster, ssh_keys: SSHKeys, tmp_path: Path, controller_hub: tuple[str, Path]
) -> None:
    url, repo = controller_hub
    model = tmp_path / "model"
    done = _run_on_controller(netns, ssh_keys, tmp_path, url, netns.addresses[:1], str(model))
    assert done.returncode == 0, done.stdout + done.stderr
    # A second name for config.json: a file that is sent again is replaced, and the link count drops to 1.
    os.link(model / "config.json", tmp_path / "config.json.keep")
    (model / "model.safetensors").write_bytes(b"damaged")
    done = _run_on_controller(netns, ssh_keys, tmp_path, url, netns.addresses[:1], str(model))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (model / "model.safetensors").read_bytes() == (repo / "model.safetensors").read_bytes()
    assert (model / "config.json").stat().st_nlink == 2  # left alone: it was right


def test_a_model_path_under_tilde_is_in_the_login_users_home(
    netns: NamespaceCluster, ssh_keys: SSHKeys, tmp_path: Path, controller_hub: tuple[str, Path]
) -> None:
    url, repo = controller_hub
    name = f"autodeploy-ckpt-{uuid.uuid4().hex[:8]}"
    home = Path(pwd.getpwnam("root").pw_dir)  # the nodes log in as root; namespaces share the filesystem
    try:
        done = _run_on_controller(netns, ssh_keys, tmp_path, url, netns.addresses[:1], f"~/{name}/model")
        assert done.returncode == 0, done.stdout + done.stderr
        copied = home / name / "model" / "model.safetensors"
        assert copied.read_bytes() == (repo / "model.safetensors").read_bytes()
        assert not (home / "~").exists()
    finally:
        shutil.rmtree(home / name, ignore_errors=True)
        shutil.rmtree(home / "~" / name, ignore_errors=True)
