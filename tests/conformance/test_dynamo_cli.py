"""Generated worker and frontend command lines are accepted by each claimed Dynamo release's own parsers."""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from automation.config.schema import dynamo_versions
from automation.perfmodel.plan import Plan
from automation.stages.generate import render_files, write_files
from automation.versions import version_key, wheel_of
from tests.conformance import dynamo_release
from tests.conformance.dynamo_release import Module, Result, WheelUnavailable
from tests.generate.cases import MODEL, agg_plan, disagg_plan, pipeline, role
from tests.services import require

RELEASES = sorted(dynamo_versions(), key=version_key)
MODULES: tuple[Module, ...] = ("trtllm", "frontend")
ROUTER_MODES = ("round-robin", "random", "kv")
RUNTIMES = ("host", "container")
PLANS: dict[str, Plan] = {
    "agg": agg_plan(tp=2, replicas=2),
    "disagg": disagg_plan(p_tp=1, p_workers=2, d_tp=2, d_workers=1, replicas=2),
    # Attention data parallelism has a worker flag in some releases.
    "agg-attention-dp": Plan(
        mode="agg",
        model=MODEL,
        system="h200_sxm",
        roles=(role("agg", tp=1, attention_dp=4, ep=4, batch=32, tokens=4032),),
        replicas=2,
        isl=4000,
        osl=512,
    ),
}
# No release defines this: every release must refuse it (proves a rejection is visible at all).
INVENTED_FLAG = "--autodeploy-invented-flag"
_SHELL_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")
_ASSIGNMENT = re.compile(r"^(?:export\s+)?([A-Z_][A-Z0-9_]*)=(.*)$")
_SHELL_OPERATORS = {"&", "&&", "|", "||", ";"}


@dataclass
class Commands:
    """Every distinct argv generate wrote for one release, and where each came from."""

    argvs: dict[Module, dict[tuple[str, ...], list[str]]] = field(
        default_factory=lambda: {module: {} for module in MODULES}
    )

    def add(self, module: Module, argv: list[str], origin: str) -> None:
        self.argvs[module].setdefault(tuple(argv), []).append(origin)


@pytest.fixture(scope="session")
def generated_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("conformance")


@functools.cache
def generated_commands(release: str, root: Path) -> Commands:
    """Render the real files for every plan × router mode × runtime and collect the Dynamo command lines."""
    commands = Commands()
    for plan_name, plan in PLANS.items():
        for router_mode in ROUTER_MODES:
            for runtime in RUNTIMES:
                case = f"{plan_name}/{router_mode}/{runtime}"
                config = pipeline(
                    [8, 8],
                    engine="trtllm",
                    dynamo={"version": release, "router_mode": router_mode},
                    runtime=runtime,
                    checked=False,
                )
                directory = root / release / case.replace("/", "_")
                files = render_files(config, plan)
                write_files(directory, files)
                for script in sorted(directory.glob("node_*_run.sh")):
                    for module, argv in script_commands(script.read_text(), directory):
                        # A variable this test cannot resolve would reach the parser as literal text.
                        assert "$" not in " ".join(argv), f"unexpanded variable in {script.name}: {argv}"
                        commands.add(module, argv, f"{script.name} of {case}")
                for module, argv in manifest_commands((directory / "k8s_deploy.yaml").read_text()):
                    commands.add(module, argv, f"k8s_deploy.yaml of {case}")
    return commands


def script_commands(text: str, script_dir: Path) -> Iterator[tuple[Module, list[str]]]:
    """The words after `-m dynamo.<module>` on each command line of a node script, with the script's own
    variables ($MODEL_PATH, $SERVED_MODEL_NAME, $SCRIPT_DIR) replaced by the values it would give them."""
    lines = text.replace("\\\n", " ").splitlines()
    variables = {"SCRIPT_DIR": str(script_dir)}
    for line in lines:
        assignment = _ASSIGNMENT.match(line)
        if assignment and assignment.group(1) not in variables and "$(" not in assignment.group(2):
            variables[assignment.group(1)] = " ".join(shlex.split(assignment.group(2)))
    for line in lines:
        if line.lstrip().startswith("#"):
            continue
        words = shlex.split(line)
        for index in range(len(words) - 1):
            module = words[index + 1].removeprefix("dynamo.")
            if words[index] == "-m" and words[index + 1].startswith("dynamo.") and module in MODULES:
                argv = []
                for word in words[index + 2 :]:
                    if word in _SHELL_OPERATORS:
                        break
                    argv.append(_SHELL_VARIABLE.sub(lambda m: variables.get(m.group(1), m.group(0)), word))
                yield module, argv
                break


def manifest_commands(text: str) -> Iterator[tuple[Module, list[str]]]:
    """The args of each DynamoGraphDeployment service whose main container runs `python3 -m dynamo.<module>`."""
    # The C loader where PyYAML has it: the manifest's ConfigMap makes this the slow part of a render.
    for document in yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        if not isinstance(document, dict) or document.get("kind") != "DynamoGraphDeployment":
            continue
        for service in document["spec"]["services"].values():
            container = service["extraPodSpec"]["mainContainer"]
            command = [str(word) for word in container["command"]]
            module = command[-1].removeprefix("dynamo.")
            assert command[-2:-1] == ["-m"] and module in MODULES, f"unexpected container command {command}"
            yield module, [str(word) for word in container.get("args", [])]


@functools.cache
def verdicts(release: str, module: Module, root: Path) -> dict[tuple[str, ...], Result]:
    """Each generated argv, and the first one plus INVENTED_FLAG, through the release's own parser: one
    subprocess per release and module."""
    generated = list(generated_commands(release, root).argvs[module])
    probes = [*generated, (*generated[0], INVENTED_FLAG)] if generated else []
    parse = dynamo_release.parse_worker if module == "trtllm" else dynamo_release.parse_frontend
    try:
        results = parse(release, [list(argv) for argv in probes])
    except WheelUnavailable as error:
        require(False, f"the ai-dynamo {release} wheel is unavailable: {error}")
    return {result.argv: result for result in results}


def offending_flags(error: str) -> list[str]:
    """The flags an error message names (argparse, the release's own logged errors)."""
    return list(dict.fromkeys(re.findall(r"--[A-Za-z0-9][A-Za-z0-9._-]*", error)))


def rejections(release: str, rejected: list[tuple[Result, list[str]]]) -> str:
    """One paragraph per distinct error: the flags it names, an example argv, and where such lines are."""
    by_error: dict[str, list[tuple[Result, list[str]]]] = {}
    for result, origins in rejected:
        by_error.setdefault(result.error, []).append((result, origins))
    paragraphs = []
    for error, group in by_error.items():
        flags = " ".join(offending_flags(error)) or "the command line"
        origins = list(dict.fromkeys(origin for _, where in group for origin in where))
        paragraphs.append(
            f"Dynamo {release} rejects {flags}: {error}\n"
            f"    {len(group)} command line(s), e.g.: {shlex.join(group[0][0].argv)}\n"
            f"    in: {'; '.join(origins[:6])}{' ...' if len(origins) > 6 else ''}"
        )
    return "\n".join(paragraphs)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("release", RELEASES)
def test_generated_commands_are_accepted(release: str, module: Module, generated_root: Path) -> None:
    commands = generated_commands(release, generated_root).argvs[module]
    assert commands, f"Dynamo {release}: no `python -m dynamo.{module}` command line was generated"
    results = verdicts(release, module, generated_root)
    rejected = [(results[argv], origins) for argv, origins in commands.items() if not results[argv].ok]
    if rejected:
        pytest.fail(rejections(release, rejected), pytrace=False)


@pytest.mark.parametrize("release", RELEASES)
def test_trtllm_version_is_the_one_the_wheel_pins(release: str) -> None:
    try:
        wheel = dynamo_release.pypi_version(release)
        metadata = next(dynamo_release.wheel_dir(release).glob("*.dist-info/METADATA")).read_text()
    except WheelUnavailable as error:
        require(False, f"the ai-dynamo {release} wheel is unavailable: {error}")
    # The project names the wheel of a release published only as post releases; PyPI must agree.
    assert wheel_of(release) == wheel, f"Dynamo {release}: PyPI's wheel is ai-dynamo {wheel}"
    pin = re.search(r"^Requires-Dist: tensorrt-llm==([^;\s]+)", metadata, re.MULTILINE)
    assert pin, f"the ai-dynamo {wheel} wheel pins no tensorrt-llm"
    assert dynamo_versions()[release] == pin.group(1), f"Dynamo {release} ({wheel}) pins {pin.group(1)}"


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("release", RELEASES)
def test_an_invented_flag_is_rejected(release: str, module: Module, generated_root: Path) -> None:
    results = verdicts(release, module, generated_root)
    probe = next(result for argv, result in results.items() if argv[-1:] == (INVENTED_FLAG,))
    assert not probe.ok, (
        f"Dynamo {release} {module} accepted {INVENTED_FLAG}: the harness cannot see rejections"
    )
    assert INVENTED_FLAG in probe.error, probe.error


# Facts from the released wheels (see dynamo_release.py): the flag autodeploy once used for every 0.7+ release.
@pytest.mark.parametrize(
    ("release", "model_flag", "accepted"),
    [("0.8.1", "--model-path", False), ("1.2.1", "--model", False), ("1.3.1", "--model", True)],
)
def test_publish_kv_events_exists_from_1_3(release: str, model_flag: str, accepted: bool) -> None:
    try:
        [result] = dynamo_release.parse_worker(release, [[model_flag, "/models/m", "--publish-kv-events"]])
    except WheelUnavailable as error:
        require(False, f"the ai-dynamo {release} wheel is unavailable: {error}")
    assert result.ok is accepted, result.error
    if accepted:
        assert result.parsed["publish_events_and_metrics"] is True  # 1.3-1.5: an alias, same destination
    else:
        assert offending_flags(result.error) == ["--publish-kv-events"], result.error


def test_flags_lists_the_release_parser_options() -> None:
    try:
        old, new = dynamo_release.flags("0.9.1", "trtllm"), dynamo_release.flags("1.0.0", "trtllm")
    except WheelUnavailable as error:
        require(False, f"an ai-dynamo wheel is unavailable: {error}")
    # 1.0 renamed --model-path to --model (keeping the old spelling as an alias) and added attention DP.
    assert "--model-path" in old and "--model" not in old and "--enable-attention-dp" not in old
    assert {"--model", "--model-path", "--enable-attention-dp", "--kv-block-size"} <= new
