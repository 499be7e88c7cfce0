"""Android fleets: one base weights file (.ptd) and a small program (.pte) per LoRA specialist.

Each specialist is exported with an adapter recipe (the base's linears quantized, the adapter's A and B in fp32
beside them; targets.android.export): A and B stay inside <name>-<recipe>.pte and every other tensor goes to
base-<recipe>.ptd. The adapter recipe's base needs no calibration, so that file is the same, byte for byte, for
every specialist of the base; this is checked, and it ships once. ExecuTorch loads a program with the data file
that holds the named tensors it references (`Runtime.load_program(pte, data_path=ptd)`, Android's
`LlmModule(pte, tokenizer, temperature, ptd)`), so each program is verified here with the file that ships.

With --android-runtime all, each specialist's merged model also ships as a LiteRT-LM bundle of its own (the
target's build_fleet): the exporter takes whole models.

When a shared base cannot be shipped (LiteRT-LM alone or another recipe asked for, specialists with different
tokenizers, base files that differ, a specialist failing its gate on the shared base), the caller ships each
specialist whole instead, with the reason this module gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from packager.fingerprint import file_sha256
from packager.fleet import Fleet, Specialist, each_specialist, tokenizers_differ
from packager.target import TargetOptionValues
from packager.verify.result import VerificationResult
from targets.android.export import ADAPTER_LADDER, Recipe, recipe_named
from targets.android.stages import FleetMember, PteArtifact, cached_pte, verified_pte


@dataclass
class SharedBase:
    """What a fleet's Android bundle ships: the base's weights once, a program per specialist, each verified."""

    recipe: Recipe
    base_ptd: Path
    tokenizer_json: Path
    programs: dict[str, PteArtifact]
    verifications: dict[str, VerificationResult]

    @property
    def base_file(self) -> str:
        return self.base_ptd.name

    @property
    def megabytes(self) -> float:
        """The fleet's size on the phone: the base once plus every program."""
        return (self.base_ptd.stat().st_size + sum(p.pte.stat().st_size for p in self.programs.values())) / 2**20

    @property
    def merged_megabytes(self) -> float:
        """What the same specialists cost as whole models (each program with its own copy of the base)."""
        return sum(p.megabytes for p in self.programs.values())

    def note(self, executorch_version: str) -> str:
        """The report's line: what ships once, what per specialist, what that saves, and what ran."""
        programs = ", ".join(f"{name}: {p.pte.name} ({p.pte.stat().st_size / 2**20:.1f} MB)"
                             for name, p in self.programs.items())
        return (f"Android fleet: {self.base_file} ({self.base_ptd.stat().st_size / 2**20:.1f} MB, the base at "
                f"{self.recipe.name}) ships once; it is byte for byte the weights file of every specialist's export. "
                f"Each specialist is a program holding its adapter ({programs}): {self.megabytes:.1f} MB on the "
                f"phone for {len(self.programs)} specialists, {self.merged_megabytes:.1f} MB as whole models. Each "
                f"program ran on this host with the shared file in ExecuTorch {executorch_version}'s TextLLMRunner "
                "and forward method, against its specialist's fp32 merged model; nothing ran on a phone. The app's "
                "EdgeFleet opens one specialist at a time (LlmModule over its .pte and the shared .ptd).")


def member(name: str, recipe: Recipe) -> FleetMember:
    """A specialist's file names in the bundle: <name>-<recipe>.pte over base-<recipe>.ptd."""
    return FleetMember(stem=f"{name}-{recipe.name}", base_data=f"base-{recipe.name}")


def shared_recipe(options: TargetOptionValues) -> Recipe | str:
    """The adapter recipe a fleet's programs share the base under, or why the options rule a shared base out."""
    if options.get("runtime") == "litert-lm":
        return ("--android-runtime litert-lm: LiteRT-LM bundles take no LoRA adapters in edgepack yet "
                "(--android-runtime executorch or all ships one base .ptd and a .pte per specialist)")
    if options.get("delegates"):
        return "--delegate: accelerator programs are exported whole, one per specialist"
    requested = str(options.get("recipe"))
    recipe = recipe_named(ADAPTER_LADDER[0] if requested == "auto" else requested)
    if not recipe.adapter:
        return f"--recipe {recipe.name} merges each adapter into its base (an adapter recipe keeps the base apart)"
    return recipe


def shared_base(fleet: Fleet, recipe: Recipe, target_name: str, no_gate: bool) -> SharedBase | str:
    """Export and verify every specialist's program over one base file; the reason instead when that fails."""
    tokenizers = {s.name: s.ctx.ckpt.folder / "tokenizer.json" for s in fleet.specialists}
    missing = [name for name, path in tokenizers.items() if not path.is_file()]
    if missing:
        return f"no tokenizer.json for {', '.join(missing)} (ExecuTorch's runner loads only that format)"
    differ = tokenizers_differ(fleet, ("tokenizer.json",))
    if differ:
        return differ
    first = fleet.specialists[0]
    tokenizer = tokenizers[first.name]

    def built(specialist: Specialist) -> tuple[PteArtifact, VerificationResult]:
        program = cached_pte(specialist.ctx, recipe, "xnnpack", specialist.ctx.context_length,
                             member(specialist.name, recipe))
        return program, verified_pte(specialist.ctx, program, tokenizer, f"{target_name}/{program.pte.name}")

    done = dict(zip(fleet.names, each_specialist(fleet, "android fleet", built), strict=True))
    programs = {name: program for name, (program, _) in done.items()}
    bases = {name: file_sha256(p.ptd) for name, p in programs.items()}
    if len(set(bases.values())) > 1:
        described = ", ".join(f"{name} {digest[:12]}" for name, digest in bases.items())
        return (f"the base's weights differ between the specialists' exports ({described}): an adapter may "
                "replace a base tensor (modules_to_save)")
    # Each program ran over its own export's base file, byte for byte the one shipped (checked above).
    shared = programs[first.name].ptd
    verifications = {name: verification for name, (_, verification) in done.items()}
    failed = {name: v for name, v in verifications.items() if not v.passed}
    if failed and not no_gate:
        return "; ".join(f"{name} fails its gate on the shared {recipe.name} base ({'; '.join(v.failures)})"
                         for name, v in failed.items())
    return SharedBase(recipe, shared, tokenizer, programs, verifications)
