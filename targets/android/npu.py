"""NPU variants of a LiteRT-LM bundle: what ships so a team can compile them where the vendors' SDKs install.

LiteRT's ahead-of-time compilation (ai_edge_litert.aot) turns a bundle's TFLite program into one for a
single SoC with the vendor's compiler plugin. The plugins ship inside ai-edge-litert, but they load the
vendor's SDK, which only its registry package brings, by downloading it when it is installed
(ai-edge-litert-sdk-qualcomm 2.3.0 fetches Qualcomm AI Runtime 2.50 from softwarecenter.qualcomm.com):
measured here, the compile of a bundle stops at "libQnnHtp.so: cannot open shared object file". So edgepack
builds no NPU bundle and ships none untested; the Android bundle gets npu/: the compile script
(mobile/android/npu/compile_npu.py, whose unpack/repack half is tested here with the compiler left out), the
exact commands per bundle and SoC, and a CI workflow for a machine that can install the SDKs. The app opens
<name>-npu-<soc>.litertlm for the phone's Build.SOC_MODEL when that file is in its model folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from packager.resources import copy_mobile_files
from packager.templating import render_tree
from targets.android.litert_export import LITERT_LM_VERSION

NPU_DIR = "npu"
COMPILE_SCRIPT = "compile_npu.py"
WORKFLOW = "litert-npu.yml"  # a GitHub Actions workflow: rendered with [[ ]] (packager.templating.BRACKET_DELIMITERS)
# ai-edge-litert, whose AOT tooling and compiler plugins the script drives (the build's own pin), and the SDK
# packages of the same release.
AI_EDGE_LITERT_VERSION = "2.3.0"


@dataclass(frozen=True)
class NpuVendor:
    """A vendor whose NPU LiteRT compiles for: the registry package bringing its SDK, and what that SDK is."""

    name: str
    soc_prefix: str  # its SoC models' prefix, as in Build.SOC_MODEL
    sdk_package: str
    sdk: str


@dataclass(frozen=True)
class NpuSoc:
    """A SoC the commands compile for: its model as Build.SOC_MODEL reports it, its vendor and its chip name."""

    model: str
    vendor: NpuVendor
    chip: str


QUALCOMM = NpuVendor("Qualcomm", "SM", "ai-edge-litert-sdk-qualcomm", "Qualcomm AI Runtime (QAIRT)")
MEDIATEK = NpuVendor("MediaTek", "MT", "ai-edge-litert-sdk-mediatek", "MediaTek NeuroPilot")
# The flagship SoCs of the last two years of each vendor that ai-edge-litert 2.3.0 targets. Google Tensor (Pixel)
# is left out: its SDK is in experimental access.
NPU_SOCS = (
    NpuSoc("SM8650", QUALCOMM, "Snapdragon 8 Gen 3"),
    NpuSoc("SM8750", QUALCOMM, "Snapdragon 8 Elite"),
    NpuSoc("MT6989", MEDIATEK, "Dimensity 9300"),
    NpuSoc("MT6991", MEDIATEK, "Dimensity 9400"),
)


def npu_kit(out_dir: Path, bundles: list[str], model_name: str) -> list[Path]:
    """Write out_dir/npu/: the compile script, its README with the commands for `bundles` (file names beside
    npu/), and a CI workflow running them; return the written files."""
    dest = out_dir / NPU_DIR
    vendors = list(dict.fromkeys(soc.vendor for soc in NPU_SOCS))
    context = {
        "model_name": model_name,
        "bundles": bundles,
        "socs": [{"model": s.model, "file_soc": s.model.lower(), "vendor": s.vendor.name, "chip": s.chip}
                 for s in NPU_SOCS],
        "vendors": [{"name": v.name, "soc_prefix": v.soc_prefix, "sdk_package": v.sdk_package, "sdk": v.sdk}
                    for v in vendors],
        "ai_edge_litert_version": AI_EDGE_LITERT_VERSION,
        "litert_lm_version": LITERT_LM_VERSION,
        "script": COMPILE_SCRIPT,
    }
    written = render_tree("android-npu", dest, context, bracketed=(f"{WORKFLOW}.j2",))
    return sorted([*written, *copy_mobile_files("android/npu", (COMPILE_SCRIPT,), dest)])
