"""LoRA adapters are merged in float32 exactly as peft's merge_and_unload does, before quantization."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_helpers import edgepack, leftovers

from packager.checkpoint import load_checkpoint
from packager.errors import BadInputError, ExitCode
from tests.tiny_models import make_adapter


def peft_merged_state(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return {k: v.detach() for k, v in merged.state_dict().items()}


@pytest.mark.parametrize("rslora", [False, True])
def test_merged_weights_equal_peft_merge_and_unload(tiny_llama: Path, tmp_path: Path, rslora: bool) -> None:
    adapter = make_adapter(tiny_llama, tmp_path / "adapter", rslora=rslora)
    ckpt = load_checkpoint(adapter, work_dir=tmp_path / "work")
    expected = peft_merged_state(tiny_llama, adapter)
    assert ckpt.origin["kind"] == "peft-adapter" and ckpt.origin["lora_modules"] == 8
    changed = 0
    for name in ckpt.tensor_names():
        ours = ckpt.load(name).float()
        theirs = expected[name].float()
        assert torch.equal(ours, theirs), f"{name}: max diff {(ours - theirs).abs().max()}"
        base = load_checkpoint(tiny_llama, work_dir=tmp_path / "w2").load(name).float()
        changed += int(not torch.equal(ours, base))
    assert changed == 8, "every adapted matrix (4 modules x 2 layers) must differ from the base"


def test_adapter_build_runs_end_to_end_and_records_its_origin(tiny_llama: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_llama, tmp_path / "my-adapter")
    out = tmp_path / "out"
    result = edgepack("build", adapter, "--target", "raspberry-pi", "--out", out, "--quant", "F16", "--json")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["kind"] == "peft-adapter"
    assert manifest["source"]["base"] == str(tiny_llama.resolve())
    assert manifest["name"] == "my-adapter"
    assert result.json()["artifacts"][0]["passed"] is True


def test_base_that_does_not_resolve_asks_for_base_flag(tiny_llama: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_llama, tmp_path / "adapter", base_ref="some-org/some-hub-model")
    out = tmp_path / "out"
    result = edgepack("build", adapter, "--target", "raspberry-pi", "--out", out)
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "some-org/some-hub-model" in result.stderr and "--base" in result.stderr
    assert leftovers(tmp_path, "out") == []
    ok = edgepack("build", adapter, "--base", tiny_llama, "--target", "raspberry-pi", "--out", out, "--quant", "F16")
    assert ok.exit_code == 0, ok.stderr


def test_adapter_whose_shapes_do_not_fit_the_base_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    from tiny_models import make_tiny_llama

    adapter = make_adapter(tiny_llama, tmp_path / "adapter")
    other = make_tiny_llama(tmp_path / "narrower-base", hidden_size=32)  # same module names, other sizes
    with pytest.raises(BadInputError) as err:
        load_checkpoint(adapter, base=other, work_dir=tmp_path / "work")
    message = str(err.value)
    assert "adapter_model.safetensors" in message and "shapes do not fit" in message and "--base" in message


def test_adapter_for_modules_the_base_lacks_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_llama, tmp_path / "adapter")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    from safetensors.torch import load_file, save_file

    weights = load_file(str(adapter / "adapter_model.safetensors"))
    renamed = {k.replace("self_attn.q_proj", "self_attn.qkv_fused"): v for k, v in weights.items()}
    save_file(renamed, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(BadInputError, match="does not have"):
        load_checkpoint(adapter, work_dir=tmp_path / "work")


def test_a_second_merge_of_the_same_adapter_reuses_the_checked_entry_and_never_rewrites_it(
        tiny_llama: Path, tmp_path: Path, cold_cache: Path) -> None:
    """A build reading the merged folder (a conversion child, say) must never see it deleted and rewritten
    by another build of the same adapter: the merge is a stage-cache entry, written once, checked on reuse."""
    from packager.pipeline import BuildRequest, open_input
    from packager.progress import Reporter

    adapter = make_adapter(tiny_llama, tmp_path / "my-adapter")
    first, digest = open_input(BuildRequest(checkpoint=adapter, targets=[]), Reporter(quiet=True))
    weights = first.weight_files()[0]
    before = weights.stat()
    reporter = Reporter(quiet=True)
    second, again = open_input(BuildRequest(checkpoint=adapter, targets=[]), reporter)
    assert second.folder == first.folder and again == digest
    after = weights.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    merge = next(r for r in reporter.records if r.name.startswith("merge LoRA adapter"))
    assert merge.cached
    assert not [p for p in cold_cache.rglob("*") if ".tmp-" in p.name]


def test_a_merged_checkpoint_altered_in_the_cache_is_merged_again(tiny_llama: Path, tmp_path: Path,
                                                                  cold_cache: Path) -> None:
    from packager.pipeline import BuildRequest, open_input
    from packager.progress import Reporter

    adapter = make_adapter(tiny_llama, tmp_path / "my-adapter")
    first, digest = open_input(BuildRequest(checkpoint=adapter, targets=[]), Reporter(quiet=True))
    with first.weight_files()[0].open("r+b") as fh:
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 0xFF]))
    reporter = Reporter(quiet=True)
    _, again = open_input(BuildRequest(checkpoint=adapter, targets=[]), reporter)
    assert again == digest
    merge = next(r for r in reporter.records if r.name.startswith("merge LoRA adapter"))
    assert not merge.cached


# ---------------------------------------------------------------------------------------------
# --runtime-adapter: the base's GGUF plus the adapter as a GGUF LoRA, applied by llama-server.


@pytest.fixture(scope="module")
def runtime_adapter_build(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A Raspberry Pi build of a tiny Llama LoRA with --runtime-adapter: (output folder, CLI result)."""
    folder = tmp_path_factory.mktemp("runtime-adapter")
    adapter = make_adapter(tiny_llama, folder / "support-bot")  # rank/alpha patterns: folded into lora_b
    out = folder / "out"
    result = edgepack("build", adapter, "--target", "raspberry-pi", "--quant", "F16", "--runtime-adapter",
                      "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    return out, result


def test_runtime_adapter_ships_the_base_gguf_and_the_adapter_judged_against_the_merged_model(
        runtime_adapter_build: tuple[Path, Any], tiny_llama: Path, tmp_path: Path) -> None:
    out, result = runtime_adapter_build
    pi = out / "raspberry-pi"
    [row] = result.json()["artifacts"]
    assert row["artifact"] == "raspberry-pi/model-F16.gguf + adapter-support-bot.gguf"
    assert row["level"] == "executed" and row["top1"] >= 0.99  # the pair, in llama.cpp, vs the fp32 merged model
    document = json.loads((pi / "edgepack.json").read_text())
    assert document["model"]["lora_adapter"] == "adapter-support-bot.gguf"
    assert document["gguf_choice"]["runtime_adapter"] == "adapter-support-bot.gguf"
    assert "--lora" in (pi / "edgepack-support-bot.service").read_text()
    assert "raspberry-pi/adapter-support-bot.gguf" in (out / "SHA256SUMS").read_text()
    # The shipped model is the base's own GGUF, byte for byte: every specialist of this base can share it.
    base_build = edgepack("build", tiny_llama, "--target", "raspberry-pi", "--quant", "F16", "--out", tmp_path / "b")
    assert base_build.exit_code == 0, base_build.stderr
    assert (pi / "model-F16.gguf").read_bytes() == (tmp_path / "b" / "raspberry-pi" / "model-F16.gguf").read_bytes()


def test_a_server_with_the_bundles_base_and_adapter_answers_the_client_as_the_merged_model_does(
        runtime_adapter_build: tuple[Path, Any], tmp_path: Path) -> None:
    """llama-cpp-python's OpenAI server (the bundle's client works with it too) serves the shipped pair."""
    import subprocess
    import sys

    import llama_cpp
    from openai_server import openai_server

    from packager.formats.gguf_writer import write_gguf

    out, _ = runtime_adapter_build
    pi = out / "raspberry-pi"
    prompt = "the quick brown fox"
    merged = write_gguf(load_checkpoint(pi.parent.parent / "support-bot", work_dir=tmp_path / "w"),
                        tmp_path / "merged.gguf", "F16")

    def greedy(model: Path, lora: Path | None = None) -> str:
        llm = llama_cpp.Llama(model_path=str(model), lora_path=str(lora) if lora else None, n_ctx=256,
                              verbose=False, seed=0)
        try:
            return llm.create_completion(prompt, max_tokens=8, temperature=0.0)["choices"][0]["text"].strip()
        finally:
            llm.close()

    expected = greedy(merged)
    assert expected != greedy(pi / "model-F16.gguf")  # the adapter changes the answer
    lora = pi / "adapter-support-bot.gguf"
    with openai_server(pi / "model-F16.gguf", tmp_path / "server.log", 256, lora=lora) as port:
        answer = subprocess.run([sys.executable, str(pi / "client.py"), "--port", str(port), "--max-tokens", "8",
                                 prompt], capture_output=True, text=True, timeout=120, check=False)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip() == expected


def test_runtime_adapter_on_a_whole_model_is_refused_before_anything_is_written(
        tiny_llama: Path, tmp_path: Path) -> None:
    result = edgepack("build", tiny_llama, "--target", "raspberry-pi", "--runtime-adapter", "--out", tmp_path / "o")
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "--runtime-adapter ships a LoRA adapter" in result.stderr and str(tiny_llama) in result.stderr
    assert not (tmp_path / "o").exists()


def test_the_same_adapter_built_under_another_name_ships_a_file_of_that_name(
        runtime_adapter_build: tuple[Path, Any], tmp_path: Path) -> None:
    out, _ = runtime_adapter_build
    result = edgepack("build", out.parent / "support-bot", "--target", "raspberry-pi", "--quant", "F16",
                      "--runtime-adapter", "--name", "Billing Bot", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.stderr
    import gguf

    shipped = gguf.GGUFReader(str(tmp_path / "o" / "raspberry-pi" / "adapter-billing-bot.gguf"))
    assert shipped.fields["general.name"].contents() == "adapter-billing-bot"
    first = gguf.GGUFReader(str(out / "raspberry-pi" / "adapter-support-bot.gguf"))
    assert [t.name for t in shipped.tensors] == [t.name for t in first.tensors]


def test_two_adapters_merged_with_one_work_folder_each_get_their_own_merge(tiny_llama: Path, tmp_path: Path) -> None:
    """The merge's cache entry is keyed by the adapter too, not only by the folder a caller passes."""
    merged = [load_checkpoint(make_adapter(tiny_llama, tmp_path / f"a{seed}", seed=seed), work_dir=tmp_path / "w")
              for seed in (1, 2)]
    assert merged[0].content_digest() != merged[1].content_digest()
