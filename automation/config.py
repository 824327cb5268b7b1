"""The pipeline file: pydantic models with defaults and descriptions in one place, and errors that teach."""

from __future__ import annotations

import difflib
import functools
import os
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from automation.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
VERSIONS_FILE = PACKAGE_DIR / "data" / "versions.yaml"

PositiveInt = Annotated[int, Field(gt=0)]
Port = Annotated[int, Field(ge=1, le=65535)]
Fraction = Annotated[float, Field(gt=0.0, le=1.0)]


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
    served_name: str | None = Field(None, description="Model name clients send in requests (default: hf_id).")
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
            raise ValueError(f"'{value}' is not a Hugging Face id like 'org/name'")
        return value

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not (value.startswith("/") or value.startswith("~")):
            raise ValueError(f"'{value}' must be absolute (or start with ~): it is read on every node")
        return value


class Workload(Strict):
    isl: PositiveInt = Field(description="Input (prompt) tokens per request.")
    osl: PositiveInt = Field(description="Output tokens per request.")


class SLA(Strict):
    ttft_ms: float = Field(gt=0, description="Time-to-first-token limit, milliseconds.")
    tpot_ms: float = Field(
        gt=0, description="Time-per-output-token (inter-token latency) limit, milliseconds."
    )


class Search(Strict):
    total_gpus: PositiveInt | None = Field(
        None, description="GPUs the deployment may use (default: every GPU of the cluster)."
    )
    modes: list[Literal["agg", "disagg"]] = Field(
        default_factory=lambda: ["agg", "disagg"],
        min_length=1,
        description="Serving modes to consider: aggregated (IFB) and/or disaggregated prefill/decode.",
    )
    top_n: PositiveInt = Field(3, description="Candidates kept per mode in the report.")


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

    def for_role(self, role: Literal["agg", "prefill", "decode"]) -> dict[str, Any]:
        """The settings one role gets: the shared ones, then the role's own (unset values ignored)."""
        shared = EngineSettings.model_fields.keys()
        merged = {k: getattr(self, k) for k in shared if getattr(self, k) not in (None, {})}
        own = getattr(self, role)
        merged.update({k: v for k, v in own.model_dump().items() if v not in (None, {})})
        merged["extra"] = {**self.extra, **own.extra}
        return merged


class Dynamo(Strict):
    version: str = Field("1.3.0", description="Dynamo release; worker flags and the image tag follow it.")
    image: str | None = Field(
        None, description="Container image (default: nvcr.io/nvidia/ai-dynamo/tensorrtllm-runtime:<version>)."
    )
    image_source: Literal["pull", "build", "load", "present"] = Field(
        "pull",
        description="How the build stage gets the image onto each node: pull it, build it, "
        "load image_archive, or require it to be present already.",
    )
    image_archive: LocalPath | None = Field(
        None, description="docker save archive to load (image_source: load)."
    )
    namespace: str = Field("dynamo", description="Dynamo namespace workers register in.")
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
    host: str = Field(description="Hostname or address autodeploy connects to.")
    gpus: PositiveInt = Field(description="GPUs on this node.")
    name: str | None = Field(None, description="Short name used in logs (default: node<i>).")
    address: str | None = Field(
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
    work_dir: str = Field(
        "~/autodeploy", description="Directory on every node for generated files, logs and pid files."
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
    container_mounts: dict[str, str] = Field(
        default_factory=dict,
        description="runtime container: extra bind mounts, node path -> container path (append ':ro' to the "
        "container path for read-only); the run directory and model.path are always mounted.",
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
    client: Literal["builtin", "aiperf"] = Field("builtin", description="Benchmark client.")
    seed: int = Field(0, description="Seed for prompt generation.")
    request_timeout_s: float = Field(600.0, gt=0, description="Seconds before one request counts as failed.")

    @field_validator("concurrency")
    @classmethod
    def _sorted_unique(cls, value: Literal["auto"] | list[int]) -> Literal["auto"] | list[int]:
        return value if value == "auto" else sorted(set(value))


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
    search: Search = Field(default_factory=Search, description="What the configure stage sweeps.")
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

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", value):
            raise ValueError(
                f"'{value}' must be 1-100 letters, digits, '.', '_' or '-' (it names the run directory)"
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
        if self.dynamo.image is None:
            self.dynamo.image = f"nvcr.io/nvidia/ai-dynamo/tensorrtllm-runtime:{self.dynamo.version}"
        if self.backend.version is None:
            self.backend.version = dynamo_versions().get(self.dynamo.version)
        return self

    @property
    def head(self) -> Node:
        return self.cluster.nodes[0]

    @property
    def cluster_gpus(self) -> int:
        return sum(node.gpus for node in self.cluster.nodes)


@functools.cache
def dynamo_versions() -> dict[str, str]:
    """Dynamo release → the TensorRT-LLM release its runtime image ships (data/versions.yaml)."""
    data = yaml.safe_load(VERSIONS_FILE.read_text())
    return {str(k): str(v) for k, v in data["dynamo_to_trtllm"].items()}


# --------------------------------------------------------------------------------------------- loading

Location = tuple[str | int, ...]


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys instead of silently keeping the last one."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' (first on line {seen[key]})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline file.

    Raises:
        ConfigError: with one line per problem: `file:line: field.path: what is wrong (the fix)`.
    """
    path = Path(path)
    label = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"{label}: no such file", hint="check the path, or copy one from examples/"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read it: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
        tree = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{label}:{mark.line + 1}" if mark else label
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if "expected <block end>" in problem or "mapping values are not allowed" in problem:
            problem = f"the indentation does not line up ({problem})"
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if data is None:
        raise ConfigError(f"{label}: the file is empty", hint="start from examples/rehearsal.yaml")
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: the top level must be a mapping of sections (name:, model:, ...)")
    return validate_pipeline(data, label=label, tree=tree, base=path.parent)


def validate_pipeline(
    data: dict[str, Any],
    label: str = "pipeline",
    tree: yaml.Node | None = None,
    base: Path | None = None,
) -> PipelineConfig:
    """Validate already-parsed pipeline data; see load_pipeline for the error format."""
    try:
        config = PipelineConfig.model_validate(data, context={"base": base})
    except ValidationError as exc:
        problems = [_explain(error) for error in _one_branch_per_union(exc.errors())]
        lines = _ordered(label, tree, _drop_missing_explained_by_typo(problems))
        raise ConfigError(lines[0], problems=lines) from None
    lines = _ordered(label, tree, _consistency_problems(config))
    if lines:
        raise ConfigError(lines[0], problems=lines)
    return config


def _ordered(label: str, tree: yaml.Node | None, problems: list[tuple[Location, str]]) -> list[str]:
    """Problems as lines, in the order they appear in the file (those with no line last)."""
    keyed = [
        (_line_of(tree, loc) or 10**9, index, loc, message) for index, (loc, message) in enumerate(problems)
    ]
    return [_format_problem(label, tree, loc, message) for _, _, loc, message in sorted(keyed)]


def _one_branch_per_union(errors: list[Any]) -> list[Any]:
    """A value that fails every branch of `'auto' | list[...]` gets the errors of the branch it resembles."""
    branched = [e for e in errors if any(_is_branch_tag(p) for p in e["loc"])]
    if not branched:
        return errors
    keep = [e for e in errors if e not in branched]
    groups: dict[Location, list[Any]] = {}
    for error in branched:
        cut = next(i for i, p in enumerate(error["loc"]) if _is_branch_tag(p))
        groups.setdefault(tuple(error["loc"][:cut]), []).append(error)
    for group in groups.values():
        literal = [e for e in group if any(str(p).startswith("literal[") for p in e["loc"])]
        other = [e for e in group if e not in literal]
        value = literal[0]["input"] if literal else None
        if literal and other and isinstance(value, str):
            tags = {str(p).split("[")[0] for e in other for p in e["loc"] if _is_branch_tag(p)}
            literal = [{**e, "type": "literal_or", "alternatives": sorted(tags)} for e in literal]
            keep.extend(literal)
        else:
            keep.extend(other or literal)
    return keep


def _is_branch_tag(part: Any) -> bool:
    return isinstance(part, str) and bool(re.match(r"^(literal|list|dict|int|str|float)\[", part))


def _drop_missing_explained_by_typo(problems: list[tuple[Location, str]]) -> list[tuple[Location, str]]:
    """`workloads:` for `workload:` is one mistake: report the typo, not also the missing field."""
    typos = {
        loc for loc, message in problems if message.startswith("unknown field") and "did you mean" in message
    }
    suggested = set()
    for loc in typos:
        match = re.search(r"did you mean '([^']+)'", dict(problems)[loc])
        if match:
            suggested.add((*loc[:-1], match.group(1)))
    return [(loc, m) for loc, m in problems if not (m.startswith("required field") and loc in suggested)]


def _format_problem(label: str, tree: yaml.Node | None, loc: Location, message: str) -> str:
    line = _line_of(tree, loc)
    where = f"{label}:{line}" if line else label
    path = _dotted(loc)
    return f"{where}: {path}: {message}" if path else f"{where}: {message}"


def _dotted(loc: Location) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_of(tree: yaml.Node | None, loc: Location) -> int | None:
    """The 1-based line of the YAML node at loc (the deepest that exists), for pointing at the problem."""
    node, line = tree, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((kv for kv in node.value if kv[0].value == part), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


_TYPE_WORDS = {
    "int_parsing": "a whole number",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
}
_SECRET_WORDS = ("token", "secret", "password", "passwd", "api_key", "apikey", "private_key")
_ROLE_PREFIX = re.compile(r"^(agg|prefill|decode)_(.+)$")


def _explain(error: Any) -> tuple[Location, str]:
    """Turn one pydantic error into (location, one teaching sentence); values of unknown keys are never shown."""
    loc: Location = tuple(p for p in error["loc"] if not _is_branch_tag(p))
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        key = str(loc[-1])
        return loc, _unknown_key(key, loc[:-1])
    if kind == "missing":
        field = _field_at(loc)
        what = f" ({field.description.rstrip('.')})" if field is not None and field.description else ""
        return loc, f"required field is missing{what}"
    if kind == "literal_or":
        choices = re.findall(r"'([^']*)'", error["msg"])
        others = " or ".join(f"a {tag}" for tag in error["alternatives"])
        return loc, f"must be {' or '.join(repr(c) for c in choices)} or {others}, got {value!r}"
    if kind in _TYPE_WORDS:
        return loc, f"must be {_TYPE_WORDS[kind]}, got {_short(value)}"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", error["msg"])
        hint = _did_you_mean(str(value), choices)
        return loc, f"{value!r} is not one of {', '.join(repr(c) for c in choices)}{hint}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return loc, f"{error['msg'].replace('Input should be', 'must be')}, got {value!r}"
    if kind in ("too_short",):
        return loc, "must not be empty"
    if kind in ("model_type", "dict_type"):
        return loc, f"must be a mapping of keys, got {_short(value)}"
    if kind == "list_type":
        return loc, f"must be a list, got {_short(value)}"
    if kind == "value_error":
        return loc, error["msg"].removeprefix("Value error, ")
    return loc, f"{error['msg'][0].lower()}{error['msg'][1:]}, got {_short(value)}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _unknown_key(key: str, parent: Location) -> str:
    lowered = key.lower()
    if any(word in lowered for word in _SECRET_WORDS):
        return (
            f"unknown field '{key}': secrets are not accepted in the pipeline file; "
            "export HF_TOKEN (or name it in checkpoint.token_env / checkpoint.token_file)"
        )
    role = _ROLE_PREFIX.match(key)
    if role and role.group(2) in EngineSettings.model_fields:
        return f"unknown field '{key}' (per-role settings go under engine.{role.group(1)}.{role.group(2)})"
    names = list(_fields_of(parent))
    hint = _did_you_mean(key, names)
    if hint:
        return f"unknown field '{key}'{hint}"
    return f"unknown field '{key}' (allowed: {', '.join(names)})" if names else f"unknown field '{key}'"


def _did_you_mean(word: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _model_at(loc: Location) -> type[BaseModel] | None:
    """The pydantic model class that validates the mapping at loc (None if loc is not a mapping of one)."""
    current: Any = PipelineConfig
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = _unwrap(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """Strip Optional / list[...] / Annotated to reach a model class, if there is one."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            inner = _unwrap(arg)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return annotation


def _fields_of(loc: Location) -> list[str]:
    model = _model_at(loc)
    return list(model.model_fields) if model else []


def _field_at(loc: Location) -> Any:
    model = _model_at(loc[:-1])
    return model.model_fields.get(str(loc[-1])) if model else None


def _consistency_problems(config: PipelineConfig) -> list[tuple[Location, str]]:
    """Checks that span several fields; each names the field to change."""
    problems: list[tuple[Location, str]] = []
    from automation.perfmodel.system import known_systems  # reads file names only

    systems = known_systems()
    if config.system not in systems:
        hint = _did_you_mean(config.system, systems) or f" (known: {', '.join(systems)})"
        problems.append((("system",), f"unknown GPU system '{config.system}'{hint}"))
    total, have = config.search.total_gpus or 0, config.cluster_gpus
    if total > have:
        nodes = config.cluster.nodes
        layout = f" ({' + '.join(str(n.gpus) for n in nodes)})" if len(nodes) > 1 else ""
        problems.append(
            (
                ("search", "total_gpus"),
                f"{total} GPUs asked but the cluster has {have}{layout}; lower it or add nodes",
            )
        )
    seen: dict[tuple[str, int], int] = {}
    for index, node in enumerate(config.cluster.nodes):
        key = (node.host, node.ssh_port or config.cluster.ssh.port)
        if key in seen:
            problems.append(
                (
                    ("cluster", "nodes", index, "host"),
                    f"'{node.host}' is already nodes[{seen[key]}]; list each node once",
                )
            )
        seen.setdefault(key, index)
    names = [node.name for node in config.cluster.nodes]
    for index, name in enumerate(names):
        if names.index(name) != index:
            problems.append(
                (("cluster", "nodes", index, "name"), f"name '{name}' is used twice; names must be unique")
            )
    if config.backend.version is None:
        known = ", ".join(dynamo_versions())
        problems.append(
            (
                ("dynamo", "version"),
                f"{config.dynamo.version} is not in the version table ({known}); "
                "set backend.version to the TensorRT-LLM version its image ships",
            )
        )
    elif not re.fullmatch(r"\d+\.\d+\.\d+([a-z]+\d+)?(\.post\d+)?", config.backend.version):
        problems.append(
            (("backend", "version"), f"'{config.backend.version}' is not a version like 1.0.0rc6")
        )
    if config.dynamo.image_source == "load" and config.dynamo.image_archive is None:
        problems.append(
            (("dynamo", "image_archive"), "required when image_source is 'load': the docker save file")
        )
    if config.checkpoint.token_file is not None and not config.checkpoint.token_file.expanduser().exists():
        problems.append((("checkpoint", "token_file"), f"{config.checkpoint.token_file} does not exist"))
    for key in config.launch.env:
        if any(word in key.lower() for word in _SECRET_WORDS):
            problems.append(
                (
                    ("launch", "env", key),
                    "secrets are not written into scripts; the workers read HF_TOKEN from "
                    "their environment at run time",
                )
            )
    return problems


def resolved_yaml(config: PipelineConfig) -> str:
    """The pipeline with every default filled in, as written to <run>/pipeline.resolved.yaml."""
    body = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, default_flow_style=False)
    return (
        "# Every value autodeploy used for this run, defaults included (generated; edit the pipeline file).\n"
        + body
    )
