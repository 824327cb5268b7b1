"""Shared fixtures: pipeline files in a temp directory, and runners over the stand-in stages."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from automation.config import load_pipeline
from automation.console import Console
from automation.pipeline import Runner
from tests.harness.stages import TEST_STAGES

REPO = Path(__file__).resolve().parent.parent

MINIMAL_PIPELINE = """\
name: unit
model: {hf_id: Qwen/Qwen3-8B}
system: h200_sxm
workload: {isl: 1000, osl: 100}
sla: {ttft_ms: 500, tpot_ms: 20}
cluster:
  nodes:
    - {host: 127.0.0.1, gpus: 8}
"""


@pytest.fixture
def pipeline_file(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(MINIMAL_PIPELINE)
    return path


@pytest.fixture
def calls_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "calls.txt"
    monkeypatch.setenv("AUTODEPLOY_TEST_CALLS", str(path))
    return path


def read_calls(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.fixture
def make_runner(pipeline_file: Path) -> Callable[..., tuple[Runner, io.StringIO]]:
    """A runner over the stand-in stages whose console writes plain text into a buffer."""

    def make(**kwargs: object) -> tuple[Runner, io.StringIO]:
        buffer = io.StringIO()
        kwargs.setdefault("stages", TEST_STAGES)
        runner = Runner(
            load_pipeline(pipeline_file),
            pipeline_file,
            run_dir=pipeline_file.parent / "run",
            console=Console(file=buffer, plain=True),
            **kwargs,  # type: ignore[arg-type]
        )
        return runner, buffer

    return make


def run_harness(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run the real CLI (over the stand-in stages) in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "tests.harness.run", *args],
        cwd=cwd or REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


_INTEGRATION = REPO / "tests" / "integration"


_CONFORMANCE = REPO / "tests" / "conformance"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Test tiers by where a test lives and what it uses: unit, conformance (released upstream code from
    PyPI), or integration (root), plus dynamo."""
    for item in items:
        parents = Path(str(item.fspath)).parents
        if _CONFORMANCE in parents:
            item.add_marker(pytest.mark.conformance)
        elif _INTEGRATION in parents:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.root)
            if "tiny_model" in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.dynamo)
        else:
            item.add_marker(pytest.mark.unit)
