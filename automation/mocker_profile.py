"""The mocker's view of a worker: its engine JSON and a timing profile (.npz) from the performance model."""

from __future__ import annotations

import io
import math
import zipfile
from typing import Any

import numpy as np

from automation.errors import InputError
from automation.perfmodel.plan import Role, RolePlan

# The mocker resolves this placeholder nowhere: the node script replaces it with its own directory
# before the worker starts, because the profile path inside the JSON must be absolute on the node.
SCRIPT_DIR_PLACEHOLDER = "@SCRIPT_DIR@"

# Profile grid sizes: enough that the mocker's linear/bilinear reading stays within 2 % of the model
# (tests/generate/test_mocker.py checks it), small enough to keep the .npz a few tens of KiB.
PREFILL_POINTS = 96
DECODE_KV_POINTS = 64
DECODE_CTX_POINTS = 48
DEFAULT_GPU_BLOCKS = 16384  # the mocker's own default (normalize_mocker_config({}))
# The mocker's worker_type of each role (Dynamo's names).
WORKER_TYPES: dict[Role, str] = {"agg": "aggregated", "prefill": "prefill", "decode": "decode"}


def quadratic_grid(low: float, high: float, points: int) -> np.ndarray:
    """`points` values from low to high, dense at the low end (where step times bend most)."""
    t = np.linspace(0.0, 1.0, points)
    grid = low + (high - low) * t**2
    return np.unique(np.round(grid, 6))


def check_budget(role: RolePlan, isl: int) -> None:
    """Refuse a worker the mocker could never serve: it runs the engine YAML's max_num_tokens, and a budget
    below the prompt (chunked prefill off) leaves every request unscheduled, a hang without an error, on
    every role but decode, whose budget the mocker gets raised (mocker_token_budget). The planner's
    defaults always hold a prompt (plan.max_num_tokens).

    Raises:
        InputError: naming the setting to change.
    """
    if mocker_token_budget(role, isl) < isl and not role.enable_chunked_prefill:
        raise InputError(
            f"engine.{role.role}.max_num_tokens {role.max_num_tokens} is below the prompt ({isl} tokens): "
            "the mocker would never schedule a request",
            hint=f"raise engine.{role.role}.max_num_tokens to at least {isl}, or enable chunked prefill",
        )


def mocker_token_budget(role: RolePlan, isl: int) -> int:
    """The mocker's max_num_batched_tokens for a worker: the engine YAML's, except on a disaggregated decode
    worker, where the mocker charges each transferred prompt against the budget (rehearsal.md §4, pitfall
    3) while TRT-LLM only receives its KV cache. There the budget is at least one prompt next to a full
    batch, round_up(isl + max_batch_size, 32), the planner's own decode default; otherwise a small decode
    budget (aiconfigurator writes 64) would make the mocker prefill every prompt again in 64-token chunks,
    which a real decode worker never does."""
    from automation.perfmodel.plan import DECODE_TOKEN_ROUND, round_up

    if role.role != "decode":
        return role.max_num_tokens
    return max(role.max_num_tokens, int(round_up(isl + role.max_batch_size, DECODE_TOKEN_ROUND)))


def geometric_grid(low: float, high: float, points: int) -> np.ndarray:
    """`points` values from low to high in constant ratio: decode time depends on kv/context (the batch),
    so equal ratios keep bilinear interpolation equally good at every scale."""
    return np.unique(np.round(np.geomspace(low, high, points), 6))


def _longest_request(role: RolePlan, seq_len: int | None) -> int:
    """The workload's request length (seq_len), never above what the role admits (its max_seq_len)."""
    return min(seq_len or role.max_seq_len, role.max_seq_len)


def profile_grids(
    role: RolePlan, isl: int, seq_len: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prefill tokens, decode active kv tokens, decode mean context length) grids for one role, up to the
    workload's requests of seq_len tokens (default: the role's max_seq_len), so that the grid spends its
    points where the benchmark's requests run rather than up to the deployed max_seq_len."""
    prefill_max = max(role.max_num_tokens, isl, 2)
    ctx_max = max(_longest_request(role, seq_len), 2)
    kv_max = max(role.max_batch_size * ctx_max, ctx_max)
    return (
        quadratic_grid(1.0, float(prefill_max), PREFILL_POINTS),
        geometric_grid(1.0, float(kv_max), DECODE_KV_POINTS),
        geometric_grid(1.0, float(ctx_max), DECODE_CTX_POINTS),
    )


def timing_profile(
    model: Any, system: Any, role: RolePlan, isl: int, seq_len: int | None = None
) -> dict[str, np.ndarray]:
    """The five arrays of a mocker-format profile, evaluated from the performance model.

    decode_itl[i, j] is the decode step at batch = active_kv[i] / context[j] requests of context[j]
    tokens, the mocker's own parametrisation (rehearsal.md §5.4). Prefill and decode workers carry the
    per-step overheads of the disaggregated prediction (perfmodel.evaluate.step_scales).
    """
    from automation.perfmodel import decode_step_ms, prefill_time_ms
    from automation.perfmodel.evaluate import step_scales

    # The steps of the deployed engine as the prediction has them (raw curve × per-step overhead).
    prefill_scale, decode_scale = step_scales(role)
    tokens, active_kv, context = profile_grids(role, isl, seq_len)
    prefill = prefill_scale * np.asarray(prefill_time_ms(model, system, role, tokens), dtype=np.float64)
    batch = np.maximum(active_kv[:, None] / context[None, :], 1.0)
    ctx = np.broadcast_to(context[None, :], batch.shape)
    decode = decode_scale * np.asarray(decode_step_ms(model, system, role, batch, ctx), dtype=np.float64)
    return {
        "prefill_isl": tokens.astype(np.float64),
        "prefill_ttft_ms": prefill,
        "decode_active_kv_tokens": active_kv.astype(np.float64),
        "decode_context_length": context.astype(np.float64),
        "decode_itl": decode.reshape(active_kv.size, context.size),
    }


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed .npz (what numpy.savez writes) with fixed timestamps, so the bytes are reproducible."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.ascontiguousarray(arrays[name]), allow_pickle=False)
    return buffer.getvalue()


def mocker_config(
    role: RolePlan,
    isl: int,
    profile_relpath: str,
    kv_transfer_gbs: float | None = None,
    kv_bytes_per_token: int | None = None,
    seq_len: int | None = None,
    prefix_caching: bool = False,
) -> dict[str, Any]:
    """The mocker's canonical engine JSON for one worker, translated from its TRT-LLM settings.

    kv_transfer_gbs (prefill workers of a disaggregated plan): the link the placement gives, so that
    TTFT carries the KV-cache transfer the performance model charges; the mocker applies it on the
    prefill side.
    """
    check_budget(role, isl)
    # Blocks for the workload's requests (seq_len, default max_seq_len): real memory is sized for those too.
    blocks_per_request = math.ceil(_longest_request(role, seq_len) / role.tokens_per_block) + 1
    engine: dict[str, Any] = {
        "backend": "trtllm",
        "worker_type": WORKER_TYPES[role.role],
        "block_size": role.tokens_per_block,
        # The model lets max_batch_size bind, never the KV cache (configure checked that the batch fits the
        # real memory), so the mocker gets at least its default capacity and room for the full batch.
        "num_gpu_blocks": max(DEFAULT_GPU_BLOCKS, role.max_batch_size * blocks_per_request),
        "max_model_len": role.max_seq_len,
        "max_num_seqs": role.max_batch_size,
        # The engine YAML's values: the mocker stands in for exactly that engine, except where it differs.
        "max_num_batched_tokens": mocker_token_budget(role, isl),
        # As the engine YAML's enable_block_reuse (on behind a KV-aware router).
        "enable_prefix_caching": prefix_caching,
        "enable_chunked_prefill": role.enable_chunked_prefill,
        "timing_model": {
            "type": "external",
            "provider": "dynamo_profile",
            "config": {"path": f"{SCRIPT_DIR_PLACEHOLDER}/{profile_relpath}"},
        },
    }
    if kv_transfer_gbs:
        engine["kv_transfer_bandwidth"] = round(float(kv_transfer_gbs), 6)
        if kv_bytes_per_token:
            engine["kv_transfer_bytes_per_token"] = int(kv_bytes_per_token)
    return {
        "engine": engine,
        "tensor_parallel_size": role.parallelism.tp * role.parallelism.attention_dp,
        "free_gpu_memory_fraction": role.free_gpu_memory_fraction,
    }


def interpolate_prefill(arrays: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
    """Prefill time at `tokens` as the mocker reads the profile: 1-D linear, extrapolated linearly."""
    x, y = arrays["prefill_isl"], arrays["prefill_ttft_ms"]
    out = np.interp(tokens, x, y)
    low, high = tokens < x[0], tokens > x[-1]
    if x.size > 1:
        out = np.where(low, y[0] + (tokens - x[0]) * (y[1] - y[0]) / (x[1] - x[0]), out)
        out = np.where(high, y[-1] + (tokens - x[-1]) * (y[-1] - y[-2]) / (x[-1] - x[-2]), out)
    return np.asarray(out, dtype=float)


def interpolate_decode(
    arrays: dict[str, np.ndarray], active_kv: np.ndarray, context: np.ndarray
) -> np.ndarray:
    """Decode step time as the mocker reads the profile: bilinear inside the grid, at least 1 ms."""
    kv, ctx, z = (
        arrays["decode_active_kv_tokens"],
        arrays["decode_context_length"],
        arrays["decode_itl"],
    )
    a = np.clip(np.asarray(active_kv, dtype=float), kv[0], kv[-1])
    c = np.clip(np.asarray(context, dtype=float), ctx[0], ctx[-1])
    i = np.clip(np.searchsorted(kv, a, side="right") - 1, 0, kv.size - 2)
    j = np.clip(np.searchsorted(ctx, c, side="right") - 1, 0, ctx.size - 2)
    tx = (a - kv[i]) / (kv[i + 1] - kv[i])
    ty = (c - ctx[j]) / (ctx[j + 1] - ctx[j])
    value = (
        z[i, j] * (1 - tx) * (1 - ty)
        + z[i + 1, j] * tx * (1 - ty)
        + z[i, j + 1] * (1 - tx) * ty
        + z[i + 1, j + 1] * tx * ty
    )
    return np.asarray(np.maximum(value, 1.0), dtype=float)
