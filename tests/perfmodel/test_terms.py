"""The perf model's FP4, MoE, MLA and KV-dtype terms against hand-computed values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from automation.perfmodel import compose, ops
from automation.perfmodel.arch import arch_from_config, load_model
from automation.perfmodel.plan import Parallelism
from automation.perfmodel.system import load_system

IDEAL = {
    **{
        k: 1.0
        for k in (
            "gemm_eff",
            "fp8_eff",
            "fp8_block_eff",
            "fp4_eff",
            "mem_eff",
            "attn_ctx_eff",
            "attn_gen_eff",
            "mla_gen_eff",
            "ar_eff",
            "moe_eff",
            "moe_fp4_eff",
        )
    },
    "knee": 200.0,
    "tile": 0.0,
    "moe_skew": 0.0,
    "m_tile": 1.0,
    **{k: 0.0 for k in ("gemm_us", "fp4_us", "attn_us", "ar_us", "moe_us", "moe_imbalance")},
}


@pytest.fixture()
def b200():
    """b200 with ideal efficiencies and no fixed costs: pure roofline (2.25/4.5/9 PF, 7.7 TB/s)."""
    return load_system("b200_sxm").with_fit(IDEAL)


def deepseek(quant: str = "fp8_block", kv: str = "fp8"):
    from dataclasses import replace

    return replace(load_model("deepseek-ai/DeepSeek-V3"), gemm_quant=quant, kv_dtype=kv)


# -- FP4 ------------------------------------------------------------------------------------------------


def test_fp4_gemm_has_its_own_efficiency_and_fixed_cost(b200):
    m, n, k = 8192, 8192, 8192
    flops = 2 * m * n * k
    assert ops.gemm_ms(b200, m, n, k, "fp4") == pytest.approx(flops / 9000e12 * 1e3, rel=1e-3)
    half = b200.with_fit({**b200.fit, "fp4_eff": 0.5, "fp8_eff": 0.1})
    assert ops.gemm_ms(half, m, n, k, "fp4") == pytest.approx(2 * flops / 9000e12 * 1e3, rel=1e-3)
    slow = b200.with_fit({**b200.fit, "fp4_us": 10.0})
    gap = ops.gemm_ms(slow, 1, n, k, "fp4") - ops.gemm_ms(b200, 1, n, k, "fp4")
    assert gap == pytest.approx(0.010)
    # fp8 GEMMs do not pay it.
    assert ops.gemm_ms(slow, 1, n, k, "fp8") == pytest.approx(ops.gemm_ms(b200, 1, n, k, "fp8"))


def test_fp4_experts_use_moe_fp4_eff_not_moe_eff(b200):
    arch = deepseek("fp4")
    base = ops.moe_experts_ms(arch, b200, 65536, 1, 1)
    other = b200.with_fit({**b200.fit, "moe_eff": 0.1})
    assert ops.moe_experts_ms(arch, other, 65536, 1, 1) == pytest.approx(base)
    half = b200.with_fit({**b200.fit, "moe_fp4_eff": 0.5})
    assert ops.moe_experts_ms(arch, half, 65536, 1, 1) == pytest.approx(2 * base, rel=0.02)


# -- MoE: statistical straggler and fixed cost ----------------------------------------------------------


def test_hottest_rank_formula():
    assert ops.hottest_rank(100.0, 1) == pytest.approx(100.0)
    assert ops.hottest_rank(32.0, 8) == pytest.approx(32 + math.sqrt(2 * 32 * math.log(8)))
    rel = [float(ops.hottest_rank(x, 8)) / x for x in (1.0, 8.0, 64.0, 512.0)]
    assert all(a > b for a, b in itertools.pairwise(rel)) and rel[-1] < 1.2


def test_expert_imbalance_grows_as_tokens_per_rank_fall(b200):
    """Per routed token, an EP=8 rank's expert compute costs more at small batches than at large ones."""
    arch = deepseek()
    per_token = [float(ops.moe_experts_ms(arch, b200, t, 1, 8)) / t for t in (4096.0, 65536.0)]
    assert per_token[0] > 1.05 * per_token[1]
    # With ep = 1 there is no straggler: compute-bound cost is exactly linear in tokens.
    one = [float(ops.moe_experts_ms(arch, b200, t, 1, 1)) / t for t in (65536.0, 131072.0)]
    assert one[0] == pytest.approx(one[1], rel=1e-3)


def test_moe_fixed_cost_is_per_moe_layer(b200):
    arch = load_model("Qwen/Qwen3-30B-A3B")
    slow = b200.with_fit({**b200.fit, "moe_us": 20.0})
    par = Parallelism(tp=1)
    gap = float(compose.decode_ms(arch, slow, par, 4, 1000) - compose.decode_ms(arch, b200, par, 4, 1000))
    assert gap == pytest.approx(arch.moe_layers * 0.020)


# -- MLA ------------------------------------------------------------------------------------------------


def test_mla_decode_costs_the_absorbed_kernel():
    """128 heads (attention DP) at 8k context on H200: compute-bound at 2·kv·heads·(2r + ρ) FLOPs."""
    h200 = load_system("h200_sxm").with_fit(IDEAL)
    arch = deepseek()
    reqs, kv = 64, 8192
    flops = 2 * reqs * kv * 128 * (2 * 512 + 64)
    nbytes = reqs * kv * 576 * 1
    t = float(ops.generation_attention_ms(arch, h200, 1, reqs, kv))
    assert t == pytest.approx(flops / 1978e12 * 1e3, rel=1e-3)
    assert flops / 1978e12 > nbytes / 4.8e12  # the old form's 4·d = 768 FLOPs per head-token: a third


def test_mla_decode_heads_are_padded_to_a_tile(b200):
    arch = deepseek()
    slow = b200.with_fit({**b200.fit, "mla_gen_eff": 0.01})  # make the math visible
    t = [float(ops.generation_attention_ms(arch, slow, tp, 8, 4096)) for tp in (2, 4, 8)]
    assert t[1] == pytest.approx(t[2]) and t[0] == pytest.approx(t[1])  # 64, 32, 16 heads: one 64-head tile
    assert float(ops.generation_attention_ms(arch, slow, 1, 8, 4096)) == pytest.approx(2 * t[0], rel=1e-3)


def test_mla_prefill_runs_on_decompressed_heads(b200):
    arch = deepseek(kv="bf16")
    reqs, seq = 1, 8192
    flops = reqs * seq**2 * 128 * (192 + 128)
    t = float(ops.context_attention_ms(arch, b200, 1, reqs, seq))
    assert t == pytest.approx(flops / 2250e12 * 1e3, rel=1e-3)


def test_mla_projections_hold_the_attention_weights(b200):
    """At one token every projection streams its weights: their bytes are attn_weight_params − o_proj."""
    arch = deepseek()
    proj = arch.attn_weight_params - 128 * 128 * 7168
    wb = 1.0 + 4.0 / (128 * 128)
    t = float(ops.mla_projections_ms(arch, b200, 1, 1, "fp8_block"))
    assert t == pytest.approx(proj * wb / 7.7e12 * 1e3, rel=0.01)
    # The fused down-projection (q_a + kv_a) is replicated over TP, the rest is split.
    fused = 7168 * (1536 + 512 + 64)
    t8 = float(ops.mla_projections_ms(arch, b200, 8, 1, "fp8_block"))
    assert t8 == pytest.approx((fused + (proj - fused) / 8) * wb / 7.7e12 * 1e3, rel=0.01)


# -- KV-cache dtype -------------------------------------------------------------------------------------

CFG = {
    "hidden_size": 4096,
    "num_hidden_layers": 4,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 12288,
    "vocab_size": 1000,
}


def test_kv_dtype_follows_the_checkpoint_like_aiconfigurator():
    assert arch_from_config("x", CFG).kv_dtype == "bf16"
    fp8 = {**CFG, "quantization_config": {"quant_method": "fp8"}}
    assert arch_from_config("x", fp8).kv_dtype == "fp8"  # quantized checkpoint, KV not stated: fp8
    hq_fp8 = {"quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8"}}
    assert arch_from_config("x", CFG, hq_fp8).kv_dtype == "fp8"
    stated_bf16 = {**CFG, "quantization_config": {"quant_method": "fp8", "kv_cache_quant_algo": "BF16"}}
    assert arch_from_config("x", stated_bf16).kv_dtype == "bf16"


def test_engine_kv_cache_dtype_overrides_the_checkpoint():
    bf16 = arch_from_config("x", CFG)
    assert bf16.with_kv_cache("fp8").kv_dtype == "fp8"
    assert bf16.with_kv_cache("auto") is bf16 and bf16.with_kv_cache(None) is bf16
    assert bf16.with_kv_cache("fp8").kv_bytes_per_token() == bf16.kv_bytes_per_token() / 2


def test_bf16_kv_cache_doubles_decode_attention_reads(b200):
    fp8 = load_model("Qwen/Qwen3-32B-FP8")
    from dataclasses import replace

    bf16 = replace(fp8, kv_dtype="bf16")
    t8 = float(ops.generation_attention_ms(fp8, b200, 1, 64, 8192))
    t16 = float(ops.generation_attention_ms(bf16, b200, 1, 64, 8192))
    assert t16 == pytest.approx(2 * t8, rel=1e-3)
    assert np.isfinite(t8)
