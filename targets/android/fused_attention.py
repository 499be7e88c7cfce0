"""The exported decoder's attention as ExecuTorch's two fused kernels: llama::update_cache writes the new
keys and values into the static cache, llama::custom_sdpa attends over the positions filled so far.

Why: transformers' exportable wrapper writes the cache with index_copy and runs SDPA over the whole
static cache with a mask. Lowered, that is some 20 portable ops per layer between XNNPACK partitions
(where, any, logical_not, expand and index_put for the mask and the grouped heads), about six
partitions per layer, each preprocessed on its own: most of the export's minutes, and on the device a
step that pays for every cache slot. With the fused kernels the graph has three ops per layer outside
XNNPACK, and a step attends only to the positions it has.

The cache here is laid out [batch, positions, kv heads, head dim] (the kernels' layout, not
transformers'). Every layer attends to all earlier positions, so the form is exact only while the
context fits in a sliding window; `fits` says whether it does, and the export falls back to
transformers' wrapper otherwise.

The kernels come from ExecuTorch's LLM custom ops: importing
executorch.extension.llm.custom_ops.custom_ops registers them for export and, through the shared
runtime library, for the Python runtime that verifies the .pte; Android's ExecuTorch LLM AAR ships them.
"""

from __future__ import annotations

from typing import Any

ATTENTION = "edgepack_fused_sdpa"


def fits(config: Any, max_context: int) -> bool:
    """Whether every layer may attend to every earlier position within `max_context` (no sliding window
    shorter than the context)."""
    window = getattr(config, "sliding_window", None)
    return window is None or max_context <= int(window)


def load_ops() -> None:
    """Register the llama:: kernels for torch (export) and ExecuTorch's runtime (the shared kernel registry)."""
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  registers torch.ops.llama


def _attend(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float | None = None,
            start_pos: Any = None, **_kwargs: Any) -> tuple[Any, None]:
    """transformers attention interface: query [b, heads, seq, dim] against the cache layer's tensors."""
    import torch

    out = torch.ops.llama.custom_sdpa(query.transpose(1, 2), key, value, start_pos, None, 0.0, True, scaling)
    return out, None


def _no_mask(*_args: Any, **_kwargs: Any) -> None:
    """The fused kernel applies causality from start_pos itself: transformers builds no mask."""
    return None


def register() -> None:
    """Make ATTENTION a transformers attention implementation (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    load_ops()
    AttentionInterface.register(ATTENTION, _attend)
    AttentionMaskInterface.register(ATTENTION, _no_mask)


def _layer_class() -> Any:
    import torch
    from transformers.cache_utils import StaticLayer

    class FusedCacheLayer(StaticLayer):
        """A static cache layer in the kernels' layout, written by llama::update_cache at start_pos."""

        def __init__(self, max_cache_len: int, kv_heads: int, head_dim: int, dtype: Any) -> None:
            super().__init__(max_cache_len)
            self.keys = torch.zeros((1, max_cache_len, kv_heads, head_dim), dtype=dtype)
            self.values = torch.zeros((1, max_cache_len, kv_heads, head_dim), dtype=dtype)
            self.is_initialized = True
            self.start_pos: Any = 0

        def update(self, key_states: Any, value_states: Any, *_args: Any, **_kwargs: Any) -> tuple[Any, Any]:
            torch.ops.llama.update_cache(key_states.transpose(1, 2), self.keys, self.start_pos)
            torch.ops.llama.update_cache(value_states.transpose(1, 2), self.values, self.start_pos)
            return self.keys, self.values

    return FusedCacheLayer


def decoder(model: Any, max_context: int) -> Any:
    """The model as an exportable module: forward(input_ids [1, seq], cache_position [seq]) -> logits."""
    import torch
    from transformers.cache_utils import StaticCache
    from transformers.integrations.executorch import get_head_shapes

    register()
    model.set_attn_implementation(ATTENTION)
    layer_class = _layer_class()
    kv_heads, head_dim = get_head_shapes(model.config)

    class FusedAttentionDecoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.max_context = max_context
            self.cache = StaticCache(config=model.config, max_cache_len=max_context)
            for i in range(len(self.cache.layers)):
                layer = layer_class(max_context, kv_heads, head_dim, model.dtype)
                self.cache.layers[i] = layer
                self.register_buffer(f"key_cache_{i}", layer.keys, persistent=False)
                self.register_buffer(f"value_cache_{i}", layer.values, persistent=False)

        def forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
            start = cache_position[0].item()
            torch._check(start >= 0)
            torch._check(start + input_ids.shape[1] <= self.max_context)
            for layer in self.cache.layers:
                layer.start_pos = start
            out = self.model(input_ids=input_ids, position_ids=cache_position.unsqueeze(0),
                             past_key_values=self.cache, use_cache=True, start_pos=start)
            return out.logits

    return FusedAttentionDecoder()
