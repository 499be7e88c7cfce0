"""Benchmark the web bundle: size, load time (cold and cached) and decode speed in headless Chromium
against native llama.cpp on the same GGUF and host.

    .venv/bin/python benchmarks/web_bundle.py --model ~/.cache/edgepack/examples/gemma3-270m --quants Q8_0,Q4_K_M

One edgepack build (`--target web`, which already runs the page in Chromium and compares greedy
tokens with native llama.cpp), then the built page is opened again in a fresh browser profile:
one cold load and `--cached-loads` loads served from the Cache API, and a `--tokens`-token greedy
run (ignore_eos) whose decode speed comes from llama-server's own timings inside wllama. Native
llama.cpp (llama-cpp-python) decodes the same prompt with the same thread count the page used, and
with all host threads. Results replace the section between the web markers in --out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

try:
    from packager.pipeline import BuildRequest, run_build
except ImportError:  # run as a script from a checkout whose root is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from packager.pipeline import BuildRequest, run_build

from packager import __version__
from packager.contract import render_prompt
from packager.progress import Reporter
from packager.stages import BuildOptions
from packager.threads import compute_threads
from packager.verify.golden import load_golden
from packager.verify.llama_cpp_runner import GGUFRunner
from targets.web.verify_browser import BrowserTools, Generation, drive_bundle, find_browser_tools

REPO = Path(__file__).resolve().parents[1]
START_MARKER = "<!-- web:start -->"
END_MARKER = "<!-- web:end -->"


def bundle_size(folder: Path) -> dict[str, float]:
    """Bytes of the bundle by part (model, runtimes, everything else), in MB."""
    sizes = {"model": 0, "runtime": 0, "page and bridge": 0}
    for path in folder.rglob("*"):
        if path.is_file():
            rel = path.relative_to(folder).as_posix()
            key = "model" if rel.startswith(("model/", "webllm/")) else "runtime" if rel.startswith("vendor/") \
                else "page and bridge"
            sizes[key] += path.stat().st_size
    return {k: v / 2**20 for k, v in sizes.items()} | {"total": sum(sizes.values()) / 2**20}


def native_speed(gguf: Path, prompt: str, add_bos: bool, tokens: int, threads: int, runs: int) -> float:
    runner = GGUFRunner(gguf, n_ctx=1024, n_threads=threads)
    try:
        ids = runner.tokenize(prompt, add_bos=add_bos)
        return statistics.median(runner.greedy(ids, tokens, [])[1] for _ in range(runs))
    finally:
        runner.close()


def measure(tools: BrowserTools, bundle: Path, greedy_input: str, tokens: int, cached_loads: int,
            threads: int | None = None) -> dict[str, Any]:
    speed = {"maxTokens": tokens, "temperature": 0, "topK": 1, "ignoreEos": True}
    query = "?gpu=off" + (f"&threads={threads}" if threads else "")
    result = drive_bundle(tools, bundle, [Generation(greedy_input, speed), Generation(greedy_input, speed)],
                          loads=1 + cached_loads, query=query, timeout_s=900)
    if result.get("error") or not result.get("runs"):
        raise SystemExit(f"browser run failed: {result.get('error')}")
    runs = result["runs"]
    gens = runs[0]["generations"]
    return {
        "browser": result.get("browserVersion"),
        "problems": result["problems"],
        "info": runs[0]["info"],
        "cold_load_s": runs[0]["info"]["loadMs"] / 1000,
        "cold_page_s": runs[0]["pageLoadMs"] / 1000,
        "cached_load_s": statistics.median(r["info"]["loadMs"] for r in runs[1:]) / 1000 if cached_loads else None,
        "cached_page_s": statistics.median(r["pageLoadMs"] for r in runs[1:]) / 1000 if cached_loads else None,
        "cached": all(r["info"]["fromCache"] for r in runs[1:]),
        # The second generation: the first warms the runtime's allocations.
        "decode_tps": gens[-1]["decodeTokensPerS"],
        "prefill_tps": gens[-1]["prefillTokensPerS"],
        "decode_wall_tps": gens[-1]["completionTokens"] / (gens[-1]["wallMs"] / 1000),
        "prompt_tokens": gens[-1]["promptTokens"],
    }


def measure_quant(tools: BrowserTools, model: Path, quant: str, tokens: int, cached_loads: int) -> dict[str, Any]:
    """Build the web bundle for one GGUF type and measure it in Chromium and natively, in one window."""
    import llama_cpp

    from packager.contract import Contract

    with tempfile.TemporaryDirectory(prefix="edgepack-web-bench-") as tmp:
        out = Path(tmp) / "dist"
        outcome = run_build(BuildRequest(checkpoint=model, targets=["web"], out=out,
                                         options=BuildOptions(quant=quant, no_gate=True)), Reporter())
        bundle = out / "web"
        manifest = json.loads((bundle / "edgepack.json").read_text(encoding="utf-8"))
        [result] = outcome.results
        golden = load_golden()
        gguf = bundle / manifest["runtimes"]["wllama"]["model_files"][0]
        browser = measure(tools, bundle, golden.greedy_prompt, tokens, cached_loads)
        all_threads = measure(tools, bundle, golden.greedy_prompt, tokens, 0, threads=compute_threads())
        contract = Contract.from_dict(manifest["contract"])
        prompt = render_prompt(contract, golden.greedy_prompt)
        threads = int(browser["info"]["threads"])
        return {
            "quant": quant,
            "llama_cpp": llama_cpp.__version__,
            "size_mb": bundle_size(bundle),
            "model_files": manifest["runtimes"]["wllama"]["model_files"],
            "browser": browser,
            "browser_all_threads": all_threads,
            "native_same_threads": native_speed(gguf, prompt, contract.add_bos, tokens, threads, 3),
            "native_one_thread": native_speed(gguf, prompt, contract.add_bos, tokens, 1, 3),
            "native_host_threads": native_speed(gguf, prompt, contract.add_bos, tokens, compute_threads(), 3),
            "verification": [v.as_dict() for v in result.verifications],
            "build_passed": outcome.passed,
        }


def _fidelity_lines(q: dict[str, Any]) -> list[str]:
    web_row = next(r for r in q["verification"] if r["format"] == "web-wllama")
    gguf_row = next(r for r in q["verification"] if r["format"] == "gguf")
    m = q["browser"]
    return [
        f"- {gguf_row['artifact']}: `{gguf_row['level']}` in {gguf_row['runtime']}: top-1 "
        f"{gguf_row['metrics']['top1']:.3f}, KL {gguf_row['metrics']['kl']:.4f} vs the fp32 transformers model.",
        f"- {web_row['artifact']} ({q['quant']}): `{web_row['level']}`, {web_row['runtime']}: greedy tokens equal "
        f"native llama.cpp: {web_row['greedy_match']}{'; ' + '; '.join(web_row['notes']) if web_row['notes'] else ''}"
        f"{'; gate FAILED: ' + '; '.join(web_row['failures']) if web_row['failures'] else ''}.",
        f"- {q['quant']}: page problems during the benchmark (page errors, console errors, failed or outside "
        f"requests): {sum(len(v) for v in m['problems'].values())}. Second load served from the Cache API: "
        f"{m['cached']}.",
    ]


def render_section(data: dict[str, Any]) -> str:
    quants = data["quants"]
    first = quants[0]["browser"]
    info = first["info"]
    host = data["host_threads"]

    def row(label: str, cell: Any) -> str:
        return f"| {label} | " + " | ".join(cell(q) for q in quants) + " |"

    lines = [
        START_MARKER,
        "## Web bundle: wllama in headless Chromium vs native llama.cpp",
        "",
        f"Measured {data['when']} with `benchmarks/web_bundle.py --quants {','.join(q['quant'] for q in quants)} "
        f"--tokens {data['tokens']}` on `{data['model']}`. Per GGUF type: one `edgepack build --target web` (its own "
        "verification: the page in Chromium, greedy tokens compared with native llama.cpp), then the built page "
        f"opened in a fresh Chromium profile: one cold load and {data['cached_loads']} loads from the browser cache "
        f"(median), and a {data['tokens']}-token greedy decode (ignore_eos; the second of two runs) whose speed is "
        "llama-server's own timing inside wllama; once with the bridge's thread choice and once with "
        f"`?threads={host}`. Native llama.cpp decodes the same prompt in llama-cpp-python on the same host "
        "(median of 3), right after the page.",
        "",
        f"Machine: {data['machine']}. Versions: edgepack {__version__}, wllama {info['runtimeVersion']} "
        f"(llama.cpp {info['llamaCppVersion']}), Chromium {first['browser']}, llama-cpp-python "
        f"{quants[0]['llama_cpp']} (native). Page: {info['backend']}, {info['threads']} thread(s) by the bridge's "
        f"choice, cross-origin isolated: {info['crossOriginIsolated']}, hardwareConcurrency "
        f"{info['hardwareConcurrency']}.",
        "",
        "| what | " + " | ".join(q["quant"] for q in quants) + " |",
        "| --- | " + " | ".join("---:" for _ in quants) + " |",
        row("bundle size (total)", lambda q: f"{q['size_mb']['total']:.1f} MB"),
        row("model GGUF", lambda q: f"{q['size_mb']['model']:.1f} MB ({len(q['model_files'])} file(s))"),
        row("runtime (wllama JS + WASM)", lambda q: f"{q['size_mb']['runtime']:.1f} MB"),
        row("load, cold (download + sha256 + wllama init)", lambda q: f"{q['browser']['cold_load_s']:.2f} s"),
        row("load, from the browser cache", lambda q: f"{q['browser']['cached_load_s']:.2f} s"),
        row("page load to ready, cold / cached",
            lambda q: f"{q['browser']['cold_page_s']:.2f} s / {q['browser']['cached_page_s']:.2f} s"),
        row(f"decode in Chromium, {info['threads']} thread(s) (bridge's choice)",
            lambda q: f"{q['browser']['decode_tps']:.1f} tok/s"),
        row(f"decode in Chromium, {host} threads", lambda q: f"{q['browser_all_threads']['decode_tps']:.1f} tok/s"),
        row(f"prefill in Chromium ({first['prompt_tokens']} prompt tokens)",
            lambda q: f"{q['browser']['prefill_tps']:.1f} tok/s"),
        row("native llama.cpp decode, 1 thread", lambda q: f"{q['native_one_thread']:.1f} tok/s"),
        row(f"native llama.cpp decode, {host} threads", lambda q: f"{q['native_host_threads']:.1f} tok/s"),
        row("**Chromium (bridge's choice) / native 1 thread**",
            lambda q: f"**{q['browser']['decode_tps'] / q['native_one_thread']:.2f}x**"),
        row(f"**Chromium {host} threads / native 1 thread**",
            lambda q: f"**{q['browser_all_threads']['decode_tps'] / q['native_one_thread']:.2f}x**"),
        "",
        "Fidelity (from the builds):",
        "",
    ]
    for q in quants:
        lines += _fidelity_lines(q)
    best = max(q["browser_all_threads"]["decode_tps"] / q["native_one_thread"] for q in quants)
    goal = "reached" if best >= 0.5 else "not reached"
    lines += [
        "",
        f"Reading the speed rows: wllama {info['runtimeVersion']} compiles llama.cpp to WebAssembly with 128-bit "
        "SIMD (`-msimd128`, its CMakeLists.txt), while the native build here uses x86's 256-bit AVX2/FMA kernels; "
        "a large output head (262,144 rows for Gemma 3) dominates each decode step, so the step is bound by "
        f"those dot products. The goal of 0.5x native single-thread decode is {goal} on this host (best ratio "
        f"above: {best:.2f}x). Q8_0 is the web target's default because it is both the faster and the "
        "native-faithful choice in the browser: K-quant kernels differ between the WASM and x86 builds enough to "
        "move greedy tokens at non-tied positions, which the fp32 tie-break then has to settle.",
        "",
        "These are numbers from a 2-core x86-64 build host without a GPU, in headless Chromium; a phone or a "
        "user's browser will differ. WebGPU was not used (headless Chromium here has no usable adapter).",
        END_MARKER,
    ]
    return "\n".join(lines) + "\n"


def write_section(doc: Path, section: str) -> None:
    text = doc.read_text(encoding="utf-8") if doc.is_file() else "# Benchmarks\n"
    pattern = re.compile(re.escape(START_MARKER) + r".*?" + re.escape(END_MARKER) + r"\n?", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    doc.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="Hugging Face model folder")
    parser.add_argument("--quants", default="Q8_0,Q4_K_M", help="GGUF types, comma-separated")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--cached-loads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    tools = find_browser_tools()
    if not isinstance(tools, BrowserTools):
        raise SystemExit(f"cannot benchmark the web bundle: {tools}")
    quants = [measure_quant(tools, args.model, q, args.tokens, args.cached_loads) for q in args.quants.split(",") if q]
    data = {
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "model": args.model.name,
        "tokens": args.tokens,
        "cached_loads": args.cached_loads,
        "machine": f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()} {platform.machine()}, "
                   f"1-minute load average {load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at the end "
                   "(a shared host: speeds are noisy, ratios less so since both sides ran in the same window)",
        "host_threads": compute_threads(),
        "quants": quants,
    }
    if args.json:
        args.json.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    write_section(args.out, render_section(data))
    print(render_section(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
