"""Measured-table rows read as Plans and predicted (`estimate --rows`), on hand-picked real rows."""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import pytest

from automation.errors import InputError
from automation.perfmodel import predict_at_concurrency
from automation.perfmodel.arch import MODELS_DIR, load_model
from automation.perfmodel.cli import add_estimate_parser
from automation.perfmodel.rows import (
    MODEL_CONFIGS_ENV,
    OUT_COLUMNS,
    RowPredictor,
    concurrency_of,
    predict_rows,
    read_rows,
    write_predictions,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "measured"
ROWS = DATA / "rows.csv"
MODEL_DIRS = [DATA / "model_configs"]


@pytest.fixture(scope="module")
def rows() -> dict[str, dict[str, str]]:
    return {r["id"]: r for r in read_rows(ROWS)}


def _one(row: dict[str, str], **changes: str):
    with RowPredictor(MODEL_DIRS) as p:
        return p.predict({**row, **changes})


def _find(rows: dict[str, dict[str, str]], fragment: str) -> dict[str, str]:
    (hit,) = [r for k, r in rows.items() if fragment in k]
    return hit


# (id fragment, expected kind ("" = predicted), layout of the plan or a fragment of the reason)
CASES = [
    ("instruct_h100_sxm_trtllm_agg_4096x128_c16_tp8", "", "tp8 bs16"),
    ("a22b_fp8_h100_sxm_trtllm_agg_128x256_c128_tp4", "", "tp4ep4 bs128"),
    ("qwen3_32b_h100_sxm_trtllm_agg_2048x256_c16_tp2", "", "tp2 bs16"),
    ("2026_03_25_deepseek_r1_b200_sxm_trtllm_fp4_agg_1024x1024_c64", "", "tp1dp8ep8 bs8"),
    ("2026_04_06_deepseek_r1_b200_sxm_trtllm_fp4_agg_1024x1024_c64", "", "tp1dp8ep8 bs8"),
    ("dsr1_b200_trtllm_fp8_disagg_8192x1024_c256_cfg549", "", "1P(tp1dp8ep8 bs1) + 1D(tp1dp8ep8 bs32)"),
    # Exported TP×EP-inflated (tp1 dp64, moe_tp 8 × moe_ep 8, batch 2): moe_tp × moe_ep names the run.
    ("dsr1_b200_trtllm_fp4_agg_1024x1024_c128_cfg191", "", "tp1dp8ep8 bs16"),
    ("gb300_trtllm_fp8_disagg_1024x1024_c12288", "missing layout", "without worker counts or batch sizes"),
    ("dsr1_gb200_trtllm_fp4_disagg_1024x1024_c48", "", "1P(tp1dp4ep4 bs1) + 4D(tp8ep8 bs12)"),
    ("gb200_trtllm_fp4_agg_1024x1024_c144_tp36", "layout invalid", "does not divide 128 attention heads"),
    # NVIDIA's NVFP4 release of DeepSeek-R1 (an alias); its batch is per GPU with attention DP not stated.
    ("nvidia_deepseek_r1_nvfp4", "layout ambiguous", "batch_size 10 × workers 1 × attention_dp 1 = 10"),
    # The KV cache holds ~43 of its 128 requests: the engine runs those and queues the rest, which
    # predict_at_concurrency models (perfmodel/queueing.py), so the row is predicted.
    ("llama_3_1_70b_h200_sxm_trtllm_fp8_agg_1024x8192_c128_tp1", "", "tp1 bs128"),
    ("gb200_trtllm_agg_4000x1000_c_tp8", "no concurrency", "no silicon_concurrency"),
]


@pytest.mark.parametrize(("fragment", "kind", "what"), CASES, ids=[c[0][-40:] for c in CASES])
def test_each_row_is_predicted_or_says_why(rows, fragment, kind, what):
    res = _one(_find(rows, fragment))
    assert res.kind == kind, res.error
    if kind == "":
        assert res.error == "" and res.ttft_ms and res.ttft_ms > 0 and res.tpot_ms and res.tpot_ms > 0
        assert res.row_plan is not None and res.row_plan.plan.layout() == what
    else:
        assert what in res.error and res.ttft_ms is None and res.tpot_ms is None
        assert "\n" not in res.error


def test_prediction_is_predict_at_concurrency_of_the_rows_plan(rows):
    row = _find(rows, "qwen3_32b_h100_sxm_trtllm_agg_2048x256_c16_tp2")
    res = _one(row)
    assert res.row_plan is not None and res.row_plan.concurrency == concurrency_of(row) == 16
    plan = res.row_plan.plan
    assert (plan.mode, plan.system, plan.replicas, plan.isl, plan.osl) == ("agg", "h100_sxm", 1, 2048, 256)
    # The row's Plan is self-contained (its model is "<checkpoint>@<quant>"): it predicts the same after
    # the predictor is gone.
    with RowPredictor(MODEL_DIRS) as p:
        res = p.predict(row)
        assert res.row_plan is not None
    assert res.row_plan.plan.model == "Qwen/Qwen3-32B@fp8"
    direct = predict_at_concurrency(res.row_plan.plan, 16)
    assert (res.ttft_ms, res.tpot_ms) == (direct.ttft_ms, direct.tpot_ms)


def test_tp_times_ep_inflated_row_reads_as_the_consistent_export_of_the_same_run(rows):
    """The 2026_04_06 export wrote tp8 ep8 (8 GPUs, batch 8 per rank) as attention_dp 64, moe 8×8, batch 1;
    the 2026_03_25 export of the same run says dp 8, moe 1×8, batch 8. The id's layout wins."""
    inflated = _find(rows, "2026_04_06_deepseek_r1_b200_sxm_trtllm_fp4_agg_1024x1024_c64")
    assert (inflated["attention_dp_size"], inflated["moe_tp_size"], inflated["batch_size"]) == (
        "64",
        "8",
        "1",
    )
    a = _one(inflated)
    b = _one(_find(rows, "2026_03_25_deepseek_r1_b200_sxm_trtllm_fp4_agg_1024x1024_c64"))
    assert a.row_plan is not None and "read as the id's tp8 ep8" in a.row_plan.note
    assert a.row_plan.plan.total_gpus == 8
    assert (a.ttft_ms, a.tpot_ms) == (b.ttft_ms, b.tpot_ms)


def test_quantization_comes_from_the_row(rows):
    with RowPredictor(MODEL_DIRS) as p:

        def gemm(row: dict[str, str]) -> str:
            rp = p.plan(row)
            return load_model(rp.plan.model).gemm_quant

        qwen = _find(rows, "qwen3_32b_h100_sxm_trtllm_agg_2048x256_c16_tp2")
        assert load_model("Qwen/Qwen3-32B").gemm_quant == "bf16"
        assert gemm(qwen) == "fp8"  # a bf16 checkpoint served with fp8 GEMMs, as the row says
        assert load_model(p.plan(qwen).plan.model).kv_dtype == "fp8"
        assert gemm({**qwen, "gemm_quant_mode": "nvfp4", "moe_quant_mode": "nvfp4"}) == "fp4"
        assert (
            gemm({**qwen, "gemm_quant_mode": "", "moe_quant_mode": ""}) == "bf16"
        )  # blank: the checkpoint's
        moe = _find(rows, "a22b_fp8_h100_sxm_trtllm_agg_128x256_c128_tp4")
        assert gemm(moe) == "fp8_block"
        assert gemm({**moe, "gemm_quant_mode": "fp8", "moe_quant_mode": "fp8"}) == "fp8"
    res = _one(moe, moe_quant_mode="nvfp4")
    assert res.kind == "unsupported quantization" and "one GEMM precision" in res.error
    assert _one(qwen, gemm_quant_mode="int4_wo").kind == "unsupported quantization"


def test_model_ids_aliases_and_local_directories(rows, tmp_path):
    llama = _find(rows, "instruct_h100_sxm_trtllm_agg_4096x128_c16_tp8")
    with RowPredictor(MODEL_DIRS) as p:
        # Hugging Face renamed meta-llama/Meta-Llama-3.1-8B; the Instruct checkpoint has its shapes.
        assert p.plan(llama).checkpoint == "meta-llama/Meta-Llama-3.1-8B"
    cfg = json.loads((MODELS_DIR / "meta-llama--Meta-Llama-3.1-8B.json").read_text())["config"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    local = _one(llama, model_path=str(tmp_path))
    assert local.error == "" and local.ttft_ms == _one(llama).ttft_ms
    assert _one(llama, model_path="nope/none").kind == "unknown model"
    dsa = {**cfg, "architectures": ["GlmMoeDsaForCausalLM"]}
    (tmp_path / "config.json").write_text(json.dumps(dsa))
    res = _one(llama, model_path=str(tmp_path))
    assert res.kind == "unsupported architecture" and "GlmMoeDsaForCausalLM" in res.error


def test_missing_fields_are_never_guessed(rows):
    agg = _find(rows, "qwen3_32b_h100_sxm_trtllm_agg_2048x256_c16_tp2")
    assert _one(agg, batch_size="").kind == "missing layout"
    assert _one(agg, tp_size="").kind == "missing layout"
    assert _one(agg, silicon_data_source="measured=2026").kind == "no concurrency"
    moe = _find(rows, "a22b_fp8_h100_sxm_trtllm_agg_128x256_c128_tp4")
    res = _one(moe, moe_tp_size="", moe_ep_size="")
    assert res.kind == "missing layout" and "moe_tp_size" in res.error
    # One MoE width follows from the other (tp·dp = moe_tp·moe_ep), as aiconfigurator infers it.
    assert _one(moe, moe_tp_size="").error == ""
    dis = _find(rows, "dsr1_b200_trtllm_fp8_disagg_8192x1024_c256_cfg549")
    res = _one(dis, decode_num_workers="")
    assert res.kind == "missing layout" and "without worker counts or batch sizes" in res.error


def test_contradictory_layouts_are_ambiguous_or_invalid(rows):
    agg = _find(rows, "qwen3_32b_h100_sxm_trtllm_agg_2048x256_c16_tp2")
    res = _one(agg, batch_size="8")  # 8 per rank on one worker is not concurrency 16: no worker count
    assert res.kind == "layout ambiguous" and "≠ concurrency 16" in res.error
    moe = _find(rows, "a22b_fp8_h100_sxm_trtllm_agg_128x256_c128_tp4")
    res = _one(moe, moe_ep_size="2")
    assert res.kind == "layout invalid" and "moe_tp 1 × moe_ep 2" in res.error
    assert _one(agg, attention_dp_size="2", batch_size="8").kind == "unsupported layout"
    dis = _find(rows, "dsr1_b200_trtllm_fp8_disagg_8192x1024_c256_cfg549")
    res = _one(dis, decode_batch_size="16")
    assert res.kind == "layout ambiguous" and "decode batch_size 16" in res.error


def test_disagg_row_states_workers_and_batches(rows):
    res = _one(_find(rows, "dsr1_b200_trtllm_fp8_disagg_8192x1024_c256_cfg549"))
    assert res.row_plan is not None
    p, d = res.row_plan.plan.role("prefill"), res.row_plan.plan.role("decode")
    assert (p.workers, p.max_batch_size, p.parallelism.attention_dp, p.parallelism.ep) == (1, 1, 8, 8)
    assert (d.workers, d.max_batch_size, d.parallelism.attention_dp) == (1, 32, 8)
    assert res.batch_per_rank == 32 and res.kv_limit and res.kv_limit > 32


def test_write_predictions_and_the_cli(rows, tmp_path, monkeypatch, capsys):
    out = tmp_path / "pred.csv"
    monkeypatch.setenv(MODEL_CONFIGS_ENV, str(MODEL_DIRS[0]))
    ap = argparse.ArgumentParser()
    add_estimate_parser(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(["estimate", "--rows", str(ROWS), "--out", str(out), "--json"])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    with out.open(newline="") as f:
        got = list(csv.DictReader(f))
    assert tuple(got[0]) == OUT_COLUMNS
    assert [g["id"] for g in got] == list(rows)
    assert summary["rows"] == len(rows) and summary["predicted"] == sum(1 for g in got if not g["error"])
    for g in got:
        assert bool(g["error"]) != bool(g["ttft_ms"]) and bool(g["ttft_ms"]) == bool(g["tpot_ms"])
        if g["ttft_ms"]:
            assert float(g["ttft_ms"]) > 0 and float(g["tpot_ms"]) > 0
    # 6, + the row whose batch the KV cache caps (predicted since the queueing model), + the gb200 row
    # (a known system since gb200.yaml), + the TP×EP-inflated row its moe_tp × moe_ep columns explain.
    assert summary["predicted"] == 9
    for bad in (
        ["estimate", "--rows", str(ROWS)],
        ["estimate", "--rows", str(ROWS), "--out", str(out), "--model", "Qwen/Qwen3-8B"],
        ["estimate", "--system", "h200_sxm", "--isl", "10", "--osl", "5"],
    ):
        args = ap.parse_args(bad)
        with pytest.raises(InputError):
            args.func(args)


def test_many_rows_predict_quickly(rows):
    """The 1,228-row table must predict in well under a minute; 20 copies of these rows is a fraction."""
    many = list(rows.values()) * 20
    t0 = time.perf_counter()
    results = predict_rows(many, MODEL_DIRS)
    assert len(results) == len(many)
    assert time.perf_counter() - t0 < 20.0


def test_write_predictions_format(tmp_path, rows):
    results = predict_rows(list(rows.values())[:3], MODEL_DIRS)
    path = tmp_path / "p.csv"
    write_predictions(results, path)
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(OUT_COLUMNS) and len(lines) == 4


def test_quant_override_is_with_quant_and_a_model_name_load_model_reads():
    base = load_model("Qwen/Qwen3-32B")
    fp8 = base.with_quant("fp8", "fp8")
    assert (fp8.gemm_quant, fp8.kv_dtype, fp8.name) == ("fp8", "fp8", "Qwen/Qwen3-32B@fp8")
    assert load_model("Qwen/Qwen3-32B@fp8") == fp8
    assert base.with_quant("", "") is base and base.with_quant(None, "fp4") is base  # dense: moe ignored
    assert base.with_quant("fp4").with_quant("bf16") == base.with_quant("bf16")
    assert (base.with_quant("bf16").kv_dtype, base.with_quant("fp4").kv_dtype) == ("bf16", "fp8")
    moe = load_model("Qwen/Qwen3-235B-A22B-FP8")
    assert moe.with_quant("", "fp8").gemm_quant == "fp8"
    with pytest.raises(ValueError, match="one GEMM precision"):
        moe.with_quant("fp8", "fp4")
    with pytest.raises(ValueError, match="unknown quantization"):
        base.with_quant("int4_wo")


def test_flat_model_configs_load_by_path(rows):
    cfg = next(MODEL_DIRS[0].glob("*_config.json"))
    arch = load_model(str(cfg))
    assert arch.name == str(cfg) and arch.num_layers > 0
    assert load_model(f"{cfg}@fp4").gemm_quant == "fp4"


def test_agg_worker_may_span_the_nvlink_domain(rows):
    """A GB200 NVL72 worker may be wider than a 4-GPU tray up to the 72-GPU NVLink domain; on an 8-GPU
    HGX node the same width is the TP×EP-inflated export."""
    from automation.perfmodel.rows import RowError, _agg_layout

    row = {"id": "x_c64_tp16_1", "moe_tp_size": "16", "moe_ep_size": "1"}
    assert _agg_layout(row, (16, 1, 1, 1), 64, 4, 72) == ((16, 1, 1, 1), 64, "")
    with pytest.raises(RowError, match="16 GPUs on 4-GPU nodes"):
        _agg_layout(row, (16, 1, 1, 1), 64, 4, 4)
    with pytest.raises(RowError, match="on 8-GPU nodes"):
        _agg_layout({**row, "moe_tp_size": "", "moe_ep_size": ""}, (16, 1, 1, 1), 64, 8, 8)
    # Wider than the domain: the columns' moe_tp × moe_ep reading still applies.
    inflated = {"id": "x_c128_cfg1", "moe_tp_size": "8", "moe_ep_size": "8"}
    widths, batch, note = _agg_layout(inflated, (1, 1, 64, 8), 128, 8, 8)
    assert (widths, batch) == ((1, 1, 8, 8), 16) and "moe_tp × moe_ep tp8 ep8" in note
    tp36 = _find(rows, "gb200_trtllm_fp4_agg_1024x1024_c144_tp36")
    res = _one(tp36, tp_size="32", moe_tp_size="32")  # 32 divides the heads: a 32-GPU worker on NVL72
    assert res.error == "" and res.row_plan is not None and res.row_plan.plan.total_gpus == 32


def test_dense_model_reads_attention_dp_0_as_off(rows):
    qwen = _find(rows, "qwen3_32b_h100_sxm_trtllm_agg_2048x256_c16_tp2")
    res = _one(qwen, attention_dp_size="0", moe_tp_size="0", moe_ep_size="0")
    assert res.error == "" and res.ttft_ms == _one(qwen).ttft_ms
    moe = _find(rows, "a22b_fp8_h100_sxm_trtllm_agg_128x256_c128_tp4")
    assert _one(moe, attention_dp_size="0").kind == "layout invalid"


def test_a_rows_method_is_read_from_its_source(rows):
    """InferenceX records (DB dumps and CSV exports) were measured with benchmark_serving.py's random
    lengths over [0.8, 1]·ISL/OSL; other sources state no method and keep the default."""
    from automation.perfmodel import queueing
    from automation.perfmodel.rows import INFERENCEX_METHOD, method_of

    db = _find(rows, "dsr1_b200_trtllm_fp8_disagg_8192x1024_c256_cfg549")
    csv_export = _find(rows, "2026_04_06_llama_3_1_70b_h200_sxm_trtllm_fp8_agg_1024x8192_c128_tp1")
    aic = _find(rows, "qwen3_32b_h100_sxm_trtllm_agg_2048x256_c16_tp2")
    assert INFERENCEX_METHOD.range_ratio == 0.8 and INFERENCEX_METHOD.warmup == "burst"
    assert method_of(db) == method_of(csv_export) == INFERENCEX_METHOD
    assert method_of(aic) == queueing.DEFAULT_METHOD
    assert (
        method_of({"silicon_data_source": "source_file=/x/2026-04-06.csv; model=X"})
        == queueing.DEFAULT_METHOD
    )
    with RowPredictor(MODEL_DIRS) as p:
        rp = p.plan(csv_export)
        assert rp.method == INFERENCEX_METHOD
        assert (
            p.predict(csv_export).ttft_ms
            == predict_at_concurrency(rp.plan, rp.concurrency, rp.method).ttft_ms
        )
        assert p.plan(aic).method == queueing.DEFAULT_METHOD
