"""The Dynamo frontend's own view of a benchmark level: /metrics scraped at both ends of the window."""

from __future__ import annotations

import math
import re
import threading
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# The frontend's metric names are `<prefix>_<name>`: `dynamo_frontend` since Dynamo 0.4 by default, and
# `nv_llm_http_service` when DYN_METRICS_PREFIX asks for the NIM names (lib/llm/src/http/service/metrics.rs).
PREFIXES = ("dynamo_frontend", "nv_llm_http_service")

# Counters and histogram sums/counts whose change over the window is the server's measurement.
COUNTERS = {
    "ttft_sum": "time_to_first_token_seconds_sum",
    "ttft_count": "time_to_first_token_seconds_count",
    "itl_sum": "inter_token_latency_seconds_sum",
    "itl_count": "inter_token_latency_seconds_count",
    "duration_sum": "request_duration_seconds_sum",
    "duration_count": "request_duration_seconds_count",
    "cached_tokens_sum": "cached_tokens_sum",
    "cached_tokens_count": "cached_tokens_count",
    "input_tokens_sum": "input_sequence_tokens_sum",
    "output_tokens": "output_tokens_total",
}
GAUGES = {"queued": "queued_requests", "inflight": "inflight_requests"}

# A client and the server disagreeing by more than this on a mean is flagged with its likely cause,
# unless the difference is below the floor: the client's clock starts before the frontend's (connect,
# send, HTTP parsing: 1-3 ms measured on loopback), which is a large share of a tiny test TTFT only.
GAP_LIMIT = 0.10
GAP_FLOOR_MS = {"ttft": 5.0, "itl": 0.5}
# The likely cause of a gap, by metric and by sign (client above the server: True).
GAP_CAUSES = {
    "ttft": {
        True: "the client's clock starts before the request reaches the frontend (connect, send) or the "
        "client read the first token late (saturated client)",
        False: "the server's window holds requests the client did not measure (warm-up or another client)",
    },
    "itl": {
        True: "the client reads tokens later than the server sends them (saturated client, or the server "
        "sends several tokens in one event)",
        False: "the client's ITL divides by output tokens, the server's by the events it sent",
    },
}

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text exposition → (name, labels, value) per sample; comments and junk lines skipped."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            continue
        try:
            value = float(match.group(4))
        except ValueError:
            continue
        labels = dict(_LABEL.findall(match.group(3) or ""))
        samples.append((match.group(1), labels, value))
    return samples


@dataclass
class Snapshot:
    """The frontend's counters for one model at one instant (sums over every label set)."""

    prefix: str
    values: dict[str, float]
    succeeded: float
    failed: float


def snapshot(text: str, model: str | None) -> Snapshot | None:
    """The counters of `model` (every model when None) from one scrape; None when no frontend metrics."""
    samples = parse_exposition(text)
    names = {name for name, _, _ in samples}
    prefix = next((p for p in PREFIXES if f"{p}_requests_total" in names), None)
    if prefix is None:
        return None

    def total(suffix: str, keep: Any = lambda labels: True) -> float:
        return sum(
            value
            for name, labels, value in samples
            if name == f"{prefix}_{suffix}"
            and (model is None or labels.get("model", model) == model)
            and keep(labels)
        )

    values = {key: total(suffix) for key, suffix in COUNTERS.items()}
    values.update({key: total(suffix) for key, suffix in GAUGES.items()})
    return Snapshot(
        prefix=prefix,
        values=values,
        succeeded=total("requests_total", lambda labels: labels.get("status") == "success"),
        failed=total("requests_total", lambda labels: labels.get("status", "success") != "success"),
    )


def gauges(text: str, model: str | None) -> tuple[float, float] | None:
    """(queued, in flight) from one scrape, reading only those lines.

    The sampler runs beside the built-in client, in its process: a full parse of the ~90 KB exposition
    holds the GIL ~6 ms, long enough to jitter the client's sends; this scan takes a fraction of that.
    """
    found: dict[str, float] = {}
    for prefix in PREFIXES:
        for key, suffix in GAUGES.items():
            name = f"{prefix}_{suffix}"
            at = text.find("\n" + name)
            while at >= 0:
                end = text.find("\n", at + 1)
                line = text[at + 1 : end if end >= 0 else None]
                samples = parse_exposition(line)
                if (
                    samples
                    and samples[0][0] == name
                    and (model is None or samples[0][1].get("model", model) == model)
                ):
                    found[key] = found.get(key, 0.0) + samples[0][2]
                at = text.find("\n" + name, at + 1)
        if found:
            return found.get("queued", 0.0), found.get("inflight", 0.0)
    return None


def fetch(url: str, timeout_s: float = 5.0) -> str:
    """GET <frontend>/metrics."""
    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=timeout_s) as response:
        return str(response.read().decode(errors="replace"))


@dataclass
class GaugeSampler:
    """Samples the queued and in-flight gauges every `interval_s` in a thread while a level runs."""

    url: str
    model: str | None
    interval_s: float = 0.5
    samples: list[tuple[float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="gauge-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                taken = gauges(fetch(self.url, timeout_s=self.interval_s * 4), self.model)
            except (OSError, ValueError):
                continue
            if taken is not None:
                self.samples.append(taken)

    def stop(self) -> tuple[float | None, float | None]:
        """(max queued, max in flight) seen while it ran."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not self.samples:
            return None, None
        return max(s[0] for s in self.samples), max(s[1] for s in self.samples)


def _mean_ms(delta: dict[str, float], key: str) -> float | None:
    count = delta[f"{key}_count"]
    return delta[f"{key}_sum"] / count * 1000.0 if count > 0 else None


def _gap(client: float | None, server: float | None) -> float | None:
    if client is None or server is None or server <= 0 or math.isnan(client):
        return None
    return client / server - 1.0


def window(
    before: Snapshot,
    after: Snapshot,
    window_s: float,
    client: dict[str, Any],
    measured_requests: int,
    gauges: tuple[float | None, float | None] = (None, None),
    exact: bool = True,
) -> dict[str, Any]:
    """The server's measurement of one level's window, beside the client's, with the gaps flagged.

    server TTFT = Δ ttft_sum / Δ ttft_count (the frontend starts its clock when the request arrives and
    stops it at the first token it sends); server ITL = Δ itl_sum / Δ itl_count (the frontend observes
    one gap per token after the first). The gaps are client / server − 1 on the means. `exact` is False
    when warm-up requests were still streaming inside the window (benchmark.warmup: steady), so the
    server's sums hold a few warm-up observations too.
    """
    delta = {key: after.values[key] - before.values[key] for key in COUNTERS}
    ttft = _mean_ms(delta, "ttft")
    itl = _mean_ms(delta, "itl")
    client_ttft = (client.get("time_to_first_token_ms") or {}).get("avg")
    client_itl = (client.get("inter_token_latency_ms") or {}).get("avg")
    gaps = {"ttft": _gap(client_ttft, ttft), "itl": _gap(client_itl, itl)}
    requests = after.succeeded + after.failed - before.succeeded - before.failed
    flags = list(_flags(gaps, client_ttft, ttft, client_itl, itl, requests, measured_requests, exact))
    return {
        "window_s": window_s,
        "requests": requests,
        "failed": after.failed - before.failed,
        "ttft_ms": ttft,
        "itl_ms": itl,
        "request_latency_ms": _mean_ms(delta, "duration"),
        "output_tokens": delta["output_tokens"],
        "queued_max": gauges[0],
        "inflight_max": gauges[1],
        "cached_tokens": delta["cached_tokens_sum"] if delta["cached_tokens_count"] > 0 else None,
        "exact_window": exact,
        "gaps": gaps,
        "flags": flags,
    }


def _flags(
    gaps: dict[str, float | None],
    client_ttft: float | None,
    server_ttft: float | None,
    client_itl: float | None,
    server_itl: float | None,
    requests: float,
    measured: int,
    exact: bool,
) -> Iterable[str]:
    """One line per gap above GAP_LIMIT, with the cause that fits its sign and the window."""
    if requests != measured:
        yield (
            f"the server counted {requests:.0f} requests in the window, the client sent {measured}: "
            + (
                "warm-up requests overlapped the window (warmup: steady)"
                if not exact
                else "another client was sending to this frontend"
            )
        )
    for key, label, client, server, fmt in (
        ("ttft", "TTFT", client_ttft, server_ttft, "{:.1f}"),
        ("itl", "ITL", client_itl, server_itl, "{:.2f}"),
    ):
        gap = gaps[key]
        if client is None or server is None or gap is None:
            continue
        if abs(gap) > GAP_LIMIT and abs(client - server) > GAP_FLOOR_MS[key]:
            cause = GAP_CAUSES[key][gap > 0]
            yield (
                f"{label}: client {fmt.format(client)} ms vs server {fmt.format(server)} ms ({gap:+.0%}): {cause}"
            )
