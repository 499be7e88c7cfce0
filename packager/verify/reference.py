"""fp32 reference logits of the source model, computed once per checkpoint and cached on disk.

Every artifact (GGUF, .pte, Core ML, web) is compared against these numbers on the same token ids,
so a difference is the artifact's, never the tokenizer's or the prompt's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from packager.checkpoint import Checkpoint
from packager.fingerprint import cache_root, options_digest
from packager.progress import Reporter
from packager.stage_cache import StageCache
from packager.verify.fp32_model import load_fp32_model
from packager.verify.golden import GoldenSet

GREEDY_TOKENS = 24


@dataclass
class ReferenceLogits:
    """Token ids and fp32 logits of the source model for each golden sequence."""

    folder: Path
    sequences: list[list[int]]
    greedy_prompt_ids: list[int]
    greedy_ids: list[int]
    eos_ids: list[int]
    from_cache: bool = False

    def logits(self, index: int) -> np.ndarray:
        return np.load(self.folder / f"logits-{index}.npy", mmap_mode="r")

    @property
    def positions(self) -> int:
        return sum(len(s) for s in self.sequences)

    @property
    def perplexity_index(self) -> int:
        return len(self.sequences) - 1


def import_transformers() -> None:
    """Import transformers and resolve the names the stages use, before targets start in threads: its lazy
    module is not safe to import from several threads at once (with five targets at once: "cannot import name
    'AutoTokenizer' from 'transformers'", reproduced 2026-12-05)."""
    import transformers

    for name in ("AutoTokenizer", "AutoModelForCausalLM", "AutoConfig", "GenerationConfig"):
        getattr(transformers, name)


def load_hf_tokenizer(ckpt: Checkpoint):
    return tokenizer_in(ckpt.folder)


def tokenizer_in(folder: Path):
    """The transformers tokenizer saved in `folder`: local files only, never remote code."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)


def reference_key(ckpt_digest: str, golden: GoldenSet) -> str:
    return options_digest("reference-logits", ckpt_digest, golden.digest_source(), GREEDY_TOKENS)


@dataclass(frozen=True)
class ReferenceRun:
    """What the reference stage records beside its logits files: the token ids they belong to."""

    sequences: list[list[int]]
    greedy_prompt_ids: list[int]
    greedy_ids: list[int]


def compute_reference(
    ckpt: Checkpoint, golden: GoldenSet, ckpt_digest: str, eos_ids: list[int],
    cache: StageCache | Path | None = None, progress: Callable[[int, int], None] | None = None,
    hold_memory: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> ReferenceLogits:
    """Return the cached reference for this checkpoint, computing it (one forward per text) if needed.

    `hold_memory` wraps the time the fp32 model is loaded (a build's scheduler claims its memory).
    """
    if not isinstance(cache, StageCache):
        cache = StageCache(cache or cache_root(), Reporter(quiet=True))

    def run(folder: Path) -> ReferenceRun:
        tokenizer = load_hf_tokenizer(ckpt)
        with hold_memory():
            return forward_all(folder, tokenizer)

    def forward_all(folder: Path, tokenizer: Any) -> ReferenceRun:
        model = load_fp32_model(ckpt)
        sequences: list[list[int]] = []
        with torch.inference_mode():
            for i, text in enumerate(golden.sequences):
                ids = tokenizer(text, add_special_tokens=True)["input_ids"]
                logits = model(torch.tensor([ids])).logits[0].float().numpy()
                np.save(folder / f"logits-{i}.npy", logits)
                sequences.append(ids)
                if progress:
                    progress(i + 1, len(golden.sequences) + 1)
            prompt_ids = tokenizer(golden.greedy_prompt, add_special_tokens=True)["input_ids"]
            greedy_ids = greedy_hf(model, prompt_ids, GREEDY_TOKENS, eos_ids)
            if progress:
                progress(len(golden.sequences) + 1, len(golden.sequences) + 1)
        return ReferenceRun(sequences, prompt_ids, greedy_ids)

    entry = cache.entry("reference", reference_key(ckpt_digest, golden)[:24], "reference logits (fp32, transformers)",
                        run, encode=dataclasses.asdict, decode=lambda data: ReferenceRun(**data),
                        describe=lambda r: f"{sum(len(s) for s in r.sequences)} positions")
    meta = entry.value
    return ReferenceLogits(entry.folder, meta.sequences, meta.greedy_prompt_ids, meta.greedy_ids, eos_ids,
                           from_cache=entry.from_cache)


def greedy_hf(model: torch.nn.Module, prompt_ids: list[int], n: int, eos_ids: list[int]) -> list[int]:
    """Greedy continuation with the HF model (argmax each step, stop at an eos id)."""
    ids = list(prompt_ids)
    out: list[int] = []
    with torch.inference_mode():
        for _ in range(n):
            logits = model(torch.tensor([ids])).logits[0, -1]
            tok = int(torch.argmax(logits))
            out.append(tok)
            if tok in eos_ids:
                break
            ids.append(tok)
    return out
