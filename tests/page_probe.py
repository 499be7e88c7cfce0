"""Reading a static page (report.html) as headless Chromium renders it: a probe function runs in the page.

The browser, node and playwright-core are the web target's (find_browser_tools), launched with its flags.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from external_tools import missing, require_tool

from targets.web.verify_browser import CHROMIUM_ARGS, BrowserTools, find_browser_tools

DRIVER = Path(__file__).with_name("page_probe.mjs")


@dataclass(frozen=True)
class PageProbe:
    """What the page did while loading (errors, failed requests) and what the probe returned."""

    problems: list[str]
    result: Any


def browser_tools() -> BrowserTools:
    """Return the browser tools, or skip the test (fail it under EDGEPACK_REQUIRE_TOOLS=1) when any is missing."""
    require_tool("node")
    require_tool("chromium")
    tools = find_browser_tools()
    if not isinstance(tools, BrowserTools):
        missing("playwright-core")
    assert isinstance(tools, BrowserTools)
    return tools


def probe_page(page: Path, probe: str, viewport: tuple[int, int] = (1280, 900)) -> PageProbe:
    """Open `page` from disk, run `probe` (the source of a JavaScript function, maybe async) once it has
    loaded, and return what the function returned (JSON) with the page's problems."""
    tools = browser_tools()
    with tempfile.TemporaryDirectory(prefix="edgepack-probe-") as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({
            "playwright": str(tools.vendor.playwright_entry), "chromium": tools.chromium, "args": list(CHROMIUM_ARGS),
            "url": page.resolve().as_uri(), "probe": probe, "viewport": {"width": viewport[0], "height": viewport[1]},
        }), encoding="utf-8")
        proc = subprocess.run([tools.node, str(DRIVER), str(job)], capture_output=True, text=True, timeout=120,
                              check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    return PageProbe(data["problems"], data["result"])
