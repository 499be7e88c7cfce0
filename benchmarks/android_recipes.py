"""ExecuTorch recipes for the android target on Gemma 3 270M, with llama.cpp's Q4_K_M as the comparison line.

For each recipe: export wall time and peak RSS (the export's child process), .pte + .ptd size,
fidelity vs the fp32 reference on the golden text (top-1, decisive top-1, KL; executed in
ExecuTorch), and host decode tokens/s in ExecuTorch's TextLLMRunner. Recipes not exported are
reported with their eager-PyTorch prediction (the screen `--recipe auto` uses), marked as such.
Recipes run one after another (an fp32 export peaks near 5 GB). Writes docs/benchmarks.md between
<!-- android:start --> and <!-- android:end -->.

    EDGEPACK_CACHE=... .venv/bin/python benchmarks/android_recipes.py [--export 8da8w,fp32] [--screen 8da4w-g32,...]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import time
from pathlib import Path

from packager.pipeline import BuildRequest, open_input
from packager.progress import Reporter
from packager.stages import BuildContext, BuildOptions
from packager.verify.gguf_check import verify_gguf
from targets.android.export import EXECUTORCH_VERSION, RECIPES
from targets.android.stages import cached_pte, screened, verified_pte

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
START, END = "<!-- android:start -->", "<!-- android:end -->"


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def measure(checkpoint: Path, exported: list[str], screened_only: list[str], context: int) -> list[dict]:
    reporter = Reporter()
    ckpt, digest = open_input(BuildRequest(checkpoint=checkpoint, targets=[]), reporter)
    ctx = BuildContext(ckpt, digest, BuildOptions(context_length=context), reporter)
    tokenizer_json = ckpt.folder / "tokenizer.json"
    rows = []
    for name in exported:
        recipe = RECIPES[name]
        artifact = cached_pte(ctx, recipe, "xnnpack", context)
        result = verified_pte(ctx, artifact, tokenizer_json, artifact.pte.name)
        m = result.metrics
        rows.append({"name": name, "level": "executed", "summary": recipe.summary,
                     "seconds": artifact.export.get("wall_seconds", artifact.export["seconds"]),
                     "rss": artifact.export["peak_rss_mb"], "mb": artifact.megabytes, "top1": m.top1,
                     "decisive": m.top1_decisive, "kl": m.kl, "tps": result.tokens_per_s, "gate": recipe.gate.name,
                     "passed": result.passed})
    for name in screened_only:
        recipe = RECIPES[name]
        m = screened(ctx, recipe)
        rows.append({"name": name, "level": "eager prediction", "summary": recipe.summary, "seconds": None,
                     "rss": None, "mb": None, "top1": m.top1, "decisive": m.top1_decisive, "kl": m.kl, "tps": None,
                     "gate": recipe.gate.name, "passed": not recipe.gate.check(m)})
    gguf = ctx.gguf("Q4_K_M")
    q4 = verify_gguf(gguf, gguf.name, "Q4_K_M", ctx.reference, ctx.golden, ctx.contract, ctx.hf_tokenizer)
    m = q4.metrics
    rows.append({"name": "llama.cpp Q4_K_M (comparison)", "level": "executed", "summary": "GGUF in llama.cpp",
                 "seconds": None, "rss": None, "mb": gguf.stat().st_size / 2**20, "top1": m.top1,
                 "decisive": m.top1_decisive, "kl": m.kl, "tps": q4.tokens_per_s, "gate": "3-6-bit",
                 "passed": q4.passed})
    return rows


def render(rows: list[dict], context: int) -> str:
    load = os.getloadavg()[0]
    lines = [
        START,
        "## Android: ExecuTorch recipes on Gemma 3 270M",
        "",
        f"`benchmarks/android_recipes.py`, ExecuTorch {EXECUTORCH_VERSION} (XNNPACK), context {context}, "
        f"{platform.machine()} host with {os.cpu_count()} cores, load average {load:.1f} when written "
        f"({time.strftime('%Y-%m-%d')}); times are rough on a shared machine. Fidelity vs the fp32 "
        "transformers reference on the bundled golden text (509 positions). Size = .pte + .ptd.",
        "",
        "| recipe | level | export s | peak RSS MB | size MB | top-1 | top-1 decisive | KL | host tok/s | gate |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['level']} | {_fmt(r['seconds'], '.0f')} | {_fmt(r['rss'], '.0f')} | "
            f"{_fmt(r['mb'], '.0f')} | {r['top1']:.3f} | {_fmt(r['decisive'], '.3f')} | {r['kl']:.4f} | "
            f"{_fmt(r['tps'], '.1f')} | {r['gate']}: {'pass' if r['passed'] else 'FAIL'} |")
    lines += [
        "",
        "What the recipes show. ExecuTorch's XNNPACK partitioner lowers quantized linears only with int8",
        "*dynamic activations* (8da): there is no weight-only path with fp32 activations, and an fp32 output",
        "head alone is 640 MB. Gemma's activations carry large per-channel outliers, so per-token int8",
        "activations lose precision (plain 8da8w: the 8-bit gate fails) and int4 grouped weights compound it",
        "(g32..g128, with the first/last blocks or down_proj at int8: 0.6-0.75 decisive top-1). Migrating the",
        "outliers into the weights first (`smooth`: SmoothQuant-style per-channel scales folded into the",
        "RMSNorm gains, v_proj and up_proj rows, exact in fp32) recovers most of it, and keeping the one",
        "linear whose input smoothing cannot tame (mlp.down_proj, after the gated product) in fp32 brings the",
        "8-bit recipe level with Q4_K_M at under 350 MB. The tied table is stored once in every recipe: as",
        "fp32 in the .ptd's deduplicated data store, or as the head's own int8 rows shared by the embedding",
        "lookup (which re-applies Gemma's sqrt(hidden) scale and undoes the head's smoothing per channel).",
        "Caveat: these weights were dequantized from Q4_K_M, which flatters the GGUF line; judge on a",
        "fine-tuned checkpoint too.",
        END,
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="HF folder (default: the bundled example)")
    parser.add_argument("--export", default="8da8w-smooth-f32down,8da8w-smooth,8da8w,fp32")
    parser.add_argument("--screen", default="8da4w-g32,8da4w-g64,8da4w-g128,8da4w-g32-mixed,8da4w-emb4")
    parser.add_argument("--context", type=int, default=1024)
    args = parser.parse_args()
    checkpoint = args.checkpoint
    if checkpoint is None:
        from packager.examples import bundled_example

        checkpoint = bundled_example(Reporter())
    rows = measure(checkpoint, [r for r in args.export.split(",") if r], [r for r in args.screen.split(",") if r],
                   args.context)
    section = render(rows, args.context)
    text = DOCS.read_text(encoding="utf-8")
    if START in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _m: section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOCS.write_text(text, encoding="utf-8")
    print(section)


if __name__ == "__main__":
    main()
