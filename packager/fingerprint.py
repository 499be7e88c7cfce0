"""Content fingerprints that key the stage cache: same inputs + options + edgepack -> same key."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from packager import __version__

_CHUNK = 8 * 1024 * 1024


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def files_digest(paths: list[Path]) -> str:
    """Return one sha256 over (name, content hash) of each file, order-independent."""
    digest = hashlib.sha256()
    for p in sorted(paths, key=lambda p: p.name):
        digest.update(p.name.encode())
        digest.update(file_sha256(p).encode())
    return digest.hexdigest()


def options_digest(*parts: Any) -> str:
    """Return a sha256 of JSON-serialisable options, salted with the edgepack version."""
    blob = json.dumps([__version__, *parts], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def cache_root() -> Path:
    """Return the stage cache folder ($EDGEPACK_CACHE, else ~/.cache/edgepack)."""
    root = Path(os.environ.get("EDGEPACK_CACHE") or Path.home() / ".cache" / "edgepack")
    root.mkdir(parents=True, exist_ok=True)
    return root
