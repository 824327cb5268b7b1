"""The build stage: make sure the Dynamo/TRT-LLM image is on every node that runs workers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from automation.config import PipelineConfig
from automation.contracts import BuildOutputs, recorded
from automation.docker_engine import DockerEngine
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
        image = config.dynamo.image
        if not image:
            raise StageError(
                "dynamo.image is not set, and launch.runtime: container needs one",
                hint="set dynamo.image to the Dynamo/TRT-LLM image, or launch.runtime: host",
            )
        images: dict[str, str] = {}
        for node in config.cluster.nodes:
            name = node.name or node.host
            ctx.display.status(f"{image} on {name}")
            host = host_for(config, node)
            try:
                engine = DockerEngine(host)
                if source == "pull":
                    images[name] = engine.ensure_image(image, "dynamo.image")
                else:
                    found = engine.image_id(image)
                    if found is None:
                        raise StageError(
                            f"image {image} is not on {name} (dynamo.image_source: present)",
                            hint="docker pull / docker load it there, or set dynamo.image_source: pull",
                            host=name,
                        )
                    images[name] = found
            finally:
                host.close()
            ctx.log.info("%s: %s is %s", name, image, images[name])
        return BuildOutputs(image=image, images=images)

    def verify(self, ctx: StageContext, record: StageRecord) -> Check:
        outputs = recorded(BuildOutputs, record.outputs)
        if outputs is None or not outputs.image:
            return Check.still_valid("no image needed (launch.runtime: host)")
        for node in ctx.config.cluster.nodes:
            name = node.name or node.host
            host = host_for(ctx.config, node)
            try:
                now = DockerEngine(host).image_id(outputs.image)
            finally:
                host.close()
            if now is None:
                return Check.stale(f"the image is no longer on {name}")
            if now != outputs.images.get(name):
                return Check.stale(f"{outputs.image} on {name} is another image now ({now[:19]})")
        return Check.still_valid("the image is unchanged on every node")

    def describe(self, outputs: BuildOutputs) -> str:
        return outputs.image or "no image (host runtime)"
