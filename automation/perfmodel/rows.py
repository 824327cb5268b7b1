"""Rows of aiconfigurator's silicon table (measured TRT-LLM runs) read as Plans and predicted, one per row."""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from automation.errors import InputError
from automation.perfmodel import queueing
from automation.perfmodel.arch import (
    FLAT_CONFIG_SUFFIX,
    FLAT_HF_QUANT_SUFFIX,
    MODELS_DIR,
    ModelArch,
    known_models,
    load_model,
)
from automation.perfmodel.plan import Plan, Prediction, Role, RolePlan
from automation.perfmodel.system import known_systems, load_system

OUT_COLUMNS = ("id", "ttft_ms", "tpot_ms", "error")

# Directories of flat `<org>--<name>_config.json` files (aiconfigurator's model_configs layout), separated
# by os.pathsep, searched after the packaged models; aiconfigurator has the same kind of switch
# (AICONFIGURATOR_MODEL_CONFIGS_PATH).
MODEL_CONFIGS_ENV = "AUTODEPLOY_MODEL_CONFIGS"

# The table's gemm_quant_mode / moe_quant_mode strings (aiconfigurator's GEMMQuantMode / MoEQuantMode names)
# mapped to ModelArch.gemm_quant. Anything else (int4_wo, w4a16_mxfp4, ...) the model cannot represent.
QUANT_MODES = {"bfloat16": "bf16", "bf16": "bf16", "fp8": "fp8", "fp8_block": "fp8_block", "nvfp4": "fp4"}

# The HF architectures the model's op list describes: GQA or MLA attention, SwiGLU FFN or routed experts.
# Sparse (DSA), linear/hybrid attention, Mamba and sliding-window models need ops it does not have.
SUPPORTED_ARCHITECTURES = frozenset(
    {
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "Qwen2MoeForCausalLM",
        "Qwen3MoeForCausalLM",
        "MixtralForCausalLM",
        "DeepseekV2ForCausalLM",
        "DeepseekV3ForCausalLM",
    }
)

# Hugging Face renamed the Llama 3.1 repositories (meta-llama/Meta-Llama-3.1-70B is now
# meta-llama/Llama-3.1-70B); the table uses the new names, the configs carry the old ones. The Instruct
# checkpoints are fine-tunes with the same config.json apart from token ids.
MODEL_ALIASES = {
    "meta-llama/llama-3.1-8b": "meta-llama/Meta-Llama-3.1-8B",
    "meta-llama/llama-3.1-8b-instruct": "meta-llama/Meta-Llama-3.1-8B",
    "meta-llama/llama-3.1-70b": "meta-llama/Meta-Llama-3.1-70B",
    "meta-llama/llama-3.1-70b-instruct": "meta-llama/Meta-Llama-3.1-70B",
    "meta-llama/llama-3.1-405b": "meta-llama/Meta-Llama-3.1-405B",
    # NVIDIA's ModelOpt NVFP4 releases quantize a checkpoint and keep its architecture (config.json is the
    # base model's plus quantization_config); the rows state the nvfp4 quantization in their own columns.
    "nvidia/deepseek-r1-nvfp4": "deepseek-ai/DeepSeek-R1",
    "nvidia/qwen3-32b-nvfp4": "Qwen/Qwen3-32B",
}

_CONCURRENCY = re.compile(r"silicon_concurrency=(\d+)")

# How a row was measured (queueing.Method), read from what its silicon_data_source says it is.
#
# InferenceX records (SemiAnalysisAI/InferenceX) come in two forms: aiconfigurator's InferenceX DB dumps,
# "db-dump/DATE; config_id=N; ...; workflow_run_id=N; IMAGE" (the record ids its adapter reads,
# src/aiconfigurator/sdk/config_adapter/inferencex.py, ai-dynamo/aiconfigurator @8f4e06d, and row ids
# named by its MODEL_PATHS aliases: dsr1_, kimik2_5_), and InferenceX's CSV exports,
# "source_file=YYYY-MM-DD.csv; model=NAME; ...". InferenceX measures every point with vLLM's
# benchmark_serving.py: `--dataset-name random --random-range-ratio 0.8 --num-prompts 10·CONC
# --max-concurrency CONC --request-rate inf --ignore-eos`:
#   - single node: benchmarks/70b_fp8_h200_trt_slurm.sh and the other *_trt_slurm.sh @ac1998a (2025-10-20;
#     trtllm-serve over HTTP, RANDOM_RANGE_RATIO 0.8 from .github/workflows/full-sweep-tmpl.yml), later
#     benchmarks/benchmark_lib.sh run_benchmark_serving @2e9cecf (2026-04-19) with
#     RANDOM_RANGE_RATIO: 0.8 in .github/workflows/benchmark-tmpl.yml and `--num-warmups 2·CONC`
#     (added @d053ae2, 2026-01-21; none before);
#   - multi node (the Dynamo disagg records): srt-slurm's sa-bench (runners/launch_gb200-nv.sh @e8924a6
#     clones NVIDIA/srt-slurm; src/srtctl/benchmarks/scripts/sa-bench/bench.sh: RANDOM_RANGE_RATIO 0.8,
#     NUM_PROMPTS_MULT 10, a separate warm-up run of 2·CONC prompts).
# The sampler draws each prompt and output length uniformly from [int(L·0.8), L] (`sample_uniform` in
# utils/bench_serving/benchmark_serving.py @1cb92d2, and sa-bench's benchmark_serving.py). Every warm-up
# (none, 2·CONC through the same semaphore, or a separate run) ends before the measured requests start,
# which then go out as one burst of CONC from an idle server: the "burst" warm-up, whatever its length.
# Rows from any other source (aiconfigurator's own collection, "source_file=/…/aic-auto-gap-analysis/…")
# state no method and keep the default.
INFERENCEX_METHOD = queueing.Method(requests_per_concurrency=10, warmup="burst", range_ratio=0.8)
_INFERENCEX_SOURCE = re.compile(
    r"^(db-dump/[^;]*;.*\bconfig_id=\d+.*\bworkflow_run_id=\d+|source_file=\d{4}-\d{2}-\d{2}\.csv;\s*model=)"
)
# Layout named in an id such as "..._c64_tp8_ep8_937" or "..._c256_tp8_0_ep8_0_974".
_ID_LAYOUT = re.compile(r"_tp(\d+)(?:_0)?_ep(\d+)(?:_0)?_\d+$")
ROLE_KINDS: tuple[Role, Role] = ("prefill", "decode")


class RowError(Exception):
    """Why a row gets no prediction: `kind` is a short category, the message one line."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class RowPlan:
    """The deployment a row describes, the concurrency it ran at, and how its layout was read."""

    plan: Plan
    concurrency: int
    note: str = ""  # non-empty when a rule changed what the columns say (see _agg_layout)
    checkpoint: str = ""  # the id (or directory) the model's config was found under, aliases applied
    method: queueing.Method = queueing.DEFAULT_METHOD  # how the row was measured (method_of)


@dataclass(frozen=True)
class RowResult:
    """One row's prediction (ttft_ms, tpot_ms) or the reason it has none (error, kind).

    `prediction` is kept for rows that do not fit too (what the model would say if they did), so a
    fidelity report can look at them; `kv_limit` is how many requests of isl + osl tokens the KV cache of
    one attention rank of the batch-holding role (agg or decode) holds, `batch_per_rank` what the row runs.
    """

    id: str
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    error: str = ""
    kind: str = ""
    row_plan: RowPlan | None = None
    prediction: Prediction | None = None
    kv_limit: int | None = None
    batch_per_rank: float | None = None


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a silicon-table CSV (aiconfigurator's columns; missing columns read as empty)."""
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "id" not in reader.fieldnames:
                raise InputError(
                    f"{path} has no 'id' column", hint="pass a CSV with the silicon-table columns"
                )
            return [{k: (v or "").strip() for k, v in r.items() if k is not None} for r in reader]
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}", hint="check the --rows path") from None


def concurrency_of(row: dict[str, str]) -> int | None:
    """The concurrency the row was measured at: `silicon_concurrency=N` inside silicon_data_source."""
    m = _CONCURRENCY.search(row.get("silicon_data_source", ""))
    return int(m.group(1)) if m else None


def method_of(row: dict[str, str]) -> queueing.Method:
    """The benchmark method a row was measured with, from its silicon_data_source (INFERENCEX_METHOD for
    InferenceX records, else the default: no evidence, no change)."""
    if _INFERENCEX_SOURCE.match(row.get("silicon_data_source", "")):
        return INFERENCEX_METHOD
    return queueing.DEFAULT_METHOD


def env_model_dirs() -> list[Path]:
    """Directories named by AUTODEPLOY_MODEL_CONFIGS (empty when unset)."""
    raw = os.environ.get(MODEL_CONFIGS_ENV, "")
    return [Path(p) for p in raw.split(os.pathsep) if p.strip()]


def _int(row: dict[str, str], key: str) -> int | None:
    text = row.get(key, "")
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise RowError("layout invalid", f"{key} {text!r} is not a number") from None
    if value != int(value):
        raise RowError("layout invalid", f"{key} {text!r} is not an integer")
    return int(value)


def _positive(row: dict[str, str], key: str, default: int | None = None) -> int:
    value = _int(row, key)
    value = default if value is None else value
    if value is None or value <= 0:
        raise RowError("layout invalid", f"{key} {row.get(key, '')!r} is not positive")
    return value


def _quant(row: dict[str, str], key: str) -> str:
    """The row's quantization as a ModelArch.gemm_quant ("" when blank: the checkpoint's own)."""
    text = row.get(key, "").lower()
    if text == "":
        return ""
    if text not in QUANT_MODES:
        raise RowError("unsupported quantization", f"{key} {text} is not one the model knows")
    return QUANT_MODES[text]


@dataclass(frozen=True)
class _Source:
    """A checkpoint's config.json (and hf_quant_config.json) and the id it was found under."""

    name: str
    config: dict[str, Any]
    hf_quant: dict[str, Any] | None
    load: str  # what load_model reads it under: the packaged id, a directory or a flat config file


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RowError("unknown model", f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise RowError("unknown model", f"{path} is not a JSON object")
    return data


def _architecture(cfg: dict[str, Any]) -> str:
    """The decoder's HF architecture: a multimodal wrapper's text_config names the language model."""
    text = cfg.get("text_config")
    for c in (text, cfg) if isinstance(text, dict) else (cfg,):
        names = c.get("architectures") or []
        if names:
            return str(names[0])
    return ""


class RowPredictor:
    """Reads rows into Plans and predicts them; usable as a context manager (it holds no resources).

    A row's quantization (gemm_quant_mode / moe_quant_mode) overrides the checkpoint's through
    ModelArch.with_quant: the Plan names the model `<checkpoint>@<quant>` (arch.QUANT_SEP), which
    load_model resolves on its own, so a row's Plan stays a self-contained value that can be predicted
    again after the predictor is gone (perfmodel.calibration does). A checkpoint found in a flat
    model_configs directory is named by its config file's path.
    """

    def __init__(self, model_dirs: Sequence[Path] = (), calibration: str = "") -> None:
        self.model_dirs = [Path(d) for d in model_dirs]
        # The calibration every row's Plan carries (perfmodel.calibration; "" for the shipped fit).
        self.calibration = calibration
        self._sources: dict[str, _Source | RowError] = {}

    def __enter__(self) -> RowPredictor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    # -- models ---------------------------------------------------------------------------------------

    def _find(self, model_path: str) -> _Source:
        cached = self._sources.get(model_path)
        if cached is None:
            try:
                cached = self._find_uncached(model_path)
            except RowError as exc:
                cached = exc
            self._sources[model_path] = cached
        if isinstance(cached, RowError):
            raise cached
        return cached

    def _find_uncached(self, model_path: str) -> _Source:
        path = Path(model_path).expanduser()
        if path.is_dir():
            cfg_path = path / "config.json"
            if not cfg_path.is_file():
                raise RowError("unknown model", f"model directory {model_path} has no config.json")
            hq = path / "hf_quant_config.json"
            return _Source(
                str(path), _read_json(cfg_path), _read_json(hq) if hq.is_file() else None, str(path)
            )
        hf_id = MODEL_ALIASES.get(model_path.lower(), model_path)
        packaged = {m.lower(): m for m in known_models()}.get(hf_id.lower())
        if packaged is not None:
            data = _read_json(MODELS_DIR / f"{packaged.replace('/', '--')}.json")
            return _Source(packaged, dict(data["config"]), data.get("hf_quant_config"), packaged)
        stem = hf_id.replace("/", "--")
        for d in self.model_dirs:
            cfg_path = d / f"{stem}{FLAT_CONFIG_SUFFIX}"
            if cfg_path.is_file():
                hq = d / f"{stem}{FLAT_HF_QUANT_SUFFIX}"
                return _Source(
                    hf_id,
                    _read_json(cfg_path),
                    _read_json(hq) if hq.is_file() else None,
                    str(cfg_path.resolve()),
                )
        raise RowError("unknown model", f"model not known: {model_path}")

    def checkpoint(self, model_path: str) -> str:
        """The id (or directory) a row's model_path resolves to; RowError when it is not known."""
        return self._find(model_path).name

    def _model(self, model_path: str, gemm: str, moe: str) -> tuple[str, ModelArch]:
        """The model name (as load_model reads it) and architecture of a checkpoint at the row's
        quantization ("" = the checkpoint's own)."""
        src = self._find(model_path)
        arch_name = _architecture(src.config)
        if arch_name not in SUPPORTED_ARCHITECTURES:
            raise RowError(
                "unsupported architecture", f"unsupported architecture {arch_name or '?'} ({src.name})"
            )
        try:
            arch = load_model(src.load).with_quant(gemm, moe)
        except ValueError as exc:
            raise RowError("unsupported quantization", str(exc)) from None
        except InputError as exc:
            raise RowError("unknown model", exc.message) from None
        return arch.name, arch

    # -- layout ---------------------------------------------------------------------------------------

    def plan(self, row: dict[str, str]) -> RowPlan:
        """The Plan a row describes at its concurrency; RowError (with a one-line reason) when it cannot.

        Checks run in this order, and the first that fails names the row's reason: the layout columns
        are there, the concurrency is, the model and its quantization are known, the layout is consistent
        (system-independent), the system is known, the layout fits the system's nodes.
        """
        from automation.perfmodel.evaluate import make_role

        mode = row.get("mode", "")
        if mode not in ("agg", "disagg"):
            raise RowError("unsupported mode", f"mode {mode!r} is neither agg nor disagg")
        isl, osl = _int(row, "isl"), _int(row, "osl")
        if not isl or not osl or isl <= 0 or osl <= 0:
            raise RowError("missing layout", "isl/osl missing or not positive")
        prefixes = ("",) if mode == "agg" else ("prefill_", "decode_")
        need = ("batch_size", "tp_size", "pp_size") + (() if mode == "agg" else ("num_workers",))
        missing = [p + k for p in prefixes for k in need if row.get(p + k, "") == ""]
        if missing:
            if mode == "disagg" and any("batch_size" in m or "num_workers" in m for m in missing):
                raise RowError(
                    "missing layout",
                    f"disagg row without worker counts or batch sizes ({', '.join(missing)})",
                )
            raise RowError("missing layout", f"missing {', '.join(missing)}")
        conc = concurrency_of(row)
        if conc is None or conc <= 0:
            raise RowError("no concurrency", "no silicon_concurrency in silicon_data_source")
        gemm, moe = (_quant(row, k) for k in ("gemm_quant_mode", "moe_quant_mode"))
        name, arch = self._model(row.get("model_path", ""), gemm, moe)
        layouts = [_widths(row, p, arch) for p in prefixes]
        counts = [(_positive(row, p + "batch_size"), _positive(row, p + "num_workers", 1)) for p in prefixes]
        batch, workers = counts[-1]
        dp = layouts[-1][2]
        if mode == "agg" and layouts[0][1] > 1:
            raise RowError(
                "unsupported layout", "agg pp_size > 1: the batch per pipeline stage is not stated"
            )
        if batch * workers * dp != conc:
            # batch_size is per attention-DP rank of one worker, concurrency counts the whole deployment;
            # agg rows state no worker count (cli_estimate has none), so they must describe one worker.
            what = "decode batch_size" if mode == "disagg" else "batch_size"
            raise RowError(
                "layout ambiguous",
                f"{what} {batch} × workers {workers} × attention_dp {dp} = {batch * workers * dp} "
                f"≠ concurrency {conc}",
            )
        system = row.get("system", "").lower()
        if system not in known_systems():
            raise RowError("unknown system", f"unknown system {row.get('system', '')}")
        if self.calibration:
            from automation.perfmodel.calibration import factors

            try:
                factors(self.calibration, system)
            except InputError as exc:
                raise RowError("not calibrated", exc.message) from None
        if mode == "agg":
            spec = load_system(system)
            widths, batch, note = _agg_layout(row, layouts[0], conc, spec.gpus_per_node, spec.domain_gpus)
            tp, pp, dp, ep = widths
            role = make_role(arch, "agg", tp, batch, isl, osl, pp, ep, dp, 1)
            plan = Plan("agg", name, system, (role,), 1, isl, osl, self.calibration)
            return RowPlan(plan, conc, note, self.checkpoint(row.get("model_path", "")), method_of(row))
        roles: list[RolePlan] = []
        for kind, (tp, pp, dp, ep), (b, w) in zip(ROLE_KINDS, layouts, counts, strict=True):
            roles.append(make_role(arch, kind, tp, b, isl, osl, pp, ep, dp, w))
        plan = Plan("disagg", name, system, tuple(roles), 1, isl, osl, self.calibration)
        return RowPlan(plan, conc, "", self.checkpoint(row.get("model_path", "")), method_of(row))

    # -- prediction -----------------------------------------------------------------------------------

    def predict(self, row: dict[str, str]) -> RowResult:
        """One row's prediction at its concurrency, measured as the row says (RowPlan.method), or the reason
        it has none."""
        from automation.perfmodel.evaluate import (
            kv_capacity_tokens,
            predict_at_concurrency,
            role_memory,
        )

        rid = row.get("id", "")
        try:
            rp = self.plan(row)
        except RowError as exc:
            return RowResult(rid, error=exc.message, kind=exc.kind)
        plan = rp.plan
        try:
            pred = predict_at_concurrency(plan, rp.concurrency, rp.method)
        except InputError as exc:
            return RowResult(rid, error=exc.message, kind="layout invalid", row_plan=rp)
        arch, sysc = load_model(plan.model), load_system(plan.system, plan.calibration)
        held = plan.role("agg" if plan.mode == "agg" else "decode")
        ranks = (
            held.workers * held.parallelism.attention_dp * (held.parallelism.pp if plan.mode == "agg" else 1)
        )
        batch = min(max(rp.concurrency / ranks, 1.0), float(held.max_batch_size))
        kv_limit = kv_capacity_tokens(arch, sysc, held) // (plan.isl + plan.osl)
        result = RowResult(
            rid,
            row_plan=rp,
            prediction=pred,
            kv_limit=kv_limit,
            batch_per_rank=batch,
        )
        if pred.fits:
            return replace(result, ttft_ms=pred.ttft_ms, tpot_ms=pred.tpot_ms)
        for r in plan.roles:
            mem = role_memory(arch, sysc, r, plan.isl + plan.osl, batch if r is held else None)
            if float(mem["non_kv"]) >= sysc.hbm_bytes:
                why = (
                    f"does not fit: {r.role} weights and activations need {float(mem['non_kv']) / 2**30:.0f} "
                    f"GiB of {sysc.hbm_gib:g} GiB per GPU ({r.parallelism.short()})"
                )
                return replace(result, error=why, kind="does not fit")
        why = (
            f"does not fit: the KV cache holds {kv_limit} requests of {plan.isl + plan.osl} tokens per rank, "
            f"the row runs {batch:g}"
        )
        return replace(result, error=why, kind="kv cache full")


def _widths(row: dict[str, str], prefix: str, arch: ModelArch) -> tuple[int, int, int, int]:
    """(tp, pp, attention_dp, moe_ep) of one worker, checked as aiconfigurator checks them.

    A blank attention_dp_size is 1 (cli_estimate's default; aiconfigurator's own validation passes only
    the non-empty columns). tp·attention_dp is the worker's GPUs per pipeline stage and must equal
    moe_tp·moe_ep (ModelConfig.resolve_moe_parallelism); one blank MoE width follows from the other. A
    dense model ignores the MoE columns (the table writes 0 or 1 there) and has no attention DP here.
    """
    tp, pp = _int(row, prefix + "tp_size"), _int(row, prefix + "pp_size")
    dp, mtp, mep = (_int(row, prefix + k) for k in ("attention_dp_size", "moe_tp_size", "moe_ep_size"))
    dp = 1 if dp is None else dp
    if dp == 0 and not arch.is_moe:
        # The exporter writes 0 for "off" in the parallel columns a layout does not use (a dense model's
        # moe_tp/moe_ep, and attention DP next to them: ids such as ..._tp2_epnone_...); a dense model
        # runs no attention DP.
        dp = 1
    for key, value in (("tp_size", tp), ("pp_size", pp), ("attention_dp_size", dp)):
        if value is None or value <= 0:
            raise RowError("layout invalid", f"{prefix}{key} {value} is not a positive width")
    assert tp is not None and pp is not None
    if arch.num_heads % tp:
        raise RowError(
            "layout invalid", f"{prefix}tp_size {tp} does not divide {arch.num_heads} attention heads"
        )
    if not arch.is_moe:
        if dp != 1:
            raise RowError("unsupported layout", f"{prefix}attention_dp_size {dp} on a dense model")
        return tp, pp, 1, 1
    width = tp * dp
    if mtp is None and mep is None:
        raise RowError("missing layout", f"missing {prefix}moe_tp_size and {prefix}moe_ep_size")
    if mep is None:
        mep = width // mtp if mtp and width % mtp == 0 else 0
    if mtp is None:
        mtp = width // mep if mep and width % mep == 0 else 0
    if mtp <= 0 or mep <= 0 or mtp * mep != width:
        raise RowError(
            "layout invalid",
            f"{prefix}tp {tp} × attention_dp {dp} = {width} GPUs but moe_tp {mtp} × moe_ep {mep} = {mtp * mep}",
        )
    if arch.num_experts % mep:
        raise RowError(
            "layout invalid", f"{prefix}moe_ep_size {mep} does not divide {arch.num_experts} experts"
        )
    return tp, pp, dp, mep


def _agg_layout(
    row: dict[str, str],
    widths: tuple[int, int, int, int],
    conc: int,
    gpus_per_node: int,
    domain_gpus: int = 0,
) -> tuple[tuple[int, int, int, int], int, str]:
    """An agg row's (tp, pp, dp, ep), batch per attention rank, and a note when a rule rewrote the columns.

    A worker may span one NVLink domain (SystemSpec.domain_gpus: a node, or a GB200/GB300 NVL72 rack of
    72 GPUs over 4-GPU trays, where TRT-LLM runs TP/EP over NVLink across trays); up to that width the
    columns are read as they stand.

    Some exports multiplied TP by EP into the GPU count (a tp8 ep8 run became 64 GPUs: attention_dp 64 or
    tp 64, moe_tp 8 × moe_ep 8, batch concurrency/64). aiconfigurator's InferenceX adapter shows how: it
    derives a worker's GPUs from the record's GPU count, then attention DP = GPUs and moe_tp = GPUs / ep
    (src/aiconfigurator/sdk/config_adapter/inferencex.py, `_worker`, ai-dynamo/aiconfigurator main
    @095f58a); fed tp × ep GPUs it writes exactly these columns, and moe_tp is then the run's TP. A worker
    wider than the domain whose id names tpT_epE with T·E = its width, or (no layout in the id) whose
    moe_tp T × moe_ep E = its width, is read as T GPUs (attention DP over them where the columns had
    attention DP), moe_ep E, batch concurrency / attention ranks. Wider than the domain otherwise:
    ambiguous.
    """
    tp, pp, dp, ep = widths
    batch = conc // dp
    width = tp * dp * pp
    limit = max(domain_gpus, gpus_per_node)
    if width <= limit:
        return (tp, pp, dp, ep), batch, ""
    where = f"agg worker of {width} GPUs on {gpus_per_node}-GPU nodes" + (
        f" ({limit}-GPU NVLink domain)" if limit > gpus_per_node else ""
    )
    m = _ID_LAYOUT.search(row.get("id", ""))
    if m is not None:
        t, e, named = int(m.group(1)), int(m.group(2)), "the id's"
    else:
        mtp, mep = _int(row, "moe_tp_size"), _int(row, "moe_ep_size")
        if not mtp or not mep or mtp * mep != width or pp != 1:
            raise RowError("layout ambiguous", f"{where} and no layout in the id (TP×EP-inflated?)")
        t, e, named = mtp, mep, "moe_tp × moe_ep"
    if t * e != width or t > limit or t % e:
        raise RowError("layout ambiguous", f"{where}; the id's tp{t} ep{e} does not explain it")
    new_dp = t if dp > 1 else 1
    if conc % new_dp:
        raise RowError("layout ambiguous", f"concurrency {conc} does not split over {new_dp} attention ranks")
    note = f"tp{tp} dp{dp} ({width} GPUs) read as {named} tp{t} ep{e}"
    return (t // new_dp, 1, new_dp, e), conc // new_dp, note


@contextmanager
def predictor(model_dirs: Sequence[Path] | None = None, calibration: str = "") -> Iterator[RowPredictor]:
    """A RowPredictor over the packaged models, `model_dirs` (default: AUTODEPLOY_MODEL_CONFIGS), predicting
    under `calibration` (a calibration file; "" for the shipped fit)."""
    with RowPredictor(env_model_dirs() if model_dirs is None else model_dirs, calibration) as p:
        yield p


def predict_rows(
    rows: Iterable[dict[str, str]], model_dirs: Sequence[Path] | None = None, calibration: str = ""
) -> list[RowResult]:
    """One RowResult per row, in order."""
    with predictor(model_dirs, calibration) as p:
        return [p.predict(r) for r in rows]


def write_predictions(results: Iterable[RowResult], path: Path) -> None:
    """`id,ttft_ms,tpot_ms,error`: numbers for predicted rows, the one-line reason for the others."""
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(OUT_COLUMNS)
        for r in results:
            if r.error:
                w.writerow([r.id, "", "", r.error])
            else:
                w.writerow([r.id, f"{r.ttft_ms:.4f}", f"{r.tpot_ms:.4f}", ""])
