"""The Docker engine of a node, through the docker SDK (which stays inside this module)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from automation.errors import StageError
from automation.remote import Host, LocalHost, SSHHost


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    status: str  # created | running | exited | ...
    image: str

    @property
    def running(self) -> bool:
        return self.status == "running"


class DockerEngine:
    """One node's Docker engine: the local socket (DOCKER_HOST honoured) or ssh://user@node."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._client: Any = None

    def _docker(self) -> Any:
        if self._client is not None:
            return self._client
        import docker

        try:
            if isinstance(host := self.host, SSHHost):
                client = docker.DockerClient(
                    base_url=f"ssh://{host.target.rsplit(':', 1)[0]}", use_ssh_client=False
                )
            else:
                assert isinstance(host, LocalHost)
                client = docker.from_env()
            client.ping()
        except Exception as exc:
            raise StageError(
                f"cannot talk to the Docker engine on {self.host.name}: {_reason(exc)}",
                hint="start dockerd there (or point DOCKER_HOST at it), or use infra.runtime: native",
                host=self.host.name,
            ) from None
        self._client = client
        return client

    def image_present(self, image: str) -> bool:
        import docker.errors

        try:
            self._docker().images.get(image)
        except docker.errors.ImageNotFound:
            return False
        return True

    def image_id(self, image: str) -> str:
        return str(self._docker().images.get(image).id)

    def ensure_image(self, image: str, field: str) -> None:
        """Pull the image when it is missing; a failed pull names the config field to change."""
        if self.image_present(image):
            return
        try:
            self._docker().images.pull(image)
        except Exception as exc:
            raise StageError(
                f"image {image} is not on {self.host.name} and could not be pulled: {_reason(exc)}",
                hint=f"docker pull / docker load it on {self.host.name}, or set {field}",
                host=self.host.name,
            ) from None

    def find(self, name: str) -> Container | None:
        import docker.errors

        try:
            found = self._docker().containers.get(name)
        except docker.errors.NotFound:
            return None
        tags = found.image.tags if found.image is not None else []
        return Container(found.id, found.name, found.status, tags[0] if tags else "")

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
        """Start a detached container on the host network (as Dynamo's services expect)."""
        container = self._docker().containers.run(
            image,
            list(command),
            name=name,
            entrypoint=list(entrypoint) if entrypoint else None,
            environment=dict(environment or {}),
            volumes={src: {"bind": dst, "mode": "rw"} for src, dst in (volumes or {}).items()},
            labels=dict(labels or {}),
            network_mode="host",
            detach=True,
        )
        container.reload()
        return Container(container.id, container.name, container.status, image)

    def logs(self, name: str, lines: int = 30) -> str:
        import docker.errors

        try:
            return self._docker().containers.get(name).logs(tail=lines).decode(errors="replace")
        except docker.errors.NotFound:
            return ""

    def remove(self, name: str, grace_s: float = 10.0) -> bool:
        """Stop (TERM, then KILL after grace_s) and remove a container; False if there was none."""
        import docker.errors

        try:
            container = self._docker().containers.get(name)
        except docker.errors.NotFound:
            return False
        if container.status == "running":
            container.stop(timeout=int(grace_s))
        container.remove(force=True)
        return True

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
