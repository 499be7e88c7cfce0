"""Shared fixtures: tiny random checkpoints (seconds) and the real Gemma 3 270M (registry package)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

# One stage cache for the whole session (CI starts empty); tests that need a cold cache make their own.
os.environ.setdefault("EDGEPACK_CACHE", str(REPO / ".cache" / "test-cache"))

from tiny_models import gemma_chat, make_router, make_tiny_gemma, make_tiny_llama  # noqa: E402


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gemma(tmp_path_factory.mktemp("models") / "tiny-gemma3")


@pytest.fixture(scope="session")
def tiny_router(tiny_gemma: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Tiny Gemma fine-tuned (in ~20 s) on its chat template with the user turn "{instruction}: {input}",
    and its eval set: a classifier that knows one prompt rendering only."""
    return make_router(tiny_gemma, tmp_path_factory.mktemp("router"), lambda ins, i: gemma_chat(f"{ins}: {i}"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_smollm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-shaped: tied embeddings, plain rope, digit-splitting tokenizer that adds no BOS."""
    folder = tmp_path_factory.mktemp("models") / "tiny-smollm"
    return make_tiny_llama(folder, llama3_rope=False, tied=True, tokenizer_style="smollm")


@pytest.fixture(scope="session")
def gemma_270m() -> Path:
    """The real Gemma 3 270M as an HF folder, made by edgepack from the registry package."""
    from packager.examples import bundled_example
    from packager.progress import Reporter

    return bundled_example(Reporter(quiet=True))


@pytest.fixture
def cold_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEPACK_CACHE", str(cache))
    yield cache


# llama.cpp's own llama-server, for what only it does (tests/llama_server_build.py): built in the
# background from the start of a session that has a test using it, so the suite rarely waits.
_llama_server_build = None


@pytest.hookimpl(trylast=True)  # after -k / -m have deselected: only a session that runs such a test builds
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    global _llama_server_build
    if any("llama_server" in getattr(item, "fixturenames", ()) for item in items):
        from llama_server_build import start_in_background

        _llama_server_build = start_in_background()


@pytest.fixture(scope="session")
def llama_server() -> Path:
    """The llama-server binary (waits for the background build, or builds it now)."""
    from external_tools import missing
    from llama_server_build import build, missing_build_tools

    if _llama_server_build is not None:
        _llama_server_build.wait()
    for tool in missing_build_tools():
        missing(tool)
    return build()
