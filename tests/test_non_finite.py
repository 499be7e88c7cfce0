"""NaN and Infinity never pass: non-finite weights are bad input, non-finite logits fail the gate, and no
JSON edgepack writes holds a bare NaN (which JSON.parse, jq and every mobile decoder reject)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_helpers import edgepack, leftovers, strict_loads
from safetensors.torch import load_file, save_file
from test_adapter_merge import make_adapter

from packager.errors import ExitCode, InternalError
from packager.strict_json import json_text
from packager.verify.gates import EIGHT_BIT, LOSSLESS, TopOneGate
from packager.verify.metrics import FidelityAccumulator, FidelityMetrics


def _set_values(weights: Path, name: str, edit) -> None:
    tensors = load_file(str(weights))
    edit(tensors[name])
    save_file(tensors, str(weights), metadata={"format": "pt"})


def _build(model: Path, out: Path, *extra: str):
    return edgepack("build", model, "--target", "raspberry-pi", "--out", out, "--quant", "F16", *extra)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_weight_is_refused_naming_the_tensor_and_file(tiny_llama: Path, tmp_path: Path,
                                                                 value: float) -> None:
    model = shutil.copytree(tiny_llama, tmp_path / "m")
    name = "model.layers.1.mlp.down_proj.weight"

    def one_value(t: torch.Tensor) -> None:
        t[3, 7] = value

    _set_values(model / "model.safetensors", name, one_value)
    out = tmp_path / "dist" / "out"
    result = _build(model, out)
    assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
    assert name in result.stderr and "model.safetensors" in result.stderr
    assert ("1 NaN" if math.isnan(value) else "1 infinite") in result.stderr
    assert "diverged" in result.stderr and "Traceback" not in result.stderr
    assert not out.parent.exists() or leftovers(out.parent, "out") == []


def test_all_nan_embedding_is_refused_naming_the_tensor(tiny_gemma: Path, tmp_path: Path) -> None:
    model = shutil.copytree(tiny_gemma, tmp_path / "m")
    _set_values(model / "model.safetensors", "model.embed_tokens.weight", lambda t: t.fill_(math.nan))
    result = _build(model, tmp_path / "out", "--json")
    assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
    assert "model.embed_tokens.weight" in result.stderr and "NaN" in result.stderr
    assert strict_loads(result.stdout)["error"] == "bad input"


def test_lora_b_with_nan_is_refused_naming_the_adapter_file(tiny_llama: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_llama, tmp_path / "adapter")
    weights = adapter / "adapter_model.safetensors"
    lora_b = next(n for n in load_file(str(weights)) if "lora_B" in n)
    _set_values(weights, lora_b, lambda t: t.__setitem__((0, 0), math.nan))
    result = _build(adapter, tmp_path / "out")
    assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
    assert lora_b in result.stderr and "adapter_model.safetensors" in result.stderr and "NaN" in result.stderr


def test_lora_whose_merge_overflows_float32_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_llama, tmp_path / "adapter")
    weights = adapter / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    for name in tensors:
        if "q_proj" in name:
            tensors[name].fill_(1e30)  # finite in float32; B @ A is 4e60, which is not
    save_file(tensors, str(weights), metadata={"format": "pt"})
    result = _build(adapter, tmp_path / "out")
    assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
    assert "q_proj.weight (merged)" in result.stderr and "overflows float32" in result.stderr


def _metrics(**fields: Any) -> FidelityMetrics:
    base = {"positions": 10, "top1": 1.0, "top1_decisive": 1.0, "decisive_positions": 10, "kl": 0.0,
            "ppl_ref": 2.0, "ppl": 2.0}
    return FidelityMetrics(**{**base, **fields})


@pytest.mark.parametrize("fields", [{"kl": math.nan}, {"kl": math.inf}, {"top1_decisive": math.nan},
                                    {"nonfinite_positions": 1}])
def test_a_non_finite_metric_fails_every_gate(fields: dict[str, Any]) -> None:
    m = _metrics(**fields)
    for gate in (LOSSLESS, EIGHT_BIT, TopOneGate("fp16", 0.98, also=LOSSLESS)):
        reasons = gate.check(m)
        assert reasons, f"{gate.name} passed {fields}"
        assert any("finite" in r for r in reasons), reasons


def test_nan_top1_fails_the_top_one_gate() -> None:
    assert TopOneGate("fp16", 0.98).check(_metrics(top1=math.nan)) == ["top-1 is nan (not a finite number)"]


def test_a_nan_logit_never_counts_as_top1_agreement() -> None:
    ref = np.array([[5.0, 1.0, 0.0], [0.0, 4.0, 1.0]], dtype=np.float32)
    art = ref.copy()
    art[0, 0] = np.nan  # argmax of this row is 0, the reference's top token
    acc = FidelityAccumulator()
    acc.add(ref, art)
    m = acc.result()
    assert m.top1 == 0.5 and m.nonfinite_positions == 1 and math.isnan(m.kl)
    assert any("non-finite logits" in r for r in LOSSLESS.check(m))


def test_json_text_refuses_nan_naming_where_it_is() -> None:
    with pytest.raises(InternalError, match=r"manifest.json: artifacts\[0\].kl is NaN or infinite"):
        json_text({"artifacts": [{"kl": math.nan}]}, "manifest.json")
    assert strict_loads(json_text({"kl": None}, "x")) == {"kl": None}


def _nan_at_the_top_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make llama.cpp's logits NaN at the top token of the first position: argmax still picks it."""
    from packager.verify.llama_cpp_runner import GGUFRunner

    real = GGUFRunner.logits

    def logits(self: GGUFRunner, ids: list[int]) -> np.ndarray:
        out = real(self, ids)
        out[0, int(out[0].argmax())] = np.nan
        return out

    monkeypatch.setattr(GGUFRunner, "logits", logits)


def test_an_artifact_with_nan_logits_fails_its_gate(tiny_llama: Path, tmp_path: Path, cold_cache: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _nan_at_the_top_token(monkeypatch)
    out = tmp_path / "dist" / "out"
    result = _build(tiny_llama, out, "--json")
    assert result.exit_code == ExitCode.GATE_FAILED, result.stderr
    assert "non-finite logits" in result.stderr
    payload = strict_loads(result.stdout)
    assert payload["passed"] is False and payload["error"] == "quality gate failed"
    assert leftovers(out.parent, "out") == []


def test_a_kept_build_with_nan_logits_writes_only_strict_json(tiny_llama: Path, tmp_path: Path, cold_cache: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _nan_at_the_top_token(monkeypatch)
    out = tmp_path / "out"
    result = _build(tiny_llama, out, "--json", "--no-gate")
    assert result.exit_code == ExitCode.GATE_FAILED, result.stderr
    summary = strict_loads(result.stdout)
    row = summary["artifacts"][0]
    assert row["kl"] is None and row["passed"] is False
    assert any("non-finite logits" in f for f in row["failures"])
    for path in out.rglob("*.json"):
        strict_loads(path.read_text(encoding="utf-8"))
    manifest = strict_loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["artifacts"][0]["kl"] is None
    record = strict_loads((out / "raspberry-pi" / "edgepack.json").read_text(encoding="utf-8"))
    assert record["verification"][0]["metrics"]["kl"] is None
