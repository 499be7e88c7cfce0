"""Finding the external programs some tests check generated files with.

A missing tool skips its check on a developer machine, but fails it when EDGEPACK_REQUIRE_TOOLS=1
(as CI sets), so a runner image that lost shellcheck cannot turn the suite silently green.
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

# Debian/Ubuntu packages that provide each tool (named in the skip or failure message).
APT_PACKAGES = {
    "bash": "bash",
    "dash": "dash",
    "shellcheck": "shellcheck",
    "systemd-analyze": "systemd",
    "libsystemd-shared": "systemd (libsystemd-shared)",
    "node": "nodejs",
    "setpriv": "util-linux",
}


def tools_required() -> bool:
    return os.environ.get("EDGEPACK_REQUIRE_TOOLS") == "1"


def missing(tool: str) -> None:
    """Skip the calling test because tool is absent, or fail it under EDGEPACK_REQUIRE_TOOLS=1."""
    package = APT_PACKAGES.get(tool, tool)
    message = f"{tool} is not installed (apt-get install {package})"
    if tools_required():
        pytest.fail(f"{message}, and EDGEPACK_REQUIRE_TOOLS=1 says every check must run")
    pytest.skip(message)


def require_tool(name: str) -> str:
    """Return the path of an executable on PATH, or skip/fail the test (see missing())."""
    path = shutil.which(name)
    if path is None:
        missing(name)
    return str(path)


def systemd_env_file_loader() -> ctypes.CDLL:
    """Return systemd's shared library, whose load_env_file() is the EnvironmentFile= parser.

    libsystemd-shared is systemd's private library, but load_env_file(FILE*, const char*, char***)
    has kept this signature since systemd 240, and calling it is the only way to ask systemd
    itself how it reads a file without booting a service manager.
    """
    candidates = glob.glob("/usr/lib/*/systemd/libsystemd-shared-*.so") + glob.glob(
        "/lib/systemd/libsystemd-shared-*.so"
    )
    for candidate in sorted(candidates):
        version = candidate.rsplit("-", 1)[-1].removesuffix(".so").split(".")[0]
        if version.isdigit() and int(version) >= 240:
            lib = ctypes.CDLL(candidate)
            lib.load_env_file.argtypes = [
                ctypes.c_void_p,
                ctypes.c_char_p,
                ctypes.POINTER(ctypes.POINTER(ctypes.c_char_p)),
            ]
            lib.load_env_file.restype = ctypes.c_int
            lib.strv_free.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
            lib.strv_free.restype = ctypes.c_void_p
            return lib
    missing("libsystemd-shared")
    raise AssertionError("unreachable")


def systemd_read_env_file(path: str) -> dict[str, str]:
    """Return the variables systemd's EnvironmentFile= parser reads from path."""
    lib = systemd_env_file_loader()
    result = ctypes.POINTER(ctypes.c_char_p)()
    status = lib.load_env_file(None, path.encode(), ctypes.byref(result))
    assert status == 0, f"systemd's load_env_file({path}) failed with {status}"
    variables: dict[str, str] = {}
    index = 0
    while result[index] is not None:
        key, _, value = result[index].decode("utf-8").partition("=")
        variables[key] = value
        index += 1
    lib.strv_free(result)
    return variables


def bash_read_env_file(path: str, prefix: str) -> dict[str, str]:
    """Return the variables starting with prefix after `set -a; . path` in bash."""
    dump = "import json, os, sys; print(json.dumps({k: v for k, v in os.environ.items() if k.startswith(sys.argv[1])}))"
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(prefix)}
    result = subprocess.run(
        [
            require_tool("bash"),
            "-c",
            'set -a; . "$1"; exec "$2" -c "$3" "$4"',
            "_",
            path,
            sys.executable,
            dump,
            prefix,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env=clean_env,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
