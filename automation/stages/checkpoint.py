"""The checkpoint stage: download and verify the model weights where the nodes read them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from automation.config import PipelineConfig
from automation.errors import NotImplementedStageError
from automation.stage import Stage, StageContext


class Checkpoint(Stage):
    """Done: the file list and sizes are verified on each node. Verify: a cheap size check."""

    name = "checkpoint"
    summary = "download and verify the checkpoint on the nodes"
    needs = ()

    def inputs(self, config: PipelineConfig) -> Mapping[str, Any]:
        return {
            "model": {
                "hf_id": config.model.hf_id,
                "revision": config.model.revision,
                "path": config.model.path,
            },
            "checkpoint": config.checkpoint.model_dump(mode="json"),
            "nodes": [node.host for node in config.cluster.nodes],
        }

    def run(self, ctx: StageContext) -> dict[str, Any]:
        raise NotImplementedStageError(
            "the checkpoint stage is not implemented yet (issue #5)",
            hint="run the stages that exist, e.g. autodeploy run FILE --to <stage>",
        )
