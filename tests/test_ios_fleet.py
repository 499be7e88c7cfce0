"""An iOS fleet: one multifunction Core ML package, a function per LoRA specialist, the base stored once.

Tiny random checkpoints: two random adapters of a tiny Gemma (sliding window, post-norms). Every function is
simulated in numpy against its own specialist's fp32 merged model; nothing here runs Core ML or an iPhone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from packager.fleet import SpecialistSpec
from packager.pipeline import BuildOutcome, BuildRequest, run_build
from packager.progress import Reporter
from packager.stages import BuildOptions
from tests.tiny_models import make_adapter

SPECIALISTS = ("router", "extractor")
PACKAGE = "model-int4-adapter.mlpackage"


def _fleet_build(base: Path, root: Path, out: Path, **ios: Any) -> BuildOutcome:
    specs = tuple(SpecialistSpec(name, root / name) for name in SPECIALISTS)
    return run_build(BuildRequest(checkpoint=base, targets=["ios"], out=out, specialists=specs,
                                  options=BuildOptions(context_length=256, target_options={"ios": ios})),
                     Reporter(quiet=True))


@pytest.fixture(scope="module")
def adapters(tiny_gemma: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two random LoRA specialists of the tiny Gemma, in <root>/router and <root>/extractor."""
    root = tmp_path_factory.mktemp("ios-fleet")
    for seed, name in enumerate(SPECIALISTS, start=1):
        make_adapter(tiny_gemma, root / name, seed=seed)
    return root


@pytest.fixture(scope="module")
def fleet_bundle(tiny_gemma: Path, adapters: Path) -> tuple[BuildOutcome, Path]:
    """The two specialists built for iOS with the default compression, gates on."""
    outcome = _fleet_build(tiny_gemma, adapters, adapters / "dist")
    return outcome, adapters / "dist" / "ios"


def test_a_fleet_ships_one_package_with_a_function_per_specialist_each_simulated_and_gated(fleet_bundle) -> None:
    import coremltools as ct

    from packager.errors import InternalError
    from targets.ios.mil_interpreter import load_program
    from targets.ios.multifunction import function_names

    outcome, bundle = fleet_bundle
    assert outcome.passed
    assert sorted(p.name for p in bundle.glob("*.mlpackage")) == [PACKAGE]
    assert not any((bundle / name).exists() for name in SPECIALISTS)  # no merged folder per specialist
    spec = ct.models.MLModel(str(bundle / PACKAGE), skip_model_load=True).get_spec()
    assert function_names(spec) == list(SPECIALISTS)
    document = json.loads((bundle / "edgepack.json").read_text())
    assert [(s["name"], s["function"]) for s in document["specialists"]] == [(n, n) for n in SPECIALISTS]
    assert all(s["contract"]["eos_ids"] and s["exactness_proof"]["exact"] for s in document["specialists"])
    assert document["model"]["packages"][0]["functions"] == list(SPECIALISTS)
    result = outcome.results[0]
    assert result.specialists == {f"ios/{PACKAGE} ({n})": n for n in SPECIALISTS}
    for verification in result.verifications:
        assert verification.level == "simulated" and verification.passed, verification.failures
        # Each is held to llama.cpp's Q4_K_M of its own merged model (the 4-bit gate), on every golden position.
        assert "llama.cpp Q4_K_M" in verification.gate and verification.metrics.positions > 1000
        assert verification.metrics.top1 >= 0.9
    with pytest.raises(InternalError, match="no function 'nope'; it has router, extractor"):
        load_program(bundle / PACKAGE, "nope")
    # Each function, loaded alone, has the inputs and states swift-transformers drives.
    for name in SPECIALISTS:
        _, alone = load_program(bundle / PACKAGE, name)
        assert sorted(f.name for f in alone.description.input) == [
            "fullAttentionMask", "inputIds", "slidingAttentionMask"]
        assert sorted(f.name for f in alone.description.state) == ["keyCache", "valueCache"]
        assert alone.description.metadata.userDefined["co.huggingface.exporters.sliding_window"] == "32"


def test_the_fleet_package_stores_the_base_once_and_each_adapter_beside_it(fleet_bundle) -> None:
    """weight.bin holds one specialist's package's weights plus the other specialist's adapter: the base (4-bit
    linears, 8-bit embedding) is deduplicated across the functions, the adapters are not."""
    from targets.ios.mil_interpreter import load_program
    from targets.ios.multifunction import weight_bytes

    outcome, bundle = fleet_bundle
    shared = json.loads((bundle / "edgepack.json").read_text())["model"]["shared_base"]
    singles = [source["weight_bytes"] for source in shared["sources"].values()]
    fleet = weight_bytes(bundle / PACKAGE)
    assert fleet == shared["weight_bytes"]
    program, _ = load_program(bundle / PACKAGE, SPECIALISTS[1])
    lora = [op.outputs[0].val for op in program.functions["main"].operations
            if op.op_type == "const" and "_lora_" in op.outputs[0].name]
    adapter = sum(value.nbytes for value in lora)
    assert len(lora) == 16 and adapter > 0  # q/v/o/down in two layers, an A and a B each, fp16
    # The second function adds about its adapter's bytes (a blob has a 64-byte header; the smallest consts may be
    # written inline in the program instead), not a second base: 211,264 bytes vs 2 x 203,006, 2026-12-06.
    extra = fleet - max(singles)
    assert 0.5 * adapter <= extra <= adapter + 64 * len(lora), (extra, adapter)
    assert fleet < 0.6 * sum(singles)
    assert outcome.results[0].notes[0].startswith(f"{PACKAGE}: 2 functions sharing one base")


def test_each_function_answers_as_its_own_specialist_not_the_other(fleet_bundle, tiny_gemma: Path,
                                                                   adapters: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from packager.checkpoint import load_checkpoint
    from targets.ios.verify import SimulatedModel

    _, bundle = fleet_bundle
    ids = [2, *range(10, 70)]
    fp32 = {}
    for name in SPECIALISTS:
        merged = load_checkpoint(adapters / name, base=tiny_gemma, work_dir=tmp_path / name)
        model = AutoModelForCausalLM.from_pretrained(str(merged.folder), dtype=torch.float32,
                                                     attn_implementation="eager").eval()
        with torch.no_grad():
            fp32[name] = model(torch.tensor([ids])).logits[0].argmax(-1).numpy()
    assert (fp32["router"] != fp32["extractor"]).mean() > 0.2  # the specialists answer differently
    for name, other in (SPECIALISTS, SPECIALISTS[::-1]):
        top1 = SimulatedModel(bundle / PACKAGE, name).logits(ids).argmax(-1)
        assert np.mean(top1 == fp32[name]) >= 0.9
        assert np.mean(top1 == fp32[name]) > np.mean(top1 == fp32[other]) + 0.15


def test_the_bridge_loads_a_specialist_by_function_name_and_the_app_picks_one(fleet_bundle) -> None:
    outcome, bundle = fleet_bundle
    swift = [c for c in outcome.results[0].scaffold_checks if c.tool.startswith(("tree-sitter (swift)", "Core ML"))]
    assert swift and all(c.status == "passed" for c in swift), [c.detail for c in swift if c.status != "passed"]
    assert any(c.file == "EdgeModel/Sources/EdgeModel/EdgeFleet.swift" for c in swift)
    bridge = (bundle / "EdgeModel" / "Sources" / "EdgeModel" / "EdgeModel.swift").read_text()
    assert "configuration.functionName = specialist?.function" in bridge
    build_info = (bundle / "app" / "Sources" / "BuildInfo.swift").read_text()
    assert 'static let specialists: [String] = ["router", "extractor"]' in build_info
    assert 'Picker("Specialist"' in (bundle / "app" / "Sources" / "ContentView.swift").read_text()
    assert "EdgeFleet" in (bundle / "app" / "README.md").read_text()


def test_each_function_answers_its_own_specialists_eval_set_under_its_own_contract(
        tiny_gemma: Path, adapters: Path, tmp_path: Path) -> None:
    """With eval sets, each function answers every row of its specialist's set through its own program (the way
    EdgeModel.generate drives it), held to that specialist's task gate; the package is the same one."""
    sizes = {"router": (3, 4), "extractor": (5, 6)}  # rows, max_new_tokens
    specs = []
    for name, (rows, new_tokens) in sizes.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(
            json.dumps({"instruction": f"{name} {i}", "input": f"input {i}", "output": "x"}) + "\n"
            for i in range(rows)))
        specs.append(SpecialistSpec(name, adapters / name, tmp_path / f"{name}.jsonl",
                                    {"task": "text", "max_new_tokens": new_tokens}))
    outcome = run_build(BuildRequest(checkpoint=tiny_gemma, targets=["ios"], out=tmp_path / "dist",
                                     specialists=tuple(specs), options=BuildOptions(context_length=256, no_gate=True)),
                        Reporter(quiet=True))
    result = outcome.results[0]
    assert [v.artifact for v in result.verifications] == [f"ios/{PACKAGE} ({n})" for n in SPECIALISTS]
    for verification, (rows, _) in zip(result.verifications, sizes.values(), strict=True):
        assert verification.task is not None and verification.task.rows == rows
    document = json.loads((tmp_path / "dist" / "ios" / "edgepack.json").read_text())
    assert {s["name"]: s["contract"]["max_new_tokens"] for s in document["specialists"]} == {
        name: new_tokens for name, (_, new_tokens) in sizes.items()}
    build_info = (tmp_path / "dist" / "ios" / "app" / "Sources" / "BuildInfo.swift").read_text()
    assert '["router": "router 0", "extractor": "extractor 0"]' in build_info


def test_a_fleet_whose_compression_merges_ships_each_specialist_merged_and_says_why(
        tiny_gemma: Path, adapters: Path, tmp_path: Path) -> None:
    outcome = _fleet_build(tiny_gemma, adapters, tmp_path / "dist", compression="int8")
    bundle = tmp_path / "dist" / "ios"
    assert sorted(p.relative_to(bundle).as_posix() for p in bundle.glob("*/*.mlpackage")) == [
        "extractor/model-int8.mlpackage", "router/model-int8.mlpackage"]
    assert any("one package sharing the base was not shipped: --compression int8 merges each adapter" in note
               for note in outcome.results[0].notes)


def test_a_function_failing_its_gate_sends_the_fleet_back_to_merged_specialists(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Control flow only: a shared package with a failing function is not shipped (without --no-gate)."""
    from types import SimpleNamespace

    import targets.ios.target as ios

    failing = SimpleNamespace(name="extractor", verifications=[SimpleNamespace(passed=False, failures=["top-1 0.5"])])
    shared = SimpleNamespace(failed=[failing])
    asked: dict[str, str] = {}

    def merged(target: Any, fleet: Any, out_dir: Path, build: Any, reason: str) -> str:
        asked["reason"] = reason
        return "merged"

    monkeypatch.setattr(ios.IosTarget, "_shared_base_refused", lambda self, fleet: None)
    monkeypatch.setattr(ios.IosTarget, "_fleet_package", lambda self, fleet: (shared, {}))
    monkeypatch.setattr(ios, "build_merged_per_specialist", merged)
    fleet = SimpleNamespace(base=SimpleNamespace(options=SimpleNamespace(no_gate=False)))
    assert ios.IosTarget().build_fleet(fleet, Path("unused")) == "merged"
    assert asked["reason"] == "one package sharing the base was not shipped: in the shared package extractor " \
                              "failed its gate (top-1 0.5)"


def test_the_fleets_fp16_rewrites_take_the_largest_scale_any_specialist_needs_site_by_site() -> None:
    from targets.ios.fleet import widest_plan
    from targets.ios.model import Fp16Plan

    plans = [Fp16Plan(True, 2.0, [1.0, 4.0], []), Fp16Plan(True, 1.0, [2.0, 1.0], [1.0, 8.0])]
    assert widest_plan(plans) == Fp16Plan(True, 2.0, [2.0, 4.0], [1.0, 8.0])
    assert widest_plan([Fp16Plan(False), Fp16Plan(False)]) == Fp16Plan(False, 1.0, [], [])


def test_the_fleets_column_weights_are_every_specialists_activations_averaged(
        tiny_gemma: Path, tmp_path: Path) -> None:
    """What the shared base's int4 columns are weighted by: each specialist's own activations, averaged (every
    function runs on that base), so neither specialist's columns are weighed as the bare base would weigh them."""
    from packager.verify.fp32_model import load_fp32_whole
    from targets.ios.convert import column_importance, shared_importance
    from tests.tiny_models import make_tiny_gemma

    other = make_tiny_gemma(tmp_path / "other", seed=7)
    each = [column_importance(load_fp32_whole(folder, "eager"), folder) for folder in (tiny_gemma, other)]
    averaged = shared_importance([tiny_gemma, other])
    assert averaged.keys() == each[0].keys() and averaged
    for key, value in averaged.items():
        np.testing.assert_allclose(value, (each[0][key] + each[1][key]) / 2, rtol=1e-6)
    assert any(not np.allclose(value, each[0][key]) for key, value in averaged.items())
