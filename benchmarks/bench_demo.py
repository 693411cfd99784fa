"""Time the demo cohort generator (targets: 4 small subjects < 30 s, 12 full subjects < 10 min).

Usage:
    python benchmarks/bench_demo.py --output benchmarks/results/demo_cohort.json [--sizes small full]
        [--anatomy mni152 procedural]

Each size is built into a temporary folder with ``--workers`` processes (default: one per core) and
its wall time, per-subject time and disk size are written to the JSON file given by ``--output``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from medgan_common.atomic import atomic_write_json
from preprocessing.demo import ANATOMIES, build_demo_cohort

SUBJECTS = {"small": 4, "full": 12}


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="JSON file for the results")
    parser.add_argument("--sizes", nargs="+", default=["small", "full"], choices=sorted(SUBJECTS))
    parser.add_argument("--anatomy", nargs="+", default=["mni152"], choices=ANATOMIES)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--keep", default=None, help="keep the last cohort in this folder (e.g. for its preview)")
    args = parser.parse_args()

    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
               "runs": []}
    for anatomy, size in [(a, s) for a in args.anatomy for s in args.sizes]:
        scratch = Path(tempfile.mkdtemp(prefix=f"demo-bench-{size}-"))
        start = time.perf_counter()
        build_demo_cohort(scratch, SUBJECTS[size], size, seed=0, workers=args.workers, progress=False,
                          anatomy_name=anatomy)
        seconds = time.perf_counter() - start
        run = {"anatomy": anatomy, "size": size, "subjects": SUBJECTS[size], "workers": args.workers or os.cpu_count(),
               "wall_seconds": round(seconds, 1), "seconds_per_subject": round(seconds / SUBJECTS[size], 2),
               "disk_megabytes": round(folder_size(scratch) / 2**20, 1)}
        results["runs"].append(run)
        print(json.dumps(run))
        if args.keep:
            shutil.rmtree(args.keep, ignore_errors=True)
            shutil.move(str(scratch), args.keep)
        else:
            shutil.rmtree(scratch)
    atomic_write_json(args.output, results)


if __name__ == "__main__":
    main()
