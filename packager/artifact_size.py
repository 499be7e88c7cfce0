"""How much of a device an artifact takes: every file that ships as it, measured in the build folder.

A verification names its artifact by its path under the build root, sometimes followed by how it was
checked ("<target>/model.pkg (its runtime)"). What ships under that path is every file of a folder
(a model package may be a folder) or a file together with the files beside it that share its stem (a
program file may load its weights from a companion file next to it, and both ship).
"""

from __future__ import annotations

import re
from pathlib import Path

# " (how it was checked)" after an artifact's path.
QUALIFIER = re.compile(r" \([^()]*\)$")


def artifact_files(root: Path, artifact: str) -> list[Path]:
    """Return the files that ship as `artifact`, sorted; empty when the build holds nothing by that name."""
    path = root / artifact
    if not path.exists():
        path = root / QUALIFIER.sub("", artifact)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    if path.is_file():
        return sorted(p for p in path.parent.iterdir() if p.is_file() and p.stem == path.stem)
    return []


def artifact_megabytes(root: Path, artifact: str, ships: list[str] | tuple[str, ...] = ()) -> float | None:
    """Return the MiB the artifact's files take on a device, or None when none of them is in the build.

    `ships`: the paths the artifact's verification says ship as it (VerificationResult.ships), if any.
    """
    paths = ships or [artifact]
    files = sorted({f for path in paths for f in artifact_files(root, path)})
    return sum(p.stat().st_size for p in files) / 2**20 if files else None
