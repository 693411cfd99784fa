"""The runner on Dask distributed (preprocessing/runner/pool.py ``dask_pool``, ``--dask-workers``, ``--scheduler``).

The reference run (conftest.py) is the local process pool of 2 workers; a LocalCluster of 2 worker
processes with the same threads per worker must give the same bytes, also when one of its workers
is killed mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import dask
import pytest
from distributed import Client, LocalCluster

from preprocessing.runner import STATUS_FAILED, STATUS_OK, STATUS_SKIPPED, WorkerSettings, dask_pool, run_cohort
from preprocessing.runner.markers import marker_path
from preprocessing.runner.pool import core_count
from tests.preprocessing.runner.cohort_run import run_cli, tree_bytes

#: Threads per worker of the reference run (2 workers): the Dask runs must use the same.
THREADS = max(1, core_count() // 2)


def test_local_cluster_gives_the_process_pools_bytes(run, cohort, fast_config, tmp_path):
    output = tmp_path / "dask"
    result = run_cli("run", "--config", str(fast_config), "--input", str(cohort), "--output", str(output),
                     "--dask-workers", "2", "--quiet")
    assert result.returncode == 0, result.stderr
    assert json.loads((output / "dataset.json").read_text()) == json.loads((run / "dataset.json").read_text())
    assert tree_bytes(output) == tree_bytes(run)
    report = json.loads((output / "report.json").read_text())
    assert report["workers"] == 2 and report["ants_threads_per_worker"] == THREADS


def _kill_a_busy_worker(client: Client, output: Path, killed: list[int], stop: threading.Event) -> None:
    """Once subjects are being processed, SIGKILL one worker process that is running a task."""
    while not stop.is_set():
        if list(output.glob("subjects/*/*.nii.gz")):  # phase 2 has written files: a subject is mid-way
            busy = [address for address, tasks in client.processing().items() if tasks]
            if busy:
                pids = client.run(os.getpid, workers=busy[:1])
                pid = next(iter(pids.values()))
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.05)


def test_killed_dask_worker_its_subject_is_retried_and_the_cohort_finishes(run, cohort, fast_config, tmp_path):
    output = tmp_path / "killed"
    settings = WorkerSettings(seed=0, threads=THREADS)
    # As dask_pool's own cluster: the scheduler gives up on a task at its first lost worker, so
    # that the runner's single retry is the only one.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    killed: list[int] = []
    stop = threading.Event()
    try:
        with Client(cluster.scheduler_address, set_as_default=False) as observer:
            killer = threading.Thread(target=_kill_a_busy_worker, args=(observer, output, killed, stop), daemon=True)
            killer.start()
            report = run_cohort(fast_config, cohort, output, workers=2, progress=False, threads=THREADS,
                                executor=dask_pool(settings, cluster.scheduler_address))
            stop.set()
            killer.join()
    finally:
        cluster.close()
    assert killed, "no worker was killed: the run finished first"
    statuses = {row["subject"]: row for row in report["subjects"]}
    assert len(statuses) == 3
    for subject, row in statuses.items():
        assert row["status"] == STATUS_OK or (row["status"] == STATUS_FAILED and "lost" in row["reason"]), row
        folder = output / "subjects" / subject
        # No partial subject: a folder exists only with its marker.
        assert marker_path(output, subject).is_file() == folder.exists()
    assert not list(output.rglob(".tmp-*")), "a lost worker's temporary file was left"
    assert (output / "dataset.json").is_file()
    # The rerun does what is left (if a subject was lost twice) and ends with the reference bytes.
    again = run_cohort(fast_config, cohort, output, workers=2, progress=False, threads=THREADS)
    assert again["counts"][STATUS_FAILED] == 0
    assert again["counts"][STATUS_SKIPPED] == report["counts"][STATUS_OK]
    assert tree_bytes(output) == tree_bytes(run)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_scheduler_is_a_clear_error_before_any_work(cohort, fast_config, tmp_path):
    output = tmp_path / "out"
    address = f"tcp://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    result = run_cli("run", "--config", str(fast_config), "--input", str(cohort), "--output", str(output),
                     "--scheduler", address, "--quiet", timeout=120)
    assert result.returncode == 1
    assert f"cannot reach the Dask scheduler at {address}" in result.stderr
    assert time.monotonic() - start < 60
    assert list(output.iterdir()) == []  # no cache, no subject, no lock left


@pytest.mark.parametrize("arguments", [("--dask-workers", "2", "--workers", "2"), ("--scheduler", "x", "--dask-workers", "1")])
def test_one_place_to_run(arguments, cohort, fast_config, tmp_path):
    result = run_cli("run", "--config", str(fast_config), "--input", str(cohort), "--output", str(tmp_path),
                     *arguments, timeout=60)
    assert result.returncode == 2 and "not allowed with argument" in result.stderr
