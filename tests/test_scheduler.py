"""Targets built at once: memory claims, cancellation, shared stages computed once, --jobs/--max-ram."""

from __future__ import annotations

import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest
from cli_helpers import edgepack

from packager.child_stage import run_child
from packager.errors import ExitCode, UnsupportedError
from packager.once import OnceMap
from packager.progress import Reporter
from packager.scheduler import GB, BuildCancelled, MeasuredCosts, Scheduler, parse_size


def _scheduler(tmp_path: Path, limit_gb: float, explicit: bool = False, jobs: int = 2) -> Scheduler:
    scheduler = Scheduler(jobs=jobs, limit=int(limit_gb * GB), explicit=explicit, scale=GB,
                          reporter=Reporter(quiet=True), costs=MeasuredCosts(tmp_path / "costs.json"))
    scheduler.base = 0  # this test process's own memory is not what is being tested
    return scheduler


def test_heavy_steps_that_do_not_fit_together_run_one_after_the_other(tmp_path: Path) -> None:
    scheduler = _scheduler(tmp_path, limit_gb=10)
    spans: dict[str, tuple[float, float]] = {}

    def step(name: str) -> str:
        with scheduler.heavy("conversion", name, estimate=6.0):  # 6 GB each: two would need 12 of 10
            start = time.perf_counter()
            time.sleep(0.3)
            spans[name] = (start, time.perf_counter())
        return name

    assert scheduler.run_all([("a", lambda: step("a")), ("b", lambda: step("b"))]) == ["a", "b"]
    first, second = sorted(spans.values())
    assert first[1] <= second[0], spans  # never both at once


def test_heavy_steps_that_fit_together_run_at_the_same_time(tmp_path: Path) -> None:
    scheduler = _scheduler(tmp_path, limit_gb=10)
    both = threading.Barrier(2, timeout=5)  # raises BrokenBarrierError unless both steps hold memory at once

    def step() -> None:
        with scheduler.heavy("conversion", "conversion child", estimate=4.0, in_process=False):
            both.wait()

    scheduler.run_all([("a", step), ("b", step)])


def test_in_process_model_steps_run_one_at_a_time_even_when_memory_allows(tmp_path: Path) -> None:
    scheduler = _scheduler(tmp_path, limit_gb=100)
    inside = []
    overlap = []

    def step() -> None:
        with scheduler.heavy("screen", "eager screen", estimate=1.0):
            inside.append(1)
            overlap.append(len(inside))
            time.sleep(0.2)
            inside.pop()

    scheduler.run_all([("a", step), ("b", step)])
    assert overlap == [1, 1]


def test_an_in_process_step_that_only_runs_an_artifact_runs_beside_a_model_step(tmp_path: Path) -> None:
    scheduler = _scheduler(tmp_path, limit_gb=100)
    both = threading.Barrier(2, timeout=5)  # raises BrokenBarrierError unless both steps run at once

    def model_step() -> None:
        with scheduler.heavy("screen", "eager screen", estimate=1.0):
            both.wait()

    def runtime_step() -> None:
        with scheduler.heavy("simulation", "simulating a package", estimate=1.0, alone=False):
            both.wait()

    scheduler.run_all([("a", model_step), ("b", runtime_step)])


def test_memory_an_in_process_step_left_in_reference_cycles_is_returned_when_it_ends(tmp_path: Path) -> None:
    """What a step drops but keeps in a cycle (torchao's replaced weights do) must not sit beside the next child."""
    import os

    import numpy as np

    from packager.peak_memory import vm_rss_kb

    scheduler = _scheduler(tmp_path, limit_gb=100)
    before = vm_rss_kb(os.getpid())
    with scheduler.heavy("screen", "eager screen", estimate=1.0):
        node: dict[str, object] = {"data": np.ones(64 * 2**20)}  # 512 MB of float64, touched
        node["self"] = node  # a cycle: reference counting alone never frees it
        assert vm_rss_kb(os.getpid()) - before > 400 * 2**10
        del node
    assert vm_rss_kb(os.getpid()) - before < 100 * 2**10


def test_a_step_larger_than_an_explicit_max_ram_stops_before_it_starts(tmp_path: Path) -> None:
    scheduler = _scheduler(tmp_path, limit_gb=4, explicit=True)
    started = []
    with pytest.raises(UnsupportedError) as caught, scheduler.heavy("conversion", "conversion of model", estimate=8.0):
        started.append(True)
    assert not started
    assert caught.value.exit_code == ExitCode.UNSUPPORTED
    assert "about 8.0 GB" in caught.value.message and "--max-ram" in caught.value.message


def test_a_past_measurement_replaces_the_estimate(tmp_path: Path) -> None:
    scheduler = _scheduler(tmp_path, limit_gb=10)
    assert scheduler.expected("export", 4.0) == 4 * GB
    scheduler.learn_peak("export", 2.5)
    assert scheduler.expected("export", 4.0) == int(2.5 * GB)


def test_a_measurement_speaks_only_for_models_of_its_size(tmp_path: Path) -> None:
    """Ratios learned on a 270M (fixed costs over few bytes) over-predicted a 4B's Android build (13.2 vs 10.6 GB)."""
    small, large = _scheduler(tmp_path, limit_gb=10), _scheduler(tmp_path, limit_gb=10)
    large.scale = 16 * GB
    small.learn_peak("export", 2.5)
    assert small.expected("export", 4.0) == int(2.5 * GB)
    assert large.expected("export", 4.0) == 64 * GB and large.learned_ratio("export") is None


def _child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> str:
    (tmp_path / "fake_child.py").write_text(textwrap.dedent(f"""
        import json, sys
        {textwrap.indent(textwrap.dedent(body), '        ').strip()}
        json.dump({{"ok": True}}, open(sys.argv[2], "w"))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return "fake_child"


def test_a_child_records_its_measured_peak_for_the_next_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _child(tmp_path, monkeypatch, """
        import time
        hog = bytearray(200 * 2**20)
        time.sleep(0.3)
    """)
    scheduler = _scheduler(tmp_path, limit_gb=10)
    folder = tmp_path / "entry"
    folder.mkdir()
    with scheduler.heavy("fake export", "fake export", estimate=4.0) as claim:
        run_child(module, folder, {}, "fake export", claim)
    learned = scheduler.learned_ratio("fake export")
    assert learned is not None and 0.19 < learned < 0.6, learned  # its own 200+ MB of the 1 GB scale, not 4 GB


def test_a_failing_target_cancels_the_others_and_kills_their_children(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pid_file = tmp_path / "child.pid"
    module = _child(tmp_path, monkeypatch, f"""
        import os, time
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        time.sleep(60)
    """)
    scheduler = _scheduler(tmp_path, limit_gb=10)
    folder = tmp_path / "entry"
    folder.mkdir()

    def converting() -> None:
        with scheduler.heavy("fake export", "fake export", estimate=1.0) as claim:
            run_child(module, folder, {}, "fake export", claim)

    def failing() -> None:
        while not pid_file.exists():
            time.sleep(0.05)
        raise ValueError("the web target failed")

    start = time.perf_counter()
    with pytest.raises(ValueError, match="the web target failed"):
        scheduler.run_all([("android", converting), ("web", failing)])
    assert time.perf_counter() - start < 20
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_a_waiting_step_stops_waiting_when_the_build_is_cancelled(tmp_path: Path) -> None:
    scheduler = _scheduler(tmp_path, limit_gb=10)
    with scheduler.heavy("conversion", "first", estimate=8.0):
        scheduler.cancelled.set()
        with pytest.raises(BuildCancelled), scheduler.heavy("conversion", "second", estimate=8.0):
            pass


def test_a_shared_value_is_computed_once_while_other_threads_wait() -> None:
    values: OnceMap[int] = OnceMap()
    calls = []

    def compute() -> int:
        calls.append(1)
        time.sleep(0.2)
        return 42

    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(values.get("reference", compute))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [42] * 4 and len(calls) == 1


@pytest.mark.parametrize("text,size", [("12G", 12 * GB), ("800M", 800 * 2**20), ("1.5GB", int(1.5 * GB)),
                                       ("6", 6 * GB)])
def test_max_ram_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_max_ram_too_small_for_the_build_exits_3_with_one_json_document(
        tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEPACK_CACHE", str(tmp_path / "cache"))  # cold: the fp32 reference must be computed
    result = edgepack("build", tiny_llama, "--target", "raspberry-pi", "--out", tmp_path / "out", "--max-ram", "1M",
                      "--json")
    assert result.exit_code == ExitCode.UNSUPPORTED, result.stderr
    assert "--max-ram" in result.json()["message"]
    assert not (tmp_path / "out").exists()


def test_bad_jobs_and_max_ram_values_are_bad_input(tiny_llama: Path, tmp_path: Path) -> None:
    for flag, value in (("--jobs", "0"), ("--max-ram", "lots")):
        result = edgepack("build", tiny_llama, "--target", "raspberry-pi", "--out", tmp_path / "out", flag, value)
        assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
        assert flag in result.stderr


def test_two_targets_built_at_once_match_them_built_one_at_a_time(
        tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outs = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs-{jobs}"
        monkeypatch.setenv("EDGEPACK_CACHE", str(tmp_path / f"cache-{jobs}"))  # both cold
        result = edgepack("build", tiny_llama, "--target", "raspberry-pi", "--target", "react-native", "--quant",
                          "Q8_0", "--out", out, "--jobs", jobs)
        assert result.exit_code == 0, result.stderr
        outs[jobs] = out
    for target in ("raspberry-pi", "react-native"):
        files = sorted(p.relative_to(outs["1"]) for p in (outs["1"] / target).rglob("*") if p.is_file())
        assert files, target
        for name in files:
            assert (outs["1"] / name).read_bytes() == (outs["2"] / name).read_bytes(), name


def test_the_longest_targets_start_first_by_measurement_else_by_their_hint(tmp_path: Path) -> None:
    scheduler = _scheduler(tmp_path, limit_gb=10, jobs=1)
    scheduler.jobs = 2  # two at once, so the first two started are the two expected to take longest
    started: list[str] = []
    lock = threading.Lock()

    def job(name: str) -> str:
        with lock:
            started.append(name)
        time.sleep(0.2)
        return name

    names = ["pi", "phone", "browser"]
    hints = {"phone": 900.0, "browser": 200.0}
    assert scheduler.run_all([(n, lambda n=n: job(n)) for n in names], hints) == names
    assert set(started[:2]) == {"phone", "browser"}
    for name, seconds in (("pi", 5000.0), ("phone", 100.0), ("browser", 10.0)):  # measurements beat hints
        scheduler.costs.learn_seconds(name, seconds)
    started.clear()
    scheduler.run_all([(n, lambda n=n: job(n)) for n in names], hints)
    assert set(started[:2]) == {"pi", "phone"}


def test_a_failure_kills_what_the_other_targets_started_but_spares_processes_older_than_the_build(
        tmp_path: Path) -> None:
    older = subprocess.Popen(["sleep", "60"])  # e.g. a server a test session started before the build
    try:
        scheduler = _scheduler(tmp_path, limit_gb=10)
        started = threading.Event()

        def browser() -> None:  # a target waiting on a tool it started itself (not a conversion child)
            proc = subprocess.Popen(["sleep", "60"])
            started.set()
            proc.wait()
            raise RuntimeError(f"the tool exited with {proc.returncode}")

        def failing() -> None:
            started.wait(5)
            raise ValueError("the android target failed")

        start = time.perf_counter()
        with pytest.raises(ValueError, match="android target failed"):
            scheduler.run_all([("web", browser), ("android", failing)])
        assert time.perf_counter() - start < 20
        assert older.poll() is None  # still running
    finally:
        older.kill()
        older.wait()


def test_targets_built_at_once_share_the_cores_in_this_process_and_in_conversion_children(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import sys

    import numpy  # noqa: F401  (its BLAS is loaded, so threadpoolctl has a pool to limit)
    import torch
    from threadpoolctl import threadpool_info

    import packager.threads as threads

    monkeypatch.setattr(threads, "host_cores", lambda: 2)
    for name in (*threads.THREAD_VARIABLES, threads.EDGEPACK_THREADS):
        monkeypatch.delenv(name, raising=False)
    torch_before = torch.get_num_threads()
    blas_before = [pool["num_threads"] for pool in threadpool_info()]
    child = "import torch, numpy; from threadpoolctl import threadpool_info; " \
            "print(torch.get_num_threads(), max(p['num_threads'] for p in threadpool_info()))"
    seen: dict[str, object] = {}

    def job(name: str) -> str:
        out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout
        seen[name] = (torch.get_num_threads(), threads.compute_threads(), out.split())
        return name

    scheduler = _scheduler(tmp_path, limit_gb=10, jobs=2)
    assert scheduler.run_all([("a", lambda: job("a")), ("b", lambda: job("b")), ("c", lambda: job("c"))]) == [
        "a", "b", "c"]
    # 2 cores, 2 at once: 1 thread each, here (torch, llama.cpp/ExecuTorch's count) and in every child (whose
    # torch and OpenBLAS would otherwise start one per core)
    assert set(map(str, seen.values())) == {str((1, 1, ["1", "1"]))}
    assert torch.get_num_threads() == torch_before
    assert [pool["num_threads"] for pool in threadpool_info()] == blas_before
    assert threads.EDGEPACK_THREADS not in os.environ and "OMP_NUM_THREADS" not in os.environ
    # one job at a time: nothing is shared, nothing limited
    seen.clear()
    assert _scheduler(tmp_path, limit_gb=10, jobs=1).run_all([("a", lambda: job("a"))]) == ["a"]
    assert seen["a"][1] == 2
