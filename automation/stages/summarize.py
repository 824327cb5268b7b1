"""The summarize stage: measured against predicted at every concurrency level, as tables, plots and a report."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from automation.bench.metrics import REPORTED_METRICS
from automation.config import PipelineConfig
from automation.contracts import BenchmarkOutputs, ConfigureOutputs, SummarizeOutputs
from automation.stage import Stage, StageContext

# (prediction field, measured key in a level summary, label, unit, format)
METRICS = REPORTED_METRICS


def compare(levels: list[dict[str, Any]], plan: Any) -> list[dict[str, Any]]:
    """One row per level: measured (mean over requests), predicted at that concurrency, error = m/p − 1."""
    from automation.perfmodel import predict_at_concurrency

    rows = []
    for summary in levels:
        predicted = predict_at_concurrency(plan, summary["concurrency"]).to_dict()
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


def predicted_curve(plan: Any, highest: int) -> list[dict[str, Any]]:
    """The model's prediction for the deployed plan on a fine concurrency grid up to 1.5 × highest."""
    from automation.perfmodel import predict_at_concurrency

    grid: list[float] = []
    c = 1.0
    while c <= 1.5 * highest:
        grid.append(c)
        c *= 2**0.25
    return [predict_at_concurrency(plan, value).to_dict() for value in grid]


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:+.1f}%"


def markdown(config: PipelineConfig, plan_text: str, rows: list[dict[str, Any]], design: int) -> str:
    head = [
        f"# {config.name}: measured against predicted",
        "",
        f"{config.model.served_name} on {config.search.total_gpus} × {config.system}, "
        f"ISL {config.workload.isl}, OSL {config.workload.osl}; SLA TTFT ≤ {config.sla.ttft_ms:g} ms, "
        f"TPOT ≤ {config.sla.tpot_ms:g} ms.",
        f"Deployed: {plan_text}. Design concurrency (predicted): {design}.",
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
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [str(row["concurrency"])]
        for key, _, _, _, fmt in METRICS:
            measured = row[f"{key}_measured"]
            cells += [
                fmt.format(measured) if measured is not None else "–",
                fmt.format(row[f"{key}_predicted"]),
                _percent(row[f"{key}_error"]),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(head + lines) + "\n"


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
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        entry = row.get("aiconfigurator") or {}
        mark = "" if entry.get("at") == "level" else "*"
        cells = [str(row["concurrency"])]
        for key, _, _, _, fmt in METRICS:
            value = entry.get(key)
            cells += [
                (fmt.format(value) + mark) if value is not None else "–",
                _percent(entry.get(f"{key}_error")),
                _percent(row[f"{key}_error"]),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        entry = row.get("baseline")
        cells = [str(row["concurrency"])]
        for key, _, _, _, fmt in METRICS:
            if not entry or entry.get(key) is None:
                cells += ["not in baseline" if not entry else "–", "–"]
                continue
            verdict = {True: " real", False: " noise"}.get(entry.get(f"{key}_real"), " ?")
            cells += [fmt.format(entry[key]), _percent(entry.get(f"{key}_change")) + verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _level(row: dict[str, Any]) -> dict[str, Any]:
    """One level of summary.json: measured, autodeploy's prediction, and aiconfigurator's / the baseline's
    where the report has them."""
    keys = [key for key, _, _, _, _ in METRICS]
    level: dict[str, Any] = {
        "concurrency": row["concurrency"],
        "requests": row["requests"],
        "errors": row["errors"],
        "measured": {k: row[f"{k}_measured"] for k in keys},
        "predicted": {k: row[f"{k}_predicted"] for k in keys},
        "error": {k: row[f"{k}_error"] for k in keys},
    }
    for extra in ("aiconfigurator", "baseline"):
        if extra in row:
            level[extra] = row[extra]
    return level


def plot(
    rows: list[dict[str, Any]],
    frontier: list[dict[str, float]],
    directory: Path,
    title: str,
    curve: list[dict[str, float]],
    limits: dict[str, float],
) -> list[str]:
    """Measured points against the predicted curve: latency vs concurrency, and the throughput trade-off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, key, label in ((axes[0], "ttft_ms", "TTFT (ms)"), (axes[1], "tpot_ms", "TPOT (ms)")):
        ax.plot(
            [p["concurrency"] for p in curve],
            [p[key] for p in curve],
            "-",
            color="tab:blue",
            label="predicted",
        )
        measured = [r[f"{key}_measured"] for r in rows]
        ax.plot([r["concurrency"] for r in rows], measured, "o", color="tab:red", label="measured")
        _plot_others(ax, rows, "concurrency", key)
        ax.axhline(limits[key], color="grey", ls="--", lw=1, label="SLA limit")
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("concurrency")
        ax.set_ylabel(label)
        ax.legend()
        ax.grid(alpha=0.3)
    ax = axes[2]
    if frontier:
        ax.plot(
            [p["tokens_per_s_per_user"] for p in frontier],
            [p["tokens_per_s_per_gpu"] for p in frontier],
            "--",
            color="grey",
            label="predicted frontier (all configs)",
        )
    ax.plot(
        [p["tokens_per_s_per_user"] for p in curve],
        [p["tokens_per_s_per_gpu"] for p in curve],
        "-",
        color="tab:blue",
        label="deployed config, predicted",
    )
    ax.plot(
        [r["tokens_per_s_per_user_measured"] for r in rows],
        [r["tokens_per_s_per_gpu_measured"] for r in rows],
        "o",
        color="tab:red",
        label="deployed config, measured",
    )
    _plot_others(ax, rows, "tokens_per_s_per_user", "tokens_per_s_per_gpu")
    for r in rows:
        ax.annotate(
            f"c{r['concurrency']}",
            (r["tokens_per_s_per_user_measured"], r["tokens_per_s_per_gpu_measured"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.set_xlabel("tokens/s/user")
    ax.set_ylabel("tokens/s/gpu")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path = directory / "measured_vs_predicted.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path.name]


def _plot_others(ax: Any, rows: list[dict[str, Any]], x_key: str, y_key: str) -> None:
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


class Summarize(Stage):
    """Compare every measured level with the model's prediction for the deployed plan at that concurrency.

    Done: report/summary.json, report/summary.md and report/measured_vs_predicted.png are written and
    the table is printed. Verify: trusts the record.
    """

    name = "summarize"
    summary = "compare measured with predicted: tables, plots, report"
    needs = ("configure", "benchmark")
    Outputs = SummarizeOutputs

    def inputs(self, config: PipelineConfig) -> Mapping[str, Any]:
        return {
            "sla": config.sla.model_dump(),
            "aiconfigurator_dir": str(config.summarize.aiconfigurator_dir or ""),
            "baseline": str(config.benchmark.baseline or ""),
        }

    def run(self, ctx: StageContext) -> SummarizeOutputs:
        configure, benchmark = ctx.output(ConfigureOutputs), ctx.output(BenchmarkOutputs)
        plan = configure.plan
        levels = [
            json.loads((ctx.run_dir / benchmark.files[str(c)]).read_text())["summary"]
            for c in benchmark.levels
        ]
        rows = compare(levels, plan)
        compared = self._aiconfigurator(ctx, configure, rows)
        baseline = self._baseline(ctx, benchmark, rows)
        directory = ctx.path("report")
        directory.mkdir(parents=True, exist_ok=True)
        search = ctx.run_dir / "configure" / "search.json"
        frontier = (
            json.loads(search.read_text()).get("frontier", {}).get(plan.mode, []) if search.exists() else []
        )
        design = round(configure.prediction.concurrency)
        plan_text = f"{plan.mode}, {plan.replicas} replica(s) of {plan.layout()}"
        text = markdown(ctx.config, plan_text, rows, design)
        if compared:
            text += aiconfigurator_markdown(compared, rows)
        if baseline:
            text += baseline_markdown(baseline, rows)
        ctx.write_text("report/summary.md", text)
        summary = {
            "plan": plan.to_dict(),
            "source": configure.source,
            "design_concurrency": design,
            "rows": rows,
            "levels": [_level(row) for row in rows],
        }
        if compared:
            summary["aiconfigurator"] = {"directory": compared[0], "compared": compared[1]}
        if baseline:
            summary["baseline"] = {"directory": baseline}
        ctx.write_text("report/summary.json", json.dumps(summary, indent=2))
        title = f"{ctx.config.name}: {plan_text}"
        curve = predicted_curve(plan, max(max(benchmark.levels), design))
        limits = {"ttft_ms": ctx.config.sla.ttft_ms, "tpot_ms": ctx.config.sla.tpot_ms}
        files = ["summary.md", "summary.json", *plot(rows, frontier, directory, title, curve, limits)]
        self._log_table(ctx, rows)
        at_design = next((r for r in rows if r["concurrency"] == design), rows[-1])
        return SummarizeOutputs(
            files=[f"report/{name}" for name in files],
            design_concurrency=design,
            at_design={k: v for k, v in at_design.items() if not k.endswith("_p90_ms")},
            meets_sla=bool(
                at_design["ttft_ms_measured"] is not None
                and at_design["ttft_ms_measured"] <= ctx.config.sla.ttft_ms
                and at_design["tpot_ms_measured"] is not None
                and at_design["tpot_ms_measured"] <= ctx.config.sla.tpot_ms
            ),
        )

    def _aiconfigurator(
        self, ctx: StageContext, configure: ConfigureOutputs, rows: list[dict[str, Any]]
    ) -> tuple[str, str] | None:
        """aiconfigurator's prediction into every row (row["aiconfigurator"]), when a result is at hand:
        summarize.aiconfigurator_dir, else the one configure imported. Returns (directory, what)."""
        imported = configure.aiconfigurator if configure.source == "aiconfigurator" else None
        directory = ctx.config.summarize.aiconfigurator_dir or (imported or {}).get("directory")
        if not directory:
            return None
        what, columns = aiconfigurator_columns(Path(directory), configure.plan, rows, imported)
        for row, entry in zip(rows, columns, strict=True):
            row["aiconfigurator"] = entry
        ctx.log.info("aiconfigurator (%s): %s", directory, what)
        return str(directory), what

    def _baseline(
        self, ctx: StageContext, benchmark: BenchmarkOutputs, rows: list[dict[str, Any]]
    ) -> str | None:
        """The baseline run's measurement into every row it has (row["baseline"]): benchmark.baseline."""
        from automation.baseline import baseline_columns

        directory = ctx.config.benchmark.baseline
        if directory is None:
            return None
        documents = [
            json.loads((ctx.run_dir / benchmark.files[str(c)]).read_text()) for c in benchmark.levels
        ]
        for row, column in zip(rows, baseline_columns(Path(directory), documents), strict=True):
            if column["in_baseline"]:
                entry: dict[str, Any] = {"at": "level"}
                for key, _, _, _, _ in METRICS:
                    entry[key] = column[f"{key}_baseline"]
                    entry[f"{key}_change"] = column[f"{key}_change"]
                    entry[f"{key}_real"] = column[f"{key}_real"]
                row["baseline"] = entry
        return str(directory)

    def describe(self, outputs: SummarizeOutputs) -> str:
        d = outputs.at_design
        sla = "meets the SLA" if outputs.meets_sla else "misses the SLA"
        return (
            f"at c={d['concurrency']}: TTFT {d['ttft_ms_measured']:.0f} ms "
            f"({_percent(d['ttft_ms_error'])}), TPOT {d['tpot_ms_measured']:.2f} ms ({_percent(d['tpot_ms_error'])}), "
            f"{d['tokens_per_s_per_gpu_measured']:.0f} tok/s/gpu ({_percent(d['tokens_per_s_per_gpu_error'])}); {sla}; "
            "report/summary.md"
        )

    def _log_table(self, ctx: StageContext, rows: list[dict[str, Any]]) -> None:
        lines = []
        for row in rows:
            parts = [f"c={row['concurrency']:<4}"]
            for key, _, label, _, fmt in METRICS:
                measured = row[f"{key}_measured"]
                shown = fmt.format(measured) if measured is not None else "–"
                parts.append(
                    f"{label} {shown} vs {fmt.format(row[f'{key}_predicted'])} ({_percent(row[f'{key}_error'])})"
                )
            lines.append("  ".join(parts))
        ctx.log.info("measured vs predicted:\n%s", "\n".join(lines))
