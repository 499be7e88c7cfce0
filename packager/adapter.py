"""Merging a PEFT LoRA adapter into its base model in float32, before any quantization.

Quantizing the base and applying the adapter at run time loses more than quantizing the merged
weights' own distribution would *and* ties every runtime to adapter support, so the default is
to merge: W' = W + scaling * (B @ A), computed exactly as peft's merge_and_unload does.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from packager.checkpoint import Checkpoint, _read_json, copy_side_files, open_model_folder
from packager.errors import BadInputError, UnsupportedError
from packager.safetensors_file import load_tensor, read_header

_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")
_SHARD_BYTES = 2 * 1024**3


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


def _check_supported(path: Path, cfg: dict[str, Any]) -> None:
    if cfg.get("peft_type") != "LORA":
        raise UnsupportedError(f"{path}: peft_type {cfg.get('peft_type')!r}; edgepack merges LoRA adapters only.")
    for flag, what in (("use_dora", "DoRA"), ("fan_in_fan_out", "fan_in_fan_out (Conv1D) layers"),
                       ("lora_bias", "LoRA bias terms")):
        if cfg.get(flag):
            raise UnsupportedError(f"{path}: {what} is not supported yet; train a plain LoRA adapter.")
    if cfg.get("bias", "none") != "none":
        raise UnsupportedError(f"{path}: bias={cfg['bias']!r} adapters are not supported; use bias='none'.")


def _adapter_weights(adapter_dir: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    st = adapter_dir / "adapter_model.safetensors"
    if st.is_file():
        return {name: load_tensor(entry) for name, entry in read_header(st).items()}
    pickle = adapter_dir / "adapter_model.bin"
    if pickle.is_file():
        if not allow_pickle:
            raise BadInputError(
                f"{pickle}: adapter weights are a pickle file, which can run code when loaded. Save the "
                "adapter with safetensors (the peft default) or pass --allow-pickle."
            )
        return torch.load(pickle, map_location="cpu", weights_only=True)
    raise BadInputError(f"{adapter_dir}: no adapter_model.safetensors. Save the adapter with save_pretrained().")


def merge_adapter(
    adapter_dir: Path, *, base: Path | None, allow_pickle: bool, work_dir: Path, name: str | None
) -> Checkpoint:
    """Merge a LoRA adapter into its base and return the merged checkpoint (written under work_dir)."""
    adapter_dir = adapter_dir.resolve()
    cfg_path = adapter_dir / "adapter_config.json"
    cfg = _read_json(cfg_path, "")
    _check_supported(cfg_path, cfg)
    base_dir = _resolve_base(adapter_dir, cfg, base)
    base_ckpt = open_model_folder(base_dir, allow_pickle=allow_pickle, work_dir=work_dir / "base")

    weights = _adapter_weights(adapter_dir, allow_pickle)
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

    delta_for: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for module, ab in pairs.items():
        target = f"{module}.weight"
        if set(ab) != {"A", "B"}:
            raise BadInputError(f"{adapter_dir}: LoRA module {module!r} has lora_{'A' if 'B' in ab else 'B'} missing.")
        if target not in base_ckpt.tensors:
            raise BadInputError(
                f"{adapter_dir}: the adapter adapts {target!r}, which the base model at {base_dir} does not have. "
                "The adapter was trained on a different model: pass --base DIR with the right base."
            )
        out_f, in_f = base_ckpt.tensors[target].shape
        a, b = ab["A"], ab["B"]
        if a.shape[1] != in_f or b.shape[0] != out_f or a.shape[0] != b.shape[1]:
            raise BadInputError(
                f"{adapter_dir / 'adapter_model.safetensors'}: shapes do not fit the base at {base_dir}: "
                f"{target} is {out_f}x{in_f} but lora_B @ lora_A is {tuple(b.shape)} @ {tuple(a.shape)}. "
                "The adapter was trained on a different model size: pass --base DIR with the right base."
            )
        delta_for[target] = (a, b, _scaling(cfg, module))
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

    out_dir = work_dir / "merged"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    _write_merged(base_ckpt, delta_for, replacements, out_dir)
    (out_dir / "config.json").write_text(json.dumps(base_ckpt.config, indent=2), encoding="utf-8")
    copy_side_files(base_dir, out_dir, prefer=adapter_dir)

    merged = open_model_folder(out_dir, name=name or adapter_dir.name)
    merged.origin = {
        "kind": "peft-adapter",
        "adapter": str(adapter_dir),
        "base": str(base_dir.resolve()),
        "lora_modules": len(delta_for),
        "replaced_tensors": sorted(replacements),
    }
    return merged


def merge_lora_weight(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """Return W + scaling * (B @ A) in float32, the same arithmetic as peft's merge."""
    return weight.float() + (b.float() @ a.float()) * scaling


def _write_merged(
    base: Checkpoint,
    deltas: dict[str, tuple[torch.Tensor, torch.Tensor, float]],
    replacements: dict[str, torch.Tensor],
    out_dir: Path,
) -> None:
    """Stream the merged tensors into safetensors shards of bounded size."""
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
        if name in deltas:
            a, b, scaling = deltas[name]
            tensor = merge_lora_weight(tensor, a, b, scaling)
        elif name in replacements:
            tensor = replacements[name].to(tensor.dtype)
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
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
