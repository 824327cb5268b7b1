"""remote.Host against real sshd (loopback and network-namespace nodes) and the local machine."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from automation.errors import RemoteCommandError
from automation.remote import Host, HostUnreachableError, LocalHost, SSHHost
from tests.conftest import REPO
from tests.services import NamespaceCluster, Sshd, SSHKeys, free_port, wait_for


def _ssh(keys: SSHKeys, sshd: Sshd, known_hosts: Path, **kwargs: object) -> SSHHost:
    return SSHHost(
        "node1",
        sshd.address,
        port=sshd.port,
        user="root",
        key_file=keys.client_key,
        known_hosts=known_hosts,
        **kwargs,
    )  # type: ignore[arg-type]


@pytest.fixture(params=["local", "ssh"])
def host(request: pytest.FixtureRequest, ssh_keys: SSHKeys, loopback_sshd: Sshd, known_hosts: Path):
    if request.param == "local":
        yield LocalHost("node0", "127.0.0.1")
        return
    ssh = _ssh(ssh_keys, loopback_sshd, known_hosts)
    yield ssh
    ssh.close()


def test_run_returns_output_and_failures_carry_evidence(host: Host) -> None:
    assert host.run("echo hello").stdout == "hello\n"
    with pytest.raises(RemoteCommandError) as caught:
        host.run("echo first; echo 'the reason' >&2; exit 7")
    error = caught.value
    assert (error.host, error.remote_exit_code) == (host.name, 7)
    assert "the reason" in error.tail
    assert "exit 7" in str(error)
    assert host.run("exit 3", check=False).exit_code == 3


def test_put_copies_files_and_trees(host: Host, tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "a.sh").write_text("echo a\n")
    (source / "a.sh").chmod(0o755)
    (source / "sub" / "b.txt").write_text("b")
    target = tmp_path / f"dest-{host.name}"
    host.put(source, str(target))
    assert (target / "sub" / "b.txt").read_text() == "b"
    assert (target / "a.sh").stat().st_mode & 0o111
    host.put(source / "a.sh", str(tmp_path / "single" / "x.sh"))
    assert (tmp_path / "single" / "x.sh").read_text() == "echo a\n"


def test_detached_process_outlives_the_connection_and_stops(host: Host, tmp_path: Path) -> None:
    directory = str(tmp_path / f"run-{host.name}")
    process = host.start_detached(
        "worker", "echo started $GREETING; sleep 60 & sleep 60", directory, {"GREETING": "hi there"}
    )
    host.close()  # an SSH disconnect must not stop it
    assert host.alive(process)
    assert Path(process.pid_file).read_text().split() == [str(process.pid), str(process.start_ticks)]
    assert "started hi there" in host.tail(process.log)
    assert host.stop(process, grace_s=5) == "stopped"
    assert not host.alive(process)
    states = host.run(
        f"for p in $(pgrep -g {process.pid}); do sed -E 's/^.*\\) //' /proc/$p/stat | cut -c1; done"
    )
    assert set(states.stdout.split()) <= {
        "Z"
    }  # the whole group is gone (zombies wait for PID 1 to reap them)
    assert host.stop(process) == "not running"


def test_secrets_reach_the_process_but_no_command_line_or_error(host: Host, tmp_path: Path) -> None:
    directory = str(tmp_path / f"sec-{host.name}")
    process = host.start_detached(
        "secretive", 'echo "token=$HF_TOKEN"; sleep 60', directory, secret_env={"HF_TOKEN": "hf_s3cr3t value"}
    )
    try:
        wait_for(lambda: "token=hf_s3cr3t value" in host.tail(process.log), 5, what="the token in the log")
        listing = host.run("ps -eo args").stdout
        assert "hf_s3cr3t" not in listing
    finally:
        host.stop(process)


def test_stop_kills_what_ignores_term(host: Host, tmp_path: Path) -> None:
    process = host.start_detached("stubborn", "trap '' TERM; sleep 60", str(tmp_path / f"s-{host.name}"))
    assert host.stop(process, grace_s=0.5) == "killed"
    assert not host.alive(process)


def test_a_recycled_pid_is_not_the_same_process(host: Host, tmp_path: Path) -> None:
    process = host.start_detached("short", "sleep 60", str(tmp_path / f"r-{host.name}"))
    impostor = type(process)(
        process.name, process.pid, process.start_ticks + 1, process.log, process.pid_file
    )
    assert not host.alive(impostor)
    assert host.stop(impostor) == "not running"
    assert host.alive(process)
    host.stop(process)


def test_unknown_host_key_is_refused_by_default(
    ssh_keys: SSHKeys, loopback_sshd: Sshd, tmp_path: Path
) -> None:
    host = _ssh(ssh_keys, loopback_sshd, tmp_path / "empty_known_hosts")
    with pytest.raises(HostUnreachableError) as caught:
        host.run("true")
    assert "host key is not in" in caught.value.message
    assert "ssh-keyscan" in caught.value.hint and "accept_new" in caught.value.hint


def test_accept_new_learns_the_key_and_then_checks_it(
    ssh_keys: SSHKeys, loopback_sshd: Sshd, tmp_path: Path
) -> None:
    path = tmp_path / "learned"
    host = _ssh(ssh_keys, loopback_sshd, path, host_keys="accept_new")
    assert host.run("echo ok").stdout == "ok\n"
    host.close()
    assert f"[127.0.0.1]:{loopback_sshd.port}" in path.read_text()
    assert _ssh(ssh_keys, loopback_sshd, path).run("echo again").stdout == "again\n"


def test_changed_host_key_is_refused(ssh_keys: SSHKeys, loopback_sshd: Sshd, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, key = Path(f"{other}.pub").read_text().split()[:2]
    path = tmp_path / "known_hosts"
    path.write_text(f"[127.0.0.1]:{loopback_sshd.port} {kind} {key}\n")
    for policy in ("known_hosts", "accept_new"):
        with pytest.raises(HostUnreachableError, match="host key differs"):
            _ssh(ssh_keys, loopback_sshd, path, host_keys=policy).run("true")


def test_sshd_down_is_a_clear_error(ssh_keys: SSHKeys, tmp_path: Path) -> None:
    host = SSHHost(
        "node7",
        "127.0.0.1",
        port=free_port(),
        user="root",
        key_file=ssh_keys.client_key,
        known_hosts=tmp_path / "kh",
        connect_timeout_s=3,
    )
    with pytest.raises(HostUnreachableError) as caught:
        host.run("true")
    assert caught.value.message.startswith("cannot reach node7 over SSH (root@127.0.0.1:")
    assert "refused" in caught.value.message.lower()


def test_a_missing_key_file_is_named(tmp_path: Path) -> None:
    host = SSHHost("node3", "127.0.0.1", key_file=tmp_path / "no_such_key", known_hosts=tmp_path / "kh")
    with pytest.raises(HostUnreachableError, match=r"cluster\.ssh\.key_file: .*no_such_key does not exist"):
        host.run("true")


def test_namespace_nodes_are_separate_hosts(
    netns: NamespaceCluster, ssh_keys: SSHKeys, tmp_path: Path
) -> None:
    """From the controller namespace, each node answers over SSH with its own address and its own network."""
    script = textwrap.dedent(f"""
        import json
        from pathlib import Path
        from automation.remote import SSHHost
        out = []
        for index, address in enumerate({netns.addresses!r}):
            host = SSHHost(f"node{{index}}", address, user="root", key_file=Path({str(ssh_keys.client_key)!r}),
                           host_keys="accept_new", known_hosts=Path({str(tmp_path / "kh")!r}))
            out.append(host.run("ip -4 -o addr show dev eth0").stdout)
            host.close()
        print(json.dumps(out))
    """)
    done = subprocess.run(
        [*netns.exec_prefix(), sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    for address, line in zip(netns.addresses, seen, strict=True):
        assert f"inet {address}/24" in line
