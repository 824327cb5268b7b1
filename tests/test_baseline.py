"""autodeploy compare and baseline_columns: level alignment, the spread rule, errors, the plot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from automation import baseline
from automation.baseline import Level, baseline_columns, compare_level, compare_runs, load_run
from automation.bench.metrics import stats
from automation.cli import main
from automation.errors import InputError

RUNS = Path(__file__).resolve().parent / "data" / "runs"


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    """Copies of the two recorded runs (compare writes its plot into B's report/)."""
    a, b = tmp_path / "rehearsal-a", tmp_path / "rehearsal-b"
    shutil.copytree(RUNS / "rehearsal-a", a)
    shutil.copytree(RUNS / "rehearsal-b", b)
    return a, b


def _summary(path: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads(path.read_text())["summary"]
    return summary


# ------------------------------------------------------------------------------------- alignment


def test_levels_of_different_sweeps_are_aligned_and_none_is_dropped(runs: tuple[Path, Path]) -> None:
    a, b = runs
    comparison = compare_runs(a, b)
    assert [(x.concurrency, x.present) for x in comparison.levels] == [
        (1, "both"),
        (4, "both"),
        (8, "only in B"),
        (16, "only in A"),
    ]
    by_c = {x.concurrency: x for x in comparison.levels}
    c8, c16 = _summary(b / "bench/c8.json"), _summary(a / "bench/c16.json")
    assert by_c[8].metrics["ttft_ms"].a is None
    assert by_c[8].metrics["ttft_ms"].b == c8["time_to_first_token_ms"]["avg"]
    assert by_c[16].metrics["tokens_per_s_per_gpu"].a == c16["tokens_per_s_per_gpu"]
    assert by_c[16].metrics["tokens_per_s_per_gpu"].b is None
    assert all(m.change is None and m.real is None for m in by_c[8].metrics.values())

    c4a, c4b = _summary(a / "bench/c4.json"), _summary(b / "bench/c4.json")
    tpot = by_c[4].metrics["tpot_ms"]
    assert tpot.a == c4a["inter_token_latency_ms"]["avg"]
    assert tpot.b == c4b["inter_token_latency_ms"]["avg"]
    assert tpot.change == pytest.approx(tpot.b / tpot.a - 1)
    assert tpot.change == pytest.approx(0.084, abs=0.005)
    assert tpot.real is True
    # B stretched only the decode: TTFT is unchanged, and within the spread.
    assert by_c[4].metrics["ttft_ms"].change == pytest.approx(0.0)
    assert by_c[4].metrics["ttft_ms"].real is False
    gpu = by_c[4].metrics["tokens_per_s_per_gpu"]
    assert gpu.change == pytest.approx(c4b["tokens_per_s_per_gpu"] / c4a["tokens_per_s_per_gpu"] - 1)
    assert gpu.real is True


def test_the_table_has_a_row_per_level_and_metric_and_marks_one_sided_levels(runs: tuple[Path, Path]) -> None:
    title, columns, rows = baseline.table(compare_runs(*runs))
    assert "rehearsal-a" in title and "rehearsal-b" in title
    assert columns[:5] == ["c", "metric", "A", "B", "Δ"]
    assert len(rows) == 4 * len(baseline.METRICS)
    assert all(len(row) == len(columns) for row in rows)
    assert [row[0] for row in rows if row[0] != ""] == [1, 4, 8, 16]
    assert rows[1][1] == "TPOT (ms)" and rows[1][4].endswith("%*")
    assert rows[0][4] == "+0.0%"  # TTFT: no change, no mark
    assert {row[4] for row in rows[8:12]} == {"only in B"}
    assert {row[4] for row in rows[12:16]} == {"only in A"}
    assert {row[2] for row in rows[8:12]} == {"–"}


# ----------------------------------------------------------------------------------- the rule


def _level(values: np.ndarray, concurrency: int = 8, with_samples: bool = True) -> Level:
    """A level whose every metric has these per-request values (only the rule is under test)."""
    v = [float(x) for x in values]
    summary = {
        "concurrency": concurrency,
        "time_to_first_token_ms": stats(v),
        "inter_token_latency_ms": stats(v),
        "request_latency_ms": stats(v),
        "tokens_per_s_per_gpu": float(np.mean(v)),
        "output_token_throughput_per_user": float(np.mean(v)),
    }
    samples = dict.fromkeys(("ttft_ms", "tpot_ms", "tokens_per_s_per_gpu", "tokens_per_s_per_user"), v)
    return Level(concurrency, summary, samples if with_samples else None)


@pytest.mark.parametrize("with_samples", [True, False], ids=["bootstrap", "from summaries"])
def test_a_small_change_within_the_noise_is_not_real(with_samples: bool) -> None:
    rng = np.random.default_rng(1)
    noise = rng.normal(100.0, 10.0, size=40)  # 10 % spread per request
    a = _level(noise, with_samples=with_samples)
    b = _level(noise * 1.01, with_samples=with_samples)  # +1 %
    change = compare_level(a, b, "ttft_ms")
    assert change.change == pytest.approx(0.01)
    assert change.interval is not None and change.interval[0] < 0 < change.interval[1]
    assert change.real is False


@pytest.mark.parametrize("with_samples", [True, False], ids=["bootstrap", "from summaries"])
def test_a_large_change_with_a_tight_spread_is_real(with_samples: bool) -> None:
    rng = np.random.default_rng(2)
    a = _level(rng.normal(100.0, 1.0, size=20), with_samples=with_samples)
    b = _level(rng.normal(120.0, 1.2, size=20), with_samples=with_samples)  # +20 %, 1 % spread
    for key, *_ in baseline.METRICS:
        change = compare_level(a, b, key)
        assert change.change == pytest.approx(0.2, abs=0.01)
        assert change.interval is not None and 0 < change.interval[0] < change.change < change.interval[1]
        assert change.real is True


def test_a_large_change_hidden_in_a_wide_spread_is_not_real() -> None:
    rng = np.random.default_rng(3)
    a = _level(rng.lognormal(np.log(100.0), 0.8, size=6))
    b = _level(np.asarray(a.samples["ttft_ms"] if a.samples else []) * 1.2)
    assert compare_level(a, b, "ttft_ms").real is False


def test_the_verdict_is_seeded_and_does_not_depend_on_other_levels(runs: tuple[Path, Path]) -> None:
    rng = np.random.default_rng(4)
    a, b = _level(rng.normal(100, 10, 30)), _level(rng.normal(104, 10, 30))
    assert compare_level(a, b, "tpot_ms") == compare_level(a, b, "tpot_ms")
    run_a, run_b = runs
    before = compare_runs(run_a, run_b).levels[0]
    (run_b / "bench/c4.json").unlink()
    after = compare_runs(run_a, run_b).levels[0]
    assert before.concurrency == after.concurrency == 1
    assert before.metrics == after.metrics


def test_too_few_requests_give_no_verdict() -> None:
    a, b = _level(np.array([100.0, 101.0])), _level(np.array([150.0, 151.0]))
    change = compare_level(a, b, "ttft_ms")
    assert change.change == pytest.approx(0.4975, abs=1e-3)
    assert change.real is None and change.interval is None
    assert baseline._percent(change).endswith("?")


# ----------------------------------------------------------------------------------- errors


def _assert_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], words: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: ") and words in err[0], err
    assert err[1].startswith("  fix: "), err


def test_a_path_that_is_not_a_run_is_refused_with_exit_2(
    runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _ = runs
    missing = tmp_path / "nope"
    _assert_exit_2(capsys, ["compare", str(missing), str(a)], f"{missing}: no such run directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    _assert_exit_2(capsys, ["compare", str(a), str(empty)], f"{empty}: not a run directory (no state.json)")


def test_a_run_without_levels_is_refused(runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    a, b = runs
    shutil.rmtree(b / "bench")
    _assert_exit_2(capsys, ["compare", str(a), str(b)], "no measured levels")
    with pytest.raises(InputError, match="no measured levels") as caught:
        load_run(b)
    assert "autodeploy run examples/container-rehearsal.yaml --to benchmark" in caught.value.hint


def test_an_unreadable_level_file_is_named(runs: tuple[Path, Path]) -> None:
    _, b = runs
    (b / "bench/c4.json").write_text("{not json")
    with pytest.raises(InputError, match=r"c4\.json: not a readable level file"):
        load_run(b)


def test_a_failed_level_is_left_out_with_a_note(runs: tuple[Path, Path]) -> None:
    a, _ = runs
    document = json.loads((a / "bench/c16.json").read_text())
    document["passed"] = False
    (a / "bench/c16.json").write_text(json.dumps(document))
    run = load_run(a)
    assert list(run.levels) == [1, 4]
    assert run.skipped and "c=16 left out: it failed" in run.skipped[0]


# -------------------------------------------------------------------------------------- the CLI


def test_compare_prints_the_table_and_writes_the_plot(
    runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = runs
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "TPOT (ms)" in out and "only in B" in out and "only in A" in out
    assert "bootstrap" in out  # the legend names the rule
    plot = b / "report" / "compare_rehearsal-a.png"
    assert f"plot: {plot}" in out.replace("\n", "")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_json_and_plot_file(
    runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = runs
    target = tmp_path / "elsewhere" / "cmp.png"
    assert main(["compare", str(a), str(b), "--json", "--plot", str(target)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert target.is_file() and result["plot"] == str(target)
    assert not (b / "report" / "compare_rehearsal-a.png").exists()
    assert result["a"]["name"] == "rehearsal-a" and result["resamples"] == baseline.RESAMPLES
    assert "bootstrap" in result["rule"]
    levels = {x["concurrency"]: x for x in result["levels"]}
    assert levels[8]["present"] == "only in B" and levels[16]["present"] == "only in A"
    tpot = levels[1]["metrics"]["tpot_ms"]
    assert tpot["real"] is True and tpot["interval"][0] > 0


# ------------------------------------------------------------------------------ baseline_columns


def test_baseline_columns_for_the_summarize_stage(runs: tuple[Path, Path]) -> None:
    a, b = runs
    summaries = [_summary(b / f"bench/c{c}.json") for c in (1, 4, 8)]
    rows = baseline_columns(a, summaries)
    assert [(r["concurrency"], r["in_baseline"]) for r in rows] == [(1, True), (4, True), (8, False)]
    assert all(r["baseline"] == "rehearsal-a" for r in rows)
    c4a = _summary(a / "bench/c4.json")
    assert rows[1]["ttft_ms_baseline"] == c4a["time_to_first_token_ms"]["avg"]
    assert rows[1]["tpot_ms_change"] == pytest.approx(0.084, abs=0.005)
    assert rows[1]["tpot_ms_real"] is True
    assert rows[1]["ttft_ms_real"] is False
    assert all(
        rows[2][f"{key}_{part}"] is None
        for key, *_ in baseline.METRICS
        for part in ("baseline", "change", "real")
    )


def test_baseline_columns_with_whole_level_files_agree_with_compare(runs: tuple[Path, Path]) -> None:
    a, b = runs
    documents = [json.loads((b / f"bench/c{c}.json").read_text()) for c in (1, 4, 8)]
    rows = baseline_columns(a, documents)
    comparison = {x.concurrency: x for x in compare_runs(a, b).levels}
    for row in rows[:2]:
        for key, *_ in baseline.METRICS:
            change = comparison[row["concurrency"]].metrics[key]
            assert row[f"{key}_real"] == change.real
            assert row[f"{key}_interval"] == list(change.interval or ())


def test_baseline_columns_refuse_a_baseline_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such run directory"):
        baseline_columns(tmp_path / "gone", [])
