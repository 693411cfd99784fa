"""The demo cohort's ground truth, read for carrying into each registered space (demo cohorts only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medgan_common import dataset_keys as keys

__all__ = ["TRUTH_MODALITIES", "grid_image", "pair_landmark_errors", "raw_grid", "truth_volumes"]

#: Modalities whose truth the demo cohort holds (``truth/<subject>/<modality>.nii.gz``).
TRUTH_MODALITIES = ("ct", "t1", "t2")


def pair_landmark_errors(output: Path, entry: dict, truth: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    """How far a within-subject pair's registration leaves the demo truth's landmarks from each other.

    The landmarks (``landmarks.json``: one position per raw scanner space) of the pair's fixed
    volume are mapped through the pair's transforms (fixed points to moving points) and compared
    with the moving volume's.

    Args:
        output: the preprocessing output folder.
        entry: the subject's dataset.json item.
        truth: the subject's demo truth folder.
        key: a pair key with transforms, ``<moving>_in_<fixed>`` (``t2_in_t1``, ``ct_in_t2``).

    Returns:
        The distances (mm) after registration, and before (the raw positions compared as they are).
    """
    import ants
    import pandas as pd

    moving, _, fixed = key.partition("_in_")
    landmarks = json.loads((truth / "landmarks.json").read_text())
    names = sorted(landmarks[fixed])
    in_fixed, in_moving = (np.array([landmarks[m][n] for n in names]) for m in (fixed, moving))
    manifest = output / entry[keys.transforms_key(key)]
    transforms = [str(manifest.parent / name) for name in json.loads(manifest.read_text())["forward_transforms"]]
    mapped = ants.apply_transforms_to_points(3, pd.DataFrame(in_fixed, columns=list("xyz")), transforms)
    return (np.linalg.norm(mapped[list("xyz")].to_numpy() - in_moving, axis=1),
            np.linalg.norm(in_fixed - in_moving, axis=1))


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
