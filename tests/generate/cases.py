"""Pipeline configs and plans for the generate tests: the golden cases and builders for random ones."""

from __future__ import annotations

from typing import Any

from automation.config import PipelineConfig, validate_pipeline
from automation.perfmodel.plan import Parallelism, Plan, RolePlan, max_num_tokens

MODEL = "Qwen/Qwen3-32B-FP8"


def role(
    name: str,
    tp: int = 1,
    workers: int = 1,
    batch: int = 8,
    tokens: int = 4096,
    pp: int = 1,
    chunked: bool = False,
    seq: int = 4512,
    ep: int = 1,
    attention_dp: int = 1,
) -> RolePlan:
    return RolePlan(
        role=name,
        parallelism=Parallelism(tp=tp, pp=pp, ep=ep, attention_dp=attention_dp),
        workers=workers,
        max_batch_size=batch,
        max_num_tokens=tokens,
        max_seq_len=seq,
        enable_chunked_prefill=chunked,
        free_gpu_memory_fraction=0.85,
        kv_cache_dtype="fp8",
        tokens_per_block=32,
    )


def agg_plan(tp: int = 2, replicas: int = 1, batch: int = 48, model: str = MODEL) -> Plan:
    return Plan(
        mode="agg",
        model=model,
        system="h200_sxm",
        roles=(role("agg", tp=tp, batch=batch, tokens=4000 + batch),),
        replicas=replicas,
        isl=4000,
        osl=512,
    )


def disagg_plan(
    p_tp: int = 1, p_workers: int = 2, d_tp: int = 2, d_workers: int = 1, replicas: int = 3, d_batch: int = 64
) -> Plan:
    return Plan(
        mode="disagg",
        model=MODEL,
        system="h200_sxm",
        roles=(
            role("prefill", tp=p_tp, workers=p_workers, batch=1, tokens=4032),
            role(
                "decode",
                tp=d_tp,
                workers=d_workers,
                batch=d_batch,
                tokens=max_num_tokens("decode", 4000, d_batch),
            ),
        ),
        replicas=replicas,
        isl=4000,
        osl=512,
    )


def pipeline(
    nodes: list[int],
    engine: str = "trtllm",
    dynamo: str | dict[str, Any] = "1.3.0",
    backend: str | None = None,
    runtime: str = "container",
    engine_settings: dict[str, Any] | None = None,
    checked: bool = True,
    **sections: Any,
) -> PipelineConfig:
    """A pipeline for the generate tests; `checked=False` skips the load-time deployability checks
    (versions, engine.extra), so that generate's own refusal of such a config is tested too."""
    data: dict[str, Any] = {
        "name": "golden",
        "model": {"hf_id": MODEL, "path": "/models/qwen3-32b-fp8"},
        "system": "h200_sxm",
        "workload": {"isl": 4000, "osl": 512},
        "sla": {"ttft_ms": 300, "tpot_ms": 10},
        "dynamo": {"version": dynamo} if isinstance(dynamo, str) else dynamo,
        "cluster": {
            "nodes": [{"host": f"10.0.0.{i + 1}", "gpus": g} for i, g in enumerate(nodes)],
            "work_dir": "/srv/autodeploy",
        },
        "launch": {"engine": engine, "runtime": runtime},
    }
    if backend:
        data["backend"] = {"version": backend}
    if engine_settings:
        data["engine"] = engine_settings
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return validate_pipeline(data) if checked else PipelineConfig.model_validate(data)


def golden_cases() -> dict[str, tuple[PipelineConfig, Plan]]:
    """Representative deployments, each checked file by file against tests/data/golden/<case>/."""
    return {
        # One node, aggregated, current Dynamo and TRT-LLM (top-level batch limits).
        "agg_1node": (pipeline([8]), agg_plan(tp=2, replicas=4)),
        # Two nodes, 3 replicas of 2P(tp1)+1D(tp2): two replicas on node 0, one on node 1.
        "disagg_2nodes": (pipeline([8, 8]), disagg_plan()),
        # 3 replicas of 5 GPUs on 2×8: the third replica must span both nodes.
        "mixed_span": (
            pipeline([8, 8], engine="trtllm"),
            disagg_plan(p_tp=1, p_workers=3, d_tp=2, d_workers=1, replicas=3),
        ),
        # TRT-LLM families; Dynamo 0.5 (legacy flags and component names) with 1.0.0rc6.
        "family_1.0_dynamo_0.5": (pipeline([8, 8], dynamo="0.5.0"), disagg_plan(replicas=2)),
        "family_1.1": (pipeline([8], dynamo="0.6.0"), agg_plan(tp=4, replicas=2)),
        "family_1.2_build_config": (pipeline([8], dynamo="0.7.1"), agg_plan(tp=8)),
        "family_1.2_top_level": (pipeline([8], dynamo="0.8.0"), agg_plan(tp=1, replicas=8)),
        # 1.3 with per-role engine extras, the KV router and another namespace on 2 × 4 GPUs.
        "family_1.3": (
            pipeline(
                [4, 4],
                dynamo={"version": "1.2.0", "router_mode": "kv", "namespace": "prod"},
                engine_settings={
                    "extra": {"print_iter_log": True},
                    "decode": {"extra": {"kv_cache_config": {"host_cache_size": 1000000000}}},
                },
            ),
            disagg_plan(p_tp=2, p_workers=1, d_tp=2, d_workers=1, replicas=2),
        ),
        # The rehearsal: mocker engine on the host, loopback, one node.
        "mocker_1node": (
            pipeline(
                [8],
                engine="mocker",
                dynamo="1.6.1",
                backend="1.3.0rc23",
                runtime="host",
                launch={"python": "/opt/dynamo-venv/bin/python", "env": {"DYN_TCP_RPC_HOST": "127.0.0.1"}},
                cluster={
                    "nodes": [{"host": "127.0.0.1", "gpus": 8, "connect": "local"}],
                    "work_dir": "/tmp/ad",
                },
            ),
            disagg_plan(p_tp=1, p_workers=1, d_tp=2, d_workers=1, replicas=2),
        ),
    }
