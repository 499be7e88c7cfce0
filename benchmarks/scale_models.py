"""Random-weight checkpoints made from real model configs, to measure what a build costs at 1B and 4B.

The weights are random (bf16, as the released checkpoints are stored), so these folders measure
time and memory only, never fidelity. Gemma's tokenizer is the real Gemma 3 one, taken from the bundled
example (the 1B and 4B models share it). No Llama 3 tokenizer is on this host (Meta's are gated): the Llama
folders carry a small byte-level BPE of Llama 3's shape (tests/tiny_models.py) with Llama 3's chat template,
while the model keeps the published 128,256-row vocabulary, so every tensor has its real shape.
Tensors are written one at a time into shards of at most 1 GB, so making the 4B folder (7.8 GB) holds one
tensor in memory, not the model.

    .venv/bin/python benchmarks/scale_models.py gemma3-1b /tmp/gemma3-1b
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import struct
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_GEMMA3_TEXT: dict[str, Any] = {
    "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "attention_bias": False,
    "attention_dropout": 0.0, "attn_logit_softcapping": None, "final_logit_softcapping": None,
    "bos_token_id": 2, "eos_token_id": [1, 106], "pad_token_id": 0, "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh", "initializer_range": 0.02, "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0, "rope_theta": 1000000.0, "sliding_window_pattern": 6,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True,
}

# The published configs (google/gemma-3-1b-it; the text_config of google/gemma-3-4b-it), in the hub's format.
CONFIGS: dict[str, dict[str, Any]] = {
    "gemma3-1b": {**_GEMMA3_TEXT, "hidden_size": 1152, "intermediate_size": 6912, "num_hidden_layers": 26,
                  "num_attention_heads": 4, "num_key_value_heads": 1, "sliding_window": 512,
                  "max_position_embeddings": 32768, "rope_scaling": None, "vocab_size": 262144},
    "gemma3-4b": {**_GEMMA3_TEXT, "hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34,
                  "num_attention_heads": 8, "num_key_value_heads": 4, "sliding_window": 1024,
                  "max_position_embeddings": 131072, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                  "vocab_size": 262208},
}
# meta-llama/Llama-3.2-1B-Instruct's published config (token ids: see _llama_tokenizer_files).
_LLAMA32: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False, "attention_dropout": 0.0,
    "hidden_act": "silu", "initializer_range": 0.02, "max_position_embeddings": 131072, "mlp_bias": False,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 128256,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}
CONFIGS["llama3.2-1b"] = {**_LLAMA32, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                          "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64}
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
SHARD_BYTES = 1 << 30
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


def tensor_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every stored tensor's shape, from the model transformers builds for `config` on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}  # a tied head is listed once


def _random(shape: tuple[int, ...], generator: torch.Generator, norm_center: float = 0.0) -> torch.Tensor:
    if len(shape) == 1:  # norm weights: Gemma scales by (1 + w), Llama by w (norm_center 1)
        return (norm_center + torch.randn(shape, generator=generator) * 0.05).to(torch.bfloat16)
    return (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)


def write_sparse_shard(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """A bf16 safetensors file of `shapes` whose data is a hole: real header and size, all zeros, no disk blocks.
    Enough for whatever reads only a checkpoint's shapes and sizes (the memory plan), in no time."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for tensor_name, shape in shapes.items():
        size = 2 * math.prod(shape)
        header[tensor_name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded)
        f.truncate(8 + len(encoded) + offset)


def make_checkpoint(name: str, out: Path, seed: int = 0, sparse: bool = False) -> Path:
    """Write the random-weight checkpoint `name` (a key of CONFIGS) into `out`; reuse a complete one. `sparse`:
    every weight zero, stored as holes (write_sparse_shard), for cost checks that never read a value."""
    from safetensors.torch import save_file

    from packager.examples import bundled_example
    from packager.progress import Reporter

    config = CONFIGS[name]
    if (out / "model.safetensors.index.json").is_file():
        return out
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    llama = config["model_type"] == "llama"
    if llama:
        config = {**config, **_llama_tokenizer_files(partial)}
    else:
        example = bundled_example(Reporter(quiet=True))
        for file in TOKENIZER_FILES:
            if (example / file).is_file():
                shutil.copy2(example / file, partial / file)
    (partial / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    generator = torch.Generator().manual_seed(seed)
    weight_map: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    size = 0
    shards = 0

    def flush() -> None:
        nonlocal shard, size, shards
        if shard:
            shards += 1
            file = f"model-{shards:05d}.safetensors"
            if sparse:
                write_sparse_shard(partial / file, {n: tuple(t.shape) for n, t in shard.items()})
            else:
                save_file(shard, str(partial / file), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, file))
        shard, size = {}, 0

    for tensor_name, shape in tensor_shapes(config).items():
        shard[tensor_name] = (torch.empty(shape, dtype=torch.bfloat16, device="meta") if sparse
                              else _random(shape, generator, 1.0 if llama else 0.0))
        size += math.prod(shape) * 2
        if size >= SHARD_BYTES:
            flush()
    flush()
    (partial / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def _llama_tokenizer_files(folder: Path) -> dict[str, Any]:
    """Write a Llama 3-shaped tokenizer and generation config into `folder`; return the config's token ids."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import save_llama3_tokenizer

    tok = save_llama3_tokenizer(folder, 4096, eos="<|eot_id|>", template=LLAMA3_CHAT_TEMPLATE)
    bos, end, eot = (tok.token_to_id(t) for t in ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"))
    (folder / "generation_config.json").write_text(
        json.dumps({"bos_token_id": bos, "eos_token_id": [end, eot], "do_sample": False}, indent=2) + "\n",
        encoding="utf-8")
    return {"bos_token_id": bos, "eos_token_id": [end, eot]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(CONFIGS))
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    print(make_checkpoint(args.model, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
