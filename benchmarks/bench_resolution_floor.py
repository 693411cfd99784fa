"""What a perfect 2D translator could score at a given slice size: the resolution floor of a recipe.

A bundle trained at ``image_size`` 128 translates slices resized from the cohort's 256 x 256 down to
128 x 128 and back. However good the network, the fine structure lost in that round trip (skull
edges, sulci) stays lost. This benchmark measures that loss: for every subject of a split, the
*truth* volume is passed through the inference path itself
(:func:`modality_translation.inference.translate.translate_slices`: slices extracted, resized to the
slice size, passed through an identity "network", resized back and pasted onto the volume's grid),
and the result is scored against the untouched truth with the evaluation's own metrics
(:func:`modality_translation.evaluation.evaluate.mr_metrics` on the network scale for MR,
:func:`modality_translation.metrics.synthrad_metrics` in HU for CT), inside the head mask the
bundles evaluate in.

    python benchmarks/bench_resolution_floor.py --dataset demo_data/full/preprocessed_paired \
        [--split test] [--sizes 128 256] [--output benchmarks/results/resolution_floor.json]

By default: the CT truth in the T2's space (``truth_ct_in_t2``, mask ``t2_mask``: the T2 -> CT
bundles' evaluation) and the T2 truth in the T1's space (``truth_t2_in_t1``, mask ``t1_mask``: the
T1 -> T2 bundles'), each with the intensity mapping the cohort recorded in its ``dataset.json``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

DEFAULT_OUTPUT = REPOSITORY / "benchmarks" / "results" / "resolution_floor.json"

#: (name, truth key, mask key, modality): what each direction's evaluation compares.
TARGETS = (
    ("t2_to_ct", "truth_ct_in_t2", "t2_mask", "ct"),
    ("t1_to_t2", "truth_t2_in_t1", "t1_mask", "t2"),
)


def floor_of_subject(item: dict, base: Path, truth_key: str, mask_key: str, mapping, size: int) -> dict[str, float]:
    """The metrics of one subject's truth after the round trip through ``size`` x ``size`` slices."""
    import numpy as np

    from modality_translation.evaluation.evaluate import mr_metrics
    from modality_translation.inference.io import read_volume
    from modality_translation.inference.translate import translate_slices
    from modality_translation.metrics import synthrad_metrics

    truth = read_volume(base / item[truth_key], truth_key)
    mask = read_volume(base / item[mask_key], mask_key).array > 0
    on_scale = mapping.to_network(truth.array, mask)
    round_trip = translate_slices(lambda batch: batch, on_scale, truth.spacing, slice_size=size,
                                  pad_value=mapping.background_value)
    if mapping.is_ct:
        values = synthrad_metrics(mapping.from_network(round_trip), truth.array, mask)
        return {"mae_hu": values["mae"], "psnr_db": values["psnr"], "ssim_masked": values["ssim"]}
    values = mr_metrics(np.clip(round_trip, *mapping.out_range), on_scale, mask, 2.0, mapping.background_value)
    return {"ssim_masked": values["ssim_masked"], "psnr_db": values["psnr_db"], "mae": values["mae"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, type=Path, help="a preprocessed cohort with truth volumes")
    parser.add_argument("--split", default="test")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)

    from medgan_common.atomic import atomic_write_json
    from modality_translation.data.datalist import load_datalist_items
    from modality_translation.inference.intensity import IntensityMapping

    datalist = args.dataset / "dataset.json"
    items = load_datalist_items(datalist, args.split)
    start = time.perf_counter()
    results = {}
    for name, truth_key, mask_key, modality in TARGETS:
        mapping = IntensityMapping.from_preprocessing_config(modality, datalist)
        present = [item for item in items if truth_key in item and mask_key in item]
        if not present:
            continue
        for size in args.sizes:
            rows = {item["subject"]: floor_of_subject(item, args.dataset, truth_key, mask_key, mapping, size)
                    for item in present}
            metrics = next(iter(rows.values())).keys()
            results.setdefault(name, {})[str(size)] = {
                "per_subject": rows,
                "mean": {metric: statistics.fmean(row[metric] for row in rows.values()) for metric in metrics},
            }
            print(name, size, {k: round(v, 3) for k, v in results[name][str(size)]["mean"].items()}, flush=True)
    atomic_write_json(args.output, {
        "benchmark": "truth volumes through the inference path (slices resized to the size and back, identity "
                     "network), scored against the untouched truth with the evaluation's metrics inside the "
                     "evaluated head mask: the best a 2D translator at that slice size can score",
        "dataset": str(args.dataset), "split": args.split, "targets": {n: {"truth": t, "mask": m}
                                                                        for n, t, m, _ in TARGETS},
        "machine": platform.platform(), "seconds": round(time.perf_counter() - start, 1), "results": results,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
