"""A PEFT LoRA adapter written as a GGUF adapter: llama.cpp's own converter's tensors, byte for byte, and
applied by llama.cpp to its base it answers as the merged model does."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf_files import iter_gguf_tensors
from test_reference_parity import assert_tensors_identical

from benchmarks.reference_converter import run_reference_lora_convert
from packager.checkpoint import load_checkpoint
from packager.errors import UnsupportedError
from packager.formats.gguf_lora import write_gguf_lora
from packager.formats.gguf_writer import write_gguf
from tests.tiny_models import make_adapter

ALL_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROMPT = [2, 17, 99, 45, 3, 250, 31, 8, 64, 12]


def _fields(path: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(str(path))
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_adapter_tensors_are_byte_identical_to_llama_cpp_convert_lora_to_gguf(
        fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    base: Path = request.getfixturevalue(fixture)
    adapter = make_adapter(base, tmp_path / "adapter", patterns=False, targets=ALL_LINEARS)
    reference = tmp_path / "reference.gguf"
    run_reference_lora_convert(adapter, base, reference, "f16")
    ours = write_gguf_lora(adapter, load_checkpoint(base, work_dir=tmp_path / "w"), tmp_path / "ours.gguf")
    # Llama's q/k rows are permuted for llama.cpp's rope: lora_b of attn_q/attn_k carries that permutation.
    assert assert_tensors_identical(ours, reference) == 2 * len(ALL_LINEARS) * 2  # two blocks
    mine, theirs = _fields(ours), _fields(reference)
    for key in ("general.architecture", "general.type", "adapter.type", "adapter.lora.alpha"):
        assert mine[key] == theirs[key], key
    assert mine["general.type"] == "adapter" and mine["adapter.lora.alpha"] == 8.0


def _logits(model: Path, ids: list[int], lora: Path | None = None) -> np.ndarray:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(model), lora_path=str(lora) if lora else None, n_ctx=64, logits_all=True,
                          verbose=False, seed=0)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float64)
    finally:
        llm.close()


@pytest.mark.parametrize("rslora", [False, True])
def test_llama_cpp_applying_the_adapter_to_its_base_answers_as_the_merged_model(
        tiny_llama: Path, tmp_path: Path, rslora: bool) -> None:
    # Rank and alpha patterns (and rsLoRA's alpha / sqrt(r)) differ from llama.cpp's alpha / rank: folded into B.
    adapter = make_adapter(tiny_llama, tmp_path / "adapter", rslora=rslora)
    base_f32 = write_gguf(load_checkpoint(tiny_llama, work_dir=tmp_path / "b"), tmp_path / "base.gguf", "F32")
    merged = load_checkpoint(adapter, work_dir=tmp_path / "m")
    merged_f32 = write_gguf(merged, tmp_path / "merged.gguf", "F32")
    lora = write_gguf_lora(adapter, load_checkpoint(tiny_llama, work_dir=tmp_path / "w"), tmp_path / "a.gguf", "F32")
    applied = _logits(base_f32, PROMPT, lora)
    expected = _logits(merged_f32, PROMPT)
    without = _logits(base_f32, PROMPT)
    scale = np.abs(expected).max()
    assert np.abs(without - expected).max() > 0.05 * scale  # the adapter changes the answer ...
    assert np.abs(applied - expected).max() < 1e-4 * scale  # ... exactly as merging it does
    assert (applied.argmax(-1) == expected.argmax(-1)).all()


def test_an_adapter_saving_whole_tensors_is_refused_at_run_time(tiny_llama: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    adapter = make_adapter(tiny_llama, tmp_path / "adapter", patterns=False)
    weights = load_file(adapter / "adapter_model.safetensors")
    base = load_checkpoint(tiny_llama, work_dir=tmp_path / "w")
    weights["base_model.model.model.norm.modules_to_save.default.weight"] = base.load("model.norm.weight")
    save_file(weights, adapter / "adapter_model.safetensors")
    with pytest.raises(UnsupportedError, match="modules_to_save"):
        write_gguf_lora(adapter, base, tmp_path / "a.gguf")
    assert not (tmp_path / "a.gguf").exists()


def test_adapter_file_holds_only_the_pairs(tiny_gemma: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_gemma, tmp_path / "adapter", patterns=False, targets=("q_proj",))
    path = write_gguf_lora(adapter, load_checkpoint(tiny_gemma, work_dir=tmp_path / "w"), tmp_path / "a.gguf")
    names = sorted(name for name, _, _ in iter_gguf_tensors(path))
    assert names == ["blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b",
                     "blk.1.attn_q.weight.lora_a", "blk.1.attn_q.weight.lora_b"]
