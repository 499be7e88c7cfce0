"""Core ML conversion of a decoder too large to hold in fp32 beside its conversion: in parts, joined into one.

A Gemma 3 1B held 4 GB of fp32 weights before coremltools made its own copies (6.9 GB at the conversion's
peak); a 4B would hold 16 GB. Here the checkpoint is read a decoder block at a time
(packager.verify.fp32_model.StreamedModel: the embedding table and final norm stay, blocks are read when used),
and every step that needs the rewritten decoder runs it a part at a time, all sequences through one part before
the next part is read: the column statistics of the quantizer (a streamed transformers forward), the fp16
ranges, the exactness proof against transformers, and the conversion itself, where each part becomes a package
of its own (fp16, then each compression) and the parts of each compression are joined into the one program the
whole decoder would have been (targets.ios.join_parts). The package has the same inputs, state and outputs, so
everything after the conversion (simulation, Swift bridge) is unchanged.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from packager.peak_memory import own_peak_rss_mb, release_free_memory
from packager.verify.fp32_model import StreamedModel
from targets.ios.convert import (
    DEPLOYMENT_TARGET,
    Compression,
    ExportRequest,
    column_importance,
    compressed_packages,
    convert,
    package_bytes,
    package_metadata,
    plan_from_ranges,
    proof_of,
    proof_steps,
    save_fp16,
    sliding_window,
)

# fp32 bytes of decoder blocks converted at once: the conversion adds about 0.6 of a part's weights on top of them.
PART_BYTES = 1 << 29


class DecoderParts:
    """A streamed checkpoint's rewritten decoder, a part (consecutive blocks) at a time."""

    def __init__(self, streamed: StreamedModel, request: ExportRequest) -> None:
        from packager.architectures import spec_for_config
        from targets.ios.layouts import coreml_layout

        self.streamed = streamed
        self.request = request
        path = Path(request.checkpoint) / "config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        self.config = config
        self.spec = spec_for_config(config, str(path))
        coreml_layout(self.spec)
        self.window = sliding_window(self.spec, config)
        names = sorted(streamed.blocks, key=lambda name: int(name.rsplit(".", 1)[1]))
        self.block_names = names
        self.ranges = part_ranges([4 * sum(math.prod(entry.shape) for _, entry in streamed.blocks[name])
                                   for name in names])

    @contextmanager
    def decoder(self, layers: range, plan: Any, cache_dtype: Any, lm_head_chunk: int = 0,
                positions: int | None = None) -> Iterator[Any]:
        """The part of the rewritten decoder holding `layers`, with those blocks' weights read for the duration
        (the caller drops the decoder, which shares or copies them, before it asks for the next part). With
        `positions`, its cache and rotary tables hold that many positions instead of the request's context."""
        from targets.ios.model import StatefulDecoder

        with self.streamed.holding([self.block_names[i] for i in layers]):
            yield StatefulDecoder(self.streamed.model, self.spec, positions or self.request.max_context, plan,
                                  lm_head_chunk, cache_dtype=cache_dtype, layers=layers).eval()

    def run(self, plan: Any, feeds: list[list[tuple[Any, Any, Any]]],
            observe: bool = False) -> tuple[list[list[Any]], dict[str, float]]:
        """Each sequence's steps (token ids, full mask, sliding mask) through the fp32 decoder, a part at a time:
        the outputs of every step (logits) and, with `observe`, the largest |value| seen per site."""
        import torch

        current = [[ids for ids, _, _ in steps] for steps in feeds]
        seen: dict[str, float] = {}
        # A cache as long as the longest sequence: the same numbers (positions beyond are never read), and a
        # 4B's fp32 cache for 4,096 positions was 1.1 GB.
        longest = max(int(full.shape[-1]) for steps in feeds for _, full, _ in steps)
        for layers in self.ranges:
            with self.decoder(layers, plan, torch.float32, positions=longest) as decoder, torch.no_grad():
                decoder.observe = {} if observe else None
                for index, steps in enumerate(feeds):
                    decoder.reset()
                    current[index] = [decoder(x, full, sliding)
                                      for x, (_, full, sliding) in zip(current[index], steps, strict=True)]
                for site, value in (decoder.observe or {}).items():
                    seen[site] = max(seen.get(site, 0.0), value)
            del decoder  # its weights, before the next part's are read
            release_free_memory()
        return current, seen

    def ranges_with(self, plan: Any) -> dict[str, float]:
        """As targets.ios.model.measure_ranges: one prefill per sequence."""
        from targets.ios.model import additive_masks

        feeds = [[(self._ids(ids), *additive_masks(len(ids), len(ids), self.window))]
                 for ids in self.request.sequences]
        return self.run(plan, feeds, observe=True)[1]

    def proof(self, plan: Any) -> dict[str, Any]:
        """As targets.ios.convert.prove_exact, against a streamed transformers forward."""
        import torch

        sequences = [ids[:self.request.max_context] for ids in self.request.sequences]
        outputs, _ = self.run(plan, [proof_steps(ids, self.window) for ids in sequences])
        pairs = []
        with torch.no_grad():
            for ids, steps in zip(sequences, outputs, strict=True):
                pairs.append((torch.cat([step[0] for step in steps]),
                              self.streamed.model(torch.tensor([ids])).logits[0]))
        return proof_of(pairs, self.request.checkpoint)

    @staticmethod
    def _ids(ids: list[int]) -> Any:
        import torch

        return torch.tensor([ids], dtype=torch.int32)


def part_ranges(block_bytes: list[int], limit: int | None = None) -> list[range]:
    """Consecutive blocks grouped so that each group's fp32 bytes stay within `limit` (PART_BYTES; at least one
    block each)."""
    limit = PART_BYTES if limit is None else limit
    ranges, start, size = [], 0, 0
    for index, nbytes in enumerate(block_bytes):
        if index > start and size + nbytes > limit:
            ranges.append(range(start, index))
            start, size = index, 0
        size += nbytes
    ranges.append(range(start, len(block_bytes)))
    return ranges


def export_in_parts(request: ExportRequest, streamed: StreamedModel, compressions: list[Compression],
                    start: float) -> dict[str, Any]:
    """targets.ios.convert.export_package for a streamed checkpoint: the same result, converted in parts."""
    import torch

    from targets.ios.join_parts import join_packages

    # This process's peak after each phase (MiB): where a large model's conversion spends its memory.
    peaks = {"loaded": own_peak_rss_mb()}
    parts = DecoderParts(streamed, request)
    folder = Path(request.checkpoint)
    quantized = any(c.linears != "fp16" for c in compressions)
    importance = column_importance(streamed.model, folder) if quantized else {}
    peaks["column statistics"] = own_peak_rss_mb()
    plan, ranges = plan_from_ranges(parts.ranges_with, parts.spec, parts.config, request.fp16_rewrites)
    peaks["fp16 plan"] = own_peak_rss_mb()
    proof = parts.proof(plan)
    peaks["proof"] = own_peak_rss_mb()
    user = package_metadata(request, parts.spec, parts.config, plan, parts.window)
    out_dir = Path(request.out_dir)
    work = out_dir / "parts"
    fp16_parts = []
    convert_seconds = 0.0
    for k, layers in enumerate(parts.ranges):
        part_dir = work / f"part{k}"
        part_dir.mkdir(parents=True)
        with parts.decoder(layers, plan, torch.float16, request.lm_head_chunk) as decoder:
            stamp = time.perf_counter()
            converted = convert(decoder, parts.window, request.max_context)
            convert_seconds += time.perf_counter() - stamp
            del decoder
        fp16_parts.append(save_fp16(converted, part_dir, request, user))
        del converted
        release_free_memory()
        peaks[f"part {k} conversion"] = own_peak_rss_mb()
    streamed.drop()  # the embedding table and final norm: compression needs only the saved parts
    release_free_memory()
    saved = []
    for k, fp16_path in enumerate(fp16_parts):
        saved.append(compressed_packages(fp16_path, request, compressions, user, importance))
        peaks[f"part {k} compression"] = own_peak_rss_mb()
    packages = {}
    for compression in compressions:
        name = saved[0][compression.name]["package"]
        stamp = time.perf_counter()
        join_packages([work / f"part{k}" / name for k in range(len(parts.ranges))], out_dir / name, consume=True)
        counts: dict[str, int] = {}
        for part in saved:
            for kind, n in part[compression.name]["compressed_weights"].items():
                counts[kind] = counts.get(kind, 0) + n
        packages[compression.name] = {
            "package": name, "summary": compression.summary, "compressed_weights": counts,
            "size_mb": round(package_bytes(out_dir / name) / 2**20, 1),
            "seconds": round(sum(part[compression.name]["seconds"] for part in saved)
                             + time.perf_counter() - stamp, 1)}
    shutil.rmtree(work)
    return {"packages": packages, "fp16_plan": plan.as_dict(), "ranges": ranges, "proof": proof,
            "max_context": request.max_context, "lm_head_chunk": request.lm_head_chunk,
            "sliding_window": parts.window, "metadata": user, "deployment_target": DEPLOYMENT_TARGET,
            "parts": [[r.start, r.stop] for r in parts.ranges], "peak_rss_mb_after": peaks,
            "seconds": round(time.perf_counter() - start, 1), "convert_seconds": round(convert_seconds, 1),
            "peak_rss_mb": own_peak_rss_mb()}
