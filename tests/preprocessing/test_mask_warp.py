"""Carrying a binary mask through ANTs transforms: the same voxels as ANTs' linear resampling at 0.5."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from preprocessing.mask_warp import BLOCK, carry_mask_array
from preprocessing.registration import RegistrationConfig, apply_transforms, register

FAST = RegistrationConfig(
    linear_iterations=(100, 50), linear_shrink_factors=(4, 2), linear_smoothing_sigmas=(2, 1),
    syn_iterations=(40, 20, 10), syn_shrink_factors=(4, 2, 1), syn_smoothing_sigmas=(2, 1, 0),
)


def _rotation(angles: tuple[float, float, float]) -> np.ndarray:
    transform = sitk.Euler3DTransform()
    transform.SetRotation(*angles)
    return np.asarray(transform.GetMatrix()).reshape(3, 3)


def _image(array: np.ndarray, spacing, origin, direction: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array, isVector=array.ndim == 4)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(tuple(direction.ravel().tolist()))
    return image


def _blob(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A lumpy object with a cavity, a thin plate beside it and a part cut by the array's edge."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    lumps = ndimage.gaussian_filter(rng.normal(size=shape), 3) * 6
    blob = (x**2 / 0.5 + y**2 / 0.6 + (z - 0.4) ** 2 / 0.5 + 0.4 * lumps) < 1
    blob &= ~((x**2 + y**2 + (z - 0.4) ** 2) < 0.05)  # cavity
    blob |= (np.abs(y + 0.85) < 0.04) & (np.abs(x) < 0.7)  # plate, about one voxel thick
    return blob


def _ants_carry(mask: sitk.Image, grid: sitk.Image, files: list[str]) -> np.ndarray:
    fraction = apply_transforms(sitk.Cast(mask, sitk.sitkFloat32), grid, files, "linear", default_value=0.0)
    return sitk.GetArrayFromImage(fraction)


def _assert_same_as_ants(carried: np.ndarray, fraction: np.ndarray) -> None:
    """Equal to ANTs' fraction >= 0.5, except where the fraction is one half to rounding."""
    expected = fraction >= 0.5
    differ = carried != expected
    assert np.all(np.abs(fraction[differ] - 0.5) < 1e-4), fraction[differ]
    assert differ.sum() <= max(3, expected.size // 100_000)
    assert expected.sum() > 0 and (~expected).sum() > 0


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A displacement field on a coarser, shifted, rotated grid, then two affine transforms."""
    folder = tmp_path_factory.mktemp("chain")
    direction = _rotation((0.1, -0.2, 0.15))
    rng = np.random.default_rng(3)
    field = np.stack([ndimage.gaussian_filter(rng.normal(size=(16, 18, 17)), 2.5) * 25 for _ in range(3)], -1)
    field_image = _image(field.astype(np.float32), (3.0, 3.0, 3.5), (-25.0, -28.0, -27.0), direction)
    field_path = str(folder / "1Warp.nii.gz")
    sitk.WriteImage(field_image, field_path)
    paths = [field_path]
    for index, (angles, translation) in enumerate((((0.05, 0.1, -0.08), (2.0, -1.5, 3.0)),
                                                   ((-0.12, 0.04, 0.2), (-1.0, 2.5, 0.5)))):
        affine = sitk.AffineTransform(3)
        affine.SetMatrix((_rotation(angles) * [1.05, 0.97, 1.02]).ravel().tolist())
        affine.SetTranslation(translation)
        affine.SetCenter((1.0, -2.0, 0.5))
        path = str(folder / f"{index}Affine.mat")
        sitk.WriteTransform(affine, path)
        paths.append(path)
    grid = _image(np.zeros((29, 41, 37), np.float32), (1.6, 1.4, 1.5), (-27.0, -29.0, -22.0), direction)
    mask = _image(_blob((46, 60, 52), 0).astype(np.uint8), (0.9, 0.95, 1.1), (-24.0, -28.0, -24.0),
                  _rotation((-0.05, 0.08, 0.0)))
    return mask, grid, paths


def test_field_then_affines_match_ants(chain):
    mask, grid, paths = chain
    carried = carry_mask_array(sitk.GetArrayFromImage(mask) > 0, mask, grid, paths)
    assert carried.shape == sitk.GetArrayViewFromImage(grid).shape and carried.dtype == bool
    _assert_same_as_ants(carried, _ants_carry(mask, grid, paths))


def test_affines_alone_match_ants(chain):
    mask, grid, paths = chain
    carried = carry_mask_array(sitk.GetArrayFromImage(mask) > 0, mask, grid, paths[1:])
    _assert_same_as_ants(carried, _ants_carry(mask, grid, paths[1:]))


def test_output_points_beyond_the_mask_and_the_field(chain):
    """A grid larger than both the field and the mask: outside the field no displacement, outside the mask zero."""
    mask, grid, paths = chain
    wide = sitk.Image([s + 2 * BLOCK + 3 for s in grid.GetSize()], sitk.sitkFloat32)
    wide.SetSpacing(grid.GetSpacing())
    wide.SetDirection(grid.GetDirection())
    wide.SetOrigin(grid.TransformContinuousIndexToPhysicalPoint([-BLOCK - 1.5] * 3))
    full = sitk.Image(mask.GetSize(), sitk.sitkUInt8) + 1  # ones up to the mask's own border
    full.CopyInformation(mask)
    for image in (mask, full):
        carried = carry_mask_array(sitk.GetArrayFromImage(image) > 0, image, wide, paths)
        _assert_same_as_ants(carried, _ants_carry(image, wide, paths))


def test_a_real_syn_registration(tmp_path):
    """The chain ANTs writes for rigid + SyN, between two different lumpy objects."""
    shape = (40, 44, 42)
    direction = np.eye(3)
    fixed = _image(ndimage.gaussian_filter(_blob(shape, 1).astype(np.float32) * 100, 1), (1.5,) * 3, (-30.0,) * 3, direction)
    moving_mask = _blob(shape, 2)
    moving = _image(ndimage.gaussian_filter(moving_mask.astype(np.float32) * 100, 1), (1.5,) * 3, (-31.0, -29.0, -30.0), direction)
    config = RegistrationConfig(**{**FAST.__dict__, "transforms": ("Rigid", "SyN")})
    with register(moving, fixed, config) as result:
        files = list(result.forward_transforms)
        mask = _image(moving_mask.astype(np.uint8), (1.5,) * 3, (-31.0, -29.0, -30.0), direction)
        carried = carry_mask_array(moving_mask, mask, fixed, files)
        assert files[0].endswith(".nii.gz")
        _assert_same_as_ants(carried, _ants_carry(mask, fixed, files))


def test_empty_mask_and_unsupported_chains(chain):
    mask, grid, paths = chain
    empty = np.zeros(sitk.GetArrayViewFromImage(mask).shape, bool)
    assert not carry_mask_array(empty, mask, grid, paths).any()
    array = sitk.GetArrayFromImage(mask) > 0
    # A displacement field after a linear transform, or a transform format not read here: None,
    # for the caller to use ANTs.
    assert carry_mask_array(array, mask, grid, [paths[1], paths[0]]) is None
    assert carry_mask_array(array, mask, grid, [paths[1][:-4] + ".txt"]) is None
