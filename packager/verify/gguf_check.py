"""Verifying a GGUF at the `executed` level: it runs in llama.cpp on this host."""

from __future__ import annotations

from pathlib import Path

from packager.contract import Contract
from packager.verify.compare import compare_token_ids, golden_fidelity, tokenizer_probe_text
from packager.verify.gates import gate_for
from packager.verify.golden import GoldenSet
from packager.verify.llama_cpp_runner import GGUFRunner
from packager.verify.reference import ReferenceLogits
from packager.verify.result import VerificationResult


def runtime_name() -> str:
    import llama_cpp

    return f"llama.cpp via llama-cpp-python {llama_cpp.__version__}"


def check_tokenizer(runner: GGUFRunner, hf_tokenizer, probe: str) -> tuple[bool, str]:
    """Compare llama.cpp's and HF's token ids for the probe; return (equal, detail)."""
    hf_ids = hf_tokenizer(probe, add_special_tokens=False)["input_ids"]
    return compare_token_ids(hf_ids, runner.tokenize(probe, add_bos=False), "llama.cpp")


def verify_gguf(
    path: Path,
    artifact: str,
    quant: str,
    reference: ReferenceLogits,
    golden: GoldenSet,
    contract: Contract,
    hf_tokenizer,
    lora: Path | None = None,
) -> VerificationResult:
    """Run the GGUF (with the GGUF LoRA adapter `lora` applied, when given) on the golden text and compare
    it with the fp32 reference."""
    gate = gate_for(quant)
    n_ctx = max(len(s) for s in reference.sequences) + len(reference.greedy_prompt_ids) + 64
    runner = GGUFRunner(path, n_ctx=max(256, n_ctx), lora=lora)
    try:
        metrics = golden_fidelity(reference, runner.logits)[0].result()
        special = sorted(set(hf_tokenizer.all_special_tokens) | set(contract.stop_strings))
        parity, detail = check_tokenizer(runner, hf_tokenizer, tokenizer_probe_text(golden, special))
        greedy, tps = runner.greedy(reference.greedy_prompt_ids, len(reference.greedy_ids) or 24, contract.eos_ids)
        greedy_text = runner.detokenize(greedy)
        ref_text = runner.detokenize(reference.greedy_ids)
    finally:
        runner.close()
    failures = gate.check(metrics)
    if not parity:
        failures.append(f"tokenizer differs from HF: {detail}")
    return VerificationResult(
        artifact=artifact,
        format="gguf",
        quant=quant,
        level="executed",
        runtime=runtime_name(),
        metrics=metrics,
        tokenizer_parity=parity,
        tokenizer_detail=detail,
        greedy_match=greedy == reference.greedy_ids,
        greedy_text_reference=ref_text,
        greedy_text=greedy_text,
        tokens_per_s=tps,
        gate=gate.describe(),
        failures=failures,
    )
