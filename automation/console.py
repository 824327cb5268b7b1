"""What a person sees: one line per stage, a spinner or progress bars while it works, plain text off a TTY."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

from rich.console import Console as RichConsole
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress_bar import ProgressBar
from rich.text import Text

NAME_WIDTH = 11
# The last lines of a failed command shown under its error (the whole output is in the stage's log).
TAIL_SHOWN = 8


class _BarWhenCounted(BarColumn):
    """A bar only for tasks with a total; the stage's own spinner line has none."""

    def render(self, task: Task) -> ProgressBar | Text:  # type: ignore[override]  # blank when uncounted
        return Text("") if task.total is None else super().render(task)


class _CountWhenCounted(MofNCompleteColumn):
    def render(self, task: Task) -> Text:
        return Text("") if task.total is None else super().render(task)


def format_seconds(value: float) -> str:
    if value < 60:
        return f"{value:.1f}s"
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


class ProgressTask:
    """A counter inside a stage's display (workers registered, requests done, bytes downloaded)."""

    def __init__(
        self, display: StageDisplay, description: str, total: float | None, task: TaskID | None
    ) -> None:
        self._display = display
        self.description = description
        self.total = total
        self.completed = 0.0
        self._task = task

    def advance(self, amount: float = 1) -> None:
        self.update(completed=self.completed + amount)

    def update(self, completed: float | None = None, description: str | None = None) -> None:
        if completed is not None:
            self.completed = completed
        if description is not None:
            self.description = description
        self._display._task_changed(self)


class StageDisplay:
    """The live area of one running stage: a spinner with a status text, plus any progress bars."""

    def __init__(self, console: Console | None, name: str, progress: Progress | None) -> None:
        # console None: a silent display (verify() while planning shows nothing).
        self._console = console
        self._name = name
        self._progress = progress
        self._main = progress.add_task(name, total=None, status="") if progress else None
        self._last_plain: dict[str, tuple[str, float]] = {}

    def status(self, text: str) -> None:
        """Replace the text next to the spinner (plain output: print it when it changes)."""
        if self._progress is not None and self._main is not None:
            self._progress.update(self._main, status=escape(text))
        else:
            self._plain("status", text)

    def progress(self, description: str, total: float | None = None) -> ProgressTask:
        task = None
        if self._progress is not None:
            task = self._progress.add_task(f"  {description}", total=total, status="")
        handle = ProgressTask(self, description, total, task)
        self._task_changed(handle)
        return handle

    def _task_changed(self, handle: ProgressTask) -> None:
        if self._progress is not None and handle._task is not None:
            self._progress.update(
                handle._task, completed=handle.completed, description=f"  {escape(handle.description)}"
            )
            return
        count = f"{handle.completed:g}/{handle.total:g}" if handle.total else f"{handle.completed:g}"
        finished = handle.total is not None and handle.completed >= handle.total
        self._plain(f"task:{id(handle)}", f"{handle.description}: {count}", force=finished)

    def _plain(self, key: str, text: str, force: bool = False) -> None:
        previous, when = self._last_plain.get(key, ("", 0.0))
        stamp = time.monotonic()
        if self._console is None:
            return
        # A changed line shows at most twice a second (at once when forced); an unchanged one never repeats.
        if text != previous and (force or stamp - when >= 0.5):
            self._console.line(f"  {self._name}: {text}")
            self._last_plain[key] = (text, stamp)


class Console:
    """autodeploy's output. Rich on a terminal; plain lines (no colour, no live redraw) otherwise."""

    def __init__(self, file: IO[str] | None = None, plain: bool | None = None) -> None:
        self.out = RichConsole(file=file or sys.stdout, highlight=False, soft_wrap=True)
        self.err = RichConsole(file=sys.stderr, highlight=False, soft_wrap=True)
        self.plain = (not self.out.is_terminal) if plain is None else plain
        if self.plain:
            self.out = RichConsole(file=file or sys.stdout, highlight=False, soft_wrap=True, no_color=True)

    def line(self, text: str = "", style: str | None = None) -> None:
        self.out.print(escape(text), style=None if self.plain else style)

    def _stage_line(self, symbol: str, name: str, text: str, style: str) -> None:
        body = f"{symbol} {name:<{NAME_WIDTH}} {text}".rstrip()
        self.line(body, style)

    def stage_done(self, name: str, seconds: float, summary: str) -> None:
        self._stage_line(
            "✓", name, f"done in {format_seconds(seconds)}" + (f"  {summary}" if summary else ""), "green"
        )

    def stage_skipped(self, name: str, reason: str) -> None:
        self._stage_line("↷", name, f"skipped: {reason}", "dim")

    def stage_note(self, name: str, text: str) -> None:
        """A stage line that is neither done, skipped nor failed (left out of a plan, stopped by down)."""
        self._stage_line("·", name, text, "dim")

    def stage_failed(
        self,
        name: str,
        seconds: float,
        message: str,
        hint: str,
        log: str | None,
        resume: str,
        tail: str = "",
    ) -> None:
        self._stage_line("✗", name, f"failed after {format_seconds(seconds)}: {message}", "bold red")
        for line in tail.rstrip().splitlines()[-TAIL_SHOWN:]:
            self.line(f"  │ {line}", "dim")
        if hint:
            self.line(f"  fix: {hint}", "red")
        if log:
            self.line(f"  log: {log}")
        self.line(f"  then: {resume}")

    def diagnosis(self, signature: str, advice: str, where: str, evidence: str) -> None:
        """A known cause found in the logs of a failed stage: what it is, what to do, and the line that shows it."""
        self.line(f"  known cause: {signature.replace('_', ' ')}: {advice}", "yellow")
        self.line(f"    {where}: {evidence}", "dim")

    def stage_interrupted(self, name: str, resume: str) -> None:
        self._stage_line("■", name, "interrupted", "yellow")
        self.line(f"  resume: {resume}")

    def error(self, message: str, hint: str = "") -> None:
        """A one-line error on stderr (plus a one-line fix)."""
        self.err.print(escape(f"error: {message}"), style=None if self.plain else "bold red")
        if hint:
            self.err.print(escape(f"  fix: {hint}"))

    @contextlib.contextmanager
    def stage_running(self, name: str) -> Iterator[StageDisplay]:
        """A live spinner (with elapsed time) for the stage's duration; nothing live when plain."""
        if self.plain:
            yield StageDisplay(self, name, None)
            return
        progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<" + str(NAME_WIDTH + 2) + "}"),
            _BarWhenCounted(bar_width=24),
            _CountWhenCounted(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=self.out,
            transient=True,
        )
        with progress:
            yield StageDisplay(self, name, progress)

    def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> None:
        from rich.table import Table

        table = Table(title=title, show_lines=False, header_style=None if self.plain else "bold")
        for column in columns:
            # Fold, never cut: a narrow terminal must not turn "h200_sxm" into "h200_…".
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*(escape(str(cell)) for cell in row))
        self.out.print(table)
