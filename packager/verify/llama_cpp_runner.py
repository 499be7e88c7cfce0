"""Running a GGUF in llama.cpp (through llama-cpp-python): logits, tokens, greedy text, speed."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from packager.threads import compute_threads


def last_logits(llm) -> np.ndarray:
    """Logits of the last evaluated token, read from the context (llm.scores is only filled with logits_all)."""
    import llama_cpp

    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


class GGUFRunner:
    """One llama.cpp context over a GGUF file, sized for the texts it will see."""

    def __init__(self, path: Path, n_ctx: int = 1024, logits_all: bool = True, n_threads: int | None = None,
                 lora: Path | None = None) -> None:
        """`lora`: a GGUF LoRA adapter llama.cpp applies to the model at run time (scale 1)."""
        import llama_cpp

        self.path = path
        threads = n_threads or compute_threads()  # a fixed count makes speed comparable with another runtime
        self.llm = llama_cpp.Llama(
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
