"""A quality ladder is screened from its most precise rung down and stops screening at the first failure."""

from __future__ import annotations

from packager.ladder import rungs_to_build

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
