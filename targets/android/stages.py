"""Cached ExecuTorch stages of a build: exported .pte/.ptd pairs and their verification records.

An export is keyed by the checkpoint's content digest, the recipe, the delegate and the runner
metadata (context, eos/BOS ids), so a rebuild or a second target reuses it. It runs in a child
process (targets.android.export) and is written to a temporary folder that is renamed
into place only when complete.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packager.child_stage import run_child, staging
from packager.fingerprint import file_sha256, options_digest, save_record
from packager.verify.metrics import FidelityMetrics
from packager.verify.result import VerificationResult
from targets.android.export import EXECUTORCH_VERSION, EXPORT_SCHEMA, Recipe, RunnerMetadata

if TYPE_CHECKING:
    from packager.stages import BuildContext

# Bump when a .pte verification record's content or computation changes.
PTE_VERIFICATION_SCHEMA = 1


@dataclass
class PteArtifact:
    """One exported program in the stage cache."""

    recipe: Recipe
    delegate: str
    key: str
    pte: Path
    ptd: Path
    export: dict[str, Any]
    from_cache: bool

    @property
    def megabytes(self) -> float:
        return (self.pte.stat().st_size + self.ptd.stat().st_size) / 2**20


def runner_metadata(ctx: BuildContext, max_context: int) -> RunnerMetadata:
    """What the runner reads from the .pte, from the contract (eos ids, BOS) and the checkpoint."""
    contract = ctx.contract
    return RunnerMetadata(max_context=max_context, eos_ids=tuple(contract.eos_ids), bos_id=contract.bos_id,
                          vocab_size=int(ctx.ckpt.config["vocab_size"]))


def cached_pte(ctx: BuildContext, recipe: Recipe, delegate: str, max_context: int) -> PteArtifact:
    """Return the exported .pte for (checkpoint, recipe, delegate, metadata), exporting it when not cached."""
    metadata = runner_metadata(ctx, max_context)
    key = options_digest("pte", EXPORT_SCHEMA, EXECUTORCH_VERSION, ctx.ckpt_digest, recipe.as_dict(), delegate,
                         dataclasses.asdict(metadata))[:24]
    folder = ctx.cache / "pte" / key
    label = f"export .pte {recipe.name}" + ("" if delegate == "xnnpack" else f" ({delegate})")
    record = folder / "export.json"
    if record.is_file():
        export = json.loads(record.read_text(encoding="utf-8"))
        ctx.reporter.stage(label, True, 0.0, f"{export['pte']} + {export['ptd']}")
        return PteArtifact(recipe, delegate, key, folder / export["pte"], folder / export["ptd"], export, True)

    tmp = staging(folder)
    request = {"checkpoint": str(ctx.ckpt.folder), "out_dir": str(tmp), "recipe": recipe.name, "delegate": delegate,
               "metadata": dataclasses.asdict(metadata)}
    ctx.reporter.say(f"exporting {recipe.name} ({delegate}) with ExecuTorch {EXECUTORCH_VERSION} in a child process")
    start = time.perf_counter()
    export = run_child("targets.android.export", tmp, request,
                       f"ExecuTorch export of {ctx.ckpt.folder} with recipe {recipe.name} ({delegate})", folder)
    artifact = PteArtifact(recipe, delegate, key, folder / export["pte"], folder / export["ptd"], export, False)
    ctx.reporter.stage(label, False, time.perf_counter() - start,
                       f"{artifact.megabytes:.0f} MB, peak RSS {export['peak_rss_mb']:.0f} MB")
    return artifact


def _record(ctx: BuildContext, kind: str, artifact: PteArtifact, tokenizer_json: Path) -> Path:
    task_key = ctx._task_key() if ctx.eval_rows else ""  # the eval set and contract the answers depend on
    digest = options_digest(kind, PTE_VERIFICATION_SCHEMA, artifact.key, file_sha256(tokenizer_json),
                            ctx.golden.digest_source(), task_key)[:24]
    return ctx.cache / "verify" / f"{digest}.json"


def verified_pte(ctx: BuildContext, artifact: PteArtifact, tokenizer_json: Path, name: str) -> VerificationResult:
    """Run the .pte in ExecuTorch on this host (cached per export + golden set + eval set)."""
    from packager.verify.task_eval import score
    from targets.android import verify as pte_check

    record = _record(ctx, "verify-pte", artifact, tokenizer_json)
    label = f"verify .pte {artifact.recipe.name}"
    if record.is_file():
        ctx.reporter.stage(label, True, 0.0)
        return dataclasses.replace(VerificationResult.from_dict(json.loads(record.read_text())), artifact=name)
    reference = ctx.reference
    start = time.perf_counter()
    ctx.reporter.say(f"running {artifact.pte.name} in ExecuTorch ({reference.positions} golden positions)")
    result = pte_check.verify_pte(artifact.pte, artifact.ptd, tokenizer_json, name, artifact.recipe.name,
                                  artifact.recipe.gate, reference, ctx.golden, ctx.contract, ctx.hf_tokenizer)
    if ctx.eval_rows:
        contract = ctx.contract
        baseline = ctx.baseline_answers
        ctx.reporter.say(f"answering {len(ctx.eval_rows)} eval rows with {artifact.pte.name} in TextLLMRunner")
        tokenizer = pte_check.RunnerTokenizer(tokenizer_json)
        session = pte_check.RunnerSession(
            artifact.pte, artifact.ptd, tokenizer_json, 1 if contract.add_bos and contract.bos_id is not None else 0,
            int(artifact.export["metadata"]["get_max_context_len"]), pte_check.eos_pieces(tokenizer, contract.eos_ids))
        metrics, _ = score(contract, ctx.eval_rows, pte_check.pte_generator(session, contract), baseline, False)
        ctx.attach_task(result, metrics)
        if contract.constrained:
            result.notes.append("ExecuTorch's runner has no grammar: labels are decoded unconstrained on Android")
    save_record(record, result.as_dict())
    m = result.metrics
    ctx.reporter.stage(label, False, time.perf_counter() - start,
                       f"top-1 {m.top1:.3f}, KL {m.kl:.4f}, {'pass' if result.passed else 'FAIL'}" if m else "")
    return result


def structural_pte(ctx: BuildContext, artifact: PteArtifact, tokenizer_json: Path, name: str, backend_id: str,
                   reference_metadata: dict[str, Any]) -> VerificationResult:
    """Check a delegate .pte this host cannot run (cached like the executed records)."""
    from targets.android import verify as pte_check

    record = _record(ctx, "structural-pte", artifact, tokenizer_json)
    if record.is_file():
        return dataclasses.replace(VerificationResult.from_dict(json.loads(record.read_text())), artifact=name)
    result = pte_check.verify_structural(artifact.pte, artifact.ptd, name, artifact.recipe.name, backend_id,
                                         reference_metadata)
    save_record(record, result.as_dict())
    return result


def screened(ctx: BuildContext, recipe: Recipe) -> FidelityMetrics:
    """Predicted fidelity of a recipe (eager PyTorch, no export), cached per checkpoint + recipe + golden set."""
    from targets.android.verify import predict_fidelity

    digest = options_digest("screen-pte", PTE_VERIFICATION_SCHEMA, ctx.ckpt_digest, recipe.as_dict(),
                            ctx.golden.digest_source())[:24]
    record = ctx.cache / "verify" / f"{digest}.json"
    label = f"screen {recipe.name} (eager)"
    if record.is_file():
        ctx.reporter.stage(label, True, 0.0)
        return FidelityMetrics(**json.loads(record.read_text()))
    start = time.perf_counter()
    metrics = predict_fidelity(ctx.ckpt.folder, ctx.ckpt.spec, recipe, ctx.reference)
    save_record(record, metrics.as_dict())
    ctx.reporter.stage(label, False, time.perf_counter() - start,
                       f"top-1 (decisive) {metrics.top1_decisive or 0:.3f}, KL {metrics.kl:.4f}")
    return metrics
