"""Fit the perf model's per-system efficiencies to the AIC calibration CSVs; write <system>.fit.yaml."""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from automation.perfmodel import compose  # noqa: E402
from automation.perfmodel.arch import load_model  # noqa: E402
from automation.perfmodel.ops import ParallelismGrid  # noqa: E402
from automation.perfmodel.system import FIT_DEFAULTS, SYSTEMS_DIR, SystemSpec, load_system  # noqa: E402

REF = Path("/work/shared/reference/perfmodel")
SYSTEMS = ("h100_sxm", "h200_sxm", "b200_sxm")
# Fitted parameters and their bounds; everything else in FIT_DEFAULTS stays at its default.
BOUNDS: dict[str, tuple[float, float]] = {
    "gemm_eff": (0.2, 1.0),
    "fp8_eff": (0.2, 1.0),
    "fp8_block_eff": (0.1, 1.0),
    "mem_eff": (0.3, 1.0),
    "knee": (1.2, 12.0),
    "gemm_us": (0.5, 40.0),
    "m_tile": (1.0, 256.0),
    "attn_ctx_eff": (0.1, 1.0),
    "attn_gen_eff": (0.2, 1.0),
    "attn_us": (0.5, 40.0),
    "ar_us": (0.5, 60.0),
    "ar_eff": (0.1, 1.0),
    "moe_eff": (0.05, 1.0),
    "moe_imbalance": (1e-3, 2.0),
    "moe_skew": (0.01, 2.0),
    "moe_us": (0.5, 200.0),
}
PARAMS = list(BOUNDS)
DENSE_ONLY = {"moe_eff", "moe_imbalance", "moe_us", "moe_skew"}


def fnum(v: str) -> float:
    return float(v) if v not in ("", None) else math.nan


def load_rows() -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Usable single-config rows, and counts of what was skipped and why."""
    rows, skipped = [], defaultdict(int)
    with (REF / "calibration_single_config.csv").open() as f:
        for r in csv.DictReader(f):
            if r["status"] != "ok":
                skipped[f"{r['mode']}: status {r['status']} (OOM)"] += 1
                continue
            if r["exceeds_hbm"] == "True":
                skipped[f"{r['mode']}: exceeds_hbm"] += 1
                continue
            if r["kv_cache_exceeded"] == "True":
                skipped[f"{r['mode']}: kv_cache_exceeded"] += 1
                continue
            rows.append(r)
    return rows, dict(skipped)


def split_rows(rows: list[dict[str, Any]], frac: float = 0.2, seed: int = 20261129) -> tuple[list, list]:
    """Fixed-seed split of the rows into (fit, held-out)."""
    rng = np.random.default_rng(seed)
    mask = rng.random(len(rows)) < frac
    return [r for r, m in zip(rows, mask, strict=True) if not m], [
        r for r, m in zip(rows, mask, strict=True) if m
    ]


def _col(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([fnum(r[key]) for r in rows], dtype=float)


def _ep(rows: list[dict[str, Any]], key: str = "moe_ep") -> np.ndarray:
    v = _col(rows, key)
    return np.where(np.isnan(v), 1.0, v)


def predict(rows: list[dict[str, Any]], sysc: SystemSpec) -> dict[str, np.ndarray]:
    """Model predictions for each row, keyed by target name (NaN where a target does not apply).

    Targets: static_ctx ttft; static_gen tpot; agg mix_step, genonly_step, ttft, tpot; disagg tokens_s_gpu.
    """
    n = len(rows)
    out = {
        k: np.full(n, np.nan) for k in ("ctx", "gen", "mix", "genonly", "agg_ttft", "agg_tpot", "disagg_tpg")
    }
    by: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by[(r["model"], r["mode"])].append(i)
    for (model, mode), idx in by.items():
        arch = load_model(model)
        rs = [rows[i] for i in idx]
        ia = np.array(idx)
        isl, osl = _col(rs, "isl"), _col(rs, "osl")
        if mode in ("static_ctx", "static_gen", "agg"):
            tp, b, ep = _col(rs, "tp"), _col(rs, "bs"), _ep(rs)
            grid = ParallelismGrid(tp=tp, pp=1.0, ep=ep, attention_dp=1.0)
            if mode == "static_ctx":
                out["ctx"][ia] = compose.prefill_ms(arch, sysc, grid, b, isl)
            elif mode == "static_gen":
                out["gen"][ia] = compose.decode_tpot_ms(arch, sysc, grid, b, isl, osl)
            else:
                m = compose.agg_metrics(arch, sysc, grid, b, _col(rs, "ctx_tokens"), isl, osl)
                out["mix"][ia], out["genonly"][ia] = m["mixed_ms"], m["gen_ms"]
                out["agg_ttft"][ia], out["agg_tpot"][ia] = m["ttft_ms"], m["tpot_ms"]
        elif mode == "disagg":
            ptp, dtp = _col(rs, "p_tp"), _col(rs, "d_tp")
            pep, dep = _ep(rs, "p_moe_ep"), _ep(rs, "d_moe_ep")
            pbs, dbs = _col(rs, "p_bs"), _col(rs, "d_bs")
            x, y = _col(rs, "p_workers"), _col(rs, "d_workers")
            tp_pre = compose.prefill_ms(
                arch, sysc, ParallelismGrid(tp=ptp, pp=1.0, ep=pep, attention_dp=1.0), pbs, isl
            )
            tg = compose.decode_tpot_ms(
                arch, sysc, ParallelismGrid(tp=dtp, pp=1.0, ep=dep, attention_dp=1.0), dbs, isl, osl
            )
            pr, dr, _, _ = compose.disagg_rates(tp_pre, pbs, 1.0, tg, dbs, 1.0, osl)
            seq = compose.xpyd_seq_s(pr, x, dr, y)
            out["disagg_tpg"][ia] = seq * osl / (x * ptp + y * dtp)
    return out


def reference(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """The AIC values matching `predict`'s keys."""
    mode = np.array([r["mode"] for r in rows])

    def pick(m: str, key: str) -> np.ndarray:
        return np.where(mode == m, _col(rows, key), np.nan)

    return {
        "ctx": pick("static_ctx", "ttft_ms"),
        "gen": pick("static_gen", "tpot_ms"),
        "mix": pick("agg", "mix_step_ms"),
        "genonly": pick("agg", "genonly_step_ms"),
        "agg_ttft": pick("agg", "ttft_ms"),
        "agg_tpot": pick("agg", "tpot_ms"),
        "disagg_tpg": pick("disagg", "tokens_s_gpu"),
    }


FIT_KEYS = ("ctx", "gen", "mix", "genonly", "disagg_tpg")


def residuals(rows: list[dict[str, Any]], sysc: SystemSpec, ref: dict[str, np.ndarray]) -> np.ndarray:
    pred = predict(rows, sysc)
    parts = []
    for k in FIT_KEYS:
        ok = ~np.isnan(ref[k])
        parts.append(np.log(np.maximum(pred[k][ok], 1e-9) / ref[k][ok]))
    return np.concatenate(parts)


PRIOR_WEIGHT = 0.03  # pulls a parameter the rows cannot identify back to its default, not more
FP8_TIE_WEIGHT = 0.3  # without per-tensor fp8 rows, fp8 GEMMs are assumed as efficient as bf16 ones
BLOCK_RATIO = (
    0.7  # ... and block-scaled fp8 GEMMs ~70 % as efficient as per-tensor ones (all three fits agree)
)


def prior_residuals(fit: dict[str, float]) -> np.ndarray:
    """Weak priors: each parameter near its default; fp8 near bf16 efficiency; fp8_block near 0.7·fp8."""
    out = [PRIOR_WEIGHT * np.log(v / FIT_DEFAULTS[k]) for k, v in fit.items()]
    if "fp8_eff" in fit and "gemm_eff" in fit:
        out.append(FP8_TIE_WEIGHT * np.log(fit["fp8_eff"] / fit["gemm_eff"]))
    if "fp8_block_eff" in fit and "fp8_eff" in fit:
        out.append(FP8_TIE_WEIGHT * np.log(fit["fp8_block_eff"] / (BLOCK_RATIO * fit["fp8_eff"])))
    return np.array(out)


def fit_system(rows: list[dict[str, Any]], system: str, verbose: bool = False) -> dict[str, float]:
    """Least-squares fit (log error) of the per-system efficiencies to `rows` of that system."""
    from scipy.optimize import least_squares

    rows = [r for r in rows if r["system"] == system]
    base = load_system(system)
    has_moe = any(r["model_type"] == "moe" for r in rows)
    names = [p for p in PARAMS if has_moe or p not in DENSE_ONLY]
    ref = reference(rows)
    x0 = np.log([min(max(FIT_DEFAULTS[p], BOUNDS[p][0] * 1.01), BOUNDS[p][1] * 0.99) for p in names])
    lo = np.log([BOUNDS[p][0] for p in names])
    hi = np.log([BOUNDS[p][1] for p in names])

    def fun(z: np.ndarray) -> np.ndarray:
        fit = dict(zip(names, np.exp(z), strict=True))
        return np.concatenate([residuals(rows, base.with_fit(fit), ref), prior_residuals(fit)])

    res = least_squares(fun, x0, bounds=(lo, hi), loss="soft_l1", f_scale=0.1, max_nfev=400, verbose=0)
    fit = dict(FIT_DEFAULTS)
    fit.update({p: float(v) for p, v in zip(names, np.exp(res.x), strict=True)})
    if verbose:
        print(f"  {system}: {res.nfev} evaluations, cost {res.cost:.4f}")
    return fit


def ape_table(rows: list[dict[str, Any]], fits: dict[str, dict[str, float]]) -> dict[str, np.ndarray]:
    """Absolute percentage errors per category over `rows`, each evaluated with its system's fit."""
    out: dict[str, list[np.ndarray]] = defaultdict(list)
    for system in SYSTEMS:
        rs = [r for r in rows if r["system"] == system]
        if not rs:
            continue
        sysc = load_system(system).with_fit(fits[system])
        pred, ref = predict(rs, sysc), reference(rs)
        for k in ref:
            ok = ~np.isnan(ref[k])
            out[k].append(np.abs(pred[k][ok] / ref[k][ok] - 1.0) * 100.0)
    return {k: np.concatenate(v) for k, v in out.items()}


CATEGORIES = (
    ("static_ctx TTFT", "ctx"),
    ("static_gen TPOT", "gen"),
    ("agg TTFT", "agg_ttft"),
    ("agg TPOT", "agg_tpot"),
    ("disagg tok/s/gpu", "disagg_tpg"),
    ("(agg mixed step)", "mix"),
    ("(agg decode step)", "genonly"),
)


def print_table(title: str, apes: dict[str, np.ndarray]) -> None:
    print(f"\n{title}")
    print(f"  {'category':<20} {'n':>5} {'median %':>9} {'p90 %':>8}")
    for label, key in CATEGORIES:
        v = apes.get(key, np.array([]))
        if v.size:
            print(f"  {label:<20} {v.size:>5} {np.median(v):>9.2f} {np.percentile(v, 90):>8.2f}")


def write_fit(system: str, fit: dict[str, float], n_rows: int, borrowed_from: str = "") -> Path:
    path = SYSTEMS_DIR / f"{system}.fit.yaml"
    lines = [
        f"# Efficiencies of {system}; written by tests/perf/calibrate_perfmodel.py. Do not edit by hand:",
        "# rerun the script. Fitted to aiconfigurator 0.12.0 (TRT-LLM 1.3.0rc20) predictions in",
        "# shared/reference/perfmodel/calibration_single_config.csv (calibration split).",
    ]
    if borrowed_from:
        lines += [
            f"# NOT FITTED: there is no reference data for {system}; these are {borrowed_from}'s efficiencies",
            "# applied to this system's own peak rates and bandwidths. Refit from measurements when available.",
            f"source: borrowed from {borrowed_from} (calibrate_perfmodel.py)",
        ]
    else:
        lines.append(f"source: calibrate_perfmodel.py on {n_rows} rows of {system}")
    lines.append("params:")
    lines += [f"  {k}: {fit[k]:.6g}" for k in FIT_DEFAULTS]
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--no-write", action="store_true", help="fit and print, but do not write the fit files")
    args = ap.parse_args(argv)
    rows, skipped = load_rows()
    print(f"usable rows: {len(rows)}; skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())))
    fits = {}
    for system in SYSTEMS:
        fits[system] = fit_system(rows, system, verbose=True)
        n = sum(r["system"] == system for r in rows)
        if not args.no_write:
            print(f"  wrote {write_fit(system, fits[system], n)}")
        print("   " + ", ".join(f"{k}={v:.3g}" for k, v in fits[system].items()))
    if not args.no_write:
        # a100_sxm has no reference rows: it borrows the other pre-Blackwell fit (Ampere lacks fp8, which
        # SystemSpec.peak_flops handles by falling back to bf16).
        print(f"  wrote {write_fit('a100_sxm', fits['h100_sxm'], 0, borrowed_from='h100_sxm')}")
    print_table("Fit on all calibration rows (in-sample)", ape_table(rows, fits))
    for system in SYSTEMS:
        print_table(f"  system {system}", ape_table([r for r in rows if r["system"] == system], fits))
    for model in sorted({r["model"] for r in rows}):
        print_table(f"  model {model}", ape_table([r for r in rows if r["model"] == model], fits))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
