"""Fixtures for the generate tests: rendered cases on disk and the Dynamo interpreter for the mocker checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from automation.stages.generate import render_files, write_files
from tests.generate.cases import golden_cases

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def rendered_cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, bytes]]]:
    """Every golden case rendered once into its own directory: {case: (directory, files)}."""
    root = tmp_path_factory.mktemp("generated")
    out = {}
    for name, (config, plan) in golden_cases().items():
        files = render_files(config, plan)
        write_files(root / name, files)
        out[name] = (root / name, files)
    return out


@pytest.fixture(scope="session")
def dynamo_python() -> Path:
    """The Dynamo venv's python (AUTODEPLOY_DYNAMO_PYTHON); missing is a failure, since CI installs it."""
    path = Path(os.environ.get("AUTODEPLOY_DYNAMO_PYTHON", REPO / ".venv-dynamo" / "bin" / "python"))
    if not path.exists():
        pytest.fail(
            f"the Dynamo interpreter {path} is missing: run scripts/install-dynamo.sh "
            "(or point AUTODEPLOY_DYNAMO_PYTHON at a python with ai-dynamo installed)"
        )
    return path
