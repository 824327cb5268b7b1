"""The build stage: make sure the Dynamo/TRT-LLM image is on every node (pull, build or load)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from automation.config import PipelineConfig
from automation.errors import NotImplementedStageError
from automation.stage import Stage, StageContext


class Build(Stage):
    """Done: the image id on each node is recorded. Verify: the image is still present."""

    name = "build"
    summary = "put the Dynamo/TRT-LLM image on every node"
    needs = ()

    def inputs(self, config: PipelineConfig) -> Mapping[str, Any]:
        return {
            "dynamo": config.dynamo.model_dump(mode="json"),
            "runtime": config.launch.runtime,
            "nodes": [node.host for node in config.cluster.nodes],
        }

    def run(self, ctx: StageContext) -> dict[str, Any]:
        raise NotImplementedStageError(
            "the build stage is not implemented yet (issue #5)",
            hint="run the stages that exist, e.g. autodeploy run FILE --to <stage>",
        )
