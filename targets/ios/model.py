"""The PyTorch module edgepack converts to Core ML: a decoder with its KV cache as state, fp16-safe.

swift-transformers drives a stateful Core ML language model through fixed names: `inputIds`
[1, seq], additive fp16 masks `fullAttentionMask` (+ `slidingAttentionMask`) [1, 1, seq, total],
states `keyCache`/`valueCache` and output `logits` [1, seq, vocab]. The cache position is not an
input: it is `total - seq`, read from the mask's shape, which is how the Swift side drives it.

This module is written from the Hugging Face model's own weights and rotary tables, so it can be
compared with the original in fp32. The rewrites that keep every fp16 value finite are exact in real
arithmetic (powers of two, RMSNorm's scale invariance with its epsilon rescaled):

- residual stream divided by S: the embedding scale and every branch output (a post-norm gain, or an
  output projection) are divided by S, and the norms that read the stream use eps / S^2;
- each MLP's gated product divided by T (up_proj rows / T); a post-norm absorbs it (eps / T^2),
  otherwise down_proj is multiplied by T;
- RMSNorm computed on x / max|x| (eps / max|x|^2), so its squares never overflow.

Per-architecture facts (which norms exist, q/k norms, rope per layer type, sliding masks) come from
its CoreMLLayout row (targets.ios.layouts).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from packager.adapted_linear import AdaptedLinear, row_scaled
from targets.ios.layouts import coreml_layout

FP16_MAX = 65504.0
# Largest magnitude a measured activation may reach on calibration text: a 16x margin below fp16's
# maximum for inputs the calibration did not see.
FP16_BUDGET = FP16_MAX / 16


@dataclass
class Fp16Plan:
    """The exact rewrites applied: residual scale S, per-layer MLP scales T, and the safe norm switch."""

    enabled: bool = True
    residual_scale: float = 1.0
    mlp_scales: list[float] = field(default_factory=list)
    attn_scales: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "residual_scale": self.residual_scale, "mlp_scales": self.mlp_scales,
                "attn_scales": self.attn_scales}


# What StatefulDecoder.decode is given besides the ids and masks: each layer type's rotary cos/sin
# [seq, head_dim] for the tokens decoded, and a layer's cache (index, new keys, new values [1, kv_heads, seq,
# head_dim]) -> its keys and values so far [1, kv_heads, 1, total, head_dim] in fp32.
Rotary = Callable[[str], tuple[torch.Tensor, torch.Tensor]]
LayerCache = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _pow2_at_least(ratio: float) -> float:
    return float(2 ** max(0, math.ceil(math.log2(ratio)))) if ratio > 1 else 1.0


class SafeRMSNorm(nn.Module):
    """RMSNorm with gain `gain` (offset already added) and epsilon `eps`; `safe` divides by max|x| first."""

    def __init__(self, gain: torch.Tensor, eps: float, safe: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(gain.detach().float().clone(), requires_grad=False)
        self.eps = eps
        self.safe = safe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.safe:
            # eps / peak^2 written as (sqrt(eps) / peak)^2: peak^2 itself overflows fp16 above 256.
            peak = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-4)
            y = x / peak
            small = math.sqrt(self.eps) / peak
            return y * torch.rsqrt((y * y).mean(dim=-1, keepdim=True) + small * small) * self.weight
        return x * torch.rsqrt((x * x).mean(dim=-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class StatefulDecoder(nn.Module):
    """inputIds + masks -> logits, with keyCache/valueCache buffers that Core ML turns into state.

    `lm_head_chunk` > 0 splits the output projection into row chunks of that size (the Neural
    Engine refuses dimensions above 16,384), concatenated back into one logits tensor.
    `observe` (fp32 only) records max |value| per site for the fp16 range measurement.
    `cache_dtype` is float16 for conversion (Core ML's state type) and float32 for the exactness proof.
    `lora` (packager.adapter.adapted_base_weights of a merged `hf_model`'s adapter): its linears become
    packager.adapted_linear.AdaptedLinear, the base's weights and the adapter apart (the compression step finds
    A and B by their parameter names, targets.ios.convert.LORA_CONST, and leaves them fp16).
    `layers` (a part of a decoder converted alone when the whole would not fit in memory): only these blocks; the
    first part reads token ids, the others the residual stream [1, seq, hidden] (passed as `inputIds`), and every
    part but the last returns the stream instead of logits. The cache keeps every layer's row, so the parts
    joined into one program (targets.ios.join_parts) update one keyCache/valueCache as the whole decoder does.
    """

    def __init__(self, hf_model: Any, spec: Any, max_context: int, plan: Fp16Plan, lm_head_chunk: int = 0,
                 cache_dtype: torch.dtype = torch.float16, lora: dict[str, Any] | None = None,
                 layers: range | None = None) -> None:
        super().__init__()
        layout = coreml_layout(spec)
        config = hf_model.config
        self.layout = layout
        self.plan = plan
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.layer_types = list(getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers)
        self.sliding = [t == "sliding_attention" for t in self.layer_types]
        self.observe: dict[str, float] | None = None
        offset = spec.norm_offset
        eps = float(config.rms_norm_eps)
        s = plan.residual_scale
        safe = plan.enabled
        n_layers = config.num_hidden_layers
        mlp_t = plan.mlp_scales or [1.0] * n_layers
        attn_t = plan.attn_scales or [1.0] * n_layers

        base = hf_model.get_submodule(layout.base_module)
        # A part of the decoder (layers, see the class docstring) reads the weights of its own blocks only.
        self.layer_range = range(n_layers) if layers is None else layers
        self.first = self.layer_range.start == 0
        self.last = self.layer_range.stop == n_layers
        head = hf_model.get_submodule(layout.head_module).weight if self.last else None
        self.tied = self.last and (head.data_ptr() == base.embed_tokens.weight.data_ptr() or bool(
            getattr(config, "tie_word_embeddings", False)))
        if self.first or self.tied:
            self.embedding = nn.Parameter(base.embed_tokens.weight.detach().float(), requires_grad=False)
        embed_scale = math.sqrt(config.hidden_size) if spec.embedding_scale_sqrt_hidden else 1.0
        # Rounded as transformers rounds it (the scale is a bf16/fp32 buffer times the table's dtype).
        self.embed_scale = float(torch.tensor(embed_scale, dtype=torch.float32)) / s

        def norm(module: nn.Module, extra_gain: float = 1.0, eps_div: float = 1.0) -> SafeRMSNorm:
            gain = (module.weight.detach().float() + offset) * extra_gain
            return SafeRMSNorm(gain, eps / eps_div, safe)

        names = {id(module): name for name, module in hf_model.named_modules()} if lora else {}

        def linear(module: nn.Linear, row_scale: float = 1.0) -> nn.Module:
            adapted = lora.get(f"{names[id(module)]}.weight") if lora else None
            if adapted is not None:
                base_weight, delta = adapted
                return AdaptedLinear.of(base_weight, module.bias, delta, row_scale)
            # On the meta device: a weight of its own, randomly initialized and replaced at once, cost seconds.
            out = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
            out.weight = nn.Parameter(row_scaled(module.weight, row_scale), requires_grad=False)
            if module.bias is not None:
                out.bias = nn.Parameter(row_scaled(module.bias, row_scale), requires_grad=False)
            return out

        scaling = float(config.query_pre_attn_scalar) ** -0.5 if layout.query_pre_attn_scalar else self.head_dim ** -0.5
        self.hidden = int(config.hidden_size)
        # By the layer's index in the whole decoder: a part's weights get the names (and so the MIL const names the
        # quantizer's per-layer statistics are keyed by) that they have in the whole.
        self.blocks = nn.ModuleDict()
        for index in self.layer_range:
            hf_block = base.layers[index]
            attn, mlp = hf_block.self_attn, hf_block.mlp
            block = nn.Module()
            t_mlp, t_attn = mlp_t[index], attn_t[index]
            block.pre_attn = norm(hf_block.get_submodule(layout.pre_attention_norm), eps_div=s * s)
            block.pre_mlp = norm(hf_block.get_submodule(layout.pre_mlp_norm), eps_div=s * s)
            if layout.qk_norm:  # the softmax scale folds into q's norm gain (rope is linear)
                block.q_proj = linear(attn.q_proj)
                block.q_norm = norm(attn.q_norm, extra_gain=scaling)
                block.k_norm = norm(attn.k_norm)
            else:
                block.q_proj = linear(attn.q_proj, scaling)
            block.k_proj = linear(attn.k_proj)
            block.v_proj = linear(attn.v_proj)
            block.gate_proj = linear(mlp.gate_proj)
            block.up_proj = linear(mlp.up_proj, 1.0 / t_mlp)
            block.act = mlp.act_fn
            if layout.post_attention_norm:
                block.o_proj = linear(attn.o_proj, 1.0 / t_attn)
                block.post_attn = norm(hf_block.get_submodule(layout.post_attention_norm), 1.0 / s, t_attn * t_attn)
            else:
                block.o_proj = linear(attn.o_proj, 1.0 / s)
            if layout.post_mlp_norm:
                block.down_proj = linear(mlp.down_proj)
                block.post_mlp = norm(hf_block.get_submodule(layout.post_mlp_norm), 1.0 / s, t_mlp * t_mlp)
            else:
                block.down_proj = linear(mlp.down_proj, t_mlp / s)
            self.blocks[str(index)] = block
        self.lm_head_chunk = lm_head_chunk
        self.head_chunks, self.head = None, None
        if self.last:
            self.final_norm = norm(base.norm, eps_div=s * s)
            head = head.detach().float()
            if lm_head_chunk and head.shape[0] > lm_head_chunk:
                self.head_chunks = nn.ParameterList(
                    [nn.Parameter(chunk.clone(), requires_grad=False) for chunk in head.split(lm_head_chunk, dim=0)])
            elif not self.tied:  # a tied head reads the embedding table itself (one copy of the weights)
                self.head = nn.Parameter(head, requires_grad=False)
        self.softcap = getattr(config, "final_logit_softcapping", None)

        # Rotary tables for every position the cache holds, per layer type (Gemma: local and global).
        positions = torch.arange(max_context).unsqueeze(0)
        probe = torch.zeros(1, dtype=torch.float32)
        for kind in sorted(set(self.layer_types)):
            if layout.rope_per_layer_type:
                cos, sin = base.rotary_emb(probe, positions, kind)
            else:
                cos, sin = base.rotary_emb(probe, positions)
            self.register_buffer(f"cos_{kind}", cos[0].float().clone())
            self.register_buffer(f"sin_{kind}", sin[0].float().clone())
        shape = (n_layers, self.kv_heads, max_context, self.head_dim)
        self.register_buffer("keyCache", torch.zeros(shape, dtype=cache_dtype))
        self.register_buffer("valueCache", torch.zeros(shape, dtype=cache_dtype))

    def _seen(self, site: str, x: torch.Tensor) -> None:
        if self.observe is not None:
            self.observe[site] = max(self.observe.get(site, 0.0), float(x.detach().abs().max()))

    def forward(self, inputIds: torch.Tensor, fullAttentionMask: torch.Tensor,
                slidingAttentionMask: torch.Tensor | None = None) -> torch.Tensor:
        seq = inputIds.shape[1]  # ids [1, seq] or a part's residual stream [1, seq, hidden]
        end = fullAttentionMask.shape[-1]
        past = end - seq
        full_mask = fullAttentionMask.float().unsqueeze(2)
        sliding_mask = slidingAttentionMask.float().unsqueeze(2) if slidingAttentionMask is not None else full_mask

        def rotary(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
            return getattr(self, f"cos_{kind}")[past:end], getattr(self, f"sin_{kind}")[past:end]

        def cache(index: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.cached_keys_values(index, k, v, past, end)

        return self.decode(inputIds, rotary, cache, full_mask, sliding_mask)

    def cached_keys_values(self, index: int, k: torch.Tensor, v: torch.Tensor, past: Any,
                           end: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Write layer `index`'s new keys/values at past:end of the keyCache/valueCache buffers; return its
        keys/values 0:end in fp32 (a LayerCache)."""
        self.keyCache[index, :, past:end, :] = k[0].to(self.keyCache.dtype)
        self.valueCache[index, :, past:end, :] = v[0].to(self.valueCache.dtype)
        keys = self.keyCache[index, :, :end, :].float().unsqueeze(0).unsqueeze(2)
        values = self.valueCache[index, :, :end, :].float().unsqueeze(0).unsqueeze(2)
        return keys, values

    def decode(self, inputIds: torch.Tensor, rotary: Rotary, cache: LayerCache, full_mask: torch.Tensor,
               sliding_mask: torch.Tensor) -> torch.Tensor:
        """Logits [1, seq, vocab] of the tokens inputIds, given their rotary cos/sin per layer type, each layer's
        cache (new keys/values in, all keys/values so far out) and the additive masks [1, 1, 1, seq, total]."""
        h = nn.functional.embedding(inputIds, self.embedding) * self.embed_scale if self.first else inputIds.float()
        group = self.heads // self.kv_heads
        for index, block in zip(self.layer_range, self.blocks.values(), strict=True):
            self._seen("residual", h)
            kind = self.layer_types[index]
            cos, sin = rotary(kind)
            x = block.pre_attn(h)
            q = block.q_proj(x).view(1, -1, self.heads, self.head_dim).transpose(1, 2)
            k = block.k_proj(x).view(1, -1, self.kv_heads, self.head_dim).transpose(1, 2)
            v = block.v_proj(x).view(1, -1, self.kv_heads, self.head_dim).transpose(1, 2)
            if self.layout.qk_norm:
                q = block.q_norm(q)
                k = block.k_norm(k)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            keys, values = cache(index, k, v)
            q5 = q.reshape(1, self.kv_heads, group, -1, self.head_dim)
            scores = torch.matmul(q5, keys.transpose(-1, -2))
            self._seen("scores", scores)
            scores = scores + (sliding_mask if self.sliding[index] else full_mask)
            probs = torch.softmax(scores, dim=-1)
            out = torch.matmul(probs, values).reshape(1, self.heads, -1, self.head_dim)
            out = out.transpose(1, 2).reshape(1, -1, self.heads * self.head_dim)
            a = block.o_proj(out)
            self._seen(f"attn_out.{index}", a)
            if self.layout.post_attention_norm:
                a = block.post_attn(a)
            h = h + a
            x = block.pre_mlp(h)
            g = block.act(block.gate_proj(x))
            u = block.up_proj(x)
            p = g * u
            self._seen(f"mlp_product.{index}", p)
            d = block.down_proj(p)
            self._seen(f"mlp_out.{index}", d)
            if self.layout.post_mlp_norm:
                d = block.post_mlp(d)
            h = h + d
        self._seen("residual", h)
        if not self.last:
            return h
        logits = self.output_layer(self.final_norm(h))
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        self._seen("logits", logits)
        return logits

    def output_layer(self, h: torch.Tensor) -> torch.Tensor:
        """Logits of the normed hidden states: the head's rows in chunks, its own matrix, or the tied table."""
        if self.head_chunks is not None:
            return torch.cat([nn.functional.linear(h, chunk) for chunk in self.head_chunks], dim=-1)
        return nn.functional.linear(h, self.embedding if self.head is None else self.head)

    def reset(self) -> None:
        self.keyCache.zero_()
        self.valueCache.zero_()


def additive_masks(seq: int, total: int, sliding_window: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fp16 masks swift-transformers builds ([1, 1, seq, total], 0 or -65504), as tensors."""
    q = torch.arange(total - seq, total).unsqueeze(1)
    k = torch.arange(total).unsqueeze(0)
    neg = torch.tensor(-FP16_MAX, dtype=torch.float16)
    zero = torch.tensor(0.0, dtype=torch.float16)
    full = torch.where(k <= q, zero, neg).view(1, 1, seq, total)
    if sliding_window is None:
        return full, None
    window = (k <= q) & (k > q - sliding_window)
    return full, torch.where(window, zero, neg).view(1, 1, seq, total)


def measure_ranges(decoder: StatefulDecoder, sequences: list[list[int]],
                   sliding_window: int | None) -> dict[str, float]:
    """Max |value| per site of the (fp32) decoder on these token sequences (one prefill each)."""
    decoder.observe = {}
    with torch.no_grad():
        for ids in sequences:
            decoder.reset()
            full, sliding = additive_masks(len(ids), len(ids), sliding_window)
            decoder(torch.tensor([ids], dtype=torch.int32), full, sliding)
    seen, decoder.observe = decoder.observe, None
    decoder.reset()
    return seen


def plan_rewrites(ranges: dict[str, float], n_layers: int, current: Fp16Plan, post_norms: bool) -> Fp16Plan:
    """Raise the scales of a plan so every measured site stays under FP16_BUDGET (scales are powers of 2).

    Without post-norms (Llama) an MLP's output joins the residual stream at the stream's scale, so
    only its gated product is T's business.
    """
    s = current.residual_scale * _pow2_at_least(ranges.get("residual", 0.0) / FP16_BUDGET)
    mlp = list(current.mlp_scales or [1.0] * n_layers)
    attn = list(current.attn_scales or [1.0] * n_layers)
    for i in range(n_layers):
        worst = ranges.get(f"mlp_product.{i}", 0.0)
        if post_norms:
            worst = max(worst, ranges.get(f"mlp_out.{i}", 0.0))
        mlp[i] *= _pow2_at_least(worst / FP16_BUDGET)
        attn[i] *= _pow2_at_least(ranges.get(f"attn_out.{i}", 0.0) / FP16_BUDGET)
    return Fp16Plan(True, s, mlp, attn)
