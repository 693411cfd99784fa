"""The output lock and completion markers (preprocessing/runner/markers.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from preprocessing.runner import RunnerError
from preprocessing.runner.markers import OutputLock, complete, write_marker


def _write_lock(folder, host: str, pid: int, age_s: float = 0.0) -> None:
    path = folder / ".lock"
    path.write_text(json.dumps({"host": host, "pid": pid, "token": "other"}))
    then = time.time() - age_s
    os.utime(path, (then, then))


def test_lock_is_exclusive_and_released(tmp_path):
    with OutputLock(tmp_path):
        holder = json.loads((tmp_path / ".lock").read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(RunnerError, match=r"another run is writing to .*process \d+"):
            with OutputLock(tmp_path):
                pass
    assert not (tmp_path / ".lock").exists()
    with OutputLock(tmp_path):  # free again
        pass


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    _write_lock(tmp_path, socket.gethostname(), int(finished.stdout))
    with OutputLock(tmp_path) as lock:
        assert json.loads((tmp_path / ".lock").read_text())["token"] == lock.owner["token"]


def test_lock_of_another_host_is_kept_while_its_heartbeat_is_fresh(tmp_path):
    _write_lock(tmp_path, "some-other-host", 1, age_s=5)
    with pytest.raises(RunnerError, match="host some-other-host"):
        with OutputLock(tmp_path, stale_after_s=60):
            pass
    _write_lock(tmp_path, "some-other-host", 1, age_s=120)
    with OutputLock(tmp_path, stale_after_s=60):
        assert json.loads((tmp_path / ".lock").read_text())["host"] != "some-other-host"


def test_lock_heartbeat_keeps_it_fresh(tmp_path):
    with OutputLock(tmp_path, heartbeat_s=0.05):
        path = tmp_path / ".lock"
        old = time.time() - 100
        os.utime(path, (old, old))
        time.sleep(0.3)
        assert time.time() - path.stat().st_mtime < 5


def test_marker_checks_key_and_file_sizes(tmp_path):
    folder = tmp_path / "subjects" / "sub-a"
    folder.mkdir(parents=True)
    (folder / "volume.nii.gz").write_bytes(b"12345")
    write_marker(tmp_path, "sub-a", "key-1", {"subject": "sub-a"}, {"registration": {}})
    assert complete(tmp_path, "sub-a", "key-1")["entry"] == {"subject": "sub-a"}
    assert complete(tmp_path, "sub-a", "key-2") is None
    (folder / "volume.nii.gz").write_bytes(b"1234")  # truncated by a lost writer
    assert complete(tmp_path, "sub-a", "key-1") is None
