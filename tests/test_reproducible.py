"""Reproducible builds: the same checkpoint and options give byte-identical artifacts.

Specified in docs/reproducibility.md: every file under a target folder (the model file, the
scaffolding, edgepack.json) is identical between two builds, even when the second starts from an
empty stage cache; only manifest.json and report.md (and report.html, its HTML rendering) differ,
and only in the run-specific fields listed there. Every installed target is checked on its own, and released.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import edgepack

from packager.manifest import without_host_measurements

EPOCH = 1700000000
# The only files allowed to differ (docs/reproducibility.md); report.html renders report.md's facts.
RUN_SPECIFIC_FILES = {"manifest.json", "report.md", "report.html", "build.log"}


def _checksums(folder: Path) -> dict[str, str]:
    return {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in (folder / "SHA256SUMS").read_text().splitlines()}


def _without_run_facts(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest minus what describes the run rather than the inputs: its stages, and host speed.

    `stages` says which stages ran or came from the cache, how long each took and what it printed,
    so a warm and a cold build list different stages.
    """
    data = json.loads(json.dumps(manifest))
    del data["stages"]
    for row in data["artifacts"]:
        del row["tokens_per_s"]
    return data


def _report_without_run_facts(text: str) -> list[str]:
    """report.md minus the stage table and the "host tok/s" column of the verification table."""
    head, _, _ = text.partition("## Stages")
    lines, column = [], None
    for line in head.splitlines():
        cells = line.split("|")
        if " host tok/s " in cells:
            column = cells.index(" host tok/s ")
        if column is not None and line.startswith("|") and len(cells) > column:
            line = "|".join(cells[:column] + cells[column + 1:])
        elif not line.startswith("|"):
            column = None
        lines.append(line)
    return lines


def _installed_targets() -> list[str]:
    from packager.target import available_targets

    return list(available_targets())


@pytest.fixture(scope="module", params=_installed_targets())
def two_builds(request: pytest.FixtureRequest, tiny_gemma: Path,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same checkpoint built twice for one installed target, the second time from an empty stage cache.

    One pair per target, so every target (present and future) is held to the same rule, and a
    target that breaks it is named in the test id.
    """
    target = request.param
    root = tmp_path_factory.mktemp(f"repro-{target}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
        first = edgepack("build", tiny_gemma, "--target", target, "--quant", "Q8_0", "--out", root / "a", "--quiet")
        assert first.exit_code == 0, first.stderr
        patch.setenv("EDGEPACK_CACHE", str(root / "cold-cache"))
        second = edgepack("build", tiny_gemma, "--target", target, "--quant", "Q8_0", "--out", root / "b", "--quiet")
        assert second.exit_code == 0, second.stderr
    return root / "a", root / "b"


def test_target_folders_are_byte_identical_and_only_manifest_and_report_differ(two_builds: tuple[Path, Path]) -> None:
    a, b = (_checksums(folder) for folder in two_builds)
    assert set(a) == set(b)
    differing = {path for path in a if a[path] != b[path]}
    assert differing <= RUN_SPECIFIC_FILES, f"differs between two builds of the same inputs: {differing}"
    manifest = json.loads((two_builds[0] / "manifest.json").read_text())
    for target in manifest["targets"]:
        files = [p for p in a if p.startswith(f"{target}/")]
        artifacts = [r["artifact"] for r in manifest["artifacts"] if r["target"] == target]
        # Artifact names are paths inside the build, or say how a page was run ("web/index.html (wllama, Q8_0)");
        # a Core ML package is a folder ("ios/model-int4.mlpackage"), compared file by file.
        assert any(name in files or any(p.startswith(f"{name}/") for p in files) for name in artifacts), \
            f"{target}: its verified model file is compared too"
        assert all(a[p] == b[p] for p in files), target


def test_the_second_build_really_started_cold(two_builds: tuple[Path, Path]) -> None:
    stages = json.loads((two_builds[1] / "manifest.json").read_text())["stages"]
    # A stage asked for twice within one build is reported as cached the second time; the first must have run.
    first: dict[str, dict] = {}
    for stage in stages:
        first.setdefault(stage["name"], stage)
    assert any(name.startswith("reference") for name in first)  # every target compares with the fp32 model
    cached = [name for name, stage in first.items() if stage["cached"]]
    assert cached == [], f"came from a cache the second build cannot have had: {cached}"


def test_manifests_differ_only_in_their_stages_and_host_speed(two_builds: tuple[Path, Path]) -> None:
    a, b = (json.loads((folder / "manifest.json").read_text()) for folder in two_builds)
    assert a["built_at"] == b["built_at"] == "2023-11-14T22:13:20+00:00"  # SOURCE_DATE_EPOCH, not the clock
    assert _without_run_facts(a) == _without_run_facts(b)


def test_reports_differ_only_in_the_stage_table_and_host_speed(two_builds: tuple[Path, Path]) -> None:
    a, b = ((folder / "report.md").read_text() for folder in two_builds)
    assert _report_without_run_facts(a) == _report_without_run_facts(b)
    assert re.search(r"built 2023-11-14T22:13:20\+00:00", a)


def test_releases_of_two_rebuilds_have_byte_identical_archives(two_builds: tuple[Path, Path], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    for folder, out in zip(two_builds, ("ra", "rb"), strict=True):
        result = edgepack("release", folder, "--version", "1.0.0", "--out", tmp_path / out, "--quiet")
        assert result.exit_code == 0, result.stderr
    archives = sorted(p.name for p in (tmp_path / "ra").glob("*.tar.gz"))
    assert archives
    for name in archives:
        assert (tmp_path / "ra" / name).read_bytes() == (tmp_path / "rb" / name).read_bytes(), name
    for target in json.loads((tmp_path / "ra" / "manifest.json").read_text())["targets"]:
        folder = two_builds[0] / target["name"]
        on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        assert [f["path"] for f in target["files"]] == on_disk, "the archive holds exactly the target folder"


def test_host_measurements_are_kept_out_of_target_records_at_any_depth() -> None:
    record = {"artifact": "m.gguf", "tokens_per_s": 41.0, "metrics": {"top1": 0.99},
              "task": {"exact_match": 0.9, "latency_ms_p50": 12.0, "latency_ms_p95": 20.0, "latency_ms_p99": 30.0,
                       "tokens_per_s": 40.0}, "notes": [{"tokens_per_s": 1.0, "text": "kept"}]}
    assert without_host_measurements(record) == {
        "artifact": "m.gguf", "metrics": {"top1": 0.99}, "task": {"exact_match": 0.9}, "notes": [{"text": "kept"}],
    }
