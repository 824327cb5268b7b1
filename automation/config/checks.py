"""Checks that span several fields or need the version table: a file that passes them can be deployed."""

from __future__ import annotations

import re
from typing import Any

from automation.config.names import SCRIPT_ENV, SHELL_NAME, shown
from automation.config.schema import ROLES, PipelineConfig
from automation.config.teaching import Location, Problem, did_you_mean, is_secret_name, short
from automation.errors import InputError

# The start of an InputError from engine_config that names a field: "engine.extra.max_batch_size: ...".
_FIELD_PREFIX = re.compile(r"(?P<path>[A-Za-z_]\w*(?:\.[^.\s:]+)*): (?P<what>.*)")


def consistency_problems(config: PipelineConfig) -> list[Problem]:
    """Every problem of a config whose fields are each valid; each names the field to change."""
    return [
        *_cluster_problems(config),
        *_version_problems(config),
        *_image_problems(config),
        *_configure_problems(config),
        *_env_problems(config),
        *_perfmodel_problems(config),
    ]


def _cluster_problems(config: PipelineConfig) -> list[Problem]:
    problems: list[Problem] = []
    from automation.perfmodel.system import known_systems  # reads file names only

    systems = known_systems()
    if config.system not in systems:
        hint = did_you_mean(config.system, systems) or f" (known: {', '.join(systems)})"
        problems.append((("system",), f"unknown GPU system '{config.system}'{hint}"))
    total, have = config.search.total_gpus or 0, config.cluster_gpus
    if total > have:
        nodes = config.cluster.nodes
        layout = f" ({' + '.join(str(n.gpus) for n in nodes)})" if len(nodes) > 1 else ""
        problems.append(
            (
                ("search", "total_gpus"),
                f"{total} GPUs asked but the cluster has {have}{layout}; lower it or add nodes",
            )
        )
    seen: dict[tuple[str, int], int] = {}
    for index, node in enumerate(config.cluster.nodes):
        endpoint = (node.host, node.ssh_port or config.cluster.ssh.port)
        if endpoint in seen:
            problems.append(
                (
                    ("cluster", "nodes", index, "host"),
                    f"'{node.host}' is already nodes[{seen[endpoint]}]; list each node once",
                )
            )
        seen.setdefault(endpoint, index)
    names = [node.name for node in config.cluster.nodes]
    for index, name in enumerate(names):
        if names.index(name) != index:
            problems.append(
                (("cluster", "nodes", index, "name"), f"name '{name}' is used twice; names must be unique")
            )
    return problems


def _version_problems(config: PipelineConfig) -> list[Problem]:
    """dynamo.version and backend.version must each have a known family, and engine.extra suit the latter."""
    # Imported here: both import this package for VERSIONS_FILE.
    from automation import engine_config, versions

    problems: list[Problem] = []
    refused = versions.refusal(config.dynamo.version)
    if refused is not None:
        problems.append((("dynamo", "version"), refused))
    if config.backend.version is None:
        return problems
    backend = config.backend.version
    if not versions.is_version(backend) or ".dev" in backend:  # TRT-LLM publishes rc, not dev, builds
        problems.append((("backend", "version"), f"{shown(backend)} is not a version like 1.0.0rc6"))
        return problems
    try:
        family = engine_config.trtllm_family(backend)
    except InputError as exc:
        return [*problems, _located(exc, ("backend", "version"))]
    extras: list[tuple[Location, dict[str, Any]]] = [(("engine", "extra"), config.engine.extra)]
    extras += [(("engine", role, "extra"), getattr(config.engine, role).extra) for role in ROLES]
    for where, extra in extras:
        try:
            # The rule generate applies when it writes the engine YAMLs; here it fails before the sweep.
            engine_config.check_extra(extra, family, ".".join(map(str, where)))
        except InputError as exc:
            problems.append(_located(exc, where))
            continue
        problems += _graph_size_problems(extra, where)
    return problems


def _graph_size_problems(extra: dict[str, Any], where: Location) -> list[Problem]:
    """cuda_graph_config.batch_sizes must be what generate can cap at a batch size (engine_config's rule)."""
    graph = extra.get("cuda_graph_config")
    if not isinstance(graph, dict) or "batch_sizes" not in graph:
        return []
    sizes = graph["batch_sizes"]
    # bool is an int to Python, but `true` is never a batch size.
    if isinstance(sizes, list) and all(type(s) is int and s > 0 for s in sizes):
        return []
    return [
        (
            (*where, "cuda_graph_config", "batch_sizes"),
            f"must be a list of positive whole numbers, got {short(sizes)} (e.g. [1, 2, 4, 8])",
        )
    ]


def _located(exc: InputError, default: Location) -> Problem:
    """An engine_config error as (location, sentence): its leading field path becomes the location."""
    match = _FIELD_PREFIX.fullmatch(exc.message)
    if match and match.group("path").split(".")[0] in PipelineConfig.model_fields:
        loc: Location = tuple(match.group("path").split("."))
        what = match.group("what")
    else:
        loc, what = default, exc.message
    return loc, f"{what} ({exc.hint})" if exc.hint else what


def _image_problems(config: PipelineConfig) -> list[Problem]:
    dynamo = config.dynamo
    problems: list[Problem] = []
    if dynamo.image_source == "load" and dynamo.image_tar is None:
        problems.append(
            (("dynamo", "image_tar"), "required when image_source is 'load': the docker save file")
        )
    if dynamo.image_source == "build" and dynamo.source is None:
        problems.append(
            (
                ("dynamo", "source"),
                "required when image_source is 'build': {git: URL} or {path: DIR} of a Dynamo checkout",
            )
        )
    if dynamo.image_source == "build" and config.launch.runtime == "host":
        problems.append(
            (("dynamo", "image_source"), "'build' makes an image, and launch.runtime is host: use container")
        )
    return problems


def _configure_problems(config: PipelineConfig) -> list[Problem]:
    section = config.configure
    if section.source == "autodeploy" and section.aiconfigurator_dir is not None:
        return [
            (
                ("configure", "aiconfigurator_dir"),
                "is set, and configure.source is autodeploy: set source: aiconfigurator to deploy its pick "
                "(or summarize.aiconfigurator_dir to only compare with it)",
            )
        ]
    if section.source == "autodeploy" and (section.mode != "auto" or section.rank != 1):
        return [
            (
                ("configure", "source"),
                "mode and rank choose among aiconfigurator's picks: set source: aiconfigurator",
            )
        ]
    return []


def _perfmodel_problems(config: PipelineConfig) -> list[Problem]:
    """The calibration must be a calibration of this system; the mocker's speed is a rehearsal's only."""
    problems: list[Problem] = []
    if config.launch.engine != "mocker" and config.launch.mocker_speed.slows:
        problems.append(
            (
                ("launch", "mocker_speed"),
                "slows Dynamo's mocker, and launch.engine is trtllm: remove it (real GPUs run at their own speed)",
            )
        )
    if config.perfmodel.reference:
        from automation.perfmodel.calibration import factors

        try:
            factors(config.perfmodel.reference, config.system.strip().lower())
        except InputError as exc:
            problems.append((("perfmodel", "calibration"), exc.message))
    return problems


def _env_problems(config: PipelineConfig) -> list[Problem]:
    """launch.env names become `export NAME=...` lines of the node scripts (their values are quoted there)."""
    problems: list[Problem] = []
    for key in config.launch.env:
        loc: Location = ("launch", "env", key)
        if is_secret_name(key):
            problems.append(
                (
                    loc,
                    "secrets are not written into scripts; the workers read HF_TOKEN from "
                    "their environment at run time",
                )
            )
        elif not SHELL_NAME.fullmatch(key):
            problems.append(
                (
                    loc,
                    f"{shown(key)} is not an environment variable name "
                    "(use letters, digits and underscores, not starting with a digit)",
                )
            )
        elif key in SCRIPT_ENV:
            problems.append((loc, f"the node script sets {key} itself ({SCRIPT_ENV[key]})"))
    return problems
