"""Time the preprocessing pipeline: seconds per step per volume, and cohort throughput by worker count.

Usage:
    python benchmarks/bench_pipeline.py --output benchmarks/results/pipeline.json
        [--demo DIR | --size small|full --subjects N] [--config demo] [--runs 1x2 2x1 1x1 dask1x1 dask2x1]

Without ``--demo``, a demo cohort is built first (not timed). Each run ``WxT`` preprocesses the
whole cohort into a fresh folder with ``python -m preprocessing run``'s engine, with W workers of
T ANTs threads each; the report's per-subject timings give the seconds per volume of each step
(read, register, mask, window, normalise, pair, slice, truth, qc) and the wall time gives the
throughput. ``1x2`` and ``2x1`` are the runner's defaults for 1 and 2 workers on 2 cores
(workers x threads = cores); ``1x1`` against ``2x1`` measures how the process pool alone scales.
``daskWxT`` runs the same cohort on a Dask ``LocalCluster`` of W single-threaded worker processes,
each task with T ANTs threads (``python -m preprocessing run --dask-workers W``), so that Dask's
scaling and its overhead over the process pool are measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from medgan_common.atomic import atomic_write_json  # noqa: E402
from preprocessing.config import load_config  # noqa: E402
from preprocessing.runner import STEPS, WorkerSettings, dask_pool, run_cohort  # noqa: E402
from preprocessing.demo import build_demo_cohort  # noqa: E402


def per_volume_seconds(report: dict) -> dict:
    """Mean seconds per volume of each step (``step.modality`` timings), overall and per modality.

    Registration means count registered volumes only, not the references (identity transforms).
    """
    samples: dict[str, list[float]] = defaultdict(list)
    by_modality: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in report["subjects"]:
        for key, seconds in row["seconds_detail"].items():
            step, _, modality = key.partition(".")
            # A modality's reference is not registered (its transform is the identity): not a sample.
            if step == "register" and row["registration"].get(modality, {}).get("reference"):
                continue
            if step in STEPS and modality:
                samples[step].append(seconds)
                by_modality[step][modality].append(seconds)
    return {
        "mean": {step: round(sum(v) / len(v), 3) for step, v in samples.items()},
        "by_modality": {step: {m: round(sum(v) / len(v), 3) for m, v in modalities.items()}
                        for step, modalities in by_modality.items()},
        "volumes": {step: len(v) for step, v in samples.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="JSON file for the results")
    parser.add_argument("--demo", default=None, help="an existing demo cohort (default: build one)")
    parser.add_argument("--size", choices=("small", "full"), default="small", help="size of the cohort to build")
    parser.add_argument("--subjects", type=int, default=4, help="subjects of the cohort to build")
    parser.add_argument("--config", default="demo", help="configuration name or file (default: demo)")
    parser.add_argument("--runs", nargs="+", default=["1x2", "2x1", "1x1"],
                        help="runs to time, WORKERSxTHREADS (ANTs threads per worker)")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    try:
        cohort = Path(args.demo) if args.demo else scratch / "cohort"
        if not args.demo:
            build_demo_cohort(cohort, args.subjects, args.size, seed=0, progress=False)
        manifest = json.loads((cohort / "manifest.json").read_text())
        results = {
            "machine": {"cores": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                        "python": platform.python_version(), "load_average_at_start": list(os.getloadavg())},
            "cohort": {"size": manifest["size"], "subjects": len(manifest["subjects"])},
            "config": args.config,
            "runs": [],
        }
        seed = int(load_config(args.config)["seed"])
        for spec in args.runs:
            engine = "dask" if spec.lower().startswith("dask") else "process pool"
            workers, threads = (int(n) for n in spec.lower().removeprefix("dask").split("x"))
            output = scratch / f"out-{spec}"
            start = time.perf_counter()
            if engine == "dask":
                executor = dask_pool(WorkerSettings(seed, threads), workers=workers, progress=False)
                report = run_cohort(args.config, cohort, output, threads=threads, executor=executor, progress=False)
            else:
                report = run_cohort(args.config, cohort, output, workers=workers, progress=False, threads=threads)
            wall = time.perf_counter() - start
            subjects = report["counts"]["ok"]
            run = {
                "engine": engine,
                "workers": workers,
                "ants_threads_per_worker": report["ants_threads_per_worker"],
                "wall_seconds": round(wall, 1),
                "subjects_ok": subjects,
                "subjects_per_minute": round(60 * subjects / wall, 2),
                "seconds_per_subject": round(wall / max(subjects, 1), 1),
                "phase_seconds": report["phase_seconds"],
                "seconds_per_volume": per_volume_seconds(report),
                "seconds_per_subject_by_step": {
                    step: round(sum(r["seconds"][step] for r in report["subjects"]) / len(report["subjects"]), 3)
                    for step in (*STEPS, "total")},
                "load_average_after": list(os.getloadavg()),
            }
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
            shutil.rmtree(output)
        rates = {("dask" if r["engine"] == "dask" else "") + f"{r['workers']}x{r['ants_threads_per_worker']}":
                 r["subjects_per_minute"] for r in results["runs"]}
        pairs = (("2x1", "1x2"), ("2x1", "1x1"), ("1x2", "1x1"), ("dask2x1", "dask1x1"), ("dask2x1", "2x1"),
                 ("dask1x1", "1x1"))
        results["throughput_ratios"] = {
            f"{fast} over {slow}": round(rates[fast] / rates[slow], 2)
            for fast, slow in pairs if fast in rates and slow in rates}
        print(json.dumps(results["throughput_ratios"]), flush=True)
        atomic_write_json(args.output, results)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
