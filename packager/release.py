"""`edgepack release`: verified build folders in; reproducible archives, a manifest and a model card out.

A release is what gets published: one tar.gz per target, MODEL_CARD.md, a release manifest.json
(schema in docs/release-manifest.schema.json) and SHA256SUMS over all of them. Its input is one
build folder with every target, or several (one per CI matrix job) of the same checkpoint, which
are merged. A fleet's builds may each hold some of its specialists (`edgepack build --specialist`,
one CI job per specialist x target): they merge when they belong to the same fleet, and each such
target folder becomes an archive of its own, named after its specialists, since each was gated on
its own. Every input file is checked against its build's SHA256SUMS first, so a release can
only carry bytes a build vouched for.

A release is a pure function of its inputs: no clock is read (archive mtimes are
SOURCE_DATE_EPOCH, else 0), and host speed, which differs on every run, is left out. Releasing
the same build folders twice gives byte-identical folders. The output appears atomically, like a
build's.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from packager import __version__
from packager.archive import members_of, write_tar_gz
from packager.atomic import output_errors, staged_output
from packager.errors import BadInputError, GateFailedError, InternalError, UnsupportedError
from packager.escaping import slug
from packager.fingerprint import file_sha256
from packager.manifest import MANIFEST_SCHEMA_VERSION, source_date_epoch, write_json, write_sha256sums
from packager.output_guard import RELEASE_KIND, check_replaceable
from packager.output_lock import output_lock
from packager.progress import Reporter
from packager.provenance import NOT_DECLARED, FolderProvenance, source_provenance
from packager.resources import data_dir, templates_dir
from packager.templating import make_environment

RELEASE_SCHEMA_VERSION = 1
SCHEMA_FILE = "release-manifest.schema.json"
MANIFEST_FILE = "manifest.json"
CHECKSUMS_FILE = "SHA256SUMS"
MODEL_CARD_FILE = "MODEL_CARD.md"
MODEL_CARD_TEMPLATE = "release/MODEL_CARD.md.j2"
VERIFICATION_KEYS = ("artifact", "quant", "level", "top1", "top1_decisive", "kl", "ppl", "ppl_ref", "tokenizer",
                     "greedy_match", "passed", "failures", "warnings")
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")
_TARGET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_SUMS_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")


@dataclass
class ReleaseRequest:
    """Everything `edgepack release` was asked to do."""

    builds: list[Path]
    version: str
    out: Path | None = None
    force: bool = False
    allow_failed: bool = False


@dataclass
class BuildFolder:
    """A build folder whose every file matched its SHA256SUMS: its manifest and those hashes."""

    path: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    sha256: dict[str, str] = field(default_factory=dict)


@dataclass
class ReleaseOutcome:
    """The written release, for the CLI and callers of the Python API."""

    out: Path
    manifest: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "name": self.manifest["name"],
            "version": self.manifest["version"],
            "passed": self.manifest["passed"],
            "archives": [{"target": t["name"], **({"specialists": t["specialists"]} if "specialists" in t else {}),
                          **t["archive"]} for t in self.manifest["targets"]],
            "files": self.manifest["files"],
        }


# ---------------------------------------------------------------------------------------------
# Reading and checking the input


def read_checksums(folder: Path) -> dict[str, str]:
    """Return {relative path: sha256} from folder/SHA256SUMS, refusing malformed or escaping lines."""
    sums = folder / CHECKSUMS_FILE
    if not sums.is_file():
        raise BadInputError(f"{sums}: missing. A build folder made by `edgepack build` has SHA256SUMS; without it "
                            "its files cannot be trusted. Rebuild, or pass the folder edgepack wrote.")
    listed: dict[str, str] = {}
    for number, line in enumerate(sums.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        match = _SUMS_LINE.fullmatch(line)
        rel = match.group(2) if match else ""
        parts = rel.split("/")
        if not match or rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
            raise BadInputError(f"{sums}:{number}: not a 'sha256  relative/path' line ({line[:120]!r}). "
                                "Restore the SHA256SUMS edgepack wrote, or rebuild.")
        listed[rel] = match.group(1)
    return listed


def verified_checksums(folder: Path) -> dict[str, str]:
    """Return folder's SHA256SUMS after checking that it lists manifest.json and exactly the files there, unaltered.

    Both a build folder (before it is released) and a release (before it is compared) are
    checked this way, so neither can carry bytes that edgepack did not write.
    """
    listed = read_checksums(folder)
    if MANIFEST_FILE not in listed:
        raise BadInputError(f"{folder / CHECKSUMS_FILE}: does not list manifest.json. Rebuild the folder.")
    for rel, expected in sorted(listed.items()):
        path = folder / rel
        if not path.is_file():
            raise BadInputError(f"{path}: listed in {folder / CHECKSUMS_FILE} but missing. The folder is "
                                "incomplete: copy it again, or make it again.")
        actual = file_sha256(path)
        if actual != expected:
            raise BadInputError(f"{path}: altered since edgepack wrote it (its sha256 is {actual[:16]}..., "
                                f"SHA256SUMS says {expected[:16]}...). Restore the original file, or make it again.")
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if (path.is_file() or path.is_symlink()) and rel != CHECKSUMS_FILE and rel not in listed:
            raise BadInputError(f"{path}: not listed in {folder / CHECKSUMS_FILE}, so nothing edgepack wrote "
                                "vouches for it. Remove it, or make the folder again.")
    return listed


def read_build_folder(folder: Path) -> BuildFolder:
    """Return a build folder after checking every file against SHA256SUMS; raise BadInputError naming the file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"{folder}: not a folder. Pass a build folder made by `edgepack build` (dist/<name>/).")
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BadInputError(f"{manifest_path}: missing, so {folder} is not an edgepack build folder. Pass the folder "
                            "`edgepack build` wrote (dist/<name>/, with manifest.json and SHA256SUMS).")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{manifest_path}: not valid JSON ({exc}). Rebuild the folder.") from None
    if not isinstance(manifest, dict):
        raise BadInputError(f"{manifest_path}: not a build manifest (expected a JSON object). Rebuild the folder.")
    if manifest.get("kind") == RELEASE_KIND:
        raise BadInputError(f"{folder}: is a release folder, not a build folder. Pass the build folder(s) "
                            "`edgepack build` wrote; to compare two releases use `edgepack diff`.")
    listed = verified_checksums(folder)
    _check_manifest_shape(manifest, manifest_path)
    return BuildFolder(folder, manifest, listed[MANIFEST_FILE], listed)


def _check_manifest_shape(manifest: dict[str, Any], path: Path) -> None:
    version = manifest.get("schema_version")
    if version != MANIFEST_SCHEMA_VERSION:
        raise UnsupportedError(f"{path}: build manifest schema_version {version!r}; this edgepack {__version__} "
                               f"reads version {MANIFEST_SCHEMA_VERSION}. Rebuild with this edgepack.")
    for key, kind in (("name", str), ("source", dict), ("targets", list), ("artifacts", list), ("options", dict)):
        if not isinstance(manifest.get(key), kind):
            raise BadInputError(f"{path}: has no valid {key!r} ({kind.__name__}). Rebuild the folder.")
    if not isinstance(manifest["source"].get("sha256"), str):
        raise BadInputError(f"{path}: source.sha256 is missing. Rebuild the folder.")
    for name in manifest["targets"]:
        if not isinstance(name, str) or not _TARGET_NAME.fullmatch(name):
            raise BadInputError(f"{path}: target name {name!r} is not a plain folder name. Rebuild the folder.")
        if not (path.parent / name).is_dir():
            raise BadInputError(f"{path.parent / name}: the manifest lists target {name!r} but its folder is "
                                "missing. Copy the whole build folder, or rebuild.")


def check_version(version: str) -> str:
    """Return version if it is safe in file names and tags (e.g. 1.2.0, 2026.11.21, 1.0.0-rc.1)."""
    if not _VERSION.fullmatch(version):
        raise BadInputError(f"--version {version!r}: use letters, digits and . + _ - only, starting with a letter "
                            "or digit, at most 64 characters (for example 1.2.0).")
    return version


def _specialist_record(entry: dict[str, Any]) -> dict[str, Any]:
    """A fleet's specialist as the release lists it: its name and the hashes of its adapter and merged model."""
    return {key: entry[key] for key in ("name", "adapter_sha256", "merged_sha256")}


def _fleet_hashes(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """The fleet a build belongs to, every specialist by name and adapter hash, also those it did not build
    (its `fleet`; a build without one built them all)."""
    members = manifest.get("fleet") or manifest.get("specialists") or []
    return [(s["name"], s["adapter_sha256"]) for s in members]


def built_part(manifest: dict[str, Any]) -> list[str]:
    """The specialists a --specialist build made when they are not its whole fleet; [] for a whole build."""
    built = [s["name"] for s in manifest.get("specialists") or []]
    return built if built != [name for name, _ in _fleet_hashes(manifest)] else []


def target_label(record: dict[str, Any]) -> str:
    """A release target as people read it: its name, and the specialists of a per-specialist build."""
    part = record.get("specialists")
    return f"{record['name']} ({', '.join(part)})" if part else record["name"]


def _merge_check(builds: list[BuildFolder]) -> None:
    first = builds[0]
    seen: dict[tuple[str, str | None], Path] = {}
    for build in builds:
        if build.manifest["name"] != first.manifest["name"]:
            raise BadInputError(f"{build.path}: is a build of {build.manifest['name']!r} but {first.path} is of "
                                f"{first.manifest['name']!r}; a release holds one model. Release them separately.")
        if build.manifest["source"]["sha256"] != first.manifest["source"]["sha256"]:
            raise BadInputError(f"{build.path}: was built from a different checkpoint than {first.path} (source "
                                "sha256 differs); a release holds one model. Rebuild both from the same checkpoint.")
        if _fleet_hashes(build.manifest) != _fleet_hashes(first.manifest):
            raise BadInputError(f"{build.path}: holds other specialist adapters than {first.path}; a release holds one "
                                "fleet. Rebuild both from the same adapters.")
        names: list[str | None] = [s["name"] for s in build.manifest.get("specialists") or []] or [None]
        for target in build.manifest["targets"]:
            for name in names:
                if (target, name) in seen:
                    what = f"target {target!r}" + (f" of specialist {name!r}" if name else "")
                    raise BadInputError(f"{build.path}: {what} is also in {seen[(target, name)]}; pass each "
                                        "target's build once" + (" per specialist." if name else "."))
                seen[(target, name)] = build.path


def _released_specialists(builds: list[BuildFolder]) -> list[dict[str, Any]]:
    """Every specialist some build made, in the fleet's order: per-specialist builds of one fleet list them all."""
    built = {s["name"]: _specialist_record(s) for b in builds for s in b.manifest["specialists"]}
    return [built[name] for name, _ in _fleet_hashes(builds[0].manifest) if name in built]


def _gate_check(builds: list[BuildFolder], allow_failed: bool) -> None:
    failed = [b for b in builds if not b.manifest.get("passed", False)]
    if failed and not allow_failed:
        rows = [f"- {r.get('artifact')}: {'; '.join(r.get('failures') or ['failed'])}"
                for b in failed for r in b.manifest["artifacts"] if not r.get("passed", False)]
        raise GateFailedError(
            f"{failed[0].path / MANIFEST_FILE}: the build did not pass its quality gate (built with --no-gate), so "
            "it is not released. Rebuild with a higher-precision --quant, or pass --allow-failed to release it "
            "marked as failed.\n" + "\n".join(rows)
        )


# ---------------------------------------------------------------------------------------------
# The release manifest


def canonical_sha256(data: Any) -> str:
    """Return the sha256 of data as canonical JSON (sorted keys, no spaces): equal data, equal hash."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _target_metadata(build: BuildFolder, target: str) -> dict[str, Any]:
    """Return the target's edgepack.json (every target is expected to write one), or {} when it has none."""
    path = build.path / target / "edgepack.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{path}: not valid JSON ({exc}). Rebuild the folder.") from None
    return data if isinstance(data, dict) else {}


def _verification(rows: list[dict[str, Any]], target: str) -> list[dict[str, Any]]:
    # Only what describes the artifact: host speed (tokens_per_s) differs on every run and stays in report.md.
    # Warnings: fidelity misses where the task gate decided (packager.verify.result); none in older builds.
    return [{key: row.get(key) for key in VERIFICATION_KEYS} | {"failures": list(row.get("failures") or []),
                                                                 "warnings": list(row.get("warnings") or [])}
            for row in rows if row.get("target") == target]


def _target_record(build: BuildFolder, index: int, target: str, archive: dict[str, Any], root: str,
                   files: list[dict[str, Any]]) -> dict[str, Any]:
    meta = _target_metadata(build, target)
    model = meta.get("model") if isinstance(meta.get("model"), dict) else None
    contract = meta.get("contract") if isinstance(meta.get("contract"), dict) else None
    options = build.manifest["options"]
    verification = _verification(build.manifest["artifacts"], target)
    part = built_part(build.manifest)
    return {
        "name": target,
        **({"specialists": part} if part else {}),
        "build": index,
        "archive": archive,
        "root": root,
        "runtime": meta.get("runtime") if isinstance(meta.get("runtime"), str) else None,
        "options": {
            "quant": (model or {}).get("quant", options.get("quant")),
            "context_length": (model or {}).get("context_length", options.get("context_length")),
        },
        "model": model,
        "contract": contract,
        "contract_sha256": canonical_sha256(contract) if contract is not None else None,
        "files": files,
        "verification": verification,
        "passed": all(v["passed"] for v in verification),
    }


def _build_record(build: BuildFolder) -> dict[str, Any]:
    m = build.manifest
    return {
        "manifest_sha256": build.manifest_sha256,
        "schema_version": m["schema_version"],
        "built_at": str(m.get("built_at", "")),
        "targets": list(m["targets"]),
        "options": m["options"],
        "passed": bool(m.get("passed", False)),
        "gated": bool(m.get("gated", True)),
        "tools": {str(k): str(v) for k, v in (m.get("tools") or {}).items()},
    }


@cache
def release_schema() -> dict[str, Any]:
    """Return the JSON schema of the release manifest (docs/release-manifest.schema.json, shipped in the wheel)."""
    return json.loads((data_dir("docs") / SCHEMA_FILE).read_text(encoding="utf-8"))


def schema_errors(manifest: dict[str, Any]) -> list[str]:
    """Return every way manifest breaks the release schema, as 'path: message' lines (empty when valid)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(release_schema())
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]


# ---------------------------------------------------------------------------------------------
# The model card


def _code_fence(text: str) -> str:
    """Return a Markdown code fence longer than any backtick run in text, so text cannot close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _declared(record: FolderProvenance) -> dict[str, Any]:
    return {
        "role": record.role,
        "path": record.path,
        "available": record.available,
        "license": record.license or NOT_DECLARED,
        "license_declared_in": record.license_declared_in or "-",
        "base_model": record.base_model or NOT_DECLARED,
        "base_model_declared_in": record.base_model_declared_in or "-",
    }


def _front_matter(provenance: list[FolderProvenance], targets: list[str]) -> list[tuple[str, Any]]:
    """Return Hugging Face model-card metadata, only what the checkpoint itself declares."""
    first = provenance[0]
    items: list[tuple[str, Any]] = []
    if first.license and first.license_declared_in and first.license_declared_in.startswith("README.md"):
        items.append(("license", first.license))
    base = next((p.base_model for p in provenance if p.base_model), None)
    if base:
        items.append(("base_model", base))
    items.append(("tags", ["edgepack", *targets]))
    return items


def model_card_context(manifest: dict[str, Any], provenance: list[FolderProvenance]) -> dict[str, Any]:
    """Return the values MODEL_CARD.md is rendered from, every number already formatted."""
    contracts: dict[str, dict[str, Any]] = {}
    for t in manifest["targets"]:
        if t["contract"] is None:
            continue
        entry = contracts.setdefault(t["contract_sha256"], {"sha256": t["contract_sha256"], "targets": [],
                                                            "contract": t["contract"]})
        entry["targets"].append(target_label(t))
    contract_blocks = []
    for entry in contracts.values():
        text = json.dumps(entry["contract"], indent=2, ensure_ascii=False)
        c = entry["contract"]
        contract_blocks.append({
            "targets": entry["targets"],
            "sha256": entry["sha256"],
            "task": str(c.get("task", "text")),
            "labels": [str(x) for x in c.get("labels") or []],
            "has_schema": c.get("json_schema") is not None,
            "add_bos": bool(c.get("add_bos")),
            "bos": "none" if c.get("bos_id") is None else str(c.get("bos_id")),
            "eos_ids": [str(x) for x in c.get("eos_ids") or []],
            "stop_strings": [str(x) for x in c.get("stop_strings") or []],
            "max_new_tokens": str(c.get("max_new_tokens", "n/a")),
            "prompt_source": str((c.get("prompt") or {}).get("source", "plain")),
            "json": text,
            "fence": _code_fence(text),
        })
    builds = manifest["builds"]
    tool_names = sorted({k for b in builds for k in b["tools"]}, key=lambda k: (k != "edgepack", k))
    source = manifest["source"]
    return {
        "name": manifest["name"],
        "version": manifest["version"],
        "edgepack_version": manifest["edgepack_version"],
        "passed": manifest["passed"],
        "front_matter": _front_matter(provenance, list(dict.fromkeys(t["name"] for t in manifest["targets"]))),
        "source": {
            "kind": str(source.get("kind")),
            "path": str(source.get("path")),
            "architecture": str(source.get("architecture")),
            "parameters": f"{int(source.get('parameters') or 0):,}",
            "sha256": source["sha256"],
        },
        "adapter": {
            "path": str(source.get("adapter", source.get("path"))),
            "base": str(source.get("base", NOT_DECLARED)),
            "lora_modules": str(source.get("lora_modules", "n/a")),
        } if source.get("kind") == "peft-adapter" else None,
        "provenance": [_declared(p) for p in provenance],
        "contracts": contract_blocks,
        "targets": [{
            "name": target_label(t),
            "archive": t["archive"]["path"],
            "size_mb": f"{t['archive']['bytes'] / 2**20:.2f}",
            "quant": str(t["options"]["quant"] or "n/a"),
            "context_length": _fmt(t["options"]["context_length"], "d"),
            "runtime": t["runtime"] or "n/a",
            "sha256": t["archive"]["sha256"],
        } for t in manifest["targets"]],
        "verification": [{
            "target": target_label(t),
            "artifact": v["artifact"],
            "level": v["level"],
            "quant": str(v["quant"] or "n/a"),
            "top1": _fmt(v["top1"], ".3f"),
            "top1_decisive": _fmt(v["top1_decisive"], ".3f"),
            "kl": _fmt(v["kl"], ".4f"),
            "ppl": f"{_fmt(v['ppl'], '.2f')} ({_fmt(v['ppl_ref'], '.2f')})",
            "tokenizer": {True: "identical", False: "DIFFERS", None: "n/a"}[v["tokenizer"]],
            "gate": _gate_text(v),
        } for t in manifest["targets"] for v in t["verification"]],
        "tools": [{"name": k, "versions": sorted({b["tools"][k] for b in builds if k in b["tools"]})}
                  for k in tool_names],
        "builds": [{"targets": b["targets"], "built_at": b["built_at"], "manifest_sha256": b["manifest_sha256"],
                    "quant": str(b["options"].get("quant", "n/a"))} for b in builds],
    }


def _gate_text(verification: dict[str, Any]) -> str:
    """The model card's gate column, worded as report.md's."""
    if not verification["passed"]:
        return "FAIL: " + "; ".join(verification["failures"])
    if verification["warnings"]:
        return "pass (task gate decided; fidelity below its gate: " + "; ".join(verification["warnings"]) + ")"
    return "pass"


def render_text(template: str, context: dict[str, Any]) -> str:
    """Render one template from templates/, refusing leftover Jinja syntax from the template itself."""
    root = templates_dir()
    probe = make_environment(root, probe=True).get_template(template).render(context)
    for mark in ("{{", "{%", "{#"):
        if mark in probe:
            raise InternalError(f"{root / template}: rendered output still contains {mark!r}")
    return make_environment(root).get_template(template).render(context)


# ---------------------------------------------------------------------------------------------
# Writing


def default_out(name: str, version: str) -> Path:
    return Path("releases") / f"{slug(name)}-{version}"


def _file_entry(folder: Path, rel: str, executable: bool | None = None) -> dict[str, Any]:
    path = folder / rel
    entry: dict[str, Any] = {"path": rel, "bytes": path.stat().st_size, "sha256": file_sha256(path)}
    if executable is not None:
        entry["executable"] = executable
    return entry


def make_release(request: ReleaseRequest, reporter: Reporter | None = None) -> ReleaseOutcome:
    """Verify the build folders, then write the release atomically; raise BadInputError before writing anything."""
    reporter = reporter or Reporter()
    version = check_version(request.version)
    if not request.builds:
        raise BadInputError("no build folder given. Pass one build folder (dist/<name>/) or one per target.")
    # Canonical order, so `release dist/b dist/a` and `release dist/a dist/b` write the same bytes.
    builds = sorted((read_build_folder(p) for p in request.builds), key=lambda b: sorted(b.manifest["targets"]))
    _merge_check(builds)
    _gate_check(builds, request.allow_failed)
    name = builds[0].manifest["name"]
    out = request.out or default_out(name, request.version)
    folders = [b.path for b in builds]
    with output_errors(out), output_lock(out):
        check_replaceable(out, folders, "release", request.force, sealed=folders)
        with staged_output(out) as staging:
            manifest = _write_release(staging, builds, name, version, reporter)
    reporter.say(f"wrote {out}")
    return ReleaseOutcome(out=out, manifest=manifest)


def _write_release(staging: Path, builds: list[BuildFolder], name: str, version: str,
                   reporter: Reporter) -> dict[str, Any]:
    """Return the release manifest after writing the archives, model card, manifest and SHA256SUMS into staging."""
    mtime = source_date_epoch() or 0
    plan = sorted(((t, i, b) for i, b in enumerate(builds) for t in b.manifest["targets"]),
                  key=lambda x: (x[0], built_part(x[2].manifest)))
    targets = []
    for target, index, build in plan:
        part = built_part(build.manifest)
        # '+' cannot be in a specialist's name, so two parts never share an archive name.
        root = f"{slug(name)}-{version}-{target}" + (f"-{'+'.join(part)}" if part else "")
        archive_name = f"{root}.tar.gz"
        members = members_of(build.path / target, root)
        reporter.say(f"release: packing {archive_name} ({len(members)} files)")
        write_tar_gz(staging / archive_name, members, mtime)
        files = []
        for member in members:
            rel = member.name.removeprefix(f"{root}/")
            # The hash SHA256SUMS vouched for (checked above), not a second read of the file.
            files.append({"path": rel, "bytes": member.source.stat().st_size,
                          "sha256": build.sha256[f"{target}/{rel}"], "executable": member.executable})
        targets.append(_target_record(build, index, target, _file_entry(staging, archive_name), root, files))
    first = builds[0].manifest
    manifest: dict[str, Any] = {
        "schema_version": RELEASE_SCHEMA_VERSION,
        "kind": RELEASE_KIND,
        "name": name,
        "version": version,
        "edgepack_version": __version__,
        "passed": all(t["passed"] for t in targets) and all(b.manifest.get("passed", False) for b in builds),
        "source": first["source"],
        **({"specialists": _released_specialists(builds)} if first.get("specialists") else {}),
        "provenance": [],
        "builds": [_build_record(b) for b in builds],
        "targets": targets,
        "files": [],
    }
    provenance = source_provenance(first["source"])
    manifest["provenance"] = [p.as_dict() for p in provenance]
    card = render_text(MODEL_CARD_TEMPLATE, model_card_context(manifest, provenance))
    (staging / MODEL_CARD_FILE).write_text(card, encoding="utf-8")
    manifest["files"] = [_file_entry(staging, rel) for rel in sorted([MODEL_CARD_FILE, *(
        t["archive"]["path"] for t in targets)])]
    errors = schema_errors(manifest)
    if errors:
        raise InternalError("the release manifest does not match docs/release-manifest.schema.json:\n"
                            + "\n".join(errors[:20]))
    write_json(staging / MANIFEST_FILE, manifest)
    write_sha256sums(staging)
    for path in staging.iterdir():
        path.chmod(0o644)
    return manifest


def read_release(folder: Path) -> dict[str, Any]:
    """Return a release folder's manifest after checking it against the release schema and its SHA256SUMS."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise BadInputError(f"{path}: missing, so {folder} is not a release folder. Pass a folder written by "
                            "`edgepack release`.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{path}: not valid JSON ({exc}). Make the release again.") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != RELEASE_KIND:
        raise BadInputError(f"{path}: not a release manifest (a build folder's manifest?). Make a release with "
                            "`edgepack release DIST --version V` and pass its folder.")
    if manifest.get("schema_version") != RELEASE_SCHEMA_VERSION:
        raise UnsupportedError(f"{path}: release schema_version {manifest.get('schema_version')!r}; this edgepack "
                               f"{__version__} reads version {RELEASE_SCHEMA_VERSION}.")
    errors = schema_errors(manifest)
    if errors:
        raise BadInputError(f"{path}: does not match the release schema ({SCHEMA_FILE}):\n" + "\n".join(errors[:20]))
    listed = verified_checksums(folder)
    for entry in manifest["files"]:
        # SHA256SUMS can be rewritten along with a swapped archive; the manifest's own hashes must agree too.
        if listed.get(entry["path"]) != entry["sha256"]:
            raise BadInputError(f"{folder / entry['path']}: its sha256 in {path} does not match {CHECKSUMS_FILE}; "
                                "the release was altered. Make the release again from its build folders.")
    return manifest
