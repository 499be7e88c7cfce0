"""The decoder edgepack converts to Core AI: the Core ML path's decoder behind Apple's language-model interface.

Apple's Core AI language-model engines (apple/coreai-models, CoreAILanguageModel; what they require, with
the sources, is written down at the top of targets.ios.coreai_export, with the names INPUTS, STATES, OUTPUT)
call one function `main` with `input_ids` [1, query] and `position_ids` [1, total], both int32, where
position_ids are the positions of the whole context so far (0..total-1) and the last `query` of them are
the new tokens'; the KV cache is two states `keyCache` / `valueCache` [layers, 1, kv_heads, positions,
head_dim] whose positions axis the engine allocates and grows (positions >= total); the output is `logits`
[1, query, vocab]. Everything else is the model's business: it writes the new keys/values at
total - query, and builds its causal and sliding-window masks and its rotary angles from position_ids.

PositionDecoder is targets.ios.model.StatefulDecoder (the same weights, fp16 rewrites and layer loop) with that
interface. The Core ML path keeps StatefulDecoder's
own interface: inputIds and the masks swift-transformers builds, the cache as module buffers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from targets.ios.model import FP16_MAX, Fp16Plan, StatefulDecoder


def attention_masks(position_ids: torch.Tensor, query: Any,
                    window: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Additive masks [1, 1, 1, query, total] of the last `query` positions over all of them (and None without a
    sliding window): a key is visible when its position is not after the query's (causal) and, for a sliding
    layer, fewer than `window` positions before it, as transformers masks Gemma 3's local layers."""
    keys = position_ids[0]
    queries = keys[keys.shape[0] - query:].unsqueeze(1)
    causal = keys.unsqueeze(0) <= queries
    if window is None:
        return additive(causal), None
    return additive(causal), additive(causal & (keys.unsqueeze(0) > queries - window))


def additive(visible: torch.Tensor) -> torch.Tensor:
    """[query, total] booleans as an additive mask [1, 1, 1, query, total]: 0 where visible, -65504 elsewhere.

    Arithmetic, not torch.where(visible, 0, -65504): coreai-torch 0.4.3 converts that where (0-d operands) into
    a program whose attention softmax is wrong as soon as there is more than one KV head (measured on the tiny
    Llama: every logit off, top-1 0 %), while this form matches fp32.
    """
    return ((visible.float() - 1.0) * FP16_MAX)[None, None, None]


class PositionDecoder(StatefulDecoder):
    """input_ids + position_ids -> logits, with the keyCache/valueCache states as arguments it updates in place.

    `max_context` sizes the rotary tables (positions 0..max_context-1); the caches are the caller's, Apple's
    layout (cache_shape), their positions axis at least `total` long.
    """

    def __init__(self, hf_model: Any, spec: Any, max_context: int, plan: Fp16Plan, window: int | None) -> None:
        super().__init__(hf_model, spec, max_context, plan, cache_dtype=torch.float16)
        # The cache is the caller's state, passed to forward: StatefulDecoder's buffers would only be dead weight.
        del self.keyCache, self.valueCache
        self.window = window

    def cache_shape(self, positions: int) -> tuple[int, int, int, int, int]:
        """Shape of keyCache / valueCache with room for `positions` positions: [layers, 1, kv_heads, positions,
        head_dim], the layout of Apple's exports (coreai_models.primitives.macos.cache.KVCache)."""
        return (len(self.blocks), 1, self.kv_heads, positions, self.head_dim)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, keyCache: torch.Tensor,
                valueCache: torch.Tensor) -> torch.Tensor:
        query = input_ids.shape[-1]
        end = position_ids.shape[-1]
        past = end - query
        full_mask, sliding_mask = attention_masks(position_ids, query, self.window)
        positions = position_ids[0, past:]

        def rotary(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
            return (nn.functional.embedding(positions, getattr(self, f"cos_{kind}")),
                    nn.functional.embedding(positions, getattr(self, f"sin_{kind}")))

        def cache(index: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            keyCache[index, :, :, past:end, :] = k.to(keyCache.dtype)
            valueCache[index, :, :, past:end, :] = v.to(valueCache.dtype)
            return (keyCache[index, :, :, :end, :].float().unsqueeze(2),
                    valueCache[index, :, :, :end, :].float().unsqueeze(2))

        return self.decode(input_ids, rotary, cache, full_mask,
                           sliding_mask if sliding_mask is not None else full_mask)

    def output_layer(self, h: torch.Tensor) -> torch.Tensor:
        """The head's matrix times the hidden states' transpose: the same logits as h @ W^T, but W is not
        transposed, so a matrix product kept in fp32 (coreai_export's `mixed` precision) casts the stored table
        itself instead of a transposed constant, which the converter would store as a second copy of it (Gemma 3
        270M: 844 MB instead of 524). The converter folds the casts of small constants (Gemma 3 270M's k/v
        projections, a tiny test model's every weight) into fp32 ones."""
        if self.head_chunks is not None:
            return super().output_layer(h)
        weight = self.embedding if self.head is None else self.head
        return torch.matmul(weight, h.transpose(-1, -2)).transpose(-1, -2)

    def reset(self) -> None:
        """Nothing to clear: the cache is the caller's."""
