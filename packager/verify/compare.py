"""Comparisons every runtime's verifier shares: token ids against Hugging Face's, and where two sequences part."""

from __future__ import annotations

from packager.verify.golden import GoldenSet


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
