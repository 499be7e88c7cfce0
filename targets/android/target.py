"""Android: an ExecuTorch .pte (+ .ptd weights) on XNNPACK, a Kotlin bridge over LlmModule, a sample app.

The .pte is exported by targets.android.export (a cached stage) and executed on this
host by ExecuTorch's own runtimes, including the C++ TextLLMRunner that Android's LlmModule drives.
`--recipe auto` ships the smallest recipe of the ladder that passes its gate. `--android-runtime litert-lm`
(or `all`) ships a LiteRT-LM bundle (model.litertlm, targets.android.litert_export) instead of (beside) the
.pte, executed here by its own TFLite program and by LiteRT-LM's engine on the CPU; the app then links
LiteRT-LM and tries its NPU, GPU and CPU backends before any .pte (compiled and scripted here, never run).
`--delegate vulkan` adds an experimental Vulkan .pte, checked structurally only (no GPU here, and the standard
executorch-android AAR carries no Vulkan backend); the app tries it first and falls back to XNNPACK.
ExecuTorch has no NNAPI backend; QNN (Qualcomm), MediaTek and Samsung delegates need vendor SDKs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from packager import __version__
from packager.adapter import AdapterSource
from packager.architectures import ArchitectureSpec
from packager.beside import Pending, beside
from packager.checkpoint import Checkpoint
from packager.codecheck import check_generated_files, remembered_checks
from packager.contract import Contract
from packager.devices import DeviceArtifact, DeviceProfile, option_artifacts
from packager.errors import BadInputError
from packager.escaping import slug
from packager.fleet import Fleet, build_merged_per_specialist, each_specialist
from packager.ladder import first_passing_rung, rungs_in_order, screen_verdict, task_screened, walked
from packager.resources import copy_mobile_files
from packager.scheduler import HeavyStep
from packager.stage_cache import place_artifact
from packager.stages import BuildContext
from packager.target import ScaffoldCheck, TargetOption, TargetResult
from packager.target_bundle import finish_bundle
from packager.templating import render_tree
from packager.verify.result import VerificationResult
from targets.android.export import ADAPTER_LADDER, AUTO_LADDER, DELEGATES, EXECUTORCH_VERSION, recipe_named
from targets.android.fleet import SharedBase, shared_base, shared_recipe
from targets.android.kotlin_check import check_android_files, kotlin_version
from targets.android.layouts import EXECUTORCH_LAYOUTS, executorch_layout
from targets.android.litert_engine import VERBATIM_TEMPLATE
from targets.android.litert_export import (
    BUNDLE_NAME,
    LITERT_LADDER,
    LITERT_LM_VERSION,
    LITERT_PACKAGES,
    LITERT_RECIPES,
    LITERTLM_ANDROID_ARTIFACT,
    RUNTIMES,
    litert_recipe_named,
    tokenizer_problem,
)
from targets.android.litert_stages import LITERT_HEAVY_STEPS, LitertArtifact, cached_litertlm, verified_litertlm
from targets.android.litert_verify import engine_constraint
from targets.android.npu import npu_kit
from targets.android.stages import (
    HEAVY_STEPS,
    PteArtifact,
    adapter_source,
    cached_pte,
    runner_tokens,
    screened,
    screened_task,
    structural_pte,
    verified_pte,
)

APP_DIR = "app"
BRIDGE_DIR = "app/app/src/main/java/org/edgepack"
ASSET = "app/app/src/main/assets/edgepack.json"
AGP_VERSION = "8.9.0"  # the Android Gradle plugin ExecuTorch's own Android library builds with
GRADLE_VERSION = "8.11.1"  # the oldest Gradle AGP 8.9 accepts
COMPILE_SDK = 35
MIN_SDK = 26
# The delegate id a backend's .pte must carry (verified structurally).
BACKEND_IDS = {"vulkan": "VulkanBackend"}
# An app tries its backends in this order; XNNPACK (CPU, always present) is the fallback.
BACKEND_ORDER = ("vulkan", "xnnpack")
# The bridge's files every app gets, and each runtime's engine (the only file that imports the runtime).
BRIDGE_FILES = ("Json.kt", "Contract.kt", "Bundle.kt", "EdgeModel.kt", "EdgeFleet.kt")
ENGINE_FILES = {"executorch": "ExecuTorchEngine.kt", "litert-lm": "LiteRtLmEngine.kt"}
# What an NPU backend's file name holds in place of the SoC (LiteRtLmEngine.SOC_PLACEHOLDER in the bridge).
SOC_PLACEHOLDER = "{soc}"


@dataclass
class LitertBuilt:
    """A LiteRT-LM bundle chosen for the app: the exported file, its verification, its notes and its edgepack.json
    section, whose "file" is the name it ships under."""

    artifact: LitertArtifact
    verification: VerificationResult
    notes: list[str]
    section: dict[str, Any]

    @property
    def file(self) -> str:
        return str(self.section["file"])

    def place(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        place_artifact(self.artifact.bundle, out_dir / self.file)

    def backends(self, contract: Contract) -> list[dict[str, Any]]:
        """Its NPU, GPU and CPU entries of edgepack.json (litert_backends)."""
        return litert_backends(self.verification.level, contract, self.artifact.megabytes, self.file)


def npu_bundle_name(bundle: str) -> str:
    """The file an SoC-compiled variant of `bundle` goes by in the model folder, with the SoC as a placeholder the
    Kotlin bridge fills from Build.SOC_MODEL: model.litertlm -> model-npu-{soc}.litertlm (model-npu-sm8750.litertlm
    on a Snapdragon 8 Elite), as mobile/android/npu/compile_npu.py writes it.

    With a .litertlm, LiteRT-LM's backends come first, fastest first; the NPU needs a bundle compiled ahead of time
    for the phone's SoC with the vendor's SDK, which edgepack cannot run here (the SDK packages download it when
    installed): the bundle ships that script and its commands (npu/), and the app tries the NPU only when the file
    for its SoC is in the model folder."""
    return f"{bundle.removesuffix('.litertlm')}-npu-{SOC_PLACEHOLDER}.litertlm"


def litert_backends(cpu_verification: str, contract: Contract, megabytes: float | None = None,
                    bundle: str = BUNDLE_NAME) -> list[dict[str, Any]]:
    """edgepack.json's LiteRT-LM entries for `bundle` in the order the app tries them: NPU, GPU, CPU.

    Only the CPU ran at build time (`cpu_verification`); GPU and NPU are `experimental`, never run here.
    Each carries the chat template the engine must apply: the contract renders the prompt, the
    template passes it through verbatim (as in the build's engine run). Each carries the response format
    the build's engine decoded the contract under (None when unconstrained), as data, so the Kotlin bridge
    asks LiteRT-LM for that very regex or schema instead of deriving its own.
    """
    constraint = engine_constraint(contract)
    response_format = constraint["response_format"] if constraint else None

    def entry(backend: str, file: str, verification: str, experimental: bool, size: float | None) -> dict[str, Any]:
        return {"runtime": "litert-lm", "backend": backend, "litertlm": file, "experimental": experimental,
                "verification": verification, "chat_template": VERBATIM_TEMPLATE, "response_format": response_format,
                "size_mb": size}

    size = round(megabytes, 1) if megabytes is not None else None
    return [entry("npu", npu_bundle_name(bundle), "not built", True, None),
            entry("gpu", bundle, "not run", True, size),
            entry("cpu", bundle, cpu_verification, False, size)]


def pte_backend(delegate: str, pte: str, ptd: str, verification: str, experimental: bool,
                megabytes: float) -> dict[str, Any]:
    """edgepack.json's entry for an ExecuTorch program and its weights file (size_mb is the README's only)."""
    return {"runtime": "executorch", "backend": delegate, "pte": pte, "ptd": ptd, "experimental": experimental,
            "verification": verification, "size_mb": round(megabytes, 1)}


def litert_files(backends: list[dict[str, Any]]) -> list[str]:
    """The .litertlm files edgepack.json's backends load and the bundle holds, each once (not the NPU's, which
    edgepack does not build)."""
    return list(dict.fromkeys(b["litertlm"] for b in backends if b["runtime"] == "litert-lm" and b["backend"] != "npu"))


def response_format_type(contract: Contract) -> str:
    """The response format ("regex", "json") LiteRT-LM decodes the contract under; "" when unconstrained."""
    constraint = engine_constraint(contract)
    return str(constraint["response_format"]["type"]) if constraint else ""


def push_files(backends: list[dict[str, Any]], runtimes: tuple[str, ...]) -> list[str]:
    """The bundle's files an app's model folder takes, each once: every backend's except the NPU bundle, which
    edgepack does not build, and the tokenizer ExecuTorch's runner loads."""
    files: list[str] = []
    for b in backends:
        if b["runtime"] == "litert-lm":
            files += [] if b["backend"] == "npu" else [b["litertlm"]]
        else:
            files += [b["pte"], b["ptd"]]
    return list(dict.fromkeys([*files, *(["tokenizer.json"] if "executorch" in runtimes else [])]))


def application_id(name: str) -> str:
    """A valid, unique-per-model Android applicationId: org.edgepack.sample.<slug as identifier>."""
    ident = re.sub(r"[^a-z0-9]+", "_", slug(name)).strip("_")
    if not ident or ident[0].isdigit():
        ident = "m_" + ident
    return f"org.edgepack.sample.{ident}"


def copy_bridge(dest: Path, runtimes: tuple[str, ...]) -> list[Path]:
    """Copy the Kotlin bridge (mobile/android/edgepack/src/main/kotlin/org/edgepack) into the app, with the
    engine of each runtime the app links (an engine of an unlinked runtime would not compile)."""
    files = (*BRIDGE_FILES, *(ENGINE_FILES[r] for r in runtimes))
    return copy_mobile_files("android/edgepack/src/main/kotlin/org/edgepack", files, dest)


class AndroidTarget:
    """model-<recipe>.pte + .ptd + tokenizer.json + edgepack.json + a Gradle app using the Kotlin bridge."""

    name: ClassVar[str] = "android"
    title: ClassVar[str] = "Android app: ExecuTorch .pte on XNNPACK (CPU), Kotlin bridge over LlmModule"
    runtime: ClassVar[str] = f"ExecuTorch {EXECUTORCH_VERSION} (org.pytorch:executorch-android)"
    status: ClassVar[str] = "ready"
    # Ships a .pte, no GGUF.
    default_quant: ClassVar[str | None] = None
    # Seconds of a cold build of Gemma 3 270M with the example's eval set (measured 2026-12);
    # most of it: screens, ExecuTorch export and the .pte run on the eval set.
    expected_seconds: ClassVar[float] = 1400
    # What it may run that holds much memory (packager.memory_plan adds up a build's need before it starts).
    heavy_steps: ClassVar[tuple[HeavyStep, ...]] = HEAVY_STEPS + LITERT_HEAVY_STEPS
    # Walked smallest first when no recipe/compression is given; `edgepack doctor` lists it.
    default_ladder: ClassVar[tuple[str, ...]] = AUTO_LADDER
    # RAM budgets: the share of physical memory a model can count on there (packager.devices).
    devices: ClassVar[tuple[DeviceProfile, ...]] = (
        DeviceProfile("pixel-8-pro", "Pixel 8 Pro", 12, 0.35, "android", "ExecuTorch XNNPACK (CPU)"),
        DeviceProfile("galaxy-s24", "Samsung Galaxy S24", 8, 0.35, "android", "ExecuTorch XNNPACK (CPU)"),
    )
    options: ClassVar[tuple[TargetOption, ...]] = (
        TargetOption("recipe", "--recipe", "android_recipe",
                     "ExecuTorch quantization recipe for android (default auto: the smallest that passes its gate).",
                     default="auto"),
        TargetOption("delegates", "--delegate", "android_delegates",
                     "Also export an experimental accelerator .pte for android (repeatable); the app falls back to "
                     "XNNPACK.", default=(), choices=tuple(BACKEND_IDS), multiple=True),
        # --runtime is the web target's flag (one flag, one owner: packager.target.option_table).
        TargetOption("runtime", "--android-runtime", "android_runtime",
                     "Android runtime to ship: executorch (.pte), litert-lm (.litertlm) or all (both).",
                     default="executorch", choices=(*RUNTIMES, "all")),
        TargetOption("litert_recipe", "--litert-recipe", "android_litert_recipe",
                     "LiteRT-LM quantization recipe for android (default auto: the smallest that passes its gate).",
                     default="auto", choices=("auto", *LITERT_RECIPES)),
    )

    def supports(self, spec: ArchitectureSpec) -> bool:
        """Every architecture with an ExecuTorch layout (targets.android.layouts)."""
        return spec.name in EXECUTORCH_LAYOUTS

    def device_artifacts(self, ckpt: Checkpoint) -> list[DeviceArtifact]:
        """The .pte recipes `build --device` may choose for a phone, most faithful first, priced per tensor."""
        return option_artifacts(ckpt, "ExecuTorch", "recipe",
                                {name: recipe_named(name).bits for name in reversed(AUTO_LADDER)})

    def build(self, ctx: BuildContext, out_dir: Path) -> TargetResult:
        runtime = ctx.options.for_target(self).get("runtime")
        if runtime not in (*RUNTIMES, "all"):
            raise BadInputError(f"--android-runtime {runtime}: unknown; android ships {', '.join(RUNTIMES)} or all.")
        runtimes = RUNTIMES if runtime == "all" else (runtime,)
        if "litert-lm" not in runtimes:
            return self._build_executorch(ctx, out_dir, None)
        self._check_litert_inputs(ctx)  # before any work
        if "executorch" not in runtimes:
            return self._build_litert_app(ctx, out_dir, self._build_litert(ctx))
        # Both: the bundle's export and runs do not depend on the .pte's, so they go beside them when the cores
        # allow (packager.beside).
        with beside(ctx.scheduler.cancel) as work:
            litert = work.start("LiteRT-LM bundle", lambda: self._build_litert(ctx))
            return self._build_executorch(ctx, out_dir, litert)

    def build_fleet(self, fleet: Fleet, out_dir: Path) -> TargetResult:
        """One base .ptd and a .pte per specialist, each verified with that base (targets.android.fleet); each
        specialist whole, in its own folder and saying why, where a shared base cannot apply.

        With --android-runtime all, each specialist also gets a merged LiteRT-LM bundle (<name>.litertlm: the
        exporter takes a whole model), exported and run beside the .pte work when the cores allow (packager.beside);
        the app tries it first."""
        options = fleet.base.options.for_target(self)
        recipe = shared_recipe(options)
        with_litert = not isinstance(recipe, str) and options.get("runtime") == "all"
        if with_litert:
            for specialist in fleet.specialists:
                self._check_litert_inputs(specialist.ctx)  # before any work
        with beside(fleet.base.scheduler.cancel) as work:
            pending = work.start("LiteRT-LM bundles", lambda: self._fleet_litert(fleet)) if with_litert else None
            shared = recipe if isinstance(recipe, str) else shared_base(fleet, recipe, self.name,
                                                                        fleet.base.options.no_gate)
            # Asked for either way: a fallback to whole models builds the same bundles (the stage cache's).
            litert = pending.result() if pending is not None else {}
        if isinstance(shared, str):
            fleet.base.reporter.say(f"android: each specialist ships as a whole model: {shared}")
            return build_merged_per_specialist(self, fleet, out_dir, self.build, reason=shared)
        return self._fleet_bundle(fleet, shared, litert, out_dir)

    def _fleet_litert(self, fleet: Fleet) -> dict[str, LitertBuilt]:
        """Each specialist's merged model as a LiteRT-LM bundle of its own, <name>.litertlm, verified on its task."""
        built = each_specialist(fleet, "LiteRT-LM bundle",
                                lambda s: self._build_litert(s.ctx, f"{s.name}.litertlm"))
        return dict(zip(fleet.names, built, strict=True))

    def _fleet_bundle(self, fleet: Fleet, shared: SharedBase, litert: dict[str, LitertBuilt],
                      out_dir: Path) -> TargetResult:
        """Place the base once, each specialist's program (and LiteRT-LM bundle) and the tokenizer; edgepack.json
        lists the specialists, each with its backends, runner settings and contract."""
        out_dir.mkdir(parents=True, exist_ok=True)
        place_artifact(shared.base_ptd, out_dir / shared.base_file)
        place_artifact(shared.tokenizer_json, out_dir / "tokenizer.json")
        entries, verifications, served, backends = [], [], {}, []
        notes = [shared.note(EXECUTORCH_VERSION)]
        for specialist in fleet.specialists:
            program = shared.programs[specialist.name]
            place_artifact(program.pte, out_dir / program.pte.name)
            verification = shared.verifications[specialist.name].shipped_as(
                self.name, [program.pte.name, shared.base_file])
            verifications.append(verification)
            served[verification.artifact] = specialist.name
            own = [pte_backend("xnnpack", program.pte.name, shared.base_file, verification.level, False,
                               program.pte.stat().st_size / 2**20)]
            entry: dict[str, Any] = {"name": specialist.name,
                                     "runner": self._runner(specialist.ctx, program, shared.tokenizer_json)}
            bundle = litert.get(specialist.name)
            if bundle is not None:
                bundle.place(out_dir)
                own = [*bundle.backends(specialist.ctx.contract), *own]
                verifications.append(bundle.verification)
                served[bundle.verification.artifact] = specialist.name
                notes += [f"{specialist.name}: {note}" for note in bundle.notes]
                entry["litert_lm"] = bundle.section
            backends += own
            entries.append({**entry, "backends": [{k: v for k, v in b.items() if k != "size_mb"} for b in own],
                            "contract": specialist.ctx.contract.as_dict()})
        recipe = shared.recipe
        runtimes = ("litert-lm", "executorch") if litert else ("executorch",)
        if litert:
            notes.append(f"Android fleet (LiteRT-LM): each specialist also ships as a whole merged bundle "
                         f"({', '.join(f'{b.file} {b.artifact.megabytes:.1f} MB' for b in litert.values())}): "
                         "edgepack gives LiteRT-LM no LoRA adapters, so the base is not shared there.")
            notes.append(self._litert_app_note(
                {litert[s.name].file: s.ctx.contract for s in fleet.specialists}))
        checks, bridge = self._scaffold(fleet.specialists[0].ctx, out_dir, backends, runtimes, verifications,
                                        recipe.name, recipe.summary, fleet=fleet)
        first = shared.programs[fleet.specialists[0].name]
        sections = {
            "model": {"name": fleet.base.model_name, "recipe": recipe.name,
                      "recipe_summary": recipe.summary, "format": "pte", "ptd": shared.base_file,
                      "quantization": first.export["metadata"].get("quantization", {})},
            "tokenizer": "tokenizer.json",
            "specialists": entries,
        }
        return finish_bundle(out_dir, self, sections, verifications, checks, notes=notes, copies=(ASSET,),
                             extra={"recipe": recipe.name, "fleet_base": shared.base_file,
                                    "bridge_files": [p.relative_to(out_dir).as_posix() for p in bridge]},
                             specialists=served)

    def _build_litert_app(self, ctx: BuildContext, out_dir: Path, litert: LitertBuilt) -> TargetResult:
        """The .litertlm alone, with an app that links LiteRT-LM only (its bundle holds the tokenizer)."""
        recipe = litert.artifact.recipe
        litert.place(out_dir)
        backends = litert.backends(ctx.contract)
        checks, bridge = self._scaffold(ctx, out_dir, backends, ("litert-lm",), [litert.verification], recipe.name,
                                        recipe.summary)
        contract = ctx.contract
        # EdgeModel's runner settings; LiteRT-LM's engine adds the start token and stops at the bundle's
        # stop tokens itself, without sending their text.
        runner = {"num_bos": 1 if contract.add_bos and contract.bos_id is not None else 0,
                  "eos_ids": list(contract.eos_ids), "eos_pieces": [], "max_context": litert.section["max_context"],
                  "temperature": 0.0}
        sections = {"model": litert.section, "runner": runner,
                    "backends": [{k: v for k, v in b.items() if k != "size_mb"} for b in backends],
                    "contract": contract.as_dict()}
        notes = [*litert.notes, self._litert_app_note({litert.file: ctx.contract})]
        return finish_bundle(out_dir, self, sections, [litert.verification], checks, notes=notes, copies=(ASSET,),
                             extra={"litert_recipe": recipe.name, "litert_export": litert.artifact.export,
                                    "bridge_files": [p.relative_to(out_dir).as_posix() for p in bridge]})

    @staticmethod
    def _litert_app_note(contracts: dict[str, Contract]) -> str:
        """What the app does with LiteRT-LM and what of it ran; `contracts`, each bundle's contract by its file."""
        def decoding(contract: Contract) -> str:
            constraint = engine_constraint(contract)
            if constraint is None:
                return f"decodes the {contract.task} contract greedily, unconstrained (it asks for no constraint)"
            return (f"decodes the {contract.task} contract under LiteRT-LM's constrained decoding with the "
                    f"{constraint['response_format']['type']} response format the build's engine verified with "
                    "(edgepack.json's response_format; ConversationConfig(enableResponseFormat = true), LLGuidance)")

        how = "; ".join(f"{file} {decoding(contract)}" for file, contract in contracts.items())
        npu = " or ".join(npu_bundle_name(file) for file in contracts)
        return ("Android (LiteRT-LM in the app): the app tries LiteRT-LM on the NPU (only with a "
                f"{npu} compiled for the phone's SoC, which edgepack does not build), then the GPU, then "
                f"the CPU, then any .pte. The bridge {how}; a .pte decodes without a constraint. The Kotlin "
                f"LiteRtLmEngine was compiled against a declared API surface of {LITERTLM_ANDROID_ARTIFACT} and its "
                "fallback and constraint run on the JVM with scripted engines; it never ran against the real library, "
                "and no GPU or NPU ran anywhere. The app and bridge were parsed (tree-sitter) and linted (ktlint); no "
                "Gradle build ran here.")

    def _scaffold(self, ctx: BuildContext, out_dir: Path, backends: list[dict[str, Any]], runtimes: tuple[str, ...],
                  verifications: list[VerificationResult], recipe: str,
                  recipe_summary: str, fleet: Fleet | None = None) -> tuple[list[ScaffoldCheck], list[Path]]:
        """Render the sample app and copy the bridge (with the linked runtimes' engines); return checks, bridge.
        A fleet's app offers each specialist, with its own sample input."""
        model_name = (fleet.base if fleet else ctx).model_name
        picks = ([(s.name, s.ctx) for s in fleet.specialists] if fleet else [(model_name, ctx)])
        specialists = [{"name": name, "task": c.contract.task, "labels": list(c.contract.labels or []),
                        "instruction": c.eval_rows[0].instruction if c.eval_rows else "",
                        "sample_input": c.eval_rows[0].input if c.eval_rows else "Hello!",
                        "response_format_type": response_format_type(c.contract)} for name, c in picks]
        context = self._context(ctx, model_name, recipe, recipe_summary, backends, verifications, runtimes)
        rendered = render_tree("android", out_dir / APP_DIR, {**context, "specialists": specialists,
                                                              "fleet": fleet is not None})
        bridge = copy_bridge(out_dir / BRIDGE_DIR, runtimes)
        bundles = litert_files(backends)
        kit = npu_kit(out_dir, bundles, model_name) if bundles else []
        checks = check_generated_files(rendered + kit, out_dir)
        checks += remembered_checks("check_android_files", rendered + bridge, out_dir, check_android_files)
        checks.append(ScaffoldCheck(f"{APP_DIR}/", "gradle assembleDebug", "skipped",
                                    "needs the Android SDK and Maven repositories; edgepack's tests compile the "
                                    "bridge with kotlinc and the app against a declared API surface"))
        return checks, bridge

    @staticmethod
    def _check_litert_inputs(ctx: BuildContext) -> None:
        """Exit 3 without the exporter's packages, exit 2 for a tokenizer the exporter would convert wrongly."""
        LITERT_PACKAGES.require()
        problem = tokenizer_problem(ctx.ckpt.folder)
        if problem:
            raise BadInputError(problem + " (or build android with --android-runtime executorch)")

    def _build_litert(self, ctx: BuildContext, bundle: str = BUNDLE_NAME) -> LitertBuilt:
        """Export and verify the LiteRT-LM bundle (the requested recipe, or the ladder), to ship as `bundle`; its
        inputs were checked (_check_litert_inputs). The caller places it."""
        requested = ctx.options.for_target(self).get("litert_recipe")
        ladder = (walked(LITERT_LADDER, ctx.options.no_gate) if requested == "auto"
                  else (litert_recipe_named(requested).name,))
        max_context = ctx.context_length

        def build(name: str) -> tuple[LitertArtifact, VerificationResult]:
            # No eager screen: a tiny model's LiteRT-LM export takes about 20 s, and int8 weights are the first rung.
            artifact = cached_litertlm(ctx, litert_recipe_named(name), max_context)
            return artifact, verified_litertlm(ctx, artifact, f"{self.name}/{bundle}")

        artifact, verification, notes = first_passing_rung(ladder, "LiteRT-LM recipe", build, lambda a: a.megabytes,
                                                           requested == "auto")
        notes.append(f"Android (LiteRT-LM): {bundle} ran on this host in its own TFLite program "
                     f"(ai_edge_litert's Interpreter) and in LiteRT-LM {LITERT_LM_VERSION}'s engine on the CPU; "
                     "GPU and NPU backends were not run, and nothing ran on a phone.")
        section = {"name": ctx.model_name, "format": "litertlm", "file": bundle,
                   "recipe": artifact.recipe.name, "recipe_summary": artifact.recipe.summary,
                   "max_context": artifact.export["cache_length"],
                   "prefill_lengths": artifact.export["prefill_lengths"], "backend": "cpu",
                   "runtime": f"LiteRT-LM {LITERT_LM_VERSION}", "verification": verification.level,
                   "metadata": artifact.export["metadata"]}
        return LitertBuilt(artifact, verification, notes, section)

    def _build_executorch(self, ctx: BuildContext, out_dir: Path,
                          pending_litert: Pending[LitertBuilt] | None) -> TargetResult:
        spec = ctx.ckpt.spec
        executorch_layout(spec)  # UnsupportedError naming the supported architectures
        delegates = list(dict.fromkeys(ctx.options.for_target(self).get("delegates")))
        unknown = [d for d in delegates if d not in DELEGATES or d == "xnnpack"]
        if unknown:
            raise BadInputError(f"--delegate {', '.join(unknown)}: unknown; edgepack exports {', '.join(BACKEND_IDS)}. "
                                "(ExecuTorch has no NNAPI backend; QNN, MediaTek and Samsung need their vendor SDKs.)")
        max_context = ctx.context_length
        tokenizer_json = ctx.ckpt.folder / "tokenizer.json"
        if not tokenizer_json.is_file():
            raise BadInputError(f"{ctx.ckpt.folder}: no tokenizer.json; ExecuTorch's runner loads only that format.")

        artifact, verification, notes = self._choose(ctx, max_context, tokenizer_json)
        out_dir.mkdir(parents=True, exist_ok=True)
        backends = []
        verifications = [verification]
        for delegate in sorted(delegates, key=BACKEND_ORDER.index):
            extra = cached_pte(ctx, artifact.recipe, delegate, max_context)
            result = structural_pte(ctx, extra, tokenizer_json, f"{self.name}/{extra.pte.name}", BACKEND_IDS[delegate],
                                    artifact.export["metadata"])
            verifications.append(result)
            backends.append(self._place(extra, out_dir, result, experimental=True))
        backends.append(self._place(artifact, out_dir, verification, experimental=False))
        place_artifact(tokenizer_json, out_dir / "tokenizer.json")
        runtimes: tuple[str, ...] = ("executorch",)
        litert = pending_litert.result() if pending_litert is not None else None
        if litert is not None:
            litert.place(out_dir)
            backends = [*litert.backends(ctx.contract), *backends]
            runtimes = ("litert-lm", "executorch")

        contract = ctx.contract
        runner = self._runner(ctx, artifact, tokenizer_json)
        checks, bridge = self._scaffold(ctx, out_dir, backends, runtimes, verifications, artifact.recipe.name,
                                        artifact.recipe.summary)
        model_name = ctx.model_name
        sections = {
            "model": {"name": model_name, "recipe": artifact.recipe.name, "recipe_summary": artifact.recipe.summary,
                      "format": "pte", "max_context": max_context,
                      "quantization": artifact.export["metadata"].get("quantization", {})},
            "runner": runner,
            "backends": [{k: v for k, v in b.items() if k != "size_mb"} for b in backends],
            "tokenizer": "tokenizer.json",
            "contract": contract.as_dict(),
        }
        extra: dict[str, Any] = {}
        if litert is not None:
            sections["litert_lm"] = litert.section
            verifications.append(litert.verification)
            notes += litert.notes
            extra = {"litert_recipe": litert.artifact.recipe.name, "litert_export": litert.artifact.export}
            notes.append(self._litert_app_note({litert.file: ctx.contract}))
        notes.append(
            f"Android: every XNNPACK .pte ran on this host in ExecuTorch {EXECUTORCH_VERSION}'s TextLLMRunner (the C++ "
            "runner LlmModule drives) and its forward method; nothing ran on a phone. The app and bridge were parsed "
            "(tree-sitter) and linted (ktlint); no Gradle build ran here."
        )
        if delegates:
            notes.append("Accelerator .pte files are experimental and only structurally checked; the standard "
                         "executorch-android AAR has no Vulkan backend, so the app falls back to XNNPACK unless you "
                         "build the AAR with Vulkan. ExecuTorch has no NNAPI backend; QNN, MediaTek and Samsung "
                         "delegates need their vendor SDKs.")
        return finish_bundle(out_dir, self, sections, verifications, checks, notes=notes, copies=(ASSET,),
                             extra={"recipe": artifact.recipe.name, "export": artifact.export,
                                    "bridge_files": [p.relative_to(out_dir).as_posix() for p in bridge], **extra})

    @staticmethod
    def _runner(ctx: BuildContext, artifact: PteArtifact, tokenizer_json: Path) -> dict[str, Any]:
        """edgepack.json's runner settings for a .pte: what LlmModule's generate is given."""
        contract = ctx.contract
        bos_id, pieces = runner_tokens(ctx, tokenizer_json, list(contract.eos_ids))
        return {
            "num_bos": 1 if contract.add_bos and contract.bos_id is not None else 0,
            "bos_id": bos_id,
            "eos_ids": list(contract.eos_ids),
            "eos_pieces": pieces,
            "max_context": int(artifact.export["metadata"]["get_max_context_len"]),
            "max_seq_len": int(artifact.export["metadata"]["get_max_seq_len"]),
            "temperature": 0.0,
        }

    def _choose(self, ctx: BuildContext, max_context: int, tokenizer_json: Path) -> tuple[
            PteArtifact, VerificationResult, list[str]]:
        """Export and verify recipes (the requested one, or the auto ladder) until one passes its gate."""
        requested = ctx.options.for_target(self).get("recipe")
        auto = ADAPTER_LADDER if AdapterSource.of(ctx.ckpt) else AUTO_LADDER
        ladder = walked(auto, ctx.options.no_gate) if requested == "auto" else (requested,)
        first = recipe_named(ladder[0])
        if first.adapter:
            adapter_source(ctx, first)  # exit 2 before any work for a whole-model input
        # Predict first (eager PyTorch, about a minute), from the most precise recipe down: an export
        # costs several CPU-minutes (except for a likely first rung, see below).
        def screen(name: str) -> list[str]:
            recipe = recipe_named(name)
            # Whether the verdict needs eval answers is known as soon as the screen's numbers are: they then reuse
            # its model.
            predicted = screened(ctx, recipe, task_if=lambda fidelity: task_screened(recipe.gate.check(fidelity),
                                                                                     ctx.options.task_gate))
            task = (lambda: screened_task(ctx, recipe)) if ctx.eval_rows else None
            return screen_verdict(predicted, recipe.gate.check(predicted), ctx.options.task_gate, task)

        notes: list[str] = []
        with beside(ctx.scheduler.cancel) as work:
            # An adapter kept apart keeps the fine-tune the merged recipes lose: when the task decides, that rung is
            # expected to ship (its 8-bit base alone misses the fidelity gate), so it is exported unscreened.
            likely = first.adapter and ctx.options.task_gate.decides
            rungs = rungs_in_order(ladder, screen, work,
                                   lambda name: cached_pte(ctx, recipe_named(name), "xnnpack", max_context),
                                   ctx.reporter.say, notes, first_likely=likely,
                                   unscreened=ctx.scheduler.unscreened.get(self.name))
            for name in rungs:
                recipe = recipe_named(name)
                artifact = cached_pte(ctx, recipe, "xnnpack", max_context)
                verification = verified_pte(ctx, artifact, tokenizer_json, f"{self.name}/{artifact.pte.name}")
                if verification.passed or name == ladder[-1]:
                    if requested == "auto":
                        notes.insert(0, f"recipe {recipe.name} (auto: the smallest of {', '.join(ladder)} that "
                                        "passes its gate)")
                    return artifact, verification, notes
                notes.append(f"recipe {recipe.name} ({artifact.megabytes:.0f} MB) failed its gate: "
                             f"{'; '.join(verification.failures)}")
        raise AssertionError("unreachable: the ladder is never empty")

    def _place(self, artifact: PteArtifact, out_dir: Path, verification: VerificationResult,
               experimental: bool) -> dict[str, Any]:
        place_artifact(artifact.pte, out_dir / artifact.pte.name)
        place_artifact(artifact.ptd, out_dir / artifact.ptd.name)
        return pte_backend(artifact.delegate, artifact.pte.name, artifact.ptd.name, verification.level, experimental,
                           artifact.megabytes)

    def _context(self, ctx: BuildContext, model_name: str, recipe: str, recipe_summary: str,
                 backends: list[dict[str, Any]], verifications: list[VerificationResult],
                 runtimes: tuple[str, ...]) -> dict[str, Any]:
        contract = ctx.contract
        return {
            "model_name": model_name,
            "slug": slug(model_name),
            "application_id": application_id(model_name),
            "executorch_version": EXECUTORCH_VERSION,
            "executorch_artifact": f"org.pytorch:executorch-android:{EXECUTORCH_VERSION}",
            "runtimes": list(runtimes),
            "litertlm_artifact": LITERTLM_ANDROID_ARTIFACT,
            "litertlm_files": litert_files(backends),
            "npu_bundle_files": [b["litertlm"] for b in backends
                                 if b["runtime"] == "litert-lm" and b["backend"] == "npu"],
            "push_files": push_files(backends, runtimes),
            "fleet_base": next((b["ptd"] for b in backends if b["runtime"] == "executorch"), ""),
            "kotlin_version": kotlin_version(),
            "agp_version": AGP_VERSION,
            "gradle_version": GRADLE_VERSION,
            "compile_sdk": COMPILE_SDK,
            "min_sdk": MIN_SDK,
            "recipe": recipe,
            "recipe_summary": recipe_summary,
            "backends": backends,
            "tokenizer_file": "tokenizer.json",
            "task": contract.task,
            "response_format_type": response_format_type(contract),
            "verification_rows": [v.summary_row(v.artifact.rsplit("/", 1)[-1]) for v in verifications],
            "edgepack_version": __version__,
        }
