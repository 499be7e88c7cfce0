"""Checking and streaming tensors out of .safetensors files without trusting them.

A safetensors file is an 8-byte little-endian header length, a JSON header, then raw tensor
bytes. We validate the header and the byte ranges ourselves before the library touches the file,
so a truncated or corrupt download gives a message that names the file instead of a stack trace.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from packager.errors import BadInputError

_DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}
_MAX_HEADER = 100 * 1024 * 1024
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
# The value scan looks at this many elements at a time, so its scratch memory stays small (16 MB of flags).
_SCAN_ELEMENTS = 1 << 24
_ISFINITE_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives, read from a validated header."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _corrupt(path: Path, what: str) -> BadInputError:
    return BadInputError(
        f"{path}: {what}. The file is not a valid safetensors file (a broken download or an "
        "interrupted save). Re-download it or save the checkpoint again with save_pretrained()."
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry(path: Path, name: str, info: object) -> tuple[TensorEntry, int, int]:
    """Return one header entry with its byte range, after checking its dtype, shape and offsets agree."""
    if not isinstance(info, dict):
        raise _corrupt(path, f"the header entry for {name!r} is not a JSON object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _DTYPE_SIZES:
        raise _corrupt(path, f"tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
        raise _corrupt(path, f"tensor {name!r} has shape {shape!r}, which is not a list of whole numbers")
    if any(d < 0 for d in shape):
        raise _corrupt(path, f"tensor {name!r} has a negative dimension in its shape {shape}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise _corrupt(path, f"tensor {name!r} has data_offsets {offsets!r}, which is not a pair of whole numbers")
    start, end = offsets
    if start < 0 or end < start:
        raise _corrupt(path, f"tensor {name!r} has data_offsets [{start}, {end}], which is not a byte range")
    expected = _DTYPE_SIZES[dtype] * math.prod(shape)
    if end - start != expected:
        raise _corrupt(path, f"tensor {name!r} declares {end - start} bytes but its shape needs {expected}")
    return TensorEntry(name, dtype, tuple(shape), path), start, end


def read_header(path: Path) -> dict[str, TensorEntry]:
    """Return the tensors a safetensors file declares, after checking every byte range.

    The checks are the safetensors library's own (tensors tile the data section exactly: no overlap,
    no gap, no trailing bytes), made first so that a bad file is reported by name, not by a trace.
    """
    size = path.stat().st_size
    if size < 8:
        raise _corrupt(path, f"it is only {size} bytes long")
    with path.open("rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        if header_len == 0 or header_len > _MAX_HEADER or 8 + header_len > size:
            raise _corrupt(path, f"its header length field says {header_len} bytes, the file has {size}")
        raw = fh.read(header_len)
    try:
        header = json.loads(raw, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _corrupt(path, f"its JSON header does not parse ({exc})") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "its header is not a JSON object")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _corrupt(path, "its __metadata__ is not a table of strings")

    data_size = size - 8 - header_len
    entries: dict[str, TensorEntry] = {}
    ranges: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        entries[name], start, end = _entry(path, name, info)
        ranges.append((start, end, name))
    end_max = max((end for _, end, _ in ranges), default=0)
    if end_max > data_size:
        raise BadInputError(
            f"{path}: the file is truncated: its header declares {end_max:,} bytes of tensor data but "
            f"only {data_size:,} bytes follow the header. Re-download the file or save the checkpoint "
            "again; edgepack will not convert a partial model."
        )
    position, previous = 0, None
    for start, end, name in sorted(ranges):
        if start != position:
            what = "overlap" if start < position else f"leave {start - position:,} unused bytes between them"
            after = f"the bytes of {previous!r}" if previous else "the start of the data"
            raise _corrupt(path, f"tensor {name!r} starts at byte {start:,} of the data, which does not follow "
                                 f"{after} (they {what})")
        position, previous = end, name
    if position != data_size:
        raise _corrupt(path, f"{data_size - position:,} trailing bytes follow the last tensor's data")
    return entries


def load_tensor(entry: TensorEntry) -> torch.Tensor:
    """Load one tensor (memory-mapped read, no copy of the rest of the file)."""
    try:
        with safe_open(str(entry.file), framework="pt") as fh:
            return fh.get_tensor(entry.name)
    except SafetensorError as exc:
        raise _corrupt(entry.file, f"the safetensors library cannot read tensor {entry.name!r} ({exc})") from None


def count_non_finite(tensor: torch.Tensor) -> tuple[int, int]:
    """Return (NaN count, infinite count) of a tensor, scanned in bounded chunks (0, 0 for integers)."""
    if not tensor.is_floating_point():
        return 0, 0
    flat = tensor.reshape(-1)
    nan = inf = 0
    for start in range(0, flat.numel(), _SCAN_ELEMENTS):
        block = flat[start:start + _SCAN_ELEMENTS]
        if block.dtype not in _ISFINITE_DTYPES:
            block = block.float()
        if bool(torch.isfinite(block).all()):
            continue
        nan += int(torch.isnan(block).sum())
        inf += int(torch.isinf(block).sum())
    return nan, inf


def require_finite(tensor: torch.Tensor, name: str, source: Path, fix: str) -> None:
    """Raise BadInputError naming the tensor and its file when it holds a NaN or an infinity."""
    nan, inf = count_non_finite(tensor)
    if nan or inf:
        what = " and ".join(f"{n:,} {kind}" for n, kind in ((nan, "NaN"), (inf, "infinite")) if n)
        raise BadInputError(f"{source}: tensor {name!r} holds {what} value(s) of {tensor.numel():,}. {fix}")
