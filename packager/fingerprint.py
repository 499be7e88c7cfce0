"""Content fingerprints that key the stage cache: same inputs + options + edgepack -> same key."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from packager import __version__
from packager.atomic import write_text_atomically

_CHUNK = 8 * 1024 * 1024
_MEMO_FILE = "file-digests.json"
_MEMO_ENTRIES = 4096
# A file whose status changed less than this before its hashing began is hashed but not remembered: a second
# write within the same timestamp tick would leave its status unchanged (git's "racy" index entries). Ticks are
# a few ms where timestamps carry nanoseconds (the kernel's coarse clock) and up to 2 s where they carry whole
# seconds (ext3, FAT).
_SETTLED_S = 0.05
_SETTLED_WHOLE_SECONDS_S = 2.0
# Smaller files are hashed faster than the memo is written.
_MEMO_MIN_BYTES = 1 << 20
_memo: dict[str, str] | None = None
_memo_lock = threading.Lock()  # targets build in threads of one process


def _stat_key(path: Path) -> tuple[str, float]:
    """Identity of a file's current bytes: device, inode, size, mtime and ctime (ns); and the time from which
    a digest of it may be remembered (its ctime plus the file system's timestamp tick, `_SETTLED_S`).

    Every write to a file sets its ctime, which no tool can set back (touch and utime set only mtime/atime).
    """
    st = path.stat()
    tick = _SETTLED_WHOLE_SECONDS_S if st.st_ctime_ns % 1_000_000_000 == 0 else _SETTLED_S
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}", st.st_ctime + tick


def _memo_path() -> Path:
    return cache_root() / _MEMO_FILE


def _load_memo() -> dict[str, str]:
    """The remembered digests (read once per process); call with _memo_lock held."""
    global _memo
    if _memo is None:
        try:
            data = json.loads(_memo_path().read_text(encoding="utf-8"))
            _memo = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)} \
                if isinstance(data, dict) else {}
        except (OSError, ValueError):
            _memo = {}
    return _memo


def _remembered(key: str) -> str | None:
    with _memo_lock:
        return _load_memo().get(key)


def _remember(key: str, digest: str) -> None:
    with _memo_lock:
        memo = _load_memo()
        memo[key] = digest
        while len(memo) > _MEMO_ENTRIES:
            memo.pop(next(iter(memo)))
        with contextlib.suppress(OSError):  # a read-only or full cache only costs the next build a re-hash
            write_text_atomically(_memo_path(), json.dumps(memo))


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, remembered across builds by the file's status (`_stat_key`).

    A warm build otherwise re-reads every checkpoint, adapter and cached artifact it keys or checks
    (gigabytes for a 1B model). A file that changed has a new ctime, so it is hashed again.
    """
    started = time.time()
    key, settled = _stat_key(path)
    known = _remembered(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    value = digest.hexdigest()
    if started > settled and path.stat().st_size >= _MEMO_MIN_BYTES and _stat_key(path)[0] == key:
        _remember(key, value)
    return value


def checked_once(kind: str, paths: list[Path], check: Callable[[], None]) -> None:
    """Run `check` (which raises on failure) unless it already passed on files with exactly these bytes;
    record its pass, so a warm build need not repeat it. The files are hashed once for both."""
    marker = _check_marker(kind, paths)
    if marker.is_file():
        return
    check()
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


def _check_marker(kind: str, paths: list[Path]) -> Path:
    return cache_root() / "checked" / options_digest(kind, files_digest(paths))[:32]


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
