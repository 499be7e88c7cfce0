"""The React Native target: one shared GGUF, a llama.rn compatibility check, the bridge and the app.

The TypeScript is checked with the real tools: `npm ci --ignore-scripts` (llama.rn's postinstall
downloads native binaries; type definitions and its jest mock need none), then `tsc --noEmit`
(strict) and jest with llama.rn's own mock. npm work happens in EDGEPACK_NPM_WORK (default
.cache/npm-work, outside mobile/ and templates/, which the wheel ships whole): node_modules is
reused while package-lock.json is unchanged, so only the first run installs.
"""

from __future__ import annotations

import fcntl
import filecmp
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gguf
import pytest
from cli_helpers import edgepack, leftovers
from external_tools import require_tool
from tiny_models import make_adapter

import targets.react_native.target as react_native
from packager.contract import Contract
from packager.errors import ExitCode, UnsupportedError
from packager.fleet import SpecialistSpec
from packager.pipeline import BuildRequest, run_build
from packager.progress import Reporter
from packager.stages import BuildOptions

REPO = Path(__file__).resolve().parent.parent
BRIDGE = REPO / "mobile" / "react-native"
APP_TEMPLATE = REPO / "templates" / "react-native"
VECTORS = REPO / "tests" / "vectors" / "contract.json"
SUPPORT_JSON = REPO / "targets" / "react_native" / "data" / "llama_rn_support.json"
NPM_WORK = Path(os.environ.get("EDGEPACK_NPM_WORK", REPO / ".cache" / "npm-work"))
HOSTILE_NAME = 'Bot "q" \'s\' `id` ${process.exit(1)} </script><!-- \\ \u2028 end\nsecond line'
HOSTILE_LABELS = ['say "hi"', "back`tick`", "${globalThis.x}", "</script><script>alert(1)</script>",
                  "two\nlines", "back\\slash", "plain"]
# A fleet's specialists, each with a contract of its own.
FLEET_LABELS = ["billing", "cancel_order"]
FLEET_SCHEMA = {"type": "object", "required": ["order"], "properties": {"order": {"type": "string"}}}
FLEET_TASKS = {"router": {"task": "labels", "labels": FLEET_LABELS, "constrained": True, "max_new_tokens": 4},
               "extractor": {"task": "json", "constrained": True, "max_new_tokens": 24}}


# ---------------------------------------------------------------------------------------------
# npm workspaces


def _run(cmd: list[str], cwd: Path, timeout: int, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "CI": "true", **(env or {})})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed in {cwd}:\n{output[-4000:]}"
    return output


@contextmanager
def npm_workspace(name: str, package: Path) -> Iterator[Path]:
    """Yield NPM_WORK/name holding package's files and `npm ci --ignore-scripts`'d node_modules."""
    npm = require_tool("npm")
    require_tool("node")
    work = NPM_WORK / name
    work.mkdir(parents=True, exist_ok=True)
    with (NPM_WORK / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test runs share the workspace
        for entry in work.iterdir():
            if entry.name != "node_modules":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        shutil.copytree(package, work, dirs_exist_ok=True, ignore=shutil.ignore_patterns("node_modules"))
        stamp = work / "node_modules" / ".edgepack-package-lock.sha256"
        lock_digest = hashlib.sha256((work / "package-lock.json").read_bytes()).hexdigest()
        if not stamp.is_file() or stamp.read_text() != lock_digest:
            env = {"npm_config_cache": os.environ["EDGEPACK_NPM_CACHE"]} if "EDGEPACK_NPM_CACHE" in os.environ else {}
            _run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--prefer-offline"], work, 900, env)
            stamp.write_text(lock_digest)
        yield work


def jest_results(work: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run jest in work and return its --json report (failing the test on any failed case)."""
    report = work / "jest-report.json"
    report.unlink(missing_ok=True)
    proc = subprocess.run(
        [str(work / "node_modules" / ".bin" / "jest"), "--ci", "--json", f"--outputFile={report}"],
        cwd=work, capture_output=True, text=True, timeout=600, check=False, env={**os.environ, **env},
    )
    assert report.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(report.read_text())
    failures = [f"{a['fullName']}: {' '.join(a['failureMessages'])[:1500]}"
                for suite in results["testResults"] for a in suite["assertionResults"] if a["status"] == "failed"]
    suite_errors = [s["message"][:1500] for s in results["testResults"] if s["status"] == "failed" and s["message"]]
    assert proc.returncode == 0 and not failures, "\n".join(failures + suite_errors) or proc.stderr[-3000:]
    return results


def jest_statuses(results: dict[str, Any]) -> dict[str, str]:
    return {a["title"]: a["status"] for suite in results["testResults"] for a in suite["assertionResults"]}


def tsc(work: Path) -> None:
    _run([str(work / "node_modules" / ".bin" / "tsc"), "--noEmit", "-p", "."], work, 300)


# ---------------------------------------------------------------------------------------------
# Builds


@pytest.fixture(scope="module")
def both_build(tiny_gemma: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """raspberry-pi and react-native in one build, on a cold stage cache."""
    tmp = tmp_path_factory.mktemp("rn-both")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEPACK_CACHE", str(tmp / "cache"))
        out = tmp / "out"
        result = edgepack("build", tiny_gemma, "--target", "raspberry-pi", "--target", "react-native",
                          "--quant", "Q8_0", "--out", out, "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    return out, json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def hostile_build(tiny_gemma: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build whose name and labels try to break out of every string they pass through."""
    out = tmp_path_factory.mktemp("rn-hostile") / "out"
    options = BuildOptions(quant="Q8_0", name=HOSTILE_NAME,
                           task={"task": "labels", "labels": HOSTILE_LABELS, "constrained": True})
    run_build(BuildRequest(checkpoint=tiny_gemma, targets=["react-native"], out=out, options=options),
              Reporter(quiet=True))
    return out / "react-native"


@pytest.fixture(scope="module")
def fleet_build(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """Two random LoRA specialists of the tiny Llama (a labels router, a JSON extractor) for react-native alone:
    (the react-native folder, the build's manifest)."""
    folder = tmp_path_factory.mktemp("rn-fleet")
    schema = folder / "order.schema.json"
    schema.write_text(json.dumps(FLEET_SCHEMA))
    tasks = {**FLEET_TASKS, "extractor": {**FLEET_TASKS["extractor"], "json_schema": str(schema)}}
    specialists = tuple(SpecialistSpec(name, make_adapter(tiny_llama, folder / name, seed=seed), task=task)
                        for seed, (name, task) in enumerate(tasks.items(), start=1))
    out = folder / "out"
    run_build(BuildRequest(checkpoint=tiny_llama, targets=["react-native"], out=out, specialists=specialists,
                           options=BuildOptions(quant="F16", name="Support Fleet")), Reporter(quiet=True))
    return out / "react-native", json.loads((out / "manifest.json").read_text())


def test_building_raspberry_pi_and_react_native_converts_once(both_build: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = both_build
    gguf_stages = [s for s in manifest["stages"] if s["name"] == "gguf Q8_0"]
    assert [s["cached"] for s in gguf_stages] == [False, True], gguf_stages
    assert "shared stage" in gguf_stages[1]["detail"]
    assert [s["name"] for s in manifest["stages"]].count("verify gguf Q8_0") == 1
    assert not any(s["name"].startswith("gguf F16") for s in manifest["stages"])
    rpi, rn = out / "raspberry-pi" / "model-Q8_0.gguf", out / "react-native" / "model-Q8_0.gguf"
    assert filecmp.cmp(rpi, rn, shallow=False)
    rows = {r["target"]: r for r in manifest["artifacts"]}
    assert rows["react-native"]["artifact"] == "react-native/model-Q8_0.gguf"
    assert rows["react-native"]["level"] == "executed" and rows["react-native"]["passed"] is True


def test_edgepack_json_describes_the_model_contract_and_checks(both_build: tuple[Path, dict[str, Any]]) -> None:
    bundle = both_build[0] / "react-native"
    data = json.loads((bundle / "edgepack.json").read_text())
    gguf_path = bundle / "model-Q8_0.gguf"
    assert data["target"] == "react-native" and data["runtime"] == "llama.rn 0.12.9"
    assert data["model"] == {
        "name": "tiny-gemma3", "file": "model-Q8_0.gguf", "format": "gguf", "quant": "Q8_0",
        # tiny Gemma's local layers cached over all 1,024 tokens cost a few KB (packager/window_cache.py)
        "context_length": 1024, "full_window_cache": True, "sha256": hashlib.sha256(gguf_path.read_bytes()).hexdigest(),
        "bytes": gguf_path.stat().st_size,
    }
    contract = Contract.from_dict(data["contract"])
    assert contract.add_bos is True and contract.eos_ids == [1, 6] and contract.stop_strings == ["<end_of_turn>"]
    assert data["llama_rn"] == {
        "version": "0.12.9", "llama_cpp": json.loads(SUPPORT_JSON.read_text())["llama.cpp"],
        "architecture": "gemma3", "tokenizer_model": "gpt2", "pre_tokenizer": "gemma4", "add_bos": True,
        "eog_ids": [1, 6],
    }
    [verification] = data["verification"]
    assert verification["level"] == "executed" and verification["passed"] is True
    checks = {(c["file"], c["tool"]): c["status"] for c in data["scaffold_checks"]}
    assert checks[("app/package.json", "json")] == "passed" and checks[("app/app.json", "json")] == "passed"
    assert checks[("app/", "tsc --noEmit + jest")] == "skipped"  # needs node_modules: run below, not at build time
    listed = {f["path"] for f in data["files"]}
    assert {"model-Q8_0.gguf", "app/App.tsx", "app/package-lock.json", "app/src/edgepack/EdgeModel.ts"} <= listed
    # The app loads the very same document as an asset.
    assert (bundle / "app" / "edgepack.json").read_bytes() == (bundle / "edgepack.json").read_bytes()


def test_the_app_carries_the_bridge_sources_unchanged(both_build: tuple[Path, dict[str, Any]]) -> None:
    copied = both_build[0] / "react-native" / "app" / "src" / "edgepack"
    sources = sorted(p.name for p in (BRIDGE / "src").glob("*.ts"))
    assert sorted(p.name for p in copied.iterdir()) == sources
    assert all(filecmp.cmp(BRIDGE / "src" / n, copied / n, shallow=False) for n in sources)


def test_generated_app_installs_type_checks_and_passes_its_tests(both_build: tuple[Path, dict[str, Any]]) -> None:
    bundle = both_build[0] / "react-native"
    with npm_workspace("app", bundle / "app") as work:
        tsc(work)
        results = jest_results(work, {"EDGEPACK_MODEL_PATH": str(bundle / "model-Q8_0.gguf")})
        statuses = jest_statuses(results)
        assert statuses["the GGUF next to the app matches edgepack.json"] == "passed"
        assert statuses["run loads the verified model, streams the answer and reports latency"] == "passed"


def test_hostile_name_and_labels_are_escaped_type_check_and_arrive_as_data(hostile_build: Path) -> None:
    build_info = (hostile_build / "app" / "src" / "buildInfo.ts").read_text()
    for raw in ("`id`", "${process", "</script>", "\u2028", "${globalThis", "back`tick`"):
        assert raw not in build_info, raw
    data = json.loads((hostile_build / "edgepack.json").read_text())
    assert data["model"]["name"] == HOSTILE_NAME and data["contract"]["labels"] == HOSTILE_LABELS
    assert data["contract"]["constrained"] is True
    readme = (hostile_build / "app" / "README.md").read_text()
    assert readme.splitlines()[0].startswith("# Bot") and "\nsecond line" not in readme
    with npm_workspace("app", hostile_build / "app") as work:
        tsc(work)
        statuses = jest_statuses(jest_results(work, {"EDGEPACK_MODEL_PATH": str(hostile_build / "model-Q8_0.gguf")}))
        # buildInfo.ts and edgepack.json agree on the name and every label, rendered verbatim by the app.
        assert statuses["the build info and edgepack.json describe the same model"] == "passed"
        assert statuses["run loads the verified model, streams the answer and reports latency"] == "passed"


def test_a_fleet_app_ships_the_base_once_and_an_adapter_per_specialist_each_verified(
        fleet_build: tuple[Path, dict[str, Any]]) -> None:
    bundle, manifest = fleet_build
    assert sorted(p.name for p in bundle.glob("*.gguf")) == ["adapter-extractor.gguf", "adapter-router.gguf",
                                                             "model-F16.gguf"]
    assert not (bundle / "router").exists() and not (bundle / "extractor").exists()  # nothing shipped merged
    rows = {r["artifact"]: r for r in manifest["artifacts"] if r["target"] == "react-native"}
    assert set(rows) == {f"react-native/model-F16.gguf + adapter-{n}.gguf" for n in FLEET_TASKS}
    assert all(r["level"] == "executed" and r["passed"] for r in rows.values())
    data = json.loads((bundle / "edgepack.json").read_text())
    assert [v["ships"] for v in data["verification"]] == [
        [f"react-native/{f}" for f in ("model-F16.gguf", f"adapter-{n}.gguf")] for n in FLEET_TASKS]
    assert data["model"]["file"] == "model-F16.gguf"
    specialists = data["specialists"]
    assert [(s["name"], s["lora_adapter"]) for s in specialists] == [(n, f"adapter-{n}.gguf") for n in FLEET_TASKS]
    for s in specialists:
        adapter = bundle / s["lora_adapter"]
        assert (s["sha256"], s["bytes"]) == (hashlib.sha256(adapter.read_bytes()).hexdigest(), adapter.stat().st_size)
    router, extractor = (Contract.from_dict(s["contract"]) for s in specialists)
    assert (router.task, router.labels, router.max_new_tokens) == ("labels", FLEET_LABELS, 4)
    assert (extractor.task, extractor.json_schema, extractor.max_new_tokens) == ("json", FLEET_SCHEMA, 24)
    assert (bundle / "app" / "edgepack.json").read_bytes() == (bundle / "edgepack.json").read_bytes()
    assert 'export const SPECIALISTS: readonly string[] = [\n  "router",\n  "extractor",\n];' in (
        bundle / "app" / "src" / "buildInfo.ts").read_text()
    readme = (bundle / "app" / "README.md").read_text()
    assert "## Pick a specialist" in readme and "`../adapter-extractor.gguf`" in readme


def test_generated_fleet_app_type_checks_and_its_picker_switches_adapters(
        fleet_build: tuple[Path, dict[str, Any]]) -> None:
    bundle, _ = fleet_build
    with npm_workspace("app", bundle / "app") as work:
        tsc(work)
        statuses = jest_statuses(jest_results(work, {"EDGEPACK_MODEL_PATH": str(bundle / "model-F16.gguf")}))
    for title in ("every adapter next to the app matches edgepack.json",
                  "run loads the verified model, streams the answer and reports latency",
                  "the picker switches specialists: one base, each run with its adapter and contract"):
        assert statuses[title] == "passed", title


def test_bridge_type_checks_strictly_and_its_jest_tests_pass() -> None:
    vectors = json.loads(VECTORS.read_text(encoding="utf-8"))
    with npm_workspace("bridge", BRIDGE) as work:
        tsc(work)
        results = jest_results(work, {"EDGEPACK_CONTRACT_VECTORS": str(VECTORS)})
        statuses = jest_statuses(results)
        vector_cases = [a for suite in results["testResults"] if suite["name"].endswith("contractVectors.test.ts")
                        for a in suite["assertionResults"] if a["title"].startswith(("render ", "parse ", "grammar "))]
        assert len(vector_cases) == len(vectors["render"]) + len(vectors["parse"]) + len(vectors["grammar"])
        assert all(a["status"] == "passed" for a in vector_cases)
        for title in ("an interrupted download resumes with a Range request and appends",
                      "a hash mismatch deletes the file and says so",
                      "cancel() stops the native completion and run() reports the cancellation",
                      "run() sends the contract prompt, stops, token limit, greedy sampling and the labels grammar",
                      "a constrained JSON contract sends llama.rn json_schema as a string; parsing follows the "
                      "contract",
                      "use(router) then use(extractor) removes the applied adapter, then applies the extractor's",
                      "run() answers under the applied specialist's own contract",
                      "an unknown specialist is refused with unknown_specialist, naming the known ones"):
            assert statuses[title] == "passed", title


def test_support_table_is_generated_from_the_pinned_llama_rn() -> None:
    with npm_workspace("bridge", BRIDGE) as work:
        llama_rn = work / "node_modules" / "llama.rn"
        script = REPO / "scripts" / "llama_rn_support.py"
        result = subprocess.run([sys.executable, str(script), str(llama_rn), "--check", "--output", str(SUPPORT_JSON)],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
    table = json.loads(SUPPORT_JSON.read_text())
    assert table["llama.rn"] == react_native.LLAMA_RN_VERSION == react_native.ReactNativeTarget.runtime.split()[-1]
    assert {"gemma3", "llama"} <= set(table["architectures"]) and "gemma4" in table["pre_tokenizers"]


def test_every_package_pins_the_same_exact_versions() -> None:
    bridge = json.loads((BRIDGE / "package.json").read_text())
    app = json.loads((APP_TEMPLATE / "package.json").read_text())
    pins = {**app["dependencies"], **app["devDependencies"]}
    for name, version in {**bridge["devDependencies"], **bridge["peerDependencies"]}.items():
        assert pins[name] == version, name
    for package in (bridge, app):
        for version in [*package.get("dependencies", {}).values(), *package["devDependencies"].values()]:
            assert version[0].isdigit(), f"{version}: pin exact versions (npm's latest react-native is a placeholder)"
    assert pins["llama.rn"] == react_native.LLAMA_RN_VERSION and pins["react-native"] == "0.81.6"
    for folder in (BRIDGE, APP_TEMPLATE):
        lock = json.loads((folder / "package-lock.json").read_text())
        assert lock["packages"]["node_modules/llama.rn"]["version"] == react_native.LLAMA_RN_VERSION
        declared = {**lock["packages"][""].get("dependencies", {}), **lock["packages"][""]["devDependencies"]}
        assert declared == {**json.loads((folder / "package.json").read_text()).get("dependencies", {}),
                            **json.loads((folder / "package.json").read_text())["devDependencies"]}


def test_no_node_modules_inside_shipped_folders() -> None:
    # hatch's force-include copies mobile/ and templates/ into the wheel whole, .gitignore or not.
    assert not (BRIDGE / "node_modules").exists() and not (APP_TEMPLATE / "node_modules").exists()


# ---------------------------------------------------------------------------------------------
# Compatibility with llama.rn's llama.cpp


def write_gguf(path: Path, **overrides: Any) -> Path:
    """A minimal GGUF holding only the metadata the compatibility check reads."""
    meta: dict[str, Any] = {"arch": "llama", "model": "gpt2", "pre": "llama-bpe", "add_bos": True, "eos": 2,
                            "tokens": ["<unk>", "<s>", "</s>", "<|eot_id|>", "<|unrelated|>"], **overrides}
    writer = gguf.GGUFWriter(str(path), meta["arch"])
    writer.add_tokenizer_model(meta["model"])
    if meta["pre"] is not None:
        writer.add_tokenizer_pre(meta["pre"])
    writer.add_token_list(meta["tokens"])
    writer.add_token_merges(["a b"])
    if meta["add_bos"] is not None:
        writer.add_add_bos_token(meta["add_bos"])
    writer.add_eos_token_id(meta["eos"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_metadata_reader_agrees_with_gguf_reader(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf")
    meta = react_native.read_gguf_metadata(path, {2, 3})
    reader = gguf.GGUFReader(path)
    for key in ("general.architecture", "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.add_bos_token",
                "tokenizer.ggml.eos_token_id"):
        assert meta.values[key] == reader.fields[key].contents(), key
    assert meta.token_texts == {2: "</s>", 3: "<|eot_id|>"}


@pytest.mark.parametrize(("overrides", "contract", "message"), [
    ({"arch": "no-such-arch"}, {}, "architecture 'no-such-arch' (general.architecture) is not known to llama.rn"),
    ({"pre": "no-such-pre"}, {}, "pre-tokenizer 'no-such-pre' (tokenizer.ggml.pre) is not known to llama.rn 0.12.9"),
    ({"pre": None}, {}, "no pre-tokenizer (tokenizer.ggml.pre)"),
    ({"model": "sentencepiece-x"}, {}, "tokenizer model 'sentencepiece-x'"),
    ({"add_bos": False}, {"add_bos": True}, "would not add BOS before every prompt (tokenizer.ggml.add_bos_token="),
    ({"add_bos": None, "pre": "smollm"}, {"add_bos": True}, "would not add BOS before every prompt (its default"),
    ({"add_bos": False, "pre": "gemma4"}, {"add_bos": False}, "would add BOS before every prompt"),
    ({}, {"eos_ids": [2, 4]}, "4 ('<|unrelated|>') of the contract would not stop generation"),
], ids=["arch", "pre", "no-pre", "tokenizer-model", "bos-declared", "bos-default", "bos-forced-gemma4", "eos"])
def test_gguf_llama_rn_cannot_run_faithfully_is_refused(tmp_path: Path, overrides: dict[str, Any],
                                                        contract: dict[str, Any], message: str) -> None:
    path = write_gguf(tmp_path / "m.gguf", **overrides)
    terms = Contract(**{"add_bos": True, "eos_ids": [2, 3], **contract})
    with pytest.raises(UnsupportedError) as error:
        react_native.check_llama_rn_support(path, "react-native/m.gguf", terms, react_native.support_table())
    assert message in error.value.message
    assert error.value.message.startswith("react-native/m.gguf: ")


@pytest.mark.parametrize(("overrides", "add_bos"), [
    ({"add_bos": None, "pre": "smollm"}, False),  # SmolLM2: no flag, and llama.cpp adds no BOS for smollm
    ({"add_bos": None, "pre": "llama-bpe"}, True),  # Llama 3: no flag, but llama.cpp's default for llama-bpe
    ({"add_bos": True, "pre": "smollm"}, True),  # the flag wins over the default
], ids=["smollm-default", "llama3-default", "declared"])
def test_bos_is_decided_as_llama_rn_decides_it(tmp_path: Path, overrides: dict[str, Any], add_bos: bool) -> None:
    path = write_gguf(tmp_path / "m.gguf", **overrides)
    facts = react_native.check_llama_rn_support(path, "m.gguf", Contract(add_bos=add_bos, eos_ids=[2]),
                                                react_native.support_table())
    assert facts.add_bos is add_bos


def test_gguf_llama_rn_can_run_passes_with_its_facts(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf")
    facts = react_native.check_llama_rn_support(path, "m.gguf", Contract(eos_ids=[2, 3]), react_native.support_table())
    assert facts.as_dict() == {"architecture": "llama", "tokenizer_model": "gpt2", "pre_tokenizer": "llama-bpe",
                               "add_bos": True, "eog_ids": [2, 3]}


def write_adapter_gguf(path: Path, **overrides: Any) -> Path:
    """A minimal GGUF LoRA adapter holding only the metadata llama.rn's loader checks."""
    meta: dict[str, Any] = {"arch": "llama", "type": "adapter", "adapter_type": "lora", **overrides}
    writer = gguf.GGUFWriter(str(path), meta["arch"])
    writer.add_type(meta["type"])
    if meta["adapter_type"] is not None:
        writer.add_string(gguf.Keys.Adapter.TYPE, meta["adapter_type"])
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 8.0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(("overrides", "message"), [
    ({"arch": "gemma3"}, "general.architecture='gemma3' (needs 'llama')"),
    ({"type": "model"}, "general.type='model' (needs 'adapter')"),
    ({"adapter_type": None}, "adapter.type=None (needs 'lora')"),
], ids=["arch", "not-an-adapter", "not-lora"])
def test_adapter_llama_rn_would_not_apply_is_refused(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    path = write_adapter_gguf(tmp_path / "adapter-x.gguf", **overrides)
    with pytest.raises(UnsupportedError) as error:
        react_native.check_llama_rn_adapter(path, "react-native/adapter-x.gguf", "llama", react_native.support_table())
    assert error.value.message.startswith("react-native/adapter-x.gguf: llama.rn 0.12.9 (llama.cpp ")
    assert message in error.value.message


def test_adapter_llama_rn_can_apply_passes(tmp_path: Path) -> None:
    path = write_adapter_gguf(tmp_path / "adapter-x.gguf")
    react_native.check_llama_rn_adapter(path, "adapter-x.gguf", "llama", react_native.support_table())


def test_build_with_a_pre_tokenizer_llama_rn_does_not_know_fails_clearly_and_writes_nothing(
        tiny_gemma: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = react_native.support_table()
    older = {**table, "pre_tokenizers": [p for p in table["pre_tokenizers"] if p != "gemma4"]}
    monkeypatch.setattr(react_native, "support_table", lambda: older)
    result = edgepack("build", tiny_gemma, "--target", "react-native", "--quant", "Q8_0", "--out", tmp_path / "out")
    assert result.exit_code == ExitCode.UNSUPPORTED
    assert "react-native/model-Q8_0.gguf: pre-tokenizer 'gemma4' (tokenizer.ggml.pre) is not known to llama.rn" \
        in result.stderr
    assert "Use a newer llama.rn" in result.stderr
    assert leftovers(tmp_path, "out") == []


def test_targets_command_lists_react_native() -> None:
    listed = {t["name"]: t for t in edgepack("targets", "--json").json()}
    assert listed["react-native"]["runtime"] == "llama.rn 0.12.9" and listed["react-native"]["status"] == "ready"
