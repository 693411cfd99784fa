"""Head masks and intensity normalisation for MR (and a body mask for CT).

MR intensities have no physical unit: the same tissue differs between scanners, sessions and
positions in the field of view (bias field). Networks are therefore fed MR volumes normalised by
statistics computed inside the head only; the background (pure noise, most of the field of view)
would otherwise dominate the mean, the standard deviation and the percentiles.

Head mask: a global threshold (Otsu's, or one derived from the Rician/Rayleigh statistics of the
background noise), an optional morphological closing, holes filled in 3D and slice by slice (3D
filling misses cavities open to the outside through the neck or the field-of-view border; in axial
slices they are closed), then the largest connected component (noise specks and separate objects go).

Libraries: Otsu's threshold and the ball structuring element come from scikit-image, connected
components from SimpleITK (faster than ``scipy.ndimage`` on full volumes), the closing from
``scipy.ndimage``; holes are filled by one labelling of the background
(:func:`preprocessing.morphology.fill_holes`), all inside the mask's bounding box.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Literal, Union

import numpy as np
import SimpleITK as sitk
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_numpy, ensure_tuple_rep
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import ball, disk

from medgan_common.errors import PreprocessingError
from preprocessing.morphology import bounding_box, fill_holes
from preprocessing.windowing import rescale_intensity

NdarrayOrTensor = Union[np.ndarray, torch.Tensor]


def _finite_volume(volume: np.ndarray, what: str) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim not in (2, 3):
        raise PreprocessingError(None, f"{what} must be a 2D or 3D array, got shape {volume.shape}")
    if not np.isfinite(volume).all():
        raise PreprocessingError(None, f"{what} contains NaN or infinite values")
    return volume


def _checked_mask(mask: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    mask = np.asarray(mask).astype(bool, copy=False)
    if mask.shape != shape:
        raise PreprocessingError(None, f"{what}: mask shape {mask.shape} differs from the volume shape {shape}")
    if not mask.any():
        raise PreprocessingError(None, f"{what}: the mask is empty, no voxel to compute intensity statistics from")
    return mask


def noise_threshold(volume: np.ndarray, quantile: float = 0.999) -> float:
    """Intensity above which a voxel is unlikely to be background noise of a magnitude MR image.

    The background of a magnitude image follows a Rayleigh distribution with scale ``sigma``. The
    voxels below Otsu's threshold are mostly background; their median estimates
    ``sigma * sqrt(2 ln 2)`` (the median resists the dark tissue mixed in), and the threshold is the
    Rayleigh ``quantile``. A zero-filled background gives a threshold of 0. No library offers this
    estimator for a whole volume, hence the few lines here.

    Args:
        volume: MR magnitude image.
        quantile: fraction of background voxels expected below the threshold.

    Returns:
        The threshold.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
    below_otsu = volume[volume < threshold_otsu(volume)]
    sigma = float(np.median(below_otsu)) / np.sqrt(2.0 * np.log(2.0)) if below_otsu.size else 0.0
    return sigma * float(np.sqrt(-2.0 * np.log1p(-quantile)))


def clean_head_mask(mask: np.ndarray, closing_radius: int = 0, slice_fill_axis: int | None = 0) -> np.ndarray:
    """Optionally close ``mask``, fill its holes, and keep its largest connected component.

    Holes are filled before the component is chosen: in MR the dark skull separates the brain from
    the scalp, so before filling the largest component can be the brain alone.

    Args:
        mask: boolean 2D or 3D mask.
        closing_radius: radius (voxels) of the ball used for a morphological closing; 0 disables it.
        slice_fill_axis: array axis along which holes are also filled slice by slice (0, the axial
            axis of a canonical [z, y, x] array, by default); ``None`` fills in 3D only.

    Returns:
        The cleaned boolean mask (all False if ``mask`` is empty).
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    # Everything happens inside the mask's bounding box (the head is a fraction of the field of
    # view); a frame of background one voxel wider than the closing radius keeps what reaches the
    # border the same and leaves the closing room to dilate before it erodes back.
    box = bounding_box(mask, pad=closing_radius + 1)
    cropped = mask[box]
    if closing_radius > 0:
        structure = ball(closing_radius) if mask.ndim == 3 else disk(closing_radius)
        # scipy's erosion treats outside the array as background, so near the border the closing
        # could remove voxels; a closing must only add, hence the union.
        cropped = cropped | ndimage.binary_closing(cropped, structure=structure)
    filled = fill_holes(cropped)
    if slice_fill_axis is not None and mask.ndim == 3:
        filled = fill_holes(filled, slice_axis=slice_fill_axis)
    largest = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(filled.view(np.uint8))),
                                    sortByObjectSize=True) == 1
    out = np.zeros_like(mask)
    out[box] = sitk.GetArrayViewFromImage(largest).astype(bool)
    return out


def head_mask_mr(
    volume: np.ndarray,
    method: Literal["otsu", "noise"] = "otsu",
    noise_quantile: float = 0.999,
    closing_radius: int = 0,
    slice_fill_axis: int | None = 0,
) -> np.ndarray:
    """Head mask of an MR volume.

    Args:
        volume: MR magnitude image, [z, y, x] (2D also accepted).
        method: ``"otsu"`` (Otsu's threshold: robust for T1/T2 head images with a clear background)
            or ``"noise"`` (a threshold just above the background noise, see :func:`noise_threshold`;
            keeps dark tissue such as the skull or sinuses at the surface).
        noise_quantile: with ``method="noise"``, the fraction of background voxels below the threshold.
        closing_radius: morphological closing radius in voxels (0: none).
        slice_fill_axis: axis of the additional slice-wise hole filling (``None``: 3D only).

    Returns:
        Boolean mask with the shape of ``volume``.

    Raises:
        PreprocessingError: a volume with NaN/inf, of the wrong dimension, or in which no head is found.
        ValueError: an unknown ``method``.
    """
    volume = _finite_volume(volume, "MR volume")
    if method == "otsu":
        threshold = float(threshold_otsu(volume))
    elif method == "noise":
        threshold = noise_threshold(volume, noise_quantile)
    else:
        raise ValueError(f"unknown head mask method {method!r}; use 'otsu' or 'noise'")
    mask = clean_head_mask(volume > threshold, closing_radius, slice_fill_axis)
    if not mask.any():
        raise PreprocessingError(None, f"no head found in the MR volume (all voxels <= threshold {threshold:.4g})")
    return mask


def head_mask_ct(volume_hu: np.ndarray, threshold: float = -500.0, slice_fill_axis: int | None = 0) -> np.ndarray:
    """Body mask of a CT volume: voxels above ``threshold`` HU, largest component, holes filled.

    Air (-1000 HU) and the padding outside the reconstruction field of view fall below the default
    -500 HU, soft tissue and bone above it. Objects touching the head (a head holder resting on the
    scalp) are part of the same component and stay in the mask.

    Args:
        volume_hu: CT in Hounsfield units, [z, y, x].
        threshold: HU threshold.
        slice_fill_axis: axis of the additional slice-wise hole filling (``None``: 3D only).

    Returns:
        Boolean mask with the shape of ``volume_hu``.

    Raises:
        PreprocessingError: a volume with NaN/inf, of the wrong dimension, or with nothing above ``threshold``.
    """
    volume_hu = _finite_volume(volume_hu, "CT volume")
    mask = clean_head_mask(volume_hu > threshold, 0, slice_fill_axis)
    if not mask.any():
        raise PreprocessingError(None, f"no body found in the CT volume (nothing above {threshold} HU)")
    return mask


def zscore_normalize(volume: np.ndarray, mask: np.ndarray, outside_value: float = 0.0) -> np.ndarray:
    """Subtract the mean and divide by the standard deviation of the voxels inside ``mask``.

    Args:
        volume: image to normalise.
        mask: boolean mask (same shape) of the voxels the statistics come from.
        outside_value: value written outside the mask.

    Returns:
        float32 array: mean 0 and standard deviation 1 inside the mask.

    Raises:
        PreprocessingError: empty mask, mismatched shapes, NaN, or a constant image inside the mask.
    """
    volume = _finite_volume(volume, "volume to z-score normalise")
    mask = _checked_mask(mask, volume.shape, "z-score normalisation")
    inside = volume[mask].astype(np.float64)
    mean, std = inside.mean(), inside.std()
    if not std > 0:
        raise PreprocessingError(None, f"z-score normalisation: the image is constant ({mean:.4g}) inside the mask")
    out = ((volume - mean) / std).astype(np.float32)
    out[~mask] = outside_value
    return out


def percentile_normalize(
    volume: np.ndarray,
    mask: np.ndarray | None = None,
    lower: float = 0.5,
    upper: float = 99.5,
    out_range: Sequence[float] = (-1.0, 1.0),
    outside_value: float | None = None,
) -> np.ndarray:
    """Map the ``lower``/``upper`` percentiles (inside ``mask``) to ``out_range`` and clip.

    Robust to outliers (vessels, fat, artefacts) that would stretch a min-max scaling.

    Args:
        volume: image to normalise.
        mask: voxels the percentiles are computed from (``None``: all voxels).
        lower: lower percentile (0-100).
        upper: upper percentile (0-100), greater than ``lower``.
        out_range: target interval; values beyond the percentiles are clipped to its ends.
        outside_value: if given, written outside the mask (e.g. ``out_range[0]`` for a black background).

    Returns:
        float32 array in ``out_range``.

    Raises:
        PreprocessingError: empty mask, mismatched shapes, NaN, or equal percentiles (constant image).
        ValueError: percentiles not in ``0 <= lower < upper <= 100``.
    """
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}")
    volume = _finite_volume(volume, "volume to percentile normalise")
    mask = None if mask is None else _checked_mask(mask, volume.shape, "percentile normalisation")
    values = volume if mask is None else volume[mask]
    low, high = np.percentile(values, [lower, upper])
    if not high > low:
        raise PreprocessingError(None, f"percentile normalisation: percentiles {lower} and {upper} are equal ({low:.4g})")
    out = rescale_intensity(volume.astype(np.float32, copy=False), (low, high), out_range, clip=True)
    if outside_value is not None and mask is not None:
        out[~mask] = outside_value
    return out


def _channels(img: NdarrayOrTensor, what: str) -> np.ndarray:
    array = convert_to_numpy(img)
    if array.ndim not in (3, 4):
        raise ValueError(f"{what} expects a channel-first 2D or 3D image (C, ...), got shape {tuple(array.shape)}")
    return array


def _spatial_mask(mask: NdarrayOrTensor | None, spatial_shape: tuple[int, ...]) -> np.ndarray | None:
    """Accept a mask of shape ``spatial`` or ``(1, *spatial)``."""
    if mask is None:
        return None
    mask = convert_to_numpy(mask)
    if mask.shape == (1, *spatial_shape):
        mask = mask[0]
    return mask


class MRHeadMask(Transform):
    """MONAI transform: head mask (``uint8``, shape ``(1, *spatial)``) of a single-channel MR image.

    Args: see :func:`head_mask_mr`.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(
        self,
        method: Literal["otsu", "noise"] = "otsu",
        noise_quantile: float = 0.999,
        closing_radius: int = 0,
        slice_fill_axis: int | None = 0,
    ):
        self.kwargs = dict(method=method, noise_quantile=noise_quantile, closing_radius=closing_radius, slice_fill_axis=slice_fill_axis)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        array = _channels(img, "MRHeadMask")
        if array.shape[0] != 1:
            raise ValueError(f"MRHeadMask expects a single-channel image, got {array.shape[0]} channels")
        mask = head_mask_mr(array[0], **self.kwargs)[None].astype(np.uint8)
        return convert_to_dst_type(mask, img, dtype=torch.uint8 if isinstance(img, torch.Tensor) else np.uint8)[0]


class ZScoreNormalize(Transform):
    """MONAI transform: z-score every channel with statistics inside a head mask.

    Args:
        outside_value: value written outside the mask.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(self, outside_value: float = 0.0):
        self.outside_value = outside_value

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor) -> NdarrayOrTensor:
        """Normalise ``img`` (C, ...) with ``mask`` (spatial or (1, *spatial))."""
        array = _channels(img, "ZScoreNormalize")
        spatial_mask = _spatial_mask(mask, array.shape[1:])
        out = np.stack([zscore_normalize(channel, spatial_mask, self.outside_value) for channel in array])
        return convert_to_dst_type(out, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]


class PercentileNormalize(Transform):
    """MONAI transform: robust percentile scaling of every channel (see :func:`percentile_normalize`)."""

    backend = [TransformBackends.NUMPY]

    def __init__(
        self,
        lower: float = 0.5,
        upper: float = 99.5,
        out_range: Sequence[float] = (-1.0, 1.0),
        outside_value: float | None = None,
    ):
        self.kwargs = dict(lower=lower, upper=upper, out_range=tuple(out_range), outside_value=outside_value)

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
        """Normalise ``img`` (C, ...), with percentiles inside ``mask`` if given."""
        array = _channels(img, "PercentileNormalize")
        spatial_mask = _spatial_mask(mask, array.shape[1:])
        out = np.stack([percentile_normalize(channel, spatial_mask, **self.kwargs) for channel in array])
        return convert_to_dst_type(out, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]


class _MaskedMapTransform(MapTransform):
    """Shared key handling: each image key pairs with a mask key (default ``<key>_head_mask``);
    ``self.transform(image, mask)`` is applied, with ``mask=None`` when ``use_mask`` is false."""

    transform: Transform

    def __init__(self, keys: KeysCollection, mask_keys: KeysCollection | None, allow_missing_keys: bool, use_mask: bool = True):
        super().__init__(keys, allow_missing_keys)
        self.use_mask = use_mask
        self.mask_keys = (
            tuple(f"{key}_head_mask" for key in self.keys) if mask_keys is None else ensure_tuple_rep(mask_keys, len(self.keys))
        )

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, mask_key in self.key_iterator(d, self.mask_keys):
            if self.use_mask and mask_key not in d:
                raise KeyError(f"{type(self).__name__}: mask key {mask_key!r} for image {key!r} is missing")
            d[key] = self.transform(d[key], d[mask_key] if self.use_mask else None)
        return d


class MRHeadMaskd(_MaskedMapTransform):
    """Dictionary twin of :class:`MRHeadMask`: writes the mask of ``data[key]`` to ``data[mask_key]``.

    Args:
        keys: MR image keys.
        mask_keys: where to store each mask (one per key, or one for all); default ``<key>_head_mask``.
        allow_missing_keys: do not raise for absent keys.
        method, noise_quantile, closing_radius, slice_fill_axis: see :func:`head_mask_mr`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_keys: KeysCollection | None = None,
        method: Literal["otsu", "noise"] = "otsu",
        noise_quantile: float = 0.999,
        closing_radius: int = 0,
        slice_fill_axis: int | None = 0,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, mask_keys, allow_missing_keys)
        self.transform = MRHeadMask(method, noise_quantile, closing_radius, slice_fill_axis)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, mask_key in self.key_iterator(d, self.mask_keys):
            d[mask_key] = self.transform(d[key])
        return d


class ZScoreNormalized(_MaskedMapTransform):
    """Dictionary twin of :class:`ZScoreNormalize`; the mask of ``data[key]`` is ``data[mask_key]``.

    Args:
        keys: image keys.
        mask_keys: mask key per image key (or one for all); default ``<key>_head_mask`` (as written by :class:`MRHeadMaskd`).
        outside_value: value written outside the mask.
        allow_missing_keys: do not raise for absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_keys: KeysCollection | None = None,
        outside_value: float = 0.0,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, mask_keys, allow_missing_keys)
        self.transform = ZScoreNormalize(outside_value)


class PercentileNormalized(_MaskedMapTransform):
    """Dictionary twin of :class:`PercentileNormalize`.

    Args:
        keys: image keys.
        mask_keys: mask key per image key (or one for all); ``None`` (default) uses all voxels.
        lower, upper, out_range, outside_value: see :func:`percentile_normalize`.
        allow_missing_keys: do not raise for absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_keys: KeysCollection | None = None,
        lower: float = 0.5,
        upper: float = 99.5,
        out_range: Sequence[float] = (-1.0, 1.0),
        outside_value: float | None = None,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, mask_keys, allow_missing_keys, use_mask=mask_keys is not None)
        self.transform = PercentileNormalize(lower, upper, out_range, outside_value)
