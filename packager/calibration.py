"""Calibration text and the per-channel activation statistics quantizers size themselves on.

Shared by targets' quantizers: activation smoothing reads max |x| per channel, weight quantizers
read mean x^2 per channel (the weight of each column's rounding error). Deliberately not the golden
text the artifacts are judged on.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from packager.threads import torch_one_thread

# Generic prose, code, JSON and dialogue.
CALIBRATION_TEXT = (
    "The committee met on Tuesday to review the budget. After a long discussion, members agreed to postpone "
    "the vote until more data was available. def mean(xs):\n    return sum(xs) / len(xs)\n"
    '{"order": 1042, "status": "shipped", "items": [3, 5]}  Customer: my package never arrived, can you help? '
    "Agent: I'm sorry to hear that. Let me check the tracking number for you. Photosynthesis converts light "
    "into chemical energy; plants store it as glucose. 1. Preheat the oven to 180 C. 2. Mix flour and sugar."
)

_LAYER_LINEAR = re.compile(r"layers\.(\d+)\.(?:.+\.)?(\w+)$")


@functools.lru_cache(maxsize=4)
def calibration_ids(folder: Path) -> Any:
    """CALIBRATION_TEXT tokenized by the checkpoint's own tokenizer, as a (1, n) tensor (kept: a step may tokenize
    before it loads the model, so that loading a tokenizer, 0.5 GB for Gemma's, does not add to the model's peak)."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)
    return torch.tensor([tokenizer(CALIBRATION_TEXT)["input_ids"]])


def linear_input_stats(model: Any, ids: Any, reduce: str) -> dict[str, Any]:
    """Per-input-channel statistic of every nn.Linear's input on `ids`: "max" (max |x|) or "mean_square"."""
    import torch

    stats: dict[str, Any] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            def record(_m: Any, args: Any, name: str = name) -> None:
                x = args[0].detach().float().reshape(-1, args[0].shape[-1])
                if reduce == "max":
                    seen = x.abs().amax(0)
                    stats[name] = torch.maximum(stats[name], seen) if name in stats else seen
                else:
                    stats[name] = stats.get(name, 0) + (x * x).mean(0)
            hooks.append(module.register_forward_pre_hook(record))
    try:
        with torch.no_grad(), torch_one_thread():  # the same numbers whatever the build's thread share
            model(ids, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    return stats


def decoder_linear_key(module_name: str) -> str | None:
    """"model.layers.3.self_attn.q_proj" -> "3.q_proj" (None outside the decoder layers)."""
    match = _LAYER_LINEAR.search(module_name)
    return f"{match.group(1)}.{match.group(2)}" if match else None
