"""A packaged bundle unpacked safely and checked: a zip of one bundle folder whose files match their hashes.

:func:`unpack_bundle` refuses, before writing anything, a file that is not a zip, an entry that would
land outside the output folder (absolute path, ``..``, a link) and a zip that is not a MONAI bundle
(one top folder holding ``configs/metadata.json``, ``configs/inference.json`` and ``models/``). It
extracts into a temporary folder beside the destination, checks the files against
``large_files.yml`` (:func:`~modality_translation.bundle.large_files.verify_large_files`) and only
then renames the folder into place, so a bundle that fails its checks is never left behind.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from modality_translation.bundle.errors import BundleIntegrityError
from modality_translation.bundle.large_files import verify_large_files

__all__ = ["REQUIRED_ENTRIES", "bundle_top_folder", "unpack_bundle"]

#: What a zip's top folder must hold to be a bundle (a trailing slash: a folder).
REQUIRED_ENTRIES = ("configs/metadata.json", "configs/inference.json", "models/")


def _safe_parts(zip_path: Path, name: str) -> tuple[str, ...]:
    """The path parts of a zip entry, refusing one that could be written outside the output folder."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise BundleIntegrityError(zip_path, f"holds the absolute path {name!r}; refusing to extract it")
    if ".." in path.parts:
        raise BundleIntegrityError(zip_path, f"holds the entry {name!r} leading outside its folder; refusing to extract it")
    return path.parts


def bundle_top_folder(zip_path: str | os.PathLike, archive: zipfile.ZipFile) -> str:
    """The name of the bundle folder a zip holds, after checking every entry is safe and the folder is a bundle.

    Raises:
        BundleIntegrityError: an unsafe entry (absolute, ``..``, a symbolic link), or not a MONAI bundle:
            no single top folder, or one without ``configs/metadata.json``, ``configs/inference.json`` or
            ``models/``.
    """
    zip_path = Path(zip_path)
    names = set()
    tops = set()
    for info in archive.infolist():
        parts = _safe_parts(zip_path, info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise BundleIntegrityError(zip_path, f"holds the symbolic link {info.filename!r}; refusing to extract it")
        if not parts:
            continue
        tops.add(parts[0])
        if len(parts) == 1 and not info.is_dir():
            raise BundleIntegrityError(zip_path, f"is not a MONAI bundle: the file {info.filename!r} lies outside a bundle folder")
        names.add("/".join(parts[1:]) + ("/" if info.is_dir() else ""))
    if len(tops) != 1:
        found = ", ".join(sorted(tops)) or "nothing"
        raise BundleIntegrityError(zip_path, f"is not a MONAI bundle: expected one top folder <name>/, found {found}")
    top = tops.pop()
    missing = [
        entry for entry in REQUIRED_ENTRIES
        if not (any(name.startswith(entry) for name in names) if entry.endswith("/") else entry in names)
    ]
    if missing:
        raise BundleIntegrityError(zip_path, f"is not a MONAI bundle: {top}/ has no {', '.join(missing)}")
    return top


def unpack_bundle(zip_path: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """Extract a packaged bundle into ``output_dir/<name>`` and check its files against ``large_files.yml``.

    Args:
        zip_path: the package (``<name>_v<version>.zip``).
        output_dir: the folder that receives the bundle folder (created if needed).

    Returns:
        The bundle folder, ``output_dir/<name>``.

    Raises:
        BundleIntegrityError: naming the file: not a zip, an unsafe entry, not a MONAI bundle, the
            destination exists already, or a file that is missing or differs from its sha256 in
            ``large_files.yml``. Nothing is left in ``output_dir`` then.
    """
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise BundleIntegrityError(zip_path, "is not a file")
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleIntegrityError(zip_path, f"is not a MONAI bundle: not a zip file ({exc})") from None
    with archive:
        top = bundle_top_folder(zip_path, archive)
        destination = Path(output_dir) / top
        if destination.exists():
            raise BundleIntegrityError(destination, "exists already; remove it or unpack elsewhere")
        destination.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".tmp-{top}-", dir=destination.parent))
        try:
            try:
                # Every name was checked above to stay inside ``staging``.
                archive.extractall(staging)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:  # a damaged member: CRC, truncation
                raise BundleIntegrityError(zip_path, f"cannot be extracted ({type(exc).__name__}: {exc})") from exc
            try:
                verify_large_files(staging / top)
            except BundleIntegrityError as exc:
                # Name the file as it is in the package, not in the temporary folder.
                path = Path(exc.path).resolve() if exc.path else None
                inside = path.relative_to((staging / top).resolve()).as_posix() if path and path.is_relative_to(staging.resolve()) else exc.path
                raise BundleIntegrityError(f"{zip_path}:{top}/{inside}", exc.reason) from None
            os.replace(staging / top, destination)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return destination
