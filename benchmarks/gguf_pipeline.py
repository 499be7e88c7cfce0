"""Benchmark edgepack's HF -> F16 GGUF -> Q4_K_M pipeline against llama.cpp's reference tools.

    .venv/bin/python benchmarks/gguf_pipeline.py --model DIR --runs 3 --out docs/benchmarks.md

Each step of each tool runs in its own subprocess so that its wall time and peak RSS (the child's
ru_maxrss from wait4) are its own, including interpreter start and imports, as a user sees them.
The two tools' runs are interleaved (and their order alternated) so that drift on a shared machine
hits both. The outputs are then compared tensor by tensor: edgepack promises byte-identical data.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

try:
    from benchmarks import reference_converter
except ImportError:  # run as a script from a checkout whose root is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import reference_converter

REPO = Path(__file__).resolve().parents[1]
START_MARKER = "<!-- gguf-pipeline:start -->"
END_MARKER = "<!-- gguf-pipeline:end -->"
QUANT = "Q4_K_M"
TOOLS = ("edgepack", "reference")
STEPS = ("f16", "quant")
STEP_TITLES = {"f16": "HF -> F16 GGUF", "quant": f"F16 -> {QUANT}", "total": f"Total (HF -> {QUANT})"}
# The targets, as edgepack / reference ratios of the whole pipeline.
WALL_TARGET = 0.7
RSS_TARGET = 1.0
_STDERR_TAIL = 4000

# edgepack's steps through its Python API, one subprocess each (argv: model, out / src, dest, type).
_EDGEPACK_F16 = """\
import sys, tempfile
from pathlib import Path
from packager.checkpoint import load_checkpoint
from packager.formats.gguf_writer import write_gguf
with tempfile.TemporaryDirectory(prefix="edgepack-bench-") as work:
    ckpt = load_checkpoint(Path(sys.argv[1]), work_dir=Path(work))
    write_gguf(ckpt, Path(sys.argv[2]), "F16")
"""
_EDGEPACK_QUANT = """\
import sys
from pathlib import Path
from packager.formats.gguf_quantize import quantize_gguf
quantize_gguf(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
"""


@dataclass(frozen=True)
class Sample:
    """One subprocess's cost."""

    wall_s: float
    peak_rss_mb: float
    cpu_s: float


@dataclass(frozen=True)
class Comparison:
    """How two GGUF files' tensors compare by name: type, shape and raw bytes."""

    tensors: int
    identical: int
    only_edgepack: list[str]
    only_reference: list[str]
    different: list[str]
    metadata_keys_differing: list[str]

    @property
    def byte_identical(self) -> bool:
        return self.tensors > 0 and self.identical == self.tensors and not (self.only_edgepack or self.only_reference)


def measure(argv: list[str], what: str) -> Sample:
    """Run argv to completion and return its wall time, peak RSS and CPU time (raise on failure)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty child must never block
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO, env=env)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C: do not leave a converter running behind us
            proc.kill()
            os.wait4(proc.pid, 0)
            raise
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode("utf-8", "replace")[-_STDERR_TAIL:]
            raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    # Linux reports ru_maxrss in KiB.
    return Sample(round(wall, 3), round(usage.ru_maxrss / 1024, 1), round(usage.ru_utime + usage.ru_stime, 3))


def step_commands(tool: str, model: Path, work: Path, pre_tokenizer: str | None) -> dict[str, list[str]]:
    """Return the command line of each step of one tool, writing into work/<tool>-*.gguf."""
    f16, quant = work / f"{tool}-F16.gguf", work / f"{tool}-{QUANT}.gguf"
    if tool == "edgepack":
        return {
            "f16": [sys.executable, "-c", _EDGEPACK_F16, str(model), str(f16)],
            "quant": [sys.executable, "-c", _EDGEPACK_QUANT, str(f16), str(quant), QUANT],
        }
    convert = reference_converter.reference_convert_argv(
        model, f16, "f16", pre_tokenizer, wrapper=work / "reference_fixed_pre.py"
    )
    return {"f16": convert, "quant": reference_converter.reference_quantize_argv(f16, quant, QUANT)}


def warm_page_cache(model: Path) -> None:
    """Read the checkpoint once so that neither tool pays for the first cold read."""
    for path in sorted(model.iterdir()):
        if path.is_file():
            with path.open("rb") as fh:
                while fh.read(64 * 2**20):
                    pass


def run_benchmark(model: Path, runs: int, work: Path, pre_tokenizer: str | None) -> dict[str, dict[str, list[Sample]]]:
    """Return every sample, per tool and step; outputs of the last run stay in `work`."""
    commands = {tool: step_commands(tool, model, work, pre_tokenizer) for tool in TOOLS}
    samples: dict[str, dict[str, list[Sample]]] = {tool: {step: [] for step in STEPS} for tool in TOOLS}
    for run in range(runs):
        order = TOOLS if run % 2 == 0 else TOOLS[::-1]
        for tool in order:
            for out in work.glob(f"{tool}-*.gguf"):
                out.unlink()
            for step in STEPS:
                sample = measure(commands[tool][step], f"{tool} {STEP_TITLES[step]}")
                samples[tool][step].append(sample)
                print(f"run {run + 1}/{runs} {tool:9s} {STEP_TITLES[step]:15s} {sample.wall_s:7.2f} s "
                      f"{sample.peak_rss_mb:7.0f} MB peak RSS {sample.cpu_s:7.2f} CPU-s", file=sys.stderr, flush=True)
    return samples


def _raw_bytes(tensor: gguf.ReaderTensor) -> np.ndarray:
    """Return a tensor's stored bytes as a flat uint8 view of the memory map (no copy)."""
    return np.asarray(tensor.data).reshape(-1).view(np.uint8)


def _field_bytes(field: gguf.ReaderField) -> bytes:
    return b"".join(field.parts[i].tobytes() for i in field.data)


def compare_ggufs(ours: Path, reference: Path) -> Comparison:
    """Compare two GGUF files' tensors by name (type, shape, raw data) and list differing metadata keys."""
    a, b = gguf.GGUFReader(str(ours)), gguf.GGUFReader(str(reference))
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    common = [n for n in ta if n in tb]
    different = []
    for name in common:
        x, y = ta[name], tb[name]
        same = (
            x.tensor_type == y.tensor_type
            and list(x.shape) == list(y.shape)
            and np.array_equal(_raw_bytes(x), _raw_bytes(y))
        )
        if not same:
            different.append(name)
    keys = set(a.fields) | set(b.fields)
    differing = sorted(
        k for k in keys
        if k not in a.fields or k not in b.fields or _field_bytes(a.fields[k]) != _field_bytes(b.fields[k])
    )
    return Comparison(
        tensors=max(len(ta), len(tb)),
        identical=len(common) - len(different),
        only_edgepack=sorted(set(ta) - set(tb)),
        only_reference=sorted(set(tb) - set(ta)),
        different=different,
        metadata_keys_differing=differing,
    )


def summarize(samples: dict[str, dict[str, list[Sample]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Return medians per tool and step, with 'total' = per-run sum of wall/CPU and max of peak RSS."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for tool, steps in samples.items():
        runs = list(zip(*(steps[s] for s in STEPS), strict=True))
        totals = [
            Sample(sum(s.wall_s for s in r), max(s.peak_rss_mb for s in r), sum(s.cpu_s for s in r)) for r in runs
        ]
        out[tool] = {
            step: {
                "wall_s": statistics.median(s.wall_s for s in series),
                "peak_rss_mb": statistics.median(s.peak_rss_mb for s in series),
                "cpu_s": statistics.median(s.cpu_s for s in series),
            }
            for step, series in [*steps.items(), ("total", totals)]
        }
    return out


def ratios(medians: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Return edgepack / reference for each step and metric."""
    ours, ref = medians["edgepack"], medians["reference"]
    return {step: {m: round(ours[step][m] / ref[step][m], 3) for m in ours[step]} for step in ours}


def machine_info() -> dict[str, Any]:
    """Return what the numbers depend on: cores, RAM, CPU model, OS."""
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or "unknown",
    )
    mem_kb = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "ram_gib": round(mem_kb / 2**20, 1),
        "cpu": cpu,
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
    }


def versions(converter_dir: Path) -> dict[str, str]:
    """Return the versions of everything either pipeline runs on."""
    found = {"python": platform.python_version()}
    for dist in ("edgepack", "torch", "transformers", "safetensors", "numpy", "gguf", "llama-cpp-python"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    pyproject = tomllib.loads((converter_dir / "gguf-py" / "pyproject.toml").read_text(encoding="utf-8"))
    project = pyproject.get("project") or pyproject.get("tool", {}).get("poetry", {})
    found["reference gguf-py"] = project.get("version", "?")
    commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                            capture_output=True, text=True, check=False).stdout.strip()
    found["edgepack commit"] = commit or "unknown"
    return found


def _verdict(ratio: float, target: float) -> str:
    return "met" if ratio <= target else "**not met**"


def _check_line(label: str, c: Comparison) -> str:
    if c.byte_identical:
        line = (f"- {label}: **byte-identical** tensor data "
                f"({c.identical}/{c.tensors} tensors: same types, shapes and bytes)")
    else:
        line = (f"- {label}: **differ** ({c.identical}/{c.tensors} tensors identical; different: "
                f"{', '.join(c.different[:8]) or '-'}; only edgepack: {', '.join(c.only_edgepack[:8]) or '-'}; "
                f"only reference: {', '.join(c.only_reference[:8]) or '-'})")
    keys = ", ".join(f"`{k}`" for k in c.metadata_keys_differing) or "none"
    return f"{line}. Metadata keys that differ: {keys}."


def render_markdown(result: dict[str, Any]) -> str:
    """Return the benchmark section (without markers)."""
    med, rat, m, v = result["medians"], result["ratios"], result["machine"], result["versions"]
    ours, ref = med["edgepack"], med["reference"]
    lines = [
        "## GGUF pipeline: edgepack vs llama.cpp's reference tools",
        "",
        f"Measured {result['date']} with `benchmarks/gguf_pipeline.py --runs {result['runs']}` on "
        f"`{result['model_name']}` ({result['model_mb']:,.1f} MB of safetensors). Medians of {result['runs']} "
        "interleaved run(s); every step is its own subprocess (interpreter start and imports included); "
        "peak RSS is the child's `ru_maxrss`. Reference: llama.cpp's `convert_hf_to_gguf.py --outtype f16` from the "
        f"llama-cpp-python {reference_converter.LLAMA_CPP_PYTHON_VERSION} sdist, then `llama_model_quantize` with "
        f"default parameters (as `llama-quantize` does). edgepack: `write_gguf(..., \"F16\")`, then `quantize_gguf`.",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM, {m['os']}.",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        "| step | edgepack wall | reference wall | wall ratio | edgepack peak RSS | reference peak RSS | RSS ratio "
        "| edgepack CPU | reference CPU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for step in (*STEPS, "total"):
        o, r, q = ours[step], ref[step], rat[step]
        name = f"**{STEP_TITLES[step]}**" if step == "total" else STEP_TITLES[step]
        lines.append(
            f"| {name} | {o['wall_s']:.2f} s | {r['wall_s']:.2f} s | {q['wall_s']:.2f}x | {o['peak_rss_mb']:.0f} MB | "
            f"{r['peak_rss_mb']:.0f} MB | {q['peak_rss_mb']:.2f}x | {o['cpu_s']:.1f} s | {r['cpu_s']:.1f} s |"
        )
    lines += [
        "",
        "Total wall and CPU are per-run sums of the two steps; total peak RSS is the larger step's.",
        "",
        "Targets (edgepack / reference, whole pipeline):",
        "",
        f"- wall time <= {WALL_TARGET}x: {rat['total']['wall_s']:.3f}x, "
        f"{_verdict(rat['total']['wall_s'], WALL_TARGET)} "
        f"(F16 conversion alone: {rat['f16']['wall_s']:.2f}x; the quantization step is llama.cpp's own quantizer "
        "in both pipelines)",
        f"- peak RSS <= {RSS_TARGET}x: {rat['total']['peak_rss_mb']:.3f}x, "
        f"{_verdict(rat['total']['peak_rss_mb'], RSS_TARGET)}",
        "",
        "Output check:",
        "",
        _check_line("F16", Comparison(**result["checks"]["f16"])),
        _check_line(QUANT, Comparison(**result["checks"]["quant"])),
    ]
    return "\n".join(lines) + "\n"


def write_section(out: Path, section: str) -> None:
    """Put `section` between the markers in `out`, keeping the rest of the file (created if missing)."""
    block = f"{START_MARKER}\n{section}{END_MARKER}\n"
    text = out.read_text(encoding="utf-8") if out.is_file() else "# Benchmarks\n"
    pattern = re.compile(re.escape(START_MARKER) + r".*?" + re.escape(END_MARKER) + r"\n?", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)


def default_model() -> Path:
    """Return the bundled example's HF folder (Gemma 3 270M), building it on first use."""
    from packager.examples import bundled_example
    from packager.progress import Reporter

    return bundled_example(Reporter())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="HF model folder (default: the bundled Gemma 3 270M example)")
    parser.add_argument("--runs", type=int, default=3, help="runs per tool and step (default 3)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md",
                        help="markdown file to put the results section into (default docs/benchmarks.md)")
    parser.add_argument("--no-write", action="store_true", help="do not touch --out")
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON on stdout")
    parser.add_argument("--pre-tokenizer", help="force the reference converter's tokenizer.ggml.pre (tiny models)")
    parser.add_argument("--work-dir", type=Path, help="parent of the temporary work folder (default: system temp)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model = (args.model or default_model()).resolve()
    converter_dir = reference_converter.reference_converter_dir()
    warm_page_cache(model)
    with tempfile.TemporaryDirectory(prefix="edgepack-gguf-bench-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        samples = run_benchmark(model, args.runs, work, args.pre_tokenizer)
        print("comparing outputs", file=sys.stderr, flush=True)
        checks = {
            step: asdict(compare_ggufs(work / f"edgepack-{suffix}.gguf", work / f"reference-{suffix}.gguf"))
            for step, suffix in (("f16", "F16"), ("quant", QUANT))
        }
    medians = summarize(samples)
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "model": str(model),
        "model_name": model.name,
        "model_mb": sum(p.stat().st_size for p in model.glob("*.safetensors")) / 2**20,
        "runs": args.runs,
        "machine": machine_info(),
        "versions": versions(converter_dir),
        "samples": {tool: {step: [asdict(s) for s in series] for step, series in steps.items()}
                    for tool, steps in samples.items()},
        "medians": medians,
        "ratios": ratios(medians),
        "checks": checks,
        "targets": {"wall_ratio_max": WALL_TARGET, "peak_rss_ratio_max": RSS_TARGET},
    }
    section = render_markdown(result)
    if not args.no_write:
        write_section(args.out, section)
        print(f"wrote {args.out}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(section)


if __name__ == "__main__":
    main()
