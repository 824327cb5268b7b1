"""Node scripts: valid bash, shellcheck-clean, and they stop everything when one process exits or on a signal."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from automation.errors import InputError
from automation.stages.generate import render_files, write_files
from tests.generate.cases import agg_plan, disagg_plan, golden_cases, pipeline

CASES = sorted(golden_cases())


def _scripts(directory: Path) -> list[Path]:
    return sorted(directory.glob("node_*_run.sh"))


@pytest.mark.parametrize("case", CASES)
def test_bash_syntax(case: str, rendered_cases) -> None:
    directory, _ = rendered_cases[case]
    for script in _scripts(directory):
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"


def test_shellcheck_clean(rendered_cases) -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: apt-get install -y shellcheck (scripts/system-packages.txt)"
    scripts = [s for case in CASES for s in _scripts(rendered_cases[case][0])]
    result = subprocess.run([shellcheck, "-s", "bash", *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_hold_no_secret_and_read_the_token_at_run_time(rendered_cases) -> None:
    for case in CASES:
        for script in _scripts(rendered_cases[case][0]):
            text = script.read_text()
            assert 'if [[ -n "${HF_TOKEN:-}" ]]; then export HF_TOKEN; fi' in text
            assert "HF_TOKEN=" not in text


def test_frontend_only_on_node_zero(rendered_cases) -> None:
    for case in CASES:
        scripts = _scripts(rendered_cases[case][0])
        with_frontend = [s.name for s in scripts if "-m dynamo.frontend" in s.read_text()]
        assert with_frontend == ["node_0_run.sh"], case


# A stand-in for the Dynamo python: behaves according to its command line, writes its pid, never serves.
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$$" >> "$FAKE_PIDS"
echo "fake worker $* on CUDA ${CUDA_VISIBLE_DEVICES:-none} port ${DYN_SYSTEM_PORT:-none}"
case " $* " in
  *" --disaggregation-mode decode "*) sleep 0.5; echo "decode failing" >&2; exit 3 ;;
esac
if [[ -n "${FAKE_IGNORE_TERM:-}" ]]; then trap '' TERM; fi
for _ in $(seq 300); do sleep 0.1; done
"""


def _fake_setup(tmp_path: Path, plan, engine: str = "trtllm") -> tuple[Path, dict[str, str]]:
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    config = pipeline([8], engine=engine, runtime="host", launch={"python": str(fake)})
    directory = tmp_path / "copied" / "run"  # the launcher's copy: scripts must not depend on the cwd
    write_files(directory, render_files(config, plan))
    env = {**os.environ, "FAKE_PIDS": str(tmp_path / "pids"), "AUTODEPLOY_STOP_GRACE_S": "2"}
    return directory, env


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def _pids(tmp_path: Path) -> list[int]:
    return [int(x) for x in (tmp_path / "pids").read_text().split()]


def test_a_crashing_worker_stops_the_node_and_is_named(tmp_path: Path) -> None:
    directory, env = _fake_setup(tmp_path, disagg_plan(replicas=1))
    result = subprocess.run(
        ["bash", str(directory / "node_0_run.sh")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "decode 0 (pid" in result.stderr and "exited with code 3" in result.stderr
    assert "[decode 0] decode failing" in result.stdout
    assert "[prefill 1] fake worker -m dynamo.trtllm" in result.stdout
    assert "[frontend] fake worker -m dynamo.frontend" in result.stdout
    time.sleep(0.2)
    assert not [pid for pid in _pids(tmp_path) if _alive(pid)], "workers outlived their node script"


def test_a_signal_stops_every_process_and_kills_stragglers(tmp_path: Path) -> None:
    directory, env = _fake_setup(tmp_path, agg_plan(tp=2, replicas=2))
    env["FAKE_IGNORE_TERM"] = "1"
    proc = subprocess.Popen(
        ["bash", str(directory / "node_0_run.sh")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(_pids(tmp_path) if (tmp_path / "pids").exists() else []) < 3:
        time.sleep(0.05)
    pids = _pids(tmp_path)
    assert len(pids) == 3  # frontend + 2 agg workers
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 143, err.decode()
    time.sleep(0.2)
    assert not [pid for pid in pids if _alive(pid)], "a worker that ignores TERM was not killed"


def test_mocker_configs_are_resolved_to_this_node(tmp_path: Path) -> None:
    directory, env = _fake_setup(tmp_path, disagg_plan(replicas=1), engine="mocker")
    subprocess.run(
        ["bash", str(directory / "node_0_run.sh")], env=env, capture_output=True, text=True, timeout=30
    )
    resolved = sorted((directory / "resolved").glob("*.json"))
    assert [p.name for p in resolved] == ["decode-0.json", "prefill-0.json", "prefill-1.json"]
    for path in resolved:
        profile = Path(json.loads(path.read_text())["engine"]["timing_model"]["config"]["path"])
        assert profile.is_absolute() and profile.is_file()
        assert profile.parent.parent == directory


# A stand-in for the Dynamo python that records what it was given: its arguments and environment.
RECORDING_PYTHON = """#!/usr/bin/env bash
printf '%s\\0' "$@" > "$RECORD_DIR/$$.args"
env -0 > "$RECORD_DIR/$$.env"
"""


def _hostile_config(tmp_path: Path, marker: Path) -> tuple[Any, dict[str, str]]:
    """A pipeline whose env values, model path, served name and node name/address try to run `touch marker`."""
    fake = tmp_path / "fake-python"
    fake.write_text(RECORDING_PYTHON)
    fake.chmod(0o755)
    config = pipeline([8], runtime="host", launch={"python": str(fake)})
    attack = f"$(touch {marker}); touch {marker} `touch {marker}`"
    env = {
        "EVIL": f"{attack}\ntouch {marker}\n\"double\" 'single' \\ ${{HOME}} & | > {marker}",
        "SEMI": f"a;touch {marker};b",
        "PLAIN": "value with spaces",
    }
    # Built past the config's own validation, as a hand-edited record or an older validator might let through.
    config.launch = config.launch.model_copy(update={"env": env})
    config.model = config.model.model_copy(
        update={"path": f"/models/my model {attack}", "served_name": f"served; touch {marker}\nx"}
    )
    node = config.cluster.nodes[0]
    config.cluster.nodes[0] = node.model_copy(
        update={"name": f"n0\ntouch {marker}", "address": f"10.0.0.1\ntouch {marker}"}
    )
    return config, env


def test_hostile_values_are_quoted_and_reach_the_workers_intact(tmp_path: Path) -> None:
    marker = Path("/tmp") / f"autodeploy-injected-{uuid.uuid4().hex}"
    config, env_values = _hostile_config(tmp_path, marker)
    plan = agg_plan(tp=4, replicas=1)
    files = render_files(config, plan)
    directory = tmp_path / "run"
    write_files(directory, files)
    script = directory / "node_0_run.sh"
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    record = tmp_path / "record"
    record.mkdir()
    try:
        subprocess.run(
            ["bash", str(script)],
            env={**os.environ, "RECORD_DIR": str(record), "AUTODEPLOY_STOP_GRACE_S": "2"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert not marker.exists(), "a value from the pipeline ran as a command"
    finally:
        marker.unlink(missing_ok=True)
    envs = [p.read_bytes().split(b"\0") for p in sorted(record.glob("*.env"))]
    args = [p.read_bytes().split(b"\0") for p in sorted(record.glob("*.args"))]
    assert len(envs) == len(args) == 2  # the frontend and the worker
    for recorded in envs:
        seen = dict(item.decode().split("=", 1) for item in recorded if b"=" in item)
        for key, value in env_values.items():
            assert seen[key] == value
        assert seen["MODEL_PATH"] == config.model.path
        assert seen["SERVED_MODEL_NAME"] == config.model.served_name
    worker = next(a for a in args if b"dynamo.trtllm" in a)
    assert config.model.path.encode() in worker
    # The generated YAML stays YAML: no value breaks out of a comment into keys.
    for rel, data in files.items():
        if rel.endswith(".yaml"):
            docs = [d for d in yaml.safe_load_all(data) if d]
            assert docs and all("touch" not in str(list(d)) for d in docs), rel


def test_an_env_name_that_is_not_a_shell_name_is_refused(tmp_path: Path) -> None:
    config = pipeline([8])
    config.launch = config.launch.model_copy(update={"env": {"A;touch /tmp/x": "1"}})
    with pytest.raises(
        InputError, match=r"launch\.env: 'A;touch /tmp/x' is not an environment variable name"
    ):
        render_files(config, agg_plan(tp=4, replicas=1))
