"""Every engine YAML autodeploy renders uses only keys (and backend values) its TensorRT-LLM release accepts."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import pytest
import yaml

from automation.config.schema import dynamo_versions
from automation.errors import InputError
from automation.stages.generate import render_files
from automation.trtllm_fields import SECTIONS, TrtllmFields, fields_for, recorded
from automation.versions import version_key
from tests.generate.cases import agg_plan, disagg_plan, pipeline

# Each TRT-LLM release autodeploy supports, with the oldest Dynamo release that ships it (its pipeline).
_BY_TRTLLM: dict[str, str] = {}
for _dynamo, _trtllm in sorted(dynamo_versions().items(), key=lambda kv: version_key(kv[0]), reverse=True):
    _BY_TRTLLM[_trtllm] = _dynamo
VERSIONS = sorted(_BY_TRTLLM, key=version_key)
MODES = ("agg", "disagg")
ROUTERS = ("round-robin", "kv")
CHECKS = ("llm_args", *SECTIONS, "cache_transceiver_backend")


@functools.cache
def engine_yamls(trtllm: str, mode: str, router: str) -> dict[str, dict[str, Any]]:
    """The engine YAMLs (file name -> parsed) generate renders for this release, mode and router."""
    config = pipeline([8, 8], dynamo={"version": _BY_TRTLLM[trtllm], "router_mode": router}, backend=trtllm)
    plan = agg_plan(tp=2, replicas=2) if mode == "agg" else disagg_plan(replicas=2)
    files = render_files(config, plan)
    out: dict[str, dict[str, Any]] = {}
    for role in plan.roles:
        name = f"{role.role}_config.yaml"
        raw = files[name]
        out[name] = yaml.safe_load(raw.decode() if isinstance(raw, bytes) else raw)
    return out


def problems(cfg: dict[str, Any], fields: TrtllmFields, check: str) -> tuple[list[str], list[str]]:
    """(keys the release rejects, keys that cannot be checked) of one engine YAML for one check.

    check: "llm_args" (top level), a section name, or "cache_transceiver_backend" (the value).
    """
    bad: list[str] = []
    unknown: list[str] = []
    if check == "llm_args":
        if fields.llm_args is None:
            return [], sorted(cfg)
        bad = [k for k in cfg if k not in fields.llm_args]
        # A nested mapping under a key whose class is not recorded cannot be checked further.
        unknown = [k for k, v in cfg.items() if isinstance(v, dict) and k not in SECTIONS]
    elif check == "cache_transceiver_backend":
        section = cfg.get("cache_transceiver_config")
        if isinstance(section, dict) and "backend" in section:
            allowed = fields.cache_transceiver_backends
            if allowed is None:
                unknown = ["cache_transceiver_config.backend"]
            elif str(section["backend"]) not in allowed:
                bad = [f"cache_transceiver_config.backend={section['backend']} (accepted: {sorted(allowed)})"]
    else:
        section = cfg.get(check)
        if isinstance(section, dict):
            allowed_keys = fields.section(check)
            if allowed_keys is None:
                unknown = [f"{check}.{k}" for k in section]
            else:
                bad = [f"{check}.{k}" for k in section if k not in allowed_keys]
                unknown = [f"{check}.{k}" for k, v in section.items() if isinstance(v, dict)]
    return bad, unknown


@pytest.mark.parametrize("trtllm", VERSIONS)
def test_rendered_engine_yaml_is_accepted(trtllm: str) -> None:
    """Every engine YAML of this release (agg and disagg, each router) against its recorded field sets.

    A release whose line has no recorded tag is skipped with the reason; keys under a class whose fields
    were not recorded are named in a warning (checked: nothing; claimed: nothing)."""
    try:
        fields = fields_for(trtllm)
    except InputError as err:
        pytest.skip(f"TRT-LLM {trtllm}: {err.message}")
    rejected: list[str] = []
    unchecked: set[str] = set()
    for mode in MODES:
        for router in ROUTERS:
            for name, cfg in engine_yamls(trtllm, mode, router).items():
                for check in CHECKS:
                    bad, unknown = problems(cfg, fields, check)
                    rejected += [f"{mode}/{router} {name}: {key}" for key in bad]
                    unchecked |= set(unknown)
    where = f"TRT-LLM {trtllm} (field set of tag {fields.tag})"
    assert not rejected, f"{where} rejects: " + "; ".join(rejected)
    if unchecked:
        warnings.warn(f"{where}: not recorded, so not checked: {', '.join(sorted(unchecked))}", stacklevel=1)


def test_fields_for_an_exact_tag() -> None:
    fields = fields_for("1.0.0")
    assert (fields.tag, fields.version) == ("1.0.0", "1.0.0")
    assert fields.source and fields.llm_args and "max_batch_size" in fields.llm_args


def test_fields_for_falls_back_to_the_newest_older_tag_of_the_line() -> None:
    assert fields_for("1.0.0rc7").tag == "1.0.0rc6"
    assert fields_for("1.0.0.post1").tag == "1.0.0"


@pytest.mark.parametrize("version", ["1.0.0rc4", "0.21.0", "9.9.0"])
def test_fields_for_refuses_without_an_older_tag_of_the_line(version: str) -> None:
    with pytest.raises(InputError) as err:
        fields_for(version)
    assert version in err.value.message and "\n" not in err.value.message and err.value.hint


def test_the_check_catches_keys_and_values_a_release_rejects() -> None:
    # TRT-LLM 1.0.0rc6: KvCacheConfig has no tokens_per_block (PR #5911 came later) and the transceiver
    # backends are lower-case (PR #6780 upper-cased them) -- read from the 1.0.0rc6 sources.
    fields = fields_for("1.0.0rc6")
    cfg = {
        "kv_cache_config": {"free_gpu_memory_fraction": 0.9, "tokens_per_block": 32},
        "cache_transceiver_config": {"backend": "DEFAULT"},
        "no_such_key": 1,
    }
    assert problems(cfg, fields, "kv_cache_config")[0] == ["kv_cache_config.tokens_per_block"]
    assert problems(cfg, fields, "cache_transceiver_backend")[0]
    assert problems(cfg, fields, "llm_args")[0] == ["no_such_key"]
    assert not problems(
        {"cache_transceiver_config": {"backend": "default"}}, fields, "cache_transceiver_backend"
    )[0]


def test_the_data_file_is_well_formed() -> None:
    for tag, entry in recorded().items():
        assert version_key(tag) and entry["source"], tag
        for key in ("llm_args", *SECTIONS, "cache_transceiver_backends"):
            value = entry.get(key)
            assert value is None or value == sorted(set(value)), f"{tag}.{key} not sorted and unique"
        if entry.get("cache_transceiver_backends") is not None:
            assert "backend" in entry["cache_transceiver_config"], tag


def test_the_script_derives_fields_from_source_and_viewcode() -> None:
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "derive-trtllm-fields.py"
    spec = importlib.util.spec_from_file_location("derive_trtllm_fields", path)
    assert spec and spec.loader
    script = importlib.util.module_from_spec(spec)
    # The script defines a dataclass, which looks its module up in sys.modules.
    sys.modules[spec.name] = script
    spec.loader.exec_module(script)
    source = (
        "class StrictBaseModel(BaseModel):\n    pass\n"
        "class CacheTransceiverConfig(StrictBaseModel):\n"
        '    backend: Optional[Literal["UCX", "DEFAULT"]] = Field(default=None)\n'
        "class BaseLlmArgs(StrictBaseModel):\n"
        "    max_batch_size: int\n    max_num_tokens: int\n    max_seq_len: int\n"
        '    mpi_session: object = Field(alias="_mpi_session")\n    _private: int\n'
        "class TorchLlmArgs(BaseLlmArgs):\n    kind: ClassVar[str]\n    print_iter_log: bool\n"
    )
    # A viewcode page wraps the same source in highlight spans, [docs] links and escaped quotes.
    page = (
        '<div class="highlight"><pre><div class="viewcode-block" id="X">'
        '<a class="viewcode-back" href="#">[docs]</a>\n'
        + source.replace('"', "&quot;").replace("class ", '<span class="k">class</span> ')
        + "</div></pre></div>"
    )
    for text in (source, page):
        entry = script.derive([text], "test")
        assert entry["llm_args"] == [
            "max_batch_size",
            "max_num_tokens",
            "max_seq_len",
            "mpi_session",
            "print_iter_log",
        ]
        assert entry["cache_transceiver_backends"] == ["DEFAULT", "UCX"]
        assert entry["kv_cache_config"] is None and entry["aliases"] == {
            "llm_args.mpi_session": "_mpi_session"
        }
        assert entry["batch_limits"] == {"top_level": True, "build_config": False}
