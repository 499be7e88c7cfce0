"""One build: checkpoint -> shared stages -> target folders -> verification -> atomic output.

The output folder appears only when everything is written: targets build into a hidden temporary
folder beside it, which is renamed into place at the end. A failed, gated or interrupted build
leaves nothing that looks complete. While a build writes, its output folder is locked, and
--force replaces only a previous build's folder, never an input (packager/output_guard.py).
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packager.atomic import output_errors, staged_output
from packager.build_log import tool_output_to_log
from packager.checkpoint import Checkpoint, is_adapter_folder, load_checkpoint
from packager.errors import BadInputError, GateFailedError, UnsupportedError
from packager.fingerprint import cache_root, files_digest, options_digest
from packager.fleet import (
    Fleet,
    Specialist,
    SpecialistSpec,
    adapter_sha256,
    build_merged_per_specialist,
    fleet_members,
)
from packager.manifest import (
    MANIFEST_SCHEMA_VERSION,
    build_timestamp,
    tool_versions,
    write_json,
    write_sha256sums,
)
from packager.memory_plan import check_fits, screens_to_skip, target_needs
from packager.output_guard import check_name, check_replaceable
from packager.output_lock import output_lock
from packager.progress import Reporter
from packager.report import render_report, verification_rows, verification_tables
from packager.report_html import render_html
from packager.runtime_adapter import check_runtime_adapter_input
from packager.scheduler import scheduler_for
from packager.stages import BuildContext, BuildOptions
from packager.target import Target, TargetResult, check_option_values, expected_seconds, resolve_targets
from packager.verify.reference import import_transformers

BUILD_LOG = "build.log"


@dataclass
class BuildRequest:
    """Everything `edgepack build` was asked to do."""

    checkpoint: Path
    targets: list[str]
    out: Path | None = None
    base: Path | None = None
    allow_pickle: bool = False
    force: bool = False
    config: Path | None = None
    options: BuildOptions = field(default_factory=BuildOptions)
    # The checkpoint and its digest when the caller already opened it (--device does, to size artifacts).
    opened: tuple[Checkpoint, str] | None = None
    # Targets built at once (None: the host's cores) and the memory the build may use (None: the host's
    # minus headroom); see packager/scheduler.py.
    jobs: int | None = None
    max_ram: int | None = None
    # A fleet (packager.fleet): LoRA specialists of the base model `checkpoint`; empty: one model.
    specialists: tuple[SpecialistSpec, ...] = ()
    # --specialist: build only these specialists of the fleet (one CI job per specialist); empty: all of them.
    only_specialists: tuple[str, ...] = ()

    @property
    def built_specialists(self) -> tuple[SpecialistSpec, ...]:
        """The specialists this build makes: those --specialist names, else the whole fleet."""
        if not self.only_specialists:
            return self.specialists
        return tuple(s for s in self.specialists if s.name in self.only_specialists)


@dataclass
class BuildOutcome:
    """The result of a build, for the CLI and for callers of the Python API."""

    out: Path | None
    manifest: dict[str, Any]
    results: list[TargetResult]
    passed: bool

    def summary(self) -> dict[str, Any]:
        return {
            "out": str(self.out) if self.out else None,
            "passed": self.passed,
            "name": self.manifest.get("name"),
            "targets": self.manifest.get("targets"),
            "artifacts": verification_rows(self.results),
            "stages": self.manifest.get("stages"),
        }


def _input_files(path: Path, base: Path | None) -> list[Path]:
    folders = [path]
    if base is not None:
        folders.append(base)
    return [p for folder in folders for p in sorted(folder.iterdir()) if p.is_file()]


def open_input(request: BuildRequest, reporter: Reporter) -> tuple[Checkpoint, str]:
    """Load (and for an adapter, merge) the checkpoint; return it with its content digest."""
    start = time.perf_counter()
    path = request.checkpoint
    if not path.exists():
        raise BadInputError(f"{path}: does not exist. Pass a Hugging Face model folder or a PEFT adapter folder.")
    if path.is_dir() and is_adapter_folder(path):
        key = options_digest("merge", files_digest(_input_files(path, request.base)), str(request.base))[:24]
        work_dir = cache_root() / "checkpoints" / key
    else:
        # Only used when opted-in pickle weights must be re-saved as safetensors.
        work_dir = cache_root() / "checkpoints" / options_digest("folder", str(path.resolve()))[:24]
    ckpt = load_checkpoint(path, base=request.base, allow_pickle=request.allow_pickle, work_dir=work_dir,
                           name=request.options.name, reporter=reporter)
    digest = ckpt.content_digest()
    detail = f"{ckpt.spec.name}, {ckpt.parameter_count / 1e6:.1f}M parameters, {ckpt.origin['kind']}"
    reporter.stage("load checkpoint", False, time.perf_counter() - start, detail)
    return ckpt, digest


def _given_inputs(request: BuildRequest) -> list[Path]:
    """The inputs named on the command line or in edgepack.toml (`build_inputs` less the checkpoint's own)."""
    paths = [request.checkpoint, request.base, request.config, request.options.eval_path,
             request.options.task.get("json_schema")]
    for spec in request.specialists:
        paths += [spec.adapter, spec.eval_path, spec.task.get("json_schema")]
    # A JSON schema given inline in edgepack.toml is a table, not a file.
    return [Path(p) for p in paths if isinstance(p, str | Path) and p]


def build_inputs(request: BuildRequest, ckpt: Checkpoint) -> list[Path]:
    """Return every file and folder the build reads, which its output must never replace."""
    base = ckpt.origin.get("base")
    return [*_given_inputs(request), *([Path(base)] if isinstance(base, str | Path) and base else [])]


def open_fleet(request: BuildRequest, base: BuildContext) -> Fleet:
    """Merge every specialist's adapter into the base (only the --specialist ones, when given); each gets its own
    stages, sharing the base's."""
    members = fleet_members(request.specialists)  # before the merges: a missing adapter stops the build at once
    specialists = []
    for spec in request.built_specialists:
        options = dataclasses.replace(
            request.options, name=spec.name, eval_path=spec.eval_path, task={**request.options.task, **spec.task},
            task_source=spec.task_source, task_gate=spec.task_gate or request.options.task_gate,
            runtime_adapter=True)
        opened = open_input(BuildRequest(checkpoint=spec.adapter, targets=[], base=request.checkpoint,
                                         allow_pickle=request.allow_pickle, options=options), base.reporter)
        ctx = BuildContext(*opened, options, base.reporter, base.cache, base.scheduler, base=base)
        specialists.append(Specialist(spec, ctx))
    return Fleet(base, specialists, members)


def run_build(request: BuildRequest, reporter: Reporter | None = None) -> BuildOutcome:
    """Build every requested target; raise GateFailedError (after cleaning up) when a gate fails.

    Third-party tools' output goes to a log (packager.build_log) that ships as build.log.
    """
    reporter = reporter or Reporter()
    with tool_output_to_log(cache_root() / "logs", reporter) as log:
        outcome = _run_build(request, reporter, log)
    log.unlink(missing_ok=True)  # its copy is in the output
    return outcome


def _run_build(request: BuildRequest, reporter: Reporter, log: Path) -> BuildOutcome:
    target_classes = resolve_targets(request.targets)
    check_option_values(target_classes, request.options.target_options)
    if request.out is not None:  # refused before the checkpoint is read (seconds to minutes); checked again below
        check_replaceable(request.out, _given_inputs(request), "build", request.force)
    ckpt, digest = request.opened or open_input(request, reporter)
    unsupported = [cls.name for cls in target_classes if not cls().supports(ckpt.spec)]
    if unsupported:
        raise UnsupportedError(
            f"{request.checkpoint}: the {ckpt.spec.name} architecture is not supported by the target(s) "
            f"{', '.join(unsupported)}; `edgepack doctor {request.checkpoint}` shows which targets support it. "
            "Drop those --target values."
        )
    if request.options.runtime_adapter and not request.specialists:
        check_runtime_adapter_input(ckpt, request.checkpoint)
    name = request.options.name or ckpt.name
    out = request.out or Path("dist") / check_name(name, "the build name (--name, else the checkpoint folder's)")
    cache = cache_root()
    scheduler = scheduler_for(ckpt, reporter, cache, request.jobs, request.max_ram)
    base_options = dataclasses.replace(request.options, eval_path=None, task={}) if request.specialists else (
        request.options)
    ctx = BuildContext(ckpt, digest, base_options, reporter, cache, scheduler)
    fleet = open_fleet(request, ctx) if request.specialists else None
    targets = [cls() for cls in target_classes]
    if fleet:
        merged_anyway = [t.name for t in targets if not hasattr(t, "build_fleet")]
        if merged_anyway:
            reporter.say(f"fleet: {', '.join(merged_anyway)} ship(s) each specialist as a whole model (no shared "
                         "base there yet)")
    elif request.options.runtime_adapter:
        merged_anyway = [t.name for t in targets if not getattr(t, "applies_adapters", False)]
        if merged_anyway:
            reporter.say(f"--runtime-adapter: {', '.join(merged_anyway)} ship(s) the merged model (no runtime "
                         "adapter support there yet)")
    # A specialist's merged model is the size of the base: the first one sizes every target's steps.
    sizing = fleet.specialists[0].ctx if fleet else ctx
    scheduler.unscreened = screens_to_skip(sizing, targets)
    for target, why in scheduler.unscreened.items():
        reporter.say(f"{target}: {why}")
    for warning in check_fits(target_needs(sizing, targets), scheduler):  # exit 3 before anything is written
        reporter.say(f"warning: {warning}")
    with output_errors(out), output_lock(out):
        check_replaceable(out, build_inputs(request, ckpt), "build", request.force)
        with staged_output(out) as staging:
            results, manifest, passed = _build_into(staging, out, request, ctx, targets, log, fleet)
    reporter.say(f"wrote {out}")
    return BuildOutcome(out=out, manifest=manifest, results=results, passed=passed)


def _build_into(staging: Path, out: Path, request: BuildRequest, ctx: BuildContext, targets: list[Target],
                log: Path, fleet: Fleet | None) -> tuple[list[TargetResult], dict[str, Any], bool]:
    """Return the results, manifest and verdict of building every target into staging (published by the caller)."""
    ckpt, digest, reporter, scheduler = ctx.ckpt, ctx.ckpt_digest, ctx.reporter, ctx.scheduler

    def build_target(target: Target, out_dir: Path) -> TargetResult:
        if fleet is None:
            return target.build(ctx, out_dir)
        build_fleet = getattr(target, "build_fleet", None)
        if build_fleet is not None:
            return build_fleet(fleet, out_dir)
        return build_merged_per_specialist(target, fleet, out_dir, target.build)

    def build(target: Target) -> TargetResult:
        reporter.say(f"target {target.name}: building")
        start = time.perf_counter()
        with reporter.running(target.name):
            result = build_target(target, staging / target.name)
        reporter.stage(f"target {target.name}", False, time.perf_counter() - start)
        return result

    import_transformers()  # once, here: the targets' threads would import it at the same time
    results = scheduler.run_all([(t.name, functools.partial(build, t)) for t in targets],
                                {t.name: expected_seconds(t) for t in targets})
    passed = all(r.passed for r in results)
    manifest = _manifest(ckpt, digest, request, results, reporter, passed, ctx, fleet)
    if not passed and not request.options.no_gate:
        raise GateFailedError(
            "an artifact is not faithful enough to the source model, so nothing was written to "
            f"{out}. Use a higher-precision --quant, or --no-gate to keep the output anyway.\n\n"
            + verification_tables(results),
            # --json: what failed, as the manifest would have said it (nothing is written to read it from).
            details={key: manifest[key] for key in ("name", "artifacts", "contract_check") if key in manifest},
        )
    write_json(staging / "manifest.json", manifest)
    report_md = render_report(manifest, results, not request.options.no_gate)
    (staging / "report.md").write_text(report_md, encoding="utf-8")
    title = f"edgepack build: {manifest['name']}"
    (staging / "report.html").write_text(render_html(report_md, results, staging, title), encoding="utf-8")
    shutil.copyfile(log, staging / BUILD_LOG)
    write_sha256sums(staging)
    return results, manifest, passed


def _manifest(
    ckpt: Checkpoint, digest: str, request: BuildRequest, results: list[TargetResult], reporter: Reporter,
    passed: bool, ctx: BuildContext, fleet: Fleet | None,
) -> dict[str, Any]:
    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "name": request.options.name or ckpt.name,
        "built_at": build_timestamp(),
        "passed": passed,
        "gated": not request.options.no_gate,
        "source": {
            **ckpt.origin,
            "path": str(request.checkpoint),
            "architecture": ckpt.spec.name,
            "model_type": ckpt.config.get("model_type"),
            "parameters": ckpt.parameter_count,
            "sha256": digest,
        },
        "options": {"quant": request.options.quant, **_context_options(ctx, fleet)},
        **({"contract_check": {**ctx.contract_check.as_dict(),
                               "messages": ctx.contract_check.messages(ctx.eval_rows[0])}}
           if ctx.contract_check else {}),
        **({"specialists": [_specialist_entry(s) for s in fleet.specialists],
            "fleet": fleet.members} if fleet else {}),
        "targets": [r.target for r in results],
        "artifacts": verification_rows(results),
        "stages": [vars(s) for s in reporter.records],
        "tools": tool_versions(),
    }


def _context_options(ctx: BuildContext, fleet: Fleet | None) -> dict[str, Any]:
    """The build's context length and why; in a fleet each specialist's own (its eval set sizes it), the largest
    as the length: the base alone has no eval set, so its default says nothing about what was built."""
    if fleet is None:
        return {"context_length": ctx.context.tokens, "context_length_from": ctx.context.reason}
    choices = {s.name: s.ctx.context for s in fleet.specialists}
    return {"context_length": max(c.tokens for c in choices.values()),
            "context_length_from": "per specialist: " + "; ".join(f"{name} {c.tokens} tokens, {c.reason}"
                                                                 for name, c in choices.items())}


def _specialist_entry(specialist: Specialist) -> dict[str, Any]:
    """A fleet specialist in the manifest: its adapter (and the hash of its files), task and contract check."""
    spec, ctx = specialist.spec, specialist.ctx
    return {
        "name": spec.name,
        "adapter": str(spec.adapter),
        "adapter_sha256": adapter_sha256(spec),
        "merged_sha256": ctx.ckpt_digest,
        "eval": str(spec.eval_path) if spec.eval_path else None,
        "contract": ctx.contract.as_dict(),
        **({"contract_check": {**ctx.contract_check.as_dict(),
                               "messages": ctx.contract_check.messages(ctx.eval_rows[0])}}
           if ctx.contract_check else {}),
    }
