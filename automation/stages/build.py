"""The build stage: make sure the Dynamo/TRT-LLM image is on every node that runs workers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from automation.config import PipelineConfig
from automation.contracts import BuildOutputs, recorded
from automation.errors import NotImplementedStageError, StageError
from automation.remote import host_for
from automation.stage import Check, Stage, StageContext
from automation.state import StageRecord


class Build(Stage):
    """The image every node script runs in.

    Done: each node has the image (its id recorded), or the launch runtime is `host` and needs none.
    Verify: the recorded image ids are still present. image_source `pull` pulls a missing image and
    `present` requires it; `build` and `load` are not implemented yet and say so.
    """

    name = "build"
    summary = "put the Dynamo/TRT-LLM image on every node"
    needs = ()
    Outputs = BuildOutputs

    def inputs(self, config: PipelineConfig) -> Mapping[str, Any]:
        return {
            "dynamo": config.dynamo.model_dump(mode="json"),
            "runtime": config.launch.runtime,
            "nodes": [node.host for node in config.cluster.nodes],
        }

    def run(self, ctx: StageContext) -> BuildOutputs:
        config = ctx.config
        if config.launch.runtime == "host":
            return BuildOutputs(
                image=None, images={}, why="launch.runtime is host: node scripts run without a container"
            )
        source = config.dynamo.image_source
        if source in ("build", "load"):
            raise NotImplementedStageError(
                f"dynamo.image_source '{source}' is not implemented yet",
                hint="build or load the image on every node yourself and set dynamo.image_source: present",
            )
        from automation.docker_engine import DockerEngine

        image = config.dynamo.image or ""
        images: dict[str, str] = {}
        for node in config.cluster.nodes:
            ctx.display.status(f"{image} on {node.name}")
            engine = DockerEngine(host_for(config, node))
            try:
                if source == "pull":
                    engine.ensure_image(image, "dynamo.image")
                elif not engine.image_present(image):
                    raise StageError(
                        f"image {image} is not on {node.name} (dynamo.image_source: present)",
                        hint="docker pull / docker load it there, or set dynamo.image_source: pull",
                    )
                images[node.name] = engine.image_id(image)
            finally:
                engine.close()
        return BuildOutputs(image=image, images=images)

    def verify(self, ctx: StageContext, record: StageRecord) -> Check:
        outputs = recorded(BuildOutputs, record.outputs)
        if outputs is None or not outputs.image:
            return Check.still_valid("no image needed (launch.runtime: host)")
        from automation.docker_engine import DockerEngine

        for node in ctx.config.cluster.nodes:
            engine = DockerEngine(host_for(ctx.config, node))
            try:
                if not engine.image_present(outputs.image):
                    return Check.stale(f"the image is no longer on {node.name}")
            finally:
                engine.close()
        return Check.still_valid("image present on every node")

    def describe(self, outputs: BuildOutputs) -> str:
        return outputs.image or "no image (host runtime)"
