"""Binary-mask building blocks shared by the CT artefact mask and the head masks.

Connected components come from SimpleITK (multi-threaded, about twice as fast as scipy's on 10^7
voxels). Hole filling is written here as one labelling of the background instead of
``scipy.ndimage.binary_fill_holes`` or ``sitk.BinaryFillhole``, which propagate by reconstruction
and take three to five times longer on 10^7 voxels; the result is the same (face-connected
background that does not reach the array's border is filled).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage


class _ImageView(np.ndarray):
    """A read-only array over a SimpleITK image's buffer that keeps the image alive."""


def labels(mask: np.ndarray, fully_connected: bool) -> np.ndarray:
    """Connected-component labels of ``mask`` (0 = background), face or full connectivity.

    The labels are returned as a read-only view of SimpleITK's output: copying a 10^7-voxel
    uint32 label map takes longer than labelling it.
    """
    image = sitk.GetImageFromArray(np.ascontiguousarray(mask).view(np.uint8))
    label_image = sitk.ConnectedComponent(image, fully_connected)
    view = sitk.GetArrayViewFromImage(label_image).view(_ImageView)
    view.image = label_image
    return view


def _neighbour_slices(ndim: int, axis: int) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Index tuples of the array without its last / first plane across ``axis``: face neighbours pair up."""
    lower = [slice(None)] * ndim
    upper = [slice(None)] * ndim
    lower[axis], upper[axis] = slice(None, -1), slice(1, None)
    return tuple(lower), tuple(upper)


def _shifted(mask: np.ndarray, fully_connected: bool, erode: bool) -> np.ndarray:
    """One erosion (or dilation) of ``mask`` by the 6-connected cross or the 3x3x3 box.

    Shifted slices, not ``scipy.ndimage.binary_erosion``: several times faster on 10^7 voxels.
    Beyond the array there is neither background nor foreground: the border neither erodes nor
    dilates, as with a distance map computed inside the array.
    """
    combine = np.logical_and if erode else np.logical_or
    out = mask.copy()
    source = mask
    for axis in range(mask.ndim):
        lower, upper = _neighbour_slices(mask.ndim, axis)
        combine(out[lower], source[upper], out=out[lower])
        combine(out[upper], source[lower], out=out[upper])
        if fully_connected and axis < mask.ndim - 1:
            # The box is separable: shift the running result along the next axis.
            source = out.copy()
    return out


def erode(mask: np.ndarray, iterations: int = 1, fully_connected: bool = False) -> np.ndarray:
    """``iterations`` erosions by the cross (or the box when ``fully_connected``).

    The voxels kept are those whose city-block (chessboard) distance to the background, within
    the array, exceeds ``iterations``: ``distance_transform_cdt(mask) > iterations``.
    """
    out = np.asarray(mask, dtype=bool)
    for _ in range(iterations):
        out = _shifted(out, fully_connected, erode=True)
    return out


def dilate(mask: np.ndarray, iterations: int = 1, fully_connected: bool = False) -> np.ndarray:
    """``iterations`` dilations by the cross (or the box): ``distance_transform_cdt(~mask) <= iterations``."""
    out = np.asarray(mask, dtype=bool)
    for _ in range(iterations):
        out = _shifted(out, fully_connected, erode=False)
    return out


def touching(mask: np.ndarray) -> np.ndarray:
    """Voxels with at least one face neighbour in ``mask`` (a 6-connected dilation minus the centre).

    Shifted slices rather than ``binary_dilation``: several times faster, and the array's border
    counts as outside ``mask``.
    """
    out = np.zeros_like(mask)
    for axis in range(mask.ndim):
        lower, upper = _neighbour_slices(mask.ndim, axis)
        out[lower] |= mask[upper]
        out[upper] |= mask[lower]
    return out


def reaching_edge(label_map: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Voxels whose (non-zero) label is present on a face of the array across one of ``axes``."""
    faces = np.unique(np.concatenate([np.take(label_map, [0, -1], axis=axis).ravel() for axis in axes]))
    faces = faces[faces != 0]
    if len(faces) <= 4:  # the usual case (the air around a head): a few comparisons
        out = np.zeros(label_map.shape, dtype=bool)
        for label in faces:
            out |= label_map == label
        return out
    # A lookup table indexed by label: one pass over the volume, faster than np.isin.
    reaches = np.zeros(int(label_map.max()) + 1, dtype=bool)
    reaches[faces] = True
    return reaches[label_map]


def fill_holes(mask: np.ndarray, slice_axis: int | None = None) -> np.ndarray:
    """Fill the background regions of ``mask`` that do not reach the array's border.

    Args:
        mask: boolean 2D or 3D mask.
        slice_axis: ``None`` fills in the full dimension (enclosed cavities); an axis fills each
            slice across it on its own (also closes cavities open at the ends of that axis).

    Returns:
        The filled boolean mask.
    """
    mask = np.asarray(mask, dtype=bool)
    if slice_axis is None:
        background = labels(~mask, fully_connected=False)
        edge_axes: tuple[int, ...] = tuple(range(mask.ndim))
    else:
        # No neighbours across slices: every slice is labelled on its own, in one call.
        structure = np.zeros((3,) * mask.ndim, bool)
        index = [slice(None)] * mask.ndim
        index[slice_axis] = 1
        structure[tuple(index)] = ndimage.generate_binary_structure(mask.ndim - 1, 1)
        background, _ = ndimage.label(~mask, structure)
        edge_axes = tuple(axis for axis in range(mask.ndim) if axis != slice_axis)
    return mask | ((background > 0) & ~reaching_edge(background, edge_axes))


def bounding_box(mask: np.ndarray, pad: int) -> tuple[slice, ...]:
    """Slices of the smallest box holding every True voxel of a non-empty ``mask``, grown by ``pad``."""
    box = []
    for axis in range(mask.ndim):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(int(present[0]) - pad, 0), min(int(present[-1]) + pad + 1, mask.shape[axis])))
    return tuple(box)
