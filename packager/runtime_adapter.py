"""A LoRA fine-tune shipped as its base's GGUF plus a GGUF adapter that llama.cpp applies at run time.

Merged and then quantized to 4 bits, a small fine-tune's deltas are rounded back onto the base's
grid: the bundled example's router answers 0.537 of its eval set at merged Q4_K_M, 0.926 in fp32.
Kept apart, the adapter stays in F16 and llama.cpp adds its product to the quantized base's output.
With --runtime-adapter, a target whose runtime applies adapters ships the base GGUF (walking the
GGUF ladder as usual) and adapter-<name>.gguf, and the pair is verified like any GGUF: on the
golden text and the eval set in llama.cpp, against the fp32 merged model. The base's GGUFs are the
base checkpoint's own cached stages, so every specialist of one base shares them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from packager.checkpoint import Checkpoint, open_model_folder
from packager.errors import BadInputError
from packager.escaping import slug
from packager.fingerprint import files_digest, options_digest
from packager.formats.gguf_lora import write_gguf_lora
from packager.gguf_ladder import GgufChoice, choose_gguf
from packager.once import once_property
from packager.verify.result import VerificationResult

if TYPE_CHECKING:
    from packager.stages import BuildContext

# Bump when the adapter file written for the same adapter changes.
ADAPTER_WRITER_VERSION = 1
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def check_runtime_adapter_input(ckpt: Checkpoint, source: Path) -> None:
    """--runtime-adapter needs a LoRA adapter folder as the input (a merged model has no adapter to keep apart)."""
    if ckpt.origin.get("kind") != "peft-adapter":
        raise BadInputError(
            f"{source}: --runtime-adapter ships a LoRA adapter beside its base model, but this is a whole model "
            "folder. Pass the PEFT adapter folder (with --base DIR), or drop --runtime-adapter.")


class RuntimeAdapter:
    """The adapter of a build whose input is a LoRA adapter, as a GGUF adapter on its base's GGUFs."""

    def __init__(self, ctx: BuildContext) -> None:
        self.ctx = ctx
        self.folder = Path(ctx.ckpt.origin["adapter"])
        self.base_dir = Path(ctx.ckpt.origin["base"])
        # A file name every bundle and script can carry as is, whatever the build's name holds.
        self.name = f"adapter-{slug(ctx.model_name)}"

    @once_property
    def base(self) -> BuildContext:
        """The base checkpoint's own stages (its GGUFs), in this build's cache and scheduler: those the build
        shares between its adapters (a fleet's), else opened here."""
        from packager.stages import BuildContext

        if self.ctx.base is not None:
            return self.ctx.base
        # Its values were scanned when the adapter was merged into it.
        ckpt = open_model_folder(self.base_dir, scan_values=False)
        ctx = self.ctx
        return BuildContext(ckpt, ckpt.content_digest(), ctx.options, ctx.reporter, ctx.cache, ctx.scheduler)

    @once_property
    def file(self) -> tuple[Path, str]:
        """The F16 GGUF adapter in the stage cache, and its sha256."""
        adapter_files = [self.folder / f for f in ADAPTER_FILES if (self.folder / f).is_file()]
        file_name = f"{self.name}.gguf"
        key = options_digest("gguf-lora", ADAPTER_WRITER_VERSION, files_digest(adapter_files),
                             self.base.ckpt_digest, file_name)[:24]

        def write(folder: Path) -> dict[str, int]:
            self.ctx.reporter.say(f"writing the LoRA adapter as GGUF ({file_name}, F16)")
            path = write_gguf_lora(self.folder, self.base.ckpt, folder / file_name, "F16", name=self.name)
            return {"bytes": path.stat().st_size}

        entry = self.ctx.stage_cache.entry("gguf-lora", key, "gguf LoRA adapter (F16)", write,
                                           describe=lambda v: f"{file_name}, {v['bytes'] / 2**20:.1f} MB")
        return entry.path(file_name), entry.sha256(file_name)

    def verified(self, quant: str) -> tuple[Path, VerificationResult]:
        """The base's `quant` GGUF with the adapter applied, verified against the fp32 merged model (cached)."""
        base_path, base_sha = self.base.gguf_file(quant)
        result = self.ctx.verified_gguf(base_path, base_sha, quant, lora=self.file)
        return base_path, dataclasses.replace(result, notes=[*result.notes, _note(quant, self.file[0])])

    def choice(self, rungs: tuple[str, ...], explicit: bool) -> GgufChoice:
        """Walk `rungs` of the base's GGUF with the adapter applied; the shipped choice carries the adapter."""
        choice = choose_gguf(rungs, self.verified, explicit=explicit)
        return dataclasses.replace(choice, adapter=self.file[0])


def _note(quant: str, adapter: Path) -> str:
    return (f"LoRA applied at run time: the base model's {quant} GGUF with {adapter.name} (F16) applied by llama.cpp, "
            "judged against the fp32 merged model")
