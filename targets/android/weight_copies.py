"""The export without the copies of the weights that torch.export and XNNPACK's lowering made beside the model.

Measured on a Gemma 3 4B read a block at a time (6.6 GB once quantized), the export process still reached 15 GB:

- torch.export in strict mode (dynamo) keeps a "real value" of every module attribute it traces, and makes it by
  cloning the tensor (torch._dynamo.variables.builder._clone_input): every parameter twice over for the length of
  the trace. Within `traced_without_weight_copies()` a parameter is its own real value (the trace never writes
  into a parameter; buffers such as the KV cache are still cloned);
- ExecuTorch 1.5.1 deep-copies every partition's program before the backend preprocesses it, weights included
  (BackendDetails.copy_exported_program_for_preprocess), and XNNPACK's serializer then copies every constant into
  the NamedDataStore as Python `bytes`, kept until the .ptd is written. On the real Gemma 3 270M (ctx 512,
  8da8w-smooth-f32down, 341 MB of weights) the lowering rose 0.85 GiB over the export before it; at Gemma 3 1B
  3.4 GiB over 1.55 GB, the peak of the whole Android build. Within `weights_not_duplicated(folder)`:
  the partition copies share the constant tensors with the program they were cut from (the graph, its metadata
  and the state-dict mapping are still copied), as ExecuTorch's own CUDA backend does in its low-memory mode:
  XNNPACK's preprocess reads the constants and builds new graphs, it does not write into the tensors; and every
  blob of at least SPILL_BYTES added to a NamedDataStore is written to a file in a temporary folder under
  `folder` at once and kept as FileBackedData (the store's own on-disk buffer, with its sha256 given): the same
  keys, digests and deduplication, and the .ptd is written from the files in chunks. The price is disk: the
  weights once more beside the .ptd until it is written (6 GB for a Gemma 3 4B), inside the stage's temporary
  folder, which a failed or killed export leaves to the stage cache to remove.

The .pte and .ptd are byte for byte the ones torch.export and ExecuTorch write without this (tests/test_android.py).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

# Smaller blobs (norm gains, scales) stay in memory: a file each would cost more than it saves.
SPILL_BYTES = 1 << 20


@contextmanager
def traced_without_weight_copies() -> Iterator[None]:
    """Within the block, torch.export's strict trace keeps each parameter itself as its real value, not a clone."""
    import torch
    from torch._dynamo.variables import builder

    clone = builder._clone_input

    def clone_unless_parameter(value: Any, fake_mode: Any) -> Any:
        return value if isinstance(value, torch.nn.Parameter) else clone(value, fake_mode)

    builder._clone_input = clone_unless_parameter
    try:
        yield
    finally:
        builder._clone_input = clone


@contextmanager
def weights_not_duplicated(folder: Path) -> Iterator[None]:
    """Within the block, XNNPACK lowers without copying the weights; large serialized constants wait in a
    temporary folder under `folder` (removed when the block ends: write the .ptd inside it)."""
    with ExitStack() as stack:
        stack.enter_context(_partitions_share_constants())
        stack.enter_context(_named_data_spilled_to(folder))
        yield


def _copy_sharing_constants(cls: type, program: Any, compile_specs: Any) -> Any:
    """A deep copy of `program` whose state-dict and constant tensors are the original's."""
    import torch

    memo = {id(tensor): tensor for values in (program.state_dict, program.constants)
            for tensor in values.values() if isinstance(tensor, torch.Tensor)}
    return copy.deepcopy(program, memo)


@contextmanager
def _partitions_share_constants() -> Iterator[None]:
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    had_own = "copy_exported_program_for_preprocess" in XnnpackBackend.__dict__
    original = XnnpackBackend.__dict__.get("copy_exported_program_for_preprocess")
    XnnpackBackend.copy_exported_program_for_preprocess = classmethod(_copy_sharing_constants)  # type: ignore[assignment]
    try:
        yield
    finally:
        if had_own:
            XnnpackBackend.copy_exported_program_for_preprocess = original  # type: ignore[assignment]
        else:
            del XnnpackBackend.copy_exported_program_for_preprocess


@contextmanager
def _named_data_spilled_to(folder: Path) -> Iterator[None]:
    from executorch.exir._serialize._cord import FileBackedData
    from executorch.exir._serialize._named_data_store import NamedDataStore

    original = NamedDataStore.__dict__["add_named_data"]
    with tempfile.TemporaryDirectory(prefix=".constants-", dir=folder) as spill:
        names = itertools.count()

        def add_named_data(self: Any, key: str, data: Any, *args: Any, **kwargs: Any) -> None:
            if isinstance(data, bytes) and len(data) >= SPILL_BYTES:
                path = Path(spill) / f"{next(names)}.bin"
                path.write_bytes(data)
                data = FileBackedData(str(path), sha256=hashlib.sha256(data).digest())
            original(self, key, data, *args, **kwargs)

        NamedDataStore.add_named_data = add_named_data  # type: ignore[method-assign]
        try:
            yield
        finally:
            NamedDataStore.add_named_data = original  # type: ignore[method-assign]
