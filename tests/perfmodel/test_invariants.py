"""Monotonicity and consistency invariants of the perf model."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from automation.perfmodel import compose
from automation.perfmodel.arch import load_model
from automation.perfmodel.plan import Parallelism
from automation.perfmodel.system import load_system

MODELS = ["Qwen/Qwen3-8B", "Qwen/Qwen3-32B-FP8", "Qwen/Qwen3-30B-A3B", "Qwen/Qwen3-235B-A22B-FP8"]


@pytest.mark.parametrize("model", MODELS)
def test_more_tp_never_raises_weight_memory(model):
    arch = load_model(model)
    ep = [tp if arch.is_moe else 1 for tp in (1, 2, 4, 8)]
    w = [
        float(compose.weights_bytes_per_gpu(arch, Parallelism(tp=tp, ep=e)))
        for tp, e in zip((1, 2, 4, 8), ep, strict=True)
    ]
    assert all(a >= b for a, b in itertools.pairwise(w))


@pytest.mark.parametrize("system", ["h100_sxm", "h200_sxm", "b200_sxm", "a100_sxm"])
@pytest.mark.parametrize("model", MODELS)
def test_tpot_grows_with_batch_and_ttft_with_isl(model, system):
    arch, sysc = load_model(model), load_system(system)
    ep = 4 if arch.is_moe else 1
    b = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256], dtype=float)
    tpot = compose.decode_tpot_ms(arch, sysc, Parallelism(tp=4, ep=ep), b, 2000, 500)
    assert np.all(np.diff(tpot) > 0)
    isl = np.array([128, 512, 1000, 2000, 4000, 8000, 16000], dtype=float)
    ttft = compose.prefill_ms(arch, sysc, Parallelism(tp=4, ep=ep), 1, isl)
    assert np.all(np.diff(ttft) > 0)
    kv = np.array([100, 1000, 10000], dtype=float)
    assert np.all(np.diff(compose.decode_ms(arch, sysc, Parallelism(tp=4, ep=ep), 32, kv)) > 0)


def test_agg_tpot_and_ttft_grow_with_batch():
    arch, sysc = load_model("Qwen/Qwen3-32B-FP8"), load_system("h200_sxm")
    b = np.array([2, 4, 16, 64, 128], dtype=float)
    m = compose.agg_metrics(arch, sysc, Parallelism(tp=2), b, 4000, 4000, 512)
    assert np.all(np.diff(m["tpot_ms"]) > 0)
    assert np.all(np.diff(m["ttft_ms"]) > 0)
    assert np.all(np.diff(m["tokens_s"]) > 0)


def test_kv_budget_caps_batch():
    arch, sysc = load_model("nvidia/Llama-3.1-70B-Instruct-FP8"), load_system("h100_sxm")
    m = compose.memory_parts(arch, sysc, Parallelism(tp=1), 8192, np.array([1.0, 256.0]), 4512, 0.9)
    assert m["fits"].tolist() == [True, False]
    lower = compose.memory_parts(arch, sysc, Parallelism(tp=1), 8192, 1.0, 4512, 0.5)
    assert float(lower["kv_budget"]) < float(m["kv_budget"])


def test_faster_system_is_faster():
    arch = load_model("Qwen/Qwen3-32B-FP8")
    t = [
        float(compose.decode_tpot_ms(arch, load_system(s), Parallelism(tp=1), 64, 4000, 512))
        for s in ("a100_sxm", "h100_sxm", "h200_sxm", "b200_sxm")
    ]
    assert t == sorted(t, reverse=True)
