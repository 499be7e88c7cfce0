"""Third-party tools' output goes to a build log, not the terminal.

Converters, runtimes, transformers and browsers write to file descriptors 1 and 2
from C, C++ and Python alike, hundreds of lines per build. While a build runs both descriptors point
at a log file, and edgepack's own progress keeps the terminal through a duplicate of the original
stderr. A finished build's log ships as dist/<name>/build.log; a failed build's stays in the stage
cache's logs/ folder, and the error message gives its path.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from packager.errors import EdgepackError
from packager.progress import Reporter

# Failed builds' logs kept in the cache (the newest); a finished build's log moves into its output.
KEPT_LOGS = 20


@contextmanager
def tool_output_to_log(logs: Path, reporter: Reporter) -> Iterator[Path]:
    """Send fds 1 and 2 to a new log under `logs` for the block; yield its path.

    An EdgepackError leaving the block names the log. The log is left in place; the caller copies it
    into the build's output on success and removes it.
    """
    logs.mkdir(parents=True, exist_ok=True)
    _prune(logs)
    # A unique name: two blocks in one second (the bundled example, then the build) keep separate logs.
    sink, name = tempfile.mkstemp(prefix=f"build-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-", suffix=".log",
                                  dir=logs)
    log = Path(name)
    os.fchmod(sink, 0o644)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    terminal = None
    if reporter.stream is None and _is_fd(sys.stderr, 2):
        terminal = os.fdopen(os.dup(saved[2]), "w", buffering=1, encoding="utf-8", errors="replace")
        reporter.stream = terminal
    try:
        for fd in (1, 2):
            os.dup2(sink, fd)
        yield log
    except EdgepackError as exc:
        exc.message += f"\n(The tools' own output is in {log}.)"
        raise
    finally:
        for stream in (sys.stdout, sys.stderr):
            with suppress(OSError, ValueError):
                stream.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(sink)
        if terminal is not None:
            reporter.stream = None
            terminal.close()


def _is_fd(stream: object, fd: int) -> bool:
    try:
        return stream.fileno() == fd  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


def _prune(logs: Path) -> None:
    """Keep the newest KEPT_LOGS - 1 logs of finished builds, making room for the one about to be written.

    A log whose build is still running is never removed: builds sharing a cache run at once (the test suite's
    two processes did), and one removed another's log before that build copied it into its output.
    """
    finished: list[tuple[float, Path]] = []
    for path in logs.glob("build-*.log"):
        if _still_running(path):
            continue
        with suppress(FileNotFoundError):  # another build's prune got there first
            finished.append((path.stat().st_mtime, path))
    finished.sort()
    for _, path in finished[: max(0, len(finished) - (KEPT_LOGS - 1))]:
        path.unlink(missing_ok=True)


def _still_running(log: Path) -> bool:
    """Whether the process named in a log's name (build-<date>-<time>-<pid>-...) is alive; this process counts."""
    try:
        pid = int(log.name.split("-")[3])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
