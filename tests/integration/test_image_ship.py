"""The build stage across two nodes with their own Docker engines: build on node 0 from a Dynamo-shaped
source tree, ship by SSH stream or through a real registry, load an archive, refuse wrong versions, and
survive a Ctrl-C halfway through a transfer. autodeploy runs in the controller namespace, as on a head node."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.services import DockerCluster, import_busybox_image

STAND_IN = REPO / "examples" / "container-rehearsal" / "dynamo"
BASE = "autodeploy-test/base:local"


@pytest.fixture(scope="module")
def base_image(docker_cluster: DockerCluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The FROM of the stand-in tree's Dockerfile, on node 0 only (node 1 gets what node 0 builds)."""
    return import_busybox_image(docker_cluster.engines[0], tmp_path_factory.mktemp("base"), BASE)


def _pipeline(tmp_path: Path, cluster: DockerCluster, name: str, **dynamo: Any) -> Path:
    return cluster.pipeline(tmp_path, name, **dynamo)


def _autodeploy(cluster: DockerCluster, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cluster.cluster.exec_prefix(), sys.executable, "-m", "automation", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _build(cluster: DockerCluster, path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return _autodeploy(
        cluster, "run", str(path), "--only", "build", "--run-dir", str(path.with_suffix("")), *extra
    )


def _outputs(path: Path) -> dict[str, Any]:
    state = json.loads((path.with_suffix("") / "state.json").read_text())
    outputs: dict[str, Any] = state["stages"]["build"]["outputs"]
    return outputs


def _image_id(cluster: DockerCluster, node: int, image: str) -> str | None:
    found = subprocess.run(
        ["docker", "-H", cluster.engines[node].url, "image", "inspect", "--format", "{{.Id}}", image],
        capture_output=True,
        text=True,
    )
    return found.stdout.strip() if found.returncode == 0 else None


def _forget(cluster: DockerCluster, image: str) -> None:
    for engine in cluster.engines:
        subprocess.run(["docker", "-H", engine.url, "image", "rm", "--force", image], capture_output=True)


def _docker_transfers(cluster: DockerCluster) -> list[str]:
    """docker save / docker load processes left in any node's namespace."""
    left = []
    for namespace in cluster.nodes:
        pids = subprocess.run(
            ["ip", "netns", "pids", namespace], capture_output=True, text=True
        ).stdout.split()
        for pid in pids:
            try:
                words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            line = " ".join(w.decode(errors="replace") for w in words if w)
            if "docker save" in line or "docker load" in line:
                left.append(f"{namespace}: {line}")
    return left


def test_build_on_node0_and_stream_to_node1(
    docker_cluster: DockerCluster, base_image: str, tmp_path: Path
) -> None:
    image = "autodeploy-test/dynamo:stream"
    _forget(docker_cluster, image)
    path = _pipeline(
        tmp_path,
        docker_cluster,
        "stream",
        image=image,
        image_source="build",
        source={"path": str(STAND_IN)},
        build_args=["--build-arg", f"BASE_IMAGE={BASE}"],
    )
    plan = _autodeploy(docker_cluster, "plan", str(path), "--run-dir", str(path.with_suffix("")))
    assert "node0: build; lacks it" in plan.stdout, plan.stdout + plan.stderr
    assert "node1: receive from node0 streamed over SSH" in plan.stdout
    done = _build(docker_cluster, path)
    assert done.returncode == 0, done.stdout + done.stderr
    built = _image_id(docker_cluster, 0, image)
    assert built is not None and _image_id(docker_cluster, 1, image) == built  # the same id, not only the tag
    outputs = _outputs(path)
    assert outputs["images"] == {"node0": built, "node1": built}
    assert outputs["arrivals"] == {"node0": "built", "node1": "received"}
    assert outputs["versions"] == {"dynamo": "1.6.1", "trtllm": "1.3.0rc29"}  # from the build's labels
    assert outputs["shipped_mb_per_s"] > 0
    log = (path.with_suffix("") / "logs" / "build.log").read_text()
    assert (
        "container/render.py --framework=trtllm --target=runtime" in log
        and "RUNTIME_IMAGE_TAG=1.3.0rc29" in log
    )
    # Resumed: verify only (the ids on both nodes), nothing rebuilt or sent.
    again = _autodeploy(
        docker_cluster, "run", str(path), "--to", "build", "--run-dir", str(path.with_suffix(""))
    )
    assert "↷ build" in again.stdout, again.stdout + again.stderr
    # A node whose image went away is noticed by verify.
    _forget_on(docker_cluster, 1, image)
    plan = _autodeploy(docker_cluster, "plan", str(path), "--run-dir", str(path.with_suffix("")))
    assert "the image is no longer on node1" in plan.stdout, plan.stdout


def _forget_on(cluster: DockerCluster, node: int, image: str) -> None:
    subprocess.run(
        ["docker", "-H", cluster.engines[node].url, "image", "rm", "--force", image], capture_output=True
    )


def test_ship_through_the_registry_and_skip_a_node_that_has_the_id(
    docker_cluster: DockerCluster, base_image: str, tmp_path: Path
) -> None:
    image = "autodeploy-test/dynamo:registry"
    _forget(docker_cluster, image)
    path = _pipeline(
        tmp_path,
        docker_cluster,
        "registry",
        image=image,
        image_source="build",
        source={"path": str(STAND_IN)},
        build_args=["--build-arg", f"BASE_IMAGE={BASE}"],
        registry=f"{docker_cluster.registry.endpoint}/team",
    )
    done = _build(docker_cluster, path)
    assert done.returncode == 0, done.stdout + done.stderr
    built = _image_id(docker_cluster, 0, image)
    assert built is not None and _image_id(docker_cluster, 1, image) == built
    outputs = _outputs(path)
    assert outputs["arrivals"] == {"node0": "built", "node1": "pulled"}
    digest = outputs["digests"]["node1"]
    assert digest.startswith(f"{docker_cluster.registry.endpoint}/team/autodeploy-test/dynamo@sha256:")
    # The registry really holds it: its manifest digest is the one recorded.
    manifest = subprocess.run(
        [
            *docker_cluster.cluster.exec_prefix(),
            "curl",
            "-sfI",
            "-H",
            "Accept: application/vnd.docker.distribution.manifest.v2+json",
            f"{docker_cluster.registry.url}/v2/team/autodeploy-test/dynamo/manifests/registry",
        ],
        capture_output=True,
        text=True,
    )
    assert digest.split("@")[1] in manifest.stdout.lower(), manifest.stdout
    # A second run (another run directory): node 1 already has the id, so nothing is pulled or sent.
    rerun = _build(docker_cluster, path, "--force")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _outputs(path)["arrivals"] == {"node0": "built", "node1": "present"}


def test_load_an_archive_on_node0_and_ship_it(docker_cluster: DockerCluster, tmp_path: Path) -> None:
    image = "autodeploy-test/dynamo:loaded"
    _forget(docker_cluster, image)
    scratch = Path(shutil.which("docker") or "docker")
    assert scratch  # docker CLI present
    helper = docker_cluster.engines[0]
    import_busybox_image(
        helper,
        tmp_path / "rootfs",
        image,
        changes=["LABEL autodeploy.dynamo.version=1.6.1", "LABEL autodeploy.trtllm.version=1.3.0rc29"],
    )
    archive = tmp_path / "dynamo.tar"
    with archive.open("wb") as out:
        subprocess.run(["docker", "-H", helper.url, "save", image], stdout=out, check=True)
    original = _image_id(docker_cluster, 0, image)
    _forget(docker_cluster, image)
    path = _pipeline(
        tmp_path, docker_cluster, "load", image=image, image_source="load", image_tar=str(archive)
    )
    done = _build(docker_cluster, path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _image_id(docker_cluster, 0, image) == original == _image_id(docker_cluster, 1, image)
    assert _outputs(path)["arrivals"] == {"node0": "loaded", "node1": "received"}
    # An archive that holds another name says which name it expected.
    wrong = _pipeline(
        tmp_path,
        docker_cluster,
        "wrong",
        image="autodeploy-test/dynamo:other",
        image_source="load",
        image_tar=str(archive),
    )
    refused = _build(docker_cluster, wrong)
    assert refused.returncode == 1
    assert f"dynamo.image_tar: {archive} holds no image named autodeploy-test/dynamo:other" in refused.stdout


def test_an_image_of_another_release_is_refused(docker_cluster: DockerCluster, tmp_path: Path) -> None:
    image = "autodeploy-test/dynamo:old"
    for node, engine in enumerate(docker_cluster.engines):
        import_busybox_image(
            engine,
            tmp_path / f"rootfs{node}",
            image,
            changes=["LABEL autodeploy.dynamo.version=1.5.1", "LABEL autodeploy.trtllm.version=1.3.0rc25"],
        )
    path = _pipeline(tmp_path, docker_cluster, "old", image=image, image_source="present")
    refused = _build(docker_cluster, path)
    assert refused.returncode == 1
    assert f"{image} holds Dynamo 1.5.1 (its labels), and dynamo.version is 1.6.1" in refused.stdout
    assert "set dynamo.version: 1.5.1" in refused.stdout


def test_a_failing_build_shows_its_tail_log_and_command(
    docker_cluster: DockerCluster, base_image: str, tmp_path: Path
) -> None:
    path = _pipeline(
        tmp_path,
        docker_cluster,
        "fails",
        image="autodeploy-test/dynamo:fails",
        image_source="build",
        source={"path": str(STAND_IN)},
        build_args=["--build-arg", f"BASE_IMAGE={BASE}", "--build-arg", "FAIL=1"],
    )
    failed = _build(docker_cluster, path)
    assert failed.returncode == 1
    out = failed.stdout
    assert "building the image failed on node0" in out
    assert "│ the build was told to fail (FAIL=1)" in out  # the tail, under the error
    assert "the whole output is in logs/build.log" in out and "/dynamo-src && docker build" in out
    assert "the build was told to fail" in (path.with_suffix("") / "logs" / "build.log").read_text()
    assert "Traceback" not in out + failed.stderr


def test_a_git_source_is_cloned_at_the_release_tag(
    docker_cluster: DockerCluster, base_image: str, tmp_path: Path
) -> None:
    repo = tmp_path / "dynamo.git"
    shutil.copytree(STAND_IN, repo, ignore=shutil.ignore_patterns("rendered.Dockerfile"))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "stand-in"], check=True)
    subprocess.run([*git, "tag", "v1.6.1"], check=True)
    image = "autodeploy-test/dynamo:git"
    _forget(docker_cluster, image)
    path = _pipeline(
        tmp_path,
        docker_cluster,
        "git",
        image=image,
        image_source="build",
        source={"git": f"file://{repo}"},
        build_args=["--build-arg", f"BASE_IMAGE={BASE}"],
    )
    done = _build(docker_cluster, path)
    assert done.returncode == 0, done.stdout + done.stderr
    clones = list((tmp_path / "nodes").glob("*/dynamo-src-v1.6.1/container/render.py"))
    assert len(clones) == 1
    assert _image_id(docker_cluster, 1, image) == _image_id(docker_cluster, 0, image) is not None


def test_ctrl_c_during_a_transfer_leaves_nothing_half_done(
    docker_cluster: DockerCluster, tmp_path: Path
) -> None:
    """A 256 MiB image: SIGINT once node 1's docker load is running. Node 1 has no image and no stray
    docker save/load is left on either node; the rerun sends it whole."""
    image = "autodeploy-test/dynamo:big"
    _forget(docker_cluster, image)
    import_busybox_image(
        docker_cluster.engines[0],
        tmp_path / "rootfs",
        image,
        changes=["LABEL autodeploy.dynamo.version=1.6.1", "LABEL autodeploy.trtllm.version=1.3.0rc29"],
        filler_bytes=256 << 20,
    )
    archive = tmp_path / "big.tar"
    with archive.open("wb") as out:
        subprocess.run(["docker", "-H", docker_cluster.engines[0].url, "save", image], stdout=out, check=True)
    path = _pipeline(
        tmp_path, docker_cluster, "big", image=image, image_source="load", image_tar=str(archive)
    )
    run_dir = str(path.with_suffix(""))
    child = subprocess.Popen(
        [
            *docker_cluster.cluster.exec_prefix(),
            sys.executable,
            "-m",
            "automation",
            "run",
            str(path),
            "--only",
            "build",
            "--run-dir",
            run_dir,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not any(
        docker_cluster.nodes[1] in t and "docker load" in t for t in _docker_transfers(docker_cluster)
    ):
        assert child.poll() is None, child.communicate()[0]
        assert time.monotonic() < deadline, "node 1 never started loading"
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 130, out
    assert "■ build" in out and "interrupted" in out
    deadline = time.monotonic() + 10
    while _docker_transfers(docker_cluster) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _docker_transfers(docker_cluster) == []
    assert _image_id(docker_cluster, 1, image) is None
    done = _build(docker_cluster, path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _image_id(docker_cluster, 1, image) == _image_id(docker_cluster, 0, image) is not None
