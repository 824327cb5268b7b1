"""A node's Docker engine, driven by the `docker` CLI on that node through its Host (so SSH settings hold)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from automation.errors import StageError
from automation.remote import Host, Result

ContainerStatus = Literal["created", "restarting", "running", "removing", "paused", "exited", "dead"]

# Pulling a multi-gigabyte image (the Dynamo/TRT-LLM one) can take long on a slow link.
PULL_TIMEOUT_S = 3600.0


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

    def image_user(self, image: str) -> str:
        """The user the image's processes run as (its USER; "" in the image means root).

        Raises:
            StageError: the image is not on the node, or docker failed.
        """
        found = self._docker("image", "inspect", "--format", "{{.Config.User}}", image, check=False)
        if not found.ok:
            raise self._failed(f"docker image inspect {image}", found)
        return found.stdout.strip() or "root"

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
