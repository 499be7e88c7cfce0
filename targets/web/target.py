"""Web: a static bundle that runs the model in the browser with wllama (GGUF) and/or WebLLM (MLC).

    dist/<name>/web/
      index.html app.js app-config.js style.css   the sample page (templates/web)
      edgepack/                                   the bridge (mobile/web): EdgeModel, contract, cache
      edgepack.json README.md
      model/model-<quant>.gguf                    wllama: the shared GGUF stage (gguf-split parts if > 512 MB)
      vendor/wllama/ vendor/web-llm/              the pinned npm runtimes, copied at build time
      webllm/<model id>/resolve/main/             WebLLM: MLC weights, mlc-chat-config.json, tokenizer
      webllm/libs/<lib>.wasm                      WebLLM model library, only when one is available

The wllama bundle is verified `executed`: its own page runs in headless Chromium and its greedy
tokens are compared with native llama.cpp (targets.web.verify_browser). WebLLM weights are verified
`structural`: no WebLLM model library can be compiled here, and headless Chromium has no f16 WebGPU.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar

from packager import __version__
from packager.architectures import ArchitectureSpec
from packager.devices import DeviceProfile
from packager.errors import UnsupportedError
from packager.escaping import slug
from packager.fingerprint import file_sha256, options_digest
from packager.formats.gguf_writer import writes_architecture
from packager.manifest import write_json
from packager.resources import copy_mobile_files
from packager.stage_cache import CachedEntry, place_artifact
from packager.stages import BuildContext
from packager.target import TargetOption, TargetResult
from packager.target_bundle import bundle_document, finish_bundle, list_bundle, write_document
from packager.templating import render_tree
from packager.verify.result import VerificationResult
from packager.window_cache import full_window_cache
from targets.web.gguf_split import MAX_PART_BYTES, part_names, split_gguf
from targets.web.mlc.check import check_mlc_folder
from targets.web.mlc.libraries import PREFILL_CHUNK_SIZE, match_library
from targets.web.mlc.writer import (
    CONFIG_FILE,
    MLC_QUANTIZATIONS,
    TOKENIZER_FILES,
    MLCQuantization,
    chat_config,
    naming,
    write_tensor_cache,
)
from targets.web.vendor import WEBLLM, WLLAMA, WebVendor, find_vendor
from targets.web.verify_browser import (
    BrowserMeasurement,
    BrowserTools,
    browser_task_eval,
    find_browser_tools,
    structural_result,
    verify_bundle_files,
    verify_wllama_in_browser,
)

RUNTIME_SETS: dict[str, tuple[str, ...]] = {"wllama": ("wllama",), "webllm": ("webllm",), "all": ("wllama", "webllm")}
# WebLLM variants per --quant: an f16 build needs the shader-f16 WebGPU feature, so each bundle
# carries an f32 fallback the bridge picks when the adapter lacks it.
MLC_VARIANTS: dict[str, tuple[str, ...]] = {"F32": ("q0f32",), "F16": ("q0f16", "q0f32"), "BF16": ("q0f16", "q0f32")}
MLC_DEFAULT_VARIANTS = ("q4f16_1", "q4f32_1")
WEBLLM_MAX_CONTEXT = 4096  # the context every prebuilt WebLLM library is set up for
BRIDGE_FILES = ("edge-model.js", "contract.js", "model-store.js", "runtimes/wllama.js", "runtimes/webllm.js")
_LLAMA_CPP_VERSION = re.compile(r'LIBLLAMA_VERSION\s*=\s*"([^"]+)"')


def wllama_llama_cpp_version(vendor: WebVendor) -> str:
    """The llama.cpp build inside the vendored wllama WASM (its LIBLLAMA_VERSION constant)."""
    text = (vendor.package_dir(WLLAMA) / "esm" / "index.js").read_text(encoding="utf-8")
    match = _LLAMA_CPP_VERSION.search(text)
    return match.group(1) if match else "unknown"


@dataclasses.dataclass(frozen=True)
class MLCWeights:
    """What writing one quantization's MLC weights produced (the files themselves are the cache entry's)."""

    bytes: int
    shards: int


@dataclasses.dataclass
class WebLLMVariant:
    """One MLC build in the bundle, with what it needs and whether its model library is there."""

    model_id: str
    quant: MLCQuantization
    lib_status: str
    lib_reason: str
    model_lib: str | None
    verification: VerificationResult



# Bump when what a browser verification record holds or how it is computed changes.
WEB_VERIFICATION_SCHEMA = 1


@dataclasses.dataclass
class BrowserRun:
    """A browser verification as the stage cache keeps it: the record and the run's speed numbers."""

    result: VerificationResult
    measurement: BrowserMeasurement | None

    def as_dict(self) -> dict[str, Any]:
        return {"result": self.result.as_dict(),
                "measurement": dataclasses.asdict(self.measurement) if self.measurement else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BrowserRun:
        measurement = data.get("measurement")
        return cls(VerificationResult.from_dict(data["result"]),
                   BrowserMeasurement(**measurement) if measurement else None)


class WebTarget:
    """A static browser bundle: wllama (executed in headless Chromium) and/or WebLLM (structural)."""

    name: ClassVar[str] = "web"
    title: ClassVar[str] = "Browser: static bundle with wllama (WASM) and/or WebLLM (WebGPU), ES-module bridge"
    runtime: ClassVar[str] = "wllama (llama.cpp WASM) / WebLLM (MLC, WebGPU)"
    status: ClassVar[str] = "ready"
    # wllama's WASM build runs K-quants through slower kernels than native x86 ones (measured in
    # docs/benchmarks.md) whose rounding also makes the page's greedy tokens drift from native llama.cpp's
    # at non-tied positions, while Q8_0's browser decode is faster and its tokens match native.
    default_quant: ClassVar[str | None] = "Q8_0"
    # wllama 3.8.1's WASM heap is at most 4 GiB (getWasmMemory), whatever the machine has: a 4B model's
    # Q8_0 (3.9 GB) loaded its weights in headless Chromium and then failed to allocate its KV cache. A
    # default type whose estimated run-time memory exceeds this starts the ladder lower (packager.stages).
    runtime_memory_mb: ClassVar[float] = 4096
    # A fleet ships each specialist merged here (packager.fleet): why its runtime cannot take adapters.
    merged_specialists_reason: ClassVar[str] = (
        "wllama 3.8.1 takes lora_adapters only as paths in its own file system, and its loadModel mounts "
        "every file it is given as a model shard (utils.ts prepareBlobs), so an adapter file cannot reach it")
    # Seconds of a cold build of Gemma 3 270M with the example's eval set (measured 2026-12);
    # most of it: the eval set answered in headless Chromium.
    expected_seconds: ClassVar[float] = 250
    # RAM budgets: the share of physical memory a model can count on there (packager.devices).
    devices: ClassVar[tuple[DeviceProfile, ...]] = (
        DeviceProfile("desktop-chrome", "Desktop Chrome (wasm32)", 8, 0.45, "web", "wllama (WASM)",
                      "a 32-bit WASM heap caps a tab at 4 GB whatever the machine has"),
    )
    options: ClassVar[tuple[TargetOption, ...]] = (
        TargetOption("runtime", "--runtime", "web_runtime", "Browser runtime(s) for the web target (default wllama).",
                     default="wllama", choices=tuple(RUNTIME_SETS)),
    )

    def supports(self, spec: ArchitectureSpec) -> bool:
        """Every architecture the shared GGUF stage writes."""
        return writes_architecture(spec)

    def build(self, ctx: BuildContext, out_dir: Path) -> TargetResult:
        runtime = ctx.options.for_target(self).get("runtime")
        runtimes = RUNTIME_SETS.get(runtime)
        if runtimes is None:
            raise UnsupportedError(f"--runtime {runtime}: choose wllama, webllm or all.")
        vendor = find_vendor()
        out_dir.mkdir(parents=True, exist_ok=True)
        model_name = ctx.model_name
        context_length = ctx.context_length
        choice = ctx.chosen_gguf(self) if "wllama" in runtimes else None
        quant = choice.quant if choice else ctx.options.gguf_quant(self)
        manifest_runtimes: dict[str, Any] = {}
        verifications: list[VerificationResult] = []
        notes: list[str] = []
        model_files: list[str] = []
        variants: list[WebLLMVariant] = []

        if "wllama" in runtimes:
            model_files = self._place_gguf(ctx, out_dir, choice.file, quant)
            vendor.copy_runtime(WLLAMA, out_dir / "vendor" / "wllama")
            manifest_runtimes["wllama"] = {
                "version": vendor.version(WLLAMA),
                "llama_cpp": wllama_llama_cpp_version(vendor),
                "module": "vendor/wllama/index.js",
                "wasm": "vendor/wllama/wasm/wllama.wasm",
                "format": "gguf",
                "quant": quant,
                "model_files": model_files,
                "full_window_cache": full_window_cache(ctx.ckpt.config, context_length),
            }
            verifications.append(dataclasses.replace(choice.verification, artifact=f"{self.name}/{model_files[0]}"))
        if "webllm" in runtimes:
            vendor.copy_runtime(WEBLLM, out_dir / "vendor" / "web-llm")
            variants = self._write_webllm(ctx, out_dir, model_name, min(context_length, WEBLLM_MAX_CONTEXT))
            manifest_runtimes["webllm"] = {
                "version": vendor.version(WEBLLM),
                "module": "vendor/web-llm/index.js",
                "context_window_size": min(context_length, WEBLLM_MAX_CONTEXT),
                "variants": [{
                    "model_id": v.model_id,
                    "model_url": f"webllm/{v.model_id}/",
                    "quantization": v.quant.name,
                    "required_features": list(v.quant.required_features),
                    "model_lib": v.model_lib,
                    "model_lib_status": v.lib_status,
                    "model_lib_reason": v.lib_reason,
                } for v in variants],
            }
            for v in variants:
                notes.append(f"WebLLM {v.model_id} (structural): " + "; ".join(v.verification.notes[:2]))
                notes += [f"WebLLM {v.model_id}: {n}" for n in v.verification.notes[3:]]
                if v.lib_status != "bundled":
                    notes.append(f"WebLLM {v.model_id}: model library {v.lib_status}: {v.lib_reason}")

        self._copy_bridge(out_dir)
        contract = ctx.contract
        rendered = render_tree("web", out_dir, {
            "model_name": model_name,
            "task": contract.task,
            "labels": list(contract.labels or []),
            "uses_instruction": "{instruction}" in contract.prompt.template,
            "example_input": ctx.golden.greedy_prompt,
            "runtimes": list(runtimes),
            "wllama_version": vendor.version(WLLAMA),
            "webllm_version": vendor.version(WEBLLM),
            "llama_cpp_version": wllama_llama_cpp_version(vendor),
            "model_files": [{"path": p, "mb": (out_dir / p).stat().st_size / 2**20} for p in model_files],
            "webllm_variants": [{"model_id": v.model_id, "quantization": v.quant.name, "lib_status": v.lib_status,
                                 "lib_reason": v.lib_reason,
                                 "required_features": ", ".join(v.quant.required_features) or "none"}
                                for v in variants],
            "quant": quant,
            "context_length": context_length,
            "edgepack_version": __version__,
        })
        del rendered  # every file of the bundle is listed below, rendered or not

        # The page reads edgepack.json when it runs in the browser check: a first one without verifications.
        listed = list_bundle(out_dir)
        sections = {"model": {"name": model_name, "context_length": context_length, "quant": quant},
                    "runtimes": manifest_runtimes, "contract": contract.as_dict(),
                    **({"gguf_choice": choice.as_dict()} if choice else {})}
        notes += choice.notes() if choice else []
        manifest = bundle_document(self, sections, listed, [], None)
        write_document(listed, manifest)

        extra: dict[str, Any] = {}
        if "wllama" in runtimes:
            result, measurement = self._verify_wllama(ctx, out_dir, manifest, choice.file, quant)
            verifications.append(result)
            if measurement is not None:
                notes.append(measurement.summary())
                extra["browser"] = dataclasses.asdict(measurement) | {"speed_ratio": measurement.speed_ratio}
        verifications += [v.verification for v in variants]
        return finish_bundle(
            out_dir, self, sections, verifications, listed=listed, extra=extra,
            notes=[*notes, "Web numbers were measured in headless Chromium on the build host (x86-64), not on a "
                   "phone or a user's browser."],
        )

    def _copy_bridge(self, out_dir: Path) -> None:
        """Copy the bridge's ES modules (mobile/web) into edgepack/, as shipped: no build step."""
        copy_mobile_files("web", BRIDGE_FILES, out_dir / "edgepack")

    # -- wllama ---------------------------------------------------------------------------------

    def _place_gguf(self, ctx: BuildContext, out_dir: Path, source: Path, quant: str) -> list[str]:
        """Put the shared GGUF into model/, split into gguf-split parts when it exceeds 512 MB."""
        folder = out_dir / "model"
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"model-{quant}"
        if source.stat().st_size <= MAX_PART_BYTES:
            place_artifact(source, folder / f"{stem}.gguf")
            return [f"model/{stem}.gguf"]
        start = time.perf_counter()
        parts = split_gguf(source, folder, MAX_PART_BYTES)
        staged = [p.rename(folder / name) for p, name in zip(parts, part_names(stem, len(parts)), strict=True)]
        ctx.reporter.stage(f"split gguf {quant}", False, time.perf_counter() - start, f"{len(parts)} parts")
        return [f"model/{p.name}" for p in staged]

    def _verify_wllama(self, ctx: BuildContext, out_dir: Path, manifest: dict[str, Any], gguf: Path,
                       quant: str) -> tuple[VerificationResult, BrowserMeasurement | None]:
        artifact = f"{self.name}/index.html"  # the page that ran (with model/ and vendor/wllama/)
        ships = [f"{self.name}/model", f"{self.name}/vendor/wllama"]  # what a browser downloads
        tools = find_browser_tools()
        if not isinstance(tools, BrowserTools):
            failures = verify_bundle_files(out_dir, manifest)
            result = structural_result(
                artifact, "web-wllama", quant, "wllama (not run)", failures,
                [f"not run in a browser: {tools}; files, sizes and sha256 were checked instead"],
            )
            result.ships = ships
            return result, None

        def run() -> BrowserRun:
            ctx.reporter.say("running the web bundle in headless Chromium")
            result, measurement = verify_wllama_in_browser(
                tools, out_dir, gguf, ctx.contract, ctx.golden.greedy_prompt, artifact, quant,
                reference_next_token=ctx.reference_next_token)
            if ctx.eval_rows and result.level == "executed":
                baseline = ctx.baseline_answers
                ctx.reporter.say(f"answering {len(ctx.eval_rows)} eval rows in headless Chromium")
                metrics, notes, failures = browser_task_eval(tools, out_dir, ctx.contract, ctx.eval_rows, baseline)
                result.notes += notes
                result.failures += failures
                if metrics is not None:
                    ctx.attach_task(result, metrics)
            return BrowserRun(result, measurement)

        # The bundle is reproducible, so an unchanged build asks the same question of the same files:
        # the record is keyed by every file of the bundle as the browser loaded it, and reused.
        bundle = options_digest("web-bundle", sorted((p.relative_to(out_dir).as_posix(), file_sha256(p))
                                                     for p in out_dir.rglob("*") if p.is_file()))
        task_key = ctx.task_key() if ctx.eval_rows else ""
        key = options_digest("verify-web", WEB_VERIFICATION_SCHEMA, bundle, ctx.golden.digest_source(), task_key,
                             tools.chromium, tools.node)[:24]
        ran = ctx.stage_cache.record("verify", key, "verify web bundle (Chromium)", run, encode=BrowserRun.as_dict,
                                     decode=BrowserRun.from_dict, binds=bundle,
                                     describe=lambda r: "greedy = native" if r.result.greedy_match else "see report")
        ran.result.ships = ships
        return ran.result, ran.measurement

    # -- WebLLM ---------------------------------------------------------------------------------

    def _write_webllm(self, ctx: BuildContext, out_dir: Path, model_name: str, context: int) -> list[WebLLMVariant]:
        mlc = naming(ctx.ckpt)
        variants = []
        for quant_name in MLC_VARIANTS.get(ctx.options.quant or "", MLC_DEFAULT_VARIANTS):
            quant = MLC_QUANTIZATIONS[quant_name]
            model_id = f"{slug(model_name)}-{quant.name}-MLC"
            folder = out_dir / "webllm" / model_id / "resolve" / "main"
            weights = self._mlc_weights(ctx, quant)
            folder.mkdir(parents=True, exist_ok=True)
            for name in sorted(weights.files):
                place_artifact(weights.path(name), folder / name)
            tokenizer_files = [f for f in TOKENIZER_FILES if (ctx.ckpt.folder / f).is_file()]
            for name in tokenizer_files:
                shutil.copyfile(ctx.ckpt.folder / name, folder / name)
            config, template_note = chat_config(ctx.ckpt, ctx.contract, quant, context, PREFILL_CHUNK_SIZE,
                                                tokenizer_files)
            write_json(folder / CONFIG_FILE, config)
            match = match_library(ctx.ckpt, model_id, mlc.model_type, quant.name, context)
            model_lib = None
            if match.path is not None:
                model_lib = f"webllm/libs/{match.path.name}"
                place_artifact(match.path, out_dir / model_lib)
            variants.append(WebLLMVariant(model_id, quant, match.status, match.reason, model_lib,
                                          self._check_mlc(ctx, folder, quant, model_id, match.reason, template_note)))
        return variants

    def _mlc_weights(self, ctx: BuildContext, quant: MLCQuantization) -> CachedEntry[MLCWeights]:
        """The cached MLC weight files of this checkpoint in `quant` (written once, then reused)."""
        def write(folder: Path) -> MLCWeights:
            ctx.reporter.say(f"writing MLC weights {quant.name} (numpy)")
            cache = write_tensor_cache(ctx.ckpt, folder, quant)
            return MLCWeights(sum(r["nbytes"] for r in cache["records"]), len(cache["records"]))

        return ctx.stage_cache.entry(
            "mlc", options_digest("mlc-weights", ctx.ckpt_digest, quant.name)[:24], f"mlc weights {quant.name}", write,
            encode=dataclasses.asdict, decode=lambda data: MLCWeights(**data),
            describe=lambda w: f"{w.bytes / 2**20:.0f} MB in {w.shards} shards")

    def _check_mlc(self, ctx: BuildContext, folder: Path, quant: MLCQuantization, model_id: str, lib_reason: str,
                   template_note: str) -> VerificationResult:
        start = time.perf_counter()
        check = check_mlc_folder(ctx.ckpt, folder, quant)
        ctx.reporter.stage(f"verify mlc {quant.name} (structural)", False, time.perf_counter() - start,
                           f"{len(check.tensors)} tensors, worst relative RMS error {check.worst_rel_rms:.4f}")
        worst = sorted(check.tensors, key=lambda t: t.rel_rms, reverse=True)[:3]
        notes = [
            f"{len(check.tensors)} tensors in {check.shards} shards ({check.bytes / 2**20:.1f} MB): names, shapes, "
            f"dtypes, shard sizes and md5 match mlc-llm's layout; dequantization round trip within the format's bound",
            "largest relative RMS round-trip errors: "
            + ", ".join(f"{t.name} {t.rel_rms:.4f} (max abs {t.max_abs:.3g})" for t in worst),
            f"not run: {lib_reason}" if lib_reason else "not run: WebLLM needs WebGPU, absent in headless Chromium",
        ]
        mlc = naming(ctx.ckpt)
        layer_types = ctx.ckpt.config.get("layer_types")
        if mlc.sliding_window_period and layer_types:
            compiled = ["full_attention" if (i + 1) % mlc.sliding_window_period == 0 else "sliding_attention"
                        for i in range(len(layer_types))]
            if list(layer_types) != compiled:
                notes.append(
                    f"mlc-llm's {mlc.model_type} model assumes every {mlc.sliding_window_period}th layer is global; "
                    "this checkpoint's layer_types differ, so a library compiled by mlc-llm would attend differently"
                )
        if template_note:
            notes.append(template_note)
        return VerificationResult(
            artifact=f"{self.name}/webllm/{model_id}/resolve/main/tensor-cache.json", format="mlc",
            quant=quant.name, level="structural",
            runtime="WebLLM (not run)", gate="tensor names/shapes, shard sizes and md5, dequantization error bound",
            failures=check.failures, notes=notes, ships=[f"{self.name}/webllm/{model_id}"],
        )
