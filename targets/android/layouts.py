"""What the ExecuTorch exporter needs about each architecture, keyed by architecture name.

An architecture without a row here is not supported by the android target (`edgepack doctor` says so).
Facts about the model itself (norm offset, tied embeddings) stay in packager.architectures.
"""

from __future__ import annotations

from dataclasses import dataclass

from packager.architectures import ArchitectureSpec
from packager.errors import UnsupportedError


@dataclass(frozen=True)
class ExecuTorchLayout:
    """What the ExecuTorch exporter (targets.android.export) needs about one architecture.

    `cache` names the static KV cache transformers' exportable wrapper must pick: "hybrid" for models
    mixing sliding-window and global layers (Gemma 3), "static" otherwise; the exporter refuses a
    mismatch rather than export attention that differs from the checkpoint's. Module paths name the
    token embedding, the output head and the decoder blocks (per-layer quantization recipes).
    """

    cache: str
    embedding_module: str = "model.embed_tokens"
    head_module: str = "lm_head"
    layers_module: str = "model.layers"
    # Outlier migration (smoothing) before int8 activations: in each block, the RMSNorm whose gain
    # scales the input of these linears, and the linear whose output rows feed another's input
    # (v_proj -> o_proj through attention, up_proj -> down_proj through the gated product); the
    # final norm feeds the head. The gain convention (w or 1 + w) is the spec's norm_offset.
    norm_feeds: tuple[tuple[str, tuple[str, ...]], ...] = ()
    row_feeds: tuple[tuple[str, str], ...] = (
        ("self_attn.v_proj", "self_attn.o_proj"), ("mlp.up_proj", "mlp.down_proj"))
    final_norm: str = "model.norm"


EXECUTORCH_LAYOUTS: dict[str, ExecuTorchLayout] = {
    # Sliding-window and global layers: transformers exports it with its hybrid static cache.
    "gemma3": ExecuTorchLayout(cache="hybrid", norm_feeds=(
        ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
        ("pre_feedforward_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    )),
    "llama": ExecuTorchLayout(cache="static", norm_feeds=(
        ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
        ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    )),
}


def executorch_layout(spec: ArchitectureSpec) -> ExecuTorchLayout:
    """Return the ExecuTorch layout of `spec`'s architecture, or raise UnsupportedError naming what is supported."""
    layout = EXECUTORCH_LAYOUTS.get(spec.name)
    if layout is None:
        raise UnsupportedError(f"{spec.name}: edgepack has no ExecuTorch export for this architecture yet "
                               f"(the android target exports {', '.join(sorted(EXECUTORCH_LAYOUTS))}).")
    return layout
