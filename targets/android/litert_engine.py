"""Running a .litertlm in LiteRT-LM's engine on this host's CPU: what the Android app's Engine runs.

Runs as a child process (`python -m targets.android.litert_engine REQUEST RESULT`): a malformed
bundle (a SentencePiece conversion of the tokenizer, for one) aborts the whole process from native
code, which the parent then reports as a failed verification instead of dying with it.

The engine takes text, not token ids: the prompt is the contract's rendered text (no BOS), the
engine prepends the bundle's start token itself, and its prefill count is compared with the
contract's ids (one BOS, never two). Greedy decoding is top_k=1. Labels and JSON schemas are
decoded under the engine's own constraint (the Conversation API with the LL_GUIDANCE provider), with
a chat template that passes the rendered prompt through verbatim. The constraint arrives as a response
format, {"type": "regex" | "json", "schema_or_pattern": text}: the type names LiteRT-LM's factory in both
its Python and Kotlin APIs (`ResponseFormat.regex` / `ResponseFormat.json`), so the Android bridge applies
the very text verified here (edgepack.json's `response_format`). A labels row whose unconstrained answer is
already a whole label skips that conversation (`settled_unconstrained`): the constrained one would say the same.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from packager.child_stage import serve_request
from packager.stop_strings import cut_at_stop

# Renders the last message's text as is: the contract has already rendered the prompt (the engine's
# messages carry a string or a list of {"type": "text", "text": ...} parts).
VERBATIM_TEMPLATE = ("{%- set c = messages[-1]['content'] -%}{%- if c is string -%}{{ c }}{%- else -%}"
                     "{%- for p in c -%}{{ p['text'] }}{%- endfor -%}{%- endif -%}")


def label_pattern(labels: list[str]) -> str:
    """The regex the engine constrains a labels task to: one label, after an optional space (as labels_grammar).

    The space may also be U+2581: LiteRT-LM's LL_GUIDANCE provider sees Gemma's space-prefixed tokens as
    "\u2581label" (SentencePiece's space mark), so " ?" alone masked them and forced the label through
    other tokens. Measured on the bundled example's fp32 bundle: 3 rows the engine answered right
    unconstrained came out as other labels (e.g. "wipe my data" -> reset_password), task 0.787 vs fp32's
    0.926; with the mark allowed the constrained answers equal the unconstrained ones, and the engine's
    text carries a plain space.
    """
    return "[ \u2581]?(" + "|".join(re.escape(label) for label in labels) + ")"


# A response format's types: each is the name of LiteRT-LM's ResponseFormat factory that takes its
# schema_or_pattern, in the Python API here and in the Kotlin one the Android bridge calls.
RESPONSE_FORMAT_TYPES = ("regex", "json")


def labels_response_format(labels: list[str]) -> dict[str, str]:
    """The response format of a labels contract: label_pattern as a regex."""
    return {"type": "regex", "schema_or_pattern": label_pattern(labels)}


def json_response_format(schema: dict[str, Any]) -> dict[str, str]:
    """The response format of a JSON-schema contract: the schema as the text ResponseFormat.json(dict) makes of it."""
    return {"type": "json", "schema_or_pattern": json.dumps(schema)}


class EngineRunner:
    """One LiteRT-LM Engine (CPU) over a bundle, answering prompts greedily."""

    def __init__(self, bundle: Path, cache_dir: Path, threads: int) -> None:
        import litert_lm

        self.lm = litert_lm
        cache_dir.mkdir(parents=True, exist_ok=True)  # the engine refuses a cache dir that does not exist
        self.engine = litert_lm.Engine(str(bundle), backend=litert_lm.Backend.CPU(thread_count=threads),
                                       cache_dir=str(cache_dir), enable_benchmark=True)

    def greedy(self, prompt: str, max_tokens: int) -> dict[str, Any]:
        """Answer with the Session API (no template): text, token counts, seconds."""
        lm = self.lm
        start = time.perf_counter()
        session = self.engine.create_session(apply_prompt_template=False, sampler_config=lm.SamplerConfig(top_k=1),
                                             max_output_tokens=max_tokens)
        try:
            session.run_prefill([prompt])
            text = "".join(session.run_decode().texts[:1])
            seconds = time.perf_counter() - start
            info = session.get_benchmark_info()
        finally:
            session.close()
        return {"text": text, "prefill_tokens": info.last_prefill_token_count,
                "tokens": info.last_decode_token_count, "seconds": seconds,
                "decode_tokens_per_s": info.last_decode_tokens_per_second}

    def constrained(self, prompt: str, max_tokens: int, constraint: dict[str, Any]) -> dict[str, Any]:
        """Answer under the constraint's response format (Conversation API, LL_GUIDANCE)."""
        lm = self.lm
        response_format = constraint["response_format"]
        if response_format["type"] not in RESPONSE_FORMAT_TYPES:
            raise ValueError(f"unknown response format type {response_format['type']!r}")
        fmt = getattr(lm.ResponseFormat, response_format["type"])(response_format["schema_or_pattern"])
        start = time.perf_counter()
        conversation = self.engine.create_conversation(
            sampler_config=lm.SamplerConfig(top_k=1), chat_template=VERBATIM_TEMPLATE, max_output_tokens=max_tokens,
            constrained_decoding_config=lm.ConstrainedDecodingConfig(
                provider=lm.LiteRtLmConstraintProviderType.LL_GUIDANCE))
        try:
            message = conversation.send_message(prompt, response_format=fmt)
            seconds = time.perf_counter() - start
            info = conversation.get_benchmark_info()
        finally:
            conversation.close()
        text = "".join(getattr(part, "text", "") for part in message.contents)
        return {"text": text, "prefill_tokens": info.last_prefill_token_count,
                "tokens": info.last_decode_token_count, "seconds": seconds,
                "decode_tokens_per_s": info.last_decode_tokens_per_second}


def settled_unconstrained(text: str, constraint: dict[str, Any]) -> bool:
    """Whether an unconstrained greedy answer is what the constrained decode would return, without running it.

    For a labels regex whose labels are prefix-free: constrained greedy decoding takes the argmax among the
    tokens the pattern admits, so while every token of the free answer is admitted it picks the same one; once
    a whole label is out nothing but the end can follow. So a free answer that (cut at the first stop string)
    is a whole label is the constrained answer. Measured on the bundled example's int8 bundle: 108 of 108 rows
    equal; each constrained conversation costs about 0.95 s of set-up in LiteRT-LM 0.18.1 (its LL_GUIDANCE
    state is built per conversation) against 0.12 s for the answer itself.
    """
    response_format = constraint.get("response_format") or {}
    if not constraint.get("prefix_free") or response_format.get("type") != "regex":
        return False
    return re.fullmatch(response_format["schema_or_pattern"],
                        cut_at_stop(text, constraint.get("stop_strings", []))) is not None


def run(request: dict[str, Any]) -> dict[str, Any]:
    """Answer the request's probe, greedy prompt and eval prompts; return what the engine said and did."""
    runner = EngineRunner(Path(request["bundle"]), Path(request["cache_dir"]), int(request["threads"]))
    engine = runner.engine
    result: dict[str, Any] = {
        "bos_token_id": engine.bos_token_id,
        "stop_token_ids": engine.eos_token_ids,
        "probe_ids": engine.tokenize(request["probe"]),
        "prompt_ids": [engine.tokenize(p) for p in request["prompts"]],
        "greedy": runner.greedy(request["greedy_prompt"], int(request["greedy_tokens"])),
    }
    constraint = request.get("constraint")
    answers = []
    error = ""
    for prompt in request["prompts"]:
        if constraint and not error:
            free = runner.greedy(prompt, int(request["max_new_tokens"])) if constraint.get("prefix_free") else None
            if free is not None and settled_unconstrained(free["text"], constraint):
                answers.append({**free, "constrained": True, "settled_unconstrained": True})
                continue
            try:
                answers.append({**runner.constrained(prompt, int(request["max_new_tokens"]), constraint),
                                "constrained": True})
                continue
            except (RuntimeError, ValueError) as exc:  # the engine could not apply it: answer unconstrained
                error = f"{type(exc).__name__}: {exc}"
        answers.append({**runner.greedy(prompt, int(request["max_new_tokens"])), "constrained": False})
    result["answers"] = answers
    result["constraint_error"] = error
    return result


def main(argv: list[str] | None = None) -> int:
    """Child-process entry (packager.child_stage): engine request in, what the engine said out."""
    return serve_request(__doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    sys.exit(main())
