"""Output safety: edgepack never destroys user data, and its exit codes and --json a CI can trust.

--force replaces only a previous edgepack output and never an input; a build name cannot climb
out of dist/; an output folder has one writer at a time; a killed build leaves nothing that the
next build does not clean up; --json prints exactly one strict JSON document on every exit.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import edgepack, edgepack_subprocess, leftovers

from packager.errors import ExitCode, GateFailedError, Terminated
from packager.output_lock import lock_path, output_lock

REPO = Path(__file__).resolve().parent.parent
PI = ("--target", "raspberry-pi", "--quant", "F16", "--quiet")


def _checkpoint(tiny_llama: Path, tmp_path: Path) -> Path:
    """A user's checkpoint folder with a sibling, both of which must survive every refused build."""
    model = tmp_path / "models" / "ck"
    shutil.copytree(tiny_llama, model)
    (tmp_path / "models" / "sibling.txt").write_text("user data")
    return model


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- what --force may replace ------------------------------------------------------------------------------


def test_force_never_replaces_the_checkpoint_folder(tiny_llama: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    model = _checkpoint(tiny_llama, tmp_path)
    before = sorted(p.name for p in model.iterdir())
    result = edgepack("build", model, *PI, "--out", model, "--force")
    assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
    assert str(model) in result.stderr and "input" in result.stderr
    monkeypatch.chdir(model)
    dot = edgepack("build", ".", *PI, "--out", ".", "--force")
    assert dot.exit_code == ExitCode.BAD_INPUT, dot.stderr
    assert sorted(p.name for p in model.iterdir()) == before
    assert leftovers(model.parent, "ck") == ["ck"]


def test_force_never_replaces_the_checkpoint_folders_parent(tiny_llama: Path, tmp_path: Path) -> None:
    model = _checkpoint(tiny_llama, tmp_path)
    result = edgepack("build", model, *PI, "--out", model.parent, "--force")
    assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
    assert "contains the input" in result.stderr
    assert (model / "config.json").is_file() and (model.parent / "sibling.txt").read_text() == "user data"


def test_force_never_replaces_a_checkpoint_reached_through_a_symlink(tiny_llama: Path, tmp_path: Path) -> None:
    model = _checkpoint(tiny_llama, tmp_path)
    link = tmp_path / "link"
    link.symlink_to(model)
    result = edgepack("build", model, *PI, "--out", link, "--force")
    assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
    assert (model / "config.json").is_file()


@pytest.mark.parametrize("name", ["../../victim", "a/b", "a\\b", "..", "a\0b"])
def test_name_with_path_separators_is_refused(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              name: str) -> None:
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    victim = tmp_path / "a" / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("user data")
    monkeypatch.chdir(work)
    result = edgepack("build", tiny_llama, *PI, "--name", name, "--force")
    assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
    assert "--name" in result.stderr and "one folder name" in result.stderr
    assert (victim / "keep.txt").read_text() == "user data"
    assert not (work / "dist").exists()


def test_name_in_edgepack_toml_is_refused_naming_the_file(tiny_llama: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "edgepack.toml"
    config.write_text(f'[build]\ncheckpoint = "{tiny_llama}"\nname = "../victim"\ntargets = ["raspberry-pi"]\n')
    monkeypatch.chdir(tmp_path)
    result = edgepack("build", "--quant", "F16", "--quiet", "--force")
    assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
    assert "edgepack.toml: [build] name" in result.stderr


def test_force_replaces_only_a_previous_edgepack_output(tiny_llama: Path, tmp_path: Path) -> None:
    user_folder = tmp_path / "photos"
    user_folder.mkdir()
    (user_folder / "keep.jpg").write_text("user data")
    refused = edgepack("build", tiny_llama, *PI, "--out", user_folder, "--force")
    assert refused.exit_code == ExitCode.BAD_INPUT, refused.stderr
    assert "no edgepack manifest.json" in refused.stderr and "Nothing was deleted" in refused.stderr
    assert (user_folder / "keep.jpg").read_text() == "user data"

    out = tmp_path / "out"
    assert edgepack("build", tiny_llama, *PI, "--out", out).exit_code == 0
    again = edgepack("build", tiny_llama, *PI, "--out", out, "--force")
    assert again.exit_code == 0, again.stderr
    assert leftovers(tmp_path, "out") == ["out"]


def test_an_existing_out_is_refused_before_the_checkpoint_is_read(tiny_llama: Path, tmp_path: Path) -> None:
    """The output check comes first: a user does not wait for a model to load (and its own errors) to hear it."""
    checkpoint = tmp_path / "model"
    shutil.copytree(tiny_llama, checkpoint)
    (checkpoint / "config.json").write_text("{ not json", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    refused = edgepack("build", checkpoint, *PI, "--out", out)
    assert refused.exit_code == ExitCode.BAD_INPUT, refused.stderr
    assert "the output folder already exists" in refused.stderr and "config.json" not in refused.stderr


def test_force_never_replaces_the_eval_set_or_edgepack_toml_folder(tiny_llama: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    config = project / "edgepack.toml"
    config.write_text(f'[build]\ncheckpoint = "{tiny_llama}"\ntargets = ["raspberry-pi"]\n')
    result = edgepack("build", "--config", config, *PI, "--out", project, "--force")
    assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
    assert config.is_file()


# -- writing the output fails ------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_read_only_out_is_bad_input_naming_the_folder(tiny_llama: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    import packager.atomic as atomic

    def refuse(prefix: str, dir: str) -> str:
        raise OSError(code, os.strerror(code), f"{dir}/{prefix}x")

    monkeypatch.setattr(atomic.tempfile, "mkdtemp", refuse)
    out = tmp_path / "out"
    result = edgepack("build", tiny_llama, *PI, "--out", out)
    assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
    assert str(out) in result.stderr and "Choose an --out you can write to" in result.stderr
    assert leftovers(tmp_path, "out") == []


def test_full_disk_while_writing_is_bad_input_and_leaves_no_partial_folder(tiny_llama: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import packager.pipeline as pipeline

    def full(folder: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pipeline, "write_sha256sums", full)
    out = tmp_path / "out"
    result = edgepack("build", tiny_llama, *PI, "--out", out)
    assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
    assert str(out) in result.stderr and "disk is full" in result.stderr
    assert leftovers(tmp_path, "out") == []


def test_a_default_output_path_too_long_for_the_file_system_is_bad_input(tiny_llama: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    name = "n" * 250  # fits in one path component, but its hidden staging and lock names do not
    result = edgepack("build", tiny_llama, *PI, "--name", name)
    assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
    assert "too long" in result.stderr and name in result.stderr
    assert list((tmp_path / "dist").iterdir()) == []


# -- what a killed build leaves ----------------------------------------------------------------------------


def test_sigterm_mid_build_exits_143_with_a_message_and_leaves_no_partial_folder(tiny_llama: Path,
                                                                                  tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGEPACK_CACHE": str(tmp_path / "cache")}  # cold: slow enough
    proc = subprocess.Popen([sys.executable, "-m", "packager.cli", "build", str(tiny_llama), *PI, "--out", str(out),
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".out.partial-") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "the build ended before it wrote anything"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.TERMINATED == 143, stderr
    assert "SIGTERM" in stderr and "nothing was written" in stderr
    assert json.loads(stdout) == {"passed": False, "error": "interrupted", "message": json.loads(stdout)["message"],
                                  "exit_code": 143}
    assert leftovers(tmp_path, "out") == []


def test_stale_partial_folder_of_a_killed_build_is_removed(tiny_llama: Path, tmp_path: Path) -> None:
    stale = tmp_path / f".other.partial-{_dead_pid()}-abc123"
    live = tmp_path / f".other.partial-{os.getppid()}-def456"  # pytest's parent: alive for this whole test
    for folder in (stale, live):
        folder.mkdir()
        (folder / "model.gguf").write_bytes(b"half")
    result = edgepack("build", tiny_llama, *PI, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    assert not stale.exists()
    assert live.is_dir()


def test_an_output_hidden_by_a_build_killed_while_replacing_it_is_put_back(tmp_path: Path) -> None:
    from packager.atomic import remove_stale_leftovers

    hidden = tmp_path / f".out.old-{_dead_pid()}-1700000000"  # killed between its two renames
    hidden.mkdir()
    (hidden / "manifest.json").write_text("{}")
    remove_stale_leftovers(tmp_path)
    assert (tmp_path / "out" / "manifest.json").is_file() and not hidden.exists()


# -- one writer per output folder --------------------------------------------------------------------------


def test_second_build_into_a_locked_out_says_which_process_holds_it(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with output_lock(out):  # as a first build would hold it
        result = edgepack("build", tiny_llama, *PI, "--out", out)
    assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
    assert f"pid {os.getpid()}" in result.stderr and str(out) in result.stderr
    assert not out.exists()
    assert not lock_path(out).exists()


def test_a_stale_lock_whose_holder_died_does_not_block(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    lock_path(out).write_text(f"{_dead_pid()}\n")  # what a SIGKILLed build leaves: a file nobody flocks
    result = edgepack("build", tiny_llama, *PI, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert (out / "manifest.json").is_file() and not lock_path(out).exists()


# -- --json: exactly one document on every exit -----------------------------------------------------------


def _raise(exc: BaseException) -> Callable[..., None]:
    def raiser(*args: object, **kwargs: object) -> None:
        raise exc

    return raiser


EXITS = {
    "ok": (0, None),
    "gate failed": (ExitCode.GATE_FAILED, GateFailedError("simulated regression")),
    "bad input": (ExitCode.BAD_INPUT, None),
    "unsupported": (ExitCode.UNSUPPORTED, None),
    "internal": (ExitCode.INTERNAL, RuntimeError("simulated bug")),
    "sigint": (ExitCode.INTERRUPTED, KeyboardInterrupt()),
    "sigterm": (ExitCode.TERMINATED, Terminated()),
}


@pytest.mark.parametrize("case", list(EXITS))
def test_json_is_one_document_on_every_exit(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            case: str) -> None:
    import targets.raspberry_pi.target as rpi

    code, exc = EXITS[case]
    if exc is not None:
        monkeypatch.setattr(rpi, "render_tree", _raise(exc))
    model = tmp_path / "missing" if case == "bad input" else tiny_llama
    quant = "Q9_X" if case == "unsupported" else "F16"
    result = edgepack("build", model, "--target", "raspberry-pi", "--quant", quant, "--out", tmp_path / "out",
                      "--json", "--quiet")
    assert result.exit_code == code, result.stderr
    document = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert document["exit_code"] == code and document["passed"] is (code == 0)
    if code:
        assert document["error"] and document["message"]
    assert leftovers(tmp_path, "out") == ([] if code else ["out"])


@pytest.mark.parametrize("args", [("release", "{tmp}/nowhere", "--version", "1.0.0", "--json"),
                                  ("diff", "{tmp}/a", "{tmp}/b", "--json"),
                                  ("doctor", "{tmp}/nowhere", "--json"),
                                  ("release", "--json")])
def test_every_json_command_prints_one_document_when_it_fails(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = edgepack(*(a.format(tmp=tmp_path) for a in args))
    assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
    document = json.loads(result.stdout)
    assert document["passed"] is False and document["exit_code"] == ExitCode.BAD_INPUT


def test_json_build_in_a_real_process_prints_only_its_document(tiny_llama: Path, tmp_path: Path) -> None:
    # A real process: llama.cpp (quantizer, verification) and child stages share its file descriptor 1.
    result = edgepack_subprocess("build", tiny_llama, "--target", "raspberry-pi", "--quant", "Q8_0",
                                 "--out", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["exit_code"] == 0 and document["out"] == str(tmp_path / "out")


def test_native_output_never_reaches_stdout_under_json() -> None:
    # llama.cpp and child processes write to file descriptor 1 directly, past sys.stdout.
    script = ("import os; from packager.cli import _stdout_reserved\n"
              "with _stdout_reserved(True) as real:\n"
              "    os.system('echo native chatter'); print('python chatter')\n"
              "    real.write('{\"passed\": true}\\n')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert json.loads(proc.stdout) == {"passed": True}
    assert "native chatter" in proc.stderr and "python chatter" in proc.stderr
