"""iOS: a stateful Core ML package (ML Program, iOS 18), the Swift bridge EdgeModel, a SwiftUI sample app.

The package is converted by targets.ios.convert (a cached stage) with exact fp16
rewrites sized from measured activation ranges, and verified at the `simulated` level: its own MIL
program runs in numpy (targets.ios.mil_interpreter) through a prefill and decode steps and is
compared with transformers in fp32. No Core ML runtime exists off Apple platforms, so nothing here
is `executed`; the fp16 conversion is verified beside the shipped (compressed) package because a
compressed package can only be as good as the program it was compressed from.

`--ios-format coreai` (or `all`) ships a Core AI .aimodel for iOS 27+ instead of (beside) the package:
converted by targets.ios.coreai_export from the same decoder, and run `simulated` in Apple's reference
interpreter (coreai-core) by targets.ios.coreai_verify. Beside it the build writes the Core AI model-bundle
files (targets.ios.coreai_bundle), and the bridge gains its Core AI path: EdgeModels.load runs the .aimodel
with Apple's CoreAILanguageModel through a Foundation Models LanguageModelSession on iOS 27 / macOS 27, the
Core ML package otherwise (mobile/ios/README.md). A Core AI-only bundle gets the bridge and app too.
"""

from __future__ import annotations

import functools
import re
import shutil
from pathlib import Path
from typing import Any, ClassVar

from packager import __version__
from packager.adapter import AdapterSource
from packager.architectures import ArchitectureSpec
from packager.beside import Beside, beside
from packager.checkpoint import Checkpoint
from packager.codecheck import check_generated_files, remembered_checks
from packager.devices import DeviceArtifact, DeviceProfile, option_artifacts
from packager.errors import BadInputError
from packager.escaping import slug
from packager.fleet import Fleet, build_merged_per_specialist, tokenizers_differ
from packager.ladder import first_passing_rung, rungs_in_order, screen_verdict, task_screened, walked
from packager.resources import copy_mobile_files
from packager.scheduler import HeavyStep
from packager.stage_cache import place_artifact
from packager.stages import BuildContext
from packager.target import HostCheckJob, ScaffoldCheck, TargetOption, TargetResult
from packager.target_bundle import finish_bundle
from packager.templating import render_tree
from packager.verify.gates import EIGHT_BIT, LOW_BIT, Gate, TopOneGate
from packager.verify.result import VerificationResult
from targets.ios.convert import (
    ADAPTER_LADDER,
    ANE_MAX_DIM,
    COMPRESSIONS,
    COREMLTOOLS_VERSION,
    DEPLOYMENT_TARGET,
    INT4_LADDER,
    compression_named,
)
from targets.ios.coreai_bundle import model_bundle_metadata, write_model_bundle
from targets.ios.coreai_export import (
    COREAI_COMPRESSIONS,
    COREAI_CORE_VERSION,
    COREAI_LADDER,
    COREAI_PACKAGES,
    COREAI_TORCH_VERSION,
    DEFAULT_PRECISION,
    FORMATS,
    INPUTS,
    OUTPUT,
    PRECISIONS,
    STATES,
    coreai_compression_named,
)
from targets.ios.coreai_stages import COREAI_HEAVY_STEPS, CoreAIArtifact, cached_aimodel, verified_aimodel
from targets.ios.coreai_verify import CHECK_MINUTES
from targets.ios.fleet import SHARED_COMPRESSION, FleetPackage, fleet_package
from targets.ios.layouts import COREML_LAYOUTS, coreml_layout
from targets.ios.stages import (
    HEAVY_STEPS,
    CoreMLExport,
    adapter_source,
    cached_export,
    export_request,
    screened,
    screened_task,
    verified_package,
)
from targets.ios.swift_check import check_swift_files
from targets.ios.verify import coreml_runtime_available

APP_DIR = "app"
BRIDGE_DIR = "EdgeModel"
FP16_GATE = TopOneGate("fp16 Core ML vs fp32 (simulated)", 0.98)
# An .aimodel meets the gate of its Core ML counterpart: fp16 top-1 >= 0.98, 8-bit the 8-bit class gate; a 4-bit
# one only the 3-6-bit class gate (not yet Core ML's "within 0.02 of llama.cpp's Q4_K_M").
COREAI_GATES: dict[str, Gate | TopOneGate] = {
    "none": TopOneGate("fp16 Core AI vs fp32 (simulated)", 0.98), "int8": EIGHT_BIT, "int4": LOW_BIT}
# A compressed package may be this much below llama.cpp's Q4_K_M of the same model on the same positions.
Q4_K_M_MARGIN = 0.02
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
SWIFT_TRANSFORMERS_VERSION = "1.1.2"
# Apple's coreai-models Swift package (product CoreAILM) that the bridge's Core AI path links.
COREAI_MODELS_VERSION = "1.0.0"
COMPUTE_UNITS = "cpuAndNeuralEngine"
# What `build --device` chooses from, most faithful first (palettize4 is chosen by flag only).
DEVICE_LADDER = ("none", "int8", "int4-mixed", "int4")


def minutes_problem(value: Any) -> str | None:
    """What is wrong with a --coreai-check-minutes value (None: a positive, finite number of minutes)."""
    try:
        minutes = float(value)
    except (TypeError, ValueError):
        minutes = float("nan")
    if isinstance(value, bool) or not 0 < minutes < float("inf"):
        return f"not a positive number of minutes for Apple's Core AI interpreter (e.g. {CHECK_MINUTES:g})"
    return None


def bundle_identifier(name: str) -> str:
    """A valid, unique-per-model bundle identifier: org.edgepack.sample.<slug without dashes>."""
    ident = re.sub(r"[^a-z0-9]+", "", slug(name))
    if not ident or ident[0].isdigit():
        ident = "m" + ident
    return f"org.edgepack.sample.{ident}"


def copy_bridge(dest: Path, core_ai: bool = False) -> list[Path]:
    """Copy the Swift package (mobile/ios: Package.swift + Sources/EdgeModel) into the bundle.

    With `core_ai` its manifest is mobile/ios/CoreAI/Package.swift, which adds Apple's coreai-models
    (CoreAILM) and so declares iOS 27 / macOS 27, as SwiftPM requires of a package depending on it.
    """
    manifest = "CoreAI/Package.swift" if core_ai else "Package.swift"
    copied = copy_mobile_files("ios", (manifest, "Sources/EdgeModel/*.swift"), dest)
    if not core_ai:
        return copied
    placed = (dest / manifest).replace(dest / "Package.swift")
    (dest / manifest).parent.rmdir()
    return sorted(placed if path == dest / manifest else path for path in copied)


class IosTarget:
    """model-<compression>.mlpackage + tokenizer + edgepack.json + the EdgeModel Swift package + a SwiftUI app."""

    name: ClassVar[str] = "ios"
    title: ClassVar[str] = "iOS app: stateful Core ML program (iOS 18), Swift bridge over Core ML + swift-transformers"
    runtime: ClassVar[str] = f"Core ML (iOS 18 ML Program, coremltools {COREMLTOOLS_VERSION})"
    status: ClassVar[str] = "ready"
    # Ships Core ML packages; the Q4_K_M GGUF it gates against is a baseline, named where it is used.
    default_quant: ClassVar[str | None] = None
    # Seconds of a cold build of Gemma 3 270M with the example's eval set (measured 2026-12);
    # most of it: screens, Core ML conversion and two numpy simulations.
    expected_seconds: ClassVar[float] = 1000
    # What it may run that holds much memory (packager.memory_plan adds up a build's need before it starts).
    heavy_steps: ClassVar[tuple[HeavyStep, ...]] = HEAVY_STEPS + COREAI_HEAVY_STEPS
    # Walked smallest first when no recipe/compression is given; `edgepack doctor` lists it.
    default_ladder: ClassVar[tuple[str, ...]] = INT4_LADDER
    # RAM budgets: the share of physical memory a model can count on there (packager.devices).
    devices: ClassVar[tuple[DeviceProfile, ...]] = (
        DeviceProfile("iphone-15-pro", "iPhone 15 Pro", 8, 0.40, "ios", "Core ML (ANE/GPU/CPU)",
                      "iOS terminates apps long before RAM is full; the increased-memory entitlement raises the "
                      "limit"),
        DeviceProfile("m2-macbook-air", "M2 MacBook Air (8 GB)", 8, 0.50, "ios", "Core ML / llama.cpp Metal"),
    )
    ci_host_check: ClassVar[HostCheckJob] = HostCheckJob(
        job_id="coreml", runner="macos-15", title="ios in the Core ML runtime (macOS)",
        purpose="runs its package in the real Core ML runtime (the `executed` level, which a Linux host "
                "cannot reach), gated against the fp32 reference like the simulated check",
        step="Build ios and run its package in Core ML")
    options: ClassVar[tuple[TargetOption, ...]] = (
        TargetOption("compression", "--compression", "ios_compression",
                     "Core ML weight compression for ios (default int4: 4-bit linears, 8-bit embedding/lm_head; "
                     "when int4 fails its gate, int4-mixed, then int8, ship instead; for a LoRA adapter input "
                     "int4-adapter, the base at 4 bits with the adapter applied apart in fp16, then int8).",
                     default="int4", choices=COMPRESSIONS),
        TargetOption("ane_head", "--ane-head", "ios_ane_head",
                     "Also build a Neural-Engine-friendly package with the lm_head split into 16,384-row chunks.",
                     default=False, is_flag=True),
        # Prefixed like --android-runtime: every target's flags share one namespace (packager.target.option_table).
        TargetOption("format", "--ios-format", "ios_format",
                     "iOS model format to ship: coreml (.mlpackage, iOS 18+), coreai (.aimodel, iOS 27+) or all "
                     "(both side by side). An .aimodel is verified in Apple's reference interpreter (Gemma 3 270M "
                     "on a 2-core x86 host: about 2 s per prediction + 0.02 s per token; 5 s per token with "
                     "--coreai-precision fp16): it checks what fits --coreai-check-minutes.",
                     default="coreml", choices=(*FORMATS, "all")),
        TargetOption("coreai_compression", "--coreai-compression", "ios_coreai_compression",
                     "Core AI weight compression for ios (default auto: int8 linears, or fp16 when int8 fails its "
                     "gate).", default="auto", choices=("auto", *COREAI_COMPRESSIONS)),
        TargetOption("coreai_precision", "--coreai-precision", "ios_coreai_precision",
                     "Core AI arithmetic for ios: mixed (default; fp16 weights, activations and caches, matrix "
                     "products in fp32) or fp16 (matrix products too, as Apple's presets; Apple's interpreter here "
                     "rounds every partial sum of those to fp16, 12-18x slower to check and less faithful).",
                     default=DEFAULT_PRECISION, choices=tuple(PRECISIONS)),
        TargetOption("coreai_check_minutes", "--coreai-check-minutes", "ios_coreai_check_minutes",
                     "Minutes Apple's Core AI interpreter gets to check each .aimodel (default "
                     f"{CHECK_MINUTES:g}): the golden positions and eval rows beyond what fits are not run, and the "
                     "report says how many were.", default=CHECK_MINUTES, problem=minutes_problem),
        # Off only to prove the check catches an unsafe fp16 conversion (Python API and tests; no flag, no key).
        TargetOption("fp16_rewrites", default=True),
    )

    def supports(self, spec: ArchitectureSpec) -> bool:
        """Every architecture with a Core ML layout (targets.ios.layouts)."""
        return spec.name in COREML_LAYOUTS

    def device_artifacts(self, ckpt: Checkpoint) -> list[DeviceArtifact]:
        """The Core ML packages `build --device` may choose for an iPhone, most faithful first, priced per tensor."""
        return option_artifacts(ckpt, "Core ML", "compression",
                                {name: compression_named(name).bits for name in DEVICE_LADDER})

    def doctor_notes(self, config: dict[str, Any]) -> list[str]:
        """The Neural Engine's dimension limit against this vocabulary (said by `edgepack doctor`)."""
        vocab = int(config["vocab_size"])
        if vocab > ANE_MAX_DIM:
            return [f"vocab {vocab:,} > {ANE_MAX_DIM:,}: the lm_head must be split ({-(-vocab // ANE_MAX_DIM)} "
                    "chunks, --ane-head) to be eligible for the Neural Engine"]
        return [f"vocab {vocab:,} fits the Neural Engine's {ANE_MAX_DIM:,} limit"]

    def build(self, ctx: BuildContext, out_dir: Path) -> TargetResult:
        spec = ctx.ckpt.spec
        coreml_layout(spec)  # UnsupportedError naming the supported architectures
        options = ctx.options.for_target(self)
        ios_format = options.get("format")
        if ios_format not in (*FORMATS, "all"):
            raise BadInputError(f"--ios-format {ios_format}: unknown; ios ships {', '.join(FORMATS)} or all.")
        formats = FORMATS if ios_format == "all" else (ios_format,)
        if "coreml" in formats and options.get("compression") not in COMPRESSIONS:
            raise BadInputError(f"--compression {options.get('compression')}: unknown; choose one of "
                                f"{', '.join(COMPRESSIONS)}.")
        if "coreml" in formats and compression_named(options.get("compression")).adapter:
            adapter_source(ctx)  # exit 2 before any work when the input has no adapter to keep apart
        self._check_tokenizer(ctx)
        coreai = self._build_coreai(ctx, out_dir) if "coreai" in formats else None
        if "coreml" not in formats:
            assert coreai is not None
            artifact, verification, notes, section = coreai
            for name in TOKENIZER_FILES:
                place_artifact(ctx.ckpt.folder / name, out_dir / name)
            context = self._context(ctx, section["name"], [], section["max_context"], section["sliding_window"] or 0,
                                    [verification], section)
            bridge, checks = self._scaffold(out_dir, context)
            notes.append("iOS (Core AI): a Core AI-only bundle's app and bridge need iOS 27 / macOS 27 and Apple's "
                         "CoreAILM package; iOS 18-26 need --ios-format all or coreml.")
            sections = {"model": section, "runner": self._runner(ctx, section["max_context"]),
                        "tokenizer": list(TOKENIZER_FILES), "contract": ctx.contract.as_dict()}
            return finish_bundle(out_dir, self, sections, [verification], checks, notes=notes,
                                 extra={"coreai_compression": artifact.compression.name,
                                        "coreai_export": artifact.export,
                                        "bridge_files": [p.relative_to(out_dir).as_posix() for p in bridge]})
        return self._build_coreml(ctx, out_dir, coreai)

    @staticmethod
    def _check_tokenizer(ctx: BuildContext) -> None:
        missing = [f for f in TOKENIZER_FILES if not (ctx.ckpt.folder / f).is_file()]
        if missing:
            raise BadInputError(f"{ctx.ckpt.folder}: no {', '.join(missing)}; swift-transformers' AutoTokenizer "
                                "loads the model folder's tokenizer.json and tokenizer_config.json.")

    def build_fleet(self, fleet: Fleet, out_dir: Path) -> TargetResult:
        """One multifunction package: a function per specialist (its adapter apart in fp16) over one 4-bit base
        stored once (targets.ios.fleet), each function simulated against its specialist's fp32 merged model under
        that specialist's gates. Where that form cannot apply (options asking for another format, specialists
        with different tokenizers, a function failing its gate), each specialist ships merged in its own folder,
        as before, and the report says why."""
        reason = self._shared_base_refused(fleet)
        if reason is None:
            shared, gate_notes = self._fleet_package(fleet)
            if not shared.failed or fleet.base.options.no_gate:
                return self._fleet_bundle(fleet, shared, gate_notes, out_dir)
            reason = "in the shared package " + "; ".join(
                f"{f.name} failed its gate ({'; '.join(x for v in f.verifications for x in v.failures)})"
                for f in shared.failed)
        return build_merged_per_specialist(self, fleet, out_dir, self.build,
                                           reason=f"one package sharing the base was not shipped: {reason}")

    def _shared_base_refused(self, fleet: Fleet) -> str | None:
        """Why this build's options or specialists leave no shared-base package, or None."""
        options = fleet.base.options.for_target(self)
        compression = options.get("compression")
        if compression not in ("int4", SHARED_COMPRESSION):
            return (f"--compression {compression} merges each adapter into its base; the shared base keeps each "
                    f"adapter apart ({SHARED_COMPRESSION}, the default for a fleet)")
        if options.get("format") != "coreml":
            return f"--ios-format {options.get('format')}: Core AI .aimodel files have no shared-weights form here"
        if options.get("ane_head"):
            return "--ane-head: the Neural Engine variant is built per model, not for a fleet"
        for specialist in fleet.specialists:
            self._check_tokenizer(specialist.ctx)
        return tokenizers_differ(fleet, TOKENIZER_FILES)

    def _fleet_package(self, fleet: Fleet) -> tuple[FleetPackage, dict[str, list[str]]]:
        """The shared package, converted for the longest context any specialist needs, and each specialist's
        gate notes (its Q4_K_M baseline, when that is its gate)."""
        gate_notes: dict[str, list[str]] = {s.name: [] for s in fleet.specialists}
        max_context = max(s.ctx.context_length for s in fleet.specialists)
        shared = fleet_package(
            fleet, max_context, fleet.base.options.for_target(self).get("fp16_rewrites"),
            lambda specialist: self._gate(specialist.ctx, SHARED_COMPRESSION, gate_notes[specialist.name]),
            lambda package, how: f"{self.name}/{package} ({how})",
            executed=coreml_runtime_available())  # macOS: each function also runs in Core ML itself
        return shared, gate_notes

    def _fleet_bundle(self, fleet: Fleet, shared: FleetPackage, gate_notes: dict[str, list[str]],
                      out_dir: Path) -> TargetResult:
        """Write the fleet's bundle: the package, the tokenizer, edgepack.json listing each specialist's function
        and contract, the bridge (EdgeFleet) and the app with its specialist picker."""
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(shared.package, out_dir / shared.package.name, copy_function=_place_artifact)
        first = fleet.specialists[0].ctx
        for name in TOKENIZER_FILES:
            place_artifact(first.ckpt.folder / name, out_dir / name)
        conversion = shared.functions[0].export.conversion
        max_context = conversion.max_context
        model_name = fleet.base.model_name
        shipped = [{"package": shared.package.name, "compression": SHARED_COMPRESSION,
                    "summary": compression_named(SHARED_COMPRESSION).summary,
                    "lm_head_chunk": conversion.lm_head_chunk, "neural_engine_variant": False,
                    "functions": [f.name for f in shared.functions]}]
        verifications = [v for f in shared.functions for v in f.verifications]
        notes = [shared.size_note()]
        for function in shared.functions:
            notes += [f"{function.name}: {note}"
                      for note in self._fp16_notes(function.export) + gate_notes[function.name]]
        counts = ", ".join(f"{s.name} {len(s.ctx.eval_rows)}" for s in fleet.specialists if s.ctx.eval_rows)
        notes += self._simulated_notes(f"all of its specialist's eval rows ({counts})" if counts else None)
        notes.append(f"iOS fleet: each specialist is the function of {shared.package.name} named after it, loaded "
                     "with MLModelConfiguration.functionName (EdgeFleet), and was simulated as that function "
                     "against its own fp32 merged model. Whether Core ML shares the base's weights in memory between "
                     "functions loaded at once was not measured: no device ran.")
        context = self._context(first, model_name, shipped, max_context, conversion.sliding_window or 0,
                                verifications, None, specialists=[
                                    {"name": s.name, **_first_row(s.ctx)} for s in fleet.specialists])
        bridge, checks = self._scaffold(out_dir, context)
        sections = {
            "model": {"name": model_name, "packages": shipped, "max_context": max_context,
                      "sliding_window": conversion.sliding_window, "deployment_target": DEPLOYMENT_TARGET,
                      "fp16_rewrites": shared.fp16_plan, "shared_base": shared.assembly},
            "specialists": [{"name": f.name, "function": f.name, "contract": s.ctx.contract.as_dict(),
                             "exactness_proof": f.export.conversion.proof}
                            for f, s in zip(shared.functions, fleet.specialists, strict=True)],
            "runner": self._runner(fleet.base, max_context),
            "tokenizer": list(TOKENIZER_FILES),
            "contract": fleet.base.contract.as_dict(),
        }
        served = {v.artifact: f.name for f in shared.functions for v in f.verifications}
        return finish_bundle(out_dir, self, sections, verifications, checks, notes=notes,
                             extra={"compression": SHARED_COMPRESSION, "fleet_package": shared.assembly,
                                    "bridge_files": [p.relative_to(out_dir).as_posix() for p in bridge]},
                             specialists=served)

    def _build_coreai(self, ctx: BuildContext, out_dir: Path) -> tuple[
            CoreAIArtifact, VerificationResult, list[str], dict[str, Any]]:
        """Convert and verify the .aimodel (the requested compression, or the ladder), place it in out_dir."""
        COREAI_PACKAGES.require()
        options = ctx.options.for_target(self)
        requested = options.get("coreai_compression")
        ladder = (walked(COREAI_LADDER, ctx.options.no_gate) if requested == "auto"
                  else (coreai_compression_named(requested).name,))
        max_context = ctx.context_length
        minutes = float(options.get("coreai_check_minutes"))  # refused before the build when not a number
        precision = str(options.get("coreai_precision"))

        def build(name: str) -> tuple[CoreAIArtifact, VerificationResult]:
            # No eager screen: a conversion of a small model takes seconds, and the first rung is 8-bit.
            compression = coreai_compression_named(name)
            artifact = cached_aimodel(ctx, compression, max_context, precision, options.get("fp16_rewrites"))
            return artifact, verified_aimodel(ctx, artifact, f"{self.name}/{compression.asset_name}",
                                              COREAI_GATES[compression.name], minutes)

        artifact, verification, notes = first_passing_rung(ladder, "Core AI compression", build,
                                                           lambda a: a.megabytes, requested == "auto")
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(artifact.asset, out_dir / artifact.asset.name, copy_function=_place_artifact)
        write_model_bundle(out_dir, model_bundle_metadata(
            ctx.model_name, artifact.asset.name, int(ctx.ckpt.config["vocab_size"]),
            artifact.export["max_context"], artifact.compression.name),
            [ctx.ckpt.folder / name for name in TOKENIZER_FILES])
        notes.append(f"iOS (Core AI): {artifact.asset.name} ran `simulated` in Apple's Core AI reference interpreter "
                     f"(coreai-core {COREAI_CORE_VERSION}) on this host's CPU, not on an iPhone: no Neural Engine, GPU "
                     "or iOS 27 runtime ran. It needs iOS 27 / macOS 27; iOS 18-26 need the Core ML package.")
        notes.append("iOS (Core AI): the .aimodel has the interface of Apple's coreai-models language-model engines "
                     "(input_ids, position_ids; keyCache/valueCache growing with the context; logits), and the "
                     "interpreter drove it that way; the bridge's Core AI path (Apple's CoreAILanguageModel through a "
                     "Foundation Models LanguageModelSession) was parsed with tree-sitter and its API names checked "
                     "against Apple's documentation, but no Swift compiler, Core AI runtime or Apple engine ran it.")
        if precision != "fp16":
            notes.append("iOS (Core AI): the .aimodel's matrix products are computed in fp32 from fp16 weights "
                         "(--coreai-precision mixed): Apple's reference interpreter rounds every partial sum of an "
                         "fp16 product to fp16 (bundled fine-tune: top-1 0.970, 0.994 with fp32 products). In Core "
                         "ML, fp32 operations run on the GPU or CPU, not the Neural Engine (coremltools' "
                         "typed-execution guide); where iOS 27's Core AI runs them was not measured here (no "
                         "device). --coreai-precision fp16 ships Apple's presets' all-fp16 arithmetic.")
        export = artifact.export
        section = {"name": ctx.model_name, "format": "aimodel", "asset": artifact.asset.name,
                   "compression": artifact.compression.name, "summary": artifact.compression.summary,
                   "precision": export["precision"], "arithmetic": PRECISIONS[export["precision"]],
                   "max_context": export["max_context"], "sliding_window": export["sliding_window"],
                   "minimum_os": f"iOS {export['minimum_os']} / macOS {export['minimum_os']}",
                   "runtime": f"Core AI (coreai-torch {COREAI_TORCH_VERSION})", "verification": verification.level,
                   "inputs": list(INPUTS), "states": list(STATES), "outputs": [OUTPUT],
                   "fp16_rewrites": export["fp16_plan"], "exactness_proof": export["proof"],
                   "metadata": export["metadata"]}
        return artifact, verification, notes, section

    def _runner(self, ctx: BuildContext, max_context: int) -> dict[str, Any]:
        """How the bridge drives either format: BOS, stop ids, context, greedy."""
        return {"add_bos": ctx.contract.add_bos and ctx.contract.bos_id is not None,
                "bos_id": ctx.contract.bos_id, "eos_ids": list(ctx.contract.eos_ids),
                "max_context": max_context, "compute_units": COMPUTE_UNITS, "temperature": 0.0}

    def _build_coreml(self, ctx: BuildContext, out_dir: Path, coreai: tuple[
            CoreAIArtifact, VerificationResult, list[str], dict[str, Any]] | None) -> TargetResult:
        options = ctx.options.for_target(self)
        compression = options.get("compression")
        max_context = ctx.context_length

        rewrites = options.get("fp16_rewrites")
        notes: list[str] = []
        with beside(ctx.scheduler.cancel) as work:
            if compression == "none":
                export = cached_export(ctx, export_request(ctx, ["none"], max_context, fp16_rewrites=rewrites))
                ship_gate, compressed, fp16 = FP16_GATE, None, self._fp16_verified(ctx, export)
            else:
                ladder = walked(self._int4_ladder(ctx), ctx.options.no_gate) if compression == "int4" \
                    else (compression,)
                export, compression, compressed, ship_gate, fp16 = self._first_passing(
                    ctx, ladder, max_context, rewrites, notes, work)
        if compression == "none":
            fp16.artifact = f"{self.name}/{export.package_name('none')}"
        verifications = [fp16] + ([compressed] if compressed else [])
        notes = self._fp16_notes(export) + notes
        shipped = [self._ship(export, compression, out_dir)]
        vocab = int(ctx.ckpt.config["vocab_size"])
        if options.get("ane_head") and vocab > ANE_MAX_DIM:
            ane = cached_export(ctx, export_request(ctx, [compression], max_context, fp16_rewrites=rewrites,
                                                    lm_head_chunk=ANE_MAX_DIM))
            package = ane.package_name(compression)
            verifications.append(verified_package(ctx, ane, compression, f"{self.name}/{package}", ship_gate))
            shipped.append(self._ship(ane, compression, out_dir, ane=True))
        if coreml_runtime_available():  # macOS: the shipped package also runs in Core ML itself
            package = export.package_name(compression)
            verifications.append(verified_package(ctx, export, compression, f"{self.name}/{package} (Core ML)",
                                                  ship_gate, executed=True))
        notes.append(self._ane_note(vocab, options.get("ane_head")))
        for name in TOKENIZER_FILES:
            place_artifact(ctx.ckpt.folder / name, out_dir / name)

        model_name = ctx.model_name
        context = self._context(ctx, model_name, shipped, max_context, export.conversion.sliding_window or 0,
                                verifications, coreai[3] if coreai else None)
        bridge, checks = self._scaffold(out_dir, context)

        sections = {
            "model": {"name": model_name, "packages": shipped, "max_context": max_context,
                      "sliding_window": export.conversion.sliding_window, "deployment_target": DEPLOYMENT_TARGET,
                      "fp16_rewrites": export.conversion.fp16_plan, "exactness_proof": export.conversion.proof},
            "runner": self._runner(ctx, max_context),
            "tokenizer": list(TOKENIZER_FILES),
            "contract": ctx.contract.as_dict(),
        }
        notes += self._simulated_notes(f"all {len(ctx.eval_rows)} eval rows" if ctx.eval_rows else None)
        extra: dict[str, Any] = {}
        if coreai is not None:
            coreai_artifact, coreai_verification, coreai_notes, sections["core_ai"] = coreai
            verifications.append(coreai_verification)
            notes += coreai_notes
            extra = {"coreai_compression": coreai_artifact.compression.name, "coreai_export": coreai_artifact.export}
        return finish_bundle(out_dir, self, sections, verifications, checks, notes=notes,
                             extra={"compression": compression, "export": export.conversion.as_dict(),
                                    "bridge_files": [p.relative_to(out_dir).as_posix() for p in bridge], **extra})

    @staticmethod
    def _simulated_notes(answered: str | None) -> list[str]:
        """What `simulated` means for the packages and the generated Swift, and for the task's numbers (`answered`:
        which eval rows each package answered, None without an eval set)."""
        notes = ["iOS: packages verified `simulated` (their MIL programs evaluated in numpy against fp32 "
                 "transformers); nothing ran in Core ML or on an iPhone. The bridge and app were parsed with "
                 "tree-sitter (Swift); no Swift compiler or Xcode ran here."]
        if answered:
            notes.append(f"iOS task numbers: every verified package answered {answered} through its own program; "
                         "a `simulated` row's latency is edgepack's numpy MIL interpreter on this build host's CPU, "
                         "not an iPhone's.")
        return notes

    def _scaffold(self, out_dir: Path, context: dict[str, Any]) -> tuple[list[Path], list[ScaffoldCheck]]:
        """Render the app, copy the bridge (with its Core AI manifest when the bundle ships an .aimodel), check them."""
        rendered = render_tree("ios", out_dir / APP_DIR, context)
        bridge = copy_bridge(out_dir / BRIDGE_DIR, core_ai=bool(context["coreai_asset"]))
        checks = check_generated_files(rendered, out_dir)
        checks += remembered_checks("check_swift_files", rendered + bridge, out_dir, check_swift_files)
        checks.append(ScaffoldCheck(f"{APP_DIR}/", "xcodebuild", "skipped",
                                    "needs macOS with Xcode; edgepack parses every Swift file with tree-sitter and "
                                    "checks the Core ML / swift-transformers / Foundation Models / Core AI names it "
                                    "uses against a list"))
        return bridge, checks

    def _first_passing(self, ctx: BuildContext, ladder: tuple[str, ...], max_context: int, rewrites: bool,
                       notes: list[str], work: Beside) -> tuple[
            CoreMLExport, str, VerificationResult, Gate | TopOneGate, VerificationResult]:
        """Convert and simulate the first rung that passes its gate (the last rung ships either way); return its
        export, rung, verification and gate, and the verification of that export's fp16 package.

        Every rung but the last is screened in eager PyTorch first, from the most precise down
        (packager.ladder), so a rung predicted to fail is never converted; a predicted pass that fails in
        simulation moves on to the next rung. The exception: when the task decides, a first rung that keeps the
        adapter apart is converted and simulated at once (packager.ladder.rungs_in_order). A 4-bit rung's
        screen meets the 4-bit class gate before llama.cpp's Q4_K_M baseline is built for its relative
        gate: a rung that fails the class gate needs no baseline. With an eval set the screen answers it too, and
        when the task decides (packager.verify.gates.TaskGate) a screen or package passes exactly when its own
        answers keep the task (a fidelity miss is a warning, and no Q4_K_M baseline is built for it).
        """
        task_decides = bool(ctx.eval_rows) and ctx.options.task_gate.decides

        def screen(rung: str) -> list[str]:
            # Whether the verdict needs eval answers is known from the class gate as soon as the screen's numbers
            # are: they then reuse its model. (The Q4_K_M-relative gate needs a baseline GGUF, a heavy step.)
            predicted = screened(ctx, rung, task_if=lambda fidelity: task_screened(
                self._class_gate(rung).check(fidelity), ctx.options.task_gate))
            # The class gate first: a 4-bit rung that misses it needs no Q4_K_M baseline for its relative gate,
            # nor does a screen the task decides (a fidelity miss is then a warning).
            failures = self._class_gate(rung).check(predicted) if self._four_bit(rung) else []
            if not (failures or task_decides):
                failures = self._gate(ctx, rung, notes).check(predicted)
            task = (lambda: screened_task(ctx, rung)) if ctx.eval_rows else None
            failures = screen_verdict(predicted, failures, ctx.options.task_gate, task)
            return [f"top-1 {predicted.top1:.3f}", *failures] if failures else []

        def converted(rung: str) -> CoreMLExport:
            return cached_export(ctx, export_request(ctx, ["none", rung], max_context, fp16_rewrites=rewrites))

        # An adapter kept apart keeps the fine-tune the merged rungs lose: when the task decides, that rung is the
        # one expected to ship (its 4-bit base alone misses the fidelity gates), so it is converted unscreened.
        rungs = rungs_in_order(ladder, screen, work, converted, ctx.reporter.say, notes,
                               first_likely=compression_named(ladder[0]).adapter and task_decides,
                               unscreened=ctx.scheduler.unscreened.get(self.name))
        for rung in rungs:
            gate = self._gate(ctx, rung, notes)
            export = converted(rung)
            # The same conversion's fp16 package is simulated beside this rung's (numpy, one thread each).
            fp16 = work.start("simulate the fp16 package", functools.partial(self._fp16_verified, ctx, export))
            package = export.package_name(rung)
            result = verified_package(ctx, export, rung, f"{self.name}/{package}", gate)
            if result.passed or rung == ladder[-1]:
                return export, rung, result, gate, fp16.result()
            notes.append(f"{package} ({export.megabytes(rung):.0f} MB) failed its gate ({'; '.join(result.failures)})")
        raise AssertionError("unreachable: the last rung always returns")

    def _fp16_verified(self, ctx: BuildContext, export: CoreMLExport) -> VerificationResult:
        """The conversion's fp16 package simulated against fp32: the proof that the conversion itself is exact."""
        return verified_package(ctx, export, "none", f"{self.name}/{export.package_name('none')} (fp16 conversion)",
                                FP16_GATE)

    @staticmethod
    def _int4_ladder(ctx: BuildContext) -> tuple[str, ...]:
        """A LoRA input's 4-bit rung keeps the adapter apart (a 4-bit merge rounds small deltas away)."""
        return ADAPTER_LADDER if AdapterSource.of(ctx.ckpt) else INT4_LADDER

    def _class_gate(self, rung: str) -> Gate:
        """The gate of the rung's bit width alone (no baseline GGUF needed)."""
        return LOW_BIT if self._four_bit(rung) else EIGHT_BIT

    @staticmethod
    def _four_bit(rung: str) -> bool:
        return compression_named(rung).linears != "uint8-b32"

    def _gate(self, ctx: BuildContext, rung: str, notes: list[str]) -> Gate | TopOneGate:
        """An 8-bit package meets the 8-bit class gate; a 4-bit one llama.cpp's Q4_K_M (see _compressed_gate).
        When the task decides, a fidelity miss is only a warning: the 4-bit class gate phrases it, and no Q4_K_M
        baseline (a GGUF and its verification, about 200 CPU-s at 270M) is built for it."""
        if not self._four_bit(rung):
            return EIGHT_BIT
        if ctx.eval_rows and ctx.options.task_gate.decides:
            return LOW_BIT
        return self._compressed_gate(ctx, notes)

    def _compressed_gate(self, ctx: BuildContext, notes: list[str]) -> TopOneGate:
        """The gate of a 4-bit package: llama.cpp's Q4_K_M top-1 on the same golden positions minus 0.02,
        and the 3-6-bit class gate every 4-bit GGUF meets too. (An 8-bit package meets the 8-bit class gate.)"""
        q4 = ctx.verify_gguf("Q4_K_M", f"{self.name}/baseline Q4_K_M.gguf")
        top1 = q4.metrics.top1 if q4.metrics else 0.0
        note = (f"baseline: llama.cpp Q4_K_M of the same checkpoint reaches top-1 {top1:.3f} on the same "
                f"{q4.metrics.positions if q4.metrics else 0} golden positions (executed in llama.cpp)")
        if note not in notes:
            notes.append(note)
        return TopOneGate(f"within {Q4_K_M_MARGIN} of llama.cpp Q4_K_M ({top1:.3f})", round(top1 - Q4_K_M_MARGIN, 6),
                          also=LOW_BIT)

    def _ship(self, export: CoreMLExport, compression: str, out_dir: Path, ane: bool = False) -> dict[str, Any]:
        source = export.package(compression)
        shutil.copytree(source, out_dir / source.name, copy_function=_place_artifact)
        info = export.conversion.packages[compression]
        return {"package": source.name, "compression": compression, "summary": info.summary,
                "lm_head_chunk": export.conversion.lm_head_chunk, "neural_engine_variant": ane}

    def _fp16_notes(self, export: CoreMLExport) -> list[str]:
        ranges = export.conversion.ranges
        plan = export.conversion.fp16_plan
        proof = export.conversion.proof
        site, peak = ranges["before"]["max_site"]
        after_site, after_peak = ranges["after"]["max_site"]
        if not plan["enabled"]:
            return [f"fp16 rewrites switched OFF: largest activation {peak:,.0f} ({site}), fp16 max 65,504"]
        return [f"fp16 safety: largest activation of the original model on the golden prompts is {peak:,.0f} "
                f"({site}); after the exact rewrites (residual / {plan['residual_scale']:g}, MLP scales up to "
                f"{max(plan['mlp_scales'] or [1]):g}, RMSNorm on x / max|x|) it is {after_peak:,.0f} ({after_site}), "
                f"budget {ranges['budget']:,.0f}",
                f"exactness proof (fp32, prefill + decode, {proof['positions']} positions): max |logit diff| "
                f"{proof['max_abs_diff']:.2e} vs transformers (relative {proof['relative']:.1e}), top-1 identical at "
                f"{proof['top1_identical']}/{proof['positions']}"]

    def _ane_note(self, vocab: int, built: bool) -> str:
        if vocab <= ANE_MAX_DIM:
            return f"vocabulary {vocab} <= {ANE_MAX_DIM}: the lm_head fits the Neural Engine's dimension limit as is"
        return (f"vocabulary {vocab} > {ANE_MAX_DIM} (the Neural Engine's largest dimension): the default package's "
                "lm_head will run on CPU/GPU. " + (
                    f"The -ane package splits it into {ANE_MAX_DIM}-row chunks (same numbers, simulated); whether Core "
                    "ML places it on the Neural Engine can only be confirmed on a device (Xcode's Core ML "
                    "performance report)." if built else "Build with --ane-head for a variant with the lm_head split "
                    f"into {ANE_MAX_DIM}-row chunks; Neural Engine placement can only be confirmed on a device."))

    def _context(self, ctx: BuildContext, model_name: str, shipped: list[dict[str, Any]], max_context: int,
                 sliding_window: int, verifications: list[VerificationResult],
                 coreai: dict[str, Any] | None, specialists: list[dict[str, str]] | None = None) -> dict[str, Any]:
        """The app templates' values (templates/ios/CONTEXT.md). `shipped` is empty in a Core AI-only bundle;
        `specialists` are a fleet's functions (the app's picker), empty for one model."""
        contract = ctx.contract
        coreai_asset = coreai["asset"] if coreai else ""
        return {
            "model_name": model_name,
            "slug": slug(model_name),
            "bundle_id": bundle_identifier(model_name),
            "package": shipped[0]["package"] if shipped else "",
            "packages": [p["package"] for p in shipped],
            "compression_summary": shipped[0]["summary"] if shipped else coreai["summary"] if coreai else "",
            "compute_units": COMPUTE_UNITS,
            "max_context": max_context,
            "sliding_window": sliding_window,
            "swift_transformers_version": SWIFT_TRANSFORMERS_VERSION,
            "coreai_asset": coreai_asset,
            "coreai_summary": coreai["summary"] if coreai else "",
            "coreai_models_version": COREAI_MODELS_VERSION,
            "runtime_note": _runtime_note(shipped, coreai_asset),
            # SwiftPM lets a package depend on coreai-models (iOS 27) only from an iOS 27 minimum.
            "deployment_target": "27.0" if coreai_asset else "18.0",
            "task": contract.task,
            "labels": list(contract.labels or []),
            **_first_row(ctx),
            "verification_rows": [v.summary_row(v.artifact.rsplit("/", 1)[-1]) for v in verifications],
            "edgepack_version": __version__,
            "specialists": list(specialists or []),
        }


def _runtime_note(shipped: list[dict[str, Any]], coreai_asset: str) -> str:
    """What the sample app says it runs, and needs, for this bundle's formats."""
    if not coreai_asset:
        return "Core ML package (iOS 18+)."
    if not shipped:
        return (f"Core AI only: {coreai_asset} needs iOS 27 / macOS 27 and Apple's CoreAILM package (linked by "
                "../EdgeModel). There is no Core ML package: build with --ios-format all or coreml.")
    return (f"{coreai_asset} through Core AI on iOS 27 / macOS 27; {shipped[0]['package']} through Core ML "
            "elsewhere, or when Core AI cannot load it.")


def _first_row(ctx: BuildContext) -> dict[str, str]:
    """The app's example: the first eval row's instruction and input."""
    row = ctx.eval_rows[0] if ctx.eval_rows else None
    return {"instruction": row.instruction if row else "", "sample_input": row.input if row else "Hello!"}


def _place_artifact(src: str, dest: str) -> None:
    place_artifact(Path(src), Path(dest))
