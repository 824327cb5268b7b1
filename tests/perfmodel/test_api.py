"""Public surface: model/system lookup, Plan round trip, search, estimate and the step-time curves."""

from __future__ import annotations

import json

import numpy as np
import pytest

import automation.perfmodel as pm
from automation.errors import InputError
from automation.perfmodel.arch import MODELS_DIR, known_models
from automation.perfmodel.evaluate import make_role


@pytest.mark.parametrize("path", sorted(MODELS_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_every_packaged_model_loads(path):
    hf_id = path.stem.replace("--", "/")
    arch = pm.load_model(hf_id)
    assert arch.num_layers > 0 and arch.hidden > 0 and arch.kv_bytes_per_token_total() > 0
    assert pm.load_model(hf_id.lower()) == arch


def test_quantization_detection():
    assert pm.load_model("Qwen/Qwen3-32B-FP8").gemm_quant == "fp8_block"
    assert pm.load_model("nvidia/Llama-3.1-70B-Instruct-FP8").gemm_quant == "fp8"  # hf_quant_config.json
    assert pm.load_model("nvidia/Llama-3.1-70B-Instruct-FP8").kv_dtype == "fp8"
    assert pm.load_model("Qwen/Qwen3-8B").gemm_quant == "bf16"
    assert pm.load_model("Qwen/Qwen3-8B").kv_dtype == "bf16"
    assert pm.load_model("deepseek-ai/DeepSeek-V3").mla_kv_dim == 576


def _write(dirpath, cfg, hq=None):
    dirpath.mkdir()
    (dirpath / "config.json").write_text(json.dumps(cfg))
    if hq:
        (dirpath / "hf_quant_config.json").write_text(json.dumps(hq))
    return str(dirpath)


def test_local_dense_and_moe_dirs(tmp_path):
    dense = {
        "hidden_size": 1024,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "intermediate_size": 4096,
        "vocab_size": 32000,
    }
    a = pm.load_model(_write(tmp_path / "dense", dense, {"quantization": {"quant_algo": "NVFP4"}}))
    assert not a.is_moe and a.head_dim == 128 and a.gemm_quant == "fp4" and a.kv_dtype == "fp8"
    moe = {
        **dense,
        "num_experts": 16,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 512,
        "quantization_config": {"quant_method": "fp8"},
    }
    b = pm.load_model(_write(tmp_path / "moe", moe))
    assert b.is_moe and b.topk == 2 and b.gemm_quant == "fp8"
    res = pm.search(str(tmp_path / "moe"), "h100_sxm", 8, 1000, 200, 1000, 50, top_n=2)
    assert res.winner in ("agg", "disagg")


def test_unknown_model_and_system():
    with pytest.raises(InputError) as e:
        pm.load_model("Qwen/Qwen3-32B-FP")
    assert e.value.message == "unknown model 'Qwen/Qwen3-32B-FP'" and "\n" not in str(e.value)
    assert "did you mean 'Qwen/Qwen3-32B-FP8'?" in e.value.hint and "config.json" in e.value.hint
    with pytest.raises(InputError) as e:
        pm.load_system("h200")
    assert "unknown system 'h200'" in e.value.message and "h200_sxm" in e.value.hint
    assert "a100_sxm" in pm.load_system("a100_sxm").name
    assert len(known_models()) >= 9


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"isl": 0}, "isl"),
        ({"osl": -1}, "osl"),
        ({"total_gpus": 0}, "total_gpus"),
        ({"ttft_ms": 0}, "ttft_ms"),
        ({"tpot_ms": -2.0}, "tpot_ms"),
        ({"top_n": 0}, "top_n"),
        ({"modes": ("both",)}, "modes"),
    ],
)
def test_bad_search_input(kwargs, name):
    args = {"total_gpus": 8, "isl": 1000, "osl": 100, "ttft_ms": 500.0, "tpot_ms": 20.0, **kwargs}
    with pytest.raises(InputError) as e:
        pm.search("Qwen/Qwen3-8B", "h200_sxm", **args)
    assert name in e.value.message and "\n" not in e.value.message


def test_sla_nothing_meets_gives_closest():
    res = pm.search("Qwen/Qwen3-32B-FP8", "h100_sxm", 8, 8000, 256, 5.0, 1.0, top_n=3)
    assert res.winner is None and res.best is None
    assert 0 < len(res.closest) <= 3
    j = res.to_json()
    assert j["winner"] is None and len(j["closest"]) == len(res.closest)


def test_search_picks_fit_and_meet_sla_and_round_trip():
    res = pm.search("Qwen/Qwen3-32B-FP8", "h200_sxm", 16, 4000, 512, 300.0, 10.0, top_n=3)
    assert res.winner in ("agg", "disagg")
    for mode, cands in res.top.items():
        vals = [c.tokens_per_s_per_gpu_cluster for c in cands]
        assert vals == sorted(vals, reverse=True)
        for c in cands:
            assert c.prediction.fits and c.meets_sla
            assert c.plan.total_gpus <= 16 and c.plan.mode == mode
            d = json.loads(json.dumps(c.plan.to_dict()))
            assert pm.Plan.from_dict(d) == c.plan
            assert pm.estimate(c.plan) == c.prediction
    f = res.frontier["agg"]
    assert np.all(np.diff(f["tokens_per_s_per_user"]) <= 0)
    assert np.all(np.diff(f["tokens_per_s_per_gpu"]) >= 0)


def test_moe_search_is_feasible():
    res = pm.search("Qwen/Qwen3-235B-A22B-FP8", "h200_sxm", 16, 4000, 512, 1000.0, 20.0)
    assert res.winner is not None
    for c in res.top[res.winner]:
        assert c.prediction.fits and c.prediction.memory_gib_per_gpu < 141


def test_predict_at_concurrency_and_curves():
    res = pm.search("Qwen/Qwen3-8B", "h200_sxm", 8, 1000, 1000, 1000.0, 20.0)
    plan = res.best.plan
    design = pm.estimate(plan)
    at = pm.predict_at_concurrency(plan, int(design.concurrency))
    assert at.tpot_ms == pytest.approx(design.tpot_ms, rel=1e-6)
    assert at.ttft_ms == pytest.approx(design.ttft_ms, rel=1e-6)
    low = pm.predict_at_concurrency(plan, 1)
    assert low.tpot_ms <= design.tpot_ms and low.tokens_per_s_per_gpu < design.tokens_per_s_per_gpu
    assert low.ttft_ms < design.ttft_ms
    over = pm.predict_at_concurrency(plan, int(design.concurrency) * 4)
    assert over.ttft_ms > design.ttft_ms
    role = plan.roles[-1]
    pre = pm.prefill_time_ms(plan.model, plan.system, role, np.array([100, 1000, 4000]))
    assert pre.shape == (3,) and np.all(np.diff(pre) > 0)
    dec = pm.decode_step_ms(plan.model, plan.system, role, np.array([[1], [8], [64]]), np.array([100, 2000]))
    assert dec.shape == (3, 2) and np.all(np.diff(dec, axis=0) > 0)
    with pytest.raises(InputError):
        pm.predict_at_concurrency(plan, 0)


def test_plan_round_trip_disagg():
    arch = pm.load_model("Qwen/Qwen3-30B-A3B")
    pre = make_role(arch, "prefill", 2, 1, 4000, 512, workers=3)
    dec = make_role(arch, "decode", 4, 64, 4000, 512, workers=1)
    plan = pm.Plan("disagg", arch.name, "b200_sxm", (pre, dec), 2, 4000, 512)
    assert plan.gpus_per_replica == 10 and plan.total_gpus == 20 and plan.role("decode").parallelism.ep == 4
    again = pm.Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan
    with pytest.raises(InputError):
        pm.Plan.from_dict({**plan.to_dict(), "roles": [{"role": "agg"}]})
    pred = pm.estimate(plan)
    assert pred.fits and pred.ttft_ms > 0 and pred.concurrency == 128


def test_parallelism_is_one_value_type():
    """One named type carries (tp, pp, ep, attention_dp): roles, the ops and the vectorised sweep share it."""
    from automation.perfmodel import compose
    from automation.perfmodel.ops import ParallelismGrid, step_ms
    from automation.perfmodel.plan import Parallelism

    par = Parallelism(tp=1, pp=1, ep=8, attention_dp=8)
    assert (par.gpus, par.moe_tp) == (8, 1)
    assert Parallelism(tp=4, pp=2).gpus == 8 and Parallelism(tp=4, ep=2).moe_tp == 2
    arch, sysc = pm.load_model("Qwen/Qwen3-30B-A3B"), pm.load_system("h200_sxm")
    role = make_role(arch, "decode", 1, 64, 4000, 512, attention_dp=8)
    assert role.parallelism == par and role.gpus_per_worker == 8
    assert pm.RolePlan.from_dict(role.to_dict()) == role
    assert {"tp", "pp", "ep", "attention_dp"} <= set(role.to_dict())  # the state file's flat shape stays
    # A grid of configs gives, element by element, what each config gives alone.
    configs = [Parallelism(tp=t, ep=e) for t, e in ((1, 1), (2, 2), (4, 1), (8, 8))]
    grid = ParallelismGrid.of(configs)
    together = step_ms(arch, sysc, grid, 64.0, 0.0, 0.0, 64.0, 4000.0, 64.0)
    alone = [float(step_ms(arch, sysc, c, 64.0, 0.0, 0.0, 64.0, 4000.0, 64.0)) for c in configs]
    np.testing.assert_allclose(together, alone, rtol=1e-12)
    alone_mem = [float(compose.memory_parts(arch, sysc, c, 4000, 8, 4512, 0.9)["total"]) for c in configs]
    np.testing.assert_allclose(compose.memory_parts(arch, sysc, grid, 4000, 8, 4512, 0.9)["total"], alone_mem)


def test_search_plans_with_the_engine_overrides():
    """Each role's fixed engine settings bound the sweep, and every candidate carries them."""
    from automation.perfmodel.plan import EngineOverrides

    args = ("Qwen/Qwen3-8B", "h200_sxm", 8, 1000, 100, 500.0, 20.0)
    free = pm.search(*args, modes=("agg",))
    assert free.best.plan.role("agg").max_batch_size > 13
    capped = pm.search(
        *args, modes=("agg",), engine={"agg": EngineOverrides(max_batch_size=13, max_num_tokens=3000)}
    )
    assert (
        capped.best.plan.role("agg").max_batch_size == 13
    )  # the cap itself is swept, not only the grid below it
    for c in capped.top["agg"]:
        r = c.plan.role("agg")
        assert r.max_batch_size <= 13 and r.max_num_tokens == 3000
        assert pm.estimate(c.plan) == c.prediction and c.meets_sla
    # A budget that cannot hold a prompt next to the batch leaves nothing to deploy (chunked prefill off).
    tiny = pm.search(*args, modes=("agg",), engine={"agg": EngineOverrides(max_num_tokens=900)})
    assert tiny.winner is None
    decode = EngineOverrides(max_batch_size=24, free_gpu_memory_fraction=0.6)
    dis = pm.search(*args, modes=("disagg",), engine={"decode": decode})
    for c in dis.top["disagg"]:
        d, p = c.plan.role("decode"), c.plan.role("prefill")
        assert d.max_batch_size <= 24 and d.free_gpu_memory_fraction == 0.6
        assert p.free_gpu_memory_fraction == 0.9
        assert pm.estimate(c.plan) == c.prediction
