"""Reader processes shared by the stages (scan, index, shards, extract), and how many to start.

Forked, so they start fast and share the parent's imports; they must not keep the parent's writer
lock alive, and they must not outlive a parent killed with SIGKILL.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import ctypes
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from indexer.db import lock

# Tasks in flight per reader: small tasks (a few hundred keys) need more queued to keep the readers
# busy; large ones (a whole shard, a scratch batch of 4,096 keys, a folder's stat calls) each hold
# more memory.
SMALL_TASKS_AHEAD = 4
LARGE_TASKS_AHEAD = 2
PR_SET_PDEATHSIG = 1


def init_worker() -> None:
    """Forked readers drop the parent's writer lock and die with the parent (kill -9 included)."""
    lock.release_inherited_locks()
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


def process_pool(workers: int) -> cf.ProcessPoolExecutor:
    return cf.ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("fork"), initializer=init_worker
    )


def in_order(pool: cf.Executor, function: Callable, calls: Iterable[tuple], ahead: int
             ) -> Iterator[tuple[tuple, cf.Future]]:
    """Submit function(*call) for each call, `ahead` at a time, and hand (call, future) back in
    submission order: the writer then records in the order it asked for (keys sorted, shards by
    path) whichever reader finishes first."""
    in_flight: collections.deque[tuple[tuple, cf.Future]] = collections.deque()
    for call in calls:
        in_flight.append((call, pool.submit(function, *call)))
        if len(in_flight) >= ahead:
            yield in_flight.popleft()
    while in_flight:
        yield in_flight.popleft()


def thread_pool(workers: int) -> cf.ThreadPoolExecutor:
    """Readers that wait on the network, not the CPU (remote sources): threads, many at once."""
    return cf.ThreadPoolExecutor(max_workers=workers)


def map_in_order(function: Callable, calls: Iterable[tuple], workers: int, ahead: int,
                 on_wait: Callable[[float], None] | None = None,
                 pool_of: Callable[[int], cf.Executor] | None = None,
                 on_error: Callable[[tuple, Exception], Any] | None = None) -> Iterator:
    """function(*call) for each call, the results in call order: by default in this process for
    one worker, else in `workers` forked readers; in pool_of's executor when given (threads, Ray).
    `ahead` calls are in flight. on_wait(seconds) hears how long this process waited for each
    result: the rest of its time is its own work (`writer_busy`). on_error(call, exc) stands in
    for the result of a call whose task failed for good (a Ray task out of retries); without it,
    the failure ends the run."""
    if pool_of is None and workers <= 1:
        for call in calls:
            yield function(*call)
        return
    with (pool_of or process_pool)(max(1, workers)) as pool:
        for call, future in in_order(pool, function, calls, ahead):
            started = time.perf_counter()
            try:
                result = future.result()
            except Exception as exc:
                if on_error is None:
                    raise
                result = on_error(call, exc)
            if on_wait is not None:
                on_wait(time.perf_counter() - started)
            yield result


def default_workers() -> int:
    """The CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
