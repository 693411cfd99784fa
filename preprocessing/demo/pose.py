"""Where the head lies in each scanner: a similarity transform plus a mild smooth warp.

A :class:`Pose` maps scanner (raw) LPS points to the common truth space:
``y = matrix @ x + offset + warp(x)``. Rendering a raw image samples the truth image at ``y``
for every raw voxel; a truth landmark is carried into raw space by inverting that map.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from preprocessing.demo.grid import Grid, upsample_linear

#: The warp lattice spans this cube (LPS mm) around the isocentre, with nodes every LATTICE_STEP mm.
LATTICE_HALF_WIDTH = 150.0
LATTICE_STEP = 50.0
# Cubic interpolation of the coarse lattice is done once onto this finer lattice; per-voxel lookups
# are then linear, 8 taps instead of 64.
LATTICE_REFINE = 10


@dataclass
class Pose:
    """Raw-to-truth point map.

    Args:
        matrix: 3x3 linear part (rotation times scale).
        offset: translation (mm).
        warp: displacement (mm) at the lattice nodes, shape ``(3, n, n, n)``.
    """

    matrix: np.ndarray
    offset: np.ndarray
    warp: np.ndarray

    @classmethod
    def identity(cls) -> "Pose":
        n = int(2 * LATTICE_HALF_WIDTH / LATTICE_STEP) + 1
        return cls(np.eye(3), np.zeros(3), np.zeros((3, n, n, n)))

    @classmethod
    def random(cls, rng: np.random.Generator, max_rotation_deg: float = 8.0, max_translation_mm: float = 10.0,
               scale_range: tuple[float, float] = (0.96, 1.04), warp_mm: float = 1.5) -> "Pose":
        """Draw a pose: rotation about each axis, translation, isotropic scale and a smooth warp.

        Args:
            rng: random generator.
            max_rotation_deg: bound of each Euler angle.
            max_translation_mm: bound of each translation component.
            scale_range: range of the isotropic scale factor.
            warp_mm: standard deviation of the lattice displacements.

        Returns:
            The pose.
        """
        angles = rng.uniform(-max_rotation_deg, max_rotation_deg, 3)
        rotation = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
        scale = rng.uniform(*scale_range)
        offset = rng.uniform(-max_translation_mm, max_translation_mm, 3)
        n = int(2 * LATTICE_HALF_WIDTH / LATTICE_STEP) + 1
        warp = rng.normal(0.0, warp_mm, (3, n, n, n))
        # No displacement on the lattice border, so that the field fades out far from the head.
        warp[:, [0, -1], :, :] = 0
        warp[:, :, [0, -1], :] = 0
        warp[:, :, :, [0, -1]] = 0
        return cls(rotation * scale, offset, warp)

    @cached_property
    def _fine_warp(self) -> np.ndarray:
        return np.stack([ndimage.zoom(c, LATTICE_REFINE, order=3, mode="nearest", grid_mode=False)
                         for c in self.warp]).astype(np.float32)

    def displacement(self, points: np.ndarray) -> np.ndarray:
        """Warp displacement (mm) at raw LPS points ``(N, 3)``."""
        fine = self._fine_warp
        scale = (fine.shape[1] - 1) / (2 * LATTICE_HALF_WIDTH)
        index = ((points + LATTICE_HALF_WIDTH) * scale).T
        return np.stack([ndimage.map_coordinates(c, index, order=1, mode="nearest", prefilter=False)
                         for c in fine], axis=1)

    def raw_to_truth(self, points: np.ndarray) -> np.ndarray:
        """Map raw LPS points ``(N, 3)`` to truth LPS points."""
        points = np.asarray(points, dtype=np.float64)
        return points @ self.matrix.T + self.offset + self.displacement(points)

    def truth_to_raw(self, points: np.ndarray, iterations: int = 30) -> np.ndarray:
        """Invert :meth:`raw_to_truth` by fixed-point iteration (the warp is small and smooth)."""
        points = np.atleast_2d(np.asarray(points, dtype=np.float64))
        inverse = np.linalg.inv(self.matrix)
        raw = (points - self.offset) @ inverse.T
        for _ in range(iterations):
            raw = (points - self.offset - self.displacement(raw)) @ inverse.T
        return raw

    def to_dict(self) -> dict:
        """JSON-ready description (also documents the ground-truth misalignment)."""
        return {
            "convention": "truth_lps = matrix @ raw_lps + offset + warp(raw_lps)",
            "matrix": np.round(self.matrix, 10).tolist(),
            "offset": np.round(self.offset, 10).tolist(),
            "warp_lattice": {"half_width_mm": LATTICE_HALF_WIDTH, "step_mm": LATTICE_STEP,
                             "displacement_mm": np.round(self.warp, 10).tolist()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Pose":
        return cls(np.asarray(data["matrix"]), np.asarray(data["offset"]),
                   np.asarray(data["warp_lattice"]["displacement_mm"]))


def raw_to_truth_index(pose: Pose, raw_grid: Grid, truth_grid: Grid, ks: slice, displacement: np.ndarray,
                       lattice_step: int) -> list[np.ndarray]:
    """Truth-grid (fractional) indices of the raw voxels of slices ``ks``.

    The affine part is composed into one index-to-index matrix and evaluated by broadcasting; the
    warp, smooth over tens of millimetres, is interpolated from its values on a lattice of raw
    voxels every ``lattice_step`` voxels (``displacement``, already in truth-index units).
    """
    raw_affine = raw_grid.affine
    truth_inverse = np.linalg.inv(truth_grid.affine)
    linear = truth_inverse[:3, :3] @ pose.matrix @ raw_affine[:3, :3]
    shift = truth_inverse[:3, :3] @ (pose.matrix @ raw_affine[:3, 3] + pose.offset) + truth_inverse[:3, 3]
    i = np.arange(raw_grid.shape[0], dtype=np.float32)[:, None, None]
    j = np.arange(raw_grid.shape[1], dtype=np.float32)[None, :, None]
    k = np.arange(raw_grid.shape[2], dtype=np.float32)[ks][None, None, :]
    warp = upsample_linear(displacement, [np.arange(raw_grid.shape[0]) / lattice_step,
                                          np.arange(raw_grid.shape[1]) / lattice_step,
                                          np.arange(raw_grid.shape[2])[ks] / lattice_step])
    return [linear[r, 0] * i + linear[r, 1] * j + linear[r, 2] * k + np.float32(shift[r]) + warp[r] for r in range(3)]


def render_in_raw(truth_volume: np.ndarray, truth_grid: Grid, pose: Pose, raw_grid: Grid, order: int = 1,
                  cval: float = 0.0, chunk_slices: int = 16, lattice_step: int = 4) -> np.ndarray:
    """Resample a truth-space volume into a scanner grid through ``pose``.

    Args:
        truth_volume: array on ``truth_grid``.
        truth_grid: the truth grid.
        pose: raw-to-truth map.
        raw_grid: the scanner grid.
        order: 0 for labels, 1 for images.
        cval: value outside the truth grid (air).
        chunk_slices: raw slices processed at once (bounds memory for 512² CT).
        lattice_step: raw voxels between the points where the warp is evaluated exactly.

    Returns:
        Array of ``raw_grid.shape`` (float32, or the input dtype for ``order == 0``).
    """
    lattice = [np.arange(0, s + lattice_step, lattice_step, dtype=float) for s in raw_grid.shape]
    lattice_index = np.stack(np.meshgrid(*lattice, indexing="ij"), axis=-1).reshape(-1, 3)
    displacement_mm = pose.displacement(raw_grid.index_to_world(lattice_index))
    displacement = (displacement_mm @ np.linalg.inv(truth_grid.affine)[:3, :3].T).T.reshape(
        (3,) + tuple(len(a) for a in lattice)).astype(np.float32)
    out = np.empty(raw_grid.shape, dtype=truth_volume.dtype if order == 0 else np.float32)
    for start in range(0, raw_grid.shape[2], chunk_slices):
        ks = slice(start, min(start + chunk_slices, raw_grid.shape[2]))
        index = raw_to_truth_index(pose, raw_grid, truth_grid, ks, displacement, lattice_step)
        out[:, :, ks] = ndimage.map_coordinates(truth_volume, index, order=order, mode="constant", cval=cval,
                                                prefilter=False)
    return out
