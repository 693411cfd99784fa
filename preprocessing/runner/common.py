"""Names and small helpers every part of the cohort runner shares: statuses, image I/O, redaction."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medgan_common.atomic import atomic_write_with
from medgan_common.errors import PreprocessingError
from preprocessing.provenance import file_sha256, files_sha256
from preprocessing.pseudonym import Redactor

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_SKIPPED = "skipped-finished"
#: Left out by a volume selection rule (``input.keep_slice_counts``), with the reason: not a failure.
STATUS_EXCLUDED = "excluded"
#: Steps timed per subject (report columns), in pipeline order.
STEPS = ("read", "register", "mask", "window", "normalise", "pair", "slice", "truth", "qc")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Value outside the field of view, per modality (0 for MR).
AIR = {"ct": -1000.0}


class RunnerError(RuntimeError):
    """A problem with the run as a whole (no input found, output in use, a reference that cannot be made)."""


def hash_input(path: Path) -> str:
    """SHA-256 of an input file, or of every file below an input folder."""
    if path.is_dir():
        return files_sha256([p for p in path.rglob("*") if p.is_file()], path)
    return file_sha256(path)


def write_image(image: sitk.Image, path: Path) -> Path:
    """Compressed NIfTI, written atomically."""
    atomic_write_with(path, lambda tmp: sitk.WriteImage(image, str(tmp), True))
    return path


def write_image_plain(image: sitk.Image, path: Path) -> None:
    """Uncompressed NIfTI for the cache: read back several times, compression would only cost time."""
    atomic_write_with(path, lambda tmp: sitk.WriteImage(image, str(tmp), False))


def read_image(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


def like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """``array`` as an image with the geometry of ``reference``."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def reason(error: BaseException, redact: Redactor) -> str:
    """One line naming the file and the problem, with source names and identifiers redacted."""
    if isinstance(error, PreprocessingError):
        text = str(error)
    else:
        text = f"{type(error).__name__}: {error}"
    return redact(" ".join(text.split()))


def relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (tuples become lists, anything else unknown its ``str``)."""
    return json.loads(json.dumps(value, default=lambda v: list(v) if isinstance(v, tuple) else str(v)))
