"""The configure stage: sweep the performance model and pick the best deployment under the SLA."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automation.config import PipelineConfig
from automation.contracts import ConfigureOutputs
from automation.errors import InputError, StageError
from automation.stage import Stage, StageContext

if TYPE_CHECKING:
    from automation.perfmodel.plan import EngineOverrides, Plan, Role


def model_reference(config: PipelineConfig) -> str:
    """What the performance model loads: a local config directory when given, else the HF id."""
    return str(config.model.config_dir) if config.model.config_dir else config.model.hf_id


def engine_overrides(config: PipelineConfig) -> dict[Role, EngineOverrides]:
    """The pipeline's engine settings per role (engine.<role> over engine.*), as the sweep takes them."""
    from automation.perfmodel.plan import ROLES, EngineOverrides

    return {role: EngineOverrides.from_settings(config.engine.for_role(role)) for role in ROLES}


def deployed_plan(config: PipelineConfig, plan: Plan) -> Plan:
    """The picked plan widened to admit real traffic: max_seq_len = workload.max_seq_len, by default the
    model's context length bounded by the smallest KV cache of one worker (a request longer than that
    could never be held), with chunked prefill where a prompt may exceed max_num_tokens.

    Raises:
        InputError: workload.max_seq_len is below isl + osl, above the model's context length, or above
            what one worker's KV cache holds.
    """
    from automation.perfmodel import load_model, load_system
    from automation.perfmodel.evaluate import kv_capacity_tokens
    from automation.perfmodel.plan import ROLES, admit_requests

    arch, system = load_model(plan.model), load_system(plan.system)
    capacity = min(kv_capacity_tokens(arch, system, role) for role in plan.roles)
    wanted = config.workload.max_seq_len
    if wanted is None:
        longest = min(arch.context_length or capacity, capacity)
        wanted = max(longest, plan.isl + plan.osl)
    elif arch.context_length and wanted > arch.context_length:
        raise InputError(
            f"workload.max_seq_len {wanted} is above {config.model.hf_id}'s context length "
            f"({arch.context_length} tokens)",
            hint=f"lower workload.max_seq_len to at most {arch.context_length}, or remove it",
        )
    elif wanted > capacity:
        raise InputError(
            f"workload.max_seq_len {wanted}: one worker of the picked plan ({plan.layout()}) holds only "
            f"{capacity} tokens of KV cache",
            hint=f"lower workload.max_seq_len to at most {capacity}, or remove it",
        )
    chunked = {role: config.engine.for_role(role).get("enable_chunked_prefill") for role in ROLES}
    return admit_requests(plan, wanted, chunked)


def imported_plan(config: PipelineConfig, result: Any, pick: Any) -> Plan:
    """An aiconfigurator pick as the plan autodeploy deploys: its layout over the whole cluster, widened to
    admit real requests as autodeploy's own pick is (deployed_plan)."""
    from automation import aiconfigurator
    from automation.perfmodel import load_model
    from automation.perfmodel.evaluate import kv_cache_dtype

    arch = load_model(model_reference(config))
    plan = aiconfigurator.to_plan(
        pick,
        result,
        model_reference(config),
        config.system,
        config.workload.isl,
        config.workload.osl,
        kv_cache_dtype(arch),
    )
    return deployed_plan(config, plan)


def calibration_inputs(config: PipelineConfig) -> dict[str, Any]:
    """What configure's fingerprint holds of the calibration: its path and content (an edited file
    plans again); nothing when none is named, so that runs from before calibrations keep theirs."""
    import hashlib

    ref = config.perfmodel.reference
    if not ref:
        return {}
    try:
        digest = hashlib.sha256(Path(ref).read_bytes()).hexdigest()
    except OSError:
        digest = "unreadable"  # configure names the problem when it reads the file
    return {"calibration": {"path": ref, "sha256": digest}}


def benchmark_method(config: PipelineConfig) -> Any:
    """How the benchmark will measure (requests per user, warm-up method): what the predictions model,
    since TTFT depends on it (a burst's first batch queues; docs/benchmark.md)."""
    from automation.perfmodel.queueing import Method

    bench = config.benchmark
    return Method(requests_per_concurrency=bench.requests_per_concurrency, warmup=bench.warmup)


def calibration_in_force(plan: Plan) -> str | None:
    """One line naming the plan's calibration and its factors (None: the shipped fit alone)."""
    from automation.perfmodel.calibration import describe

    return describe(plan.calibration, plan.system) if plan.calibration else None


def _estimate(plan: Plan, config: PipelineConfig) -> Any:
    from automation.perfmodel.evaluate import estimate

    return estimate(plan, method=benchmark_method(config))


class Configure(Stage):
    """Sweep parallelism, batch and serving mode with the embedded model; pick the best under the SLA.

    Done: the picked plan (what generate renders), its prediction, the top-N per mode and the Pareto
    frontiers are recorded, and configure/ holds search.json, the CSVs and the frontier plot.
    Verify: trusts the record (the sweep is deterministic in its inputs).
    """

    name = "configure"
    summary = "sweep the performance model, pick the best config under the SLA"
    needs = ()
    Outputs = ConfigureOutputs
    revision = 4  # 4: max_seq_len admits real requests (workload.max_seq_len), chunked prefill to match

    def inputs(self, config: PipelineConfig) -> Mapping[str, Any]:
        return {
            "model": model_reference(config),
            "system": config.system,
            "workload": config.workload.model_dump(),
            "sla": config.sla.model_dump(),
            "search": config.search.model_dump(),
            "engine": config.engine.model_dump(),
            "gpus_per_node": [node.gpus for node in config.cluster.nodes],
            "source": config.configure.model_dump(mode="json"),
            **calibration_inputs(config),
        }

    def run(self, ctx: StageContext) -> ConfigureOutputs:
        from automation.perfmodel import search
        from automation.perfmodel.report import write_search_report

        config = ctx.config
        if config.configure.source == "aiconfigurator":
            return self._from_aiconfigurator(ctx)
        ctx.display.status("sweeping")
        result = search(
            model_reference(config),
            config.system,
            config.search.total_gpus or config.cluster_gpus,
            config.workload.isl,
            config.workload.osl,
            config.sla.ttft_ms,
            config.sla.tpot_ms,
            modes=tuple(config.search.modes),
            top_n=config.search.top_n,
            # A worker must fit on one node; the smallest node bounds it.
            gpus_per_node=min(node.gpus for node in config.cluster.nodes),
            engine=engine_overrides(config),
            method=benchmark_method(config),
            calibration=config.perfmodel.reference,
        )
        directory = ctx.path("configure")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "search.json").write_text(json.dumps(result.to_json(), indent=2))
        write_search_report(result, directory)
        if result.winner is None:
            closest = result.closest[0] if result.closest else None
            near = (
                f"; the closest reaches TTFT {closest.prediction.ttft_ms:.0f} ms, TPOT {closest.prediction.tpot_ms:.1f} ms"
                if closest
                else ""
            )
            raise StageError(
                f"no configuration meets the SLA (TTFT ≤ {config.sla.ttft_ms:g} ms, TPOT ≤ {config.sla.tpot_ms:g} ms) "
                f"for {config.model.hf_id} on {config.search.total_gpus or config.cluster_gpus} × {config.system}{near}",
                hint="relax sla.ttft_ms / sla.tpot_ms, add GPUs, or change the workload; "
                "configure/search.json lists the closest candidates",
            )
        best = result.best
        assert best is not None
        # The sweep planned with the pipeline's engine settings: its pick is deployed as it is, and its
        # prediction (estimate of exactly this plan) met the SLA and fits in memory.
        plan, prediction = best.plan, best.prediction
        if not (best.meets_sla and prediction.fits):
            raise StageError(
                f"the picked {plan.mode} plan ({plan.layout()}) does not meet the SLA by its own estimate",
                hint="this is a bug in the performance model's sweep; report it with configure/search.json",
            )
        plan = deployed_plan(config, plan)
        ctx.log.info("picked %s: %s", result.winner, json.dumps(plan.to_dict()))
        return ConfigureOutputs(
            mode=plan.mode,
            plan=plan,
            prediction=prediction,
            tokens_per_s_per_gpu_cluster=best.tokens_per_s_per_gpu_cluster,
            winner=result.winner,
            top={mode: [c.to_row() for c in candidates] for mode, candidates in result.top.items()},
            report_dir="configure",
            calibration=calibration_in_force(plan),
        )

    def _from_aiconfigurator(self, ctx: StageContext) -> ConfigureOutputs:
        """aiconfigurator's pick (configure.mode, configure.rank) deployed over the whole cluster."""
        from automation import aiconfigurator

        config = ctx.config
        directory = config.configure.aiconfigurator_dir
        if directory is None:
            ctx.display.status("running aiconfigurator cli default (20 s to minutes)")
            directory = aiconfigurator.run_aiconfigurator(
                config.model.hf_id,
                config.system,
                config.search.total_gpus or config.cluster_gpus,
                config.workload.isl,
                config.workload.osl,
                config.sla.ttft_ms,
                config.sla.tpot_ms,
                ctx.path("configure", "aiconfigurator"),
                ctx.log.info,
            )
        result = aiconfigurator.load(Path(directory))
        pick = result.pick(config.configure.mode, config.configure.rank)
        plan = replace(imported_plan(config, result, pick), calibration=config.perfmodel.reference)
        prediction = _estimate(plan, config)
        theirs = aiconfigurator.own_numbers(pick, result)
        ctx.log.info("imported %s rank %d from %s: %s", pick.mode, pick.rank, result.directory, pick.layout())
        ranking = aiconfigurator.configure_json(result)
        top = {mode: list(ranking[mode]) for mode in ("agg", "disagg") if mode in ranking}
        return ConfigureOutputs(
            mode=plan.mode,
            plan=plan,
            prediction=prediction,
            tokens_per_s_per_gpu_cluster=prediction.tokens_per_s_per_gpu
            * plan.total_gpus
            / (config.search.total_gpus or config.cluster_gpus),
            winner=str(result.winner or ""),
            top=top,
            report_dir="configure",
            calibration=calibration_in_force(plan),
            source="aiconfigurator",
            aiconfigurator={
                "directory": str(result.directory),
                "layout": result.layout,
                "mode": pick.mode,
                "rank": pick.rank,
                "config": pick.layout(),
                "winner": result.winner,
                **theirs,
            },
        )

    def describe(self, outputs: ConfigureOutputs) -> str:
        plan, prediction = outputs.plan, outputs.prediction
        if outputs.source == "aiconfigurator" and outputs.aiconfigurator:
            theirs = outputs.aiconfigurator
            return (
                f"{plan.mode} from aiconfigurator (rank {theirs['rank']}): {plan.replicas} replica(s) of "
                f"{plan.layout()}; aiconfigurator predicts {theirs['tokens_per_s_per_gpu']:.0f} tok/s/gpu, "
                f"autodeploy {prediction.tokens_per_s_per_gpu:.0f}"
            )
        return (
            f"{plan.mode}: {plan.replicas} replica(s) of {plan.layout()}; predicted "
            f"{outputs.tokens_per_s_per_gpu_cluster:.0f} tok/s/gpu, TTFT {prediction.ttft_ms:.0f} ms, "
            f"TPOT {prediction.tpot_ms:.1f} ms"
        )
