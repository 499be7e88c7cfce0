"""Run a build's targets side by side within the host's cores and memory.

Targets build in threads: their heavy conversions already run in child processes, and the
in-process work (torch, llama.cpp, numpy, a browser) spends its time outside the GIL. Cores bound
how many targets run at once (--jobs); memory bounds which heavy steps run at once (--max-ram).
Every heavy step (a conversion child, an fp32 model loaded in this process) asks for its expected
peak before it starts and waits until that fits beside what is already running. A step's expected
peak is its own past measurement when there is one (kept per kind of step in the stage cache, as a
multiple of the checkpoint's fp32 size, so it carries over to other checkpoints), else the
caller's estimate. A step that alone needs more than an explicit --max-ram stops the build with
exit 3 before it starts; under the default budget it runs alone.

The first failure cancels the rest: waiting steps stop waiting, and running conversion children
are killed (packager.child_stage polls the claim's `cancelled`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from packager.atomic import write_text_atomically
from packager.beside import discard_flag
from packager.errors import UnsupportedError
from packager.peak_memory import release_free_memory, vm_rss_kb
from packager.progress import Reporter
from packager.threads import shared_cores

if TYPE_CHECKING:
    from packager.checkpoint import Checkpoint

T = TypeVar("T")
GB = 2**30
# What the default budget leaves to the OS, the desktop and the build's own bookkeeping.
HEADROOM_FRACTION = 0.1
HEADROOM_MIN = 2 * GB
COSTS_FILE = "measured-costs.json"
# A step's peak is learned only from a model at least this large in fp32 (64M parameters): a tiny test
# model's conversion is all libraries and no model, and its ratio would predict nonsense for a real one.
LEARN_MIN_SCALE = 256 * 2**20
# What a conversion child holds before it loads any model: Python, torch and the converter's libraries.
CHILD_LIBRARIES = GB


class BuildCancelled(Exception):
    """Another part of the build failed or was interrupted; this step stopped without finishing."""


def host_memory() -> int:
    """Physical memory of this host in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_budget() -> int:
    """What a build may use when --max-ram is not given: the host's memory minus headroom."""
    total = host_memory()
    return total - max(HEADROOM_MIN, int(total * HEADROOM_FRACTION))


def parse_size(text: str) -> int:
    """Bytes from '12G', '12GB', '800M' or a plain number of GB (as --max-ram takes it)."""
    units = {"": GB, "G": GB, "GB": GB, "GIB": GB, "M": 2**20, "MB": 2**20, "MIB": 2**20, "T": 2**40, "TB": 2**40}
    clean = text.strip().upper()
    number = clean.rstrip("GMTIB")
    unit = clean[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or not value > 0:
        raise ValueError(f"{text!r} is not a size; write e.g. 12G or 800M")
    return int(value * units[unit])


class MeasuredCosts:
    """What past builds measured, in the stage cache: each kind of heavy step's peak memory as a multiple of
    the checkpoint's fp32 size, and each target's wall time (the longest targets start first)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _read(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and v > 0} \
            if isinstance(data, dict) else {}

    def peak_ratio(self, kind: str) -> float | None:
        """Bytes per fp32 byte that a step of `kind` held above its fixed part, as last measured."""
        return self._read().get(f"peak-per-fp32:{kind}")

    def seconds(self, target: str) -> float:
        return self._read().get(f"seconds:{target}", 0.0)

    def learn_peak(self, kind: str, ratio: float) -> None:
        self._learn(f"peak-per-fp32:{kind}", ratio)

    def learn_seconds(self, target: str, seconds: float) -> None:
        """Keep the longest a target took: a warm build's few seconds say nothing about a cold one."""
        self._learn(f"seconds:{target}", max(seconds, self.seconds(target)))

    def _learn(self, key: str, value: float) -> None:
        with self._lock:
            data = self._read()
            data[key] = round(value, 3)
            write_text_atomically(self.path, json.dumps(data, indent=2, sort_keys=True))


@dataclass(frozen=True)
class HeavyStep:
    """A kind of heavy step a build may run, with its expected peak before one has been measured (a multiple
    of the checkpoint's fp32 size). Targets declare theirs (`heavy_steps`), so a build's memory need is known
    before it starts (packager.memory_plan)."""

    kind: str
    estimate: float  # bytes per fp32 byte of the checkpoint, above `fixed`
    in_process: bool = True  # False: a child process (its peak is measured and learned)
    fixed: int = 0  # bytes it needs whatever the model (a child's libraries)
    # An in-process step that builds a torch model runs alone among such steps (see Scheduler.heavy); one that
    # only runs a finished artifact in a runtime (a simulator, an on-device runtime's host build) builds none and
    # runs beside them.
    alone: bool = True
    # (target option, values): a step of a format the user may not ask for runs only when that target option
    # has one of those values; None: every build of the target runs it.
    only_when: tuple[str, tuple[str, ...]] | None = None
    gated: bool = False  # runs only in a gated build (a ladder's screens): --no-gate ships its first rung unscreened
    # The estimate for a checkpoint above packager.verify.fp32_model.STREAM_ABOVE, when the step then reads it a
    # block at a time and so costs a smaller multiple (None: the same estimate). Measured under a kind of its own.
    streamed: float | None = None

    def at_scale(self, fp32_bytes: int) -> HeavyStep:
        """This step as a checkpoint of `fp32_bytes` runs it: the streamed variant above the threshold."""
        from packager.verify.fp32_model import STREAM_ABOVE

        if self.streamed is None or fp32_bytes <= STREAM_ABOVE:
            return self
        return dataclasses.replace(self, kind=f"{self.kind} (streamed)", estimate=self.streamed, streamed=None)

    def runs_with(self, option: Callable[[str], object], no_gate: bool = False) -> bool:
        """Whether a build whose target option values `option(name)` gives (and --no-gate or not) runs this step."""
        if self.gated and no_gate:
            return False
        return self.only_when is None or option(self.only_when[0]) in self.only_when[1]


class AnySet:
    """Set as soon as any of its events is: the build's cancellation, or the discarding of the work a step
    belongs to (packager.beside)."""

    def __init__(self, *events: threading.Event) -> None:
        self.events = events

    def is_set(self) -> bool:
        return any(event.is_set() for event in self.events)


@dataclass
class Claim:
    """Memory granted to one heavy step; a child runner records the peak it measured here."""

    kind: str
    expected: int
    cancelled: AnySet  # a child runner kills its child when this is set
    measured_peak: int = 0  # bytes; 0 when the step ran in this process (its peak is not its own)


@dataclass
class Scheduler:
    """The cores and memory one build may use, shared by the targets it runs at once."""

    jobs: int  # targets at once; 0: all of them
    limit: int
    explicit: bool  # the limit came from --max-ram: a step that cannot fit is an error, not a warning
    scale: int  # the checkpoint's fp32 size in bytes: expected peaks are multiples of it
    reporter: Reporter
    costs: MeasuredCosts
    cancelled: threading.Event = field(default_factory=threading.Event)
    _claimed: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _in_process: threading.RLock = field(default_factory=threading.RLock)
    _first_failure: BaseException | None = None
    # This process's resident memory when the build started (interpreter, libraries, the checkpoint's tables).
    base: int = field(default_factory=lambda: vm_rss_kb() * 1024)
    # Processes this process had before the build (a test session's servers): a cancelled build spares them.
    _spare: frozenset[int] = field(default_factory=lambda: frozenset(descendants()))
    # Targets whose ladder screens would not fit, and why (packager.memory_plan.screens_to_skip): their rungs are
    # converted and verified without a screen.
    unscreened: dict[str, str] = field(default_factory=dict)

    def expected(self, kind: str, estimate: float, fixed: int = 0) -> int:
        """Bytes a step of `kind` is expected to peak at: `fixed` plus, per fp32 byte of the checkpoint, what
        was measured before for a model of this size, else `estimate`."""
        ratio = self.learned_ratio(kind)
        return fixed + int((estimate if ratio is None else ratio) * self.scale)

    def _sized(self, kind: str) -> str:
        """`kind` measured on models of this one's size (the power of two of its fp32 bytes): ratios learned on a
        270M, whose fixed costs spread over few bytes, put a 4B's Android build at 13.2 GB where it measured 10.6."""
        return f"{kind} @2^{self.scale.bit_length()}"

    def learned_ratio(self, kind: str) -> float | None:
        """What a step of `kind` measured on a model of this size, per fp32 byte above its fixed part (None: never)."""
        return self.costs.peak_ratio(self._sized(kind))

    def learn_peak(self, kind: str, ratio: float) -> None:
        self.costs.learn_peak(self._sized(kind), ratio)

    def step(self, step: HeavyStep, what: str) -> contextlib.AbstractContextManager[Claim]:
        """Hold memory for a declared heavy step while it runs (see `heavy`)."""
        step = step.at_scale(self.scale)
        return self.heavy(step.kind, what, step.estimate, step.in_process, step.fixed, step.alone)

    @contextmanager
    def heavy(self, kind: str, what: str, estimate: float, in_process: bool = True, fixed: int = 0,
              alone: bool = True) -> Iterator[Claim]:
        """Hold memory for a heavy step for as long as it runs; wait until it fits beside the others.

        An in-process step that builds a torch model (an fp32 model, a quantized screen) also runs alone
        among such steps: transformers' from_pretrained builds a model under a process-wide meta-device
        context, so tensors another thread creates meanwhile land on the meta device ("Tensor on device
        meta is not on the expected device cpu", reproduced with two screens in threads). Conversion
        children, and in-process steps that only run an artifact (`alone=False`), run beside them: with the
        runs held to that lock too, about 600 s of the bundled example's 957-s build was one lane.
        """
        need = self.expected(kind, estimate, fixed)
        available = self.limit - self.base
        discarded = discard_flag()
        stop = AnySet(self.cancelled, *([discarded] if discarded is not None else []))
        if need > available and self.explicit:
            raise UnsupportedError(
                f"{what} is expected to need about {need / GB:.1f} GB, more than the {self.limit / GB:.1f} GB "
                f"--max-ram allows (of which this process already holds {self.base / GB:.1f} GB). Raise --max-ram, "
                "build this target on a machine with more memory, or lower --context-length.")
        with self._cond:
            told = False
            while self._claimed and self._claimed + need > available:
                if not told:
                    self.reporter.say(f"{what}: waiting for memory (expects {need / GB:.1f} GB; "
                                      f"{self._claimed / GB:.1f} of {available / GB:.1f} GB in use by other steps)")
                    told = True
                self._cond.wait(0.5)
                if stop.is_set():
                    raise BuildCancelled(what)
            self._claimed += need
        claim = Claim(kind, need, stop)
        try:
            with self._in_process if in_process and alone else contextlib.nullcontext():
                if stop.is_set():
                    raise BuildCancelled(what)
                yield claim
        finally:
            if in_process:
                release_free_memory()
            with self._cond:
                self._claimed -= need
                self._cond.notify_all()
            if claim.measured_peak and self.scale >= LEARN_MIN_SCALE:
                self.learn_peak(kind, max(0, claim.measured_peak - fixed) / self.scale)

    def run_all(self, jobs: list[tuple[str, Callable[[], T]]], hints: dict[str, float] | None = None) -> list[T]:
        """Run the named jobs, at most `self.jobs` at once (0: all), the longest first (as measured before, else as
        `hints` expects, in seconds); return their results in the order given.

        On the first failure (or Ctrl-C / SIGTERM in the main thread) the others are cancelled and
        awaited, so no conversion child outlives the build, and that first failure is raised.
        """
        at_once = min(self.jobs, len(jobs)) if self.jobs else len(jobs)
        if at_once <= 1:
            return [self._timed(name, job, alone=True) for name, job in jobs]
        # Each computation gets its share of the cores, or spinning thread pools take turns (packager.threads).
        with shared_cores(at_once) as threads:
            self.reporter.say(f"building {at_once} targets at once, {threads} thread(s) each")
            return self._run_side_by_side(jobs, hints or {}, at_once)

    def _run_side_by_side(self, jobs: list[tuple[str, Callable[[], T]]], hints: dict[str, float],
                          at_once: int) -> list[T]:
        pool = ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="target")
        order = sorted(range(len(jobs)),
                       key=lambda i: -(self.costs.seconds(jobs[i][0]) or hints.get(jobs[i][0], 0.0)))
        submitted = {i: pool.submit(self._timed, *jobs[i]) for i in order}
        futures: list[Future[T]] = [submitted[i] for i in range(len(jobs))]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in futures if f in done and f.exception() is not None]
            if failed:
                self.cancel()
                wait(futures)
                raise self._first_failure or _first_real(failed)
            return [f.result() for f in futures]
        except BaseException:
            self.cancel()
            for future in futures:
                future.cancel()
            wait(futures)
            raise
        finally:
            pool.shutdown(wait=True)


    def _timed(self, name: str, job: Callable[[], T], alone: bool = False) -> T:
        if self.cancelled.is_set():  # queued behind a target that has failed meanwhile
            raise BuildCancelled(name)
        start = time.perf_counter()
        try:
            result = job()
        except BuildCancelled:
            raise
        except BaseException as exc:
            with self._cond:
                first = not self.cancelled.is_set() and self._first_failure is None
                if first:
                    self._first_failure = exc  # what the others fail with after this is its echo
            if not alone and first:
                # Into the build log (fd 2 during a build, packager.build_log): the whole story of the failure.
                os.write(2, traceback.format_exc().encode("utf-8", "replace"))
                first_line = (str(exc).strip().splitlines() or [""])[0][:300]
                self.reporter.say(f"{name} failed ({type(exc).__name__}: {first_line}); stopping the other targets")
                self.cancel()
            raise
        self.costs.learn_seconds(name, time.perf_counter() - start)
        return result

    def cancel(self) -> None:
        """Stop the build: waiting steps stop waiting, and every process this build started is killed, so a
        thread blocked on a browser or a converter returns at once (its error is then the cancellation's echo)."""
        self.cancelled.set()
        with self._cond:
            self._cond.notify_all()
        kill_descendants(self._spare)


def descendants(spare: frozenset[int] = frozenset(), root: int | None = None) -> list[int]:
    """Every process below `root` (default: this one), except the subtrees of the pids in `spare`."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid for pid in children.get(root or os.getpid(), []) if pid not in spare]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def kill_descendants(spare: frozenset[int] = frozenset()) -> list[int]:
    """SIGKILL every process below this one but the subtrees of `spare` (all are found before any is
    killed, so no orphan escapes the walk). Returns their pids."""
    found = descendants(spare)
    for pid in found:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return found


def scheduler_for(ckpt: Checkpoint, reporter: Reporter, cache: Path, jobs: int | None = None,
                  max_ram: int | None = None) -> Scheduler:
    """The scheduler of one build: `jobs` targets at once (default: all of them), within `max_ram`.

    All at once by default because a target spends much of its time waiting (for a conversion child, for
    the lock of in-process model steps, for a browser): with the host's cores as the limit, on 2 cores one
    target of the bundled example waited 423 s for another's slot, then ran 300 s alone (2026-12-05). The
    cores are shared anyway (packager.threads), and every heavy step still waits for its memory."""
    return Scheduler(jobs=jobs or 0, limit=max_ram or default_budget(), explicit=max_ram is not None,
                     scale=4 * ckpt.parameter_count, reporter=reporter, costs=MeasuredCosts(cache / COSTS_FILE))


def _first_real(failed: list[Future[T]]) -> BaseException:
    """The failure that caused the others: a BuildCancelled is only its echo."""
    errors = [f.exception() for f in failed]
    real = [e for e in errors if not isinstance(e, BuildCancelled)]
    return (real or errors)[0]  # type: ignore[return-value]
