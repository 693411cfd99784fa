"""Command line: ``python -m preprocessing {demo,run,pull,push} …``.

Bad arguments end with one line on stderr, ``preprocessing <command>: error: <what is wrong>``,
and exit status 2, so that scripts can tell a usage error from a processing failure. ``run``
exits with 0 when every subject is ok (or was already finished, or was excluded by a selection rule
of the configuration), 1 when a subject failed (the report says why) or the run could not complete; ``pull`` and ``push`` exit with 1 when the PACS
cannot be reached, refuses the credentials, or a study could not be pulled.
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
                     help="configuration: a YAML/JSON file or a shipped name (demo, ixi, cq500, synthrad2023)")
    run.add_argument("--input", required=True,
                     help="input folder (cohort root or its raw/ folder, IXI folder, DICOM tree, SynthRAD2023 task folder)")
    run.add_argument("--output", required=True, help="output folder (created if needed; finished subjects are kept)")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_count, default=None,
                       help="parallel processes on this machine (default: one per core)")
    where.add_argument("--dask-workers", type=_count, default=None, metavar="N",
                       help="run on a Dask LocalCluster of N worker processes started for this run")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="run on an existing Dask cluster (tcp://HOST:8786); every worker must see the input "
                       "and output folders at the same paths (docs/preprocessing.md)")
    run.add_argument("--threads", type=_count, default=None,
                     help="ANTs threads per worker (default: cores // workers, so that workers x threads = cores; "
                     "1 with --scheduler)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")

    credentials = ("credentials: a JSON file {\"user\": ..., \"password\": ...} (default: $MEDGAN_PACS_CREDENTIALS, "
                   "else $MEDGAN_PACS_USER and $MEDGAN_PACS_PASSWORD)")
    pull = commands.add_parser(
        "pull", help="download CT studies from a PACS (DICOMweb) in the layout 'run' reads",
        description="Download every CT series of the chosen studies from a PACS over DICOMweb into "
        "OUTPUT/raw/ct/<patient>/<study>/<series>/ (run --input OUTPUT); OUTPUT/pacs_pull.json says what was pulled.")
    pull.add_argument("--pacs", required=True, help="DICOMweb root URL, e.g. http://pacs:8042/dicom-web")
    chosen = pull.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--study", action="append", metavar="UID", help="StudyInstanceUID (repeatable)")
    chosen.add_argument("--query", help='study search, e.g. "Modality=CT&StudyDate=20240101-20241231"')
    pull.add_argument("--output", required=True, help="folder to write (created if needed; pulled studies are kept)")
    push = commands.add_parser(
        "push", help="send synthetic DICOM series back into their studies on a PACS (DICOMweb)",
        description="Send every DICOM file below FOLDER (series marked DERIVED and SYNTHETIC only) into its "
        "source study on the PACS.")
    push.add_argument("--pacs", required=True, help="DICOMweb root URL, e.g. http://pacs:8042/dicom-web")
    push.add_argument("folder", help="a synthetic series folder, or a folder of them")
    for command in (pull, push):
        command.add_argument("--credentials", default=None, metavar="FILE", help=credentials)
        command.add_argument("--timeout", type=_count, default=20, metavar="S",
                             help="seconds to wait for the PACS to connect or answer (default: 20)")
        command.add_argument("--retries", type=_seed, default=2,
                             help="tries again after a failed connection or a 502/503/504 answer (default: 2)")
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
    if args.command in ("pull", "push"):
        return _pacs(args)
    parser.error(f"unknown command {args.command!r}")
    return USAGE_ERROR


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The ``run`` command: check the arguments (usage errors exit 2), then preprocess the cohort."""
    from preprocessing.config import ConfigError, load_config
    from medgan_common.errors import PreprocessingError
    from preprocessing.runner import STATUS_EXCLUDED, STATUS_FAILED, RunnerError, WorkerSettings, dask_pool, run_cohort
    from preprocessing.runner.pool import core_count

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
    workers, executor = args.workers, None
    if args.dask_workers or args.scheduler:
        # Same default as the local pool for a local cluster; one thread per task on a cluster
        # whose hosts this process cannot see.
        workers = args.dask_workers or 1
        threads = args.threads or (max(1, core_count() // workers) if args.dask_workers else 1)
        settings = WorkerSettings(int(config["seed"]), threads)
        executor = dask_pool(settings, args.scheduler, args.dask_workers, progress=not args.quiet)
        args.threads = threads
    try:
        report = run_cohort(config, source, output, workers=workers, progress=not args.quiet,
                            threads=args.threads, executor=executor)
    except (RunnerError, PreprocessingError) as error:
        print(f"preprocessing run: error: {error}", file=sys.stderr)
        return 1
    counts = report["counts"]
    # Excluded subjects are the configuration's choice, not a failure: listed, exit status unchanged.
    excluded = [f"  {row['subject']}: {row['reason']}" for row in report["subjects"] if row["status"] == STATUS_EXCLUDED]
    return _finish("\n".join([f"{counts['ok']} ok, {counts['skipped-finished']} already finished, {counts['failed']} "
                              f"failed, {counts['excluded']} excluded; datalist: {output / 'dataset.json'}, report: "
                              f"{output / 'report.json'}", *excluded]),
                   [f"{row['subject']}: {row['reason']}" for row in report["subjects"] if row["status"] == STATUS_FAILED],
                   counts["failed"])


def _finish(summary: str, problems: list[str], failed: int) -> int:
    """Print the summary on stdout and each problem on stderr; the exit status (1 when anything failed)."""
    print(summary)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return 1 if failed else 0


def _pacs(args: argparse.Namespace) -> int:
    """The ``pull`` and ``push`` commands; errors are one line on stderr and exit status 1."""
    from preprocessing.pacs import PacsError, PacsSettings, parse_query, pull_studies, push_series, read_credentials

    try:
        user, password = read_credentials(args.credentials)
        settings = PacsSettings(args.pacs, user, password, float(args.timeout), args.retries)
        if args.command == "push":
            sent = push_series(settings, args.folder)
            print(f"sent {sum(sent['studies'].values())} instances of {len(sent['series'])} series into "
                  f"{len(sent['studies'])} studies")
            return 0
        record = pull_studies(settings, args.output, args.study or (), parse_query(args.query) if args.query else None)
    except PacsError as error:
        print(f"preprocessing {args.command}: error: {error}", file=sys.stderr)
        return 1
    counts = record["counts"]
    return _finish(f"{counts['ok']} studies pulled, {counts['already-pulled']} already there, {counts['no-ct']} "
                   f"without CT, {counts['failed']} failed; record: {Path(args.output) / 'pacs_pull.json'}",
                   [f"{row['study']}: {row['reason']}" for row in record["studies"] if row["status"] in ("no-ct", "failed")],
                   counts["failed"])
