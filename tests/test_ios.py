"""The ios target: a stateful Core ML package, proven exact before fp16 and checked in numpy after it.

Tiny random checkpoints convert in seconds. Two of them are made to overflow fp16 the way the real
models do (Gemma 3 270M's residual stream reaches ~1e5; SmolLM2's RMSNorm squares overflow): with
the rewrites the package passes, without them the simulated check must catch it. No Swift compiler
exists here: the Swift sources are parsed with tree-sitter and their API names checked against a list.
"""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch

from packager.architectures import spec_for_config
from packager.calibration import decoder_linear_key
from packager.errors import GateFailedError
from packager.escaping import swift_string
from packager.pipeline import BuildRequest, run_build
from packager.stages import BuildOptions
from packager.templating import check_no_placeholders, render_tree
from packager.verify.gates import TaskGate
from targets.ios.convert import COMPRESSION, CONVERSION_DATE
from targets.ios.layouts import coreml_layout
from targets.ios.model import (
    FP16_BUDGET,
    FP16_MAX,
    Fp16Plan,
    StatefulDecoder,
    additive_masks,
    measure_ranges,
    plan_rewrites,
)
from targets.ios.quantize import const_key, dequantize, searched_affine
from targets.ios.swift_check import syntax_errors, unknown_api_names
from targets.ios.verify import PackageDriver

REPO = Path(__file__).resolve().parent.parent
BRIDGE = REPO / "mobile" / "ios"
HOSTILE_NAME = 'Bot "\\(evil)" \\n\n$x `rm -rf` {{ x }} </script> #"raw"# ü🦙'
HOSTILE_LABELS = ['say "hi"', "\\(interp)", "back\\slash", "line\nbreak", "{% raw %}", "tab\there", '"#']


def _hf(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager").eval()


def _spec(folder: Path):
    config = json.loads((folder / "config.json").read_text())
    return spec_for_config(config), config


def _decoder_logits(decoder: StatefulDecoder, ids: list[int], window: int | None, split: int) -> torch.Tensor:
    """Prefill ids[:split], then decode the rest one id at a time through the cache."""
    decoder.reset()
    parts = []
    with torch.no_grad():
        full, sliding = additive_masks(split, split, window)
        parts.append(decoder(torch.tensor([ids[:split]], dtype=torch.int32), full, sliding)[0])
        for t in range(split, len(ids)):
            full, sliding = additive_masks(1, t + 1, window)
            parts.append(decoder(torch.tensor([[ids[t]]], dtype=torch.int32), full, sliding)[0])
    return torch.cat(parts)


@pytest.fixture(scope="session")
def overflowing_gemma(tiny_gemma: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny Gemma with post-norm gains x4000: its residual stream passes fp16's 65,504, like Gemma 3 270M's."""
    model = _hf(tiny_gemma)
    with torch.no_grad():
        for block in model.model.layers:
            block.post_feedforward_layernorm.weight.mul_(4000.0)
    return _save_variant(model, tiny_gemma, tmp_path_factory.mktemp("models") / "overflowing-gemma")


@pytest.fixture(scope="session")
def overflowing_llama(tiny_smollm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM-shaped with embeddings x2000: RMSNorm's squares overflow fp16 unless the norm is rewritten."""
    model = _hf(tiny_smollm)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(2000.0)
    return _save_variant(model, tiny_smollm, tmp_path_factory.mktemp("models") / "overflowing-llama")


def _save_variant(model, source: Path, folder: Path) -> Path:
    import shutil

    model.save_pretrained(str(folder))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)
    return folder


# ---------------------------------------------------------------------------------------------
# The decoder Core ML converts is the checkpoint's own function (fp32), whatever the rewrites.


@pytest.mark.parametrize("fixture", ["tiny_gemma", "tiny_llama", "tiny_smollm"])
def test_rewritten_decoder_equals_transformers_in_fp32_through_prefill_and_decode(fixture: str, request) -> None:
    folder = request.getfixturevalue(fixture)
    model = _hf(folder)
    spec, config = _spec(folder)
    window = config.get("sliding_window") if coreml_layout(spec).sliding_attention_mask else None
    ids = [1, *range(5, 60)]
    reference = model(torch.tensor([ids])).logits[0]
    n = config["num_hidden_layers"]
    aggressive = Fp16Plan(True, 64.0, [8.0] * n, [4.0] * n)
    decoder = StatefulDecoder(model, spec, 128, aggressive, cache_dtype=torch.float32)
    out = _decoder_logits(decoder, ids, window, split=40)
    assert float((out - reference).abs().max()) <= 1e-4 * float(reference.detach().abs().max())
    assert torch.equal(out.argmax(-1), reference.argmax(-1))


def test_split_lm_head_computes_the_same_logits(tiny_gemma: Path) -> None:
    model = _hf(tiny_gemma)
    spec, config = _spec(tiny_gemma)
    ids = list(range(3, 30))
    whole = StatefulDecoder(model, spec, 64, Fp16Plan(True), cache_dtype=torch.float32)
    split = StatefulDecoder(model, spec, 64, Fp16Plan(True), lm_head_chunk=256, cache_dtype=torch.float32)
    assert split.head_chunks is not None and len(split.head_chunks) == -(-config["vocab_size"] // 256)
    window = config["sliding_window"]
    assert torch.allclose(_decoder_logits(whole, ids, window, 20), _decoder_logits(split, ids, window, 20), atol=1e-5)


@pytest.mark.parametrize("fixture", ["overflowing_gemma", "overflowing_llama"])
def test_measured_ranges_size_rewrites_that_bring_every_site_under_the_fp16_budget(fixture: str, request) -> None:
    folder = request.getfixturevalue(fixture)
    model = _hf(folder)
    spec, config = _spec(folder)
    window = config.get("sliding_window") if coreml_layout(spec).sliding_attention_mask else None
    sequences = [list(range(2, 50))]
    before = measure_ranges(StatefulDecoder(model, spec, 64, Fp16Plan(False), cache_dtype=torch.float32), sequences,
                            window)
    assert max(before.values()) > FP16_MAX / 4  # the fixture really is in trouble
    plan = Fp16Plan(True)
    for _ in range(4):
        ranges = measure_ranges(StatefulDecoder(model, spec, 64, plan, cache_dtype=torch.float32), sequences, window)
        bigger = plan_rewrites(ranges, config["num_hidden_layers"], plan, coreml_layout(spec).post_norms)
        if bigger == plan:
            break
        plan = bigger
    # logits are the model's answer, not an intermediate: they are what they are (here < 65,504).
    assert max(v for site, v in ranges.items() if site != "logits") <= FP16_BUDGET


# ---------------------------------------------------------------------------------------------
# Builds (tiny models): conversion, spec, simulation, bundle, generated code.


def _build(folder: Path, out: Path, compression: str, fp16_rewrites: bool = True, **options) -> object:
    ios = {"compression": compression, "fp16_rewrites": fp16_rewrites}
    return run_build(BuildRequest(checkpoint=folder, targets=["ios"], out=out,
                                  options=BuildOptions(target_options={"ios": ios}, **options)))


@pytest.fixture(scope="module")
def gemma_bundle(tiny_gemma: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    out = tmp_path_factory.mktemp("ios") / "gemma"
    outcome = _build(tiny_gemma, out, compression="none", context_length=256)
    return outcome, out / "ios"


def test_gemma_package_has_swift_transformers_names_state_and_ranges(gemma_bundle) -> None:
    from targets.ios.mil_interpreter import load_program
    from targets.ios.verify import check_spec

    outcome, bundle = gemma_bundle
    assert outcome.passed
    _, spec = load_program(bundle / "model-fp16.mlpackage")
    failures, summary = check_spec(spec, 256, sliding=True)
    assert failures == []
    assert sorted(summary["inputs"]) == ["fullAttentionMask", "inputIds", "slidingAttentionMask"]
    assert summary["states"] == ["keyCache", "valueCache"] and summary["outputs"] == ["logits"]
    assert summary["metadata"]["co.huggingface.exporters.sliding_window"] == "32"
    # No day of conversion: a package from the stage cache equals one converted today.
    assert CONVERSION_DATE not in spec.description.metadata.userDefined
    # A spec that breaks swift-transformers' contract is reported, not passed.
    spec.description.input[0].name = "input_ids"
    assert any("swift-transformers expects" in f for f in check_spec(spec, 256, sliding=True)[0])


def test_gemma_bundle_is_simulated_and_passes_the_fp16_gate(gemma_bundle) -> None:
    outcome, bundle = gemma_bundle
    (result,) = outcome.results[0].verifications
    assert result.level == "simulated" and result.format == "mlpackage"
    assert result.metrics.top1 >= 0.98 and result.metrics.cosine > 0.999
    assert result.greedy_match
    document = json.loads((bundle / "edgepack.json").read_text())
    assert document["model"]["packages"][0]["package"] == "model-fp16.mlpackage"
    assert document["model"]["exactness_proof"]["exact"]
    assert document["runner"]["eos_ids"] == document["contract"]["eos_ids"]
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in bundle.iterdir()}
    assert (bundle / "EdgeModel" / "Package.swift").is_file() and (bundle / "app" / "project.yml").is_file()


def test_every_generated_swift_file_parses_and_names_are_checked(gemma_bundle) -> None:
    outcome, bundle = gemma_bundle
    checks = outcome.results[0].scaffold_checks
    swift = [c for c in checks if c.tool == "tree-sitter (swift)"]
    assert len(swift) == len(list(bundle.rglob("*.swift"))) and all(c.status == "passed" for c in swift)
    (names,) = [c for c in checks if c.tool.startswith("Core ML / swift-transformers")]
    assert names.status == "passed", names.detail
    # Rendered files only: the bridge is hand-written Swift whose comments may mention "{{".
    check_no_placeholders([*(bundle / "app").rglob("*.swift"), bundle / "app" / "project.yml"])


def test_int4_package_is_gated_against_llama_cpp_q4_k_m_on_the_same_positions(tiny_llama: Path,
                                                                                tmp_path: Path) -> None:
    outcome = _build(tiny_llama, tmp_path / "out", compression="int4", context_length=256, no_gate=True)
    fp16, int4 = outcome.results[0].verifications
    assert fp16.passed and fp16.metrics.top1 >= 0.98
    # int4 ships when it passes; otherwise the ladder's next rungs (int4-mixed, int8) are tried in turn.
    assert int4.artifact in ("ios/model-int4.mlpackage", "ios/model-int4-mixed.mlpackage", "ios/model-int8.mlpackage")
    # A 4-bit package is held to llama.cpp's Q4_K_M on the same positions, an 8-bit one to the 8-bit class gate.
    expected_gate = "8-bit" if int4.artifact.endswith("int8.mlpackage") else "llama.cpp Q4_K_M"
    assert expected_gate in int4.gate and int4.metrics.positions == fp16.metrics.positions
    if int4.artifact != "ios/model-int4.mlpackage":
        assert any(note.startswith("int4:") or "model-int4.mlpackage" in note for note in outcome.results[0].notes)
    shipped = json.loads((tmp_path / "out" / "ios" / "edgepack.json").read_text())["model"]["packages"]
    assert [p["package"] for p in shipped] == [int4.artifact.removeprefix("ios/")]


@pytest.mark.parametrize("fixture", ["overflowing_gemma", "overflowing_llama"])
def test_unsafe_fp16_conversion_is_caught_and_not_shipped(fixture: str, request, tmp_path: Path) -> None:
    folder = request.getfixturevalue(fixture)
    with pytest.raises(GateFailedError) as caught:
        _build(folder, tmp_path / "unsafe", compression="none", context_length=128, fp16_rewrites=False)
    assert "FAIL" in str(caught.value)
    assert not (tmp_path / "unsafe").exists()
    safe = _build(folder, tmp_path / "safe", compression="none", context_length=128)
    assert safe.passed and safe.results[0].verifications[0].metrics.top1 >= 0.98


# ---------------------------------------------------------------------------------------------
# The task: with an eval set every package answers it through its own program, under the task gate.


@pytest.fixture(scope="module")
def router_bundle(tiny_router: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    """The fine-tuned tiny router built for iOS (fp16) with its eval set; the task decides, as with --eval."""
    model, eval_path = tiny_router
    out = tmp_path_factory.mktemp("ios") / "router"
    outcome = _build(model, out, compression="none", context_length=256, eval_path=eval_path,
                     task={"task": "labels"}, task_gate=TaskGate(decides=True))
    return outcome, out


def _router_context(tiny_router: tuple[Path, Path], task_gate: TaskGate, work: Path):
    from packager.checkpoint import load_checkpoint
    from packager.progress import Reporter
    from packager.stages import BuildContext

    model, eval_path = tiny_router
    ckpt = load_checkpoint(model, work_dir=work)
    options = BuildOptions(context_length=256, eval_path=eval_path, task={"task": "labels"}, task_gate=task_gate)
    return BuildContext(ckpt, ckpt.content_digest(), options, Reporter(quiet=True))


def test_with_an_eval_set_every_ios_package_answers_it_through_its_own_program(router_bundle) -> None:
    outcome, out = router_bundle
    assert outcome.passed
    (fp16,) = outcome.results[0].verifications
    task = fp16.task
    assert fp16.level == "simulated" and task is not None
    assert task.rows == 6 and len(task.latencies_ms) == 6 and min(task.latencies_ms) > 0  # every row ran
    assert task.baseline_exact_match == 1.0 and task.exact_match == 1.0 and task.validity == 1.0
    assert task.agreement == 1.0 and not task.constrained
    assert "task: accuracy drop" in fp16.gate
    assert any("numpy MIL interpreter" in n and "not an iPhone" in n for n in fp16.notes), fp16.notes
    row = next(line for line in (out / "report.md").read_text().splitlines() if "model-fp16.mlpackage" in line)
    assert "(simulator on the build host)" in row and "1.000 (1.000)" in row


def test_a_warm_rebuild_reuses_the_ios_task_record_and_the_task_gate_decides(
        router_bundle, tiny_router: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from packager.verify.gates import TopOneGate
    from targets.ios import verify as coreml_check
    from targets.ios.stages import cached_export, export_request, verified_package
    from targets.ios.target import FP16_GATE

    outcome, _ = router_bundle
    built = outcome.results[0].verifications[0]
    ctx = _router_context(tiny_router, TaskGate(decides=True), tmp_path / "work")
    export = cached_export(ctx, export_request(ctx, ["none"], 256))
    assert export.from_cache

    def never(*args, **kwargs):
        raise AssertionError("the eval set was answered again")

    with monkeypatch.context() as patch:
        patch.setattr(coreml_check, "answer_eval_set", never)
        warm = verified_package(ctx, export, "none", "ios/model-fp16.mlpackage", FP16_GATE)
    assert warm.task == built.task and warm.passed
    # A fidelity gate no package meets: the task decides (its answers kept the task), so it is a warning...
    impossible = TopOneGate("impossible", 1.5)
    decided = verified_package(ctx, export, "none", "ios/model-fp16.mlpackage", impossible)
    assert decided.passed and any("top-1" in w for w in decided.warnings) and decided.task.exact_match == 1.0
    # ...and a failure under --strict-fidelity, from the same stored record with its gates applied again.
    strict = _router_context(tiny_router, TaskGate(), tmp_path / "work")
    monkeypatch.setattr(coreml_check, "answer_eval_set", never)
    judged = verified_package(strict, export, "none", "ios/model-fp16.mlpackage", impossible)
    assert not judged.passed and any("top-1" in f for f in judged.failures)


def test_an_ios_rung_screened_on_the_task_answers_with_its_eager_compressed_model(
        router_bundle, tiny_router: tuple[Path, Path], tmp_path: Path) -> None:
    from targets.ios.stages import screened_task

    ctx = _router_context(tiny_router, TaskGate(decides=True), tmp_path / "work")
    task = screened_task(ctx, "int4")
    assert task.rows == 6 and task.baseline_exact_match == 1.0 and task.validity == 1.0


class _Scripted(PackageDriver):
    """A driver whose logits name the next token of a script; it records every prediction's (seq, total)."""

    level = "simulated"

    def __init__(self, script: list[int]) -> None:
        self.script, self.window, self.calls = script, None, []

    def reset_state(self) -> None:
        self.calls.clear()

    def predict(self, inputs: dict[str, np.ndarray], last_positions: int | None = None) -> np.ndarray:
        seq, total = inputs["inputIds"].shape[1], inputs["fullAttentionMask"].shape[-1]
        self.calls.append((seq, total))
        logits = np.zeros((1, seq, 16), np.float16)
        logits[0, -1, self.script[len(self.calls) - 1]] = 1.0
        return logits


def test_the_package_is_driven_like_edgemodel_generate_prompt_at_once_then_a_token_per_prediction() -> None:
    driver = _Scripted([7, 8, 9, 10, 11])
    assert list(driver.continuation([1, 2, 3, 4], max_context=7)) == [7, 8, 9]  # 4 + 3 positions fill the context
    assert driver.calls == [(4, 4), (1, 5), (1, 6)]
    assert list(driver.continuation([1] * 7, max_context=7)) == [] and driver.calls == []  # EdgeModel refuses it
    assert driver.greedy([1, 2], 5, eos_ids=[9]) == [7, 8, 9]  # the eos id is kept; nothing predicted after it
    assert driver.calls == [(2, 2), (1, 3), (1, 4)]


class _Positional(PackageDriver):
    """A driver whose program answers `script` after a prompt of `prompt` tokens, whatever it is fed (row q of a
    prediction names script[q + 1 - prompt], by a margin of `margins` at that answer index, default 1);
    it checks drafts and records every prediction's (seq, total)."""

    level = "simulated"
    checks_drafts = True

    def __init__(self, script: list[int], prompt: int, margins: dict[int, float] | None = None) -> None:
        self.script, self.prompt, self.margins, self.window, self.calls = script, prompt, margins or {}, None, []

    def reset_state(self) -> None:
        self.calls.clear()

    def predict(self, inputs: dict[str, np.ndarray], last_positions: int | None = None) -> np.ndarray:
        seq, total = inputs["inputIds"].shape[1], inputs["fullAttentionMask"].shape[-1]
        self.calls.append((seq, total))
        logits = np.zeros((1, seq, 128), np.float32)
        for row, q in enumerate(range(total - seq, total)):
            answer = q + 1 - self.prompt
            if answer >= 0:
                logits[0, row, self.script[answer]] = self.margins.get(answer, 1.0)
        return logits


def test_a_draft_is_checked_in_one_prediction_and_decoding_goes_on_from_the_first_token_it_gets_wrong() -> None:
    driver = _Positional([7, 8, 9, 10, 11, 12], prompt=4)
    # The program picks 7 and 8 as drafted, then 9 where the draft says 99: three tokens from one prediction
    # of prompt + draft, then one token per prediction after the 9, over the draft's stale positions.
    assert list(islice(driver.continuation([1, 2, 3, 4], 16, draft=[7, 8, 99, 10]), 5)) == [7, 8, 9, 10, 11]
    assert driver.calls == [(8, 8), (1, 7), (1, 8)] and driver.drafted == 2 and driver.answered == 5
    # a whole draft right: its prediction also gives the token after it
    driver = _Positional([7, 8, 9], prompt=2)
    assert list(islice(driver.continuation([1, 2], 16, draft=[7, 8]), 3)) == [7, 8, 9]
    assert driver.calls == [(4, 4)]
    # the context still ends the answer: at most max_context - prompt tokens, the draft cut to fit
    driver = _Positional([7, 8, 9, 10], prompt=4)
    assert list(driver.continuation([1, 2, 3, 4], 6, draft=[7, 8, 9])) == [7, 8]
    assert driver.calls == [(5, 5)]


def test_a_close_call_in_the_drafts_prediction_is_decided_by_the_bridges_own_prediction() -> None:
    # answer index 1 is won by less than DRAFT_MARGIN: re-decided by a one-token prediction of the 7 at position 4
    driver = _Positional([7, 8, 9, 10], prompt=4, margins={1: 0.01})
    assert list(islice(driver.continuation([1, 2, 3, 4], 16, draft=[7, 8, 9]), 3)) == [7, 8, 9]
    assert driver.calls == [(7, 7), (1, 5)]
    # a close first token: the prompt alone again, as EdgeModel.generate predicts it, and no draft after it
    driver = _Positional([7, 8, 9, 10], prompt=4, margins={0: 0.01})
    assert list(islice(driver.continuation([1, 2, 3, 4], 16, draft=[7, 8, 9]), 3)) == [7, 8, 9]
    assert driver.calls == [(4, 4), (1, 5), (1, 6)] and driver.drafted == 1


def test_drafted_answers_are_the_packages_own_greedy_tokens(router_bundle) -> None:
    """In the real program: a draft right, half right or wrong changes how many predictions an answer takes,
    never its tokens (a rejected draft's positions, left in the state, are never read)."""
    from targets.ios.verify import SimulatedModel

    _, out = router_bundle
    model = SimulatedModel(out / "ios" / "model-fp16.mlpackage")
    for prompt in ([2, *range(10, 30)], [2, 40, 41, 42, 7, 9]):
        plain = model.greedy(prompt, 6, eos_ids=[])
        for draft in (plain, [*plain[:3], 5, 6], [5, 6, 7]):
            tokens = list(islice(model.continuation(prompt, 256, draft), 6))
            assert tokens == plain, (prompt, draft)


def test_a_constrained_labels_contract_is_answered_with_its_labels_only_through_the_real_program(
        router_bundle, tiny_router) -> None:
    """The package answers as EdgeModel does with LabelChoice: held to two of the router's three labels, every
    answer is one of those two (the billing rows too); unconstrained, the billing rows answer billing, invalid."""
    from transformers import AutoTokenizer

    from packager.contract import Contract
    from packager.verify.task_eval import EvalRow
    from targets.ios.verify import SimulatedModel, answer_eval_set

    _, out = router_bundle
    bundle = out / "ios"
    contract = Contract.from_dict(json.loads((bundle / "edgepack.json").read_text(encoding="utf-8"))["contract"])
    contract.labels = ["cancel", "shipping"]
    rows = [EvalRow(r["instruction"], r["input"], r["output"]) for r in map(json.loads, tiny_router[1].read_text(
        encoding="utf-8").splitlines())]
    tokenizer = AutoTokenizer.from_pretrained(str(bundle))
    model = SimulatedModel(bundle / "model-fp16.mlpackage")
    free, _, _ = answer_eval_set(model, contract, rows, tokenizer, 256, None)
    contract.constrained = True
    held, _, notes = answer_eval_set(model, contract, rows, tokenizer, 256, None)
    assert free.validity == 4 / 6 and free.exact_match == 4 / 6  # the two billing rows say billing
    assert held.validity == 1.0 and held.exact_match == 4 / 6
    assert {m["got"] for m in held.mismatches} <= {"cancel", "shipping"}
    assert any("LabelChoice" in n for n in notes)


def test_non_finite_logits_while_answering_the_eval_set_fail_the_package() -> None:
    from packager.contract import Contract
    from packager.verify.task_eval import EvalRow
    from targets.ios.verify import answer_eval_set

    class Tokenizer:
        def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
            return {"input_ids": [3, 4]}

        def decode(self, ids: list[int]) -> str:
            return "".join("ab"[i % 2] for i in ids)

    class Overflowing(_Scripted):
        def predict(self, inputs: dict[str, np.ndarray], last_positions: int | None = None) -> np.ndarray:
            logits = super().predict(inputs, last_positions)
            logits[0, -1, 5] = np.inf if len(self.calls) == 2 else logits[0, -1, 5]
            return logits

    contract = Contract(task="labels", labels=["ab"], eos_ids=[0], max_new_tokens=4)
    rows = [EvalRow("", "x", "ab")]
    finite = answer_eval_set(_Scripted([2, 1, 0]), contract, rows, Tokenizer(), 64, ["ab"])
    assert finite[0].exact_match == 1.0 and finite[1] == []
    metrics, failures, _ = answer_eval_set(Overflowing([2, 1, 0]), contract, rows, Tokenizer(), 64, ["ab"])
    assert metrics.exact_match == 1.0 and "non-finite" in failures[0]  # a right answer from infinite logits fails


def test_an_answer_computes_only_the_last_row_of_the_logits_with_the_same_numbers(router_bundle) -> None:
    from targets.ios.verify import SimulatedModel

    _, out = router_bundle
    model = SimulatedModel(out / "ios" / "model-fp16.mlpackage")
    ids = [2, *range(10, 40)]
    model.reset_state()
    every = model.step(ids, len(ids))
    model.reset_state()
    last = model.step(ids, len(ids), last_only=True)
    assert every.shape[0] == len(ids) and last.shape[0] == 1  # the lm_head ran on one row
    # The same row: at most one fp16 step apart (a one-row product may sum in another order), same argmax.
    assert np.allclose(last[0], every[-1], rtol=2e-3, atol=1e-3) and np.argmax(last[0]) == np.argmax(every[-1])
    # and the state the answer continues from is the same
    model.reset_state()
    model.step(ids, len(ids))
    whole_next = model.step([5], len(ids) + 1)
    model.reset_state()
    model.step(ids, len(ids), last_only=True)
    assert np.array_equal(model.step([5], len(ids) + 1), whole_next)


def test_fp16_rounding_in_fp32_is_numpys_cast_bit_for_bit() -> None:
    from targets.ios.mil_interpreter import as_declared

    rng = np.random.default_rng(3)
    edges = np.array([0.0, -0.0, 65504.0, 65519.99, 65520.0, -65520.0, 1e-8, -3e-8, 2.0**-24, 2.0**-25,
                      2.0**-25 * 1.0001, 6.1e-5, np.inf, -np.inf, np.nan, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11],
                     np.float32)
    for size in (100, 5000, 100_000):  # numpy's cast below the torch threshold, torch's a grain at a time above
        values = (rng.standard_normal(size) * rng.choice([1e-6, 1.0, 1e3, 1e5], size)).astype(np.float32)
        values[:len(edges)] = edges
        held = as_declared(values.reshape(-1, 10), np.float16)
        expected = values.reshape(-1, 10).astype(np.float16).astype(np.float32)
        assert held.dtype == np.float32
        assert np.array_equal(held, expected, equal_nan=True)
        assert np.array_equal(np.signbit(held), np.signbit(expected))


def test_in_place_cache_updates_give_the_logits_a_copy_would(router_bundle) -> None:
    from targets.ios.verify import SimulatedModel

    _, out = router_bundle
    model = SimulatedModel(out / "ios" / "model-fp16.mlpackage")
    updates = [op for op in model.vm.function.operations if op.op_type == "slice_update"]
    assert updates and len(model.vm.in_place) == len(updates)  # every layer's cache update is in place
    ids = [2, *range(10, 50)]
    fast = model.logits(ids)
    model.vm.in_place = frozenset()  # every update copies its input, as before
    assert np.array_equal(fast, model.logits(ids))


def test_an_expanded_weight_that_is_not_finite_is_found_though_weights_are_scanned_once() -> None:
    import coremltools as ct
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    from targets.ios.mil_interpreter import MilInterpreter

    scale = np.ones((4, 1), np.float16)
    scale[2, 0] = np.nan

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 8), dtype=types.fp16)], opset_version=ct.target.iOS18)
    def program(x):
        weight = mb.constexpr_blockwise_shift_scale(data=np.ones((4, 8), np.int8), scale=scale, name="w")
        return mb.linear(x=x, weight=weight, name="logits")

    vm = MilInterpreter(program)
    vm.predict({"x": np.ones((1, 8), np.float16)})
    assert vm.first_nonfinite == "constexpr_blockwise_shift_scale w"  # named where it starts, not at the logits


@pytest.mark.parametrize("half", [False, True])
def test_weights_are_held_once_in_fp32_with_the_values_of_an_fp16_copy(half: bool,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """With `half`, as for a program above HALF_ABOVE weight values: the weights are held in fp16 and the
    numbers are the same."""
    import coremltools as ct
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    import targets.ios.mil_interpreter as interpreter
    from targets.ios.mil_interpreter import MilInterpreter

    monkeypatch.setattr(interpreter, "HALF_ABOVE", 0 if half else interpreter.HALF_ABOVE)
    monkeypatch.setattr(interpreter, "_HALF_ROWS_VALUES", 128 * 10)  # a linear widened in row blocks
    rng = np.random.default_rng(1)
    dense = rng.normal(size=(64, 128)).astype(np.float16)
    data = rng.integers(-127, 128, size=(64, 128), dtype=np.int8)
    scale = (rng.random((64, 4)) / 50 + 1e-3).astype(np.float16)

    def build():
        @mb.program(input_specs=[mb.TensorSpec(shape=(3, 128), dtype=types.fp16)], opset_version=ct.target.iOS18)
        def program(x):
            expanded = mb.constexpr_blockwise_shift_scale(data=data, scale=scale, name="w8")
            hidden = mb.linear(x=x, weight=dense, name="h")
            return mb.add(x=hidden, y=mb.linear(x=x, weight=expanded, name="q"), name="logits")
        return program

    x = rng.normal(size=(3, 128)).astype(np.float16)
    int8_held_at: dict[str, bool] = {}
    linear = interpreter.KERNELS["linear"]

    def watched(vm: MilInterpreter, op: object) -> object:
        int8_held_at[op.name] = any(isinstance(v, np.ndarray) and v.dtype == np.int8 for v in vm.env.values())
        return linear(vm, op)

    monkeypatch.setitem(interpreter.KERNELS, "linear", watched)
    vm = MilInterpreter(build())
    out = vm.predict({"x": x})["logits"]
    # The int8 data is let go as soon as it is expanded, within the first call (a 4B's int4 data was held
    # beside its expanded weights until the call ended: 4 GB).
    assert set(int8_held_at) == {"h", "q"} and not int8_held_at["q"]
    # What an fp16 copy computes: the weights as fp16 values, each op's sums in fp32, its result rounded to fp16.
    x32 = x.astype(np.float32)
    w8 = (data.astype(np.float32) * np.repeat(scale.astype(np.float32), 32, axis=1)).astype(np.float16)
    h = (x32 @ dense.astype(np.float32).T).astype(np.float16)
    q = (x32 @ w8.astype(np.float32).T).astype(np.float16)
    assert np.array_equal(out, (h.astype(np.float32) + q.astype(np.float32)).astype(np.float16))
    held = [v for v in vm._const_env.values() if isinstance(v, np.ndarray) and v.size >= 4096]
    held_as = np.float16 if half else np.float32
    assert held and all(v.dtype == held_as for v in held)  # the dense weight, in fp32 only (fp16 with `half`)
    assert {v.dtype for v in vm._constants.values() if v.size >= 4096} == {np.dtype(held_as)}  # and expanded ones
    assert not any(v.dtype == np.int8 for v in vm._const_env.values() if isinstance(v, np.ndarray))  # int8 data let go
    consts = [op for op in vm.function.operations if op.op_type == "const" and op.outputs[0].val is None]
    assert len(consts) >= 2  # coremltools' copies of the dense weight and of the int8 data are dropped
    assert np.array_equal(vm.predict({"x": x})["logits"], out)  # and later calls need neither


def test_data_two_expansions_read_is_kept_until_both_are_expanded() -> None:
    """Weights deduplicated when parts are joined can leave one int8 tensor read by two expansions."""
    import coremltools as ct
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    from targets.ios.mil_interpreter import MilInterpreter

    rng = np.random.default_rng(2)
    data = rng.integers(-127, 128, size=(64, 128), dtype=np.int8)
    scales = [(rng.random((64, 4)) / 50 + 1e-3).astype(np.float16) for _ in range(2)]

    @mb.program(input_specs=[mb.TensorSpec(shape=(3, 128), dtype=types.fp16)], opset_version=ct.target.iOS18)
    def program(x):
        shared = mb.const(val=data, name="shared")
        first, second = (mb.constexpr_blockwise_shift_scale(data=shared, scale=s, name=f"w{i}")
                         for i, s in enumerate(scales))
        return mb.add(x=mb.linear(x=x, weight=first), y=mb.linear(x=x, weight=second), name="logits")

    x = rng.normal(size=(3, 128)).astype(np.float16)
    out = MilInterpreter(program).predict({"x": x})["logits"]
    x32 = x.astype(np.float32)
    expected = [(x32 @ (data.astype(np.float32) * np.repeat(s.astype(np.float32), 32, axis=1))
                 .astype(np.float16).astype(np.float32).T).astype(np.float16) for s in scales]
    assert np.array_equal(out, (expected[0].astype(np.float32) + expected[1].astype(np.float32)).astype(np.float16))


# ---------------------------------------------------------------------------------------------
# Compatibility shim: it must still be needed (this fails once coremltools fixes the bug).

_UPSTREAM_PROBE = """
import coremltools as ct, numpy as np, torch

class Half(torch.nn.Module):
    def forward(self, x):
        return x[..., x.shape[-1] // 2:]

traced = torch.jit.trace(Half(), torch.zeros(1, 3, 8))
try:
    ct.convert(traced, inputs=[ct.TensorType(shape=(1, ct.RangeDim(1, 16), 8))],
               minimum_deployment_target=ct.target.iOS18, skip_model_load=True)
    print("CONVERTS")
except TypeError as exc:
    print("TYPEERROR", exc)
"""


def test_coremltools_still_needs_the_scalar_cast_shim() -> None:
    proc = subprocess.run([sys.executable, "-c", _UPSTREAM_PROBE], capture_output=True, text=True, timeout=300,
                          check=False)
    assert "TYPEERROR" in proc.stdout, (
        "coremltools converts int() of a one-element constant without edgepack's shim now: delete "
        "targets/ios/compat.py's shim and this test.\n" + proc.stdout[-2000:] + proc.stderr[-2000:])
    shimmed = "from targets.ios import compat\ncompat.apply()\n" + _UPSTREAM_PROBE
    patched = subprocess.run([sys.executable, "-c", shimmed], capture_output=True, text=True, timeout=300, check=False,
                             cwd=REPO)
    assert "CONVERTS" in patched.stdout, patched.stderr[-2000:]


def test_the_fp16_weight_writer_writes_the_bytes_coremltools_writes(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from coremltools.converters.mil.backend.mil import helper
    from coremltools.converters.mil.mil import types
    from coremltools.libmilstoragepython import _BlobStorageWriter

    from targets.ios import compat

    compat.apply()
    rng = np.random.default_rng(3)
    weights = [rng.normal(size=(48, 40)).astype(np.float16), rng.normal(size=(40, 48)).astype(np.float16).T,
               np.array([np.inf, -0.0, 6e-8, 65504], dtype=np.float16)]  # contiguous, a transposed view, specials
    writers = {"coremltools": compat.ORIGINALS["write weight"], "shim": helper._get_offset_by_writing_data}
    for name, write in writers.items():
        writer = _BlobStorageWriter(str(tmp_path / f"{name}.bin"))
        offsets = [write(SimpleNamespace(val=w, dtype=types.fp16), writer) for w in weights]  # what it reads of a var
        del writer
        assert offsets == sorted(offsets)
    assert (tmp_path / "shim.bin").read_bytes() == (tmp_path / "coremltools.bin").read_bytes()
    assert helper._get_offset_by_writing_data is not compat.ORIGINALS["write weight"]


def test_the_weight_reader_reads_what_coremltools_reads_without_keeping_the_file_mapped(tiny_gemma: Path,
                                                                                        tmp_path: Path) -> None:
    """coremltools keeps its reader (a mapping of the whole weight file) for the rest of a load; the shim reads
    the same values and keeps none (this fails once coremltools stops keeping it, so the shim can go)."""
    from types import SimpleNamespace

    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto import load as milproto_load
    from coremltools.converters.mil.frontend.milproto.helper import proto_to_types

    from targets.ios import compat
    from targets.ios.convert import ExportRequest, export_package

    compat.apply()
    result = export_package(ExportRequest(checkpoint=str(tiny_gemma), out_dir=str(tmp_path), compressions=["int4"],
                                          max_context=32, sequences=[[2, 10, 11]], name="tiny"))
    saved = ct.models.MLModel(str(tmp_path / result["packages"]["int4"]["package"]), skip_model_load=True)
    spec = saved.get_spec()
    block = spec.mlProgram.functions["main"].block_specializations[spec.mlProgram.functions["main"].opset]
    values = [v for op in block.operations for v in op.attributes.values() if v.WhichOneof("value") == "blobFileValue"]
    assert len(values) > 10
    readers = {"coremltools": compat.ORIGINALS["read weight"], "shim": milproto_load._load_file_value}
    read: dict[str, list[np.ndarray]] = {}
    kept: dict[str, int] = {}
    for name, reader in readers.items():
        context = SimpleNamespace(weights_dir=saved.weights_dir, blob_reader_from_filename={})
        read[name] = [np.array(reader(context, v.blobFileValue, proto_to_types(v.type).get_primitive()))
                      for v in values]
        kept[name] = len(context.blob_reader_from_filename)
    assert kept == {"coremltools": 1, "shim": 0}
    assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(read["coremltools"], read["shim"],
                                                                           strict=True))


def test_the_fast_fp16_range_test_answers_as_coremltools_does() -> None:
    from coremltools.converters.mil.mil.passes.defs.quantization import FP16ComputePrecision

    from targets.ios.compat import exceeds_fp16

    def upstream(value: np.ndarray) -> bool:  # coremltools 9.0's per-constant expression, verbatim
        abs_value = np.abs(np.expand_dims(value, 0))
        return bool(np.max(abs_value[np.where(abs_value < 1e38)], initial=0.0) > 65504)

    rng = np.random.default_rng(0)
    cases = [rng.normal(size=(64, 32)).astype(np.float32), np.float32(3.0), np.zeros((0,), np.float32),
             np.array([65504.0, -65504.0], np.float32), np.array([65505.0], np.float32),
             np.array([-70000.0, 1.0], np.float32), np.array([np.inf, -np.inf, 1.0], np.float32),
             np.array([np.nan, 2.0], np.float32), np.array([np.nan, 1e5], np.float32),
             np.array([np.nan, np.nan], np.float32), np.array([3e38, 1.0], np.float32),
             np.array([-1e30, 0.5], np.float32)]
    for value in cases:
        assert exceeds_fp16(value) == upstream(np.asarray(value)), value
    # apply() is what the conversion child calls: it must put this test in coremltools' pass.
    from targets.ios import compat

    compat.apply()
    assert FP16ComputePrecision.fp16_overflow is compat._fp16_overflow


def test_traced_decoder_needs_no_alias_shim(tiny_gemma: Path) -> None:
    model = _hf(tiny_gemma)
    spec, _ = _spec(tiny_gemma)
    decoder = StatefulDecoder(model, spec, 64, Fp16Plan(True)).eval()
    full, sliding = additive_masks(2, 3, 32)
    traced = torch.jit.trace(decoder, (torch.zeros(1, 2, dtype=torch.int32), full, sliding), check_trace=False)
    assert "aten::alias" not in {node.kind() for node in traced.inlined_graph.nodes()}


# ---------------------------------------------------------------------------------------------
# Swift: syntax, API names, escaping.


def _bridge_texts() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted(BRIDGE.rglob("*.swift"))]


def test_bridge_sources_parse_with_tree_sitter_swift() -> None:
    for path in sorted(BRIDGE.rglob("*.swift")):
        assert syntax_errors(path.read_text(encoding="utf-8")) == [], path


@pytest.mark.parametrize(("right", "wrong"), [
    ("prediction(from: provider, using: state)", "prediction(from: provider, usingState: state)"),
    ("model.makeState()", "model.newState()"),
    ("AutoTokenizer.from(modelFolder: folder)", "AutoTokenizer.from(folder: folder)"),
    ("multiArrayValue", "multiArray"),
])
def test_a_misspelt_core_ml_or_swift_transformers_member_is_caught(right: str, wrong: str) -> None:
    texts = _bridge_texts()
    assert unknown_api_names(texts) == []
    broken = [t.replace(right, wrong) for t in texts]
    assert broken != texts
    assert unknown_api_names(broken) != []


@pytest.mark.parametrize(("right", "wrong"), [
    ("CoreAILanguageModel(resourcesAt: folder, mode: .eager)", "CoreAILanguageModel(contentsOf: folder, mode: .eager)"),
    ("mode: .eager", "mode: .immediate"),
    ("LanguageModelSession(model: model)", "LanguageModelSession(languageModel: model)"),
    ("streamResponse(to: prompt, options: options)", "streamResponse(to: prompt, generationOptions: options)"),
    ("samplingMode: .greedy", "samplingMode: .argmax"),
    ("snapshot.usage.input.totalTokenCount", "snapshot.usage.input.tokenCount"),
])
def test_a_misspelt_foundation_models_or_core_ai_member_is_caught(right: str, wrong: str) -> None:
    texts = _bridge_texts()
    assert unknown_api_names(texts) == []
    broken = [t.replace(right, wrong) for t in texts]
    assert broken != texts
    assert unknown_api_names(broken) != []


def test_the_core_ai_path_is_gated_by_ios_27_behind_one_entry_point() -> None:
    core_ai = (BRIDGE / "Sources" / "EdgeModel" / "CoreAIModel.swift").read_text(encoding="utf-8")
    entry = (BRIDGE / "Sources" / "EdgeModel" / "ContractModel.swift").read_text(encoding="utf-8")
    # Compiled only where the app links Apple's CoreAILM, and available only from iOS 27 / macOS 27.
    assert core_ai.startswith("//") and "#if canImport(CoreAILanguageModels)" in core_ai
    assert "@available(iOS 27, macOS 27, *)\npublic final class CoreAIModel: ContractModel" in core_ai
    assert "CoreAILanguageModel(resourcesAt:" in core_ai and "LanguageModelSession(model: model)" in core_ai
    # The contract is applied as on the Core ML path: greedy, max_new_tokens, stop strings, parseOutput.
    assert "samplingMode: .greedy, maximumResponseTokens: contract.maxNewTokens" in core_ai
    # Stop strings and cancel through the step both paths share (ContractModel.swift's streamedStep).
    assert "streamedStep(from: text, to: content, contract: contract" in core_ai
    assert "parseOutput(contract, raw: text)" in core_ai
    assert "func streamedStep(" in entry and "contract.stopStrings" in entry
    # One entry point picks the runtime at run time: Core AI under #available(iOS 27, ...), else Core ML.
    gate = entry.index("if #available(iOS 27, macOS 27, *)")
    assert gate < entry.index("CoreAIModel.load(from: folder)") < entry.index("EdgeModel.load(from: folder")
    core_ml = (BRIDGE / "Sources" / "EdgeModel" / "EdgeModel.swift").read_text(encoding="utf-8")
    assert "public final class EdgeModel: ContractModel" in core_ml
    manifest = (BRIDGE / "CoreAI" / "Package.swift").read_text(encoding="utf-8")
    assert '.product(name: "CoreAILM", package: "coreai-models")' in manifest and '.iOS("27.0")' in manifest
    assert "coreai-models" not in (BRIDGE / "Package.swift").read_text(encoding="utf-8")


def _app_context(**overrides) -> dict:
    context = {
        "model_name": "bot", "slug": "bot", "bundle_id": "org.edgepack.sample.bot",
        "package": "model-int4.mlpackage", "packages": ["model-int4.mlpackage"], "compression_summary": "int4",
        "compute_units": "cpuAndNeuralEngine", "max_context": 256, "sliding_window": 0,
        "swift_transformers_version": "1.0.0", "deployment_target": "18.0", "task": "labels",
        "labels": ["a"], "instruction": "", "sample_input": "hi", "verification_rows": [],
        "edgepack_version": "0.1.0", "coreai_asset": "", "coreai_summary": "", "coreai_models_version": "1.0.0",
        "runtime_note": "Core ML package (iOS 18+).", "specialists": [],
    }
    return {**context, **overrides}


@pytest.mark.parametrize("packages", [["model-int4.mlpackage"], []])
def test_the_app_carries_the_aimodel_and_core_ai_only_when_the_bundle_has_one(packages: list[str],
                                                                              tmp_path: Path) -> None:
    import yaml

    plain = render_tree("ios", tmp_path / "plain", _app_context())
    project = (tmp_path / "plain" / "project.yml").read_text(encoding="utf-8")
    readme = (tmp_path / "plain" / "README.md").read_text(encoding="utf-8")
    assert ".aimodel" not in project and "coreai-models" not in project and "Core AI" not in readme
    written = render_tree("ios", tmp_path / "coreai", _app_context(
        package=packages[0] if packages else "", packages=packages, coreai_asset="model-int8.aimodel",
        coreai_summary="int8 linears", deployment_target="27.0", runtime_note="Core AI only: needs iOS 27"))
    project = yaml.safe_load((tmp_path / "coreai" / "project.yml").read_text(encoding="utf-8"))
    sources = [s["path"] for s in project["targets"]["EdgepackSample"]["sources"]]
    assert {"../model-int8.aimodel", "../metadata.json", "../tokenizer"} <= set(sources)
    assert [f"../{p}" for p in packages] == [s for s in sources if s.endswith(".mlpackage")]
    assert project["options"]["deploymentTarget"]["iOS"] == "27.0"
    readme = (tmp_path / "coreai" / "README.md").read_text(encoding="utf-8")
    assert "coreai-models" in readme and "inputs `input_ids` and\n`position_ids`" in readme
    assert ("falls back to the Core ML package" in readme) == bool(packages)
    assert ("Compile the model yourself" in readme) == bool(packages)
    info = (tmp_path / "coreai" / "Sources" / "BuildInfo.swift").read_text(encoding="utf-8")
    assert 'static let coreAIAsset = "model-int8.aimodel"' in info and "Core AI only: needs iOS 27" in info
    swift = [p.read_text(encoding="utf-8") for p in [*plain, *written] if p.suffix == ".swift"]
    assert all(syntax_errors(t) == [] for t in swift) and unknown_api_names([*_bridge_texts(), *swift]) == []


def test_hostile_name_and_labels_are_escaped_in_swift_yaml_and_markdown(tmp_path: Path) -> None:
    import yaml

    context = _app_context(model_name=HOSTILE_NAME, compression_summary=HOSTILE_NAME, labels=HOSTILE_LABELS,
                           instruction=HOSTILE_NAME, sample_input="a\u2028b\x00c", runtime_note=HOSTILE_NAME)
    written = render_tree("ios", tmp_path, context)
    info = (tmp_path / "Sources" / "BuildInfo.swift").read_text(encoding="utf-8")
    assert syntax_errors(info) == []
    for value in [HOSTILE_NAME, *HOSTILE_LABELS]:
        assert swift_string(value) in info
    project = yaml.safe_load((tmp_path / "project.yml").read_text(encoding="utf-8"))
    settings = project["targets"]["EdgepackSample"]["settings"]["base"]
    assert settings["INFOPLIST_KEY_CFBundleDisplayName"] == HOSTILE_NAME
    assert unknown_api_names([*_bridge_texts(), *(p.read_text() for p in written if p.suffix == ".swift")]) == []


def test_neural_engine_variant_splits_the_lm_head_and_simulates_to_the_same_logits(tiny_gemma: Path,
                                                                                   tmp_path: Path) -> None:
    from targets.ios.convert import ExportRequest, export_package
    from targets.ios.mil_interpreter import load_program
    from targets.ios.verify import SimulatedModel

    ids = [2, *range(10, 40)]
    logits = {}
    for chunk in (0, 256):
        out = tmp_path / f"chunk{chunk}"
        out.mkdir()
        result = export_package(ExportRequest(checkpoint=str(tiny_gemma), out_dir=str(out), compressions=["int4"],
                                              max_context=64, sequences=[ids], name="tiny", lm_head_chunk=chunk))
        package = out / result["packages"]["int4"]["package"]
        logits[chunk] = SimulatedModel(package).logits(ids)
    program, _ = load_program(package)
    linears = [op for op in program.functions["main"].operations if op.op_type == "linear"]
    assert package.name == "model-int4-ane.mlpackage"
    assert max(int(op.inputs["weight"].shape[0]) for op in linears[-3:]) <= 256  # the head is in chunks
    assert abs(logits[0] - logits[256]).max() <= 1e-2 * abs(logits[0]).max()


def test_a_decoder_converted_in_parts_is_joined_into_the_program_of_the_whole(
        tiny_gemma: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint above the streaming threshold is read a block at a time and converted a block at a time (the
    thresholds lowered here so that the tiny model takes that path): the joined package computes the whole
    program's logits bit for bit, holds the tied table once, and the parts are gone."""
    import packager.verify.fp32_model as fp32_model
    import targets.ios.convert_parts as convert_parts
    from targets.ios.convert import ExportRequest, export_package
    from targets.ios.join_parts import WEIGHTS, read_blobs
    from targets.ios.mil_interpreter import load_program
    from targets.ios.stages import CoreMLConversion
    from targets.ios.verify import SimulatedModel, check_spec

    ids = [2, *range(10, 40)]
    sequences = [ids, [2, *range(50, 90)]]
    results, logits = {}, {}
    for mode in ("whole", "parts"):
        if mode == "parts":
            monkeypatch.setattr(fp32_model, "STREAM_ABOVE", 0)
            monkeypatch.setattr(convert_parts, "PART_BYTES", 1)
        out = tmp_path / mode
        out.mkdir()
        results[mode] = export_package(ExportRequest(
            checkpoint=str(tiny_gemma), out_dir=str(out), compressions=["int4", "none"], max_context=64,
            sequences=sequences, name="tiny"))
        logits[mode] = {name: SimulatedModel(out / info["package"]).logits(ids)
                        for name, info in results[mode]["packages"].items()}
    parts = results["parts"]
    assert parts["parts"] == [[0, 1], [1, 2]] and "parts" not in results["whole"]
    assert CoreMLConversion.from_dict({**parts, "wall_seconds": 1.0}).parts == [[0, 1], [1, 2]]  # the stage reads it
    assert parts["fp16_plan"] == results["whole"]["fp16_plan"] and parts["proof"]["exact"]
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["model-fp16.mlpackage", "model-int4.mlpackage"]
    for name in ("int4", "none"):
        assert np.array_equal(logits["parts"][name], logits["whole"][name]), name
        package = tmp_path / "parts" / parts["packages"][name]["package"]
        program, spec = load_program(package)
        assert check_spec(spec, 64, True)[0] == []
        ops = program.functions["main"].operations
        head = [op for op in ops if op.op_type == "linear"][-1]  # the tied head reads the lookup's table
        assert any(op.op_type == "gather" and op.inputs["x"] is head.inputs["weight"] for op in ops)
        whole_blobs = read_blobs(tmp_path / "whole" / results["whole"]["packages"][name]["package"] / WEIGHTS)
        assert sum(b.size for b in read_blobs(package / WEIGHTS)) <= sum(b.size for b in whole_blobs)


# ---------------------------------------------------------------------------------------------
# The real model (run under `flock /tmp/ep-heavy.lock`): the bars on Gemma 3 270M.


@pytest.mark.real_model
def test_gemma_270m_builds_for_ios_and_passes_the_simulated_gates(gemma_270m: Path, tmp_path: Path) -> None:
    from packager.progress import Reporter

    outcome = run_build(BuildRequest(checkpoint=gemma_270m, targets=["ios", "raspberry-pi"], out=tmp_path / "dist",
                                     options=BuildOptions(context_length=512)), Reporter(quiet=True))
    results = {r.target: r for r in outcome.results}
    fp16, int4 = results["ios"].verifications  # int4, or int4-mixed when int4 failed (see the notes)
    q4_k_m = results["raspberry-pi"].verifications[0]
    assert outcome.passed and fp16.level == int4.level == "simulated"
    assert fp16.metrics.top1 >= 0.98 and fp16.metrics.cosine > 0.99
    assert int4.metrics.positions == q4_k_m.metrics.positions
    assert int4.metrics.top1 >= q4_k_m.metrics.top1 - 0.02, (int4.metrics, q4_k_m.metrics)
    plan = results["ios"].extra["export"]["fp16_plan"]
    assert plan["residual_scale"] > 1  # Gemma's residual stream needed the rescale


# ---------------------------------------------------------------------------------------------
# A LoRA input: its base at 4 bits with the adapter applied apart in fp16 (int4-adapter).


def _on_a_4_bit_grid(source: Path, dest: Path) -> Path:
    """`source` with every decoder linear moved onto a 4-bit affine grid (saved in fp32), as a base dequantized
    from a 4-bit GGUF (the bundled example's) or a QAT release is."""
    import shutil

    model = _hf(source)
    with torch.no_grad():
        for name, module in model.named_modules():
            if decoder_linear_key(name) and isinstance(module, torch.nn.Linear):
                module.weight.copy_(torch.from_numpy(dequantize(*searched_affine(module.weight.numpy(), 4, 32))))
    model.save_pretrained(str(dest))
    for side in source.iterdir():
        if side.suffix != ".safetensors" and side.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy(side, dest / side.name)
    return dest


@pytest.fixture(scope="module")
def lora_bundle(tiny_gemma: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path, Path, Path]:
    """A random LoRA on a tiny Gemma whose linears lie on a 4-bit grid, built for iOS with the default ladder
    (no gate: cost is seconds)."""
    from packager.progress import Reporter
    from tests.tiny_models import make_adapter

    root = tmp_path_factory.mktemp("ios-lora")
    base = _on_a_4_bit_grid(tiny_gemma, root / "base")
    adapter = make_adapter(base, root / "adapter")
    outcome = run_build(BuildRequest(checkpoint=adapter, base=base, targets=["ios"], out=root / "dist",
                                     options=BuildOptions(context_length=256, no_gate=True)), Reporter(quiet=True))
    return outcome, root / "dist" / "ios", adapter, base


def test_a_lora_input_ships_its_base_at_4_bits_and_the_adapter_apart_in_fp16(lora_bundle) -> None:
    from targets.ios.mil_interpreter import load_program

    outcome, bundle, _, _ = lora_bundle
    result = outcome.results[0]
    assert result.extra["compression"] == "int4-adapter"  # the ladder's first rung for an adapter input
    assert result.extra["export"]["proof"]["exact"]  # base + (x A^T) B^T equals the merged model in fp32
    program, _ = load_program(bundle / "model-int4-adapter.mlpackage")
    ops = program.functions["main"].operations
    lora = [op for op in ops if "_lora_" in op.outputs[0].name]
    # make_adapter adapts q/v/o/down in both layers: 8 modules, an A and a B each, kept as fp16 consts.
    assert len(lora) == 16 and all(op.op_type == "const" and op.outputs[0].val.dtype == np.float16 for op in lora)
    compressed = {op.outputs[0].name for op in ops if op.op_type == "constexpr_blockwise_shift_scale"}
    assert "blocks_0_q_proj_weight_to_fp16_quantized" in compressed  # the base's weight, at 4 bits
    shipped = result.verifications[-1]
    assert shipped.level == "simulated" and shipped.metrics is not None and shipped.metrics.finite


def test_the_consts_chosen_for_compression_are_the_ones_coremltools_lists(lora_bundle) -> None:
    """compress() lists the package's large consts and their readers itself (one program load, no statistics)."""
    import coremltools as ct
    import coremltools.optimize.coreml as cto
    from coremltools.converters.mil.frontend.milproto.load import load
    from coremltools.models.utils import _convert_model_spec_to_pymil_prog

    from packager.fingerprint import cache_root
    from targets.ios.convert import COMPRESSION, large_consts, split_by_bits

    shipped = (lora_bundle[1] / "model-int4-adapter.mlpackage" / "Data").rglob("weight.bin")
    weights = next(shipped).read_bytes()
    # The fp16 package the shipped one was compressed from: its conversion's stage-cache entry.
    fp16 = next(entry / "model-fp16.mlpackage" for entry in (cache_root() / "coreml").iterdir()
                if (entry / "model-fp16.mlpackage").is_dir() and any(
                    w.read_bytes() == weights for w in entry.glob("model-int4-adapter.mlpackage/Data/**/weight.bin")))
    mlmodel = ct.models.MLModel(str(fp16), skip_model_load=True)
    theirs = {name: {child.op_type for child in meta.child_ops}
              for name, meta in cto.get_weights_metadata(mlmodel, weight_threshold=2048).items()}
    ours = large_consts(_convert_model_spec_to_pymil_prog(mlmodel, mlmodel.get_spec().specificationVersion, load))
    assert ours == theirs and len(ours) > 10
    four, eight = split_by_bits(ours, COMPRESSION["int4-adapter"])
    assert not any("_lora_" in name for name in four + eight)  # the adapter stays fp16
    assert any(name.startswith("embedding") for name in eight) and "blocks_0_q_proj_weight_to_fp16" in four


def test_the_adapter_kept_apart_keeps_the_fine_tune_a_4_bit_merge_rounds_away(lora_bundle, tmp_path: Path) -> None:
    from packager.adapter import AdapterSource
    from packager.checkpoint import load_checkpoint
    from packager.verify.fp32_model import load_fp32_whole
    from targets.ios.verify import eager_compressed_model

    _, _, adapter, base = lora_bundle
    merged = load_checkpoint(adapter, base=base, work_dir=tmp_path / "work")
    ids = torch.tensor([list(range(2, 60))])
    with torch.no_grad():
        reference = load_fp32_whole(merged.folder, "eager")(ids).logits

        def error(compression: str, source: AdapterSource | None = None) -> float:
            model = eager_compressed_model(merged.folder, COMPRESSION[compression], source)
            return float((model(ids).logits - reference).abs().max())

        apart = error("int4-adapter", AdapterSource.of(merged))
        at_4_bits = error("int4")
    # The base's linears are found on their grid, so only the 8-bit embedding table's error is left; a merge at 4
    # bits rounds the adapter's product onto a grid of its own.
    assert 0 < apart < 0.2 * at_4_bits, (apart, at_4_bits)


def test_int4_adapter_for_a_whole_model_is_refused_before_any_work(tiny_gemma: Path, tmp_path: Path) -> None:
    from packager.errors import BadInputError

    with pytest.raises(BadInputError, match="whole model"):
        _build(tiny_gemma, tmp_path / "out", compression="int4-adapter", context_length=256)
    assert not (tmp_path / "out" / "ios").exists()


# ---------------------------------------------------------------------------------------------
# The searched, activation-weighted affine quantizer (numpy, milliseconds).


def _min_max_error(w: np.ndarray, bits: int, block: int) -> np.ndarray:
    levels = 2 ** bits - 1
    b = w.reshape(w.shape[0], -1, block)
    low, high = b.min(-1, keepdims=True), b.max(-1, keepdims=True)
    step = np.where(high > low, (high - low) / levels, 1.0)
    return np.square(np.clip(np.rint((b - low) / step), 0, levels) * step + low - b).reshape(w.shape)


def test_searched_affine_reproduces_a_block_already_on_a_4_bit_grid() -> None:
    rng = np.random.default_rng(0)
    q = rng.integers(2, 13, size=(8, 64))  # 11 of 16 levels used: min/max rounding would not land on it
    step = rng.uniform(0.01, 0.05, size=(8, 2, 1)).repeat(32, axis=2).reshape(8, 64)
    w = (q * step - 0.2).astype(np.float32)
    data, scale, offset = searched_affine(w, 4, 32)
    assert np.abs(dequantize(data, scale, offset) - w).max() < 2e-3 * np.abs(w).max()  # fp16 scale rounding only


def test_searched_affine_never_loses_to_min_max_rounding_and_weights_the_columns_that_matter() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 128)).astype(np.float32)
    plain = dequantize(*searched_affine(w, 4, 32))
    assert np.square(plain - w).sum() <= _min_max_error(w, 4, 32).sum() * 1.001
    importance = np.ones(128, np.float32)
    importance[::16] = 400.0  # a few outlier activation channels, as in Gemma's residual stream
    weighted = dequantize(*searched_affine(w, 4, 32, importance))
    err_plain = (np.square(plain - w) * importance).sum()
    err_weighted = (np.square(weighted - w) * importance).sum()
    assert err_weighted < 0.8 * err_plain, (err_weighted, err_plain)


def test_quantizer_finds_each_linears_calibration_weights_by_name() -> None:
    # the Core ML const of a decoder linear and the transformers module it came from share one key
    assert const_key("blocks_11_down_proj_weight_to_fp16") == decoder_linear_key("model.layers.11.mlp.down_proj")
    assert const_key("blocks_0_q_proj_weight_to_fp16") == decoder_linear_key("model.layers.0.self_attn.q_proj")
    assert const_key("embedding_to_fp16") is None and decoder_linear_key("lm_head") is None
    assert COMPRESSION["int4-mixed"].linear_bits("model.layers.0.self_attn.q_proj") == 8
    assert COMPRESSION["int4-mixed"].linear_bits("blocks_0_o_proj_weight_to_fp16") == 4
    assert COMPRESSION["int8"].linear_bits("blocks_0_o_proj_weight_to_fp16") == 8


def test_a_weak_q4_k_m_baseline_cannot_lower_the_compressed_gate_below_the_4_bit_class_gate() -> None:
    from packager.verify.gates import LOW_BIT, TopOneGate
    from packager.verify.metrics import FidelityMetrics

    # a fine-tune whose Q4_K_M lost it (top-1 0.601): 0.78 clears "within 0.02" but not KL / decisive top-1
    gate = TopOneGate("within 0.02 of llama.cpp Q4_K_M (0.601)", 0.581, also=LOW_BIT)
    weak = FidelityMetrics(positions=509, top1=0.78, top1_decisive=0.80, decisive_positions=480, kl=0.14,
                           ppl_ref=None, ppl=None)
    good = FidelityMetrics(positions=509, top1=0.93, top1_decisive=0.97, decisive_positions=480, kl=0.012,
                           ppl_ref=None, ppl=None)
    assert len(gate.check(weak)) == 2 and gate.check(good) == []
    assert "3-6-bit" in gate.describe()


def test_when_the_task_decides_a_4_bit_package_needs_no_q4_k_m_baseline() -> None:
    from types import SimpleNamespace

    from packager.verify.gates import EIGHT_BIT, LOW_BIT
    from targets.ios.target import IosTarget

    def no_baseline(*_args):
        raise AssertionError("a Q4_K_M baseline was built")

    decides = SimpleNamespace(eval_rows=[object()], options=SimpleNamespace(task_gate=TaskGate(decides=True)),
                              verify_gguf=no_baseline)
    assert IosTarget()._gate(decides, "int4-adapter", []) is LOW_BIT  # its fidelity misses are warnings
    assert IosTarget()._gate(decides, "int8", []) is EIGHT_BIT
    strict = SimpleNamespace(**{**vars(decides), "options": SimpleNamespace(task_gate=TaskGate())})
    with pytest.raises(AssertionError, match="baseline was built"):  # both gates hold: Q4_K_M's is one of them
        IosTarget()._gate(strict, "int4", [])
