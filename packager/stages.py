"""Shared, cached stages of one build, asked for by key: the F16 GGUF is made once per build
(and once per checkpoint across builds), whichever targets need it.

Cached files live under the stage cache (packager.fingerprint.cache_root) and are always written
to a temporary name first, so an interrupted stage never leaves a file that looks finished.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from packager.checkpoint import Checkpoint
from packager.contract import Contract, contract_from_checkpoint
from packager.fingerprint import cache_root, file_sha256, options_digest
from packager.formats.gguf_quantize import quantize_gguf
from packager.formats.gguf_writer import NUMPY_TYPES, write_gguf
from packager.progress import Reporter
from packager.verify.gguf_check import verify_gguf
from packager.verify.golden import GoldenSet, load_golden
from packager.verify.reference import ReferenceLogits, compute_reference, load_hf_tokenizer
from packager.verify.result import VerificationResult


@dataclass
class BuildOptions:
    """Options every target may read."""

    quant: str = "Q4_K_M"
    context_length: int = 4096
    no_gate: bool = False
    name: str | None = None


def link_or_copy(src: Path, dest: Path) -> None:
    """Place a cached artifact into a bundle without copying bytes when the filesystem allows."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


class BuildContext:
    """The shared stages of one build; targets ask for what they need."""

    def __init__(
        self, ckpt: Checkpoint, ckpt_digest: str, options: BuildOptions, reporter: Reporter,
        cache: Path | None = None,
    ) -> None:
        self.ckpt = ckpt
        self.ckpt_digest = ckpt_digest
        self.options = options
        self.reporter = reporter
        self.cache = cache or cache_root()
        self.golden: GoldenSet = load_golden()
        self._verified: dict[str, VerificationResult] = {}
        self._ggufs: dict[str, Path] = {}

    @cached_property
    def contract(self) -> Contract:
        return contract_from_checkpoint(self.ckpt)

    @cached_property
    def hf_tokenizer(self) -> Any:
        return load_hf_tokenizer(self.ckpt)

    @cached_property
    def reference(self) -> ReferenceLogits:
        start = time.perf_counter()
        ref = compute_reference(self.ckpt, self.golden, self.ckpt_digest, self.contract.eos_ids, self.cache)
        self.reporter.stage("reference logits (fp32, transformers)", ref.from_cache, time.perf_counter() - start,
                            f"{ref.positions} positions")
        return ref

    def _gguf_dir(self) -> Path:
        key = options_digest("gguf", self.ckpt_digest)[:24]
        folder = self.cache / "gguf" / key
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def gguf(self, quant: str) -> Path:
        """Return the cached GGUF of this checkpoint in `quant`, building F16 first when needed."""
        if quant in self._ggufs:
            self.reporter.stage(f"gguf {quant}", True, 0.0, "shared stage, already built in this build")
            return self._ggufs[quant]
        path = self._gguf_dir() / f"model-{quant}.gguf"
        if path.is_file():
            self.reporter.stage(f"gguf {quant}", True, 0.0, path.name)
        else:
            tmp = path.with_suffix(".tmp")
            start = time.perf_counter()
            if quant in NUMPY_TYPES:
                self.reporter.say(f"writing GGUF {quant} (streaming {len(self.ckpt.tensors)} tensors)")
                write_gguf(self.ckpt, tmp, quant, self.reporter.percent(f"gguf {quant}"))
            else:
                source = self.gguf("F16")
                self.reporter.say(f"quantizing F16 -> {quant} with llama.cpp's quantizer")
                quantize_gguf(source, tmp, quant)
            tmp.rename(path)
            self.reporter.stage(f"gguf {quant}", False, time.perf_counter() - start,
                                f"{path.stat().st_size / 2**20:.0f} MB")
        self._ggufs[quant] = path
        return path

    def verify_gguf(self, quant: str, artifact: str) -> VerificationResult:
        """Verify the GGUF in llama.cpp, once per file content (targets sharing it share the result)."""
        if quant not in self._verified:
            self._verified[quant] = self._verify_gguf_file(quant)
        return dataclasses.replace(self._verified[quant], artifact=artifact)

    def _verify_gguf_file(self, quant: str) -> VerificationResult:
        path = self._ggufs.get(quant) or self.gguf(quant)
        digest = file_sha256(path)
        key_digest = options_digest("verify-gguf", digest, self.golden.digest_source())[:24]
        record = self.cache / "verify" / f"{key_digest}.json"
        label = f"verify gguf {quant}"
        if record.is_file():
            result = VerificationResult.from_dict(json.loads(record.read_text()))
            self.reporter.stage(label, True, 0.0)
            return result
        reference = self.reference
        start = time.perf_counter()
        self.reporter.say(f"verifying GGUF {quant} in llama.cpp ({reference.positions} positions)")
        result = verify_gguf(path, path.name, quant, reference, self.golden, self.contract, self.hf_tokenizer)
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps(result.as_dict(), indent=2))
        tmp.rename(record)
        m = result.metrics
        self.reporter.stage(
            label, False, time.perf_counter() - start,
            f"top-1 {m.top1:.3f}, KL {m.kl:.4f}, {'pass' if result.passed else 'FAIL'}" if m else "",
        )
        return result
