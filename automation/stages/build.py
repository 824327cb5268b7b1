"""The build stage: the Dynamo/TRT-LLM image on every node, the same image id everywhere, of the versions generated for."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from automation.config import PipelineConfig
from automation.console import ProgressTask
from automation.contracts import BuildOutputs, ImageArrival, recorded
from automation.docker_engine import DockerEngine
from automation.errors import StageError
from automation.image_build import build_recipe, check_tree, checkout, file_has, run_build
from automation.image_transfer import Rate, archive, registry_reference, saved_image, send
from automation.remote import Host, host_for, on_hosts
from automation.stage import Check, Stage, StageContext
from automation.state import StageRecord
from automation.versions import wheel_of

# Labels an image may carry to say what it holds (autodeploy's own build of a 1.x image writes them);
# the image's python3 is asked as well, and both must agree with the pipeline.
DYNAMO_LABEL = "autodeploy.dynamo.version"
TRTLLM_LABEL = "autodeploy.trtllm.version"


@contextmanager
def node_engines(config: PipelineConfig) -> Iterator[dict[str, DockerEngine]]:
    """A Docker engine per node (by node name, in the cluster's order), each on its own Host; closed after."""
    hosts: list[Host] = []
    try:
        for node in config.cluster.nodes:
            hosts.append(host_for(config, node))
        yield {host.name: DockerEngine(host) for host in hosts}
    finally:
        for host in hosts:
            host.close()


class Build(Stage):
    """The image every node script runs in, with the same id on every node.

    image_source present: every node must have it. pull: each node that lacks it pulls it. build: node 0
    builds it from dynamo.source with the release's own command (versions.yaml image_build). load: node 0
    loads dynamo.image_tar. A built or loaded image then goes to every node that lacks that id: through
    dynamo.registry (pushed once, pulled by the others) or streamed over SSH (one `docker save` on node 0
    into a `docker load` on several nodes at once, nothing written to disk).
    Then the versions the image holds (its python3, and its labels) must be the pipeline's, since generate
    wrote flags and engine YAMLs for those.
    Done: every node holds the image id recorded. Verify: the ids, one cheap inspect per node.
    """

    name = "build"
    summary = "put the Dynamo/TRT-LLM image on every node"
    needs = ()
    Outputs = BuildOutputs
    revision = 2

    def inputs(self, config: PipelineConfig) -> Mapping[str, Any]:
        dynamo = config.dynamo.model_dump(
            mode="json",
            include={"version", "image", "image_source", "source", "build_args", "image_tar", "registry"},
        )
        return {
            "dynamo": dynamo,
            "trtllm": config.backend.version,
            "engine": config.launch.engine,
            "runtime": config.launch.runtime,
            "nodes": [node.host for node in config.cluster.nodes],
        }

    def run(self, ctx: StageContext) -> BuildOutputs:
        config = ctx.config
        if config.launch.runtime == "host":
            return BuildOutputs(
                image=None, images={}, why="launch.runtime is host: node scripts run without a container"
            )
        image = config.dynamo.image
        assert image is not None  # filled in by the config
        with node_engines(config) as engines:
            names = list(engines)
            origin = engines[names[0]]
            ctx.display.status(f"looking for {image} on {', '.join(names)}")
            found = dict(
                zip(
                    names,
                    on_hosts([e.host for e in engines.values()], _image_id(engines, image)),
                    strict=True,
                )
            )
            arrivals: dict[str, ImageArrival] = {}
            source = config.dynamo.image_source
            if source in ("present", "pull"):
                arrivals = self._everywhere(ctx, engines, found, image)
            else:
                if source == "build":
                    self._build(ctx, origin, image)
                    arrivals[origin.host.name] = "built"
                else:
                    self._load(ctx, origin, image)
                    arrivals[origin.host.name] = "loaded"
                found[origin.host.name] = origin.image_id(image)
            reference = found[origin.host.name]
            assert reference is not None
            versions = self._versions(ctx, origin, image)
            digests: dict[str, str] = {}
            ship_s: float | None = None
            behind = [n for n in names[1:] if found[n] != reference] if source in ("build", "load") else []
            if source in ("build", "load"):
                arrivals.update({n: "present" for n in names[1:] if n not in behind})
            if behind:
                started = time.monotonic()
                if config.dynamo.registry:
                    digests = self._through_registry(ctx, engines, behind, image, config.dynamo.registry)
                    arrivals.update({n: "pulled" for n in behind})
                else:
                    self._stream(ctx, origin, [engines[n] for n in behind], image)
                    arrivals.update({n: "received" for n in behind})
                ship_s = time.monotonic() - started
                for name in behind:
                    found[name] = engines[name].image_id(image)
            _same_everywhere(found, image, names[0])
        images = {name: str(found[name]) for name in names}
        size = 0 if ship_s is None else _saved_size(origin, image)
        for name in names:
            ctx.log.info("%s: %s is %s (%s)", name, image, images[name], arrivals.get(name, "present"))
        return BuildOutputs(
            image=image,
            images=images,
            versions=versions,
            arrivals=arrivals,
            digests=digests,
            ship_s=None if ship_s is None else round(ship_s, 2),
            shipped_mb_per_s=None if ship_s is None else round(size / 1e6 / max(ship_s, 1e-3), 1),
        )

    # ------------------------------------------------------------------------------- getting the image

    def _everywhere(
        self, ctx: StageContext, engines: dict[str, DockerEngine], found: dict[str, str | None], image: str
    ) -> dict[str, ImageArrival]:
        """present: every node has it already; pull: the nodes without it pull it (all at once)."""
        missing = [name for name, image_id in found.items() if image_id is None]
        if ctx.config.dynamo.image_source == "present":
            if missing:
                raise StageError(
                    f"image {image} is not on {', '.join(missing)} (dynamo.image_source: present)",
                    hint="docker pull / docker load it there, or set dynamo.image_source: pull, build or load",
                    nodes=missing,
                )
            return {name: "present" for name in found}
        tasks = {name: ctx.display.progress(f"pulling {image} on {name}", total=1) for name in missing}

        def pull(host: Host) -> str:
            image_id = engines[host.name].ensure_image(image, "dynamo.image")
            tasks[host.name].update(completed=1, description=f"pulled {image} on {host.name}")
            return image_id

        pulled = on_hosts([engines[name].host for name in missing], pull)
        found.update(zip(missing, pulled, strict=True))
        return {name: "pulled" if name in missing else "present" for name in found}

    def _build(self, ctx: StageContext, origin: DockerEngine, image: str) -> None:
        config = ctx.config
        tree = checkout(config, origin.host, ctx.remote_dir, ctx.display.status)
        recipe = build_recipe(
            config.dynamo.version,
            str(config.backend.version),
            image,
            config.dynamo.build_args,
            file_has(origin.host, tree),
        )
        check_tree(origin.host, tree, recipe, config.dynamo.version)
        ctx.log.info("building %s on %s with %s (%s)", image, origin.host.name, recipe.family, tree)
        run_build(origin.host, tree, recipe, ctx.log, ctx.display.status)
        if origin.image_id(image) is None:
            raise StageError(
                f"the build on {origin.host.name} succeeded but made no image named {image}",
                hint="dynamo.build_args may have changed the tag; keep the tag autodeploy passes",
                host=origin.host.name,
            )

    def _load(self, ctx: StageContext, origin: DockerEngine, image: str) -> None:
        path = ctx.config.dynamo.image_tar
        assert path is not None
        if not path.is_file():
            raise StageError(
                f"dynamo.image_tar: {path} does not exist on this machine",
                hint="give the path of a `docker save` archive on the head node",
            )
        size = path.stat().st_size
        task = ctx.display.progress(
            f"loading {path.name} on {origin.host.name} (MB)", total=round(size / 1e6, 1)
        )
        send(archive(path), [origin], _progress(task), f"{path.name}")
        if origin.image_id(image) is None:
            raise StageError(
                f"dynamo.image_tar: {path} holds no image named {image}",
                hint=f"set dynamo.image to the name the archive holds (`tar -xOf {path} manifest.json` lists its "
                "RepoTags), or save the image under that name",
                host=origin.host.name,
            )

    def _through_registry(
        self,
        ctx: StageContext,
        engines: dict[str, DockerEngine],
        behind: list[str],
        image: str,
        registry: str,
    ) -> dict[str, str]:
        """Push once from node 0, pull on the others (all at once), and name it `image` there too."""
        origin = next(iter(engines.values()))
        reference = registry_reference(registry, image)
        ctx.display.status(f"pushing {reference} from {origin.host.name}")
        origin.tag(image, reference)
        digest = origin.push(reference)
        ctx.log.info("pushed %s (%s)", reference, digest or "no digest reported")

        def pull(host: Host) -> str:
            engine = engines[host.name]
            ctx.display.status(f"pulling {reference} on {host.name}")
            engine.pull(
                reference,
                hint=f"check that {host.name} reaches {registry} (an http registry must be in its dockerd's "
                "insecure-registries), or unset dynamo.registry to stream the image over SSH",
            )
            engine.tag(reference, image)
            return digest

        digests = on_hosts([engines[name].host for name in behind], pull)
        result = {origin.host.name: digest} if digest else {}
        result.update({name: d for name, d in zip(behind, digests, strict=True) if d})
        return result

    def _stream(
        self, ctx: StageContext, origin: DockerEngine, targets: list[DockerEngine], image: str
    ) -> None:
        """`docker save` on node 0 into `docker load` on the targets, ship_parallel nodes per save."""
        size = _saved_size(origin, image)
        per_save = ctx.config.dynamo.ship_parallel
        for start in range(0, len(targets), per_save):
            batch = targets[start : start + per_save]
            names = ", ".join(e.host.name for e in batch)
            task = ctx.display.progress(
                f"sending {image} to {names} (MB)", total=round(size / 1e6, 1) or None
            )
            rate = _progress(task)
            by_hand = (
                f"ssh {origin.host.address} docker save {image} | ssh {batch[0].host.address} docker load"
            )
            send(saved_image(origin, image), batch, rate, image, by_hand)
            ctx.log.info("sent %.0f MB to %s at %.0f MB/s", rate.bytes / 1e6, names, rate.mb_per_s())

    # ------------------------------------------------------------------------------------ what it holds

    def _versions(self, ctx: StageContext, origin: DockerEngine, image: str) -> dict[str, str | None]:
        """The Dynamo and TRT-LLM versions the image holds, checked against dynamo.version / backend.version.

        Raises:
            StageError: they disagree, or the image says nothing about them.
        """
        config = ctx.config
        info = origin.inspect_image(image)
        labels = dict(info.labels) if info else {}
        ctx.display.status(f"asking {image} which Dynamo and TensorRT-LLM it holds")
        probed = origin.image_versions(image)
        said: dict[str, dict[str, str | None]] = {}
        if DYNAMO_LABEL in labels or TRTLLM_LABEL in labels:
            said["its labels"] = {"dynamo": labels.get(DYNAMO_LABEL), "trtllm": labels.get(TRTLLM_LABEL)}
        if probed is not None:
            said["its python3"] = probed
        if not said:
            raise StageError(
                f"cannot tell which Dynamo {image} holds: it has no python3 on its PATH and no "
                f"{DYNAMO_LABEL} label",
                hint=f"build it with --label {DYNAMO_LABEL}=<version> --label {TRTLLM_LABEL}=<version>",
                host=origin.host.name,
            )
        wanted_dynamo = {config.dynamo.version, wheel_of(config.dynamo.version)}
        for where, versions in said.items():
            dynamo, trtllm = versions.get("dynamo"), versions.get("trtllm")
            labels_silent_on_dynamo = where == "its labels" and dynamo is None
            if not labels_silent_on_dynamo and dynamo not in wanted_dynamo:
                raise StageError(
                    f"{image} holds Dynamo {dynamo or 'nothing'} ({where}), and dynamo.version is "
                    f"{config.dynamo.version}",
                    hint=f"set dynamo.version: {dynamo} (generate writes that release's flags), or use an image "
                    f"of {config.dynamo.version}",
                    host=origin.host.name,
                )
            if trtllm is None and (where == "its labels" or config.launch.engine == "mocker"):
                continue  # the mocker needs no TensorRT-LLM; a label may speak for Dynamo only
            if trtllm != config.backend.version:
                raise StageError(
                    f"{image} holds TensorRT-LLM {trtllm or 'nothing'} ({where}), and backend.version is "
                    f"{config.backend.version}",
                    hint=f"set backend.version: {trtllm} (the engine YAMLs follow it), or use an image with "
                    f"TensorRT-LLM {config.backend.version}",
                    host=origin.host.name,
                )
        # What the image's python3 says wins (None: not installed); labels fill in when it has none.
        merged: dict[str, str | None] = {"dynamo": None, "trtllm": None}
        for where in ("its labels", "its python3"):
            if where in said:
                merged |= {k: v for k, v in said[where].items() if v or where == "its python3"}
        ctx.log.info("%s holds Dynamo %s, TensorRT-LLM %s", image, merged["dynamo"], merged["trtllm"])
        return merged

    # -------------------------------------------------------------------------------------------- resume

    def verify(self, ctx: StageContext, record: StageRecord) -> Check:
        outputs = recorded(BuildOutputs, record.outputs)
        if outputs is None or not outputs.image:
            return Check.still_valid("no image needed (launch.runtime: host)")
        image = outputs.image
        with node_engines(ctx.config) as engines:
            now = on_hosts([e.host for e in engines.values()], _image_id(engines, image))
        for name, image_id in zip(engines, now, strict=True):
            if image_id is None:
                return Check.stale(f"the image is no longer on {name}")
            if image_id != outputs.images.get(name):
                return Check.stale(f"{image} on {name} is another image now ({image_id[:19]})")
        return Check.still_valid("the image is unchanged on every node")

    def describe(self, outputs: BuildOutputs) -> str:
        if not outputs.image:
            return "no image (host runtime)"
        ids = set(outputs.images.values())
        short = next(iter(ids))[7:19] if len(ids) == 1 else "differs by node"
        moved = [f"{n} {how}" for n, how in outputs.arrivals.items() if how != "present"]
        return f"{outputs.image} ({short}) on {len(outputs.images)} node(s)" + (
            f"; {', '.join(moved)}" if moved else ""
        )


def plan_image(config: PipelineConfig, will_run: bool) -> list[str]:
    """What build will do on each node, for `autodeploy plan` (asks each node for the image id)."""
    if config.launch.runtime == "host":
        return ["no image: launch.runtime is host"]
    image = str(config.dynamo.image)
    dynamo = config.dynamo
    how = f"through {dynamo.registry}" if dynamo.registry else "streamed over SSH"
    lines = [f"{image} (image_source: {dynamo.image_source})"]
    try:
        with node_engines(config) as engines:
            found = on_hosts([e.host for e in engines.values()], _image_id(engines, image))
    except StageError as exc:
        return [*lines, f"cannot ask the nodes: {exc.message}"]
    names = list(engines)
    for index, (name, image_id) in enumerate(zip(names, found, strict=True)):
        has = f"has {image_id[7:19]}" if image_id else "lacks it"
        if not will_run:
            action = "skip (done and unchanged)"
        elif dynamo.image_source == "present":
            action = "skip (has it)" if image_id else "missing: build will stop here"
        elif dynamo.image_source == "pull":
            action = "skip (has it)" if image_id else "pull"
        elif index == 0:
            action = "build" if dynamo.image_source == "build" else f"load {dynamo.image_tar}"
        else:
            action = f"receive from {names[0]} {how} (skipped if the id matches)"
        lines.append(f"{name}: {action}; {has}")
    return lines


def _saved_size(engine: DockerEngine, image: str) -> int:
    """About what `docker save` writes for the image: its uncompressed size."""
    info = engine.inspect_image(image)
    return info.size if info else 0


def _image_id(engines: dict[str, DockerEngine], image: str) -> Callable[[Host], str | None]:
    return lambda host: engines[host.name].image_id(image)


def _same_everywhere(found: Mapping[str, str | None], image: str, origin: str) -> None:
    reference = found[origin]
    for name, image_id in found.items():
        if image_id != reference:
            raise StageError(
                f"{image} on {name} is another image ({str(image_id)[7:19]}) than on {origin} ({str(reference)[7:19]})",
                hint=f"remove it there (docker image rm {image}) and rerun, so that every node runs the same image",
                host=name,
            )


def _progress(task: ProgressTask) -> Rate:
    """A byte counter that moves a progress task in MB, with the rate in its description."""
    description = task.description

    def report(mb: float, rate: str) -> None:
        task.update(completed=round(mb, 1), description=f"{description} {rate}")

    return Rate(report)
