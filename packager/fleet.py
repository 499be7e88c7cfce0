"""A fleet: several LoRA specialists of one base model, built together.

A product often runs a few narrow fine-tunes of the same small base (a router, an extractor, ...).
Shipped merged, each costs a whole model on the device, and at 4 bits the merge rounds a small
fine-tune's deltas away. A target whose runtime applies adapters (a `build_fleet` method) ships the base once and one
adapter per specialist; every other target ships a whole model per specialist (merged, or with its
adapter apart inside its own program, as Android's adapter rung does), in a folder of its own,
and says why the base is not shared (its class attribute `merged_specialists_reason`).

Each specialist has its own eval set and contract, so each has its own BuildContext (its merged
checkpoint, its fp32 reference and baseline, its task gate); they share the base's BuildContext,
whose GGUFs every specialist's adapter is verified on.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from packager.beside import beside
from packager.errors import BadInputError, InternalError
from packager.fingerprint import files_digest
from packager.gguf_ladder import Rung, rung_of
from packager.runtime_adapter import RuntimeAdapter
from packager.stages import BuildContext
from packager.target import Target, TargetResult
from packager.verify.gates import TaskGate
from packager.verify.result import VerificationResult

T = TypeVar("T")


@dataclass(frozen=True)
class SpecialistSpec:
    """One specialist as asked for: its name, LoRA adapter folder and task (eval set, contract)."""

    name: str
    adapter: Path
    eval_path: Path | None = None
    task: dict[str, Any] = field(default_factory=dict)
    task_source: str = "command-line flags"
    # None: the build's own task gate.
    task_gate: TaskGate | None = None


@dataclass
class Specialist:
    """A specialist being built: what was asked and the stages of its merged model."""

    spec: SpecialistSpec
    ctx: BuildContext

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class Fleet:
    """The base's stages and every specialist's."""

    base: BuildContext
    specialists: list[Specialist]
    # Every specialist of the fleet by name and adapter hash (fleet_members), also those a --specialist build
    # leaves to other builds: the manifest's `fleet`, which `edgepack release` merges builds by.
    members: list[dict[str, str]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specialists]


def adapter_sha256(spec: SpecialistSpec) -> str:
    """The hash of a specialist's adapter folder (its files' names and content): what identifies it in a release."""
    if not spec.adapter.is_dir():
        raise BadInputError(f"{spec.adapter}: the adapter folder of specialist {spec.name!r} ({spec.task_source}) "
                            "does not exist. Fix its path, or remove the specialist.")
    return files_digest([p for p in sorted(spec.adapter.iterdir()) if p.is_file()])


def fleet_members(specs: tuple[SpecialistSpec, ...] | list[SpecialistSpec]) -> list[dict[str, str]]:
    """Every specialist of the fleet, built here or not, by name and adapter hash: the fleet a build belongs to,
    so that `edgepack release` merges builds of different specialists of one fleet and refuses other fleets."""
    return [{"name": spec.name, "adapter_sha256": adapter_sha256(spec)} for spec in specs]


def check_specialist_names(names: list[str], source: str) -> None:
    """Names become folder and file names and keys in the apps: one folder-name-safe word each, no repeats."""
    seen: set[str] = set()
    for name in names:
        if not name or not all(c.isalnum() or c in "-_" for c in name) or name[0] in "-_":
            raise BadInputError(f"{source}: specialist name {name!r} must be letters, digits, '-' and '_' "
                                "(starting with a letter or digit), e.g. router or field-extractor.")
        if name in seen:
            raise BadInputError(f"{source}: specialist {name!r} is named twice; give each one its own name.")
        seen.add(name)


@dataclass
class FleetGguf:
    """The base GGUF a fleet ships, each specialist's adapter on it with its verification, and the rungs tried."""

    quant: str
    file: Path
    adapters: dict[str, Path]
    verifications: dict[str, VerificationResult]
    tried: list[tuple[str, list[Rung]]] = field(default_factory=list)
    explicit: bool = False
    # Each specialist merged into the base at the same type instead, verified the same way: the alternative
    # the runtime adapters replace, so the choice is visible (not shipped).
    merged: dict[str, Rung] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"chosen": self.quant, "from": "--quant" if self.explicit else "ladder",
                "ladder": [{"quant": quant, "specialists": {name: r.as_dict() for name, r in zip(
                    self.verifications, rungs, strict=True)}} for quant, rungs in self.tried],
                "merged_alternative": {name: r.as_dict() for name, r in self.merged.items()}}

    def notes(self) -> list[str]:
        """One line per rejected rung, naming the specialists it failed, for the report."""
        lines = []
        for quant, rungs in self.tried:
            failed = [f"{name}: {'; '.join(r.failures)}" for name, r in zip(self.verifications, rungs, strict=True)
                      if r.failures]
            if quant != self.quant and failed:
                lines.append(f"GGUF ladder: base {quant} rejected ({' | '.join(failed)}), tried before {self.quant}")
        for name, merged in self.merged.items():
            shipped = rung_of(self.quant, self.verifications[name])
            lines.append(f"{name}: base {self.quant} + its adapter {_numbers(shipped)}; merged into the base at "
                         f"{self.quant} instead: {_numbers(merged)}")
        return lines


def _numbers(rung: Rung) -> str:
    task = f", task accuracy {rung.task_accuracy:.3f}" if rung.task_accuracy is not None else ""
    top1 = f"top-1 {rung.top1:.3f}" if rung.top1 is not None else "top-1 n/a"
    return f"{top1}{task} ({'pass' if not rung.failures else 'fails: ' + '; '.join(rung.failures)})"


def choose_fleet_gguf(fleet: Fleet, target: Target) -> FleetGguf:
    """The smallest rung of the base's GGUF on which every specialist, its adapter applied, passes its gates
    (else the last rung, failing); --quant and --no-gate as for one model (packager.gguf_ladder). Each
    specialist merged at the chosen type is verified too, for the report."""
    adapters = {s.name: _runtime_adapter(s) for s in fleet.specialists}
    rungs = fleet.base.gguf_rungs(target)
    tried: list[tuple[str, list[Rung]]] = []
    for quant in rungs:
        pairs = {name: adapter.verified(quant) for name, adapter in adapters.items()}
        tried.append((quant, [rung_of(quant, result) for _, result in pairs.values()]))
        if all(result.passed for _, result in pairs.values()) or quant == rungs[-1]:
            merged = {s.name: rung_of(quant, s.ctx.verify_gguf(quant, f"model-{quant}.gguf"))
                      for s in fleet.specialists}
            return FleetGguf(quant, fleet.base.gguf(quant), {name: a.file[0] for name, a in adapters.items()},
                             {name: result for name, (_, result) in pairs.items()}, tried,
                             bool(fleet.base.options.quant), merged)
    raise ValueError("an empty GGUF ladder")


def _runtime_adapter(specialist: Specialist) -> RuntimeAdapter:
    adapter = specialist.ctx.runtime_adapter
    if adapter is None:
        raise InternalError(f"specialist {specialist.name!r} was opened without its runtime adapter")
    return adapter


def build_merged_per_specialist(target: Target, fleet: Fleet, out_dir: Path,
                                build: Callable[[BuildContext, Path], TargetResult],
                                reason: str | None = None) -> TargetResult:
    """A target without runtime adapters: each specialist's merged model in out_dir/<name>/, as one result;
    `reason`, why the base is not shared in this build (default: the target's `merged_specialists_reason`)."""
    results = [(s.name, build(s.ctx, out_dir / s.name)) for s in fleet.specialists]
    merged = TargetResult(target=target.name)
    for name, result in results:
        merged.files += [f"{name}/{f}" for f in result.files]
        for verification in result.verifications:
            merged.verifications.append(dataclasses.replace(
                verification, artifact=_in_folder(verification.artifact, target.name, name),
                ships=[_in_folder(p, target.name, name) for p in verification.ships] if verification.ships else
                verification.ships))
            merged.specialists[merged.verifications[-1].artifact] = name
        merged.scaffold_checks += [dataclasses.replace(c, file=f"{name}/{c.file}") for c in result.scaffold_checks]
        merged.notes += [f"{name}: {note}" for note in result.notes]
    reason = reason or getattr(target, "merged_specialists_reason",
                               "its runtime does not apply LoRA adapters in edgepack yet")
    merged.notes.append(f"{target.name} ships each specialist as a whole model, base included, one per "
                        f"specialist in its own folder ({', '.join(fleet.names)}): {reason}.")
    return merged


def _in_folder(artifact: str, target: str, folder: str) -> str:
    """'android/model.pte' -> 'android/router/model.pte'."""
    prefix = f"{target}/"
    return f"{prefix}{folder}/{artifact[len(prefix):]}" if artifact.startswith(prefix) else f"{folder}/{artifact}"


def each_specialist(fleet: Fleet, what: str, work_on: Callable[[Specialist], T]) -> list[T]:
    """`work_on` every specialist, in the fleet's order. One specialist's conversion or run does not depend on
    another's, so all but the first go beside it when the cores allow (packager.beside); measured on the support
    fleet's Android build, the two exports took 217 and 241 s one after the other on a 2-core host."""
    first, *rest = fleet.specialists
    with beside(fleet.base.scheduler.cancel) as work:
        pending = [work.start(f"{what}: {s.name}", functools.partial(work_on, s)) for s in rest]
        return [work_on(first), *(p.result() for p in pending)]


def tokenizers_differ(fleet: Fleet, files: tuple[str, ...]) -> str | None:
    """Why one bundle cannot drive every specialist through one tokenizer (its `files` differ between the
    specialists' folders; an adapter folder may bring its own), or None when they are the same files."""
    if len({files_digest([s.ctx.ckpt.folder / name for name in files]) for s in fleet.specialists}) > 1:
        return f"the specialists' {' / '.join(files)} differ, and one bundle drives every specialist through one"
    return None
