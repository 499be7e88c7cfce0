"""Bad input gets one clear paragraph naming the file and the fix, a non-zero exit, and no output."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from cli_helpers import edgepack, leftovers

from packager.errors import ExitCode


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _build_fails(model: Path, tmp_path: Path, code: ExitCode, *needles: str, extra: tuple[str, ...] = ()) -> str:
    out = tmp_path / "dist" / "out"
    out.parent.mkdir(exist_ok=True)
    result = edgepack("build", model, "--target", "raspberry-pi", "--out", out, "--quant", "F16", *extra)
    assert result.exit_code == code, result.stderr
    message = result.stderr
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert "Traceback" not in message
    assert leftovers(out.parent, "out") == [], "a failed build left output behind"
    return message


def test_missing_folder_names_the_path(tmp_path: Path) -> None:
    _build_fails(tmp_path / "nope", tmp_path, ExitCode.BAD_INPUT, "nope", "does not exist")


def test_missing_config_json_is_named(tiny_llama: Path, tmp_path: Path) -> None:
    model = _copy(tiny_llama, tmp_path / "m")
    (model / "config.json").unlink()
    _build_fails(model, tmp_path, ExitCode.BAD_INPUT, "config.json", "save_pretrained")


def test_corrupt_config_json_is_named(tiny_llama: Path, tmp_path: Path) -> None:
    model = _copy(tiny_llama, tmp_path / "m")
    (model / "config.json").write_text("{not json")
    _build_fails(model, tmp_path, ExitCode.BAD_INPUT, "config.json", "not valid JSON")


def test_truncated_safetensors_is_refused_and_leaves_no_output(tiny_llama: Path, tmp_path: Path) -> None:
    model = _copy(tiny_llama, tmp_path / "m")
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    _build_fails(model, tmp_path, ExitCode.BAD_INPUT, "model.safetensors", "truncated", "Re-download")


def test_safetensors_with_a_garbage_header_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    model = _copy(tiny_llama, tmp_path / "m")
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    weights.write_bytes(data[:8] + b"\xff" * header_len + data[8 + header_len:])
    _build_fails(model, tmp_path, ExitCode.BAD_INPUT, "model.safetensors", "JSON header does not parse")


def test_safetensors_with_an_impossible_header_length_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    model = _copy(tiny_llama, tmp_path / "m")
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(struct.pack("<Q", 10**12) + data[8:])
    _build_fails(model, tmp_path, ExitCode.BAD_INPUT, "model.safetensors", "header length")


def test_unsupported_architecture_lists_the_supported_ones(tiny_llama: Path, tmp_path: Path) -> None:
    model = _copy(tiny_llama, tmp_path / "m")
    cfg = json.loads((model / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (model / "config.json").write_text(json.dumps(cfg))
    message = _build_fails(model, tmp_path, ExitCode.UNSUPPORTED, "'gpt2' is not supported", "gemma3_text", "llama")
    assert "config.json" in message


def test_missing_tokenizer_says_which_files_to_add(tiny_llama: Path, tmp_path: Path) -> None:
    model = _copy(tiny_llama, tmp_path / "m")
    (model / "tokenizer.json").unlink()
    _build_fails(model, tmp_path, ExitCode.BAD_INPUT, "no tokenizer found", "tokenizer.json")


def test_no_weights_at_all_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    model = _copy(tiny_llama, tmp_path / "m")
    (model / "model.safetensors").unlink()
    _build_fails(model, tmp_path, ExitCode.BAD_INPUT, "no weights found")


def _pickle_checkpoint(tiny_llama: Path, tmp_path: Path) -> Path:
    model = _copy(tiny_llama, tmp_path / "m")
    from safetensors.torch import load_file

    torch.save(load_file(str(model / "model.safetensors")), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    return model


def test_pickle_only_weights_are_refused_without_opt_in(tiny_llama: Path, tmp_path: Path) -> None:
    model = _pickle_checkpoint(tiny_llama, tmp_path)
    _build_fails(model, tmp_path, ExitCode.BAD_INPUT, "pytorch_model.bin", "pickle", "--allow-pickle")


def test_pickle_weights_build_with_allow_pickle(tiny_llama: Path, tmp_path: Path) -> None:
    model = _pickle_checkpoint(tiny_llama, tmp_path)
    out = tmp_path / "out"
    result = edgepack("build", model, "--target", "raspberry-pi", "--out", out, "--quant", "F16", "--allow-pickle")
    assert result.exit_code == 0, result.stderr
    assert (out / "raspberry-pi" / "model-F16.gguf").is_file()


def test_existing_output_folder_is_refused_unless_forced(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "dist" / "out"
    first = edgepack("build", tiny_llama, "--target", "raspberry-pi", "--out", out, "--quant", "F16")
    assert first.exit_code == 0, first.stderr
    (out / "marker.txt").write_text("from the first build")
    result = edgepack("build", tiny_llama, "--target", "raspberry-pi", "--out", out, "--quant", "F16")
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "already exists" in result.stderr and "--force" in result.stderr
    assert (out / "marker.txt").is_file()

    forced = edgepack("build", tiny_llama, "--target", "raspberry-pi", "--out", out, "--quant", "F16", "--force")
    assert forced.exit_code == 0, forced.stderr
    assert not (out / "marker.txt").exists()
    assert (out / "manifest.json").is_file()
    assert leftovers(out.parent, "out") == ["out"]


def test_unknown_target_and_quant_are_named(tiny_llama: Path, tmp_path: Path) -> None:
    bad_target = edgepack("build", tiny_llama, "--target", "toaster", "--out", tmp_path / "o")
    assert bad_target.exit_code == ExitCode.BAD_INPUT and "toaster" in bad_target.stderr
    bad_quant = edgepack("build", tiny_llama, "--target", "raspberry-pi", "--quant", "Q9_X", "--out", tmp_path / "o")
    assert bad_quant.exit_code == ExitCode.UNSUPPORTED and "Q4_K_M" in bad_quant.stderr
    assert not (tmp_path / "o").exists()


def test_remote_code_is_never_imported(tiny_llama: Path, tmp_path: Path) -> None:
    model = _copy(tiny_llama, tmp_path / "m")
    marker = tmp_path / "remote-code-ran"
    (model / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nclass Evil: pass\n")
    cfg = json.loads((model / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "evil.Evil", "AutoConfig": "evil.Evil"}
    (model / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    result = edgepack("build", model, "--target", "raspberry-pi", "--out", out, "--quant", "F16")
    assert not marker.exists()
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize("flag", ["--json"])
def test_bad_input_with_json_prints_a_machine_readable_error(tmp_path: Path, flag: str) -> None:
    result = edgepack("build", tmp_path / "missing", "--target", "raspberry-pi", flag)
    assert result.exit_code == ExitCode.BAD_INPUT
    payload = result.json()
    assert payload["passed"] is False and payload["error"] == "bad input" and "missing" in payload["message"]
