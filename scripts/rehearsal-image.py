#!/usr/bin/env python3
"""The base image of the containerised CPU rehearsal, made by `docker import` of a rootfs built here
(nothing can be pulled): Dynamo's virtual environment and the interpreter it was made with.

    scripts/rehearsal-image.py --tag autodeploy-rehearsal/dynamo-base:local [--venv .venv-dynamo]
                               [--docker-host unix:///...] [--label KEY=VALUE ...] [--no-verify]

The image holds
  - the venv's base interpreter installation at the same absolute path as here (bin/python3.X, the
    standard library without site-packages, tests, bytecode caches, Tk and the static libpython; the
    shared libpython when the interpreter links to it),
  - the venv at /opt/dynamo/venv (pyvenv.cfg still names that interpreter; bin/python* point at it;
    console scripts' shebangs and the activate scripts name /opt/dynamo/venv),
  - every shared library that the interpreter, the standard library's extension modules and the
    venv's *.so files load (by ldd), with the dynamic loader,
  - busybox (static) as /bin/sh with the usual applets, and bash (node scripts are bash scripts),
  - /tmp (1777), /etc/passwd and /etc/group with root and a `dynamo` user (uid 1000, as Dynamo's own
    images from 0.7 on) whose home is /home/dynamo;
with PATH=/opt/dynamo/venv/bin:..., VIRTUAL_ENV, USER dynamo and WORKDIR /tmp. The tar is streamed into
`docker import` (nothing is staged on disk). The engine is $DOCKER_HOST's, or --docker-host's.
At the end the image is checked: `import dynamo` reports ai-dynamo's version and
`python3 -m dynamo.frontend --help` runs, in a container without network.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_IN_IMAGE = "/opt/dynamo/venv"
APPLETS = [
    "sh",
    "ls",
    "cat",
    "id",
    "sleep",
    "env",
    "echo",
    "find",
    "chmod",
    "mkdir",
    "rm",
    "kill",
    "ps",
    "sed",
    "grep",
    "tail",
    "head",
    "true",
    "false",
    "test",
    "[",
    "printf",
    "pwd",
    "cp",
    "mv",
    "ln",
    "touch",
    "wc",
    "sort",
    "uniq",
    "tr",
    "cut",
    "xargs",
    "date",
    "uname",
    "hostname",
    "readlink",
    "realpath",
    "dirname",
    "basename",
    "timeout",
    "stat",
    "tee",
    "which",
    "whoami",
    "nproc",
    "du",
    "df",
    "mktemp",
    "seq",
    "awk",
    "gzip",
    "tar",
    "expr",
    "pidof",
    "sync",
]
# Not needed by a headless server, and Tk would bring in X11: left out of the standard library.
STDLIB_SKIPPED_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__", "tkinter", "idlelib"}
STDLIB_SKIPPED_DIRS |= {"turtledemo"}
CHANGES = [
    f"ENV PATH={VENV_IN_IMAGE}/bin:/usr/local/bin:/usr/bin:/bin",
    f"ENV VIRTUAL_ENV={VENV_IN_IMAGE}",
    "USER dynamo",
    "WORKDIR /tmp",
]
CHECK = "import dynamo, importlib.metadata as m; print(m.version('ai-dynamo'))"


class Rootfs:
    """Entries of the image's root file system, written as a tar stream; parent directories are made
    as they are needed (root's, 0755: the dynamo user must traverse /root to reach the interpreter)."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.names: set[str] = set()
        self.bytes = 0

    def _entry(self, path: str, kind: bytes, mode: int, **fields: object) -> tarfile.TarInfo | None:
        name = path.strip("/")
        if not name or name in self.names:
            return None
        parent = os.path.dirname(name)
        if parent and parent not in self.names:
            self.directory("/" + parent)
        self.names.add(name)
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = int(time.time())
        for key, value in fields.items():
            setattr(info, key, value)
        return info

    def directory(self, path: str, mode: int = 0o755, owner: int = 0) -> None:
        info = self._entry(path, tarfile.DIRTYPE, mode)
        if info is not None:
            info.uid = info.gid = owner
            info.uname = info.gname = "root" if owner == 0 else "dynamo"
            self.tar.addfile(info)

    def symlink(self, path: str, target: str) -> None:
        info = self._entry(path, tarfile.SYMTYPE, 0o777, linkname=target)
        if info is not None:
            self.tar.addfile(info)

    def data(self, path: str, content: bytes, mode: int = 0o644) -> None:
        info = self._entry(path, tarfile.REGTYPE, mode, size=len(content))
        if info is not None:
            self.tar.addfile(info, io.BytesIO(content))
            self.bytes += len(content)

    def file(self, path: str, source: Path, rewrite: Callable[[bytes], bytes] | None = None) -> None:
        """`source`'s content (symlinks followed) at `path`, readable by all; `rewrite` may change it."""
        status = source.stat()
        mode = stat.S_IMODE(status.st_mode) | 0o444
        if mode & 0o111:
            mode |= 0o111
        if rewrite is not None:
            content = rewrite(source.read_bytes())
            if path.strip("/") not in self.names:
                self.data(path, content, mode)
            return
        info = self._entry(path, tarfile.REGTYPE, mode, size=status.st_size, mtime=int(status.st_mtime))
        if info is not None:
            with source.open("rb") as stream:
                self.tar.addfile(info, stream)
            self.bytes += status.st_size

    def tree(
        self,
        source: Path,
        path: str,
        skip_dir: Callable[[Path], bool] = lambda _: False,
        skip_file: Callable[[Path], bool] = lambda _: False,
        rewrite: Callable[[Path], Callable[[bytes], bytes] | None] = lambda _: None,
        relink: Callable[[Path, str], str] = lambda _, target: target,
    ) -> None:
        """`source` at `path`: directories, files and symlinks (kept as symlinks; `relink` may change
        their targets), in a stable order."""
        self.directory(path, stat.S_IMODE(source.stat().st_mode) | 0o555)
        for entry in sorted(source.iterdir(), key=lambda p: p.name):
            destination = f"{path.rstrip('/')}/{entry.name}"
            if entry.is_symlink():
                self.symlink(destination, relink(entry, os.readlink(entry)))
            elif entry.is_dir():
                if not skip_dir(entry):
                    self.tree(entry, destination, skip_dir, skip_file, rewrite, relink)
            elif entry.is_file() and not skip_file(entry):
                self.file(destination, entry, rewrite(entry))

    def library(self, path: str) -> None:
        """A shared library at the path the loader found it, following symlinks to the real file."""
        for _ in range(40):
            if path.strip("/") in self.names:
                return
            if not os.path.islink(path):
                self.file(path, Path(path))
                return
            target = os.readlink(path)
            self.symlink(path, target)
            path = os.path.normpath(os.path.join(os.path.dirname(path), target))


def needed_libraries(files: list[Path]) -> tuple[set[str], set[str]]:
    """The shared libraries (and the loader) that ldd finds for `files`; and those it cannot find."""
    found: set[str] = set()
    missing: set[str] = set()
    for path in files:
        done = subprocess.run(["ldd", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            continue  # static, or not an ELF object
        for line in done.stdout.splitlines():
            if (resolved := re.match(r"\s*(\S+) => (/\S+) \(0x", line)) is not None:
                found.add(os.path.normpath(resolved.group(2)))
            elif (absent := re.match(r"\s*(\S+) => not found", line)) is not None:
                missing.add(f"{absent.group(1)} (for {path})")
            elif (loader := re.match(r"\s*(/\S+) \(0x", line)) is not None:
                found.add(loader.group(1))
    return found, missing


def interpreter_facts(python: Path) -> dict[str, str]:
    probe = (
        "import sys, sysconfig; print(sys.base_prefix); print(sysconfig.get_python_version());"
        "print(sysconfig.get_paths()['stdlib']); print(sys.prefix)"
    )
    lines = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True).stdout
    base_prefix, version, stdlib, prefix = lines.split("\n")[:4]
    return {"base_prefix": base_prefix, "version": version, "stdlib": stdlib, "prefix": prefix}


def build(rootfs: Rootfs, venv: Path) -> dict[str, object]:
    facts = interpreter_facts(venv / "bin" / "python")
    base_prefix, version = Path(facts["base_prefix"]), facts["version"]
    stdlib = Path(facts["stdlib"])
    interpreter = base_prefix / "bin" / f"python{version}"
    if not interpreter.is_file():
        raise SystemExit(f"{interpreter} (the base interpreter of {venv}) is missing")
    old_venv = str(venv.resolve())

    # / with root, the dynamo user's home and a world-writable /tmp
    rootfs.directory("/root", 0o755)  # traversed to reach an interpreter under /root (pyenv)
    rootfs.directory("/tmp", 0o1777)
    rootfs.directory("/home/dynamo", 0o755, owner=1000)
    rootfs.data(
        "/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\ndynamo:x:1000:1000:dynamo:/home/dynamo:/bin/sh\n"
    )
    rootfs.data("/etc/group", b"root:x:0:\ndynamo:x:1000:\n")
    rootfs.data("/etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files dns\n")

    # busybox as /bin/sh and its applets; bash for node scripts
    rootfs.file("/bin/busybox", Path("/bin/busybox"))
    for applet in APPLETS:
        rootfs.symlink(f"/bin/{applet}", "busybox")
    rootfs.symlink("/usr/bin/env", "/bin/busybox")
    elves: list[Path] = []
    if Path("/bin/bash").is_file():
        rootfs.file("/bin/bash", Path("/bin/bash"))
        elves.append(Path("/bin/bash"))

    # the base interpreter at its own path, and its standard library
    rootfs.file(str(interpreter), interpreter)
    rootfs.symlink(str(base_prefix / "bin" / "python3"), f"python{version}")
    elves.append(interpreter)

    def stdlib_dir_skipped(path: Path) -> bool:
        return path.name in STDLIB_SKIPPED_DIRS

    def stdlib_file_skipped(path: Path) -> bool:
        return path.suffix == ".a" or path.name.startswith("_tkinter")

    rootfs.tree(stdlib, str(stdlib), stdlib_dir_skipped, stdlib_file_skipped)
    dynload = stdlib / "lib-dynload"
    elves += [p for p in dynload.glob("*.so") if not stdlib_file_skipped(p)]

    # the venv at /opt/dynamo/venv, still on that interpreter
    def venv_rewrite(path: Path) -> Callable[[bytes], bytes] | None:
        in_bin = path.parent == venv / "bin"
        if path == venv / "pyvenv.cfg" or (in_bin and path.stat().st_size < 1 << 20):
            return lambda content: content.replace(old_venv.encode(), VENV_IN_IMAGE.encode())
        return None

    def venv_relink(path: Path, target: str) -> str:
        if path.parent == venv / "bin" and path.name.startswith("python"):
            return str(interpreter) if path.name == f"python{version}" else f"python{version}"
        return target.replace(old_venv, VENV_IN_IMAGE) if target.startswith(old_venv) else target

    rootfs.tree(venv, VENV_IN_IMAGE, rewrite=venv_rewrite, relink=venv_relink)
    elves += sorted(p for p in venv.rglob("*.so*") if p.is_file() and not p.is_symlink())

    # every shared library all of those load, except those the venv brings itself
    libraries, missing = needed_libraries(elves)
    for library in sorted(libraries):
        if library.startswith(old_venv + "/") or library.startswith(str(venv) + "/"):
            continue
        rootfs.library(library)
    return {"interpreter": interpreter, "libraries": len(libraries), "missing": sorted(missing)}


def docker(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, env=env, check=check)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tag", default="autodeploy-rehearsal/dynamo-base:local")
    parser.add_argument("--venv", type=Path, default=REPO / ".venv-dynamo")
    parser.add_argument("--docker-host", help="the engine to import into (default: $DOCKER_HOST)")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="an image label")
    parser.add_argument("--no-verify", action="store_true", help="skip running the image at the end")
    options = parser.parse_args()
    venv: Path = options.venv.absolute()
    if not (venv / "bin" / "python").exists() or not (venv / "pyvenv.cfg").is_file():
        parser.error(f"{venv} is not a virtual environment (scripts/install-dynamo.sh makes .venv-dynamo)")
    env = dict(os.environ)
    if options.docker_host:
        env["DOCKER_HOST"] = options.docker_host

    started = time.monotonic()
    changes = [*CHANGES, *(f"LABEL {label}" for label in options.label)]
    command = [
        "docker",
        "import",
        *(arg for change in changes for arg in ("--change", change)),
        "-",
        options.tag,
    ]
    importer = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert importer.stdin is not None and importer.stdout is not None
    try:
        with tarfile.open(
            fileobj=importer.stdin, mode="w|", format=tarfile.PAX_FORMAT, bufsize=1 << 20
        ) as tar:
            rootfs = Rootfs(tar)
            facts = build(rootfs, venv)
    except BrokenPipeError:
        pass  # docker import gave up: its own message follows
    finally:
        importer.stdin.close()
    image_id = importer.stdout.read().decode().strip()
    if importer.wait() != 0:
        print(f"docker import {options.tag} failed", file=sys.stderr)
        return 1
    built = time.monotonic() - started
    size = int(docker("image", "inspect", "--format", "{{.Size}}", options.tag, env=env).stdout)
    print(f"{options.tag}: {image_id}")
    print(f"  {size / 2**20:.0f} MiB ({rootfs.bytes / 2**20:.0f} MiB of files streamed) in {built:.1f}s")
    print(f"  interpreter {facts['interpreter']}, {facts['libraries']} shared libraries")
    for absent in facts["missing"]:  # type: ignore[attr-defined]
        print(f"  warning: ldd found no {absent}", file=sys.stderr)
    if options.no_verify:
        return 0

    run = ["run", "--rm", "--network", "none", options.tag]
    started = time.monotonic()
    version = docker(*run, "python3", "-c", CHECK, env=env, check=False)
    if version.returncode != 0:
        print(f"the image cannot import dynamo:\n{version.stderr}", file=sys.stderr)
        return 1
    frontend = docker(*run, "python3", "-m", "dynamo.frontend", "--help", env=env, check=False)
    if frontend.returncode != 0 or "usage" not in frontend.stdout.lower():
        print(f"python3 -m dynamo.frontend --help fails in the image:\n{frontend.stderr}", file=sys.stderr)
        return 1
    checked = time.monotonic() - started
    print(
        f"  checked in {checked:.1f}s: ai-dynamo {version.stdout.strip()}; python3 -m dynamo.frontend --help runs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
