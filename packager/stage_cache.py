"""The stage cache: finished stage outputs kept between builds, checked on every reuse.

One entry is a folder, root/<kind>/<key>/, holding the stage's files and `entry.json`: the size
and sha256 of every file, the stage's JSON result and that result's own sha256, and (for a
verification record) the sha256 of the artifact it verified. An entry is built in a temporary
folder unique to the process (root/<kind>/.<key>.tmp-<pid>-<random>) and renamed into place only
when complete, so two builds at once never share a temporary and a reader sees a whole entry or
none. On reuse every file is hashed again: an entry that changed since it was written (a bit flip,
a hand edit, an appended byte) is evicted and rebuilt, with a line saying so, instead of shipping.
Outputs never share storage with the cache (place_artifact copies), so editing a bundle cannot
reach back into it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from packager.atomic import process_alive
from packager.errors import BadInputError
from packager.fingerprint import file_sha256
from packager.progress import Reporter
from packager.scheduler import BuildCancelled

R = TypeVar("R")

# Bump when the layout of an entry or of entry.json changes; an entry of another schema is rebuilt.
ENTRY_SCHEMA = 1
MANIFEST = "entry.json"

# Temporaries of killed runs: ".<key>.tmp-<pid>-<random>" (entries being built) and
# ".<key>.old-<pid>-<random>" (entries being evicted), collected once their process is gone.
_TEMPORARY = re.compile(r"^\..+\.(?:tmp|old)-(\d+)-[0-9a-f]+$")
# Fixed-name temporaries of edgepack versions before this cache ("<key>.tmp"): nothing tells whose they
# are, so only those untouched for this long are taken for abandoned.
LEGACY_TMP_AGE_SECONDS = 3600
# Out of space, or over a disk quota: the user's disk, not a bug.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# A stage that failed while its disk had less room than this most likely failed for want of it.
NEARLY_FULL_BYTES = 16 * 2**20


def _identity(value: Any) -> Any:
    return value


def _json_sha256(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class FileRecord:
    """One file of an entry as it was written: its size and sha256."""

    size: int
    sha256: str


@dataclass(frozen=True)
class CachedEntry(Generic[R]):
    """A checked cache entry: its folder, its files' recorded hashes and the stage's typed result."""

    kind: str
    key: str
    folder: Path
    files: dict[str, FileRecord]
    value: R
    from_cache: bool
    seconds: float

    def path(self, name: str) -> Path:
        return self.folder / name

    def sha256(self, name: str) -> str:
        """The sha256 of file `name` (relative to the entry), as checked when the entry was opened."""
        return self.files[name].sha256

    def digest(self, under: str = "") -> str:
        """One sha256 over the names and hashes of the entry's files below `under` (all files when empty):
        the identity of an artifact that is a folder (a .mlpackage) or several files (.pte + .ptd)."""
        prefix = f"{under.rstrip('/')}/" if under else ""
        picked = sorted((n, f.sha256) for n, f in self.files.items() if n.startswith(prefix))
        return _json_sha256(picked)


class StageCache:
    """Entries of the stage cache under `root`; see the module docstring for the guarantees."""

    # Stale temporaries are looked for once per process per cache root, not on every entry.
    _collected: ClassVar[set[Path]] = set()
    # One lock per entry asked for in this process: a thread asking for an entry another thread is building
    # (a step started beside a target's own, packager.beside) waits for it and then opens it, instead of
    # building it a second time. Re-entrant: the same thread asking again proceeds as before.
    _entry_locks: ClassVar[dict[Path, threading.RLock]] = {}
    _locks_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, root: Path, reporter: Reporter, cancelled: threading.Event | None = None) -> None:
        self.root = root
        self.reporter = reporter
        # Set when another target of the build failed: a stage not yet started is not started.
        self.cancelled = cancelled
        if root not in StageCache._collected:
            StageCache._collected.add(root)
            collect_stale_temporaries(root)

    def entry(
        self, kind: str, key: str, label: str, build: Callable[[Path], R], *,
        encode: Callable[[R], Any] = _identity, decode: Callable[[Any], R] = _identity,
        binds: str = "", describe: Callable[[R], str] | None = None,
    ) -> CachedEntry[R]:
        """Return the checked entry kind/key, building it with `build(folder)` when absent or damaged.

        `build` writes the stage's files into the folder it is given and returns the stage's result,
        which `encode` turns into JSON (and `decode` back). `binds` is the sha256 of the artifact a
        record is about (a verification): a stored record is reused only for that same artifact.
        The stage is reported as `label`, with `describe(result)` as its detail.
        """
        final = self.root / kind / key
        start = time.perf_counter()
        with StageCache._locks_lock:
            lock = StageCache._entry_locks.setdefault(final, threading.RLock())
        with lock:
            found = self._open(kind, key, final, decode, binds, start)
            if found is None:
                if self.cancelled is not None and self.cancelled.is_set():
                    raise BuildCancelled(label)
                with self.reporter.running(label):
                    found = self._build(kind, key, final, build, encode, decode, binds, start)
        self.reporter.stage(label, found.from_cache, found.seconds, describe(found.value) if describe else "")
        return found

    def record(
        self, kind: str, key: str, label: str, compute: Callable[[], R], *,
        encode: Callable[[R], Any] = _identity, decode: Callable[[Any], R] = _identity,
        binds: str = "", describe: Callable[[R], str] | None = None,
    ) -> R:
        """Return a JSON-only stage result (a verification, a screen, a baseline): an entry with no files."""
        return self.entry(kind, key, label, lambda _folder: compute(), encode=encode, decode=decode, binds=binds,
                          describe=describe).value

    # -- reuse ----------------------------------------------------------------------------------

    def _open(self, kind: str, key: str, final: Path, decode: Callable[[Any], R], binds: str,
              start: float) -> CachedEntry[R] | None:
        """The entry at `final` when every check passes; otherwise None, after evicting what was there."""
        try:
            identity = final.stat().st_ino
        except FileNotFoundError:
            return None
        problem, manifest = _damage(final, binds)
        if problem is None:
            files = {n: FileRecord(**f) for n, f in manifest["files"].items()}
            try:
                value = decode(manifest["result"])
            except (KeyError, TypeError, ValueError) as exc:
                problem = f"its result no longer reads as this stage's ({exc})"
            else:
                return CachedEntry(kind, key, final, files, value, True, time.perf_counter() - start)
        try:
            if final.stat().st_ino != identity:  # another build replaced it meanwhile: judge that one instead
                return self._open(kind, key, final, decode, binds, start)
        except FileNotFoundError:  # another build evicted it meanwhile
            return None
        self.reporter.say(f"cache entry {kind}/{key}: {problem}; rebuilding")
        _remove(final)
        return None

    # -- build ----------------------------------------------------------------------------------

    def _build(self, kind: str, key: str, final: Path, build: Callable[[Path], R], encode: Callable[[R], Any],
               decode: Callable[[Any], R], binds: str, start: float) -> CachedEntry[R]:
        tmp = final.with_name(f".{key}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            tmp.mkdir(parents=True)
            value = build(tmp)
            files = _hash_files(tmp)
            result = encode(value)
            manifest = {"schema": ENTRY_SCHEMA, "kind": kind, "key": key, "artifact_sha256": binds,
                        "files": {n: {"size": f.size, "sha256": f.sha256} for n, f in files.items()},
                        "result": result, "result_sha256": _json_sha256(result)}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            theirs = self._publish(tmp, final, kind, key, decode, binds, start)
        except OSError as exc:
            full = exc.errno in _DISK_FULL or _nearly_full(tmp)
            _remove(tmp)
            if full:
                raise self._disk_full(kind, key, exc.strerror or str(exc)) from None
            raise
        except BaseException as exc:
            # Any failure, Ctrl-C included, leaves no temporary behind. A tool that hides the disk's
            # errno (llama.cpp's quantizer only returns a code) still fails on a full disk: say so.
            full = isinstance(exc, Exception) and _nearly_full(tmp)
            _remove(tmp)
            if full:
                raise self._disk_full(kind, key, "the disk is full") from exc
            raise
        return theirs or CachedEntry(kind, key, final, files, value, False, time.perf_counter() - start)

    def _disk_full(self, kind: str, key: str, reason: str) -> BadInputError:
        return BadInputError(
            f"{self.root}: the stage cache ran out of disk space while writing {kind}/{key} ({reason}). "
            "Nothing was left behind. Free space on that disk, or set EDGEPACK_CACHE to a folder on a disk with room."
        )

    def _publish(self, tmp: Path, final: Path, kind: str, key: str, decode: Callable[[Any], R], binds: str,
                 start: float) -> CachedEntry[R] | None:
        """Rename `tmp` to `final` and return None; when another build finished the same entry first,
        return theirs (same inputs, same result) and drop ours."""
        for _ in range(2):
            try:
                tmp.rename(final)
                return None
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            theirs = self._open(kind, key, final, decode, binds, start)  # evicts theirs when damaged
            if theirs is not None:
                _remove(tmp)
                return theirs
        raise OSError(errno.EEXIST, f"{final} keeps reappearing damaged while this build writes it")


def _damage(folder: Path, binds: str) -> tuple[str | None, Any]:
    """Return why the entry in `folder` cannot be trusted (None when every check passes) and its manifest."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{MANIFEST} is missing (an unfinished or older-format entry)", None
    except (OSError, ValueError) as exc:
        return f"{MANIFEST} is unreadable ({exc})", None
    return _manifest_damage(folder, manifest, binds), manifest


def _manifest_damage(folder: Path, manifest: Any, binds: str) -> str | None:
    """Why a parsed entry manifest (and the files it lists) cannot be trusted, or None."""
    if not isinstance(manifest, dict) or manifest.get("schema") != ENTRY_SCHEMA:
        return "written by another edgepack version (entry schema differs)"
    try:
        if _json_sha256(manifest["result"]) != manifest["result_sha256"]:
            return "its recorded result changed since it was written (sha256 mismatch)"
        if manifest["artifact_sha256"] != binds:
            return "it verified a different artifact (artifact sha256 mismatch)"
        for name, record in manifest["files"].items():
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != record["size"] or file_sha256(path) != record["sha256"]:
                return f"{name} changed since it was written (sha256 mismatch)"
    except (KeyError, TypeError, AttributeError) as exc:
        return f"{MANIFEST} is incomplete ({exc!r})"
    return None


def _hash_files(folder: Path) -> dict[str, FileRecord]:
    """Size and sha256 of every file under `folder`, by path relative to it."""
    return {
        p.relative_to(folder).as_posix(): FileRecord(p.stat().st_size, file_sha256(p))
        for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST
    }


def _remove(path: Path) -> None:
    """Delete a file or folder; a folder is first renamed aside so no reader ever sees it half-deleted."""
    if path.is_dir() and not path.name.startswith("."):
        aside = path.with_name(f".{path.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            path.rename(aside)
        except OSError:
            aside = path
        shutil.rmtree(aside, ignore_errors=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _nearly_full(path: Path) -> bool:
    """Whether the disk holding `path` (or its nearest existing parent) has almost no room left."""
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free < NEARLY_FULL_BYTES
    except OSError:
        return False


def collect_stale_temporaries(root: Path) -> list[Path]:
    """Remove what killed runs left in the cache under `root`; return what was removed.

    A temporary of this cache names its process: it goes once that process is gone. A fixed-name
    `*.tmp` of an older edgepack goes once it is older than LEGACY_TMP_AGE_SECONDS.
    """
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    now = time.time()
    for kind in root.iterdir():
        if not kind.is_dir():
            continue
        for item in kind.iterdir():
            match = _TEMPORARY.match(item.name)
            try:
                if match is not None:
                    stale = not process_alive(int(match.group(1)))
                else:
                    stale = _legacy_tmp(item, now)
                    if not stale and item.is_dir() and not (item / MANIFEST).exists():
                        # Older versions also wrote "<name>.tmp" inside their entries (gguf/<key>/model-F16.tmp).
                        for inner in item.iterdir():
                            if _legacy_tmp(inner, now):
                                _remove(inner)
                                removed.append(inner)
            except OSError:  # removed meanwhile by its owner
                continue
            if stale:
                _remove(item)
                removed.append(item)
    return removed


def _legacy_tmp(item: Path, now: float) -> bool:
    return item.name.endswith(".tmp") and now - item.lstat().st_mtime > LEGACY_TMP_AGE_SECONDS


def place_artifact(src: Path, dest: Path) -> None:
    """Copy a cached artifact into a bundle, as a reflink where the filesystem supports one.

    Never a hard link: a bundle file sharing an inode with the cache would let an edit to one
    bundle change the cache entry, and with it every later bundle.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not _reflink(src, dest):
        shutil.copyfile(src, dest)
    shutil.copymode(src, dest)


def _reflink(src: Path, dest: Path) -> bool:
    """Clone `src` to `dest` with the FICLONE ioctl (btrfs, XFS, ...); False where it is not supported."""
    try:
        import fcntl
    except ImportError:  # not on POSIX
        return False
    ficlone = 0x40049409  # _IOW(0x94, 9, int) from linux/fs.h
    try:
        with src.open("rb") as s, dest.open("wb") as d:
            fcntl.ioctl(d.fileno(), ficlone, s.fileno())
        return True
    except OSError:
        return False
