"""The configuration sweep: agg and disagg candidates, SLA filter, ranking, Pareto frontier, winner."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from automation.errors import InputError
from automation.perfmodel import compose, queueing
from automation.perfmodel.arch import ModelArch, load_model
from automation.perfmodel.evaluate import GIB, estimate, kv_cache_dtype, trtllm_stack
from automation.perfmodel.ops import ParallelismGrid
from automation.perfmodel.plan import (
    DEFAULT_FREE_GPU_MEMORY_FRACTION,
    NO_OVERRIDES,
    EngineOverrides,
    Mode,
    Parallelism,
    Plan,
    Prediction,
    Role,
    agg_ctx_tokens,
    max_num_tokens,
    role_plan,
    takes_a_prompt,
)
from automation.perfmodel.system import SystemSpec, calibrated_stack, load_system

# Batch grids (per attention rank), as dense as the reference tool's sweep.
AGG_BATCHES = np.array(
    list(range(1, 16)) + list(range(16, 64, 4)) + list(range(64, 256, 16)) + list(range(256, 513, 32)),
    dtype=float,
)
DECODE_BATCHES = np.array(
    list(range(1, 16)) + list(range(16, 32, 2)) + list(range(32, 128, 4)) + list(range(128, 513, 8)),
    dtype=float,
)
MAX_WORKERS = 32  # bound of the xPyD worker-count search, per role per replica
# Candidates (best per parallel config) whose estimate is checked against the SLA, per top_n wanted: the
# sweep's closed-form TTFT can be optimistic near a rate-matched prefill (queueing.closed_form_disagg).
RECHECK = 3
TP_CHOICES = (1, 2, 4, 8)  # widths swept: powers of two up to an 8-GPU node (TRT-LLM splits heads evenly)


@dataclass(frozen=True)
class Candidate:
    """One ranked configuration; `tokens_per_s_per_gpu_cluster` counts idle GPUs of the cluster."""

    mode: Mode
    plan: Plan
    prediction: Prediction
    tokens_per_s_per_gpu_cluster: float
    total_gpus: int
    meets_sla: bool

    def to_row(self) -> dict[str, Any]:
        """The JSON shape of `autodeploy configure --json` (cluster-level tokens/s/gpu)."""
        p, pr = self.plan, self.prediction
        row: dict[str, Any] = {
            "mode": self.mode,
            "tokens_per_s_per_gpu": round(self.tokens_per_s_per_gpu_cluster, 3),
            "tokens_per_s_per_gpu_replica": round(pr.tokens_per_s_per_gpu, 3),
            "tokens_per_s_per_user": round(pr.tokens_per_s_per_user, 3),
            "ttft_ms": round(pr.ttft_ms, 3),
            "tpot_ms": round(pr.tpot_ms, 3),
            "concurrency": pr.concurrency,
            "replicas": p.replicas,
            "gpus_per_replica": p.gpus_per_replica,
            "total_gpus": self.total_gpus,
            "memory_gib_per_gpu": round(pr.memory_gib_per_gpu, 3),
            "fits": pr.fits,
            "meets_sla": self.meets_sla,
        }
        if p.mode == "agg":
            r = p.role("agg")
            row.update(**vars(r.parallelism), batch_size=r.max_batch_size, max_num_tokens=r.max_num_tokens)
        else:
            roles: tuple[Role, ...] = ("prefill", "decode")
            for name in roles:
                r = p.role(name)
                row[name] = {**vars(r.parallelism), "batch_size": r.max_batch_size, "workers": r.workers}
        row["plan"] = p.to_dict()
        return row


@dataclass
class SearchResult:
    """Outcome of `search`: winner mode (None if nothing meets the SLA), top-N and frontier per mode."""

    model: str
    system: str
    total_gpus: int
    isl: int
    osl: int
    ttft_ms: float
    tpot_ms: float
    winner: str | None
    top: dict[str, list[Candidate]]
    frontier: dict[str, dict[str, np.ndarray]]
    closest: list[Candidate] = field(default_factory=list)

    @property
    def best(self) -> Candidate | None:
        return self.top[self.winner][0] if self.winner else None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"winner": self.winner}
        for mode, cands in self.top.items():
            out[mode] = [c.to_row() for c in cands]
        if self.winner is None:
            out["closest"] = [c.to_row() for c in self.closest]
        out["frontier"] = {mode: self.frontier_rows(mode) for mode in self.frontier}
        return out

    def frontier_rows(self, mode: str) -> list[dict[str, float]]:
        """The Pareto frontier of one mode as rows, highest tokens/s/user first."""
        f = self.frontier.get(mode) or {}
        keys = ("tokens_per_s_per_user", "tokens_per_s_per_gpu", "ttft_ms", "tpot_ms")
        if not f or not f[keys[0]].size:
            return []
        return [
            {k: round(float(v), 3) for k, v in zip(keys, vals, strict=True)}
            for vals in zip(*(f[k] for k in keys), strict=True)
        ]


def _configs(arch: ModelArch, total_gpus: int, per_node: int, sysc: SystemSpec) -> list[Parallelism]:
    """Parallel configs of one worker, within one node.

    dense: tp ∈ {1,2,4,8}. MoE on g GPUs: attention TP or attention DP, experts EP or TP
    (tp·dp = moe_tp·ep; TRT-LLM forbids tp > 1 with dp > 1). pp ∈ {2, 4} only when the weights do
    not fit on one node with TP alone.
    """
    cap = min(total_gpus, per_node)
    out: list[Parallelism] = []
    for g in TP_CHOICES:
        if g > cap:
            continue
        if arch.is_moe:
            out += [Parallelism(tp=g, ep=g), Parallelism(tp=g)]
            if g > 1:
                out += [Parallelism(ep=g, attention_dp=g), Parallelism(attention_dp=g)]
        else:
            out.append(Parallelism(tp=g))
    out = list(dict.fromkeys(out))
    tmax = max(g for g in TP_CHOICES if g <= cap)
    widest = Parallelism(tp=tmax, ep=tmax if arch.is_moe else 1)
    w = float(compose.weights_bytes_per_gpu(arch, widest))
    if w > 0.8 * sysc.hbm_bytes:  # 80 %: leave room for activations and some KV cache
        for pp in (2, 4):
            if tmax * pp <= total_gpus:
                out.append(Parallelism(tp=tmax, pp=pp, ep=widest.ep))
    return out


def _pareto_mask(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-dominated points, maximising both x and y."""
    order = np.lexsort((-y, -x))  # x desc, then y desc
    best = -np.inf
    keep = np.zeros(x.size, dtype=bool)
    for i in order:
        if y[i] > best:
            keep[i] = True
            best = y[i]
    return keep


def batch_grid(grid: np.ndarray, cap: int | None) -> np.ndarray:
    """The swept batches no larger than engine.max_batch_size, and the cap itself (so it can be picked)."""
    if cap is None:
        return grid
    return np.unique(np.append(grid[grid <= cap], float(cap)))


def _free_fraction(o: EngineOverrides) -> float:
    return (
        DEFAULT_FREE_GPU_MEMORY_FRACTION if o.free_gpu_memory_fraction is None else o.free_gpu_memory_fraction
    )


def _sweep_agg(
    arch: ModelArch,
    sysc: SystemSpec,
    configs: list[Parallelism],
    total: int,
    isl: int,
    osl: int,
    o: EngineOverrides,
    stack: queueing.Stack,
    method: queueing.Method,
) -> dict[str, Any]:
    """Every (config, batch, ctx_tokens) point as flat arrays, under the role's engine overrides `o`.

    TTFT is the benchmark's mean at the design concurrency (batch per rank) in closed form
    (queueing.closed_form_agg on the composition's mixed and decode steps): evaluate.closed_form_ttft.

    Without engine.max_num_tokens, ctx_tokens sweeps whole prompts up to max(8192, 2·isl) tokens per step
    (never more prompts than the batch less one) and max_num_tokens = ctx + batch; with it, ctx_tokens is
    what that budget holds (plan.agg_ctx_tokens) and a batch that leaves no room for a prompt is skipped.
    """
    b = batch_grid(AGG_BATCHES, o.max_batch_size)[None, :]
    chunked = bool(o.enable_chunked_prefill)
    if o.max_num_tokens is None:
        kmax = min(int(np.ceil(max(8192, 2 * isl) / isl)), int(AGG_BATCHES.max()))
        ks = np.arange(1, kmax + 1, dtype=float)[:, None]
        ctx = np.broadcast_to(ks * isl, (ks.size, b.size))
        bb = np.broadcast_to(b, ctx.shape)
        valid = (bb - ks >= 1) | ((bb == 1) & (ks == 1))
    else:
        bb = b
        ctx = np.asarray(agg_ctx_tokens(o.max_num_tokens, bb, isl, chunked), dtype=float)
        valid = takes_a_prompt(o.max_num_tokens, bb, isl, chunked, "agg")
    mnt = max_num_tokens("agg", isl, bb, ctx, o)
    cols: dict[str, list[np.ndarray]] = {
        k: [] for k in ("cfg", "b", "ctx", "ttft", "tpot", "tpg", "cl", "mem", "ok")
    }
    for ci, par in enumerate(configs):
        mem = compose.memory_parts(arch, sysc, par, mnt, bb, isl + osl, _free_fraction(o))
        ok = valid & mem["fits"]
        if not ok.any():
            continue
        m = compose.agg_metrics(arch, sysc, par, bb[ok], ctx[ok], isl, osl)
        ttft = queueing.closed_form_agg(
            bb[ok],
            osl,
            stack,
            np.ceil(ctx[ok] / isl),
            np.ceil(isl / ctx[ok]),
            m["mixed_ms"],
            m["gen_ms"],
            method,
        )
        gpus = par.gpus
        reps = total // gpus
        cols["cfg"].append(np.full(m["tpot_ms"].shape, ci))
        cols["b"].append(bb[ok])
        cols["ctx"].append(ctx[ok])
        cols["ttft"].append(ttft)
        cols["tpot"].append(m["tpot_ms"])
        cols["tpg"].append(m["tokens_s_gpu"])
        cols["cl"].append(m["tokens_s_gpu"] * reps * gpus / total)
        cols["mem"].append(mem["total"][ok] / GIB)
    return {k: (np.concatenate(v) if v else np.array([])) for k, v in cols.items()}


def _sweep_disagg(
    arch: ModelArch,
    sysc: SystemSpec,
    configs: list[Parallelism],
    total: int,
    per_node: int,
    isl: int,
    osl: int,
    ttft_lim: float,
    op: EngineOverrides,
    od: EngineOverrides,
    stack: queueing.Stack,
    method: queueing.Method,
) -> dict[str, Any]:
    """Best (prefill config, x, y) for every (decode config, decode batch), as flat arrays.

    Prefill workers run batch 1 under their overrides `op`; decode batches are capped by
    od.max_batch_size; each role's max_num_tokens and free_gpu_memory_fraction enter its memory fit.
    TTFT is the benchmark's mean with y·b·dp users per replica (queueing.closed_form_disagg), so it
    falls with x: for each y, x is one that balances the two rates, x ∈ {floor, ceil}(0.92·y·D /
    (0.9·P)), or the fewest prefill workers whose queue meets the TTFT limit (bisection on x).
    """
    pgrid = ParallelismGrid.of(configs)
    p_gpus = pgrid.gpus
    t_pre = compose.prefill_ms(arch, sysc, pgrid, 1.0, isl)
    p_mnt = max_num_tokens("prefill", isl, 1, overrides=op)
    pmem = compose.memory_parts(arch, sysc, pgrid, p_mnt, 1.0, isl + osl, _free_fraction(op))
    p_rate, _, ttft_core, _ = compose.disagg_rates(t_pre, 1.0, pgrid.attention_dp, 1.0, 1.0, 1.0, osl)
    p_ok = pmem["fits"] & takes_a_prompt(p_mnt, 1, isl, bool(op.enable_chunked_prefill), "prefill")
    rows: dict[str, list[np.ndarray]] = {
        k: [] for k in ("dcfg", "b", "pcfg", "x", "y", "ttft", "tpot", "tpg", "cl", "mem", "conc")
    }
    yv = np.arange(1, MAX_WORKERS + 1, dtype=float)
    batches = batch_grid(DECODE_BATCHES, od.max_batch_size)
    for di, par in enumerate(configs):
        b = batches
        d_mnt = max_num_tokens("decode", isl, b, overrides=od)
        dmem = compose.memory_parts(arch, sysc, par, d_mnt, b, isl + osl, _free_fraction(od))
        ok = dmem["fits"]
        if not ok.any() or not p_ok.any():
            continue
        b = b[ok]
        dp = par.attention_dp
        d_gpus = par.gpus
        raw = compose.decode_tpot_ms(arch, sysc, par, b, isl, osl)
        _, d_rate, _, tpot = compose.disagg_rates(1.0, 1.0, 1.0, raw, b, dp, osl)
        # shapes: (B, P, Y, 3)
        dr = d_rate[:, None, None, None]
        pr = p_rate[None, :, None, None]
        yy = yv[None, None, :, None]
        users = yy * b[:, None, None, None] * dp
        links = np.minimum(p_gpus, d_gpus)[None, :, None, None]
        p_lat = (ttft_core / compose.DISAGG_TTFT_QUEUE)[None, :, None, None]
        p_dp = pgrid.attention_dp[None, :, None, None]
        tau = tpot[:, None, None, None]

        ttft_at = functools.partial(
            _xpyd_ttft,
            _XpydStations(
                arch,
                sysc,
                isl,
                osl,
                total,
                per_node,
                users,
                yy * d_gpus,
                p_gpus,
                links,
                p_dp,
                p_lat,
                tau,
            ),
            stack,
            method,
        )

        xf = compose.DECODE_RATE_DERATE * yy * dr / (compose.PREFILL_RATE_DERATE * pr)
        lo = np.ones(np.broadcast_shapes(xf.shape, users.shape))
        hi = np.full(lo.shape, float(MAX_WORKERS))
        while (lo < hi).any():  # the fewest x with TTFT ≤ ttft_lim (TTFT falls with x)
            mid = np.floor((lo + hi) / 2.0)
            meet = ttft_at(mid) <= ttft_lim
            hi, lo = np.where(meet, mid, hi), np.where(meet, lo, mid + 1.0)
        xs = (np.floor(xf), np.ceil(xf), np.broadcast_to(hi, xf.shape))
        xx = np.clip(np.concatenate([np.broadcast_to(v, lo.shape) for v in xs], axis=-1), 1, MAX_WORKERS)
        gpus = xx * p_gpus[None, :, None, None] + yy * d_gpus
        seq = compose.xpyd_seq_s(pr, xx, dr, yy)
        reps = np.floor(total / gpus)
        cl = seq * osl * reps / total
        ttft = ttft_at(xx)
        good = (gpus <= total) & p_ok[None, :, None, None] & (ttft <= ttft_lim)
        score = np.where(good, cl, -1.0)
        flat = score.reshape(b.size, -1)
        best = flat.argmax(axis=1)
        has = flat[np.arange(b.size), best] > 0
        if not has.any():
            continue
        pi, yi, xi = np.unravel_index(best, score.shape[1:])
        sel = np.arange(b.size)
        xsel = xx[sel, pi, yi, xi]
        ysel = yv[yi]
        gsel = gpus[sel, pi, yi, xi]
        rows["dcfg"].append(np.full(b.size, di)[has])
        rows["b"].append(b[has])
        rows["pcfg"].append(pi[has])
        rows["x"].append(xsel[has])
        rows["y"].append(ysel[has])
        rows["ttft"].append(ttft[sel, pi, yi, xi][has])
        rows["tpot"].append(tpot[has])
        rows["tpg"].append((seq[sel, pi, yi, xi] * osl / gsel)[has])
        rows["cl"].append(cl[sel, pi, yi, xi][has])
        rows["mem"].append(np.maximum(dmem["total"][ok][has], pmem["total"][pi[has]]) / GIB)
        rows["conc"].append((ysel * b * dp * reps[sel, pi, yi, xi])[has])
    return {k: (np.concatenate(v) if v else np.array([])) for k, v in rows.items()}


@dataclass(frozen=True)
class _XpydStations:
    """What a disagg candidate's TTFT depends on besides x (broadcastable arrays over (B, P, Y, ·))."""

    arch: ModelArch
    sysc: SystemSpec
    isl: int
    osl: int
    total: int
    per_node: int
    users: np.ndarray  # per replica: y·b·dp
    decode_gpus: np.ndarray  # y · GPUs of a decode worker
    prefill_gpus: np.ndarray  # GPUs of a prefill worker, per prefill config
    links: np.ndarray
    prefill_dp: np.ndarray
    prefill_ms: np.ndarray  # 1.1 · prefill step of one prompt per rank
    tau: np.ndarray  # 1.08 · decode step at the batch


def _xpyd_ttft(
    st: _XpydStations, stack: queueing.Stack, method: queueing.Method, x: np.ndarray
) -> np.ndarray:
    """The benchmark's mean TTFT with x prefill workers (queueing.closed_form_disagg); the KV transfer's
    cross-node share follows the GPUs the replicas span."""
    g = x * st.prefill_gpus[None, :, None, None] + st.decode_gpus
    cross = compose.cross_node_fraction(np.maximum(np.floor(st.total / g), 1) * g, st.per_node)
    xfer = compose.kv_transfer_ms(st.arch, st.sysc, st.isl, st.links, cross)
    out: np.ndarray = queueing.closed_form_disagg(
        st.users,
        st.osl,
        stack,
        x,
        st.prefill_dp,
        st.prefill_ms,
        st.prefill_ms,
        xfer,
        st.users,
        st.tau,
        method,
    )
    return out


def _validate(
    total_gpus: int, isl: int, osl: int, ttft_ms: float, tpot_ms: float, top_n: int, modes: Any
) -> None:
    for name, v in (("total_gpus", total_gpus), ("isl", isl), ("osl", osl), ("top_n", top_n)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v <= 0:
            raise InputError(
                f"{name} must be a positive integer (got {v!r})", hint=f"pass --{name.replace('_', '-')} > 0"
            )
    for name, limit in (("ttft_ms", ttft_ms), ("tpot_ms", tpot_ms)):
        if isinstance(limit, bool) or not isinstance(limit, int | float) or not limit > 0:
            raise InputError(f"{name} must be > 0 (got {limit!r})", hint="pass the SLA limit in milliseconds")
    bad = [m for m in modes if m not in ("agg", "disagg")]
    if bad or not modes:
        raise InputError(
            f"modes must be agg and/or disagg (got {list(modes)!r})", hint="use --mode agg|disagg|auto"
        )


def search(
    model: str,
    system: str,
    total_gpus: int,
    isl: int,
    osl: int,
    ttft_ms: float,
    tpot_ms: float,
    modes: tuple[str, ...] | list[str] = ("agg", "disagg"),
    top_n: int = 3,
    gpus_per_node: int | None = None,
    engine: Mapping[Role, EngineOverrides] | None = None,
    method: queueing.Method = queueing.DEFAULT_METHOD,
    stack: queueing.Stack | None = None,
    calibration: str = "",
) -> SearchResult:
    """Sweep agg and/or disagg deployments of `model` on `total_gpus` GPUs of `system`.

    `engine` holds the engine settings the pipeline fixes per role (engine.<role> over engine.*): the
    sweep caps each role's batch at its max_batch_size and fits memory with its max_num_tokens and
    free_gpu_memory_fraction, and every candidate plan carries them, so a picked plan is deployed as is.

    TTFT is the mean the benchmark (`method`: its warm-up and requests per user) measures at each
    candidate's design concurrency on the serving `stack` (default evaluate.trtllm_stack: Dynamo
    and TRT-LLM), queueing included: the sweep screens in closed form (queueing.closed_form_*), and
    every plan it keeps carries its estimate, whose TTFT is simulated exactly (evaluate.simulate);
    a plan whose estimate misses the SLA is replaced by the next best (up to RECHECK × top_n tried).

    Rank by cluster tokens/s/gpu (replicas = floor(total/GPUs per replica); idle GPUs count) among
    candidates meeting TTFT ≤ ttft_ms and TPOT ≤ tpot_ms and fitting in memory; keep the best per
    parallel config (decode config for disagg), top_n per mode; the winner is the mode whose best
    is higher. If nothing meets the SLA, winner is None and `closest` holds the least-violating ones.
    `calibration` (a calibration file, perfmodel.calibration) scales the system's steps and fixed costs;
    every plan carries it.
    """
    _validate(total_gpus, isl, osl, ttft_ms, tpot_ms, top_n, modes)
    arch, sysc = load_model(model), load_system(system, calibration)
    per_node = gpus_per_node or sysc.gpus_per_node
    if per_node <= 0:
        raise InputError(
            f"gpus_per_node must be > 0 (got {per_node})", hint="pass a positive GPU count per node"
        )
    configs = _configs(arch, total_gpus, per_node, sysc)
    fixed = dict(engine or {})
    overrides: dict[Role, EngineOverrides] = {
        r: fixed.get(r, NO_OVERRIDES) for r in ("agg", "prefill", "decode")
    }
    kv_dtype = kv_cache_dtype(arch)
    serving = trtllm_stack(sysc) if stack is None else stack
    # The closed-form screens take the stack as the calibration leaves it; estimate() adds it itself.
    screen = calibrated_stack(serving, sysc)
    top: dict[str, list[Candidate]] = {}
    frontier: dict[str, dict[str, np.ndarray]] = {}
    closest: list[Candidate] = []
    least: list[tuple[Callable[[int], Candidate], list[int]]] = []
    for mode in modes:
        if mode == "agg":
            pts = _sweep_agg(arch, sysc, configs, total_gpus, isl, osl, overrides["agg"], screen, method)
            key = pts["cfg"]

            def make(i: int, pts: dict[str, Any] = pts) -> Candidate:
                par = configs[int(pts["cfg"][i])]
                role = role_plan(
                    "agg",
                    par,
                    1,
                    int(pts["b"][i]),
                    isl,
                    osl,
                    kv_dtype,
                    overrides["agg"],
                    ctx_tokens=int(pts["ctx"][i]),
                )
                gpus = role.gpus_per_worker
                plan = Plan("agg", arch.name, sysc.name, (role,), total_gpus // gpus, isl, osl, calibration)
                return _candidate(plan, total_gpus, ttft_ms, tpot_ms, method, serving)
        else:
            pts = _sweep_disagg(
                arch,
                sysc,
                configs,
                total_gpus,
                per_node,
                isl,
                osl,
                ttft_ms,
                overrides["prefill"],
                overrides["decode"],
                screen,
                method,
            )
            key = pts["dcfg"]

            def make(i: int, pts: dict[str, Any] = pts) -> Candidate:
                pc, dc = configs[int(pts["pcfg"][i])], configs[int(pts["dcfg"][i])]
                x, y, b = int(pts["x"][i]), int(pts["y"][i]), int(pts["b"][i])
                pre = role_plan("prefill", pc, x, 1, isl, osl, kv_dtype, overrides["prefill"])
                dec = role_plan("decode", dc, y, b, isl, osl, kv_dtype, overrides["decode"])
                gpr = pre.gpus_per_worker * pre.workers + dec.gpus_per_worker * dec.workers
                plan = Plan(
                    "disagg", arch.name, sysc.name, (pre, dec), total_gpus // gpr, isl, osl, calibration
                )
                return _candidate(plan, total_gpus, ttft_ms, tpot_ms, method, serving)

        if pts["tpot"].size == 0:
            top[mode], frontier[mode] = (
                [],
                {k: np.array([]) for k in ("tokens_per_s_per_user", "tokens_per_s_per_gpu")},
            )
            continue
        user = 1000.0 / pts["tpot"]
        cl = pts["cl"]
        ttft_ok = pts["ttft"] <= ttft_ms
        fm = ttft_ok & _pareto_mask(np.where(ttft_ok, user, -1.0), np.where(ttft_ok, cl, -1.0))
        order = np.argsort(-user[fm])
        frontier[mode] = {
            "tokens_per_s_per_user": user[fm][order],
            "tokens_per_s_per_gpu": cl[fm][order],
            "ttft_ms": pts["ttft"][fm][order],
            "tpot_ms": pts["tpot"][fm][order],
            "index": np.flatnonzero(fm)[order],
        }
        meets = ttft_ok & (pts["tpot"] <= tpot_ms)
        # The arrays screen with the closed form; what is recorded for a plan is its estimate (TTFT
        # simulated exactly), and a plan is kept only if that meets the SLA too: the next best groups
        # stand in for those that do not (up to RECHECK × top_n tried).
        top[mode] = []
        for i in _best_per_group(np.where(meets, cl, -np.inf), user, key, RECHECK * top_n):
            cand = make(i)
            if cand.meets_sla:
                top[mode].append(cand)
                if len(top[mode]) == top_n:
                    break
        # Least-violating points, for the "nothing meets the SLA" report (made only if it is needed).
        viol = np.maximum(pts["ttft"] / ttft_ms, pts["tpot"] / tpot_ms)
        least.append((make, _best_per_group(-viol, cl, key, top_n)))
    winner = None
    best = {m: c[0].tokens_per_s_per_gpu_cluster for m, c in top.items() if c}
    if best:
        winner = max(best, key=lambda m: best[m])
    else:
        closest = [make(i) for make, indices in least for i in indices]
        closest.sort(key=lambda c: max(c.prediction.ttft_ms / ttft_ms, c.prediction.tpot_ms / tpot_ms))
        closest = closest[:top_n]
    return SearchResult(
        model=arch.name,
        system=sysc.name,
        total_gpus=total_gpus,
        isl=isl,
        osl=osl,
        ttft_ms=ttft_ms,
        tpot_ms=tpot_ms,
        winner=winner,
        top=top,
        frontier=frontier,
        closest=closest if winner is None else [],
    )


def _best_per_group(score: np.ndarray, tie: np.ndarray, group: np.ndarray, n: int) -> list[int]:
    """Indices of the best finite `score` per group (tie-break `tie`), the n best groups first."""
    ok = np.isfinite(score)
    if not ok.any():
        return []
    idx = np.flatnonzero(ok)
    order = idx[np.lexsort((-tie[idx], -score[idx]))]
    seen: set[int] = set()
    out: list[int] = []
    for i in order:
        g = int(group[i])
        if g not in seen:
            seen.add(g)
            out.append(int(i))
            if len(out) == n:
                break
    return out


def _candidate(
    plan: Plan,
    total_gpus: int,
    ttft_ms: float,
    tpot_ms: float,
    method: queueing.Method,
    stack: queueing.Stack,
) -> Candidate:
    pred = estimate(plan, method, stack)
    cl = pred.tokens_per_s_per_gpu * plan.total_gpus / total_gpus
    meets = pred.ttft_ms <= ttft_ms and pred.tpot_ms <= tpot_ms and pred.fits
    return Candidate(plan.mode, plan, pred, cl, total_gpus, meets)
