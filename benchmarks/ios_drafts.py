"""The iOS task eval in the numpy MIL interpreter, token by token vs with fp32's answers as drafts.

    .venv/bin/python benchmarks/ios_drafts.py dist/support-fleet    # a fleet build's folder, after --target ios

Each specialist of examples/support-fleet answers its eval set through its shipped package
(`<build>/ios/<name>/<package>`, or a single build's `<build>/ios/<package>`) twice in one process,
one after the other on the same load: the way EdgeModel.generate drives it (the prompt in one
prediction, then one token per prediction) and with the fp32 model's answer checked as a draft in one
prediction (targets.ios.verify, PackageDriver.continuation). Reported: seconds each way, the ratio,
how many answer tokens came from drafts, and whether every answer is the same text (it must be).
Results go to benchmarks/results/ios-drafts.json and the section between the markers in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.fleet_adapters import FLEET, _context  # noqa: E402
from benchmarks.whole_build import publish  # noqa: E402

START_MARKER = "<!-- ios-drafts:start -->"
END_MARKER = "<!-- ios-drafts:end -->"
PACKAGE = "model-int4-adapter.mlpackage"
# The context the bundled fleet's packages were built for (its build: "context sized from the eval set: 512").
CONTEXT = 512


def _package(build: Path, name: str, package: str) -> tuple[Path, str | None]:
    """The specialist's own package, else the fleet's shared one with its function."""
    own = build / "ios" / name / package
    return (own, None) if own.is_dir() else (build / "ios" / package, name)


def measure(build: Path, cache: Path, package: str) -> dict:
    from packager.checkpoint import load_checkpoint
    from packager.progress import Reporter
    from packager.project import BuildFlags, build_request
    from packager.stages import BuildOptions
    from packager.verify.task_eval import score
    from targets.ios.verify import SimulatedModel, baseline_drafts, package_generator

    request = build_request(BuildFlags(config=FLEET), Reporter(quiet=True), cwd=FLEET.parent)
    specialists = {}
    for spec in request.specialists:
        options = BuildOptions(eval_path=spec.eval_path, task=dict(spec.task), task_gate=spec.task_gate)
        merged = load_checkpoint(spec.adapter, base=request.checkpoint, work_dir=cache / "work", name=spec.name)
        ctx = _context(merged, merged.content_digest(), options, cache)
        path, function = _package(build, spec.name, package)
        baseline, rows = ctx.baseline_answers, ctx.eval_rows
        drafts = baseline_drafts(ctx.contract, rows, baseline)
        ways = {}
        for way, given in (("token by token", None), ("fp32 answers as drafts", drafts)):
            model = SimulatedModel(path, function)
            model.checks_drafts = given is not None
            start = time.perf_counter()
            metrics, answers = score(ctx.contract, rows, package_generator(model, ctx.hf_tokenizer, ctx.contract,
                                                                           CONTEXT, given), baseline)
            ways[way] = {"seconds": round(time.perf_counter() - start, 1), "accuracy": metrics.exact_match,
                         "answers": answers, "tokens": model.answered, "drafted": model.drafted}
        plain, drafted = ways.values()
        specialists[spec.name] = {
            "package": str(path.relative_to(build)) + (f" (function {function})" if function else ""),
            "rows": len(rows), "ways": ways, "same_answers": plain["answers"] == drafted["answers"]
            and plain["accuracy"] == drafted["accuracy"] and plain["tokens"] == drafted["tokens"]}
    return {"date": time.strftime("%Y-%m-%d"), "load_average": Path("/proc/loadavg").read_text().split()[0],
            "specialists": specialists}


def markdown(result: dict) -> str:
    lines = [START_MARKER,
             f"Measured {result['date']} on this 2-core host (load average {result['load_average']} at the end), "
             "both ways in one process, one after the other: each specialist's eval set answered through its "
             "shipped package in the numpy MIL interpreter.", "",
             "| specialist | package | rows | token by token | fp32 answers as drafts | ratio | answer tokens from "
             "drafts | same answers |", "|---|---|---|---|---|---|---|---|"]
    for name, spec in result["specialists"].items():
        plain, drafted = spec["ways"].values()
        lines.append(f"| {name} | {spec['package']} | {spec['rows']} | {plain['seconds']:.0f} s | "
                     f"{drafted['seconds']:.0f} s | {plain['seconds'] / drafted['seconds']:.1f}x | "
                     f"{drafted['drafted']} of {drafted['tokens']} | {'yes' if spec['same_answers'] else 'NO'} |")
    return "\n".join([*lines, END_MARKER])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build", type=Path, help="a build folder of examples/support-fleet with an ios/ folder")
    parser.add_argument("--package", default=PACKAGE)
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    from packager.fingerprint import cache_root

    result = measure(args.build.resolve(), cache_root(), args.package)
    publish(result, "ios-drafts.json", args.docs, markdown(result), (START_MARKER, END_MARKER),
            "iOS task eval: fp32's answers as drafts")
    return 0 if all(s["same_answers"] for s in result["specialists"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
