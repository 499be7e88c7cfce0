"""The command line: parse options, call the Python API, print. Exit codes come from packager.errors."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import click

from packager import __version__
from packager.errors import EdgepackError, ExitCode
from packager.progress import Reporter

DEFAULT_CONFIG = Path("edgepack.toml")


def _fail(exc: EdgepackError, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"passed": False, "error": exc.label, "message": exc.message}, indent=2))
    click.echo(f"edgepack: {exc.label}: {exc.message}", err=True)
    sys.exit(int(exc.exit_code))


def _load_config(path: Path) -> dict[str, Any]:
    from packager.errors import BadInputError

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BadInputError(f"{path}: cannot be read as TOML ({exc}). Fix the file or pass a checkpoint.") from None
    return data.get("build", data)


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


@main.command()
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("--target", "targets", multiple=True, help="Target to build (repeatable), or 'all'.")
@click.option("--quant", default=None, help="GGUF type for GGUF targets (default Q4_K_M).")
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
def build(checkpoint: Path | None, targets: tuple[str, ...], quant: str | None, out: Path | None,
          base: Path | None, name: str | None, context_length: int | None, allow_pickle: bool, force: bool,
          no_gate: bool, as_json: bool, quiet: bool) -> None:
    """Build CHECKPOINT (a Hugging Face folder or a PEFT adapter) for the chosen targets.

    Without CHECKPOINT, reads ./edgepack.toml, else builds the bundled example.
    """
    from packager.formats.gguf_writer import canonical_quant
    from packager.pipeline import BuildRequest, run_build
    from packager.stages import BuildOptions

    try:
        config: dict[str, Any] = {}
        if checkpoint is None:
            if DEFAULT_CONFIG.is_file():
                config = _load_config(DEFAULT_CONFIG)
                checkpoint = Path(config["checkpoint"]) if "checkpoint" in config else None
            if checkpoint is None:
                from packager.examples import bundled_example

                checkpoint = bundled_example(Reporter(quiet=quiet))
        options = BuildOptions(
            quant=canonical_quant(quant or config.get("quant", "Q4_K_M")),
            context_length=context_length or int(config.get("context_length", 4096)),
            no_gate=no_gate,
            name=name or config.get("name"),
        )
        request = BuildRequest(
            checkpoint=checkpoint,
            targets=list(targets) or list(config.get("targets", ["all"])),
            out=out or (Path(config["out"]) if "out" in config else None),
            base=base or (Path(config["base"]) if "base" in config else None),
            allow_pickle=allow_pickle,
            force=force,
            options=options,
        )
        outcome = run_build(request, Reporter(quiet=quiet))
    except EdgepackError as exc:
        _fail(exc, as_json)
        return
    if as_json:
        click.echo(json.dumps(outcome.summary(), indent=2))
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
        click.echo(json.dumps(rows, indent=2))
    else:
        for r in rows:
            click.echo(f"{r['name']:<14} {r['status']:<12} {r['runtime']}  - {r['title']}")


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


if __name__ == "__main__":  # pragma: no cover
    main()

