"""One-line error reports for the bundles' commands (``python -m monai.bundle run translate ...``).

MONAI's ``run`` lets every exception through to Python, which prints a traceback of config
resolution frames, and MONAI wraps an error raised while instantiating a component in a
``RuntimeError`` of its own. A user with a bad scan needs one line: the file and what is wrong.
:func:`report_errors_concisely`, the first step of every bundle's ``initialize``, installs an
exception hook that finds the project's own error (an input, weights, record or bundle problem)
in the exception chain and prints only its message; any other exception, a bug, keeps its full
traceback. Set ``MEDGAN_TRACEBACK=1`` to see the traceback of every error.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType

from medgan_common.errors import PreprocessingError

__all__ = ["UsageError", "report_errors_concisely", "user_error"]


class UsageError(ValueError):
    """A command-line value a command cannot run with (a missing ``--input``, an unknown ``--direction``)."""


#: What counts as the user's problem rather than the program's: bad inputs and files, bad command lines.
USER_ERRORS = (PreprocessingError, FileNotFoundError, UsageError)


def user_error(error: BaseException | None) -> BaseException | None:
    """The first error of the user's kind in ``error``'s chain (its causes and contexts), else ``None``."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, USER_ERRORS):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _hook(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
    found = None if os.environ.get("MEDGAN_TRACEBACK") else user_error(error)
    if found is None:
        sys.__excepthook__(kind, error, traceback)
        return
    message = " ".join(str(found).split())  # one line, whatever the message holds
    print(f"error: {message}", file=sys.stderr)


def report_errors_concisely() -> None:
    """Print uncaught errors of the user's kind as one line ``error: <file>: <problem>`` (exit status 1).

    Installed by the bundles' configs; idempotent.
    """
    sys.excepthook = _hook
