"""autodeploy report and the report itself: the same bytes as the stage, files only, every optional fact."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from automation import report
from automation.cli import main
from automation.stages.summarize import cache_reuse

RUNS = Path(__file__).resolve().parent / "data" / "runs"
AICONFIGURATOR = RUNS.parent / "aiconfigurator" / "qwen3-32b-fp8-h200-8gpu" / "save_dir"


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """Copies of the recorded runs (rehearsal-c's baseline is ../rehearsal-a)."""
    for name in ("rehearsal-a", "rehearsal-b", "rehearsal-c"):
        shutil.copytree(RUNS / name, tmp_path / name)
    return tmp_path


def _files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def _report(run: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, dict[str, Any]]:
    assert main(["report", str(run)]) == 0, capsys.readouterr().err
    return (run / "report/summary.md").read_text(), json.loads((run / "report/summary.json").read_text())


def _edit_json(path: Path, edit: Any) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# --------------------------------------------------------------------- the stage and the command


@pytest.mark.parametrize(
    ("name", "aiconfigurator"),
    [("rehearsal-a", False), ("rehearsal-c", False), ("rehearsal-c", True)],
    ids=["recorded before the optional facts", "every optional fact", "and aiconfigurator's prediction"],
)
def test_the_command_rewrites_the_stages_report_byte_for_byte(
    runs: Path, name: str, aiconfigurator: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    run = runs / name
    if aiconfigurator:
        with (run / "pipeline.resolved.yaml").open("a") as handle:
            handle.write(f"summarize:\n  aiconfigurator_dir: {AICONFIGURATOR}\n")
    shutil.rmtree(run / "report", ignore_errors=True)
    code = main(["run", str(run / "pipeline.resolved.yaml"), "--run-dir", str(run), "--only", "summarize"])
    assert code == 0, capsys.readouterr()
    by_stage = _files(run / "report")
    outputs = json.loads((run / "state.json").read_text())["stages"]["summarize"]["outputs"]
    assert [f"report/{f}" for f in by_stage] == sorted(outputs["files"])

    shutil.rmtree(run / "report")
    assert main(["report", str(run)]) == 0
    assert f"✓ {run}: report/summary.md, report/summary.json" in capsys.readouterr().out.replace("\n", "")
    by_command = _files(run / "report")
    assert by_command.keys() == by_stage.keys()
    for file, content in by_stage.items():
        assert by_command[file] == content, file
    assert ("## aiconfigurator's prediction" in (run / "report/summary.md").read_text()) is aiconfigurator
    expected = {"summary.md", "summary.json", "measured_vs_predicted.png"}
    if name == "rehearsal-c":
        expected |= {"gpu_telemetry.png"}
    assert set(by_stage) == expected


def test_the_command_reads_files_only(
    runs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import matplotlib.pyplot  # noqa: F401  (its font cache may start a process once; not the report's doing)

    run = runs / "rehearsal-c"
    before = {k: v for k, v in _files(run).items() if not k.startswith("report/")}

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"the report reached out: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    markdown, _ = _report(run, capsys)
    assert "## Client against server" in markdown
    after = {k: v for k, v in _files(run).items() if not k.startswith("report/")}
    assert after == before  # nothing but report/ was written (state.json untouched)


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (
            lambda s: s["stages"]["benchmark"].update(status="failed"),
            "no finished benchmark (the benchmark stage is failed)",
        ),
        (
            lambda s: s["stages"].pop("benchmark"),
            "no finished benchmark (the benchmark stage is not started)",
        ),
        (lambda s: s["stages"]["benchmark"].update(outputs={}), "no finished benchmark"),
    ],
    ids=["failed", "never ran", "no outputs"],
)
def test_a_run_without_a_finished_benchmark_is_refused_with_exit_2(
    runs: Path, edit: Any, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run = runs / "rehearsal-a"
    _edit_json(run / "state.json", edit)
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: ") and words in err[0], err
    assert err[1] == "  fix: run it first: autodeploy run examples/container-rehearsal.yaml --to benchmark"
    assert not (run / "report").exists()


def test_a_path_that_is_not_a_run_is_refused_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert f"error: {tmp_path / 'nope'}: no such run directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert f"error: {tmp_path}: not a run directory (no state.json)" in capsys.readouterr().err


def test_a_missing_level_file_is_named(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = runs / "rehearsal-a"
    (run / "bench/c4.json").unlink()
    assert main(["report", str(run)]) == 2
    assert "c4.json: not a readable level file" in capsys.readouterr().err


# --------------------------------------------------------------------------- what the report says


def test_a_run_with_every_optional_fact(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    markdown, summary = _report(runs / "rehearsal-c", capsys)
    lines = markdown.splitlines()

    assert (
        "**The sweep stopped early at c16: TTFT p90 above 3 × the SLA limit: a higher level would only queue.**"
        in lines
    )
    assert summary["stopped"] == {"level": "c16", "reason": summary["rows"][2]["stopped"]}
    assert "| versions | Dynamo 1.6.1, TensorRT-LLM 1.3.0rc29, autodeploy 0.1.0 |" in lines
    assert "| benchmark client | builtin 0.1.0, 1 process(es); aiperf 0.3.0 |" in lines
    assert "| model | Qwen/Qwen3-32B-FP8: hub commit 4c4d5a3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d |" in lines
    assert "| warm-up | steady (c1, c4); burst (c16) |" in lines
    assert "| endpoint | completions |" in lines and "| load | concurrency |" in lines
    assert "| seed | 0 (the levels derive theirs: c1 1, c4 4, c16 16) |" in lines
    facts = summary["run"]
    assert facts["warmup"] == {"c1": "steady", "c4": "steady", "c16": "burst"}
    assert facts["versions"] == {"dynamo": "1.6.1", "trtllm": "1.3.0rc29", "autodeploy": "0.1.0"}
    assert facts["model"]["revision"] == "4c4d5a3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d"
    # Always said: here none was in force, so the shipped fit is named.
    assert facts["calibration"] == "none: the shipped fit of h200_sxm (configs/systems/h200_sxm.fit.yaml)"

    # c16's client saturated: not reported, and out of the error statistics.
    predicted = f"{summary['rows'][2]['ttft_ms_predicted']:.1f}"
    c16 = next(
        line
        for line in lines
        if line.startswith(f"| 16 (client saturated — not reported) | – | {predicted} | – |")
    )
    assert c16.count("–") == 8
    rows = {row["concurrency"]: row for row in summary["rows"]}
    assert rows[16]["saturated"].startswith("the client's event loop was busy 97 %")
    assert all(rows[16][f"{key}_error"] is None for key in ("ttft_ms", "tpot_ms", "tokens_per_s_per_gpu"))
    assert rows[16]["ttft_ms_measured"] is not None  # kept in summary.json
    assert rows[16]["baseline"]["ttft_ms_change"] is None and rows[16]["baseline"]["ttft_ms_real"] is None
    statistics = summary["error_statistics"]
    assert statistics["levels"] == ["c1", "c4"] and [x["level"] for x in statistics["left_out"]] == ["c16"]
    assert statistics["mean_abs_error"]["ttft_ms"] == pytest.approx(
        (abs(rows[1]["ttft_ms_error"]) + abs(rows[4]["ttft_ms_error"])) / 2
    )
    assert any(
        line.startswith("Mean |error| over c1, c4: TTFT ") and "Left out: c16" in line for line in lines
    )

    assert "| 1 | 5 of 5 | 100.0% | 0.323 |" in lines  # goodput
    assert rows[4]["goodput"]["requests"] == 20
    assert "| 4 | 139.7 | 118.8 | +17.6% | 5.94 | 5.83 | +2.0% | 0 / 4 | 1 |" in lines  # client vs server
    assert any(line.startswith("- c4: TTFT: client 139.7 ms vs server 118.8 ms") for line in lines)
    assert any(
        line.startswith("| 16 | 142.1 | scrape failed: GET http://10.201.0.1:8000/metrics") for line in lines
    )
    assert "| 1 | 0 | 0 | no prompt token served from cache |" in lines  # cache
    assert any(line.startswith("| 4 | 4000 | 4000 | **REUSED**") for line in lines)
    assert rows[4]["cache"] == {"client": 4000, "server": 4000.0, "reused": True}
    assert (
        "| 1 | builtin / aiperf | 136.4 | 139.1 | +2.0% | 5.80 | 5.86 | +1.0% | 165.2 | 163.5 | -1.0% | bench/aiperf/c1 |"
        in lines
    )
    assert "- c16: no GPU telemetry: no nvidia-smi on node0" in lines
    assert "- c4 (partly): no GPU telemetry: no nvidia-smi GPUs on node1" in lines
    assert "| 4 | 8 | 36.0 | 120000 | 290 | bench/c4.gpu.csv |" in lines
    assert "## Against the baseline" in lines
    levels = {level["concurrency"]: level for level in summary["levels"]}
    for key in ("goodput", "cache", "client", "method", "server", "clients", "telemetry"):
        assert key in levels[4], key
    assert levels[16]["server"] == {"error": "GET http://10.201.0.1:8000/metrics: timed out"}
    assert levels[16]["saturated"] == rows[16]["saturated"] and "clients" not in levels[16]
    for name in ("measured_vs_predicted.png", "gpu_telemetry.png"):
        assert f"![{name.removesuffix('.png')}]({name})" in lines


def test_a_run_recorded_before_the_optional_facts_still_renders(
    runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    markdown, summary = _report(runs / "rehearsal-a", capsys)
    for section in (
        "Goodput",
        "The benchmark client",
        "Client against server",
        "Prompt cache",
        "Two clients",
        "GPU telemetry",
    ):
        assert f"## {section}" not in markdown
    assert "stopped early" not in markdown and summary["stopped"] is None
    assert "| benchmark client | builtin (version not recorded) |" in markdown
    assert "| model | Qwen/Qwen3-32B-FP8: local files |" in markdown
    assert "| endpoint | not recorded |" in markdown and "| seed | 0 |" in markdown
    row = summary["rows"][2]
    predicted, error = row["ttft_ms_predicted"], row["ttft_ms_error"]
    assert f"| 16 | 142.1 | {predicted:.1f} | {error * 100:+.1f}% |" in markdown
    assert summary["error_statistics"]["levels"] == ["c1", "c4", "c16"]
    assert summary["error_statistics"]["left_out"] == []
    assert set(summary["levels"][0]) == {
        "concurrency",
        "requests",
        "errors",
        "measured",
        "predicted",
        "error",
        "level",
        "file",
        "output_token_throughput",
    }
    assert summary["levels"][2]["file"] == "bench/c16.json" and summary["run"]["level_seeds"] is None
    assert not (runs / "rehearsal-a/report/gpu_telemetry.png").exists()


def test_a_plot_whose_data_is_gone_is_removed(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = runs / "rehearsal-c"
    _report(run, capsys)
    assert (run / "report/gpu_telemetry.png").is_file()
    for c in (1, 4):
        (run / f"bench/c{c}.gpu.csv").unlink()
    markdown, _ = _report(run, capsys)
    assert not (run / "report/gpu_telemetry.png").exists() and "gpu_telemetry.png" not in markdown
    assert (run / "report/measured_vs_predicted.png").is_file()


def test_a_request_rate_level_is_named_by_its_rate(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Request-rate mode: bench/r<rate>.json, keyed r<rate> in the outputs and absent from `levels`."""
    run = runs / "rehearsal-b"
    (run / "bench/c8.json").rename(run / "bench/r2.5.json")
    _edit_json(run / "bench/r2.5.json", lambda d: d["summary"].update(rate_per_s=2.5))

    def edit(state: dict[str, Any]) -> None:
        outputs = state["stages"]["benchmark"]["outputs"]
        outputs.update(
            levels=[1, 4],
            names=["c1", "c4", "r2.5"],
            files={"1": "bench/c1.json", "4": "bench/c4.json", "r2.5": "bench/r2.5.json"},
        )

    _edit_json(run / "state.json", edit)
    markdown, summary = _report(run, capsys)
    assert [row["level"] for row in summary["rows"]] == ["c1", "c4", "r2.5"]
    assert summary["rows"][2]["rate_per_s"] == 2.5 and summary["rows"][2]["file"] == "bench/r2.5.json"
    assert any(line.startswith("| 2.5/s (≈8 in flight) | ") for line in markdown.splitlines())


def test_stopped_and_calibration_from_the_stage_outputs(
    runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reason only state.json records, and fields this autodeploy's outputs do not know, are still read."""
    run = runs / "rehearsal-b"

    def edit(state: dict[str, Any]) -> None:
        state["stages"]["benchmark"]["outputs"]["stopped"] = "every request of c=8 failed"
        state["stages"]["configure"]["outputs"]["calibration"] = "h200_sxm fit of 2026-11-30"

    _edit_json(run / "state.json", edit)
    markdown, summary = _report(run, capsys)
    assert "**The sweep stopped early: every request of c=8 failed.**" in markdown
    assert "| calibration in force | h200_sxm fit of 2026-11-30 |" in markdown
    assert summary["run"]["calibration"] == "h200_sxm fit of 2026-11-30"


def test_the_frontier_plot_has_both_modes_and_no_software_stamp(
    runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = runs / "rehearsal-c"
    search = json.loads((run / "configure/search.json").read_text())
    assert search["frontier"]["agg"] and search["frontier"]["disagg"]
    _report(run, capsys)
    png = (run / "report/measured_vs_predicted.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and b"Matplotlib" not in png and b"Software" not in png


def test_a_frontier_plot_with_both_modes_differs_from_one_with_one(
    runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = runs / "rehearsal-c"
    _report(run, capsys)
    both = (run / "report/measured_vs_predicted.png").read_bytes()
    _edit_json(run / "configure/search.json", lambda s: s["frontier"].pop("agg"))
    _report(run, capsys)
    assert (run / "report/measured_vs_predicted.png").read_bytes() != both


def test_goodput_adds_a_panel_to_the_first_plot(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With goodput the figure is 2 × 2 (TTFT, TPOT, frontier, goodput), else 1 × 3 as before."""
    sizes = {}
    for name in ("rehearsal-a", "rehearsal-c"):
        _report(runs / name, capsys)
        header = (runs / name / "report/measured_vs_predicted.png").read_bytes()[16:24]
        sizes[name] = (int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big"))
    assert sizes == {"rehearsal-a": (1650, 495), "rehearsal-c": (1650, 990)}


# ---------------------------------------------------------------------------------------- pieces


def test_gpu_samples_keep_what_nvidia_smi_could_not_say_as_none(tmp_path: Path) -> None:
    path = tmp_path / "c1.gpu.csv"
    path.write_text("t_s,node,gpu,util_pct,mem_used_mb,power_w\n0.5,node0,0,40,1000,[N/A]\n,node0,0,1,1,1\n")
    assert report.gpu_samples(path) == [
        {"t_s": 0.5, "gpu": "node0/0", "util_pct": 40.0, "mem_used_mb": 1000.0, "power_w": None}
    ]


@pytest.mark.parametrize(
    ("cached", "server", "expected"),
    [
        (None, None, None),
        ({"client": None}, None, {"client": None, "server": None, "reused": None}),
        ({"client": 0}, {"cached_tokens": 12.0}, {"client": 0, "server": 12.0, "reused": True}),
        ({"client": 0, "server": 0.0}, None, {"client": 0, "server": 0.0, "reused": False}),
        ({"client": 5, "reused": False}, None, {"client": 5, "server": None, "reused": False}),
    ],
    ids=["nothing", "never said", "server saw reuse", "none", "the benchmark's verdict wins"],
)
def test_cache_reuse(cached: Any, server: Any, expected: Any) -> None:
    assert cache_reuse(cached, server) == expected
