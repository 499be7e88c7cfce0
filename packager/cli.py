"""The command line: parse options, call the Python API, print. Exit codes come from packager.errors."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from packager import __version__
from packager.errors import EdgepackError, ExitCode
from packager.formats.coreml_export import COMPRESSIONS
from packager.progress import Reporter
from packager.strict_json import json_text


def _fail(exc: EdgepackError, as_json: bool) -> None:
    if as_json:
        click.echo(json_text({"passed": False, "error": exc.label, "message": exc.message}, "--json output"))
    click.echo(f"edgepack: {exc.label}: {exc.message}", err=True)
    sys.exit(int(exc.exit_code))


class _Group(click.Group):
    """Maps any unexpected exception to the internal-error exit code (never 1, which means a gate)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("edgepack: interrupted; nothing was written", err=True)
            sys.exit(130)
        except Exception as exc:
            import traceback

            traceback.print_exc()
            click.echo(f"edgepack: internal error: {exc!r}. This is a bug in edgepack; please report it "
                       "with the trace above.", err=True)
            sys.exit(int(ExitCode.INTERNAL))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgepack")
def main() -> None:
    """edgepack: one fine-tuned checkpoint in; verified edge artifacts and integration code out."""
    # torchao (imported by transformers and ExecuTorch) warns on import about CUDA-only extensions a
    # CPU host cannot load and about torch.compile registrations: noise, not news, for a build's stderr.
    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


@main.command()
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("--target", "targets", multiple=True, help="Target to build (repeatable), or 'all'.")
@click.option("--quant", default=None, help="GGUF type for every GGUF target (default per target: Q4_K_M; web: Q8_0).")
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
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="An edgepack.toml to read (default: ./edgepack.toml when no CHECKPOINT is given).")
@click.option("--device", "device_name", default=None,
              help="Device profile: builds its target with the most faithful quantization that fits its RAM.")
@click.option("--runtime", "web_runtime", type=click.Choice(["wllama", "webllm", "all"]), default=None,
              help="Browser runtime(s) for the web target (default wllama).")
@click.option("--recipe", "android_recipe", default=None,
              help="ExecuTorch quantization recipe for android (default auto: the smallest that passes its gate).")
@click.option("--delegate", "android_delegates", multiple=True, type=click.Choice(["vulkan"]),
              help="Also export an experimental accelerator .pte for android (repeatable); the app falls back "
                   "to XNNPACK.")
@click.option("--compression", "ios_compression", type=click.Choice(list(COMPRESSIONS)),
              default=None, help="Core ML weight compression for ios (default int4: 4-bit linears, 8-bit embedding/"
                                 "lm_head; when int4 fails its gate, int4-mixed, then int8, ship instead).")
@click.option("--ane-head", "ios_ane_head", is_flag=True,
              help="ios: also build a Neural-Engine-friendly package with the lm_head split into 16,384-row chunks.")
def build(checkpoint: Path | None, targets: tuple[str, ...], quant: str | None, out: Path | None,
          base: Path | None, name: str | None, context_length: int | None, allow_pickle: bool, force: bool,
          no_gate: bool, as_json: bool, quiet: bool, web_runtime: str | None, eval_path: Path | None,
          task_kind: str | None, labels: str | None, json_schema: Path | None, prompt_template: str | None,
          constrained: bool, max_accuracy_drop: float | None, device_name: str | None,
          config_path: Path | None, android_recipe: str | None = None,
          android_delegates: tuple[str, ...] = (), ios_compression: str | None = None,
          ios_ane_head: bool = False) -> None:
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
    try:
        request = build_request(BuildFlags(
            checkpoint=checkpoint, targets=targets, quant=quant, out=out, base=base, name=name,
            context_length=context_length, allow_pickle=allow_pickle, force=force, no_gate=no_gate,
            web_runtime=web_runtime, eval_path=eval_path, task=task, max_accuracy_drop=max_accuracy_drop,
            device=device_name, config=config_path, android_recipe=android_recipe,
            android_delegates=android_delegates, ios_compression=ios_compression, ios_ane_head=ios_ane_head,
        ), reporter)
        outcome = run_build(request, reporter)
    except EdgepackError as exc:
        _fail(exc, as_json)
        return
    if as_json:
        click.echo(json_text(outcome.summary(), "--json output"))
    else:
        from packager.report import verification_table

        click.echo(verification_table(outcome.results))
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

    try:
        found = available_targets()
    except EdgepackError as exc:
        _fail(exc, as_json)
        return
    rows = [{"name": n, "title": c.title, "runtime": c.runtime, "status": c.status} for n, c in found.items()]
    if as_json:
        click.echo(json_text(rows, "--json output"))
    else:
        for r in rows:
            click.echo(f"{r['name']:<14} {r['status']:<12} {r['runtime']}  - {r['title']}")


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--device", "device_name", default=None, help="Only this device profile (see the list with --json).")
@click.option("--base", type=click.Path(path_type=Path), default=None, help="Base folder for a LoRA adapter.")
@click.option("--json", "as_json", is_flag=True)
def doctor(checkpoint: Path, device_name: str | None, base: Path | None, as_json: bool) -> None:
    """Support matrix, fp16 risk, Neural Engine limits and RAM estimates per device for CHECKPOINT."""
    from packager.doctor import diagnose, render
    from packager.pipeline import BuildRequest, open_input

    try:
        ckpt, _ = open_input(BuildRequest(checkpoint=checkpoint, targets=[], base=base), Reporter(quiet=True))
        report = diagnose(ckpt, only=device_name)
    except EdgepackError as exc:
        _fail(exc, as_json)
        return
    click.echo(json_text(report.as_dict(), "--json output") if as_json else render(report))


@main.command("example")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Where to write the HF folder.")
def example(out: Path | None) -> None:
    """Materialize the bundled example checkpoint (real Gemma 3 270M) as a Hugging Face folder."""
    from packager.examples import bundled_example

    try:
        path = bundled_example(Reporter(), out)
    except EdgepackError as exc:
        _fail(exc, False)
        return
    click.echo(str(path))


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
        click.echo(f"edgepack: bad input: cannot listen on {host}:{port} ({exc}). Choose another --port.", err=True)
        sys.exit(int(ExitCode.BAD_INPUT))
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

    try:
        outcome = make_release(ReleaseRequest(builds=list(dist), version=version, out=out, force=force,
                                              allow_failed=allow_failed), Reporter(quiet=quiet))
    except EdgepackError as exc:
        _fail(exc, as_json)
        return
    if as_json:
        click.echo(json_text(outcome.summary(), "--json output"))
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

    try:
        difference = diff_releases(read_release(old), read_release(new), old, new)
    except EdgepackError as exc:
        _fail(exc, as_json)
        return
    click.echo(json_text(difference, "--json output") if as_json else render_diff(difference))


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
    try:
        written = write_workflow(WorkflowRequest(out=out, targets=names, checkpoint=checkpoint,
                                                 install_spec=install_spec, force=force))
    except EdgepackError as exc:
        _fail(exc, False)
        return
    click.echo(f"wrote {written}")


if __name__ == "__main__":  # pragma: no cover
    main()

