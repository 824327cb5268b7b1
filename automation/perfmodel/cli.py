"""`autodeploy configure` and `autodeploy estimate`: argparse subparsers over the perf-model API."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from automation.errors import InputError


def _int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    return v


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def add_configure_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `configure`: the perf-model sweep alone (what-if)."""
    p = subparsers.add_parser(
        "configure",
        help="sweep agg/disagg deployments with the performance model and pick the best under an SLA",
        description="Sweep aggregated and disaggregated TRT-LLM deployments and rank them by cluster tokens/s/gpu.",
    )
    p.add_argument("--model", help="HF id (e.g. Qwen/Qwen3-32B-FP8) or a local dir with config.json")
    p.add_argument(
        "--system", help="GPU system: a100_sxm, h100_sxm, h200_sxm, b200_sxm, b300_sxm, gb200, gb300"
    )
    p.add_argument(
        "--total-gpus",
        type=_int,
        help="GPUs in the cluster (with --import-aiconfigurator: default its experiment's)",
    )
    p.add_argument("--gpus-per-node", type=_int, default=None, help="default: the system's (8)")
    p.add_argument("--isl", type=_int, help="input tokens per request")
    p.add_argument("--osl", type=_int, help="output tokens per request")
    p.add_argument("--ttft", type=_float, help="TTFT limit, ms")
    p.add_argument("--tpot", type=_float, help="TPOT limit, ms")
    p.add_argument(
        "--import-aiconfigurator",
        type=Path,
        metavar="DIR",
        default=None,
        help="rank aiconfigurator's result (its --save-dir output) instead of sweeping: its picks, its numbers, "
        "its winner; --model/--system/--isl/--osl (default: its experiment's) give each pick autodeploy's plan",
    )
    p.add_argument(
        "--rank", type=_int, default=1, help="with --import-aiconfigurator: the pick to show as chosen"
    )
    p.add_argument(
        "--mode", choices=("auto", "agg", "disagg"), default="auto", help="auto: both, pick the winner"
    )
    p.add_argument("--top-n", type=_int, default=3, help="candidates to show per mode")
    p.add_argument(
        "--save-dir", type=Path, default=None, help="write pareto.csv, best_config_topn.csv and a plot"
    )
    p.add_argument(
        "--calibration",
        type=Path,
        metavar="FILE",
        default=None,
        help="sweep under a calibration (`autodeploy calibrate ... --out FILE`)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_configure)
    parser: argparse.ArgumentParser = p
    return parser


def add_estimate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `estimate`: one configuration's predicted TTFT/TPOT/throughput."""
    p = subparsers.add_parser(
        "estimate",
        help="predict TTFT, TPOT and throughput of one configuration",
        description="Predict one configuration: agg, disagg (xPyD), or a raw prefill / decode pass.",
    )
    # Required unless --rows gives every row its own (run_estimate checks).
    p.add_argument("--model")
    p.add_argument("--system")
    p.add_argument("--isl", type=_int)
    p.add_argument("--osl", type=_int)
    p.add_argument("--mode", choices=("agg", "disagg", "prefill", "decode"), default="agg")
    p.add_argument("--tp", type=_int, default=None)
    p.add_argument("--pp", type=_int, default=1)
    p.add_argument("--ep", type=_int, default=None, help="MoE expert parallel (default: tp)")
    p.add_argument("--attention-dp", type=_int, default=1)
    p.add_argument("--batch-size", type=_int, default=None)
    p.add_argument("--max-num-tokens", type=_int, default=None, help="agg: default isl + batch size")
    for role in ("prefill", "decode"):
        p.add_argument(f"--{role}-tp", type=_int, default=None)
        p.add_argument(f"--{role}-pp", type=_int, default=1)
        p.add_argument(f"--{role}-ep", type=_int, default=None)
        p.add_argument(f"--{role}-batch-size", type=_int, default=None)
        p.add_argument(f"--{role}-workers", type=_int, default=1)
    p.add_argument("--gpus-per-node", type=_int, default=None)
    p.add_argument(
        "--rows",
        type=Path,
        metavar="ROWS.csv",
        default=None,
        help="predict every row of a measured table (aiconfigurator's silicon-table columns) at its "
        "concurrency instead of one configuration; models: packaged ids, local directories, and "
        "<org>--<name>_config.json files in the directories of $AUTODEPLOY_MODEL_CONFIGS",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="PRED.csv",
        default=None,
        help="with --rows: write id,ttft_ms,tpot_ms,error",
    )
    p.add_argument(
        "--calibration",
        type=Path,
        metavar="FILE",
        default=None,
        help="predict under a calibration (`autodeploy calibrate ... --out FILE`)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_estimate)
    parser: argparse.ArgumentParser = p
    return parser


def _need(args: argparse.Namespace, *names: str) -> None:
    for n in names:
        v = getattr(args, n)
        if v is None:
            raise InputError(f"--{n.replace('_', '-')} is required for --mode {args.mode}", hint="see --help")
        if v <= 0:
            raise InputError(f"--{n.replace('_', '-')} must be > 0 (got {v})", hint="pass a positive number")


def run_configure(args: argparse.Namespace) -> int:
    """Run the sweep and print (or save) the result; 0 even when nothing meets the SLA."""
    from automation.perfmodel.search import search

    if args.import_aiconfigurator is not None:
        return _import_aiconfigurator(args)
    missing = [
        f"--{n.replace('_', '-')}"
        for n in ("model", "system", "total_gpus", "isl", "osl", "ttft", "tpot")
        if getattr(args, n) is None
    ]
    if missing:
        raise InputError(
            f"configure needs {', '.join(missing)}",
            hint="see autodeploy configure --help, or use --import-aiconfigurator DIR",
        )

    modes = ("agg", "disagg") if args.mode == "auto" else (args.mode,)
    res = search(
        args.model,
        args.system,
        args.total_gpus,
        args.isl,
        args.osl,
        args.ttft,
        args.tpot,
        modes=modes,
        top_n=args.top_n,
        gpus_per_node=args.gpus_per_node,
        calibration=str(args.calibration.absolute()) if args.calibration else "",
    )
    if args.save_dir is not None:
        from automation.perfmodel.report import write_search_report

        write_search_report(res, args.save_dir)
    if args.json:
        print(json.dumps(res.to_json()))
        return 0
    _print_configure(res)
    return 0


def _print_configure(res: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console() if sys.stdout.isatty() else Console(width=160)
    con.print(
        f"[bold]{res.model}[/] on {res.total_gpus}× {res.system}, ISL {res.isl}, OSL {res.osl}, "
        f"SLA TTFT ≤ {res.ttft_ms:g} ms, TPOT ≤ {res.tpot_ms:g} ms"
    )
    if res.winner is None:
        if not res.closest:
            con.print(
                f"[red]No configuration meets the SLA[/]: {res.model} does not fit in memory on "
                f"{res.total_gpus}× {res.system} with the swept parallelism."
            )
            return
        con.print("[red]No configuration meets the SLA[/]; the closest candidates:")
        _table(con, Table, "closest", res.closest)
        return
    for mode, cands in res.top.items():
        _table(con, Table, mode, cands)
    _plot(res)
    others = {m: c[0].tokens_per_s_per_gpu_cluster for m, c in res.top.items() if c and m != res.winner}
    best = res.best.tokens_per_s_per_gpu_cluster
    ratio = "".join(f" ({best / v:.2f}x {m})" for m, v in others.items() if v > 0)
    con.print(f"[bold green]winner: {res.winner}[/] {best:.1f} tokens/s/gpu{ratio}")


def _table(con: Any, table_cls: Any, title: str, cands: list[Any]) -> None:
    t = table_cls(title=title)
    for col in (
        "#",
        "mode",
        "config",
        "replicas",
        "tok/s/gpu",
        "tok/s/user",
        "TTFT ms",
        "TPOT ms",
        "conc.",
        "GiB/GPU",
    ):
        t.add_column(col, justify="right")
    for i, c in enumerate(cands, 1):
        t.add_row(
            str(i),
            c.mode,
            c.plan.layout(),
            str(c.plan.replicas),
            f"{c.tokens_per_s_per_gpu_cluster:.1f}",
            f"{c.prediction.tokens_per_s_per_user:.1f}",
            f"{c.prediction.ttft_ms:.1f}",
            f"{c.prediction.tpot_ms:.2f}",
            f"{c.prediction.concurrency:g}",
            f"{c.prediction.memory_gib_per_gpu:.1f}",
        )
    con.print(t)


def _plot(res: Any) -> None:
    """The Pareto frontiers in the terminal (plain characters when stdout is not a terminal)."""
    import plotext as plt

    plt.clf()
    if not sys.stdout.isatty():
        plt.theme("clear")  # no colour codes in files and pipes
    markers = {"agg": "dot", "disagg": "small"}
    for mode, f in res.frontier.items():
        if f["tokens_per_s_per_user"].size:
            xs, ys = list(f["tokens_per_s_per_user"]), list(f["tokens_per_s_per_gpu"])
            plt.plot(xs, ys, label=mode, marker=markers.get(mode, "dot"))
    if res.best is not None:
        best = res.best
        plt.scatter(
            [best.prediction.tokens_per_s_per_user],
            [best.tokens_per_s_per_gpu_cluster],
            label=f"{best.mode} best",
            marker="x",
        )
    plt.xlabel("tokens/s/user")
    plt.ylabel("tokens/s/gpu")
    plt.title(f"Pareto frontier (TPOT ≤ {res.tpot_ms:g} ms means tokens/s/user ≥ {1000 / res.tpot_ms:.0f})")
    plt.plotsize(80, 22)
    canvas = plt.build()
    if not sys.stdout.isatty():
        canvas = re.sub(r"\x1b\[[0-9;]*m", "", canvas)  # the clear theme still emits reset codes
    print(canvas)


def run_estimate(args: argparse.Namespace) -> int:
    """Predict one configuration and print it (table or JSON), or with --rows every row of a table."""
    from automation.perfmodel.evaluate import estimate_cli

    if args.rows is not None or args.out is not None:
        return _estimate_rows(args)
    missing = [f"--{n}" for n in ("model", "system", "isl", "osl") if getattr(args, n) is None]
    if missing:
        raise InputError(
            f"estimate needs {', '.join(missing)}", hint="see autodeploy estimate --help, or --rows"
        )
    out = estimate_cli(args)
    if args.json:
        print(json.dumps(out))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"estimate ({args.mode})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in out.items():
        t.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v))
    Console().print(t)
    return 0


def _estimate_rows(args: argparse.Namespace) -> int:
    """`estimate --rows ROWS.csv --out PRED.csv`: one prediction (or reason) per row, and a summary."""
    from collections import Counter

    from automation.perfmodel.rows import predict_rows, read_rows, write_predictions

    if args.rows is None or args.out is None:
        raise InputError(
            "--rows and --out go together", hint="autodeploy estimate --rows ROWS.csv --out PRED.csv"
        )
    single = [f"--{n.replace('_', '-')}" for n in ("model", "system", "isl", "osl", "tp") if getattr(args, n)]
    if single:
        raise InputError(f"--rows takes each row's own settings; drop {', '.join(single)}", hint="see --help")
    calibration = str(args.calibration.absolute()) if args.calibration else ""
    results = predict_rows(read_rows(args.rows), calibration=calibration)
    try:
        write_predictions(results, args.out)
    except OSError as exc:
        raise InputError(f"cannot write {args.out}: {exc.strerror}", hint="check the --out path") from None
    reasons = Counter(r.kind for r in results if r.error)
    summary = {
        "rows": len(results),
        "predicted": len(results) - sum(reasons.values()),
        "not_predicted": dict(reasons.most_common()),
        "out": str(args.out),
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{summary['predicted']} of {summary['rows']} rows predicted -> {args.out}")
    for kind, n in reasons.most_common():
        print(f"  {n:6}  {kind}")
    return 0


def _import_aiconfigurator(args: argparse.Namespace) -> int:
    """`configure --import-aiconfigurator DIR`: aiconfigurator's ranking in the shape of `configure --json`."""
    from automation import aiconfigurator
    from automation.perfmodel import estimate, load_model
    from automation.perfmodel.evaluate import kv_cache_dtype

    result = aiconfigurator.load(args.import_aiconfigurator)
    chosen = result.pick("auto" if args.mode == "auto" else args.mode, args.rank)
    experiment = result.experiment
    model = args.model or aiconfigurator.experiment_value(experiment, "model_path", "model")
    system = args.system or aiconfigurator.experiment_value(experiment, "system_name", "system")
    isl = args.isl or aiconfigurator.experiment_value(experiment, "isl")
    osl = args.osl or aiconfigurator.experiment_value(experiment, "osl")
    planning: str | None = None
    try:
        arch = load_model(str(model))
        dtype = kv_cache_dtype(arch)
    except InputError as exc:
        planning = f"no autodeploy plan: {exc.message}"

    def describe(pick: aiconfigurator.Pick) -> dict[str, Any]:
        extra: dict[str, Any] = {"chosen": pick is chosen}
        if planning is None:
            plan = aiconfigurator.to_plan(pick, result, str(model), str(system), int(isl), int(osl), dtype)
            prediction = estimate(plan)
            extra["plan"] = plan.to_dict()
            extra["autodeploy"] = {
                k: round(v, 3) if isinstance(v, float) else v for k, v in prediction.to_dict().items()
            }
        return extra

    out = aiconfigurator.configure_json(result, describe)
    if planning:
        out["note"] = planning
    if args.json:
        print(json.dumps(out))
        return 0
    from rich.console import Console
    from rich.table import Table

    con = Console() if sys.stdout.isatty() else Console(width=160)
    con.print(
        f"[bold]aiconfigurator result[/] {result.directory} ({result.layout} layout), {result.total_gpus} GPUs"
    )
    for mode in ("agg", "disagg"):
        rows = out.get(mode) or []
        table = Table(title=mode)
        for column in (
            "#",
            "config",
            "replicas",
            "tok/s/gpu",
            "tok/s/user",
            "TTFT ms",
            "TPOT ms",
            "conc.",
            "autodeploy tok/s/gpu",
        ):
            table.add_column(column, justify="right")
        for row in rows:
            ours = row.get("autodeploy", {}).get("tokens_per_s_per_gpu")
            table.add_row(
                f"{'→' if row['chosen'] else ''}{row['rank']}",
                row["layout"],
                str(row["replicas"]),
                f"{row['tokens_per_s_per_gpu']:.1f}",
                f"{row['tokens_per_s_per_user']:.1f}",
                f"{row['ttft_ms']:.1f}",
                f"{row['tpot_ms']:.2f}",
                f"{row['concurrency']:g}",
                "–" if ours is None else f"{ours:.1f}",
            )
        if rows:
            con.print(table)
    how = (
        "as its result states"
        if result.stated_winner
        else "its rank 1 with the highest tokens/s/gpu over the cluster, as it picks"
    )
    con.print(f"[bold green]aiconfigurator's winner: {out['winner']}[/] ({how})")
    if planning:
        con.print(planning)
    return 0
