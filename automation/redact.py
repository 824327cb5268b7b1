"""Secrets are read at the moment of use and masked wherever text is written."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from automation.config import PipelineConfig
from automation.errors import InputError

MASK = "***"


def hub_token(config: PipelineConfig) -> str | None:
    """The hub token from checkpoint.token_file or the environment variable checkpoint.token_env.

    Raises:
        InputError: the named token file cannot be read.
    """
    if config.checkpoint.token_file is not None:
        path = Path(config.checkpoint.token_file).expanduser()
        try:
            return path.read_text().strip() or None
        except OSError as exc:
            raise InputError(
                f"checkpoint.token_file: cannot read {path}: {exc.strerror}",
                hint="fix the path or its permissions",
            ) from None
    return os.environ.get(config.checkpoint.token_env) or None


def secret_values(config: PipelineConfig) -> list[str]:
    """Every secret value this run may touch, longest first so that overlapping secrets mask whole."""
    values = {os.environ.get(config.checkpoint.token_env, ""), os.environ.get("HF_TOKEN", "")}
    with contextlib.suppress(InputError):
        values.add(hub_token(config) or "")
    return sorted((v for v in values if len(v) >= 4), key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def write_redacted(path: Path, text: str, secrets: list[str], *, append: bool = False) -> None:
    """The one writer of text files in a run directory: secrets masked; replaced atomically, or appended."""
    from automation.state import write_atomic

    masked = redact(text, secrets)
    if append:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            handle.write(masked)
        return
    write_atomic(path, masked)


class RedactingFilter(logging.Filter):
    """Masks secret values in every record before a handler writes it."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = redact(record.getMessage(), self.secrets)
            record.args = None
        return True
