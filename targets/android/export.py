"""ExecuTorch export: a Hugging Face checkpoint -> model.pte + model.ptd that Android's LlmModule runs on XNNPACK.

The route that works with the pinned stack (torch 2.13, transformers 5.23, executorch 1.5.1):
transformers' TorchExportableModuleForDecoderOnlyLM with a static KV cache (hybrid for Gemma 3),
torch.export with a dynamic sequence length and strict=True, exir's to_edge_transform_and_lower
with the XNNPACK partitioner, then to_executorch. Constant methods carry what ExecuTorch's LLM
runner reads (max lengths, KV-cache flags, eos ids); the eos ids come from the task contract
because the runner's own guess from tokenizer.json is wrong for Gemma.

All weights go to one external .ptd file beside the .pte. ExecuTorch's named data store keeps one
copy of identical buffers, so a tied embedding that XNNPACK also reads as the output head is stored
once (fp32 Gemma 3 270M: ~1.07 GB instead of 1.74 GB), and in the 8-bit recipes the int8 table of
a tied embedding is the output head's own int8 weight, stored once too.

The build runs an export in a child process (`python -m targets.android.export`): a
Gemma 3 270M export peaks near 5 GB in fp32, the memory returns to the OS when the child exits,
and the child's peak RSS is measured for the report.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packager.adapter import AdapterSource
from packager.child_stage import serve_request
from packager.context_size import prefill_chunk
from packager.errors import BadInputError, InternalError, UnsupportedError
from packager.peak_memory import own_peak_rss_mb
from packager.verify.gates import EIGHT_BIT, LOSSLESS, LOW_BIT, Gate
from targets.android import fused_attention
from targets.android.export_graph import replace_rms_norms, static_reshapes
from targets.android.layouts import executorch_layout
from targets.android.row_chunks import SLICE_ROWS, quantized_by_row_slices
from targets.android.weight_copies import traced_without_weight_copies, weights_not_duplicated
from targets.android.xnnpack_passes import only_applicable_passes, whole_op_partitioner

if TYPE_CHECKING:
    from packager.verify.fp32_model import StreamedModel

EXECUTORCH_VERSION = "1.5.1"
# Bump when the exported program changes for the same checkpoint + recipe (keys the stage cache).
# 5: forward takes at most packager.context_size.prefill_chunk tokens a call (was max_context - 1);
# 4: calibration statistics on one torch thread; 3: attention through ExecuTorch's fused cache and SDPA kernels
# where the context allows
EXPORT_SCHEMA = 5
DELEGATES = ("xnnpack", "vulkan")


@dataclass(frozen=True)
class WeightQuant:
    """Symmetric integer weights: `bits` per value, one scale per `group` input columns (0: per output row)."""

    bits: int
    group: int = 0

    def describe(self) -> str:
        return f"int{self.bits} " + (f"g{self.group}" if self.group else "per-channel")


PER_CHANNEL_8 = WeightQuant(8)


@dataclass(frozen=True)
class Recipe:
    """How one .pte is quantized. Decoder linears get int8 dynamic activations (XNNPACK's 8da kernels).

    `linear` covers the linears inside the decoder blocks; `eight_bit` names linears kept at int8
    per-channel instead ("first"/"last" = every linear of the first/last block, or a module-name
    suffix such as "mlp.down_proj"); `head` is the output projection; `embedding` the token table
    (ExecuTorch's quantized embedding kernels). A tied table whose head and embedding are both int8
    per-channel is quantized once and stored once.
    """

    name: str
    summary: str
    linear: WeightQuant | None = None
    head: WeightQuant | None = None
    embedding: WeightQuant | None = None
    eight_bit: tuple[str, ...] = ()
    # Decoder linears left in fp32 (module-name suffixes, e.g. "mlp.down_proj"; "first"/"last": a whole block).
    float_linears: tuple[str, ...] = ()
    # Outlier migration strength (SmoothQuant's alpha) applied before quantization; None: off.
    smooth: float | None = None
    gate: Gate = LOW_BIT
    # A LoRA input's adapted linears hold the base's weights (quantized as above) and the adapter's A and B in
    # fp32 (packager.adapted_linear), where a merge quantizes the adapter's small deltas with the base.
    adapter: bool = False

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["gate"] = dataclasses.asdict(self.gate)
        return data

    def bits(self, name: str, shape: tuple[int, ...]) -> float:
        """Bits per value this recipe stores the checkpoint tensor `name` with (RAM estimates before a build).

        A tied table quantized like the head is stored once; whole first/last blocks kept wider are
        not priced (a few percent of a model).
        """
        if len(shape) < 2:
            return 32.0
        if "embed_tokens" in name:
            quant = self.embedding or (self.head if self.head == PER_CHANNEL_8 else None)
        elif name.startswith("lm_head"):
            quant = self.head
        elif any(name.endswith(f"{suffix}.weight") for suffix in self.float_linears):
            quant = None
        elif any(name.endswith(f"{suffix}.weight") for suffix in self.eight_bit):
            quant = PER_CHANNEL_8
        else:
            quant = self.linear
        return 32.0 if quant is None else quant.bits + (16 / quant.group if quant.group else 0)

    @property
    def quantized(self) -> bool:
        return any(q is not None for q in (self.linear, self.head, self.embedding))


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("fp32", "fp32 weights and activations (the tied embedding stored once)", gate=LOSSLESS),
    Recipe("8da8w", "int8 dynamic activations, int8 per-channel weights everywhere; int8 table shared with the head",
           linear=PER_CHANNEL_8, head=PER_CHANNEL_8, embedding=PER_CHANNEL_8, gate=EIGHT_BIT),
    Recipe("8da4w-g32", "int8 dynamic activations, int4 g32 decoder weights; int8 head + table (shared)",
           linear=WeightQuant(4, 32), head=PER_CHANNEL_8, embedding=PER_CHANNEL_8),
    Recipe("8da4w-g64", "as 8da4w-g32 with groups of 64", linear=WeightQuant(4, 64), head=PER_CHANNEL_8,
           embedding=PER_CHANNEL_8),
    Recipe("8da4w-g128", "as 8da4w-g32 with groups of 128", linear=WeightQuant(4, 128), head=PER_CHANNEL_8,
           embedding=PER_CHANNEL_8),
    Recipe("8da4w-g32-mixed", "as 8da4w-g32, but the first and last blocks and every down_proj stay int8",
           linear=WeightQuant(4, 32), head=PER_CHANNEL_8, embedding=PER_CHANNEL_8,
           eight_bit=("first", "last", "mlp.down_proj")),
    Recipe("8da4w-emb4", "int4 g32 everywhere: decoder, head and a separate int4 g32 table (smallest)",
           linear=WeightQuant(4, 32), head=WeightQuant(4, 32), embedding=WeightQuant(4, 32)),
    Recipe("8da8w-smooth", "as 8da8w, after migrating activation outliers into the weights (alpha 0.5)",
           linear=PER_CHANNEL_8, head=PER_CHANNEL_8, embedding=PER_CHANNEL_8, smooth=0.5, gate=EIGHT_BIT),
    Recipe("8da8w-smooth-f32down", "as 8da8w-smooth, with every mlp.down_proj kept in fp32",
           linear=PER_CHANNEL_8, head=PER_CHANNEL_8, embedding=PER_CHANNEL_8, smooth=0.5,
           float_linears=("mlp.down_proj",), gate=EIGHT_BIT),
    Recipe("8da8w-adapter", "as 8da8w for the base model, with the LoRA adapter applied apart in fp32",
           linear=PER_CHANNEL_8, head=PER_CHANNEL_8, embedding=PER_CHANNEL_8, gate=EIGHT_BIT, adapter=True),
    Recipe("8da8w-adapter-f32down", "as 8da8w-adapter, with every mlp.down_proj kept in fp32",
           linear=PER_CHANNEL_8, head=PER_CHANNEL_8, embedding=PER_CHANNEL_8, float_linears=("mlp.down_proj",),
           gate=EIGHT_BIT, adapter=True),
    Recipe("8da8w-smooth-adapter", "as 8da8w-smooth for the base model, with the LoRA adapter applied apart in fp32",
           linear=PER_CHANNEL_8, head=PER_CHANNEL_8, embedding=PER_CHANNEL_8, smooth=0.5, gate=EIGHT_BIT,
           adapter=True),
)}

# What `--recipe auto` tries, smallest first; the first that passes its gate ships. Quantized rungs are
# screened in eager PyTorch before any export, so a build exports once. The 4-bit recipes are left
# out: on Gemma 3 270M they reach 0.62-0.75 decisive top-1 (docs/benchmarks.md); plain 8da8w is left
# out because smoothing makes the same bytes more faithful. 8da8w-smooth (258 MB) is left out because
# it sits on the 8-bit gate's edge: its .pte measured 0.940-0.953 decisive top-1 against the gate's
# 0.95 depending only on the host's thread count (summation order), and 0.90-0.91 top-1, below
# llama.cpp's Q4_K_M; with fp32 down projections (325 MB) it measured 0.935 / 0.968.
# All stay available by name.
AUTO_LADDER: tuple[str, ...] = ("8da8w-smooth-f32down", "fp32")
# The same for a LoRA input: the base at 8 bits with the adapter apart keeps a fine-tune whose deltas an 8-bit
# merge rounds (the bundled example's 8da8w-smooth-f32down lost 2.8 points of its eval set). The down
# projections stay fp32: on the bundled example plain 8da8w-adapter (265 MB) answered 97-98 of 108 rows
# depending on the attention's summation order, one row either side of the task gate, while its screen
# predicted 99; a failed first rung costs a second export of about 6 minutes. With fp32 down projections
# (332 MB): 98 rows, KL 0.025 instead of 0.042. 8da8w-adapter stays available by name.
ADAPTER_LADDER: tuple[str, ...] = ("8da8w-adapter-f32down", "fp32")

def recipe_named(name: str) -> Recipe:
    """Return the recipe called `name`, or raise a BadInputError listing the known ones."""
    if name not in RECIPES:
        raise BadInputError(f"--recipe {name}: unknown ExecuTorch recipe. Known: auto, {', '.join(RECIPES)}.")
    return RECIPES[name]


@dataclass(frozen=True)
class RunnerMetadata:
    """The constant methods ExecuTorch's LLM runner reads from a .pte."""

    max_context: int
    eos_ids: tuple[int, ...]
    bos_id: int | None
    vocab_size: int
    fused_attention: bool = False

    @property
    def max_seq_len(self) -> int:
        """The most tokens one call of forward takes (the runner prefills longer prompts in chunks): the
        memory ExecuTorch plans for a call, logits included, grows with it (packager.context_size)."""
        return prefill_chunk(self.max_context)

    def constant_methods(self) -> dict[str, Any]:
        methods: dict[str, Any] = {
            "get_max_seq_len": self.max_seq_len,
            "get_max_context_len": self.max_context,
            "enable_dynamic_shape": True,
            "use_kv_cache": True,
            "use_sdpa_with_kv_cache": self.fused_attention,
            "get_eos_ids": list(self.eos_ids),
            "get_vocab_size": self.vocab_size,
        }
        if self.bos_id is not None:
            methods["get_bos_id"] = self.bos_id
        return methods


@dataclass
class ExportResult:
    """What one export wrote, and what it cost."""

    pte: str
    ptd: str
    delegate: str
    recipe: str
    seconds: float
    peak_rss_mb: float
    delegated_ops: int
    total_ops: int
    metadata: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Quantization (eager, before torch.export).


def _quantize_rows(weight: Any, quant: WeightQuant) -> tuple[Any, Any]:
    """Symmetric round-to-nearest: return (int8 values, fp32 scales [rows, groups] or [rows]); a slice of rows at
    a time, so the float temporaries stay small beside a 262,144-row table (targets.android.row_chunks)."""
    import torch

    rows, cols = weight.shape
    group = quant.group or cols
    qmax = 2 ** (quant.bits - 1) - 1
    values = torch.empty((rows, cols), dtype=torch.int8)
    scales = torch.empty((rows, cols // group), dtype=torch.float32)
    for start in range(0, rows, SLICE_ROWS):
        part = weight[start:start + SLICE_ROWS].detach().float().reshape(-1, cols // group, group)
        part_scales = part.abs().amax(dim=-1).clamp(min=1e-12) / qmax
        quantized = torch.clamp(torch.round(part / part_scales.unsqueeze(-1)), -qmax - 1, qmax)
        values[start:start + SLICE_ROWS] = quantized.reshape(-1, cols).to(torch.int8)
        scales[start:start + SLICE_ROWS] = part_scales
    return values, (scales if quant.group else scales.reshape(rows))


class QuantizedTokenEmbedding:
    """Factory for the embedding module ExecuTorch's quantized kernels run (see build())."""

    @staticmethod
    def build(values: Any, scales: Any, bits: int, scale: Any) -> Any:
        """Return an nn.Module that looks up int8/int4 rows, dequantizes, and multiplies by `scale`.

        Gemma multiplies embeddings by sqrt(hidden_size) inside its embedding module; replacing that
        module with ExecuTorch's quantized lookup drops the factor unless it is applied here. `scale`
        may be a per-channel vector: a tied table smoothed for the head is divided back on lookup.
        """
        # The eager/meta definitions of quantized_decomposed.embedding_* (exir registers them on import),
        # and the out-variant kernels to_executorch needs (the exporting process must load them).
        import executorch.exir.passes._quant_patterns_and_replacements
        import executorch.kernels.quantized  # noqa: F401
        import torch

        class _Embedding(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                if bits == 4:
                    shifted = (values.to(torch.int16) + 8).to(torch.uint8)
                    packed = shifted[:, 0::2] * 16 + shifted[:, 1::2]
                    self.register_buffer("weight", packed.contiguous())
                else:
                    self.register_buffer("weight", values.contiguous())
                self.register_buffer("scales", scales.float().contiguous())
                self.per_channel = isinstance(scale, torch.Tensor)
                if self.per_channel:
                    self.register_buffer("channel_factor", scale.float().contiguous())
                self.factor = 1.0 if self.per_channel else float(scale)

            # Eager PyTorch only (the screens): the reference op dequantizes the whole table on every
            # call (1.2 GB per token at Gemma 3 1B); the same op on just the looked-up rows gives the
            # same values. The exported program keeps the one op the ExecuTorch kernel implements.
            gather_first = False

            def forward(self, ids: torch.Tensor) -> torch.Tensor:
                weight, scales, lookup = self.weight, self.scales, ids
                if self.gather_first:
                    flat = ids.reshape(-1)
                    weight, scales, lookup = weight[flat], scales[flat], torch.arange(flat.numel()).reshape(ids.shape)
                if bits == 4:
                    out = torch.ops.quantized_decomposed.embedding_4bit.dtype(
                        weight, scales, None, -8, 7, lookup, dtype=torch.float32)
                else:
                    out = torch.ops.quantized_decomposed.embedding_byte.dtype(
                        weight, scales, None, -128, 127, lookup, dtype=torch.float32)
                if self.per_channel:
                    return out * self.channel_factor
                return out * self.factor if self.factor != 1.0 else out

        return _Embedding()


def smooth_outliers(model: Any, spec: Any, alpha: float, folder: Path) -> Any:
    """Migrate activation outliers into weights (SmoothQuant) in every block and the head; return the head's
    channel scales (see _smooth_block and _smooth_head)."""
    stats = _smoothing_stats(model, folder)
    layout = executorch_layout(spec)
    for index, block in enumerate(model.get_submodule(layout.layers_module)):
        _smooth_block(block, f"{layout.layers_module}.{index}.", stats, alpha, spec, model.config)
    return _smooth_head(model, spec, stats, alpha)


def _smoothing_stats(model: Any, folder: Path) -> dict[str, Any]:
    from packager.calibration import calibration_ids, linear_input_stats

    return linear_input_stats(model, calibration_ids(folder), "max")


def _column_abs_max(weight: Any) -> Any:
    """max |W| per input column, by row slices (|W| of a 262,144-row head is a copy of the head)."""
    import torch

    return torch.stack([part.abs().amax(0) for part in weight.split(SLICE_ROWS)]).amax(0)


def _smoothing_scales(xmax: Any, wmax: Any, alpha: float) -> Any:
    return (xmax.clamp(min=1e-5) ** alpha / wmax.clamp(min=1e-5) ** (1 - alpha)).clamp(1e-3, 1e3)


def _fold_norm(norm: Any, s: Any, offset: float) -> None:
    norm.weight.data = (norm.weight.data.float() + offset) / s - offset


def _smooth_block(block: Any, prefix: str, stats: dict[str, Any], alpha: float, spec: Any, config: Any) -> None:
    """SmoothQuant inside one decoder block, exact in fp32: each linear input channel j is divided by s_j where it
    is produced (an RMSNorm gain, or the rows of v_proj / up_proj) and the consuming weights' column j is
    multiplied by s_j, with s_j = max|x_j|^alpha / max|W_j|^(1 - alpha) on packager.calibration's text. int8
    per-token activations then lose less to a few huge channels. An adapter kept apart is rescaled with its
    linear."""
    import torch

    from packager.adapted_linear import divide_output_rows, scale_input_columns

    layout = executorch_layout(spec)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    with torch.no_grad():
        for norm_name, linear_names in layout.norm_feeds:
            linears = [block.get_submodule(n) for n in linear_names]
            wmax = torch.stack([_column_abs_max(lin.weight) for lin in linears]).amax(0)
            s = _smoothing_scales(stats[prefix + linear_names[0]], wmax, alpha)
            _fold_norm(block.get_submodule(norm_name), s, spec.norm_offset)
            for lin in linears:
                scale_input_columns(lin, s)
        for source_name, sink_name in layout.row_feeds:
            source, sink = block.get_submodule(source_name), block.get_submodule(sink_name)
            xmax, wmax = stats[prefix + sink_name], sink.weight.abs().amax(0)
            if source.weight.shape[0] != sink.weight.shape[1]:  # v_proj -> o_proj under grouped KV heads
                group = heads // kv_heads
                xmax = xmax.reshape(kv_heads, group, head_dim).amax(1).reshape(-1)
                wmax = wmax.reshape(kv_heads, group, head_dim).amax(1).reshape(-1)
            s = _smoothing_scales(xmax, wmax, alpha)
            divide_output_rows(source, s)
            if source.weight.shape[0] != sink.weight.shape[1]:
                s = s.reshape(kv_heads, 1, head_dim).expand(kv_heads, heads // kv_heads, head_dim).reshape(-1)
            scale_input_columns(sink, s)


def _smooth_head(model: Any, spec: Any, stats: dict[str, Any], alpha: float) -> Any:
    """SmoothQuant between the final norm and the head; return the head's channel scales. A tied table is scaled
    with the head; the caller divides the embedding lookup by the returned scales."""
    import torch

    from packager.adapted_linear import scale_input_columns

    layout = executorch_layout(spec)
    with torch.no_grad():
        head = model.get_submodule(layout.head_module)
        s_head = _smoothing_scales(stats[layout.head_module], _column_abs_max(head.weight), alpha)
        _fold_norm(model.get_submodule(layout.final_norm), s_head, spec.norm_offset)
        scale_input_columns(head, s_head)
    return s_head


def _linear_config(quant: WeightQuant) -> Any:
    import torch
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_api import Int8DynamicActivationIntxWeightConfig

    granularity = PerGroup(quant.group) if quant.group else PerAxis(0)
    return Int8DynamicActivationIntxWeightConfig(weight_dtype=getattr(torch, f"int{quant.bits}"),
                                                 weight_granularity=granularity)


def _selects(selectors: tuple[str, ...], name: str, index: int, last: int) -> bool:
    """Whether a block linear (module name `name` in block `index`) matches "first"/"last"/name-suffix selectors."""
    return (("first" in selectors and index == 0) or ("last" in selectors and index == last)
            or any(name.endswith(s) for s in selectors if s not in ("first", "last")))


def _layer_linear_plan(model: Any, layout: Any, recipe: Recipe) -> dict[str, WeightQuant]:
    """Map each decoder-block linear's module name to its weight quantization under the recipe."""
    import torch

    if recipe.linear is None:
        return {}
    layers = model.get_submodule(layout.layers_module)
    last = len(layers) - 1
    plan: dict[str, WeightQuant] = {}
    for index, block in enumerate(layers):
        for name, module in block.named_modules():
            if not isinstance(module, torch.nn.Linear) or _selects(recipe.float_linears, name, index, last):
                continue
            quant = PER_CHANNEL_8 if _selects(recipe.eight_bit, name, index, last) else recipe.linear
            if quant.group and module.in_features % quant.group:
                quant = WeightQuant(quant.bits)  # a group that does not divide the row: one scale per row
            plan[f"{layout.layers_module}.{index}.{name}"] = quant
    return plan


def apply_adapter_apart(model: Any, recipe: Recipe, adapter: AdapterSource | None) -> int:
    """Give a merged model's adapted linears back their base weights with the adapter apart (an adapter recipe);
    return how many."""
    from packager.adapted_linear import keep_adapter_apart
    from packager.adapter import adapted_base_weights

    if adapter is None:
        raise InternalError(f"recipe {recipe.name} keeps a LoRA adapter apart, but no adapter was given")
    return keep_adapter_apart(model, adapted_base_weights(adapter))


def quantize_model(model: Any, spec: Any, recipe: Recipe, folder: Path | None = None,
                   streamed: StreamedModel | None = None) -> dict[str, Any]:
    """Quantize `model` in place for the recipe, a decoder block at a time; return a summary (which tensors got
    what).

    `folder` (the checkpoint, for its tokenizer) is needed by smoothing recipes. With `streamed` (`model` is its
    model: blocks read on demand), each block's float32 weights are read for good just before the block is
    smoothed and quantized, so at most one block is resident in float32 (load_for_export).
    """
    import torch
    from torchao.quantization.quant_api import quantize_

    layout = executorch_layout(spec)
    config = model.config
    summary: dict[str, Any] = {"linears": {}, "head": None, "embedding": None, "shared_table": False}
    embedding_module = model.get_submodule(layout.embedding_module)
    tied = model.get_submodule(layout.head_module).weight is embedding_module.weight
    head_scales = None
    stats: dict[str, Any] = {}
    if recipe.smooth is not None:
        if recipe.embedding is None and tied:
            raise UnsupportedError(f"recipe {recipe.name}: smoothing a tied head needs a quantized embedding table")
        if not tied:  # the table keeps its own values; only the head's columns move
            embedding_module.weight = torch.nn.Parameter(embedding_module.weight.detach().clone())
        stats = _smoothing_stats(model, folder)
        summary["smoothing"] = f"alpha {recipe.smooth} on {len(layout.norm_feeds) + len(layout.row_feeds)} sites/block"
    if recipe.float_linears:
        summary["fp32 linears"] = list(recipe.float_linears)
    plan = _layer_linear_plan(model, layout, recipe)
    kinds = sorted(set(plan.values()), key=lambda q: (q.bits, q.group))
    for index, block in enumerate(model.get_submodule(layout.layers_module)):
        prefix = f"{layout.layers_module}.{index}"
        if streamed is not None:
            streamed.keep(prefix)
        if recipe.smooth is not None:
            _smooth_block(block, prefix + ".", stats, recipe.smooth, spec, config)
        for quant in kinds:
            names = {fqn for fqn, q in plan.items() if q == quant and fqn.startswith(prefix + ".")}
            with quantized_by_row_slices():
                quantize_(model, _linear_config(quant), filter_fn=lambda _m, fqn, names=names: fqn in names)
    for quant in kinds:
        summary["linears"][quant.describe()] = sum(q == quant for q in plan.values())
    if recipe.smooth is not None:
        head_scales = _smooth_head(model, spec, stats, recipe.smooth)

    embedding = model.get_submodule(layout.embedding_module)
    shared = tied and recipe.head == recipe.embedding == PER_CHANNEL_8
    # A tied table quantized on its own needs its fp32 values after the head's quantization replaced them.
    table = None
    if recipe.embedding is not None and not shared:
        table = embedding.weight.detach().clone() if tied else embedding.weight.detach()
    if recipe.head is not None:
        with quantized_by_row_slices():  # a 262,144-row head quantized whole was a 1B export's peak
            quantize_(model, _linear_config(recipe.head), filter_fn=lambda _m, fqn: fqn == layout.head_module)
        summary["head"] = recipe.head.describe()
    if recipe.embedding is not None:
        factor: Any = math.sqrt(config.hidden_size) if spec.embedding_scale_sqrt_hidden else 1.0
        if head_scales is not None and tied:
            factor = factor / head_scales  # the tied table was scaled for the head; undo it on lookup
        if shared:
            # The head's own int8 rows and scales: byte-identical, so the .ptd stores them once.
            weight = model.get_submodule(layout.head_module).weight
            values, scales = weight.qdata, weight.scale.reshape(-1)
        else:
            values, scales = _quantize_rows(table, recipe.embedding)
        module = QuantizedTokenEmbedding.build(values, scales, recipe.embedding.bits, factor)
        parent_name, _, child = layout.embedding_module.rpartition(".")
        setattr(model.get_submodule(parent_name), child, module)
        kept = spec.embedding_scale_sqrt_hidden or head_scales is not None
        summary["embedding"] = recipe.embedding.describe() + (", embedding scale re-applied" if kept else "")
        summary["shared_table"] = shared
    del table
    return summary


# ---------------------------------------------------------------------------------------------
# Export.


def load_for_export(folder: Path, max_context: int, recipe: Recipe) -> tuple[Any, StreamedModel | None]:
    """The checkpoint in fp32 with a static-cache generation config (what the exportable wrapper reads).

    A model above packager.verify.fp32_model.STREAM_ABOVE bytes of fp32 weights, under a quantizing recipe, comes
    with its decoder blocks read on demand (returned as the StreamedModel): quantize_model then reads each block
    for good just before it quantizes it, and the export never holds the whole fp32 model (Gemma 3 4B: 15.6 GB).
    A LoRA input's adapter recipe loads whole (its adapted linears are replaced before quantization).
    """
    from transformers import GenerationConfig

    from packager.verify.fp32_model import load_fp32_streamed, load_fp32_whole

    streamed = load_fp32_streamed(folder, "sdpa") if recipe.quantized and not recipe.adapter else None
    model = load_fp32_whole(folder, "sdpa") if streamed is None else streamed.model
    model.generation_config = GenerationConfig(use_cache=True, cache_implementation="static", max_length=max_context,
                                               cache_config={"batch_size": 1, "max_cache_len": max_context})
    return model, streamed


_WRAPPERS = {"hybrid": "TorchExportableModuleWithHybridCache", "static": "TorchExportableModuleWithStaticCache"}


def export_program(model: Any, spec: Any, metadata: RunnerMetadata, fused: bool) -> Any:
    """torch.export the model with its static cache of metadata.max_context slots, the sequence length
    dynamic up to metadata.max_seq_len.

    `fused`: the cache and attention as ExecuTorch's fused kernels (targets.android.fused_attention);
    otherwise transformers' own exportable wrapper, checked against the architecture table's cache kind.
    """
    import torch

    if fused:
        wrapper = fused_attention.decoder(model, metadata.max_context)
    else:
        wrapper = _transformers_wrapper(model, spec, metadata.max_context)
    seq = torch.export.Dim("seq_length_dim", max=metadata.max_seq_len)
    example = torch.zeros((1, 3), dtype=torch.long)
    with torch.no_grad(), traced_without_weight_copies():
        return torch.export.export(wrapper, (), kwargs={"input_ids": example,
                                                        "cache_position": torch.arange(3, dtype=torch.long)},
                                   dynamic_shapes={"input_ids": {1: seq}, "cache_position": {0: seq}}, strict=True)


def _transformers_wrapper(model: Any, spec: Any, max_context: int) -> Any:
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    wrapper = TorchExportableModuleForDecoderOnlyLM(model, batch_size=1, max_cache_len=max_context).model
    picked = type(wrapper).__name__
    cache = executorch_layout(spec).cache
    if picked != _WRAPPERS[cache]:
        raise UnsupportedError(
            f"transformers wraps this {spec.name} model in {picked}, but edgepack's architecture table expects "
            f"a {cache} cache ({_WRAPPERS[cache]}); the exported attention would "
            "differ from the checkpoint's. Check the transformers version (pinned 5.23.0)."
        )
    return wrapper


def _partitioners(delegate: str) -> list[Any]:
    if delegate == "xnnpack":
        return [whole_op_partitioner()]
    if delegate == "vulkan":
        from executorch.backends.vulkan.partitioner.vulkan_partitioner import VulkanPartitioner
        from executorch.exir.dialects._ops import ops as exir_ops

        # Vulkan cannot own the static cache's buffer updates (aten.copy into mutable buffers): they
        # stay outside it, and what Vulkan does not take goes to XNNPACK.
        return [VulkanPartitioner(operator_blocklist={exir_ops.edge.aten.copy.default}), whole_op_partitioner()]
    raise BadInputError(f"--delegate {delegate}: unknown; edgepack exports for {', '.join(DELEGATES)}")


def _count_ops(program: Any) -> tuple[int, int]:
    """Return (delegate calls, all call_function nodes) of the lowered forward method."""
    graph = program.exported_program("forward").graph_module.graph
    calls = [n for n in graph.nodes if n.op == "call_function"]
    delegated = [n for n in calls if "executorch_call_delegate" in str(n.target)]
    return len(delegated), len(calls)


def adapter_placeholders(exported: Any) -> set[str]:
    """Names of the exported program's placeholders that carry an adapter's A or B (AdaptedLinear's parameters):
    what a fleet member's .pte keeps inside itself, so that its weights file holds only the base's tensors."""
    from packager.adapted_linear import ADAPTER_PARAMETERS

    return {name for name, fqn in exported.graph_signature.inputs_to_parameters.items()
            if fqn.rpartition(".")[2] in ADAPTER_PARAMETERS}


def lower_and_write(exported: Any, metadata: RunnerMetadata, delegate: str, out_dir: Path, stem: str,
                    base_data: str | None = None) -> tuple[Path, Path, tuple[int, int]]:
    """Lower to the delegate, write <stem>.pte and <stem>.ptd (all weights, one copy of each buffer).

    `base_data`: a fleet member's export. The adapter's A and B stay inside <stem>.pte and every other weight
    goes to <base_data>.ptd, which is then the same file for every specialist of the base (the fleet ships one).
    """
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass

    data = base_data or stem
    inside = adapter_placeholders(exported) if base_data else set()
    if base_data and not inside:
        raise InternalError(f"{stem}: a fleet member's export found no adapter parameters to keep in its .pte")
    for node in exported.graph.nodes:  # XNNPACK's weights join the program's constants in <data>.ptd
        if node.op == "placeholder" and node.name not in inside:
            node.meta.setdefault("custom", {})["delegate_constant_tag"] = data
    out_dir.mkdir(parents=True, exist_ok=True)
    pte = out_dir / f"{stem}.pte"
    with weights_not_duplicated(out_dir):
        with only_applicable_passes():
            edge = to_edge_transform_and_lower(
                {"forward": exported}, partitioner=_partitioners(delegate), transform_passes=[static_reshapes],
                compile_config=EdgeCompileConfig(_check_ir_validity=False, _skip_dim_order=True),
                constant_methods=metadata.constant_methods(),
            )
        program = edge.to_executorch(config=ExecutorchBackendConfig(
            extract_delegate_segments=True, memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
            do_quant_fusion_and_const_prop=True,
            external_constants=lambda node: None if node.name in inside else data,
        ))
        pte.write_bytes(program.buffer)
        program.write_tensor_data_to_file(str(out_dir))
    ptd = out_dir / f"{data}.ptd"
    if not ptd.is_file():
        raise UnsupportedError(f"ExecuTorch wrote no {ptd.name} beside {pte.name}; the weights would be missing.")
    return pte, ptd, _count_ops(program)


def export_pte(folder: Path, out_dir: Path, recipe: Recipe, metadata: RunnerMetadata, delegate: str = "xnnpack",
               stem: str | None = None, adapter: AdapterSource | None = None,
               base_data: str | None = None) -> ExportResult:
    """Export the checkpoint in `folder` under `recipe` to out_dir/<stem>.pte + .ptd (in this process); an
    `adapter` recipe reads the merged checkpoint's adapter and base from `adapter`; with `base_data` (a fleet
    member, adapter recipes only) the weights file is <base_data>.ptd and holds the base's tensors only."""
    from packager.architectures import spec_for_config

    start = time.perf_counter()
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    spec = spec_for_config(config, str(folder / "config.json"))
    executorch_layout(spec)  # UnsupportedError before the model is loaded
    if recipe.smooth is not None:
        from packager.calibration import calibration_ids

        calibration_ids(folder)  # the tokenizer's memory is returned before the model is loaded beside it
    model, streamed = load_for_export(folder, metadata.max_context, recipe)
    summary: dict[str, Any] = {}
    if recipe.adapter:
        summary["adapter_apart"] = apply_adapter_apart(model, recipe, adapter)
    if recipe.quantized:
        from torchao.utils import unwrap_tensor_subclass

        summary.update(quantize_model(model, spec, recipe, folder, streamed))
        unwrap_tensor_subclass(model)
    if streamed is not None:
        summary["loaded"] = "a decoder block at a time, each quantized before the next was read"
    replace_rms_norms(model, spec)  # after smoothing, which folds scales into the norms' gains
    fused = delegate == "xnnpack" and fused_attention.fits(model.config, metadata.max_context)
    metadata = dataclasses.replace(metadata, fused_attention=fused)
    exported = export_program(model, spec, metadata, fused)
    del model
    stem = stem or f"model-{recipe.name}" + ("" if delegate == "xnnpack" else f"-{delegate}")
    pte, ptd, (delegated, total) = lower_and_write(exported, metadata, delegate, out_dir, stem, base_data)
    return ExportResult(pte=pte.name, ptd=ptd.name, delegate=delegate, recipe=recipe.name,
                        seconds=round(time.perf_counter() - start, 1), peak_rss_mb=own_peak_rss_mb(),
                        delegated_ops=delegated, total_ops=total,
                        metadata={**metadata.constant_methods(), "quantization": summary})


def _serve(request: dict[str, Any]) -> dict[str, Any]:
    meta = request["metadata"]
    result = export_pte(
        Path(request["checkpoint"]), Path(request["out_dir"]), recipe_named(request["recipe"]),
        RunnerMetadata(int(meta["max_context"]), tuple(meta["eos_ids"]), meta.get("bos_id"),
                       int(meta["vocab_size"])),
        request.get("delegate", "xnnpack"), request.get("stem"),
        AdapterSource(**request["adapter"]) if request.get("adapter") else None, request.get("base_data"),
    )
    return result.as_dict()


def main(argv: list[str] | None = None) -> int:
    """Child-process entry (packager.child_stage): export request in, ExportResult out."""
    return serve_request(__doc__.splitlines()[0], _serve, argv)


if __name__ == "__main__":
    sys.exit(main())
