"""doctor: support matrix, fp16 and Neural Engine notes, RAM estimates; build --device picks what fits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import edgepack

from packager.devices import best_quant_for, device, estimate, installed_devices, kv_cache_mb
from packager.errors import ExitCode

GEMMA_270M_CONFIG = {  # the real model's shape, so estimates are checked at a meaningful size
    "num_hidden_layers": 18, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
    "hidden_size": 640, "vocab_size": 262144, "sliding_window": 512,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
}


def test_kv_cache_is_sliding_window_aware() -> None:
    full = {**GEMMA_270M_CONFIG, "layer_types": ["full_attention"] * 18}
    assert kv_cache_mb(full, 4096) == pytest.approx(2 * 256 * 2 * 18 * 4096 / 2**20)
    # 15 sliding layers keep 512 positions, 3 global layers keep all 4096.
    assert kv_cache_mb(GEMMA_270M_CONFIG, 4096) == pytest.approx(2 * 256 * 2 * (15 * 512 + 3 * 4096) / 2**20)


def test_estimates_grow_with_bits_and_context() -> None:
    params = 268_098_176
    q4 = estimate(params, GEMMA_270M_CONFIG, "Q4_K_M", 2048).total_mb
    q8 = estimate(params, GEMMA_270M_CONFIG, "Q8_0", 2048).total_mb
    q8_long = estimate(params, GEMMA_270M_CONFIG, "Q8_0", 32768).total_mb
    assert q4 < q8 < q8_long
    assert 250 < q4 < 400  # the real Q4_K_M file is 249 MB; KV and runtime come on top


def test_a_small_device_gets_a_smaller_quantization_or_nothing() -> None:
    params = 4_000_000_000  # a 4B model
    config = {**GEMMA_270M_CONFIG, "num_hidden_layers": 34, "layer_types": None, "num_key_value_heads": 4}
    assert best_quant_for(device("raspberry-pi-5-8gb"), params, config, 2048) == "Q8_0"
    assert best_quant_for(device("raspberry-pi-5-4gb"), params, config, 2048) in ("Q4_K_M", "Q4_0")
    assert best_quant_for(device("raspberry-pi-4"), params, config, 2048) is None


def test_doctor_prints_the_matrix_and_a_pick_per_device(tiny_gemma: Path) -> None:
    result = edgepack("doctor", tiny_gemma, "--json")
    assert result.exit_code == 0, result.stderr
    report = result.json()
    assert report["architecture"] == "gemma3" and report["support"]["raspberry-pi"] is True
    assert "fp16" in report["fp16_risk"] and "fits the Neural Engine" in report["target_notes"]["ios"][0]
    assert {d["device"] for d in report["devices"]} == {d.name for d in installed_devices()}
    assert all(d["recommended_quant"] == "Q8_0" for d in report["devices"])  # a tiny model fits everywhere
    text = edgepack("doctor", tiny_gemma)
    assert "support matrix" in text.stdout and "raspberry-pi-5-4gb" in text.stdout


def test_doctor_on_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    result = edgepack("doctor", tmp_path / "missing")
    assert result.exit_code == ExitCode.BAD_INPUT and "does not exist" in result.stderr


def test_build_with_a_device_picks_its_target_and_a_quant_that_fits(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = edgepack("build", tiny_llama, "--device", "raspberry-pi-5-4gb", "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    summary = result.json()
    assert summary["targets"] == ["raspberry-pi"]
    assert json.loads((out / "manifest.json").read_text())["options"]["quant"] == "Q8_0"
    assert "device raspberry-pi-5-4gb: Q8_0" in result.stderr


def test_unknown_device_lists_the_known_ones(tiny_llama: Path, tmp_path: Path) -> None:
    result = edgepack("build", tiny_llama, "--device", "toaster", "--out", tmp_path / "o")
    assert result.exit_code == ExitCode.BAD_INPUT and "raspberry-pi-5-4gb" in result.stderr


def _request_for_device(checkpoint: Path, name: str, **flags: object):
    from packager.progress import Reporter
    from packager.project import BuildFlags, build_request

    return build_request(BuildFlags(checkpoint=checkpoint, device=name, **flags), Reporter(quiet=True))


@pytest.mark.parametrize(("profile", "target", "option", "value"), [
    ("iphone-15-pro", "ios", "compression", "none"),
    ("pixel-8-pro", "android", "recipe", "fp32"),
])
def test_device_sizes_the_artifact_its_target_ships_and_opens_the_checkpoint_once(
        tiny_gemma: Path, profile: str, target: str, option: str, value: str) -> None:
    request = _request_for_device(tiny_gemma, profile)
    assert request.targets == [target]
    # A tiny model fits at full precision, so the most faithful artifact of that target's own format is chosen.
    assert request.options.target_options[target][option] == value
    assert request.options.quant is None  # no GGUF type for a target that ships no GGUF
    assert request.opened is not None and request.opened[0].folder == tiny_gemma


def test_a_tight_budget_picks_the_most_faithful_core_ml_package_that_fits(tiny_gemma: Path) -> None:
    from packager.checkpoint import load_checkpoint
    from packager.devices import DeviceProfile, artifacts_for, estimate_artifact, first_fitting
    from targets.ios.target import IosTarget

    ckpt = load_checkpoint(tiny_gemma, work_dir=tiny_gemma.parent / "w")
    artifacts = artifacts_for(IosTarget(), ckpt)
    assert [a.option for a in artifacts] == [("compression", c) for c in ("none", "int8", "int4-mixed", "int4")]
    sizes = [a.weights_mb for a in artifacts]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 1.8 * sizes[1]  # fp16 vs 8.75-bit
    totals = [estimate_artifact(a, ckpt.config, 64).total_mb for a in artifacts]
    budget_mb = (totals[0] + totals[1]) / 2  # between the fp16 and the int8 package
    tight = DeviceProfile("tight-phone", "A tight phone", budget_mb / 1024, 1.0, "ios", "Core ML")
    picked = first_fitting(tight, artifacts, ckpt.config, 64)
    assert picked is not None and picked[0].option == ("compression", "int8")


def test_a_compression_chosen_by_flag_is_the_only_candidate_for_the_device(tiny_gemma: Path) -> None:
    request = _request_for_device(tiny_gemma, "iphone-15-pro", target_options={"ios": {"compression": "int4"}})
    assert request.options.target_options["ios"]["compression"] == "int4"
