"""Which GGUF type a target ships when the user named none: the smallest that passes every gate.

llama.cpp's Q4_K_M is a good default for most models, and too lossy for some: very small ones, and
fine-tunes whose deltas are small next to the quantization step. Without --quant a GGUF target
walks a ladder upward from the type it declares (default_quant) and ships the first rung whose
verification passes its fidelity gate and, with an eval set, its task gate; when none passes, the
last rung ships its failure (the build fails with its table, as an explicit --quant would). Each
rung is the shared, cached GGUF stage, so targets that start from the same type walk it once.
An explicit --quant is built and gated alone, as asked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packager.strict_json import finite_numbers
from packager.verify.result import VerificationResult

# Smallest first; each keeps more bits per weight than the one before.
GGUF_LADDER = ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")


def ladder_from(start: str) -> tuple[str, ...]:
    """The rungs from `start` up (just `start` when it is not on the ladder)."""
    return GGUF_LADDER[GGUF_LADDER.index(start):] if start in GGUF_LADDER else (start,)


def ladder_within(start: str, fits: Callable[[str], bool]) -> tuple[str, ...]:
    """The rungs from `start` up that `fits` (a runtime's memory ceiling); when `start` itself does not
    fit, from the most faithful smaller rung that does. Empty: no rung fits."""
    if start not in GGUF_LADDER:
        return (start,) if fits(start) else ()
    index = GGUF_LADDER.index(start)
    while index > 0 and not fits(GGUF_LADDER[index]):
        index -= 1
    return tuple(quant for quant in GGUF_LADDER[index:] if fits(quant))


@dataclass(frozen=True)
class Rung:
    """One rung tried: its numbers and why it was rejected (no failures: it shipped)."""

    quant: str
    top1: float | None
    kl: float | None
    task_accuracy: float | None
    failures: list[str]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: a non-finite measurement (NaN logits) becomes null."""
        return finite_numbers({"quant": self.quant, "top1": self.top1, "kl": self.kl,
                               "task_accuracy": self.task_accuracy, "rejected_because": self.failures})


@dataclass
class GgufChoice:
    """The GGUF type to ship, its file (in the stage cache) and verification, and every rung tried on the
    way (the shipped one last)."""

    quant: str
    file: Path
    verification: VerificationResult
    tried: list[Rung] = field(default_factory=list)
    explicit: bool = False
    # A GGUF LoRA adapter llama.cpp applies to `file` at run time (packager.runtime_adapter); None: merged.
    adapter: Path | None = None
    # Why the walk started below the target's default type (its runtime's memory ceiling), if it did.
    ceiling_note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"chosen": self.quant, "from": "--quant" if self.explicit else "ladder",
                "ladder": [r.as_dict() for r in self.tried],
                **({"runtime_adapter": self.adapter.name} if self.adapter else {})}

    def notes(self) -> list[str]:
        """One line per rejected rung (and the ceiling's, when one applied), for the report."""
        rejected = [f"GGUF ladder: {r.quant} rejected ({'; '.join(r.failures)}), tried before {self.quant}"
                    for r in self.tried if r.quant != self.quant]
        return ([self.ceiling_note] if self.ceiling_note else []) + rejected


def rung_of(quant: str, result: VerificationResult) -> Rung:
    """The rung record of `quant` verified as `result`."""
    m = result.metrics
    return Rung(quant, m.top1 if m else None, m.kl if m else None,
                result.task.exact_match if result.task else None, list(result.failures))


def choose_gguf(rungs: tuple[str, ...], build: Callable[[str], tuple[Path, VerificationResult]],
                explicit: bool = False) -> GgufChoice:
    """Build and verify rungs from the smallest until one passes; that one ships, else the last one (failing)."""
    tried = []
    for quant in rungs:
        file, result = build(quant)
        tried.append(rung_of(quant, result))
        if result.passed or quant == rungs[-1]:
            return GgufChoice(quant, file, result, tried, explicit)
    raise ValueError("an empty GGUF ladder")
