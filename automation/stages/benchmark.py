"""The benchmark stage: a concurrency sweep against the frontend, one result file per level."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from automation.bench.sweep import concurrency_levels
from automation.config import PipelineConfig
from automation.contracts import BenchmarkOutputs, ConfigureOutputs, LaunchOutputs
from automation.errors import StageError
from automation.stage import Stage, StageContext

__all__ = ["Benchmark", "concurrency_levels"]


class Benchmark(Stage):
    """Measure the deployment at each level with streaming requests.

    Closed loop (benchmark.mode: concurrency): each level sends requests_per_concurrency × c measured
    requests (plus warm-up × c first, not counted) with c users, in the warm-up method configured
    (burst: the measured phase starts as one batch; steady: it follows the warm-up). Request rate:
    Poisson arrivals at each rate. Prompts of exactly ISL tokens that share no prefix, exactly OSL output
    tokens (ignore_eos). Around each level's measured window the frontend's /metrics is read (the
    server's TTFT and ITL beside the client's; the cached-token proof), and nvidia-smi is sampled where
    nodes have it. A level with too many errors, a TTFT beyond stop_ttft_factor × the SLA, or a saturated
    client ends the sweep; the levels measured are kept. Done: bench/<level>.json per level.
    Verify: trusts the record. When an interrupted or failed sweep resumes, a level already measured
    against the same running deployment (the launch it records) is not measured again.
    """

    name = "benchmark"
    summary = "measure a concurrency sweep against the deployment"
    needs = ("configure", "launch")
    Outputs = BenchmarkOutputs

    def inputs(self, config: PipelineConfig) -> Mapping[str, Any]:
        return {
            "benchmark": config.benchmark.model_dump(),
            "workload": config.workload.model_dump(),
            "served_name": config.model.served_name,
            "model_path": config.model.path,
            "sla": config.sla.model_dump(),
        }

    def run(self, ctx: StageContext) -> BenchmarkOutputs:
        from automation.bench.prompts import read_tokenizer
        from automation.bench.sweep import LevelContext, measure_level, plan_levels, stop_reason
        from automation.bench.telemetry import GpuTelemetry
        from automation.remote import host_for

        config, bench = ctx.config, ctx.config.benchmark
        configure, launch = ctx.output(ConfigureOutputs), ctx.output(LaunchOutputs)
        plan = configure.plan
        levels = plan_levels(bench, plan, configure.prediction, config.workload.osl)
        deployment = hashlib.sha256(json.dumps(launch.processes, sort_keys=True).encode()).hexdigest()[:16]
        model_dir = Path(config.model.path or "").expanduser()
        tokenizer = read_tokenizer(model_dir)
        if bench.client in ("aiperf", "both"):
            from automation.bench.aiperf import find_aiperf

            find_aiperf(bench.aiperf_bin)  # a missing aiperf is a one-line error before any level runs
        directory = ctx.path("bench")
        directory.mkdir(parents=True, exist_ok=True)
        telemetry = None
        if bench.telemetry:
            telemetry = GpuTelemetry(
                {node.name or "": host_for(config, node) for node in config.cluster.nodes}
            )
            telemetry.probe()
            if telemetry.absent:
                ctx.log.info("GPU telemetry: %s (noted in the report)", telemetry.absent_reason())
        shared = LevelContext(
            url=launch.frontend,
            model=config.model.served_name or "",
            isl=config.workload.isl,
            osl=config.workload.osl,
            gpus=plan.total_gpus,
            sla=(config.sla.ttft_ms, config.sla.tpot_ms),
            bench=bench,
            tokenizer_json=tokenizer,
            tokenizer_dir=model_dir,
            directory=directory,
            telemetry=telemetry,
            on_progress=_progress_of(ctx, ""),
        )
        results: dict[str, str] = {}
        measured: list[str] = []
        stopped: str | None = None
        # Levels measured by an interrupted or failed attempt against this same deployment are kept.
        resuming = ctx.previous_status in ("running", "interrupted", "failed")
        ctx.log.info(
            "levels %s against %s (%d GPUs; client %s, warm-up %s, %s)",
            [spec.label for spec in levels],
            launch.frontend,
            plan.total_gpus,
            bench.client,
            bench.warmup,
            bench.endpoint,
        )
        for spec in levels:
            key = _key(spec)
            path = directory / f"{spec.name}.json"
            relative = str(path.relative_to(ctx.run_dir))
            if resuming and _passed_against(path, deployment):
                ctx.log.info("%s: already measured against this deployment", spec.label)
                results[key] = relative
                measured.append(spec.name)
                continue
            shared.on_progress = _progress_of(ctx, spec.label)
            document = measure_level(shared, spec, deployment)
            stopped = stop_reason(document, config.sla.ttft_ms, bench)
            if stopped:
                document["stopped"] = stopped
            ctx.write_text(relative, json.dumps(document, indent=1))
            summary = document["summary"]
            ctx.log.info(
                "%s: %s",
                spec.label,
                json.dumps({k: v for k, v in summary.items() if k not in ("error_examples",)}),
            )
            for flag in document["server"].get("flags", []):
                ctx.log.warning("%s: server vs client: %s", spec.label, flag)
            if document["summary"]["cached_tokens"]["reused"]:
                ctx.log.warning("%s: prompt tokens were served from cache: the level is marked", spec.label)
            if not document["passed"] and not results:
                # Nothing measured yet: the deployment does not serve; a resumed sweep measures it again.
                raise StageError(
                    f"{spec.label}: {summary['errors']} of {summary['requests']} requests failed "
                    f"(e.g. {summary['error_examples'][0] if summary['error_examples'] else 'no detail'})",
                    hint=f"see {relative} and the node logs; fix the deployment and rerun",
                )
            if document["passed"]:
                results[key] = relative
                measured.append(spec.name)
            if stopped:
                ctx.log.warning("the sweep stops: %s", stopped)
                break
        return BenchmarkOutputs(
            levels=[spec.concurrency for spec in levels if spec.name in measured and spec.rate_per_s is None],
            names=measured,
            files=results,
            gpus=plan.total_gpus,
            deployment=deployment,
            stopped=stopped,
        )

    def describe(self, outputs: BenchmarkOutputs) -> str:
        text = (
            f"{len(outputs.files)} levels ({', '.join(outputs.names or map(str, outputs.levels))}) in bench/"
        )
        return text + (f"; stopped early: {outputs.stopped}" if outputs.stopped else "")


def _key(spec: Any) -> str:
    """The level's key in BenchmarkOutputs.files: the concurrency (as before), or r<rate>."""
    return str(spec.concurrency) if spec.rate_per_s is None else spec.name


def _passed_against(path: Path, deployment: str) -> bool:
    """A level file of a level that passed, measured against this very deployment."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return bool(document.get("deployment") == deployment and document.get("passed") is True)


def _progress_of(ctx: StageContext, label: str) -> Callable[[str, int], Callable[[Any], None]]:
    """A factory of progress bars named after the level."""

    def bar(what: str, total: int) -> Callable[[Any], None]:
        return _advance(ctx.display.progress(f"{label}: {what}", total=total))

    return bar


def _advance(progress: Any) -> Callable[[Any], None]:
    """A callback that moves a level's progress bar one request on."""

    def advance(record: Any) -> None:
        progress.advance()

    return advance
