"""`edgepack doctor`: before building, what is supported, what fits which device, what to pick."""

from __future__ import annotations

from dataclasses import asdict, dataclass
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
from packager.memory_plan import TargetNeed, target_needs
from packager.progress import Reporter
from packager.scheduler import host_memory, scheduler_for
from packager.target import available_targets


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


def diagnose(ckpt: Checkpoint, contexts: tuple[int, ...] = (512, 2048, 4096), only: str | None = None) -> DoctorReport:
    """Support, fp16 risk, each target's notes, RAM per quant/context, and a pick per device."""
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
    build_ram = [{"target": n.target, "peak_gb": round(n.peak / 2**30, 2), "largest_step": n.largest.kind,
                  "measured": n.largest.measured, "fits": n.peak <= host_memory()}
                 for n in build_needs(ckpt, [name for name, ok in targets.items() if ok])]
    for pick in picks:
        pick["target_installed"] = pick["target"] in targets
    return DoctorReport(
        checkpoint=str(ckpt.folder), architecture=ckpt.spec.name, parameters=params, support=targets,
        fp16_risk=fp16_note(ckpt.spec), target_notes=target_notes(ckpt), contexts=list(contexts), ram=ram,
        devices=picks, build_ram=build_ram,
    )


def build_needs(ckpt: Checkpoint, names: list[str]) -> list[TargetNeed]:
    """What building each named target of this checkpoint would need on this machine (default options)."""
    from packager.stages import BuildContext, BuildOptions

    reporter = Reporter(quiet=True)
    ctx = BuildContext(ckpt, "", BuildOptions(), reporter, cache_root(), scheduler_for(ckpt, reporter, cache_root()))
    available = available_targets()
    return target_needs(ctx, [available[name]() for name in names])


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
    lines += ["", "per device (largest context above):"]
    for d in report.devices:
        pick = d["recommended_quant"] or "nothing fits"
        est = f"~{d['estimated_mb']:.0f} MB" if d["estimated_mb"] else ""
        missing = "" if d["target_installed"] else "  (target not installed in this edgepack)"
        lines.append(f"  {d['device']:<20} budget {d['budget_mb']:>5} MB  {d['target']:<13} -> {pick} {est}{missing}")
    return "\n".join(lines)
