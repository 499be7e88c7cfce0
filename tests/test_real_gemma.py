"""The real Gemma 3 270M (from the registry package): build, fidelity vs llama.cpp's own tools, gates,
and the Raspberry Pi client talking to a real llama.cpp server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import edgepack, leftovers
from external_tools import bash_read_env_file
from openai_server import openai_server

from benchmarks.reference_converter import run_reference_convert, run_reference_quantize
from packager.checkpoint import load_checkpoint
from packager.contract import contract_from_checkpoint
from packager.errors import ExitCode
from packager.fingerprint import files_digest
from packager.verify.gguf_check import verify_gguf
from packager.verify.golden import load_golden
from packager.verify.reference import compute_reference, load_hf_tokenizer

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def pi_build(gemma_270m: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("dist") / "gemma"
    result = edgepack("build", gemma_270m, "--target", "raspberry-pi", "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    return out, result.json()


def test_gemma_270m_builds_for_raspberry_pi_and_verifies_in_llama_cpp(pi_build: tuple[Path, dict]) -> None:
    out, summary = pi_build
    [row] = summary["artifacts"]
    assert row["artifact"] == "raspberry-pi/model-Q4_K_M.gguf" and row["level"] == "executed"
    assert row["tokenizer"] is True and row["passed"] is True
    assert row["top1"] >= 0.92 and row["kl"] <= 0.02, row
    size = (out / "raspberry-pi" / "model-Q4_K_M.gguf").stat().st_size
    assert 200 * 2**20 < size < 300 * 2**20


def test_q4_k_m_is_as_faithful_as_llama_cpp_own_converter_and_quantizer(
    gemma_270m: Path, pi_build: tuple[Path, dict], tmp_path: Path
) -> None:
    """Same positions, same reference: llama.cpp's tools' Q4_K_M vs ours (top-1 within 0.01)."""
    f16 = tmp_path / "ref-f16.gguf"
    run_reference_convert(gemma_270m, f16, "f16")
    q4 = tmp_path / "ref-q4_k_m.gguf"
    run_reference_quantize(f16, q4, "Q4_K_M")
    ckpt = load_checkpoint(gemma_270m, work_dir=tmp_path / "w")
    golden, contract = load_golden(), contract_from_checkpoint(ckpt)
    digest = files_digest([*ckpt.weight_files(), ckpt.folder / "config.json", *ckpt.side_files()])
    reference = compute_reference(ckpt, golden, digest, contract.eos_ids)
    theirs = verify_gguf(q4, "reference Q4_K_M", "Q4_K_M", reference, golden, contract, load_hf_tokenizer(ckpt))
    [ours] = pi_build[1]["artifacts"]
    assert theirs.metrics is not None
    assert abs(ours["top1"] - theirs.metrics.top1) <= 0.01, (ours["top1"], theirs.metrics.top1)
    assert ours["kl"] <= theirs.metrics.kl * 1.05 + 1e-4


def test_a_q4_0_class_loss_fails_the_gate_with_a_table_and_writes_nothing(gemma_270m: Path, tmp_path: Path) -> None:
    out = tmp_path / "q40"
    result = edgepack("build", gemma_270m, "--target", "raspberry-pi", "--out", out, "--quant", "Q4_0")
    assert result.exit_code == ExitCode.GATE_FAILED
    assert "quality gate failed" in result.stderr
    assert "| raspberry-pi | raspberry-pi/model-Q4_0.gguf | executed |" in result.stderr
    assert "FAIL: top-1 (decisive)" in result.stderr and "KL" in result.stderr
    assert leftovers(tmp_path, "q40") == []


def test_no_gate_keeps_the_output_says_so_and_still_exits_nonzero(gemma_270m: Path, tmp_path: Path) -> None:
    out = tmp_path / "q40"
    result = edgepack("build", gemma_270m, "--target", "raspberry-pi", "--out", out, "--quant", "Q4_0", "--no-gate")
    assert result.exit_code == ExitCode.GATE_FAILED
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["passed"] is False and manifest["gated"] is False
    assert "--no-gate" in (out / "report.md").read_text()


def test_client_example_gets_a_real_completion_from_a_llama_cpp_server(pi_build: tuple[Path, dict],
                                                                      tmp_path: Path) -> None:
    """Serve the bundle's GGUF with the bundle's own settings (env file) and run client.py against it."""
    bundle = pi_build[0] / "raspberry-pi"
    [env_file] = bundle.glob("*.env")
    settings = bash_read_env_file(str(env_file), "EDGEPACK_")
    assert settings["EDGEPACK_HOST"] == "127.0.0.1"
    with openai_server(bundle / "model-Q4_K_M.gguf", tmp_path / "server.log", int(settings["EDGEPACK_CTX"]),
                       host=settings["EDGEPACK_HOST"]) as port:
        env = {**os.environ, "EDGEPACK_PORT": str(port)}
        result = subprocess.run(
            [sys.executable, str(bundle / "client.py"), "The capital of France is"],
            capture_output=True, text=True, timeout=120, env=env, check=False,
        )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip()) > 0


def test_calibration_statistics_do_not_depend_on_the_thread_count(gemma_270m: Path) -> None:
    """The Core ML and ExecuTorch weights are searched with these statistics: with torch's threads they differed
    (119 of 126 linears, by up to 2e-7 relative), and so did a package converted under another --jobs."""
    import numpy as np
    import torch

    from packager.calibration import calibration_ids, linear_input_stats
    from packager.verify.fp32_model import load_fp32_whole

    model = load_fp32_whole(gemma_270m, "eager")
    ids = calibration_ids(gemma_270m)
    threads = torch.get_num_threads()
    stats = {}
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            stats[count] = linear_input_stats(model, ids, "mean_square")
    finally:
        torch.set_num_threads(threads)
    assert len(stats[1]) > 100
    assert [n for n in stats[1] if not np.array_equal(stats[1][n].numpy(), stats[2][n].numpy())] == []
    assert torch.get_num_threads() == threads
