"""K-quants (and any other GGUF type) through llama.cpp's own quantizer, from the F16 GGUF.

Kept apart from the writer so that quantizing does not import torch (about 185 MB and half a
second per process).
"""

from __future__ import annotations

from pathlib import Path

import gguf

from packager.errors import InternalError

FT = gguf.LlamaFileType

# Output types that need llama.cpp's quantizer (importance-free K-quant mixes), made from the F16 GGUF.
LLAMA_CPP_TYPES: dict[str, FT] = {
    "Q4_K_M": FT.MOSTLY_Q4_K_M,
    "Q4_K_S": FT.MOSTLY_Q4_K_S,
    "Q5_K_M": FT.MOSTLY_Q5_K_M,
    "Q5_K_S": FT.MOSTLY_Q5_K_S,
    "Q6_K": FT.MOSTLY_Q6_K,
    "Q3_K_M": FT.MOSTLY_Q3_K_M,
}


def quantize_gguf(src: Path, dest: Path, out_type: str, threads: int = 0) -> Path:
    """Quantize an F16/F32 GGUF with llama.cpp's quantizer (default parameters, as llama-quantize)."""
    import llama_cpp

    file_type = LLAMA_CPP_TYPES.get(out_type) or FT[f"MOSTLY_{out_type}"]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(file_type)
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dest).encode(), params)
    if rc != 0 or not dest.is_file():
        raise InternalError(f"llama.cpp's quantizer failed ({rc}) turning {src.name} into {out_type}")
    return dest
