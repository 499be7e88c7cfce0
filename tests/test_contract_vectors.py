"""The shared contract vectors, run through packager/contract.py (the bridges run the same file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from packager.contract import Contract, labels_grammar, parse_output, render_prompt

VECTORS = json.loads((Path(__file__).parent / "vectors" / "contract.json").read_text(encoding="utf-8"))


def _contract(name: str) -> Contract:
    return Contract.from_dict(VECTORS["contracts"][name])


@pytest.mark.parametrize("case", VECTORS["render"], ids=lambda c: f"{c['contract']}:{c['input'][:20]}")
def test_render_vector(case: dict) -> None:
    assert render_prompt(_contract(case["contract"]), case["input"], case["instruction"]) == case["expected"]


@pytest.mark.parametrize("case", VECTORS["parse"], ids=lambda c: f"{c['contract']}:{c['raw'][:24]}")
def test_parse_vector(case: dict) -> None:
    assert parse_output(_contract(case["contract"]), case["raw"]) == case["expected"]


@pytest.mark.parametrize("case", VECTORS["grammar"], ids=lambda c: "|".join(c["labels"])[:30])
def test_grammar_vector(case: dict) -> None:
    assert labels_grammar(case["labels"]) == case["expected"]


def test_vectors_cover_every_error_code() -> None:
    codes = {c["expected"]["error"]["code"] for c in VECTORS["parse"] if c["expected"]["error"]}
    assert codes == {"unknown_label", "invalid_json", "schema_mismatch"}
