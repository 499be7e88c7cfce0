"""llama-cpp-python's OpenAI-compatible server on a GGUF (and a LoRA adapter), for tests of the Pi client."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def openai_server(model: Path, log: Path, n_ctx: int, lora: Path | None = None, host: str = "127.0.0.1",
                  startup_s: float = 180) -> Iterator[int]:
    """Serve `model` (with `lora` applied) until the block ends; yield the port. The server's output goes
    to `log`: a pipe would fill up with llama.cpp's load log and block it."""
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", host, "--port", str(port),
            "--n_ctx", str(n_ctx), "--n_threads", "2", "--model_alias", "model"]
    if lora is not None:
        argv += ["--lora_path", str(lora)]
    with log.open("w") as out:
        server = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.time() + startup_s
            while True:
                with socket.socket() as s:
                    if s.connect_ex((host, port)) == 0:
                        break
                assert server.poll() is None, log.read_text()[-2000:]
                assert time.time() < deadline, f"llama.cpp server did not start within {startup_s:.0f} s"
                time.sleep(0.5)
            yield port
        finally:
            server.terminate()
            server.wait(timeout=30)
