"""aiconfigurator's results as autodeploy plans: read its --save_dir output, pick as it picks, run it when installed.

What aiconfigurator (0.5 … 0.12; aiconfigurator_core 0.12 is AISimulate's engine) writes, per mode
(`agg/`, `disagg/` under its run folder; cli/report_and_save.py save_results):
  best_config_topn.csv  its ranked picks, best first (sdk/picking.py pick_default: the SLA-feasible configs,
                        best per parallel layout, by tokens/s/gpu_cluster), one row per topN/ folder;
  pareto.csv            the mode's Pareto frontier (tokens/s/user vs tokens/s/gpu_cluster);
  exp_config.yaml       the experiment (model, system, GPUs, ISL/OSL, SLA, backend version);
  top<N>/               the generated deployment of pick N (engine YAMLs, run_<i>.sh, k8s_deploy.yaml);
                        before 0.5 only the rank-1 deployment of each mode, under backend_configs/<mode>/
                        (and config.yaml for exp_config.yaml: the seed guide's layout).
Columns (aiconfigurator_core sdk/common.py ColumnsAgg / ColumnsDisagg): per replica `num_total_gpus`,
`concurrency`, `tokens/s/gpu`, `tokens/s/user`, `ttft`, `tpot` (ms), `bs`; layout `tp pp dp moe_tp moe_ep`;
disagg columns carry `(p)`/`(d)` prefixes and `(p)workers`/`(d)workers` per replica. The overall winner
is the mode whose rank-1 pick has the highest tokens/s/gpu_cluster (cli/main.py: `max(best_throughputs)`),
where tokens/s/gpu_cluster = tokens/s/gpu · ⌊G/g⌋ · g / G for a cluster of G GPUs and g per replica.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml

from automation.errors import InputError, StageError
from automation.perfmodel.plan import (
    MODES,
    EngineOverrides,
    KvCacheDtype,
    Mode,
    Parallelism,
    Plan,
    Role,
    role_plan,
)

# The files a mode's folder must hold for autodeploy to import it.
MODE_FILES = ("best_config_topn.csv",)
_ENGINE_FILES: dict[Role, tuple[str, ...]] = {
    "agg": ("agg_config.yaml", "agg.yaml", "extra_engine_args_agg.yaml"),
    "prefill": ("prefill_config.yaml", "prefill.yaml", "extra_engine_args_prefill.yaml"),
    "decode": ("decode_config.yaml", "decode.yaml", "extra_engine_args_decode.yaml"),
}


@dataclass(frozen=True)
class Pick:
    """One ranked configuration of aiconfigurator, with its own numbers."""

    mode: Mode
    rank: int  # 1 = its best in that mode
    row: Mapping[str, str]
    folder: Path | None  # its generated deployment: top<rank>/ or backend_configs/<mode>/; AISimulate's YAML

    def number(self, column: str, default: float | None = None) -> float:
        """A numeric column (its (p)/(d)-prefixed twin is not looked at: say which one)."""
        text = self.row.get(column, "")
        try:
            return float(text)
        except ValueError:
            if default is not None:
                return default
            raise InputError(
                f"aiconfigurator {self.mode} rank {self.rank}: column '{column}' is {text!r}, not a number",
                hint="was the CSV edited? regenerate it with aiconfigurator",
            ) from None

    @property
    def gpus_per_replica(self) -> int:
        return int(self.number("num_total_gpus"))

    def replicas(self, total_gpus: int) -> int:
        return max(total_gpus // self.gpus_per_replica, 1)

    def tokens_per_s_per_gpu_cluster(self, total_gpus: int) -> float:
        """aiconfigurator's ranking value (sdk/picking.py): idle GPUs of the cluster count against it."""
        if self.row.get("tokens/s/gpu_cluster"):
            return self.number("tokens/s/gpu_cluster")
        g = self.gpus_per_replica
        return self.number("tokens/s/gpu") * (total_gpus // g) * g / total_gpus

    def layout(self) -> str:
        """aiconfigurator's own words for the layout (its `parallel` columns, worker counts, batch sizes)."""
        if self.mode == "agg":
            return f"{self.row.get('parallel', '?')} bs{_int(self.row.get('bs'))}"
        return (
            f"{_int(self.row.get('(p)workers'))}P({self.row.get('(p)parallel', '?')} bs{_int(self.row.get('(p)bs'))}) + "
            f"{_int(self.row.get('(d)workers'))}D({self.row.get('(d)parallel', '?')} bs{_int(self.row.get('(d)bs'))})"
        )


@dataclass(frozen=True)
class Result:
    """One aiconfigurator run folder: its experiment and its ranked picks per mode."""

    directory: Path
    layout: str  # "topN" (0.3+), "backend_configs" (0.1-0.2), "aisimulate recommend"
    experiment: Mapping[str, Any]
    picks: Mapping[Mode, list[Pick]]
    pareto: Mapping[Mode, list[Mapping[str, str]]]
    stated_winner: Mode | None = None  # where the result file says which mode won (0.2, AISimulate)

    @property
    def total_gpus(self) -> int:
        for key in ("total_gpus", "num_gpus", "gpus"):
            value = _find(self.experiment, key)
            if isinstance(value, int | float) and value > 0:
                return int(value)
        # Not stated: the largest replica count × GPUs any pick implies is a lower bound; use the first pick.
        first = next(p for picks in self.picks.values() for p in picks)
        return first.gpus_per_replica

    @property
    def winner(self) -> Mode | None:
        """aiconfigurator's choice: what its result says, else (0.5+, which only prints it) the mode whose best
        pick has the highest tokens/s/gpu_cluster."""
        if self.stated_winner is not None:
            return self.stated_winner
        winner: Mode | None = None
        best = 0.0
        for mode, picks in self.picks.items():
            value = picks[0].tokens_per_s_per_gpu_cluster(self.total_gpus) if picks else -1.0
            if picks and (winner is None or value > best):  # a tie keeps the first (agg), as max() does
                winner, best = mode, value
        return winner

    def pick(self, mode: str = "auto", rank: int = 1) -> Pick:
        """The pick to deploy: `rank` of `mode` (auto: aiconfigurator's winner).

        Raises:
            InputError: that mode has no picks, or fewer than `rank`.
        """
        chosen = self.winner if mode == "auto" else cast(Mode, mode)
        if chosen is None or not self.picks.get(chosen):
            have = ", ".join(f"{m}: {len(p)}" for m, p in self.picks.items()) or "none"
            raise InputError(
                f"{self.directory}: aiconfigurator found no {mode if mode != 'auto' else ''} configuration "
                f"that meets its SLA (picks per mode: {have})".replace("no  ", "no "),
                hint="choose configure.mode among the modes it ranked, or rerun aiconfigurator with a looser SLA",
            )
        ranked = self.picks[chosen]
        if rank > len(ranked):
            raise InputError(
                f"configure.rank {rank}: aiconfigurator ranked only {len(ranked)} {chosen} configuration(s) in "
                f"{self.directory}",
                hint=f"set configure.rank between 1 and {len(ranked)}",
            )
        return ranked[rank - 1]


def load(directory: Path) -> Result:
    """Read an aiconfigurator result: the run folder (agg/ and/or disagg/ inside), or the --save_dir that
    holds exactly one run folder.

    Raises:
        InputError: no such folder, an unknown layout or a missing file: one line naming what was found
            and what was expected.
    """
    directory = directory.expanduser()
    if not directory.is_dir():
        raise InputError(
            f"configure.aiconfigurator_dir: {directory} is not a directory",
            hint="give aiconfigurator's --save_dir output (the folder with agg/ and disagg/)",
        )
    run = _run_folder(directory)
    if (run / "recommendation.json").is_file():
        return _load_recommendation(run)
    if any((run / f"{mode}_pareto.csv").is_file() for mode in MODES) and not any(
        (run / m).is_dir() for m in MODES
    ):
        return _load_pareto_only(run)
    experiment: dict[str, Any] = {}
    picks: dict[Mode, list[Pick]] = {}
    pareto: dict[Mode, list[Mapping[str, str]]] = {}
    for mode in MODES:
        folder = run / mode
        if not folder.is_dir():
            continue
        table = folder / "best_config_topn.csv"
        if not table.is_file():
            found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
            raise InputError(
                f"{folder}: found {found}; expected best_config_topn.csv (aiconfigurator ≥ 0.5 writes it)",
                hint="point configure.aiconfigurator_dir at an unmodified aiconfigurator result",
            )
        rows = _csv(table)
        picks[mode] = [
            Pick(mode, index + 1, row, _top_folder(run, mode, index + 1)) for index, row in enumerate(rows)
        ]
        if (folder / "pareto.csv").is_file():
            pareto[mode] = _csv(folder / "pareto.csv")
        for name in ("exp_config.yaml", "trtllm_exp_config.yaml", "config.yaml"):
            if (folder / name).is_file() and not experiment:
                experiment = yaml.safe_load((folder / name).read_text()) or {}
    if not picks:
        raise InputError(
            f"{run}: no agg/ or disagg/ folder with best_config_topn.csv",
            hint="point configure.aiconfigurator_dir at aiconfigurator's --save_dir output",
        )
    layout = "topN" if any(p.folder for ps in picks.values() for p in ps) else "tables only"
    return Result(directory=run, layout=layout, experiment=experiment, picks=picks, pareto=pareto)


def _load_pareto_only(run: Path) -> Result:
    """aiconfigurator 0.1-0.2 (the seed guide's layout): <mode>_pareto.csv, aiconfigurator_config.yaml,
    aiconfigurator_result.json (its chosen mode) and backend_configs/<mode>/ (the best config of each mode).

    Its best per mode is the frontier row within the TPOT limit with the highest tokens/s/gpu_cluster
    (the rule 0.3+ keeps in sdk/pareto_analysis.py; it reproduces the "Actual Best" 0.2.0 printed); the
    rest are ranked the same way, one per layout.
    """
    config_file = run / "aiconfigurator_config.yaml"
    experiment: dict[str, Any] = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    tpot = experiment.get("tpot")
    picks: dict[Mode, list[Pick]] = {}
    pareto: dict[Mode, list[Mapping[str, str]]] = {}
    for mode in MODES:
        table = run / f"{mode}_pareto.csv"
        if not table.is_file():
            continue
        rows = _csv(table)
        pareto[mode] = rows
        ranked = _ranked(rows, mode, float(tpot) if tpot is not None else None)
        picks[mode] = [Pick(mode, i + 1, row, _top_folder(run, mode, i + 1)) for i, row in enumerate(ranked)]
    all_rows = [row for rows in pareto.values() for row in rows]
    experiment = {**experiment, "total_gpus": _total_gpus_of(all_rows)}
    model = next((row.get("model") for row in all_rows if row.get("model")), None)
    if model:
        experiment.setdefault("model_path", model)
    stated = None
    result_file = run / "aiconfigurator_result.json"
    if result_file.is_file():
        chosen = json.loads(result_file.read_text()).get("chosen_system_type")
        stated = cast(Mode, chosen) if chosen in MODES else None
    return Result(run, "backend_configs", experiment, picks, pareto, stated)


def _ranked(rows: list[Mapping[str, str]], mode: Mode, tpot: float | None) -> list[Mapping[str, str]]:
    """Best first: within the TPOT limit (all rows when none is), one per layout, by tokens/s/gpu_cluster
    then tokens/s/user (aiconfigurator's _get_best_configs_under_constraint)."""
    within = [r for r in rows if tpot is None or float(r["tpot"]) <= tpot] or list(rows)
    key = "(d)parallel" if mode == "disagg" else "parallel"
    ordered = sorted(within, key=lambda r: (-float(r["tokens/s/gpu_cluster"]), -float(r["tokens/s/user"])))
    seen: set[str] = set()
    best = []
    for row in ordered:
        if row.get(key) not in seen:
            seen.add(str(row.get(key)))
            best.append(row)
    return best


def _total_gpus_of(rows: list[Mapping[str, str]]) -> int:
    """The cluster size the rows were ranked for, where the result does not say: the smallest G for which
    tokens/s/gpu_cluster = tokens/s/gpu · ⌊G/g⌋ · g / G holds on every row."""
    known = [
        (float(r["tokens/s/gpu"]), float(r["tokens/s/gpu_cluster"]), int(float(r["num_total_gpus"])))
        for r in rows
    ]
    widest = max((g for _, _, g in known), default=1)
    for total in range(widest, 4097):
        if all(
            math.isclose(per * (total // g) * g / total, cluster, rel_tol=1e-3) for per, cluster, g in known
        ):
            return total
    return widest


def _load_recommendation(run: Path) -> Result:
    """AISimulate's native `aisimulate recommend` output: recommendation.json (candidates, its top_n ranking
    across modes) and recommendations/<NNNN>.yaml (the engine config of the N-th of top_n). Each candidate
    becomes a row in aiconfigurator's column names; the ranking and the winner are AISimulate's own."""
    data = json.loads((run / "recommendation.json").read_text())
    try:
        order = list(data["views"]["top_n"])
        candidates = {c["candidate_id"]: c for c in data["candidates"]}
    except (KeyError, TypeError):
        raise InputError(
            f"{run / 'recommendation.json'}: found no views.top_n / candidates (schema "
            f"{data.get('schema_version', '?')}); expected AISimulate's recommendation schema 1.x",
            hint="point configure.aiconfigurator_dir at an unmodified `aisimulate recommend` output",
        ) from None
    picks: dict[Mode, list[Pick]] = {}
    experiment: dict[str, Any] = {}
    for position, candidate_id in enumerate(order, start=1):
        candidate = candidates[candidate_id]
        spec = run / "recommendations" / f"{position:04d}.yaml"
        engine = (yaml.safe_load(spec.read_text()) or {}).get("engine", {}) if spec.is_file() else {}
        row, mode = _recommendation_row(candidate, engine)
        picks.setdefault(mode, []).append(
            Pick(mode, len(picks.get(mode, [])) + 1, row, spec if spec.is_file() else None)
        )
        config = candidate.get("config", {})
        traffic = (candidate.get("prediction_config") or {}).get("traffic", {}).get("source", {})
        experiment = experiment or {
            "model_path": config.get("model_name"),
            "system_name": config.get("hardware_sku"),
            "total_gpus": config.get("gpu_budget"),
            "isl": traffic.get("input_tokens"),
            "osl": traffic.get("output_tokens"),
        }
    if not picks:
        raise InputError(
            f"{run / 'recommendation.json'}: AISimulate ranked no candidate",
            hint="rerun aisimulate recommend",
        )
    first = candidates[order[0]].get("config", {}).get("deployment_mode")
    stated = cast(Mode, first) if first in MODES else None
    return Result(run, "aisimulate recommend", experiment, picks, {}, stated)


def _recommendation_row(
    candidate: Mapping[str, Any], engine: Mapping[str, Any]
) -> tuple[dict[str, str], Mode]:
    """One AISimulate candidate in aiconfigurator's column names (per replica, as 0.12's CSVs)."""
    config, metrics = candidate.get("config", {}), candidate.get("metrics", {})
    mode: Mode = "disagg" if config.get("deployment_mode") == "disagg" else "agg"
    workers = engine.get("workers", {})
    used = float(candidate.get("used_gpus") or config.get("used_gpus") or 1)
    row: dict[str, str] = {
        "ttft": str(metrics.get("mean_ttft_ms", "")),
        "tpot": str(metrics.get("mean_tpot_ms", "")),
        "tokens/s/gpu": str(float(metrics.get("output_throughput_tok_s", 0.0)) / used),
        "tokens/s/user": str(metrics.get("mean_output_token_throughput_per_user", "")),
    }

    def role(prefix: str, name: str) -> tuple[int, int]:
        spec = workers.get(name) or {}
        par = spec.get("parallelism", {})
        tp, pp, dp = int(par.get("tensor", 1)), int(par.get("pipeline", 1)), int(par.get("attention_data", 1))
        ep = int(par.get("moe_expert", 1))
        row.update(
            {
                f"{prefix}tp": str(tp),
                f"{prefix}pp": str(pp),
                f"{prefix}dp": str(dp),
                f"{prefix}moe_ep": str(ep),
                f"{prefix}parallel": f"tp{tp}pp{pp}dp{dp}ep{ep}",
                f"{prefix}bs": str((spec.get("scheduler") or {}).get("max_sequences", 1)),
            }
        )
        return int(par.get("replicas", 1)), tp * pp * dp

    concurrency = float(config.get("concurrency") or 0)
    if mode == "agg":
        count, gpus = role("", "aggregated")
        row.update(num_total_gpus=str(gpus), concurrency=str(concurrency / max(count, 1)))
    else:
        p_count, p_gpus = role("(p)", "prefill")
        d_count, d_gpus = role("(d)", "decode")
        row.update(
            {
                "(p)workers": str(p_count),
                "(d)workers": str(d_count),
                "num_total_gpus": str(p_count * p_gpus + d_count * d_gpus),
                "concurrency": str(concurrency),
            }
        )
    return row, mode


def to_plan(
    pick: Pick, result: Result, model: str, system: str, isl: int, osl: int, kv_cache_dtype: str
) -> Plan:
    """autodeploy's Plan of one pick over the whole cluster: its layout, worker counts and batch sizes, the
    engine settings its generated engine YAMLs hold (else autodeploy's defaults), and as many replicas as
    the cluster holds."""
    dtype: KvCacheDtype = "fp8" if kv_cache_dtype == "fp8" else "auto"

    def role(name: Role, prefix: str, workers: int) -> Any:
        parallelism = Parallelism(
            tp=int(pick.number(f"{prefix}tp", 1)),
            pp=int(pick.number(f"{prefix}pp", 1)),
            ep=int(pick.number(f"{prefix}moe_ep", 1)),
            attention_dp=int(pick.number(f"{prefix}dp", 1)),
        )
        batch = int(pick.number(f"{prefix}bs"))
        return role_plan(name, parallelism, workers, batch, isl, osl, dtype, _engine_overrides(pick, name))

    roles: tuple[Any, ...]
    if pick.mode == "agg":
        roles = (role("agg", "", 1),)
    else:
        roles = (
            role("prefill", "(p)", int(pick.number("(p)workers"))),
            role("decode", "(d)", int(pick.number("(d)workers"))),
        )
    return Plan(
        mode=pick.mode,
        model=model,
        system=system,
        roles=roles,
        replicas=pick.replicas(result.total_gpus),
        isl=isl,
        osl=osl,
    )


def own_numbers(pick: Pick, result: Result) -> dict[str, Any]:
    """aiconfigurator's prediction of a pick, in autodeploy's names (cluster-wide where autodeploy's are)."""
    replicas = pick.replicas(result.total_gpus)
    return {
        "ttft_ms": pick.number("ttft"),
        "tpot_ms": pick.number("tpot"),
        "tokens_per_s_per_gpu": pick.tokens_per_s_per_gpu_cluster(result.total_gpus),
        "tokens_per_s_per_gpu_replica": pick.number("tokens/s/gpu"),
        "tokens_per_s_per_user": pick.number("tokens/s/user"),
        "concurrency": pick.number("concurrency") * replicas,
        "replicas": replicas,
        "gpus_per_replica": pick.gpus_per_replica,
    }


def configure_json(
    result: Result, describe: Callable[[Pick], Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """The shape of `autodeploy configure --json` (winner, then each mode's ranked list), with
    aiconfigurator's numbers; `describe(pick)` may add fields (the plan) to each row."""
    out: dict[str, Any] = {
        "winner": result.winner,
        "source": "aiconfigurator",
        "directory": str(result.directory),
    }
    for mode, picks in result.picks.items():
        rows = []
        for pick in picks:
            row: dict[str, Any] = {
                "mode": mode,
                "rank": pick.rank,
                "layout": pick.layout(),
                **own_numbers(pick, result),
                **_layout_fields(pick),
            }
            row["total_gpus"] = result.total_gpus
            if describe is not None:
                row.update(describe(pick))
            rows.append(row)
        out[mode] = rows
    return out


def matching_pick(result: Result, plan: Plan) -> Pick | None:
    """The ranked pick whose layout is the plan's (per role: tp, pp, attention-DP, EP, batch size, workers)."""

    def same(pick: Pick, role: Role, prefix: str) -> bool:
        r = plan.role(role)
        p = r.parallelism
        wanted = {"tp": p.tp, "pp": p.pp, "dp": p.attention_dp, "bs": r.max_batch_size}
        if p.ep > 1:
            wanted["moe_ep"] = p.ep
        if role != "agg":
            wanted["workers"] = r.workers
        return all(int(pick.number(prefix + key, -1)) == value for key, value in wanted.items())

    for pick in result.picks.get(plan.mode, []):
        if plan.mode == "agg" and same(pick, "agg", ""):
            return pick
        if plan.mode == "disagg" and same(pick, "prefill", "(p)") and same(pick, "decode", "(d)"):
            return pick
    return None


def _layout_fields(pick: Pick) -> dict[str, Any]:
    """The parallelism, batch sizes and worker counts as `configure --json` gives them (per replica)."""

    def widths(prefix: str) -> dict[str, int]:
        return {
            "tp": int(pick.number(f"{prefix}tp", 1)),
            "pp": int(pick.number(f"{prefix}pp", 1)),
            "ep": int(pick.number(f"{prefix}moe_ep", 1)),
            "attention_dp": int(pick.number(f"{prefix}dp", 1)),
            "batch_size": int(pick.number(f"{prefix}bs", 1)),
        }

    if pick.mode == "agg":
        return widths("")
    return {
        role: {**widths(prefix), "workers": int(pick.number(f"{prefix}workers", 1))}
        for role, prefix in (("prefill", "(p)"), ("decode", "(d)"))
    }


def prediction_at(result: Result, pick: Pick, concurrency: float) -> tuple[dict[str, float], bool]:
    """aiconfigurator's numbers for the pick's layout at a cluster concurrency: a pareto.csv (or ranked)
    row of the same layout whose concurrency × replicas is that concurrency (exact: True), else the pick's
    own numbers at its design point (exact: False)."""
    replicas = pick.replicas(result.total_gpus)
    keys = ("parallel",) if pick.mode == "agg" else ("(p)parallel", "(d)parallel", "(p)workers", "(d)workers")
    same = [
        row
        for row in [*result.pareto.get(pick.mode, []), *(p.row for p in result.picks.get(pick.mode, []))]
        if all(row.get(k) == pick.row.get(k) for k in keys)
    ]
    for row in same:
        try:
            if math.isclose(float(row["concurrency"]) * replicas, concurrency, rel_tol=1e-6):
                other = Pick(pick.mode, pick.rank, row, None)
                numbers = own_numbers(other, result)
                return {k: float(v) for k, v in numbers.items()}, True
        except (KeyError, ValueError):
            continue
    return {k: float(v) for k, v in own_numbers(pick, result).items()}, False


def run_aiconfigurator(
    model: str,
    system: str,
    total_gpus: int,
    isl: int,
    osl: int,
    ttft_ms: float,
    tpot_ms: float,
    save_dir: Path,
    log: Callable[[str], None],
) -> Path:
    """Run `aiconfigurator cli default` into save_dir and return the run folder it wrote.

    Raises:
        StageError: the package is not installed, or the run failed (its last lines).
    """
    binary = shutil.which("aiconfigurator")
    if binary is None:
        raise StageError(
            "configure.source is aiconfigurator with no aiconfigurator_dir, and aiconfigurator is not installed",
            hint="pip install 'autodeploy[aiconfigurator]' (or aiconfigurator), or set configure.aiconfigurator_dir",
        )
    save_dir.mkdir(parents=True, exist_ok=True)
    # The flags of `aiconfigurator cli default` in 0.12 (its argparse --help; AISimulate keeps them).
    command = [
        *(binary, "cli", "default", "--backend", "trtllm", "--model-path", model, "--system", system),
        *("--total-gpus", str(total_gpus), "--isl", str(isl), "--osl", str(osl)),
        *("--ttft", f"{ttft_ms:g}", "--tpot", f"{tpot_ms:g}", "--save-dir", str(save_dir), "--no-color"),
    ]
    log("$ " + " ".join(command))
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    (save_dir / "aiconfigurator.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise StageError(
            f"aiconfigurator cli default failed (exit {done.returncode}): {lines[-1] if lines else ''}",
            hint=f"its whole output is in {save_dir / 'aiconfigurator.log'}",
            tail="\n".join(lines[-15:]),
        )
    return _run_folder(save_dir)


# -------------------------------------------------------------------------------------------- helpers


def _run_folder(directory: Path) -> Path:
    """The folder holding agg/ or disagg/: `directory` itself or its only such child."""
    if _is_run(directory):
        return directory
    # --save-dir holds <model path>_<system>_..._<random>/, and a model path such as Qwen/Qwen3-32B-FP8
    # adds a level: look two levels down.
    candidates = [p for p in [*directory.glob("*"), *directory.glob("*/*")] if p.is_dir() and _is_run(p)]
    # backend_configs/ (0.1-0.2) holds agg/ and disagg/ too: a folder inside a run is part of it.
    runs = sorted(p for p in candidates if p.parent not in candidates)
    if len(runs) == 1:
        return runs[0]
    found = ", ".join(sorted(p.name for p in directory.iterdir())) or "nothing"
    if not runs:
        raise InputError(
            f"{directory}: found {found}; expected aiconfigurator's run folder (agg/ and/or disagg/ with "
            "best_config_topn.csv), or the --save_dir holding one",
            hint="point configure.aiconfigurator_dir at aiconfigurator's --save_dir output",
        )
    raise InputError(
        f"{directory} holds {len(runs)} aiconfigurator runs ({', '.join(p.name for p in runs)})",
        hint="point configure.aiconfigurator_dir at one of them",
    )


def _is_run(folder: Path) -> bool:
    """A folder aiconfigurator (any layout) or AISimulate's recommender wrote its result into."""
    return (
        any((folder / mode).is_dir() or (folder / f"{mode}_pareto.csv").is_file() for mode in MODES)
        or (folder / "recommendation.json").is_file()
    )


def _top_folder(run: Path, mode: Mode, rank: int) -> Path | None:
    """Where aiconfigurator generated the deployment of a pick: <mode>/top<rank>/ (0.5+; in some releases
    with a further <mode>/ inside), or backend_configs/<mode>/ for rank 1 of the older layout."""
    for folder in (run / mode / f"top{rank}", run / "backend_configs" / mode if rank == 1 else None):
        if folder is not None and folder.is_dir():
            return folder
    return None


def _csv(path: Path) -> list[Mapping[str, str]]:
    with path.open(newline="") as handle:
        return [dict(row) for row in csv.DictReader(handle)]


def _int(text: str | None) -> str:
    try:
        return str(int(float(text or "")))
    except ValueError:
        return "?"


def experiment_value(experiment: Mapping[str, Any], *keys: str) -> Any:
    """The first of `keys` found anywhere in aiconfigurator's exp_config.yaml (None if none is)."""
    for key in keys:
        found = _find(experiment, key)
        if found is not None:
            return found
    return None


def _find(data: Any, key: str) -> Any:
    """The first value under `key` anywhere in a nested mapping (exp_config.yaml nests by version)."""
    if isinstance(data, Mapping):
        if key in data:
            return data[key]
        for value in data.values():
            found = _find(value, key)
            if found is not None:
                return found
    return None


def _engine_overrides(pick: Pick, role: Role) -> EngineOverrides:
    """The engine settings of the pick's generated engine YAML for a role (empty when there is none)."""
    if pick.folder is None:
        return EngineOverrides()
    if pick.folder.is_file():  # AISimulate: recommendations/<NNNN>.yaml
        engine = (yaml.safe_load(pick.folder.read_text()) or {}).get("engine", {})
        name = {"agg": "aggregated", "prefill": "prefill", "decode": "decode"}[role]
        spec = (engine.get("workers") or {}).get(name) or {}
        kv = spec.get("kv_cache") or {}
        return EngineOverrides(
            max_num_tokens=(spec.get("scheduler") or {}).get("max_batched_tokens"),
            free_gpu_memory_fraction=(kv.get("capacity") or {}).get("memory_fraction"),
            tokens_per_block=kv.get("block_size"),
        )
    for name in _ENGINE_FILES[role]:
        for path in sorted(pick.folder.rglob(name)):
            data = yaml.safe_load(path.read_text()) or {}
            kv = data.get("kv_cache_config") or {}
            build = data.get("build_config") or {}
            dtype = kv.get("dtype")
            return EngineOverrides(
                max_num_tokens=data.get("max_num_tokens") or build.get("max_num_tokens"),
                free_gpu_memory_fraction=kv.get("free_gpu_memory_fraction"),
                enable_chunked_prefill=data.get("enable_chunked_prefill"),
                tokens_per_block=kv.get("tokens_per_block"),
                kv_cache_dtype=dtype if dtype in ("auto", "fp8") else None,
            )
    return EngineOverrides()
