"""The stage cache never leaks into outputs, never ships a damaged entry, and never leaves temporaries."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_helpers import edgepack, leftovers

import packager.stages as stages
import packager.verify.gguf_check as gguf_check
from packager.errors import BadInputError, EdgepackError, ExitCode, InternalError
from packager.pipeline import BuildRequest, run_build
from packager.progress import Reporter
from packager.stage_cache import MANIFEST, StageCache, collect_stale_temporaries, place_artifact
from packager.verify.gates import Gate

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Made:
    text: str


class SpyReporter(Reporter):
    """A quiet reporter that keeps what it would have said."""

    def __init__(self) -> None:
        super().__init__(quiet=True)
        self.lines: list[str] = []

    def say(self, message: str) -> None:
        self.lines.append(message)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _temporaries(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if ".tmp" in p.name or ".old-" in p.name)


def _make(calls: list[int], text: str = "weights"):
    def build(folder: Path) -> Made:
        calls.append(1)
        (folder / "model.bin").write_text(text)
        (folder / "sub").mkdir()
        (folder / "sub" / "part.bin").write_text(text * 2)
        return Made(text)
    return build


def _entry(cache: StageCache, calls: list[int], binds: str = ""):
    return cache.entry("kind", "k1", "make", _make(calls), encode=lambda m: {"text": m.text},
                       decode=lambda d: Made(**d), binds=binds)


# -- the helper itself, with a fake stage -----------------------------------------------------------


def test_an_entry_is_built_once_then_reused_with_its_typed_result(tmp_path: Path) -> None:
    cache, calls = StageCache(tmp_path, SpyReporter()), []
    first = _entry(cache, calls)
    second = _entry(cache, calls)
    assert calls == [1]
    assert (first.from_cache, second.from_cache) == (False, True)
    assert second.value == Made("weights")
    assert second.sha256("sub/part.bin") == _sha256(tmp_path / "kind" / "k1" / "sub" / "part.bin")
    assert _temporaries(tmp_path) == []


def test_a_flipped_bit_in_an_entry_file_is_evicted_and_rebuilt_with_a_line_saying_so(tmp_path: Path) -> None:
    reporter = SpyReporter()
    cache, calls = StageCache(tmp_path, reporter), []
    _entry(cache, calls)
    part = tmp_path / "kind" / "k1" / "sub" / "part.bin"
    data = bytearray(part.read_bytes())
    data[3] ^= 0x01
    part.write_bytes(bytes(data))
    again = _entry(cache, calls)
    assert calls == [1, 1] and not again.from_cache
    assert part.read_text() == "weightsweights"
    assert any("kind/k1: sub/part.bin changed since it was written (sha256 mismatch); rebuilding" in line
               for line in reporter.lines), reporter.lines


def test_a_record_of_another_artifact_or_with_an_edited_result_is_not_reused(tmp_path: Path) -> None:
    cache, calls = StageCache(tmp_path, SpyReporter()), []
    _entry(cache, calls, binds="aaa")
    _entry(cache, calls, binds="bbb")  # same key, but it verified a different artifact
    assert calls == [1, 1]
    manifest = tmp_path / "kind" / "k1" / MANIFEST
    data = json.loads(manifest.read_text())
    data["result"]["text"] = "forged"
    manifest.write_text(json.dumps(data))
    assert _entry(cache, calls, binds="bbb").value == Made("weights")
    assert calls == [1, 1, 1]


@pytest.mark.parametrize("failure", [RuntimeError("converter crashed"), KeyboardInterrupt()])
def test_a_failing_build_leaves_no_temporary(tmp_path: Path, failure: BaseException) -> None:
    cache = StageCache(tmp_path, SpyReporter())

    def build(folder: Path) -> None:
        (folder / "half.bin").write_bytes(b"x" * 1000)
        raise failure

    with pytest.raises(type(failure)):
        cache.entry("kind", "k1", "make", build)
    assert list((tmp_path / "kind").iterdir()) == []


def test_a_full_disk_is_bad_input_naming_the_cache_and_the_fix(tmp_path: Path) -> None:
    cache = StageCache(tmp_path, SpyReporter())

    def build(folder: Path) -> None:
        (folder / "half.bin").write_bytes(b"x" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(BadInputError) as caught:
        cache.entry("kind", "k1", "make", build)
    assert str(tmp_path) in caught.value.message and "EDGEPACK_CACHE" in caught.value.message
    assert list((tmp_path / "kind").iterdir()) == []


def test_a_tool_that_hides_enospc_still_fails_as_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import packager.stage_cache as stage_cache

    cache = StageCache(tmp_path, SpyReporter())

    def quantizer(folder: Path) -> None:  # llama.cpp's quantizer only returns a code
        (folder / "half.bin").write_bytes(b"x")
        raise InternalError("llama.cpp's quantizer failed (1)")

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(stage_cache.shutil, "disk_usage", lambda path: usage._replace(free=4096))
    with pytest.raises(BadInputError, match="ran out of disk space"):
        cache.entry("kind", "k1", "quantize", quantizer)
    assert list((tmp_path / "kind").iterdir()) == []


def test_when_another_build_finishes_the_same_entry_first_theirs_is_kept_and_ours_dropped(tmp_path: Path) -> None:
    cache, calls = StageCache(tmp_path, SpyReporter()), []
    other = StageCache(tmp_path, SpyReporter())

    def slow_build(folder: Path) -> Made:
        _entry(other, calls)  # the other build publishes while ours is still writing
        (folder / "model.bin").write_text("ours")
        return Made("ours")

    entry = cache.entry("kind", "k1", "make", slow_build, encode=lambda m: {"text": m.text},
                        decode=lambda d: Made(**d))
    assert entry.value == Made("weights") and entry.from_cache
    assert (tmp_path / "kind" / "k1" / "model.bin").read_text() == "weights"
    assert _temporaries(tmp_path) == []


def test_stale_temporaries_of_a_killed_run_are_collected(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    kind = tmp_path / "gguf"
    kind.mkdir()
    killed_build = kind / f".abc.tmp-{dead.pid}-0a1b2c3d"
    killed_build.mkdir()
    (killed_build / "model-F16.gguf").write_bytes(b"half")
    killed_eviction = kind / f".abc.old-{dead.pid}-0a1b2c3d"
    killed_eviction.mkdir()
    running = kind / f".abc.tmp-{os.getpid()}-00000000"
    running.mkdir()
    legacy_old, legacy_new = kind / "old.tmp", kind / "new.tmp"
    legacy_old.write_bytes(b"x")
    legacy_new.write_bytes(b"x")

    legacy_entry = kind / "0123456789abcdef01234567"  # an older version's gguf folder, killed mid-write
    legacy_entry.mkdir()
    (legacy_entry / "model-F16.gguf").write_bytes(b"done")
    (legacy_entry / "model-Q8_0.tmp").write_bytes(b"half")
    two_hours_ago = time.time() - 7200
    for old in (legacy_old, legacy_entry / "model-Q8_0.tmp"):
        os.utime(old, (two_hours_ago, two_hours_ago))

    removed = collect_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted(
        [killed_build.name, killed_eviction.name, "old.tmp", "model-Q8_0.tmp"])
    assert running.exists() and legacy_new.exists() and (legacy_entry / "model-F16.gguf").exists()


def test_place_artifact_copies_and_never_links(tmp_path: Path) -> None:
    src = tmp_path / "cache.bin"
    src.write_bytes(b"model")
    dest = tmp_path / "out" / "model.bin"
    place_artifact(src, dest)
    dest.write_bytes(dest.read_bytes() + b"!")
    assert src.read_bytes() == b"model"
    assert src.stat().st_ino != dest.stat().st_ino and src.stat().st_nlink == 1


# -- whole builds ----------------------------------------------------------------------------------


def _build(checkpoint: Path, out: Path, *extra: str):
    return edgepack("build", checkpoint, "--target", "raspberry-pi", "--out", out, "--quant", "Q8_0", *extra)


def test_build_output_shares_no_inode_with_the_cache(tiny_llama: Path, tmp_path: Path, cold_cache: Path) -> None:
    for out in ("a", "b"):  # the second build places its artifacts from cache hits
        assert _build(tiny_llama, tmp_path / out).exit_code == 0
    cache_inodes = {(p.stat().st_dev, p.stat().st_ino) for p in cold_cache.rglob("*") if p.is_file()}
    outputs = [p for p in (tmp_path / "a").rglob("*") if p.is_file()] + [
        p for p in (tmp_path / "b").rglob("*") if p.is_file()]
    assert any(p.name == "model-Q8_0.gguf" for p in outputs)
    for p in outputs:
        assert (p.stat().st_dev, p.stat().st_ino) not in cache_inodes, p
        assert p.stat().st_nlink == 1, p


def test_appended_byte_in_a_cached_gguf_is_detected_evicted_and_rebuilt(tiny_llama: Path, tmp_path: Path,
                                                                       cold_cache: Path) -> None:
    assert _build(tiny_llama, tmp_path / "a").exit_code == 0
    shipped = tmp_path / "a" / "raspberry-pi" / "model-Q8_0.gguf"
    good = _sha256(shipped)
    (cached,) = cold_cache.glob("gguf/*/model-Q8_0.gguf")
    with cached.open("ab") as fh:
        fh.write(b"\0")
    with shipped.open("ab") as fh:  # an edited bundle must not reach the cache either
        fh.write(b"\0")
    second = _build(tiny_llama, tmp_path / "b")
    assert second.exit_code == 0, second.stderr
    assert "model-Q8_0.gguf changed since it was written (sha256 mismatch); rebuilding" in second.stderr
    assert _sha256(tmp_path / "b" / "raspberry-pi" / "model-Q8_0.gguf") == good
    assert _sha256(cached) == good


def _verify_record(cache: Path) -> Path:
    records = [m for m in cache.glob(f"verify/*/{MANIFEST}")
               if json.loads(m.read_text())["result"].get("format") == "gguf"]
    assert len(records) == 1, records
    return records[0]


def test_hand_edited_verification_record_is_not_trusted(tiny_llama: Path, tmp_path: Path, cold_cache: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    strict = Gate("impossible", min_top1_decisive=1.01, max_kl=-1.0)
    monkeypatch.setattr(gguf_check, "gate_for", lambda quant: strict)
    monkeypatch.setattr(stages, "gate_for", lambda quant: strict)
    first = _build(tiny_llama, tmp_path / "a")
    assert first.exit_code == ExitCode.GATE_FAILED, first.stderr

    # A naive edit: the record's own hash no longer matches, so it is recomputed (and fails again).
    manifest = _verify_record(cold_cache)
    data = json.loads(manifest.read_text())
    data["result"]["metrics"]["top1"] = data["result"]["metrics"]["top1_decisive"] = 0.999
    data["result"]["failures"] = []
    manifest.write_text(json.dumps(data))
    second = _build(tiny_llama, tmp_path / "b")
    assert second.exit_code == ExitCode.GATE_FAILED, second.stderr
    assert "its recorded result changed since it was written (sha256 mismatch); rebuilding" in second.stderr
    assert json.loads(_verify_record(cold_cache).read_text())["result"]["metrics"]["top1"] != 0.999

    # A careful forger who also rewrites the hash: the gate is applied again to the stored numbers.
    manifest = _verify_record(cold_cache)
    data = json.loads(manifest.read_text())
    data["result"]["failures"] = []
    data["result_sha256"] = hashlib.sha256(json.dumps(data["result"], sort_keys=True).encode()).hexdigest()
    manifest.write_text(json.dumps(data))
    third = _build(tiny_llama, tmp_path / "c")
    assert third.exit_code == ExitCode.GATE_FAILED, third.stderr
    assert "rebuilding" not in third.stderr


def test_failed_stage_leaves_no_temporary_in_the_cache(tiny_llama: Path, tmp_path: Path, cold_cache: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(ckpt: object, path: Path, *args: object) -> None:
        path.write_bytes(b"GGUF half-written")
        raise KeyboardInterrupt

    monkeypatch.setattr(stages, "write_gguf", crash)
    request = BuildRequest(checkpoint=tiny_llama, targets=["raspberry-pi"], out=tmp_path / "out",
                           options=stages.BuildOptions(quant="Q8_0"))
    with pytest.raises(KeyboardInterrupt):
        run_build(request, Reporter(quiet=True))
    assert _temporaries(cold_cache) == []
    assert list(cold_cache.glob("gguf/*")) == []
    assert leftovers(tmp_path, "out") == []


def test_enospc_in_the_cache_is_a_clean_exit_2(tiny_llama: Path, tmp_path: Path, cold_cache: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(ckpt: object, path: Path, *args: object) -> None:
        path.write_bytes(b"GGUF half-written")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(stages, "write_gguf", disk_full)
    result = _build(tiny_llama, tmp_path / "out")
    assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
    assert str(cold_cache) in result.stderr and "EDGEPACK_CACHE" in result.stderr
    assert _temporaries(cold_cache) == [] and list(cold_cache.glob("gguf/*")) == []
    assert leftovers(tmp_path, "out") == []


def test_two_builds_of_one_checkpoint_at_once_both_succeed(tiny_llama: Path, tmp_path: Path) -> None:
    env = {**os.environ, "EDGEPACK_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    logs = {out: (tmp_path / f"{out}.log").open("w") for out in ("a", "b")}
    procs = [subprocess.Popen([sys.executable, "-m", "packager.cli", "build", str(tiny_llama), "--target",
                               "raspberry-pi", "--out", str(tmp_path / out), "--quant", "Q8_0"],
                              stdout=subprocess.DEVNULL, stderr=log, env=env)
             for out, log in logs.items()]
    codes = [p.wait(timeout=600) for p in procs]
    for log in logs.values():
        log.close()
    for code, out in zip(codes, logs, strict=True):
        assert code == 0, (tmp_path / f"{out}.log").read_text()[-3000:]
    a, b = (tmp_path / out / "raspberry-pi" / "model-Q8_0.gguf" for out in ("a", "b"))
    assert _sha256(a) == _sha256(b)
    assert _temporaries(tmp_path / "cache") == []


def test_the_bundled_example_is_a_checked_cache_entry(cold_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import packager.examples as examples

    calls: list[int] = []

    def hf_folder(gguf: Path, out: Path) -> Path:
        calls.append(1)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"weights")
        return out

    monkeypatch.setattr(examples, "_assemble_gguf", lambda dest: dest)
    monkeypatch.setattr(examples, "gguf_to_hf_folder", hf_folder)
    folder = examples.bundled_example(Reporter(quiet=True))
    assert examples.bundled_example(Reporter(quiet=True)) == folder and calls == [1]
    (folder / "model.safetensors").write_bytes(b"weightz")
    assert (examples.bundled_example(Reporter(quiet=True)) / "model.safetensors").read_bytes() == b"weights"
    assert calls == [1, 1] and _temporaries(cold_cache) == []


def test_a_ggufs_metadata_is_parsed_once_and_each_caller_gets_its_own_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from packager.examples import gguf_read_once

    calls: list[bool] = []

    def parse(path: object, return_tensors: bool = False, **kwargs: object) -> dict:
        calls.append(return_tensors)
        return {"config": {"vocab": ["a", "b"]}, "tensors": {"w": 1} if return_tensors else {}}

    monkeypatch.setattr(gguf_utils, "load_gguf_checkpoint", parse)
    path = tmp_path / "model.gguf"
    with gguf_read_once():
        first = gguf_utils.load_gguf_checkpoint(path, return_tensors=False)  # the config's parse
        first["config"]["vocab"].append("c")  # a caller that edits what it got
        weights = gguf_utils.load_gguf_checkpoint(path, return_tensors=True, model_to_load=None)
        second = gguf_utils.load_gguf_checkpoint(str(path))  # the tokenizer's: the same file by another spelling
    assert calls == [False, True]  # the tensors are read, the metadata parsed once
    assert weights["tensors"] == {"w": 1} and second["config"]["vocab"] == ["a", "b"]
    assert gguf_utils.load_gguf_checkpoint is parse  # put back on leaving


def test_the_bundled_example_sends_the_converters_output_to_a_log(
        cold_cache: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    import packager.examples as examples

    def noisy(gguf: Path, out: Path) -> Path:
        os.write(2, b"Converting and de-quantizing GGUF tensors: 100%\n")
        os.write(1, b"Writing model shards\n")
        if os.environ.get("EXAMPLE_FAILS"):
            raise EdgepackError("conversion failed")
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"weights")
        return out

    monkeypatch.setattr(examples, "_assemble_gguf", lambda dest: dest)
    monkeypatch.setattr(examples, "gguf_to_hf_folder", noisy)
    monkeypatch.setenv("EXAMPLE_FAILS", "1")
    with pytest.raises(EdgepackError) as failed:
        examples.bundled_example(Reporter(quiet=True))
    kept = sorted((cold_cache / "logs").glob("*.log"))
    assert len(kept) == 1 and str(kept[0]) in failed.value.message
    assert "de-quantizing" in kept[0].read_text()
    monkeypatch.delenv("EXAMPLE_FAILS")
    examples.bundled_example(Reporter(quiet=True))
    seen = capfd.readouterr()
    assert "de-quantizing" not in seen.err and "model shards" not in seen.out
    assert sorted((cold_cache / "logs").glob("*.log")) == kept  # the successful run's log is gone


def test_two_threads_asking_for_one_entry_build_it_once_and_the_second_opens_it(tmp_path: Path) -> None:
    import threading

    cache = StageCache(tmp_path / "cache", Reporter(quiet=True))
    building, release, built = threading.Event(), threading.Event(), []

    def build(folder: Path) -> dict:
        built.append(threading.current_thread().name)
        building.set()
        assert release.wait(5)  # the other thread asks while this one is still building
        (folder / "model.bin").write_bytes(b"weights")
        return {"name": "model.bin"}

    results = {}

    def ask(name: str) -> None:
        results[name] = cache.entry("coreml", "k1", "convert", build)

    first = threading.Thread(target=ask, args=("first",), name="first")
    first.start()
    assert building.wait(5)
    second = threading.Thread(target=ask, args=("second",), name="second")
    second.start()
    release.set()
    first.join(10)
    second.join(10)
    assert built == ["first"]
    assert not results["first"].from_cache and results["second"].from_cache
    assert results["second"].path("model.bin").read_bytes() == b"weights"


# ---------------------------------------------------------------------------------------------
# What a warm build does not redo: digests and checks remembered by the files' status.


@pytest.fixture
def fresh_memo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import packager.fingerprint as fingerprint

    monkeypatch.setenv("EDGEPACK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fingerprint, "_memo", None)
    monkeypatch.setattr(fingerprint, "_MEMO_MIN_BYTES", 0)  # the tests' files are small
    return tmp_path / "cache" / "file-digests.json"


def _settle(path: Path) -> None:
    """Wait until the file's status is older than the memo's settling time."""
    import packager.fingerprint as fingerprint

    while time.time() <= fingerprint._stat_key(path)[1]:
        time.sleep(0.05)


def test_a_remembered_digest_is_used_until_a_write_with_the_same_size_and_mtime(
        fresh_memo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import packager.fingerprint as fingerprint

    path = fresh_memo.parent.parent / "weights.bin"
    path.write_bytes(b"aaaa")
    with monkeypatch.context() as patch:
        patch.setattr(fingerprint, "_SETTLED_S", 3600.0)  # "just written", however slow this host is
        assert fingerprint.file_sha256(path) == _sha256(path)
    assert not fresh_memo.exists()  # hashed, not remembered (a second write could share its tick)
    _settle(path)
    assert fingerprint.file_sha256(path) == hashlib.sha256(b"aaaa").hexdigest()
    assert len(json.loads(fresh_memo.read_text())) == 1
    fingerprint._memo = None  # a new process reads the memo file
    mtime = path.stat().st_mtime_ns
    path.write_bytes(b"bbbb")
    os.utime(path, ns=(mtime, mtime))  # same size, same mtime: only the ctime tells
    assert fingerprint.file_sha256(path) == hashlib.sha256(b"bbbb").hexdigest()


def test_targets_hashing_in_threads_remember_every_digest(fresh_memo: Path) -> None:
    """Targets build in threads of one process; each remembered digest rewrites the memo file."""
    from concurrent.futures import ThreadPoolExecutor

    import packager.fingerprint as fingerprint

    files = []
    for i in range(64):
        path = fresh_memo.parent.parent / f"f{i}.bin"
        path.write_bytes(str(i).encode() * 100)
        files.append(path)
    for path in files:
        _settle(path)
    with ThreadPoolExecutor(8) as pool:
        digests = list(pool.map(fingerprint.file_sha256, files))
    assert digests == [_sha256(p) for p in files]
    assert len(json.loads(fresh_memo.read_text())) == 64


def test_scaffold_checks_are_remembered_only_when_all_passed(fresh_memo: Path) -> None:
    from packager.codecheck import remembered_checks
    from packager.target import ScaffoldCheck

    root = fresh_memo.parent.parent / "app"
    root.mkdir()
    (root / "Main.kt").write_text("fun main() {}\n")
    calls: list[str] = []

    def check(status: str):
        def run(paths: list[Path], base: Path) -> list[ScaffoldCheck]:
            calls.append(status)
            return [ScaffoldCheck(p.relative_to(base).as_posix(), "tool", status) for p in paths]
        return run

    files = [root / "Main.kt"]
    assert remembered_checks("k", files, root, check("failed"))[0].status == "failed"
    assert remembered_checks("k", files, root, check("skipped"))[0].status == "skipped"
    assert remembered_checks("k", files, root, check("passed"))[0].status == "passed"
    assert remembered_checks("k", files, root, check("passed")) == [ScaffoldCheck("Main.kt", "tool", "passed")]
    assert calls == ["failed", "skipped", "passed"]  # the last answer came from the record
    (root / "Main.kt").write_text("fun main() { }\n")
    remembered_checks("k", files, root, check("passed"))
    assert calls == ["failed", "skipped", "passed", "passed"]  # other bytes: checked again
