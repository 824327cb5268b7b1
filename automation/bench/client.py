"""The built-in load generator: streaming requests to the OpenAI-compatible endpoints (aiohttp), closed
loop or Poisson arrivals, in one or several processes, watching itself for saturation."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import multiprocessing
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import aiohttp

from automation.bench.metrics import RequestRecord

Endpoint = Literal["completions", "chat"]
WarmupMethod = Literal["steady", "burst"]

PATHS: dict[str, str] = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}

# A client process is saturated when its event loop is busy this share of the wall time: tokens then
# wait in the socket before they are stamped, which inflates ITL and TTFT. Measured
# (tests/perf/bench_client_capacity.py, docs/client-capacity.md): levels at 0.85-1.00 CPU still had their
# ITL within 2 % of the server's, and every level outside 2 % showed it as loop lag, not CPU.
SATURATED_CPU_SHARE = 0.95
# Or when its 10 ms ticks fire late (p99) by more than this share of the mean TTFT it measured, and by
# more than the floor: a first token can be stamped that late. Lag also comes from other processes on
# a shared host (this 2-core machine, client at 8 % CPU beside the rehearsal: p99 1-7 ms), so it is
# judged against what it would distort, above what a calm loop shows.
SATURATED_LAG_SHARE_OF_TTFT = 0.05
SATURATED_LAG_FLOOR_MS = 10.0
LAG_TICK_S = 0.01


def request_body(model: str, prompt: str, osl: int, endpoint: Endpoint = "completions") -> dict[str, Any]:
    """Exactly `osl` output tokens: max_tokens = min_tokens = osl with ignore_eos (no `nvext`: Dynamo 1.x
    answers 400 to it). Streaming, so the first token's arrival can be timed; usage in the last event."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": osl,
        "min_tokens": osl,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


@dataclass(frozen=True)
class LoadPlan:
    """What one level sends: `warmup` warm-up requests, then the measured ones (prompts in that order)."""

    url: str
    model: str
    osl: int
    concurrency: int
    warmup: int
    timeout_s: float
    endpoint: Endpoint = "completions"
    warmup_method: WarmupMethod = "burst"  # closed loop only: Poisson arrivals always run steady
    # Request rate mode: the send time of every request (s after the level starts), warm-up first;
    # None: closed loop with `concurrency` users.
    arrivals: tuple[float, ...] | None = None
    processes: int = 1


@dataclass
class ClientHealth:
    """How busy the client was while it measured: the evidence for (or against) its numbers."""

    processes: int
    cpu_share: float  # busiest process: CPU seconds / wall seconds
    loop_lag_p99_ms: float  # worst process: p99 of how late its 10 ms ticks fired
    loop_lag_max_ms: float
    saturated: bool = False
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LevelRun:
    """A level's requests, the measured window on the client's clock, and the client's health."""

    records: list[RequestRecord]
    window: tuple[float, float]
    health: ClientHealth


def _event_text(event: dict[str, Any], endpoint: Endpoint) -> str:
    choices = event.get("choices") or []
    if not choices:
        return ""
    if endpoint == "chat":
        return str((choices[0].get("delta") or {}).get("content") or "")
    return str(choices[0].get("text") or "")


async def _one(
    session: Any,
    url: str,
    record: RequestRecord,
    body: dict[str, Any],
    endpoint: Endpoint,
    on_first_token: Callable[[], None] | None = None,
) -> RequestRecord:
    chunks = 0
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                text = (await response.text())[:200]
                record.error = f"HTTP {response.status}: {text}"
                return record
            async for raw in response.content:
                line = raw.decode(errors="replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                usage = event.get("usage")
                if usage:
                    record.output_tokens = int(usage.get("completion_tokens") or 0)
                    record.input_tokens = int(usage.get("prompt_tokens") or 0)
                    details = usage.get("prompt_tokens_details") or {}
                    if details.get("cached_tokens") is not None:
                        record.cached_tokens = int(details["cached_tokens"])
                if _event_text(event, endpoint) != "":
                    now = time.perf_counter()
                    if record.first_token is None:
                        record.first_token = now
                        if on_first_token is not None:
                            on_first_token()
                    record.end = now
                    chunks += 1
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"[:200]
        return record
    if record.output_tokens == 0:
        record.output_tokens = chunks  # no usage block: one token per content chunk
    if record.first_token is None:
        record.error = "the stream ended without a token"
    return record


class _Signals:
    """How the users of one process tell the coordinator about the level's progress."""

    def done(self, record: RequestRecord) -> None:
        raise NotImplementedError

    def warmup_first_token(self) -> None:
        raise NotImplementedError

    async def warmed(self) -> None:
        """Every warm-up request of this process has ended; returns when the measured phase may start."""
        raise NotImplementedError


@dataclass
class _LagMonitor:
    """Ticks every 10 ms and records how late each tick fired: the event loop's backlog.

    The first SETTLE_S are left out (the first connections, imports and allocations of a level are
    one-off), and a level that ran less than MIN_TICKS ticks' time after that is not judged by its lag
    (its p99 would be its single worst hiccup). Time, not ticks recorded: a loop far behind records
    few ticks, and those are the evidence.
    """

    SETTLE_S = 0.5
    MIN_TICKS = 100

    lags: list[float] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    settled: float = 0.0

    def start(self) -> None:
        self.settled = time.perf_counter() + self.SETTLE_S
        self.task = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(LAG_TICK_S)
            if before >= self.settled:
                self.lags.append(max(0.0, time.perf_counter() - before - LAG_TICK_S) * 1000.0)

    def stop(self) -> tuple[float, float]:
        """(p99, max) lag in ms; (0, max) when the level was too short to judge."""
        if self.task is not None:
            self.task.cancel()
        if not self.lags:
            return 0.0, 0.0
        ordered = sorted(self.lags)
        if time.perf_counter() - self.settled < self.MIN_TICKS * LAG_TICK_S:
            return 0.0, ordered[-1]
        return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)], ordered[-1]


async def _drive(
    plan: LoadPlan,
    prompts: dict[int, str],
    indices: Sequence[int],
    users: Sequence[int],
    signals: _Signals,
    start_at: float | None = None,
) -> tuple[float, float, float]:
    """Send this process's share of the level; returns (CPU share, lag p99 ms, lag max ms).

    Closed loop: user u sends requests u, u + c, u + 2c, … each when its previous one ends (the first
    `warmup` indices are warm-up). burst: every user finishes its warm-up, then all start the measured
    phase together (aiperf's phase boundary; the seed guide's first batch); steady: each user goes on at
    once, so the measured window starts in the steady state the warm-up built.
    Request rate: request i is sent at start + arrivals[i], whatever is in flight. `indices` are the
    requests this process sends; `prompts` may receive the measured ones only when `signals.warmed()`
    returns (burst, see run_level's `later`).
    """
    endpoint = plan.url.rstrip("/") + PATHS[plan.endpoint]
    lag = _LagMonitor()
    lag.start()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    # A fresh connection per request: on a reused keep-alive connection the first streamed chunk can
    # wait ~40 ms for a delayed ACK, which would be measured as TTFT (seen here: 170 ms pooled against
    # 135 ms fresh, at c=1 on loopback); a TCP connect costs well under a millisecond on a LAN.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=plan.timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send(index: int, scheduled: float | None = None) -> None:
            record = RequestRecord(
                index=index, warmup=index < plan.warmup, start=time.perf_counter(), scheduled=scheduled
            )
            body = request_body(plan.model, prompts[index], plan.osl, plan.endpoint)
            first = signals.warmup_first_token if record.warmup else None
            await _one(session, endpoint, record, body, plan.endpoint, on_first_token=first)
            signals.done(record)

        if plan.arrivals is None:
            # User u's requests, in order; warm-up ones (index < warmup) come first for every user.
            mine = {u: [i for i in indices if i % plan.concurrency == u] for u in users}

            async def user(u: int, warmup: bool | None) -> None:
                for index in mine[u]:
                    if warmup is None or (index < plan.warmup) == warmup:
                        await send(index)

            if plan.warmup_method == "burst" and plan.warmup:
                await asyncio.gather(*(user(u, True) for u in users))
                await signals.warmed()
                await asyncio.gather(*(user(u, False) for u in users))
            else:
                await asyncio.gather(*(user(u, None) for u in users))
        else:
            base = start_at if start_at is not None else time.perf_counter()
            tasks = []
            for index in indices:
                delay = base + plan.arrivals[index] - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(send(index, scheduled=base + plan.arrivals[index])))
            await asyncio.gather(*tasks)
    cpu_share = (time.process_time() - cpu0) / max(1e-9, time.perf_counter() - wall0)
    p99, worst = lag.stop()
    return cpu_share, p99, worst


def _steady(plan: LoadPlan) -> bool:
    """The measured window opens while warm-up requests still stream (Poisson arrivals always do)."""
    return plan.arrivals is not None or plan.warmup_method == "steady"


def _health(
    processes: int, samples: Sequence[tuple[float, float, float]], records: Sequence[RequestRecord]
) -> ClientHealth:
    cpu = max(s[0] for s in samples)
    p99 = max(s[1] for s in samples)
    worst = max(s[2] for s in samples)
    ttfts = [t for r in records if not r.warmup and (t := r.ttft_ms) is not None]
    lag_limit = max(
        SATURATED_LAG_FLOOR_MS, SATURATED_LAG_SHARE_OF_TTFT * sum(ttfts) / len(ttfts) if ttfts else math.inf
    )
    reasons = []
    if cpu >= SATURATED_CPU_SHARE:
        reasons.append(f"a client process was busy {cpu:.0%} of the time (limit {SATURATED_CPU_SHARE:.0%})")
    if p99 >= lag_limit:
        reasons.append(
            f"its event loop ran {p99:.1f} ms late (p99), over {lag_limit:.1f} ms (the larger of "
            f"{SATURATED_LAG_FLOOR_MS:g} ms and {SATURATED_LAG_SHARE_OF_TTFT:.0%} of the mean TTFT)"
        )
    return ClientHealth(
        processes=processes,
        cpu_share=cpu,
        loop_lag_p99_ms=p99,
        loop_lag_max_ms=worst,
        saturated=bool(reasons),
        reason="; ".join(reasons) or None,
    )


class _InProcess(_Signals):
    """Signals of the single-process client: straight to the coordinator's callbacks."""

    def __init__(
        self,
        plan: LoadPlan,
        on_done: Callable[[RequestRecord], None],
        on_window: Callable[[], None],
        prompts: dict[int, str],
        later: concurrent.futures.Future[list[str]] | None,
    ):
        self.plan, self.on_done, self.on_window = plan, on_done, on_window
        self.prompts, self.later = prompts, later
        self.records: list[RequestRecord] = []
        self.first_tokens = 0
        self.window_start: float | None = None
        self.pending: list[asyncio.Future[None]] = []

    def open_window(self) -> None:
        self.window_start = time.perf_counter()
        self.on_window()

    def done(self, record: RequestRecord) -> None:
        self.records.append(record)
        self.on_done(record)

    def warmup_first_token(self) -> None:
        self.first_tokens += 1
        if _steady(self.plan) and self.first_tokens == self.plan.warmup:
            # The scrape runs beside the streams, not in the event loop, which is timing tokens.
            self.pending.append(asyncio.get_running_loop().run_in_executor(None, self.open_window))

    async def warmed(self) -> None:
        if self.later is not None:  # the measured prompts, made while the warm-up ran
            measured = await asyncio.wrap_future(self.later)
            self.prompts.update(enumerate(measured, start=self.plan.warmup))
        self.open_window()  # burst: nothing is in flight, so a blocking scrape costs no measurement


def run_level(
    plan: LoadPlan,
    prompts: Sequence[str],
    on_done: Callable[[RequestRecord], None] = lambda record: None,
    on_window: Callable[[], None] = lambda: None,
    later: tuple[int, concurrent.futures.Future[list[str]]] | None = None,
) -> LevelRun:
    """Send every prompt as `plan` says; the first `plan.warmup` are marked warm-up.

    `on_window` is called once, when the measured window opens (burst: between the phases, nothing in
    flight; steady: when every warm-up request has its first token; no warm-up: at the start).
    `later` = (count, future): `prompts` holds the warm-up prompts only and the future brings the
    `count` measured ones, awaited at the burst boundary, so that making them overlaps the warm-up
    (one process, closed loop, burst with warm-up only).
    """
    if plan.processes > 1:
        return _run_processes(plan, prompts, on_done, on_window)
    indexed = dict(enumerate(prompts))
    total = len(prompts)
    if later is not None:
        if plan.arrivals is not None or plan.warmup_method != "burst" or len(prompts) != plan.warmup:
            raise ValueError("later prompts need a closed-loop burst level whose prompts are its warm-up")
        total += later[0]
    signals = _InProcess(plan, on_done, on_window, indexed, later[1] if later else None)

    async def main() -> tuple[float, float, float]:
        if plan.warmup == 0:
            signals.open_window()
        result = await _drive(plan, indexed, range(total), range(plan.concurrency), signals)
        await asyncio.gather(*signals.pending)
        return result

    sample = asyncio.run(main())
    if signals.window_start is None:  # a warm-up request never got its first token
        signals.open_window()
    assert signals.window_start is not None
    end = max((r.end or r.start for r in signals.records), default=time.perf_counter())
    return LevelRun(signals.records, (signals.window_start, end), _health(1, [sample], signals.records))


# ------------------------------------------------------------------------------------- several processes


def _child(
    plan: LoadPlan,
    prompts: dict[int, str],
    users: list[int],
    outbox: Any,
    go: Any,
    start_at: float | None,
) -> None:
    """One client process: drives its users and reports every record through `outbox`."""

    class Signals(_Signals):
        def done(self, record: RequestRecord) -> None:
            outbox.put(("done", record.to_dict()))

        def warmup_first_token(self) -> None:
            outbox.put(("first", None))

        async def warmed(self) -> None:
            outbox.put(("warmed", None))
            await asyncio.get_running_loop().run_in_executor(None, go.wait)

    try:
        sample = asyncio.run(_drive(plan, prompts, sorted(prompts), users, Signals(), start_at))
        outbox.put(("health", sample))
    except BaseException as exc:  # the coordinator must hear of any end, or it waits forever
        outbox.put(("crashed", f"{type(exc).__name__}: {exc}"))


def _run_processes(
    plan: LoadPlan,
    prompts: Sequence[str],
    on_done: Callable[[RequestRecord], None],
    on_window: Callable[[], None],
) -> LevelRun:
    """The level spread over `plan.processes` processes (users, or requests of the schedule, dealt round
    robin) so that parsing capacity scales with cores; the coordinator opens the window as in-process."""
    from automation.errors import StageError

    context = multiprocessing.get_context("spawn")
    outbox = context.Queue()
    go = context.Event()
    count = plan.processes
    if plan.arrivals is None:
        shares = [list(range(p, plan.concurrency, count)) for p in range(count)]
        per_process = [
            {i: prompts[i] for i in range(len(prompts)) if i % plan.concurrency in share} for share in shares
        ]
    else:
        shares = [[] for _ in range(count)]
        per_process = [{i: prompts[i] for i in range(p, len(prompts), count)} for p in range(count)]
    working = [p for p in range(count) if per_process[p]]
    # Spawned processes take ~1 s to import; the schedule starts when all of them can keep it.
    start_at = time.perf_counter() + 2.0 + 0.3 * len(working) if plan.arrivals is not None else None
    children = [
        context.Process(
            target=_child,
            args=(plan, per_process[p], shares[p], outbox, go, start_at),
            name=f"autodeploy-client-{p}",
            daemon=True,
        )
        for p in working
    ]
    for child in children:
        child.start()
    records: list[RequestRecord] = []
    samples: list[tuple[float, float, float]] = []
    warmed = first_tokens = 0
    window_start: float | None = None
    opener: threading.Thread | None = None

    def open_window() -> None:
        nonlocal window_start
        window_start = time.perf_counter()
        on_window()

    if plan.warmup == 0:
        open_window()
    finished = 0
    try:
        while finished < len(children):
            try:
                kind, payload = outbox.get(timeout=1.0)
            except queue.Empty:
                dead = [c for c in children if not c.is_alive() and c.exitcode not in (0, None)]
                if dead:
                    raise StageError(
                        f"a benchmark client process died (exit code {dead[0].exitcode}) before reporting",
                        hint="rerun with --debug; if it repeats, set benchmark.client_processes: 1",
                    ) from None
                continue
            if kind == "done":
                record = RequestRecord(**payload)
                records.append(record)
                on_done(record)
            elif kind == "first":
                first_tokens += 1
                if _steady(plan) and first_tokens == plan.warmup:
                    opener = threading.Thread(target=open_window, daemon=True)
                    opener.start()
            elif kind == "warmed":
                warmed += 1
                if warmed == len(children):
                    open_window()
                    go.set()
            elif kind == "health":
                samples.append(payload)
                finished += 1
            elif kind == "crashed":
                raise StageError(f"a benchmark client process failed: {payload}", hint="rerun with --debug")
    finally:
        go.set()
        for child in children:
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
    if opener is not None:
        opener.join()
    if window_start is None:
        open_window()
    assert window_start is not None
    end = max((r.end or r.start for r in records), default=time.perf_counter())
    return LevelRun(records, (window_start, end), _health(len(children), samples, records))
