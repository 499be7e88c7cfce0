"""Cached Core AI stages of an iOS build: converted .aimodel assets and their verification records.

A conversion (a child process, targets.ios.coreai_export) is keyed by the checkpoint's digest, the
compression, the context, the golden text (the fp16 rewrites are sized on it) and the converter's
versions and schema, and kept as a stage-cache entry (packager.stage_cache): written whole or not at
all and checked against its recorded hashes on reuse. A verification record is bound to the asset's
digest (the sha256 over its files).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packager.beside import Pending
from packager.child_stage import run_child
from packager.fingerprint import options_digest
from packager.scheduler import CHILD_LIBRARIES, HeavyStep
from packager.threads import compute_threads
from packager.verify.result import VerificationResult
from packager.verify.task_eval import EvalRow
from targets.ios import coreai_eval
from targets.ios.coreai_export import (
    COREAI_CORE_VERSION,
    COREAI_EXPORT_SCHEMA,
    COREAI_OPT_VERSION,
    COREAI_TORCH_VERSION,
    DEFAULT_PRECISION,
    CoreAICompression,
    CoreAIExportRequest,
)

if TYPE_CHECKING:
    from packager.stages import BuildContext

# Bump when a Core AI verification record's content or computation changes.
# 2: the asset driven as Apple's engines drive it (input_ids, position_ids, a growing cache)
# 3: held to --coreai-check-minutes; task metrics say of how many rows they are (TaskMetrics.of_rows)
# 4: the eval rows in a second interpreter process beside the golden check when the build has two cores
# 5: the matrix products read from the IR (a note); eval answers checked from fp32's drafts; the budget counted
#    in predictions and tokens
COREAI_VERIFICATION_SCHEMA = 5
# Expected peaks (x fp32 size): an fp32 decoder copy and its exported graph, as for Core ML, whose ratio bounds
# it: Gemma 3 270M's int8 .aimodel measured 6.0 GB where its Core ML conversion took 7.2 GiB.
COREAI_ONLY = ("format", ("coreai", "all"))
COREAI_CONVERSION = HeavyStep("coreai conversion", 4.8, in_process=False, fixed=CHILD_LIBRARIES, only_when=COREAI_ONLY)
# Apple's interpreter held 1.43 GB on Gemma 3 270M (fp32 1.07 GB) with fp16 matrix products, 2.99 GB with the
# default fp32 ones (it casts the fp16 weights up in each call): the estimates are the latter's.
COREAI_RUN = HeavyStep("coreai interpreter", 2.8, only_when=COREAI_ONLY)
# The eval rows' interpreter in a child beside it (targets.ios.coreai_eval): measured 1.74 x fp32 above its libraries.
COREAI_EVAL = HeavyStep("coreai interpreter (eval rows)", 2.0, in_process=False, fixed=CHILD_LIBRARIES,
                        only_when=COREAI_ONLY)
COREAI_HEAVY_STEPS = (COREAI_CONVERSION, COREAI_RUN, COREAI_EVAL)


@dataclass
class CoreAIArtifact:
    """One converted .aimodel in the stage cache."""

    compression: CoreAICompression
    key: str
    asset: Path
    export: dict[str, Any]
    from_cache: bool
    digest: str  # sha256 over the asset's files (from the entry's checked manifest)

    @property
    def megabytes(self) -> float:
        return float(self.export["size_mb"])


def cached_aimodel(ctx: BuildContext, compression: CoreAICompression, max_context: int,
                   precision: str = DEFAULT_PRECISION, fp16_rewrites: bool = True) -> CoreAIArtifact:
    """Return the converted .aimodel for (checkpoint, compression, context, precision), converting it when not
    cached."""
    contract = ctx.contract
    metadata = {"edgepack.eos_ids": json.dumps(list(contract.eos_ids)),
                "edgepack.bos_id": "" if contract.bos_id is None else str(contract.bos_id)}
    request = CoreAIExportRequest(checkpoint=str(ctx.ckpt.folder), out_dir="", compression=compression.name,
                                  max_context=max_context,
                                  sequences=[s[:max_context] for s in ctx.reference.sequences],
                                  name=ctx.model_name, fp16_rewrites=fp16_rewrites, precision=precision,
                                  metadata=metadata)
    fields = {k: v for k, v in dataclasses.asdict(request).items() if k not in ("checkpoint", "out_dir")}
    key = options_digest("coreai", COREAI_EXPORT_SCHEMA, COREAI_TORCH_VERSION, COREAI_CORE_VERSION,
                         COREAI_OPT_VERSION, ctx.ckpt_digest, dataclasses.asdict(compression), fields)[:24]
    label = (f"convert Core AI ({compression.name}, {precision})"
             + ("" if fp16_rewrites else ", fp16 rewrites OFF"))

    def convert(tmp: Path) -> dict[str, Any]:
        ctx.reporter.say(f"converting to Core AI ({compression.name}, {precision}) with coreai-torch "
                         f"{COREAI_TORCH_VERSION} in a child process")
        what = f"Core AI conversion of {ctx.ckpt.folder} ({compression.name}, {precision})"
        with ctx.scheduler.step(COREAI_CONVERSION, what) as claim:
            return run_child("targets.ios.coreai_export", tmp, dataclasses.asdict(
                dataclasses.replace(request, out_dir=str(tmp))), what, claim)

    entry = ctx.stage_cache.entry(
        "coreai", key, label, convert,
        describe=lambda e: f"{e['asset']} {e['size_mb']:.1f} MB, peak RSS {e['peak_rss_mb']:.0f} MB")
    result = entry.value
    return CoreAIArtifact(compression, key, entry.path(result["asset"]), result, entry.from_cache,
                          entry.digest(result["asset"]))


def row_costs(ctx: BuildContext, baseline: list[str], drafts: bool) -> list[tuple[int, int]]:
    """Each eval row's predictions and tokens through the interpreter: its prompt and fp32's answer (or
    max_new_tokens) + an end, less the prompts' shared prefix, prefilled once (counted with the first row:
    AimodelDriver.reuses_prefix); one prediction for the prompt and one per further token, or with `drafts`
    (fp32's answer checked in the prompt's prediction) about two."""
    from targets.ios.verify import eval_prompt_ids, shared_prefix, text_encoder

    tokenizer, contract = ctx.hf_tokenizer, ctx.contract
    encode = text_encoder(tokenizer)
    prompts = eval_prompt_ids(contract, ctx.eval_rows, tokenizer)
    prefix = len(shared_prefix(prompts))
    costs = []
    for i, prompt in enumerate(prompts):
        answer = len(encode(baseline[i])) if baseline else contract.max_new_tokens
        calls = (2 if drafts and baseline else 1 + answer) + (1 if i == 0 and prefix else 0)
        costs.append((calls, len(prompt) - prefix + (prefix if i == 0 else 0) + answer + 1))
    return costs


def answered_apart(ctx: BuildContext, artifact: CoreAIArtifact, name: str, rows: list[EvalRow],
                   baseline: list[str] | None, max_context: int) -> Pending[coreai_eval.Answered]:
    """Start answering `rows` with the .aimodel in a second interpreter process (targets.ios.coreai_eval), in a
    thread of its own; discarding the Pending kills the child."""
    what = f"the eval rows of {name} in a second Core AI interpreter"

    def answer() -> coreai_eval.Answered:
        request = coreai_eval.request(artifact.asset, ctx.ckpt.folder, ctx.contract, rows, max_context, baseline)
        with ctx.scheduler.step(COREAI_EVAL, what) as claim, tempfile.TemporaryDirectory(
                prefix="edgepack-coreai-eval-") as folder:
            return coreai_eval.answered(run_child("targets.ios.coreai_eval", Path(folder), request, what, claim))

    pending: Pending[coreai_eval.Answered] = Pending(what, answer)
    pending.thread = threading.Thread(target=pending.run, name=what, daemon=True)
    pending.thread.start()
    return pending


def verified_aimodel(ctx: BuildContext, artifact: CoreAIArtifact, name: str, gate: Any,
                     minutes: float) -> VerificationResult:
    """Run the .aimodel in Apple's reference interpreter against the fp32 reference and, with an eval set, answer
    the rows through it under the contract, held to the task gate, as far as `minutes` for the interpreter go
    (coreai_verify.CheckBudget; cached per asset + golden set + gate + task + minutes). With two cores for this
    build, the rows are answered in a second interpreter process while the golden text runs here."""
    from targets.ios import coreai_verify
    from targets.ios import verify as coreml_check

    def verify() -> VerificationResult:
        reference, contract, tokenizer = ctx.reference, ctx.contract, ctx.hf_tokenizer
        baseline = ctx.baseline_answers if ctx.eval_rows else []
        max_context = int(artifact.export["max_context"])
        with ctx.scheduler.step(COREAI_RUN, f"running {name}"):
            driver = coreai_verify.AimodelDriver(artifact.asset)
            pending = None
            try:
                apart = bool(ctx.eval_rows) and compute_threads() >= 2
                budget = coreai_verify.CheckBudget.measured(driver, reference.sequences[0], minutes,
                                                            bool(ctx.eval_rows), apart)
                rows = (ctx.eval_rows[:budget.rows(row_costs(ctx, baseline, driver.checks_drafts))]
                        if ctx.eval_rows else [])
                row_baseline = baseline[:len(rows)] if baseline else None
                if apart and rows:
                    pending = answered_apart(ctx, artifact, name, rows, row_baseline, max_context)
                ctx.reporter.say(f"running {name} in Apple's Core AI reference interpreter (up to "
                                 f"{reference.positions} golden positions, prefill + decode; "
                                 f"{budget.seconds_per_call:.2f} s per call + {budget.seconds_per_token:.3f} s per "
                                 f"token, {minutes:g} min budget"
                                 + (f"; {len(rows)} eval rows in a second interpreter beside it)" if pending else ")"))
                result = coreai_verify.verify_aimodel(driver, name, artifact.compression.name, gate, reference,
                                                      list(contract.eos_ids), tokenizer, max_context, budget)
                if ctx.eval_rows:
                    partial = len(rows) < len(ctx.eval_rows)
                    if rows:
                        if pending is None:
                            ctx.reporter.say(f"answering {len(rows)} of {len(ctx.eval_rows)} eval rows with {name} "
                                             "(Core AI interpreter)")
                        metrics, failures, notes = pending.result() if pending is not None else (
                            coreml_check.answer_eval_set(driver, contract, rows, tokenizer, max_context, row_baseline))
                        result.failures += failures
                        result.notes += notes
                        of_rows = len(ctx.eval_rows) if partial else 0
                        ctx.attach_task(result, dataclasses.replace(metrics, of_rows=of_rows))
                    if partial:
                        result.notes.append(f"task: only the first {len(rows)} of {len(ctx.eval_rows)} eval rows were "
                                            f"answered by the .aimodel, to fit {budget.describe()}; the task gate "
                                            + ("holds them" if rows else "was not applied"))
                    elif pending is not None:
                        result.notes.append("task: the eval rows were answered in a second Apple interpreter process "
                                            "beside the golden check")
            except BaseException:
                if pending is not None:  # the build fails anyway: the child is not left running
                    pending.discard()
                raise
            finally:
                driver.close()
        return result

    task_key = ctx.task_key() if ctx.eval_rows else ""
    key = options_digest("verify-coreai", COREAI_VERIFICATION_SCHEMA, artifact.key, artifact.digest,
                         ctx.golden.digest_source(), dataclasses.asdict(gate), task_key, minutes)[:24]
    result = ctx.stage_cache.record(
        "verify", key, f"simulate {artifact.asset.name} (Core AI interpreter)", verify,
        encode=VerificationResult.as_dict, decode=VerificationResult.from_dict, binds=artifact.digest,
        describe=lambda r: r.verdict_line(gate, ctx.options.task_gate))
    # The verdict of a stored record is not taken on trust: the gates are applied again to its numbers.
    result.reapply_gates(gate, ctx.options.task_gate)
    return dataclasses.replace(result, artifact=name)
