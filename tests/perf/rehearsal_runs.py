"""Run one fresh, isolated CPU rehearsal from an example pipeline file and read back its report/summary.json.

Import from another script in tests/perf:

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from rehearsal_runs import AGG, DISAGG, run_rehearsal, level_rows, print_table

    summary = run_rehearsal(AGG, "my-check", {"benchmark": {"requests_per_concurrency": 5}})
    print_table(level_rows(summary))

Each rehearsal gets its own name, work directory (<root>/<name>, run directory inside it) and free ports for
the frontend, etcd and NATS, so it never meets another run's state or processes; `autodeploy down` always
runs afterwards. The machine has 2 CPU cores: run one rehearsal at a time.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DISAGG = REPO / "examples" / "rehearsal.yaml"
AGG = REPO / "examples" / "rehearsal-agg.yaml"
EXAMPLES = {"agg": AGG, "disagg": DISAGG}
AUTODEPLOY = REPO / ".venv" / "bin" / "autodeploy"
# Absolute, with no resolve(): a venv's python is a symlink to the base interpreter, and Dynamo must run
# with the venv's site-packages.
DYNAMO_PYTHON = REPO / ".venv-dynamo" / "bin" / "python"
PERF_ROOT = Path("/tmp/autodeploy-perf")
LOG_TAIL_LINES = 40

# The metrics compared, as summary.json's levels name them: (key, column label, format of a value).
METRICS: tuple[tuple[str, str, str], ...] = (
    ("ttft_ms", "TTFT ms", "{:.1f}"),
    ("tpot_ms", "TPOT ms", "{:.3f}"),
    ("tokens_per_s_per_gpu", "tok/s/gpu", "{:.2f}"),
)
# How summarize.compare defines a level's error; the table header says it.
ERROR_DEFINITION = "error = measured / predicted − 1 (positive: measured above predicted)"


class RehearsalError(RuntimeError):
    """`autodeploy run` failed (or wrote no summary); the message ends with the log's tail."""


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `overrides` merged in: mappings merge key by key, anything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports the kernel calls free now (bound to port 0 together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def model_path(pipeline: Mapping[str, Any]) -> Path:
    """The pipeline's model directory (the examples' tokenizer-only model that `make demo` creates)."""
    return Path(pipeline["model"]["path"])


def require_model(example: Path) -> None:
    """Exit 2 with one line when the example's model directory is missing (`make demo` creates it)."""
    path = model_path(yaml.safe_load(example.read_text()))
    if not (path / "config.json").is_file():
        sys.stderr.write(f"{path} is missing: run `make demo` once (it creates it), then retry\n")
        raise SystemExit(2)


@dataclass(frozen=True)
class RehearsalPaths:
    """Where one rehearsal keeps its files."""

    name: str
    work_dir: Path
    run_dir: Path
    pipeline: Path
    log: Path
    down_log: Path


def isolated_pipeline(
    example: Path, name: str, overrides: Mapping[str, Any] | None = None, *, root: Path = PERF_ROOT
) -> tuple[dict[str, Any], RehearsalPaths]:
    """The example pipeline with `overrides` merged in, made isolated: the name `name`, cluster.work_dir
    and run_dir under <root>/<name>, free ports for the frontend, etcd and NATS (native), and the absolute
    path of Dynamo's python. The isolation keys are set last, so overrides cannot undo them."""
    pipeline = deep_merge(yaml.safe_load(example.read_text()), overrides or {})
    work_dir = root / name
    run_dir = work_dir / "run"
    frontend, etcd, etcd_peer, nats, nats_monitor = free_ports(5)
    pipeline = deep_merge(
        pipeline,
        {
            "name": name,
            "run_dir": str(run_dir),
            "cluster": {"work_dir": str(work_dir / "nodes")},
            "dynamo": {"frontend_port": frontend},
            "infra": {
                "runtime": "native",
                "etcd_port": etcd,
                "etcd_peer_port": etcd_peer,
                "nats_port": nats,
                "nats_monitor_port": nats_monitor,
            },
            "launch": {"python": str(DYNAMO_PYTHON)},
        },
    )
    paths = RehearsalPaths(
        name=name,
        work_dir=work_dir,
        run_dir=run_dir,
        pipeline=work_dir / "pipeline.yaml",
        log=work_dir / "autodeploy.log",
        down_log=work_dir / "down.log",
    )
    return pipeline, paths


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of the log (empty when it does not exist)."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def _autodeploy(args: list[str], log: Path, timeout_s: float | None = None) -> int:
    """Run the CLI with stdout and stderr appended to `log`; its exit status."""
    with log.open("a") as out:
        out.write(f"\n$ autodeploy {' '.join(args)}\n")
        out.flush()
        # PYTHONUNBUFFERED: the log shows progress as it happens, and its tail is complete on failure.
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        completed = subprocess.run(
            [str(AUTODEPLOY), *args],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=timeout_s,
            check=False,
        )
    return completed.returncode


def run_rehearsal(
    example: Path,
    name: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    stages_to: str | None = None,
    root: Path = PERF_ROOT,
    keep: bool = True,
    unique: bool = True,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Run one fresh rehearsal of `example` (examples/rehearsal.yaml: disagg, rehearsal-agg.yaml: agg) with
    `overrides` deep-merged into it, and return its report/summary.json.

    The run is named `name` plus a random suffix (unless unique=False; an old work directory of that name
    is removed first) and lives in <root>/<name>: pipeline.yaml, autodeploy.log (the run's output),
    down.log, run/ (the run directory) and nodes/ (cluster.work_dir). `autodeploy run` runs the whole
    pipeline, or up to `stages_to` (`--to`); `autodeploy down` runs afterwards whatever happens (failure,
    timeout, Ctrl-C), so no process is left behind. keep=False removes the work directory after a
    successful run.

    The returned dict is summary.json (empty when `stages_to` stops before summarize) plus a "rehearsal"
    entry: {name, work_dir, run_dir, pipeline, log, down_log, wall_s}. Raises RehearsalError with the
    log's tail when the run fails; exits 2 when the example's model directory is missing (`make demo`).
    """
    require_model(example)
    if unique:
        name = f"{name}-{uuid.uuid4().hex[:6]}"
    pipeline, paths = isolated_pipeline(example, name, overrides, root=root)
    if paths.work_dir.exists():
        shutil.rmtree(paths.work_dir)
    paths.work_dir.mkdir(parents=True)
    paths.pipeline.write_text(yaml.safe_dump(pipeline, sort_keys=False))

    args = ["run", str(paths.pipeline)]
    if stages_to is not None:
        args += ["--to", stages_to]
    started = time.monotonic()
    try:
        status = _autodeploy(args, paths.log, timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise RehearsalError(
            f"rehearsal {name} ran past {timeout_s} s; log {paths.log}:\n{log_tail(paths.log)}"
        ) from exc
    finally:
        # Also after Ctrl-C: subprocess.run has killed the CLI by then, not the workers it started.
        # Its own log, so that the run's log ends where the run failed.
        down = _autodeploy(["down", str(paths.pipeline)], paths.down_log, timeout_s=300)
        if down != 0:
            sys.stderr.write(f"warning: `autodeploy down` of {name} exited {down}; see {paths.down_log}\n")
    wall_s = time.monotonic() - started
    if status != 0:
        raise RehearsalError(
            f"rehearsal {name} failed (exit {status}); log {paths.log}:\n{log_tail(paths.log)}"
        )

    summary_file = paths.run_dir / "report" / "summary.json"
    if summary_file.is_file():
        summary: dict[str, Any] = json.loads(summary_file.read_text())
    elif stages_to is None:
        raise RehearsalError(f"rehearsal {name} wrote no {summary_file}; log tail:\n{log_tail(paths.log)}")
    else:
        summary = {}
    summary["rehearsal"] = {**{k: str(v) for k, v in asdict(paths).items()}, "wall_s": wall_s}
    if not keep:
        shutil.rmtree(paths.work_dir, ignore_errors=True)
    return summary


def level_rows(summary: Mapping[str, Any], **labels: Any) -> list[dict[str, Any]]:
    """One row per level of a summary: `labels` (e.g. mode, run), concurrency, whether it is the design
    level, the client's saturation reason (its errors are then None), and per metric of METRICS the
    measured and predicted values and the error in % (measured / predicted − 1; None when not reported)."""
    design = summary.get("design_concurrency")
    rows = []
    for level in summary.get("levels", []):
        row: dict[str, Any] = {
            **labels,
            "concurrency": level["concurrency"],
            "design": level["concurrency"] == design,
            "saturated": level.get("saturated"),
        }
        for key, _, _ in METRICS:
            error = level["error"].get(key)
            row[f"{key}_measured"] = level["measured"].get(key)
            row[f"{key}_predicted"] = level["predicted"].get(key)
            row[f"{key}_error_pct"] = None if error is None else 100.0 * error
        rows.append(row)
    return rows


def _cell(value: Any, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def format_table(rows: Iterable[Mapping[str, Any]], labels: Iterable[str] = ()) -> str:
    """Plain aligned text: the label columns, concurrency (* the design level), then per metric measured,
    predicted and error %; a header line states how the error is defined."""
    labels = list(labels)
    header = [*labels, "conc"]
    for _, label, _ in METRICS:
        header += [f"{label} meas", "pred", "err %"]
    body = []
    for row in rows:
        line = [str(row.get(label, "")) for label in labels]
        line.append(f"{row['concurrency']}{'*' if row.get('design') else ''}")
        for key, _, fmt in METRICS:
            line += [
                _cell(row[f"{key}_measured"], fmt),
                _cell(row[f"{key}_predicted"], fmt),
                _cell(row[f"{key}_error_pct"], "{:+.2f}"),
            ]
        if row.get("saturated"):
            line.append(f"(client saturated: {row['saturated']})")
        body.append(line)
    widths = [max(len(cells[i]) for cells in [header, *body] if i < len(cells)) for i in range(len(header))]

    def render(cells: list[str]) -> str:
        shown = [cell.rjust(widths[i]) if i < len(widths) else cell for i, cell in enumerate(cells)]
        return "  ".join(shown).rstrip()

    lines = [ERROR_DEFINITION + "; * = design concurrency", render(header)]
    lines += [render(cells) for cells in body]
    return "\n".join(lines)


def print_table(rows: Iterable[Mapping[str, Any]], labels: Iterable[str] = ()) -> None:
    """Print format_table(rows, labels)."""
    print(format_table(rows, labels), flush=True)
