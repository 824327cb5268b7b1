"""The build and checkpoint stages on real hosts: what the CPU rehearsal needs of them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from automation.pipeline import Runner, Selection
from automation.stage import Stage
from automation.stages.build import Build
from automation.stages.checkpoint import Checkpoint
from automation.state import load_state
from tests.conftest import REPO
from tests.harness.runner import quiet_runner
from tests.services import import_busybox_image


def _pipeline(tmp_path: Path, **sections: object) -> Path:
    data = {
        "name": "bc",
        "model": {"hf_id": "Qwen/Qwen3-8B", "path": str(tmp_path / "model")},
        "system": "h200_sxm",
        "workload": {"isl": 100, "osl": 10},
        "sla": {"ttft_ms": 500, "tpot_ms": 20},
        "cluster": {"nodes": [{"host": "127.0.0.1", "gpus": 8}], "work_dir": str(tmp_path / "nodes")},
        "checkpoint": {"source": "present"},
        "launch": {"runtime": "host", "engine": "mocker"},
        **sections,
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(path: Path, stages: Sequence[type[Stage]] = (Build, Checkpoint)) -> tuple[int, str, Runner]:
    runner, out = quiet_runner(path, stages)
    return runner.run(Selection()), out.getvalue(), runner


def test_present_checkpoint_is_inventoried_and_rechecked(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make-tiny-model.py"), str(tmp_path / "model")], check=True
    )
    path = _pipeline(tmp_path)
    code, out, runner = _run(path)
    assert code == 0, out
    assert "no image (host runtime)" in out
    nodes = load_state(runner.state_path).stages["checkpoint"].outputs["nodes"]  # type: ignore[union-attr]
    assert nodes["node0"]["files"] == 4 and nodes["node0"]["bytes"] > 1_000_000
    code, out, _ = _run(path)
    assert "↷ checkpoint  skipped: checkpoint present at" in out
    (tmp_path / "model" / "extra.bin").write_bytes(b"x")
    code, out, _ = _run(path)
    assert code == 0 and "✓ checkpoint" in out  # the files changed: inventoried again


def test_missing_checkpoint_names_the_path(tmp_path: Path) -> None:
    code, out, _ = _run(_pipeline(tmp_path))
    assert code == 1
    assert f"no checkpoint at {tmp_path / 'model'} on node0 (config.json is missing)" in out


# ---------------------------------------------------------------------------------------------- build


def _build(path: Path) -> tuple[int, str, Runner]:
    return _run(path, (Build,))


def test_build_records_the_image_id_of_every_node_and_notices_a_change(
    dockerd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _ = dockerd
    monkeypatch.setenv("DOCKER_HOST", engine.url)
    image = "autodeploy-test/dynamo:build"
    labels = ["LABEL autodeploy.dynamo.version=1.6.1", "LABEL autodeploy.trtllm.version=1.3.0rc29"]
    first = import_busybox_image(engine, tmp_path / "rootfs", image, changes=labels)
    try:
        launch = {"runtime": "container", "engine": "mocker"}
        path = _pipeline(
            tmp_path, launch=launch, dynamo={"version": "1.6.1", "image": image, "image_source": "present"}
        )
        code, out, runner = _build(path)
        assert code == 0, out
        recorded = load_state(runner.state_path).stages["build"].outputs  # type: ignore[union-attr]
        assert recorded["images"] == {"node0": first} and recorded["arrivals"] == {"node0": "present"}
        assert recorded["versions"] == {"dynamo": "1.6.1", "trtllm": "1.3.0rc29"}  # from the labels
        code, out, _ = _build(path)
        assert "↷ build       skipped: the image is unchanged on every node" in out
        second = import_busybox_image(engine, tmp_path / "rootfs", image, changes=[*labels, "LABEL again=1"])
        code, out, runner = _build(path)
        assert code == 0 and "✓ build" in out, out
        recorded = load_state(runner.state_path).stages["build"].outputs  # type: ignore[union-attr]
        assert recorded["images"] == {"node0": second} != {"node0": first}
    finally:
        engine.docker("rmi", image)
    code, out, _ = _build(path)
    assert code == 1
    assert f"image {image} is not on node0 (dynamo.image_source: present)" in out


def test_build_pull_that_fails_names_the_field(
    dockerd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _ = dockerd
    monkeypatch.setenv("DOCKER_HOST", engine.url)
    launch = {"runtime": "container", "engine": "mocker"}
    path = _pipeline(
        tmp_path, launch=launch, dynamo={"image": "nowhere.invalid/dynamo:0", "image_source": "pull"}
    )
    code, out, _ = _build(path)
    assert code == 1
    assert "image nowhere.invalid/dynamo:0 is not on node0 and could not be pulled" in out
    assert "dynamo.image" in out
