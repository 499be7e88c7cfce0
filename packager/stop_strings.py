"""Where a generation ends under a contract's stop strings: shared by the scoring (packager.contract) and the
runtimes' child processes, which must not import the checkpoint machinery (torch) for it."""

from __future__ import annotations

from collections.abc import Sequence


def cut_at_stop(raw: str, stops: Sequence[str]) -> str:
    """The raw generation up to its first stop string (all of it when none occurs)."""
    cut = len(raw)
    for stop in stops:
        pos = raw.find(stop)
        if 0 <= pos < cut:
            cut = pos
    return raw[:cut]
