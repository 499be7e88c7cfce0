"""Plot what benchmarks/scale.py measured: per model, each target's first and latest build, against the bound.

    .venv/bin/python benchmarks/scale_plot.py            # writes docs/scale.svg

Reads the scale table of docs/benchmarks.md (rows in the order they were measured), and for each model and target
keeps the first measured build (exit 0, or 1: `--no-gate`'s "kept, but the gate failed") and the latest
one: the largest process's peak RSS and the wall time, beside the issue's bound of 1.5 x the checkpoint's bf16
size + 2 GB. Builds that stopped (exit 3) are not drawn.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.scale import END_MARKER, START_MARKER  # noqa: E402
from benchmarks.scale_models import CONFIGS  # noqa: E402

# bf16 checkpoint sizes in GB (benchmarks/scale_models.py writes them; the real 270M's is its safetensors size).
BF16_GB = {"gemma3-270m": 0.54, "gemma3-1b": 2.0, "gemma3-4b": 7.8}


@dataclass(frozen=True)
class Point:
    commit: str
    model: str
    target: str
    peak_gb: float
    wall_s: float


def bound_gb(model: str) -> float:
    """The issue's bound for one target's whole build: 1.5 x the bf16 checkpoint + 2 GB."""
    return 1.5 * BF16_GB[model] + 2


def measured_points(docs: Path) -> list[Point]:
    """Every completed build in the scale table of `docs` (benchmarks/scale.py keeps it, one row per commit, model
    and target, in the order they were measured; some early runs' JSON results were not kept, their rows were)."""
    text = docs.read_text(encoding="utf-8")
    table = text.split(START_MARKER, 1)[1].split(END_MARKER, 1)[0]
    points = []
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("| ") or cells[0] == "commit" or cells[1] not in BF16_GB or cells[3] not in ("0", "1"):
            continue
        points.append(Point(cells[0], cells[1], cells[2], float(cells[6]), float(cells[4])))
    return points


def first_and_latest(points: list[Point]) -> dict[tuple[str, str], tuple[Point, Point]]:
    """(model, target) -> (first, latest) build; the same point twice when there was one build."""
    pairs: dict[tuple[str, str], tuple[Point, Point]] = {}
    for point in points:
        key = (point.model, point.target)
        pairs[key] = (pairs[key][0] if key in pairs else point, point)
    return pairs


def plot(pairs: dict[tuple[str, str], tuple[Point, Point]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in BF16_GB if any(key[0] == m for key in pairs)]
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        targets = sorted(t for m, t in pairs if m == model)
        xs = range(len(targets))
        first = [pairs[(model, t)][0] for t in targets]
        latest = [pairs[(model, t)][1] for t in targets]
        ax.bar([x - 0.2 for x in xs], [p.peak_gb for p in first], 0.4, label="first build", color="#b8b8b8")
        ax.bar([x + 0.2 for x in xs], [p.peak_gb for p in latest], 0.4, label="latest build", color="#3a6ea5")
        for x, old, new in zip(xs, first, latest, strict=True):
            ax.annotate(f"{old.commit}", (x - 0.2, old.peak_gb), ha="center", va="bottom", fontsize=7)
            ax.annotate(f"{new.commit}\n{new.wall_s / 60:.0f} min", (x + 0.2, new.peak_gb), ha="center",
                        va="bottom", fontsize=7)
        ax.axhline(bound_gb(model), color="#c0392b", linestyle="--", linewidth=1,
                   label=f"bound {bound_gb(model):.1f} GB")
        ax.set_xticks(list(xs), targets, rotation=20)
        ax.set_ylabel("largest process, GB")
        ax.set_title(f"{model} ({CONFIGS[model]['num_hidden_layers']} layers)" if model in CONFIGS else model)
        ax.set_ylim(0, max([p.peak_gb for p in first + latest] + [bound_gb(model)]) * 1.25)
        ax.legend(fontsize=8, loc="upper right")
    fig.suptitle("One target's build (--no-gate, empty cache), benchmarks/scale.py")
    fig.tight_layout()
    with matplotlib.rc_context({"svg.hashsalt": "edgepack", "svg.fonttype": "path"}):
        fig.savefig(out, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "scale.svg")
    args = parser.parse_args()
    pairs = first_and_latest(measured_points(args.docs))
    if not pairs:
        print(f"no completed scale builds in {args.docs}", file=sys.stderr)
        return 1
    plot(pairs, args.out)
    for (model, target), (first, latest) in sorted(pairs.items()):
        print(f"{model} {target}: {first.peak_gb:.1f} GB ({first.commit}) -> {latest.peak_gb:.1f} GB ({latest.commit})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
