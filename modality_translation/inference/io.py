"""Volume files: NIfTI volumes read into canonical orientation and written back on their own grid.

Orientation: the training slices come from volumes in canonical orientation (array axes increasing
towards patient Left, Posterior, Superior). An input file in another orientation is permuted and
flipped to it (``nibabel.orientations``, exact: no interpolation), translated, and permuted back, and
the output NIfTI is written with the input's own header and affine, so it has exactly the input's
shape, spacing, origin and direction.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from medgan_common.atomic import atomic_write_with
from medgan_common.errors import GeometryError, InputReadError


_LPS = axcodes2ornt(("L", "P", "S"))
# Affines of one grid written by different tools differ by float32 rounding of the header fields.
GRID_TOLERANCE_MM = 1e-3


def read_nifti_header(path: str | os.PathLike, what: str = "volume") -> nib.spatialimages.SpatialImage:
    """Open a NIfTI file without reading its voxels (nibabel is lazy): for checks before any work.

    Raises:
        InputReadError: a missing file, not NIfTI, or not a 3D volume (a singleton 4th axis is accepted).
    """
    path = Path(path)
    if not path.is_file():
        raise InputReadError(path, f"{what} file does not exist")
    try:
        image = nib.load(path)
    except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError... on bad files
        raise InputReadError(path, f"not a readable NIfTI {what}: {exc}") from exc
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputReadError(path, f"{what} is not a NIfTI file (read as {type(image).__name__})")
    if len(image.shape) < 3 or any(n != 1 for n in image.shape[3:]):
        raise InputReadError(path, f"{what} must be a 3D volume, got shape {image.shape}")
    return image


def check_same_grid(
    image: nib.spatialimages.SpatialImage, path: str | os.PathLike, reference: nib.spatialimages.SpatialImage,
    reference_path: str | os.PathLike, what: str = "volume",
) -> None:
    """Raise unless two NIfTI files have the same voxel grid (shape, and affine to :data:`GRID_TOLERANCE_MM`).

    Raises:
        GeometryError: naming both files and what differs.
    """
    shape, reference_shape = tuple(image.shape[:3]), tuple(reference.shape[:3])
    if shape != reference_shape:
        raise GeometryError(path, f"{what} shape {shape} differs from {reference_shape} of {os.fspath(reference_path)}")
    if not np.allclose(image.affine, reference.affine, atol=GRID_TOLERANCE_MM):
        raise GeometryError(
            path,
            f"{what} affine {np.round(image.affine, 4).tolist()} differs from "
            f"{np.round(reference.affine, 4).tolist()} of {os.fspath(reference_path)}",
        )


def check_files_on_grid(
    reference: str | os.PathLike, reference_what: str, others: Sequence[tuple[str | os.PathLike, str]] = ()
) -> None:
    """Raise unless ``reference`` is a readable 3D NIfTI and every other file lies on its voxel grid.

    Reads headers only: the check a datalist command runs on every item before any work.

    Args:
        reference: the file whose grid the others must share (a prediction, a volume to translate).
        reference_what: what ``reference`` is, for messages.
        others: ``(path, what it is)`` of the files that must lie on the reference grid (a target, a mask).

    Raises:
        InputReadError: a missing or unreadable file, or one that is not a 3D volume.
        GeometryError: a file on another grid (both files named).
    """
    reference_header = read_nifti_header(reference, reference_what)
    for path, what in others:
        check_same_grid(read_nifti_header(path, what), path, reference_header, reference, what)


@dataclass(frozen=True)
class CanonicalVolume:
    """A NIfTI volume brought to canonical orientation, with what is needed to go back to its file grid.

    Attributes:
        path: the file.
        nifti: the nibabel image (header and affine of the file).
        array: float32 [z, y, x] array, axes increasing towards patient Superior, Posterior, Left.
        spacing: voxel size (x, y, z) of ``array`` in mm.
        to_canonical: nibabel orientation transform from the file's voxel axes to canonical.
    """

    path: Path
    nifti: nib.spatialimages.SpatialImage
    array: np.ndarray
    spacing: tuple[float, float, float]
    to_canonical: np.ndarray

    def to_file_order(self, canonical: np.ndarray) -> np.ndarray:
        """Permute/flip a canonical [z, y, x] array back to the file's voxel order (exact)."""
        canonical_ijk = np.asarray(canonical).transpose(2, 1, 0)
        return apply_orientation(canonical_ijk, ornt_transform(_LPS, io_orientation(self.nifti.affine)))


def read_nifti_voxels(path: str | os.PathLike, what: str = "volume") -> tuple[nib.spatialimages.SpatialImage, np.ndarray]:
    """A 3D NIfTI file's image and its voxels (float32, the file's [i, j, k] order), checked.

    Raises:
        InputReadError: missing, unreadable, truncated, not 3D, or NaN/infinite voxels.
    """
    nifti = read_nifti_header(path, what)
    try:
        data = nifti.get_fdata(dtype=np.float32).reshape(nifti.shape[:3])
    except Exception as exc:  # truncated gzip (EOFError), short file (OSError), bad zlib stream...
        raise InputReadError(path, f"cannot read the {what} voxels (truncated or corrupt file?): {exc}") from exc
    n_bad = int(np.count_nonzero(~np.isfinite(data)))
    if n_bad:
        raise InputReadError(path, f"{n_bad} voxels of the {what} are NaN or infinite")
    return nifti, data


def read_volume(path: str | os.PathLike, what: str = "volume") -> CanonicalVolume:
    """Read a NIfTI volume and permute/flip it to canonical orientation (no interpolation).

    An oblique grid is brought to the closest canonical axes; its slices are then slightly oblique,
    which the network tolerates better than the blur a resampling would add.

    Raises:
        InputReadError: missing, unreadable, truncated, not 3D, or NaN/infinite voxels.
    """
    nifti, data = read_nifti_voxels(path, what)
    to_canonical = ornt_transform(io_orientation(nifti.affine), _LPS)
    canonical_ijk = apply_orientation(data, to_canonical)
    voxel_sizes = np.linalg.norm(nifti.affine[:3, :3], axis=0)
    spacing = [0.0, 0.0, 0.0]
    for file_axis, (canonical_axis, _) in enumerate(to_canonical):
        spacing[int(canonical_axis)] = float(voxel_sizes[file_axis])
    array = np.ascontiguousarray(canonical_ijk.transpose(2, 1, 0), dtype=np.float32)
    return CanonicalVolume(Path(path), nifti, array, tuple(spacing), to_canonical)  # type: ignore[arg-type]


def write_volume_like(reference: CanonicalVolume, canonical: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a canonical [z, y, x] array as a float32 NIfTI on the reference file's grid, atomically.

    The reference's header (affine, qform/sform codes, units) is reused as it is, so the output has
    exactly the reference's shape, spacing, origin and direction.

    Raises:
        ValueError: an array whose shape is not the reference's canonical shape.
    """
    if np.shape(canonical) != reference.array.shape:
        raise ValueError(f"array shape {np.shape(canonical)} differs from the reference's {reference.array.shape}")
    header = reference.nifti.header.copy()
    header.set_data_dtype(np.float32)
    data = np.ascontiguousarray(reference.to_file_order(canonical), dtype=np.float32)
    image = type(reference.nifti)(data, reference.nifti.affine, header)
    path = Path(path)
    atomic_write_with(path, lambda tmp: nib.save(image, tmp))
    return path


