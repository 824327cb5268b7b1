"""The summarize stage: measured against predicted, as tables, plots and a report."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from automation.config import PipelineConfig
from automation.errors import NotImplementedStageError
from automation.stage import Stage, StageContext


class Summarize(Stage):
    """Done: the report files are written. Verify: trusts the record."""

    name = "summarize"
    summary = "compare measured with predicted: tables, plots, report"
    needs = ("configure", "benchmark")

    def inputs(self, config: PipelineConfig) -> Mapping[str, Any]:
        return {}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        raise NotImplementedStageError(
            "the summarize stage is not implemented yet (issue #7)",
            hint="run the stages that exist, e.g. autodeploy run FILE --to <stage>",
        )
