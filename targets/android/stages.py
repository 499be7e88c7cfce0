"""Cached ExecuTorch stages of a build: exported .pte/.ptd pairs and their verification records.

An export is keyed by the checkpoint's content digest, the recipe, the delegate and the runner
metadata (context, eos/BOS ids), so a rebuild or a second target reuses it. It runs in a child
process (targets.android.export) and is kept as a stage-cache entry (packager.stage_cache):
written whole or not at all, and checked against its recorded hashes on reuse.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packager.child_stage import run_child
from packager.fingerprint import file_sha256, options_digest
from packager.ladder import EAGER_SCREEN
from packager.scheduler import CHILD_LIBRARIES, HeavyStep
from packager.verify.child_verify import verified_in_child
from packager.verify.gates import gate_as_dict
from packager.verify.metrics import FidelityMetrics
from packager.verify.result import VerificationResult
from packager.verify.task_eval import TaskMetrics
from targets.android.export import EXECUTORCH_VERSION, EXPORT_SCHEMA, Recipe, RunnerMetadata

if TYPE_CHECKING:
    from packager.adapter import AdapterSource
    from packager.stages import BuildContext, RungScreen

# Bump when a .pte verification record's content or computation changes.
PTE_VERIFICATION_SCHEMA = 3  # 3: fidelity sums over 16 positions at a time
# The heavy steps of an Android build, with their expected peaks before one is measured (x fp32 size, above the
# child's libraries). Export: measured 10.1 GB for a Gemma 3 4B (15.6 GB in fp32, read a block at a time) and 1.8 GB
# for Gemma 3 270M (1.07 GB, loaded whole), 2026-12-07, once torch.export and the lowering stopped copying the
# weights (targets.android.weight_copies).
EXPORT = HeavyStep("executorch export", 0.62, in_process=False, fixed=CHILD_LIBRARIES)
# ExecuTorch's runtimes over the .pte, in a child process (packager.verify.child_verify): its pybind runtime holds
# the GIL through a whole forward, which stalled every other Python thread of the build. Measured 3.7 GB at 1B
# (8da8w-smooth-f32down, a 1.5 GB .ptd) once forward took prefill_chunk tokens a call (7.8 GB before), 10.7 GB at
# 4B (a 5.9 GB .ptd).
RUN = HeavyStep("executorch run", 0.65, in_process=False, fixed=CHILD_LIBRARIES)
HEAVY_STEPS = (EAGER_SCREEN, EXPORT, RUN)


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
    # sha256 over the .pte and .ptd (from the entry's checked manifest): what a verification record is about.
    sha256: str

    @property
    def megabytes(self) -> float:
        return (self.pte.stat().st_size + self.ptd.stat().st_size) / 2**20


def runner_metadata(ctx: BuildContext, max_context: int) -> RunnerMetadata:
    """What the runner reads from the .pte, from the contract (eos ids, BOS) and the checkpoint."""
    contract = ctx.contract
    return RunnerMetadata(max_context=max_context, eos_ids=tuple(contract.eos_ids), bos_id=contract.bos_id,
                          vocab_size=int(ctx.ckpt.config["vocab_size"]))


@dataclass(frozen=True)
class FleetMember:
    """A specialist's export in a fleet: <stem>.pte keeps its adapter, <base_data>.ptd holds only the base's
    tensors (the same file for every specialist, shipped once)."""

    stem: str
    base_data: str


def cached_pte(ctx: BuildContext, recipe: Recipe, delegate: str, max_context: int,
               member: FleetMember | None = None) -> PteArtifact:
    """Return the exported .pte for (checkpoint, recipe, delegate, metadata), exporting it when not cached;
    `member`: the program of one specialist of a fleet (an adapter recipe), its weights file the base's."""
    metadata = runner_metadata(ctx, max_context)
    key = options_digest("pte", EXPORT_SCHEMA, EXECUTORCH_VERSION, ctx.ckpt_digest, _recipe_key(ctx, recipe),
                         delegate, dataclasses.asdict(metadata),
                         *([dataclasses.asdict(member)] if member else []))[:24]
    label = f"export .pte {recipe.name}" + ("" if delegate == "xnnpack" else f" ({delegate})") + (
        f" ({member.stem}, base apart)" if member else "")

    def export(tmp: Path) -> dict[str, Any]:
        request = {"checkpoint": str(ctx.ckpt.folder), "out_dir": str(tmp), "recipe": recipe.name,
                   "delegate": delegate, "metadata": dataclasses.asdict(metadata),
                   "adapter": dataclasses.asdict(adapter_source(ctx, recipe)) if recipe.adapter else None,
                   **({"stem": member.stem, "base_data": member.base_data} if member else {})}
        ctx.reporter.say(f"exporting {recipe.name} ({delegate}) with ExecuTorch {EXECUTORCH_VERSION} "
                         "in a child process")
        what = f"ExecuTorch export of {ctx.ckpt.folder} with recipe {recipe.name} ({delegate})"
        with ctx.scheduler.step(EXPORT, what) as claim:
            return run_child("targets.android.export", tmp, request, what, claim)

    entry = ctx.stage_cache.entry(
        "pte", key, label, export,
        describe=lambda e: f"{e['pte']} + {e['ptd']}, peak RSS {e['peak_rss_mb']:.0f} MB")
    result = entry.value
    program = options_digest("pte-files", entry.sha256(result["pte"]), entry.sha256(result["ptd"]))
    return PteArtifact(recipe, delegate, key, entry.path(result["pte"]), entry.path(result["ptd"]), result,
                       entry.from_cache, program)


def adapter_source(ctx: BuildContext, recipe: Recipe) -> AdapterSource:
    """The adapter an adapter recipe keeps apart; a whole-model input has none (exit 2)."""
    from packager.adapter import AdapterSource

    return AdapterSource.required(ctx.ckpt, f"--recipe {recipe.name}", "another --recipe")


def _recipe_key(ctx: BuildContext, recipe: Recipe) -> dict[str, Any]:
    """What a recipe's artifacts depend on besides the checkpoint: the recipe, and an adapter kept apart by its
    files' content."""
    return {**recipe.as_dict(), "adapter": adapter_source(ctx, recipe).files_sha256} if recipe.adapter else \
        recipe.as_dict()


def _record_key(ctx: BuildContext, kind: str, artifact: PteArtifact, tokenizer_json: Path) -> str:
    task_key = ctx.task_key() if ctx.eval_rows else ""  # the eval set and contract the answers depend on
    return options_digest(kind, PTE_VERIFICATION_SCHEMA, artifact.key, artifact.sha256, file_sha256(tokenizer_json),
                          ctx.golden.digest_source(), task_key)[:24]


def verified_pte(ctx: BuildContext, artifact: PteArtifact, tokenizer_json: Path, name: str) -> VerificationResult:
    """Run the .pte in ExecuTorch on this host, in a child process (cached per export + golden set + eval set)."""
    def verify() -> VerificationResult:
        rows = f", then {len(ctx.eval_rows)} eval rows in TextLLMRunner" if ctx.eval_rows else ""
        ctx.reporter.say(f"running {artifact.pte.name} in ExecuTorch in a child process "
                         f"({ctx.reference.positions} golden positions{rows})")
        request = {"pte": str(artifact.pte), "ptd": str(artifact.ptd) if artifact.ptd else None,
                   "tokenizer_json": str(tokenizer_json), "artifact": name, "recipe": artifact.recipe.name,
                   "gate": gate_as_dict(artifact.recipe.gate),
                   "max_context": int(artifact.export["metadata"]["get_max_context_len"])}
        return verified_in_child(ctx, RUN, "targets.android.verify", request, f"running {artifact.pte.name}")

    result = ctx.stage_cache.record(
        "verify", _record_key(ctx, "verify-pte", artifact, tokenizer_json), f"verify .pte {artifact.recipe.name}",
        verify, encode=VerificationResult.as_dict, decode=VerificationResult.from_dict, binds=artifact.sha256,
        describe=lambda r: r.verdict_line(artifact.recipe.gate, ctx.options.task_gate))
    # The verdict of a stored record is not taken on trust: the gates are applied again to its numbers.
    result.reapply_gates(artifact.recipe.gate, ctx.options.task_gate)
    return dataclasses.replace(result, artifact=name)


def structural_pte(ctx: BuildContext, artifact: PteArtifact, tokenizer_json: Path, name: str, backend_id: str,
                   reference_metadata: dict[str, Any]) -> VerificationResult:
    """Check a delegate .pte this host cannot run (cached like the executed records)."""
    from targets.android import verify as pte_check

    result = ctx.stage_cache.record(
        "verify", _record_key(ctx, "structural-pte", artifact, tokenizer_json),
        f"check .pte {artifact.recipe.name} ({artifact.delegate}, structural)",
        lambda: pte_check.verify_structural(artifact.pte, artifact.ptd, name, artifact.recipe.name, backend_id,
                                            reference_metadata),
        encode=VerificationResult.as_dict, decode=VerificationResult.from_dict, binds=artifact.sha256)
    return dataclasses.replace(result, artifact=name)


def rung_screen(ctx: BuildContext, recipe: Recipe) -> RungScreen:
    """How a recipe is screened: its eager quantized model, doing the arithmetic the exported .pte does."""
    from packager.stages import RungScreen
    from targets.android.verify import eager_quantized_model

    fidelity_key = options_digest("screen-pte", PTE_VERIFICATION_SCHEMA, ctx.ckpt_digest, _recipe_key(ctx, recipe),
                                  ctx.golden.digest_source())[:24]
    return RungScreen("screen-pte-task", PTE_VERIFICATION_SCHEMA, _recipe_key(ctx, recipe), fidelity_key,
                      f"screen {recipe.name} (eager)", f"screen {recipe.name} on the task (eager)",
                      lambda: eager_quantized_model(ctx.ckpt.folder, ctx.ckpt.spec, recipe,
                                                    adapter_source(ctx, recipe) if recipe.adapter else None),
                      lambda m: f"top-1 (decisive) {m.top1_decisive or 0:.3f}, KL {m.kl:.4f}")


def screened(ctx: BuildContext, recipe: Recipe, task_if: Callable[[FidelityMetrics], bool] | None = None,
             ) -> FidelityMetrics:
    """Predicted fidelity of a recipe (eager PyTorch, no export), cached per checkpoint + recipe + golden set;
    with `task_if`, its task screen in the same step when that holds (packager.stages.BuildContext.screened)."""
    return ctx.screened(rung_screen(ctx, recipe), task_if)


def screened_task(ctx: BuildContext, recipe: Recipe) -> TaskMetrics:
    """The eval set answered by a recipe's eager quantized model (no export), against the fp32 baseline;
    cached per checkpoint + recipe + task.
    Asked when the screen's verdict needs it (packager.ladder.task_screened)."""
    return ctx.screened_task(rung_screen(ctx, recipe))


def runner_tokens(ctx: BuildContext, tokenizer_json: Path, eos_ids: list[int]) -> tuple[int, list[str]]:
    """(bos id, eos pieces) as the runner's C++ tokenizer reads them from tokenizer.json, for edgepack.json;
    cached per tokenizer file, so a warm build does not load it again."""
    from targets.android import verify as pte_check

    def read() -> dict[str, Any]:
        tokenizer = pte_check.RunnerTokenizer(tokenizer_json)
        return {"bos_id": tokenizer.bos_id, "eos_pieces": pte_check.eos_pieces(tokenizer, eos_ids)}

    key = options_digest("runner-tokens", EXECUTORCH_VERSION, file_sha256(tokenizer_json), eos_ids)[:24]
    found = ctx.stage_cache.record("runner-tokens", key, "runner tokenizer's bos and eos pieces", read)
    return int(found["bos_id"]), list(found["eos_pieces"])
