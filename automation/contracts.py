"""What each stage hands to later stages: one typed model per stage, split into identity and report.

A stage's outputs are recorded in the state file and read back by the stages that name it in `needs`.
Fields marked with `report()` are for people (status, describe, the report); everything else is the
stage's *identity*: what later stages depend on, and the only part hashed into their fingerprints. So
re-running infra that reused etcd (a report fact) does not re-run the benchmark, while a restarted
etcd (a new container id, an identity fact) does.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator

from automation.errors import InputError
from automation.perfmodel.plan import Plan, Prediction


def report(default: Any = None, *, description: str, default_factory: Any = None) -> Any:
    """A field for people only: shown by status and describe, never hashed into a fingerprint."""
    if default_factory is not None:
        return Field(
            default_factory=default_factory, description=description, json_schema_extra={"report": True}
        )
    return Field(default, description=description, json_schema_extra={"report": True})


class StageOutputs(BaseModel):
    """Base of every stage's outputs: strict, immutable, JSON round-trippable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # The stage that produces these outputs (its name in the state file).
    stage: ClassVar[str]

    @classmethod
    def report_fields(cls) -> frozenset[str]:
        return frozenset(
            name
            for name, info in cls.model_fields.items()
            if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("report")
        )

    def identity(self) -> dict[str, Any]:
        """What later stages depend on (hashed into their fingerprints)."""
        return self.model_dump(mode="json", exclude=set(self.report_fields()))

    def record(self) -> dict[str, Any]:
        """Everything, as stored in the state file."""
        return self.model_dump(mode="json")


OutputsT = TypeVar("OutputsT", bound=StageOutputs)


def recorded(kind: type[OutputsT], data: Any) -> OutputsT | None:
    """Recorded outputs read back as `kind`; None when there are none or they no longer fit the model
    (recorded by an older autodeploy: the stage then runs again)."""
    if not data:
        return None
    try:
        return kind.model_validate(data)
    except (ValueError, TypeError):
        return None


def _plan(value: Any) -> Plan:
    if isinstance(value, Plan):
        return value
    try:
        return Plan.from_dict(dict(value))
    except InputError as exc:  # pydantic turns only ValueError into "does not fit the model"
        raise ValueError(exc.message) from None


def _prediction(value: Any) -> Prediction:
    if isinstance(value, Prediction):
        return value
    try:
        return Prediction(**dict(value))
    except TypeError as exc:  # missing or unknown fields
        raise ValueError(str(exc)) from None


PlanField = Annotated[Plan, PlainValidator(_plan), PlainSerializer(lambda p: p.to_dict())]
PredictionField = Annotated[Prediction, PlainValidator(_prediction), PlainSerializer(lambda p: p.to_dict())]


# ------------------------------------------------------------------------------------------ configure


class ConfigureOutputs(StageOutputs):
    stage: ClassVar[str] = "configure"

    mode: Literal["agg", "disagg"] = Field(description="aggregated or disaggregated serving")
    plan: PlanField = Field(description="the deployed plan: per-role parallelism and engine settings")
    prediction: PredictionField = Field(description="the performance model's prediction for the plan")
    tokens_per_s_per_gpu_cluster: float = report(
        0.0, description="predicted cluster tokens/s/gpu of the deployed plan"
    )
    winner: str = report("", description="which mode won the sweep")
    top: dict[str, list[dict[str, Any]]] = report(
        default_factory=dict, description="the best candidates per mode"
    )
    report_dir: str = report("configure", description="where the sweep's tables and plots are")
    source: Literal["autodeploy", "aiconfigurator"] = Field(
        "autodeploy", description="who picked the plan: autodeploy's sweep, or aiconfigurator"
    )
    aiconfigurator: dict[str, Any] | None = Field(
        None,
        description="the aiconfigurator result the plan came from: directory, mode, rank, layout and its "
        "own predicted numbers (None: autodeploy's sweep picked it)",
    )
    calibration: str | None = Field(
        None,
        description="the calibration the predictions used (perfmodel.calibration): file and factors; "
        "None: the shipped per-system fit alone",
    )


# ------------------------------------------------------------------------------------------- generate


class GenerateOutputs(StageOutputs):
    stage: ClassVar[str] = "generate"

    dir: str = Field("generated", description="the generated files, relative to the run directory")
    files: dict[str, str] = Field(description="sha256 of every generated file, by relative path")
    placement: str = Field(description="placement.json, relative to the run directory")
    nodes: int = report(0, description="nodes that run a script")
    workers: int = report(0, description="workers over the whole cluster")
    engine: Literal["trtllm", "mocker", ""] = report("", description="trtllm or mocker")


# ---------------------------------------------------------------------------------------------- build


ImageArrival = Literal["built", "loaded", "pulled", "received", "present"]


class BuildOutputs(StageOutputs):
    stage: ClassVar[str] = "build"

    image: str | None = Field(None, description="the image the node scripts run (None: host runtime)")
    images: dict[str, str] = Field(
        default_factory=dict, description="the image id on every node, by node name"
    )
    versions: dict[str, str | None] = Field(
        default_factory=dict,
        description="what the image holds: {'dynamo': V, 'trtllm': V} (None: not installed)",
    )
    arrivals: dict[str, ImageArrival] = report(
        default_factory=dict,
        description="how the image got to each node: built, loaded, pulled, received (shipped from "
        "node 0) or present (already there)",
    )
    digests: dict[str, str] = report(
        default_factory=dict,
        description="the registry digest (REPO@sha256:...) by node, when a registry carried it",
    )
    ship_s: float | None = report(None, description="seconds spent shipping the image to the other nodes")
    shipped_mb_per_s: float | None = report(
        None, description="MB of the image (as docker save writes it) over ship_s, when it was shipped"
    )
    why: str = report("", description="why no image is needed, when none is")


# ----------------------------------------------------------------------------------------- checkpoint


class NodeInventory(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    files: int = Field(description="files under model.path on the node")
    bytes: int = Field(description="their total size")


class CheckpointOutputs(StageOutputs):
    stage: ClassVar[str] = "checkpoint"

    path: str | None = Field(description="model.path, as written in the pipeline file")
    source: Literal["present", "hub"] = Field(description="where the files came from")
    repo: str | None = Field(None, description="the hub repository (source: hub)")
    commit: str | None = Field(None, description="the commit the files were read at (source: hub)")
    nodes: dict[str, NodeInventory] = Field(
        default_factory=dict, description="what each node holds at model.path"
    )
    downloaded_to: list[str] = report(
        default_factory=list, description="nodes that received files in this run"
    )
    copied_bytes: dict[str, int] = report(
        default_factory=dict, description="bytes copied to each node in this run, by node name"
    )


# ---------------------------------------------------------------------------------------------- infra


class InfraOutputs(StageOutputs):
    stage: ClassVar[str] = "infra"

    runtime: Literal["docker", "native"] = Field(description="native processes or containers")
    node: str = Field(description="the node etcd and NATS run on")
    etcd_endpoint: str = Field(description="etcd's client URL")
    nats_server: str = Field(description="NATS's client URL")
    handles: dict[str, dict[str, Any]] = Field(
        description="the process or container serving each service (its identity: a restart changes it)"
    )
    reused: list[str] = report(
        default_factory=list, description="services found running from this run and kept"
    )


# --------------------------------------------------------------------------------------------- launch


class LaunchOutputs(StageOutputs):
    stage: ClassVar[str] = "launch"

    frontend: str = Field(description="the frontend's URL")
    remote_dir: str = Field(description="where the generated files are on every node")
    processes: dict[str, dict[str, Any]] = Field(
        description="the node script process on each busy node, by node index"
    )
    expected_instances: dict[str, int] = Field(description="instances per component, as registered")
    reused_nodes: list[int] = report(
        default_factory=list, description="nodes whose running node script was kept"
    )
    node_runtime: dict[str, dict[str, Any]] = report(
        default_factory=dict,
        description="per started node (by index): who the workers run as and whether RDMA is used",
    )


# ------------------------------------------------------------------------------------------ benchmark


class BenchmarkOutputs(StageOutputs):
    stage: ClassVar[str] = "benchmark"

    levels: list[int] = Field(description="the concurrency levels measured (closed loop)")
    names: list[str] = Field(
        default_factory=list, description="every level measured, in order: c<N>, or r<rate> (request rate)"
    )
    files: dict[str, str] = Field(
        description="the level file of each level that passed, by concurrency (or r<rate>), in order"
    )
    gpus: int = Field(description="GPUs of the deployed plan (tokens/s/gpu divides by them)")
    deployment: str = Field(description="the identity of the deployment that was measured")
    stopped: str | None = Field(None, description="why the sweep ended before its last level, if it did")


# ------------------------------------------------------------------------------------------ summarize


class SummarizeOutputs(StageOutputs):
    stage: ClassVar[str] = "summarize"

    files: list[str] = Field(description="the report's files, relative to the run directory")
    design_concurrency: int = Field(description="the concurrency the plan was designed for")
    at_design: dict[str, Any] = report(
        default_factory=dict, description="measured and predicted at the design concurrency"
    )
    meets_sla: bool = report(False, description="the design level meets the SLA")
