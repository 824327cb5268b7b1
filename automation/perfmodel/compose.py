"""Serving composition: raw prefill/decode, aggregated IFB steps, disaggregated xPyD, memory and KV limits."""

from __future__ import annotations

from typing import Any

import numpy as np

from automation.perfmodel.arch import ModelArch
from automation.perfmodel.ops import Par, step_ms
from automation.perfmodel.system import SystemSpec

Arr = Any

# Correction factors the reference numbers encode (HOW_AIC_MODELS §3–4). They are part of what the
# calibration target means, so the composition applies them the same way.
PREFILL_LATENCY_SCALE = 1.1
DECODE_LATENCY_SCALE = 1.08
DISAGG_TTFT_QUEUE = 1.8
PREFILL_RATE_DERATE = 0.9
DECODE_RATE_DERATE = 0.92
DECODE_STRIDE = 32  # decode trajectory sampled every 32 tokens
ALLOCATOR_RESERVE = 0.015  # TRT-LLM KV allocator reserve
KV_TOLERANCE = 0.02  # headroom so a pick near the limit still fits once deployed
ACT_COEF = {"dense": {1: 11.0, 2: 6.5, 4: 5.0, 8: 5.0}, "moe": {1: 22.0, 2: 13.0, 4: 10.0, 8: 10.0}}
ACT_MIN_BYTES = 70 * 2**20


def prefill_ms(arch: ModelArch, sysc: SystemSpec, par: Par, b: Arr, isl: Arr) -> Arr:
    """Raw prefill pass of b prompts of isl tokens per attention rank (no queueing, no correction).

    t = step(tokens = b·isl, context attention b×isl, logits for b tokens)
    """
    b = np.asarray(b, dtype=float)
    return step_ms(arch, sysc, par, b * isl, b, isl, 0.0, 0.0, b)


def decode_mean_kv(isl: Arr, osl: Arr) -> Arr:
    """Mean KV length of the decode trajectory: steps every 32 tokens at kv = isl + i + 1, weighted by stride.

    mean = isl + 1 + Σ w_i·i / Σ w_i,  i = 0, 32, ...,  w_i = min(32, osl − 1 − i).
    Every step's latency is affine in kv (attention is 1-homogeneous in it), so the step at the mean
    equals the stride-weighted average of the steps.
    """
    isl_a = np.asarray(isl, dtype=float)
    osl_a = np.asarray(osl, dtype=float)
    n = np.maximum(osl_a - 1.0, 1.0)
    full = np.floor(n / DECODE_STRIDE)  # number of full strides
    rem = n - full * DECODE_STRIDE
    # Σ w_i·i over the full strides (w = 32, i = 32·j) plus the last partial stride at i = 32·full.
    s_full = DECODE_STRIDE * DECODE_STRIDE * full * (full - 1.0) / 2.0
    s_rem = rem * DECODE_STRIDE * full
    return isl_a + 1.0 + (s_full + s_rem) / n


def decode_ms(arch: ModelArch, sysc: SystemSpec, par: Par, b: Arr, kv_len: Arr) -> Arr:
    """One decode-only step of b requests per attention rank, each at kv_len cached tokens.

    t = step(tokens = b, generation attention b×kv_len, logits for b tokens)
    """
    b = np.asarray(b, dtype=float)
    return step_ms(arch, sysc, par, b, 0.0, 0.0, b, kv_len, b)


def decode_tpot_ms(arch: ModelArch, sysc: SystemSpec, par: Par, b: Arr, isl: Arr, osl: Arr) -> Arr:
    """Raw decode TPOT averaged over the output (static_gen): decode step at `decode_mean_kv(isl, osl)`."""
    return decode_ms(arch, sysc, par, b, decode_mean_kv(isl, osl))


def agg_metrics(
    arch: ModelArch,
    sysc: SystemSpec,
    par: Par,
    b: Arr,
    ctx_tokens: Arr,
    isl: Arr,
    osl: Arr,
) -> dict[str, Arr]:
    """In-flight batching steady state of one worker at batch b (per attention rank) and ctx_tokens per step.

    mixed step   = non-attention ops on ctx + g tokens + context attention of ceil(ctx/isl) prompts
                   (÷ ceil(isl/ctx) for a chunk) + decode attention of g = b − ceil(ctx/isl) requests,
                   all decodes at kv = isl + osl/2 + 1 (the midpoint of the output)
    decode step  = decode of b requests at the same kv
    S = ceil(isl·b/ctx) mixed steps, G = max(osl − S, 0) decode-only steps per request cycle
    TTFT = mixed·ceil(isl/ctx)·min(2 + (S − 3)/20, 4)          (aiconfigurator's static queueing factor;
                                                                estimate and predict_at_concurrency
                                                                take TTFT from queueing.py instead)
    TPOT = (mixed·max(1, S−3) + decode·G) / (max(1, S−3) + G)  (b = 1: the decode step alone)
    tokens/s/worker = b·dp·pp·(osl − 1) / (S·mixed + G·decode)
    """
    b = np.asarray(b, dtype=float)
    ctx = np.asarray(ctx_tokens, dtype=float)
    n_ctx = np.ceil(ctx / isl)
    div = np.ceil(isl / ctx)
    g = np.maximum(b - n_ctx, 0.0)
    kv = isl + np.floor_divide(osl, 2) + 1
    chunk = np.minimum(ctx, isl * n_ctx)
    mixed = step_ms(arch, sysc, par, chunk + g, n_ctx, isl, g, kv, n_ctx + g, ctx_div=div)
    gen = decode_ms(arch, sysc, par, b, kv)
    s = np.ceil(isl * b / ctx)
    big_g = np.maximum(osl - s, 0.0)
    m_eff = np.maximum(1.0, s - 3.0)
    ttft = mixed * div * np.minimum(2.0 + (s - 3.0) / 20.0, 4.0)
    tpot = np.where(b <= 1, gen, (mixed * m_eff + gen * big_g) / (m_eff + big_g))
    dp_a = np.asarray(par.attention_dp, dtype=float)
    pp_a = np.asarray(par.pp, dtype=float)
    tok_s = b * dp_a * pp_a * (osl - 1) / (s * mixed + big_g * gen) * 1e3
    gpus = np.asarray(par.tp, dtype=float) * dp_a * pp_a
    return {
        "mixed_ms": mixed,
        "gen_ms": gen,
        "ttft_ms": ttft,
        "tpot_ms": tpot,
        "tokens_s": tok_s,
        "tokens_s_gpu": tok_s / gpus,
        "concurrency": b * dp_a * pp_a,
    }


def cross_node_fraction(deployed_gpus: Arr, gpus_per_node: int) -> Arr:
    """Share of prefill→decode KV transfers that cross nodes: 1 − 1/n over the n nodes the deployment spans.

    Dynamo's frontend picks the prefill worker of a request (round-robin, random or by KV overlap) and then
    the decode worker without regard to each other's node (Dynamo 1.3+ can constrain this with topology
    domains, DYN_KV_TRANSFER_DOMAIN, which autodeploy does not set), so placement alone cannot keep a
    replica's transfer on its node. With prefill workers spread evenly over n = ceil(deployed_gpus /
    gpus_per_node) nodes, the chosen one shares the decode worker's node with probability 1/n
    (docs/decisions.md, issue 11).
    """
    nodes = np.ceil(np.asarray(deployed_gpus, dtype=float) / max(gpus_per_node, 1))
    return 1.0 - 1.0 / np.maximum(nodes, 1.0)


def kv_transfer_ms(arch: ModelArch, sysc: SystemSpec, isl: Arr, links: Arr, cross_fraction: Arr) -> Arr:
    """KV-cache transfer from a prefill to a decode worker, expected over where the pair sits (the
    reference tool ignores it).

    t = kv_transfer_us + isl·kv_bytes_per_token/links · (f/B_inter + (1 − f)/B_nvlink), f the share of
    transfers that cross nodes (cross_node_fraction); B per GPU; `links` = min(prefill GPUs, decode GPUs)
    move shards in parallel.
    """
    f = np.clip(np.asarray(cross_fraction, dtype=float), 0.0, 1.0)
    seconds_per_byte = f / (sysc.internode_gbs * 1e9) + (1.0 - f) / (sysc.nvlink_gbs * 1e9)
    nbytes = np.asarray(isl, dtype=float) * arch.kv_bytes_per_token_total()
    return (sysc.kv_transfer_us * 1e-6 + nbytes * seconds_per_byte / np.asarray(links, dtype=float)) * 1e3


def effective_kv_link_gbs(sysc: SystemSpec, cross_fraction: float) -> float:
    """The one per-GPU bandwidth that moves a KV cache in the expected time of kv_transfer_ms (harmonic mix)."""
    f = min(max(cross_fraction, 0.0), 1.0)
    return 1.0 / (f / sysc.internode_gbs + (1.0 - f) / sysc.nvlink_gbs)


def disagg_rates(
    p_latency_ms: Arr, p_bs: Arr, p_dp: Arr, d_tpot_raw_ms: Arr, d_bs: Arr, d_dp: Arr, osl: Arr
) -> tuple[Arr, Arr, Arr, Arr]:
    """Per-worker rates and reported latencies of xPyD workers (HOW_AIC_MODELS §4).

    prefill seq/s = p_bs·p_dp / (1.1·t_prefill);   TTFT_core = 1.8·1.1·t_prefill (aiconfigurator's;
                                                   predictions take TTFT from queueing.py)
    decode  seq/s = d_bs·d_dp / (1.08·t_tpot·(osl − 1));   TPOT = 1.08·t_tpot
    Returns (prefill seq/s, decode seq/s, ttft_core_ms, tpot_ms).
    """
    p_lat = PREFILL_LATENCY_SCALE * np.asarray(p_latency_ms, dtype=float)
    tpot = DECODE_LATENCY_SCALE * np.asarray(d_tpot_raw_ms, dtype=float)
    p_rate = np.asarray(p_bs, dtype=float) * p_dp / p_lat * 1e3
    d_rate = (
        np.asarray(d_bs, dtype=float)
        * d_dp
        / (tpot * np.maximum(np.asarray(osl, dtype=float) - 1.0, 1.0))
        * 1e3
    )
    return p_rate, d_rate, DISAGG_TTFT_QUEUE * p_lat, tpot


def xpyd_seq_s(p_rate: Arr, x: Arr, d_rate: Arr, y: Arr) -> Arr:
    """Rate-matched replica throughput: min(0.9·x·prefill seq/s, 0.92·y·decode seq/s)."""
    return np.minimum(PREFILL_RATE_DERATE * x * p_rate, DECODE_RATE_DERATE * y * d_rate)


def weights_bytes_per_gpu(arch: ModelArch, par: Par) -> Arr:
    """Weights on one GPU: attention/tp + dense FFN/tp + experts/(tp·dp) + router + embeddings/tp, all /pp.

    Quantized GEMM weights take w_b bytes, router and embeddings bf16; KV heads replicate when tp > n_kv.
    """
    tp = np.asarray(par.tp, dtype=float)
    width = tp * np.asarray(par.attention_dp, dtype=float)
    wp = arch.weight_params()
    wb = arch.weight_bytes
    h, d = arch.hidden, arch.head_dim
    if arch.mla_kv_dim:
        attn = wp["attn"] / tp
    else:
        attn = arch.num_layers * h * d * (2.0 * arch.num_heads / tp + 2.0 * arch.kv_heads_per_gpu(tp))
    total = (attn + wp["ffn"] / tp + wp["experts"] / width + wp["shared"] / width) * wb
    total = total + wp["router"] * 2.0 + wp["embed"] * 2.0 / tp
    return total / np.asarray(par.pp, dtype=float)


def activation_bytes(arch: ModelArch, tp: Arr, tokens: Arr) -> Arr:
    """Activation workspace: max(2·T·(n_h·d)·c(tp), 70 MiB), c from the per-family table of the reference."""
    table = ACT_COEF[arch.family]
    tp_a = np.asarray(tp)
    c = np.select([tp_a <= 1, tp_a <= 2, tp_a <= 4], [table[1], table[2], table[4]], table[8])
    return np.maximum(
        2.0 * np.asarray(tokens, dtype=float) * arch.num_heads * arch.head_dim * c, ACT_MIN_BYTES
    )


def kv_bytes_per_request(arch: ModelArch, par: Par, seq_len: Arr) -> Arr:
    """KV cache of one request of seq_len tokens on one GPU: seq_len·L·kv_elems(tp)·b_kv / pp."""
    return (
        np.asarray(seq_len, dtype=float) * arch.kv_bytes_per_token(par.tp) / np.asarray(par.pp, dtype=float)
    )


def memory_parts(
    arch: ModelArch,
    sysc: SystemSpec,
    par: Par,
    act_tokens: Arr,
    batch: Arr,
    seq_len: Arr,
    free_fraction: Arr,
) -> dict[str, Arr]:
    """Memory per GPU (bytes) and the KV budget.

    non_kv = weights + activations(max_num_tokens) + NCCL(tp·dp) + other
    kv     = batch·kv_bytes_per_request(seq_len)
    kv_budget = (HBM − non_kv)·free_fraction·(1 − 1.5 %)·(1 − 2 %)
    fits = non_kv + kv < HBM and kv ≤ kv_budget
    """
    gpus = np.asarray(par.tp) * np.asarray(par.attention_dp)
    nccl = np.select(
        [gpus <= 1, gpus <= 2], [sysc.nccl_mem_bytes(1), sysc.nccl_mem_bytes(2)], sysc.nccl_mem_bytes(4)
    )
    non_kv = (
        weights_bytes_per_gpu(arch, par)
        + activation_bytes(arch, par.tp, act_tokens)
        + nccl
        + sysc.other_mem_gib * 2**30
    )
    kv_req = kv_bytes_per_request(arch, par, seq_len)
    kv = np.asarray(batch, dtype=float) * kv_req
    budget = (
        np.maximum(sysc.hbm_bytes - non_kv, 0.0)
        * free_fraction
        * (1 - ALLOCATOR_RESERVE)
        * (1 - KV_TOLERANCE)
    )
    total = non_kv + kv
    return {
        "non_kv": non_kv,
        "kv": kv,
        "kv_per_request": kv_req,
        "kv_budget": budget,
        "total": total,
        "fits": (total < sysc.hbm_bytes) & (kv <= budget),
    }
