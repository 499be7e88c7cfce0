"""Conversion children: what a build says when one dies, and that none outlives an interrupted build."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path

import pytest

from packager.child_stage import run_child
from packager.errors import ExitCode, UnsupportedError


def _child_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> str:
    """Write a `python -m` module the child runs (found through PYTHONPATH) and return its name."""
    (tmp_path / "fake_converter.py").write_text(textwrap.dedent(body), encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    return "fake_converter"


def test_a_child_killed_by_the_kernel_is_reported_as_probably_out_of_memory_with_exit_3(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _child_module(tmp_path, monkeypatch, """
        import os, signal, time
        hog = bytearray(300 * 2**20)  # touch memory so the peak is visible in the message
        print("converting layer 3 of 18", flush=True)
        time.sleep(0.3)  # the peak is sampled every 50 ms; a real conversion runs for minutes
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    folder = tmp_path / "entry"
    folder.mkdir()
    parent_memory = bytearray(2**30)  # a large parent (a test session, a build) must not inflate the child's peak
    with pytest.raises(UnsupportedError) as caught:
        run_child(module, folder, {}, "fake conversion of model")
    del parent_memory
    message = caught.value.message
    assert caught.value.exit_code == ExitCode.UNSUPPORTED
    assert "killed by SIGKILL, probably out of memory" in message
    peak_gb = float(message.split("it had reached ")[1].split(" GB")[0])
    assert 0.25 <= peak_gb < 0.9, message
    assert "converting layer 3 of 18" in message  # the log's tail says how far it got


def test_a_child_failing_normally_is_still_an_internal_error_quoting_its_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _child_module(tmp_path, monkeypatch, """
        raise RuntimeError("converter bug")
    """)
    folder = tmp_path / "entry"
    folder.mkdir()
    with pytest.raises(Exception) as caught:
        run_child(module, folder, {}, "fake conversion")
    assert caught.value.exit_code == ExitCode.INTERNAL
    assert "converter bug" in caught.value.message and "killed" not in caught.value.message


def test_an_interrupted_build_kills_its_conversion_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pid_file = tmp_path / "child.pid"
    module = _child_module(tmp_path, monkeypatch, f"""
        import os, time
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        time.sleep(60)
    """)
    folder = tmp_path / "entry"
    folder.mkdir()

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 3.0)
        with pytest.raises(KeyboardInterrupt):
            run_child(module, folder, {}, "fake conversion")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail(f"the conversion child {child} outlived the interrupted build")


_FREED_BLOCKS_CHILD = """
    import json, sys

    def rss_mb():
        return next(int(line.split()[1]) // 1024 for line in open("/proc/self/status") if line.startswith("VmRSS"))

    big = bytearray(16 * 2**20)  # a large block freed: glibc's default then serves blocks below 16 MB from its heap
    del big
    before = rss_mb()
    blocks = [bytearray(2**20) for _ in range(300)]
    last = blocks[-1]  # still in use, at the heap's top
    del blocks
    json.dump({"before": before, "after": rss_mb()}, open(sys.argv[2], "w"))
"""


@pytest.mark.parametrize("user_value", [None, str(32 * 2**20)])
def test_a_child_returns_freed_blocks_to_the_system_unless_the_user_tuned_malloc(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, user_value: str | None) -> None:
    """What a conversion frees is given back before its next phase, instead of staying resident in glibc's heap
    (packager.child_stage.CHILD_MALLOC); a MALLOC_MMAP_THRESHOLD_ the user set is kept, and then it is not."""
    module = _child_module(tmp_path, monkeypatch, _FREED_BLOCKS_CHILD)
    if user_value is None:
        monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    else:
        monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", user_value)
    folder = tmp_path / "entry"
    folder.mkdir()
    result = run_child(module, folder, {}, "fake conversion")
    kept = result["after"] - result["before"]
    if user_value is None:
        assert kept < 50, result
    else:
        assert kept > 250, result


@pytest.mark.parametrize("fails", [False, True])
def test_a_childs_temporary_files_stay_in_its_folder_and_go_with_its_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: bool) -> None:
    """coremltools writes a whole package to the temporary folder for every model it builds and removes it only
    at exit, never when the process is killed: a child's temporary folder is inside its stage folder and is
    removed when the child ends, however it ends."""
    module = _child_module(tmp_path, monkeypatch, f"""
        import json, sys, tempfile
        kept = tempfile.mkdtemp(suffix=".mlpackage")
        open(kept + "/weight.bin", "wb").write(b"0" * 4096)
        print("made", kept, flush=True)
        if {fails}:
            raise RuntimeError("converter bug")
        json.dump({{"kept": kept}}, open(sys.argv[2], "w"))
    """)
    folder = tmp_path / "entry"
    folder.mkdir()
    if fails:
        with pytest.raises(Exception) as caught:
            run_child(module, folder, {}, "fake conversion")
        kept = Path(caught.value.message.split("made ")[1].split()[0])
    else:
        kept = Path(run_child(module, folder, {}, "fake conversion")["kept"])
    assert kept.parent.parent == folder and not kept.exists()
    left = sorted(p.name for p in folder.iterdir())
    assert left == ["export.log", "request.json", *([] if fails else ["result.json"])]
