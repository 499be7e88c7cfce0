"""The web target: a static bundle that runs in real headless Chromium, and a WebLLM (MLC) bundle.

Browser tests drive Debian's Chromium with playwright-core (both needed: `apt-get install chromium`
and `python -m targets.web.vendor install`); without them they skip locally and fail under
EDGEPACK_REQUIRE_TOOLS=1.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import gguf
import numpy as np
import pytest
from cli_helpers import edgepack, leftovers
from external_tools import missing, require_tool

from packager.checkpoint import load_checkpoint
from packager.contract import Contract, PromptFormat, parse_output, render_prompt
from packager.errors import ExitCode
from packager.fingerprint import file_sha256
from packager.pipeline import BuildRequest, run_build
from packager.progress import Reporter
from packager.stages import BuildContext, BuildOptions
from packager.verify.llama_cpp_runner import GGUFRunner
from targets.web.gguf_split import part_names, split_gguf
from targets.web.mlc.check import check_mlc_folder
from targets.web.mlc.libraries import LIBS_ENV, match_library
from targets.web.mlc.writer import (
    MLC_QUANTIZATIONS,
    ShardWriter,
    bf16_bits_to_f32,
    chat_config,
    dequantize_group,
    expected_records,
    f32_to_bf16_bits,
    plan_params,
    quantize_group,
)
from targets.web.vendor import BUNDLE_FILES, WLLAMA, vendor_or_none
from targets.web.verify_browser import (
    BrowserTools,
    compare_greedy,
    drive_bundle,
    find_browser_tools,
    returnable_tokens,
)

REPO = Path(__file__).resolve().parent.parent
Q4 = MLC_QUANTIZATIONS["q4f16_1"]


def browser() -> BrowserTools:
    """The browser tools, or skip (fail under EDGEPACK_REQUIRE_TOOLS=1) naming what is missing."""
    require_tool("node")
    require_tool("chromium")
    tools = find_browser_tools()
    if not isinstance(tools, BrowserTools):
        missing(f"web runtimes ({tools})")
    return tools


def vendor_installed() -> None:
    if vendor_or_none() is None:
        missing("the pinned web runtimes (.venv/bin/python -m targets.web.vendor install)")


def verification(bundle: Path, fmt: str) -> dict:
    return next(v for v in json.loads((bundle / "edgepack.json").read_text())["verification"] if v["format"] == fmt)


@pytest.fixture(scope="module")
def web_build(tiny_gemma: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One `--runtime all` build of the tiny Gemma, shared by the layout and browser tests."""
    browser()
    out = tmp_path_factory.mktemp("web") / "tiny"
    result = edgepack("build", tiny_gemma, "--target", "web", "--runtime", "all", "--quant", "Q8_0", "--out", out,
                      "--json")
    assert result.exit_code == 0, result.stderr
    return out / "web", result.json()


# -- the bundle ------------------------------------------------------------------------------------


def test_web_bundle_has_page_bridge_runtimes_model_and_a_manifest_that_hashes_every_file(
        web_build: tuple[Path, dict]) -> None:
    bundle, _ = web_build
    for name in ("index.html", "app.js", "app-config.js", "style.css", "README.md", "edgepack.json",
                 "edgepack/edge-model.js", "edgepack/contract.js", "edgepack/model-store.js",
                 "vendor/wllama/index.js", "vendor/wllama/wasm/wllama.wasm", "vendor/web-llm/index.js",
                 "model/model-Q8_0.gguf"):
        assert (bundle / name).is_file(), name
    manifest = json.loads((bundle / "edgepack.json").read_text())
    listed = {f["path"]: f for f in manifest["files"]}
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {"edgepack.json"}
    assert set(listed) == on_disk
    for path, entry in listed.items():
        assert entry["sha256"] == file_sha256(bundle / path), path
    assert manifest["runtimes"]["wllama"]["model_files"] == ["model/model-Q8_0.gguf"]
    assert manifest["contract"]["eos_ids"] == [1, 6]


def test_runtimes_are_copied_byte_for_byte_from_the_pinned_npm_packages(web_build: tuple[Path, dict]) -> None:
    bundle, _ = web_build
    vendor = vendor_or_none()
    assert vendor is not None and vendor.version(WLLAMA) == "3.8.1"
    for src, dest in BUNDLE_FILES[WLLAMA].items():
        assert file_sha256(bundle / "vendor" / "wllama" / dest) == file_sha256(vendor.package_dir(WLLAMA) / src)


def test_the_model_in_the_bundle_is_the_shared_gguf_stage(web_build: tuple[Path, dict], tiny_gemma: Path,
                                                          tmp_path: Path) -> None:
    bundle, _ = web_build
    rpi = tmp_path / "rpi"
    result = edgepack("build", tiny_gemma, "--target", "raspberry-pi", "--quant", "Q8_0", "--out", rpi)
    assert result.exit_code == 0, result.stderr
    assert file_sha256(bundle / "model" / "model-Q8_0.gguf") == file_sha256(rpi / "raspberry-pi" / "model-Q8_0.gguf")


# -- executed in Chromium --------------------------------------------------------------------------


def test_the_build_runs_its_page_in_chromium_and_the_greedy_tokens_equal_native_llama_cpp(
        web_build: tuple[Path, dict]) -> None:
    bundle, summary = web_build
    record = verification(bundle, "web-wllama")
    assert record["level"] == "executed", record
    assert record["passed"] is True and record["failures"] == []
    assert record["greedy_match"] is True, record["notes"]
    assert record["runtime"].startswith("wllama 3.8.1 (llama.cpp b11364")
    assert "in headless Chromium" in record["runtime"] and "wasm-cpu" in record["runtime"]
    assert record["greedy_text"] == record["greedy_text_reference"]
    assert "tokens_per_s" not in record  # host speed stays out of the bundle (reproducible builds)
    [row] = [r for r in summary["artifacts"] if r["artifact"] == "web/index.html"]
    assert row["tokens_per_s"] and row["tokens_per_s"] > 0


def test_an_unchanged_rebuild_reuses_the_browser_verification_of_the_same_files(
        web_build: tuple[Path, dict], tiny_gemma: Path, tmp_path: Path) -> None:
    _, first = web_build
    out = tmp_path / "again"
    result = edgepack("build", tiny_gemma, "--target", "web", "--runtime", "all", "--quant", "Q8_0", "--out", out,
                      "--json")
    assert result.exit_code == 0, result.stderr
    again = result.json()
    [browser_stage] = [s for s in again["stages"] if s["name"] == "verify web bundle (Chromium)"]
    assert browser_stage["cached"], again["stages"]
    assert again["artifacts"] == first["artifacts"]  # the same record, speed numbers included
    name = f"renamed-{secrets.token_hex(4)}"  # never built before, in this cache or any other
    renamed = edgepack("build", tiny_gemma, "--target", "web", "--quant", "Q8_0", "--name", name,
                       "--out", tmp_path / "renamed", "--json")
    assert renamed.exit_code == 0, renamed.stderr
    [browser_stage] = [s for s in renamed.json()["stages"] if s["name"] == "verify web bundle (Chromium)"]
    assert not browser_stage["cached"]  # other files (the page carries the name): the browser runs again


def test_report_records_load_times_and_the_speed_ratio_to_native_llama_cpp(web_build: tuple[Path, dict]) -> None:
    bundle, _ = web_build
    report = (bundle.parent / "report.md").read_text()
    assert "from the browser cache; decode" in report and "vs native llama.cpp" in report
    assert "with the same thread count" in report


def test_second_page_load_comes_from_the_browser_cache_with_no_errors_and_no_outside_requests(
        web_build: tuple[Path, dict]) -> None:
    bundle, _ = web_build
    result = drive_bundle(browser(), bundle, [], loads=2, query="?gpu=off")
    assert result["problems"] == {"pageErrors": [], "consoleErrors": [], "failedRequests": [], "externalRequests": []}
    first, second = result["runs"]
    assert first["info"]["fromCache"] is False and second["info"]["fromCache"] is True
    assert first["info"]["crossOriginIsolated"] is True  # edgepack serve's COOP/COEP headers worked
    assert first["info"]["runtime"] == "wllama" and first["info"]["backend"] == "wasm-cpu"
    assert "no WebLLM model library" in first["info"]["reason"] or "not bundled" in first["info"]["reason"]


STORE_PAGE = """<!doctype html><meta charset="utf-8"><title>model store</title>
<script type="module">
import { fetchVerified } from "./edgepack/model-store.js";
const files = %s;
window.edgepack = { ready: (async () => {
  const blobs = [];
  for (const file of files) blobs.push((await fetchVerified(new URL(file.path, location.href).href, file)).blob);
  const tails = [];  // read after every file is in: the bytes wllama reads while it loads the model
  for (const blob of blobs) tails.push(Array.from(new Uint8Array(await blob.slice(blob.size - 8).arrayBuffer())));
  return { info: { tails } };
})() };
</script>"""


def test_model_files_past_chromiums_in_memory_blob_limit_reach_the_runtime_readable(tmp_path: Path) -> None:
    """Chromium keeps a page's in-memory blobs within ~500 MB: two 300 MB files (a 1B model is 1 GB) must
    still be readable once both are fetched; as `new Blob([bytes])` the second was not (NotReadableError)."""
    site = tmp_path / "site"
    (site / "model").mkdir(parents=True)
    (site / "edgepack").mkdir()
    (site / "edgepack" / "model-store.js").write_bytes((REPO / "mobile" / "web" / "model-store.js").read_bytes())
    files, tails = [], []
    for index in range(2):
        tail = secrets.token_bytes(8)
        path = site / "model" / f"part-{index}.bin"
        with path.open("wb") as out:  # sparse: 300 MB on disk costs nothing
            out.truncate(300 * 2**20 - len(tail))
            out.seek(0, 2)
            out.write(tail)
        files.append({"path": f"model/{path.name}", "sha256": file_sha256(path), "bytes": path.stat().st_size})
        tails.append(list(tail))
    (site / "index.html").write_text(STORE_PAGE % json.dumps(files), encoding="utf-8")
    result = drive_bundle(browser(), site, [], loads=1, timeout_s=120)
    assert result.get("error") is None, result.get("error")
    assert result["runs"][0]["info"]["tails"] == tails


def test_a_corrupted_model_file_is_refused_by_the_page(web_build: tuple[Path, dict], tmp_path: Path) -> None:
    import shutil

    bundle = tmp_path / "web"
    shutil.copytree(web_build[0], bundle)
    gguf_file = bundle / "model" / "model-Q8_0.gguf"
    data = bytearray(gguf_file.read_bytes())
    data[-1] ^= 0xFF
    gguf_file.unlink()
    gguf_file.write_bytes(bytes(data))
    result = drive_bundle(browser(), bundle, [], loads=1, timeout_s=60)
    assert "does not match edgepack.json" in json.dumps(result)


def test_hostile_name_and_labels_stay_text_in_html_and_js_and_the_page_still_loads(
        tiny_gemma: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tools = browser()
    name = '</title><script>window.__edgepackInjected=1</script><img src=x onerror="window.__edgepackInjected=2">' \
           ' `${alert(3)}` \u2028 "q" \'s'
    labels = ["</code><script>window.__edgepackInjected=4</script>", "`${window.__edgepackInjected=5}`", "a&b"]
    hostile = Contract(task="labels", labels=labels, prompt=PromptFormat(template="{input}"), add_bos=True, bos_id=2,
                       eos_ids=[1, 6], stop_strings=["<end_of_turn>"])
    monkeypatch.setattr(BuildContext, "contract", property(lambda self: hostile))
    out = tmp_path / "out"
    run_build(BuildRequest(checkpoint=tiny_gemma, targets=["web"], out=out,
                           options=BuildOptions(quant="Q8_0", name=name)), Reporter(quiet=True))
    assert (out / "web" / "app-config.js").read_text().count("</script>") == 0
    result = drive_bundle(tools, out / "web", [], loads=1, query="?gpu=off")
    [run] = result["runs"]
    assert run["injected"] is None
    assert run["title"] == f"{name} · edgepack" and run["heading"] == name
    assert run["labels"] == labels
    assert result["problems"]["pageErrors"] == [] and result["problems"]["consoleErrors"] == []


def test_a_gguf_over_the_part_size_is_split_and_the_parts_run_natively_and_in_chromium(
        tiny_gemma: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import targets.web.target as web

    browser()
    reader = gguf.GGUFReader(str(Path(BuildContext(load_checkpoint(tiny_gemma, work_dir=tmp_path / "w"), "x",
                                                   BuildOptions(), Reporter(quiet=True)).gguf("F16"))))
    monkeypatch.setattr(web, "MAX_PART_BYTES", reader.data_offset + 120_000)
    out = tmp_path / "out"
    request = BuildRequest(checkpoint=tiny_gemma, targets=["web"], out=out, options=BuildOptions(quant="F16"))
    outcome = run_build(request, Reporter(quiet=True))
    manifest = json.loads((out / "web" / "edgepack.json").read_text())
    parts = manifest["runtimes"]["wllama"]["model_files"]
    assert len(parts) >= 3 and [Path(p).name for p in parts] == part_names("model-F16", len(parts))
    assert all((out / "web" / p).stat().st_size <= reader.data_offset + 120_000 for p in parts)
    record = verification(out / "web", "web-wllama")
    assert outcome.passed and record["level"] == "executed" and record["greedy_match"] is True, record


def test_split_parts_compute_exactly_what_the_whole_gguf_computes(tiny_gemma: Path, tmp_path: Path) -> None:
    ckpt = load_checkpoint(tiny_gemma, work_dir=tmp_path / "w")
    whole = BuildContext(ckpt, "split-test", BuildOptions(), Reporter(quiet=True)).gguf("Q8_0")
    reader = gguf.GGUFReader(str(whole))
    parts = split_gguf(whole, tmp_path / "parts", reader.data_offset + 60_000)
    assert len(parts) >= 3
    first = gguf.GGUFReader(str(parts[0]))
    assert int(first.get_field("split.count").contents()) == len(parts)
    assert sum(len(gguf.GGUFReader(str(p)).tensors) for p in parts) == len(reader.tensors)
    a, b = GGUFRunner(whole, n_ctx=64), GGUFRunner(parts[0], n_ctx=64)
    try:
        ids = a.tokenize("The quick brown fox jumps", add_bos=True)
        assert np.array_equal(a.logits(ids), b.logits(ids))
    finally:
        a.close()
        b.close()


def test_a_tensor_larger_than_the_part_size_gets_a_part_of_its_own_size_up_to_the_browser_limit(
        tiny_gemma: Path, tmp_path: Path) -> None:
    """Gemma 3 4B's Q6_K token table (551 MB) is larger than the 512 MB part size: its part grows to hold it,
    and only a tensor beyond what a browser holds in one buffer is refused."""
    from packager.errors import UnsupportedError

    ckpt = load_checkpoint(tiny_gemma, work_dir=tmp_path / "w")
    whole = BuildContext(ckpt, "split-test", BuildOptions(), Reporter(quiet=True)).gguf("Q8_0")
    reader = gguf.GGUFReader(str(whole))
    largest = max(t.n_bytes for t in reader.tensors)
    small = reader.data_offset + largest // 4  # the part size alone could not hold the largest tensor
    parts = split_gguf(whole, tmp_path / "parts", small)
    sizes = [p.stat().st_size for p in parts]
    assert len(parts) >= 2 and max(sizes) > small
    assert max(sizes) <= reader.data_offset + largest + reader.alignment * len(reader.tensors) + 256
    assert sum(len(gguf.GGUFReader(str(p)).tensors) for p in parts) == len(reader.tensors)
    with pytest.raises(UnsupportedError, match="a browser holds in one buffer"):
        split_gguf(whole, tmp_path / "refused", small, limit=reader.data_offset + largest // 2)
    assert not (tmp_path / "refused").exists()


def test_without_chromium_the_bundle_is_structural_and_says_why(tiny_gemma: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    vendor_installed()
    monkeypatch.setenv("EDGEPACK_CHROMIUM", str(tmp_path / "no-chromium"))
    out = tmp_path / "out"
    result = edgepack("build", tiny_gemma, "--target", "web", "--quant", "Q8_0", "--out", out)
    assert result.exit_code == 0, result.stderr
    record = verification(out / "web", "web-wllama")
    assert record["level"] == "structural" and record["greedy_match"] is None
    assert any("Chromium is not installed" in n for n in record["notes"])


def test_missing_web_runtimes_are_a_clear_unsupported_error_and_nothing_is_written(
        tiny_gemma: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import targets.web.vendor as web_vendor

    monkeypatch.setenv("EDGEPACK_WEB_VENDOR", str(tmp_path / "empty"))
    web_vendor.vendor_or_none.cache_clear()
    result = edgepack("build", tiny_gemma, "--target", "web", "--quant", "Q8_0", "--out", tmp_path / "out")
    web_vendor.vendor_or_none.cache_clear()
    assert result.exit_code == ExitCode.UNSUPPORTED
    assert "python -m targets.web.vendor install" in result.stderr
    assert leftovers(tmp_path, "out") == []


def test_near_ties_are_accepted_only_when_the_browser_chose_native_runner_up() -> None:
    logits = np.zeros(10)
    logits[3], logits[7] = 5.0, 4.95  # native picks 3; 7 is within 0.1
    same, notes, failures = compare_greedy([1, 7, 2], [1, 3, 2], [9], "length", lambda i: logits)
    assert same is False and failures == [] and "near-tie" in notes[0] and "0.0500" in notes[0]
    logits[7] = 4.0
    _, _, failures = compare_greedy([1, 7, 2], [1, 3, 2], [9], "length", lambda i: logits)
    assert failures and "not a near-tie" in failures[0]
    assert compare_greedy([1, 2], [1, 2, 9], [9], "stop", lambda i: logits)[0] is True  # eos is not emitted


def test_a_clear_divergence_is_accepted_only_when_the_fp32_model_picks_the_browsers_token() -> None:
    logits = np.zeros(10)
    logits[3], logits[7] = 5.0, 4.8  # native prefers 3 by 0.2: not a near-tie
    asked: list[int] = []

    def fp32_picks(choice: int):
        def pick(i: int) -> int:
            asked.append(i)
            return choice
        return pick

    same, notes, failures = compare_greedy([1, 7, 2], [1, 3, 2], [9], "length", lambda i: logits, fp32_picks(7))
    assert same is False and failures == [] and asked == [1]
    assert "fp32 source model picks the browser's token 7" in notes[0] and "0.2000" in notes[0]
    _, notes, failures = compare_greedy([1, 7, 2], [1, 3, 2], [9], "length", lambda i: logits, fp32_picks(3))
    assert notes == [] and "fp32 model 3" in failures[0] and "not a near-tie" in failures[0]


# -- edgepack serve --------------------------------------------------------------------------------


def test_edgepack_serve_sends_isolation_headers_wasm_mime_and_answers_range_requests(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.wasm").write_bytes(b"\0asm" + bytes(range(256)) * 4)
    proc = subprocess.Popen([sys.executable, "-m", "packager.cli", "serve", str(tmp_path), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        with urllib.request.urlopen(url + "sub/m.wasm", timeout=10) as response:
            assert response.headers["Content-Type"] == "application/wasm"
            assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
            assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
            assert response.headers["Accept-Ranges"] == "bytes"
            body = response.read()
        request = urllib.request.Request(url + "sub/m.wasm", headers={"Range": "bytes=4-9"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 206
            assert response.headers["Content-Range"] == f"bytes 4-9/{len(body)}"
            assert response.read() == body[4:10]
        request = urllib.request.Request(url + "sub/m.wasm", headers={"Range": "bytes=-3"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.read() == body[-3:]
        request = urllib.request.Request(url + "sub/m.wasm", headers={"Range": f"bytes={len(body)}-"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=10)
        assert err.value.code == 416
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _status(server_url: str, path: str, headers: dict[str, str] | None = None) -> int:
    """Return the HTTP status of GET path, sent as is (no client-side normalisation of '..' or length)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(server_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.fixture
def served(tmp_path: Path):
    """A served bundle folder with a file, a sub-folder, and symlinks that lead out of it."""
    from packager.static_server import serving

    bundle = tmp_path / "bundle"
    (bundle / "sub").mkdir(parents=True)
    (bundle / "m.gguf").write_bytes(bytes(range(256)))
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the bundle")
    (bundle / "leak.txt").symlink_to(secret)
    (bundle / "up").symlink_to(tmp_path)
    with serving(bundle) as server:
        yield server


def test_serve_never_follows_a_symlink_out_of_the_folder(served) -> None:
    assert _status(served.url, "/leak.txt") == 404
    assert _status(served.url, "/up/secret.txt") == 404
    assert _status(served.url, "/../secret.txt") == 404
    assert _status(served.url, "/m.gguf") == 200


def test_serve_lists_no_directory(served) -> None:
    assert _status(served.url, "/") == 404
    assert _status(served.url, "/sub/") == 404
    assert _status(served.url, "/sub") == 404


def test_serve_answers_a_huge_range_number_with_416(served) -> None:
    assert _status(served.url, "/m.gguf", {"Range": "bytes=" + "9" * 5000 + "-"}) == 416
    assert _status(served.url, "/m.gguf", {"Range": "bytes=" + "9" * 40 + "-"}) == 416
    assert _status(served.url, "/m.gguf", {"Range": "bytes=0-" + "9" * 40}) == 206


def test_serve_answers_an_8000_character_path_with_a_4xx(served) -> None:
    assert _status(served.url, "/" + "a" * 8000) == 414
    assert _status(served.url, "/a%00b") in (400, 404)
    assert _status(served.url, "/m.gguf") == 200  # the server is still up


# -- WebLLM (MLC) weights --------------------------------------------------------------------------


def test_webllm_bundle_has_resolve_main_layout_and_says_it_needs_a_model_library(web_build: tuple[Path, dict]) -> None:
    bundle, _ = web_build
    webllm = json.loads((bundle / "edgepack.json").read_text())["runtimes"]["webllm"]
    assert [v["quantization"] for v in webllm["variants"]] == ["q4f16_1", "q4f32_1"]
    for variant in webllm["variants"]:
        main = bundle / variant["model_url"] / "resolve" / "main"
        for name in ("mlc-chat-config.json", "tensor-cache.json", "params_shard_0.bin", "tokenizer.json"):
            assert (main / name).is_file(), name
        assert variant["model_lib"] is None and variant["model_lib_status"] == "needs-compile"
        assert "mlc_llm compile" in variant["model_lib_reason"]
    q4 = verification(bundle, "mlc")
    assert q4["level"] == "structural" and q4["passed"] is True
    assert any("assumes every 6th layer is global" in n for n in q4["notes"])  # tiny model: 2 layers, one global


def test_q4f16_1_packs_eight_nibbles_per_word_low_first_with_scale_max_over_7() -> None:
    w = np.zeros((1, 32), dtype=np.float32)
    w[0, :8] = [-7, -6, -1, 0, 1, 2, 6, 7]
    w[0, 31] = 3.5
    q_weight, q_scale = quantize_group(w, Q4)
    assert q_weight.shape == (1, 4) and q_weight.dtype == np.uint32 and q_scale.shape == (1, 1)
    assert q_scale[0, 0] == np.float16(1.0)  # max |w| = 7 -> scale 7 / 7
    stored = [v + 7 for v in (-7, -6, -1, 0, 1, 2, 6, 7)]
    assert int(q_weight[0, 0]) == sum(v << (4 * j) for j, v in enumerate(stored))
    assert int(q_weight[0, 3]) >> 28 == 11  # 3.5 / 1 + 7 = 10.5 rounds away from zero, as llvm.round does
    np.testing.assert_array_equal(dequantize_group(q_weight, q_scale, Q4)[0, :8], w[0, :8])


def test_q4_round_trip_error_stays_within_half_a_step_per_group_plus_model_dtype_rounding() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, 256)).astype(np.float32)
    for name in ("q4f16_1", "q4f32_1"):
        quant = MLC_QUANTIZATIONS[name]
        q_weight, q_scale = quantize_group(w, quant)
        restored = dequantize_group(q_weight, q_scale, quant)
        step = np.repeat(q_scale.astype(np.float32), 32, axis=1)
        # Half a step, plus the model dtype's rounding of w / scale + 7 (values up to 14, mlc-llm computes in it).
        ulp = 2**-10 if name == "q4f16_1" else 2**-23
        assert np.all(np.abs(restored - w) <= step * (0.5 + 14 * ulp) + np.abs(w) * ulp + 1e-6), name


def test_float32_is_stored_as_bfloat16_rounded_to_nearest_even_like_tvmjs() -> None:
    values = np.array([1.0, 1.00390625, 1.01171875, -2.5, 3.0e38], dtype=np.float32)
    bits = f32_to_bf16_bits(values)
    assert bits.tolist()[:4] == [0x3F80, 0x3F80, 0x3F82, 0xC020]  # 1+2^-8 ties to even (down), 1+3*2^-8 up
    assert bf16_bits_to_f32(bits)[3] == -2.5


def test_shards_follow_tvmjs_thresholds(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, cap=100)
    writer.append(b"a" * 30, "small1", (30,), "uint8", "raw")
    writer.append(b"b" * 80, "big", (80,), "uint8", "raw")  # does not fit and is >= cap/2: its own shard
    writer.append(b"c" * 30, "small2", (30,), "uint8", "raw")
    writer.append(b"d" * 45, "mid", (45,), "uint8", "raw")  # 30 + 30 + 45 >= 100 and 45 < 50: commit first
    writer.commit()
    layout = [[r["name"] for r in s["records"]] for s in writer.shards]
    assert layout == [["big"], ["small1", "small2"], ["mid"]]
    assert [s["dataPath"] for s in writer.shards] == ["params_shard_0.bin", "params_shard_1.bin", "params_shard_2.bin"]
    assert writer.shards[1]["records"][1]["byteOffset"] == 30


def test_gemma_mlc_names_fuse_gate_up_keep_qkv_add_one_to_norms_and_tie_lm_head(tiny_gemma: Path,
                                                                               tmp_path: Path) -> None:
    ckpt = load_checkpoint(tiny_gemma, work_dir=tmp_path / "w")
    records = expected_records(ckpt, Q4)
    layer = "language_model.model.layers.0"
    assert records[f"{layer}.mlp.gate_up_proj.q_weight"] == ((256, 64 // 8), "uint32")
    assert records[f"{layer}.mlp.gate_up_proj.q_scale"] == ((256, 64 // 32), "float16")
    assert f"{layer}.self_attn.q_proj.q_weight" in records and not any("qkv_proj" in n for n in records)
    assert records["language_model.model.embed_tokens.q_weight"][0][0] == ckpt.config["vocab_size"]
    assert not any("lm_head" in n for n in records)
    gate_up = next(p for p in plan_params(ckpt, Q4) if p.stem.endswith("layers.0.mlp.gate_up_proj"))
    assert gate_up.sources == ("model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight")
    norm = next(p for p in plan_params(ckpt, Q4) if p.stem.endswith("layers.0.input_layernorm"))
    assert norm.norm_offset == 1.0 and not norm.quantized


def test_llama_mlc_names_fuse_qkv_and_keep_an_untied_lm_head(tiny_llama: Path, tmp_path: Path) -> None:
    ckpt = load_checkpoint(tiny_llama, work_dir=tmp_path / "w")
    records = expected_records(ckpt, MLC_QUANTIZATIONS["q0f32"])
    assert records["model.layers.0.self_attn.qkv_proj.weight"] == ((64 + 2 * 32, 64), "float32")
    assert "lm_head.weight" in records
    norm = next(p for p in plan_params(ckpt, Q4) if p.stem.endswith("layers.0.input_layernorm"))
    assert norm.norm_offset == 0.0


def test_structural_check_catches_a_wrong_shape_and_a_corrupt_shard(tiny_llama: Path, tmp_path: Path) -> None:
    from targets.web.mlc.writer import write_tensor_cache

    ckpt = load_checkpoint(tiny_llama, work_dir=tmp_path / "w")
    folder = tmp_path / "mlc"
    write_tensor_cache(ckpt, folder, Q4)
    assert check_mlc_folder(ckpt, folder, Q4).failures == []
    cache = json.loads((folder / "tensor-cache.json").read_text())
    cache["records"][0]["records"][0]["shape"][0] += 1
    (folder / "tensor-cache.json").write_text(json.dumps(cache))
    assert any("the model expects" in f for f in check_mlc_folder(ckpt, folder, Q4).failures)
    cache["records"][0]["records"][0]["shape"][0] -= 1
    (folder / "tensor-cache.json").write_text(json.dumps(cache))
    shard = folder / "params_shard_0.bin"
    shard.write_bytes(b"\0" + shard.read_bytes()[1:])
    assert any("md5 differs" in f for f in check_mlc_folder(ckpt, folder, Q4).failures)


def test_mlc_conversation_template_renders_the_contract_prompt_as_webllm_assembles_it(tiny_gemma: Path,
                                                                                      tmp_path: Path) -> None:
    ckpt = load_checkpoint(tiny_gemma, work_dir=tmp_path / "w")
    contract = BuildContext(ckpt, "x", BuildOptions(), Reporter(quiet=True)).contract
    config, note = chat_config(ckpt, contract, Q4, 1024, 1024, ["tokenizer.json"])
    conv = config["conv_template"]
    message = "my card got declined"
    # web-llm's Conversation.getPromptArray for [user message, empty assistant reply header]:
    webllm_prompt = (conv["roles"]["user"] + conv["role_content_sep"]
                     + conv["role_templates"]["user"].replace("{user_message}", message) + conv["seps"][0]
                     + conv["roles"]["assistant"] + conv["role_empty_sep"])
    assert webllm_prompt == render_prompt(contract, message) and note == ""
    assert conv["stop_token_ids"] == [1, 6] and conv["system_prefix_token_ids"] == [2]
    assert config["model_type"] == "gemma3_text" and config["model_config"]["text_config"]["hidden_size"] == 64


def test_a_prebuilt_library_is_used_only_on_an_exact_match(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gemma_1b = {"hidden_size": 1152, "intermediate_size": 6912, "num_hidden_layers": 26, "num_attention_heads": 4,
                "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 262144, "sliding_window": 512}
    ckpt = SimpleNamespace(config=gemma_1b)
    monkeypatch.delenv(LIBS_ENV, raising=False)
    assert match_library(ckpt, "m", "gemma3_text", "q4f16_1", 4096).status == "prebuilt-not-local"
    (tmp_path / "gemma3-1b-it-q4f16_1_cs1k-webgpu.wasm").write_bytes(b"\0asm")
    monkeypatch.setenv(LIBS_ENV, str(tmp_path))
    assert match_library(ckpt, "m", "gemma3_text", "q4f16_1", 4096).status == "bundled"
    for changed in ({"quant": "q4f32_1"}, {"context": 2048}, {"config": {**gemma_1b, "num_hidden_layers": 18}}):
        match = match_library(SimpleNamespace(config=changed.get("config", gemma_1b)), "m", "gemma3_text",
                              changed.get("quant", "q4f16_1"), changed.get("context", 4096))
        assert match.status == "needs-compile" and "mlc_llm compile" in match.reason, changed


# -- the bridge's contract port --------------------------------------------------------------------

EDGE_CASES = [
    ("json", {}, '{"a": NaN, "b": Infinity}'),
    ("json", {"type": "object", "additionalProperties": False, "properties": {"x": {}}}, '{"9": 1, "x": 2, "1": 3}'),
    ("json", {"enum": [1, "1", [True]]}, "[1]"),
    ("json", {"const": {"a": [1, 2.0]}}, '{"a": [1.0, 2]}'),
    ("json", {"type": "integer"}, "3.0"),
    ("json", {"type": "integer"}, "1e400"),
    ("json", {"type": ["string", "null"]}, "null"),
    ("json", {"type": "array", "minItems": 2, "items": {"type": "boolean"}}, "[true, 0]"),
    ("json", {"required": ["b", "a"], "properties": {"a": {"type": "string"}}}, '{"a": 1}'),
    ("json", {}, "\u001c{\"a\": 1}\u0085"),
    ("json", {}, "\ufeff{}"),
    ("json", {}, '{"a": 1,}'),
    ("json", {}, '"\\ud83d\\ude00 \\u00e9"'),
    ("json", {}, "01"),
    ("labels", None, "\u3000billing\u2029"),
    ("labels", None, "\ufeffbilling"),
    ("text", None, " \u00a0 keep \u00a0 "),
]


def _non_finite_as_text(value: object) -> object:
    """JSON has no NaN/Infinity: both sides spell them as strings for the comparison."""
    if isinstance(value, float) and not np.isfinite(value):
        return {float("inf"): "Infinity", float("-inf"): "-Infinity"}.get(value, "NaN")
    if isinstance(value, dict):
        return {k: _non_finite_as_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_non_finite_as_text(v) for v in value]
    return value


def test_contract_js_parses_exactly_like_packager_contract_on_edge_cases(tmp_path: Path) -> None:
    node = require_tool("node")
    contracts = [Contract(task=task, labels=["billing"], json_schema=schema, stop_strings=["END"])
                 for task, schema, _ in EDGE_CASES]
    cases = [{"contract": c.as_dict(), "raw": raw} for c, (_, _, raw) in zip(contracts, EDGE_CASES, strict=True)]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    script = (
        f"import {{ parseOutput, contractFromJson }} from {json.dumps((REPO / 'mobile/web/contract.js').as_uri())};\n"
        "import fs from 'node:fs';\n"
        "const cases = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));\n"
        "const out = cases.map((c) => parseOutput(contractFromJson(JSON.stringify(c.contract)), c.raw));\n"
        "console.log(JSON.stringify(out, (k, v) => (typeof v === 'number' && !Number.isFinite(v) ? String(v) : v)));\n"
    )
    (tmp_path / "diff.mjs").write_text(script)
    proc = subprocess.run([node, str(tmp_path / "diff.mjs"), str(tmp_path / "cases.json")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for contract, (_, _, raw), js in zip(contracts, EDGE_CASES, json.loads(proc.stdout), strict=True):
        assert js == _non_finite_as_text(parse_output(contract, raw)), raw


def test_the_bridge_node_tests_pass() -> None:
    node = require_tool("node")
    proc = subprocess.run([node, "--test", "mobile/web/test/"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "# fail 0" in proc.stdout


# -- the real Gemma 3 270M ------------------------------------------------------------------------


@pytest.mark.real_model
def test_gemma_270m_web_bundle_gives_native_llama_cpps_greedy_tokens_in_chromium(gemma_270m: Path,
                                                                                   tmp_path: Path) -> None:
    """The default web build of the real model: the page's greedy tokens equal native llama.cpp's.

    The issue's rule and nothing looser: identical, or a divergence at a native near-tie (top two
    logits < 0.1 apart) where the browser took the runner-up. The fp32 tie-break that K-quants need
    (see compare_greedy) must not be what lets this pass.
    """
    browser()
    out = tmp_path / "gemma-web"
    result = edgepack("build", gemma_270m, "--target", "web", "--out", out, "--json")
    assert result.exit_code == 0, result.stderr[-3000:]
    record = verification(out / "web", "web-wllama")
    assert record["quant"] == "Q8_0"  # the web target's default GGUF type
    assert record["level"] == "executed" and record["passed"] is True and record["failures"] == []
    divergences = [n for n in record["notes"] if "diverge" in n]
    assert record["greedy_match"] is True or all("at a near-tie" in n for n in divergences), record["notes"]
    assert not any("fp32 source model" in n for n in record["notes"]), record["notes"]
    [row] = [r for r in result.json()["artifacts"] if r["artifact"] == "web/index.html"]
    assert row["tokens_per_s"] > 0


# -- the task contract in the page ----------------------------------------------------------------

EVAL_ROWS = [
    {"instruction": "Classify.", "input": "my card got declined", "output": "billing"},
    {"instruction": "Classify.", "input": "where is my parcel", "output": "shipping"},
    {"instruction": "Classify.", "input": "cancel it please", "output": "cancel"},
]


@pytest.mark.parametrize("constrained", [True, False], ids=["constrained", "unconstrained"])
def test_the_page_answers_the_eval_set_itself_and_applies_the_labels_grammar(
        tiny_gemma: Path, tmp_path: Path, constrained: bool) -> None:
    """The random tiny model never produces a label by itself: validity 1.0 proves the page's grammar."""
    browser()
    eval_path = tmp_path / "eval.jsonl"
    eval_path.write_text("".join(json.dumps(r) + "\n" for r in EVAL_ROWS))
    out = tmp_path / "out"
    args = ["build", tiny_gemma, "--target", "web", "--quant", "F32", "--out", out, "--eval", eval_path,
            "--task", "labels", "--json", *(["--constrained"] if constrained else ["--no-gate"])]
    result = edgepack(*args)
    assert result.exit_code == (0 if constrained else ExitCode.GATE_FAILED), result.stderr[-3000:]
    page = next(r for r in result.json()["artifacts"] if r["artifact"] == "web/index.html")
    native = next(r for r in result.json()["artifacts"] if r["artifact"].endswith(".gguf"))
    assert page["task"]["rows"] == 3 and page["task"]["constrained"] is constrained
    assert page["task"]["validity"] == (1.0 if constrained else 0.0)
    assert page["task"]["latency_ms_p50"] > 0
    # Same GGUF, same greedy decoding: the page's answers agree with native llama.cpp's accuracy.
    assert page["task"]["exact_match"] == native["task"]["exact_match"]
    record = verification(out / "web", "web-wllama")
    assert any("answered in Chromium by the page's EdgeModel.run" in n for n in record["notes"])
    # Tiny Gemma has sliding-window layers: without a full-size window cache llama-server (inside wllama)
    # re-evaluates every prompt whole; with it, the rows after the first reuse the shared "<bos>Classify." prefix.
    assert json.loads((out / "web" / "edgepack.json").read_text())["runtimes"]["wllama"]["full_window_cache"] is True
    [reuse] = [n for n in record["notes"] if n.startswith("the page evaluated ")]
    evaluated, total = map(int, re.findall(r"\d+", reuse)[:2])
    assert evaluated < total, reuse


def _gemma3(layers: int, kv_heads: int, window: int) -> dict:
    return {"sliding_window": window, "num_key_value_heads": kv_heads, "head_dim": 256, "num_hidden_layers": layers,
            "layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)]}


@pytest.mark.parametrize(("config", "context", "full"), [
    (_gemma3(18, 1, 512), 512, True),  # Gemma 3 270M at a contract-sized context: nothing beyond the window
    (_gemma3(18, 1, 512), 4096, True),  # 15 local layers x 3,584 tokens x 1 KB = 55 MB
    (_gemma3(34, 4, 1024), 4096, False),  # Gemma 3 4B: 29 x 3,072 x 4 KB = 365 MB, more than a tab should spend
    ({"num_hidden_layers": 16, "num_key_value_heads": 8, "head_dim": 64}, 512, False),  # no sliding window
], ids=["270m-512", "270m-4096", "4b-4096", "llama"])
def test_a_full_window_cache_is_asked_for_only_where_it_costs_little_memory(
        config: dict, context: int, full: bool) -> None:
    from packager.window_cache import full_window_cache

    assert full_window_cache(config, context) is full


UNICODE_ROWS = [{"instruction": "Classify.", "input": text, "output": label}
                for text, label in [("my card got declined", "café"), ("where is my parcel", "naïve"),
                                    ("cancel it please", "über"), ("fine", "ok"), ("east", "東京"), ("llama", "🦙")]]


def test_a_constrained_build_with_non_ascii_labels_passes_its_browser_check(tiny_gemma: Path, tmp_path: Path) -> None:
    """Multi-byte labels reach wllama's grammar intact and come back as the labels, in the page and natively.

    Tiny Gemma, not tiny Llama: the random byte-level Llama greedily continues the check prompt
    with a lone continuation byte, which wllama cannot return at all (see mobile/web/runtimes/wllama.js).
    """
    browser()
    eval_path = tmp_path / "eval.jsonl"
    eval_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in UNICODE_ROWS), encoding="utf-8")
    result = edgepack("build", tiny_gemma, "--target", "web", "--quant", "F16", "--out", tmp_path / "out",
                      "--eval", eval_path, "--task", "labels", "--constrained", "--json")
    assert result.exit_code == 0, result.stderr[-3000:]
    page = next(r for r in result.json()["artifacts"] if r["artifact"] == "web/index.html")
    native = next(r for r in result.json()["artifacts"] if r["artifact"].endswith(".gguf"))
    assert page["task"]["constrained"] is True and page["task"]["validity"] == 1.0
    assert page["task"]["exact_match"] == native["task"]["exact_match"]
    labels = [r["output"] for r in UNICODE_ROWS]
    assert all(m["got"] in labels for m in page["task"]["mismatches"]), page["task"]["mismatches"]


@pytest.mark.parametrize(("pieces", "expected"), [
    ([b"ok", b" caf", b"\xc3", b"\xa9"], 4),  # é split over two byte tokens: whole after the second
    ([b" b", b"\xbc", b"x"], 1),  # a lone continuation byte: wllama cannot return it
    ([b"a", b"\xf0\x9f", b"\xa6"], 1),  # 🦙 still half-written at the end: stop before it
    ([b"\xff"], 0),
])
def test_the_page_check_stops_before_bytes_wllama_cannot_return(pieces: list[bytes], expected: int) -> None:
    assert returnable_tokens(pieces) == expected
