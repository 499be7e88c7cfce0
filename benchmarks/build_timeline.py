"""Where a cold build's time and memory go, second by second.

Runs `edgepack build` on the bundled example (or a given checkpoint) with an empty stage cache and samples,
once a second: how busy the host's cores are (/proc/stat, so every process counts, Chromium's too), the
build process's own RSS and its descendants' RSS by program. Log lines are timestamped as they arrive.
Writes timeline.json into the work folder and prints a summary per 20 s.

    .venv/bin/python benchmarks/build_timeline.py --work /tmp/timeline [--example-cache DIR] [--target all]

`--example-cache` copies a prepared `examples/` folder of an earlier stage cache, so the bundled example's
preparation (not what is studied) is skipped. The host should be quiet: the busy column counts everything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_ticks() -> tuple[int, int]:
    """(all ticks, idle + iowait ticks) of the host since boot."""
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values), values[3] + values[4]


def rss_mb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every process below `pid`: children of all its threads (a child started by a target's thread is listed
    under that thread, not under the main one)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def program(pid: int) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    except OSError:
        return "?"
    module = next((a for a in args if a.startswith(("targets.", "packager."))), None)
    return module or Path(args[0]).name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (emptied first)")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint folder (default: the bundled example)")
    parser.add_argument("--target", default="all")
    parser.add_argument("--example-cache", type=Path, default=None,
                        help="an earlier stage cache's examples/ folder to start from")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    cache = args.work / "cache"
    cache.mkdir(parents=True)
    if args.example_cache:
        shutil.copytree(args.example_cache, cache / "examples")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGEPACK_CACHE": str(cache)}
    command = [sys.executable, "-m", "packager.cli", "build", *([args.checkpoint] if args.checkpoint else []),
               "--target", args.target, "--force", "--out", str(args.work / "out")]
    start = time.time()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[tuple[float, str]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((round(time.time() - start, 1), line.rstrip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    samples = []
    cores = os.cpu_count() or 1
    before = cpu_ticks()
    while proc.poll() is None:
        time.sleep(1)
        now = cpu_ticks()
        busy = 1 - (now[1] - before[1]) / max(1, now[0] - before[0])
        before = now
        children: dict[str, int] = {}
        for pid in descendants(proc.pid):
            children[program(pid)] = children.get(program(pid), 0) + rss_mb(pid)
        samples.append({"t": round(time.time() - start, 1), "busy_cores": round(busy * cores, 2),
                        "build_mb": rss_mb(proc.pid), "children_mb": children})
    reader.join(timeout=5)
    (args.work / "timeline.json").write_text(json.dumps({"command": command, "exit": proc.returncode,
                                                         "samples": samples, "lines": lines}, indent=1))
    for i in range(0, len(samples), 20):
        window = samples[i:i + 20]
        busy = sum(s["busy_cores"] for s in window) / len(window)
        build = max(s["build_mb"] for s in window) / 1024
        tree = max(s["build_mb"] + sum(s["children_mb"].values()) for s in window) / 1024
        print(f"{window[0]['t']:6.0f} s  busy {busy:4.2f} of {cores}  build process {build:4.1f} GB  "
              f"tree {tree:4.1f} GB")
    mean = sum(s["busy_cores"] for s in samples) / max(1, len(samples))
    print(f"exit {proc.returncode}, {time.time() - start:.0f} s, mean busy {mean:.2f} of {cores} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
