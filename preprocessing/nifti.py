"""Find and read MR volumes stored as NIfTI with IXI-style names (``<subject>-<modality>.nii.gz``).

Volumes are read with nibabel, which, unlike SimpleITK's NIfTI reader, raises on a truncated
file instead of filling the missing voxels with zeros, and are returned as SimpleITK images in
LPS space with identity direction (see :func:`preprocessing.dicom.to_canonical`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medgan_common.errors import InputReadError
from preprocessing.dicom import to_canonical

__all__ = ["MR_MODALITIES", "find_mr_volumes", "parse_mr_filename", "read_nifti"]

#: Modalities of the IXI dataset. IXI stores DTI as one file per gradient direction
#: (``-DTI-00`` ... ``-DTI-15``); those parse as modality ``DTI-00`` ... so each keeps its own key.
MR_MODALITIES = ("T1", "T2", "PD", "MRA", "DTI")

_NIFTI_SUFFIX = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
_MR_NAME = re.compile(
    r"^(?P<subject>.+?)-(?P<modality>T1|T2|PD|MRA|DTI(?:-\d+)?)\.nii(?:\.gz)?$", re.IGNORECASE
)
_NIFTI_CLASSES = (nib.Nifti1Image, nib.Nifti2Image)
# LPS = diag(-1, -1, 1) · RAS: nibabel affines are in RAS, ITK physical space is LPS.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def parse_mr_filename(path: str | os.PathLike) -> tuple[str, str]:
    """Split an IXI-style file name into subject and modality.

    ``IXI002-Guys-0828-T1.nii.gz`` → ``("IXI002-Guys-0828", "T1")``; ``demo001-T2.nii.gz`` →
    ``("demo001", "T2")``; ``IXI002-Guys-0828-DTI-03.nii.gz`` → ``("IXI002-Guys-0828", "DTI-03")``.
    The modality is returned in upper case.

    Args:
        path: file path or name.

    Returns:
        ``(subject, modality)``.

    Raises:
        InputReadError: the name does not follow ``<subject>-<modality>.nii[.gz]`` with a
            modality of :data:`MR_MODALITIES`.
    """
    name = Path(path).name
    match = _MR_NAME.match(name)
    if match is None:
        raise InputReadError(
            path,
            f"file name {name!r} does not follow '<subject>-<modality>.nii.gz' "
            f"with modality one of {', '.join(MR_MODALITIES)} (e.g. IXI002-Guys-0828-T1.nii.gz)",
        )
    return match["subject"], match["modality"].upper()


def find_mr_volumes(folder: str | os.PathLike) -> dict[str, dict[str, Path]]:
    """Index the NIfTI files directly in ``folder`` by subject and modality.

    Files that are not NIfTI (``.json`` side-cars, notes) are ignored.

    Args:
        folder: folder holding ``<subject>-<modality>.nii[.gz]`` files.

    Returns:
        ``{subject: {modality: path}}``, subjects and modalities in sorted order.

    Raises:
        InputReadError: the folder does not exist or holds no NIfTI file, a NIfTI file name
            cannot be parsed, or two files claim the same subject and modality.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputReadError(folder, "not a folder" if folder.exists() else "folder does not exist")
    volumes: dict[str, dict[str, Path]] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and _NIFTI_SUFFIX.search(p.name)):
        subject, modality = parse_mr_filename(path)
        existing = volumes.setdefault(subject, {}).get(modality)
        if existing is not None:
            raise InputReadError(path, f"{modality} of subject {subject!r} is also in {existing.name}")
        volumes[subject][modality] = path
    if not volumes:
        raise InputReadError(folder, "no NIfTI file (.nii or .nii.gz) in folder")
    return {subject: dict(sorted(volumes[subject].items())) for subject in sorted(volumes)}


def read_nifti(path: str | os.PathLike, default_value: float = 0.0) -> sitk.Image:
    """Read a 3D NIfTI volume as a float32 SimpleITK image with identity direction.

    The nibabel affine (sform if set, else qform) is converted from RAS to ITK's LPS; axis
    permutations and flips are then undone exactly (``sitk.DICOMOrient``), and oblique axes are
    resampled linearly onto an identity-direction grid (outside value ``default_value``). A
    singleton 4th dimension is dropped.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        default_value: value of the voxels an oblique volume's resampling finds outside it (0 for
            MR and masks, air for a CT in HU).

    Returns:
        The volume, float32, identity direction, LPS origin and spacing in mm.

    Raises:
        InputReadError: the file is missing, not NIfTI, truncated or otherwise unreadable, not
            3D (a 4D series of several volumes), or holds NaN/Inf voxels or a single value.
    """
    path = Path(path)
    if not path.is_file():
        raise InputReadError(path, "file does not exist")
    try:
        nifti = nib.load(path)
    except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError... on bad files
        raise InputReadError(path, f"not a readable NIfTI file: {exc}") from exc
    if not isinstance(nifti, _NIFTI_CLASSES):
        raise InputReadError(path, f"not a NIfTI file (read as {type(nifti).__name__})")

    shape = nifti.shape
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise InputReadError(
            path, f"expected a 3D volume, got shape {nifti.shape}"
            + (" (a series of several volumes)" if len(shape) > 3 else "")
        )
    try:
        data = nifti.get_fdata(dtype=np.float32).reshape(shape)
    except Exception as exc:  # truncated gzip (EOFError), short file (OSError), bad zlib stream...
        raise InputReadError(path, f"cannot read the voxel data (truncated or corrupt file?): {exc}") from exc

    n_bad = int(np.count_nonzero(~np.isfinite(data)))
    if n_bad:
        raise InputReadError(path, f"{n_bad} voxels are NaN or infinite")
    if data.min() == data.max():
        raise InputReadError(path, f"all voxels have the same value ({data.min():g}): no image content")

    affine = _RAS_TO_LPS @ nifti.affine
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing == 0):
        raise InputReadError(path, f"degenerate affine (zero voxel size): {nifti.affine.tolist()}")
    # nibabel indexes data [i, j, k]; SimpleITK arrays are [k, j, i].
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(affine[:3, 3].tolist())
    image.SetDirection((affine[:3, :3] / spacing).ravel().tolist())
    image, _ = to_canonical(image, default_value=default_value)
    return image
