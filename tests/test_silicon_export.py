"""autodeploy export --format aiconfigurator-silicon: the table's columns, one row per level, the layout."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from automation.cli import main
from automation.errors import InputError
from automation.silicon_export import AGG_COLUMNS, COLUMNS, DISAGG_COLUMNS, export, silicon_rows

RUNS = Path(__file__).resolve().parent / "data" / "runs"
REFERENCE = Path("/work/shared/reference/measured/trtllm_measured_calibration.csv")


@pytest.fixture
def run(tmp_path: Path) -> Path:
    target = tmp_path / "rehearsal-a"
    shutil.copytree(RUNS / "rehearsal-a", target)
    return target


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _summary(run: Path, c: int) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads((run / f"bench/c{c}.json").read_text())["summary"]
    return summary


@pytest.mark.skipif(not REFERENCE.is_file(), reason="the shared reference table is not on this machine")
def test_the_columns_are_the_reference_tables_header() -> None:
    with REFERENCE.open(newline="") as handle:
        assert tuple(next(csv.reader(handle))) == COLUMNS


def test_one_row_per_level_with_the_measured_values(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(run), "--format", "aiconfigurator-silicon"]) == 0
    path = run / "report" / "silicon_rows.csv"
    captured = capsys.readouterr()
    assert str(path) in captured.out.replace("\n", "")
    assert "mocker" in captured.err  # the rehearsal's timings are simulated, and it says so
    header, rows = _read(path)
    assert tuple(header) == COLUMNS
    assert path.read_bytes().splitlines()[0].decode() == ",".join(COLUMNS)
    assert len(rows) == 3
    for row, c in zip(rows, (1, 4, 16), strict=True):
        summary = _summary(run, c)
        assert f"silicon_concurrency={c};" in row["silicon_data_source"] + ";"
        assert row["id"].endswith(f"_c{c}")
        assert float(row["silicon_ttft_ms"]) == summary["time_to_first_token_ms"]["avg"]
        assert float(row["silicon_tpot_ms"]) == summary["inter_token_latency_ms"]["avg"]
        assert f"requests={summary['requests']}" in row["silicon_data_source"]
        assert "engine=mocker" in row["silicon_data_source"]
        assert row["decode_batch_size"] == str(c)  # one decode worker, no attention DP
    row = rows[0]
    assert row["backend"] == "trtllm" and row["backend_version"] == "1.3.0rc29"
    assert row["model_path"] == "Qwen/Qwen3-32B-FP8" and row["system"] == "h200_sxm"
    assert (row["precision"], row["gemm_quant_mode"], row["moe_quant_mode"]) == (
        "fp8",
        "fp8_block",
        "fp8_block",
    )
    assert (row["mode"], row["isl"], row["osl"]) == ("disagg", "4000", "512")
    assert [row[f"prefill_{k}"] for k in ("batch_size", "num_workers", "tp_size", "pp_size")] == [
        "1",
        "1",
        "4",
        "1",
    ]
    assert [
        row[f"decode_{k}"]
        for k in ("num_workers", "tp_size", "attention_dp_size", "moe_tp_size", "moe_ep_size")
    ] == [
        "1",
        "4",
        "1",
        "4",
        "1",
    ]
    assert all(row[k] == "" for k in AGG_COLUMNS)


def test_an_agg_plan_fills_the_agg_columns(run: Path, tmp_path: Path) -> None:
    state = json.loads((run / "state.json").read_text())
    configure = state["stages"]["configure"]["outputs"]
    decode = next(r for r in configure["plan"]["roles"] if r["role"] == "decode")
    configure["mode"] = "agg"
    configure["plan"].update(mode="agg", replicas=2, roles=[{**decode, "role": "agg", "tp": 2}])
    (run / "state.json").write_text(json.dumps(state))
    out = tmp_path / "rows.csv"
    result = export(run, out)
    assert result.path == out
    _, rows = _read(out)
    assert [r["mode"] for r in rows] == ["agg"] * 3
    assert [r["batch_size"] for r in rows] == [str(math.ceil(c / 2)) for c in (1, 4, 16)]
    assert {
        (r["tp_size"], r["pp_size"], r["attention_dp_size"], r["moe_tp_size"], r["moe_ep_size"]) for r in rows
    } == {("2", "1", "1", "2", "1")}
    assert all(r[k] == "" for r in rows for k in DISAGG_COLUMNS)
    assert result.unknown == []


def test_what_the_run_does_not_know_is_left_empty_and_named(run: Path) -> None:
    resolved = run / "pipeline.resolved.yaml"
    resolved.write_text(
        resolved.read_text().replace("hf_id: Qwen/Qwen3-32B-FP8", "hf_id: acme/private-model")
    )
    state = json.loads((run / "state.json").read_text())
    state["stages"]["configure"]["outputs"]["plan"]["model"] = "acme/private-model"
    (run / "state.json").write_text(json.dumps(state))
    rows, unknown, notes = silicon_rows(run)
    assert unknown == ["precision", "gemm_quant_mode", "moe_quant_mode"]
    assert all(row[c] == "" for row in rows for c in unknown)
    assert rows[0]["model_path"] == "acme/private-model"
    assert any("left empty" in n and "gemm_quant_mode" in n for n in notes)


def test_a_run_without_a_plan_or_levels_is_refused(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = json.loads((run / "state.json").read_text())
    state["stages"]["configure"]["outputs"] = {}
    (run / "state.json").write_text(json.dumps(state))
    with pytest.raises(InputError, match="no deployed plan recorded"):
        silicon_rows(run)
    shutil.rmtree(run / "bench")
    assert main(["export", str(run), "--format", "aiconfigurator-silicon"]) == 2
    assert "no measured levels" in capsys.readouterr().err
    assert main(["export", str(run)]) == 2  # --format is required
    assert "--format" in capsys.readouterr().err
