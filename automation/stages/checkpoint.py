"""The checkpoint stage: the model's files where every node reads them (model.path)."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from automation.config import PipelineConfig
from automation.errors import NotImplementedStageError, StageError
from automation.remote import host_for
from automation.stage import Check, Stage, StageContext
from automation.state import StageRecord


class Checkpoint(Stage):
    """The checkpoint on every node (or once, on shared storage).

    Done: config.json is at model.path on each node and the file list with sizes is recorded.
    Verify: a cheap check that every node still has the recorded number of files and bytes.
    checkpoint.source `present` verifies a copy that is already there; downloading from a hub is not
    implemented yet and says so.
    """

    name = "checkpoint"
    summary = "download and verify the checkpoint on the nodes"
    needs = ()

    def inputs(self, config: PipelineConfig) -> Mapping[str, Any]:
        return {
            "model": {
                "hf_id": config.model.hf_id,
                "revision": config.model.revision,
                "path": config.model.path,
            },
            "checkpoint": config.checkpoint.model_dump(mode="json"),
            "nodes": [node.host for node in config.cluster.nodes],
        }

    def run(self, ctx: StageContext) -> dict[str, Any]:
        config = ctx.config
        if config.checkpoint.source == "hub":
            raise NotImplementedStageError(
                "downloading the checkpoint from a hub is not implemented yet",
                hint=f"put the files at {config.model.path} on every node and set checkpoint.source: present",
            )
        nodes = config.cluster.nodes[:1] if config.checkpoint.shared_filesystem else config.cluster.nodes
        inventory: dict[str, dict[str, int]] = {}
        for node in nodes:
            ctx.display.status(f"checking {node.name}")
            inventory[node.name or ""] = self._inventory(config, node)
        return {"path": config.model.path, "nodes": inventory}

    def verify(self, ctx: StageContext, record: StageRecord) -> Check:
        config = ctx.config
        for node in config.cluster.nodes:
            expected = record.outputs.get("nodes", {}).get(node.name)
            if expected is None:
                continue
            try:
                found = self._inventory(config, node)
            except StageError as exc:
                return Check.stale(exc.message)
            if found != expected:
                return Check.stale(f"the files at {config.model.path} on {node.name} changed")
        return Check.still_valid(f"checkpoint present at {config.model.path}")

    def describe(self, outputs: Mapping[str, Any]) -> str:
        counts = {name: info["files"] for name, info in outputs.get("nodes", {}).items()}
        return f"{outputs.get('path')} ({', '.join(f'{n}: {c} files' for n, c in counts.items())})"

    def _inventory(self, config: PipelineConfig, node: Any) -> dict[str, int]:
        host = host_for(config, node)
        try:
            path = host.expand(config.model.path or "")
            listing = host.run(
                f"test -f {shlex.quote(path)}/config.json && find {shlex.quote(path)}/ -type f -printf '%s\\n'",
                check=False,
            )
        finally:
            host.close()
        if not listing.ok:
            raise StageError(
                f"no checkpoint at {path} on {node.name} (config.json is missing)",
                hint="copy the model there, or fix model.path",
                host=node.name,
            )
        sizes = [int(size) for size in listing.stdout.split()]
        return {"files": len(sizes), "bytes": sum(sizes)}
