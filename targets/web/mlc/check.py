"""Verifying an MLC weight folder at the `structural` level (no mlc-llm runtime can be built here).

What is checked, from the files on disk back to the source checkpoint:
- every tensor mlc-llm's model expects is present with the right shape and dtype, and nothing else;
- each shard's size and md5 match tensor-cache.json, and every record lies inside its shard;
- every tensor decoded as the runtime decodes it (bf16 widening, int4 unpacking) round-trips to
  the source weight within the quantizer's own bound: half a quantization step per group
  (plus the model dtype's rounding), and the error is reported per tensor.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from packager.checkpoint import Checkpoint
from targets.web.mlc.writer import (
    TENSOR_CACHE,
    MLCQuantization,
    decode_stored,
    dequantize_group,
    expected_records,
    load_source,
    plan_params,
)


@dataclass
class TensorError:
    """Round-trip error of one MLC parameter against its source weight (float32)."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    rel_rms: float
    bound: float  # the largest error the format allows for this tensor
    within_bound: bool


@dataclass
class MLCCheck:
    """The outcome of check_mlc_folder: failures (empty when structurally sound) and per-tensor errors."""

    failures: list[str]
    tensors: list[TensorError]
    shards: int
    bytes: int

    @property
    def worst_rel_rms(self) -> float:
        return max((t.rel_rms for t in self.tensors), default=0.0)


def _read_records(folder: Path) -> tuple[dict, dict[str, tuple[dict, dict]], list[str]]:
    cache = json.loads((folder / TENSOR_CACHE).read_text(encoding="utf-8"))
    records: dict[str, tuple[dict, dict]] = {}
    failures: list[str] = []
    for shard in cache["records"]:
        path = folder / shard["dataPath"]
        if not path.is_file():
            failures.append(f"{shard['dataPath']}: missing")
            continue
        data = path.read_bytes()
        if len(data) != shard["nbytes"]:
            failures.append(f"{shard['dataPath']}: {len(data)} bytes, tensor-cache.json says {shard['nbytes']}")
        if hashlib.md5(data).hexdigest() != shard["md5sum"]:
            failures.append(f"{shard['dataPath']}: md5 differs from tensor-cache.json")
        for rec in shard["records"]:
            if rec["byteOffset"] + rec["nbytes"] > len(data):
                failures.append(f"{rec['name']}: record runs past the end of {shard['dataPath']}")
            records[rec["name"]] = (shard, rec)
    return cache, records, failures


def _dtype_step(dtype: str) -> float:
    """Relative rounding of a stored float dtype (bf16 for float32 records, as tvmjs stores them)."""
    return {"float16": 2.0**-11, "float32": 2.0**-8}.get(dtype, 0.0)


def check_mlc_folder(ckpt: Checkpoint, folder: Path, quant: MLCQuantization) -> MLCCheck:
    """Check names, shapes, shards and the numeric round trip of an MLC weight folder."""
    cache, records, failures = _read_records(folder)
    expected = expected_records(ckpt, quant)
    for name, (shape, dtype) in expected.items():
        if name not in records:
            failures.append(f"{name}: missing from {TENSOR_CACHE}")
            continue
        rec = records[name][1]
        if tuple(rec["shape"]) != shape or rec["dtype"] != dtype:
            failures.append(f"{name}: stored as {rec['dtype']}{rec['shape']}, the model expects {dtype}{list(shape)}")
    failures += [f"{name}: not a parameter of the model" for name in records if name not in expected]
    if failures:
        return MLCCheck(failures, [], len(cache["records"]), sum(s["nbytes"] for s in cache["records"]))

    blobs: dict[str, bytes] = {}

    def array(name: str) -> np.ndarray:
        shard, rec = records[name]
        if shard["dataPath"] not in blobs:
            blobs.clear()  # one shard in memory at a time (they are read in order)
            blobs[shard["dataPath"]] = (folder / shard["dataPath"]).read_bytes()
        raw = blobs[shard["dataPath"]][rec["byteOffset"]:rec["byteOffset"] + rec["nbytes"]]
        return decode_stored(raw, rec)

    tensors: list[TensorError] = []
    step = _dtype_step(quant.model_dtype)
    for param in plan_params(ckpt, quant):
        source = load_source(ckpt, param)
        if param.quantized:
            q_scale = array(f"{param.stem}.q_scale").astype(np.float32)
            restored = dequantize_group(array(f"{param.stem}.q_weight"), q_scale, quant)
            # Half a step per group, the model dtype's rounding of w / scale + 7 (mlc-llm computes in it), and the
            # rounding of the weight itself before quantizing.
            bound = float(np.max(q_scale) * (0.5 + 16 * step) + np.max(np.abs(source)) * step) * 1.01
        else:
            restored = array(f"{param.stem}.{param.suffix}").astype(np.float32)
            bound = float(np.max(np.abs(source)) * step) * 1.01
        diff = np.abs(restored - source)
        max_abs = float(diff.max()) if diff.size else 0.0
        norm = float(np.sqrt(np.mean(source.astype(np.float64) ** 2))) or 1.0
        rel_rms = float(np.sqrt(np.mean(diff.astype(np.float64) ** 2))) / norm
        ok = max_abs <= bound + 1e-12
        tensors.append(TensorError(param.stem, param.shape, max_abs, rel_rms, bound, ok))
        if not ok:
            failures.append(f"{param.stem}: round-trip error {max_abs:.3g} exceeds the format's bound {bound:.3g}")
    return MLCCheck(failures, tensors, len(cache["records"]), sum(s["nbytes"] for s in cache["records"]))
