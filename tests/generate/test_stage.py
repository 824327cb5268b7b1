"""The stage contract: outputs, files on disk, verify against the recorded hashes, describe, inputs."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from unittest import mock

import pytest

from automation.contracts import ConfigureOutputs
from automation.errors import StageError
from automation.perfmodel.plan import Plan, Prediction
from automation.stage import StageContext
from automation.stages.generate import Generate
from automation.state import StageRecord
from tests.generate.cases import disagg_plan, golden_cases, pipeline


def _context(tmp_path: Path, config, outputs) -> StageContext:
    return StageContext(
        stage="generate",
        needs=("configure",),
        config=config,
        pipeline_file=tmp_path / "pipeline.yaml",
        run_dir=tmp_path / "run",
        log=logging.getLogger("test.generate"),
        display=mock.Mock(),
        outputs=outputs,
    )


def _configured(plan: Plan) -> dict[str, ConfigureOutputs]:
    """What the configure stage hands over (the prediction's numbers do not matter to generate)."""
    prediction = Prediction(1.0, 1.0, 1.0, 1.0, 1.0, 1.0, True)
    return {"configure": ConfigureOutputs(mode=plan.mode, plan=plan, prediction=prediction)}


def test_run_writes_files_and_returns_the_contract(tmp_path: Path) -> None:
    config, plan = golden_cases()["mocker_1node"]
    ctx = _context(tmp_path, config, _configured(plan))
    stage = Generate()
    out = stage.run(ctx)
    assert out.dir == "generated" and out.placement == "generated/placement.json"
    assert (out.nodes, out.workers) == (1, 4)
    generated = tmp_path / "run" / "generated"
    on_disk = sorted(str(p.relative_to(generated)) for p in generated.rglob("*") if p.is_file())
    assert on_disk == sorted(out.files)
    assert os.access(generated / "node_0_run.sh", os.X_OK)
    placement = json.loads((generated / "placement.json").read_text())
    assert placement["expected_instances"] == {"backend": 2, "prefill": 2}
    json.dumps(out.record())  # recorded in the state file
    assert stage.describe(out) == "1 node, 4 workers, mocker"

    record = StageRecord(status="done", outputs=out.record())
    assert stage.verify(ctx, record).ok
    (generated / "decode_config.yaml").write_text("tampered\n")
    check = stage.verify(ctx, record)
    assert not check.ok and check.reason == "generated/decode_config.yaml changed"
    (generated / "decode_config.yaml").unlink()
    assert stage.verify(ctx, record).reason == "generated/decode_config.yaml is missing"


def test_rerun_removes_stale_files(tmp_path: Path) -> None:
    config, plan = golden_cases()["mocker_1node"]
    stage = Generate()
    stage.run(_context(tmp_path, config, _configured(plan)))
    trtllm = pipeline([8])
    out = stage.run(_context(tmp_path, trtllm, _configured(disagg_plan(replicas=1))))
    generated = tmp_path / "run" / "generated"
    assert not (generated / "mocker").exists()
    assert sorted(str(p.relative_to(generated)) for p in generated.rglob("*") if p.is_file()) == sorted(
        out.files
    )


def test_missing_plan_is_a_stage_error(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="needs the results of configure"):
        Generate().run(_context(tmp_path, pipeline([8]), {}))


def test_inputs_are_the_slices_used() -> None:
    stage = Generate()
    base = stage.inputs(pipeline([8, 8]))
    json.dumps(base)
    # How autodeploy reaches the nodes does not change what is generated.
    assert stage.inputs(pipeline([8, 8], cluster={"ssh": {"port": 2222}})) == base
    assert stage.inputs(pipeline([8, 8], launch={"system_port_base": 9000})) != base
    assert stage.inputs(pipeline([8, 4])) != base
