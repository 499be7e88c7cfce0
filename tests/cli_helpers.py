"""Running the edgepack CLI in-process (click's runner) and as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from packager.cli import main


def strict_loads(text: str) -> Any:
    """json.loads as JavaScript's JSON.parse reads it: NaN, Infinity and -Infinity are errors, not numbers."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """stdout parsed as strict JSON (every --json output must be)."""
        return strict_loads(self.stdout)


def edgepack(*args: str | Path) -> CliResult:
    """Run `edgepack ARGS` in-process and return its exit code and outputs."""
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)


def edgepack_subprocess(*args: str | Path, cwd: Path | None = None, exe: str | None = None) -> CliResult:
    """Run edgepack as a separate process, exactly as a user or CI would."""
    cmd = [exe] if exe else [sys.executable, "-m", "packager.cli"]
    proc = subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, cwd=cwd, check=False)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def leftovers(parent: Path, name: str) -> list[str]:
    """Anything a build left in parent for output `name` (finished, partial or old)."""
    return sorted(p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}."))
