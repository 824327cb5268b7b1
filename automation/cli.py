"""Command line: argument parsing and exit codes only; the work is done by the modules it calls."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automation import __version__
from automation.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    AutodeployError,
    ConfigError,
    InputError,
)

if TYPE_CHECKING:  # the heavy modules load only for the commands that use them (configure must start fast)
    from automation.console import Console
    from automation.pipeline import Runner, Selection
    from automation.stage import Stage


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors end with exit code 2 and one line naming the fix."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"{self.prog}: {message}", hint=f"see {self.prog} --help")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors"
    )
    parser = _Parser(
        prog="autodeploy",
        description="From a model, a GPU cluster and an SLA to a measured Dynamo + TensorRT-LLM deployment.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"autodeploy {__version__}")
    commands: Any = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def pipeline_command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(
            name, help=help_text, description=help_text, parents=[common]
        )
        sub.add_argument("pipeline", type=Path, help="the pipeline file (YAML)")
        sub.add_argument("--run-dir", type=Path, help="run directory (default: ./autodeploy-runs/<name>)")
        return sub

    def selection_flags(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--from", dest="from_stage", metavar="STAGE", help="re-run STAGE and every stage after it"
        )
        sub.add_argument("--only", metavar="STAGE[,STAGE]", help="run just these stages (even if done)")
        sub.add_argument("--to", dest="to_stage", metavar="STAGE", help="stop after STAGE")
        sub.add_argument("--force", action="store_true", help="re-run every selected stage, done or not")

    run = pipeline_command("run", "run the pipeline; resumes where it stopped, skipping what is done")
    selection_flags(run)
    run.set_defaults(func=_run)

    plan = pipeline_command("plan", "print what `run` would do, stage by stage, and why; runs nothing")
    selection_flags(plan)
    plan.set_defaults(func=_plan)

    status = commands.add_parser(
        "status", help="the stage table of a run", description="the stage table of a run", parents=[common]
    )
    status.add_argument(
        "target",
        nargs="?",
        type=Path,
        help="pipeline file or run directory (default: list ./autodeploy-runs)",
    )
    status.add_argument("--run-dir", type=Path, help="run directory, when target is a pipeline file")
    status.add_argument("--json", action="store_true", help="print the state file's content")
    status.set_defaults(func=_status)

    down = pipeline_command("down", "stop the workers and the etcd/NATS of a run, on every node")
    down.set_defaults(func=_down)

    validate = pipeline_command("validate", "check a pipeline file and print every problem, one line each")
    validate.add_argument(
        "--resolved", action="store_true", help="print the file with every default filled in"
    )
    validate.set_defaults(func=_validate)

    compare = commands.add_parser(
        "compare",
        help="two runs' measured levels side by side: the change and whether it exceeds their spread",
        description="two runs' measured levels side by side: the change B/A − 1 per concurrency and "
        "whether it exceeds the runs' own spread (a 90 % bootstrap interval over the requests)",
        parents=[common],
    )
    compare.add_argument("run_a", type=Path, metavar="RUN_A", help="the baseline run directory")
    compare.add_argument("run_b", type=Path, metavar="RUN_B", help="the run directory compared with it")
    compare.add_argument("--json", action="store_true", help="print the comparison as JSON")
    compare.add_argument(
        "--plot", type=Path, metavar="FILE", help="the plot's file (default: RUN_B/report/compare_<A>.png)"
    )
    compare.set_defaults(func=_compare)

    export = commands.add_parser(
        "export",
        help="write a run's measured levels in another tool's format",
        description="write a run's measured levels in another tool's format (aiconfigurator-silicon: "
        "rows of aiconfigurator's measured-silicon table, one per concurrency level)",
        parents=[common],
    )
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run directory")
    export.add_argument("--format", required=True, choices=["aiconfigurator-silicon"], help="the format")
    export.add_argument(
        "--out", type=Path, metavar="FILE", help="the file (default: RUN_DIR/report/silicon_rows.csv)"
    )
    export.set_defaults(func=_export)

    report = commands.add_parser(
        "report",
        help="write a run's report/ again from what its run directory records",
        description="write RUN_DIR/report/ (summary.md, summary.json, the plots) again from the run's "
        "records alone (state.json, pipeline.resolved.yaml, bench/, configure/), exactly as the "
        "summarize stage writes it; the deployment and the network are not touched",
        parents=[common],
    )
    report.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run directory")
    report.set_defaults(func=_report)

    calibrate = commands.add_parser(
        "calibrate",
        help="fit the performance model's per-system factors to measurements; write a calibration file",
        description="fit, per GPU system, a factor on the model's prefill steps, one on its decode steps "
        "and an extra fixed cost per request to measured TTFT and TPOT: the levels of finished runs "
        "(run directories) and rows of measured-silicon CSVs (the columns `estimate --rows` reads). The "
        "file records its sources and the errors before and after; use it with perfmodel.calibration.",
        parents=[common],
    )
    calibrate.add_argument(
        "sources", type=Path, nargs="+", metavar="SOURCE", help="a run directory or a measured-rows CSV"
    )
    calibrate.add_argument("--out", type=Path, required=True, metavar="FILE", help="the calibration file")
    calibrate.add_argument(
        "--system", action="append", default=[], metavar="NAME", help="fit only this system (repeatable)"
    )
    calibrate.set_defaults(func=_calibrate)

    _add_perfmodel_commands(commands, common)
    return parser


def _add_perfmodel_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    # Light imports only: `autodeploy configure` must start in a fraction of a second.
    from automation.perfmodel.cli import add_configure_parser, add_estimate_parser

    for add in (add_configure_parser, add_estimate_parser):
        sub = add(commands)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")


# ---------------------------------------------------------------------------------------- commands


def _console() -> Console:
    from automation.console import Console

    return Console()


def _runner(args: argparse.Namespace, stages: Sequence[type[Stage]] | None = None) -> Runner:
    from automation.config import load_pipeline
    from automation.pipeline import STAGES, Runner

    config = load_pipeline(args.pipeline)
    return Runner(
        config,
        args.pipeline,
        run_dir=args.run_dir,
        console=_console(),
        stages=stages or STAGES,
        debug=getattr(args, "debug", False),
    )


def _selection(args: argparse.Namespace) -> Selection:
    from automation.pipeline import Selection

    only = tuple(s.strip() for s in args.only.split(",") if s.strip()) if args.only else ()
    return Selection(from_stage=args.from_stage, only=only, to_stage=args.to_stage, force=args.force)


def _run(args: argparse.Namespace) -> int:
    return _runner(args, args.stages).run(_selection(args))


def _plan(args: argparse.Namespace) -> int:
    runner = _runner(args, args.stages)
    symbols = {"run": "→", "skip": "↷", "leave": "·"}
    words = {"run": "will run", "skip": "skip", "leave": ""}
    runner.console.line(f"plan for {runner.config.name}  ({runner.run_dir})", "bold")
    decisions = runner.plan(_selection(args))
    for decision in decisions:
        verb = words[decision.action]
        text = f"{verb}: {decision.reason}" if verb else decision.reason
        runner.console.line(f"{symbols[decision.action]} {decision.stage:<11} {text}")
    from automation import node_runtime
    from automation.stages.build import plan_image

    if any(d.stage == "build" for d in decisions):
        will_build = any(d.stage == "build" and d.action == "run" for d in decisions)
        runner.console.line("image", "bold")
        for line in plan_image(runner.config, will_build):
            runner.console.line(f"  {line}")

    launched = runner.typed_outputs(runner.load()).get("launch")
    runner.console.line("nodes", "bold")
    for line in node_runtime.describe(runner.config, node_runtime.recorded(launched)):
        runner.console.line(f"  {line}")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from automation.pipeline import default_run_dir
    from automation.state import STATE_FILE, load_state

    console = _console()
    target: Path | None = args.target
    if target is None:
        return _list_runs(console, Path("autodeploy-runs"))
    if target.is_dir():
        run_dir = target
    else:
        from automation.config import load_pipeline

        run_dir = args.run_dir or default_run_dir(load_pipeline(target))
    state = load_state(run_dir / STATE_FILE)
    if state is None:
        raise InputError(f"{run_dir}: no run has been started here", hint=f"autodeploy run {target}")
    if args.json:
        print(state.model_dump_json(indent=2))
        return EXIT_OK
    from automation.console import format_seconds
    from automation.pipeline import STAGES

    stages = {cls.name: cls() for cls in (args.stages or STAGES)}
    rows = []
    for name, record in state.stages.items():
        note = ""
        if record.error:
            note = f"{record.error.get('message', '')} ({record.error.get('log', '')})"
        elif record.done and name in stages:
            from automation.contracts import recorded

            outputs = recorded(stages[name].Outputs, record.outputs)
            note = stages[name].describe(outputs) if outputs is not None else ""
        duration = format_seconds(record.duration_s) if record.duration_s is not None else ""
        finished = (record.finished_at or "")[11:19]  # the time of day; the date is in the title
        rows.append([name, record.status.value, record.attempts or "", duration, finished, note])
    console.table(
        f"run {state.run_id} ({run_dir}), updated {state.updated_at[:19].replace('T', ' ')} UTC",
        ["stage", "status", "tries", "took", "finished", "result"],
        rows,
    )
    return EXIT_OK


def _list_runs(console: Console, root: Path) -> int:
    from automation.state import STATE_FILE, load_state

    rows = []
    for state_file in sorted(root.glob(f"*/{STATE_FILE}")):
        try:
            state = load_state(state_file)
        except AutodeployError as exc:
            rows.append([state_file.parent.name, "unreadable", exc.message])
            continue
        if state is None:
            continue
        done = sum(1 for r in state.stages.values() if r.done)
        unfinished = next((n for n, r in state.stages.items() if not r.done), "")
        rows.append([state.run_id, f"{done}/{len(state.stages)} done", unfinished and f"next: {unfinished}"])
    if not rows:
        console.line(f"no runs under {root}/; start one with: autodeploy run PIPELINE.yaml")
        return EXIT_OK
    console.table(f"runs under {root}/", ["run", "stages", "note"], rows)
    return EXIT_OK


def _down(args: argparse.Namespace) -> int:
    return _runner(args, args.stages).down()


def _validate(args: argparse.Namespace) -> int:
    from automation.config import load_pipeline, resolved_yaml

    config = load_pipeline(args.pipeline)
    if args.resolved:
        print(resolved_yaml(config), end="")
    else:
        _console().line(f"✓ {args.pipeline} is valid: {config.name}, {len(config.cluster.nodes)} node(s)")
    return EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    import json

    from automation import baseline

    comparison = baseline.compare_runs(args.run_a, args.run_b)
    plot = baseline.plot(comparison, args.plot or baseline.default_plot_path(comparison))
    if args.json:
        print(json.dumps({**comparison.to_dict(), "plot": str(plot)}, indent=2))
        return EXIT_OK
    console = _console()
    for note in [*comparison.a.skipped, *comparison.b.skipped]:
        console.line(f"note: {note}")
    console.table(*baseline.table(comparison))
    console.line(baseline.SPREAD_RULE)
    console.line(f"plot: {plot}")
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from automation import silicon_export

    result = silicon_export.export(args.run_dir, args.out)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    _console().line(f"✓ {len(result.rows)} row(s) ({args.format}) written to {result.path}")
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from automation import report
    from automation.stages.summarize import write_report

    record = report.read_run(args.run_dir)
    written = write_report(record, report.run_dir_writer(record))
    _console().line(f"✓ {args.run_dir}: {', '.join(written.files)}")
    return EXIT_OK


def _calibrate(args: argparse.Namespace) -> int:
    from automation import calibrate

    console = _console()
    gathered = calibrate.gather(args.sources)
    for g in gathered:
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(g.skipped.items()))
        console.line(f"{g.source.path}: {g.source.points} point(s)" + (f"; left out: {why}" if why else ""))
    fits = calibrate.fit_all(gathered, args.system, console.line)
    calibrate.write(args.out, calibrate.calibration_file(gathered, fits))
    console.table(f"calibration -> {args.out}", calibrate.TABLE_COLUMNS, calibrate.table_rows(fits))
    console.line(
        f"use it: perfmodel: {{calibration: {args.out}}} in the pipeline, or --calibration {args.out}"
    )
    return EXIT_OK


# ------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None, stages: Sequence[type[Stage]] | None = None) -> int:
    """Entry point. `stages` replaces the pipeline's stage list (test harnesses only)."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_BAD_INPUT
        args.stages = stages
        return int(args.func(args))
    except ConfigError as exc:
        if debug:
            traceback.print_exc()
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        if exc.hint:
            print(f"  fix: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except AutodeployError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  fix: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if debug:
            traceback.print_exc()
        else:
            print(
                f"error: unexpected {type(exc).__name__}: {exc} (this is a bug; --debug shows the traceback)",
                file=sys.stderr,
            )
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
