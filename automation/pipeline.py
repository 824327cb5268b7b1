"""The ordered stages and the runner: fingerprints, skip/run decisions, state, logs, errors, signals."""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import signal
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automation.config import PipelineConfig, resolved_yaml
from automation.console import Console, StageDisplay
from automation.contracts import StageOutputs, recorded
from automation.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    AutodeployError,
    InputError,
    StageError,
    StateError,
)
from automation.redact import RedactingFilter, redact, secret_values, write_redacted
from automation.stage import Check, Stage, StageContext
from automation.stages.benchmark import Benchmark
from automation.stages.build import Build
from automation.stages.checkpoint import Checkpoint
from automation.stages.configure import Configure
from automation.stages.generate import Generate
from automation.stages.infra import Infra
from automation.stages.launch import Launch
from automation.stages.summarize import Summarize
from automation.state import (
    STATE_FILE,
    RunState,
    StageRecord,
    Status,
    load_state,
    now,
    save_state,
)

# The pipeline, in order. A stage reads only the recorded outputs of the stages in its `needs`.
STAGES: tuple[type[Stage], ...] = (
    Configure,
    Generate,
    Build,
    Checkpoint,
    Infra,
    Launch,
    Benchmark,
    Summarize,
)


# Stages whose failures are matched against the known-failure table (their logs hold the nodes' output).
DIAGNOSED_STAGES = frozenset({"build", "infra", "launch", "benchmark"})


@dataclass(frozen=True)
class Selection:
    """Which stages a command considers. Naming stages (--from, --only) means: run them even if done."""

    from_stage: str | None = None
    only: tuple[str, ...] = ()
    to_stage: str | None = None
    force: bool = False

    def validate(self, names: Sequence[str]) -> None:
        for flag, value in (
            ("--from", self.from_stage),
            ("--to", self.to_stage),
            *(("--only", o) for o in self.only),
        ):
            if value is not None and value not in names:
                match = difflib.get_close_matches(value, names, n=1)
                hint = f"did you mean '{match[0]}'?" if match else f"stages: {', '.join(names)}"
                raise InputError(f"{flag}: unknown stage '{value}'", hint=hint)
        if self.only and (self.from_stage or self.to_stage):
            raise InputError("--only cannot be combined with --from or --to", hint="use one or the other")
        if self.from_stage and self.to_stage and names.index(self.from_stage) > names.index(self.to_stage):
            raise InputError(f"--from {self.from_stage} comes after --to {self.to_stage}", hint="swap them")

    def considers(self, name: str, names: Sequence[str]) -> str | None:
        """None if the stage is considered, else why it is left out."""
        index = names.index(name)
        if self.only and name not in self.only:
            return "not selected (--only)"
        if self.from_stage and index < names.index(self.from_stage):
            return f"not selected (--from {self.from_stage})"
        if self.to_stage and index > names.index(self.to_stage):
            return f"not selected (--to {self.to_stage})"
        return None

    def forces(self, name: str) -> str | None:
        if self.only:
            return "selected with --only"
        if self.from_stage:
            return f"re-run from {self.from_stage}"
        return "--force" if self.force else None


@dataclass(frozen=True)
class Decision:
    stage: str
    action: str  # "run" | "skip" | "leave"
    reason: str


_NOT_DONE_REASONS = {
    Status.PENDING: "not run yet",
    Status.RUNNING: "the last runner stopped during it",
    Status.FAILED: "failed last time",
    Status.INTERRUPTED: "interrupted last time",
    Status.STOPPED: "stopped by autodeploy down",
}


def canonical_hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def new_run_uid(name: str) -> str:
    """The pipeline's name and six random hex digits: readable in `docker ps`, unique per run directory."""
    return f"{name}-{secrets.token_hex(3)}"


def default_run_dir(config: PipelineConfig) -> Path:
    return config.run_dir or Path("autodeploy-runs") / config.name


class Runner:
    """Walks the stages of one run: decides, runs, records. The only writer of the state file."""

    def __init__(
        self,
        config: PipelineConfig,
        pipeline_file: Path,
        run_dir: Path | None = None,
        console: Console | None = None,
        stages: Sequence[type[Stage]] = STAGES,
        debug: bool = False,
    ) -> None:
        self.debug = debug
        self.config = config
        self.pipeline_file = pipeline_file
        self.run_dir = (run_dir or default_run_dir(config)).absolute()
        self.console = console or Console()
        self.stages = [cls() for cls in stages]
        self.names = [stage.name for stage in self.stages]
        self.state_path = self.run_dir / STATE_FILE
        self._secrets = secret_values(config)
        self.run_uid = ""  # set by load(): unique to the run directory

    # ----------------------------------------------------------------------------------- state

    def load(self) -> RunState:
        state = load_state(self.state_path)
        if state is None:
            state = RunState(
                run_id=self.config.name, pipeline_file=str(self.pipeline_file), pipeline_sha256=""
            )
        elif state.run_id != self.config.name:
            raise StateError(
                f"{self.run_dir} holds run '{state.run_id}', not '{self.config.name}'",
                hint="give this pipeline its own --run-dir, or rename it back",
            )
        if not state.run_uid:
            state.run_uid = new_run_uid(self.config.name)
        self.run_uid = state.run_uid
        for name in self.names:
            state.record(name)
        return state

    def typed_outputs(self, state: RunState, *, done_only: bool = True) -> dict[str, StageOutputs]:
        """The recorded outputs of every done stage (or, for down, of every stage that has some), typed.

        A done record that no longer fits its model (written by an older autodeploy) counts as not done.
        """
        typed: dict[str, StageOutputs] = {}
        for stage in self.stages:
            record = state.stages.get(stage.name)
            if record is None or (done_only and not record.done):
                continue
            outputs = recorded(stage.Outputs, record.outputs)
            if outputs is not None:
                typed[stage.name] = outputs
            elif done_only:
                record.status = Status.PENDING
                record.error = {"message": "recorded by an older autodeploy; runs again"}
        return typed

    def save(self, state: RunState) -> None:
        save_state(self.state_path, state)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One runner per run directory; the kernel drops the lock when a runner dies."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.run_dir / ".lock", "a+")  # noqa: SIM115 - held for the whole run
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                raise InputError(
                    f"another autodeploy (pid {holder}) is working on {self.run_dir}",
                    hint="wait for it, or stop it; two runners must not share a run directory",
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            yield
        finally:
            handle.close()

    # ------------------------------------------------------------------------------- decisions

    def fingerprint(self, stage: Stage, outputs: Mapping[str, StageOutputs]) -> dict[str, str]:
        """Digests of what the stage depends on: its config slice and the identity of the outputs it needs.

        Report fields (what was reused, where files were downloaded to) are not hashed: they change
        nothing a later stage depends on.
        """
        parts = {
            "settings": canonical_hash({"revision": stage.revision, "inputs": stage.inputs(self.config)})
        }
        for need in stage.needs:
            found = outputs.get(need)
            parts[need] = canonical_hash(found.identity() if found is not None else None)
        return parts

    def decide(
        self,
        stage: Stage,
        record: StageRecord,
        selection: Selection,
        outputs: Mapping[str, StageOutputs],
        will_run: set[str],
        display: StageDisplay | None = None,
    ) -> Decision:
        left_out = selection.considers(stage.name, self.names)
        if left_out:
            return Decision(stage.name, "leave", left_out)
        forced = selection.forces(stage.name)
        if forced:
            return Decision(stage.name, "run", forced)
        if record.status != Status.DONE:
            return Decision(stage.name, "run", _NOT_DONE_REASONS[record.status])
        upstream = [need for need in stage.needs if need in will_run]
        if upstream:
            return Decision(stage.name, "run", f"{upstream[0]} runs first")
        parts = self.fingerprint(stage, outputs)
        if canonical_hash(parts) != record.fingerprint:
            changed = [k for k, v in parts.items() if record.input_digests.get(k) != v]
            what = (
                "its settings changed" if changed == ["settings"] or not changed else f"{changed[-1]} changed"
            )
            return Decision(stage.name, "run", what)
        check = self._verify(stage, record, outputs, display)
        return Decision(stage.name, "skip" if check.ok else "run", check.reason)

    def _verify(
        self,
        stage: Stage,
        record: StageRecord,
        outputs: Mapping[str, StageOutputs],
        display: StageDisplay | None,
    ) -> Check:
        ctx = self._context(stage, outputs, display or StageDisplay(None, stage.name, None), _quiet_logger())
        try:
            return stage.verify(ctx, record)
        except Exception as exc:  # a probe that breaks must not stop the run: it means "re-run"
            return Check.stale(f"could not verify ({type(exc).__name__}: {exc})")

    def plan(self, selection: Selection) -> list[Decision]:
        """What `run` would do now, and why; runs nothing (verify() probes are read-only)."""
        selection.validate(self.names)
        state = self.load()
        outputs = self.typed_outputs(state)
        decisions: list[Decision] = []
        will_run: set[str] = set()
        for stage in self.stages:
            decision = self.decide(stage, state.record(stage.name), selection, outputs, will_run)
            if decision.action == "run":
                will_run.add(stage.name)
            decisions.append(decision)
        return decisions

    # ------------------------------------------------------------------------------------- run

    def run(self, selection: Selection) -> int:
        """Run the pipeline; returns the exit code (0 ok, 1 a stage failed, 2 bad input, 130 interrupted)."""
        selection.validate(self.names)
        with self.lock(), _signals_raise_interrupt():
            state = self.load()
            state.pipeline_file = str(self.pipeline_file)
            state.pipeline_sha256 = _file_sha256(self.pipeline_file)
            self.save(state)
            self.config.run_dir = self.run_dir
            write_redacted(self.run_dir / "pipeline.resolved.yaml", resolved_yaml(self.config), self._secrets)
            self.console.line(f"run {self.config.name}  ({self.run_dir})", "bold")
            for stage in self.stages:
                record = state.record(stage.name)
                # Decided against the outputs as they are now: a stage that just re-ran with the same
                # outputs does not force the stages after it to run again.
                outputs = self.typed_outputs(state)
                decision = self.decide(stage, record, selection, outputs, will_run=set())
                if decision.action == "leave":
                    continue
                if decision.action == "skip":
                    self.console.stage_skipped(stage.name, decision.reason)
                    continue
                code = self._run_stage(stage, state, outputs, decision)
                if code != EXIT_OK:
                    return code
            self.console.line(f"all stages done; state: {self.state_path}", "bold green")
            return EXIT_OK

    def _run_stage(
        self, stage: Stage, state: RunState, outputs: dict[str, StageOutputs], decision: Decision
    ) -> int:
        record = state.record(stage.name)
        parts = self.fingerprint(stage, outputs)
        log_path = self.run_dir / "logs" / f"{stage.name}.log"
        previous_status = record.status.value
        record.status = Status.RUNNING
        record.attempts += 1
        record.started_at = now()
        record.finished_at = None
        record.duration_s = None
        record.error = None
        record.fingerprint = canonical_hash(parts)
        record.input_digests = parts
        record.log = str(log_path.relative_to(self.run_dir))
        started = time.monotonic()
        try:
            # Inside the try: a signal may land while the state file is being replaced (a reader can
            # already see "running" then), and the record must still end up "interrupted".
            self.save(state)
            with self._stage_log(stage.name, log_path) as log:
                log.info("=== %s attempt %d (%s)", stage.name, record.attempts, decision.reason)
                try:
                    with self.console.stage_running(stage.name) as display:
                        context = self._context(stage, outputs, display, log)
                        context.previous_status = previous_status
                        result = stage.run(context)
                    if not isinstance(result, stage.Outputs):
                        raise TypeError(f"{stage.name}.run returned {type(result).__name__}, not its Outputs")
                    # Outputs must survive the state file: fail here, not on the next load.
                    record_outputs = result.record()
                    json.dumps(record_outputs)
                except KeyboardInterrupt:
                    log.warning("interrupted")
                    raise
                except AutodeployError as exc:
                    log.error("failed: %s", exc)
                    for key, value in getattr(exc, "details", {}).items():
                        log.error("  %s: %s", key, value)
                    record.error = self._error_record(exc, log_path)
                    causes = self._known_causes(stage.name, record, log)
                    self._finish(state, record, Status.FAILED, started)
                    self.console.stage_failed(
                        stage.name,
                        time.monotonic() - started,
                        redact(exc.message, self._secrets),
                        redact(exc.hint, self._secrets),
                        self._shown(log_path),
                        self._resume_hint(),
                        tail=redact(str(getattr(exc, "details", {}).get("tail") or ""), self._secrets),
                    )
                    self._show_causes(causes)
                    return exc.exit_code
                except Exception as exc:
                    crash = self.run_dir / "logs" / "crash.log"
                    trace = redact(traceback.format_exc(), self._secrets)
                    write_redacted(crash, f"--- {now()} {stage.name}\n{trace}\n", self._secrets, append=True)
                    log.error("unexpected error:\n%s", trace)
                    record.error = self._error_record(exc, crash)
                    self._finish(state, record, Status.FAILED, started)
                    self.console.stage_failed(
                        stage.name,
                        time.monotonic() - started,
                        redact(f"unexpected {type(exc).__name__}: {exc}", self._secrets),
                        "this is a bug in autodeploy; the traceback is in the crash log (--debug prints it)",
                        self._shown(crash),
                        self._resume_hint(),
                    )
                    if self.debug:
                        self.console.err.print(trace)
                    return EXIT_FAILED
                record.outputs = record_outputs
                self._finish(state, record, Status.DONE, started)
                log.info("done in %.2fs", record.duration_s or 0.0)
            self.console.stage_done(stage.name, record.duration_s or 0.0, stage.describe(result))
            return EXIT_OK
        except KeyboardInterrupt:
            # Also when it lands outside the stage itself (while its log is opened or closed, or the state
            # file replaced): the record must say interrupted, not running.
            if record.status != Status.RUNNING:
                raise
            self._finish(state, record, Status.INTERRUPTED, started)
            self.console.stage_interrupted(stage.name, self._resume_hint())
            return EXIT_INTERRUPTED

    def _known_causes(self, stage: str, record: StageRecord, log: logging.Logger) -> list[Any]:
        """Known failure signatures in the failed stage's logs (data/failure_signatures.yaml), logged and
        recorded with the error."""
        if stage not in DIAGNOSED_STAGES:
            return []
        from automation.diagnose import diagnose_run

        findings = diagnose_run(self.run_dir, stage)
        for finding in findings:
            log.error("known cause %s at %s: %s", finding.signature, finding.where, finding.evidence)
        if findings and record.error is not None:
            record.error["known_causes"] = [f.signature for f in findings]
        return findings

    def _show_causes(self, findings: list[Any]) -> None:
        for finding in findings:
            self.console.diagnosis(
                finding.signature,
                redact(finding.advice, self._secrets),
                finding.where,
                redact(finding.evidence, self._secrets),
            )

    def _finish(self, state: RunState, record: StageRecord, status: Status, started: float) -> None:
        record.status = status
        record.finished_at = now()
        record.duration_s = round(time.monotonic() - started, 3)
        self.save(state)

    def _error_record(self, exc: BaseException, log_path: Path) -> dict[str, Any]:
        message = exc.message if isinstance(exc, AutodeployError) else f"{type(exc).__name__}: {exc}"
        error: dict[str, Any] = {"type": type(exc).__name__, "message": redact(message, self._secrets)}
        if isinstance(exc, AutodeployError) and exc.hint:
            error["hint"] = redact(exc.hint, self._secrets)
        for key, value in getattr(exc, "details", {}).items():
            error[key] = redact(value, self._secrets) if isinstance(value, str) else value
        error["log"] = str(log_path.relative_to(self.run_dir))
        return error

    def _context(
        self,
        stage: Stage,
        outputs: Mapping[str, StageOutputs],
        display: StageDisplay,
        log: logging.Logger,
    ) -> StageContext:
        return StageContext(
            stage=stage.name,
            needs=stage.needs,
            config=self.config,
            pipeline_file=self.pipeline_file,
            run_dir=self.run_dir,
            log=log,
            display=display,
            outputs={n: outputs[n] for n in stage.needs if n in outputs},
            run_id=self.run_uid,
            secrets=self._secrets,
        )

    @contextlib.contextmanager
    def _stage_log(self, name: str, path: Path) -> Iterator[logging.Logger]:
        path.parent.mkdir(parents=True, exist_ok=True)
        logger = logging.getLogger(f"autodeploy.stage.{name}.{id(self)}")
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
        handler.addFilter(RedactingFilter(self._secrets))
        logger.addHandler(handler)
        try:
            yield logger
        finally:
            logger.removeHandler(handler)
            handler.close()

    def _shown(self, path: Path) -> str:
        with contextlib.suppress(ValueError):
            return str(path.relative_to(Path.cwd()))
        return str(path)

    def _resume_hint(self) -> str:
        return f"autodeploy run {self.pipeline_file}"

    # ------------------------------------------------------------------------------------ down

    def down(self) -> int:
        """Undo, in reverse order, what stages left running; safe to run twice and on a half-started run.

        Every teardown is tried even when an earlier one fails (a node that cannot be reached must not
        leave the others running); each failure is reported, and the exit code is 1 if any failed.
        """
        with self.lock():
            state = self.load()
            outputs = self.typed_outputs(state, done_only=False)
            stopped_any, failures = False, 0
            for stage in reversed(self.stages):
                record = state.record(stage.name)
                if record.status == Status.PENDING or type(stage).teardown is Stage.teardown:
                    continue
                log_path = self.run_dir / "logs" / f"{stage.name}.log"
                with (
                    self._stage_log(stage.name, log_path) as log,
                    self.console.stage_running(stage.name) as display,
                ):
                    log.info("=== %s teardown", stage.name)
                    try:
                        what = stage.teardown(self._context(stage, outputs, display, log), record)
                    except AutodeployError as exc:
                        failures += 1
                        log.error("teardown failed: %s", exc)
                        hint = f" ({exc.hint})" if exc.hint else ""
                        self.console.stage_note(
                            stage.name, redact(f"could not stop: {exc.message}{hint}", self._secrets)
                        )
                        continue
                    except Exception as exc:
                        failures += 1
                        trace = redact(traceback.format_exc(), self._secrets)
                        log.error("teardown crashed:\n%s", trace)
                        self.console.stage_note(
                            stage.name,
                            redact(f"could not stop: unexpected {type(exc).__name__}: {exc}", self._secrets),
                        )
                        continue
                record.status = Status.STOPPED
                self.save(state)
                if what:
                    stopped_any = True
                    self.console.stage_note(stage.name, f"stopped: {what}")
            if failures:
                self.console.line(
                    f"{failures} teardown(s) failed; fix what they name and run autodeploy down again",
                    "bold red",
                )
                return EXIT_FAILED
            if not stopped_any:
                self.console.line("nothing of this run is running")
            return EXIT_OK


def _quiet_logger() -> logging.Logger:
    """verify() during planning logs nowhere: planning writes nothing."""
    logger = logging.getLogger("autodeploy.plan")
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger


@contextlib.contextmanager
def _signals_raise_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP end a run like Ctrl-C: the running stage is recorded as interrupted."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _file_sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


__all__ = ["STAGES", "Decision", "Runner", "Selection", "StageError"]
