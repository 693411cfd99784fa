"""One patient's scan as a translation input: a NIfTI file, a DICOM series folder or a study folder.

A site applying a bundle has a scan, not a cohort. :func:`read_scan` takes any of

- a NIfTI file (``.nii`` / ``.nii.gz``): its 3D voxels on the file's own grid;
- a DICOM series folder, or a study folder holding several series: the series are grouped and one
  is chosen with the preprocessing's rules (``preprocessing.dicom.select_series``: localizers and
  derived images are refused; the series with most slices, then the thinnest, is taken), read
  with the preprocessing's reader (CT to Hounsfield units, missing slices refused, gantry tilt
  resampled);

and checks it against the modality the bundle translates: the DICOM ``Modality`` of the series
(a study holding only MR series given to a CT model is refused, naming what it holds), and for a
NIfTI file the plausibility of its intensities (``IntensityMapping.check_intensities``: a CT in
HU given to an MR model, MR values given to a CT model).

The image is kept as SimpleITK (LPS physical space) for registration and resampling, with the
NIfTI header or the DICOM series' first header alongside, so that the output can be written on the
input's exact grid and, for DICOM, into the input's study.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk

from medgan_common.atomic import atomic_write_with
from medgan_common.errors import InputReadError
from modality_translation.inference.intensity import IntensityMapping, IntensityMismatchError
from modality_translation.inference.io import read_nifti_voxels
from preprocessing.dicom import DEFAULT_SERIES_RULES, read_dicom_series, scan_dicom_folder, select_series

__all__ = ["Scan", "nifti_to_sitk", "read_scan", "write_nifti_like"]

# nibabel's RAS+ world axes are ITK's LPS+ with x and y negated.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class Scan:
    """A scan read for translation.

    Attributes:
        path: the file or folder given.
        image: the volume (float32; HU for CT), LPS physical space: the NIfTI file's own grid, or the
            DICOM series' grid (identity direction after the reader's checks).
        modality: the modality it was read as (``"ct"``, ``"t1"``...).
        nifti: the NIfTI image (header and affine) for a NIfTI input, else ``None``.
        dicom_header: the chosen series' first header (no pixel data) for a DICOM input, else ``None``.
        series: for a DICOM input, the chosen series' description and slice count, and how many series
            the folder held.
    """

    path: Path
    image: sitk.Image
    modality: str
    nifti: nib.spatialimages.SpatialImage | None = None
    dicom_header: pydicom.Dataset | None = None
    series: Mapping[str, Any] | None = None

    @property
    def is_dicom(self) -> bool:
        """Whether the scan came from DICOM."""
        return self.dicom_header is not None

    @property
    def stem(self) -> str:
        """A file-name stem for the outputs: the NIfTI file name without suffix, or the folder name."""
        name = self.path.name
        for suffix in _NIFTI_SUFFIXES[::-1]:
            if name.lower().endswith(suffix):
                return name[: -len(suffix)]
        return name


def nifti_to_sitk(nifti: nib.spatialimages.SpatialImage, data: np.ndarray | None = None) -> sitk.Image:
    """A SimpleITK image on a NIfTI image's exact grid (its affine, in ITK's LPS convention).

    Args:
        nifti: the NIfTI image (its affine and, without ``data``, its voxels).
        data: voxels in the file's order ``[i, j, k]`` (default: the file's, as float32).

    Raises:
        InputReadError: an affine whose axes are not orthogonal (ITK keeps spacing and direction apart).
    """
    if data is None:
        data = np.asarray(nifti.dataobj, dtype=np.float32).reshape(nifti.shape[:3])
    affine = np.asarray(nifti.affine, dtype=np.float64)
    linear = _RAS_TO_LPS @ affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    direction = linear / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise InputReadError(getattr(nifti, "get_filename", lambda: None)(), "the NIfTI affine is sheared: not a grid of orthogonal axes")
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, dtype=np.float32).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in direction.ravel()])
    image.SetOrigin([float(v) for v in _RAS_TO_LPS @ affine[:3, 3]])
    return image


def _sitk_to_nifti(image: sitk.Image) -> nib.Nifti1Image:
    """A float32 NIfTI of a SimpleITK image, on its grid (for outputs of DICOM inputs)."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _RAS_TO_LPS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = _RAS_TO_LPS @ np.asarray(image.GetOrigin())
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32)
    nifti = nib.Nifti1Image(data, affine)
    nifti.set_qform(affine, code=1)
    nifti.set_sform(affine, code=1)
    nifti.header.set_xyzt_units("mm")
    return nifti


def write_nifti_like(scan: Scan, image: sitk.Image, path: str | os.PathLike) -> Path:
    """Write ``image`` (on the scan's grid) as a float32 NIfTI, atomically.

    For a NIfTI input the input's header is reused (same affine, qform/sform codes and units); for
    a DICOM input the image's own grid is written.

    Raises:
        ValueError: an image whose size differs from the scan's.
    """
    if image.GetSize() != scan.image.GetSize():
        raise ValueError(f"output size {image.GetSize()} differs from the input's {scan.image.GetSize()}")
    if scan.nifti is not None:
        header = scan.nifti.header.copy()
        header.set_data_dtype(np.float32)
        data = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32)
        nifti = type(scan.nifti)(data, scan.nifti.affine, header)
    else:
        nifti = _sitk_to_nifti(image)
    path = Path(path)
    # nibabel gzips with a fixed timestamp, so rerunning gives byte-identical files.
    atomic_write_with(path, lambda tmp: nib.save(nifti, tmp))
    return path


def _read_nifti_scan(path: Path, mapping: IntensityMapping) -> Scan:
    nifti, data = read_nifti_voxels(path, "scan to translate")
    mapping.check_intensities(data, path, "scan to translate", acquired=True)
    return Scan(path=path, image=nifti_to_sitk(nifti, data), modality=mapping.modality, nifti=nifti)


def _dicom_modality(modality: str) -> str:
    return "CT" if modality == "ct" else "MR"


def _read_dicom_scan(path: Path, mapping: IntensityMapping, rules: Mapping[str, Any] | None) -> Scan:
    wanted = _dicom_modality(mapping.modality)
    scan = scan_dicom_folder(path)
    found = sorted({s.modality or "?" for s in scan.series})
    if wanted not in found:
        listing = "; ".join(f"{s.modality or '?'} {s.label()}" for s in scan.series[:5])
        raise IntensityMismatchError(
            path, f"holds no {wanted} series (found {', '.join(found)}: {listing}); this bundle translates "
            f"{mapping.modality.upper()} ({wanted}) scans")
    # MR series are read in whatever plane they were acquired; the translation reorients them.
    series_rules = {**DEFAULT_SERIES_RULES, "modality": wanted, "axial_only": mapping.is_ct, **dict(rules or {})}
    series = select_series(scan.series, series_rules)
    air = -1024.0 if mapping.is_ct else 0.0
    image, metadata = read_dicom_series(series, {"series_rules": series_rules, "air_value": air})
    image = sitk.Cast(image, sitk.sitkFloat32)
    mapping.check_intensities(sitk.GetArrayViewFromImage(image), series.folder, "scan to translate", acquired=True)
    header = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    info = {"description": series.description, "slices": series.n_slices, "series_in_folder": len(scan.series),
            "findings": list(metadata.get("findings") or [])}
    return Scan(path=path, image=image, modality=mapping.modality, dicom_header=header, series=info)


def read_scan(path: str | os.PathLike, mapping: IntensityMapping, dicom_rules: Mapping[str, Any] | None = None) -> Scan:
    """Read one scan to translate, checked against the modality of ``mapping``.

    Args:
        path: a NIfTI file, a DICOM series folder, or a study folder of several series.
        mapping: the bundle's intensity mapping of the source modality (raw units: HU for CT).
        dicom_rules: overrides of the series selection rules (``preprocessing.dicom.DEFAULT_SERIES_RULES``).

    Returns:
        The :class:`Scan`.

    Raises:
        InputReadError: a missing path, an unreadable or truncated file, a 4D volume, NaN voxels, a
            folder without DICOM images.
        SeriesSelectionError: no series of the folder passes the rules (each candidate and why listed).
        IntensityMismatchError: a scan of another modality than the bundle's source (DICOM Modality,
            or the intensities of a NIfTI file).
        GeometryError: missing slices in the chosen series.
    """
    path = Path(path)
    if path.is_dir():
        return _read_dicom_scan(path, mapping, dicom_rules)
    if not path.exists():
        raise InputReadError(path, "the scan to translate does not exist")
    if not path.name.lower().endswith(_NIFTI_SUFFIXES):
        raise InputReadError(path, "not a NIfTI file (.nii or .nii.gz); give a DICOM series or study as a folder")
    return _read_nifti_scan(path, mapping)
