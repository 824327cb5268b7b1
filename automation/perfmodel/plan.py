"""The deployable plan (per-role parallelism and engine settings), the engine defaults, and the prediction."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, TypeVar, cast, get_args

from automation.errors import InputError

Mode = Literal["agg", "disagg"]
Role = Literal["agg", "prefill", "decode"]
KvCacheDtype = Literal["auto", "fp8"]
MODES: tuple[Mode, ...] = get_args(Mode)
ROLES: tuple[Role, ...] = get_args(Role)
KV_CACHE_DTYPES: tuple[KvCacheDtype, ...] = get_args(KvCacheDtype)

DEFAULT_FREE_GPU_MEMORY_FRACTION = 0.9  # TRT-LLM's KvCacheConfig default; the KV budget is checked against it
DEFAULT_TOKENS_PER_BLOCK = 32  # TRT-LLM's KvCacheConfig default
PREFILL_TOKEN_ROUND = 64  # prefill budgets are rounded up to whole 64-token tiles (docs/decisions.md)
DECODE_TOKEN_ROUND = 32  # decode budgets to whole 32-token tiles (docs/decisions.md)

T = TypeVar("T")


@dataclass(frozen=True)
class Parallelism:
    """How one worker splits the model: tp × attention_dp GPUs per pipeline stage, pp stages, experts over ep.

    TRT-LLM: tp·attention_dp = moe_tp·ep (the MoE block spans the same GPUs as attention); a dense
    model has ep = attention_dp = 1.
    """

    tp: int = 1
    pp: int = 1
    ep: int = 1  # expert-parallel width (1 for dense)
    attention_dp: int = 1  # attention data-parallel width (1 for dense)

    @property
    def gpus(self) -> int:
        """GPUs of one worker: tp · pp · attention_dp."""
        return self.tp * self.pp * self.attention_dp

    @property
    def moe_tp(self) -> int:
        """MoE tensor-parallel width: tp·attention_dp = moe_tp·ep."""
        return max(self.tp * self.attention_dp // max(self.ep, 1), 1)

    def short(self) -> str:
        """The widths in a few characters: tp, then pp/dp/ep where above 1 ("tp4", "tp1dp8ep8")."""
        widths = "".join(
            f"{name}{value}"
            for name, value in (("pp", self.pp), ("dp", self.attention_dp), ("ep", self.ep))
            if value > 1
        )
        return f"tp{self.tp}{widths}"


@dataclass(frozen=True)
class EngineOverrides:
    """Engine settings the pipeline file fixes for one role (None: the planner decides).

    The sweep honours them: max_batch_size caps the batches it tries, max_num_tokens and
    free_gpu_memory_fraction enter the memory and KV fit, and the plan it picks carries them all.
    """

    max_batch_size: int | None = None
    max_num_tokens: int | None = None
    free_gpu_memory_fraction: float | None = None
    enable_chunked_prefill: bool | None = None
    tokens_per_block: int | None = None
    kv_cache_dtype: KvCacheDtype | None = None

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> EngineOverrides:
        """From a mapping such as config.engine.for_role(role); unknown keys (extra) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in settings.items() if k in names and v is not None})


NO_OVERRIDES = EngineOverrides()


def _or(value: T | None, default: T) -> T:
    return default if value is None else value


def round_up(x: Any, k: int) -> Any:
    """x rounded up to a multiple of k: ceil(x/k)·k; ints stay ints, numpy arrays stay arrays."""
    return -(-x // k) * k


def max_num_tokens(
    role: Role, isl: int, batch: Any, ctx_tokens: Any = None, overrides: EngineOverrides = NO_OVERRIDES
) -> Any:
    """The token budget of one engine iteration of a role; the one place it is decided.

    engine.max_num_tokens when the pipeline sets it, else
      agg:     ctx_tokens + batch            (the prompt tokens of a mixed step next to a full decode batch;
                                              ctx_tokens defaults to one prompt, isl)
      prefill: round_up(isl · batch, 64)     (whole prompts of the batch)
      decode:  round_up(isl + batch, 32)     (a full decode batch plus one transferred prompt: Dynamo's
                                              mocker charges the prompt against the decode worker's
                                              budget and never schedules it otherwise, and it runs this
                                              same value)
    Works element-wise on numpy arrays (the sweep) as on ints.
    """
    if overrides.max_num_tokens is not None:
        return overrides.max_num_tokens
    if role == "agg":
        return (isl if ctx_tokens is None else ctx_tokens) + batch
    if role == "prefill":
        return round_up(isl * batch, PREFILL_TOKEN_ROUND)
    return round_up(isl + batch, DECODE_TOKEN_ROUND)


def agg_ctx_tokens(max_num_tokens: Any, batch: Any, isl: int, chunked: bool) -> Any:
    """Prompt tokens per mixed step an agg engine forms: whole prompts that fit in max_num_tokens next to a
    full decode batch, or a chunk of one prompt when chunked prefill is on and no whole prompt fits.

    ctx = clip(floor((max_num_tokens − batch)/isl), 1, max(batch − 1, 1))·isl (the sweep's rule: a mixed
    step keeps at least one decode); chunked and room < isl: max(room, 1).
    Element-wise on numpy arrays.
    """
    import numpy as np

    b = np.asarray(batch)
    room = np.asarray(max_num_tokens) - b
    # Never more prompts than the batch holds next to one running request (a lone request: one prompt).
    whole = np.clip(room // isl, 1, np.maximum(b - 1, 1)) * isl
    out = np.where(room < isl, np.maximum(room, 1), whole) if chunked else whole
    return out if isinstance(out, np.ndarray) and out.ndim else out.item()


def takes_a_prompt(max_num_tokens: Any, batch: Any, isl: int, chunked: bool, role: Role) -> Any:
    """Whether the engine can schedule a prompt at all: without chunked prefill a whole prompt must fit in
    one iteration (next to the running batch for agg); with it, at least one token. Element-wise."""
    room = max_num_tokens - batch if role == "agg" else max_num_tokens
    return room >= (1 if chunked else isl)


def role_plan(
    role: Role,
    parallelism: Parallelism,
    workers: int,
    batch: int,
    isl: int,
    osl: int,
    kv_cache_dtype: KvCacheDtype,
    overrides: EngineOverrides = NO_OVERRIDES,
    ctx_tokens: int | None = None,
) -> RolePlan:
    """A RolePlan with every engine setting decided: the pipeline's overrides, else the planner's defaults
    (max_num_tokens: see max_num_tokens; free_gpu_memory_fraction 0.9, tokens_per_block 32, chunked
    prefill off, max_seq_len = isl + osl, kv_cache_dtype from the checkpoint). The sweep plans at the
    workload's shape; `admit_requests` then widens max_seq_len to what the deployment admits."""
    return RolePlan(
        role=role,
        parallelism=parallelism,
        workers=int(workers),
        max_batch_size=int(batch),
        max_num_tokens=int(max_num_tokens(role, isl, int(batch), ctx_tokens, overrides)),
        max_seq_len=isl + osl,
        enable_chunked_prefill=_or(overrides.enable_chunked_prefill, False),
        free_gpu_memory_fraction=_or(overrides.free_gpu_memory_fraction, DEFAULT_FREE_GPU_MEMORY_FRACTION),
        kv_cache_dtype=_or(overrides.kv_cache_dtype, kv_cache_dtype),
        tokens_per_block=_or(overrides.tokens_per_block, DEFAULT_TOKENS_PER_BLOCK),
    )


def admit_requests(plan: Plan, max_seq_len: int, chunked: dict[Role, bool | None]) -> Plan:
    """The plan as deployed: every role admits requests of up to max_seq_len tokens (prompt + output).

    A prompt longer than a role's max_num_tokens can only be scheduled in chunks, so chunked prefill is on
    wherever max_seq_len > max_num_tokens, unless the pipeline file fixes it (`chunked[role]` not None).
    The workload's own requests (isl + osl) still fit in one iteration where they did, so the prediction
    of the benchmark's shape does not change; memory is planned for the workload's requests, not for
    max_seq_len (TRT-LLM sizes its KV pool by free_gpu_memory_fraction, not by max_seq_len).
    """
    if max_seq_len < plan.isl + plan.osl:
        raise InputError(
            f"workload.max_seq_len {max_seq_len} is below the workload's own requests "
            f"({plan.isl} + {plan.osl} tokens)",
            hint=f"set workload.max_seq_len to at least {plan.isl + plan.osl}, or remove it",
        )
    roles = tuple(
        replace(
            r,
            max_seq_len=max_seq_len,
            enable_chunked_prefill=_or(chunked.get(r.role), max_seq_len > r.max_num_tokens),
        )
        for r in plan.roles
    )
    return replace(plan, roles=roles)


def _choice(value: Any, choices: tuple[T, ...], what: str) -> T:
    if value not in choices:
        raise InputError(
            f"bad plan: {what} {value!r} is not one of {list(choices)}", hint="regenerate the plan"
        )
    return cast(T, value)


_PARALLEL_KEYS = tuple(f.name for f in fields(Parallelism))


@dataclass(frozen=True)
class RolePlan:
    """One worker type and the engine settings the generate stage renders for it."""

    role: Role
    parallelism: Parallelism
    workers: int  # workers of this role per replica (agg: 1)
    max_batch_size: int
    max_num_tokens: int
    max_seq_len: int
    enable_chunked_prefill: bool
    free_gpu_memory_fraction: float
    kv_cache_dtype: KvCacheDtype
    tokens_per_block: int

    @property
    def gpus_per_worker(self) -> int:
        return self.parallelism.gpus

    def to_dict(self) -> dict[str, Any]:
        """Flat: the parallelism's four widths sit next to the engine settings (the state file's shape)."""
        d = asdict(self)
        del d["parallelism"]
        return {"role": self.role, **asdict(self.parallelism), **{k: v for k, v in d.items() if k != "role"}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RolePlan:
        names = ({f.name for f in fields(cls)} - {"parallelism"}) | set(_PARALLEL_KEYS)
        unknown = set(d) - names
        missing = names - set(d)
        if unknown or missing:
            raise InputError(
                f"bad role plan: unknown {sorted(unknown)} missing {sorted(missing)}",
                hint="regenerate the plan",
            )
        rest = {k: v for k, v in d.items() if k not in _PARALLEL_KEYS}
        rest["role"] = _choice(rest["role"], ROLES, "role")
        rest["kv_cache_dtype"] = _choice(rest["kv_cache_dtype"], KV_CACHE_DTYPES, "kv_cache_dtype")
        return cls(parallelism=Parallelism(**{k: d[k] for k in _PARALLEL_KEYS}), **rest)


@dataclass(frozen=True)
class Plan:
    """A deployment: mode, model, system, roles, replicas and the workload it was planned for."""

    mode: Mode
    model: str
    system: str
    roles: tuple[RolePlan, ...]  # agg: (agg,), disagg: (prefill, decode)
    replicas: int
    isl: int
    osl: int
    # The calibration file (absolute path) whose per-system factors the predictions of this plan use;
    # empty: the shipped fit alone (perfmodel.calibration).
    calibration: str = ""

    @property
    def gpus_per_replica(self) -> int:
        return sum(r.gpus_per_worker * r.workers for r in self.roles)

    @property
    def total_gpus(self) -> int:
        """GPUs the plan uses (replicas × GPUs per replica)."""
        return self.gpus_per_replica * self.replicas

    def role(self, name: Role) -> RolePlan:
        for r in self.roles:
            if r.role == name:
                return r
        raise KeyError(f"plan has no role '{name}' (roles: {[r.role for r in self.roles]})")

    def layout(self) -> str:
        """One replica in a few characters: "tp4 bs16" (agg) or "1P(tp4 bs1) + 1D(tp4 bs32)" (disagg)."""

        def one(r: RolePlan) -> str:
            return f"{r.parallelism.short()} bs{r.max_batch_size}"

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
        if "mode" in d:
            d["mode"] = _choice(d["mode"], MODES, "mode")
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
