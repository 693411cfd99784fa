"""Background outside the head: a translation's output set to the target's air beyond the input's head.

A 2D generator paints whatever it learnt into the air around a head where its input gives it little to
go on (the lowest and highest slices of a synthetic CT show a texture there that no scanner would
record). What lies outside the head of the input is air in every modality, so the output is set to the
target modality's air value there: -1024 HU for a synthetic CT, the normalisation's outside value for a
synthetic MR. The head mask is widened by a margin first, so that a tight mask of the input (Otsu's
threshold on an MR misses the faint edge of the scalp) cannot cut into the translated head.

The distance is measured in millimetres with SciPy's exact Euclidean distance transform, so that the
margin is the same on anisotropic voxels.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from scipy import ndimage

__all__ = ["FillOutsideHead", "FillOutsideHeadd", "fill_outside_head", "widen_mask"]


def widen_mask(mask: np.ndarray, spacing: Sequence[float], margin_mm: float) -> np.ndarray:
    """The voxels within ``margin_mm`` of ``mask``.

    Args:
        mask: boolean [z, y, x] mask (any dimension matching ``spacing``).
        spacing: voxel size along each array axis of ``mask``, in mm (for a canonical [z, y, x] array,
            the reverse of the image's (x, y, z) spacing).
        margin_mm: how far beyond the mask to reach; 0 returns the mask.

    Returns:
        Boolean array of the mask's shape.

    Raises:
        ValueError: a negative margin, a spacing of another dimension than the mask or not positive.
    """
    mask = np.asarray(mask, dtype=bool)
    spacing = tuple(float(s) for s in spacing)
    if margin_mm < 0:
        raise ValueError(f"margin_mm must be >= 0, got {margin_mm}")
    if len(spacing) != mask.ndim or min(spacing) <= 0:
        raise ValueError(f"spacing {spacing} does not fit a {mask.ndim}D mask (one positive size per axis)")
    if margin_mm == 0 or not mask.any():
        return mask.copy()
    return ndimage.distance_transform_edt(~mask, sampling=spacing) <= margin_mm


def fill_outside_head(
    image: np.ndarray, head_mask: np.ndarray, background: float, spacing: Sequence[float] | None = None,
    margin_mm: float = 0.0,
) -> np.ndarray:
    """``image`` with every voxel farther than ``margin_mm`` from ``head_mask`` set to ``background``.

    Args:
        image: the translation, [z, y, x] (or any array of the mask's shape).
        head_mask: boolean head mask of the input, same shape.
        background: the target modality's air value, in the image's units.
        spacing: voxel size along each array axis in mm; required with a margin.
        margin_mm: widening of the mask before filling.

    Returns:
        A new float32 array; ``image`` is not modified.

    Raises:
        ValueError: a mask of another shape, an empty mask (no head: filling would erase the whole
            translation), a margin without spacing.
    """
    image = np.asarray(image)
    head_mask = np.asarray(head_mask, dtype=bool)
    if head_mask.shape != image.shape:
        raise ValueError(f"head mask of shape {head_mask.shape} for an image of shape {image.shape}")
    if not head_mask.any():
        raise ValueError("the head mask is empty: there is no head to keep")
    if margin_mm > 0 and spacing is None:
        raise ValueError("a margin in mm needs the voxel spacing")
    keep = widen_mask(head_mask, spacing, margin_mm) if margin_mm > 0 else head_mask
    return np.where(keep, image, np.float32(background)).astype(np.float32)


class FillOutsideHead(Transform):
    """Array transform of :func:`fill_outside_head` with a fixed background value and margin.

    Args:
        background: the target modality's air value (e.g. ``-1024.0`` for a synthetic CT in HU).
        margin_mm: widening of the head mask before filling.
    """

    def __init__(self, background: float, margin_mm: float = 0.0) -> None:
        if margin_mm < 0:
            raise ValueError(f"margin_mm must be >= 0, got {margin_mm}")
        self.background = float(background)
        self.margin_mm = float(margin_mm)

    def __call__(self, image: np.ndarray, head_mask: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
        """Args: the translation, the input's head mask and the voxel size per array axis (mm)."""
        return fill_outside_head(image, head_mask, self.background, spacing, self.margin_mm)


class FillOutsideHeadd(MapTransform):
    """Dictionary twin of :class:`FillOutsideHead`: ``data[keys]`` filled outside ``data[mask_key]``.

    Args:
        keys: the translations to fill.
        mask_key: the input's head mask in the same dictionary.
        background: the target modality's air value.
        margin_mm: widening of the head mask before filling.
        spacing_key: key of the voxel size per array axis (mm); required with a margin.
        allow_missing_keys: skip absent ``keys``.
    """

    def __init__(
        self, keys: KeysCollection, mask_key: str, background: float, margin_mm: float = 0.0,
        spacing_key: str | None = None, allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key, self.spacing_key = mask_key, spacing_key
        self.filler = FillOutsideHead(background, margin_mm)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        spacing = d[self.spacing_key] if self.spacing_key is not None else None
        for key in self.key_iterator(d):
            d[key] = self.filler(d[key], d[self.mask_key], spacing)
        return d
