"""The Kubernetes manifest: checkpoint volume (PVC + download Job, or hostPath), engine ConfigMap, DynamoGraphDeployment."""

from __future__ import annotations

import hashlib
import math
import posixpath
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from automation.config.schema import PipelineConfig
from automation.errors import InputError
from automation.perfmodel.plan import Plan, RolePlan
from automation.versions import version_key

API_VERSION = "nvidia.com/v1alpha1"
ENGINE_CONFIG_DIR = "/workspace/engine_configs"
SERVICE_NAMES = {"agg": "TRTLLMWorker", "prefill": "TRTLLMPrefillWorker", "decode": "TRTLLMDecodeWorker"}
# The download Job installs this huggingface_hub, as Dynamo's own recipes do
# (ai-dynamo/dynamo recipes/deepseek-r1/model-cache/model-download.yaml @ 05303aa4, 2026-06-29).
HUB_VERSION = "1.16.4"
# Written by the download Job once `hf download` succeeded; worker pods wait for it before starting.
DOWNLOAD_DONE = ".autodeploy-download-complete"
# The child objects the operator names <dgd>-<service> are Services (RFC 1035 labels, at most 63 characters):
# 40 leaves room for the longest service name here, "-trtllmprefillworker".
_NAME_MAX = 40


@dataclass(frozen=True)
class OperatorFeatures:
    """What the DynamoGraphDeployment schema of a Dynamo release offers; each flag's source is the release's
    CRD (deploy/[cloud/]operator/config/crd/bases/nvidia.com_dynamographdeployments.yaml), vendored in
    tests/data/crds/ with index.yaml saying which release each file is."""

    # spec.pvcs plus services.*.volumeMounts from 0.6.0 (tag v0.6.0); before, one services.*.pvc per service.
    graph_pvcs: bool
    # services.*.subComponentType (prefill/decode) from 0.6.0 (tag v0.6.0).
    sub_component_type: bool
    # services.*.sharedMemory from 0.4.1 (tag v0.4.1). In 0.4.0 the operator always mounts /dev/shm with half the
    # memory limit as its size (internal/controller/dynamocomponentdeployment_controller.go @ v0.4.0).
    shared_memory: bool
    # services.*.multinode.nodeCount from 0.4.1 (tag v0.4.1).
    multinode: bool
    # spec.backendFramework from 0.4.1 (tag v0.4.1).
    backend_framework: bool
    # services.*.dynamoNamespace names the Dynamo namespace before 0.7.0; from 0.7.0 the operator derives it
    # from the Kubernetes namespace and the DGD name and the field is deprecated (ai-dynamo/dynamo#4126).
    dynamo_namespace: bool


def operator_features(version: str) -> OperatorFeatures:
    """The DynamoGraphDeployment fields the operator of Dynamo `version` has."""
    key = version_key(version)
    return OperatorFeatures(
        graph_pvcs=key >= version_key("0.6.0"),
        sub_component_type=key >= version_key("0.6.0"),
        shared_memory=key >= version_key("0.4.1"),
        multinode=key >= version_key("0.4.1"),
        backend_framework=key >= version_key("0.4.1"),
        dynamo_namespace=key < version_key("0.7.0"),
    )


@dataclass(frozen=True)
class PodPaths:
    """Where a worker pod finds its inputs: the checkpoint directory and the engine YAMLs' directory."""

    model: str
    engine_config_dir: str


# The worker's arguments after `python3 -m dynamo.trtllm`, given its role and the pod's paths.
WorkerArgs = Callable[[RolePlan, PodPaths], list[str]]


def resource_name(run_name: str) -> str:
    """The DynamoGraphDeployment's name for a run: an RFC 1035 label short enough for the operator's
    <name>-<service> children; a shortened name keeps a hash of the whole one, so that runs stay apart."""
    name = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", run_name.lower())).strip("-")
    if not name or not name[0].isalpha():
        name = f"ad-{name}".rstrip("-")
    if len(name) > _NAME_MAX:
        digest = hashlib.sha256(run_name.encode()).hexdigest()[:6]
        name = f"{name[: _NAME_MAX - 7].rstrip('-')}-{digest}"
    return name


def model_dir(config: PipelineConfig) -> str:
    """The checkpoint's directory below the mount path: kubernetes.model_dir, or <org>--<name> as on the nodes."""
    return (config.kubernetes.model_dir or config.model.hf_id.replace("/", "--")).strip("/")


def pod_paths(config: PipelineConfig) -> PodPaths:
    """Paths as worker pods see them (both model sources mount the checkpoint at the same place)."""
    return PodPaths(
        model=posixpath.join(config.kubernetes.mount_path, model_dir(config)),
        engine_config_dir=ENGINE_CONFIG_DIR,
    )


def render_manifest(
    config: PipelineConfig,
    plan: Plan,
    engine_files: Mapping[str, str],
    worker_args: WorkerArgs,
    frontend_args: Sequence[str],
    worker_env: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The documents of k8s_deploy.yaml in apply order: the PVC and the download Job (create_pvc only), the
    ConfigMap of engine YAMLs (file name -> text), then the DynamoGraphDeployment.

    Raises:
        InputError: a setting the chosen Dynamo release or model source cannot express.
    """
    k8s = config.kubernetes
    name = resource_name(config.name)
    features = operator_features(config.dynamo.version)
    paths = pod_paths(config)
    if k8s.model_source == "hostPath":
        _host_path(config)  # refuse a node path kubelet cannot use before writing anything
    docs: list[dict[str, Any]] = []
    if k8s.model_source == "pvc" and k8s.create_pvc:
        docs += [_pvc(config), _download_job(config, name, paths)]
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(config, f"{name}-engine-configs"),
        "data": dict(engine_files),
    }
    docs.append(configmap)
    docs.append(_graph(config, plan, name, features, paths, worker_args, frontend_args, worker_env or {}))
    return docs


def template_context(config: PipelineConfig, documents: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The variables of templates/k8s/k8s_deploy.yaml.j2: the documents as YAML and what must exist first."""
    k8s = config.kubernetes
    paths = pod_paths(config)
    needs = [
        f"The Dynamo operator of release {config.dynamo.version} (its DynamoGraphDeployment CRD) is installed."
    ]
    if k8s.model_source == "hostPath":
        needs.append(
            f"Every node that runs a worker or the frontend holds the checkpoint at {_host_path(config)} "
            f"(mounted read-only at {paths.model})."
        )
    elif k8s.create_pvc:
        needs.append(
            f"Nothing else for the checkpoint: the PVC {k8s.model_pvc} and the download Job below fetch "
            f"{config.model.hf_id}@{config.model.revision} into {paths.model}; workers wait for it."
        )
    else:
        needs.append(
            f"The PersistentVolumeClaim {k8s.model_pvc} exists in the namespace and holds the checkpoint in "
            f"{model_dir(config)}/ (mounted at {k8s.mount_path})."
        )
    if k8s.hf_token_secret:
        needs.append(
            f"The Secret {k8s.hf_token_secret} holds the hub token as HF_TOKEN: kubectl create secret generic "
            f"{k8s.hf_token_secret} --from-literal=HF_TOKEN=<token>."
        )
    else:
        needs.append("No Secret: no hub token is passed to the pods (kubernetes.hf_token_secret is unset).")
    return {
        "run_name": config.name,
        "api_version": API_VERSION,
        "dynamo_version": config.dynamo.version,
        "trtllm_version": config.backend.version,
        "image": config.dynamo.image,
        "namespace": k8s.namespace,
        "needs": needs,
        "documents": [dump(doc).rstrip("\n") for doc in documents],
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (engine YAMLs, the download script) as literal blocks; short lists of scalars inline."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    inline = all(isinstance(x, (int, float, str)) and "\n" not in str(x) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=inline)


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(str, _represent_str)


def dump(document: Mapping[str, Any]) -> str:
    """One document as YAML, keys in the order written."""
    return yaml.dump(dict(document), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


# ---------------------------------------------------------------------------------------------- pieces


def _labels(config: PipelineConfig) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": resource_name(config.name),
        "app.kubernetes.io/managed-by": "autodeploy",
    }


def _metadata(config: PipelineConfig, name: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if config.kubernetes.namespace:
        meta["namespace"] = config.kubernetes.namespace
    meta["labels"] = _labels(config)
    return meta


def _host_path(config: PipelineConfig) -> str:
    path = config.kubernetes.host_path or str(config.model.path)
    if not path.startswith("/"):
        raise InputError(
            f"kubernetes.model_source hostPath: {path!r} is not an absolute node path (kubelet does not expand ~)",
            hint="set kubernetes.host_path to the checkpoint's absolute directory on the GPU nodes",
        )
    return path


def _pvc(config: PipelineConfig) -> dict[str, Any]:
    k8s = config.kubernetes
    spec: dict[str, Any] = {
        "accessModes": [k8s.access_mode],
        "resources": {"requests": {"storage": k8s.pvc_size}},
    }
    if k8s.storage_class:
        spec["storageClassName"] = k8s.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(config, k8s.model_pvc),
        "spec": spec,
    }


def _download_job(config: PipelineConfig, name: str, paths: PodPaths) -> dict[str, Any]:
    """A Job that fills the PVC as Dynamo's recipes do (recipes/*/model-cache/model-download.yaml): a small
    Python image installs huggingface_hub and runs `hf download` into the directory the workers read."""
    k8s = config.kubernetes
    done = posixpath.join(paths.model, DOWNLOAD_DONE)
    words = [
        "hf",
        "download",
        config.model.hf_id,
        "--revision",
        config.model.revision,
        "--local-dir",
        paths.model,
    ]
    for pattern in config.checkpoint.allow_patterns or []:
        words += ["--include", pattern]
    script = "\n".join(
        [
            "set -eu",
            f"rm -f {shlex.quote(done)}",
            f"pip install --no-cache-dir {shlex.quote(f'huggingface_hub=={HUB_VERSION}')}",
            shlex.join(words),
            f"touch {shlex.quote(done)}",
        ]
    )
    env: list[dict[str, Any]] = []
    if config.checkpoint.endpoint:
        env.append({"name": "HF_ENDPOINT", "value": config.checkpoint.endpoint})
    if k8s.hf_token_secret:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": k8s.hf_token_secret, "key": "HF_TOKEN"}},
            }
        )
    container: dict[str, Any] = {
        "name": "model-download",
        "image": k8s.download_image,
        "command": ["sh", "-c"],
        "args": [script + "\n"],
    }
    if env:
        container["env"] = env
    container["resources"] = {"requests": {"cpu": "1", "memory": "4Gi"}}
    container["volumeMounts"] = [{"name": "model", "mountPath": k8s.mount_path}]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(config, f"{name}-model-download"),
        "spec": {
            "backoffLimit": 3,
            "template": {
                "metadata": {"labels": _labels(config)},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [container],
                    "volumes": [{"name": "model", "persistentVolumeClaim": {"claimName": k8s.model_pvc}}],
                },
            },
        },
    }


def _graph(
    config: PipelineConfig,
    plan: Plan,
    name: str,
    features: OperatorFeatures,
    paths: PodPaths,
    worker_args: WorkerArgs,
    frontend_args: Sequence[str],
    worker_env: Mapping[str, str],
) -> dict[str, Any]:
    k8s = config.kubernetes
    frontend: dict[str, Any] = {"componentType": "frontend"}
    if features.dynamo_namespace:
        frontend["dynamoNamespace"] = config.dynamo.namespace
    frontend["replicas"] = 1
    requests = _requests(k8s.frontend_cpu, k8s.frontend_memory)
    if requests:
        frontend["resources"] = {"requests": requests}
    # The frontend reads the tokenizer and config files at the path the workers publish in their model card
    # (from 0.7.0 a card of a model on disk keeps its local paths, lib/llm/src/local_model.rs), so it mounts
    # the checkpoint where the workers do, as Dynamo's examples/backends/trtllm/deploy/disagg-multinode.yaml.
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    _mount_model(config, features, paths, frontend, volumes, mounts)
    front_pod: dict[str, Any] = {"volumes": volumes} if volumes else {}
    front_pod["mainContainer"] = {
        "image": str(config.dynamo.image),
        "command": ["python3", "-m", "dynamo.frontend"],
        "args": list(frontend_args),
    }
    if mounts:
        front_pod["mainContainer"]["volumeMounts"] = mounts
    frontend["extraPodSpec"] = front_pod
    services: dict[str, Any] = {"Frontend": frontend}
    for role in plan.roles:
        services[SERVICE_NAMES[role.role]] = _worker(
            config, plan, role, features, paths, worker_args, worker_env
        )
    spec: dict[str, Any] = {}
    if features.backend_framework:
        spec["backendFramework"] = "trtllm"
    if k8s.model_source == "pvc" and features.graph_pvcs:
        # create: false: the claim is ours (written above) or the user's; the operator only mounts it.
        spec["pvcs"] = [{"name": k8s.model_pvc, "create": False}]
    spec["services"] = services
    metadata = _metadata(config, name)
    metadata["annotations"] = {
        "autodeploy/dynamo-version": config.dynamo.version,
        "autodeploy/trtllm-version": str(config.backend.version),
        "autodeploy/plan": f"{plan.mode} x{plan.replicas}: {plan.layout()}",
    }
    return {"apiVersion": API_VERSION, "kind": "DynamoGraphDeployment", "metadata": metadata, "spec": spec}


def _requests(cpu: str | None, memory: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if cpu:
        out["cpu"] = cpu
    if memory:
        out["memory"] = memory
    return out


def _scaled(quantity: str | None, factor: int) -> str | None:
    """quantity × factor, in the quantity's own unit ("8" × 4 = "32", "64Gi" × 2 = "128Gi")."""
    if quantity is None:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(.*)", quantity)
    if match is None:  # a form the config check lets through but that has no plain number (".5"): keep it
        return quantity
    number = float(match.group(1)) * factor
    text = str(int(number)) if number.is_integer() else f"{number:g}"
    return text + match.group(2)


def _nodes_per_worker(config: PipelineConfig, gpus: int) -> int:
    """Pods (nodes) one worker spans: the fewest that split its GPUs evenly over nodes of the cluster's size."""
    per_node = max(node.gpus for node in config.cluster.nodes)
    count = max(1, math.ceil(gpus / per_node))
    while gpus % count:
        count += 1
    return count


def _worker(
    config: PipelineConfig,
    plan: Plan,
    role: RolePlan,
    features: OperatorFeatures,
    paths: PodPaths,
    worker_args: WorkerArgs,
    worker_env: Mapping[str, str],
) -> dict[str, Any]:
    k8s = config.kubernetes
    nodes = _nodes_per_worker(config, role.gpus_per_worker)
    gpus = (
        role.gpus_per_worker // nodes
    )  # per pod: the operator's gpu limit is per node of a multinode worker
    if nodes > 1 and not features.multinode:
        raise InputError(
            f"a {role.role} worker needs {role.gpus_per_worker} GPUs, more than one node has, and the "
            f"DynamoGraphDeployment of Dynamo {config.dynamo.version} has no multinode field",
            hint="use Dynamo 0.4.1 or later for Kubernetes, or a plan whose workers fit on one node",
        )
    service: dict[str, Any] = {"componentType": "worker"}
    if features.sub_component_type and role.role != "agg":
        service["subComponentType"] = role.role
    if features.dynamo_namespace:
        service["dynamoNamespace"] = config.dynamo.namespace
    if k8s.hf_token_secret:
        service["envFromSecret"] = k8s.hf_token_secret
    # Every replica's workers of this role, as the node scripts start them.
    service["replicas"] = role.workers * plan.replicas
    if nodes > 1:
        service["multinode"] = {"nodeCount": nodes}
    resources: dict[str, Any] = {}
    requests = _requests(_scaled(k8s.cpu_per_gpu, gpus), _scaled(k8s.memory_per_gpu, gpus))
    if requests:
        resources["requests"] = requests
    limits: dict[str, str] = {"gpu": str(gpus)}
    if not features.shared_memory:
        # 0.4.0 sizes /dev/shm as half the memory limit: a limit of twice shm_size (at least the request).
        limits["memory"] = _larger(_scaled(k8s.shm_size, 2) or k8s.shm_size, requests.get("memory"))
    resources["limits"] = limits
    service["resources"] = resources
    if features.shared_memory:
        service["sharedMemory"] = {"size": k8s.shm_size}
    if worker_env:
        service["envs"] = [{"name": key, "value": value} for key, value in worker_env.items()]
    volumes: list[dict[str, Any]] = [
        {"name": "engine-configs", "configMap": {"name": f"{resource_name(config.name)}-engine-configs"}}
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "engine-configs", "mountPath": paths.engine_config_dir, "readOnly": True}
    ]
    _mount_model(config, features, paths, service, volumes, mounts)
    pod: dict[str, Any] = {"volumes": volumes}
    if k8s.model_source == "pvc" and k8s.create_pvc:
        # The download Job is applied with this graph: hold the worker until the checkpoint is complete.
        pod["initContainers"] = [_wait_for_download(config, paths)]
    pod["mainContainer"] = {
        "image": str(config.dynamo.image),
        "workingDir": "/workspace",
        "volumeMounts": mounts,
        "command": ["python3", "-m", "dynamo.trtllm"],
        "args": worker_args(role, paths),
    }
    service["extraPodSpec"] = pod
    return service


def _mount_model(
    config: PipelineConfig,
    features: OperatorFeatures,
    paths: PodPaths,
    service: dict[str, Any],
    volumes: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
) -> None:
    """Mount the checkpoint into a service: the claim through the operator's own field (it adds the volume),
    a hostPath through the pod spec."""
    k8s = config.kubernetes
    if k8s.model_source == "pvc":
        if features.graph_pvcs:
            service["volumeMounts"] = [{"name": k8s.model_pvc, "mountPoint": k8s.mount_path}]
        else:
            service["pvc"] = {"name": k8s.model_pvc, "mountPoint": k8s.mount_path}
    else:
        volumes.append({"name": "model", "hostPath": {"path": _host_path(config), "type": "Directory"}})
        mounts.append({"name": "model", "mountPath": paths.model, "readOnly": True})


def _larger(a: str, b: str | None) -> str:
    """The larger of two binary-suffixed quantities (same form as _scaled writes); a when b is None."""
    if b is None:
        return a
    return a if _bytes(a) >= _bytes(b) else b


_BINARY = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


def _bytes(quantity: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGTPE]i|[kMGTPE])?", quantity)
    if match is None:
        raise InputError(f"{quantity!r} is not a memory size like 16Gi", hint="use a quantity such as 64Gi")
    unit = match.group(2) or ""
    return float(match.group(1)) * (_BINARY.get(unit) or _DECIMAL[unit])


def _wait_for_download(config: PipelineConfig, paths: PodPaths) -> dict[str, Any]:
    done = posixpath.join(paths.model, DOWNLOAD_DONE)
    return {
        "name": "wait-for-checkpoint",
        # The worker's own image: already pulled for the main container, and it has a shell.
        "image": str(config.dynamo.image),
        "command": ["sh", "-c", f"until [ -f {shlex.quote(done)} ]; do sleep 10; done"],
        "volumeMounts": [
            {"name": config.kubernetes.model_pvc, "mountPath": config.kubernetes.mount_path, "readOnly": True}
        ],
    }
