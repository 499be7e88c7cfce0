"""Cached Core ML stages of a build: converted .mlpackage sets and their simulated verification records.

One conversion (a child process, targets.ios.convert) writes the fp16 package and the
requested compressed one from the same traced program. It is keyed by the checkpoint's digest, the
options and the golden text (the fp16 rewrites are sized on it), and kept as a stage-cache entry
(packager.stage_cache): written whole or not at all, and checked against its recorded hashes on reuse.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packager.child_stage import run_child
from packager.fingerprint import options_digest
from packager.ladder import EAGER_SCREEN
from packager.scheduler import CHILD_LIBRARIES, HeavyStep
from packager.verify.child_verify import verified_in_child
from packager.verify.gates import gate_as_dict
from packager.verify.metrics import FidelityMetrics
from packager.verify.result import VerificationResult
from packager.verify.task_eval import TaskMetrics
from targets.ios.convert import COREMLTOOLS_VERSION, EXPORT_SCHEMA, ExportRequest, compression_named

if TYPE_CHECKING:
    from packager.adapter import AdapterSource
    from packager.stages import BuildContext, RungScreen

# Bump when a simulated verification record's content or computation changes.
COREML_VERIFICATION_SCHEMA = 6  # 5: with an eval set, the package's own answers and the task gate; 6: labels held
# to their token paths (LabelChoice), as EdgeModel does
# The heavy steps of an iOS build, with their expected peaks before one is measured (x fp32 size).
# The fp32 model and the decoder's rescaled weights, then the traced graph's MIL copies, then a compression of the
# reloaded fp16 package: measured 2.9 GB for Gemma 3 270M (1.0 GiB in fp32) and 8.4 GB for a Gemma 3 1B (3.7 GiB)
# with int8, 2026-12-05 (7.2 and 16.8 GB before coremltools' fp16 range test was answered without copies and the
# decoder stopped copying weights it does not rescale); 7.4 GB for the 1B with int4 once children gave freed memory
# back (packager.child_stage.CHILD_MALLOC, 2026-12-07): 1.7 above the libraries.
# A checkpoint above STREAM_ABOVE is converted in parts (targets.ios.convert_parts): measured 6.46 GiB for a Gemma 3
# 4B (14.5 GiB in fp32), 2026-12-07.
CONVERSION = HeavyStep("coreml conversion", 1.8, in_process=False, fixed=CHILD_LIBRARIES, streamed=0.38)
# numpy over the package's MIL program, in a child process (packager.verify.child_verify): the expanded weights in
# fp32 beside the program coremltools loaded. Measured 6.6 GB for the 1B's int4 package, 2026-12-07.
# Above 2^29 weight values the weights are held in fp16: measured for the 4B (2026-12-07) 9.75 GiB for its int4
# package once its int4 data went as it was expanded (14.7 before); its fp16 package's load 7.5 GiB once the loader
# stopped keeping the weight file mapped (14.4 before), 9.0 GiB after a prediction. 7.2 GiB of either is weights.
SIMULATION = HeavyStep("coreml simulation", 1.6, in_process=False, fixed=CHILD_LIBRARIES, streamed=0.62)
HEAVY_STEPS = (EAGER_SCREEN, CONVERSION, SIMULATION)


@dataclass(frozen=True)
class CoreMLPackage:
    """One package of a conversion: its folder name and what compressing it did."""

    package: str
    summary: str
    compressed_weights: dict[str, int]
    size_mb: float
    seconds: float


@dataclass(frozen=True)
class CoreMLConversion:
    """What a conversion child reported: its packages by compression name and what it measured.

    fp16_plan, ranges and proof are documents shipped as they are in edgepack.json (see targets.ios.model).
    """

    packages: dict[str, CoreMLPackage]
    fp16_plan: dict[str, Any]
    ranges: dict[str, Any]
    proof: dict[str, Any]
    max_context: int
    lm_head_chunk: int
    sliding_window: int | None
    metadata: dict[str, str]
    deployment_target: str
    seconds: float
    convert_seconds: float
    peak_rss_mb: float
    wall_seconds: float
    # A checkpoint converted in parts (targets.ios.convert_parts): each part's [first, end) layers, and the
    # conversion's peak (MiB) after each of its phases.
    parts: list[list[int]] | None = None
    peak_rss_mb_after: dict[str, float] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CoreMLConversion:
        packages = {name: CoreMLPackage(**p) for name, p in data["packages"].items()}
        return cls(**{**data, "packages": packages})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class CoreMLExport:
    """One conversion in the stage cache: its packages by compression name, and what it measured."""

    key: str
    folder: Path
    conversion: CoreMLConversion
    from_cache: bool
    # sha256 over each package's files (from the entry's checked manifest), by compression name.
    package_digests: dict[str, str]

    def package_name(self, compression: str) -> str:
        return self.conversion.packages[compression].package

    def package(self, compression: str) -> Path:
        return self.folder / self.package_name(compression)

    def megabytes(self, compression: str) -> float:
        return self.conversion.packages[compression].size_mb


def export_request(ctx: BuildContext, compressions: list[str], max_context: int, fp16_rewrites: bool = True,
                   lm_head_chunk: int = 0, fp16_plan: dict[str, Any] | None = None,
                   importance_of: list[BuildContext] | None = None) -> ExportRequest:
    """The conversion of ctx's checkpoint; a fleet's specialist (targets.ios.fleet) passes the fleet's `fp16_plan`
    and `importance_of`, every specialist (quantize with column weights averaged over their activations), so its
    base is stored as in the others."""
    contract = ctx.contract
    metadata = {"edgepack.eos_ids": json.dumps(list(contract.eos_ids)),
                "edgepack.bos_id": "" if contract.bos_id is None else str(contract.bos_id)}
    return ExportRequest(checkpoint=str(ctx.ckpt.folder), out_dir="", compressions=compressions,
                         max_context=max_context, sequences=[s[:max_context] for s in ctx.reference.sequences],
                         name=ctx.model_name, fp16_rewrites=fp16_rewrites,
                         lm_head_chunk=lm_head_chunk, metadata=metadata,
                         adapter=dataclasses.asdict(adapter_source(ctx)) if any(
                             compression_named(c).adapter for c in compressions) else None,
                         fp16_plan=fp16_plan, importance_from={c.ckpt_digest: str(c.ckpt.folder) for c in importance_of}
                         if importance_of else None)


def adapter_source(ctx: BuildContext) -> AdapterSource:
    """The adapter a compression that keeps it apart reads; a whole-model input has none (exit 2)."""
    from packager.adapter import AdapterSource

    return AdapterSource.required(ctx.ckpt, "--compression int4-adapter", "--compression int4")


def cached_export(ctx: BuildContext, request: ExportRequest) -> CoreMLExport:
    """Return the converted packages for this request, converting in a child process when not cached."""
    # A fleet's shared plan and base calibration only when given: a single model's conversions keep their keys.
    fields = {k: v for k, v in dataclasses.asdict(request).items()
              if k not in ("checkpoint", "out_dir", "adapter", "importance_from")
              and not (k == "fp16_plan" and v is None)}
    # An adapter kept apart, and a base whose calibration weights the quantizer, by their content, not their place.
    fields["adapter"] = adapter_source(ctx).files_sha256 if request.adapter else None
    if request.importance_from:
        fields["importance_from"] = sorted(request.importance_from)
    key = options_digest("coreml", EXPORT_SCHEMA, COREMLTOOLS_VERSION, ctx.ckpt_digest, fields)[:24]
    label = f"convert Core ML ({', '.join(request.compressions)})" + (
        "" if request.fp16_rewrites else ", fp16 rewrites OFF") + (
        f", lm_head split {request.lm_head_chunk}" if request.lm_head_chunk else "")

    def convert(tmp: Path) -> CoreMLConversion:
        ctx.reporter.say(f"converting to Core ML with coremltools {COREMLTOOLS_VERSION} in a child process")
        request_here = dataclasses.replace(request, out_dir=str(tmp))
        what = f"Core ML conversion of {ctx.ckpt.folder}"
        with ctx.scheduler.step(CONVERSION, what) as claim:
            return CoreMLConversion.from_dict(run_child("targets.ios.convert", tmp, dataclasses.asdict(request_here),
                                                        what, claim))

    def describe(conversion: CoreMLConversion) -> str:
        sizes = ", ".join(f"{name} {p.size_mb:.0f} MB" for name, p in conversion.packages.items())
        return f"{sizes}, peak RSS {conversion.peak_rss_mb:.0f} MB"

    entry = ctx.stage_cache.entry("coreml", key, label, convert, encode=CoreMLConversion.as_dict,
                                  decode=CoreMLConversion.from_dict, describe=describe)
    digests = {c: entry.digest(p.package) for c, p in entry.value.packages.items()}
    return CoreMLExport(key, entry.folder, entry.value, entry.from_cache, digests)


def verified_package(ctx: BuildContext, export: CoreMLExport, compression: str, name: str, gate: Any,
                     max_positions: int | None = None, executed: bool = False,
                     function: str | None = None) -> VerificationResult:
    """Simulate (or on macOS execute) one package of an export against the fp32 reference and, with an eval
    set, answer every row through it under the contract, held to the task gate like every other runtime;
    with `function`, that function of a multifunction package (a fleet's, targets.ios.fleet).

    Cached per package content + function + golden set + gate + level + task, bound to the package's sha256.
    """
    from targets.ios.mil_interpreter import SIMULATOR_VERSION

    package = export.package_digests[compression]
    task_key = ctx.task_key() if ctx.eval_rows else ""  # the eval set and contract the answers depend on
    key = options_digest("verify-coreml", COREML_VERIFICATION_SCHEMA, SIMULATOR_VERSION, export.key, compression,
                         package, ctx.golden.digest_source(), dataclasses.asdict(gate), max_positions, executed,
                         task_key, *([function] if function else []))[:24]
    label = f"{'execute' if executed else 'simulate'} {export.package_name(compression)}" + (
        f" function {function}" if function else "")

    def verify() -> VerificationResult:
        rows = f", then answering {len(ctx.eval_rows)} eval rows" if ctx.eval_rows else ""
        ctx.reporter.say(f"{'executing' if executed else 'simulating'} {name} in a child process "
                         f"({ctx.reference.positions} golden positions, prefill + decode{rows})")
        request = {"package": str(export.package(compression)), "artifact": name, "quant": compression,
                   "gate": gate_as_dict(gate), "max_context": export.conversion.max_context,
                   "sliding": export.conversion.sliding_window is not None, "max_positions": max_positions,
                   "executed": executed, "function": function}
        return verified_in_child(ctx, SIMULATION, "targets.ios.verify", request, f"simulating {name}")

    result = ctx.stage_cache.record("verify", key, label, verify, encode=VerificationResult.as_dict,
                                    decode=VerificationResult.from_dict, binds=package,
                                    describe=lambda r: r.verdict_line(gate, ctx.options.task_gate))
    # The verdict of a stored record is not taken on trust: the gates are applied again to its numbers.
    result.reapply_gates(gate, ctx.options.task_gate)
    return dataclasses.replace(result, artifact=name)


def rung_screen(ctx: BuildContext, compression: str) -> RungScreen:
    """How a Core ML compression is screened: transformers holding the weights it would store."""
    from packager.stages import RungScreen
    from targets.ios.verify import eager_compressed_model

    chosen = compression_named(compression)
    stores = dataclasses.asdict(chosen)
    if chosen.adapter:
        stores["adapter"] = adapter_source(ctx).files_sha256
    fidelity_key = options_digest("screen-coreml", COREML_VERIFICATION_SCHEMA, EXPORT_SCHEMA, ctx.ckpt_digest,
                                  stores, ctx.golden.digest_source())[:24]
    return RungScreen("screen-coreml-task", COREML_VERIFICATION_SCHEMA, {"export": EXPORT_SCHEMA, **stores},
                      fidelity_key, f"screen Core ML {compression} (eager)",
                      f"screen Core ML {compression} on the task (eager)",
                      lambda: eager_compressed_model(ctx.ckpt.folder, chosen,
                                                     adapter_source(ctx) if chosen.adapter else None),
                      lambda m: f"top-1 {m.top1:.3f}, KL {m.kl:.4f}")


def screened(ctx: BuildContext, compression: str,
             task_if: Callable[[FidelityMetrics], bool] | None = None) -> FidelityMetrics:
    """Predicted fidelity of a compression (eager PyTorch, no conversion), cached per checkpoint + golden set;
    with `task_if`, its task screen in the same step when that holds (packager.stages.BuildContext.screened)."""
    return ctx.screened(rung_screen(ctx, compression), task_if)


def screened_task(ctx: BuildContext, compression: str) -> TaskMetrics:
    """The eval set answered by a compression's eager model (no conversion), against the fp32 baseline;
    cached per checkpoint + compression + task.
    Asked when the screen's verdict needs it (packager.ladder.task_screened)."""
    return ctx.screened_task(rung_screen(ctx, compression))
