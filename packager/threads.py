"""How many threads one computation of a build may use: the host's cores shared by the jobs running at once.

torch, numpy's OpenBLAS, llama.cpp and ExecuTorch's XNNPACK each start one thread per core, and their
threads spin while they wait for each other. When a build runs two targets side by side on a 2-core
host (a conversion child beside an in-process simulation), every such computation then waits for the
kernel to give its spinning peer a time slice: measured 2026-12-04 on this host with other work
beside it, the numpy MIL interpreter's linears took 12 s with OpenBLAS's 2 threads and 0.9 s with 1.
So a build that runs `jobs` things at once gives each `cores // jobs` threads (at least 1): the
environment variables the libraries read when they load (inherited by conversion children), and the
limits of what this process has already loaded (threadpoolctl for BLAS/OpenMP, torch's intra-op pool).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# Read by OpenMP (torch), OpenBLAS (numpy), MKL when they load, and by edgepack's own runners.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
EDGEPACK_THREADS = "EDGEPACK_THREADS"
# llama.cpp gains little past 4 threads on the small models edgepack verifies.
MAX_RUNNER_THREADS = 4


def host_cores() -> int:
    """The cores this process may run on (its CPU affinity, else the host's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def compute_threads() -> int:
    """Threads for one computation now: the build's share when a build set one, else the host's cores (up to 4)."""
    share = os.environ.get(EDGEPACK_THREADS, "")
    if share.isdigit() and int(share) > 0:
        return int(share)
    return max(1, min(MAX_RUNNER_THREADS, host_cores()))


def share_for(jobs: int) -> int:
    """Threads per computation when `jobs` computations run at once."""
    return max(1, host_cores() // max(1, jobs))


@contextmanager
def shared_cores(jobs: int) -> Iterator[int]:
    """Limit every computation started inside the block (in this process and in its children) to the share of
    `jobs` at once; restore what was there after. Yields the thread count."""
    threads = share_for(jobs)
    names = (*THREAD_VARIABLES, EDGEPACK_THREADS)
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: str(threads) for name in names})
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # an install without it: the environment still reaches libraries loaded later
        limits = None
    else:
        limits = threadpool_limits(limits=threads)
    try:
        yield threads
    finally:
        if limits is not None:
            limits.restore_original_limits()
        if torch is not None and torch_threads is not None:
            torch.set_num_threads(torch_threads)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def torch_one_thread() -> Iterator[None]:
    """torch's intra-op pool at one thread for the block, for a statistic an artifact's bytes depend on: a
    reduction split over threads sums in another order, so with the thread count the build's share gives it
    (packager.scheduler) the same input gave other calibration statistics (measured: 119 of Gemma 3 270M's
    126 linears' mean squares, by up to 2e-7 relative) and another quantized artifact."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
