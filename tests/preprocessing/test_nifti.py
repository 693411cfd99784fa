"""Tests of preprocessing.nifti on small synthetic NIfTI volumes written with nibabel."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medgan_common.errors import InputReadError
from preprocessing.nifti import find_mr_volumes, parse_mr_filename, read_nifti

SHAPE = (20, 24, 16)  # nibabel order (i, j, k)
SPACING = (1.0, 1.5, 2.0)


def volume() -> np.ndarray:
    """int16 data whose every voxel differs, so that any flip or permutation shows."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    return (i + 100 * j + 3000 * k).astype(np.int16)


def lps_affine(origin_lps=(-10.0, 20.0, -5.0)) -> np.ndarray:
    """RAS affine of a volume whose index axes run towards Left, Posterior, Superior."""
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    affine[:3, 3] = [-origin_lps[0], -origin_lps[1], origin_lps[2]]
    return affine


def save(image: nib.Nifti1Image, path: Path) -> Path:
    nib.save(image, path)
    return path


# ----------------------------------------------------------------------------------------------
# File names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("IXI002-Guys-0828-T1.nii.gz", ("IXI002-Guys-0828", "T1")),
        ("IXI012-HH-1211-T2.nii.gz", ("IXI012-HH-1211", "T2")),
        ("IXI013-HH-1212-PD.nii.gz", ("IXI013-HH-1212", "PD")),
        ("IXI014-HH-1236-MRA.nii", ("IXI014-HH-1236", "MRA")),
        ("IXI002-Guys-0828-DTI-03.nii.gz", ("IXI002-Guys-0828", "DTI-03")),
        ("demo001-T2.nii.gz", ("demo001", "T2")),
        ("demo001-t1.nii.gz", ("demo001", "T1")),
        ("/data/raw/mri/demo002-DTI.nii.gz", ("demo002", "DTI")),
    ],
)
def test_parse_mr_filename(name, expected):
    assert parse_mr_filename(name) == expected


@pytest.mark.parametrize(
    "name", ["IXI002-Guys-0828.nii.gz", "IXI002-Guys-0828-T3.nii.gz", "demo001-T1.mha", "-T1.nii.gz", "T1.nii.gz"]
)
def test_parse_mr_filename_rejects_other_names(name):
    expected = r"does not follow '<subject>-<modality>.nii.gz'.*T1, T2, PD, MRA, DTI"
    with pytest.raises(InputReadError, match=expected) as exc:
        parse_mr_filename(name)
    assert exc.value.path == name


def test_find_mr_volumes(tmp_path):
    image = nib.Nifti1Image(volume(), lps_affine())
    for name in ["demo001-T1.nii.gz", "demo001-T2.nii.gz", "demo002-T1.nii", "IXI002-Guys-0828-PD.nii.gz"]:
        save(image, tmp_path / name)
    (tmp_path / "demo001-T1.json").write_text("{}")

    found = find_mr_volumes(tmp_path)

    assert found == {
        "IXI002-Guys-0828": {"PD": tmp_path / "IXI002-Guys-0828-PD.nii.gz"},
        "demo001": {"T1": tmp_path / "demo001-T1.nii.gz", "T2": tmp_path / "demo001-T2.nii.gz"},
        "demo002": {"T1": tmp_path / "demo002-T1.nii"},
    }


def test_find_mr_volumes_errors(tmp_path):
    with pytest.raises(InputReadError, match="does not exist"):
        find_mr_volumes(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(InputReadError, match="no NIfTI file") as exc:
        find_mr_volumes(tmp_path)
    assert exc.value.path == str(tmp_path)

    image = nib.Nifti1Image(volume(), lps_affine())
    save(image, tmp_path / "demo001-T1.nii.gz")
    save(image, tmp_path / "demo001-T1.nii")
    with pytest.raises(InputReadError, match="T1 of subject 'demo001' is also in demo001-T1.nii") as exc:
        find_mr_volumes(tmp_path)
    assert exc.value.path == str(tmp_path / "demo001-T1.nii.gz")

    (tmp_path / "demo001-T1.nii").unlink()
    save(image, tmp_path / "scan_final.nii.gz")
    with pytest.raises(InputReadError, match="scan_final.nii.gz") as exc:
        find_mr_volumes(tmp_path)
    assert exc.value.path == str(tmp_path / "scan_final.nii.gz")


# ----------------------------------------------------------------------------------------------
# Orientation


def test_canonical_file_is_read_unchanged(tmp_path):
    path = save(nib.Nifti1Image(volume(), lps_affine()), tmp_path / "a-T1.nii.gz")

    image = read_nifti(path)

    assert image.GetPixelID() == sitk.sitkFloat32
    assert image.GetDirection() == tuple(np.eye(3).ravel())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), volume().transpose(2, 1, 0))
    np.testing.assert_allclose(image.GetOrigin(), (-10.0, 20.0, -5.0))
    np.testing.assert_allclose(image.GetSpacing(), SPACING)


@pytest.mark.parametrize(
    "orientation",
    [
        [[0, -1], [1, -1], [2, 1]],  # RAS+ axes: flips of i and j
        [[2, 1], [0, -1], [1, 1]],  # sagittal-like permutation with a flip
        [[1, -1], [2, -1], [0, -1]],  # permutation with three flips
    ],
)
def test_permuted_and_flipped_affines_give_the_canonical_array(tmp_path, orientation):
    reference = nib.Nifti1Image(volume(), lps_affine())
    reoriented = reference.as_reoriented(np.array(orientation))
    assert not np.array_equal(np.asarray(reoriented.dataobj), volume())  # the file really is reoriented
    path = save(reoriented, tmp_path / "s-T1.nii.gz")

    image = read_nifti(path)

    assert image.GetDirection() == tuple(np.eye(3).ravel())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), volume().transpose(2, 1, 0))
    np.testing.assert_allclose(image.GetOrigin(), (-10.0, 20.0, -5.0), atol=1e-5)
    np.testing.assert_allclose(image.GetSpacing(), SPACING, atol=1e-6)
    # Same geometry as SimpleITK's own NIfTI reader after reorientation.
    itk = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
    np.testing.assert_allclose(image.GetOrigin(), itk.GetOrigin(), atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(itk))


def test_oblique_affine_is_resampled_onto_identity_grid(tmp_path):
    t = math.radians(15.0)
    rotation = np.array([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(SPACING)
    affine[:3, 3] = [5.0, -8.0, 12.0]
    i, j, k = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    ras = np.stack([i, j, k], axis=-1) @ affine[:3, :3].T + affine[:3, 3]
    field = lambda point_ras: 100.0 + 2.0 * point_ras[..., 0] - 3.0 * point_ras[..., 1] + 5.0 * point_ras[..., 2]
    path = save(nib.Nifti1Image(field(ras).astype(np.float32), affine), tmp_path / "o-T2.nii.gz")

    image = read_nifti(path)

    assert image.GetDirection() == tuple(np.eye(3).ravel())
    size = image.GetSize()
    index = np.stack(np.meshgrid(*(np.arange(s) for s in size[::-1]), indexing="ij")[::-1], axis=-1)
    lps = np.asarray(image.GetOrigin()) + index * np.asarray(image.GetSpacing())
    ras_out = lps * np.array([-1.0, -1.0, 1.0])
    source_index = (ras_out - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
    inside = np.all((source_index >= 0) & (source_index <= np.array(SHAPE) - 1), axis=-1)
    assert inside.mean() > 0.4
    np.testing.assert_allclose(sitk.GetArrayFromImage(image)[inside], field(ras_out)[inside], atol=1e-3)


# ----------------------------------------------------------------------------------------------
# Bad input


def test_singleton_fourth_dimension_is_squeezed(tmp_path):
    path = save(nib.Nifti1Image(volume()[..., None], lps_affine()), tmp_path / "a-T1.nii.gz")
    image = read_nifti(path)
    assert image.GetDimension() == 3 and image.GetSize() == SHAPE


def test_4d_series_is_refused(tmp_path):
    data = np.stack([volume(), volume() + 1], axis=-1)
    path = save(nib.Nifti1Image(data, lps_affine()), tmp_path / "a-DTI.nii.gz")
    with pytest.raises(InputReadError, match=r"expected a 3D volume, got shape \(20, 24, 16, 2\)") as exc:
        read_nifti(path)
    assert exc.value.path == str(path)


@pytest.mark.parametrize(("bad", "count"), [(np.nan, 3), (np.inf, 1), (-np.inf, 2)])
def test_non_finite_voxels_are_refused(tmp_path, bad, count):
    data = volume().astype(np.float32)
    data.flat[[5, 700, 4000][:count]] = bad
    path = save(nib.Nifti1Image(data, lps_affine()), tmp_path / "a-T2.nii.gz")
    with pytest.raises(InputReadError, match=f"{count} voxels are NaN or infinite"):
        read_nifti(path)


def test_constant_volume_is_refused(tmp_path):
    path = save(nib.Nifti1Image(np.full(SHAPE, 7, np.int16), lps_affine()), tmp_path / "a-T1.nii.gz")
    with pytest.raises(InputReadError, match=r"all voxels have the same value \(7\)"):
        read_nifti(path)


def test_unreadable_files_name_the_file(tmp_path):
    text = tmp_path / "notes-T1.nii.gz"
    text.write_text("this is not an image")
    with pytest.raises(InputReadError, match="not a readable NIfTI file") as exc:
        read_nifti(text)
    assert exc.value.path == str(text)

    with pytest.raises(InputReadError, match="file does not exist"):
        read_nifti(tmp_path / "missing-T1.nii.gz")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_truncated_file_is_refused(tmp_path, suffix):
    path = save(nib.Nifti1Image(volume(), lps_affine()), tmp_path / f"a-T1{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputReadError, match="truncated or corrupt") as exc:
        read_nifti(path)
    assert exc.value.path == str(path)
