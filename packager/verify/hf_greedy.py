"""Greedy decoding with the fp32 transformers model, several prompts per forward pass.

The fp32 baseline answers every eval row. One row at a time, each decoding step pushes the whole
model (its 262k-row head above all) through the CPU for a single token; a batch shares that pass.
Prompts are left-padded to a common width so every row's next token comes from the last column.
The attention mask hides the padding from every query, and each row's position ids count only its
own tokens: RoPE is relative, but the same absolute angles as the row alone keep the numbers closest
to the one-row path. Rows never see each other, so a row's answer does not depend on its batch,
except through fp32 rounding, which can flip a near-tie; `margin` tells the caller where that risk is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Continuation:
    """One prompt's greedy tokens, and how close its closest call was."""

    tokens: list[int]
    # Smallest gap between the top two logits over every step this row decided (its eos included).
    margin: float


def greedy_continuations(
    model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_ids: Sequence[int],
    stopped: Callable[[list[int]], bool], pad_id: int = 0,
) -> list[Continuation]:
    """Return each prompt's greedy continuation: up to an eos id (left out), up to and including the
    token after which `stopped` holds, or `max_new_tokens` tokens."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # a pad's position is never attended to
    tokens: list[list[int]] = [[] for _ in prompts]
    margins = [float("inf")] * len(prompts)
    done = [max_new_tokens <= 0] * len(prompts)
    past = None
    with torch.inference_mode():
        while not all(done):
            # Only the last position's logits: the 262k-vocabulary head over every prompt token
            # would otherwise cost about as much as the rest of the model.
            result = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past,
                           use_cache=True, logits_to_keep=1)
            past = result.past_key_values
            logits = result.logits[:, -1]
            chosen = logits.argmax(-1).tolist()  # argmax, as the one-row path: the first of equal logits
            top2 = torch.topk(logits, 2, dim=-1).values
            gaps = (top2[:, 0] - top2[:, 1]).tolist()
            for row, tok in enumerate(chosen):
                if done[row]:
                    continue
                margins[row] = min(margins[row], gaps[row])
                if tok in eos_ids:
                    done[row] = True
                    continue
                tokens[row].append(tok)
                done[row] = stopped(tokens[row]) or len(tokens[row]) >= max_new_tokens
            # A finished row keeps decoding in step with the others; its further tokens are dropped.
            ids = torch.tensor(chosen).unsqueeze(1)
            mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)
            positions = positions[:, -1:] + 1
    return [Continuation(t, m) for t, m in zip(tokens, margins, strict=True)]
