"""The fidelity metrics equal their textbook definitions, computed here the plain way in float64."""

from __future__ import annotations

import math

import numpy as np

from packager.verify.metrics import NEAR_TIE_GAP, FidelityAccumulator


def _textbook(ref: np.ndarray, art: np.ndarray) -> dict[str, float]:
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        return x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))

    lr, la = log_softmax(ref), log_softmax(art)
    top2 = np.sort(ref.astype(np.float64), -1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) >= NEAR_TIE_GAP
    agree = lr.argmax(-1) == la.argmax(-1)
    r, a = ref.astype(np.float64), art.astype(np.float64)
    cosine = (r * a).sum(-1) / (np.linalg.norm(r, axis=-1) * np.linalg.norm(a, axis=-1))
    return {"top1": agree.mean(), "top1_decisive": (agree & decisive).sum() / decisive.sum(),
            "kl": (np.exp(lr) * (lr - la)).sum(-1).mean(), "cosine": cosine.mean(), "decisive": decisive.sum()}


def test_metrics_equal_their_definitions_with_ties_and_near_ties() -> None:
    rng = np.random.default_rng(3)
    ref = (rng.standard_normal((37, 5000)) * 3).astype(np.float32)
    art = ref + (rng.standard_normal(ref.shape) * 0.3).astype(np.float32)
    ref[0, 11] = ref[0].max()  # an exact tie for the top: never decisive
    ref[1, 12] = ref[1].max() - 0.05  # a near-tie
    acc = FidelityAccumulator()
    acc.add(ref, art)
    got, want = acc.result(), _textbook(ref, art)
    assert got.positions == 37 and got.decisive_positions == want["decisive"] < 37
    assert got.top1 == want["top1"] and got.top1_decisive == want["top1_decisive"]
    assert math.isclose(got.kl, want["kl"], rel_tol=1e-12) and got.kl > 0
    assert math.isclose(got.cosine, want["cosine"], rel_tol=1e-12)


def test_the_callers_logits_are_not_changed() -> None:
    ref = np.linspace(-3, 3, 2 * 64, dtype=np.float64).reshape(2, 64)
    art = ref[:, ::-1].copy()
    kept = ref.copy(), art.copy()
    FidelityAccumulator().add(ref, art)
    assert (ref == kept[0]).all() and (art == kept[1]).all()
