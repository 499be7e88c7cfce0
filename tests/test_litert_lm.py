"""Android's LiteRT-LM runtime: a .litertlm exported from tiny models, executed in its own TFLite program and
in LiteRT-LM's engine on this host's CPU, judged like every other artifact.

One export per model (module-scoped fixtures); each takes about 20 s. The tests need litert-torch, litert-lm
and ai-edge-litert: they are skipped where those are missing, unless EDGEPACK_REQUIRE_TOOLS=1 (CI), which
makes a missing package a failure.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import edgepack, leftovers
from external_tools import tools_required

from packager.errors import EdgepackError, ExitCode

ROUTER_LABELS = ["billing", "shipping", "cancel"]


@pytest.fixture(scope="module", autouse=True)
def litert_packages() -> None:
    from targets.android.litert_export import LITERT_PACKAGES

    missing = LITERT_PACKAGES.missing()
    if missing:
        message = f"{', '.join(missing)} not installed (scripts/setup.sh installs them)"
        if tools_required():
            pytest.fail(f"{message}, and EDGEPACK_REQUIRE_TOOLS=1 says every check must run")
        pytest.skip(message)


def export_in_child(folder: Path, out: Path, recipe: str, cache_length: int) -> dict:
    """Export through the same child process a build uses (the tensorflow shim never enters this process)."""
    from packager.child_stage import run_child
    from targets.android.litert_export import prefill_lengths

    out.mkdir(parents=True, exist_ok=True)
    request = {"checkpoint": str(folder), "out_dir": str(out), "recipe": recipe, "cache_length": cache_length,
               "prefill_lengths": list(prefill_lengths(cache_length))}
    return run_child("targets.android.litert_export", out, request, f"LiteRT-LM export of {folder.name}")


@pytest.fixture(scope="module")
def router_build(tiny_router: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    """The tiny router (a classifier that knows its prompt) built for android with --android-runtime litert-lm,
    constrained to its labels: one int8 export, its program against the reference, the engine on the eval set."""
    from packager.pipeline import BuildRequest, run_build
    from packager.progress import Reporter
    from packager.stages import BuildOptions

    model, eval_path = tiny_router
    out = tmp_path_factory.mktemp("litert") / "dist"
    options = BuildOptions(target_options={"android": {"runtime": "litert-lm"}}, eval_path=eval_path,
                           task={"task": "labels", "labels": ROUTER_LABELS, "constrained": True})
    outcome = run_build(BuildRequest(checkpoint=model, targets=["android"], out=out, options=options),
                        Reporter(quiet=True))
    return outcome, out / "android"


def test_litertlm_program_matches_the_fp32_reference_within_the_int8_gate(router_build) -> None:
    from packager.verify.gates import EIGHT_BIT

    outcome, _ = router_build
    [result] = outcome.results
    [verification] = result.verifications
    assert verification.level == "executed" and verification.format == "litertlm"
    assert verification.quant == "dynamic_wi8_afp32"  # the first rung passed: no fp32 bundle was needed
    metrics = verification.metrics
    assert metrics.positions > 500 and metrics.nonfinite_positions == 0
    assert EIGHT_BIT.check(metrics) == [], metrics
    assert verification.passed, verification.failures
    assert "LiteRT-LM" in verification.runtime and "GPU" not in verification.runtime


def test_the_engine_tokenizes_like_hf_adds_one_bos_and_answers_the_eval_set_constrained(router_build) -> None:
    outcome, _ = router_build
    [verification] = outcome.results[0].verifications
    assert verification.tokenizer_parity, verification.tokenizer_detail
    assert verification.greedy_match, (verification.greedy_text, verification.greedy_text_reference)
    task = verification.task
    assert task is not None and task.rows == 6 and len(task.latencies_ms) == 6
    assert task.constrained  # LL_GUIDANCE applied the labels regex to every row
    assert task.validity == 1.0 and task.baseline_exact_match == 1.0
    assert task.exact_match >= task.baseline_exact_match - 0.02, task.mismatches
    assert all(latency > 0 for latency in task.latencies_ms)


def test_litert_only_bundle_holds_the_litertlm_and_says_what_ran(router_build) -> None:
    outcome, folder = router_build
    document = json.loads((folder / "edgepack.json").read_text(encoding="utf-8"))
    assert {f["path"] for f in document["files"] if not f["path"].startswith("app/")} == {
        "model.litertlm", "npu/README.md", "npu/compile_npu.py", "npu/litert-npu.yml"}
    model = document["model"]
    assert model["format"] == "litertlm" and model["backend"] == "cpu" and model["verification"] == "executed"
    assert model["metadata"]["max_num_tokens"] == model["max_context"] >= 512
    assert model["metadata"]["model_type"] == "gemma3"
    assert 32 <= model["prefill_lengths"][0] <= model["max_context"]
    notes = " ".join(outcome.results[0].notes)
    assert "GPU and NPU backends were not run" in notes
    assert "never ran against the real library, and no GPU or NPU ran anywhere" in notes
    assert "decodes the labels contract under LiteRT-LM's constrained decoding with the regex response format" in notes


def test_litert_only_bundle_ships_an_app_that_links_litert_lm_alone_and_tries_npu_gpu_cpu(router_build) -> None:
    from targets.android.litert_engine import VERBATIM_TEMPLATE, labels_response_format
    from targets.android.litert_export import LITERTLM_ANDROID_ARTIFACT

    _, folder = router_build
    document = json.loads((folder / "edgepack.json").read_text(encoding="utf-8"))
    backends = document["backends"]
    assert [(b["runtime"], b["backend"], b["litertlm"]) for b in backends] == [
        ("litert-lm", "npu", "model-npu-{soc}.litertlm"), ("litert-lm", "gpu", "model.litertlm"),
        ("litert-lm", "cpu", "model.litertlm")]
    assert [b["experimental"] for b in backends] == [True, True, False]
    assert [b["verification"] for b in backends] == ["not built", "not run", "executed"]
    assert all(b["chat_template"] == VERBATIM_TEMPLATE for b in backends)  # the template the engine ran with
    # the constraint the engine answered the eval set under (task.constrained), for the bridge to decode under
    assert all(b["response_format"] == labels_response_format(ROUTER_LABELS) for b in backends)
    assert "tokenizer" not in document and document["runner"]["max_context"] == document["model"]["max_context"]
    bridge = folder / "app/app/src/main/java/org/edgepack"
    assert (bridge / "LiteRtLmEngine.kt").is_file() and not (bridge / "ExecuTorchEngine.kt").exists()
    gradle = (folder / "app/app/build.gradle.kts").read_text(encoding="utf-8")
    assert LITERTLM_ANDROID_ARTIFACT in gradle and "executorch" not in gradle
    assert (folder / "app/app/src/main/assets/edgepack.json").read_bytes() == (folder / "edgepack.json").read_bytes()
    assert [c for c in document["scaffold_checks"] if c["status"] == "failed"] == []
    assert {"tree-sitter (kotlin)", "xml", "ktlint"} <= {c["tool"] for c in document["scaffold_checks"]}


@pytest.fixture(scope="module")
def probe_jar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bridge's pure-Kotlin files and the JVM probes (tests/android/jvm), compiled once for this module."""
    from test_android import PROBES, PURE, compile_kotlin, missing_android_tool

    from targets.android.kotlin_check import find_tools

    tools = find_tools()
    if tools.kotlinc is None or tools.java is None:
        missing_android_tool("kotlinc and java")
    jar = tmp_path_factory.mktemp("probes") / "bridge.jar"
    proc = compile_kotlin([*PURE, *sorted(PROBES.glob("*.kt"))], jar, tools=tools)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return jar


def test_the_kotlin_bridge_reads_the_built_bundle_and_falls_back_from_npu_to_gpu(router_build, probe_jar: Path) -> None:
    """The real edgepack.json of the build, read by the bridge on the JVM with scripted LiteRT-LM engines."""
    from test_android import run_jar

    _, folder = router_build
    out = run_jar(probe_jar, "org.edgepack.probe.EdgeModelProbeKt", str(folder), "litert_npu_fails_to_load")
    assert out["backend"] == out["ran_on"] == "litert-lm/gpu" and out["finish"] == "eos"
    assert [reason.split(":")[0] for reason in out["skipped"]] == ["litert-lm/npu"]


def test_both_runtimes_ship_one_app_that_tries_litert_lm_npu_gpu_cpu_then_the_pte(
        tiny_router: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--android-runtime all on the tiny router: the LiteRT-LM backends first, then the .pte, in one app; with one
    thread per computation (as when two targets share two cores) the bundle is built beside the .pte's work."""
    import threading

    import targets.android.target as android_target
    from packager.pipeline import BuildRequest, run_build
    from packager.progress import Reporter
    from packager.stages import BuildOptions
    from packager.threads import EDGEPACK_THREADS
    from targets.android.litert_export import LITERTLM_ANDROID_ARTIFACT

    monkeypatch.setenv(EDGEPACK_THREADS, "1")
    threads: list[str] = []
    export = android_target.cached_litertlm

    def recorded(*args: object, **kwargs: object) -> object:
        threads.append(threading.current_thread().name)
        return export(*args, **kwargs)

    monkeypatch.setattr(android_target, "cached_litertlm", recorded)

    model, eval_path = tiny_router
    out = tmp_path / "dist"
    # The same LiteRT-LM options as router_build (its export and verification come from the stage cache).
    options = BuildOptions(target_options={"android": {"runtime": "all", "recipe": "8da8w"}}, eval_path=eval_path,
                           task={"task": "labels", "labels": ROUTER_LABELS, "constrained": True})
    outcome = run_build(BuildRequest(checkpoint=model, targets=["android"], out=out, options=options),
                        Reporter(quiet=True))
    folder = out / "android"
    document = json.loads((folder / "edgepack.json").read_text(encoding="utf-8"))
    assert [(b["runtime"], b["backend"]) for b in document["backends"]] == [
        ("litert-lm", "npu"), ("litert-lm", "gpu"), ("litert-lm", "cpu"), ("executorch", "xnnpack")]
    assert [b["verification"] for b in document["backends"]] == ["not built", "not run", "executed", "executed"]
    assert document["tokenizer"] == "tokenizer.json" and document["model"]["format"] == "pte"
    assert document["litert_lm"]["file"] == "model.litertlm"
    names = {f["path"] for f in document["files"]}
    assert {"model.litertlm", "model-8da8w.pte", "model-8da8w.ptd", "tokenizer.json",
            "app/app/src/main/java/org/edgepack/LiteRtLmEngine.kt",
            "app/app/src/main/java/org/edgepack/ExecuTorchEngine.kt"} <= names
    assert not any("-npu-" in name for name in names)  # listed as a backend the app may find, never built here
    gradle = (folder / "app/app/build.gradle.kts").read_text(encoding="utf-8")
    assert LITERTLM_ANDROID_ARTIFACT in gradle and "org.pytorch:executorch-android" in gradle
    manifest = (folder / "app/app/src/main/AndroidManifest.xml").read_text(encoding="utf-8")
    assert 'android:name="libOpenCL.so"' in manifest
    assert [c for c in document["scaffold_checks"] if c["status"] == "failed"] == []
    assert [v.format for v in outcome.results[0].verifications] == ["pte", "litertlm"]
    assert threads == ["beside: LiteRT-LM bundle"]


@pytest.fixture(scope="module")
def litert_fleet(tiny_gemma: Path, tmp_path_factory: pytest.TempPathFactory):
    """Two random LoRA specialists of the tiny Gemma built for android with --android-runtime all (--no-gate)."""
    from packager.fleet import SpecialistSpec
    from packager.pipeline import BuildRequest, run_build
    from packager.progress import Reporter
    from packager.stages import BuildOptions
    from tests.tiny_models import make_adapter

    root = tmp_path_factory.mktemp("litert-fleet")
    specs = tuple(SpecialistSpec(name, make_adapter(tiny_gemma, root / name, seed=seed))
                  for seed, name in enumerate(("router", "extractor"), start=1))
    options = BuildOptions(no_gate=True, context_length=128, name="fleet",
                           target_options={"android": {"runtime": "all"}})
    outcome = run_build(BuildRequest(checkpoint=tiny_gemma, targets=["android"], out=root / "dist", specialists=specs,
                                     options=options), Reporter(quiet=True))
    return outcome, root / "dist" / "android", root


def test_a_fleet_with_both_runtimes_shares_the_pte_base_and_ships_each_specialist_merged_for_litert_lm(
        litert_fleet, tiny_gemma: Path) -> None:
    """Each specialist's .litertlm is its own merged model (closer to it than to the other specialist), run here
    and served to that specialist; the .pte programs still share one base."""
    from targets.android.litert_bundle import extract_program
    from targets.android.litert_verify import TflitePrefillDecode
    from tests.tiny_models import assert_each_answers_as_its_merged_model

    outcome, bundle, root = litert_fleet
    [result] = outcome.results
    base = "base-8da8w-adapter-f32down.ptd"
    names = ("router", "extractor")
    assert sorted(p.name for p in bundle.glob("*.litertlm")) == ["extractor.litertlm", "router.litertlm"]
    assert sorted(p.name for p in bundle.glob("*.pt[de]")) == sorted(
        [base, *(f"{n}-8da8w-adapter-f32down.pte" for n in names)])
    document = json.loads((bundle / "edgepack.json").read_text(encoding="utf-8"))
    for entry in document["specialists"]:
        name = entry["name"]
        assert [(b["runtime"], b["backend"], b.get("litertlm") or b["pte"]) for b in entry["backends"]] == [
            ("litert-lm", "npu", f"{name}-npu-{{soc}}.litertlm"), ("litert-lm", "gpu", f"{name}.litertlm"),
            ("litert-lm", "cpu", f"{name}.litertlm"), ("executorch", "xnnpack", f"{name}-8da8w-adapter-f32down.pte")]
        assert entry["litert_lm"]["file"] == f"{name}.litertlm"
    assert {a: n for a, n in result.specialists.items() if a.endswith(".litertlm")} == {
        f"android/{n}.litertlm": n for n in names}
    assert sorted(v.format for v in result.verifications) == ["litertlm", "litertlm", "pte", "pte"]
    assert all(v.level == "executed" for v in result.verifications)
    ids = list(range(2, 60))
    assert_each_answers_as_its_merged_model(
        {n: TflitePrefillDecode(extract_program(bundle / f"{n}.litertlm", root / f"{n}.tflite")).logits(ids)
         for n in names}, ids, root, tiny_gemma)
    readme = (bundle / "app/README.md").read_text(encoding="utf-8")
    [push] = [line for line in readme.splitlines() if line.startswith("adb push")]
    # Each file once; the NPU bundles are never built here, so never pushed.
    assert sorted(push.split()[2:-1]) == sorted(f"../{f}" for f in [
        base, "tokenizer.json", *(f"{n}.litertlm" for n in names), *(f"{n}-8da8w-adapter-f32down.pte" for n in names)])
    assert [c for c in result.scaffold_checks if c.status == "failed"] == []


def test_the_kotlin_fleet_tries_each_specialists_own_litert_lm_bundle_first(litert_fleet, probe_jar: Path) -> None:
    from test_android import run_jar

    _, bundle, _ = litert_fleet
    out = run_jar(probe_jar, "org.edgepack.probe.EdgeFleetProbeKt", str(bundle))
    opens = [e for e in out["log"] if e.startswith("open")]
    assert opens == ["open router-npu-{soc}.litertlm + null + tokenizer.json",
                     "open extractor-npu-{soc}.litertlm + null + tokenizer.json"]
    assert sorted(out["required"]) == sorted(["tokenizer.json", "base-8da8w-adapter-f32down.ptd", "router.litertlm",
                                              "extractor.litertlm", "router-8da8w-adapter-f32down.pte",
                                              "extractor-8da8w-adapter-f32down.pte"])


def _compile_npu_module():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "mobile/android/npu/compile_npu.py"
    spec = importlib.util.spec_from_file_location("compile_npu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bundle_ships_the_npu_compile_commands_which_stop_here_for_want_of_the_vendor_sdk(litert_fleet) -> None:
    """npu/ holds the script, the README's commands for every bundle and SoC, and a CI workflow. Run as written,
    the command reaches the vendor's compiler and fails (exit 1) naming the SDK package: no SDK installs here."""
    import subprocess
    import sys

    import yaml

    from targets.android.npu import NPU_SOCS

    outcome, bundle, _ = litert_fleet
    npu = bundle / "npu"
    assert sorted(p.name for p in npu.iterdir()) == ["README.md", "compile_npu.py", "litert-npu.yml"]
    checks = {(c.file, c.tool): c.status for c in outcome.results[0].scaffold_checks}
    assert checks[("npu/compile_npu.py", "py_compile")] == checks[("npu/litert-npu.yml", "yaml")] == "passed"
    readme = (npu / "README.md").read_text(encoding="utf-8")
    commands = [line for line in readme.splitlines() if line.startswith("python compile_npu.py")]
    socs = " ".join(f"--soc {s.model}" for s in NPU_SOCS)
    assert commands == [f"python compile_npu.py ../{n}.litertlm {socs}" for n in ("router", "extractor")]
    workflow = yaml.safe_load((npu / "litert-npu.yml").read_text(encoding="utf-8"))
    job = workflow["jobs"]["compile"]
    assert job["strategy"]["matrix"]["soc"] == [s.model for s in NPU_SOCS]
    assert "${{ matrix.soc }}" in job["steps"][3]["run"] and "../extractor.litertlm" in job["steps"][3]["run"]
    proc = subprocess.run([sys.executable, *commands[0].split()[1:3], "--soc", "SM8750"], cwd=npu,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "SM8750: not compiled" in proc.stderr and "pip install ai-edge-litert-sdk-qualcomm" in proc.stderr
    assert not list(bundle.glob("*-npu-*")), "a failed compile leaves nothing behind"
    proc = subprocess.run([sys.executable, "compile_npu.py", "../router.litertlm", "--soc", "GS201"], cwd=npu,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2 and "not a Qualcomm (SM....) or MediaTek (MT....)" in proc.stderr


def test_the_npu_compile_keeps_every_section_but_the_program_and_marks_it_for_the_npu(
        litert_fleet, tmp_path: Path) -> None:
    """The script's unpack/repack half with the vendor's compiler replaced by a stand-in that marks the program."""
    from targets.android.litert_bundle import extract_program, read_bundle

    _, bundle, _ = litert_fleet
    compile_npu = _compile_npu_module()
    marker = b"COMPILED-FOR-SM8750"
    written = compile_npu.compile_bundle(bundle / "router.litertlm", "SM8750", tmp_path,
                                         compiler=lambda program, soc: program + marker)
    assert written == tmp_path / "router-npu-sm8750.litertlm"
    before, after = read_bundle(bundle / "router.litertlm"), read_bundle(written)
    assert after.metadata == before.metadata and after.tokenizer == before.tokenizer == "HF_Tokenizer_Zlib"
    assert [s.data_type for s in after.sections] == [s.data_type for s in before.sections]
    assert before.program.backend_constraint is None and after.program.backend_constraint == "npu"
    original = extract_program(bundle / "router.litertlm", tmp_path / "a.tflite").read_bytes()
    assert extract_program(written, tmp_path / "b.tflite").read_bytes() == original + marker

    def failing(program: bytes, soc: str) -> bytes:
        raise compile_npu.CompileError("no SDK")

    with pytest.raises(compile_npu.CompileError):
        compile_npu.compile_bundle(bundle / "router.litertlm", "SM8650", tmp_path, compiler=failing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tflite", "b.tflite", "router-npu-sm8750.litertlm"]


def test_tiny_llama_fp32_bundle_gives_hf_logits_and_greedy_ids(tiny_llama: Path,
                                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from packager.verify.gates import LOSSLESS
    from packager.verify.metrics import FidelityAccumulator
    from packager.verify.reference import greedy_hf
    from targets.android.litert_bundle import extract_program, read_bundle
    from targets.android.litert_verify import TflitePrefillDecode

    out = tmp_path_factory.mktemp("llama-litert")
    result = export_in_child(tiny_llama, out, "none", 128)
    bundle = out / result["bundle"]
    assert read_bundle(bundle).tokenizer == "HF_Tokenizer_Zlib"
    assert result["metadata"]["model_type"] == "generic_model"
    program = TflitePrefillDecode(extract_program(bundle, out / "program.tflite"))
    assert program.cache_length == 128 and program.prefills
    ids = [506, *range(40, 110)]  # longer than the 32-token prefill: prefill runs in chunks for greedy
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32).eval()
    with torch.no_grad():
        hf = model(torch.tensor([ids])).logits[0].numpy()
    art = program.logits(ids)
    acc = FidelityAccumulator()
    acc.add(hf, art)
    assert LOSSLESS.check(acc.result()) == []
    assert np.abs(art - hf).max() < 1e-3 * np.abs(hf).max()
    assert program.greedy(ids, 12, [507]) == greedy_hf(model, ids, 12, [507])


def test_null_pre_tokenizer_still_ships_the_hf_tokenizer_the_engine_reads(tiny_gemma: Path, tmp_path: Path) -> None:
    """litert-torch turned such a tokenizer into SentencePiece silently, which the engine aborts on."""
    from transformers import AutoTokenizer

    from targets.android.litert_bundle import read_bundle
    from targets.android.litert_verify import run_engine

    model = shutil.copytree(tiny_gemma, tmp_path / "m")
    data = json.loads((model / "tokenizer.json").read_text(encoding="utf-8"))
    data["pre_tokenizer"] = None
    (model / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    result = export_in_child(model, tmp_path / "out", "dynamic_wi8_afp32", 64)
    bundle = tmp_path / "out" / result["bundle"]
    assert read_bundle(bundle).tokenizer == "HF_Tokenizer_Zlib"
    text = "The quick brown fox <start_of_turn>user\nhi"
    engine = run_engine(bundle, {"probe": text, "greedy_prompt": "The quick", "greedy_tokens": 4, "prompts": [],
                                 "max_new_tokens": 4, "constraint": None}, threads=1).data
    hf = AutoTokenizer.from_pretrained(str(model))
    assert engine["probe_ids"] == hf(text, add_special_tokens=False)["input_ids"]
    assert engine["bos_token_id"] == 2
    assert engine["greedy"]["prefill_tokens"] == 1 + len(hf("The quick", add_special_tokens=False)["input_ids"])


def test_a_bundle_that_crashes_the_engine_fails_its_child_not_the_build(tmp_path: Path) -> None:
    from targets.android.litert_verify import run_engine

    bundle = tmp_path / "model.litertlm"
    bundle.write_bytes(b"LITERTLM" + bytes(range(256)) * 64)
    with pytest.raises(EdgepackError, match="LiteRT-LM's engine"):
        run_engine(bundle, {"probe": "x", "greedy_prompt": "x", "greedy_tokens": 1, "prompts": [],
                            "max_new_tokens": 1, "constraint": None}, threads=1)


def test_a_tokenizer_that_cannot_go_into_a_bundle_is_named_with_the_fix(tmp_path: Path) -> None:
    from targets.android.litert_export import tokenizer_problem

    assert "save_pretrained" in (tokenizer_problem(tmp_path) or "")
    (tmp_path / "tokenizer.json").write_text("{", encoding="utf-8")
    assert "tokenizer.json: not valid JSON" in (tokenizer_problem(tmp_path) or "")
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE"}}', encoding="utf-8")
    assert tokenizer_problem(tmp_path) is None


def test_unknown_android_runtime_is_refused_with_the_choices(tiny_gemma: Path, tmp_path: Path) -> None:
    result = edgepack("build", tiny_gemma, "--target", "android", "--android-runtime", "tflite",
                      "--out", tmp_path / "out")
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "executorch" in result.stderr and "litert-lm" in result.stderr and "all" in result.stderr


def test_default_android_runtime_stays_executorch() -> None:
    from targets.android.target import AndroidTarget

    [option] = [o for o in AndroidTarget.options if o.name == "runtime"]
    assert option.default == "executorch" and option.flag == "--android-runtime"
    assert set(option.choices) == {"executorch", "litert-lm", "all"}


def test_litert_runtime_without_its_packages_stops_with_the_setup_command(
        tiny_gemma: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import targets.android.target as android

    absent = dataclasses.replace(android.LITERT_PACKAGES, modules={"edgepack_no_such_module": "litert-torch"})
    monkeypatch.setattr(android, "LITERT_PACKAGES", absent)
    out = tmp_path / "out"
    result = edgepack("build", tiny_gemma, "--target", "android", "--android-runtime", "litert-lm", "--out", out)
    assert result.exit_code == ExitCode.UNSUPPORTED, result.stderr
    assert "litert-torch" in result.stderr and "scripts/setup.sh" in result.stderr
    assert "--android-runtime executorch" in result.stderr and "Traceback" not in result.stderr
    assert leftovers(tmp_path, "out") == []


def test_the_contracts_eos_ids_join_the_checkpoints_in_the_export_view_and_the_checkpoint_is_untouched(
        tiny_gemma: Path, tmp_path: Path) -> None:
    """litert-torch takes the bundle's stop tokens from generation_config.json: the export reads a view of the
    checkpoint whose config names the contract's eos ids too (Gemma's <end_of_turn> beside <eos>)."""
    from targets.android.litert_export import with_stop_tokens

    config = tiny_gemma / "generation_config.json"
    before = config.read_bytes() if config.is_file() else None
    view = with_stop_tokens(tiny_gemma, (1, 106), tmp_path / "view")
    written = json.loads((view / "generation_config.json").read_text())
    own = json.loads(before or b"{}").get("eos_token_id")
    assert 106 in written["eos_token_id"] and 1 in written["eos_token_id"]
    assert set(written["eos_token_id"]) >= set([own] if isinstance(own, int) else own or [])
    assert (view / "model.safetensors").resolve() == (tiny_gemma / "model.safetensors").resolve()
    assert (config.read_bytes() if config.is_file() else None) == before


def test_the_label_constraint_admits_the_space_mark_the_engines_guidance_sees_in_gemma_tokens() -> None:
    """LL_GUIDANCE sees Gemma's space-prefixed tokens with SentencePiece's U+2581: without it in the pattern
    the engine was forced off the model's own tokens (the bundled example's fp32 bundle lost 14 points)."""
    import re

    from targets.android.litert_engine import label_pattern

    pattern = label_pattern(["delete_account", "reset.password"])
    assert all(re.fullmatch(pattern, text) for text in ("\u2581delete_account", " delete_account", "reset.password"))
    assert not any(re.fullmatch(pattern, text) for text in ("resetXpassword", "  delete_account", "other"))


def test_an_unconstrained_answer_settles_a_labels_row_only_when_it_is_a_whole_label_of_a_prefix_free_set() -> None:
    from targets.android.litert_engine import json_response_format, labels_response_format, settled_unconstrained

    labels = ["refund", "reset_password"]
    constraint = {"response_format": labels_response_format(labels), "prefix_free": True, "stop_strings": ["\n"]}
    assert settled_unconstrained(" refund\nMessage:", constraint)
    assert settled_unconstrained("reset_password", constraint)
    assert not settled_unconstrained(" refund please", constraint)  # more than a label: the constraint decides
    assert not settled_unconstrained(" refu", constraint)  # cut short: the constraint would go on
    assert not settled_unconstrained(" Refund\n", constraint)
    # "cancel" is a prefix of "cancel_order": after a free "cancel" the constrained decode might go on.
    prefixed = labels_response_format(["cancel", "cancel_order"])
    assert not settled_unconstrained(" cancel\n", {**constraint, "prefix_free": False, "response_format": prefixed})
    assert not settled_unconstrained(" refund\n", {"response_format": json_response_format({"type": "object"})})


class RecordingLiteRtLm:
    """The litert_lm module as EngineRunner.constrained uses it, recording the response format it is handed."""

    def __init__(self) -> None:
        import litert_lm

        self.real = litert_lm
        self.formats: list[object] = []
        recording = self

        class ResponseFormat:
            @staticmethod
            def regex(pattern: str) -> object:
                recording.formats.append(litert_lm.ResponseFormat.regex(pattern))
                return recording.formats[-1]

            @staticmethod
            def json(schema: str) -> object:
                recording.formats.append(litert_lm.ResponseFormat.json(schema))
                return recording.formats[-1]

        self.ResponseFormat = ResponseFormat
        self.SamplerConfig = litert_lm.SamplerConfig
        self.ConstrainedDecodingConfig = litert_lm.ConstrainedDecodingConfig
        self.LiteRtLmConstraintProviderType = litert_lm.LiteRtLmConstraintProviderType


class RecordingEngine:
    """An engine whose conversation answers "x" and records what create_conversation and send_message got."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def create_conversation(self, **kwargs: object) -> object:
        engine = self

        class Conversation:
            def send_message(self, prompt: str, response_format: object) -> object:
                engine.calls.append({**kwargs, "response_format": response_format})
                return type("M", (), {"contents": []})()

            def get_benchmark_info(self) -> object:
                return type("B", (), {"last_prefill_token_count": 1, "last_decode_token_count": 1,
                                      "last_decode_tokens_per_second": 1.0})()

            def close(self) -> None:
                pass

        return Conversation()


@pytest.mark.parametrize("task", ["labels", "json"])
def test_edgepack_json_carries_the_response_format_the_engine_verified_the_contract_with(task: str) -> None:
    """What the build's engine child hands LiteRT-LM for a constrained contract is, type and text, what every
    LiteRT-LM backend in edgepack.json carries for the Kotlin bridge; and it is what the engine was given before
    the format was carried as data (ResponseFormat.regex(label_pattern) / ResponseFormat.json(schema dict))."""
    from packager.contract import Contract
    from targets.android.litert_engine import EngineRunner, label_pattern
    from targets.android.litert_verify import engine_constraint
    from targets.android.target import litert_backends

    schema = {"type": "object", "required": ["intent"], "properties": {"intent": {"enum": ["refund", "réponse"]}}}
    contract = (Contract(task="labels", labels=["refund", 'say "hi"', "a.b"], constrained=True) if task == "labels"
                else Contract(task="json", json_schema=schema, constrained=True))
    runner = EngineRunner.__new__(EngineRunner)  # no engine: the recorder stands in for LiteRT-LM
    runner.lm, runner.engine = RecordingLiteRtLm(), RecordingEngine()
    runner.constrained("p", 8, engine_constraint(contract))  # what litert_verify sends the engine child
    [verified] = runner.lm.formats
    [call] = runner.engine.calls
    lm = runner.lm.real
    assert call["response_format"] is verified
    assert call["constrained_decoding_config"].provider == lm.LiteRtLmConstraintProviderType.LL_GUIDANCE
    shipped = [b["response_format"] for b in litert_backends("executed", contract)]
    kind = {"labels": "regex", "json": "json"}[task]
    assert shipped == [{"type": kind, "schema_or_pattern": verified.schema_or_pattern}] * 3
    before = (lm.ResponseFormat.regex(label_pattern(list(contract.labels))) if task == "labels"
              else lm.ResponseFormat.json(schema))
    assert (verified.type, verified.schema_or_pattern) == (before.type, before.schema_or_pattern)
    unconstrained = litert_backends("executed", Contract(task=task, labels=contract.labels,
                                                         json_schema=contract.json_schema))
    assert [b["response_format"] for b in unconstrained] == [None] * 3


def test_a_llama_family_classifier_passes_both_android_runtimes_gates(
        tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The Llama layout (llama3 rope scaling, grouped-query attention, a byte-level BPE that adds its BOS), fine-tuned
    into a tiny classifier on a plain prompt, built gated with --android-runtime all: the .pte and the .litertlm
    (exported by litert-torch as a generic model) are each executed and pass their fidelity and task gates."""
    from packager.pipeline import BuildRequest, run_build
    from packager.progress import Reporter
    from packager.stages import BuildOptions
    from tests.tiny_models import make_router

    root = tmp_path_factory.mktemp("llama-router")
    model, eval_path = make_router(tiny_llama, root, lambda ins, i: f"{ins}: {i}\nRoute:")
    options = BuildOptions(target_options={"android": {"runtime": "all"}}, eval_path=eval_path, context_length=128,
                           task={"task": "labels", "labels": ROUTER_LABELS, "constrained": True,
                                 "prompt_template": "{instruction}: {input}\nRoute:"})
    outcome = run_build(BuildRequest(checkpoint=model, targets=["android"], out=root / "dist", options=options),
                        Reporter(quiet=True))
    [result] = outcome.results
    verdicts = {v.format: (v.level, v.passed, v.task and (v.task.exact_match, v.task.baseline_exact_match))
                for v in result.verifications}
    assert verdicts.keys() == {"pte", "litertlm"}
    for level, passed, accuracy in verdicts.values():
        assert level == "executed" and passed and accuracy == (1.0, 1.0), verdicts
