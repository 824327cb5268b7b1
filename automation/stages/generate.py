"""The generate stage: engine YAMLs, per-node scripts, placement, mocker profiles, Kubernetes manifest."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from automation.config import PipelineConfig
from automation.errors import NotImplementedStageError
from automation.stage import Stage, StageContext


class Generate(Stage):
    """Done: every file is written and its hash recorded. Verify: the files still match their hashes."""

    name = "generate"
    summary = "render engine configs, node scripts and the Kubernetes manifest"
    needs = ("configure",)

    def inputs(self, config: PipelineConfig) -> Mapping[str, Any]:
        return {
            "model": config.model.model_dump(mode="json"),
            "backend": config.backend.model_dump(),
            "engine": config.engine.model_dump(),
            "dynamo": config.dynamo.model_dump(mode="json"),
            "cluster": config.cluster.model_dump(mode="json"),
            "infra": config.infra.model_dump(),
            "launch": config.launch.model_dump(),
        }

    def run(self, ctx: StageContext) -> dict[str, Any]:
        raise NotImplementedStageError(
            "the generate stage is not implemented yet (issue #4)",
            hint="run the stages that exist, e.g. autodeploy run FILE --to <stage>",
        )
