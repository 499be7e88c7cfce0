"""edgepack.json per target, manifest.json and SHA256SUMS per build.

The manifest is the machine-readable truth of a build: inputs, options, every file with its size
and sha256, each artifact's verification level and numbers, and whether its gate passed.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from packager import __version__
from packager.fingerprint import file_sha256

MANIFEST_SCHEMA_VERSION = 1


def file_entries(folder: Path, files: list[str]) -> list[dict[str, Any]]:
    """Return [{path, bytes, sha256}] for files relative to folder, in a stable order."""
    return [
        {"path": f, "bytes": (folder / f).stat().st_size, "sha256": file_sha256(folder / f)}
        for f in sorted(files)
    ]


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False) + "\n", encoding="utf-8")


def tool_versions() -> dict[str, str]:
    """Versions of the tools that produced and checked the artifacts."""
    versions = {"edgepack": __version__, "python": platform.python_version()}
    for module in ("torch", "transformers", "peft", "gguf", "llama_cpp", "numpy"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:
            continue
    return versions


def write_sha256sums(root: Path) -> Path:
    """Write SHA256SUMS over every file under root (sha256sum -c compatible, sorted)."""
    lines = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "SHA256SUMS":
            lines.append(f"{file_sha256(p)}  {p.relative_to(root).as_posix()}")
    out = root / "SHA256SUMS"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out
