"""Small synthetic scans for the single-scan tests: a head-like MR and CT, NIfTI files and DICOM studies."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk

from modality_translation.inference import write_dicom_series

SHAPE = (40, 36, 24)  # x, y, z of the NIfTI files
SPACING = (3.0, 3.0, 4.0)


def head(shape=SHAPE, seed=0) -> np.ndarray:
    """An asymmetric ellipsoid 'head' with an inner structure and noise, in the file's [i, j, k] order."""
    i, j, k = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    outer = (i / 0.8) ** 2 + (j / 0.7) ** 2 + (k / 0.75) ** 2 < 1
    inner = ((i - 0.2) / 0.3) ** 2 + (j / 0.25) ** 2 + ((k + 0.1) / 0.3) ** 2 < 1
    values = 40 + 500 * outer + 400 * inner + 150 * (i + 1) * outer
    return (values + np.random.default_rng(seed).normal(0, 5, shape)).astype(np.float32)


def ras_affine(shape=SHAPE, spacing=SPACING) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -np.asarray(spacing) * (np.asarray(shape) - 1) / 2
    return affine


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), path)
    return path


def las_copy(source: Path, path: Path) -> Path:
    """The same scan stored with the first voxel axis running towards patient Left (flipped i)."""
    image = nib.load(source)
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = image.shape[0] - 1
    return write_nifti(path, np.asarray(image.dataobj)[::-1], image.affine @ flip)


def sagittal_copy(source: Path, path: Path) -> Path:
    """The same scan stored with its voxel axes permuted (k, i, j): slices of the first axis are sagittal-like."""
    image = nib.load(source)
    permutation = np.zeros((4, 4))
    permutation[3, 3] = 1
    for new_axis, old_axis in enumerate((2, 0, 1)):
        permutation[old_axis, new_axis] = 1
    return write_nifti(path, np.asarray(image.dataobj).transpose(2, 0, 1), image.affine @ permutation)


def ct_volume(seed=1) -> np.ndarray:
    """A CT in HU ([z, y, x], SimpleITK order): air, a soft-tissue head with a skull, and a holder plate beneath."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (20, 40, 40)), indexing="ij")
    radius = (x / 0.7) ** 2 + (y / 0.6) ** 2 + (z / 0.9) ** 2
    hu = np.full(radius.shape, -1000.0)
    hu[radius < 1] = 40.0
    hu[(radius < 1) & (radius > 0.75)] = 900.0
    hu[:, 34:37, 5:35] = 300.0  # the head holder, separated from the head by air
    return (hu + np.random.default_rng(seed).normal(0, 3, hu.shape)).astype(np.float32)


def _write_original_series(volume: np.ndarray, folder: Path, modality: str, description: str, series_number: int,
                           study_uid: str, patient: str, spacing=(2.0, 2.0, 3.0)) -> list[Path]:
    """A DICOM series as a scanner exports it (ORIGINAL\\PRIMARY), in a given study."""
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(spacing)
    image.SetOrigin((-40.0, -40.0, -30.0))
    files = write_dicom_series(image, folder, modality, f"SYNTHETIC {description}", study_instance_uid=study_uid)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SeriesDescription, ds.SeriesNumber = description, series_number
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = patient, "P0001", "19650412"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20260115", "083000", "A7781"
        ds.save_as(path)
    return files


def write_ct_study(root: Path, with_scout: bool = True, with_mr: bool = False) -> Path:
    """A study folder: a CT series, optionally a one-image scout and an MR series, in one study."""
    study_uid = pydicom.uid.generate_uid()
    _write_original_series(ct_volume(), root / "ct_head", "ct", "CT HEAD 3mm", 2, study_uid, "Test^Patient")
    if with_scout:
        scout = _write_original_series(ct_volume()[:2], root / "scout", "ct", "SCOUT", 1, study_uid, "Test^Patient")
        for path in scout:
            ds = pydicom.dcmread(path)
            ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
            ds.save_as(path)
    if with_mr:
        mr = np.transpose(head((40, 40, 20)), (2, 1, 0))
        _write_original_series(mr, root / "mr_t1", "t1", "T1 AX", 5, study_uid, "Test^Patient")
    return root


def write_mr_study(root: Path) -> Path:
    study_uid = pydicom.uid.generate_uid()
    mr = np.transpose(head((40, 40, 20)), (2, 1, 0))
    _write_original_series(mr, root / "mr_t1", "t1", "T1 AX", 5, study_uid, "Test^Patient")
    return root
