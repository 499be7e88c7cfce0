"""The escapers and render_tree: every escaper round-trips through a real parser where one exists."""

from __future__ import annotations

import ast
import html
import json
import re
import subprocess
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from external_tools import bash_read_env_file, missing, require_tool, systemd_read_env_file

from packager import escaping, templating
from packager.errors import InternalError

# Strings that break naive quoting somewhere: quotes, substitutions, specifiers, escapes, newlines,
# markup, template syntax, non-ASCII and Unicode line separators.
HOSTILE = [
    "",
    "plain-name_1.0",
    "it's",
    "'",
    "''",
    '"',
    'a "q" $(touch /tmp/pwned) `rm -rf /` %n\nline2 ${HOME} \\ end',
    "trailing backslash\\",
    "two trailing backslashes\\\\",
    "\\\nbackslash-newline",
    "$$ %% $HOME %i %%n",
    "tab\there  spaces  ",
    "  leading and trailing  ",
    "-n",
    "*",
    "~root",
    "{{ jinja }} {% tag %} {#2}",
    "# heading\n- list\n1. item\n> quote",
    "<script>alert(1)</script>&amp;",
    "unicode é ü 日本語 😀 \u2028 \u2029 \u00a0",
    "; ls ;",
]
# Values with control characters other than tab and newline, which some languages cannot carry.
CONTROL = ["carriage\rreturn", "escape \x1b[31mred", "bell\x07", "crlf\r\n"]


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, capture_output=True, check=False, timeout=30, **kwargs)


# --- shell ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "dash"])
@pytest.mark.parametrize("value", HOSTILE + CONTROL)
def test_shell_quote_round_trips_through_a_real_shell(shell: str, value: str) -> None:
    path = require_tool(shell)
    result = run([path, "-c", "printf '%s' " + escaping.shell_quote(value)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode("utf-8") == value


def test_shell_quote_leaves_plain_words_bare_and_quotes_everything_else() -> None:
    assert escaping.shell_quote("model-Q4_K_M.gguf") == "model-Q4_K_M.gguf"
    assert escaping.shell_quote("") == "''"
    assert escaping.shell_quote("~root") == "'~root'"
    assert escaping.shell_quote("it's") == "'it'\"'\"'s'"


def test_shell_quote_refuses_nul_which_no_shell_word_can_hold() -> None:
    with pytest.raises(ValueError, match="NUL"):
        escaping.shell_quote("a\x00b")


# --- systemd ----------------------------------------------------------------------------------


def systemd_reads_exec_arg(text: str) -> str:
    """Decode one ExecStart= argument the way systemd.service(5) describes it.

    Specifiers are expanded on the whole line first (our escaper only emits %%), then the word is
    unquoted with C escapes, then $$ becomes $ at start-up. This documents the reading the
    escaper targets; systemd-analyze below checks the same lines with systemd itself.
    """
    text = text.replace("%%", "%")
    assert text.startswith('"') and text.endswith('"') and len(text) >= 2, text
    body, out, index = text[1:-1], [], 0
    singles = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"'}
    while index < len(body):
        ch = body[index]
        assert ch != '"', f"unescaped quote would end the word early: {text!r}"
        assert ch not in "\n\r", f"raw line break in an ExecStart= line: {text!r}"
        if ch == "\\":
            code = body[index + 1]
            if code in singles:
                out.append(singles[code])
                index += 2
            else:
                assert code == "x", f"unexpected escape \\{code}"
                out.append(chr(int(body[index + 2 : index + 4], 16)))
                index += 4
        else:
            out.append(ch)
            index += 1
    decoded = "".join(out)
    assert "$" not in decoded.replace("$$", ""), f"a lone $ would start a variable: {text!r}"
    return decoded.replace("$$", "$")


@pytest.mark.parametrize("value", HOSTILE + CONTROL)
def test_systemd_exec_arg_is_one_line_and_decodes_to_the_original(value: str) -> None:
    quoted = escaping.systemd_exec_arg(value)
    assert "\n" not in quoted and "\r" not in quoted
    assert systemd_reads_exec_arg(quoted) == value


def test_systemd_exec_arg_doubles_percent_and_dollar() -> None:
    assert escaping.systemd_exec_arg("50% of $HOME") == '"50%% of $$HOME"'
    assert escaping.systemd_exec_arg('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'


@pytest.mark.parametrize("value", HOSTILE + CONTROL)
def test_systemd_value_stays_on_one_line_with_specifiers_escaped(value: str) -> None:
    text = escaping.systemd_value(value)
    assert len(text.splitlines()) <= 1 and not re.search(r"[\x00-\x1f\x7f]", text)
    assert "%" not in text.replace("%%", "")
    trailing = len(text) - len(text.rstrip("\\"))
    assert trailing % 2 == 0, "an odd trailing backslash would continue the line"


def test_systemd_value_keeps_ordinary_text_readable() -> None:
    assert escaping.systemd_value("My Model 100%\nv2") == "My Model 100%% v2"


def test_systemd_analyze_accepts_units_whose_description_and_exec_start_hold_hostile_text(
    tmp_path: Path,
) -> None:
    analyze = require_tool("systemd-analyze")
    program = tmp_path / "program"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    units = []
    for index, value in enumerate(HOSTILE + CONTROL):
        unit = tmp_path / f"edgepack-escape-{index}.service"
        unit.write_text(
            "[Unit]\n"
            f"Description={escaping.systemd_value(value)}\n\n"
            "[Service]\n"
            f"ExecStart={program} --name {escaping.systemd_exec_arg(value)} --tail ok\n"
        )
        units.append(str(unit))
    result = run([analyze, "verify", "--man=no", *units])
    assert result.returncode == 0 and result.stderr == b"" and result.stdout == b"", result.stderr.decode()


# --- env files: systemd and sh must agree -------------------------------------------------------


def test_env_file_values_read_back_identically_by_bash_and_by_systemd(tmp_path: Path) -> None:
    values = {f"EDGEPACK_TEST_{i}": value for i, value in enumerate(HOSTILE)}
    env_file = tmp_path / "test.env"
    env_file.write_text(
        "# comment line\n" + "".join(f"{key}={escaping.env_file_value(v)}\n" for key, v in values.items())
    )
    assert bash_read_env_file(str(env_file), "EDGEPACK_TEST_") == values
    assert systemd_read_env_file(str(env_file)) == values


def test_env_file_value_leaves_plain_values_bare() -> None:
    assert escaping.env_file_value("127.0.0.1") == "127.0.0.1"
    assert escaping.env_file_value("--no-webui") == "--no-webui"
    assert escaping.env_file_value("--no-webui --temp 0.2") == "'--no-webui --temp 0.2'"
    assert escaping.env_file_value("") == "''"


@pytest.mark.parametrize("value", CONTROL)
def test_env_file_value_refuses_control_characters_systemd_would_mangle(value: str) -> None:
    with pytest.raises(ValueError, match="control characters"):
        escaping.env_file_value(value)


# --- JSON, JS/TS --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", HOSTILE + CONTROL + ["\x00nul"])
def test_json_string_is_both_a_json_and_a_python_string_literal(value: str) -> None:
    literal = escaping.json_string(value)
    assert json.loads(literal) == value
    assert ast.literal_eval(literal) == value


def test_js_string_round_trips_through_node_as_literal_and_inside_template_literals(tmp_path: Path) -> None:
    node = require_tool("node")
    values = HOSTILE + CONTROL + ["</script><!--", "${globalThis.pwned = 1}", "`"]
    literals = [escaping.js_string(v) for v in values]
    script = tmp_path / "check.js"
    script.write_text(
        "const plain = [" + ", ".join(literals) + "];\n"
        "const templated = [" + ", ".join(f"`${{{lit}}}`" for lit in literals) + "];\n"
        "process.stdout.write(JSON.stringify({plain, templated, pwned: globalThis.pwned ?? null}));\n",
        encoding="utf-8",
    )
    result = run([node, str(script)])
    assert result.returncode == 0, result.stderr.decode()
    decoded = json.loads(result.stdout)
    assert decoded == {"plain": values, "templated": values, "pwned": None}


@pytest.mark.parametrize("value", HOSTILE)
def test_js_string_has_no_character_that_ends_a_script_or_template_literal(value: str) -> None:
    literal = escaping.js_string(value)
    assert not set(literal) & set("<>&`$\u2028\u2029")


# --- Kotlin and Swift (no compiler on the build host: decoded by each language's escape rules) ---


def decode_literal(literal: str, singles: dict[str, str], unicode_escape: str) -> str:
    assert literal.startswith('"') and literal.endswith('"')
    body, out, index = literal[1:-1], [], 0
    while index < len(body):
        ch = body[index]
        assert ch not in '"\n\r', f"{ch!r} unescaped in {literal!r}"
        if ch != "\\":
            out.append(ch)
            index += 1
            continue
        code = body[index + 1]
        if code in singles:
            out.append(singles[code])
            index += 2
            continue
        match = re.compile(unicode_escape).match(body, index)
        assert match, f"escape \\{code} is not valid in {literal!r}"
        out.append(chr(int(match.group(1), 16)))
        index = match.end()
    return "".join(out)


@pytest.mark.parametrize("value", [*HOSTILE, *CONTROL, "${x} $x \\$", "\b\f"])
def test_kotlin_string_decodes_to_the_original_and_never_interpolates(value: str) -> None:
    literal = escaping.kotlin_string(value)
    # Kotlin's escapes (kotlinlang.org/docs/characters.html); a bare $ would start a template.
    singles = {"t": "\t", "b": "\b", "n": "\n", "r": "\r", "'": "'", '"': '"', "\\": "\\", "$": "$"}
    assert decode_literal(literal, singles, r"\\u([0-9a-fA-F]{4})") == value
    assert not re.search(r"(?<!\\)(?:\\\\)*\$", literal)


@pytest.mark.parametrize("value", [*HOSTILE, *CONTROL, "\\(pwned)", "\x00"])
def test_swift_string_decodes_to_the_original_and_never_interpolates(value: str) -> None:
    literal = escaping.swift_string(value)
    # Swift's escapes (The Swift Programming Language, "Special Characters in String Literals").
    singles = {"0": "\0", "\\": "\\", "t": "\t", "n": "\n", "r": "\r", '"': '"', "'": "'"}
    assert decode_literal(literal, singles, r"\\u\{([0-9a-fA-F]{1,8})\}") == value


# --- HTML and Markdown --------------------------------------------------------------------------


class _TagCounter(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags = 0
        self.text = ""

    def handle_starttag(self, tag: str, attrs: object) -> None:
        self.tags += 1

    def handle_data(self, data: str) -> None:
        self.text += data


@pytest.mark.parametrize("value", HOSTILE)
def test_html_text_is_parsed_as_text_only(value: str) -> None:
    parser = _TagCounter()
    parser.feed(f'<p title="{escaping.html_text(value)}">{escaping.html_text(value)}</p>')
    parser.close()
    assert parser.tags == 1
    assert parser.text == value
    assert html.unescape(escaping.html_text(value)) == value


def _markdown_parser() -> Any:
    try:
        from markdown_it import MarkdownIt
    except ImportError:
        missing("markdown-it-py")
    return MarkdownIt("commonmark").enable("table").enable("strikethrough")


def _one_line(value: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", " ", value).strip()


@pytest.mark.parametrize("value", HOSTILE + CONTROL)
def test_markdown_text_is_literal_text_in_a_paragraph_and_in_a_table_cell(value: str) -> None:
    md = _markdown_parser()
    escaped = escaping.markdown_text(value)
    assert "\n" not in escaped

    tokens = md.parse(escaped)
    if _one_line(value):
        assert [t.type for t in tokens] == ["paragraph_open", "inline", "paragraph_close"]
        assert [c.type for c in tokens[1].children] == ["text"]
        assert tokens[1].children[0].content == _one_line(value)

    table = md.parse(f"| name | other |\n|---|---|\n| {escaped} | x |\n")
    cells = [t for t in table if t.type == "inline"]
    assert len(cells) == 4, "the value must not add or remove table cells"
    assert "".join(c.content for c in cells[2].children) == _one_line(value)
    assert all(c.type == "text" for c in cells[2].children)


# --- slug ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("My Tiny Model", "my-tiny-model"),
        ("Café Ünïcode", "cafe-unicode"),
        ("../../etc/passwd", "etc-passwd"),
        ("gemma-3-270m_it Q4_K_M", "gemma-3-270m-it-q4-k-m"),
        ("", "model"),
        ("!!!", "model"),
        ("日本語", "model"),
    ],
)
def test_slug_is_a_lowercase_dash_separated_identifier(name: str, expected: str) -> None:
    assert escaping.slug(name) == expected


@pytest.mark.parametrize("value", [*HOSTILE, *CONTROL, "x" * 100, "a-" * 40 + "b"])
def test_slug_is_always_safe_for_file_unit_and_user_names(value: str) -> None:
    result = escaping.slug(value)
    assert re.fullmatch(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?", result)
    assert len(result) <= 48


@pytest.mark.parametrize(
    "escaper",
    [
        escaping.shell_quote,
        escaping.systemd_exec_arg,
        escaping.systemd_value,
        escaping.env_file_value,
        escaping.json_string,
        escaping.js_string,
        escaping.kotlin_string,
        escaping.swift_string,
        escaping.html_text,
        escaping.markdown_text,
        escaping.slug,
    ],
)
def test_escapers_refuse_non_strings_instead_of_printing_their_repr(escaper: Callable[[Any], str]) -> None:
    with pytest.raises(TypeError):
        escaper(None)


# --- render_tree --------------------------------------------------------------------------------


@pytest.fixture
def template_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A templates/ folder of our own, so render_tree's rules are tested apart from real bundles."""
    root = tmp_path / "templates"
    (root / "demo" / "sub").mkdir(parents=True)
    monkeypatch.setattr(templating, "templates_dir", lambda: root)
    return root


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_j2_files_are_rendered_and_lose_the_suffix_and_other_files_are_copied(
    template_root: Path, tmp_path: Path
) -> None:
    write(template_root / "demo" / "hello.txt.j2", "Hello {{ name | sh }}\n")
    write(template_root / "demo" / "static.js", "const t = `${x}`; // {{ not jinja here }}\n")
    out = templating.render_tree("demo", tmp_path / "out", {"name": "a b"})
    assert [p.name for p in out] == ["hello.txt", "static.js"]
    assert (tmp_path / "out" / "hello.txt").read_text() == "Hello 'a b'\n"
    assert (tmp_path / "out" / "static.js").read_text() == "const t = `${x}`; // {{ not jinja here }}\n"


def test_names_with_placeholders_are_rendered_from_the_context(template_root: Path, tmp_path: Path) -> None:
    write(template_root / "demo" / "{{ slug }}" / "edgepack-{{ slug }}.service.j2", "x\n")
    out = templating.render_tree("demo", tmp_path / "out", {"slug": "tiny"})
    assert out == [tmp_path / "out" / "tiny" / "edgepack-tiny.service"]


@pytest.mark.parametrize("bad", ["../escape", "a/b", "..", ""])
def test_a_name_placeholder_that_renders_a_path_is_refused(template_root: Path, tmp_path: Path, bad: str) -> None:
    write(template_root / "demo" / "{{ slug }}" / "a.txt.j2", "x\n")
    with pytest.raises(InternalError, match="unsafe name"):
        templating.render_tree("demo", tmp_path / "out", {"slug": bad})


def test_context_md_documents_the_folder_and_never_lands_in_the_bundle(template_root: Path, tmp_path: Path) -> None:
    write(template_root / "demo" / "CONTEXT.md", "{{ documented }}\n")
    write(template_root / "demo" / "a.txt.j2", "a\n")
    assert [p.name for p in templating.render_tree("demo", tmp_path / "out", {})] == ["a.txt"]


def test_shell_scripts_are_executable_and_everything_else_is_not(template_root: Path, tmp_path: Path) -> None:
    write(template_root / "demo" / "install.sh.j2", "#!/bin/sh\n")
    write(template_root / "demo" / "copied.sh", "#!/bin/sh\n")
    write(template_root / "demo" / "README.md.j2", "hi\n")
    modes = {p.name: p.stat().st_mode & 0o777 for p in templating.render_tree("demo", tmp_path / "o", {})}
    assert modes == {"install.sh": 0o755, "copied.sh": 0o755, "README.md": 0o644}


def test_rendered_paths_are_returned_sorted(template_root: Path, tmp_path: Path) -> None:
    for name in ["b.txt.j2", "a.txt", "sub/c.txt.j2", "sub/a.txt.j2"]:
        write(template_root / "demo" / name, "x\n")
    out = templating.render_tree("demo", tmp_path / "out", {})
    assert out == sorted(out) and len(out) == 4


def test_a_missing_context_key_is_an_error_not_an_empty_string(template_root: Path, tmp_path: Path) -> None:
    write(template_root / "demo" / "a.txt.j2", "{{ model_name }}\n")
    with pytest.raises(Exception, match="model_name"):
        templating.render_tree("demo", tmp_path / "out", {})


def test_autoescape_is_off_so_only_the_chosen_filter_escapes(template_root: Path, tmp_path: Path) -> None:
    write(template_root / "demo" / "a.txt.j2", "{{ v }}|{{ v | html }}|{{ v | json }}\n")
    templating.render_tree("demo", tmp_path / "out", {"v": "<&>"})
    assert (tmp_path / "out" / "a.txt").read_text() == '<&>|&lt;&amp;&gt;|"<&>"\n'


def test_template_text_that_leaves_jinja_syntax_in_the_output_is_an_internal_error(
    template_root: Path, tmp_path: Path
) -> None:
    write(template_root / "demo" / "a.txt.j2", "ok: {{ name }}\nvalue: {% raw %}{{ name }}{% endraw %}\n")
    with pytest.raises(InternalError, match=r"a\.txt\.j2 \(rendering a\.txt\):2: .*'\{\{'"):
        templating.render_tree("demo", tmp_path / "out", {"name": "x"})


def test_braces_in_user_data_are_not_mistaken_for_leftover_placeholders(template_root: Path, tmp_path: Path) -> None:
    write(template_root / "demo" / "a.py.j2", "NAME = {{ name | json }}\n")
    templating.render_tree("demo", tmp_path / "out", {"name": "Bot {#2} {{x}} {%y%}"})
    assert (tmp_path / "out" / "a.py").read_text() == 'NAME = "Bot {#2} {{x}} {%y%}"\n'


def test_check_no_placeholders_names_the_file_and_line(tmp_path: Path) -> None:
    clean, dirty = tmp_path / "clean.txt", tmp_path / "dirty.txt"
    clean.write_text("no marks { } here\n")
    dirty.write_text("line one\nline {# two\n")
    templating.check_no_placeholders([clean])
    with pytest.raises(InternalError, match=r"dirty\.txt:2"):
        templating.check_no_placeholders([clean, dirty])


def test_every_escaper_is_a_filter_under_its_short_name() -> None:
    env = templating.make_environment(Path("."))
    assert {"sh", "systemd_arg", "systemd", "envval", "json", "js", "kotlin", "swift", "html", "md"} <= set(env.filters)
    render = env.from_string
    assert render("{{ v | sh }}").render(v="a b") == "'a b'"
    assert render("{{ v | systemd_arg }}").render(v="50%") == '"50%%"'
    assert render("{{ v | envval }}").render(v=8080) == "8080"
    assert render("{{ v | json }}").render(v=[1, 2]) == "[1, 2]"
    assert render("{{ v | js }}").render(v={"a": "</script>"}) == '{"a": "\\u003c/script\\u003e"}'
    assert render("{{ v | num('.2f') }}|{{ n | num }}").render(v=0.125, n=None) == "0.12|n/a"


@pytest.mark.parametrize("value", [None, True, ["list"]])
def test_text_filters_refuse_none_bool_and_containers(value: object) -> None:
    env = templating.make_environment(Path("."))
    with pytest.raises(TypeError):
        env.from_string("{{ v | sh }}").render(v=value)


def test_a_workflow_template_named_bracketed_uses_brackets_so_the_ci_services_expressions_pass_through(
    template_root: Path, tmp_path: Path
) -> None:
    write(template_root / "demo" / "ci.yml.j2",
          "[# a comment #]\nname: [[ name ]]\n[% for s in socs %]\n- run: x --soc [[ s ]] ${{ matrix.os }}\n"
          "[% endfor %]\n")
    write(template_root / "demo" / "project.yml.j2", "{% if name %}\nname: {{ name }}\n{% endif %}\n")
    templating.render_tree("demo", tmp_path / "out", {"name": "n [[1]]", "socs": ["A", "B"]}, bracketed=("ci.yml.j2",))
    assert (tmp_path / "out" / "project.yml").read_text() == "name: n [[1]]\n"  # not named: the usual delimiters
    assert (tmp_path / "out" / "ci.yml").read_text() == (
        "name: n [[1]]\n- run: x --soc A ${{ matrix.os }}\n- run: x --soc B ${{ matrix.os }}\n")
    write(template_root / "demo" / "ci.yml.j2", "name: [% raw %][[ name ]][% endraw %]\n")
    with pytest.raises(InternalError, match=r"ci\.yml\.j2 \(rendering ci\.yml\):1: .*'\[\['"):
        templating.render_tree("demo", tmp_path / "out2", {"name": "x"}, bracketed=("ci.yml.j2",))
