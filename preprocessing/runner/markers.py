"""Completion markers and the output lock, both safe on a filesystem that several hosts share.

A subject is complete when its marker file, written last, matches the resume key (hashes of its
inputs, of the configuration, of the references and of the code) and every file it lists exists
with its size. Markers are written by the worker that made the files, through a temporary name and
a rename, so a reader on any host sees either no marker or a whole one.

The output lock keeps two runs from writing one output folder. It is a file created with
``O_CREAT | O_EXCL`` (atomic on local filesystems and on NFS v3 and later, unlike ``flock``, which
NFS may keep per host), holding its owner's host and process, and touched every
:data:`HEARTBEAT_S` seconds. A lock whose owner is a dead process of this host, or whose heartbeat
is older than :data:`STALE_AFTER_S`, is taken over.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from types import TracebackType

from medgan_common.atomic import atomic_write_json
from preprocessing.runner.common import RunnerError, relative

logger = logging.getLogger(__name__)

__all__ = ["HEARTBEAT_S", "STALE_AFTER_S", "OutputLock", "complete", "marker_path", "remove_stray_temporaries",
           "write_marker"]

HEARTBEAT_S = 10.0
#: A lock not touched for this long belongs to a run that is gone (its host crashed or lost the filesystem).
STALE_AFTER_S = 120.0


def marker_path(output: Path, subject: str) -> Path:
    return output / "subjects" / subject / f"{subject}_subject.json"


def write_marker(output: Path, subject: str, key: str, entry: dict, metrics: dict) -> None:
    """The subject's completion record, written last: what a rerun checks before skipping it."""
    folder = output / "subjects" / subject
    files = {relative(p, output): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    atomic_write_json(marker_path(output, subject), {
        "subject": subject, "key": key, "entry": entry, "metrics": metrics, "files": files,
    })


def complete(output: Path, subject: str, key: str) -> dict | None:
    """The marker of a subject finished with resume ``key`` whose files all exist, else None."""
    marker = marker_path(output, subject)
    if not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text())
    except ValueError:
        return None
    if record.get("key") != key:
        return None
    for name, size in record.get("files", {}).items():
        path = output / name
        if not path.is_file() or path.stat().st_size != size:
            return None
    return record


def remove_stray_temporaries(output: Path) -> None:
    """Temporary files of a killed run or worker (see medgan_common.atomic) are garbage: remove them."""
    for path in output.rglob(".tmp-*"):
        if path.is_file():
            path.unlink(missing_ok=True)


class OutputLock:
    """Exclusive use of an output folder by one run, across the hosts that share it.

    Args:
        folder: the output folder (created if needed).
        stale_after_s: a lock whose heartbeat is older than this is taken over.
        heartbeat_s: how often the holder touches its lock.

    Raises:
        RunnerError: on entry, when another live run holds the lock; the message names its host,
            its process and the lock file.
    """

    def __init__(self, folder: Path, stale_after_s: float = STALE_AFTER_S, heartbeat_s: float = HEARTBEAT_S):
        self.path = Path(folder) / ".lock"
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # another run may take over the same stale lock at the same moment
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder, age = self._holder()
                if not self._stale(holder, age):
                    who = f"host {holder.get('host')}, process {holder.get('pid')}" if holder else "unknown owner"
                    raise RunnerError(f"another run is writing to {self.path.parent} ({who}; lock file {self.path}, "
                                      f"last heartbeat {age:.0f} s ago)") from None
                self._take_over()
                continue
            with os.fdopen(handle, "w") as file:
                json.dump({**self.owner, "started": time.time()}, file)
            self._heartbeat = threading.Thread(target=self._beat, name="output-lock-heartbeat", daemon=True)
            self._heartbeat.start()
            return self
        raise RunnerError(f"cannot take the lock {self.path}: other runs keep taking it over")

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self._mine():
            self.path.unlink(missing_ok=True)

    def _holder(self) -> tuple[dict | None, float]:
        """The lock's owner record (None while it is being written) and the seconds since its heartbeat."""
        try:
            age = time.time() - self.path.stat().st_mtime
            return json.loads(self.path.read_text() or "null"), age
        except FileNotFoundError:
            return None, 0.0
        except ValueError:  # written at this moment, or damaged: its age decides
            return None, age

    def _stale(self, holder: dict | None, age: float) -> bool:
        if not self.path.exists():
            return True
        if holder is not None and holder.get("host") == self.owner["host"]:
            try:
                os.kill(int(holder["pid"]), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, KeyError, ValueError, TypeError):
                pass
        return age > self.stale_after_s

    def _take_over(self) -> None:
        # Renaming is atomic: of several runs taking over the same stale lock, one renames it and
        # the others find it gone; all then race on O_EXCL again, which one wins.
        aside = self.path.with_name(f".lock.stale-{self.owner['token']}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        logger.warning("took over the stale lock %s", self.path)
        aside.unlink(missing_ok=True)

    def _mine(self) -> bool:
        try:
            return json.loads(self.path.read_text()).get("token") == self.owner["token"]
        except (OSError, ValueError):
            return False

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self._mine():
                logger.error("the lock %s was taken over by another run", self.path)
                return
            os.utime(self.path)
