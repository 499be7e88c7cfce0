"""Quantize large weights a slice of rows at a time, with the same result as torchao's whole-tensor quantization.

torchao's Int8DynamicActivationIntxWeightConfig quantizes a weight in one piece (IntxUnpackedToInt8Tensor.from_hp),
with several float temporaries the size of the weight. For Gemma's tied output head (262,144 rows) that was the
peak of a whole Android export: measured 2026-12-06, Gemma 3 270M's export process rose from 1.55 to 2.86 GB while
its head was quantized, and a Gemma 3 1B's export child reached 6.8 GB. Its scales are per row or per group of a
row (block size (1, n)), so every row's numbers depend on that row alone, and quantizing slices of rows gives
the same int8 values, scales and zero points, joined afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Rows quantized at once: 16,384 rows of a 2,560-wide fp32 head (Gemma 3 4B) are 168 MB per temporary.
SLICE_ROWS = 16384


@contextmanager
def quantized_by_row_slices(rows: int = SLICE_ROWS) -> Iterator[None]:
    """Within the block, torchao's IntxUnpackedToInt8Tensor.from_hp quantizes a 2-D weight with row-wise blocks
    `rows` rows at a time (other calls are passed through unchanged)."""
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import IntxUnpackedToInt8Tensor

    original = IntxUnpackedToInt8Tensor.__dict__["from_hp"]
    whole = original.__get__(None, IntxUnpackedToInt8Tensor)

    def from_hp(cls: type, hp_tensor: Any, block_size: tuple[int, ...], target_dtype: Any, **kwargs: Any) -> Any:
        sliceable = (hp_tensor.ndim == 2 and block_size[0] == 1 and hp_tensor.shape[0] > rows
                     and kwargs.get("custom_scale") is None and kwargs.get("custom_zero_point") is None)
        if not sliceable:
            return whole(hp_tensor, block_size, target_dtype, **kwargs)
        return _joined([whole(part, block_size, target_dtype, **kwargs) for part in hp_tensor.split(rows)],
                       IntxUnpackedToInt8Tensor)

    IntxUnpackedToInt8Tensor.from_hp = classmethod(from_hp)  # type: ignore[method-assign, assignment]
    try:
        yield
    finally:
        IntxUnpackedToInt8Tensor.from_hp = original  # type: ignore[method-assign]


def _joined(parts: list[Any], kind: type) -> Any:
    """One quantized tensor from row slices quantized alike: their data, scales and zero points concatenated."""
    import torch

    first = parts[0]
    return kind(qdata=torch.cat([p.qdata for p in parts]), scale=torch.cat([p.scale for p in parts]),
                zero_point=torch.cat([p.zero_point for p in parts]), target_dtype=first.target_dtype,
                block_size=first.block_size, dtype=first.dtype, activation_quantization=first.activation_quantization)
