"""HF_TOKEN never lands in anything a run writes: state, logs, resolved pipeline, generated files, reports."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from automation.pipeline import Selection
from automation.stages.configure import Configure
from automation.stages.generate import Generate
from tests.conftest import MINIMAL_PIPELINE
from tests.harness.runner import quiet_runner

TOKEN = "hf_aVeryPrivateTokenValue123"


@pytest.mark.parametrize("engine", ["trtllm", "mocker"])
def test_no_file_of_a_run_holds_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    data = yaml.safe_load(MINIMAL_PIPELINE)
    data["launch"] = {"engine": engine, "runtime": "host"}
    data["dynamo"] = {"version": "1.6.1"}
    data["backend"] = {"version": "1.3.0rc23"}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    runner, out = quiet_runner(path, [Configure, Generate], tmp_path / "run")
    assert runner.run(Selection()) == 0, out.getvalue()
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.name.startswith("node_0_run") for p in files)
    for file in files:
        assert TOKEN.encode() not in file.read_bytes(), file
    assert TOKEN not in out.getvalue()
    script = (tmp_path / "run" / "generated" / "node_0_run.sh").read_text()
    assert "HF_TOKEN" in script  # read from the environment at run time
