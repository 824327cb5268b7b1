"""configure.source: aiconfigurator with no result folder runs the released aiconfigurator (0.12.0 from PyPI,
installed once into ~/.cache/autodeploy) and deploys its pick: the same pick its committed run printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from automation.pipeline import Selection
from automation.stages.configure import Configure
from tests.harness.runner import quiet_runner
from tests.services import require

VERSION = "0.12.0"
VENV = (
    Path(os.environ.get("AUTODEPLOY_CACHE", Path.home() / ".cache" / "autodeploy"))
    / f"aiconfigurator-{VERSION}"
)


@pytest.fixture(scope="module")
def aiconfigurator_bin() -> Path:
    """The released package in a venv of its own (pandas, scipy, ...: kept out of autodeploy's)."""
    binary = VENV / "bin" / "aiconfigurator"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        installed = subprocess.run(
            [str(VENV / "bin" / "pip"), "install", "--quiet", f"aiconfigurator=={VERSION}"],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        require(
            installed.returncode == 0,
            f"pip install aiconfigurator=={VERSION} failed: {installed.stderr[-500:]}",
        )
    return binary


def test_configure_runs_aiconfigurator_and_deploys_its_pick(
    aiconfigurator_bin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"{aiconfigurator_bin.parent}{os.pathsep}{os.environ['PATH']}")
    path = tmp_path / "p.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "aic",
                "model": {"hf_id": "Qwen/Qwen3-32B-FP8", "path": str(tmp_path / "model")},
                "system": "h200_sxm",
                "workload": {"isl": 4000, "osl": 512},
                "sla": {"ttft_ms": 300, "tpot_ms": 10},
                "configure": {"source": "aiconfigurator"},
                "cluster": {"nodes": [{"host": "127.0.0.1", "gpus": 8}], "work_dir": str(tmp_path / "nodes")},
            }
        )
    )
    runner, out = quiet_runner(path, [Configure])
    assert runner.run(Selection()) == 0, out.getvalue()
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    outputs = state["stages"]["configure"]["outputs"]
    theirs = outputs["aiconfigurator"]
    # The committed run of the same inputs (tests/data/aiconfigurator/qwen3-32b-fp8-h200-8gpu) printed:
    # "Best Experiment Chosen: disagg at 489.83 tokens/s/gpu", 1P(tp4 bs1) + 1D(tp4 bs64).
    assert theirs["mode"] == "disagg" and theirs["tokens_per_s_per_gpu"] == pytest.approx(489.83, rel=0.005)
    assert outputs["plan"]["mode"] == "disagg" and outputs["source"] == "aiconfigurator"
    roles = {role["role"]: role for role in outputs["plan"]["roles"]}
    assert (
        roles["prefill"]["tp"] == 4 and roles["decode"]["tp"] == 4 and roles["decode"]["max_batch_size"] == 64
    )
    log = tmp_path / "run" / "configure" / "aiconfigurator" / "aiconfigurator.log"
    assert "Best Experiment Chosen" in log.read_text()
