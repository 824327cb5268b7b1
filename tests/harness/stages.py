"""Stand-in stages for runner tests: each records its calls; behaviour is steered by environment variables.

AUTODEPLOY_TEST_CALLS     file that every stage run appends "<stage>\n" to
AUTODEPLOY_TEST_SLEEP     "<stage>:<seconds>": that stage sleeps (to be killed or interrupted mid-stage)
AUTODEPLOY_TEST_FAIL      "<stage>": that stage raises StageError
AUTODEPLOY_TEST_CRASH     "<stage>": that stage raises an unexpected exception
AUTODEPLOY_TEST_STALE     "<stage>": that stage's verify() says its result is no longer valid
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from automation.config import PipelineConfig
from automation.errors import StageError
from automation.stage import Check, Stage, StageContext
from automation.state import StageRecord


def _env_stage(variable: str) -> tuple[str, str]:
    value = os.environ.get(variable, "")
    name, _, arg = value.partition(":")
    return name, arg


class _Recording(Stage):
    summary = "test stage"

    def run(self, ctx: StageContext) -> dict[str, Any]:
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
        upstream = {need: ctx.output(need).get("value") for need in self.needs}
        return {"value": f"{self.name}:{self.result(ctx.config)}", "upstream": upstream}

    def result(self, config: PipelineConfig) -> str:
        return str(config.workload.isl)

    def verify(self, ctx: StageContext, record: StageRecord) -> Check:
        if _env_stage("AUTODEPLOY_TEST_STALE")[0] == self.name:
            return Check.stale("told to be stale")
        return Check.still_valid("still fine")

    def describe(self, outputs: Mapping[str, Any]) -> str:
        return str(outputs.get("value", ""))


class Alpha(_Recording):
    name = "alpha"

    def inputs(self, config: PipelineConfig) -> Mapping[str, Any]:
        return {"isl": config.workload.isl}


class Beta(_Recording):
    name = "beta"
    needs = ("alpha",)

    def inputs(self, config: PipelineConfig) -> Mapping[str, Any]:
        return {"osl": config.workload.osl}


class Gamma(_Recording):
    name = "gamma"
    needs = ("beta",)

    def inputs(self, config: PipelineConfig) -> Mapping[str, Any]:
        return {"ttft": config.sla.ttft_ms}

    def teardown(self, ctx: StageContext, record: StageRecord) -> str | None:
        return "gamma's processes"


class Delta(_Recording):
    """Depends on alpha only: a change to beta's inputs must not re-run it."""

    name = "delta"
    needs = ("alpha",)


TEST_STAGES: tuple[type[Stage], ...] = (Alpha, Beta, Gamma, Delta)
