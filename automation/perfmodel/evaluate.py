"""Predictions for one Plan: its design point, any concurrency, and per-role step-time curves."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from automation.errors import InputError
from automation.perfmodel import compose
from automation.perfmodel.arch import ModelArch, load_model
from automation.perfmodel.ops import step_ms
from automation.perfmodel.plan import (
    EngineOverrides,
    KvCacheDtype,
    Parallelism,
    Plan,
    Prediction,
    Role,
    RolePlan,
    role_plan,
)
from automation.perfmodel.plan import agg_ctx_tokens as _ctx_tokens
from automation.perfmodel.system import SystemSpec, load_system

GIB = 2**30  # bytes per GiB: memory is reported in GiB, as nvidia-smi and TRT-LLM logs do


def _arch(model: ModelArch | str) -> ModelArch:
    return model if isinstance(model, ModelArch) else load_model(model)


def _sys(system: SystemSpec | str) -> SystemSpec:
    return system if isinstance(system, SystemSpec) else load_system(system)


def agg_ctx_tokens(role: RolePlan, isl: int) -> int:
    """Prefill tokens per mixed step a role's engine forms (the sweep uses the same rule: plan.agg_ctx_tokens).

    ctx = clip(floor((max_num_tokens − max_batch_size)/isl), 1, max(max_batch_size − 1, 1))·isl;
    chunked prefill and no whole prompt fits: max_num_tokens − max_batch_size.
    """
    return int(_ctx_tokens(role.max_num_tokens, role.max_batch_size, isl, role.enable_chunked_prefill))


def role_memory(
    arch: ModelArch, sysc: SystemSpec, role: RolePlan, seq_len: int, batch: float | None = None
) -> dict[str, Any]:
    """Memory per GPU of a role at `batch` (default its max_batch_size) requests of seq_len tokens (the
    workload's isl + osl: the deployed max_seq_len only bounds what is admitted), with its own settings."""
    return compose.memory_parts(
        arch,
        sysc,
        role.parallelism,
        role.max_num_tokens,
        role.max_batch_size if batch is None else batch,
        seq_len,
        role.free_gpu_memory_fraction,
    )


def kv_capacity_tokens(arch: ModelArch, sysc: SystemSpec, role: RolePlan) -> int:
    """Tokens the KV cache of one worker of a role holds: kv_budget / KV bytes per token per GPU, in whole
    blocks of tokens_per_block (the longest single request the worker can ever hold)."""
    parts = role_memory(arch, sysc, role, 1, batch=1)
    tokens = int(float(parts["kv_budget"]) // max(float(parts["kv_per_request"]), 1e-9))
    return tokens - tokens % role.tokens_per_block


def _check_plan(plan: Plan) -> None:
    if plan.isl <= 0 or plan.osl <= 0:
        raise InputError(f"plan isl/osl must be > 0 (got {plan.isl}/{plan.osl})", hint="fix the workload")
    if plan.replicas <= 0:
        raise InputError(f"plan replicas must be > 0 (got {plan.replicas})", hint="fix the plan")
    for r in plan.roles:
        for name, value in (
            *vars(r.parallelism).items(),
            ("workers", r.workers),
            ("max_batch_size", r.max_batch_size),
            ("max_num_tokens", r.max_num_tokens),
            ("max_seq_len", r.max_seq_len),
        ):
            if value <= 0:
                raise InputError(
                    f"plan role {r.role}: {name} must be > 0 (got {value})", hint="regenerate the plan"
                )
        if not 0.0 < r.free_gpu_memory_fraction <= 1.0:
            raise InputError(
                f"plan role {r.role}: free_gpu_memory_fraction must be in (0, 1]", hint="regenerate the plan"
            )
    want = ("agg",) if plan.mode == "agg" else ("prefill", "decode")
    if plan.mode not in ("agg", "disagg") or tuple(r.role for r in plan.roles) != want:
        raise InputError(
            f"plan mode '{plan.mode}' needs roles {want}, got {tuple(r.role for r in plan.roles)}",
            hint="regenerate the plan",
        )


def _agg(
    plan: Plan, batch: float, arch: ModelArch, sysc: SystemSpec
) -> tuple[dict[str, Any], dict[str, Any]]:
    r = plan.role("agg")
    ctx = agg_ctx_tokens(r, plan.isl)
    m = compose.agg_metrics(arch, sysc, r.parallelism, batch, ctx, plan.isl, plan.osl)
    return m, role_memory(arch, sysc, r, plan.isl + plan.osl, batch)


def _disagg_core(plan: Plan, d_batch: float, arch: ModelArch, sysc: SystemSpec) -> dict[str, float]:
    p, d = plan.role("prefill"), plan.role("decode")
    t_pre = float(compose.prefill_ms(arch, sysc, p.parallelism, p.max_batch_size, plan.isl))
    t_dec = float(compose.decode_tpot_ms(arch, sysc, d.parallelism, d_batch, plan.isl, plan.osl))
    p_rate, d_rate, ttft_core, tpot = compose.disagg_rates(
        t_pre,
        p.max_batch_size,
        p.parallelism.attention_dp,
        t_dec,
        d_batch,
        d.parallelism.attention_dp,
        plan.osl,
    )
    cross = compose.cross_node_fraction(plan.total_gpus, sysc.gpus_per_node)
    xfer = float(
        compose.kv_transfer_ms(arch, sysc, plan.isl, min(p.gpus_per_worker, d.gpus_per_worker), cross)
    )
    seq = float(compose.xpyd_seq_s(p_rate, p.workers, d_rate, d.workers))
    return {
        "t_prefill": t_pre,
        "p_rate": float(p_rate),
        "d_rate": float(d_rate),
        "ttft_core": float(ttft_core),
        "tpot": float(tpot),
        "xfer": xfer,
        "seq_s": seq,
    }


def _memory_and_fit(
    arch: ModelArch, sysc: SystemSpec, plan: Plan, batches: dict[str, float]
) -> tuple[float, bool]:
    mem, fits = 0.0, True
    for r in plan.roles:
        m = role_memory(arch, sysc, r, plan.isl + plan.osl, batches.get(r.role))
        mem = max(mem, float(m["total"]) / GIB)
        fits = fits and bool(m["fits"])
    return mem, fits


def estimate(plan: Plan) -> Prediction:
    """The prediction at the plan's design point (every role at its max_batch_size).

    agg: the IFB steady state of compose.agg_metrics. disagg: TTFT = 1.8·1.1·prefill + KV transfer,
    TPOT = 1.08·decode TPOT, throughput rate-matched min(0.9·x·prefill, 0.92·y·decode)·osl / GPUs.
    """
    _check_plan(plan)
    arch, sysc = load_model(plan.model), load_system(plan.system)
    if plan.mode == "agg":
        r = plan.role("agg")
        m, _ = _agg(plan, r.max_batch_size, arch, sysc)
        mem, fits = _memory_and_fit(arch, sysc, plan, {})
        return Prediction(
            ttft_ms=float(m["ttft_ms"]),
            tpot_ms=float(m["tpot_ms"]),
            tokens_per_s_per_gpu=float(m["tokens_s_gpu"]),
            tokens_per_s_per_user=1000.0 / float(m["tpot_ms"]),
            concurrency=float(m["concurrency"]) * plan.replicas,
            memory_gib_per_gpu=mem,
            fits=fits,
        )
    d = plan.role("decode")
    c = _disagg_core(plan, d.max_batch_size, arch, sysc)
    mem, fits = _memory_and_fit(arch, sysc, plan, {})
    return Prediction(
        ttft_ms=c["ttft_core"] + c["xfer"],
        tpot_ms=c["tpot"],
        tokens_per_s_per_gpu=c["seq_s"] * plan.osl / plan.gpus_per_replica,
        tokens_per_s_per_user=1000.0 / c["tpot"],
        concurrency=float(d.workers * d.max_batch_size * d.parallelism.attention_dp * plan.replicas),
        memory_gib_per_gpu=mem,
        fits=fits,
    )


def predict_at_concurrency(plan: Plan, concurrency: float) -> Prediction:
    """The prediction with `concurrency` requests in flight over the whole deployment (closed loop).

    Requests spread evenly over replicas. agg: batch b = clamp(c/(replicas·dp·pp), 1, max_batch_size);
    TTFT = mixed·ceil(isl/ctx)·(1 + (QF − 1)·u), u = min(c_replica/slots, 1) (the reference's QF at a
    full batch, none for a lone request); requests beyond the batch wait:
    TTFT += max(0, n_r/rate − (TTFT + TPOT·(osl−1))) by Little's law.
    disagg: decode batch b = clamp(c/(replicas·y·dp), 1, max_batch_size); throughput = min(prefill,
    decode rate at b); the TTFT queueing factor scales with prefill utilisation ρ: 1 + 0.8·ρ
    (the reference's 1.8 at ρ = 1); plus the same Little's-law wait when c exceeds the decode slots.
    """
    _check_plan(plan)
    if not isinstance(concurrency, int | float) or concurrency <= 0:
        raise InputError(f"concurrency must be > 0 (got {concurrency})", hint="pass a positive number")
    arch, sysc = load_model(plan.model), load_system(plan.system)
    per_replica = concurrency / plan.replicas
    if plan.mode == "agg":
        r = plan.role("agg")
        ranks = r.parallelism.attention_dp * r.parallelism.pp
        slots = r.max_batch_size * ranks
        b = min(max(per_replica / ranks, 1.0), r.max_batch_size)
        m, mem_parts = _agg(plan, b, arch, sysc)
        # The reference's queueing factor QF describes a full batch; below it, queueing fades with load.
        ctx = agg_ctx_tokens(r, plan.isl)
        div = math.ceil(plan.isl / ctx)
        qf = float(m["ttft_ms"]) / (float(m["mixed_ms"]) * div)
        util = min(per_replica / slots, 1.0)
        ttft = float(m["mixed_ms"]) * div * (1.0 + (qf - 1.0) * util)
        tpot = float(m["tpot_ms"])
        tok_s = float(m["tokens_s"])
        if per_replica > slots:
            rate = tok_s / max(plan.osl - 1, 1)  # requests per second per replica
            cycle = per_replica / rate * 1e3
            ttft += max(0.0, cycle - (ttft + tpot * (plan.osl - 1)))
        else:
            tok_s *= min(per_replica / (b * ranks), 1.0)
        return Prediction(
            ttft_ms=ttft,
            tpot_ms=tpot,
            tokens_per_s_per_gpu=tok_s / plan.gpus_per_replica,
            tokens_per_s_per_user=1000.0 / tpot,
            concurrency=float(concurrency),
            memory_gib_per_gpu=float(mem_parts["total"]) / GIB,
            fits=bool(mem_parts["fits"]),
        )
    p, d = plan.role("prefill"), plan.role("decode")
    slots = d.workers * d.max_batch_size * d.parallelism.attention_dp
    b = min(max(per_replica / (d.workers * d.parallelism.attention_dp), 1.0), d.max_batch_size)
    c = _disagg_core(plan, b, arch, sysc)
    # Closed loop: with n requests in flight each cycles once per (TTFT + TPOT·(osl−1)).
    lat = c["ttft_core"] / compose.DISAGG_TTFT_QUEUE + c["xfer"] + c["tpot"] * (plan.osl - 1)
    demand = min(per_replica, slots) / lat * 1e3
    seq = min(c["seq_s"], demand)
    rho = min(seq / (compose.PREFILL_RATE_DERATE * p.workers * c["p_rate"]), 1.0)
    ttft = (
        c["ttft_core"] / compose.DISAGG_TTFT_QUEUE * (1.0 + (compose.DISAGG_TTFT_QUEUE - 1.0) * rho)
        + c["xfer"]
    )
    if per_replica > slots:
        ttft += max(0.0, per_replica / seq * 1e3 - (ttft + c["tpot"] * (plan.osl - 1)))
    mem, fits = _memory_and_fit(arch, sysc, plan, {"decode": b})
    return Prediction(
        ttft_ms=ttft,
        tpot_ms=c["tpot"],
        tokens_per_s_per_gpu=seq * plan.osl / plan.gpus_per_replica,
        tokens_per_s_per_user=1000.0 / c["tpot"],
        concurrency=float(concurrency),
        memory_gib_per_gpu=mem,
        fits=fits,
    )


def prefill_time_ms(
    model: ModelArch | str,
    system: SystemSpec | str,
    role: RolePlan,
    prompt_tokens: np.ndarray,
    request_len: int | None = None,
) -> np.ndarray:
    """Raw prefill time (ms) of one engine step carrying `prompt_tokens` prompt tokens (array).

    The step holds ceil(tokens/request_len) prompts of request_len tokens (default: one prompt of all
    the tokens). No queueing and no correction factors: this is the engine's step-time curve.
    """
    arch, sysc = _arch(model), _sys(system)
    tokens = np.maximum(np.asarray(prompt_tokens, dtype=float), 1.0)
    if request_len:
        reqs = np.ceil(tokens / request_len)
        seq = tokens / reqs
    else:
        reqs, seq = np.ones_like(tokens), tokens
    out = step_ms(arch, sysc, role.parallelism, tokens, reqs, seq, 0.0, 0.0, reqs)
    result: np.ndarray = np.asarray(out, dtype=float) * np.ones_like(tokens)
    return result


def decode_step_ms(
    model: ModelArch | str,
    system: SystemSpec | str,
    role: RolePlan,
    batch_size: np.ndarray,
    context_len: np.ndarray,
) -> np.ndarray:
    """Raw decode step time (ms) for `batch_size` requests each holding `context_len` tokens (broadcast)."""
    arch, sysc = _arch(model), _sys(system)
    b = np.maximum(np.asarray(batch_size, dtype=float), 1.0)
    kv = np.asarray(context_len, dtype=float)
    out = compose.decode_ms(arch, sysc, role.parallelism, b, kv)
    return np.asarray(out, dtype=float) * np.ones(np.broadcast(b, kv).shape)


def step_scales(role: RolePlan) -> tuple[float, float]:
    """(prefill, decode) latency factors the prediction applies to each step of a deployed worker.

    Disaggregated prediction: TTFT = 1.8·(1.1·t_prefill) + transfer, TPOT = 1.08·t_decode, where 1.1
    and 1.08 are per-step engine overheads and 1.8 is queueing (which a live system produces by
    itself). So a prefill worker's steps run 1.1× and a decode worker's 1.08× the raw curves; agg
    workers run the raw curves (their composition carries its own mixed-step terms).
    """
    if role.role == "prefill":
        return compose.PREFILL_LATENCY_SCALE, 1.0
    if role.role == "decode":
        return 1.0, compose.DECODE_LATENCY_SCALE
    return 1.0, 1.0


def _positive(name: str, v: Any) -> int:
    if v is None:
        raise InputError(f"--{name} is required for this mode", hint="see autodeploy estimate --help")
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise InputError(f"--{name} must be a positive integer (got {v!r})", hint=f"pass --{name} > 0")
    return v


def make_role(
    arch: ModelArch,
    role: Role,
    tp: int,
    batch: int,
    isl: int,
    osl: int,
    pp: int = 1,
    ep: int | None = None,
    attention_dp: int = 1,
    workers: int = 1,
    max_num_tokens: int | None = None,
) -> RolePlan:
    """A RolePlan with the engine settings configure would choose (MoE default: experts EP over tp·dp)."""
    if ep is None:
        ep = tp * attention_dp if arch.is_moe else 1
    par = Parallelism(tp=tp, pp=pp, ep=ep, attention_dp=attention_dp)
    overrides = EngineOverrides(max_num_tokens=max_num_tokens)
    return role_plan(role, par, workers, batch, isl, osl, kv_cache_dtype(arch), overrides)


def kv_cache_dtype(arch: ModelArch) -> KvCacheDtype:
    """The engine's KV-cache dtype for a checkpoint: fp8 where it ships an fp8 KV cache, else auto."""
    return "fp8" if arch.kv_dtype == "fp8" else "auto"


def estimate_cli(args: Any) -> dict[str, Any]:
    """`autodeploy estimate`: one configuration's prediction as a JSON-able dict."""
    isl, osl = _positive("isl", args.isl), _positive("osl", args.osl)
    arch, sysc = load_model(args.model), load_system(args.system)
    mode = args.mode
    if mode in ("agg", "prefill", "decode"):
        tp, b = _positive("tp", args.tp), _positive("batch-size", args.batch_size)
        pp, dp = _positive("pp", args.pp), _positive("attention-dp", args.attention_dp)
        ep = _positive("ep", args.ep) if args.ep is not None else None
        if mode == "agg":
            mnt = (
                _positive("max-num-tokens", args.max_num_tokens) if args.max_num_tokens is not None else None
            )
            role = make_role(arch, "agg", tp, b, isl, osl, pp, ep, dp, 1, mnt)
            return _pred_dict(estimate(Plan("agg", arch.name, sysc.name, (role,), 1, isl, osl)))
        role = make_role(arch, mode, tp, b, isl, osl, pp, ep, dp)
        mem = role_memory(arch, sysc, role, isl + osl)
        gpus = role.gpus_per_worker
        if mode == "prefill":
            t = float(compose.prefill_ms(arch, sysc, role.parallelism, b, isl))
            ttft, tpot, tps = t, 0.0, b * dp / t * 1e3 / gpus
            user = 1000.0 / t
        else:
            tpot = float(compose.decode_tpot_ms(arch, sysc, role.parallelism, b, isl, osl))
            ttft, tps, user = 0.0, b * dp / tpot * 1e3 / gpus, 1000.0 / tpot
        return {
            "ttft_ms": ttft,
            "tpot_ms": tpot,
            "tokens_per_s_per_gpu": tps,
            "tokens_per_s_per_user": user,
            "memory_gib_per_gpu": float(mem["total"]) / GIB,
            "fits": bool(mem["fits"]),
        }
    roles = []
    for r in ("prefill", "decode"):
        tp = _positive(f"{r}-tp", getattr(args, f"{r}_tp"))
        b = getattr(args, f"{r}_batch_size")
        b = 1 if (b is None and r == "prefill") else _positive(f"{r}-batch-size", b)
        ep = getattr(args, f"{r}_ep")
        roles.append(
            make_role(
                arch,
                r,
                tp,
                b,
                isl,
                osl,
                _positive(f"{r}-pp", getattr(args, f"{r}_pp")),
                ep,
                1,
                _positive(f"{r}-workers", getattr(args, f"{r}_workers")),
            )
        )
    return _pred_dict(estimate(Plan("disagg", arch.name, sysc.name, tuple(roles), 1, isl, osl)))


def _pred_dict(p: Prediction) -> dict[str, Any]:
    d = p.to_dict()
    return {
        k: d[k]
        for k in (
            "ttft_ms",
            "tpot_ms",
            "tokens_per_s_per_gpu",
            "tokens_per_s_per_user",
            "memory_gib_per_gpu",
            "fits",
            "concurrency",
        )
    }
