"""Per-op roofline latencies of one TRT-LLM forward step, vectorised over numpy arrays (times in ms)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from automation.perfmodel.arch import ModelArch
from automation.perfmodel.plan import Parallelism
from automation.perfmodel.system import SystemSpec

Arr = Any  # a float or a numpy array; every function here broadcasts


@dataclass(frozen=True)
class ParallelismGrid:
    """Many Parallelism values at once, as four broadcastable arrays (the vectorised sweep's configs)."""

    tp: Arr
    pp: Arr
    ep: Arr
    attention_dp: Arr

    @classmethod
    def of(cls, configs: Sequence[Parallelism]) -> ParallelismGrid:
        """The configs as float arrays, element i being configs[i]."""
        return cls(
            tp=np.array([c.tp for c in configs], dtype=float),
            pp=np.array([c.pp for c in configs], dtype=float),
            ep=np.array([c.ep for c in configs], dtype=float),
            attention_dp=np.array([c.attention_dp for c in configs], dtype=float),
        )

    @property
    def gpus(self) -> Arr:
        """GPUs of one worker: tp · pp · attention_dp, element-wise."""
        return np.asarray(self.tp, dtype=float) * self.attention_dp * self.pp


# One worker's parallelism, or many of them (every op broadcasts over the grid's arrays).
Par = Parallelism | ParallelismGrid


def blend(compute_s: Arr, memory_s: Arr, knee: float) -> Arr:
    """Max-ish of compute and memory time: (c^p + m^p)^(1/p).

    A hard max(c, m) is too optimistic at the crossover, where neither unit is saturated; the p-norm
    adds up to 2^(1/p)-1 there and tends to the max away from it. p (`knee`) is fitted per system.
    """
    c = np.asarray(compute_s, dtype=float)
    m = np.asarray(memory_s, dtype=float)
    top = np.maximum(np.maximum(c, m), 1e-30)
    return top * ((c / top) ** knee + (m / top) ** knee) ** (1.0 / knee)


def gemm_ms(sysc: SystemSpec, m: Arr, n: Arr, k: Arr, quant: str) -> Arr:
    """One GEMM [m×k]·[k×n] on one GPU.

    t = blend(2·max(m, m_tile)·n·k·w(n,k) / (P_q·e_q), (w_b·n·k + a_b·m·k + 2·m·n) / (BW·e_mem)) + t_gemm + t_q
    max(m, m_tile): rows are computed in whole tiles, so a decode batch of 8 costs like m_tile rows;
    w(n,k) = (1 + tile/n)(1 + tile/k): partial tiles and short K loops waste compute on thin shards;
    P_q: peak of the GEMM dtype; e_q: gemm_eff (bf16), fp8_eff (per-tensor fp8), fp8_block_eff
    (block-scaled fp8 pays for per-block scales and smaller tiles) or fp4_eff (nvfp4: its own kernels,
    which reach a smaller share of their doubled peak: 0.3–0.43 of the FP4 peak against 0.45–0.6 of the FP8
    peak for fp8 at m = 4096–8192 in aiconfigurator 0.12's measured B200/GB200 GEMM tables,
    systems/data/*/gemm/trtllm/1.3.0rc20/gemm_perf.parquet);
    t_q = fp4_us for nvfp4 (each nvfp4 GEMM first quantizes its bf16 activations to 4 bit with one fp8
    scale per 16 values; the same tables, which time that quantize as its own kernel, put a small-m
    nvfp4 GEMM at 0.22–0.28 of HBM bandwidth where bf16 reaches 0.65–0.7, a fixed ~10 µs rather than a
    slower stream; the measured end-to-end rows fit 1.6–2.6 µs, as the served engine fuses most of these
    quantizes into the RMSNorm or SwiGLU before them), else 0;
    w_b/a_b: weight and activation bytes (fp8/fp4 GEMMs quantize activations to 1 byte / 4.5 bit);
    output bf16.
    """
    f = sysc.fit
    fixed = f["gemm_us"]
    if quant == "bf16":
        peak, eff, wb, ab = sysc.peak_flops("bf16"), f["gemm_eff"], 2.0, 2.0
    elif quant == "fp8_block":
        peak, eff, wb, ab = sysc.peak_flops("fp8"), f["fp8_block_eff"], 1.0 + 4.0 / (128 * 128), 1.0
    elif quant == "fp4" and sysc.tflops.get("fp4"):
        peak, eff, wb, ab = sysc.peak_flops("fp4"), f["fp4_eff"], 0.5625, 0.5625
        fixed += f["fp4_us"]
    else:  # per-tensor fp8, and nvfp4 weights on a GPU without FP4 tensor cores (run as fp8)
        peak, eff, wb, ab = sysc.peak_flops("fp8"), f["fp8_eff"], 1.0, 1.0
        wb = 0.5625 if quant == "fp4" else wb
    if sysc.tflops.get("fp8") is None and quant != "bf16":
        eff = f["gemm_eff"]  # no fp8 tensor cores: weights are upcast and run at the bf16 rate
    m = np.asarray(m, dtype=float)
    compute = 2.0 * np.maximum(m, f["m_tile"]) * n * k * tile_waste(sysc, n, k) / (peak * eff)
    memory = (wb * n * k + ab * m * k + 2.0 * m * n) / (sysc.hbm_bw * f["mem_eff"])
    return (blend(compute, memory, f["knee"]) + fixed * 1e-6) * 1e3


def tile_waste(sysc: SystemSpec, n: Arr, k: Arr) -> Arr:
    """(1 + tile/n)(1 + tile/k): compute lost to partial tiles on thin GEMM dimensions (tile fitted)."""
    t = sysc.fit["tile"]
    return (1.0 + t / np.asarray(n, dtype=float)) * (1.0 + t / np.asarray(k, dtype=float))


def elementwise_ms(sysc: SystemSpec, nbytes: Arr) -> Arr:
    """Memory-bound op (norm, activation, embedding, RoPE): t = bytes / (BW·0.8) + 3 µs (facts from the yaml)."""
    return (
        np.asarray(nbytes, dtype=float) / (sysc.hbm_bw * sysc.elementwise_bw_eff) + sysc.elementwise_us * 1e-6
    ) * 1e3


def fmha_dtype(arch: ModelArch) -> str:
    """The dtype attention computes in: an FP8 KV cache runs FP8 FMHA (TRT-LLM and aiconfigurator's
    fmha_quant_mode both follow the cache), a bf16 one bf16."""
    return "fp8" if arch.kv_dtype == "fp8" else "bf16"


def context_attention_ms(arch: ModelArch, sysc: SystemSpec, tp: Arr, reqs: Arr, seq: Arr) -> Arr:
    """Causal prefill attention of `reqs` requests of `seq` tokens, heads split over tp.

    GQA:  FLOPs = 2·reqs·seq²·(n_h/tp)·d      (QKᵀ and PV, 2·s²·n·d each, halved by the causal mask)
          bytes = reqs·seq·(2·n_h/tp + 2·ceil(n_kv/tp))·d·b_attn      (Q, O, K, V once)
    MLA:  the context kernel runs on decompressed per-head keys (d_qk = qk_nope + qk_rope) and values
          (d_v = v_head_dim), as TRT-LLM's context MLA does (the latent is expanded by kv_b_proj first):
          FLOPs = reqs·seq²·(n_h/tp)·(d_qk + d_v)     bytes = reqs·seq·(n_h/tp)·2·(d_qk + d_v)·b_attn
    t = blend(FLOPs / (P_fmha·attn_ctx_eff), bytes / (BW·mem_eff)) + t_attn   (0 when reqs = 0)
    P_fmha is the fp8 peak for an fp8 KV cache (fp8 FMHA), else bf16.
    """
    f = sysc.fit
    reqs = np.asarray(reqs, dtype=float)
    seq = np.asarray(seq, dtype=float)
    heads = arch.num_heads / np.asarray(tp, dtype=float)
    if arch.mla_kv_dim:
        width = float(arch.head_dim + (arch.v_head_dim or arch.head_dim))
        flops = reqs * seq**2 * heads * width
        nbytes = reqs * seq * heads * 2.0 * width * arch.kv_bytes
    else:
        flops = 2.0 * reqs * seq**2 * heads * arch.head_dim
        kvh = arch.kv_heads_per_gpu(tp)
        nbytes = reqs * seq * (2.0 * heads + 2.0 * kvh) * arch.head_dim * arch.kv_bytes
    t = blend(
        flops / (sysc.peak_flops(fmha_dtype(arch)) * f["attn_ctx_eff"]),
        nbytes / (sysc.hbm_bw * f["mem_eff"]),
        f["knee"],
    )
    return np.where(reqs > 0, (t + f["attn_us"] * 1e-6) * 1e3, 0.0)


# MLA decode kernels process the query heads of one KV latent in tiles of this many heads, so a rank with
# fewer heads (DeepSeek at tp ≥ 2: 64 or fewer of its 128) costs like a full tile. Source: aiconfigurator 0.12's
# measured TRT-LLM MLA generation tables (systems/data/{h200_sxm,b200_sxm}/mla/trtllm/1.3.0rc20/
# generation_mla_perf.parquet): at batch 256 and 8k context the H200 kernel takes 846 µs with 128 heads,
# 422 µs with 64, and 418/414/411 µs with 32/16/8; B200's is flat from 32 heads down and memory-bound there.
MLA_HEAD_TILE = 64.0


def generation_attention_ms(arch: ModelArch, sysc: SystemSpec, tp: Arr, reqs: Arr, kv_len: Arr) -> Arr:
    """Decode attention of `reqs` requests, each reading `kv_len` cached tokens.

    GQA: bytes = reqs·kv_len·2·ceil(n_kv/tp)·d·b_kv      FLOPs = 4·reqs·(n_h/tp)·d·kv_len
         t = blend(FLOPs / (P_bf16·attn_ctx_eff), bytes / (BW·attn_gen_eff)) + t_attn
    MLA (absorbed, as TRT-LLM's decode kernels run it): every head attends over the shared latent, keys
         r + ρ wide (kv_lora_rank + qk_rope_dim = 576), values r wide (512), so the KV read is shared
         by the rank's heads and the math grows with them:
         bytes = reqs·kv_len·(r + ρ)·b_kv
         FLOPs = 2·reqs·kv_len·max(n_h/tp, MLA_HEAD_TILE)·(2r + ρ)     (QKᵀ over r + ρ, PV over r)
         t = blend(FLOPs / (P_fmha·mla_gen_eff), bytes / (BW·attn_gen_eff)) + t_attn
         (the old GQA form costed 4·d = 768 FLOPs per head and token against 2·(2r + ρ) = 2,176: a third)
    0 when reqs = 0.
    """
    f = sysc.fit
    reqs = np.asarray(reqs, dtype=float)
    heads = arch.num_heads / np.asarray(tp, dtype=float)
    kv_len = np.asarray(kv_len, dtype=float)
    nbytes = reqs * kv_len * arch.kv_elems_per_token_layer(tp) * arch.kv_bytes
    if arch.mla_kv_dim:
        r = float(arch.kv_lora_rank or arch.mla_kv_dim)
        flops = 2.0 * reqs * kv_len * np.maximum(heads, MLA_HEAD_TILE) * (r + arch.mla_kv_dim)
        compute = flops / (sysc.peak_flops(fmha_dtype(arch)) * f["mla_gen_eff"])
    else:
        flops = 4.0 * reqs * heads * arch.head_dim * kv_len
        compute = flops / (sysc.peak_flops("bf16") * f["attn_ctx_eff"])
    t = blend(compute, nbytes / (sysc.hbm_bw * f["attn_gen_eff"]), f["knee"])
    return np.where(reqs > 0, (t + f["attn_us"] * 1e-6) * 1e3, 0.0)


def allreduce_ms(sysc: SystemSpec, gpus: Arr, nbytes: Arr, domain_gpus: int | None = None) -> Arr:
    """All-reduce of `nbytes` (bf16 activations) over `gpus` GPUs; 0 when gpus = 1.

    Two algorithms, and the library picks the faster one, so the cost is not a single line:
      one-shot: t = a + (g−1)·S / (B·e_ar)                  (small messages: one latency step)
      ring/two-shot: t = 2·a·log2(g) + 2·S·(g−1)/g / (B·e_ar) (large messages: bandwidth-optimal)
    a = ar_us; B = SystemSpec.link_gbs(g): NVLink per GPU while the group fits in one NVLink domain (a node,
    or a whole NVL72 rack of GB200/GB300 trays), the inter-node link per GPU beyond it.
    """
    f = sysc.fit
    g = np.asarray(gpus, dtype=float)
    s = np.asarray(nbytes, dtype=float)
    domain = domain_gpus or sysc.domain_gpus
    bw = np.where(g > domain, sysc.internode_gbs, sysc.nvlink_gbs) * 1e9 * f["ar_eff"]
    a = f["ar_us"] * 1e-6
    one = a + (g - 1.0) * s / bw
    ring = 2.0 * a * np.log2(np.maximum(g, 2.0)) + 2.0 * s * (g - 1.0) / np.maximum(g, 1.0) / bw
    return np.where(g > 1, np.minimum(one, ring) * 1e3, 0.0)


def hottest_rank(mean: Arr, ep: Arr) -> Arr:
    """Expected largest of ep per-rank counts whose mean is `mean`: mean + sqrt(2·mean·ln ep).

    Each rank's share of the routed (token, expert) pairs, or of the experts hit, is close to Poisson(mean);
    the maximum of ep such counts sits about sqrt(2·ln ep) standard deviations above the mean (the Gaussian
    extreme-value approximation). Relative to the mean it is 1 + sqrt(2·ln(ep)/mean): no excess at ep = 1,
    1.2× at 512 pairs per rank over 8 ranks, 2× at 4 pairs per rank: the straggler rank that decides an EP
    step weighs most when few tokens are routed (small decode batches).
    """
    x = np.asarray(mean, dtype=float)
    return x + np.sqrt(2.0 * np.maximum(x, 0.0) * np.log(np.maximum(np.asarray(ep, dtype=float), 1.0)))


def moe_experts_ms(arch: ModelArch, sysc: SystemSpec, tokens: Arr, moe_tp: Arr, ep: Arr) -> Arr:
    """Routed-expert compute of one MoE layer on the slowest GPU (router GEMM and comm are separate ops).

    pairs  = hottest_rank(tokens·topk/ep, ep) · (1 + moe_imbalance·log2(ep))
             (statistical straggler, growing as the per-rank token count falls, times the systematic excess
             of power-law expert popularity)
    FLOPs  = 2·pairs·3·h·I_moe/moe_tp·(1 + tile/(I_moe/moe_tp))(1 + tile/h)   (gate, up, down)
    active = min(E/ep, hottest_rank(distinct(tokens·topk)/ep, ep)),
             distinct(n) = Σ_i 1 − exp(−n·p_i),  p_i ∝ i^(−moe_skew)
             (experts hit at least once when routing popularity follows a power law; skew 0 = uniform)
    bytes  = active·3·h·I_moe/moe_tp·w_b + pairs·(2h + 3·I_moe/moe_tp)·a_b
    t = blend(FLOPs / (P_q·e_q·e_moe), bytes / (BW·mem_eff)) + moe_us (+ 2·fp4_us for nvfp4: its two
    grouped GEMMs quantize their activations)
    e_moe = moe_eff, or moe_fp4_eff for nvfp4 experts (the FP4 grouped GEMMs are other kernels, with
    their own share of the FP4 peak).
    """
    f = sysc.fit
    q = arch.gemm_quant
    fp4 = q == "fp4" and bool(sysc.tflops.get("fp4"))
    eff = {"bf16": f["gemm_eff"], "fp8_block": f["fp8_block_eff"]}.get(q, f["fp8_eff"])
    eff = f["fp4_eff"] * f["moe_fp4_eff"] if fp4 else eff * f["moe_eff"]
    dt = "bf16" if q == "bf16" else ("fp4" if q == "fp4" else "fp8")
    if sysc.tflops.get("fp8") is None:
        eff = f["gemm_eff"] * f["moe_eff"]
    tokens = np.asarray(tokens, dtype=float)
    ep = np.asarray(ep, dtype=float)
    mt = np.asarray(moe_tp, dtype=float)
    e, k, h, inter = arch.num_experts, arch.topk, arch.hidden, arch.moe_intermediate
    pairs = hottest_rank(tokens * k / ep, ep) * (1.0 + f["moe_imbalance"] * np.log2(ep))
    flops = 2.0 * pairs * 3.0 * h * inter / mt * tile_waste(sysc, inter / mt, h)
    active = np.minimum(e / ep, hottest_rank(distinct_experts(e, tokens * k, f["moe_skew"]) / ep, ep))
    ab = 2.0 if q == "bf16" else (0.5625 if fp4 else 1.0)
    nbytes = active * 3.0 * h * inter / mt * arch.weight_bytes + pairs * (2.0 * h + 3.0 * inter / mt) * ab
    t = blend(flops / (sysc.peak_flops(dt) * eff), nbytes / (sysc.hbm_bw * f["mem_eff"]), f["knee"])
    fixed = f["moe_us"] + (2.0 * f["fp4_us"] if fp4 else 0.0)
    return (t + fixed * 1e-6) * 1e3


def distinct_experts(num_experts: int, pairs: Arr, skew: float) -> Arr:
    """Expected experts hit by `pairs` routed (token, expert) pairs: Σ_i 1 − exp(−pairs·p_i), p_i ∝ i^(−skew)."""
    p = np.arange(1, num_experts + 1, dtype=float) ** (-skew)
    p /= p.sum()
    n = np.asarray(pairs, dtype=float)
    return (1.0 - np.exp(-n[..., None] * p)).sum(axis=-1)


def mla_projections_ms(arch: ModelArch, sysc: SystemSpec, tp: Arr, m: Arr, quant: str) -> Arr:
    """The MLA projections before attention, as TRT-LLM's DeepSeek attention module runs them.

    fused_a  [m×h]·[h × (q_lora + r + ρ)]       replicated on every TP rank (not split: it is small and
                                                 its output, the latents, is what every rank needs)
             (no q_lora: q_proj [h × n_h·d_qk/tp] split, kv_a [h × (r + ρ)] replicated)
    q_b      [m×q_lora]·[q_lora × n_h/tp·d_qk]
    k_b, v_b the per-head latent maps [d_nope × r] and [r × d_v], n_h/tp of each: in decode the absorbed
             query and output BMMs, in prefill kv_b_proj expanding the latent; the same weights and FLOPs
    All in the checkpoint's GEMM dtype; together they hold exactly arch.attn_weight_params − o_proj.
    """
    h, r, rope = arch.hidden, float(arch.kv_lora_rank), float(arch.qk_rope_dim)
    heads = arch.num_heads / np.asarray(tp, dtype=float)
    d_qk, d_v = float(arch.head_dim), float(arch.v_head_dim or arch.head_dim)
    nope = d_qk - rope
    if arch.q_lora_rank:
        t = gemm_ms(sysc, m, arch.q_lora_rank + r + rope, h, quant)
        t = t + gemm_ms(sysc, m, heads * d_qk, arch.q_lora_rank, quant)
    else:
        t = gemm_ms(sysc, m, r + rope, h, quant) + gemm_ms(sysc, m, heads * d_qk, h, quant)
    return t + gemm_ms(sysc, m, heads * r, nope, quant) + gemm_ms(sysc, m, heads * d_v, r, quant)


def step_ms(
    arch: ModelArch,
    sysc: SystemSpec,
    par: Par,
    tokens: Arr,
    ctx_reqs: Arr,
    ctx_len: Arr,
    gen_reqs: Arr,
    gen_kv: Arr,
    logits_tokens: Arr,
    ctx_div: Arr = 1.0,
) -> Arr:
    """Latency of one engine iteration on one attention rank, summed over all layers (ms).

    `tokens` run through the non-attention ops (GEMMs see M = tokens); `ctx_reqs` prefill requests of
    `ctx_len` tokens use context attention (divided by `ctx_div` for a chunk of a longer prompt);
    `gen_reqs` decode requests read `gen_kv` cached tokens each.
    layer = add_norm ×2 + qkv + attention + rope/kv-write + o_proj + [ffn | router + experts + shared]
            + 2 all-reduces over tp·dp (tp·dp > 1)
    step  = L_dense·layer_dense + L_moe·layer_moe + embedding (+ its all-reduce) + logits GEMM
            + (pp−1)·p2p
    `par` is one worker's Parallelism or a ParallelismGrid (dp below is its attention_dp).
    With attention-DP (dp > 1, tp = 1) every rank attends to its own `tokens`; the MoE block sees
    dp·tokens gathered from all ranks.
    """
    h, d = arch.hidden, arch.head_dim
    tp = np.asarray(par.tp, dtype=float)
    dp = np.asarray(par.attention_dp, dtype=float)
    ep = np.asarray(par.ep, dtype=float)
    pp = np.asarray(par.pp, dtype=float)
    m = np.asarray(tokens, dtype=float)
    q = arch.gemm_quant
    width = tp * dp  # GPUs of one MoE group / one TP group
    # Attention half.
    if arch.mla_kv_dim:
        t_proj = mla_projections_ms(arch, sysc, tp, m, q)
        o_k = arch.num_heads * (arch.v_head_dim or d) / tp
    else:
        qkv_n = (arch.num_heads / tp + 2.0 * arch.kv_heads_per_gpu(tp)) * d
        t_proj = gemm_ms(sysc, m, qkv_n, h, q)
        o_k = arch.num_heads * d / tp
    t_attn_half = (
        t_proj
        + context_attention_ms(arch, sysc, tp, ctx_reqs, ctx_len) / np.asarray(ctx_div, dtype=float)
        + generation_attention_ms(arch, sysc, tp, gen_reqs, gen_kv)
        + 1.1
        * elementwise_ms(sysc, m * 2.0 * (arch.num_heads / tp + 2 * arch.kv_heads_per_gpu(tp)) * d * 2.0)
        + gemm_ms(sysc, m, h, o_k, q)
        + 2.0 * elementwise_ms(sysc, m * 2.0 * (2.0 * h + h))
        + 2.0 * allreduce_ms(sysc, width, m * dp * h * 2.0) / np.where(dp > 1, 2.0, 1.0)
    )
    total = 0.0
    n_dense = arch.dense_layers if arch.is_moe else arch.num_layers
    if n_dense:
        inter = arch.intermediate / tp
        t_ffn = (
            gemm_ms(sysc, m, 2.0 * inter, h, q)
            + elementwise_ms(sysc, m * 2.0 * (3.0 * inter))
            + gemm_ms(sysc, m, h, inter, q)
        )
        total = total + n_dense * (t_attn_half + t_ffn)
    if arch.is_moe:
        m_all = m * dp
        moe_tp = width / ep
        t_moe = gemm_ms(sysc, m_all, arch.num_experts, h, "bf16") + moe_experts_ms(
            arch, sysc, m_all, moe_tp, ep
        )
        if arch.shared_intermediate:
            si = arch.shared_intermediate / width
            t_moe = t_moe + gemm_ms(sysc, m_all, 2.0 * si, h, q) + gemm_ms(sysc, m_all, h, si, q)
        t_moe = t_moe + elementwise_ms(sysc, m_all * 2.0 * (3.0 * arch.moe_intermediate * arch.topk / ep))
        total = total + arch.moe_layers * (t_attn_half + t_moe)
    lt = np.asarray(logits_tokens, dtype=float)
    per_pass = (
        elementwise_ms(sysc, m * h * 2.0)
        + allreduce_ms(sysc, tp, m * h * 2.0)
        + np.where(lt > 0, gemm_ms(sysc, lt, arch.vocab / tp, h, "bf16"), 0.0)
        + (pp - 1.0) * (m * h * 2.0 / (sysc.link_gbs(width * pp) * 1e9) + sysc.p2p_us * 1e-6) * 1e3
    )
    return calibrated(sysc, total + per_pass, m, gen_reqs)


def calibrated(sysc: SystemSpec, step: Arr, tokens: Arr, gen_reqs: Arr) -> Arr:
    """A step time under the system's calibration (perfmodel.calibration): prefill work runs
    `prefill_scale` and decode work `decode_scale` times the fitted kernels' time.

    t' = t · (s_d + (s_p − s_d) · w),  w = (tokens − gen_reqs) / tokens, the step's share of prompt tokens
    (a mixed step of one 2,048-token chunk and 30 decodes is w ≈ 0.99). Weighting by tokens rather than by
    time is exact for a prefill-only or a decode-only step, the two the disaggregated roles and the mocker's
    profiles run; a mixed agg step is dominated by its chunk either way.
    """
    if sysc.prefill_scale == 1.0 and sysc.decode_scale == 1.0:
        return step
    m = np.maximum(np.asarray(tokens, dtype=float), 1e-9)
    w = np.clip((m - np.asarray(gen_reqs, dtype=float)) / m, 0.0, 1.0)
    return step * (sysc.decode_scale + (sysc.prefill_scale - sysc.decode_scale) * w)
