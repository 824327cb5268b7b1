"""Real services for integration tests: sshd on loopback and in network namespaces, etcd, NATS, dockerd.

Each is the Debian package's binary, started as a child of the test process and stopped afterwards.
Nothing here is a mock: tests talk to these over real sockets.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

_TAKEN: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A free port below the ephemeral range (32768+), which outgoing connections use as source ports:
    a port the kernel hands out for binding to 0 can be taken by a client connection a moment later."""
    import random

    while True:
        port = random.randint(10000, 32000)
        if port in _TAKEN:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        _TAKEN.add(port)  # never hand the same port to two services of one test session
        return port


class ServiceExited(AssertionError):
    """Raised by a wait_for probe when the service it waits for has exited: wait_for gives up at once."""


def wait_for(probe, timeout: float = 15.0, what: str = "service") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if probe():
                return
        except ServiceExited:
            raise
        except Exception:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{what} did not come up within {timeout}s")


def http_ok(url: str, needle: str = "") -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200 and needle in response.read().decode()


def require(condition: bool, reason: str) -> None:
    """A missing prerequisite: skipped with its reason on a developer's machine, a failure in CI.

    CI must never pass by skipping what it was meant to test.
    """
    if condition:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"prerequisite missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_root() -> None:
    require(
        os.geteuid() == 0, "integration tests need root (sshd as root, network namespaces); CI runs as root"
    )


@dataclass
class SSHKeys:
    directory: Path
    client_key: Path
    host_key: Path
    authorized_keys: Path

    @classmethod
    def create(cls, directory: Path) -> SSHKeys:
        directory.mkdir(parents=True, exist_ok=True)
        client, host = directory / "id_ed25519", directory / "host_ed25519"
        for key in (client, host):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        authorized = directory / "authorized_keys"
        shutil.copy(f"{client}.pub", authorized)
        authorized.chmod(0o600)
        return cls(directory, client, host, authorized)

    def known_hosts_line(self, address: str, port: int) -> str:
        kind, key = Path(f"{self.host_key}.pub").read_text().split()[:2]
        name = address if port == 22 else f"[{address}]:{port}"
        return f"{name} {kind} {key}\n"


@dataclass
class Sshd:
    address: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    namespace: str | None = None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
            if self.process.poll() is None:
                self.process.kill()


def start_sshd(
    keys: SSHKeys, address: str, port: int, namespace: str | None = None, extra_config: str = ""
) -> Sshd:
    """sshd as root on address:port (inside `namespace` when given); `extra_config` is appended to its
    sshd_config, e.g. `SetEnv DOCKER_HOST=unix:///...` so that its sessions reach a private engine."""
    require_root()
    Path("/run/sshd").mkdir(exist_ok=True)
    config = keys.directory / f"sshd_{address}_{port}.conf"
    extra = extra_config if not extra_config or extra_config.endswith("\n") else extra_config + "\n"
    config.write_text(
        f"ListenAddress {address}\nPort {port}\nHostKey {keys.host_key}\nPidFile none\n"
        "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
        f"KbdInteractiveAuthentication no\nAuthorizedKeysFile {keys.authorized_keys}\nStrictModes no\nUsePAM no\n"
        "MaxStartups 100\nMaxSessions 100\n" + extra
    )
    log = keys.directory / f"sshd_{address}_{port}.log"
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    process = subprocess.Popen(
        [*prefix, "/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    sshd = Sshd(address, port, process, log, namespace)

    def listening() -> bool:
        if process.poll() is not None:
            raise ServiceExited(f"sshd exited: {log.read_text()}")
        check = [*prefix, "bash", "-c", f"exec 3<>/dev/tcp/{address}/{port}"]
        return subprocess.run(check, capture_output=True).returncode == 0

    wait_for(listening, what=f"sshd on {address}:{port}")
    return sshd


@dataclass
class NamespaceCluster:
    """Network namespaces as separate hosts: nodes on a bridge, plus a controller namespace (ctl)."""

    prefix: str
    nodes: list[str]  # namespace names, node i has address <subnet>.(i+1) (10.200.0.(i+1) by default)
    controller: str
    addresses: list[str]
    controller_address: str
    sshds: list[Sshd] = field(default_factory=list)

    def exec_prefix(self, namespace: str | None = None) -> list[str]:
        return ["ip", "netns", "exec", namespace or self.controller]


@contextlib.contextmanager
def namespace_cluster(
    keys: SSHKeys,
    node_count: int = 2,
    *,
    prefix: str | None = None,
    subnet: str = "10.200.0",
    sshd_extra_config: Sequence[str] = (),
) -> Iterator[NamespaceCluster]:
    """Bridge + veths created inside the namespaces only (nothing is added to the root namespace).

    Namespaces are named `<prefix>-n<i>`, `<prefix>-ctl` and `<prefix>-br`; node i has address
    `<subnet>.<i+1>`, the controller `<subnet>.100`. `sshd_extra_config[i]` is appended to node i's
    sshd_config. Two clusters coexist in one process when their prefixes and subnets differ."""
    require_root()
    prefix = prefix or f"ad{os.getpid() % 100000}"
    bridge, controller = f"{prefix}-br", f"{prefix}-ctl"
    nodes = [f"{prefix}-n{i}" for i in range(node_count)]
    addresses = [f"{subnet}.{i + 1}" for i in range(node_count)]
    ctl_address = f"{subnet}.100"
    extras = [*sshd_extra_config, *[""] * node_count][:node_count]

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    created: list[str] = []
    cluster = NamespaceCluster(prefix, nodes, controller, addresses, ctl_address)
    try:
        ip("netns", "add", bridge)
        created.append(bridge)
        ip("-n", bridge, "link", "add", "br0", "type", "bridge")
        ip("-n", bridge, "link", "set", "br0", "up")
        for index, (namespace, address) in enumerate(
            [*zip(nodes, addresses, strict=True), (controller, ctl_address)]
        ):
            ip("netns", "add", namespace)
            created.append(namespace)
            ip(
                "-n",
                bridge,
                "link",
                "add",
                f"p{index}",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                namespace,
            )
            ip("-n", bridge, "link", "set", f"p{index}", "master", "br0", "up")
            ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", namespace, "link", "set", "eth0", "up")
            ip("-n", namespace, "link", "set", "lo", "up")
        for namespace, address, extra in zip(nodes, addresses, extras, strict=True):
            cluster.sshds.append(start_sshd(keys, address, 22, namespace, extra_config=extra))
        yield cluster
    finally:
        for sshd in cluster.sshds:
            sshd.stop()
        for namespace in reversed(created):
            _kill_namespace_processes(namespace)
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def _kill_namespace_processes(namespace: str) -> None:
    pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _stop_process(process: subprocess.Popen[bytes], grace_s: float) -> None:
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_s)
    if process.poll() is None:
        process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)


def _kill_processes_mentioning(path: Path) -> None:
    """SIGKILL what is left of an engine (its containerd, shims): every process whose command line names
    a path under `path` (a log viewer included)."""
    needle = f"{path}/".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)


def _unmount_under(path: Path) -> None:
    """Lazily unmount whatever is mounted under `path` in this mount namespace, deepest first."""
    prefix = str(path.resolve())
    with contextlib.suppress(OSError):
        points = [
            line.split()[4].encode().decode("unicode_escape")
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
        ]
        for point in sorted({p for p in points if p == prefix or p.startswith(prefix + "/")}, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)


@dataclass
class Dockerd:
    socket_path: Path
    process: subprocess.Popen[bytes]
    root: Path
    namespace: str | None = None  # the network namespace it runs in (None: the root namespace)

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def docker(self, *args: str, input_bytes: bytes | None = None) -> str:
        done = subprocess.run(
            ["docker", "-H", self.url, *args], input=input_bytes, capture_output=True, check=True
        )
        return done.stdout.decode()

    def stop(self) -> None:
        """Containers removed, dockerd (and the containerd it started) stopped, its mounts gone."""
        with contextlib.suppress(Exception):
            listed = ["docker", "-H", self.url, "ps", "-aq"]
            ids = subprocess.run(listed, capture_output=True, text=True, timeout=30).stdout.split()
            if ids:
                removal = ["docker", "-H", self.url, "rm", "-f", *ids]
                subprocess.run(removal, capture_output=True, timeout=60)
        _stop_process(self.process, grace_s=15)
        _kill_processes_mentioning(self.root)
        subprocess.run(["umount", str(self.root / "exec" / "netns" / "default")], capture_output=True)
        _unmount_under(self.root)


# Run in the node's network namespace and in a mount namespace of its own (a slave of the root one):
# unlike `ip netns exec`, /sys (and with it the cgroup hierarchy runc needs) is left as it is, and what
# dockerd mounts (overlays, netns files) vanishes with its processes. A system containerd, when there is
# one, is hidden so that dockerd starts its own under its exec root: runc must see dockerd's mounts.
_DOCKERD_IN_NAMESPACE = (
    'if [ -S /run/containerd/containerd.sock ]; then mount -t tmpfs tmpfs /run/containerd; fi; exec "$@"'
)


@functools.cache
def _dockerd_major_version() -> int:
    done = subprocess.run(["dockerd", "--version"], capture_output=True, text=True)
    found = re.search(r"version (\d+)\.", done.stdout)
    return int(found.group(1)) if found else 0


def _daemon_config(root: Path) -> str:
    """daemon.json for an engine of the tests' own (not the machine's /etc/docker/daemon.json). Before
    Docker 23 an engine's ID (`docker info`'s ID) is that of /etc/docker/key.json, shared by every engine
    on the machine unless given a key of its own; from 23 it lives in the data root."""
    config: dict[str, str] = {}
    if 0 < _dockerd_major_version() < 23:
        config["deprecated-key-path"] = str(root / "key.json")
    return json.dumps(config) + "\n"


def start_dockerd(
    root: Path, *, namespace: str | None = None, insecure_registries: Sequence[str] = ()
) -> Dockerd:
    """A Docker engine of the tests' own (data root, exec root, socket, all under `root`); nothing is
    pulled from a registry. With `namespace`, it runs inside that network namespace (its pulls and pushes
    go out from there); its socket is still a file, reachable from every namespace."""
    require_root()
    root.mkdir(parents=True, exist_ok=True)
    sock = root / "docker.sock"
    config = root / "daemon.json"
    config.write_text(_daemon_config(root))
    log_path = root / "dockerd.log"
    command = [
        "dockerd",
        "--config-file",
        str(config),
        "--data-root",
        str(root / "data"),
        "--exec-root",
        str(root / "exec"),
        "-H",
        f"unix://{sock}",
        "--pidfile",
        str(root / "docker.pid"),
        "--bridge",
        "none",
        "--iptables=false",
        *[arg for registry in insecure_registries for arg in ("--insecure-registry", registry)],
    ]
    if namespace:
        command = [
            "nsenter",
            f"--net=/run/netns/{namespace}",
            "--",
            "unshare",
            "--mount",
            "--propagation",
            "slave",
            "--",
            "sh",
            "-c",
            _DOCKERD_IN_NAMESPACE,
            "sh",
            *command,
        ]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    engine = Dockerd(sock, process, root, namespace)

    def up() -> bool:
        if process.poll() is not None:
            raise ServiceExited(f"dockerd exited: {log_path.read_text()[-2000:]}")
        return subprocess.run(["docker", "-H", engine.url, "info"], capture_output=True).returncode == 0

    try:
        wait_for(up, timeout=60, what="dockerd")
    except BaseException:
        engine.stop()
        raise
    return engine


@dataclass
class Registry:
    """A Docker registry (distribution's docker-registry): plain HTTP, no auth, deletes enabled."""

    address: str  # "10.202.0.1:5000"
    process: subprocess.Popen[bytes]
    root: Path
    namespace: str | None = None

    @property
    def endpoint(self) -> str:
        """What image references start with: `<endpoint>/name:tag`."""
        return self.address

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def stop(self) -> None:
        _stop_process(self.process, grace_s=5)


def start_registry(root: Path, address: str, port: int, namespace: str | None = None) -> Registry:
    """/usr/bin/docker-registry serving address:port (inside `namespace` when given), storage under root."""
    require_root()
    require(
        Path("/usr/bin/docker-registry").exists(), "docker-registry is not installed (apt: docker-registry)"
    )
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {address}:{port}\n  secret: {os.urandom(16).hex()}\n"
    )
    log_path = root / "registry.log"
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*prefix, "/usr/bin/docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    registry = Registry(f"{address}:{port}", process, root, namespace)

    def answers() -> bool:
        if process.poll() is not None:
            raise ServiceExited(f"docker-registry exited: {log_path.read_text()[-2000:]}")
        probe = ["curl", "-sf", "-o", "/dev/null", "--max-time", "2", f"{registry.url}/v2/"]
        return subprocess.run([*prefix, *probe], capture_output=True).returncode == 0

    try:
        wait_for(answers, timeout=30, what=f"docker-registry on {registry.address}")
    except BaseException:
        registry.stop()
        raise
    return registry


@dataclass
class DockerCluster:
    """Namespace nodes, each with its own sshd and dockerd (ssh sessions get DOCKER_HOST of their node's
    engine), and a registry in node 0's namespace that every engine may use over plain HTTP."""

    cluster: NamespaceCluster
    engines: list[Dockerd]
    registry: Registry
    keys: SSHKeys
    known_hosts: Path  # the nodes' host key, for UserKnownHostsFile

    @property
    def nodes(self) -> list[str]:
        return self.cluster.nodes

    @property
    def addresses(self) -> list[str]:
        return self.cluster.addresses

    def ssh_argv(self, node: int, *command: str) -> list[str]:
        """ssh from the controller namespace to node `node` as root, checked against known_hosts; the
        remote command runs with exactly the words `command` (each is quoted for the remote shell)."""
        return [
            *self.cluster.exec_prefix(),
            "ssh",
            "-i",
            str(self.keys.client_key),
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            f"root@{self.addresses[node]}",
            shlex.join(command),
        ]

    def pipeline(self, directory: Path, name: str, **dynamo: object) -> Path:
        """A pipeline file (<directory>/<name>.yaml) over these nodes for the build stage: containers of the
        mocker, Dynamo 1.6.1, the nodes reached as root with the tests' key; `dynamo` adds to its section."""
        data = {
            "name": name,
            "model": {"hf_id": "Qwen/Qwen3-8B", "path": str(directory / "model")},
            "system": "h200_sxm",
            "workload": {"isl": 100, "osl": 10},
            "sla": {"ttft_ms": 500, "tpot_ms": 20},
            "cluster": {
                "nodes": [{"host": address, "gpus": 1} for address in self.addresses],
                "work_dir": str(directory / "nodes"),
                "ssh": {
                    "user": "root",
                    "key_file": str(self.keys.client_key),
                    "known_hosts": str(self.known_hosts),
                },
            },
            "checkpoint": {"source": "present"},
            "launch": {"runtime": "container", "engine": "mocker"},
            "dynamo": {"version": "1.6.1", **dynamo},
        }
        path = directory / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    def ssh(self, node: int, *command: str, timeout: float = 120) -> str:
        done = subprocess.run(self.ssh_argv(node, *command), capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"ssh node {node} {' '.join(command)}: rc {done.returncode}: {done.stderr}")
        return done.stdout


@contextlib.contextmanager
def docker_namespace_cluster(
    keys: SSHKeys,
    root: Path,
    node_count: int = 2,
    prefix: str | None = None,
    *,
    subnet: str = "10.202.0",
    registry_port: int = 5000,
) -> Iterator[DockerCluster]:
    """`namespace_cluster` (prefix `adk<pid>`, subnet 10.202.0 by default: it coexists with the default
    one) plus a dockerd per node inside that node's namespace (data under root/n<i>) and a registry in
    node 0's namespace on <node 0>:5000 (storage under root/registry). Nothing is left behind."""
    require_root()
    require(shutil.which("dockerd") is not None, "dockerd is not installed (apt: docker.io)")
    prefix = prefix or f"adk{os.getpid() % 100000}"
    roots = [root / f"n{i}" for i in range(node_count)]
    sockets = [engine_root / "docker.sock" for engine_root in roots]
    registry_address = f"{subnet}.1:{registry_port}"
    extras = [f"SetEnv DOCKER_HOST=unix://{sock}\n" for sock in sockets]
    with namespace_cluster(
        keys, node_count, prefix=prefix, subnet=subnet, sshd_extra_config=extras
    ) as cluster:
        engines: list[Dockerd] = []
        registry: Registry | None = None
        try:
            for namespace, engine_root in zip(cluster.nodes, roots, strict=True):
                engines.append(
                    start_dockerd(engine_root, namespace=namespace, insecure_registries=[registry_address])
                )
            registry = start_registry(
                root / "registry", cluster.addresses[0], registry_port, namespace=cluster.nodes[0]
            )
            known_hosts = root / "known_hosts"
            known_hosts.write_text("".join(keys.known_hosts_line(a, 22) for a in cluster.addresses))
            yield DockerCluster(cluster, engines, registry, keys, known_hosts)
        finally:
            if registry is not None:
                registry.stop()
            with ThreadPoolExecutor(max(1, len(engines))) as pool:  # each takes a second or two
                list(pool.map(Dockerd.stop, engines))


def import_busybox_image(
    engine: Dockerd, workdir: Path, tag: str, *, changes: Sequence[str] = (), filler_bytes: int = 0
) -> str:
    """An image made by `docker import` of a busybox rootfs (sh, cat, ls, sleep, echo, id; /tmp 1777),
    with `docker import --change` lines `changes`, and, when filler_bytes > 0, a file /filler of that
    many random bytes (written in chunks and streamed into docker: never held in memory). Returns the
    image id."""
    workdir.mkdir(parents=True, exist_ok=True)
    rootfs = Path(tempfile.mkdtemp(prefix="busybox-rootfs-", dir=workdir))
    try:
        (rootfs / "bin").mkdir()
        (rootfs / "tmp").mkdir()
        (rootfs / "tmp").chmod(0o1777)
        shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
        for applet in ("sh", "cat", "ls", "sleep", "echo", "id", "env", "true"):
            (rootfs / "bin" / applet).symlink_to("busybox")
        if filler_bytes > 0:
            chunk = 1 << 20
            with (rootfs / "filler").open("wb") as filler:
                left = filler_bytes
                while left > 0:
                    filler.write(os.urandom(min(chunk, left)))
                    left -= chunk
        command = ["docker", "-H", engine.url, "import"]
        for change in changes:
            command += ["--change", change]
        with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
            done = subprocess.run([*command, "-", tag], stdin=tar.stdout, capture_output=True, text=True)
            assert tar.stdout is not None
            tar.stdout.close()
        if tar.returncode != 0 or done.returncode != 0:
            raise AssertionError(f"docker import {tag} failed (tar rc {tar.returncode}): {done.stderr}")
        return done.stdout.strip()
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def import_service_images(engine: Dockerd, workdir: Path) -> tuple[str, str]:
    """etcd and NATS images made by `docker import` of a local rootfs: busybox, the host's etcd and
    nats-server binaries and the glibc they load. The NATS image's entrypoint is nats-server, as upstream."""
    rootfs = workdir / "rootfs"
    for sub in ("bin", "usr/local/bin", "lib/x86_64-linux-gnu", "lib64", "tmp"):
        (rootfs / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in ("sh", "ls", "cat", "sleep"):
        with contextlib.suppress(FileExistsError):
            (rootfs / "bin" / applet).symlink_to("busybox")
    shutil.copy("/usr/bin/etcd", rootfs / "usr/local/bin/etcd")
    shutil.copy("/usr/sbin/nats-server", rootfs / "usr/local/bin/nats-server")
    shutil.copy("/lib/x86_64-linux-gnu/libc.so.6", rootfs / "lib/x86_64-linux-gnu/libc.so.6")
    shutil.copy("/lib64/ld-linux-x86-64.so.2", rootfs / "lib64/ld-linux-x86-64.so.2")
    tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True).stdout
    env = "ENV PATH=/usr/local/bin:/bin"
    engine.docker("import", "--change", env, "-", "autodeploy-test/etcd:local", input_bytes=tar)
    engine.docker(
        "import",
        "--change",
        env,
        "--change",
        'ENTRYPOINT ["nats-server"]',
        "-",
        "autodeploy-test/nats:local",
        input_bytes=tar,
    )
    return "autodeploy-test/etcd:local", "autodeploy-test/nats:local"
