"""The interface every stage implements, and the context the runner hands it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from automation.errors import StageError

if TYPE_CHECKING:
    from automation.config import PipelineConfig
    from automation.console import StageDisplay
    from automation.state import StageRecord


@dataclass(frozen=True)
class Check:
    """The result of verify(): is a previous 'done' still true, and why (printed either way)."""

    ok: bool
    reason: str

    @classmethod
    def still_valid(cls, reason: str) -> Check:
        return cls(True, reason)

    @classmethod
    def stale(cls, reason: str) -> Check:
        return cls(False, reason)


@dataclass
class StageContext:
    """What a stage may use: the config, its run directory, its log, its display, and earlier outputs."""

    stage: str
    needs: tuple[str, ...]
    config: PipelineConfig
    pipeline_file: Path
    run_dir: Path
    log: logging.Logger
    display: StageDisplay
    outputs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # How the stage's previous attempt ended ("pending" if none): a stage may keep partial work of an
    # interrupted or failed attempt, but a re-run after "done" (forced, or inputs changed) starts afresh.
    previous_status: str = "pending"

    def output(self, stage: str) -> Mapping[str, Any]:
        """The recorded outputs of an earlier stage this one declared in `needs`.

        Raises:
            StageError: that stage has not completed in this run.
        """
        if stage not in self.needs:
            raise AssertionError(f"stage {self.stage} reads {stage} without declaring it in needs")
        if stage not in self.outputs:
            raise StageError(
                f"{self.stage} needs the results of {stage}, which has not completed in this run",
                hint=f"autodeploy run {self.pipeline_file} --from {stage}",
            )
        return self.outputs[stage]

    def path(self, *parts: str) -> Path:
        """A path inside the run directory."""
        return self.run_dir.joinpath(*parts)


class Stage:
    """One step of the pipeline. The runner owns state, timing, logging, progress and errors.

    Subclasses set `name`, `summary` and `needs`, implement `run`, and override `inputs`, `verify`,
    `describe` and `teardown` where the defaults do not fit.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()
    # Bump when a change to the stage alters what it produces, so that recorded runs of it re-run.
    revision: ClassVar[int] = 1

    def inputs(self, config: PipelineConfig) -> Mapping[str, Any]:
        """The slice of the config this stage depends on; hashed (with the needed outputs) into its fingerprint."""
        return {}

    def verify(self, ctx: StageContext, record: StageRecord) -> Check:
        """Is the recorded 'done' still true? The default trusts the record; live things must be probed."""
        return Check.still_valid("done, and its inputs are unchanged")

    def run(self, ctx: StageContext) -> dict[str, Any]:
        """Do the work and return JSON-able outputs for later stages; raise StageError on failure."""
        raise NotImplementedError

    def describe(self, outputs: Mapping[str, Any]) -> str:
        """A few words about the outputs for the ✓ line."""
        return ""

    def teardown(self, ctx: StageContext, record: StageRecord) -> str | None:
        """Undo what run() left running (`autodeploy down`); return what was stopped, or None if nothing."""
        return None
