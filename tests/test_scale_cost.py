"""What a Gemma 3 4B costs to build, known before anything runs, without its weights.

The checkpoint has the published 4B config's every tensor, stored as holes in sparse safetensors files
(benchmarks/scale_models.make_checkpoint(sparse=True): 7.8 GB of real headers and sizes, zeros, about 30 MB
on disk, 10 s), and the real Gemma 3 tokenizer (from the registry package). That is all the memory plan
reads. What builds measured lives in docs/benchmarks.md (benchmarks/scale.py), not here: tests neither time
nor measure. Issue #20's bound for one target's whole build: 1.5 x the checkpoint's bf16 size + 2 GB.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import edgepack

from benchmarks.scale_models import make_checkpoint
from packager.errors import ExitCode

pytestmark = pytest.mark.real_model
GB = 2**30


@pytest.fixture(scope="module")
def gemma3_4b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint("gemma3-4b", tmp_path_factory.mktemp("scale") / "gemma3-4b", sparse=True)


def test_doctor_puts_every_target_of_a_4b_within_the_bound_screens_that_would_not_fit_left_out(
        gemma3_4b: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The targets' own estimates: a cache that measured small models' builds (as the test session's does) says more.
    monkeypatch.setenv("EDGEPACK_CACHE", str(tmp_path / "cache"))
    report = edgepack("doctor", gemma3_4b, "--json").json()
    assert report["parameters"] > 3.8e9
    bf16 = sum(p.stat().st_size for p in gemma3_4b.glob("*.safetensors"))
    bound = (1.5 * bf16 + 2 * GB) / GB
    needs = {b["target"]: b for b in report["build_ram"]}
    assert set(needs) == {"android", "ios", "raspberry-pi", "react-native", "web"}
    for target, need in needs.items():
        assert not need["measured"] and bf16 / GB / 2 < need["peak_gb"] <= bound, (target, need, bound)
    for target in ("android", "ios"):  # their eager screens (2.5 x fp32, about 36 GB) are what would not fit
        assert "eager screens would need" in needs[target]["unscreened"]
        assert "eager screen" not in needs[target]["largest_step"]


def test_a_4b_build_with_too_little_memory_stops_at_once_naming_the_target_and_writing_nothing(
        gemma3_4b: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEPACK_CACHE", str(tmp_path / "cache"))
    result = edgepack("build", gemma3_4b, "--target", "ios", "--max-ram", "6G", "--out", tmp_path / "out", "--json")
    assert result.exit_code == ExitCode.UNSUPPORTED, result.stdout
    message = result.json()["message"]
    assert "not enough memory: ios: about" in message and "--target ios" in message and "6.0 GB" in message
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache" / "reference").exists()
