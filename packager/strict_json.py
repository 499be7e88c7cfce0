"""Strict JSON (RFC 8259) in and out: NaN and Infinity are not JSON, so edgepack neither writes nor trusts them.

Python's json module writes bare NaN and reads it back, but JavaScript's JSON.parse, Kotlin's and
Swift's decoders, and `jq` reject the whole document. Every JSON file or --json stdout edgepack
writes goes through `json_text`, which refuses a non-finite number; a measurement that does not
exist (the KL of an artifact whose logits are NaN) is turned into null where it is recorded, with
`finite_numbers`. Every JSON input a user hands over is read with `read_json_file`.
"""

from __future__ import annotations

import json
import math
import stat
from pathlib import Path
from typing import Any

from packager.errors import BadInputError, InternalError

# A JSON input larger than this is not a config or tokenizer file (the largest tokenizer.json we know is ~35 MB).
MAX_JSON_INPUT_BYTES = 256 * 1024 * 1024


def non_finite_path(data: Any, path: str = "") -> str | None:
    """Return the key path ("a.b[2]") of the first NaN or infinite number in data, or None."""
    if isinstance(data, float) and not math.isfinite(data):
        return path or "(top level)"
    if isinstance(data, dict):
        items: Any = ((f"{path}.{k}" if path else str(k), v) for k, v in data.items())
    elif isinstance(data, list | tuple):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(data))
    else:
        return None
    for sub_path, value in items:
        found = non_finite_path(value, sub_path)
        if found is not None:
            return found
    return None


def finite_or_none(value: Any) -> Any:
    """Return value, or None when it is a NaN or infinite float (a number that does not exist)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def finite_numbers(data: Any) -> Any:
    """Return data with every NaN or infinite float, at any depth, replaced by None (null in JSON)."""
    if isinstance(data, dict):
        return {k: finite_numbers(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite_numbers(v) for v in data]
    return finite_or_none(data)


def json_text(data: Any, what: str, *, indent: int | None = 2, sort_keys: bool = False) -> str:
    """Return data as strict JSON text; `what` names the file or stream it is for, in the error."""
    try:
        return json.dumps(data, indent=indent, sort_keys=sort_keys, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise InternalError(
            f"{what}: {non_finite_path(data)} is NaN or infinite, which JSON cannot hold, so edgepack refused to "
            "write it. This is a bug in edgepack (a missing measurement must be recorded as null); please report it."
        ) from None


def require_regular_file(path: Path, fix: str, what: str) -> None:
    """Return when path (after symlinks) is a readable regular file of sane size; raise BadInputError otherwise.

    A symlink to /dev/zero or a folder named like a tokenizer file must not hang or crash a reader.
    """
    try:
        info = path.stat()
    except OSError as exc:
        raise BadInputError(f"{path}: cannot be read ({exc.strerror}). {fix}") from None
    if not stat.S_ISREG(info.st_mode):
        raise BadInputError(f"{path}: is not a regular file (it is a device, pipe or folder). {fix}")
    if info.st_size > MAX_JSON_INPUT_BYTES:
        raise BadInputError(f"{path}: is {info.st_size:,} bytes, too large to be {what}. {fix}")


def read_json_file(path: Path, fix: str) -> Any:
    """Return the parsed contents of a user's JSON file, refusing non-files, huge files and NaN/Infinity.

    `fix` is the sentence that tells the user how to repair the file.
    """
    require_regular_file(path, fix, "this JSON file")
    try:
        text = path.read_bytes().decode("utf-8")
        # Non-finite numbers are caught while parsing (a walk over a 30 MB tokenizer.json takes seconds);
        # only a file that has one is parsed again, to name where.
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NonFinite:
        data = json.loads(text)
    except UnicodeDecodeError:
        raise BadInputError(f"{path}: is not UTF-8 text, so not JSON. {fix}") from None
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{path}: not valid JSON ({exc}). {fix}") from None
    except OSError as exc:
        raise BadInputError(f"{path}: cannot be read ({exc.strerror}). {fix}") from None
    where = non_finite_path(data) or "a number"
    raise BadInputError(f"{path}: {where} is NaN or infinite, which is not a JSON number. {fix}")


class _NonFinite(ValueError):
    """A JSON text holds NaN, Infinity or a number too large for a float."""


def _refuse_constant(name: str) -> Any:
    raise _NonFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(text)
    return value
