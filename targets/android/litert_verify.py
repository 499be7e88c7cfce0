"""Verifying a .litertlm at the `executed` level: its own program, then LiteRT-LM's engine, on this host's CPU.

Two runs, each for what it exposes:

- The bundle's TFLite program (extracted byte for byte, targets.android.litert_bundle) in
  ai_edge_litert's Interpreter: its `decode` signature fed the reference's exact token ids one at a
  time gives the logits at every golden position (compared with the fp32 reference like every other
  artifact), and its `prefill_<n>` signatures take the greedy prompt before decode continues it (exact
  greedy ids). The engine gives no logits and no token-id input.
- LiteRT-LM's Engine (litert-lm-api, CPU), in a child process (targets.android.litert_engine): what the
  Android app runs. It tokenizes like HF or not, prepends one BOS or not, and answers the greedy prompt
  and the eval set (latency per row), under the engine's own constraint where the contract has one.

GPU and NPU backends cannot run here and are never claimed.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from packager.child_stage import run_child
from packager.contract import Contract, render_prompt
from packager.verify.child_verify import Verified, VerifyInputs, serve_verification
from packager.verify.compare import compare_token_ids, first_difference, golden_fidelity, tokenizer_probe_text
from packager.verify.gates import Gate, gate_from_dict
from packager.verify.golden import GoldenSet
from packager.verify.reference import ReferenceLogits
from packager.verify.result import VerificationResult
from packager.verify.task_eval import EvalRow, TaskMetrics, score
from targets.android.litert_bundle import extract_program
from targets.android.litert_engine import json_response_format, labels_response_format
from targets.android.litert_export import LITERT_LM_VERSION

# Added to the scores of cache slots a query must not see (the engine's masks are additive floats too).
MASKED = -1e9


def runtime_name() -> str:
    return f"LiteRT-LM {LITERT_LM_VERSION} engine (CPU) + ai_edge_litert Interpreter on the bundle's TFLite program"


class TflitePrefillDecode:
    """The bundle's TFLite program in ai_edge_litert's Interpreter, with its KV cache held here."""

    def __init__(self, program: Path, threads: int = 2) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(program), num_threads=threads)
        names = self.interpreter.get_signature_list()
        self.decode = self.interpreter.get_signature_runner("decode")
        inputs = self.decode.get_input_details()
        self.cache_keys = sorted(k for k in inputs if k.startswith("kv_cache"))
        self._cache_shapes = {k: (inputs[k]["shape"], inputs[k]["dtype"]) for k in self.cache_keys}
        self.cache_length = int(inputs["mask"]["shape"][-1])
        self.prefills = {int(name.split("_")[1]): self.interpreter.get_signature_runner(name)
                         for name in names if name.startswith("prefill_") and name.split("_")[1].isdigit()}
        self.reset()

    def reset(self) -> None:
        self.cache = {k: np.zeros(shape, dtype) for k, (shape, dtype) in self._cache_shapes.items()}

    def _mask(self, positions: np.ndarray) -> np.ndarray:
        visible = np.arange(self.cache_length)[None, :] <= positions[:, None]
        return np.where(visible, 0.0, MASKED).astype(np.float32)[None, None]

    def step(self, token: int, pos: int) -> np.ndarray:
        """Decode one token at `pos`; return its logits (vocab)."""
        out = self.decode(tokens=np.array([[token]], np.int32), input_pos=np.array([pos], np.int32),
                          mask=self._mask(np.array([pos])), **self.cache)
        self.cache = {k: out[k] for k in self.cache_keys}
        return np.array(out["logits"][0, -1], dtype=np.float32, copy=True)

    def prefill(self, ids: list[int], start: int = 0) -> int:
        """Write ids at positions start.. into the cache through the prefill signatures; return the next position.

        A chunk shorter than a signature is padded with token 0 at the following positions: those slots
        are written, but no later query sees them before decode overwrites them.
        """
        pos = start
        while pos - start < len(ids) and self.prefills:
            left = len(ids) - (pos - start)
            length = min((n for n in self.prefills if n >= left), default=max(self.prefills))
            if pos + length > self.cache_length:
                break
            chunk = ids[pos - start:pos - start + length]
            tokens = np.zeros((1, length), np.int32)
            tokens[0, :len(chunk)] = chunk
            positions = np.arange(pos, pos + length, dtype=np.int32)
            out = self.prefills[length](tokens=tokens, input_pos=positions, mask=self._mask(positions), **self.cache)
            self.cache = {k: out[k] for k in self.cache_keys}
            pos += len(chunk)
        for token in ids[pos - start:]:  # what the prefill signatures could not take
            self.step(token, pos)
            pos += 1
        return pos

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits at every position of ids (positions x vocab), one decode step each, from an empty cache."""
        self.reset()
        return np.stack([self.step(token, pos) for pos, token in enumerate(ids)])

    def greedy(self, prompt_ids: list[int], n: int, eos_ids: list[int]) -> list[int]:
        """Greedy continuation: the prompt but its last token through prefill, then decode (argmax, stop at eos)."""
        self.reset()
        pos = self.prefill(prompt_ids[:-1])
        last = self.step(prompt_ids[-1], pos)
        pos += 1
        out: list[int] = []
        while len(out) < n and pos < self.cache_length:
            token = int(np.argmax(last))
            out.append(token)
            if token in eos_ids:
                break
            last = self.step(token, pos)
            pos += 1
        return out


@dataclass
class EngineReport:
    """What the engine child answered (see targets.android.litert_engine.run)."""

    data: dict[str, Any]

    @property
    def answers(self) -> list[dict[str, Any]]:
        return list(self.data.get("answers", []))


def run_engine(bundle: Path, request: dict[str, Any], threads: int) -> EngineReport:
    """Run targets.android.litert_engine on the bundle in a child process."""
    with tempfile.TemporaryDirectory(prefix="edgepack-litert-engine-") as tmp:
        folder = Path(tmp)
        full = {**request, "bundle": str(bundle), "cache_dir": str(folder / "engine-cache"), "threads": threads}
        return EngineReport(run_child("targets.android.litert_engine", folder, full,
                                      f"LiteRT-LM's engine on {bundle.name}"))


def engine_constraint(contract: Contract) -> dict[str, Any] | None:
    """The constraint the engine decodes a task under when the contract asks for one (as llama.cpp's runs do):
    its response format (a labels regex or the JSON schema), which the android target also writes into
    edgepack.json for the Kotlin bridge; None for free text or an unconstrained contract."""
    if not contract.constrained:
        return None
    if contract.task == "labels" and contract.labels:
        labels = list(contract.labels)
        prefix_free = not any(a != b and b.startswith(a) for a in labels for b in labels)
        return {"response_format": labels_response_format(labels), "prefix_free": prefix_free,
                "stop_strings": list(contract.stop_strings)}
    if contract.task == "json" and contract.json_schema:
        return {"response_format": json_response_format(contract.json_schema)}
    return None


def contract_checks(contract: Contract, engine: dict[str, Any], hf_tokenizer: Any, probe: str,
                    greedy_prompt: str, metadata: dict[str, Any], cache_length: int) -> tuple[bool, str, list[str]]:
    """Tokenizer parity, BOS and stop tokens of the engine against the contract: (parity, detail, failures)."""
    failures: list[str] = []
    hf_ids = hf_tokenizer(probe, add_special_tokens=False)["input_ids"]
    parity, detail = compare_token_ids(hf_ids, list(engine["probe_ids"]), "LiteRT-LM engine")
    if not parity:
        failures.append(f"the engine's tokenizer differs from HF: {detail}")
    want_bos = contract.bos_id if contract.add_bos else None
    if engine["bos_token_id"] != want_bos:
        failures.append(f"the engine prepends {engine['bos_token_id']} as its start token, the contract wants "
                        f"{want_bos if want_bos is not None else 'none'} (add_bos={contract.add_bos})")
    prompt_ids = hf_tokenizer(greedy_prompt, add_special_tokens=False)["input_ids"]
    expected = len(prompt_ids) + (1 if want_bos is not None else 0)
    prefilled = engine["greedy"]["prefill_tokens"]
    if prefilled != expected:
        failures.append(f"the engine prefilled {prefilled} tokens for a prompt of {len(prompt_ids)} (+ BOS "
                        f"{int(want_bos is not None)}): a doubled or missing BOS, or a template applied")
    stops = {ids[0] for ids in engine["stop_token_ids"] if len(ids) == 1}
    missing = [i for i in contract.eos_ids if i not in stops]
    if missing:
        failures.append(f"the bundle's stop tokens lack the contract's eos ids {missing}")
    if metadata.get("max_num_tokens") != cache_length:
        failures.append(f"the bundle says max_num_tokens {metadata.get('max_num_tokens')}, its program's cache "
                        f"holds {cache_length}")
    return parity, detail, failures


def verify_litertlm(
    bundle: Path, artifact: str, recipe: str, gate: Gate, reference: ReferenceLogits, golden: GoldenSet,
    contract: Contract, hf_tokenizer: Any, metadata: dict[str, Any], eval_rows: list[EvalRow],
    baseline: list[str] | None, threads: int = 2,
) -> tuple[VerificationResult, TaskMetrics | None]:
    """Logits of the bundle's program vs the fp32 reference, then the engine on the greedy prompt and eval set."""
    with tempfile.TemporaryDirectory(prefix="edgepack-litert-program-") as tmp:
        program = TflitePrefillDecode(extract_program(bundle, Path(tmp) / "program.tflite"), threads)
        acc, truncated = golden_fidelity(reference, program.logits, program.cache_length)
        n_greedy = len(reference.greedy_ids) or 24
        greedy_ids = program.greedy(reference.greedy_prompt_ids, n_greedy, contract.eos_ids)
        cache_length = program.cache_length
        del program
    metrics = acc.result()

    special = sorted(set(hf_tokenizer.all_special_tokens) | set(contract.stop_strings))
    probe = tokenizer_probe_text(golden, special)
    constraint = engine_constraint(contract)
    prompts = [render_prompt(contract, row.input, row.instruction) for row in eval_rows]
    engine = run_engine(bundle, {"probe": probe, "greedy_prompt": golden.greedy_prompt, "greedy_tokens": n_greedy,
                                 "prompts": prompts, "max_new_tokens": contract.max_new_tokens,
                                 "constraint": constraint}, threads).data
    parity, detail, failures = contract_checks(contract, engine, hf_tokenizer, probe, golden.greedy_prompt,
                                               metadata, cache_length)
    failures = gate.check(metrics) + failures
    ref_text = hf_tokenizer.decode([t for t in reference.greedy_ids if t not in contract.eos_ids])
    greedy = engine["greedy"]
    notes = [
        "logits and exact greedy ids: the bundle's own TFLite program (prefill and decode signatures) in "
        "ai_edge_litert's Interpreter; greedy text, tokenizer, BOS and eval answers: LiteRT-LM's engine on this "
        "host's CPU. GPU and NPU backends were not run (none here)."
    ]
    if truncated:
        notes.append(f"{truncated} golden positions beyond the {cache_length}-slot KV cache were not compared")
    if greedy_ids != reference.greedy_ids:
        same = first_difference(greedy_ids, reference.greedy_ids)
        notes.append(f"program greedy ids differ from the reference after "
                     f"{same if same is not None else min(len(greedy_ids), len(reference.greedy_ids))} tokens")
    task = None
    if eval_rows:
        answers = iter(engine["answers"])

        def generate(_prompt: str) -> tuple[str, int, float]:
            answer = next(answers)
            return answer["text"], int(answer["tokens"]), float(answer["seconds"])

        constrained = bool(constraint) and all(a["constrained"] for a in engine["answers"])
        task, _ = score(contract, eval_rows, generate, baseline, constrained)
        if constraint and not constrained:
            notes.append("the engine's constrained decoding failed "
                         f"({engine.get('constraint_error') or 'unknown'}); eval rows were answered unconstrained")
        settled = sum(1 for a in engine["answers"] if a.get("settled_unconstrained"))
        if settled:
            notes.append(f"{settled} of {len(engine['answers'])} eval rows: the engine's unconstrained greedy "
                         "answer was already a whole label, which constrained greedy decoding returns too (no "
                         "label is a prefix of another); the constrained conversation ran for the others. Their "
                         "latency is the unconstrained answer's, without the constrained conversation's set-up that "
                         "the Android bridge pays for every answer (it decodes under the same constraint).")
    result = VerificationResult(
        artifact=artifact, format="litertlm", quant=recipe, level="executed", runtime=runtime_name(),
        metrics=metrics, tokenizer_parity=parity, tokenizer_detail=detail,
        greedy_match=greedy["text"] == ref_text,
        greedy_text_reference=ref_text, greedy_text=greedy["text"],
        tokens_per_s=float(greedy["decode_tokens_per_s"]) or None, gate=gate.describe(), failures=failures,
        notes=notes)
    return result, task


def _serve(request: dict[str, Any]) -> Verified:
    """verify_litertlm on the build's inputs, in a child process (targets.android.litert_stages.verified_litertlm):
    the signature runners copy every layer's KV cache in and out of the interpreter under the GIL at each step."""
    from packager.threads import compute_threads

    inputs = VerifyInputs.from_dict(request["inputs"])
    return verify_litertlm(Path(request["bundle"]), request["artifact"], request["recipe"],
                           gate_from_dict(request["gate"]), inputs.reference, inputs.golden, inputs.contract,
                           inputs.hf_tokenizer(), request["metadata"], inputs.eval_rows,
                           inputs.baseline if inputs.eval_rows else None, compute_threads())


def main(argv: list[str] | None = None) -> int:
    """Child-process entry (packager.verify.child_verify): a bundle's verification request in, its result out."""
    return serve_verification(__doc__.splitlines()[0], _serve, argv)


if __name__ == "__main__":
    sys.exit(main())
