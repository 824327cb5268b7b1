"""k8s_deploy.yaml against each supported Dynamo release's own DynamoGraphDeployment CRD, and through kubectl."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from automation.config import PipelineConfig
from automation.config.schema import dynamo_versions
from automation.errors import InputError
from automation.k8s_manifest import (
    DOWNLOAD_DONE,
    PodPaths,
    operator_features,
    render_manifest,
    resource_name,
    template_context,
)
from automation.perfmodel.plan import Plan, RolePlan
from automation.versions import version_key
from tests.generate.cases import agg_plan, disagg_plan, pipeline
from tests.hubserver import HubServer
from tests.services import require

_REPO = Path(__file__).resolve().parent.parent.parent
# The vendored CRDs (index.yaml says what each is): in the repository, or in the steering repository's shared/
# beside the checkout (where data read from fetched upstream snapshots may be kept).
CRDS = next(
    (
        d
        for d in (_REPO / "tests" / "data" / "crds", _REPO.parent / "shared" / "reference" / "dynamo-crds")
        if d.is_dir()
    ),
    _REPO / "tests" / "data" / "crds",
)
RELEASES = sorted(dynamo_versions(), key=version_key)
SECRET = "hf-token"


# ------------------------------------------------------------------------------------------- the CRDs


@functools.cache
def index() -> dict[str, Any]:
    require((CRDS / "index.yaml").is_file(), f"the vendored Dynamo CRDs are missing ({CRDS})")
    data: dict[str, Any] = yaml.safe_load((CRDS / "index.yaml").read_text())
    return data


@functools.cache
def crd(file: str) -> dict[str, Any]:
    # libyaml: the newer files are 1.6 MB, which the pure-Python loader takes seconds over.
    data: dict[str, Any] = yaml.load((CRDS / file).read_text(), Loader=yaml.CSafeLoader)
    return data


def crd_version(file: str, version: str) -> dict[str, Any]:
    return next(v for v in crd(file)["spec"]["versions"] if v["name"] == version)


def schema_files(release: str) -> tuple[list[str], str]:
    """The CRD files a release's manifest is checked against, and how the release is pinned to them."""
    for entry in index()["releases"]:
        if release in entry["releases"]:
            return list(entry["files"]), str(entry["pin"])
    for entry in index()["unpinned"]:
        if release in entry["releases"]:
            return list(entry["proxy_files"]), "proxy"
    raise AssertionError(f"tests/data/crds/index.yaml does not say which CRD Dynamo {release} has")


# ------------------------------------------------------------------------ a strict structural validator

# Every keyword the vendored schemas use (a new one fails the test instead of being skipped).
_KEYWORDS = {
    "type", "description", "properties", "required", "items", "x-kubernetes-list-type", "format", "anyOf",
    "x-kubernetes-int-or-string", "x-kubernetes-map-type", "default", "additionalProperties", "pattern",
    "x-kubernetes-list-map-keys", "minimum", "maximum", "enum", "maxLength", "minLength",
    "x-kubernetes-validations", "x-kubernetes-preserve-unknown-fields", "maxItems", "maxProperties",
}  # fmt: skip
_INT_RANGE = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_QUANTITY = re.compile(r"^([0-9.]+)([KMGTPE]i|[numkMGTPE]|)$")
_UNITS = {
    "": 1,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
}
_UNITS |= {f"{p}i": 1024.0 ** (i + 1) for i, p in enumerate("KMGTPE")}


def _quantity(text: Any) -> float:
    match = _QUANTITY.match(str(text))
    assert match, f"{text!r} is no quantity this test can compare"
    return float(match.group(1)) * _UNITS[match.group(2)]


# The CEL rules (x-kubernetes-validations) of the vendored CRDs on the nodes a manifest can reach, as Python.
# A rule on a node the manifest writes that is not here fails the test: a new upstream rule gets a look.
# Transition rules (on oldSelf) hold on create unless marked optionalOldSelf (then oldSelf has no value).
_CEL: dict[str, Callable[[dict[str, Any]], bool]] = {
    # spec.pvcs[] (0.6.0+)
    "!has(self.create) || self.create == false || (has(self.size) && has(self.storageClass) && "
    "has(self.volumeAccessMode))": lambda s: (
        not s.get("create") or all(k in s for k in ("size", "storageClass", "volumeAccessMode"))
    ),
    # services.*.sharedMemory (1.1)
    "!(has(self.disabled) && self.disabled && has(self.size))": lambda s: (
        not (s.get("disabled") and "size" in s)
    ),
    # services.*.sharedMemory (1.2+)
    "(has(self.disabled) && self.disabled) || (has(self.size) && quantity(self.size).isGreaterThan("
    "quantity('0')))": lambda s: bool(s.get("disabled")) or ("size" in s and _quantity(s["size"]) > 0),
    # spec (1.3+, optionalOldSelf): on create oldSelf has no value, so the rule is true.
    "oldSelf.hasValue() || !has(self.restart)": lambda s: True,
    # services.* (1.3+)
    "!has(self.minAvailable) || (has(self.replicas) && self.replicas == 0) || self.minAvailable <= "
    "(has(self.replicas) ? self.replicas : 1)": lambda s: (
        "minAvailable" not in s or s.get("replicas") == 0 or s["minAvailable"] <= s.get("replicas", 1)
    ),
}


def validate(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """What the API server would reject in value under a CRD's structural schema, with strict field
    validation (`kubectl apply --validate=strict`): unknown fields are errors unless the schema keeps them
    (x-kubernetes-preserve-unknown-fields). Defaults count as present for `required`."""
    errors: list[str] = []
    unknown = set(schema) - _KEYWORDS
    if unknown:
        errors.append(f"{path}: schema keyword(s) {sorted(unknown)} are not checked by this validator")
    if schema.get("x-kubernetes-int-or-string"):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            return [*errors, f"{path}: {value!r} is neither an integer nor a string"]
        if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
        return errors
    if "anyOf" in schema:
        errors.append(f"{path}: anyOf outside int-or-string is not checked by this validator")
    kind = schema.get("type")
    if kind == "object":
        errors += _object(value, schema, path)
    elif kind == "array":
        errors += _array(value, schema, path)
    elif kind == "string":
        if not isinstance(value, str):
            return [*errors, f"{path}: {value!r} is not a string"]
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
        if len(value) > schema.get("maxLength", len(value)) or len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: {value!r} has a length outside the schema's bounds")
    elif kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            return [*errors, f"{path}: {value!r} is not an integer"]
        low, high = _INT_RANGE.get(schema.get("format", "int64"), _INT_RANGE["int64"])
        if not max(low, schema.get("minimum", low)) <= value <= min(high, schema.get("maximum", high)):
            errors.append(f"{path}: {value} is out of range")
    elif kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{path}: {value!r} is not a number")
    elif kind == "boolean":
        if not isinstance(value, bool):
            errors.append(f"{path}: {value!r} is not a boolean")
    elif kind is not None:
        errors.append(f"{path}: schema type {kind!r} is not checked by this validator")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    return errors


def _object(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: {type(value).__name__} where an object belongs"]
    errors: list[str] = []
    props: dict[str, Any] = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    for name in schema.get("required", []):
        if name not in value and "default" not in props.get(name, {}):
            errors.append(f"{path}.{name}: required")
    for key, item in value.items():
        where = f"{path}.{key}"
        if key in props:
            errors += validate(item, props[key], where)
        elif isinstance(extra, dict):
            errors += validate(item, extra, where)
        elif extra is True or schema.get("x-kubernetes-preserve-unknown-fields"):
            continue
        else:
            errors.append(f"{where}: unknown field")
    if len(value) > schema.get("maxProperties", len(value)):
        errors.append(f"{path}: more than {schema['maxProperties']} properties")
    for rule in schema.get("x-kubernetes-validations", []):
        text = rule["rule"]
        if "oldSelf" in text and not rule.get("optionalOldSelf"):
            continue  # a transition rule: checked on updates only
        check = _CEL.get(text)
        if check is None:
            errors.append(f"{path}: CEL rule not evaluated by this test: {text}")
        elif not check(value):
            errors.append(f"{path}: {rule.get('message', text)}")
    return errors


def _array(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    if not isinstance(value, list):
        return [f"{path}: {type(value).__name__} where a list belongs"]
    errors: list[str] = []
    for i, item in enumerate(value):
        errors += validate(item, schema.get("items", {}), f"{path}[{i}]")
    if len(value) > schema.get("maxItems", len(value)):
        errors.append(f"{path}: more than {schema['maxItems']} items")
    kind = schema.get("x-kubernetes-list-type")
    if kind == "set" and len({json.dumps(v, sort_keys=True) for v in value}) != len(value):
        errors.append(f"{path}: duplicate items in a set")
    if kind == "map":
        keys = [
            tuple(v.get(k) for k in schema["x-kubernetes-list-map-keys"])
            for v in value
            if isinstance(v, dict)
        ]
        if len(set(keys)) != len(keys):
            errors.append(f"{path}: duplicate map keys {schema['x-kubernetes-list-map-keys']}")
    return errors


_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_QUALIFIED_NAME = re.compile(rf"({_DNS_SUBDOMAIN.pattern}/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


def metadata_errors(document: dict[str, Any]) -> list[str]:
    """ObjectMeta as the API server checks it for what the manifest writes (a CRD's schema leaves
    metadata to the server: `metadata: {type: object}`)."""
    meta = document.get("metadata", {})
    errors = [f"metadata.{k}: not written by autodeploy" for k in meta if k not in _META_KEYS]
    name = meta.get("name", "")
    if not _DNS_SUBDOMAIN.fullmatch(name) or len(name) > 253:
        errors.append(f"metadata.name: {name!r} is not an RFC 1123 subdomain")
    for key, value in meta.get("labels", {}).items():
        if not _QUALIFIED_NAME.fullmatch(key) or not _LABEL_VALUE.fullmatch(value) or len(value) > 63:
            errors.append(f"metadata.labels: {key}={value!r} is not a valid label")
    errors += [
        f"metadata.annotations.{k}: not a string"
        for k, v in meta.get("annotations", {}).items()
        if not isinstance(v, str)
    ]
    return errors


_META_KEYS = {"name", "namespace", "labels", "annotations"}


def dgd_errors(document: dict[str, Any], file: str) -> list[str]:
    """Everything the API server with the CRD of `file` installed would reject in the DynamoGraphDeployment."""
    group, version = document["apiVersion"].split("/")
    definition = crd(file)
    errors = metadata_errors(document)
    if group != definition["spec"]["group"] or document["kind"] != definition["spec"]["names"]["kind"]:
        errors.append(f"{document['apiVersion']} {document['kind']} is not this CRD's kind")
    served = {v["name"] for v in definition["spec"]["versions"] if v.get("served")}
    if version not in served:
        return [*errors, f"{version} is not served (served: {sorted(served)})"]
    body = {k: v for k, v in document.items() if k != "metadata"}
    schema = copy.deepcopy(crd_version(file, version)["schema"]["openAPIV3Schema"])
    schema["properties"].pop("metadata", None)  # checked above, as the server does
    return errors + validate(body, schema)


# -------------------------------------------------------------------------------------- the manifests


def worker_args(role: RolePlan, pod: PodPaths) -> list[str]:
    """A stand-in for generate's worker arguments: what the schema sees are strings either way."""
    args = ["--model-path", pod.model, "--served-model-name", "m"]
    args += ["--extra-engine-args", f"{pod.engine_config_dir}/{role.role}_config.yaml"]
    return args + (["--disaggregation-mode", role.role] if role.role != "agg" else [])


def manifest(config: PipelineConfig, plan: Plan) -> list[dict[str, Any]]:
    engine_files = {f"{r.role}_config.yaml": "tensor_parallel_size: 1\n" for r in plan.roles}
    env = {"DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": '["generate"]'}
    return render_manifest(config, plan, engine_files, worker_args, ["--http-port", "8000"], env)


def kubernetes_section(source: str, create: bool, token: bool) -> dict[str, Any]:
    section: dict[str, Any] = {"model_source": source}
    if source == "hostPath":
        section["host_path"] = "/data/models/qwen3"
    if create:
        section |= {"create_pvc": True, "storage_class": "shared-nfs", "namespace": "llm"}
    if token:
        section["hf_token_secret"] = SECRET
    return section


# agg and disagg, an existing PVC, a PVC filled by the download Job and a hostPath, with and without a token.
SCENARIOS: dict[str, tuple[Callable[[], Plan], list[int], dict[str, Any]]] = {
    f"{mode}-{source}{'-create' if create else ''}{'-token' if token else ''}": (
        (lambda: agg_plan(tp=2, replicas=2)) if mode == "agg" else (lambda: disagg_plan(replicas=2)),
        [8, 8],
        kubernetes_section(source, create, token),
    )
    for mode in ("agg", "disagg")
    for source, create in (("pvc", False), ("pvc", True), ("hostPath", False))
    for token in (False, True)
}
# A decode worker of 16 GPUs spans two 8-GPU nodes: the operator's multinode.
SCENARIOS["multinode"] = (
    lambda: disagg_plan(d_tp=16, replicas=1),
    [8, 8],
    kubernetes_section("pvc", True, True),
)


def scenario(release: str, name: str) -> tuple[PipelineConfig, Plan]:
    make_plan, nodes, section = SCENARIOS[name]
    return pipeline(nodes, dynamo=release, kubernetes=section), make_plan()


def rendered(release: str) -> Iterator[tuple[str, PipelineConfig, Plan, list[dict[str, Any]]]]:
    for name in SCENARIOS:
        config, plan = scenario(release, name)
        if name == "multinode" and not operator_features(release).multinode:
            with pytest.raises(InputError, match="multinode"):
                manifest(config, plan)
            continue
        yield name, config, plan, manifest(config, plan)


def graph(documents: list[dict[str, Any]]) -> dict[str, Any]:
    (dgd,) = [d for d in documents if d["kind"] == "DynamoGraphDeployment"]
    return dgd


# ------------------------------------------------------------------------------------ the index itself


def test_index_covers_every_supported_release_once() -> None:
    claimed = [r for e in index()["releases"] + index()["unpinned"] for r in e["releases"]]
    assert sorted(claimed, key=version_key) == RELEASES, (
        "index.yaml and versions.yaml name different releases"
    )
    vendored = {p.name for p in CRDS.glob("dynamographdeployment-*.yaml")}
    used = {f for e in index()["releases"] for f in e["files"]} | {
        f for e in index()["unpinned"] for f in e["proxy_files"]
    }
    assert used == vendored == set(index()["files"])


def test_the_schema_files_are_derived_from_the_recorded_crds() -> None:
    """Each file is the pruned CRD scripts/derive-crd-schemas.py derives from the upstream commit index.yaml
    records. Where the full upstream CRDs are at hand (~/.cache/autodeploy/crds, or AUTODEPLOY_CRD_CACHE),
    their v1alpha1 schemas hash as index.yaml records."""
    full_dir = Path(os.environ.get("AUTODEPLOY_CRD_CACHE", Path.home() / ".cache" / "autodeploy" / "crds"))
    for file, facts in index()["files"].items():
        text = (CRDS / file).read_text()
        documents = [d for d in yaml.load_all(text, Loader=yaml.CSafeLoader) if d]
        assert len(documents) == 1 and documents[0]["kind"] == "CustomResourceDefinition", file
        assert documents[0]["metadata"]["name"] == "dynamographdeployments.nvidia.com", file
        assert text.startswith("# Derived by scripts/derive-crd-schemas.py") and facts["commit"] in text, file
        full = full_dir / file
        if not full.is_file():
            continue
        (upstream,) = [d for d in yaml.load_all(full.read_text(), Loader=yaml.CSafeLoader) if d]
        schema = next(v for v in upstream["spec"]["versions"] if v["name"] == "v1alpha1")["schema"]
        digest = hashlib.sha256(json.dumps(schema["openAPIV3Schema"], sort_keys=True).encode()).hexdigest()
        assert digest.startswith(facts["v1alpha1_sha256"]), file


# ------------------------------------------------------------------------- the CRD check, per release


@pytest.mark.parametrize("release", RELEASES)
def test_graph_passes_the_release_crd_strictly(release: str) -> None:
    files, pin = schema_files(release)
    for name, _config, _plan, documents in rendered(release):
        dgd = graph(documents)
        assert dgd["apiVersion"] == "nvidia.com/v1alpha1"
        for file in files:
            errors = dgd_errors(dgd, file)
            assert not errors, f"Dynamo {release} ({pin}: {file}), {name}:\n" + "\n".join(errors[:20])
        for document in documents:
            assert not metadata_errors(document), (name, document["kind"], metadata_errors(document))


def test_validator_rejects_what_the_server_rejects() -> None:
    """The validator can fail: an unknown field, a wrong type, a field of a later release, a broken CEL rule."""
    config, plan = scenario("1.4.0", "disagg-pvc")
    good = graph(manifest(config, plan))
    assert not dgd_errors(good, "dynamographdeployment-1.4.yaml")

    def errors_after(
        change: Callable[[dict[str, Any]], None], file: str = "dynamographdeployment-1.4.yaml"
    ) -> list[str]:
        bad = copy.deepcopy(good)
        change(bad)
        return dgd_errors(bad, file)

    worker = "TRTLLMDecodeWorker"
    assert any(
        "unknown field" in e for e in errors_after(lambda d: d["spec"]["services"][worker].update(pvcSize=1))
    )
    assert any(
        "unknown field" in e
        for e in errors_after(
            lambda d: d["spec"]["services"][worker]["extraPodSpec"]["mainContainer"].update(bad=1)
        )
    )
    assert any(
        "not a string" in e
        for e in errors_after(lambda d: d["spec"]["services"][worker]["resources"]["limits"].update(gpu=2))
    )
    assert any(
        "size is required" in e
        for e in errors_after(lambda d: d["spec"]["services"][worker].update(sharedMemory={}))
    )
    assert any(
        "When create is true" in e for e in errors_after(lambda d: d["spec"]["pvcs"][0].update(create=True))
    )
    assert any(
        "required" in e
        for e in errors_after(
            lambda d: d["spec"]["services"][worker]["extraPodSpec"]["volumes"][0].pop("name")
        )
    )
    # spec.pvcs, volumeMounts and subComponentType came with 0.6.0: the 0.5 operator rejects them.
    old = dgd_errors(good, "dynamographdeployment-0.5.yaml")
    assert {".spec.pvcs: unknown field", f".spec.services.{worker}.volumeMounts: unknown field"} <= set(old)
    assert f".spec.services.{worker}.subComponentType: unknown field" in old


# ---------------------------------------------------------------- the old defects, each with its check


def secret_refs(documents: list[dict[str, Any]]) -> list[str]:
    """Every Secret the documents make a pod wait for: envFromSecret, secretKeyRef, secretRef."""
    text = json.dumps(documents)
    found = re.findall(r'"envFromSecret": "([^"]+)"', text)
    found += [m for m in re.findall(r'"secretKeyRef": \{[^}]*"name": "([^"]+)"', text)]
    found += re.findall(r'"secretRef": \{"name": "([^"]+)"', text)
    return found


def model_mount_problems(documents: list[dict[str, Any]], config: PipelineConfig) -> list[str]:
    """Services that do not mount the checkpoint the workers' arguments name: every worker, and the frontend,
    which reads the tokenizer and config files at the path the workers publish."""
    dgd = graph(documents)
    services = dgd["spec"]["services"]
    models = set()
    for service in services.values():
        args = service["extraPodSpec"]["mainContainer"].get("args", [])
        for flag in ("--model-path", "--model"):
            if flag in args:
                models.add(args[args.index(flag) + 1])
    if len(models) != 1:
        return [f"the workers name {len(models)} checkpoint paths: {sorted(models)}"]
    (model,) = models
    problems = []
    claims = {p["name"] for p in dgd["spec"].get("pvcs", [])}
    for name, service in services.items():
        mounted = [m["mountPoint"] for m in service.get("volumeMounts", [])]
        if service.get("volumeMounts") and not {m["name"] for m in service["volumeMounts"]} <= claims:
            problems.append(f"{name}: volumeMounts name a claim spec.pvcs does not list")
        if "pvc" in service:
            mounted.append(service["pvc"]["mountPoint"])
        pod = service["extraPodSpec"]
        host = {v["name"] for v in pod.get("volumes", []) if "hostPath" in v}
        mounted += [m["mountPath"] for m in pod["mainContainer"].get("volumeMounts", []) if m["name"] in host]
        if not any(model == m or model.startswith(m.rstrip("/") + "/") for m in mounted):
            problems.append(f"{name}: {model} is on no mounted volume (mounted: {mounted})")
    return problems


def shm_problems(documents: list[dict[str, Any]], config: PipelineConfig) -> list[str]:
    """Workers whose /dev/shm is not at least kubernetes.shm_size (sharedMemory, or, where the release has
    no such field, half the memory limit, which is what the 0.4.0 operator gives /dev/shm)."""
    want = _quantity(config.kubernetes.shm_size)
    problems = []
    for name, service in graph(documents)["spec"]["services"].items():
        if service["componentType"] != "worker":
            continue
        shm = service.get("sharedMemory", {}).get("size")
        if shm is None:
            limit = service.get("resources", {}).get("limits", {}).get("memory")
            if operator_features(config.dynamo.version).shared_memory or limit is None:
                problems.append(f"{name}: no shared memory size")
                continue
            shm = _quantity(limit) / 2
        if _quantity(shm) < want:
            problems.append(f"{name}: /dev/shm {shm} < {config.kubernetes.shm_size}")
    return problems


def resource_problems(documents: list[dict[str, Any]], config: PipelineConfig, plan: Plan) -> list[str]:
    """Workers whose GPU limit is not the plan's GPUs per pod, or that request no CPU and memory."""
    problems = []
    services = graph(documents)["spec"]["services"]
    names = {"agg": "TRTLLMWorker", "prefill": "TRTLLMPrefillWorker", "decode": "TRTLLMDecodeWorker"}
    for role in plan.roles:
        service = services.get(names[role.role], {})
        resources = service.get("resources", {})
        nodes = service.get("multinode", {}).get("nodeCount", 1)
        if resources.get("limits", {}).get("gpu") != str(role.gpus_per_worker // nodes):
            problems.append(
                f"{role.role}: gpu limit {resources.get('limits')} for {role.gpus_per_worker} GPUs"
            )
        gpus = role.gpus_per_worker // nodes
        cpu, memory = (resources.get("requests", {}).get(k) for k in ("cpu", "memory"))
        if cpu is None or _quantity(cpu) != _quantity(config.kubernetes.cpu_per_gpu) * gpus:
            problems.append(f"{role.role}: cpu request {cpu}")
        if memory is None or _quantity(memory) != _quantity(config.kubernetes.memory_per_gpu) * gpus:
            problems.append(f"{role.role}: memory request {memory}")
        if service.get("replicas") != role.workers * plan.replicas:
            problems.append(f"{role.role}: replicas {service.get('replicas')}")
    frontend = services["Frontend"].get("resources", {}).get("requests", {})
    if frontend != {"cpu": config.kubernetes.frontend_cpu, "memory": config.kubernetes.frontend_memory}:
        problems.append(f"frontend requests {frontend}")
    return problems


def old_manifest(config: PipelineConfig, plan: Plan) -> list[dict[str, Any]]:
    """The shape generate wrote before this module (Generator._k8s/_k8s_worker): no volume for the model
    path, an unconditional hf-token-secret, no shared memory, only a GPU limit."""
    services: dict[str, Any] = {
        "Frontend": {"componentType": "frontend", "replicas": 1, "extraPodSpec": {"mainContainer": {}}}
    }
    names = {"agg": "TRTLLMWorker", "prefill": "TRTLLMPrefillWorker", "decode": "TRTLLMDecodeWorker"}
    for role in plan.roles:
        services[names[role.role]] = {
            "componentType": "worker",
            "envFromSecret": "hf-token-secret",
            "replicas": role.workers * plan.replicas,
            "resources": {"limits": {"gpu": str(role.gpus_per_worker)}},
            "extraPodSpec": {
                "volumes": [{"name": "engine-configs", "configMap": {"name": "x"}}],
                "mainContainer": {
                    "volumeMounts": [{"name": "engine-configs", "mountPath": "/workspace/engine_configs"}],
                    "args": ["--model", str(config.model.path)],
                },
            },
        }
    return [{"kind": "DynamoGraphDeployment", "spec": {"services": services}}]


@pytest.mark.parametrize("release", ["0.4.0", "0.5.1", "0.6.0", "0.7.1", "1.0.0", "1.4.0", RELEASES[-1]])
def test_old_defects_are_gone(release: str) -> None:
    for name, config, plan, documents in rendered(release):
        refs = secret_refs(documents)
        assert refs == ([SECRET] * len(refs) if config.kubernetes.hf_token_secret else []), (name, refs)
        if config.kubernetes.hf_token_secret:
            workers = [
                s for s in graph(documents)["spec"]["services"].values() if s["componentType"] == "worker"
            ]
            assert all(s.get("envFromSecret") == SECRET for s in workers), name
        assert not model_mount_problems(documents, config), (name, model_mount_problems(documents, config))
        assert not shm_problems(documents, config), (name, shm_problems(documents, config))
        assert not resource_problems(documents, config, plan), (
            name,
            resource_problems(documents, config, plan),
        )


def test_the_defect_checks_catch_the_old_manifest() -> None:
    config, plan = scenario("1.4.0", "disagg-pvc")
    old = old_manifest(config, plan)
    assert secret_refs(old) and not config.kubernetes.hf_token_secret  # a Secret nobody configured
    assert len(model_mount_problems(old, config)) == 3  # both workers and the frontend
    assert len(shm_problems(old, config)) == 2
    assert resource_problems(old, config, plan)


def test_documents_come_in_apply_order() -> None:
    config, plan = scenario("1.4.0", "disagg-pvc-create-token")
    kinds = [d["kind"] for d in manifest(config, plan)]
    assert kinds == ["PersistentVolumeClaim", "Job", "ConfigMap", "DynamoGraphDeployment"]
    for name in ("disagg-pvc", "disagg-hostPath-token"):
        config, plan = scenario("1.4.0", name)
        assert [d["kind"] for d in manifest(config, plan)] == ["ConfigMap", "DynamoGraphDeployment"], name


def test_names_fit_the_operator_children() -> None:
    for run in ("golden", "My_Run.v2", "9lives", "x" * 100, "a" * 100 + "b"):
        name = resource_name(run)
        assert (
            re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name + "-trtllmprefillworker") <= 63
        ), run
    assert resource_name("x" * 100) != resource_name("x" * 99)


def test_hostpath_needs_an_absolute_node_path() -> None:
    config = pipeline([8], kubernetes={"model_source": "hostPath"}, model={"path": "~/models/q"})
    with pytest.raises(InputError, match="host_path"):
        manifest(config, agg_plan())


# --------------------------------------------------------------------------- the download Job, for real


class _TreeHub(HubServer):
    """The test hub server plus the file listing `hf download` asks for (GET /api/models/<repo>/tree/<rev>,
    what huggingface_hub's list_repo_tree reads; tests/hubserver.py serves what checkpoint.py uses)."""

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        base: Any = super()._handler()
        hub = self

        class Handler(base):  # type: ignore[misc,valid-type]
            def _route(self) -> None:
                parts = [p for p in self.path.split("?")[0].split("/") if p]
                if len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] == "tree":
                    repo = self._repo(parts[2], parts[3])
                    if repo is not None:
                        self._tree(repo)
                    return
                super()._route()

            def _tree(self, repo: str) -> None:
                entries = []
                for path in sorted((hub.root / repo).rglob("*")):
                    if path.is_file():
                        data = path.read_bytes()
                        entry: dict[str, Any] = {
                            "type": "file",
                            "path": str(path.relative_to(hub.root / repo)),
                        }
                        entry |= {"size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                        if len(data) > 1024:  # tests/hubserver.py's LFS threshold
                            entry["lfs"] = {
                                "oid": hashlib.sha256(data).hexdigest(),
                                "size": len(data),
                                "pointerSize": 134,
                            }
                        entries.append(entry)
                body = json.dumps(entries).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = _route
            do_HEAD = _route

        return Handler


def test_download_job_script_fetches_the_checkpoint(tmp_path: Path) -> None:
    """The Job's own script, with the venv's huggingface_hub in place of its pip install, against a local hub
    server: it downloads only the allowed files into the directory the workers read, then marks it done."""
    hf = shutil.which("hf", path=str(Path(os.sys.executable).parent))
    require(hf is not None, "the hf command of huggingface_hub is missing from the test environment")
    root = tmp_path / "hub"
    repo = root / "Qwen" / "Qwen3-32B-FP8"
    repo.mkdir(parents=True)
    (repo / "config.json").write_text('{"model_type": "qwen3"}')
    (repo / "model.safetensors").write_bytes(b"\0" * 4096)
    (repo / "README.md").write_text("not wanted")
    mount = tmp_path / "pvc"
    with _TreeHub(root, token="secret-token", gated=("Qwen/Qwen3-32B-FP8",)) as hub:
        config = pipeline(
            [8],
            kubernetes={"create_pvc": True, "mount_path": str(mount), "hf_token_secret": SECRET},
            checkpoint={"endpoint": hub.url, "allow_patterns": ["*.json", "*.safetensors"]},
        )
        (job,) = [d for d in manifest(config, agg_plan()) if d["kind"] == "Job"]
        container = job["spec"]["template"]["spec"]["containers"][0]
        script = container["args"][0]
        assert re.search(r"^pip install --no-cache-dir huggingface_hub==[0-9.]+$", script, re.M)
        script = re.sub(r"^pip install .*$", "true", script, flags=re.M)
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env == {"HF_ENDPOINT": hub.url, "HF_TOKEN": None}  # the token comes from the Secret
        # What the Secret would hold; the hub answers 401 without it.
        run_env = {"PATH": f"{Path(hf).parent}:/usr/bin:/bin", "HOME": str(tmp_path), "HF_ENDPOINT": hub.url}
        run_env["HF_HUB_DISABLE_TELEMETRY"] = "1"
        denied = subprocess.run(
            [*container["command"], script], env=run_env, capture_output=True, text=True, timeout=120
        )
        assert denied.returncode != 0 and not (mount / "Qwen--Qwen3-32B-FP8" / DOWNLOAD_DONE).exists()
        assert "Access denied" in denied.stderr or "401" in denied.stderr, denied.stderr
        done = subprocess.run(
            [*container["command"], script],
            env={**run_env, "HF_TOKEN": "secret-token"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    target = mount / "Qwen--Qwen3-32B-FP8"
    assert (target / "config.json").exists() and (target / "model.safetensors").stat().st_size == 4096
    assert not (target / "README.md").exists() and (target / DOWNLOAD_DONE).exists()
    # The workers' init container waits for exactly that file.
    dgd = graph(manifest(config, agg_plan()))
    (wait,) = dgd["spec"]["services"]["TRTLLMWorker"]["extraPodSpec"]["initContainers"]
    assert str(target / DOWNLOAD_DONE) in wait["command"][-1]
    # And the worker reads the same directory.
    assert str(target) in dgd["spec"]["services"]["TRTLLMWorker"]["extraPodSpec"]["mainContainer"]["args"]


# ------------------------------------------------------------------------------------------- kubectl


class _Discovery:
    """A loopback stand-in for an API server's discovery: enough for `kubectl apply --dry-run=client` to map
    each document's kind to its resource (core v1, batch/v1, and the DGD from the vendored CRD's names) and
    to find no existing object. It has no OpenAPI: kubectl's schema validation needs the server's protobuf
    OpenAPI v2, which no offline source provides, so kubectl runs with --validate=false."""

    def __init__(self, crd_file: str) -> None:
        names = crd(crd_file)["spec"]["names"]
        group = crd(crd_file)["spec"]["group"]
        versions = [v["name"] for v in crd(crd_file)["spec"]["versions"] if v.get("served")]

        def resource(plural: str, kind: str) -> dict[str, Any]:
            return {
                "name": plural,
                "singularName": kind.lower(),
                "namespaced": True,
                "kind": kind,
                "verbs": ["get", "create", "patch"],
            }

        def group_entry(name: str, vs: list[str]) -> dict[str, Any]:
            gvs = [{"groupVersion": f"{name}/{v}", "version": v} for v in vs]
            return {"name": name, "versions": gvs, "preferredVersion": gvs[0]}

        self.documents: dict[str, Any] = {
            "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
            "/apis": {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [group_entry("batch", ["v1"]), group_entry(group, versions)],
            },
            "/api/v1": {
                "kind": "APIResourceList",
                "groupVersion": "v1",
                "resources": [
                    resource("configmaps", "ConfigMap"),
                    resource("persistentvolumeclaims", "PersistentVolumeClaim"),
                ],
            },
            "/apis/batch/v1": {
                "kind": "APIResourceList",
                "groupVersion": "batch/v1",
                "resources": [resource("jobs", "Job")],
            },
        }
        for v in versions:
            self.documents[f"/apis/{group}/{v}"] = {
                "kind": "APIResourceList",
                "groupVersion": f"{group}/{v}",
                "resources": [resource(names["plural"], names["kind"])],
            }
        self.documents["/version"] = {"major": "1", "minor": "32", "gitVersion": "v1.32.0"}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        documents = self.documents

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                body = documents.get(
                    path,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "reason": "NotFound",
                        "code": 404,
                    },
                )
                data = json.dumps(body).encode()
                self.send_response(200 if path in documents else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def __enter__(self) -> _Discovery:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def kubectl_apply(text: str, tmp_path: Path, crd_file: str) -> subprocess.CompletedProcess[str]:
    kubectl = shutil.which("kubectl")
    assert kubectl
    (tmp_path / "k8s_deploy.yaml").write_text(text)
    with _Discovery(crd_file) as stub:
        port = stub.server.server_address[1]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "stub", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "contexts": [{"name": "stub", "context": {"cluster": "stub", "namespace": "default"}}],
            "current-context": "stub",
        }
        (tmp_path / "kubeconfig").write_text(json.dumps(config))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            "KUBECONFIG": str(tmp_path / "kubeconfig"),
        }
        argv = [
            kubectl,
            "apply",
            "--dry-run=client",
            "--validate=false",
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
        return subprocess.run(
            [*argv, "-o", "json", "-f", str(tmp_path / "k8s_deploy.yaml")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )


def manifest_text(config: PipelineConfig, plan: Plan) -> str:
    """k8s_deploy.yaml as generate writes it: the template around the documents."""
    from automation.stages.generate import _environment

    return (
        _environment()
        .get_template("k8s/k8s_deploy.yaml.j2")
        .render(**template_context(config, manifest(config, plan)))
    )


@pytest.mark.parametrize("release", ["0.5.1", RELEASES[-1]])
@pytest.mark.parametrize("name", ["agg-pvc", "disagg-pvc-create-token", "disagg-hostPath-token", "multinode"])
def test_kubectl_client_dry_run(release: str, name: str, tmp_path: Path) -> None:
    """kubectl reads the written file and maps every document to a resource the cluster would have; its
    output objects are ours (kubectl adds only its last-applied annotation and the default namespace)."""
    require(shutil.which("kubectl") is not None, "kubectl is missing (the machine image ships it)")
    config, plan = scenario(release, name)
    text = manifest_text(config, plan)
    files, _ = schema_files(release)
    result = kubectl_apply(text, tmp_path, files[0])
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    objects = out["items"] if out.get("kind") == "List" else [out]
    ours = [d for d in yaml.safe_load_all(text) if d]
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        (d["kind"], d["metadata"]["name"]) for d in ours
    ]
    for got, want in zip(objects, ours, strict=True):
        got["metadata"].pop("annotations", {}).pop("kubectl.kubernetes.io/last-applied-configuration")
        got["metadata"]["annotations"] = want["metadata"].get("annotations")
        if not got["metadata"]["annotations"]:
            got["metadata"].pop("annotations")
        assert got["metadata"].pop("namespace") == (config.kubernetes.namespace or "default")
        want = {**want, "metadata": {k: v for k, v in want["metadata"].items() if k != "namespace"}}
        assert got == want


def test_kubectl_refuses_what_it_cannot_map(tmp_path: Path) -> None:
    """The kubectl check can fail: a kind the cluster does not serve, a document without a name."""
    require(shutil.which("kubectl") is not None, "kubectl is missing (the machine image ships it)")
    config, plan = scenario(RELEASES[-1], "agg-pvc")
    text = manifest_text(config, plan)
    files, _ = schema_files(RELEASES[-1])
    wrong_kind = kubectl_apply(
        text.replace("kind: DynamoGraphDeployment", "kind: DynamoGraph"), tmp_path, files[0]
    )
    assert wrong_kind.returncode != 0 and "DynamoGraph" in wrong_kind.stderr
    nameless = kubectl_apply(text.replace("  name: golden-engine-configs\n", ""), tmp_path, files[0])
    assert nameless.returncode != 0 and "name" in nameless.stderr


def test_header_names_what_must_exist() -> None:
    config, plan = scenario(RELEASES[-1], "disagg-pvc-token")
    header = [line for line in manifest_text(config, plan).splitlines() if line.startswith("#")]
    text = "\n".join(header)
    assert f"Secret {SECRET}" in text and "PersistentVolumeClaim model-cache exists" in text
    assert all(len(line) <= 120 or line.startswith("#   - ") for line in header)
    config, plan = scenario(RELEASES[-1], "agg-pvc")
    assert "No Secret" in manifest_text(config, plan)


# ------------------------------------------------------------------------------ through generate


def test_generate_writes_the_checked_manifest() -> None:
    """generate's k8s_deploy.yaml is this module's manifest (once Generator calls it): it passes the CRD
    check with no Secret, a mounted checkpoint, shared memory and per-role resources."""
    import inspect

    from automation.stages import generate
    from automation.stages.generate import render_files

    require(
        "k8s_manifest" in inspect.getsource(generate), "generate does not call automation.k8s_manifest yet"
    )
    for release in (RELEASES[0], "0.5.1", "0.6.0", RELEASES[-1]):
        for make_plan in (lambda: agg_plan(tp=2, replicas=2), lambda: disagg_plan(replicas=2)):
            config, plan = pipeline([8, 8], dynamo=release), make_plan()
            documents = [
                d for d in yaml.safe_load_all(render_files(config, plan)["k8s_deploy.yaml"].decode()) if d
            ]
            files, _ = schema_files(release)
            for file in files:
                assert not dgd_errors(graph(documents), file), (
                    release,
                    file,
                    dgd_errors(graph(documents), file)[:5],
                )
            assert not secret_refs(documents)
            assert not model_mount_problems(documents, config)
            assert not shm_problems(documents, config)
            assert not resource_problems(documents, config, plan)
