"""Cached LiteRT-LM stages of a build: exported .litertlm bundles and their verification records.

An export is keyed like the .pte's (targets.android.stages): the checkpoint's content digest, the
recipe, the cache and prefill lengths, the exporter's version and schema. It runs in a child process
(targets.android.litert_export) and is kept as a stage-cache entry, written whole or not at all and
checked against its recorded sha256 on reuse; a verification record is bound to that sha256.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packager.child_stage import run_child
from packager.fingerprint import options_digest
from packager.scheduler import CHILD_LIBRARIES, HeavyStep
from packager.verify.child_verify import verified_in_child
from packager.verify.gates import gate_as_dict
from packager.verify.result import VerificationResult
from targets.android.litert_export import (
    LITERT_EXPORT_SCHEMA,
    LITERT_LM_VERSION,
    LITERT_TORCH_VERSION,
    LitertRecipe,
    prefill_lengths,
)

if TYPE_CHECKING:
    from packager.stages import BuildContext

# Bump when a .litertlm verification record's content or computation changes.
LITERTLM_VERIFICATION_SCHEMA = 4
# Measured: tiny models 0.76 GB peak (mostly the converter's libraries); Gemma 3 270M (1.07 GB in fp32) 6,165 MB
# in both of the support fleet's exports (2026-12-07), i.e. 4.8 x fp32 above the libraries; 4,527 MB with the
# lightweight conversion and the torch weights let go before quantization (same day), 3.3 x; a Llama 3.2 1B
# (4.9 GB in fp32) 7,692 MB, 1.4 x, its fp32 load the peak. The larger ratio stays: a small model's table weighs
# more than its share (measured builds replace the prior on that machine, packager.scheduler.MeasuredCosts).
LITERT_ONLY = ("runtime", ("litert-lm", "all"))
LITERT_EXPORT = HeavyStep("litert-lm export", 3.3, in_process=False, fixed=CHILD_LIBRARIES, only_when=LITERT_ONLY)
# Runs a finished bundle in a child process (packager.verify.child_verify): ai_edge_litert's interpreter there, and
# LiteRT-LM's engine in a child of its own.
LITERT_RUN = HeavyStep("litert-lm run", 1.5, in_process=False, fixed=CHILD_LIBRARIES, only_when=LITERT_ONLY)
LITERT_HEAVY_STEPS = (LITERT_EXPORT, LITERT_RUN)


@dataclass
class LitertArtifact:
    """One exported .litertlm in the stage cache."""

    recipe: LitertRecipe
    key: str
    bundle: Path
    export: dict[str, Any]
    from_cache: bool
    sha256: str  # of the bundle file (from the entry's checked manifest): what a verification record is about

    @property
    def megabytes(self) -> float:
        return self.bundle.stat().st_size / 2**20


def cached_litertlm(ctx: BuildContext, recipe: LitertRecipe, cache_length: int) -> LitertArtifact:
    """Return the exported .litertlm for (checkpoint, recipe, lengths), exporting it when not cached."""
    prefill = prefill_lengths(cache_length)
    eos_ids = list(ctx.contract.eos_ids)  # the bundle's stop tokens (litert_export.with_stop_tokens)
    key = options_digest("litertlm", LITERT_EXPORT_SCHEMA, LITERT_TORCH_VERSION, LITERT_LM_VERSION, ctx.ckpt_digest,
                         recipe.as_dict(), cache_length, list(prefill), eos_ids)[:24]

    def export(tmp: Path) -> dict[str, Any]:
        request = {"checkpoint": str(ctx.ckpt.folder), "out_dir": str(tmp), "recipe": recipe.name,
                   "cache_length": cache_length, "prefill_lengths": list(prefill), "eos_ids": eos_ids}
        ctx.reporter.say(f"exporting {ctx.model_name} as a LiteRT-LM bundle ({recipe.name}) with litert-torch "
                         f"{LITERT_TORCH_VERSION} in a child process")
        what = f"LiteRT-LM export of {ctx.ckpt.folder} with recipe {recipe.name}"
        with ctx.scheduler.step(LITERT_EXPORT, what) as claim:
            return run_child("targets.android.litert_export", tmp, request, what, claim)

    entry = ctx.stage_cache.entry(
        "litertlm", key, f"export .litertlm {recipe.name}", export,
        describe=lambda e: f"{e['bundle']}, peak RSS {e['peak_rss_mb']:.0f} MB")
    result = entry.value
    return LitertArtifact(recipe, key, entry.path(result["bundle"]), result, entry.from_cache,
                          entry.sha256(result["bundle"]))


def verified_litertlm(ctx: BuildContext, artifact: LitertArtifact, name: str) -> VerificationResult:
    """Run the bundle's program and LiteRT-LM's engine on this host, in a child process (cached per bundle +
    golden set + eval set)."""
    def verify() -> VerificationResult:
        ctx.reporter.say(f"running {artifact.bundle.name} ({artifact.recipe.name}) in the TFLite interpreter "
                         f"({ctx.reference.positions} golden positions) and LiteRT-LM's engine, in a child process")
        request = {"bundle": str(artifact.bundle), "artifact": name, "recipe": artifact.recipe.name,
                   "gate": gate_as_dict(artifact.recipe.gate), "metadata": artifact.export["metadata"]}
        return verified_in_child(ctx, LITERT_RUN, "targets.android.litert_verify", request,
                                 f"running {artifact.bundle.name}")

    task_key = ctx.task_key() if ctx.eval_rows else ""
    key = options_digest("verify-litertlm", LITERTLM_VERIFICATION_SCHEMA, artifact.key, artifact.sha256,
                         ctx.golden.digest_source(), task_key)[:24]
    result = ctx.stage_cache.record(
        "verify", key, f"verify .litertlm {artifact.recipe.name}", verify, encode=VerificationResult.as_dict,
        decode=VerificationResult.from_dict, binds=artifact.sha256,
        describe=lambda r: r.verdict_line(artifact.recipe.gate, ctx.options.task_gate))
    result.reapply_gates(artifact.recipe.gate, ctx.options.task_gate)
    return dataclasses.replace(result, artifact=name)
