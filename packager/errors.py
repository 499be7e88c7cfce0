"""The error hierarchy and the one place that maps it to exit codes.

Every message a user sees names the file (or option) at fault and what to do about it.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes a CI pipeline can branch on (documented in README and docs/cli.md)."""

    OK = 0
    GATE_FAILED = 1
    BAD_INPUT = 2
    UNSUPPORTED = 3
    INTERNAL = 4
    INTERRUPTED = 130  # SIGINT (Ctrl-C), the shell's 128 + 2
    TERMINATED = 143  # SIGTERM, the shell's 128 + 15


class EdgepackError(Exception):
    """Base class: carries the exit code that the CLI returns for it."""

    exit_code: ExitCode = ExitCode.INTERNAL
    label = "internal error"

    def __init__(self, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        # What the --json document carries besides the message (a failed gate's artifact rows).
        self.details = details or {}


class BadInputError(EdgepackError):
    """The user's files or options are wrong; the message says which and how to fix it."""

    exit_code = ExitCode.BAD_INPUT
    label = "bad input"


class UnsupportedError(EdgepackError):
    """The input is valid but edgepack cannot handle it (architecture, tokenizer, option)."""

    exit_code = ExitCode.UNSUPPORTED
    label = "unsupported"


class GateFailedError(EdgepackError):
    """An artifact was built but is not faithful enough to the source model."""

    exit_code = ExitCode.GATE_FAILED
    label = "quality gate failed"


class InternalError(EdgepackError):
    """A bug or an environment problem inside edgepack."""

    exit_code = ExitCode.INTERNAL
    label = "internal error"


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like KeyboardInterrupt, so every cleanup (`finally`, staging removal) still runs.

    A BaseException, so no `except Exception` on the way up can swallow it.
    """
