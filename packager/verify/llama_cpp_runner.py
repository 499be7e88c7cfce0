"""Running a GGUF in llama.cpp (through llama-cpp-python): logits, tokens, greedy text, speed."""

from __future__ import annotations

import ctypes
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from packager.threads import compute_threads


def last_logits(llm) -> np.ndarray:
    """Logits of the last evaluated token, read from the context (llm.scores is only filled with logits_all)."""
    import llama_cpp

    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def eval_reusing_prefix(llm, ids: list[int]) -> None:
    """Evaluate ids in llm, keeping the KV cache of the prefix they share with what it last evaluated.

    As llama-cpp-python's own generate() and llama-server's cache_prompt do: a task's rows share their
    instruction, so only each row's own tokens are evaluated. At least the last id is evaluated again,
    so the context's logits are those of ids. Falls back to the whole of ids where llama.cpp cannot cut
    the cache (a recurrent model).
    """
    done = llm.input_ids[: llm.n_tokens]
    shared = 0
    for a, b in zip(done, ids, strict=False):
        if a != b:
            break
        shared += 1
    shared = min(shared, len(ids) - 1)
    if shared > 0 and llm._ctx.kv_cache_seq_rm(-1, shared, -1):
        llm.n_tokens = shared
        llm.eval(ids[shared:])
        return
    llm.reset()
    llm.eval(ids)


# llama.cpp's llama_token_data, as llama-cpp-python lays it out.
_TOKEN_DATA = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)


class GrammarGreedy:
    """Greedy decoding under a GBNF grammar with llama.cpp's grammar sampler, asked the cheap question first.

    The greedy token under a grammar is the best token the grammar allows. llama-cpp-python's sampler chain
    runs the grammar over the whole vocabulary at every step (262,144 tokens for Gemma: 37 % of a row's time
    measured on Gemma 3 270M); llama.cpp's own common sampler first asks whether the unconstrained best
    token is allowed and filters the vocabulary only when it is not. This does the same: the same token.
    """

    def __init__(self, llm, grammar: str) -> None:
        import llama_cpp

        self._api = llama_cpp
        self._sampler = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, grammar.encode("utf-8"), b"root")
        if not self._sampler:
            raise ValueError(f"llama.cpp rejected the grammar: {grammar!r}")
        self.close = weakref.finalize(self, llama_cpp.llama_sampler_free, self._sampler)
        self._all = np.zeros(llm.n_vocab(), dtype=_TOKEN_DATA)
        self._all["id"] = np.arange(llm.n_vocab())
        self._one = np.zeros(1, dtype=_TOKEN_DATA)

    def _apply(self, data: np.ndarray) -> None:
        api = self._api
        array = api.llama_token_data_array(
            data=data.ctypes.data_as(api.llama_token_data_p), size=len(data), selected=-1, sorted=False)
        api.llama_sampler_apply(self._sampler, ctypes.byref(array))

    def choose(self, logits: np.ndarray) -> int:
        """The best token the grammar allows next (llama.cpp's grammar turns the others' logits to -inf)."""
        best = int(np.argmax(logits))
        self._one[0] = (best, logits[best], 0.0)
        self._apply(self._one)
        if np.isfinite(self._one["logit"][0]):
            return best
        self._all["logit"] = logits
        self._all["p"] = 0.0
        self._apply(self._all)
        chosen = int(np.argmax(self._all["logit"]))
        if not np.isfinite(self._all["logit"][chosen]):
            raise ValueError("the grammar allows no token here (an answer it cannot end)")
        return chosen

    def accept(self, token: int) -> None:
        self._api.llama_sampler_accept(self._sampler, token)

    def reset(self) -> None:
        self._api.llama_sampler_reset(self._sampler)


# llama-cpp-python quiets a model's load by swapping sys.stdout and fds 1 and 2 for /dev/null and back
# (llama_cpp._utils.suppress_stdout_stderr). Two loads in two threads at once each put back what the other had
# swapped in, leaving the process's stdout on a closed /dev/null: a cold fleet build lost its final tables so.
_LOADING = threading.Lock()


def load_llama(**kwargs: Any) -> Any:
    """llama_cpp.Llama(**kwargs), one load at a time in this process."""
    import llama_cpp

    with _LOADING:
        return llama_cpp.Llama(**kwargs)


class GGUFRunner:
    """One llama.cpp context over a GGUF file, sized for the texts it will see."""

    def __init__(self, path: Path, n_ctx: int = 1024, logits_all: bool = True, n_threads: int | None = None,
                 lora: Path | None = None) -> None:
        """`lora`: a GGUF LoRA adapter llama.cpp applies to the model at run time (scale 1)."""
        self.path = path
        threads = n_threads or compute_threads()  # a fixed count makes speed comparable with another runtime
        self.llm = load_llama(
            model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=logits_all,
            n_threads=threads, n_threads_batch=threads, verbose=False, seed=0,
            lora_path=str(lora) if lora else None,
        )

    def close(self) -> None:
        self.llm.close()

    def logits(self, ids: list[int]) -> np.ndarray:
        """Return the logits at every position of `ids` (positions x vocab)."""
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def tokenize(self, text: str, add_bos: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def greedy(self, prompt_ids: list[int], n: int, eos_ids: list[int]) -> tuple[list[int], float]:
        """Greedy continuation; returns (tokens, decode tokens per second)."""
        self.llm.reset()
        self.llm.eval(prompt_ids)
        out: list[int] = []
        start = time.perf_counter()
        for _ in range(n):
            tok = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            out.append(tok)
            if tok in eos_ids:
                break
            self.llm.eval([tok])
        elapsed = time.perf_counter() - start
        return out, (len(out) / elapsed if elapsed > 0 else 0.0)

    def detokenize(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")
