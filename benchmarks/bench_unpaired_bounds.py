"""Yardsticks for CT <-> T2 translation on a cohort in one common space: the atlas and two oracles.

An unpaired CT <-> T2 model is scored against the truth of held-out subjects. Three reference
"translations" say what its figures mean, scored with the evaluation's own metrics against the same
truth, inside the same head masks as ``run evaluate`` of the CycleGAN CT <-> T2 bundle:

- **atlas** (a floor): the voxel-wise mean of the *training* subjects' volumes of the target
  modality, in the common space the cohort's preprocessing put every subject in. It ignores the
  input entirely and draws the typical anatomy at each position. A model that does not beat it has
  learnt where things usually are, not what this subject's scan shows.
- **pointwise oracle** (a ceiling for intensity mappings): the best function of the input's
  intensity alone, fitted on the held-out subject's own truth (the mean truth value of each input
  intensity bin inside the head mask). It uses the answer, so no model can reach it by a per-voxel
  lookup; a model beats it only by reading the neighbourhood. For CT -> T2 it shows how much of the
  T2 the CT's intensities carry at all (grey and white matter differ by a few HU in the CT, by a
  third of the T2's range); it is also given for the CT smoothed by a Gaussian of 1 voxel, which
  averages the CT's noise away as a network's neighbourhood can, and for the CT put through
  SimpleITK's edge-preserving bilateral filter (1 mm, 10 HU), which averages the noise within a
  tissue and keeps the edges between tissues.
- **tissue oracle** (a ceiling for models that recognise tissues): the mean truth of each tissue
  class of the demo's truth labels, fitted on the held-out subject's own truth. It is what a perfect
  segmentation of the input into the demo's tissues, painted with this subject's own contrast, would
  score; it misses only the texture and partial-volume detail within each tissue.
- **truth at the training slice size** (a ceiling set by the resolution): the held-out subject's own
  truth put through the inference's slice resampling, down to the network's slice size (128 x 128
  in the bundle's 30-minute recipe) and back to the volume's grid, with an identity in place of the
  generator. A model trained and run at that size cannot score above it, however well it translates.

Directions and keys (the bundle's ``evaluate.json``):

- T2 -> CT: input ``t2``, truth ``truth_ct_in_t2`` in HU, mask ``t2_mask``; SynthRAD2023 metrics.
- CT -> T2: input ``ct_hu``, truth ``truth_t2_in_ct`` normalised as the cohort's T2 inputs, mask
  computed from the truth; SSIM inside the head (``ssim_masked``), PSNR.

    python benchmarks/bench_unpaired_bounds.py --dataset demo_data/full/preprocessed \
        [--split test] [--slice-size 128] [--output benchmarks/results/unpaired_bounds.json]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

DEFAULT_OUTPUT = REPOSITORY / "benchmarks" / "results" / "unpaired_bounds.json"

#: (name, input key, atlas key of the training subjects, truth key, mask key or None, target modality,
#: truth labels key in the input's space).
DIRECTIONS = (
    ("t2_to_ct", "t2", "ct_hu", "truth_ct_in_t2", "t2_mask", "ct", "truth_labels_in_t2"),
    ("ct_to_t2", "ct_hu", "t2", "truth_t2_in_ct", None, "t2", "truth_labels_in_ct"),
)

#: SimpleITK bilateral filter of the CT input: spatial sigma (mm), range sigma (HU).
BILATERAL_CT = (1.0, 10.0)

#: Width of the input intensity bins of the pointwise oracle: 2 HU for a CT input, 0.01 of the [-1, 1]
#: scale (0.5 % of it) for a normalised MR input.
BIN_WIDTH = {"ct": 2.0, "mr": 0.01}

#: The network slice size of the resolution ceiling: the CT <-> T2 bundle's 30-minute recipe's ``image_size``.
DEFAULT_SLICE_SIZE = 128


def pointwise_oracle(source: np.ndarray, truth: np.ndarray, mask: np.ndarray, bin_width: float,
                     outside: float) -> np.ndarray:
    """The mean ``truth`` of each ``bin_width`` bin of ``source`` inside ``mask``, as a volume; ``outside`` elsewhere.

    Args:
        source: the input volume.
        truth: the target volume on the same grid.
        mask: boolean head mask, the voxels fitted and predicted.
        bin_width: width of the input bins, in the input's units.
        outside: the value given to the voxels outside ``mask``.

    Returns:
        The best per-voxel function of ``source`` in the least-squares sense (up to the binning).
    """
    bins = np.floor((source[mask] - source[mask].min()) / bin_width).astype(np.int64)
    sums = np.bincount(bins, weights=truth[mask].astype(np.float64))
    counts = np.bincount(bins)
    prediction = np.full(source.shape, outside, dtype=np.float32)
    prediction[mask] = (sums / np.maximum(counts, 1))[bins]
    return prediction


def atlas(items: list[dict], base: Path, key: str, reference) -> np.ndarray:
    """The voxel-wise mean of ``key`` over ``items``, each checked to lie on ``reference``'s grid.

    Raises:
        ValueError: a volume on another grid (a cohort not in one common space has no atlas).
    """
    from modality_translation.inference.io import read_volume

    total = None
    for item in items:
        volume = read_volume(base / item[key], key)
        if volume.array.shape != reference.array.shape or not np.allclose(volume.nifti.affine, reference.nifti.affine, atol=1e-3):
            raise ValueError(f"{base / item[key]}: not on the grid of {reference.path} (shape {volume.array.shape} "
                             f"against {reference.array.shape}): the cohort is not in one common space")
        total = volume.array.astype(np.float64) if total is None else total + volume.array
    return (total / len(items)).astype(np.float32)


def scores(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray, mapping) -> dict[str, float]:
    """The evaluation's figures of ``prediction`` (HU for CT, network scale for MR) against ``truth``."""
    from modality_translation.evaluation.evaluate import mr_metrics
    from modality_translation.metrics import synthrad_metrics

    if mapping.is_ct:
        values = synthrad_metrics(prediction, truth, mask)
        return {"mae_hu": values["mae"], "psnr_db": values["psnr"], "ssim_masked": values["ssim"]}
    values = mr_metrics(prediction, mapping.to_network(truth, mask), mask, 2.0, mapping.background_value)
    return {"ssim_masked": values["ssim_masked"], "psnr_db": values["psnr_db"], "mae": values["mae"]}


def bilateral_ct(hu: np.ndarray, spacing) -> np.ndarray:
    """``hu`` put through SimpleITK's bilateral filter with :data:`BILATERAL_CT` (spacing in mm, (i, j, k) order)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(hu, (2, 1, 0))))
    image.SetSpacing([float(v) for v in spacing])
    filtered = sitk.Bilateral(image, BILATERAL_CT[0], BILATERAL_CT[1])
    return np.transpose(sitk.GetArrayFromImage(filtered), (2, 1, 0)).astype(np.float32)


def at_slice_size(volume: np.ndarray, spacing, slice_size: int, pad_value: float) -> np.ndarray:
    """A canonical network-scale volume through the inference's slice resampling at ``slice_size`` and back."""
    from modality_translation.inference.translate import translate_slices

    return translate_slices(lambda batch: batch, volume, spacing, slice_size=slice_size, pad_value=pad_value)


def bounds_of_subject(item: dict, base: Path, direction: tuple, atlas_volume, mapping,
                      slice_size: int = DEFAULT_SLICE_SIZE) -> dict[str, dict[str, float]]:
    """Atlas, oracle and resolution-ceiling figures of one held-out subject in one direction."""
    from scipy.ndimage import gaussian_filter

    from modality_translation.inference.io import read_volume

    _, input_key, _, truth_key, mask_key, _, labels_key = direction
    source_volume = read_volume(base / item[input_key], input_key)
    source = source_volume.array.astype(np.float32)
    truth_volume = read_volume(base / item[truth_key], truth_key)
    truth = truth_volume.array.astype(np.float32)
    mask = (read_volume(base / item[mask_key], mask_key).array > 0 if mask_key is not None
            else mapping.compute_head_mask(truth))
    # The oracle is fitted to what the evaluation compares: HU for CT, the normalised truth for MR.
    fit_target = truth if mapping.is_ct else mapping.to_network(truth, mask)
    outside = -1000.0 if mapping.is_ct else mapping.background_value
    bin_width = BIN_WIDTH["mr" if mapping.is_ct else "ct"]
    rows = {"atlas": scores(np.where(mask, atlas_volume, outside), truth, mask, mapping),
            "pointwise_oracle": scores(pointwise_oracle(source, fit_target, mask, bin_width, outside), truth, mask, mapping)}
    rows["pointwise_oracle_smoothed_1_voxel"] = scores(
        pointwise_oracle(gaussian_filter(source, 1.0), fit_target, mask, bin_width, outside), truth, mask, mapping)
    if not mapping.is_ct:  # a CT input: its quantum noise, filtered with the edges kept
        rows["pointwise_oracle_bilateral"] = scores(
            pointwise_oracle(bilateral_ct(source, source_volume.nifti.header.get_zooms()[:3]), fit_target, mask,
                             bin_width, outside), truth, mask, mapping)
    # Labels are integers: bins of width 1 are the tissue classes.
    labels = read_volume(base / item[labels_key], labels_key).array.astype(np.float32)
    rows["tissue_oracle"] = scores(pointwise_oracle(labels, fit_target, mask, 1.0, outside), truth, mask, mapping)
    resampled = at_slice_size(mapping.to_network(truth, mask), truth_volume.spacing, slice_size, mapping.background_value)
    rows["truth_at_slice_size"] = scores(mapping.from_network(resampled) if mapping.is_ct else resampled,
                                         truth, mask, mapping)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, type=Path, help="a preprocessed cohort in one common space, with truth")
    parser.add_argument("--split", default="test")
    parser.add_argument("--slice-size", type=int, default=DEFAULT_SLICE_SIZE,
                        help="network slice size of the resolution ceiling (truth_at_slice_size)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)

    from medgan_common.atomic import atomic_write_json
    from modality_translation.data.datalist import load_datalist_items
    from modality_translation.inference.intensity import IntensityMapping
    from modality_translation.inference.io import read_volume

    datalist = args.dataset / "dataset.json"
    items = load_datalist_items(datalist, args.split)
    training = load_datalist_items(datalist, "training")
    start = time.perf_counter()
    results = {}
    for direction in DIRECTIONS:
        name, input_key, atlas_key, truth_key, _, modality, _ = direction
        mapping = IntensityMapping.from_preprocessing_config(modality, datalist)
        reference = read_volume(args.dataset / items[0][input_key], input_key)
        atlas_volume = atlas(training, args.dataset, atlas_key, reference)
        rows = {item["subject"]: bounds_of_subject(item, args.dataset, direction, atlas_volume, mapping, args.slice_size)
                for item in items}
        baselines = next(iter(rows.values())).keys()
        summary = {}
        for baseline in baselines:
            metrics = rows[next(iter(rows))][baseline].keys()
            summary[baseline] = {metric: statistics.fmean(row[baseline][metric] for row in rows.values()) for metric in metrics}
        results[name] = {"input": input_key, "truth": truth_key, "atlas_of": f"training {atlas_key}",
                         "per_subject": rows, "mean": summary}
        for baseline, values in summary.items():
            print(name, baseline, {k: round(v, 3) for k, v in values.items()}, flush=True)
    atomic_write_json(args.output, {
        "benchmark": "atlas (voxel-wise mean of the training subjects' target volumes in the common space, input "
                     "ignored) and pointwise oracle (per input-intensity bin, the mean of the held-out subject's own "
                     "truth: the best per-voxel intensity mapping; also with the input smoothed by a 1-voxel "
                     "Gaussian, and for a CT input after a bilateral filter of 1 mm and 10 HU) and tissue oracle (per truth tissue label, the mean of the held-out subject's own "
                     "truth: a perfect segmentation painted with the subject's contrast) and the truth at the "
                     "training slice size (the subject's own truth through the inference's slice resampling to "
                     "the network's size and back), scored with the evaluation's metrics inside the evaluated "
                     "head masks",
        "slice_size": args.slice_size,
        "dataset": str(args.dataset), "split": args.split, "training_subjects": len(training),
        "bin_width": {"ct_input_hu": BIN_WIDTH["ct"], "mr_input_network_scale": BIN_WIDTH["mr"]},
        "machine": platform.platform(), "seconds": round(time.perf_counter() - start, 1), "results": results,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
