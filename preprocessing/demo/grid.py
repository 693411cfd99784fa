"""Voxel grids in patient (LPS) space and resampling between them.

The demo generator places one subject's anatomy in a common "truth" grid and each modality in its
own scanner grid with its own orientation, spacing and field of view. Arrays are indexed
``[i, j, k]`` along the grid's three axes (the NIfTI / DICOM column-row-slice order); world
coordinates are ITK's LPS millimetres.

Written by hand rather than through SimpleITK's resampler because the demo maps points through a
non-rigid pose (see :mod:`preprocessing.demo.pose`) that has to be evaluated on the fly, and the same
point map is reused for images, labels and landmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: LPS -> RAS: NIfTI affines are RAS, ITK and DICOM physical space is LPS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Grid:
    """A regular voxel grid in LPS space.

    Args:
        shape: number of voxels along the three array axes.
        spacing: voxel size in mm along each axis.
        direction: 3x3 matrix whose columns are the unit directions of the array axes in LPS.
        origin: LPS position (mm) of the centre of voxel (0, 0, 0).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    direction: np.ndarray
    origin: np.ndarray

    @classmethod
    def centred(cls, shape, spacing, direction=None, centre=(0.0, 0.0, 0.0)) -> "Grid":
        """A grid whose centre lies at ``centre`` (LPS mm).

        Args:
            shape: voxels per axis.
            spacing: mm per voxel along each axis.
            direction: 3x3 axis directions (columns) in LPS; identity when ``None``.
            centre: LPS position of the grid centre.

        Returns:
            The grid.
        """
        direction = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
        half_extent = (np.asarray(shape, dtype=float) - 1) / 2 * np.asarray(spacing, dtype=float)
        origin = np.asarray(centre, dtype=float) - direction @ half_extent
        return cls(tuple(int(s) for s in shape), tuple(float(s) for s in spacing), direction, origin)

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel-index -> LPS mm matrix."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction * np.asarray(self.spacing)[None, :]
        matrix[:3, 3] = self.origin
        return matrix

    @property
    def affine_ras(self) -> np.ndarray:
        """4x4 voxel-index -> RAS mm matrix, as stored in a NIfTI header."""
        return LPS_TO_RAS @ self.affine

    def index_to_world(self, index: np.ndarray) -> np.ndarray:
        """Map voxel indices ``(..., 3)`` to LPS mm ``(..., 3)``."""
        return index @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_index(self, world: np.ndarray) -> np.ndarray:
        """Map LPS mm ``(..., 3)`` to (fractional) voxel indices ``(..., 3)``."""
        inverse = np.linalg.inv(self.affine)
        return world @ inverse[:3, :3].T + inverse[:3, 3]

    def world_points(self, k_slice: slice | None = None) -> np.ndarray:
        """LPS coordinates of every voxel centre (optionally of a range of the third axis) as ``(N, 3)``."""
        ks = np.arange(self.shape[2])[k_slice if k_slice is not None else slice(None)]
        ii, jj, kk = np.meshgrid(
            np.arange(self.shape[0], dtype=np.float32),
            np.arange(self.shape[1], dtype=np.float32),
            ks.astype(np.float32),
            indexing="ij",
        )
        index = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1)
        return self.index_to_world(index).astype(np.float32)


def upsample_linear(coarse: np.ndarray, positions: list[np.ndarray]) -> np.ndarray:
    """Separable linear interpolation of a coarse array at fractional indices given per axis.

    For smooth fields sampled on a regular lattice this is what ``map_coordinates(order=1)`` would
    give, at a fraction of the cost: two gathers per axis instead of eight per output voxel.

    Args:
        coarse: array with one axis per entry of ``positions`` (leading extra axes are kept).
        positions: for each of the last ``len(positions)`` axes, fractional indices into ``coarse``.

    Returns:
        Array of shape ``coarse.shape[:-n] + tuple(len(p) for p in positions)``.
    """
    out = coarse
    n_lead = coarse.ndim - len(positions)
    for offset, where in enumerate(positions):
        axis = n_lead + offset
        where = np.clip(np.asarray(where, dtype=np.float32), 0, coarse.shape[axis] - 1)
        lower = np.minimum(np.floor(where).astype(int), coarse.shape[axis] - 2) if coarse.shape[axis] > 1 else np.zeros(len(where), int)
        upper = np.minimum(lower + 1, coarse.shape[axis] - 1)
        weight_shape = [1] * out.ndim
        weight_shape[axis] = -1
        weight = (where - lower).astype(np.float32).reshape(weight_shape)
        out = np.take(out, lower, axis=axis) * (1 - weight) + np.take(out, upper, axis=axis) * weight
    return out.astype(np.float32)


def sample_world(volume: np.ndarray, grid: Grid, world: np.ndarray, order: int = 1, cval: float = 0.0) -> np.ndarray:
    """Sample ``volume`` (laid out on ``grid``) at LPS points ``(N, 3)``.

    Args:
        volume: array on ``grid``.
        grid: the grid of ``volume``.
        world: LPS mm points, shape ``(N, 3)``.
        order: spline order (0 nearest for labels, 1 linear for images).
        cval: value outside the grid.

    Returns:
        ``(N,)`` samples.
    """
    index = grid.world_to_index(world).T
    return ndimage.map_coordinates(volume, index, order=order, mode="constant", cval=cval, prefilter=False)


def resample_to_grid(
    volume: np.ndarray, source: Grid, target: Grid, order: int = 1, cval: float = 0.0, chunk_slices: int = 16
) -> np.ndarray:
    """Resample ``volume`` from ``source`` onto ``target`` through the identity in world space.

    Args:
        volume: array on ``source``.
        source: grid of ``volume``.
        target: grid to resample onto.
        order: spline order (0 for labels).
        cval: value outside ``source``.
        chunk_slices: slices of ``target`` processed at once (bounds memory).

    Returns:
        Array of ``target.shape`` with ``volume``'s dtype for ``order == 0`` and float32 otherwise.
    """
    out = np.empty(target.shape, dtype=volume.dtype if order == 0 else np.float32)
    for start in range(0, target.shape[2], chunk_slices):
        ks = slice(start, min(start + chunk_slices, target.shape[2]))
        values = sample_world(volume, source, target.world_points(ks), order=order, cval=cval)
        out[:, :, ks] = values.reshape(target.shape[0], target.shape[1], -1)
    return out


def grid_from_affine_ras(shape, affine_ras: np.ndarray) -> Grid:
    """The grid of a NIfTI image from its shape and RAS affine."""
    affine = np.linalg.inv(LPS_TO_RAS) @ np.asarray(affine_ras, dtype=float)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    return Grid(tuple(int(s) for s in shape[:3]), tuple(float(s) for s in spacing), affine[:3, :3] / spacing,
                affine[:3, 3].copy())


def grid_from_sitk(image) -> tuple[Grid, np.ndarray]:
    """A SimpleITK image as ``(grid, array indexed [i, j, k])``."""
    import SimpleITK as sitk

    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    grid = Grid(tuple(image.GetSize()), tuple(image.GetSpacing()), direction, np.asarray(image.GetOrigin(), dtype=float))
    return grid, np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))
