"""Fleets: LoRA specialists of one base, the base shipped once where the runtime applies adapters.

(Named to run late in the suite: its llama-server test needs the binary that conftest.py starts
building in the background when the session begins.)"""

from __future__ import annotations

import json
import runpy
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import edgepack
from openai_server import free_port

from packager.contract import Contract, render_prompt
from packager.errors import ExitCode
from packager.fleet import Fleet, build_merged_per_specialist
from packager.progress import Reporter
from packager.project import BuildFlags, build_request
from packager.report import verification_table, verification_tables
from packager.target import TargetResult
from packager.verify.result import VerificationResult
from packager.verify.task_eval import TaskMetrics
from tests.tiny_models import make_adapter

SPECIALISTS = ("router", "extractor")
PROMPT = "the quick brown fox"


@pytest.fixture(scope="module")
def fleet(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """Two random LoRA specialists of a tiny Llama, built for the Pi: (work folder, CLI result)."""
    folder = tmp_path_factory.mktemp("fleet")
    for seed, name in enumerate(SPECIALISTS, start=1):
        make_adapter(tiny_llama, folder / name, seed=seed)
    result = edgepack("build", "--base", tiny_llama, *[f"--adapter={n}={folder / n}" for n in SPECIALISTS],
                      "--target", "raspberry-pi", "--quant", "F16", "--name", "Support Fleet",
                      "--out", folder / "out", "--json")
    assert result.exit_code == 0, result.stderr
    return folder, result


def test_the_pi_ships_the_base_once_and_an_adapter_per_specialist_each_verified(fleet: tuple[Path, Any]) -> None:
    folder, result = fleet
    pi = folder / "out" / "raspberry-pi"
    assert sorted(p.name for p in pi.glob("*.gguf")) == ["adapter-extractor.gguf", "adapter-router.gguf",
                                                         "model-F16.gguf"]
    rows = {r["artifact"]: r for r in result.json()["artifacts"] if r["target"] == "raspberry-pi"}
    assert set(rows) == {f"raspberry-pi/model-F16.gguf + adapter-{n}.gguf" for n in SPECIALISTS}
    assert all(r["level"] == "executed" and r["top1"] >= 0.99 for r in rows.values())
    document = json.loads((pi / "edgepack.json").read_text())
    assert [(s["name"], s["lora_adapter"], s["lora_id"]) for s in document["specialists"]] == [
        ("router", "adapter-router.gguf", 0), ("extractor", "adapter-extractor.gguf", 1)]
    assert set(document["gguf_choice"]["ladder"][0]["specialists"]) == set(SPECIALISTS)
    # The merged alternative at the same type is measured too, so the choice is visible.
    assert set(document["gguf_choice"]["merged_alternative"]) == set(SPECIALISTS)
    report = (folder / "out" / "report.md").read_text()
    assert all(f"{n}: base F16 + its adapter top-1 " in report for n in SPECIALISTS)
    assert "merged into the base at F16 instead: top-1 " in report
    manifest = json.loads((folder / "out" / "manifest.json").read_text())
    assert [s["name"] for s in manifest["specialists"]] == list(SPECIALISTS)
    assert manifest["specialists"][0]["adapter_sha256"] != manifest["specialists"][1]["adapter_sha256"]
    # The context is each specialist's (the base alone has no eval set to size it by)
    context = manifest["options"]["context_length_from"]
    assert context.startswith("per specialist: ") and all(f"{n} " in context for n in SPECIALISTS), context
    assert f"- context: {manifest['options']['context_length']} tokens (per specialist: " in report
    assert "Pick a specialist" in (pi / "README.md").read_text()


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return response.status == 200
    except OSError:  # refused, or 503 while the model loads
        return False


@contextmanager
def _served(binary: Path, bundle: Path, log: Path, switches: tuple[str, ...] = ()) -> Iterator[int]:
    """Run llama-server with the model and adapters the bundle's systemd unit names, in the unit's order (and
    `switches`, flags without a value)."""
    unit = next(bundle.glob("edgepack-*.service")).read_text()
    installed = f"/opt/edgepack/{unit.split('/opt/edgepack/')[1].split('/')[0]}/"
    files = [shlex.split(line.strip().rstrip("\\"))[1] for line in unit.splitlines()
             if line.strip().startswith(("--model ", "--lora "))]
    model, *adapters = [str(bundle / f.removeprefix(installed)) for f in files]
    port = free_port()
    argv = [str(binary), "--model", model, *[a for f in adapters for a in ("--lora", f)], "--host", "127.0.0.1",
            "--port", str(port), "--ctx-size", "256", "--threads", "2", "--parallel", "1", "--no-webui", *switches]
    with log.open("w") as out:
        server = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 120
            while not _healthy(port):
                assert server.poll() is None, log.read_text()[-2000:]
                assert time.time() < deadline, "llama-server did not become healthy within 120 s"
                time.sleep(0.3)
            yield port
        finally:
            server.terminate()
            server.wait(timeout=30)


def test_one_llama_server_answers_each_specialist_in_turn_as_its_merged_model(
        fleet: tuple[Path, Any], llama_server: Path, tmp_path: Path) -> None:
    """llama.cpp's llama-server (the Pi's runtime, built from the pinned llama.cpp) with the bundle's base and
    both adapters, asked by the bundle's client.py for one specialist after the other."""
    import llama_cpp

    from packager.checkpoint import load_checkpoint
    from packager.formats.gguf_writer import write_gguf

    folder, _ = fleet
    pi = folder / "out" / "raspberry-pi"

    def greedy(model: Path) -> str:
        llm = llama_cpp.Llama(model_path=str(model), n_ctx=256, verbose=False, seed=0)
        try:
            return llm.create_completion(PROMPT, max_tokens=8, temperature=0.0)["choices"][0]["text"].strip()
        finally:
            llm.close()

    expected = {}
    for name in SPECIALISTS:
        merged = load_checkpoint(folder / name, work_dir=tmp_path / f"work-{name}")
        expected[name] = greedy(write_gguf(merged, tmp_path / f"{name}.gguf", "F16"))
    assert expected["router"] != expected["extractor"]

    answers = []
    with _served(llama_server, pi, tmp_path / "server.log") as port:
        for name in (*SPECIALISTS, SPECIALISTS[0]):
            reply = subprocess.run([sys.executable, str(pi / "client.py"), "--port", str(port), "--max-tokens", "8",
                                    "--specialist", name, PROMPT], capture_output=True, text=True, timeout=120,
                                   check=False)
            assert reply.returncode == 0, reply.stderr
            answers.append((name, reply.stdout.strip()))
    # llama-server replaces a token's incomplete UTF-8 bytes with U+FFFD where llama-cpp-python drops them
    # (random tiny models emit byte tokens); the tokens themselves are the same.
    assert [(n, a.replace("\ufffd", "").strip()) for n, a in answers] == [(n, expected[n]) for n, _ in answers]


def test_the_pi_service_reuses_a_shared_prompt_prefix_on_a_sliding_window_model(
        tiny_gemma: Path, llama_server: Path, tmp_path: Path) -> None:
    """Tiny Gemma has sliding-window layers: llama-server then re-evaluates every prompt whole unless the unit's
    --swa-full keeps those layers cached over the context (packager/window_cache.py)."""
    out = tmp_path / "out"
    result = edgepack("build", tiny_gemma, "--target", "raspberry-pi", "--quant", "F32", "--out", out)
    assert result.exit_code == 0, result.stderr[-3000:]
    pi = out / "raspberry-pi"
    assert "--swa-full" in next(pi.glob("edgepack-*.service")).read_text()
    prompts = [f"Classify the message.\nMessage: {text}\nIntent:" for text in ("my card got declined", "hello")]

    def evaluated(switches: tuple[str, ...]) -> list[tuple[int, int]]:
        """(prompt tokens evaluated, prompt tokens) of each request, in order."""
        counts = []
        with _served(llama_server, pi, tmp_path / f"server{len(switches)}.log", switches) as port:
            for prompt in prompts:
                body = json.dumps({"prompt": prompt, "max_tokens": 2, "temperature": 0}).encode()
                request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                                 {"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=60) as response:
                    reply = json.loads(response.read())
                counts.append((reply["timings"]["prompt_n"], reply["usage"]["prompt_tokens"]))
        return counts

    full, window_only = evaluated(("--swa-full",)), evaluated(())
    assert full[1][0] < full[1][1], full  # the second request evaluates only what follows the shared prefix
    assert window_only[1][0] == window_only[1][1], window_only  # without it, the whole prompt again


def test_each_specialist_is_judged_on_its_own_eval_set(fleet: tuple[Path, Any], tiny_llama: Path,
                                                        tmp_path: Path) -> None:
    """A fleet from edgepack.toml: each specialist's eval set is answered by the base + its adapter in llama.cpp,
    against its own fp32 merged model's answers, under its own contract."""
    folder, _ = fleet
    sizes = {"router": 3, "extractor": 5}
    for name, rows in sizes.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(
            json.dumps({"instruction": f"{name} {i}", "input": f"input {i}", "output": "x"}) + "\n"
            for i in range(rows)))
    (tmp_path / "edgepack.toml").write_text(f"""
[build]
name = "fleet"
targets = ["raspberry-pi"]
quant = "F16"
[base]
checkpoint = "{tiny_llama}"
[contract]
task = "text"
max_new_tokens = 4
[specialists.router]
adapter = "{folder / 'router'}"
eval = "router.jsonl"
[specialists.extractor]
adapter = "{folder / 'extractor'}"
eval = "extractor.jsonl"
[specialists.extractor.contract]
max_new_tokens = 6
""")
    result = edgepack("build", "--config", tmp_path / "edgepack.toml", "--out", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.stderr
    rows = {r["artifact"].split("adapter-")[1]: r for r in result.json()["artifacts"]}
    for name, count in sizes.items():
        task = rows[f"{name}.gguf"]["task"]
        assert task["rows"] == count and task["agreement"] == 1.0  # the adapter on F16 answers as fp32 merged does
    document = json.loads((tmp_path / "out" / "raspberry-pi" / "edgepack.json").read_text())
    contracts = {s["name"]: s["contract"]["max_new_tokens"] for s in document["specialists"]}
    assert contracts == {"router": 4, "extractor": 6}


def test_the_pi_clients_specialists_render_their_own_contracts_prompt(fleet: tuple[Path, Any]) -> None:
    folder, _ = fleet
    pi = folder / "out" / "raspberry-pi"
    client = runpy.run_path(str(pi / "client.py"))
    for specialist in json.loads((pi / "edgepack.json").read_text())["specialists"]:
        contract = Contract.from_dict(specialist["contract"])
        expected = render_prompt(contract, "order #42 {input}", "Extract the order.")
        route, body = client["build_request"]("order #42 {input}", 8, 0.0, specialist["name"], "Extract the order.")
        assert (route, body["prompt"]) == ("/v1/completions", expected)
        assert body["lora"][specialist["lora_id"]] == {"id": specialist["lora_id"], "scale": 1.0}


def _flags(**kwargs: Any) -> BuildFlags:
    return BuildFlags(**kwargs)


def test_edgepack_toml_fleet_gives_each_specialist_its_adapter_eval_and_contract(tmp_path: Path) -> None:
    for name in ("base", "router", "extractor"):
        (tmp_path / name).mkdir()
    (tmp_path / "edgepack.toml").write_text("""
[build]
name = "fleet"
[base]
checkpoint = "base"
[contract]
max_new_tokens = 8
[specialists.router]
adapter = "router"
eval = "router.jsonl"
[specialists.router.contract]
task = "labels"
[specialists.extractor]
adapter = "extractor"
[specialists.extractor.contract]
task = "json"
max_new_tokens = 64
""")
    request = build_request(_flags(config=tmp_path / "edgepack.toml"), Reporter(quiet=True), cwd=tmp_path)
    assert request.checkpoint == tmp_path / "base"
    router, extractor = request.specialists
    assert (router.name, router.adapter, router.eval_path) == ("router", tmp_path / "router", tmp_path / "router.jsonl")
    assert router.task == {"max_new_tokens": 8, "task": "labels"} and router.task_gate.decides
    assert extractor.task == {"max_new_tokens": 64, "task": "json"} and extractor.eval_path is None
    # --adapter replaces the adapter of a specialist the file names and keeps its eval set and contract.
    request = build_request(_flags(config=tmp_path / "edgepack.toml", adapters=(("router", tmp_path / "base"),)),
                            Reporter(quiet=True), cwd=tmp_path)
    assert request.specialists[0].adapter == tmp_path / "base" and request.specialists[0].eval_path is not None


def test_a_fleet_for_a_device_profile_is_refused_as_unsupported(tmp_path: Path) -> None:
    result = edgepack("build", "--base", "b", "--adapter", "a=x", "--device", "raspberry-pi-5-8gb",
                      "--out", tmp_path / "o")
    assert result.exit_code == ExitCode.UNSUPPORTED and "--device: sizing a fleet" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--adapter", "a=x"], "a fleet needs its base model"),
    (["--base", "b", "--adapter", "bad name=x"], "must be letters, digits"),
    (["--base", "b", "--adapter", "a=x", "--adapter", "a=y"], "named twice"),
    (["--base", "b", "--adapter", "a=x", "--eval", "e.jsonl"], "each specialist has its own eval set"),
    (["ckpt", "--base", "b", "--adapter", "a=x"], "drop the CHECKPOINT argument"),
    (["--base", "b", "--adapter", "nodir"], "give it as NAME=DIR"),
    (["--base", "b", "--adapter", "a=x", "--specialist", "z"], "--specialist z: the command line has no specialist "
                                                                "of that name; its specialists are a."),
    (["ckpt", "--specialist", "a"], "--specialist a: the command line declares no fleet"),
])
def test_fleet_input_mistakes_exit_2_naming_the_fix(tmp_path: Path, args: list[str], message: str) -> None:
    result = edgepack("build", *args, "--out", tmp_path / "o")
    assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "o").exists()



def test_a_fleet_release_lists_its_specialists_and_their_adapter_hashes(fleet: tuple[Path, Any],
                                                                        tmp_path: Path) -> None:
    folder, _ = fleet
    result = edgepack("release", folder / "out", "--version", "1.0.0", "--out", tmp_path / "release", "--json")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((tmp_path / "release" / "manifest.json").read_text())
    build = json.loads((folder / "out" / "manifest.json").read_text())
    assert manifest["specialists"] == [{k: s[k] for k in ("name", "adapter_sha256", "merged_sha256")}
                                       for s in build["specialists"]]


def test_diff_shows_a_retrained_specialist_as_a_change_to_its_adapter_only(
        fleet: tuple[Path, Any], tiny_llama: Path, tmp_path: Path) -> None:
    folder, _ = fleet
    make_adapter(tiny_llama, tmp_path / "router", seed=7)  # the router, retrained
    build = edgepack("build", "--base", tiny_llama, f"--adapter=router={tmp_path / 'router'}",
                     f"--adapter=extractor={folder / 'extractor'}", "--target", "raspberry-pi", "--quant", "F16",
                     "--name", "Support Fleet", "--out", tmp_path / "out")
    assert build.exit_code == 0, build.stderr
    for version, out in (("1.0.0", folder / "out"), ("1.1.0", tmp_path / "out")):
        released = edgepack("release", out, "--version", version, "--out", tmp_path / version)
        assert released.exit_code == 0, released.stderr
    diff = edgepack("diff", tmp_path / "1.0.0", tmp_path / "1.1.0", "--json")
    data = diff.json()
    assert [(s["name"], s["status"]) for s in data["specialists"]] == [("router", "changed"),
                                                                         ("extractor", "unchanged")]
    pi = next(t for t in data["targets"] if t["target"] == "raspberry-pi")
    changed = pi["files"]["changed"]
    assert "adapter-router.gguf" in changed and "model-F16.gguf" not in changed
    assert "adapter-extractor.gguf" not in changed
    text = edgepack("diff", tmp_path / "1.0.0", tmp_path / "1.1.0").stdout
    assert "specialist router: changed (adapter " in text and "specialist extractor: unchanged" in text


# ---------------------------------------------------------------------------------------------
# One specialist per build (a CI job per specialist x target), merged by `edgepack release`


@pytest.fixture(scope="module")
def parts(fleet: tuple[Path, Any], tiny_llama: Path) -> dict[str, Any]:
    """The fleet's specialists built one per build (--specialist), for the Pi: the CLI result of each."""
    folder, _ = fleet
    adapters = [f"--adapter={n}={folder / n}" for n in SPECIALISTS]
    return {name: edgepack("build", "--base", tiny_llama, *adapters, "--specialist", name, "--target", "raspberry-pi",
                           "--quant", "F16", "--name", "Support Fleet", "--out", folder / "parts" / name)
            for name in SPECIALISTS}


def test_a_specialist_build_makes_only_that_specialist_and_names_its_whole_fleet(
        fleet: tuple[Path, Any], parts: dict[str, Any]) -> None:
    folder, _ = fleet
    whole = json.loads((folder / "out" / "manifest.json").read_text())
    for name, result in parts.items():
        assert result.exit_code == 0, result.stderr
        out = folder / "parts" / name
        assert sorted(p.name for p in (out / "raspberry-pi").glob("*.gguf")) == [f"adapter-{name}.gguf",
                                                                                  "model-F16.gguf"]
        manifest = json.loads((out / "manifest.json").read_text())
        assert [s["name"] for s in manifest["specialists"]] == [name]
        assert manifest["fleet"] == whole["fleet"] == [{"name": s["name"], "adapter_sha256": s["adapter_sha256"]}
                                                       for s in whole["specialists"]]
        document = json.loads((out / "raspberry-pi" / "edgepack.json").read_text())
        assert [s["name"] for s in document["specialists"]] == [name]
        # The terminal summary: this specialist's table, and nothing of the other one.
        other = next(n for n in SPECIALISTS if n != name)
        assert result.stdout.startswith(f"specialist {name}:\n| target | artifact |")
        assert f"adapter-{name}.gguf" in result.stdout and f"adapter-{other}.gguf" not in result.stdout


def test_per_specialist_builds_of_one_fleet_merge_into_one_release_listing_every_specialist(
        fleet: tuple[Path, Any], parts: dict[str, Any], tmp_path: Path) -> None:
    folder, _ = fleet
    builds = [folder / "parts" / name for name in reversed(SPECIALISTS)]  # the order given does not matter
    result = edgepack("release", *builds, "--version", "1.0.0", "--out", tmp_path / "release", "--json")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((tmp_path / "release" / "manifest.json").read_text())
    whole = json.loads((folder / "out" / "manifest.json").read_text())
    assert manifest["specialists"] == [{k: s[k] for k in ("name", "adapter_sha256", "merged_sha256")}
                                       for s in whole["specialists"]]
    assert [(t["name"], t["specialists"], t["archive"]["path"]) for t in manifest["targets"]] == [
        ("raspberry-pi", ["extractor"], "support-fleet-1.0.0-raspberry-pi-extractor.tar.gz"),
        ("raspberry-pi", ["router"], "support-fleet-1.0.0-raspberry-pi-router.tar.gz")]
    assert [(a["target"], a["specialists"]) for a in result.json()["archives"]] == [
        ("raspberry-pi", ["extractor"]), ("raspberry-pi", ["router"])]
    card = (tmp_path / "release" / "MODEL_CARD.md").read_text()
    assert "| raspberry\\-pi \\(router\\) |" in card and "| raspberry\\-pi \\(extractor\\) |" in card
    assert 'tags: ["edgepack", "raspberry-pi"]' in card


def test_a_release_refuses_a_specialist_twice_and_a_specialist_of_another_fleet(
        fleet: tuple[Path, Any], parts: dict[str, Any], tiny_llama: Path, tmp_path: Path) -> None:
    folder, _ = fleet
    twice = edgepack("release", folder / "out", folder / "parts" / "router", "--version", "1.0.0",
                     "--out", tmp_path / "twice")
    assert twice.exit_code == ExitCode.BAD_INPUT
    assert "target 'raspberry-pi' of specialist 'router' is also in" in twice.stderr
    make_adapter(tiny_llama, tmp_path / "router", seed=7)  # another fleet: its router was retrained
    other = edgepack("build", "--base", tiny_llama, f"--adapter=router={tmp_path / 'router'}",
                     f"--adapter=extractor={folder / 'extractor'}", "--specialist", "router", "--target",
                     "raspberry-pi", "--quant", "F16", "--name", "Support Fleet", "--out", tmp_path / "other")
    assert other.exit_code == 0, other.stderr
    mixed = edgepack("release", tmp_path / "other", folder / "parts" / "extractor", "--version", "1.0.0",
                     "--out", tmp_path / "mixed")
    assert mixed.exit_code == ExitCode.BAD_INPUT and "a release holds one fleet" in mixed.stderr
    assert not (tmp_path / "twice").exists() and not (tmp_path / "mixed").exists()


# ---------------------------------------------------------------------------------------------
# The terminal summary: one table per specialist


def _verified(artifact: str, accuracy: float) -> VerificationResult:
    task = TaskMetrics(rows=10, exact_match=accuracy, validity=1.0, agreement=1.0, baseline_exact_match=accuracy,
                       latency_ms_p50=10.0, latency_ms_p95=12.0, latency_ms_p99=13.0, tokens_per_s=50.0,
                       constrained=False, mismatches=[], latencies_ms=[10.0])
    return VerificationResult(artifact, "gguf", "F16", "executed", "llama.cpp", task=task)


class _MergedTarget:
    """A target without runtime adapters: each specialist's merged model built on its own."""

    name = "phone"

    def build(self, ctx: Any, out_dir: Path) -> TargetResult:
        return TargetResult("phone", verifications=[_verified("phone/model.pte", ctx.accuracy)])


def test_a_fleet_summary_prints_one_table_per_specialist_with_only_its_rows() -> None:
    class Spec:
        def __init__(self, name: str, accuracy: float) -> None:
            self.name, self.ctx = name, type("Ctx", (), {"accuracy": accuracy})()

    fleet = Fleet(base=None, specialists=[Spec("router", 0.875), Spec("extractor", 0.625)])  # type: ignore[arg-type]
    merged = build_merged_per_specialist(_MergedTarget(), fleet, Path("unused"), _MergedTarget().build)
    pi = TargetResult("raspberry-pi", verifications=[_verified("raspberry-pi/base.gguf + adapter-router.gguf", 0.75),
                                                      _verified("raspberry-pi/base.gguf + adapter-extractor.gguf",
                                                                0.5)],
                      specialists={"raspberry-pi/base.gguf + adapter-router.gguf": "router",
                                   "raspberry-pi/base.gguf + adapter-extractor.gguf": "extractor"})
    text = verification_tables([merged, pi])
    router, extractor = text.split("\n\n")
    assert router.startswith("specialist router:\n") and extractor.startswith("specialist extractor:\n")
    assert [line.split(" | ")[1] for line in router.splitlines()[3:]] == [
        "phone/router/model.pte", "raspberry-pi/base.gguf + adapter-router.gguf"]
    assert "0.875 (0.875)" in router and "0.750 (0.750)" in router and "0.625" not in router
    assert [line.split(" | ")[1] for line in extractor.splitlines()[3:]] == [
        "phone/extractor/model.pte", "raspberry-pi/base.gguf + adapter-extractor.gguf"]
    # Each table is the single-model table of that specialist's rows.
    assert router.split("\n", 1)[1] == verification_table([
        TargetResult("phone", verifications=[merged.verifications[0]]),
        TargetResult("raspberry-pi", verifications=[pi.verifications[0]])])


def test_a_single_model_summary_is_the_one_table_it_always_was() -> None:
    results = [TargetResult("raspberry-pi", verifications=[_verified("raspberry-pi/model-F16.gguf", 0.9)])]
    assert verification_tables(results) == verification_table(results)
    assert not verification_tables(results).startswith("specialist")
