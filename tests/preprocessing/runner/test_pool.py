"""The executor seam (preprocessing/runner/pool.py): a lost worker's task is retried once, then reported."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from preprocessing.runner import RunnerError, WorkerLost, WorkerSettings, local_pool
from preprocessing.runner.pool import WorkerPool, prepare_worker

SETTINGS = WorkerSettings(seed=0, threads=1)


def _dies_first_time(job: dict) -> dict:
    """Kills its own worker process on its first attempt (a worker lost mid-task), succeeds on the next."""
    attempts = Path(job["attempts"])
    attempts.write_text(attempts.read_text() + "x" if attempts.exists() else "x")
    if len(attempts.read_text()) <= job["deaths"]:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"pid": os.getpid(), "threads": os.environ["OMP_NUM_THREADS"]}


def _fails(job: dict) -> dict:
    raise ValueError(f"bad job {job['name']}")


def test_task_of_a_lost_worker_is_retried_once(tmp_path):
    jobs = {"once": {"attempts": str(tmp_path / "once"), "deaths": 1},
            "twice": {"attempts": str(tmp_path / "twice"), "deaths": 2}}
    with local_pool(1, SETTINGS) as pool:
        outcome = {name: (result, error) for name, result, error in pool.results(_dies_first_time, jobs, "t", False)}
        # The pool still works after its worker died twice.
        again = list(pool.results(_dies_first_time, {"after": {"attempts": str(tmp_path / "after"), "deaths": 0}},
                                  "t", False))
    assert outcome["once"][1] is None and outcome["once"][0]["threads"] == "1"
    assert isinstance(outcome["twice"][1], WorkerLost) and "lost 2 times" in str(outcome["twice"][1])
    assert (tmp_path / "twice").read_text() == "xx"  # no third attempt
    assert again[0][2] is None


def test_task_errors_are_handed_back_not_retried(tmp_path):
    with local_pool(1, SETTINGS) as pool:
        [(name, result, error)] = list(pool.results(_fails, {"a": {"name": "a"}}, "t", False))
    assert name == "a" and result is None and isinstance(error, ValueError) and "bad job a" in str(error)


def test_any_executor_fits_the_seam():
    with ThreadPoolExecutor(1) as executor:
        pool = WorkerPool(executor, SETTINGS, 1)
        [(_, result, error)] = list(pool.results(_fails, {"b": {"name": "b"}}, "t", False))
    assert isinstance(error, ValueError)


def test_a_worker_prepared_for_other_threads_refuses_tasks(monkeypatch):
    import preprocessing.runner.pool as pool_module

    monkeypatch.setattr(pool_module, "_prepared", WorkerSettings(seed=0, threads=4))
    with pytest.raises(RunnerError, match="already runs ANTs with 4 thread"):
        prepare_worker(SETTINGS)
