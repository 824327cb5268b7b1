"""The build and checkpoint stages on real hosts: what the CPU rehearsal needs of them."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import yaml

from automation.config import load_pipeline
from automation.console import Console
from automation.pipeline import Runner, Selection
from automation.stages.build import Build
from automation.stages.checkpoint import Checkpoint
from automation.state import load_state
from tests.conftest import REPO


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


def _run(path: Path) -> tuple[int, str, Runner]:
    out = io.StringIO()
    runner = Runner(
        load_pipeline(path),
        path,
        run_dir=path.parent / "run",
        console=Console(out, plain=True),
        stages=[Build, Checkpoint],
    )
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
