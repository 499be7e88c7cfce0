"""Work a target starts beside its own steps, when the cores allow it.

A target's steps run one after another in its thread, but some do not depend on each other: a ladder's
last rung is converted unless a screen of a rung before it passes, whatever the other screens say, and
two artifacts of one conversion are verified independently. Measured on the bundled example (2026-12-05,
two targets at once on 2 cores), such steps run one after another made one target 812 s of an 894-s
build while the other core had idle time.

Running more at once only helps when no computation spins a multi-threaded pool against another
(packager.threads): so work is started beside only when each computation already has one thread.
Otherwise it runs when its result is first asked for, in the asking thread, or never when nobody asks
(a speculative step the ladder did not need). Work found not to be needed is discarded: its heavy steps
see their claim cancelled (packager.scheduler), so a conversion child is killed at once.
"""

from __future__ import annotations

import os
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from packager.threads import compute_threads, host_cores

T = TypeVar("T")
_running = threading.local()


def discard_flag() -> threading.Event | None:
    """The discard flag of the work this thread runs for a Pending (None outside such work)."""
    return getattr(_running, "discard", None)


def beside_allowed() -> bool:
    """Whether a computation may start beside this thread's: every computation is single-threaded now."""
    return compute_threads() == 1 and host_cores() >= 2


class Pending(Generic[T]):
    """The result of work started beside (or deferred): `result()` waits for it, or computes it here."""

    def __init__(self, what: str, compute: Callable[[], T]) -> None:
        self.what = what
        self._compute = compute
        self._lock = threading.Lock()
        self._done = False
        self._value: T | None = None
        self._error: BaseException | None = None
        self.asked = False
        self.thread: threading.Thread | None = None
        self._discard = threading.Event()

    def run(self) -> None:
        with self._lock:
            if self._done:
                return
            if self._discard.is_set():
                self._error = RuntimeError(f"{self.what}: discarded before it started")
                self._done = True
                return
            _running.discard = self._discard
            try:
                self._value = self._compute()
            except BaseException as exc:  # handed to whoever asks; Ctrl-C reaches the main thread anyway
                self._error = exc
            finally:
                _running.discard = None
            self._done = True

    def discard(self) -> None:
        """Not needed after all: never start it, or stop it (its heavy steps' claims are cancelled)."""
        self._discard.set()

    @property
    def unasked_error(self) -> BaseException | None:
        """The error of work whose result nobody asked for and that was not discarded (None otherwise)."""
        return None if self.asked or self._discard.is_set() else self._error

    def result(self) -> T:
        self.asked = True
        if self.thread is not None:
            self.thread.join()
        self.run()  # deferred: computed now, in this thread (a no-op once done)
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class Beside:
    """Starts work beside the current thread (see the module docstring); `start` returns its Pending."""

    def __init__(self) -> None:
        self.started: list[Pending[object]] = []

    def start(self, what: str, compute: Callable[[], T]) -> Pending[T]:
        pending: Pending[T] = Pending(what, compute)
        if beside_allowed():
            pending.thread = threading.Thread(target=pending.run, name=f"beside: {what}", daemon=True)
            pending.thread.start()
        self.started.append(pending)  # type: ignore[arg-type]
        return pending


@contextmanager
def beside(cancel: Callable[[], None]) -> Iterator[Beside]:
    """Work started in the block; on leaving, wait for what is still running. When the block fails, `cancel()`
    (the build's: it fails anyway) first stops that work's children, so the failure is not held up by them.
    An error of work nobody asked for (a speculative step) goes to the build log, not to the build: the
    step that needed it would have asked and failed with it."""
    work = Beside()
    try:
        yield work
    except BaseException:
        if any(p.thread is not None and p.thread.is_alive() for p in work.started):
            cancel()
        raise
    finally:
        for pending in work.started:
            if pending.thread is not None:
                pending.thread.join()
            if pending.unasked_error is not None:
                os.write(2, f"{pending.what} (not needed) failed:\n".encode()
                         + "".join(traceback.format_exception(pending.unasked_error)).encode("utf-8", "replace"))
