"""A whole build: stages, atomic output, manifest, checksums, report, exit codes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_helpers import edgepack, edgepack_subprocess, leftovers

from packager.errors import ExitCode
from packager.pipeline import BuildRequest, run_build
from packager.progress import Reporter
from packager.stages import BuildOptions


@pytest.fixture(scope="module")
def gemma_build(tiny_gemma: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("dist") / "tiny"
    result = edgepack("build", tiny_gemma, "--target", "raspberry-pi", "--out", out, "--quant", "Q8_0", "--json")
    assert result.exit_code == 0, result.stderr
    return out, result.json()


def test_build_writes_the_bundle_manifest_checksums_and_report(gemma_build: tuple[Path, dict]) -> None:
    out, _ = gemma_build
    bundle = out / "raspberry-pi"
    for name in ("model-Q8_0.gguf", "edgepack.json", "install.sh", "client.py", "README.md",
                 "edgepack-tiny-gemma3.service", "tiny-gemma3.env"):
        assert (bundle / name).is_file(), name
    for name in ("manifest.json", "SHA256SUMS", "report.md"):
        assert (out / name).is_file(), name
    check = subprocess.run(["sha256sum", "--check", "--quiet", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    listed = {line.split("  ", 1)[1] for line in (out / "SHA256SUMS").read_text().splitlines()}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "SHA256SUMS"}
    assert listed == on_disk
    assert "build.log" in listed


def test_edgepack_json_carries_contract_files_and_verification(gemma_build: tuple[Path, dict]) -> None:
    out, _ = gemma_build
    data = json.loads((out / "raspberry-pi" / "edgepack.json").read_text())
    assert data["model"]["quant"] == "Q8_0" and data["model"]["file"] == "model-Q8_0.gguf"
    assert data["contract"]["bos_id"] == 2 and data["contract"]["add_bos"] is True
    assert data["contract"]["eos_ids"] == [1, 6]  # <eos> and <end_of_turn>
    assert "<start_of_turn>" in data["contract"]["chat_template"]
    files = {f["path"]: f for f in data["files"]}
    gguf = out / "raspberry-pi" / "model-Q8_0.gguf"
    assert files["model-Q8_0.gguf"]["bytes"] == gguf.stat().st_size
    assert len(files["model-Q8_0.gguf"]["sha256"]) == 64
    [verification] = data["verification"]
    assert verification["level"] == "executed" and verification["passed"] is True
    assert verification["tokenizer_parity"] is True
    assert {c["tool"] for c in data["scaffold_checks"]} >= {"bash", "py_compile"}
    assert all(c["status"] != "failed" for c in data["scaffold_checks"])


def test_json_summary_and_manifest_agree(gemma_build: tuple[Path, dict]) -> None:
    out, summary = gemma_build
    manifest = json.loads((out / "manifest.json").read_text())
    assert summary["passed"] is True and manifest["passed"] is True
    assert summary["artifacts"] == manifest["artifacts"]
    [row] = manifest["artifacts"]
    assert row["target"] == "raspberry-pi" and row["level"] == "executed" and row["top1"] > 0.9
    assert manifest["source"]["architecture"] == "gemma3"
    assert manifest["tools"]["llama_cpp"] == "0.3.36"


def test_report_has_the_verification_table_and_says_where_numbers_come_from(gemma_build: tuple[Path, dict]) -> None:
    out, _ = gemma_build
    report = (out / "report.md").read_text()
    assert "| raspberry-pi | raspberry-pi/model-Q8_0.gguf | executed |" in report
    assert "Nothing here ran on a phone or a Raspberry Pi" in report


def test_interrupted_build_leaves_nothing_that_looks_complete(tiny_llama: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import targets.raspberry_pi.target as rpi

    def explode(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(rpi, "render_tree", explode)
    out = tmp_path / "out"
    request = BuildRequest(checkpoint=tiny_llama, targets=["raspberry-pi"], out=out,
                           options=BuildOptions(quant="F16"))
    with pytest.raises(KeyboardInterrupt):
        run_build(request, Reporter(quiet=True))
    assert leftovers(tmp_path, "out") == []


def test_internal_errors_exit_with_the_internal_code_not_the_gate_code(tiny_llama: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import targets.raspberry_pi.target as rpi

    def bug(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(rpi, "render_tree", bug)
    result = edgepack("build", tiny_llama, "--target", "raspberry-pi", "--out", tmp_path / "out", "--quant", "F16")
    assert result.exit_code == ExitCode.INTERNAL
    assert "internal error" in result.stderr and "simulated bug" in result.stderr
    assert leftovers(tmp_path, "out") == []


def test_hostile_model_name_builds_and_is_carried_only_as_data(tiny_llama: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    name = f'My "Bot" $(touch {marker}) `id` %h 100%\nsecond line'
    out = tmp_path / "out"
    result = edgepack("build", tiny_llama, "--target", "raspberry-pi", "--out", out, "--quant", "F16", "--name", name)
    assert result.exit_code == 0, result.stderr
    bundle = out / "raspberry-pi"
    data = json.loads((bundle / "edgepack.json").read_text())
    assert data["model"]["name"] == name
    units = list(bundle.glob("edgepack-*.service"))
    assert len(units) == 1 and re.fullmatch(r"edgepack-[a-z0-9-]+\.service", units[0].name), units
    assert all(c["status"] != "failed" for c in data["scaffold_checks"]), data["scaffold_checks"]
    subprocess.run(["bash", "-n", str(bundle / "install.sh")], check=True)
    subprocess.run(["bash", str(bundle / "install.sh"), "--help"], capture_output=True, check=False)
    assert not marker.exists()


def test_stages_are_cached_between_builds(tiny_llama: Path, tmp_path: Path, cold_cache: Path) -> None:
    first = edgepack("build", tiny_llama, "--target", "raspberry-pi", "--out", tmp_path / "a", "--quant", "Q8_0",
                     "--json")
    second = edgepack("build", tiny_llama, "--target", "raspberry-pi", "--out", tmp_path / "b", "--quant", "Q8_0",
                      "--json")
    assert first.exit_code == second.exit_code == 0
    cached = {s["name"]: s["cached"] for s in second.json()["stages"]}
    assert cached["gguf Q8_0"] is True
    assert not any(s["cached"] for s in first.json()["stages"] if s["name"].startswith("gguf"))
    a = (tmp_path / "a" / "raspberry-pi" / "model-Q8_0.gguf").read_bytes()
    assert a == (tmp_path / "b" / "raspberry-pi" / "model-Q8_0.gguf").read_bytes()


def test_without_a_checkpoint_edgepack_toml_is_read(tiny_llama: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copytree(tiny_llama, project / "model")
    (project / "edgepack.toml").write_text(
        '[build]\ncheckpoint = "model"\ntargets = ["raspberry-pi"]\nquant = "F16"\nout = "dist/from-toml"\n'
    )
    monkeypatch.chdir(project)
    result = edgepack("build", "--json")
    assert result.exit_code == 0, result.stderr
    assert (project / "dist" / "from-toml" / "raspberry-pi" / "model-F16.gguf").is_file()


def test_targets_and_version_commands() -> None:
    listed = edgepack("targets", "--json")
    assert listed.exit_code == 0
    assert "raspberry-pi" in {t["name"] for t in listed.json()}
    version = edgepack("--version")
    assert version.exit_code == 0 and "0.1.0" in version.stdout


def test_pruning_old_logs_never_removes_a_running_builds_log(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    from packager.build_log import KEPT_LOGS, tool_output_to_log
    from packager.progress import Reporter

    logs = tmp_path / "logs"
    logs.mkdir()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    try:
        live = logs / f"build-20260101-000000-{running.pid}-a.log"
        live.write_text("another build, still running")
        os.utime(live, (1, 1))  # the oldest of all: first in line when logs are pruned by age
        dead = []
        for index in range(KEPT_LOGS + 3):
            path = logs / f"build-20260101-0000{index:02d}-{finished.pid}-{index}.log"
            path.write_text("a finished build")
            os.utime(path, (10 + index, 10 + index))
            dead.append(path)
        time.sleep(0.01)
        with tool_output_to_log(logs, Reporter(quiet=True)) as log:
            assert log.exists()
        assert live.exists()  # its build still runs and will copy it into its output
        kept = [p for p in dead if p.exists()]
        assert kept == dead[-(KEPT_LOGS - 1):]  # the newest finished ones, room made for the new log
    finally:
        running.kill()
        running.wait()


def test_tool_output_goes_to_build_log_and_only_edgepack_lines_reach_the_terminal(
        tiny_gemma: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEPACK_CACHE", str(tmp_path / "cache"))  # cold: llama.cpp's quantizer runs and prints
    out = tmp_path / "dist" / "tiny"
    result = edgepack_subprocess("build", tiny_gemma, "--target", "raspberry-pi", "--out", out, "--quant", "Q4_K_M")
    assert result.exit_code == 0, result.stderr
    foreign = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("edgepack:")]
    assert not foreign, foreign[:10]
    log = (out / "build.log").read_text(encoding="utf-8", errors="replace")
    assert "llama_model_quantize" in log or "llama_model_loader" in log, log[:2000]  # llama.cpp's own lines


def test_a_failed_build_names_its_log(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEPACK_CACHE", str(tmp_path / "cache"))  # cold: the fp32 reference must claim memory
    result = edgepack_subprocess("build", tiny_llama, "--target", "raspberry-pi", "--out", tmp_path / "out",
                                 "--quant", "Q8_0", "--max-ram", "1M")
    assert result.exit_code == ExitCode.UNSUPPORTED, result.stderr
    log = Path(result.stderr.split("tools' own output is in ")[1].split(".)")[0])
    assert log.is_file() and log.parent == tmp_path / "cache" / "logs", result.stderr
