"""`edgepack diff`: what changed between two releases, per target, as data and as a readable table.

Built only from the two release manifests (already checked against the release schema): sizes and
hashes of archives and of the files inside, verification numbers, the task contract and the
options each target was built with. A target present in only one release is "added" or "removed".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from packager.release import target_label

# (key in a verification row, label, format): numbers get a signed delta.
NUMBERS = (
    ("top1", "top-1", ".3f"),
    ("top1_decisive", "top-1 decisive", ".3f"),
    ("kl", "KL", ".4f"),
    ("ppl", "PPL", ".2f"),
    ("ppl_ref", "PPL fp32", ".2f"),
)
FACTS = (("artifact", "artifact"), ("quant", "quantization"), ("level", "level"), ("tokenizer", "tokenizer parity"),
         ("passed", "gate"))


def change(old: Any, new: Any) -> dict[str, Any]:
    """Return {old, new, changed}, plus delta (and ratio for positive olds) when both are numbers."""
    out: dict[str, Any] = {"old": old, "new": new, "changed": old != new}
    numbers = (int, float)
    if isinstance(old, numbers) and isinstance(new, numbers) and not isinstance(old, bool) \
            and not isinstance(new, bool):
        out["delta"] = new - old
        if old:
            out["ratio"] = new / old
    return out


def _files_change(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> dict[str, list[str]]:
    a = {f["path"]: f["sha256"] for f in old}
    b = {f["path"]: f["sha256"] for f in new}
    return {
        "added": sorted(set(b) - set(a)),
        "removed": sorted(set(a) - set(b)),
        "changed": sorted(p for p in set(a) & set(b) if a[p] != b[p]),
    }


def _contract_change(old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any]:
    old_c = (old or {}).get("contract") or {}
    new_c = (new or {}).get("contract") or {}
    fields = {k: change(old_c.get(k), new_c.get(k)) for k in sorted(set(old_c) | set(new_c))
              if old_c.get(k) != new_c.get(k)}
    old_sha = (old or {}).get("contract_sha256")
    new_sha = (new or {}).get("contract_sha256")
    return {"old_sha256": old_sha, "new_sha256": new_sha, "changed": old_sha != new_sha, "fields": fields}


def _artifact_bytes(target: dict[str, Any], artifact: str | None) -> int | None:
    """Return the size of a verified artifact (named <target>/<file>) from the target's file list."""
    if artifact is None:
        return None
    rel = artifact.removeprefix(f"{target.get('name')}/")
    return next((f["bytes"] for f in target.get("files") or [] if f["path"] == rel), None)


def _verification_change(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    # Artifacts are paired by position: a target lists its artifacts in a fixed order, and their names
    # contain the quantization, which is exactly what may have changed.
    old_rows, new_rows = old.get("verification") or [], new.get("verification") or []
    rows = []
    for index in range(max(len(old_rows), len(new_rows))):
        a = old_rows[index] if index < len(old_rows) else {}
        b = new_rows[index] if index < len(new_rows) else {}
        row = {key: change(a.get(key), b.get(key))
               for key in ("artifact", "quant", "level", *(n[0] for n in NUMBERS), "tokenizer", "greedy_match",
                           "passed", "failures")}
        row["bytes"] = change(_artifact_bytes(old, a.get("artifact")), _artifact_bytes(new, b.get("artifact")))
        rows.append(row)
    return rows


def _target_change(name: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any]:
    o, n = old or {}, new or {}
    options = {k: change((o.get("options") or {}).get(k), (n.get("options") or {}).get(k))
               for k in ("quant", "context_length")}
    archive = {"bytes": change((o.get("archive") or {}).get("bytes"), (n.get("archive") or {}).get("bytes")),
               "sha256": change((o.get("archive") or {}).get("sha256"), (n.get("archive") or {}).get("sha256"))}
    files = _files_change(o.get("files") or [], n.get("files") or [])
    contract = _contract_change(old, new)
    verification = _verification_change(o, n)
    runtime = change(o.get("runtime"), n.get("runtime"))
    if old is None:
        status = "added"
    elif new is None:
        status = "removed"
    elif (archive["sha256"]["changed"] or contract["changed"] or runtime["changed"]
          or any(c["changed"] for c in options.values())
          or any(c["changed"] for row in verification for c in row.values())):
        status = "changed"
    else:
        status = "unchanged"
    return {"target": name, "status": status, "options": options, "runtime": runtime, "archive": archive,
            "files": files, "contract": contract, "verification": verification}


def _specialists_change(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A fleet's specialists by name: a retrained one shows as a changed adapter, the base unchanged."""
    a, b = {s["name"]: s for s in old}, {s["name"]: s for s in new}
    rows = []
    for name in [*a, *(n for n in b if n not in a)]:
        adapter = change((a.get(name) or {}).get("adapter_sha256"), (b.get(name) or {}).get("adapter_sha256"))
        status = "added" if name not in a else "removed" if name not in b else (
            "changed" if adapter["changed"] else "unchanged")
        rows.append({"name": name, "status": status, "adapter_sha256": adapter})
    return rows


def _tools(manifest: dict[str, Any]) -> dict[str, str]:
    tools: dict[str, str] = {}
    for build in manifest["builds"]:
        for key, value in build["tools"].items():
            tools.setdefault(key, value)
    return tools


def diff_releases(old: dict[str, Any], new: dict[str, Any], old_path: Path | str = "",
                  new_path: Path | str = "") -> dict[str, Any]:
    """Return the differences between two release manifests, target by target (targets sorted by name)."""
    old_targets = {target_label(t): t for t in old["targets"]}
    new_targets = {target_label(t): t for t in new["targets"]}
    targets = [_target_change(name, old_targets.get(name), new_targets.get(name))
               for name in sorted(set(old_targets) | set(new_targets))]
    old_tools, new_tools = _tools(old), _tools(new)
    tools = {k: change(old_tools.get(k), new_tools.get(k)) for k in sorted(set(old_tools) | set(new_tools))
             if old_tools.get(k) != new_tools.get(k)}
    source = change(old["source"]["sha256"], new["source"]["sha256"])
    specialists = _specialists_change(old.get("specialists") or [], new.get("specialists") or [])
    return {
        "old": {"path": str(old_path), "name": old["name"], "version": old["version"], "passed": old["passed"]},
        "new": {"path": str(new_path), "name": new["name"], "version": new["version"], "passed": new["passed"]},
        "changed": source["changed"] or bool(tools) or any(t["status"] != "unchanged" for t in targets)
        or any(sp["status"] != "unchanged" for sp in specialists),
        "source_sha256": source,
        "specialists": specialists,
        "edgepack_version": change(old["edgepack_version"], new["edgepack_version"]),
        "tools": tools,
        "targets": targets,
    }


# ---------------------------------------------------------------------------------------------
# The readable form


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _text(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if spec and isinstance(value, int | float):
        return format(value, spec)
    return str(value).replace("|", "/").replace("\n", " ")


def _hash(value: str | None) -> str:
    return "-" if value is None else value[:12]


def _note(c: dict[str, Any], spec: str = "") -> str:
    if not c["changed"]:
        return ""
    if "delta" in c and spec:
        return f"{c['delta']:+{spec}}"
    return "changed"


def _size_note(size: dict[str, Any]) -> str:
    if not size["changed"] or "delta" not in size:
        return "changed" if size["changed"] else ""
    note = f"{'+' if size['delta'] >= 0 else '-'}{_size(abs(size['delta']))}"
    if "ratio" in size:
        note += f" ({(size['ratio'] - 1) * 100:+.1f} %)"
    return note


def _target_rows(t: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    size = t["archive"]["bytes"]
    files = t["files"]
    file_note = ", ".join(f"{len(files[k])} {k}" for k in ("added", "removed", "changed") if files[k])
    contract = t["contract"]
    contract_note = ("changed: " + ", ".join(contract["fields"]) if contract["fields"] else "changed") \
        if contract["changed"] else ""
    rows = [
        ("quantization", _text(t["options"]["quant"]["old"]), _text(t["options"]["quant"]["new"]),
         _note(t["options"]["quant"])),
        ("context length", _text(t["options"]["context_length"]["old"]), _text(t["options"]["context_length"]["new"]),
         _note(t["options"]["context_length"])),
        ("runtime", _text(t["runtime"]["old"]), _text(t["runtime"]["new"]), _note(t["runtime"])),
        ("archive size", _size(size["old"]), _size(size["new"]), _size_note(size)),
        ("archive sha256", _hash(t["archive"]["sha256"]["old"]), _hash(t["archive"]["sha256"]["new"]),
         _note(t["archive"]["sha256"])),
        ("files inside", "", "", file_note or "identical"),
        ("task contract", _hash(contract["old_sha256"]), _hash(contract["new_sha256"]), contract_note),
    ]
    for row in t["verification"]:
        for key, label in FACTS:
            c = row[key]
            if key == "passed":
                old = None if c["old"] is None else ("pass" if c["old"] else "FAIL")
                new = None if c["new"] is None else ("pass" if c["new"] else "FAIL")
                rows.append((label, _text(old), _text(new), _note(c)))
            else:
                rows.append((label, _text(c["old"]), _text(c["new"]), _note(c)))
            if key == "artifact":
                rows.append(("artifact size", _size(row["bytes"]["old"]), _size(row["bytes"]["new"]),
                             _size_note(row["bytes"])))
            if key == "level":
                for num_key, num_label, spec in NUMBERS:
                    n = row[num_key]
                    rows.append((num_label, _text(n["old"], spec), _text(n["new"], spec), _note(n, spec)))
    return rows


def render_diff(d: dict[str, Any]) -> str:
    """Return the differences as text: a header, then one Markdown table per target."""
    old, new = d["old"], d["new"]
    source, version = d["source_sha256"], d["edgepack_version"]
    if source["changed"]:
        checkpoint = f"CHANGED {_hash(source['old'])} -> {_hash(source['new'])}"
    else:
        checkpoint = f"unchanged (sha256 {_hash(source['new'])})"
    lines = [
        f"edgepack diff: {old['name']} {old['version']} ({old['path']}) -> {new['name']} {new['version']} "
        f"({new['path']})",
        f"checkpoint: {checkpoint}",
        f"edgepack: {version['old']} -> {version['new']}" if version["changed"] else f"edgepack: {version['new']}",
    ]
    for tool, c in d["tools"].items():
        lines.append(f"{tool}: {_text(c['old'])} -> {_text(c['new'])}")
    for sp in d.get("specialists") or []:
        adapter = sp["adapter_sha256"]
        detail = f"adapter {_hash(adapter['old'])} -> {_hash(adapter['new'])}" if sp["status"] == "changed" else (
            f"adapter {_hash(adapter['new'] or adapter['old'])}")
        lines.append(f"specialist {sp['name']}: {sp['status']} ({detail})")
    for t in d["targets"]:
        lines += ["", f"## {t['target']}: {t['status']}", "", "| | old | new | change |", "|---|---|---|---|"]
        lines += [f"| {label} | {a} | {b} | {note} |" for label, a, b, note in _target_rows(t)]
    if not d["changed"]:
        lines += ["", "The two releases are the same apart from their names and versions."]
    return "\n".join(lines) + "\n"
