"""report.html: one self-contained page (plots embedded, no script) for people, next to report.md.

Plots: accuracy vs artifact size (is the smaller artifact still doing the task?) and the latency
distribution per artifact (the seeds' advice: distributions, not averages). The size plot is inline
SVG with its text drawn as paths, so its labels are boxes every browser draws alike (and a test can
measure); each artifact is at the size its shipped files take (packager.artifact_size).
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from packager.artifact_size import artifact_megabytes
from packager.plot_labels import Box, place_labels
from packager.report import SIMULATED_LATENCY, verification_rows
from packager.target import TargetResult

# Element ids in the size plot: the plotting area, and one point and one label per artifact.
PLOT_AREA_ID = "size-plot-area"
POINT_ID = "size-point:"
LABEL_ID = "size-label:"
MARKER_AREA = 40  # points^2, matplotlib's scatter `s`
LABEL_FONT = 8
LEADER = {"arrowstyle": "-", "color": "0.55", "linewidth": 0.6, "shrinkA": 1, "shrinkB": 4}


@dataclass(frozen=True)
class SizePoint:
    """One verified artifact in the size plot."""

    artifact: str
    megabytes: float
    score: float


def element_id(prefix: str, artifact: str) -> str:
    """Return the id of an artifact's element in the size plot (no whitespace, as HTML ids require)."""
    return prefix + quote(artifact, safe="/()")


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode()


def _svg(fig: Any) -> str:
    """Return the figure as an inline <svg> element, the same bytes for the same plot."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "edgepack", "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _figure(title: str, image: str, attributes: str = "") -> str:
    return f"<figure{attributes}>{image}<figcaption>{html.escape(title)}</figcaption></figure>"


def _size_points(rows: list[dict[str, Any]], root: Path, ships: dict[str, list[str]]) -> list[SizePoint]:
    points = []
    for r in rows:
        megabytes = artifact_megabytes(root, r["artifact"], ships.get(r["artifact"], ()))
        if megabytes is not None and (r["task"] or r["top1"] is not None):
            points.append(SizePoint(r["artifact"], megabytes, (r["task"] or {}).get("exact_match", r["top1"])))
    return points


def _label_points(ax: Any, points: list[SizePoint], legend: Any) -> None:
    """Annotate every point with its artifact, the labels placed clear of each other, the points and the legend."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    px_per_pt = fig.dpi / 72
    radius = (MARKER_AREA**0.5 / 2 + 1) * px_per_pt  # the marker and its edge
    anchors = [tuple(ax.transData.transform((p.megabytes, p.score))) for p in points]
    extents = []
    for p in points:
        measured = ax.text(0, 0, p.artifact, fontsize=LABEL_FONT)
        extent = measured.get_window_extent(renderer)
        extents.append((extent.width, extent.height))
        measured.remove()
    obstacles = [Box(x - radius, y - radius, x + radius, y + radius) for x, y in anchors]
    if legend is not None:
        extent = legend.get_window_extent(renderer)
        obstacles.append(Box(extent.x0, extent.y0, extent.x1, extent.y1))
    gap = 2 * px_per_pt
    boxes = place_labels(anchors, extents, obstacles, radius + 2 * gap, gap, ax.bbox.x1)
    for p, (x, y), box in zip(points, anchors, boxes, strict=True):
        moved = abs((box.bottom + box.top) / 2 - y) > 1  # off its point's height: a leader line shows whose it is
        offset = ((box.left - x) / px_per_pt, (box.bottom - y) / px_per_pt)
        ax.annotate(p.artifact, (p.megabytes, p.score), xytext=offset, textcoords="offset points", ha="left",
                    va="bottom", fontsize=LABEL_FONT, gid=element_id(LABEL_ID, p.artifact),
                    arrowprops={**LEADER, "relpos": (0 if box.left > x else 1, 0.5)} if moved else None)


def _size_plot(points: list[SizePoint], rows: list[dict[str, Any]], plt: Any) -> str:
    """Return the <figure> of accuracy (or top-1 agreement) against each artifact's shipped size."""
    with_task = any(r["task"] for r in rows)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for p in points:
        ax.scatter([p.megabytes], [p.score], s=MARKER_AREA, gid=element_id(POINT_ID, p.artifact))
    baselines = {r["task"]["baseline_exact_match"] for r in rows if r["task"]} - {None}
    for b in baselines:
        ax.axhline(b, linestyle="--", linewidth=1, color="grey", label="fp32 model")
    ax.patch.set_gid(PLOT_AREA_ID)
    ax.set_xlabel("artifact size on the device (MB: every file that ships)")
    ax.set_ylabel("exact-match accuracy" if with_task else "top-1 agreement with fp32")
    ax.set_ylim(0, 1.05)
    # From 0, so sizes compare by length; fixed before the labels are placed in display coordinates.
    x_range = (0.0, 1.1 * max(p.megabytes for p in points) or 1.0)
    ax.set_xlim(x_range)
    ax.grid(alpha=0.3)
    legend = ax.legend(loc="lower right", fontsize=8) if baselines else None
    _label_points(ax, points, legend)
    title = "Accuracy vs size" if with_task else "Fidelity vs size"
    image = _svg(fig).replace("<svg ", f'<svg role="img" aria-label="{html.escape(title)}" ', 1)
    plt.close(fig)
    return _figure(title, image, f' data-x-range-mb="{x_range[0]:g} {x_range[1]:g}"')


def figures(results: list[TargetResult], root: Path) -> list[str]:
    """Return the page's <figure> elements; empty when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = verification_rows(results)
    out: list[str] = []
    points = _size_points(rows, root, {v.artifact: v.ships for tr in results for v in tr.verifications})
    if points:
        out.append(_size_plot(points, rows, plt))
    latencies = [(r["artifact"].split("/")[-1] + f" ({r['target']}"
                  + (f", {SIMULATED_LATENCY})" if r["level"] == "simulated" else ")"), r["task"]["latencies_ms"])
                 for r in rows if r["task"] and r["task"].get("latencies_ms")]
    if latencies:
        fig, ax = plt.subplots(figsize=(6, 0.6 + 0.5 * len(latencies)))
        ax.boxplot([lat for _, lat in latencies], orientation="horizontal", whis=(1, 99), showfliers=True)
        ax.set_yticks(range(1, len(latencies) + 1), [name for name, _ in latencies], fontsize=8)
        ax.set_xlabel("latency per request on the build host (ms); whiskers p1-p99")
        ax.grid(alpha=0.3, axis="x")
        title = "Latency distribution"
        out.append(_figure(title, f'<img alt="{title}" src="data:image/png;base64,{_png(fig)}">'))
        plt.close(fig)
    return out


def _inline(text: str) -> str:
    """Escape, then turn `code` and **bold** spans of our own report into tags."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def markdown_to_html(markdown: str) -> str:
    """The subset report.md uses: headings, bullet lists, pipe tables, paragraphs."""
    blocks: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            blocks.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            head = rows[0]
            body = [r for r in rows[1:] if not all(set(c) <= {"-", ":"} for c in r)]
            head_html = "".join(f"<th>{_inline(c)}</th>" for c in head)
            body_html = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
            blocks.append(f"<table><thead><tr>{head_html}</tr></thead><tbody>{body_html}</tbody></table>")
            continue
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            blocks.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.strip():
            blocks.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(blocks)


def render_html(markdown_report: str, results: list[TargetResult], root: Path, title: str) -> str:
    """A standalone HTML page: the plots, then the report's tables and notes."""
    figures_html = "\n".join(figures(results, root))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; padding: 0 1rem; color: #222; }}
figure {{ display: inline-block; margin: 0 1.5rem 1.5rem 0; }} figcaption {{ font-size: .9rem; color: #555; }}
table {{ border-collapse: collapse; font-size: .8rem; margin: .5rem 0 1.5rem; }}
th, td {{ border: 1px solid #ddd; padding: .25rem .5rem; text-align: left; }} th {{ background: #f3f3f3; }}
code {{ background: #f3f3f3; padding: 0 .2rem; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<section id="plots">{figures_html or "<p>No verified artifacts to plot.</p>"}</section>
<section id="report">{markdown_to_html(markdown_report.split(chr(10), 1)[1])}</section>
</body></html>
"""
