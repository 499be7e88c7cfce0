"""Affine block quantization with a searched step, for Core ML's constexpr_blockwise_shift_scale (iOS 18).

coremltools' own int4 quantizer takes each block's min/max (or max |w|) as the grid. On Gemma 3
270M that costs a third of top-1 agreement (0.65 vs fp32), while llama.cpp's K-quants, which search
each block's scale and minimum, keep 0.94. iOS 18 lets a block carry a float offset
(output = scale * (data - offset)), so a K-quant-style grid is expressible: for each block of
`block` values along the input dimension, try steps (max - min) / k for k = 1..levels-1, keep the one
with the least squared error. A block whose values already lie on some affine grid (weights that came
from a 4-bit GGUF, as the bundled Gemma's did) is reproduced exactly; any other block gets no more
error than min/max rounding.

Where calibration activations are known (packager.calibration), each column's error is weighted by
the mean square of the activation it multiplies: Gemma's residual stream has a few channels two
orders of magnitude above the rest, and their weights deserve the finer grid (AWQ's observation).

`SearchedAffineQuantizer` plugs this into coremltools' linear_quantize_weights pass (its
blockwise_compress_by_dtype hook, coremltools 9.0) so the graph rewriting stays coremltools'.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

# Fractions of a block's range cut off at the low / high end before a least-squares refit.
SHRINKS = (0.0, 0.05, 0.1, 0.2)
# Values searched at a time (a chunk of whole rows). Measured 2026-12-05, one thread: the 8-bit search of a
# 16384 x 640 table took 1.37 s whole, 0.42 s in chunks of 2^16 values (0.47 at 2^18, 0.55 at 2^20); a
# 4-bit 2048 x 640 linear 0.33 -> 0.24 s. Same numbers bit for bit.
CHUNK_VALUES = 1 << 16
_CONST = re.compile(r"^blocks_(\d+)_(\w+?)_weight")


def searched_affine(weight: np.ndarray, bits: int, block: int,
                    importance: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (data uint, scale fp16, offset fp16) with weight ~= scale * (data - offset), blocks along axis 1.

    Candidates per block: every grid anchored at the block's minimum with step span / k, and the
    min/max range shrunk at either end followed by one weighted least-squares fit of (step, low) to
    the rounded values (K-quant style). `importance` (one value per input column, e.g. the mean
    squared activation that column multiplies) weights each value's squared error.

    Blocks are independent, so rows are searched CHUNK_VALUES at a time: the search's dozen temporaries
    then stay in the CPU's cache (same numbers bit for bit).
    """
    rows, cols = weight.shape
    if block <= 0 or cols % block:
        block = cols
    step = max(1, CHUNK_VALUES // cols)
    parts = [_searched_rows(weight[r:r + step], bits, block, importance) for r in range(0, rows, step)]
    data, scale, offset = (np.concatenate(part) for part in zip(*parts, strict=True))
    return data, scale, offset


def _searched_rows(weight: np.ndarray, bits: int, block: int,
                   importance: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows, cols = weight.shape
    levels = 2 ** bits - 1
    w = weight.astype(np.float32).reshape(rows, cols // block, block)
    imp = np.ones(cols, np.float32) if importance is None else np.maximum(importance.astype(np.float32), 1e-12)
    iw = np.broadcast_to(imp.reshape(1, cols // block, block), w.shape)
    low = w.min(axis=-1, keepdims=True)
    span = w.max(axis=-1, keepdims=True) - low
    best_err = np.full(low.shape, np.inf, dtype=np.float32)
    best_step = np.where(span > 0, span / levels, 1.0).astype(np.float32)
    best_low = low.copy()

    def consider(step: np.ndarray, lo: np.ndarray) -> None:
        nonlocal best_err, best_step, best_low
        q = np.clip(np.rint((w - lo) / step), 0, levels)
        err = (iw * np.square(q * step + lo - w)).sum(axis=-1, keepdims=True)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_step = np.where(better, step, best_step)
        best_low = np.where(better, lo, best_low)

    # 4 bits: every step count; 8 bits: the 8 largest (the others never win there, and the table is 168M values)
    for k in (range(1, levels + 1) if levels <= 15 else range(levels - 7, levels + 1)):
        consider(np.where(span > 0, span / k, 1.0).astype(np.float32), low)
    shrinks = SHRINKS if levels <= 15 else (0.0,)  # at 8 bits the grid search alone is within noise, and cheaper
    for cut_low in shrinks:
        for cut_high in shrinks:
            lo = low + cut_low * span
            step = np.where(span > 0, span * (1 - cut_low - cut_high) / levels, 1.0).astype(np.float32)
            q = np.clip(np.rint((w - lo) / step), 0, levels)
            # weighted least squares of w ~= step * q + lo over the block
            sw, sq = iw.sum(-1, keepdims=True), (iw * q).sum(-1, keepdims=True)
            sqq = (iw * q * q).sum(-1, keepdims=True)
            sx, sqx = (iw * w).sum(-1, keepdims=True), (iw * q * w).sum(-1, keepdims=True)
            det = sw * sqq - sq * sq
            solvable = det > 1e-20
            fit_step = np.where(solvable, (sw * sqx - sq * sx) / np.where(solvable, det, 1.0), step)
            fit_low = np.where(solvable, (sqq * sx - sq * sqx) / np.where(solvable, det, 1.0), lo)
            usable = fit_step > 0
            consider(np.where(usable, fit_step, step).astype(np.float32), np.where(usable, fit_low, lo))
    scale = best_step.astype(np.float16)
    scale = np.where(scale == 0, np.float16(1.0), scale)  # an fp16-underflowing step: the block is ~constant
    offset = (-best_low / scale.astype(np.float32)).astype(np.float16)
    data = np.clip(np.rint(w / scale.astype(np.float32) + offset.astype(np.float32)), 0, levels)
    return data.reshape(rows, cols).astype(np.uint8), scale[..., 0], offset[..., 0]


def dequantize(data: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """scale * (data - offset), blocks along axis 1 (the Core ML op's definition)."""
    rows, cols = data.shape
    block = cols // scale.shape[1]
    d = data.astype(np.float32).reshape(rows, scale.shape[1], block)
    return (scale[..., None].astype(np.float32) * (d - offset[..., None].astype(np.float32))).reshape(rows, cols)


def const_key(const_name: str) -> str | None:
    """The MIL const of a decoder linear ("blocks_3_q_proj_weight_to_fp16") -> "3.q_proj" (calibration's key)."""
    match = _CONST.match(const_name)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def searched_quantizer_pass(config: Any, importance: dict[str, np.ndarray] | None = None) -> Any:
    """A linear_quantize_weights pass whose affine ("linear" mode) blocks use searched_affine.

    `importance` maps calibration keys ("3.q_proj") to per-input-column weights of the error.
    """
    weights_of = importance or {}
    from coremltools.converters.mil.mil import types
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.optimize import _utils as optimize_utils

    base = type(PASS_REGISTRY["compression::linear_quantize_weights"])

    class SearchedAffineQuantizer(base):  # type: ignore[misc, valid-type]
        current: str = ""

        def transform_op(self, op: Any) -> None:
            self.current = op.name  # blockwise_compress_by_dtype is not told which const it compresses
            super().transform_op(op)

        def blockwise_compress_by_dtype(self, original_data: np.ndarray, dtype: Any, mode: str,
                                        block_sizes: list[int]) -> Any:
            if isinstance(dtype, str):
                dtype = types.string_to_builtin(dtype)
            unsigned = types.is_int(dtype) and dtype.is_unsigned()
            if mode.upper() != "LINEAR" or original_data.ndim != 2 or not unsigned:
                return super().blockwise_compress_by_dtype(original_data, dtype, mode, block_sizes)
            key = const_key(self.current)
            column_weights = weights_of.get(key) if key else None
            if column_weights is not None and column_weights.shape[0] != original_data.shape[1]:
                column_weights = None
            data, scale, offset = searched_affine(original_data, dtype.get_bitwidth(), int(block_sizes[1] or 0),
                                                  column_weights)
            return optimize_utils.QuantParams(data=data.astype(types.nptype_from_builtin(dtype)), scale=scale,
                                              offset=offset, nbits=np.uint8(dtype.get_bitwidth()))

    quantizer = SearchedAffineQuantizer()
    quantizer.set_options([PassOption("config", config), PassOption("joint_compression", False)])
    return quantizer
