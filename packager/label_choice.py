"""Greedy decoding held to a labels contract's labels, token by token, where the runtime has no grammar.

llama.cpp (GBNF) and LiteRT-LM (constrained decoding) hold a constrained labels contract to its labels
themselves. A runtime without a grammar leaves the choice of each token to the bridge that drives it, and a
target whose bridge picks tokens this way simulates its program with the same choice: the best-scoring token
that keeps the answer on one of the labels' token paths. A path is a label's token ids as the tokenizer encodes
the label alone and after one space (what follows "Intent:"); once a path is complete, the answer may only end:
an eos id, or the first token of a stop string. A label spelled in other tokens is not offered: a fine-tune
writes its labels in the tokens it was trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from packager.contract import Contract


@dataclass(frozen=True)
class LabelChoice:
    """Every label's token paths, and the tokens that end an answer once a path is complete."""

    paths: tuple[tuple[int, ...], ...]
    ends: frozenset[int]

    @classmethod
    def of(cls, contract: Contract, encode: Callable[[str], list[int]]) -> LabelChoice | None:
        """The choice a constrained labels contract asks for, `encode` giving a text's ids without special
        tokens; None for any other contract (decoded unconstrained)."""
        if contract.task != "labels" or not contract.constrained or not contract.labels:
            return None
        paths = dict.fromkeys(tuple(encode(text)) for label in contract.labels for text in (label, " " + label))
        ends = set(contract.eos_ids) | {ids[0] for stop in contract.stop_strings if stop and (ids := encode(stop))}
        return cls(tuple(path for path in paths if path), frozenset(ends))

    def allowed(self, answer: Sequence[int]) -> list[int]:
        """The tokens that may follow `answer` (ids in ascending order; none once an answer has ended)."""
        n = len(answer)
        allowed: set[int] = set()
        for path in self.paths:
            if len(path) < n or path[:n] != tuple(answer):
                continue
            if len(path) > n:
                allowed.add(path[n])
            else:
                allowed |= self.ends
        return sorted(allowed)

    def ranked(self, logits: np.ndarray, answer: Sequence[int]) -> tuple[int, float]:
        """The best allowed token after `answer` (the lowest id of equal logits, as argmax picks) and how far
        it is ahead of the next allowed one (infinite when it is the only one)."""
        allowed = self.allowed(answer)
        if not allowed:
            return int(np.argmax(logits)), float("inf")
        scores = logits[allowed]
        best = int(np.argmax(scores))
        runner_up = np.delete(scores, best)
        return allowed[best], float(scores[best] - runner_up.max()) if runner_up.size else float("inf")
