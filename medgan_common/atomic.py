"""Atomic file output: nothing half-written is ever visible under its final name.

Every writer in the project writes to a temporary name in the destination folder and renames it
into place (``os.replace`` is atomic on POSIX within one file system), so a killed run leaves
either the old file, the new file or a stray ``.tmp-*`` file that a rerun ignores and replaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds.

    Args:
        path: the final destination.
        suffix: suffix of the temporary file; defaults to the destination's full suffix, so that
            writers that choose their format by extension (``.nii.gz``, ``.png``) still work.

    Yields:
        The temporary path to write to. It is removed if the block raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", suffix=suffix, dir=path.parent)
    # mkstemp creates 0600 files; outputs are shared with colleagues, so give them the usual
    # permissions under the user's umask, as open() would.
    os.fchmod(fd, 0o666 & ~_current_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically (stable bytes for a given object)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and rename the result to ``path``; for third-party writers (nibabel, SimpleITK, pydicom)."""
    with atomic_path(path) as tmp:
        writer(tmp)
