"""Evaluate translated volumes against their paired targets: per-subject metrics, summary, optional FID.

For every subject of a datalist split (typically the ``predictions.json`` written by
``modality_translation.inference.translate_datalist``), the prediction is compared with the target
volume of the same grid inside a head mask:

- **CT targets** (Hounsfield units): SynthRAD2023 conventions (``metrics.synthrad_metrics``): MAE in
  HU over the mask on the unclipped images; PSNR and SSIM on images clipped to [-1024, 3000] HU, data
  range 4024 HU, PSNR over the mask voxels, SSIM (7-voxel 3D window) averaged over the mask.
  With a label map (``labels_key``, e.g. the demo's ``truth_labels_in_t2``) also the MAE per tissue
  class inside the mask (``metrics.mae_per_tissue_class``; by default air = label 0, soft tissue =
  scalp, fat, CSF, grey and white matter, ventricle, bone = cortical bone and diploe):
  ``mae_hu_<class>`` columns, empty where a subject has no voxel of the class.
- **MR targets**: MR has no absolute unit, so the comparison is on the network's normalised scale.
  The prediction already is on it; the target is normalised exactly as the inputs of that modality
  were (:class:`~modality_translation.inference.IntensityMapping`: by default the 0.5/99.5
  percentiles inside the target's head mask mapped to [-1, 1], clipped). Both are set to the
  background value (-1) outside the mask and shifted to [0, 2] (SSIM's luminance term assumes
  non-negative intensities), then SSIM (11-voxel Gaussian 3D window, data range 2.0 = the span of
  [-1, 1]) is averaged over the volume (``ssim``) and over the mask voxels (``ssim_masked``); PSNR
  (data range 2.0) and MAE (normalised units) are computed over the mask voxels.

``ssim_masked`` is the figure to quote: the whole-volume ``ssim`` counts the background, set equal
in both images: on the full demo's test subjects the CycleGAN T1 -> T2 bundle scores 0.70 over the
volume and 0.08 over the head (bundles/cyclegan_t1_t2/docs/README.md). For CT targets SynthRAD's
SSIM already is the masked one; ``ssim_masked`` repeats it so that every summary has the key.

PSNR is ``inf`` for a prediction identical to its target (no cap): the CSV holds ``inf`` and the
summary counts it in ``n_non_finite`` (see ``metrics.report``).

Before any metric, every prediction, target and mask (and label map) is checked to exist and to lie
on the prediction's grid; the target key and each target file's name must not name another modality
than ``modality`` (``truth_t2_in_t2`` cannot be a CT target). While reading, a CT prediction or
target whose values all lie in the network range (not HU), and an MR target that holds CT air
(``IntensityMapping.check_intensities``), stop the evaluation before any report is written.

FID (optional) compares the axial slices inside the head of all predictions with those of all
targets, both on the network scale, with Inception features from a local TorchScript file
(``metrics.InceptionFeatureExtractor``); without a configured file it is skipped with a note in the
summary. Nothing is ever downloaded.

Outputs (atomic writes): ``<output_dir>/metrics.csv`` (one row per subject) and
``<output_dir>/metrics_summary.json`` (``metrics.write_metrics_report``'s statistics per metric, plus
``"fid"`` and ``"evaluation"``: what was compared, on which scale, with which data ranges).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medgan_common import dataset_keys
from medgan_common.atomic import atomic_write_json
from modality_translation.data.datalist import (
    MODALITY_ALIASES,
    ModalityMismatchError,
    check_modality_name,
    load_datalist_items,
    modality_of_key,
)
from modality_translation.inference.intensity import IntensityMapping
from modality_translation.inference.io import check_files_on_grid, read_volume
from modality_translation.metrics import (
    DEMO_TISSUE_CLASSES,
    SYNTHRAD_HU_RANGE,
    InceptionFeatureExtractor,
    check_tissue_classes,
    fid_from_features,
    mae,
    mae_per_tissue_class,
    psnr,
    ssim,
    ssim_inside_mask,
    synthrad_metrics,
    write_metrics_report,
)
from modality_translation.networks.init import require_local_file


FID_SKIPPED_NOTE = "FID skipped: no TorchScript Inception file configured (fid_model_path); nothing is downloaded"


def mr_metrics(
    pred: np.ndarray, target: np.ndarray, mask: np.ndarray, data_range: float, background: float = -1.0
) -> dict[str, float]:
    """SSIM, PSNR and MAE of an MR prediction on the normalised scale (see the module docstring).

    Args:
        pred: prediction on the network scale, [z, y, x] (or 2D).
        target: normalised target, same shape.
        mask: head mask, same shape, not empty.
        data_range: span of the scale (2.0 for [-1, 1]).
        background: value both images get outside the mask for the SSIM, and the scale's lower end:
            the SSIM images are shifted by ``-min(background, image minima)`` to be non-negative.

    Returns:
        ``{"ssim", "ssim_masked", "psnr_db", "mae"}``.

    Raises:
        ValueError: mismatched shapes or an empty mask.
    """
    inside = np.asarray(mask) > 0
    mae_value = mae(pred, target, inside)  # checks shapes and the mask
    pred_masked = np.where(inside, pred, background).astype(np.float32)
    target_masked = np.where(inside, target, background).astype(np.float32)
    # SSIM's luminance term 2 mu_x mu_y / (mu_x^2 + mu_y^2) assumes non-negative intensities: on a signed
    # scale, windows whose means straddle 0 score negative for a mere offset. Both images are shifted to
    # start at 0 (as SynthRAD2023 shifts HU by +1024); for [-1, 1] that is the shift to [0, 2].
    floor = min(float(background), float(pred_masked.min()), float(target_masked.min()))
    pred_shifted = torch.from_numpy(pred_masked - floor)[None, None]
    target_shifted = torch.from_numpy(target_masked - floor)[None, None]
    # PSNR over the mask voxels only: a (1, 1, N, 1) "image" of them.
    pred_inside = torch.from_numpy(np.asarray(pred, dtype=np.float32)[inside])[None, None, :, None]
    target_inside = torch.from_numpy(np.asarray(target, dtype=np.float32)[inside])[None, None, :, None]
    return {
        "ssim": float(ssim(pred_shifted, target_shifted, data_range=data_range)[0]),
        "ssim_masked": ssim_inside_mask(pred_shifted[0, 0].numpy(), target_shifted[0, 0].numpy(), inside, data_range),
        "psnr_db": float(psnr(pred_inside, target_inside, data_range=data_range)[0]),
        "mae": mae_value,
    }


def _head_slices(volume: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    """Axial slices (canonical axis 0) that contain head voxels, as ``(N, 1, rows, columns)``."""
    occupied = np.flatnonzero(mask.any(axis=(1, 2)))
    return torch.from_numpy(np.ascontiguousarray(volume[occupied], dtype=np.float32))[:, None]


def _features(extractor: InceptionFeatureExtractor, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([extractor(batch) for batch in images.split(batch_size)])


def evaluate_translation(
    datalist: str | os.PathLike | Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    target_key: str,
    modality: str,
    pred_key: str = "pred",
    mask_key: str | None = None,
    split: str = dataset_keys.TEST,
    base_dir: str | os.PathLike | None = None,
    subject_key: str = dataset_keys.SUBJECT,
    preprocessing: Mapping[str, Any] | str | os.PathLike | None = None,
    intensity: IntensityMapping | Mapping[str, Any] | None = None,
    fid_model_path: str | os.PathLike | None = None,
    fid_image_size: int = 299,
    fid_model_input_range: Sequence[float] = (0.0, 1.0),
    fid_batch_size: int = 32,
    csv_name: str = "metrics.csv",
    summary_name: str = "metrics_summary.json",
    labels_key: str | None = None,
    tissue_classes: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Compute per-subject SSIM, PSNR and MAE (and optionally FID) of translated volumes; write the report.

    Every input is checked before any metric is computed: the split is not empty, every prediction,
    target and mask file exists and lies on the prediction's grid, and the FID model file (if
    configured) exists and loads.

    Args:
        datalist: a datalist JSON file (``predictions.json`` of ``translate_datalist``) or a list of items.
        output_dir: where the CSV and the summary JSON go.
        target_key: item key of the reference volume on the prediction's grid (e.g. the demo
            cohort's ``"truth_t2_in_t1"``, or ``"t2"`` for a registered pair).
        modality: the target modality: ``"ct"`` (HU, SynthRAD2023 metrics) or an MR modality
            (normalised scale).
        pred_key: item key of the prediction (HU for CT, network scale for MR).
        mask_key: item key of the head mask on that grid (e.g. ``"t1_mask"``); ``None`` computes it
            from the target (``IntensityMapping.compute_head_mask``).
        split: datalist split.
        base_dir: folder of relative paths (default: the datalist file's folder).
        subject_key: item key of the subject name.
        preprocessing: the cohort's ``dataset.json`` or preprocessing configuration (mapping or file), for
            the MR normalisation and the CT window.
        intensity: the target's :class:`IntensityMapping`, or keyword arguments overriding those derived
            from ``preprocessing`` (``{"on_network_scale": true}`` for a target that is already
            normalised, such as the cohort's ``t2_in_t1``).
        fid_model_path: local TorchScript Inception-v3 file; ``None`` skips FID.
        fid_image_size: input side of the FID model (299 for Inception-v3).
        fid_model_input_range: value range the FID model expects.
        fid_batch_size: slices per FID forward pass.
        csv_name: per-subject CSV file name.
        summary_name: summary JSON file name.
        labels_key: CT targets only: item key of an integer tissue label map on the prediction's grid
            (the demo cohort's ``"truth_labels_in_t2"``), for the MAE per tissue class; ``None``: none.
        tissue_classes: ``{class name: [labels]}`` of that map (default
            ``metrics.DEMO_TISSUE_CLASSES``: air, soft_tissue, bone of the demo labels).

    Returns:
        The summary written to ``summary_name``.

    Raises:
        DatalistError: an empty or absent split, an item without its subject or a needed key, a
            repeated subject (``load_datalist_items``, the reader of training and inference too).
        DatalistFileError, InputReadError: a missing or unreadable file (named).
        GeometryError: a target or mask whose grid differs from the prediction's (both files named).
        FileNotFoundError, WeightsFileError: a configured FID model file that is missing or unusable.
        ModalityMismatchError: a target key or target file named as another modality than ``modality``.
        IntensityMismatchError: a CT prediction or target not in HU, an MR target holding CT air (the
            file named; raised while reading, before the report is written).
        ValueError: a CT target declared ``on_network_scale`` (CT is evaluated in HU); a label map
            for an MR target; an invalid ``tissue_classes``.
    """
    mapping = IntensityMapping.resolve(modality, intensity, preprocessing)
    if mapping.is_ct and mapping.on_network_scale:
        raise ValueError("CT targets are compared in HU (SynthRAD2023): give the HU volume (the cohort's "
                         "'ct_hu' or 'truth_ct_in_<m>'), not the windowed one")
    classes = None
    if labels_key is not None:
        if not mapping.is_ct:
            raise ValueError(f"labels_key {labels_key!r}: the MAE per tissue class is a CT metric in HU; the target "
                             f"modality is {mapping.modality.upper()}")
        classes = check_tissue_classes(DEMO_TISSUE_CLASSES if tissue_classes is None else tissue_classes)
    key_modality = modality_of_key(target_key)
    if key_modality in MODALITY_ALIASES and key_modality != mapping.modality:
        raise ModalityMismatchError(None, f"target_key {target_key!r} holds a {key_modality.upper()} image, but the "
                                          f"evaluation's target modality is {mapping.modality.upper()}")
    extractor = None
    if fid_model_path is not None:
        require_local_file(fid_model_path, "FID TorchScript model")
        extractor = InceptionFeatureExtractor(
            os.fspath(fid_model_path), image_size=fid_image_size, input_range=mapping.out_range,
            model_input_range=fid_model_input_range,
        )

    optional_keys = {mask_key: "head mask", labels_key: "tissue labels"}
    path_keys = {pred_key: "prediction", target_key: "target", **{k: v for k, v in optional_keys.items() if k is not None}}
    items = load_datalist_items(datalist, split, base_dir, path_keys, subject_key)
    cases = []
    for item in items:
        pred_path, target_path = item[pred_key], item[target_key]
        mask_path, labels_path = item.get(mask_key), item.get(labels_key)
        # The file name only: the folders above it (an output folder "t1_to_t2") do not count.
        check_modality_name(target_path, mapping.modality, name=Path(target_path).name)
        on_pred_grid = [(target_path, "target"), *((path, what) for path, what in
                                                   ((mask_path, "head mask"), (labels_path, "tissue labels"))
                                                   if path is not None)]
        check_files_on_grid(pred_path, "prediction", on_pred_grid)
        cases.append((item[subject_key], pred_path, target_path, mask_path, labels_path))

    # An MR prediction is on the network scale; a CT one in HU, as its target.
    pred_mapping = mapping if mapping.is_ct else replace(mapping, on_network_scale=True)
    rows, pred_features, target_features = [], [], []
    for subject, pred_path, target_path, mask_path, labels_path in cases:
        pred = read_volume(pred_path, "prediction").array
        pred_mapping.check_intensities(pred, pred_path, "prediction")
        target = read_volume(target_path, "target").array
        mapping.check_intensities(target, target_path, "target")
        mask = read_volume(mask_path, "head mask").array > 0 if mask_path is not None else mapping.compute_head_mask(target)
        if mapping.is_ct:
            values = synthrad_metrics(pred, target, mask)
            row = {subject_key: subject, "mae_hu": values["mae"], "psnr_db": values["psnr"], "ssim": values["ssim"],
                   "ssim_masked": values["ssim"]}
            if classes is not None:
                labels = read_volume(labels_path, "tissue labels").array
                tissue_mae = mae_per_tissue_class(pred, target, labels, mask, classes)
                row.update({f"mae_hu_{name}": value for name, value in tissue_mae.items()})
            rows.append(row)
        else:
            target = mapping.to_network(target, mask)
            data_range = mapping.data_range or float(np.ptp(target[mask]))
            rows.append({subject_key: subject, **mr_metrics(pred, target, mask, data_range, mapping.background_value)})
        if extractor is not None:
            pred_scaled = mapping.to_network(pred) if mapping.is_ct else pred
            target_scaled = mapping.to_network(target) if mapping.is_ct else target
            pred_features.append(_features(extractor, _head_slices(pred_scaled, mask), fid_batch_size))
            target_features.append(_features(extractor, _head_slices(target_scaled, mask), fid_batch_size))

    output_dir = Path(output_dir)
    summary_path = output_dir / summary_name
    summary: dict[str, Any] = dict(write_metrics_report(rows, output_dir / csv_name, summary_path, subject_key))
    if extractor is None:
        summary["fid"] = {"value": None, "note": FID_SKIPPED_NOTE}
    else:
        pred_all, target_all = torch.cat(pred_features), torch.cat(target_features)
        summary["fid"] = {
            "value": fid_from_features(pred_all, target_all),
            "n_pred_slices": int(pred_all.shape[0]),
            "n_target_slices": int(target_all.shape[0]),
            "model": os.fspath(fid_model_path),
            "note": "axial slices inside the head mask, network scale; "
                    "comparable only between runs with the same slice counts",
        }
    if mapping.is_ct:
        scale = {"units": "HU", "mae": "HU over the mask, unclipped", "psnr_ssim_clip_hu": list(SYNTHRAD_HU_RANGE),
                 "data_range": SYNTHRAD_HU_RANGE[1] - SYNTHRAD_HU_RANGE[0], "conventions": "SynthRAD2023",
                 "ssim_outside_mask_hu": SYNTHRAD_HU_RANGE[0]}
        if classes is not None:
            scale.update({"labels_key": labels_key, "tissue_classes": {name: list(v) for name, v in classes.items()},
                          "tissue_mae": "HU over the voxels of the class inside the mask, unclipped"})
    else:
        scale = {"units": "normalised", "normalization": dict(mapping.normalization), "out_range": list(mapping.out_range),
                 "data_range": mapping.data_range or "per-subject target range inside the mask"}
    summary["evaluation"] = {
        "modality": mapping.modality, "split": split, "n_subjects": len(rows), "pred_key": pred_key,
        "target_key": target_key, "mask_key": mask_key, **scale,
    }
    # write_metrics_report wrote the per-metric statistics; the same file is replaced atomically with
    # the dataset-level entries added, so readers only ever see a complete summary.
    atomic_write_json(summary_path, summary)
    return summary
