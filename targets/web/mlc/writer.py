"""Writing a checkpoint as MLC weights for WebLLM: tensor-cache.json + params_shard_N.bin, in numpy.

The format is mlc-llm's `convert_weight` output (tvm.contrib.tvmjs.dump_tensor_cache):
- parameters named and fused as mlc-llm's loader for the architecture does (the `mlc` row of
  packager.architectures: prefix, fused projections, norm offset, tied lm_head);
- group quantization q4f16_1 / q4f32_1: symmetric int4 in groups of 32 along the input dimension
  K, scale = max|w| / 7, stored value round(w / scale) + 7 clipped to 0..14, eight values per
  uint32 (element j of a word in bits 4j..4j+3); a weight [N, K] becomes q_weight uint32 [N, K/8]
  and q_scale [N, K/32], computed in the model dtype (float16 or float32) as mlc-llm does, with
  halves rounded away from zero (tir.round is llvm.round on the CPU);
  q0f16 / q0f32 keep every tensor unquantized;
- shards of at most 32 MB, filled in parameter order; a tensor of half the cap or more that does
  not fit gets a shard of its own; float32 arrays are stored as bfloat16 ("f32-to-bf16",
  round-to-nearest-even), exactly like tvmjs, and records carry an md5 per shard.

What needs mlc-llm's compiler (the model library .wasm) is not made here; see
targets/web/mlc/data/webllm_prebuilt.json and targets/web/target.py.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from packager.architectures import full_rope_params
from packager.checkpoint import Checkpoint
from packager.errors import UnsupportedError
from targets.web.mlc.naming import MLCNaming, mlc_naming

SHARD_CAP_BYTES = 32 * (1 << 20)
TENSOR_CACHE = "tensor-cache.json"
CONFIG_FILE = "mlc-chat-config.json"
MLC_CHAT_CONFIG_VERSION = "0.1.0"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json",
                   "tokenizer_config.json")
_SKIPPED_SUFFIXES = (".rotary_emb.inv_freq",)


@dataclass(frozen=True)
class MLCQuantization:
    """One of mlc-llm's quantization modes (mlc_llm/quantization/quantization.py)."""

    name: str
    model_dtype: str  # "float16" | "float32"
    bits: int | None = None  # None: no quantization
    group_size: int = 32
    # WebGPU features a model library compiled for this mode needs.
    required_features: tuple[str, ...] = ()

    @property
    def elems_per_word(self) -> int:
        return 32 // (self.bits or 32)

    @property
    def max_int(self) -> int:
        return (1 << ((self.bits or 1) - 1)) - 1


MLC_QUANTIZATIONS: dict[str, MLCQuantization] = {
    "q4f16_1": MLCQuantization("q4f16_1", "float16", bits=4, required_features=("shader-f16",)),
    "q4f32_1": MLCQuantization("q4f32_1", "float32", bits=4),
    "q0f16": MLCQuantization("q0f16", "float16", required_features=("shader-f16",)),
    "q0f32": MLCQuantization("q0f32", "float32"),
}


@dataclass(frozen=True)
class MLCParam:
    """One MLC weight before quantization: its name stem, its HF sources and how it is stored."""

    stem: str  # e.g. "language_model.model.layers.0.mlp.gate_up_proj"
    suffix: str  # "weight" (the HF parameter kind)
    sources: tuple[str, ...]
    shape: tuple[int, ...]  # logical shape after fusion
    quantized: bool  # a Linear or Embedding weight under a group-quantization mode
    norm_offset: float = 0.0

    def stored(self, quant: MLCQuantization) -> list[tuple[str, tuple[int, ...], str]]:
        """Return [(name, shape, dtype)] as written to the tensor cache."""
        if not self.quantized:
            return [(f"{self.stem}.{self.suffix}", self.shape, quant.model_dtype)]
        n, k = self.shape
        return [
            (f"{self.stem}.q_weight", (n, k // quant.elems_per_word), "uint32"),
            (f"{self.stem}.q_scale", (n, k // quant.group_size), quant.model_dtype),
        ]


def naming(ckpt: Checkpoint) -> MLCNaming:
    """Return mlc-llm's naming of the checkpoint's architecture (UnsupportedError when it has none)."""
    return mlc_naming(ckpt.spec)


def _is_tied(ckpt: Checkpoint, mlc: MLCNaming) -> bool:
    if mlc.tied_lm_head is not None:
        return mlc.tied_lm_head
    return bool(ckpt.config.get("tie_word_embeddings", False))


def plan_params(ckpt: Checkpoint, quant: MLCQuantization) -> list[MLCParam]:
    """Return every MLC parameter of the checkpoint, in the order the writer stores them."""
    mlc = naming(ckpt)
    tied = _is_tied(ckpt, mlc)
    fused_by_member = {member: (target, members) for target, members in mlc.fused for member in members}
    plan: list[MLCParam] = []
    seen_fused: set[str] = set()
    for hf_name, entry in ckpt.tensors.items():
        if hf_name.endswith(_SKIPPED_SUFFIXES) or (tied and hf_name.startswith("lm_head.")):
            continue
        module, _, suffix = hf_name.rpartition(".")
        parent, _, leaf = module.rpartition(".")
        shape = tuple(entry.shape)
        sources: tuple[str, ...] = (hf_name,)
        if leaf in fused_by_member:
            target, members = fused_by_member[leaf]
            stem_hf = f"{parent}.{target}"
            if stem_hf in seen_fused:
                continue
            seen_fused.add(stem_hf)
            sources = tuple(f"{parent}.{m}.{suffix}" for m in members)
            missing = [s for s in sources if s not in ckpt.tensors]
            if missing:
                raise UnsupportedError(f"{ckpt.folder}: {', '.join(missing)} missing; mlc-llm fuses them into {target}")
            rows = sum(ckpt.tensors[s].shape[0] for s in sources)
            shape = (rows, *shape[1:])
            module = stem_hf
        is_matrix = len(shape) == 2 and suffix == "weight"
        quantized = quant.bits is not None and is_matrix
        if quantized and shape[1] % quant.group_size:
            raise UnsupportedError(
                f"{hf_name}: input dimension {shape[1]} is not a multiple of {quant.group_size}; {quant.name} "
                "would pad it, which edgepack does not write. Use q0f16 / q0f32 (--quant F16 / F32)."
            )
        offset = mlc.norm_offset if module.endswith("norm") and suffix == "weight" else 0.0
        plan.append(MLCParam(f"{mlc.param_prefix}{module}", suffix, sources, shape, quantized, offset))
    return plan


def expected_records(ckpt: Checkpoint, quant: MLCQuantization) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every tensor name the cache must hold, with its shape and dtype (from config and headers only)."""
    return {name: (shape, dtype) for p in plan_params(ckpt, quant) for name, shape, dtype in p.stored(quant)}


def load_source(ckpt: Checkpoint, param: MLCParam) -> np.ndarray:
    """The parameter as mlc-llm's loader produces it, in float32: fused and offset, not yet cast."""
    parts = [ckpt.load(s).to(torch.float32).numpy() for s in param.sources]
    data = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    if param.norm_offset:
        data = data + np.float32(param.norm_offset)
    return np.ascontiguousarray(data, dtype=np.float32)


def quantize_group(weight: np.ndarray, quant: MLCQuantization) -> tuple[np.ndarray, np.ndarray]:
    """Group-quantize weight [N, K] (already in the model dtype) -> (q_weight uint32, q_scale)."""
    dtype = np.dtype(quant.model_dtype)
    w = weight.astype(dtype, copy=False)
    n, k = w.shape
    groups = w.reshape(n, k // quant.group_size, quant.group_size)
    max_abs = np.abs(groups).max(axis=-1)
    scale = (max_abs / dtype.type(quant.max_int)).astype(dtype)
    safe = np.where(scale == 0, dtype.type(1), scale)  # an all-zero group stores the zero point
    scaled = ((groups / safe[..., None]).astype(dtype) + dtype.type(quant.max_int)).astype(np.float32)
    # tir.round lowers to llvm.round on the CPU mlc-llm quantizes with: halves round away from zero.
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + np.float32(0.5))
    q = np.clip(rounded, 0, 2 * quant.max_int).astype(np.uint32)
    q = q.reshape(n, k // quant.elems_per_word, quant.elems_per_word)
    shifts = (np.arange(quant.elems_per_word, dtype=np.uint32) * np.uint32(quant.bits))
    q_weight = np.bitwise_or.reduce(q << shifts, axis=-1).astype(np.uint32)
    return q_weight, scale


def dequantize_group(q_weight: np.ndarray, q_scale: np.ndarray, quant: MLCQuantization) -> np.ndarray:
    """The runtime's view of a quantized weight, in float32: (nibble - 7) * scale."""
    n, words = q_weight.shape
    shifts = np.arange(quant.elems_per_word, dtype=np.uint32) * np.uint32(quant.bits)
    mask = np.uint32((1 << quant.bits) - 1)
    q = ((q_weight[..., None] >> shifts) & mask).reshape(n, words * quant.elems_per_word).astype(np.float32)
    scale = np.repeat(q_scale.astype(np.float32), quant.group_size, axis=1)
    return (q - np.float32(quant.max_int)) * scale


def f32_to_bf16_bits(value: np.ndarray) -> np.ndarray:
    """tvmjs's float32 -> bfloat16: round to nearest even inside bf16's range, truncate outside."""
    value = np.ascontiguousarray(value, dtype=np.float32)
    cap = np.finfo(np.float32).max
    bf16_limit = ((np.array([cap]).view(np.uint32) >> 16) << 16).view(np.float32)[0]
    data = value.view(np.uint32)
    bias = np.where((value < bf16_limit) & (value > -bf16_limit), ((data >> 16) & 1) + 0x7FFF, 0).astype(np.uint32)
    return ((data + bias) >> 16).astype(np.uint16)


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def encode_stored(name: str, array: np.ndarray) -> tuple[bytes, str, str]:
    """Return (bytes, dtype name, format) as dump_tensor_cache(encode_format="f32-to-bf16") stores them."""
    dtype = str(array.dtype)
    if dtype == "float32":
        return f32_to_bf16_bits(array).tobytes(), dtype, "f32-to-bf16"
    return np.ascontiguousarray(array).tobytes(), dtype, "f32-to-bf16"


def decode_stored(raw: bytes, record: dict[str, Any]) -> np.ndarray:
    """Read one record's bytes back as the runtime does (bf16-encoded float32 widened again)."""
    shape = tuple(record["shape"])
    if record["dtype"] == "float32" and record["format"] == "f32-to-bf16":
        return bf16_bits_to_f32(np.frombuffer(raw, dtype=np.uint16)).reshape(shape)
    return np.frombuffer(raw, dtype=np.dtype(record["dtype"])).reshape(shape)


@dataclass
class ShardWriter:
    """tvmjs's TensorCacheShardingManager: same thresholds, same record fields, same file names."""

    folder: Path
    cap: int = SHARD_CAP_BYTES
    shards: list[dict[str, Any]] = field(default_factory=list)
    _pending: list[dict[str, Any]] = field(default_factory=list)
    _data: bytearray = field(default_factory=bytearray)

    def append(self, data: bytes, name: str, shape: tuple[int, ...], dtype: str, fmt: str) -> None:
        record: dict[str, Any] = {"name": name, "shape": list(shape), "dtype": dtype, "format": fmt,
                                  "nbytes": len(data)}
        if len(self._data) + len(data) >= self.cap:
            if len(data) * 2 >= self.cap:
                record["byteOffset"] = 0
                self._commit(bytes(data), [record])
                return
            self.commit()
        record["byteOffset"] = len(self._data)
        self._pending.append(record)
        self._data += data

    def commit(self) -> None:
        if self._data:
            self._commit(bytes(self._data), self._pending)
            self._data = bytearray()
            self._pending = []

    def _commit(self, data: bytes, records: list[dict[str, Any]]) -> None:
        path = f"params_shard_{len(self.shards)}.bin"
        (self.folder / path).write_bytes(data)
        self.shards.append({"dataPath": path, "format": "raw-shard", "nbytes": len(data), "records": records,
                            "md5sum": hashlib.md5(data).hexdigest()})


def iter_stored(ckpt: Checkpoint, quant: MLCQuantization) -> Iterator[tuple[MLCParam, list[tuple[str, np.ndarray]]]]:
    """Yield each parameter with its stored arrays [(name, array)], one parameter in memory at a time."""
    for param in plan_params(ckpt, quant):
        data = load_source(ckpt, param)
        if param.quantized:
            q_weight, q_scale = quantize_group(data, quant)
            yield param, [(f"{param.stem}.q_weight", q_weight), (f"{param.stem}.q_scale", q_scale)]
        else:
            yield param, [(f"{param.stem}.{param.suffix}", data.astype(np.dtype(quant.model_dtype)))]


def write_tensor_cache(ckpt: Checkpoint, folder: Path, quant: MLCQuantization) -> dict[str, Any]:
    """Write params_shard_*.bin and tensor-cache.json into folder; return the cache's JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = ShardWriter(folder)
    names = 0
    total_bytes = 0.0
    source_params = 0
    for param, arrays in iter_stored(ckpt, quant):
        source_params += sum(math.prod(ckpt.tensors[s].shape) for s in param.sources)
        for name, array in arrays:
            data, dtype, fmt = encode_stored(name, array)
            shards.append(data, name, tuple(array.shape), dtype, fmt)
            total_bytes += array.size * array.dtype.itemsize
            names += 1
    shards.commit()
    cache = {
        "metadata": {"ParamSize": names, "ParamBytes": total_bytes, "BitsPerParam": total_bytes * 8.0 / source_params},
        "records": shards.shards,
    }
    (folder / TENSOR_CACHE).write_text(json.dumps(cache, indent=4), encoding="utf-8")
    return cache


def model_config(ckpt: Checkpoint, context_window: int, prefill_chunk: int) -> dict[str, Any]:
    """mlc-chat-config.json's model_config: the HF keys mlc-llm reads, under its own names."""
    mlc = naming(ckpt)
    cfg = ckpt.config
    rope = full_rope_params(cfg)
    values: dict[str, Any] = {k: cfg[k] for k in mlc.model_config_keys if k in cfg and k != "rope_scaling"}
    values["position_embedding_base"] = rope.get("rope_theta", 10000.0)
    if "rope_scaling" in mlc.model_config_keys:
        values["rope_scaling"] = rope if str(rope.get("rope_type", "default")) != "default" else None
    values.update(context_window_size=context_window, prefill_chunk_size=prefill_chunk)
    if "sliding_window" in values:
        values["sliding_window_size"] = values.pop("sliding_window")
    common = {"tensor_parallel_shards": 1, "max_batch_size": 1}
    if mlc.nested_text_config:
        return {"text_config": values, "vocab_size": cfg["vocab_size"], "context_window_size": context_window,
                "prefill_chunk_size": prefill_chunk, "sliding_window_size": values.get("sliding_window_size", -1),
                "is_text_model": True, **common}
    return {**values, **common}


def tokenizer_info(folder: Path) -> dict[str, Any]:
    """What mlc-llm's DetectTokenizerInfo reports, read from tokenizer.json's decoder."""
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    decoder = json.dumps(data.get("decoder") or {})
    method = "byte_level" if '"ByteLevel"' in decoder else "byte_fallback" if '"ByteFallback"' in decoder else "raw"
    return {"token_postproc_method": method, "prepend_space_in_encode": False, "strip_space_in_decode": False}


def conv_template(contract: Any) -> tuple[dict[str, Any], str]:
    """A conversation template that renders one user turn exactly as the contract does.

    Returns (template, note). WebLLM builds roles.user + role_content_sep + message + seps[0] +
    roles.assistant + role_empty_sep; with the contract's prefix as the user role, its suffix as
    the separator and everything else empty, that is prefix + message + suffix. A template with
    {instruction} cannot be expressed: the chat API then sends the message as the whole body.
    """
    prompt = contract.prompt
    exact = prompt.template == "{input}"
    template = {
        "name": "edgepack-contract",
        "system_template": "{system_message}",
        "system_message": "",
        "system_prefix_token_ids": [contract.bos_id] if contract.add_bos and contract.bos_id is not None else None,
        "add_role_after_system_message": True,
        "roles": {"user": prompt.prefix, "assistant": "", "tool": prompt.prefix},
        "role_templates": {"user": "{user_message}", "assistant": "{assistant_message}", "tool": "{tool_message}"},
        "messages": [],
        "seps": [prompt.suffix],
        "role_content_sep": "",
        "role_empty_sep": "",
        "stop_str": list(contract.stop_strings),
        "stop_token_ids": list(contract.eos_ids),
        "function_string": "",
        "use_function_calling": False,
    }
    note = "" if exact else (
        f"the prompt template {prompt.template!r} has parts besides {{input}}; WebLLM's chat API gets prefix + message "
        "+ suffix only, so use EdgeModel.run (which renders the template) for the exact contract prompt"
    )
    return template, note


def chat_config(ckpt: Checkpoint, contract: Any, quant: MLCQuantization, context_window: int,
                prefill_chunk: int, tokenizer_files: list[str]) -> tuple[dict[str, Any], str]:
    """mlc-chat-config.json for the bundle; returns (config, note about the conversation template)."""
    cfg = ckpt.config
    mconfig = model_config(ckpt, context_window, prefill_chunk)
    template, note = conv_template(contract)
    gen = contract.generation
    sliding = mconfig.get("sliding_window_size", cfg.get("sliding_window") or -1)
    return {
        "version": MLC_CHAT_CONFIG_VERSION,
        "model_type": naming(ckpt).model_type,
        "quantization": quant.name,
        "model_config": mconfig,
        "vocab_size": cfg["vocab_size"],
        "active_vocab_size": cfg["vocab_size"],
        "context_window_size": context_window,
        "sliding_window_size": sliding if sliding is not None else -1,
        "prefill_chunk_size": prefill_chunk,
        "attention_sink_size": -1,
        "tensor_parallel_shards": 1,
        "pipeline_parallel_stages": 1,
        "temperature": gen.get("temperature", 1.0) if gen.get("do_sample") else 0.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "repetition_penalty": 1.0,
        "top_p": gen.get("top_p", 1.0),
        "tokenizer_files": tokenizer_files,
        "tokenizer_info": tokenizer_info(ckpt.folder),
        "conv_template": template,
        "pad_token_id": cfg.get("pad_token_id"),
        "bos_token_id": contract.bos_id,
        "eos_token_id": contract.eos_ids,
        "model_task": "chat",
    }, note
