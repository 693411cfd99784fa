"""Carrying a binary mask through ANTs transforms, evaluated voxel by voxel only near its edge.

``carry_mask_array(mask, mask_grid, grid, transform_files)`` gives the voxels of ``grid`` where the
mask, carried through the transforms with linear interpolation, is at least one half: what
``antsApplyTransforms`` with linear interpolation and a 0.5 threshold gives, with the same
transform chain and ITK's interpolation rules (a point outside a buffer's half-voxel border takes
the default value, neighbours are clamped inside it). The cohort runner carries each CT's
artefact mask onto its registered grid this way. ANTs (like any ITK or SimpleITK resampler)
evaluates the whole transform chain at every output voxel: 1.5 s for a 256x256x150 grid on one
core. A binary mask is constant away from its edge, which no resampler exploits, hence this
module: the output grid is cut into blocks; interval arithmetic through the displacement field's
extremes around each block and the linear transforms bounds where the block's voxels land in the
mask; a block landing wholly on ones or wholly on zeros is filled at once, the others are halved
once and bounded again, and only the blocks still straddling the mask's edge are evaluated voxel
by voxel.

Chains handled here: what a registration writes, an optional displacement field (SyN's
``Warp``) on a grid with the output grid's axes, then linear transforms (``.mat``), none of them
inverted. Other chains (inverted transforms, a field after a linear transform) are left to ANTs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from preprocessing.morphology import bounding_box

BLOCK = 4  # output voxels per block side: 4^3 = 64 voxels per block


@dataclass(frozen=True)
class _Grid:
    """Index <-> physical point maps of an image (sizes in x, y, z order)."""

    size: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray

    @classmethod
    def of(cls, image: sitk.Image) -> "_Grid":
        return cls(np.asarray(image.GetSize()), np.asarray(image.GetOrigin(), float),
                   np.asarray(image.GetSpacing(), float), np.asarray(image.GetDirection(), float).reshape(3, 3))

    def physical(self, index: np.ndarray) -> np.ndarray:
        return self.origin + (index * self.spacing) @ self.direction.T

    def index_map(self) -> tuple[np.ndarray, np.ndarray]:
        """``(B, b)`` with continuous index = ``B @ point + b``."""
        scale = self.direction.T / self.spacing[:, None]
        return scale, -scale @ self.origin


@dataclass(frozen=True)
class _Chain:
    """A displacement field (or none) then one linear map, as physical points go through them."""

    field: np.ndarray | None  # (z, y, x, 3) displacements in physical coordinates
    field_grid: _Grid | None
    matrix: np.ndarray  # the linear transforms composed: point -> matrix @ point + offset
    offset: np.ndarray


def _linear(path: str) -> tuple[np.ndarray, np.ndarray] | None:
    transform = sitk.ReadTransform(path)
    if transform.GetDimension() != 3:
        return None
    try:
        affine = sitk.AffineTransform(transform.Downcast() if hasattr(transform, "Downcast") else transform)
    except (RuntimeError, TypeError):
        return None
    matrix = np.asarray(affine.GetMatrix(), float).reshape(3, 3)
    center = np.asarray(affine.GetCenter(), float)
    translation = np.asarray(affine.GetTranslation(), float)
    return matrix, translation + center - matrix @ center


def _load_chain(transform_files: Sequence[str], grid: _Grid) -> _Chain | None:
    """The chain as arrays, or ``None`` when it is not one this module handles."""
    field = field_grid = None
    matrix, offset = np.eye(3), np.zeros(3)
    for position, path in enumerate(transform_files):
        if path.lower().endswith((".nii", ".nii.gz")):
            image = sitk.ReadImage(path)
            if (position != 0 or image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 3):
                return None
            field_grid = _Grid.of(image)
            if not np.allclose(field_grid.direction, grid.direction, atol=1e-6):
                return None
            field = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
        elif path.lower().endswith(".mat"):
            linear = _linear(path)
            if linear is None:
                return None
            # Points go through the files in list order: the later map is applied to the result.
            matrix, offset = linear[0] @ matrix, linear[0] @ offset + linear[1]
        else:
            return None
    return _Chain(field, field_grid, matrix, offset)


def _interpolate(array: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Trilinear values of a ``(z, y, x[, c])`` array at continuous ``(x, y, z)`` indices ``(P, 3)``.

    ITK's rule: neighbours beyond the buffer are clamped to its last voxel (points are checked
    against the half-voxel border by the caller).
    """
    sizes = array.shape[:3][::-1]
    flat = array.reshape(sizes[0] * sizes[1] * sizes[2], -1)
    base = np.floor(index)
    weight = index - base
    lower = [np.clip(base[:, a], 0, sizes[a] - 1).astype(np.intp) for a in range(3)]
    upper = [np.clip(base[:, a] + 1, 0, sizes[a] - 1).astype(np.intp) for a in range(3)]
    rows = {(z, y): (lz * sizes[1] + ly) * sizes[0]
            for z, lz in ((0, lower[2]), (1, upper[2])) for y, ly in ((0, lower[1]), (1, upper[1]))}

    def values(index: np.ndarray) -> np.ndarray:
        picked = flat[index]
        return picked[:, 0].astype(np.float64) if flat.shape[1] == 1 else picked

    def lerp(first: np.ndarray, second: np.ndarray, axis: int) -> np.ndarray:
        w = weight[:, axis] if first.ndim == 1 else weight[:, axis, None]
        return first + (second - first) * w

    along_x = {key: lerp(values(row + lower[0]), values(row + upper[0]), 0) for key, row in rows.items()}
    along_y = [lerp(along_x[(z, 0)], along_x[(z, 1)], 1) for z in (0, 1)]
    return lerp(along_y[0], along_y[1], 2)


def _inside(index: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    return np.all((index >= -0.5) & (index < sizes - 0.5), axis=1)


def _evaluate(points_index: np.ndarray, grid: _Grid, chain: _Chain, mask: np.ndarray, mask_grid: _Grid) -> np.ndarray:
    """Exact carried mask at output voxel indices ``(P, 3)`` (x, y, z)."""
    points = grid.physical(points_index.astype(np.float64))
    if chain.field is not None:
        scale, shift = chain.field_grid.index_map()
        field_index = points @ scale.T + shift
        displacement = _interpolate(chain.field, field_index)
        displacement[~_inside(field_index, chain.field_grid.size)] = 0.0
        points = points + displacement
    points = points @ chain.matrix.T + chain.offset
    scale, shift = mask_grid.index_map()
    mask_index = points @ scale.T + shift
    fraction = _interpolate(mask, mask_index)
    fraction[~_inside(mask_index, mask_grid.size)] = 0.0
    # ANTs returns the interpolated fraction as float32, which the 0.5 threshold then sees.
    return fraction.astype(np.float32) >= np.float32(0.5)


def _block_ranges(size: int) -> tuple[np.ndarray, np.ndarray]:
    start = np.arange(0, size, BLOCK)
    return start, np.minimum(start + BLOCK - 1, size - 1)


def _window_extremes(field: np.ndarray, axis: int, low: np.ndarray, high: np.ndarray,
                     largest: bool) -> np.ndarray:
    """Max (or min) of ``field`` along ``axis`` over windows starting at ``low`` (one per block).

    Every window is widened to the longest one: a wider window still bounds the block, and one
    running filter then serves them all. Past the end the last node repeats, as the clamped
    interpolation reads it.
    """
    width = int(np.max(high - low)) + 1
    running = ndimage.maximum_filter1d if largest else ndimage.minimum_filter1d
    # scipy centres the window on i; an origin of -(width // 2) makes it start at i.
    filtered = running(field, width, axis=axis, mode="nearest", origin=-(width // 2))
    return np.take(filtered, low, axis=axis)


def _displacement_bounds(grid: _Grid, chain: _Chain, starts: list[np.ndarray], ends: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per block ``(bz, by, bx, 3)`` lower and upper bounds of the displacement of its voxels.

    The field has the grid's axes, so the field index along an axis depends on the grid index
    along the same axis only: the field nodes a block can reach are a box, found per axis, and
    their extremes are taken one axis at a time.
    """
    field, field_grid = chain.field, chain.field_grid
    low_field, high_field = field, field
    may_be_outside = []
    for axis in range(3):  # x, y, z; the field array is (z, y, x, 3)
        array_axis = 2 - axis
        offset = (field_grid.direction.T @ (grid.origin - field_grid.origin))[axis] / field_grid.spacing[axis]
        step = grid.spacing[axis] / field_grid.spacing[axis]
        first, last = offset + step * starts[axis], offset + step * ends[axis]
        n = field_grid.size[axis]
        may_be_outside.append((first < -0.5) | (last >= n - 0.5))
        low = np.clip(np.floor(first), 0, n - 1).astype(int)
        high = np.clip(np.floor(last) + 1, 0, n - 1).astype(int)
        high = np.maximum(high, low)
        low_field = _window_extremes(low_field, array_axis, low, high, largest=False)
        high_field = _window_extremes(high_field, array_axis, low, high, largest=True)
    outside = (may_be_outside[2][:, None, None] | may_be_outside[1][None, :, None] | may_be_outside[0][None, None, :])
    # A voxel whose point falls outside the field is not displaced: zero joins the bounds.
    low_field = np.where(outside[..., None], np.minimum(low_field, 0.0), low_field)
    high_field = np.where(outside[..., None], np.maximum(high_field, 0.0), high_field)
    return low_field, high_field


def _tile_table(mask: np.ndarray, box: tuple[slice, ...], value: bool, halvings: Sequence[int]) -> np.ndarray:
    """Summed-area table over tiles of ``mask[box]`` marking the tiles uniformly ``value``.

    A tile spans ``2 ** halvings[axis]`` voxels along each array axis (z, y, x).
    """
    tiles = mask[box] if value else ~mask[box]
    for axis in range(3):
        # Halving along one axis at a time: a few passes over shrinking arrays, far cheaper than
        # one reduction over a 6-D tiled view.
        for _ in range(halvings[axis]):
            if tiles.shape[axis] % 2:  # the padding beyond the box is not uniformly ``value``
                pad = [(0, 0)] * 3
                pad[axis] = (0, 1)
                tiles = np.pad(tiles, pad, constant_values=False)
            first = np.take(tiles, np.arange(0, tiles.shape[axis], 2), axis=axis)
            second = np.take(tiles, np.arange(1, tiles.shape[axis], 2), axis=axis)
            tiles = first & second
    table = np.zeros([s + 1 for s in tiles.shape], dtype=np.int32)
    table[1:, 1:, 1:] = tiles.cumsum(0, dtype=np.int32).cumsum(1, dtype=np.int32).cumsum(2, dtype=np.int32)
    return table


def _all_tiles(table: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Whether every tile in the inclusive ranges ``[low, high]`` (``(N, 3)``, z y x) is marked."""
    total = np.zeros(len(low), dtype=np.int64)
    for corner in range(8):
        pick = [(corner >> axis) & 1 for axis in range(3)]
        index = tuple(np.where(pick[a], high[:, a] + 1, low[:, a]) for a in range(3))
        total += (-1) ** (3 - sum(pick)) * table[index]
    return total == np.prod(high - low + 1, axis=1)


class _MaskTiles:
    """Answers "is the mask all zeros / all ones over this index box" for many boxes at once."""

    def __init__(self, mask: np.ndarray, mask_grid: _Grid, grid: _Grid):
        box = bounding_box(mask, pad=0)
        self.sizes = mask_grid.size
        self.low = np.array([box[2].start, box[1].start, box[0].start])  # x, y, z
        self.high = np.array([box[2].stop, box[1].stop, box[0].stop]) - 1
        # Tiles about one output voxel wide: finer ones cost more to tabulate than they save in
        # voxels evaluated one by one, coarser ones widen the band evaluated (measured).
        ratio = np.maximum(grid.spacing @ np.abs(grid.direction.T @ mask_grid.direction) / mask_grid.spacing, 1.0)
        halvings = np.floor(np.log2(ratio)).astype(int)  # x, y, z
        self.tile = 2 ** halvings
        self.zeros = _tile_table(mask, box, False, halvings[::-1])
        self.ones = _tile_table(mask, box, True, halvings[::-1])

    def classify(self, low_k: np.ndarray, high_k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(zeros, ones)`` for boxes of continuous mask indices ``(N, 3)`` (x, y, z)."""
        sizes = self.sizes
        wholly_inside = np.all((low_k >= -0.5) & (high_k < sizes - 0.5), axis=1)
        wholly_outside = np.any((high_k < -0.5) | (low_k >= sizes - 0.5), axis=1)
        # Mask voxels the interpolation can read, clamped into the buffer as ITK does.
        first = np.clip(np.floor(low_k), 0, sizes - 1).astype(np.int64)
        last = np.clip(np.floor(high_k) + 1, 0, sizes - 1).astype(np.int64)
        overlaps = np.all((last >= self.low) & (first <= self.high), axis=1)
        within = np.all((first >= self.low) & (last <= self.high), axis=1)
        tile_first = ((np.clip(first, self.low, self.high) - self.low) // self.tile)[:, ::-1]
        tile_last = ((np.clip(last, self.low, self.high) - self.low) // self.tile)[:, ::-1]
        zeros = ~overlaps | wholly_outside
        check = ~zeros
        zeros[check] = _all_tiles(self.zeros, tile_first[check], tile_last[check])
        # Points outside the buffer read the default (zero): a block of ones must lie inside it.
        ones = wholly_inside & within & ~zeros
        ones[ones] = _all_tiles(self.ones, tile_first[ones], tile_last[ones])
        return zeros, ones


def _landing_boxes(grid: _Grid, chain: _Chain, mask_grid: _Grid, first: np.ndarray, last: np.ndarray,
                   low_shift: np.ndarray | None, high_shift: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of continuous mask indices holding every point of the index blocks ``[first, last]`` (x, y, z)."""
    centre = grid.physical(0.5 * (first + last))
    half = (0.5 * (last - first) * grid.spacing) @ np.abs(grid.direction).T
    low, high = centre - half, centre + half
    if low_shift is not None:
        low, high = low + low_shift, high + high_shift
    scale, shift = mask_grid.index_map()
    to_index = scale @ chain.matrix
    centre_k = 0.5 * (low + high) @ to_index.T + (scale @ chain.offset + shift)
    half_k = 0.5 * (high - low) @ np.abs(to_index).T
    return centre_k - half_k, centre_k + half_k


def carry_mask_array(mask: np.ndarray, mask_grid_image: sitk.Image, grid_image: sitk.Image,
                     transform_files: Sequence[str | os.PathLike]) -> np.ndarray | None:
    """The carried mask on ``grid_image`` as a ``(z, y, x)`` boolean array, or ``None`` for a chain not handled here.

    Args:
        mask: boolean ``(z, y, x)`` array on ``mask_grid_image``'s grid.
        mask_grid_image: image giving the mask's grid.
        grid_image: image giving the output grid.
        transform_files: ANTs forward transform files (output points to mask points).

    Returns:
        The boolean array, or ``None`` when the chain is not an optional displacement field with
        the output grid's axes followed by linear transforms.
    """
    grid, mask_grid = _Grid.of(grid_image), _Grid.of(mask_grid_image)
    chain = _load_chain([os.fspath(p) for p in transform_files], grid)
    if chain is None:
        return None
    mask = np.ascontiguousarray(mask, dtype=bool)
    out_shape = tuple(int(s) for s in grid.size[::-1])
    out = np.zeros(out_shape, dtype=bool)
    if not mask.any():
        return out
    tiles = _MaskTiles(mask, mask_grid, grid)
    starts, ends = zip(*(_block_ranges(int(n)) for n in grid.size))  # x, y, z
    counts = [len(s) for s in starts]
    # Every block's first and last voxel (x, y, z), blocks in (z, y, x) order.
    first, last = (np.stack([m.ravel() for m in np.meshgrid(*ranges[::-1], indexing="ij")][::-1], -1)
                   for ranges in (starts, ends))
    low_shift = high_shift = None
    if chain.field is not None:
        low_shift, high_shift = (b.reshape(-1, 3) for b in _displacement_bounds(grid, chain, list(starts), list(ends)))
    zeros, ones = tiles.classify(*_landing_boxes(grid, chain, mask_grid, first, last, low_shift, high_shift))
    filled = ones.reshape(counts[2], counts[1], counts[0])
    out[...] = filled.repeat(BLOCK, 0).repeat(BLOCK, 1).repeat(BLOCK, 2)[: out_shape[0], : out_shape[1], : out_shape[2]]
    # Blocks on the mask's edge: halve them once (smaller boxes, the parent's displacement
    # bounds) before evaluating voxel by voxel what is still undecided.
    mixed = ~(zeros | ones)
    half = BLOCK // 2
    first = (first[mixed][:, None, :] + _cube(2)[None] * half).reshape(-1, 3)
    keep = np.all(first < grid.size, axis=1)
    first = first[keep]
    last = np.minimum(first + half - 1, grid.size - 1)
    if low_shift is not None:
        low_shift = np.repeat(low_shift[mixed], 8, axis=0)[keep]
        high_shift = np.repeat(high_shift[mixed], 8, axis=0)[keep]
    zeros, ones = tiles.classify(*_landing_boxes(grid, chain, mask_grid, first, last, low_shift, high_shift))
    voxels = _block_voxels(first[ones], last[ones], half)
    out[voxels[:, 2], voxels[:, 1], voxels[:, 0]] = True
    mixed = ~(zeros | ones)
    if mixed.any():
        voxels = _block_voxels(first[mixed], last[mixed], half)
        out[voxels[:, 2], voxels[:, 1], voxels[:, 0]] = _evaluate(voxels, grid, chain, mask, mask_grid)
    return out


def _cube(side: int) -> np.ndarray:
    """The ``side ** 3`` index offsets of a cube, ``(side ** 3, 3)``."""
    return np.stack(np.meshgrid(*(np.arange(side),) * 3, indexing="ij"), -1).reshape(-1, 3)


def _block_voxels(first: np.ndarray, last: np.ndarray, side: int) -> np.ndarray:
    """Voxel indices ``(M, 3)`` of the blocks ``[first, last]`` of at most ``side`` voxels a side (cut at the grid's end)."""
    voxels = first[:, None, :] + _cube(side)[None]
    return voxels[np.all(voxels <= last[:, None, :], axis=2)]
