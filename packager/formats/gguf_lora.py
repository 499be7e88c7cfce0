"""Writing a PEFT LoRA adapter as a GGUF adapter that llama.cpp applies to a quantized base at run time.

A merged 4-bit model rounds a small fine-tune's deltas back onto the base's grid; an adapter kept
apart stays in F16 and is added to the quantized base's output at run time (llama.cpp `--lora`,
llama-server's per-request scales, llama.rn's applyLoraAdapters). The file holds, per adapted
linear layer, `<gguf name>.lora_a` (rank x in) and `<gguf name>.lora_b` (out x rank), the base's
architecture and `adapter.lora.alpha`: the tensors llama.cpp's convert_lora_to_gguf.py writes
(tests/test_gguf_lora.py compares them byte for byte). Rows of B go through the same per-architecture
transform as the base weight they adapt (Llama's Q/K permutation), A is written as trained.

llama.cpp scales every layer by alpha / rank (the rank read from the tensor), so a scaling peft
computes otherwise (rsLoRA's alpha / sqrt(rank), rank_pattern / alpha_pattern) is folded into B.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch

from packager.adapter import LoraAdapter, read_adapter
from packager.checkpoint import Checkpoint
from packager.errors import InternalError, UnsupportedError
from packager.formats.gguf_writer import TensorTransform

Q = gguf.GGMLQuantizationType
# Adapter tensor types: llama.cpp adds B @ A's product in float, so F16 is its converter's default choice.
ADAPTER_TYPES = {"F16": Q.F16, "F32": Q.F32}


@dataclass(frozen=True)
class AdapterTensor:
    """One adapted layer: the GGUF name of the base weight, and its A and B as they will be written."""

    base_name: str
    a: torch.Tensor
    b: torch.Tensor


def adapter_tensors(adapter: LoraAdapter, base: Checkpoint) -> tuple[float, list[AdapterTensor]]:
    """Return the alpha to write and each adapted layer's A and B, with llama.cpp's layout and scaling."""
    if adapter.replacements:
        raise UnsupportedError(
            f"{adapter.folder}: the adapter saves whole tensors ({', '.join(sorted(adapter.replacements))}; peft's "
            "modules_to_save), which a runtime adapter cannot carry; build it merged (without --runtime-adapter).")
    transform = TensorTransform(base)
    alpha = float(adapter.config.get("lora_alpha", adapter.config["r"]))
    found = []
    for weight_name, delta in adapter.deltas.items():
        gguf_name = transform.gguf_name(weight_name)
        if gguf_name is None or not gguf_name.startswith("blk."):
            raise UnsupportedError(f"{adapter.folder}: an adapter on {weight_name} (outside the decoder blocks) "
                                   "cannot be applied at run time here; build it merged (without --runtime-adapter).")
        a, b = _float(delta.a), _float(delta.b)
        # llama.cpp multiplies by alpha / rank; fold peft's own scaling of this module in where they differ.
        applied = alpha / a.shape[0]
        if delta.scaling != applied:
            b = (b.float() * (delta.scaling / applied)).to(b.dtype)
        found.append(AdapterTensor(gguf_name, a, transform.apply(weight_name, b)))
    return alpha, found


def _float(data: torch.Tensor) -> torch.Tensor:
    """Float32 (as llama.cpp's converter reads anything but f16/f32), f16 and f32 kept as they are."""
    return data if data.dtype in (torch.float16, torch.float32) else data.to(torch.float32)


def _encode(data: torch.Tensor, qtype: Q) -> np.ndarray:
    return data.to(torch.float16 if qtype == Q.F16 else torch.float32).contiguous().numpy()


def write_gguf_lora(adapter_dir: Path, base: Checkpoint, out_path: Path, out_type: str = "F16",
                    name: str | None = None, allow_pickle: bool = False) -> Path:
    """Write the adapter at `adapter_dir` (trained on `base`) as a GGUF LoRA adapter at `out_path`."""
    if out_type not in ADAPTER_TYPES:
        raise InternalError(f"adapter type {out_type!r}; choose one of {', '.join(ADAPTER_TYPES)}")
    qtype = ADAPTER_TYPES[out_type]
    adapter = read_adapter(adapter_dir, base.folder, base, allow_pickle)
    alpha, tensors = adapter_tensors(adapter, base)
    writer = gguf.GGUFWriter(str(out_path), gguf.MODEL_ARCH_NAMES[base.spec.gguf_arch])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_name(name or adapter_dir.name)
    for t in tensors:
        writer.add_tensor(t.base_name + ".lora_a", _encode(t.a, qtype))
        writer.add_tensor(t.base_name + ".lora_b", _encode(t.b, qtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path
