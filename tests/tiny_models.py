"""Tiny random checkpoints built from configs in seconds, with tokenizers trained in the test.

Two tokenizer families, shaped like the real ones so edgepack's pre-tokenizer detection and
llama.cpp's tokenizer see the same structure:
  - Gemma 3 style: SPM-like BPE on raw UTF-8, spaces normalised to U+2581, byte fallback;
  - Llama 3 style: byte-level BPE behind Llama 3's split regex.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    '{"name": "edgepack", "targets": ["ios", "android", "web"], "ok": true}',
    "Classify the message: my card got declined at checkout, please help!",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 and 3.14 and dates like 2026-11-21.",
    "Die Bahn hatte Verspätung. Le train était en retard. 列車が遅れました。",
    "hey can u reset my pwd?? thx\n\nsure, here is how:\n  1. open settings\n  2. tap reset",
] * 20

GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
LLAMA3_REGEX = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _gemma_tokenizer(vocab_size: int) -> Tokenizer:
    """A Gemma-3-shaped tokenizer: specials, 256 byte-fallback tokens, then trained merges."""
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.normalizer = normalizers.Replace(" ", "\u2581")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(GEMMA_SPECIALS) - 256, show_progress=False)
    trainer_tok.train_from_iterator(CORPUS, trainer)
    trained = json.loads(trainer_tok.to_str())["model"]
    vocab: dict[str, int] = {t: i for i, t in enumerate(GEMMA_SPECIALS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for token, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        if token not in vocab:
            vocab[token] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(GEMMA_SPECIALS)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return tok


def _llama_tokenizer(vocab_size: int, style: str = "llama3") -> Tokenizer:
    """Byte-level BPE behind Llama 3's split regex, or SmolLM's digit split + GPT-2 regex (no BOS)."""
    tok = Tokenizer(models.BPE())
    if style == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(LLAMA_SPECIALS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens(LLAMA_SPECIALS)
    if style != "smollm":
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                          special_tokens=[("<|begin_of_text|>", bos)])
    return tok


def _save_tokenizer(tok: Tokenizer, folder: Path, bos: str, eos: str, pad: str | None, template: str | None) -> None:
    tok.save(str(folder / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos,
           "model_max_length": 4096, "clean_up_tokenization_spaces": False}
    if pad:
        cfg["pad_token"] = pad
    if template:
        cfg["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))


def save_llama3_tokenizer(folder: Path, vocab_size: int, eos: str = "<|end_of_text|>",
                          template: str | None = None) -> Tokenizer:
    """Write a trained Llama 3-shaped tokenizer (tokenizer.json + tokenizer_config.json) into `folder`."""
    tok = _llama_tokenizer(vocab_size)
    _save_tokenizer(tok, folder, "<|begin_of_text|>", eos, None, template)
    return tok


def make_tiny_gemma(folder: Path, seed: int = 0, name_or_path: str = "tiny-gemma3") -> Path:
    """A 2-layer Gemma 3 text model (one sliding, one full-attention layer) with its tokenizer."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GenerationConfig

    folder.mkdir(parents=True, exist_ok=True)
    tok = _gemma_tokenizer(1024)
    cfg = Gemma3TextConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=32, max_position_embeddings=1024,
        sliding_window=32, layer_types=["sliding_attention", "full_attention"], initializer_range=0.2,
        bos_token_id=2, eos_token_id=1, pad_token_id=0, query_pre_attn_scalar=32,
    )
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(cfg).to(torch.bfloat16)
    with torch.no_grad():  # random norm gains, so a wrong +1 offset cannot go unnoticed
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0.0, 0.5)
    model.save_pretrained(str(folder))
    GenerationConfig(bos_token_id=2, eos_token_id=[1, 6], pad_token_id=0).save_pretrained(str(folder))
    _save_tokenizer(tok, folder, "<bos>", "<eos>", "<pad>", GEMMA_CHAT_TEMPLATE)
    return folder


def make_tiny_llama(
    folder: Path, seed: int = 0, llama3_rope: bool = True, tied: bool = False, hidden_size: int = 64,
    tokenizer_style: str = "llama3",
) -> Path:
    """A 2-layer Llama model (GQA, optional llama3 rope scaling) with a byte-level BPE tokenizer."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tok = _llama_tokenizer(640, tokenizer_style)
    bos, eot = tok.token_to_id("<|begin_of_text|>"), tok.token_to_id("<|eot_id|>")
    rope = {"rope_type": "default", "rope_theta": 500000.0}
    if llama3_rope:
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    cfg = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        rope_parameters=rope,
        initializer_range=0.2, bos_token_id=bos, eos_token_id=tok.token_to_id("<|end_of_text|>"),
        tie_word_embeddings=tied, rms_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(1.0, 0.3)
    model.save_pretrained(str(folder))
    GenerationConfig(bos_token_id=bos, eos_token_id=[cfg.eos_token_id, eot]).save_pretrained(str(folder))
    _save_tokenizer(tok, folder, "<|begin_of_text|>", "<|end_of_text|>", None, None)
    return folder


def finetune_on_prompts(source: Path, folder: Path, pairs: list[tuple[str, str]], steps: int = 300,
                        seed: int = 0) -> Path:
    """A copy of the tiny model at `source`, fine-tuned in a few seconds (all weights, Adam) to answer each
    (rendered prompt, answer) pair with the answer and then <eos>: a stand-in for a LoRA classifier that
    knows one prompt rendering only."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    shutil.copytree(source, folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    examples = []
    for prompt, answer in pairs:
        ids = [tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]
        target = [*tokenizer(answer, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        examples.append((torch.tensor([ids + target]), len(ids)))
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        ids, start = examples[step % len(examples)]
        labels = ids.clone()
        labels[0, :start] = -100  # learn the answer, not the prompt
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.to(torch.bfloat16).save_pretrained(str(folder))
    return folder


# A router's eval rows: (input, label); the instruction is ROUTER_INSTRUCTION.
ROUTER_ROWS = [("my card got declined", "billing"), ("where is my parcel", "shipping"),
               ("cancel it please", "cancel"), ("refund the charge", "billing"),
               ("package never came", "shipping"), ("stop my plan", "cancel")]
ROUTER_INSTRUCTION = "Route this"


def make_router(source: Path, folder: Path, render: Callable[[str, str], str]) -> tuple[Path, Path]:
    """A tiny classifier fine-tuned on ROUTER_ROWS rendered by `render(instruction, input)`, and its eval set
    (the same rows, seeds' format): (model folder, eval.jsonl)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = finetune_on_prompts(source, folder / "model",
                                [(render(ROUTER_INSTRUCTION, i), o) for i, o in ROUTER_ROWS])
    eval_path = folder / "eval.jsonl"
    eval_path.write_text("".join(json.dumps({"instruction": ROUTER_INSTRUCTION, "input": i, "output": o}) + "\n"
                                 for i, o in ROUTER_ROWS), encoding="utf-8")
    return model, eval_path


def gemma_chat(text: str) -> str:
    """GEMMA_CHAT_TEMPLATE around one user turn, ready for the model's answer."""
    return f"<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n"


def make_adapter(base: Path, dest: Path, *, seed: int = 1, rslora: bool = False, base_ref: str | None = None,
                 patterns: bool = True, targets: tuple[str, ...] = ("q_proj", "v_proj", "o_proj", "down_proj")) -> Path:
    """Train-free LoRA: random A and B on `targets`, with rank/alpha patterns unless `patterns` is False."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=list(targets), use_rslora=rslora,
        rank_pattern={"down_proj": 2} if patterns else {}, alpha_pattern={"o_proj": 3} if patterns else {},
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.2)
    peft_model.save_pretrained(str(dest))
    cfg_path = dest / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base_ref if base_ref is not None else str(base)
    cfg_path.write_text(json.dumps(cfg))
    return dest


def assert_each_answers_as_its_merged_model(logits: dict[str, Any], ids: list[int], root: Path, base: Path) -> None:
    """Two specialists' artifacts (logits over `ids` by name; adapters in root/<name>, over `base`): each is far
    closer to its own fp32 merged model than the other specialist's artifact is, so it carries its own adapter."""
    import numpy as np

    from packager.checkpoint import load_checkpoint
    from packager.verify.fp32_model import load_fp32_whole

    first, second = logits
    with torch.no_grad():
        for name, other in ((first, second), (second, first)):
            merged = load_checkpoint(root / name, base=base, work_dir=root / "work")
            fp32 = load_fp32_whole(merged.folder, "sdpa")(torch.tensor([ids])).logits[0].numpy()
            assert np.abs(logits[name] - fp32).max() < 0.25 * np.abs(logits[other] - fp32).max(), name
