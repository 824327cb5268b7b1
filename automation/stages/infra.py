"""The infra stage: etcd and NATS (with JetStream) on node 0, as native processes or as containers."""

from __future__ import annotations

import json
import re
import shlex
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from automation.config import PipelineConfig
from automation.contracts import InfraOutputs, recorded
from automation.errors import StageError
from automation.remote import Detached, Host, host_for
from automation.stage import Check, Stage, StageContext
from automation.state import StageRecord


@dataclass(frozen=True)
class Service:
    """One of the two services: how to start it, which ports it owns, and how to tell it is healthy."""

    name: str  # "etcd" | "nats"
    ports: tuple[int, ...]
    health_url: str
    native: list[str]  # argv of the binary
    container_args: list[str]  # argv after the image's entrypoint
    container_entrypoint: list[str] | None
    image: str
    image_field: str


def services(config: PipelineConfig) -> list[Service]:
    """etcd with a fresh data directory, NATS with JetStream; both bound to node 0's address."""
    infra, address = config.infra, config.head.address
    data = run_directory(config) + "/infra"
    member = f"autodeploy-{config.name}"
    peer = f"http://{address}:{infra.etcd_peer_port}"
    client = f"http://{address}:{infra.etcd_port}"
    etcd_flags = [
        f"--name={member}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster={member}={peer}",
    ]
    nats_flags = ["-js", "-a", address, "-p", str(infra.nats_port), "-m", str(infra.nats_monitor_port)]
    return [
        Service(
            name="etcd",
            ports=(infra.etcd_port, infra.etcd_peer_port),
            health_url=f"{client}/health",
            native=[infra.etcd_binary, f"--data-dir={data}/etcd-data", *etcd_flags],
            container_args=["--data-dir=/tmp/etcd-data", *etcd_flags],
            container_entrypoint=["etcd"],
            image=infra.etcd_image,
            image_field="infra.etcd_image",
        ),
        Service(
            name="nats",
            ports=(infra.nats_port, infra.nats_monitor_port),
            health_url=f"http://{address}:{infra.nats_monitor_port}/healthz",
            native=[infra.nats_binary, *nats_flags, "-sd", f"{data}/nats-data"],
            container_args=[*nats_flags, "-sd", "/tmp/nats-data"],
            container_entrypoint=None,  # the NATS images' entrypoint is nats-server itself
            image=infra.nats_image,
            image_field="infra.nats_image",
        ),
    ]


def run_directory(config: PipelineConfig) -> str:
    """This run's directory on every node."""
    return f"{config.cluster.work_dir.rstrip('/')}/{config.name}"


def healthy(service: Service) -> bool:
    """etcd: /health says {"health": "true"}; NATS: /healthz says {"status": "ok"}."""
    try:
        with urllib.request.urlopen(service.health_url, timeout=2) as response:
            body = json.loads(response.read().decode() or "{}")
    except (OSError, ValueError, urllib.error.URLError):
        return False
    if service.name == "etcd":
        return str(body.get("health")) == "true"
    return body.get("status") == "ok"


def listeners(host: Host, ports: tuple[int, ...]) -> dict[int, str]:
    """Which of `ports` something already listens on, on the host, described as 'name (pid N)' when known."""
    result = host.run("ss -ltnpH 2>/dev/null || true", timeout=30)
    taken: dict[int, str] = {}
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        port_text = fields[3].rsplit(":", 1)[-1]
        if not port_text.isdigit() or int(port_text) not in ports:
            continue
        process = re.search(r'users:\(\("([^"]+)",pid=(\d+)', line)
        taken[int(port_text)] = (
            f"{process.group(1)} (pid {process.group(2)})" if process else "another process"
        )
    return taken


class _Native:
    """etcd and nats-server started detached on node 0, with pid files in the run's infra directory."""

    def __init__(self, host: Host, directory: str) -> None:
        self.host = host
        self.directory = directory

    def find_ours(self, service: Service) -> dict[str, Any] | None:
        read = self.host.run(
            f"cat {shlex.quote(self._pid_file(service))} 2>/dev/null", check=False, timeout=30
        )
        parts = read.stdout.split()
        if len(parts) != 2:
            return None
        process = Detached(
            service.name, int(parts[0]), int(parts[1]), self._log(service), self._pid_file(service)
        )
        return process.to_dict() if self.host.alive(process) else None

    def start(self, service: Service) -> dict[str, Any]:
        data_dir = f"{self.directory}/{service.name}-data"
        # A fresh data directory per start: leases of killed workers must not come back from an old one.
        self.host.run(f"rm -rf {shlex.quote(data_dir)} && mkdir -p {shlex.quote(data_dir)}", timeout=60)
        command = " ".join(shlex.quote(arg) for arg in service.native)
        return self.host.start_detached(service.name, f"exec {command}", self.directory).to_dict()

    def alive(self, handle: Mapping[str, Any]) -> bool:
        return self.host.alive(Detached.from_dict(handle))

    def stop(self, handle: Mapping[str, Any]) -> str:
        return self.host.stop(Detached.from_dict(handle), grace_s=10)

    def log_tail(self, service: Service) -> str:
        return self.host.tail(self._log(service))

    def _pid_file(self, service: Service) -> str:
        return f"{self.directory}/{service.name}.pid"

    def _log(self, service: Service) -> str:
        return f"{self.directory}/{service.name}.log"


class _Containers:
    """etcd and NATS as containers on node 0's Docker engine, named after the run."""

    def __init__(self, host: Host, run_name: str) -> None:
        from automation.docker_engine import DockerEngine

        self.engine = DockerEngine(host)
        self.run_name = run_name

    def container_name(self, service: Service) -> str:
        return f"autodeploy-{self.run_name}-{service.name}"

    def find_ours(self, service: Service) -> dict[str, Any] | None:
        found = self.engine.find(self.container_name(service))
        if found is None:
            return None
        if not found.running:
            self.engine.remove(found.name)
            return None
        return {"container": found.name, "id": found.id}

    def start(self, service: Service) -> dict[str, Any]:
        self.engine.ensure_image(service.image, service.image_field)
        container = self.engine.run(
            self.container_name(service),
            service.image,
            service.container_args,
            entrypoint=service.container_entrypoint,
            environment={
                "ALLOW_NONE_AUTHENTICATION": "yes"
            },  # the bitnami etcd image refuses to start without it
            labels={"autodeploy.run": self.run_name, "autodeploy.service": service.name},
        )
        return {"container": container.name, "id": container.id}

    def alive(self, handle: Mapping[str, Any]) -> bool:
        found = self.engine.find(handle["container"])
        return found is not None and found.running and found.id == handle["id"]

    def stop(self, handle: Mapping[str, Any]) -> str:
        return "stopped" if self.engine.remove(handle["container"]) else "not running"

    def log_tail(self, service: Service) -> str:
        return self.engine.logs(self.container_name(service))


class Infra(Stage):
    """etcd and NATS on node 0.

    Done: both answer healthy and their endpoints, and the processes or containers that serve them,
    are recorded. Verify: probes etcd /health and NATS /healthz and checks they are still the recorded
    processes. A process of this run found running (e.g. after the runner was killed) is reused.
    """

    name = "infra"
    summary = "start etcd and NATS on node 0"
    needs = ()
    Outputs = InfraOutputs

    def inputs(self, config: PipelineConfig) -> Mapping[str, Any]:
        head = config.head
        return {
            "infra": config.infra.model_dump(),
            "head": {"host": head.host, "address": head.address, "connect": head.connect},
            "run_directory": run_directory(config),
        }

    def run(self, ctx: StageContext) -> InfraOutputs:
        config = ctx.config
        head = host_for(config, config.head)
        try:
            runtime = self._runtime(config, head)
            started: list[tuple[Service, dict[str, Any]]] = []
            handles: dict[str, dict[str, Any]] = {}
            reused: list[str] = []
            try:
                for service in services(config):
                    ours = runtime.find_ours(service)
                    if ours is not None and _wait_healthy(service, 2.0):
                        ctx.log.info("%s: reusing the one this run started (%s)", service.name, ours)
                        handles[service.name] = ours
                        reused.append(service.name)
                        continue
                    if ours is not None:
                        ctx.log.info("%s: ours but not healthy; restarting it", service.name)
                        runtime.stop(ours)
                    self._check_ports(head, service)
                    ctx.display.status(f"starting {service.name}")
                    handles[service.name] = runtime.start(service)
                    started.append((service, handles[service.name]))
                    ctx.log.info("%s: started %s", service.name, handles[service.name])
                self._wait_until_healthy(ctx, config, runtime)
            except BaseException:
                for service, handle in reversed(started):
                    ctx.log.info("%s: stopping after the failure: %s", service.name, runtime.stop(handle))
                raise
        finally:
            head.close()
        address = config.head.address
        return InfraOutputs(
            runtime=config.infra.runtime,
            node=config.head.name or "",
            etcd_endpoint=f"http://{address}:{config.infra.etcd_port}",
            nats_server=f"nats://{address}:{config.infra.nats_port}",
            handles=handles,
            reused=reused,
        )

    def verify(self, ctx: StageContext, record: StageRecord) -> Check:
        for service in services(ctx.config):
            if not healthy(service):
                return Check.stale(f"{service.name} does not answer at {service.health_url}")
        head = host_for(ctx.config, ctx.config.head)
        try:
            runtime = self._runtime(ctx.config, head)
            outputs = recorded(InfraOutputs, record.outputs)
            for name, handle in (outputs.handles if outputs else {}).items():
                if not runtime.alive(handle):
                    return Check.stale(f"{name} is healthy but is no longer the one this run started")
        finally:
            head.close()
        return Check.still_valid("etcd and NATS healthy")

    def describe(self, outputs: InfraOutputs) -> str:
        reused = f" (reused {', '.join(outputs.reused)})" if outputs.reused else ""
        return f"{outputs.etcd_endpoint}  {outputs.nats_server}  [{outputs.runtime}]{reused}"

    def teardown(self, ctx: StageContext, record: StageRecord) -> str | None:
        outputs = recorded(InfraOutputs, record.outputs)
        handles = outputs.handles if outputs else {}
        config = ctx.config
        head = host_for(config, config.head)
        try:
            runtime = self._runtime(config, head)
            stopped = []
            for service in reversed(services(config)):
                handle = handles.get(service.name) or runtime.find_ours(service)
                if handle is not None and runtime.stop(handle) != "not running":
                    stopped.append(service.name)
            if isinstance(runtime, _Native):
                head.run(
                    f"rm -rf {shlex.quote(runtime.directory)}/etcd-data {shlex.quote(runtime.directory)}/nats-data"
                )
        finally:
            head.close()
        return f"{' and '.join(stopped)} on {config.head.name}" if stopped else None

    def _runtime(self, config: PipelineConfig, head: Host) -> _Native | _Containers:
        if config.infra.runtime == "docker":
            return _Containers(head, config.name)
        return _Native(head, head.expand(run_directory(config)) + "/infra")

    def _check_ports(self, head: Host, service: Service) -> None:
        taken = listeners(head, service.ports)
        if taken:
            port, holder = next(iter(taken.items()))
            field = {
                "etcd": "infra.etcd_port / infra.etcd_peer_port",
                "nats": "infra.nats_port / infra.nats_monitor_port",
            }
            raise StageError(
                f"port {port} on {head.name} is already taken by {holder}; {service.name} cannot start",
                hint=f"stop that process, or choose other ports ({field[service.name]})",
                host=head.name,
                port=port,
            )

    def _wait_until_healthy(
        self, ctx: StageContext, config: PipelineConfig, runtime: _Native | _Containers
    ) -> None:
        deadline = time.monotonic() + config.infra.ready_timeout_s
        for service in services(config):
            ctx.display.status(f"waiting for {service.name}")
            if not _wait_healthy(service, max(0.0, deadline - time.monotonic())):
                tail = runtime.log_tail(service)
                ctx.log.error("%s log tail:\n%s", service.name, tail)
                last = tail.strip().splitlines()[-1] if tail.strip() else "no output"
                raise StageError(
                    f"{service.name} did not become healthy at {service.health_url} within "
                    f"{config.infra.ready_timeout_s:.0f}s (last log line: {last})",
                    hint="see the log for its output; check the binary/image and the ports",
                    host=config.head.name,
                )


def _wait_healthy(service: Service, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if healthy(service):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
