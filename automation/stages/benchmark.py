"""The benchmark stage: a concurrency sweep against the frontend, one result file per level."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from automation.config import PipelineConfig
from automation.errors import NotImplementedStageError
from automation.stage import Stage, StageContext


class Benchmark(Stage):
    """Done: one result file per concurrency level. Verify: trusts the record."""

    name = "benchmark"
    summary = "measure a concurrency sweep against the deployment"
    needs = ("configure", "launch")

    def inputs(self, config: PipelineConfig) -> Mapping[str, Any]:
        return {
            "benchmark": config.benchmark.model_dump(),
            "workload": config.workload.model_dump(),
            "served_name": config.model.served_name,
        }

    def run(self, ctx: StageContext) -> dict[str, Any]:
        raise NotImplementedStageError(
            "the benchmark stage is not implemented yet (issue #6)",
            hint="run the stages that exist, e.g. autodeploy run FILE --to <stage>",
        )
