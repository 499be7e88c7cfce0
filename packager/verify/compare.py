"""Comparisons every runtime's verifier shares: token ids against Hugging Face's, and where two sequences part."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from packager.verify.golden import GoldenSet
from packager.verify.metrics import FidelityAccumulator, FidelityMetrics

if TYPE_CHECKING:
    from packager.verify.reference import ReferenceLogits


def tokenizer_probe_text(golden: GoldenSet, special_tokens: list[str]) -> str:
    """The probe text plus the model's special tokens, so their handling is compared too."""
    return golden.tokenizer_probe + " " + " ".join(special_tokens) + " end"


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first position where two token lists differ; None when one is a prefix of the other."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)


def compare_token_ids(hf_ids: list[int], other_ids: list[int], other: str) -> tuple[bool, str]:
    """Compare a runtime's token ids with HF's; return (equal, detail naming where they part)."""
    if hf_ids == other_ids:
        return True, f"{len(hf_ids)} tokens identical"
    first = first_difference(hf_ids, other_ids)
    if first is None:
        first = min(len(hf_ids), len(other_ids))
    return False, (
        f"differ at token {first}: HF {hf_ids[first:first + 5]} vs {other} {other_ids[first:first + 5]} "
        f"({len(hf_ids)} vs {len(other_ids)} tokens)"
    )


def golden_fidelity(reference: ReferenceLogits, logits: Callable[[list[int]], np.ndarray],
                    max_positions: int | None = None) -> tuple[FidelityAccumulator, int]:
    """Every golden sequence through a runtime's `logits(ids)` (positions x vocab), summed against the fp32
    reference; a sequence is cut to `max_positions` (a program's KV cache). Returns the sums and how many
    positions the cut left out (the report says so)."""
    acc = FidelityAccumulator()
    truncated = 0
    for i, full in enumerate(reference.sequences):
        ids = full if max_positions is None else full[:max_positions]
        truncated += len(full) - len(ids)
        art = logits(ids)
        ref = np.asarray(reference.logits(i)[:len(ids)])
        acc.add(ref, art)
        if i == reference.perplexity_index:
            acc.add_perplexity(ids, ref, art)
    return acc, truncated


def eager_fidelity(model: Any, reference: ReferenceLogits) -> FidelityMetrics:
    """A transformers model (a ladder rung's eager quantized copy) on the golden sequences, one forward each
    without a cache, against the fp32 reference: a screen's prediction of what a conversion would keep."""
    import torch

    acc = FidelityAccumulator()
    with torch.inference_mode():
        for i, ids in enumerate(reference.sequences):
            acc.add(reference.logits(i), model(torch.tensor([ids]), use_cache=False).logits[0].float().numpy())
    return acc.result()
