"""Writing a checkpoint as GGUF: F32/F16/BF16 and the numpy quants here, K-quants via llama.cpp.

One writer serves every architecture: the tensor names come from gguf-py's tensor map and the
per-architecture transforms (norm offset, Q/K permutation, embedding truncation, llama3 rope
factors) from packager.architectures. Tensors are streamed: the header is written from shapes
alone, then each tensor is loaded, transformed, encoded and written before the next is read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch

from packager.architectures import ArchitectureSpec, full_rope_params, uses_llama3_rope
from packager.checkpoint import Checkpoint
from packager.errors import InternalError, UnsupportedError
from packager.formats.gguf_quantize import LLAMA_CPP_TYPES
from packager.formats.gguf_vocab import build_vocab, read_tokenizer_json, tokenizer_rows

Q = gguf.GGMLQuantizationType
FT = gguf.LlamaFileType

# Output types gguf-py encodes in numpy (byte-identical to llama.cpp's own encoders).
NUMPY_TYPES: dict[str, tuple[FT, Q]] = {
    "F32": (FT.ALL_F32, Q.F32),
    "F16": (FT.MOSTLY_F16, Q.F16),
    "BF16": (FT.MOSTLY_BF16, Q.BF16),
    "Q8_0": (FT.MOSTLY_Q8_0, Q.Q8_0),
    "Q4_0": (FT.MOSTLY_Q4_0, Q.Q4_0),
    "Q4_1": (FT.MOSTLY_Q4_1, Q.Q4_1),
    "Q5_0": (FT.MOSTLY_Q5_0, Q.Q5_0),
    "Q5_1": (FT.MOSTLY_Q5_1, Q.Q5_1),
}
QUANT_TYPES = tuple(NUMPY_TYPES) + tuple(LLAMA_CPP_TYPES)
# Part of every cached GGUF's key: bump when the bytes written for the same checkpoint change, so a
# stage cache filled by an older writer (e.g. before byte-fallback tokens were typed BYTE) is not reused.
WRITER_VERSION = 2

_SKIPPED_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")

Progress = Callable[[int, int], None]


def writes_architecture(spec: ArchitectureSpec) -> bool:
    """Return whether write_gguf can write `spec`'s architecture: the support every GGUF target shares."""
    return spec.gguf_arch is not None


def canonical_quant(name: str) -> str:
    """Return the canonical spelling of a GGUF output type, or raise a clear error."""
    upper = name.upper()
    if upper not in QUANT_TYPES:
        raise UnsupportedError(
            f"--quant {name}: unknown GGUF type. Choose one of: {', '.join(QUANT_TYPES)}."
        )
    return upper


@dataclass(frozen=True)
class PlannedTensor:
    """One GGUF tensor: where it comes from, its final shape and how it is encoded."""

    gguf_name: str
    source: str | None  # HF tensor name; None for generated tensors (rope_freqs)
    shape: tuple[int, ...]
    qtype: Q


def _tensor_qtype(gguf_name: str, shape: tuple[int, ...], file_qtype: Q) -> Q:
    # Mirrors llama.cpp's converter: norms, 1-D tensors and non-weights stay F32.
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return Q.F32
    if file_qtype in (Q.F32, Q.F16, Q.BF16):
        return file_qtype
    block, _ = gguf.GGML_QUANT_SIZES[file_qtype]
    return file_qtype if shape[-1] % block == 0 else Q.F16


class TensorTransform:
    """Applies the architecture table's per-tensor rules to HF tensors (float32 in, float32 out)."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.spec: ArchitectureSpec = ckpt.spec
        self.config = ckpt.config
        self.tensor_map = gguf.get_tensor_name_map(self.spec.gguf_arch, ckpt.config["num_hidden_layers"])
        self.vocab_rows = (
            tokenizer_rows(read_tokenizer_json(ckpt.folder)) if self.spec.truncate_embedding_to_tokenizer else None
        )

    def gguf_name(self, hf_name: str) -> str | None:
        if hf_name.endswith(_SKIPPED_SUFFIXES):
            return None
        name = self.tensor_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UnsupportedError(
                f"tensor {hf_name!r} has no GGUF name for architecture {self.spec.name}; the checkpoint has "
                "layers edgepack does not know how to convert."
            )
        return name

    def shape(self, hf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.vocab_rows is not None and hf_name.endswith("embed_tokens.weight"):
            return (min(shape[0], self.vocab_rows), *shape[1:])
        return shape

    def apply(self, hf_name: str, data: torch.Tensor, qtype: Q = Q.F32) -> torch.Tensor:
        """Return the tensor as llama.cpp expects it: F16 targets skip the float32 round trip."""
        needs_f32 = qtype != Q.F16  # norms are planned as F32, so the +1 offset is computed in f32
        if data.dtype not in (torch.float16, torch.float32):
            # bf16 -> f16 in torch rounds exactly like bf16 -> f32 -> f16 (to nearest even).
            data = data.to(torch.float32 if needs_f32 else torch.float16)
        if self.vocab_rows is not None and hf_name.endswith("embed_tokens.weight"):
            data = data[: self.vocab_rows]
        if self.spec.norm_offset and hf_name.endswith("norm.weight"):
            data = data + self.spec.norm_offset
        if self.spec.permute_qk:
            n_head = self.config["num_attention_heads"]
            if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
                data = _permute(data, n_head)
            elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
                data = _permute(data, self.config.get("num_key_value_heads") or n_head)
        return data


def _permute(weights: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder Q/K rows from HF's rotate_half layout to llama.cpp's interleaved rope layout."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def llama3_rope_factors(config: dict) -> torch.Tensor:
    """Return the llama3 rope frequency factors tensor, computed as llama.cpp's converter does."""
    params = full_rope_params(config)
    base = params.get("rope_theta", 10000.0)
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor = params.get("factor", 8.0)
    low = params.get("low_freq_factor", 1.0)
    high = params.get("high_freq_factor", 4.0)
    old_ctx = params.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    factors: list = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(factors, dtype=torch.float32)


def _check_rope(ckpt: Checkpoint) -> None:
    rope_type = str(full_rope_params(ckpt.config).get("rope_type", "default")).lower()
    allowed = set(ckpt.spec.rope_types)
    if rope_type not in allowed:
        raise UnsupportedError(
            f"{ckpt.folder / 'config.json'}: rope_type {rope_type!r} is not supported for {ckpt.spec.name} "
            f"(supported: {', '.join(sorted(allowed))})."
        )


def plan_tensors(ckpt: Checkpoint, file_qtype: Q, transform: TensorTransform | None = None) -> list[PlannedTensor]:
    """Return the GGUF tensor list (names, shapes, types) from the headers alone."""
    _check_rope(ckpt)
    transform = transform or TensorTransform(ckpt)
    plan: list[PlannedTensor] = []
    if uses_llama3_rope(ckpt.spec, ckpt.config):
        name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        shape = tuple(llama3_rope_factors(ckpt.config).shape)
        plan.append(PlannedTensor(name, None, shape, Q.F32))
    for hf_name, entry in ckpt.tensors.items():
        gguf_name = transform.gguf_name(hf_name)
        if gguf_name is None:
            continue
        shape = transform.shape(hf_name, entry.shape)
        plan.append(PlannedTensor(gguf_name, hf_name, shape, _tensor_qtype(gguf_name, shape, file_qtype)))
    return plan


def _encode(data: torch.Tensor, qtype: Q) -> np.ndarray:
    if qtype == Q.F16:
        return data.to(torch.float16).numpy()
    array = data.numpy()
    if qtype == Q.F32:
        return array.astype(np.float32, copy=False)
    return gguf.quants.quantize(array, qtype)


def _nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n = 1
    for d in shape:
        n *= d
    return n // block * type_size


def write_gguf(ckpt: Checkpoint, out_path: Path, out_type: str, progress: Progress | None = None) -> Path:
    """Write `ckpt` as a GGUF of a numpy-encodable type, streaming one tensor at a time."""
    if out_type not in NUMPY_TYPES:
        raise InternalError(f"write_gguf cannot encode {out_type}; K-quants go through quantize_gguf")
    file_type, file_qtype = NUMPY_TYPES[out_type]
    transform = TensorTransform(ckpt)
    plan = plan_tensors(ckpt, file_qtype, transform)
    vocab = build_vocab(ckpt.folder, ckpt.config["vocab_size"])

    writer = gguf.GGUFWriter(str(out_path), gguf.MODEL_ARCH_NAMES[ckpt.spec.gguf_arch])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(ckpt.name)
    for key in ckpt.spec.gguf_keys:
        value = key.value(ckpt.config)
        if value is not None:
            getattr(writer, key.writer_method)(value)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    vocab.add_to(writer)

    for t in plan:
        # add_tensor_info takes the numpy byte shape for quantized data, the logical shape otherwise.
        if t.qtype in (Q.F32, Q.F16):
            np_dtype = np.float32 if t.qtype == Q.F32 else np.float16
            writer.add_tensor_info(t.gguf_name, t.shape, np.dtype(np_dtype), _nbytes(t.shape, t.qtype))
        else:
            byte_shape = gguf.quant_shape_to_byte_shape(t.shape, t.qtype)
            writer.add_tensor_info(t.gguf_name, byte_shape, np.dtype(np.uint8), _nbytes(t.shape, t.qtype),
                                   raw_dtype=t.qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()

    for i, t in enumerate(plan):
        if t.source is None:
            data = llama3_rope_factors(ckpt.config)
        else:
            data = transform.apply(t.source, ckpt.load(t.source), t.qtype)
        encoded = _encode(data, t.qtype)
        del data
        writer.write_tensor_data(encoded)
        del encoded
        if progress:
            progress(i + 1, len(plan))
    writer.close()
    return out_path

