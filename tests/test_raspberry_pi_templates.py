"""The Raspberry Pi bundle's text files, checked with the tools that will read them on the Pi.

Every check runs twice: with an ordinary model name and with one built to break out of every
quoting it passes through. The hostile name must arrive everywhere as data and nowhere as code.
"""

from __future__ import annotations

import ast
import http.server
import json
import os
import re
import runpy
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import pytest
from external_tools import bash_read_env_file, missing, require_tool, systemd_read_env_file

from packager import escaping, templating
from packager.contract import Contract, fill_template_source, render_prompt
from packager.resources import templates_dir

TEMPLATE_DIR = "raspberry-pi"
GGUF = "model-Q4_K_M.gguf"
# llama-server flags the unit may use; each was checked against common/arg.cpp of llama.cpp
# (the copy vendored in llama-cpp-python 0.3.36, and present in tag b11312). Add a flag here only
# after checking it there.
KNOWN_LLAMA_SERVER_FLAGS = {
    "--model",
    "--alias",
    "--host",
    "--port",
    "--ctx-size",
    "--threads",
    "--parallel",
    "--jinja",
    "--no-webui",
    "--lora",
    "--swa-full",  # checked with the llama-server built from that copy: "use full-size SWA cache"
}
LORA = "adapter-support-bot.gguf"
# The adapters a bundle may carry: none (merged), one applied to every request, or a fleet's.
ADAPTERS = {
    "none": [],
    "one": [{"name": "support-bot", "file": LORA, "size_mb": 5.62}],
    "fleet": [{"name": "router", "file": "adapter-router.gguf", "size_mb": 5.62},
              {"name": "extractor", "file": "adapter-extractor.gguf", "size_mb": 3.1}],
}


# A fleet's specialists' contracts: the shared vectors' chat-formatted one (instruction and input) and the one
# whose template holds literal braces, so the client's rendering is held to the spec's hardest cases.
VECTORS = json.loads((Path(__file__).parent / "vectors" / "contract.json").read_text(encoding="utf-8"))
FLEET_CONTRACTS = {"router": Contract.from_dict(VECTORS["contracts"]["labels_chat"]),
                   "extractor": Contract.from_dict(VECTORS["contracts"]["braces"])}


def hostile_name(marker: Path) -> str:
    """A model name that runs `touch marker` if any file evaluates it instead of quoting it."""
    return (
        f"a \"q\" 's' $(touch {marker}) `touch {marker}` '; touch {marker}; ' %n %% {{#2}} {{{{x}}}}\n"
        f"line2 ${{HOME}} $HOME \\ end | *x* <b>&amp;</b> \x1b[31m\u2028 end\\"
    )


def make_context(model_name: str, *, chat: bool = True, adapters: str = "none",
                 full_window_cache: bool = True) -> dict[str, Any]:
    return {
        "model_name": model_name,
        "slug": escaping.slug(model_name),
        "gguf_file": GGUF,
        "quant": "Q4_K_M",
        "context_length": 4096,
        "threads": 4,
        "port": 8080,
        "host": "127.0.0.1",
        "llama_cpp_tag": "b11312",
        "chat_template_present": chat,
        "full_window_cache": full_window_cache,
        "bos_ids": [2],
        "eos_ids": [1, 106],
        "verification_rows": [
            {
                "artifact": GGUF,
                "level": "executed",
                "top1": 0.97,
                "kl": 0.0123,
                "ppl": 12.5,
                "ppl_ref": 12.1,
            },
            {
                "artifact": "model|F16 *x*",
                "level": "structural",
                "top1": None,
                "kl": None,
                "ppl": None,
                "ppl_ref": None,
            },
        ],
        "edgepack_version": "0.1.0",
        "size_mb": 241.53,
        "adapters": ADAPTERS[adapters],
        "select_adapter": adapters == "fleet",
        "specialist_prompts": {name: {key: getattr(c.prompt, key) for key in ("prefix", "template", "suffix")}
                               for name, c in FLEET_CONTRACTS.items()} if adapters == "fleet" else {},
        "fill_template_source": fill_template_source(),
    }


class Bundle:
    """A rendered bundle folder plus the context it was rendered from."""

    def __init__(self, root: Path, context: dict[str, Any], marker: Path) -> None:
        self.root = root
        self.context = context
        self.marker = marker
        self.slug = context["slug"]

    @property
    def unit(self) -> Path:
        return self.root / f"edgepack-{self.slug}.service"

    @property
    def env_file(self) -> Path:
        return self.root / f"{self.slug}.env"

    def file(self, name: str) -> Path:
        return self.root / name


def render_bundle(tmp_path: Path, kind: str, chat: bool = True, marker: Path | None = None,
                  adapters: str = "none") -> Bundle:
    marker = marker or tmp_path / "pwned"
    name = "Tiny Support Bot v2" if kind == "normal" else hostile_name(marker)
    context = make_context(name, chat=chat, adapters=adapters)
    root = tmp_path / "bundle"
    templating.render_tree(TEMPLATE_DIR, root, context)
    (root / GGUF).write_bytes(b"GGUF" + bytes(64))  # the target writes the real model here
    for adapter in ADAPTERS[adapters]:
        (root / adapter["file"]).write_bytes(b"GGUF" + bytes(32))
    return Bundle(root, context, marker)


@pytest.fixture(params=["normal", "hostile"])
def bundle(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bundle]:
    rendered = render_bundle(tmp_path, request.param)
    yield rendered
    assert not rendered.marker.exists(), "the model name was executed somewhere"


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=60, **kwargs)


# --- the bundle as a whole ----------------------------------------------------------------------


def test_bundle_holds_the_installer_unit_settings_client_and_readme(bundle: Bundle) -> None:
    names = sorted(p.name for p in bundle.root.iterdir())
    assert names == sorted(
        [
            "install.sh",
            f"edgepack-{bundle.slug}.service",
            f"{bundle.slug}.env",
            "client.py",
            "README.md",
            GGUF,
        ]
    )
    assert os.access(bundle.file("install.sh"), os.X_OK)
    assert not os.access(bundle.file("client.py"), os.X_OK)


def _documented_keys() -> set[str]:
    text = (templates_dir() / TEMPLATE_DIR / "CONTEXT.md").read_text()
    comment = text.split("-->", 1)[0]
    keys: set[str] = set()
    for match in re.finditer(r"^  ([a-z_]+(?:, [a-z_]+)*)\s{2,}(?:str|int|bool|float|list|dict)", comment, re.M):
        keys.update(match.group(1).split(", "))
    return keys


def test_context_md_documents_exactly_the_keys_the_templates_use() -> None:
    folder = templates_dir() / TEMPLATE_DIR
    env = templating.make_environment(templates_dir())
    used: set[str] = set()
    for path in folder.rglob("*"):
        if path.name == "CONTEXT.md" or not path.is_file():
            continue
        used |= jinja2.meta.find_undeclared_variables(env.parse(path.name))
        if path.name.endswith(".j2"):
            used |= jinja2.meta.find_undeclared_variables(env.parse(path.read_text()))
    assert _documented_keys() == used == set(make_context("x"))


def test_every_context_key_is_required(tmp_path: Path) -> None:
    context = make_context("x")
    del context["llama_cpp_tag"]
    with pytest.raises(jinja2.UndefinedError, match="llama_cpp_tag"):
        templating.render_tree(TEMPLATE_DIR, tmp_path / "out", context)


# --- install.sh ---------------------------------------------------------------------------------


def test_install_script_parses_with_bash(bundle: Bundle) -> None:
    result = run([require_tool("bash"), "-n", str(bundle.file("install.sh"))])
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("kind", ["normal", "hostile"])
def test_install_script_has_no_shellcheck_findings(tmp_path: Path, kind: str, chat: bool) -> None:
    rendered = render_bundle(tmp_path, kind, chat)
    result = run([require_tool("shellcheck"), str(rendered.file("install.sh"))])
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_install_script_reuses_an_existing_server_and_builds_the_tagged_one_otherwise(bundle: Bundle) -> None:
    script = bundle.file("install.sh").read_text()
    assert 'if [[ -x "$SERVER_BIN" ]]' in script and "command -v llama-server" in script
    assert "readonly LLAMA_CPP_TAG=b11312" in script
    assert "-DLLAMA_CURL=OFF -DGGML_NATIVE=ON" in script
    assert "-DBUILD_SHARED_LIBS=OFF" in script, "the installed binary must not need the deleted build tree"
    assert 'run install -m 755 "${src}/build/bin/llama-server" "$SERVER_BIN"' in script
    assert "systemctl enable --now" in script


STUBBED_COMMANDS = [
    "apt-get",
    "git",
    "cmake",
    "make",
    "install",
    "useradd",
    "ln",
    "mv",
    "rm",
    "mkdir",
    "cp",
    "chmod",
    "chown",
    "systemctl",
    "sleep",
]


def stub_path(folder: Path) -> tuple[dict[str, str], Path]:
    """Return an environment whose PATH starts with stubs that log any system-changing command.

    Under --dry-run none of them may run; `systemctl is-active` (a read-only query) answers
    "inactive" without logging.
    """
    stubs, log = folder / "stubs", folder / "stub-calls.log"
    stubs.mkdir(exist_ok=True)
    log.write_text("")
    log.chmod(0o666)
    for name in STUBBED_COMMANDS:
        stub = stubs / name
        stub.write_text(
            "#!/bin/sh\n"
            + ('[ "$1" = is-active ] && exit 3\n' if name == "systemctl" else "")
            + f'printf "%s\\n" "{name} $*" >> "{log}"\n'
        )
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
    return env, log


def test_dry_run_prints_every_step_and_changes_nothing(bundle: Bundle, tmp_path: Path) -> None:
    env, log = stub_path(tmp_path)
    result = run([require_tool("bash"), str(bundle.file("install.sh")), "--dry-run"], env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert log.read_text() == "", "a command that changes the system ran under --dry-run"
    out = result.stdout
    unit = f"edgepack-{bundle.slug}.service"
    model_dst = f"/opt/edgepack/{bundle.slug}/{GGUF}"
    assert f"[dry-run] install -m 644 {bundle.root}/{GGUF} {model_dst}.partial" in out
    assert f"[dry-run] mv -f {model_dst}.partial {model_dst}" in out
    assert f"[dry-run] install -m 644 {bundle.env_file} /etc/edgepack/{bundle.slug}.env" in out
    assert f"[dry-run] install -m 644 {bundle.unit} /etc/systemd/system/{unit}" in out
    assert f"[dry-run] systemctl enable --now {unit}" in out
    assert "dry run finished: nothing was changed" in out
    if not (Path("/usr/local/bin/llama-server").exists() or shutil.which("llama-server", path=env["PATH"])):
        assert "[dry-run] git clone --depth 1 --branch b11312 https://github.com/ggml-org/llama.cpp" in out
        assert "-DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=ON" in out
        assert "--target llama-server" in out
        assert (
            "[dry-run] install -m 755 /var/tmp/edgepack-build/llama.cpp-b11312/build/bin/llama-server "
            "/usr/local/bin/llama-server" in out
        )
    # The name is printed (control characters blanked), as text.
    first_line = out.split("\n")[0 if os.geteuid() == 0 else 1]
    display = re.sub(r"[\x00-\x1f\x7f\u2028\u2029]", " ", bundle.context["model_name"])
    assert first_line == f"==> installing {display} as {unit}"


def _as_unprivileged_user(args: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return args
    return [require_tool("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups", *args]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder user nobody can use too (pytest's tmp folders are private to root)."""
    shared = Path(tempfile.mkdtemp(prefix="edgepack-test-"))
    try:
        shared.chmod(0o755)
        (shared / "markers").mkdir(mode=0o1777)
        (shared / "markers").chmod(0o1777)
        yield shared
    finally:
        shutil.rmtree(shared)


@pytest.fixture
def world_readable_bundle(shared_dir: Path) -> Iterator[Bundle]:
    rendered = render_bundle(shared_dir, "hostile", marker=shared_dir / "markers" / "pwned")
    for path in [rendered.root, *rendered.root.iterdir()]:
        path.chmod(0o755 if path.is_dir() or path.suffix == ".sh" else 0o644)
    yield rendered
    assert not rendered.marker.exists(), "the model name was executed somewhere"


def test_a_real_install_as_a_normal_user_is_refused_with_a_clear_message(
    world_readable_bundle: Bundle, shared_dir: Path
) -> None:
    env, log = stub_path(shared_dir)
    args = _as_unprivileged_user([require_tool("bash"), str(world_readable_bundle.file("install.sh"))])
    result = run(args, env=env, cwd="/")
    assert result.returncode == 1
    assert "must run as root" in result.stderr and "sudo bash install.sh" in result.stderr
    assert log.read_text() == ""


def test_a_dry_run_as_a_normal_user_is_allowed(world_readable_bundle: Bundle, shared_dir: Path) -> None:
    env, log = stub_path(shared_dir)
    args = _as_unprivileged_user([require_tool("bash"), str(world_readable_bundle.file("install.sh")), "-n"])
    result = run(args, env=env, cwd="/")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dry run as a normal user" in result.stdout
    assert log.read_text() == ""


def test_an_unknown_option_is_refused_before_anything_happens(bundle: Bundle, tmp_path: Path) -> None:
    env, log = stub_path(tmp_path)
    result = run([require_tool("bash"), str(bundle.file("install.sh")), "--force"], env=env)
    assert result.returncode == 1 and "unknown option: --force" in result.stderr
    assert log.read_text() == ""


# --- the systemd unit ---------------------------------------------------------------------------


def exec_start_words(unit_text: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", unit_text)
    line = next(x for x in joined.splitlines() if x.startswith("ExecStart="))
    return line.removeprefix("ExecStart=").split()


def test_unit_runs_llama_server_with_the_settings_from_the_env_file(bundle: Bundle) -> None:
    text = bundle.unit.read_text()
    words = exec_start_words(text)
    assert words[0] == "/usr/local/bin/llama-server"
    pairs = dict(zip(words[1::2], words[2::2], strict=False))
    assert pairs["--model"] == f'"/opt/edgepack/{bundle.slug}/{GGUF}"'
    assert pairs["--host"] == "${EDGEPACK_HOST}" and pairs["--port"] == "${EDGEPACK_PORT}"
    assert pairs["--ctx-size"] == "${EDGEPACK_CTX}" and pairs["--threads"] == "${EDGEPACK_THREADS}"
    assert words[-1] == "$EDGEPACK_EXTRA_ARGS", "unbraced, so systemd splits the extra flags into words"
    assert "--jinja" in words
    for directive in [
        f"EnvironmentFile=/etc/edgepack/{bundle.slug}.env",
        "User=edgepack",
        "Restart=on-failure",
        "After=network-online.target",
        "Wants=network-online.target",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        f"ReadOnlyPaths=/opt/edgepack/{bundle.slug}",
        "WantedBy=multi-user.target",
    ]:
        assert directive in text.splitlines(), directive


def test_unit_uses_only_llama_server_flags_checked_against_llama_cpp(tmp_path: Path) -> None:
    for chat, full in ((True, True), (False, False)):
        marker = tmp_path / f"{chat}-pwned"
        context = make_context("Tiny Support Bot v2", chat=chat, full_window_cache=full)
        templating.render_tree(TEMPLATE_DIR, tmp_path / str(chat), context)
        rendered = Bundle(tmp_path / str(chat), context, marker)
        words = exec_start_words(rendered.unit.read_text())
        flags = {w for w in words if w.startswith("--")}
        flags |= set(re.findall(r"--[a-z-]+", rendered.env_file.read_text().split("EDGEPACK_EXTRA_ARGS=")[-1]))
        assert flags <= KNOWN_LLAMA_SERVER_FLAGS, flags - KNOWN_LLAMA_SERVER_FLAGS
        assert ("--jinja" in flags) == chat
        assert ("--swa-full" in flags) == full
        assert ("--swa-full" in rendered.env_file.read_text()) == full  # the env file says what EDGEPACK_CTX costs


@pytest.mark.parametrize(("chat", "adapters"), [(True, "none"), (False, "none"), (True, "one"), (False, "fleet")])
@pytest.mark.parametrize("kind", ["normal", "hostile"])
def test_systemd_analyze_verify_accepts_the_unit_without_a_single_warning(
    tmp_path: Path, kind: str, chat: bool, adapters: str
) -> None:
    analyze = require_tool("systemd-analyze")
    rendered = render_bundle(tmp_path, kind, chat, adapters=adapters)
    # verify insists that ExecStart's binary exists. Only that path is swapped for a stand-in the
    # test creates; every other line, the hostile Description included, is checked as shipped.
    stand_in = tmp_path / "bin" / "llama-server"
    stand_in.parent.mkdir()
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    text = rendered.unit.read_text()
    assert text.count("ExecStart=/usr/local/bin/llama-server ") == 1
    checked = tmp_path / "check" / rendered.unit.name
    checked.parent.mkdir()
    checked.write_text(text.replace("ExecStart=/usr/local/bin/llama-server ", f"ExecStart={stand_in} "))
    result = run([analyze, "verify", "--man=no", str(checked)], env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_hostile_model_name_is_carried_only_as_data_in_unit_and_scripts(tmp_path: Path) -> None:
    rendered = render_bundle(tmp_path, "hostile")
    name = rendered.context["model_name"]
    telltale = f"touch {rendered.marker}"  # the slug holds "touch" too, but never this

    # Unit: the name is in Description (one line, specifiers escaped) and nowhere else.
    unit_lines = rendered.unit.read_text().split("\n")
    description = f"Description=edgepack model server: {escaping.systemd_value(name)}"
    assert description in unit_lines
    assert [line for line in unit_lines if telltale in line] == [description]

    # Env file: no trace of the name at all (a comment there can swallow the next line in systemd).
    assert telltale not in rendered.env_file.read_text()

    # install.sh: exactly one line starts the name, as a single-quoted assignment bash reads back.
    script = rendered.file("install.sh").read_text()
    start = script.index("readonly MODEL_NAME=")
    end = script.index("\nreadonly SLUG=")
    assignment = script[start:end].removeprefix("readonly ")
    result = run([require_tool("bash"), "-c", assignment + '\nprintf "%s" "$MODEL_NAME"'])
    assert result.returncode == 0 and result.stdout == name
    assert script.count(telltale) == script[start:end].count(telltale) == 3

    # client.py: the name is one Python string literal equal to the original.
    tree = ast.parse(rendered.file("client.py").read_text())
    literals = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    assert literals["MODEL_NAME"] == name
    assert rendered.file("client.py").read_text().count(telltale) == 3

    # README: the heading shows the name as literal text.
    readme = rendered.file("README.md").read_text()
    assert readme.splitlines()[0] == f"# {escaping.markdown_text(name)} for Raspberry Pi"
    assert not rendered.marker.exists()


# --- the settings file --------------------------------------------------------------------------


EXPECTED_SETTINGS = {
    "EDGEPACK_HOST": "127.0.0.1",
    "EDGEPACK_PORT": "8080",
    "EDGEPACK_CTX": "4096",
    "EDGEPACK_THREADS": "4",
    "EDGEPACK_EXTRA_ARGS": "--no-webui",
}


def test_env_file_sourced_by_bash_gives_back_the_exact_values(bundle: Bundle) -> None:
    assert bash_read_env_file(str(bundle.env_file), "EDGEPACK_") == EXPECTED_SETTINGS


def test_env_file_read_by_systemd_gives_back_the_exact_values(bundle: Bundle) -> None:
    assert systemd_read_env_file(str(bundle.env_file)) == EXPECTED_SETTINGS


# --- client.py ----------------------------------------------------------------------------------


def test_client_compiles(bundle: Bundle, tmp_path: Path) -> None:
    result = run(
        [sys.executable, "-m", "py_compile", str(bundle.file("client.py"))],
        env={**os.environ, "PYTHONPYCACHEPREFIX": str(tmp_path / "pycache")},
    )
    assert result.returncode == 0, result.stderr


class FakeOpenAIServer:
    """An OpenAI-compatible endpoint (as llama-server and llama_cpp.server serve) that records requests."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        recorder = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                recorder.append((self.path, body))
                if self.path == "/v1/chat/completions":
                    reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": " chat reply "}}]}
                elif self.path == "/v1/completions":
                    reply = {"choices": [{"index": 0, "text": " completion reply"}]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpenAIServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    ("chat", "route", "expected"),
    [(True, "/v1/chat/completions", "chat reply"), (False, "/v1/completions", "completion reply")],
)
def test_client_posts_to_the_openai_route_that_fits_the_model_and_prints_the_reply(
    tmp_path: Path, chat: bool, route: str, expected: str
) -> None:
    rendered = render_bundle(tmp_path, "hostile", chat)
    prompt = "Classify: 'it broke' $(x)"
    with FakeOpenAIServer() as server:
        env = {**os.environ, "EDGEPACK_HOST": "127.0.0.1", "EDGEPACK_PORT": str(server.port)}
        result = run([sys.executable, str(rendered.file("client.py")), prompt], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"
    [(path, body)] = server.requests
    assert path == route
    assert body["model"] == rendered.slug and body["max_tokens"] == 256
    if chat:
        assert body["messages"] == [{"role": "user", "content": prompt}]
    else:
        assert body["prompt"] == prompt
    assert not rendered.marker.exists()


def test_client_reads_the_prompt_from_stdin_and_the_address_from_argv(tmp_path: Path) -> None:
    rendered = render_bundle(tmp_path, "normal")
    with FakeOpenAIServer() as server:
        result = run(
            [
                sys.executable,
                str(rendered.file("client.py")),
                "--host",
                "127.0.0.1",
                "--port",
                str(server.port),
            ],
            input="hello from stdin",
        )
    assert result.returncode == 0, result.stderr
    assert server.requests[0][1]["messages"][0]["content"] == "hello from stdin"


def test_client_exits_nonzero_with_a_clear_message_when_the_server_is_down(bundle: Bundle) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    env = {**os.environ, "EDGEPACK_HOST": "127.0.0.1", "EDGEPACK_PORT": str(free_port)}
    result = run([sys.executable, str(bundle.file("client.py")), "hi"], env=env)
    assert result.returncode == 2
    assert f"cannot reach the server for {bundle.context['model_name']!r} at http://127.0.0.1:{free_port}" in (
        result.stderr
    )
    assert f"systemctl status edgepack-{bundle.slug}" in result.stderr
    assert "Traceback" not in result.stderr


# --- README -------------------------------------------------------------------------------------


def test_readme_tables_keep_their_shape_and_show_missing_numbers_as_na(bundle: Bundle) -> None:
    try:
        from markdown_it import MarkdownIt
    except ImportError:
        missing("markdown-it-py")
    tokens = MarkdownIt("commonmark").enable("table").parse(bundle.file("README.md").read_text())
    rows: list[list[str]] = []
    tables: list[list[list[str]]] = []
    in_table = False
    for token in tokens:
        if token.type == "table_open":
            rows, in_table = [], True
        elif token.type == "tr_open":
            rows.append([])
        elif token.type == "inline" and in_table:
            rows[-1].append(token.content)
        elif token.type == "table_close":
            tables.append(rows)
            in_table = False
    verification = next(t for t in tables if t[0][0] == "Artifact")
    assert all(len(row) == 6 for row in verification)
    assert len(verification) == 1 + len(bundle.context["verification_rows"])
    assert verification[2][2:] == ["n/a"] * 4
    assert verification[1][2:] == ["0.970", "0.0123", "12.500", "12.100"]


def test_readme_says_the_numbers_come_from_the_build_host_not_a_pi(bundle: Bundle) -> None:
    readme = " ".join(bundle.file("README.md").read_text().split())
    assert "measured on the build host, not on a Raspberry Pi" in readme
    assert "Raspberry Pi OS 64-bit" in readme and "sudo bash install.sh" in readme
    assert f"/etc/edgepack/{bundle.slug}.env" in readme


# --- a fine-tune shipped as a LoRA adapter beside its base (--runtime-adapter) --------------------


def test_a_runtime_adapter_bundle_installs_both_files_and_serves_the_adapter_with_lora(tmp_path: Path) -> None:
    rendered = render_bundle(tmp_path, "normal", adapters="one")
    words = exec_start_words(rendered.unit.read_text())
    pairs = dict(zip(words[1::2], words[2::2], strict=False))
    assert pairs["--lora"] == f'"/opt/edgepack/{rendered.slug}/{LORA}"'
    assert {w for w in words if w.startswith("--")} <= KNOWN_LLAMA_SERVER_FLAGS
    script = rendered.file("install.sh")
    check = run([require_tool("shellcheck"), str(script)])
    assert check.returncode == 0 and check.stdout == "", check.stdout + check.stderr
    env, log = stub_path(tmp_path)
    result = run([require_tool("bash"), str(script), "--dry-run"], env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in (GGUF, LORA):
        dst = f"/opt/edgepack/{rendered.slug}/{name}"
        assert f"[dry-run] install -m 644 {rendered.root}/{name} {dst}.partial" in result.stdout
    assert "installing the LoRA adapter" in result.stdout and log.read_text() == ""
    (rendered.root / LORA).unlink()  # an incomplete copy of the bundle is refused before anything changes
    missing = run([require_tool("bash"), str(script), "--dry-run"], env=env, cwd=tmp_path)
    assert missing.returncode != 0 and f"model file {LORA} is missing" in missing.stderr
    readme = rendered.file("README.md").read_text()
    assert "applied by `llama-server --lora` at run time" in readme


def test_without_an_adapter_the_unit_has_no_lora_flag(bundle: Bundle) -> None:
    assert "--lora" not in exec_start_words(bundle.unit.read_text())


def test_a_fleet_bundle_loads_every_adapter_in_id_order_and_the_client_picks_one_per_request(
        tmp_path: Path) -> None:
    rendered = render_bundle(tmp_path, "normal", adapters="fleet")
    words = exec_start_words(rendered.unit.read_text())
    loras = [words[i + 1] for i, w in enumerate(words) if w == "--lora"]
    assert loras == [f'"/opt/edgepack/{rendered.slug}/{a["file"]}"' for a in ADAPTERS["fleet"]]
    env, _ = stub_path(tmp_path)
    result = run([require_tool("bash"), str(rendered.file("install.sh")), "--dry-run"], env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for adapter in ADAPTERS["fleet"]:
        assert f"{rendered.root}/{adapter['file']} /opt/edgepack/{rendered.slug}/{adapter['file']}.partial" in (
            result.stdout)
    # The client's request body: the chosen adapter at scale 1, every other at 0 (ids in the unit's order).
    client = runpy.run_path(str(rendered.file("client.py")))
    assert client["SPECIALISTS"] == ["router", "extractor"]
    _, body = client["build_request"]("hi", 8, 0.0, "extractor")
    assert body["lora"] == [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 1.0}]
    assert client["build_request"]("hi", 8, 0.0)[1]["lora"][0] == {"id": 0, "scale": 1.0}  # default: the first
    readme = " ".join(rendered.file("README.md").read_text().split())
    assert "the specialist router as a LoRA adapter" in readme and "Always send the list" in readme


def test_a_single_adapter_bundles_client_sends_no_adapter_choice(tmp_path: Path) -> None:
    client = runpy.run_path(str(render_bundle(tmp_path, "normal", adapters="one").file("client.py")))
    assert client["SPECIALISTS"] == [] and "lora" not in client["build_request"]("hi", 8, 0.0)[1]


@pytest.mark.parametrize(("args", "stdin", "specialist", "instruction", "text"), [
    (["--specialist", "router", "--instruction", "Classify the intent.", "my card got declined"], None,
     "router", "Classify the intent.", "my card got declined"),
    (["my card got declined"], None, "router", "", "my card got declined"),  # the default: the first specialist
    (["--specialist", "extractor"], "order {input} #42 $(x)\n", "extractor", "", "order {input} #42 $(x)"),
])
def test_a_fleet_client_sends_the_specialists_own_prompt_format_with_every_adapters_scale(
        tmp_path: Path, args: list[str], stdin: str | None, specialist: str, instruction: str, text: str) -> None:
    rendered = render_bundle(tmp_path, "hostile", chat=True, adapters="fleet")
    with FakeOpenAIServer() as server:
        env = {**os.environ, "EDGEPACK_HOST": "127.0.0.1", "EDGEPACK_PORT": str(server.port)}
        result = run([sys.executable, str(rendered.file("client.py")), *args], env=env, input=stdin)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "completion reply\n"
    [(path, body)] = server.requests
    # The format already holds the chat turn markers: a plain completion, never the server's chat template on top.
    assert path == "/v1/completions" and "messages" not in body
    assert body["prompt"] == render_prompt(FLEET_CONTRACTS[specialist], text, instruction)
    chosen = list(FLEET_CONTRACTS).index(specialist)
    assert body["lora"] == [{"id": i, "scale": 1.0 if i == chosen else 0.0} for i in range(len(FLEET_CONTRACTS))]
    assert not rendered.marker.exists()


def test_a_fleet_clients_prompts_are_the_contracts_for_any_input(tmp_path: Path) -> None:
    client = runpy.run_path(str(render_bundle(tmp_path, "normal", adapters="fleet").file("client.py")))
    for case in VECTORS["render"]:
        contract = Contract.from_dict(VECTORS["contracts"][case["contract"]])
        client["PROMPTS"]["probe"] = {key: getattr(contract.prompt, key) for key in ("prefix", "template", "suffix")}
        assert client["render_prompt"]("probe", case["input"], case["instruction"]) == case["expected"]


def test_a_fleet_client_refuses_a_specialist_the_server_does_not_hold(tmp_path: Path) -> None:
    rendered = render_bundle(tmp_path, "normal", adapters="fleet")
    result = run([sys.executable, str(rendered.file("client.py")), "--specialist", "nobody", "hi"])
    assert result.returncode == 2 and "invalid choice: 'nobody'" in result.stderr


def test_a_single_model_client_has_no_prompt_format_of_its_own(tmp_path: Path) -> None:
    client = runpy.run_path(str(render_bundle(tmp_path, "normal", adapters="one").file("client.py")))
    assert "PROMPTS" not in client and "fill_template" not in client
    assert client["build_request"]("hi", 8, 0.0)[1]["messages"] == [{"role": "user", "content": "hi"}]
