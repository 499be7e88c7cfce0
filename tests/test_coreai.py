"""The ios target's Core AI format: an .aimodel converted from tiny models with coreai-torch and run in Apple's
reference interpreter (coreai-core, on this host's CPU: level `simulated`), judged like the Core ML package.

Each build is made once per module (a tiny model converts in about 10 s and runs in a few). The tests need
coreai-torch, coreai-core and coreai-opt: they are skipped where those are missing, unless
EDGEPACK_REQUIRE_TOOLS=1 (CI), which makes a missing package a failure.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from cli_helpers import edgepack, leftovers
from external_tools import tools_required

from packager.errors import ExitCode, GateFailedError
from packager.pipeline import BuildRequest, run_build
from packager.stages import BuildOptions
from packager.verify.gates import EIGHT_BIT, TaskGate


@pytest.fixture(scope="module", autouse=True)
def coreai_packages() -> None:
    from targets.ios.coreai_export import COREAI_PACKAGES

    missing = COREAI_PACKAGES.missing()
    if missing:
        message = f"{', '.join(missing)} not installed (scripts/setup.sh installs them)"
        if tools_required():
            pytest.fail(f"{message}, and EDGEPACK_REQUIRE_TOOLS=1 says every check must run")
        pytest.skip(message)


def _build(folder: Path, out: Path, ios_format: str, coreai: str = "none", compression: str = "none",
           fp16_rewrites: bool = True, check_minutes: float | None = None, coreai_precision: str = "mixed",
           **options):
    ios = {"format": ios_format, "coreai_compression": coreai, "compression": compression,
           "fp16_rewrites": fp16_rewrites, "coreai_precision": coreai_precision}
    if check_minutes is not None:
        ios["coreai_check_minutes"] = check_minutes
    return run_build(BuildRequest(checkpoint=folder, targets=["ios"], out=out,
                                  options=BuildOptions(target_options={"ios": ios}, context_length=256, **options)))


def _coreai_result(outcome):
    [result] = [v for v in outcome.results[0].verifications if v.format == "aimodel"]
    return result


@pytest.fixture(scope="module")
def router_aimodel(tiny_router: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    """The fine-tuned tiny Gemma router as an fp16 .aimodel only, with its eval set (the task decides)."""
    model, eval_path = tiny_router
    out = tmp_path_factory.mktemp("coreai") / "router"
    outcome = _build(model, out, "coreai", eval_path=eval_path, task={"task": "labels"},
                     task_gate=TaskGate(decides=True))
    return outcome, out / "ios"


@pytest.fixture(scope="module")
def llama_both(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory):
    """Tiny Llama with --ios-format all: the fp16 Core ML package and app, and an fp16 .aimodel beside them."""
    out = tmp_path_factory.mktemp("coreai") / "llama"
    return _build(tiny_llama, out, "all"), out / "ios"


def test_gemma_fp16_aimodel_matches_fp32_in_apples_interpreter_through_prefill_and_decode(router_aimodel) -> None:
    outcome, _ = router_aimodel
    assert outcome.passed
    result = _coreai_result(outcome)
    assert result.level == "simulated" and result.format == "aimodel" and result.quant == "none"
    assert "reference interpreter" in result.runtime and "input_ids, position_ids -> logits" in result.runtime
    assert result.metrics.top1 >= 0.98 and result.metrics.nonfinite_positions == 0
    assert result.greedy_match, (result.greedy_text, result.greedy_text_reference)
    assert any("not an iPhone's Neural Engine or GPU" in n for n in result.notes)


def test_the_aimodel_answers_the_eval_set_through_its_own_state_within_the_task_gate(router_aimodel) -> None:
    outcome, _ = router_aimodel
    task = _coreai_result(outcome).task
    assert task is not None and task.rows == 6 and len(task.latencies_ms) == 6 and min(task.latencies_ms) > 0
    assert task.baseline_exact_match == 1.0 and task.exact_match == 1.0 and task.validity == 1.0
    assert task.agreement == 1.0 and not task.constrained


def test_apples_interpreter_is_held_to_its_minutes_and_the_report_says_what_it_left_out(
        router_aimodel, tiny_router: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Apple's interpreter takes an hour or more on a real model in fp16: past its budget, the golden sequences are
    cut and eval rows left out, and the result says how many ran (the .aimodel comes from the stage cache). The
    tiny model is too fast to run out of any budget, so the budget is as a slow model's would be measured: 1 s
    per prediction, 40 s for the golden text, 5 s for the rows."""
    from targets.ios import coreai_verify

    def slow(cls, driver, ids, minutes, with_eval, apart=False):
        return cls(minutes, 1.0, 0.01, 40.0, 5.0 if with_eval else 0.0, apart)

    monkeypatch.setattr(coreai_verify.CheckBudget, "measured", classmethod(slow))
    full = _coreai_result(router_aimodel[0])
    model, eval_path = tiny_router
    outcome = _build(model, tmp_path / "out", "coreai", eval_path=eval_path, task={"task": "labels"},
                     task_gate=TaskGate(decides=True), check_minutes=0.0021)
    result = _coreai_result(outcome)
    [cut] = [n for n in result.notes if n.startswith("only the first")]
    per_sequence = int(cut.split()[3])
    assert per_sequence < 256 and result.metrics.positions < full.metrics.positions
    assert f"{result.metrics.positions} of " in cut and "--coreai-check-minutes" in cut
    [rows] = [n for n in result.notes if n.startswith("task: only the first")]
    answered = int(rows.split()[4])
    assert answered < 6 and "of 6 eval rows" in rows
    assert (result.task is None) == (answered == 0)
    assert result.task is None or (result.task.rows, result.task.of_rows) == (answered, 6)


def test_with_two_cores_the_eval_rows_run_in_a_second_interpreter_and_the_result_says_so(router_aimodel) -> None:
    from packager.threads import compute_threads

    notes = _coreai_result(router_aimodel[0]).notes
    assert any("second Apple interpreter process" in n for n in notes) == (compute_threads() >= 2), notes


def test_with_one_core_the_rows_are_answered_here_after_the_golden_text(
        router_aimodel, tiny_router: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from targets.ios import coreai_stages

    monkeypatch.setattr(coreai_stages, "compute_threads", lambda: 1)
    model, eval_path = tiny_router
    # Another budget: another verification record, so this one is computed here (the asset comes from the cache).
    outcome = _build(model, tmp_path / "out", "coreai", eval_path=eval_path, task={"task": "labels"},
                     task_gate=TaskGate(decides=True), check_minutes=29)
    result, fixture = _coreai_result(outcome), _coreai_result(router_aimodel[0])
    assert not any("second Apple interpreter" in n for n in result.notes)
    timing = ("latency_ms_p50", "latency_ms_p95", "latency_ms_p99", "tokens_per_s", "latencies_ms")
    assert {k: v for k, v in result.task.as_dict().items() if k not in timing} == {
        k: v for k, v in fixture.task.as_dict().items() if k not in timing}


def test_the_second_interpreter_answers_the_rows_as_this_process_does(router_aimodel, tiny_router: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    """The eval child (targets.ios.coreai_eval) against answer_eval_set run here on the same asset: the same
    answers, scores and notes, through the request and result JSON."""
    from packager.checkpoint import load_checkpoint
    from packager.child_stage import run_child
    from packager.progress import Reporter
    from packager.stages import BuildContext
    from targets.ios import coreai_eval
    from targets.ios.coreai_verify import AimodelDriver
    from targets.ios.verify import answer_eval_set

    _, bundle = router_aimodel
    model, eval_path = tiny_router
    ckpt = load_checkpoint(model, work_dir=tmp_path / "work")
    ctx = BuildContext(ckpt, ckpt.content_digest(), BuildOptions(context_length=256, eval_path=eval_path,
                                                                 task={"task": "labels"}), Reporter(quiet=True))
    asset, rows, baseline = bundle / "model-fp16.aimodel", ctx.eval_rows[:3], ctx.baseline_answers[:3]
    driver = AimodelDriver(asset)
    try:
        here = answer_eval_set(driver, ctx.contract, rows, ctx.hf_tokenizer, 256, baseline)
    finally:
        driver.close()
    (tmp_path / "child").mkdir()
    apart = coreai_eval.answered(run_child("targets.ios.coreai_eval", tmp_path / "child", coreai_eval.request(
        asset, ckpt.folder, ctx.contract, rows, 256, baseline), "the eval child"))
    timing = ("latency_ms_p50", "latency_ms_p95", "latency_ms_p99", "tokens_per_s", "latencies_ms")
    assert {k: v for k, v in apart[0].as_dict().items() if k not in timing} == {
        k: v for k, v in here[0].as_dict().items() if k not in timing}
    assert apart[0].rows == 3 and apart[1] == here[1]
    assert [n.split("(")[0] for n in apart[2]] == [n.split("(")[0] for n in here[2]]


def test_the_shared_prompt_prefix_leaves_every_prompt_a_token_of_its_own() -> None:
    from targets.ios.verify import shared_prefix

    assert shared_prefix([[2, 5, 6, 7], [2, 5, 6, 9, 9], [2, 5, 8]]) == [2, 5]
    assert shared_prefix([[2, 5, 6], [2, 5, 6, 7]]) == [2, 5]  # the shorter one still prefills its 6
    assert shared_prefix([[1, 2]]) == [1] and shared_prefix([[3], [4]]) == [] and shared_prefix([]) == []


def test_rows_started_from_the_held_prefix_answer_as_rows_prefilled_whole(router_aimodel, tiny_router, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The eval prompts' shared prefix prefilled once and its state copied for each row: the same answers as each
    prompt prefilled from an empty state, and the notes say how many ids were shared."""
    from packager.checkpoint import load_checkpoint
    from packager.progress import Reporter
    from packager.stages import BuildContext
    from targets.ios.coreai_verify import AimodelDriver
    from targets.ios.verify import answer_eval_set

    _, bundle = router_aimodel
    model, eval_path = tiny_router
    ckpt = load_checkpoint(model, work_dir=tmp_path / "work")
    ctx = BuildContext(ckpt, ckpt.content_digest(), BuildOptions(context_length=256, eval_path=eval_path,
                                                                 task={"task": "labels"}), Reporter(quiet=True))
    driver = AimodelDriver(bundle / "model-fp16.aimodel")
    held: list[int] = []
    original = AimodelDriver.restore_state
    monkeypatch.setattr(AimodelDriver, "restore_state", lambda self, copy: (held.append(1), original(self, copy)))
    try:
        reused = answer_eval_set(driver, ctx.contract, ctx.eval_rows, ctx.hf_tokenizer, 256, ctx.baseline_answers)
        driver.reuses_prefix = False
        whole = answer_eval_set(driver, ctx.contract, ctx.eval_rows, ctx.hf_tokenizer, 256, ctx.baseline_answers)
    finally:
        driver.close()
    assert len(held) == len(ctx.eval_rows)  # every row started from the held state
    [note] = [n for n in reused[2] if "prefilled once" in n]
    assert int(note.split()[1]) > 0 and not any("prefilled once" in n for n in whole[2])
    timing = ("latency_ms_p50", "latency_ms_p95", "latency_ms_p99", "tokens_per_s", "latencies_ms")
    assert {k: v for k, v in reused[0].as_dict().items() if k not in timing} == {
        k: v for k, v in whole[0].as_dict().items() if k not in timing}


def test_the_budget_gives_each_interpreter_the_whole_minutes_when_the_rows_run_apart() -> None:
    import time

    from targets.ios.coreai_verify import CheckBudget

    class Timed:  # a prediction costs 20 ms + 10 ms per token; the budget is read from two of them
        def reset_state(self) -> None: ...
        def step_inputs(self, ids, total): return ids
        def predict(self, inputs): time.sleep(0.02 + 0.01 * len(inputs))

    shared = CheckBudget.measured(Timed(), list(range(10)), 1.0, with_eval=True)
    apart = CheckBudget.measured(Timed(), list(range(10)), 1.0, with_eval=True, apart=True)
    alone = CheckBudget.measured(Timed(), list(range(10)), 1.0, with_eval=False)
    assert 0.015 < apart.seconds_per_call < 0.03 and 0.007 < apart.seconds_per_token < 0.015
    assert apart.golden_seconds == apart.eval_seconds == 60 and apart.apart
    assert shared.golden_seconds == shared.eval_seconds == 30 and not shared.apart
    assert alone.eval_seconds == 0 and alone.golden_seconds == 60
    assert "each in their own interpreter process" in apart.describe()
    assert "shared by the golden text and the eval rows" in shared.describe()


def test_the_report_says_of_how_many_eval_rows_a_budgeted_artifact_answered() -> None:
    from packager.report import _task_cells

    task = {"exact_match": 1.0, "baseline_exact_match": 1.0, "validity": 1.0, "agreement": 1.0, "rows": 2,
            "latency_ms_p50": 1.0, "latency_ms_p95": 1.0, "latency_ms_p99": 1.0}
    assert "1.000 (1.000, 2 of 108 rows)" in _task_cells({**task, "of_rows": 108}, "simulated")
    assert "1.000 (1.000) |" in _task_cells({**task, "of_rows": 0}, "simulated")


def test_the_budget_cuts_golden_sequences_evenly_and_takes_whole_eval_rows_in_order() -> None:
    from targets.ios.coreai_verify import CheckBudget
    from targets.ios.verify import DECODE_STEPS

    tokens = CheckBudget(minutes=1, seconds_per_call=0.0, seconds_per_token=0.5, golden_seconds=30,
                         eval_seconds=25)  # 60 and 50 tokens
    assert tokens.positions_per_sequence([10, 20], greedy_tokens=30) is None
    assert tokens.positions_per_sequence([100, 100], greedy_tokens=20) == 20
    assert tokens.positions_per_sequence([100, 100], greedy_tokens=60) == DECODE_STEPS + 1
    assert tokens.rows([(1, 20), (1, 20), (1, 20), (1, 5)]) == 2 and tokens.rows([(1, 51)]) == 0
    assert tokens.rows([]) == 0
    calls = CheckBudget(minutes=1, seconds_per_call=1.0, seconds_per_token=0.0, golden_seconds=30, eval_seconds=25)
    # Two sequences of (1 prefill + DECODE_STEPS) calls and a 10-token continuation: 28 s of 30, whatever the length.
    assert calls.positions_per_sequence([100, 100], greedy_tokens=10) is None
    assert calls.positions_per_sequence([100, 100], greedy_tokens=13) == DECODE_STEPS + 1
    assert calls.rows([(2, 40)] * 20) == 12 and calls.rows([(9, 1)] * 3) == 2


@pytest.mark.parametrize("minutes", [0, -1, float("inf"), float("nan"), "soon", True])
def test_a_coreai_check_of_no_minutes_is_refused_before_the_checkpoint_is_read(minutes, tmp_path: Path) -> None:
    from packager.errors import BadInputError

    missing = tmp_path / "no-such-checkpoint"  # were it read first, the error would be about this folder
    with pytest.raises(BadInputError, match="--coreai-check-minutes or \\[build\\] ios_coreai_check_minutes"):
        _build(missing, tmp_path / "out", "coreai", check_minutes=minutes)
    assert not (tmp_path / "out").exists()


def test_an_unknown_precision_from_the_python_api_is_refused_before_the_checkpoint_is_read(tmp_path: Path) -> None:
    from packager.errors import BadInputError

    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(BadInputError, match="--coreai-precision or \\[build\\] ios_coreai_precision = 'fp8': not one "
                                            "of mixed, fp16"):
        _build(missing, tmp_path / "out", "coreai", coreai_precision="fp8")
    assert not (tmp_path / "out").exists()


def test_a_bad_check_minutes_flag_exits_2_naming_the_flag(tmp_path: Path) -> None:
    result = edgepack("build", tmp_path / "no-such-checkpoint", "--target", "ios", "--ios-format", "coreai",
                      "--coreai-check-minutes", "0", "--out", tmp_path / "out")
    assert result.exit_code == ExitCode.BAD_INPUT == 2
    assert "--coreai-check-minutes" in result.stderr and "no-such-checkpoint" not in result.stderr
    assert leftovers(tmp_path, "out") == []


def test_a_coreai_only_bundle_ships_the_asset_tokenizer_and_contract_and_says_what_ran(router_aimodel) -> None:
    _, bundle = router_aimodel
    document = json.loads((bundle / "edgepack.json").read_text(encoding="utf-8"))
    paths = {f["path"] for f in document["files"]}
    assert {"tokenizer.json", "tokenizer_config.json"} <= paths
    assert {p.split("/")[0] for p in paths if p.startswith("model-")} == {"model-fp16.aimodel"}
    model = document["model"]
    assert model["format"] == "aimodel" and model["asset"] == "model-fp16.aimodel" and model["max_context"] == 256
    assert model["states"] == ["keyCache", "valueCache"] and model["exactness_proof"]["exact"]
    assert model["metadata"]["edgepack.max_context"] == 256
    assert document["runner"]["eos_ids"] == document["contract"]["eos_ids"]
    assert [v["format"] for v in document["verification"]] == ["aimodel"]
    report = (bundle.parent / "report.md").read_text(encoding="utf-8")
    assert any("model-fp16.aimodel" in line and "simulated" in line for line in report.splitlines())


def test_a_coreai_only_bundle_is_a_core_ai_model_bundle_with_an_app_that_says_what_it_needs(router_aimodel) -> None:
    outcome, bundle = router_aimodel
    metadata = json.loads((bundle / "metadata.json").read_text(encoding="utf-8"))
    assert metadata["metadata_version"] == "0.2" and metadata["kind"] == "llm"
    assert metadata["assets"] == {"main": "model-fp16.aimodel"} and metadata["language"]["embedded_tokenizer"]
    assert metadata["language"]["max_context_length"] == 256
    assert (bundle / "tokenizer" / "tokenizer.json").read_bytes() == (bundle / "tokenizer.json").read_bytes()
    checks = outcome.results[0].scaffold_checks
    assert [c for c in checks if c.status == "failed"] == []
    assert {c.file for c in checks if c.tool == "tree-sitter (swift)"} >= {
        "EdgeModel/Sources/EdgeModel/CoreAIModel.swift", "app/Sources/ContentView.swift"}
    info = (bundle / "app" / "Sources" / "BuildInfo.swift").read_text(encoding="utf-8")
    assert 'static let package = ""' in info and "Core AI only" in info and "--ios-format all" in info
    assert 'iOS: "27.0"' in (bundle / "app" / "project.yml").read_text(encoding="utf-8")
    assert "apple/coreai-models" in (bundle / "EdgeModel" / "Package.swift").read_text(encoding="utf-8")


def test_a_bundle_with_an_aimodel_ships_a_checked_core_ai_path_gated_by_ios_27(llama_both) -> None:
    from targets.ios.swift_check import syntax_errors, unknown_api_names

    outcome, bundle = llama_both
    checks = outcome.results[0].scaffold_checks
    swift = sorted(bundle.rglob("*.swift"))
    assert len([c for c in checks if c.tool == "tree-sitter (swift)" and c.status == "passed"]) == len(swift)
    (names,) = [c for c in checks if "Core AI names" in c.tool]
    assert names.status == "passed", names.detail
    texts = [p.read_text(encoding="utf-8") for p in swift]
    assert all(syntax_errors(t) == [] for t in texts) and unknown_api_names(texts) == []
    sources = bundle / "EdgeModel" / "Sources" / "EdgeModel"
    core_ai = (sources / "CoreAIModel.swift").read_text(encoding="utf-8")
    assert "@available(iOS 27, macOS 27, *)" in core_ai and "CoreAILanguageModel(resourcesAt:" in core_ai
    entry = (sources / "ContractModel.swift").read_text(encoding="utf-8")
    assert entry.index("if #available(iOS 27, macOS 27, *)") < entry.index("CoreAIModel.load(from: folder)")
    # The bundle names the .aimodel and its inputs, which are those the bridge hands to Apple's engines.
    document = json.loads((bundle / "edgepack.json").read_text(encoding="utf-8"))
    assert document["core_ai"]["inputs"] == _swift_guard_inputs(entry) == ["input_ids", "position_ids"]
    project = (bundle / "app" / "project.yml").read_text(encoding="utf-8")
    assert "../model-fp16.aimodel" in project and "../model-fp16.mlpackage" in project
    # A misspelt Core AI member in the shipped sources fails the check.
    broken = [t.replace("CoreAILanguageModel(resourcesAt:", "CoreAILanguageModel(resourceURL:") for t in texts]
    assert broken != texts and any("CoreAILanguageModel(resourceURL:mode:)" in u for u in unknown_api_names(broken))


def test_llama_ships_both_formats_and_its_fp16_aimodel_matches_fp32(llama_both) -> None:
    outcome, bundle = llama_both
    assert outcome.passed
    formats = [v.format for v in outcome.results[0].verifications]
    assert formats.count("mlpackage") >= 1 and formats.count("aimodel") == 1
    result = _coreai_result(outcome)
    assert result.metrics.top1 >= 0.98 and result.greedy_match and result.metrics.nonfinite_positions == 0
    assert "input_ids, position_ids -> logits" in result.runtime
    document = json.loads((bundle / "edgepack.json").read_text(encoding="utf-8"))
    assert document["core_ai"]["asset"] == "model-fp16.aimodel"
    assert document["model"]["packages"][0]["package"] == "model-fp16.mlpackage"
    assert (bundle / "model-fp16.aimodel" / "main.mlirb").is_file() and (bundle / "app").is_dir()


def test_the_default_aimodel_multiplies_in_fp32_from_fp16_weights_and_fp16_precision_does_not(
        router_aimodel, tiny_router: tuple[Path, Path], tmp_path: Path) -> None:
    from coreai.authoring.asset import AIModelAsset

    from targets.ios.coreai_verify import matmul_arithmetic

    outcome, bundle = router_aimodel
    mixed = bundle / "model-fp16.aimodel"
    counts = matmul_arithmetic(AIModelAsset.load(mixed))
    assert set(counts) == {"f32"} and counts["f32"] >= 14 + 1  # 2 layers x 7 linears, attention, the head
    assert json.loads((mixed / "metadata.json").read_text(encoding="utf-8"))["creatorDefinedMetadata"][
        "edgepack.precision"] == "mixed"
    document = json.loads((bundle / "edgepack.json").read_text(encoding="utf-8"))
    assert document["model"]["precision"] == "mixed"  # a Core AI-only bundle: the .aimodel is its model
    assert any("matrix products (read from its IR): " in n for n in _coreai_result(outcome).notes)

    model, _ = tiny_router
    strict = _build(model, tmp_path / "fp16", "coreai", coreai_precision="fp16")
    fp16 = tmp_path / "fp16" / "ios" / "model-fp16.aimodel"
    strict_counts = matmul_arithmetic(AIModelAsset.load(fp16))
    assert set(strict_counts) == {"f16"} and sum(strict_counts.values()) == counts["f32"]
    assert _coreai_result(strict).passed


def test_the_default_core_ai_ladder_ships_int8_linears_within_the_8_bit_gate(tiny_gemma: Path,
                                                                             tmp_path: Path) -> None:
    outcome = _build(tiny_gemma, tmp_path / "out", "coreai", coreai="auto")
    result = _coreai_result(outcome)
    assert result.quant == "int8" and result.passed
    assert EIGHT_BIT.check(result.metrics) == [], result.metrics
    export = outcome.results[0].extra["coreai_export"]
    assert export["quantized_linears"] == 14  # 2 layers x q, k, v, o, gate, up, down; norms untouched
    assert (tmp_path / "out" / "ios" / "model-int8.aimodel" / "main.mlirb").is_file()


@pytest.fixture(scope="module")
def overflowing_gemma(tiny_gemma: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny Gemma with post-norm gains x4000: its residual stream passes fp16's 65,504, like Gemma 3 270M's."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_gemma), dtype=torch.float32)
    with torch.no_grad():
        for block in model.model.layers:
            block.post_feedforward_layernorm.weight.mul_(4000.0)
    folder = tmp_path_factory.mktemp("models") / "overflowing-gemma"
    model.save_pretrained(str(folder))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copyfile(tiny_gemma / name, folder / name)
    return folder


def test_an_fp16_aimodel_that_overflows_fails_its_gate_and_nothing_is_written(overflowing_gemma: Path,
                                                                               tmp_path: Path) -> None:
    with pytest.raises(GateFailedError) as caught:
        _build(overflowing_gemma, tmp_path / "unsafe", "coreai", fp16_rewrites=False)
    assert "FAIL" in str(caught.value)
    assert leftovers(tmp_path, "unsafe") == []
    safe = _build(overflowing_gemma, tmp_path / "safe", "coreai")
    assert safe.passed and _coreai_result(safe).metrics.top1 >= 0.98


def test_non_finite_logits_from_the_interpreter_fail_the_gate(router_aimodel, tiny_router, tmp_path: Path) -> None:
    import numpy as np

    from packager.checkpoint import load_checkpoint
    from packager.progress import Reporter
    from packager.stages import BuildContext
    from targets.ios.coreai_verify import AimodelDriver, verify_aimodel
    from targets.ios.target import COREAI_GATES

    _, bundle = router_aimodel
    model, _ = tiny_router
    ckpt = load_checkpoint(model, work_dir=tmp_path / "work")
    ctx = BuildContext(ckpt, ckpt.content_digest(), BuildOptions(context_length=256), Reporter(quiet=True))

    class Broken(AimodelDriver):
        def predict(self, inputs, last_positions=None):
            logits = super().predict(inputs, last_positions)
            return np.full_like(logits, np.nan)

    driver = Broken(bundle / "model-fp16.aimodel")
    try:
        result = verify_aimodel(driver, "ios/model-fp16.aimodel", "none", COREAI_GATES["none"], ctx.reference,
                                list(ctx.contract.eos_ids), ctx.hf_tokenizer, 256)
    finally:
        driver.close()
    assert not result.passed
    assert any("non-finite" in f for f in result.failures), result.failures


def test_ios_format_defaults_to_coreml_and_lists_its_choices() -> None:
    from targets.ios.target import IosTarget

    [option] = [o for o in IosTarget.options if o.name == "format"]
    assert option.default == "coreml" and option.flag == "--ios-format" and option.toml_key == "ios_format"
    assert set(option.choices) == {"coreml", "coreai", "all"}


def test_unknown_ios_format_is_refused_with_the_choices(tiny_gemma: Path, tmp_path: Path) -> None:
    result = edgepack("build", tiny_gemma, "--target", "ios", "--ios-format", "mlx", "--out", tmp_path / "out")
    assert result.exit_code == ExitCode.BAD_INPUT == 2
    assert "coreml" in result.stderr and "coreai" in result.stderr and "all" in result.stderr
    assert leftovers(tmp_path, "out") == []


def test_ios_format_is_read_from_edgepack_toml_and_a_bad_value_is_named(tmp_path: Path) -> None:
    from packager.errors import BadInputError
    from packager.project import target_option_values

    toml = tmp_path / "edgepack.toml"
    assert target_option_values({}, {"ios_format": "all"}, toml)["ios"]["format"] == "all"
    assert target_option_values({"ios": {"format": "coreai"}}, {"ios_format": "all"}, toml)["ios"]["format"] == "coreai"
    with pytest.raises(BadInputError, match="ios_format = 'mlx' is not one of coreml, coreai, all"):
        target_option_values({}, {"ios_format": "mlx"}, toml)


def test_coreai_format_without_its_packages_stops_with_the_setup_command(
        tiny_gemma: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import targets.ios.target as ios

    absent = dataclasses.replace(ios.COREAI_PACKAGES, modules={"edgepack_no_such_module": "coreai-core"})
    monkeypatch.setattr(ios, "COREAI_PACKAGES", absent)
    out = tmp_path / "out"
    result = edgepack("build", tiny_gemma, "--target", "ios", "--ios-format", "coreai", "--out", out)
    assert result.exit_code == ExitCode.UNSUPPORTED, result.stderr
    assert "coreai-core" in result.stderr and "scripts/setup.sh" in result.stderr
    assert "--ios-format coreml" in result.stderr and "Traceback" not in result.stderr
    assert leftovers(tmp_path, "out") == []


def test_the_interface_check_names_what_apples_engines_would_not_find() -> None:
    from targets.ios.coreai_verify import check_interface

    cache = [[2, 1, 2, -1, 16], "float16"]
    good = {"inputs": {"input_ids": [[1, -1], "int32"], "position_ids": [[1, -1], "int32"]},
            "outputs": {"logits": [[1, -1, 640], "float16"]},
            "states": {"keyCache": cache, "valueCache": cache}}
    assert check_interface(good) == []
    swapped = {**good, "inputs": {"position_ids": [[1, -1], "int32"], "input_ids": [[1, -1], "int32"]}}
    assert any("in that order" in f for f in check_interface(swapped))
    old = {"inputs": {"inputIds": [[1, -1], "int32"], "fullAttentionMask": [[1, 1, -1, -1], "float16"]},
           "outputs": {"logits": [[1, -1, 640], "float32"]},
           "states": {"b_keycache": [[2, 2, 257, 16], "float32"], "valueCache": [[2, 2, 257, 16], "float16"]}}
    failures = " | ".join(check_interface(old))
    assert "inputs are ['inputIds', 'fullAttentionMask']" in failures and "fullAttentionMask is float16" in failures
    assert "expected float16 logits first" in failures and "states are ['b_keycache', 'valueCache']" in failures
    assert "not float16" in failures and "a positions axis the engine can grow" in failures


def _swift_guard_inputs(contract_model_swift: str) -> list[str]:
    """The inputs EdgeModels.load requires of an .aimodel before handing it to Core AI, read from its source."""
    import re

    [literal] = re.findall(r"static let coreAILanguageModelInputs = \[([^\]]*)\]", contract_model_swift)
    return re.findall(r'"([^"]+)"', literal)


def _asset_interface(asset: Path) -> dict:
    """Function names, and each input/state/output's shape and dtype, as coreai-core reads them from the asset."""
    from coreai.authoring.asset import AIModelAsset

    from targets.ios.coreai_verify import AimodelDriver

    driver = AimodelDriver(asset)
    try:
        return {"functions": list(AIModelAsset.load(asset).summary().function_names), **driver.interface}
    finally:
        driver.close()


def test_the_saved_aimodel_has_the_inputs_states_and_output_apples_engines_drive(router_aimodel) -> None:
    _, bundle = router_aimodel
    interface = _asset_interface(bundle / "model-fp16.aimodel")
    assert interface["functions"] == ["main"]  # the function Apple's engines load (ModelConfig.function)
    # Read by position: token ids first, then the positions of the whole context, both int32 and of any length.
    assert list(interface["inputs"].items()) == [("input_ids", [[1, -1], "int32"]),
                                                  ("position_ids", [[1, -1], "int32"])]
    assert list(interface["outputs"]) == ["logits"] and interface["outputs"]["logits"][1] == "float16"
    assert interface["outputs"]["logits"][0][:2] == [1, -1]
    # Apple's cache layout [layers, 1, kv_heads, positions, head_dim]; positions grow with the context.
    assert sorted(interface["states"]) == ["keyCache", "valueCache"]
    for shape, dtype in interface["states"].values():
        assert dtype == "float16" and len(shape) == 5 and shape[1] == 1 and shape[3] == -1


def test_apples_interpreter_driven_through_position_ids_matches_fp32_transformers(
        router_aimodel, tiny_router, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunked prefill, then decode, past the sliding window, with a cache that starts small and grows (copied on
    each doubling) as Apple's engines grow it: every position's logits against transformers in fp32."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from packager.verify.metrics import FidelityAccumulator
    from targets.ios import coreai_verify
    from targets.ios.target import COREAI_GATES

    _, bundle = router_aimodel
    model_dir, _ = tiny_router
    monkeypatch.setattr(coreai_verify, "INITIAL_CACHE_POSITIONS", 16)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    window = model.config.sliding_window
    ids = [int(i) for i in torch.randint(3, model.config.vocab_size, (2 * window + 12,),
                                         generator=torch.Generator().manual_seed(7))]
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0].numpy()
    driver = coreai_verify.AimodelDriver(bundle / "model-fp16.aimodel")
    try:
        driver.reset_state()
        first, second = window - 5, 2 * window
        parts = [driver.step(ids[:first], first), driver.step(ids[first:second], second)]
        parts += [driver.step([ids[t]], t + 1) for t in range(second, len(ids))]
        grown_to = np.asarray(driver.state["keyCache"].numpy()).shape[3]
    finally:
        driver.close()
    logits = np.concatenate(parts)
    accumulator = FidelityAccumulator()
    accumulator.add(reference, logits)
    metrics = accumulator.result()
    assert grown_to == 128 and driver.nonfinite_steps == 0  # 16 -> 32 -> 64 -> 128 positions for 76 tokens
    assert COREAI_GATES["none"].check(metrics) == [], metrics
    assert metrics.top1 >= 0.98 and float(np.abs(logits - reference).max()) < 0.1, metrics


def test_the_swift_guard_lets_a_core_ai_only_bundle_through_to_apples_engines(router_aimodel) -> None:
    _, bundle = router_aimodel
    document = json.loads((bundle / "edgepack.json").read_text(encoding="utf-8"))
    sources = bundle / "EdgeModel" / "Sources" / "EdgeModel"
    guard = _swift_guard_inputs((sources / "ContractModel.swift").read_text(encoding="utf-8"))
    # BundleManifest.coreAIInputs reads model.inputs when there is no core_ai section (a Core AI-only bundle).
    manifest_swift = (sources / "BundleManifest.swift").read_text(encoding="utf-8")
    assert "core_ai" not in document and 'return model.format == "aimodel" ? model.inputs : nil' in manifest_swift
    assert document["model"]["format"] == "aimodel" and document["model"]["inputs"] == guard
    metadata = json.loads((bundle / "metadata.json").read_text(encoding="utf-8"))
    assert metadata["language"]["states"] == {"keyCache": "kv_cache", "valueCache": "kv_cache"}


# One child process per way of running Apple's interpreter: its fp16 conversions are bound when it loads.
_INTERPRETER_RUN = """
import sys
import numpy as np
from pathlib import Path
if sys.argv[2] == "software":
    import coreai.runtime  # loaded first: libswiftCore's conversions are bound, the F16C ones come too late
from targets.ios.coreai_verify import AimodelDriver
driver = AimodelDriver(Path(sys.argv[1]))
driver.reset_state()
ids = list(range(3, 40))
logits = [driver.step(ids[:30], 30)] + [driver.step([i], n + 1) for n, i in enumerate(ids[30:], 30)]
np.save(sys.argv[3], np.concatenate(logits).astype(np.float16))
print(driver.fast_conversions)
driver.close()
"""


def _interpreter_logits(asset: Path, conversions: str, out: Path) -> tuple[bool, object]:
    import subprocess
    import sys

    import numpy as np

    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", _INTERPRETER_RUN, str(asset), conversions, str(out)],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              cwd=Path(__file__).parent.parent, check=False)
        # Apple's runtime has aborted while loading the function ("C++ exception handling detected ...", SIGABRT)
        # in about 1 of 4 runs of this test under pytest-xdist beside test_ios.py, with and without the F16C
        # library, and never in 90 runs outside pytest: asked once more then; any other failure fails at once.
        if not (done.returncode == -6 and "Loading function" in done.stderr):
            break
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1] == "True", np.load(out)


def test_f16c_conversions_leave_apples_interpreter_bit_for_bit_the_same(router_aimodel, tmp_path: Path) -> None:
    """The interpreter with the CPU's F16C conversions in place of libswiftCore's: the same logits, every bit,
    through prefill and decode."""
    import numpy as np

    from targets.ios import fp16_conversions

    _, bundle = router_aimodel
    asset = bundle / "model-fp16.aimodel"
    software, with_software = _interpreter_logits(asset, "software", tmp_path / "software.npy")
    fast, with_f16c = _interpreter_logits(asset, "f16c", tmp_path / "f16c.npy")
    assert not software
    if not fast:
        assert not (fp16_conversions._cpu_has_f16c() and tools_required()), "F16C host, yet the library was not loaded"
        pytest.skip("no F16C or no C compiler here: the interpreter runs its own conversions")
    assert with_f16c.shape[0] == 37 and np.isfinite(with_f16c).all()
    assert np.array_equal(with_f16c.view(np.uint16), with_software.view(np.uint16))


def test_f16c_conversions_round_as_ieee_does() -> None:
    """Every half to float, and floats around every half (ties included) to half, against numpy's conversions."""
    import ctypes
    import struct

    import numpy as np

    from targets.ios import fp16_conversions

    if not fp16_conversions._cpu_has_f16c():
        pytest.skip("this CPU has no F16C")
    library = fp16_conversions._compiled(fp16_conversions.SOURCE)
    assert library is not None, "no C compiler on an F16C host"
    lib = ctypes.CDLL(str(library))
    # _Float16 travels in the low 16 bits of xmm0, as a float's would: pass and read those bits through c_float.
    lib.__extendhfsf2.argtypes, lib.__extendhfsf2.restype = [ctypes.c_float], ctypes.c_float
    lib.__truncsfhf2.argtypes, lib.__truncsfhf2.restype = [ctypes.c_float], ctypes.c_float

    def bits_as_float(bits: int) -> float:
        return struct.unpack("<f", struct.pack("<I", bits))[0]

    halves = np.arange(1 << 16, dtype=np.uint16)
    extended = np.array([lib.__extendhfsf2(bits_as_float(int(h))) for h in halves], dtype=np.float32)
    expected = halves.view(np.float16).astype(np.float32)
    same = (extended.view(np.uint32) == expected.view(np.uint32)) | (np.isnan(extended) & np.isnan(expected))
    assert same.all(), halves[~same][:5]

    # Each half's float, the ties halfway to its neighbour, and one float either side of those ties.
    centres = expected.view(np.uint32)[np.isfinite(expected)]
    floats = np.unique(np.concatenate([centres + d for d in (0, 0xFFF, 0x1000, 0x1001, 0x2000)]).astype(np.uint32))
    floats = floats[np.isfinite(floats.view(np.float32))]
    truncated = np.array([struct.unpack("<I", struct.pack("<f", lib.__truncsfhf2(bits_as_float(int(f)))))[0] & 0xFFFF
                          for f in floats], dtype=np.uint16)
    with np.errstate(over="ignore"):  # floats past the largest half round to infinity, as they should
        assert np.array_equal(truncated, floats.view(np.float32).astype(np.float16).view(np.uint16))
