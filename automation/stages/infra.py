"""The infra stage: etcd and NATS on node 0."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from automation.config import PipelineConfig
from automation.errors import NotImplementedStageError
from automation.stage import Stage, StageContext


class Infra(Stage):
    """Done: both are healthy and their endpoints recorded. Verify: probes etcd /health and NATS /healthz."""

    name = "infra"
    summary = "start etcd and NATS on node 0"
    needs = ()

    def inputs(self, config: PipelineConfig) -> Mapping[str, Any]:
        return {"infra": config.infra.model_dump(), "head": config.head.model_dump(mode="json")}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        raise NotImplementedStageError(
            "the infra stage is not implemented yet (issue #5)",
            hint="run the stages that exist, e.g. autodeploy run FILE --to <stage>",
        )
