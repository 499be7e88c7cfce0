"""Raspberry Pi: a GGUF served by llama.cpp's llama-server under systemd, plus install script and client."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from packager import __version__
from packager.codecheck import check_generated_files
from packager.escaping import slug
from packager.manifest import file_entries, without_host_measurements, write_json
from packager.stage_cache import place_artifact
from packager.stages import BuildContext
from packager.target import TargetResult
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

    def build(self, ctx: BuildContext, out_dir: Path) -> TargetResult:
        quant = ctx.options.gguf_quant(self.name)
        gguf_file = f"model-{quant}.gguf"
        out_dir.mkdir(parents=True, exist_ok=True)
        place_artifact(ctx.gguf(quant), out_dir / gguf_file)
        verification = ctx.verify_gguf(quant, f"{self.name}/{gguf_file}")

        model_name = ctx.options.name or ctx.ckpt.name
        context_length = min(ctx.options.context_length, int(ctx.ckpt.config.get("max_position_embeddings", 4096)))
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
            "verification_rows": [verification.summary_row(gguf_file)],
            "edgepack_version": __version__,
            "size_mb": round((out_dir / gguf_file).stat().st_size / 2**20, 1),
        }
        rendered = render_tree("raspberry-pi", out_dir, template_context)
        checks = check_generated_files(rendered, out_dir)

        files = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file())
        write_json(out_dir / "edgepack.json", {
            "target": self.name,
            "runtime": self.runtime,
            "model": {"name": model_name, "file": gguf_file, "format": "gguf", "quant": quant,
                      "context_length": context_length},
            "contract": contract.as_dict(),
            "files": file_entries(out_dir, files),
            "verification": [without_host_measurements(verification.as_dict())],
            "scaffold_checks": [vars(c) for c in checks],
            "edgepack_version": __version__,
        })
        return TargetResult(
            target=self.name,
            files=[*files, "edgepack.json"],
            verifications=[verification],
            scaffold_checks=checks,
            notes=["Raspberry Pi numbers in this report were measured on the build host (x86-64), not on a Pi."],
        )
