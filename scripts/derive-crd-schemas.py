#!/usr/bin/env python3
"""Derive the DynamoGraphDeployment schema facts the manifest tests need from full upstream CRD files.

The Dynamo operator's CRDs (index: tests/data/crds/index.yaml) are large upstream files that stay out of
this repository; this script keeps, per CRD, only what a check of autodeploy's manifests reads: the
`spec.versions` entries with their openAPIV3Schema pruned to the nodes the generated manifests reach. At
every node kept, all of its property *names* stay (so an unknown field is still an unknown field), its
type, required list, formats, enums, limits and CEL rules stay; a property the manifests never write is
kept as an empty schema, descriptions go. The output is deterministic.

Usage:
    .venv/bin/python scripts/derive-crd-schemas.py [--crds ~/.cache/autodeploy/crds] [--out tests/data/crds]
(the full CRDs: the files index.yaml names, from ai-dynamo/dynamo at the commits it records).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
# Keys of a schema node that describe the node itself (kept as they are); the structural ones are pruned.
_STRUCTURAL = {"properties", "items", "additionalProperties", "anyOf"}
_DROPPED = {"description"}


def prune(schema: dict[str, Any], instances: list[Any]) -> dict[str, Any]:
    """schema cut down to what `instances` (values that node validates) reach."""
    out = {k: v for k, v in schema.items() if k not in _STRUCTURAL and k not in _DROPPED}
    dicts = [i for i in instances if isinstance(i, dict)]
    lists = [i for i in instances if isinstance(i, list)]
    if "properties" in schema:
        out["properties"] = {
            name: prune(child, [d[name] for d in dicts if name in d]) if any(name in d for d in dicts) else {}
            for name, child in sorted(schema["properties"].items())
        }
    if isinstance(schema.get("additionalProperties"), dict):
        known = set(schema.get("properties", {}))
        values = [v for d in dicts for k, v in d.items() if k not in known]
        out["additionalProperties"] = prune(schema["additionalProperties"], values)
    elif "additionalProperties" in schema:
        out["additionalProperties"] = schema["additionalProperties"]
    if "items" in schema:
        out["items"] = prune(schema["items"], [item for items in lists for item in items])
    if "anyOf" in schema:
        out["anyOf"] = [prune(option, instances) for option in schema["anyOf"]]
    return out


def manifests_by_file() -> dict[str, list[dict[str, Any]]]:
    """Every DynamoGraphDeployment the manifest tests render, grouped by the CRD file that checks it."""
    sys.path.insert(0, str(REPO))
    from tests.conformance import test_k8s_manifest as checks

    grouped: dict[str, list[dict[str, Any]]] = {}
    for release in checks.RELEASES:
        files, _ = checks.schema_files(release)
        graphs = [checks.graph(documents) for _, _, _, documents in checks.rendered(release)]
        for file in files:
            grouped.setdefault(file, []).extend(graphs)
    return grouped


def derive(full: dict[str, Any], graphs: list[dict[str, Any]], provenance: str) -> str:
    versions = []
    for version in full["spec"]["versions"]:
        kept = {k: v for k, v in version.items() if k != "schema"}
        schema = version["schema"]["openAPIV3Schema"]
        kept["schema"] = {"openAPIV3Schema": prune(schema, [{**g, "metadata": {}} for g in graphs])}
        versions.append(kept)
    document = {
        "apiVersion": full["apiVersion"],
        "kind": full["kind"],
        "metadata": {"name": full["metadata"]["name"]},
        "spec": {k: v for k, v in full["spec"].items() if k != "versions"} | {"versions": versions},
    }
    body = yaml.safe_dump(document, sort_keys=True, width=120)
    return f"{provenance}\n---\n{body}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crds", type=Path, default=Path.home() / ".cache" / "autodeploy" / "crds")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "crds")
    args = parser.parse_args()
    index = yaml.safe_load((args.out / "index.yaml").read_text())
    for file, graphs in sorted(manifests_by_file().items()):
        source = args.crds / file
        if not source.is_file():
            print(f"missing {source}: fetch it at the commit index.yaml records", file=sys.stderr)
            return 1
        text = source.read_text()
        (full,) = [d for d in yaml.load_all(text, Loader=yaml.CSafeLoader) if d]
        facts = index["files"][file]
        provenance = (
            f"# Derived by scripts/derive-crd-schemas.py from ai-dynamo/dynamo {facts['path']} at commit "
            f"{facts['commit']}\n# (Apache-2.0, NVIDIA): the schema pruned to the nodes autodeploy's manifests "
            "reach; property names, types, limits and CEL rules kept."
        )
        (args.out / file).write_text(derive(full, graphs, provenance))
        print(f"{file}: {len(text) // 1024} KiB -> {(args.out / file).stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
