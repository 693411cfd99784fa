"""MAE per tissue class and the SynthRAD2023 clipping conventions (modality_translation/metrics)."""

import math

import numpy as np
import pytest

from modality_translation.metrics import (
    DEMO_TISSUE_CLASSES,
    check_tissue_classes,
    mae_per_tissue_class,
    synthrad_metrics,
)


def _labelled_head(shape=(20, 24, 22)):
    """A head of nested shells: air around it, scalp, bone (cortical + diploe), brain tissues, an air cavity."""
    z, y, x = np.indices(shape)
    centre = [(n - 1) / 2 for n in shape]
    radius = np.sqrt(sum(((axis - c) / (n / 2 - 1)) ** 2 for axis, c, n in zip((z, y, x), centre, shape)))
    labels = np.zeros(shape, np.uint8)
    labels[radius < 1.0] = 1  # scalp
    labels[radius < 0.9] = 3  # cortical bone
    labels[radius < 0.82] = 8  # diploe
    labels[radius < 0.75] = 4  # CSF
    labels[radius < 0.65] = 5  # grey matter
    labels[radius < 0.5] = 6  # white matter
    labels[radius < 0.2] = 7  # ventricle
    labels[(radius > 0.55) & (radius < 0.62) & (z < centre[0])] = 0  # an air cavity inside the head
    hu = {0: -1000.0, 1: 45.0, 3: 1600.0, 8: 750.0, 4: 8.0, 5: 38.0, 6: 28.0, 7: 8.0}
    target = np.vectorize(hu.get)(labels).astype(np.float64)
    mask = radius < 1.0
    return target, labels, mask


def test_a_constant_offset_of_100_hu_gives_mae_100_in_every_class():
    target, labels, mask = _labelled_head()
    pred = target + 100.0
    per_class = mae_per_tissue_class(pred, target, labels, mask)
    assert per_class == pytest.approx({"air": 100.0, "soft_tissue": 100.0, "bone": 100.0})
    metrics = synthrad_metrics(pred, target, mask)
    assert metrics["mae"] == pytest.approx(100.0)
    # Data range 4024 HU, not the images' own range: PSNR = 20 log10(4024 / 100) (nothing is clipped here:
    # -1000 + 100 and 1600 + 100 lie inside [-1024, 3000]).
    assert metrics["psnr"] == pytest.approx(20 * math.log10(4024 / 100), rel=1e-9)


def test_each_class_sees_only_its_labels_and_air_only_inside_the_mask():
    target, labels, mask = _labelled_head()
    pred = target.copy()
    pred[labels == 3] += 300.0  # cortical bone
    pred[labels == 8] += 100.0  # diploe
    pred[np.isin(labels, (1, 4, 5, 6, 7))] -= 20.0
    pred[(labels == 0) & mask] += 50.0
    pred[~mask] = 500.0  # the air around the head: outside the mask, never counted
    per_class = mae_per_tissue_class(pred, target, labels, mask)
    n_cortical, n_diploe = np.count_nonzero((labels == 3) & mask), np.count_nonzero((labels == 8) & mask)
    assert per_class["bone"] == pytest.approx((300.0 * n_cortical + 100.0 * n_diploe) / (n_cortical + n_diploe))
    assert per_class["soft_tissue"] == pytest.approx(20.0) and per_class["air"] == pytest.approx(50.0)
    # Without a mask the air around the head counts too.
    assert mae_per_tissue_class(pred, target, labels)["air"] > 100.0


def test_a_class_without_voxels_is_not_measured_and_labels_in_no_class_are_left_out():
    target, labels, mask = _labelled_head()
    pred = target + 10.0
    pred[labels == 7] += 990.0  # ventricle, left out of the classes below
    classes = {"bone": [3, 8], "metal": [12], "brain": [5, 6]}
    assert mae_per_tissue_class(pred, target, labels, mask, classes) == pytest.approx(
        {"bone": 10.0, "metal": None, "brain": 10.0})
    # A float label map (as read from NIfTI) works as long as its values are whole numbers.
    assert mae_per_tissue_class(pred, target, labels.astype(np.float32), mask, classes)["bone"] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="not whole numbers"):
        mae_per_tissue_class(pred, target, labels + 0.5, mask, classes)
    with pytest.raises(ValueError, match=r"labels shape \(20, 24\) differs"):
        mae_per_tissue_class(pred, target, labels[..., 0], mask)


def test_the_demo_classes_and_the_class_map_checks():
    assert DEMO_TISSUE_CLASSES == {"air": (0,), "soft_tissue": (1, 2, 4, 5, 6, 7), "bone": (3, 8)}
    assert check_tissue_classes({"bone": [3, 8]}) == {"bone": (3, 8)}
    for classes, message in (
        ({}, "non-empty mapping"),
        ({"bone": []}, "'bone' needs a non-empty list"),
        ({"bone": "3"}, "'bone' needs a non-empty list"),
        ({"bone": [3.5]}, "label 3.5 is not a non-negative integer"),
        ({"bone": [-1]}, "label -1 is not"),
        ({"bone": [True]}, "label True is not"),
        ({"soft tissue": [1]}, "name 'soft tissue'"),
        ({"bone": [3, 8], "marrow": [8]}, "label 8 is in two tissue classes: 'bone' and 'marrow'"),
    ):
        with pytest.raises(ValueError, match=message):
            check_tissue_classes(classes)


def test_synthrad_clips_both_images_to_minus_1024_and_3000_for_psnr_and_ssim_not_for_mae():
    target, labels, mask = _labelled_head()
    pred = target.copy()
    metal = (labels == 3) & (np.indices(labels.shape)[2] < 8)
    target[metal], pred[metal] = 3500.0, 4200.0  # both above 3000: equal once clipped
    cavity = (labels == 0) & mask
    target[cavity], pred[cavity] = -1030.0, -1500.0  # both below -1024: equal once clipped
    metrics = synthrad_metrics(pred, target, mask)
    n = np.count_nonzero(mask)
    expected_mae = (700.0 * np.count_nonzero(metal) + 470.0 * np.count_nonzero(cavity)) / n
    assert metrics["mae"] == pytest.approx(expected_mae)
    assert math.isinf(metrics["psnr"]) and metrics["ssim"] == pytest.approx(1.0, abs=1e-9)
    # One side inside the range: the clipped difference counts, against the data range 4024.
    pred[metal] = 2900.0
    error = np.where(metal, 3000.0 - 2900.0, 0.0)
    expected_psnr = 10 * math.log10(4024**2 / ((error[mask] ** 2).mean()))
    assert synthrad_metrics(pred, target, mask)["psnr"] == pytest.approx(expected_psnr, rel=1e-9)
