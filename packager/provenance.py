"""What a checkpoint folder declares about itself: its license and the base model it came from.

A release's model card must state the license the weights were published under, as the folder
declares it, and say "not declared" rather than guess. Three places are read, in this order:
the YAML front matter of README.md (a Hugging Face model card: `license`, `license_name`,
`base_model`), config.json (`license`), and a LICENSE/COPYING file (a few well-known texts are
recognised, otherwise its first line is quoted). For a PEFT adapter, adapter_config.json's
`base_model_name_or_path` names the base.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

NOT_DECLARED = "not declared"
LICENSE_FILES = ("LICENSE", "LICENSE.md", "LICENSE.txt", "LICENCE", "LICENCE.md", "COPYING", "COPYING.md")
# Well-known license texts, recognised by phrases from their first lines.
_KNOWN_TEXTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("apache-2.0", ("apache license", "version 2.0")),
    ("mit", ("mit license",)),
    ("gemma", ("gemma terms of use",)),
    ("llama3.2", ("llama 3.2 community license",)),
    ("llama3.1", ("llama 3.1 community license",)),
    ("llama3", ("meta llama 3 community license",)),
    ("bsd-3-clause", ("redistribution and use in source and binary forms", "neither the name")),
    ("cc-by-4.0", ("attribution 4.0 international",)),
)
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)


@dataclass
class FolderProvenance:
    """What one input folder (model, adapter or base) declares; None fields were not declared."""

    role: str
    path: str
    available: bool
    license: str | None = None
    license_declared_in: str | None = None
    base_model: str | None = None
    base_model_declared_in: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def front_matter(readme: Path) -> dict[str, Any]:
    """Return the YAML front matter of a model card, or {} when it has none or it is not valid YAML."""
    try:
        match = _FRONT_MATTER.match(readme.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return {}
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _one_line(value: Any) -> str | None:
    """Return a declared value as one line of text (lists joined), or None when it is empty."""
    if isinstance(value, list):
        value = ", ".join(str(v) for v in value if v not in (None, ""))
    if value is None or isinstance(value, dict):
        return None
    text = " ".join(str(value).split())
    return text[:200] or None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def license_file_name(path: Path) -> str | None:
    """Return the license a LICENSE file holds: a known identifier, else its first non-empty line."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    head = " ".join(text[:4000].lower().split())
    for name, phrases in _KNOWN_TEXTS:
        if all(p in head for p in phrases):
            return name
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return _one_line(first)


def folder_provenance(role: str, recorded_path: str) -> FolderProvenance:
    """Return what the folder recorded in a build manifest declares (relative paths from the cwd)."""
    folder = Path(recorded_path)
    record = FolderProvenance(role=role, path=recorded_path, available=folder.is_dir())
    if not record.available:
        return record
    card = front_matter(folder / "README.md")
    config = _read_json(folder / "config.json")
    adapter_config = _read_json(folder / "adapter_config.json")

    declared = _one_line(card.get("license"))
    if declared == "other" and _one_line(card.get("license_name")):
        declared = f"other ({_one_line(card.get('license_name'))})"
    if declared:
        record.license, record.license_declared_in = declared, "README.md front matter (license)"
    elif _one_line(config.get("license")):
        record.license, record.license_declared_in = _one_line(config.get("license")), "config.json (license)"
    else:
        for name in LICENSE_FILES:
            if (folder / name).is_file() and (found := license_file_name(folder / name)):
                record.license, record.license_declared_in = found, f"{name} file"
                break

    if _one_line(card.get("base_model")):
        record.base_model, record.base_model_declared_in = _one_line(card["base_model"]), "README.md front matter"
    elif _one_line(adapter_config.get("base_model_name_or_path")):
        record.base_model = _one_line(adapter_config["base_model_name_or_path"])
        record.base_model_declared_in = "adapter_config.json (base_model_name_or_path)"
    return record


def source_provenance(source: dict[str, Any]) -> list[FolderProvenance]:
    """Return the provenance of every input folder a build manifest's `source` records."""
    if source.get("kind") == "peft-adapter":
        records = [folder_provenance("adapter", str(source.get("adapter") or source.get("path", "")))]
        if source.get("base"):
            records.append(folder_provenance("base", str(source["base"])))
        return records
    return [folder_provenance("model", str(source.get("path", "")))]
