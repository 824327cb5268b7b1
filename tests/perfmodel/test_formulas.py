"""Perf-model formulas against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from automation.perfmodel import compose, ops
from automation.perfmodel.arch import load_model, param_count
from automation.perfmodel.plan import Parallelism
from automation.perfmodel.system import load_system


@pytest.fixture()
def ideal():
    """h200 with ideal efficiencies, no fixed costs and a near-hard max, so results are pure roofline."""
    fit = {
        k: 1.0
        for k in (
            "gemm_eff",
            "fp8_eff",
            "fp8_block_eff",
            "mem_eff",
            "attn_ctx_eff",
            "attn_gen_eff",
            "ar_eff",
            "moe_eff",
        )
    }
    fit.update(
        knee=200.0, tile=0.0, moe_skew=0.0, gemm_us=0.0, attn_us=0.0, ar_us=0.0, moe_us=0.0, moe_imbalance=0.0
    )
    return load_system("h200_sxm").with_fit(fit)


def test_param_counts_match_published_sizes():
    assert param_count(load_model("Qwen/Qwen3-8B")) / 1e9 == pytest.approx(8.19, rel=0.01)
    assert param_count(load_model("nvidia/Llama-3.1-70B-Instruct-FP8")) / 1e9 == pytest.approx(
        70.55, rel=0.01
    )
    assert param_count(load_model("Qwen/Qwen3-30B-A3B")) / 1e9 == pytest.approx(30.5, rel=0.01)
    assert param_count(load_model("Qwen/Qwen3-235B-A22B-FP8")) / 1e9 == pytest.approx(235.1, rel=0.01)


def test_blend_is_max_ish():
    assert ops.blend(2.0, 0.0, 3.0) == pytest.approx(2.0)
    assert ops.blend(1.0, 1.0, 2.0) == pytest.approx(math.sqrt(2.0))
    assert ops.blend(10.0, 1.0, 50.0) == pytest.approx(10.0, rel=1e-6)


def test_dense_layer_gemm_flops_and_bytes(ideal):
    """Qwen3-8B gate/up GEMM (N = 2·12288, K = 4096, bf16) at tp1."""
    n, k = 2 * 12288, 4096
    # Compute-bound: 4096 tokens → 2·m·n·k FLOPs at 989 TFLOPS.
    m = 4096
    assert ops.gemm_ms(ideal, m, n, k, "bf16") == pytest.approx(2 * m * n * k / 989e12 * 1e3, rel=1e-3)
    # Memory-bound: one token reads the weights (2 bytes each) + activations, at 4.8 TB/s.
    m = 1
    nbytes = 2 * n * k + 2 * m * k + 2 * m * n
    assert ops.gemm_ms(ideal, m, n, k, "bf16") == pytest.approx(nbytes / 4.8e12 * 1e3, rel=1e-3)


def test_one_dense_layer_decode_is_weight_streaming(ideal):
    """A decode step of one token is the weight bytes over bandwidth plus KV reads and small ops."""
    arch = load_model("Qwen/Qwen3-8B")
    h, i, d = 4096, 12288, 128
    w_layer = 2 * (h * (32 + 16) * d + 32 * d * h + 3 * h * i)  # bf16 bytes of one layer
    t = compose.decode_ms(arch, ideal, Parallelism(tp=1), 1, 1000)
    lower = arch.num_layers * w_layer / 4.8e12 * 1e3
    assert lower < t < lower * 1.3


def test_one_moe_layer(ideal):
    """Qwen3-30B-A3B experts, 1 token, ep1: topk experts' weights stream once; FLOPs are topk experts."""
    arch = load_model("Qwen/Qwen3-30B-A3B")
    h, inter, e, k = 2048, 768, 128, 8
    active = e * (1 - math.exp(-k / e))
    nbytes = active * 3 * h * inter * 2 + k * (2 * h + 3 * inter) * 2
    assert ops.moe_experts_ms(arch, ideal, 1, 1, 1) == pytest.approx(nbytes / 4.8e12 * 1e3, rel=1e-3)
    # 8192 tokens is compute-bound: 2·tokens·topk·3·h·I FLOPs at the bf16 peak.
    flops = 2 * 8192 * k * 3 * h * inter
    assert ops.moe_experts_ms(arch, ideal, 8192, 1, 1) == pytest.approx(flops / 989e12 * 1e3, rel=2e-2)


def test_moe_imbalance_slows_the_hot_rank():
    sysc = load_system("h200_sxm")
    arch = load_model("Qwen/Qwen3-30B-A3B")
    base = sysc.with_fit({**sysc.fit, "moe_imbalance": 0.0})
    assert ops.moe_experts_ms(arch, sysc, 8192, 1, 8) > ops.moe_experts_ms(arch, base, 8192, 1, 8)


def test_allreduce_two_regimes():
    sysc = load_system("h200_sxm").with_fit({"ar_us": 10.0, "ar_eff": 1.0})
    bw = 450e9
    small, large = 16 * 1024, 256 * 2**20
    one = 10e-6 + 7 * small / bw
    assert ops.allreduce_ms(sysc, 8, small) == pytest.approx(one * 1e3)
    ring = 2 * 10e-6 * 3 + 2 * large * 7 / 8 / bw
    assert ops.allreduce_ms(sysc, 8, large) == pytest.approx(ring * 1e3)
    assert ops.allreduce_ms(sysc, 1, large) == 0.0
    # Beyond one node the inter-node link (50 GB/s) carries it.
    assert ops.allreduce_ms(sysc, 16, large) > 5 * ops.allreduce_ms(sysc, 8, large)


def test_kv_bytes_and_transfer():
    arch = load_model("Qwen/Qwen3-32B-FP8")
    assert arch.kv_bytes_per_token_total() == 64 * 2 * 8 * 128 * 1
    sysc = load_system("h200_sxm")
    t_nv = compose.kv_transfer_ms(arch, sysc, 4000, 1, False)
    t_ib = compose.kv_transfer_ms(arch, sysc, 4000, 1, True)
    assert t_nv == pytest.approx((sysc.kv_transfer_us * 1e-6 + 4000 * 131072 / 450e9) * 1e3)
    assert t_ib == pytest.approx((sysc.kv_transfer_us * 1e-6 + 4000 * 131072 / 50e9) * 1e3)


def test_decode_mean_kv_matches_the_stride_average():
    isl, osl = 4000, 512
    steps = range(0, osl - 1, 32)
    w = [min(32, osl - 1 - i) for i in steps]
    mean = sum(wi * (isl + i + 1) for wi, i in zip(w, steps, strict=True)) / sum(w)
    assert compose.decode_mean_kv(isl, osl) == pytest.approx(mean)


def test_agg_composition_matches_reference_formula():
    """TTFT/TPOT from given step times follow the reference's IFB arithmetic (row E00024 check)."""
    sysc, arch = load_system("h200_sxm"), load_model("Qwen/Qwen3-32B-FP8")
    m = compose.agg_metrics(arch, sysc, Parallelism(tp=4), 16, 4000, 4000, 512)
    mix, gen = float(m["mixed_ms"]), float(m["gen_ms"])
    assert float(m["ttft_ms"]) == pytest.approx(mix * min(2 + (16 - 3) / 20, 4))
    assert float(m["tpot_ms"]) == pytest.approx((mix * 13 + gen * 496) / 509)
    assert float(m["tokens_s"]) == pytest.approx(16 * 511 / (16 * mix + 496 * gen) * 1e3)


def test_memory_of_qwen3_32b_fp8_tp1():
    """weights ≈ 32 GiB fp8 + bf16 embeddings, plus 3.5 GiB other: ~36.7 GiB at bs1 ISL 4000 (reference 36.6)."""
    sysc, arch = load_system("h200_sxm"), load_model("Qwen/Qwen3-32B-FP8")
    m = compose.memory_parts(arch, sysc, Parallelism(tp=1), 4000, 1, 4512, 0.9)
    assert float(m["total"]) / 2**30 == pytest.approx(36.6, rel=0.02)


def test_vectorised_over_batch():
    sysc, arch = load_system("h100_sxm"), load_model("Qwen/Qwen3-8B")
    b = np.array([1.0, 8.0, 64.0])
    out = compose.decode_tpot_ms(arch, sysc, Parallelism(tp=2), b, 1000, 1000)
    assert out.shape == (3,)
