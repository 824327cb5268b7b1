"""Mocker engine: JSONs the real normaliser accepts, budgets that never hang, profiles that follow the model."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

import automation.perfmodel as pm
from automation.errors import InputError
from automation.mocker_profile import (
    SCRIPT_DIR_PLACEHOLDER,
    interpolate_decode,
    interpolate_prefill,
    mocker_config,
    timing_profile,
)
from automation.perfmodel.evaluate import make_role, step_scales
from automation.perfmodel.plan import Plan, RolePlan
from automation.stages.generate import render_files, write_files
from tests.generate.cases import MODEL, agg_plan, disagg_plan, pipeline, role

NORMALISE = """
import json, sys
from dynamo.mocker.config import normalize_mocker_config
out = {}
for path in sys.argv[1:]:
    engine = normalize_mocker_config(open(path).read())["engine"]
    out[path] = {k: engine[k] for k in ("worker_type", "backend", "max_num_batched_tokens",
        "enable_chunked_prefill", "enable_prefix_caching", "max_num_seqs", "block_size", "max_model_len")}
    out[path]["timing"] = engine["timing_model"]["type"]
print(json.dumps(out))
"""


def _mocker_plans() -> dict[str, Plan]:
    chunked = Plan(
        mode="agg",
        model=MODEL,
        system="h200_sxm",
        roles=(role("agg", tp=1, batch=16, tokens=2048, chunked=True),),
        replicas=2,
        isl=4000,
        osl=512,
    )
    return {"disagg": disagg_plan(replicas=2), "agg": agg_plan(tp=2, replicas=2), "agg_chunked": chunked}


def test_every_mocker_json_is_accepted_by_the_real_normaliser(tmp_path: Path, dynamo_python: Path) -> None:
    paths, isl = [], 4000
    for name, plan in _mocker_plans().items():
        directory = tmp_path / name
        write_files(
            directory,
            render_files(pipeline([8, 8], engine="mocker", dynamo="1.6.1", backend="1.3.0rc23"), plan),
        )
        for path in sorted((directory / "mocker").glob("*.json")):
            # What the node script's resolve step does on the node.
            path.write_text(path.read_text().replace(SCRIPT_DIR_PLACEHOLDER, str(directory)))
            paths.append(str(path))
    result = subprocess.run(
        [str(dynamo_python), "-c", NORMALISE, *paths], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    engines = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(engines) == len(paths) > 0
    for path, engine in engines.items():
        role_name = Path(path).stem.split("-")[0]
        assert engine["worker_type"] == {"agg": "aggregated"}.get(role_name, role_name)
        assert engine["backend"] == "trtllm" and engine["timing"] == "external"
        assert engine["enable_prefix_caching"] is False
        # A budget below the prompt with chunked prefill off hangs the mocker silently.
        assert engine["max_num_batched_tokens"] >= isl or engine["enable_chunked_prefill"]


def test_a_budget_below_the_prompt_is_refused_not_raised() -> None:
    """The mocker runs the engine YAML's budget; one it could never schedule a prompt with is an error."""
    with pytest.raises(InputError, match=r"engine.prefill.max_num_tokens 64 is below the prompt"):
        mocker_config(role("prefill", batch=1, tokens=64), 4000, "mocker/prefill_profile.npz")


def test_a_decode_worker_gets_room_for_the_transferred_prompt() -> None:
    """TRT-LLM's decode worker only receives a prompt's KV cache, so a small budget is right for it (aiconfigurator
    writes max_num_tokens 64); the mocker charges the prompt against the budget, so it gets one prompt next to
    the full batch, as the planner's own default: round_up(4000 + 64, 32)."""
    decode = mocker_config(role("decode", batch=64, tokens=64), 4000, "mocker/decode_profile.npz")
    assert decode["engine"]["max_num_batched_tokens"] == 4064
    bigger = mocker_config(role("decode", batch=64, tokens=8192), 4000, "mocker/decode_profile.npz")
    assert bigger["engine"]["max_num_batched_tokens"] == 8192
    chunked = mocker_config(role("agg", batch=8, tokens=1024, chunked=True), 4000, "mocker/agg_profile.npz")
    assert chunked["engine"]["max_num_batched_tokens"] == 1024


def test_profile_reproduces_the_performance_model() -> None:
    """Read the profile as the mocker does (1-D linear, bilinear): within 2 % of the model, on and between points."""
    model, system = pm.load_model(MODEL), pm.load_system("h200_sxm")
    plans = _mocker_plans()
    roles = [r for plan in plans.values() for r in plan.roles]
    assert {r.role for r in roles} >= {"prefill", "decode"}
    for r in roles:
        arrays = timing_profile(model, system, r, 4000)
        prefill_scale, decode_scale = step_scales(r)  # the deployed worker's per-step overhead
        tokens = arrays["prefill_isl"]
        between = np.sqrt(tokens[:-1] * tokens[1:])
        for x in (tokens, between):
            want = prefill_scale * pm.prefill_time_ms(model, system, r, x)
            np.testing.assert_allclose(interpolate_prefill(arrays, x), want, rtol=0.02)
        kv, ctx = arrays["decode_active_kv_tokens"], arrays["decode_context_length"]
        for a, c in ((kv, ctx), ((kv[:-1] + kv[1:]) / 2, (ctx[:-1] + ctx[1:]) / 2)):
            aa, cc = np.meshgrid(a, c, indexing="ij")
            # Where the mocker is used: batches the worker admits, contexts the requests reach.
            batch = aa / cc
            keep = (batch >= 1) & (batch <= r.max_batch_size)
            want = np.maximum(decode_scale * pm.decode_step_ms(model, system, r, batch[keep], cc[keep]), 1.0)
            np.testing.assert_allclose(interpolate_decode(arrays, aa[keep], cc[keep]), want, rtol=0.02)


def test_profile_file_has_the_mocker_format() -> None:
    config, plan = pipeline([8], engine="mocker", dynamo="1.6.1", backend="1.3.0rc23"), agg_plan()
    files = render_files(config, plan)
    with np.load(io.BytesIO(files["mocker/agg_profile.npz"])) as npz:
        assert sorted(npz.files) == sorted(
            [
                "prefill_isl",
                "prefill_ttft_ms",
                "decode_active_kv_tokens",
                "decode_context_length",
                "decode_itl",
            ]
        )
        assert npz["decode_itl"].shape == (
            npz["decode_active_kv_tokens"].size,
            npz["decode_context_length"].size,
        )
        for key in ("prefill_isl", "decode_active_kv_tokens", "decode_context_length"):
            assert np.all(np.diff(npz[key]) > 0), f"{key} must ascend"
        assert all(npz[k].dtype == np.float64 for k in npz.files)


def test_prefill_workers_carry_the_expected_kv_link_of_a_router_that_ignores_nodes() -> None:
    """Dynamo's router pairs any prefill worker with any decode worker, so every prefill worker of a plan
    that spans two nodes carries the expected link (half the transfers cross nodes), as the prediction."""
    config = pipeline([8, 8], engine="mocker", dynamo="1.6.1", backend="1.3.0rc23")
    plan = disagg_plan(p_tp=1, p_workers=3, d_tp=2, replicas=3)  # 15 GPUs: two nodes
    files = render_files(config, plan)
    placement = json.loads(files["placement.json"])
    assert {w["node"] for w in placement["workers"]} == {0, 1}
    system = pm.load_system("h200_sxm")
    expected = 1.0 / (0.5 / system.internode_gbs + 0.5 / system.nvlink_gbs)
    assert system.internode_gbs < expected < system.nvlink_gbs
    prefills = 0
    for w in placement["workers"]:
        engine = json.loads(files[w["mocker_config"]])["engine"]
        if w["role"] != "prefill":
            assert "kv_transfer_bandwidth" not in engine
            continue
        prefills += 1
        assert engine["kv_transfer_bandwidth"] == pytest.approx(expected)
    assert prefills == 9
    one_node = render_files(config, disagg_plan(p_tp=1, p_workers=1, d_tp=2, replicas=2))  # 6 GPUs
    engines = [
        json.loads(v)["engine"]
        for k, v in one_node.items()
        if k.startswith("mocker/") and k.endswith(".json")
    ]
    links = [e["kv_transfer_bandwidth"] for e in engines if "kv_transfer_bandwidth" in e]
    assert links and all(link == pytest.approx(system.nvlink_gbs) for link in links)


def _engine_limits(text: str) -> tuple[int, int]:
    """(max_num_tokens, max_batch_size) of a rendered engine YAML, wherever its family puts them."""
    cfg = yaml.safe_load(text)
    limits = cfg.get("build_config", cfg)
    return limits["max_num_tokens"], limits["max_batch_size"]


@pytest.mark.parametrize("mode", ["agg", "disagg"])
def test_the_mocker_runs_the_engine_yaml_limits(mode: str) -> None:
    """A mocker worker stands in for the engine YAML of its role: same token budget, same batch."""
    arch, isl, osl = pm.load_model(MODEL), 4000, 512
    if mode == "agg":
        roles: tuple[RolePlan, ...] = (make_role(arch, "agg", 2, 32, isl, osl),)
    else:
        roles = (make_role(arch, "prefill", 1, 1, isl, osl), make_role(arch, "decode", 2, 64, isl, osl))
    plan = Plan(mode, MODEL, "h200_sxm", roles, 1, isl, osl)
    files = render_files(pipeline([8], engine="mocker", dynamo="1.6.1", backend="1.3.0rc23"), plan)
    placement = json.loads(files["placement.json"])
    assert {w["role"] for w in placement["workers"]} == {r.role for r in roles}
    for w in placement["workers"]:
        engine = json.loads(files[w["mocker_config"]])["engine"]
        tokens, batch = _engine_limits(files[w["config"]].decode())
        assert (engine["max_num_batched_tokens"], engine["max_num_seqs"]) == (tokens, batch), w["id"]
        # ...and that budget never hangs the mocker: a whole prompt fits (chunked prefill is off).
        assert tokens >= isl
