"""Verifying a web bundle at the `executed` level: its own page runs it in headless Chromium.

The bundle is served by edgepack's static server on 127.0.0.1 and opened by Debian's Chromium,
driven by playwright-core (targets/web/data/browser_driver.mjs). The page loads the model
through the bridge exactly as a user's browser would (download, sha256 check, Cache API), then
generates greedily; the tokens must equal native llama.cpp's greedy tokens for the same GGUF and
prompt. A divergence is accepted at a near-tie (native top-two logits less than 0.1 apart, and the
browser chose the runner-up) or where the fp32 source model itself picks the browser's token (see
compare_greedy for the measurements behind that rule); the result says which. Page errors, console errors, failed
requests and any request leaving the bundle's server fail the verification.

Without Chromium, node or the pinned npm packages, the bundle is checked structurally instead
(files, sizes, hashes, GGUF headers) and the result says why it was not run. Never `executed`
unless it ran.
"""

from __future__ import annotations

import codecs
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from packager.contract import Contract, render_prompt
from packager.fingerprint import file_sha256
from packager.static_server import serving
from packager.verify.compare import first_difference
from packager.verify.result import VerificationResult
from packager.verify.task_eval import TaskMetrics
from targets.web.vendor import INSTALL_COMMAND, WebVendor, vendor_or_none

DRIVER = Path(__file__).resolve().parent / "data" / "browser_driver.mjs"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
# How every headless Chromium edgepack drives is launched: no sandbox (containers, CI), and nothing the
# browser would fetch on its own (updates, sync, QUIC probes) to pollute a page's requests.
CHROMIUM_ARGS = ("--headless=new", "--no-sandbox", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync")
NEAR_TIE = 0.1
GREEDY_TOKENS = 32
SPEED_TOKENS = 64
GATE = ("greedy tokens equal native llama.cpp's (divergence accepted at near-ties < 0.1, or where the fp32 model "
        "picks the browser's token), prompt rendered identically; "
        "no page error, console error, failed or outside request")


@dataclass(frozen=True)
class BrowserTools:
    """What running a bundle in a browser needs on this host."""

    node: str
    chromium: str
    vendor: WebVendor


def chromium_path() -> str | None:
    explicit = os.environ.get("EDGEPACK_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for candidate in CHROMIUM_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    return shutil.which("chromium")


def find_browser_tools() -> BrowserTools | str:
    """Return the tools, or the reason (with the fix) why a bundle cannot be run here."""
    chromium = chromium_path()
    if chromium is None:
        return "Chromium is not installed on the build host (apt-get install chromium)"
    node = shutil.which("node")
    if node is None:
        return "node is not installed on the build host (apt-get install nodejs)"
    vendor = vendor_or_none()
    if vendor is None:
        return f"the pinned npm packages (playwright-core) are not installed ({INSTALL_COMMAND})"
    return BrowserTools(node, chromium, vendor)


def chromium_version(chromium: str) -> str:
    out = subprocess.run([chromium, "--version"], capture_output=True, text=True, timeout=60, check=False).stdout
    words = out.split()
    return words[1] if len(words) > 1 else out.strip()


@dataclass
class Generation:
    """One generation the page performs after loading: contract input, instruction and options."""

    input: str
    options: dict[str, Any]
    instruction: str = ""
    # True: the page's EdgeModel.run (the contract end to end: prompt, stop, grammar, parsing);
    # False: EdgeModel.generate on the rendered prompt with exactly `options`.
    run: bool = False


def drive_bundle(
    tools: BrowserTools, bundle: Path, generations: list[Generation], loads: int = 2, timeout_s: float = 300,
    query: str = "", screenshot: Path | None = None, extra_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Serve bundle, open its page `loads` times in one browser profile, run the generations once.

    Returns the driver's JSON: {browserVersion, problems, runs: [{info, title, heading, labels,
    pageLoadMs, generations: [...]}], error?}. The second load shows the cached path.
    """
    with serving(bundle) as server, tempfile.TemporaryDirectory(prefix="edgepack-browser-") as tmp:
        job = {
            "playwright": str(tools.vendor.playwright_entry),
            "chromium": tools.chromium,
            "url": server.url + "index.html" + query,
            "loads": loads,
            "timeoutMs": int(timeout_s * 1000),
            "generations": [vars(g) for g in generations],
            "screenshot": str(screenshot) if screenshot else None,
            "args": [*CHROMIUM_ARGS, *extra_args],
        }
        job_path = Path(tmp) / "job.json"
        job_path.write_text(json.dumps(job), encoding="utf-8")
        proc = subprocess.run([tools.node, str(DRIVER), str(job_path)], capture_output=True, text=True,
                              timeout=timeout_s * (loads + 1) + 60, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return {"error": f"browser driver exited with {proc.returncode}: {proc.stderr.strip()[-3000:]}",
                "problems": {}, "runs": []}
    return json.loads(proc.stdout)


def problems_of(result: dict[str, Any]) -> list[str]:
    """Every page error, console error, failed or outside request, and driver error, as failure lines."""
    labels = {"pageErrors": "page error", "consoleErrors": "console error", "failedRequests": "failed request",
              "externalRequests": "request outside the bundle"}
    out = [f"{label}: {item}" for key, label in labels.items() for item in result.get("problems", {}).get(key, [])]
    if result.get("error"):
        out.append(f"browser run failed: {result['error']}")
    return out


@dataclass
class BrowserMeasurement:
    """Speed and load numbers of one browser verification (host-specific: kept out of bundles)."""

    load_cold_ms: float | None = None
    load_cached_ms: float | None = None
    page_load_cold_ms: float | None = None
    page_load_cached_ms: float | None = None
    cached: bool | None = None
    browser_tokens_per_s: float | None = None
    native_tokens_per_s: float | None = None
    threads: int | None = None
    backend: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def speed_ratio(self) -> float | None:
        if self.browser_tokens_per_s and self.native_tokens_per_s:
            return self.browser_tokens_per_s / self.native_tokens_per_s
        return None

    def summary(self) -> str:
        def sec(ms: float | None) -> str:
            return "n/a" if ms is None else f"{ms / 1000:.2f} s"

        ratio = self.speed_ratio
        return (
            f"web bundle in headless Chromium ({self.backend}, {self.threads} thread(s)): load "
            f"{sec(self.load_cold_ms)} cold, {sec(self.load_cached_ms)} from the browser cache; decode "
            f"{self.browser_tokens_per_s or 0:.1f} tok/s vs native llama.cpp {self.native_tokens_per_s or 0:.1f} tok/s "
            f"with the same thread count ({'n/a' if ratio is None else f'{ratio:.2f}x'}), on the build host"
        )


def compare_greedy(browser: list[int], native: list[int], eos_ids: list[int], finish_reason: str | None,
                   native_logits_at: Any, reference_choice_at: Any = None) -> tuple[bool, list[str], list[str]]:
    """Compare greedy token lists; returns (identical, notes, failures).

    llama-server (inside wllama) stops at an end-of-generation token without emitting it, while
    the native loop returns it: a native list ending in eos matches a browser list without it.
    native_logits_at(i) returns native llama.cpp's logits for the position that chose token i.

    A divergence is accepted at a near-tie of native llama.cpp (top two < 0.1 apart), or when the
    fp32 source model (reference_choice_at(i): its greedy token after the shared prefix) picks the
    browser's token. Why the second rule: on K-quant GGUFs llama.cpp's own CPU kernels disagree by
    more than 0.1 logits (8-bit activation rounding amplified through the layers): the same
    llama.cpp source built without SIMD differs from the x86 build by up to 0.76 logits on Gemma 3
    270M Q4_K_M and agrees with the browser's WASM build. There the higher-precision model decides.
    """
    if native and native[-1] in eos_ids and finish_reason == "stop" and browser == native[:-1]:
        return True, [], []
    if browser == native:
        return True, [], []
    first = first_difference(browser, native)
    if first is None:  # one is a prefix of the other
        return False, [], [f"greedy length differs: browser {len(browser)} tokens, native {len(native)}"]
    logits = np.asarray(native_logits_at(first), dtype=np.float64)
    order = np.argsort(logits)[::-1]
    gap = float(logits[order[0]] - logits[order[1]])
    if gap < NEAR_TIE and browser[first] == int(order[1]):
        return False, [
            f"greedy tokens diverge at token {first} (browser {browser[first]}, native {native[first]}) at a "
            f"near-tie: native llama.cpp's top two logits differ by {gap:.4f} < {NEAR_TIE} and the browser "
            "chose the runner-up; accepted"
        ], []
    if reference_choice_at is not None:
        ref = int(reference_choice_at(first))
        if ref == browser[first]:
            return False, [
                f"greedy tokens diverge at token {first} (browser {browser[first]}, native {native[first]}; native "
                f"top-two gap {gap:.4f}); the fp32 source model picks the browser's token {ref}: accepted as "
                "kernel-level rounding noise of the quantized model, not a bundle fault"
            ], []
        return False, [], [
            f"greedy tokens diverge at token {first}: browser {browser[first]}, native {native[first]}, fp32 model "
            f"{ref} (native top-two gap {gap:.4f}; not a near-tie)"
        ]
    return False, [], [
        f"greedy tokens diverge at token {first}: browser {browser[first]}, native {native[first]} "
        f"(native top-two gap {gap:.4f}; not a near-tie)"
    ]


def native_greedy(runner: Any, prompt_ids: list[int], n: int, eos_ids: list[int]) -> tuple[list[int], list[Any]]:
    """Native greedy decoding that keeps each step's logits (incremental, exactly as the tokens were chosen).

    Re-evaluating a prefix in one batch gives slightly different logits than decoding it token by
    token, so the near-tie gap is read from the same computation that chose the token.
    """
    llm = runner.llm
    llm.reset()
    llm.eval(prompt_ids)
    tokens: list[int] = []
    rows: list[Any] = []
    for _ in range(n):
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        tok = int(np.argmax(row))
        tokens.append(tok)
        rows.append(row)
        if tok in eos_ids:
            break
        llm.eval([tok])
    return tokens, rows


def returnable_tokens(pieces: list[bytes]) -> int:
    """Return how many leading tokens wllama can hand back: their bytes so far are valid UTF-8.

    wllama 3.8.1 serialises each streamed piece as strict JSON: a byte that is not valid UTF-8
    (a lone continuation byte from a byte-fallback or byte-level token) throws inside the WASM and
    the page only sees "RangeError: Invalid typed array length: 1163217991". Random test models do
    this within a few tokens; the page check then stops before that token. The count ends where no
    character is left half-written, so the last reply is whole.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    whole = 0
    for i, piece in enumerate(pieces):
        try:
            decoder.decode(piece)
        except UnicodeDecodeError:
            break
        if decoder.getstate()[0] == b"":
            whole = i + 1
    return whole


def _native_returnable(gguf: Path, prompt: str, add_bos: bool, n: int) -> int:
    """How many of native llama.cpp's greedy tokens after prompt (eos ignored) wllama can return."""
    from packager.verify.llama_cpp_runner import GGUFRunner

    runner = GGUFRunner(gguf, n_ctx=1024)
    try:
        tokens, _ = runner.greedy(runner.tokenize(prompt, add_bos=add_bos), n, [])
        return returnable_tokens([runner.llm.detokenize([t]) for t in tokens])
    finally:
        runner.close()


def verify_wllama_in_browser(
    tools: BrowserTools, bundle: Path, gguf: Path, contract: Contract, greedy_input: str, artifact: str, quant: str,
    n_greedy: int = GREEDY_TOKENS, n_speed: int = SPEED_TOKENS, reference_next_token: Any = None,
) -> tuple[VerificationResult, BrowserMeasurement]:
    """Run the bundle's page in Chromium and compare with native llama.cpp on the same GGUF."""
    from packager.verify.llama_cpp_runner import GGUFRunner

    notes: list[str] = []
    expected_prompt = render_prompt(contract, greedy_input, "")
    returnable = _native_returnable(gguf, expected_prompt, contract.add_bos, max(n_greedy, n_speed))
    if returnable < max(n_greedy, n_speed):
        notes.append(f"the page check stops after {returnable} token(s): native llama.cpp's greedy continuation "
                     "then has bytes that are not valid UTF-8, which wllama cannot return (its reply JSON is strict)")
        n_greedy, n_speed = max(1, min(n_greedy, returnable)), max(1, min(n_speed, returnable))
    greedy = {"maxTokens": n_greedy, "temperature": 0, "topK": 1, "tokenIds": True}
    speed = {"maxTokens": n_speed, "temperature": 0, "topK": 1, "ignoreEos": True}
    result = drive_bundle(tools, bundle, [Generation(greedy_input, greedy), Generation(greedy_input, speed)],
                          query="?gpu=off")
    failures = problems_of(result)
    measurement = BrowserMeasurement()
    runtime = f"wllama in headless Chromium {result.get('browserVersion') or chromium_version(tools.chromium)}"
    greedy_match: bool | None = None
    greedy_text = ref_text = ""
    runs = result.get("runs", [])
    if runs and len(runs[0].get("generations", [])) == 2:
        info = runs[0]["info"]
        gen, fast = runs[0]["generations"]
        runtime = (f"wllama {info['runtimeVersion']} (llama.cpp {info['llamaCppVersion']}) in headless Chromium "
                   f"{result.get('browserVersion')}, {info['backend']}, {info['threads']} thread(s)")
        measurement = BrowserMeasurement(
            load_cold_ms=info["loadMs"], page_load_cold_ms=runs[0]["pageLoadMs"],
            load_cached_ms=runs[1]["info"]["loadMs"] if len(runs) > 1 else None,
            page_load_cached_ms=runs[1]["pageLoadMs"] if len(runs) > 1 else None,
            cached=runs[1]["info"]["fromCache"] if len(runs) > 1 else None,
            browser_tokens_per_s=fast.get("decodeTokensPerS"), threads=info["threads"], backend=info["backend"],
            details={"info": info, "speed_wall_ms": fast.get("wallMs"), "speed_tokens": fast.get("completionTokens")},
        )
        if measurement.cached is False:
            notes.append("the second page load did not come from the browser cache")
        if gen["prompt"] != expected_prompt:
            failures.append("the page's contract.js rendered a different prompt than packager/contract.py")
        runner = GGUFRunner(gguf, n_ctx=1024, n_threads=int(info["threads"] or 1))
        try:
            prompt_ids = runner.tokenize(expected_prompt, add_bos=contract.add_bos)
            if gen.get("promptTokens") is not None and gen["promptTokens"] != len(prompt_ids):
                failures.append(f"prompt is {gen['promptTokens']} tokens in the browser, {len(prompt_ids)} natively")
            native, native_rows = native_greedy(runner, prompt_ids, n_greedy, contract.eos_ids)
            browser_ids = [int(t) for t in gen.get("tokenIds") or []]
            choice = (None if reference_next_token is None
                      else lambda i: reference_next_token([*prompt_ids, *native[:i]]))
            greedy_match, more_notes, more_failures = compare_greedy(
                browser_ids, native, contract.eos_ids, gen.get("finishReason"), lambda i: native_rows[i], choice)
            notes += more_notes
            failures += more_failures
            _, measurement.native_tokens_per_s = runner.greedy(prompt_ids, n_speed, [])
            ref_text = runner.detokenize(native)
            greedy_text = gen.get("text", "")
        finally:
            runner.close()
    elif not failures:
        failures.append("the page did not finish loading and generating")
    return VerificationResult(
        artifact=artifact, format="web-wllama", quant=quant, level="executed", runtime=runtime,
        greedy_match=greedy_match, greedy_text_reference=ref_text, greedy_text=greedy_text,
        tokens_per_s=measurement.browser_tokens_per_s, gate=GATE, failures=failures, notes=notes,
    ), measurement


def browser_task_eval(tools: BrowserTools, bundle: Path, contract: Contract, rows: list[Any],
                      baseline: list[str] | None) -> tuple[TaskMetrics | None, list[str], list[str]]:
    """Answer the eval rows with the page's own EdgeModel.run in Chromium; return (metrics, notes, failures).

    The page renders each prompt with contract.js, decodes greedily (under the labels grammar when
    the contract is constrained and wllama runs), stops and parses; latency is the page's wall time
    per request. Every prompt the page rendered must equal packager/contract.py's.
    """
    from packager.verify.task_eval import score

    generations = [Generation(row.input, {}, row.instruction, run=True) for row in rows]
    result = drive_bundle(tools, bundle, generations, loads=1, query="?gpu=off", timeout_s=120 + 10 * len(rows))
    failures = problems_of(result)
    runs = result.get("runs", [])
    answers = runs[0]["generations"] if runs else []
    if len(answers) != len(rows):
        return None, [], failures or [f"the page answered {len(answers)} of {len(rows)} eval rows"]
    info = runs[0]["info"]
    queue = iter(answers)

    def generate(prompt: str) -> tuple[str, int, float]:
        answer = next(queue)
        if answer["prompt"] != prompt:
            failures.append(f"contract.js rendered an eval prompt differently: {answer['prompt'][:80]!r}")
        return answer["text"], int(answer.get("completionTokens") or 0), float(answer["wallMs"]) / 1000

    constrained = bool(info.get("constrained"))
    metrics, _ = score(contract, rows, generate, baseline, constrained)
    js_valid = sum(bool(a["parsed"]["ok"]) for a in answers) / len(rows)
    if abs(js_valid - metrics.validity) > 1e-9:
        failures.append(f"contract.js parsed {js_valid:.3f} of the answers as valid, packager/contract.py "
                        f"{metrics.validity:.3f}")
    notes = [f"eval set answered in Chromium by the page's EdgeModel.run ({info['backend']}, {info['threads']} "
             f"thread(s), {'constrained to the labels' if constrained else 'unconstrained'})"]
    evaluated = [a.get("promptTokensEvaluated") for a in answers]
    if all(isinstance(n, int) for n in evaluated) and all(a.get("promptTokens") for a in answers):
        total = sum(a["promptTokens"] for a in answers)
        notes.append(f"the page evaluated {sum(evaluated)} of the eval prompts' {total} tokens; "
                     f"{total - sum(evaluated)} came from the cached prefix the rows share")
    return metrics, notes, failures


def verify_bundle_files(bundle: Path, manifest: dict[str, Any]) -> list[str]:
    """Check every file edgepack.json lists: present, same size, same sha256."""
    failures = []
    for entry in manifest["files"]:
        path = bundle / entry["path"]
        if not path.is_file():
            failures.append(f"{entry['path']}: listed in edgepack.json but missing")
        elif path.stat().st_size != entry["bytes"] or file_sha256(path) != entry["sha256"]:
            failures.append(f"{entry['path']}: size or sha256 differs from edgepack.json")
    return failures


def structural_result(artifact: str, fmt: str, quant: str, runtime: str, failures: list[str],
                      notes: list[str]) -> VerificationResult:
    return VerificationResult(artifact=artifact, format=fmt, quant=quant, level="structural", runtime=runtime,
                              gate="files, sizes and sha256 as edgepack.json lists them", failures=failures,
                              notes=notes)
