"""Real services for integration tests: sshd on loopback and in network namespaces, etcd, NATS, dockerd.

Each is the Debian package's binary, started as a child of the test process and stopped afterwards.
Nothing here is a mock: tests talk to these over real sockets.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

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


def wait_for(probe, timeout: float = 15.0, what: str = "service") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if probe():
                return
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


def start_sshd(keys: SSHKeys, address: str, port: int, namespace: str | None = None) -> Sshd:
    require_root()
    Path("/run/sshd").mkdir(exist_ok=True)
    config = keys.directory / f"sshd_{address}_{port}.conf"
    config.write_text(
        f"ListenAddress {address}\nPort {port}\nHostKey {keys.host_key}\nPidFile none\n"
        "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
        f"KbdInteractiveAuthentication no\nAuthorizedKeysFile {keys.authorized_keys}\nStrictModes no\nUsePAM no\n"
        "MaxStartups 50\nMaxSessions 50\n"
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
            raise AssertionError(f"sshd exited: {log.read_text()}")
        check = [*prefix, "bash", "-c", f"exec 3<>/dev/tcp/{address}/{port}"]
        return subprocess.run(check, capture_output=True).returncode == 0

    wait_for(listening, what=f"sshd on {address}:{port}")
    return sshd


@dataclass
class NamespaceCluster:
    """Network namespaces as separate hosts: nodes on a bridge, plus a controller namespace (ctl)."""

    prefix: str
    nodes: list[str]  # namespace names, node i has address 10.200.0.(i+1)
    controller: str
    addresses: list[str]
    controller_address: str
    sshds: list[Sshd] = field(default_factory=list)

    def exec_prefix(self, namespace: str | None = None) -> list[str]:
        return ["ip", "netns", "exec", namespace or self.controller]


@contextlib.contextmanager
def namespace_cluster(keys: SSHKeys, node_count: int = 2) -> Iterator[NamespaceCluster]:
    """Bridge + veths created inside the namespaces only (nothing is added to the root namespace)."""
    require_root()
    prefix = f"ad{os.getpid() % 100000}"
    bridge, controller = f"{prefix}-br", f"{prefix}-ctl"
    nodes = [f"{prefix}-n{i}" for i in range(node_count)]
    addresses = [f"10.200.0.{i + 1}" for i in range(node_count)]
    ctl_address = "10.200.0.100"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    created: list[str] = []
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
        cluster = NamespaceCluster(prefix, nodes, controller, addresses, ctl_address)
        for namespace, address in zip(nodes, addresses, strict=True):
            cluster.sshds.append(start_sshd(keys, address, 22, namespace))
        yield cluster
    finally:
        for sshd in locals().get("cluster", NamespaceCluster(prefix, [], "", [], "")).sshds:
            sshd.stop()
        for namespace in reversed(created):
            _kill_namespace_processes(namespace)
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def _kill_namespace_processes(namespace: str) -> None:
    pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@dataclass
class Dockerd:
    socket_path: Path
    process: subprocess.Popen[bytes]
    root: Path

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def docker(self, *args: str, input_bytes: bytes | None = None) -> str:
        done = subprocess.run(
            ["docker", "-H", self.url, *args], input=input_bytes, capture_output=True, check=True
        )
        return done.stdout.decode()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            ids = self.docker("ps", "-aq").split()
            if ids:
                self.docker("rm", "-f", *ids)
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=15)
        if self.process.poll() is None:
            self.process.kill()
        subprocess.run(["umount", str(self.root / "exec" / "netns" / "default")], capture_output=True)


def start_dockerd(root: Path) -> Dockerd:
    """A Docker engine of the tests' own (data root, exec root, socket); nothing is pulled from a registry."""
    require_root()
    root.mkdir(parents=True, exist_ok=True)
    sock = root / "docker.sock"
    log = (root / "dockerd.log").open("w")
    process = subprocess.Popen(
        [
            "dockerd",
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
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    engine = Dockerd(sock, process, root)

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"dockerd exited: {(root / 'dockerd.log').read_text()[-2000:]}")
        return subprocess.run(["docker", "-H", engine.url, "info"], capture_output=True).returncode == 0

    wait_for(up, timeout=60, what="dockerd")
    return engine


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
