"""Reading a pipeline file: YAML with line numbers, validation into one error line per problem, resolved_yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from automation.config.checks import consistency_problems
from automation.config.names import one_line
from automation.config.schema import PipelineConfig
from automation.config.teaching import Location, Problem, explain_all
from automation.errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys instead of silently keeping the last one."""


def _construct_unique_mapping(
    loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' (first on line {seen[key]})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline file; relative local paths in it are relative to its folder.

    Raises:
        ConfigError: with one line per problem: `file:line: field.path: what is wrong (the fix)`.
    """
    path = Path(path)
    label = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"{label}: no such file", hint="check the path, or copy one from examples/"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read it: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
        tree = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{label}:{mark.line + 1}" if mark else label
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if "expected <block end>" in problem or "mapping values are not allowed" in problem:
            problem = f"the indentation does not line up ({problem})"
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if data is None:
        raise ConfigError(f"{label}: the file is empty", hint="start from examples/rehearsal.yaml")
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: the top level must be a mapping of sections (name:, model:, ...)")
    return validate_pipeline(data, label=label, tree=tree, base=path.parent)


def validate_pipeline(
    data: dict[str, Any],
    label: str = "pipeline",
    tree: yaml.Node | None = None,
    base: Path | None = None,
) -> PipelineConfig:
    """Validate already-parsed pipeline data: fields, then what spans them (versions, engine.extra, env).

    Raises:
        ConfigError: see load_pipeline for the format.
    """
    try:
        config = PipelineConfig.model_validate(data, context={"base": base})
    except ValidationError as exc:
        lines = _ordered(label, tree, explain_all(exc.errors()))
        raise ConfigError(lines[0], problems=lines) from None
    lines = _ordered(label, tree, consistency_problems(config))
    if lines:
        raise ConfigError(lines[0], problems=lines)
    return config


def resolved_yaml(config: PipelineConfig) -> str:
    """The pipeline with every default filled in, as written to <run>/pipeline.resolved.yaml."""
    body = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, default_flow_style=False)
    return (
        "# Every value autodeploy used for this run, defaults included (generated; edit the pipeline file).\n"
        + body
    )


def _ordered(label: str, tree: yaml.Node | None, problems: list[Problem]) -> list[str]:
    """Problems as lines, in the order they appear in the file (those with no line last)."""
    keyed = [
        (_line_of(tree, loc) or 10**9, index, loc, message) for index, (loc, message) in enumerate(problems)
    ]
    return [_format_problem(label, tree, loc, message) for _, _, loc, message in sorted(keyed)]


def _format_problem(label: str, tree: yaml.Node | None, loc: Location, message: str) -> str:
    line = _line_of(tree, loc)
    where = f"{label}:{line}" if line else label
    path = _dotted(loc)
    # Every check promises one line; this keeps the promise for a value echoed from the file.
    message = one_line(message)
    return f"{where}: {path}: {message}" if path else f"{where}: {message}"


def _dotted(loc: Location) -> str:
    out = ""
    for part in loc:
        text = one_line(str(part))  # a key may hold a newline; the error line must stay one line
        out += f"[{text}]" if isinstance(part, int) else (f".{text}" if out else text)
    return out


def _line_of(tree: yaml.Node | None, loc: Location) -> int | None:
    """The 1-based line of the YAML node at loc (the deepest that exists), for pointing at the problem."""
    node, line = tree, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((kv for kv in node.value if kv[0].value == part), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
