"""Command line: ``python -m preprocessing demo …`` (and the cohort runner once configured).

Bad arguments end with one line on stderr, ``preprocessing <command>: error: <what is wrong>``,
and exit status 2, so that scripts can tell a usage error from a processing failure.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

USAGE_ERROR = 2


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints the whole usage before an error; a batch log wants the error alone on one line."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def writable_folder(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check that files can be written in it.

    Raises:
        argparse.ArgumentTypeError: naming the folder and the reason.
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise argparse.ArgumentTypeError(f"cannot write to output folder {str(folder)!r}: {reason}") from None
    return folder


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m preprocessing`` argument parser."""
    from preprocessing.demo import SIZES

    parser = _OneLineErrorParser(prog="preprocessing", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineErrorParser)

    demo = commands.add_parser(
        "demo",
        help="build the synthetic demo cohort (raw DICOM/NIfTI plus paired truth)",
        description="Build the synthetic demo cohort: raw CT DICOM series and IXI-named MR NIfTI, "
        "with the paired, aligned, artefact-free truth used for evaluation (docs/data.md).",
    )
    demo.add_argument("--output", required=True, help="cohort folder to write (created if needed)")
    demo.add_argument("--subjects", type=_count, default=12, help="number of subjects (default: 12)")
    demo.add_argument("--size", choices=SIZES, default="full",
                      help="small: about 64 voxels a side, for tests; full: about 1 mm (default)")
    demo.add_argument("--seed", type=_seed, default=0, help="random seed; same seed, same bytes (default: 0)")
    demo.add_argument("--workers", type=_count, default=None, help="parallel processes (default: one per core)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m preprocessing``.

    Returns:
        The process exit status.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from preprocessing.demo import build_demo_cohort

        try:
            output = writable_folder(args.output)
        except argparse.ArgumentTypeError as error:
            parser.exit(USAGE_ERROR, f"preprocessing demo: error: {error}\n")
        build_demo_cohort(output, args.subjects, args.size, args.seed, args.workers, progress=True)
        print(f"demo cohort written to {output} ({args.subjects} subjects, {args.size}); preview: {output / 'preview.png'}")
        return 0
    parser.error(f"unknown command {args.command!r}")
    return USAGE_ERROR
