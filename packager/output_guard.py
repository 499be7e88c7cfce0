"""The one rule for what a build or a release may write over: never user data, only its own earlier output.

An output folder may be replaced (with --force) only when it holds the manifest.json of a previous
output of the same kind, and never when it is, contains or (for sealed inputs such as a build a
release reads) lies inside one of the command's inputs. Paths are compared after resolving
symlinks, so `--out link-to-my-checkpoint` is caught like `--out my-checkpoint`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from packager.errors import BadInputError

RELEASE_KIND = "edgepack-release"
OUTPUT_KINDS = ("build", "release")
_FORBIDDEN_IN_NAME = ("/", "\\", "\0")


def check_name(name: str, source: str) -> str:
    """Return name when it is safe as the one folder name of dist/<name>; raise BadInputError naming source otherwise.

    A name that could climb out of dist/ (`../../victim`) is refused rather than rewritten, so
    the user sees which folder would have been written instead of a silent surprise.
    """
    if not name.strip() or name in (".", "..") or ".." in name or any(c in name for c in _FORBIDDEN_IN_NAME):
        raise BadInputError(
            f"{source} {name!r}: a build name must be one folder name (no '/', '\\', '..' or NUL, not empty), "
            "because the output goes to dist/<name>. Choose a plain name such as my-model, or pass --out."
        )
    return name


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def is_within(inner: Path | str, outer: Path | str) -> bool:
    """Return whether resolved `inner` is `outer` or lies below it."""
    try:
        return os.path.commonpath([inner, outer]) == os.fspath(outer)
    except ValueError:  # different drives (Windows): never nested
        return False


def previous_output_kind(folder: Path) -> str | None:
    """Return "build" or "release" when folder holds edgepack's manifest.json, else None (not ours to replace)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("schema_version"), int):
        return None
    if manifest.get("kind") == RELEASE_KIND:
        return "release"
    return "build" if isinstance(manifest.get("artifacts"), list) else None


def check_replaceable(out: Path, inputs: Sequence[Path], kind: str, force: bool,
                      sealed: Sequence[Path] = ()) -> None:
    """Return when `kind` output may be written to out; raise BadInputError naming out and the fix otherwise.

    inputs: files and folders the command reads; out may not be or contain any of them (--force
    would delete them). sealed: input folders whose content is checksummed (a release's builds);
    out may not lie inside them either, or the next read of that folder would find foreign files.
    """
    assert kind in OUTPUT_KINDS, kind
    target = _resolved(out)
    for path in [*inputs, *sealed]:
        source = _resolved(path)
        if is_within(source, target):
            what = "is" if source == target else "contains"
            raise BadInputError(
                f"{out}: the output folder {what} the input {path}; writing there would replace it. "
                "Choose an --out outside your inputs (the default is dist/<name>)."
            )
    for path in sealed:
        if is_within(target, _resolved(path)):
            raise BadInputError(
                f"{out}: the output folder lies inside the input {path}, whose files are checked against its "
                "SHA256SUMS; writing there would break it. Choose an --out outside it (the default is "
                "releases/<name>-<version>)."
            )
    if not os.path.lexists(out):
        return
    if not out.is_dir():
        raise BadInputError(f"{out}: exists and is not a folder; choose another --out.")
    if not force:
        raise BadInputError(f"{out}: the output folder already exists. Pass --force to replace it, or choose "
                            "another --out.")
    found = previous_output_kind(out)
    if found != kind:
        held = "another edgepack " + found if found else "no edgepack manifest.json"
        raise BadInputError(
            f"{out}: --force replaces only a previous edgepack {kind} folder, and this one holds {held}. "
            "Nothing was deleted; choose another --out, or remove the folder yourself if it is disposable."
        )
