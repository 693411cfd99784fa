"""Errors raised by the preprocessing pipeline and the translation library.

Every error names the file (or folder) it is about and what is wrong with it, so that a cohort
report can say which input of which subject failed and why. ``PreprocessingError`` keeps its name
from where it started; the library's own errors (datalist, weights, intensities) derive from it too.
"""

from __future__ import annotations

import os


class PreprocessingError(ValueError):
    """A problem with one input that stops the processing of its subject.

    Args:
        path: the file or folder the problem is about (``None`` when it is not about a file).
        reason: what is wrong, in words a user can act on.
    """

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = None if path is None else os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


class InputReadError(PreprocessingError):
    """A file cannot be read as the image it should be (truncated, not an image, wrong shape, NaN...)."""


class SeriesSelectionError(PreprocessingError):
    """No DICOM series in a folder satisfies the selection rules."""


class GeometryError(PreprocessingError):
    """A volume's geometry is unusable (missing slices, gantry tilt, ...) under the configured policy."""
