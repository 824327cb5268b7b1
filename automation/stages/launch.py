"""The launch stage: copy the generated files to every node, start each node script, wait until all serve."""

from __future__ import annotations

import contextlib
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
from automation.contracts import BuildOutputs, GenerateOutputs, LaunchOutputs, recorded
from automation.errors import StageError
from automation.node_runtime import (
    CONTAINER_MODEL_DIR,
    CONTAINER_RUN_DIR,
    NodeRuntime,
    container_options,
    probe,
    unreadable_in_container,
)
from automation.placement import Placement
from automation.redact import hub_token
from automation.remote import Detached, Host, host_for
from automation.stage import Check, Stage, StageContext
from automation.state import StageRecord

POLL_S = 0.5
_RAISED = re.compile(r"\] ([\w.]*(Error|Exception|Exit)): ")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Dynamo colours its logs even in files
LOG_LINES_KEPT = 5000


@dataclass(frozen=True)
class Readiness:
    """What the frontend reports: generate instances per component, whether the model is listed."""

    instances: dict[str, set[int]]
    model_listed: bool

    def count(self, component: str) -> int:
        return len(self.instances.get(component, set()))


def _get_json(url: str, timeout: float = 3.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read().decode() or "null")


def probe_frontend(frontend: str, served_name: str) -> Readiness:
    """Read /health (instances) and /v1/models of the frontend; an unreachable frontend reports nothing."""
    instances: dict[str, set[int]] = {}
    health: Any = None
    for path in ("/health?instances=true", "/health"):
        with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
            health = _get_json(frontend + path)
            if isinstance(health, dict) and health.get("instances") is not None:
                break
    for item in (health or {}).get("instances") or [] if isinstance(health, dict) else []:
        if item.get("endpoint") == "generate":
            instances.setdefault(str(item.get("component")), set()).add(int(item.get("instance_id", 0)))
    listed = False
    with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
        models = _get_json(frontend + "/v1/models")
        listed = any(m.get("id") == served_name for m in (models or {}).get("data", []))
    return Readiness(instances, listed)


def smoke_request(frontend: str, served_name: str) -> tuple[bool, str]:
    """One tiny chat completion; (True, '') on HTTP 200, else (False, what came back)."""
    body = json.dumps(
        {
            "model": served_name,
            "messages": [{"role": "user", "content": "ping"}],
            "max_tokens": 1,
            "stream": False,
        }
    ).encode()
    request = urllib.request.Request(
        frontend + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status == 200, ""
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}: {exc.read().decode(errors='replace')[:200]}"
    except (OSError, urllib.error.URLError) as exc:
        return False, str(exc)


def load_placement(ctx: StageContext) -> Placement:
    generated = ctx.output(GenerateOutputs)
    return Placement.load(ctx.run_dir / generated.placement)


class Launch(Stage):
    """Copy generated/ to every node, start node_<i>_run.sh detached, and wait until every worker serves.

    Done: the frontend's /health lists the expected number of `generate` instances per component
    (from placement.json), the model is listed in /v1/models and a one-token request returns 200.
    Verify: the node scripts are still the recorded processes and the frontend still reports them all.
    A node script of this run found running with the same generated files (e.g. after the runner was
    killed) is reused rather than started twice.
    """

    name = "launch"
    summary = "start the node scripts and wait until every worker serves"
    needs = ("generate", "build", "checkpoint", "infra")
    Outputs = LaunchOutputs

    def inputs(self, config: PipelineConfig) -> Mapping[str, Any]:
        return {
            "launch": config.launch.model_dump(),
            "nodes": [node.model_dump(mode="json") for node in config.cluster.nodes],
            "served_name": config.model.served_name,
            "work_dir": config.cluster.work_dir,
        }

    def run(self, ctx: StageContext) -> LaunchOutputs:
        config = ctx.config
        placement = load_placement(ctx)
        generated = ctx.output(GenerateOutputs)
        files_digest = _digest(generated.files)
        remote_dir = ctx.remote_dir + "/generated"
        frontend = placement.frontend.url
        busy = [node.index for node in placement.nodes if node.script]
        hosts = {i: host_for(config, config.cluster.nodes[i]) for i in busy}
        started: dict[int, Detached] = {}
        processes: dict[int, Detached] = {}
        facts: dict[int, NodeRuntime] = {}
        try:
            self._check_frontend_port(ctx, hosts, placement)
            for index in busy:
                host = hosts[index]
                directory = host.path(remote_dir)
                previous = self._running_here(host, directory, index, files_digest)
                if previous is not None:
                    ctx.log.info("node %d: reusing the running node script (pid %d)", index, previous.pid)
                    processes[index] = previous
                    continue
                ctx.display.status(f"copying files to {host.name}")
                host.put(ctx.path("generated"), directory)
                host.run(f"echo {files_digest} > {shlex.quote(directory)}/.launched-files")
                script = placement.nodes[index].script
                assert script is not None  # busy nodes are those with a script
                image = ctx.output(BuildOutputs).image
                model_path = host.path(config.model.path or "")
                facts[index] = prepare_node(ctx, host, directory, model_path, image)
                command = node_command(
                    config, directory, model_path, script, index, image, ctx.run_id, facts[index]
                )
                processes[index] = started[index] = host.start_detached(
                    f"node_{index}", command, directory, secret_env=_secret_env(config)
                )
                ctx.log.info(
                    "node %d (%s): started node_%d_run.sh, pid %d",
                    index,
                    host.name,
                    index,
                    processes[index].pid,
                )
            self._wait_until_ready(ctx, placement, hosts, processes, frontend)
        except BaseException as failure:
            left = self._stop_after_failure(ctx, hosts, started)
            self._collect_logs(ctx, hosts, processes)
            for host in hosts.values():
                host.close()
            if left and isinstance(failure, StageError):
                # The launch failed *and* workers may still run: both must be said, the second loudly.
                raise StageError(
                    f"{failure.message}; also could not stop the node script on {'; '.join(left)}",
                    hint=f"workers may still be running there: autodeploy down {ctx.pipeline_file}",
                    **failure.details,
                ) from None
            if left:
                ctx.log.error("could not stop after the failure: %s", "; ".join(left))
            raise
        self._collect_logs(ctx, hosts, processes)
        for host in hosts.values():
            host.close()
        return LaunchOutputs(
            frontend=frontend,
            remote_dir=remote_dir,
            processes={str(i): p.to_dict() for i, p in processes.items()},
            expected_instances=placement.expected_instances,
            reused_nodes=sorted(set(processes) - set(started)),
            node_runtime={str(i): f.model_dump() for i, f in facts.items()},
        )

    def verify(self, ctx: StageContext, record: StageRecord) -> Check:
        outputs = recorded(LaunchOutputs, record.outputs)
        if outputs is None:
            return Check.stale("nothing recorded")
        for index, data in outputs.processes.items():
            host = host_for(ctx.config, ctx.config.cluster.nodes[int(index)])
            try:
                if not host.alive(Detached.from_dict(data)):
                    return Check.stale(f"the node script on {host.name} is no longer running")
            finally:
                host.close()
        readiness = probe_frontend(outputs.frontend, ctx.config.model.served_name or "")
        for component, expected in outputs.expected_instances.items():
            if readiness.count(component) != expected:
                return Check.stale(
                    f"{readiness.count(component)}/{expected} {component} instances registered"
                )
        total = sum(outputs.expected_instances.values())
        return Check.still_valid(f"{total} workers serving at {outputs.frontend}")

    def describe(self, outputs: LaunchOutputs) -> str:
        total = sum(outputs.expected_instances.values())
        reused = f", reused on nodes {outputs.reused_nodes}" if outputs.reused_nodes else ""
        return f"{total} workers serving at {outputs.frontend}{reused}"

    def teardown(self, ctx: StageContext, record: StageRecord) -> str | None:
        """Stop every node script (TERM, then KILL), then revoke the etcd leases of workers that did not deregister."""
        config = ctx.config
        remote_dir = ctx.remote_dir + "/generated"
        stopped: list[str] = []
        failed: list[str] = []
        known = recorded(LaunchOutputs, record.outputs)
        for index, node in enumerate(config.cluster.nodes):
            host = host_for(config, node)
            try:
                process_data = known.processes.get(str(index)) if known else None
                process = (
                    Detached.from_dict(process_data)
                    if process_data
                    else self._from_pid_file(host, host.path(remote_dir), index)
                )
                if process is not None and host.stop(process, grace_s=15) != "not running":
                    stopped.append(host.name)
                    self._collect_logs(ctx, {index: host}, {index: process})
                if remove_container(config, host, index, ctx.run_id) and host.name not in stopped:
                    stopped.append(host.name)
            except StageError as exc:
                ctx.log.error("%s: %s", node.name, exc)
                failed.append(f"{node.name} ({exc.message})")
            finally:
                host.close()
        revoked = revoke_leftover_leases(config, ctx)
        if failed:
            done = f"; stopped workers on {', '.join(stopped)}" if stopped else ""
            raise StageError(
                f"could not stop the workers on {'; '.join(failed)}{done}",
                hint="make the node reachable and run autodeploy down again",
            )
        if not stopped and not revoked:
            return None
        parts = [f"workers on {', '.join(stopped)}"] if stopped else []
        if revoked:
            parts.append(f"{revoked} stale etcd lease(s) revoked")
        return "; ".join(parts)

    # ------------------------------------------------------------------------------------ helpers

    def _from_pid_file(self, host: Host, directory: str, index: int) -> Detached | None:
        read = host.run(f"cat {shlex.quote(directory)}/node_{index}.pid 2>/dev/null", check=False)
        parts = read.stdout.split()
        if len(parts) != 2:
            return None
        return Detached(
            f"node_{index}",
            int(parts[0]),
            int(parts[1]),
            f"{directory}/node_{index}.log",
            f"{directory}/node_{index}.pid",
        )

    def _running_here(self, host: Host, directory: str, index: int, digest: str) -> Detached | None:
        """This run's node script, still running from the same generated files (else None; a stale one is stopped)."""
        process = self._from_pid_file(host, directory, index)
        if process is None or not host.alive(process):
            return None
        launched = host.run(
            f"cat {shlex.quote(directory)}/.launched-files 2>/dev/null", check=False
        ).stdout.strip()
        if launched == digest:
            return process
        host.stop(process, grace_s=15)  # started from other files: replace it
        return None

    def _wait_until_ready(
        self,
        ctx: StageContext,
        placement: Placement,
        hosts: Mapping[int, Host],
        processes: Mapping[int, Detached],
        frontend: str,
    ) -> None:
        config = ctx.config
        served = config.model.served_name or ""
        expected: dict[str, int] = placement.expected_instances
        total = sum(expected.values())
        progress = ctx.display.progress("workers registered", total=total)
        deadline = time.monotonic() + config.launch.ready_timeout_s
        last_alive_check = 0.0
        smoke_error = ""
        while True:
            now = time.monotonic()
            if now - last_alive_check >= 2.0:
                last_alive_check = now
                for index, process in processes.items():
                    if not hosts[index].alive(process):
                        raise self._crashed(ctx, hosts[index], process, placement, index)
            readiness = probe_frontend(frontend, served)
            registered = sum(min(readiness.count(c), n) for c, n in expected.items())
            progress.update(completed=registered)
            if registered == total and readiness.model_listed:
                ok, smoke_error = smoke_request(frontend, served)
                if ok:
                    ctx.log.info("ready: %s; smoke request answered", _counts(readiness, expected))
                    return
            if now >= deadline:
                state = _counts(readiness, expected)
                listed = "listed" if readiness.model_listed else "not listed"
                detail = f"; smoke request: {smoke_error}" if smoke_error else ""
                warning = self._last_warning(hosts, processes)
                detail += f"; last warning: {warning}" if warning else ""
                raise StageError(
                    f"not ready after {config.launch.ready_timeout_s:.0f}s: {state}, model {listed}{detail}",
                    hint="see the node logs in logs/launch.<node>.log; raise launch.ready_timeout_s for big models",
                )
            time.sleep(POLL_S)

    def _last_warning(self, hosts: Mapping[int, Host], processes: Mapping[int, Detached]) -> str:
        """The newest WARN/ERROR line of the node logs, as evidence for a launch that never got ready."""
        found = ""
        for index, process in processes.items():
            with contextlib.suppress(Exception):
                lines = hosts[index].tail(process.log, 400).splitlines()
                for line in reversed(lines):
                    plain = _ANSI.sub("", line)
                    if " WARN " in plain or " ERROR " in plain:
                        found = f"{hosts[index].name} {plain.strip()[:300]}"
                        break
        return found

    def _crashed(
        self, ctx: StageContext, host: Host, process: Detached, placement: Placement, index: int
    ) -> StageError:
        tail = host.tail(process.log, 40)
        ctx.log.error("node script on %s exited; log tail:\n%s", host.name, tail)
        worker = "the node script"
        for line in reversed(tail.splitlines()):
            if "exited with code" in line and "[autodeploy node" in line:
                worker = line.split("]", 1)[1].strip().split(" (pid")[0]
                break
        lines = [_ANSI.sub("", line).strip() for line in tail.splitlines() if line.strip()]
        own = [line for line in lines if line.startswith(f"[{worker}]")] or lines
        raised = [line for line in own if _RAISED.search(line)]  # a Python traceback's last line
        errors = [line for line in own if "error" in line.lower() and "[autodeploy node" not in line]
        evidence = (raised or errors or own or ["no output"])[-1][:300]
        return StageError(
            f"{worker} on {host.name} exited before every worker registered ({evidence})",
            hint=f"the full output is in logs/launch.{host.name}.log; fix the cause and rerun",
            host=host.name,
            worker=worker,
            tail=tail,
        )

    def _stop_after_failure(
        self, ctx: StageContext, hosts: Mapping[int, Host], started: Mapping[int, Detached]
    ) -> list[str]:
        """Stop what this attempt started; returns '<node> (why)' for each node it could not stop."""
        left: list[str] = []
        for index, process in started.items():
            host = hosts[index]
            try:
                ctx.log.info("node %d: stopping after the failure: %s", index, host.stop(process))
                remove_container(ctx.config, host, index, ctx.run_id)
            except StageError as exc:
                left.append(f"{host.name} ({exc.message})")
        return left

    def _check_frontend_port(
        self, ctx: StageContext, hosts: Mapping[int, Host], placement: Placement
    ) -> None:
        """Refuse to start when another process (another run's frontend, say) holds the frontend's port.

        A node script of this very run that is still running is fine: it is reused, not started twice.
        """
        node = placement.frontend.node
        port = placement.frontend.port
        host = hosts.get(node)
        if host is None:
            return
        holder = host.listeners([port]).get(port)
        if holder is None:
            return
        ours = self._from_pid_file(host, host.path(ctx.remote_dir + "/generated"), node)
        if ours is not None and host.alive(ours):
            return
        raise StageError(
            f"port {port} on {host.name} (the frontend's, dynamo.frontend_port) is already taken by {holder}",
            hint="stop that deployment (autodeploy down with its pipeline file) or choose another "
            "dynamo.frontend_port",
            host=host.name,
            port=port,
        )

    def _collect_logs(
        self, ctx: StageContext, hosts: Mapping[int, Host], processes: Mapping[int, Detached]
    ) -> None:
        """Copy each node script's log into <run>/logs/launch.<node>.log (the last LOG_LINES_KEPT lines).

        Written through ctx.write_text, so a secret a worker printed never reaches the run directory.
        A node that cannot be read is noted in the stage log: evidence must not hide the failure itself.
        """
        for index, process in processes.items():
            host = hosts[index]
            try:
                text = host.tail(process.log, LOG_LINES_KEPT)
            except StageError as exc:
                ctx.log.warning("could not read the node log of %s: %s", host.name, exc.message)
                continue
            ctx.write_text(f"logs/launch.{host.name}.log", text)


def container_name(run_id: str, index: int) -> str:
    """Named after the run id (unique per run directory): two runs never remove each other's containers."""
    return f"autodeploy-{run_id}-node{index}"


def node_command(
    config: PipelineConfig,
    directory: str,
    model_path: str,
    script: str,
    index: int,
    image: str | None,
    run_id: str,
    facts: NodeRuntime,
) -> str:
    """The command that runs a node script: directly, or in the Dynamo image (launch.runtime).

    In a container the `docker run` client stays in the foreground, so stopping it (TERM) is proxied
    to the script, whose trap stops the workers; --init forwards signals inside, and --rm removes it.
    The image's own user runs it, with the node's files and checkpoint mounted at fixed container paths.
    """
    if config.launch.runtime == "host":
        return "exec " + shlex.join(["bash", f"{directory}/{script}"])
    if not image:
        raise StageError(
            "launch.runtime is container but the build stage recorded no image", hint="rerun --from build"
        )
    words = ["docker", "run", "--rm", "--init", "--name", container_name(run_id, index)]
    words += ["--net=host", "--ipc=host", *container_options(config, facts, directory, model_path)]
    if _secret_env(config):
        words += ["-e", "HF_TOKEN"]  # by name: the value comes from the client's environment, not argv
    # A container left by a crashed earlier launch would block the name.
    cleanup = f"docker rm -f {shlex.quote(container_name(run_id, index))} >/dev/null 2>&1; "
    return cleanup + "exec " + shlex.join([*words, image, "bash", f"{CONTAINER_RUN_DIR}/{script}"])


def prepare_node(
    ctx: StageContext, host: Host, directory: str, model_path: str, image: str | None
) -> NodeRuntime:
    """What the node has (RDMA, the image's user), and files the container's user can read.

    Raises:
        StageError: a file of the run or of the checkpoint is unreadable by the image's user (naming it and
            the chmod that fixes it); launch.rdma is on without a device.
    """
    config = ctx.config
    facts = probe(config, host, image)
    ctx.log.info("node %s: workers run as %s, RDMA %s", host.name, facts.user, "yes" if facts.rdma else "no")
    if config.launch.runtime != "container" or not image:
        return facts
    # Generated files are written with the SSH user's umask; the image's user must read them all.
    host.run(f"chmod -R a+rX {shlex.quote(directory)}")
    blocked = unreadable_in_container(host, image, directory, model_path, config.launch.container_mounts)
    if blocked is not None:
        on_node = blocked.replace(CONTAINER_MODEL_DIR, model_path, 1).replace(CONTAINER_RUN_DIR, directory, 1)
        raise StageError(
            f"{host.name}: the container's user ({facts.user}) cannot read {on_node}",
            hint=f"on {host.name}: chmod -R a+rX {shlex.quote(model_path)} (or run the image as another user)",
            host=host.name,
        )
    return facts


def remove_container(config: PipelineConfig, host: Host, index: int, run_id: str) -> bool:
    """Remove this node's container if there is one (a KILLed docker client leaves it running)."""
    if config.launch.runtime != "container":
        return False
    name = shlex.quote(container_name(run_id, index))
    found = host.run(f"docker ps -aq --filter name=^{name}$ 2>/dev/null", check=False).stdout.strip()
    if found:
        host.run(f"docker rm -f {name}", check=False)
    return bool(found)


def revoke_leftover_leases(config: PipelineConfig, ctx: StageContext) -> int:
    """Revoke the etcd leases behind any instance key left in this run's namespace (a killed worker's
    registration otherwise lingers for the lease TTL, about 30 s, and the frontend keeps routing to it)."""
    import base64

    endpoint = f"http://{config.head.address}:{config.infra.etcd_port}"
    prefix = f"v1/instances/{config.dynamo.namespace}/".encode()
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    try:
        found = _post_json(
            f"{endpoint}/v3/kv/range",
            {
                "key": base64.b64encode(prefix).decode(),
                "range_end": base64.b64encode(end).decode(),
                "keys_only": True,
            },
        )
    except (OSError, ValueError, urllib.error.URLError):
        return 0  # etcd is not running: nothing can linger in it
    leases = {kv.get("lease") for kv in found.get("kvs", []) if kv.get("lease") not in (None, "0")}
    for lease in leases:
        with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
            _post_json(f"{endpoint}/v3/lease/revoke", {"ID": lease})
            ctx.log.info("revoked etcd lease %s", lease)
    return len(leases)


def _post_json(url: str, body: Mapping[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        found = json.loads(response.read().decode() or "{}")
    return found if isinstance(found, dict) else {}


def _secret_env(config: PipelineConfig) -> dict[str, str]:
    token = hub_token(config)
    return {"HF_TOKEN": token} if token else {}


def _counts(readiness: Readiness, expected: Mapping[str, int]) -> str:
    return ", ".join(f"{readiness.count(c)}/{n} {c}" for c, n in expected.items())


def _digest(files: Mapping[str, str]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(dict(files), sort_keys=True).encode()).hexdigest()[:16]
