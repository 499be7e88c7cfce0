"""Reading the one input: a Hugging Face folder, or a PEFT LoRA adapter merged into its base.

Everything downstream sees a `Checkpoint`: a folder with config.json, safetensors weights and
tokenizer files whose contents have been validated. Adapters are merged in float32 *before* any
quantization; pickle weights are refused unless the user opts in; remote code is never run.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from packager.architectures import ArchitectureSpec, spec_for_config
from packager.config_bounds import check_config
from packager.errors import BadInputError, UnsupportedError
from packager.fingerprint import checked_once, files_digest
from packager.safetensors_file import FLOAT_DTYPES, TensorEntry, load_tensor, read_header, require_finite
from packager.strict_json import read_json_file, require_regular_file

if TYPE_CHECKING:
    from packager.progress import Reporter

# Files that travel with the weights: tokenizer, chat template, generation defaults.
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
NON_FINITE_WEIGHTS_FIX = (
    "A model with non-finite weights gives NaN logits on every runtime: the fine-tune diverged (check the "
    "training loss) or the file is damaged. Convert a checkpoint saved before the loss went NaN, or re-download it."
)


@dataclass
class Checkpoint:
    """A validated model folder, ready to be read tensor by tensor."""

    folder: Path
    config: dict[str, Any]
    spec: ArchitectureSpec
    tensors: dict[str, TensorEntry]
    name: str
    origin: dict[str, Any] = field(default_factory=dict)

    def tensor_names(self) -> list[str]:
        return list(self.tensors)

    def load(self, name: str) -> torch.Tensor:
        return load_tensor(self.tensors[name])

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (name, tensor) one at a time, so a writer never holds the whole model."""
        for name in self.tensors:
            yield name, self.load(name)

    def usable_context(self, requested: int) -> int:
        """Return the context runtimes are set up for: the requested length, capped at what the model was
        trained for (max_position_embeddings; a config without it is taken at its word: uncapped)."""
        trained = self.config.get("max_position_embeddings")
        return min(requested, int(trained)) if trained else requested

    @property
    def tokenizer_json(self) -> Path:
        return self.folder / "tokenizer.json"

    def side_files(self) -> list[Path]:
        return [self.folder / f for f in SIDE_FILES if (self.folder / f).is_file()]

    def weight_files(self) -> list[Path]:
        return sorted({e.file for e in self.tensors.values()})

    def content_digest(self) -> str:
        """Digest of what a build reads (weights, config, tokenizer and side files): the key of its stage cache."""
        return files_digest([*self.weight_files(), self.folder / "config.json", *self.side_files()])

    @property
    def parameter_count(self) -> int:
        total = 0
        for e in self.tensors.values():
            n = 1
            for d in e.shape:
                n *= d
            total += n
        return total


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise BadInputError(f"{path}: missing. {what}")
    data = read_json_file(path, "Fix or regenerate the file.")
    if not isinstance(data, dict):
        raise BadInputError(f"{path}: expected a JSON object at the top level.")
    return data


def _weight_files(folder: Path, allow_pickle: bool) -> tuple[list[Path], list[Path]]:
    """Return (safetensors files, pickle files) of a folder, honouring a sharded index."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index, "").get("weight_map")
        if not isinstance(weight_map, dict):
            raise BadInputError(f"{index}: has no 'weight_map'. Save the checkpoint again.")
        files = sorted({folder / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise BadInputError(
                f"{index}: lists shard(s) that are not in the folder: {', '.join(missing)}. "
                "Copy every shard of the checkpoint into the folder."
            )
        return files, []
    safetensors = sorted(p for p in folder.glob("*.safetensors") if not p.name.startswith("adapter_"))
    pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    return safetensors, pickles


def _index_tensors(files: list[Path]) -> dict[str, TensorEntry]:
    tensors: dict[str, TensorEntry] = {}
    for f in files:
        for name, entry in read_header(f).items():
            if name in tensors:
                raise BadInputError(f"{f}: tensor {name!r} also appears in {tensors[name].file.name}.")
            tensors[name] = entry
    return tensors


def _check_tensor_shapes(spec: ArchitectureSpec, config: dict[str, Any], tensors: dict[str, TensorEntry],
                         folder: Path) -> None:
    """Refuse a checkpoint whose tensors are missing or shaped otherwise than its config.json implies."""
    config_path = folder / "config.json"
    for name, shape, required in spec.expected_tensors(config):
        entry = tensors.get(name)
        if entry is None:
            if required:
                raise BadInputError(
                    f"{folder}: the weights have no tensor {name!r}, which a {spec.name} checkpoint with this "
                    f"config.json (num_hidden_layers {config['num_hidden_layers']}) must have. The weights are "
                    "incomplete or config.json belongs to another model: save the model and its config together "
                    "with save_pretrained()."
                )
            continue
        if entry.dtype not in FLOAT_DTYPES:
            raise BadInputError(f"{entry.file}: tensor {name!r} is stored as {entry.dtype}; model weights are "
                                "floating point. Save the model again with save_pretrained() (unquantized).")
        if entry.shape == shape:
            continue
        if name.endswith("embed_tokens.weight") and entry.shape[1:] == shape[1:]:
            raise BadInputError(
                f"{config_path}: vocab_size is {config['vocab_size']:,} but {name} in {entry.file.name} has "
                f"{entry.shape[0]:,} rows. Set vocab_size to {entry.shape[0]:,} (the embedding is the truth), or "
                "call model.resize_token_embeddings() before save_pretrained()."
            )
        hint = " It looks transposed (saved as W.T)." if entry.shape == shape[::-1] else ""
        raise BadInputError(
            f"{entry.file}: tensor {name!r} has shape {list(entry.shape)}, but {config_path.name} implies "
            f"{list(shape)}.{hint} The weights and config.json must come from the same model: save them together "
            "with save_pretrained(), without transforming the weights."
        )


def _require_finite_weights(tensors: dict[str, TensorEntry]) -> None:
    """Refuse NaN or infinite weights, naming the tensor and file; streams one tensor at a time.
    Files whose bytes passed before are not read again (packager.fingerprint.checked_once)."""
    def scan() -> None:
        for entry in tensors.values():
            if entry.dtype in FLOAT_DTYPES:
                require_finite(load_tensor(entry), entry.name, entry.file, NON_FINITE_WEIGHTS_FIX)

    checked_once("weights finite", sorted({entry.file for entry in tensors.values()}), scan)


def _convert_pickles(pickles: list[Path], dest: Path) -> list[Path]:
    """Re-save opted-in pickle weights as safetensors (torch's weights_only unpickler, never full pickle)."""
    dest.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    for i, p in enumerate(pickles):
        try:
            state = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:
            raise BadInputError(f"{p}: could not be read as a PyTorch state dict ({exc}).") from None
        if not isinstance(state, dict):
            raise BadInputError(f"{p}: does not hold a state dict of tensors.")
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                require_finite(value, key, p, NON_FINITE_WEIGHTS_FIX)
        target = dest / f"converted-{i:05d}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}, str(target))
        out.append(target)
    return out


def _check_side_files(folder: Path) -> None:
    """Each tokenizer/template side file must be a regular file of sane size, each JSON one a JSON object,
    and tokenizer.json a tokenizer the tokenizers library loads. Side files whose bytes passed before are not
    parsed again (Gemma's tokenizer.json is 33 MB: most of a warm build's input checks)."""
    present = [folder / name for name in SIDE_FILES if (folder / name).exists() or (folder / name).is_symlink()]
    if all(p.is_file() and not p.is_symlink() for p in present):
        checked_once("side files", present, lambda: _check_side_file_contents(folder, present))
    else:
        _check_side_file_contents(folder, present)


def _check_side_file_contents(folder: Path, present: list[Path]) -> None:
    for path in present:
        fix = f"Save the tokenizer again with `tokenizer.save_pretrained(folder)`, or remove {path.name}."
        if path.name.endswith(".json"):
            if not isinstance(read_json_file(path, fix), dict):
                raise BadInputError(f"{path}: expected a JSON object at the top level. {fix}")
            continue
        require_regular_file(path, fix, "a tokenizer file")
    from tokenizers import Tokenizer

    tokenizer = folder / "tokenizer.json"
    try:
        Tokenizer.from_file(str(tokenizer))
    except Exception as exc:  # the tokenizers library raises plain Exception for a malformed file
        raise BadInputError(
            f"{tokenizer}: is JSON but not a tokenizer the tokenizers library can load ({exc}). "
            "Save the tokenizer again with `tokenizer.save_pretrained(folder)`."
        ) from None


def _check_tokenizer(folder: Path) -> None:
    if (folder / "tokenizer.json").is_file():
        _check_side_files(folder)
        return
    if (folder / "tokenizer.json").is_symlink():
        raise BadInputError(f"{folder / 'tokenizer.json'}: is a symlink that does not lead to a regular file. Copy "
                            "the tokenizer files of the model you fine-tuned into the folder.")
    if (folder / "tokenizer.model").is_file():
        raise UnsupportedError(
            f"{folder}: has tokenizer.model but no tokenizer.json. edgepack reads the fast-tokenizer "
            "file; create it with `AutoTokenizer.from_pretrained(folder).save_pretrained(folder)`."
        )
    raise BadInputError(
        f"{folder}: no tokenizer found (expected tokenizer.json next to config.json). Copy the "
        "tokenizer files of the model you fine-tuned into the folder, or save them with "
        "`tokenizer.save_pretrained(folder)`."
    )


def open_model_folder(
    folder: Path, *, allow_pickle: bool = False, work_dir: Path | None = None, name: str | None = None,
    scan_values: bool = True,
) -> Checkpoint:
    """Validate a Hugging Face model folder and index its tensors.

    The checks run cheapest first, so a bad config.json is refused before a byte of weights is read:
    config numbers within bounds, tokenizer files loadable, safetensors headers sound, every tensor
    the config implies present with its shape, and (unless `scan_values` is off, for weights already
    scanned) every weight a finite number. The scan streams one tensor at a time.
    """
    folder = folder.resolve()
    if not folder.is_dir():
        raise BadInputError(f"{folder}: not a folder. Pass the folder that holds config.json and the weights.")
    config = _read_json(
        folder / "config.json",
        "A Hugging Face checkpoint folder needs config.json; pass the folder save_pretrained() wrote.",
    )
    if config.get("auto_map"):
        # We never import code from the checkpoint; architectures come from our own table only.
        config = {k: v for k, v in config.items() if k != "auto_map"}
    spec = spec_for_config(config, str(folder / "config.json"))
    check_config(config, str(folder / "config.json"), spec)
    files, pickles = _weight_files(folder, allow_pickle)
    if not files:
        if pickles and not allow_pickle:
            raise BadInputError(
                f"{folder}: the weights are pickle files ({', '.join(p.name for p in pickles)}), which can run "
                "code when loaded. Convert them to safetensors, or pass --allow-pickle to let edgepack "
                "read them with PyTorch's restricted (weights_only) loader."
            )
        if pickles:
            if work_dir is None:
                raise BadInputError(f"{folder}: pickle weights need a work folder to convert into.")
            files = _convert_pickles(pickles, work_dir / "from-pickle")
        else:
            raise BadInputError(
                f"{folder}: no weights found (expected model.safetensors or model-0000x-of-0000y.safetensors). "
                "Save the model with save_pretrained() into this folder."
            )
    _check_tokenizer(folder)
    tensors = _index_tensors(files)
    _check_tensor_shapes(spec, config, tensors, folder)
    if scan_values:
        _require_finite_weights(tensors)
    return Checkpoint(
        folder=folder,
        config=config,
        spec=spec,
        tensors=tensors,
        name=name or folder.name,
        origin={"kind": "hf-folder", "path": str(folder)},
    )


def is_adapter_folder(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file()


def load_checkpoint(
    path: Path,
    *,
    base: Path | None = None,
    allow_pickle: bool = False,
    work_dir: Path,
    name: str | None = None,
    reporter: Reporter | None = None,
) -> Checkpoint:
    """Return the checkpoint to convert: the folder itself, or an adapter merged into its base."""
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"{path}: does not exist. Pass a Hugging Face model folder or a PEFT adapter folder.")
    if path.is_dir() and is_adapter_folder(path):
        from packager.adapter import merge_adapter

        return merge_adapter(path, base=base, allow_pickle=allow_pickle, work_dir=work_dir, name=name,
                             reporter=reporter)
    return open_model_folder(path, allow_pickle=allow_pickle, work_dir=work_dir, name=name)


def copy_side_files(src: Path, dest: Path, *, prefer: Path | None = None) -> None:
    """Copy tokenizer/chat-template/generation files, taking `prefer`'s copy of each when it has one."""
    for fname in SIDE_FILES:
        for folder in (prefer, src):
            if folder is not None and (folder / fname).is_file():
                shutil.copy2(folder / fname, dest / fname)
                break
