"""The interface every stage implements, and the context the runner hands it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from automation.contracts import OutputsT, StageOutputs
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
    # The outputs of the stages in `needs` that are done, typed.
    outputs: Mapping[str, StageOutputs] = field(default_factory=dict)
    # How the stage's previous attempt ended ("pending" if none): a stage may keep partial work of an
    # interrupted or failed attempt, but a re-run after "done" (forced, or inputs changed) starts afresh.
    previous_status: str = "pending"
    # Unique per run directory (state.json keeps it): names remote state and containers, so that two
    # run directories of one pipeline never touch each other's processes.
    run_id: str = ""
    # Secret values to mask (HF_TOKEN and the like): every text a stage writes into the run directory
    # goes through write_text, which masks them, so no file of a run can hold one.
    secrets: list[str] = field(default_factory=list)

    def write_text(self, relative: str | Path, text: str) -> Path:
        """Write a file of the run directory atomically, with every secret value masked."""
        from automation.redact import write_redacted

        path = self.run_dir / relative
        write_redacted(path, text, self.secrets)
        return path

    def output(self, kind: type[OutputsT]) -> OutputsT:
        """The outputs of the earlier stage (declared in `needs`) whose outputs are of type `kind`.

        Raises:
            StageError: that stage has not completed in this run.
        """
        stage = kind.stage
        if stage not in self.needs:
            raise AssertionError(f"stage {self.stage} reads {stage} without declaring it in needs")
        value = self.outputs.get(stage)
        if isinstance(value, kind):
            return value
        raise StageError(
            f"{self.stage} needs the results of {stage}, which has not completed in this run",
            hint=f"autodeploy run {self.pipeline_file} --from {stage}",
        )

    def path(self, *parts: str) -> Path:
        """A path inside the run directory."""
        return self.run_dir.joinpath(*parts)

    @property
    def remote_dir(self) -> str:
        """This run's directory on every node, as written (`~` not expanded: Host.path resolves it)."""
        return remote_run_dir(self.config, self.run_id)


def remote_run_dir(config: PipelineConfig, run_id: str) -> str:
    """<cluster.work_dir>/<run id>: unique per run directory, so two runs never share remote state."""
    return f"{config.cluster.work_dir.rstrip('/')}/{run_id or config.name}"


class Stage:
    """One step of the pipeline. The runner owns state, timing, logging, progress and errors.

    Subclasses set `name`, `summary` and `needs`, implement `run`, and override `inputs`, `verify`,
    `describe` and `teardown` where the defaults do not fit.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()
    # The typed outputs run() returns; later stages read them with ctx.output(<that type>).
    Outputs: ClassVar[type[StageOutputs]]
    # Bump when a change to the stage alters what it produces, so that recorded runs of it re-run.
    revision: ClassVar[int] = 1

    def inputs(self, config: PipelineConfig) -> Mapping[str, Any]:
        """The slice of the config this stage depends on; hashed (with the needed outputs) into its fingerprint."""
        return {}

    def verify(self, ctx: StageContext, record: StageRecord) -> Check:
        """Is the recorded 'done' still true? The default trusts the record; live things must be probed."""
        return Check.still_valid("done, and its inputs are unchanged")

    def run(self, ctx: StageContext) -> StageOutputs:
        """Do the work and return the stage's Outputs for later stages; raise StageError on failure."""
        raise NotImplementedError

    def describe(self, outputs: Any) -> str:
        """A few words about the outputs for the ✓ line."""
        return ""

    def teardown(self, ctx: StageContext, record: StageRecord) -> str | None:
        """Undo what run() left running (`autodeploy down`); return what was stopped, or None if nothing."""
        return None
