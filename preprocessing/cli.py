"""Command line: ``python -m preprocessing demo …`` and ``python -m preprocessing run …``.

Bad arguments end with one line on stderr, ``preprocessing <command>: error: <what is wrong>``,
and exit status 2, so that scripts can tell a usage error from a processing failure. ``run``
exits with 0 when every subject is ok (or was already finished), 1 when a subject failed (the
report says why) or the run could not complete.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

USAGE_ERROR = 2


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints the whole usage before an error; a batch log wants the error alone on one line."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


def _whole_number(text: str, minimum: int, bound: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
    return value


def _count(text: str) -> int:
    return _whole_number(text, 1, "at least 1")


def _seed(text: str) -> int:
    return _whole_number(text, 0, "0 or more")


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
    from preprocessing.demo import ANATOMIES, SIZES

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
    demo.add_argument("--anatomy", choices=ANATOMIES, default="mni152",
                      help="mni152: the brain of the MNI152 template shipped with nilearn, deformed per subject "
                      "(default); procedural: a phantom that needs no template")

    run = commands.add_parser(
        "run",
        help="preprocess a cohort (read, register, artefact mask, window/normalise, slices, datalist)",
        description="Preprocess a cohort: demo cohort, IXI NIfTI folder or CQ500-like DICOM tree in; registered "
        "volumes, masks, transforms, slices, QC montages, dataset.json (MONAI datalist) and a report out.",
    )
    run.add_argument("--config", required=True,
                     help="configuration: a YAML/JSON file or a shipped name (demo, ixi, cq500)")
    run.add_argument("--input", required=True, help="input folder (cohort root or its raw/ folder, IXI folder, DICOM tree)")
    run.add_argument("--output", required=True, help="output folder (created if needed; finished subjects are kept)")
    run.add_argument("--workers", type=_count, default=None,
                     help="parallel processes (default: one per core)")
    run.add_argument("--threads", type=_count, default=None,
                     help="ANTs threads per worker (default: cores // workers, so that workers x threads = cores)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m preprocessing``.

    Returns:
        The process exit status.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from preprocessing.demo import build_demo_cohort, check_anatomy
        from preprocessing.demo.template import TemplateMissingError

        try:
            check_anatomy(args.anatomy)
            output = writable_folder(args.output)
        except (argparse.ArgumentTypeError, TemplateMissingError) as error:
            parser.exit(USAGE_ERROR, f"preprocessing demo: error: {error}\n")
        build_demo_cohort(output, args.subjects, args.size, args.seed, args.workers, progress=True,
                          anatomy_name=args.anatomy)
        print(f"demo cohort written to {output} ({args.subjects} subjects, {args.size}, {args.anatomy} anatomy); "
              f"preview: {output / 'preview.png'}")
        return 0
    if args.command == "run":
        return _run(parser, args)
    parser.error(f"unknown command {args.command!r}")
    return USAGE_ERROR


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The ``run`` command: check the arguments (usage errors exit 2), then preprocess the cohort."""
    from preprocessing.cohort import STATUS_FAILED, RunnerError, run_cohort
    from preprocessing.config import ConfigError, load_config
    from preprocessing.errors import PreprocessingError

    def usage_error(message: str) -> None:
        parser.exit(USAGE_ERROR, f"preprocessing run: error: {message}\n")

    try:
        config = load_config(args.config)
    except ConfigError as error:
        usage_error(str(error))
    source = Path(args.input)
    if not source.is_dir():
        usage_error(f"input folder {str(source)!r} " + ("is not a folder" if source.exists() else "does not exist"))
    try:
        output = writable_folder(args.output)
    except argparse.ArgumentTypeError as error:
        usage_error(str(error))
    try:
        report = run_cohort(config, source, output, workers=args.workers, progress=not args.quiet,
                            threads=args.threads)
    except (RunnerError, PreprocessingError) as error:
        print(f"preprocessing run: error: {error}", file=sys.stderr)
        return 1
    counts = report["counts"]
    print(f"{counts['ok']} ok, {counts['skipped-finished']} already finished, {counts['failed']} failed; "
          f"datalist: {output / 'dataset.json'}, report: {output / 'report.json'}")
    for row in report["subjects"]:
        if row["status"] == STATUS_FAILED:
            print(f"  {row['subject']}: {row['reason']}", file=sys.stderr)
    return 1 if counts["failed"] else 0
