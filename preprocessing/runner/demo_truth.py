"""The demo cohort's ground truth, read for carrying into each registered space (demo cohorts only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

__all__ = ["TRUTH_MODALITIES", "grid_image", "raw_grid", "truth_volumes"]

#: Modalities whose truth the demo cohort holds (``truth/<subject>/<modality>.nii.gz``).
TRUTH_MODALITIES = ("ct", "t1", "t2")


def truth_volumes(truth: Path) -> dict[str, Any]:
    """The demo truth of one subject: arrays on the truth grid, poses, raw CT grid and labels."""
    import nibabel as nib

    from preprocessing.demo.grid import grid_from_affine_ras
    from preprocessing.demo.pose import Pose

    def load(name: str) -> tuple[Any, np.ndarray]:
        image = nib.load(str(truth / name))
        return grid_from_affine_ras(image.shape, image.affine), np.asarray(image.dataobj)

    grid, labels = load("labels.nii.gz")
    arrays = {m: load(f"{m}.nii.gz")[1].astype(np.float32) for m in TRUTH_MODALITIES}
    poses = {m: Pose.from_dict(d) for m, d in json.loads((truth / "pose.json").read_text()).items()}
    ct_grid, ct_labels = load("ct_raw_labels.nii.gz")
    return {"grid": grid, "arrays": arrays, "labels": labels, "poses": poses, "ct_grid": ct_grid, "ct_labels": ct_labels}


def grid_image(array: np.ndarray, grid: Any) -> sitk.Image:
    """A demo ``Grid`` array (indexed [i, j, k]) as a SimpleITK image with the grid's geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    image.SetSpacing([float(s) for s in grid.spacing])
    image.SetOrigin([float(o) for o in grid.origin])
    image.SetDirection(np.asarray(grid.direction, dtype=float).ravel().tolist())
    return image


def raw_grid(modality: str, truth: dict, volume_path: Path) -> Any:
    """The scanner grid a modality was acquired on: the CT's from the truth, an MR's from its NIfTI header."""
    if modality == "ct":
        return truth["ct_grid"]
    import nibabel as nib

    from preprocessing.demo.grid import grid_from_affine_ras

    header = nib.load(str(volume_path))
    return grid_from_affine_ras(header.shape, header.affine)
