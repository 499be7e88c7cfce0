"""Splitting a GGUF into parts a browser can fetch and hold: llama.cpp's gguf-split layout.

Browsers cap a single ArrayBuffer (about 2 GB) and download several smaller files faster, so web
bundles ship GGUFs in parts of at most 512 MB, or as large as the largest tensor needs when one is
larger (gguf-split never cuts a tensor: Gemma 3 4B's token table alone is 680 MB in Q8_0), up to the
browser's cap. The parts follow llama.cpp's `gguf-split` format, which llama.cpp (and wllama) load
from the first part's path: `<stem>-00001-of-0000N.gguf`, every part a valid GGUF, the first
holding all metadata plus `split.no`, `split.count` and `split.tensors.count`, the others only the
split keys and their tensors. Tensor bytes are copied unchanged, so a split model computes exactly
what the whole file computes.
"""

from __future__ import annotations

from pathlib import Path

import gguf

from packager.errors import InternalError, UnsupportedError

MAX_PART_BYTES = 512 * 1024 * 1024
# The largest ArrayBuffer a browser gives one file (V8's limit, as wllama documents it).
BROWSER_BUFFER_LIMIT = 2**31 - 1
_SPLIT_KEYS = (
    gguf.Keys.Split.LLM_KV_SPLIT_NO,
    gguf.Keys.Split.LLM_KV_SPLIT_COUNT,
    gguf.Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT,
)
# Room for the three split keys and rounding, on top of the source's own header size.
_HEADER_SLACK = 256


def part_names(stem: str, count: int) -> list[str]:
    """Return gguf-split's file names for `count` parts (a single part keeps the plain name)."""
    if count == 1:
        return [f"{stem}.gguf"]
    return [f"{stem}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def split_gguf(src: Path, dest_dir: Path, max_bytes: int = MAX_PART_BYTES,
               limit: int = BROWSER_BUFFER_LIMIT) -> list[Path]:
    """Write src into dest_dir as gguf-split parts of at most max_bytes each (or, when one tensor needs more,
    parts as large as the largest tensor needs, never above `limit`); return them in order.

    A file that already fits is not rewritten: the caller places it whole (see part_names).
    """
    if src.stat().st_size <= max_bytes:
        raise InternalError(f"split_gguf: {src.name} fits in one part; place it as is")
    reader = gguf.GGUFReader(str(src))
    # Every part's header is at most the source's (it lists a subset of the tensors), and each
    # tensor may gain up to one alignment unit of padding.
    overhead = reader.data_offset + reader.alignment * len(reader.tensors) + _HEADER_SLACK
    largest = max(t.n_bytes for t in reader.tensors)
    budget = max(max_bytes - overhead, largest)
    part_bytes = budget + overhead  # max_bytes, or what the largest tensor needs
    if part_bytes > limit:
        raise UnsupportedError(
            f"{src.name}: a tensor of {largest / 2**20:.0f} MB needs a part of {part_bytes / 2**20:.0f} MB, more "
            f"than the {limit / 2**20:.0f} MB a browser holds in one buffer (gguf-split never cuts a tensor). "
            "Use a smaller --quant."
        )
    arch_field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    if arch_field is None:
        raise UnsupportedError(f"{src}: has no general.architecture; not a model GGUF")
    dest_dir.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(dest_dir / src.name), str(arch_field.contents()), split_max_size=budget)
    writer.data_alignment = reader.alignment
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == gguf.Keys.General.ARCHITECTURE or field.name in _SPLIT_KEYS:
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                               tensor.tensor_type)
    paths = writer.format_shard_names(dest_dir / src.name)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data)
    writer.close()
    oversized = [p.name for p in paths if p.stat().st_size > part_bytes]
    if oversized:
        raise InternalError(f"split_gguf wrote parts larger than {part_bytes} bytes: {', '.join(oversized)}")
    return paths
