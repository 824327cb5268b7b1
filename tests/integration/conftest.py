"""Session-wide real services for the integration tests (see tests/services.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.services import (
    DockerCluster,
    Dockerd,
    NamespaceCluster,
    Sshd,
    SSHKeys,
    docker_namespace_cluster,
    free_port,
    import_service_images,
    namespace_cluster,
    require,
    start_dockerd,
    start_sshd,
)


@pytest.fixture(scope="session")
def ssh_keys(tmp_path_factory: pytest.TempPathFactory) -> SSHKeys:
    return SSHKeys.create(tmp_path_factory.mktemp("ssh"))


@pytest.fixture(scope="session")
def loopback_sshd(ssh_keys: SSHKeys) -> Iterator[Sshd]:
    sshd = start_sshd(ssh_keys, "127.0.0.1", free_port())
    yield sshd
    sshd.stop()


@pytest.fixture
def known_hosts(ssh_keys: SSHKeys, loopback_sshd: Sshd, tmp_path: Path) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text(ssh_keys.known_hosts_line(loopback_sshd.address, loopback_sshd.port))
    return path


@pytest.fixture(scope="session")
def netns(ssh_keys: SSHKeys) -> Iterator[NamespaceCluster]:
    with namespace_cluster(ssh_keys, node_count=2) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dockerd, tuple[str, str]]]:
    """A private Docker engine and the etcd/NATS images made from a local rootfs (nothing is pulled)."""
    root = tmp_path_factory.mktemp("docker")
    engine = start_dockerd(root)
    try:
        yield engine, import_service_images(engine, root)
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def docker_cluster(ssh_keys: SSHKeys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerCluster]:
    """Two namespace nodes (10.202.0.1, 10.202.0.2; controller 10.202.0.100), each with its own sshd and
    dockerd (`ssh node docker ...` reaches that node's engine), and a registry at 10.202.0.1:5000 that
    both engines use over plain HTTP. Coexists with `netns` (other namespaces, other subnet)."""
    with docker_namespace_cluster(ssh_keys, tmp_path_factory.mktemp("dkc")) as cluster:
        yield cluster


DYNAMO_PYTHON = Path(os.environ.get("AUTODEPLOY_DYNAMO_PYTHON", REPO / ".venv-dynamo" / "bin" / "python"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(
        DYNAMO_PYTHON.exists(), f"{DYNAMO_PYTHON} is missing: run scripts/install-dynamo.sh (make test does)"
    )
    path = tmp_path_factory.mktemp("model") / "tiny-qwen3"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make-tiny-model.py"), str(path)], check=True)
    return path
