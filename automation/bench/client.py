"""A closed-loop streaming load generator for the OpenAI-compatible completions endpoint (aiohttp)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from automation.bench.metrics import RequestRecord


def request_body(model: str, prompt: str, osl: int) -> dict[str, Any]:
    """Exactly `osl` output tokens: max_tokens = min_tokens = osl with ignore_eos (no `nvext`: Dynamo 1.x
    answers 400 to it). Streaming, so the first token's arrival can be timed."""
    return {
        "model": model,
        "prompt": prompt,
        "max_tokens": osl,
        "min_tokens": osl,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def _one(session: Any, url: str, record: RequestRecord, body: dict[str, Any]) -> RequestRecord:
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
                choices = event.get("choices") or []
                if choices and (choices[0].get("text") or "") != "":
                    now = time.perf_counter()
                    if record.first_token is None:
                        record.first_token = now
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


async def _run(
    url: str,
    model: str,
    prompts: Sequence[str],
    warmup: int,
    concurrency: int,
    osl: int,
    timeout_s: float,
    on_done: Callable[[RequestRecord], None],
) -> list[RequestRecord]:
    endpoint = url.rstrip("/") + "/v1/completions"
    indices = itertools.count()
    records: list[RequestRecord] = []
    # A fresh connection per request: on a reused keep-alive connection the first streamed chunk can
    # wait ~40 ms for a delayed ACK, which would be measured as TTFT (seen here: 170 ms pooled against
    # 135 ms fresh, at c=1 on loopback); a TCP connect costs well under a millisecond on a LAN.
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=True)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def user() -> None:
            # Closed loop: each simulated user sends its next request when the previous one ends.
            while (index := next(indices)) < len(prompts):
                record = RequestRecord(index=index, warmup=index < warmup, start=time.perf_counter())
                await _one(session, endpoint, record, request_body(model, prompts[index], osl))
                records.append(record)
                on_done(record)

        await asyncio.gather(*(user() for _ in range(concurrency)))
    return records


def run_level(
    url: str,
    model: str,
    prompts: Sequence[str],
    warmup: int,
    concurrency: int,
    osl: int,
    timeout_s: float,
    on_done: Callable[[RequestRecord], None] = lambda record: None,
) -> list[RequestRecord]:
    """Send every prompt with `concurrency` requests in flight; the first `warmup` are marked warm-up."""
    return asyncio.run(_run(url, model, prompts, warmup, concurrency, osl, timeout_s, on_done))
