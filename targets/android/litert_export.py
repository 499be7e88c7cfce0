"""LiteRT-LM export: a Hugging Face checkpoint -> model.litertlm, the bundle Android's LiteRT-LM engine loads.

litert-torch's `export_hf` converts the local checkpoint (no network) into one TFLite program with
`prefill_<n>` and `decode` signatures over a KV cache of `cache_length` slots, and packs it with the
tokenizer (tokenizer.json, zlib) and the LLM metadata (start/stop tokens, chat template, model type)
into a .litertlm file. Quantization is one of litert-torch's recipes (edgepack ships two: int8
weights with float activations, and "none", the lossless fp32 rung).

The build runs an export in a child process (`python -m targets.android.litert_export`): the
converter's memory returns to the OS when the child exits, and the tensorflow shim below never
touches the parent.

Two pitfalls are handled here, both found by running the exported bundle:
- litert-torch imports `tensorflow.lite.python.schema_py_generated` (only for a model family edgepack
  does not export) and fails to import without tensorflow; the same generated schema ships in
  ai_edge_litert, so the child registers that module under tensorflow's name (see `_tensorflow_shim`).
- a tokenizer.json with `"pre_tokenizer": null` made litert-torch's tokenizer patch step raise
  (`None.get`), which it answers by converting the tokenizer to SentencePiece, silently; the engine
  then aborts the whole process on load. The patch step is made null-safe (it only ever rewrites a
  Metaspace pre-tokenizer), and a bundle that still carries a SentencePiece tokenizer is refused.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packager.child_stage import serve_request
from packager.context_size import prefill_chunk
from packager.errors import BadInputError, UnsupportedError
from packager.optional_packages import OptionalPackages
from packager.peak_memory import own_peak_rss_mb
from packager.verify.gates import EIGHT_BIT, LOSSLESS, Gate

LITERT_TORCH_VERSION = "0.10.0"
LITERT_LM_VERSION = "0.18.1"
# The Android library the generated app links for the same engine line (Google Maven
# com.google.ai.edge.litertlm:litertlm-android; the 0.18 line's Android release is 0.18.0, built with
# Kotlin 2.4 metadata, which the app's Kotlin plugin matches).
LITERTLM_ANDROID_VERSION = "0.18.0"
LITERTLM_ANDROID_ARTIFACT = f"com.google.ai.edge.litertlm:litertlm-android:{LITERTLM_ANDROID_VERSION}"
# Bump when the exported bundle changes for the same checkpoint + recipe + lengths (keys the stage cache).
# 3: lightweight conversion (below)
LITERT_EXPORT_SCHEMA = 3
# litert-torch's lightweight conversion: large constants enter the MLIR module as views of the torch weights,
# not copies, and are folded by running their subgraph in the TFLite interpreter instead of in MLIR. Gemma 3
# 270M's export peaked at 4.7 GB instead of 5.8 (2026-12-07), its lowering at 2.5 GiB instead of 4.1.
LIGHTWEIGHT = True
BUNDLE_NAME = "model.litertlm"
# The runtimes a build may ship for android (--android-runtime); "all" ships both.
RUNTIMES = ("executorch", "litert-lm")


@dataclass(frozen=True)
class LitertRecipe:
    """One litert-torch quantization recipe (`name` is what the exporter takes) and the gate its bundle meets."""

    name: str
    summary: str
    bits: float
    gate: Gate

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["gate"] = dataclasses.asdict(self.gate)
        return data


LITERT_RECIPES: dict[str, LitertRecipe] = {r.name: r for r in (
    LitertRecipe("dynamic_wi8_afp32", "int8 per-channel weights, float activations (litert-torch's default)",
                 8.0, EIGHT_BIT),
    LitertRecipe("none", "fp32 weights and activations (lossless)", 32.0, LOSSLESS),
)}
# Smallest first: the int8 bundle ships when it passes its gate, else the fp32 one (packager.ladder).
LITERT_LADDER: tuple[str, ...] = ("dynamic_wi8_afp32", "none")


def litert_recipe_named(name: str) -> LitertRecipe:
    """Return the LiteRT-LM recipe called `name`, or raise a BadInputError listing the known ones."""
    if name not in LITERT_RECIPES:
        raise BadInputError(f"LiteRT-LM recipe {name}: unknown. Known: {', '.join(LITERT_RECIPES)}.")
    return LITERT_RECIPES[name]


def prefill_lengths(cache_length: int) -> tuple[int, ...]:
    """The prefill signatures to export for a KV cache of `cache_length` slots: one, of
    packager.context_size.prefill_chunk's length. A prompt longer than it runs in several chunks, and a
    short one is padded to it; the engine picks among the exported lengths itself."""
    return (prefill_chunk(cache_length),)


# The Python packages an export and its verification import, and where they come from.
# The packages of the litert-lm runtime (scripts/setup.sh installs them apart: litert-torch pins other torch parts).
LITERT_PACKAGES = OptionalPackages(
    "--android-runtime litert-lm",
    {"litert_torch": "litert-torch", "litert_lm": "litert-lm-api", "ai_edge_litert": "ai-edge-litert",
     "litert_lm_builder": "litert-lm-builder"},
    "requirements/litert-export.txt", "--android-runtime executorch")


def tokenizer_problem(folder: Path) -> str | None:
    """Why the checkpoint's tokenizer cannot go into a .litertlm bundle (None when it can)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return (f"{folder}: no tokenizer.json. LiteRT-LM bundles carry a Hugging Face tokenizer.json (a "
                "SentencePiece conversion is what the engine rejects); save the tokenizer with "
                "tokenizer.save_pretrained() from transformers, which writes it.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"{path}: not valid JSON ({exc}); save the tokenizer again with transformers' save_pretrained()."
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        return f"{path}: has no 'model' table; it is not a Hugging Face tokenizers file."
    return None


def _tensorflow_shim() -> None:
    """Register ai_edge_litert's TFLite schema module as tensorflow.lite.python.schema_py_generated.

    litert-torch imports it at module level for one model family (bonsai_flux2) and so fails to import
    without tensorflow (1.4 GB). Both are the same flatc-generated schema: the exported .tflite bytes do
    not change. Only this export child does this; the parent process and the engine never see a fake
    tensorflow. The stand-in packages carry real module specs, so importlib.util.find_spec and
    transformers' availability checks (which then look for tensorflow's distribution and find none) keep
    working.
    """
    import importlib.machinery
    import types

    import ai_edge_litert.schema_py_generated as schema

    parent = None
    for name in ("tensorflow", "tensorflow.lite", "tensorflow.lite.python"):
        if name in sys.modules:
            parent = sys.modules[name]
            continue
        module = types.ModuleType(name)
        module.__path__ = []
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        sys.modules[name] = module
        if parent is not None:
            setattr(parent, name.rsplit(".", 1)[1], module)
        parent = module
    sys.modules["tensorflow.lite.python.schema_py_generated"] = schema
    sys.modules["tensorflow.lite.python"].schema_py_generated = schema  # type: ignore[attr-defined]


def _null_safe_tokenizer_patch() -> None:
    """Make litert-torch's tokenizer patch step accept `"pre_tokenizer": null` (see the module docstring)."""
    from litert_torch.generative.export_hf.core import export_lib

    original = export_lib._maybe_patch_tokenizer

    def patch(tokenizer_path: str) -> None:
        try:
            data = json.loads(Path(tokenizer_path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        # The step only rewrites a Metaspace pre-tokenizer; with none there is nothing to rewrite.
        if isinstance(data, dict) and data.get("pre_tokenizer", {}) is None:
            return
        original(tokenizer_path)

    export_lib._maybe_patch_tokenizer = patch


def _weights_let_go_before_quantization() -> None:
    """Drop the torch model's weights once its fp32 program is written, before litert-torch quantizes that
    program: the quantizer reads the written file, and nothing after it reads the torch model of a text-only
    export. Without this the fp32 weights stay alive (litert-torch keeps its loaded model to the end) beside
    the quantizer's copies, at the step that is the export's peak once lowering holds no copy of its own."""
    import torch
    from litert_torch.generative.export_hf.core import export_lib

    loaded: list[Any] = []
    load_model, maybe_quantize = export_lib.load_model, export_lib.maybe_quantize_model

    def load(*args: Any, **kwargs: Any) -> Any:
        artifacts = load_model(*args, **kwargs)
        loaded.append(artifacts.model)
        return artifacts

    def quantize(*args: Any, **kwargs: Any) -> Any:
        for model in loaded:
            for tensor in (*model.parameters(), *model.buffers()):
                tensor.data = torch.empty(0, dtype=tensor.dtype)
        loaded.clear()
        return maybe_quantize(*args, **kwargs)

    export_lib.load_model, export_lib.maybe_quantize_model = load, quantize


def with_stop_tokens(folder: Path, eos_ids: tuple[int, ...], view: Path) -> Path:
    """A folder of links to `folder`'s files whose generation_config.json also names the contract's eos ids.

    litert-torch writes the bundle's stop tokens from the model's generation_config eos_token_id; a
    fine-tune's answer often ends with another token (Gemma's <end_of_turn>, 106, where the config says
    <eos>, 1), and an engine that does not stop there runs on to max_new_tokens. The checkpoint itself
    is never written to.
    """
    view.mkdir(parents=True)
    for item in folder.iterdir():
        if item.name != "generation_config.json":
            (view / item.name).symlink_to(item.resolve())
    config_path = folder / "generation_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    stored = config.get("eos_token_id")
    existing = [stored] if isinstance(stored, int) else list(stored or [])
    config["eos_token_id"] = list(dict.fromkeys([*existing, *eos_ids]))
    (view / "generation_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return view


def export_litertlm(folder: Path, out_dir: Path, recipe: LitertRecipe, cache_length: int,
                    prefill: tuple[int, ...], eos_ids: tuple[int, ...] = ()) -> dict[str, Any]:
    """Export the checkpoint in `folder` to out_dir/model.litertlm (in this process); return what was written.

    `eos_ids` (the task contract's) become the bundle's stop tokens beside the checkpoint's own.
    """
    import shutil

    from targets.android.litert_bundle import read_bundle

    problem = tokenizer_problem(folder)
    if problem:
        raise BadInputError(problem)
    start = time.perf_counter()
    _tensorflow_shim()
    _null_safe_tokenizer_patch()
    _weights_let_go_before_quantization()
    from litert_torch.generative.export_hf import export as export_hf

    work = out_dir / "litert-export"
    view = with_stop_tokens(folder, eos_ids, out_dir / "checkpoint-view")
    try:
        export_hf.export(model=str(view), output_dir=str(work), prefill_lengths=list(prefill),
                         cache_length=cache_length, quantization_recipe=recipe.name, trust_remote_code=False,
                         experimental_lightweight_conversion=LIGHTWEIGHT)
    finally:
        shutil.rmtree(view)
    written = work / BUNDLE_NAME
    if not written.is_file():
        raise UnsupportedError(f"litert-torch {LITERT_TORCH_VERSION} wrote no {BUNDLE_NAME} for {folder}.")
    bundle = out_dir / BUNDLE_NAME
    written.replace(bundle)
    for leftover in sorted(work.rglob("*"), reverse=True):
        leftover.unlink() if leftover.is_file() else leftover.rmdir()
    work.rmdir()
    info = read_bundle(bundle)
    if info.tokenizer != "HF_Tokenizer_Zlib":
        raise UnsupportedError(
            f"litert-torch put a {info.tokenizer} tokenizer into {BUNDLE_NAME} instead of {folder}/tokenizer.json "
            "(it converts to SentencePiece when it cannot re-save the tokenizer), and LiteRT-LM's engine aborts on "
            "such a conversion. Re-save the tokenizer with transformers (tokenizer.save_pretrained()) or build "
            "android with --android-runtime executorch.")
    return {"bundle": BUNDLE_NAME, "recipe": recipe.name, "cache_length": cache_length,
            "prefill_lengths": list(prefill), "metadata": info.metadata,
            "seconds": round(time.perf_counter() - start, 1), "peak_rss_mb": own_peak_rss_mb(),
            "litert_torch": LITERT_TORCH_VERSION}


def _serve(request: dict[str, Any]) -> dict[str, Any]:
    return export_litertlm(Path(request["checkpoint"]), Path(request["out_dir"]),
                           litert_recipe_named(request["recipe"]), int(request["cache_length"]),
                           tuple(int(n) for n in request["prefill_lengths"]),
                           tuple(int(n) for n in request.get("eos_ids", ())))


def main(argv: list[str] | None = None) -> int:
    """Child-process entry (packager.child_stage): export request in, what was written out."""
    return serve_request(__doc__.splitlines()[0], _serve, argv)


if __name__ == "__main__":
    sys.exit(main())
