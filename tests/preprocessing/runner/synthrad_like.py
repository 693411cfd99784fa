"""Fabricated SynthRAD2023-like subject folders (mr.nii.gz, ct.nii.gz, mask.nii.gz on one grid) for the runner tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from preprocessing.demo.anatomy import HeadParameters, build_labels
from preprocessing.demo.grid import Grid
from preprocessing.runner.demo_truth import grid_image

# Per label (see preprocessing.demo.anatomy): CT in HU and a T1-weighted MR.
CT_HU = np.array([-1000, 45, -95, 1450, 8, 40, 27, 8, 550], np.float32)
MR_T1 = np.array([0, 587, 1352, 0, 244, 593, 800, 244, 676], np.float32)


def write_subject(folder: Path, seed: int, files=("mr", "ct", "mask"), ct_shift_mm: float = 0.0,
                  slices: int = 32) -> None:
    """A SynthRAD-like subject: MR, CT (HU, with a couch outside the body) and body mask on one grid of
    32 x 32 x ``slices`` voxels (6 mm, 6.5 mm, 6 mm), the CT (and mask) ``ct_shift_mm`` off it along z."""
    grid = Grid.centred((32, 32, slices), (6.0, 6.5, 6.0))
    rng = np.random.default_rng(seed)
    labels = build_labels(grid, HeadParameters.random(rng), rng)
    images = {"mr": grid_image((MR_T1[labels] + rng.normal(0, 10, labels.shape)).astype(np.float32), grid),
              "mask": grid_image((labels > 0).astype(np.uint8), grid)}
    ct = CT_HU[labels] + rng.normal(0, 4, labels.shape)
    ct[:, :3, :] = 300.0  # a couch under the head, outside the body mask
    images["ct"] = sitk.Cast(grid_image(ct.astype(np.float32), grid), sitk.sitkInt16)
    if ct_shift_mm:
        images["ct"].SetOrigin([o + d for o, d in zip(images["ct"].GetOrigin(), (0.0, 0.0, ct_shift_mm))])
        images["mask"].SetOrigin(images["ct"].GetOrigin())
    folder.mkdir(parents=True)
    for name in files:
        sitk.WriteImage(images[name], str(folder / f"{name}.nii.gz"))
