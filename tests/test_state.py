"""The state file: round trip, atomic replacement, and refusal (never overwrite) of files it cannot trust."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from automation.errors import StateError
from automation.state import RunState, Status, load_state, save_state


def _state() -> RunState:
    state = RunState(run_id="r", pipeline_file="p.yaml", pipeline_sha256="x")
    state.record("configure").status = Status.DONE
    state.record("configure").outputs = {"mode": "agg"}
    return state


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save_state(path, _state())
    loaded = load_state(path)
    assert loaded is not None
    assert loaded.stages["configure"].outputs == {"mode": "agg"}
    assert loaded.stages["configure"].status is Status.DONE


def test_missing_file_means_a_new_run(tmp_path: Path) -> None:
    assert load_state(tmp_path / "state.json") is None


def test_a_failed_write_leaves_the_previous_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    save_state(path, _state())
    before = path.read_text()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    newer = _state()
    newer.record("generate").status = Status.DONE
    with pytest.raises(OSError):
        save_state(path, newer)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left behind


def test_corrupt_file_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"schema_version": 1, "run_id": ')
    with pytest.raises(StateError, match="not valid JSON"):
        load_state(path)
    assert path.read_text() == '{"schema_version": 1, "run_id": '


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"schema_version": 99, "run_id": "r"}))
    with pytest.raises(StateError, match="newer autodeploy"):
        load_state(path)


def test_schema_mismatch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(
        json.dumps(
            {
                "schema_version": 1,
                "run_id": "r",
                "pipeline_file": "p",
                "pipeline_sha256": "",
                "stages": {"configure": {"status": "exploded"}},
            }
        )
    )
    with pytest.raises(StateError, match=r"damaged at stages\.configure\.status"):
        load_state(path)


def test_not_a_state_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("[1, 2]")
    with pytest.raises(StateError, match="not an autodeploy state file"):
        load_state(path)
