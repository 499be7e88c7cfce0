"""The GGUF writer: architecture transforms from the table, types, tokenizer, and a faithful result."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf_files import iter_gguf_tensors
from safetensors.torch import load_file

from packager.checkpoint import load_checkpoint
from packager.contract import contract_from_checkpoint
from packager.formats.gguf_quantize import quantize_gguf
from packager.formats.gguf_writer import _permute, write_gguf
from packager.verify.gguf_check import verify_gguf
from packager.verify.golden import load_golden
from packager.verify.reference import compute_reference, load_hf_tokenizer

Q = gguf.GGMLQuantizationType


def _tensors(path: Path) -> dict[str, tuple[Q, np.ndarray]]:
    return {name: (qtype, data) for name, qtype, data in iter_gguf_tensors(path)}


def _fields(path: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(str(path))
    return {f.name: f.contents() for f in reader.fields.values() if not f.name.startswith("GGUF.")}


@pytest.fixture(scope="module")
def gemma_f16(tiny_gemma: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    ckpt = load_checkpoint(tiny_gemma, work_dir=tmp_path_factory.mktemp("w"))
    return write_gguf(ckpt, tmp_path_factory.mktemp("g") / "gemma-F16.gguf", "F16")


@pytest.fixture(scope="module")
def llama_f16(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    ckpt = load_checkpoint(tiny_llama, work_dir=tmp_path_factory.mktemp("w"))
    return write_gguf(ckpt, tmp_path_factory.mktemp("g") / "llama-F16.gguf", "F16")


def test_gemma_norms_are_stored_plus_one_and_in_f32(tiny_gemma: Path, gemma_f16: Path) -> None:
    hf = load_file(str(tiny_gemma / "model.safetensors"))
    tensors = _tensors(gemma_f16)
    for hf_name, gguf_name in [
        ("model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight"),
        ("model.layers.1.self_attn.q_norm.weight", "blk.1.attn_q_norm.weight"),
        ("model.norm.weight", "output_norm.weight"),
    ]:
        qtype, data = tensors[gguf_name]
        assert qtype == Q.F32
        np.testing.assert_array_equal(data, hf[hf_name].float().numpy() + 1.0)


def test_gemma_has_no_output_tensor_and_keeps_raw_embeddings(tiny_gemma: Path, gemma_f16: Path) -> None:
    tensors = _tensors(gemma_f16)
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    embed = load_file(str(tiny_gemma / "model.safetensors"))["model.embed_tokens.weight"]
    qtype, data = tensors["token_embd.weight"]
    assert qtype == Q.F16
    np.testing.assert_array_equal(data, embed.float().numpy().astype(np.float16))  # not scaled by sqrt(hidden)


def test_gemma_sliding_window_layout_is_written_per_layer(tiny_gemma: Path, gemma_f16: Path) -> None:
    fields = _fields(gemma_f16)
    layer_types = json.loads((tiny_gemma / "config.json").read_text())["layer_types"]
    assert fields["gemma3.attention.sliding_window_pattern"] == [t == "sliding_attention" for t in layer_types]
    assert fields["gemma3.attention.sliding_window"] == 32
    assert fields["gemma3.rope.freq_base_swa"] == 10000.0


def test_llama_q_and_k_rows_are_permuted_for_llama_cpp_rope(tiny_llama: Path, llama_f16: Path) -> None:
    hf = load_file(str(tiny_llama / "model.safetensors"))
    cfg = json.loads((tiny_llama / "config.json").read_text())
    tensors = _tensors(llama_f16)
    q = _permute(hf["model.layers.0.self_attn.q_proj.weight"].float(), cfg["num_attention_heads"])
    k = _permute(hf["model.layers.0.self_attn.k_proj.weight"].float(), cfg["num_key_value_heads"])
    np.testing.assert_array_equal(tensors["blk.0.attn_q.weight"][1], q.numpy().astype(np.float16))
    np.testing.assert_array_equal(tensors["blk.0.attn_k.weight"][1], k.numpy().astype(np.float16))
    v = hf["model.layers.0.self_attn.v_proj.weight"].float().numpy().astype(np.float16)
    np.testing.assert_array_equal(tensors["blk.0.attn_v.weight"][1], v)
    assert not np.array_equal(q.numpy(), hf["model.layers.0.self_attn.q_proj.weight"].float().numpy())


def test_llama3_rope_scaling_becomes_a_rope_freqs_tensor(llama_f16: Path) -> None:
    qtype, data = _tensors(llama_f16)["rope_freqs.weight"]
    assert qtype == Q.F32 and data.shape == (8,)  # head_dim 16 -> 8 frequencies
    assert data.min() == 1.0 and data.max() == 8.0


def test_tokenizer_metadata_is_carried(tiny_gemma: Path, gemma_f16: Path) -> None:
    fields = _fields(gemma_f16)
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == "gemma4"
    assert fields["tokenizer.ggml.bos_token_id"] == 2 and fields["tokenizer.ggml.eos_token_id"] == 1
    assert "<start_of_turn>" in fields["tokenizer.chat_template"]
    vocab = json.loads((tiny_gemma / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(fields["tokenizer.ggml.tokens"]) == len(vocab)
    assert len(fields["tokenizer.ggml.merges"]) > 100


def test_q8_0_quantizes_weights_and_keeps_norms_f32(tiny_llama: Path, tmp_path: Path) -> None:
    ckpt = load_checkpoint(tiny_llama, work_dir=tmp_path / "w")
    tensors = _tensors(write_gguf(ckpt, tmp_path / "q8.gguf", "Q8_0"))
    assert tensors["blk.0.attn_q.weight"][0] == Q.Q8_0
    assert tensors["blk.0.attn_norm.weight"][0] == Q.F32
    fields = _fields(tmp_path / "q8.gguf")
    assert fields["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q8_0)


def test_k_quants_go_through_llama_cpp_and_fall_back_on_narrow_rows(llama_f16: Path, tmp_path: Path) -> None:
    out = quantize_gguf(llama_f16, tmp_path / "q4km.gguf", "Q4_K_M")
    types = {name: q for name, q, _ in iter_gguf_tensors(out)}
    # 64-wide rows are not a multiple of the 256-element K-quant block: llama.cpp picks a fallback type.
    assert types["blk.0.attn_q.weight"] not in (Q.F16, Q.F32)
    assert _fields(out)["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q4_K_M)


@pytest.mark.parametrize("fixture", ["tiny_gemma", "tiny_llama", "tiny_smollm"])
def test_f32_gguf_matches_transformers_exactly_in_llama_cpp(fixture: str, request: pytest.FixtureRequest,
                                                             tmp_path: Path) -> None:
    model: Path = request.getfixturevalue(fixture)
    ckpt = load_checkpoint(model, work_dir=tmp_path / "w")
    path = write_gguf(ckpt, tmp_path / "f32.gguf", "F32")
    golden = load_golden()
    contract = contract_from_checkpoint(ckpt)
    reference = compute_reference(ckpt, golden, f"test-{fixture}", contract.eos_ids, cache=tmp_path / "cache")
    result = verify_gguf(path, "f32.gguf", "F32", reference, golden, contract, load_hf_tokenizer(ckpt))
    assert result.level == "executed"
    assert result.tokenizer_parity, result.tokenizer_detail
    assert result.metrics is not None
    assert result.metrics.top1 >= 0.99 and result.metrics.kl < 1e-4, result.metrics
    assert result.greedy_match
    assert result.passed


def test_a_wrong_norm_offset_is_caught_by_verification(tiny_gemma: Path, tmp_path: Path) -> None:
    """Break one architecture fact on purpose: the harness must notice, not just the unit tests."""
    import dataclasses

    ckpt = load_checkpoint(tiny_gemma, work_dir=tmp_path / "w")
    broken = dataclasses.replace(ckpt, spec=dataclasses.replace(ckpt.spec, norm_offset=0.0))
    path = write_gguf(broken, tmp_path / "broken.gguf", "F16")
    golden = load_golden()
    contract = contract_from_checkpoint(ckpt)
    reference = compute_reference(ckpt, golden, "test-broken", contract.eos_ids, cache=tmp_path / "cache")
    result = verify_gguf(path, "broken.gguf", "F16", reference, golden, contract, load_hf_tokenizer(ckpt))
    assert not result.passed
    assert any("KL" in f for f in result.failures)


def test_smollm_style_checkpoint_is_tied_adds_no_bos_and_uses_the_smollm_pre_tokenizer(
    tiny_smollm: Path, tmp_path: Path
) -> None:
    ckpt = load_checkpoint(tiny_smollm, work_dir=tmp_path / "w")
    path = write_gguf(ckpt, tmp_path / "s.gguf", "F16")
    fields = _fields(path)
    assert fields["tokenizer.ggml.pre"] == "smollm"
    assert "output.weight" not in _tensors(path) and "rope_freqs.weight" not in _tensors(path)
    assert contract_from_checkpoint(ckpt).add_bos is False


def test_byte_fallback_tokens_detokenize_to_their_bytes_in_llama_cpp(gemma_f16: Path) -> None:
    """Gemma spells characters outside its vocabulary with <0xNN> tokens; llama.cpp must render bytes."""
    from llama_cpp import Llama

    llm = Llama(str(gemma_f16), n_ctx=64, verbose=False)
    for label in ("naïve", "über", "東京", "🦙"):
        ids = llm.tokenize(label.encode("utf-8"), add_bos=False, special=False)
        assert llm.detokenize(ids) == label.encode("utf-8"), label


def test_gemma_linear_rope_scaling_of_the_global_layers_reaches_llama_cpp(tiny_gemma: Path, tmp_path: Path) -> None:
    """Gemma 3 4B scales its full-attention layers' rope linearly (factor 8). Written as metadata, llama.cpp
    gives transformers' logits (without it: top-1 0.93, KL 0.039 on this model, measured)."""
    import shutil

    from cli_helpers import edgepack

    folder = tmp_path / "linear-rope"
    shutil.copytree(tiny_gemma, folder)
    config = json.loads((folder / "config.json").read_text())
    theta = config["rope_parameters"]["full_attention"]["rope_theta"]
    config["rope_parameters"]["full_attention"] = {"rope_type": "linear", "factor": 8.0, "rope_theta": theta}
    (folder / "config.json").write_text(json.dumps(config))
    result = edgepack("build", folder, "--target", "raspberry-pi", "--quant", "F32", "--out", tmp_path / "out",
                      "--json")
    assert result.exit_code == 0, result.stderr
    [row] = result.json()["artifacts"]
    assert row["top1"] >= 0.99 and row["kl"] < 1e-4, row
    reader = gguf.GGUFReader(tmp_path / "out" / "raspberry-pi" / "model-F32.gguf")
    factor = reader.fields["gemma3.rope.scaling.factor"]
    assert float(factor.parts[factor.data[0]][0]) == 8.0
