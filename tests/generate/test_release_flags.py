"""Worker flags and environment per Dynamo release: KV routing, block size, attention DP, only live variables."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from automation.errors import InputError
from automation.perfmodel.plan import Plan
from automation.stages.generate import render_files
from tests.generate.cases import agg_plan, disagg_plan, pipeline, role


def _script(release: str, plan: Plan, router: str = "round-robin", nodes: list[int] | None = None) -> str:
    config = pipeline(nodes or [8], dynamo={"version": release, "router_mode": router})
    return render_files(config, plan)["node_0_run.sh"].decode()


def _with_block_size(plan: Plan, size: int) -> Plan:
    return dataclasses.replace(
        plan, roles=tuple(dataclasses.replace(r, tokens_per_block=size) for r in plan.roles)
    )


@pytest.mark.parametrize(
    ("release", "flag"), [("0.8.1", "--publish-events-and-metrics"), ("1.3.1", "--publish-kv-events")]
)
def test_a_kv_router_gets_events_block_reuse_and_one_block_size(release: str, flag: str) -> None:
    """Before: `--publish-kv-events` on every release (0.7-1.2 rejected it), enable_block_reuse forced off,
    and no block size given, so the router and the workers agreed on 32 only by Dynamo's default."""
    plan = _with_block_size(agg_plan(), 64)
    config = pipeline([8], dynamo={"version": release, "router_mode": "kv"})
    files = render_files(config, plan)
    script = files["node_0_run.sh"].decode()
    assert f"{flag}" in script and "--kv-block-size 64" in script
    assert "--router-mode kv \\\n    --kv-cache-block-size 64" in script
    engine = yaml.safe_load(files["agg_config.yaml"])
    assert engine["kv_cache_config"]["enable_block_reuse"] is True
    assert engine["kv_cache_config"]["tokens_per_block"] == 64


def test_without_a_kv_router_reuse_stays_off_and_engine_extra_may_turn_it_on() -> None:
    config = pipeline([8], dynamo={"version": "1.6.1"})
    engine = yaml.safe_load(render_files(config, agg_plan())["agg_config.yaml"])
    assert engine["kv_cache_config"]["enable_block_reuse"] is False
    script = render_files(config, agg_plan())["node_0_run.sh"].decode()
    assert "--publish-kv-events" not in script and "--kv-cache-block-size" not in script
    extra = {"extra": {"kv_cache_config": {"enable_block_reuse": True}}}
    config = pipeline([8], dynamo={"version": "1.6.1"}, engine_settings=extra)
    engine = yaml.safe_load(render_files(config, agg_plan())["agg_config.yaml"])
    assert engine["kv_cache_config"]["enable_block_reuse"] is True


def test_roles_with_different_block_sizes_cannot_share_a_kv_router() -> None:
    plan = disagg_plan()
    plan = dataclasses.replace(
        plan, roles=(dataclasses.replace(plan.roles[0], tokens_per_block=64), plan.roles[1])
    )
    config = pipeline([8, 8], dynamo={"version": "1.6.1", "router_mode": "kv"})
    with pytest.raises(InputError, match=r"tokens_per_block differs between roles \(prefill 64, decode 32\)"):
        render_files(config, plan)


def _attention_dp_plan() -> Plan:
    moe = role("agg", tp=1, ep=8, attention_dp=8, batch=64, tokens=4064)
    return Plan(
        mode="agg",
        model="Qwen/Qwen3-235B-A22B-FP8",
        system="h200_sxm",
        roles=(moe,),
        replicas=1,
        isl=4000,
        osl=512,
    )


def test_attention_dp_is_told_to_dynamo_where_the_release_has_the_flag() -> None:
    """Before: 1.x workers never got --enable-attention-dp, so Dynamo routed to the worker, not its DP ranks."""
    assert "--enable-attention-dp" in _script("1.0.0", _attention_dp_plan())
    assert "--enable-attention-dp" in _script("1.6.1", _attention_dp_plan())
    assert "--enable-attention-dp" not in _script("0.9.1", _attention_dp_plan())  # no such flag in 0.x
    assert "--enable-attention-dp" not in _script("1.6.1", agg_plan())


def _exports(script: str) -> set[str]:
    return set(re.findall(r"^export (DYN_\w+)=", script, flags=re.M))


def test_only_variables_the_release_reads_are_written() -> None:
    """Before: DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS on every release (dead from 0.5.1), DYN_EVENT_PLANE_HOST and
    DYN_TCP_RESPONSE_STREAM_HOST on 1.0 (unknown there), and no bind address at all on 0.8/0.9, whose TCP
    request plane then advertised the first interface."""
    plan = agg_plan()
    old, mid, new = _script("0.5.0", plan), _script("0.8.1", plan), _script("1.6.1", plan)
    assert "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS" in old and "DYN_SYSTEM_ENABLED=true" in old
    for script in (mid, new):
        assert "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS" not in script and "DYN_SYSTEM_ENABLED" not in script
    assert _exports(mid) >= {"DYN_SYSTEM_HOST", "DYN_TCP_RPC_HOST"}
    assert "DYN_TCP_RESPONSE_STREAM_HOST" not in _exports(_script("1.0.0", plan))
    assert "DYN_EVENT_PLANE_HOST" not in _exports(_script("1.5.1", plan))
    assert _exports(new) >= {
        "DYN_SYSTEM_HOST",
        "DYN_TCP_RPC_HOST",
        "DYN_TCP_RESPONSE_STREAM_HOST",
        "DYN_EVENT_PLANE_HOST",
    }


def test_cuda_graph_config_names_its_mode_where_the_release_chooses_the_class_by_it() -> None:
    """TRT-LLM 1.3.0rc23 types cuda_graph_config as a union with Field(discriminator="mode") (recorded
    fields); Dynamo 1.6.1 ships 1.3.0rc29, so its YAML says mode: decode. 1.3.0rc19 (Dynamo 1.3.1) falls
    back on the 1.3.0rc11 record, whose CudaGraphConfig has no `mode`: writing it there would be refused."""
    new = yaml.safe_load(render_files(pipeline([8], dynamo="1.6.1"), agg_plan())["agg_config.yaml"])
    assert new["cuda_graph_config"]["mode"] == "decode"
    old = yaml.safe_load(render_files(pipeline([8], dynamo="1.3.1"), agg_plan())["agg_config.yaml"])
    assert "mode" not in old["cuda_graph_config"]
