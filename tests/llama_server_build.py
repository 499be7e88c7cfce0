"""llama.cpp's own llama-server, built from the llama.cpp inside the pinned llama-cpp-python sdist.

The Raspberry Pi bundle runs llama-server (install.sh builds this same release on the Pi). Some of
what the bundle relies on exists only there, not in llama-cpp-python's server: several LoRA adapters
loaded by one process and picked per request. Tests of that run the real binary. Building it takes
about 13 CPU-minutes, so a test session that needs it starts the build in the background at its
start, at the lowest priority (conftest.py), and the test waits for it; the binary is kept in the
stage cache folder (one static executable), so a second session starts at once.

    python tests/llama_server_build.py     # build it now (prints its path)
"""

from __future__ import annotations

import fcntl
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.reference_converter import LLAMA_CPP_PYTHON_VERSION, download_sdist  # noqa: E402
from packager.fingerprint import cache_root  # noqa: E402

# Bump when the build options below change, so a binary built before is not reused.
_LAYOUT = 2
_CMAKE_OPTIONS = ("-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                  "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON",
                  "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_HTML=OFF", "-DLLAMA_BUILD_APP=OFF")
# As scripts/setup.sh does for llama-cpp-python: llama.cpp's AMX matmul, which -march=native compiles
# in on Intel CPUs with AMX, segfaults on small models' Q8_0 weights (ggml-org/llama.cpp#20824).
_NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def binary_path() -> Path:
    """Where the built llama-server lives (it may not exist yet)."""
    return cache_root() / "llama-server" / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}-{_LAYOUT}" / "llama-server"


def build_log_path() -> Path:
    return binary_path().parent.with_name(binary_path().parent.name + ".log")


def missing_build_tools() -> list[str]:
    return [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]


def build() -> Path:
    """Build llama-server once per cache (atomically: a reader sees no binary or a whole one); a second
    session asking meanwhile waits for the first one's build instead of starting its own."""
    target = binary_path()
    if target.is_file():
        return target
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent.parent / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return target if target.is_file() else _build(target)


def _build(target: Path) -> Path:
    log = build_log_path()
    with tempfile.TemporaryDirectory(prefix="edgepack-llama-server-", dir=target.parent.parent) as tmp, \
            log.open("w") as out:
        sdist = download_sdist(Path(tmp) / "sdist")
        with tarfile.open(sdist) as tar:
            # Regular files and folders with plain relative names only (Debian's Python 3.11.2 has no filter=).
            members = [m for m in tar.getmembers() if (m.isfile() or m.isdir())
                       and not m.name.startswith("/") and ".." not in Path(m.name).parts]
            tar.extractall(Path(tmp) / "src", members=members)
        source = Path(tmp) / "src" / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}" / "vendor" / "llama.cpp"
        build_dir = Path(tmp) / "build"
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        subprocess.run(["cmake", "-S", str(source), "-B", str(build_dir), *generator, *_CMAKE_OPTIONS, *_amx_off()],
                       stdout=out, stderr=subprocess.STDOUT, check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--target", "llama-server", "-j", str(os.cpu_count())],
                       stdout=out, stderr=subprocess.STDOUT, check=True)
        staging = Path(tmp) / "out"
        staging.mkdir()
        shutil.copy2(build_dir / "bin" / "llama-server", staging / "llama-server")
        try:
            staging.rename(target.parent)
        except OSError:
            if not target.is_file():  # not a concurrent winner: a real failure
                raise
    return target


def _amx_off() -> list[str]:
    """CMake flags that compile llama.cpp's AMX kernels out, where the compiler targets x86-64 and knows them."""
    if platform.machine() != "x86_64":
        return []
    probe = subprocess.run(["c++", *_NO_AMX.split(), "-x", "c++", "-E", "-"], input=b"", capture_output=True)
    return [f"-DCMAKE_C_FLAGS={_NO_AMX}", f"-DCMAKE_CXX_FLAGS={_NO_AMX}"] if probe.returncode == 0 else []


def start_in_background() -> subprocess.Popen[bytes] | None:
    """Start building at the lowest CPU priority unless the binary exists or a tool is missing."""
    if binary_path().is_file() or missing_build_tools():
        return None
    return subprocess.Popen(["nice", "-n", "19", sys.executable, __file__], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    print(build())
