"""The context a build sets its runtimes up for, when the user does not say.

A static KV cache costs memory on the device and time in every step of a .pte or Core ML model
(their attention covers the whole cache), so a narrow task should not ship 4096 slots for prompts
of 70 tokens. When the eval set bounds the task, the context is twice the longest prompt plus its
answer, rounded up to a power of two, at least MIN_CONTEXT, and never shorter than a golden
sequence (verification compares the same positions at any context). Without an eval set nothing
bounds the prompts, and the general default holds. --context-length always wins; the model's
trained length caps every choice (Checkpoint.usable_context).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_CONTEXT = 4096
MIN_CONTEXT = 512
HEADROOM = 2  # prompts a little longer than the eval set's still fit
MAX_PREFILL_CHUNK = 256  # tokens per call of a static-shape runtime (prefill_chunk)


@dataclass(frozen=True)
class ContextChoice:
    """A context length and why it was chosen (for the report)."""

    tokens: int
    reason: str


def _power_of_two_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def context_for_task(longest_prompt: int, max_new_tokens: int, longest_golden: int) -> ContextChoice:
    """The context a task with these prompt and answer lengths needs, with headroom."""
    task = longest_prompt + max_new_tokens
    tokens = max(MIN_CONTEXT, _power_of_two_at_least(HEADROOM * task), _power_of_two_at_least(longest_golden))
    return ContextChoice(tokens, f"sized from the contract: longest eval prompt {longest_prompt} tokens + "
                                 f"{max_new_tokens} new tokens, x{HEADROOM} headroom, a power of two, at least "
                                 f"{MIN_CONTEXT} (--context-length to choose another)")


def prefill_chunk(context_tokens: int) -> int:
    """The most prompt tokens a static-shape runtime (an exported program with planned memory) takes in one call.

    Such runtimes plan memory for their longest call, and the logits alone are chunk x vocabulary
    floats: 4,095 positions of Gemma's 262,144-token vocabulary are 4.3 GB, held by the app on the
    phone and by the verification here. A quarter of the context (at least 32, at most 256, never
    the whole context) keeps a task's prompts to a call or two; a longer prompt is fed in chunks.
    """
    return min(context_tokens - 1, max(32, min(MAX_PREFILL_CHUNK, context_tokens // 4)))
