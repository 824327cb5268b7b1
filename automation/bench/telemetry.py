"""GPU utilisation, memory and power per GPU while a level runs, read with nvidia-smi on every node."""

from __future__ import annotations

import csv
import io
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from automation.errors import StageError
from automation.remote import Host, Stream

# nvidia-smi's own sampling loop (-lms): one CSV line per GPU every interval, until it is killed.
QUERY = "index,utilization.gpu,memory.used,power.draw"
INTERVAL_MS = 1000
COLUMNS = ("t_s", "node", "gpu", "util_pct", "mem_used_mb", "power_w")


class Sample(NamedTuple):
    """One GPU's reading (None where nvidia-smi says [N/A])."""

    t_s: float
    node: str
    gpu: int
    util_pct: float | None
    mem_used_mb: float | None
    power_w: float | None


def sampling_command(interval_ms: int = INTERVAL_MS) -> str:
    return f"exec nvidia-smi --query-gpu={QUERY} --format=csv,noheader,nounits -lms {interval_ms}"


def _number(text: str) -> float | None:
    try:
        return float(text.strip())
    except ValueError:
        return None  # "[N/A]", "[Not Supported]"


@dataclass
class GpuTelemetry:
    """Samples every node that has nvidia-smi; nodes without it are named in `absent`, never an error."""

    hosts: Mapping[str, Host]
    present: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    rows: list[Sample] = field(default_factory=list)
    _streams: list[Stream] = field(default_factory=list)
    _readers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _t0: float = 0.0

    def probe(self) -> None:
        """Which nodes can report (`nvidia-smi -L` lists at least one GPU)."""
        for name, host in self.hosts.items():
            try:
                result = host.run("nvidia-smi -L", check=False, timeout=20)
            except StageError:  # unreachable: its GPUs are simply not sampled
                self.absent.append(name)
                continue
            (self.present if result.exit_code == 0 and "GPU" in result.stdout else self.absent).append(name)

    def absent_reason(self) -> str | None:
        if not self.absent:
            return None
        return f"no nvidia-smi GPUs on {', '.join(self.absent)}"

    def start(self) -> None:
        """Start nvidia-smi's loop on every present node; rows arrive until stop()."""
        self.rows = []
        self._t0 = time.perf_counter()
        for name in self.present:
            stream = self.hosts[name].open_stream(sampling_command())
            self._streams.append(stream)
            reader = threading.Thread(target=self._read, args=(name, stream), daemon=True)
            reader.start()
            self._readers.append(reader)

    def _read(self, node: str, stream: Stream) -> None:
        pending = b""
        while chunk := stream.read(4096):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            now = time.perf_counter() - self._t0
            for line in lines:
                parts = line.decode(errors="replace").split(",")
                if len(parts) != 4 or not parts[0].strip().isdigit():
                    continue
                with self._lock:
                    self.rows.append(
                        Sample(
                            now, node, int(parts[0]), _number(parts[1]), _number(parts[2]), _number(parts[3])
                        )
                    )

    def stop(self) -> None:
        for stream in self._streams:
            stream.kill()
        for reader in self._readers:
            reader.join(timeout=5)
        self._streams, self._readers = [], []

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in self.rows:
            writer.writerow([f"{row.t_s:.3f}", row.node, row.gpu, row.util_pct, row.mem_used_mb, row.power_w])
        return out.getvalue()

    def summary(self, file: str) -> dict[str, Any]:
        """Mean utilisation, peak memory, mean power over every GPU sample of the level."""

        util = [row.util_pct for row in self.rows if row.util_pct is not None]
        memory = [row.mem_used_mb for row in self.rows if row.mem_used_mb is not None]
        power = [row.power_w for row in self.rows if row.power_w is not None]
        out: dict[str, Any] = {
            "file": file,
            "gpus": len({(row.node, row.gpu) for row in self.rows}),
            "samples": len(self.rows),
            "util_mean": sum(util) / len(util) if util else None,
            "mem_max_mb": max(memory) if memory else None,
            "power_mean_w": sum(power) / len(power) if power else None,
        }
        if self.absent:
            out["absent"] = self.absent_reason()
        return out
