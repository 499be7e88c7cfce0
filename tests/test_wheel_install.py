"""An installed edgepack works outside the repository: templates and mobile/ ship in the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_installs_in_a_fresh_venv_and_builds_outside_the_repo(tiny_llama: Path, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)],
                   check=True, capture_output=True)
    [wheel] = wheels.glob("edgepack-*.whl")

    fresh = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=False).create(fresh)
    fresh_python = fresh / "bin" / "python"
    fresh_site = Path(subprocess.run(
        [fresh_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip())
    # Dependencies (torch, llama-cpp-python, ...) come from this environment's site-packages, added as a
    # plain path: .pth files inside it (such as the editable install of edgepack) are not processed.
    (fresh_site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(fresh_python), "install", "--no-deps", "-q",
                    str(wheel)], check=True, capture_output=True)

    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["EDGEPACK_CACHE"] = str(tmp_path / "cache")
    where = subprocess.run(
        [fresh_python, "-c", "import packager, targets; from packager.resources import templates_dir, mobile_dir;"
         "print(packager.__file__); print(templates_dir()); print(mobile_dir())"],
        check=True, capture_output=True, text=True, cwd=workdir, env=env).stdout.split()
    assert all(p.startswith(str(fresh)) for p in where), where
    assert where[1].endswith("packager/_data/templates") and where[2].endswith("packager/_data/mobile")

    edgepack = fresh / "bin" / "edgepack"
    listed = subprocess.run([edgepack, "targets"], capture_output=True, text=True, cwd=workdir, env=env)
    assert listed.returncode == 0 and "raspberry-pi" in listed.stdout, listed.stderr
    build = subprocess.run([edgepack, "build", str(tiny_llama), "--target", "raspberry-pi", "--quant", "F16",
                            "--out", "dist/tiny"], capture_output=True, text=True, cwd=workdir, env=env)
    assert build.returncode == 0, build.stderr[-3000:]
    bundle = workdir / "dist" / "tiny" / "raspberry-pi"
    assert (bundle / "install.sh").is_file() and (bundle / "client.py").is_file()
    assert (bundle / "model-F16.gguf").is_file()
