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
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from packager.errors import UnsupportedError
from packager.fingerprint import options_digest

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


def pinned_versions() -> dict[str, str]:
    """Return {package: exact version} as pinned in the shipped package.json."""
    data = json.loads((MANIFEST_DIR / "package.json").read_text(encoding="utf-8"))
    return dict(data["dependencies"])


def _install_key() -> str:
    lock = (MANIFEST_DIR / "package-lock.json").read_text(encoding="utf-8")
    return options_digest("web-vendor", lock)[:16]


def default_root() -> Path:
    """Where `install` puts node_modules: $EDGEPACK_WEB_VENDOR, else ~/.cache/edgepack/web-vendor/<lock digest>.

    Keyed by the lock file's digest, so a version bump installs beside the old one instead of
    silently mixing versions. Deliberately not under $EDGEPACK_CACHE: tests point that at fresh
    folders, and the runtimes are a machine-wide install, not a per-build stage.
    """
    explicit = os.environ.get("EDGEPACK_WEB_VENDOR")
    if explicit:
        return Path(explicit)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgepack" / "web-vendor" / _install_key()


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


def _check(root: Path) -> str | None:
    """Return why root is not a usable install of the pinned versions, or None if it is."""
    modules = root / "node_modules"
    for package, version in pinned_versions().items():
        manifest = modules / package / "package.json"
        if not manifest.is_file():
            return f"{package} is not installed in {modules}"
        found = json.loads(manifest.read_text(encoding="utf-8")).get("version")
        if found != version:
            return f"{package} {found} is installed in {modules}, edgepack pins {version}"
    for package, files in BUNDLE_FILES.items():
        for src_rel in files:
            if not (modules / package / src_rel).is_file():
                return f"{modules / package / src_rel} is missing"
    return None


def find_vendor() -> WebVendor:
    """Return the installed runtimes, or raise UnsupportedError saying how to install them."""
    root = default_root()
    problem = _check(root)
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


def install(root: Path | None = None) -> Path:
    """Install the pinned packages with `npm ci --ignore-scripts` into root (atomically); return root."""
    root = root or default_root()
    if _check(root) is None:
        return root
    npm = shutil.which("npm")
    if npm is None:
        raise UnsupportedError("npm is not installed (apt-get install nodejs npm); it is needed once to install "
                               "the pinned web runtimes.")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(MANIFEST_DIR / name, staging / name)
        # --ignore-scripts: no package may download anything else (playwright's browsers, say).
        subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=staging, check=True)
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    vendor_or_none.cache_clear()
    problem = _check(root)
    if problem is not None:
        raise UnsupportedError(f"npm ci finished but {problem}")
    return root


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "path"
    if command == "install":
        root = install()
        print(root)
        return 0
    if command == "path":
        problem = _check(default_root())
        print(default_root())
        if problem:
            print(f"not installed: {problem}. Run: {INSTALL_COMMAND}", file=sys.stderr)
            return 1
        return 0
    print("usage: python -m targets.web.vendor [install|path]", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
