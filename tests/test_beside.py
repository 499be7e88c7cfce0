"""Work a target starts beside its own steps: at once only when every computation has one thread."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import packager.beside as beside_module
from packager.beside import beside
from packager.progress import Reporter
from packager.scheduler import GB, BuildCancelled, MeasuredCosts, Scheduler


@pytest.fixture
def one_thread_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEPACK_THREADS", "1")
    monkeypatch.setattr(beside_module, "host_cores", lambda: 2)


def test_work_runs_at_the_same_time_as_the_step_that_started_it(one_thread_each: None) -> None:
    both = threading.Barrier(2, timeout=5)  # BrokenBarrierError unless the two run at once
    with beside(lambda: None) as work:
        pending = work.start("side", lambda: both.wait() or "done")
        both.wait()
        assert pending.result() == "done"


def test_with_multi_threaded_computations_work_runs_only_when_asked_for_and_in_the_asking_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEPACK_THREADS", "2")  # two threads per computation: side by side they would spin
    ran: list[str] = []
    with beside(lambda: None) as work:
        asked = work.start("asked", lambda: ran.append(threading.current_thread().name) or 1)
        work.start("speculative", lambda: ran.append("speculative"))
        assert ran == []
        assert asked.result() == 1 and asked.result() == 1
    assert ran == [threading.current_thread().name]  # computed once, here; the unasked one never ran


def test_an_error_reaches_whoever_asks_and_unasked_errors_only_the_log(one_thread_each: None,
                                                                       capfd: pytest.CaptureFixture[str]) -> None:
    def fail() -> None:
        raise ValueError("conversion failed")

    with beside(lambda: None) as work:
        pending = work.start("asked", fail)
        with pytest.raises(ValueError, match="conversion failed"):
            pending.result()
    with beside(lambda: None) as work:
        work.start("speculative conversion", fail)
    assert "speculative conversion (not needed) failed" in capfd.readouterr().err


def test_a_failing_block_cancels_running_work_before_waiting_for_it(one_thread_each: None) -> None:
    stop = threading.Event()
    cancelled = []

    def cancel() -> None:
        cancelled.append(True)
        stop.set()  # as the build's cancel kills a conversion child, so its step returns

    with pytest.raises(RuntimeError), beside(cancel) as work:
        work.start("long conversion", lambda: stop.wait(30))
        raise RuntimeError("the target failed")
    assert cancelled == [True]


def test_discarded_work_has_its_heavy_step_cancelled_and_the_build_goes_on(one_thread_each: None,
                                                                         tmp_path: Path) -> None:
    scheduler = Scheduler(jobs=2, limit=100 * GB, explicit=False, scale=GB, reporter=Reporter(quiet=True),
                          costs=MeasuredCosts(tmp_path / "costs.json"))
    inside = threading.Event()

    def conversion() -> None:
        with scheduler.heavy("conversion", "conversion child", estimate=1.0, in_process=False) as claim:
            inside.set()
            while not claim.cancelled.is_set():  # as a child runner polls before it kills its child
                threading.Event().wait(0.01)
            raise BuildCancelled("conversion child")

    with beside(lambda: None) as work:
        running = work.start("fallback conversion", conversion)
        assert inside.wait(5)
        running.discard()
        with pytest.raises(BuildCancelled):
            running.result()
    assert not scheduler.cancelled.is_set()  # only that step stopped, not the build


def test_deferred_work_discarded_before_anyone_asks_never_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEPACK_THREADS", "2")
    ran = []
    with beside(lambda: None) as work:
        work.start("fallback", lambda: ran.append(1)).discard()
    assert ran == []
