"""Analytic performance model of TRT-LLM serving (agg and disagg): sweep, estimate, step-time curves."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from automation.perfmodel.plan import EngineOverrides, Parallelism, Plan, Prediction, RolePlan, role_plan

if TYPE_CHECKING:
    from automation.perfmodel.arch import ModelArch, load_model
    from automation.perfmodel.evaluate import (
        decode_step_ms,
        estimate,
        predict_at_concurrency,
        prefill_time_ms,
    )
    from automation.perfmodel.search import Candidate, SearchResult, search
    from automation.perfmodel.system import SystemSpec, load_system

__all__ = [
    "Candidate",
    "EngineOverrides",
    "ModelArch",
    "Parallelism",
    "Plan",
    "Prediction",
    "RolePlan",
    "SearchResult",
    "SystemSpec",
    "decode_step_ms",
    "estimate",
    "load_model",
    "load_system",
    "predict_at_concurrency",
    "prefill_time_ms",
    "role_plan",
    "search",
]

# Lazy: importing the package costs only the plan dataclasses; numpy loads on first use.
_LAZY = {
    "ModelArch": "arch",
    "load_model": "arch",
    "SystemSpec": "system",
    "load_system": "system",
    "estimate": "evaluate",
    "predict_at_concurrency": "evaluate",
    "prefill_time_ms": "evaluate",
    "decode_step_ms": "evaluate",
    "search": "search",
    "SearchResult": "search",
    "Candidate": "search",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'automation.perfmodel' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"automation.perfmodel.{mod}"), name)
    globals()[name] = value
    return value
