"""The subject an evaluation found worst, as a picture: input, translation, truth and error on a few slices.

A mean over held-out subjects says how well a model does; the worst subject shows where it fails
(bone in a synthetic CT, a lesion, a head pose the training never saw). :func:`worst_subject_grid`
reads the per-subject table :func:`~modality_translation.evaluation.evaluate_translation` wrote,
picks the subject with the worst figure (the largest ``mae_hu`` of a synthetic CT, the smallest
``ssim_masked`` of a synthetic MR), and writes a PNG of axial slices through its head: the input,
the translation and the truth (a CT in its wide window and in the brain window, where soft-tissue
errors show), and the absolute error.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medgan_common import dataset_keys
from medgan_common.atomic import atomic_write_json
from medgan_common.errors import InputReadError
from modality_translation.data.datalist import load_datalist_items
from modality_translation.engines.image_grid import save_grid_png
from modality_translation.inference.intensity import IntensityMapping
from modality_translation.inference.io import read_volume
from preprocessing.windowing import hu_to_window

#: The figure that ranks subjects, per target kind, and whether larger is worse.
WORST_BY = {"ct": ("mae_hu", True), "mr": ("ssim_masked", False)}
#: Display windows of a CT in HU: the whole range of a head, and the brain.
CT_DISPLAY_WINDOWS = {"wide": (500.0, 3000.0), "brain": "brain"}
#: Absolute error shown from 0 to this: HU for CT, the [-1, 1] scale's units for MR.
ERROR_DISPLAY_MAX = {"ct": 500.0, "mr": 1.0}


def _read_rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))
    except OSError as error:
        raise InputReadError(path, f"cannot read the per-subject metrics: {error}") from error


def worst_row(rows: Sequence[Mapping[str, str]], metric: str, larger_is_worse: bool,
              subject_key: str = dataset_keys.SUBJECT) -> tuple[str, float]:
    """``(subject, value)`` of the row with the worst finite ``metric``.

    Raises:
        ValueError: no row with a finite value of ``metric``.
    """
    scored = []
    for row in rows:
        try:
            value = float(row.get(metric, "nan"))
        except ValueError:
            continue
        if math.isfinite(value):
            scored.append((value, row[subject_key]))
    if not scored:
        raise ValueError(f"no subject has a finite {metric!r}")
    value, subject = (max if larger_is_worse else min)(scored)
    return subject, value


def _head_slices(mask: np.ndarray, count: int) -> list[int]:
    """``count`` axial indices spread over the head's extent (20 % to 80 % of it)."""
    occupied = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    low, high = (int(occupied[0]), int(occupied[-1])) if occupied.size else (0, mask.shape[0] - 1)
    return sorted({int(round(low + f * (high - low))) for f in np.linspace(0.2, 0.8, count)})


def _display(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def worst_subject_grid(
    predictions: str | os.PathLike,
    metrics_dir: str | os.PathLike,
    source_key: str,
    target_key: str,
    source_modality: str,
    modality: str,
    pred_key: str = "pred",
    mask_key: str | None = None,
    split: str = dataset_keys.TEST,
    base_dir: str | os.PathLike | None = None,
    preprocessing: Mapping[str, Any] | str | os.PathLike | None = None,
    source_intensity: Mapping[str, Any] | None = None,
    slices: int = 3,
    csv_name: str = "metrics.csv",
    summary_name: str = "metrics_summary.json",
    output_name: str = "worst_subject.png",
) -> Path:
    """Write the grid of the worst subject of an evaluation and name it in the evaluation's summary.

    Args:
        predictions: the inference's ``predictions.json`` (items with ``pred_key``, ``source_key``,
            ``target_key`` and optionally ``mask_key``).
        metrics_dir: the evaluation's folder (its ``metrics.csv`` and ``metrics_summary.json``).
        source_key: item key of the translated volume (``"t2"``).
        source_modality: its modality (``"t2"``, ``"ct"``).
        target_key: item key of the truth (``"truth_ct_in_t2"``).
        modality: the target's modality (``"ct"``: HU; an MR modality: the network scale).
        pred_key: item key of the prediction.
        mask_key: item key of the head mask (``None``: computed from the truth).
        split: the datalist split.
        base_dir: folder relative paths are relative to (the cohort's).
        preprocessing: the cohort's ``dataset.json`` (its window and normalisation).
        source_intensity: ``IntensityMapping`` keyword arguments of the source as it is stored
            (default: on the network scale, as the cohort's volumes).
        slices: axial slices shown (rows).
        csv_name, summary_name: the evaluation's files in ``metrics_dir``.
        output_name: the PNG's name in ``metrics_dir``.

    Returns:
        The PNG's path. The summary gains ``"worst_subject": {"subject", "metric", "value", "grid"}``.

    Raises:
        InputReadError: missing or unreadable metrics or volumes.
        ValueError: no subject with a finite figure.
    """
    metrics_dir = Path(metrics_dir)
    target = IntensityMapping.resolve(modality, None, preprocessing)
    metric, larger_is_worse = WORST_BY["ct" if target.is_ct else "mr"]
    subject, value = worst_row(_read_rows(metrics_dir / csv_name), metric, larger_is_worse)
    path_keys = {pred_key: "prediction", target_key: "target", source_key: "source"}
    if mask_key is not None:
        path_keys[mask_key] = "head mask"
    items = load_datalist_items(predictions, split, base_dir, path_keys)
    item = next((i for i in items if i[dataset_keys.SUBJECT] == subject), None)
    if item is None:
        raise InputReadError(predictions, f"has no subject {subject!r}, the worst of {metrics_dir / csv_name}")
    source_mapping = IntensityMapping.resolve(source_modality, {"on_network_scale": True, **dict(source_intensity or {})},
                                              preprocessing)
    source = source_mapping.to_network(read_volume(item[source_key], "source").array)
    pred = read_volume(item[pred_key], "prediction").array
    truth = read_volume(item[target_key], "target").array
    mask = (read_volume(item[mask_key], "head mask").array > 0) if mask_key is not None else target.compute_head_mask(truth)
    if not target.is_ct:
        truth = target.to_network(truth, mask)
    low, high = source_mapping.out_range
    rows, labels = [], []
    for index in _head_slices(mask, slices):
        columns = [_display(source[index], low, high)]
        if target.is_ct:
            for window in CT_DISPLAY_WINDOWS.values():
                columns += [hu_to_window(image[index], window, (0.0, 1.0)) for image in (pred, truth)]
        else:
            columns += [_display(image[index], *target.out_range) for image in (pred, truth)]
        error = np.abs(pred[index] - truth[index]) * mask[index]
        columns.append(_display(error, 0.0, ERROR_DISPLAY_MAX["ct" if target.is_ct else "mr"]))
        rows.append(np.stack(columns))
        labels.append(f"slice {index}")
    if target.is_ct:
        titles = ["input", "translated (wide)", "truth (wide)", "translated (brain)", "truth (brain)",
                  f"|error| 0–{ERROR_DISPLAY_MAX['ct']:g} HU"]
    else:
        titles = ["input", "translated", "truth", f"|error| 0–{ERROR_DISPLAY_MAX['mr']:g}"]
    output = metrics_dir / output_name
    save_grid_png(np.stack(rows), labels, output, title=f"worst subject {subject}: {metric} = {value:.4g}",
                  column_titles=titles)
    summary_path = metrics_dir / summary_name
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        summary["worst_subject"] = {"subject": subject, "metric": metric, "value": value, "grid": output_name}
        atomic_write_json(summary_path, summary)
    return output
