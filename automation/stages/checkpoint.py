"""The checkpoint stage: the model's files where every node reads them (model.path)."""

from __future__ import annotations

import fnmatch
import os
import shlex
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automation.config import Node, PipelineConfig
from automation.console import ProgressTask, StageDisplay
from automation.contracts import CheckpointOutputs, NodeInventory, recorded
from automation.errors import AutodeployError, InputError, StageError
from automation.redact import hub_token
from automation.remote import Host, LocalHost, host_for, on_hosts
from automation.stage import Check, Stage, StageContext
from automation.state import StageRecord

# Download bookkeeping that huggingface_hub keeps inside local_dir; not part of the checkpoint.
_HUB_METADATA = ".cache/huggingface"


@dataclass(frozen=True)
class HubFile:
    name: str
    size: int
    sha256: str | None  # LFS files only


@dataclass(frozen=True)
class Manifest:
    """What the hub says the checkpoint is, at one commit."""

    repo: str
    commit: str
    files: tuple[HubFile, ...]

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)


def hub_manifest(config: PipelineConfig, token: str | None) -> Manifest:
    """The file list (sizes, LFS sha256) of model.hf_id at model.revision, resolved to a commit.

    Raises:
        InputError: the repository or revision does not exist, or needs a token the run lacks.
        StageError: the hub cannot be reached.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    repo, revision = config.model.hf_id, config.model.revision
    endpoint = config.checkpoint.endpoint or "https://huggingface.co"
    token_hint = (
        f"export {config.checkpoint.token_env} (or set checkpoint.token_file) with a token that may read it"
    )
    try:
        info = HfApi(endpoint=endpoint, token=token or False).model_info(
            repo, revision=revision, files_metadata=True
        )
    except GatedRepoError:
        raise InputError(f"model.hf_id: {repo} is gated on {endpoint}", hint=token_hint) from None
    except RevisionNotFoundError:
        raise InputError(f"model.revision: {repo} has no revision '{revision}' on {endpoint}") from None
    except RepositoryNotFoundError:
        raise InputError(
            f"model.hf_id: {endpoint} has no repository {repo} that this run may read",
            hint=f"check the id; if it is private, {token_hint}",
        ) from None
    except Exception as exc:  # the network boundary: connection refused, TLS, proxy, 5xx, ...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StageError(
            f"cannot read {repo} from the hub at {endpoint}: {type(exc).__name__}: {reason}",
            hint="check checkpoint.endpoint and the network, or copy the files and use checkpoint.source: present",
        ) from None
    patterns = config.checkpoint.allow_patterns
    files = tuple(
        HubFile(s.rfilename, int(s.size or 0), s.lfs.sha256 if s.lfs else None)
        for s in info.siblings or []
        if not patterns or any(fnmatch.fnmatch(s.rfilename, p) for p in patterns)
    )
    return Manifest(repo, str(info.sha), files)


def check_files(host: Host, path: str, manifest: Manifest, hashes: bool) -> dict[str, str]:
    """What is wrong with the copy at path on host, by file: missing, wrong size, (with hashes) wrong sha256."""
    listing = host.run(
        f"cd {shlex.quote(path)} 2>/dev/null && find . -type f -not -path './{_HUB_METADATA}/*' -printf '%P\\t%s\\n'",
        check=False,
    ).stdout
    sizes = dict(line.split("\t") for line in listing.splitlines() if "\t" in line)
    problems: dict[str, str] = {}
    for f in manifest.files:
        if f.name not in sizes:
            problems[f.name] = f"{f.name} is missing"
        elif int(sizes[f.name]) != f.size:
            problems[f.name] = f"{f.name} has {sizes[f.name]} bytes, not {f.size}"
    lfs = [f for f in manifest.files if f.sha256 and f.name not in problems]
    if hashes and lfs:
        names = " ".join(shlex.quote(f.name) for f in lfs)
        sums = host.run(f"cd {shlex.quote(path)} && sha256sum {names}", timeout=3600).stdout
        got = {line.split(maxsplit=1)[1].strip(): line.split()[0] for line in sums.splitlines()}
        problems.update(
            {f.name: f"{f.name} has the wrong sha256" for f in lfs if got.get(f.name) != f.sha256}
        )
    return problems


@dataclass(frozen=True)
class NodeCopy:
    """One node's part of a copy: where the checkpoint goes there, and which of its files to send."""

    host: Host
    path: str  # resolved (no ~)
    files: tuple[str, ...]  # relative to the source directory


def check_on_nodes(hosts: Sequence[Host], paths: Sequence[str], manifest: Manifest) -> list[dict[str, str]]:
    """check_files (sizes and sha256) on every node at once, a thread per node; results in node order.

    Every check runs to its end; then the first failure (a node that cannot be reached) is raised.
    """
    where = dict(zip((id(h) for h in hosts), paths, strict=True))
    return on_hosts(list(hosts), lambda host: check_files(host, where[id(host)], manifest, True))


def copy_to_nodes(source: Path, copies: Sequence[NodeCopy], display: StageDisplay) -> dict[str, int]:
    """Send every node its files from `source`, all nodes at once; returns the bytes sent, by node.

    A thread per node, each on its own Host (its own connection), with a progress bar per node in MB.
    Every copy runs to its end; then the failures are raised (one node's, or a summary naming all).
    """
    sent = {copy.host.name: 0 for copy in copies}
    failures: dict[str, BaseException] = {}

    def send(copy: NodeCopy, task: ProgressTask) -> None:
        name = copy.host.name

        def advance(count: int) -> None:
            sent[name] += count
            task.update(completed=round(sent[name] / 1e6, 1))

        try:
            copy.host.put(source, copy.path, files=copy.files, progress=advance)
        except BaseException as exc:  # handed to the caller's thread below
            failures[name] = exc

    threads = []
    for copy in copies:  # the bars are made here, so they show in the nodes' order
        total = sum((source / file).stat().st_size for file in copy.files)
        task = display.progress(f"copying to {copy.host.name} (MB)", total=round(total / 1e6, 1))
        threads.append(
            threading.Thread(target=send, args=(copy, task), name=f"copy-{copy.host.name}", daemon=True)
        )
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    errors = [failures[c.host.name] for c in copies if c.host.name in failures]
    if not errors:
        return sent
    first = errors[0]
    if len(errors) == 1 or not all(isinstance(e, AutodeployError) for e in errors):
        raise first
    assert isinstance(first, AutodeployError)
    names = [c.host.name for c in copies if c.host.name in failures]
    raise StageError(
        f"copying the checkpoint failed on {', '.join(names)}; {names[0]}: {first.message}",
        hint=first.hint,
        nodes=names,
    )


class Checkpoint(Stage):
    """The checkpoint on every node (or once, on shared storage).

    source hub: the file list is read from the hub at model.revision (resolved to a commit); a node
    whose copy already has every file at the right size and sha256 is left alone; otherwise the files
    are downloaded with huggingface_hub (into model.path when node 0 is this machine, else into a
    staging directory here) and each node is sent the files it lacks (all nodes at once), then checked.
    source present: verifies a copy that is already there.
    Done: every node's copy checked; file count and bytes recorded. Verify: a cheap count-and-size check.
    """

    name = "checkpoint"
    summary = "download and verify the checkpoint on the nodes"
    needs = ()
    Outputs = CheckpointOutputs
    revision = 2

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

    def run(self, ctx: StageContext) -> CheckpointOutputs:
        config = ctx.config
        nodes = config.cluster.nodes[:1] if config.checkpoint.shared_filesystem else config.cluster.nodes
        hub: dict[str, Any] = {}
        if config.checkpoint.source == "hub":
            hub = self._from_hub(ctx, nodes)
        inventory: dict[str, NodeInventory] = {}
        for node in nodes:
            ctx.display.status(f"checking {node.name}")
            inventory[node.name or ""] = NodeInventory(**self._inventory(config, node))
        return CheckpointOutputs(
            path=config.model.path, source=config.checkpoint.source, nodes=inventory, **hub
        )

    def _from_hub(self, ctx: StageContext, nodes: list[Node]) -> dict[str, Any]:
        config = ctx.config
        if config.checkpoint.hf_transfer and _hf_transfer_installed():
            # huggingface_hub reads this when it is first imported, which is just below.
            os.environ.setdefault("HF_HUB_ENABLE_HF_TRANSFER", "1")
        token = hub_token(config)
        ctx.display.status("reading the file list from the hub")
        manifest = hub_manifest(config, token)
        ctx.log.info(
            "%s at %s: %d files, %d bytes",
            manifest.repo,
            manifest.commit,
            len(manifest.files),
            manifest.bytes,
        )
        hosts = [host_for(config, node) for node in nodes]
        copied: dict[str, int] = {}
        try:
            paths = [host.path(config.model.path or "") for host in hosts]
            # Checked once per node (sizes, then sha256 of LFS files): hashing a big checkpoint is slow,
            # so every node hashes its own copy at the same time.
            ctx.display.status(f"checking the files on {', '.join(h.name for h in hosts)}")
            problems = check_on_nodes(hosts, paths, manifest)
            missing = [i for i, found in enumerate(problems) if found]
            if missing:
                local = next((i for i in missing if isinstance(hosts[i], LocalHost)), None)
                # Download straight into model.path when this machine is one of the nodes.
                source = Path(paths[local]) if local is not None else _staging_dir(manifest)
                stale = (
                    problems[local]
                    if local is not None
                    else check_files(LocalHost("controller", "127.0.0.1"), str(source), manifest, True)
                )
                self._download(ctx, manifest, source, token, sorted(stale))
                # Each node is sent only what its check found missing or wrong, all nodes at once.
                copies = [
                    NodeCopy(hosts[i], paths[i], tuple(sorted(problems[i])))
                    for i in missing
                    if not (isinstance(hosts[i], LocalHost) and paths[i] == str(source))
                ]
                if copies:
                    ctx.display.status(f"copying to {', '.join(c.host.name for c in copies)}")
                    copied = copy_to_nodes(source, copies, ctx.display)
                after = check_on_nodes([hosts[i] for i in missing], [paths[i] for i in missing], manifest)
                for i, left in zip(missing, after, strict=True):
                    if left:
                        first = next(iter(left.values()))
                        raise StageError(
                            f"the checkpoint on {hosts[i].name} at {paths[i]} is not what the hub has: {first}",
                            hint="remove the directory and rerun, or check the disk",
                            host=hosts[i].name,
                        )
            ctx.log.info("up to date already: %s", [h.name for i, h in enumerate(hosts) if i not in missing])
        finally:
            for host in hosts:
                host.close()
        return {
            "repo": manifest.repo,
            "commit": manifest.commit,
            "downloaded_to": [hosts[i].name for i in missing],
            "copied_bytes": copied,
        }

    def _download(
        self, ctx: StageContext, manifest: Manifest, target: Path, token: str | None, names: list[str]
    ) -> None:
        """Fetch the named files into target; force, since a local copy there is known to be wrong."""
        from huggingface_hub import hf_hub_download

        config = ctx.config
        wanted = [f for f in manifest.files if f.name in set(names)]
        progress = ctx.display.progress("downloading (MB)", total=round(sum(f.size for f in wanted) / 1e6, 1))
        target.mkdir(parents=True, exist_ok=True)
        done = 0
        for file in wanted:
            hf_hub_download(
                manifest.repo,
                file.name,
                revision=manifest.commit,
                local_dir=target,
                endpoint=config.checkpoint.endpoint,
                token=token or False,
                force_download=True,
            )
            done += file.size
            progress.update(completed=round(done / 1e6, 1))
        ctx.log.info("downloaded %d of %d files into %s", len(wanted), len(manifest.files), target)

    def verify(self, ctx: StageContext, record: StageRecord) -> Check:
        config = ctx.config
        outputs = recorded(CheckpointOutputs, record.outputs)
        if outputs is None:
            return Check.stale("nothing recorded")
        for node in config.cluster.nodes:
            known = outputs.nodes.get(node.name or "")
            if known is None:
                continue
            expected = known.model_dump()
            try:
                found = self._inventory(config, node)
            except StageError as exc:
                return Check.stale(exc.message)
            if found != expected:
                return Check.stale(f"the files at {config.model.path} on {node.name} changed")
        return Check.still_valid(f"checkpoint present at {config.model.path}")

    def describe(self, outputs: CheckpointOutputs) -> str:
        counts = {name: info.files for name, info in outputs.nodes.items()}
        origin = f"{outputs.repo}@{outputs.commit[:8]} → " if outputs.commit else ""
        return f"{origin}{outputs.path} ({', '.join(f'{n}: {c} files' for n, c in counts.items())})"

    def _inventory(self, config: PipelineConfig, node: Any) -> dict[str, int]:
        host = host_for(config, node)
        try:
            path = host.path(config.model.path or "")
            listing = host.run(
                f"test -f {shlex.quote(path)}/config.json && find {shlex.quote(path)}/ -type f "
                f"-not -path '*/{_HUB_METADATA}/*' -printf '%s\\n'",
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


def _staging_dir(manifest: Manifest) -> Path:
    """Where the controller keeps a checkpoint it copies to nodes (not in the run directory: it is big)."""
    base = Path(os.environ.get("AUTODEPLOY_STAGING", "~/.cache/autodeploy/checkpoints")).expanduser()
    return base / f"{manifest.repo.replace('/', '--')}--{manifest.commit[:12]}"


def _hf_transfer_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("hf_transfer") is not None
