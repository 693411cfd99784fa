"""Provenance sidecars: for every output file, what it was made from, how, and by which software.

A sidecar ``<output name>.provenance.json`` sits beside each output file and records

* the output's SHA-256 (so a copied or edited file can be recognised),
* its inputs, each with a SHA-256 (raw inputs, or the outputs of an earlier step),
* the step and its parameters,
* the versions of the libraries that shape the numbers (numpy, SimpleITK, antspyx, pydicom,
  nibabel, monai, torch) and of this code (package version and a hash of its source files).

Sidecars hold no time stamps and no host names: the same inputs, configuration and code give
byte-identical sidecars, which is what makes reruns comparable file by file.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from medgan_common.atomic import atomic_write_json
from medgan_common.hashing import file_sha256

__all__ = [
    "SIDECAR_SUFFIX",
    "TRACKED_PACKAGES",
    "code_version",
    "file_sha256",
    "files_sha256",
    "input_record",
    "is_sidecar",
    "package_versions",
    "read_sidecar",
    "sidecar_path",
    "write_sidecar",
]

SIDECAR_SUFFIX = ".provenance.json"
#: Distributions whose versions are recorded (distribution names, as pip knows them).
TRACKED_PACKAGES = ("numpy", "SimpleITK", "antspyx", "pydicom", "nibabel", "monai", "torch")
_CHUNK = 1 << 20


def files_sha256(paths: Iterable[str | os.PathLike], root: str | os.PathLike) -> str:
    """One SHA-256 for a set of files: of their paths relative to ``root`` and their own hashes.

    Used for inputs made of many files (a DICOM series): renaming, adding, removing or changing a
    file changes the hash; the order the files are listed in does not.
    """
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(path.relative_to(root).as_posix().encode("utf-8"))
        digest.update(b"\0")
        digest.update(file_sha256(path).encode("ascii"))
        digest.update(b"\n")
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str | None]:
    """Installed versions of :data:`TRACKED_PACKAGES` (``None`` for a package that is not installed)."""
    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, str]:
    """Version of this code: the package version and a SHA-256 of the ``preprocessing`` sources.

    The source hash identifies the code exactly, also for an unreleased checkout or an installed
    copy without git; it covers the pipeline modules (``preprocessing/*.py``, the cohort
    runner's package ``preprocessing/runner/`` and the shipped configurations), not the demo
    generator.
    """
    import preprocessing

    package = Path(preprocessing.__file__).parent
    files = sorted([*package.glob("*.py"), *package.glob("runner/**/*.py"), *package.glob("configs/*.yaml")])
    return {
        "package": "medgan-translate",
        "version": preprocessing.__version__,
        "source_sha256": files_sha256(files, package),
    }


def sidecar_path(path: str | os.PathLike) -> Path:
    """Path of the sidecar of ``path``: ``<name>.provenance.json`` in the same folder."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def is_sidecar(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a provenance sidecar."""
    return Path(path).name.endswith(SIDECAR_SUFFIX)


def input_record(path: str | os.PathLike, name: str, role: str, sha256: str | None = None, **extra: Any) -> dict[str, Any]:
    """Describe one input of an output file.

    Args:
        path: the input file (hashed unless ``sha256`` is given).
        name: how the input is named in the sidecar (relative and pseudonymised: sidecars must
            not carry source folder names).
        role: what the input is to the step (``"moving"``, ``"reference"``, ``"dicom_series"``...).
        sha256: a precomputed hash (e.g. :func:`files_sha256` of a DICOM series).
        **extra: further JSON-serialisable facts (number of files, series description...).

    Returns:
        ``{"name", "role", "sha256", ...}``.
    """
    return {"name": name, "role": role, "sha256": sha256 or file_sha256(path), **extra}


def write_sidecar(
    output: str | os.PathLike,
    step: str,
    inputs: Sequence[Mapping[str, Any]],
    parameters: Mapping[str, Any] | None = None,
    output_sha256: str | None = None,
) -> Path:
    """Write the provenance sidecar of ``output`` (atomically).

    Args:
        output: the output file, already written.
        step: the pipeline step that made it (``"register"``, ``"slice"``...).
        inputs: :func:`input_record` entries.
        parameters: the step's parameters (JSON-serialisable).
        output_sha256: the output's hash, when already known.

    Returns:
        The sidecar path.
    """
    output = Path(output)
    record = {
        "output": output.name,
        "sha256": output_sha256 or file_sha256(output),
        "step": step,
        "inputs": [dict(entry) for entry in inputs],
        "parameters": dict(parameters or {}),
        "software": package_versions(),
        "code": code_version(),
    }
    path = sidecar_path(output)
    atomic_write_json(path, record)
    return path


def read_sidecar(output: str | os.PathLike) -> dict[str, Any]:
    """Read the sidecar of ``output``.

    Raises:
        FileNotFoundError: no sidecar.
    """
    import json

    return json.loads(sidecar_path(output).read_text(encoding="utf-8"))
