"""The configure stage: sweep the performance model and pick the best config under the SLA."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from automation.config import PipelineConfig
from automation.errors import NotImplementedStageError
from automation.stage import Stage, StageContext


class Configure(Stage):
    """Done: the picked plan, the top-N per mode and the predictions are recorded. Verify: trusts the record."""

    name = "configure"
    summary = "sweep the performance model, pick the best config under the SLA"
    needs = ()

    def inputs(self, config: PipelineConfig) -> Mapping[str, Any]:
        return {
            "model": config.model.hf_id,
            "config_dir": str(config.model.config_dir or ""),
            "system": config.system,
            "workload": config.workload.model_dump(),
            "sla": config.sla.model_dump(),
            "search": config.search.model_dump(),
            "engine": config.engine.model_dump(),
            "gpus_per_node": [node.gpus for node in config.cluster.nodes],
        }

    def run(self, ctx: StageContext) -> dict[str, Any]:
        raise NotImplementedStageError(
            "the configure stage is not implemented yet (issue #3)",
            hint="run the stages that exist, e.g. autodeploy run FILE --to <stage>",
        )
