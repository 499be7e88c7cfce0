"""The browser runtimes a web bundle ships (wllama, WebLLM) and the browser driver that verifies it.

They come from npm, pinned exactly in targets/web/data/web-vendor/package.json (+ package-lock.json
with integrity hashes). A build never touches the network: `python -m targets.web.vendor install`
(run by scripts/setup.sh) installs them once into a cache folder, and every build copies files
from there. A bundle loads nothing from a CDN at run time.

    .venv/bin/python -m targets.web.vendor install     # npm ci --ignore-scripts into the cache
    .venv/bin/python -m targets.web.vendor path        # print where they are
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from packager.errors import UnsupportedError
from packager.npm_vendor import NpmVendor

MANIFEST_DIR = Path(__file__).resolve().parent / "data" / "web-vendor"
WLLAMA = "@wllama/wllama"
WEBLLM = "@mlc-ai/web-llm"
PLAYWRIGHT = "playwright-core"
INSTALL_COMMAND = ".venv/bin/python -m targets.web.vendor install"

# What a bundle copies from each package (source path inside the package -> path in the bundle's
# vendor/<runtime>/ folder). wllama 3.x is one ES module plus one WASM build (threads and WebGPU
# are switched at run time); WebLLM's lib/index.js is a self-contained ES module bundle.
BUNDLE_FILES: dict[str, dict[str, str]] = {
    WLLAMA: {"esm/index.js": "index.js", "esm/wasm/wllama.wasm": "wasm/wllama.wasm", "LICENCE": "LICENSE"},
    WEBLLM: {"lib/index.js": "index.js", "LICENSE": "LICENSE"},
}


NPM = NpmVendor("web-vendor", MANIFEST_DIR, "EDGEPACK_WEB_VENDOR",
                required_files=tuple(f"{package}/{src}" for package, files in BUNDLE_FILES.items() for src in files),
                install_command=INSTALL_COMMAND)


@dataclass(frozen=True)
class WebVendor:
    """An installed node_modules folder holding the pinned runtimes."""

    node_modules: Path

    def package_dir(self, package: str) -> Path:
        return self.node_modules / package

    def version(self, package: str) -> str:
        data = json.loads((self.package_dir(package) / "package.json").read_text(encoding="utf-8"))
        return str(data["version"])

    def copy_runtime(self, package: str, dest: Path) -> list[Path]:
        """Copy the files a bundle needs from `package` into dest; return the written paths."""
        written = []
        for src_rel, dest_rel in BUNDLE_FILES[package].items():
            target = dest / dest_rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.package_dir(package) / src_rel, target)
            written.append(target)
        return written

    @property
    def playwright_entry(self) -> Path:
        return self.package_dir(PLAYWRIGHT) / "index.mjs"


def find_vendor() -> WebVendor:
    """Return the installed runtimes, or raise UnsupportedError saying how to install them."""
    root = NPM.default_root()
    problem = NPM.problem(root)
    if problem is not None:
        raise UnsupportedError(
            f"the web target copies wllama / WebLLM from a local npm install and {problem}. Install the "
            f"pinned versions once (needs npm and the npm registry, not needed at build time): {INSTALL_COMMAND}"
        )
    return WebVendor(root / "node_modules")


@cache
def vendor_or_none() -> WebVendor | None:
    try:
        return find_vendor()
    except UnsupportedError:
        return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(NPM.main(sys.argv[1:], "targets.web.vendor"))
