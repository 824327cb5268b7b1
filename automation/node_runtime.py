"""What runs on each node: the Dynamo and TRT-LLM versions, the user the container runs as, and RDMA."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from automation.config import PipelineConfig
from automation.contracts import LaunchOutputs, StageOutputs
from automation.docker_engine import DockerEngine
from automation.errors import StageError
from automation.remote import Host

# Inside the Dynamo container the node's files and the checkpoint are mounted at fixed paths of their own:
# the image's user (dynamo, uid 1000, from Dynamo 0.7) cannot traverse the SSH user's home (/root is 0700),
# so mounting them at their node paths would hide them behind a directory it may not enter.
CONTAINER_RUN_DIR = "/autodeploy/generated"
CONTAINER_MODEL_DIR = "/autodeploy/model"
# The node script takes the container's checkpoint path from this variable (launch sets it with -e).
MODEL_PATH_ENV = "AUTODEPLOY_MODEL_PATH"


class NodeRuntime(BaseModel):
    """What launch found on one node before it started the node script."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node: str = Field(description="the node's name")
    runtime: Literal["container", "host"] = Field(description="launch.runtime")
    user: str = Field(description="who the workers run as: the image's USER, or the SSH login user")
    rdma: bool = Field(description="whether KV transfer may use InfiniBand/RoCE (devices passed in)")
    devices: list[str] = Field(default_factory=list, description="what /dev/infiniband holds on the node")


def planned_user(config: PipelineConfig) -> str:
    """Who the workers will run as, before launch looks: the image's user per the version table, or the SSH
    login user on the host."""
    if config.launch.runtime == "host":
        return config.cluster.ssh.user or "the SSH login user"
    from automation.versions import dynamo_release

    return dynamo_release(config.dynamo.version).image_user


def probe(config: PipelineConfig, host: Host, image: str | None) -> NodeRuntime:
    """Look at a node: its InfiniBand devices, and the user of the image (container) or the login (host).

    Raises:
        StageError: launch.rdma is `on` and the node has no InfiniBand device; docker failed.
    """
    listing = host.run("ls -1 /dev/infiniband 2>/dev/null", check=False).stdout.split()
    has_verbs = any(name.startswith("uverbs") for name in listing)
    mode = config.launch.rdma
    if mode == "on" and not has_verbs:
        raise StageError(
            f"launch.rdma is on but {host.name} has no InfiniBand/RoCE device (/dev/infiniband/uverbs*)",
            hint="set launch.rdma: auto (TCP where there is none) or off, or fix the node's RDMA driver",
            host=host.name,
        )
    if config.launch.runtime == "container" and image:
        user = DockerEngine(host).image_user(image)
    else:
        user = host.run("id -un", check=False).stdout.strip() or "unknown"
    return NodeRuntime(
        node=host.name,
        runtime=config.launch.runtime,
        user=user,
        rdma=has_verbs and mode != "off",
        devices=listing,
    )


def container_options(
    config: PipelineConfig, facts: NodeRuntime, directory: str, model_path: str
) -> list[str]:
    """`docker run` options of a node's container: mounts at the fixed container paths, the checkpoint path
    for the script, GPUs, and the RDMA devices with IPC_LOCK and an unlimited memlock (UCX pins memory)."""
    words: list[str] = []
    if config.launch.container_gpus == "all":
        words += ["--gpus", "all"]
    if facts.rdma:
        words += ["--device", "/dev/infiniband", "--cap-add", "IPC_LOCK", "--ulimit", "memlock=-1:-1"]
    mounts = {directory: CONTAINER_RUN_DIR}
    if model_path:
        mounts[model_path] = f"{CONTAINER_MODEL_DIR}:ro"
        words += ["-e", f"{MODEL_PATH_ENV}={CONTAINER_MODEL_DIR}"]
    mounts.update(config.launch.container_mounts)
    for source, target in mounts.items():
        words += ["-v", f"{source}:{target}"]
    return words


def unreadable_in_container(
    host: Host, image: str, directory: str, model_path: str, extra_mounts: dict[str, str]
) -> str | None:
    """The first file or directory of the node's files or checkpoint that the image's user cannot read
    (or enter), asked of the image itself: None when all are readable, or when the image has no GNU find
    to ask with (then the workers' own errors tell)."""
    volumes = {directory: f"{CONTAINER_RUN_DIR}:ro"}
    roots = [CONTAINER_RUN_DIR]
    if model_path:
        volumes[model_path] = f"{CONTAINER_MODEL_DIR}:ro"
        roots.append(CONTAINER_MODEL_DIR)
    volumes.update(extra_mounts)  # the container's filesystem as the workers will see it
    unreadable = ["(", "-type", "d", "!", "-executable", "-o", "!", "-readable", ")", "-print", "-quit"]
    result = DockerEngine(host).run_once(image, [*roots, *unreadable], entrypoint=["find"], volumes=volumes)
    if not result.ok:
        return None
    found = result.stdout.strip().splitlines()
    return found[0] if found else None


def recorded(launch: StageOutputs | None) -> dict[str, NodeRuntime]:
    """What a done launch found, by node name (empty before launch has run)."""
    if not isinstance(launch, LaunchOutputs):
        return {}
    facts = [NodeRuntime.model_validate(value) for value in launch.node_runtime.values()]
    return {f.node: f for f in facts}


def describe(config: PipelineConfig, recorded: dict[str, NodeRuntime] | None = None) -> list[str]:
    """One line per node: versions, runtime, user and RDMA — what launch found where it has run, else what
    it will find out."""
    recorded = recorded or {}
    dynamo, trtllm = config.dynamo.version, config.backend.version or "?"
    lines = []
    for node in config.cluster.nodes:
        name = str(node.name)
        facts = recorded.get(name)
        if config.launch.runtime == "container":
            where = f"container {config.dynamo.image}"
        else:
            where = f"host ({config.launch.python})"
        if facts is not None:
            user = f"runs as {facts.user}"
            rdma = "RDMA: yes" if facts.rdma else "RDMA: no (TCP)"
        else:
            user = f"runs as {planned_user(config)} (checked at launch)"
            rdma = {
                "auto": "RDMA: if /dev/infiniband is there (checked at launch)",
                "on": "RDMA: required",
            }.get(config.launch.rdma, "RDMA: off")
        engine = "mocker" if config.launch.engine == "mocker" else f"TensorRT-LLM {trtllm}"
        lines.append(f"{name} ({node.address}): Dynamo {dynamo}, {engine}; {where}, {user}; {rdma}")
    return lines
