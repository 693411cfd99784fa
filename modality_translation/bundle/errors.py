"""The error of a bundle that is not what it claims to be: not a bundle, incomplete, or altered."""

from __future__ import annotations

from medgan_common.errors import PreprocessingError

__all__ = ["BundleIntegrityError"]


class BundleIntegrityError(PreprocessingError):
    """A bundle folder or package cannot be trusted or used: a file missing, altered or unreadable, or not a bundle.

    A ``ValueError`` with ``path`` (the file the problem is about) and ``reason`` attributes, like every
    input error of the project.
    """
