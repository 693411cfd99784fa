"""Landmark error and time of the within-subject pairs (T2 onto T1, the CT onto its own T2 and T1) on a demo cohort.

Usage:
    python benchmarks/bench_pairs.py --cohort demo_data/small --output benchmarks/results/pairs_small.json
        [--variants demo affine rigid] [--work DIR] [--workers N]

Each variant preprocesses the cohort (``python -m preprocessing run`` with the ``demo`` configuration,
whose pairs are rigid, affine, then SyN; ``affine``: the pairs rigid and affine only; ``rigid``: the
CT onto its MR rigid only, T2 onto T1 affine). For every pair key
(``t2_in_t1``, ``ct_in_t2``, ``ct_in_t1``) the anatomical landmarks of the demo truth
(``truth/<subject>/landmarks.json``, one position per raw scanner space) are mapped from the fixed
volume's space through the pair's transforms and compared with the moving volume's: the mean and
largest distance per subject, before (by position) and after registration, and the seconds each
pair took. What remains after a linear registration is each modality's own smooth warp of the demo
pose, which no linear transform undoes and the SyN stage is there for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from medgan_common.atomic import atomic_write_json
from preprocessing.config import load_config
from preprocessing.pseudonym import pseudonymise
from preprocessing.runner.demo_truth import pair_landmark_errors

LINEAR = ["Rigid", "Affine"]
VARIANTS = {
    "demo": {"extends": "demo"},
    "affine": {"extends": "demo", "pairing": {"registration": {"transforms": LINEAR}},
               "ct_pairing": {"registration": {"transforms": LINEAR}}},
    "rigid": {"extends": "demo", "pairing": {"registration": {"transforms": LINEAR}},
              "ct_pairing": {"registration": {"transforms": ["Rigid"]}}},
}
#: Pair key -> the report's timer of the pair.
PAIRS = {"t2_in_t1": "pair.t2", "ct_in_t2": "pair.ct_in_t2", "ct_in_t1": "pair.ct_in_t1"}


def landmark_errors(output: Path, cohort: Path, config: dict) -> dict[str, dict[str, dict[str, float]]]:
    """``{pair key: {source subject: {mean_mm, max_mm, unregistered_mean_mm}}}`` of a preprocessed demo cohort."""
    datalist = json.loads((output / "dataset.json").read_text())
    entries = [e for split in ("training", "validation", "test") for e in datalist[split]]
    pseudonym = config["pseudonym"]
    sources = {pseudonymise(folder.name, pseudonym["salt"], pseudonym["prefix"], pseudonym["length"]): folder.name
               for folder in (cohort / "truth").iterdir()}
    errors: dict[str, dict[str, dict[str, float]]] = {}
    for key in PAIRS:
        for entry in (e for e in entries if f"{key}_transforms" in e):
            source = sources[entry["subject"]]
            error, before = pair_landmark_errors(output, entry, cohort / "truth" / source, key)
            errors.setdefault(key, {})[source] = {"mean_mm": round(float(error.mean()), 2),
                                                  "max_mm": round(float(error.max()), 2),
                                                  "unregistered_mean_mm": round(float(before.mean()), 2)}
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", required=True, help="a demo cohort (python -m preprocessing demo)")
    parser.add_argument("--output", required=True, help="JSON file for the results")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=sorted(VARIANTS))
    parser.add_argument("--work", default=None, help="folder for the preprocessed cohorts (default: a temporary one)")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()

    from preprocessing.runner import run_cohort

    cohort = Path(args.cohort)
    results = {"machine": {"platform": platform.platform(), "cores": os.cpu_count()}, "cohort": cohort.name,
               "variants": {}}
    with tempfile.TemporaryDirectory(prefix="bench-pairs-") as scratch:
        work = Path(args.work or scratch)
        for name in args.variants:
            config = load_config(VARIANTS[name])
            start, load = time.perf_counter(), os.getloadavg()[0]
            report = run_cohort(config, cohort, work / name, workers=args.workers, progress=False)
            seconds = time.perf_counter() - start
            pair_seconds = {key: sorted(round(row["seconds_detail"].get(timer, 0.0), 2) for row in report["subjects"])
                            for key, timer in PAIRS.items()}
            results["variants"][name] = {
                "config": VARIANTS[name], "pairing_transforms": config["pairing"]["registration"]["transforms"],
                "ct_pairing_transforms": config["ct_pairing"]["registration"]["transforms"],
                "run_seconds": round(seconds, 1), "load_average_at_start": round(load, 2),
                "counts": report["counts"], "pair_seconds_per_subject": pair_seconds,
                "landmark_error": landmark_errors(work / name, cohort, config)}
            print(name, json.dumps(results["variants"][name]["landmark_error"]))
    atomic_write_json(Path(args.output), results)


if __name__ == "__main__":
    main()
