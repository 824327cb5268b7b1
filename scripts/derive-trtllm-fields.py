#!/usr/bin/env python3
"""Derive the engine-YAML field sets of TensorRT-LLM releases from llm_args.py sources (writes trtllm_fields.yaml)."""

from __future__ import annotations

import argparse
import ast
import html
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from automation.versions import version_key  # noqa: E402  (the repo root is put on sys.path just above)

OUT = ROOT / "automation" / "data" / "trtllm_fields.yaml"
LLM_ARGS = "tensorrt_llm/llmapi/llm_args.py"
BUILDER = "tensorrt_llm/builder.py"

# Section of the engine YAML -> the pydantic (or dataclass) class that validates it. `llm_args` is what the
# PyTorch backend validates the whole YAML against: TorchLlmArgs, which inherits BaseLlmArgs.
SECTIONS = {
    "llm_args": "TorchLlmArgs",
    "kv_cache_config": "KvCacheConfig",
    "cache_transceiver_config": "CacheTransceiverConfig",
    "build_config": "BuildConfig",
    "cuda_graph_config": "CudaGraphConfig",
    "scheduler_config": "SchedulerConfig",
    "moe_config": "MoeConfig",
}
BATCH_LIMITS = ("max_batch_size", "max_num_tokens", "max_seq_len")

HEADER = """\
# TensorRT-LLM engine-YAML field sets, per release tag: the keys each release's pydantic models accept
# (they forbid unknown keys), for checking the engine YAMLs autodeploy writes (tests/conformance/).
# Made by scripts/derive-trtllm-fields.py from llm_args.py sources (Python ast: annotated class fields,
# inherited through base classes defined in the file; ClassVar and _private names skipped). Regenerate with
#   python scripts/derive-trtllm-fields.py --git-dir TensorRT-LLM.git --tag v1.0.0rc6 ... (full sources), or
#   python scripts/derive-trtllm-fields.py --file 1.0.0rc6=llm_args.py[,builder.py] --source 1.0.0rc6='...'
# Each entry's `source` says where its text came from. A section that is null was not in the text read, so it
# is unknown (not empty). llm_args = TorchLlmArgs + BaseLlmArgs fields; cache_transceiver_backends = the
# Literal of CacheTransceiverConfig.backend; aliases = pydantic aliases (the key accepted instead of the name);
# batch_limits = where max_batch_size/max_num_tokens/max_seq_len are accepted (top_level: fields of the args
# class; build_config: the args class has a build_config field).
# How the current entries were read: the TensorRT-LLM git mirror was over the fetch limit (2.5 GB) and PyPI's
# tensorrt-llm 1.x files are stub sdists pointing at pypi.nvidia.com (not reachable), so each entry comes
# from the release's published docs (gh-pages Sphinx viewcode of llm_args.py, through a public code index):
# the classes read were transcribed as declaration-only excerpts and parsed by this script. The excerpts are
# not kept; rerun the script on real sources (--git-dir/--tag) to regenerate and to fill the null sections.
"""


@dataclass
class ClassInfo:
    """One class of the source: its base names and its own annotated fields, in order."""

    bases: list[str]
    fields: list[str]
    aliases: dict[str, str]
    literals: dict[str, list[str]]


def viewcode_to_python(text: str) -> str:
    """The Python source inside a Sphinx viewcode page (`_modules/.../llm_args.html`); other text unchanged."""
    if "viewcode-block" not in text and '<div class="highlight">' not in text:
        return text
    match = re.search(r'<div class="highlight"><pre>(.*)</pre></div>', text, re.S)
    body = match.group(1) if match else text
    body = re.sub(r'<a class="viewcode-back"[^>]*>\[docs\]</a>\n?', "", body)
    body = re.sub(r'<div class="viewcode-block"[^>]*>\n?', "", body)
    body = re.sub(r"</div>", "", body)
    return html.unescape(re.sub(r"<[^>]+>", "", body))


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript):
        return _name(node.value)
    return ""


def _literal_strings(node: ast.expr) -> list[str]:
    """The string members of the first Literal[...] inside an annotation (Optional/Union unwrapped)."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Subscript) and _name(sub.value) == "Literal":
            elts = sub.slice.elts if isinstance(sub.slice, ast.Tuple) else [sub.slice]
            return [e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


def parse_classes(source: str) -> tuple[dict[str, ClassInfo], dict[str, str]]:
    """Top-level classes of a module and its module-level aliases (`LlmArgs = TorchLlmArgs`)."""
    tree = ast.parse(source)
    classes: dict[str, ClassInfo] = {}
    aliases: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            info = ClassInfo([_name(b) for b in node.bases], [], {}, {})
            for item in node.body:
                if not isinstance(item, ast.AnnAssign) or not isinstance(item.target, ast.Name):
                    continue
                name = item.target.id
                # ClassVar is not a field; _names are pydantic private attributes; model_config is settings.
                if _name(item.annotation) == "ClassVar" or name.startswith("_") or name == "model_config":
                    continue
                info.fields.append(name)
                if isinstance(item.value, ast.Call):
                    for kw in item.value.keywords:
                        if kw.arg == "alias" and isinstance(kw.value, ast.Constant):
                            info.aliases[name] = str(kw.value.value)
                values = _literal_strings(item.annotation)
                if values:
                    info.literals[name] = values
            classes[node.name] = info
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Name):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    aliases[target.id] = node.value.id
    return classes, aliases


def class_fields(classes: dict[str, ClassInfo], aliases: dict[str, str], name: str) -> ClassInfo | None:
    """A class's fields including those inherited from bases defined in the same text (None if absent)."""
    name = aliases.get(name, name) if name not in classes else name
    if name not in classes:
        return None
    own = classes[name]
    merged = ClassInfo(list(own.bases), [], {}, {})
    for base in own.bases:
        inherited = class_fields(classes, aliases, base) if base != name else None
        if inherited:
            merged.fields += [f for f in inherited.fields if f not in merged.fields]
            merged.aliases.update(inherited.aliases)
            merged.literals.update(inherited.literals)
    merged.fields += [f for f in own.fields if f not in merged.fields]
    merged.aliases.update(own.aliases)
    merged.literals.update(own.literals)
    return merged


def derive(texts: list[str], source: str) -> dict[str, Any]:
    """The record of one tag from its source texts (llm_args.py first; builder.py for BuildConfig)."""
    classes: dict[str, ClassInfo] = {}
    aliases: dict[str, str] = {}
    for text in texts:
        more, more_aliases = parse_classes(viewcode_to_python(text))
        # The first text wins a clash: BuildConfig of llm_args.py (1.2+) over builder.py's.
        classes = {**more, **classes}
        aliases = {**more_aliases, **aliases}
    entry: dict[str, Any] = {"source": source}
    found: dict[str, ClassInfo | None] = {s: class_fields(classes, aliases, c) for s, c in SECTIONS.items()}
    all_aliases: dict[str, str] = {}
    for section, info in found.items():
        entry[section] = sorted(info.fields) if info else None
        if info:
            all_aliases.update({f"{section}.{k}": v for k, v in info.aliases.items()})
        if section == "cache_transceiver_config":
            entry["cache_transceiver_backends"] = (
                sorted(info.literals.get("backend", [])) if info and "backend" in info.literals else None
            )
    top = found["llm_args"]
    entry["batch_limits"] = (
        None
        if top is None
        else {
            "top_level": all(k in top.fields for k in BATCH_LIMITS),
            "build_config": "build_config" in top.fields,
        }
    )
    entry["aliases"] = dict(sorted(all_aliases.items())) or None
    return entry


def git_show(git_dir: str, tag: str, path: str) -> str | None:
    result = subprocess.run(
        ["git", "--git-dir", git_dir, "show", f"{tag}:{path}"], capture_output=True, text=True, check=False
    )
    return result.stdout if result.returncode == 0 else None


def git_commit(git_dir: str, tag: str) -> str:
    result = subprocess.run(
        ["git", "--git-dir", git_dir, "rev-list", "-n1", tag], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def render(entries: dict[str, dict[str, Any]]) -> str:
    """The YAML text: tags in release order, lists in flow style; the same input gives the same bytes."""
    ordered = {tag: entries[tag] for tag in sorted(entries, key=version_key)}
    body = yaml.safe_dump(
        {"tags": ordered}, sort_keys=False, default_flow_style=None, width=96, allow_unicode=True
    )
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--git-dir", help="a TensorRT-LLM git dir; read TAG:tensorrt_llm/llmapi/llm_args.py")
    parser.add_argument("--tag", action="append", default=[], help="a git tag, e.g. v1.0.0rc6 (repeatable)")
    parser.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="VERSION=PATH[,PATH]",
        help="llm_args.py (or its Sphinx viewcode page, or an excerpt of class declarations) for VERSION; "
        "a second path is builder.py",
    )
    parser.add_argument("--source", action="append", default=[], metavar="VERSION=TEXT", help="source note")
    parser.add_argument("--merge", action="store_true", help="keep the tags already in the output file")
    parser.add_argument("-o", "--output", default=str(OUT))
    args = parser.parse_args(argv)
    notes = dict(item.split("=", 1) for item in args.source)
    out = Path(args.output)
    entries: dict[str, dict[str, Any]] = {}
    if args.merge and out.exists():
        entries = dict(yaml.safe_load(out.read_text()).get("tags") or {})
    for tag in args.tag:
        if not args.git_dir:
            parser.error("--tag needs --git-dir")
        version = tag.removeprefix("v")
        texts = [t for t in (git_show(args.git_dir, tag, p) for p in (LLM_ARGS, BUILDER)) if t is not None]
        if not texts:
            parser.error(f"{tag}: no {LLM_ARGS} in {args.git_dir}")
        commit = git_commit(args.git_dir, tag)
        note = notes.get(version, f"git tag {tag} (commit {commit}): {LLM_ARGS} + {BUILDER}")
        entries[version] = derive(texts, note)
    for item in args.file:
        version, paths = item.split("=", 1)
        texts = [Path(p).read_text() for p in paths.split(",")]
        entries[version] = derive(texts, notes.get(version, f"file {paths}"))
    out.write_text(render(entries))
    print(f"wrote {out} ({len(entries)} tags)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
