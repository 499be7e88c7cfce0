"""The contract is checked against the fp32 model before anything is judged: a fine-tune trained on one
prompt rendering is found out, and a declared template the model does not know stops the build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import edgepack

from packager.contract import PromptFormat
from packager.contract_check import candidate_prompts
from packager.errors import ExitCode
from tests.tiny_models import make_router

TRAINED_ON = "chat template, '{instruction}: {input}'"


@pytest.fixture(scope="module")
def plain_router(tiny_gemma: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same rows fine-tuned without the chat template or the instruction: the bare input."""
    return make_router(tiny_gemma, tmp_path_factory.mktemp("plain-router"), lambda _ins, i: i)


@pytest.mark.parametrize(("router", "trained_on", "first_prompt"), [
    ("tiny_router", TRAINED_ON, "<start_of_turn>user\nRoute this: my card got declined<end_of_turn>"),
    ("plain_router", "no template, '{input}'", "First row rendered: 'my card got declined'"),
])
def test_the_rendering_a_fine_tune_was_trained_on_is_found_and_the_baseline_is_its_true_accuracy(
        router: str, trained_on: str, first_prompt: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    model, eval_path = request.getfixturevalue(router)
    out = tmp_path / "out"
    result = edgepack("build", model, "--target", "raspberry-pi", "--quant", "F16", "--eval", eval_path,
                      "--task", "labels", "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    check = json.loads((out / "manifest.json").read_text())["contract_check"]
    assert check["changed"] and check["used"]["name"] == trained_on
    assert check["declared"]["accuracy"] < 0.9 and check["used"]["accuracy"] == 1.0  # as trained
    assert "CONTRACT:" in result.stderr and "probably fine-tuned on the latter" in result.stderr
    assert first_prompt.replace("\n", "\\n") in result.stderr  # the first row, as rendered
    [row] = result.json()["artifacts"]
    assert row["task"]["baseline_exact_match"] == 1.0  # the fp32 model judged under its own rendering


def test_a_declared_template_the_model_does_not_know_stops_the_build_with_the_table(
        tiny_router: tuple[Path, Path], tmp_path: Path) -> None:
    model, eval_path = tiny_router
    result = edgepack("build", model, "--target", "raspberry-pi", "--quant", "F16", "--eval", eval_path,
                      "--task", "labels", "--prompt-template", "{instruction}: {input}", "--out", tmp_path / "out")
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "prompt_template looks wrong" in result.stderr and TRAINED_ON in result.stderr
    assert not (tmp_path / "out").exists()


def test_candidates_wrap_each_join_in_the_chat_template_and_bare_without_repeating_the_declared_one() -> None:
    chat = PromptFormat(prefix="<u>", template="{input}", suffix="<m>", source="chat_template")
    names = [name for name, _ in candidate_prompts(chat, chat)]
    assert names[0].startswith("declared") and len(names) == len(set(names)) == 10  # 5 joins x 2, minus 1, + 1
    assert all(p.prefix == "" for name, p in candidate_prompts(chat, None)[1:])


def test_doctor_with_an_eval_set_names_the_rendering_and_each_targets_ladder(tiny_router: tuple[Path, Path]) -> None:
    model, eval_path = tiny_router
    result = edgepack("doctor", model, "--eval", eval_path, "--json")
    assert result.exit_code == 0, result.stderr
    report = result.json()
    assert report["contract_check"]["used"]["name"] == TRAINED_ON
    assert report["ladders"]["raspberry-pi"] == ["Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"]
    assert report["ladders"]["web"] == ["Q8_0"] and len(report["ladders"]["ios"]) > 1


def _scorer(scores: dict[str, tuple[float, float]]):
    """A stand-in fp32 model: (accuracy, validity) per prompt template; 0.2 / 1.0 for any other."""
    from packager.verify.task_eval import TaskMetrics

    def score(prompt: PromptFormat, rows) -> TaskMetrics:
        accuracy, validity = scores.get(prompt.template, (0.2, 1.0))
        return TaskMetrics(rows=len(rows), exact_match=accuracy, validity=validity, agreement=None,
                           baseline_exact_match=None, latency_ms_p50=0, latency_ms_p95=0, latency_ms_p99=0,
                           tokens_per_s=0, constrained=False, mismatches=[], latencies_ms=[])
    return score


@pytest.mark.parametrize("declared", [False, True])
def test_a_valid_guess_is_still_compared_with_the_usual_renderings_a_valid_declaration_is_trusted(
        declared: bool) -> None:
    from packager.contract import Contract
    from packager.contract_check import check_contract
    from packager.verify.task_eval import EvalRow

    # Measured on a real LoRA: every answer a valid label under the bare input, a third of them wrong.
    chat = PromptFormat(prefix="<u>", template="{input}", suffix="<m>", source="chat_template")
    scorer = _scorer({"{input}": (0.688, 1.0), "{instruction}: {input}": (0.833, 1.0)})
    rows = [EvalRow(instruction="Route this", input=f"row {i}", output="billing") for i in range(40)]
    check = check_contract(Contract(prompt=chat), chat, rows, scorer, template_declared=declared)
    if declared:  # above the floors: the user's declaration is taken, and nothing else is scored
        assert not check.changed and check.candidates == []
    else:
        assert check.changed and check.used.name == "chat template, '{instruction}: {input}'"
        assert check.sample_rows == 32 and len(check.candidates) == 10


def test_the_baseline_reuses_the_contract_checks_answers_and_they_are_the_ones_it_would_give(
        tiny_router: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check answers the first eval rows under the rendering it picks; the baseline takes those answers
    (here all 6 rows: no second fp32 pass) and equals the baseline answered from scratch."""
    import shutil

    model, eval_path = tiny_router
    monkeypatch.setenv("EDGEPACK_CACHE", str(tmp_path / "cache"))
    args = ("build", model, "--target", "raspberry-pi", "--quant", "F16", "--eval", eval_path, "--task", "labels")
    first = edgepack(*args, "--out", tmp_path / "a")
    assert first.exit_code == 0, first.stderr
    assert "with the fp32 model (baseline" not in first.stderr
    [record] = (tmp_path / "cache" / "baseline").iterdir()
    reused = json.loads((record / "entry.json").read_text())["result"]
    # The contract check stays cached, so the baseline is answered on its own when the GGUF's task answers need it.
    for answered in (record, tmp_path / "cache" / "verify"):
        shutil.rmtree(answered)
    second = edgepack(*args, "--out", tmp_path / "b")
    assert second.exit_code == 0, second.stderr
    assert "answering 6 eval rows with the fp32 model (baseline)" in second.stderr
    assert json.loads((record / "entry.json").read_text())["result"] == reused
    assert len(reused) == 6
