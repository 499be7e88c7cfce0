"""The fp32 model with its decoder blocks streamed from the checkpoint gives the whole model's numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from packager.checkpoint import load_checkpoint
from packager.verify.fp32_model import load_fp32_model, resident_bytes
from packager.verify.hf_greedy import greedy_continuations
from tests.tiny_models import make_tiny_llama


def _open(folder: Path, tmp_path: Path):
    return load_checkpoint(folder, allow_pickle=False, work_dir=tmp_path / "work")


@pytest.mark.parametrize("model", ["tiny_gemma", "tiny_llama", "tied_llama"])
def test_streamed_blocks_give_the_whole_models_logits_bit_for_bit_and_its_greedy_tokens(
        model: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    folder = (make_tiny_llama(tmp_path / "tied", tied=True) if model == "tied_llama"
              else request.getfixturevalue(model))
    ckpt = _open(folder, tmp_path)
    whole, streamed = load_fp32_model(ckpt), load_fp32_model(ckpt, stream_above=0)
    # Streamed: the blocks' weights sit on the meta device between passes, only the rest is resident.
    assert all(p.device.type == "meta" for n, p in streamed.named_parameters() if ".layers." in n)
    assert all(p.device.type == "cpu" for n, p in streamed.named_parameters() if ".layers." not in n)
    ids = torch.tensor([[2, 17, 99, 300, 5, 41, 7, 250, 33, 12]])
    with torch.inference_mode():
        assert torch.equal(whole(ids).logits, streamed(ids).logits)
    # A cached, batched decode (the eval baseline's path) reads every block on every step: same tokens.
    # Its head runs on the last position only (logits_to_keep=1), a strided input for which the CPU's
    # matmul may pick another kernel per call: on an AVX-512 host the margins differed in the 7th digit.
    prompts = [[2, 17, 99], [2, 5, 41, 7, 250]]
    expected = greedy_continuations(whole, prompts, 6, [], lambda _: False)
    got = greedy_continuations(streamed, prompts, 6, [], lambda _: False)
    assert [c.tokens for c in got] == [c.tokens for c in expected]
    assert [c.margin for c in got] == pytest.approx([c.margin for c in expected], rel=1e-5)


@pytest.mark.parametrize("model", ["tiny_gemma", "tiny_llama", "tied_llama", "tiny_smollm"])
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_the_whole_model_read_tensor_by_tensor_is_from_pretrained_s_bit_for_bit(
        model: str, attention: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Conversions and screens load through load_fp32_whole; its weights, buffers and ties must be
    transformers' own, or every artifact's numbers would move."""
    from transformers import AutoModelForCausalLM

    from packager.verify.fp32_model import load_fp32_whole

    folder = (make_tiny_llama(tmp_path / "tied", tied=True) if model == "tied_llama"
              else request.getfixturevalue(model))
    expected = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation=attention,
                                                    local_files_only=True).eval()
    got = load_fp32_whole(folder, attention)
    want = dict(expected.state_dict(keep_vars=True)) | dict(expected.named_buffers(remove_duplicate=False))
    have = dict(got.state_dict(keep_vars=True)) | dict(got.named_buffers(remove_duplicate=False))
    assert sorted(have) == sorted(want)
    for name, tensor in want.items():
        assert have[name].dtype == tensor.dtype and torch.equal(have[name], tensor), name
    tied = expected.lm_head.weight is expected.get_input_embeddings().weight
    assert (got.lm_head.weight is got.get_input_embeddings().weight) == tied
    assert got.config.to_dict() == expected.config.to_dict()
    assert got.generation_config.to_dict() == expected.generation_config.to_dict()
    assert not got.training and got.config._attn_implementation == attention
    ids = torch.tensor([[2, 17, 99, 300, 5]])
    with torch.inference_mode():
        assert torch.equal(got(ids).logits, expected(ids).logits)


def test_only_a_large_model_is_streamed_and_its_resident_weights_are_one_block_plus_the_rest(
        tiny_gemma: Path, tmp_path: Path) -> None:
    ckpt = _open(tiny_gemma, tmp_path)
    whole_bytes = 4 * ckpt.parameter_count
    assert resident_bytes(ckpt) == whole_bytes  # under the threshold: loaded whole
    streamed = resident_bytes(ckpt, stream_above=0)
    block = sum(4 * math.prod(e.shape) for name, e in ckpt.tensors.items() if name.startswith("model.layers.0."))
    assert streamed == whole_bytes - block  # two equal blocks: one of them is never resident
    assert not any(p.device.type == "meta" for p in load_fp32_model(ckpt).parameters())

