"""The run's state file: what each stage did, written atomically after every transition."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from automation import __version__
from automation.errors import InputError, StateError

SCHEMA_VERSION = 2  # 2: run_uid
STATE_FILE = "state.json"


class Status(StrEnum):
    PENDING = "pending"
    RUNNING = "running"  # left behind only by a runner that was killed; treated as not done
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    STOPPED = "stopped"  # torn down by `autodeploy down`; runs again on the next `run`


class StageRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Status = Status.PENDING
    fingerprint: str | None = None
    # Digest of each part of the fingerprint (settings, and each needed stage's outputs): says what changed.
    input_digests: dict[str, str] = Field(default_factory=dict)
    attempts: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    outputs: dict[str, Any] = Field(default_factory=dict)
    error: dict[str, Any] | None = None
    log: str | None = None

    @property
    def done(self) -> bool:
        return self.status == Status.DONE


class RunState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    run_id: str  # the pipeline's name
    # Unique to this run directory, made once: names the run's remote directory, containers and etcd
    # member, so that two run directories of one pipeline never touch each other's processes.
    run_uid: str = ""
    pipeline_file: str
    pipeline_sha256: str
    autodeploy_version: str = __version__
    created_at: str = Field(default_factory=lambda: now())
    updated_at: str = Field(default_factory=lambda: now())
    stages: dict[str, StageRecord] = Field(default_factory=dict)

    def record(self, stage: str) -> StageRecord:
        return self.stages.setdefault(stage, StageRecord())


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def load_run_directory(run_dir: Path) -> RunState:
    """The state of a finished or running run directory, for commands that read one (report, compare).

    Raises:
        InputError: the path is not a directory, or holds no state file.
        StateError: the state file is unreadable (see load_state).
    """
    if not run_dir.is_dir():
        raise InputError(
            f"{run_dir}: no such run directory",
            hint="pass a run directory, e.g. autodeploy-runs/<name> (autodeploy status lists them)",
        )
    state = load_state(run_dir / STATE_FILE)
    if state is None:
        raise InputError(
            f"{run_dir}: not a run directory (no {STATE_FILE})",
            hint="pass the directory a run wrote, e.g. autodeploy-runs/<name> (autodeploy status lists them)",
        )
    return state


def load_state(path: Path) -> RunState | None:
    """Read a state file; None when there is none yet.

    Raises:
        StateError: the file is not valid JSON, does not match the schema, or was written by a newer
            autodeploy. The file is left untouched so nothing recorded is lost.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateError(
            f"{path}: the state file is not valid JSON (line {exc.lineno}: {exc.msg}); it was left as it is",
            hint=f"repair it, or move it away to start the run afresh: mv {path} {path}.bad",
        ) from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if not isinstance(version, int):
        raise StateError(
            f"{path}: not an autodeploy state file (no schema_version); it was left as it is",
            hint=f"move it away to start afresh: mv {path} {path}.bad",
        )
    if version > SCHEMA_VERSION:
        raise StateError(
            f"{path}: written by a newer autodeploy (state schema {version}, this one reads {SCHEMA_VERSION})",
            hint="upgrade autodeploy (pip install -U autodeploy) to resume this run",
        )
    try:
        return RunState.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise StateError(
            f"{path}: the state file is damaged at {where}: {first['msg']}; it was left as it is",
            hint=f"move it away to start afresh: mv {path} {path}.bad",
        ) from None


def save_state(path: Path, state: RunState) -> None:
    """Write the state atomically: a temp file in the same directory, fsync, rename, fsync the directory.

    A reader (or a runner killed at any instant) sees either the previous file or the new one, never a mix.
    """
    state.updated_at = now()
    write_atomic(path, state.model_dump_json(indent=2) + "\n")


def write_atomic(path: Path, text: str) -> None:
    """Replace path's content with text so that no reader ever sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
