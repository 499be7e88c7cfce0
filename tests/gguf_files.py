"""Reading GGUF files back in tests (edgepack itself only writes them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q


def iter_gguf_tensors(path: Path) -> Iterator[tuple[str, Q, np.ndarray]]:
    """Yield (name, type, raw data) of each tensor in a GGUF file."""
    reader = gguf.GGUFReader(str(path))
    for t in reader.tensors:
        yield t.name, Q(t.tensor_type), np.asarray(t.data)
