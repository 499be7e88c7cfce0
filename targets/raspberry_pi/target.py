"""Raspberry Pi: a GGUF served by llama.cpp's llama-server under systemd, plus install script and client."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from packager import __version__
from packager.architectures import ArchitectureSpec
from packager.codecheck import check_generated_files
from packager.devices import DeviceProfile
from packager.escaping import slug
from packager.formats.gguf_writer import writes_architecture
from packager.stage_cache import place_artifact
from packager.stages import BuildContext
from packager.target import TargetResult
from packager.target_bundle import finish_bundle
from packager.templating import render_tree

# The llama.cpp release vendored by the pinned llama-cpp-python 0.3.36 (tag b11312, commit
# 0c1e57098bba), which verified the GGUF; install.sh builds this same release on the Pi when no
# llama-server is installed.
LLAMA_CPP_REVISION = "b11312"
DEFAULT_THREADS = 4
DEFAULT_PORT = 8080


class RaspberryPiTarget:
    """model.gguf + systemd unit + env file + install script + client, verified in llama.cpp."""

    name: ClassVar[str] = "raspberry-pi"
    title: ClassVar[str] = "Raspberry Pi OS (64-bit): llama-server under systemd"
    runtime: ClassVar[str] = "llama.cpp llama-server"
    status: ClassVar[str] = "ready"
    # llama.cpp's usual size/fidelity balance on ARM CPUs.
    default_quant: ClassVar[str | None] = "Q4_K_M"
    # llama-server applies a GGUF LoRA adapter at run time (--lora): --runtime-adapter ships one.
    applies_adapters: ClassVar[bool] = True
    # RAM budgets: the share of physical memory a model can count on there (packager.devices).
    devices: ClassVar[tuple[DeviceProfile, ...]] = (
        DeviceProfile("raspberry-pi-5-8gb", "Raspberry Pi 5 (8 GB)", 8, 0.75, "raspberry-pi", "llama.cpp llama-server"),
        DeviceProfile("raspberry-pi-5-4gb", "Raspberry Pi 5 (4 GB)", 4, 0.70, "raspberry-pi", "llama.cpp llama-server"),
        DeviceProfile("raspberry-pi-4", "Raspberry Pi 4 (2 GB)", 2, 0.60, "raspberry-pi", "llama.cpp llama-server",
                      "Cortex-A72 without the dot-product instructions of the Pi 5: expect a fraction of its speed"),
    )

    def supports(self, spec: ArchitectureSpec) -> bool:
        """Every architecture the shared GGUF stage writes."""
        return writes_architecture(spec)

    def build(self, ctx: BuildContext, out_dir: Path) -> TargetResult:
        choice = ctx.chosen_gguf(self, applies_adapters=self.applies_adapters)
        quant = choice.quant
        gguf_file = f"model-{quant}.gguf"
        out_dir.mkdir(parents=True, exist_ok=True)
        place_artifact(choice.file, out_dir / gguf_file)
        lora_file = choice.adapter.name if choice.adapter else None
        if choice.adapter:
            place_artifact(choice.adapter, out_dir / choice.adapter.name)
        shipped = f"{gguf_file} + {lora_file}" if lora_file else gguf_file
        verification = dataclasses.replace(choice.verification, artifact=f"{self.name}/{shipped}")
        if lora_file:  # the artifact's size on the device is both files'
            verification.ships = [f"{self.name}/{gguf_file}", f"{self.name}/{lora_file}"]

        model_name = ctx.options.name or ctx.ckpt.name
        context_length = ctx.context_length
        contract = ctx.contract
        template_context: dict[str, Any] = {
            "model_name": model_name,
            "slug": slug(model_name),
            "gguf_file": gguf_file,
            "quant": quant,
            "context_length": context_length,
            "threads": DEFAULT_THREADS,
            "port": DEFAULT_PORT,
            "host": "127.0.0.1",
            "llama_cpp_tag": LLAMA_CPP_REVISION,
            "chat_template_present": contract.chat_template is not None,
            "bos_ids": [contract.bos_id] if contract.add_bos and contract.bos_id is not None else [],
            "eos_ids": contract.eos_ids,
            "verification_rows": [verification.summary_row(shipped)],
            "edgepack_version": __version__,
            "size_mb": round((out_dir / gguf_file).stat().st_size / 2**20, 1),
            "lora_file": lora_file,
            "lora_size_mb": round((out_dir / lora_file).stat().st_size / 2**20, 1) if lora_file else 0.0,
        }
        rendered = render_tree("raspberry-pi", out_dir, template_context)
        checks = check_generated_files(rendered, out_dir)

        return finish_bundle(
            out_dir, self,
            {"model": {"name": model_name, "file": gguf_file, "format": "gguf", "quant": quant,
                       "context_length": context_length, "lora_adapter": lora_file},
             "contract": contract.as_dict(), "gguf_choice": choice.as_dict()},
            [verification], checks,
            notes=[*choice.notes(),
                   "Raspberry Pi numbers in this report were measured on the build host (x86-64), not on a Pi."],
        )
