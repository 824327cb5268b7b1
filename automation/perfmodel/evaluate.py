"""Predictions for one Plan: its design point, any concurrency, and per-role step-time curves."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from automation.errors import InputError
from automation.perfmodel import compose, queueing
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
from automation.perfmodel.system import SystemSpec, calibrated_stack, load_system

GIB = 2**30  # bytes per GiB: memory is reported in GiB, as nvidia-smi and TRT-LLM logs do

# What the serving stack adds per request (queueing.Stack), beyond the engine's steps.
#
# LOOP_MS: the closed loop's turnaround outside the engine (client, HTTP, Dynamo's frontend, tokenization,
# routing): from a request's last token to its successor reaching the engine, and part of every TTFT.
# Measured on the rehearsal (Dynamo 1.6.1 frontend on this machine, 2026-12-03, burst warm-up): TTFT at
# c = 1 less the simulated engine path is 11.8 ms (agg) and 11.4 ms (disagg); under load the agg users'
# resynchronisation (queueing.simulate_agg) fits the measured c = 16 and 32 with 18 ms (the frontend
# and the client share two cores with the workers there). 18 ms: within 5 % of the measured mean TTFT
# at every agg level and within 10 % at every disagg level (tests/perfmodel/test_queueing.py).
LOOP_MS = 18.0
# TRT-LLM's overlap scheduler plans iteration i + 1 while i runs, so a request reaching a busy engine is
# scheduled one iteration later (PyExecutor._executor_loop_overlap, TRT-LLM 1.x PyTorch backend).
TRTLLM_ADMIT_LAG = 1
# The fixed per-request TTFT cost of a TRT-LLM deployment (ms) beyond the loop, per GPU system: what the
# measured rows' low-concurrency TTFT holds beyond the simulated engine path and the loop (the engine's
# per-request work before a first token goes out). Fitted by tests/perf/fit_request_ms.py on a seeded
# 70 % of the deduplicated measured rows with c ≤ 8 (shared/reference/measured/
# trtllm_measured_calibration.csv), never per model or row; the system's fit file may override it
# (`request_ms` under params; fit_request_ms.py --write puts it there). Systems with fewer than 20
# fitted rows get REQUEST_MS_DEFAULT, the all-systems fit. Fit of 2026-12-03 (loop 18 ms, admission lag
# 1, fixed lengths, Llama-3.1-70B rows left out; h100_sxm 39 rows, b200_sxm 29, all 83).
# Not refitted with each row's own method (rows.method_of, spread lengths for InferenceX): that fit gives
# b200_sxm 123, h100_sxm 21.5, h200_sxm 192.5, all-systems 134.5 ms, driven by the InferenceX rows,
# which hold 100–300 ms more than the simulated path at c ≤ 8 while aiconfigurator's own h100 rows hold
# ~20 ms: a harness/engine-config term, not a system's, which would make configure refuse every h200
# disagg plan under a 300 ms TTFT limit (tests/perfmodel/test_queueing.py). Kept until it is explained.
REQUEST_MS: dict[str, float] = {"b200_sxm": 45.5, "h100_sxm": 29.0}
REQUEST_MS_DEFAULT = 43.0


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


def estimate(
    plan: Plan,
    method: queueing.Method = queueing.DEFAULT_METHOD,
    stack: queueing.Stack | None = None,
) -> Prediction:
    """The prediction at the plan's design point (every role at its max_batch_size).

    TTFT: the benchmark's mean (`method`) at the design concurrency on the serving `stack` (default
    trtllm_stack), queueing included, simulated exactly (`simulate`): what predict_at_concurrency
    says at that concurrency. The sweep screens with the closed form (closed_form_ttft).
    agg: TPOT and throughput of the IFB steady state of compose.agg_metrics. disagg: TPOT = 1.08·decode
    TPOT, throughput rate-matched min(0.9·x·prefill, 0.92·y·decode)·osl / GPUs.
    """
    _check_plan(plan)
    arch, sysc = load_model(plan.model), load_system(plan.system, plan.calibration)
    if plan.mode == "agg":
        r = plan.role("agg")
        m, _ = _agg(plan, r.max_batch_size, arch, sysc)
        mem, fits = _memory_and_fit(arch, sysc, plan, {})
        conc = float(m["concurrency"]) * plan.replicas
        return Prediction(
            ttft_ms=simulate(plan, conc, method, stack).ttft_ms,
            tpot_ms=float(m["tpot_ms"]),
            tokens_per_s_per_gpu=float(m["tokens_s_gpu"]),
            tokens_per_s_per_user=1000.0 / float(m["tpot_ms"]),
            concurrency=conc,
            memory_gib_per_gpu=mem,
            fits=fits,
        )
    d = plan.role("decode")
    c = _disagg_core(plan, d.max_batch_size, arch, sysc)
    mem, fits = _memory_and_fit(arch, sysc, plan, {})
    conc = float(d.workers * d.max_batch_size * d.parallelism.attention_dp * plan.replicas)
    return Prediction(
        ttft_ms=simulate(plan, conc, method, stack).ttft_ms,
        tpot_ms=c["tpot"],
        tokens_per_s_per_gpu=c["seq_s"] * plan.osl / plan.gpus_per_replica,
        tokens_per_s_per_user=1000.0 / c["tpot"],
        concurrency=conc,
        memory_gib_per_gpu=mem,
        fits=fits,
    )


def kv_slots(arch: ModelArch, sysc: SystemSpec, role: RolePlan, isl: int, osl: int) -> int:
    """Requests of isl + osl tokens the KV cache of one attention rank of a role holds (0: not one).

    TRT-LLM's capacity scheduler (GUARANTEED_NO_EVICT, the default) admits a request only when the KV
    cache can hold all of it, so the batch a rank really runs is min(max_batch_size, this).
    """
    return kv_capacity_tokens(arch, sysc, role) // (isl + osl)


def request_ms(system: SystemSpec | str) -> float:
    """The fixed per-request TTFT cost of a TRT-LLM deployment on `system` (ms) beyond the loop
    (LOOP_MS: client, HTTP, frontend, tokenization, routing): the engine's own per-request work before
    a first token goes out, which no step time carries.

    `request_ms` under the system fit file's params wins (once system.FIT_DEFAULTS lists the key, which
    is what lets load_system keep it); otherwise REQUEST_MS[system], else REQUEST_MS_DEFAULT (see there
    for where the values come from).
    """
    sysc = _sys(system)
    return float(sysc.fit.get("request_ms", REQUEST_MS.get(sysc.name, REQUEST_MS_DEFAULT)))


@dataclass(frozen=True)
class _AggTables:
    """One attention rank of an agg replica, as queueing.simulate_agg takes it."""

    ranks: int  # attention ranks per replica (dp · pp), each with its share of the users
    slots: int  # requests a rank runs: min(max_batch_size, KV capacity)
    decode: tuple[float, ...]  # decode-only iteration at g = 0..slots running requests (g = 0 unused)
    prompts_cap: tuple[int, ...]  # prompts the token budget admits next to g decodes
    chunks: int  # iterations per prompt (chunked prefill of a prompt longer than the budget)
    plan: Plan

    def mixed_row(self, k: int) -> list[float]:
        """An iteration with k prompts (chunks > 1: one chunk) next to g = 0..slots decodes."""
        return _agg_mixed_row(self.plan, self.slots, k, self.chunks)


@dataclass(frozen=True)
class _DisaggTables:
    """One disagg replica, as queueing.simulate_disagg takes it."""

    prefill_workers: int
    prefill: tuple[float, ...]  # a prefill worker's step with n = 1..batch prompts (n = 0 unused)
    xfer_ms: float
    ranks: int  # decode attention ranks per replica (workers · dp)
    slots: int  # decode requests per replica: ranks · min(max_batch_size, KV capacity)
    decode: tuple[float, ...]  # decode pool step at n = 0..slots running requests (n = 0 unused)


def _agg_kv(plan: Plan) -> int:
    """KV length of the decodes of a mixed step: the midpoint of the output (compose.agg_metrics)."""
    return plan.isl + plan.osl // 2 + 1


@functools.lru_cache(maxsize=512)
def _agg_mixed_row(plan: Plan, slots: int, k: int, chunks: int) -> list[float]:
    r = plan.role("agg")
    arch, sysc = load_model(plan.model), load_system(plan.system, plan.calibration)
    g = np.arange(slots + 1, dtype=float)
    kv = _agg_kv(plan)
    if chunks > 1:
        chunk = agg_ctx_tokens(r, plan.isl)
        out = step_ms(arch, sysc, r.parallelism, chunk + g, 1.0, plan.isl, g, kv, 1.0 + g, ctx_div=chunks)
    else:
        out = step_ms(arch, sysc, r.parallelism, k * plan.isl + g, float(k), plan.isl, g, kv, k + g)
    return [float(x) for x in np.asarray(out, dtype=float) * np.ones_like(g)]


@functools.lru_cache(maxsize=256)
def _agg_tables(plan: Plan) -> _AggTables:
    r = plan.role("agg")
    arch, sysc = load_model(plan.model), load_system(plan.system, plan.calibration)
    par = r.parallelism
    slots = max(min(r.max_batch_size, kv_slots(arch, sysc, r, plan.isl, plan.osl)), 1)
    g = np.arange(slots + 1, dtype=float)
    dec = np.asarray(compose.decode_ms(arch, sysc, par, np.maximum(g, 1.0), _agg_kv(plan)), dtype=float)
    ctx = agg_ctx_tokens(r, plan.isl)
    chunks = math.ceil(plan.isl / ctx) if ctx < plan.isl else 1
    if chunks > 1:
        cap = tuple(1 for _ in range(slots + 1))
    else:
        least = 1 if r.enable_chunked_prefill else 0
        cap = tuple(max((r.max_num_tokens - i) // plan.isl, least) for i in range(slots + 1))
    return _AggTables(par.attention_dp * par.pp, slots, tuple(float(x) for x in dec), cap, chunks, plan)


@functools.lru_cache(maxsize=256)
def _disagg_tables(plan: Plan, users: int) -> _DisaggTables:
    """The replica's stations; the decode table runs to min(users, slots) running requests."""
    arch, sysc = load_model(plan.model), load_system(plan.system, plan.calibration)
    p, d = plan.role("prefill"), plan.role("decode")
    pdp = p.parallelism.attention_dp
    per_step = p.max_num_tokens // plan.isl if p.max_num_tokens >= plan.isl else 1
    cap = max(min(p.max_batch_size, per_step), 1) * pdp
    n = np.arange(1, cap + 1, dtype=float)
    pre = compose.PREFILL_LATENCY_SCALE * np.asarray(
        compose.prefill_ms(arch, sysc, p.parallelism, np.ceil(n / pdp), plan.isl), dtype=float
    )
    ranks = d.workers * d.parallelism.attention_dp
    slots = ranks * max(min(d.max_batch_size, kv_slots(arch, sysc, d, plan.isl, plan.osl)), 1)
    m = np.arange(1, min(users, slots) + 1, dtype=float)
    dec = compose.DECODE_LATENCY_SCALE * np.asarray(
        compose.decode_tpot_ms(arch, sysc, d.parallelism, np.maximum(m / ranks, 1.0), plan.isl, plan.osl),
        dtype=float,
    )
    cross = compose.cross_node_fraction(plan.total_gpus, sysc.gpus_per_node)
    xfer = float(
        compose.kv_transfer_ms(arch, sysc, plan.isl, min(p.gpus_per_worker, d.gpus_per_worker), cross)
    )
    return _DisaggTables(
        p.workers,
        (0.0, *(float(x) for x in pre)),
        xfer,
        ranks,
        slots,
        (0.0, *(float(x) for x in dec)),
    )


@functools.lru_cache(maxsize=4096)
def _simulate(plan: Plan, users: int, stack: queueing.Stack, method: queueing.Method) -> queueing.SimResult:
    """The benchmark's means for one agg rank or one disagg replica with `users` users (cached)."""
    stack = calibrated_stack(stack, load_system(plan.system, plan.calibration))
    if plan.mode == "agg":
        a = _agg_tables(plan)
        return queueing.simulate_agg(
            users, plan.osl, stack, a.slots, a.mixed_row, a.decode, a.prompts_cap, a.chunks, method, plan.isl
        )
    t = _disagg_tables(plan, users)
    return queueing.simulate_disagg(
        users, plan.osl, stack, t.prefill_workers, t.prefill, t.xfer_ms, t.slots, t.decode, method, plan.isl
    )


def trtllm_stack(system: SystemSpec | str) -> queueing.Stack:
    """The serving stack autodeploy deploys on `system`: Dynamo's frontend and TRT-LLM workers."""
    return queueing.Stack(
        loop_ms=LOOP_MS, request_ms=request_ms(system), admit_lag=TRTLLM_ADMIT_LAG, decode_join_lag=1
    )


# The rehearsal's stack: Dynamo's frontend and mocker workers. The mocker has no per-request engine cost and
# schedules a request at the next iteration (its offline replay matches queueing.simulate_* with these:
# tests/perfmodel/test_queueing.py); the loop is the same frontend's.
MOCKER_STACK = queueing.Stack(loop_ms=LOOP_MS, request_ms=0.0, admit_lag=0, decode_join_lag=1)


def simulate(
    plan: Plan,
    concurrency: float,
    method: queueing.Method = queueing.DEFAULT_METHOD,
    stack: queueing.Stack | None = None,
) -> queueing.SimResult:
    """The benchmark's measured means for `plan` at `concurrency` users (queueing.simulate_agg/_disagg).

    Users spread evenly over replicas (and, in agg, over the attention ranks of a replica, which run
    in lockstep). A fractional share u per simulated unit interpolates the simulations at ⌊u⌋ and ⌈u⌉
    users (u ≤ 1: one user). stack defaults to trtllm_stack(plan.system).
    """
    fixed = trtllm_stack(plan.system) if stack is None else stack
    units = plan.replicas * (_agg_tables(plan).ranks if plan.mode == "agg" else 1)
    u = max(concurrency / units, 1.0)
    lo, hi = math.floor(u), math.ceil(u)
    a = _simulate(plan, lo, fixed, method)
    if hi == lo:
        return a
    b = _simulate(plan, hi, fixed, method)
    w = u - lo
    mixed = {k: (1.0 - w) * getattr(a, k) + w * getattr(b, k) for k in vars(a)}
    return queueing.SimResult(**mixed)


def closed_form_ttft(
    plan: Plan,
    concurrency: float,
    method: queueing.Method = queueing.DEFAULT_METHOD,
    stack: queueing.Stack | None = None,
) -> float:
    """The benchmark's mean TTFT for `plan` at `concurrency` users in closed form (queueing.closed_form_*),
    on the same stations as `simulate`: what the sweep screens its candidates with (search)."""
    arch, sysc = load_model(plan.model), load_system(plan.system, plan.calibration)
    st = calibrated_stack(trtllm_stack(plan.system) if stack is None else stack, sysc)
    per_replica = max(concurrency / plan.replicas, 1.0)
    if plan.mode == "agg":
        r = plan.role("agg")
        ranks = r.parallelism.attention_dp * r.parallelism.pp
        slots = max(min(r.max_batch_size, kv_slots(arch, sysc, r, plan.isl, plan.osl)), 1)
        u = max(per_replica / ranks, 1.0)
        m, _ = _agg(plan, min(u, slots), arch, sysc)
        ctx = agg_ctx_tokens(r, plan.isl)
        return float(
            queueing.closed_form_agg(
                u,
                plan.osl,
                st,
                math.ceil(ctx / plan.isl),
                math.ceil(plan.isl / ctx),
                m["mixed_ms"],
                m["gen_ms"],
                method,
            )
        )
    p, d = plan.role("prefill"), plan.role("decode")
    pdp = p.parallelism.attention_dp
    per_step = p.max_num_tokens // plan.isl if p.max_num_tokens >= plan.isl else 1
    cap = max(min(p.max_batch_size, per_step), 1)
    ranks = d.workers * d.parallelism.attention_dp
    b_cap = max(min(d.max_batch_size, kv_slots(arch, sysc, d, plan.isl, plan.osl)), 1)
    b = min(max(per_replica / ranks, 1.0), b_cap)
    c = _disagg_core(plan, b, arch, sysc)
    t_batch = compose.PREFILL_LATENCY_SCALE * float(
        compose.prefill_ms(arch, sysc, p.parallelism, cap, plan.isl)
    )
    return float(
        queueing.closed_form_disagg(
            per_replica,
            plan.osl,
            st,
            p.workers,
            cap * pdp,
            t_batch,
            c["t_prefill"] * compose.PREFILL_LATENCY_SCALE,
            c["xfer"],
            ranks * b_cap,
            c["tpot"],
            method,
        )
    )


def predict_at_concurrency(
    plan: Plan,
    concurrency: float,
    method: queueing.Method = queueing.DEFAULT_METHOD,
    stack: queueing.Stack | None = None,
) -> Prediction:
    """The prediction with `concurrency` users over the whole deployment, as the benchmark measures it.

    TTFT: the mean over the measured requests of the benchmark's closed loop (`method`: its warm-up and
    requests per user), simulated exactly against the deployment's stations (`simulate`) on the
    serving `stack` (default trtllm_stack(system): Dynamo + TRT-LLM with its fixed per-request cost;
    MOCKER_STACK for a rehearsal with Dynamo's mocker).
    KV capacity caps the batch: a rank runs b = min(max_batch_size, kv_slots) requests at most and
    the rest wait (the simulation queues them; TPOT, throughput and memory are those of the batch the
    engine runs, so memory fits whenever one request's KV does).
    TPOT and throughput are the steady state at the batch the concurrency implies (the mocker follows
    these step times). agg: b = clamp(c/(replicas·dp·pp), 1, slots); TPOT and tokens/s of
    compose.agg_metrics at b, tokens/s scaled by the share of the batch filled below it. disagg:
    decode batch b = clamp(c/(replicas·y·dp), 1, slots); throughput = min(prefill, decode rate at b,
    the users' demand c/(unloaded request latency)).
    """
    _check_plan(plan)
    if not isinstance(concurrency, int | float) or concurrency <= 0:
        raise InputError(f"concurrency must be > 0 (got {concurrency})", hint="pass a positive number")
    arch, sysc = load_model(plan.model), load_system(plan.system, plan.calibration)
    per_replica = concurrency / plan.replicas
    sim = simulate(plan, concurrency, method, stack)
    if plan.mode == "agg":
        r = plan.role("agg")
        ranks = r.parallelism.attention_dp * r.parallelism.pp
        cap = min(r.max_batch_size, kv_slots(arch, sysc, r, plan.isl, plan.osl))
        b = min(max(per_replica / ranks, 1.0), max(cap, 1))
        m, mem_parts = _agg(plan, b, arch, sysc)
        tok_s = float(m["tokens_s"]) * min(per_replica / (b * ranks), 1.0)
        return Prediction(
            ttft_ms=sim.ttft_ms,
            tpot_ms=float(m["tpot_ms"]),
            tokens_per_s_per_gpu=tok_s / plan.gpus_per_replica,
            tokens_per_s_per_user=1000.0 / float(m["tpot_ms"]),
            concurrency=float(concurrency),
            memory_gib_per_gpu=float(mem_parts["total"]) / GIB,
            fits=bool(mem_parts["fits"]) and cap >= 1,
        )
    d = plan.role("decode")
    cap = min(d.max_batch_size, kv_slots(arch, sysc, d, plan.isl, plan.osl))
    slots = d.workers * max(cap, 1) * d.parallelism.attention_dp
    b = min(max(per_replica / (d.workers * d.parallelism.attention_dp), 1.0), max(cap, 1))
    c = _disagg_core(plan, b, arch, sysc)
    # Closed loop: with n requests in flight each cycles once per unloaded request latency.
    lat = c["ttft_core"] / compose.DISAGG_TTFT_QUEUE + c["xfer"] + c["tpot"] * (plan.osl - 1)
    demand = min(per_replica, slots) / lat * 1e3
    seq = min(c["seq_s"], demand)
    mem, fits = _memory_and_fit(arch, sysc, plan, {"decode": b})
    return Prediction(
        ttft_ms=sim.ttft_ms,
        tpot_ms=c["tpot"],
        tokens_per_s_per_gpu=seq * plan.osl / plan.gpus_per_replica,
        tokens_per_s_per_user=1000.0 / c["tpot"],
        concurrency=float(concurrency),
        memory_gib_per_gpu=mem,
        fits=fits and cap >= 1,
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
    calibration = str(Path(args.calibration).absolute()) if args.calibration else ""
    arch, sysc = load_model(args.model), load_system(args.system, calibration)
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
            return _pred_dict(estimate(Plan("agg", arch.name, sysc.name, (role,), 1, isl, osl, calibration)))
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
    return _pred_dict(estimate(Plan("disagg", arch.name, sysc.name, tuple(roles), 1, isl, osl, calibration)))


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
