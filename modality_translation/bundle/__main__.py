"""``python -m modality_translation.bundle {package,unpack,verify}``: share a trained bundle and check it.

- ``package BUNDLE_DIR --output DIR [--date YYYY-MM-DD]``: write ``DIR/<name>_v<version>.zip``
  (:func:`~modality_translation.bundle.package.package_bundle`);
- ``unpack ZIP --output DIR``: extract it to ``DIR/<name>`` and check its hashes
  (:func:`~modality_translation.bundle.unpack.unpack_bundle`);
- ``verify BUNDLE_DIR``: check a bundle folder's files against its ``large_files.yml``
  (:func:`~modality_translation.bundle.large_files.verify_large_files`).

An error is one line on stderr and exit status 1; nothing is written.
"""

from __future__ import annotations

import argparse
import sys

from modality_translation.bundle.errors import BundleIntegrityError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m modality_translation.bundle", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    package = commands.add_parser("package", help="package a trained bundle folder as <name>_v<version>.zip")
    package.add_argument("bundle_dir", help="the bundle folder (bundles/<name>), trained and evaluated")
    package.add_argument("--output", required=True, help="folder for the zip")
    package.add_argument("--date", default=None, help="changelog date, YYYY-MM-DD (default: day of models/model.pt)")
    unpack = commands.add_parser("unpack", help="extract a packaged bundle and check its files")
    unpack.add_argument("zip", help="the package (<name>_v<version>.zip)")
    unpack.add_argument("--output", required=True, help="folder that receives the bundle folder")
    verify = commands.add_parser("verify", help="check a bundle folder's files against its large_files.yml")
    verify.add_argument("bundle_dir", help="the bundle folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "package":
            from modality_translation.bundle.package import package_bundle

            print(package_bundle(args.bundle_dir, args.output, date=args.date))
        elif args.command == "unpack":
            from modality_translation.bundle.unpack import unpack_bundle

            print(unpack_bundle(args.zip, args.output))
        else:
            from modality_translation.bundle.large_files import verify_large_files

            checked = verify_large_files(args.bundle_dir)
            print(f"{args.bundle_dir}: {len(checked)} file(s) match large_files.yml")
    except (BundleIntegrityError, FileNotFoundError, ValueError) as exc:
        # WeightsFileError and the other input errors are ValueErrors naming their file.
        message = " ".join(str(exc).split())
        print(f"error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
