"""`edgepack ci init`: a GitHub Actions workflow for the user's model repository.

One matrix job per target runs `edgepack build --target T`; for a fleet (edgepack.toml with
[specialists.NAME] tables) one job per specialist x target runs `edgepack build --target T
--specialist S`. A target that declares a host check (HostCheckJob, e.g. macOS for a runtime only
macOS has) gets its own job on that runner; on a version tag a release job merges the builds with
`edgepack release` and publishes them. edgepack generates the workflow and does not schedule
anything itself (design.md, Scale).

The template uses square-bracket delimiters ([[ value ]], [% if %]) because GitHub's ${{ }} would
collide with Jinja's. User values go only into YAML through the json filter, and into shell only
as environment variables; a value that GitHub would itself evaluate ("${{") is refused.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from packager import __version__
from packager.atomic import write_text_atomically
from packager.errors import BadInputError, EdgepackError, InternalError
from packager.resources import templates_dir
from packager.target import HostCheckJob, available_targets, resolve_targets
from packager.templating import make_environment

WORKFLOW_TEMPLATE = "ci/edgepack.yml.j2"
DEFAULT_OUT = Path(".github/workflows/edgepack.yml")
PYTHON_VERSION = "3.11"
_LEFTOVER = re.compile(r"\[\[|\[%|%\]|\]\]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass
class WorkflowRequest:
    """What `edgepack ci init` was asked to write."""

    out: Path = DEFAULT_OUT
    targets: list[str] = field(default_factory=list)
    checkpoint: str | None = None
    install_spec: str | None = None
    force: bool = False


def _plain_value(option: str, value: str) -> str:
    """Return value if it can sit in a workflow as data: one line, nothing GitHub would evaluate."""
    if "${{" in value:
        raise BadInputError(f"{option} {value!r}: contains '${{{{', which GitHub Actions would evaluate as an "
                            "expression. Choose a value without it.")
    if _CONTROL.search(value) or not value.strip():
        raise BadInputError(f"{option} {value!r}: must be one non-empty line without control characters.")
    return value


def _checkpoint(value: str) -> str:
    path = PurePosixPath(_plain_value("--checkpoint", value))
    if path.is_absolute() or ".." in path.parts or "\\" in value:
        raise BadInputError(f"--checkpoint {value!r}: give the checkpoint folder relative to the repository root "
                            "(e.g. models/my-finetune), as the CI checkout sees it.")
    return value


def _host_checks(targets: list[str]) -> list[dict[str, str]]:
    """The extra host jobs the installed ones among `targets` declare (a name not installed has none)."""
    try:
        installed = available_targets()
    except EdgepackError:
        installed = {}
    checks = []
    for name in dict.fromkeys(targets):
        job: HostCheckJob | None = getattr(installed.get(name), "ci_host_check", None)
        if job is not None:
            checks.append({"target": name, **asdict(job)})
    return checks


def render_workflow(targets: list[str], checkpoint: str | None = None, install_spec: str | None = None,
                    python_version: str = PYTHON_VERSION, specialists: list[str] | None = None) -> str:
    """Return the workflow YAML for these targets (not checked against the installed targets); with
    `specialists` (a fleet's, built from edgepack.toml) the build matrix is specialist x target."""
    if not targets:
        raise BadInputError("no targets for the workflow; pass --targets raspberry-pi,... or install a target.")
    for name in targets:
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
            raise BadInputError(f"--targets {name!r}: not a target name.")
    host_checks = _host_checks(targets)
    specialists = list(specialists or [])
    _check_names(specialists, "edgepack.toml: [specialists]")
    if specialists and checkpoint is not None:
        raise BadInputError("--checkpoint: a fleet is built from edgepack.toml ([base] and [specialists.NAME]), "
                            "not from one checkpoint; drop --checkpoint.")
    context: dict[str, Any] = {
        "edgepack_version": __version__,
        "targets": list(dict.fromkeys(targets)),
        "checkpoint": _checkpoint(checkpoint) if checkpoint is not None else None,
        "install_spec": _plain_value("--install", install_spec or f"edgepack=={__version__}"),
        "python_version": python_version,
        "host_checks": host_checks,
        "release_needs": ["build", *(c["job_id"] for c in host_checks)],
        "specialists": specialists,
    }
    text = make_environment(templates_dir(), brackets=True).get_template(WORKFLOW_TEMPLATE).render(context)
    leftover = _LEFTOVER.search(text)
    if leftover:
        line = text.count("\n", 0, leftover.start()) + 1
        raise InternalError(f"{templates_dir() / WORKFLOW_TEMPLATE}: line {line} of the output still holds "
                            f"template syntax {leftover.group()!r}")
    return text


def _read_config(config: Path) -> dict[str, Any]:
    """Return edgepack.toml's tables, or {} when there is no such file."""
    if not config.is_file():
        return {}
    try:
        return tomllib.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BadInputError(f"{config}: cannot be read as TOML ({exc}). Fix it, or pass --checkpoint.") from None


def fleet_specialists(data: dict[str, Any], config: Path) -> list[str]:
    """Return the names of the fleet edgepack.toml declares ([specialists.NAME]), or [] for one model."""
    tables = data.get("specialists") or {}
    if not isinstance(tables, dict):
        raise BadInputError(f"{config}: [specialists] must hold one table per specialist, e.g. [specialists.router].")
    if tables and "checkpoint" not in (data.get("base") or {}) and "base" not in (data.get("build") or {}):
        raise BadInputError(f"{config}: declares a fleet ([specialists.NAME]) but not its base model; add [base] "
                            "checkpoint = \"PATH\" (relative to the file), which `edgepack build` reads in CI.")
    names = list(tables)
    _check_names(names, f"{config}: [specialists]")
    return names


def _check_names(names: list[str], source: str) -> None:
    """The build's own rule for specialist names (they become job, folder and artifact names here too)."""
    from packager.fleet import check_specialist_names  # imported here: packager.fleet loads torch, ci init needs none

    check_specialist_names(names, source)


def write_workflow(request: WorkflowRequest, config: Path = Path("edgepack.toml")) -> Path:
    """Write the workflow file atomically and return its path; refuse to overwrite without force.

    Without --checkpoint the workflow's builds read edgepack.toml, so a fleet declared there gets the
    specialist x target matrix; with --checkpoint `edgepack build CHECKPOINT` reads no edgepack.toml.
    """
    names = request.targets or list(available_targets())
    resolve_targets(names)  # unknown names -> BadInputError listing the installed targets
    data = _read_config(config) if request.checkpoint is None else {}
    specialists = fleet_specialists(data, config)
    if request.checkpoint is None and not specialists and not data.get("build", data).get("checkpoint"):
        raise BadInputError(f"no checkpoint: pass --checkpoint PATH (relative to the repository root), or add "
                            f"checkpoint = \"PATH\" to {config}, which `edgepack build` reads in CI.")
    text = render_workflow(names, request.checkpoint, request.install_spec, specialists=specialists)
    out = request.out
    if out.exists() and not request.force:
        raise BadInputError(f"{out}: already exists. Pass --force to replace it, or choose another --out.")
    if out.exists() and not out.is_file():
        raise BadInputError(f"{out}: exists and is not a file; choose another --out.")
    write_text_atomically(out, text, mode=0o644)
    return out
