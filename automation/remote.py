"""Run commands on the nodes: one Host interface, LocalHost (subprocess) and SSHHost (fabric) behind it."""

from __future__ import annotations

import contextlib
import functools
import io
import shlex
import socket
import subprocess
import tarfile
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automation.errors import RemoteCommandError, StageError

if TYPE_CHECKING:
    from automation.config import Node, PipelineConfig

TAIL_LINES = 30


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class Detached:
    """A process started with start_detached: its pid, the start time that makes the pid unambiguous, its log."""

    name: str
    pid: int
    start_ticks: int
    log: str
    pid_file: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "start_ticks": self.start_ticks,
            "log": self.log,
            "pid_file": self.pid_file,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Detached:
        return cls(**{k: data[k] for k in ("name", "pid", "start_ticks", "log", "pid_file")})


class HostUnreachableError(StageError):
    """A node that cannot be reached (connection refused, timeout, unknown host key)."""


# The process's start time in clock ticks since boot (field 22 of /proc/PID/stat, after the comm field,
# which may itself contain spaces). A pid plus its start time names one process: a recycled pid differs.
_START_TICKS = "start_ticks() { sed -E 's/^.*\\) //' /proc/$1/stat 2>/dev/null | cut -d' ' -f20; }"
# A process is alive while /proc/PID exists and it is not a zombie waiting for PID 1 to reap it.
_ALIVE = (
    "alive() { [ -r /proc/$1/stat ] && [ \"$(sed -E 's/^.*\\) //' /proc/$1/stat | cut -d' ' -f1)\" != Z ]; }"
)


class Host(ABC):
    """A node autodeploy controls. Everything is built on run(); subclasses provide run, put and close."""

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = address
        self._home: str | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, {self.address})"

    @abstractmethod
    def _run(self, command: str, timeout: float | None, stdin: str | None = None) -> Result: ...

    @abstractmethod
    def put(self, local: Path, remote: str) -> None:
        """Copy a file or a directory tree to `remote` on the host (parents created, files replaced)."""

    def close(self) -> None:  # noqa: B027 - a no-op for hosts that hold no connection
        """Release the connection, if any."""

    def run(
        self, command: str, *, check: bool = True, timeout: float | None = 120.0, stdin: str | None = None
    ) -> Result:
        """Run a bash command on the host; `stdin` is fed to it (how secrets travel: never in argv).

        Raises:
            RemoteCommandError: the command exited non-zero (with check), carrying host, command, exit code
                and the last lines of its output.
        """
        result = self._run(command, timeout, stdin)
        if check and not result.ok:
            raise RemoteCommandError(
                self.name, _short_command(command), result.exit_code, _tail(result.stderr or result.stdout)
            )
        return result

    def start_detached(
        self,
        name: str,
        command: str,
        directory: str,
        env: Mapping[str, str] | None = None,
        secret_env: Mapping[str, str] | None = None,
    ) -> Detached:
        """Start `command` in its own session (survives the connection), logging to <directory>/<name>.log.

        The pid file holds "<pid> <start ticks>", so a later stop() never kills a recycled pid.
        `secret_env` values travel on stdin, so they appear in no command line, file or error message.
        """
        log, pid_file = f"{directory}/{name}.log", f"{directory}/{name}.pid"
        secrets = dict(secret_env or {})
        # Read before the detached subshell, whose stdin is /dev/null.
        reads = "".join(f"IFS= read -r {k}; export {k}; " for k in secrets)
        exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in (env or {}).items())
        script = (
            f"{_START_TICKS}; {reads}mkdir -p {shlex.quote(directory)} && cd {shlex.quote(directory)} || exit 1; "
            f"( {exports}exec setsid nohup bash -c {shlex.quote(command)} ) > {shlex.quote(log)} 2>&1 < /dev/null & "
            'pid=$!; for _ in 1 2 3 4 5 6 7 8 9 10; do t=$(start_ticks $pid); [ -n "$t" ] && break; sleep 0.01; done; '
            f'echo "$pid ${{t:-0}}" > {shlex.quote(pid_file)}; echo "$pid ${{t:-0}}"'
        )
        stdin = "".join(f"{v}\n" for v in secrets.values()) if secrets else None
        pid, ticks = self.run(script, timeout=30, stdin=stdin).stdout.split()
        return Detached(name=name, pid=int(pid), start_ticks=int(ticks), log=log, pid_file=pid_file)

    def alive(self, process: Detached) -> bool:
        """The very process that was started (same pid and start time) is still running."""
        script = f'{_START_TICKS}; {_ALIVE}; alive {process.pid} && [ "$(start_ticks {process.pid})" = {process.start_ticks} ]'
        return self.run(script, check=False, timeout=30).ok

    def stop(self, process: Detached, grace_s: float = 10.0) -> str:
        """TERM the process's whole session, wait up to grace_s, then KILL what is left.

        Returns "not running", "stopped" or "killed" (it did not exit within the grace period).
        """
        if not self.alive(process):
            return "not running"
        group = process.pid  # setsid made it the leader of its own process group
        steps = max(1, int(grace_s * 10))
        script = (
            f"{_ALIVE}; members() {{ for p in $(pgrep -g {group}); do alive $p && echo $p; done; }}; "
            f"kill -TERM -- -{group} 2>/dev/null || kill -TERM {group} 2>/dev/null; "
            f'for _ in $(seq {steps}); do [ -z "$(members)" ] && echo stopped && exit 0; sleep 0.1; done; '
            f"kill -KILL -- -{group} 2>/dev/null; kill -KILL {group} 2>/dev/null; echo killed"
        )
        return self.run(script, timeout=grace_s + 30).stdout.strip() or "stopped"

    def tail(self, path: str, lines: int = TAIL_LINES) -> str:
        """The last lines of a file on the host ('' if it does not exist)."""
        return self.run(f"tail -n {lines} {shlex.quote(path)} 2>/dev/null", check=False, timeout=30).stdout

    def path(self, path: str) -> str:
        """`path` as this host's processes must see it: a leading `~` or `~/` becomes the login user's home.

        The home directory is asked once per host and kept, so every path of a run resolves the same way
        (a quoted `~` would otherwise reach etcd, rm and mkdir as a literal directory named `~`).
        """
        if path != "~" and not path.startswith("~/"):
            if path.startswith("~"):
                raise StageError(
                    f"{path}: only ~ and ~/ are understood in node paths (not ~user)",
                    hint="give an absolute path in cluster.work_dir / model.path",
                    host=self.name,
                )
            return path
        if self._home is None:
            home = self.run('printf %s "$HOME"', timeout=30).stdout.strip()
            if not home.startswith("/"):
                raise StageError(
                    f"{self.name}: the login user's home directory is unknown ($HOME is '{home}')",
                    hint="give an absolute cluster.work_dir",
                    host=self.name,
                )
            self._home = home.rstrip("/") or "/"
        return self._home + path[1:]

    def expand(self, path: str) -> str:
        """Alias of path(), kept for the callers that still use it."""
        return self.path(path)


class LocalHost(Host):
    """The machine autodeploy runs on (node 0 in a normal deployment)."""

    def _run(self, command: str, timeout: float | None, stdin: str | None = None) -> Result:
        try:
            done = subprocess.run(
                ["bash", "-c", command],
                capture_output=True,
                text=True,
                timeout=timeout,
                input=stdin,
                stdin=None if stdin is not None else subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise RemoteCommandError(
                self.name,
                _short_command(command),
                None,
                _tail(_text(exc.stderr) or _text(exc.stdout)),
                hint=f"it ran longer than {timeout:.0f}s",
            ) from None
        return Result(done.returncode, done.stdout, done.stderr)

    def put(self, local: Path, remote: str) -> None:
        target = self.expand(remote)
        self.run(f"mkdir -p {shlex.quote(target if local.is_dir() else str(Path(target).parent))}")
        if local.is_dir():
            self.run(f"cp -a {shlex.quote(str(local))}/. {shlex.quote(target)}/")
        else:
            self.run(f"cp -a {shlex.quote(str(local))} {shlex.quote(target)}")


class SSHHost(Host):
    """A node reached over SSH with fabric: key auth, one reused connection, host keys checked."""

    def __init__(
        self,
        name: str,
        address: str,
        *,
        port: int = 22,
        user: str | None = None,
        key_file: Path | None = None,
        host_keys: str = "known_hosts",
        known_hosts: Path | None = None,
        connect_timeout_s: float = 10.0,
    ) -> None:
        super().__init__(name, address)
        self.port = port
        self.user = user
        self.key_file = key_file
        self.host_keys = host_keys
        self.known_hosts = (known_hosts or Path("~/.ssh/known_hosts")).expanduser()
        self.connect_timeout_s = connect_timeout_s
        self._connection: Any = None

    @property
    def target(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.address}:{self.port}"

    def _connect(self) -> Any:
        if self._connection is not None and self._connection.is_connected:
            return self._connection
        import paramiko
        from fabric import Connection

        connect_kwargs: dict[str, Any] = {
            "timeout": self.connect_timeout_s,
            "banner_timeout": self.connect_timeout_s,
            "auth_timeout": self.connect_timeout_s,
        }
        if self.key_file is not None:
            if not Path(self.key_file).expanduser().is_file():
                raise HostUnreachableError(
                    f"cluster.ssh.key_file: {self.key_file} does not exist (needed to reach {self.name})",
                    hint="give the private key's path",
                    host=self.name,
                )
            # Only the named key: an agent or ~/.ssh keys must not decide which identity is used.
            connect_kwargs.update(
                key_filename=str(Path(self.key_file).expanduser()), look_for_keys=False, allow_agent=False
            )
        connection = Connection(self.address, user=self.user, port=self.port, connect_kwargs=connect_kwargs)
        client = connection.client
        if self.known_hosts.exists():
            client.load_host_keys(str(self.known_hosts))
        policy = {
            "known_hosts": paramiko.RejectPolicy(),
            "accept_new": _LearnNewHostKey(self.known_hosts),
            "insecure": paramiko.WarningPolicy(),
        }[self.host_keys]
        client.set_missing_host_key_policy(policy)
        try:
            connection.open()
        except paramiko.BadHostKeyException:
            raise HostUnreachableError(
                f"{self.name} ({self.target}): its host key differs from the one in {self.known_hosts}",
                hint="if the node was reinstalled, remove its old line from known_hosts; otherwise do not connect",
                host=self.name,
            ) from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc) or ("Server " in str(exc) and "not found" in str(exc)):
                raise HostUnreachableError(
                    f"{self.name} ({self.target}): its host key is not in {self.known_hosts}",
                    hint=f"ssh-keyscan -p {self.port} {self.address} >> {self.known_hosts}, "
                    "or set cluster.ssh.host_keys: accept_new",
                    host=self.name,
                ) from None
            raise self._unreachable(exc) from None
        except (OSError, EOFError) as exc:
            raise self._unreachable(exc) from None
        self._connection = connection
        return connection

    def _unreachable(self, exc: BaseException) -> HostUnreachableError:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        per_address = getattr(exc, "errors", None)  # paramiko's NoValidConnectionsError: {address: OSError}
        if per_address:
            first = next(iter(per_address.values()))
            reason = getattr(first, "strerror", None) or str(first)
        if isinstance(exc, socket.timeout | TimeoutError):
            reason = f"no answer within {self.connect_timeout_s:.0f}s"
        return HostUnreachableError(
            f"cannot reach {self.name} over SSH ({self.target}): {reason}",
            hint="check that sshd runs there and that cluster.ssh (user, port, key_file) is right",
            host=self.name,
        )

    def _run(self, command: str, timeout: float | None, stdin: str | None = None) -> Result:
        from invoke.exceptions import CommandTimedOut

        connection = self._connect()
        stream: Any = io.StringIO(stdin) if stdin is not None else False
        try:
            done = connection.run(
                f"bash -c {shlex.quote(command)}", hide=True, warn=True, timeout=timeout, in_stream=stream
            )
        except CommandTimedOut as exc:
            raise RemoteCommandError(
                self.name,
                _short_command(command),
                None,
                _tail(exc.result.stderr or exc.result.stdout),
                hint=f"it ran longer than {timeout:.0f}s",
            ) from None
        return Result(done.exited, done.stdout, done.stderr)

    def put(self, local: Path, remote: str) -> None:
        # A tar stream over an exec channel: needs only tar on the node, not the sftp subsystem.
        target = self.expand(remote)
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz") as tar:
            if local.is_dir():
                for path in sorted(local.rglob("*")):
                    tar.add(path, arcname=str(path.relative_to(local)), recursive=False)
            else:
                tar.add(local, arcname=Path(target).name)
        into = target if local.is_dir() else str(Path(target).parent)
        command = f"mkdir -p {shlex.quote(into)} && tar -xzf - -C {shlex.quote(into)} --no-same-owner"
        channel = self._connect().client.get_transport().open_session()
        try:
            channel.exec_command(f"bash -c {shlex.quote(command)}")
            channel.sendall(archive.getvalue())
            channel.shutdown_write()
            errors = b""
            while not channel.exit_status_ready() or channel.recv_stderr_ready():
                if channel.recv_stderr_ready():
                    errors += channel.recv_stderr(65536)
                else:
                    time.sleep(0.01)
            status = channel.recv_exit_status()
        finally:
            channel.close()
        if status != 0:
            raise RemoteCommandError(
                self.name, f"put {local} -> {target}", status, _tail(errors.decode(errors="replace"))
            )

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class _LearnNewHostKey:
    """accept_new: trust a host the first time and remember its key; a changed key is still refused."""

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        client.save_host_keys(str(self.known_hosts))


@functools.cache
def is_this_machine(host: str) -> bool:
    """True if `host` resolves to an address of this machine (binding to it succeeds only here)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    for family, _, _, _, sockaddr in infos:
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((sockaddr[0], 0))
            return True
    return False


def host_for(config: PipelineConfig, node: Node) -> Host:
    """The Host for a node: local when `connect` says so (or, with auto, when it is this machine)."""
    assert node.name is not None and node.address is not None
    local = node.connect == "local" or (node.connect == "auto" and is_this_machine(node.host))
    if local:
        return LocalHost(node.name, node.address)
    ssh = config.cluster.ssh
    return SSHHost(
        node.name,
        node.host,
        port=node.ssh_port or ssh.port,
        user=ssh.user,
        key_file=ssh.key_file,
        host_keys=ssh.host_keys,
        known_hosts=ssh.known_hosts,
        connect_timeout_s=ssh.connect_timeout_s,
    )


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _text(value: str | bytes | None) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")


def _short_command(command: str, limit: int = 160) -> str:
    flat = " ".join(command.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
