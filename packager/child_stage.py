"""Run a heavy conversion in a child process, writing into the folder of a cache entry being built.

Targets' model exports and conversions share this shape: the request is JSON on disk, the
child (`python -m MODULE REQUEST RESULT`) writes its outputs and a result JSON, its log is kept,
and the stage cache (packager.stage_cache) renames the folder into place only when complete. A child's memory returns to
the OS when it exits, and its peak RSS is what the child measures. The child's string hashing is
seeded (PYTHONHASHSEED=0): converters that iterate over sets would otherwise order a program
differently on every run, and the same inputs must give the same bytes.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from packager.errors import InternalError, UnsupportedError


def log_tail(path: Path, lines: int = 25) -> str:
    """The last lines of a child's log, for an error message."""
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def run_child(module: str, folder: Path, request: dict[str, Any], what: str) -> dict[str, Any]:
    """Run `module` on `request`, writing into `folder`; return the child's result (plus "wall_seconds").

    A failure raises UnsupportedError (the child said so) or InternalError quoting the log's tail,
    or OSError(ENOSPC) when the child ran out of disk space, so the cache reports a full disk as such.
    """
    (folder / "request.json").write_text(json.dumps(request, indent=2), encoding="utf-8")
    log = folder / "export.log"
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.run(
            [sys.executable, "-m", module, str(folder / "request.json"), str(folder / "result.json")],
            stdout=out, stderr=subprocess.STDOUT, check=False,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONHASHSEED": "0"},
        )
    if proc.returncode != 0 or not (folder / "result.json").is_file():
        detail = log_tail(log)
        if os.strerror(errno.ENOSPC) in detail:
            raise OSError(errno.ENOSPC, f"{what}: {os.strerror(errno.ENOSPC)}")
        kind = UnsupportedError if "UnsupportedError" in detail else InternalError
        raise kind(f"{what} failed (exit {proc.returncode}):\n{detail}")
    result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    return result
