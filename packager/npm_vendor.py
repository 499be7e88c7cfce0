"""Pinned npm packages a target needs on the build host, installed once into a cache folder.

A target ships a package.json with exact versions and a package-lock.json with integrity hashes;
`install` runs `npm ci --ignore-scripts` on them into a staging folder beside the cache folder and
renames it into place only when complete, so an interrupted install never looks finished. Builds
never touch the network: they read the installed files. Targets use this for runtimes they copy
into bundles (a browser runtime) and for tools that check generated code (a compiler, a linter).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from packager.errors import EdgepackError, UnsupportedError
from packager.fingerprint import options_digest


@dataclass(frozen=True)
class NpmVendor:
    """One pinned npm install: where its package.json + package-lock.json live and where it is installed."""

    # Cache folder name (~/.cache/edgepack/<name>/<lock digest>), also the digest's salt.
    name: str
    manifest_dir: Path
    # An environment variable that, when set, names the install folder instead.
    env_var: str
    # Files (relative to node_modules) that must exist for the install to be usable.
    required_files: tuple[str, ...] = ()
    # The command that installs it, quoted in messages.
    install_command: str = ""

    def pinned_versions(self) -> dict[str, str]:
        """Return {package: exact version} as pinned in the shipped package.json."""
        data = json.loads((self.manifest_dir / "package.json").read_text(encoding="utf-8"))
        return dict(data["dependencies"])

    def default_root(self) -> Path:
        """Return $env_var, else ~/.cache/edgepack/<name>/<lock digest>.

        Keyed by the lock file's digest, so a version bump installs beside the old one instead of
        silently mixing versions. Deliberately not under $EDGEPACK_CACHE: tests point that at fresh
        folders, and these packages are a machine-wide install, not a per-build stage.
        """
        explicit = os.environ.get(self.env_var)
        if explicit:
            return Path(explicit)
        lock = (self.manifest_dir / "package-lock.json").read_text(encoding="utf-8")
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return base / "edgepack" / self.name / options_digest(self.name, lock)[:16]

    def problem(self, root: Path | None = None) -> str | None:
        """Return why root is not a usable install of the pinned versions, or None if it is."""
        modules = (root or self.default_root()) / "node_modules"
        for package, version in self.pinned_versions().items():
            manifest = modules / package / "package.json"
            if not manifest.is_file():
                return f"{package} is not installed in {modules}"
            found = json.loads(manifest.read_text(encoding="utf-8")).get("version")
            if found != version:
                return f"{package} {found} is installed in {modules}, edgepack pins {version}"
        for rel in self.required_files:
            if not (modules / rel).is_file():
                return f"{modules / rel} is missing"
        return None

    def install(self, root: Path | None = None) -> Path:
        """Install the pinned packages with `npm ci --ignore-scripts` into root (atomically); return root."""
        root = root or self.default_root()
        if self.problem(root) is None:
            return root
        npm = shutil.which("npm")
        if npm is None:
            raise UnsupportedError(f"npm is not installed (apt-get install nodejs npm); it is needed once to install "
                                   f"{', '.join(self.pinned_versions())} ({self.install_command}).")
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
        try:
            for name in ("package.json", "package-lock.json"):
                shutil.copyfile(self.manifest_dir / name, staging / name)
            # --ignore-scripts: no package may download anything else (playwright's browsers, say).
            subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                           cwd=staging, check=True)
            if root.exists():
                shutil.rmtree(root)
            staging.rename(root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        problem = self.problem(root)
        if problem is not None:
            raise UnsupportedError(f"npm ci finished but {problem}")
        return root

    def main(self, argv: list[str], module: str) -> int:
        """`python -m MODULE install|path`: install, or print the install folder (exit 1 when not installed)."""
        command = argv[0] if argv else "path"
        try:
            if command == "install":
                print(self.install())
                return 0
        except EdgepackError as exc:
            print(f"{module} install: {exc.message}", file=sys.stderr)
            return int(exc.exit_code)
        if command == "path":
            root = self.default_root()
            print(root)
            problem = self.problem(root)
            if problem:
                print(f"not installed: {problem}. Run: {self.install_command}", file=sys.stderr)
                return 1
            return 0
        print(f"usage: python -m {module} [install|path]", file=sys.stderr)
        return 2
