"""Walking a quality ladder: the smallest artifact that passes its gate, with as few expensive steps as possible.

A target's ladder lists rungs from the smallest (least precise) to the last, which ships whatever
its gate says. Every rung before the last is screened first (a prediction in eager PyTorch, about a
minute, instead of a conversion of several). Each rung is at least as precise as the rungs before
it (it keeps more tensors at more bits), so when a rung's screen fails, the rungs before it are
predicted to fail as well and are not screened: screens run from the most precise rung down and
stop at the first failure. A first rung expected to ship (an adapter kept apart, when the task decides)
is not screened at all: it is converted and verified at once (rungs_in_order).

With an eval set a screen is held to the gates its artifact will be: the eager model answers the eval set
too (in the same step, so the model is built once), and when the task decides (packager.verify.gates.TaskGate)
those answers are the verdict. That includes a rung whose golden-text fidelity passes: on the bundled example
an 8-bit rung passed its fidelity screen, and its artifact then failed the task (2.8 points below fp32)
after 418 s of conversion and verification that a 20-second task screen predicts (2026-12-05).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from packager.beside import Beside
from packager.scheduler import HeavyStep
from packager.verify.gates import TaskGate
from packager.verify.metrics import FidelityMetrics
from packager.verify.result import VerificationResult
from packager.verify.task_eval import TaskMetrics

A = TypeVar("A")

# A screen holds the fp32 model and its quantized copy in this process: 8.8-10 GB measured for a Gemma 3 1B
# (3.7 GiB in fp32) on Android and iOS (2026-12-04; 13.9 GB before cycles were collected after each step).
EAGER_SCREEN = HeavyStep("eager screen", 2.5, gated=True)


def walked(ladder: Sequence[str], no_gate: bool) -> tuple[str, ...]:
    """The rungs a build may try: under --no-gate only the first, the declared default (as GGUF targets do):
    nothing is held to a gate, so no screen or conversion is spent looking for a rung that passes one."""
    return tuple(ladder[:1]) if no_gate else tuple(ladder)


def rungs_to_build(ladder: Sequence[str], screen: Callable[[str], list[str]]) -> tuple[list[str], list[str]]:
    """Return the rungs worth converting, smallest first (those whose screens passed, then the last rung),
    and a note for every rung left out. `screen(rung)` returns the reasons its prediction fails the gate."""
    *screened, last = ladder
    passing: list[str] = []
    notes: list[str] = []
    failed: str | None = None
    for rung in reversed(screened):
        if failed is not None:
            notes.append(f"{rung}: not screened or converted: it is less precise than {failed}, whose screen failed")
            continue
        reasons = screen(rung)
        if reasons:
            failed = rung
            notes.append(f"{rung}: screened in eager PyTorch ({'; '.join(reasons)}), not converted")
        else:
            passing.append(rung)
    return [*reversed(passing), last], list(reversed(notes))


def rungs_with_fallback(ladder: Sequence[str], screen: Callable[[str], list[str]], work: Beside,
                        build: Callable[[str], object], say: Callable[[str], None]) -> tuple[list[str], list[str]]:
    """rungs_to_build, with the last rung built beside the screens (packager.beside), since a conversion takes
    minutes and on a fine-tune that 8 or 4 bits lose the screens fail. That work is kept when no screen passes;
    otherwise it is stopped (a discarded step's claim is cancelled, so its child is killed), and stays the
    fallback, built again only if needed."""
    early = work.start(f"{ladder[-1]} beside the screens", lambda: build(ladder[-1])) if len(ladder) > 1 else None
    rungs, notes = rungs_to_build(ladder, screen)
    if early is not None and rungs[0] != ladder[-1]:
        early.discard()
        say(f"{ladder[-1]}: not needed now that {rungs[0]} passed its screen; its conversion beside the screens stops")
    return rungs, notes


def rungs_in_order(ladder: Sequence[str], screen: Callable[[str], list[str]], work: Beside,
                   build: Callable[[str], object], say: Callable[[str], None], notes: list[str],
                   first_likely: bool = False, unscreened: str | None = None) -> Iterator[str]:
    """The rungs to convert and verify, in order, until one passes (the caller stops asking); notes on rungs
    left out are added to `notes` as they are decided.

    With `first_likely` (a first rung expected to ship: an adapter kept apart, when the task decides), that rung
    is converted and verified without a screen: its verification is the proof a screen only predicts, and its
    screen was the largest step of the bundled example's build (Android's eager 8da8w screen ran 372 s of a
    702-s build beside other work, 2026-12-06). Only if it fails are the other rungs screened, later than they
    would have been.

    With `unscreened` (why: the screens would not fit in memory, packager.memory_plan.screens_to_skip) every rung
    is converted and verified in turn, smallest first.
    """
    if unscreened is not None:
        notes.append(f"rungs not screened: {unscreened}")
        yield from ladder
        return
    if first_likely and len(ladder) > 1:
        yield ladder[0]
        ladder = ladder[1:]
    rungs, decided = rungs_with_fallback(ladder, screen, work, build, say)
    notes += decided
    yield from rungs


def task_screened(fidelity_reasons: list[str], task_gate: TaskGate) -> bool:
    """Whether a screen's verdict needs the eval set's answers (given an eval set): always when the task decides;
    under --strict-fidelity only when fidelity passed, since both must then hold."""
    return task_gate.decides or not fidelity_reasons


def screen_verdict(fidelity: FidelityMetrics, fidelity_reasons: list[str], task_gate: TaskGate,
                   task: Callable[[], TaskMetrics] | None) -> list[str]:
    """The reasons a rung's screen fails. Without an eval set (`task` None) its fidelity reasons. With one, the
    gates the artifact will meet: when the task decides, `task()` (the screen's eval answers) decides and
    fidelity misses are warnings; under --strict-fidelity both must hold. Non-finite numbers always fail."""
    if task is None or not fidelity.finite or not task_screened(fidelity_reasons, task_gate):
        return fidelity_reasons
    task_reasons = task_gate.check(task())
    if task_gate.decides:
        return [*fidelity_reasons, *task_reasons] if task_reasons else []
    return task_reasons


def first_passing_rung(ladder: Sequence[str], what: str, build: Callable[[str], tuple[A, VerificationResult]],
                       megabytes: Callable[[A], float], auto: bool) -> tuple[A, VerificationResult, list[str]]:
    """Convert and verify rungs smallest first until one passes its gate (the last ships either way), for
    formats whose conversion is cheap enough to need no screen. Returns the artifact, its verification and
    a note per rung that failed (and, for `auto`, which rung was chosen)."""
    notes: list[str] = []
    for name in ladder:
        artifact, verification = build(name)
        if verification.passed or name == ladder[-1]:
            break
        notes.append(f"{what} {name} ({megabytes(artifact):.1f} MB) failed its gate: "
                     f"{'; '.join(verification.failures)}")
    if auto:
        notes.insert(0, f"{what} {name} (auto: the smallest of {', '.join(ladder)} that passes its gate)")
    return artifact, verification, notes
