"""Stand-in stages for runner tests: each records its calls; behaviour is steered by environment variables.

AUTODEPLOY_TEST_CALLS     file that every stage run appends "<stage>\n" to
AUTODEPLOY_TEST_SLEEP     "<stage>:<seconds>": that stage sleeps (to be killed or interrupted mid-stage)
AUTODEPLOY_TEST_FAIL      "<stage>": that stage raises StageError
AUTODEPLOY_TEST_CRASH     "<stage>": that stage raises an unexpected exception
AUTODEPLOY_TEST_STALE     "<stage>": that stage's verify() says its result is no longer valid
AUTODEPLOY_TEST_TEARDOWN_FAIL "epsilon": epsilon's teardown raises StageError
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from automation.config import PipelineConfig
from automation.contracts import StageOutputs, report
from automation.errors import StageError
from automation.stage import Check, Stage, StageContext
from automation.state import StageRecord


def _env_stage(variable: str) -> tuple[str, str]:
    value = os.environ.get(variable, "")
    name, _, arg = value.partition(":")
    return name, arg


class RecordingOutputs(StageOutputs):
    value: str
    upstream: dict[str, str]
    # A report field: differs on every run, and must not make the stages after it run again.
    ran_at: float = report(0.0, description="when the stage ran")


def _outputs_of(stage: str) -> type[RecordingOutputs]:
    return type(f"{stage.title()}Outputs", (RecordingOutputs,), {"stage": stage})


class _Recording(Stage):
    summary = "test stage"
    Outputs = RecordingOutputs

    def run(self, ctx: StageContext) -> RecordingOutputs:
        calls = os.environ.get("AUTODEPLOY_TEST_CALLS")
        if calls:
            with Path(calls).open("a") as handle:
                handle.write(f"{self.name}\n")
        sleeper, seconds = _env_stage("AUTODEPLOY_TEST_SLEEP")
        if sleeper == self.name:
            ctx.display.status(f"sleeping {seconds}s")
            ctx.log.info("sleeping %s s", seconds)
            time.sleep(float(seconds))
        if _env_stage("AUTODEPLOY_TEST_FAIL")[0] == self.name:
            raise StageError(f"{self.name} was told to fail", hint="unset AUTODEPLOY_TEST_FAIL", host="node9")
        if _env_stage("AUTODEPLOY_TEST_CRASH")[0] == self.name:
            raise ZeroDivisionError("told to crash")
        ctx.log.info("secret in a log line: %s", os.environ.get("HF_TOKEN", ""))
        upstream = {need: ctx.output(OUTPUTS[need]).value for need in self.needs}
        return self.Outputs(
            value=f"{self.name}:{self.result(ctx.config)}", upstream=upstream, ran_at=time.time()
        )

    def result(self, config: PipelineConfig) -> str:
        return str(config.workload.isl)

    def verify(self, ctx: StageContext, record: StageRecord) -> Check:
        if _env_stage("AUTODEPLOY_TEST_STALE")[0] == self.name:
            return Check.stale("told to be stale")
        return Check.still_valid("still fine")

    def describe(self, outputs: RecordingOutputs) -> str:
        return outputs.value


class Alpha(_Recording):
    name = "alpha"
    Outputs = _outputs_of("alpha")

    def inputs(self, config: PipelineConfig) -> Mapping[str, Any]:
        return {"isl": config.workload.isl}


class Beta(_Recording):
    name = "beta"
    Outputs = _outputs_of("beta")
    needs = ("alpha",)

    def inputs(self, config: PipelineConfig) -> Mapping[str, Any]:
        return {"osl": config.workload.osl}


class Gamma(_Recording):
    name = "gamma"
    Outputs = _outputs_of("gamma")
    needs = ("beta",)

    def inputs(self, config: PipelineConfig) -> Mapping[str, Any]:
        return {"ttft": config.sla.ttft_ms}

    def teardown(self, ctx: StageContext, record: StageRecord) -> str | None:
        return "gamma's processes"


class Epsilon(_Recording):
    """Last, with a teardown that fails when AUTODEPLOY_TEST_TEARDOWN_FAIL names it."""

    name = "epsilon"
    Outputs = _outputs_of("epsilon")

    def teardown(self, ctx: StageContext, record: StageRecord) -> str | None:
        if _env_stage("AUTODEPLOY_TEST_TEARDOWN_FAIL")[0] == self.name:
            raise StageError("node7 cannot be reached", hint="bring node7 back", host="node7")
        return "epsilon's processes"


class Delta(_Recording):
    """Depends on alpha only: a change to beta's inputs must not re-run it."""

    name = "delta"
    Outputs = _outputs_of("delta")
    needs = ("alpha",)


OUTPUTS = {stage.name: stage.Outputs for stage in (Alpha, Beta, Gamma, Delta, Epsilon)}
# With a failing teardown after gamma's (down walks them in reverse): for the down tests only.
STAGES_WITH_EPSILON: tuple[type[Stage], ...] = (Alpha, Beta, Gamma, Delta, Epsilon)
TEST_STAGES: tuple[type[Stage], ...] = (Alpha, Beta, Gamma, Delta)
