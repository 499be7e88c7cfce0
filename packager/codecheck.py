"""Checking generated code with real tools at build time (bash -n, shellcheck, py_compile, ...).

A missing tool is reported as `skipped` with the reason, never as passed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from packager.atomic import write_text_atomically
from packager.fingerprint import cache_root, file_sha256, options_digest
from packager.target import ScaffoldCheck

Checker = Callable[[Path], tuple[str, str]]


def _run(cmd: list[str], timeout: int = 60) -> tuple[str, str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    output = (proc.stdout + proc.stderr).strip()
    return ("passed" if proc.returncode == 0 else "failed"), output[:500]


def _tool(name: str, build: Callable[[str, Path], list[str]]) -> tuple[str, Checker]:
    def check(path: Path) -> tuple[str, str]:
        exe = shutil.which(name)
        if exe is None:
            return "skipped", f"{name} is not installed on the build host"
        return _run(build(exe, path))

    return name, check


def _systemd_verify(path: Path) -> tuple[str, str]:
    """systemd-analyze verify, with any output at all counted as failure (bad values only warn).

    verify insists that ExecStart's binary exists on this host; only that path is swapped for a
    stand-in in a temporary copy, every other line is checked as shipped.
    """
    exe = shutil.which("systemd-analyze")
    if exe is None:
        return "skipped", "systemd-analyze is not installed on the build host"
    text = path.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="edgepack-unit-") as tmp:
        stand_in = Path(tmp) / "stand-in"
        stand_in.write_text("#!/bin/sh\nexit 0\n")
        stand_in.chmod(0o755)
        lines = []
        for line in text.splitlines():
            if line.startswith("ExecStart="):
                binary = line.removeprefix("ExecStart=").lstrip("-@:+!").split(" ", 1)[0]
                line = line.replace(binary, str(stand_in), 1)
            lines.append(line)
        copy = Path(tmp) / path.name
        copy.write_text("\n".join(lines) + "\n", encoding="utf-8")
        proc = subprocess.run([exe, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "SYSTEMD_LOG_COLOR": "0"}, check=False)
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0 or output:
        return "failed", output[:500] or f"exit code {proc.returncode}"
    return "passed", ""


def _py_compile(path: Path) -> tuple[str, str]:
    try:
        compile(path.read_text(encoding="utf-8"), str(path), "exec")
    except SyntaxError as exc:
        return "failed", f"line {exc.lineno}: {exc.msg}"
    return "passed", ""


def _json_parse(path: Path) -> tuple[str, str]:
    """Strict JSON (no NaN/Infinity), as package.json and app.json are read by npm and Metro."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    try:
        json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)
    except ValueError as exc:  # JSONDecodeError is a ValueError
        return "failed", str(exc)
    return "passed", ""


def _yaml_parse(path: Path) -> tuple[str, str]:
    """A CI workflow parses as one YAML mapping (what a CI service reads first)."""
    import yaml

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        return "failed", str(exc)[:500]
    return ("passed", "") if isinstance(document, dict) else ("failed", "not a YAML mapping")


# Which checks apply to which generated file, by suffix.
CHECKS_BY_SUFFIX: dict[str, list[tuple[str, Checker]]] = {
    ".sh": [
        _tool("bash", lambda exe, p: [exe, "-n", str(p)]),
        _tool("shellcheck", lambda exe, p: [exe, "--severity=style", str(p)]),
    ],
    ".py": [("py_compile", _py_compile)],
    ".service": [("systemd-analyze verify", _systemd_verify)],
    ".json": [("json", _json_parse)],
    ".yml": [("yaml", _yaml_parse)],
}


def tree_sitter_errors(text: str, language: str) -> list[str]:
    """Return 'line N: ...' for every syntax error tree-sitter's `language` grammar finds (empty: it parses).

    For languages whose compiler cannot run here (Swift) or as a fast first check (Kotlin).
    """
    from tree_sitter_language_pack import get_parser

    tree = get_parser(language).parse(text.encode("utf-8"))
    problems: list[str] = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            kind = "missing " + node.type if node.is_missing else "unexpected text"
            problems.append(f"line {node.start_point[0] + 1}: {kind}")
        elif node.has_error:
            stack.extend(node.children)
    return sorted(problems)


def remembered_checks(kind: str, paths: list[Path], root: Path,
                      check: Callable[[list[Path], Path], list[ScaffoldCheck]]) -> list[ScaffoldCheck]:
    """`check(paths, root)`, or what it said when it last passed every one of files with these names and bytes.

    A warm build renders the same code again; parsing and linting it (tree-sitter, ktlint, swift checks)
    took seconds of every rebuild. Only an all-passed result without details is remembered: a failure, a
    skipped tool or a detail (which may name this build's paths) is checked again next time.
    """
    files = [(p.relative_to(root).as_posix(), file_sha256(p)) for p in sorted(paths)]
    record = cache_root() / "checked" / f"{options_digest('scaffold', kind, files)[:32]}.json"
    try:
        return [ScaffoldCheck(**item) for item in json.loads(record.read_text(encoding="utf-8"))]
    except (OSError, ValueError, TypeError):
        pass
    checks = check(paths, root)
    # A detail may name this build's own paths; replayed into another build it would make the bundles differ.
    if checks and all(c.status == "passed" and not c.detail for c in checks):
        write_text_atomically(record, json.dumps([vars(c) for c in checks]))
    return checks


def check_generated_files(paths: list[Path], root: Path) -> list[ScaffoldCheck]:
    """Run every applicable checker on each generated file (remembered while all pass: `remembered_checks`)."""
    return remembered_checks("generated", paths, root, _check_generated_files)


def _check_generated_files(paths: list[Path], root: Path) -> list[ScaffoldCheck]:
    results: list[ScaffoldCheck] = []
    for path in paths:
        for tool, check in CHECKS_BY_SUFFIX.get(path.suffix, []):
            status, detail = check(path)
            results.append(ScaffoldCheck(path.relative_to(root).as_posix(), tool, status, detail))
    return results
