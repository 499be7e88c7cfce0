"""`edgepack serve`: a small static server for a web bundle, set up the way the bundle needs.

- Cross-origin isolation (COOP same-origin + COEP require-corp, and CORP on every response):
  without it a page gets no SharedArrayBuffer, so WASM runtimes cannot use threads.
- Correct MIME types: browsers refuse to stream-compile WASM unless it is application/wasm, and
  refuse ES modules served as anything but JavaScript.
- HTTP Range requests (single range): runtimes fetch large weight files in pieces.
- Bound to 127.0.0.1 by default: it is a development and verification server, not a web host.
- Only regular files inside the folder: no directory listings, nothing reached through a symlink
  that leads out of it, and bounded request paths and Range headers, each refused with a 4xx.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000

MIME_TYPES = {
    ".wasm": "application/wasm",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".json": "application/json; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".gguf": "application/octet-stream",
    ".bin": "application/octet-stream",
    ".model": "application/octet-stream",
}
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
# Larger than any file; a longer number means the same, and never reaches int() (which refuses
# 5000-digit strings with an exception).
_BEYOND_ANY_FILE = 10**18
MAX_PATH_CHARS = 2048
MAX_RANGE_CHARS = 100
_COPY_CHUNK = 1024 * 1024


class BundleRequestHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler plus isolation headers, exact MIME types and single-range requests."""

    extensions_map: ClassVar[dict[str, str]] = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}
    server_version = "edgepack-serve"
    protocol_version = "HTTP/1.1"

    def end_headers(self) -> None:
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        # Revalidate every time: a rebuilt bundle must never run against stale cached files.
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        if not getattr(self.server, "quiet", False):
            super().log_message(format, *args)

    def _served_file(self) -> Path | None:
        """Return the regular file inside the served folder this request names, or None (after sending the 4xx)."""
        if len(self.path) > MAX_PATH_CHARS:
            self.send_error(414, "Request path too long")
            return None
        try:
            root = Path(os.path.realpath(self.directory))
            path = Path(os.path.realpath(self.translate_path(self.path)))
            inside = os.path.commonpath([root, path]) == str(root)
            regular = inside and path.is_file()
        except (OSError, ValueError):  # a name too long for the file system, an embedded NUL
            self.send_error(400, "Bad request path")
            return None
        if not regular:
            # Folders are never listed and symlinks never followed out: both look like nothing here.
            self.send_error(404, "File not found")
            return None
        return path

    def list_directory(self, path):  # type: ignore[override]
        self.send_error(404, "File not found")
        return None

    def send_head(self):  # type: ignore[override]
        """Serve regular files inside the folder (with Range support); everything else is a 4xx."""
        self._range: tuple[int, int] | None = None  # handlers live across keep-alive requests
        path = self._served_file()
        if path is None:
            return None
        try:
            handle = path.open("rb")
        except OSError:
            self.send_error(404, "File not found")
            return None
        size = os.fstat(handle.fileno()).st_size
        header = self.headers.get("Range")
        if header is not None:
            parsed = "unsatisfiable" if len(header) > MAX_RANGE_CHARS else _parse_range(header, size)
            if parsed == "unsatisfiable":
                handle.close()
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            self._range = parsed  # None: a syntax we do not serve (multiple ranges) -> whole file
        if self._range is None:
            self.send_response(200)
            self.send_header("Content-Length", str(size))
        else:
            start, end = self._range
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("Content-Length", str(end - start + 1))
            handle.seek(start)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", self.date_time_string(int(path.stat().st_mtime)))
        self.end_headers()
        return handle

    def copyfile(self, source, outputfile) -> None:  # type: ignore[override]
        if getattr(self, "_range", None) is None:
            super().copyfile(source, outputfile)
            return
        start, end = self._range
        remaining = end - start + 1
        while remaining > 0:
            block = source.read(min(_COPY_CHUNK, remaining))
            if not block:
                break
            outputfile.write(block)
            remaining -= len(block)


def _offset(digits: str) -> int:
    """Return the byte offset digits spell, capped just beyond any file."""
    return int(digits) if len(digits) <= len(str(_BEYOND_ANY_FILE)) else _BEYOND_ANY_FILE


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """Return (first, last) byte of a single range, "unsatisfiable", or None to serve the whole file."""
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if first == "" and last == "":
        return None
    if first == "":  # suffix range: the last N bytes
        length = _offset(last)
        if length == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - length), size - 1
    start = _offset(first)
    end = size - 1 if last == "" else min(_offset(last), size - 1)
    if start >= size or end < start:
        return "unsatisfiable"
    return start, end


class BundleServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server over one folder; `url` is where a browser should go."""

    daemon_threads = True

    def __init__(self, folder: Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, quiet: bool = False) -> None:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder}: not a folder")
        handler = functools.partial(BundleRequestHandler, directory=str(folder))
        super().__init__((host, port), handler)
        self.folder = Path(folder)
        self.quiet = quiet

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


@contextmanager
def serving(folder: Path, host: str = DEFAULT_HOST, port: int = 0) -> Iterator[BundleServer]:
    """Serve folder in a background thread for the duration of the block (port 0: any free port)."""
    server = BundleServer(folder, host, port, quiet=True)
    thread = threading.Thread(target=server.serve_forever, name="edgepack-serve", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
