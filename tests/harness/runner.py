"""A real Runner over a pipeline file whose console output the test reads."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from automation.config import load_pipeline
from automation.console import Console
from automation.pipeline import STAGES, Runner
from automation.stage import Stage


def quiet_runner(
    path: Path, stages: Sequence[type[Stage]] = STAGES, run_dir: Path | None = None
) -> tuple[Runner, io.StringIO]:
    """A Runner for the pipeline at path (run directory: run_dir, else `run` beside the file), writing plain
    text into the returned buffer."""
    out = io.StringIO()
    runner = Runner(
        load_pipeline(path),
        path,
        run_dir=run_dir or path.parent / "run",
        console=Console(out, plain=True),
        stages=stages,
    )
    return runner, out
