"""The source model in float32, for the reference logits, the eval baseline and settling disagreements.

A model whose float32 weights are small is loaded whole. A larger one is built with its weights on
the meta device, and each decoder block reads its own weights from the checkpoint (safetensors,
cast to float32) just before it runs and drops them after: the same float32 arithmetic on the same
numbers, with one block resident instead of the whole model. What stays resident is what every
position needs: the embedding table (the head, when tied), the final norm, the rotary tables. For
Gemma 3 4B that is 2.7 GB instead of 15.6 GB; the price is reading each block once per forward
pass, which the reference (one pass per golden text) and the batched baseline (one pass per
decoding step of a batch) pay a few hundred times at most.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from packager.checkpoint import Checkpoint
from packager.safetensors_file import TensorEntry, read_header

# Above this many bytes of float32 weights, decoder blocks are streamed (Gemma 3 270M: 1.07 GB, loaded whole).
STREAM_ABOVE = 2 * 2**30


def load_fp32_model(ckpt: Checkpoint, stream_above: int = STREAM_ABOVE) -> torch.nn.Module:
    """The checkpoint as a float32 transformers model (local files only, no remote code)."""
    streamed = load_fp32_streamed(ckpt.folder, "eager", stream_above)
    return _whole_model(ckpt) if streamed is None else streamed.model


def resident_bytes(ckpt: Checkpoint, stream_above: int = STREAM_ABOVE) -> int:
    """Float32 weight bytes that load_fp32_model keeps in memory at once: all of them for a small model;
    for a streamed one, everything outside the decoder blocks plus the largest block."""
    if 4 * ckpt.parameter_count <= stream_above:
        return 4 * ckpt.parameter_count
    blocks: dict[str, int] = defaultdict(int)
    outside = 0
    for name, entry in ckpt.tensors.items():
        size = 4 * math.prod(entry.shape)
        block = _block_of(name)
        if block is None:
            outside += size
        else:
            blocks[block] += size
    return outside + max(blocks.values(), default=0)


def _whole_model(ckpt: Checkpoint) -> torch.nn.Module:
    return load_fp32_whole(ckpt.folder, "eager")


def load_fp32_whole(folder: Path, attn_implementation: str) -> torch.nn.Module:
    """The whole model in float32, read from its safetensors one tensor at a time.

    transformers' from_pretrained holds a bf16 checkpoint's stored tensors beside their float32 copies
    (Gemma 3 1B: 5.9 GB at its peak for a 4.0 GB model); here the peak is the model plus one stored
    tensor. The numbers are the same (a cast to float32 is exact). A checkpoint whose tensor names do not
    map onto the model's parameters one to one is loaded by from_pretrained.
    """
    from transformers import AutoModelForCausalLM

    tensors = _stored_tensors(folder)
    model = _empty_model(folder, attn_implementation)
    sources = _sources(model, tensors) if tensors else None
    if sources is None:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=torch.float32, trust_remote_code=False, local_files_only=True,
            attn_implementation=attn_implementation)
        return model.eval()
    for names, entry in sources:
        _assign(model, names, _read([entry])[entry.name])
    return model


def _stored_tensors(folder: Path) -> dict[str, TensorEntry]:
    """Every tensor the checkpoint's safetensors files hold, by name (headers only)."""
    return {name: entry for file in sorted(folder.glob("*.safetensors")) for name, entry in read_header(file).items()}


def _empty_model(folder: Path, attn_implementation: str) -> torch.nn.Module:
    """The model in float32 with its parameters on the meta device (buffers computed), its head tied as
    from_pretrained ties it."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)
    with init_empty_weights(include_buffers=False):  # parameters on meta, rotary tables and scales computed
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attn_implementation)
    model.tie_weights()  # from_pretrained ties a shared head; from_config leaves it a separate parameter
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(folder), local_files_only=True)
    return model.eval()


def _block_of(name: str) -> str | None:
    """'model.layers.7' for 'model.layers.7.mlp.up_proj.weight'; None outside the decoder blocks."""
    parts = name.split(".")
    for i in range(len(parts) - 1):
        if parts[i] == "layers" and parts[i + 1].isdigit():
            return ".".join(parts[:i + 2])
    return None


@dataclass
class StreamedModel:
    """A float32 model whose decoder blocks read their weights just before they run and drop them after;
    keep() makes one block's weights stay (a converter that shrinks the model block by block)."""

    model: torch.nn.Module
    blocks: dict[str, list[tuple[list[str], TensorEntry]]]
    hooks: dict[str, list[Any]]

    def keep(self, block_name: str) -> None:
        """Read `block_name`'s weights in float32 for good (its own tensors, not the shared workspace)."""
        for hook in self.hooks.pop(block_name):
            hook.remove()
        _load(self.model, self.blocks[block_name])

    def drop(self) -> None:
        """Let go of every weight still held (the model is of no further use): the embedding table and the rest
        that stays resident, before a step that needs none of them."""
        for hooks in self.hooks.values():
            for hook in hooks:
                hook.remove()
        self.hooks.clear()
        for name, param in list(self.model.named_parameters(remove_duplicate=False)):
            owner, _, leaf = name.rpartition(".")
            self.model.get_submodule(owner)._parameters[leaf] = torch.nn.Parameter(
                torch.empty(param.shape, device="meta"), requires_grad=False)

    @contextmanager
    def holding(self, block_names: list[str]) -> Iterator[None]:
        """These blocks' weights read in float32 (their own tensors) for the duration, without running them: a
        converter that copies a few blocks' weights into a module of its own; dropped again afterwards."""
        params = [param for name in block_names for param in self.blocks[name]]
        _load(self.model, params)
        try:
            yield
        finally:
            _unload(self.model, params)


def load_fp32_streamed(folder: Path, attn_implementation: str, stream_above: int | None = None,
                       ) -> StreamedModel | None:
    """The model with only what every position needs resident (embedding table, final norm, rotary tables) and
    each decoder block read on demand; None (then load it whole) when its float32 weights are at most
    `stream_above` bytes (default STREAM_ABOVE) or the checkpoint's tensor names do not map onto the model's
    parameters one to one."""
    tensors = _stored_tensors(folder)
    limit = STREAM_ABOVE if stream_above is None else stream_above
    if 4 * sum(math.prod(entry.shape) for entry in tensors.values()) <= limit:
        return None
    model = _empty_model(folder, attn_implementation)
    sources = _sources(model, tensors)
    if sources is None:
        return None
    by_block: dict[str, list[tuple[list[str], TensorEntry]]] = defaultdict(list)
    for names, entry in sources:
        block = _block_of(names[0])
        if block is None:
            _assign(model, names, _read([entry])[entry.name])
        else:
            by_block[block].append((names, entry))
    # One set of float32 buffers serves every block in turn (their shapes repeat): a pass over the model
    # allocates nothing new, so freed and reallocated weights cannot fragment the heap and grow the process.
    workspace: dict[str, torch.Tensor] = {}
    hooks = {}
    for block_name, params in by_block.items():
        block = model.get_submodule(block_name)
        hooks[block_name] = [block.register_forward_pre_hook(_loader(model, block_name, params, workspace)),
                             block.register_forward_hook(_unloader(model, params))]
    return StreamedModel(model, dict(by_block), hooks)


def _sources(model: torch.nn.Module, tensors: dict[str, TensorEntry]) -> list[tuple[list[str], TensorEntry]] | None:
    """Each distinct parameter (all the names it goes by: a tied head shares the embedding's) with the
    checkpoint tensor it is read from."""
    groups: dict[int, list[str]] = defaultdict(list)
    shapes: dict[int, tuple[int, ...]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups[id(param)].append(name)
        shapes[id(param)] = tuple(param.shape)
    sources = []
    for key, names in groups.items():
        stored = [n for n in names if n in tensors]
        if not stored or tensors[stored[0]].shape != shapes[key]:
            return None
        sources.append((names, tensors[stored[0]]))
    if len(sources) != len({entry.name for _, entry in sources}) or len(sources) < len(tensors):
        return None  # a tensor read twice, or one the model does not use: not the layout we understand
    return sources


def _read(entries: list[TensorEntry], into: dict[str, torch.Tensor] | None = None,
          prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors as float32, each file opened once and closed after (no mapping outlives the read). With
    `into`, each lands in the buffer kept there under its name less `prefix` (made on first use)."""
    from safetensors import safe_open

    by_file: dict[Path, list[TensorEntry]] = defaultdict(list)
    for entry in entries:
        by_file[entry.file].append(entry)
    out = {}
    for file, group in by_file.items():
        with safe_open(str(file), framework="pt") as fh:
            for entry in group:
                stored = fh.get_tensor(entry.name)
                if into is None:
                    out[entry.name] = stored.to(torch.float32)
                    continue
                key = entry.name.removeprefix(prefix)
                buffer = into.get(key)
                if buffer is None or tuple(buffer.shape) != entry.shape:
                    buffer = into[key] = torch.empty(entry.shape, dtype=torch.float32)
                out[entry.name] = buffer.copy_(stored)
    return out


def _assign(model: torch.nn.Module, names: list[str], tensor: torch.Tensor) -> None:
    param = torch.nn.Parameter(tensor, requires_grad=False)
    for name in names:
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner)._parameters[leaf] = param


def _load(model: torch.nn.Module, params: list[tuple[list[str], TensorEntry]],
          workspace: dict[str, torch.Tensor] | None = None, prefix: str = "") -> None:
    """Read these parameters in float32 into the model (into `workspace`'s buffers when given)."""
    tensors = _read([entry for _, entry in params], workspace, prefix)
    for names, entry in params:
        _assign(model, names, tensors[entry.name])


def _unload(model: torch.nn.Module, params: list[tuple[list[str], TensorEntry]]) -> None:
    """Put these parameters back on the meta device (their memory is let go)."""
    for names, entry in params:
        _assign(model, names, torch.empty(entry.shape, device="meta"))


def _loader(model: torch.nn.Module, block_name: str, params: list[tuple[list[str], TensorEntry]],
            workspace: dict[str, torch.Tensor]) -> Any:
    def load(_module: torch.nn.Module, _args: Any) -> None:
        _load(model, params, workspace, block_name + ".")
    return load


def _unloader(model: torch.nn.Module, params: list[tuple[list[str], TensorEntry]]) -> Any:
    def unload(_module: torch.nn.Module, _args: Any, _output: Any) -> None:
        _unload(model, params)
    return unload
