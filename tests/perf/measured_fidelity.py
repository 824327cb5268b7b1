"""Fidelity against measured TRT-LLM runs: the rows interface on aiconfigurator's silicon table, as tables."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from automation.perfmodel.arch import load_model
from automation.perfmodel.rows import RowResult, concurrency_of, predictor, read_rows
from automation.perfmodel.system import known_systems

REF = Path("/work/shared/reference")
ROWS = REF / "measured" / "trtllm_measured_calibration.csv"
MODEL_DIRS = [REF / "model_configs", REF / "model_configs_more"]
AIC_PYTHON = Path("/tmp/aic-venv/bin/python")
AIC_CACHE = Path("/tmp/autodeploy-aic-measured-cache.json")

# Run by aiconfigurator's own interpreter: one cli_estimate per JSON line on stdin, as its
# tools/accuracy_regression_testing/predict_silicon_sample.py does: a backend_version it has no database
# for (0.12 also refuses raw version strings it now resolves through slots) falls back to its default.
AIC_HELPER = r"""
import contextlib, io, json, logging, sys
logging.disable(logging.CRITICAL)
from aiconfigurator.cli.api import cli_estimate
for line in sys.stdin:
    job = json.loads(line)
    kw = job["kwargs"]
    out = {"key": job["key"]}
    for attempt in (0, 1):
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                r = cli_estimate(**kw)
            out.update(ttft=r.ttft, tpot=r.tpot, version=r.backend_version, error="")
            break
        except Exception as exc:
            msg = str(exc)
            if attempt == 0 and kw.get("backend_version") and ("perf database" in msg or "version" in msg):
                kw = {**kw, "backend_version": None}
                continue
            out.update(error=(type(exc).__name__ + ": " + str(exc)).splitlines()[0][:200])
            break
    print(json.dumps(out), flush=True)
"""


def ratio_err(pred: float, meas: float) -> float:
    """pred/measured − 1 (signed)."""
    return pred / meas - 1.0


def conc_bucket(c: int | None) -> str:
    if c is None:
        return "?"
    return "c≤8" if c <= 8 else ("c9–64" if c <= 64 else "c>64")


def stats(errs: list[float]) -> tuple[str, str, str]:
    """(median |e|, p90 |e|, signed median e) in percent."""
    if not errs:
        return "–", "–", "–"
    a = sorted(abs(e) for e in errs)
    p90 = a[min(len(a) - 1, round(0.9 * (len(a) - 1)))]
    return f"{100 * statistics.median(a):.0f}%", f"{100 * p90:.0f}%", f"{100 * statistics.median(errs):+.0f}%"


def cols(errs: list[float]) -> str:
    """stats() as three aligned columns."""
    med, p90, bias = stats(errs)
    return f"{med:>8} {p90:>6} {bias:>6}"


def aic_kwargs(row: dict[str, str], res: RowResult) -> dict[str, Any] | None:
    """cli_estimate arguments for the deployment our reading of the row describes (same model id, layout,
    batch per rank, quantization), so both models predict the same thing; None when AIC cannot take it."""
    if res.row_plan is None:
        return None
    plan = res.row_plan.plan
    model = res.row_plan.checkpoint or row["model_path"]
    kw: dict[str, Any] = {
        "model_path": model,
        "system_name": plan.system,
        "mode": plan.mode,
        "backend_name": "trtllm",
        "backend_version": row.get("backend_version") or None,
        "isl": plan.isl,
        "osl": plan.osl,
        "gemm_quant_mode": row.get("gemm_quant_mode") or None,
        "moe_quant_mode": row.get("moe_quant_mode") or None,
    }
    moe = load_model(plan.model).is_moe
    for r in plan.roles:
        p = "" if plan.mode == "agg" else f"{r.role}_"
        par = r.parallelism
        kw |= {f"{p}tp_size": par.tp, f"{p}pp_size": par.pp, f"{p}attention_dp_size": par.attention_dp}
        kw[f"{p}batch_size"] = r.max_batch_size
        if moe:
            kw |= {f"{p}moe_tp_size": par.moe_tp, f"{p}moe_ep_size": par.ep}
        if plan.mode == "disagg":
            kw[f"{p}num_workers"] = r.workers
    return kw


def run_aic(
    jobs: dict[str, dict[str, Any]], python: Path, cache_path: Path, limit_s: float
) -> dict[str, Any]:
    """AIC predictions by key, from the cache and, for the rest, one aiconfigurator process."""
    cache: dict[str, Any] = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    todo = {k: v for k, v in jobs.items() if k not in cache}
    if todo and python.is_file():
        print(f"aiconfigurator: predicting {len(todo)} configurations ({len(jobs) - len(todo)} cached) ...")
        t0 = time.time()
        # The jobs go in through a file: writing them to a pipe while the results fill the other would
        # deadlock once both pipe buffers are full.
        with tempfile.TemporaryFile("w+") as jobs_file:
            for k, kw in todo.items():
                jobs_file.write(json.dumps({"key": k, "kwargs": kw}) + "\n")
            jobs_file.seek(0)
            proc = subprocess.Popen(
                [str(python), "-c", AIC_HELPER],
                stdin=jobs_file,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        assert proc.stdout is not None
        for line in proc.stdout:
            out = json.loads(line)
            cache[out.pop("key")] = out
            if len(cache) % 10 == 0:
                cache_path.write_text(json.dumps(cache))
            if time.time() - t0 > limit_s:
                proc.kill()
                print(f"aiconfigurator: stopped after {limit_s:.0f} s; rerun to continue from the cache")
                break
        proc.wait()
        cache_path.write_text(json.dumps(cache))
        print(f"aiconfigurator: done in {time.time() - t0:.0f} s")
    return {k: cache[k] for k in jobs if k in cache}


def table(
    title: str,
    recs: list[dict[str, Any]],
    key: Callable[[dict[str, Any]], str],
    with_aic: bool,
) -> None:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in recs:
        groups[key(r)].append(r)
    head = (
        f"{'':34} {'n':>4} | {'TTFT med':>8} {'p90':>6} {'bias':>6} | {'TPOT med':>8} {'p90':>6} {'bias':>6}"
    )
    if with_aic:
        head += f" || {'nAIC':>4} | {'AIC TTFT':>8} {'p90':>6} {'bias':>6} | {'AIC TPOT':>8} {'p90':>6} {'bias':>6}"
    print(f"\n{title}\n{head}")
    for g in sorted(groups, key=str):
        rs = groups[g]
        line = f"{g[:34]:34} {len(rs):>4} | {cols([r['e_ttft'] for r in rs])} | {cols([r['e_tpot'] for r in rs])}"
        if with_aic:
            a = [r for r in rs if r.get("a_ttft") is not None]
            line += f" || {len(a):>4} | {cols([r['a_ttft'] for r in a])} | {cols([r['a_tpot'] for r in a])}"
        print(line)


def method_label(res: RowResult) -> str:
    """How the row was measured: its lengths spread over [r, 1]·ISL/OSL (InferenceX) or fixed."""
    m = res.row_plan.method if res.row_plan else None
    return f"spread {m.range_ratio:g}" if m is not None and m.spread else "fixed"


def pattern(msg: str) -> str:
    """A reason with its numbers and names blanked, so like reasons count together."""
    msg = re.sub(r"\([^)]*\)$", "", msg).strip()
    msg = re.sub(r"model not known: \S+", "model not known: <id>", msg)
    return re.sub(r"\d+(\.\d+)?", "#", msg)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=Path, default=ROWS)
    ap.add_argument("--model-dir", type=Path, action="append", default=None, help="flat *_config.json dirs")
    ap.add_argument(
        "--aic-python", type=Path, default=AIC_PYTHON, help="interpreter with aiconfigurator 0.12"
    )
    ap.add_argument("--aic-cache", type=Path, default=AIC_CACHE)
    ap.add_argument("--no-aic", action="store_true", help="skip aiconfigurator (cached results still shown)")
    ap.add_argument(
        "--aic-limit-s", type=float, default=1800.0, help="stop the aiconfigurator run after this"
    )
    ap.add_argument("--dump", type=Path, default=None, help="write a per-row CSV of both predictions")
    args = ap.parse_args()

    rows = read_rows(args.rows)
    t0 = time.perf_counter()
    with predictor(args.model_dir or MODEL_DIRS) as p:
        results = [p.predict(r) for r in rows]
    elapsed = time.perf_counter() - t0
    print(f"{len(rows)} rows predicted in {elapsed:.2f} s ({args.rows})")

    # Coverage.
    stated = {"missing layout", "no concurrency"}
    print("\nCoverage: rows predicted / rows that state their whole layout and concurrency")
    print(f"{'system':12} {'rows':>5} {'stated':>7} {'predicted':>10} {'coverage':>9}  unknown system?")
    by_sys: dict[str, list[tuple[dict[str, str], RowResult]]] = defaultdict(list)
    for r, res in zip(rows, results, strict=True):
        by_sys[r["system"]].append((r, res))
    for s in sorted(by_sys):
        pairs = by_sys[s]
        n_stated = sum(1 for _, x in pairs if x.kind not in stated)
        n_pred = sum(1 for _, x in pairs if not x.error)
        cov = f"{100 * n_pred / n_stated:.0f}%" if n_stated else "–"
        unknown = "" if s.lower() in known_systems() else "UNKNOWN"
        print(f"{s:12} {len(pairs):>5} {n_stated:>7} {n_pred:>10} {cov:>9}  {unknown}")
    total_stated = sum(1 for x in results if x.kind not in stated)
    total_pred = sum(1 for x in results if not x.error)
    print(
        f"{'all':12} {len(rows):>5} {total_stated:>7} {total_pred:>10} {100 * total_pred / total_stated:>8.0f}%"
    )

    # Exclusions.
    print("\nExcluded rows by reason (the first check a row fails)")
    kinds = Counter(x.kind for x in results if x.error)
    for kind, n in kinds.most_common():
        print(f"  {n:5}  {kind}")
        pats = Counter(pattern(x.error) for x in results if x.kind == kind)
        for pat, m in pats.most_common(8):
            print(f"         {m:5}  {pat}")
    notes = Counter(pattern(x.row_plan.note) for x in results if x.row_plan and x.row_plan.note)
    print("\nRows whose layout a rule rewrote (predicted or not)")
    for pat, n in notes.most_common():
        print(f"  {n:5}  {pat}")
    blank_dp = sum(
        1
        for r, x in zip(rows, results, strict=True)
        if x.row_plan and r["mode"] == "agg" and not r["attention_dp_size"]
    )
    print(f"  {blank_dp:5}  agg rows with a blank attention_dp_size read as 1 (cli_estimate's default)")

    # aiconfigurator on the same deployments.
    jobs: dict[str, dict[str, Any]] = {}
    keys: dict[str, str] = {}
    for r, res in zip(rows, results, strict=True):
        if res.prediction is None:
            continue
        kw = aic_kwargs(r, res)
        if kw is None:
            continue
        k = hashlib.sha1(json.dumps(kw, sort_keys=True).encode()).hexdigest()[:16]
        jobs[k] = kw
        keys[res.id] = k
    aic: dict[str, Any] = {}
    if args.no_aic:
        if args.aic_cache.is_file():
            cache = json.loads(args.aic_cache.read_text())
            aic = {k: cache[k] for k in jobs if k in cache}
    elif not args.aic_python.is_file():
        print(f"\naiconfigurator: no interpreter at {args.aic_python}; its columns stay empty")
    else:
        aic = run_aic(jobs, args.aic_python, args.aic_cache, args.aic_limit_s)
    aic_errors = Counter(pattern(v["error"]) for v in aic.values() if v.get("error"))
    if aic:
        ok = sum(1 for v in aic.values() if not v.get("error"))
        print(f"\naiconfigurator 0.12 (cli_estimate, static at the row's batch): {ok}/{len(jobs)} predicted")
        for pat, n in aic_errors.most_common(6):
            print(f"  {n:5}  {pat[:150]}")

    recs: list[dict[str, Any]] = []
    for r, res in zip(rows, results, strict=True):
        if res.error or res.ttft_ms is None or res.tpot_ms is None:
            continue
        mt, mp = float(r["silicon_ttft_ms"]), float(r["silicon_tpot_ms"])
        a = aic.get(keys.get(res.id, ""), {})
        has_a = bool(a) and not a.get("error")
        recs.append(
            {
                "row": r,
                "res": res,
                "system": r["system"],
                "model": r["model_path"],
                "mode": r["mode"],
                "quant": r["gemm_quant_mode"] or "(checkpoint)",
                "conc": conc_bucket(concurrency_of(r)),
                "method": method_label(res),
                "e_ttft": ratio_err(res.ttft_ms, mt),
                "e_tpot": ratio_err(res.tpot_ms, mp),
                "a_ttft": ratio_err(a["ttft"], mt) if has_a else None,
                "a_tpot": ratio_err(a["tpot"], mp) if has_a else None,
            }
        )
    with_aic = any(x["a_ttft"] is not None for x in recs)
    print("\nError = |pred/measured − 1|: median, p90; bias = signed median of pred/measured − 1")
    table("All predicted rows", recs, lambda x: "all", with_aic)
    table("Per system", recs, lambda x: x["system"], with_aic)
    table("Per model", recs, lambda x: x["model"], with_aic)
    table("Per mode", recs, lambda x: x["mode"], with_aic)
    table("Per quantization (gemm_quant_mode)", recs, lambda x: x["quant"], with_aic)
    table("Per concurrency", recs, lambda x: x["conc"], with_aic)
    table("Per benchmark method (rows.method_of)", recs, lambda x: x["method"], with_aic)
    table("Per mode × concurrency", recs, lambda x: f"{x['mode']} {x['conc']}", with_aic)
    table("Per system × quantization", recs, lambda x: f"{x['system']} {x['quant']}", with_aic)
    if with_aic:
        both = [x for x in recs if x["a_ttft"] is not None]
        table("Rows both predict (same subset for both columns)", both, lambda x: "all", with_aic)
        table("Rows both predict, per system × mode", both, lambda x: f"{x['system']} {x['mode']}", with_aic)
    holdout_and_lomo(recs)
    diagnose(recs, results, rows)

    if args.dump:
        import csv

        with args.dump.open("w", newline="") as f:
            w = csv.writer(f)
            header = [
                "id",
                "system",
                "model",
                "mode",
                "quant",
                "conc",
                "layout",
                "batch_per_rank",
                "kv_limit",
            ]
            w.writerow([*header, "meas_ttft", "pred_ttft", "aic_ttft", "meas_tpot", "pred_tpot", "aic_tpot"])
            for x in recs:
                r, res = x["row"], x["res"]
                a = aic.get(keys.get(res.id, ""), {})
                layout = res.row_plan.plan.layout() if res.row_plan else ""
                ident = [
                    res.id,
                    r["system"],
                    r["model_path"],
                    r["mode"],
                    x["quant"],
                    concurrency_of(r),
                    layout,
                ]
                ttft = [r["silicon_ttft_ms"], res.ttft_ms, a.get("ttft", "")]
                tpot = [r["silicon_tpot_ms"], res.tpot_ms, a.get("tpot", "")]
                w.writerow([*ident, res.batch_per_rank, res.kv_limit, *ttft, *tpot])
    return 0


def family_of(model: str) -> str:
    """Leave-one-model-out groups (tests/perf/fit_measured.py's): DeepSeek-R1 and -V3 are one model."""
    return "DeepSeek-V3/R1" if "deepseek" in model.lower() else model.split("/")[-1]


def holdout_and_lomo(recs: list[dict[str, Any]]) -> None:
    """TTFT and TPOT on the 30 % hold-out of tests/perf/fit_request_ms.py and fit_measured.py (same seed,
    same deduplication: a hold-out never holds a copy of a training row), and TTFT leave-one-model-out:
    request_ms refitted without the model (fit_request_ms.fit; it adds to every TTFT and to nothing else,
    so the engine path is the prediction less the system's request_ms). The efficiencies behind TPOT are
    the shipped fit files' (fitted on all rows): fit_measured.py prints TPOT hold-out and
    leave-one-model-out with refitted efficiencies."""
    import fit_request_ms as frm
    import numpy as np

    from automation.perfmodel import evaluate

    seen: set[tuple[Any, ...]] = set()
    uniq: list[dict[str, Any]] = []
    for x in recs:
        r, plan = x["row"], x["res"].row_plan.plan
        key = (
            r["system"],
            r["model_path"],
            r["gemm_quant_mode"],
            plan.mode,
            plan.isl,
            plan.osl,
            x["res"].row_plan.concurrency,
            plan.layout(),
            round(float(r["silicon_tpot_ms"]), 6),
        )
        if key not in seen:
            seen.add(key)
            uniq.append(x)
    mask = np.random.default_rng(frm.SEED).random(len(uniq)) < frm.HOLDOUT
    test = [x for x, m in zip(uniq, mask, strict=True) if m]
    with_aic = any(x["a_ttft"] is not None for x in test)
    print(f"\nHold-out: the seeded 30 % of {len(uniq)} unique measurements ({len(test)} rows)")
    table("Hold-out: all", test, lambda x: "all", with_aic)
    table("Hold-out: per system", test, lambda x: x["system"], with_aic)
    table("Hold-out: per model", test, lambda x: x["model"], with_aic)

    # Leave one model out (TTFT): request_ms refitted on the low-concurrency rows of the others.
    fit_recs = []
    for x in uniq:
        res, r = x["res"], x["row"]
        plan = res.row_plan.plan
        engine = res.ttft_ms - evaluate.request_ms(plan.system)
        fit_recs.append(
            frm.Rec(
                res.id,
                plan.system,
                family_of(res.row_plan.checkpoint or r["model_path"]),
                plan.mode,
                plan.isl,
                plan.osl,
                res.row_plan.concurrency,
                plan.layout(),
                float(r["silicon_ttft_ms"]),
                engine,
                (),
                r.get("silicon_data_source", ""),
            )
        )

    def use(r: Any) -> bool:
        return bool(r.conc <= frm.LOW_C)

    systems = sorted({r.system for r in fit_recs})
    lomo: list[dict[str, Any]] = []
    for fam in sorted({r.model for r in fit_recs}):
        per, _ = frm.fit([r for r in fit_recs if r.model != fam], use, systems)
        for x, r in zip(uniq, fit_recs, strict=True):
            if r.model == fam:
                lomo.append({**x, "e_ttft": (r.engine + per[r.system]) / r.meas - 1.0, "a_ttft": x["a_ttft"]})
    print("\nLeave one model out (TTFT: request_ms refitted without the model; TPOT: shipped fits)")
    table("Leave one model out: all", lomo, lambda x: "all", with_aic)
    table("Leave one model out: per system", lomo, lambda x: x["system"], with_aic)
    table("Leave one model out: per model", lomo, lambda x: x["model"], with_aic)


def diagnose(recs: list[dict[str, Any]], results: Iterable[RowResult], rows: list[dict[str, str]]) -> None:
    """Evidence for which missing term drives the largest errors."""
    print("\nDiagnosis")

    def band(isl: int) -> str:
        return "isl≤1024" if isl <= 1024 else ("isl2048–4096" if isl <= 4096 else "isl≥8192")

    # A fixed per-request TTFT cost shows as a roughly constant measured − predicted gap at low load, large
    # next to a short prompt's prefill and small next to a long one's.
    gaps: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for x in recs:
        if x["conc"] == "c≤8":
            meas = float(x["row"]["silicon_ttft_ms"])
            gaps[f"{x['system']} {x['mode']} {band(int(x['row']['isl']))}"].append(
                (meas - x["res"].ttft_ms, x["res"].ttft_ms / meas)
            )
    print("  1. TTFT at c ≤ 8: measured − predicted (ms), median [p25, p75], and median pred/measured")
    for g in sorted(gaps):
        d = sorted(v[0] for v in gaps[g])
        ratio = statistics.median(v[1] for v in gaps[g])
        q1, q3 = d[len(d) // 4], d[(3 * len(d)) // 4]
        print(
            f"    {g:34} n={len(d):3}  {statistics.median(d):7.0f}  [{q1:.0f}, {q3:.0f}]  ratio {ratio:.2f}"
        )

    # Load: how TTFT grows from the lowest to the highest concurrency of one deployment, measured vs model.
    fams: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for x in recs:
        r, res = x["row"], x["res"]
        layout = (
            res.row_plan.plan.layout().split(" bs")[0] if x["mode"] == "agg" else res.row_plan.plan.layout()
        )
        fams[(x["system"], x["model"], x["quant"], r["isl"], r["osl"], x["mode"], layout)].append(x)
    growth: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for fam in fams.values():
        lo = min(fam, key=lambda x: concurrency_of(x["row"]) or 0)
        hi = max(fam, key=lambda x: concurrency_of(x["row"]) or 0)
        c_lo, c_hi = concurrency_of(lo["row"]) or 0, concurrency_of(hi["row"]) or 0
        if c_hi >= 4 * c_lo and c_hi >= 64:
            m = float(hi["row"]["silicon_ttft_ms"]) / float(lo["row"]["silicon_ttft_ms"])
            growth[f"{hi['system']} {hi['mode']}"].append((m, hi["res"].ttft_ms / lo["res"].ttft_ms))
    print(
        "  2. TTFT growth from a deployment's lowest to its highest concurrency (≥ 4×, ≥ 64): median measured vs model"
    )
    for g in sorted(growth):
        v = growth[g]
        meas, model = statistics.median(a for a, _ in v), statistics.median(b for _, b in v)
        print(f"    {g:20} deployments={len(v):3}  measured ×{meas:.1f}  model ×{model:.1f}")

    # KV capacity: rows whose batch per rank exceeds what the KV cache holds.
    over = [
        (r, x)
        for r, x in zip(rows, results, strict=True)
        if x.prediction is not None
        and x.kv_limit is not None
        and x.batch_per_rank is not None
        and x.batch_per_rank > x.kv_limit
    ]
    print(f"  3. rows whose batch per rank exceeds the modelled KV capacity: {len(over)}")
    for r, x in over:
        assert x.prediction is not None
        print(
            f"    {x.id[:70]:70} c={concurrency_of(r)} b={x.batch_per_rank:g} kv={x.kv_limit} "
            f"TTFT pred/meas {x.prediction.ttft_ms / float(r['silicon_ttft_ms']):.2f} "
            f"TPOT pred/meas {x.prediction.tpot_ms / float(r['silicon_tpot_ms']):.2f}"
        )

    # FP4: the same deployment measured at nvfp4 and fp8: does the model give fp4 the speed-up it gets?
    pairs: dict[tuple[str, ...], dict[str, dict[str, Any]]] = defaultdict(dict)
    for x in recs:
        r = x["row"]
        key = (
            x["system"],
            x["model"],
            x["mode"],
            r["isl"],
            r["osl"],
            x["res"].row_plan.plan.layout(),
        )
        pairs[(*key, str(concurrency_of(r)))][x["quant"]] = x
    by_model: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
    for pq in pairs.values():
        if "fp8" in pq and "nvfp4" in pq:
            a, b = pq["fp8"], pq["nvfp4"]
            ra, rb = a["row"], b["row"]
            by_model[f"{a['system']} {a['model']}"].append(
                (
                    float(rb["silicon_ttft_ms"]) / float(ra["silicon_ttft_ms"]),
                    b["res"].ttft_ms / a["res"].ttft_ms,
                    float(rb["silicon_tpot_ms"]) / float(ra["silicon_tpot_ms"]),
                    b["res"].tpot_ms / a["res"].tpot_ms,
                )
            )
    print("  4. nvfp4 ÷ fp8 on the same deployment and concurrency: median measured vs model")
    for g in sorted(by_model):
        v = by_model[g]
        mt, pt, mp, pp = (statistics.median(t[i] for t in v) for i in range(4))
        print(f"    {g:40} pairs={len(v):3}  TTFT {mt:.2f} vs {pt:.2f}   TPOT {mp:.2f} vs {pp:.2f}")

    # MoE per-step costs and MLA attention: TPOT bias by family, GPU generation, context and batch per rank.
    split: dict[str, list[float]] = defaultdict(list)
    for x in recs:
        arch = load_model(x["res"].row_plan.plan.model)
        fam = "MoE+MLA" if arch.mla_kv_dim else ("MoE" if arch.is_moe else "dense")
        gen = "Hopper" if x["system"] in ("h100_sxm", "h200_sxm") else "Blackwell"
        b = x["res"].batch_per_rank or 0.0
        bb = "b≤8" if b <= 8 else ("b9–32" if b <= 32 else "b>32")
        split[f"{fam:8} {gen:9} {band(int(x['row']['isl'])):12} {bb}"].append(x["e_tpot"])
    print("  5. TPOT by family × GPU generation × prompt length × batch per rank: n, median |e|, p90, bias")
    for g in sorted(split):
        print(f"    {g:44} n={len(split[g]):3}  {cols(split[g])}")


if __name__ == "__main__":
    sys.exit(main())
