"""Verify an artifact in a child process: what every verification reads, passed as JSON.

A verification that runs a model from Python holds the GIL for much of its time: the numpy MIL
interpreter spends half a decode step in Python, and ExecuTorch's pybind runtime holds it for a whole
forward. Two iOS simulations in threads of one process took 16.3 s where two processes took 11.7 s
(2026-12-06, this 2-core host). In a whole build, whose cores were already saturated, that bought no wall
time (docs/benchmarks.md); what it does give: the build process peaks lower (7.3 -> 6.0 GB on the bundled
example), a child's memory goes back to the OS when it exits, and a runtime that crashes takes down its child,
not the build. The child (`python -m MODULE REQUEST RESULT`, see
packager.child_stage) gets the fp32 reference by its cached folder, the contract, the eval set and the fp32
model's answers; it loads the tokenizer from the checkpoint folder itself.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packager.child_stage import run_child, serve_request
from packager.contract import Contract
from packager.verify.golden import GoldenSet
from packager.verify.reference import ReferenceLogits, tokenizer_in
from packager.verify.result import VerificationResult
from packager.verify.task_eval import EvalRow, TaskMetrics

if TYPE_CHECKING:
    from packager.scheduler import Claim, HeavyStep
    from packager.stages import BuildContext


@dataclass
class VerifyInputs:
    """What an artifact is verified against: the fp32 reference, the golden text, the task and its baseline."""

    reference: ReferenceLogits
    golden: GoldenSet
    contract: Contract
    tokenizer_folder: Path
    eval_rows: list[EvalRow]
    baseline: list[str]

    @classmethod
    def of(cls, ctx: BuildContext) -> VerifyInputs:
        """The build's inputs (the fp32 reference and baseline are computed first when not yet cached)."""
        rows = ctx.eval_rows
        return cls(ctx.reference, ctx.golden, ctx.contract, ctx.ckpt.folder, rows,
                   list(ctx.baseline_answers) if rows else [])

    def as_dict(self) -> dict[str, Any]:
        reference = {f.name: getattr(self.reference, f.name) for f in dataclasses.fields(self.reference)}
        return {"reference": {**reference, "folder": str(self.reference.folder)},
                "golden": dataclasses.asdict(self.golden), "contract": self.contract.as_dict(),
                "tokenizer_folder": str(self.tokenizer_folder),
                "eval_rows": [dataclasses.asdict(r) for r in self.eval_rows], "baseline": self.baseline}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VerifyInputs:
        reference = dict(data["reference"], folder=Path(data["reference"]["folder"]))
        golden = dict(data["golden"], prompts=tuple(data["golden"]["prompts"]))
        return cls(ReferenceLogits(**reference), GoldenSet(**golden), Contract.from_dict(data["contract"]),
                   Path(data["tokenizer_folder"]), [EvalRow(**r) for r in data["eval_rows"]], list(data["baseline"]))

    def hf_tokenizer(self) -> Any:
        """The checkpoint's transformers tokenizer (loaded in the child, as the build loads it)."""
        return tokenizer_in(self.tokenizer_folder)


# What a child verification gives back: the result without its task metrics, and those metrics (with an eval set).
Verified = tuple[VerificationResult, TaskMetrics | None]


def verified_in_child(ctx: BuildContext, step: HeavyStep, module: str, request: dict[str, Any],
                      what: str) -> VerificationResult:
    """Verify in a child (`python -m module`) under `step`'s memory claim, with the build's inputs added to
    `request`; the task metrics it measured (with an eval set) are held to the build's task gate."""
    inputs = VerifyInputs.of(ctx)  # the fp32 reference and baseline: their own heavy steps, taken before this
    with ctx.scheduler.step(step, what) as claim:
        result, task = verify_in_child(module, {**request, "inputs": inputs.as_dict()}, what, claim)
    if task is not None:
        ctx.attach_task(result, task)
    return result


def verify_in_child(module: str, request: dict[str, Any], what: str, claim: Claim | None = None) -> Verified:
    """Run `python -m module` on `request` in a scratch folder; its output is appended to this process's stderr
    (the build log during a build)."""
    with tempfile.TemporaryDirectory(prefix="edgepack-verify-") as scratch:
        folder = Path(scratch)
        try:
            data = run_child(module, folder, request, what, claim)
        finally:
            _append_log(folder / "export.log")
    task = data.get("task")
    return VerificationResult.from_dict(data["result"]), TaskMetrics(**task) if task else None


def serve_verification(description: str, handle: Callable[[dict[str, Any]], Verified],
                       argv: list[str] | None = None) -> int:
    """The child's side of verify_in_child: request in, (result, task metrics) out."""
    def encoded(request: dict[str, Any]) -> dict[str, Any]:
        result, task = handle(request)
        return {"result": result.as_dict(), "task": task.as_dict() if task else None}

    return serve_request(description, encoded, argv)


def _append_log(log: Path) -> None:
    if log.is_file() and log.stat().st_size:
        os.write(2, log.read_bytes())
