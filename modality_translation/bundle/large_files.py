"""``large_files.yml``: the files of a bundle too large for its repository, with their SHA-256, in MONAI's format.

MONAI's model zoo lists a bundle's weights in ``large_files.yml`` at the bundle's root::

    large_files:
      - path: "models/model.pt"
        url: "https://..."
        hash_val: "<sha256 hex digest>"
        hash_type: "sha256"

``python -m monai.bundle download_large_files --bundle_path <bundle>`` reads it
(:func:`monai.bundle.scripts.download_large_files`): a listed file that exists is checked against its
hash (and left alone), a missing one is downloaded from ``url``. A packaged bundle carries its files,
so their ``url`` is empty unless a base address is given; MONAI's command then only checks them.
:func:`verify_large_files` is the same check with errors that name the file and show both hashes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from medgan_common.atomic import atomic_write_text
from medgan_common.hashing import file_sha256
from modality_translation.bundle.errors import BundleIntegrityError

__all__ = [
    "HASH_TYPE",
    "LARGE_FILES_NAME",
    "file_sha256",
    "large_files_yaml",
    "read_large_files",
    "verify_large_files",
    "write_large_files",
]

#: File name of the list, at the bundle's root (MONAI also accepts .yaml and .json; the model zoo uses .yml).
LARGE_FILES_NAME = "large_files.yml"
#: The only hash written and checked.
HASH_TYPE = "sha256"
# Hex characters of a hash shown in an error: enough to tell two files apart, short enough to read.
_SHOWN_HEX = 12


def _relative_entry(bundle_dir: Path, path: str | os.PathLike) -> str:
    """``path`` as the POSIX path relative to ``bundle_dir`` that the list stores; it must lie inside the bundle."""
    path = Path(path)
    absolute = path if path.is_absolute() else bundle_dir / path
    try:
        relative = absolute.resolve().relative_to(bundle_dir.resolve())
    except ValueError:
        raise BundleIntegrityError(path, f"is not inside the bundle folder {bundle_dir}") from None
    return relative.as_posix()


def write_large_files(
    bundle_dir: str | os.PathLike, paths: Iterable[str | os.PathLike], url_base: str | None = None
) -> Path:
    """Write ``<bundle_dir>/large_files.yml`` listing ``paths`` with their SHA-256.

    Args:
        bundle_dir: the bundle's root folder.
        paths: the files to list, relative to ``bundle_dir`` or absolute inside it; listed sorted, once each.
        url_base: where the files will be published (an entry's ``url`` is ``url_base`` + ``/`` + its
            path); ``None`` leaves ``url`` empty, for files that travel inside the bundle.

    Returns:
        The path of the list written (atomically).

    Raises:
        BundleIntegrityError: a path outside the bundle, or not a file.
    """
    bundle_dir = Path(bundle_dir)
    hashes = {}
    for entry in {_relative_entry(bundle_dir, path) for path in paths}:
        file = bundle_dir / entry
        if not file.is_file():
            raise BundleIntegrityError(file, "is not a file; only files can be listed in large_files.yml")
        hashes[entry] = file_sha256(file)
    destination = bundle_dir / LARGE_FILES_NAME
    atomic_write_text(destination, large_files_yaml(hashes, url_base))
    return destination


def large_files_yaml(hashes: Mapping[str, str], url_base: str | None = None) -> str:
    """The text of a ``large_files.yml`` listing ``{path relative to the bundle: sha256}``, sorted by path.

    Args:
        hashes: the files' POSIX paths relative to the bundle and their SHA-256 hex digests.
        url_base: see :func:`write_large_files`.
    """
    large_files = [
        {"path": path, "url": "" if url_base is None else f"{url_base.rstrip('/')}/{path}",
         "hash_val": hashes[path], "hash_type": HASH_TYPE}
        for path in sorted(hashes)
    ]
    return yaml.safe_dump({"large_files": large_files}, sort_keys=False, width=1000)


def read_large_files(bundle_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The entries of ``<bundle_dir>/large_files.yml``, each checked to have a safe ``path`` and a SHA-256 ``hash_val``.

    Raises:
        BundleIntegrityError: the list is missing, not YAML, not of MONAI's form, lists a path outside the
            bundle, or a hash of another type.
    """
    list_path = Path(bundle_dir) / LARGE_FILES_NAME
    try:
        content = yaml.safe_load(list_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleIntegrityError(list_path, "is missing; a packaged bundle lists the sha256 of its models/ files there") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BundleIntegrityError(list_path, f"cannot be read as YAML ({type(exc).__name__}: {exc})") from exc
    entries = content.get("large_files") if isinstance(content, Mapping) else None
    if not isinstance(entries, list) or not all(isinstance(entry, Mapping) for entry in entries):
        raise BundleIntegrityError(list_path, "is not a MONAI large-files list: expected 'large_files: [{path, url, hash_val, hash_type}, ...]'")
    for entry in entries:
        path = entry.get("path")
        if not isinstance(path, str) or not path or PurePosixPath(path).is_absolute() or ".." in PurePosixPath(path).parts:
            raise BundleIntegrityError(list_path, f"lists the path {path!r}; entries must be relative paths inside the bundle")
        hash_type = str(entry.get("hash_type") or "").lower()
        if hash_type != HASH_TYPE or not isinstance(entry.get("hash_val"), str) or not entry["hash_val"]:
            raise BundleIntegrityError(
                list_path, f"entry {path!r} has hash_type {entry.get('hash_type')!r} and hash_val {entry.get('hash_val')!r}; "
                f"expected a {HASH_TYPE} hex digest"
            )
    return [dict(entry) for entry in entries]


def verify_large_files(bundle_dir: str | os.PathLike) -> list[str]:
    """Check every file listed in ``<bundle_dir>/large_files.yml`` against its SHA-256.

    Args:
        bundle_dir: the bundle's root folder.

    Returns:
        The paths checked, relative to ``bundle_dir``, in the list's order.

    Raises:
        BundleIntegrityError: naming the file: the list missing or unreadable, a listed file missing,
            or a hash mismatch (expected and found hashes, first 12 hex characters).
    """
    bundle_dir = Path(bundle_dir)
    checked = []
    for entry in read_large_files(bundle_dir):
        file = bundle_dir / entry["path"]
        if not file.is_file():
            raise BundleIntegrityError(file, f"is listed in {LARGE_FILES_NAME} but missing")
        expected = entry["hash_val"].lower()
        found = file_sha256(file)
        if found != expected:
            raise BundleIntegrityError(
                file, f"sha256 mismatch: {LARGE_FILES_NAME} expects {expected[:_SHOWN_HEX]}..., the file has "
                f"{found[:_SHOWN_HEX]}...; it was altered or damaged after packaging"
            )
        checked.append(entry["path"])
    return checked
