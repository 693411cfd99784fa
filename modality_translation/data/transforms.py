"""MONAI transform chains of the 2D translation GANs: slice loading, CycleGAN jitter and flip, checks.

Training (:func:`translation_train_transforms`) follows the CycleGAN / pix2pix augmentation
(Zhu et al. 2017, Isola et al. 2017): resize the slice up by ``jitter_scale`` (286/256), take a
random crop of the training size back, and flip at random. Evaluation
(:func:`translation_eval_transforms`) is the deterministic twin: the same loading, resized to the
training size without cropping or flipping, since inference translates whole slices.

The deterministic steps (loading, channel layout, type, resize up) come first, so
:class:`monai.data.CacheDataset` caches their result and only the crop and flip run per sample.

Slices are NIfTI files written by :func:`preprocessing.slices.save_slices`: ``(H, W)`` for 2D,
``(H, W, channels)`` for 2.5D; both load as ``(channels, H, W)`` float32 in [-1, 1].
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    RandFlipd,
    RandSpatialCropd,
    Resized,
)

from modality_translation.data.datalist import MODALITY_ALIASES, check_modality_name

#: CycleGAN's jitter: load at 286x286, crop 256x256.
CYCLEGAN_JITTER_SCALE = 286 / 256


def _load_steps(keys: KeysCollection, slice_channels: int) -> list:
    if slice_channels < 1:
        raise ValueError(f"slice_channels must be >= 1, got {slice_channels}")
    # 2.5D slices keep their neighbours on the last NIfTI axis (see preprocessing.slices.save_slices).
    channel_dim = -1 if slice_channels > 1 else None
    return [
        LoadImaged(keys, reader="NibabelReader", image_only=True, channel_dim=channel_dim),
        EnsureChannelFirstd(keys),
        EnsureTyped(keys, dtype=np.float32, track_meta=True),
    ]


def jitter_size(crop_size: Sequence[int], jitter_scale: float) -> tuple[int, ...]:
    """Size the slices are resized to before the random crop (286 for 256 at CycleGAN's scale)."""
    if jitter_scale < 1:
        raise ValueError(f"jitter_scale must be >= 1 (resize up, then crop back), got {jitter_scale}")
    return tuple(int(round(size * jitter_scale)) for size in crop_size)


def translation_train_transforms(
    keys: KeysCollection = "image",
    crop_size: Sequence[int] = (256, 256),
    jitter_scale: float = CYCLEGAN_JITTER_SCALE,
    flip_prob: float = 0.5,
    flip_axis: int | Sequence[int] | None = 1,
    slice_channels: int = 1,
    slice_size: Sequence[int] | None = None,
) -> Compose:
    """Load a slice, resize it up, crop it back at random and flip it at random.

    With several keys (a paired sample), every key gets the same crop and flip.

    Patch training: with ``slice_size`` larger than ``crop_size`` the slice is resized to
    ``slice_size`` (times ``jitter_scale``) and a random ``crop_size`` patch of it is taken, so that
    a fully convolutional generator learns at the resolution it will translate whole slices of
    ``slice_size`` at, for the cost of a ``crop_size`` image per step.

    Args:
        keys: dictionary keys of the slice file paths.
        crop_size: training size (H, W): the size of the image the networks see.
        jitter_scale: resize factor before cropping (``286 / 256``); 1 disables the jitter.
        flip_prob: probability of the flip (0 disables it).
        flip_axis: spatial axis flipped (0 rows, 1 columns). Columns are left-right for axial and
            coronal slices in canonical orientation; a sagittal training should flip rows or nothing.
        slice_channels: channels of a slice (1 for 2D, ``2N + 1`` for 2.5D).
        slice_size: size (H, W) whole slices are resized to before the jitter and the crop (the
            size inference translates at); default ``crop_size``. No side may be below ``crop_size``.

    Returns:
        The composed transform.

    Raises:
        ValueError: a ``slice_size`` side smaller than the crop's, or a ``jitter_scale`` below 1.
    """
    steps = _load_steps(keys, slice_channels)
    slice_size = tuple(crop_size) if slice_size is None else tuple(int(size) for size in slice_size)
    if len(slice_size) != len(crop_size) or any(s < c for s, c in zip(slice_size, crop_size)):
        raise ValueError(f"slice_size {list(slice_size)} must have a side >= the crop's on every axis, crop_size {list(crop_size)}")
    load_size = jitter_size(slice_size, jitter_scale)
    if tuple(load_size) != tuple(crop_size):
        steps += [
            Resized(keys, spatial_size=load_size, mode="bilinear"),
            RandSpatialCropd(keys, roi_size=tuple(crop_size), random_size=False),
        ]
    else:
        steps.append(Resized(keys, spatial_size=tuple(crop_size), mode="bilinear"))
    if flip_prob > 0:
        steps.append(RandFlipd(keys, prob=flip_prob, spatial_axis=flip_axis))
    return Compose(steps)


def translation_eval_transforms(
    keys: KeysCollection = "image", crop_size: Sequence[int] = (256, 256), slice_channels: int = 1
) -> Compose:
    """Deterministic twin of :func:`translation_train_transforms`: load and resize to ``crop_size``.

    Args:
        keys: dictionary keys of the slice file paths.
        crop_size: the training size (H, W); slices already of that size are left as they are.
        slice_channels: channels of a slice.

    Returns:
        The composed transform.
    """
    return Compose([*_load_steps(keys, slice_channels), Resized(keys, spatial_size=tuple(crop_size), mode="bilinear")])


def nifti_description(path: str | os.PathLike) -> str:
    """The ``descrip`` field of a NIfTI header ("" for other files or an empty field).

    Read with nibabel because MONAI's ``NibabelReader`` leaves the header's text fields out of the
    image metadata; only the header is read.
    """
    name = os.fspath(path)
    if not name.endswith((".nii", ".nii.gz")):
        return ""
    try:
        description = nib.load(name).header.get("descrip")
    except Exception:  # an unreadable file fails in the loader with a clearer error
        return ""
    if description is None:
        return ""
    raw = np.asarray(description).item()
    return raw.split(b"\0", 1)[0].decode("latin-1") if isinstance(raw, bytes) else str(raw)


class CheckModalityd(MapTransform):
    """Refuse an image whose file name or NIfTI description names another modality than expected.

    For inputs that do not come through :func:`~modality_translation.data.datalist.load_translation_datalist`
    (e.g. the volume given to an inference bundle). Place it after ``LoadImaged``: it reads the
    ``MetaTensor``'s ``filename_or_obj``, and the ``descrip`` field of a NIfTI header. A name and
    description with no modality in them pass.

    Args:
        keys: keys of the loaded images.
        modality: the expected modality (``"t1"``, ``"t2"``, ``"ct"``, ...); one for all keys or one per key.
        known: modality names recognised in names.
        allow_missing_keys: do not raise for absent keys.

    Raises:
        ModalityMismatchError: (when called) the file name or description names only other modalities.
    """

    def __init__(
        self,
        keys: KeysCollection,
        modality: str | Sequence[str],
        known: Sequence[str] = tuple(MODALITY_ALIASES),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        modalities = [modality] * len(self.keys) if isinstance(modality, str) else list(modality)
        if len(modalities) != len(self.keys):
            raise ValueError(f"need one modality per key, got {len(modalities)} for {len(self.keys)} keys")
        self.modalities = dict(zip(self.keys, (m.lower() for m in modalities)))
        self.known = tuple(known)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            meta = getattr(d[key], "meta", {}) or {}
            filename = meta.get("filename_or_obj")
            expected = self.modalities[key]
            if filename:
                filename = os.fspath(filename)
                # The file and its folder: folders further up name the project, not the image.
                name = os.path.join(os.path.basename(os.path.dirname(filename)), os.path.basename(filename))
                check_modality_name(filename, expected, name=name, known=self.known)
                description = nifti_description(filename)
                if description:
                    check_modality_name(filename, expected, name=description, known=self.known)
        return d
