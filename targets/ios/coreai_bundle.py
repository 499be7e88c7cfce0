"""The Core AI model-bundle files beside an .aimodel: what Apple's CoreAILanguageModel(resourcesAt:) reads.

Apple's language-model package (coreai-models, product CoreAILM) loads a *directory*: `metadata.json`
(metadata_version 0.2, kind "llm", `assets.main` naming the .aimodel, a `language` block) and the
tokenizer in `tokenizer/`. The fields are those Apple's own exporter writes
(coreai-models python/src/coreai_models/export/bundle.py), without its compilation date so a build's
bytes do not depend on the clock. The ios bundle's root is that directory: edgepack.json, the Core ML
package and the tokenizer files for swift-transformers stay where they were.

With these files the bundle is a Core AI language-model bundle, and the .aimodel has the interface Apple's
engines drive (input_ids, position_ids; targets.ios.coreai_export). `language.states` names the two KV-cache
states (kind "kv_cache"), as LanguageConfig.swift reads it, rather than leaving them to the engines' guess
from shapes and names.
"""

from __future__ import annotations

import json
from pathlib import Path

from packager.stage_cache import place_artifact
from targets.ios.coreai_export import STATES

METADATA_FILE = "metadata.json"
TOKENIZER_DIR = "tokenizer"
METADATA_VERSION = "0.2"


def model_bundle_metadata(name: str, asset: str, vocab_size: int, max_context: int, compression: str) -> dict:
    """metadata.json of a Core AI language-model bundle whose main asset is `asset`, tokenizer embedded."""
    return {
        "metadata_version": METADATA_VERSION,
        "kind": "llm",
        "name": name,
        "assets": {"main": asset},
        "language": {"tokenizer": name, "vocab_size": vocab_size, "max_context_length": max_context,
                     "embedded_tokenizer": True, "states": {name: "kv_cache" for name in STATES}},
        "source": {"model_definition": "torch", "hf_model_id": name},
        "compression": None if compression == "none" else compression,
    }


def write_model_bundle(out_dir: Path, metadata: dict, tokenizer_files: list[Path]) -> list[Path]:
    """Write metadata.json and copy the tokenizer files into tokenizer/; return the paths written."""
    written = []
    for source in tokenizer_files:
        target = out_dir / TOKENIZER_DIR / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        place_artifact(source, target)
        written.append(target)
    document = out_dir / METADATA_FILE
    document.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return [document, *written]
