"""What the Core ML converter needs about each architecture's decoder block, keyed by architecture name.

An architecture without a row here is not supported by the ios target (`edgepack doctor` says so).
Facts about the model itself (norm offset, embedding scale, fp16 risk) stay in packager.architectures.
"""

from __future__ import annotations

from dataclasses import dataclass

from packager.architectures import ArchitectureSpec
from packager.errors import UnsupportedError


@dataclass(frozen=True)
class CoreMLLayout:
    """What the Core ML converter (targets.ios.model) needs about one decoder block.

    Module names are relative to a decoder block; None means the block has no such norm. Gemma wraps
    both branches in norms (pre and post), normalises each head's q and k, takes its softmax scale
    from query_pre_attn_scalar, and computes rotary tables per layer type (local vs global theta);
    its sliding-window layers need swift-transformers' slidingAttentionMask input.
    """

    pre_attention_norm: str = "input_layernorm"
    pre_mlp_norm: str = "post_attention_layernorm"
    post_attention_norm: str | None = None
    post_mlp_norm: str | None = None
    qk_norm: bool = False
    query_pre_attn_scalar: bool = False
    rope_per_layer_type: bool = False
    sliding_attention_mask: bool = False
    base_module: str = "model"
    head_module: str = "lm_head"

    @property
    def post_norms(self) -> bool:
        return self.post_attention_norm is not None and self.post_mlp_norm is not None


COREML_LAYOUTS: dict[str, CoreMLLayout] = {
    "gemma3": CoreMLLayout(pre_mlp_norm="pre_feedforward_layernorm", post_attention_norm="post_attention_layernorm",
                           post_mlp_norm="post_feedforward_layernorm", qk_norm=True, query_pre_attn_scalar=True,
                           rope_per_layer_type=True, sliding_attention_mask=True),
    "llama": CoreMLLayout(),
}


def coreml_layout(spec: ArchitectureSpec) -> CoreMLLayout:
    """Return the Core ML layout of `spec`'s architecture, or raise UnsupportedError naming what is supported."""
    layout = COREML_LAYOUTS.get(spec.name)
    if layout is None:
        raise UnsupportedError(f"{spec.name}: edgepack has no Core ML conversion for this architecture yet "
                               f"(the ios target converts {', '.join(sorted(COREML_LAYOUTS))}).")
    return layout
