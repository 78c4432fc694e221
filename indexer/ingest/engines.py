"""Where reading runs: `local` (forked reader processes on this machine; threads for remote
sources, which wait on the network) or `ray` (tasks on a Ray cluster, `--engine ray`).

One seam: `pool_for(settings, io_bound)` gives the executor factory `workers.map_in_order` runs
its calls in. Ray's tasks come back as concurrent.futures Futures (ObjectRef.future), so the writer
side is the same for both engines: results in submission order, recorded by the one recorder in
this process. Ray is started (or joined: `--ray-address`, else RAY_ADDRESS, else a new local
instance) once per process, on first use, and a local instance this process started is stopped
at its exit.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures as cf
import functools
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from indexer.errors import IndexerError
from indexer.ingest.guard import raise_if_environment
from indexer.ingest.workers import thread_pool

ENGINES = ("local", "ray")
TASK_RETRIES = 3  # Ray runs a task again this many times when its worker dies
DIED = {"WorkerCrashedError", "NodeDiedError"}  # what Ray raises for a task whose retries all died
INSTALL = "pip install 'indexer[ray]'"
PoolFactory = Callable[[int], cf.Executor] | None


def pool_for(engine: str, ray_address: str | None, io_bound: bool) -> PoolFactory:
    """The executor factory for one map_in_order call of a run."""
    if engine == "ray":
        return lambda workers: RayExecutor(ray_address)
    if engine != "local":
        raise IndexerError(f"--engine {engine!r}: use {' or '.join(ENGINES)}")
    return thread_pool if io_bound else None  # None: map_in_order's forked readers (inline for one)


class TaskTally:
    """Where this process's Ray tasks ran, and how often Ray had to run them again (updated from
    Ray's callback threads, read once a run by run_report)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_node: collections.Counter[str] = collections.Counter()
        self.retries = 0
        self.failed = 0

    def ran(self, node: str, attempt: int) -> None:
        """A task finished on node at Ray's attempt number `attempt` (0: its first attempt)."""
        with self.lock:
            self.by_node[node] += 1
            self.retries += attempt

    def gave_up(self, exc: BaseException) -> None:
        """A task failed for good. When its worker or node died, Ray ran it TASK_RETRIES more
        times first (max_retries); an exception the task raised is not retried (Ray's default)."""
        with self.lock:
            self.failed += 1
            if type(exc).__name__ in DIED:
                self.retries += TASK_RETRIES

    def report(self) -> dict:
        """The counts since the last report, then zero."""
        with self.lock:
            found = {"tasks_by_node": dict(self.by_node), "task_retries": self.retries,
                     "tasks_failed": self.failed}
            self.by_node.clear()
            self.retries = self.failed = 0
        return found


class RayExecutor(cf.Executor):
    """Submits calls as Ray tasks; the futures resolve in this process. Counts where tasks ran and
    how often they were retried (`tally`, one for the process)."""

    tally: ClassVar[TaskTally] = TaskTally()

    def __init__(self, address: str | None) -> None:
        self.ray = _ray(address)

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> cf.Future:
        ref = _remote(fn).remote(*args, **kwargs)
        outer: cf.Future = cf.Future()

        def unwrap(inner: cf.Future) -> None:
            try:
                node, attempt, result = inner.result()
            except BaseException as exc:
                RayExecutor.tally.gave_up(exc)
                outer.set_exception(exc)
                return
            RayExecutor.tally.ran(node, attempt)
            outer.set_result(result)

        ref.future().add_done_callback(unwrap)
        return outer

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """The cluster outlives a call: it is left as it is (see _ray)."""


_LOCK = threading.Lock()
_STARTED_HERE: list[bool] = []


def _ray(address: str | None) -> Any:
    """The ray module, connected (once per process)."""
    try:
        import ray
    except ImportError:
        raise IndexerError(f"--engine ray needs Ray: {INSTALL}") from None
    with _LOCK:
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            except Exception as exc:
                raise IndexerError(f"cannot start or join Ray ({' '.join(str(exc).split())[:300]}): check "
                                   "--ray-address / RAY_ADDRESS, or run `ray start --head`") from None
            _STARTED_HERE.append(True)
            atexit.register(ray.shutdown)
        _errors_to_stderr()
    return ray


def _errors_to_stderr() -> None:
    """Ray's driver prints what the cluster reports (a worker died, a task is retried) to stdout,
    whatever log_to_driver says, which would break a `--json` summary: they go to stderr instead.
    Ray 2.60 has no setting for it; its printer is replaced (once) by one that marks them errors."""
    from ray._private import worker

    printer = worker.print_to_stdstream
    if getattr(printer, "to_stderr", False):
        return

    def to_stderr(data: dict, ignore_prefix: bool) -> None:
        printer({**data, "is_err": True}, ignore_prefix)

    to_stderr.to_stderr = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_stderr


@functools.cache
def _remote(fn: Callable) -> Any:
    """fn as a Ray task that also says on which node it ran, and at which attempt."""
    import ray

    @ray.remote(max_retries=TASK_RETRIES)
    def task(*args: Any, **kwargs: Any) -> tuple[str, int, Any]:
        return ray.util.get_node_ip_address(), _attempt(), fn(*args, **kwargs)

    return task


def _attempt() -> int:
    """Ray's attempt number of the running task (0 the first time; a retry after its worker died,
    or a re-run to rebuild a lost result, counts up). Ray 2.60 has it on the core worker only, not
    in its public runtime context."""
    from ray._private.worker import global_worker

    return int(global_worker.core_worker.get_current_task_attempt_number())


def fallback_for(engine: str, fallback: Callable[[tuple, Exception], Any]) -> Callable | None:
    """map_in_order's on_error for this engine: on Ray, a task that failed for good (its worker
    died through every retry) gives way to fallback(call, exc) and the run goes on; locally there is
    none, so a broken reader pool (a reader killed, out of memory) stops the run, as the
    environment failing does, instead of marking every remaining sample failed."""
    if engine != "ray":
        return None

    def on_error(call: tuple, exc: Exception) -> Any:
        raise_if_environment(getattr(exc, "cause", None) or exc)  # a RayTaskError wraps what was raised
        return fallback(call, exc)

    return on_error


def default_readers(engine: str, ray_address: str | None, local_default: int) -> int:
    """How many reads to keep going at once: the cluster's CPUs on Ray, else local_default."""
    if engine != "ray":
        return local_default
    return max(1, int(_ray(ray_address).cluster_resources().get("CPU", 1)))


def run_report(engine: str) -> dict:
    """What the run summary says about where reading ran: for Ray, since the last report (one a
    run), the tasks each node finished (`tasks_by_node`), the attempts Ray ran again
    (`task_retries`: each finished task's attempt number, plus TASK_RETRIES for each task that
    failed for good with its worker or node dead) and the tasks that failed for good
    (`tasks_failed`, their fallback recorded instead)."""
    if engine != "ray":
        return {"engine": engine}
    return {"engine": engine, **RayExecutor.tally.report()}
