"""Released ai-dynamo wheels from PyPI, and their own worker and frontend argument parsers run on argvs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Module = Literal["trtllm", "frontend"]

# The child prints its answer after this marker: the release's own import-time code may print too.
_MARKER = "@@dynamo-release-result@@"


class WheelUnavailable(RuntimeError):
    """pip could not download the release (no network, no such version)."""


@dataclass(frozen=True)
class Result:
    """One argv run through one release's parser."""

    argv: tuple[str, ...]
    ok: bool
    # argparse's message ("unrecognized arguments: --x"), the release's own logged error, or the exception
    # its post-parse validation raised; empty when ok.
    error: str = ""
    # The parsed config (argparse namespace or the release's Config object) as plain data; values that are
    # not JSON are their repr.
    parsed: dict[str, Any] = field(default_factory=dict)


def cache_dir() -> Path:
    return Path(os.environ.get("AUTODEPLOY_WHEEL_CACHE", Path.home() / ".cache" / "autodeploy" / "wheels"))


def wheel_dir(version: str) -> Path:
    """The unpacked ai-dynamo wheel of `version` (the directory holding its `dynamo/`), downloaded once.

    A release PyPI only has as post releases (1.2.0 -> 1.2.0.post1) resolves to the newest of those; see
    pypi_version."""
    cache = cache_dir()
    resolved = pypi_version(version)
    unpacked = cache / f"ai_dynamo-{resolved}"
    if (unpacked / "dynamo").is_dir():
        return unpacked
    wheel = _find_wheel(cache, resolved)
    if wheel is None:
        raise WheelUnavailable(f"ai-dynamo=={resolved} was resolved but its wheel is not in {cache}")
    # Unpack beside the target and rename, so a concurrent or interrupted run never sees half a tree.
    staging = Path(tempfile.mkdtemp(prefix=f".ai_dynamo-{resolved}-", dir=cache))
    try:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(staging)
        try:
            staging.rename(unpacked)
        except OSError:
            if not (unpacked / "dynamo").is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return unpacked


def pypi_version(version: str) -> str:
    """The ai-dynamo version on PyPI that is `version`: itself, or where PyPI has only post releases of it
    (1.2.0, 1.3.0 were published as 1.2.0.post1, 1.3.0.post1) the newest of those. Downloads the wheel."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    alias = cache / f"ai_dynamo-{version}.alias"
    if alias.exists():
        return alias.read_text().strip()
    if _find_wheel(cache, version):
        return version
    listed = _download(cache, version)
    if listed is None:
        return version
    posts = [v for v in listed.split(", ") if re.fullmatch(re.escape(version) + r"\.post\d+", v)]
    if not posts:
        raise WheelUnavailable(f"PyPI has no ai-dynamo=={version} nor a post release of it: {listed[-1500:]}")
    newest = max(posts, key=lambda v: int(v.rsplit("post", 1)[1]))
    if _find_wheel(cache, newest) is None and _download(cache, newest) is not None:
        raise WheelUnavailable(f"pip download ai-dynamo=={newest} failed")
    alias.write_text(newest + "\n")
    return newest


def _download(cache: Path, version: str) -> str | None:
    """pip download the wheel into cache: None on success, else the versions pip lists ("" if none)."""
    process = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"),
            *("--disable-pip-version-check", "-d", str(cache), f"ai-dynamo=={version}"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if process.returncode == 0 and _find_wheel(cache, version):
        return None
    found = re.search(r"\(from versions: ([^)]*)\)", process.stderr)
    if found is None and "Could not find a version" not in process.stderr:
        # Not "no such version" but no network, no pip, ...: nothing to resolve against.
        raise WheelUnavailable(f"pip download ai-dynamo=={version} failed: {process.stderr.strip()[-2000:]}")
    return found.group(1) if found else ""


def _find_wheel(cache: Path, version: str) -> Path | None:
    matches = sorted(cache.glob(f"ai_dynamo-{version}-*.whl"))
    return matches[0] if matches else None


def parse_worker(version: str, argvs: list[list[str]]) -> list[Result]:
    """Each argv (the words after `python -m dynamo.trtllm`) through the release's TRT-LLM worker parser."""
    return _parse(version, "trtllm", argvs)


def parse_frontend(version: str, argvs: list[list[str]]) -> list[Result]:
    """Each argv (the words after `python -m dynamo.frontend`) through the release's frontend parser."""
    return _parse(version, "frontend", argvs)


def flags(version: str, module: Module) -> set[str]:
    """Every option string the release's parser(s) for `module` register."""
    return set(_run_child(version, {"module": module, "mode": "flags"})["flags"])


def actions(version: str, module: Module) -> list[dict[str, Any]]:
    """The release's options with their dest, default and choices (for the facts sheet)."""
    return list(_run_child(version, {"module": module, "mode": "flags"})["actions"])


def stubbed_modules(version: str, module: Module) -> list[str]:
    """Which imports the child had to stub to load the release's parser (for the record)."""
    return list(_run_child(version, {"module": module, "mode": "flags"})["stubbed"])


def _parse(version: str, module: Module, argvs: list[list[str]]) -> list[Result]:
    answer = _run_child(version, {"module": module, "mode": "parse", "argvs": argvs})
    return [
        Result(argv=tuple(argv), ok=item["ok"], error=item["error"], parsed=item["parsed"])
        for argv, item in zip(argvs, answer["results"], strict=True)
    ]


def _run_child(version: str, request: dict[str, Any]) -> dict[str, Any]:
    release = wheel_dir(version)
    # Defaults of many flags come from DYN_* variables: the host's must not change what is parsed.
    env = {key: value for key, value in os.environ.items() if not key.startswith("DYN_")}
    env.pop("PYTHONPATH", None)
    with tempfile.TemporaryDirectory(prefix="dynamo-parse-") as workdir:
        process = subprocess.run(
            [sys.executable, "-I", "-c", _CHILD, str(release)],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=180,
            cwd=workdir,
            env=env,
        )
    for line in reversed(process.stdout.splitlines()):
        if line.startswith(_MARKER):
            return json.loads(line[len(_MARKER) :])  # type: ignore[no-any-return]
    raise RuntimeError(
        f"Dynamo {version} {request['module']} parser child failed (rc {process.returncode}):\n"
        f"{process.stderr[-4000:]}"
    )


# The child: stdlib only, run with `python -I` so that neither the project nor the user's site can leak in
# beyond the interpreter's own site-packages. It loads the release's own parser module and drives it the way
# the release's main() does; only imports are stubbed, never argparse or the release's flag definitions.
_CHILD = r'''
import argparse, contextlib, enum, importlib.abc, importlib.machinery, io, json, logging, os, sys, types
from pathlib import Path

MARKER = "@@dynamo-release-result@@"
release = Path(sys.argv[1])
request = json.loads(sys.stdin.read())
sys.path.insert(0, str(release))
# Pieces of the `dynamo` namespace that are not in the ai-dynamo wheel come from the compiled
# ai-dynamo-runtime wheel (dynamo._core, dynamo.runtime, dynamo.llm, ...): always stubbed, so that an
# installed runtime of another release can never answer for this one.
shipped = {p.name.removesuffix(".py") for p in (release / "dynamo").iterdir()}
# GPU-only or engine packages: stubbed even when installed, so the host does not change the answer.
ALWAYS = {"torch", "tensorrt_llm", "tensorrt", "vllm", "sglang", "cuda", "nixl", "triton", "pynvml",
          "transformers", "flashinfer", "modelexpress", "kvbm", "gpu_memory_service"}
stubbed = []


class StubMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return stub_type(f"{cls.__name__}.{name}")

    def __getitem__(cls, item):
        return cls

    def __iter__(cls):
        return iter(())

    def __contains__(cls, item):
        # Choices computed by the compiled core (e.g. its parser names) cannot be known here: accept.
        return True


class Stub(metaclass=StubMeta):
    def __init__(self, *args, **kwargs):
        pass

    def __init_subclass__(cls, **kwargs):
        pass

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return Stub()

    def __call__(self, *args, **kwargs):
        return Stub()

    def __getitem__(self, item):
        return Stub()

    def __iter__(self):
        return iter(())

    def __contains__(self, item):
        return True

    def __bool__(self):
        # "Is a GPU / feature available?" answers no.
        return False


def stub_type(name):
    return StubMeta(name.rsplit(".", 1)[-1], (Stub,), {"__qualname__": name})


class StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = stub_type(f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


class StubLoader(importlib.abc.Loader):
    def create_module(self, spec):
        stubbed.append(spec.name)
        module = StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def stub_spec(name):
    return importlib.machinery.ModuleSpec(name, StubLoader(), is_package=True)


class ForcedStubs(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        parts = name.split(".")
        if parts[0] in ALWAYS:
            return stub_spec(name)
        if parts[0] == "dynamo" and len(parts) > 1 and parts[1] not in shipped:
            return stub_spec(name)
        return None


class MissingStubs(importlib.abc.MetaPathFinder):
    """Last resort: any other dependency this interpreter lacks (uvloop, msgspec, ...)."""

    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top == "dynamo":
            return None  # a dynamo module the release itself should ship: let the import fail
        if top in sys.stdlib_module_names or top == "org":
            return None  # stdlib probes for other platforms (_winapi, msvcrt, Jython's org.python)
        return stub_spec(name)


sys.meta_path.insert(0, ForcedStubs())
sys.meta_path.append(MissingStubs())

# Record every parser the release builds: its own, plus any helper parser (1.6's router-flag parser).
parsers = []
original_parse_known_args = argparse.ArgumentParser.parse_known_args


def recording_parse_known_args(self, args=None, namespace=None):
    if self not in parsers:
        parsers.append(self)
    return original_parse_known_args(self, args, namespace)


argparse.ArgumentParser.parse_known_args = recording_parse_known_args

module = request["module"]
if module == "trtllm":
    if (release / "dynamo" / "trtllm" / "args.py").exists():
        # 1.0+: dynamo/trtllm/args.py parse_args(argv) builds the runtime + TRT-LLM arg groups, then
        # (1.1+) reads --trtllm.* dynamic flags and (1.6+) worker router flags from what argparse left.
        from dynamo.trtllm.args import parse_args as release_parse

        def entry(argv):
            sys.argv = ["dynamo.trtllm", *argv]
            return release_parse(argv)
    else:
        # 0.4-0.9: cmd_line_args() parses sys.argv and validates endpoints / disaggregation roles.
        from dynamo.trtllm.utils.trtllm_utils import cmd_line_args

        def entry(argv):
            sys.argv = ["dynamo.trtllm", *argv]
            return cmd_line_args()
elif module == "frontend":
    # Every release: dynamo/frontend/main.py parse_args() reads sys.argv; 1.0+ validates its
    # FrontendConfig too. Connecting to the runtime happens later, in async_main, which is not called.
    from dynamo.frontend.main import parse_args as frontend_parse

    def entry(argv):
        sys.argv = ["dynamo.frontend", *argv]
        return frontend_parse()
else:
    raise SystemExit(f"unknown module {module}")


def plain(value, depth=0):
    if isinstance(value, enum.Enum):
        return plain(value.value, depth)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if depth < 4 and isinstance(value, (list, tuple, set)):
        return [plain(item, depth + 1) for item in value]
    if depth < 4 and isinstance(value, dict):
        return {str(key): plain(item, depth + 1) for key, item in value.items()}
    if depth < 2 and isinstance(value, argparse.Namespace):
        return plain(vars(value), depth + 1)
    if depth < 2 and hasattr(value, "__dict__") and not isinstance(value, type):
        return plain(vars(value), depth + 1)
    return repr(value)


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def run(argv):
    collect = Collect()
    root = logging.getLogger()
    root.addHandler(collect)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            config = entry(list(argv))
    except SystemExit as exit_:
        text = stderr.getvalue()
        errors = [line.split(": error: ", 1)[1] for line in text.splitlines() if ": error: " in line]
        message = "; ".join(errors + collect.messages) or text.strip()[-500:]
        return {"ok": False, "error": message or f"exited with status {exit_.code}", "parsed": {}}
    except Exception as error:
        return {"ok": False, "error": f"{type(error).__name__}: {error}", "parsed": {}}
    finally:
        root.removeHandler(collect)
    if isinstance(config, tuple):  # 1.x frontend: (FrontendConfig, vllm_flags, sglang_flags)
        config = config[0]
    parsed = plain(config)
    return {"ok": True, "error": "", "parsed": parsed if isinstance(parsed, dict) else {"value": parsed}}


if request["mode"] == "flags":
    with contextlib.suppress(BaseException):
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            entry([])
    actions = [
        {"options": action.option_strings, "dest": action.dest, "default": plain(action.default),
         "choices": None if action.choices is None else plain(list(action.choices))}
        for parser in parsers for action in parser._actions if action.option_strings
    ]
    options = sorted({option for action in actions for option in action["options"]})
    answer = {"flags": options, "actions": actions, "stubbed": sorted(set(stubbed))}
else:
    answer = {"results": [run(argv) for argv in request["argvs"]], "stubbed": sorted(set(stubbed))}
print(MARKER + json.dumps(answer))
'''
