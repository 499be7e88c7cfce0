"""Verifying a .pte at the `executed` level: ExecuTorch's own runtimes run it on this host.

Two runtimes, each for what it exposes:

- `executorch.runtime` (Python binding of ExecuTorch's Program/Method API) executes the program's
  `forward` method, giving the logits at every golden position and an exact greedy token sequence;
  the LLM runner does not expose logits.
- `executorch.extension.llm.runner.TextLLMRunner`, the C++ text runner that Android's LlmModule
  drives, loads the .pte + .ptd + tokenizer.json the way the phone does (its own tokenizer, BOS
  count, eos ids from the program's metadata) and gives the greedy text, the decode speed, and the
  eval-set answers.

Both processes-worth of native code print to stdout; a build's stdout may be JSON (--json), so
their output is captured while they run.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from packager.contract import Contract
from packager.threads import compute_threads
from packager.verify.child_verify import Verified, VerifyInputs, serve_verification
from packager.verify.compare import compare_token_ids, first_difference, golden_fidelity, tokenizer_probe_text
from packager.verify.gates import Gate, gate_from_dict
from packager.verify.golden import GoldenSet
from packager.verify.reference import ReferenceLogits
from packager.verify.result import VerificationResult
from packager.verify.task_eval import Generator, score

if TYPE_CHECKING:
    from packager.adapter import AdapterSource


@contextlib.contextmanager
def native_output_captured() -> Iterator[Path]:
    """Send file descriptors 1 and 2 to a temporary file while native code runs (yields its path)."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.NamedTemporaryFile(prefix="edgepack-executorch-", suffix=".log", delete=False) as log:
        path = Path(log.name)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield path
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _tail(log: Path, lines: int = 12) -> str:
    try:
        return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    finally:
        log.unlink(missing_ok=True)


def runtime_name() -> str:
    from executorch.version import __version__

    return f"ExecuTorch {__version__} (TextLLMRunner + executorch.runtime, XNNPACK)"


def load_kernels() -> None:
    """Register ExecuTorch's quantized kernels (embedding_byte/4bit) and its LLM kernels (the fused cache
    update and SDPA) in this process, as the runner needs, and size its thread pool (one per process, shared
    by executorch.runtime and TextLLMRunner) to this computation's share of the cores (packager.threads).
    Resizing is safe here: in-process steps run one at a time."""
    import executorch.kernels.quantized  # noqa: F401
    from executorch.extension.pybindings import portable_lib

    from targets.android.fused_attention import load_ops

    load_ops()
    threads = compute_threads()
    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)


class PteProgram:
    """The .pte's forward method in executorch.runtime: logits and exact greedy ids."""

    def __init__(self, pte: Path, ptd: Path | None) -> None:
        import torch
        from executorch.runtime import Runtime

        load_kernels()
        self._torch = torch
        with native_output_captured() as log:  # XNNPACK's cpuinfo notes on stderr
            self.program = Runtime.get().load_program(pte, data_path=str(ptd) if ptd else None)
            self.forward = self.program.load_method("forward")
        log.unlink(missing_ok=True)
        self.max_seq_len = int(self.constant("get_max_seq_len"))

    def constant(self, name: str) -> Any:
        values = self.program.load_method(name).execute([])
        return values[0] if len(values) == 1 else list(values)

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits at every position of ids, fed in chunks of at most max_seq_len (positions x vocab)."""
        torch = self._torch
        parts = []
        for start in range(0, len(ids), self.max_seq_len):
            chunk = ids[start:start + self.max_seq_len]
            out = self.forward.execute([torch.tensor([chunk], dtype=torch.long),
                                        torch.arange(start, start + len(chunk), dtype=torch.long)])
            parts.append(np.array(out[0][0].numpy(), dtype=np.float32, copy=True))
        return np.concatenate(parts)

    def greedy(self, prompt_ids: list[int], n: int, eos_ids: list[int]) -> list[int]:
        """Greedy continuation (argmax each step, stop after an eos id), like the reference's."""
        torch = self._torch
        last = self.logits(prompt_ids)[-1]
        pos = len(prompt_ids)
        out: list[int] = []
        for _ in range(n):
            tok = int(np.argmax(last))
            out.append(tok)
            if tok in eos_ids:
                break
            step = self.forward.execute([torch.tensor([[tok]], dtype=torch.long),
                                         torch.tensor([pos], dtype=torch.long)])
            last = np.array(step[0][0][-1].numpy(), copy=True)
            pos += 1
        return out


class RunnerTokenizer:
    """The C++ Hugging Face tokenizer ExecuTorch's runner loads from tokenizer.json (pytorch_tokenizers)."""

    def __init__(self, tokenizer_json: Path) -> None:
        from pytorch_tokenizers import CppHFTokenizer

        self.tok = CppHFTokenizer()
        with native_output_captured() as log:  # the C++ tokenizer logs its regex fallback to stdout
            self.tok.load(str(tokenizer_json))
        log.unlink(missing_ok=True)

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, 0, 0))

    @property
    def bos_id(self) -> int:
        return int(self.tok.bos_tok())

    def piece(self, token: int) -> str:
        """The text the runner streams for one token (special tokens included, as the runner sends them); a
        marker for an id beyond tokenizer.json (a model's table is often padded past its tokenizer: Gemma 3 4B's
        262,208 rows over 262,144 tokens), where the runner itself stops with a decode error, and U+FFFD for a
        byte-level piece that is part of a UTF-8 character (the binding hands back only whole strings)."""
        try:
            return str(self.tok.decode(token, False))
        except UnicodeDecodeError:
            return "\ufffd"
        except RuntimeError:
            return f"<token {token}: not in tokenizer.json>"

    def text(self, ids: list[int]) -> str:
        """Concatenated pieces, as the runner streams them to its callback."""
        return "".join(self.piece(tok) for tok in ids)


def eos_pieces(tokenizer: RunnerTokenizer, eos_ids: list[int]) -> list[str]:
    """The text the runner sends to its callback for each eos token (before it stops)."""
    return sorted({tokenizer.piece(i) for i in eos_ids})


class RunnerSession:
    """TextLLMRunner over the .pte + .ptd + tokenizer.json: what Android's LlmModule runs."""

    def __init__(self, pte: Path, ptd: Path | None, tokenizer_json: Path, num_bos: int, max_context: int,
                 stop_pieces: list[str]) -> None:
        from executorch.extension.llm.runner import TextLLMRunner

        load_kernels()
        with native_output_captured() as log:
            try:
                self.runner = TextLLMRunner(str(pte), str(tokenizer_json), str(ptd) if ptd else None)
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}\n{_tail(log)}") from None
        log.unlink(missing_ok=True)
        self.num_bos = num_bos
        self.max_context = max_context
        self.stop_pieces = stop_pieces

    def generate(self, prompt: str, max_new_tokens: int, stop_strings: list[str]) -> tuple[str, int, float, Any]:
        """Greedy generation the way the Kotlin bridge drives LlmModule; returns (text, tokens, seconds, stats).

        Like EdgeModel.generateOn: reset the context, generate with seq_len = the context, count
        pieces and call stop() at max_new_tokens or a stop string, and leave an eos piece out.
        """
        from executorch.extension.llm.runner import GenerationConfig

        pieces: list[str] = []
        stats: list[Any] = []
        state = {"done": False}

        def on_piece(piece: str) -> None:
            if state["done"]:
                return
            if piece in self.stop_pieces:
                state["done"] = True
                return
            pieces.append(piece)
            text = "".join(pieces)
            if len(pieces) >= max_new_tokens or any(s and s in text for s in stop_strings):
                state["done"] = True
                self.runner.stop()

        config = GenerationConfig(echo=False, seq_len=self.max_context, temperature=0.0, num_bos=self.num_bos)
        with native_output_captured() as log:
            start = time.perf_counter()
            try:
                self.runner.reset()
                self.runner.generate(prompt, config, on_piece, stats.append)
            except UnicodeDecodeError:
                # A token that is part of a multi-byte character reaches Python's callback undecodable
                # (Android's JNI layer buffers such bytes until the character is complete); the answer
                # ends there, which a contract check then reports.
                pieces.append("\ufffd")
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}\n{_tail(log)}") from None
            seconds = time.perf_counter() - start
        log.unlink(missing_ok=True)
        return "".join(pieces), len(pieces), seconds, (stats[-1] if stats else None)


def decode_tokens_per_s(stats: Any, tokens: int, seconds: float) -> float:
    """Decode speed from the runner's stats (tokens after the first over the time after prefill)."""
    if stats is not None:
        span_ms = stats.inference_end_ms - stats.prompt_eval_end_ms
        if span_ms > 0 and stats.num_generated_tokens > 0:
            return stats.num_generated_tokens * 1000.0 / span_ms
    return tokens / seconds if seconds > 0 else 0.0


def pte_generator(session: RunnerSession, contract: Contract) -> Generator:
    """Answer eval rows with the .pte in TextLLMRunner, under the contract (greedy, no grammar: the runner has none)."""

    def generate(prompt: str) -> tuple[str, int, float]:
        text, tokens, seconds, _ = session.generate(prompt, contract.max_new_tokens, contract.stop_strings)
        return text, tokens, seconds

    return generate


def check_runner_tokenizer(tokenizer: RunnerTokenizer, hf_tokenizer: Any, probe: str, contract: Contract) -> tuple[
        bool, str]:
    """Compare the runner's token ids (and BOS) with HF's; return (equal, detail)."""
    hf_ids = hf_tokenizer(probe, add_special_tokens=False)["input_ids"]
    runner_ids = tokenizer.encode(probe)
    if contract.add_bos and contract.bos_id is not None and tokenizer.bos_id != contract.bos_id:
        return False, (f"the runner would prepend token {tokenizer.bos_id} as BOS, the model expects {contract.bos_id} "
                       "(tokenizer.json's BOS differs from tokenizer_config.json's)")
    return compare_token_ids(hf_ids, runner_ids, "runner")


def verify_pte(
    pte: Path,
    ptd: Path | None,
    tokenizer_json: Path,
    artifact: str,
    recipe: str,
    gate: Gate,
    reference: ReferenceLogits,
    golden: GoldenSet,
    contract: Contract,
    hf_tokenizer: Any,
) -> VerificationResult:
    """Run the .pte on the golden text (logits vs the fp32 reference) and in the LLM runner (greedy text, speed)."""
    program = PteProgram(pte, ptd)
    max_context = int(program.constant("get_max_context_len"))
    acc, truncated = golden_fidelity(reference, program.logits, max_context)  # the KV cache holds max_context
    metrics = acc.result()
    n_greedy = len(reference.greedy_ids) or 24
    greedy_ids = program.greedy(reference.greedy_prompt_ids, n_greedy, contract.eos_ids)
    del program

    tokenizer = RunnerTokenizer(tokenizer_json)
    special = sorted(set(hf_tokenizer.all_special_tokens) | set(contract.stop_strings))
    parity, detail = check_runner_tokenizer(tokenizer, hf_tokenizer, tokenizer_probe_text(golden, special), contract)
    num_bos = 1 if contract.add_bos and contract.bos_id is not None else 0
    session = RunnerSession(pte, ptd, tokenizer_json, num_bos, max_context, stop_pieces=[])
    text, tokens, seconds, stats = session.generate(golden.greedy_prompt, n_greedy, [])
    ref_text = tokenizer.text(reference.greedy_ids)
    failures = gate.check(metrics)
    if not parity:
        failures.append(f"runner tokenizer differs from HF: {detail}")
    notes = [
        "logits and exact greedy ids: the .pte's forward method in executorch.runtime; greedy text, speed and "
        "eval answers: ExecuTorch's C++ TextLLMRunner (the runner Android's LlmModule drives) on this host's CPU",
    ]
    if truncated:
        notes.append(f"{truncated} golden positions beyond the {max_context}-token context were not compared")
    prompt_tokens = getattr(stats, "num_prompt_tokens", None)
    if prompt_tokens is not None and prompt_tokens != len(reference.greedy_prompt_ids):
        failures.append(f"the runner turned the greedy prompt into {prompt_tokens} tokens (BOS {num_bos}), "
                        f"the reference into {len(reference.greedy_prompt_ids)}")
    if greedy_ids != reference.greedy_ids:
        same = first_difference(greedy_ids, reference.greedy_ids)
        if same is None:
            same = min(len(greedy_ids), len(reference.greedy_ids))
        notes.append(f"forward-method greedy ids differ from the reference after {same} tokens")
    return VerificationResult(
        artifact=artifact,
        format="pte",
        quant=recipe,
        level="executed",
        runtime=runtime_name(),
        metrics=metrics,
        tokenizer_parity=parity,
        tokenizer_detail=detail,
        greedy_match=text == ref_text,
        greedy_text_reference=ref_text,
        greedy_text=text,
        tokens_per_s=decode_tokens_per_s(stats, tokens, seconds),
        gate=gate.describe(),
        failures=failures,
        notes=notes,
    )


def verify_and_answer(pte: Path, ptd: Path | None, tokenizer_json: Path, artifact: str, recipe: str, gate: Gate,
                      inputs: VerifyInputs, max_context: int) -> Verified:
    """verify_pte and, with an eval set, TextLLMRunner's answers to every row: (result, task metrics).
    Runs in a child process during a build (targets.android.stages.verified_pte)."""
    hf_tokenizer = inputs.hf_tokenizer()
    contract = inputs.contract
    result = verify_pte(pte, ptd, tokenizer_json, artifact, recipe, gate, inputs.reference, inputs.golden, contract,
                        hf_tokenizer)
    if not inputs.eval_rows:
        return result, None
    session = RunnerSession(pte, ptd, tokenizer_json, 1 if contract.add_bos and contract.bos_id is not None else 0,
                            max_context, eos_pieces(RunnerTokenizer(tokenizer_json), contract.eos_ids))
    metrics, _ = score(contract, inputs.eval_rows, pte_generator(session, contract), inputs.baseline, False)
    if contract.constrained:
        result.notes.append("ExecuTorch's runner has no grammar: labels are decoded unconstrained on Android")
    return result, metrics


def _serve(request: dict[str, Any]) -> Verified:
    return verify_and_answer(Path(request["pte"]), Path(request["ptd"]) if request["ptd"] else None,
                             Path(request["tokenizer_json"]), request["artifact"], request["recipe"],
                             gate_from_dict(request["gate"]), VerifyInputs.from_dict(request["inputs"]),
                             request["max_context"])


def verify_structural(pte: Path, ptd: Path | None, artifact: str, recipe: str, backend_id: str,
                      reference_metadata: dict[str, Any]) -> VerificationResult:
    """What can be checked of a delegate this host cannot run: the program loads, its metadata, its delegate."""
    from executorch.runtime import Runtime

    load_kernels()
    failures: list[str] = []
    notes = [f"{backend_id} cannot run on this host (no such device); nothing executed"]
    blob = pte.read_bytes()
    if backend_id.encode() not in blob:
        failures.append(f"{pte.name} holds no {backend_id} delegate")
    with native_output_captured() as log:
        program = Runtime.get().load_program(pte, data_path=str(ptd) if ptd else None)
        methods = set(program.method_names)
        found = {name: program.load_method(name).execute([]) for name in ("get_max_seq_len", "get_eos_ids")
                 if name in methods}
        try:
            program.load_method("forward")
            notes.append("forward loaded on this host (the delegate fell back or was not used)")
        except RuntimeError as exc:
            notes.append(f"forward does not load on this host, as expected: {str(exc)[:120]}")
    log.unlink(missing_ok=True)
    if "forward" not in methods:
        failures.append("no forward method")
    for name, value in found.items():
        expected = reference_metadata.get(name)
        if expected is not None and list(value) != (expected if isinstance(expected, list) else [expected]):
            failures.append(f"{name} is {list(value)}, the XNNPACK .pte says {expected}")
    return VerificationResult(artifact=artifact, format="pte", quant=recipe, level="structural",
                              runtime=f"ExecuTorch program loader ({backend_id} not runnable here)",
                              gate="structural: loads, metadata equal to the XNNPACK .pte, delegate present",
                              failures=failures, notes=notes)


def eager_quantized_model(folder: Path, spec: Any, recipe: Any, adapter: AdapterSource | None = None) -> Any:
    """The recipe's quantized model in eager PyTorch, doing the arithmetic the exported .pte does (an adapter
    recipe's LoRA apart, read from `adapter`).

    Each quantized weight is dequantized once and each quantized linear's input goes through
    torchao's own int8 per-token quantize-dequantize, the arithmetic XNNPACK's 8da kernels perform;
    on the tiny and real Gemma checkpoints the exported .pte agreed with it to a few 1e-2 in logits.
    """
    import torch
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
        IntxUnpackedToInt8Tensor,
        _apply_int8_act_asym_per_token_quant_dequant,
    )

    from packager.adapted_linear import AdaptedLinear
    from packager.verify.fp32_model import load_fp32_whole
    from targets.android.export import apply_adapter_apart, quantize_model
    from targets.android.layouts import executorch_layout

    model = load_fp32_whole(folder, "sdpa")
    if recipe.adapter:
        apply_adapter_apart(model, recipe, adapter)
    quantize_model(model, spec, recipe, folder)
    if recipe.embedding is not None:
        model.get_submodule(executorch_layout(spec).embedding_module).gather_first = True
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and isinstance(module.weight, IntxUnpackedToInt8Tensor):
            module.weight = torch.nn.Parameter(module.weight.dequantize(), requires_grad=False)
            if isinstance(module, AdaptedLinear):  # the 8da kernel quantizes its own input, not the adapter's
                module.base_input = _apply_int8_act_asym_per_token_quant_dequant
            else:
                module.register_forward_pre_hook(
                    lambda _m, args: (_apply_int8_act_asym_per_token_quant_dequant(args[0]), *args[1:]))
    return model


def main(argv: list[str] | None = None) -> int:
    """Child-process entry (packager.verify.child_verify): a .pte's verification request in, its result out."""
    return serve_verification(__doc__.splitlines()[0], _serve, argv)


if __name__ == "__main__":
    sys.exit(main())
