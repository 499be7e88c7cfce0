"""report.html renders in headless Chromium: its plots are real images with data, no console errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cli_helpers import edgepack
from external_tools import missing, require_tool

from targets.web.vendor import PLAYWRIGHT
from targets.web.verify_browser import BrowserTools, find_browser_tools

PAGE_CHECK = r"""
const { chromium } = require(process.argv[2]);
(async () => {
  const browser = await chromium.launch({ executablePath: process.argv[3], args: [
    "--headless=new", "--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"] });
  const page = await browser.newPage();
  const problems = [];
  page.on("console", (m) => { if (m.type() === "error") problems.push("console: " + m.text()); });
  page.on("pageerror", (e) => problems.push("pageerror: " + e.message));
  page.on("requestfailed", (r) => problems.push("requestfailed: " + r.url()));
  await page.goto("file://" + process.argv[4]);
  const images = await page.$$eval("#plots img", (imgs) => imgs.map((i) => ({
    alt: i.alt, width: i.naturalWidth, height: i.naturalHeight, complete: i.complete,
    dataLength: i.src.length, isPng: i.src.startsWith("data:image/png;base64,") })));
  const tables = await page.$$eval("#report table", (t) => t.length);
  const title = await page.title();
  await browser.close();
  console.log(JSON.stringify({ problems, images, tables, title }));
})().catch((e) => { console.error(e); process.exit(1); });
"""


def _tools() -> BrowserTools:
    require_tool("node")
    require_tool("chromium")
    tools = find_browser_tools()
    if not isinstance(tools, BrowserTools):
        missing("playwright-core")
    assert isinstance(tools, BrowserTools)
    return tools


def test_report_html_renders_with_plots_and_no_console_errors(tiny_gemma: Path, tmp_path: Path) -> None:
    tools = _tools()
    eval_path = tmp_path / "eval.jsonl"
    eval_path.write_text('{"instruction": "Say.", "input": "hi", "output": "x"}\n'
                         '{"instruction": "Say.", "input": "bye", "output": "y"}\n')
    out = tmp_path / "out"
    result = edgepack("build", tiny_gemma, "--target", "raspberry-pi", "--quant", "F32", "--out", out,
                      "--eval", eval_path, "--task", "text")
    assert result.exit_code == 0, result.stderr
    script = tmp_path / "check.cjs"
    script.write_text(PAGE_CHECK)
    proc = subprocess.run([tools.node, str(script), str(tools.vendor.package_dir(PLAYWRIGHT)), tools.chromium,
                           str(out / "report.html")], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = json.loads(proc.stdout.strip().splitlines()[-1])
    assert page["problems"] == []
    assert page["title"] == "edgepack build: tiny-gemma3"
    assert [i["alt"] for i in page["images"]] == ["Accuracy vs size", "Latency distribution"]
    for image in page["images"]:
        assert image["isPng"] and image["complete"] and image["width"] > 300 and image["height"] > 100
        assert image["dataLength"] > 5000
    assert page["tables"] >= 2


@pytest.mark.parametrize("flag", ["--json"])
def test_report_html_exists_next_to_report_md(tiny_llama: Path, tmp_path: Path, flag: str) -> None:
    out = tmp_path / "out"
    result = edgepack("build", tiny_llama, "--target", "raspberry-pi", "--quant", "F16", "--out", out, flag)
    assert result.exit_code == 0, result.stderr
    html = (out / "report.html").read_text()
    assert "<table>" in html and "Fidelity vs size" in html and "raspberry-pi/model-F16.gguf" in html
