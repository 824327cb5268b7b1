"""A node's Docker engine, driven by the `docker` CLI on that node through its Host (so SSH settings hold)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from automation.errors import StageError
from automation.remote import Host, Result, Stream

ContainerStatus = Literal["created", "restarting", "running", "removing", "paused", "exited", "dead"]

# Pulling a multi-gigabyte image (the Dynamo/TRT-LLM one) can take long on a slow link.
PULL_TIMEOUT_S = 3600.0


# What the image's Python says it holds: the Dynamo and TensorRT-LLM distributions (each None if not
# installed). The names are the wheels' (ai-dynamo, tensorrt_llm); importlib.metadata normalises them.
_VERSIONS_PROBE = (
    "import importlib.metadata as m, json\n"
    "def v(*names):\n"
    "    for n in names:\n"
    "        try:\n"
    "            return m.version(n)\n"
    "        except m.PackageNotFoundError:\n"
    "            pass\n"
    "print(json.dumps({'dynamo': v('ai-dynamo', 'ai_dynamo'), 'trtllm': v('tensorrt_llm', 'tensorrt-llm')}))\n"
)


@dataclass(frozen=True)
class ImageInfo:
    """One image on one node, as `docker image inspect` has it."""

    id: str
    size: int  # bytes, uncompressed (about what `docker save` sends)
    user: str  # its USER ("root" when unset)
    labels: Mapping[str, str] = field(default_factory=dict)
    repo_digests: tuple[str, ...] = ()


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    status: ContainerStatus
    image: str
    pid: int  # of its main process, as the node sees it (0 when it is not running)
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.status == "running"


class DockerEngine:
    """One node's Docker engine: `docker` run on the node by its Host, over SSH or locally.

    Nothing here opens its own connection: the node's port, key, user and host-key checks are the
    Host's. The CLI picks the engine as it always does (DOCKER_HOST or the default socket, as the
    node's login environment has it). The caller owns the Host and closes it.
    """

    def __init__(self, host: Host) -> None:
        self.host = host
        self._reachable = False

    def image_id(self, image: str) -> str | None:
        """The image's id on the node, or None if it is not there."""
        found = self._docker("image", "inspect", "--format", "{{.Id}}", image, check=False)
        if found.ok:
            return found.stdout.strip()
        if _missing(found):
            return None
        raise self._failed(f"docker image inspect {image}", found)

    def inspect_image(self, image: str) -> ImageInfo | None:
        """The image's id, size, user, labels and registry digests on the node; None if it is not there."""
        found = self._docker("image", "inspect", image, check=False)
        if not found.ok:
            if _missing(found):
                return None
            raise self._failed(f"docker image inspect {image}", found)
        item = cast(list[dict[str, Any]], json.loads(found.stdout))[0]
        config = item.get("Config") or {}
        return ImageInfo(
            id=str(item["Id"]),
            size=int(item.get("Size") or 0),
            user=str(config.get("User") or "") or "root",
            labels={str(k): str(v) for k, v in (config.get("Labels") or {}).items()},
            repo_digests=tuple(str(d) for d in item.get("RepoDigests") or ()),
        )

    def image_versions(self, image: str) -> dict[str, str | None] | None:
        """{"dynamo": V, "trtllm": V} as the image's own python3 reports them (None where a package is
        missing); None when the image has no python3 to ask. Runs one throw-away container."""
        ran = self.run_once(image, ["-c", _VERSIONS_PROBE], entrypoint=["python3"], timeout=300)
        if not ran.ok:
            said = (ran.stderr + ran.stdout).lower()
            if ran.exit_code == 127 or "executable file not found" in said or "no such file" in said:
                return None
            raise self._failed(f"python3 in {image} (reading its versions)", ran)
        lines = ran.stdout.strip().splitlines()
        data = cast(dict[str, Any], json.loads(lines[-1])) if lines else {}
        return {"dynamo": data.get("dynamo"), "trtllm": data.get("trtllm")}

    def tag(self, image: str, target: str) -> None:
        self._docker("tag", image, target)

    def push(self, reference: str) -> str:
        """Push to its registry; returns the repo digest (REPO@sha256:...)."""
        pushed = self._docker("push", "--quiet", reference, check=False, timeout=PULL_TIMEOUT_S)
        if not pushed.ok:
            raise StageError(
                f"docker push {reference} failed on {self.host.name}: {_reason(pushed)}",
                hint="check that the registry is up and that this node's Docker may push to it "
                "(an http registry must be in dockerd's insecure-registries)",
                host=self.host.name,
            )
        info = self.inspect_image(reference)
        repo = reference.rsplit(":", 1)[0] if ":" in reference.rsplit("/", 1)[-1] else reference
        digests = [d for d in (info.repo_digests if info else ()) if d.startswith(repo + "@")]
        return digests[0] if digests else ""

    def pull(self, reference: str, hint: str) -> str:
        """Pull and return the image id; a failure says why and what to do (`hint`)."""
        pulled = self._docker("pull", "--quiet", reference, check=False, timeout=PULL_TIMEOUT_S)
        present = self.image_id(reference) if pulled.ok else None
        if present is None:
            raise StageError(
                f"docker pull {reference} failed on {self.host.name}: {_reason(pulled)}",
                hint=hint,
                host=self.host.name,
            )
        return present

    def save_stream(self, image: str) -> Stream:
        """`docker save` of the image, read from the stream's stdout."""
        self._ensure_reachable()
        return self.host.open_stream(f"exec docker save {shlex.quote(image)}")

    def load_stream(self) -> Stream:
        """`docker load` reading the stream's stdin; its report goes to stderr (kept by the Stream)."""
        self._ensure_reachable()
        return self.host.open_stream("exec docker load 1>&2")

    def image_user(self, image: str) -> str:
        """The user the image's processes run as (its USER; "" in the image means root).

        Raises:
            StageError: the image is not on the node, or docker failed.
        """
        info = self.inspect_image(image)
        if info is None:
            raise StageError(
                f"image {image} is not on {self.host.name}",
                hint=f"run the build stage, or docker pull / docker load it on {self.host.name}",
                host=self.host.name,
            )
        return info.user

    def image_present(self, image: str) -> bool:
        return self.image_id(image) is not None

    def ensure_image(self, image: str, field: str) -> str:
        """Pull the image when it is missing and return its id; a failed pull names the config field."""
        present = self.image_id(image)
        if present is not None:
            return present
        pulled = self._docker("pull", "--quiet", image, check=False, timeout=PULL_TIMEOUT_S)
        present = self.image_id(image) if pulled.ok else None
        if present is None:
            raise StageError(
                f"image {image} is not on {self.host.name} and could not be pulled: {_reason(pulled)}",
                hint=f"docker pull / docker load it on {self.host.name}, or set {field}",
                host=self.host.name,
            )
        return present

    def find(self, name: str) -> Container | None:
        """The container of that name (running or not), or None."""
        found = self._docker("container", "inspect", name, check=False)
        if not found.ok:
            if _missing(found):
                return None
            raise self._failed(f"docker container inspect {name}", found)
        return _containers(found.stdout)[0]

    def labelled(self, label: str) -> list[Container]:
        """The running containers that carry `label` (any value)."""
        ids = self._docker("ps", "--quiet", "--no-trunc", "--filter", f"label={label}").stdout.split()
        if not ids:
            return []
        # A container may go between the two calls: inspect answers for the others and exits 1.
        found = self._docker("container", "inspect", *ids, check=False)
        return _containers(found.stdout) if found.stdout.strip() else []

    def run(
        self,
        name: str,
        image: str,
        command: Sequence[str],
        *,
        entrypoint: Sequence[str] | None = None,
        environment: Mapping[str, str] | None = None,
        volumes: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Container:
        """Start a detached container on the host network (as Dynamo's services expect).

        `environment` is on the node's `docker run` command line: no secrets.
        """
        options = ["--detach", "--name", name, "--network", "host"]
        for key, value in (labels or {}).items():
            options += ["--label", f"{key}={value}"]
        options, rest = _run_options(options, entrypoint, environment, volumes)
        started = self._docker("run", *options, image, *rest, *command, check=False)
        if not started.ok:
            raise StageError(
                f"container {name} ({image}) did not start on {self.host.name}: {_reason(started)}",
                hint=f"docker logs {name} on {self.host.name} may say more; `docker rm -f {name}` clears it",
                host=self.host.name,
            )
        container = self.find(name)
        if container is None:
            raise StageError(
                f"container {name} started on {self.host.name} and was gone at once",
                hint="something removed it (docker run --rm elsewhere?); run again",
                host=self.host.name,
            )
        return container

    def run_once(
        self,
        image: str,
        command: Sequence[str],
        *,
        entrypoint: Sequence[str] | None = None,
        volumes: Mapping[str, str] | None = None,
        timeout: float = 300.0,
    ) -> Result:
        """Run a command in a throw-away container without a network and return how it ended (for a check
        made as the image's own user; the caller reads the exit code)."""
        options, rest = _run_options(["--rm", "--network", "none"], entrypoint, None, volumes)
        return self._docker("run", *options, image, *rest, *command, check=False, timeout=timeout)

    def logs(self, name: str, lines: int = 30) -> str:
        """The last lines the container wrote (stdout and stderr); '' if there is no such container."""
        shown = self._docker("logs", "--tail", str(lines), name, check=False, merge_stderr=True)
        return shown.stdout if shown.ok else ""

    def remove(self, name: str, grace_s: float = 10.0) -> bool:
        """Stop (TERM, then KILL after grace_s) and remove a container; False if there was none."""
        found = self.find(name)
        if found is None:
            return False
        if found.running:
            self._docker("stop", "--time", str(max(1, int(grace_s))), name, check=False, timeout=grace_s + 60)
        removed = self._docker("rm", "--force", name, check=False)
        if not removed.ok and not _missing(removed):
            raise self._failed(f"docker rm --force {name}", removed)
        return True

    def _docker(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 120.0,
        merge_stderr: bool = False,
    ) -> Result:
        self._ensure_reachable()
        command = "docker " + " ".join(shlex.quote(arg) for arg in args) + (" 2>&1" if merge_stderr else "")
        result = self.host.run(command, check=False, timeout=timeout)
        if check and not result.ok:
            raise self._failed("docker " + " ".join(args[:2]), result)
        return result

    def _ensure_reachable(self) -> None:
        """Once per engine: the CLI is there and its engine answers, or a StageError that says which."""
        if self._reachable:
            return
        probe = self.host.run("docker version --format '{{.Server.Version}}'", check=False, timeout=60)
        if not probe.ok:
            missing = probe.exit_code == 127
            raise StageError(
                f"cannot talk to the Docker engine on {self.host.name}: "
                + ("the docker CLI is not installed there" if missing else _reason(probe)),
                hint="install Docker there (docker.io), start dockerd (or point DOCKER_HOST at it), "
                "or use infra.runtime: native",
                host=self.host.name,
            )
        self._reachable = True

    def _failed(self, what: str, result: Result) -> StageError:
        return StageError(
            f"{what} failed on {self.host.name}: {_reason(result)}",
            hint=f"run it by hand on {self.host.name} to see why",
            host=self.host.name,
        )


def _run_options(
    options: list[str],
    entrypoint: Sequence[str] | None,
    environment: Mapping[str, str] | None,
    volumes: Mapping[str, str] | None,
) -> tuple[list[str], list[str]]:
    """`docker run` options with the environment, volumes and entrypoint added, and the entrypoint words
    that must go before the command (the CLI takes one entrypoint word; the rest precede the command)."""
    options = list(options)
    for key, value in (environment or {}).items():
        options += ["--env", f"{key}={value}"]
    for source, target in (volumes or {}).items():
        options += ["--volume", f"{source}:{target}"]
    words = list(entrypoint or ())
    if words:
        options += ["--entrypoint", words[0]]
    return options, words[1:]


def _containers(inspected: str) -> list[Container]:
    """Containers from `docker container inspect` JSON."""
    found: list[Container] = []
    for item in cast(list[dict[str, Any]], json.loads(inspected)):
        state, config = item.get("State") or {}, item.get("Config") or {}
        found.append(
            Container(
                id=str(item["Id"]),
                name=str(item.get("Name", "")).lstrip("/"),
                status=cast(ContainerStatus, state.get("Status", "dead")),
                image=str(config.get("Image", "")),
                pid=int(state.get("Pid") or 0),
                labels=dict(config.get("Labels") or {}),
            )
        )
    return found


def _missing(result: Result) -> bool:
    return "no such" in (result.stderr + result.stdout).lower()


def _reason(result: Result) -> str:
    """The CLI's last words: the one line that says why."""
    lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
    return lines[-1] if lines else f"exit {result.exit_code}"
