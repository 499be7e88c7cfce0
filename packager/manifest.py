"""edgepack.json per target, manifest.json and SHA256SUMS per build.

The manifest is the machine-readable truth of a build: inputs, options, every file with its size
and sha256, each artifact's verification level and numbers, and whether its gate passed.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path
from typing import Any

from packager import __version__
from packager.errors import BadInputError
from packager.fingerprint import file_sha256
from packager.strict_json import json_text

MANIFEST_SCHEMA_VERSION = 1


def file_entries(folder: Path, files: list[str]) -> list[dict[str, Any]]:
    """Return [{path, bytes, sha256}] for files relative to folder, in a stable order."""
    return [
        {"path": f, "bytes": (folder / f).stat().st_size, "sha256": file_sha256(folder / f)}
        for f in sorted(files)
    ]


# Measurements of the build host rather than of the artifact: they change on every run, so they stay
# in the build's report.md and manifest.json and out of target folders, which must be byte-identical
# when rebuilt from the same inputs (docs/reproducibility.md).
HOST_MEASUREMENTS = frozenset({"tokens_per_s", "latency_ms_p50", "latency_ms_p95", "latency_ms_p99", "latencies_ms"})


def without_host_measurements(data: Any) -> Any:
    """Return data (a verification record, for edgepack.json) with every host measurement removed, at any depth."""
    if isinstance(data, dict):
        return {k: without_host_measurements(v) for k, v in data.items() if k not in HOST_MEASUREMENTS}
    if isinstance(data, list):
        return [without_host_measurements(v) for v in data]
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write data as strict JSON (no NaN or Infinity: see packager.strict_json)."""
    path.write_text(json_text(data, str(path)) + "\n", encoding="utf-8")


def source_date_epoch() -> int | None:
    """Return $SOURCE_DATE_EPOCH (reproducible-builds.org) as seconds, or None when it is not set."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    if value == "":
        return None
    if not value.isdigit():
        raise BadInputError(f"SOURCE_DATE_EPOCH={value!r}: must be a whole number of seconds since 1970-01-01 UTC "
                            "(for example the last commit's time: git log -1 --format=%ct).")
    return int(value)


def build_timestamp() -> str:
    """Return the build time for manifests: SOURCE_DATE_EPOCH when set, so rebuilds are byte-identical."""
    epoch = source_date_epoch()
    moment = dt.datetime.now(dt.UTC) if epoch is None else dt.datetime.fromtimestamp(epoch, dt.UTC)
    return moment.replace(microsecond=0).isoformat()


def tool_versions() -> dict[str, str]:
    """Versions of the tools that produced and checked the artifacts."""
    versions = {"edgepack": __version__, "python": platform.python_version()}
    for module in ("torch", "transformers", "peft", "gguf", "llama_cpp", "numpy"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:
            continue
    return versions


def write_sha256sums(root: Path) -> Path:
    """Write SHA256SUMS over every file under root (sha256sum -c compatible, sorted)."""
    lines = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "SHA256SUMS":
            lines.append(f"{file_sha256(p)}  {p.relative_to(root).as_posix()}")
    out = root / "SHA256SUMS"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out
