"""The eval set answered by an .aimodel in a second interpreter process, beside the golden check.

Apple's reference interpreter computes on one core. When a build's share of the host is two cores or more
(packager.threads), the eval rows are answered in a child running this module
(`python -m targets.ios.coreai_eval REQUEST RESULT`, packager.child_stage) while the golden positions run
in the build's own process, so each has the whole --coreai-check-minutes instead of half. The child loads
its own interpreter on the same asset (read only), the tokenizer from the checkpoint's folder (local files,
no remote code) and the contract, answers the rows as the build's process would (targets.ios.verify.
answer_eval_set) and returns the task metrics, failures and notes as JSON.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from packager.child_stage import serve_request
from packager.contract import Contract
from packager.verify.task_eval import EvalRow, TaskMetrics

Answered = tuple[TaskMetrics, list[str], list[str]]


def request(asset: Path, tokenizer_folder: Path, contract: Contract, rows: Sequence[EvalRow], max_context: int,
            baseline: Sequence[str] | None) -> dict[str, Any]:
    """The child's request: everything answer_eval_set needs, as JSON."""
    return {"asset": str(asset), "tokenizer_folder": str(tokenizer_folder), "contract": contract.as_dict(),
            "rows": [dataclasses.asdict(row) for row in rows], "max_context": max_context,
            "baseline": list(baseline) if baseline is not None else None}


def answered(result: dict[str, Any]) -> Answered:
    """The child's result as answer_eval_set returns it."""
    return TaskMetrics(**result["metrics"]), list(result["failures"]), list(result["notes"])


def answer(request: dict[str, Any]) -> dict[str, Any]:
    from packager.verify.reference import tokenizer_in
    from targets.ios.coreai_verify import AimodelDriver
    from targets.ios.verify import answer_eval_set

    driver = AimodelDriver(Path(request["asset"]))
    try:
        metrics, failures, notes = answer_eval_set(
            driver, Contract.from_dict(request["contract"]), [EvalRow(**row) for row in request["rows"]],
            tokenizer_in(Path(request["tokenizer_folder"])), int(request["max_context"]), request["baseline"])
    finally:
        driver.close()
    return {"metrics": metrics.as_dict(), "failures": failures, "notes": notes}


def main(argv: list[str] | None = None) -> int:
    """`python -m targets.ios.coreai_eval REQUEST RESULT`."""
    return serve_request(__doc__.splitlines()[0], answer, argv)


if __name__ == "__main__":
    sys.exit(main())
