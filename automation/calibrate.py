"""`autodeploy calibrate`: measured points from rows and finished runs, fitted per system, written as a calibration."""

from __future__ import annotations

import datetime
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from automation import __version__
from automation.bench.metrics import REPORTED_METRICS
from automation.errors import InputError
from automation.perfmodel.calibration import CalibrationFile, Fit, Observation, Source, fit_system

# The level files' measured means, as summarize reads them.
MEASURED_KEYS = {m.key: m.measured_key for m in REPORTED_METRICS}
TTFT_KEY, TPOT_KEY = MEASURED_KEYS["ttft_ms"], MEASURED_KEYS["tpot_ms"]


@dataclass
class Gathered:
    """The points of one source, and why the others were left out (reason → count)."""

    source: Source
    observations: list[Observation]
    skipped: dict[str, int] = field(default_factory=dict)


def _skip(skipped: dict[str, int], reason: str) -> None:
    skipped[reason] = skipped.get(reason, 0) + 1


def from_run(run_dir: Path) -> Gathered:
    """A finished run's measured levels as points: its deployed plan (without the calibration it may
    have planned with: a calibration is always relative to the shipped fit) at each measured
    concurrency, with the benchmark's method and the serving stack that ran (summarize.prediction_setting).

    Left out: request-rate levels (not a closed loop of c users), levels a saturated client measured,
    and levels with failed requests.

    Raises:
        InputError: not a run directory, or no finished configure and benchmark.
    """
    from automation.perfmodel.queueing import DEFAULT_METHOD
    from automation.report import read_run
    from automation.stages.summarize import prediction_setting

    record = read_run(run_dir)
    method, stack = prediction_setting(record.config)
    plan = replace(record.configure.plan, calibration="")
    out: list[Observation] = []
    skipped: dict[str, int] = {}
    for relative, document in record.documents():
        summary = document.get("summary") or {}
        if (
            document.get("method", {}).get("mode", "concurrency") != "concurrency"
            or "concurrency" not in summary
        ):
            _skip(skipped, "request-rate level (not a closed loop)")
            continue
        saturation = (document.get("client") or {}).get("saturation") or {}
        if saturation.get("saturated"):
            _skip(skipped, "measured by a saturated client")
            continue
        if summary.get("errors"):
            _skip(skipped, "level with failed requests")
            continue
        ttft = (summary.get(TTFT_KEY) or {}).get("avg")
        tpot = (summary.get(TPOT_KEY) or {}).get("avg")
        if not ttft or not tpot:
            _skip(skipped, "level without TTFT or TPOT")
            continue
        out.append(
            Observation(
                plan=plan,
                concurrency=float(summary["concurrency"]),
                ttft_ms=float(ttft),
                tpot_ms=float(tpot),
                method=method or DEFAULT_METHOD,
                stack=stack,
                source=f"{run_dir}/{relative}",
            )
        )
    return Gathered(
        Source(path=str(run_dir), kind="run", points=len(out), skipped=sum(skipped.values())), out, skipped
    )


def from_rows(path: Path) -> Gathered:
    """The rows of a measured silicon table (the columns `estimate --rows` reads) as points: each row the
    model can predict, at its concurrency, against its silicon_ttft_ms and silicon_tpot_ms. A row the
    model gives no prediction (estimate --rows's reasons) or without both measurements is left out."""
    from automation.perfmodel.rows import predictor, read_rows

    rows = read_rows(path)
    out: list[Observation] = []
    skipped: dict[str, int] = {}
    with predictor() as rows_predictor:
        for row in rows:
            try:
                ttft, tpot = float(row.get("silicon_ttft_ms") or 0), float(row.get("silicon_tpot_ms") or 0)
            except ValueError:
                ttft = tpot = 0.0
            if ttft <= 0 or tpot <= 0:
                _skip(skipped, "no measured TTFT and TPOT")
                continue
            result = rows_predictor.predict(row)
            if result.error or result.row_plan is None:
                _skip(skipped, result.kind or "not predicted")
                continue
            rp = result.row_plan
            out.append(
                Observation(
                    plan=rp.plan,
                    concurrency=float(rp.concurrency),
                    ttft_ms=ttft,
                    tpot_ms=tpot,
                    source=f"{path}#{row.get('id', '')}",
                    method=rp.method,
                )
            )
    return Gathered(
        Source(path=str(path), kind="rows", points=len(out), skipped=sum(skipped.values())), out, skipped
    )


def gather(sources: Sequence[Path]) -> list[Gathered]:
    """Points of every source: a directory is a run directory, a file a measured-rows CSV.

    Raises:
        InputError: a source that is neither, named with what to pass.
    """
    if not sources:
        raise InputError(
            "calibrate needs at least one source", hint="autodeploy calibrate RUN_DIR|ROWS.csv ... --out FILE"
        )
    out = []
    for source in sources:
        if source.is_dir():
            out.append(from_run(source))
        elif source.is_file():
            out.append(from_rows(source))
        else:
            raise InputError(
                f"{source}: no such run directory or rows file",
                hint="pass run directories (autodeploy-runs/<name>) or measured-rows CSVs",
            )
    return out


def fit_all(
    gathered: Sequence[Gathered],
    systems: Sequence[str] = (),
    progress: Callable[[str], None] = lambda _: None,
) -> list[Fit]:
    """One fit per system among the points (only `systems` when named), in name order.

    Raises:
        InputError: no points at all, a named system without points, or a fit calibration refuses.
    """
    by_system: dict[str, list[Observation]] = defaultdict(list)
    for g in gathered:
        for obs in g.observations:
            by_system[obs.plan.system].append(obs)
    wanted = [s.strip().lower() for s in systems] or sorted(by_system)
    if not by_system:
        raise InputError(
            "calibrate: the sources gave no measured point the model can predict",
            hint="pass finished runs (with a benchmark) or rows `autodeploy estimate --rows` predicts",
        )
    fits = []
    for system in wanted:
        if system not in by_system:
            raise InputError(
                f"calibrate: no measured point of system '{system}' in the sources (they have: "
                f"{', '.join(sorted(by_system))})",
                hint="drop --system, or add measurements of that system",
            )
        progress(f"fitting {system} on {len(by_system[system])} points")
        fits.append(fit_system(system, by_system[system]))
    return fits


def calibration_file(gathered: Sequence[Gathered], fits: Sequence[Fit]) -> CalibrationFile:
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    return CalibrationFile(
        created=now.isoformat().replace("+00:00", "Z"),
        autodeploy=__version__,
        sources=[g.source for g in gathered],
        systems={f.system: f.to_model() for f in fits},
    )


def write(path: Path, data: CalibrationFile) -> None:
    """The calibration as YAML behind a comment that says what it is and how to use it (atomically).

    Raises:
        InputError: the file cannot be written.
    """
    import yaml

    from automation.state import write_atomic

    header = (
        "# An autodeploy calibration: per GPU system, factors on the performance model's prefill and decode\n"
        "# steps and an extra fixed cost per request, fitted to measurements (sources), with the model's\n"
        "# errors on them before and after (percent, measured/predicted - 1). Written by\n"
        "# `autodeploy calibrate`; use it with `perfmodel: {calibration: THIS_FILE}` in a pipeline, or\n"
        "# --calibration on configure and estimate. Re-run calibrate rather than editing it.\n"
    )
    body = yaml.safe_dump(data.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    try:
        write_atomic(path, header + body)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}", hint="check the --out path") from None


def table_rows(fits: Sequence[Fit]) -> list[list[Any]]:
    """Per system: points, factors, and TTFT/TPOT |error| "median/p90 before → after", in percent."""

    def change(before: tuple[float, float], after: tuple[float, float]) -> str:
        return f"{before[0]:.0f}/{before[1]:.0f} → {after[0]:.0f}/{after[1]:.0f}"

    out = []
    for f in fits:
        b, a = f.before, f.after
        out.append(
            [
                f.system,
                len(f.observations),
                f"{f.params['prefill_scale']:.3f}",
                f"{f.params['decode_scale']:.3f}",
                f"{f.params['extra_request_ms']:+.1f}",
                change((b.ttft_median_abs, b.ttft_p90_abs), (a.ttft_median_abs, a.ttft_p90_abs)),
                change((b.tpot_median_abs, b.tpot_p90_abs), (a.tpot_median_abs, a.tpot_p90_abs)),
            ]
        )
    return out


# Short headers, so that the table fits an 80-column terminal. Errors: |measured/predicted − 1| in %.
TABLE_COLUMNS = ["system", "n", "prefill", "decode", "+ms", "TTFT % med/p90", "TPOT % med/p90"]
