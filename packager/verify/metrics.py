"""Fidelity metrics of an artifact against the fp32 reference, position by position.

Non-finite logits are not hidden: KL and perplexity stay NaN in memory (the gate fails them), the
positions are counted, and a verification record turns the NaN into null when it is written.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# Below this logit gap between the reference's top two tokens, a top-1 flip is a coin toss.
NEAR_TIE_GAP = 0.1
# Positions compared at once: 16 rows of a 262k vocabulary in float64 are 34 MB per working array.
ROWS_AT_ONCE = 16


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclass
class FidelityAccumulator:
    """Sums over positions; `result()` turns them into the reported metrics."""

    positions: int = 0
    agree: int = 0
    decisive: int = 0
    decisive_agree: int = 0
    kl_sum: float = 0.0
    cosine_sum: float = 0.0
    nll_ref: float = 0.0
    nll_art: float = 0.0
    ppl_positions: int = 0
    nonfinite_positions: int = 0

    def add(self, ref_logits: np.ndarray, art_logits: np.ndarray) -> None:
        """Add positions (rows of [positions x vocab] logits), a few rows at a time: each row's numbers are its
        own, and float64 working copies of a whole text at a 262k vocabulary would take gigabytes."""
        for start in range(0, len(ref_logits), ROWS_AT_ONCE):
            self._add_rows(ref_logits[start:start + ROWS_AT_ONCE], art_logits[start:start + ROWS_AT_ONCE])

    def _add_rows(self, ref_logits: np.ndarray, art_logits: np.ndarray) -> None:
        vocab = min(ref_logits.shape[-1], art_logits.shape[-1])
        ref = log_softmax(np.asarray(ref_logits[:, :vocab]))
        art = log_softmax(np.asarray(art_logits[:, :vocab]))
        # argmax of a NaN row is 0 on both sides: a position with any non-finite logit never counts as agreeing.
        finite = np.isfinite(ref).all(-1) & np.isfinite(art).all(-1)
        ref_top = ref.argmax(-1)
        agree = (ref_top == art.argmax(-1)) & finite
        top2 = np.partition(ref, -2, axis=-1)[:, -2:]
        decisive = (top2[:, 1] - top2[:, 0]) >= NEAR_TIE_GAP
        self.positions += len(ref)
        self.nonfinite_positions += int((~finite).sum())
        self.agree += int(agree.sum())
        self.decisive += int(decisive.sum())
        self.decisive_agree += int((agree & decisive).sum())
        self.kl_sum += float((np.exp(ref) * (ref - art)).sum())
        raw_ref = np.asarray(ref_logits[:, :vocab], dtype=np.float64)
        raw_art = np.nan_to_num(np.asarray(art_logits[:, :vocab], dtype=np.float64), posinf=0.0, neginf=0.0)
        norms = np.linalg.norm(raw_ref, axis=-1) * np.linalg.norm(raw_art, axis=-1)
        self.cosine_sum += float(((raw_ref * raw_art).sum(-1) / np.maximum(norms, 1e-30)).sum())

    def add_perplexity(self, ids: list[int], ref_logits: np.ndarray, art_logits: np.ndarray) -> None:
        """Add next-token NLL of both models on a text (logits at position t predict ids[t+1])."""
        targets = np.asarray(ids[1:])
        vocab = min(ref_logits.shape[-1], art_logits.shape[-1])
        for logits, attr in ((ref_logits, "nll_ref"), (art_logits, "nll_art")):
            nll = 0.0
            for start in range(0, len(targets), ROWS_AT_ONCE):
                rows = targets[start:start + ROWS_AT_ONCE]
                lp = log_softmax(np.asarray(logits[start:start + len(rows), :vocab]))
                nll -= float(lp[np.arange(len(rows)), rows].sum())
            setattr(self, attr, getattr(self, attr) + nll)
        self.ppl_positions += len(targets)

    def result(self) -> FidelityMetrics:
        return FidelityMetrics(
            positions=self.positions,
            top1=self.agree / max(self.positions, 1),
            top1_decisive=self.decisive_agree / self.decisive if self.decisive else None,
            decisive_positions=self.decisive,
            kl=self.kl_sum / max(self.positions, 1),
            cosine=self.cosine_sum / max(self.positions, 1),
            ppl_ref=float(np.exp(self.nll_ref / self.ppl_positions)) if self.ppl_positions else None,
            ppl=float(np.exp(self.nll_art / self.ppl_positions)) if self.ppl_positions else None,
            nonfinite_positions=self.nonfinite_positions,
        )


@dataclass
class FidelityMetrics:
    """What the report and the gate read: agreement, divergence and perplexity vs the reference."""

    positions: int
    top1: float
    top1_decisive: float | None
    decisive_positions: int
    kl: float
    ppl_ref: float | None
    ppl: float | None
    # Mean cosine similarity of the raw logit vectors (0 for an all-zero artifact); None in old records.
    cosine: float | None = None
    # Positions where either side's logits hold a NaN or an infinity (then KL and perplexity are NaN too).
    nonfinite_positions: int = 0

    @property
    def finite(self) -> bool:
        """Whether the numbers every gate reads exist (a NaN or infinite logit makes top-1 or KL NaN)."""
        return math.isfinite(self.top1) and math.isfinite(self.kl)

    def as_dict(self) -> dict:
        return asdict(self)
