"""The command line: parse options, call the Python API, print. Exit codes come from packager.errors."""

from __future__ import annotations

import io
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import click

from packager import __version__
from packager.errors import BadInputError, EdgepackError, ExitCode, Terminated
from packager.progress import Reporter
from packager.strict_json import finite_numbers, json_text

_DOCUMENT_KEY = "edgepack.json_document"


def _emit_json(document: Any) -> None:
    """Hand the command's --json result to the command machinery, which prints it once when the command ends."""
    click.get_current_context().meta[_DOCUMENT_KEY] = document


def _document_text(document: Any, code: int) -> str:
    """Return the one JSON document for stdout; a dict result also carries the exit code."""
    if isinstance(document, dict):
        document = {**document, "exit_code": code}
    # A number that does not exist (NaN, infinity) is null here: strict parsers reject the whole document.
    return json_text(finite_numbers(document), "--json output") + "\n"


def _failure(label: str, message: str, code: int) -> tuple[int, dict[str, Any]]:
    """Return the exit code and JSON document of a failed command, after saying why on stderr."""
    click.echo(f"edgepack: {label}: {message}", err=True)
    return code, {"passed": False, "error": label, "message": message}


@contextmanager
def _stdout_reserved(as_json: bool) -> Iterator[TextIO | None]:
    """Yield the real stdout, kept for the one JSON document; meanwhile whatever else writes to it goes to stderr.

    The redirect is of file descriptor 1, so child processes and native libraries (llama.cpp,
    model converters) cannot put their text into the document either. An in-process runner without a
    real descriptor (click's test runner) gets the same effect by swapping sys.stdout.
    """
    if not as_json:
        yield None
        return
    real = sys.stdout
    real.flush()
    try:
        fd = real.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        fd = None
    if fd is None:
        sys.stdout = sys.stderr
        try:
            yield real
        finally:
            sys.stdout = real
        return
    saved = os.dup(fd)
    os.dup2(sys.stderr.fileno(), fd)
    document_stream = os.fdopen(saved, "w", encoding="utf-8", closefd=False)
    try:
        yield document_stream
    finally:
        sys.stdout.flush()
        document_stream.flush()
        os.dup2(saved, fd)
        os.close(saved)


@contextmanager
def _sigterm_as_exception() -> Iterator[None]:
    """Make SIGTERM unwind the command like Ctrl-C does, so it cleans up and says so; a second SIGTERM kills at once."""

    def terminate(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread (an embedding application): leave its signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(invoke: Callable[[], Any], ctx: click.Context) -> tuple[int, Any]:
    """Return the exit code and JSON document of running the command: the one map from outcomes to exit codes."""
    code = 0
    try:
        invoke()
    except EdgepackError as exc:
        code, document = _failure(exc.label, exc.message, int(exc.exit_code))
        return code, {**document, **exc.details}
    except KeyboardInterrupt:
        return _failure("interrupted", "interrupted by Ctrl-C (SIGINT); stopped, and nothing was written.",
                        int(ExitCode.INTERRUPTED))
    except Terminated:
        return _failure("interrupted", "terminated by SIGTERM; stopped, and nothing was written.",
                        int(ExitCode.TERMINATED))
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code, {"passed": False, "error": "usage error", "message": exc.format_message()}
    except Exception as exc:
        traceback.print_exc()
        return _failure("internal error", f"{exc!r}. This is a bug in edgepack; please report it with the trace "
                        "above.", int(ExitCode.INTERNAL))
    document = ctx.meta.get(_DOCUMENT_KEY)
    if document is None and code:
        document = {"passed": False, "error": "failed", "message": f"exited with code {code}"}
    return code, document


class _Command(click.Command):
    """Every command's exits in one place: errors to exit codes, SIGINT/SIGTERM to 130/143, one --json document."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        wants_json = "--json" in args  # options are not parsed yet (and parsing consumes args): the raw flag
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            if wants_json:
                click.echo(_document_text({"passed": False, "error": "usage error", "message": exc.format_message()},
                                          exc.exit_code), nl=False)
            raise

    def invoke(self, ctx: click.Context) -> Any:
        as_json = bool(ctx.params.get("as_json"))
        with _stdout_reserved(as_json) as document_stream:
            with _sigterm_as_exception():
                code, document = _run(lambda: super(_Command, self).invoke(ctx), ctx)
            if document_stream is not None:
                document_stream.write(_document_text(document, code))
        if code:
            sys.exit(code)
        return None


class _Group(click.Group):
    """The edgepack command group: its commands (and sub-groups' commands) are _Commands."""

    command_class = _Command
    group_class = type


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgepack")
def main() -> None:
    """edgepack: one fine-tuned checkpoint in; verified edge artifacts and integration code out."""
    # torchao (imported by transformers and some targets' exporters) warns on import about CUDA-only extensions a
    # CPU host cannot load and about torch.compile registrations: noise, not news, for a build's stderr.
    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


# click parameter name -> (target, option name), filled when the build command's options are first built.
_TARGET_PARAMETERS: dict[str, tuple[str, str]] = {}


def _target_parameters() -> list[click.Parameter]:
    """Return a click option for every flag the installed targets declare (see packager.target.TargetOption)."""
    from packager.target import available_targets, option_table

    try:
        rows = option_table(available_targets())
    except EdgepackError:
        # A plugin that fails to load must not break `edgepack --help` or the other commands; `build`
        # reports it when it resolves its targets.
        return []
    params: list[click.Parameter] = []
    for target_name, option in rows:
        if option.flag is None:
            continue
        dest = f"target_{target_name}_{option.name}".replace("-", "_")
        _TARGET_PARAMETERS[dest] = (target_name, option.name)
        params.append(click.Option(
            [option.flag, dest], is_flag=option.is_flag, multiple=option.multiple,
            type=click.Choice(list(option.choices)) if option.choices else None,
            default=False if option.is_flag else (() if option.multiple else None),
            help=f"{target_name}: {option.help}" if option.help else f"{target_name} option.",
        ))
    return params


def _named_adapters(values: tuple[str, ...]) -> tuple[tuple[str, Path], ...]:
    """--adapter NAME=DIR values as (name, folder) pairs."""
    pairs = []
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name or not folder:
            raise BadInputError(f"--adapter {value!r}: give it as NAME=DIR, e.g. --adapter router=adapters/router.")
        pairs.append((name, Path(folder)))
    return tuple(pairs)


def _given_target_options(flags: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Group the target flags given on the command line by target (a flag left out is not 'given')."""
    given: dict[str, dict[str, Any]] = {}
    for dest, value in flags.items():
        if value is None or value is False or value == ():
            continue
        target_name, option_name = _TARGET_PARAMETERS[dest]
        given.setdefault(target_name, {})[option_name] = value
    return given


class _BuildCommand(_Command):
    """`edgepack build`, whose options include those of every installed target (added on first use, so
    `edgepack --help` and the other commands never load the target plugins)."""

    _targets_added = False

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not self._targets_added:
            self._targets_added = True
            self.params.extend(_target_parameters())
        return super().get_params(ctx)


@main.command(cls=_BuildCommand)
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("--target", "targets", multiple=True, help="Target to build (repeatable), or 'all'.")
@click.option("--quant", default=None,
              help="GGUF type for every GGUF target (default: each target's own, shown by `edgepack targets`).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (default dist/<name>).")
@click.option("--base", type=click.Path(path_type=Path), default=None,
              help="Base model folder for a LoRA adapter whose adapter_config path does not resolve.")
@click.option("--name", default=None, help="Name of the build (default: the checkpoint folder's name).")
@click.option("--context-length", type=int, default=None, help="Context length the runtimes are set up for.")
@click.option("--allow-pickle", is_flag=True, help="Read .bin/.pt weights with PyTorch's weights_only loader.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--no-gate", is_flag=True, help="Keep the output even when an artifact fails its quality gate.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@click.option("--eval", "eval_path", type=click.Path(path_type=Path), default=None,
              help="Eval set (JSONL: instruction, input, output) every artifact must answer.")
@click.option("--task", "task_kind", type=click.Choice(["text", "labels", "json"]), default=None,
              help="The task contract (default: labels when an eval set is given via edgepack.toml).")
@click.option("--labels", default=None, help="Comma-separated label set (default: the eval set's outputs).")
@click.option("--json-schema", type=click.Path(path_type=Path), default=None, help="JSON schema for --task json.")
@click.option("--prompt-template", default=None, help="Fine-tuning prompt format with {instruction}, {input}.")
@click.option("--constrained", is_flag=True, help="Constrain decoding to the labels (GBNF) where the runtime can.")
@click.option("--max-accuracy-drop", type=float, default=None,
              help="Task gate: allowed accuracy drop vs the fp32 model (default 0.02).")
@click.option("--strict-fidelity", is_flag=True,
              help="With an eval set, fail on the fidelity gate too (default: the task gate decides and a "
                   "fidelity miss is a warning).")
@click.option("--runtime-adapter", is_flag=True,
              help="For a LoRA adapter input: where the target's runtime applies adapters, ship the base model's "
                   "GGUF plus the adapter as a GGUF LoRA instead of the merged model (the build names the targets "
                   "that ship it merged).")
@click.option("--adapter", "adapters", multiple=True, metavar="NAME=DIR",
              help="A fleet: a LoRA specialist of --base, named NAME (repeatable); targets whose runtime applies "
                   "adapters ship the base once and an adapter per specialist.")
@click.option("--specialist", "only_specialists", multiple=True, metavar="NAME",
              help="A fleet: build only this specialist (repeatable; default: every one), e.g. one CI job per "
                   "specialist; `edgepack release` merges the builds of one fleet.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="An edgepack.toml to read (default: ./edgepack.toml when no CHECKPOINT is given).")
@click.option("--device", "device_name", default=None,
              help="Device profile: builds its target with the most faithful quantization that fits its RAM.")
@click.option("--jobs", type=int, default=None, help="Targets built at once (default: all of them).")
@click.option("--max-ram", default=None,
              help="Memory the build may use, e.g. 12G (default: the host's minus headroom); a step that "
                   "cannot fit stops the build with exit 3.")
def build(checkpoint: Path | None, targets: tuple[str, ...], quant: str | None, out: Path | None,
          base: Path | None, name: str | None, context_length: int | None, allow_pickle: bool, force: bool,
          no_gate: bool, as_json: bool, quiet: bool, eval_path: Path | None,
          task_kind: str | None, labels: str | None, json_schema: Path | None, prompt_template: str | None,
          constrained: bool, max_accuracy_drop: float | None, strict_fidelity: bool, device_name: str | None,
          runtime_adapter: bool, adapters: tuple[str, ...], only_specialists: tuple[str, ...],
          config_path: Path | None, jobs: int | None, max_ram: str | None, **target_flags: Any) -> None:
    """Build CHECKPOINT (a Hugging Face folder or a PEFT adapter) for the chosen targets.

    Without CHECKPOINT, reads ./edgepack.toml, else builds the bundled example.
    """
    from packager.pipeline import run_build
    from packager.project import BuildFlags, build_request

    task: dict[str, Any] = {}
    if task_kind:
        task["task"] = task_kind
    if labels:
        task["labels"] = [label.strip() for label in labels.split(",") if label.strip()]
    if json_schema:
        task["json_schema"] = str(json_schema)
    if prompt_template is not None:
        task["prompt_template"] = prompt_template
    if constrained:
        task["constrained"] = True
    reporter = Reporter(quiet=quiet)
    request = build_request(BuildFlags(
        checkpoint=checkpoint, targets=targets, quant=quant, out=out, base=base, name=name,
        context_length=context_length, allow_pickle=allow_pickle, force=force, no_gate=no_gate,
        eval_path=eval_path, task=task, max_accuracy_drop=max_accuracy_drop, strict_fidelity=strict_fidelity,
        device=device_name, config=config_path, target_options=_given_target_options(target_flags),
        jobs=jobs, max_ram=max_ram, runtime_adapter=runtime_adapter, adapters=_named_adapters(adapters),
        only_specialists=only_specialists,
    ), reporter)
    outcome = run_build(request, reporter)
    if as_json:
        _emit_json(outcome.summary())
    else:
        from packager.report import verification_tables

        click.echo(verification_tables(outcome.results))
        click.echo(f"\nwrote {outcome.out}")
    if not outcome.passed:
        # Only reachable with --no-gate: the output exists, but the exit code still tells CI.
        click.echo("edgepack: quality gate failed (kept because of --no-gate)", err=True)
        sys.exit(int(ExitCode.GATE_FAILED))


@main.command()
@click.option("--json", "as_json", is_flag=True)
def targets(as_json: bool) -> None:
    """List the installed target plugins."""
    from packager.target import available_targets

    found = available_targets()
    rows = [{"name": n, "title": c.title, "runtime": c.runtime, "status": c.status,
             "default_quant": getattr(c, "default_quant", None)} for n, c in found.items()]
    if as_json:
        _emit_json(rows)
    else:
        for r in rows:
            quant = r["default_quant"] or "-"
            click.echo(f"{r['name']:<14} {r['status']:<12} {quant:<7} {r['runtime']}  - {r['title']}")


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--device", "device_name", default=None, help="Only this device profile (see the list with --json).")
@click.option("--base", type=click.Path(path_type=Path), default=None, help="Base folder for a LoRA adapter.")
@click.option("--eval", "eval_path", type=click.Path(path_type=Path), default=None,
              help="Eval set: check which prompt rendering the fp32 model answers it best under.")
@click.option("--task", "task_kind", type=click.Choice(["text", "labels", "json"]), default="labels",
              show_default=True, help="The task of the eval set.")
@click.option("--no-gate", is_flag=True, help="The memory a build with --no-gate needs (it screens no ladder rungs).")
@click.option("--json", "as_json", is_flag=True)
def doctor(checkpoint: Path, device_name: str | None, base: Path | None, eval_path: Path | None, task_kind: str,
           no_gate: bool, as_json: bool) -> None:
    """Support matrix, fp16 risk, each target's notes, RAM estimates per device, this machine's memory need and
    ladders per target for CHECKPOINT; with --eval, the contract checked on the fp32 model."""
    from packager.doctor import diagnose, render
    from packager.pipeline import BuildRequest, open_input

    ckpt, digest = open_input(BuildRequest(checkpoint=checkpoint, targets=[], base=base), Reporter(quiet=True))
    report = diagnose(ckpt, only=device_name, eval_path=eval_path, task=task_kind, digest=digest, no_gate=no_gate)
    if as_json:
        _emit_json(report.as_dict())
    else:
        click.echo(render(report))


@main.command("example")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Where to write the HF folder.")
def example(out: Path | None) -> None:
    """Materialize the bundled example checkpoint (real Gemma 3 270M) as a Hugging Face folder."""
    from packager.examples import bundled_example

    click.echo(str(bundled_example(Reporter(), out)))


@main.command()
@click.argument("folder", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--port", type=int, default=8000, show_default=True, help="Port (0: any free port).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (keep it local).")
def serve(folder: Path, port: int, host: str) -> None:
    """Serve a web bundle (dist/NAME/web) with cross-origin isolation, WASM MIME types and Range requests."""
    from packager.static_server import BundleServer

    try:
        server = BundleServer(folder, host, port)
    except OSError as exc:
        raise BadInputError(f"--port {port}: cannot listen on {host}:{port} ({exc}). Choose another --port.") from None
    click.echo(f"serving {folder} at {server.url} (Ctrl-C to stop)", err=True)
    click.echo(server.url, nl=True)
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@main.command()
@click.argument("dist", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--version", "version", required=True, help="Release version, e.g. 1.2.0 (used in file names).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Release folder (default releases/<name>-<version>).")
@click.option("--force", is_flag=True, help="Replace an existing release folder.")
@click.option("--allow-failed", is_flag=True, help="Release a --no-gate build whose gate failed, marked as failed.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
def release(dist: tuple[Path, ...], version: str, out: Path | None, force: bool, allow_failed: bool, as_json: bool,
            quiet: bool) -> None:
    """Package build folder(s) DIST as a release: one reproducible tar.gz per target, manifest, model card.

    DIST is a folder written by `edgepack build` (dist/<name>/). Several DIST folders of the same
    checkpoint (one per CI matrix job) are merged into one release.
    """
    from packager.release import ReleaseRequest, make_release

    outcome = make_release(ReleaseRequest(builds=list(dist), version=version, out=out, force=force,
                                          allow_failed=allow_failed), Reporter(quiet=quiet))
    if as_json:
        _emit_json(outcome.summary())
    else:
        for archive in outcome.summary()["archives"]:
            click.echo(f"{archive['path']}  {archive['bytes'] / 2**20:.1f} MB  sha256 {archive['sha256']}")
        click.echo(f"\nwrote {outcome.out}")


@main.command("diff")
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON on stdout.")
def diff_command(old: Path, new: Path, as_json: bool) -> None:
    """Compare two release folders: per target sizes, hashes, verification numbers, contract and options."""
    from packager.release import read_release
    from packager.release_diff import diff_releases, render_diff

    difference = diff_releases(read_release(old), read_release(new), old, new)
    if as_json:
        _emit_json(difference)
    else:
        click.echo(render_diff(difference))


@main.group()
def ci() -> None:
    """Continuous integration: generate a GitHub Actions workflow for your model's repository."""


@ci.command("init")
@click.option("--out", type=click.Path(path_type=Path), default=Path(".github/workflows/edgepack.yml"),
              show_default=True, help="Where to write the workflow.")
@click.option("--targets", "targets", multiple=True,
              help="Targets to build, comma-separated or repeated (default: every installed target).")
@click.option("--checkpoint", default=None,
              help="Checkpoint folder in your repository (default: the one in ./edgepack.toml).")
@click.option("--install", "install_spec", default=None,
              help=f"What the jobs pip-install (default: edgepack=={__version__}).")
@click.option("--force", is_flag=True, help="Replace an existing workflow file.")
def ci_init(out: Path, targets: tuple[str, ...], checkpoint: str | None, install_spec: str | None,
            force: bool) -> None:
    """Write a GitHub Actions workflow: a build job per target, Core ML check on macOS, release on tags."""
    from packager.ci_workflow import WorkflowRequest, write_workflow

    names = [n.strip() for value in targets for n in value.split(",") if n.strip()]
    written = write_workflow(WorkflowRequest(out=out, targets=names, checkpoint=checkpoint,
                                             install_spec=install_spec, force=force))
    click.echo(f"wrote {written}")


if __name__ == "__main__":  # pragma: no cover
    main()

