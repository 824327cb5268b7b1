"""Kill and interrupt the real CLI mid-stage: the state file stays valid JSON and the next run resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, read_calls, run_harness


class StateWatcher(threading.Thread):
    """Reads the state file in a tight loop and records every read that was not a whole JSON document."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.reads = 0
        self.bad: list[str] = []
        self.statuses: set[str] = set()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                self.bad.append(text)
                continue
            self.reads += 1
            self.statuses.add(data["stages"].get("beta", {}).get("status", ""))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


def _start(pipeline: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.harness.run",
            "run",
            str(pipeline),
            "--run-dir",
            str(pipeline.parent / "run"),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_status(state: Path, stage: str, status: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads(state.read_text())["stages"][stage]["status"] == status:
                return
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"{stage} never became {status}")


def _wait_until_inside(state: Path, calls: Path, stage: str, timeout: float = 30) -> None:
    """Wait until the stage is recorded as running *and* its body has begun (its call is written).

    The runner marks a stage running before it calls the stage; a signal that arrives in between
    interrupts a stage that never ran, which is correct but not what these tests exercise.
    """
    _wait_for_status(state, stage, "running", timeout)
    deadline = time.monotonic() + timeout
    while stage not in read_calls(calls):
        if time.monotonic() > deadline:
            raise AssertionError(f"{stage} never began")
        time.sleep(0.02)


def test_sigkill_mid_stage_then_resume(pipeline_file: Path, calls_file: Path) -> None:
    state = pipeline_file.parent / "run" / "state.json"
    watcher = StateWatcher(state)
    watcher.start()
    try:
        child = _start(pipeline_file, {"AUTODEPLOY_TEST_SLEEP": "beta:60"})
        _wait_until_inside(state, calls_file, "beta")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        recorded = json.loads(state.read_text())["stages"]
        assert recorded["alpha"]["status"] == "done"
        assert recorded["beta"]["status"] == "running"  # what a killed runner leaves; not done
        assert read_calls(calls_file) == ["alpha", "beta"]

        resumed = run_harness("run", str(pipeline_file), "--run-dir", str(pipeline_file.parent / "run"))
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "↷ alpha" in resumed.stdout
        assert "beta" in resumed.stdout and "the last runner stopped during it" not in resumed.stderr
        assert read_calls(calls_file) == ["alpha", "beta", "beta", "gamma", "delta"]
    finally:
        watcher.stop()
    assert watcher.bad == []
    assert watcher.reads > 10
    assert {"running", "done"} <= watcher.statuses


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_marks_the_stage_and_exits_130(pipeline_file: Path, calls_file: Path, sig: int) -> None:
    state = pipeline_file.parent / "run" / "state.json"
    child = _start(pipeline_file, {"AUTODEPLOY_TEST_SLEEP": "beta:60"})
    _wait_until_inside(state, calls_file, "beta")
    child.send_signal(sig)
    out, _ = child.communicate(timeout=15)
    assert child.returncode == 130, out
    assert "Traceback" not in out
    assert "interrupted" in out and f"autodeploy run {pipeline_file}" in out
    recorded = json.loads(state.read_text())["stages"]
    assert recorded["beta"]["status"] == "interrupted"
    assert recorded["gamma"]["status"] == "pending"

    resumed = run_harness("run", str(pipeline_file), "--run-dir", str(pipeline_file.parent / "run"))
    assert resumed.returncode == 0
    assert read_calls(calls_file) == ["alpha", "beta", "beta", "gamma", "delta"]


def test_crash_shows_a_traceback_only_with_debug(pipeline_file: Path) -> None:
    env = {"AUTODEPLOY_TEST_CRASH": "alpha"}
    plain = run_harness("run", str(pipeline_file), "--run-dir", str(pipeline_file.parent / "a"), env=env)
    assert plain.returncode == 1
    assert "Traceback" not in plain.stdout + plain.stderr
    debug = run_harness(
        "run", str(pipeline_file), "--run-dir", str(pipeline_file.parent / "b"), "--debug", env=env
    )
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "ZeroDivisionError" in debug.stderr


def test_bad_input_is_exit_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ninfra: {runtime: dokcer}\n")
    result = subprocess.run(
        [sys.executable, "-m", "automation", "run", str(bad)], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert (
        "infra.runtime: 'dokcer' is not one of 'docker', 'native' (did you mean 'docker'?)" in result.stderr
    )
    debug = subprocess.run(
        [sys.executable, "-m", "automation", "run", str(bad), "--debug"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert debug.returncode == 2 and "Traceback" in debug.stderr
