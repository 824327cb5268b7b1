"""A run's measured levels as rows of aiconfigurator's measured-silicon table (one row per concurrency).

The columns are those of aiconfigurator's trtllm measured-calibration table, in its order (COLUMNS).
What each holds, and where it comes from in the run:

- id: <run uid>_<system>_trtllm_<precision>_<mode>_<isl>x<osl>_c<N> (unique per row, like the table's).
- silicon_data_source: "; "-separated key=value facts: source=autodeploy, run, run_uid,
  silicon_concurrency=N (the level), measured (when the benchmark finished), requests (measured
  requests of the level), deployment (the benchmark's deployment id), image, dynamo_version, engine.
- backend, backend_version: trtllm, and the TRT-LLM version the build stage found in the image (else
  the pipeline's backend.version).
- model_path, system: the pipeline's model.hf_id and system (pipeline.resolved.yaml; else the plan's).
- precision, gemm_quant_mode, moe_quant_mode: from the model's facts as the configure stage read them
  (model.config_dir, else the packaged facts of model.hf_id), by its quantization:
  bf16 → bf16/bfloat16, fp8 → fp8/fp8, fp8_block → fp8/fp8_block, fp4 → fp4/nvfp4; moe_quant_mode
  repeats gemm_quant_mode (the table does so for dense models too).
- mode, isl, osl: the plan's mode; the level file's ISL/OSL.
- agg rows: batch_size = requests in flight per attention rank = ceil(N / (replicas · attention_dp)),
  tp_size, pp_size, attention_dp_size, moe_tp_size (tp·attention_dp/ep), moe_ep_size of the agg role.
- disagg rows: prefill_batch_size (the prefill engine's max_batch_size), prefill_num_workers
  (replicas · prefill workers), the prefill role's widths; decode_batch_size = ceil(N / (decode workers
  · replicas · attention_dp)), decode_num_workers, the decode role's widths.
  Columns of the other mode stay empty, as in the table.
- silicon_ttft_ms, silicon_tpot_ms: the level's mean TTFT and mean ITL (TPOT) over its measured requests.

A column the run does not know (say, the quantization of a model whose facts are not packaged) is
left empty and named in the export's notes.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from automation.errors import InputError

FORMAT = "aiconfigurator-silicon"
DEFAULT_FILE = "report/silicon_rows.csv"

COLUMNS = (
    "id",
    "silicon_data_source",
    "backend",
    "backend_version",
    "model_path",
    "system",
    "precision",
    "mode",
    "isl",
    "osl",
    "gemm_quant_mode",
    "moe_quant_mode",
    "batch_size",
    "tp_size",
    "pp_size",
    "attention_dp_size",
    "moe_tp_size",
    "moe_ep_size",
    "prefill_batch_size",
    "prefill_num_workers",
    "prefill_tp_size",
    "prefill_pp_size",
    "prefill_attention_dp_size",
    "prefill_moe_tp_size",
    "prefill_moe_ep_size",
    "decode_batch_size",
    "decode_num_workers",
    "decode_tp_size",
    "decode_pp_size",
    "decode_attention_dp_size",
    "decode_moe_tp_size",
    "decode_moe_ep_size",
    "silicon_ttft_ms",
    "silicon_tpot_ms",
)

AGG_COLUMNS = ("batch_size", "tp_size", "pp_size", "attention_dp_size", "moe_tp_size", "moe_ep_size")
ROLE_COLUMNS = (
    "batch_size",
    "num_workers",
    "tp_size",
    "pp_size",
    "attention_dp_size",
    "moe_tp_size",
    "moe_ep_size",
)
DISAGG_COLUMNS = tuple(f"{role}_{c}" for role in ("prefill", "decode") for c in ROLE_COLUMNS)

# The model facts' quantization → (precision, the table's quant mode name).
QUANT = {
    "bf16": ("bf16", "bfloat16"),
    "fp8": ("fp8", "fp8"),
    "fp8_block": ("fp8", "fp8_block"),
    "fp4": ("fp4", "nvfp4"),
}


@dataclass(frozen=True)
class Export:
    path: Path
    rows: list[dict[str, str]]
    unknown: list[str]  # columns left empty because the run does not know them
    notes: list[str] = field(default_factory=list)  # one line each, for stderr


def silicon_rows(run_dir: Path) -> tuple[list[dict[str, str]], list[str], list[str]]:
    """The rows (every value a string, "" when unknown), the columns left unknown, and notes.

    Raises:
        InputError: not a run directory with measured levels, or no deployed plan recorded.
    """
    from automation.baseline import load_run
    from automation.contracts import (
        BenchmarkOutputs,
        BuildOutputs,
        ConfigureOutputs,
        GenerateOutputs,
        recorded,
    )

    run = load_run(run_dir)
    state = run.state
    notes = list(run.skipped)

    def outputs(kind: Any) -> Any:
        record = state.stages.get(kind.stage)
        return recorded(kind, record.outputs) if record is not None else None

    configure = outputs(ConfigureOutputs)
    if configure is None:
        raise InputError(
            f"{run_dir}: no deployed plan recorded (the configure stage has not finished)",
            hint=f"run it first: autodeploy run {state.pipeline_file} --to configure",
        )
    plan = configure.plan
    build, generate, benchmark = outputs(BuildOutputs), outputs(GenerateOutputs), outputs(BenchmarkOutputs)
    config = _resolved_config(run_dir, notes)

    model = _get(config, "model", "hf_id") or plan.model
    system = _get(config, "system") or plan.system
    version = (build.versions.get("trtllm") if build else None) or _get(config, "backend", "version")
    engine = _get(config, "launch", "engine") or (generate.engine if generate else "")
    # What the configure stage planned with: model.config_dir when given, else the HF id.
    quantization = _quantization(_get(config, "model", "config_dir"), model, plan.model)
    precision, quant = QUANT.get(quantization or "", ("", ""))
    if engine == "mocker":
        notes.append(
            f"{run_dir} was served by Dynamo's mocker, not by TensorRT-LLM on GPUs: these rows are "
            "simulated timings (silicon_data_source says engine=mocker)"
        )

    bench_record = state.stages.get("benchmark")
    facts = {
        "source": "autodeploy",
        "run": state.run_id,
        "run_uid": state.run_uid,
        "measured": bench_record.finished_at if bench_record is not None else None,
        "deployment": benchmark.deployment if benchmark else None,
        "image": (build.image if build else None) or _get(config, "dynamo", "image"),
        "dynamo_version": (build.versions.get("dynamo") if build else None)
        or _get(config, "dynamo", "version"),
        "engine": engine,
    }
    slug = re.sub(r"[^a-z0-9]+", "_", (state.run_uid or state.run_id).lower()).strip("_")
    rows = []
    for c, level in run.levels.items():
        isl = level.isl or _get(config, "workload", "isl") or plan.isl
        osl = level.osl or _get(config, "workload", "osl") or plan.osl
        source = [
            f"source={facts['source']}",
            f"run={facts['run']}",
            f"run_uid={facts['run_uid']}",
            f"silicon_concurrency={c}",
            *(f"{k}={facts[k]}" for k in ("measured",) if facts[k]),
            f"requests={level.summary.get('requests')}",
            *(f"{k}={facts[k]}" for k in ("deployment", "image", "dynamo_version", "engine") if facts[k]),
        ]
        row: dict[str, Any] = dict.fromkeys(COLUMNS, "")
        row.update(
            id=f"{slug}_{system}_trtllm_{precision or 'na'}_{plan.mode}_{isl}x{osl}_c{c}",
            silicon_data_source="; ".join(source),
            backend="trtllm",
            backend_version=version or "",
            model_path=model,
            system=system,
            precision=precision,
            mode=plan.mode,
            isl=isl,
            osl=osl,
            gemm_quant_mode=quant,
            moe_quant_mode=quant,
            silicon_ttft_ms=_mean(level.summary, "time_to_first_token_ms"),
            silicon_tpot_ms=_mean(level.summary, "inter_token_latency_ms"),
        )
        row.update(_layout(plan, c))
        rows.append({k: "" if v is None else str(v) for k, v in row.items()})
    applicable = set(COLUMNS) - set(DISAGG_COLUMNS if plan.mode == "agg" else AGG_COLUMNS)
    unknown = [c for c in COLUMNS if c in applicable and any(not row[c] for row in rows)]
    if unknown:
        notes.append(f"left empty (the run does not know them): {', '.join(unknown)}")
    return rows, unknown, notes


def export(run_dir: Path, out: Path | None = None) -> Export:
    """Write the rows as CSV with the table's header (default: RUN_DIR/report/silicon_rows.csv)."""
    from automation.state import write_atomic

    rows, unknown, notes = silicon_rows(run_dir)
    path = out or run_dir / DEFAULT_FILE
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS)  # csv's default \r\n line ends, as the table has
    writer.writeheader()
    writer.writerows(rows)
    try:
        write_atomic(path, text.getvalue())
    except OSError as exc:
        raise InputError(f"{path}: cannot write ({exc.strerror})", hint="pass another --out FILE") from None
    return Export(path=path, rows=rows, unknown=unknown, notes=notes)


def _layout(plan: Any, concurrency: int) -> dict[str, Any]:
    """The plan's per-role widths and the batch each engine sees at this concurrency."""

    def widths(role: Any, prefix: str) -> dict[str, Any]:
        p = role.parallelism
        return {
            f"{prefix}tp_size": p.tp,
            f"{prefix}pp_size": p.pp,
            f"{prefix}attention_dp_size": p.attention_dp,
            f"{prefix}moe_tp_size": p.moe_tp,
            f"{prefix}moe_ep_size": p.ep,
        }

    if plan.mode == "agg":
        agg = plan.role("agg")
        ranks = plan.replicas * agg.workers * agg.parallelism.attention_dp
        return {"batch_size": math.ceil(concurrency / ranks), **widths(agg, "")}
    prefill, decode = plan.role("prefill"), plan.role("decode")
    ranks = plan.replicas * decode.workers * decode.parallelism.attention_dp
    return {
        "prefill_batch_size": prefill.max_batch_size,
        "prefill_num_workers": plan.replicas * prefill.workers,
        **widths(prefill, "prefill_"),
        "decode_batch_size": math.ceil(concurrency / ranks),
        "decode_num_workers": plan.replicas * decode.workers,
        **widths(decode, "decode_"),
    }


def _quantization(*references: str | None) -> str | None:
    """The checkpoint's GEMM quantization from the first model reference the model facts know."""
    from automation.perfmodel.arch import load_model

    for name in references:
        if not name:
            continue
        try:
            return load_model(name).gemm_quant
        except InputError:
            continue
    return None


def _resolved_config(run_dir: Path, notes: list[str]) -> Mapping[str, Any]:
    """pipeline.resolved.yaml as plain data ({} when it is missing: the plan's facts are used)."""
    import yaml

    path = run_dir / "pipeline.resolved.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        notes.append(f"{path} unreadable ({type(exc).__name__}); model, system and versions from the plan")
        return {}
    return data if isinstance(data, Mapping) else {}


def _get(data: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)  # type: ignore[assignment]
    return data


def _mean(summary: Mapping[str, Any], key: str) -> float | None:
    stats = summary.get(key)
    value = stats.get("avg") if isinstance(stats, Mapping) else None
    return float(value) if isinstance(value, int | float) else None
