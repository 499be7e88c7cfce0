"""The context a build ships when --context-length is not given: sized from the task, else the default."""

from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import edgepack

from packager.context_size import MAX_PREFILL_CHUNK, MIN_CONTEXT, context_for_task, prefill_chunk


def test_a_short_task_gets_the_minimum_and_a_long_one_twice_its_length_as_a_power_of_two() -> None:
    assert context_for_task(70, 8, 255).tokens == MIN_CONTEXT
    assert context_for_task(700, 64, 255).tokens == 2048  # 2 x 764 = 1528 -> 2048
    assert context_for_task(30, 8, 900).tokens == 1024  # every golden sequence still fits: same positions


def test_a_prefill_chunk_is_a_quarter_of_the_context_from_32_to_256_and_never_the_whole_context() -> None:
    assert prefill_chunk(MIN_CONTEXT) == 128
    assert prefill_chunk(4096) == prefill_chunk(32768) == MAX_PREFILL_CHUNK == 256
    assert prefill_chunk(64) == 32  # at least 32
    assert prefill_chunk(32) == 31  # a call never fills the whole cache


def _eval_set(path: Path) -> Path:
    rows = [{"instruction": "Classify.", "input": text, "output": label}
            for text, label in (("turn on the lights", "lights"), ("play jazz", "music"), ("lights off", "lights"))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_the_context_is_sized_from_the_eval_set_unless_given(tiny_gemma: Path, tmp_path: Path) -> None:
    eval_path = _eval_set(tmp_path / "eval.jsonl")
    contexts = {}
    for name, extra in (("sized", []), ("given", ["--context-length", "300"])):
        out = tmp_path / name
        result = edgepack("build", tiny_gemma, "--target", "raspberry-pi", "--quant", "F32", "--out", out,
                          "--eval", eval_path, "--task", "labels", "--no-gate", *extra)  # random: no valid label
        assert result.exit_code in (0, 1), result.stderr  # 1: the gate failed, output kept (--no-gate)
        manifest = json.loads((out / "manifest.json").read_text())
        shipped = json.loads((out / "raspberry-pi" / "edgepack.json").read_text())
        assert shipped["model"]["context_length"] == manifest["options"]["context_length"]
        contexts[name] = manifest["options"]
    # The tiny tokenizer splits the golden text finely, so its longest golden sequence may set it above the minimum.
    assert MIN_CONTEXT <= contexts["sized"]["context_length"] < 4096
    assert "sized from the contract" in contexts["sized"]["context_length_from"]
    assert contexts["given"] == {"quant": "F32", "context_length": 300, "context_length_from": "--context-length"}
