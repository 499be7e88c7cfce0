"""The task contract: how a prompt is rendered, when generation stops, how the answer is read.

One truth for every platform. It is captured once from the checkpoint (chat template, BOS, eos
and end-of-turn ids, generation defaults) plus the user's task (labels or a JSON schema), and
written into every target's edgepack.json. The bridges in mobile/ implement exactly the functions
below (render_prompt, parse_output, labels_grammar); tests/vectors/contract.json proves they agree.

Design choice: a chat template is Jinja, which no phone bridge should have to interpret. At build
time it is rendered once around a sentinel message and stored as a plain prefix and suffix, so
rendering a prompt anywhere is string concatenation.
"""

from __future__ import annotations

import inspect
import json
import math
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from packager.checkpoint import Checkpoint
from packager.errors import BadInputError
from packager.stop_strings import cut_at_stop

TASKS = ("text", "labels", "json")
_SENTINEL = "\u0000EDGEPACK_INPUT\u0000"


@dataclass
class PromptFormat:
    """prefix + template (with {instruction} and {input} filled in) + suffix."""

    prefix: str = ""
    template: str = "{input}"
    suffix: str = ""
    source: str = "plain"  # "chat_template" when prefix/suffix come from the model's chat template


@dataclass
class Contract:
    """What a caller needs to drive the model the way it was fine-tuned."""

    task: str = "text"
    labels: list[str] | None = None
    json_schema: dict[str, Any] | None = None
    prompt: PromptFormat = field(default_factory=PromptFormat)
    add_bos: bool = True
    bos_id: int | None = None
    bos_token: str | None = None
    eos_ids: list[int] = field(default_factory=list)
    stop_strings: list[str] = field(default_factory=list)
    chat_template: str | None = None
    max_new_tokens: int = 128
    constrained: bool = False
    generation: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Contract:
        data = dict(data)
        data["prompt"] = PromptFormat(**data.get("prompt", {}))
        return cls(**data)


# ---------------------------------------------------------------------------------------------
# Rendering and parsing: mirrored line by line in mobile/*/ (keep them simple and explicit).


def fill_template(template: str, values: dict[str, str]) -> str:
    """Replace {name} placeholders; `{{` and `}}` are literal braces; unknown names are an error."""
    out: list[str] = []
    i = 0
    while i < len(template):
        ch = template[i]
        if ch == "{" and template.startswith("{{", i):
            out.append("{")
            i += 2
        elif ch == "}" and template.startswith("}}", i):
            out.append("}")
            i += 2
        elif ch == "{":
            end = template.find("}", i)
            if end < 0:
                raise ValueError(f"unclosed placeholder at {i} in prompt template")
            name = template[i + 1:end]
            if name not in values:
                raise ValueError(f"unknown placeholder {{{name}}} in prompt template")
            out.append(values[name])
            i = end + 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def fill_template_source() -> str:
    """Return fill_template's own source, which generated stdlib-only clients (the Pi's client.py) embed: the same
    function, not a port that could drift from it."""
    return inspect.getsource(fill_template)


def render_prompt(contract: Contract, input_text: str, instruction: str = "") -> str:
    """Return the exact text the model sees (BOS is not included: the runtime adds it if add_bos)."""
    body = fill_template(contract.prompt.template, {"input": input_text, "instruction": instruction})
    return contract.prompt.prefix + body + contract.prompt.suffix


def clean_output(contract: Contract, raw: str) -> str:
    """Cut the raw generation at the first stop string, then strip surrounding whitespace."""
    return cut_at_stop(raw, contract.stop_strings).strip()


def parse_output(contract: Contract, raw: str) -> dict[str, Any]:
    """Return {ok, value, error, text}; error is None or {code, path}. Nothing is repaired."""
    text = clean_output(contract, raw)
    if contract.task == "labels":
        if text in (contract.labels or []):
            return {"ok": True, "value": text, "error": None, "text": text}
        return {"ok": False, "value": None, "error": {"code": "unknown_label", "path": ""}, "text": text}
    if contract.task == "json":
        try:
            value = json.loads(text, parse_constant=_reject_constant)
        except (json.JSONDecodeError, ValueError):
            return {"ok": False, "value": None, "error": {"code": "invalid_json", "path": ""}, "text": text}
        path = schema_violation(value, contract.json_schema or {}, "")
        if path is not None:
            return {"ok": False, "value": value, "error": {"code": "schema_mismatch", "path": path}, "text": text}
        return {"ok": True, "value": value, "error": None, "text": text}
    return {"ok": True, "value": text, "error": None, "text": text}


def _reject_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (RFC 8259); Python accepts them, JavaScript and Kotlin parsers do not."""
    raise ValueError(f"{name} is not valid JSON")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if math.isfinite(value) and value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _type_matches(value: Any, expected: str | list[str]) -> bool:
    actual = _json_type(value)
    allowed = expected if isinstance(expected, list) else [expected]
    return actual in allowed or (actual == "integer" and "number" in allowed)


def schema_violation(value: Any, schema: dict[str, Any], path: str) -> str | None:
    """Return the JSON pointer of the first violation of a JSON-schema subset, or None.

    Supported: type, enum, const, properties, required, additionalProperties (false), items,
    minItems, maxItems. Order of checks (shared by every bridge): type, const, enum, then for
    objects required (in schema order), properties (schema order), additional keys (value order);
    for arrays the length bounds, then items in order.
    """
    if "type" in schema and not _type_matches(value, schema["type"]):
        return path
    if "const" in schema and value != schema["const"]:
        return path
    if "enum" in schema and value not in schema["enum"]:
        return path
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                return f"{path}/{key}"
        for key, sub in props.items():
            if key in value:
                found = schema_violation(value[key], sub, f"{path}/{key}")
                if found is not None:
                    return found
        if schema.get("additionalProperties") is False:
            for key in value:
                if key not in props:
                    return f"{path}/{key}"
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            return path
        if "items" in schema:
            for i, item in enumerate(value):
                found = schema_violation(item, schema["items"], f"{path}/{i}")
                if found is not None:
                    return found
    return None


def gbnf_literal(text: str) -> str:
    """A GBNF string literal: backslash, quote and control characters escaped."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    escaped = escaped.replace("\t", "\\t")
    return f'"{escaped}"'


def labels_grammar(labels: list[str]) -> str:
    """GBNF grammar that admits exactly one of the labels (for llama.cpp-based runtimes)."""
    # An optional leading space: a model fine-tuned on "Intent: label" answers " label"; the parser strips it.
    return 'root ::= " "? (' + " | ".join(gbnf_literal(label) for label in labels) + ")\n"


# ---------------------------------------------------------------------------------------------
# Capturing the contract from a checkpoint.


def _json(path: Path) -> dict[str, Any]:
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except json.JSONDecodeError:
            return {}
    return {}


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _chat_template(folder: Path, tok_cfg: dict[str, Any]) -> tuple[str, Path] | None:
    """Return the checkpoint's chat template and the file it came from, or None."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8"), jinja
    if isinstance(tok_cfg.get("chat_template"), str) and tok_cfg["chat_template"]:
        return tok_cfg["chat_template"], folder / "tokenizer_config.json"
    template = _json(folder / "chat_template.json").get("chat_template")
    return (template, folder / "chat_template.json") if isinstance(template, str) and template else None


# A chat template is code that comes with the checkpoint. It runs in a child Python, in jinja2's
# immutable sandbox (no reaching into Python objects), under a CPU-time and a memory limit the kernel
# enforces, a wall-clock kill for platforms without them, and a cap on the rendered text: a thread
# with a timeout could not stop a loop that never yields, and counting iterations inside Jinja
# misses string repetition, filters and str methods that allocate gigabytes in one call.
TEMPLATE_CPU_SECONDS = 5
TEMPLATE_MEMORY_BYTES = 1 << 30
TEMPLATE_WALL_SECONDS = 30
TEMPLATE_MAX_CHARS = 1 << 20

_RENDER_CHILD = r"""
import json, sys
request = json.loads(sys.stdin.buffer.read().decode("utf-8"))
try:
    import resource
    cpu = request["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (request["memory_bytes"], request["memory_bytes"]))
except (ImportError, ValueError, OSError):
    pass  # no kernel limits here (Windows, some macOS): the parent's wall-clock kill still bounds the render

def reply(**fields):
    sys.stdout.buffer.write(json.dumps(fields).encode("ascii"))
    sys.exit(0)

def raise_exception(message):
    raise ValueError(message)

try:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    pieces, size = [], 0
    for piece in env.from_string(request["template"]).generate(**request["variables"]):
        size += len(piece)
        if size > request["max_chars"]:
            reply(error=f"renders more than {request['max_chars']:,} characters around a single user message")
        pieces.append(piece)
except MemoryError:
    reply(error=f"needs more than {request['memory_bytes'] >> 20} MB of memory to render")
except RecursionError:
    reply(error="recurses without end")
except Exception as exc:
    reply(error=f"raised {type(exc).__name__}: {exc}")
reply(text="".join(pieces))
"""


def render_chat_template(template: str, variables: dict[str, Any]) -> str:
    """Return the template rendered with variables, in a bounded sandbox; raise ValueError saying what it broke."""
    request = {"template": template, "variables": variables, "cpu_seconds": TEMPLATE_CPU_SECONDS,
               "memory_bytes": TEMPLATE_MEMORY_BYTES, "max_chars": TEMPLATE_MAX_CHARS}
    try:
        proc = subprocess.run([sys.executable, "-I", "-c", _RENDER_CHILD], input=json.dumps(request).encode(),
                              capture_output=True, timeout=TEMPLATE_WALL_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        raise ValueError(f"did not finish within {TEMPLATE_WALL_SECONDS} s") from None
    if proc.returncode in (-getattr(signal, "SIGXCPU", 24), -signal.SIGKILL):
        raise ValueError(f"ran for more than {TEMPLATE_CPU_SECONDS} s of CPU time (an endless or huge loop)")
    try:
        reply = json.loads(proc.stdout)
    except ValueError:
        detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise ValueError(f"could not be rendered ({detail[0]})") from None
    if "error" in reply:
        raise ValueError(reply["error"])
    return reply["text"]


def prompt_from_chat_template(template: str, bos_token: str | None, eos_token: str | None) -> PromptFormat:
    """Render the chat template once around a sentinel user turn and keep what surrounds it."""
    rendered = render_chat_template(template, {
        "messages": [{"role": "user", "content": _SENTINEL}], "add_generation_prompt": True,
        "bos_token": bos_token or "", "eos_token": eos_token or "",
    })
    if rendered.count(_SENTINEL) != 1:
        raise ValueError("does not place the user message exactly once")
    prefix, suffix = rendered.split(_SENTINEL)
    if bos_token and prefix.startswith(bos_token):
        prefix = prefix[len(bos_token):]  # the runtime adds BOS as a token (add_bos)
    return PromptFormat(prefix=prefix, template="{input}", suffix=suffix, source="chat_template")


def contract_from_checkpoint(ckpt: Checkpoint) -> Contract:
    """Read the contract the checkpoint itself declares (tokenizer + generation config)."""
    folder = ckpt.folder
    tokenizer_json = _json(folder / "tokenizer.json")
    tok_cfg = _json(folder / "tokenizer_config.json")
    gen_cfg = _json(folder / "generation_config.json")
    vocab = (tokenizer_json.get("model") or {}).get("vocab") or {}
    added = {t["content"]: t["id"] for t in tokenizer_json.get("added_tokens", [])}

    def token_id(text: str | None) -> int | None:
        if not text:
            return None
        return added.get(text, vocab.get(text) if isinstance(vocab, dict) else None)

    bos_token = tok_cfg.get("bos_token") if isinstance(tok_cfg.get("bos_token"), str) else None
    eos_token = tok_cfg.get("eos_token") if isinstance(tok_cfg.get("eos_token"), str) else None
    bos_id = token_id(bos_token)
    if bos_id is None:
        bos_id = ckpt.config.get("bos_token_id")
    post = tokenizer_json.get("post_processor") or {}
    single = json.dumps(post.get("single", [])) + json.dumps(post.get("processors", []))
    add_bos = bool(tok_cfg.get("add_bos_token", bos_token is not None and bos_token in single))

    eos_ids: list[int] = []
    for source in (gen_cfg.get("eos_token_id"), ckpt.config.get("eos_token_id")):
        for i in _ids(source):
            if i not in eos_ids:
                eos_ids.append(i)
    stop_strings = []
    for text in ckpt.spec.end_of_turn_tokens:
        i = token_id(text)
        if i is not None:
            stop_strings.append(text)
            if i not in eos_ids:
                eos_ids.append(i)

    found = _chat_template(folder, tok_cfg)
    chat_template = found[0] if found else None
    prompt = PromptFormat()
    if found:
        try:
            prompt = prompt_from_chat_template(chat_template, bos_token, eos_token)
        except ValueError as exc:  # a template we cannot render is reported, never half-used
            raise BadInputError(
                f"{found[1]}: the chat template {exc}, rendering a single user message. Fix the template, or "
                "declare the prompt format explicitly (prompt_template in edgepack.toml)."
            ) from None

    generation = {k: gen_cfg[k] for k in ("temperature", "top_k", "top_p", "do_sample") if k in gen_cfg}
    return Contract(
        prompt=prompt,
        add_bos=add_bos,
        bos_id=bos_id,
        bos_token=bos_token,
        eos_ids=eos_ids,
        stop_strings=stop_strings,
        chat_template=chat_template,
        generation=generation,
    )


def apply_task_config(contract: Contract, config: dict[str, Any], eval_outputs: list[str], source: str) -> Contract:
    """Return the contract with the user's task declared on top (edgepack.toml [contract] or flags).

    `source` names the file or flags the values came from, for error messages. Labels default to
    the distinct outputs of the eval set; a prompt_template replaces the chat template's format.
    """
    known = {"task", "labels", "json_schema", "prompt_template", "stop_strings", "max_new_tokens", "constrained"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise BadInputError(
            f"{source}: unknown contract key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}."
        )
    task = config.get("task", contract.task)
    if task not in TASKS:
        raise BadInputError(f"{source}: task {task!r} is not one of {', '.join(TASKS)}.")
    labels = config.get("labels")
    if task == "labels" and not labels:
        labels = sorted(set(o.strip() for o in eval_outputs))
        if not labels:
            raise BadInputError(f"{source}: task 'labels' needs labels, or an eval set (--eval) to infer them from.")
    schema = config.get("json_schema")
    if isinstance(schema, str):
        schema_path = Path(schema)
        try:
            schema = json.loads(schema_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise BadInputError(
                f"{source}: json_schema file {schema_path} could not be read as JSON ({exc})."
            ) from None
    if task == "json" and not isinstance(schema, dict):
        raise BadInputError(f"{source}: task 'json' needs a json_schema (an inline table or a path to a .json file).")
    prompt = contract.prompt
    if "prompt_template" in config:
        template = config["prompt_template"]
        try:
            fill_template(template, {"input": "x", "instruction": "y"})
        except ValueError as exc:
            raise BadInputError(f"{source}: prompt_template: {exc}. Use {{input}} and {{instruction}}.") from None
        prompt = PromptFormat(prefix="", template=template, suffix="", source="edgepack.toml")
    stops = list(contract.stop_strings)
    for stop in config.get("stop_strings", []):
        if stop not in stops:
            stops.append(stop)
    return Contract(**{
        **vars(contract),
        "task": task,
        "labels": labels if task == "labels" else None,
        "json_schema": schema if task == "json" else None,
        "prompt": prompt,
        "stop_strings": stops,
        "max_new_tokens": int(config.get("max_new_tokens", contract.max_new_tokens)),
        "constrained": bool(config.get("constrained", contract.constrained)),
    })
