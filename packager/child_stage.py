"""Run a heavy conversion in a child process, writing into a staging folder that becomes a cache entry.

Targets' model exports and conversions share this shape: the request is JSON on disk, the
child (`python -m MODULE REQUEST RESULT`) writes its outputs and a result JSON, its log is kept,
and the staging folder is renamed into the cache only when complete. A child's memory returns to
the OS when it exits, and its peak RSS is what the child measures. The child's string hashing is
seeded (PYTHONHASHSEED=0): converters that iterate over sets would otherwise order a program
differently on every run, and the same inputs must give the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
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


def staging(folder: Path) -> Path:
    """A fresh staging folder beside `folder` (a leftover of an interrupted run is removed)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def run_child(module: str, tmp: Path, request: dict[str, Any], what: str, folder: Path) -> dict[str, Any]:
    """Run `module` on `request` in staging folder `tmp`; on success move it to `folder` and return the result.

    The result gains "wall_seconds" and is saved as folder/export.json. A failure removes the staging
    folder and raises UnsupportedError (the child said so) or InternalError, quoting the log's tail.
    """
    (tmp / "request.json").write_text(json.dumps(request, indent=2), encoding="utf-8")
    log = tmp / "export.log"
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.run(
            [sys.executable, "-m", module, str(tmp / "request.json"), str(tmp / "result.json")],
            stdout=out, stderr=subprocess.STDOUT, check=False,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONHASHSEED": "0"},
        )
    if proc.returncode != 0 or not (tmp / "result.json").is_file():
        detail = log_tail(log)
        shutil.rmtree(tmp, ignore_errors=True)
        kind = UnsupportedError if "UnsupportedError" in detail else InternalError
        raise kind(f"{what} failed (exit {proc.returncode}):\n{detail}")
    result = json.loads((tmp / "result.json").read_text(encoding="utf-8"))
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    (tmp / "export.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return result
