"""Progress for long steps, on stderr so that --json output on stdout stays machine-readable."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class StageRecord:
    """One stage of a build: how long it took and whether the cache served it."""

    name: str
    seconds: float
    cached: bool
    detail: str = ""


@dataclass
class Reporter:
    """Prints stage starts/ends and coarse percentages; keeps a record for the report."""

    quiet: bool = False
    records: list[StageRecord] = field(default_factory=list)

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"edgepack: {message}", file=sys.stderr, flush=True)

    def stage(self, name: str, cached: bool, seconds: float, detail: str = "") -> None:
        self.records.append(StageRecord(name, round(seconds, 2), cached, detail))
        how = "cached" if cached else f"{seconds:.1f}s"
        self.say(f"{name}: {'reused from cache' if cached else 'done'} ({how}){' - ' + detail if detail else ''}")

    def percent(self, label: str) -> Callable[[int, int], None]:
        """Return a callback(done, total) that prints every 10 %."""
        last = [-1]
        start = time.perf_counter()

        def update(done: int, total: int) -> None:
            pct = done * 100 // max(total, 1)
            if pct // 10 != last[0] // 10 or done == total:
                last[0] = pct
                self.say(f"{label}: {pct:3d}% ({done}/{total}, {time.perf_counter() - start:.1f}s)")

        return update
