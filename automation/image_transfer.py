"""Ship an image between nodes' Docker engines: one `docker save` streamed into several `docker load`s, or a registry."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from automation.docker_engine import DockerEngine
from automation.errors import StageError
from automation.remote import Stream

# Chunks queued per receiving node: a slow node holds up the others by at most this much buffered data.
_QUEUED_CHUNKS = 16
_CHUNK = 1 << 20
# A node whose `docker load` takes no data for this long is treated as stuck.
_STALLED_S = 600.0
# After the last byte, a docker load still unpacks and registers the layers.
_LOAD_FINISH_S = 1800.0


@dataclass
class _Receiver:
    """One node's `docker load`, fed from a queue by its own thread."""

    engine: DockerEngine
    stream: Stream
    chunks: queue.Queue[bytes | None] = field(default_factory=lambda: queue.Queue(_QUEUED_CHUNKS))
    error: str | None = None
    received: int = 0
    thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.engine.host.name

    def feed(self) -> None:
        try:
            while (chunk := self.chunks.get()) is not None:
                if self.error is None:
                    self.stream.write(chunk)
                    self.received += len(chunk)
        except (BrokenPipeError, OSError) as exc:
            self.error = f"it stopped taking data ({exc.__class__.__name__})"
            self._drain()

    def _drain(self) -> None:
        """Keep taking chunks (and dropping them) so the sender never blocks on a node that failed."""
        while self.chunks.get() is not None:
            pass


def send(
    source: Callable[[], Iterator[bytes]],
    receivers: Sequence[DockerEngine],
    progress: Callable[[int], None],
    what: str,
    by_hand: str = "",
) -> None:
    """Feed the bytes of `source` into `docker load` on every receiver at once.

    Nothing is written to disk on the way. Every receiver gets all of it or, on any failure or
    interruption, its load is cut off (docker load keeps nothing of a cut archive), so a node never
    holds half an image under the name.

    Raises:
        StageError: a node's docker load failed (named, with its last words), or the source failed.
    """
    started: list[_Receiver] = []
    try:
        for engine in receivers:
            receiver = _Receiver(engine, engine.load_stream())
            receiver.thread = threading.Thread(
                target=receiver.feed, name=f"load-{receiver.name}", daemon=True
            )
            receiver.thread.start()
            started.append(receiver)
        for chunk in source():
            for receiver in started:
                _hand(receiver, chunk)
            progress(len(chunk))
        for receiver in started:
            _hand(receiver, None)
        for receiver in started:
            assert receiver.thread is not None
            receiver.thread.join()
            ended = receiver.stream.wait(timeout=_LOAD_FINISH_S)
            if not ended.ok and receiver.error is None:
                receiver.error = (ended.stderr.strip().splitlines() or [f"exit {ended.exit_code}"])[-1]
    except BaseException:
        for receiver in started:
            receiver.stream.kill()
        raise
    failed = [r for r in started if r.error is not None]
    if failed:
        first = failed[0]
        raise StageError(
            f"loading {what} failed on {', '.join(r.name for r in failed)}: {first.name}: {first.error}",
            hint=f"check free disk space and dockerd there (docker info on {first.name}), then rerun"
            + (f"; by hand: {by_hand}" if by_hand else ""),
            nodes=[r.name for r in failed],
        )


def _hand(receiver: _Receiver, chunk: bytes | None) -> None:
    """Queue a chunk for a node's load; a node that takes nothing for _STALLED_S is a one-line error."""
    try:
        receiver.chunks.put(chunk, timeout=_STALLED_S)
    except queue.Full:
        raise StageError(
            f"{receiver.name} took no image data for {_STALLED_S:.0f} s (its docker load is stuck)",
            hint=f"check dockerd and the disk on {receiver.name} (docker info), then rerun",
            host=receiver.name,
        ) from None


def saved_image(engine: DockerEngine, image: str) -> Callable[[], Iterator[bytes]]:
    """The bytes of `docker save image` on a node, as they come."""

    def chunks() -> Iterator[bytes]:
        stream = engine.save_stream(image)
        try:
            while chunk := stream.read(_CHUNK):
                yield chunk
            ended = stream.wait(timeout=_STALLED_S)
        except BaseException:
            stream.kill()
            raise
        if not ended.ok:
            raise StageError(
                f"docker save {image} failed on {engine.host.name}: "
                + (ended.stderr.strip().splitlines() or [f"exit {ended.exit_code}"])[-1],
                hint=f"run `docker save {image} > /dev/null` on {engine.host.name} to see why",
                host=engine.host.name,
            )

    return chunks


def archive(path: Path) -> Callable[[], Iterator[bytes]]:
    """The bytes of a `docker save` archive on this machine."""

    def chunks() -> Iterator[bytes]:
        handle: BinaryIO
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                yield chunk

    return chunks


class Rate:
    """Bytes counted as they pass, for a progress line in MB and MB/s."""

    def __init__(self, report: Callable[[float, str], None]) -> None:
        self._report = report
        self._started = time.monotonic()
        self._shown = 0.0
        self.bytes = 0
        self._lock = threading.Lock()

    def __call__(self, count: int) -> None:
        with self._lock:
            self.bytes += count
            now = time.monotonic()
            if now - self._shown < 0.25:
                return
            self._shown = now
        self._report(self.bytes / 1e6, f"{self.mb_per_s():.0f} MB/s")

    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / max(time.monotonic() - self._started, 1e-6)


def registry_reference(registry: str, image: str) -> str:
    """Where `image` goes in `registry` (HOST:PORT[/prefix]): its path without its own registry host.

    nvcr.io/nvidia/ai-dynamo/tensorrtllm-runtime:1.6.1 -> REG/prefix/nvidia/ai-dynamo/tensorrtllm-runtime:1.6.1
    """
    first, _, rest = image.partition("/")
    # Docker's rule: the first component names a registry when it has a '.' or ':' or is localhost.
    path = rest if rest and ("." in first or ":" in first or first == "localhost") else image
    if "@" in path:
        path = path.split("@", 1)[0]
    if ":" not in path.rsplit("/", 1)[-1]:
        path += ":latest"
    return f"{registry.rstrip('/')}/{path}"
