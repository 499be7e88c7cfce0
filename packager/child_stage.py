"""Run a heavy conversion in a child process, writing into the folder of a cache entry being built.

Targets' model exports and conversions share this shape: the request is JSON on disk, the
child (`python -m MODULE REQUEST RESULT`) writes its outputs and a result JSON, its log is kept,
and the stage cache (packager.stage_cache) renames the folder into place only when complete. A child's memory returns to
the OS when it exits, and its peak RSS is sampled while it runs (packager.peak_memory). The child's string hashing is
seeded (PYTHONHASHSEED=0): converters that iterate over sets would otherwise order a program
differently on every run, and the same inputs must give the same bytes.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from packager.errors import InternalError, UnsupportedError
from packager.peak_memory import PeakRss
from packager.scheduler import AnySet, BuildCancelled, Claim

# glibc serves allocations from 128 KB up with their own mappings, returned to the system when freed. Its default
# raises that threshold as large blocks are freed, so a conversion's later temporaries land in a heap that never
# shrinks: a Gemma 3 1B export child peaked at 5.7 GB with this, 6.2 GB without (its quantized model
# then held 2.0 GB where 3.9 GB stayed resident). A value the user set wins.
CHILD_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def serve_request(description: str, handle: Callable[[dict[str, Any]], dict[str, Any]],
                  argv: list[str] | None = None) -> int:
    """The child's side of run_child: `python -m MODULE REQUEST RESULT` reads the request JSON, calls
    `handle`, and writes what it returns as the result JSON."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("request", type=Path, help="the request JSON run_child wrote")
    parser.add_argument("result", type=Path, help="where to write the result JSON")
    args = parser.parse_args(argv)
    result = handle(json.loads(args.request.read_text(encoding="utf-8")))
    args.result.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


def log_tail(path: Path, lines: int = 25) -> str:
    """The last lines of a child's log, for an error message."""
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def run_child(module: str, folder: Path, request: dict[str, Any], what: str,
              claim: Claim | None = None) -> dict[str, Any]:
    """Run `module` on `request`, writing into `folder`; return the child's result (plus "wall_seconds").

    With a memory `claim` (packager.scheduler), the child's measured peak is recorded on it, and the
    child is killed as soon as the build is cancelled.

    A failure raises UnsupportedError (the child said so) or InternalError quoting the log's tail,
    or OSError(ENOSPC) when the child ran out of disk space, so the cache reports a full disk as such.
    """
    (folder / "request.json").write_text(json.dumps(request, indent=2), encoding="utf-8")
    log = folder / "export.log"
    # The child's temporary files go into the stage's folder, and with it: a converter may write large ones that
    # it removes only when its process exits, and never when the process is killed (12 GB for a 4B once).
    scratch = folder / "tmp"
    scratch.mkdir(exist_ok=True)
    start = time.perf_counter()
    try:
        with log.open("w", encoding="utf-8") as out:
            returncode, peak_kb = _run_and_measure(
                [sys.executable, "-m", module, str(folder / "request.json"), str(folder / "result.json")], out,
                claim.cancelled if claim else None, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if claim is not None:
        claim.measured_peak = peak_kb * 1024
    if claim is not None and claim.cancelled.is_set():
        raise BuildCancelled(what)
    if returncode < 0:
        raise UnsupportedError(_killed_message(what, -returncode, peak_kb) + "\n" + log_tail(log))
    if returncode != 0 or not (folder / "result.json").is_file():
        detail = log_tail(log)
        if os.strerror(errno.ENOSPC) in detail:
            raise OSError(errno.ENOSPC, f"{what}: {os.strerror(errno.ENOSPC)}")
        kind = UnsupportedError if "UnsupportedError" in detail else InternalError
        raise kind(f"{what} failed (exit {returncode}):\n{detail}")
    result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    return result


def _run_and_measure(command: list[str], log: TextIO, cancelled: AnySet | None, scratch: Path) -> tuple[int, int]:
    """Return the child's exit status (negative: the signal that killed it) and its peak RSS in KB.

    The child is killed when this process is interrupted (Ctrl-C, SIGTERM), so an abandoned conversion
    never keeps running, and holding memory, behind a build that has stopped, nor when `cancelled` is set
    (another target of the build failed).
    """
    # No stdin: a converter has nothing to read there, and a build's own stdin (a terminal, a test runner's channel)
    # is not the child's to consume.
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            env={**CHILD_MALLOC, **os.environ, "PYTHONUNBUFFERED": "1", "PYTHONHASHSEED": "0",
                                 "TMPDIR": str(scratch)})
    sampler = PeakRss(proc.pid)
    sampler.start()
    try:
        while True:
            try:
                proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if cancelled is not None and cancelled.is_set():
                    proc.kill()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        sampler.stop()
    return proc.returncode, sampler.peak_kb


def _killed_message(what: str, signum: int, peak_kb: int) -> str:
    """Say what a child killed by a signal most likely ran into: the kernel's out-of-memory killer sends SIGKILL."""
    total_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    cause = (f"probably out of memory: it had reached {peak_kb / 2**20:.1f} GB of this machine's {total_gb:.1f} GB"
             if signum == signal.SIGKILL else f"its peak memory was {peak_kb / 2**20:.1f} GB")
    return (f"{what} was killed by {name}, {cause}. Build fewer targets at once, lower --context-length, or use a "
            f"machine with more memory. The last lines of its log:")
