"""llama.cpp's reference HF -> GGUF converter and quantizer, fetched on demand rather than committed.

Benchmarks and tests compare edgepack's GGUF output with llama.cpp's own. Its converter is a
Python script inside the pinned llama-cpp-python sdist (vendor/llama.cpp/); we download that sdist
with pip (cached), unpack only the converter, its `conversion` package and its `gguf-py`, and run
them in subprocesses so that each run's wall time and peak RSS can be measured on its own.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from packager.fingerprint import cache_root

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
_SDIST = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
_VENDOR = "vendor/llama.cpp/"
# What the converters need of the sdist: the scripts, their per-architecture package and the gguf-py they pin.
_WANTED = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/")
# Part of the cache folder's name: bump when _WANTED grows, so a folder extracted before is not taken as whole.
_LAYOUT = 2
_STDERR_TAIL = 4000

# Runs the converter with a fixed pre-tokenizer name: tiny test tokenizers have hashes llama.cpp's table
# does not know. argv[1] is the converter folder, argv[2] the name, the rest the converter's own argv.
_FIXED_PRE_WRAPPER = """\
import sys
folder, pre_name = sys.argv[1], sys.argv[2]
sys.path[0:0] = [folder, folder + "/gguf-py"]
import convert_hf_to_gguf
import conversion.base
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre_name
sys.argv = ["convert_hf_to_gguf.py", *sys.argv[3:]]
convert_hf_to_gguf.main()
"""

# llama-quantize's behaviour: default params, only the file type set (nthread 0 = all cores).
_QUANTIZE = """\
import sys
import gguf
import llama_cpp
src, dest, qtype = sys.argv[1:4]
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = int(gguf.LlamaFileType["MOSTLY_" + qtype])
rc = llama_cpp.llama_model_quantize(src.encode(), dest.encode(), params)
if rc != 0:
    sys.exit(f"llama_model_quantize returned {rc}")
"""


class ReferenceToolError(RuntimeError):
    """The reference converter or quantizer failed; the message ends with its stderr."""


def _run(argv: list[str], what: str) -> None:
    """Run a reference tool; stderr goes to a file so a chatty child never blocks on a full pipe."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=err)
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode("utf-8", "replace")[-_STDERR_TAIL:]
            raise ReferenceToolError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def _wanted(rel: str) -> bool:
    """Say whether a path below vendor/llama.cpp/ is part of the converter."""
    return any(rel == w or (w.endswith("/") and rel.startswith(w)) for w in _WANTED)


def download_sdist(dest: Path) -> Path:
    """Download the pinned llama-cpp-python sdist into `dest`; pip's HTTP cache makes every download after
    the first a local copy."""
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(dest)]
    _run(argv, "pip download of the llama-cpp-python sdist")
    sdist = dest / _SDIST
    if not sdist.is_file():
        raise ReferenceToolError(f"pip download did not produce {_SDIST} in {dest}")
    return sdist


def _extract(sdist: Path, dest: Path) -> None:
    root = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/{_VENDOR}"
    # Regular files only, written one by one: no links, no paths leaving dest, and no dependence on
    # extractall(filter=...), which Debian's Python 3.11.2 does not have.
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            rel = member.name[len(root):]
            if not (member.isfile() and member.name.startswith(root) and _wanted(rel)):
                continue
            if rel.startswith("/") or ".." in Path(rel).parts:
                raise ReferenceToolError(f"{sdist.name}: unsafe path {member.name!r} in the archive")
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None  # a regular file always has content
            target.write_bytes(source.read())
    needed = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/base.py")
    if not all((dest / f).is_file() for f in needed):
        raise ReferenceToolError(f"{sdist.name} lacks {_VENDOR}convert_hf_to_gguf.py, convert_lora_to_gguf.py or the "
                                 "conversion package")


def reference_converter_dir(cache: Path | None = None) -> Path:
    """Return the folder holding llama.cpp's convert_hf_to_gguf.py, fetching it once per cache."""
    target = (cache or cache_root()) / "reference-converter" / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}-{_LAYOUT}"
    if (target / "convert_hf_to_gguf.py").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgepack-refconv-", dir=target.parent) as tmp:
        staging = Path(tmp) / "llama.cpp"
        _extract(download_sdist(Path(tmp) / "sdist"), staging)
        try:
            staging.rename(target)  # atomic: a reader sees no folder or a complete one
        except OSError:
            if not (target / "convert_hf_to_gguf.py").is_file():  # not a concurrent winner: a real failure
                raise
    return target


def reference_convert_argv(
    model_dir: Path, out_file: Path, outtype: str = "f16", pre_tokenizer: str | None = None,
    wrapper: Path | None = None, cache: Path | None = None,
) -> list[str]:
    """Return the command line of one reference conversion (with `pre_tokenizer`, `wrapper` is required)."""
    folder = reference_converter_dir(cache)
    args = [str(model_dir), "--outtype", outtype, "--outfile", str(out_file)]
    if pre_tokenizer is None:
        return [sys.executable, str(folder / "convert_hf_to_gguf.py"), *args]
    if wrapper is None:
        raise ValueError("a fixed pre-tokenizer needs a wrapper script path")
    wrapper.write_text(_FIXED_PRE_WRAPPER, encoding="utf-8")
    return [sys.executable, str(wrapper), str(folder), pre_tokenizer, *args]


def run_reference_convert(
    model_dir: Path, out_file: Path, outtype: str = "f16", pre_tokenizer: str | None = None,
    cache: Path | None = None,
) -> None:
    """Convert an HF folder to GGUF with llama.cpp's converter, optionally forcing tokenizer.ggml.pre."""
    with tempfile.TemporaryDirectory(prefix="edgepack-refconv-run-") as tmp:
        argv = reference_convert_argv(model_dir, out_file, outtype, pre_tokenizer, Path(tmp) / "fixed_pre.py", cache)
        _run(argv, f"llama.cpp's convert_hf_to_gguf.py on {model_dir}")


def run_reference_lora_convert(adapter_dir: Path, base_dir: Path, out_file: Path, outtype: str = "f16",
                               cache: Path | None = None) -> None:
    """Convert a PEFT LoRA adapter to a GGUF adapter with llama.cpp's convert_lora_to_gguf.py (base from a folder)."""
    script = reference_converter_dir(cache) / "convert_lora_to_gguf.py"
    argv = [sys.executable, str(script), str(adapter_dir), "--base", str(base_dir), "--outtype", outtype,
            "--outfile", str(out_file)]
    _run(argv, f"llama.cpp's convert_lora_to_gguf.py on {adapter_dir}")


def reference_quantize_argv(src: Path, dest: Path, qtype: str = "Q4_K_M") -> list[str]:
    """Return the command line of one llama-quantize-equivalent run."""
    return [sys.executable, "-c", _QUANTIZE, str(src), str(dest), qtype.upper()]


def run_reference_quantize(src: Path, dest: Path, qtype: str = "Q4_K_M") -> None:
    """Quantize a GGUF as llama-quantize does (default params), in a subprocess."""
    _run(reference_quantize_argv(src, dest, qtype), f"llama.cpp's quantizer ({src.name} -> {qtype})")


def main() -> None:
    """`python benchmarks/reference_converter.py` fetches the converter and prints its folder."""
    print(reference_converter_dir())


if __name__ == "__main__":
    main()
