"""Golden files: each representative case renders exactly the files in tests/data/golden/<case>/.

UPDATE_GOLDEN=1 rewrites them (review the diff before committing). A timing profile (.npz) is kept as a
summary (keys, shapes, grids): its timings come from the performance model, which is calibrated on its
own, and test_mocker.py checks them against it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.generate.cases import golden_cases

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"


GRIDS = ("prefill_isl", "decode_active_kv_tokens", "decode_context_length")


def _golden_name(rel: str) -> str:
    return f"{rel}.summary.json" if rel.endswith(".npz") else rel


def _golden_bytes(rel: str, data: bytes) -> bytes:
    """What the golden directory keeps for a generated file."""
    if not rel.endswith(".npz"):
        return data
    with np.load(io.BytesIO(data)) as npz:
        summary = {
            key: {
                "shape": list(npz[key].shape),
                **({"grid": npz[key].round(6).tolist()} if key in GRIDS else {}),
            }
            for key in sorted(npz.files)
        }
    return (json.dumps(summary, indent=1) + "\n").encode()


@pytest.mark.parametrize("case", sorted(golden_cases()))
def test_matches_golden(case: str, rendered_cases) -> None:
    _, files = rendered_cases[case]
    expected_dir = GOLDEN / case
    if os.environ.get("UPDATE_GOLDEN") == "1":
        shutil.rmtree(expected_dir, ignore_errors=True)
        for rel, data in files.items():
            target = expected_dir / _golden_name(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(_golden_bytes(rel, data))
    assert expected_dir.is_dir(), f"no golden files for {case}: run with UPDATE_GOLDEN=1 and review them"
    expected = sorted(str(p.relative_to(expected_dir)) for p in expected_dir.rglob("*") if p.is_file())
    got_names = sorted(_golden_name(rel) for rel in files)
    assert got_names == expected, "the set of generated files changed (UPDATE_GOLDEN=1 to accept)"
    for rel, data in files.items():
        want = (expected_dir / _golden_name(rel)).read_text()
        got = _golden_bytes(rel, data).decode()
        assert got == want, f"{case}/{rel} differs from its golden file (UPDATE_GOLDEN=1 to accept)"


def test_rendering_is_reproducible() -> None:
    from automation.stages.generate import render_files

    config, plan = golden_cases()["mocker_1node"]
    assert render_files(config, plan) == render_files(config, plan)
