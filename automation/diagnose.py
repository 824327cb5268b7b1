"""Known failure causes found in a run's logs, from the signature table in data/failure_signatures.yaml."""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SIGNATURES_FILE = Path(__file__).resolve().parent / "data" / "failure_signatures.yaml"
EVIDENCE_CHARS = 200
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Dynamo colours its logs even in files
_KEYS = {"name", "patterns", "advice", "source"}


@dataclass(frozen=True)
class Finding:
    """One recognised cause: the signature's name and advice, the line that showed it and where it was."""

    signature: str
    advice: str
    evidence: str  # the matching line, stripped, at most EVIDENCE_CHARS characters
    where: str  # "logs/launch.node1.log:123" (1-based line) or "bench/c4.json:error_examples[0]"


@dataclass(frozen=True)
class Signature:
    """One row of the table, ready to match."""

    name: str
    pattern: re.Pattern[str]  # the entry's patterns as one alternation
    advice: str


@functools.cache
def signatures() -> tuple[Signature, ...]:
    """The table, parsed and checked once; a malformed table is a bug in autodeploy and raises ValueError."""
    data: Any = yaml.safe_load(SIGNATURES_FILE.read_text())
    entries = data.get("signatures") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{SIGNATURES_FILE}: expected a non-empty list under 'signatures'")
    table: list[Signature] = []
    for index, entry in enumerate(entries):
        where = f"{SIGNATURES_FILE.name} entry {index}"
        if not isinstance(entry, dict) or set(entry) != _KEYS:
            raise ValueError(f"{where}: expected exactly the keys {sorted(_KEYS)}")
        name, patterns, advice = entry["name"], entry["patterns"], entry["advice"]
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9_]+", name):
            raise ValueError(f"{where}: name must be snake_case, got {name!r}")
        if any(s.name == name for s in table):
            raise ValueError(f"{where}: duplicate name {name!r}")
        if not isinstance(advice, str) or not advice.strip() or "\n" in advice.strip():
            raise ValueError(f"{where} ({name}): advice must be one non-empty line")
        if not isinstance(entry["source"], str) or not entry["source"].strip():
            raise ValueError(f"{where} ({name}): source must say where the message comes from")
        if (
            not isinstance(patterns, list)
            or not patterns
            or not all(isinstance(p, str) and p for p in patterns)
        ):
            raise ValueError(f"{where} ({name}): patterns must be a non-empty list of regexes")
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{where} ({name}): bad pattern {pattern!r}: {exc}") from exc
        combined = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)
        table.append(Signature(name, combined, advice.strip()))
    return tuple(table)


def _evidence(line: str, match: re.Match[str]) -> str:
    """The line, stripped; a longer one than EVIDENCE_CHARS is cut to show its match."""
    text = line.strip()
    if len(text) <= EVIDENCE_CHARS:
        return text
    offset = len(line) - len(line.lstrip())
    end = match.end() - offset
    start = (
        0 if end <= EVIDENCE_CHARS else max(0, min(match.start() - offset - 40, len(text) - EVIDENCE_CHARS))
    )
    return text[start : start + EVIDENCE_CHARS].strip()


def _scan(lines: Iterable[tuple[str, str]]) -> list[Finding]:
    """The signatures found in `lines` ((where, line) pairs, in order), each once, in table order."""
    first: dict[str, Finding] = {}
    table = signatures()
    for where, raw in lines:
        line = _ANSI.sub("", raw)
        for signature in table:
            match = None if signature.name in first else signature.pattern.search(line)
            if match:
                first[signature.name] = Finding(
                    signature.name, signature.advice, _evidence(line, match), where
                )
        if len(first) == len(table):
            break
    return [first[s.name] for s in table if s.name in first]


def _numbered(texts: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    for where, text in texts.items():
        for number, line in enumerate(text.splitlines(), start=1):
            yield f"{where}:{number}", line


def diagnose(texts: Mapping[str, str]) -> list[Finding]:
    """The signatures found in `texts` ({where: text}), each once with its first evidence, in table order.

    Texts are searched in the mapping's order, line by line; a finding's `where` is "<where>:<line>".
    """
    return _scan(_numbered(texts))


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _error_examples(path: Path) -> list[str]:
    """summary.error_examples of a benchmark level file; nothing when it is missing or malformed."""
    text = _read(path)
    try:
        data = json.loads(text) if text is not None else None
    except ValueError:
        return []
    summary = data.get("summary") if isinstance(data, dict) else None
    examples = summary.get("error_examples") if isinstance(summary, dict) else None
    return [e for e in examples if isinstance(e, str)] if isinstance(examples, list) else []


def _level(path: Path) -> tuple[int, str]:
    """bench/c<N>.json in order of N."""
    digits = path.stem[1:]
    return (int(digits), path.name) if digits.isdigit() else (1 << 30, path.name)


def diagnose_run(run_dir: Path, stage: str) -> list[Finding]:
    """Diagnose a failed stage from its files in the run directory: logs/<stage>.log, the node logs
    logs/<stage>.*.log, and for "benchmark" the failed requests' error_examples of bench/c*.json (where:
    "bench/c4.json:error_examples[0]"). Missing or unreadable files are skipped."""
    logs = run_dir / "logs"
    texts: dict[str, str] = {}
    for path in [logs / f"{stage}.log", *sorted(logs.glob(f"{stage}.*.log"))]:
        text = _read(path)
        if text is not None:
            texts[path.relative_to(run_dir).as_posix()] = text
    examples: list[tuple[str, str]] = []
    if stage == "benchmark":
        for path in sorted((run_dir / "bench").glob("c*.json"), key=_level):
            for index, example in enumerate(_error_examples(path)):
                where = f"bench/{path.name}:error_examples[{index}]"
                examples.extend((where, line) for line in example.splitlines())
    return _scan(itertools.chain(_numbered(texts), examples))
