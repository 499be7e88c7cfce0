"""Specialists as runtime adapters on one quantized base vs merged into it: accuracy, bytes, switch time.

    .venv/bin/python benchmarks/fleet_adapters.py            # ~20 min on 2 cores with a warm stage cache

The bundled support fleet (examples/support-fleet/edgepack.toml: the intent router and the order
extractor, two LoRA fine-tunes of Gemma 3 270M) answers each specialist's eval set in llama.cpp,
under its own contract, four ways: the fp32 merged model (transformers, the baseline), the merged
model at Q8_0 and at Q4_K_M (one whole model per specialist), and the base at Q4_K_M once with each
adapter written as an F16 GGUF LoRA (packager/formats/gguf_lora.py) applied by llama.cpp at run
time. Also: bytes on disk of the fleet each way, and how long llama.cpp takes to load an adapter and
to switch from one specialist to the other in a live context. Results go to
benchmarks/results/fleet-adapters.json and the section between the markers in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.whole_build import publish  # noqa: E402

FLEET = ROOT / "examples" / "support-fleet" / "edgepack.toml"
START_MARKER = "<!-- fleet-adapters:start -->"
END_MARKER = "<!-- fleet-adapters:end -->"


def _context(ckpt, digest: str, options, cache: Path):
    from packager.progress import Reporter
    from packager.scheduler import scheduler_for
    from packager.stages import BuildContext

    reporter = Reporter(quiet=True)
    return BuildContext(ckpt, digest, options, reporter, cache, scheduler_for(ckpt, reporter, cache))


def switch_seconds(base_gguf: Path, adapter_ggufs: list[Path], rounds: int = 20) -> tuple[float, float]:
    """Seconds to load the first adapter file, and the median seconds to switch from one adapter to the next
    (all loaded) in a live context."""
    import ctypes

    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(base_gguf), n_ctx=256, verbose=False)
    try:
        start = time.perf_counter()
        loaded = [llama_cpp.llama_adapter_lora_init(llm._model.model, str(adapter_ggufs[0]).encode())]
        load = time.perf_counter() - start
        loaded += [llama_cpp.llama_adapter_lora_init(llm._model.model, str(p).encode()) for p in adapter_ggufs[1:]]
        scales = (ctypes.c_float * 1)(1.0)
        times = []
        for i in range(rounds):
            one = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(loaded[i % len(loaded)])
            start = time.perf_counter()
            llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, one, 1, scales)
            times.append(time.perf_counter() - start)
        for adapter in loaded:
            llama_cpp.llama_adapter_lora_free(adapter)
    finally:
        llm.close()
    return load, sorted(times)[len(times) // 2]


def measure(cache: Path) -> dict:
    from packager.checkpoint import load_checkpoint
    from packager.formats.gguf_lora import write_gguf_lora
    from packager.progress import Reporter
    from packager.project import BuildFlags, build_request
    from packager.stages import BuildOptions
    from packager.verify.gguf_check import verify_gguf

    request = build_request(BuildFlags(config=FLEET), Reporter(quiet=True), cwd=FLEET.parent)
    base = load_checkpoint(request.checkpoint, work_dir=cache / "work")
    base_ctx = _context(base, base.content_digest(), BuildOptions(), cache)
    specialists: dict[str, dict] = {}
    adapters = []
    for spec in request.specialists:
        options = BuildOptions(eval_path=spec.eval_path, task=dict(spec.task), task_gate=spec.task_gate)
        merged = load_checkpoint(spec.adapter, base=request.checkpoint, work_dir=cache / "work", name=spec.name)
        ctx = _context(merged, merged.content_digest(), options, cache)
        adapter_gguf = cache / "fleet-bench" / f"adapter-{spec.name}-F16.gguf"
        adapter_gguf.parent.mkdir(parents=True, exist_ok=True)
        write_gguf_lora(spec.adapter, base, adapter_gguf, "F16", name=spec.name)
        adapters.append(adapter_gguf)
        rows = {}
        forms = (("merged Q8_0", ctx.gguf("Q8_0"), None), ("merged Q4_K_M", ctx.gguf("Q4_K_M"), None),
                 ("base Q4_K_M + F16 adapter", base_ctx.gguf("Q4_K_M"), adapter_gguf))
        for label, gguf, lora in forms:
            start = time.perf_counter()
            # The golden-text fidelity against the fp32 merged model, then the eval set, both in llama.cpp.
            result = verify_gguf(gguf, label, "Q4_K_M" if "Q4" in label else "Q8_0", ctx.reference, ctx.golden,
                                 ctx.contract, ctx.hf_tokenizer, lora=lora)
            task = ctx.task_metrics_gguf(gguf, lora)
            m = result.metrics
            rows[label] = {"accuracy": task.exact_match, "validity": task.validity, "agreement": task.agreement,
                           "fp32_accuracy": task.baseline_exact_match, "latency_ms_p50": task.latency_ms_p50,
                           "top1": m.top1, "top1_decisive": m.top1_decisive, "kl": m.kl,
                           "bytes": gguf.stat().st_size, "adapter_bytes": lora.stat().st_size if lora else 0,
                           "seconds": round(time.perf_counter() - start, 1)}
        specialists[spec.name] = {"task": ctx.contract.task, "rows": len(ctx.eval_rows), "forms": rows}
    load, switch = switch_seconds(base_ctx.gguf("Q4_K_M"), adapters)
    return {"date": time.strftime("%Y-%m-%d"), "load_average": Path("/proc/loadavg").read_text().split()[0],
            "specialists": specialists, "adapter_load_s": load, "adapter_switch_s": switch}


def markdown(result: dict) -> str:
    lines = [START_MARKER,
             f"Measured {result['date']} on this 2-core host (load average {result['load_average']} at the end): "
             "each specialist of examples/support-fleet on its own eval set under its own contract in llama.cpp "
             "(the router constrained to its 12 labels), and on the golden text against its fp32 merged model.", ""]
    for name, spec in result["specialists"].items():
        rows = spec["forms"]
        fp32 = next(iter(rows.values()))["fp32_accuracy"]
        lines += [f"**{name}** ({spec['task']}, {spec['rows']} rows):", "",
                  "| form | accuracy | validity | agreement with fp32 | top-1 (decisive) | KL | MB on disk | "
                  "p50 ms / request (host) |", "|---|---|---|---|---|---|---|---|",
                  f"| fp32 merged (transformers, the baseline) | {fp32:.3f} | | | | | | |"]
        for label, r in rows.items():
            size = (r["bytes"] + r["adapter_bytes"]) / 2**20
            adapter = f" ({r['adapter_bytes'] / 2**20:.1f} adapter)" if r["adapter_bytes"] else ""
            lines.append(f"| {label} | {r['accuracy']:.3f} | {r['validity']:.3f} | {r['agreement']:.3f} | "
                         f"{r['top1']:.3f} ({r['top1_decisive']:.3f}) | {r['kl']:.4f} | {size:.0f}{adapter} | "
                         f"{r['latency_ms_p50']:.0f} |")
        lines.append("")
    forms = [spec["forms"] for spec in result["specialists"].values()]
    count = len(forms)
    fleet = forms[0]["base Q4_K_M + F16 adapter"]["bytes"] + sum(f["base Q4_K_M + F16 adapter"]["adapter_bytes"]
                                                                 for f in forms)
    merged = {label: sum(f[label]["bytes"] for f in forms) for label in ("merged Q4_K_M", "merged Q8_0")}
    lines += [f"The fleet on a device: base Q4_K_M once + {count} adapters {fleet / 2**20:.0f} MB; {count} merged "
              f"models {merged['merged Q4_K_M'] / 2**20:.0f} MB at Q4_K_M, {merged['merged Q8_0'] / 2**20:.0f} MB "
              "at Q8_0.",
              "",
              f"llama.cpp loads an adapter in {result['adapter_load_s'] * 1000:.0f} ms; switching the live context "
              f"from one specialist to the other takes {result['adapter_switch_s'] * 1e6:.0f} us (median of 20; "
              "the next decode then runs with the new adapter). Merged at Q4_K_M, a fine-tune's small deltas are "
              "rounded back onto the base's grid (the base was itself dequantized from Q4_K_M); kept apart in F16 "
              "they are not.",
              END_MARKER]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None, help="stage cache (default: edgepack's)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    from packager.fingerprint import cache_root

    result = measure(args.cache or cache_root())
    publish(result, "fleet-adapters.json", args.docs, markdown(result), (START_MARKER, END_MARKER),
            "Fleet: specialists as runtime adapters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
