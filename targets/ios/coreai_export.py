"""Core AI conversion: a Hugging Face checkpoint -> a stateful .aimodel (iOS 27 / macOS 27) with coreai-torch.

The .aimodel is one Apple's Core AI language-model engines can drive. What they require, read from
apple/coreai-models at 86b363d (2026-12):

- One function, `main` (ModelConfig.function defaults to "main", swift/Sources/CoreAILanguageModels/
  InferenceEngines/ModelConfig.swift; a function named `main` makes the asset a `.dynamic` structure,
  swift/Sources/CoreAIShared/Runtime/ModelStructure.swift, which EngineFactory.swift drives with
  CoreAIPipelinedEngine, or CoreAISequentialEngine when asked).
- Exactly 2 inputs, read by position, not by name: [0] token ids, [1] position ids, both int32
  (CoreAISequentialEngine.swift "Model Contract" and init; CoreAIPipelinedEngine.swift EngineImpl.init).
  input_ids is [1, query] (the new tokens: the whole prompt, a prefill chunk of up to 512, or 1 in decode);
  position_ids is [1, cached + query] = 0..total-1, the positions of the whole context so far, not only the
  new tokens' (processTokenBatch: "Build position_ids: [0, 1, ..., processedTokenCount + batchSize - 1]").
  Batch is 1; both lengths are dynamic.
- 1+ outputs; the first is the logits, float16 (anything else is refused: unsupportedLogitsType),
  [1, query, vocab]: logits for every new position (the engine keeps the last for sampling, all of them for
  scoring).
- 2-4 states, updated in place: the KV cache pair (+ optional fixed states of hybrid models). With 2 states
  both are KV caches (StateHandlerFactory.swift). A state whose positions axis is dynamic (-1) is a
  growing cache: the engine allocates it at min(256, max_context_length) positions and doubles it, copying
  the prefix, up to max_context_length (StateHandler+NDArray.swift GrowingNDArrayState); a static one is
  allocated at min(max_context_length, its size) (KVCache+CoreAI.swift StaticKVCache), so a static size
  other than the context would not fit. The cache layout of Apple's own exports is [layers, 1, kv_heads,
  positions, head_dim], positions at axis 3 (python/src/coreai_models/primitives/macos/cache.py KVCache,
  KVCacheFactory.detectSequenceDim), fp16 or fp32, the state names `keyCache` / `valueCache`
  (python/src/coreai_models/_constants.py KEY_CACHE_NAME / VALUE_CACHE_NAME).
- The model finds where to write from the shapes: offset = len(position_ids) - len(input_ids); it writes
  the new keys/values at offset and attends over positions 0..total-1 (models/macos/gemma3_text.py
  Attention.forward, cache.update_and_fetch). Masks are the model's: causal, and for Gemma 3's local layers
  a sliding window of config.sliding_window (SDPA(is_causal=True, window_size=...)); nothing else comes in.
- Beside the .aimodel, metadata.json (0.2: kind "llm", assets.main, language.tokenizer / vocab_size /
  max_context_length, optional function_map and states) and tokenizer/ (export/bundle.py;
  swift/Sources/CoreAILanguageModels/Bundle/LanguageConfig.swift): targets.ios.coreai_bundle writes them.

The module converted is targets.ios.coreai_decoder.PositionDecoder: the Core ML path's decoder
(targets.ios.model.StatefulDecoder) with that interface, its masks and rotary angles computed from
position_ids, the cache as two state arguments with a dynamic positions axis. The exact fp16 rewrites are
sized and proven in fp32 by the same functions as for Core ML (targets.ios.convert.plan_fp16 /
prove_exact), so an fp16 .aimodel stays finite where Gemma's residual stream would pass 65,504.

The route: torch.export (dynamic lengths) -> run_decompositions(coreai_torch.get_decomp_table())
-> coreai_opt's cast_fp32_to_fp16 (NOT cast_to_16_bit_precision: its int32 -> int16 pass would
wrap token ids above 32,767), with the matrix products left in fp32 unless the precision is `fp16`
(PRECISIONS) -> TorchConverter(RELEASE) -> AIProgram.save_asset (minimum OS 27).
Weight compression is coreai-opt's weight-only quantizer on the decoder's nn.Linear modules, named
one by one (its global presets also reach the norm gains and fail there); the embedding table,
which a tied head reads too, stays fp16.

An .aimodel holds its program and metadata only: the build ships the tokenizer and edgepack.json
beside it. The build runs this in a child process (`python -m targets.ios.coreai_export REQUEST RESULT`).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packager.child_stage import serve_request
from packager.errors import BadInputError
from packager.optional_packages import OptionalPackages
from packager.peak_memory import own_peak_rss_mb

COREAI_TORCH_VERSION = "0.4.3"
COREAI_CORE_VERSION = "1.0.0b3"
COREAI_OPT_VERSION = "0.3.0"
# Bump when the converted program changes for the same checkpoint + options (keys the stage cache).
# 2: the result names the state positions (the context + a spare slot); 3: metadata.json without a creation date;
# 4: Apple's engine interface (input_ids + position_ids, a growing [layers, 1, kv_heads, positions, head_dim] cache)
# 5: the precision (matrix products in fp32 by default); the head as W @ h^T (coreai_decoder.output_layer)
COREAI_EXPORT_SCHEMA = 5
# save_asset's minimum_os: Core AI runs on iOS 27 / macOS 27 and later only.
MINIMUM_OS = "27"
# The formats `--ios-format` ships; "all" ships both.
FORMATS = ("coreml", "coreai")
ASSET_STEM = "model"
# Apple's engine interface (see above): the inputs in the order the engines read them, the states, the output,
# and the axis of the states that holds positions (dynamic: the engine grows it).
INPUTS = ("input_ids", "position_ids")
STATES = ("keyCache", "valueCache")
OUTPUT = "logits"
POSITIONS_AXIS = 3
# Trace-time lengths (all dynamic in the asset): a two-token step after three cached tokens, in a cache of eight.
EXAMPLE_QUERY, EXAMPLE_TOTAL, EXAMPLE_POSITIONS = 2, 5, 8
# The Python packages a conversion and its verification import, and where they come from.
# The packages of the .aimodel format (scripts/setup.sh installs them apart: coreai-core pins an older ml-dtypes).
COREAI_PACKAGES = OptionalPackages(
    "--ios-format coreai", {"coreai_torch": "coreai-torch", "coreai": "coreai-core", "coreai_opt": "coreai-opt"},
    "requirements/coreai.txt", "--ios-format coreml")


# How the .aimodel computes (--coreai-precision). Weights, activations, caches and logits are fp16 in both.
# Apple's reference interpreter computes an fp16 matrix product as a sequential dot product with every product and
# partial sum rounded to fp16 (bit-identical on a 2,048 -> 64 linear); on the bundled fine-tune that put top-1 at
# 0.970 on 202 golden positions, while the same program with its matrix products in fp32 scores 0.994 on all 509
# (its 3 misses are fp32 ties) and runs 12-18x faster in the interpreter (fp32 products vectorized, fp16 scalar).
PRECISIONS = {
    "mixed": "fp16 weights, activations and caches; matrix products (linears, attention, output layer) computed in "
             "fp32",
    "fp16": "fp16 throughout, matrix products too (the arithmetic of Apple's own Core AI presets)",
}
DEFAULT_PRECISION = "mixed"


def kept_in_fp32(precision: str) -> frozenset[Any]:
    """The aten ops cast_fp32_to_fp16 leaves in fp32 for `precision` (it casts their inputs up and results down)."""
    import torch

    if precision == "fp16":
        return frozenset()
    return frozenset({torch.ops.aten.mm.default, torch.ops.aten.bmm.default, torch.ops.aten.addmm.default})


@dataclass(frozen=True)
class CoreAICompression:
    """How the decoder's linear weights are stored in the .aimodel (everything else is fp16; PRECISIONS says in
    what arithmetic they are multiplied).

    `dtype`: "fp16" (no quantization), "int8" or "int4" (coreai-opt, symmetric, weight-only);
    `block_size`: 0 for one scale per output channel, else blocks of that many input columns.
    """

    name: str
    summary: str
    dtype: str
    block_size: int
    bits: float

    @property
    def asset_name(self) -> str:
        return f"{ASSET_STEM}-{'fp16' if self.name == 'none' else self.name}.aimodel"


COREAI_COMPRESSIONS: dict[str, CoreAICompression] = {c.name: c for c in (
    CoreAICompression("int8", "int8 symmetric per-channel weights on every decoder linear (coreai-opt, weight-only); "
                      "embedding / tied head fp16", "int8", 0, 8.0),
    CoreAICompression("int4", "int4 symmetric per-block-32 weights on every decoder linear (coreai-opt, weight-only); "
                      "embedding / tied head fp16", "int4", 32, 4.5),
    CoreAICompression("none", "fp16 weights", "fp16", 0, 16.0),
)}
# What `--coreai-compression auto` ships: the first rung whose .aimodel passes its gate (the last ships either way).
COREAI_LADDER = ("int8", "none")


def coreai_compression_named(name: str) -> CoreAICompression:
    """Return the Core AI compression called `name`, or raise a BadInputError listing the known ones."""
    if name not in COREAI_COMPRESSIONS:
        raise BadInputError(f"--coreai-compression {name}: unknown; choose auto or one of "
                            f"{', '.join(COREAI_COMPRESSIONS)}.")
    return COREAI_COMPRESSIONS[name]


@dataclass
class CoreAIExportRequest:
    """What the child process converts (JSON on disk)."""

    checkpoint: str
    out_dir: str
    compression: str
    max_context: int
    sequences: list[list[int]]
    name: str
    fp16_rewrites: bool = True
    precision: str = DEFAULT_PRECISION
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)


def quantize_linears(decoder: Any, compression: CoreAICompression, example: tuple[Any, ...]) -> tuple[Any, int]:
    """The decoder with coreai-opt's weight-only quantization on each nn.Linear, named one by one; and their count.

    Eager mode: the graph mode exports the decoder itself, with fixed lengths. finalize() turns the fake
    quantizers into the custom ops coreai-torch maps to Core AI's compressed constants.
    """
    import coreai_opt
    import torch
    from coreai_opt.quantization import (
        ExecutionMode,
        ModuleQuantizerConfig,
        QuantizationSpec,
        Quantizer,
        QuantizerConfig,
    )
    from coreai_opt.quantization.spec import PerBlockGranularity, PerChannelGranularity, QuantizationScheme

    granularity = (PerBlockGranularity(block_size=compression.block_size) if compression.block_size
                   else PerChannelGranularity())
    weight = QuantizationSpec(dtype=getattr(torch, compression.dtype), qscheme=QuantizationScheme.SYMMETRIC,
                              granularity=granularity)
    linear = ModuleQuantizerConfig(op_input_spec=None, op_output_spec=None, op_state_spec={"weight": weight})
    names = [name for name, module in decoder.named_modules() if isinstance(module, torch.nn.Linear)]
    # Anchored: module_name_configs keys are regular expressions, and blocks.1.q_proj must not match blocks.11.
    config = QuantizerConfig(global_config=None, module_name_configs={f"^{n}$": linear for n in names},
                             execution_mode=ExecutionMode.EAGER)
    quantizer = Quantizer(decoder, config)
    quantizer.prepare(example)
    return quantizer.finalize(backend=coreai_opt.ExportBackend.CoreAI), len(names)


def exported_program(decoder: Any, max_context: int) -> Any:
    """torch.export of the decoder with dynamic query / total / cache lengths, decomposed for coreai-torch."""
    import coreai_torch
    import torch

    query = torch.export.Dim("query", min=1, max=max_context)
    total = torch.export.Dim("total", min=1, max=max_context)
    positions = torch.export.Dim("positions", min=1, max=max_context)
    cache = {POSITIONS_AXIS: positions}
    shapes = {"input_ids": {1: query}, "position_ids": {1: total}, "keyCache": cache, "valueCache": cache}
    with torch.no_grad():
        program = torch.export.export(decoder, example_inputs(decoder), dynamic_shapes=shapes, strict=False)
    return program.run_decompositions(coreai_torch.get_decomp_table())


def example_inputs(decoder: Any) -> tuple[Any, ...]:
    """input_ids, position_ids and the two caches of a traced step (their lengths are dynamic in the export)."""
    import torch

    cache = decoder.cache_shape(EXAMPLE_POSITIONS)
    return (torch.zeros(1, EXAMPLE_QUERY, dtype=torch.int32),
            torch.arange(EXAMPLE_TOTAL, dtype=torch.int32).unsqueeze(0),
            torch.zeros(cache, dtype=torch.float16), torch.zeros(cache, dtype=torch.float16))


def save_aimodel(program: Any, path: Path, description: str, custom: dict[str, Any], precision: str) -> None:
    """Convert the exported program (fp16, but for what `precision` keeps in fp32) and save it as `path` with
    edgepack's metadata."""
    from coreai.authoring import OSVersion
    from coreai.runtime import AIModelAssetMetadata
    from coreai_opt.casting import cast_fp32_to_fp16
    from coreai_torch import TorchConverter

    cast_fp32_to_fp16(program, ignored_ops=kept_in_fp32(precision))
    converter = TorchConverter(mode=TorchConverter.Mode.RELEASE).add_exported_program(
        program, input_names=list(INPUTS), state_names=list(STATES), output_names=[OUTPUT])
    metadata = AIModelAssetMetadata()
    metadata.author = "edgepack"
    metadata.model_description = description
    for key, value in custom.items():
        metadata.set_custom(key, value)
    asset = converter.to_coreai().save_asset(path, metadata=metadata, minimum_os=getattr(OSVersion, f"v{MINIMUM_OS}"))

    def undated(stamped: AIModelAssetMetadata) -> None:
        # save_asset stamps the wall-clock time into metadata.json; a build's bytes must not depend on it.
        stamped.creation_date = None

    asset.update_metadata(updates=undated)
    # Its keys come out in a different order on every save: written again, sorted.
    document = path / "metadata.json"
    document.write_text(json.dumps(json.loads(document.read_text(encoding="utf-8")), indent=2, sort_keys=True) + "\n",
                        encoding="utf-8")


def export_aimodel(request: CoreAIExportRequest) -> dict[str, Any]:
    """Convert once for the requested compression; return what was written and what it cost."""
    from targets.ios.convert import load_source, plan_fp16, prove_exact, sliding_window
    from targets.ios.coreai_decoder import PositionDecoder

    start = time.perf_counter()
    compression = coreai_compression_named(request.compression)
    if request.precision not in PRECISIONS:
        raise BadInputError(f"--coreai-precision {request.precision}: unknown; choose one of {', '.join(PRECISIONS)}.")
    model, spec, config = load_source(Path(request.checkpoint))
    plan, ranges = plan_fp16(model, spec, config, request)  # reads the fields both requests have
    proof = prove_exact(model, spec, config, plan, request)
    window = sliding_window(spec, config)
    decoder = PositionDecoder(model, spec, request.max_context, plan, window).eval()
    architecture = str(config.get("architectures", [spec.hf_classes[0]])[0])
    del model
    gc.collect()
    quantized = 0
    if compression.dtype != "fp16":
        decoder, quantized = quantize_linears(decoder, compression, example_inputs(decoder))
    stamp = time.perf_counter()
    program = exported_program(decoder, request.max_context)
    del decoder
    gc.collect()
    custom: dict[str, Any] = {
        "edgepack.name": request.name, "edgepack.architecture": architecture,
        "edgepack.compression": compression.name, "edgepack.precision": request.precision,
        "edgepack.max_context": request.max_context,
        "edgepack.sliding_window": window or 0, "edgepack.fp16_rewrites": json.dumps(plan.as_dict()),
        **request.metadata,
    }
    out = Path(request.out_dir) / compression.asset_name
    save_aimodel(program, out, f"{request.name}: {compression.summary}; {PRECISIONS[request.precision]} (edgepack)",
                 custom, request.precision)
    convert_seconds = time.perf_counter() - stamp
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"asset": out.name, "compression": compression.name, "summary": compression.summary,
            "precision": request.precision,
            "quantized_linears": quantized, "size_mb": round(size / 2**20, 2), "fp16_plan": plan.as_dict(),
            "ranges": ranges, "proof": proof, "max_context": request.max_context,
            "inputs": list(INPUTS), "states": list(STATES), "sliding_window": window,
            "metadata": custom,
            "minimum_os": MINIMUM_OS, "coreai_torch": COREAI_TORCH_VERSION,
            "seconds": round(time.perf_counter() - start, 1), "convert_seconds": round(convert_seconds, 1),
            "peak_rss_mb": own_peak_rss_mb()}


def main(argv: list[str] | None = None) -> int:
    """Child-process entry (packager.child_stage): a CoreAIExportRequest in, the conversion's result out."""
    return serve_request(__doc__.splitlines()[0], lambda request: export_aimodel(CoreAIExportRequest(**request)), argv)


if __name__ == "__main__":
    sys.exit(main())
