"""Failure signatures against real log excerpts (tests/data/logs/), and the run-directory reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from automation import diagnose as diagnose_module
from automation.diagnose import EVIDENCE_CHARS, diagnose, diagnose_run, signatures

LOGS = Path(__file__).parent / "data" / "logs"


def excerpt(name: str) -> str:
    """An excerpt file without its comment header (the leading '#' lines: how it was produced)."""
    lines = (LOGS / name).read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    return "".join(lines[start:])


# excerpt file -> (the one signature it shows, text of its evidence line, the line number in the excerpt)
CASES = {
    "triton_pip_check.log": ("triton_version_mismatch", "has requirement triton==3.3.1", 1),
    "triton_inductor_import.log": (
        "triton_version_mismatch",
        "ImportError: cannot import name 'triton_key' from 'triton.compiler.compiler'",
        3,
    ),
    "nats_without_jetstream.log": (
        "nats_without_jetstream",
        "requested JetStream resource does not exist",
        1,
    ),
    "etcd_unreachable_frontend.log": ("etcd_unreachable", "etcd not reachable yet; retrying startup", 5),
    "nats_unreachable_frontend.log": ("nats_unreachable", "NATS not reachable yet; retrying startup", 4),
    "image_pull_dns.log": ("image_pull_failed", 'Get "https://nowhere.invalid/v2/": dial tcp', 1),
    "image_pull_manifest_unknown.log": ("image_pull_failed", "not found: manifest unknown", 1),
    "cuda_oom_torch.log": ("cuda_out_of_memory", "torch.OutOfMemoryError: CUDA out of memory", 3),
    "port_in_use_frontend.log": ("port_in_use", "Address already in use (os error 98)", 7),
    "model_dir_missing_mocker.log": ("model_dir_missing", "Failed to fetch model '/nonexistent/Qwen3-8B'", 7),
    "nvext_rejected_http400.txt": ("nvext_rejected", "unknown field `ignore_eos`, expected one of", 1),
    "engine_yaml_extra_key.log": ("engine_yaml_unknown_key", "Extra inputs are not permitted", 3),
    "hf_gated.log": ("hf_access_denied", "huggingface_hub.errors.GatedRepoError: 401 Client Error.", 2),
    "disk_full.log": ("disk_full", "OSError: [Errno 28] No space left on device", 3),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_excerpt_shows_exactly_its_signature(name: str) -> None:
    signature, evidence, line = CASES[name]
    findings = diagnose({f"logs/launch.node0.log ({name})": excerpt(name)})
    assert [f.signature for f in findings] == [signature], findings
    (finding,) = findings
    assert evidence in finding.evidence
    assert finding.where == f"logs/launch.node0.log ({name}):{line}"
    assert len(finding.evidence) <= EVIDENCE_CHARS
    assert "\x1b" not in finding.evidence and finding.evidence == finding.evidence.strip()
    assert finding.advice == next(s.advice for s in signatures() if s.name == signature)


def test_every_signature_has_an_excerpt_and_every_excerpt_a_case() -> None:
    assert {s.name for s in signatures()} == {signature for signature, _, _ in CASES.values()}
    clean = {"clean_frontend_mocker_nats_without_jetstream.log"}
    assert {p.name for p in LOGS.iterdir()} == set(CASES) | clean
    for path in LOGS.iterdir():
        header = path.read_text().splitlines()[0]
        assert header.startswith(("# Captured here:", "# From source text, not captured here")), path.name


def test_a_healthy_deployment_log_gives_nothing() -> None:
    """Frontend and mocker of Dynamo 1.6.1 serving over NATS without JetStream: no finding at all."""
    assert (
        diagnose({"logs/launch.node0.log": excerpt("clean_frontend_mocker_nats_without_jetstream.log")}) == []
    )
    assert diagnose({}) == [] and diagnose({"empty": ""}) == []


def test_findings_come_in_table_order_once_each_with_the_first_evidence() -> None:
    texts = {
        "logs/launch.node0.log": excerpt("disk_full.log") + excerpt("port_in_use_frontend.log"),
        "logs/launch.node1.log": excerpt("etcd_unreachable_frontend.log") + excerpt("disk_full.log"),
    }
    findings = diagnose(texts)
    assert [f.signature for f in findings] == ["etcd_unreachable", "port_in_use", "disk_full"]
    disk = findings[-1]
    assert disk.where == "logs/launch.node0.log:3"  # the first of four such lines
    assert findings[0].where == "logs/launch.node1.log:5"


def test_a_long_line_is_cut_around_its_match() -> None:
    line = "x" * 500 + " OSError: [Errno 28] No space left on device " + "y" * 500
    (finding,) = diagnose({"log": "  " + line + "\n"})
    assert len(finding.evidence) == EVIDENCE_CHARS and "No space left on device" in finding.evidence


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "launch.log").write_text("launch: node script on node1 exited\n")
    (run / "logs" / "launch.node0.log").write_text(
        excerpt("clean_frontend_mocker_nats_without_jetstream.log")
    )
    (run / "logs" / "launch.node1.log").write_text(excerpt("model_dir_missing_mocker.log"))
    (run / "logs" / "benchmark.log").write_text("c=4: 16 of 16 requests failed\n")
    return run


def test_diagnose_run_reads_the_stage_log_and_the_node_logs(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    (run / "logs" / "checkpoint.node0.log").write_text(excerpt("disk_full.log"))  # another stage's
    (finding,) = diagnose_run(run, "launch")
    assert finding.signature == "model_dir_missing" and finding.where == "logs/launch.node1.log:7"
    assert "WARN dynamo_llm::hub: ModelExpress download failed" in finding.evidence
    assert "Failed to fetch model '/nonexistent/Qwen3-8B'" in finding.evidence


def test_diagnose_run_reads_the_benchmark_error_examples(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    (run / "bench").mkdir()
    body = excerpt("nvext_rejected_http400.txt").strip()
    (run / "bench" / "c1.json").write_text(json.dumps({"summary": {"error_examples": []}}))
    (run / "bench" / "c16.json").write_text(json.dumps({"summary": {"error_examples": ["timeout"]}}))
    (run / "bench" / "c4.json").write_text(
        json.dumps({"summary": {"error_examples": ["x", f"HTTP 400: {body}"]}})
    )
    (run / "bench" / "c8.json").write_text("{not json")
    (run / "bench" / "c2.json").write_text(json.dumps(["not", "a", "level"]))
    (finding,) = diagnose_run(run, "benchmark")
    assert finding.signature == "nvext_rejected"
    assert finding.where == "bench/c4.json:error_examples[1]"
    assert finding.evidence.startswith('HTTP 400: {"message":"Failed to deserialize the JSON body')
    assert "unknown field `ignore_eos`" in finding.evidence and len(finding.evidence) == EVIDENCE_CHARS


def test_diagnose_run_without_files_finds_nothing(tmp_path: Path) -> None:
    assert diagnose_run(tmp_path / "missing", "launch") == []
    assert diagnose_run(tmp_path, "benchmark") == []


@pytest.mark.parametrize(
    "table",
    [
        {"signatures": []},
        {"signatures": [{"name": "a", "patterns": ["("], "advice": "x", "source": "y"}]},
        {"signatures": [{"name": "a", "patterns": [], "advice": "x", "source": "y"}]},
        {"signatures": [{"name": "a", "patterns": ["p"], "advice": "x"}]},
        {"signatures": [{"name": "a", "patterns": ["p"], "advice": "x\ny", "source": "y"}]},
        {"signatures": [{"name": "A b", "patterns": ["p"], "advice": "x", "source": "y"}]},
        {"signatures": [{"name": "a", "patterns": ["p"], "advice": "x", "source": "y"}] * 2},
    ],
)
def test_a_bad_table_raises(table: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "signatures.yaml"
    path.write_text(yaml.safe_dump(table))
    monkeypatch.setattr(diagnose_module, "SIGNATURES_FILE", path)
    signatures.cache_clear()
    try:
        with pytest.raises(ValueError):
            signatures()
    finally:
        signatures.cache_clear()


def test_a_failed_launch_prints_the_known_cause_under_its_error(pipeline_file: Path) -> None:
    """The runner matches a failed stage's node logs against the table: the cause, the advice and the
    evidence line show under the error, and the state file records the cause."""
    from automation.contracts import StageOutputs
    from automation.errors import StageError
    from automation.stage import Stage, StageContext
    from tests.harness.runner import quiet_runner

    excerpt = (LOGS / "port_in_use_frontend.log").read_text()

    class Launch(Stage):
        name = "launch"
        summary = "stand-in launch whose node log says what a real one said"
        Outputs = StageOutputs

        def run(self, ctx: StageContext) -> StageOutputs:
            ctx.write_text("logs/launch.node0.log", excerpt)
            raise StageError("the frontend on node0 exited", hint="see its log")

    runner, out = quiet_runner(pipeline_file, [Launch])
    from automation.pipeline import Selection

    assert runner.run(Selection()) == 1
    text = out.getvalue()
    assert "known cause: port in use:" in text and "logs/launch.node0.log:" in text
    state = json.loads((pipeline_file.parent / "run" / "state.json").read_text())
    assert state["stages"]["launch"]["error"]["known_causes"] == ["port_in_use"]
