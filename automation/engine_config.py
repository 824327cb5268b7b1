"""TRT-LLM engine YAMLs from a plan: version families, key tables, per-role overrides, and validation."""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass
from typing import Any, Literal

from automation.errors import InputError
from automation.perfmodel.plan import DEFAULT_TOKENS_PER_BLOCK, Plan, RolePlan
from automation.trtllm_fields import SECTIONS, TrtllmFields, fields_for, recorded_tags
from automation.versions import in_range, version_key, versions_data


@dataclass(frozen=True)
class TrtllmFamily:
    """One engine-YAML schema: where the batch limits go and which keys are known, plus what the recorded
    fields of the release (data/trtllm_fields.yaml) say about keys that changed inside the family."""

    name: str
    batch_limits: Literal["build_config", "top_level"]
    top_keys: frozenset[str]
    sections: dict[str, tuple[str, ...] | None]  # None: an open section whose keys are not checked
    planned: frozenset[str]
    version: str = ""
    # kv_cache_config.tokens_per_block exists (TRT-LLM PR #5911; absent in 1.0.0rc6 and 1.0.0).
    has_tokens_per_block: bool = True
    # CacheTransceiverConfig.backend's spelling: upper case from TRT-LLM PR #6780 (1.0.0 final), lower before.
    transceiver_default: str = "DEFAULT"
    fields_tag: str | None = None  # the recorded tag that decided the two above, if any
    # cuda_graph_config is a union chosen by its `mode` key (DecodeCudaGraphConfig | EncodeCudaGraphConfig,
    # Field(discriminator="mode"), recorded in 1.3.0rc23): the key is then written, not left to a default.
    graph_mode: str | None = None


def _own_fields(version: str) -> TrtllmFields | None:
    """The recorded fields of version's own tag or the nearest older tag of its line, if any."""
    try:
        return fields_for(version)
    except InputError:
        return None


def _recorded_evidence(version: str) -> TrtllmFields | None:
    """The recorded field sets that speak for `version`: its own or the nearest older tag of its line, else
    the oldest newer tag of its line (a key or spelling a later release of the line still lacks was not
    there before: fields are added, and the case change came once). None when its line has no tag."""
    own = _own_fields(version)
    if own is not None:
        return own
    key = version_key(version)
    newer = [t for t in recorded_tags() if version_key(t)[:2] == key[:2] and version_key(t) > key]
    return fields_for(min(newer, key=version_key)) if newer else None


def _batch_limits(entry: dict[str, Any]) -> Literal["build_config", "top_level"]:
    """Where a family's engine YAML puts the batch limits (versions.yaml's batch_limits)."""
    value = entry["batch_limits"]
    if value == "build_config":
        return "build_config"
    if value == "top_level":
        return "top_level"
    raise InputError(
        f"versions.yaml: family {entry['name']}: batch_limits {value!r} is not build_config or top_level"
    )


def trtllm_family(version: str) -> TrtllmFamily:
    """The engine-YAML family of a TRT-LLM version.

    Raises:
        InputError: the version is in no known family (with the families and a did-you-mean).
    """
    data = versions_data()
    families = data["trtllm_families"]
    entry = next((f for f in families if in_range(version, f)), None)
    if entry is None:
        shipped = sorted({str(v) for v in data["dynamo_releases"].values()}, key=version_key)
        key = version_key(version)
        below = [v for v in shipped if version_key(v) <= key]
        nearest = below[-1] if below else shipped[0]
        if key >= version_key(str(families[-1]["until"])):
            why = (
                f"is newer than the {families[-1]['name']} line, the newest whose engine-YAML layout is known"
            )
        elif key < version_key(str(families[0]["from"])):
            why = f"predates {families[0]['from']}, the oldest release whose engine-YAML layout is known"
        else:
            why = "falls between the engine-YAML layouts autodeploy knows (its layout was not verified)"
        raise InputError(
            f"backend.version: TensorRT-LLM {version} {why}; use {nearest}, the nearest a supported Dynamo ships",
            hint="set backend.version to a TensorRT-LLM release of a known layout, or remove it",
        )
    keys = data["trtllm_keys"]
    top = set(keys["common"])
    if entry["batch_limits"] == "build_config":
        top |= set(keys["build_config_only"])
    sections = {
        name: (None if spec == "open" else tuple(spec))
        for name, spec in keys["sections"].items()
        if name in top
    }
    own = _own_fields(version)
    if own is not None:
        # The release's recorded fields (data/trtllm_fields.yaml) add top-level keys the hand-kept list
        # lacks, and replace a section's list where that class was read (a key the release dropped, such
        # as kv_cache_config.onboard_blocks in 1.3.0rc23, is then refused in engine.extra too).
        top |= set(own.llm_args or ())
        for name in [n for n in sections if n in SECTIONS]:
            recorded_keys = own.section(name)
            if recorded_keys is not None:
                sections[name] = tuple(sorted(recorded_keys))
    evidence = _recorded_evidence(version)
    kv_fields = evidence.kv_cache_config if evidence else None
    backends = evidence.cache_transceiver_backends if evidence else None
    has_block = kv_fields is None or "tokens_per_block" in kv_fields
    if not has_block:
        sections["kv_cache_config"] = tuple(
            k for k in sections["kv_cache_config"] or () if k != "tokens_per_block"
        )
    return TrtllmFamily(
        name=str(entry["name"]),
        batch_limits=_batch_limits(entry),
        top_keys=frozenset(top),
        sections=sections,
        planned=frozenset(keys["planned"]),
        version=version,
        has_tokens_per_block=has_block,
        transceiver_default="DEFAULT" if backends is None or "DEFAULT" in backends else "default",
        fields_tag=evidence.tag if evidence else None,
        graph_mode="decode" if own and "mode" in (own.cuda_graph_config or ()) else None,
    )


def cuda_graph_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two below max_batch_size, then max_batch_size itself: sorted, unique, capped."""
    sizes = {1 << i for i in range(max(max_batch_size, 1).bit_length()) if (1 << i) <= max_batch_size}
    sizes.add(max_batch_size)
    return sorted(s for s in sizes if 1 <= s <= max_batch_size)


def _sanitise_graph_sizes(sizes: Any, max_batch_size: int, where: str) -> list[int]:
    if not isinstance(sizes, list) or not all(isinstance(s, int) and s > 0 for s in sizes):
        raise InputError(f"{where}: must be a list of positive whole numbers", hint="e.g. [1, 2, 4, 8]")
    # Graphs above max_batch_size can never run and only cost memory; keep the list as TRT-LLM wants it.
    return sorted({s for s in sizes if s <= max_batch_size} | {max_batch_size})


def check_extra(extra: dict[str, Any], family: TrtllmFamily, where: str) -> None:
    """Refuse keys the TRT-LLM family does not know, and keys the plan owns.

    Raises:
        InputError: one line naming `<where>.<key>` and the valid keys or a did-you-mean.
    """
    for key, value in extra.items():
        path = f"{where}.{key}"
        if key in family.planned:
            raise InputError(
                f"{path}: '{key}' comes from the plan the performance model made",
                hint=_planned_hint(key),
            )
        if key not in family.top_keys:
            raise InputError(
                f"{path}: unknown TensorRT-LLM {family.name} engine key '{key}'",
                hint=_suggest(key, sorted(family.top_keys)),
            )
        allowed = family.sections.get(key, None)
        if key in family.sections and allowed is not None:
            if not isinstance(value, dict):
                raise InputError(f"{path}: must be a mapping of keys", hint=f"keys: {', '.join(allowed)}")
            for sub in value:
                if f"{key}.{sub}" in family.planned:
                    raise InputError(
                        f"{path}.{sub}: '{key}.{sub}' comes from the plan the performance model made",
                        hint=_planned_hint(f"{key}.{sub}"),
                    )
                if sub not in allowed:
                    raise InputError(
                        f"{path}.{sub}: unknown key '{sub}' in {key}",
                        hint=_suggest(str(sub), list(allowed)),
                    )


_PLANNED_SETTINGS = {
    "max_batch_size": "max_batch_size",
    "max_num_tokens": "max_num_tokens",
    "enable_chunked_prefill": "enable_chunked_prefill",
    "kv_cache_config.free_gpu_memory_fraction": "free_gpu_memory_fraction",
    "kv_cache_config.dtype": "kv_cache_dtype",
    "kv_cache_config.tokens_per_block": "tokens_per_block",
}


def _planned_hint(key: str) -> str:
    setting = _PLANNED_SETTINGS.get(key)
    if setting:
        return f"set engine.{setting} (or engine.<role>.{setting}) so that configure plans with it"
    return "it is chosen by configure; remove it from engine.extra"


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return f"valid keys: {', '.join(choices)}"


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """base with extra over it; nested mappings are merged key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def engine_config(
    plan: Plan,
    role: RolePlan,
    family: TrtllmFamily,
    extra: dict[str, Any],
    where: str,
    block_reuse: bool = False,
) -> dict[str, Any]:
    """The engine YAML of one role as a dict, in the order it is written.

    `extra` (engine.extra merged with engine.<role>.extra) is checked against the family's keys first.
    block_reuse: KV-cache block reuse, on where the router is KV-aware (routing to the worker that holds a
    prompt's blocks gains nothing if the worker cannot reuse them); engine.extra may still set it.

    Raises:
        InputError: an extra key is unknown or belongs to the plan.
    """
    check_extra(extra, family, where)
    limits = {
        "max_batch_size": role.max_batch_size,
        "max_num_tokens": role.max_num_tokens,
        "max_seq_len": role.max_seq_len,
    }
    par = role.parallelism
    cfg: dict[str, Any] = {
        "backend": "pytorch",
        # With attention DP every rank of the TP group runs attention on its own requests, so the
        # TRT-LLM world per pipeline stage is tp × attention_dp.
        "tensor_parallel_size": par.tp * par.attention_dp,
        "pipeline_parallel_size": par.pp,
        "enable_attention_dp": par.attention_dp > 1,
    }
    if par.ep > 1:
        cfg["moe_expert_parallel_size"] = par.ep
        cfg["moe_tensor_parallel_size"] = par.moe_tp
    cfg["enable_chunked_prefill"] = role.enable_chunked_prefill
    if family.batch_limits == "build_config":
        cfg["build_config"] = limits
    else:
        cfg.update(limits)
    kv: dict[str, Any] = {
        "free_gpu_memory_fraction": role.free_gpu_memory_fraction,
        "dtype": role.kv_cache_dtype,
        "tokens_per_block": role.tokens_per_block,
        # Off unless the router is KV-aware: the benchmark sends unique prompts, so either way what is
        # measured is what was modelled, and without a KV router reuse only costs bookkeeping.
        "enable_block_reuse": block_reuse,
    }
    if not family.has_tokens_per_block:
        # The release's KvCacheConfig forbids the key; its engine runs its own default block size.
        if role.tokens_per_block != DEFAULT_TOKENS_PER_BLOCK:
            raise InputError(
                f"engine.tokens_per_block: TensorRT-LLM {family.version} has no kv_cache_config.tokens_per_block "
                f"(recorded fields of {family.fields_tag}; it came with TRT-LLM PR #5911)",
                hint="remove engine.tokens_per_block, or use a Dynamo release that ships TensorRT-LLM 1.1 or later",
            )
        del kv["tokens_per_block"]
    cfg["kv_cache_config"] = kv
    if plan.mode == "disagg":
        cfg["cache_transceiver_config"] = {
            "backend": family.transceiver_default,
            # Room for the KV cache of the longest request either side handles.
            "max_tokens_in_buffer": max(max(r.max_seq_len, r.max_num_tokens) for r in plan.roles),
        }
    cfg["cuda_graph_config"] = {
        **({"mode": family.graph_mode} if family.graph_mode else {}),
        "enable_padding": True,
        "batch_sizes": cuda_graph_batch_sizes(role.max_batch_size),
    }
    # The overlap scheduler would delay the hand-off of every prefill by one iteration.
    cfg["disable_overlap_scheduler"] = role.role == "prefill"
    cfg["print_iter_log"] = False
    merged = deep_merge(cfg, extra)
    graph = merged.get("cuda_graph_config")
    if isinstance(graph, dict) and "batch_sizes" in graph:
        graph["batch_sizes"] = _sanitise_graph_sizes(
            graph["batch_sizes"], role.max_batch_size, f"{where}.cuda_graph_config.batch_sizes"
        )
    return merged


def unknown_keys(cfg: dict[str, Any], family: TrtllmFamily) -> list[str]:
    """Dotted keys of a rendered engine config that the family does not know (empty when all are known)."""
    bad = [k for k in cfg if k not in family.top_keys]
    for key, allowed in family.sections.items():
        section = cfg.get(key)
        if allowed is not None and isinstance(section, dict):
            bad += [f"{key}.{sub}" for sub in section if sub not in allowed]
    return bad
