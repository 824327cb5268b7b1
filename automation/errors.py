"""The few domain exceptions; each carries the evidence a person needs to fix the cause."""

from __future__ import annotations

# Process exit codes: done, a stage failed, bad input, interrupted (128 + SIGINT).
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class AutodeployError(Exception):
    """Base of every error autodeploy expects and explains (no traceback unless --debug).

    Attributes:
        message: one line: what went wrong and where.
        hint: one line: how to fix it (may be empty).
        exit_code: 2 for bad input, 1 for a failed stage.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InputError(AutodeployError):
    """Bad input from the user: a CLI argument, a model name, a system name, a number out of range."""

    exit_code = 2


class ConfigError(InputError):
    """An invalid pipeline file; `problems` holds one line per problem (field path, what, fix)."""

    def __init__(self, message: str, problems: list[str] | None = None, hint: str = "") -> None:
        super().__init__(message, hint)
        self.problems = problems or [message]


class StateError(InputError):
    """A state file that cannot be used (corrupt, or written by a newer autodeploy); never overwritten."""


class StageError(AutodeployError):
    """A stage could not finish; `details` are extra fields recorded in the state file."""

    def __init__(self, message: str, hint: str = "", **details: object) -> None:
        super().__init__(message, hint)
        self.details = details


class NotImplementedStageError(StageError):
    """A stage whose implementation has not landed yet; never reported as success."""


class RemoteCommandError(StageError):
    """A command on a node failed: carries the host, the command, the exit code and the output tail."""

    def __init__(
        self, host: str, command: str, exit_code: int | None, tail: str = "", hint: str = ""
    ) -> None:
        where = f"exit {exit_code}" if exit_code is not None else "no exit code"
        super().__init__(
            f"command failed on {host} ({where}): {command}",
            hint,
            host=host,
            command=command,
            exit_code=exit_code,
            tail=tail,
        )
        self.host = host
        self.command = command
        self.remote_exit_code = exit_code
        self.tail = tail
