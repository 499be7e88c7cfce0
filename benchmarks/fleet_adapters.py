"""A specialist as a runtime adapter on a quantized base vs merged into it: task accuracy, bytes, switch time.

    .venv/bin/python benchmarks/fleet_adapters.py            # ~10 min on 2 cores with a warm stage cache

The bundled example's router (Gemma 3 270M + LoRA) answers its 108 eval rows in llama.cpp, under the
example's contract (edgepack.toml), four ways: the fp32 merged model (transformers, the baseline),
the merged model at Q8_0 and at Q4_K_M (what edgepack ships today), and the base at Q4_K_M with the
adapter written as an F16 GGUF LoRA (packager/formats/gguf_lora.py) applied by llama.cpp at run time.
Also: bytes on disk, and how long llama.cpp takes to load the adapter and to switch it on and off in a
live context. Results go to benchmarks/results/fleet-adapters.json and the section between the
markers in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.whole_build import publish  # noqa: E402

EXAMPLE = ROOT / "examples" / "intent-classifier"
START_MARKER = "<!-- fleet-adapters:start -->"
END_MARKER = "<!-- fleet-adapters:end -->"


def _context(ckpt, digest: str, options, cache: Path):
    from packager.progress import Reporter
    from packager.scheduler import scheduler_for
    from packager.stages import BuildContext

    reporter = Reporter(quiet=True)
    return BuildContext(ckpt, digest, options, reporter, cache, scheduler_for(ckpt, reporter, cache))


def switch_seconds(base_gguf: Path, adapter_gguf: Path, rounds: int = 20) -> tuple[float, float]:
    """Seconds to load the adapter file, and the median seconds to switch it on and off in a live context."""
    import ctypes

    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(base_gguf), n_ctx=256, verbose=False)
    try:
        start = time.perf_counter()
        adapter = llama_cpp.llama_adapter_lora_init(llm._model.model, str(adapter_gguf).encode())
        load = time.perf_counter() - start
        adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
        scales = (ctypes.c_float * 1)(1.0)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, adapters, 1, scales)
            llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, adapters, 0, scales)
            times.append(time.perf_counter() - start)
        llama_cpp.llama_adapter_lora_free(adapter)
    finally:
        llm.close()
    return load, sorted(times)[len(times) // 2]


def measure(cache: Path) -> dict:
    from packager.checkpoint import load_checkpoint
    from packager.examples import bundled_example
    from packager.formats.gguf_lora import write_gguf_lora
    from packager.progress import Reporter
    from packager.stages import BuildOptions
    from packager.verify.gates import TaskGate
    from packager.verify.gguf_check import verify_gguf

    contract = tomllib.loads((EXAMPLE / "edgepack.toml").read_text(encoding="utf-8"))["contract"]
    options = BuildOptions(eval_path=EXAMPLE / "data" / "eval.jsonl", task=dict(contract),
                           task_gate=TaskGate(decides=True))
    base_dir = bundled_example(Reporter(quiet=True))
    base = load_checkpoint(base_dir, work_dir=cache / "work")
    merged = load_checkpoint(EXAMPLE / "adapter", base=base_dir, work_dir=cache / "work", name="intent-classifier")
    merged_ctx = _context(merged, merged.content_digest(), options, cache)
    base_ctx = _context(base, base.content_digest(), options, cache)

    adapter_gguf = cache / "fleet-bench" / "intent-router-F16.gguf"
    adapter_gguf.parent.mkdir(parents=True, exist_ok=True)
    write_gguf_lora(EXAMPLE / "adapter", base, adapter_gguf, "F16", name="intent-router")
    rows = {}
    forms = (("merged Q8_0", merged_ctx.gguf("Q8_0"), None), ("merged Q4_K_M", merged_ctx.gguf("Q4_K_M"), None),
             ("base Q4_K_M + F16 adapter", base_ctx.gguf("Q4_K_M"), adapter_gguf))
    for label, gguf, lora in forms:
        start = time.perf_counter()
        # The golden-text fidelity against the fp32 merged model, then the eval set, both in llama.cpp.
        result = verify_gguf(gguf, label, "Q4_K_M" if "Q4" in label else "Q8_0", merged_ctx.reference,
                             merged_ctx.golden, merged_ctx.contract, merged_ctx.hf_tokenizer, lora=lora)
        task = merged_ctx.task_metrics_gguf(gguf, lora)
        m = result.metrics
        rows[label] = {"accuracy": task.exact_match, "validity": task.validity, "agreement": task.agreement,
                       "fp32_accuracy": task.baseline_exact_match, "latency_ms_p50": task.latency_ms_p50,
                       "top1": m.top1, "top1_decisive": m.top1_decisive, "kl": m.kl,
                       "bytes": gguf.stat().st_size + (lora.stat().st_size if lora else 0),
                       "adapter_bytes": lora.stat().st_size if lora else 0,
                       "seconds": round(time.perf_counter() - start, 1)}
    load, switch = switch_seconds(base_ctx.gguf("Q4_K_M"), adapter_gguf)
    return {"date": time.strftime("%Y-%m-%d"), "load_average": Path("/proc/loadavg").read_text().split()[0],
            "rows": rows, "adapter_load_s": load, "adapter_switch_s": switch}


def markdown(result: dict) -> str:
    rows = result["rows"]
    fp32 = next(iter(rows.values()))["fp32_accuracy"]
    table = ["| form | accuracy | validity | agreement with fp32 | top-1 (decisive) | KL | MB on disk | "
             "p50 ms / request (host) |", "|---|---|---|---|---|---|---|---|",
             f"| fp32 merged (transformers, the baseline) | {fp32:.3f} | | | | | | |"]
    for label, r in rows.items():
        adapter = f" ({r['adapter_bytes'] / 2**20:.1f} adapter)" if r["adapter_bytes"] else ""
        table.append(f"| {label} | {r['accuracy']:.3f} | {r['validity']:.3f} | {r['agreement']:.3f} | "
                     f"{r['top1']:.3f} ({r['top1_decisive']:.3f}) | {r['kl']:.4f} | "
                     f"{r['bytes'] / 2**20:.0f}{adapter} | {r['latency_ms_p50']:.0f} |")
    return "\n".join([
        START_MARKER,
        f"Measured {result['date']} on this 2-core host (load average {result['load_average']} at the end), "
        "the bundled example's router on its 108 eval rows under its contract (constrained to the 12 labels "
        "in llama.cpp), and on the golden text against the fp32 merged model:",
        "",
        *table,
        "",
        f"llama.cpp loads the adapter in {result['adapter_load_s'] * 1000:.0f} ms; the calls that switch it on and "
        f"off in a live context take {result['adapter_switch_s'] * 1e6:.0f} us (median of 20; the next decode then "
        "runs with or without it). Merged at Q4_K_M, the fine-tune's small deltas are rounded back onto the base's "
        "grid (the base was itself dequantized from Q4_K_M); kept apart in F16 they are not.",
        END_MARKER,
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None, help="stage cache (default: edgepack's)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    from packager.fingerprint import cache_root

    result = measure(args.cache or cache_root())
    publish(result, "fleet-adapters.json", args.docs, markdown(result), (START_MARKER, END_MARKER),
            "Specialists as runtime adapters (fleet groundwork)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
