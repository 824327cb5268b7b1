"""The infra stage: etcd and NATS (with JetStream) on node 0, as native processes or as containers."""

from __future__ import annotations

import json
import shlex
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Literal

from automation.config import PipelineConfig
from automation.contracts import InfraOutputs, recorded
from automation.docker_engine import DockerEngine
from automation.errors import StageError
from automation.remote import Detached, Host, host_for
from automation.stage import Check, Stage, StageContext
from automation.state import StageRecord

ServiceName = Literal["etcd", "nats"]
# Every container of a run carries its run id, so another run can say whose a busy port is.
RUN_LABEL, SERVICE_LABEL = "autodeploy.run", "autodeploy.service"
PORT_FIELDS: dict[ServiceName, str] = {
    "etcd": "infra.etcd_port / infra.etcd_peer_port",
    "nats": "infra.nats_port / infra.nats_monitor_port",
}


@dataclass(frozen=True)
class Service:
    """One of the two services: how to start it, which ports it owns, and how to tell it is healthy."""

    name: ServiceName
    ports: tuple[int, ...]
    health_url: str
    native: list[str]  # argv of the binary
    data_dir: str  # of the native binary; a container keeps its data inside itself
    container_args: list[str]  # argv after the image's entrypoint
    container_entrypoint: list[str] | None
    image: str
    image_field: str


def services(config: PipelineConfig, run_id: str, directory: str) -> list[Service]:
    """etcd and NATS (with JetStream) of one run, both bound to node 0's address.

    `directory` is the run's infra directory as node 0 resolves it (Host.path: no `~` left), where the
    native data directories, pid files and logs live; `run_id` names the etcd member.
    """
    infra, address = config.infra, config.head.address or config.head.host
    member = f"autodeploy-{run_id}"
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
            native=[infra.etcd_binary, f"--data-dir={directory}/etcd-data", *etcd_flags],
            data_dir=f"{directory}/etcd-data",
            container_args=["--data-dir=/tmp/etcd-data", *etcd_flags],
            container_entrypoint=["etcd"],
            image=infra.etcd_image,
            image_field="infra.etcd_image",
        ),
        Service(
            name="nats",
            ports=(infra.nats_port, infra.nats_monitor_port),
            health_url=f"http://{address}:{infra.nats_monitor_port}/healthz",
            native=[infra.nats_binary, *nats_flags, "-sd", f"{directory}/nats-data"],
            data_dir=f"{directory}/nats-data",
            container_args=[*nats_flags, "-sd", "/tmp/nats-data"],
            container_entrypoint=None,  # the NATS images' entrypoint is nats-server itself
            image=infra.nats_image,
            image_field="infra.nats_image",
        ),
    ]


def healthy(service: Service) -> bool:
    """etcd: /health says {"health": "true"}; NATS: /healthz says {"status": "ok"}."""
    try:
        with urllib.request.urlopen(service.health_url, timeout=2) as response:
            body = json.loads(response.read().decode() or "{}")
    except (OSError, ValueError, urllib.error.URLError):
        return False
    if not isinstance(body, dict):
        return False
    if service.name == "etcd":
        return str(body.get("health")) == "true"
    return str(body.get("status")) == "ok"


@dataclass(frozen=True)
class Owner:
    """The autodeploy run a process belongs to: its etcd or NATS, native or in a container."""

    run_id: str
    service: str
    pid: int
    container: str | None = None

    def __str__(self) -> str:
        where = f"container {self.container}, pid {self.pid}" if self.container else f"pid {self.pid}"
        return f"{self.service} of autodeploy run '{self.run_id}' ({where})"


def owner(host: Host, work_root: str, pid: int) -> Owner | None:
    """The autodeploy run whose service is process `pid`, found by its pid file under
    <work_root>/*/infra, or by the autodeploy.run label of its container; None for anything else."""
    # start_detached makes the service its session's leader: a pid file names the listener or its session.
    script = (
        f"sid=$(sed -E 's/^.*\\) //' /proc/{pid}/stat 2>/dev/null | cut -d' ' -f4); "
        f'for f in {shlex.quote(work_root)}/*/infra/*.pid; do [ -r "$f" ] || continue; '
        'read -r p t < "$f" || continue; '
        f'if [ "$p" = {pid} ] || [ "$p" = "$sid" ]; then echo "$p $t $f"; fi; done'
    )
    for line in host.run(script, check=False, timeout=30).stdout.splitlines():
        recorded_pid, ticks, pid_file = line.split(" ", 2)
        if not (recorded_pid.isdigit() and ticks.isdigit()):
            continue  # not a pid file start_detached wrote
        path = PurePosixPath(pid_file)
        process = Detached(path.stem, int(recorded_pid), int(ticks), str(path.with_suffix(".log")), pid_file)
        if host.alive(process):
            return Owner(path.parent.parent.name, path.stem, pid)
    try:
        containers = DockerEngine(host).labelled(RUN_LABEL)
    except StageError:  # no Docker on the node: no container can hold the port
        return None
    for container in containers:
        if container.pid == pid:
            service = container.labels.get(SERVICE_LABEL, "a service")
            return Owner(container.labels[RUN_LABEL], service, pid, container.name)
    return None


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
        # A fresh data directory per start: leases of killed workers must not come back from an old one.
        data = shlex.quote(service.data_dir)
        self.host.run(f"rm -rf {data} && mkdir -p {data}", timeout=60)
        command = " ".join(shlex.quote(arg) for arg in service.native)
        return self.host.start_detached(service.name, f"exec {command}", self.directory).to_dict()

    def alive(self, handle: Mapping[str, Any]) -> bool:
        return self.host.alive(Detached.from_dict(handle))

    def stop(self, handle: Mapping[str, Any]) -> str:
        return self.host.stop(Detached.from_dict(handle), grace_s=10)

    def clean(self, service: Service) -> None:
        """Remove what a stopped service leaves: its data (old leases) and its pid file."""
        removed = self.host.run(
            f"rm -rf {shlex.quote(service.data_dir)} {shlex.quote(self._pid_file(service))}",
            check=False,
            timeout=60,
        )
        if not removed.ok:
            lines = (removed.stderr or removed.stdout).strip().splitlines()
            raise StageError(
                "its data directory could not be removed: "
                + (lines[-1] if lines else f"rm -rf {service.data_dir}: exit {removed.exit_code}"),
                hint=f"is something mounted there? remove it by hand on {self.host.name}",
                host=self.host.name,
            )

    def log_tail(self, service: Service) -> str:
        return self.host.tail(self._log(service))

    def _pid_file(self, service: Service) -> str:
        return f"{self.directory}/{service.name}.pid"

    def _log(self, service: Service) -> str:
        return f"{self.directory}/{service.name}.log"


class _Containers:
    """etcd and NATS as containers on node 0's Docker engine, named and labelled after the run id."""

    def __init__(self, host: Host, run_id: str) -> None:
        self.engine = DockerEngine(host)
        self.run_id = run_id

    def container_name(self, service: Service) -> str:
        return f"autodeploy-{self.run_id}-{service.name}"

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
            # The bitnami etcd image refuses to start without it.
            environment={"ALLOW_NONE_AUTHENTICATION": "yes"},
            labels={RUN_LABEL: self.run_id, SERVICE_LABEL: service.name},
        )
        return {"container": container.name, "id": container.id}

    def alive(self, handle: Mapping[str, Any]) -> bool:
        found = self.engine.find(handle["container"])
        return found is not None and found.running and found.id == handle["id"]

    def stop(self, handle: Mapping[str, Any]) -> str:
        return "stopped" if self.engine.remove(handle["container"]) else "not running"

    def clean(self, service: Service) -> None:
        """Nothing: a container's data went with it."""

    def log_tail(self, service: Service) -> str:
        return self.engine.logs(self.container_name(service))


class Infra(Stage):
    """etcd and NATS on node 0.

    Done: both answer healthy and their endpoints, and the processes or containers that serve them,
    are recorded. Verify: probes etcd /health and NATS /healthz and checks they are still the recorded
    processes. A process of this run found running after an interrupted or failed attempt (e.g. the
    runner was killed) is reused; a re-run after done (forced, or changed inputs) starts both afresh.
    Everything remote is named by the run id, so two run directories never share a process; a port
    held by another run is refused with that run's name.
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
            "work_dir": config.cluster.work_dir,
        }

    def run(self, ctx: StageContext) -> InfraOutputs:
        config = ctx.config
        head = host_for(config, config.head)
        try:
            directory = _directory(head, ctx)
            runtime = self._runtime(config, head, ctx.run_id, directory)
            wanted = services(config, ctx.run_id, directory)
            afresh = ctx.previous_status == "done"
            started: list[tuple[Service, dict[str, Any]]] = []
            handles: dict[str, dict[str, Any]] = {}
            reused: list[str] = []
            try:
                for service in wanted:
                    ours = runtime.find_ours(service)
                    if ours is not None and not afresh and _wait_healthy(service, 2.0):
                        ctx.log.info("%s: reusing the one this run started (%s)", service.name, ours)
                        handles[service.name] = ours
                        reused.append(service.name)
                        continue
                    if ours is not None:
                        why = "a re-run starts afresh" if afresh else "ours but not healthy"
                        ctx.log.info("%s: %s; stopping %s: %s", service.name, why, ours, runtime.stop(ours))
                    self._check_ports(head, service, head.path(config.cluster.work_dir))
                    ctx.display.status(f"starting {service.name}")
                    handles[service.name] = runtime.start(service)
                    started.append((service, handles[service.name]))
                    ctx.log.info("%s: started %s", service.name, handles[service.name])
                self._wait_until_healthy(ctx, config, wanted, runtime)
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
        head = host_for(ctx.config, ctx.config.head)
        try:
            directory = _directory(head, ctx)
            for service in services(ctx.config, ctx.run_id, directory):
                if not healthy(service):
                    return Check.stale(f"{service.name} does not answer at {service.health_url}")
            runtime = self._runtime(ctx.config, head, ctx.run_id, directory)
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
        """Stop NATS, then etcd, and clean up after each; one failing does not keep the other running."""
        outputs = recorded(InfraOutputs, record.outputs)
        handles = outputs.handles if outputs else {}
        config = ctx.config
        node = config.head.name or config.head.host
        head = host_for(config, config.head)
        stopped: list[str] = []
        failed: list[tuple[str, StageError]] = []
        try:
            directory = _directory(head, ctx)
            runtime = self._runtime(config, head, ctx.run_id, directory)
            for service in reversed(services(config, ctx.run_id, directory)):
                try:
                    # The recorded one, and the one its pid file or name finds (a later attempt's).
                    candidates = [handles.get(service.name), runtime.find_ours(service)]
                    for handle in [h for i, h in enumerate(candidates) if h and h not in candidates[:i]]:
                        if runtime.stop(handle) != "not running" and service.name not in stopped:
                            stopped.append(service.name)
                    runtime.clean(service)
                except StageError as exc:  # every service gets its turn; the failures are reported together
                    ctx.log.error("%s: %s", service.name, exc)
                    failed.append((service.name, exc))
                except Exception as exc:
                    ctx.log.exception("%s: teardown crashed", service.name)
                    failed.append((service.name, StageError(f"unexpected {type(exc).__name__}: {exc}")))
        finally:
            head.close()
        if stopped:
            ctx.log.info("stopped %s on %s", " and ".join(stopped), node)
        if failed:
            names = " and ".join(name for name, _ in failed)
            if len(failed) == 1:
                reasons, hint = failed[0][1].message, failed[0][1].hint
            else:
                reasons, hint = "; ".join(f"{name}: {exc.message}" for name, exc in failed), ""
            raise StageError(
                f"{names} on {node}: {reasons}",
                hint=f"{hint or f'fix that on {node}'}, then run `autodeploy down` again",
                host=node,
                stopped=stopped,
            )
        return f"{' and '.join(stopped)} on {node}" if stopped else None

    def _runtime(
        self, config: PipelineConfig, head: Host, run_id: str, directory: str
    ) -> _Native | _Containers:
        if config.infra.runtime == "docker":
            return _Containers(head, run_id)
        return _Native(head, directory)

    def _check_ports(self, head: Host, service: Service, work_root: str) -> None:
        taken = head.listeners(service.ports)
        if not taken:
            return
        port = next(p for p in service.ports if p in taken)  # the client port first: the one people know
        holder = taken[port]
        run = owner(head, work_root, holder.pid) if holder.pid is not None else None
        if run is not None:
            raise StageError(
                f"port {port} on {head.name} is held by {run}; {service.name} cannot start",
                hint=f"stop it with `autodeploy down` for that run, or choose other ports "
                f"({PORT_FIELDS[service.name]})",
                host=head.name,
                port=port,
                run=run.run_id,
            )
        raise StageError(
            f"port {port} on {head.name} is already taken by {holder}; {service.name} cannot start",
            hint=f"stop that process, or choose other ports ({PORT_FIELDS[service.name]})",
            host=head.name,
            port=port,
        )

    def _wait_until_healthy(
        self,
        ctx: StageContext,
        config: PipelineConfig,
        wanted: list[Service],
        runtime: _Native | _Containers,
    ) -> None:
        deadline = time.monotonic() + config.infra.ready_timeout_s
        for service in wanted:
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


def _directory(head: Host, ctx: StageContext) -> str:
    """The run's infra directory on node 0, `~` resolved once: argv, wipe, pid files and teardown agree."""
    return head.path(ctx.remote_dir) + "/infra"


def _wait_healthy(service: Service, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if healthy(service):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
