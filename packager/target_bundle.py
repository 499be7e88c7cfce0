"""The tail every target's build shares: list its folder, write edgepack.json, return a TargetResult.

edgepack.json is the one document an app or a release reads about a target folder. Its keys come in
one order for every target (target, runtime, the target's own sections, files, verification,
scaffold_checks, edgepack_version), so bundles rebuilt from the same inputs are byte-identical.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packager import __version__
from packager.manifest import file_entries, without_host_measurements, write_json
from packager.target import ScaffoldCheck, TargetResult
from packager.verify.result import VerificationResult

DOCUMENT = "edgepack.json"


@dataclass(frozen=True)
class BundleFiles:
    """A target folder's files other than edgepack.json and its copies, with their sizes and sha256."""

    out_dir: Path
    files: list[str]
    entries: list[dict[str, Any]]
    # Where edgepack.json is also copied (e.g. an app's assets): a document cannot list itself.
    copies: tuple[str, ...] = ()

    @property
    def documents(self) -> list[str]:
        return sorted({DOCUMENT, *self.copies})

    def entry(self, path: str) -> dict[str, Any]:
        """Return the {path, bytes, sha256} entry of one listed file."""
        [found] = [e for e in self.entries if e["path"] == path]
        return found


def list_bundle(out_dir: Path, copies: tuple[str, ...] = ()) -> BundleFiles:
    """Return every file under out_dir except edgepack.json and its copies, hashed, in a stable order."""
    documents = {DOCUMENT, *copies}
    files = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*")
                   if p.is_file() and p.relative_to(out_dir).as_posix() not in documents)
    return BundleFiles(out_dir, files, file_entries(out_dir, files), copies)


def bundle_document(target: Any, sections: dict[str, Any], listed: BundleFiles,
                    verifications: list[VerificationResult], checks: list[ScaffoldCheck] | None) -> dict[str, Any]:
    """Return the edgepack.json document: the target's own `sections` (model, contract, ...) in its order,
    framed by the keys every target writes. Host measurements stay out (they differ on every run);
    `checks` None: the target runs no scaffold checks and the document has no such key."""
    document: dict[str, Any] = {"target": target.name, "runtime": target.runtime, **sections,
                                "files": listed.entries,
                                "verification": [without_host_measurements(v.as_dict()) for v in verifications]}
    if checks is not None:
        document["scaffold_checks"] = [vars(c) for c in checks]
    document["edgepack_version"] = __version__
    return document


def write_document(listed: BundleFiles, document: dict[str, Any]) -> None:
    """Write edgepack.json and its copies."""
    write_json(listed.out_dir / DOCUMENT, document)
    for copy in listed.copies:
        (listed.out_dir / copy).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(listed.out_dir / DOCUMENT, listed.out_dir / copy)


def finish_bundle(out_dir: Path, target: Any, sections: dict[str, Any], verifications: list[VerificationResult],
                  checks: list[ScaffoldCheck] | None = None, notes: list[str] | None = None,
                  extra: dict[str, Any] | None = None, copies: tuple[str, ...] = (),
                  listed: BundleFiles | None = None, specialists: dict[str, str] | None = None) -> TargetResult:
    """Write the target folder's edgepack.json (and copies) and return the target's result.

    `listed`: the folder as already listed by list_bundle (when the target needed the entries for its
    own sections, or wrote a first document before verifying); otherwise the folder is listed here.
    `specialists`: for a fleet, the specialist each verified artifact serves (TargetResult.specialists).
    """
    listed = listed or list_bundle(out_dir, copies)
    write_document(listed, bundle_document(target, sections, listed, verifications, checks))
    return TargetResult(target=target.name, files=[*listed.files, *listed.documents], verifications=verifications,
                        scaffold_checks=list(checks or []), notes=list(notes or []), extra=dict(extra or {}),
                        specialists=dict(specialists or {}))
