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
    return _to_log_probs(np.array(logits, dtype=np.float64))[0]


def _to_log_probs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Turn float64 rows of logits into log-probabilities in place; return them and the probabilities.

    One exp per value (the probabilities are the exponentials already summed), where taking the
    log-softmax and then exp() of it for KL took two.
    """
    x -= x.max(axis=-1, keepdims=True)
    p = np.exp(x)
    total = p.sum(axis=-1, keepdims=True)
    x -= np.log(total)
    p /= total
    return x, p


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
        ref = np.array(ref_logits[:, :vocab], dtype=np.float64)  # working copies, turned into log-probs below
        art = np.array(art_logits[:, :vocab], dtype=np.float64)
        ref_finite, art_finite = np.isfinite(ref).all(-1), np.isfinite(art).all(-1)
        # Cosine of the raw logit vectors (an artifact's inf / NaN counted as 0, a reference's kept).
        art_clean = art if art_finite.all() else np.nan_to_num(art, posinf=0.0, neginf=0.0)
        norms = np.sqrt(np.einsum("ij,ij->i", ref, ref) * np.einsum("ij,ij->i", art_clean, art_clean))
        self.cosine_sum += float((np.einsum("ij,ij->i", ref, art_clean) / np.maximum(norms, 1e-30)).sum())
        del art_clean
        ref, ref_p = _to_log_probs(ref)
        art, _ = _to_log_probs(art)
        # argmax of a NaN row is 0 on both sides: a position with any non-finite logit never counts as agreeing.
        finite = ref_finite & art_finite
        rows = np.arange(len(ref))
        ref_top = ref.argmax(-1)
        agree = (ref_top == art.argmax(-1)) & finite
        # The gap between the reference's top two: its max, then the max with that one entry left out.
        best = ref[rows, ref_top].copy()
        ref[rows, ref_top] = -np.inf
        decisive = (best - ref.max(-1)) >= NEAR_TIE_GAP
        ref[rows, ref_top] = best
        self.positions += len(ref)
        self.nonfinite_positions += int((~finite).sum())
        self.agree += int(agree.sum())
        self.decisive += int(decisive.sum())
        self.decisive_agree += int((agree & decisive).sum())
        self.kl_sum += float(np.einsum("ij,ij->", ref_p, ref - art))


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
