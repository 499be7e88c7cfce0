"""A quality ladder is screened from its most precise rung down and stops screening at the first failure."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from packager.errors import ExitCode
from packager.gguf_ladder import GGUF_LADDER, choose_gguf, ladder_from, ladder_within
from packager.ladder import rungs_to_build, screen_verdict, task_screened
from packager.verify.gates import TaskGate
from packager.verify.metrics import FidelityMetrics
from packager.verify.result import VerificationResult
from packager.verify.task_eval import TaskMetrics
from tests.cli_helpers import edgepack

LADDER = ("int4", "int4-mixed", "int6", "int8")  # smallest first; the last ships whatever its gate says


def _walk(passing: set[str]) -> tuple[list[str], list[str], list[str]]:
    screened: list[str] = []

    def screen(rung: str) -> list[str]:
        screened.append(rung)
        return [] if rung in passing else [f"{rung} misses the gate"]

    rungs, notes = rungs_to_build(LADDER, screen)
    return rungs, notes, screened


def test_a_failed_screen_spares_the_less_precise_rungs_their_screens() -> None:
    rungs, notes, screened = _walk(passing={"int6"})
    assert screened == ["int6", "int4-mixed"]  # int4 is below int4-mixed, which failed
    assert rungs == ["int6", "int8"]
    assert [n.split(":")[0] for n in notes] == ["int4", "int4-mixed"]
    assert "less precise than int4-mixed" in notes[0]


def test_when_every_screen_passes_the_smallest_rung_is_built_first() -> None:
    rungs, notes, screened = _walk(passing={"int4", "int4-mixed", "int6"})
    assert rungs == ["int4", "int4-mixed", "int6", "int8"] and not notes and len(screened) == 3


def test_a_ladder_of_one_rung_screens_nothing() -> None:
    assert rungs_to_build(("fp16",), lambda rung: ["never called"]) == (["fp16"], [])


def _task(exact_match: float, validity: float = 1.0) -> TaskMetrics:
    return TaskMetrics(rows=10, exact_match=exact_match, validity=validity, agreement=1.0, baseline_exact_match=0.9,
                       latency_ms_p50=1.0, latency_ms_p95=1.0, latency_ms_p99=1.0, tokens_per_s=1.0,
                       constrained=False, mismatches=[], latencies_ms=[])


def _fidelity(top1: float, kl: float) -> FidelityMetrics:
    return FidelityMetrics(positions=100, top1=top1, top1_decisive=top1, decisive_positions=50, kl=kl, ppl_ref=None,
                           ppl=None)


@pytest.mark.parametrize(("fidelity", "task", "decides", "passes"), [
    (_fidelity(0.8, 0.1), _task(0.9), True, True),  # the task decides and is intact
    (_fidelity(0.8, 0.1), _task(0.8), True, False),  # 10 points below fp32
    (_fidelity(0.8, 0.1), _task(0.9, validity=0.9), True, False),  # invalid answers
    (_fidelity(0.8, 0.1), _task(0.9), False, False),  # --strict-fidelity
    (_fidelity(math.nan, math.nan), _task(0.9), True, False),  # non-finite numbers never pass
])
def test_a_screen_that_misses_fidelity_passes_only_when_the_task_decides_and_holds(
        fidelity: FidelityMetrics, task: TaskMetrics, decides: bool, passes: bool) -> None:
    reasons = ["top-1 below the gate"]
    verdict = screen_verdict(fidelity, reasons, TaskGate(decides=decides), lambda: task)
    assert (verdict == []) is passes and (passes or verdict[0] == reasons[0])


@pytest.mark.parametrize("decides", [True, False])
def test_a_screen_that_passes_fidelity_still_fails_when_its_answers_lose_the_task(decides: bool) -> None:
    # The bundled example's 8da8w-smooth-f32down: golden text within its gate, the task 2.8 points below fp32.
    verdict = screen_verdict(_fidelity(1.0, 0.0), [], TaskGate(decides=decides), lambda: _task(0.8))
    assert verdict and "points below" in verdict[0]
    assert screen_verdict(_fidelity(1.0, 0.0), [], TaskGate(decides=decides), lambda: _task(0.9)) == []


def test_a_screen_without_an_eval_set_is_its_fidelity_and_strict_fidelity_asks_no_answers_after_a_miss() -> None:
    assert screen_verdict(_fidelity(1.0, 0.0), [], TaskGate(decides=True), None) == []
    assert screen_verdict(_fidelity(0.8, 0.1), ["miss"], TaskGate(), lambda: pytest.fail("asked")) == ["miss"]
    assert task_screened([], TaskGate()) and task_screened(["miss"], TaskGate(decides=True))
    assert not task_screened(["miss"], TaskGate())


# ---------------------------------------------------------------------------------------------
# The GGUF ladder: without --quant, the smallest GGUF type that passes every gate ships.


def _result(quant: str, passing: set[str]) -> VerificationResult:
    return VerificationResult(artifact=f"model-{quant}.gguf", format="gguf", quant=quant, level="executed",
                              runtime="llama.cpp",
                              failures=[] if quant in passing else [f"{quant}: top-1 below the gate"])


def test_the_first_passing_rung_ships_and_every_rung_below_it_says_why_it_was_rejected() -> None:
    verified: list[str] = []

    def verify(quant: str) -> tuple[Path, VerificationResult]:
        verified.append(quant)
        return Path(f"model-{quant}.gguf"), _result(quant, passing={"Q6_K", "Q8_0"})

    choice = choose_gguf(ladder_from("Q4_K_M"), verify)
    assert choice.quant == "Q6_K" and verified == ["Q4_K_M", "Q5_K_M", "Q6_K"] and choice.verification.passed
    assert [r.quant for r in choice.tried] == verified
    assert [n.split(" rejected")[0] for n in choice.notes()] == ["GGUF ladder: Q4_K_M", "GGUF ladder: Q5_K_M"]
    assert choice.as_dict()["ladder"][0]["rejected_because"] == ["Q4_K_M: top-1 below the gate"]


def test_when_no_rung_passes_the_last_ships_its_failure() -> None:
    choice = choose_gguf(ladder_from("Q5_K_M"), lambda q: (Path(q), _result(q, passing=set())))
    assert choice.quant == "Q8_0" and not choice.verification.passed and len(choice.tried) == 3
    assert ladder_from("F16") == ("F16",)  # a type off the ladder is built alone


def test_a_default_over_the_runtimes_memory_starts_the_ladder_at_the_largest_rung_that_fits() -> None:
    fits = {"Q4_K_M", "Q5_K_M", "Q6_K"}.__contains__
    assert ladder_within("Q8_0", fits) == ("Q6_K",)
    assert ladder_within("Q4_K_M", fits) == ("Q4_K_M", "Q5_K_M", "Q6_K")  # rungs above the ceiling are left out
    assert ladder_within("Q8_0", lambda quant: False) == ()
    assert ladder_within("F16", lambda quant: True) == ("F16",) and ladder_within("F16", lambda quant: False) == ()


def test_a_runtime_memory_ceiling_moves_the_default_gguf_down_says_why_and_refuses_a_model_that_never_fits(
        tiny_gemma: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from packager.checkpoint import load_checkpoint
    from packager.devices import estimate
    from packager.errors import UnsupportedError
    from packager.progress import Reporter
    from packager.stages import BuildContext, BuildOptions

    monkeypatch.setenv("EDGEPACK_CACHE", str(tmp_path / "cache"))
    ckpt = load_checkpoint(tiny_gemma, work_dir=tmp_path / "work")

    def context(**options: object) -> BuildContext:
        return BuildContext(ckpt, ckpt.content_digest(), BuildOptions(context_length=256, **options),
                            Reporter(quiet=True))

    need = {q: estimate(ckpt.parameter_count, ckpt.config, q, 256).total_mb for q in GGUF_LADDER}

    class Capped:  # a browser-like target: Q8_0 by default, a heap between Q6_K's need and Q8_0's
        name = "capped"
        default_quant = "Q8_0"
        runtime_memory_mb = (need["Q6_K"] + need["Q8_0"]) / 2

    assert context().gguf_rungs(Capped()) == ("Q6_K",)
    assert context(quant="Q8_0").gguf_rungs(Capped()) == ("Q8_0",)  # an explicit --quant is built as asked
    choice = context(no_gate=True).chosen_gguf(Capped())
    assert choice.quant == "Q6_K" and choice.notes()[0].startswith("Q8_0 (the default) needs about")
    assert "the ladder starts at Q6_K" in choice.notes()[0]
    Capped.runtime_memory_mb = need["Q4_K_M"] - 0.01
    with pytest.raises(UnsupportedError, match=r"more than the .* MB its runtime can address"):
        context().gguf_rungs(Capped())


def test_a_default_build_climbs_to_a_passing_gguf_and_an_explicit_quant_fails_as_asked(
        tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEPACK_CACHE", str(tmp_path / "cache"))
    # Tiny random Llama: llama.cpp's Q4_K_M and Q5_K_M miss the fidelity gate, Q6_K passes (measured).
    ok = edgepack("build", tiny_llama, "--target", "raspberry-pi", "--target", "react-native", "--out",
                  tmp_path / "out", "--json")
    assert ok.exit_code == 0, ok.stderr
    shipped = json.loads((tmp_path / "out" / "raspberry-pi" / "edgepack.json").read_text())
    ladder = shipped["gguf_choice"]["ladder"]
    assert [r["quant"] for r in ladder] == ["Q4_K_M", "Q5_K_M", "Q6_K"] and shipped["model"]["quant"] == "Q6_K"
    assert all(r["rejected_because"] for r in ladder[:-1]) and not ladder[-1]["rejected_because"]
    assert "GGUF ladder: Q4_K_M rejected (top-1" in (tmp_path / "out" / "report.md").read_text()
    assert json.loads((tmp_path / "out" / "react-native" / "edgepack.json").read_text())["model"]["quant"] == "Q6_K"
    asked = edgepack("build", tiny_llama, "--target", "raspberry-pi", "--out", tmp_path / "asked", "--quant", "Q4_K_M",
                     "--json")
    assert asked.exit_code == ExitCode.GATE_FAILED and not (tmp_path / "asked").exists()
    document = asked.json()  # a CI reads what failed from the one JSON document, nothing being written
    assert document["error"] == "quality gate failed" and document["exit_code"] == ExitCode.GATE_FAILED
    [row] = document["artifacts"]
    assert row["artifact"] == "raspberry-pi/model-Q4_K_M.gguf" and not row["passed"] and row["failures"]


def test_the_stage_line_of_a_verification_gives_the_verdict_the_task_gate_reaches() -> None:
    from packager.verify.gates import EIGHT_BIT

    missed = _fidelity(0.9, 0.05)
    result = VerificationResult(artifact="m.pte", format="pte", quant="8da8w", level="executed", runtime="x",
                                metrics=missed, task=_task(0.9), failures=EIGHT_BIT.check(missed))
    assert result.fidelity_line().endswith("FAIL")  # the raw record, before the task rule
    assert result.verdict_line(EIGHT_BIT, TaskGate(decides=True)).endswith("pass (task gate decided)")
    assert result.verdict_line(EIGHT_BIT, TaskGate()).endswith("FAIL")  # --strict-fidelity
    assert result.failures == EIGHT_BIT.check(missed) and not result.warnings  # the line judged a copy


def test_an_unscreened_ladder_ships_the_first_rung_that_passes_and_notes_the_ones_that_failed() -> None:
    from packager.ladder import first_passing_rung
    from packager.verify.result import VerificationResult

    built: list[str] = []

    def build(failing: set[str]):
        def convert(name: str) -> tuple[str, VerificationResult]:
            built.append(name)
            return name, VerificationResult(name, "x", name, "executed", "r",
                                            failures=[f"{name} too far"] if name in failing else [])
        return convert

    artifact, result, notes = first_passing_rung(("int4", "int8", "none"), "recipe", build({"int4"}), len, True)
    assert (artifact, result.passed, built) == ("int8", True, ["int4", "int8"])
    assert notes == ["recipe int8 (auto: the smallest of int4, int8, none that passes its gate)",
                     "recipe int4 (4.0 MB) failed its gate: int4 too far"]
    built.clear()
    artifact, result, notes = first_passing_rung(("int4", "none"), "recipe", build({"int4", "none"}), len, False)
    assert (artifact, result.passed, built) == ("none", False, ["int4", "none"])  # the last ships either way
    assert notes == ["recipe int4 (4.0 MB) failed its gate: int4 too far"]


@pytest.mark.parametrize(("passing", "needed"), [(set(), True), ({"int8"}, False)])
def test_the_last_rung_is_built_beside_the_screens_and_stopped_when_a_screen_passes(
        monkeypatch: pytest.MonkeyPatch, passing: set[str], needed: bool) -> None:
    import threading

    from packager.beside import beside, discard_flag
    from packager.ladder import rungs_with_fallback

    monkeypatch.setenv("EDGEPACK_THREADS", "1")  # one thread per computation: work runs beside
    started, stopped, said = threading.Event(), [], []

    def build_last(rung: str) -> str:
        assert rung == "fp32"
        started.set()
        flag = discard_flag()
        stopped.append(flag is not None and flag.wait(2))  # a heavy step's claim sees this flag
        return "fp32 built"

    def screen(rung: str) -> list[str]:
        assert started.wait(5)  # the last rung's work runs while the rungs before it are screened
        return [] if rung in passing else [f"{rung} fails"]

    with beside(lambda: None) as work:
        rungs, _ = rungs_with_fallback(("int4", "int8", "fp32"), screen, work, build_last, said.append)
    assert rungs == (["fp32"] if needed else ["int8", "fp32"])
    assert stopped == [not needed] and bool(said) is not needed


@pytest.mark.parametrize("first_passes", [True, False])
def test_a_likely_first_rung_is_verified_unscreened_and_the_rest_are_screened_only_when_it_fails(
        monkeypatch: pytest.MonkeyPatch, first_passes: bool) -> None:
    from packager.beside import beside
    from packager.ladder import rungs_in_order

    monkeypatch.setenv("EDGEPACK_THREADS", "1")
    screened: list[str] = []
    tried: list[str] = []
    notes: list[str] = []

    def screen(rung: str) -> list[str]:
        screened.append(rung)
        return [] if rung == "int8" else [f"{rung} fails"]

    with beside(lambda: None) as work:
        for rung in rungs_in_order(("int4-adapter", "int8", "fp32"), screen, work, lambda rung: rung, lambda _: None,
                                   notes, first_likely=True):
            tried.append(rung)  # the caller converts and verifies `rung` here, and stops at the first pass
            if rung == "int8" or first_passes:
                break
    assert tried == (["int4-adapter"] if first_passes else ["int4-adapter", "int8"])
    assert screened == ([] if first_passes else ["int8"])  # never a screen of the rung that was verified


def test_without_a_likely_first_rung_every_rung_but_the_last_is_screened_first() -> None:
    from packager.beside import beside
    from packager.ladder import rungs_in_order

    screened: list[str] = []
    notes: list[str] = []

    def screen(rung: str) -> list[str]:
        screened.append(rung)
        return [] if rung == "int8" else [f"{rung} fails"]

    with beside(lambda: None) as work:
        rungs = list(rungs_in_order(("int4", "int8", "fp32"), screen, work, lambda rung: rung, lambda _: None, notes))
    assert rungs == ["int8", "fp32"] and screened == ["int8", "int4"]
    assert notes == ["int4: screened in eager PyTorch (int4 fails), not converted"]
