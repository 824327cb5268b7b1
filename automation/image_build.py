"""Build the Dynamo/TRT-LLM image on node 0 from a Dynamo source tree, with that release's own build command."""

from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from automation.config import PipelineConfig
from automation.errors import InputError, RemoteCommandError, StageError
from automation.remote import Host, LocalHost
from automation.versions import in_range, versions_data

# A build prints a line every few seconds at most; one that says nothing for this long is stuck.
BUILD_SILENCE_S = 3600.0
# The lines of a failed step shown in its error (the full output is in logs/build.log).
TAIL_LINES = 15
_COMMIT = re.compile(r"[0-9a-f]{7,40}")


@dataclass(frozen=True)
class BuildRecipe:
    """The commands that build the image for one Dynamo release (versions.yaml image_build)."""

    family: str
    needs: str  # a file every checkout of that family has (container/build.sh or container/render.py)
    steps: tuple[tuple[str, ...], ...]

    def commands(self) -> list[str]:
        return [shlex.join(step) for step in self.steps]


def build_recipe(
    dynamo_version: str,
    trtllm_version: str,
    tag: str,
    build_args: Sequence[str],
    has: Callable[[str, str], bool] = lambda file, text: True,
) -> BuildRecipe:
    """The build steps of a Dynamo release with its placeholders filled.

    `has(file, text)`: whether the checkout's file contains the text (for rows with `when`).

    Raises:
        InputError: no image_build row of versions.yaml covers the release.
    """
    for row in versions_data()["image_build"]:
        if not in_range(dynamo_version, row) or ("when" in row and not has(*row["when"])):
            continue
        steps = []
        for step in row["steps"]:
            words: list[str] = []
            for word in step:
                if word == "{build_args}":
                    words.extend(build_args)
                else:
                    words.append(str(word).format(dynamo=dynamo_version, trtllm=trtllm_version, tag=tag))
            steps.append(tuple(words))
        return BuildRecipe(family=str(row["family"]), needs=str(row["needs"]), steps=tuple(steps))
    raise InputError(
        f"dynamo.version {dynamo_version}: no build command is known for it",
        hint="add an image_build row for it to versions.yaml, or build the image yourself (image_source: present)",
    )


def file_has(host: Host, tree: str) -> Callable[[str, str], bool]:
    """has(file, text) for build_recipe, asked of the checkout on its node."""
    return lambda file, text: (
        host.run(
            f"grep -qF -- {shlex.quote(text)} {shlex.quote(tree + '/' + file)}", check=False, timeout=30
        ).ok
    )


def source_ref(config: PipelineConfig) -> str:
    """The git ref to build: dynamo.source.ref, else the release's tag (v<dynamo.version>)."""
    assert config.dynamo.source is not None
    return config.dynamo.source.ref or f"v{config.dynamo.version}"


def checkout(config: PipelineConfig, host: Host, remote_dir: str, status: Callable[[str], None]) -> str:
    """The Dynamo source tree on node 0, ready to build: its path there.

    `source.path` on this machine is used where it is when node 0 is this machine, else copied to
    <run dir>/dynamo-src on node 0. `source.git` is cloned once on node 0 into <run dir>/dynamo-src-<ref>
    (a later run reuses the clone when it is at that ref).

    Raises:
        StageError: the clone failed, or the tree lacks the release family's build script.
    """
    source = config.dynamo.source
    assert source is not None
    if source.path is not None:
        local = Path(source.path).expanduser()
        if not local.is_dir():
            raise InputError(
                f"dynamo.source.path: {local} is not a directory", hint="give the path of a Dynamo checkout"
            )
        if isinstance(host, LocalHost):
            return str(local)
        target = f"{remote_dir}/dynamo-src"
        status(f"copying {local} to {host.name}")
        host.put(local, target)
        return host.path(target)
    assert source.git is not None
    ref = source_ref(config)
    target = host.path(f"{remote_dir}/dynamo-src-{re.sub(r'[^A-Za-z0-9._-]', '_', ref)}")
    quoted, url = shlex.quote(target), shlex.quote(source.git)
    # Reused only when the clone's HEAD is the commit the ref names (both asked of the clone itself).
    at_ref = host.run(
        f"head=$(git -C {quoted} rev-parse HEAD 2>/dev/null) && "
        f'[ -n "$head" ] && [ "$head" = "$(git -C {quoted} rev-parse {shlex.quote(ref + "^{commit}")})" ]',
        check=False,
        timeout=60,
    )
    if at_ref.ok:
        return target
    status(f"cloning {source.git} at {ref} on {host.name}")
    if _COMMIT.fullmatch(ref):  # a commit cannot be cloned by name: the whole history, then check it out
        clone = f"git clone --quiet {url} {quoted} && git -C {quoted} checkout --quiet {shlex.quote(ref)}"
    else:
        clone = f"git clone --quiet --depth 1 --branch {shlex.quote(ref)} {url} {quoted}"
    try:
        host.run(
            f"rm -rf {quoted} && mkdir -p {shlex.quote(str(Path(target).parent))} && {clone}", timeout=3600
        )
    except RemoteCommandError as exc:
        raise StageError(
            f"cloning {source.git} at {ref} failed on {host.name}: {exc.tail.splitlines()[-1] if exc.tail else ''}",
            hint="check dynamo.source.git and ref (a tag like v1.6.1, a branch or a commit), and that the node "
            "has git and can reach the repository",
            host=host.name,
        ) from None
    return target


def check_tree(host: Host, tree: str, recipe: BuildRecipe, dynamo_version: str) -> None:
    """The checkout has the build script of the release's family (else the wrong tree or version)."""
    if host.run(f"test -f {shlex.quote(tree + '/' + recipe.needs)}", check=False, timeout=30).ok:
        return
    raise StageError(
        f"{tree} on {host.name} has no {recipe.needs}, which Dynamo {dynamo_version} builds with ({recipe.family})",
        hint="point dynamo.source at a Dynamo checkout of that release, or set dynamo.version to the checkout's",
        host=host.name,
    )


def run_build(
    host: Host, tree: str, recipe: BuildRecipe, log: logging.Logger, status: Callable[[str], None]
) -> None:
    """Run the recipe's steps in the checkout on node 0; every line goes to the stage log as it comes.

    Raises:
        StageError: a step failed: its last lines, the log, and the command to rerun by hand.
    """
    for command in recipe.commands():
        log.info("$ cd %s && %s", tree, command)
        status(command[:80])
        lines: list[str] = []
        stream = host.open_stream(f"cd {shlex.quote(tree)} && {command} 2>&1")
        try:
            pending = b""
            while chunk := stream.read():
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    line = raw.decode(errors="replace").rstrip("\r")
                    log.info("| %s", line)
                    lines.append(line)
                    del lines[:-TAIL_LINES]
                    if line.strip():
                        status(line.strip()[:100])
            if pending:
                lines.append(pending.decode(errors="replace"))
                log.info("| %s", lines[-1])
            ended = stream.wait(timeout=BUILD_SILENCE_S)
        except BaseException:
            stream.kill()
            raise
        if not ended.ok:
            said = "\n".join(lines[-TAIL_LINES:]) or ended.stderr
            last = next((line for line in reversed(lines) if line.strip()), f"exit {ended.exit_code}")
            raise StageError(
                f"building the image failed on {host.name} (exit {ended.exit_code}): {last.strip()[:200]}",
                hint=f"the whole output is in logs/build.log; to run it by hand on {host.name}: "
                f"cd {shlex.quote(tree)} && {command}",
                host=host.name,
                command=command,
                tail=said,
            )
