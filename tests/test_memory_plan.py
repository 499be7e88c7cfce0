"""A build knows each target's memory need before it starts, and stops at once when one cannot fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from packager.errors import ExitCode, UnsupportedError
from packager.memory_plan import TargetNeed, check_fits, step_need
from packager.peak_memory import vm_rss_kb
from packager.progress import Reporter
from packager.scheduler import GB, LEARN_MIN_SCALE, HeavyStep, MeasuredCosts, Scheduler
from tests.cli_helpers import edgepack

CONVERSION = HeavyStep("conversion", 2.0, in_process=False, fixed=GB)


def _scheduler(tmp_path: Path, limit_gb: float, explicit: bool, scale: int = GB) -> Scheduler:
    scheduler = Scheduler(jobs=2, limit=int(limit_gb * GB), explicit=explicit, scale=scale,
                          reporter=Reporter(quiet=True), costs=MeasuredCosts(tmp_path / "costs.json"))
    scheduler.base = GB // 2
    return scheduler


def test_a_step_is_its_fixed_part_plus_its_ratio_and_a_measurement_replaces_the_estimate(tmp_path: Path) -> None:
    scheduler = _scheduler(tmp_path, 20, explicit=False)
    estimated = step_need(scheduler, CONVERSION)
    assert estimated.bytes == 3 * GB and not estimated.measured
    scheduler.learn_peak("conversion", 4.5)
    measured = step_need(scheduler, CONVERSION)
    assert measured.bytes == int(5.5 * GB) and measured.measured
    assert TargetNeed("ios", scheduler.base, measured).peak == 6 * GB


def test_a_checkpoint_read_a_block_at_a_time_has_its_own_estimate_and_its_own_measurement(tmp_path: Path) -> None:
    from packager.verify.fp32_model import STREAM_ABOVE

    step = HeavyStep("conversion", 2.0, in_process=False, fixed=GB, streamed=0.5)
    small = _scheduler(tmp_path, 20, explicit=False, scale=STREAM_ABOVE)
    large = _scheduler(tmp_path, 40, explicit=False, scale=4 * STREAM_ABOVE)
    assert step_need(small, step).bytes == GB + 2 * STREAM_ABOVE
    assert step_need(large, step).bytes == GB + 2 * STREAM_ABOVE  # 0.5 of four times the size
    small.learn_peak("conversion", 3.0)  # learned on a small model: says nothing of a streamed one
    assert step_need(large, step).bytes == GB + 2 * STREAM_ABOVE and not step_need(large, step).measured
    large.learn_peak("conversion (streamed)", 0.75)
    assert step_need(large, step).bytes == GB + 3 * STREAM_ABOVE and step_need(large, step).measured


def test_under_max_ram_a_target_that_cannot_fit_is_refused_by_name_before_anything_runs(tmp_path: Path) -> None:
    scheduler = _scheduler(tmp_path, 2, explicit=True)
    small = TargetNeed("raspberry-pi", scheduler.base, step_need(scheduler, HeavyStep("fp32 reference", 1.0)))
    large = TargetNeed("ios", scheduler.base, step_need(scheduler, CONVERSION))
    assert check_fits([small], scheduler) == []
    with pytest.raises(UnsupportedError) as caught:
        check_fits([small, large], scheduler)
    message = caught.value.message
    assert "ios: about 3.5 GB" in message and "raspberry-pi" not in message.split("Nothing was built")[0]
    assert "--target ios" in message and "--max-ram" in message


def test_under_the_default_budget_an_estimate_a_little_above_the_machine_is_tried_a_measurement_is_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import packager.memory_plan as memory_plan

    monkeypatch.setattr(memory_plan, "host_memory", lambda: 20 * GB)
    scheduler = _scheduler(tmp_path, 20, explicit=False, scale=10 * GB)  # conversion: 1 + 2 x 10 GB, 1.08 x host
    estimated = TargetNeed("ios", scheduler.base, step_need(scheduler, CONVERSION))
    warnings = check_fits([estimated], scheduler)
    assert len(warnings) == 1 and "may not fit" in warnings[0]  # an estimate a little above: warn, try
    scheduler.learn_peak("conversion", 2.0)
    with pytest.raises(UnsupportedError):
        check_fits([TargetNeed("ios", scheduler.base, step_need(scheduler, CONVERSION))], scheduler)


def test_under_the_default_budget_an_estimate_far_beyond_the_machine_is_refused_before_anything_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import packager.memory_plan as memory_plan

    monkeypatch.setattr(memory_plan, "host_memory", lambda: 20 * GB)
    scheduler = _scheduler(tmp_path, 20, explicit=False, scale=16 * GB)  # 1 + 2 x 16 GB: 1.68 x host
    far = TargetNeed("ios", scheduler.base, step_need(scheduler, CONVERSION))
    assert not far.largest.measured
    with pytest.raises(UnsupportedError) as caught:
        check_fits([far], scheduler)
    assert "ios: about 33.5 GB" in caught.value.message and "estimated" in caught.value.message


def test_a_tiny_models_conversion_teaches_nothing_about_real_ones(tmp_path: Path) -> None:
    for scale, learns in ((LEARN_MIN_SCALE // 4, False), (LEARN_MIN_SCALE, True)):
        scheduler = _scheduler(tmp_path / str(scale), 100, explicit=False, scale=scale)
        with scheduler.step(CONVERSION, "conversion") as claim:
            claim.measured_peak = GB + scale  # 1 GB of libraries + one fp32 copy
        learned = scheduler.learned_ratio("conversion")
        assert (learned == pytest.approx(1.0)) if learns else learned is None



def test_a_build_that_cannot_fit_stops_at_once_with_exit_3_and_writes_nothing(
        tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ios declares a conversion child with 1 GB of libraries; raspberry-pi only the fp32 reference (0.5 GB + model).
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEPACK_CACHE", str(cache))
    limit = f"{(vm_rss_kb() * 1024 + int(0.8 * GB)) // 2**20}M"  # this process + 0.8 GB: the reference fits
    result = edgepack("build", tiny_llama, "--target", "raspberry-pi", "--target", "ios", "--out", tmp_path / "out",
                      "--max-ram", limit, "--json")
    assert result.exit_code == ExitCode.UNSUPPORTED, result.stdout
    message = result.json()["message"]
    assert "ios: about" in message and "coreml conversion" in message and "--target ios" in message
    assert "raspberry-pi: about" not in message
    assert not (tmp_path / "out").exists() and not (cache / "reference").exists()  # stopped before any stage


@pytest.mark.parametrize(("runtime", "largest"), [(None, "executorch "), ("litert-lm", "litert-lm export,")])
def test_a_format_the_build_does_not_ask_for_adds_nothing_to_its_need(
        tiny_gemma: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runtime: str | None, largest: str) -> None:
    """LiteRT-LM's export (3.3 x fp32) counts only when --android-runtime asks for LiteRT-LM."""
    monkeypatch.setenv("EDGEPACK_CACHE", str(tmp_path / "cache"))
    limit = f"{(vm_rss_kb() * 1024 + int(0.8 * GB)) // 2**20}M"  # a 1 GB conversion child cannot fit
    extra = ["--android-runtime", runtime] if runtime else []
    result = edgepack("build", tiny_gemma, "--target", "android", *extra, "--out", tmp_path / "out",
                      "--max-ram", limit, "--json")
    assert result.exit_code == ExitCode.UNSUPPORTED, result.stdout
    assert "android: about" in result.json()["message"] and f"its {largest}" in result.json()["message"]


def test_a_no_gate_build_needs_no_memory_for_the_ladder_screens_it_does_not_run(tmp_path: Path) -> None:
    """--no-gate ships a ladder's first rung unscreened, so its need (and `edgepack doctor --no-gate`'s) leaves the
    eager screen out: a 1B Android build measured 5.7 GB where the screen's estimate alone said 9.9."""
    from types import SimpleNamespace

    from packager.ladder import EAGER_SCREEN
    from packager.memory_plan import target_needs

    scheduler = _scheduler(tmp_path, 100, explicit=False, scale=4 * GB)  # 4 GB in fp32: a 1B model

    class Target:
        name = "android"
        heavy_steps = (EAGER_SCREEN, CONVERSION)

    def needs(no_gate: bool) -> str:
        options = SimpleNamespace(no_gate=no_gate, for_target=lambda _target: {})
        ctx = SimpleNamespace(fp32_steps=(), options=options, scheduler=scheduler)
        return target_needs(ctx, [Target()])[0].largest.kind  # type: ignore[arg-type]

    assert needs(no_gate=False) == "eager screen"  # 2.5 x 4 GB beside the conversion's 1 + 2 x 4 GB
    assert needs(no_gate=True) == "conversion"


def test_screens_that_would_not_fit_are_skipped_and_the_need_is_the_conversions(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Gemma 3 4B's eager screens (the fp32 model and its quantized copy in this process) were estimated at 36 GB
    on a 23.5 GB machine, its conversions measured 13 GB: a gated build walks such a ladder unscreened instead of
    stopping, and only a target whose own conversion cannot fit is refused."""
    from types import SimpleNamespace

    import packager.memory_plan as memory_plan
    from packager.ladder import EAGER_SCREEN, rungs_in_order
    from packager.memory_plan import screens_to_skip, target_needs

    monkeypatch.setattr(memory_plan, "host_memory", lambda: 20 * GB)

    class Target:
        name = "ios"
        heavy_steps = (EAGER_SCREEN, CONVERSION)

    def plan(scale_gb: float) -> tuple[dict[str, str], str, float]:
        scheduler = _scheduler(tmp_path, 20, explicit=False, scale=int(scale_gb * GB))
        options = SimpleNamespace(no_gate=False, for_target=lambda _target: {})
        ctx = SimpleNamespace(fp32_steps=(), options=options, scheduler=scheduler)
        scheduler.unscreened = screens_to_skip(ctx, [Target()])  # type: ignore[arg-type]
        [need] = target_needs(ctx, [Target()])  # type: ignore[arg-type]
        return scheduler.unscreened, need.largest.kind, need.peak / GB

    assert plan(4) == ({}, "eager screen", 10.5)  # 0.5 + 2.5 x 4 GB fits 20 GB: screened
    skipped, largest, peak = plan(8)  # the screen 0.5 + 20 GB would not; the conversion 0.5 + 1 + 16 GB does
    assert "ios" in skipped and "20.5 GB of 20.0 GB" in skipped["ios"] and (largest, peak) == ("conversion", 17.5)

    def screen(_rung: str) -> list[str]:
        raise AssertionError("an unscreened ladder screens nothing")

    notes: list[str] = []
    walked = list(rungs_in_order(["int4", "int8"], screen, None, lambda _r: None, lambda _m: None, notes,
                                 unscreened=skipped["ios"]))  # type: ignore[arg-type]
    assert walked == ["int4", "int8"] and notes == [f"rungs not screened: {skipped['ios']}"]
