"""The launch stage: start every node script and wait until every worker serves."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from automation.config import PipelineConfig
from automation.errors import NotImplementedStageError
from automation.stage import Stage, StageContext


class Launch(Stage):
    """Done: the expected instances are registered and a smoke request is answered. Verify: probes the frontend."""

    name = "launch"
    summary = "start the node scripts and wait until every worker serves"
    needs = ("generate", "build", "checkpoint", "infra")

    def inputs(self, config: PipelineConfig) -> Mapping[str, Any]:
        return {"launch": config.launch.model_dump(), "cluster": config.cluster.model_dump(mode="json")}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        raise NotImplementedStageError(
            "the launch stage is not implemented yet (issue #5)",
            hint="run the stages that exist, e.g. autodeploy run FILE --to <stage>",
        )
