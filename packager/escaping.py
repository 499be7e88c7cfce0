"""One escaping helper per output language, so templates only ever receive already-safe values.

Templates hold text and no escaping logic; every value that comes from the user (a model name, a
path, a prompt) passes through exactly one of these functions on its way into generated code or
configuration. Each function is pure and raises instead of guessing when a value cannot be
represented faithfully in its target language.

The ``*_string`` helpers return a complete literal, quotes included; the other helpers return text
meant to be placed where the docstring says.
"""

from __future__ import annotations

import html
import json
import re
import unicodedata

# Characters that need no quoting in POSIX sh, in a systemd EnvironmentFile and in a bash
# assignment (no ~, which bash expands after "=" and ":").
_SHELL_SAFE = re.compile(r"[A-Za-z0-9@%+=:,./_-]+")
# C0 controls, DEL and C1 controls: never useful in one-line text, often harmful in a terminal.
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# ...plus the Unicode line and paragraph separators, which editors and Python's splitlines() treat
# as line breaks: blanked too wherever a value must stay on one line.
_LINE_BREAKING_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_LINE_SEPARATORS = {"\u2028": "\\u2028", "\u2029": "\\u2029"}


def _require_str(value: object, helper: str) -> str:
    """Return value if it is a str; escaping anything else is a bug in the caller."""
    if not isinstance(value, str):
        raise TypeError(f"{helper}() escapes str values, got {type(value).__name__}: {value!r}")
    return value


def shell_quote(s: str) -> str:
    """Return s as one POSIX sh word that evaluates to exactly s, whatever it contains.

    Single quotes are the only sh quoting with no special characters inside, so the value is
    wrapped in them and each embedded quote becomes '"'"'. Newlines stay literal inside quotes.
    """
    s = _require_str(s, "shell_quote")
    if "\x00" in s:
        raise ValueError("shell_quote(): a NUL character cannot be passed through a shell word")
    if _SHELL_SAFE.fullmatch(s):
        return s
    return "'" + s.replace("'", "'\"'\"'") + "'"


def _systemd_c_escape(ch: str) -> str:
    named = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    if ch in named:
        return named[ch]
    if ord(ch) < 0x20 or ord(ch) == 0x7F:
        return f"\\x{ord(ch):02x}"
    return ch


def systemd_exec_arg(s: str) -> str:
    """Return s as one argument on an ExecStart= line, read back by systemd as exactly s.

    systemd.service(5) expands specifiers on the whole line, then splits words honouring double
    quotes and C escapes, then substitutes $VARS at start: so % is doubled, $ is doubled, and
    quotes, backslashes and control characters become C escapes, which also keeps the value on
    one line.
    """
    s = _require_str(s, "systemd_exec_arg")
    if "\x00" in s:
        raise ValueError("systemd_exec_arg(): a NUL character cannot be part of a command argument")
    body = "".join(_systemd_c_escape(ch) for ch in s)
    return '"' + body.replace("%", "%%").replace("$", "$$") + '"'


def systemd_value(s: str) -> str:
    """Return s as free text for a unit setting such as Description=, kept on one line.

    Such settings expand specifiers but know no C escapes, so % is doubled and control characters
    (newlines included) become spaces. A trailing odd run of backslashes would make systemd join
    the next line, so it gets one more backslash.
    """
    s = _require_str(s, "systemd_value")
    text = _LINE_BREAKING_CHARS.sub(" ", s).strip().replace("%", "%%")
    trailing = len(text) - len(text.rstrip("\\"))
    if trailing % 2:
        text += "\\"
    return text


def env_file_value(s: str) -> str:
    """Return s as the right-hand side of KEY=... in a file read both by systemd and by sh.

    systemd's EnvironmentFile= parser and `set -a; . file` agree on single-quoted text and on a
    small set of bare characters, so the value is bare when it can be and otherwise made of
    single-quoted runs with each embedded quote written as "'". Control characters other than
    tab and newline are refused: no setting needs them, and systemd's handling of them (a bare CR
    ends the line) differs from sh's.
    """
    s = _require_str(s, "env_file_value")
    bad = sorted({f"U+{ord(ch):04X}" for ch in s if _CONTROL_CHARS.match(ch) and ch not in "\t\n"})
    if bad:
        raise ValueError(f"env_file_value(): control characters {', '.join(bad)} cannot be stored")
    if _SHELL_SAFE.fullmatch(s):
        return s
    return "'" + s.replace("'", "'\"'\"'") + "'"


def json_string(s: str) -> str:
    """Return s as a JSON string literal (also a valid Python string literal).

    Non-ASCII stays unescaped: a \\uD83D\\uDE00 surrogate pair means one character to JSON but two
    to Python, so escaping astral characters would break the Python reading.
    """
    return json.dumps(_require_str(s, "json_string"), ensure_ascii=False)


def js_safe_json(json_text: str) -> str:
    """Return JSON text with characters that end a <script> or a template literal escaped."""
    replacements = {
        "<": "\\u003c",
        ">": "\\u003e",
        "&": "\\u0026",
        "`": "\\u0060",
        "$": "\\u0024",
        **_LINE_SEPARATORS,
    }
    return "".join(replacements.get(ch, ch) for ch in json_text)


def js_string(s: str) -> str:
    """Return s as a JS/TS string literal that is also safe inside <script> and `...` literals.

    JSON escaping plus \\u escapes for < > & (no "</script>" or "<!--"), backtick and $ (no
    template-literal breakout or ${} interpolation) and U+2028/2029 (line terminators in old JS).
    """
    return js_safe_json(json_string(_require_str(s, "js_string")))


def _literal_with_escapes(s: str, named: dict[str, str], unicode_escape: str) -> str:
    out = []
    for ch in s:
        if ch in named:
            out.append(named[ch])
        elif _CONTROL_CHARS.match(ch) or ch in _LINE_SEPARATORS:
            out.append(unicode_escape.format(ord(ch)))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def kotlin_string(s: str) -> str:
    """Return s as a Kotlin string literal; $ is escaped so it never starts a string template."""
    named = {"\\": "\\\\", '"': '\\"', "$": "\\$", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b"}
    return _literal_with_escapes(_require_str(s, "kotlin_string"), named, "\\u{0:04x}")


def swift_string(s: str) -> str:
    """Return s as a Swift string literal; escaping \\ also defuses \\( interpolation."""
    named = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\x00": "\\0"}
    return _literal_with_escapes(_require_str(s, "swift_string"), named, "\\u{{{0:x}}}")


def html_text(s: str) -> str:
    """Return s escaped for HTML text and for quoted attribute values."""
    return html.escape(_require_str(s, "html_text"), quote=True)


# CommonMark lets any ASCII punctuation be backslash-escaped; these are the ones that can start
# markup somewhere (emphasis, links, HTML, headings, lists, tables, strikethrough, math, entities).
_MARKDOWN_SPECIALS = frozenset("\\`*_{}[]()<>#+-.!|~$&")


def markdown_text(s: str) -> str:
    """Return s as literal inline Markdown text, safe in a paragraph or a GFM table cell.

    Newlines and other control characters become spaces so a value cannot end a table row or
    start a block.
    """
    text = _LINE_BREAKING_CHARS.sub(" ", _require_str(s, "markdown_text")).strip()
    return "".join("\\" + ch if ch in _MARKDOWN_SPECIALS else ch for ch in text)


_SLUG_MAX = 48


def slug(s: str) -> str:
    """Return a safe identifier for file, unit and user names: [a-z0-9-], <= 48 chars, never empty.

    Accents are folded to ASCII first so "Café" becomes "cafe" rather than "caf".
    """
    folded = unicodedata.normalize("NFKD", _require_str(s, "slug")).encode("ascii", "ignore").decode()
    text = re.sub(r"[^a-z0-9]+", "-", folded.lower()).strip("-")
    text = text[:_SLUG_MAX].rstrip("-")
    return text or "model"
