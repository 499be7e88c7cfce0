"""A third-party target is a plugin: installed through its own entry point, with its own options and
default quantization, and nothing in packager/ edited (design.md, "The house")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from packager.errors import ExitCode

REPO = Path(__file__).resolve().parent.parent

ACME_TARGET = '''
"""A third-party GGUF target, written only against edgepack's public plugin API."""

import shutil
from typing import ClassVar

from packager.formats.gguf_writer import writes_architecture
from packager.target import TargetOption
from packager.target_bundle import finish_bundle


class AcmeTarget:
    name: ClassVar[str] = "acme"
    title: ClassVar[str] = "Acme box: a GGUF for its llama.cpp"
    runtime: ClassVar[str] = "acme-llama 1.0"
    status: ClassVar[str] = "experimental"
    default_quant: ClassVar[str | None] = "Q8_0"
    options: ClassVar[tuple[TargetOption, ...]] = (
        TargetOption("flavor", "--acme-flavor", "acme_flavor", "Acme firmware flavor.", default="plain",
                     choices=("plain", "x")),
    )

    def supports(self, spec):
        return writes_architecture(spec)

    def build(self, ctx, out_dir):
        quant = ctx.options.gguf_quant(self)
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ctx.gguf(quant), out_dir / f"model-{quant}.gguf")
        verification = ctx.verify_gguf(quant, f"{self.name}/model-{quant}.gguf")
        flavor = ctx.options.for_target(self).get("flavor")
        model = {"file": f"model-{quant}.gguf", "quant": quant, "flavor": flavor, "context_length": ctx.context_length}
        return finish_bundle(out_dir, self, {"model": model, "contract": ctx.contract.as_dict()}, [verification], [])
'''


def install_plugin(root: Path, module: str, source: str, entry_point: str) -> Path:
    """Write a package and a hand-made .dist-info (what pip would install) under root; return root."""
    (root / module).mkdir(parents=True)
    (root / module / "__init__.py").write_text(textwrap.dedent(source), encoding="utf-8")
    dist_info = root / f"{module}-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n", encoding="utf-8")
    (dist_info / "entry_points.txt").write_text(f"[edgepack.targets]\n{entry_point}\n", encoding="utf-8")
    return root


def run_edgepack(plugins: Path, *args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh process that sees this checkout and the plugin folder (and the test cache)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(plugins)])}
    return subprocess.run([sys.executable, "-m", "packager.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, check=False, timeout=600)


@pytest.fixture(scope="module")
def acme_plugins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_plugin(tmp_path_factory.mktemp("site"), "edgepack_acme_target", ACME_TARGET,
                          "acme = edgepack_acme_target:AcmeTarget")


def test_a_third_party_target_builds_with_its_own_option_and_default_quantization(
        acme_plugins: Path, tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "dist"
    result = run_edgepack(acme_plugins, "build", tiny_llama, "--target", "acme", "--acme-flavor", "x",
                          "--out", out, "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    document = json.loads((out / "acme" / "edgepack.json").read_text())
    assert document["target"] == "acme" and document["runtime"] == "acme-llama 1.0"
    assert document["model"]["flavor"] == "x"  # the flag reached the plugin
    assert document["model"]["quant"] == "Q8_0"  # its declared default, without --quant
    assert (out / "acme" / "model-Q8_0.gguf").is_file()
    assert [f["path"] for f in document["files"]] == ["model-Q8_0.gguf"]
    assert document["verification"][0]["level"] == "executed"
    assert json.loads(result.stdout)["passed"] is True


def test_a_plugin_option_is_read_from_edgepack_toml_and_listed_in_help(acme_plugins: Path, tiny_llama: Path,
                                                                       tmp_path: Path) -> None:
    (tmp_path / "edgepack.toml").write_text(
        f'[build]\ncheckpoint = "{tiny_llama}"\ntargets = ["acme"]\nacme_flavor = "x"\nquant = "F16"\n'
        'out = "dist"\n', encoding="utf-8")
    result = run_edgepack(acme_plugins, "build", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    model = json.loads((tmp_path / "dist" / "acme" / "edgepack.json").read_text())["model"]
    assert (model["flavor"], model["quant"]) == ("x", "F16")  # the toml key, and --quant (here from toml) wins

    help_text = run_edgepack(acme_plugins, "build", "--help").stdout
    assert "--acme-flavor [plain|x]" in help_text and "acme: Acme firmware flavor." in help_text
    assert "--compression" in help_text  # the installed targets' options are all there


def test_a_bad_plugin_option_value_is_refused_naming_the_choices(acme_plugins: Path, tiny_llama: Path,
                                                                 tmp_path: Path) -> None:
    result = run_edgepack(acme_plugins, "build", tiny_llama, "--target", "acme", "--acme-flavor", "nope",
                          "--out", tmp_path / "dist")
    assert result.returncode == 2 and "'plain', 'x'" in result.stderr, result.stderr
    assert not (tmp_path / "dist").exists()


def test_the_support_matrix_and_target_list_include_the_plugin(acme_plugins: Path, tiny_llama: Path) -> None:
    doctor = run_edgepack(acme_plugins, "doctor", tiny_llama, "--json")
    assert doctor.returncode == 0, doctor.stderr
    assert json.loads(doctor.stdout)["support"]["acme"] is True
    listed = {t["name"]: t for t in json.loads(run_edgepack(acme_plugins, "targets", "--json").stdout)}
    assert listed["acme"]["default_quant"] == "Q8_0" and listed["web"]["default_quant"] == "Q8_0"


def test_a_plugin_that_fails_to_load_leaves_help_working_and_build_names_it(tmp_path: Path,
                                                                           tiny_llama: Path) -> None:
    plugins = install_plugin(tmp_path / "site", "edgepack_broken_target", "raise ImportError('no acme sdk here')\n",
                             "broken = edgepack_broken_target:BrokenTarget")
    assert run_edgepack(plugins, "--help").returncode == 0
    build_help = run_edgepack(plugins, "build", "--help")
    assert build_help.returncode == 0 and "--context-length" in build_help.stdout
    result = run_edgepack(plugins, "build", tiny_llama, "--target", "raspberry-pi", "--out", tmp_path / "dist")
    assert result.returncode == ExitCode.INTERNAL
    assert "'broken'" in result.stderr and "no acme sdk here" in result.stderr


def test_a_plugin_without_fleet_support_ships_each_specialist_merged_in_its_own_folder(
        acme_plugins: Path, tiny_llama: Path, tmp_path: Path) -> None:
    """A fleet (packager.fleet) on a target with no build_fleet: one merged model per specialist, verified each."""
    from tests.tiny_models import make_adapter

    for seed, name in enumerate(("router", "extractor"), start=1):
        make_adapter(tiny_llama, tmp_path / name, seed=seed)
    out = tmp_path / "dist"
    result = run_edgepack(acme_plugins, "build", "--base", tiny_llama, f"--adapter=router={tmp_path / 'router'}",
                          f"--adapter=extractor={tmp_path / 'extractor'}", "--target", "acme", "--quant", "F16",
                          "--out", out, "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    rows = [r["artifact"] for r in json.loads(result.stdout)["artifacts"]]
    assert rows == ["acme/router/model-F16.gguf", "acme/extractor/model-F16.gguf"]
    merged = [(out / "acme" / n / "model-F16.gguf").read_bytes() for n in ("router", "extractor")]
    assert merged[0] != merged[1]  # each specialist's own merged model
    assert json.loads((out / "acme" / "router" / "edgepack.json").read_text())["model"]["quant"] == "F16"
    assert "acme ships each specialist as a whole model" in (out / "report.md").read_text()
