"""Benchmark the main command: `edgepack build --target all` of the bundled example, per commit.

    .venv/bin/python benchmarks/whole_build.py --commit 9d1d721 --commit HEAD

For each commit: a detached worktree, an empty stage cache, then three builds of
examples/intent-classifier: cold (empty cache), warm (nothing changed) and one option changed
(`--compression int8`, which the iOS ladder already ships, so only the choice is redone). Each
build runs as a child of this small process, so wait4 gives its own wall time, CPU time (the
build and every conversion child it waited for) and peak RSS (the largest single process); the
whole process tree's resident memory is summed every 2 s (its maximum is what the host needed). The
host's load average is sampled every 5 s while it runs, and each build's stage table is read from
its manifest. Results go to benchmarks/results/whole_build-<commit>.json and the section between
the whole-build markers in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout: packager is beside benchmarks/

from packager.peak_memory import vm_rss_kb  # noqa: E402
from packager.scheduler import descendants  # noqa: E402

START_MARKER = "<!-- whole-build:start -->"
END_MARKER = "<!-- whole-build:end -->"
RUNS = {"cold": [], "warm": [], "one option changed": ["--compression", "int8"]}


@dataclass
class BuildRun:
    """One timed build."""

    kind: str
    exit_code: int
    wall_s: float
    cpu_s: float
    peak_rss_gb: float
    load_avg_before: float
    load_avg_max: float
    tree_rss_max_gb: float  # the most the build's whole process tree held at once (sampled every 2 s)
    stages: list[dict] = field(default_factory=list)
    # Per artifact what the report judges it by (fidelity, task, verdict): two commits' builds compare on these.
    verdicts: list[dict] = field(default_factory=list)


def verdicts_of(manifest: dict) -> list[dict]:
    """The numbers a build's report shows per artifact, for checking that a faster build proves the same."""
    out = []
    for row in manifest.get("artifacts", []):
        task = row.get("task") or {}
        out.append({"artifact": row["artifact"], "top1": row.get("top1"), "kl": row.get("kl"),
                    "exact_match": task.get("exact_match"), "validity": task.get("validity"),
                    "agreement": task.get("agreement"), "passed": row.get("passed")})
    return out


def _load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def tree_rss_bytes(root: int) -> int:
    """Resident memory of `root` and all its descendants now (summed VmRSS; shared pages count twice)."""
    return sum(vm_rss_kb(pid) for pid in [root, *descendants(root=root)]) * 1024


@dataclass
class Measured:
    """One command's exit code, wall and CPU time, largest process, whole-tree memory and host load."""

    exit_code: int
    wall_s: float
    cpu_s: float
    peak_rss_gb: float
    tree_rss_max_gb: float
    load_avg_before: float
    load_avg_max: float


def measure(command: list[str], cwd: Path, env: dict[str, str], log: Path, title: str) -> Measured:
    """Run `command` as a child of this small process, its output appended to `log`, and measure it:
    wait4 gives its wall time, CPU time (with every child it waited for) and the largest single process;
    the whole process tree's resident memory is summed every 2 s and the load average read every 6 s."""
    loads = [_load_average()]
    tree_peak = [0]
    done = threading.Event()
    start = time.perf_counter()
    with log.open("a", encoding="utf-8") as sink:
        sink.write(f"\n=== {title}: {' '.join(command)}\n")
        sink.flush()
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT)

        def sample() -> None:
            ticks = 0
            while not done.wait(2):
                tree_peak[0] = max(tree_peak[0], tree_rss_bytes(proc.pid))
                ticks += 1
                if ticks % 3 == 0:
                    loads.append(_load_average())

        threading.Thread(target=sample, daemon=True).start()
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    return Measured(os.waitstatus_to_exitcode(status), round(wall, 1), round(usage.ru_utime + usage.ru_stime, 1),
                    round(usage.ru_maxrss / 2**20, 2), round(tree_peak[0] / 2**30, 2), loads[0], max(loads))


def timed_build(worktree: Path, cache: Path, out: Path, extra: list[str], kind: str, log: Path) -> BuildRun:
    """Run one build of the example in `worktree` and measure it."""
    command = [sys.executable, "-m", "packager.cli", "build", "--target", "all", "--force", "--out", str(out), *extra]
    env = {**os.environ, "PYTHONPATH": str(worktree), "EDGEPACK_CACHE": str(cache)}
    m = measure(command, worktree / "examples" / "intent-classifier", env, log, kind)
    path = out / "manifest.json"
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    return BuildRun(kind, m.exit_code, m.wall_s, m.cpu_s, m.peak_rss_gb, m.load_avg_before, m.load_avg_max,
                    m.tree_rss_max_gb, manifest.get("stages", []), verdicts_of(manifest))


def bench_commit(commit: str, scratch: Path, kinds: list[str]) -> dict:
    """The builds `kinds` (cold, warm, one option changed; in that order) of the example at `commit`."""
    sha = subprocess.check_output(["git", "-C", str(ROOT), "rev-parse", "--short", commit], text=True).strip()
    worktree = scratch / f"tree-{sha}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), sha], check=True,
                   capture_output=True)
    try:
        cache, out, log = scratch / f"cache-{sha}", scratch / f"out-{sha}", scratch / f"build-{sha}.log"
        runs = []
        for kind, extra in RUNS.items():
            if kind not in kinds:
                continue
            run = timed_build(worktree, cache, out, extra, kind, log)
            print(f"{sha} {kind}: exit {run.exit_code}, {run.wall_s:.0f} s wall, {run.cpu_s:.0f} s CPU, "
                  f"peak {run.peak_rss_gb:.1f} GB (tree {run.tree_rss_max_gb:.1f}), "
                  f"load {run.load_avg_before:.1f}..{run.load_avg_max:.1f}",
                  file=sys.stderr, flush=True)
            runs.append(asdict(run))
        return {"commit": sha, "cores": os.cpu_count(), "machine": platform.platform(), "runs": runs,
                "log": str(log)}
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False)


def markdown(results: list[dict]) -> str:
    """The docs section: one row per commit and kind, then the cold build's slowest stages."""
    lines = [START_MARKER, "", "| commit | build | exit | wall s | CPU s | CPU/wall | largest process GB "
             "| whole tree GB | load avg |",
             "|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        for run in result["runs"]:
            lines.append(f"| {result['commit']} | {run['kind']} | {run['exit_code']} | {run['wall_s']:.0f} | "
                         f"{run['cpu_s']:.0f} | {run['cpu_s'] / max(run['wall_s'], 1e-9):.2f} | "
                         f"{run['peak_rss_gb']:.1f} | {run['tree_rss_max_gb']:.1f} | "
                         f"{run['load_avg_before']:.1f}-{run['load_avg_max']:.1f} |")
    for result in results:
        cold = result["runs"][0]
        slow = sorted((s for s in cold["stages"] if not s["cached"]), key=lambda s: -s["seconds"])[:12]
        lines += ["", f"Cold build at {result['commit']}, slowest stages (s):", "",
                  "| stage | s |", "|---|---|"]
        lines += [f"| {s['name']} | {s['seconds']:.0f} |" for s in slow]
    return "\n".join([*lines, "", END_MARKER])


def write_section(docs: Path, section: str, start: str, end: str, heading: str) -> None:
    """Replace the text between the markers in `docs` (or append it under `heading`)."""
    text = docs.read_text(encoding="utf-8")
    if start in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n" + section + "\n"
    docs.write_text(text, encoding="utf-8")


def publish(result: dict, results_name: str, docs: Path, section: str, markers: tuple[str, str], heading: str) -> None:
    """Keep a benchmark's numbers (benchmarks/results/<results_name>) and its section of docs/benchmarks.md."""
    (ROOT / "benchmarks" / "results" / results_name).write_text(json.dumps(result, indent=2) + "\n")
    write_section(docs, section, *markers, heading)
    print(section)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", action="append", required=True, help="commit to measure (repeatable)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (caches, outputs, logs)")
    parser.add_argument("--only", action="append", choices=list(RUNS), default=None,
                        help="run only these builds (repeatable; a warm build needs the cold one before it)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="edgepack-whole-build-"))
    results = []
    try:
        for commit in args.commit:
            result = bench_commit(commit, scratch, args.only or list(RUNS))
            results.append(result)
            suffix = "" if args.only is None else "-" + "-".join(k.replace(" ", "_") for k in args.only)
            out = ROOT / "benchmarks" / "results" / f"whole_build-{result['commit']}{suffix}.json"
            out.parent.mkdir(exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    write_section(args.docs, markdown(results), START_MARKER, END_MARKER, "The main command, whole build")
    return 0 if all(r["exit_code"] == 0 for res in results for r in res["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
