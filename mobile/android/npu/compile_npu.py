#!/usr/bin/env python3
"""Compile an edgepack LiteRT-LM bundle ahead of time for a phone's NPU (Qualcomm or MediaTek).

edgepack ships <name>.litertlm, which LiteRT-LM runs on the CPU and GPU. Its NPU backend needs the
bundle's TFLite program compiled for one SoC by the vendor's compiler, which LiteRT's AOT tooling
(ai-edge-litert) drives; the vendor's SDK comes with a registry package that downloads it when it
is installed (ai-edge-litert-sdk-qualcomm fetches Qualcomm's AI Runtime, ai-edge-litert-sdk-mediatek
NeuroPilot), so this runs on a machine that can reach those downloads, not on edgepack's build host.

    python compile_npu.py ../router.litertlm --soc SM8750 --soc MT6991

writes ../router-npu-sm8750.litertlm and ../router-npu-mt6991.litertlm: the same bundle (tokenizer,
metadata, stop tokens) with the program replaced by the compiled one and marked for the NPU. The app's
EdgeModel opens <name>-npu-<soc>.litertlm when the phone's SoC (Build.SOC_MODEL) has one, and falls back
to the GPU and CPU otherwise. Nothing here was run on an NPU by edgepack: test each file on its phone.

Exit codes: 0 written, 1 the compiler failed (the reason is printed), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

# The section of a bundle that holds the prefill/decode program (litert_lm_builder's TF-free name).
PROGRAM_MODEL_TYPE = "prefill_decode"
# SoC name prefix -> (ai_edge_litert vendor module, the registry package that brings its SDK).
VENDORS = {
    "SM": ("qualcomm", "ai-edge-litert-sdk-qualcomm"),
    "MT": ("mediatek", "ai-edge-litert-sdk-mediatek"),
}

# (program bytes, SoC) -> compiled program bytes; raises CompileError.
Compiler = Callable[[bytes, str], bytes]


class CompileError(Exception):
    """The vendor's compiler did not produce a program for this SoC."""


def npu_bundle_path(bundle: Path, soc: str, out_dir: Path) -> Path:
    """router.litertlm + SM8750 -> out_dir/router-npu-sm8750.litertlm (the name the app looks for)."""
    return out_dir / f"{bundle.name.removesuffix('.litertlm')}-npu-{soc.lower()}.litertlm"


def vendor_of(soc: str) -> tuple[str, str]:
    """The ai_edge_litert vendor module and SDK package of a SoC name, or ValueError naming the choices."""
    for prefix, vendor in VENDORS.items():
        if soc.upper().startswith(prefix):
            return vendor
    raise ValueError(f"--soc {soc}: not a Qualcomm (SM....) or MediaTek (MT....) SoC model; Google Tensor's SDK "
                     "is in experimental access and not handled here")


def aot_compile(program: bytes, soc: str) -> bytes:
    """Compile a TFLite program for one SoC with LiteRT's AOT tooling and the vendor's compiler plugin."""
    import importlib

    from ai_edge_litert.aot import aot_compile as aot
    from ai_edge_litert.aot.core import aot_types

    module, package = vendor_of(soc)
    target_module = importlib.import_module(f"ai_edge_litert.aot.vendors.{module}.target")
    try:
        soc_model = target_module.SocModel(soc.upper())
    except ValueError:
        known = ", ".join(m.value for m in target_module.SocModel if m.value != "ALL")
        raise ValueError(f"--soc {soc}: ai-edge-litert does not know it; {module} SoCs: {known}") from None
    with tempfile.TemporaryDirectory() as work:
        result = aot.aot_compile(aot_types.Model.create_from_bytes(program), output_dir=work,
                                 target=target_module.Target(soc_model), keep_going=True)
        if not result.models_with_backend:
            reasons = "; ".join(str(reason).rstrip(".") for _, reason in result.failed_backends) or "no output"
            raise CompileError(f"{reasons}. Is {package} installed? It downloads the vendor's SDK when installed "
                               f"(pip install {package}); without it the compiler plugin cannot load.")
        _, model = result.models_with_backend[0]
        return model.model_bytes if model.in_memory else model.path.read_bytes()


def compile_bundle(bundle: Path, soc: str, out_dir: Path, compiler: Compiler = aot_compile) -> Path:
    """Write bundle's NPU variant for `soc` into out_dir, whole or not at all; return its path."""
    from litert_lm_builder import litertlm_builder

    target = npu_bundle_path(bundle, soc, out_dir)
    with tempfile.TemporaryDirectory() as work:
        toml = Path(litertlm_builder.unpack(str(bundle), os.path.join(work, "unpacked")))
        program = next((p for p in toml.parent.glob("*.tflite") if PROGRAM_MODEL_TYPE in p.name), None)
        if program is None:
            raise CompileError(f"{bundle}: no {PROGRAM_MODEL_TYPE} TFLite program in the bundle")
        program.write_bytes(compiler(program.read_bytes(), soc))
        builder = litertlm_builder.LitertLmFileBuilder.from_toml_file(str(toml))
        builder.set_backend_constraint(PROGRAM_MODEL_TYPE, "npu")
        partial = Path(work) / target.name
        with partial.open("wb") as stream:
            builder.build(stream)
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(partial, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="an edgepack .litertlm (model.litertlm, <specialist>.litertlm)")
    parser.add_argument("--soc", action="append", required=True,
                        help="SoC model as Build.SOC_MODEL reports it (SM8750, MT6991, ...); repeatable")
    parser.add_argument("--out", type=Path, help="folder for the NPU bundles (default: beside the bundle)")
    args = parser.parse_args(argv)
    if not args.bundle.is_file():
        print(f"{args.bundle}: no such bundle (pass an edgepack .litertlm)", file=sys.stderr)
        return 2
    try:
        for soc in args.soc:
            vendor_of(soc)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    failed = 0
    for soc in args.soc:
        try:
            written = compile_bundle(args.bundle, soc, args.out or args.bundle.parent)
            print(f"{soc}: wrote {written} ({written.stat().st_size / 2**20:.1f} MB)")
        except (CompileError, ValueError) as e:
            print(f"{soc}: not compiled: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
