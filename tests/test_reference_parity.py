"""edgepack's F16 tensors are byte-identical to llama.cpp's own converter (extracted at test time)."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf_files import iter_gguf_tensors

from benchmarks.reference_converter import run_reference_convert
from packager.checkpoint import load_checkpoint
from packager.formats.gguf_writer import write_gguf


def assert_tensors_identical(ours: Path, reference: Path) -> int:
    """Compare two GGUF files tensor by tensor (type and bytes); return how many were compared."""
    ref = {name: (qtype, data) for name, qtype, data in iter_gguf_tensors(reference)}
    mine = {name: (qtype, data) for name, qtype, data in iter_gguf_tensors(ours)}
    assert set(mine) == set(ref), f"tensor names differ: {sorted(set(mine) ^ set(ref))[:10]}"
    for name, (qtype, data) in ref.items():
        assert mine[name][0] == qtype, f"{name}: {mine[name][0].name} vs reference {qtype.name}"
        assert mine[name][1].tobytes() == data.tobytes(), f"{name}: bytes differ from the reference"
    return len(ref)


@pytest.mark.parametrize(
    "fixture,pre", [("tiny_llama", "llama-bpe"), ("tiny_gemma", "gemma4"), ("tiny_smollm", "smollm")]
)
def test_f16_tensors_are_byte_identical_to_llama_cpp_converter(
    fixture: str, pre: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # The tiny test tokenizers are unknown to llama.cpp's hash table, so the reference is told the
    # pre-tokenizer name; the tensors under comparison do not depend on it.
    model: Path = request.getfixturevalue(fixture)
    reference = tmp_path / "reference.gguf"
    run_reference_convert(model, reference, "f16", pre_tokenizer=pre)
    ours = write_gguf(load_checkpoint(model, work_dir=tmp_path / "w"), tmp_path / "ours.gguf", "F16")
    assert assert_tensors_identical(ours, reference) > 10


@pytest.mark.real_model
def test_gemma_270m_f16_tensors_are_byte_identical_to_llama_cpp_converter(gemma_270m: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference.gguf"
    run_reference_convert(gemma_270m, reference, "f16")
    ours = write_gguf(load_checkpoint(gemma_270m, work_dir=tmp_path / "w"), tmp_path / "ours.gguf", "F16")
    assert assert_tensors_identical(ours, reference) == 236
