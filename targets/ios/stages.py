"""Cached Core ML stages of a build: converted .mlpackage sets and their simulated verification records.

One conversion (a child process, targets.ios.convert) writes the fp16 package and the
requested compressed one from the same traced program. It is keyed by the checkpoint's digest, the
options and the golden text (the fp16 rewrites are sized on it), and written to a temporary folder
renamed into place only when complete.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packager.child_stage import run_child, staging
from packager.fingerprint import options_digest, save_record
from packager.verify.metrics import FidelityMetrics
from packager.verify.result import VerificationResult
from targets.ios.convert import COREMLTOOLS_VERSION, EXPORT_SCHEMA, ExportRequest

if TYPE_CHECKING:
    from packager.stages import BuildContext

# Bump when a simulated verification record's content or computation changes.
COREML_VERIFICATION_SCHEMA = 2


@dataclass
class CoreMLExport:
    """One conversion in the stage cache: its packages by compression name, and what it measured."""

    key: str
    folder: Path
    result: dict[str, Any]
    from_cache: bool

    def package(self, compression: str) -> Path:
        return self.folder / self.result["packages"][compression]["package"]

    def megabytes(self, compression: str) -> float:
        return float(self.result["packages"][compression]["size_mb"])


def export_request(ctx: BuildContext, compressions: list[str], max_context: int, fp16_rewrites: bool = True,
                   lm_head_chunk: int = 0) -> ExportRequest:
    contract = ctx.contract
    metadata = {"edgepack.eos_ids": json.dumps(list(contract.eos_ids)),
                "edgepack.bos_id": "" if contract.bos_id is None else str(contract.bos_id)}
    return ExportRequest(checkpoint=str(ctx.ckpt.folder), out_dir="", compressions=compressions,
                         max_context=max_context, sequences=[s[:max_context] for s in ctx.reference.sequences],
                         name=ctx.options.name or ctx.ckpt.name, fp16_rewrites=fp16_rewrites,
                         lm_head_chunk=lm_head_chunk, metadata=metadata)


def cached_export(ctx: BuildContext, request: ExportRequest) -> CoreMLExport:
    """Return the converted packages for this request, converting in a child process when not cached."""
    fields = {k: v for k, v in dataclasses.asdict(request).items() if k not in ("checkpoint", "out_dir")}
    key = options_digest("coreml", EXPORT_SCHEMA, COREMLTOOLS_VERSION, ctx.ckpt_digest, fields)[:24]
    folder = ctx.cache / "coreml" / key
    label = f"convert Core ML ({', '.join(request.compressions)})" + (
        "" if request.fp16_rewrites else ", fp16 rewrites OFF") + (
        f", lm_head split {request.lm_head_chunk}" if request.lm_head_chunk else "")
    record = folder / "export.json"
    if record.is_file():
        result = json.loads(record.read_text(encoding="utf-8"))
        ctx.reporter.stage(label, True, 0.0, ", ".join(p["package"] for p in result["packages"].values()))
        return CoreMLExport(key, folder, result, True)

    tmp = staging(folder)
    request = dataclasses.replace(request, out_dir=str(tmp))
    ctx.reporter.say(f"converting to Core ML with coremltools {COREMLTOOLS_VERSION} in a child process")
    start = time.perf_counter()
    result = run_child("targets.ios.convert", tmp, dataclasses.asdict(request),
                       f"Core ML conversion of {ctx.ckpt.folder}", folder)
    sizes = ", ".join(f"{name} {p['size_mb']:.0f} MB" for name, p in result["packages"].items())
    ctx.reporter.stage(label, False, time.perf_counter() - start,
                       f"{sizes}, peak RSS {result['peak_rss_mb']:.0f} MB")
    return CoreMLExport(key, folder, result, False)


def verified_package(ctx: BuildContext, export: CoreMLExport, compression: str, name: str, gate: Any,
                     max_positions: int | None = None, executed: bool = False) -> VerificationResult:
    """Simulate (or on macOS execute) one package of an export against the fp32 reference.

    Cached per export + golden set + gate + level.
    """
    from targets.ios.verify import verify_package

    digest = options_digest("verify-coreml", COREML_VERIFICATION_SCHEMA, export.key, compression,
                            ctx.golden.digest_source(), dataclasses.asdict(gate), max_positions, executed)[:24]
    record = ctx.cache / "verify" / f"{digest}.json"
    label = f"{'execute' if executed else 'simulate'} {export.result['packages'][compression]['package']}"
    if record.is_file():
        ctx.reporter.stage(label, True, 0.0)
        return dataclasses.replace(VerificationResult.from_dict(json.loads(record.read_text())), artifact=name)
    reference = ctx.reference
    start = time.perf_counter()
    ctx.reporter.say(f"simulating {name} in numpy ({reference.positions} golden positions, prefill + decode)")
    result = verify_package(export.package(compression), name, compression, gate, reference, list(ctx.contract.eos_ids),
                            ctx.hf_tokenizer, int(export.result["max_context"]),
                            export.result["sliding_window"] is not None, max_positions, executed)
    save_record(record, result.as_dict())
    m = result.metrics
    ctx.reporter.stage(label, False, time.perf_counter() - start,
                       f"top-1 {m.top1:.3f}, cosine {m.cosine:.4f}, {'pass' if result.passed else 'FAIL'}" if m else "")
    return result


def screened(ctx: BuildContext, compression: str) -> FidelityMetrics:
    """Predicted fidelity of a compression (eager PyTorch, no conversion), cached per checkpoint + golden set."""
    from targets.ios.convert import compression_named
    from targets.ios.verify import predict_fidelity

    digest = options_digest("screen-coreml", COREML_VERIFICATION_SCHEMA, EXPORT_SCHEMA, ctx.ckpt_digest,
                            dataclasses.asdict(compression_named(compression)), ctx.golden.digest_source())[:24]
    record = ctx.cache / "verify" / f"{digest}.json"
    label = f"screen Core ML {compression} (eager)"
    if record.is_file():
        ctx.reporter.stage(label, True, 0.0)
        return FidelityMetrics(**json.loads(record.read_text()))
    start = time.perf_counter()
    ctx.reporter.say(f"screening Core ML {compression}: transformers with its quantized weights on "
                     f"{ctx.reference.positions} golden positions")
    metrics = predict_fidelity(ctx.ckpt.folder, compression_named(compression), ctx.reference)
    save_record(record, metrics.as_dict())
    ctx.reporter.stage(label, False, time.perf_counter() - start, f"top-1 {metrics.top1:.3f}, KL {metrics.kl:.4f}")
    return metrics
