"""Raspberry Pi: a GGUF served by llama.cpp's llama-server under systemd, plus install script and client."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from packager import __version__
from packager.architectures import ArchitectureSpec
from packager.codecheck import check_generated_files
from packager.contract import Contract, PromptFormat, fill_template_source
from packager.devices import DeviceProfile
from packager.escaping import slug
from packager.fleet import Fleet, choose_fleet_gguf
from packager.formats.gguf_writer import writes_architecture
from packager.stage_cache import place_artifact
from packager.stages import BuildContext
from packager.target import TargetResult
from packager.target_bundle import finish_bundle
from packager.templating import render_tree
from packager.window_cache import full_window_cache

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
        name = ctx.model_name
        shipped = _Shipped(choice.quant, choice.file, {name: choice.adapter} if choice.adapter else {},
                           select_adapter=False)
        return self._bundle(ctx, out_dir, shipped, {name: choice.verification}, choice.as_dict(), choice.notes(), {})

    def build_fleet(self, fleet: Fleet, out_dir: Path) -> TargetResult:
        """One llama-server: the base GGUF once (the smallest rung on which every specialist passes) and an
        adapter per specialist, all loaded; each request picks its specialist with per-request adapter scales."""
        choice = choose_fleet_gguf(fleet, self)
        shipped = _Shipped(choice.quant, choice.file, choice.adapters, select_adapter=True)
        sections = {"specialists": [
            {"name": s.name, "lora_adapter": choice.adapters[s.name].name, "lora_id": i,
             "contract": s.ctx.contract.as_dict()} for i, s in enumerate(fleet.specialists)]}
        # The server is set up for the longest context any specialist needs.
        widest = max((s.ctx for s in fleet.specialists), key=lambda c: c.context_length)
        return self._bundle(widest, out_dir, shipped, choice.verifications, choice.as_dict(), choice.notes(),
                            sections, model_name=fleet.base.model_name,
                            contract=fleet.base.contract,
                            prompts={s.name: s.ctx.contract.prompt for s in fleet.specialists})

    def _bundle(self, ctx: BuildContext, out_dir: Path, shipped: _Shipped, verifications: dict[str, Any],
                choice: dict[str, Any], notes: list[str], sections: dict[str, Any], model_name: str | None = None,
                contract: Contract | None = None, prompts: dict[str, PromptFormat] | None = None) -> TargetResult:
        """Write the bundle: the GGUF, its adapters, the rendered service files; `verifications` by specialist,
        `prompts` (a fleet) each specialist's prompt format, which client.py --specialist renders."""
        quant = shipped.quant
        gguf_file = f"model-{quant}.gguf"
        out_dir.mkdir(parents=True, exist_ok=True)
        place_artifact(shipped.file, out_dir / gguf_file)
        adapters = []
        for name, path in shipped.adapters.items():
            place_artifact(path, out_dir / path.name)
            adapters.append({"name": name, "file": path.name,
                             "size_mb": round((out_dir / path.name).stat().st_size / 2**20, 1)})
        results = [result.shipped_as(self.name, [gguf_file, *([shipped.adapters[name].name]
                                                             if name in shipped.adapters else [])])
                   for name, result in verifications.items()]

        model_name = model_name or ctx.model_name
        context_length = ctx.context_length
        contract = contract or ctx.contract
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
            "full_window_cache": full_window_cache(ctx.ckpt.config, context_length),
            "bos_ids": [contract.bos_id] if contract.add_bos and contract.bos_id is not None else [],
            "eos_ids": contract.eos_ids,
            "verification_rows": [r.summary_row(r.artifact.removeprefix(f"{self.name}/")) for r in results],
            "edgepack_version": __version__,
            "size_mb": round((out_dir / gguf_file).stat().st_size / 2**20, 1),
            "adapters": adapters,
            "select_adapter": shipped.select_adapter,
            "specialist_prompts": {name: {"prefix": p.prefix, "template": p.template, "suffix": p.suffix}
                                   for name, p in (prompts or {}).items()},
            "fill_template_source": fill_template_source(),
        }
        rendered = render_tree("raspberry-pi", out_dir, template_context)
        checks = check_generated_files(rendered, out_dir)
        single = None if shipped.select_adapter or not adapters else adapters[0]["file"]
        # A fleet: which specialist each verified artifact serves (the terminal summary's tables).
        served = {r.artifact: name for name, r in zip(verifications, results, strict=True)} if (
            shipped.select_adapter) else {}

        return finish_bundle(
            out_dir, self,
            {"model": {"name": model_name, "file": gguf_file, "format": "gguf", "quant": quant,
                       "context_length": context_length,
                       **({} if shipped.select_adapter else {"lora_adapter": single})},
             **sections, "contract": contract.as_dict(), "gguf_choice": choice},
            results, checks,
            notes=[*notes,
                   "Raspberry Pi numbers in this report were measured on the build host (x86-64), not on a Pi."],
            specialists=served,
        )


@dataclass(frozen=True)
class _Shipped:
    """What the bundle's llama-server loads: the GGUF and, by specialist (or build) name, its LoRA adapters."""

    quant: str
    file: Path
    adapters: dict[str, Path]
    select_adapter: bool
