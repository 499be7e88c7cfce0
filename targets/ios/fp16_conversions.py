"""Apple's Core AI interpreter at the speed of the CPU's own fp16 conversions.

coreai-core's Linux interpreter (Swift) turns every fp16 operand into fp32 and back through the compiler
runtime's `__extendhfsf2` / `__truncsfhf2`, which libswiftCore implements in software: profiled 2026-12-07 on
Gemma 3 270M, half of each prediction's time. x86-64 CPUs since 2012 do each conversion in one instruction
(F16C; IEEE round-to-nearest-even, the results the software gives). A library defining the two symbols,
loaded into the global scope before the interpreter module, is found before libswiftCore's (the dynamic
linker searches the global scope before a loaded module's own dependencies): the interpreter's program and
its arithmetic are unchanged (bit-identical logits, tests/test_coreai.py), only the conversions are faster.

The library is compiled here from data/f16c_conversions.c with the host's C compiler, once per source, into
the edgepack cache. Without x86-64 F16C or a C compiler nothing is loaded and the interpreter runs at its own
speed; `active()` says which, for the report.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import secrets
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

from packager.fingerprint import cache_root

SOURCE = Path(__file__).parent / "data" / "f16c_conversions.c"
# The interpreter's own module: once it is loaded, its calls may already be bound to libswiftCore.
INTERPRETER_MODULE = "coreai.runtime"


def _cpu_has_f16c() -> bool:
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " f16c" in flags


def _compiled(source: Path) -> Path | None:
    """The shared library built from `source` (compiled once into the cache; None when it cannot be)."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        return None
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    library = cache_root() / "native" / f"f16c-conversions-{digest}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    # Named as the stage cache names its temporaries, so that one a killed build left is collected.
    partial = library.with_name(f".{library.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    done = subprocess.run([compiler, "-O2", "-mf16c", "-shared", "-fPIC", "-o", str(partial), str(source)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0 or not partial.exists():
        partial.unlink(missing_ok=True)
        return None
    partial.replace(library)
    return library


@cache
def active() -> bool:
    """Load the F16C conversions ahead of the interpreter, once per process; True when they are in use."""
    if INTERPRETER_MODULE in sys.modules or not _cpu_has_f16c():
        return False
    library = _compiled(SOURCE)
    if library is None:
        return False
    try:
        ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return False
    return True
