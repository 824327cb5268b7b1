"""The report a person reads first: report/summary.md and its plots, rendered from a run's recorded data."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automation.bench.metrics import REPORTED_METRICS
from automation.errors import InputError

if TYPE_CHECKING:
    from automation.config import PipelineConfig
    from automation.contracts import BenchmarkOutputs, CheckpointOutputs, ConfigureOutputs, OutputsT
    from automation.state import RunState

# (prediction field, measured key in a level summary, label, unit, format)
METRICS = REPORTED_METRICS
# Writes one text file of the run directory (path relative to it) with every secret masked, as
# StageContext.write_text does: the stage and `autodeploy report` hand it the same way.
WriteText = Callable[[str, str], Path]
# How a level measured by a saturated client is shown instead of its numbers.
SATURATED = "client saturated — not reported"
# PNG metadata matplotlib would otherwise stamp (its version): left out so that re-rendering a run with
# another matplotlib still writes the same bytes where the pixels are the same.
PNG_METADATA: dict[str, str | None] = {"Software": None}
PLOT_DPI = 110
# The plots drawn only when the levels record their data (GPU samples).
OPTIONAL_PLOTS = ("gpu_telemetry.png",)


@dataclass(frozen=True)
class RunRecord:
    """What a run directory records that the report is made from.

    The summarize stage builds it from its context; `autodeploy report` reads it from the run's files
    (read_run). Either way summarize.write_report turns it into the same report/.
    """

    run_dir: Path
    config: PipelineConfig
    configure: ConfigureOutputs
    benchmark: BenchmarkOutputs
    # The checkpoint stage's outputs (the model's commit), None when it has not finished.
    checkpoint: CheckpointOutputs | None = None
    # The calibration the configure stage planned with, when its outputs say.
    calibration: Any = None

    def documents(self) -> list[tuple[str, dict[str, Any]]]:
        """(file relative to the run directory, content) of every measured level (bench/c<N>.json, and
        bench/r<rate>.json in request-rate mode), in the sweep's order.

        Raises:
            InputError: no level was measured, or a level file is missing or not JSON.
        """
        if not self.benchmark.files:
            raise InputError(
                f"{self.run_dir}: the benchmark recorded no measured level; nothing to report",
                hint="measure again: autodeploy run PIPELINE --from benchmark",
            )
        documents = []
        for relative in self.benchmark.files.values():
            path = self.run_dir / relative
            try:
                document = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise InputError(
                    f"{path}: not a readable level file ({type(exc).__name__}: {exc})",
                    hint="measure the level again: autodeploy run PIPELINE --from benchmark",
                ) from None
            documents.append((relative, document))
        return documents

    def search(self) -> dict[str, Any]:
        """configure/search.json (the predicted frontiers of every mode); {} when the run has none."""
        path = self.run_dir / "configure" / "search.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


def read_run(run_dir: Path) -> RunRecord:
    """The report's inputs from the run directory's files alone: state.json and pipeline.resolved.yaml.

    Nothing is asked of the deployment or the network. Outputs recorded by another autodeploy version
    are read for the fields this one knows: the report renders what is there.

    Raises:
        InputError: not a run directory, no finished benchmark, or no resolved pipeline file.
        ConfigError: pipeline.resolved.yaml does not validate.
    """
    from automation.config import load_pipeline
    from automation.contracts import BenchmarkOutputs, CheckpointOutputs, ConfigureOutputs
    from automation.state import STATE_FILE, load_run_directory

    state = load_run_directory(run_dir)
    benchmark_raw = _finished_outputs(run_dir, state, "benchmark")
    configure_raw = _finished_outputs(run_dir, state, "configure")
    resolved = run_dir / "pipeline.resolved.yaml"
    if not resolved.is_file():
        raise InputError(
            f"{run_dir}: no pipeline.resolved.yaml (the settings the run used)",
            hint=f"run any stage once to write it: autodeploy run {state.pipeline_file} --only summarize",
        )
    checkpoint_record = state.stages.get("checkpoint")
    checkpoint = (
        _known_fields(CheckpointOutputs, checkpoint_record.outputs)
        if checkpoint_record is not None and checkpoint_record.done
        else None
    )
    configure = _known_fields(ConfigureOutputs, configure_raw)
    benchmark = _known_fields(BenchmarkOutputs, benchmark_raw)
    if configure is None or benchmark is None:
        raise InputError(
            f"{run_dir}/{STATE_FILE}: the configure or benchmark outputs are unreadable",
            hint=f"measure again: autodeploy run {state.pipeline_file} --from benchmark",
        )
    return RunRecord(
        run_dir=run_dir,
        config=load_pipeline(resolved),
        configure=configure,
        benchmark=benchmark,
        checkpoint=checkpoint,
        calibration=configure_raw.get("calibration"),
    )


def _finished_outputs(run_dir: Path, state: RunState, stage: str) -> dict[str, Any]:
    record = state.stages.get(stage)
    if record is None or not record.done or not record.outputs:
        status = record.status.value if record is not None else "not started"
        raise InputError(
            f"{run_dir}: no finished {stage} (the {stage} stage is {status}); nothing to report",
            hint=f"run it first: autodeploy run {state.pipeline_file} --to benchmark",
        )
    return record.outputs


def _known_fields(kind: type[OutputsT], raw: Mapping[str, Any]) -> OutputsT | None:
    from automation.contracts import recorded

    return recorded(kind, {key: value for key, value in raw.items() if key in kind.model_fields})


def run_dir_writer(record: RunRecord) -> WriteText:
    """A writer into the run directory that masks the secrets a stage would mask (StageContext.write_text)."""
    from automation.redact import secret_values, write_redacted

    secrets = secret_values(record.config)

    def write(relative: str, text: str) -> Path:
        path = record.run_dir / relative
        write_redacted(path, text, secrets)
        return path

    return write


def render(record: RunRecord, summary: Mapping[str, Any], write_text: WriteText) -> list[str]:
    """Write report/summary.md and the plots from summary.json's content; returns their names in report/,
    summary.md first."""
    directory = record.run_dir / "report"
    directory.mkdir(parents=True, exist_ok=True)
    plots = render_plots(record, summary, directory)
    # A plot an earlier rendering drew from data the record no longer has would contradict summary.md.
    for stale in set(OPTIONAL_PLOTS) - set(plots):
        (directory / stale).unlink(missing_ok=True)
    write_text("report/summary.md", markdown(record, summary, plots))
    return ["summary.md", *plots]


# ------------------------------------------------------------------------------------- markdown


def percent(value: float | None) -> str:
    """A relative error or change as a signed percentage; – when unknown."""
    return "–" if value is None else f"{value * 100:+.1f}%"


def _number(value: Any, fmt: str = "{:.1f}") -> str:
    return "–" if value is None else fmt.format(value)


def _table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def markdown(record: RunRecord, summary: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    """summary.md: the run's facts, measured against predicted per level, then each section the level
    files give data for (goodput, the client, client against server, prompt cache, two clients, GPU
    telemetry), then aiconfigurator's prediction and the baseline when the summary has them."""
    rows: list[dict[str, Any]] = summary["rows"]
    text = "\n".join(
        _head(record.config, summary)
        + _run_facts(summary["run"])
        + _measured(rows, summary.get("error_statistics"))
        + _plots(plots)
    )
    text += "\n"
    for section in (_goodput, _client, _server, _cache, _two_clients, _telemetry):
        lines = section(rows)
        if lines:
            text += "\n".join(["", *lines]) + "\n"
    if "aiconfigurator" in summary:
        compared = summary["aiconfigurator"]
        text += aiconfigurator_markdown((compared["directory"], compared["compared"]), rows)
    if "baseline" in summary:
        text += baseline_markdown(summary["baseline"]["directory"], rows)
    return text


def _head(config: PipelineConfig, summary: Mapping[str, Any]) -> list[str]:
    lines = [
        f"# {config.name}: measured against predicted",
        "",
        f"{config.model.served_name} on {config.search.total_gpus} × {config.system}, "
        f"ISL {config.workload.isl}, OSL {config.workload.osl}; SLA TTFT ≤ {config.sla.ttft_ms:g} ms, "
        f"TPOT ≤ {config.sla.tpot_ms:g} ms.",
        f"Deployed: {summary['run']['plan']}. Design concurrency (predicted): {summary['design_concurrency']}.",
    ]
    stopped = summary.get("stopped")
    if stopped:
        where = f" at {stopped['level']}" if stopped.get("level") else ""
        lines.append(f"**The sweep stopped early{where}: {stopped['reason']}.**")
    return [*lines, ""]


def _shown(value: Any) -> str:
    """A run fact that may differ between levels ({"c1": v, ...}) or be unrecorded (None)."""
    if value is None:
        return "not recorded"
    if isinstance(value, dict):
        groups: dict[str, list[str]] = {}
        for level, each in value.items():
            groups.setdefault(_shown(each), []).append(level)
        return "; ".join(f"{shown} ({', '.join(levels)})" for shown, levels in groups.items())
    return str(value)


def _run_facts(run: Mapping[str, Any]) -> list[str]:
    versions = run["versions"]
    trtllm = versions["trtllm"] or f"the one Dynamo {versions['dynamo']} ships"
    clients = [
        f"{c['name']} {c.get('version') or '(version not recorded)'}"
        + (f", {c['processes']} process(es)" if c.get("processes") else "")
        for c in run["clients"]
    ]
    model = run["model"]
    if model.get("repo"):
        where = f"hub commit {model['revision']}" + (
            f" of {model['repo']}" if model["repo"] != model["hf_id"] else ""
        )
    else:
        where = model["revision"]
    facts = [
        (
            "versions",
            f"Dynamo {versions['dynamo']}, TensorRT-LLM {trtllm}, autodeploy {versions['autodeploy']}",
        ),
        ("benchmark client", "; ".join(clients) or "not recorded"),
        ("model", f"{model['hf_id']}: {where}"),
        ("seed", _seed(run)),
        ("endpoint", _shown(run["endpoint"])),
        ("warm-up", _shown(run["warmup"])),
        ("load", _shown(run["load"])),
        ("deployed config", f"{run['plan']} (picked by {run['plan_source']})"),
    ]
    if run.get("chat_template_tokens") is not None:
        facts.append(("chat template tokens", _shown(run["chat_template_tokens"])))
    if run.get("calibration") is not None:
        calibration = run["calibration"]
        shown = calibration if isinstance(calibration, str) else json.dumps(calibration, sort_keys=True)
        facts.append(("calibration in force", shown))
    if run.get("mocker_speed") is not None:
        facts.append(("rehearsal mocker speed", _shown(run["mocker_speed"])))
    return ["## The run", "", *_table(["fact", "value"], facts), ""]


def _seed(run: Mapping[str, Any]) -> str:
    level_seeds = run.get("level_seeds")
    if level_seeds is None or level_seeds == run["seed"]:
        return str(run["seed"])
    if isinstance(level_seeds, dict):
        derived = ", ".join(f"{level} {seed}" for level, seed in level_seeds.items())
    else:
        derived = f"{level_seeds} at every level"
    return f"{run['seed']} (the levels derive theirs: {derived})"


def _measured(rows: Sequence[Mapping[str, Any]], statistics: Mapping[str, Any] | None) -> list[str]:
    head = [
        "## Measured against predicted",
        "",
        "Measured values are means over the measured requests of each level (aiperf definitions: TPOT is "
        "(latency − TTFT)/(OSL − 1) per request; tokens/s/gpu is output tokens per second over the GPUs "
        "serving; tokens/s/user is the mean of 1/TPOT). Error = measured / predicted − 1.",
        "",
    ]
    columns = ["concurrency"]
    for _key, _, label, unit, _ in METRICS:
        suffix = f" ({unit})" if unit else ""
        columns += [f"{label}{suffix} measured", "predicted", "error"]
    cells = []
    for row in rows:
        saturated = row.get("saturated")
        line = [level_label(row) + (f" ({SATURATED})" if saturated else "")]
        for key, _, _, _, fmt in METRICS:
            measured = None if saturated else row[f"{key}_measured"]
            line += [
                _number(measured, fmt),
                fmt.format(row[f"{key}_predicted"]),
                percent(row[f"{key}_error"]),
            ]
        cells.append(line)
    return head + _table(columns, cells) + _error_statistics(statistics)


def _error_statistics(statistics: Mapping[str, Any] | None) -> list[str]:
    if not statistics:
        return []
    levels = ", ".join(statistics["levels"])
    if levels:
        means = ", ".join(
            f"{label} {_number(statistics['mean_abs_error'].get(key), '{:.1%}')}"
            for key, _, label, _, _ in METRICS
        )
        line = f"Mean |error| over {levels}: {means}."
    else:
        line = "No level is in the error statistics: every one saturated its client."
    left_out = "; ".join(f"{x['level']} ({x['reason']})" for x in statistics["left_out"])
    return ["", line + (f" Left out: {left_out}." if left_out else "")]


def _plots(plots: Sequence[str]) -> list[str]:
    return ["", *(f"![{name.removesuffix('.png')}]({name})" for name in plots)] if plots else []


def _goodput(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    measured = [row for row in rows if row.get("goodput")]
    if not measured:
        return []
    first = measured[0]["goodput"]
    cells = []
    for row in rows:
        entry = row.get("goodput")
        if not entry:
            cells.append([level_label(row), "not recorded", "–", "–"])
            continue
        cells.append(
            [
                level_label(row) + (f" ({SATURATED})" if row.get("saturated") else ""),
                f"{entry['requests']} of {row['requests']}",
                _number(entry.get("share"), "{:.1%}"),
                _number(entry.get("rate_per_s"), "{:.3f}"),
            ]
        )
    return [
        "## Goodput",
        "",
        f"Requests that met both SLA limits (TTFT ≤ {first['ttft_limit_ms']:g} ms and TPOT ≤ "
        f"{first['tpot_limit_ms']:g} ms; a failed request never does): their share of the measured "
        "requests, and their rate over the level's duration.",
        "",
        *_table(["concurrency", "requests meeting the SLA", "share", "goodput (requests/s)"], cells),
    ]


def _client(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not any(row.get("client") for row in rows):
        return []
    cells = []
    for row in rows:
        client = row.get("client") or {}
        saturation = client.get("saturation") or {}
        if row.get("saturated"):
            verdict = f"**{SATURATED}**: {row['saturated']}"
        elif saturation:
            verdict = "not saturated"
        else:
            verdict = "not recorded"
        cells.append(
            [
                level_label(row),
                f"{client.get('name', '–')} {client.get('version', '')}".strip(),
                _number(client.get("processes"), "{}"),
                _number(saturation.get("cpu_share"), "{:.0%}"),
                _number(saturation.get("loop_lag_p99_ms"), "{:.1f}"),
                verdict,
            ]
        )
    return [
        "## The benchmark client",
        "",
        "A client that runs out of CPU, or whose event loop lags, times requests late: a saturated level "
        "is not reported, and is left out of the error statistics.",
        "",
        *_table(
            ["concurrency", "client", "processes", "CPU share", "event-loop lag p99 (ms)", "verdict"], cells
        ),
    ]


def _server(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not any(row.get("server") for row in rows):
        return []
    cells, flagged = [], []
    for row in rows:
        c = level_label(row)
        server = row.get("server")
        client_ttft, client_itl = row["ttft_ms_measured"], row["tpot_ms_measured"]
        if not server or server.get("error"):
            why = f"scrape failed: {server['error']}" if server else "not recorded"
            cells.append(
                [c, _number(client_ttft), why, "–", _number(client_itl, "{:.2f}"), "–", "–", "–", "–"]
            )
            continue
        gaps = server.get("gaps") or {}
        flags = list(server.get("flags") or [])
        flagged += [f"- {row['level']}: {flag}" for flag in flags]
        cells.append(
            [
                c,
                _number(client_ttft),
                _number(server.get("ttft_ms")),
                percent(gaps.get("ttft")),
                _number(client_itl, "{:.2f}"),
                _number(server.get("itl_ms"), "{:.2f}"),
                percent(gaps.get("itl")),
                f"{_number(server.get('queued_max'), '{:g}')} / {_number(server.get('inflight_max'), '{:g}')}",
                str(len(flags)) if flags else "–",
            ]
        )
    columns = [
        "concurrency",
        "TTFT client (ms)",
        "TTFT server (ms)",
        "gap",
        "ITL client (ms)",
        "ITL server (ms)",
        "gap",
        "queued / in flight (max)",
        "flags",
    ]
    return [
        "## Client against server",
        "",
        "The server's means are the frontend's own (/metrics over the level's window: Δ sum / Δ count); "
        "gap = client / server − 1.",
        "",
        *_table(columns, cells),
        *(["", "Flags:", "", *flagged] if flagged else []),
    ]


def _cache(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not any(row.get("cache") for row in rows):
        return []
    cells = []
    for row in rows:
        cache = row.get("cache") or {}
        reused = cache.get("reused")
        verdict = {
            True: "**REUSED**: prompt tokens were served from cache; TTFT is not a cold prefill",
            False: "no prompt token served from cache",
            None: "not recorded (no cached-token count was reported)",
        }[reused]
        cells.append(
            [
                level_label(row),
                _number(cache.get("client"), "{:g}"),
                _number(cache.get("server"), "{:g}"),
                verdict,
            ]
        )
    return [
        "## Prompt cache",
        "",
        "Every prompt is new, so the server should serve none of its tokens from the prefix cache: the "
        "count the server reported to the client (usage) and its own metrics.",
        "",
        *_table(["concurrency", "cached tokens (client)", "cached tokens (server)", "verdict"], cells),
    ]


def _two_clients(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not any(row.get("clients") for row in rows):
        return []
    # (difference key, the first client's value in the row, the key in the second's summary, label, format)
    compared = (
        ("ttft_ms", "ttft_ms_measured", "time_to_first_token_ms", "TTFT (ms)", "{:.1f}"),
        ("tpot_ms", "tpot_ms_measured", "inter_token_latency_ms", "TPOT (ms)", "{:.2f}"),
        (
            "output_token_throughput",
            "output_token_throughput",
            "output_token_throughput",
            "output tokens/s",
            "{:.1f}",
        ),
    )
    columns = ["concurrency", "clients"]
    for _, _, _, label, _ in compared:
        columns += [f"{label} first", "second", "difference"]
    columns.append("second client's files")
    cells = []
    for row in rows:
        first = (row.get("client") or {}).get("name") or "first"
        for name, other in (row.get("clients") or {}).items():
            line = [level_label(row), f"{first} / {name}"]
            difference = other.get("difference") or {}
            for key, first_key, summary_key, _, fmt in compared:
                line += [
                    _number(row.get(first_key), fmt),
                    _number(_mean(other.get("summary") or {}, summary_key), fmt),
                    percent(difference.get(key)),
                ]
            line.append(str(other.get("artifacts") or "–"))
            cells.append(line)
    return [
        "## Two clients",
        "",
        "The level measured by two clients, one after the other; difference as the benchmark recorded it "
        "(second / first − 1).",
        "",
        *_table(columns, cells),
    ]


def _telemetry(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not any(row.get("telemetry") for row in rows):
        return []
    cells, absent = [], []
    for row in rows:
        telemetry = row.get("telemetry") or {}
        if telemetry.get("absent") or not telemetry:
            # Some nodes may lack nvidia-smi while others were sampled: both are said.
            partly = " (partly)" if telemetry.get("file") else ""
            reason = telemetry.get("absent") or "not recorded"
            absent.append(f"- {row['level']}{partly}: no GPU telemetry: {reason}")
        if not telemetry.get("file"):
            continue
        cells.append(
            [
                level_label(row),
                _number(telemetry.get("gpus"), "{}"),
                _number(telemetry.get("util_mean"), "{:.1f}"),
                _number(telemetry.get("mem_max_mb"), "{:.0f}"),
                _number(telemetry.get("power_mean_w"), "{:.0f}"),
                str(telemetry.get("file") or "–"),
            ]
        )
    columns = ["concurrency", "GPUs", "utilisation mean (%)", "memory max (MB)", "power mean (W)", "samples"]
    return [
        "## GPU telemetry",
        "",
        *(_table(columns, cells) if cells else []),
        *([""] if cells and absent else []),
        *absent,
    ]


def level_label(row: Mapping[str, Any]) -> str:
    """A level as the tables name it: its concurrency, or its request rate and the requests expected in
    flight (request-rate mode)."""
    rate = row.get("rate_per_s")
    return str(row["concurrency"]) if rate is None else f"{rate:g}/s (≈{row['concurrency']} in flight)"


def _mean(summary: Mapping[str, Any], key: str) -> float | None:
    value = summary.get(key)
    return value.get("avg") if isinstance(value, dict) else value


def aiconfigurator_markdown(compared: tuple[str, str], rows: list[dict[str, Any]]) -> str:
    """The table of aiconfigurator's prediction against the measurement, after autodeploy's."""
    directory, what = compared
    lines = [
        "",
        "## aiconfigurator's prediction",
        "",
        f"From {directory}: {what}. Error = measured / aiconfigurator − 1; `*` marks its design-point value "
        "where its files give none at that concurrency.",
        "",
    ]
    columns = ["concurrency"]
    for _, _, label, unit, _ in METRICS:
        columns += [f"{label}{f' ({unit})' if unit else ''} aiconfigurator", "error", "autodeploy's error"]
    cells = []
    for row in rows:
        entry = row.get("aiconfigurator") or {}
        mark = "" if entry.get("at") == "level" else "*"
        line = [level_label(row)]
        for key, _, _, _, fmt in METRICS:
            value = entry.get(key)
            line += [
                (fmt.format(value) + mark) if value is not None else "–",
                percent(entry.get(f"{key}_error")),
                percent(row[f"{key}_error"]),
            ]
        cells.append(line)
    return "\n".join(lines + _table(columns, cells)) + "\n"


def baseline_markdown(directory: str, rows: list[dict[str, Any]]) -> str:
    """This run against the baseline run, level by level (levels the baseline lacks say so)."""
    lines = [
        "",
        "## Against the baseline",
        "",
        f"Baseline: {directory}. Change = this run / baseline − 1; `real` where the 90 % bootstrap interval "
        "of the change (from both runs' per-request values) excludes 0, `noise` where it does not.",
        "",
    ]
    columns = ["concurrency"]
    for _, _, label, unit, _ in METRICS:
        columns += [f"{label}{f' ({unit})' if unit else ''} baseline", "change"]
    cells = []
    for row in rows:
        entry = row.get("baseline")
        line = [level_label(row)]
        for key, _, _, _, fmt in METRICS:
            if not entry or entry.get(key) is None:
                line += ["not in baseline" if not entry else "–", "–"]
                continue
            change = entry.get(f"{key}_change")
            # No change (a level not reported) has no verdict either.
            verdict = (
                {True: " real", False: " noise"}.get(entry.get(f"{key}_real"), " ?")
                if change is not None
                else ""
            )
            line += [fmt.format(entry[key]), percent(change) + verdict]
        cells.append(line)
    return "\n".join(lines + _table(columns, cells)) + "\n"


# ---------------------------------------------------------------------------------------- plots


def render_plots(record: RunRecord, summary: Mapping[str, Any], directory: Path) -> list[str]:
    """Every plot the data allows, written into directory; returns their file names.

    measured_vs_predicted.png always (with a goodput panel when a level records goodput);
    gpu_telemetry.png when a level's GPU samples (bench/c<N>.gpu.csv) exist.
    """
    import matplotlib

    matplotlib.use("Agg")

    rows: list[dict[str, Any]] = summary["rows"]
    config = record.config
    title = f"{config.name}: {summary['run']['plan']}"
    limits = {"ttft_ms": config.sla.ttft_ms, "tpot_ms": config.sla.tpot_ms}
    frontiers = record.search().get("frontier") or {}
    names = [
        measured_vs_predicted_plot(
            rows, frontiers, record.configure.plan.mode, summary["predicted_curve"], limits, title, directory
        )
    ]
    samples = {
        row["level"]: gpu_samples(_telemetry_file(record, row))
        for row in rows
        if _telemetry_file(record, row).is_file()
    }
    if any(samples.values()):
        names.append(telemetry_plot(samples, title, directory))
    return names


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=PLOT_DPI, metadata=PNG_METADATA)
    plt.close(fig)
    return path.name


def measured_vs_predicted_plot(
    rows: Sequence[Mapping[str, Any]],
    frontiers: Mapping[str, Sequence[Mapping[str, float]]],
    deployed_mode: str,
    curve: Sequence[Mapping[str, float]],
    limits: Mapping[str, float],
    title: str,
    directory: Path,
) -> str:
    """TTFT and TPOT against concurrency (predicted curve, measured, the server's and a second client's
    means, the SLA limits), tokens/s/gpu against tokens/s/user over the predicted frontiers of both
    modes with the deployed config's predicted curve and its measured levels (c<N>), and, when the
    levels record it, goodput per level: one figure, the one a person reads first."""
    import matplotlib.pyplot as plt

    reported = [r for r in rows if not r.get("saturated")]
    saturated = [r for r in rows if r.get("saturated")]
    with_goodput = [r for r in rows if r.get("goodput")]
    if with_goodput:
        fig, grid = plt.subplots(2, 2, figsize=(15, 9))
        axes = list(grid.flat)
        _goodput_panel(axes[3], with_goodput)
    else:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, key, label in ((axes[0], "ttft_ms", "TTFT (ms)"), (axes[1], "tpot_ms", "TPOT (ms)")):
        ax.plot(
            [p["concurrency"] for p in curve],
            [p[key] for p in curve],
            "-",
            color="tab:blue",
            label="predicted",
        )
        _points(ax, reported, "concurrency", f"{key}_measured", "o", "tab:red", "measured")
        _points(ax, saturated, "concurrency", f"{key}_measured", "o", "tab:red", SATURATED, hollow=True)
        _server_and_second_client(ax, rows, key)
        _plot_others(ax, rows, "concurrency", key)
        ax.axhline(limits[key], color="grey", ls="--", lw=1, label="SLA limit")
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("concurrency")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ax = axes[2]
    styles = {"agg": ("--", "grey"), "disagg": (":", "black")}
    for mode, frontier in sorted(frontiers.items()):
        if not frontier:
            continue
        style, color = styles.get(mode, ("-.", "silver"))
        deployed = " (deployed mode)" if mode == deployed_mode else ""
        ax.plot(
            [p["tokens_per_s_per_user"] for p in frontier],
            [p["tokens_per_s_per_gpu"] for p in frontier],
            style,
            color=color,
            label=f"predicted frontier, {mode}{deployed}",
        )
    ax.plot(
        [p["tokens_per_s_per_user"] for p in curve],
        [p["tokens_per_s_per_gpu"] for p in curve],
        "-",
        color="tab:blue",
        label="deployed config, predicted",
    )
    user, gpu = "tokens_per_s_per_user_measured", "tokens_per_s_per_gpu_measured"
    _points(ax, reported, user, gpu, "o", "tab:red", "deployed config, measured")
    _points(ax, saturated, user, gpu, "o", "tab:red", SATURATED, hollow=True)
    _plot_others(ax, rows, "tokens_per_s_per_user", "tokens_per_s_per_gpu")
    for r in rows:
        if r[user] is not None and r[gpu] is not None:
            ax.annotate(
                r["level"],
                (r[user], r[gpu]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.set_xlabel("tokens/s/user")
    ax.set_ylabel("tokens/s/gpu")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, directory / "measured_vs_predicted.png")


def _points(
    ax: Any,
    rows: Sequence[Mapping[str, Any]],
    x_key: str,
    y_key: str,
    marker: str,
    color: str,
    label: str,
    hollow: bool = False,
) -> None:
    points = [(r[x_key], r[y_key]) for r in rows if r[x_key] is not None and r[y_key] is not None]
    if points:
        face = "none" if hollow else color
        ax.plot(*zip(*points, strict=True), marker, color=color, mfc=face, ls="none", label=label)


def _server_and_second_client(ax: Any, rows: Sequence[Mapping[str, Any]], key: str) -> None:
    """The frontend's own means (■) and every second client's (▲) at each level where they were measured."""
    server_key = {"ttft_ms": "ttft_ms", "tpot_ms": "itl_ms"}[key]
    summary_key = {"ttft_ms": "time_to_first_token_ms", "tpot_ms": "inter_token_latency_ms"}[key]
    server = [
        (r["concurrency"], r["server"][server_key])
        for r in rows
        if isinstance(r.get("server"), dict) and r["server"].get(server_key) is not None
    ]
    if server:
        ax.plot(*zip(*server, strict=True), "s", color="tab:orange", mfc="none", label="server (frontend)")
    second: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        for name, other in (r.get("clients") or {}).items():
            value = _mean(other.get("summary") or {}, summary_key)
            if value is not None:
                second.setdefault(name, []).append((r["concurrency"], value))
    for name, points in sorted(second.items()):
        ax.plot(*zip(*points, strict=True), "^", color="tab:brown", mfc="none", label=f"{name} client")


def _plot_others(ax: Any, rows: Sequence[Mapping[str, Any]], x_key: str, y_key: str) -> None:
    """aiconfigurator's prediction (x: at that level, +: its design point) and the baseline's measurement."""
    for source, color, label in (
        ("aiconfigurator", "tab:green", "aiconfigurator"),
        ("baseline", "tab:purple", "baseline"),
    ):
        for exact, marker in ((True, "x"), (False, "+")):
            points = []
            for r in rows:
                entry = r.get(source)
                if not entry or (entry.get("at", "level") == "level") != exact:
                    continue
                x = r["concurrency"] if x_key == "concurrency" else entry.get(x_key)
                if x is not None and entry.get(y_key) is not None:
                    points.append((x, entry[y_key]))
            if points:
                suffix = "" if exact else " (design point)"
                ax.plot(*zip(*points, strict=True), marker, color=color, ms=8, label=label + suffix)


def _goodput_panel(ax: Any, levels: Sequence[Mapping[str, Any]]) -> None:
    """Per level: the share of requests meeting both SLA limits (bars) and the goodput rate (line)."""
    labels = [r["level"] + (" (saturated)" if r.get("saturated") else "") for r in levels]
    positions = list(range(len(levels)))
    shares = [100.0 * (r["goodput"].get("share") or 0.0) for r in levels]
    colors = ["lightgrey" if r.get("saturated") else "tab:green" for r in levels]
    ax.bar(positions, shares, color=colors, label="share meeting the SLA")
    ax.set_ylim(0, 105)
    ax.set_ylabel("requests meeting both SLA limits (%)")
    ax.set_xticks(positions, labels)
    rate = ax.twinx()
    rate.plot(positions, [r["goodput"].get("rate_per_s") or 0.0 for r in levels], "o-", color="tab:blue")
    rate.set_ylim(bottom=0)
    rate.set_ylabel("goodput (requests/s)", color="tab:blue")
    first = levels[0]["goodput"]
    ax.set_title(
        f"goodput: TTFT ≤ {first['ttft_limit_ms']:g} ms and TPOT ≤ {first['tpot_limit_ms']:g} ms", fontsize=10
    )
    ax.grid(alpha=0.3, axis="y")


def _telemetry_file(record: RunRecord, row: Mapping[str, Any]) -> Path:
    """The level's GPU samples: as its telemetry names them, else beside its level file (bench/c<N>.gpu.csv)."""
    telemetry = row.get("telemetry") or {}
    return record.run_dir / (telemetry.get("file") or str(row["file"]).removesuffix(".json") + ".gpu.csv")


def gpu_samples(path: Path) -> list[dict[str, Any]]:
    """The rows of a bench/c<N>.gpu.csv (t_s,node,gpu,util_pct,mem_used_mb,power_w) as numbers; a value
    nvidia-smi could not give ([N/A], empty) is None, and a row without a time is skipped."""
    samples = []
    with path.open(newline="") as handle:
        for raw in csv.DictReader(handle):
            t = _float(raw.get("t_s"))
            if t is None:
                continue
            samples.append(
                {
                    "t_s": t,
                    "gpu": f"{raw.get('node', '')}/{raw.get('gpu', '')}",
                    "util_pct": _float(raw.get("util_pct")),
                    "mem_used_mb": _float(raw.get("mem_used_mb")),
                    "power_w": _float(raw.get("power_w")),
                }
            )
    return samples


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def telemetry_plot(samples: Mapping[str, list[dict[str, Any]]], title: str, directory: Path) -> str:
    """Utilisation, memory and power of every GPU over time, the levels one after another (each from its
    own first sample), one colour per level."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(12, 8), sharex=True)
    panels = (("util_pct", "utilisation (%)"), ("mem_used_mb", "memory used (MB)"), ("power_w", "power (W)"))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    offset = 0.0
    for index, (name, level) in enumerate(samples.items()):
        if not level:
            continue
        start = min(s["t_s"] for s in level)
        span = max(s["t_s"] for s in level) - start
        color = colors[index % len(colors)]
        for ax, (key, _) in zip(axes, panels, strict=True):
            for number, gpu in enumerate(sorted({s["gpu"] for s in level})):
                points = [
                    (offset + s["t_s"] - start, s[key])
                    for s in level
                    if s["gpu"] == gpu and s[key] is not None
                ]
                if points:
                    label = name if number == 0 and ax is axes[0] else None
                    ax.plot(*zip(*points, strict=True), "-", color=color, lw=0.8, alpha=0.8, label=label)
            ax.axvline(offset, color="grey", lw=0.5, ls=":")
        # A gap between levels keeps their lines apart.
        offset += span + max(1.0, 0.05 * span)
    for ax, (_, label) in zip(axes, panels, strict=True):
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, title="level (one line per GPU)", title_fontsize=8)
    axes[-1].set_xlabel("seconds (the levels one after another)")
    fig.suptitle(f"{title}: GPU telemetry")
    fig.tight_layout()
    return _save(fig, directory / "gpu_telemetry.png")
