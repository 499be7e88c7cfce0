"""Core ML conversion: a Hugging Face checkpoint -> a stateful fp16 ML Program (.mlpackage, iOS 18).

The route that works with the pinned stack (coremltools 9.0, torch 2.13, numpy 2.4): the decoder of
targets.ios.model (KV cache as registered buffers), torch.jit.trace (much faster than
torch.export here), ct.convert with the buffers as ct.StateType, ct.RangeDim sequence lengths,
fp16 compute and iOS 18 as the deployment target, then optional weight compression with
coremltools.optimize. The two incompatibilities of coremltools 9.0 are shimmed in targets.ios.compat.

Before converting, the fp32 decoder's activation ranges are measured on the golden token sequences
and the exact fp16 rewrites are sized from them (Fp16Plan); the rewritten decoder is then compared
with the original transformers model in fp32 (prefill and decode), and the export fails if it is
not the same function. The measured ranges and the proof are part of the result.

The build runs this in a child process (`python -m targets.ios.convert REQUEST RESULT`):
the memory of a conversion returns to the OS when the child exits, and its peak RSS is measured.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packager.child_stage import serve_request
from packager.errors import BadInputError, InternalError
from packager.peak_memory import own_peak_rss_mb, release_free_memory
from targets.ios.layouts import coreml_layout

COREMLTOOLS_VERSION = "9.0"
# Bump when the converted program changes for the same checkpoint + options (keys the stage cache).
# 12: a checkpoint above the streaming threshold converted in parts and joined (targets.ios.convert_parts);
# 11: calibration statistics on one torch thread (the same bytes whatever --jobs); 10: no conversion date in the
# package's metadata (9: rotary angles and caches from the caller)
EXPORT_SCHEMA = 12
CONVERSION_DATE = "com.github.apple.coremltools.conversion_date"
DEPLOYMENT_TARGET = "iOS18"
COMPRESSIONS = ("int4", "int4-adapter", "int4-mixed", "int8", "palettize4", "none")
# What `--compression int4` (the default) ships: the first rung whose package passes its gate. Each rung
# is screened in eager PyTorch first (same quantized weights), so only a promising one is converted.
INT4_LADDER = ("int4", "int4-mixed", "int8")
# The same for a LoRA fine-tune: its base at 4 bits with the adapter kept apart in fp16, where a merge at 4 bits
# rounds a small fine-tune's deltas back onto the base's grid (a few MB more than int4). int4-mixed is left out:
# a ladder's rungs must each be at least as precise as the ones before (packager.ladder), and a merge whose o/down
# projections are at 4 bits is not that against int4-adapter.
ADAPTER_LADDER = ("int4-adapter", "int8")
# Core ML's Neural Engine does not take a dimension above this; a bigger vocabulary needs a split head.
ANE_MAX_DIM = 16384
# The rewritten fp32 decoder must match transformers to this fraction of the largest logit.
PROOF_TOLERANCE = 1e-4
PACKAGE_STEM = "model"
# The residual stream between the parts of a decoder converted in parts (joined into one program afterwards).
PART_INPUT, PART_OUTPUT = "residualIn", "residualOut"
# In the MIL const names of an adapted linear's A and B (packager.adapted_linear.AdaptedLinear's parameters).
LORA_CONST = "_lora_"


# Bits per weight of each storage format: an affine block of 32 adds an fp16 scale and a uint8 zero point;
# a 16-entry palette per 16 rows adds next to nothing.
FORMAT_BITS: dict[str, float] = {"fp16": 16.0, "uint8-b32": 8 + 24 / 32, "uint4-b32": 4 + 24 / 32, "palettize4": 4.0}


@dataclass(frozen=True)
class Compression:
    """How decoder linears and the vocabulary-sized tables are stored.

    `linears`: "uint4-b32" / "uint8-b32" (affine, blocks of 32 along the input, searched steps
    weighted by calibration activations: see coreml_quantize), "palettize4" (k-means, a 16-entry
    table per 16 output rows) or "fp16".
    `eight_bit`: module-name fragments of decoder linears kept at 8 bits (affine, blocks of 32);
    `tables`: the embedding / lm_head ("uint8-b32" or "fp16").
    `adapter`: a LoRA input's adapted linears hold the base's weights (compressed as above) and the adapter's
    A and B (fp16) as ops of their own: y = x W_base^T + (x A^T) B^T.
    """

    name: str
    summary: str
    linears: str
    tables: str
    eight_bit: tuple[str, ...] = ()
    adapter: bool = False

    def bits(self, name: str, shape: tuple[int, ...]) -> float:
        """Bits per value this compression stores the checkpoint tensor `name` with (RAM estimates before a build)."""
        if len(shape) < 2:
            return FORMAT_BITS["fp16"]
        if "embed_tokens" in name or name.startswith("lm_head"):
            return FORMAT_BITS[self.tables]
        if self.linears in ("fp16", "palettize4"):
            return FORMAT_BITS[self.linears]
        return FORMAT_BITS[f"uint{self.linear_bits(name)}-b32"]

    def linear_bits(self, name: str) -> int:
        """Bits of the affine decoder linear called `name` (a MIL const or a transformers module name)."""
        if self.linears == "uint8-b32" or any(fragment in name for fragment in self.eight_bit):
            return 8
        return 4


COMPRESSION: dict[str, Compression] = {c.name: c for c in (
    Compression("int4", "int4 affine per-block-32 linear weights (searched, activation-weighted steps); "
                "embedding / lm_head 8-bit per-block-32", "uint4-b32", "uint8-b32"),
    Compression("int4-adapter", "int4 affine per-block-32 base linear weights (searched) with the LoRA adapter "
                "applied apart in fp16; embedding / lm_head 8-bit per-block-32", "uint4-b32", "uint8-b32",
                adapter=True),
    Compression("int4-mixed", "as int4, but the linears reading the residual stream (q/k/v, gate/up) 8-bit",
                "uint4-b32", "uint8-b32", eight_bit=("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")),
    Compression("int8", "int8 affine per-block-32 linear weights and embedding / lm_head (searched steps)",
                "uint8-b32", "uint8-b32"),
    Compression("palettize4", "4-bit palettized linear weights (k-means, a 16-entry table per 16 rows); "
                "embedding / lm_head 8-bit per-block-32", "palettize4", "uint8-b32"),
    Compression("none", "fp16 weights", "fp16", "fp16"),
)}


def compression_named(name: str) -> Compression:
    if name not in COMPRESSION:
        raise BadInputError(f"--compression {name}: unknown; choose one of {', '.join(COMPRESSIONS)}.")
    return COMPRESSION[name]


@dataclass
class ExportRequest:
    """What the child process converts (JSON on disk)."""

    checkpoint: str
    out_dir: str
    compressions: list[str]
    max_context: int
    sequences: list[list[int]]
    name: str
    fp16_rewrites: bool = True
    lm_head_chunk: int = 0
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    # A LoRA input's packager.adapter.AdapterSource (as a dict): its adapted linears keep the adapter apart.
    adapter: dict[str, Any] | None = None
    # A fleet's specialists (targets.ios.fleet) store their base in the same bytes, so that one multifunction
    # package holds it once: the fp16 rewrites given (Fp16Plan.as_dict, sized for every specialist) instead of
    # sized on this model, and the quantizer's column weights averaged over these checkpoints (every specialist's
    # merged model: the activations the shared base sees), folders by their content digest.
    fp16_plan: dict[str, Any] | None = None
    importance_from: dict[str, str] | None = None


def load_source(folder: Path) -> tuple[Any, Any, dict[str, Any]]:
    """The checkpoint in fp32 (eager attention, the reference's own setting), its spec row and config."""
    from packager.architectures import spec_for_config
    from packager.verify.fp32_model import load_fp32_whole

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    spec = spec_for_config(config, str(folder / "config.json"))
    coreml_layout(spec)  # UnsupportedError before the model is loaded
    return load_fp32_whole(folder, "eager"), spec, config


def sliding_window(spec: Any, config: dict[str, Any]) -> int | None:
    return int(config["sliding_window"]) if coreml_layout(spec).sliding_attention_mask else None


def column_importance(model: Any, folder: Path) -> dict[str, Any]:
    """Mean squared input activation per column of every decoder linear on the calibration text, by layer key.

    The fp16 rewrites only scale whole tensors, so these weights hold for the converted decoder too.
    """
    from packager.calibration import calibration_ids, decoder_linear_key, linear_input_stats

    stats = linear_input_stats(model, calibration_ids(folder), "mean_square")
    return {key: value.numpy() for name, value in stats.items() if (key := decoder_linear_key(name))}


def shared_importance(folders: list[Path]) -> dict[str, Any]:
    """column_importance averaged over the checkpoints in `folders` (a fleet's specialists), each loaded and freed
    in turn before the converted model is: every specialist then quantizes the base's weights with the same column
    weights, and those weigh the activations of every specialist, since each one's function runs on that base."""
    from packager.verify.fp32_model import load_fp32_whole

    total: dict[str, Any] = {}
    for folder in folders:
        model = load_fp32_whole(folder, "eager")
        for key, value in column_importance(model, folder).items():
            total[key] = total[key] + value if key in total else value
        del model
        release_free_memory()
    return {key: value / len(folders) for key, value in total.items()}


def plan_fp16(model: Any, spec: Any, config: dict[str, Any], request: ExportRequest,
              lora: dict[str, Any] | None = None, given: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """Size the exact rewrites from measured ranges (or take the `given` plan, a fleet's, measuring the ranges it
    leaves); return the plan and the ranges before/after. `request` may be a Core AI request: only the fields
    both kinds have are read."""
    import torch

    from targets.ios.model import StatefulDecoder, measure_ranges

    window = sliding_window(spec, config)

    def ranges_with(plan: Any) -> dict[str, float]:
        # A decoder holds its own (rescaled) copy of the weights: one at a time. Two of them and the probe were
        # alive at once, 16.3 GB for a Gemma 3 1B (4 GB in fp32).
        decoder = StatefulDecoder(model, spec, request.max_context, plan, cache_dtype=torch.float32, lora=lora)
        ranges = measure_ranges(decoder, request.sequences, window)
        del decoder
        release_free_memory()
        return ranges

    return plan_from_ranges(ranges_with, spec, config, request.fp16_rewrites, given)


def plan_from_ranges(ranges_with: Any, spec: Any, config: dict[str, Any], fp16_rewrites: bool,
                     given: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """The fp16 plan and its report, from `ranges_with(plan)`: the fp32 decoder's measured ranges under a plan."""
    from targets.ios.model import FP16_BUDGET, Fp16Plan, plan_rewrites

    n_layers = int(config["num_hidden_layers"])
    before = ranges_with(Fp16Plan(False))
    plan = Fp16Plan(False)
    after = before
    if given is not None:
        plan = Fp16Plan(**given)
        after = ranges_with(plan) if plan.enabled else before
    elif fp16_rewrites:
        plan = Fp16Plan(True)
        for _ in range(4):
            after = ranges_with(plan)
            bigger = plan_rewrites(after, n_layers, plan, coreml_layout(spec).post_norms)
            if bigger == plan:
                break
            plan = bigger
    # The logits are the model's output, not a rewritable intermediate; the simulation judges them.
    worst = max(((site, v) for site, v in after.items() if site != "logits"), key=lambda kv: kv[1])
    report = {
        "budget": FP16_BUDGET,
        "before": {"max_site": max(before.items(), key=lambda kv: kv[1]), "residual": before.get("residual")},
        "after": {"max_site": worst, "residual": after.get("residual")},
        "within_budget": worst[1] <= FP16_BUDGET,
    }
    return plan, report


def proof_steps(ids: list[int], window: int | None) -> list[tuple[Any, Any, Any]]:
    """How the exactness proof drives a sequence: (token ids, full mask, sliding mask) of a prefill of all but
    the last 4 tokens, then of each of those decoded one at a time."""
    import torch

    from targets.ios.model import additive_masks

    split = max(1, len(ids) - 4)
    steps = [(torch.tensor([ids[:split]], dtype=torch.int32), *additive_masks(split, split, window))]
    steps += [(torch.tensor([[ids[t]]], dtype=torch.int32), *additive_masks(1, t + 1, window))
              for t in range(split, len(ids))]
    return steps


def prove_exact(model: Any, spec: Any, config: dict[str, Any], plan: Any, request: ExportRequest,
                lora: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compare the rewritten decoder with transformers in fp32 (prefill + 4 decode steps per sequence); with
    `lora`, the decoder's adapted linears apply the adapter apart and transformers holds the merged model."""
    import torch

    from targets.ios.model import StatefulDecoder

    window = sliding_window(spec, config)
    decoder = StatefulDecoder(model, spec, request.max_context, plan, cache_dtype=torch.float32, lora=lora)
    pairs = []
    with torch.no_grad():
        for ids in request.sequences:
            ids = ids[:request.max_context]
            decoder.reset()
            out = torch.cat([decoder(x, full, sliding)[0] for x, full, sliding in proof_steps(ids, window)])
            pairs.append((out, model(torch.tensor([ids])).logits[0]))
    del decoder  # its copy of the weights, before the conversion's decoder makes another
    release_free_memory()
    return proof_of(pairs, request.checkpoint)


def proof_of(pairs: list[tuple[Any, Any]], checkpoint: str) -> dict[str, Any]:
    """The proof's numbers from (rewritten decoder's logits, transformers' logits) per sequence; an error when
    they differ by more than PROOF_TOLERANCE of the largest logit."""
    worst, scale, top1_same, positions = 0.0, 0.0, 0, 0
    for out, ref in pairs:
        worst = max(worst, float((out - ref).abs().max()))
        scale = max(scale, float(ref.abs().max()))
        top1_same += int((out.argmax(-1) == ref.argmax(-1)).sum())
        positions += int(ref.shape[0])
    relative = worst / max(scale, 1e-12)
    proof = {"max_abs_diff": worst, "max_abs_logit": scale, "relative": relative, "positions": positions,
             "top1_identical": top1_same, "tolerance": PROOF_TOLERANCE, "exact": relative <= PROOF_TOLERANCE}
    if not proof["exact"]:
        raise InternalError(f"the fp16-safe rewrite of {checkpoint} is not exact in fp32: logits differ from "
                            f"transformers by {worst:.3g} (relative {relative:.2e} > {PROOF_TOLERANCE}). This is a bug "
                            "in targets/ios/model.py for this architecture.")
    return proof


def convert(decoder: Any, window: int | None, max_context: int) -> Any:
    """Trace the fp16-state decoder (or a part of it: StatefulDecoder's `layers`) and convert it to an ML Program
    for iOS 18."""
    import coremltools as ct
    import numpy as np
    import torch

    from targets.ios import compat as coreml_compat
    from targets.ios.model import additive_masks

    coreml_compat.apply()
    full, sliding = additive_masks(2, 3, window)
    first = (torch.zeros(1, 2, dtype=torch.int32) if decoder.first
             else torch.zeros(1, 2, decoder.hidden))
    example = (first, full) + ((sliding,) if sliding is not None else ())
    with torch.no_grad():
        traced = torch.jit.trace(decoder, example, check_trace=False)
    seq = ct.RangeDim(lower_bound=1, upper_bound=max_context, default=1)
    total = ct.RangeDim(lower_bound=1, upper_bound=max_context, default=1)
    inputs = [ct.TensorType(name="inputIds", shape=(1, seq), dtype=np.int32) if decoder.first
              else ct.TensorType(name=PART_INPUT, shape=(1, seq, decoder.hidden), dtype=np.float16),
              ct.TensorType(name="fullAttentionMask", shape=(1, 1, seq, total), dtype=np.float16)]
    if window is not None:
        inputs.append(ct.TensorType(name="slidingAttentionMask", shape=(1, 1, seq, total), dtype=np.float16))
    states = [ct.StateType(wrapped_type=ct.TensorType(shape=tuple(getattr(decoder, n).shape), dtype=np.float16),
                           name=n) for n in ("keyCache", "valueCache")]
    output = "logits" if decoder.last else PART_OUTPUT
    return ct.convert(traced, inputs=inputs, outputs=[ct.TensorType(name=output, dtype=np.float16)],
                      states=states, minimum_deployment_target=ct.target.iOS18,
                      compute_precision=ct.precision.FLOAT16, compute_units=ct.ComputeUnit.CPU_AND_NE,
                      skip_model_load=True)


def compress(mlmodel: Any, compression: Compression,
             importance: dict[str, Any] | None = None) -> tuple[Any, dict[str, int]]:
    """Compress weights per const: decoder linears by the recipe, vocabulary tables 8-bit, rotary tables never.

    `importance`: per-column error weights of the decoder linears (coreml_quantize.const_key keys).
    The package's program is loaded once, and its consts are listed from it directly: coremltools'
    get_weights_metadata loaded it a second time and computed every weight's sparsity and unique values
    (11 of the 57 s of Gemma 3 270M's int4-adapter compression), which nothing here reads.
    """
    from coremltools.models.utils import _apply_graph_pass

    if compression.linears == "fp16":
        return mlmodel, {}
    if compression.linears == "palettize4":
        return _palettized(mlmodel, compression, importance)
    quantizer = const_quantization_pass(compression, importance)
    return _apply_graph_pass(mlmodel, quantizer), quantizer.counts


def _palettized(mlmodel: Any, compression: Compression,
                importance: dict[str, Any] | None) -> tuple[Any, dict[str, int]]:
    """k-means palettes on the decoder linears (coremltools' pass, its own round trip), then the 8-bit tables."""
    import coremltools.optimize.coreml as cto
    from coremltools.models.utils import _apply_graph_pass

    from targets.ios.quantize import searched_quantizer_pass

    weights = {name: {child.op_type for child in meta.child_ops}
               for name, meta in cto.get_weights_metadata(mlmodel, weight_threshold=2048).items()}
    four, eight = split_by_bits(weights, compression)
    palette = cto.OpPalettizerConfig(mode="kmeans", nbits=4, granularity="per_grouped_channel", group_size=16)
    mlmodel = cto.palettize_weights(mlmodel, cto.OptimizationConfig(
        op_name_configs={name: (palette if name in four else None) for name in weights}))
    uint8 = block_config("uint8")
    configs = {name: (uint8 if name in eight else None) for name in weights}
    quantizer = searched_quantizer_pass(cto.OptimizationConfig(op_name_configs=configs), importance)
    return _apply_graph_pass(mlmodel, quantizer), {"8-bit": len(eight), "palettize4": len(four)}


def large_consts(prog: Any, threshold: int = 2048) -> dict[str, set[str]]:
    """Each const of at least `threshold` values in the program -> the op types that read it (every block)."""
    import numpy as np

    found: dict[str, set[str]] = {}

    def visit(block: Any) -> None:
        for op in block.operations:
            for inner in op.blocks:
                visit(inner)
            if op.op_type == "const" and isinstance(op.val.val, np.ndarray) and op.val.val.size >= threshold:
                found[op.name] = {child.op_type for child in op.outputs[0].child_ops}

    for function in prog.functions.values():
        visit(function)
    return found


def block_config(dtype: str) -> Any:
    """coremltools' config for affine `dtype` weights with a scale and offset per block of 32 input values."""
    import coremltools.optimize.coreml as cto

    return cto.OpLinearQuantizerConfig(mode="linear", dtype=dtype, granularity="per_block", block_size=32)


def split_by_bits(weights: dict[str, set[str]], compression: Compression) -> tuple[list[str], list[str]]:
    """(4-bit or palettized consts, 8-bit consts) of a program's large consts under `compression`."""
    four, eight = [], []
    for name, kinds in weights.items():
        if LORA_CONST in name:
            continue  # an adapter's A and B stay fp16: they are what a 4-bit merge would round away
        if "gather" in kinds or name.startswith(("embedding", "head")):
            eight.append(name)
        elif kinds == {"linear"}:
            eight_bit = compression.linears != "palettize4" and compression.linear_bits(name) == 8
            (eight if eight_bit else four).append(name)
    return four, eight


def const_quantization_pass(compression: Compression, importance: dict[str, Any] | None) -> Any:
    """A graph pass that lists the program's large consts, chooses 4 or 8 bits for each, and quantizes them
    (searched_affine); afterwards its `counts` say how many got which."""
    import coremltools.optimize.coreml as cto
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass

    from targets.ios.quantize import searched_quantizer_pass

    uint8, uint4 = block_config("uint8"), block_config("uint4")

    class ConstQuantization(AbstractGraphPass):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.counts: dict[str, int] = {}

        def apply(self, prog: Any) -> None:
            weights = large_consts(prog)
            four, eight = split_by_bits(weights, compression)
            self.counts = {"8-bit": len(eight), "4-bit": len(four)}
            configs = {name: uint4 if name in four else uint8 if name in eight else None for name in weights}
            searched_quantizer_pass(cto.OptimizationConfig(op_name_configs=configs), importance).apply(prog)

    return ConstQuantization()


def package_name(compression: Compression, lm_head_chunk: int) -> str:
    stem = f"{PACKAGE_STEM}-{'fp16' if compression.name == 'none' else compression.name}"
    return stem + ("-ane" if lm_head_chunk else "") + ".mlpackage"


def make_deterministic(package: Path) -> None:
    """Give a saved .mlpackage the same bytes for the same program.

    coremltools writes a fresh uuid4 per Manifest.json item on every save (Core ML only needs them
    unique within the package: they become ids derived from each item's path), and serializes the
    protobuf's map fields in arbitrary order (re-serialized with deterministic=True, same message).
    """
    from coremltools.proto import Model_pb2

    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    entries = manifest["itemInfoEntries"]
    renamed = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, f"edgepack:{item['path']}")) for old, item in entries.items()}
    manifest["itemInfoEntries"] = {renamed[old]: item for old, item in sorted(entries.items(),
                                                                             key=lambda kv: kv[1]["path"])}
    manifest["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    manifest_path.write_text(json.dumps(manifest, indent=4) + "\n", encoding="utf-8")
    spec_path = root_spec_path(package)
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))


def root_spec_path(package: Path) -> Path:
    """The model spec (protobuf) file of a saved .mlpackage, as its Manifest.json names it."""
    manifest = json.loads((package / "Manifest.json").read_text(encoding="utf-8"))
    return package / "Data" / manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"]


def package_bytes(package: Path) -> int:
    """The bytes of every file in a package folder."""
    return sum(p.stat().st_size for p in package.rglob("*") if p.is_file())


def _describe(mlmodel: Any, name: str, compression: Compression, user: dict[str, str]) -> None:
    mlmodel.short_description = f"{name}: {compression.summary} (edgepack)"
    mlmodel.author = "edgepack"
    metadata = mlmodel.user_defined_metadata
    metadata.update({**user, "edgepack.compression": compression.name})
    # coremltools stamps the day of conversion: a package from the stage cache then differed from the same package
    # converted on another day (found when a build crossed midnight).
    if CONVERSION_DATE in metadata:
        del metadata[CONVERSION_DATE]


def export_package(request: ExportRequest) -> dict[str, Any]:
    """Convert once, then save one package per requested compression; return what was done and what it cost.

    A checkpoint too large to hold in fp32 next to its conversion is converted in parts (targets.ios.convert_parts).
    """
    from packager.adapter import AdapterSource, adapted_base_weights
    from packager.verify.fp32_model import load_fp32_streamed
    from targets.ios.model import StatefulDecoder

    start = time.perf_counter()
    folder = Path(request.checkpoint)
    compressions = [compression_named(name) for name in request.compressions]
    # One traced program per request: an adapter kept apart is in every package of it, or in none.
    if any(c.adapter != bool(request.adapter) for c in compressions if c.name != "none"):
        raise InternalError(f"export request {request.compressions} with adapter={bool(request.adapter)}: "
                            "compressions that keep the adapter apart and those that merge it need separate requests")
    # A LoRA input and a fleet's specialists are converted whole (the parts path reads one checkpoint's blocks).
    whole = request.adapter or request.fp16_plan or request.importance_from
    streamed = None if whole else load_fp32_streamed(folder, "eager")
    if streamed is not None:
        from targets.ios.convert_parts import export_in_parts

        return export_in_parts(request, streamed, compressions, start)
    quantized = any(c.linears != "fp16" for c in compressions)
    importance = (shared_importance([Path(f) for f in request.importance_from.values()])
                  if quantized and request.importance_from else None)
    model, spec, config = load_source(folder)
    if importance is None:
        importance = column_importance(model, folder) if quantized else {}
    lora = adapted_base_weights(AdapterSource(**request.adapter)) if request.adapter else None
    plan, ranges = plan_fp16(model, spec, config, request, lora, request.fp16_plan)
    proof = prove_exact(model, spec, config, plan, request, lora)
    window = sliding_window(spec, config)
    decoder = StatefulDecoder(model, spec, request.max_context, plan, request.lm_head_chunk, lora=lora).eval()
    del model, lora  # peak memory: the decoder holds what it needs (its rescaled copies, the unscaled weights)
    release_free_memory()
    stamp = time.perf_counter()
    converted = convert(decoder, window, request.max_context)
    convert_seconds = time.perf_counter() - stamp
    del decoder
    release_free_memory()
    user = package_metadata(request, spec, config, plan, window)
    fp16_path = save_fp16(converted, Path(request.out_dir), request, user)
    del converted
    release_free_memory()
    saved = compressed_packages(fp16_path, request, compressions, user, importance)
    packages = {name: {**info, "size_mb": round(package_bytes(Path(request.out_dir) / info["package"]) / 2**20, 1)}
                for name, info in saved.items()}
    return {"packages": packages, "fp16_plan": plan.as_dict(), "ranges": ranges, "proof": proof,
            "max_context": request.max_context, "lm_head_chunk": request.lm_head_chunk,
            "sliding_window": window, "metadata": user, "deployment_target": DEPLOYMENT_TARGET,
            "seconds": round(time.perf_counter() - start, 1), "convert_seconds": round(convert_seconds, 1),
            "peak_rss_mb": own_peak_rss_mb()}


def package_metadata(request: ExportRequest, spec: Any, config: dict[str, Any], plan: Any,
                     window: int | None) -> dict[str, str]:
    """The user-defined metadata every package of this request carries (swift-transformers reads some of it)."""
    user = {
        "co.huggingface.exporters.name": request.name,
        "co.huggingface.exporters.task": "text-generation",
        "co.huggingface.exporters.architecture": str(config.get("architectures", [spec.hf_classes[0]])[0]),
        "co.huggingface.exporters.framework": "pytorch",
        "co.huggingface.exporters.precision": "float16",
        "edgepack.max_context": str(request.max_context),
        "edgepack.fp16_rewrites": json.dumps(plan.as_dict()),
        **request.metadata,
    }
    if window is not None:
        user["co.huggingface.exporters.sliding_window"] = str(window)
    if request.lm_head_chunk:
        user["edgepack.lm_head_chunk"] = str(request.lm_head_chunk)
    return user


def save_fp16(converted: Any, out_dir: Path, request: ExportRequest, user: dict[str, str]) -> Path:
    """Save the converted program as the fp16 package in `out_dir`."""
    # The fp16 package is always written first; compressed ones are made from it reloaded from disk, so
    # the converter's in-memory program is gone before compression starts.
    fp16 = COMPRESSION["none"]
    fp16_path = out_dir / package_name(fp16, request.lm_head_chunk)
    _describe(converted, request.name, fp16, user)
    converted.save(str(fp16_path))
    discard_temporary_package(converted)
    make_deterministic(fp16_path)
    return fp16_path


def discard_temporary_package(mlmodel: Any) -> None:
    """Delete the package coremltools wrote to a temporary folder for a model built in memory, once it is saved:
    coremltools removes them only when the process exits (34 parts of a 4B and their compressions: 12 GB)."""
    if getattr(mlmodel, "is_temp_package", False):
        shutil.rmtree(mlmodel.package_path, ignore_errors=True)


def compressed_packages(fp16_path: Path, request: ExportRequest, compressions: list[Compression],
                        user: dict[str, str], importance: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One package per compression beside the fp16 one (removed unless asked for); per compression: the
    package's name, summary, compressed weights, seconds."""
    packages: dict[str, Any] = {}
    for compression in compressions:
        stamp = time.perf_counter()
        out = fp16_path.parent / package_name(compression, request.lm_head_chunk)
        compressed: dict[str, int] = {}
        if compression.name != "none":
            import coremltools as ct

            mlmodel, compressed = compress(ct.models.MLModel(str(fp16_path), skip_model_load=True), compression,
                                           importance)
            _describe(mlmodel, request.name, compression, user)
            mlmodel.save(str(out))
            discard_temporary_package(mlmodel)
            make_deterministic(out)
            del mlmodel
            release_free_memory()
        packages[compression.name] = {"package": out.name, "summary": compression.summary,
                                      "compressed_weights": compressed,
                                      "seconds": round(time.perf_counter() - stamp, 1)}
    if "none" not in packages:
        shutil.rmtree(fp16_path)
    return packages


def main(argv: list[str] | None = None) -> int:
    """Child-process entry (packager.child_stage): an ExportRequest in, the conversion's result out."""
    return serve_request(__doc__.splitlines()[0], lambda request: export_package(ExportRequest(**request)), argv)


if __name__ == "__main__":
    sys.exit(main())
