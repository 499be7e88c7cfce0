"""`edgepack doctor`: before building, what is supported, what fits which device, what to pick."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from packager.architectures import ARCHITECTURES
from packager.checkpoint import Checkpoint
from packager.devices import (
    QUANT_PREFERENCE,
    best_quant_for,
    device,
    estimate,
    fp16_note,
    installed_devices,
)
from packager.fingerprint import cache_root
from packager.memory_plan import screens_to_skip, target_needs
from packager.progress import Reporter
from packager.scheduler import host_memory, scheduler_for
from packager.stages import BuildContext, BuildOptions
from packager.target import available_targets, default_ladder


@dataclass
class DoctorReport:
    checkpoint: str
    architecture: str
    parameters: int
    support: dict[str, bool]
    fp16_risk: str
    # What a target has to say about this checkpoint before a build (e.g. a runtime's size limits).
    target_notes: dict[str, list[str]]
    contexts: list[int]
    ram: list[dict[str, Any]]
    devices: list[dict[str, Any]]
    # This machine's memory need per target when building this checkpoint (packager.memory_plan).
    build_ram: list[dict[str, Any]]
    # The rungs each target walks without a quantization option, smallest first.
    ladders: dict[str, list[str]]
    # With --eval: the contract checked on the fp32 model (packager.contract_check), else None.
    contract_check: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def target_notes(ckpt: Checkpoint) -> dict[str, list[str]]:
    """Return each installed target's own notes on this checkpoint (targets without doctor_notes say nothing)."""
    notes: dict[str, list[str]] = {}
    for name, cls in available_targets().items():
        doctor_notes = getattr(cls(), "doctor_notes", None)
        if doctor_notes is not None and (said := doctor_notes(ckpt.config)):
            notes[name] = list(said)
    return notes


def support_matrix() -> dict[str, dict[str, bool]]:
    """(architecture, target) -> declared support, for every installed target."""
    targets = {name: cls() for name, cls in available_targets().items()}
    return {spec.name: {name: target.supports(spec) for name, target in targets.items()} for spec in ARCHITECTURES}


def diagnose(ckpt: Checkpoint, contexts: tuple[int, ...] = (512, 2048, 4096), only: str | None = None,
             eval_path: Path | None = None, task: str = "labels", digest: str = "",
             no_gate: bool = False) -> DoctorReport:
    """Support, fp16 risk, each target's notes, RAM per quant/context, a pick per device, the build's memory
    need and ladders here, and with an eval set the contract checked on the fp32 model."""
    profiles = [device(only)] if only else installed_devices()
    params, config = ckpt.parameter_count, ckpt.config
    ram = [
        {"quant": q, "context": c, "total_mb": round(e.total_mb, 1), "weights_mb": round(e.weights_mb, 1),
         "kv_mb": round(e.kv_mb, 1)}
        for q in QUANT_PREFERENCE for c in contexts for e in [estimate(params, config, q, c)]
    ]
    picks = []
    for profile in profiles:
        context = max(contexts)
        quant = best_quant_for(profile, params, config, context)
        picks.append({
            "device": profile.name, "title": profile.title, "target": profile.target, "runtime": profile.runtime,
            "budget_mb": round(profile.budget_mb), "context": context, "recommended_quant": quant,
            "estimated_mb": round(estimate(params, config, quant, context).total_mb, 1) if quant else None,
            "notes": profile.notes,
        })
    targets = support_matrix()[ckpt.spec.name]
    supported = [name for name, ok in targets.items() if ok]
    ctx = _context(ckpt, digest, BuildOptions(eval_path=eval_path, task={"task": task} if eval_path else {},
                                              no_gate=no_gate))
    installed = [available_targets()[name]() for name in supported]
    ctx.scheduler.unscreened = screens_to_skip(ctx, installed)
    build_ram = [{"target": n.target, "peak_gb": round(n.peak / 2**30, 2), "largest_step": n.largest.kind,
                  "measured": n.largest.measured, "fits": n.peak <= host_memory(),
                  "unscreened": ctx.scheduler.unscreened.get(n.target)}
                 for n in target_needs(ctx, installed)]
    ladders = {name: list(default_ladder(available_targets()[name])) for name in supported}
    check = None
    if eval_path is not None:
        ctx.contract  # noqa: B018  (runs the check, or reads it from the stage cache)
        found = ctx.contract_check
        check = {**found.as_dict(), "messages": found.messages(ctx.eval_rows[0])} if found else None
    for pick in picks:
        pick["target_installed"] = pick["target"] in targets
    return DoctorReport(
        checkpoint=str(ckpt.folder), architecture=ckpt.spec.name, parameters=params, support=targets,
        fp16_risk=fp16_note(ckpt.spec), target_notes=target_notes(ckpt), contexts=list(contexts), ram=ram,
        devices=picks, build_ram=build_ram, ladders=ladders, contract_check=check,
    )


def _context(ckpt: Checkpoint, digest: str, options: BuildOptions) -> BuildContext:
    """A build's shared stages for this checkpoint, to ask what a build would need and check (nothing is built)."""
    reporter = Reporter(quiet=True)
    return BuildContext(ckpt, digest, options, reporter, cache_root(), scheduler_for(ckpt, reporter, cache_root()))


def render(report: DoctorReport) -> str:
    lines = [
        f"checkpoint   {report.checkpoint}",
        f"architecture {report.architecture}, {report.parameters / 1e6:.1f}M parameters",
        f"fp16 risk    {report.fp16_risk}",
        *(f"{name + ':':<12} {note}" for name, notes in report.target_notes.items() for note in notes),
        "",
        "support matrix (architecture x installed target):",
        "  " + "  ".join(f"{t}={'yes' if ok else 'no'}" for t, ok in report.support.items()),
        "",
        "estimated peak RAM (MB: weights + KV cache + runtime; estimates, not measurements):",
        "  quant   " + "".join(f"ctx {c:<8}" for c in report.contexts),
    ]
    for q in QUANT_PREFERENCE:
        cells = [r for r in report.ram if r["quant"] == q]
        lines.append(f"  {q:<7} " + "".join(f"{r['total_mb']:<12.0f}" for r in cells))
    lines += ["", f"building here (this machine has {host_memory() / 2**30:.1f} GB; the largest step of each target):"]
    for b in report.build_ram:
        source = "measured" if b["measured"] else "estimated"
        verdict = "" if b["fits"] else "  does NOT fit this machine"
        lines.append(f"  {b['target']:<13} ~{b['peak_gb']:.1f} GB  ({b['largest_step']}, {source}){verdict}")
        if b["unscreened"]:
            lines.append(f"  {'':<13} (rungs not screened: {b['unscreened']})")
    lines += ["", "ladders (rungs walked without a quantization option, smallest first):"]
    lines += [f"  {name:<13} {' -> '.join(rungs) or '-'}" for name, rungs in report.ladders.items()]
    if report.contract_check:
        check = report.contract_check
        lines += ["", f"contract (fp32 model on {check['sample_rows']} eval rows):"]
        lines += [f"  {c['name']:<46} accuracy {c['accuracy']:.3f}  validity {c['validity']:.3f}"
                  for c in check["candidates"] or [check["declared"]]]
        lines += [f"  used: {check['used']['name']}", *(f"  {m}" for m in check["messages"])]
    lines += ["", "per device (largest context above):"]
    for d in report.devices:
        pick = d["recommended_quant"] or "nothing fits"
        est = f"~{d['estimated_mb']:.0f} MB" if d["estimated_mb"] else ""
        missing = "" if d["target_installed"] else "  (target not installed in this edgepack)"
        lines.append(f"  {d['device']:<20} budget {d['budget_mb']:>5} MB  {d['target']:<13} -> {pick} {est}{missing}")
    return "\n".join(lines)
