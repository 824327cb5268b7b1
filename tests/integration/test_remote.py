"""remote.Host against real sshd (loopback and network-namespace nodes) and the local machine."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from automation.errors import RemoteCommandError, StageError
from automation.remote import Host, HostUnreachableError, LocalHost, SSHHost
from tests.conftest import REPO
from tests.services import NamespaceCluster, Sshd, SSHKeys, free_port, start_sshd, wait_for


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


@pytest.fixture(params=["local", "ssh", "ssh-channel"])
def host(request: pytest.FixtureRequest, ssh_keys: SSHKeys, loopback_sshd: Sshd, known_hosts: Path):
    """This machine, a loopback sshd node, and the same node with copies over paramiko's own channel
    (what put uses where the controller has no OpenSSH client)."""
    if request.param == "local":
        yield LocalHost("node0", "127.0.0.1")
        return
    ssh = _ssh(ssh_keys, loopback_sshd, known_hosts)
    if request.param == "ssh-channel":
        ssh.openssh = None
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


# ------------------------------------------------------------------------------------- copying files


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_put_sends_only_the_named_files(host: Host, tmp_path: Path) -> None:
    source = _tree(
        tmp_path / "src",
        {"a.txt": b"new a", "b.bin": b"b" * 1000, "sub/c.txt": b"c", "d.txt": b"not asked for"},
    )
    target = _tree(tmp_path / f"dest-{host.name}", {"a.txt": b"old a"})
    host.put(source, str(target), files=["b.bin", "sub/c.txt"])
    assert (target / "b.bin").read_bytes() == b"b" * 1000
    assert (target / "sub" / "c.txt").read_bytes() == b"c"
    assert (target / "a.txt").read_bytes() == b"old a"  # not named: left as it was
    assert not (target / "d.txt").exists()  # not named: not created


def test_put_names_a_file_that_is_not_in_the_source(host: Host, tmp_path: Path) -> None:
    source = _tree(tmp_path / "src", {"a.txt": b"a"})
    with pytest.raises(StageError, match=r"no-such\.bin"):
        host.put(source, str(tmp_path / f"dest-{host.name}"), files=["a.txt", "no-such.bin"])


def test_a_copy_the_node_cannot_write_is_the_nodes_error(host: Host, tmp_path: Path) -> None:
    source = _tree(tmp_path / "src", {"big.bin": os.urandom(8 << 20), "small.txt": b"s"})
    blocker = tmp_path / f"file-{host.name}"
    blocker.write_text("a file where the copy wants a directory")
    with pytest.raises(RemoteCommandError) as caught:
        host.put(source, str(blocker / "model"))
    assert caught.value.host == host.name and "Not a directory" in caught.value.tail


def test_put_streams_a_tree_of_many_megabytes_and_reports_bytes(host: Host, tmp_path: Path) -> None:
    files = {f"model-{i:05d}-of-00003.safetensors": os.urandom(6 << 20) for i in range(3)}
    source = _tree(tmp_path / "src", {**files, "nested/deeper/config.json": b"{}"})
    sent: list[int] = []
    target = tmp_path / f"dest-{host.name}"
    host.put(source, str(target), progress=sent.append)
    for name, data in {**files, "nested/deeper/config.json": b"{}"}.items():
        assert hashlib.sha256((target / name).read_bytes()).digest() == hashlib.sha256(data).digest(), name
    assert sum(sent) == 3 * (6 << 20) + 2


# ------------------------------------------------------------------------------------ ~ in node paths


def test_tilde_paths_are_the_login_users_home(host: Host, tmp_path: Path) -> None:
    home = Path(host.run('printf %s "$HOME"').stdout)
    cwd = Path(host.run("pwd").stdout.strip())
    name = f"autodeploy-tilde-{uuid.uuid4().hex[:8]}"
    (tmp_path / "one.txt").write_text("one")
    try:
        process = host.start_detached("greeter", "echo hello from home", f"~/{name}/run")
        assert process.log == f"{home}/{name}/run/greeter.log"
        wait_for(lambda: "hello from home" in host.tail(f"~/{name}/run/greeter.log"), 10, what="the log")
        host.put(tmp_path / "one.txt", f"~/{name}/files/one.txt")
        assert (home / name / "files" / "one.txt").read_text() == "one"
        assert not (cwd / "~").exists()
    finally:
        shutil.rmtree(home / name, ignore_errors=True)
        shutil.rmtree(cwd / "~" / name, ignore_errors=True)
        with contextlib.suppress(OSError):
            (cwd / "~").rmdir()


# -------------------------------------------------------------------------------- known_hosts upkeep


def _other_key(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    kind, key = Path(f"{path}.pub").read_text().split()[:2]
    return f"{kind} {key}"


def test_accept_new_appends_one_line_and_keeps_the_users_file(
    ssh_keys: SSHKeys, loopback_sshd: Sshd, tmp_path: Path
) -> None:
    other = _other_key(tmp_path, "other")
    original = (
        "# my hosts, kept by hand\n"
        f"@cert-authority *.example.com {other}\n"
        f"@revoked old.example.com {other}\n"
        f"build.example.com,10.1.2.3 {other}\n"
        "\n"
        "# a last comment without a newline"
    ).encode()
    path = tmp_path / "known_hosts"
    path.write_bytes(original)
    path.chmod(0o644)
    host = _ssh(ssh_keys, loopback_sshd, path, host_keys="accept_new")
    assert host.run("echo ok").stdout == "ok\n"
    host.close()
    learned = ssh_keys.known_hosts_line(loopback_sshd.address, loopback_sshd.port).encode()
    assert path.read_bytes() == original + b"\n" + learned
    assert path.stat().st_mode & 0o777 == 0o644  # the user's file, not replaced
    assert _ssh(ssh_keys, loopback_sshd, path).run("echo again").stdout == "again\n"
    assert path.read_bytes() == original + b"\n" + learned


def test_accept_new_creates_a_private_known_hosts(
    ssh_keys: SSHKeys, loopback_sshd: Sshd, tmp_path: Path
) -> None:
    path = tmp_path / "fresh" / "known_hosts"
    _ssh(ssh_keys, loopback_sshd, path, host_keys="accept_new").run("true")
    assert path.read_text() == ssh_keys.known_hosts_line(loopback_sshd.address, loopback_sshd.port)
    assert (path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777) == (0o600, 0o700)


def test_a_revoked_host_key_is_refused(ssh_keys: SSHKeys, loopback_sshd: Sshd, tmp_path: Path) -> None:
    kind, key = Path(f"{ssh_keys.host_key}.pub").read_text().split()[:2]
    path = tmp_path / "known_hosts"
    path.write_text(f"@revoked * {kind} {key}\n")
    for policy in ("known_hosts", "accept_new"):
        with pytest.raises(HostUnreachableError, match="@revoked"):
            _ssh(ssh_keys, loopback_sshd, path, host_keys=policy).run("true")
    assert path.read_text() == f"@revoked * {kind} {key}\n"


# --------------------------------------------------------------------------------- lost connections

# Run on the node: kill the sshd process that serves this very connection (the command's nearest sshd).
_KILL_MY_SSHD = (
    "p=$$; while [ \"$(cat /proc/$p/comm)\" != sshd ]; do p=$(cut -d' ' -f4 /proc/$p/stat); done; kill -9 $p"
)


def _kill_server_side(host: SSHHost) -> None:
    """Kill the sshd process(es) serving host's connection, found by the connection's client port."""
    port = host._connect().client.get_transport().sock.getsockname()[1]
    listing = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( dport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pids = {int(pid) for pid in re.findall(r"pid=(\d+)", listing)}
    assert pids, listing
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def test_a_connection_dropped_mid_command_is_a_clear_error(
    ssh_keys: SSHKeys, loopback_sshd: Sshd, known_hosts: Path
) -> None:
    host = _ssh(ssh_keys, loopback_sshd, known_hosts)
    assert host.run("echo before").stdout == "before\n"
    with pytest.raises(HostUnreachableError) as caught:
        host.run(f"{_KILL_MY_SSHD}; sleep 30", check=False)
    message = caught.value.message
    assert message.startswith(f"lost the SSH connection to node1 (root@127.0.0.1:{loopback_sshd.port})")
    assert "sleep 30" in message and caught.value.hint
    assert host.run("echo after").stdout == "after\n"  # the next command connects again
    host.close()


def _kill_every_server_side(sshd: Sshd) -> None:
    """Kill every sshd process serving a connection to this sshd (the copy's, whichever client made it)."""
    listing = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{sshd.port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pids = {int(pid) for pid in re.findall(r"pid=(\d+)", listing)} - {os.getpid()}
    assert pids, listing
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("transport", ["openssh", "channel"])
def test_a_connection_dropped_mid_copy_is_a_clear_error(
    ssh_keys: SSHKeys, loopback_sshd: Sshd, known_hosts: Path, tmp_path: Path, transport: str
) -> None:
    source = _tree(tmp_path / "src", {f"part{i}.bin": os.urandom(4 << 20) for i in range(4)})
    host = _ssh(ssh_keys, loopback_sshd, known_hosts)
    if transport == "channel":
        host.openssh = None
    killed: list[bool] = []
    sent: list[int] = []

    def kill_once(count: int) -> None:
        # Once data flows (8 MiB is past any pipe buffer, so the copy's connection is up), not before.
        sent.append(count)
        if not killed and sum(sent) >= 8 << 20:
            killed.append(True)
            _kill_every_server_side(loopback_sshd)

    with pytest.raises(HostUnreachableError, match=r"^lost the SSH connection to node1 .*copying"):
        host.put(source, str(tmp_path / "dest"), progress=kill_once)
    host.close()


def test_a_dead_connection_is_opened_again_for_the_next_command(
    ssh_keys: SSHKeys, loopback_sshd: Sshd, known_hosts: Path
) -> None:
    host = _ssh(ssh_keys, loopback_sshd, known_hosts)
    assert host.run("echo one").stdout == "one\n"
    _kill_server_side(host)
    assert host.run("echo two").stdout == "two\n"
    host.close()


def test_a_node_whose_sshd_went_away_is_named(ssh_keys: SSHKeys, tmp_path: Path) -> None:
    sshd = start_sshd(ssh_keys, "127.0.0.1", free_port())
    known = tmp_path / "known_hosts"
    known.write_text(ssh_keys.known_hosts_line(sshd.address, sshd.port))
    host = _ssh(ssh_keys, sshd, known, connect_timeout_s=3)
    try:
        assert host.run("echo up").stdout == "up\n"
        sshd.stop()
        _kill_server_side(host)
        with pytest.raises(HostUnreachableError, match=r"node1 .*root@127\.0\.0\.1:") as caught:
            host.run("true")
        assert "refused" in caught.value.message.lower()
    finally:
        sshd.stop()
        host.close()
