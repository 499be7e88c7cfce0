"""report.md: the human-readable account of a build, and the gate table printed on failure."""

from __future__ import annotations

import dataclasses
from typing import Any

from packager.strict_json import finite_numbers
from packager.target import TargetResult


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def verification_rows(results: list[TargetResult]) -> list[dict[str, Any]]:
    """One row per verified artifact (manifest.json, --json, the tables); a NaN measurement is None."""
    rows = []
    for tr in results:
        for v in tr.verifications:
            m = v.metrics
            rows.append(finite_numbers({
                "target": tr.target,
                "artifact": v.artifact,
                "quant": v.quant,
                "level": v.level,
                "top1": m.top1 if m else None,
                "top1_decisive": m.top1_decisive if m else None,
                "kl": m.kl if m else None,
                "ppl": m.ppl if m else None,
                "ppl_ref": m.ppl_ref if m else None,
                "tokenizer": v.tokenizer_parity,
                "greedy_match": v.greedy_match,
                "tokens_per_s": v.tokens_per_s,
                "task": v.task.as_dict() if v.task else None,
                "passed": v.passed,
                "failures": v.failures,
                "warnings": v.warnings,
            }))
    return rows


# Where a `simulated` artifact's latency was measured: in its simulator on the build host, not in a runtime.
SIMULATED_LATENCY = "simulator on the build host"


def _task_cells(task: dict[str, Any] | None, level: str) -> str:
    if not task:
        return "| n/a | n/a | n/a | n/a "
    base = _fmt(task["baseline_exact_match"])
    where = f" ({SIMULATED_LATENCY})" if level == "simulated" else ""
    part = f", {task['rows']} of {task['of_rows']} rows" if task.get("of_rows") else ""
    return (
        f"| {_fmt(task['exact_match'])} ({base}{part}) | {_fmt(task['validity'])} | {_fmt(task['agreement'])} "
        f"| {task['latency_ms_p50']:.0f} / {task['latency_ms_p95']:.0f} / {task['latency_ms_p99']:.0f}{where} "
    )


def verification_table(results: list[TargetResult]) -> str:
    """A markdown table of every verified artifact (the same table the CLI prints)."""
    rows = verification_rows(results)
    with_task = any(r["task"] for r in rows)
    task_head = "| accuracy (fp32) | valid | = fp32 | latency ms p50/p95/p99 " if with_task else ""
    header = (
        "| target | artifact | level | top-1 | top-1 decisive | KL | PPL (ref) | tokenizer | greedy = ref "
        f"| host tok/s {task_head}| gate |\n|---|---|---|---|---|---|---|---|---|---|"
        + ("---|---|---|---|" if with_task else "") + "---|"
    )
    lines = [header]
    for r in rows:
        ppl = f"{_fmt(r['ppl'], 2)} ({_fmt(r['ppl_ref'], 2)})"
        tok = {True: "identical", False: "DIFFERS", None: "n/a"}[r["tokenizer"]]
        greedy = {True: "yes", False: "no", None: "n/a"}[r["greedy_match"]]
        gate = "pass" if r["passed"] else "FAIL: " + "; ".join(r["failures"])
        if r["warnings"]:
            gate += " (task gate decided; fidelity below its gate: " + "; ".join(r["warnings"]) + ")"
        lines.append(
            f"| {r['target']} | {r['artifact']} | {r['level']} | {_fmt(r['top1'])} | {_fmt(r['top1_decisive'])} "
            f"| {_fmt(r['kl'], 4)} | {ppl} | {tok} | {greedy} | {_fmt(r['tokens_per_s'], 1)} "
            f"{_task_cells(r['task'], r['level']) if with_task else ''}| {gate} |"
        )
    return "\n".join(lines)


def verification_tables(results: list[TargetResult]) -> str:
    """The terminal summary: verification_table, or for a fleet one such table per specialist under its name.

    Each specialist has its own eval set, baseline and gate, so its accuracy and latency read only against
    its own rows; an artifact no specialist claims (a third-party target's) gets a table of its own at the end.
    """
    if not any(r.specialists for r in results):
        return verification_table(results)
    names = list(dict.fromkeys(name for r in results for name in r.specialists.values()))
    parts = []
    for name in [*names, None]:
        own = [dataclasses.replace(r, verifications=[v for v in r.verifications
                                                     if r.specialists.get(v.artifact) == name])
               for r in results]
        if any(r.verifications for r in own):
            heading = f"specialist {name}" if name is not None else "other artifacts"
            parts.append(f"{heading}:\n{verification_table([r for r in own if r.verifications])}")
    return "\n\n".join(parts)


def scaffold_table(results: list[TargetResult]) -> str:
    lines = ["| target | file | tool | status | detail |", "|---|---|---|---|---|"]
    for tr in results:
        for c in tr.scaffold_checks:
            lines.append(f"| {tr.target} | {c.file} | {c.tool} | {c.status} | {c.detail.replace('|', '/')} |")
    return "\n".join(lines)


def _contract_lines(check: dict[str, Any] | None) -> list[str]:
    """The contract check's verdict: the fp32 model's scores under the prompt used, and any loud message."""
    if not check:
        return []
    used = check["used"]
    return [f"- contract: prompt {used['name']}; the fp32 model answers {check['sample_rows']} eval rows with "
            f"accuracy {used['accuracy']:.3f}, validity {used['validity']:.3f}",
            *(f"- **{message}**" for message in check["messages"])]


def render_report(manifest: dict[str, Any], results: list[TargetResult], gated: bool) -> str:
    """Return report.md for a build."""
    src = manifest["source"]
    parts = [
        f"# edgepack build: {manifest['name']}",
        "",
        f"- source: `{src['path']}` ({src['kind']}), architecture `{src['architecture']}`, "
        f"{src['parameters']:,} parameters",
        f"- edgepack {manifest['tools']['edgepack']}, built {manifest['built_at']}",
        f"- targets: {', '.join(manifest['targets'])}",
        f"- context: {manifest['options']['context_length']} tokens "
        f"({manifest['options'].get('context_length_from', 'as given')})",
        *_contract_lines(manifest.get("contract_check")),
        "",
        "## Verification",
        "",
        "Levels: `executed` = the artifact ran in its real runtime on the build host; `simulated` = its "
        "program was evaluated numerically off-device; `structural` = shapes, names, sizes and hashes "
        "only. Nothing here ran on a phone or a Raspberry Pi. Metrics compare each artifact with the "
        "fp32 transformers model on the same token ids; 'decisive' leaves out positions where the "
        "reference's top two logits are within 0.1 (near-ties).",
        "",
        verification_table(results),
        "",
    ]
    if not gated:
        parts += ["**Quality gates were switched off (--no-gate): failures above did not stop the build.**", ""]
    parts += ["## Generated code checks", "", scaffold_table(results), "", "## Stages", "",
              "| stage | seconds | cached | detail |", "|---|---|---|---|"]
    for s in manifest["stages"]:
        parts.append(f"| {s['name']} | {s['seconds']} | {'yes' if s['cached'] else 'no'} | {s['detail']} |")
    notes = [n for tr in results for n in tr.notes]
    if notes:
        parts += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(parts) + "\n"
