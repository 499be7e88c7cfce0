"""Progress for long steps, on stderr so that --json output on stdout stays machine-readable.

Targets build at once (packager.scheduler), so on a terminal the reporter keeps one live line per
running stage (what, percent when known, elapsed and remaining time) below the messages, redrawn
in place. Anywhere else (a CI log, a pipe) it prints plain lines: stage ends and every tenth percent.
Third-party tools' output never reaches this stream during a build (packager.build_log).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class StageRecord:
    """One stage of a build: how long it took and whether the cache served it."""

    name: str
    seconds: float
    cached: bool
    detail: str = ""


@dataclass
class Activity:
    """A stage running now in one thread."""

    label: str
    start: float
    percent: int | None = None

    def line(self, now: float, width: int, within: str = "") -> str:
        elapsed = now - self.start
        timing = _clock(elapsed)
        if self.percent:
            timing += f", ~{_clock(elapsed * (100 - self.percent) / self.percent)} left"
        pct = f"{self.percent:3d}% " if self.percent is not None else ""
        text = f"  {pct}{within + ': ' if within else ''}{self.label} ({timing})"
        return text if len(text) <= width else text[: width - 1] + "…"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


@dataclass
class Reporter:
    """Prints stage starts/ends and progress; keeps a record of every stage for the report."""

    quiet: bool = False
    records: list[StageRecord] = field(default_factory=list)
    # Where progress goes; a build that captures tool output (packager.build_log) points it at the terminal.
    stream: TextIO | None = None
    _activities: dict[int, list[Activity]] = field(default_factory=dict)
    _drawn: int = 0
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _ticker: threading.Thread | None = None

    @property
    def out(self) -> TextIO:
        return self.stream or sys.stderr

    @property
    def live(self) -> bool:
        """Live lines only on a terminal: a log file or CI gets plain, append-only lines."""
        try:
            return not self.quiet and self.out.isatty()
        except (AttributeError, ValueError):
            return False

    def say(self, message: str) -> None:
        if self.quiet:
            return
        with self._lock:
            self._erase()
            print(f"edgepack: {message}", file=self.out, flush=True)
            self._draw()

    def stage(self, name: str, cached: bool, seconds: float, detail: str = "") -> None:
        self.records.append(StageRecord(name, round(seconds, 2), cached, detail))
        how = "cached" if cached else f"{seconds:.1f}s"
        self.say(f"{name}: {'reused from cache' if cached else 'done'} ({how}){' - ' + detail if detail else ''}")

    @contextmanager
    def running(self, label: str) -> Iterator[None]:
        """Show `label` as a live line while the block runs (nested blocks show the innermost)."""
        stack = self._activities.setdefault(threading.get_ident(), [])
        stack.append(Activity(label, time.perf_counter()))
        self._start_ticker()
        self.redraw()
        try:
            yield
        finally:
            stack.pop()
            self.redraw()

    def percent(self, label: str) -> Callable[[int, int], None]:
        """Return a callback(done, total): the live line's percent, or a plain line every 10 %."""
        last = [-1]
        start = time.perf_counter()

        def update(done: int, total: int) -> None:
            pct = done * 100 // max(total, 1)
            stack = self._activities.get(threading.get_ident())
            if self.live and stack:
                stack[-1].percent = pct
                return
            if pct // 10 != last[0] // 10 or done == total:
                last[0] = pct
                self.say(f"{label}: {pct:3d}% ({done}/{total}, {time.perf_counter() - start:.1f}s)")

        return update

    def redraw(self) -> None:
        if not self.live:
            return
        with self._lock:
            self._erase()
            self._draw()

    def _lines(self) -> list[str]:
        now = time.perf_counter()
        return [stack[-1].line(now, 118, stack[0].label if len(stack) > 1 else "")
                for stack in list(self._activities.values()) if stack]

    def _draw(self) -> None:
        if not self.live:
            return
        lines = self._lines()
        if lines:
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()
        self._drawn = len(lines)

    def _erase(self) -> None:
        if self._drawn and self.live:
            self.out.write("\x1b[1A\x1b[2K" * self._drawn)
            self.out.flush()
        self._drawn = 0

    def _start_ticker(self) -> None:
        """Redraw once a second so elapsed times move while nothing else is said."""
        with self._lock:
            if self._ticker is not None or not self.live:
                return

            def tick() -> None:
                while True:
                    time.sleep(1.0)
                    with self._lock:
                        if not any(self._activities.values()):
                            self._ticker = None
                            return
                        self._erase()
                        self._draw()

            self._ticker = threading.Thread(target=tick, name="progress", daemon=True)
            self._ticker.start()
