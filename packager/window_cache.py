"""Whether a llama.cpp runtime keeps a sliding-window model's local layers cached over the whole context.

llama.cpp (llama-server, inside wllama in the browser and as the Raspberry Pi's service) keeps only the window
of those layers by default, and then cannot reuse a cached prompt prefix: every request is evaluated whole, the
task's shared instruction included (measured on Gemma 3 270M in wllama 3.8.1: 25 of 25 prompt tokens per eval
row; with the full cache 11 of 24, a labels answer 1.6 -> 1.1 s). `--swa-full` / `swa_full` keeps the whole
context instead, at the cost of those layers' keys and values beyond the window.
"""

from __future__ import annotations

from typing import Any

# The most a whole-context cache of the local layers may add to a page's or a Pi's memory.
FULL_WINDOW_CACHE_BUDGET = 64 * 2**20


def full_window_cache(config: dict[str, Any], context_length: int) -> bool:
    """Whether to ask for the whole-context cache: a sliding-window model whose extra f16 keys and values at
    `context_length` stay within FULL_WINDOW_CACHE_BUDGET (nothing for Gemma 3 270M at 512 tokens, about
    365 MB for Gemma 3 4B at 4,096, which neither a browser tab nor a Pi should spend for it)."""
    window = config.get("sliding_window")
    if not window or context_length <= 0:
        return False
    types = config.get("layer_types") or ["sliding_attention"] * int(config.get("num_hidden_layers", 0))
    sliding = sum(t == "sliding_attention" for t in types)
    heads = int(config.get("num_key_value_heads") or config.get("num_attention_heads", 0))
    head_dim = int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])
    extra = sliding * max(0, context_length - int(window)) * 2 * heads * head_dim * 2
    return sliding > 0 and extra <= FULL_WINDOW_CACHE_BUDGET
