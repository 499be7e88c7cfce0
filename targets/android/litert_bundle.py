"""Reading a .litertlm bundle: its sections, its LLM metadata, and its TFLite program as a file.

The layout is LiteRT-LM's own (litert_lm_builder's header schema, as `litert-lm-peek` reads it): a
flatbuffer header listing sections by byte range and data type, one of them the LlmMetadata proto,
one the zlib'd tokenizer.json, one the TFLite program with the prefill/decode signatures. The
program is extracted byte for byte (what `litert-lm-peek --dump_files_dir` writes), so the logits a
verification reads come from the very bytes the engine runs.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packager.errors import UnsupportedError

PROGRAM_MODEL_TYPE = "tf_lite_prefill_decode"


@dataclass(frozen=True)
class BundleSection:
    """One section of a .litertlm file: its byte range, data type and (for TFLite programs) model type."""

    data_type: str
    begin: int
    end: int
    model_type: str | None = None
    # "npu", "cpu, gpu", ...: the backends a program section is marked for (None: any).
    backend_constraint: str | None = None


@dataclass(frozen=True)
class BundleInfo:
    """What a .litertlm holds, as far as edgepack checks it."""

    sections: list[BundleSection]
    # LlmMetadata: start_token / stop_tokens (ids or strings), max_num_tokens, llm_model_type.
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def tokenizer(self) -> str:
        """The tokenizer section's type: HF_Tokenizer_Zlib (tokenizer.json) or SP_Tokenizer (SentencePiece)."""
        kinds = [s.data_type for s in self.sections if s.data_type in ("HF_Tokenizer_Zlib", "SP_Tokenizer")]
        return kinds[0] if kinds else "none"

    @property
    def program(self) -> BundleSection:
        found = [s for s in self.sections if s.data_type == "TFLiteModel" and s.model_type == PROGRAM_MODEL_TYPE]
        if len(found) != 1:
            raise UnsupportedError(f"the bundle holds {len(found)} {PROGRAM_MODEL_TYPE} programs, expected one "
                                   f"(sections: {', '.join(s.data_type for s in self.sections)})")
        return found[0]


def _token_union(token: Any) -> dict[str, Any]:
    """A LlmMetadata TokenUnion as JSON: {"ids": [...]} or {"text": "..."}."""
    if token.HasField("token_ids"):
        return {"ids": list(token.token_ids.ids)}
    return {"text": token.token_str}


def read_bundle(path: Path) -> BundleInfo:
    """Return the sections and LLM metadata of the .litertlm at `path`."""
    from litert_lm_builder import litertlm_header_schema_py_generated as schema
    from litert_lm_builder import litertlm_peek
    from litert_lm_builder.litertlm_core import any_section_data_type_to_string
    from litert_lm_builder.runtime.proto import llm_metadata_pb2

    try:
        header = litertlm_peek.read_litertlm_header(str(path), io.StringIO())
    except ValueError as exc:
        raise UnsupportedError(f"{path}: not a LiteRT-LM bundle ({exc})") from None
    listed = header.SectionMetadata()
    sections = []
    for i in range(listed.ObjectsLength() if listed else 0):
        obj = listed.Objects(i)
        sections.append(BundleSection(any_section_data_type_to_string(obj.DataType()), obj.BeginOffset(),
                                      obj.EndOffset(), litertlm_peek.get_model_type(obj),
                                      _string_item(obj, "backend_constraint")))
    metadata: dict[str, Any] = {}
    found = [s for s in sections if s.data_type == any_section_data_type_to_string(schema.AnySectionDataType
                                                                                    .LlmMetadataProto)]
    if found:
        proto = llm_metadata_pb2.LlmMetadata()
        proto.ParseFromString(_read_range(path, found[0]))
        metadata = {
            "start_token": _token_union(proto.start_token) if proto.HasField("start_token") else None,
            "stop_tokens": sorted((_token_union(t) for t in proto.stop_tokens), key=lambda t: repr(sorted(t.items()))),
            "max_num_tokens": int(proto.max_num_tokens),
            "model_type": proto.llm_model_type.WhichOneof("model_type") if proto.HasField("llm_model_type") else None,
        }
    return BundleInfo(sections, metadata)


def _string_item(section: Any, key: str) -> str | None:
    """A section's string metadata item `key` (as litertlm_peek reads model_type), or None."""
    from litert_lm_builder import litertlm_header_schema_py_generated as schema

    for i in range(section.ItemsLength()):
        item = section.Items(i)
        if item is None or item.Key() != key.encode() or item.ValueType() != schema.VData.StringValue:
            continue
        table = item.Value()
        value = schema.StringValue()
        value.Init(table.Bytes, table.Pos)
        return value.Value().decode("utf-8")
    return None


def _read_range(path: Path, section: BundleSection) -> bytes:
    with path.open("rb") as f:
        f.seek(section.begin)
        return f.read(section.end - section.begin)


def extract_program(path: Path, dest: Path) -> Path:
    """Write the bundle's prefill/decode TFLite program to `dest` (byte for byte) and return it."""
    program = read_bundle(path).program
    with path.open("rb") as src, dest.open("wb") as out:
        src.seek(program.begin)
        remaining = program.end - program.begin
        while remaining:
            chunk = src.read(min(remaining, 1 << 24))
            if not chunk:
                raise UnsupportedError(f"{path}: truncated (the program section ends past the end of the file)")
            out.write(chunk)
            remaining -= len(chunk)
    return dest
