"""The executor seam: where the runner's tasks run, and what happens when a worker is lost.

The runner hands every task (a subject's read, a reference comparison, a subject's processing) to
a :class:`WorkerPool`, which wraps any ``concurrent.futures``-style executor:

* :func:`local_pool`: a process pool on this machine (the default);
* :func:`dask_pool`: a Dask distributed cluster, an existing one (``tcp://HOST:8786``) or a
  ``LocalCluster`` started for the run.

Each task first prepares its worker process once (:func:`prepare_worker`: ANTs seed and thread
count before ANTs is imported, freed memory kept for reuse), so that any executor whose workers are
processes gives the same bytes as the local pool for the same threads per worker. A task whose
worker is lost (the process killed, a host gone) is submitted once more; lost again, it is handed
back as :class:`WorkerLost` for the caller to report.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Executor, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any, Hashable

from preprocessing.registration import configure_determinism
from preprocessing.runner.common import RunnerError

logger = logging.getLogger(__name__)

__all__ = ["WorkerLost", "WorkerPool", "WorkerSettings", "core_count", "dask_pool", "local_pool", "prepare_worker"]

#: Seconds to wait for a Dask scheduler to answer before the run gives up (nothing has started then).
SCHEDULER_TIMEOUT_S = 10.0


class WorkerLost(RuntimeError):
    """A task's worker process was lost on every attempt (killed, out of memory, host gone)."""


@dataclass(frozen=True)
class WorkerSettings:
    """What every worker process must have before its first task.

    Attributes:
        seed: ANTs' random seed.
        threads: ANTs/ITK, OpenMP and torch threads per worker. Results depend on it (ANTs sums in
            thread order), so a run on Dask matches the local pool only for the same value.
    """

    seed: int
    threads: int


_prepared: WorkerSettings | None = None


def prepare_worker(settings: WorkerSettings) -> None:
    """Fix seeds and thread counts in this process, once, before anything imports ANTs or torch.

    Each worker also keeps the memory it frees for its next allocations: a subject's steps
    allocate and free arrays of tens to hundreds of MiB, which glibc otherwise maps afresh (and
    the kernel zeroes page by page) every time. A worker then holds its peak memory until it ends.

    Raises:
        RunnerError: this process already ran tasks with other settings (ITK reads its thread
            count once, so a Dask worker kept from an earlier run with another ``--threads``
            cannot give reproducible results).
    """
    global _prepared
    if _prepared == settings:
        return
    if _prepared is not None:
        raise RunnerError(f"this worker process already runs ANTs with {_prepared.threads} thread(s) and seed "
                          f"{_prepared.seed}; restart the workers to run with {settings.threads} and {settings.seed}")
    from medgan_common.host_memory import retain_freed_host_memory

    retain_freed_host_memory()
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = str(settings.threads)
    configure_determinism(seed=settings.seed, threads=settings.threads)
    import torch

    torch.set_num_threads(settings.threads)
    _prepared = settings


def _run_task(settings: WorkerSettings, function: Callable[[dict], Any], job: dict) -> Any:
    """One task in a worker process: prepare the process (first task only), then run ``function(job)``."""
    prepare_worker(settings)
    return function(job)


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when the runner dies, so that a killed run leaves no orphan writing files."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except OSError:  # not Linux: orphans finish their subject, which atomic writes make harmless
        pass


def _init_local_worker(settings: WorkerSettings) -> None:
    _die_with_parent()
    prepare_worker(settings)


def core_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _is_worker_loss(error: BaseException) -> bool:
    if isinstance(error, BrokenExecutor):  # a process pool whose worker died
        return True
    try:
        from distributed import KilledWorker
    except ImportError:
        return False
    return isinstance(error, KilledWorker)


class WorkerPool:
    """Runs the runner's tasks on an executor and retries a task whose worker was lost.

    Args:
        executor: any ``concurrent.futures``-style executor whose workers are processes (threads
            would share ANTs' process-wide thread count, and a thread cannot be killed).
        settings: seeds and thread counts every worker process gets before its first task.
        workers: the number of parallel workers (for the report).
        renew: makes a new executor when ``executor`` is broken (a process pool breaks when one of
            its processes dies); ``None`` when the executor recovers on its own (Dask).
        retries: times a task is submitted again after its worker was lost.
    """

    def __init__(self, executor: Executor, settings: WorkerSettings, workers: int,
                 renew: Callable[[], Executor] | None = None, retries: int = 1):
        self.executor = executor
        self.settings = settings
        self.workers = workers
        self.retries = retries
        self._renew = renew

    def submit(self, function: Callable[[dict], Any], job: dict) -> Future:
        try:
            return self.executor.submit(_run_task, self.settings, function, job)
        except BrokenExecutor:
            if self._renew is None:
                raise
            logger.warning("a worker process died: starting a new pool")
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = self._renew()
            return self.executor.submit(_run_task, self.settings, function, job)

    def results(self, function: Callable[[dict], Any], jobs: Mapping[Hashable, dict], description: str,
                progress: bool) -> Iterator[tuple[Hashable, Any, BaseException | None]]:
        """Run ``function`` on every job; yields ``(name, result, None)`` or ``(name, None, error)`` as they finish.

        ``error`` is what the task raised, or :class:`WorkerLost` once its worker was lost
        ``retries + 1`` times. A progress bar on stderr counts the finished tasks.
        """
        from tqdm import tqdm

        attempts = dict.fromkeys(jobs, 0)
        waiting = deque(jobs)
        pending: dict[Future, Hashable] = {}
        with tqdm(total=len(jobs), desc=description, unit="task", disable=not progress or not jobs) as bar:
            while waiting or pending:
                # No more tasks in flight than workers: the order of ``jobs`` is the order they
                # start in, and a process pool broken by one lost worker fails only the tasks
                # that were running, which are charged an attempt.
                while waiting and len(pending) < self.workers:
                    name = waiting.popleft()
                    pending[self.submit(function, jobs[name])] = name
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    name = pending.pop(future)
                    try:
                        result, error = future.result(), None
                    except Exception as raised:  # the caller decides what a failed task means
                        result, error = None, raised
                        if _is_worker_loss(raised):
                            attempts[name] += 1
                            if attempts[name] <= self.retries:
                                logger.warning("%s: the worker running %s was lost; trying again", description, name)
                                waiting.appendleft(name)
                                continue
                            error = WorkerLost(f"its worker process was lost {attempts[name]} times "
                                               f"({type(raised).__name__})")
                    bar.update()
                    yield name, result, error


@contextmanager
def local_pool(workers: int, settings: WorkerSettings) -> Iterator[WorkerPool]:
    """A pool of ``workers`` spawned processes on this machine (the runner's default)."""

    def start() -> Executor:
        return ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_local_worker,
                                   initargs=(settings,))

    pool = WorkerPool(start(), settings, workers, renew=start)
    try:
        yield pool
    finally:
        pool.executor.shutdown(wait=True, cancel_futures=True)


@contextmanager
def dask_pool(settings: WorkerSettings, scheduler: str | None = None, workers: int | None = None,
              progress: bool = True) -> Iterator[WorkerPool]:
    """A pool on a Dask distributed cluster: an existing one, or a ``LocalCluster`` of ``workers`` processes.

    Every worker must see the input and output folders at the same paths and have this project
    installed. A task runs one subject with ``settings.threads`` ANTs threads, so each Dask worker
    should have one thread (``dask worker ADDRESS --nthreads 1 --nworkers <cores / threads>``).
    A local cluster gets one thread per worker and lets the scheduler give up on a task after its
    first lost worker, so that the pool's single retry is the only one (an existing scheduler
    applies its own ``distributed.scheduler.allowed-failures`` first).

    Args:
        settings: seeds and thread counts of every worker.
        scheduler: the scheduler's address (``tcp://HOST:8786``); ``None`` starts a local cluster.
        workers: worker processes of the local cluster.
        progress: print the dashboard's address.

    Raises:
        RunnerError: the scheduler does not answer within :data:`SCHEDULER_TIMEOUT_S` seconds, or it
            has no worker.
    """
    import dask
    from distributed import Client, LocalCluster

    cluster = None
    if scheduler is None:
        if not workers:
            raise RunnerError("a local Dask cluster needs a number of workers")
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=":0", silence_logs=logging.ERROR)
        address = cluster.scheduler_address
    else:
        address = scheduler
    try:
        try:
            client = Client(address, timeout=SCHEDULER_TIMEOUT_S, set_as_default=False)
        except (OSError, TimeoutError) as error:
            raise RunnerError(f"cannot reach the Dask scheduler at {address} within {SCHEDULER_TIMEOUT_S:g} s: "
                              f"{error}") from None
        try:
            count = sum(client.nthreads().values())  # tasks the cluster runs at once
            if count == 0:
                raise RunnerError(f"the Dask scheduler at {address} has no worker")
            if progress and client.dashboard_link:
                print(f"Dask dashboard: {client.dashboard_link}", flush=True)
            yield WorkerPool(client.get_executor(pure=False), settings, count)
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()
