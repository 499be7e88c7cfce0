"""An iOS fleet: one multifunction Core ML package, a function per LoRA specialist, the base's weights stored once.

Each specialist is converted as a single LoRA input is (targets.ios.convert, rung int4-adapter: the base's
linears at 4 bits, the adapter apart in fp16), with the two inputs of that conversion that would otherwise
differ per specialist shared by the fleet, so that every specialist stores its base in the same bytes:

- the fp16 rewrites: sized on every specialist (each one's plan, as a single build sizes it; then the widest
  scale any of them needs, site by site: a larger power-of-2 scale only shrinks what it scales), in a child
  process (`python -m targets.ios.fleet REQUEST RESULT`) that loads one specialist at a time;
- the quantizer's column weights: averaged over every specialist's activations (what the shared base sees), not
  measured on each merged specialist alone (nor on the bare base, which no function runs: on the bundled fleet
  that left the router's function one eval row under its gate).

The packages are then the functions of one package (targets.ios.multifunction), where coremltools keeps a const
whose value several functions share once, and each function is simulated against its own specialist's fp32
merged model under that specialist's gates (targets.ios.stages.verified_package with its function).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packager.child_stage import run_child, serve_request
from packager.fingerprint import options_digest
from packager.fleet import each_specialist
from packager.peak_memory import release_free_memory
from targets.ios.convert import COREMLTOOLS_VERSION, EXPORT_SCHEMA, ExportRequest, compression_named, package_name
from targets.ios.stages import CONVERSION, CoreMLExport, cached_export, export_request, verified_package

if TYPE_CHECKING:
    from packager.fleet import Fleet, Specialist
    from packager.verify.result import VerificationResult

# The rung whose packages share their base: the base at 4 bits, each adapter apart in fp16.
SHARED_COMPRESSION = "int4-adapter"
# Bump when the assembled package changes for the same function packages (keys the stage cache).
MULTIFUNCTION_SCHEMA = 1


@dataclass(frozen=True)
class FleetFunction:
    """One specialist's function: its conversion, seen as its function of the fleet's package, and its verdict."""

    name: str
    export: CoreMLExport
    verification: VerificationResult
    # On macOS, the same function run in Core ML itself (level `executed`); None elsewhere.
    executed: VerificationResult | None = None

    @property
    def verifications(self) -> list[VerificationResult]:
        return [self.verification, *([self.executed] if self.executed else [])]


@dataclass
class FleetPackage:
    """The fleet's multifunction package: where it lies, what assembling it measured, its shared fp16 rewrites
    and its functions."""

    package: Path
    assembly: dict[str, Any]
    fp16_plan: dict[str, Any]
    functions: list[FleetFunction]

    @property
    def failed(self) -> list[FleetFunction]:
        return [f for f in self.functions if not all(v.passed for v in f.verifications)]

    def size_note(self) -> str:
        """The package's bytes next to its single-function sources': what sharing the base saved."""
        sources = self.assembly["sources"]
        whole = sum(source["bytes"] for source in sources.values())
        each = ", ".join(f"{name} {_mb(source['bytes'])}" for name, source in sources.items())
        functions = "1 function" if len(sources) == 1 else f"{len(sources)} functions sharing one base"
        return (f"{self.package.name}: {functions}, {_mb(self.assembly['bytes'])} "
                f"(weight.bin {_mb(self.assembly['weight_bytes'])}); the same specialists as separate packages: "
                f"{_mb(whole)} ({each})")


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB" if size >= 2**20 else f"{size / 2**10:.0f} KB"


def fleet_package(fleet: Fleet, max_context: int, fp16_rewrites: bool, gate_of: Callable[[Specialist], Any],
                  artifact_of: Callable[[str, str], str], executed: bool = False) -> FleetPackage:
    """Convert every specialist with the fleet's shared fp16 rewrites and base calibration, assemble their
    packages as the functions of one, and simulate each function (with `executed`, on macOS, also run it in Core
    ML); `gate_of(specialist)` is its gate, `artifact_of(package, how)` the artifact name of a function checked
    `how` (its name, or its name and the runtime)."""
    plan = shared_fp16_plan(fleet, max_context, fp16_rewrites)

    def converted(specialist: Specialist) -> CoreMLExport:
        return cached_export(specialist.ctx, export_request(specialist.ctx, [SHARED_COMPRESSION], max_context,
                                                            fp16_rewrites, fp16_plan=plan,
                                                            importance_of=[s.ctx for s in fleet.specialists]))

    exports = dict(zip(fleet.names, each_specialist(fleet, "ios fleet: convert", converted), strict=True))
    views, package, assembly = assembled(fleet, exports)

    def verified(specialist: Specialist, in_core_ml: bool) -> VerificationResult:
        how = f"{specialist.name}, Core ML" if in_core_ml else specialist.name
        return verified_package(specialist.ctx, views[specialist.name], SHARED_COMPRESSION,
                                artifact_of(package.name, how), gate_of(specialist), executed=in_core_ml,
                                function=specialist.name)

    def function(specialist: Specialist) -> FleetFunction:
        return FleetFunction(specialist.name, views[specialist.name], verified(specialist, False),
                             verified(specialist, True) if executed else None)

    return FleetPackage(package, assembly, plan, each_specialist(fleet, "ios fleet: simulate", function))



def shared_fp16_plan(fleet: Fleet, max_context: int, fp16_rewrites: bool) -> dict[str, Any]:
    """The fp16 rewrites every specialist's conversion applies (Fp16Plan.as_dict), sized in a child process and
    cached per specialist checkpoint, adapter and golden text."""
    requests = [export_request(s.ctx, [SHARED_COMPRESSION], max_context, fp16_rewrites) for s in fleet.specialists]
    base = fleet.base
    # Each request by its checkpoint's and adapter's content, not their places.
    placeless = [dataclasses.asdict(dataclasses.replace(r, checkpoint="", adapter=None)) for r in requests]
    key = options_digest("coreml-fleet-plan", EXPORT_SCHEMA, COREMLTOOLS_VERSION,
                         [s.ctx.ckpt_digest for s in fleet.specialists],
                         [r.adapter and r.adapter["files_sha256"] for r in requests], placeless)[:24]

    def sized(tmp: Path) -> dict[str, Any]:
        base.reporter.say(f"sizing the fp16 rewrites of {len(requests)} specialists together in a child process")
        what = f"fp16 rewrites of the fleet of {base.ckpt.folder}"
        with base.scheduler.step(CONVERSION, what) as claim:
            result = run_child("targets.ios.fleet", tmp, {"requests": [dataclasses.asdict(r) for r in requests]},
                               what, claim)
        return result["fp16_plan"]

    def describe(plan: dict[str, Any]) -> str:
        return f"residual / {plan['residual_scale']:g}, MLP scales up to {max(plan['mlp_scales'] or [1]):g}"

    entry = base.stage_cache.entry("coreml-fleet-plan", key, f"size the fp16 rewrites of {len(requests)} "
                                   "specialists", sized, describe=describe)
    return entry.value


def assembled(fleet: Fleet, exports: dict[str, CoreMLExport]) -> tuple[dict[str, CoreMLExport], Path, dict[str, Any]]:
    """The specialists' packages as the functions of one package (a stage-cache entry, assembled in a child);
    return each specialist's conversion seen as its function of it, the package, and what assembling measured."""
    base = fleet.base
    name = base.model_name
    first = next(iter(exports.values()))
    package = package_name(compression_named(SHARED_COMPRESSION), first.conversion.lm_head_chunk)
    sources = {n: export.package_digests[SHARED_COMPRESSION] for n, export in exports.items()}
    key = options_digest("coreml-fleet", MULTIFUNCTION_SCHEMA, COREMLTOOLS_VERSION, sources, name)[:24]

    def assemble(tmp: Path) -> dict[str, Any]:
        base.reporter.say(f"assembling {len(exports)} Core ML packages as the functions of one in a child process")
        request = {"functions": {n: str(e.package(SHARED_COMPRESSION)) for n, e in exports.items()},
                   "out": str(tmp / package), "name": name,
                   "description": f"{name}: a fleet of {len(exports)} LoRA specialists sharing one base "
                                  f"({', '.join(exports)}), a function each (edgepack)"}
        with base.scheduler.step(CONVERSION, f"multifunction package of {name}") as claim:
            return run_child("targets.ios.multifunction", tmp, request, f"multifunction package of {name}", claim)

    entry = base.stage_cache.entry("coreml-fleet", key, f"assemble {package} ({len(exports)} functions)", assemble,
                                   describe=lambda r: f"{r['bytes'] / 2**20:.1f} MB")
    digest = entry.digest(package)
    views = {n: _as_function(export, entry.key, entry.folder, package, digest, entry.value["bytes"])
             for n, export in exports.items()}
    return views, entry.folder / package, entry.value


def _as_function(export: CoreMLExport, key: str, folder: Path, package: str, digest: str,
                 size: int) -> CoreMLExport:
    """A specialist's conversion with its package replaced by the fleet's package (simulated as its function)."""
    info = dataclasses.replace(export.conversion.packages[SHARED_COMPRESSION], package=package,
                               size_mb=round(size / 2**20, 1))
    conversion = dataclasses.replace(export.conversion, packages={SHARED_COMPRESSION: info})
    return dataclasses.replace(export, key=key, folder=folder, conversion=conversion,
                               package_digests={SHARED_COMPRESSION: digest})


def widest_plan(plans: list[Any]) -> Any:
    """The Fp16Plan whose every scale is the largest any of `plans` needs (scales are powers of 2, and a larger
    one only shrinks the values it scales): safe for each model a plan was sized on."""
    from targets.ios.model import Fp16Plan

    def widest(lists: list[list[float]]) -> list[float]:
        longest = max((len(values) for values in lists), default=0)
        return [max(values[i] if values else 1.0 for values in lists) for i in range(longest)]

    return Fp16Plan(any(p.enabled for p in plans), max(p.residual_scale for p in plans),
                    widest([p.mlp_scales for p in plans]), widest([p.attn_scales for p in plans]))


def size_plans(requests: list[ExportRequest]) -> dict[str, Any]:
    """Each specialist's fp16 rewrites sized as its own conversion would size them (one model loaded at a time),
    and the widest of them: what every specialist's conversion then applies."""
    from packager.adapter import AdapterSource, adapted_base_weights
    from targets.ios.convert import load_source, plan_fp16

    plans = []
    for request in requests:
        model, spec, config = load_source(Path(request.checkpoint))
        lora = adapted_base_weights(AdapterSource(**request.adapter)) if request.adapter else None
        plans.append(plan_fp16(model, spec, config, request, lora)[0])
        del model, lora
        release_free_memory()
    return {"fp16_plan": widest_plan(plans).as_dict(), "plans": [p.as_dict() for p in plans]}


def main(argv: list[str] | None = None) -> int:
    """Child-process entry (packager.child_stage): the fleet's export requests in, the shared fp16 rewrites out."""
    return serve_request(__doc__.splitlines()[0],
                         lambda request: size_plans([ExportRequest(**r) for r in request["requests"]]), argv)


if __name__ == "__main__":
    sys.exit(main())
