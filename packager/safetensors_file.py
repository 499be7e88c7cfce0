"""Checking and streaming tensors out of .safetensors files without trusting them.

A safetensors file is an 8-byte little-endian header length, a JSON header, then raw tensor
bytes. We validate the header and the byte ranges ourselves before the library touches the file,
so a truncated or corrupt download gives a message that names the file instead of a stack trace.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from packager.errors import BadInputError

_DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives, read from a validated header."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path


def _corrupt(path: Path, what: str) -> BadInputError:
    return BadInputError(
        f"{path}: {what}. The file is not a valid safetensors file (a broken download or an "
        "interrupted save). Re-download it or save the checkpoint again with save_pretrained()."
    )


def read_header(path: Path) -> dict[str, TensorEntry]:
    """Return the tensors a safetensors file declares, after checking every byte range."""
    size = path.stat().st_size
    if size < 8:
        raise _corrupt(path, f"it is only {size} bytes long")
    with path.open("rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        if header_len == 0 or header_len > _MAX_HEADER or 8 + header_len > size:
            raise _corrupt(path, f"its header length field says {header_len} bytes, the file has {size}")
        raw = fh.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(path, f"its JSON header does not parse ({exc})") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "its header is not a JSON object")

    data_size = size - 8 - header_len
    entries: dict[str, TensorEntry] = {}
    end_max = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise _corrupt(path, f"the header entry for {name!r} is malformed") from None
        if dtype not in _DTYPE_SIZES:
            raise _corrupt(path, f"tensor {name!r} has unknown dtype {dtype!r}")
        expected = _DTYPE_SIZES[dtype]
        for dim in shape:
            expected *= int(dim)
        if end - start != expected or start < 0:
            raise _corrupt(path, f"tensor {name!r} declares {end - start} bytes but its shape needs {expected}")
        end_max = max(end_max, end)
        entries[name] = TensorEntry(name, dtype, shape, path)
    if end_max > data_size:
        raise BadInputError(
            f"{path}: the file is truncated: its header declares {end_max:,} bytes of tensor data but "
            f"only {data_size:,} bytes follow the header. Re-download the file or save the checkpoint "
            "again; edgepack will not convert a partial model."
        )
    return entries


def load_tensor(entry: TensorEntry) -> torch.Tensor:
    """Load one tensor (memory-mapped read, no copy of the rest of the file)."""
    with safe_open(str(entry.file), framework="pt") as fh:
        return fh.get_tensor(entry.name)
