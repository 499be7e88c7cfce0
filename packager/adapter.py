"""Merging a PEFT LoRA adapter into its base model in float32, before any quantization.

The merge (W' = W + scaling * (B @ A), computed exactly as peft's merge_and_unload does) is the
reference every artifact is judged against, and what a runtime without adapter support ships.
Runtimes that apply an adapter apart (llama.cpp, a program with the LoRA product as ops of its own) read
the base's own tensors and the deltas through `adapted_base_weights`: merged and then quantized to 4
bits, a small fine-tune's deltas are rounded back onto the base's grid.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from packager.checkpoint import Checkpoint, _read_json, copy_side_files, open_model_folder
from packager.errors import BadInputError, UnsupportedError
from packager.fingerprint import files_digest, options_digest
from packager.progress import Reporter
from packager.safetensors_file import load_tensor, read_header, require_finite
from packager.stage_cache import StageCache
from packager.strict_json import json_text

_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")
_SHARD_BYTES = 2 * 1024**3
_NON_FINITE_ADAPTER_FIX = (
    "An adapter with non-finite weights makes the merged model produce NaN logits: the adapter's training "
    "diverged (check the loss) or the file is damaged. Save an adapter checkpoint from before the loss went NaN."
)


def _resolve_base(adapter_dir: Path, adapter_config: dict[str, Any], base: Path | None) -> Path:
    if base is not None:
        return Path(base)
    declared = adapter_config.get("base_model_name_or_path")
    if declared:
        for candidate in (Path(declared), adapter_dir / declared):
            if (candidate / "config.json").is_file():
                return candidate
    raise BadInputError(
        f"{adapter_dir / 'adapter_config.json'}: the base model "
        f"{declared!r} is not a local folder edgepack can find (hub names are never downloaded). "
        "Pass --base DIR with the Hugging Face folder of the model the adapter was trained on."
    )


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's rank_pattern / alpha_pattern lookup: the key matches a suffix of the module path."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _scaling(cfg: dict[str, Any], module: str) -> float:
    r = _pattern_value(cfg.get("rank_pattern") or {}, module, cfg["r"])
    alpha = _pattern_value(cfg.get("alpha_pattern") or {}, module, cfg.get("lora_alpha", r))
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def _whole_at_least_one(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_numbers(path: Path, cfg: dict[str, Any]) -> None:
    """Refuse a rank, alpha or per-module pattern a merge cannot use (peft itself would fail or divide by zero)."""

    def refuse(problem: str) -> BadInputError:
        return BadInputError(f"{path}: {problem}. Fix adapter_config.json, or save the adapter again with peft's "
                             "save_pretrained().")

    if not _whole_at_least_one(cfg.get("r")):
        raise refuse(f"r is {cfg.get('r')!r}; the LoRA rank must be a whole number of at least 1")
    if "lora_alpha" in cfg and not _finite_number(cfg["lora_alpha"]):
        raise refuse(f"lora_alpha is {cfg['lora_alpha']!r}; it must be a finite number")
    for key, valid, what in (("rank_pattern", _whole_at_least_one, "a rank (a whole number of at least 1)"),
                             ("alpha_pattern", _finite_number, "a finite number")):
        patterns = cfg.get(key) or {}
        if not isinstance(patterns, dict):
            raise refuse(f"{key} is {patterns!r}; it must be a JSON object from module pattern to value")
        for pattern, value in patterns.items():
            try:
                re.compile(rf"(.*\.)?({pattern})$")
            except re.error as exc:
                raise refuse(f"{key} has the key {pattern!r}, which is not a valid regular expression ({exc})"
                             ) from None
            if not valid(value):
                raise refuse(f"{key}[{pattern!r}] is {value!r}; it must be {what}")


def _check_supported(path: Path, cfg: dict[str, Any]) -> None:
    if cfg.get("peft_type") != "LORA":
        raise UnsupportedError(f"{path}: peft_type {cfg.get('peft_type')!r}; edgepack merges LoRA adapters only.")
    for flag, what in (("use_dora", "DoRA"), ("fan_in_fan_out", "fan_in_fan_out (Conv1D) layers"),
                       ("lora_bias", "LoRA bias terms")):
        if cfg.get(flag):
            raise UnsupportedError(f"{path}: {what} is not supported yet; train a plain LoRA adapter.")
    if cfg.get("bias", "none") != "none":
        raise UnsupportedError(f"{path}: bias={cfg['bias']!r} adapters are not supported; use bias='none'.")


def _adapter_weights(adapter_dir: Path, allow_pickle: bool) -> tuple[Path, dict[str, torch.Tensor]]:
    """Return the adapter's weights file and its tensors, each checked to be finite."""
    st = adapter_dir / "adapter_model.safetensors"
    pickle = adapter_dir / "adapter_model.bin"
    if st.is_file():
        source, weights = st, {name: load_tensor(entry) for name, entry in read_header(st).items()}
    elif pickle.is_file():
        if not allow_pickle:
            raise BadInputError(
                f"{pickle}: adapter weights are a pickle file, which can run code when loaded. Save the "
                "adapter with safetensors (the peft default) or pass --allow-pickle."
            )
        try:
            state = torch.load(pickle, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise BadInputError(f"{pickle}: could not be read as a PyTorch state dict ({exc}).") from None
        if not isinstance(state, dict):
            raise BadInputError(f"{pickle}: does not hold a state dict of tensors.")
        source, weights = pickle, {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    else:
        raise BadInputError(f"{adapter_dir}: no adapter_model.safetensors. Save the adapter with save_pretrained().")
    for name, tensor in weights.items():
        require_finite(tensor, name, source, _NON_FINITE_ADAPTER_FIX)
    return source, weights


@dataclass(frozen=True)
class LoraDelta:
    """One adapted base weight: W' = W + scaling * (B @ A), as peft computes it."""

    a: torch.Tensor
    b: torch.Tensor
    scaling: float


@dataclass(frozen=True)
class AdapterSource:
    """Where a merged checkpoint's adapter and base live (its origin): what a step that keeps the adapter apart
    reads again, in this process or a child."""

    adapter: str
    base: str
    allow_pickle: bool
    # sha256 over the adapter folder's files, taken by the merge: what an artifact that keeps the adapter apart
    # depends on beyond the merged checkpoint's digest (two factorizations of one product merge alike).
    files_sha256: str

    @classmethod
    def of(cls, ckpt: Checkpoint) -> AdapterSource | None:
        """The source of a checkpoint merged from a PEFT adapter; None for a whole model."""
        origin = ckpt.origin
        if origin.get("kind") != "peft-adapter":
            return None
        return cls(str(origin["adapter"]), str(origin["base"]), bool(origin["allow_pickle"]),
                   str(origin["adapter_sha256"]))

    @classmethod
    def required(cls, ckpt: Checkpoint, option: str, instead: str) -> AdapterSource:
        """The source for `option`, an artifact that keeps the adapter apart; exit 2 for a whole-model input."""
        source = cls.of(ckpt)
        if source is None:
            raise BadInputError(f"{ckpt.folder}: {option} keeps a LoRA adapter apart from its base, but this is a "
                                f"whole model. Pass the PEFT adapter folder (with --base DIR), or choose {instead}.")
        return source


def adapted_base_weights(source: AdapterSource) -> dict[str, tuple[torch.Tensor, LoraDelta]]:
    """Each adapted weight's tensor as the base stores it, with its LoRA delta, by base weight name.

    The base's own tensors, not the merged ones minus the delta: a base that lies on a quantization grid (a
    dequantized GGUF, a QAT release) is then reproduced exactly by a quantizer that finds that grid.
    """
    base_dir = Path(source.base)
    base = open_model_folder(base_dir, allow_pickle=source.allow_pickle, scan_values=False)
    adapter = read_adapter(Path(source.adapter), base_dir, base, source.allow_pickle)
    return {name: (base.load(name), delta) for name, delta in adapter.deltas.items()}


@dataclass
class LoraAdapter:
    """A PEFT LoRA adapter read and checked against its base: what merging it (or applying it at run time) needs."""

    folder: Path
    config: dict[str, Any]
    weights_file: Path
    # Base weight name (e.g. model.layers.0.self_attn.q_proj.weight) -> its delta.
    deltas: dict[str, LoraDelta]
    # Whole tensors the adapter saves in place of the base's (peft's modules_to_save).
    replacements: dict[str, torch.Tensor]


def adapter_base(adapter_dir: Path, base: Path | None) -> Path:
    """The base model folder of the adapter at `adapter_dir` (--base, else its declared local folder), after
    checking the adapter's config is a LoRA edgepack supports."""
    return _resolve_base(adapter_dir, _checked_config(adapter_dir), base)


def _checked_config(adapter_dir: Path) -> dict[str, Any]:
    cfg_path = adapter_dir / "adapter_config.json"
    cfg = _read_json(cfg_path, "")
    _check_supported(cfg_path, cfg)
    _check_numbers(cfg_path, cfg)
    return cfg


def read_adapter(adapter_dir: Path, base_dir: Path, base_ckpt: Checkpoint, allow_pickle: bool) -> LoraAdapter:
    """Read the adapter's weights and check every pair and replacement against the base's tensors."""
    cfg = _checked_config(adapter_dir)
    weights_file, weights = _adapter_weights(adapter_dir, allow_pickle)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    replacements: dict[str, torch.Tensor] = {}
    for key, tensor in weights.items():
        short = key.removeprefix(_PREFIX)
        m = _LORA_KEY.match(short)
        if m:
            pairs.setdefault(m["module"], {})[m["ab"]] = tensor
        elif ".lora_embedding_" in short or ".lora_magnitude" in short:
            raise UnsupportedError(f"{adapter_dir}: tensor {key!r} (embedding LoRA / DoRA) is not supported yet.")
        else:
            replacements[short.replace(".modules_to_save.default", "")] = tensor

    deltas: dict[str, LoraDelta] = {}
    for module, ab in pairs.items():
        target = f"{module}.weight"
        if set(ab) != {"A", "B"}:
            raise BadInputError(f"{adapter_dir}: LoRA module {module!r} has lora_{'A' if 'B' in ab else 'B'} missing.")
        if target not in base_ckpt.tensors:
            raise BadInputError(
                f"{adapter_dir}: the adapter adapts {target!r}, which the base model at {base_dir} does not have. "
                "The adapter was trained on a different model: pass --base DIR with the right base."
            )
        base_shape = base_ckpt.tensors[target].shape
        a, b = ab["A"], ab["B"]
        if (len(base_shape) != 2 or a.dim() != 2 or b.dim() != 2 or a.shape[1] != base_shape[1]
                or b.shape[0] != base_shape[0] or a.shape[0] != b.shape[1]):
            raise BadInputError(
                f"{weights_file}: shapes do not fit the base at {base_dir}: "
                f"{target} is {'x'.join(map(str, base_shape))} but lora_B @ lora_A is {tuple(b.shape)} @ "
                f"{tuple(a.shape)}. The adapter was trained on a different model size: pass --base DIR with the "
                "right base."
            )
        deltas[target] = LoraDelta(a, b, _scaling(cfg, module))
    for target, tensor in replacements.items():
        if target not in base_ckpt.tensors:
            raise UnsupportedError(
                f"{adapter_dir}: the adapter saves a full copy of {target!r}, which the base model does not have "
                "(for a tied-embedding model, modules_to_save=['lm_head'] unties it); edgepack cannot merge that."
            )
        if tuple(tensor.shape) != base_ckpt.tensors[target].shape:
            raise BadInputError(
                f"{adapter_dir}: {target} has shape {tuple(tensor.shape)} but the base has "
                f"{base_ckpt.tensors[target].shape}. Pass --base DIR with the model the adapter was trained on."
            )
    return LoraAdapter(adapter_dir, cfg, weights_file, deltas, replacements)


def merge_adapter(
    adapter_dir: Path, *, base: Path | None, allow_pickle: bool, work_dir: Path, name: str | None,
    reporter: Reporter | None = None,
) -> Checkpoint:
    """Return the adapter merged into its base: a stage-cache entry under work_dir, keyed by the adapter folder's
    files and the base's content (so two adapters given one work_dir never share a merge), built in a
    temporary of its own so concurrent builds never share it."""
    adapter_dir = adapter_dir.resolve()
    base_dir = adapter_base(adapter_dir, base)
    base_ckpt = open_model_folder(base_dir, allow_pickle=allow_pickle, work_dir=work_dir / "base")
    adapter = read_adapter(adapter_dir, base_dir, base_ckpt, allow_pickle)

    def write(folder: Path) -> dict[str, Any]:
        _write_merged(base_ckpt, adapter, folder)
        (folder / "config.json").write_text(json_text(base_ckpt.config, "merged config.json"), encoding="utf-8")
        copy_side_files(base_dir, folder, prefer=adapter_dir)
        return {}

    base_digest = base_ckpt.content_digest()
    cache = StageCache(work_dir, reporter or Reporter(quiet=True))
    adapter_files = [p for p in sorted(adapter_dir.iterdir()) if p.is_file()]
    adapter_sha256 = files_digest(adapter_files)
    key = options_digest("merged", base_digest, adapter_sha256)[:24]
    out_dir = cache.entry("merged", key, "merge LoRA adapter (fp32)", write,
                          describe=lambda _: f"{len(adapter.deltas)} LoRA modules").folder

    # Every merged tensor was checked as it was written: the base at open, the adapter at load, the sum here.
    merged = open_model_folder(out_dir, name=name or adapter_dir.name, scan_values=False)
    merged.origin = {
        "kind": "peft-adapter",
        "adapter": str(adapter_dir),
        "base": str(base_dir.resolve()),
        "allow_pickle": allow_pickle,
        "adapter_sha256": adapter_sha256,
        "lora_modules": len(adapter.deltas),
        "replaced_tensors": sorted(adapter.replacements),
    }
    return merged


def merge_lora_weight(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """Return W + scaling * (B @ A) in float32, the same arithmetic as peft's merge."""
    return weight.float() + (b.float() @ a.float()) * scaling


def _write_merged(base: Checkpoint, adapter: LoraAdapter, out_dir: Path) -> None:
    """Stream the merged tensors into safetensors shards of bounded size, refusing any that overflow."""
    shard: dict[str, torch.Tensor] = {}
    shard_bytes = 0
    shards: list[dict[str, torch.Tensor]] = []
    names: list[list[str]] = []

    def flush() -> None:
        nonlocal shard, shard_bytes
        if shard:
            shards.append(shard)
            names.append(list(shard))
            idx = len(shards)
            save_file(shard, str(out_dir / f"model-{idx:05d}.safetensors"), metadata={"format": "pt"})
            shards[-1] = {}
        shard, shard_bytes = {}, 0

    for name in base.tensor_names():
        tensor = base.load(name)
        if name in adapter.deltas:
            delta = adapter.deltas[name]
            tensor = merge_lora_weight(tensor, delta.a, delta.b, delta.scaling)
            require_finite(tensor, f"{name} (merged)", adapter.weights_file, (
                f"W + scaling * (lora_B @ lora_A), with scaling {delta.scaling:g} (lora_alpha / r), overflows "
                "float32: the adapter's weights or lora_alpha are far too large. Check the adapter's training."))
        elif name in adapter.replacements:
            tensor = adapter.replacements[name].to(tensor.dtype)
        shard[name] = tensor.contiguous()
        shard_bytes += tensor.numel() * tensor.element_size()
        if shard_bytes >= _SHARD_BYTES:
            flush()
    flush()
    total = len(shards)
    weight_map: dict[str, str] = {}
    for i, shard_names in enumerate(names, start=1):
        final = f"model-{i:05d}-of-{total:05d}.safetensors"
        (out_dir / f"model-{i:05d}.safetensors").rename(out_dir / final)
        weight_map.update(dict.fromkeys(shard_names, final))
    index = {"metadata": {}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json_text(index, "model.safetensors.index.json"),
                                                          encoding="utf-8")
