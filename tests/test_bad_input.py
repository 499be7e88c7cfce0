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


# --- Malformed checkpoints: each is refused at open with exit 2 (or 3), never an internal error (exit 4) ---


def _edit_header(weights: Path, edit) -> None:
    """Rewrite a safetensors file's JSON header with edit(header), keeping its data bytes (plus any extra)."""
    data = weights.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    tail = edit(header) or b""
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    weights.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + header_len:] + tail)


def _edit_config(model: Path, **changes: object) -> None:
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(changes)
    (model / "config.json").write_text(json.dumps(cfg))


def test_safetensors_with_negative_dims_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    model = _copy(tiny_llama, tmp_path / "m")

    def negate(header: dict) -> None:  # (-a) * (-b) bytes still match the byte range
        entry = header["model.layers.0.mlp.gate_proj.weight"]
        entry["shape"] = [-d for d in entry["shape"]]

    _edit_header(model / "model.safetensors", negate)
    _build_fails(model, tmp_path, ExitCode.BAD_INPUT, "model.safetensors", "gate_proj", "negative dimension",
                 "Re-download")


def test_safetensors_with_overlapping_tensors_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    model = _copy(tiny_llama, tmp_path / "m")

    def overlap(header: dict) -> None:
        up = header["model.layers.0.mlp.up_proj.weight"]
        up["data_offsets"] = list(header["model.layers.0.mlp.gate_proj.weight"]["data_offsets"])

    _edit_header(model / "model.safetensors", overlap)
    _build_fails(model, tmp_path, ExitCode.BAD_INPUT, "model.safetensors", "overlap", "Re-download")


def test_safetensors_with_trailing_bytes_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    model = _copy(tiny_llama, tmp_path / "m")
    _edit_header(model / "model.safetensors", lambda header: b"\0" * 64)
    _build_fails(model, tmp_path, ExitCode.BAD_INPUT, "model.safetensors", "64 trailing bytes", "Re-download")


def _edit_tensors(model: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(model / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(model / "model.safetensors"), metadata={"format": "pt"})


def test_transposed_tensor_is_refused_naming_it_and_both_shapes(tiny_llama: Path, tmp_path: Path) -> None:
    model = _copy(tiny_llama, tmp_path / "m")
    name = "model.layers.1.mlp.down_proj.weight"

    def transpose(t: dict) -> None:
        t[name] = t[name].T.contiguous()

    _edit_tensors(model, transpose)
    _build_fails(model, tmp_path, ExitCode.BAD_INPUT, "model.safetensors", name, "[128, 64]", "[64, 128]",
                 "transposed", "save_pretrained")


def test_missing_tensor_is_refused_naming_it(tiny_llama: Path, tmp_path: Path) -> None:
    model = _copy(tiny_llama, tmp_path / "m")
    name = "model.layers.1.self_attn.k_proj.weight"
    _edit_tensors(model, lambda t: t.pop(name))
    _build_fails(model, tmp_path, ExitCode.BAD_INPUT, name, "num_hidden_layers 2", "save_pretrained")


def test_vocab_size_that_disagrees_with_the_embedding_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    model = _copy(tiny_llama, tmp_path / "m")
    cfg = json.loads((model / "config.json").read_text())
    _edit_config(model, vocab_size=cfg["vocab_size"] + 60)
    _build_fails(model, tmp_path, ExitCode.BAD_INPUT, "config.json", f"vocab_size is {cfg['vocab_size'] + 60}",
                 f"has {cfg['vocab_size']} rows", "resize_token_embeddings")


@pytest.mark.parametrize(("field", "value"), [
    ("hidden_size", -64), ("hidden_size", "64"), ("hidden_size", 0), ("num_attention_heads", 0),
    ("max_position_embeddings", -1), ("rms_norm_eps", -1e-6), ("num_hidden_layers", 1_000_000),
    ("num_key_value_heads", 3), ("vocab_size", None), ("rms_norm_eps", 1),
    ("layer_types", ["sliding_attention", "sliding_attention"]),
])
def test_config_number_out_of_bounds_is_refused_naming_the_field(tiny_llama: Path, tmp_path: Path, field: str,
                                                                 value: object) -> None:
    model = _copy(tiny_llama, tmp_path / "m")
    _edit_config(model, **{field: value})
    _build_fails(model, tmp_path, ExitCode.BAD_INPUT, "config.json", field, "fix config.json")


def test_nan_rms_norm_eps_is_refused_before_llama_cpp_sees_it(tiny_llama: Path, tmp_path: Path) -> None:
    model = _copy(tiny_llama, tmp_path / "m")
    cfg = (model / "config.json").read_text()
    (model / "config.json").write_text(cfg.replace('"rms_norm_eps": 1e-05', '"rms_norm_eps": NaN'))
    assert "NaN" in (model / "config.json").read_text()
    _build_fails(model, tmp_path, ExitCode.BAD_INPUT, "config.json", "rms_norm_eps is NaN")


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("sliding_window", None, "sliding_window is missing"),
    ("query_pre_attn_scalar", 1e-6, "query_pre_attn_scalar is 1e-06"),
    ("final_logit_softcapping", 30, "decimal point (30.0)"),
])
def test_gemma_config_value_that_transformers_would_crash_on_is_refused(tiny_gemma: Path, tmp_path: Path, field: str,
                                                                         value: object, needle: str) -> None:
    model = _copy(tiny_gemma, tmp_path / "m")
    _edit_config(model, **{field: value})
    _build_fails(model, tmp_path, ExitCode.BAD_INPUT, "config.json", needle, "fix config.json")


def test_gemma_without_a_sliding_layer_is_unsupported_instead_of_aborting(tiny_gemma: Path, tmp_path: Path) -> None:
    model = _copy(tiny_gemma, tmp_path / "m")
    _edit_config(model, layer_types=["full_attention", "full_attention"])
    _build_fails(model, tmp_path, ExitCode.UNSUPPORTED, "config.json", "no sliding_attention layer", "llama.cpp")


def test_empty_tokenizer_json_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    model = _copy(tiny_llama, tmp_path / "m")
    (model / "tokenizer.json").write_text("")
    _build_fails(model, tmp_path, ExitCode.BAD_INPUT, "tokenizer.json", "not valid JSON", "save_pretrained")


def test_tokenizer_json_symlinked_to_a_non_json_file_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    model = _copy(tiny_llama, tmp_path / "m")
    (tmp_path / "notes.txt").write_text("this is not a tokenizer\n")
    (model / "tokenizer.json").unlink()
    (model / "tokenizer.json").symlink_to(tmp_path / "notes.txt")
    _build_fails(model, tmp_path, ExitCode.BAD_INPUT, "tokenizer.json", "not valid JSON", "save_pretrained")


def test_tokenizer_config_symlinked_to_a_device_is_refused_not_ignored(tiny_llama: Path, tmp_path: Path) -> None:
    model = _copy(tiny_llama, tmp_path / "m")
    (model / "tokenizer_config.json").unlink()
    (model / "tokenizer_config.json").symlink_to("/dev/zero")
    _build_fails(model, tmp_path, ExitCode.BAD_INPUT, "tokenizer_config.json", "not a regular file")


def _adapter_with(tiny_llama: Path, tmp_path: Path, **changes: object) -> Path:
    from tiny_models import make_adapter

    adapter = make_adapter(tiny_llama, tmp_path / "adapter")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg.update(changes)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    return adapter


def test_adapter_with_rank_zero_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    adapter = _adapter_with(tiny_llama, tmp_path, r=0)
    _build_fails(adapter, tmp_path, ExitCode.BAD_INPUT, "adapter_config.json", "r is 0", "at least 1")


def test_adapter_rank_pattern_that_is_not_a_regex_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    adapter = _adapter_with(tiny_llama, tmp_path, rank_pattern={"down_proj(": 2})
    _build_fails(adapter, tmp_path, ExitCode.BAD_INPUT, "adapter_config.json", "rank_pattern", "'down_proj('",
                 "not a valid regular expression")


# --- Options and templates: validated before any work, and bounded ---


@pytest.mark.parametrize("value", ["-5", "0"])
def test_context_length_below_one_is_refused(tiny_llama: Path, tmp_path: Path, value: str) -> None:
    _build_fails(tiny_llama, tmp_path, ExitCode.BAD_INPUT, "--context-length", f"is {value}", "4096",
                 extra=("--context-length", value))


def test_context_length_below_one_in_edgepack_toml_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    config = tmp_path / "edgepack.toml"
    config.write_text(f'[build]\ncheckpoint = "{tiny_llama}"\ncontext_length = -5\n')
    out = tmp_path / "dist" / "out"
    result = edgepack("build", "--config", config, "--target", "raspberry-pi", "--out", out)
    assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
    assert "edgepack.toml" in result.stderr and "context_length is -5" in result.stderr
    assert not out.exists()


def test_chat_template_that_loops_forever_is_refused_in_bounded_time(tiny_gemma: Path, tmp_path: Path) -> None:
    import time

    model = _copy(tiny_gemma, tmp_path / "m")
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg["chat_template"] = ("{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}"
                            "{% endfor %}{% endfor %}{% endfor %}{{ messages[0]['content'] }}")
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    start = time.monotonic()
    _build_fails(model, tmp_path, ExitCode.BAD_INPUT, "tokenizer_config.json", "chat template", "CPU time",
                 "prompt_template")
    assert time.monotonic() - start < 60


def test_chat_template_that_renders_gigabytes_is_refused() -> None:
    from packager.contract import prompt_from_chat_template

    with pytest.raises(ValueError, match="more than 1,048,576 characters"):
        prompt_from_chat_template("{{ 'x' * 10**8 }}{{ messages[0]['content'] }}", None, None)
    with pytest.raises(ValueError, match="MB of memory"):
        prompt_from_chat_template("{% set s = 'x' * 2 * 10**9 %}{{ messages[0]['content'] }}", None, None)
