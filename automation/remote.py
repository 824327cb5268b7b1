"""Run commands on the nodes: one Host interface, LocalHost (subprocess) and SSHHost (fabric) behind it."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import select
import shlex
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from automation.errors import RemoteCommandError, StageError

if TYPE_CHECKING:
    from paramiko import Channel, PKey, SSHClient, Transport

    from automation.config import Node, PipelineConfig

TAIL_LINES = 30
HostT = TypeVar("HostT", bound="Host")
ResultT = TypeVar("ResultT")
# What a Stream read returns at most: big enough that a GB/s pipe costs few Python calls.
_CHUNK_OUT = 1 << 20
# Called with the count of file bytes just sent, as a copy goes.
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class Listener:
    """What listens on a port: the process name and pid, when `ss` may say (root, or the same user)."""

    process: str | None
    pid: int | None

    def __str__(self) -> str:
        return f"{self.process} (pid {self.pid})" if self.process else "another process"


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
    def put(
        self, local: Path, remote: str, files: Sequence[str] | None = None, progress: Progress | None = None
    ) -> None:
        """Copy a file or a directory tree to `remote` on the host (parents created, files replaced).

        `files`: for a directory, send only these (paths relative to it); everything else at `remote`
        is left as it is. `progress` is called with the count of file bytes just sent, as the copy goes.

        Raises:
            StageError: a named file is not under `local`, or a source file cannot be read.
            HostUnreachableError: the connection to the node broke during the copy.
            RemoteCommandError: the node could not write the files (its tar failed: disk full, permissions).
        """

    @abstractmethod
    def open_stream(self, command: str) -> Stream:
        """Start a bash command on the host whose stdin and stdout are raw byte streams of the caller's.

        For bulk data between nodes (`docker save` on one, `docker load` on another) and for long
        commands whose output is read as it comes (an image build). The command's stderr is kept
        (its tail is in wait()'s result). Same user, port, key and host-key checks as run().
        """

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
        directory = self.path(directory)
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
        target = shlex.quote(self.path(path))
        return self.run(f"tail -n {lines} {target} 2>/dev/null", check=False, timeout=30).stdout

    def listeners(self, ports: Sequence[int]) -> dict[int, Listener]:
        """Which of `ports` something already listens on (TCP), on the host."""
        result = self.run("ss -ltnpH 2>/dev/null || true", timeout=30)
        taken: dict[int, Listener] = {}
        for line in result.stdout.splitlines():
            fields = line.split()
            if len(fields) < 4:
                continue
            port_text = fields[3].rsplit(":", 1)[-1]
            if not port_text.isdigit() or int(port_text) not in ports:
                continue
            process = re.search(r'users:\(\("([^"]+)",pid=(\d+)', line)
            taken[int(port_text)] = (
                Listener(process.group(1), int(process.group(2))) if process else Listener(None, None)
            )
        return taken

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


class Stream(ABC):
    """A command running on a host with its stdin and stdout connected to this process (see Host.open_stream).

    Reads and writes block; a command that exits closes its stdout (read returns b"").
    kill() ends it from this side, so nothing is left running on the host: its stdin closes (a
    `docker load` reading a cut stream fails and keeps nothing) and its stdout breaks (a `docker save`
    writing into it dies of the broken pipe).
    """

    def __init__(self, host: str, command: str) -> None:
        self.host = host
        self.command = command

    @abstractmethod
    def read(self, size: int = _CHUNK_OUT) -> bytes:
        """Up to `size` bytes of the command's stdout; b"" once it is closed."""

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Send all of `data` to the command's stdin (BrokenPipeError when the command stopped reading)."""

    @abstractmethod
    def close_input(self) -> None:
        """End the command's stdin (it reads EOF)."""

    @abstractmethod
    def wait(self, timeout: float | None = None) -> Result:
        """Wait for the command to exit; its exit code and the tail of its stderr (stdout: "")."""

    @abstractmethod
    def kill(self) -> None:
        """Stop the command now (idempotent)."""


class _ProcessStream(Stream):
    """A local child process: the command itself, or an `ssh` client running it on a node."""

    def __init__(
        self, host: str, command: str, argv: list[str], scratch: tempfile.TemporaryDirectory[str]
    ) -> None:
        super().__init__(host, command)
        self._scratch = scratch
        self._errors = Path(scratch.name) / "stderr"
        with self._errors.open("wb") as err:
            self._process = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, start_new_session=True
            )

    def read(self, size: int = _CHUNK_OUT) -> bytes:
        assert self._process.stdout is not None
        data: bytes = self._process.stdout.read1(size)  # type: ignore[attr-defined]
        return data

    def write(self, data: bytes) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(data)

    def close_input(self) -> None:
        if self._process.stdin is not None and not self._process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self._process.stdin.close()

    def wait(self, timeout: float | None = None) -> Result:
        self.close_input()
        try:
            status = self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RemoteCommandError(
                self.host,
                _short_command(self.command),
                None,
                self._stderr(),
                hint=f"it ran longer than {timeout:.0f}s",
            ) from None
        said = self._stderr()
        self._cleanup()
        return Result(status, "", said)

    def kill(self) -> None:
        if self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, 9)
            self._process.wait()
        self._cleanup()

    def _stderr(self) -> str:
        try:
            return _tail(self._errors.read_text(errors="replace"))
        except OSError:
            return ""

    def _cleanup(self) -> None:
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        with contextlib.suppress(OSError):
            self._scratch.cleanup()


class _ChannelStream(Stream):
    """A command on an exec channel of a node's paramiko connection (when there is no ssh client)."""

    def __init__(self, host: str, command: str, channel: Channel) -> None:
        super().__init__(host, command)
        self._channel = channel
        self._errors = bytearray()
        channel.settimeout(_STALLED_S)

    def read(self, size: int = _CHUNK_OUT) -> bytes:
        data = self._channel.recv(size)
        while self._channel.recv_stderr_ready():
            self._errors.extend(self._channel.recv_stderr(_CHUNK))
        return data

    def write(self, data: bytes) -> None:
        try:
            self._channel.sendall(memoryview(data))  # type: ignore[arg-type]
        except OSError as exc:
            raise BrokenPipeError(str(exc)) from None

    def close_input(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            self._channel.shutdown_write()

    def wait(self, timeout: float | None = None) -> Result:
        self.close_input()
        _, errors, finished = _collect(self._channel, timeout)
        self._errors.extend(errors)
        self._channel.close()
        said = _tail(self._errors.decode(errors="replace"))
        if not finished:
            raise RemoteCommandError(
                self.host, _short_command(self.command), None, said, hint="it did not end in time"
            )
        return Result(self._channel.exit_status, "", said)

    def kill(self) -> None:
        self._channel.close()


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

    def put(
        self, local: Path, remote: str, files: Sequence[str] | None = None, progress: Progress | None = None
    ) -> None:
        chosen = _selection(local, files, self.name)
        target = self.path(remote)
        if not chosen:
            return
        if not local.is_dir():
            self.run(f"mkdir -p {shlex.quote(str(Path(target).parent))}")
            self.run(f"cp -a {shlex.quote(str(local))} {shlex.quote(target)}")
        elif files is None:
            self.run(
                f"mkdir -p {shlex.quote(target)} && cp -a {shlex.quote(str(local))}/. {shlex.quote(target)}/"
            )
        else:
            names = " ".join(shlex.quote(name) for _, name in chosen)
            self.run(
                f"mkdir -p {shlex.quote(target)} && cd {shlex.quote(str(local))} && "
                f"cp -a --parents -- {names} {shlex.quote(target)}/"
            )
        if progress is not None:
            progress(
                sum(path.stat().st_size for path, _ in chosen if path.is_file() and not path.is_symlink())
            )

    def open_stream(self, command: str) -> Stream:
        scratch = tempfile.TemporaryDirectory(prefix="autodeploy-stream-")
        return _ProcessStream(self.name, command, ["bash", "-c", command], scratch)


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
        # Bulk copies (put) go through the OpenSSH client when there is one: its C transport keeps up
        # with a raw `tar | ssh` pipe, where paramiko's per-packet Python work tops out near 60 % of it
        # (tests/perf/bench_checkpoint_copy.py). It is pinned to the host key paramiko verified.
        self.openssh: str | None = shutil.which("ssh")

    @property
    def target(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.address}:{self.port}"

    def _connect(self) -> Any:
        if self._connection is not None and self._connection.is_connected:
            return self._connection
        self._drop()
        import paramiko
        from fabric import Connection

        connect_kwargs: dict[str, Any] = {
            "timeout": self.connect_timeout_s,
            "banner_timeout": self.connect_timeout_s,
            "auth_timeout": self.connect_timeout_s,
            "transport_factory": _transport,
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
        revoked = _load_known_hosts(client, self.known_hosts)
        client.set_missing_host_key_policy(_HostKeyPolicy(self.host_keys, self.known_hosts, revoked))
        try:
            connection.open()
            server_key = client.get_transport().get_remote_server_key()
        except _RevokedHostKey:
            raise self._revoked() from None
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
        if _key_id(server_key) in revoked:  # a key both listed and revoked: the revocation wins
            connection.close()
            raise self._revoked()
        self._connection = connection
        return connection

    def _drop(self) -> None:
        """Forget the cached connection (closing what is left of it)."""
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None

    def _alive(self) -> bool:
        """The cached connection still stands (its transport thread has not died)."""
        transport = self._connection.client.get_transport() if self._connection is not None else None
        # The transport thread records why it died before it closes the channels, so a channel that
        # closed because the connection broke always finds saved_exception set here.
        return bool(transport is not None and transport.is_active() and transport.saved_exception is None)

    def _session(self, doing: str) -> Channel:
        """A new exec channel. A cached connection that died since its last use is opened again, once."""
        import paramiko

        reused = self._connection is not None
        for attempt in (1, 2):
            transport: Transport = self._connect().client.get_transport()
            try:
                return transport.open_session(window_size=_WINDOW, max_packet_size=_PACKET)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if attempt == 2 or not reused:
                    raise self._lost(doing, exc) from None
                self._drop()
        raise AssertionError("unreachable")

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

    def _lost(self, doing: str, exc: BaseException | None = None) -> HostUnreachableError:
        reason = (str(exc) or type(exc).__name__) if exc is not None else "the connection closed"
        self._drop()  # the next command connects afresh
        return HostUnreachableError(
            f"lost the SSH connection to {self.name} ({self.target}) while {doing}: {reason}",
            hint=f"check that {self.name} is up and its sshd runs (rebooted? out of memory? network?), then rerun; "
            "what was interrupted may or may not have finished there",
            host=self.name,
        )

    def _revoked(self) -> HostUnreachableError:
        return HostUnreachableError(
            f"{self.name} ({self.target}): its host key is marked @revoked in {self.known_hosts}",
            hint="do not connect: ask the node's owner for its new host key and put that in known_hosts",
            host=self.name,
        )

    def _run(self, command: str, timeout: float | None, stdin: str | None = None) -> Result:
        import paramiko

        doing = f"running: {_short_command(command)}"
        channel = self._session(doing)
        try:
            channel.exec_command(f"bash -c {shlex.quote(command)}")
            if stdin is not None:
                # A command that exits without reading its input closes the channel: not an error.
                with contextlib.suppress(OSError):
                    channel.sendall(stdin.encode())
            channel.shutdown_write()
            stdout, stderr, finished = _collect(channel, timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._lost(doing, exc) from None
        finally:
            channel.close()
        out, err = stdout.decode(errors="replace"), stderr.decode(errors="replace")
        if not finished:
            raise RemoteCommandError(
                self.name,
                _short_command(command),
                None,
                _tail(err or out),
                hint=f"it ran longer than {timeout:.0f}s",
            )
        if channel.exit_status == -1 and not self._alive():
            raise self._lost(doing)
        return Result(channel.exit_status, out, err)

    def put(
        self, local: Path, remote: str, files: Sequence[str] | None = None, progress: Progress | None = None
    ) -> None:
        # A tar stream: needs only tar on the node, not the sftp subsystem. It is made as it is sent, a
        # chunk at a time, so memory does not grow with the checkpoint; not compressed, since
        # safetensors do not compress.
        chosen = _selection(local, files, self.name)
        target = self.path(remote)  # connects (and checks the host key) first
        if not chosen:
            return
        into = target if local.is_dir() else str(Path(target).parent)
        if not local.is_dir():
            chosen = [(local, Path(target).name)]
        copy = _Copy(
            chosen=chosen,
            what=f"put {local} -> {target}",
            doing=f"copying {local} to {target}",
            command=f"mkdir -p {shlex.quote(into)} && tar -xf - -C {shlex.quote(into)} --no-same-owner",
        )
        if self.openssh is not None:
            self._put_openssh(self.openssh, copy, progress)
        else:
            self._put_channel(copy, progress)

    def _put_openssh(self, ssh: str, copy: _Copy, progress: Progress | None) -> None:
        """The same tar stream as _put_channel, written into an `ssh` child instead of a paramiko channel.

        Same node, user, port and key as every other command, and the host key is pinned: the child may
        only talk to a server holding the very key this Host's own connection verified (under the
        pipeline's host_keys policy), written to a one-line known_hosts of its own.
        """
        doing = copy.doing
        with tempfile.TemporaryDirectory(prefix="autodeploy-ssh-") as scratch:
            pinned = self._pinned_known_hosts(Path(scratch))
            errors = Path(scratch) / "stderr"
            argv = self._openssh_argv(ssh, pinned, copy.command)
            with errors.open("wb") as err:
                child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
            assert child.stdin is not None
            broken = False
            try:
                _send_tar(copy.chosen, _PipeWriter(child.stdin), progress, self.name)
            except BrokenPipeError:
                broken = True  # the node's tar (or the connection) went away: its status says which
            except BaseException:
                child.kill()
                child.wait()
                raise
            finally:
                with contextlib.suppress(BrokenPipeError):
                    child.stdin.close()
            try:
                status = child.wait(timeout=_STALLED_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
                raise self._lost(doing) from None
            said = errors.read_text(errors="replace")
        if status == 255:  # ssh's own failure: the connection, not the command
            raise self._lost(doing, RuntimeError(_tail(said, 3) or "ssh exited 255")) from None
        if status != 0 or broken:
            raise RemoteCommandError(self.name, copy.what, status, _tail(said))

    def _openssh_argv(self, ssh: str, pinned: Path, command: str) -> list[str]:
        """The `ssh` command line that runs `command` under bash on this node, pinned to its verified key."""
        return [ssh, *self._openssh_options(pinned), self.address, f"bash -c {shlex.quote(command)}"]

    def _openssh_options(self, pinned: Path) -> list[str]:
        options = {
            "BatchMode": "yes",
            "ConnectTimeout": str(max(1, round(self.connect_timeout_s))),
            "StrictHostKeyChecking": "yes",
            "UserKnownHostsFile": str(pinned),
            "GlobalKnownHostsFile": "/dev/null",
            "HostKeyAlias": _PINNED_ALIAS,
            "ServerAliveInterval": "15",
            "ServerAliveCountMax": "4",
            "LogLevel": "ERROR",
        }
        if self.key_file is not None:
            # Only the named key, as for paramiko: no agent, no ~/.ssh identities.
            options.update(IdentitiesOnly="yes", IdentityAgent="none")
        words = ["-p", str(self.port)]
        if self.key_file is not None:
            words += ["-i", str(Path(self.key_file).expanduser())]
        if self.user:
            words += ["-l", self.user]
        for name, value in options.items():
            words += ["-o", f"{name}={value}"]
        return words

    def _put_channel(self, copy: _Copy, progress: Progress | None) -> None:
        """The tar stream over an exec channel of this Host's own paramiko connection."""
        import paramiko

        doing = copy.doing
        channel = self._session(doing)
        try:
            # A node that stops taking data for this long counts as gone.
            channel.settimeout(_STALLED_S)
            channel.exec_command(f"bash -c {shlex.quote(copy.command)}")
            _send_tar(copy.chosen, _ChannelWriter(channel), progress, self.name)
            channel.shutdown_write()
            _, errors, finished = _collect(channel, _STALLED_S)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            # Either the node's tar stopped reading (no space, no permission: it exits with a status
            # and a message) or the connection broke (the transport dies, and the channel with it).
            _, errors, finished = _collect(channel, 30.0)
            if not finished or channel.exit_status == -1:
                raise self._lost(doing, exc) from None
            raise RemoteCommandError(
                self.name,
                copy.what,
                channel.exit_status,
                _tail(errors.decode(errors="replace")),
            ) from None
        finally:
            channel.close()
        if not finished or (channel.exit_status == -1 and not self._alive()):
            raise self._lost(doing)
        if channel.exit_status != 0:
            raise RemoteCommandError(
                self.name,
                copy.what,
                channel.exit_status,
                _tail(errors.decode(errors="replace")),
            )

    def open_stream(self, command: str) -> Stream:
        if self.openssh is None:
            import paramiko

            channel = self._session(f"running: {_short_command(command)}")
            try:
                channel.exec_command(f"bash -c {shlex.quote(command)}")
            except (paramiko.SSHException, EOFError, OSError) as exc:
                channel.close()
                raise self._lost(f"running: {_short_command(command)}", exc) from None
            return _ChannelStream(self.name, command, channel)
        scratch = tempfile.TemporaryDirectory(prefix="autodeploy-ssh-")
        pinned = self._pinned_known_hosts(Path(scratch.name))
        return _ProcessStream(self.name, command, self._openssh_argv(self.openssh, pinned, command), scratch)

    def _pinned_known_hosts(self, directory: Path) -> Path:
        """A one-line known_hosts holding the very key this Host's own connection verified."""
        key = self._connect().client.get_transport().get_remote_server_key()
        pinned = directory / "known_hosts"
        pinned.write_text(f"{_PINNED_ALIAS} {key.get_name()} {key.get_base64()}\n")
        return pinned

    def close(self) -> None:
        self._drop()


def _transport(sock: Any, **kwargs: Any) -> Transport:
    """paramiko's Transport, preferring AES-GCM where the server offers it.

    A copy is CPU-bound in paramiko's per-packet work: with GCM, cipher and integrity are one C call
    per packet, where the default aes-ctr + hmac-sha2 hashes every packet again in a second pass.
    """
    import paramiko

    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    first = tuple(c for c in ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com") if c in options.ciphers)
    options.ciphers = first + tuple(c for c in options.ciphers if c not in first)
    return transport


# A copy writes to the channel in chunks of this size; each becomes SSH packets of what the server accepts.
_CHUNK = 256 << 10
# This side's receive window and packet size for each channel (what the node may send before we read).
_WINDOW = 8 << 20
_PACKET = 1 << 15
_STALLED_S = 300.0


def _collect(channel: Channel, timeout: float | None) -> tuple[bytes, bytes, bool]:
    """Read stdout and stderr until the command's exit status arrives; (stdout, stderr, finished in time)."""
    out, err = bytearray(), bytearray()
    deadline = None if timeout is None else time.monotonic() + timeout

    def drain() -> None:
        while channel.recv_ready():
            out.extend(channel.recv(_CHUNK))
        while channel.recv_stderr_ready():
            err.extend(channel.recv_stderr(_CHUNK))

    # The channel's fileno is a pipe that paramiko signals on new data, on EOF and on close.
    while not channel.eof_received and not channel.closed:
        drain()
        left = 5.0 if deadline is None else deadline - time.monotonic()
        if left <= 0:
            return bytes(out), bytes(err), False
        select.select([channel], [], [], min(left, 5.0))
    drain()
    rest = None if deadline is None else max(0.0, deadline - time.monotonic())
    finished = channel.status_event.wait(rest)
    drain()
    return bytes(out), bytes(err), finished


@dataclass(frozen=True)
class _Copy:
    """One put, whichever transport carries it: what to send, and the node's side of it."""

    chosen: list[tuple[Path, str]]  # (local path, name in the archive)
    what: str  # for a RemoteCommandError
    doing: str  # for a lost-connection error
    command: str  # the node's end: mkdir and tar -x


# The name the pinned known_hosts file gives the node, whatever its address and port.
_PINNED_ALIAS = "autodeploy-node"


class _PipeWriter:
    """The stdin of an `ssh` child as the file tarfile writes to (it only appends)."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self._pipe = pipe
        self._written = 0

    def write(self, data: bytes) -> int:
        self._pipe.write(data)
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written


class _ChannelWriter:
    """The sending side of an exec channel as the file tarfile writes to (it only appends: tell, no seek)."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._written = 0

    def write(self, data: bytes) -> int:
        # A memoryview: paramiko's sendall re-slices what is left after every packet.
        self._channel.sendall(memoryview(data))  # type: ignore[arg-type]
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written


class _CountedReader:
    """A source file for tarfile that reports each chunk read, and names the file if reading fails."""

    def __init__(self, file: IO[bytes], path: Path, host: str, progress: Progress | None) -> None:
        self._file, self._path, self._host, self._progress = file, path, host, progress

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._file.read(size)
        except OSError as exc:
            raise _unreadable(self._path, self._host, exc) from None
        if self._progress is not None and data:
            self._progress(len(data))
        return data


def _send_tar(
    chosen: list[tuple[Path, str]], out: _ChannelWriter | _PipeWriter, progress: Progress | None, host: str
) -> None:
    """Write an uncompressed tar stream of `chosen` (path, name in the archive) to `out`, a chunk at a time."""
    # Mode "w" on a file that only appends: tarfile writes headers and each chunk read straight
    # through, where the stream mode "w|" would copy everything once more through its own buffer.
    with tarfile.open(fileobj=out, mode="w", copybufsize=_CHUNK) as tar:  # type: ignore[call-overload]
        for path, name in chosen:
            try:
                info = tar.gettarinfo(str(path), name)
                source = path.open("rb") if info.isreg() else None
            except OSError as exc:
                raise _unreadable(path, host, exc) from None
            if source is None:
                tar.addfile(info)
                continue
            with source:
                tar.addfile(info, _CountedReader(source, path, host, progress))


def _selection(local: Path, files: Sequence[str] | None, host: str) -> list[tuple[Path, str]]:
    """What put sends, as (path, name relative to `local`): the whole tree, or only the named files."""
    if not local.exists():
        raise StageError(f"cannot copy {local} to {host}: it does not exist", hint="check the source path")
    if not local.is_dir():
        if files is not None:
            raise StageError(f"cannot copy files of {local} to {host}: it is not a directory", host=host)
        return [(local, local.name)]
    if files is None:
        return [(path, path.relative_to(local).as_posix()) for path in sorted(local.rglob("*"))]
    chosen = []
    for name in files:
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts or not (local / relative).is_file():
            raise StageError(
                f"cannot copy {name} to {host}: it is not a file under {local}",
                hint="name the files to send by their path relative to the directory being copied",
                host=host,
            )
        chosen.append((local / relative, relative.as_posix()))
    return chosen


def _unreadable(path: Path, host: str, exc: OSError) -> StageError:
    return StageError(
        f"cannot read {path} to copy it to {host}: {exc.strerror or exc}",
        hint="check that the file exists and is readable here",
        host=host,
    )


# ------------------------------------------------------------------------------------------ host keys


class _RevokedHostKey(Exception):
    """The server presented a key that known_hosts marks @revoked."""


def _key_id(key: PKey) -> tuple[str, str]:
    return key.get_name(), key.get_base64()


def _load_known_hosts(client: SSHClient, path: Path) -> frozenset[tuple[str, str]]:
    """Load path's host keys into client; returns the @revoked keys.

    Read here, not by paramiko's loader, which stops at the first marker line (@cert-authority,
    @revoked) it meets. Host certificates are not supported by paramiko: @cert-authority lines are
    skipped (OpenSSH still uses them).
    """
    from paramiko.hostkeys import HostKeyEntry, InvalidHostKey
    from paramiko.ssh_exception import SSHException

    revoked: set[tuple[str, str]] = set()
    if not path.is_file():
        return frozenset()
    keys = client.get_host_keys()
    for number, raw in enumerate(path.read_text(errors="replace").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            fields = line.split()
            if fields[0] == "@revoked" and len(fields) >= 4:
                revoked.add((fields[2], fields[3]))
            continue
        try:
            entry = HostKeyEntry.from_line(line, number)
        except (InvalidHostKey, SSHException):
            continue  # a line paramiko cannot read (an unknown key type): OpenSSH's business
        if entry is not None and entry.key is not None:
            for name in entry.hostnames:
                keys.add(name, entry.key.get_name(), entry.key)
    return frozenset(revoked)


class _HostKeyPolicy:
    """What to do with a host whose key known_hosts lacks: refuse (known_hosts), learn it (accept_new),
    or let it in unrecorded (insecure). A key marked @revoked is refused whatever the policy."""

    def __init__(self, mode: str, known_hosts: Path, revoked: frozenset[tuple[str, str]]) -> None:
        self.mode = mode
        self.known_hosts = known_hosts
        self.revoked = revoked

    def missing_host_key(self, client: SSHClient, hostname: str, key: PKey) -> None:
        import paramiko

        if _key_id(key) in self.revoked:
            raise _RevokedHostKey(hostname)
        if self.mode == "known_hosts":
            raise paramiko.SSHException(f"Server {hostname!r} not found in known_hosts")
        if self.mode == "accept_new":
            # paramiko names a host on a port other than 22 "[host]:port", as known_hosts does.
            _append_line(self.known_hosts, f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)


def _append_line(path: Path, line: str) -> None:
    """Add one line to the user's known_hosts without rewriting it: a single O_APPEND write, then fsync.

    Concurrent writers (other nodes' threads, ssh itself) each add whole lines; comments and marker
    lines stay as they are. A missing file is created 0600, in a directory created 0700.
    """
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.parent.chmod(0o700)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        size = os.fstat(fd).st_size
        # A file whose last line lacks its newline would otherwise run into the new line.
        lead = b"\n" if size and os.pread(fd, 1, size - 1) != b"\n" else b""
        data = lead + line.encode()
        if os.write(fd, data) != len(data):
            raise OSError(f"short write to {path}")
        os.fsync(fd)
    finally:
        os.close(fd)


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


def on_hosts(hosts: Sequence[HostT], work: Callable[[HostT], ResultT]) -> list[ResultT]:
    """work(host) on every host at once, a thread each; the results in the hosts' order.

    Every call runs to its end; then the first failure, in the hosts' order, is raised.
    """
    results: list[Any] = [None for _ in hosts]
    failures: list[BaseException | None] = [None for _ in hosts]

    def one(index: int) -> None:
        try:
            results[index] = work(hosts[index])
        except BaseException as exc:  # handed to the caller's thread below
            failures[index] = exc

    threads = [
        threading.Thread(target=one, args=(i,), name=f"on-{h.name}", daemon=True) for i, h in enumerate(hosts)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for failure in failures:
        if failure is not None:
            raise failure
    return results


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
