"""Closed-loop queueing: what the benchmark measures when c users load a deployment's stations.

The benchmark (`automation/bench/`, docs/benchmark.md; aiperf's method) is a closed loop: c users,
each sends its next request when its previous one ends. Per level it sends c warm-up requests at once,
waits until ALL of them have ended, then sends 10·c measured requests, starting as one burst of c
(`benchmark.warmup: burst`, the default); `steady` lets each user go on as soon as its own warm-up
request ends. The measured means are over the measured requests only.

Two ways to predict those means, one exact and one cheap:

1. `simulate_agg` / `simulate_disagg`: an exact, deterministic discrete-event simulation of that
   method against the deployment's stations with the step times the performance model computes.
   Chosen over mean-value analysis because the service is deterministic (fixed ISL/OSL, step times
   that are functions of the batch), the loop starts with a burst and, in agg with fixed OSL, stays
   synchronised round after round: MVA assumes exponential service and a stationary mix, so it sees
   neither the first burst (one request in ten; on the rehearsal's disagg plan at c = 32 the burst's
   mean TTFT is 2.0 s against 0.17 s after it) nor the synchronisation (on the agg rehearsal at c = 8
   every round queues like a burst: 288 ms against 121 ms alone). Requests that move together are
   simulated as one cohort and decode runs are advanced many steps at a time (every running request
   advances one token per step), so a level costs O(cohorts), not O(requests × tokens): a few ms for
   the rehearsal's levels, ~0.1 s for 4096 users. Used by `predict_at_concurrency` and `estimate`.

   agg (one attention rank of one replica; ranks are symmetric and run in lockstep): each iteration
   takes k = min(schedulable waiting, free slots, ⌊(max_num_tokens − g)/isl⌋) whole prompts next to
   the g running decodes (TRT-LLM's scheduler: a decode costs one token of the budget), or one chunk
   of a prompt with chunked prefill; it lasts mixed[k][g] (decode[g] without prompts). A prompt's first
   token comes at the end of its (last) context iteration; it then decodes osl − 1 iterations and
   leaves. A request reaching a busy engine is schedulable `admit_lag` iterations later.
   disagg (one replica): x prefill workers share one FIFO queue; a worker takes up to its batch of
   prompts per step, lasting prefill[n]; the KV cache then moves (xfer) and the request joins the
   decode pool of y·dp ranks (at most `slots` running) at once if it is idle, else at the step
   boundary `decode_join_lag` steps after the step in progress; its first token comes after that first
   decode step (Dynamo streams it from the decode worker; the mocker: TTFT = prefill + transfer + one
   decode step), then osl − 1 more steps.
   Both: a request reaches the engine `loop_ms` after it is sent and the client sends the next one
   when the last token arrives; `request_ms` adds to TTFT only (Stack).
   TTFT = first token − send + request_ms; TPOT = (end − first token)/(osl − 1); throughput =
   measured requests / (last end − first measured send).
   Checked against Dynamo 1.6.1's mocker, which replays the same closed loop offline: disagg within
   0.5 % at c = 1..32, agg within 4 % (its mixed step adds prefill and decode; the model fuses them).

2. `closed_form_agg` / `closed_form_disagg`: the same benchmark in closed form, vectorised over the
   sweep's candidates (`search` screens with it; the candidates it keeps are re-estimated exactly).
   With deterministic service the burst's queue is arithmetic and the steady state is the asymptotic
   bound of the closed loop:

       TTFT = T₁ + W_burst/R + (1 − 1/R)·W_steady            (R = requests per concurrency)

   T₁ the unloaded path to the first token; W_burst the mean wait of a burst of c on the bottleneck
   station (the i-th of G groups waits i·T_group, so W_burst = T_group·(G − 1)/2); W_steady =
   max(0, c·T_unit − Z), Little's law in a closed loop whose station needs T_unit per request and whose
   cycle without waiting is Z (c/X = Z + W, X ≤ 1/T_unit), and in agg the synchronised users' queue
   (closed_form_agg). `steady` warm-up drops the burst term. Against the simulation on the picks of
   three sweeps: median 2–5 %, worst −44 % (a rate-matched prefill, see closed_form_disagg).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Warmup = Literal["burst", "steady"]

# The benchmark's defaults (automation/config.py: benchmark.requests_per_concurrency, benchmark.warmup;
# docs/benchmark.md): 10 × c measured requests after c warm-up requests, measured phase opened by a burst.
REQUESTS_PER_CONCURRENCY = 10
WARMUP: Warmup = "burst"
_EPS = 1e-9  # ms: float slack when an arrival lands on a step boundary
# A transferred request joins a busy decode worker one step after the step in progress ends (so its first
# token comes after the residual of that step + 2 steps; an idle worker takes it at once, 1 step). Read off
# Dynamo 1.6.1's mocker (offline replay of the rehearsal's disagg plan, c = 2..32: decode admission
# 1.0–1.9 steps after the prefill ends, first token one step later) and TRT-LLM's generation worker,
# which notices a finished KV transfer at an iteration boundary and schedules the request in the next.
DECODE_JOIN_LAG_STEPS = 1


@dataclass(frozen=True)
class Method:
    """How the benchmark loads a level: measured requests per user, the warm-up method, and the spread of
    the requests' lengths.

    range_ratio r: each request's prompt and output lengths are drawn uniformly from the integers
    [⌊r·ISL⌋, ISL] and [max(⌊r·OSL⌋, 1), OSL] (vLLM's benchmark_serving.py `--random-range-ratio`, as
    InferenceX and srt-slurm's sa-bench run it: `sample_uniform`, lower = int(seq_len·range_ratio),
    upper = seq_len). 1.0 (the default, autodeploy's own benchmark) is every request at ISL/OSL exactly.
    seed: the draws are those of `np.random.RandomState(seed)`, prompts first, then outputs, one per
    request in the order the users send them: benchmark_serving.py's own sequence for its default
    --seed 0, so a prediction is reproducible and cacheable (Method is part of the cache key).
    """

    requests_per_concurrency: int = REQUESTS_PER_CONCURRENCY
    warmup: Warmup = WARMUP
    range_ratio: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.range_ratio <= 1.0:
            raise ValueError(f"range_ratio must be in [0, 1] (got {self.range_ratio})")

    @property
    def spread(self) -> bool:
        """Whether the requests' lengths differ (range_ratio < 1)."""
        return self.range_ratio < 1.0


DEFAULT_METHOD = Method()


@dataclass(frozen=True)
class Stack:
    """What the serving stack adds to the engine's steps, per request.

    loop_ms: from a request's last token to its successor reaching the engine (client, HTTP,
      frontend, tokenization, routing): the closed loop's turnaround, which also delays every request's
      first token. It decides whether the users stay synchronised: a successor that reaches an agg
      engine after the next few requests have finished queues behind their successors.
    request_ms: TTFT-only per-request cost (the engine's own work before a first token goes out that no
      step time carries); added to TTFT, not to the loop.
    admit_lag: iterations a request that reaches a busy agg engine waits before it can be scheduled
      (TRT-LLM's overlap scheduler plans iteration i + 1 while i runs: 1; Dynamo's mocker: 0).
    decode_join_lag: steps a transferred request waits at a busy decode worker after the step in
      progress (see DECODE_JOIN_LAG_STEPS).
    """

    loop_ms: float = 0.0
    request_ms: float = 0.0
    admit_lag: int = 0
    decode_join_lag: int = DECODE_JOIN_LAG_STEPS


@dataclass(frozen=True)
class SimResult:
    """The benchmark's measured means for one simulated unit (an agg rank or a disagg replica)."""

    ttft_ms: float  # mean over the measured requests
    tpot_ms: float  # mean of (end − first token)/(osl − 1)
    e2e_ms: float  # mean request latency
    requests_per_s: float  # measured requests / measured window
    first_round_ttft_ms: float  # mean TTFT of each user's first measured request (the burst)
    later_ttft_ms: float  # mean TTFT of the others (nan with one request per user)


class _Cohort:
    """Requests that were sent together and have moved together since (same round, same times).

    With spread lengths (Method.range_ratio < 1) every request is a cohort of its own, with its own
    output length `osl` and prompt length as a share `scale` of the plan's ISL.
    """

    __slots__ = ("first", "mark", "n", "osl", "rnd", "scale", "sent")

    def __init__(self, n: int, rnd: int, sent: float, osl: int, scale: float = 1.0) -> None:
        self.n = n
        self.rnd = rnd
        self.sent = sent
        self.osl = osl
        self.scale = scale
        self.first = 0.0  # time of the first token
        self.mark = 0  # engine iteration / decode step of the context step or decode join

    def split(self, k: int) -> _Cohort:
        """Take k requests off this cohort as a new one (same history)."""
        out = _Cohort(k, self.rnd, self.sent, self.osl, self.scale)
        out.first, out.mark = self.first, self.mark
        self.n -= k
        return out


def request_lengths(method: Method, isl: int, osl: int, count: int) -> tuple[list[float], list[int]]:
    """The prompt (as a share of `isl`) and output lengths of `count` requests in the order they are sent.

    Drawn as benchmark_serving.py draws them (`sample_random_requests`): np.random.seed(seed), then
    randint(⌊r·ISL⌋, ISL + 1, count) for the prompts and randint(⌊r·OSL⌋, OSL + 1, count) for the
    outputs (a bound below 1 is raised to 1). With r = 1 every request is (1.0, osl).
    """
    if not method.spread:
        return [1.0] * count, [osl] * count
    rs = np.random.RandomState(method.seed)
    r = method.range_ratio
    ins = rs.randint(max(int(isl * r), 1), isl + 1, size=count)
    outs = rs.randint(max(int(osl * r), 1), osl + 1, size=count)
    return [float(x) / isl for x in ins], [int(x) for x in outs]


class _Sender:
    """Makes the cohorts the users send: one cohort of n requests at the plan's lengths, or (spread lengths)
    n cohorts of one request, each with the next lengths of request_lengths' sequence."""

    def __init__(self, method: Method, isl: int, osl: int, users: int, rounds: int) -> None:
        self.osl = osl
        self.spread = method.spread
        if self.spread:
            if isl <= 0:
                raise ValueError("spread request lengths need the plan's isl")
            self.scales, self.osls = request_lengths(method, isl, osl, users * rounds)
        self.i = 0

    def send(self, n: int, rnd: int, t: float) -> list[_Cohort]:
        if not self.spread:
            return [_Cohort(n, rnd, t, self.osl)]
        out = []
        for _ in range(n):
            j = min(self.i, len(self.osls) - 1)
            out.append(_Cohort(1, rnd, t, self.osls[j], self.scales[j]))
            self.i += 1
        return out


class _Tally:
    """Sums over the measured requests (round ≥ first_round) as cohorts complete."""

    def __init__(self, first_round: int, request_ms: float) -> None:
        self.first_round, self.request_ms = first_round, request_ms
        self.n = self.n1 = 0
        self.ttft = self.ttft1 = self.tpot = self.e2e = 0.0
        self.start = math.inf
        self.end = 0.0

    def done(self, c: _Cohort, t: float) -> None:
        if c.rnd < self.first_round:
            return
        ttft = c.first - c.sent + self.request_ms
        self.n += c.n
        self.ttft += c.n * ttft
        self.e2e += c.n * (t - c.sent)
        self.tpot += c.n * (t - c.first) / max(c.osl - 1, 1)
        if c.rnd == self.first_round:
            self.n1 += c.n
            self.ttft1 += c.n * ttft
        self.start = min(self.start, c.sent)
        self.end = max(self.end, t)

    def result(self) -> SimResult:
        n = max(self.n, 1)
        later = self.n - self.n1
        return SimResult(
            ttft_ms=self.ttft / n,
            tpot_ms=self.tpot / n,
            e2e_ms=self.e2e / n,
            requests_per_s=self.n / max(self.end - self.start, 1e-9) * 1e3,
            first_round_ttft_ms=self.ttft1 / max(self.n1, 1),
            later_ttft_ms=(self.ttft - self.ttft1) / later if later else float("nan"),
        )


def _rounds(method: Method) -> tuple[int, int]:
    """(requests each user sends from an idle system, first measured round).

    burst: the warm-up ends before the measured phase starts, so the system is idle again and the
    measured phase is simulated alone from a burst. steady: each user goes on after its own warm-up
    request, so the warm-up round is simulated and left out of the means.
    """
    r = max(int(method.requests_per_concurrency), 1)
    return (r, 0) if method.warmup == "burst" else (r + 1, 1)


def simulate_disagg(
    users: int,
    osl: int,
    stack: Stack,
    prefill_workers: int,
    prefill_ms: Sequence[float],
    xfer_ms: float,
    decode_slots: int,
    decode_ms: Sequence[float],
    method: Method = DEFAULT_METHOD,
    isl: int = 0,
) -> SimResult:
    """One disaggregated replica under `users` closed-loop users (exact, deterministic).

    prefill_ms[n]: a prefill worker's step with n prompts (n = 1..len − 1; its batch is len − 1);
    decode_ms[n]: the decode pool's step with n running requests (n = 1..len − 1, len − 1 ≥
    min(users, decode_slots)). See the module docstring for the stations.
    Spread lengths (method.range_ratio < 1; `isl` is then the plan's ISL the tables are for): a request
    leaves the decode pool after its own output length (departures in order of their last step, a
    heap), and a prefill step of n prompts and its KV transfer take prefill_ms[n] and xfer_ms times the
    batch's mean prompt length over ISL (to first order both are proportional to the prompt tokens).
    """
    rounds, first_round = _rounds(method)
    tally = _Tally(first_round, stack.request_ms)
    sender = _Sender(method, isl, osl, users, rounds)
    spread = sender.spread
    loop_ms = stack.loop_ms
    cap = len(prefill_ms) - 1
    pre_ms = list(prefill_ms)
    dec_ms = list(decode_ms)
    # Events: (time, kind, seq, payload); kinds at equal times: prefill end, decode ready, decode
    # boundary, arrival (a request ready at a boundary joins it).
    prefill_end, decode_ready, boundary, arrive = 0, 1, 2, 3
    events: list[tuple[float, int, int, Any]] = []
    seq = 0

    def push(t: float, kind: int, payload: Any) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, kind, seq, payload))

    for c0 in sender.send(users, 0, 0.0):
        push(loop_ms, arrive, c0)
    pqueue: deque[_Cohort] = deque()
    idle = prefill_workers
    # Decode pool: running cohorts by the step after which they leave (join step + their osl), then by
    # join order (with one osl for all that is the join order: FIFO).
    dwait: deque[_Cohort] = deque()
    active: list[tuple[int, int, _Cohort]] = []
    n_act = 0
    steps = 0  # decode steps completed
    busy = False
    t0 = tau = 0.0  # start and step time of the current run of steps
    planned = 0  # steps from t0 to the next boundary event
    version = 0

    def dispatch(t: float) -> None:
        nonlocal idle
        while idle and pqueue:
            batch: list[_Cohort] = []
            n = 0
            while pqueue and n < cap:
                head = pqueue[0]
                take = min(head.n, cap - n)
                batch.append(head.split(take) if take < head.n else pqueue.popleft())
                n += take
            idle -= 1
            if spread:
                f = sum(c.scale for c in batch) / n
                push(t + pre_ms[n] * f, prefill_end, (batch, xfer_ms * f))
            else:
                push(t + pre_ms[n], prefill_end, (batch, xfer_ms))

    def at_boundary(t: float) -> None:
        """Departures, then admissions, then the next boundary (a step or a run of steps)."""
        nonlocal n_act, busy, t0, tau, planned, version, seq
        while active and active[0][0] <= steps:
            c = heapq.heappop(active)[2]
            n_act -= c.n
            tally.done(c, t)
            if c.rnd + 1 < rounds:
                for nxt in sender.send(c.n, c.rnd + 1, t):
                    push(t + loop_ms, arrive, nxt)
        joined: list[_Cohort] = []
        # An idle pool takes a waiting request at once; a busy one at the step its join lag names.
        while dwait and n_act < decode_slots and (dwait[0].mark <= steps or not n_act):
            head = dwait[0]
            take = min(head.n, decode_slots - n_act)
            c = head.split(take) if take < head.n else dwait.popleft()
            c.mark = steps
            seq += 1
            heapq.heappush(active, (steps + c.osl, seq, c))
            joined.append(c)
            n_act += take
        if not n_act:
            busy = False
            return
        busy = True
        tau = dec_ms[n_act]
        for c in joined:
            c.first = t + tau
        t0 = t
        planned = active[0][0] - steps
        if dwait and n_act < decode_slots:
            planned = min(planned, max(dwait[0].mark - steps, 1))
        version += 1
        push(t0 + planned * tau, boundary, version)

    while events:
        t, kind, _, payload = heapq.heappop(events)
        if kind == arrive:
            pqueue.append(payload)
            dispatch(t)
        elif kind == prefill_end:
            idle += 1
            batch, xfer = payload
            push(t + xfer, decode_ready, batch)
            dispatch(t)
        elif kind == decode_ready:
            if not busy:
                for c in payload:
                    c.mark = steps
                dwait.extend(payload)
                at_boundary(t)
                continue
            # A busy pool takes a transferred request at the step boundary after next: the step in
            # progress ends, one step notices the finished transfer, and the request joins the next.
            j = max(1, math.ceil((t - t0) / tau - _EPS)) + stack.decode_join_lag
            for c in payload:
                c.mark = steps + j
            dwait.extend(payload)
            if n_act < decode_slots and dwait[0].mark - steps < planned:
                planned = dwait[0].mark - steps
                version += 1
                push(t0 + planned * tau, boundary, version)
        elif payload == version:  # boundary
            steps += planned
            at_boundary(t)
    return tally.result()


def _ready(waiting: deque[_Cohort], n_wait: int, it: int) -> tuple[int, int]:
    """(waiting requests schedulable at iteration `it`, the iteration the first of the others becomes
    schedulable; it + 1 when none waits for that).

    Marks never decrease along the queue (a later arrival is marked at a later or the same iteration,
    with the same lag), so the schedulable requests are a prefix and the others a short suffix (those
    that arrived in the last admit_lag iterations): counted from the back, O(suffix), not O(queue).
    """
    later, nxt = 0, it + 1
    for c in reversed(waiting):
        if c.mark <= it:
            break
        later += c.n
        nxt = c.mark
    return n_wait - later, nxt


def simulate_agg(
    users: int,
    osl: int,
    stack: Stack,
    slots: int,
    mixed_ms: Callable[[int], Sequence[float]],
    decode_ms: Sequence[float],
    prompts_cap: Sequence[int],
    chunks: int = 1,
    method: Method = DEFAULT_METHOD,
    isl: int = 0,
) -> SimResult:
    """One attention rank of an aggregated (in-flight batching) engine under `users` users (exact).

    mixed_ms(k)[g]: an iteration with k prompts (one chunk of one prompt when chunks > 1) next to g
    decodes (a row per k, asked for only for the k that occur); decode_ms[g]: a decode-only iteration
    (g ≥ 1); prompts_cap[g]: prompts the token budget admits next to g decodes, ⌊(max_num_tokens − g)/isl⌋
    (chunked: 1); chunks: iterations per prompt. g runs to min(users, slots).
    Spread lengths (method.range_ratio < 1; `isl` is then the plan's ISL the tables are for): a request
    leaves after its own output length (departures in order of their last iteration, a heap), and the
    prompt part of a mixed iteration, mixed − decode[g], is scaled by the mean prompt length of its
    prompts over ISL (GEMM work is linear in the tokens; the attention's quadratic part differs by
    < 10 % of itself over r ≥ 0.8). The token budget still counts prompts of ISL (conservative).
    """
    rounds, first_round = _rounds(method)
    tally = _Tally(first_round, stack.request_ms)
    sender = _Sender(method, isl, osl, users, rounds)
    spread = sender.spread
    loop_ms, admit_lag = stack.loop_ms, stack.admit_lag
    rows: dict[int, Sequence[float]] = {}

    def mix(k: int, g: int) -> float:
        row = rows.get(k)
        if row is None:
            row = rows[k] = mixed_ms(k)
        return row[g]

    dec = list(decode_ms)
    kcap = list(prompts_cap)
    seq = 0
    arrivals: list[tuple[float, int, _Cohort]] = []
    for c0 in sender.send(users, 0, 0.0):
        seq += 1
        arrivals.append((loop_ms, seq, c0))
    waiting: deque[_Cohort] = deque()
    n_wait = 0
    # Running cohorts by the iteration after which they leave (context iteration + their osl), then by
    # admission order (with one osl for all that is the admission order: FIFO).
    active: list[tuple[int, int, _Cohort]] = []
    n_act = 0
    chunk: _Cohort | None = None  # the prompt being prefilled in chunks
    chunks_done = 0
    t = 0.0
    it = 0  # iterations completed

    def prompt_step(step: float, g: int, scale: float) -> float:
        """A mixed iteration whose prompts are `scale` × ISL long on average."""
        base = dec[g] if g else 0.0
        return step + max(step - base, 0.0) * (scale - 1.0)

    while True:
        while active and active[0][0] <= it:
            c = heapq.heappop(active)[2]
            n_act -= c.n
            tally.done(c, t)
            if c.rnd + 1 < rounds:
                for nxt in sender.send(c.n, c.rnd + 1, t):
                    seq += 1
                    heapq.heappush(arrivals, (t + loop_ms, seq, nxt))
        lag = admit_lag if (n_act or chunk is not None) else 0
        while arrivals and arrivals[0][0] <= t + _EPS:
            c = heapq.heappop(arrivals)[2]
            c.mark = it + lag
            waiting.append(c)
            n_wait += c.n
        g = n_act
        # waiting requests the scheduler may take now (FIFO, so a prefix of the queue)
        ready, next_mark = _ready(waiting, n_wait, it) if n_wait else (0, it + 1)
        if chunks > 1:
            if chunk is None and ready and g < slots:
                head = waiting[0]
                chunk = head.split(1) if head.n > 1 else waiting.popleft()
                n_wait -= 1
                chunks_done = 0
            if chunk is not None:
                step = mix(1, g)
                t += prompt_step(step, g, chunk.scale) if spread else step
                chunks_done += 1
                if chunks_done == chunks:
                    chunk.mark, chunk.first = it, t
                    seq += 1
                    heapq.heappush(active, (it + chunk.osl, seq, chunk))
                    n_act += 1
                    chunk = None
                it += 1
                continue
        else:
            k = min(ready, slots - g, kcap[g]) if ready else 0
            if k > 0:
                taken: list[_Cohort] = []
                left = k
                while left:
                    head = waiting[0]
                    take = min(head.n, left)
                    taken.append(head.split(take) if take < head.n else waiting.popleft())
                    left -= take
                step = mix(k, g)
                t += prompt_step(step, g, sum(c.scale for c in taken) / k) if spread else step
                for c in taken:
                    c.mark, c.first = it, t
                    seq += 1
                    heapq.heappush(active, (it + c.osl, seq, c))
                n_wait -= k
                n_act += k
                it += 1
                continue
        if not g:
            if n_wait:  # an idle engine takes a request at once
                waiting[0].mark = it
                continue
            if not arrivals:
                break
            t = max(t, arrivals[0][0])
            continue
        tau = dec[g]
        m = active[0][0] - it
        if ready < n_wait:  # stop where the next waiting request may be scheduled
            m = min(m, next_mark - it)
        elif not n_wait and arrivals:
            m = min(m, max(1, math.ceil((arrivals[0][0] - t) / tau - _EPS)))
        t += m * tau
        it += m
    return tally.result()


def _burst_mix(method: Method) -> tuple[float, float]:
    """(weight of the burst round, weight of the later rounds) in the measured mean."""
    if method.warmup == "steady":
        return 0.0, 1.0
    r = max(int(method.requests_per_concurrency), 1)
    return 1.0 / r, 1.0 - 1.0 / r


def _spread_means(method: Method, osl: Any) -> tuple[float, Any]:
    """(mean prompt length over ISL, mean output length) of the method's requests, for the closed forms:
    (1 + r)/2 and (⌊r·OSL⌋ + OSL)/2 (the integer bound of ISL is not known there: its share is < 1/ISL)."""
    out_len = np.asarray(osl, dtype=float)
    if not method.spread:
        return 1.0, out_len
    r = method.range_ratio
    return (1.0 + r) / 2.0, (np.maximum(np.floor(r * out_len), 1.0) + out_len) / 2.0


def closed_form_disagg(
    users: Any,
    osl: Any,
    stack: Stack,
    prefill_workers: Any,
    prefill_cap: Any,
    prefill_batch_ms: Any,
    prefill_one_ms: Any,
    xfer_ms: Any,
    decode_slots: Any,
    decode_step_ms: Any,
    method: Method = DEFAULT_METHOD,
) -> Any:
    """Mean TTFT of the benchmark on one disagg replica, in closed form (numpy, element-wise).

    c users; x prefill workers of n prompts per step (t_p1: one prompt, t_pb: a full batch); S decode
    slots, decode step τ at the batch.
    T₁ = loop + t_p1 + xfer + τ·(1 + β·(lag + ½)) + request     β = min(max(c − 1, 0), 1): decode busy
    Z  = loop + t_p1 + xfer + τ·β·(lag + ½) + osl·τ               the cycle without waiting
    W_burst  = t_pb·(⌈c/(x·n)⌉ − 1)/2 + osl·τ·(⌈c/S⌉ − 1)/2     a burst of c on x workers of n prompts
                                                                 per step, then on S decode slots
    W_steady = max(0, c·max(t_pb/(x·n), osl·τ/S) − Z)             Little's law at the bottleneck
    TTFT = T₁ + W_burst/R + (1 − 1/R)·W_steady                    (steady warm-up: T₁ + W_steady)
    Spread lengths (method.range_ratio = r < 1): the same with the mean lengths, osl → (⌊r·osl⌋ + osl)/2
    and t_p1, t_pb, xfer × (1 + r)/2 (the simulation scales a step by its prompts' mean length).
    Not modelled: near a rate-matched prefill (c·t_pb/(x·n) ≈ Z) the burst's first requests decode
    while the batch still fills, return early and queue behind its last ones, a backlog the later
    rounds drain slowly; there the exact simulation's TTFT is up to ~45 % higher (test_queueing.py).
    """
    c = np.maximum(np.asarray(users, dtype=float), 1.0)
    scale, out_len = _spread_means(method, osl)
    tau = np.asarray(decode_step_ms, dtype=float)
    t1 = np.asarray(prefill_one_ms, dtype=float)
    tb = np.asarray(prefill_batch_ms, dtype=float)
    if method.spread:
        t1, tb, xfer_ms = t1 * scale, tb * scale, np.asarray(xfer_ms, dtype=float) * scale
    per_step = np.asarray(prefill_workers, dtype=float) * np.asarray(prefill_cap, dtype=float)
    slots = np.maximum(np.asarray(decode_slots, dtype=float), 1.0)
    busy = np.clip(c - 1.0, 0.0, 1.0)
    join = tau * busy * (stack.decode_join_lag + 0.5)
    first = stack.loop_ms + t1 + xfer_ms + join + tau + stack.request_ms
    cycle = stack.loop_ms + t1 + xfer_ms + join + out_len * tau
    w_burst = tb * (np.ceil(c / per_step) - 1.0) / 2.0 + out_len * tau * (np.ceil(c / slots) - 1.0) / 2.0
    w_steady = np.maximum(c * np.maximum(tb / per_step, out_len * tau / slots) - cycle, 0.0)
    a, b = _burst_mix(method)
    return first + a * w_burst + b * w_steady


def closed_form_agg(
    users: Any,
    osl: Any,
    stack: Stack,
    prompts_per_step: Any,
    chunks: Any,
    mixed_ms: Any,
    decode_step_ms: Any,
    method: Method = DEFAULT_METHOD,
) -> Any:
    """Mean TTFT of the benchmark on one agg attention rank, in closed form (numpy, element-wise).

    c users, k prompts per mixed iteration of t_m (a prompt of `chunks` chunks takes that many), decode
    iteration τ:
    G = ⌈c/k⌉ groups, T_g = chunks·t_m (one group), M = chunks·G mixed iterations per round
    f = min(M/osl, 1), T_it = f·t_m + (1 − f)·τ           the mean iteration while users cycle
    T₁ = loop + T_g + (lag + ½)·T_it·β + request         β = min(max(c − 1, 0), 1)
    W_burst = T_g·(G − 1)/2                              a burst of c, one group per mixed iteration
    The later rounds stay partly synchronised (simulate_agg): the users of a round finish one iteration
    apart, and a user's successor reaches the engine n = (loop + lag·T_it)/T_it iterations after it
    finished, behind the successors of the n users that finished meanwhile; and when a round needs
    more mixed iterations than a request lives (M > osl) the extra ones are waited for:
    W_steady = max(T_g·min(n, (G − 1)/2), (M − osl)·t_m)
    TTFT = T₁ + W_burst/R + (1 − 1/R)·W_steady           (steady warm-up: T₁ + W_steady)
    Prefill load that fits in a request's life does not queue in agg: it stretches the decode
    iterations into mixed ones, which TPOT (compose.agg_metrics) carries.
    Spread lengths (method.range_ratio = r < 1): the mean lengths, osl → (⌊r·osl⌋ + osl)/2 and the
    prompt part t_m − τ × (1 + r)/2; and the users no longer finish a round together (their output
    lengths differ by up to (1 − r)·osl iterations), so the synchronised queue goes:
    W_steady = (M − osl)·t_m only.
    """
    c = np.maximum(np.asarray(users, dtype=float), 1.0)
    scale, out_len = _spread_means(method, osl)
    tau = np.asarray(decode_step_ms, dtype=float)
    t_m = np.asarray(mixed_ms, dtype=float)
    if method.spread:
        t_m = tau + np.maximum(t_m - tau, 0.0) * scale
    n_chunks = np.asarray(chunks, dtype=float)
    group = n_chunks * t_m
    groups = np.ceil(c / np.maximum(np.asarray(prompts_per_step, dtype=float), 1.0))
    mixed_its = n_chunks * groups
    f = np.minimum(mixed_its / np.maximum(out_len, 1.0), 1.0)
    t_it = f * t_m + (1.0 - f) * tau
    busy = np.clip(c - 1.0, 0.0, 1.0)
    first = stack.loop_ms + group + (stack.admit_lag + 0.5) * t_it * busy + stack.request_ms
    w_burst = group * (groups - 1.0) / 2.0
    behind = (stack.loop_ms + stack.admit_lag * t_it) / t_it
    saturated = np.maximum(mixed_its - out_len, 0.0) * t_m
    if method.spread:
        w_steady = saturated
    else:
        w_steady = np.maximum(group * np.minimum(behind, (groups - 1.0) / 2.0), saturated)
    a, b = _burst_mix(method)
    return first + a * w_burst + b * w_steady
