"""Where the data folders (templates/, mobile/) live, installed or in a checkout.

In a wheel they are shipped as packager/_data/...; in a source checkout they sit at the top level
beside packager/. Everything else asks here instead of guessing paths.
"""

from __future__ import annotations

from pathlib import Path

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
