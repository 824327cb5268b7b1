"""The plan as deployed: requests up to max_seq_len admitted, and KV transfer as Dynamo's router places it."""

from __future__ import annotations

import dataclasses

import pytest

import automation.perfmodel as pm
from automation.errors import InputError
from automation.perfmodel import compose
from automation.perfmodel.evaluate import estimate, kv_capacity_tokens
from automation.perfmodel.plan import admit_requests
from automation.stages.configure import deployed_plan
from tests.generate.cases import agg_plan, disagg_plan, pipeline


def _config(max_seq_len: int | None = None, chunked: bool | None = None):  # type: ignore[no-untyped-def]
    config = pipeline([8])
    if max_seq_len is not None:
        config.workload.max_seq_len = max_seq_len
    if chunked is not None:
        config.engine.enable_chunked_prefill = chunked
    return config


def test_the_default_admits_the_models_context_and_chunks_long_prompts() -> None:
    """Before: max_seq_len = isl + osl exactly, so a prompt one token longer than the benchmark's (a BOS
    token) was refused. Now the model's context length (Qwen3-32B-FP8: 40960) bounds it."""
    plan = agg_plan(tp=2)
    deployed = deployed_plan(_config(), plan)
    arch = pm.load_model(plan.model)
    assert arch.context_length == 40960
    for role in deployed.roles:
        assert role.max_seq_len == 40960 > plan.isl + plan.osl
        assert role.enable_chunked_prefill is (role.max_seq_len > role.max_num_tokens) is True


def test_kv_capacity_bounds_the_default() -> None:
    """A worker whose KV cache holds fewer tokens than the context length admits only what it can hold."""
    plan = disagg_plan(p_tp=1, d_tp=1)
    arch, system = pm.load_model(plan.model), pm.load_system(plan.system)
    capacity = min(kv_capacity_tokens(arch, system, r) for r in plan.roles)
    assert capacity > 0
    squeezed = dataclasses.replace(
        plan, roles=tuple(dataclasses.replace(r, free_gpu_memory_fraction=0.01) for r in plan.roles)
    )
    small = min(kv_capacity_tokens(arch, system, r) for r in squeezed.roles)
    assert small < arch.context_length
    deployed = deployed_plan(_config(), squeezed)
    assert {r.max_seq_len for r in deployed.roles} == {max(small, plan.isl + plan.osl)}
    assert small % 32 == 0  # whole KV blocks


def test_a_configured_max_seq_len_is_deployed_and_checked() -> None:
    plan = agg_plan(tp=2)
    assert {r.max_seq_len for r in deployed_plan(_config(8192), plan).roles} == {8192}
    with pytest.raises(InputError, match=r"workload.max_seq_len 100 is below the workload's own requests"):
        deployed_plan(_config(100), plan)
    with pytest.raises(InputError, match=r"above Qwen/Qwen3-32B-FP8's context length \(40960 tokens\)"):
        deployed_plan(_config(131072), plan)


def test_a_pipeline_that_fixes_chunked_prefill_keeps_it() -> None:
    deployed = deployed_plan(_config(chunked=False), agg_plan(tp=2))
    assert {r.enable_chunked_prefill for r in deployed.roles} == {False}


def test_admitting_longer_requests_does_not_change_the_prediction_of_the_workload() -> None:
    """Memory is planned for the workload's requests; TRT-LLM sizes its KV pool by fraction, not max_seq_len."""
    for plan in (agg_plan(tp=2), disagg_plan(p_tp=2, d_tp=4)):
        wide = admit_requests(plan, 40960, {})
        assert estimate(wide) == estimate(plan)


def test_kv_transfer_is_charged_as_dynamos_router_places_it() -> None:
    """The router picks any prefill worker for a request, so on n nodes 1 − 1/n of the transfers cross."""
    system = pm.load_system("h200_sxm")
    assert float(compose.cross_node_fraction(8, 8)) == 0.0
    assert float(compose.cross_node_fraction(16, 8)) == pytest.approx(0.5)
    assert float(compose.cross_node_fraction(32, 8)) == pytest.approx(0.75)
    arch = pm.load_model("Qwen/Qwen3-32B-FP8")
    nvlink = float(compose.kv_transfer_ms(arch, system, 4000, 1, 0.0))
    inter = float(compose.kv_transfer_ms(arch, system, 4000, 1, 1.0))
    half = float(compose.kv_transfer_ms(arch, system, 4000, 1, 0.5))
    assert nvlink < half < inter
    assert half == pytest.approx((nvlink + inter) / 2)
    # Two replicas of a plan that fits a node: before, no transfer crossed nodes; now half of them do.
    one = disagg_plan(p_tp=2, d_tp=2, replicas=1)
    two_nodes = dataclasses.replace(one, replicas=4)  # 16 GPUs
    assert estimate(two_nodes).ttft_ms > estimate(one).ttft_ms
