"""Does edgepack find the prompt a real LoRA fine-tune was trained on, given only --eval and --task?

    .venv/bin/python benchmarks/contract_detection.py            # ~25 min on 2 cores: training, then one build

A LoRA adapter is trained on the real Gemma 3 270M with the bundled example's data, but rendered the
way a chat SFT script renders it (the base's chat template, one user turn "{instruction}: {input}";
examples/intent-classifier/train.py --rendering chat). It is then built for the Raspberry Pi with
nothing but `--eval` and `--task labels` (no prompt_template, no --quant), as a new user would.
Recorded (from the build's --json document, written on a failed gate too): the fine-tune's own
accuracy at the end of training, the contract check's table (each rendering the fp32 model was
scored under), which rendering the build used, the fp32 baseline accuracy the artifacts were judged
against, and the GGUF the ladder stopped at. Results go to
benchmarks/results/contract-detection.json and the section between the markers in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.whole_build import publish  # noqa: E402

EXAMPLE = ROOT / "examples" / "intent-classifier"
START_MARKER = "<!-- contract-detection:start -->"
END_MARKER = "<!-- contract-detection:end -->"


def train(work: Path, epochs: int) -> dict:
    """Train the chat-rendered adapter once (kept in `work`); return train.py's final eval line."""
    log = work / "training_log.jsonl"
    if not (work / "adapter" / "adapter_config.json").exists():
        subprocess.run([sys.executable, str(EXAMPLE / "train.py"), "--rendering", "chat", "--epochs", str(epochs),
                        "--out", str(work / "adapter"), "--log", str(log)], check=True, cwd=ROOT)
    lines = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    return next(line for line in reversed(lines) if line.get("event") == "eval") | {
        "steps": max(line.get("step", 0) for line in lines), "epochs": epochs}


def build(work: Path) -> tuple[dict, float]:
    """Build with only --eval and --task; return the --json document (on a failed gate too) and the seconds."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "packager.cli", "build", str(work / "adapter"), "--base",
                           "@bundled:gemma3-270m", "--target", "raspberry-pi", "--eval",
                           str(EXAMPLE / "data" / "eval.jsonl"), "--task", "labels", "--out", str(work / "dist"),
                           "--force", "--quiet", "--json"], cwd=ROOT, check=False, capture_output=True, text=True)
    return json.loads(proc.stdout), time.perf_counter() - start


def markdown(result: dict) -> str:
    check = result["contract_check"]
    rows = ["| rendering | fp32 accuracy | fp32 validity |", "|---|---|---|"]
    rows += [f"| {c['name']}{' **(used)**' if c['name'] == check['used']['name'] else ''} | {c['accuracy']:.3f} | "
             f"{c['validity']:.3f} |" for c in check["candidates"] or [check["declared"]]]
    artifact = result["artifact"]
    task = artifact.get("task") or {}
    return "\n".join([
        START_MARKER,
        f"Measured {result['date']} on this 2-core host ({result['load']}). LoRA (rank 8) on the real Gemma 3 270M, "
        f"trained {result['training']['steps']} steps on the chat-template rendering; its own accuracy at the end "
        f"of training: {result['training']['exact_match']:.3f} on the 108 eval rows. Built with only `--eval` and "
        f"`--task labels` (exit {result['exit_code']}, {result['seconds']:.0f} s). The contract check scored "
        f"{check['sample_rows']} rows under each rendering:",
        "",
        *rows,
        "",
        f"The fp32 baseline the artifacts were judged against: accuracy {task.get('baseline_exact_match', 0):.3f} on "
        f"all 108 rows (under edgepack's guess, the chat template around the bare input, the fp32 model reached "
        f"{check['declared']['accuracy']:.3f} on the sample). Last rung of the GGUF ladder: {artifact['artifact']}, "
        f"accuracy {task.get('exact_match', 0):.3f}, validity {task.get('validity', 0):.3f}, "
        f"{'pass' if artifact['passed'] else 'FAIL: ' + '; '.join(artifact['failures'])}.",
        END_MARKER,
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgepack-contract-detection"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    load = f"load average {Path('/proc/loadavg').read_text().split()[0]} at the start"
    training = train(args.work, args.epochs)
    document, seconds = build(args.work)
    [artifact] = [a for a in document["artifacts"] if a["target"] == "raspberry-pi"]
    result = {"date": time.strftime("%Y-%m-%d"), "load": load, "training": training,
              "exit_code": document["exit_code"], "seconds": round(seconds, 1),
              "contract_check": document["contract_check"], "artifact": artifact}
    publish(result, "contract-detection.json", args.docs, markdown(result), (START_MARKER, END_MARKER),
            "Contract detection on a real LoRA fine-tune")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
