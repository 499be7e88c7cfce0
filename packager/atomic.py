"""Making a finished folder appear in one step, so nothing half-written ever looks complete."""

from __future__ import annotations

import shutil
import time
from pathlib import Path


def publish_atomically(staging: Path, out: Path) -> None:
    """Rename the finished `staging` folder to `out`; an existing `out` (already allowed by --force) is replaced."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{int(time.time())}")
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)
