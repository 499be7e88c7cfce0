"""Making a finished folder appear in one step, so nothing half-written ever looks complete.

Work happens in a hidden `.<name>.partial-<pid>-<random>` folder beside the output, renamed into
place at the end. The pid in the name lets the next build into the same parent recognise (and
remove) what a killed build (SIGKILL, power loss) left behind, without touching the folders of
builds that are still running.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from packager.errors import BadInputError
from packager.output_guard import is_within

_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)-[^/]+")
# What the user can fix by choosing another --out (or freeing space), said in their words.
_WRITE_FAILURES = {
    errno.ENOSPC: "the disk is full. Free space, or choose an --out on another disk.",
    errno.EDQUOT: "the disk quota is exhausted. Free space, or choose an --out on another disk.",
    errno.EROFS: "the file system is read-only. Choose an --out you can write to.",
    errno.EACCES: "permission denied. Choose an --out you can write to.",
    errno.EPERM: "permission denied. Choose an --out you can write to.",
    errno.ENAMETOOLONG: "the path is too long for the file system. Choose a shorter --out or --name.",
}
_ANYWHERE = (errno.ENOSPC, errno.EDQUOT)  # a full disk is reported without a file name


def process_alive(pid: int) -> bool:
    """Whether process `pid` still exists: the test for whether a pid-tagged temporary is abandoned."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_leftovers(parent: Path) -> list[Path]:
    """Return the partial/old folders of dead processes that were removed from parent.

    A folder is stale only when the process whose pid it carries no longer exists; a live
    build's staging folder is never touched. An old output whose replacement never arrived (the
    process died between the two renames of publish_atomically) is put back instead.
    """
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _LEFTOVER.fullmatch(entry.name)
        if not match or not entry.is_dir() or entry.is_symlink() or process_alive(int(match["pid"])):
            continue
        output = parent / match["name"]
        if match["kind"] == "old" and not os.path.lexists(output):
            entry.rename(output)
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


@contextmanager
def output_errors(out: Path) -> Iterator[None]:
    """Turn a failure to write the output (read-only, full disk, name too long) into BadInputError naming out."""
    try:
        yield
    except OSError as exc:
        hint = _WRITE_FAILURES.get(exc.errno or 0)
        filename = exc.filename or exc.filename2
        about_output = filename is None or is_within(os.path.realpath(filename), os.path.realpath(out.parent))
        if hint is None or not (about_output or exc.errno in _ANYWHERE):
            raise
        where = f" ({filename})" if filename else ""
        raise BadInputError(f"{out}: cannot write the output folder{where}: {hint} Nothing was written.") from None


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """Yield a fresh staging folder beside out; publish it as out when the block succeeds, else remove it."""
    out = Path(os.path.abspath(out))  # `--out .` names its folder only once made absolute
    remove_stale_leftovers(out.parent)
    prefix = f".{out.name}.partial-{os.getpid()}-"
    try:
        staging = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
        staging.chmod(0o755)
        yield staging
        publish_atomically(staging, out)
    except BaseException:
        # By prefix, not by name: a signal can land after mkdtemp made the folder but before it returned.
        for leftover in out.parent.glob(glob.escape(prefix) + "*"):
            shutil.rmtree(leftover, ignore_errors=True)
        raise


def publish_atomically(staging: Path, out: Path) -> None:
    """Rename the finished `staging` folder to `out`; an existing `out` (already allowed by --force) is replaced."""
    if not os.path.lexists(out):
        staging.rename(out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.time_ns()}")
    # Ctrl-C or SIGTERM between the two renames would leave no output at all, the previous one
    # hidden in `old`: hold them until both renames are done.
    signals = {signal.SIGINT, signal.SIGTERM}
    held = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        out.rename(old)
        try:
            staging.rename(out)
        except OSError:
            old.rename(out)
            raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    shutil.rmtree(old, ignore_errors=True)


def write_text_atomically(path: Path, text: str, mode: int | None = None) -> None:
    """Write a small file so that readers (other threads and processes) see the old file or the new one,
    never half of one; `mode` for a file users read (the temporary is created 0600). Raises OSError like
    any write; the temporary is removed then."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
