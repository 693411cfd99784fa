"""Image helpers the reference phase and the subject steps share: masks, grids, warps, transforms."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medgan_common.errors import GeometryError
from preprocessing.dicom import to_canonical
from preprocessing.nifti import read_nifti
from preprocessing.registration import RegistrationResult, apply_transforms, save_transforms
from preprocessing.runner.common import NIFTI_SUFFIXES, jsonable, like


def load_reference_image(spec: str) -> sitk.Image:
    """A reference named by file in the configuration: NIfTI, or any image ITK reads, in LPS with identity direction."""
    path = Path(spec)
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        return read_nifti(path)
    image, _ = to_canonical(sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32), 0.0)
    return image


def build_mask(ct_hu: sitk.Image, options: Mapping[str, Any]) -> tuple[sitk.Image, dict]:
    """Keep-mask (1 = head; holder, couch and air 0) of a CT as a uint8 image on its grid, and its info."""
    from preprocessing.artefact_mask import build_artefact_mask

    mask, info = build_artefact_mask(sitk.GetArrayViewFromImage(ct_hu), **dict(options))
    return like(mask.astype(np.uint8), ct_hu), jsonable(info)


def apply_mask(ct_hu: sitk.Image, mask: sitk.Image, outside_hu: float) -> sitk.Image:
    """The CT with ``outside_hu`` wherever the keep-mask is 0."""
    from preprocessing.artefact_mask import apply_artefact_mask

    masked = apply_artefact_mask(sitk.GetArrayViewFromImage(ct_hu), sitk.GetArrayViewFromImage(mask) > 0, outside_hu)
    return like(masked.astype(np.float32, copy=False), ct_hu)


def grid_difference(first: sitk.Image, second: sitk.Image, tolerance: float = 1e-6) -> str | None:
    """How ``first``'s grid differs from ``second``'s (``None``: the same size, and spacing, origin
    and direction within ``tolerance``, in mm and direction cosines)."""
    if first.GetSize() != second.GetSize():
        return f"size {list(first.GetSize())} differs from {list(second.GetSize())}"
    for name in ("spacing", "origin", "direction"):
        mine, theirs = (np.asarray(getattr(image, f"Get{name.title()}")()) for image in (first, second))
        if not np.allclose(mine, theirs, rtol=0.0, atol=tolerance):
            return (f"{name} {np.round(mine, 4).tolist()} differs from {np.round(theirs, 4).tolist()} "
                    f"(by up to {np.abs(mine - theirs).max():.3g}, tolerance {tolerance:g})")
    return None


#: Largest difference of spacing and origin (mm) and direction (cosines) between volumes delivered on
#: one grid (SynthRAD2023's CT, MR and mask): they are written from one resampling, and their NIfTI
#: headers hold float32 values, which round a 200 mm origin to about 1e-5 mm, far below this.
GRID_TOLERANCE = 1e-3


def check_one_grid(image: sitk.Image, other: sitk.Image, image_file: str | os.PathLike,
                   other_file: str | os.PathLike, needed_by: str) -> None:
    """Raise unless two volumes delivered on one grid do share it (within :data:`GRID_TOLERANCE`).

    Args:
        image, other: the two volumes as read.
        image_file: the file of ``image``, named by the error.
        other_file: the file of ``other``, named by its file name.
        needed_by: what needs the shared grid, for the message.

    Raises:
        GeometryError: naming ``image_file``, ``other_file``'s name and what differs.
    """
    difference = grid_difference(image, other, GRID_TOLERANCE)
    if difference is not None:
        raise GeometryError(image_file, f"not on the grid of the subject's {Path(other_file).name}: {difference}; "
                            f"{needed_by}")


def same_grid(first: sitk.Image, second: sitk.Image) -> bool:
    """Whether two images share size, spacing, origin and direction (to 1e-6)."""
    return grid_difference(first, second) is None


def carried_mask(mask: sitk.Image, grid: sitk.Image, transforms: list[str]) -> sitk.Image:
    """A binary mask carried onto ``grid`` (through ANTs transform files, or by position).

    The mask is interpolated linearly and thresholded at one half: its edge then follows the
    transformed boundary to a fraction of a voxel, where nearest-neighbour sampling moves it by up
    to half a voxel of the finer grid and a mask rebuilt on the new grid loses what the new grid
    cannot resolve (a holder plate thinner than its voxels).
    """
    if not transforms and same_grid(mask, grid):
        return mask
    if transforms:
        from preprocessing.mask_warp import carry_mask_array

        carried = carry_mask_array(sitk.GetArrayViewFromImage(mask) > 0, mask, grid, transforms)
        if carried is not None:  # the same voxels as ANTs' below, evaluated at the mask's edge only
            return like(carried.view(np.uint8), grid)
    fraction = warp(sitk.Cast(mask > 0, sitk.sitkFloat32), grid, transforms, "linear", 0.0)
    return sitk.Cast(fraction >= 0.5, sitk.sitkUInt8)


def coarsened(image: sitk.Image, min_spacing: float, outside: float) -> sitk.Image:
    """``image`` on a grid with no voxel side below ``min_spacing`` mm (coarser axes are kept).

    Each coarsened axis is smoothed first (Gaussian, sigma of half the new voxel side in mm; the
    other axes are left alone) so that the resampling does not alias.
    """
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    target = np.maximum(spacing, min_spacing)
    if np.allclose(target, spacing):
        return image
    variance = np.where(target > spacing, (target / 2.0) ** 2, 0.0)
    smoothed = sitk.DiscreteGaussian(image, variance.tolist(), 32, 0.01, True)
    extent = np.asarray(image.GetSize()) * spacing
    size = np.maximum(1, np.round(extent / target)).astype(int)
    # Keep the field of view centred: the first voxel centre moves by half the size change.
    origin = image.TransformContinuousIndexToPhysicalPoint((0.5 * target / spacing - 0.5).tolist())
    return sitk.Resample(smoothed, size.tolist(), sitk.Transform(), sitk.sitkLinear, origin, target.tolist(),
                         image.GetDirection(), outside, sitk.sitkFloat32)


def identity_result(image: sitk.Image) -> RegistrationResult:
    """Registration result of the reference onto itself: an identity affine in ANTs' own format."""
    import ants

    workdir = tempfile.TemporaryDirectory(prefix="registration-")
    path = os.path.join(workdir.name, "0GenericAffine.mat")
    ants.write_transform(ants.new_ants_transform(precision="float", dimension=3, transform_type="AffineTransform"), path)
    metrics = {"ncc_before": 1.0, "ncc_after": 1.0}
    return RegistrationResult(image, [path], [path], [True], metrics, workdir)


def save_transforms_reproducibly(result: RegistrationResult, folder: Path, prefix: str) -> RegistrationResult:
    """Save the transforms with the similarity metrics but without the wall time.

    The manifest is an output like any other and must be byte-identical between runs; the time
    goes to the report instead.
    """
    metrics = {k: round(float(v), 6) for k, v in result.metrics.items() if k != "seconds"}
    return save_transforms(dataclasses.replace(result, metrics=metrics), folder, prefix=prefix)


def warp(image: sitk.Image, grid: sitk.Image, transforms: list[str], interpolator: str, default: float) -> sitk.Image:
    """``image`` onto ``grid`` through ANTs transform files (none: by physical position)."""
    if transforms:
        return apply_transforms(image, grid, transforms, interpolator, default_value=default)
    method = sitk.sitkNearestNeighbor if interpolator in ("nearestNeighbor", "genericLabel") else sitk.sitkLinear
    pixel = image.GetPixelID() if method == sitk.sitkNearestNeighbor else sitk.sitkFloat32
    return sitk.Resample(image, grid, sitk.Transform(), method, default, pixel)


def by_position(image: sitk.Image, grid: sitk.Image, default: float) -> sitk.Image:
    """``image`` resampled linearly onto ``grid`` by physical position (the QC's "before registration" view)."""
    return sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, default, sitk.sitkFloat32)
