"""Benchmark what one target's build costs as the model grows: 270M (real), 1B and 4B (random weights).

    .venv/bin/python benchmarks/scale.py --model gemma3-1b --target raspberry-pi --commit 4c9746f --commit HEAD

For each commit (a detached worktree) and model, each target is built alone with an empty stage
cache and `--no-gate` (random weights measure cost, never fidelity), as a child of this small
process: wall time, CPU time, the largest single process and the whole process tree's resident
memory (benchmarks/whole_build.measure), the host's load average, the artifact sizes, and what
`edgepack doctor` predicted for that target before the build (when the commit's doctor predicts).
Random-weight checkpoints are made once into --models (benchmarks/scale_models.py). Results go to
benchmarks/results/scale-<commit>.json and the section between the scale markers in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.scale_models import CONFIGS, make_checkpoint  # noqa: E402
from benchmarks.whole_build import Measured, measure, write_section  # noqa: E402

START_MARKER = "<!-- scale:start -->"
END_MARKER = "<!-- scale:end -->"
REAL = "gemma3-270m"


@dataclass
class TargetCost:
    """One target built alone from an empty cache."""

    commit: str
    model: str
    target: str
    measured: Measured
    predicted_gb: float | None  # edgepack doctor's prediction for this target, before the build
    artifacts: dict[str, float]  # artifact -> MB


def checkpoint(model: str, models: Path) -> Path:
    if model == REAL:
        from packager.examples import bundled_example
        from packager.progress import Reporter

        return bundled_example(Reporter(quiet=True))
    return make_checkpoint(model, models / model)


def predicted(worktree: Path, env: dict[str, str], ckpt: Path, target: str) -> float | None:
    """What this commit's `edgepack doctor` predicts for the target built with --no-gate (None: its doctor does
    not predict)."""
    for flags in (["--no-gate"], []):  # the build below runs with --no-gate; doctors before 2026-12-07 lack the flag
        done = subprocess.run([sys.executable, "-m", "packager.cli", "doctor", str(ckpt), "--json", *flags],
                              cwd=worktree, env=env, capture_output=True, text=True, check=False)
        if done.returncode == 0:
            break
    try:
        rows = json.loads(done.stdout).get("build_ram", [])
    except ValueError:
        return None
    return next((row["peak_gb"] for row in rows if row["target"] == target), None)


def build_target(commit: str, worktree: Path, scratch: Path, model: str, ckpt: Path, target: str) -> TargetCost:
    cache, out = scratch / f"cache-{commit}-{model}-{target}", scratch / f"out-{commit}-{model}-{target}"
    env = {**os.environ, "PYTHONPATH": str(worktree), "EDGEPACK_CACHE": str(cache)}
    guess = predicted(worktree, env, ckpt, target)
    command = [sys.executable, "-m", "packager.cli", "build", str(ckpt), "--target", target, "--no-gate", "--force",
               "--out", str(out)]
    log = scratch / f"build-{commit}.log"
    m = measure(command, worktree, env, log, f"{model} {target}")
    if m.exit_code not in (0, 1):  # 1: a gate failed on random weights, as expected; anything else is a failure
        print(f"{model} {target} exited {m.exit_code}; the build log's end:\n"
              + "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-30:]), flush=True)
    sizes = artifact_sizes(out / target)
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    return TargetCost(commit, model, target, m, guess, sizes)


MODEL_SUFFIXES = (".gguf", ".pte", ".ptd", ".mlpackage")


def artifact_sizes(folder: Path) -> dict[str, float]:
    """MB of each model file (or .mlpackage folder) the target wrote."""
    sizes = {}
    for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
        if path.suffix in MODEL_SUFFIXES and not any(p.suffix == ".mlpackage" for p in path.parents):
            files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
            sizes[str(path.relative_to(folder))] = round(sum(f.stat().st_size for f in files) / 2**20, 1)
    return sizes


def markdown(costs: list[TargetCost], docs: Path) -> str:
    """The scale table: the rows already in `docs` (earlier runs), each replaced by this run's row for the
    same commit, model and target, then this run's new rows."""
    def row(c: TargetCost) -> str:
        m = c.measured
        guess = f"{c.predicted_gb:.1f}" if c.predicted_gb is not None else "-"
        sizes = ", ".join(f"{name} {mb:.0f}" for name, mb in c.artifacts.items()) or "-"
        return (f"| {c.commit} | {c.model} | {c.target} | {m.exit_code} | {m.wall_s:.0f} | {m.cpu_s:.0f} | "
                f"{m.peak_rss_gb:.1f} | {m.tree_rss_max_gb:.1f} | {guess} | "
                f"{m.load_avg_before:.1f}-{m.load_avg_max:.1f} | {sizes} |")

    new = {(c.commit, c.model, c.target): row(c) for c in costs}
    text = docs.read_text(encoding="utf-8") if docs.is_file() else ""
    old = text.split(START_MARKER, 1)[1].split(END_MARKER, 1)[0] if START_MARKER in text else ""
    rows = []
    for line in old.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if not line.startswith("| ") or cells[0] == "commit":
            continue
        rows.append(new.pop((cells[0], cells[1], cells[2]), line))
    lines = [START_MARKER, "", "| commit | model | target | exit | wall s | CPU s | largest process GB | whole tree GB "
             "| doctor predicted GB | load avg | artifacts (MB) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    return "\n".join([*lines, *rows, *new.values(), "", END_MARKER])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", choices=[REAL, *sorted(CONFIGS)], required=True)
    parser.add_argument("--target", action="append", required=True)
    parser.add_argument("--commit", action="append", default=None, help="commit to measure (repeatable; default HEAD)")
    parser.add_argument("--models", type=Path, default=Path(tempfile.gettempdir()) / "edgepack-scale-models",
                        help="where the random-weight checkpoints are made (kept for the next run)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="edgepack-scale-"))
    costs: list[TargetCost] = []
    try:
        checkpoints = {model: checkpoint(model, args.models) for model in args.model}
        for commit in args.commit or ["HEAD"]:
            sha = subprocess.check_output(["git", "-C", str(ROOT), "rev-parse", "--short", commit], text=True).strip()
            worktree = scratch / f"tree-{sha}"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), sha], check=True,
                           capture_output=True)
            try:
                for model, ckpt in checkpoints.items():
                    for target in args.target:
                        cost = build_target(sha, worktree, scratch, model, ckpt, target)
                        m = cost.measured
                        print(f"{sha} {model} {target}: exit {m.exit_code}, {m.wall_s:.0f} s, largest process "
                              f"{m.peak_rss_gb:.1f} GB, tree {m.tree_rss_max_gb:.1f} GB, predicted "
                              f"{cost.predicted_gb}", file=sys.stderr, flush=True)
                        costs.append(cost)
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False)
            result = ROOT / "benchmarks" / "results" / f"scale-{sha}.json"
            result.parent.mkdir(exist_ok=True)
            fresh = [asdict(c) for c in costs if c.commit == sha]
            measured = {(c["model"], c["target"]) for c in fresh}
            earlier = json.loads(result.read_text(encoding="utf-8")) if result.is_file() else []
            kept = [c for c in earlier if (c["model"], c["target"]) not in measured]  # other runs of this commit
            result.write_text(json.dumps(kept + fresh, indent=2) + "\n", encoding="utf-8")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_section(args.docs, markdown(costs, args.docs), START_MARKER, END_MARKER,
                  "Scale: one target's build, 270M to 4B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
