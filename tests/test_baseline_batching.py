"""The fp32 baseline answers eval rows in batches, and every row gets the answer it gets alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import CORPUS

from packager.contract import Contract
from packager.verify import hf_greedy
from packager.verify.hf_greedy import Continuation, greedy_continuations
from packager.verify.task_eval import EvalRow, hf_generator, score_batch

# Prompts of 2 to about 80 tokens (words reversed, so the tokenizer's trained merges do not apply),
# out of length order: batches of 3 pad every row but the longest, and the longest rows run past
# the tiny Gemma's 32-token sliding window.
TEXT = " ".join(reversed(" ".join(CORPUS[:7]).split(" ")))
PROMPTS = [TEXT[:n] for n in (100, 3, 200, 20, 60)]


def _load(folder: Path) -> tuple[torch.nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager")
    return model.eval(), AutoTokenizer.from_pretrained(str(folder))


def _ids(tokenizer, prompt: str, bos: int) -> list[int]:
    return [bos, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]


def one_row_greedy(model: torch.nn.Module, ids: list[int], steps: int) -> tuple[list[int], float]:
    """The baseline's one-row path (a single prompt, a KV cache, no mask: there is nothing to hide);
    returns the greedy tokens and the smallest gap between the top two logits."""
    out: list[int] = []
    margin = float("inf")
    past, step = None, torch.tensor([ids])
    with torch.inference_mode():
        for _ in range(steps):
            result = model(input_ids=step, past_key_values=past, use_cache=True, logits_to_keep=1)
            past = result.past_key_values
            top2 = torch.topk(result.logits[0, -1], 2).values
            margin = min(margin, float(top2[0] - top2[1]))
            out.append(int(torch.argmax(result.logits[0, -1])))
            step = torch.tensor([[out[-1]]])
    return out, margin


def _batched_and_alone(folder: Path, drop: str | None = None) -> tuple[list[Continuation], list[Continuation]]:
    """The prompts decoded in one batch (with the model never given `drop`) and each alone."""
    model, tokenizer = _load(folder)
    prompts = [_ids(tokenizer, p, model.config.bos_token_id) for p in PROMPTS]
    assert len({len(p) for p in prompts}) == len(prompts) and max(len(p) for p in prompts) > 70
    alone = [Continuation(*one_row_greedy(model, p, 12)) for p in prompts]
    forward = (lambda **inputs: model(**{**inputs, drop: None})) if drop else model
    # The padding is an ordinary word, not the <pad> whose embedding may be all zeros: the mask alone must hide it.
    batched = greedy_continuations(forward, prompts, 12, eos_ids=[], stopped=lambda _: False, pad_id=prompts[0][1])
    return batched, alone


def _same(a: Continuation, b: Continuation) -> bool:
    return a.tokens == b.tokens and abs(a.margin - b.margin) < 1e-4


@pytest.mark.parametrize("family", ["tiny_gemma", "tiny_llama"])
def test_left_padded_batch_decodes_every_prompt_token_for_token_as_alone(
        family: str, request: pytest.FixtureRequest) -> None:
    batched, alone = _batched_and_alone(request.getfixturevalue(family))
    assert [c.tokens for c in batched] == [c.tokens for c in alone]
    assert all(_same(b, a) for b, a in zip(batched, alone, strict=True))


@pytest.mark.parametrize("family", ["tiny_gemma", "tiny_llama"])
def test_without_the_attention_mask_the_padded_rows_decode_otherwise(
        family: str, request: pytest.FixtureRequest) -> None:
    """What the test above guards: this batch's padding, if attended to, changes the padded rows'
    logits by whole units (and on the tiny Llama their tokens too)."""
    batched, alone = _batched_and_alone(request.getfixturevalue(family), drop="attention_mask")
    differ = [not _same(b, a) for b, a in zip(batched, alone, strict=True)]
    assert sum(differ) == len(PROMPTS) - 1 and not differ[PROMPTS.index(max(PROMPTS, key=len))]
    if family == "tiny_llama":
        assert [c.tokens for c in batched] != [c.tokens for c in alone]


def _expected(tokens: list[int], contract: Contract, tokenizer) -> tuple[str, int]:
    """The contract's stop rules applied to a row's own greedy tokens."""
    out: list[int] = []
    for tok in tokens[:contract.max_new_tokens]:
        if tok in contract.eos_ids:
            break
        out.append(tok)
        if any(s in tokenizer.decode(out) for s in contract.stop_strings):
            break
    return tokenizer.decode(out), len(out)


# Prompt lengths sorted: 2, 10, 27, 44, 80 tokens. Batches of at most 3 rows make two passes; a budget of
# 100 tokens also splits 44 from 80; with every gap a "near tie", each row is answered again alone.
@pytest.mark.parametrize("near_tie,batch_tokens,passes", [
    (0.0, 4096, [3, 2]),
    (0.0, 100, [3, 1, 1]),
    (float("inf"), 4096, [3, 1, 1, 1, 2, 1, 1]),
])
def test_each_row_stops_on_its_own_and_reports_its_share_of_the_batch_time(
        near_tie: float, batch_tokens: int, passes: list[int], tiny_gemma: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = _load(tiny_gemma)
    alone = [one_row_greedy(model, _ids(tokenizer, p, 2), 10)[0] for p in PROMPTS]
    # One row ends on an eos id, another on a stop string, the rest run to max_new_tokens.
    contract = Contract(task="text", bos_id=2, max_new_tokens=10, eos_ids=[alone[0][3]],
                        stop_strings=[tokenizer.decode(alone[2][:5])[-2:]])
    expected = [_expected(a, contract, tokenizer) for a in alone]
    assert expected[0][1] <= 3 and expected[2][1] <= 5 and any(n == 10 for _, n in expected)

    seen: list[int] = []
    real = hf_greedy.greedy_continuations
    monkeypatch.setattr(hf_greedy, "greedy_continuations", lambda m, p, *a: seen.append(len(p)) or real(m, p, *a))
    rows = [EvalRow("", p, "") for p in PROMPTS]
    generate = hf_generator(model, tokenizer, contract, batch_rows=3, batch_tokens=batch_tokens, near_tie=near_tie)
    metrics, answers = score_batch(contract, rows, generate, None)
    assert answers == [text for text, _ in expected]
    assert metrics.tokens_per_s == pytest.approx(sum(n for _, n in expected) / (sum(metrics.latencies_ms) / 1000),
                                                 rel=1e-3)
    assert seen == passes
    first_batch = sorted(range(len(PROMPTS)), key=lambda i: len(PROMPTS[i]))[:3]
    assert len({metrics.latencies_ms[i] for i in first_batch}) == 1
