"""Pipeline-file validation: every bad file gets its one-line message; good files resolve every default."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from automation.cli import main
from automation.config import load_pipeline, resolved_yaml, validate_pipeline
from automation.errors import ConfigError
from tests.conftest import MINIMAL_PIPELINE, REPO

BAD = sorted((REPO / "tests" / "data" / "bad_configs").glob("*.yaml"))


def _expected(path: Path) -> str:
    first = path.read_text().splitlines()[0] if path.read_text() else ""
    if not first.startswith("# expect: "):
        # An empty file cannot carry its expectation in a comment.
        return "{file}: the file is empty"
    return first.removeprefix("# expect: ")


def test_the_corpus_is_large_enough() -> None:
    assert len(BAD) >= 30


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_pipeline_gives_its_one_line_message(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    first = err.splitlines()[0]
    assert first == "error: " + _expected(path).replace("{file}", str(path))


def test_every_problem_is_reported_on_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(MINIMAL_PIPELINE + "infra: {runtime: dokcer}\nlaunch: {engnie: mocker}\n")
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path)
    problems = caught.value.problems
    assert len(problems) == 2
    assert "infra.runtime" in problems[0] and "launch.engnie" in problems[1]
    assert all("\n" not in p for p in problems)


def test_secret_values_are_never_echoed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(MINIMAL_PIPELINE + "hf_token: hf_verysecretvalue123\n")
    assert main(["validate", str(path)]) == 2
    assert "hf_verysecretvalue123" not in capsys.readouterr().err


def test_examples_are_valid() -> None:
    examples = sorted((REPO / "examples").glob("*.yaml"))
    assert examples, "examples/ must hold pipeline files"
    for example in examples:
        load_pipeline(example)


def test_defaults_are_filled_and_resolved_file_round_trips(tmp_path: Path) -> None:
    config = validate_pipeline(yaml.safe_load(MINIMAL_PIPELINE))
    assert config.model.served_name == "Qwen/Qwen3-8B"
    assert config.model.path == "~/autodeploy/models/Qwen--Qwen3-8B"
    assert config.search.total_gpus == 8
    assert config.cluster.nodes[0].name == "node0"
    assert config.dynamo.version == "1.6.1"  # the newest supported release
    assert config.backend.version == "1.3.0rc29"  # from the version table: what ai-dynamo 1.6.1 pins
    assert config.dynamo.image == "nvcr.io/nvidia/ai-dynamo/tensorrtllm-runtime:1.6.1"
    again = validate_pipeline(yaml.safe_load(resolved_yaml(config)))
    assert again == config


def test_relative_local_paths_are_relative_to_the_pipeline_file(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "id").write_text("k")
    path = tmp_path / "p.yaml"
    path.write_text(MINIMAL_PIPELINE.replace("cluster:\n", "cluster:\n  ssh: {key_file: keys/id}\n"))
    assert load_pipeline(path).cluster.ssh.key_file == tmp_path / "keys" / "id"


def test_per_role_engine_settings_override_shared_ones() -> None:
    data = yaml.safe_load(MINIMAL_PIPELINE)
    data["engine"] = {
        "free_gpu_memory_fraction": 0.9,
        "extra": {"print_iter_log": True},
        "decode": {"free_gpu_memory_fraction": 0.5},
    }
    engine = validate_pipeline(data).engine
    assert engine.for_role("decode")["free_gpu_memory_fraction"] == 0.5
    assert engine.for_role("prefill")["free_gpu_memory_fraction"] == 0.9
    assert engine.for_role("prefill")["extra"] == {"print_iter_log": True}


def test_validate_resolved_prints_every_default(
    pipeline_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(pipeline_file), "--resolved"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["infra"]["nats_port"] == 4222
    assert printed["benchmark"]["requests_per_concurrency"] == 10
