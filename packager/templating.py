"""Render a target's template folder into a bundle, with explicit per-language escaping.

Templates hold text; escaping lives in packager.escaping and is applied in the template through
short filters (``{{ model_name | sh }}``). Autoescape is off on purpose: no single HTML-flavoured
default is right for shell, systemd, Python and Markdown at once, and an undefined variable is an
error rather than an empty string.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2

from packager import escaping
from packager.errors import InternalError
from packager.resources import templates_dir

TEMPLATE_SUFFIX = ".j2"
# Documents a template folder's context for its authors; never part of a bundle.
SKIPPED_NAMES = frozenset({"CONTEXT.md"})
_PLACEHOLDER_MARKS = ("{{", "{%", "{#")
# A CI workflow's own ${{ }} expressions must pass through: workflow templates use these delimiters.
BRACKET_DELIMITERS = {
    "variable_start_string": "[[", "variable_end_string": "]]",
    "block_start_string": "[%", "block_end_string": "%]",
    "comment_start_string": "[#", "comment_end_string": "#]",
}
_BRACKET_MARKS = ("[[", "[%", "[#")
_EXECUTABLE_SUFFIXES = (".sh",)


def _raise_if_undefined(value: Any) -> None:
    """Raise jinja2's UndefinedError (naming the missing key) before a filter sees an Undefined."""
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises here, with the variable's name in the message


def _text_filter(escaper: Callable[[str], str]) -> Callable[[Any], str]:
    """Return a filter that escapes str values and the decimal form of plain numbers.

    Numbers are accepted so that a port or thread count goes through the same escaper as text;
    bool and None are refused because "True" or "None" in a config file is always a mistake.
    """

    def apply(value: Any) -> str:
        _raise_if_undefined(value)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise TypeError(f"filter for {escaper.__name__}() got {type(value).__name__}: {value!r}")
        return escaper(value if isinstance(value, str) else str(value))

    apply.__name__ = escaper.__name__
    return apply


def json_value(value: Any) -> str:
    """Return any JSON-serialisable value as JSON text (strings via escaping.json_string)."""
    _raise_if_undefined(value)
    if isinstance(value, str):
        return escaping.json_string(value)
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def js_value(value: Any) -> str:
    """Return any JSON-serialisable value as a JS/TS expression, safe inside <script>."""
    if isinstance(value, str):
        return escaping.js_string(value)
    return escaping.js_safe_json(json_value(value))


def format_number(value: float | int | None, spec: str = ".4g") -> str:
    """Return value formatted with spec, or "n/a" for a measurement that was not taken."""
    _raise_if_undefined(value)
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"num filter expects a number or None, got {type(value).__name__}: {value!r}")
    return format(value, spec)


FILTERS: dict[str, Callable[..., str]] = {
    "sh": _text_filter(escaping.shell_quote),
    "systemd_arg": _text_filter(escaping.systemd_exec_arg),
    "systemd": _text_filter(escaping.systemd_value),
    "envval": _text_filter(escaping.env_file_value),
    "json": json_value,
    "js": js_value,
    "kotlin": _text_filter(escaping.kotlin_string),
    "swift": _text_filter(escaping.swift_string),
    "html": _text_filter(escaping.html_text),
    "md": _text_filter(escaping.markdown_text),
    "num": format_number,
}


def _mask_value_braces(value: Any) -> str:
    """Return a substituted value with its braces and brackets neutralised (for the placeholder probe)."""
    return str(value).replace("{", "(").replace("}", ")").replace("[", "(").replace("]", ")")


def make_environment(root: Path, *, probe: bool = False, brackets: bool = False) -> jinja2.Environment:
    """Return the Jinja2 environment templates are rendered with.

    probe=True gives the twin used only for checking: every substituted value has its braces
    masked, so any "{{", "{%" or "{#" left in its output came from the template text itself and
    not from user data (a model may well be called "Bot {#2}"). brackets=True: [[ ]], [% %] and
    [# #] instead (BRACKET_DELIMITERS), for text that holds ${{ }} of its own.
    """
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(root)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_mask_value_braces if probe else None,
        **(BRACKET_DELIMITERS if brackets else {}),
    )
    env.filters.update(FILTERS)
    return env


def _render_relative_path(env: jinja2.Environment, rel: PurePosixPath, context: Mapping[str, Any]) -> Path:
    """Return the output path for a template path, each component rendered from the context.

    A component must render to a plain file or folder name: a slash, "..", or an empty name
    would let a context value choose where in the filesystem the bundle writes.
    """
    parts = []
    last = len(rel.parts) - 1
    for index, part in enumerate(rel.parts):
        rendered = env.from_string(part).render(context) if "{" in part else part
        if index == last and rendered.endswith(TEMPLATE_SUFFIX):
            rendered = rendered[: -len(TEMPLATE_SUFFIX)]
        if rendered in {"", ".", ".."} or "/" in rendered or "\\" in rendered or "\x00" in rendered:
            raise InternalError(
                f"template path {rel} renders to the unsafe name {rendered!r}; "
                "use a slug (packager.escaping.slug) in template file names"
            )
        parts.append(rendered)
    return Path(*parts)


def _is_template(path: Path) -> bool:
    return path.name.endswith(TEMPLATE_SUFFIX)


def render_tree(template_subdir: str, dest: Path, context: Mapping[str, Any],
                bracketed: tuple[str, ...] = ()) -> list[Path]:
    """Render templates/<template_subdir>/ into dest and return the written files, sorted.

    *.j2 files are rendered and lose the suffix, other files are copied byte for byte, file and
    folder names may hold {{ placeholders }}, CONTEXT.md (the folder's documentation) is skipped.
    The templates named in `bracketed` (CI workflows, whose own ${{ }} must pass through) use [[ ]]
    delimiters instead (BRACKET_DELIMITERS).
    Each rendered file is checked for leftover Jinja syntax from its template, and *.sh files
    are made executable.
    """
    root = templates_dir()
    source = root / template_subdir
    if not source.is_dir():
        raise InternalError(f"template folder {source} does not exist (is the wheel missing its data?)")
    # (renderer, placeholder probe) by whether a template uses bracket delimiters
    envs = {brackets: (make_environment(root, brackets=brackets), make_environment(root, probe=True, brackets=brackets))
            for brackets in ((False, True) if bracketed else (False,))}
    dest = Path(dest)
    written: list[Path] = []
    for template in sorted(p for p in source.rglob("*") if p.is_file()):
        rel = PurePosixPath(template.relative_to(source).as_posix())
        if template.name in SKIPPED_NAMES or "__pycache__" in rel.parts:
            continue
        target = dest / _render_relative_path(envs[False][0], rel, context)  # names use the usual delimiters
        target.parent.mkdir(parents=True, exist_ok=True)
        if _is_template(template):
            name = f"{template_subdir}/{rel}"
            brackets = template.name in bracketed
            env, probe_env = envs[brackets]
            _raise_on_placeholder(probe_env.get_template(name).render(context),
                                  f"{root / name} (rendering {target.name})",
                                  _BRACKET_MARKS if brackets else _PLACEHOLDER_MARKS)
            target.write_text(env.get_template(name).render(context), encoding="utf-8")
        else:
            shutil.copyfile(template, target)
        target.chmod(0o755 if target.name.endswith(_EXECUTABLE_SUFFIXES) else 0o644)
        written.append(target)
    return sorted(written)


def _raise_on_placeholder(text: str, where: str, marks: tuple[str, ...] = _PLACEHOLDER_MARKS) -> None:
    for mark in marks:
        index = text.find(mark)
        if index >= 0:
            line = text.count("\n", 0, index) + 1
            raise InternalError(
                f"{where}:{line}: rendered output still contains {mark!r}; the template has "
                "unrendered or doubly-escaped Jinja syntax"
            )


def check_no_placeholders(paths: Iterable[Path]) -> None:
    """Raise InternalError if any of these files still holds {{, {% or {#.

    For files whose every character comes from template text (render_tree applies the same
    check to its probe render); a file that embeds user data may contain braces legitimately.
    """
    for path in paths:
        _raise_on_placeholder(Path(path).read_text(encoding="utf-8"), str(path))
