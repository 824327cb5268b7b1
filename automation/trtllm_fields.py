"""The engine-YAML keys each TensorRT-LLM release accepts, as recorded in data/trtllm_fields.yaml."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from automation.errors import InputError

FIELDS_FILE = Path(__file__).resolve().parent / "data" / "trtllm_fields.yaml"

# The nested sections of an engine YAML whose keys are recorded (TrtllmFields attribute = YAML key).
SECTIONS = (
    "kv_cache_config",
    "cache_transceiver_config",
    "build_config",
    "cuda_graph_config",
    "scheduler_config",
    "moe_config",
)


@dataclass(frozen=True)
class TrtllmFields:
    """The recorded field sets of one TensorRT-LLM tag; a None set was not in the source read (unknown).

    Attributes:
        tag: the recorded tag these sets come from (may be older than the version asked for).
        version: the version asked for.
        source: where the tag's llm_args.py text was read (data file's `source`).
        llm_args: top-level keys (TorchLlmArgs with the BaseLlmArgs it inherits).
        cache_transceiver_backends: the values CacheTransceiverConfig.backend accepts (its Literal).
        batch_limits_top_level: max_batch_size/max_num_tokens/max_seq_len are top-level fields.
        aliases: dotted field -> the key pydantic accepts instead of the field's name.
    """

    tag: str
    version: str
    source: str
    llm_args: frozenset[str] | None
    kv_cache_config: frozenset[str] | None
    cache_transceiver_config: frozenset[str] | None
    cache_transceiver_backends: frozenset[str] | None
    build_config: frozenset[str] | None
    cuda_graph_config: frozenset[str] | None
    scheduler_config: frozenset[str] | None
    moe_config: frozenset[str] | None
    batch_limits_top_level: bool | None
    aliases: dict[str, str]

    def section(self, name: str) -> frozenset[str] | None:
        """The recorded keys of a nested section (e.g. kv_cache_config), None if not recorded.

        Raises:
            KeyError: not a section this file records.
        """
        if name not in SECTIONS:
            raise KeyError(name)
        value: frozenset[str] | None = getattr(self, name)
        return value


@functools.cache
def recorded() -> dict[str, dict[str, Any]]:
    """data/trtllm_fields.yaml's tags, parsed once."""
    data: dict[str, Any] = yaml.safe_load(FIELDS_FILE.read_text())
    tags: dict[str, dict[str, Any]] = {str(k): v for k, v in (data.get("tags") or {}).items()}
    return tags


def recorded_tags() -> list[str]:
    """The TRT-LLM tags whose field sets are recorded."""
    return list(recorded())


def _names(value: Any) -> frozenset[str] | None:
    return None if value is None else frozenset(str(v) for v in value)


def fields_for(version: str) -> TrtllmFields:
    """The field sets of `version`: its own tag if recorded, else the newest recorded tag of the same
    major.minor that is not newer (fields rarely change within a line, and never retroactively).

    Raises:
        InputError: no tag of that major.minor at or below the version is recorded.
    """
    # Imported here: engine_config (which re-exports version_key) may import this module.
    from automation.versions import version_key

    key = version_key(version)
    tags = recorded()
    same_line = [t for t in tags if version_key(t)[:2] == key[:2] and version_key(t) <= key]
    if not same_line:
        known = ", ".join(sorted(tags, key=version_key)) or "none"
        raise InputError(
            f"no TensorRT-LLM field set recorded for {version} or an older {key[0]}.{key[1]} release "
            f"(recorded: {known})",
            hint="add the release with scripts/derive-trtllm-fields.py",
        )
    tag = max(same_line, key=version_key)
    entry = tags[tag]
    limits = entry.get("batch_limits")
    return TrtllmFields(
        tag=tag,
        version=version,
        source=str(entry.get("source", "")),
        llm_args=_names(entry.get("llm_args")),
        kv_cache_config=_names(entry.get("kv_cache_config")),
        cache_transceiver_config=_names(entry.get("cache_transceiver_config")),
        cache_transceiver_backends=_names(entry.get("cache_transceiver_backends")),
        build_config=_names(entry.get("build_config")),
        cuda_graph_config=_names(entry.get("cuda_graph_config")),
        scheduler_config=_names(entry.get("scheduler_config")),
        moe_config=_names(entry.get("moe_config")),
        batch_limits_top_level=None if limits is None else bool(limits.get("top_level")),
        aliases={str(k): str(v) for k, v in (entry.get("aliases") or {}).items()},
    )
