"""The target plugin protocol and its registry (entry-point group `edgepack.targets`).

A target turns the shared stages of a build (checkpoint, contract, GGUF, reference logits) into
one ready-to-drop folder. Targets never import each other; whatever two targets share is a stage
on BuildContext, computed once and cached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from packager.errors import BadInputError, InternalError
from packager.verify.result import VerificationResult

if TYPE_CHECKING:
    from packager.stages import BuildContext

ENTRY_POINT_GROUP = "edgepack.targets"


@dataclass
class ScaffoldCheck:
    """One check of generated code with a real tool; `status` is passed / failed / skipped."""

    file: str
    tool: str
    status: str
    detail: str = ""


@dataclass
class TargetResult:
    """What a target produced: files (relative to its folder), verifications and code checks."""

    target: str
    files: list[str] = field(default_factory=list)
    verifications: list[VerificationResult] = field(default_factory=list)
    scaffold_checks: list[ScaffoldCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verifications) and all(
            c.status != "failed" for c in self.scaffold_checks
        )


class Target(Protocol):
    """A deployment target: builds its folder from the shared stages of a build."""

    name: ClassVar[str]
    title: ClassVar[str]
    runtime: ClassVar[str]
    status: ClassVar[str]

    def build(self, ctx: BuildContext, out_dir: Path) -> TargetResult: ...


def available_targets() -> dict[str, type[Target]]:
    """Return every installed target plugin by name."""
    found: dict[str, type[Target]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as exc:  # a broken third-party plugin must not hide the others
            raise InternalError(f"target plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
        found[ep.name] = cls
    if not found:
        raise InternalError(
            "no edgepack targets are installed (entry-point group 'edgepack.targets' is empty). "
            "Install edgepack with pip (pip install -e . in a checkout)."
        )
    return dict(sorted(found.items()))


def resolve_targets(names: list[str]) -> list[type[Target]]:
    """Map --target values (or 'all') to plugin classes, in a stable order."""
    targets = available_targets()
    if not names or "all" in names:
        return list(targets.values())
    unknown = [n for n in names if n not in targets]
    if unknown:
        raise BadInputError(
            f"--target {', '.join(unknown)}: unknown target. Available: {', '.join(targets)}, or all."
        )
    return [targets[n] for n in dict.fromkeys(names)]
