"""Pydantic errors turned into teaching sentences: did-you-mean, secret refusal, seed-style key hints."""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from automation.config.names import one_line
from automation.config.schema import EngineSettings, PipelineConfig

Location = tuple[str | int, ...]
Problem = tuple[Location, str]

_TYPE_WORDS = {
    "int_parsing": "a whole number",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
}
SECRET_WORDS = ("token", "secret", "password", "passwd", "api_key", "apikey", "private_key")
# The seed scripts took per-role flags (prefill_max_batch_size); the pipeline nests them per role.
_ROLE_PREFIX = re.compile(r"^(agg|prefill|decode)_(.+)$")


def is_secret_name(name: str) -> bool:
    """Whether a key looks like it holds a secret (its value is then never shown)."""
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


def explain_all(errors: list[ErrorDetails]) -> list[Problem]:
    """Every pydantic error as (location, sentence), one mistake reported once."""
    problems = [explain(error) for error in one_branch_per_union(errors)]
    return drop_missing_explained_by_typo(problems)


def one_branch_per_union(errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """A value that fails every branch of `'auto' | list[...]` gets the errors of the branch it resembles."""
    branched = [e for e in errors if any(_is_branch_tag(p) for p in e["loc"])]
    if not branched:
        return errors
    keep = [e for e in errors if e not in branched]
    groups: dict[Location, list[ErrorDetails]] = {}
    for error in branched:
        cut = next(i for i, p in enumerate(error["loc"]) if _is_branch_tag(p))
        groups.setdefault(tuple(error["loc"][:cut]), []).append(error)
    for group in groups.values():
        literal = [e for e in group if any(str(p).startswith("literal[") for p in e["loc"])]
        other = [e for e in group if e not in literal]
        value = literal[0]["input"] if literal else None
        if literal and other and isinstance(value, str):
            tags = {str(p).split("[")[0] for e in other for p in e["loc"] if _is_branch_tag(p)}
            # "literal_or" is ours, not pydantic's: explain() words it as "'auto' or a list".
            keep.extend(
                typing.cast(ErrorDetails, {**e, "type": "literal_or", "ctx": {"alternatives": sorted(tags)}})
                for e in literal
            )
        else:
            keep.extend(other or literal)
    return keep


def _is_branch_tag(part: Any) -> bool:
    return isinstance(part, str) and bool(re.match(r"^(literal|list|dict|int|str|float)\[", part))


def drop_missing_explained_by_typo(problems: list[Problem]) -> list[Problem]:
    """`workloads:` for `workload:` is one mistake: report the typo, not also the missing field."""
    typos = {
        loc for loc, message in problems if message.startswith("unknown field") and "did you mean" in message
    }
    suggested = set()
    for loc in typos:
        match = re.search(r"did you mean '([^']+)'", dict(problems)[loc])
        if match:
            suggested.add((*loc[:-1], match.group(1)))
    return [(loc, m) for loc, m in problems if not (m.startswith("required field") and loc in suggested)]


def explain(error: ErrorDetails) -> Problem:
    """Turn one pydantic error into (location, one teaching sentence); values of unknown keys are never shown."""
    loc: Location = tuple(p for p in error["loc"] if not _is_branch_tag(p))
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        key = one_line(str(loc[-1]))
        return loc, unknown_key(key, loc[:-1])
    if kind == "missing":
        field = _field_at(loc)
        what = f" ({field.description.rstrip('.')})" if field is not None and field.description else ""
        return loc, f"required field is missing{what}"
    if kind == "literal_or":
        choices = re.findall(r"'([^']*)'", error["msg"])
        others = " or ".join(f"a {tag}" for tag in (error.get("ctx") or {})["alternatives"])
        return loc, f"must be {' or '.join(repr(c) for c in choices)} or {others}, got {value!r}"
    if kind in _TYPE_WORDS:
        return loc, f"must be {_TYPE_WORDS[kind]}, got {short(value)}"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", error["msg"])
        hint = did_you_mean(str(value), choices)
        return loc, f"{value!r} is not one of {', '.join(repr(c) for c in choices)}{hint}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return loc, f"{error['msg'].replace('Input should be', 'must be')}, got {value!r}"
    if kind in ("too_short",):
        return loc, "must not be empty"
    if kind in ("model_type", "dict_type"):
        return loc, f"must be a mapping of keys, got {short(value)}"
    if kind == "list_type":
        return loc, f"must be a list, got {short(value)}"
    if kind == "value_error":
        return loc, error["msg"].removeprefix("Value error, ")
    return loc, f"{error['msg'][0].lower()}{error['msg'][1:]}, got {short(value)}"


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def unknown_key(key: str, parent: Location) -> str:
    """Why `key` is not allowed under `parent`: a secret, a seed-style role flag, or a typo of a field."""
    if is_secret_name(key):
        return (
            f"unknown field '{key}': secrets are not accepted in the pipeline file; "
            "export HF_TOKEN (or name it in checkpoint.token_env / checkpoint.token_file)"
        )
    role = _ROLE_PREFIX.match(key)
    if role and role.group(2) in EngineSettings.model_fields:
        return f"unknown field '{key}' (per-role settings go under engine.{role.group(1)}.{role.group(2)})"
    names = _fields_of(parent)
    hint = did_you_mean(key, names)
    if hint:
        return f"unknown field '{key}'{hint}"
    return f"unknown field '{key}' (allowed: {', '.join(names)})" if names else f"unknown field '{key}'"


def did_you_mean(word: str, choices: list[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when none is close."""
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _model_at(loc: Location) -> type[BaseModel] | None:
    """The pydantic model class that validates the mapping at loc (None if loc is not a mapping of one)."""
    current: Any = PipelineConfig
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = _unwrap(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """Strip Optional / list[...] / Annotated to reach a model class, if there is one."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            inner = _unwrap(arg)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return annotation


def _fields_of(loc: Location) -> list[str]:
    model = _model_at(loc)
    return list(model.model_fields) if model else []


def _field_at(loc: Location) -> Any:
    model = _model_at(loc[:-1])
    return model.model_fields.get(str(loc[-1])) if model else None
