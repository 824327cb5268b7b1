"""GPU system specs (peak rates, memory, links) and their fitted efficiencies, read from configs/systems."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automation.errors import InputError

if TYPE_CHECKING:
    from automation.perfmodel.queueing import Stack

SYSTEMS_DIR = Path(__file__).resolve().parent.parent / "configs" / "systems"

# The fitted efficiencies: a fixed handful per GPU system (never per model). Defaults are the starting
# point of the fit and the fallback for a system without a fit file.
FIT_DEFAULTS: dict[str, float] = {
    "gemm_eff": 0.70,  # bf16 GEMM: fraction of bf16 peak
    "fp8_eff": 0.60,  # per-tensor fp8 GEMM: fraction of fp8 peak
    "fp8_block_eff": 0.45,  # 128x128 block-scaled fp8 GEMM: fraction of fp8 peak (scale loads, smaller tiles)
    # nvfp4 GEMM: fraction of the fp4 peak. Default: aiconfigurator 0.12's measured B200/GB200 nvfp4 GEMM
    # tables reach 0.3–0.43 of it at m = 4096–8192 (systems/data/*/gemm/trtllm/1.3.0rc20/gemm_perf.parquet).
    "fp4_eff": 0.40,
    # Fixed cost an nvfp4 GEMM adds to gemm_us: quantizing its bf16 activations to nvfp4 (µs). Default: the
    # same tables' small-m nvfp4 GEMMs take ~10 µs more than bytes/bandwidth (8192² at m ≤ 64: 22 µs for
    # 38 MB on B200), an upper end: the served engine fuses most quantizes into the op before the GEMM.
    "fp4_us": 8.0,
    "mem_eff": 0.80,  # weight/activation streaming of GEMMs and experts: fraction of HBM bandwidth
    "knee": 3.0,  # p of the p-norm blending compute and memory time (p -> inf is a hard max)
    "gemm_us": 6.0,  # fixed cost of one GEMM launch (µs)
    "m_tile": 32.0,  # GEMM rows are computed in tiles: compute sees max(m, m_tile) rows
    "tile": 0.0,  # GEMM tile waste (not fitted: ill-conditioned against gemm_eff on these rows): compute × (1 + tile/n)(1 + tile/k), so thin TP/expert shards run slower
    "attn_ctx_eff": 0.45,  # prefill attention: fraction of the FMHA-dtype peak
    "attn_gen_eff": 0.60,  # decode attention: fraction of HBM bandwidth while reading the KV cache
    # Absorbed MLA decode: fraction of the FMHA-dtype peak its math reaches. Default: aiconfigurator 0.12's
    # measured MLA generation tables reach 0.35 (H200) and 0.58 (B200) of the fp8 peak with an fp8 cache
    # and 128 heads at 8–32k context (systems/data/*/mla/trtllm/1.3.0rc20/generation_mla_perf.parquet).
    "mla_gen_eff": 0.45,
    "attn_us": 8.0,  # fixed cost of one attention op (µs)
    "ar_us": 10.0,  # latency of one all-reduce step (µs)
    "ar_eff": 0.70,  # all-reduce bus-bandwidth efficiency
    "moe_eff": 0.60,  # grouped expert GEMM relative to a dense GEMM of the same dtype (bf16, fp8)
    "moe_fp4_eff": 0.60,  # nvfp4 grouped expert GEMM relative to a dense nvfp4 GEMM (its own kernels)
    "moe_imbalance": 0.25,  # systematic excess of the hottest EP rank: × (1 + k·log2(ep)) over the statistical one
    "moe_skew": 0.5,  # power-law exponent of expert popularity (fewer distinct experts hit than uniform)
    "moe_us": 20.0,  # fixed cost of one MoE layer per step (router top-k, permute, grouped launches) (µs)
}


@dataclass(frozen=True)
class SystemSpec:
    """One GPU system: peak rates (per GPU), memory, links, and the fitted efficiencies in `fit`."""

    name: str
    gpus_per_node: int
    hbm_gib: float
    hbm_bw_tbs: float
    tflops: dict[str, float | None]
    nvlink_gbs: float
    internode_gbs: float
    # GPUs one NVLink switch fabric joins (0: one node). An NVL72 rack (GB200, GB300) joins 72 GPUs over
    # 18 trays of 4, so a worker spanning trays still talks over NVLink; HGX boards join their 8.
    nvlink_domain: int = 0
    elementwise_bw_eff: float = 0.8
    elementwise_us: float = 3.0
    p2p_us: float = 10.0
    nccl_mem_mb: dict[int, float] = field(default_factory=lambda: {1: 0, 2: 342, 4: 392, 8: 392})
    other_mem_gib: float = 3.5
    kv_transfer_us: float = 300.0
    fit: dict[str, float] = field(default_factory=lambda: dict(FIT_DEFAULTS))
    fit_source: str = "defaults"
    # A calibration from measurements (perfmodel.calibration): every prefill step runs prefill_scale and
    # every decode step decode_scale times the fitted kernels' time (ops.calibrated); `calibration` names
    # the file, empty when none is in force.
    prefill_scale: float = 1.0
    decode_scale: float = 1.0
    extra_request_ms: float = 0.0  # added to the serving stack's fixed per-request cost (calibrated_stack)
    calibration: str = ""

    @property
    def hbm_bytes(self) -> float:
        return self.hbm_gib * 2**30

    @property
    def hbm_bw(self) -> float:
        """HBM bandwidth in bytes/s."""
        return self.hbm_bw_tbs * 1e12

    @property
    def domain_gpus(self) -> int:
        """GPUs in one NVLink domain: `nvlink_domain`, or one node when the yaml names none."""
        return max(self.nvlink_domain, self.gpus_per_node)

    def link_gbs(self, gpus: Any) -> Any:
        """Per-GPU, per-direction bandwidth (GB/s) of a collective or transfer among `gpus` GPUs packed
        into as few NVLink domains as possible: NVLink while they fit in one domain, the inter-node
        (scale-out) link per GPU beyond it. Broadcasts over arrays."""
        import numpy as np

        g = np.asarray(gpus, dtype=float)
        out = np.where(g > self.domain_gpus, self.internode_gbs, self.nvlink_gbs)
        return float(out) if out.ndim == 0 else out

    def peak_flops(self, dtype: str) -> float:
        """Dense tensor peak in FLOP/s; a dtype the GPU lacks falls back to the next wider one."""
        for d in {"fp4": ("fp4", "fp8", "bf16"), "fp8": ("fp8", "bf16")}.get(dtype, ("bf16",)):
            v = self.tflops.get(d)
            if v:
                return float(v) * 1e12
        raise InputError(f"system '{self.name}' has no tensor peak for {dtype}", hint="fix its yaml")

    def nccl_mem_bytes(self, gpus: int) -> float:
        keys = sorted(self.nccl_mem_mb)
        k = max([x for x in keys if x <= max(gpus, 1)] or [keys[0]])
        return float(self.nccl_mem_mb[k]) * 1e6

    def with_fit(self, fit: dict[str, float]) -> SystemSpec:
        """A copy with other efficiencies (the calibration script and refits use this)."""
        return replace(self, fit={**FIT_DEFAULTS, **fit}, fit_source="override")


def known_systems() -> list[str]:
    return sorted(p.stem for p in SYSTEMS_DIR.glob("*.yaml") if not p.stem.endswith(".fit"))


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open() as f:
        return yaml.load(f, Loader=loader) or {}


@lru_cache(maxsize=32)
def load_system(name: str, calibration: str = "") -> SystemSpec:
    """The spec of a named system plus its fitted efficiencies (`<name>.fit.yaml`, if present), under the
    calibration file `calibration` when one is named (perfmodel.calibration.apply)."""
    if calibration:
        from automation.perfmodel.calibration import apply

        return apply(load_system(name), calibration)
    if not isinstance(name, str) or not name.strip():
        raise InputError("system must be a non-empty name", hint=f"one of {', '.join(known_systems())}")
    key = name.strip().lower()
    path = SYSTEMS_DIR / f"{key}.yaml"
    if key.endswith(".fit") or not path.is_file():
        close = difflib.get_close_matches(key, known_systems(), n=1, cutoff=0.3)
        guess = f"did you mean '{close[0]}'? " if close else ""
        raise InputError(f"unknown system '{name}'", hint=f"{guess}known: {', '.join(known_systems())}")
    raw = _read_yaml(path)
    fit = dict(FIT_DEFAULTS)
    source = "defaults"
    fit_path = SYSTEMS_DIR / f"{key}.fit.yaml"
    if fit_path.is_file():
        fdata = _read_yaml(fit_path)
        # FIT_DEFAULTS keys, and any other numeric per-system value a model term reads from the fit file
        # (evaluate.request_ms reads `request_ms`); non-numeric entries are ignored.
        fit.update(
            {
                k: float(v)
                for k, v in (fdata.get("params") or {}).items()
                if k in FIT_DEFAULTS or isinstance(v, int | float)
            }
        )
        source = str(fdata.get("source", fit_path.name))
    return SystemSpec(
        name=key,
        gpus_per_node=int(raw["gpus_per_node"]),
        hbm_gib=float(raw["hbm_gib"]),
        hbm_bw_tbs=float(raw["hbm_bw_tbs"]),
        tflops={k: (float(v) if v else None) for k, v in raw["tflops"].items()},
        nvlink_gbs=float(raw["nvlink_gbs"]),
        internode_gbs=float(raw["internode_gbs"]),
        nvlink_domain=int(raw.get("nvlink_domain") or raw["gpus_per_node"]),
        elementwise_bw_eff=float(raw.get("elementwise_bw_eff", 0.8)),
        elementwise_us=float(raw.get("elementwise_us", 3.0)),
        p2p_us=float(raw.get("p2p_us", 10.0)),
        nccl_mem_mb={int(k): float(v) for k, v in (raw.get("nccl_mem_mb") or {1: 0}).items()},
        other_mem_gib=float(raw.get("other_mem_gib", 3.5)),
        kv_transfer_us=float(raw.get("kv_transfer_us", 300.0)),
        fit=fit,
        fit_source=source,
    )


def calibrated_stack(stack: Stack, sysc: SystemSpec) -> Stack:
    """The serving stack (queueing.Stack) with the calibration's extra fixed cost per request added to its
    own: the calibration measures what the stack that ran costs beyond what the model charged it."""
    if not sysc.extra_request_ms:
        return stack
    return replace(stack, request_ms=max(stack.request_ms + sysc.extra_request_ms, 0.0))
