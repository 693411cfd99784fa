"""MAE of a synthetic CT per tissue class (air, soft tissue, bone), from a label map on the CT's grid.

A single MAE over the head mixes errors of very different size: a synthetic CT is usually within a
few tens of HU in soft tissue and hundreds of HU off in bone and in the air of the sinuses. Reporting
the MAE per tissue class, as synthetic-CT papers commonly do beside SynthRAD2023's whole-mask
figures, shows where a model fails.

A class is a set of integer labels; its MAE is the mean absolute HU difference over the voxels that
carry one of those labels **and** lie inside the evaluation mask, on the unclipped images (as
SynthRAD's MAE). So "air" (label 0) is the air inside the head mask (sinuses, ear canals, the air the
mask closes over), not the air around the head. :data:`DEMO_TISSUE_CLASSES` groups the labels of
the demo cohort (``preprocessing/demo/anatomy.py``: 0 air, 1 scalp, 2 fat, 3 cortical bone, 4 CSF,
5 grey matter, 6 white matter, 7 ventricle, 8 diploe; 9-11, the head holder, never lie in an MR's
space). Labels in no class are left out of the per-class figures (still counted by the whole-mask MAE).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["DEMO_TISSUE_CLASSES", "check_tissue_classes", "mae_per_tissue_class"]

#: The demo cohort's labels grouped into air, soft tissue and bone.
DEMO_TISSUE_CLASSES: dict[str, tuple[int, ...]] = {
    "air": (0,),
    "soft_tissue": (1, 2, 4, 5, 6, 7),  # scalp, fat, CSF, grey matter, white matter, ventricle
    "bone": (3, 8),  # cortical bone, diploe
}


def check_tissue_classes(classes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """Validate a class map ``{name: [labels]}`` and return it with the labels as tuples of ints.

    Args:
        classes: class name -> non-empty list of non-negative integer labels; no label in two classes.

    Returns:
        ``{name: (labels, ...)}`` in the given order.

    Raises:
        ValueError: an empty map, a name that is not a non-empty string (or would not make a clean
            metric name), an empty label list, a label that is not a non-negative integer, a label
            in two classes; the message names the class and the label.
    """
    if not isinstance(classes, Mapping) or not classes:
        raise ValueError(f"tissue_classes must be a non-empty mapping {{name: [labels]}}, got {classes!r}")
    checked: dict[str, tuple[int, ...]] = {}
    owner: dict[int, str] = {}
    for name, labels in classes.items():
        if not isinstance(name, str) or not name or not name.replace("_", "").isalnum():
            raise ValueError(f"tissue class name {name!r} must be a non-empty word of letters, digits and '_'")
        if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence) or not labels:
            raise ValueError(f"tissue class {name!r} needs a non-empty list of integer labels, got {labels!r}")
        values = []
        for label in labels:
            if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label < 0:
                raise ValueError(f"tissue class {name!r}: label {label!r} is not a non-negative integer")
            if int(label) in owner and owner[int(label)] != name:
                raise ValueError(f"label {int(label)} is in two tissue classes: {owner[int(label)]!r} and {name!r}")
            owner[int(label)] = name
            values.append(int(label))
        checked[name] = tuple(values)
    return checked


def mae_per_tissue_class(
    pred_hu: np.ndarray,
    target_hu: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray | None = None,
    classes: Mapping[str, Sequence[int]] = DEMO_TISSUE_CLASSES,
) -> dict[str, float | None]:
    """Mean absolute HU difference inside the mask, per tissue class of a label map.

    Args:
        pred_hu: synthetic CT in HU.
        target_hu: reference CT in HU, same shape.
        labels: integer label map on the same grid (float arrays read from NIfTI are accepted if
            their values are whole numbers).
        mask: evaluation (head) mask, non-zero inside; ``None``: every voxel.
        classes: class name -> labels (:func:`check_tissue_classes`).

    Returns:
        ``{class name: MAE in HU}``; ``None`` for a class with no voxel inside the mask (not
        measured, rather than 0 or NaN).

    Raises:
        ValueError: shapes that differ, labels that are not whole numbers, an invalid class map.
    """
    classes = check_tissue_classes(classes)
    pred_hu = np.asarray(pred_hu, dtype=np.float64)
    target_hu = np.asarray(target_hu, dtype=np.float64)
    labels = np.asarray(labels)
    for what, array in (("target", target_hu), ("labels", labels), *((("mask", np.asarray(mask)),) if mask is not None else ())):
        if array.shape != pred_hu.shape:
            raise ValueError(f"{what} shape {array.shape} differs from the prediction's {pred_hu.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or not np.array_equal(labels, np.rint(labels)):
            raise ValueError("the label map holds values that are not whole numbers: it is not a label map")
        labels = np.rint(labels).astype(np.int64)
    inside = np.ones(pred_hu.shape, dtype=bool) if mask is None else np.asarray(mask) > 0
    errors = np.abs(pred_hu - target_hu)
    result: dict[str, float | None] = {}
    for name, class_labels in classes.items():
        voxels = inside & np.isin(labels, class_labels)
        result[name] = float(errors[voxels].mean()) if voxels.any() else None
    return result
