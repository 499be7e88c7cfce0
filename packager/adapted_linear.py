"""A linear layer with its LoRA adapter applied apart: y = x W^T (+ bias) + (x A^T) B^T.

Merged and then quantized, a small fine-tune's deltas are rounded back onto the base's grid (the bundled
example's router: 0.537 of its eval set at merged Q4_K_M, 0.926 in fp32). Kept apart, the base's weight is
quantized as usual while A and B stay in float: the same shape as llama.cpp's runtime adapters, as ops of
the exported program. `AdaptedLinear` is an nn.Linear, so quantizers that select linears (torchao's
quantize_, a target's plan) quantize its base weight and leave `lora_a` / `lora_b`, plain parameters, alone;
their parameter names are how a converted program's A and B are found again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from packager.adapter import LoraDelta


def row_scaled(tensor: torch.Tensor, factor: float) -> torch.Tensor:
    """`tensor` in fp32 times `factor`; unscaled, an fp32 tensor is shared, not copied (a copy of every weight was
    4 GB more for a 1B model)."""
    values = tensor.detach().float()
    return values if factor == 1.0 else values * factor


# AdaptedLinear's parameters holding the adapter: how an exported or converted program's A and B are found again.
ADAPTER_PARAMETERS = ("lora_a", "lora_b")


class AdaptedLinear(nn.Linear):
    """nn.Linear holding the base's weight, plus the adapter's A [r, in] and B [out, r] (B carries the scaling).

    `base_input` transforms the input of the base's product only (an eager screen's int8 activation
    quantization, which an exported 8da linear applies inside its own kernel, not to the adapter's path).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor) -> None:
        # On the meta device, then given its tensors: no random initialisation of a weight replaced at once.
        super().__init__(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
        self.weight = nn.Parameter(weight, requires_grad=False)
        if bias is not None:
            self.bias = nn.Parameter(bias, requires_grad=False)
        self.lora_a = nn.Parameter(a, requires_grad=False)
        self.lora_b = nn.Parameter(b, requires_grad=False)
        self.base_input: Callable[[torch.Tensor], torch.Tensor] | None = None

    @classmethod
    def of(cls, weight: torch.Tensor, bias: torch.Tensor | None, delta: LoraDelta,
           row_scale: float = 1.0) -> AdaptedLinear:
        """From a base weight (any float dtype) and its delta, in fp32; `row_scale` scales every output row (the
        base's and the adapter's alike), as a rewrite that rescales a linear's outputs needs."""
        return cls(row_scaled(weight, row_scale), None if bias is None else row_scaled(bias, row_scale),
                   delta.a.detach().float(), row_scaled(delta.b, delta.scaling * row_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = super().forward(x if self.base_input is None else self.base_input(x))
        return base + nn.functional.linear(nn.functional.linear(x, self.lora_a), self.lora_b)


def keep_adapter_apart(model: nn.Module, adapted: dict[str, tuple[torch.Tensor, LoraDelta]]) -> int:
    """Replace each adapted linear of a merged `model` (by base weight name) with an AdaptedLinear holding the
    base's own weight and the adapter; return how many were replaced."""
    replaced = 0
    for name, module in list(model.named_modules()):
        parts = adapted.get(f"{name}.weight")
        if parts is None or not isinstance(module, nn.Linear):
            continue
        base_weight, delta = parts
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, AdaptedLinear.of(base_weight, module.bias, delta))
        replaced += 1
    return replaced


def scale_input_columns(linear: nn.Linear, factors: torch.Tensor) -> None:
    """Multiply input channel j's column by factors[j]: the weight's, and an adapter's A's (it reads the same
    input), so a rewrite that divides the input by the factors (outlier smoothing) stays exact."""
    linear.weight.data *= factors
    if isinstance(linear, AdaptedLinear):
        linear.lora_a.data *= factors


def divide_output_rows(linear: nn.Linear, factors: torch.Tensor) -> None:
    """Divide output row i by factors[i]: the weight's, and an adapter's B's (its product adds to the same row)."""
    linear.weight.data /= factors[:, None]
    if isinstance(linear, AdaptedLinear):
        linear.lora_b.data /= factors[:, None]
