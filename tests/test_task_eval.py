"""Task verification: every artifact answers the eval set under the contract; the task gate reads it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import edgepack, leftovers

from packager.contract import Contract, PromptFormat, apply_task_config
from packager.errors import BadInputError, ExitCode
from packager.verify.gates import TaskGate
from packager.verify.result import VerificationResult
from packager.verify.task_eval import EvalRow, load_eval_set, score

ROWS = [
    {"instruction": "Classify.", "input": "my card got declined", "output": "billing"},
    {"instruction": "Classify.", "input": "where is my parcel", "output": "shipping"},
    {"instruction": "Classify.", "input": "cancel it please", "output": "cancel"},
]


def _write_eval(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_scoring_counts_exact_match_validity_agreement_and_latency() -> None:
    contract = Contract(task="labels", labels=["billing", "shipping", "cancel"], stop_strings=["\n"],
                        prompt=PromptFormat(template="{instruction} {input} ->"))
    rows = [EvalRow(**r) for r in ROWS]
    replies = iter(["billing\nextra", "refund", " cancel "])
    seen: list[str] = []

    def generate(prompt: str) -> tuple[str, int, float]:
        seen.append(prompt)
        return next(replies), 2, 0.01

    metrics, answers = score(contract, rows, generate, baseline=["billing", "shipping", "cancel"])
    assert seen[0] == "Classify. my card got declined ->"
    assert answers == ["billing\nextra", "refund", " cancel "]
    assert metrics.exact_match == pytest.approx(2 / 3) and metrics.validity == pytest.approx(2 / 3)
    assert metrics.agreement == pytest.approx(2 / 3) and metrics.baseline_exact_match == 1.0
    assert metrics.mismatches == [{"input": "where is my parcel", "expected": "shipping", "got": "refund",
                                   "error": {"code": "unknown_label", "path": ""}}]
    assert metrics.latency_ms_p50 == pytest.approx(10.0)
    reasons = TaskGate().check(metrics)
    assert any("points below" in r for r in reasons) and any("validity" in r for r in reasons)


def test_a_token_by_token_runtime_is_asked_for_no_token_after_the_answer_ends() -> None:
    from packager.verify.task_eval import token_generator

    contract = Contract(task="labels", labels=["ab"], bos_id=9, eos_ids=[0], stop_strings=["\n"], max_new_tokens=3)
    pieces = {1: "a", 2: "b", 3: "\n", 4: "c"}
    asked: list[int] = []

    def runtime(script: list[int]):
        def next_tokens(ids: list[int]):
            assert ids[0] == 9  # BOS from the contract, before the encoded prompt
            for tok in script:
                asked.append(tok)
                yield tok
        return token_generator(contract, lambda prompt: [5, 6], next_tokens,
                               lambda out: "".join(pieces[t] for t in out))

    cases = [([1, 2, 0, 4], "ab", 2, [1, 2, 0]),      # eos: left out, nothing asked after it
             ([1, 3, 4, 4], "a\n", 2, [1, 3]),        # a stop string ends the answer at once
             ([1, 2, 4, 4, 4], "abc", 3, [1, 2, 4]),   # max_new_tokens: the 3rd token is the last asked
             ([1], "a", 1, [1])]                      # the runtime ended (context full)
    for script, text, n, taken in cases:
        asked.clear()
        got_text, got_n, seconds = runtime(script)("prompt")
        assert (got_text, got_n, asked) == (text, n, taken) and seconds >= 0


def test_labels_are_inferred_from_the_eval_set_and_a_prompt_template_replaces_the_chat_format() -> None:
    contract = apply_task_config(Contract(stop_strings=["<end_of_turn>"]), {"task": "labels", "prompt_template":
                                 "{instruction}\nMessage: {input}\nIntent:", "stop_strings": ["\n"]},
                                 ["b", "a", "b"], "edgepack.toml")
    assert contract.labels == ["a", "b"]
    assert contract.prompt.template == "{instruction}\nMessage: {input}\nIntent:" and contract.prompt.prefix == ""
    assert contract.stop_strings == ["<end_of_turn>", "\n"]


@pytest.mark.parametrize("config,message", [
    ({"task": "labels"}, "needs labels"),
    ({"task": "json"}, "needs a json_schema"),
    ({"task": "poetry"}, "is not one of"),
    ({"prompt_template": "{question}"}, "unknown placeholder"),
    ({"lables": ["x"]}, "unknown contract key"),
])
def test_bad_task_configuration_names_the_file(config: dict, message: str) -> None:
    with pytest.raises(BadInputError, match=message) as err:
        apply_task_config(Contract(), config, [], "my/edgepack.toml")
    assert "my/edgepack.toml" in str(err.value)


def test_bad_eval_rows_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "eval.jsonl"
    path.write_text('{"input": "ok", "output": "x"}\n{"input": 3}\n')
    with pytest.raises(BadInputError, match=r"eval.jsonl:2"):
        load_eval_set(path)


def test_text_task_build_records_task_metrics_and_agrees_with_fp32(tiny_gemma: Path, tmp_path: Path) -> None:
    eval_path = _write_eval(tmp_path / "eval.jsonl", ROWS)
    out = tmp_path / "out"
    result = edgepack("build", tiny_gemma, "--target", "raspberry-pi", "--quant", "F32", "--out", out,
                      "--eval", eval_path, "--task", "text", "--json")
    assert result.exit_code == 0, result.stderr
    [row] = result.json()["artifacts"]
    task = row["task"]
    assert task["rows"] == 3 and task["validity"] == 1.0
    assert task["agreement"] == 1.0  # F32 in llama.cpp answers exactly like the fp32 transformers model
    assert task["latency_ms_p50"] > 0 and task["latency_ms_p99"] >= task["latency_ms_p50"]
    assert "accuracy (fp32)" in (out / "report.md").read_text()


def test_labels_the_model_never_produces_fail_the_task_gate(tiny_gemma: Path, tmp_path: Path) -> None:
    eval_path = _write_eval(tmp_path / "eval.jsonl", ROWS)
    out = tmp_path / "out"
    result = edgepack("build", tiny_gemma, "--target", "raspberry-pi", "--quant", "F32", "--out", out,
                      "--eval", eval_path, "--task", "labels")
    assert result.exit_code == ExitCode.GATE_FAILED
    assert "contract validity 0.000 < 1.000" in result.stderr
    assert leftovers(tmp_path, "out") == []


def test_constrained_decoding_keeps_every_answer_inside_the_label_set(tiny_gemma: Path, tmp_path: Path) -> None:
    eval_path = _write_eval(tmp_path / "eval.jsonl", ROWS)
    result = edgepack("build", tiny_gemma, "--target", "raspberry-pi", "--quant", "F32", "--out", tmp_path / "out",
                      "--eval", eval_path, "--task", "labels", "--constrained", "--json")
    assert result.exit_code == 0, result.stderr
    task = result.json()["artifacts"][0]["task"]
    assert task["constrained"] is True and task["validity"] == 1.0  # unconstrained, this model produces no label


# Labels outside ASCII: é, ï, ü are two UTF-8 bytes, 東京 six, 🦙 four (a UTF-16 surrogate pair in JS
# and Kotlin). A byte-level tokenizer (tiny Llama) spells them with tokens that are not valid UTF-8
# on their own, which the GBNF grammar must still admit one byte at a time.
UNICODE_LABELS = ["café", "naïve", "über", "ok", "東京", "🦙"]
UNICODE_ROWS = [{"instruction": "Classify.", "input": text, "output": label}
                for text, label in zip(["my card got declined", "where is my parcel", "cancel it please",
                                        "fine", "east", "llama"], UNICODE_LABELS, strict=True)]


def _unicode_build(model: Path, tmp_path: Path, *flags: str) -> tuple[int, dict, str]:
    eval_path = tmp_path / "eval.jsonl"
    eval_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in UNICODE_ROWS), encoding="utf-8")
    result = edgepack("build", model, "--target", "raspberry-pi", "--quant", "F16", "--out", tmp_path / "out",
                      "--eval", eval_path, "--task", "labels", "--constrained", "--json", *flags)
    report = json.loads(result.stdout)
    task = report["artifacts"][0]["task"] if "artifacts" in report else {}
    return result.exit_code, task, result.stdout


def test_constrained_decoding_answers_only_non_ascii_labels_in_llama_cpp(tiny_gemma: Path, tmp_path: Path) -> None:
    exit_code, task, out = _unicode_build(tiny_gemma, tmp_path)
    assert exit_code == 0, out[-3000:]
    assert task["constrained"] is True and task["validity"] == 1.0
    assert all(m["got"] in UNICODE_LABELS for m in task["mismatches"]), task["mismatches"]


def test_an_overlong_utf8_answer_admitted_by_the_grammar_is_reported_as_invalid(
        tiny_llama: Path, tmp_path: Path) -> None:
    """llama.cpp's grammar matches code points decoded leniently: after F0 (the lead byte of 🦙), the
    overlong F0 86 9D B1 decodes to 東, so the byte-level tiny Llama answers "fine" with invalid bytes
    and 京. That answer is not a label and must be counted so, with its bytes shown, never hidden."""
    exit_code, task, out = _unicode_build(tiny_llama, tmp_path, "--no-gate")
    assert exit_code == ExitCode.GATE_FAILED, out[-3000:]
    assert task["validity"] == pytest.approx(5 / 6)
    [overlong] = [m for m in task["mismatches"] if m["input"] == "fine"]
    assert overlong["error"]["code"] == "unknown_label" and overlong["got"] == "\ufffd" * 4 + "京"


# ---------------------------------------------------------------------------------------------
# With an eval set the task gate decides: a fidelity miss with the task intact is a warning.


def _verdict(top1: float, accuracy: float, decides: bool) -> VerificationResult:
    from packager.verify.gates import gate_for
    from packager.verify.metrics import FidelityMetrics
    from packager.verify.task_eval import TaskMetrics

    result = VerificationResult(artifact="model-Q4_K_M.gguf", format="gguf", quant="Q4_K_M", level="executed",
                                runtime="llama.cpp")
    result.metrics = FidelityMetrics(positions=100, top1=top1, top1_decisive=top1, decisive_positions=80,
                                     kl=0.01 if top1 == top1 else float("nan"), ppl_ref=None, ppl=None)
    result.task = TaskMetrics(rows=10, exact_match=accuracy, validity=1.0, agreement=1.0, baseline_exact_match=0.9,
                              latency_ms_p50=1.0, latency_ms_p95=1.0, latency_ms_p99=1.0, tokens_per_s=10.0,
                              constrained=True, mismatches=[], latencies_ms=[1.0])
    result.reapply_gates(gate_for("Q4_K_M"), TaskGate(decides=decides))
    return result


def test_a_fidelity_miss_is_a_warning_when_the_task_decides_and_a_failure_otherwise() -> None:
    decided = _verdict(top1=0.5, accuracy=0.9, decides=True)
    assert decided.passed and decided.warnings and decided.warnings[0].startswith("top-1")
    strict = _verdict(top1=0.5, accuracy=0.9, decides=False)  # --strict-fidelity, or no eval set
    assert not strict.passed and strict.failures == decided.warnings
    task_lost = _verdict(top1=0.5, accuracy=0.5, decides=True)  # the task decides, and it says no
    assert not task_lost.passed and any("accuracy" in f for f in task_lost.failures)
    assert any(f.startswith("top-1") for f in task_lost.failures)
    broken = _verdict(top1=float("nan"), accuracy=0.9, decides=True)  # non-finite numbers always fail
    assert not broken.passed and not broken.warnings


def test_with_an_eval_set_a_default_build_ships_the_smallest_gguf_the_task_accepts(
        tiny_llama: Path, tmp_path: Path) -> None:
    eval_path = _write_eval(tmp_path / "eval.jsonl", ROWS)
    common = ("--target", "raspberry-pi", "--eval", eval_path, "--task", "labels", "--constrained", "--json")
    # Tiny random Llama: Q4_K_M misses the fidelity gate (top-1 0.57) but answers the eval set under the
    # label grammar exactly as the fp32 model does, so the task gate accepts it.
    decided = edgepack("build", tiny_llama, "--out", tmp_path / "decided", *common)
    assert decided.exit_code == 0, decided.stderr
    [row] = decided.json()["artifacts"]
    assert row["quant"] == "Q4_K_M" and row["passed"] and row["warnings"], row
    assert "task gate decided" in (tmp_path / "decided" / "report.md").read_text()
    strict = edgepack("build", tiny_llama, "--out", tmp_path / "strict", "--strict-fidelity", *common)
    assert strict.exit_code == 0, strict.stderr
    assert strict.json()["artifacts"][0]["quant"] != "Q4_K_M"  # both gates: the ladder climbs past it


def test_llama_cpp_rows_give_the_tokens_of_a_grammar_over_every_token_with_the_shared_prefix_reused(
        tiny_gemma: Path, tmp_path: Path) -> None:
    """The eval loop (prefix reuse, greedy token checked against the grammar first) against llama-cpp-python's
    own generate(grammar=...), which filters the whole vocabulary each step and reuses prefixes its own way.

    One label starts with the model's own favourite piece after the prompt and goes on with a word it never
    prefers there: both of GrammarGreedy's branches run."""
    import llama_cpp

    from packager.checkpoint import load_checkpoint
    from packager.contract import labels_grammar
    from packager.formats.gguf_writer import write_gguf
    from packager.verify import llama_cpp_runner
    from packager.verify.task_eval import llama_cpp_generator

    gguf = write_gguf(load_checkpoint(tiny_gemma, work_dir=tmp_path / "w"), tmp_path / "tiny-F32.gguf", "F32")
    prompts = [f"Classify the message.\nMessage: {text}\nIntent:" for text in
               ["my card got declined", "where is my parcel", "cancel it please", "money back", "hello"]]
    reference = llama_cpp.Llama(model_path=str(gguf), n_ctx=256, verbose=False, seed=0)

    def greedy(prompt: str, grammar: llama_cpp.LlamaGrammar | None) -> list[int]:
        out: list[int] = []
        ids = reference.tokenize(prompt.encode(), add_bos=False, special=True)
        for tok in reference.generate(ids, top_k=1, temp=0.0, grammar=grammar):
            if llama_cpp.llama_vocab_is_eog(reference._model.vocab, tok) or len(out) == 16:
                break
            out.append(tok)
        return out

    favourite = next(word for tok in greedy(prompts[0], None)
                     if (word := reference.detokenize([tok]).decode("utf-8", "replace").strip()))
    labels = ["billing", "shipping", f"{favourite}refund"]
    with_grammar = llama_cpp.LlamaGrammar.from_string(labels_grammar(labels), verbose=False)
    expected = [reference.detokenize(greedy(p, with_grammar)).decode("utf-8", "replace") for p in prompts]
    reference.close()
    contract = apply_task_config(Contract(), {"task": "labels", "labels": labels, "max_new_tokens": 16,
                                              "prompt_template": "{instruction}\nMessage: {input}\nIntent:"},
                                 [], "test")

    branches = {"allowed": 0, "filtered": 0}
    choose = llama_cpp_runner.GrammarGreedy.choose

    def counting(self: llama_cpp_runner.GrammarGreedy, logits: np.ndarray) -> int:
        tok = choose(self, logits)
        branches["allowed" if tok == int(np.argmax(logits)) else "filtered"] += 1
        return tok

    evaluated: list[int] = []
    eval_tokens = llama_cpp.Llama.eval
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=256, verbose=False, seed=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(llama_cpp_runner.GrammarGreedy, "choose", counting)
        patch.setattr(llama_cpp.Llama, "eval", lambda self, ids: (evaluated.append(len(ids)), eval_tokens(self, ids)))
        generate = llama_cpp_generator(llm, contract, constrained=True)
        got = [generate(prompt)[0] for prompt in prompts]
    llm.close()
    assert [g.strip() for g in got] == [e.strip() for e in expected] and all(g.strip() in labels for g in got)
    assert branches["allowed"] > 0 and branches["filtered"] > 0, branches
    prompt_evals = [n for n in evaluated if n > 1]
    assert prompt_evals[0] > max(prompt_evals[1:])  # later rows evaluate only what follows the shared prefix


def test_llama_loads_in_two_threads_at_once_leave_the_process_stdout_as_it_was(monkeypatch) -> None:
    """llama-cpp-python quiets a load by swapping sys.stdout (and fds 1, 2) for /dev/null and back; two loads
    overlapping in time would each restore the other's swap and leave stdout on a closed /dev/null (a cold fleet
    build's final tables went there). load_llama lets one load through at a time."""
    import sys
    import threading
    import time

    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    from packager.verify.llama_cpp_runner import load_llama

    class SlowQuietLoad:
        def __init__(self, **_: object) -> None:
            with suppress_stdout_stderr(disable=False):
                time.sleep(0.2)

    monkeypatch.setattr(llama_cpp, "Llama", SlowQuietLoad)
    before = sys.stdout
    threads = [threading.Thread(target=load_llama) for _ in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)  # the second load starts inside the first one's swap
    for thread in threads:
        thread.join()
    assert sys.stdout is before
