"""The target plugin protocol and its registry (entry-point group `edgepack.targets`).

A target turns the shared stages of a build (checkpoint, contract, GGUF, reference logits) into
one ready-to-drop folder. Targets never import each other; whatever two targets share is a stage
on BuildContext, computed once and cached.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from packager.errors import BadInputError, InternalError
from packager.gguf_ladder import ladder_from
from packager.verify.result import VerificationResult

if TYPE_CHECKING:
    from packager.architectures import ArchitectureSpec
    from packager.scheduler import HeavyStep
    from packager.stages import BuildContext

ENTRY_POINT_GROUP = "edgepack.targets"


@dataclass
class ScaffoldCheck:
    """One check of generated code with a real tool; `status` is passed / failed / skipped."""

    file: str
    tool: str
    status: str
    detail: str = ""


@dataclass
class TargetResult:
    """What a target produced: files (relative to its folder), verifications and code checks."""

    target: str
    files: list[str] = field(default_factory=list)
    verifications: list[VerificationResult] = field(default_factory=list)
    scaffold_checks: list[ScaffoldCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    # A fleet build: which specialist each verified artifact serves (artifact -> specialist name), so the
    # terminal summary can give each specialist its own table. Empty for one model.
    specialists: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verifications) and all(
            c.status != "failed" for c in self.scaffold_checks
        )


@dataclass(frozen=True)
class TargetOption:
    """One setting a target adds to `edgepack build` (a flag) and to edgepack.toml's [build] table.

    The target reads the value by `name` (ctx.options.for_target(self).get(name)); a flag on the
    command line beats the toml key, which beats `default`.
    """

    name: str
    # The command-line flag, e.g. "--compression"; None keeps the option to the Python API.
    flag: str | None = None
    # The key under edgepack.toml's [build], e.g. "<target>_compression"; None: not read from the file.
    toml_key: str | None = None
    help: str = ""
    default: Any = None
    # Allowed values (checked by click on the command line, by project.py in edgepack.toml); empty: any.
    choices: tuple[str, ...] = ()
    # Repeatable flag / toml list: the value is a tuple.
    multiple: bool = False
    # A switch without a value (--ane-head): the value is a bool.
    is_flag: bool = False
    # What is wrong with a given value (None: nothing), asked before a build reads the checkpoint
    # (check_option_values), so that a bad value stops the build before any stage has run.
    problem: Callable[[Any], str | None] | None = None

    def unlisted(self, value: Any) -> list[Any]:
        """The items of `value` (one, or each of a repeatable option's) that are not among `choices`."""
        if not self.choices:
            return []
        items = value if self.multiple and isinstance(value, (list, tuple)) else (value,)
        return [item for item in items if item not in self.choices]


@dataclass(frozen=True)
class TargetOptionValues:
    """One target's option values: those given (flag or edgepack.toml), else the target's defaults."""

    target: str
    declared: tuple[TargetOption, ...]
    given: Mapping[str, Any] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        """Return the value of option `name`; asking for an undeclared option is a bug in the target."""
        for option in self.declared:
            if option.name == name:
                return self.given.get(name, option.default)
        raise InternalError(f"target {self.target!r} reads option {name!r}, which it does not declare in `options`.")


@dataclass(frozen=True)
class HostCheckJob:
    """A CI job a target adds on another runner, after the Linux builds: e.g. macOS, to run its
    artifact in a runtime only that host has. `edgepack ci init` writes one per built target that
    declares it (class attribute `ci_host_check`); the release waits for it."""

    job_id: str
    runner: str
    title: str
    # One or two lines for the workflow's header comment: what the job proves that Linux cannot.
    purpose: str
    step: str


class Target(Protocol):
    """A deployment target: builds its folder from the shared stages of a build.

    `options` are the settings it adds to the CLI and edgepack.toml (see TargetOption); `default_quant`
    is the GGUF type it ships when --quant is not given (None: it ships no GGUF). Optional: a class
    attribute `ci_host_check` (HostCheckJob), a method `doctor_notes(config) -> list[str]` and
    `expected_seconds` (a cold build of a small model; the longest targets start first until the
    stage cache has measured them, packager.scheduler) and `heavy_steps` (the HeavyStep kinds it runs
    beyond the shared fp32 ones, so packager.memory_plan knows its memory need before a build) and
    `default_ladder` (the rungs it walks without a quantization option, smallest first; a GGUF target's
    is derived from default_quant) and `build_fleet(fleet, out_dir)` (a fleet of LoRA specialists with the
    base shipped once, packager.fleet; without it each specialist ships merged in its own folder, for the
    reason in `merged_specialists_reason`) and `runtime_memory_mb` (the most its runtime can address
    whatever the device has; a default GGUF type that would not fit steps down the ladder).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    runtime: ClassVar[str]
    status: ClassVar[str]
    options: ClassVar[tuple[TargetOption, ...]]
    default_quant: ClassVar[str | None]

    def supports(self, spec: ArchitectureSpec) -> bool:
        """Whether this target can build the architecture `spec` (doctor's matrix; checked before a build)."""
        ...

    def build(self, ctx: BuildContext, out_dir: Path) -> TargetResult: ...


def expected_seconds(target: Any) -> float:
    """How long a cold build of the target is expected to take before it has been measured (0: short)."""
    return float(getattr(target, "expected_seconds", 0.0))


def default_ladder(target: Any) -> tuple[str, ...]:
    """The rungs a target walks when the user picks no quantization: its own `default_ladder`, else the GGUF
    ladder up from its default_quant (packager.gguf_ladder), else none."""
    own = getattr(target, "default_ladder", None)
    quant = getattr(target, "default_quant", None)
    return tuple(own) if own else (ladder_from(quant) if quant else ())


def runtime_memory_mb(target: Any) -> float | None:
    """The memory ceiling of the target's runtime (e.g. a browser tab's WASM heap), or None: the device decides."""
    ceiling = getattr(target, "runtime_memory_mb", None)
    return float(ceiling) if ceiling else None


def heavy_steps(target: Any) -> tuple[HeavyStep, ...]:
    """The heavy steps a target declares beyond the shared ones (none: it only runs those and llama.cpp)."""
    return tuple(getattr(target, "heavy_steps", ()))


def check_option_values(targets: list[type[Target]], given: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse a given option value its target would refuse, naming the flag and the edgepack.toml key: one outside
    the option's choices (click and project.py check those for a flag and the file; the Python API passes values
    as given) or one its `problem` names."""
    for cls in targets:
        for option in declared_options(cls):
            name = option.name
            if name not in given.get(cls.name, {}):
                continue
            value = given[cls.name][name]
            if option.unlisted(value):
                problem: str | None = f"not one of {', '.join(option.choices)}"
            else:
                problem = option.problem(value) if option.problem is not None else None
            if problem is not None:
                where = " or ".join(w for w in (option.flag, option.toml_key and f"[build] {option.toml_key}") if w)
                raise BadInputError(f"{where or name} = {value!r}: {problem}. Fix the value, or leave it out for the "
                                    f"default ({option.default!r}).")


def declared_options(target: Any) -> tuple[TargetOption, ...]:
    """Return the options a target class (or instance) declares; a target may declare none."""
    return tuple(getattr(target, "options", ()))


def option_table(targets: Mapping[str, type[Target]]) -> list[tuple[str, TargetOption]]:
    """Return (target name, option) for every declared option, refusing two targets claiming one flag or key."""
    rows: list[tuple[str, TargetOption]] = []
    owners: dict[str, str] = {}
    for target_name, cls in targets.items():
        for option in declared_options(cls):
            for claim in (option.flag, option.toml_key):
                if claim is None:
                    continue
                if claim in owners and owners[claim] != target_name:
                    raise InternalError(f"targets {owners[claim]!r} and {target_name!r} both declare {claim!r}; "
                                        "uninstall one of the two plugins or rename the option in one.")
                owners[claim] = target_name
            rows.append((target_name, option))
    return rows


def available_targets() -> dict[str, type[Target]]:
    """Return every installed target plugin by name."""
    found: dict[str, type[Target]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as exc:  # a broken third-party plugin must not hide the others
            raise InternalError(f"target plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
        found[ep.name] = cls
    if not found:
        raise InternalError(
            "no edgepack targets are installed (entry-point group 'edgepack.targets' is empty). "
            "Install edgepack with pip (pip install -e . in a checkout)."
        )
    return dict(sorted(found.items()))


def resolve_targets(names: list[str]) -> list[type[Target]]:
    """Map --target values (or 'all') to plugin classes, in a stable order."""
    targets = available_targets()
    if not names or "all" in names:
        return list(targets.values())
    unknown = [n for n in names if n not in targets]
    if unknown:
        raise BadInputError(
            f"--target {', '.join(unknown)}: unknown target. Available: {', '.join(targets)}, or all."
        )
    return [targets[n] for n in dict.fromkeys(names)]
