"""report.html renders in headless Chromium: plots with data, no console errors, and a size plot whose points sit at
each artifact's shipped size with labels that do not cover each other."""

from __future__ import annotations

import itertools
from pathlib import Path
from urllib.parse import unquote

import pytest
from cli_helpers import edgepack
from page_probe import probe_page

from packager.artifact_size import artifact_files, artifact_megabytes
from packager.report_html import LABEL_ID, PLOT_AREA_ID, POINT_ID, render_html
from packager.target import TargetResult
from packager.verify.metrics import FidelityMetrics
from packager.verify.result import VerificationResult
from packager.verify.task_eval import TaskMetrics

PAGE_SUMMARY = """() => ({
  title: document.title,
  tables: document.querySelectorAll("#report table").length,
  figures: [...document.querySelectorAll("#plots figure")].map((f) => {
    const image = f.querySelector("img, svg");
    const box = image.getBoundingClientRect();
    return { caption: f.querySelector("figcaption").textContent, kind: image.tagName.toLowerCase(),
             width: box.width, height: box.height, complete: image.complete ?? true,
             naturalWidth: image.naturalWidth ?? null, bytes: image.outerHTML.length };
  }),
})"""

# Every size-plot element's box as the browser laid it out (y grows downwards).
SIZE_PLOT_BOXES = f"""() => {{
  const box = (e) => {{ const r = e.getBoundingClientRect();
                       return {{ left: r.left, right: r.right, top: r.top, bottom: r.bottom }}; }};
  const figure = document.querySelector("figure[data-x-range-mb]");
  const all = (prefix) => Object.fromEntries([...document.querySelectorAll(`[id^="${{prefix}}"]`)]
    .map((e) => [e.id.slice(prefix.length), box(e)]));
  return {{
    xRange: figure?.dataset.xRangeMb.split(" ").map(Number) ?? null,
    svg: figure ? box(figure.querySelector("svg")) : null,
    area: figure ? box(document.getElementById("{PLOT_AREA_ID}")) : null,
    points: all("{POINT_ID}"),
    labels: all("{LABEL_ID}"),
  }};
}}"""

MB = 2**20


def test_report_html_renders_with_plots_and_no_console_errors(tiny_gemma: Path, tmp_path: Path) -> None:
    eval_path = tmp_path / "eval.jsonl"
    eval_path.write_text('{"instruction": "Say.", "input": "hi", "output": "x"}\n'
                         '{"instruction": "Say.", "input": "bye", "output": "y"}\n')
    out = tmp_path / "out"
    result = edgepack("build", tiny_gemma, "--target", "raspberry-pi", "--quant", "F32", "--out", out,
                      "--eval", eval_path, "--task", "text")
    assert result.exit_code == 0, result.stderr
    page = probe_page(out / "report.html", PAGE_SUMMARY)
    assert page.problems == []
    summary = page.result
    assert summary["title"] == "edgepack build: tiny-gemma3"
    assert [(f["caption"], f["kind"]) for f in summary["figures"]] == [("Accuracy vs size", "svg"),
                                                                      ("Latency distribution", "img")]
    for figure in summary["figures"]:
        assert figure["complete"] and figure["width"] > 300 and figure["height"] > 100
        assert figure["bytes"] > 5000
    assert summary["figures"][1]["naturalWidth"] > 300
    assert summary["tables"] >= 2


@pytest.mark.parametrize("flag", ["--json"])
def test_report_html_exists_next_to_report_md(tiny_llama: Path, tmp_path: Path, flag: str) -> None:
    out = tmp_path / "out"
    result = edgepack("build", tiny_llama, "--target", "raspberry-pi", "--quant", "F16", "--out", out, flag)
    assert result.exit_code == 0, result.stderr
    html = (out / "report.html").read_text()
    assert "<table>" in html and "Fidelity vs size" in html and "raspberry-pi/model-F16.gguf" in html


def _ship(root: Path, files: dict[str, float]) -> float:
    """Write sparse files of the given MiB under root; return their total MiB."""
    for name, megabytes in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            f.truncate(int(megabytes * MB))
    return sum(files.values())


def test_an_artifact_is_every_file_that_ships_as_it(tmp_path: Path) -> None:
    _ship(tmp_path, {"a/model.pte": 0.5, "a/model.ptd": 2.0, "a/model-other.pte": 1.0, "a/tokenizer.json": 1.0,
                     "b/model.mlpackage/Manifest.json": 0.25, "b/model.mlpackage/Data/weights/weight.bin": 3.0})
    assert [p.name for p in artifact_files(tmp_path, "a/model.pte")] == ["model.ptd", "model.pte"]
    assert artifact_megabytes(tmp_path, "a/model.pte") == 2.5
    assert artifact_megabytes(tmp_path, "b/model.mlpackage") == 3.25
    assert artifact_megabytes(tmp_path, "b/model.mlpackage (Core ML)") == 3.25  # how it was checked, same files
    assert artifact_megabytes(tmp_path, "b/model-fp16.mlpackage (fp16 conversion)") is None  # not in the build


def test_an_artifact_whose_verification_names_what_ships_is_that_size(tmp_path: Path) -> None:
    _ship(tmp_path, {"web/index.html": 0.01, "web/model/model-Q8_0.gguf": 4.0, "web/vendor/wllama/wllama.wasm": 1.5,
                     "web/vendor/web-llm/lib.js": 9.0})
    assert artifact_megabytes(tmp_path, "web/index.html") == pytest.approx(0.01, abs=1e-4)  # the page alone
    # The page's verification says what a browser downloads: the model folder and the wllama runtime.
    assert artifact_megabytes(tmp_path, "web/index.html", ["web/model", "web/vendor/wllama"]) == 5.5


def _verified(artifact: str, fmt: str, exact_match: float) -> VerificationResult:
    task = TaskMetrics(rows=50, exact_match=exact_match, validity=1.0, agreement=0.9, baseline_exact_match=0.86,
                       latency_ms_p50=40, latency_ms_p95=55, latency_ms_p99=60, tokens_per_s=30, constrained=True,
                       mismatches=[], latencies_ms=[40.0, 45.0, 60.0])
    metrics = FidelityMetrics(positions=64, top1=0.95, top1_decisive=0.97, decisive_positions=60, kl=0.02,
                              ppl_ref=9.0, ppl=9.3)
    return VerificationResult(artifact, fmt, "q4", "executed", "runtime", metrics=metrics, task=task)


def _intersect(a: dict[str, float], b: dict[str, float]) -> bool:
    return a["left"] < b["right"] and b["left"] < a["right"] and a["top"] < b["bottom"] and b["top"] < a["bottom"]


def test_size_plot_puts_each_artifact_at_its_shipped_size_and_no_label_covers_another(tmp_path: Path) -> None:
    # Sizes 0.3 MB apart and accuracies 0.01 apart: labels beside their points would pile onto each other.
    root = tmp_path / "out"
    true_mb = {
        "raspberry-pi/model-Q4_K_M.gguf": _ship(root, {"raspberry-pi/model-Q4_K_M.gguf": 10.0}),
        "react-native/model-Q4_K_M.gguf": _ship(root, {"react-native/model-Q4_K_M.gguf": 10.0}),
        # ExecuTorch: a small program whose weights are in the .ptd beside it; both ship.
        "android/model-8da4w.pte": _ship(root, {"android/model-8da4w.pte": 0.25, "android/model-8da4w.ptd": 10.05}),
        # Core ML: a package is a folder.
        "ios/model-int4.mlpackage": _ship(root, {
            "ios/model-int4.mlpackage/Manifest.json": 0.001,
            "ios/model-int4.mlpackage/Data/com.apple.CoreML/model.mlmodel": 0.2,
            "ios/model-int4.mlpackage/Data/com.apple.CoreML/weights/weight.bin": 10.4}),
    }
    true_mb["ios/model-int4.mlpackage (Core ML)"] = true_mb["ios/model-int4.mlpackage"]  # the same package, run
    results = [
        TargetResult("raspberry-pi", verifications=[_verified("raspberry-pi/model-Q4_K_M.gguf", "gguf", 0.80)]),
        TargetResult("react-native", verifications=[_verified("react-native/model-Q4_K_M.gguf", "gguf", 0.80)]),
        TargetResult("android", verifications=[_verified("android/model-8da4w.pte", "pte", 0.81)]),
        TargetResult("ios", verifications=[_verified("ios/model-int4.mlpackage", "mlpackage", 0.79),
                                           _verified("ios/model-int4.mlpackage (Core ML)", "mlpackage", 0.79)]),
    ]
    page = root / "report.html"
    page.write_text(render_html("# edgepack build: tiny\n\nNotes.\n", results, root, "edgepack build: tiny"))

    probe = probe_page(page, SIZE_PLOT_BOXES)
    assert probe.problems == []
    plot = probe.result
    assert plot["area"] is not None, "no inline size plot with a plotting area in the page"
    assert {unquote(k) for k in plot["points"]} == set(true_mb)
    assert {unquote(k) for k in plot["labels"]} == set(true_mb)

    (x0, x1), area = plot["xRange"], plot["area"]
    px_per_mb = (area["right"] - area["left"]) / (x1 - x0)
    for key, point in plot["points"].items():
        drawn_mb = x0 + ((point["left"] + point["right"]) / 2 - area["left"]) / px_per_mb
        assert drawn_mb == pytest.approx(true_mb[unquote(key)], abs=1 / px_per_mb), unquote(key)  # within a pixel

    labels = plot["labels"]
    for (a, box_a), (b, box_b) in itertools.combinations(labels.items(), 2):
        assert not _intersect(box_a, box_b), f"labels {unquote(a)} and {unquote(b)} overlap: {box_a} {box_b}"
    for name, label in labels.items():
        assert label["right"] - label["left"] > 20 and label["bottom"] - label["top"] > 5  # drawn text, not empty
        assert all(not _intersect(label, point) for point in plot["points"].values()), f"{unquote(name)} covers a point"
        svg = plot["svg"]
        assert svg["left"] <= label["left"] and label["right"] <= svg["right"]
        assert svg["top"] <= label["top"] and label["bottom"] <= svg["bottom"]
