"""Engine YAMLs: the plan's values, the version family's layout and keys, overrides, and one-line errors."""

from __future__ import annotations

import pytest
import yaml

from automation.engine_config import (
    cuda_graph_batch_sizes,
    engine_config,
    trtllm_family,
    unknown_keys,
)
from automation.errors import InputError
from automation.stages.generate import render_files
from automation.versions import dynamo_release, refusal, version_key
from tests.generate.cases import agg_plan, disagg_plan, golden_cases, pipeline, role

FAMILIES = {
    "1.0.0rc6": ("1.0", "build_config"),
    "1.0.0": ("1.0", "build_config"),
    "1.1.0rc5": ("1.1", "build_config"),
    "1.2.0rc2": ("1.2.0rc0-rc3", "build_config"),
    "1.2.0rc3": ("1.2.0rc0-rc3", "build_config"),
    "1.2.0rc5": ("1.2", "top_level"),
    "1.2.0rc6.post1": ("1.2", "top_level"),
    "1.3.0rc1": ("1.3", "top_level"),
    "1.3.0rc5.post1": ("1.3", "top_level"),
    "1.3.0rc23": ("1.3", "top_level"),
    "1.3.0": ("1.3", "top_level"),
}


@pytest.mark.parametrize("version", sorted(FAMILIES, key=version_key))
def test_family_and_layout(version: str) -> None:
    family = trtllm_family(version)
    assert (family.name, family.batch_limits) == FAMILIES[version]
    plan = disagg_plan()
    for r in plan.roles:
        cfg = engine_config(plan, r, family, {}, "engine.extra")
        limits = cfg["build_config"] if family.batch_limits == "build_config" else cfg
        assert (limits["max_batch_size"], limits["max_num_tokens"], limits["max_seq_len"]) == (
            r.max_batch_size,
            r.max_num_tokens,
            r.max_seq_len,
        )
        if family.batch_limits == "top_level":
            assert "build_config" not in cfg
        else:
            assert "max_batch_size" not in cfg
        assert unknown_keys(cfg, family) == []


def test_every_rendered_yaml_parses_and_uses_known_keys() -> None:
    for name, (config, plan) in golden_cases().items():
        family = trtllm_family(str(config.backend.version))
        files = render_files(config, plan)
        for r in plan.roles:
            cfg = yaml.safe_load(files[f"{r.role}_config.yaml"])
            assert unknown_keys(cfg, family) == [], name
            kv = cfg["kv_cache_config"]
            assert kv["enable_block_reuse"] is (config.dynamo.router_mode == "kv"), name
            assert kv["free_gpu_memory_fraction"] == r.free_gpu_memory_fraction
            # TRT-LLM 1.0's KvCacheConfig has no tokens_per_block (recorded fields): it must not be written.
            assert kv.get("tokens_per_block", r.tokens_per_block) == r.tokens_per_block
            assert ("tokens_per_block" in kv) is family.has_tokens_per_block, name
            assert cfg["enable_chunked_prefill"] == r.enable_chunked_prefill
            assert cfg["disable_overlap_scheduler"] is (r.role == "prefill")
            sizes = cfg["cuda_graph_config"]["batch_sizes"]
            assert sizes == sorted(set(sizes)) and max(sizes) == r.max_batch_size
            assert ("cache_transceiver_config" in cfg) == (plan.mode == "disagg")
        manifest = list(yaml.safe_load_all(files["k8s_deploy.yaml"]))
        assert [d["kind"] for d in manifest] == ["ConfigMap", "DynamoGraphDeployment"]
        for rel, text in manifest[0]["data"].items():
            assert yaml.safe_load(text) == yaml.safe_load(files[rel]), f"{name}: ConfigMap {rel} differs"


@pytest.mark.parametrize("batch", [1, 2, 3, 8, 48, 64, 100, 512])
def test_cuda_graph_batch_sizes(batch: int) -> None:
    sizes = cuda_graph_batch_sizes(batch)
    assert sizes == sorted(set(sizes)) and sizes[0] == 1 and sizes[-1] == batch


def test_attention_dp_and_expert_parallel_keys() -> None:
    plan = agg_plan()
    moe = role("agg", tp=1, attention_dp=4, ep=4, batch=16)
    cfg = engine_config(plan, moe, trtllm_family("1.3.0rc23"), {}, "engine.extra")
    assert cfg["tensor_parallel_size"] == 4 and cfg["enable_attention_dp"] is True
    assert cfg["moe_expert_parallel_size"] == 4 and cfg["moe_tensor_parallel_size"] == 1


def test_extras_are_merged_per_role() -> None:
    config, plan = golden_cases()["family_1.3"]
    files = render_files(config, plan)
    decode = yaml.safe_load(files["decode_config.yaml"])
    prefill = yaml.safe_load(files["prefill_config.yaml"])
    assert decode["print_iter_log"] is True and prefill["print_iter_log"] is True
    assert decode["kv_cache_config"]["host_cache_size"] == 1000000000
    assert decode["kv_cache_config"]["dtype"] == "fp8"  # merged into, not replaced
    assert "host_cache_size" not in prefill["kv_cache_config"]


def test_graph_sizes_from_extra_are_capped_at_the_batch() -> None:
    config = pipeline([8], engine_settings={"extra": {"cuda_graph_config": {"batch_sizes": [256, 1, 8, 8]}}})
    cfg = yaml.safe_load(render_files(config, agg_plan(batch=48))["agg_config.yaml"])
    assert cfg["cuda_graph_config"]["batch_sizes"] == [1, 8, 48]


def _error(config, plan) -> str:
    with pytest.raises(InputError) as info:
        render_files(config, plan)
    text = str(info.value)
    assert "\n" not in text
    return text


def test_unknown_extra_key_names_the_field_and_suggests() -> None:
    config = pipeline([8], engine_settings={"decode": {"extra": {"print_iter_logs": True}}}, checked=False)
    text = _error(config, disagg_plan(replicas=1))
    assert "engine.decode.extra.print_iter_logs" in text and "did you mean 'print_iter_log'" in text


def test_unknown_nested_extra_key() -> None:
    config = pipeline([8], engine_settings={"extra": {"kv_cache_config": {"host_cache": 1}}}, checked=False)
    text = _error(config, agg_plan())
    assert "engine.extra.kv_cache_config.host_cache" in text and "host_cache_size" in text


def test_extra_may_not_change_what_the_plan_decided() -> None:
    config = pipeline([8], engine_settings={"agg": {"extra": {"max_batch_size": 4}}}, checked=False)
    text = _error(config, agg_plan())
    assert "engine.agg.extra.max_batch_size" in text and "engine.max_batch_size" in text
    config = pipeline(
        [8], engine_settings={"extra": {"kv_cache_config": {"free_gpu_memory_fraction": 0.5}}}, checked=False
    )
    assert "engine.extra.kv_cache_config.free_gpu_memory_fraction" in _error(config, agg_plan())


def test_build_config_is_refused_where_the_limits_are_top_level() -> None:
    config = pipeline(
        [8], backend="1.3.0rc23", engine_settings={"extra": {"build_config": {}}}, checked=False
    )
    assert "engine.extra.build_config" in _error(config, agg_plan())


@pytest.mark.parametrize(
    ("version", "why", "nearest"),
    [
        ("1.2.0rc4", "falls between the engine-YAML layouts autodeploy knows", "1.2.0rc3"),
        ("1.4.0rc1", "is newer than the 1.3 line, the newest whose engine-YAML layout is known", "1.3.0rc29"),
        ("0.20.0", "predates 1.0.0rc0, the oldest release whose engine-YAML layout is known", "1.0.0rc4"),
    ],
)
def test_an_unknown_trtllm_version_is_refused_naming_the_nearest_shipped_one(
    version: str, why: str, nearest: str
) -> None:
    text = _error(pipeline([8], backend=version, checked=False), agg_plan())
    assert f"TensorRT-LLM {version} {why}" in text
    assert f"; use {nearest}, the nearest a supported Dynamo ships" in text


def test_dynamo_release_facts() -> None:
    assert dynamo_release("0.5.0").model_flag == "--model-path"
    assert dynamo_release("0.5.1").components == {
        "agg": "tensorrt_llm",
        "decode": "tensorrt_llm",
        "prefill": "tensorrt_llm_next",
    }
    assert dynamo_release("0.7.1").strategy_flag == ()
    assert dynamo_release("1.6.1").model_flag == "--model"
    assert dynamo_release("1.3.0").components["prefill"] == "prefill"
    # --publish-kv-events only from 1.3 (0.7.1, 0.8.1 and 1.0.0 reject it); the older flag before.
    assert dynamo_release("1.2.1").kv_events_flag == "--publish-events-and-metrics"
    assert dynamo_release("0.8.1").kv_events_flag == "--publish-events-and-metrics"
    assert dynamo_release("1.3.0.post1").kv_events_flag == "--publish-kv-events"
    assert dynamo_release("0.9.1").attention_dp_flag is None
    assert dynamo_release("1.0.0").attention_dp_flag == "--enable-attention-dp"
    assert dynamo_release("0.8.1").bind_address_env == ("DYN_SYSTEM_HOST", "DYN_TCP_RPC_HOST")
    assert dynamo_release("1.6.1").bind_address_env[-1] == "DYN_EVENT_PLANE_HOST"
    assert dynamo_release("0.6.1").image_user == "root"
    assert dynamo_release("0.7.0").image_user.startswith("dynamo")
    with pytest.raises(InputError, match=r"dynamo\.version: Dynamo 0\.3\.0 predates 0\.4\.0"):
        dynamo_release("0.3.0")


@pytest.mark.parametrize(
    ("version", "reason"),
    [
        ("0.3.2", "Dynamo 0.3.2 predates 0.4.0, the oldest release autodeploy supports; use 0.4.0 or later"),
        (
            "1.7.0",
            "Dynamo 1.7.0 is newer than 1.6.1, the newest release autodeploy's command lines are checked",
        ),
        ("1.2.5", "Dynamo 1.2.5 is not a published release; use 1.2.1, the nearest supported release"),
        ("1.4.0.dev20260723", "is a development build; use 1.3.1, the nearest supported release"),
        ("latest", "'latest' is not a Dynamo release; use one like 1.6.1"),
    ],
)
def test_every_refusal_is_one_line_naming_the_nearest_supported_release(version: str, reason: str) -> None:
    said = refusal(version)
    assert said is not None and reason in said and "\n" not in said


def test_every_release_from_0_4_to_1_6_1_is_supported() -> None:
    """The releases users run (PyPI's ai-dynamo 0.4.0 .. 1.6.1, and the image-only 1.2.0 and 1.3.0)."""
    on_pypi = [
        "0.4.0",
        "0.4.0.post0",
        "0.4.1",
        "0.5.0",
        "0.5.1",
        "0.6.0",
        "0.6.1",
        "0.7.0",
        "0.7.0.post1",
        "0.7.1",
        "0.8.0",
        "0.8.1",
        "0.8.1.post1",
        "0.8.1.post2",
        "0.8.1.post3",
        "0.9.0",
        "0.9.1",
        "1.0.0",
        "1.0.1",
        "1.0.2",
        "1.1.0",
        "1.1.1",
        "1.2.0.post1",
        "1.2.1",
        "1.3.0.post1",
        "1.3.1",
        "1.4.0",
        "1.4.1",
        "1.4.2",
        "1.5.0",
        "1.5.1",
        "1.6.0",
        "1.6.1",
    ]
    for version in [*on_pypi, "1.2.0", "1.3.0"]:
        assert refusal(version) is None, version
    from automation.config import dynamo_versions

    table = list(dynamo_versions())
    assert table == sorted(table, key=version_key) and table[-1] == "1.6.1"
    assert pipeline([8], dynamo={}).dynamo.version == "1.6.1"  # the default is the newest


def test_version_order() -> None:
    ordered = ["1.2.0rc2", "1.2.0rc6", "1.2.0rc6.post1", "1.2.0", "1.2.0.post1", "1.3.0rc1"]
    assert sorted(reversed(ordered), key=version_key) == ordered
    with pytest.raises(InputError):
        version_key("latest")


def test_every_release_in_the_version_table_can_be_generated() -> None:
    from automation.config import dynamo_versions

    for dynamo, trtllm in dynamo_versions().items():
        assert trtllm_family(trtllm).name
        assert dynamo_release(dynamo).components


def test_shared_and_role_extras_merge_key_by_key() -> None:
    config = pipeline(
        [8],
        engine_settings={
            "extra": {"kv_cache_config": {"host_cache_size": 1}, "print_iter_log": True},
            "agg": {"extra": {"kv_cache_config": {"onboard_blocks": False}}},
        },
    )
    cfg = yaml.safe_load(render_files(config, agg_plan())["agg_config.yaml"])
    assert (
        cfg["kv_cache_config"]["host_cache_size"] == 1 and cfg["kv_cache_config"]["onboard_blocks"] is False
    )
    assert cfg["print_iter_log"] is True


def test_a_plan_that_cannot_be_deployed_is_refused() -> None:
    import dataclasses

    plan = dataclasses.replace(disagg_plan(), mode="agg")
    assert "re-run the configure stage" in _error(pipeline([8, 8]), plan)


def test_engine_extra_is_checked_against_the_releases_recorded_fields() -> None:
    """kv_cache_config.onboard_blocks is a field of 1.2.0rc6.post1's KvCacheConfig, not of 1.3.0rc23's
    (data/trtllm_fields.yaml): TRT-LLM 1.3.0rc29 (Dynamo 1.6.1) would reject it at start."""
    extra = {"extra": {"kv_cache_config": {"onboard_blocks": False}}}
    old = pipeline([8], dynamo="0.8.1", engine_settings=extra, checked=False)
    assert (
        yaml.safe_load(render_files(old, agg_plan())["agg_config.yaml"])["kv_cache_config"]["onboard_blocks"]
        is False
    )
    new = pipeline([8], dynamo="1.6.1", engine_settings=extra, checked=False)
    assert "engine.extra.kv_cache_config.onboard_blocks: unknown key 'onboard_blocks'" in _error(
        new, agg_plan()
    )
