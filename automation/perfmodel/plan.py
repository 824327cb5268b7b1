"""The deployable plan (per-role parallelism and engine settings) and the prediction values."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from automation.errors import InputError

ROLES = ("agg", "prefill", "decode")
DEFAULT_FREE_GPU_MEMORY_FRACTION = 0.9  # TRT-LLM's default; the KV budget is checked against it
DEFAULT_TOKENS_PER_BLOCK = 32


@dataclass(frozen=True)
class RolePlan:
    """One worker type and the engine settings the generate stage renders for it."""

    role: str  # "agg" | "prefill" | "decode"
    tp: int
    pp: int
    ep: int  # expert-parallel width (1 for dense)
    attention_dp: int  # attention data-parallel width (1 for dense)
    workers: int  # workers of this role per replica (agg: 1)
    max_batch_size: int
    max_num_tokens: int
    max_seq_len: int
    enable_chunked_prefill: bool
    free_gpu_memory_fraction: float
    kv_cache_dtype: str  # "fp8" | "auto"
    tokens_per_block: int

    @property
    def gpus_per_worker(self) -> int:
        return self.tp * self.pp * self.attention_dp

    @property
    def moe_tp(self) -> int:
        """MoE tensor-parallel width: tp·attention_dp = moe_tp·ep."""
        return max(self.tp * self.attention_dp // max(self.ep, 1), 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RolePlan:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        missing = names - set(d)
        if unknown or missing:
            raise InputError(
                f"bad role plan: unknown {sorted(unknown)} missing {sorted(missing)}",
                hint="regenerate the plan",
            )
        return cls(**d)


@dataclass(frozen=True)
class Plan:
    """A deployment: mode, model, system, roles, replicas and the workload it was planned for."""

    mode: str  # "agg" | "disagg"
    model: str
    system: str
    roles: tuple[RolePlan, ...]  # agg: (agg,), disagg: (prefill, decode)
    replicas: int
    isl: int
    osl: int

    @property
    def gpus_per_replica(self) -> int:
        return sum(r.gpus_per_worker * r.workers for r in self.roles)

    @property
    def total_gpus(self) -> int:
        """GPUs the plan uses (replicas × GPUs per replica)."""
        return self.gpus_per_replica * self.replicas

    def role(self, name: str) -> RolePlan:
        for r in self.roles:
            if r.role == name:
                return r
        raise KeyError(f"plan has no role '{name}' (roles: {[r.role for r in self.roles]})")

    def layout(self) -> str:
        """One replica in a few characters: "tp4 bs16" (agg) or "1P(tp4 bs1) + 1D(tp4 bs32)" (disagg)."""

        def one(r: RolePlan) -> str:
            widths = "".join(
                f"{name}{value}"
                for name, value in (("pp", r.pp), ("dp", r.attention_dp), ("ep", r.ep))
                if value > 1
            )
            return f"tp{r.tp}{widths} bs{r.max_batch_size}"

        if self.mode == "agg":
            return one(self.role("agg"))
        p, d = self.role("prefill"), self.role("decode")
        return f"{p.workers}P({one(p)}) + {d.workers}D({one(d)})"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["roles"] = [r.to_dict() for r in self.roles]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        d = dict(d)
        d["roles"] = tuple(RolePlan.from_dict(r) for r in d.get("roles", ()))
        try:
            return cls(**d)
        except TypeError as exc:
            raise InputError(
                f"bad plan: {exc}", hint="regenerate the plan with autodeploy configure"
            ) from None


@dataclass(frozen=True)
class Prediction:
    """Predicted serving metrics; tokens_per_s_per_gpu divides by the GPUs the plan uses."""

    ttft_ms: float
    tpot_ms: float
    tokens_per_s_per_gpu: float
    tokens_per_s_per_user: float
    concurrency: float  # cluster-wide requests in flight
    memory_gib_per_gpu: float
    fits: bool

    def to_dict(self) -> dict[str, Any]:
        return {k: (bool(v) if k == "fits" else float(v)) for k, v in asdict(self).items()}
