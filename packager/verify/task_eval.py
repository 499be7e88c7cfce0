"""Does each artifact still do the user's task? Exact match, contract validity, latency.

The seeds' rule: assert the schema, parse the output, reject on mismatch, track stability after
quantization, record latency distributions. Every artifact answers the eval set with greedy
decoding under the task contract; the fp32 transformers model's own accuracy is the baseline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from packager.contract import Contract, labels_grammar, parse_output, render_prompt
from packager.errors import BadInputError
from packager.verify.llama_cpp_runner import GrammarGreedy, eval_reusing_prefix, last_logits


@dataclass(frozen=True)
class EvalRow:
    """One eval example in the seeds' format."""

    instruction: str
    input: str
    output: str


def load_eval_set(path: Path) -> list[EvalRow]:
    """Read a JSONL eval set ({instruction, input, output} per line) with errors that name the line."""
    if not path.is_file():
        raise BadInputError(
            f"{path}: eval set not found. Pass --eval with a JSONL file of instruction/input/output rows."
        )
    rows: list[EvalRow] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"{path}:{n}: not valid JSON ({exc.msg}). Each line must be one JSON object.") from None
        if not isinstance(data, dict) or not isinstance(data.get("input"), str) or "output" not in data:
            raise BadInputError(f"{path}:{n}: each row needs a string 'input' and an 'output' (and may have "
                                "'instruction'), as in the seeds' format.")
        output = data["output"] if isinstance(data["output"], str) else json.dumps(data["output"])
        rows.append(EvalRow(str(data.get("instruction", "")), data["input"], output))
    if not rows:
        raise BadInputError(f"{path}: the eval set is empty.")
    return rows


def expected_value(contract: Contract, row: EvalRow) -> Any:
    if contract.task == "json":
        return json.loads(row.output)
    return row.output.strip()


@dataclass
class TaskMetrics:
    """Task-level results of one artifact on the eval set."""

    rows: int
    exact_match: float
    validity: float
    agreement: float | None
    baseline_exact_match: float | None
    latency_ms_p50: float
    latency_ms_p95: float
    latency_ms_p99: float
    tokens_per_s: float
    constrained: bool
    mismatches: list[dict[str, Any]]
    latencies_ms: list[float]
    # The eval set's size when only the first `rows` were answered (a runtime held to a time budget); 0: all were.
    of_rows: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# An answer to one prompt: (raw text, generated token count, seconds).
Reply = tuple[str, int, float]
# A generator answers one prompt.
Generator = Callable[[str], Reply]
# A batch generator answers many prompts at once, one reply per prompt in their order.
BatchGenerator = Callable[[Sequence[str]], list[Reply]]


def score(
    contract: Contract, rows: Sequence[EvalRow], generate: Generator, baseline: Sequence[str] | None,
    constrained: bool = False,
) -> tuple[TaskMetrics, list[str]]:
    """Run every row through `generate`; return the metrics and the raw answers."""
    return score_batch(contract, rows, lambda prompts: [generate(p) for p in prompts], baseline, constrained)


def score_batch(
    contract: Contract, rows: Sequence[EvalRow], generate: BatchGenerator, baseline: Sequence[str] | None,
    constrained: bool = False,
) -> tuple[TaskMetrics, list[str]]:
    """Run all rows through `generate` at once; return the metrics and the raw answers.

    Latency and tokens per second are only as meaningful as the generator's seconds: a generator
    that answers rows together reports each row's share of its batch's wall time.
    """
    replies = generate([render_prompt(contract, row.input, row.instruction) for row in rows])
    answers: list[str] = []
    latencies: list[float] = []
    tokens = 0
    gen_seconds = 0.0
    correct = valid = agree = 0
    mismatches: list[dict[str, Any]] = []
    baseline_correct = 0
    for i, (row, (raw, n_tokens, seconds)) in enumerate(zip(rows, replies, strict=True)):
        answers.append(raw)
        latencies.append(seconds * 1000)
        tokens += n_tokens
        gen_seconds += seconds
        parsed = parse_output(contract, raw)
        valid += parsed["ok"]
        ok = parsed["ok"] and parsed["value"] == expected_value(contract, row)
        correct += ok
        if not ok and len(mismatches) < 10:
            mismatches.append({"input": row.input, "expected": row.output, "got": parsed["text"],
                               "error": parsed["error"]})
        if baseline is not None:
            base_parsed = parse_output(contract, baseline[i])
            agree += parsed["text"] == base_parsed["text"]
            baseline_correct += base_parsed["ok"] and base_parsed["value"] == expected_value(contract, row)
    n = len(rows)
    lat = np.array(latencies)
    metrics = TaskMetrics(
        rows=n,
        exact_match=correct / n,
        validity=valid / n,
        agreement=agree / n if baseline is not None else None,
        baseline_exact_match=baseline_correct / n if baseline is not None else None,
        latency_ms_p50=float(np.percentile(lat, 50)),
        latency_ms_p95=float(np.percentile(lat, 95)),
        latency_ms_p99=float(np.percentile(lat, 99)),
        tokens_per_s=tokens / gen_seconds if gen_seconds else 0.0,
        constrained=constrained,
        mismatches=mismatches,
        latencies_ms=[round(x, 3) for x in latencies],
    )
    return metrics, answers


def _stop_index(text: str, stops: Sequence[str]) -> int:
    found = [text.find(s) for s in stops if s and text.find(s) >= 0]
    return min(found) if found else -1


# Rows per forward pass of the fp32 baseline. On Gemma 3 270M (the bundled example's 108 rows of 19-32
# tokens, a loaded 2-core machine, so rough) the baseline took 448 s one row at a time, 202 s in
# batches of 8, 126 s of 16, 90 s of 32 and 67 s of 64, every answer the same.
HF_BATCH_ROWS = 64
# ...and at most this many tokens per pass (rows x longest prompt), so long prompts make smaller
# batches instead of an eager attention matrix of gigabytes.
HF_BATCH_TOKENS = 4096
# A row whose top two logits came closer than this at any step is answered again alone: batching
# changes fp32 rounding (up to 2e-5 on Gemma 3 270M's logits, which reach 47), so it could flip a
# near-tie the one-row path decides the other way.
NEAR_TIE = 1e-2


def _batches(order: list[int], lengths: list[int], rows: int, tokens: int) -> Iterator[list[int]]:
    """Split `order` (row indices, shortest prompt first) into batches of at most `rows` rows and
    `tokens` padded tokens; a prompt longer than `tokens` is a batch of its own."""
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) == rows or (len(batch) + 1) * lengths[i] > tokens):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def hf_generator(
    model, tokenizer, contract: Contract, batch_rows: int = HF_BATCH_ROWS, batch_tokens: int = HF_BATCH_TOKENS,
    near_tie: float = NEAR_TIE,
) -> BatchGenerator:
    """Greedy answers of the fp32 transformers model under the contract (the baseline), in batches.

    Prompts are sorted by token count, so a batch pads little. Rows of a batch finish together, so
    none has a latency of its own: each row's seconds are its batch's wall time (re-answered
    near-ties included) divided by the batch's rows.
    """
    from packager.verify.hf_greedy import Continuation, greedy_continuations  # torch, only where it runs

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def encode(prompt: str) -> list[int]:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return prompt_ids(contract, ids)

    def stopped(tokens: list[int]) -> bool:
        return _stop_index(tokenizer.decode(tokens), contract.stop_strings) >= 0

    def answer(prompts: list[list[int]]) -> list[Continuation]:
        return greedy_continuations(model, prompts, contract.max_new_tokens, contract.eos_ids, stopped, pad_id)

    def generate(prompts: Sequence[str]) -> list[Reply]:
        ids = [encode(p) for p in prompts]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        replies: list[Reply] = [("", 0, 0.0)] * len(ids)
        for batch in _batches(order, [len(i) for i in ids], batch_rows, batch_tokens):
            start = time.perf_counter()
            found = answer([ids[i] for i in batch])
            found = [answer([ids[i]])[0] if len(batch) > 1 and c.margin < near_tie else c
                     for i, c in zip(batch, found, strict=True)]
            seconds = (time.perf_counter() - start) / len(batch)
            for i, c in zip(batch, found, strict=True):
                replies[i] = (tokenizer.decode(c.tokens), len(c.tokens), seconds)
        return replies

    return generate


def prompt_ids(contract: Contract, ids: list[int]) -> list[int]:
    """The token ids a runtime is fed for a rendered prompt's ids: BOS first when the contract adds it."""
    return [contract.bos_id, *ids] if contract.add_bos and contract.bos_id is not None else ids


def answer_from_tokens(contract: Contract, tokens: Iterator[int], detokenize: Callable[[list[int]], str]) -> tuple[
        str, int]:
    """The answer text and its token count: tokens are taken until an eos id (left out), max_new_tokens, a stop
    string, or the end of `tokens` (a runtime whose context is full ends it).

    The text is decoded from all the answer's token ids at once: a character split over byte tokens is
    whole only once its bytes are joined. No token is asked for after the answer is complete, so a
    runtime that computes a token per request does no work the mobile bridges would not do.
    """
    out: list[int] = []
    text = ""
    for tok in tokens:
        if tok in contract.eos_ids:
            break
        out.append(tok)
        text = detokenize(out)
        if len(out) >= contract.max_new_tokens or _stop_index(text, contract.stop_strings) >= 0:
            break
    return text, len(out)


def token_generator(contract: Contract, encode: Callable[[str], list[int]],
                    next_tokens: Callable[[list[int]], Iterator[int]],
                    detokenize: Callable[[list[int]], str]) -> Generator:
    """Greedy answers of a runtime driven token by token under the contract (one loop for every such runtime).

    `encode` gives a rendered prompt's token ids without BOS; `next_tokens(ids)` yields the runtime's tokens
    after ids, one at a time; a row's seconds are its whole answer's wall time, prompt included.
    """
    def generate(prompt: str) -> Reply:
        start = time.perf_counter()
        text, n = answer_from_tokens(contract, next_tokens(prompt_ids(contract, encode(prompt))), detokenize)
        return text, n, time.perf_counter() - start

    return generate


def llama_cpp_generator(llm, contract: Contract, constrained: bool = False) -> Generator:
    """Greedy generation in llama.cpp under the contract; with `constrained`, labels become a GBNF grammar.

    Each row reuses the KV cache of the prompt prefix it shares with the previous one (as llama-server's
    cache_prompt and llama.rn do), and the grammar is asked about the greedy token before it filters the
    whole vocabulary (as llama.cpp's common sampler does): the same tokens as a grammar over every token.
    """
    import llama_cpp

    grammar = None
    if constrained and contract.task == "labels" and contract.labels:
        grammar = GrammarGreedy(llm, labels_grammar(contract.labels))

    def next_tokens(ids: list[int]) -> Iterator[int]:
        """Yield greedy tokens after ids, under the grammar when there is one."""
        if grammar is not None:
            grammar.reset()
        eval_reusing_prefix(llm, ids)
        while True:
            logits = last_logits(llm)
            tok = grammar.choose(logits) if grammar is not None else int(np.argmax(logits))
            if grammar is not None:
                # A complete label admits any end-of-generation token, also one the contract does not list;
                # asking the grammar past it would find no token it allows.
                if llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok):
                    return
                grammar.accept(tok)
            yield tok
            llm.eval([tok])

    def encode(prompt: str) -> list[int]:
        return llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)

    # Invalid bytes are shown as U+FFFD: create_completion decoded with errors="ignore", which hid that
    # llama.cpp's grammar admits overlong UTF-8 (F0 86 9D B1 matched "東" of "東京" while "🦙" kept F0
    # open): its " 京" looked almost right, the truth is " \ufffd\ufffd\ufffd\ufffd京".
    return token_generator(contract, encode, next_tokens,
                           lambda out: llm.detokenize(out).decode("utf-8", errors="replace"))
