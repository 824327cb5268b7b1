"""The summarize stage: measured against predicted at every concurrency level, and the data its report shows."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automation.bench.metrics import REPORTED_METRICS
from automation.config import PipelineConfig
from automation.contracts import BenchmarkOutputs, CheckpointOutputs, ConfigureOutputs, SummarizeOutputs
from automation.report import SATURATED, RunRecord, WriteText, percent
from automation.stage import Stage, StageContext

# (prediction field, measured key in a level summary, label, unit, format)
METRICS = REPORTED_METRICS


def prediction_setting(config: PipelineConfig) -> tuple[Any, Any]:
    """(method, stack) the predictions are made with: the benchmark's method, and the serving stack that
    ran (Dynamo's mocker adds no TRT-LLM per-request cost; evaluate.MOCKER_STACK)."""
    from automation.perfmodel import evaluate
    from automation.stages.configure import benchmark_method

    stack = evaluate.MOCKER_STACK if config.launch.engine == "mocker" else None
    return benchmark_method(config), stack


def compare(
    levels: list[dict[str, Any]], plan: Any, setting: tuple[Any, Any] = (None, None)
) -> list[dict[str, Any]]:
    """One row per level: measured (mean over requests), predicted at that concurrency (with `setting`:
    the benchmark's method and the serving stack, see prediction_setting), error = m/p − 1."""
    from automation.perfmodel import predict_at_concurrency
    from automation.perfmodel.queueing import DEFAULT_METHOD

    method, stack = setting
    rows = []
    for summary in levels:
        predicted = predict_at_concurrency(
            plan, summary["concurrency"], method=method or DEFAULT_METHOD, stack=stack
        ).to_dict()
        row: dict[str, Any] = {
            "concurrency": summary["concurrency"],
            "requests": summary["requests"],
            "errors": summary["errors"],
        }
        for predicted_key, measured_key, _, _, _ in METRICS:
            value = summary[measured_key]
            measured = value.get("avg") if isinstance(value, dict) else value
            row[f"{predicted_key}_measured"] = measured
            row[f"{predicted_key}_predicted"] = predicted[predicted_key]
            row[f"{predicted_key}_error"] = (
                measured / predicted[predicted_key] - 1.0
                if measured is not None and predicted[predicted_key]
                else None
            )
        row["ttft_p90_ms"] = summary["time_to_first_token_ms"].get("p90")
        row["tpot_p90_ms"] = summary["inter_token_latency_ms"].get("p90")
        rows.append(row)
    return rows


def aiconfigurator_columns(
    directory: Path, plan: Any, rows: list[dict[str, Any]], imported: dict[str, Any] | None
) -> tuple[str, list[dict[str, Any]]]:
    """aiconfigurator's prediction at every level beside the measurement: (what was compared, per row).

    The config is the deployed one: the pick it came from when imported, else the pick (any mode, any
    rank) whose layout is the deployed plan's, else aiconfigurator's own winner (said so). At a level its
    files give for that layout (pareto.csv or the ranking, concurrency × replicas equal) the value is
    exact; else its design-point value is shown, marked `design`.
    """
    from automation import aiconfigurator

    result = aiconfigurator.load(directory)
    pick = None
    if imported is not None:
        pick = result.pick(imported["mode"], int(imported["rank"]))
        what = f"its {pick.mode} rank {pick.rank} ({pick.layout()}), the deployed config"
    else:
        pick = aiconfigurator.matching_pick(result, plan)
        if pick is not None:
            what = f"its {pick.mode} rank {pick.rank} ({pick.layout()}), the deployed config"
        else:
            pick = result.pick()
            what = f"its own pick, {pick.mode} rank 1 ({pick.layout()}): it ranked no config like the deployed one"
    columns = []
    for row in rows:
        numbers, exact = aiconfigurator.prediction_at(result, pick, row["concurrency"])
        entry: dict[str, Any] = {"at": "level" if exact else "design"}
        for key, _, _, _, _ in METRICS:
            value = numbers.get(key)
            measured = row[f"{key}_measured"]
            entry[key] = value
            entry[f"{key}_error"] = measured / value - 1.0 if measured is not None and value else None
        columns.append(entry)
    return what, columns


def predicted_curve(plan: Any, highest: int, setting: tuple[Any, Any] = (None, None)) -> list[dict[str, Any]]:
    """The model's prediction for the deployed plan on a fine concurrency grid up to 1.5 × highest."""
    from automation.perfmodel import predict_at_concurrency
    from automation.perfmodel.queueing import DEFAULT_METHOD

    method, stack = setting

    grid: list[float] = []
    c = 1.0
    while c <= 1.5 * highest:
        grid.append(c)
        c *= 2**0.25
    return [
        predict_at_concurrency(plan, value, method=method or DEFAULT_METHOD, stack=stack).to_dict()
        for value in grid
    ]


# Per-level facts a newer benchmark stage records beside the summary (every one optional): rows and
# summary.json levels carry the ones a level has.
LEVEL_FACTS = ("client", "method", "server", "clients", "telemetry", "stopped")
# Row keys that are not measured-against-predicted numbers (kept out of the stage's at_design).
ROW_EXTRAS = (
    *LEVEL_FACTS,
    "level",
    "file",
    "rate_per_s",
    "goodput",
    "cache",
    "saturated",
    "output_token_throughput",
)


def level_name(document: Mapping[str, Any]) -> str:
    """The level's name: c<N>, or r<rate> in request-rate mode (as the benchmark names its file)."""
    summary = document["summary"]
    if document.get("level"):
        return str(document["level"])
    rate = summary.get("rate_per_s")
    return f"c{summary['concurrency']}" if rate is None else f"r{rate:g}"


def level_extras(document: Mapping[str, Any], file: str) -> dict[str, Any]:
    """The facts of one level file beyond measured against predicted, as its row carries them: its name
    and file, and where recorded (all optional) the request rate, goodput, the prompt-cache verdict, the
    client (and `saturated`: its reason, when the client saturated), the method, the server's view, a
    second client's measurement, GPU telemetry and why the sweep stopped there."""
    summary = document.get("summary") or {}
    extras: dict[str, Any] = {
        "level": level_name(document),
        "file": file,
        "output_token_throughput": summary.get("output_token_throughput"),
    }
    if summary.get("rate_per_s") is not None:
        extras["rate_per_s"] = summary["rate_per_s"]
    if summary.get("goodput"):
        extras["goodput"] = summary["goodput"]
    cache = cache_reuse(summary.get("cached_tokens"), document.get("server"))
    if cache is not None:
        extras["cache"] = cache
    for key in LEVEL_FACTS:
        if document.get(key) is not None:
            extras[key] = document[key]
    saturation = (document.get("client") or {}).get("saturation") or {}
    if saturation.get("saturated"):
        extras["saturated"] = saturation.get("reason") or "the client could not keep up"
    return extras


def cache_reuse(cached: Mapping[str, Any] | None, server: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Were prompt tokens served from the prefix cache? {client, server, reused}; None when the level
    records no count at all. `reused` is the benchmark's verdict when it gives one, else whether either
    count is above 0 (None when neither count is known)."""
    if cached is None and not (server and "cached_tokens" in server):
        return None
    cached = cached or {}
    client_tokens = cached.get("client")
    server_tokens = cached.get("server")
    if server_tokens is None and server:
        server_tokens = server.get("cached_tokens")
    reused = cached.get("reused")
    if reused is None:
        known = [value for value in (client_tokens, server_tokens) if value is not None]
        reused = any(value > 0 for value in known) if known else None
    return {"client": client_tokens, "server": server_tokens, "reused": reused}


def leave_out_saturated(rows: list[dict[str, Any]]) -> None:
    """A level measured by a saturated client is not reported: its errors against autodeploy,
    aiconfigurator and the baseline become None (its measured values stay in summary.json)."""
    for row in rows:
        if not row.get("saturated"):
            continue
        for key, _, _, _, _ in METRICS:
            row[f"{key}_error"] = None
            for other, suffix in (("aiconfigurator", "error"), ("baseline", "change")):
                if row.get(other):
                    row[other][f"{key}_{suffix}"] = None
                    if other == "baseline":
                        row[other][f"{key}_real"] = None


def error_statistics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean |measured / predicted − 1| per metric over the reported levels; saturated levels left out."""
    reported = [row for row in rows if not row.get("saturated")]
    means: dict[str, float | None] = {}
    for key, _, _, _, _ in METRICS:
        errors = [abs(row[f"{key}_error"]) for row in reported if row[f"{key}_error"] is not None]
        means[key] = sum(errors) / len(errors) if errors else None
    return {
        "levels": [row["level"] for row in reported],
        "mean_abs_error": means,
        "left_out": [
            {"level": row["level"], "reason": f"{SATURATED}: {row['saturated']}"}
            for row in rows
            if row.get("saturated")
        ],
    }


def run_facts(record: RunRecord, documents: list[dict[str, Any]], plan_text: str) -> dict[str, Any]:
    """summary.json's `run`: versions, the benchmark client(s), the model revision, seed, endpoint, warm-up,
    load, the deployed config and the calibration in force (when the configure outputs name one)."""
    import automation

    config = record.config
    levels = [level_name(document) for document in documents]
    methods = [document.get("method") or {} for document in documents]

    def per_level(values: list[Any]) -> Any:
        """One value when every level agrees (None: none recorded it), else the value of each level."""
        if len({json.dumps(v, sort_keys=True) for v in values}) <= 1:
            return values[0] if values else None
        return dict(zip(levels, values, strict=True))

    clients: dict[str, dict[str, Any]] = {}
    for document in documents:
        client = document.get("client") or {}
        if client.get("name"):
            clients.setdefault(
                client["name"],
                {
                    "name": client["name"],
                    "version": client.get("version"),
                    "processes": client.get("processes"),
                },
            )
        for name, other in (document.get("clients") or {}).items():
            described = other.get("client") or {}
            clients.setdefault(
                name,
                {"name": name, "version": described.get("version"), "processes": described.get("processes")},
            )
    if not clients:  # level files from before the client was recorded: the pipeline's choice
        clients[config.benchmark.client] = {
            "name": config.benchmark.client,
            "version": None,
            "processes": None,
        }
    seeds = [method.get("seed") for method in methods]
    checkpoint = record.checkpoint
    facts: dict[str, Any] = {
        "name": config.name,
        "model": {
            "hf_id": config.model.hf_id,
            # The commit the checkpoint stage read the files at (from the hub); else files already present.
            "revision": checkpoint.commit if checkpoint and checkpoint.commit else "local files",
            "repo": checkpoint.repo if checkpoint and checkpoint.commit else None,
        },
        "system": config.system,
        "gpus": record.benchmark.gpus,
        "isl": config.workload.isl,
        "osl": config.workload.osl,
        "sla": {"ttft_ms": config.sla.ttft_ms, "tpot_ms": config.sla.tpot_ms},
        "versions": {
            "dynamo": config.dynamo.version,
            "trtllm": config.backend.version,
            "autodeploy": automation.__version__,
        },
        "clients": list(clients.values()),
        "seed": config.benchmark.seed,
        # The seed each level derived from it, where the level files record it.
        "level_seeds": per_level(seeds),
        "endpoint": per_level([method.get("endpoint") for method in methods]),
        "warmup": per_level([method.get("warmup") for method in methods]),
        "load": per_level([_load(method) for method in methods]),
        "chat_template_tokens": per_level([method.get("chat_template_tokens") for method in methods]),
        "plan": plan_text,
        "plan_source": "aiconfigurator"
        if record.configure.source == "aiconfigurator"
        else "autodeploy's sweep",
    }
    # Always said: a reader must know whether the predictions were calibrated, and from what.
    facts["calibration"] = record.calibration or (
        f"none: the shipped fit of {record.configure.plan.system} (configs/systems/"
        f"{record.configure.plan.system}.fit.yaml)"
    )
    speed = record.config.launch.mocker_speed
    if record.config.launch.engine == "mocker" and speed.slows:
        facts["mocker_speed"] = f"prefill ×{speed.prefill:g}, decode ×{speed.decode:g} the shipped model"
    return facts


def _load(method: Mapping[str, Any]) -> str | None:
    """How the level loaded the server: `concurrency`, or `request rate R/s`; None when not recorded."""
    mode = method.get("mode")
    if mode == "request_rate" and method.get("rate_per_s") is not None:
        return f"request rate {method['rate_per_s']:g}/s"
    return str(mode) if mode else None


def sweep_stop(record: RunRecord, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Where and why the sweep ended early: the level that says so, else the benchmark outputs' reason."""
    for row in rows:
        if row.get("stopped"):
            return {"level": row["level"], "reason": row["stopped"]}
    stopped = record.benchmark.stopped
    return {"level": None, "reason": stopped} if stopped else None


def _level(row: dict[str, Any]) -> dict[str, Any]:
    """One level of summary.json: measured, autodeploy's prediction, aiconfigurator's / the baseline's
    where the report has them, and the level's optional facts (ROW_EXTRAS)."""
    keys = [key for key, _, _, _, _ in METRICS]
    level: dict[str, Any] = {
        "concurrency": row["concurrency"],
        "requests": row["requests"],
        "errors": row["errors"],
        "measured": {k: row[f"{k}_measured"] for k in keys},
        "predicted": {k: row[f"{k}_predicted"] for k in keys},
        "error": {k: row[f"{k}_error"] for k in keys},
    }
    for extra in ("aiconfigurator", "baseline", *ROW_EXTRAS):
        if extra in row:
            level[extra] = row[extra]
    return level


@dataclass(frozen=True)
class Report:
    """What write_report wrote: the summary.json content and the files, relative to the run directory."""

    summary: dict[str, Any]
    files: list[str]


def write_report(record: RunRecord, write_text: WriteText, log: logging.Logger | None = None) -> Report:
    """The one function behind both the summarize stage and `autodeploy report RUN_DIR`.

    It recomputes summary.json from the run's records (the level files, the deployed plan, configure's
    search.json, the aiconfigurator result and the baseline run when the pipeline names them), writes it,
    then renders summary.md and the plots from it (automation.report.render). The stage hands it the
    record from its context, the command one read from the run directory's files (report.read_run): the
    same record gives the same bytes.
    """
    from automation.report import render

    log = log or logging.getLogger(__name__)
    configure = record.configure
    plan = configure.plan
    files = record.documents()
    documents = [document for _, document in files]
    setting = prediction_setting(record.config)
    rows = compare([document["summary"] for document in documents], plan, setting)
    for row, (file, document) in zip(rows, files, strict=True):
        row.update(level_extras(document, file))
    compared = _aiconfigurator(record, rows, log)
    baseline = _baseline(record, documents, rows)
    leave_out_saturated(rows)
    design = round(configure.prediction.concurrency)
    plan_text = f"{plan.mode}, {plan.replicas} replica(s) of {plan.layout()}"
    summary: dict[str, Any] = {
        "run": run_facts(record, documents, plan_text),
        "plan": plan.to_dict(),
        "source": configure.source,
        "design_concurrency": design,
        "stopped": sweep_stop(record, rows),
        "error_statistics": error_statistics(rows),
        "rows": rows,
        "levels": [_level(row) for row in rows],
        "predicted_curve": predicted_curve(plan, max(*(row["concurrency"] for row in rows), design), setting),
    }
    if compared:
        summary["aiconfigurator"] = {"directory": compared[0], "compared": compared[1]}
    if baseline:
        summary["baseline"] = {"directory": baseline}
    write_text("report/summary.json", json.dumps(summary, indent=2))
    rendered = render(record, summary, write_text)
    names = [rendered[0], "summary.json", *rendered[1:]]
    return Report(summary=summary, files=[f"report/{name}" for name in names])


def _aiconfigurator(
    record: RunRecord, rows: list[dict[str, Any]], log: logging.Logger
) -> tuple[str, str] | None:
    """aiconfigurator's prediction into every row (row["aiconfigurator"]), when a result is at hand:
    summarize.aiconfigurator_dir, else the one configure imported. Returns (directory, what)."""
    configure = record.configure
    imported = configure.aiconfigurator if configure.source == "aiconfigurator" else None
    directory = record.config.summarize.aiconfigurator_dir or (imported or {}).get("directory")
    if not directory:
        return None
    what, columns = aiconfigurator_columns(Path(directory), configure.plan, rows, imported)
    for row, entry in zip(rows, columns, strict=True):
        row["aiconfigurator"] = entry
    log.info("aiconfigurator (%s): %s", directory, what)
    return str(directory), what


def _baseline(record: RunRecord, documents: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str | None:
    """The baseline run's measurement into every row it has (row["baseline"]): benchmark.baseline."""
    from automation.baseline import baseline_columns

    directory = record.config.benchmark.baseline
    if directory is None:
        return None
    for row, column in zip(rows, baseline_columns(Path(directory), documents), strict=True):
        if column["in_baseline"]:
            entry: dict[str, Any] = {"at": "level"}
            for key, _, _, _, _ in METRICS:
                entry[key] = column[f"{key}_baseline"]
                entry[f"{key}_change"] = column[f"{key}_change"]
                entry[f"{key}_real"] = column[f"{key}_real"]
            row["baseline"] = entry
    return str(directory)


class Summarize(Stage):
    """Compare every measured level with the model's prediction for the deployed plan at that concurrency.

    Done: report/summary.json, report/summary.md, report/measured_vs_predicted.png (and
    gpu_telemetry.png when the levels recorded GPU samples) are written by write_report, the function
    `autodeploy report` also calls, and the table is printed. Verify: trusts the record.
    """

    name = "summarize"
    summary = "compare measured with predicted: tables, plots, report"
    # checkpoint: the model's commit in the report (optional: read only when it has finished).
    needs = ("configure", "benchmark", "checkpoint")
    Outputs = SummarizeOutputs
    # 2: the report states the run's facts and the levels' client, server, cache, goodput and telemetry.
    revision = 2

    def inputs(self, config: PipelineConfig) -> Mapping[str, Any]:
        return {
            "sla": config.sla.model_dump(),
            "aiconfigurator_dir": str(config.summarize.aiconfigurator_dir or ""),
            "baseline": str(config.benchmark.baseline or ""),
        }

    def run(self, ctx: StageContext) -> SummarizeOutputs:
        configure, benchmark = ctx.output(ConfigureOutputs), ctx.output(BenchmarkOutputs)
        checkpoint = ctx.outputs.get("checkpoint")
        record = RunRecord(
            run_dir=ctx.run_dir,
            config=ctx.config,
            configure=configure,
            benchmark=benchmark,
            checkpoint=checkpoint if isinstance(checkpoint, CheckpointOutputs) else None,
            calibration=configure.calibration,
        )
        report = write_report(record, ctx.write_text, ctx.log)
        rows: list[dict[str, Any]] = report.summary["rows"]
        design: int = report.summary["design_concurrency"]
        self._log_table(ctx, rows)
        at_design = next((r for r in rows if r["concurrency"] == design), rows[-1])
        return SummarizeOutputs(
            files=report.files,
            design_concurrency=design,
            at_design={
                k: v for k, v in at_design.items() if not k.endswith("_p90_ms") and k not in ROW_EXTRAS
            },
            meets_sla=bool(
                at_design["ttft_ms_measured"] is not None
                and at_design["ttft_ms_measured"] <= ctx.config.sla.ttft_ms
                and at_design["tpot_ms_measured"] is not None
                and at_design["tpot_ms_measured"] <= ctx.config.sla.tpot_ms
            ),
        )

    def describe(self, outputs: SummarizeOutputs) -> str:
        d = outputs.at_design
        sla = "meets the SLA" if outputs.meets_sla else "misses the SLA"
        return (
            f"at c={d['concurrency']}: TTFT {d['ttft_ms_measured']:.0f} ms "
            f"({percent(d['ttft_ms_error'])}), TPOT {d['tpot_ms_measured']:.2f} ms ({percent(d['tpot_ms_error'])}), "
            f"{d['tokens_per_s_per_gpu_measured']:.0f} tok/s/gpu ({percent(d['tokens_per_s_per_gpu_error'])}); {sla}; "
            "report/summary.md"
        )

    def _log_table(self, ctx: StageContext, rows: list[dict[str, Any]]) -> None:
        lines = []
        for row in rows:
            parts = [f"{row['level']:<6}"]
            for key, _, label, _, fmt in METRICS:
                measured = row[f"{key}_measured"]
                shown = fmt.format(measured) if measured is not None else "–"
                parts.append(
                    f"{label} {shown} vs {fmt.format(row[f'{key}_predicted'])} ({percent(row[f'{key}_error'])})"
                )
            if row.get("saturated"):
                parts.append(f"{SATURATED}: {row['saturated']}")
            lines.append("  ".join(parts))
        ctx.log.info("measured vs predicted:\n%s", "\n".join(lines))
