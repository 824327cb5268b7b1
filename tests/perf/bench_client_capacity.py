"""The built-in benchmark client's ingest capacity: the token rate it can time to within 2 % of the truth.

A client that cannot keep up with the stream stamps tokens late: its ITL and TTFT grow with the load
while the server's do not, and nothing says so. This script measures where that starts, and what the
client's own health signals (ClientHealth: CPU share, event-loop lag p99, its saturated verdict) read
there, so that the limits in automation/bench/client.py and the tokens/s one client process is planned
with (automation/bench/sweep.py) come from measurement. Results and reasoning: docs/client-capacity.md.

The server: a synthetic token server in a separate process (aiohttp, POST /v1/completions with
stream: true). After `--ttft-ms` it sends exactly max_tokens SSE events, `--itl-ms` apart against
deadlines (no drift), then a usage event and `data: [DONE]`. By default the events are shaped like a
Dynamo 1.x frontend's (~200 bytes, `--event dynamo`); `--event minimal` sends
`{"object":"text_completion","choices":[{"text":"x","index":0}]}` (aiperf drops events without
`object`). Events are pre-encoded and written one write per token by a single pacer task. The server
stamps every write, and GET /stats returns, per stream, the arrival, first and last write and token
count, so its ITL is (last − first) / (n − 1). The comparison is client against server, not against
the nominal gap. Both clocks are perf_counter, which is CLOCK_MONOTONIC on Linux. So the client's stamp
of a token minus the server's write of it is the client's own delay ("1st late", "last late").

The sweep: the offered rate is concurrency × 1000 / itl_ms tokens/s. Each level is a closed loop with a
burst warm-up of `concurrency` requests, then `--rounds` × concurrency measured ones, for each of:
  p1      automation.bench.client.run_level, processes=1
  p1fast  the same with fast_one (below) monkeypatched in for client._one: a candidate fix
  p2      processes=2
  aiperf  .venv-aiperf/bin/aiperf as autodeploy runs it (automation.bench.aiperf), if it is there
It prints a row per level, then the capacity: the highest achieved tokens/s whose mean ITL is within
2 % of the server's, per configuration and per process, and the first level outside that bar. A table
of the parsing cost alone (no sockets) of client._one against fast_one comes first.

Pinning (os.sched_setaffinity): the server runs on the first core, a one-process client on the last.
p2 and aiperf get every core (`--multi-cpus`), so on a 2-core machine they share the server's core;
the server CPU and lateness columns show that. Other processes count against the client. The "other"
column says how many cores they kept busy during the level. Levels run beside such load are suspect:
run this on an idle machine.

Usage: .venv/bin/python tests/perf/bench_client_capacity.py [--itl-ms 10] [--osl 512]
       [--concurrency 32,128,...] [--configs p1,p1fast,p2,aiperf] [--rounds 2] [--repeats 1]
The default sweep takes ~7 minutes on a 2-core machine (9 under other load).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

AIPERF = REPO / ".venv-aiperf" / "bin" / "aiperf"
TOKENIZER = Path("/tmp/autodeploy-rehearsal/models/tiny-qwen3")
ERROR_BAR_PCT = 2.0

DONE = b"data: [DONE]\n\n"


# ------------------------------------------------------------------------------------------- the server


def events(shape: str, model: str, stream_id: int) -> tuple[bytes, bytes]:
    """(one token's event, what ends the stream before the usage) as pre-encoded bytes.

    dynamo: what a Dynamo 1.x frontend sends (id, created, model, object, usage: null; ~200 bytes) and
    its empty finish_reason event; minimal: `{"object":"text_completion","choices":[{"text":"x",...}]}`
    (aiperf drops content events without `object`)."""
    if shape == "minimal":
        return b'data: {"object":"text_completion","choices":[{"text":"x","index":0}]}\n\n', b""
    head = f'{{"id":"cmpl-{stream_id:08x}-2ddd-4323-8178-b89a687732c9","choices":[{{"text":'
    tail = f'"created":{int(time.time())},"model":{json.dumps(model)},"system_fingerprint":null,'
    tail += '"object":"text_completion","usage":null}'
    token = f'data: {head}" w1315","index":0}}],{tail}\n\n'
    finish = f'data: {head}"","index":0,"finish_reason":"length"}}],{tail}\n\n'
    return token.encode(), finish.encode()


def serve(port: int, itl_ms: float, ttft_ms: float, shape: str, cpu: int | None) -> None:
    """The synthetic token server (runs in its own process).

    Each stream's first token goes through aiohttp (it sends the headers with it); the rest are written
    by one pacer task for all streams, straight to each stream's transport as pre-framed HTTP chunks (one
    write per token, as an engine's frontend does), each at its deadline (first + k × itl: no drift), and
    stamped. Its own cost is the server CPU column; its lateness (worst write − deadline per stream, mean)
    the server-late one."""
    import heapq

    from aiohttp import web

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    itl_s, ttft_s = itl_ms / 1000.0, ttft_ms / 1000.0
    # (prompt, arrival, first write, last write, tokens, worst lateness) per stream ended
    streams: list[tuple[str, float, float, float, int, float]] = []
    clock = {"cpu": time.process_time(), "wall": time.perf_counter()}
    # (deadline, stream number, Stream) of every stream's next token
    due: list[tuple[float, int, Stream]] = []
    wake = asyncio.Event()

    @dataclass
    class Stream:
        transport: Any
        frame: bytes  # one token's event as an HTTP chunk
        left: int
        last: float = 0.0
        late: float = 0.0
        done: asyncio.Future[None] | None = None

    async def pacer() -> None:
        while True:
            if not due:
                wake.clear()
                await wake.wait()
                continue
            wait = due[0][0] - time.perf_counter()
            if wait > 0:
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), wait)  # a new stream may be due sooner
                continue
            now = time.perf_counter()
            while due and due[0][0] <= now:
                deadline, number, stream = heapq.heappop(due)
                if stream.transport is None or stream.transport.is_closing():
                    stream.left = 0
                else:
                    stream.transport.write(stream.frame)
                    stream.last = time.perf_counter()
                    stream.late = max(stream.late, stream.last - deadline)
                    stream.left -= 1
                if stream.left > 0:
                    heapq.heappush(due, (deadline + itl_s, number, stream))
                elif stream.done is not None and not stream.done.done():
                    stream.done.set_result(None)

    counter = iter(range(1 << 62))

    async def completions(request: web.Request) -> web.StreamResponse:
        arrived = time.perf_counter()
        body = await request.json()
        count = max(1, int(body.get("max_tokens") or body.get("max_completion_tokens") or 16))
        number = next(counter)
        token, finish = events(shape, str(body.get("model", "")), number)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        wait = arrived + ttft_s - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        await response.write(token)  # with the headers
        first = time.perf_counter()
        stream = Stream(request.transport, b"%x\r\n%s\r\n" % (len(token), token), count - 1, last=first)
        stream.late = first - (arrived + ttft_s)
        if stream.left > 0:
            stream.done = asyncio.get_running_loop().create_future()
            heapq.heappush(due, (arrived + ttft_s + itl_s, number, stream))
            wake.set()
            await stream.done
        usage = {
            "object": "text_completion",
            "choices": [],
            "usage": {"prompt_tokens": 8, "completion_tokens": count},
        }
        await response.write(finish + b"data: " + json.dumps(usage).encode() + b"\n\n" + DONE)
        await response.write_eof()
        streams.append((str(body.get("prompt", ""))[:64], arrived, first, stream.last, count, stream.late))
        return response

    async def stats(request: web.Request) -> web.Response:
        """The streams ended since the last call, and the server's CPU share over that time."""
        cpu, wall = time.process_time(), time.perf_counter()
        out = {"streams": list(streams), "cpu_share": (cpu - clock["cpu"]) / max(1e-9, wall - clock["wall"])}
        streams.clear()
        clock.update(cpu=cpu, wall=wall)
        return web.json_response(out)

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/stats", stats)

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        # A burst of hundreds of connects must not overflow the accept queue (1 s SYN retransmits).
        await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
        task = asyncio.get_running_loop().create_task(pacer())
        print("ready", flush=True)
        await asyncio.Event().wait()
        task.cancel()

    asyncio.run(main())


@dataclass
class ServerHandle:
    url: str
    process: subprocess.Popen[str]

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/stats", timeout=30) as answer:
            out: dict[str, Any] = json.loads(answer.read())
        return out


@contextlib.contextmanager
def token_server(
    port: int, itl_ms: float, ttft_ms: float, shape: str, cpu: int | None
) -> Iterator[ServerHandle]:
    command = [sys.executable, __file__, "--serve", "--port", str(port), "--itl-ms", str(itl_ms)]
    command += ["--ttft-ms", str(ttft_ms), "--event", shape]
    command += ["--server-cpu", str(cpu)] if cpu is not None else []
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("the token server did not start")
        yield ServerHandle(f"http://127.0.0.1:{port}", process)
    finally:
        process.terminate()
        process.wait(timeout=10)


# ------------------------------------------------------------------------------- a faster _one (patch)


async def fast_one(session: Any, url: str, record: Any, body: dict[str, Any], endpoint: Any) -> Any:
    """client._one reading whatever the socket has (iter_any) and splitting lines itself, instead of
    `async for raw in response.content` (StreamReader.readline: two iterations per SSE event, the blank
    line included, each with its own buffer search and coroutine step); every event of one read is
    stamped with the read's arrival time. Otherwise the same as client._one (same records, same errors)."""
    import aiohttp

    from automation.bench import client

    chunks = 0
    pending = b""
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                record.error = f"HTTP {response.status}: {(await response.text())[:200]}"
                return record
            finished = False
            async for block in response.content.iter_any():
                now = time.perf_counter()
                *lines, pending = (pending + block).split(b"\n")
                for raw in lines:
                    if not raw.startswith(b"data:"):
                        continue
                    data = raw[5:].strip()
                    if data == b"[DONE]":
                        finished = True
                        break
                    event = json.loads(data)
                    usage = event.get("usage")
                    if usage:
                        record.output_tokens = int(usage.get("completion_tokens") or 0)
                        record.input_tokens = int(usage.get("prompt_tokens") or 0)
                        details = usage.get("prompt_tokens_details") or {}
                        if details.get("cached_tokens") is not None:
                            record.cached_tokens = int(details["cached_tokens"])
                    if client._event_text(event, endpoint) != "":
                        if record.first_token is None:
                            record.first_token = now
                        record.end = now
                        chunks += 1
                if finished:
                    break
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"[:200]
        return record
    if record.output_tokens == 0:
        record.output_tokens = chunks
    if record.first_token is None:
        record.error = "the stream ended without a token"
    return record


@contextlib.contextmanager
def patched_one(enabled: bool) -> Iterator[None]:
    from automation.bench import client

    original = client._one
    if enabled:
        client._one = fast_one
    try:
        yield
    finally:
        client._one = original


def parser_cost(one: Any, streams: int, osl: int, per_read: int) -> float:
    """CPU µs per token of `one` (client._one or fast_one) alone, without sockets: `streams` streams of
    `osl` Dynamo-shaped events fed to aiohttp StreamReaders as the HTTP parser feeds them (one HTTP
    chunk per event), `per_read` events of each stream between two turns of the event loop (1: a light
    load, every event read alone; more: a loaded client, whose reads find several events)."""
    from aiohttp import streams as aiohttp_streams
    from aiohttp.base_protocol import BaseProtocol

    from automation.bench.metrics import RequestRecord

    token, finish = events("dynamo", "Qwen/Qwen3-32B-FP8", 1)
    usage = {
        "object": "text_completion",
        "choices": [],
        "usage": {"prompt_tokens": 8, "completion_tokens": osl},
    }
    tail = finish + b"data: " + json.dumps(usage).encode() + b"\n\n" + DONE

    class Transport:
        def pause_reading(self) -> None: ...
        def resume_reading(self) -> None: ...
        def is_closing(self) -> bool:
            return False

    class Response:
        status = 200

        def __init__(self, content: Any) -> None:
            self.content = content

        async def __aenter__(self) -> Response:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

    async def run() -> float:
        loop = asyncio.get_running_loop()
        readers: list[Any] = []

        class Session:
            def post(self, url: str, json: Any) -> Response:
                protocol = BaseProtocol(loop)
                protocol.transport = Transport()  # type: ignore[assignment]
                readers.append(aiohttp_streams.StreamReader(protocol, 2**16, loop=loop))
                return Response(readers[-1])

        def feed(reader: Any, data: bytes) -> None:
            reader.begin_http_chunk_receiving()
            reader.feed_data(data)
            reader.end_http_chunk_receiving()

        records = [RequestRecord(index=i, warmup=False, start=0.0) for i in range(streams)]
        tasks = [asyncio.ensure_future(one(Session(), "", r, {}, "completions")) for r in records]
        await asyncio.sleep(0)
        cpu = time.process_time()
        for k in range(0, osl, per_read):
            for reader in readers:
                for _ in range(min(per_read, osl - k)):
                    feed(reader, token)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        for reader in readers:
            feed(reader, tail)
            reader.feed_eof()
        await asyncio.gather(*tasks)
        cpu = time.process_time() - cpu
        assert all(r.output_tokens == osl and r.error is None and r.end for r in records)
        return cpu / (streams * osl) * 1e6

    return min(asyncio.run(run()) for _ in range(3))


def print_parser_costs(cpus: set[int] | None) -> None:
    from automation.bench import client

    print("Parsing alone (no sockets; 64 streams of 512 events): CPU µs per token, best of 3")
    print(f"{'events per read':>15} {'client._one':>11} {'fast_one':>9} {'saved':>6}")
    with pinned(cpus):
        for per_read in (1, 4, 16):
            slow = parser_cost(client._one, 64, 512, per_read)
            fast = parser_cost(fast_one, 64, 512, per_read)
            print(f"{per_read:>15} {slow:>11.2f} {fast:>9.2f} {(slow - fast) / slow:>6.0%}")
    print()


# ---------------------------------------------------------------------------------------------- a level


@dataclass
class Point:
    config: str
    processes: int
    concurrency: int
    offered: float
    achieved: float
    server_itl: float
    client_itl: float
    ttft: float | None = None  # client TTFT, ms
    server_gap: float | None = None  # server's first write − request arrival, ms
    send: float | None = None  # server's arrival stamp − client's start stamp, ms (connect and send)
    first_late: float | None = None  # client's first-token stamp − server's first write, ms (mean)
    last_late: float | None = None  # the same for the last token
    cpu_share: float | None = None
    lag_p99: float | None = None
    saturated: bool | None = None  # the client's own verdict (ClientHealth.saturated)
    server_cpu: float = 0.0
    server_late: float = 0.0  # mean over streams of the server's worst write − deadline, ms
    other: float = 0.0  # cores busy with other processes than this script's, its server's and clients'
    errors: int = 0
    wall_s: float = 0.0

    @property
    def error_pct(self) -> float:
        return (self.client_itl - self.server_itl) / self.server_itl * 100.0 if self.server_itl else math.inf

    @property
    def cpu_us_per_token(self) -> float | None:
        """The client's CPU per token (busiest process; its CPU share is over the whole level, warm-up
        included, at about the measured rate): 1e6 / this is the most one process could parse."""
        if self.cpu_share is None or not self.achieved:
            return None
        return self.cpu_share * 1e6 / (self.achieved / (self.processes or 1))

    @property
    def ok(self) -> bool:
        return self.errors == 0 and abs(self.error_pct) <= ERROR_BAR_PCT


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """This process (and what it starts from now on: spawned client processes, aiperf) on `cpus`."""
    before = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class Meter:
    """Wall time of a level and how many cores other processes kept busy meanwhile: /proc/stat's busy
    time less this process's and its children's (client processes, aiperf) and the server's. Other
    load takes CPU from the client and the server; levels run beside it are suspect."""

    def __init__(self) -> None:
        self.wall, self.busy, self.own = time.perf_counter(), self._busy(), self._own()

    @staticmethod
    def _busy() -> float:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return 0.0
        return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def stop(self, server_cpu_share: float) -> tuple[float, float]:
        """(wall s, other processes' cores)."""
        wall = time.perf_counter() - self.wall
        busy, own = self._busy() - self.busy, self._own() - self.own
        return wall, max(0.0, (busy - own) / wall - server_cpu_share) if self.busy else 0.0


def server_itl_ms(stream: list[Any]) -> float | None:
    _, _, first, last, count, _ = stream
    return (last - first) / (count - 1) * 1000.0 if count > 1 else None


def mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def run_builtin(
    server: ServerHandle, args: argparse.Namespace, config: str, concurrency: int, cpus: set[int] | None
) -> Point:
    """One level of the built-in client; its records joined to the server's streams by prompt."""
    from automation.bench.client import LoadPlan, run_level
    from automation.bench.metrics import summarize

    processes = 2 if config == "p2" else 1
    tag = f"{config}-c{concurrency}-{time.monotonic_ns()}"
    prompts = [f"{tag}-{i}" for i in range(concurrency * (1 + args.rounds))]
    plan = LoadPlan(
        url=server.url,
        model="Qwen/Qwen3-32B-FP8",
        osl=args.osl,
        concurrency=concurrency,
        warmup=concurrency,
        timeout_s=120,
        warmup_method="burst",
        processes=processes,
    )
    server.stats()  # drop what came before
    meter = Meter()
    with pinned(cpus), patched_one(config == "p1fast"):
        run = run_level(plan, prompts)
    answer = server.stats()
    wall, other = meter.stop(answer["cpu_share"])
    streams = {s[0]: s for s in answer["streams"]}
    measured = [r for r in run.records if not r.warmup]
    pairs = [
        (r, streams[prompts[r.index]])
        for r in measured
        if r.error is None and r.itl_ms is not None and prompts[r.index] in streams
    ]
    summary = summarize(run.records, concurrency, 1)
    return Point(
        config=config,
        processes=processes,
        concurrency=concurrency,
        offered=concurrency * 1000.0 / args.itl_ms,
        achieved=summary["output_token_throughput"],
        server_itl=mean([server_itl_ms(s) or 0.0 for _, s in pairs]) or 0.0,
        client_itl=mean([r.itl_ms or 0.0 for r, _ in pairs]) or 0.0,
        ttft=mean([r.ttft_ms or 0.0 for r, _ in pairs]),
        server_gap=mean([(s[2] - s[1]) * 1000.0 for _, s in pairs]),
        send=mean([(s[1] - r.start) * 1000.0 for r, s in pairs]),
        first_late=mean([((r.first_token or 0.0) - s[2]) * 1000.0 for r, s in pairs]),
        last_late=mean([((r.end or 0.0) - s[3]) * 1000.0 for r, s in pairs]),
        cpu_share=run.health.cpu_share,
        lag_p99=run.health.loop_lag_p99_ms,
        saturated=run.health.saturated,
        server_cpu=answer["cpu_share"],
        server_late=mean([s[5] * 1000.0 for _, s in pairs]) or 0.0,
        other=other,
        errors=len(measured) - len(pairs),
        wall_s=wall,
    )


def run_aiperf(
    server: ServerHandle, args: argparse.Namespace, concurrency: int, cpus: set[int] | None, scratch: Path
) -> Point:
    """One level of aiperf, run as autodeploy runs it (automation.bench.aiperf). The server ITL is the
    mean over every stream of the level, warm-up ones included (the server cannot tell aiperf's prompts
    apart; it paces every stream alike)."""
    from automation.bench.aiperf import aiperf_summary, run_aiperf_level

    artifacts = scratch / f"aiperf-c{concurrency}"
    server.stats()
    meter = Meter()
    with pinned(cpus):
        level = run_aiperf_level(
            aiperf_bin=str(AIPERF),
            url=server.url,
            model="Qwen/Qwen3-32B-FP8",
            tokenizer=str(TOKENIZER),
            isl=16,
            osl=args.osl,
            concurrency=concurrency,
            requests=concurrency * args.rounds,
            warmup=concurrency,
            seed=concurrency,
            endpoint="completions",
            artifacts=artifacts,
            timeout_s=300,
            log=artifacts / "aiperf.log",
        )
    answer = server.stats()
    wall, other = meter.stop(answer["cpu_share"])
    summary = aiperf_summary(artifacts)
    streams = answer["streams"]
    return Point(
        config="aiperf",
        processes=0,
        concurrency=concurrency,
        offered=concurrency * 1000.0 / args.itl_ms,
        achieved=summary["output_token_throughput"] or 0.0,
        server_itl=mean([v for v in (server_itl_ms(s) for s in streams) if v is not None]) or 0.0,
        client_itl=summary["inter_token_latency_ms"] or 0.0,
        ttft=summary["time_to_first_token_ms"],
        server_gap=mean([(s[2] - s[1]) * 1000.0 for s in streams]),
        server_cpu=answer["cpu_share"],
        server_late=mean([s[5] * 1000.0 for s in streams]) or 0.0,
        other=other,
        errors=sum(1 for r in level.records if r.error is not None),
        wall_s=wall,
    )


# ----------------------------------------------------------------------------------------------- report

# (header, width; negative: left-aligned)
HEADERS = (
    ("config", -7), ("c", 4), ("offered", 8), ("achieved", 8), ("srv ITL", 7), ("cli ITL", 7), ("err %", 6),
    ("TTFT", 6), ("srv gap", 7), ("send", 6), ("1st late", 8), ("last late", 9), ("cpu", 5), ("µs/tok", 6),
    ("lag p99", 7), ("sat", 3), ("srv cpu", 7), ("srv late", 8), ("other", 5), ("errs", 4), ("wall", 5),
)  # fmt: skip


def cells(values: list[str]) -> str:
    return " ".join(f"{v:<{-w}}" if w < 0 else f"{v:>{w}}" for v, (_, w) in zip(values, HEADERS, strict=True))


COLUMNS = cells([h for h, _ in HEADERS])


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def row(p: Point) -> str:
    saturated = "-" if p.saturated is None else ("yes" if p.saturated else "no")
    values = [
        p.config,
        str(p.concurrency),
        f"{p.offered:.0f}",
        f"{p.achieved:.0f}",
        f"{p.server_itl:.3f}",
        f"{p.client_itl:.3f}",
        f"{p.error_pct:+.2f}",
        fmt(p.ttft, ".1f"),
        fmt(p.server_gap, ".1f"),
        fmt(p.send, ".1f"),
        fmt(p.first_late, ".2f"),
        fmt(p.last_late, ".2f"),
        fmt(p.cpu_share, ".2f"),
        fmt(p.cpu_us_per_token, ".1f"),
        fmt(p.lag_p99, ".1f"),
        saturated,
        f"{p.server_cpu:.2f}",
        f"{p.server_late:.2f}",
        f"{p.other:.2f}",
        str(p.errors),
        f"{p.wall_s:.1f}",
    ]
    return cells(values) + ("" if p.ok else "  ✗")


def print_table(points: list[Point]) -> None:
    print(COLUMNS)
    print("-" * len(COLUMNS))
    for p in points:
        print(row(p))


def print_capacity(points: list[Point], configs: list[str]) -> None:
    print(f"\nCapacity: the highest achieved tokens/s with |ITL error| ≤ {ERROR_BAR_PCT:g} % and no errors")
    print(
        f"{'config':<7} {'tok/s':>8} {'per proc':>8} {'at c':>5} {'cpu':>5} {'lag p99':>7}   "
        "the first level outside the bar (c: achieved tok/s, ITL error, cpu, lag p99)"
    )
    for config in configs:
        mine = sorted((p for p in points if p.config == config), key=lambda p: p.offered)
        if not mine:
            continue
        good = [p for p in mine if p.ok]
        best = max(good, key=lambda p: p.achieved) if good else None
        failing = next((p for p in mine if not p.ok), None)
        line = f"{config:<7} "
        if best is None:
            line += f"{'none':>8} {'-':>8} {'-':>5} {'-':>5} {'-':>7}   "
        else:
            line += (
                f"{best.achieved:>8.0f} {best.achieved / (best.processes or 1):>8.0f} {best.concurrency:>5} "
                f"{fmt(best.cpu_share, '5.2f'):>5} {fmt(best.lag_p99, '7.1f'):>7}   "
            )
        if failing is None:
            line += "none: every level passed (raise --concurrency)"
        else:
            line += (
                f"c={failing.concurrency}: {failing.achieved:.0f}, {failing.error_pct:+.2f} %, "
                f"{fmt(failing.cpu_share, '.2f')}, {fmt(failing.lag_p99, '.1f')} ms"
            )
        print(line)


# ------------------------------------------------------------------------------------------------- main


def cpu_set(text: str) -> set[int] | None:
    return {int(c) for c in text.split(",") if c.strip()} or None


def integers(text: str) -> list[int]:
    return [int(c) for c in text.split(",") if c.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=18931)
    parser.add_argument("--itl-ms", type=float, default=10.0, help="the server's inter-token gap")
    parser.add_argument("--ttft-ms", type=float, default=20.0, help="the server's gap before the first token")
    parser.add_argument("--event", choices=("dynamo", "minimal"), default="dynamo", help="the events' shape")
    parser.add_argument("--osl", type=int, default=512, help="tokens per stream")
    parser.add_argument(
        "--rounds", type=int, default=2, help="measured requests per user (after one warm-up)"
    )
    parser.add_argument(
        "--concurrency", default="32,128,256,384,512,640", help="levels of the built-in client"
    )
    parser.add_argument("--p2-concurrency", default="32,128,256,384,512", help="levels of p2")
    parser.add_argument("--aiperf-concurrency", default="32,128", help="levels of aiperf")
    parser.add_argument("--configs", default="p1,p1fast,p2,aiperf", help="of p1, p1fast, p2, aiperf")
    parser.add_argument("--no-parser-bench", action="store_true", help="skip the parsing-alone table")
    parser.add_argument("--repeats", type=int, default=1, help="runs of every level")
    cores = sorted(os.sched_getaffinity(0))
    parser.add_argument("--server-cpu", type=int, default=cores[0] if len(cores) > 1 else None)
    parser.add_argument("--client-cpus", default=str(cores[-1]), help="a one-process client's cores")
    parser.add_argument("--multi-cpus", default=",".join(map(str, cores)), help="p=2's and aiperf's cores")
    args = parser.parse_args()
    if args.serve:
        serve(args.port, args.itl_ms, args.ttft_ms, args.event, args.server_cpu)
        return
    configs = list(dict.fromkeys(c for c in args.configs.split(",") if c))
    if "aiperf" in configs and not (AIPERF.exists() and TOKENIZER.is_dir()):
        print(f"no {AIPERF} or no {TOKENIZER}: aiperf skipped")
        configs.remove("aiperf")
    print(
        f"server: {args.event} events {args.itl_ms:g} ms apart, the first after {args.ttft_ms:g} ms, "
        f"{args.osl} a stream, on cpu {args.server_cpu}; one-process client on cpus {args.client_cpus}, "
        f"p=2 and aiperf on {args.multi_cpus}; {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.2f}\n"
    )
    if not args.no_parser_bench:
        print_parser_costs(cpu_set(args.client_cpus))
    print(
        "tokens/s; ms; err % = client ITL vs server ITL; srv gap = server's first write − request arrival;\n"
        "send = server's arrival stamp − client's start stamp (TTFT = send + srv gap + 1st late);\n"
        "1st/last late = client's stamp − server's write of that token; cpu, lag p99, sat = ClientHealth\n"
        "(busiest process); µs/tok = its CPU per token; srv late = server's worst write − deadline, mean;\n"
        "other = cores kept busy by other processes (contention: such levels are suspect);\n"
        "✗ = outside the 2 % bar or failed requests\n"
    )
    points: list[Point] = []
    print(COLUMNS)
    print("-" * len(COLUMNS))
    with (
        token_server(args.port, args.itl_ms, args.ttft_ms, args.event, args.server_cpu) as server,
        tempfile.TemporaryDirectory() as scratch,
    ):
        for config in configs:
            cpus = cpu_set(args.client_cpus if config in ("p1", "p1fast") else args.multi_cpus)
            levels = integers(
                {"aiperf": args.aiperf_concurrency, "p2": args.p2_concurrency}.get(config, args.concurrency)
            )
            for concurrency in levels:
                for _ in range(args.repeats):
                    if config == "aiperf":
                        point = run_aiperf(server, args, concurrency, cpus, Path(scratch))
                    else:
                        point = run_builtin(server, args, config, concurrency, cpus)
                    points.append(point)
                    print(row(point), flush=True)
    print_capacity(points, configs)


if __name__ == "__main__":
    main()
