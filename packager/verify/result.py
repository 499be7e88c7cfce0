"""What verifying one artifact produced: its level, its numbers, and whether it passed its gate."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from packager.strict_json import finite_numbers
from packager.verify.metrics import FidelityMetrics
from packager.verify.task_eval import TaskMetrics

LEVELS = ("executed", "simulated", "structural")


@dataclass
class VerificationResult:
    """One artifact's verification; `level` says how strongly it was checked on this host."""

    artifact: str
    format: str
    quant: str
    level: str
    runtime: str
    metrics: FidelityMetrics | None = None
    tokenizer_parity: bool | None = None
    tokenizer_detail: str = ""
    greedy_match: bool | None = None
    greedy_text_reference: str = ""
    greedy_text: str = ""
    tokens_per_s: float | None = None
    task: TaskMetrics | None = None
    gate: str = ""
    failures: list[str] = field(default_factory=list)
    # Gate misses that do not fail the artifact: fidelity below its gate where the task gate decided.
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Paths under the build root (files or folders) that ship as this artifact, when its own path does
    # not say (a web page with its model and runtime folders); see packager.artifact_size.
    ships: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"unknown verification level {self.level!r}")

    @property
    def passed(self) -> bool:
        return not self.failures

    def reapply_gates(self, fidelity: Any, task: Any | None = None) -> None:
        """Apply the fidelity gate (and the task gate, when given) again to this result's own numbers,
        adding any failure the record lacks.

        A result read back from the cache keeps the failures it was stored with, but its verdict is
        never taken on trust: applying the gates again means no edit to the record can turn a fail into a pass.
        """
        fidelity_reasons = fidelity.check(self.metrics) if self.metrics is not None else []
        task_reasons = task.check(self.task) if task is not None and self.task is not None else []
        self.failures += [r for r in fidelity_reasons + task_reasons if r not in self.failures]
        finite = self.metrics is not None and self.metrics.finite
        if task is not None and task.decides and self.task is not None and finite and not task_reasons:
            # The task passed on this artifact's own answers: its golden-text fidelity misses are reported,
            # not fatal. Non-finite numbers and every other kind of failure still fail it.
            demoted = [r for r in self.failures if r in fidelity_reasons]
            self.failures = [r for r in self.failures if r not in fidelity_reasons]
            self.warnings += [r for r in demoted if r not in self.warnings]

    def fidelity_line(self) -> str:
        """The one-line summary shown after a verification stage: agreement, divergence, verdict."""
        m = self.metrics
        return f"top-1 {m.top1:.3f}, KL {m.kl:.4f}, {'pass' if self.passed else 'FAIL'}" if m else ""

    def verdict_line(self, fidelity: Any, task: Any | None = None) -> str:
        """fidelity_line with the verdict the gates give (a fidelity miss the task gate decided is a pass)."""
        judged = replace(self, failures=list(self.failures), warnings=list(self.warnings))
        judged.reapply_gates(fidelity, task)
        return judged.fidelity_line() + (" (task gate decided)" if judged.warnings and judged.passed else "")

    def shipped_as(self, target: str, files: list[str]) -> VerificationResult:
        """This result named after the files that ship as the artifact: "<target>/model.gguf", or with a LoRA
        adapter "<target>/model.gguf + adapter-x.gguf", whose size on the device is both files'."""
        named = replace(self, artifact=f"{target}/{' + '.join(files)}")
        if len(files) > 1:
            named.ships = [f"{target}/{f}" for f in files]
        return named

    def summary_row(self, artifact: str) -> dict[str, Any]:
        """The reproducible numbers a bundle's README shows (no host speeds: those live in report.md)."""
        m = self.metrics
        return finite_numbers({"artifact": artifact, "level": self.level, "top1": m.top1 if m else None,
                               "kl": m.kl if m else None, "ppl": m.ppl if m else None,
                               "ppl_ref": m.ppl_ref if m else None})

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data: a NaN measurement (non-finite logits) becomes null."""
        data = asdict(self)
        data["passed"] = self.passed
        return finite_numbers(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VerificationResult:
        data = {k: v for k, v in data.items() if k != "passed"}
        if data.get("metrics"):
            metrics = dict(data["metrics"])
            for key in ("top1", "kl"):  # always measured: null in a record means it was NaN
                metrics[key] = math.nan if metrics.get(key) is None else metrics[key]
            data["metrics"] = FidelityMetrics(**metrics)
        if data.get("task"):
            data["task"] = TaskMetrics(**data["task"])
        return cls(**data)
