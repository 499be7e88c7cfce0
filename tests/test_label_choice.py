"""Greedy decoding held to a labels contract's token paths (packager/label_choice.py), as the iOS bridge decodes.

A toy tokenizer (one id per character, space included) and hand-made logits: which tokens may follow an answer,
which one is picked, and that nothing but a constrained labels contract gets a choice.
"""

from __future__ import annotations

import numpy as np

from packager.contract import Contract
from packager.label_choice import LabelChoice

EOS, NEWLINE = 1, ord("\n")


def encode(text: str) -> list[int]:
    return [ord(c) for c in text]


def _choice(labels: list[str]) -> LabelChoice:
    contract = Contract(task="labels", labels=labels, constrained=True, eos_ids=[EOS], stop_strings=["\n"])
    choice = LabelChoice.of(contract, encode)
    assert choice is not None
    return choice


def test_an_answer_follows_a_labels_tokens_alone_or_after_a_space_and_then_may_only_end() -> None:
    choice = _choice(["ab", "ac", "b"])
    assert choice.allowed([]) == sorted({ord("a"), ord("b"), ord(" ")})
    assert choice.allowed(encode(" ")) == [ord("a"), ord("b")]
    assert choice.allowed(encode("a")) == [ord("b"), ord("c")]
    assert choice.allowed(encode(" ab")) == [EOS, NEWLINE] == choice.allowed(encode("b"))
    assert choice.allowed(encode("ab\n")) == [] and choice.allowed(encode("x")) == []


def test_the_best_scoring_allowed_token_is_picked_with_its_lead_over_the_next_allowed_one() -> None:
    choice = _choice(["ab", "ac"])
    logits = np.zeros(200, np.float32)
    logits[ord("z")] = 9.0  # the argmax, not on any path
    logits[ord("c")], logits[ord("b")] = 3.0, 2.5
    assert choice.ranked(logits, encode("a")) == (ord("c"), 0.5)
    logits[ord("b")] = 3.0  # a tie: the lower id, as argmax picks
    assert choice.ranked(logits, encode("a"))[0] == ord("b")
    only = choice.ranked(logits, encode(" a"))
    assert only[0] in (ord("b"), ord("c"))
    assert choice.ranked(logits, encode(" "))[1] == float("inf")  # "a" is the only way on


def test_only_a_constrained_labels_contract_gets_a_choice() -> None:
    assert LabelChoice.of(Contract(task="labels", labels=["a"], constrained=False), encode) is None
    assert LabelChoice.of(Contract(task="json", constrained=True), encode) is None
    assert LabelChoice.of(Contract(task="labels", labels=[], constrained=True), encode) is None
