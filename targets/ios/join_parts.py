"""Join the parts of a decoder converted one at a time into the one ML Program the whole would have been.

A decoder too big to convert at once in memory is converted in parts (targets.ios.model.StatefulDecoder's
`layers`): the first reads token ids and returns the residual stream, the next ones read and return the stream,
the last returns logits; each updates its own layers' rows of the same keyCache/valueCache state. The parts are
then joined at the level of the saved packages, which needs no weight in memory: the program of part k's ops
follows part k-1's (its names prefixed, its residual input renamed to the previous part's output), and its
weight file is appended to the joined one (blob offsets shifted). A weight that two parts hold with the same
bytes (a tied head's table, read by the first part's embedding lookup and the last part's head) is stored once.

MIL weight files (coremltools' milstorage, version 2): a 64-byte header whose first uint32 is the blob count,
then per blob a 64-byte metadata record (sentinel 0xDEADBEEF, dtype, byte size, absolute data offset) and the
data, 64-byte aligned. A const's blobFileValue offset points at its metadata record.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packager.errors import InternalError
from targets.ios.convert import PART_INPUT, root_spec_path

HEADER_BYTES = 64
ALIGN = 64
SENTINEL = 0xDEADBEEF
# Bytes of a metadata record read here: sentinel, dtype (uint32 each), size in bytes, data offset (uint64 each).
RECORD = struct.Struct("<IIQQ")
WEIGHTS = Path("Data/com.apple.CoreML/weights/weight.bin")


@dataclass(frozen=True)
class Blob:
    """One weight in a weight file: where its metadata record and its data are."""

    record: int
    dtype: int
    size: int
    data: int


def read_blobs(path: Path) -> list[Blob]:
    """Every blob of a MIL weight file, in file order (only the records are read)."""
    blobs = []
    with path.open("rb") as f:
        count = struct.unpack("<I", f.read(4))[0]
        at = HEADER_BYTES
        for _ in range(count):
            f.seek(at)
            sentinel, dtype, size, data = RECORD.unpack(f.read(RECORD.size))
            if sentinel != SENTINEL:
                raise InternalError(f"{path}: no blob record at byte {at}; not a MIL weight file this code knows")
            blobs.append(Blob(at, dtype, size, data))
            at = _aligned(data + size)
    return blobs


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def join_packages(parts: list[Path], out: Path, consume: bool = False) -> None:
    """Write at `out` the package whose program runs `parts` (saved .mlpackages, first to last) as one; with
    `consume`, each part's weight file is deleted once copied (a 4B's parts and the joined package were
    otherwise on disk at once: 7.4 GB twice in fp16)."""
    from coremltools.proto import Model_pb2

    specs = []
    for part in parts:
        spec = Model_pb2.Model()
        spec.ParseFromString(root_spec_path(part).read_bytes())
        specs.append(spec)
    # The first part's package without its weights (the joined file is written in their place).
    shutil.copytree(parts[0], out, ignore=lambda folder, names: [WEIGHTS.name] if folder.endswith("weights") else [])
    offsets = _join_weights([part / WEIGHTS for part in parts], out / WEIGHTS, consume)
    joined = specs[0]
    main = joined.mlProgram.functions["main"]
    block = main.block_specializations[main.opset]
    _move_blobs(block.operations, offsets[0])
    previous = block.outputs[0]
    for k, spec in enumerate(specs[1:], start=1):
        function = spec.mlProgram.functions["main"]
        part_block = function.block_specializations[function.opset]
        kept = {value.name for value in function.inputs} - {_stream_input(function)}
        last = k == len(specs) - 1
        renamed = _renamer(f"part{k}_", kept, {_stream_input(function): previous},
                           set(part_block.outputs) if last else set())
        for op in part_block.operations:
            _rename_op(op, renamed)
        _move_blobs(part_block.operations, offsets[k])
        block.operations.extend(part_block.operations)
        previous = renamed(part_block.outputs[0])
    block.outputs[:] = [previous]
    _share_weights(block)
    del joined.description.output[:]
    joined.description.output.extend(specs[-1].description.output)
    root_spec_path(out).write_bytes(joined.SerializeToString(deterministic=True))


def _stream_input(function: Any) -> str:
    names = [value.name for value in function.inputs]
    if PART_INPUT not in names:
        raise InternalError(f"a decoder part after the first has no {PART_INPUT} input (inputs: {names})")
    return PART_INPUT


def _renamer(prefix: str, kept: set[str], mapped: dict[str, str], final: set[str]) -> Any:
    """The new name of a part's variable: the program's inputs and the last part's outputs keep theirs, the
    residual input becomes the previous part's output, every other name gets the part's prefix."""
    def rename(name: str) -> str:
        if name in mapped:
            return mapped[name]
        return name if name in kept or name in final else prefix + name
    return rename


def _rename_op(op: Any, rename: Any) -> None:
    _rename_inputs(op, rename)
    for output in op.outputs:
        output.name = rename(output.name)
    if "name" in op.attributes:
        values = op.attributes["name"].immediateValue.tensor.strings.values
        values[0] = rename(values[0])
    for inner in op.blocks:
        for value in inner.inputs:
            value.name = rename(value.name)
        inner.outputs[:] = [rename(name) for name in inner.outputs]
        for nested in inner.operations:
            _rename_op(nested, rename)


def _share_weights(block: Any) -> None:
    """One op per weight: a const reading a blob an earlier const reads, or a weight expansion (constexpr_*) of
    the same inputs as an earlier one, is dropped and its readers read the earlier one's output. The joined
    program then holds a tied table once, as the whole decoder's does (Core ML loads each const op's weight)."""
    alias: dict[str, str] = {}
    first: dict[bytes, str] = {}
    kept = []
    for op in block.operations:
        _rename_inputs(op, lambda name: alias.get(name, name))
        key = _weight_key(op)
        if key is not None and key in first:
            alias[op.outputs[0].name] = first[key]
            continue
        if key is not None:
            first[key] = op.outputs[0].name
        kept.append(op)
    del block.operations[:]
    block.operations.extend(kept)
    block.outputs[:] = [alias.get(name, name) for name in block.outputs]


def _weight_key(op: Any) -> bytes | None:
    """What makes two ops the same weight: the op without its name (its inputs already renamed), for a const read
    from the weight file or a weight expansion; None for any other op."""
    blob = op.type == "const" and op.attributes["val"].WhichOneof("value") == "blobFileValue"
    if not (blob or op.type.startswith("constexpr_")) or len(op.outputs) != 1:
        return None
    copy = type(op)()
    copy.CopyFrom(op)
    del copy.attributes["name"]
    copy.outputs[0].name = ""
    return copy.SerializeToString(deterministic=True)


def _rename_inputs(op: Any, rename: Any) -> None:
    for argument in op.inputs.values():
        for binding in argument.arguments:
            if binding.WhichOneof("binding") == "name":
                binding.name = rename(binding.name)


def _move_blobs(operations: Any, offsets: dict[int, int]) -> None:
    """Point every const that reads a weight file at its blob's record in the joined file."""
    values = []
    for op in operations:
        values += list(op.attributes.values())
        values += [binding.value for argument in op.inputs.values() for binding in argument.arguments
                   if binding.WhichOneof("binding") == "value"]
        for inner in op.blocks:
            _move_blobs(inner.operations, offsets)
    for value in values:
        if value.WhichOneof("value") == "blobFileValue":
            value.blobFileValue.offset = offsets[value.blobFileValue.offset]


def _join_weights(files: list[Path], out: Path, consume: bool) -> list[dict[int, int]]:
    """Write the joined weight file; per part, its record offsets -> the joined file's (a blob whose dtype and
    bytes are already in the joined file is not written again). With `consume`, each file is deleted once
    copied."""
    header = bytearray(_header(files[0]))
    seen: dict[tuple[int, int, str], int] = {}
    moved: list[dict[int, int]] = []
    count = 0
    with out.open("wb") as joined:
        joined.write(b"\0" * HEADER_BYTES)
        for path in files:
            offsets: dict[int, int] = {}
            with path.open("rb") as source:
                for blob in read_blobs(path):
                    key = (blob.dtype, blob.size, _digest(source, blob))
                    if key not in seen:
                        record = joined.tell()
                        source.seek(blob.record + RECORD.size)
                        rest = source.read(blob.data - blob.record - RECORD.size)
                        joined.write(RECORD.pack(SENTINEL, blob.dtype, blob.size, record + (blob.data - blob.record)))
                        joined.write(rest)
                        for piece in _pieces(source, blob):
                            joined.write(piece)
                        joined.write(b"\0" * (_aligned(joined.tell()) - joined.tell()))
                        seen[key] = record
                        count += 1
                    offsets[blob.record] = seen[key]
            moved.append(offsets)
            if consume:
                path.unlink()
        header[:4] = struct.pack("<I", count)
        joined.seek(0)
        joined.write(header)
    return moved


def _pieces(source: Any, blob: Blob, piece: int = 1 << 26) -> Any:
    """A blob's data in pieces of at most 64 MB (a 4B model's embedding table is 0.7 GB at 8 bits)."""
    source.seek(blob.data)
    left = blob.size
    while left:
        data = source.read(min(piece, left))
        left -= len(data)
        yield data


def _digest(source: Any, blob: Blob) -> str:
    digest = hashlib.sha256()
    for piece in _pieces(source, blob):
        digest.update(piece)
    return digest.hexdigest()


def _header(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(HEADER_BYTES)
