"""Which WebLLM model library (.wasm) an MLC bundle can use, from the table of prebuilt ones.

A model library is mlc-llm's compiled program for one architecture shape, one quantization and
fixed context / prefill-chunk settings. It cannot be compiled here (mlc-llm and TVM are not on
the registries we reach), so a bundle either reuses a prebuilt library that matches *exactly*
(data: targets/web/mlc/data/webllm_prebuilt.json) or says, in its manifest and report, that it
needs `mlc_llm compile` and why. Prebuilt libraries are never downloaded by a build: they are
taken from the folder $EDGEPACK_WEBLLM_LIBS when the user has put them there.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from packager.checkpoint import Checkpoint

TABLE = Path(__file__).resolve().parent / "data" / "webllm_prebuilt.json"
LIBS_ENV = "EDGEPACK_WEBLLM_LIBS"
# Settings every prebuilt WebLLM library in the table was compiled with.
PREFILL_CHUNK_SIZE = 1024


@cache
def prebuilt_libraries() -> list[dict[str, Any]]:
    return list(json.loads(TABLE.read_text(encoding="utf-8"))["libraries"])


@dataclass(frozen=True)
class LibraryMatch:
    """status: "bundled" (file found locally), "prebuilt-not-local" (matches, file absent) or "needs-compile"."""

    status: str
    reason: str
    record: dict[str, Any] | None = None
    path: Path | None = None


def _mismatches(row: dict[str, Any], model_type: str, config: dict[str, Any], quant: str, context: int,
                prefill: int) -> list[str]:
    found = {"model_type": model_type, **config}
    out = [f"{key} {found.get(key)!r} != {want!r}" for key, want in row["architecture"].items()
           if found.get(key) != want]
    if row["quantization"] != quant:
        out.append(f"quantization {quant} != {row['quantization']}")
    if row["context_window_size"] != context:
        out.append(f"context_window_size {context} != {row['context_window_size']}")
    if row["prefill_chunk_size"] != prefill:
        out.append(f"prefill_chunk_size {prefill} != {row['prefill_chunk_size']}")
    return out


def custom_library_name(model_id: str) -> str:
    """File name under $EDGEPACK_WEBLLM_LIBS for a library the user compiled for this bundle."""
    return f"{model_id}-webgpu.wasm"


def match_library(ckpt: Checkpoint, model_id: str, model_type: str, quant: str, context: int,
                  prefill: int = PREFILL_CHUNK_SIZE) -> LibraryMatch:
    """Return the library this bundle can use (user-compiled, then prebuilt), or why it needs `mlc_llm compile`."""
    folder = os.environ.get(LIBS_ENV)
    custom = Path(folder) / custom_library_name(model_id) if folder else None
    if custom is not None and custom.is_file():
        reason = f"user-compiled {custom.name} from ${LIBS_ENV} (not checked against the weights)"
        return LibraryMatch("bundled", reason, None, custom)
    best: tuple[int, dict[str, Any], list[str]] | None = None
    for row in prebuilt_libraries():
        problems = _mismatches(row, model_type, ckpt.config, quant, context, prefill)
        if not problems:
            path = Path(folder) / row["model_lib"] if folder else None
            if path is not None and path.is_file():
                return LibraryMatch("bundled", f"prebuilt {row['model_lib']} ({row['base_model']})", row, path)
            return LibraryMatch(
                "prebuilt-not-local",
                f"the prebuilt library {row['model_lib']} (compiled for {row['base_model']}, {quant}, context "
                f"{context}, prefill chunk {prefill}) matches, but builds do not download it: put it into "
                f"${LIBS_ENV} (from {row['url']}) and rebuild",
                row,
            )
        if best is None or len(problems) < best[0]:
            best = (len(problems), row, problems)
    closest = f"; closest prebuilt is {best[1]['model_id']}: {', '.join(best[2][:4])}" if best else ""
    return LibraryMatch(
        "needs-compile",
        f"no prebuilt WebLLM library was compiled for this architecture shape with {quant}, context {context} and "
        f"prefill chunk {prefill}{closest}. Compile one with mlc-llm (`mlc_llm compile <model folder>/"
        f"mlc-chat-config.json --device webgpu -o {custom_library_name(model_id)}`), put it into ${LIBS_ENV} "
        "and rebuild",
    )
