"""One writer per output folder: a lock file beside it, held (fcntl.flock) while a build or release writes it.

Without it two builds into the same --out both succeed and the second silently replaces the
first. flock is released by the kernel when its holder dies, so the lock file a killed build
leaves behind never blocks the next one; the file holds the holder's pid so a refused build can
say which process to wait for.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from packager.errors import BadInputError


def lock_path(out: Path) -> Path:
    """Return the lock file for out: a hidden file beside it, so the output folder itself stays clean."""
    absolute = Path(os.path.abspath(out))  # `--out .` has no name of its own
    if not absolute.name:
        raise BadInputError(f"{out}: is the root of the file system. Choose an --out folder below it.")
    return absolute.with_name(f".{absolute.name}.lock")


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold the lock on out for the block; raise BadInputError naming the holding pid when another process has it."""
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            raise BadInputError(
                f"{out}: another edgepack process (pid {pid}) is writing this output folder right now (lock "
                f"{path}). Wait for it to finish, or choose another --out."
            ) from None
        # The previous holder unlinks the file on release; a lock on an unlinked file protects
        # nothing, so start again on the file that is there now.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        with suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
