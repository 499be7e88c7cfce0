"""Where the data folders (templates/, mobile/) live, installed or in a checkout.

In a wheel they are shipped as packager/_data/...; in a source checkout they sit at the top level
beside packager/. Everything else asks here instead of guessing paths.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from packager.errors import InternalError

_PACKAGE_DIR = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the folder for a shipped data tree ("templates" or "mobile")."""
    installed = _PACKAGE_DIR / "_data" / name
    if installed.is_dir():
        return installed
    checkout = _PACKAGE_DIR.parent / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"edgepack data folder {name!r} not found next to {_PACKAGE_DIR}")


def templates_dir() -> Path:
    return data_dir("templates")


def mobile_dir() -> Path:
    return data_dir("mobile")


def copy_mobile_files(folder: str, patterns: tuple[str, ...], dest: Path) -> list[Path]:
    """Copy a bridge's sources (files of mobile/<folder> matching glob patterns) into dest, keeping
    their paths below the folder; return the copies, sorted. Every pattern must match: a bridge
    missing a file would ship broken, and means the installation lost its mobile/ data."""
    source = mobile_dir() / folder
    files: set[Path] = set()
    for pattern in patterns:
        found = [f for f in source.glob(pattern) if f.is_file()]
        if not found:
            raise InternalError(f"{source}: no {pattern} (is the wheel missing its mobile/ data?)")
        files.update(found)
    copied = []
    for file in sorted(files):
        target = dest / file.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)
        copied.append(target)
    return copied
