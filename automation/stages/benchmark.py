"""The benchmark stage: a concurrency sweep against the frontend, one result file per level."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from automation.config import PipelineConfig
from automation.contracts import BenchmarkOutputs, ConfigureOutputs, LaunchOutputs
from automation.errors import NotImplementedStageError, StageError
from automation.stage import Stage, StageContext

MAX_ERROR_FRACTION = 0.05


def concurrency_levels(setting: Literal["auto"] | list[int], predicted: float) -> list[int]:
    """auto: 1, 2, 4, ... below the predicted cluster concurrency, then that concurrency itself."""
    if setting != "auto":
        return list(setting)
    target = max(1, round(predicted))
    levels: list[int] = []
    level = 1
    while level < target:
        levels.append(level)
        level *= 2
    return [*levels, target]


class Benchmark(Stage):
    """Measure the deployment at each concurrency level with streaming requests.

    Each level sends requests_per_concurrency × c measured requests (plus warm-up × c first, not
    counted) with c in flight, prompts of exactly ISL tokens that share no prefix, and exactly OSL
    output tokens (ignore_eos). Done: bench/c<N>.json per level (summary + every request).
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
        }

    def run(self, ctx: StageContext) -> BenchmarkOutputs:
        from automation.bench.client import run_level
        from automation.bench.metrics import summarize
        from automation.bench.prompts import PromptMaker, read_tokenizer

        config, bench = ctx.config, ctx.config.benchmark
        if bench.client == "aiperf":
            raise NotImplementedStageError(
                "benchmark.client: aiperf is not implemented yet", hint="use benchmark.client: builtin"
            )
        configure, launch = ctx.output(ConfigureOutputs), ctx.output(LaunchOutputs)
        plan = configure.plan
        levels = concurrency_levels(bench.concurrency, configure.prediction.concurrency)
        deployment = hashlib.sha256(json.dumps(launch.processes, sort_keys=True).encode()).hexdigest()[:16]
        tokenizer = read_tokenizer(Path(config.model.path or ""))
        directory = ctx.path("bench")
        directory.mkdir(parents=True, exist_ok=True)
        results: dict[str, str] = {}
        # Levels measured by an interrupted or failed attempt against this same deployment are kept.
        resuming = ctx.previous_status in ("running", "interrupted", "failed")
        ctx.log.info("levels %s against %s (%d GPUs)", levels, launch.frontend, plan.total_gpus)
        for level in levels:
            path = directory / f"c{level}.json"
            if resuming and _passed_against(path, deployment):
                ctx.log.info("c=%d: already measured against this deployment", level)
                results[str(level)] = str(path.relative_to(ctx.run_dir))
                continue
            warmup, measured = bench.warmup_per_concurrency * level, bench.requests_per_concurrency * level
            maker = PromptMaker(tokenizer, config.workload.isl, seed=bench.seed * 7919 + level)
            prompts = [maker.make(i) for i in range(warmup + measured)]
            progress = ctx.display.progress(f"c={level}: requests", total=warmup + measured)
            records = run_level(
                launch.frontend,
                config.model.served_name or "",
                prompts,
                warmup,
                level,
                config.workload.osl,
                bench.request_timeout_s,
                on_done=_advance(progress),
            )
            summary = summarize(records, level, plan.total_gpus)
            passed = summary["errors"] <= MAX_ERROR_FRACTION * summary["requests"]
            document = {
                "summary": summary,
                # Only a passed level is kept when a sweep resumes; a failed one is measured again.
                "passed": passed,
                "deployment": deployment,
                "isl": config.workload.isl,
                "osl": config.workload.osl,
                "requests": [r.to_dict() for r in sorted(records, key=lambda r: r.index)],
            }
            ctx.write_text(path.relative_to(ctx.run_dir), json.dumps(document, indent=1))
            ctx.log.info(
                "c=%d: %s", level, json.dumps({k: v for k, v in summary.items() if k != "error_examples"})
            )
            if not passed:
                raise StageError(
                    f"c={level}: {summary['errors']} of {summary['requests']} requests failed "
                    f"(e.g. {summary['error_examples'][0] if summary['error_examples'] else 'no detail'})",
                    hint=f"see bench/c{level}.json and the node logs; fix the deployment and rerun",
                )
            results[str(level)] = str(path.relative_to(ctx.run_dir))
        return BenchmarkOutputs(levels=levels, files=results, gpus=plan.total_gpus, deployment=deployment)

    def describe(self, outputs: BenchmarkOutputs) -> str:
        return f"{len(outputs.levels)} levels (c = {', '.join(map(str, outputs.levels))}) in bench/"


def _passed_against(path: Path, deployment: str) -> bool:
    """A level file of a level that passed, measured against this very deployment."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return bool(document.get("deployment") == deployment and document.get("passed") is True)


def _advance(progress: Any) -> Callable[[Any], None]:
    """A callback that moves a level's progress bar one request on."""

    def advance(record: Any) -> None:
        progress.advance()

    return advance
