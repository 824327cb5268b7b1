"""Model architecture facts (dense and MoE, quantization) from a Hugging Face config.json."""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from automation.errors import InputError

MODELS_DIR = Path(__file__).resolve().parent.parent / "configs" / "models"
# aiconfigurator's flat model_configs layout: `<org>--<name>_config.json` (+ `_hf_quant_config.json`).
FLAT_CONFIG_SUFFIX = "_config.json"
FLAT_HF_QUANT_SUFFIX = "_hf_quant_config.json"

# Bytes per weight element for each GEMM dtype the model knows.
WEIGHT_BYTES = {"bf16": 2.0, "fp8": 1.0, "fp8_block": 1.0, "fp4": 0.5625}  # nvfp4: 4 bit + one fp8 scale / 16
KV_BYTES = {"fp8": 1.0, "bf16": 2.0}
# kv_cache_quant_algo values that state a 16-bit KV cache (ModelOpt writes null for it; a row or an engine
# config that pins bf16 writes one of these).
KV_16BIT = frozenset({"BF16", "BFLOAT16", "FP16", "FLOAT16", "NONE", "AUTO"})
# `<model>@<quant>` (quant one of WEIGHT_BYTES) names a model at a quantization other than its checkpoint's:
# load_model applies ModelArch.with_quant. An HF id cannot contain "@".
QUANT_SEP = "@"


def _quant_suffix(name: str) -> str:
    """The `@<quant>` suffix of a model name ("" when it has none)."""
    head, sep, tail = name.rpartition(QUANT_SEP)
    return tail if sep and head and tail in WEIGHT_BYTES else ""


@dataclass(frozen=True)
class ModelArch:
    """Architecture facts the performance model needs (per whole model, not per GPU).

    gemm_quant: "bf16" | "fp8" (per-tensor static) | "fp8_block" (128x128 block-scaled) | "fp4" (nvfp4).
    kv_dtype: "fp8" | "bf16": the checkpoint's, as aiconfigurator reads it (an explicit
    kv_cache_quant_algo wins; otherwise an fp8/fp8_block/nvfp4 checkpoint gets an FP8 KV cache and FP8
    FMHA, a bf16 one a bf16 cache); `with_kv_cache` applies an engine's kv_cache_config.dtype on top.
    For MLA models (DeepSeek) `kv_elems_per_token_layer` is the compressed latent, not 2·n_kv·d; the
    kv_lora_rank / q_lora_rank / qk_rope_dim / v_head_dim fields give the absorbed kernels' shapes.
    """

    name: str
    num_layers: int
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    gemm_quant: str = "bf16"
    kv_dtype: str = "bf16"
    num_experts: int = 0
    topk: int = 0
    moe_intermediate: int = 0
    shared_intermediate: int = 0
    dense_layers: int = 0  # leading dense layers of a MoE model (first_k_dense_replace)
    mla_kv_dim: int = 0  # kv_lora_rank + qk_rope_head_dim for MLA, else 0
    kv_lora_rank: int = 0  # MLA: the compressed KV latent per token (512 for DeepSeek-V3)
    q_lora_rank: int = 0  # MLA: the compressed query (0: queries projected straight from the hidden state)
    qk_rope_dim: int = 0  # MLA: the shared RoPE key per token (64); head_dim = qk_nope + qk_rope
    v_head_dim: int = 0  # MLA: value/output width per head (128)
    attn_weight_params: int = 0  # per-layer attention weights (q, k, v, o projections)
    tie_embeddings: bool = False
    context_length: int = 0  # max_position_embeddings of config.json (0: not stated)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def family(self) -> str:
        return "moe" if self.is_moe else "dense"

    @property
    def moe_layers(self) -> int:
        return self.num_layers - self.dense_layers if self.is_moe else 0

    @property
    def weight_bytes(self) -> float:
        return WEIGHT_BYTES[self.gemm_quant]

    @property
    def kv_bytes(self) -> float:
        return KV_BYTES[self.kv_dtype]

    def with_quant(self, gemm: str | None = None, moe: str | None = None) -> ModelArch:
        """The architecture as a run quantized to `gemm` (dense GEMMs) and `moe` (routed experts) runs it,
        instead of the checkpoint's own quantization (None or "": the checkpoint's).

        Values are gemm_quant names (WEIGHT_BYTES). Experts and dense GEMMs share one precision here, so a
        MoE model given two different ones is refused (ValueError); a dense model ignores `moe`. The KV cache
        follows as aiconfigurator infers it for a checkpoint of that quantization with no stated KV algo
        (_detect_quant): fp8 for fp8, fp8_block and fp4, bf16 for bf16. The name gets `@<quant>` appended,
        which load_model reads back (so a Plan naming it stays a plain, self-contained value).
        """
        want = gemm or ""
        if self.is_moe and moe and moe != want:
            if want:
                raise ValueError(f"gemm {gemm} with moe {moe}: one GEMM precision only")
            want = moe
        if not want:
            return self
        if want not in WEIGHT_BYTES:
            raise ValueError(f"unknown quantization {want!r} (one of {', '.join(WEIGHT_BYTES)})")
        base = self.name.rsplit(QUANT_SEP, 1)[0] if _quant_suffix(self.name) else self.name
        kv = "bf16" if want == "bf16" else "fp8"
        return replace(self, name=f"{base}{QUANT_SEP}{want}", gemm_quant=want, kv_dtype=kv)

    def with_kv_cache(self, engine_dtype: str | None) -> ModelArch:
        """The architecture as an engine with kv_cache_config.dtype = `engine_dtype` runs it: "fp8" gives an
        FP8 cache (and FP8 FMHA) whatever the checkpoint; "auto" or None keeps the checkpoint's."""
        if engine_dtype == "fp8" and self.kv_dtype != "fp8":
            return replace(self, kv_dtype="fp8")
        return self

    def kv_heads_per_gpu(self, tp: int | Any) -> Any:
        """ceil(n_kv / tp): KV heads are replicated when tp > n_kv (MLA: the latent is replicated)."""
        if self.mla_kv_dim:
            return 1.0
        return _ceil_div(self.num_kv_heads, tp)

    def kv_elems_per_token_layer(self, tp: int | Any = 1) -> Any:
        """KV-cache elements one token stores per layer on one GPU: 2·ceil(n_kv/tp)·d (MLA: latent dim)."""
        if self.mla_kv_dim:
            return float(self.mla_kv_dim) + 0 * tp
        return 2.0 * self.kv_heads_per_gpu(tp) * self.head_dim

    def kv_bytes_per_token(self, tp: int | Any = 1) -> Any:
        """KV bytes per token on one GPU, all layers: L·kv_elems(tp)·kv_bytes."""
        return self.num_layers * self.kv_elems_per_token_layer(tp) * self.kv_bytes

    def kv_bytes_per_token_total(self) -> float:
        """KV bytes one token of context occupies over the whole model (what disagg must transfer)."""
        return float(self.num_layers * self.kv_elems_per_token_layer(1) * self.kv_bytes)

    def weight_params(self) -> dict[str, float]:
        """Parameter counts by class: attention, dense FFN, routed experts (all), shared experts, embedding."""
        h = self.hidden
        attn = self.attn_weight_params * self.num_layers
        ffn = 3 * h * self.intermediate * (self.dense_layers if self.is_moe else self.num_layers)
        experts = 3 * h * self.moe_intermediate * self.num_experts * self.moe_layers
        router = h * self.num_experts * self.moe_layers
        shared = 3 * h * self.shared_intermediate * self.moe_layers
        emb = self.vocab * h * (1 if self.tie_embeddings else 2)
        return {
            "attn": attn,
            "ffn": ffn,
            "experts": experts,
            "router": router,
            "shared": shared,
            "embed": emb,
        }


def _ceil_div(a: int, b: Any) -> Any:
    if isinstance(b, int):
        return -(-a // b)
    import numpy as np

    return np.ceil(a / np.asarray(b, dtype=float))


def _detect_quant(cfg: dict[str, Any], hf_quant: dict[str, Any] | None) -> tuple[str, str]:
    """(gemm_quant, kv_dtype) from `quantization_config` or a sibling hf_quant_config.json (ModelOpt)."""
    algo = ""
    kv_algo = ""
    block = False
    q = cfg.get("quantization_config") or {}
    if q:
        method = str(q.get("quant_method", "")).lower()
        algo = str(q.get("quant_algo", "") or method).upper()
        kv_algo = str(q.get("kv_cache_quant_algo", "") or "").upper()
        block = bool(q.get("weight_block_size"))
        if method in {"fp8", "fbgemm_fp8"}:
            algo = "FP8"
        elif method in {"mxfp4"}:
            algo = "NVFP4"
        elif method == "compressed-tensors":
            text = json.dumps(q).lower()
            algo = (
                "FP8" if "float" in text and '"num_bits": 8' in text else ("NVFP4" if "fp4" in text else "")
            )
    if hf_quant:
        hq = hf_quant.get("quantization", hf_quant)
        algo = str(hq.get("quant_algo") or algo).upper()
        kv_algo = str(hq.get("kv_cache_quant_algo") or kv_algo).upper()
    if "FP4" in algo:
        gemm = "fp4"
    elif "FP8" in algo:
        gemm = "fp8_block" if block or "BLOCK" in algo else "fp8"
    else:
        gemm = "bf16"
    # The checkpoint's KV dtype as aiconfigurator infers it (sdk/models/helpers.py,
    # _infer_quant_modes_from_raw_config): a stated kv_cache_quant_algo wins; otherwise fp8, fp8_block and
    # nvfp4 checkpoints get an FP8 KV cache and FP8 FMHA, bf16 checkpoints a bf16 cache.
    if "FP8" in kv_algo:
        kv = "fp8"
    elif kv_algo in KV_16BIT:
        kv = "bf16"
    else:
        kv = "fp8" if gemm != "bf16" else "bf16"
    return gemm, kv


def arch_from_config(name: str, cfg: dict[str, Any], hf_quant: dict[str, Any] | None = None) -> ModelArch:
    """Build a ModelArch from config.json contents (dense Llama/Qwen-style, MoE Qwen3/Mixtral/DeepSeek)."""
    try:
        if "text_config" in cfg and "hidden_size" not in cfg:
            cfg = {**cfg["text_config"], "quantization_config": cfg.get("quantization_config")}
        h = int(cfg["hidden_size"])
        layers = int(cfg["num_hidden_layers"])
        heads = int(cfg["num_attention_heads"])
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or h // heads)
        inter = int(cfg.get("intermediate_size") or 4 * h)
        vocab = int(cfg["vocab_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(
            f"config.json of '{name}' lacks an architecture field: {exc}",
            hint="pass a Hugging Face decoder-only model directory (hidden_size, num_hidden_layers, ...)",
        ) from None
    experts = int(cfg.get("num_experts") or cfg.get("n_routed_experts") or cfg.get("num_local_experts") or 0)
    topk = int(cfg.get("num_experts_per_tok") or 0) if experts else 0
    moe_inter = int(cfg.get("moe_intermediate_size") or inter) if experts else 0
    shared = 0
    if experts:
        shared = int(cfg.get("shared_expert_intermediate_size") or 0) or int(
            (cfg.get("n_shared_experts") or 0) * moe_inter
        )
    dense_layers = int(cfg.get("first_k_dense_replace") or 0) if experts else 0
    mla = rank = q_rank = rope = v_dim = 0
    if cfg.get("kv_lora_rank"):
        # MLA: a compressed latent (kv_lora_rank) plus the shared RoPE key is cached per token and layer.
        mla = int(cfg["kv_lora_rank"]) + int(cfg.get("qk_rope_head_dim") or 0)
        qk = int(cfg.get("qk_nope_head_dim") or 0) + int(cfg.get("qk_rope_head_dim") or 0)
        v = int(cfg.get("v_head_dim") or head_dim)
        ql = int(cfg.get("q_lora_rank") or 0)
        q_params = (h * ql + ql * heads * qk) if ql else h * heads * qk
        kv_params = h * mla + int(cfg["kv_lora_rank"]) * heads * (
            qk - int(cfg.get("qk_rope_head_dim") or 0) + v
        )
        attn = q_params + kv_params + heads * v * h
        head_dim = qk
        rank, q_rank, rope, v_dim = int(cfg["kv_lora_rank"]), ql, int(cfg.get("qk_rope_head_dim") or 0), v
    else:
        attn = h * (heads + 2 * kv_heads) * head_dim + heads * head_dim * h
    gemm, kv = _detect_quant(cfg, hf_quant)
    return ModelArch(
        name=name,
        num_layers=layers,
        hidden=h,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=inter,
        vocab=vocab,
        gemm_quant=gemm,
        kv_dtype=kv,
        num_experts=experts,
        topk=topk,
        moe_intermediate=moe_inter,
        shared_intermediate=shared,
        dense_layers=dense_layers,
        mla_kv_dim=mla,
        kv_lora_rank=rank,
        q_lora_rank=q_rank,
        qk_rope_dim=rope,
        v_head_dim=v_dim,
        attn_weight_params=attn,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        context_length=int(cfg.get("max_position_embeddings") or 0),
    )


@lru_cache(maxsize=1)
def _packaged() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(MODELS_DIR.glob("*.json")):
        out[p.stem.replace("--", "/")] = p
    return out


def known_models() -> list[str]:
    """HF ids of the models whose facts ship with the package."""
    return list(_packaged())


@lru_cache(maxsize=64)
def load_model(name_or_dir: str) -> ModelArch:
    """Architecture of a packaged HF id (case-insensitive), of a local directory holding config.json, or of
    a config file in aiconfigurator's flat model_configs layout (`<org>--<name>_config.json`, with an
    optional sibling `<org>--<name>_hf_quant_config.json`).

    `<model>@<quant>` is that model at another quantization (ModelArch.with_quant; quant one of
    WEIGHT_BYTES), e.g. "Qwen/Qwen3-32B@fp8".
    """
    if not isinstance(name_or_dir, str) or not name_or_dir.strip():
        raise InputError(
            "model must be a non-empty HF id or directory", hint="e.g. --model Qwen/Qwen3-32B-FP8"
        )
    quant = _quant_suffix(name_or_dir)
    if quant:
        base = load_model(name_or_dir[: -len(quant) - len(QUANT_SEP)])
        return replace(base.with_quant(quant), name=name_or_dir)
    path = Path(name_or_dir).expanduser()
    if path.is_file() and path.name.endswith(FLAT_CONFIG_SUFFIX):
        hq_path = path.with_name(path.name[: -len(FLAT_CONFIG_SUFFIX)] + FLAT_HF_QUANT_SUFFIX)
        try:
            cfg = json.loads(path.read_text())
            hq = json.loads(hq_path.read_text()) if hq_path.is_file() else None
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read {path}: {exc}", hint="is it valid JSON?") from None
        return arch_from_config(str(path), cfg, hq)
    if path.is_dir():
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise InputError(
                f"no config.json in model directory '{name_or_dir}'", hint="pass a HF checkpoint dir"
            )
        try:
            cfg = json.loads(cfg_path.read_text())
            hq_path = path / "hf_quant_config.json"
            hq = json.loads(hq_path.read_text()) if hq_path.is_file() else None
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read {cfg_path}: {exc}", hint="is it valid JSON?") from None
        return arch_from_config(str(path), cfg, hq)
    pkg = _packaged()
    key = {k.lower(): k for k in pkg}.get(name_or_dir.strip().lower())
    if key is None:
        close = difflib.get_close_matches(name_or_dir, list(pkg), n=1, cutoff=0.3)
        guess = f"did you mean '{close[0]}'? or " if close else ""
        raise InputError(
            f"unknown model '{name_or_dir}'",
            hint=f"{guess}pass a local directory containing config.json",
        )
    data = json.loads(pkg[key].read_text())
    return arch_from_config(key, data["config"], data.get("hf_quant_config"))


def param_count(arch: ModelArch) -> float:
    """Total parameters (all experts), for display and tests."""
    return float(math.fsum(arch.weight_params().values()))
