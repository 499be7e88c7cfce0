"""report.html: one self-contained page (plots embedded as PNG data) for people, next to report.md.

Plots: accuracy vs artifact size (is the smaller artifact still doing the task?) and the latency
distribution per artifact (the seeds' advice: distributions, not averages).
"""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path
from typing import Any

from packager.report import verification_rows
from packager.target import TargetResult


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode()


def _sizes(results: list[TargetResult], root: Path) -> dict[str, float]:
    sizes = {}
    for tr in results:
        for v in tr.verifications:
            path = root / v.artifact
            if path.is_file():
                sizes[v.artifact] = path.stat().st_size / 2**20
    return sizes


def plots(results: list[TargetResult], root: Path) -> dict[str, str]:
    """Return {title: base64 PNG}; empty when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = verification_rows(results)
    sizes = _sizes(results, root)
    out: dict[str, str] = {}
    points = [(sizes[r["artifact"]], (r["task"] or {}).get("exact_match", r["top1"]), r["artifact"])
              for r in rows if r["artifact"] in sizes and (r["task"] or r["top1"] is not None)]
    if points:
        with_task = any(r["task"] for r in rows)
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for size, score, name in points:
            ax.scatter([size], [score], s=40)
            ax.annotate(name.split("/")[-1], (size, score), textcoords="offset points", xytext=(5, 4), fontsize=8)
        baselines = {r["task"]["baseline_exact_match"] for r in rows if r["task"]}
        for b in baselines:
            if b is not None:
                ax.axhline(b, linestyle="--", linewidth=1, color="grey", label="fp32 model")
        ax.set_xlabel("artifact size (MB)")
        ax.set_ylabel("exact-match accuracy" if with_task else "top-1 agreement with fp32")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        if baselines:
            ax.legend(loc="lower right", fontsize=8)
        out["Accuracy vs size" if with_task else "Fidelity vs size"] = _png(fig)
        plt.close(fig)
    latencies = [(r["artifact"].split("/")[-1] + f" ({r['target']})", r["task"]["latencies_ms"])
                 for r in rows if r["task"] and r["task"].get("latencies_ms")]
    if latencies:
        fig, ax = plt.subplots(figsize=(6, 0.6 + 0.5 * len(latencies)))
        ax.boxplot([lat for _, lat in latencies], orientation="horizontal", whis=(1, 99), showfliers=True)
        ax.set_yticks(range(1, len(latencies) + 1), [name for name, _ in latencies], fontsize=8)
        ax.set_xlabel("latency per request on the build host (ms); whiskers p1-p99")
        ax.grid(alpha=0.3, axis="x")
        out["Latency distribution"] = _png(fig)
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
    images = plots(results, root)
    figures = "\n".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(name)}</figcaption></figure>"
        for name, data in images.items()
    )
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
<section id="plots">{figures or "<p>No verified artifacts to plot.</p>"}</section>
<section id="report">{markdown_to_html(markdown_report.split(chr(10), 1)[1])}</section>
</body></html>
"""
