"""The pipeline file's sections as pydantic models: every field, its default and its description in one place."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from automation.config.names import (
    FILE_TOKEN,
    check_host,
    check_namespace,
    check_node_dir,
    check_node_name,
    check_registry,
    check_served_name,
    shown,
)

# The automation package (this file is automation/config/schema.py): data/ and templates/ live there.
PACKAGE_DIR = Path(__file__).resolve().parent.parent
VERSIONS_FILE = PACKAGE_DIR / "data" / "versions.yaml"

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Port = Annotated[int, Field(ge=1, le=65535)]
Fraction = Annotated[float, Field(gt=0.0, le=1.0)]
# Values that reach node scripts, file names and URLs (names.py says why each shape).
HostName = Annotated[str, AfterValidator(check_host)]
RegistryName = Annotated[str, AfterValidator(check_registry)]
NodeName = Annotated[str, AfterValidator(check_node_name)]
Namespace = Annotated[str, AfterValidator(check_namespace)]
ServedName = Annotated[str, AfterValidator(check_served_name)]
NodeDir = Annotated[str, AfterValidator(check_node_dir)]
Mode = Literal["agg", "disagg"]
Role = Literal["agg", "prefill", "decode"]
ROLES: tuple[Role, ...] = ("agg", "prefill", "decode")


def _relative_to_pipeline(value: Path, info: ValidationInfo) -> Path:
    """Relative paths in a pipeline file mean relative to that file (as in docker-compose), not to the cwd."""
    base = (info.context or {}).get("base")
    if base is None or value.is_absolute() or str(value).startswith("~"):
        return value
    return Path(base) / value


LocalPath = Annotated[Path, AfterValidator(_relative_to_pipeline)]


class Strict(BaseModel):
    """Base of every section: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class ModelSection(Strict):
    hf_id: str = Field(description="Hugging Face repository id of the checkpoint, e.g. Qwen/Qwen3-32B-FP8.")
    revision: str = Field("main", description="Branch, tag or commit of the checkpoint to deploy.")
    served_name: ServedName | None = Field(
        None, description="Model name clients send in requests (default: hf_id)."
    )
    path: str | None = Field(
        None,
        description="Where every node reads the checkpoint (absolute, or under ~). "
        "Default: <cluster.work_dir>/models/<org>--<name>.",
    )
    config_dir: LocalPath | None = Field(
        None,
        description="Local directory holding config.json, for a model the performance model does not bundle.",
    )

    @field_validator("hf_id")
    @classmethod
    def _hf_id_shape(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?", value):
            raise ValueError(f"{shown(value)} is not a Hugging Face id like 'org/name'")
        return value

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not (value.startswith("/") or value.startswith("~")):
            raise ValueError(f"{shown(value)} must be absolute (or start with ~): it is read on every node")
        return value


class Workload(Strict):
    isl: PositiveInt = Field(description="Input (prompt) tokens per request.")
    osl: PositiveInt = Field(description="Output tokens per request.")
    max_seq_len: PositiveInt | None = Field(
        None,
        description="Longest request (prompt + output tokens) the deployment admits; the benchmark still "
        "sends isl + osl. Default: the model's context length, bounded by what one worker's KV cache holds.",
    )


class SLA(Strict):
    ttft_ms: float = Field(gt=0, description="Time-to-first-token limit, milliseconds.")
    tpot_ms: float = Field(
        gt=0, description="Time-per-output-token (inter-token latency) limit, milliseconds."
    )


class Search(Strict):
    total_gpus: PositiveInt | None = Field(
        None, description="GPUs the deployment may use (default: every GPU of the cluster)."
    )
    modes: list[Mode] = Field(
        default_factory=lambda: list[Mode](["agg", "disagg"]),
        min_length=1,
        description="Serving modes to consider: aggregated (IFB) and/or disaggregated prefill/decode.",
    )
    top_n: PositiveInt = Field(3, description="Candidates kept per mode in the report.")


class ConfigureSection(Strict):
    """Where the deployed plan comes from: autodeploy's own sweep, or an aiconfigurator result."""

    source: Literal["autodeploy", "aiconfigurator"] = Field(
        "autodeploy",
        description="autodeploy: the embedded performance model's sweep (search:); aiconfigurator: the pick "
        "of an aiconfigurator result (aiconfigurator_dir), or of a run of `aiconfigurator cli default` when "
        "no directory is given and the package is installed.",
    )
    aiconfigurator_dir: LocalPath | None = Field(
        None,
        description="aiconfigurator's --save_dir output (the run folder holding agg/ and disagg/, or the "
        "folder that holds one such run folder).",
    )
    mode: Literal["auto", "agg", "disagg"] = Field(
        "auto", description="Which mode's ranking to deploy from (auto: aiconfigurator's own winner)."
    )
    rank: PositiveInt = Field(
        1, description="Which of that mode's ranked configurations to deploy (1 = best)."
    )


class PerfModelSection(Strict):
    calibration: LocalPath | None = Field(
        None,
        description="A calibration file (`autodeploy calibrate ... --out FILE`): its per-system prefill and "
        "decode factors and fixed cost per request apply to configure, the mocker's profiles and summarize.",
    )

    @property
    def reference(self) -> str:
        """The calibration as plans carry it (Plan.calibration): the file's absolute path, "" for none."""
        return str(self.calibration.expanduser().absolute()) if self.calibration is not None else ""


class MockerSpeed(Strict):
    """Rehearsal only: how much slower Dynamo's mocker runs than the shipped model believes (a stand-in
    for hardware that differs from the model, to rehearse calibration)."""

    prefill: float = Field(
        1.0, gt=0.1, le=10.0, description="Each prefill step takes this × the model's time."
    )
    decode: float = Field(1.0, gt=0.1, le=10.0, description="Each decode step takes this × the model's time.")

    @property
    def slows(self) -> bool:
        """Whether either factor differs from the shipped model's speed."""
        return self.prefill != 1.0 or self.decode != 1.0


class Summarize(Strict):
    aiconfigurator_dir: LocalPath | None = Field(
        None,
        description="An aiconfigurator result whose predictions the report shows beside autodeploy's "
        "(default: the one configure imported, if any).",
    )


class Backend(Strict):
    name: Literal["trtllm"] = Field("trtllm", description="Inference backend; TensorRT-LLM is supported.")
    version: str | None = Field(
        None,
        description="TensorRT-LLM version the engine YAMLs are written for "
        "(default: the version shipped with dynamo.version).",
    )


class EngineSettings(Strict):
    """TRT-LLM engine settings that the performance model honours and the generate stage writes."""

    free_gpu_memory_fraction: Fraction | None = Field(
        None, description="Share of free GPU memory the KV cache may take (kv_cache_config)."
    )
    max_batch_size: PositiveInt | None = Field(
        None, description="Upper bound on the batch the sweep may pick."
    )
    max_num_tokens: PositiveInt | None = Field(None, description="Token budget of one engine iteration.")
    enable_chunked_prefill: bool | None = Field(None, description="Split long prompts across iterations.")
    tokens_per_block: PositiveInt | None = Field(None, description="KV-cache block size in tokens.")
    kv_cache_dtype: Literal["auto", "fp8"] | None = Field(None, description="KV-cache data type.")
    extra: dict[str, Any] = Field(
        default_factory=dict,
        description="Further engine keys written as they are; checked against the TRT-LLM version's keys.",
    )

    @field_validator("tokens_per_block")
    @classmethod
    def _power_of_two(cls, value: int | None) -> int | None:
        if value is not None and value & (value - 1):
            raise ValueError(f"{value} is not a power of two (try 32 or 64)")
        return value


class Engine(EngineSettings):
    """Settings for every worker, overridden per role (the seed's prefill_*/decode_*/agg_* flags)."""

    agg: EngineSettings = Field(
        default_factory=EngineSettings, description="Overrides for aggregated workers."
    )
    prefill: EngineSettings = Field(
        default_factory=EngineSettings, description="Overrides for prefill workers."
    )
    decode: EngineSettings = Field(
        default_factory=EngineSettings, description="Overrides for decode workers."
    )

    def for_role(self, role: Role) -> dict[str, Any]:
        """The settings one role gets: the shared ones, then the role's own (unset values ignored)."""
        shared = EngineSettings.model_fields.keys()
        merged = {k: getattr(self, k) for k in shared if getattr(self, k) not in (None, {})}
        own = getattr(self, role)
        merged.update({k: v for k, v in own.model_dump().items() if v not in (None, {})})
        merged["extra"] = {**self.extra, **own.extra}
        return merged


class DynamoSource(Strict):
    """The Dynamo source tree an image is built from (dynamo.image_source: build): a git URL or a folder."""

    git: str | None = Field(
        None, description="Repository URL cloned once, on node 0, into the run's folder there."
    )
    ref: str | None = Field(
        None, description="Tag, branch or commit to build (default: v<dynamo.version>, the release's tag)."
    )
    path: LocalPath | None = Field(
        None,
        description="A Dynamo checkout on the head node (copied to node 0 when that is another machine).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DynamoSource:
        if (self.git is None) == (self.path is None):
            raise ValueError(
                "give either git (a repository URL) or path (a Dynamo checkout), not both or neither"
            )
        if self.ref is not None and self.git is None:
            raise ValueError("ref applies to git; a path is built as it is checked out")
        return self


class Dynamo(Strict):
    version: str = Field(
        default_factory=lambda: newest_dynamo_release(),
        description="Dynamo release; worker flags and the image tag follow it (default: the newest supported).",
    )
    image: str | None = Field(
        None,
        description="Container image (default: nvcr.io/nvidia/ai-dynamo/tensorrtllm-runtime:<version>; "
        "with image_source build: dynamo:<version>-trtllm-<backend.version>).",
    )
    image_source: Literal["pull", "build", "load", "present"] = Field(
        "pull",
        description="How the build stage gets the image: pull it on every node, build it on node 0 from "
        "source, load image_tar on node 0, or require it on every node already. Built and loaded images "
        "are then shipped to the other nodes.",
    )
    source: DynamoSource | None = Field(
        None, description="The Dynamo source tree to build from (image_source: build)."
    )
    build_args: list[str] = Field(
        default_factory=list,
        description="Extra flags for the release's build command (container/build.sh for 0.x; "
        "docker build for 1.x), e.g. ['--no-cache'].",
    )
    image_tar: LocalPath | None = Field(
        None, description="A `docker save` archive on the head node to load (image_source: load)."
    )
    registry: RegistryName | None = Field(
        None,
        description="HOST:PORT[/prefix] of a registry every node can reach: node 0 pushes the image there "
        "once and the other nodes pull it. Without one, node 0's image is streamed to each node over SSH.",
    )
    ship_parallel: PositiveInt = Field(
        4, description="Nodes that receive the image over SSH at once (one `docker save` feeds them all)."
    )
    namespace: Namespace = Field("dynamo", description="Dynamo namespace workers register in.")
    frontend_port: Port = Field(8000, description="HTTP port of the OpenAI-compatible frontend on node 0.")
    router_mode: Literal["round-robin", "random", "kv"] = Field(
        "round-robin", description="How the frontend spreads requests over workers."
    )


class SSH(Strict):
    user: str | None = Field(None, description="Login user on every node (default: the current user).")
    port: Port = Field(22, description="SSH port of every node.")
    key_file: LocalPath | None = Field(
        None, description="Private key file (read at connect time, never copied)."
    )
    host_keys: Literal["known_hosts", "accept_new", "insecure"] = Field(
        "known_hosts",
        description="known_hosts: refuse unknown hosts; accept_new: learn a host's key the first time; "
        "insecure: accept any key.",
    )
    known_hosts: LocalPath | None = Field(
        None, description="known_hosts file host keys are checked against (default: ~/.ssh/known_hosts)."
    )
    connect_timeout_s: float = Field(10.0, gt=0, description="Seconds to wait for a connection.")


class Node(Strict):
    host: HostName = Field(description="Hostname or IP address autodeploy connects to.")
    gpus: PositiveInt = Field(description="GPUs on this node.")
    name: NodeName | None = Field(None, description="Short name used in logs (default: node<i>).")
    address: HostName | None = Field(
        None, description="Address the other nodes reach this node on (default: host)."
    )
    connect: Literal["auto", "local", "ssh"] = Field(
        "auto", description="auto: run locally when host is this machine, else over SSH."
    )
    ssh_port: Port | None = Field(None, description="Overrides cluster.ssh.port for this node.")


class Cluster(Strict):
    ssh: SSH = Field(default_factory=SSH, description="How autodeploy reaches the nodes.")
    nodes: list[Node] = Field(
        min_length=1, description="The nodes; nodes[0] is the head (frontend, etcd, NATS)."
    )
    work_dir: NodeDir = Field(
        "~/autodeploy",
        description="Directory on every node for generated files, logs and pid files: absolute, or under ~ "
        "(each node's login home).",
    )


class Checkpoint(Strict):
    source: Literal["hub", "present"] = Field(
        "hub", description="hub: download from a Hugging Face hub; present: verify a copy already there."
    )
    endpoint: str | None = Field(
        None, description="Hub endpoint (HF_ENDPOINT), for a mirror or a local hub-compatible server."
    )
    token_env: str = Field(
        "HF_TOKEN", description="Environment variable holding the hub token (read at use, never stored)."
    )
    token_file: LocalPath | None = Field(
        None, description="File holding the hub token, instead of token_env."
    )
    shared_filesystem: bool = Field(
        False, description="model.path is on storage every node sees: download once, on node 0."
    )
    hf_transfer: bool = Field(True, description="Use hf_transfer for faster downloads when installed.")
    allow_patterns: list[str] | None = Field(None, description="Only download files matching these globs.")


class Infra(Strict):
    runtime: Literal["docker", "native"] = Field(
        "docker", description="Run etcd and NATS as containers, or as the etcd / nats-server binaries."
    )
    etcd_image: str = Field("bitnamilegacy/etcd:3.6.1", description="etcd image (runtime: docker).")
    nats_image: str = Field("nats:2.11.4", description="NATS image (runtime: docker).")
    etcd_binary: str = Field("etcd", description="etcd executable (runtime: native).")
    nats_binary: str = Field("nats-server", description="nats-server executable (runtime: native).")
    etcd_port: Port = Field(2379, description="etcd client port.")
    etcd_peer_port: Port = Field(2380, description="etcd peer port.")
    nats_port: Port = Field(4222, description="NATS client port.")
    nats_monitor_port: Port = Field(8222, description="NATS monitoring port (/healthz).")
    ready_timeout_s: float = Field(60.0, gt=0, description="Seconds to wait for etcd and NATS to be healthy.")


class Launch(Strict):
    runtime: Literal["container", "host"] = Field(
        "container", description="Run node scripts inside the Dynamo image, or directly on the host."
    )
    engine: Literal["trtllm", "mocker"] = Field(
        "trtllm", description="Real TRT-LLM workers, or Dynamo's mocker following the predicted timings."
    )
    python: str = Field(
        "python3",
        description="Python that runs Dynamo (runtime: host), e.g. a venv's python; a relative path "
        "with a '/' is relative to the pipeline file (for a rehearsal on this machine).",
    )

    ready_timeout_s: float = Field(1200.0, gt=0, description="Seconds to wait until every worker serves.")
    # Dynamo parses DYN_SYSTEM_PORT as a signed 16-bit number: ports above 32767 make workers exit.
    system_port_base: int = Field(
        8081,
        ge=1,
        le=32767,
        description="First DYN_SYSTEM_PORT; each worker on an address gets the next free one.",
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment for every worker (no secrets: use token_env)."
    )
    container_gpus: Literal["all", "none"] = Field(
        "all", description="runtime container: `--gpus all`, or no GPUs (a CPU rehearsal in containers)."
    )
    rdma: Literal["auto", "on", "off"] = Field(
        "auto",
        description="InfiniBand/RoCE for NIXL/UCX KV transfer: auto uses it on nodes with /dev/infiniband "
        "(containers then get the devices, IPC_LOCK and an unlimited memlock), on requires it, off never.",
    )
    container_mounts: dict[str, str] = Field(
        default_factory=dict,
        description="runtime container: extra bind mounts, node path -> container path (append ':ro' to the "
        "container path for read-only); the run directory and model.path are always mounted.",
    )
    mocker_speed: MockerSpeed = Field(
        default_factory=MockerSpeed,
        description="engine mocker only: the mocker's steps take these factors × the shipped model's (never "
        "the calibrated model's: it plays hardware that stays the same when the model is calibrated).",
    )

    @field_validator("python")
    @classmethod
    def _python_relative_to_pipeline(cls, value: str, info: ValidationInfo) -> str:
        base = (info.context or {}).get("base")
        if base is not None and "/" in value and not value.startswith(("/", "~")):
            # normpath, not resolve(): a venv's python is a symlink to the base interpreter.
            return os.path.normpath(Path(base).absolute() / value)
        return value


class Benchmark(Strict):
    concurrency: Literal["auto"] | list[PositiveInt] = Field(
        "auto",
        description="Concurrency levels; auto = 1, 2, 4, ... up to the predicted cluster concurrency, plus it.",
    )
    requests_per_concurrency: PositiveInt = Field(10, description="Requests per level = this × concurrency.")
    warmup_per_concurrency: int = Field(
        1, ge=0, description="Warm-up requests per level = this × concurrency (excluded from statistics)."
    )
    client: Literal["builtin", "aiperf", "both"] = Field(
        "builtin",
        description="Who sends the load: the built-in client, aiperf (`aiperf profile` per level), or both "
        "one after the other on every level (the report shows their difference).",
    )
    aiperf_bin: str | None = Field(
        None, description="The aiperf executable (default: `aiperf` on PATH or beside autodeploy's Python)."
    )
    warmup: Literal["burst", "steady"] = Field(
        "burst",
        description="burst: every user's warm-up ends, then all start the measured phase at once (aiperf's "
        "method, and the seed guide's N×10 rule: the first batch queues); steady: each user goes on when its "
        "warm-up ends, so the window starts in the steady state. See docs/benchmark.md.",
    )
    mode: Literal["concurrency", "request_rate"] = Field(
        "concurrency",
        description="concurrency: c users in a closed loop per level; request_rate: Poisson arrivals at "
        "each of request_rates.",
    )
    request_rates: Literal["auto"] | list[PositiveFloat] = Field(
        "auto",
        description="Requests per second per level (mode: request_rate); auto = 25/50/75/100 % of the "
        "request rate predicted at the design concurrency.",
    )
    endpoint: Literal["completions", "chat"] = Field(
        "completions",
        description="/v1/completions, or /v1/chat/completions (the chat template adds prompt tokens; the "
        "report says how many).",
    )
    client_processes: Literal["auto"] | PositiveInt = Field(
        "auto",
        description="Processes of the built-in client; auto = enough for the level's predicted token rate "
        "(docs/client-capacity.md), at most the CPU count.",
    )
    max_error_share: float = Field(
        0.05, ge=0, le=1, description="A level with a larger share of failed requests ends the sweep."
    )
    stop_ttft_factor: float = Field(
        10.0, gt=1, description="A level whose mean TTFT exceeds this × sla.ttft_ms ends the sweep."
    )
    telemetry: bool = Field(True, description="Sample nvidia-smi on every node during each level.")
    seed: int = Field(0, description="Seed for prompt generation (each level derives its own).")
    baseline: LocalPath | None = Field(
        None,
        description="A finished run directory whose measured levels the summary shows beside this run's "
        "(with the change, marked real only beyond both runs' spread).",
    )
    request_timeout_s: float = Field(600.0, gt=0, description="Seconds before one request counts as failed.")

    @field_validator("concurrency", "request_rates")
    @classmethod
    def _sorted_unique(cls, value: Any) -> Any:
        return value if value == "auto" else sorted(set(value))

    @model_validator(mode="after")
    def _aiperf_measures_bursts(self) -> Benchmark:
        if self.client in ("aiperf", "both") and self.warmup == "steady":
            raise ValueError(
                "aiperf's measured phase starts only after its warm-up has ended (a burst): with "
                f"client: {self.client} set warmup: burst, or use client: builtin for warmup: steady"
            )
        return self


# Kubernetes' resource.Quantity syntax (the pattern the Dynamo CRDs carry for sizes), without a sign.
_K8S_QUANTITY = re.compile(
    r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?"
)
# RFC 1123 subdomain (names of PVCs, Secrets) and label (namespaces), as Kubernetes checks them.
_K8S_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_K8S_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


class Kubernetes(Strict):
    """How generate writes k8s_deploy.yaml: where pods find the checkpoint, the token Secret, pod resources."""

    namespace: str | None = Field(
        None,
        description="Namespace written into every document (default: none; `kubectl apply -n` chooses).",
    )
    model_source: Literal["pvc", "hostPath"] = Field(
        "pvc",
        description="Where pods read the checkpoint: a PersistentVolumeClaim (model_pvc), or a directory "
        "present on every GPU node (host_path).",
    )
    model_pvc: str = Field(
        "model-cache",
        description="PersistentVolumeClaim holding the checkpoint (model_source: pvc); Dynamo's recipes name "
        "theirs model-cache.",
    )
    create_pvc: bool = Field(
        False,
        description="Write model_pvc and a Job that downloads model.hf_id into it (workers wait for the download); "
        "false: the claim exists and holds the checkpoint at model_dir.",
    )
    pvc_size: str = Field(
        "200Gi", description="Storage the written PVC requests (create_pvc); the checkpoint must fit."
    )
    storage_class: str | None = Field(
        None,
        description="StorageClass of the written PVC (create_pvc; default: the cluster's default class).",
    )
    access_mode: Literal["ReadWriteMany", "ReadWriteOnce", "ReadOnlyMany", "ReadWriteOncePod"] = Field(
        "ReadWriteMany",
        description="Access mode of the written PVC: ReadWriteMany lets worker pods on several nodes mount it.",
    )
    model_dir: str | None = Field(
        None,
        description="Checkpoint directory inside the PVC, or below mount_path (default: <org>--<name> of "
        "model.hf_id, where the download Job puts it).",
    )
    host_path: str | None = Field(
        None,
        description="Absolute directory holding the checkpoint on every GPU node (model_source: hostPath; "
        "default: model.path).",
    )
    mount_path: str = Field(
        "/models",
        description="Where the checkpoint volume is mounted in the pods; workers read <mount_path>/<model_dir>.",
    )
    hf_token_secret: str | None = Field(
        None,
        description="Existing Secret whose HF_TOKEN key is the hub token (gated models): workers get it with "
        "envFromSecret, the download Job as HF_TOKEN. None: no Secret is referenced.",
    )
    download_image: str = Field(
        "python:3.12-slim",
        description="Image of the download Job (create_pvc); it pip-installs huggingface_hub and runs `hf download`.",
    )
    shm_size: str = Field(
        "16Gi",
        description="Shared memory (/dev/shm) of each worker pod (NCCL and multi-GPU TensorRT-LLM use it).",
    )
    cpu_per_gpu: str | None = Field(
        "8", description="CPU each worker pod requests per GPU it holds (None: none)."
    )
    memory_per_gpu: str | None = Field(
        "64Gi", description="Memory each worker pod requests per GPU it holds (None: none)."
    )
    frontend_cpu: str | None = Field("2", description="CPU the frontend pod requests (None: none).")
    frontend_memory: str | None = Field("4Gi", description="Memory the frontend pod requests (None: none).")

    @field_validator(
        "pvc_size", "shm_size", "cpu_per_gpu", "memory_per_gpu", "frontend_cpu", "frontend_memory"
    )
    @classmethod
    def _quantity(cls, value: str | None) -> str | None:
        if value is not None and not _K8S_QUANTITY.fullmatch(value):
            raise ValueError(f"{shown(value)} is not a Kubernetes quantity like 16Gi, 500m or 8")
        return value

    @field_validator("model_pvc", "hf_token_secret", "storage_class")
    @classmethod
    def _object_name(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 253 or not _K8S_SUBDOMAIN.fullmatch(value)):
            raise ValueError(
                f"{shown(value)} is not a Kubernetes object name (lowercase letters, digits, '-' and '.')"
            )
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 63 or not _K8S_LABEL.fullmatch(value)):
            raise ValueError(
                f"{shown(value)} is not a Kubernetes namespace (lowercase letters, digits and '-')"
            )
        return value

    @field_validator("mount_path", "host_path")
    @classmethod
    def _pod_path(cls, value: str | None) -> str | None:
        # Kubelet takes these literally: no ~ expansion, and '..' would leave the volume.
        if value is not None and (not value.startswith("/") or ".." in value.split("/") or value == "/"):
            raise ValueError(f"{shown(value)} must be an absolute path without '..' (it is used as it is)")
        return value

    @field_validator("model_dir")
    @classmethod
    def _relative_dir(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith("/") or ".." in value.split("/") or not value.strip("/")):
            raise ValueError(
                f"{shown(value)} must be a relative directory without '..' (it is below mount_path)"
            )
        return value


class PipelineConfig(Strict):
    """One deployment: model, hardware, workload, SLA, and how each stage does its work."""

    name: str = Field(description="Name of the run; also the default run directory name.")
    run_dir: LocalPath | None = Field(
        None, description="Where state, logs and results go (default: ./autodeploy-runs/<name>)."
    )
    model: ModelSection = Field(description="The checkpoint to deploy.")
    system: str = Field(description="GPU system the performance model uses, e.g. h200_sxm.")
    workload: Workload = Field(description="Sequence lengths the deployment is tuned and measured for.")
    sla: SLA = Field(description="Latency limits the picked configuration must meet.")
    configure: ConfigureSection = Field(
        default_factory=ConfigureSection, description="Where the deployed plan comes from."
    )
    search: Search = Field(default_factory=Search, description="What the configure stage sweeps.")
    perfmodel: PerfModelSection = Field(
        default_factory=PerfModelSection, description="The performance model's calibration."
    )
    backend: Backend = Field(default_factory=Backend, description="Inference backend and its version.")
    engine: Engine = Field(
        default_factory=Engine, description="TRT-LLM engine settings, shared and per role."
    )
    dynamo: Dynamo = Field(default_factory=Dynamo, description="Dynamo release, image and frontend.")
    cluster: Cluster = Field(description="The nodes and how to reach them.")
    checkpoint: Checkpoint = Field(default_factory=Checkpoint, description="Where the weights come from.")
    infra: Infra = Field(default_factory=Infra, description="etcd and NATS on node 0.")
    launch: Launch = Field(default_factory=Launch, description="How workers are started.")
    benchmark: Benchmark = Field(default_factory=Benchmark, description="The concurrency sweep.")
    summarize: Summarize = Field(default_factory=Summarize, description="What the report compares against.")
    kubernetes: Kubernetes = Field(
        default_factory=Kubernetes,
        description="The Kubernetes manifest (k8s_deploy.yaml): checkpoint volume, token Secret, pod resources.",
    )

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        # It names the run directory, the node-side run folder and the containers of the run.
        if not FILE_TOKEN.fullmatch(value):
            raise ValueError(
                f"{shown(value)} must be 1-100 letters, digits, '.', '_' or '-' (it names the run directory)"
            )
        return value

    @model_validator(mode="after")
    def _fill_derived_defaults(self) -> PipelineConfig:
        # Derived defaults are filled here so that pipeline.resolved.yaml shows every value that is used.
        if self.model.served_name is None:
            self.model.served_name = self.model.hf_id
        if self.model.path is None:
            self.model.path = f"{self.cluster.work_dir}/models/{self.model.hf_id.replace('/', '--')}"
        for index, node in enumerate(self.cluster.nodes):
            if node.name is None:
                node.name = f"node{index}"
            if node.address is None:
                node.address = node.host
        if self.search.total_gpus is None:
            self.search.total_gpus = sum(node.gpus for node in self.cluster.nodes)
        if self.backend.version is None:
            self.backend.version = dynamo_versions().get(self.dynamo.version)
        if self.dynamo.image is None:
            if self.dynamo.image_source == "build":
                self.dynamo.image = f"dynamo:{self.dynamo.version}-trtllm-{self.backend.version or 'unknown'}"
            else:
                self.dynamo.image = f"nvcr.io/nvidia/ai-dynamo/tensorrtllm-runtime:{self.dynamo.version}"
        return self

    @property
    def head(self) -> Node:
        return self.cluster.nodes[0]

    @property
    def cluster_gpus(self) -> int:
        return sum(node.gpus for node in self.cluster.nodes)


def newest_dynamo_release() -> str:
    """The newest supported Dynamo release: dynamo.version's default."""
    return list(dynamo_versions())[-1]


@functools.cache
def dynamo_versions() -> dict[str, str]:
    """Supported Dynamo release → the TensorRT-LLM release it ships (data/versions.yaml), oldest first."""
    data = yaml.safe_load(VERSIONS_FILE.read_text())
    return {str(k): str(v) for k, v in data["dynamo_releases"].items()}
