"""The bundled text every artifact is judged on: golden prompts, perplexity text, probes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_DATA = Path(__file__).resolve().parent / "data" / "golden.json"


@dataclass(frozen=True)
class GoldenSet:
    prompts: tuple[str, ...]
    perplexity_text: str
    greedy_prompt: str
    tokenizer_probe: str

    @property
    def sequences(self) -> tuple[str, ...]:
        """Every text compared position by position (prompts, then the perplexity text)."""
        return (*self.prompts, self.perplexity_text)

    def digest_source(self) -> str:
        return _DATA.read_text(encoding="utf-8")


@cache
def load_golden() -> GoldenSet:
    data = json.loads(_DATA.read_text(encoding="utf-8"))
    return GoldenSet(
        prompts=tuple(data["prompts"]),
        perplexity_text=data["perplexity_text"],
        greedy_prompt=data["greedy_prompt"],
        tokenizer_probe=data["tokenizer_probe"],
    )
