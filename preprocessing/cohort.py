"""The cohort runner's public names, kept importable from their former module.

The runner is the package :mod:`preprocessing.runner`; import from there in new code.
"""

from preprocessing import runner as _runner
from preprocessing.runner import *  # noqa: F401,F403 - the same names, re-exported

__all__ = list(_runner.__all__)
